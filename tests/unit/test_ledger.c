/*
 * test_ledger.c - the cost ledger: accumulation per (tenant, model, pool,
 * class), derived fields, the "(other)" overflow rows, bad amounts, threads
 * adding at once, and the public row API on an engine.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "routing.h"
#include "std_mem.h"

/* ---------------------------------------------------------------- helpers */

static spi_ledger *new_ledger(size_t rows) {
  spi_ledger *l = NULL;
  assert_int_equal(spi__ledger_new(&MEM, rows, &l), SPI_OK);
  assert_non_null(l);
  return l;
}

static spi_ledger_row row_at(spi_ledger *l, size_t i) {
  spi_ledger_row r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  assert_int_equal(spi__ledger_row(l, i, &r), SPI_OK);
  return r;
}

/* The row of a key; fails the test if there is none. */
static spi_ledger_row find(spi_ledger *l, const char *tenant, const char *model,
                           int32_t pool, int32_t klass) {
  size_t n = spi__ledger_count(l);
  for (size_t i = 0; i < n; i++) {
    spi_ledger_row r = row_at(l, i);
    if (strcmp(r.tenant, tenant) == 0 && strcmp(r.model, model) == 0 &&
        r.pool == pool && r.klass == klass)
      return r;
  }
  fail_msg("no ledger row for %s/%s/%d/%d", tenant, model, pool, klass);
  spi_ledger_row none = {0};
  return none;
}

static void add_ok(spi_ledger *l, const char *tenant, const char *model,
                   int32_t pool, int32_t klass) {
  spi__ledger_add(l, tenant, model, pool, klass, 1, 100, 10, 40, 0.5, 0.25);
}

/* ------------------------------------------------------------------ tests */

static void test_accumulates_per_key(void **st) {
  (void)st;
  spi_ledger *l = new_ledger(16);
  assert_int_equal(spi__ledger_count(l), 0);
  spi__ledger_add(l, "acme", "llama-70b", SPI_POOL_SPOT, SPI_CLASS_SILVER, 1,
                  1000, 200, 300, 2.0, 0.01);
  spi__ledger_add(l, "acme", "llama-70b", SPI_POOL_SPOT, SPI_CLASS_SILVER, 1,
                  500, 100, 0, 1.0, 0.005);
  spi__ledger_add(l, "acme", "llama-70b", SPI_POOL_SPOT, SPI_CLASS_SILVER, 0,
                  50, 0, 0, 0.0, 0.0);
  /* Each of these differs from the first key in one part. */
  spi__ledger_add(l, "beta", "llama-70b", SPI_POOL_SPOT, SPI_CLASS_SILVER, 1, 1,
                  1, 0, 1.0, 1.0);
  spi__ledger_add(l, "acme", "llama-8b", SPI_POOL_SPOT, SPI_CLASS_SILVER, 1, 2,
                  2, 0, 1.0, 1.0);
  spi__ledger_add(l, "acme", "llama-70b", SPI_POOL_ON_DEMAND, SPI_CLASS_SILVER,
                  1, 3, 3, 0, 1.0, 1.0);
  spi__ledger_add(l, "acme", "llama-70b", SPI_POOL_SPOT, SPI_CLASS_GOLD, 1, 4,
                  4, 0, 1.0, 1.0);
  spi__ledger_add(l, "", "llama-70b", SPI_POOL_SPOT, SPI_CLASS_SILVER, 1, 5, 5,
                  0, 1.0, 1.0);
  assert_int_equal(spi__ledger_count(l), 6);

  /* Rows come in order of first use. */
  spi_ledger_row r = row_at(l, 0);
  assert_string_equal(r.tenant, "acme");
  assert_string_equal(r.model, "llama-70b");
  assert_int_equal(r.pool, SPI_POOL_SPOT);
  assert_int_equal(r.klass, SPI_CLASS_SILVER);
  assert_int_equal(r.completed, 2);
  assert_int_equal(r.failed, 1);
  assert_int_equal(r.prompt_tokens, 1550);
  assert_int_equal(r.output_tokens, 300);
  assert_int_equal(r.cached_tokens, 300);
  assert_true(fabs(r.gpu_seconds - 3.0) < 1e-12);
  assert_true(fabs(r.usd - 0.015) < 1e-12);
  assert_int_equal(r.struct_size, sizeof r);

  assert_int_equal(find(l, "beta", "llama-70b", 1, 2).prompt_tokens, 1);
  assert_int_equal(find(l, "acme", "llama-8b", 1, 2).prompt_tokens, 2);
  assert_int_equal(find(l, "acme", "llama-70b", 2, 2).prompt_tokens, 3);
  assert_int_equal(find(l, "acme", "llama-70b", 1, 1).prompt_tokens, 4);
  assert_int_equal(find(l, "", "llama-70b", 1, 2).prompt_tokens, 5);
  assert_string_equal(row_at(l, 5).tenant, "");

  spi_ledger_row x;
  memset(&x, 0, sizeof x);
  x.struct_size = sizeof x;
  assert_int_equal(spi__ledger_row(l, 6, &x), SPI_ENOTFOUND);
  assert_int_equal(spi__ledger_row(l, SIZE_MAX, &x), SPI_ENOTFOUND);
  assert_int_equal(spi__ledger_row(l, 0, NULL), SPI_EINVAL);
  spi__ledger_free(&MEM, l);
  spi__ledger_free(&MEM, NULL);
}

