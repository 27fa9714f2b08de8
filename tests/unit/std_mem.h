/*
 * std_mem.h - the allocators for unit tests that build the library's
 * internal objects (ledger, metrics, ticket table, canonical JSON, keys)
 * directly: MEM is malloc and free behind the spi_mem the objects take;
 * counting_mem counts what is live and can refuse one allocation.
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

/* An allocator that counts live blocks and refuses the allocation numbered
 * fail_at (0-based, -1: never):
 *   counting_alloc a = {0, 0, -1};  spi_mem m = counting_mem(&a);
 *   ... a.live == 0 once everything is freed */
typedef struct counting_alloc {
  long live;
  long calls;
  long fail_at;
} counting_alloc;

static inline void *count_alloc(void *ud, size_t size) {
  counting_alloc *a = ud;
  if (a->calls++ == a->fail_at) return NULL;
  void *p = malloc(size);
  if (p) a->live++;
  return p;
}

static inline void count_free(void *ud, void *p) {
  counting_alloc *a = ud;
  if (p) a->live--;
  free(p);
}

static inline spi_mem counting_mem(counting_alloc *a) {
  spi_mem m = {count_alloc, count_free, a};
  return m;
}

#endif /* SPI_TEST_STD_MEM_H */
