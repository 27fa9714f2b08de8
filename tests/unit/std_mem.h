/*
 * std_mem.h - the plain allocator for unit tests that build the library's
 * internal objects (ledger, metrics, ticket table) directly: MEM is malloc
 * and free behind the spi_mem the objects take.
 */
#ifndef SPI_TEST_STD_MEM_H
#define SPI_TEST_STD_MEM_H

#include <stdlib.h>

#include "spi_internal.h"

static inline void *std_alloc(void *ud, size_t n) {
  (void)ud;
  return malloc(n);
}

static inline void std_free(void *ud, void *p) {
  (void)ud;
  free(p);
}

static const spi_mem MEM = {std_alloc, std_free, NULL};

#endif /* SPI_TEST_STD_MEM_H */