static void test_derived_fields(void **st) {
  (void)st;
  spi_ledger *l = new_ledger(4);
  /* 4 completed for $2: $0.50 each; (3000 + 1000) tokens in 8 GPU-seconds:
   * 500 per GPU-second. */
  for (int i = 0; i < 4; i++)
    spi__ledger_add(l, "t", "m", SPI_POOL_ON_DEMAND, SPI_CLASS_GOLD, 1, 750,
                    250, 0, 2.0, 0.5);
  spi_ledger_row r = row_at(l, 0);
  assert_true(fabs(r.usd_per_completed - 0.5) < 1e-12);
  assert_true(fabs(r.tokens_per_gpu_second - 500.0) < 1e-9);

  /* Only failures: no completed response, so no price per completed; no
   * GPU time, so no throughput. */
  spi__ledger_add(l, "t", "m", SPI_POOL_SPOT, SPI_CLASS_BRONZE, 0, 100, 0, 0,
                  0.0, 0.3);
  r = find(l, "t", "m", SPI_POOL_SPOT, SPI_CLASS_BRONZE);
  assert_int_equal(r.completed, 0);
  assert_int_equal(r.failed, 1);
  assert_true(r.usd_per_completed == 0.0);
  assert_true(r.tokens_per_gpu_second == 0.0);
  assert_true(fabs(r.usd - 0.3) < 1e-12);
  spi__ledger_free(&MEM, l);
}

/* Keys are compared field by field: the same bytes split differently
 * between tenant and model, a name and its prefix, and a name cut to
 * SPI_ID_MAX - 1 bytes against the same name one byte longer (the same
 * row) are told apart, or not, by what each field holds. */
static void test_keys_by_field(void **st) {
  (void)st;
  spi_ledger *l = new_ledger(16);
  add_ok(l, "ab", "c", 1, 1);
  add_ok(l, "a", "bc", 1, 1);
  add_ok(l, "a", "b", 1, 1);
  add_ok(l, "a", "bcdefghij", 1, 1);
  add_ok(l, "a", "bcdefghi", 1, 1);
  add_ok(l, "ab", "c", 1, 1);
  assert_int_equal(spi__ledger_count(l), 5);
  assert_int_equal(find(l, "ab", "c", 1, 1).completed, 2);
  assert_int_equal(find(l, "a", "bc", 1, 1).completed, 1);
  char cut[SPI_ID_MAX + 1];
  memset(cut, 'm', SPI_ID_MAX);
  cut[SPI_ID_MAX] = '\0';
  add_ok(l, "t", cut, 2, 2);        /* cut to SPI_ID_MAX - 1 bytes */
  cut[SPI_ID_MAX - 1] = '\0';
  add_ok(l, "t", cut, 2, 2);        /* the same row */
  cut[SPI_ID_MAX - 2] = '\0';
  add_ok(l, "t", cut, 2, 2);        /* one byte shorter: its own */
  assert_int_equal(spi__ledger_count(l), 7);
  assert_int_equal(row_at(l, 5).completed, 2);
  assert_int_equal(row_at(l, 6).completed, 1);
  spi__ledger_free(&MEM, l);
}

