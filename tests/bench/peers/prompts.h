/*
 * prompts.h - the prompts, fleet and load reports every peer harness uses,
 * written out once per language from the specification in README.md
 * ("Workload"). The harnesses check the same golden checksums, so a drift
 * in any one of them stops that harness before it measures anything.
 */
#ifndef SPI_BENCH_PEERS_PROMPTS_H
#define SPI_BENCH_PEERS_PROMPTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define PEERS_BATCH 64       /* prompts in one batch */
#define PEERS_FAMILIES 16    /* prompt j of a batch is of family j % 16 */
#define PEERS_WARM_ROUNDS 8  /* batches routed before the measured one */

/* Prompt of size bytes: byte i is 'a' + (i*7 + family*3) % 26; at size/2
 * the nine bytes "u" and unique as eight decimal digits (prompts over 16
 * bytes). */
static void peers_prompt(char *p, size_t size, int family, int unique) {
  for (size_t i = 0; i < size; i++)
    p[i] = (char)('a' + (i * 7 + (size_t)family * 3) % 26);
  if (size > 16) {
    char mark[16];
    snprintf(mark, sizeof mark, "u%08d", unique % 100000000);
    memcpy(p + size / 2, mark, 9);
  }
}

/* Warm-up batch round (0..7) uses unique (1000 + round) * 64 + j; the
 * measured batch uses 64 + j. */
static int peers_unique(int round, int j) {
  return round < 0 ? PEERS_BATCH + j : (1000 + round) * PEERS_BATCH + j;
}

/* FNV-1a, 64 bits, continued from h. */
static uint64_t peers_fnv(uint64_t h, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

#define PEERS_FNV_INIT 14695981039346656037ULL
#define PEERS_GOLDEN_1K 0xb52fa1fd2f36ba71ULL
#define PEERS_GOLDEN_8K 0xbd576dd9bf240d89ULL
#define PEERS_GOLDEN_64K 0xd7418da25f3f424dULL

/* The checksum of every prompt of a case in routing order: the eight warm
 * batches, then the measured batch. */
static uint64_t peers_checksum(size_t size, char *scratch) {
  uint64_t h = PEERS_FNV_INIT;
  for (int round = 0; round <= PEERS_WARM_ROUNDS; round++)
    for (int j = 0; j < PEERS_BATCH; j++) {
      int r = round == PEERS_WARM_ROUNDS ? -1 : round;
      peers_prompt(scratch, size, j % PEERS_FAMILIES, peers_unique(r, j));
      h = peers_fnv(h, scratch, size);
    }
  return h;
}

/* Golden checksums for 1, 8 and 64 KiB (README.md, "Workload"). */
static uint64_t peers_golden(size_t size) {
  switch (size) {
  case 1024: return PEERS_GOLDEN_1K;
  case 8192: return PEERS_GOLDEN_8K;
  case 65536: return PEERS_GOLDEN_64K;
  default: return 0;
  }
}

/* Replica i: id "replica-%03d", running i % 7, waiting i % 3, KV cache
 * 30 % used, spot when i is even, on-demand when odd. */
static int peers_running(int i) { return i % 7; }
static int peers_waiting(int i) { return i % 3; }

#endif
