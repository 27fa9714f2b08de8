/*
 * test_ticket.c - the lock-free ticket table: take, publish, lookup, claim
 * and release; id uniqueness across reuse; stale and garbage ids; double
 * finish; exhaustion; and several threads taking, finishing and releasing
 * at once (also run under ThreadSanitizer).
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "routing.h"
#include "std_mem.h"

/* ---------------------------------------------------------------- helpers */

static spi_ticket_table *new_table(size_t cap) {
  spi_ticket_table *t = NULL;
  assert_int_equal(spi__tickets_new(&MEM, cap, &t), SPI_OK);
  assert_non_null(t);
  return t;
}

static uint64_t xorshift(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Take, fill and publish one ticket. */
static uint64_t open_one(spi_ticket_table *t, uint32_t slot,
                         const char *tenant) {
  spi_ticket *k = spi__ticket_take(t);
  assert_non_null(k);
  k->slot = slot;
  k->klass = SPI_CLASS_SILVER;
  snprintf(k->tenant, sizeof k->tenant, "%s", tenant);
  uint64_t id = spi__ticket_publish(t, k);
  assert_true(id != 0);
  return id;
}

/* Finish: lookup, claim, release. 1 if this call finished it. */
static int finish(spi_ticket_table *t, uint64_t id) {
  spi_ticket *k = spi__ticket_lookup(t, id);
  if (!k || !spi__ticket_claim(t, k, id)) return 0;
  spi__ticket_release(t, k);
  return 1;
}

/* ------------------------------------------------------------------ basics */

static void test_lifecycle(void **st) {
  (void)st;
  spi_ticket_table *t = new_table(8);
  assert_int_equal(spi__tickets_capacity(t), 8);
  assert_int_equal(spi__tickets_open(t), 0);

  spi_ticket *k = spi__ticket_take(t);
  assert_non_null(k);
  assert_int_equal(spi__tickets_open(t), 1);
  assert_int_equal(atomic_load(&k->id), 0); /* not findable before publish */
  k->slot = 7;
  k->gen = 3;
  k->pool = SPI_POOL_SPOT;
  k->klass = SPI_CLASS_GOLD;
  k->start_ns = 42;
  k->n_hashes = 2;
  k->hashes[0] = 11;
  k->hashes[1] = 12;
  strcpy(k->tenant, "acme");
  strcpy(k->model, "llama");
  uint64_t id = spi__ticket_publish(t, k);
  assert_true(id != 0);
  assert_int_equal(atomic_load(&k->id), id);

  spi_ticket *f = spi__ticket_lookup(t, id);
  assert_ptr_equal(f, k);
  assert_int_equal(f->slot, 7);
  assert_string_equal(f->tenant, "acme");

  assert_true(spi__ticket_claim(t, f, id));
  /* Claimed: gone for lookups and for a second finisher. */
  assert_null(spi__ticket_lookup(t, id));
  assert_false(spi__ticket_claim(t, f, id));
  assert_int_equal(spi__tickets_open(t), 1); /* until released */
  spi__ticket_release(t, f);
  assert_int_equal(spi__tickets_open(t), 0);
  assert_null(spi__ticket_lookup(t, id));
  spi__tickets_free(&MEM, t);
  spi__tickets_free(&MEM, NULL);
}

/* take() hands out a clean record whatever the last owner left in it:
 * every field zero, no hash, empty texts. */
static void test_take_resets(void **st) {
  (void)st;
  spi_ticket_table *t = new_table(1);
  spi_ticket *k = spi__ticket_take(t);
  k->slot = 9;
  k->gen = 9;
  k->pool = k->klass = k->model_tier = k->probe = 9;
  k->start_ns = 9;
  atomic_store(&k->first_token_ns, 9);
  atomic_store(&k->tokens_streamed, 9);
  k->prompt_tokens_est = 9;
  k->n_hashes = k->weight = 9;
  memset(k->hashes, 0xab, sizeof k->hashes);
  memset(k->tenant, 'x', sizeof k->tenant);
  memset(k->model, 'y', sizeof k->model);
  uint64_t id = spi__ticket_publish(t, k);
  assert_int_equal(finish(t, id), 1);

  spi_ticket *z = spi__ticket_take(t);
  assert_ptr_equal(z, k); /* capacity 1: the same record */
  assert_int_equal(z->slot, 0);
  assert_int_equal(z->gen, 0);
  assert_int_equal(z->pool, 0);
  assert_int_equal(z->klass, 0);
  assert_int_equal(z->model_tier, 0);
  assert_int_equal(z->probe, 0);
  assert_int_equal(z->start_ns, 0);
  assert_int_equal(atomic_load(&z->first_token_ns), 0);
  assert_int_equal(atomic_load(&z->tokens_streamed), 0);
  assert_int_equal(z->prompt_tokens_est, 0);
  assert_int_equal(z->n_hashes, 0);
  assert_int_equal(z->weight, 0);
  /* No hash is valid (n_hashes 0); their old values may stay. */
  assert_string_equal(z->tenant, "");
  assert_string_equal(z->model, "");
  assert_int_equal(atomic_load(&z->id), 0);
  spi__ticket_release(t, z); /* released unpublished */
  assert_int_equal(spi__tickets_open(t), 0);
  spi__tickets_free(&MEM, t);
}

static void test_bad_args(void **st) {
  (void)st;
  spi_ticket_table *t = (spi_ticket_table *)1;
  assert_int_equal(spi__tickets_new(&MEM, 0, &t), SPI_ERANGE);
  assert_null(t);
  assert_int_equal(spi__tickets_new(&MEM, ((size_t)1 << 22) + 1, &t),
                   SPI_ERANGE);
  assert_int_equal(spi__tickets_new(NULL, 4, &t), SPI_EINVAL);
  assert_int_equal(spi__tickets_new(&MEM, 4, NULL), SPI_EINVAL);
  assert_null(spi__ticket_take(NULL));
  assert_null(spi__ticket_lookup(NULL, 1));
  assert_int_equal(spi__tickets_open(NULL), 0);
  assert_int_equal(spi__tickets_capacity(NULL), 0);
}

/* The largest capacity is in range: it fails on memory, not on the bound,
 * and asks the allocator once. */
static void *fail_alloc(void *ud, size_t n) {
  (void)n;
  ++*(int *)ud;
  return NULL;
}

static void test_alloc_failure(void **st) {
  (void)st;
  int calls = 0;
  const spi_mem failing = {fail_alloc, std_free, &calls};
  spi_ticket_table *t = (spi_ticket_table *)1;
  assert_int_equal(spi__tickets_new(&failing, (size_t)1 << 22, &t), SPI_ENOMEM);
  assert_null(t);
  assert_int_equal(calls, 1);
  assert_int_equal(spi__tickets_new(&failing, 16, &t), SPI_ENOMEM);
  assert_int_equal(calls, 2);
}

/* ------------------------------------------------------------- identities */

/* Ids stay unique and nonzero across many reuses of few records. */
static void test_ids_unique(void **st) {
  (void)st;
  enum { CAP = 5, ROUNDS = 40000 };
  spi_ticket_table *t = new_table(CAP);
  uint64_t *ids = malloc(sizeof *ids * CAP * ROUNDS);
  assert_non_null(ids);
  size_t n = 0;
  for (int r = 0; r < ROUNDS; r++) {
    uint64_t open[CAP];
    for (int i = 0; i < CAP; i++) open[i] = ids[n++] = open_one(t, 0, "t");
    assert_null(spi__ticket_take(t));
    /* Finish in a varying order so records come back shuffled. */
    for (int i = 0; i < CAP; i++)
      assert_int_equal(finish(t, open[(i * 3 + r) % CAP]), 1);
  }
  qsort(ids, n, sizeof *ids, cmp_u64);
  assert_true(ids[0] != 0);
  for (size_t i = 1; i < n; i++)
    if (ids[i] == ids[i - 1])
      fail_msg("id %llx issued twice", (unsigned long long)ids[i]);
  free(ids);
  spi__tickets_free(&MEM, t);
}

/* An id kept after its ticket finished never finds the record's next use. */
static void test_stale_ids(void **st) {
  (void)st;
  spi_ticket_table *t = new_table(2);
  uint64_t old[64];
  for (int i = 0; i < 64; i++) {
    old[i] = open_one(t, (uint32_t)i, "a");
    uint64_t other = open_one(t, 1000, "b");
    assert_int_equal(finish(t, old[i]), 1);
    assert_int_equal(finish(t, old[i]), 0); /* double finish */
    assert_int_equal(finish(t, other), 1);
  }
  uint64_t live = open_one(t, 5, "c");
  for (int i = 0; i < 64; i++) {
    assert_null(spi__ticket_lookup(t, old[i]));
    spi_ticket *k = spi__ticket_lookup(t, live);
    assert_false(spi__ticket_claim(t, k, old[i]));
  }
  assert_int_equal(finish(t, live), 1);
  spi__tickets_free(&MEM, t);
}

/* Any 64-bit value that is not an open ticket's id is rejected without
 * reading outside the table. */
static void test_garbage_ids(void **st) {
  (void)st;
  enum { CAP = 16 };
  spi_ticket_table *t = new_table(CAP);
  uint64_t ids[CAP];
  for (int i = 0; i < CAP; i++) ids[i] = open_one(t, (uint32_t)i, "g");

  const uint64_t crafted[] = {
      0,
      UINT64_MAX,
      UINT64_C(0xffffff),              /* index bits all ones */
      UINT64_C(1) << 24,               /* generation 1, index bits 0 */
      (UINT64_C(1) << 24) | (CAP + 1), /* just past the table */
      (UINT64_C(1) << 24) | (CAP + 1000),
      ids[0] + (UINT64_C(1) << 24), /* next generation of a live record */
      ids[3] - (UINT64_C(1) << 24) + (UINT64_C(7) << 24),
      ids[5] ^ (UINT64_C(1) << 63),
      ids[7] & UINT64_C(0xffffff), /* generation 0 */
  };
  for (size_t i = 0; i < sizeof crafted / sizeof crafted[0]; i++)
    assert_null(spi__ticket_lookup(t, crafted[i]));

  uint64_t seed = UINT64_C(0x9e3779b97f4a7c15);
  for (int i = 0; i < 1000000; i++) {
    uint64_t v = xorshift(&seed);
    int live = 0;
    for (int j = 0; j < CAP; j++) live |= v == ids[j];
    if (!live) assert_null(spi__ticket_lookup(t, v));
    /* Small values hit the index range with a random generation. */
    v &= UINT64_C(0xfffffffff);
    live = 0;
    for (int j = 0; j < CAP; j++) live |= v == ids[j];
    if (!live) assert_null(spi__ticket_lookup(t, v));
  }
  for (int i = 0; i < CAP; i++) {
    assert_int_equal(spi__ticket_lookup(t, ids[i])->tenant[0], 'g');
    assert_int_equal(finish(t, ids[i]), 1);
  }
  spi__tickets_free(&MEM, t);
}

/* ------------------------------------------------ records made on first use */

/* An allocator that hands out memory full of 0xa5, as a reused heap block
 * may be: the table must not rely on zeroed memory, and whatever it does
 * not write at creation keeps the pattern. */
static unsigned char *last_block;
static size_t last_size;

static void *garbage_alloc(void *ud, size_t n) {
  (void)ud;
  unsigned char *p = malloc(n);
  if (p) memset(p, 0xa5, n);
  last_block = p;
  last_size = n;
  return p;
}

static const spi_mem GARBAGE = {garbage_alloc, std_free, NULL};

/* Creating a table writes its header and a byte per record, not the
 * records: a 16,384-record table is ~8.5 MB, which every engine paid in
 * touched pages even when its configuration replaced the table at once.
 * Records never handed out are never read either: ids and indices that
 * name them are not found, and each record is clean when first taken. */
static void test_records_made_on_first_use(void **st) {
  (void)st;
  enum { CAP = 4096 };
  spi_ticket_table *t = NULL;
  assert_int_equal(spi__tickets_new(&GARBAGE, CAP, &t), SPI_OK);
  assert_true(last_size > CAP * sizeof(spi_ticket));
  size_t untouched = 0;
  for (size_t i = 0; i < last_size; i++) untouched += last_block[i] == 0xa5;
  /* At most the header and the flags (CAP bytes) plus alignment. */
  assert_true(last_size - untouched <= CAP + 1024);

  uint64_t ids[3];
  for (int i = 0; i < 3; i++) ids[i] = open_one(t, (uint32_t)i, "lazy");
  assert_int_equal(spi__tickets_high(t), 3);
  for (size_t i = 3; i < CAP; i++) {
    assert_int_equal(spi__ticket_pin(t, i), 0);
    assert_null(spi__ticket_at(t, i));
    for (uint64_t g = 0; g < 4; g++) {
      uint64_t id = (g << 24) | (uint64_t)(i + 1);
      assert_null(spi__ticket_lookup(t, id));
      assert_null(spi__ticket_pin_id(t, id));
    }
  }
  /* The records handed out are found; every other record comes out clean
   * the first time it is taken. */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(spi__ticket_pin(t, (size_t)i), ids[i]);
    spi__ticket_unpin(t, (size_t)i);
    assert_string_equal(spi__ticket_lookup(t, ids[i])->tenant, "lazy");
  }
  for (size_t i = 3; i < CAP; i++) {
    spi_ticket *k = spi__ticket_take(t);
    assert_ptr_equal(k, spi__ticket_at(t, i));
    assert_int_equal(atomic_load(&k->id), 0);
    assert_int_equal(atomic_load(&k->readers), 0);
    assert_int_equal(atomic_load(&k->first_token_ns), 0);
    assert_int_equal(k->slot, 0);
    assert_int_equal(k->hashes[SPI_TICKET_HASHES - 1], 0);
    assert_int_equal(k->model[sizeof k->model - 1], 0);
    assert_true(spi__ticket_publish(t, k) >> 24 == 1); /* generation 1 */
  }
  assert_null(spi__ticket_take(t));
  for (int i = 0; i < 3; i++) assert_int_equal(finish(t, ids[i]), 1);
  spi__tickets_free(&MEM, t);

  /* A sealed table hands out nothing; one that handed out a ticket cannot
   * be sealed. */
  assert_int_equal(spi__tickets_new(&MEM, 8, &t), SPI_OK);
  assert_true(spi__tickets_seal(t));
  assert_null(spi__ticket_take(t));
  assert_int_equal(spi__tickets_high(t), 0);
  spi__tickets_free(&MEM, t);
  assert_int_equal(spi__tickets_new(&MEM, 8, &t), SPI_OK);
  assert_int_equal(finish(t, open_one(t, 1, "x")), 1);
  assert_false(spi__tickets_seal(t));
  assert_non_null(spi__ticket_take(t));
  spi__tickets_free(&MEM, t);
}