/* NaN, infinite or negative amounts add nothing; long names are cut. */
static void test_bad_amounts_and_long_names(void **st) {
  (void)st;
  spi_ledger *l = new_ledger(4);
  spi__ledger_add(l, "t", "m", 1, 1, 1, 1, 1, 0, 1.0, 1.0);
  spi__ledger_add(l, "t", "m", 1, 1, 1, 1, 1, 0, NAN, -NAN);
  spi__ledger_add(l, "t", "m", 1, 1, 1, 1, 1, 0, INFINITY, -1.0);
  spi__ledger_add(l, "t", "m", 1, 1, 1, 1, 1, 0, -INFINITY, HUGE_VAL);
  spi_ledger_row r = row_at(l, 0);
  assert_int_equal(r.completed, 4);
  assert_true(r.gpu_seconds == 1.0);
  assert_true(r.usd == 1.0);

  char longname[200];
  memset(longname, 'a', sizeof longname - 1);
  longname[sizeof longname - 1] = '\0';
  spi__ledger_add(l, longname, NULL, 1, 1, 1, 1, 1, 0, 0, 0);
  spi__ledger_add(l, longname, NULL, 1, 1, 1, 1, 1, 0, 0, 0);
  assert_int_equal(spi__ledger_count(l), 2);
  r = row_at(l, 1);
  assert_int_equal(strlen(r.tenant), SPI_ID_MAX - 1);
  assert_string_equal(r.model, "");
  assert_int_equal(r.completed, 2);
  /* Out-of-range pool and class are kept as 0, not indexed with. */
  spi__ledger_add(l, "t", "m", 99, -7, 1, 1, 1, 0, 0, 0);
  r = row_at(l, 2);
  assert_int_equal(r.pool, 0);
  assert_int_equal(r.klass, 0);
  spi__ledger_free(&MEM, l);
}

static void test_overflow_row(void **st) {
  (void)st;
  spi_ledger *l = new_ledger(2);
  add_ok(l, "a", "m", SPI_POOL_SPOT, SPI_CLASS_SILVER);
  add_ok(l, "b", "m", SPI_POOL_SPOT, SPI_CLASS_SILVER);
  assert_int_equal(spi__ledger_count(l), 2);
  /* Full: new keys fold into the (other) row of their pool and class. */
  add_ok(l, "c", "m", SPI_POOL_SPOT, SPI_CLASS_SILVER);
  add_ok(l, "d", "n", SPI_POOL_SPOT, SPI_CLASS_SILVER);
  assert_int_equal(spi__ledger_count(l), 3);
  spi_ledger_row o = row_at(l, 2);
  assert_string_equal(o.tenant, "(other)");
  assert_string_equal(o.model, "(other)");
  assert_int_equal(o.pool, SPI_POOL_SPOT);
  assert_int_equal(o.klass, SPI_CLASS_SILVER);
  assert_int_equal(o.completed, 2);
  assert_int_equal(o.prompt_tokens, 200);
  /* Keys that have a row keep adding to it. */
  add_ok(l, "a", "m", SPI_POOL_SPOT, SPI_CLASS_SILVER);
  assert_int_equal(find(l, "a", "m", 1, 2).completed, 2);
  /* Another pool/class gets its own overflow row. */
  add_ok(l, "e", "m", SPI_POOL_ON_DEMAND, SPI_CLASS_GOLD);
  add_ok(l, "a", "m", SPI_POOL_SPOT, SPI_CLASS_BRONZE);
  assert_int_equal(spi__ledger_count(l), 5);
  assert_int_equal(find(l, "(other)", "(other)", 2, 1).completed, 1);
  assert_int_equal(find(l, "(other)", "(other)", 1, 3).completed, 1);
  assert_int_equal(find(l, "(other)", "(other)", 1, 2).completed, 2);

  /* Every pool and class, including out-of-range ones, finds room: the
   * overflow rows are reserved, so adding never fails. */
  for (int p = -1; p <= 4; p++)
    for (int c = -1; c <= 4; c++)
      for (int i = 0; i < 3; i++) {
        char t[16];
        snprintf(t, sizeof t, "x%d%d%d", p, c, i);
        add_ok(l, t, "m", p, c);
      }
  assert_int_equal(spi__ledger_count(l), 2 + 16);
  uint64_t total = 0;
  for (size_t i = 0; i < spi__ledger_count(l); i++)
    total += row_at(l, i).completed;
  assert_int_equal(total, 7 + 6 * 6 * 3);
  spi__ledger_free(&MEM, l);
}

static void test_zero_rows(void **st) {
  (void)st;
  spi_ledger *l = new_ledger(0);
  add_ok(l, "a", "m", SPI_POOL_SPOT, SPI_CLASS_GOLD);
  add_ok(l, "b", "m", SPI_POOL_SPOT, SPI_CLASS_GOLD);
  assert_int_equal(spi__ledger_count(l), 1);
  assert_string_equal(row_at(l, 0).tenant, "(other)");
  assert_int_equal(row_at(l, 0).completed, 2);
  spi__ledger_free(&MEM, l);
}

