/*
 * bench_index_full.c - a prefix index kept full, for counting instructions.
 *
 * A 64 KiB index (4,088 entries) takes chains of 8 random blocks from 16
 * slots, all live; each phase is a function of its own, so callgrind gives
 * its instructions inclusively (callgrind_annotate --inclusive=yes):
 *   phase_new      1,000 chains into the filling table, then 1,000 more
 *                  into the full one (two calls);
 *   phase_refresh  the last 100 chains inserted again, 5 times;
 *   phase_lookup   the longest match of 500 recent chains.
 * The data is fixed, so the counts are too. Prints one JSON line.
 *
 *   valgrind --tool=callgrind bench_index_full
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "routing.h"
#include "spi_internal.h"

#define BLOCKS 8
#define CHAINS 2000

static uint64_t chains[CHAINS][BLOCKS];
static uint32_t clock_s = 1000;

static uint64_t mix(uint64_t *s) {
  uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static int all_live(void *ctx, uint32_t slot, uint32_t gen) {
  (void)ctx;
  (void)slot;
  (void)gen;
  return 1;
}

static void insert_chains(spi_prefix_index *ix, int from, int to) {
  for (int c = from; c < to; c++)
    spi__index_insert(ix, chains[c], 0, BLOCKS, (uint32_t)c % 16, 1,
                      1 + (uint32_t)c % 3, clock_s++, 60, all_live, NULL);
}

__attribute__((noinline)) static void phase_new(spi_prefix_index *ix,
                                                int from, int to) {
  insert_chains(ix, from, to);
}

__attribute__((noinline)) static void phase_refresh(spi_prefix_index *ix,
                                                    int from, int to) {
  insert_chains(ix, from, to);
}

__attribute__((noinline)) static uint64_t phase_lookup(spi_prefix_index *ix,
                                                       int from, int to) {
  uint64_t matched = 0, cont;
  uint32_t slots[8], gens[8], nh;
  for (int c = from; c < to; c++)
    matched += spi__index_longest(ix, chains[c], BLOCKS, all_live, NULL, slots,
                                  gens, 8, &nh, &cont);
  return matched;
}

int main(void) {
  spi_mem m = {spi__default_alloc, spi__default_free, NULL};
  spi_prefix_index *ix = NULL;
  if (spi__index_new(&m, 64u << 10, &ix) != SPI_OK) return 1;
  uint64_t s = 12345;
  for (int c = 0; c < CHAINS; c++)
    for (int b = 0; b < BLOCKS; b++) chains[c][b] = mix(&s);
  phase_new(ix, 0, 1000);
  phase_new(ix, 1000, 2000);
  for (int k = 0; k < 5; k++) phase_refresh(ix, 1900, 2000);
  uint64_t matched = phase_lookup(ix, 1500, 2000);
  printf("{\"bench\":\"prefix_index_full\",\"capacity\":%zu,\"entries\":%zu,"
         "\"matched_blocks\":%llu}\n",
         spi__index_capacity(ix), spi__index_live_entries(ix),
         (unsigned long long)matched);
  spi__index_free(&m, ix);
  return 0;
}