/* Resident memory of the process, in bytes (/proc/self/statm). */
static size_t resident_bytes(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  assert_non_null(f);
  unsigned long size = 0, resident = 0;
  assert_int_equal(fscanf(f, "%lu %lu", &size, &resident), 2);
  fclose(f);
  return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Default-size tables (16,384 records, ~8.5 MB each) kept alive grow the
 * process by a small fraction of their size each: a ratio, not a time. */
static void test_table_memory(void **st) {
  (void)st;
  enum { N = 8, CAP = 16384 };
  const size_t table = CAP * sizeof(spi_ticket);
  spi_ticket_table *t[N];
  size_t before = resident_bytes();
  for (int i = 0; i < N; i++) t[i] = new_table(CAP);
  /* A few tickets on each: only their records are written. */
  for (int i = 0; i < N; i++)
    for (int j = 0; j < 4; j++) open_one(t[i], (uint32_t)j, "rss");
  size_t after = resident_bytes();
  size_t grew = after > before ? (after - before) / N : 0;
  print_message("resident growth per %d-record table: %zu bytes (records "
                "%zu bytes)\n", CAP, grew, table);
  assert_true(grew < table / 16);
  for (int i = 0; i < N; i++) spi__tickets_free(&MEM, t[i]);
}

/* The same through spi_engine_new: its default ticket table (found among
 * the engine's allocations by its size) is still untouched but for its
 * header and flags. The engine's allocator fills every block with 0xa5. */
enum { BIG_MAX = 16 };
static struct {
  unsigned char *p;
  size_t n;
} big[BIG_MAX];

static void *engine_alloc(void *ud, size_t n) {
  (void)ud;
  unsigned char *p = malloc(n);
  if (!p) return NULL;
  memset(p, 0xa5, n);
  for (int i = 0; i < BIG_MAX && n >= ((size_t)1 << 20); i++)
    if (!big[i].p) {
      big[i].p = p;
      big[i].n = n;
      break;
    }
  return p;
}

static void engine_free(void *ud, void *p) {
  (void)ud;
  for (int i = 0; i < BIG_MAX; i++)
    if (p && big[i].p == p) big[i].p = NULL;
  free(p);
}

static void test_engine_table_untouched(void **st) {
  (void)st;
  enum { CAP = 16384 }; /* router.max_tickets by default */
  const size_t per = sizeof(spi_ticket) + 1; /* and its ready flag */
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = engine_alloc;
  h.free = engine_free;
  memset(big, 0, sizeof big);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  int found = 0;
  for (int i = 0; i < BIG_MAX; i++) {
    if (!big[i].p || big[i].n < CAP * per || big[i].n > CAP * (per + 1) + 4096)
      continue;
    found++;
    size_t written = 0;
    for (size_t j = 0; j < big[i].n; j++) written += big[i].p[j] != 0xa5;
    print_message("engine's ticket table: %zu of %zu bytes written\n",
                  written, big[i].n);
    assert_true(written <= CAP + 1024);
  }
  assert_int_equal(found, 1);
  spi_engine_free(e);
}

/* ------------------------------------------------------------- capacity */

static void test_exhaustion_and_reuse(void **st) {
  (void)st;
  enum { CAP = 33 };
  spi_ticket_table *t = new_table(CAP);
  spi_ticket *k[CAP];
  for (int i = 0; i < CAP; i++) {
    k[i] = spi__ticket_take(t);
    assert_non_null(k[i]);
    for (int j = 0; j < i; j++) assert_ptr_not_equal(k[i], k[j]);
  }
  assert_int_equal(spi__tickets_open(t), CAP);
  assert_null(spi__ticket_take(t));
  assert_null(spi__ticket_take(t));
  assert_int_equal(spi__tickets_open(t), CAP);

  uint64_t id = spi__ticket_publish(t, k[10]);
  assert_true(spi__ticket_claim(t, k[10], id));
  spi__ticket_release(t, k[10]);
  assert_int_equal(spi__tickets_open(t), CAP - 1);
  spi_ticket *again = spi__ticket_take(t);
  assert_ptr_equal(again, k[10]);
  assert_null(spi__ticket_take(t));

  for (int i = 0; i < CAP; i++) spi__ticket_release(t, k[i]);
  assert_int_equal(spi__tickets_open(t), 0);
  for (int i = 0; i < CAP; i++) assert_non_null(spi__ticket_take(t));
  assert_null(spi__ticket_take(t));
  spi__tickets_free(&MEM, t);
}

/* ---------------------------------------------------------------- threads */

/* A thread's step in test_stripes: take n records (or release them). */
typedef struct striped {
  spi_ticket_table *t;
  spi_ticket *k[4];
  int n;
  int give_back; /* 0 take n, 1 release k[0..n) */
} striped;

static void *striped_step(void *arg) {
  striped *s = arg;
  for (int i = 0; i < s->n; i++)
    if (s->give_back)
      spi__ticket_release(s->t, s->k[i]);
    else
      s->k[i] = spi__ticket_take(s->t);
  return NULL;
}

static void run_on_new_thread(striped *s) {
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, striped_step, s), 0);
  pthread_join(th, NULL);
}

