/*
 * prefix_index.h - the prefix index's reader, one step at a time, for
 * tests (the index's API is in routing.h).
 *
 * A lookup reads an entry in three steps: its tag, its payload, and its tag
 * again, and takes the payload only if the two tags are equal (see
 * "Concurrency" in prefix_index.c). These functions are those steps, on
 * entry e (< 8) of the bucket of block hash h, made by the helpers the
 * lookup and the insert use, so that a test can rewrite the entry between
 * them and see what a reader paused there would take.
 */
#ifndef SPI_PREFIX_INDEX_H
#define SPI_PREFIX_INDEX_H

#include <stdint.h>

#include "routing.h"

/* The entry's tag, loaded as a lookup's scan loads it. */
uint64_t spi__index_step_tag(const spi_prefix_index *ix, uint64_t h,
                             unsigned e);
/* Whether the tag holds block h (the scan's test). */
int spi__index_step_key(uint64_t tag, uint64_t h);
/* The entry's payload, loaded as read_payload loads it. */
uint64_t spi__index_step_payload(const spi_prefix_index *ix, uint64_t h,
                                 unsigned e);
/* 1 if a reader that loaded tag t first would take the payload it loaded
 * since: read_payload's check of the tag. */
int spi__index_step_confirm(const spi_prefix_index *ix, uint64_t h,
                            unsigned e, uint64_t t);

#endif