static void *null_alloc(void *ud, size_t n) {
  (void)ud;
  (void)n;
  return NULL;
}

static void test_new_errors(void **st) {
  (void)st;
  const spi_mem failing = {null_alloc, std_free, NULL};
  spi_ledger *l = (spi_ledger *)1;
  assert_int_equal(spi__ledger_new(&failing, 16, &l), SPI_ENOMEM);
  assert_null(l);
  assert_int_equal(spi__ledger_new(&MEM, (size_t)1 << 30, &l), SPI_ERANGE);
  assert_int_equal(spi__ledger_new(NULL, 16, &l), SPI_EINVAL);
  assert_int_equal(spi__ledger_new(&MEM, 16, NULL), SPI_EINVAL);
  /* NULL ledger: empty. */
  spi__ledger_add(NULL, "a", "m", 1, 1, 1, 1, 1, 1, 1, 1);
  assert_int_equal(spi__ledger_count(NULL), 0);
  spi_ledger_row r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;
  assert_int_equal(spi__ledger_row(NULL, 0, &r), SPI_ENOTFOUND);
}

/* ---------------------------------------------------------------- threads */

enum { L_THREADS = 4, L_ADDS = 20000, L_KEYS = 12 };

typedef struct adder {
  spi_ledger *l;
  int index;
} adder;

static void *adder_thread(void *arg) {
  adder *a = arg;
  for (int i = 0; i < L_ADDS; i++) {
    int k = (i + a->index) % L_KEYS;
    char t[16];
    snprintf(t, sizeof t, "tenant%d", k);
    /* 12 keys for 8 rows: the last four fold into the overflow row. */
    spi__ledger_add(a->l, t, "m", SPI_POOL_SPOT, SPI_CLASS_SILVER, i % 5 != 0,
                    10, 2, 1, 0.25, 0.125);
    if (i % 1000 == 0) {
      size_t n = spi__ledger_count(a->l);
      spi_ledger_row r;
      memset(&r, 0, sizeof r);
      r.struct_size = sizeof r;
      if (n) spi__ledger_row(a->l, (size_t)i % n, &r);
    }
  }
  return NULL;
}

static void test_concurrent_adds(void **st) {
  (void)st;
  spi_ledger *l = new_ledger(8);
  pthread_t th[L_THREADS];
  adder a[L_THREADS];
  for (int i = 0; i < L_THREADS; i++) {
    a[i].l = l;
    a[i].index = i;
    assert_int_equal(pthread_create(&th[i], NULL, adder_thread, &a[i]), 0);
  }
  for (int i = 0; i < L_THREADS; i++) pthread_join(th[i], NULL);
  assert_int_equal(spi__ledger_count(l), 9);
  uint64_t completed = 0, failed = 0, prompt = 0, cached = 0;
  double gpu = 0, usd = 0;
  for (size_t i = 0; i < 9; i++) {
    spi_ledger_row r = row_at(l, i);
    completed += r.completed;
    failed += r.failed;
    prompt += r.prompt_tokens;
    cached += r.cached_tokens;
    gpu += r.gpu_seconds;
    usd += r.usd;
  }
  const uint64_t n = (uint64_t)L_THREADS * L_ADDS;
  assert_int_equal(completed + failed, n);
  assert_int_equal(failed, n / 5);
  assert_int_equal(prompt, 10 * n);
  assert_int_equal(cached, n);
  /* Quarters and eighths add exactly in binary. */
  assert_true(gpu == 0.25 * (double)n);
  assert_true(usd == 0.125 * (double)n);
  /* Which eight keys got rows depends on the race; the rest folded. */
  spi_ledger_row o = find(l, "(other)", "(other)", 1, 2);
  assert_true(o.completed + o.failed > 0);
  for (size_t i = 0; i < 9; i++) {
    spi_ledger_row r = row_at(l, i);
    if (strcmp(r.tenant, "(other)") != 0)
      assert_int_equal(strncmp(r.tenant, "tenant", 6), 0);
  }
  spi__ledger_free(&MEM, l);
}

/* A thread's adds in test_rows_whole_in_every_stripe: n to tenant "a",
 * then one to "b". */
typedef struct striped_adds {
  spi_ledger *l;
  int n;
} striped_adds;

static void *striped_adder(void *arg) {
  striped_adds *a = arg;
  for (int i = 0; i < a->n; i++) add_ok(a->l, "a", "m", 1, 2);
  add_ok(a->l, "b", "m", 1, 2);
  return NULL;
}