/* Free records go back to the stripe of the thread that took them,
 * whichever thread finished them; a thread whose stripe is empty takes
 * another's before a never-used record, so the records ever handed out
 * stay as many as were ever open at once. Threads are numbered as they
 * first take (spi__thread_no): the test's threads are made one after
 * another, and this one took in the tests before, so each has a stripe of
 * its own. */
static void test_stripes(void **st) {
  (void)st;
  spi_ticket_table *t = new_table(64);
  spi_ticket *mine = spi__ticket_take(t); /* record 0 */
  unsigned here = mine->stripe;
  striped a = {t, {NULL}, 4, 0}, b = {t, {NULL}, 2, 0};
  run_on_new_thread(&a); /* records 1-4: nothing was free */
  run_on_new_thread(&b); /* records 5-6 */
  unsigned sa = a.k[0]->stripe, sb = b.k[0]->stripe;
  assert_true(sa != here && sb != here && sa != sb);
  for (int i = 0; i < 4; i++) {
    assert_ptr_equal(a.k[i], spi__ticket_at(t, (size_t)i + 1));
    assert_int_equal(a.k[i]->stripe, sa);
  }
  assert_int_equal(b.k[1]->stripe, sb);
  assert_int_equal(spi__tickets_high(t), 7);

  /* A's records given back by this thread, B's by a new one: each to its
   * taker's stripe. */
  for (int i = 0; i < 4; i++) spi__ticket_release(t, a.k[i]);
  b.give_back = 1;
  run_on_new_thread(&b);
  assert_int_equal(spi__tickets_free_in(t, sa), 4);
  assert_int_equal(spi__tickets_free_in(t, sb), 2);
  assert_int_equal(spi__tickets_free_in(t, here), 0);
  assert_int_equal(spi__tickets_open(t), 1);

  /* This thread's stripe is empty: it takes what the others hold, not a
   * never-used record, and what it takes is its stripe's from then on. */
  spi_ticket *got[6];
  for (int i = 0; i < 6; i++) {
    got[i] = spi__ticket_take(t);
    assert_non_null(got[i]);
    assert_int_equal(got[i]->stripe, here);
  }
  assert_int_equal(spi__tickets_high(t), 7);
  assert_int_equal(spi__tickets_free_in(t, sa), 0);
  assert_int_equal(spi__tickets_free_in(t, sb), 0);
  for (int i = 0; i < 6; i++) spi__ticket_release(t, got[i]);
  spi__ticket_release(t, mine);
  assert_int_equal(spi__tickets_free_in(t, here), 7);
  /* Now every stripe but this one is empty, and a new thread takes from
   * it rather than a never-used record. */
  striped c = {t, {NULL}, 1, 0};
  run_on_new_thread(&c);
  assert_ptr_equal(c.k[0], mine); /* the last given back */
  assert_int_equal(spi__tickets_high(t), 7);
  spi__ticket_release(t, c.k[0]);
  assert_int_equal(spi__tickets_open(t), 0);
  spi__tickets_free(&MEM, t);
}

