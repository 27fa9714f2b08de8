/*
 * bench_index.c - memory and speed of the prefix index.
 *
 * Prints one JSON line per measurement:
 *   size     bytes per entry (all bytes / capacity) and capacity at 1, 8 and
 *            64 MiB budgets;
 *   longest  ns per longest-match lookup on a full index, for chains of 8,
 *            64 and 512 blocks, each query matching a random part of its
 *            chain (so the binary search does its full work): warm (the
 *            queries' buckets are in cache from the previous pass) and cold
 *            (128 MiB read in between, so every probe misses);
 *   insert   ns per block for new blocks into a full index (every block
 *            evicts) and for blocks already there (refresh);
 *   cap      the byte cap after filling the table 4x over: bytes unchanged,
 *            within budget, no allocation after creation.
 * The lookups run at 8 MiB (mostly in cache) and 64 MiB (mostly not).
 * Each timing keeps the best of `runs` (default 5) passes.
 *
 *   bench_index [runs]
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "routing.h"

#define REPLICAS 64
#define QUERIES 4096
#define QUERY_MAX 512

static volatile uint64_t sink;

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

typedef struct bench_alloc {
  long calls;
  size_t bytes;
} bench_alloc;

static void *b_alloc(void *ud, size_t n) {
  bench_alloc *a = ud;
  a->calls++;
  a->bytes += n;
  return malloc(n);
}
static void b_free(void *ud, void *p) {
  (void)ud;
  free(p);
}

static uint64_t mix64(uint64_t x) {
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

static uint64_t rng_next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* A chained block hash: block i depends on the root and blocks before it;
 * blocks from `split` on take a different token. */
static void chain(uint64_t *h, uint32_t n, uint64_t root, uint32_t split,
                  uint64_t tail) {
  uint64_t c = mix64(root);
  for (uint32_t i = 0; i < n; i++) {
    c = mix64(c ^ mix64((i < split ? 0 : tail) + i));
    h[i] = c;
  }
}

/* Replica liveness as the registry would answer it: an atomic gen per slot. */
typedef struct registry {
  _Atomic uint32_t gen[REPLICAS];
} registry;

static int live_fn(void *ctx, uint32_t slot, uint32_t gen) {
  registry *r = ctx;
  return slot < REPLICAS &&
         (atomic_load_explicit(&r->gen[slot], memory_order_relaxed) &
          SPI_INDEX_GEN_MASK) == gen;
}

/* Fill with chains of 1..128 blocks until `blocks` blocks were inserted. */
static uint64_t fill(spi_prefix_index *ix, registry *r, uint64_t blocks,
                     uint64_t root0, uint32_t *clock) {
  uint64_t h[128], done = 0, root = root0, s = root0 | 1;
  while (done < blocks) {
    uint32_t n = 1 + (uint32_t)(rng_next(&s) % 128);
    chain(h, n, root++, n, 0);
    uint32_t slot = (uint32_t)(rng_next(&s) % REPLICAS);
    spi__index_insert(ix, h, 0, n, slot, atomic_load(&r->gen[slot]),
                      1 + (uint32_t)(rng_next(&s) % 4), (*clock)++ / 16, 60,
                      live_fn, r);
    done += n;
  }
  return root;
}

static spi_prefix_index *make(const spi_mem *m, size_t budget) {
  spi_prefix_index *ix = NULL;
  if (spi__index_new(m, budget, &ix) != SPI_OK) {
    fprintf(stderr, "bench_index: no index of %zu bytes\n", budget);
    exit(1);
  }
  return ix;
}

static void bench_sizes(const spi_mem *m) {
  const size_t budgets[] = {1u << 20, 8u << 20, 64u << 20};
  for (size_t i = 0; i < 3; i++) {
    spi_prefix_index *ix = make(m, budgets[i]);
    size_t bytes = spi__index_bytes(ix), cap = spi__index_capacity(ix);
    printf("{\"bench\":\"prefix_index\",\"case\":\"size\",\"budget\":%zu,"
           "\"bytes\":%zu,\"capacity\":%zu,\"bytes_per_entry\":%.4f}\n",
           budgets[i], bytes, cap, (double)bytes / (double)cap);
    spi__index_free(m, ix);
  }
}

