/*
 * test_prefix_index.c - the bounded prefix index (lib/prefix_index.c).
 *
 * Budgets, chains and longest matches, replicas sharing and diverging,
 * liveness through the callback, the eviction order, a full table, the
 * insert against a plain model of its rules, odd hashes and lengths, the
 * number of bucket probes of a lookup, readers racing writers, and a reader
 * paused between its steps on an entry while writers rewrite it.
 *
 * Bucket probes are counted by construction, without a hook in the library:
 * a dead replica holds every block of the chain, each block under its own
 * (slot, gen), so every probe calls the live callback exactly once with a
 * pair that names the probed block.
 */
#define _DEFAULT_SOURCE /* mincore */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "prefix_index.h" /* the reader's steps */
#include "routing.h"
#include "spi_internal.h" /* spi__default_alloc */

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#define BUCKET_BYTES 128 /* 8 entries of 16 bytes */

/* ------------------------------------------------------------ allocator */

typedef struct counting_alloc {
  long live, calls;
  long fail_at; /* -1: never fail */
  size_t bytes; /* sum of the sizes of live blocks */
  size_t last_size;
} counting_alloc;

typedef struct block_hdr {
  size_t size;
  max_align_t align;
} block_hdr;

static void *count_alloc(void *ud, size_t size) {
  counting_alloc *a = ud;
  if (a->calls++ == a->fail_at) return NULL;
  block_hdr *h = malloc(sizeof *h + size);
  if (!h) return NULL;
  h->size = size;
  a->live++;
  a->bytes += size;
  a->last_size = size;
  return h + 1;
}

static void count_free(void *ud, void *p) {
  counting_alloc *a = ud;
  if (!p) return;
  block_hdr *h = (block_hdr *)p - 1;
  a->live--;
  a->bytes -= h->size;
  free(h);
}

typedef struct fixture {
  counting_alloc counts;
  spi_mem mem;
} fixture;

static fixture *fixture_new(void) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->counts.fail_at = -1;
  f->mem.alloc = count_alloc;
  f->mem.free = count_free;
  f->mem.user_data = &f->counts;
  return f;
}

static void fixture_free(fixture *f) {
  assert_int_equal(f->counts.live, 0);
  assert_int_equal(f->counts.bytes, 0);
  free(f);
}

/* The smallest budget spi__index_new accepts (one bucket). */
static size_t min_budget(fixture *f) {
  for (size_t b = 0; b < 4096; b++) {
    spi_prefix_index *ix = NULL;
    int rc = spi__index_new(&f->mem, b, &ix);
    if (rc == SPI_OK) {
      spi__index_free(&f->mem, ix);
      return b;
    }
    assert_int_equal(rc, SPI_ERANGE);
    assert_null(ix);
  }
  fail_msg("no budget below 4096 bytes fits one bucket");
  return 0;
}

static spi_prefix_index *index_of(fixture *f, size_t budget) {
  spi_prefix_index *ix = NULL;
  assert_int_equal(spi__index_new(&f->mem, budget, &ix), SPI_OK);
  assert_non_null(ix);
  return ix;
}

/* An index of exactly `buckets` buckets. */
static spi_prefix_index *index_buckets(fixture *f, size_t buckets) {
  spi_prefix_index *ix =
      index_of(f, min_budget(f) + (buckets - 1) * BUCKET_BYTES);
  assert_int_equal(spi__index_capacity(ix), buckets * 8);
  return ix;
}

/* -------------------------------------------------------------- chains */