enum { H_THREADS = 6, H_ITERS = 60000, H_BOARD = 64, H_CAP = 48 };

typedef struct hammer {
  spi_ticket_table *t;
  atomic_ullong board[H_BOARD]; /* published ids waiting for a finisher */
  atomic_ullong published;
  atomic_size_t n_won;
  uint64_t *won; /* every finished id, H_THREADS * H_ITERS at most */
} hammer;

typedef struct worker {
  hammer *h;
  int index;
  int bad;
} worker;

/* Finish id if still open; check what the owner wrote before publishing. */
static void try_finish(worker *w, uint64_t id) {
  spi_ticket_table *t = w->h->t;
  spi_ticket *k = spi__ticket_lookup(t, id);
  if (!k || !spi__ticket_claim(t, k, id)) return;
  /* Claimed: the record is ours until released. */
  char want[SPI_ID_MAX];
  snprintf(want, sizeof want, "w%u-%u", k->slot, k->gen);
  if (strcmp(want, k->tenant) != 0 || k->klass != (int32_t)(k->gen % 3 + 1) ||
      k->n_hashes != 1 || k->hashes[0] != ((uint64_t)k->slot << 32 | k->gen))
    w->bad++;
  w->h->won[atomic_fetch_add(&w->h->n_won, 1)] = id;
  spi__ticket_release(t, k);
}