/* Reads more than the last-level cache holds, so the table is cold. */
static void evict_caches(uint64_t *junk, size_t words) {
  uint64_t acc = 0;
  for (size_t i = 0; i < words; i += 8) acc += junk[i]++;
  sink += acc;
}

/* One pass of lookups: ns per query. The hashes of a query are read in
 * order just before its lookup, as the key builder would have written them;
 * `lookup` = 0 times that read alone, to be subtracted. */
static double pass(const spi_prefix_index *ix, registry *r, const uint64_t *q,
                   uint32_t nq, uint32_t len, int lookup, long *matched,
                   long *exact, const uint32_t *depth) {
  long mt = 0, ex = 0;
  uint64_t acc = 0;
  double t0 = now_ns();
  for (uint32_t k = 0; k < nq; k++) {
    const uint64_t *h = q + (size_t)k * QUERY_MAX;
    for (uint32_t i = 0; i < len; i++) acc += h[i];
    if (!lookup) continue;
    uint32_t slots[8], gens[8], nh;
    uint32_t got =
        spi__index_longest(ix, h, len, live_fn, r, slots, gens, 8, &nh, NULL);
    mt += got;
    ex += got == depth[k];
  }
  double ns = (now_ns() - t0) / nq;
  sink += acc;
  if (lookup) *matched = mt, *exact = ex;
  return ns;
}

static void bench_longest(const spi_mem *m, size_t budget, int runs) {
  registry r;
  for (int i = 0; i < REPLICAS; i++) atomic_init(&r.gen[i], 1);
  spi_prefix_index *ix = make(m, budget);
  size_t cap = spi__index_capacity(ix);
  uint32_t clock = 0;
  uint64_t root = fill(ix, &r, 2 * (uint64_t)cap, 1, &clock);
  double full = (double)spi__index_live_entries(ix) / (double)cap;
  uint64_t *q = malloc((size_t)QUERIES * QUERY_MAX * sizeof *q);
  uint32_t *depth = malloc(QUERIES * sizeof *depth);
  size_t junk_words = (size_t)(128u << 20) / sizeof(uint64_t);
  uint64_t *junk = calloc(junk_words, sizeof *junk);
  if (!q || !depth || !junk) exit(1);
  uint64_t s = 12345;
  const uint32_t lens[] = {8, 64, 512};
  for (size_t li = 0; li < 3; li++) {
    uint32_t len = lens[li];
    /* The held prefixes take at most a quarter of the table, so the
     * queries' own entries are not evicted by the queries. */
    uint32_t nq = QUERIES;
    if ((size_t)nq * len > cap / 2) nq = (uint32_t)(cap / 2 / len);
    /* Each query is held up to a random depth by one replica, then
     * diverges from what is held. */
    for (uint32_t k = 0; k < nq; k++) {
      uint64_t *h = q + (size_t)k * QUERY_MAX, held[QUERY_MAX];
      depth[k] = (uint32_t)(rng_next(&s) % (len + 1));
      chain(h, len, root + k, depth[k], 1);
      chain(held, depth[k], root + k, depth[k], 2);
      spi__index_insert(ix, held, 0, depth[k], k % REPLICAS, 1, 4,
                        clock / 16, 60, live_fn, &r);
    }
    root += nq;
    double warm = 1e300, cold = 1e300;
    long matched = 0, exact = 0;
    for (int run = 0; run < runs; run++) {
      double ns = pass(ix, &r, q, nq, len, 1, &matched, &exact, depth) -
                  pass(ix, &r, q, nq, len, 0, NULL, NULL, depth);
      if (ns < warm) warm = ns;
      evict_caches(junk, junk_words);
      double with = pass(ix, &r, q, nq, len, 1, &matched, &exact, depth);
      evict_caches(junk, junk_words);
      ns = with - pass(ix, &r, q, nq, len, 0, NULL, NULL, depth);
      if (ns < cold) cold = ns;
    }
    printf("{\"bench\":\"prefix_index\",\"case\":\"longest\",\"budget\":%zu,"
           "\"fill\":%.3f,\"blocks\":%u,\"queries\":%u,"
           "\"ns_per_op_warm\":%.1f,\"ns_per_op_cold\":%.1f,"
           "\"mean_matched\":%.2f,\"exact\":%.4f}\n",
           budget, full, len, nq, warm, cold, (double)matched / nq,
           (double)exact / nq);
  }
  free(junk);
  free(q);
  free(depth);
  spi__index_free(m, ix);
}