static uint64_t mix64(uint64_t x) {
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

/* A chained hash like the key builder's: block i depends on the root and on
 * every block token up to i. Tokens are `common` up to block split, then
 * `tail`. */
static void chain(uint64_t *h, uint32_t n, uint64_t root, uint32_t split,
                  uint64_t common, uint64_t tail) {
  uint64_t c = mix64(root ^ UINT64_C(0x7370692d626c6b31));
  for (uint32_t i = 0; i < n; i++) {
    c = mix64(c ^ mix64((i < split ? common : tail) + i));
    h[i] = c;
  }
}

static uint64_t *chain_new(uint32_t n, uint64_t root) {
  uint64_t *h = malloc((n ? n : 1) * sizeof *h);
  assert_non_null(h);
  chain(h, n, root, n, 0, 0);
  return h;
}

/* ------------------------------------------------------------ liveness */

/* Replica state the live callback reads: gens and an active flag per slot.
 * Atomic because the concurrent test changes them under readers. */
typedef struct registry {
  _Atomic uint32_t gen[SPI_REPLICA_SLOTS];
  _Atomic int active[SPI_REPLICA_SLOTS];
  long calls;
} registry;

static registry *registry_new(void) {
  registry *r = calloc(1, sizeof *r);
  assert_non_null(r);
  for (size_t i = 0; i < SPI_REPLICA_SLOTS; i++) {
    atomic_init(&r->gen[i], 1);
    atomic_init(&r->active[i], 1);
  }
  return r;
}

static int reg_live(void *ctx, uint32_t slot, uint32_t gen) {
  registry *r = ctx;
  r->calls++;
  if (slot >= SPI_REPLICA_SLOTS) return 0;
  return atomic_load(&r->active[slot]) &&
         (atomic_load(&r->gen[slot]) & SPI_INDEX_GEN_MASK) == gen;
}

/* Same, without the call counter (the concurrent test shares it). */
static int reg_live_mt(void *ctx, uint32_t slot, uint32_t gen) {
  registry *r = ctx;
  if (slot >= SPI_REPLICA_SLOTS) return 0;
  return atomic_load_explicit(&r->active[slot], memory_order_relaxed) &&
         (atomic_load_explicit(&r->gen[slot], memory_order_relaxed) &
          SPI_INDEX_GEN_MASK) == gen;
}

static void ins(spi_prefix_index *ix, registry *r, const uint64_t *h,
                uint32_t from, uint32_t n, uint32_t slot, uint32_t weight,
                uint32_t now) {
  spi__index_insert(ix, h, from, n, slot, atomic_load(&r->gen[slot]), weight,
                    now, 60, reg_live, r);
}

typedef struct match {
  uint32_t len, n;
  uint32_t slots[16], gens[16];
} match;

static match look(const spi_prefix_index *ix, registry *r, const uint64_t *h,
                  uint32_t n) {
  match m;
  memset(&m, 0xa5, sizeof m);
  m.len = spi__index_longest(ix, h, n, reg_live, r, m.slots, m.gens, 16, &m.n, NULL);
  assert_true(m.len <= n);
  assert_true(m.n <= 16);
  if (m.len == 0) assert_int_equal(m.n, 0);
  for (uint32_t i = 0; i < m.n; i++) {
    assert_true(m.slots[i] < SPI_REPLICA_SLOTS);
    for (uint32_t j = 0; j < i; j++) assert_int_not_equal(m.slots[i], m.slots[j]);
  }
  return m;
}

static int holds(const match *m, uint32_t slot) {
  for (uint32_t i = 0; i < m->n; i++)
    if (m->slots[i] == slot) return 1;
  return 0;
}

/* -------------------------------------------------------------- budget */

static void test_budget(void **state) {
  (void)state;
  fixture *f = fixture_new();
  size_t min = min_budget(f);
  /* The header and the alignment slack are small next to one bucket. */
  assert_true(min > BUCKET_BYTES && min <= BUCKET_BYTES + 160);
  spi_prefix_index *ix = NULL;
  assert_int_equal(spi__index_new(&f->mem, 0, &ix), SPI_ERANGE);
  assert_int_equal(spi__index_new(&f->mem, min - 1, &ix), SPI_ERANGE);
  assert_null(ix);
  assert_int_equal(f->counts.live, 0);

  const size_t budgets[] = {min,         min + 1,         min + 127,
                            min + 128,   1000,            4095,
                            4096,        4097,            12345,
                            65535,       65536,           99991,
                            1u << 20,    (1u << 20) + 1,  (1u << 20) - 1,
                            3000017,     8u << 20,        (8u << 20) + 333,
                            (16u << 20) - 7};
  for (size_t i = 0; i < sizeof budgets / sizeof budgets[0]; i++) {
    size_t b = budgets[i];
    ix = index_of(f, b);
    size_t bytes = spi__index_bytes(ix), cap = spi__index_capacity(ix);
    /* Everything allocated is reported, and stays within the budget. */
    assert_int_equal(f->counts.bytes, bytes);
    assert_true(bytes <= b);
    /* The largest table that fits: one more bucket would not. */
    assert_true(bytes + BUCKET_BYTES > b);
    assert_true(cap >= 8 && cap % 8 == 0);
    assert_int_equal(bytes, min + (cap / 8 - 1) * BUCKET_BYTES);
    assert_int_equal(spi__index_live_entries(ix), 0);
    spi__index_free(&f->mem, ix);
    assert_int_equal(f->counts.bytes, 0);
  }
  /* 16 bytes an entry, plus a header worth less than one bucket. */
  ix = index_of(f, 1u << 20);
  assert_true(spi__index_capacity(ix) * 16 <= 1u << 20);
  assert_true(spi__index_capacity(ix) * 16 + min > 1u << 20);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

static void test_new_errors(void **state) {
  (void)state;
  fixture *f = fixture_new();
  spi_prefix_index *ix = (spi_prefix_index *)f;
  assert_int_equal(spi__index_new(&f->mem, 1u << 16, NULL), SPI_EINVAL);
  assert_int_equal(spi__index_new(NULL, 1u << 16, &ix), SPI_EINVAL);
  assert_null(ix);
  f->counts.fail_at = f->counts.calls;
  ix = (spi_prefix_index *)f;
  assert_int_equal(spi__index_new(&f->mem, 1u << 16, &ix), SPI_ENOMEM);
  assert_null(ix);
  f->counts.fail_at = -1;
  spi__index_free(&f->mem, NULL);
  assert_int_equal(spi__index_bytes(NULL), 0);
  assert_int_equal(spi__index_capacity(NULL), 0);
  assert_int_equal(spi__index_live_entries(NULL), 0);
  fixture_free(f);
}

/* -------------------------------------------------------------- chains */

static void test_chain(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_of(f, 1u << 20);
  uint64_t *h = chain_new(64, 1);
  match m = look(ix, r, h, 64);
  assert_int_equal(m.len, 0);

  ins(ix, r, h, 0, 64, 3, 2, 100);
  assert_int_equal(spi__index_live_entries(ix), 64);
  m = look(ix, r, h, 64);
  assert_int_equal(m.len, 64);
  assert_int_equal(m.n, 1);
  assert_int_equal(m.slots[0], 3);
  assert_int_equal(m.gens[0], 1);
  /* Any prefix of the chain matches in full. */
  for (uint32_t n = 1; n <= 64; n++) assert_int_equal(look(ix, r, h, n).len, n);

  /* Inserting again refreshes, never duplicates. */
  ins(ix, r, h, 0, 64, 3, 2, 200);
  ins(ix, r, h, 10, 64, 3, 4, 300);
  assert_int_equal(spi__index_live_entries(ix), 64);

  /* A longer request over the same chain matches what is known. */
  uint64_t *longer = chain_new(200, 1);
  assert_memory_equal(longer, h, 64 * sizeof *h);
  m = look(ix, r, longer, 200);
  assert_int_equal(m.len, 64);
  /* Then insert only the new blocks, as a finished request would. */
  ins(ix, r, longer, 64, 200, 3, 2, 400);
  assert_int_equal(look(ix, r, longer, 200).len, 200);
  assert_int_equal(spi__index_live_entries(ix), 200);

  /* Another root shares nothing. */
  uint64_t *other = chain_new(64, 2);
  assert_int_equal(look(ix, r, other, 64).len, 0);

  /* Null and empty arguments. */
  uint32_t nh = 7, s[1];
  assert_int_equal(spi__index_longest(ix, h, 0, reg_live, r, s, s, 1, &nh, NULL), 0);
  assert_int_equal(nh, 0);
  nh = 7;
  assert_int_equal(spi__index_longest(NULL, h, 64, reg_live, r, s, s, 1, &nh, NULL),
                   0);
  assert_int_equal(nh, 0);
  assert_int_equal(spi__index_longest(ix, NULL, 64, reg_live, r, s, s, 1, &nh, NULL),
                   0);
  /* No room for holders: the length is still found. */
  assert_int_equal(spi__index_longest(ix, h, 64, reg_live, r, NULL, NULL, 0,
                                      &nh, NULL),
                   64);
  assert_int_equal(nh, 0);
  assert_int_equal(spi__index_longest(ix, h, 64, reg_live, r, NULL, NULL, 0,
                                      NULL, NULL),
                   64);
  size_t before = spi__index_live_entries(ix);
  ins(ix, r, other, 0, 0, 5, 1, 500);
  ins(ix, r, other, 64, 64, 5, 1, 500);
  ins(ix, r, other, 70, 64, 5, 1, 500);
  spi__index_insert(ix, NULL, 0, 64, 5, 1, 1, 500, 60, reg_live, r);
  spi__index_insert(NULL, other, 0, 64, 5, 1, 1, 500, 60, reg_live, r);
  /* A slot beyond the registry is refused. */
  spi__index_insert(ix, other, 0, 64, SPI_REPLICA_SLOTS, 1, 1, 500, 60,
                    reg_live, r);
  assert_int_equal(spi__index_live_entries(ix), before);

  free(h);
  free(longer);
  free(other);
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

static void test_shared_prefix(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_of(f, 1u << 20);
  uint64_t x[40], y[40], z[40];
  chain(x, 40, 7, 40, 0, 0);  /* A's conversation */
  chain(y, 40, 7, 10, 0, 1);  /* B's: same first 10 blocks */
  chain(z, 40, 7, 10, 0, 2);  /* a third one, held by nobody past 10 */
  assert_memory_equal(x, y, 10 * sizeof x[0]);
  assert_memory_not_equal(x + 10, y + 10, sizeof x[0]);
  ins(ix, r, x, 0, 30, 11, 2, 100);
  ins(ix, r, y, 0, 25, 22, 2, 100);

  match m = look(ix, r, x, 40);
  assert_int_equal(m.len, 30);
  assert_int_equal(m.n, 1);
  assert_int_equal(m.slots[0], 11);
  m = look(ix, r, y, 40);
  assert_int_equal(m.len, 25);
  assert_int_equal(m.n, 1);
  assert_int_equal(m.slots[0], 22);
  /* The shared part is held by both. */
  m = look(ix, r, z, 40);
  assert_int_equal(m.len, 10);
  assert_int_equal(m.n, 2);
  assert_true(holds(&m, 11) && holds(&m, 22));
  m = look(ix, r, x, 10);
  assert_int_equal(m.len, 10);
  assert_int_equal(m.n, 2);

  /* Holders beyond cap are cut at cap. */
  for (uint32_t s = 100; s < 106; s++) ins(ix, r, x, 0, 10, s, 1, 100);
  uint32_t slots[3], gens[3], nh = 0;
  assert_int_equal(
      spi__index_longest(ix, z, 40, reg_live, r, slots, gens, 3, &nh, NULL), 10);
  assert_int_equal(nh, 3);

  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

static void test_divergence(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_of(f, 1u << 20);
  uint64_t held[64], q[64];
  chain(held, 64, 9, 64, 0, 0);
  ins(ix, r, held, 0, 64, 1, 1, 100);
  const uint32_t ks[] = {0, 1, 2, 3, 5, 7, 8, 31, 32, 33, 62, 63, 64};
  for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
    chain(q, 64, 9, ks[i], 0, 5);
    match m = look(ix, r, q, 64);
    assert_int_equal(m.len, ks[i]);
    assert_int_equal(m.n, ks[i] ? 1 : 0);
  }
  /* Every partial insert of a chain gives back its length. */
  for (uint32_t k = 0; k <= 40; k++) {
    uint64_t c[40];
    chain(c, 40, 1000 + k, 40, 0, 0);
    ins(ix, r, c, 0, k, 2, 1, 100);
    assert_int_equal(look(ix, r, c, 40).len, k);
  }
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* ------------------------------------------------------------ liveness */

static void test_dead_entries(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_of(f, 1u << 20);
  uint64_t h[32];
  chain(h, 32, 3, 32, 0, 0);
  ins(ix, r, h, 0, 32, 4, 1, 100);
  ins(ix, r, h, 0, 16, 5, 1, 100);
  match m = look(ix, r, h, 32);
  assert_int_equal(m.len, 32);

  /* Replica 4 is removed (gen bump): only 5's 16 blocks count. */
  atomic_fetch_add(&r->gen[4], 1);
  m = look(ix, r, h, 32);
  assert_int_equal(m.len, 16);
  assert_int_equal(m.n, 1);
  assert_int_equal(m.slots[0], 5);
  /* Replica 5 leaves ACTIVE. */
  atomic_store(&r->active[5], 0);
  assert_int_equal(look(ix, r, h, 32).len, 0);
  atomic_store(&r->active[5], 1);

  /* Re-inserting under the new gen replaces the stale twins in place. */
  size_t before = spi__index_live_entries(ix);
  ins(ix, r, h, 0, 32, 4, 1, 200);
  assert_int_equal(spi__index_live_entries(ix), before);
  m = look(ix, r, h, 32);
  assert_int_equal(m.len, 32);
  assert_int_equal(m.gens[0], 2);

  /* Gens are kept modulo 4096: both sides see the masked value. */
  atomic_store(&r->gen[6], 4096 * 3 + 17);
  ins(ix, r, h, 0, 8, 6, 1, 300);
  m = look(ix, r, h, 8);
  assert_int_equal(m.len, 8);
  assert_true(holds(&m, 6));
  for (uint32_t i = 0; i < m.n; i++)
    if (m.slots[i] == 6) assert_int_equal(m.gens[i], 17);

  /* A NULL callback counts every entry as live. */
  atomic_store(&r->active[4], 0);
  atomic_store(&r->active[5], 0);
  atomic_store(&r->active[6], 0);
  assert_int_equal(look(ix, r, h, 32).len, 0);
  uint32_t nh;
  assert_int_equal(
      spi__index_longest(ix, h, 32, NULL, NULL, NULL, NULL, 0, &nh, NULL), 32);

  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* Single blocks in a one-bucket table: every hash shares the bucket. */
static uint64_t one(uint64_t i) { return mix64(i * 7919 + 13); }

static int present(spi_prefix_index *ix, registry *r, uint64_t h) {
  return look(ix, r, &h, 1).len == 1;
}

static void put(spi_prefix_index *ix, registry *r, uint64_t h, uint32_t slot,
                uint32_t weight, uint32_t now) {
  ins(ix, r, &h, 0, 1, slot, weight, now);
}

static void test_dead_evicted_first(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_buckets(f, 1);
  /* Eight gold entries, fresh; the oldest one's replica then dies. */
  for (uint32_t i = 0; i < 8; i++) put(ix, r, one(i), 10 + i, 4, 100 + i);
  assert_int_equal(spi__index_live_entries(ix), 8);
  atomic_fetch_add(&r->gen[15], 1); /* entry 5's replica is replaced */
  /* A bronze newcomer, which is worth less than any of the gold entries,
   * takes the dead entry. */
  put(ix, r, one(100), 50, 1, 110);
  assert_true(present(ix, r, one(100)));
  for (uint32_t i = 0; i < 8; i++)
    if (i != 5) assert_true(present(ix, r, one(i)));
  /* The dead entry is really gone, not just hidden. */
  atomic_fetch_sub(&r->gen[15], 1);
  assert_false(present(ix, r, one(5)));
  assert_int_equal(spi__index_live_entries(ix), 8);
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* An insert that evicts asks the live callback about every entry of the
 * full bucket; it asks once a call for each replica (slot and gen), also
 * when a fleet's slots are far apart (here 0, 16, 32, 48: one place in a
 * memo of 16). */
static void test_evict_asks_once(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_buckets(f, 1);
  /* Two gold blocks on each of four replicas fill the bucket. */
  for (uint32_t i = 0; i < 8; i++) put(ix, r, one(i), 16 * (i % 4), 255, 100);
  assert_int_equal(spi__index_live_entries(ix), 8);
  /* Ten bronze blocks, each worth less than any gold entry: every one
   * looks at all eight entries and is not stored. */
  uint64_t *h = chain_new(10, 77);
  r->calls = 0;
  ins(ix, r, h, 0, 10, 1, 1, 100);
  assert_int_equal(r->calls, 4);
  for (uint32_t i = 0; i < 8; i++) assert_true(present(ix, r, one(i)));
  assert_false(present(ix, r, h[0]));
  free(h);
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* Ages are taken modulo 2^31 with a sign: an entry stamped after now (a
 * clock stepped back) is younger than one stamped at now, and a stamp from
 * before the 31-bit stamp wrapped is older than one from after it, also
 * when now has bit 31 set. Eight bronze entries fill the bucket, entry 0
 * the youngest by those rules; a bronze newcomer worth more than the rest
 * takes entry 1, the first of the oldest. */
static void check_stamp_ages(uint32_t young, uint32_t old, uint32_t now) {
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_buckets(f, 1);
  put(ix, r, one(0), 10, 1, young);
  for (uint32_t i = 1; i < 8; i++) put(ix, r, one(i), 10 + i, 1, old);
  put(ix, r, one(100), 50, 1, now);
  assert_true(present(ix, r, one(100)));
  assert_true(present(ix, r, one(0)));
  assert_false(present(ix, r, one(1)));
  for (uint32_t i = 2; i < 8; i++) assert_true(present(ix, r, one(i)));
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

static void test_stamp_ages(void **state) {
  (void)state;
  check_stamp_ages(1000, 890, 900);              /* young is ahead of now */
  check_stamp_ages(5, 0x7ffffff0u, 10);          /* old is before the wrap */
  check_stamp_ages(0x80000005u, 0x7ffffff0u, 0x80000010u); /* bit 31 */
}

static void test_eviction_order(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_buckets(f, 1);

  /* Same age: bronze goes before gold. */
  for (uint32_t i = 0; i < 8; i++)
    put(ix, r, one(i), 10 + i, i % 2 ? 4 : 1, 1000);
  for (uint32_t k = 0; k < 4; k++) {
    put(ix, r, one(200 + k), 60 + k, 4, 1000);
    assert_true(present(ix, r, one(200 + k)));
  }
  for (uint32_t i = 0; i < 8; i++)
    assert_int_equal(present(ix, r, one(i)), i % 2 == 1);
  assert_int_equal(spi__index_live_entries(ix), 8);
  spi__index_free(&f->mem, ix);

  /* Same weight: the oldest goes first, in order. */
  ix = index_buckets(f, 1);
  for (uint32_t i = 0; i < 8; i++) put(ix, r, one(i), 10 + i, 2, 100 * (i + 1));
  for (uint32_t k = 0; k < 8; k++) {
    put(ix, r, one(300 + k), 70 + k, 2, 2000);
    for (uint32_t i = 0; i < 8; i++)
      assert_int_equal(present(ix, r, one(i)), i > k);
  }
  spi__index_free(&f->mem, ix);

  /* A refresh makes an entry young again. */
  ix = index_buckets(f, 1);
  for (uint32_t i = 0; i < 8; i++) put(ix, r, one(i), 10 + i, 1, 100 + i);
  put(ix, r, one(0), 10, 1, 500); /* entry 0 used again */
  put(ix, r, one(400), 80, 1, 500);
  assert_true(present(ix, r, one(0)));
  assert_false(present(ix, r, one(1)));
  spi__index_free(&f->mem, ix);

  /* Weight against age: one weight unit is worth weight_seconds (60). A
   * bronze newcomer (worth 60) does not push out gold (4 * 60) younger than
   * 180 s, and does push out gold older than that. */
  ix = index_buckets(f, 1);
  for (uint32_t i = 0; i < 8; i++) put(ix, r, one(i), 10 + i, 4, 1000);
  put(ix, r, one(500), 90, 1, 1100);
  assert_false(present(ix, r, one(500)));
  for (uint32_t i = 0; i < 8; i++) assert_true(present(ix, r, one(i)));
  put(ix, r, one(500), 90, 1, 1181);
  assert_true(present(ix, r, one(500)));
  assert_int_equal(spi__index_live_entries(ix), 8);
  /* Gold itself always gets in over gold of the same age or older. */
  put(ix, r, one(501), 91, 4, 1181);
  assert_true(present(ix, r, one(501)));
  spi__index_free(&f->mem, ix);

  /* Weights above 255 are held at 255. */
  ix = index_buckets(f, 1);
  for (uint32_t i = 0; i < 8; i++) put(ix, r, one(i), 10 + i, 1000, 1000);
  put(ix, r, one(600), 95, 255, 1000);
  assert_true(present(ix, r, one(600)));
  spi__index_free(&f->mem, ix);

  free(r);
  fixture_free(f);
}

static void test_full_table(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_of(f, 64 * 1024);
  size_t bytes = spi__index_bytes(ix), cap = spi__index_capacity(ix);
  long calls = f->counts.calls;
  size_t allocated = f->counts.bytes;
  uint64_t h[50];
  uint32_t now = 1000;
  for (uint64_t root = 0; spi__index_live_entries(ix) < cap || root < 4 * cap / 50;
       root++) {
    chain(h, 50, root, 50, 0, 0);
    ins(ix, r, h, 0, 50, (uint32_t)(root % 300), (uint32_t)(1 + root % 4),
        now++);
    assert_true(root < 64 * cap); /* the table fills up */
  }
  assert_int_equal(spi__index_live_entries(ix), cap);
  assert_int_equal(spi__index_bytes(ix), bytes);
  assert_int_equal(spi__index_capacity(ix), cap);
  assert_int_equal(f->counts.calls, calls);
  assert_int_equal(f->counts.bytes, allocated);
  assert_true(bytes <= 64 * 1024);
  /* A gold chain newer than everything gets in whole. */
  chain(h, 50, UINT64_MAX, 50, 0, 0);
  ins(ix, r, h, 0, 50, 299, 4, now + 1000);
  assert_int_equal(look(ix, r, h, 50).len, 50);
  assert_int_equal(spi__index_live_entries(ix), cap);
  assert_int_equal(f->counts.calls, calls);
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* ----------------------------------------------------- a paused reader */

/* Block h over entry 0 of a one-bucket index for slot, once the replica of
 * dead_slot, which entry 0 names, is replaced: the bucket is full and entry
 * 0 is its first dead entry. */
static void rewrite_first(spi_prefix_index *ix, registry *r, uint64_t h,
                          uint32_t slot, uint32_t dead_slot) {
  atomic_fetch_add(&r->gen[dead_slot], 1);
  ins(ix, r, &h, 0, 1, slot, 1, 100);
  assert_true(spi__index_step_key(spi__index_step_tag(ix, h, 0), h));
}

/*
 * A reader paused between its steps on one entry: it loads the tag of
 * block a, the entry is rewritten to block b of another replica, it loads
 * that payload, and the entry is rewritten to a and b by turns until it
 * holds a again. After any count of rewrites (256 and 65536 among them,
 * where a version of 8 or 16 bits comes back to the tag the reader loaded)
 * the reader must not take b's replica for a holder of a.
 */
static void test_reader_paused(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_buckets(f, 1);
  const uint32_t slot_a = 30, slot_b = 31;
  uint64_t a = mix64(101), b = mix64(202);
  ins(ix, r, &a, 0, 1, slot_a, 1, 100);
  for (uint32_t i = 0; i < 7; i++) { /* live and worth more than a or b */
    uint64_t h = mix64(300 + i);
    ins(ix, r, &h, 0, 1, 1 + i, 200, 100);
  }
  uint64_t t = spi__index_step_tag(ix, a, 0);
  assert_true(spi__index_step_key(t, a));
  rewrite_first(ix, r, b, slot_b, slot_a);
  uint64_t p = spi__index_step_payload(ix, a, 0);
  assert_int_equal(p & 0xfffu, slot_b); /* the payload written for b */
  /* n rewrites so far; the next one writes a, the one after it b. */
  for (uint32_t n = 1; n < (1u << 16); n += 2) {
    rewrite_first(ix, r, a, slot_a, slot_b);
    assert_false(spi__index_step_confirm(ix, a, 0, t));
    if (n + 1 < (1u << 16)) rewrite_first(ix, r, b, slot_b, slot_a);
  }
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* ------------------------------------------------------- odd arguments */

static void test_odd_hashes(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_of(f, 1u << 20);
  /* 0, all ones, and hashes whose low 32 bits (the key) are the reserved
   * keys. */
  uint64_t h[] = {0,
                  UINT64_MAX,
                  UINT64_C(1) << 56,
                  (UINT64_C(1) << 56) | 1,
                  1,
                  UINT64_C(0xff00000000000000),
                  mix64(1)};
  uint32_t n = (uint32_t)(sizeof h / sizeof h[0]);
  assert_int_equal(look(ix, r, h, n).len, 0);
  ins(ix, r, h, 0, n, 8, 1, 100);
  for (uint32_t k = 1; k <= n; k++) assert_int_equal(look(ix, r, h, k).len, k);
  assert_int_equal(spi__index_live_entries(ix), n);
  /* A chain that starts with a hash of 0 and one that does not. */
  uint64_t zero = 0;
  match m = look(ix, r, &zero, 1);
  assert_int_equal(m.len, 1);
  assert_int_equal(m.slots[0], 8);
  /* Two hashes of one bucket that agree on their low 32 bits have one key:
   * the index takes either block for the other. The version has the
   * tag's other 32 bits (test_reader_paused). */
  uint64_t x = mix64(2), y = x ^ (UINT64_C(1) << 32);
  uint64_t nb = spi__index_capacity(ix) / 8;
  assert_int_equal(((x >> 32) * nb) >> 32, ((y >> 32) * nb) >> 32);
  assert_int_equal(look(ix, r, &y, 1).len, 0);
  ins(ix, r, &x, 0, 1, 9, 1, 100);
  m = look(ix, r, &y, 1);
  assert_int_equal(m.len, 1);
  assert_int_equal(m.slots[0], 9);
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* ---------------------------------------------- the insert, by a model */

/*
 * The insert's rules written out plainly, one entry at a time, against
 * which the index is compared after every call of a long random sequence:
 * which slots (and generations) each block reports, in entry order, and
 * how many entries are taken. The sequence mixes what routes and finishes
 * do: new blocks, the same blocks again for the same replica later (the
 * finish's refresh), other replicas, replaced generations, removed
 * replicas, weights and ages, and the continued marks of routes that go
 * on past a matched block (kept by refreshes, gone with a rewrite), in
 * tables of 1 and 3 buckets so that buckets overflow.
 */
#define MODEL_WAYS 8
#define MODEL_SLOTS 6
#define MODEL_BLOCKS 40

typedef struct model_entry {
  int used;
  uint64_t key;
  uint32_t slot, gen, weight, stamp;
  int continued; /* spi__index_mark_continued; kept by refreshes */
} model_entry;

typedef struct model {
  model_entry e[3][MODEL_WAYS];
  uint32_t nbuckets;
} model;

/* The index's key: the low half of the hash (a 32-bit version has the
 * rest of the tag). */
static uint64_t model_key(uint64_t h) {
  uint64_t k = h & UINT64_C(0xffffffff);
  return k > 1 ? k : k + 2;
}

static model_entry *model_bucket(model *m, uint64_t h) {
  return m->e[((h >> 32) * m->nbuckets) >> 32];
}

static void model_block(model *m, registry *r, uint64_t h, uint32_t slot,
                        uint32_t gen, uint32_t weight, uint32_t now) {
  model_entry *b = model_bucket(m, h);
  uint64_t key = model_key(h);
  int victim = -1, twin = -1, empty = -1;
  for (int e = 0; e < MODEL_WAYS; e++) {
    if (!b[e].used) {
      if (empty < 0) empty = e;
    } else if (b[e].key == key && b[e].slot == slot) {
      if (b[e].gen == gen) { /* the same replica's block: refreshed */
        b[e].weight = weight, b[e].stamp = now;
        return;
      }
      twin = e; /* the last one of an older generation */
    }
  }
  victim = twin >= 0 ? twin : empty;
  int64_t lowest = 0;
  for (int e = 0; victim < 0 && e < MODEL_WAYS; e++) {
    if (!reg_live_mt(r, b[e].slot, b[e].gen)) {
      victim = e; /* the first dead entry */
      break;
    }
    int64_t value =
        (int64_t)b[e].weight * 60 - (int64_t)(int32_t)(now - b[e].stamp);
    if (e == 0 || value < lowest) lowest = value;
  }
  if (victim < 0) {
    if (lowest > (int64_t)weight * 60) return; /* worth less than any */
    for (int e = 0; e < MODEL_WAYS && victim < 0; e++) {
      int64_t value =
          (int64_t)b[e].weight * 60 - (int64_t)(int32_t)(now - b[e].stamp);
      if (value == lowest) victim = e;
    }
  }
  b[victim] = (model_entry){1, key, slot, gen, weight, now, 0};
}

static void model_mark(model *m, uint64_t h, uint32_t slot, uint32_t gen) {
  model_entry *b = model_bucket(m, h);
  for (int e = 0; e < MODEL_WAYS; e++)
    if (b[e].used && b[e].key == model_key(h) && b[e].slot == slot &&
        b[e].gen == gen) {
      b[e].continued = 1;
      return;
    }
}

/* What the index reports for block h, against the model. */
static void model_check(spi_prefix_index *ix, model *m, registry *r,
                        uint64_t h) {
  uint32_t slots[16], gens[16], n = 0, want_n = 0, want_slots[16], want_gens[16];
  uint64_t cont = 0, want_cont = 0;
  uint32_t len = spi__index_longest(ix, &h, 1, reg_live_mt, r, slots, gens, 16, &n, &cont);
  const model_entry *b = model_bucket(m, h);
  for (int e = 0; e < MODEL_WAYS; e++) {
    if (!b[e].used || b[e].key != model_key(h) ||
        !reg_live_mt(r, b[e].slot, b[e].gen))
      continue;
    uint32_t j = 0;
    while (j < want_n && want_slots[j] != b[e].slot) j++;
    if (j < want_n) continue;
    want_slots[want_n] = b[e].slot, want_gens[want_n] = b[e].gen;
    if (b[e].continued) want_cont |= UINT64_C(1) << want_n;
    want_n++;
  }
  assert_int_equal(len, want_n ? 1 : 0);
  assert_int_equal(n, want_n);
  for (uint32_t j = 0; j < n; j++) {
    assert_int_equal(slots[j], want_slots[j]);
    assert_int_equal(gens[j], want_gens[j]);
  }
  assert_int_equal(cont, want_cont);
}

static void model_run(uint32_t nbuckets, uint64_t seed, long steps) {
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_buckets(f, nbuckets);
  model *m = calloc(1, sizeof *m);
  assert_non_null(m);
  m->nbuckets = nbuckets;
  uint64_t blocks[MODEL_BLOCKS];
  chain(blocks, MODEL_BLOCKS, seed, MODEL_BLOCKS, 0, 0);
  uint32_t now = 1000;
  for (long step = 0; step < steps; step++) {
    uint64_t x = mix64(seed ^ (uint64_t)step);
    uint32_t slot = 20 + (uint32_t)(x % MODEL_SLOTS);
    if ((x >> 8) % 64 == 0) { /* the replica is replaced or comes back */
      if ((x >> 16) % 3 == 0)
        atomic_store(&r->active[slot], !atomic_load(&r->active[slot]));
      else
        atomic_fetch_add(&r->gen[slot], 1);
    }
    now += (uint32_t)((x >> 20) % 8 == 0 ? (x >> 24) % 400 : (x >> 24) % 3);
    uint32_t from = (uint32_t)((x >> 32) % MODEL_BLOCKS);
    uint32_t n = from + 1 + (uint32_t)((x >> 40) % 6);
    if (n > MODEL_BLOCKS) n = MODEL_BLOCKS;
    uint32_t weight = (x >> 48) % 16 == 0 ? 300 : 1 + (uint32_t)((x >> 52) % 4);
    uint32_t gen = atomic_load(&r->gen[slot]);
    spi__index_insert(ix, blocks, from, n, slot, gen, weight, now, 60,
                      reg_live_mt, r);
    for (uint32_t i = from; i < n; i++)
      model_block(m, r, blocks[i], slot, gen & SPI_INDEX_GEN_MASK,
                  weight > 255 ? 255 : weight, now);
    if (from > 0 && (x >> 56) % 2 == 0) { /* went on past block from - 1 */
      spi__index_mark_continued(ix, blocks[from - 1], slot, gen);
      model_mark(m, blocks[from - 1], slot, gen & SPI_INDEX_GEN_MASK);
    }
    size_t taken = 0;
    for (uint32_t k = 0; k < nbuckets; k++)
      for (int e = 0; e < MODEL_WAYS; e++) taken += m->e[k][e].used;
    assert_int_equal(spi__index_live_entries(ix), taken);
    for (uint32_t i = 0; i < MODEL_BLOCKS; i++) model_check(ix, m, r, blocks[i]);
  }
  free(m);
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

static void test_insert_model(void **state) {
  (void)state;
  for (uint64_t seed = 1; seed <= 4; seed++) {
    model_run(1, seed, 2000);
    model_run(3, seed, 2000);
  }
}

static void test_huge_n(void **state) {
  (void)state;
  fixture *f = fixture_new();
  registry *r = registry_new();
  spi_prefix_index *ix = index_of(f, 16u << 20);
  const uint32_t n = 1u << 22;
  uint64_t *h = chain_new(n, 77);
  const uint32_t held[] = {1, 2, 3, 1000, 65535, 65536, 100003};
  uint32_t done = 0;
  for (size_t i = 0; i < sizeof held / sizeof held[0]; i++) {
    ins(ix, r, h, done, held[i], 12, 1, 100);
    done = held[i];
    match m = look(ix, r, h, n);
    assert_int_equal(m.len, held[i]);
    assert_int_equal(m.n, 1);
    assert_int_equal(m.slots[0], 12);
  }
  free(h);
  free(r);
  spi__index_free(&f->mem, ix);
  fixture_free(f);
}

/* --------------------------------------------------------------- probes */

/* Replica 0 is live; every other (slot, gen) names one block of a dead
 * replica, so each probe shows up as one call. */
typedef struct probe_count {
  uint8_t *seen; /* by block */
  uint32_t n, probes, repeats;
} probe_count;

#define PROBE_LIVE_SLOT 0u
#define PROBE_SLOTS (SPI_REPLICA_SLOTS - 1)

static void probe_pair(uint32_t block, uint32_t *slot, uint32_t *gen) {
  *slot = 1 + block % PROBE_SLOTS;
  *gen = block / PROBE_SLOTS;
}

static int probe_live(void *ctx, uint32_t slot, uint32_t gen) {
  probe_count *c = ctx;
  if (slot == PROBE_LIVE_SLOT) return 1;
  uint32_t block = gen * PROBE_SLOTS + (slot - 1);
  assert_true(block < c->n);
  if (c->seen[block]) c->repeats++;
  c->seen[block] = 1;
  c->probes++;
  return 0;
}

static uint32_t ceil_log2(uint32_t n) {
  uint32_t k = 0;
  while (k < 32 && (UINT64_C(1) << k) < n) k++;
  return k;
}

static void check_probes(fixture *f, uint32_t n, const uint32_t *ms,
                         size_t nm) {
  spi_prefix_index *ix = index_of(f, 4u << 20);
  uint64_t *h = chain_new(n, 4242 + n);
  probe_count c = {calloc(n, 1), n, 0, 0};
  assert_non_null(c.seen);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t slot, gen;
    probe_pair(i, &slot, &gen);
    spi__index_insert(ix, h, i, i + 1, slot, gen, 1, 100, 60, NULL, NULL);
  }
  assert_int_equal(spi__index_live_entries(ix), n);
  uint32_t done = 0;
  for (size_t k = 0; k < nm; k++) {
    uint32_t m = ms[k] < n ? ms[k] : n;
    if (m < done) continue;
    spi__index_insert(ix, h, done, m, PROBE_LIVE_SLOT, 0, 1, 100, 60, NULL,
                      NULL);
    done = m;
    memset(c.seen, 0, n);
    c.probes = c.repeats = 0;
    uint32_t slots[4], gens[4], nh = 0;
    uint32_t len =
        spi__index_longest(ix, h, n, probe_live, &c, slots, gens, 4, &nh, NULL);
    assert_int_equal(len, m);
    assert_int_equal(nh, m ? 1 : 0);
    if (m) assert_int_equal(slots[0], PROBE_LIVE_SLOT);
    assert_int_equal(c.repeats, 0);
    assert_true(c.probes >= 1);
    if (c.probes > ceil_log2(n) + 2)
      fail_msg("n=%u matched=%u: %u probes", n, m, c.probes);
  }
  free(c.seen);
  free(h);
  spi__index_free(&f->mem, ix);
}

static void test_probe_count(void **state) {
  (void)state;
  fixture *f = fixture_new();
  const uint32_t ms[] = {0, 1, 2, 3, 100, 1000, 2047, 2048, 2049, 4000, 4095,
                         4096};
  size_t nm = sizeof ms / sizeof ms[0];
  check_probes(f, 4096, ms, nm);
  /* ceil(log2 4096) + 1 is the worst case: block 0, then 12 halvings. */
  const uint32_t ns[] = {1, 2, 3, 5, 8, 63, 64, 65, 1000, 4097, 10000};
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
    check_probes(f, ns[i], ms, nm);
  fixture_free(f);
}

/* ---------------------------------------------------------- concurrency */

#define MT_MAX_BLOCKS 64

/* Every block of root r's chains is only ever inserted for slot_of_root(r),
 * so a holder with any other slot would be a tag paired with some other
 * entry's payload. */
static uint32_t slot_of_root(uint32_t root) {
  return (root * 997u + 5u) % SPI_REPLICA_SLOTS;
}

typedef struct mt_shared {
  spi_prefix_index *ix;
  registry *reg;
  long ops;
  uint32_t roots, max_blocks; /* chains: roots x lengths 1..max_blocks */
  _Atomic uint32_t clock;
  _Atomic int readers_left, writers_left; /* threads not done */
} mt_shared;

typedef struct mt_thread {
  mt_shared *sh;
  uint64_t rng;
  int writer;
  long lookups, matched_blocks, bad;
} mt_thread;

static uint64_t next(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

static uint32_t random_chain(const mt_shared *sh, uint64_t *rng, uint64_t *h,
                             uint32_t *root) {
  uint32_t n = 1 + (uint32_t)(next(rng) % sh->max_blocks);
  *root = (uint32_t)(next(rng) % sh->roots);
  uint32_t split = (uint32_t)(next(rng) % (sh->max_blocks + 1));
  chain(h, n, *root, split, 0, next(rng) % 4);
  return n;
}

/* A reader starts once the writers have made this many inserts: on a
 * loaded machine the readers could otherwise run all their lookups before
 * a writer is scheduled, and see only misses. */
#define MT_READER_WARM 256

/* Past its ops, a writer goes on while a reader is still looking up, and
 * a reader that has matched nothing goes on (yielding) while a writer is
 * still inserting, each up to this many times its ops. Without that, a
 * reader held off the CPU until the writers had finished, or run through
 * all its lookups while both writers were held off, looks up in a table
 * that stands still, whose last inserts (deep blocks of long chains) can
 * have evicted every chain's first block: it sees only misses. */
#define MT_MORE_CAP 50

static int mt_more(const mt_thread *t, long op) {
  const mt_shared *sh = t->sh;
  if (op < sh->ops) return 1;
  if (op >= MT_MORE_CAP * sh->ops) return 0;
  if (t->writer)
    return atomic_load_explicit(&sh->readers_left, memory_order_relaxed) > 0;
  if (t->matched_blocks > 0 ||
      atomic_load_explicit(&sh->writers_left, memory_order_relaxed) == 0)
    return 0;
  sched_yield();
  return 1;
}

static void *mt_run(void *arg) {
  mt_thread *t = arg;
  mt_shared *sh = t->sh;
  uint64_t h[MT_MAX_BLOCKS];
  uint32_t warm = sh->ops < MT_READER_WARM ? (uint32_t)sh->ops : MT_READER_WARM;
  while (!t->writer &&
         atomic_load_explicit(&sh->clock, memory_order_relaxed) < warm)
    sched_yield();
  for (long op = 0; mt_more(t, op); op++) {
    uint32_t root, n = random_chain(sh, &t->rng, h, &root);
    uint32_t slot = slot_of_root(root);
    if (t->writer) {
      uint32_t now = atomic_fetch_add_explicit(&sh->clock, 1,
                                               memory_order_relaxed) / 64;
      if (next(&t->rng) % 1000 == 0) { /* a replica is replaced */
        atomic_fetch_add_explicit(&sh->reg->gen[slot], 1, memory_order_relaxed);
        continue;
      }
      uint32_t gen = atomic_load_explicit(&sh->reg->gen[slot],
                                          memory_order_relaxed);
      uint32_t from = (uint32_t)(next(&t->rng) % 2 ? 0 : next(&t->rng) % n);
      /* A route that matched up to block from - 1 and goes on marks it,
       * racing the other writer's inserts and refreshes of that entry. */
      if (from > 0) spi__index_mark_continued(sh->ix, h[from - 1], slot, gen);
      spi__index_insert(sh->ix, h, from, n, slot, gen,
                        1 + (uint32_t)(next(&t->rng) % 4), now, 60,
                        reg_live_mt, sh->reg);
    } else {
      uint32_t slots[8], gens[8], nh = 99;
      uint64_t cont = ~UINT64_C(0);
      memset(slots, 0xff, sizeof slots);
      uint32_t len = spi__index_longest(sh->ix, h, n, reg_live_mt, sh->reg,
                                        slots, gens, 8, &nh, &cont);
      t->lookups++;
      t->matched_blocks += len;
      if (len > n || nh > 8 || (len == 0) != (nh == 0)) t->bad++;
      if (nh < 64 && (cont >> nh)) t->bad++; /* marks of listed holders only */
      for (uint32_t i = 0; i < nh && i < 8; i++)
        if (slots[i] >= SPI_REPLICA_SLOTS || gens[i] > SPI_INDEX_GEN_MASK ||
            slots[i] != slot)
          t->bad++;
    }
  }
  atomic_fetch_sub_explicit(t->writer ? &sh->writers_left : &sh->readers_left,
                            1, memory_order_relaxed);
  return NULL;
}

/* Two writers and two readers on one index of `budget` bytes. */
static void run_concurrent(size_t budget, long ops, uint32_t roots,
                           uint32_t max_blocks) {
  fixture *f = fixture_new();
  registry *r = registry_new();
  mt_shared sh;
  sh.ix = index_of(f, budget);
  sh.reg = r;
  sh.ops = ops;
  sh.roots = roots;
  sh.max_blocks = max_blocks;
  atomic_init(&sh.clock, 0);
  atomic_init(&sh.readers_left, 2);
  atomic_init(&sh.writers_left, 2);
  const char *env = getenv("SPI_TEST_MT_OPS");
  if (env && atol(env) > 0) sh.ops = atol(env);
  mt_thread t[4];
  pthread_t tid[4];
  for (int i = 0; i < 4; i++) {
    memset(&t[i], 0, sizeof t[i]);
    t[i].sh = &sh;
    t[i].rng = mix64((uint64_t)i + 1) | 1;
    t[i].writer = i < 2;
    assert_int_equal(pthread_create(&tid[i], NULL, mt_run, &t[i]), 0);
  }
  for (int i = 0; i < 4; i++) assert_int_equal(pthread_join(tid[i], NULL), 0);
  long lookups = 0, matched = 0;
  for (int i = 0; i < 4; i++) {
    assert_int_equal(t[i].bad, 0);
    lookups += t[i].lookups;
    matched += t[i].matched_blocks;
  }
  assert_true(lookups >= 2 * sh.ops);
  /* The readers did see the writers' work, not only misses. */
  assert_true(matched > 0);
  assert_true(spi__index_live_entries(sh.ix) <= spi__index_capacity(sh.ix));
  assert_true(spi__index_bytes(sh.ix) <= budget);
  free(r);
  spi__index_free(&f->mem, sh.ix);
  fixture_free(f);
}

/* 4096 entries for up to 64 * 64 * 4 distinct blocks: evictions all the
 * time, and most lookups match a part of their chain. */
static void test_concurrent(void **state) {
  (void)state;
  run_concurrent(64 * 1024, 60000, 64, MT_MAX_BLOCKS);
}

/* Two buckets and short chains of 4 roots: the writers fight over the same
 * 16 entries, which is where a tag could end up paired with the other
 * writer's payload, and the readers still find some of what they look for. */
static void test_concurrent_contended(void **state) {
  (void)state;
  fixture *f = fixture_new();
  size_t budget = min_budget(f) + BUCKET_BYTES;
  fixture_free(f);
  run_concurrent(budget, 60000, 4, 4);
}

/* Every page of a new table is resident before any insert, with the
 * default allocator (calloc, which hands out untouched pages): a route is
 * never the first to touch one, which would be a page fault inside it.
 * 40 MiB: glibc maps a block that large afresh whatever it was freed
 * before (its mmap threshold rises to at most 32 MiB), so calloc does not
 * write it. */
static void test_table_pages_resident(void **state) {
  (void)state;
#if defined(__linux__)
  spi_mem m = {spi__default_alloc, spi__default_free, NULL};
  spi_prefix_index *ix = NULL;
  assert_int_equal(spi__index_new(&m, (40u << 20) + 333, &ix), SPI_OK);
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  uintptr_t lo = ((uintptr_t)ix + page - 1) & ~(uintptr_t)(page - 1);
  uintptr_t end = (uintptr_t)ix + spi__index_bytes(ix);
  uintptr_t hi = end & ~(uintptr_t)(page - 1);
  size_t n = (hi - lo) / page;
  assert_true(n >= 1000);
  unsigned char *vec = malloc(n);
  assert_non_null(vec);
  assert_int_equal(mincore((void *)lo, hi - lo, vec), 0);
  size_t absent = 0;
  for (size_t i = 0; i < n; i++) absent += !(vec[i] & 1);
  assert_int_equal(absent, 0);
  free(vec);
  spi__index_free(&m, ix);
#else
  skip();
#endif
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_budget),
      cmocka_unit_test(test_table_pages_resident),
      cmocka_unit_test(test_new_errors),
      cmocka_unit_test(test_chain),
      cmocka_unit_test(test_shared_prefix),
      cmocka_unit_test(test_divergence),
      cmocka_unit_test(test_dead_entries),
      cmocka_unit_test(test_dead_evicted_first),
      cmocka_unit_test(test_evict_asks_once),
      cmocka_unit_test(test_stamp_ages),
      cmocka_unit_test(test_eviction_order),
      cmocka_unit_test(test_full_table),
      cmocka_unit_test(test_reader_paused),
      cmocka_unit_test(test_odd_hashes),
      cmocka_unit_test(test_huge_n),
      cmocka_unit_test(test_insert_model),
      cmocka_unit_test(test_probe_count),
      cmocka_unit_test(test_concurrent),
      cmocka_unit_test(test_concurrent_contended),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