static void *hammer_thread(void *arg) {
  worker *w = arg;
  hammer *h = w->h;
  uint64_t seed = UINT64_C(0x2545f4914f6cdd1d) * (uint64_t)(w->index + 1);
  for (uint32_t i = 0; i < H_ITERS; i++) {
    spi_ticket *k = spi__ticket_take(h->t);
    if (!k) {
      /* All open: finish whatever is on the board, then go on. */
      for (int b = 0; b < H_BOARD; b++) {
        uint64_t id = atomic_exchange(&h->board[b], 0);
        if (id) try_finish(w, id);
      }
      sched_yield();
      continue;
    }
    k->slot = (uint32_t)w->index;
    k->gen = i;
    k->klass = (int32_t)(i % 3 + 1);
    k->n_hashes = 1;
    k->hashes[0] = (uint64_t)k->slot << 32 | i;
    snprintf(k->tenant, sizeof k->tenant, "w%u-%u", k->slot, i);
    uint64_t id = spi__ticket_publish(h->t, k);
    atomic_fetch_add(&h->published, 1);
    if (spi__ticket_lookup(h->t, id) != k) w->bad++;
    uint64_t r = xorshift(&seed);
    /* Post it; finish what was there before. */
    uint64_t prev = atomic_exchange(&h->board[r % H_BOARD], id);
    if (prev) try_finish(w, prev);
    /* Sometimes race another finisher for an id still on the board: at
     * most one claim may win, and the board's later finisher must lose. */
    if ((r >> 20) % 4 == 0) {
      uint64_t peek = atomic_load(&h->board[(r >> 8) % H_BOARD]);
      if (peek) try_finish(w, peek);
    }
    /* Garbage never finds anything. */
    uint64_t g = xorshift(&seed) | (UINT64_C(1) << 62);
    if (spi__ticket_lookup(h->t, g)) w->bad++;
  }
  return NULL;
}