static void *dirty_alloc(void *ud, size_t n) {
  (void)ud;
  void *p = malloc(n);
  if (p) memset(p, 0xa5, n);
  return p;
}

/* Each thread adds to a stripe of its own (threads are numbered as they
 * first add); a row's sums are zeroed in every stripe when it is made,
 * whatever the allocator left there, and a read adds the stripes up. */
static void test_rows_whole_in_every_stripe(void **st) {
  (void)st;
  const spi_mem dirty = {dirty_alloc, std_free, NULL};
  spi_ledger *l = NULL;
  assert_int_equal(spi__ledger_new(&dirty, 16, &l), SPI_OK);
  striped_adds a[3] = {{l, 3}, {l, 5}, {l, 7}};
  for (int i = 0; i < 3; i++) {
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, striped_adder, &a[i]), 0);
    pthread_join(th, NULL);
  }
  add_ok(l, "a", "m", 1, 2);
  assert_int_equal(spi__ledger_count(l), 2);
  spi_ledger_row r = find(l, "a", "m", 1, 2);
  assert_int_equal(r.completed, 16);
  assert_int_equal(r.prompt_tokens, 1600);
  assert_int_equal(r.cached_tokens, 640);
  assert_true(r.gpu_seconds == 8.0 && r.usd == 4.0);
  assert_int_equal(r.interrupted, 0);
  assert_true(r.wasted_usd == 0.0);
  r = find(l, "b", "m", 1, 2);
  assert_int_equal(r.completed, 3);
  assert_true(r.usd == 0.75);
  spi__ledger_free(&dirty, l);
}

/* ------------------------------------------------------------- public API */

static void test_public_api(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_ledger_row r;
  memset(&r, 0, sizeof r);
  r.struct_size = sizeof r;

  /* The engine's own ledger, whatever it is now, is put back at the end. */
  spi_ledger *saved = atomic_exchange(&e->ledger, NULL);
  assert_int_equal(spi_ledger_count(e), 0);
  assert_int_equal(spi_ledger_row_at(e, 0, &r), SPI_ENOTFOUND);

  spi_ledger *l = new_ledger(4);
  atomic_store(&e->ledger, l);
  spi__ledger_add(l, "acme", "m", SPI_POOL_SPOT, SPI_CLASS_GOLD, 1, 100, 50, 0,
                  3.0, 0.6);
  spi__ledger_add(l, "acme", "m", SPI_POOL_SPOT, SPI_CLASS_GOLD, 1, 100, 50, 0,
                  3.0, 0.6);
  assert_int_equal(spi_ledger_count(e), 1);
  assert_int_equal(spi_ledger_row_at(e, 0, &r), SPI_OK);
  assert_string_equal(r.tenant, "acme");
  assert_int_equal(r.completed, 2);
  assert_true(fabs(r.usd_per_completed - 0.6) < 1e-12);
  assert_true(fabs(r.tokens_per_gpu_second - 50.0) < 1e-9);
  assert_int_equal(spi_ledger_row_at(e, 1, &r), SPI_ENOTFOUND);

  r.struct_size = sizeof r - 1;
  assert_int_equal(spi_ledger_row_at(e, 0, &r), SPI_EINVAL);
  assert_int_equal(spi_ledger_row_at(e, 0, NULL), SPI_EINVAL);
  assert_int_equal(spi_ledger_row_at(NULL, 0, &r), SPI_EMISUSE);
  assert_int_equal(spi_ledger_count(NULL), 0);
  spi_engine fake;
  memset(&fake, 0, sizeof fake);
  assert_int_equal(spi_ledger_count(&fake), 0);
  r.struct_size = sizeof r;
  assert_int_equal(spi_ledger_row_at(&fake, 0, &r), SPI_EMISUSE);

  atomic_store(&e->ledger, saved);
  spi__ledger_free(&MEM, l);
  spi_engine_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_accumulates_per_key),
      cmocka_unit_test(test_derived_fields),
      cmocka_unit_test(test_keys_by_field),
      cmocka_unit_test(test_bad_amounts_and_long_names),
      cmocka_unit_test(test_overflow_row),
      cmocka_unit_test(test_zero_rows),
      cmocka_unit_test(test_new_errors),
      cmocka_unit_test(test_concurrent_adds),
      cmocka_unit_test(test_rows_whole_in_every_stripe),
      cmocka_unit_test(test_public_api),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