static void bench_insert(const spi_mem *m, size_t budget, int runs) {
  registry r;
  for (int i = 0; i < REPLICAS; i++) atomic_init(&r.gen[i], 1);
  spi_prefix_index *ix = make(m, budget);
  uint32_t clock = 0;
  uint64_t root = fill(ix, &r, 2 * (uint64_t)spi__index_capacity(ix), 7,
                       &clock);
  enum { CHAINS = 4096, LEN = 64 };
  uint64_t *h = malloc((size_t)CHAINS * LEN * sizeof *h);
  if (!h) exit(1);
  double best_new = 1e300, best_refresh = 1e300;
  for (int run = 0; run < runs; run++) {
    for (uint32_t k = 0; k < CHAINS; k++)
      chain(h + (size_t)k * LEN, LEN, root++, LEN, 0);
    clock += 16 * 600; /* ten minutes later: newcomers outrank everything */
    double t0 = now_ns();
    for (uint32_t k = 0; k < CHAINS; k++)
      spi__index_insert(ix, h + (size_t)k * LEN, 0, LEN, k % REPLICAS, 1, 2,
                        clock / 16, 60, live_fn, &r);
    double ns = (now_ns() - t0) / (CHAINS * LEN);
    if (ns < best_new) best_new = ns;
    clock += 16;
    t0 = now_ns();
    for (uint32_t k = 0; k < CHAINS; k++)
      spi__index_insert(ix, h + (size_t)k * LEN, 0, LEN, k % REPLICAS, 1, 2,
                        clock / 16, 60, live_fn, &r);
    ns = (now_ns() - t0) / (CHAINS * LEN);
    if (ns < best_refresh) best_refresh = ns;
  }
  printf("{\"bench\":\"prefix_index\",\"case\":\"insert\",\"budget\":%zu,"
         "\"chain_blocks\":%d,\"ns_per_new_block\":%.1f,"
         "\"ns_per_refreshed_block\":%.1f}\n",
         budget, LEN, best_new, best_refresh);
  free(h);
  spi__index_free(m, ix);
}

static void bench_cap(size_t budget) {
  bench_alloc a = {0, 0};
  spi_mem m = {b_alloc, b_free, &a};
  registry r;
  for (int i = 0; i < REPLICAS; i++) atomic_init(&r.gen[i], 1);
  spi_prefix_index *ix = make(&m, budget);
  size_t bytes = spi__index_bytes(ix), cap = spi__index_capacity(ix);
  long calls = a.calls;
  uint32_t clock = 0;
  fill(ix, &r, 4 * (uint64_t)cap, 99, &clock);
  size_t live = spi__index_live_entries(ix);
  int ok = spi__index_bytes(ix) == bytes && bytes <= budget &&
           a.bytes == bytes && a.calls == calls && calls == 1 && live <= cap;
  printf("{\"bench\":\"prefix_index\",\"case\":\"cap\",\"budget\":%zu,"
         "\"bytes\":%zu,\"allocated\":%zu,\"allocations\":%ld,"
         "\"inserted_blocks\":%zu,\"capacity\":%zu,\"entries\":%zu,"
         "\"ok\":%s}\n",
         budget, spi__index_bytes(ix), a.bytes, a.calls, 4 * cap, cap, live,
         ok ? "true" : "false");
  spi__index_free(&m, ix);
  if (!ok) exit(1);
}

int main(int argc, char **argv) {
  int runs = argc > 1 ? atoi(argv[1]) : 5;
  if (runs < 1) runs = 1;
  bench_alloc a = {0, 0};
  spi_mem m = {b_alloc, b_free, &a};
  bench_sizes(&m);
  bench_longest(&m, 8u << 20, runs);
  bench_longest(&m, 64u << 20, runs);
  bench_insert(&m, 8u << 20, runs);
  bench_insert(&m, 64u << 20, runs);
  bench_cap(8u << 20);
  return 0;
}