static void test_threads_hammer(void **st) {
  (void)st;
  hammer *h = calloc(1, sizeof *h);
  assert_non_null(h);
  h->t = new_table(H_CAP);
  h->won = malloc(sizeof(uint64_t) * H_THREADS * H_ITERS);
  assert_non_null(h->won);
  worker w[H_THREADS + 1];
  pthread_t th[H_THREADS];
  for (int i = 0; i <= H_THREADS; i++) {
    w[i].h = h;
    w[i].index = i;
    w[i].bad = 0;
  }
  for (int i = 0; i < H_THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, hammer_thread, &w[i]), 0);
  for (int i = 0; i < H_THREADS; i++) pthread_join(th[i], NULL);

  /* Drain the board. */
  for (int b = 0; b < H_BOARD; b++) {
    uint64_t id = atomic_exchange(&h->board[b], 0);
    if (id) try_finish(&w[H_THREADS], id);
  }
  for (int i = 0; i <= H_THREADS; i++) assert_int_equal(w[i].bad, 0);

  size_t published = atomic_load(&h->published);
  size_t n = atomic_load(&h->n_won);
  print_message("hammer: %zu tickets published and finished by %d threads\n",
                published, H_THREADS);
  assert_true(published > (size_t)H_THREADS * H_ITERS / 2);
  assert_int_equal(n, published);
  assert_int_equal(spi__tickets_open(h->t), 0);

  /* Every id was finished exactly once. */
  qsort(h->won, n, sizeof *h->won, cmp_u64);
  for (size_t i = 1; i < n; i++) assert_true(h->won[i] != h->won[i - 1]);

  /* The table is whole again: every record can be taken once. */
  for (int i = 0; i < H_CAP; i++) assert_non_null(spi__ticket_take(h->t));
  assert_null(spi__ticket_take(h->t));
  spi__tickets_free(&MEM, h->t);
  free(h->won);
  free(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lifecycle),
      cmocka_unit_test(test_take_resets),
      cmocka_unit_test(test_bad_args),
      cmocka_unit_test(test_alloc_failure),
      cmocka_unit_test(test_ids_unique),
      cmocka_unit_test(test_stale_ids),
      cmocka_unit_test(test_garbage_ids),
      cmocka_unit_test(test_exhaustion_and_reuse),
      cmocka_unit_test(test_records_made_on_first_use),
      cmocka_unit_test(test_table_memory),
      cmocka_unit_test(test_engine_table_untouched),
      cmocka_unit_test(test_stripes),
      cmocka_unit_test(test_threads_hammer),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
