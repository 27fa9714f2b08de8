/*
 * test_breaker.c - the pool KV-pressure breaker (hysteresis both ways, every
 * table entry against its rule, pressure levels) and the replica error
 * breaker (every transition on a fake clock, the single half-open probe
 * under concurrent callers, a single opener under concurrent errors).
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

#include "routing.h"

#define MS 1000000LL
#define SEC 1000000000LL

/* The shipped defaults (router.kv_*). */
static spi_router_cfg cfg(void) {
  spi_router_cfg c;
  memset(&c, 0, sizeof c);
  c.kv_open = 0.85;
  c.kv_close = 0.75;
  c.kv_silver_open = 0.95;
  c.kv_silver_close = 0.85;
  c.error_threshold = 3;
  c.error_cooldown_ms = 5000;
  return c;
}

/* ------------------------------------------------------------- KV breaker */

/* Feed pressures in order, checking the level after each. */
static void walk(const spi_router_cfg *c, int level, const double *p,
                 const int *want, size_t n) {
  for (size_t i = 0; i < n; i++) {
    int got = spi__kv_breaker_step(level, p[i], c);
    if (got != want[i])
      print_error("step %zu: level %d, pressure %g -> %d, want %d\n", i, level,
                  p[i], got, want[i]);
    assert_int_equal(got, want[i]);
    level = got;
  }
}

static void test_kv_rising(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  const double p[] = {0.0, 0.5, 0.7499, 0.75, 0.84, 0.85, 0.9,
                      0.9499, 0.95, 0.99, 1.0};
  const int want[] = {0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2};
  walk(&c, 0, p, want, sizeof p / sizeof p[0]);
}

static void test_kv_falling(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  /* Silver stays shed down to its close threshold (0.85 inclusive), bronze
   * down to 0.75 inclusive. */
  const double p[] = {1.0, 0.94, 0.9, 0.85, 0.8499, 0.8, 0.75, 0.7499, 0.5};
  const int want[] = {2, 2, 2, 2, 1, 1, 1, 0, 0};
  walk(&c, 2, p, want, sizeof p / sizeof p[0]);
}

static void test_kv_flapping(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  /* Hovering around an open threshold does not flap. */
  const double p[] = {0.86, 0.84, 0.86, 0.80, 0.76, 0.86, 0.74, 0.84, 0.86};
  const int want[] = {1, 1, 1, 1, 1, 1, 0, 0, 1};
  walk(&c, 0, p, want, sizeof p / sizeof p[0]);
  const double q[] = {0.96, 0.90, 0.94, 0.96, 0.86, 0.84, 0.96};
  const int wq[] = {2, 2, 2, 2, 2, 1, 2};
  walk(&c, 0, q, wq, sizeof q / sizeof q[0]);
  /* Big jumps skip levels both ways. */
  const double r[] = {0.99, 0.1, 0.97, 0.0};
  const int wr[] = {2, 0, 2, 0};
  walk(&c, 0, r, wr, sizeof r / sizeof r[0]);
  /* From 1 straight to silver and back through 1. */
  const double s[] = {0.9, 0.96, 0.8, 0.7};
  const int ws[] = {1, 2, 1, 0};
  walk(&c, 0, s, ws, sizeof s / sizeof s[0]);
}

static void test_kv_odd_inputs(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  /* No usable signal: treated as full. */
  assert_int_equal(spi__kv_breaker_step(0, NAN, &c), 2);
  assert_int_equal(spi__kv_breaker_step(1, NAN, &c), 2);
  assert_int_equal(spi__kv_breaker_step(0, INFINITY, &c), 2);
  assert_int_equal(spi__kv_breaker_step(2, -INFINITY, &c), 0);
  /* A level that is not one is taken as the safest. */
  assert_int_equal(spi__kv_breaker_step(7, 0.9, &c), 2);
  assert_int_equal(spi__kv_breaker_step(-1, 0.8, &c), 1);
  assert_int_equal(spi__kv_breaker_step(-1, 0.1, &c), 0);
  /* Close == open degenerates to a plain threshold. */
  spi_router_cfg d = c;
  d.kv_close = d.kv_open = 0.8;
  d.kv_silver_close = d.kv_silver_open = 0.9;
  assert_int_equal(spi__kv_breaker_step(0, 0.8, &d), 1);
  assert_int_equal(spi__kv_breaker_step(1, 0.7999, &d), 0);
  assert_int_equal(spi__kv_breaker_step(2, 0.8999, &d), 1);
}

/* Every entry of the table against the rule it encodes, on a grid that hits
 * every threshold, just below and just above. */
static void test_kv_table_rules(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  for (int level = 0; level <= 2; level++) {
    for (int k = 0; k <= 1000; k++) {
      double p = k / 1000.0;
      int next = spi__kv_breaker_step(level, p, &c);
      int silver = p >= c.kv_silver_open ||
                   (level == 2 && p >= c.kv_silver_close);
      int bronze = p >= c.kv_open || (level >= 1 && p >= c.kv_close);
      int want = silver ? 2 : bronze ? 1 : 0;
      if (next != want)
        print_error("level %d pressure %g: %d, want %d\n", level, p, next,
                    want);
      assert_int_equal(next, want);
    }
  }
}

/* The step with its pressure level (what a route calls, with a path of
 * its own below every threshold) is the step and the level apart, at every
 * level and pressure, with the thresholds in either order and a NaN. */
static void test_kv_step_level_same(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  for (int odd = 0; odd <= 1; odd++) {
    if (odd) { /* silver's thresholds below bronze's: not a sane config */
      c.kv_silver_close = 0.2;
      c.kv_silver_open = 0.3;
    }
    for (int level = 0; level <= 2; level++) {
      for (int k = 0; k <= 1001; k++) {
        double p = k == 1001 ? NAN : k / 1000.0;
        int32_t lv = -1;
        int next = spi__kv_breaker_step_level(level, p, &c, &lv);
        assert_int_equal(next, spi__kv_breaker_step(level, p, &c));
        assert_int_equal(lv, spi__pressure_level(p, &c));
      }
    }
  }
}

static void test_pressure_level(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  assert_int_equal(spi__pressure_level(0.0, &c), SPI_PRESSURE_NORMAL);
  assert_int_equal(spi__pressure_level(0.7499, &c), SPI_PRESSURE_NORMAL);
  assert_int_equal(spi__pressure_level(0.75, &c), SPI_PRESSURE_ELEVATED);
  assert_int_equal(spi__pressure_level(0.8499, &c), SPI_PRESSURE_ELEVATED);
  assert_int_equal(spi__pressure_level(0.85, &c), SPI_PRESSURE_HIGH);
  assert_int_equal(spi__pressure_level(0.9499, &c), SPI_PRESSURE_HIGH);
  assert_int_equal(spi__pressure_level(0.95, &c), SPI_PRESSURE_CRITICAL);
  assert_int_equal(spi__pressure_level(1.0, &c), SPI_PRESSURE_CRITICAL);
  assert_int_equal(spi__pressure_level(NAN, &c), SPI_PRESSURE_CRITICAL);
}

static void test_names(void **st) {
  (void)st;
  assert_string_equal(spi__kv_level_name(0), "closed");
  assert_string_equal(spi__kv_level_name(1), "shed_bronze");
  assert_string_equal(spi__kv_level_name(2), "shed_silver");
  assert_string_equal(spi__kv_level_name(3), "invalid");
  assert_string_equal(spi__kv_level_name(-1), "invalid");
  assert_string_equal(spi__breaker_state_name(SPI_BREAKER_CLOSED), "closed");
  assert_string_equal(spi__breaker_state_name(SPI_BREAKER_OPEN), "open");
  assert_string_equal(spi__breaker_state_name(SPI_BREAKER_HALF_OPEN),
                      "half_open");
  assert_string_equal(spi__breaker_state_name(3), "invalid");
  assert_string_equal(spi__breaker_state_name(-1), "invalid");
}

/* ---------------------------------------------------------- error breaker */

/* A slot as the registry hands it out. */
static void slot_init(spi_replica_slot *s) {
  memset(s, 0, sizeof *s);
  atomic_init(&s->gen, 1u);
  atomic_init(&s->state, SPI_REPLICA_ACTIVE);
  atomic_init(&s->breaker, SPI_BREAKER_CLOSED);
  atomic_init(&s->consecutive_errors, 0u);
  atomic_init(&s->open_until_ns, 0ll);
  atomic_init(&s->probe_taken, 1);
}

static int state(spi_replica_slot *s) { return atomic_load(&s->breaker); }

static void test_closed_counts_errors(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  spi_replica_slot s;
  slot_init(&s);
  int64_t now = 1000 * SEC;
  int probe = 7;
  assert_true(spi__breaker_allows(&s, now, &probe));
  assert_int_equal(probe, 0);
  assert_true(spi__breaker_allows(&s, now, NULL));
  /* Two errors, a success resets, two more: still closed. */
  assert_false(spi__breaker_record(&s, 0, 0, now, &c));
  assert_false(spi__breaker_record(&s, 0, 0, now, &c));
  assert_int_equal(atomic_load(&s.consecutive_errors), 2);
  assert_false(spi__breaker_record(&s, 1, 0, now, &c));
  assert_int_equal(atomic_load(&s.consecutive_errors), 0);
  assert_false(spi__breaker_record(&s, 0, 0, now, &c));
  assert_false(spi__breaker_record(&s, 0, 0, now, &c));
  assert_int_equal(state(&s), SPI_BREAKER_CLOSED);
  /* No probe to claim while closed. */
  assert_false(spi__breaker_claim_probe(&s));
  /* The third consecutive error opens it, for the cooldown. */
  assert_true(spi__breaker_record(&s, 0, 0, now, &c));
  assert_int_equal(state(&s), SPI_BREAKER_OPEN);
  assert_int_equal(atomic_load(&s.open_until_ns), now + 5000 * MS);
  assert_int_equal(atomic_load(&s.consecutive_errors), 3);
}

static void open_at(spi_replica_slot *s, int64_t now, const spi_router_cfg *c) {
  slot_init(s);
  for (int i = 0; i < c->error_threshold; i++)
    spi__breaker_record(s, 0, 0, now, c);
  assert_int_equal(state(s), SPI_BREAKER_OPEN);
}

static void test_open_then_half_open(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  spi_replica_slot s;
  int64_t t0 = 1000 * SEC;
  open_at(&s, t0, &c);
  int probe = 7;
  /* Refused during the cooldown; late results of requests sent before it
   * opened do not move it. */
  assert_false(spi__breaker_allows(&s, t0, &probe));
  assert_int_equal(probe, 0);
  assert_false(spi__breaker_allows(&s, t0 + 4999 * MS, &probe));
  assert_false(spi__breaker_record(&s, 0, 0, t0 + 1 * SEC, &c));
  assert_false(spi__breaker_record(&s, 1, 0, t0 + 1 * SEC, &c));
  assert_int_equal(state(&s), SPI_BREAKER_OPEN);
  assert_int_equal(atomic_load(&s.open_until_ns), t0 + 5000 * MS);
  assert_false(spi__breaker_claim_probe(&s));
  /* Cooldown over: half-open, one probe offered. */
  assert_true(spi__breaker_allows(&s, t0 + 5000 * MS, &probe));
  assert_int_equal(probe, 1);
  assert_int_equal(state(&s), SPI_BREAKER_HALF_OPEN);
  /* Offered again until someone claims it. */
  probe = 0;
  assert_true(spi__breaker_allows(&s, t0 + 5001 * MS, &probe));
  assert_int_equal(probe, 1);
  assert_true(spi__breaker_claim_probe(&s));
  assert_false(spi__breaker_claim_probe(&s));
  assert_false(spi__breaker_allows(&s, t0 + 6 * SEC, &probe));
  assert_int_equal(probe, 0);
  /* Results that are not the probe's change nothing. */
  assert_false(spi__breaker_record(&s, 1, 0, t0 + 6 * SEC, &c));
  assert_false(spi__breaker_record(&s, 0, 0, t0 + 6 * SEC, &c));
  assert_int_equal(state(&s), SPI_BREAKER_HALF_OPEN);
}

static void half_open_with_probe(spi_replica_slot *s, int64_t t0,
                                 const spi_router_cfg *c) {
  open_at(s, t0, c);
  int probe = 0;
  assert_true(spi__breaker_allows(s, t0 + 10 * SEC, &probe));
  assert_int_equal(probe, 1);
  assert_true(spi__breaker_claim_probe(s));
}

static void test_probe_ok_closes(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  spi_replica_slot s;
  int64_t t0 = 1000 * SEC;
  half_open_with_probe(&s, t0, &c);
  assert_false(spi__breaker_record(&s, 1, 1, t0 + 11 * SEC, &c));
  assert_int_equal(state(&s), SPI_BREAKER_CLOSED);
  assert_int_equal(atomic_load(&s.consecutive_errors), 0);
  int probe = 7;
  assert_true(spi__breaker_allows(&s, t0 + 11 * SEC, &probe));
  assert_int_equal(probe, 0);
  /* Closed again means a full threshold of errors to reopen. */
  assert_false(spi__breaker_record(&s, 0, 0, t0 + 12 * SEC, &c));
  assert_false(spi__breaker_record(&s, 0, 0, t0 + 12 * SEC, &c));
  assert_true(spi__breaker_record(&s, 0, 0, t0 + 12 * SEC, &c));
  assert_int_equal(atomic_load(&s.open_until_ns), t0 + 17 * SEC);
}

static void test_probe_error_reopens(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  spi_replica_slot s;
  int64_t t0 = 1000 * SEC;
  half_open_with_probe(&s, t0, &c);
  int64_t t1 = t0 + 12 * SEC;
  assert_true(spi__breaker_record(&s, 0, 1, t1, &c));
  assert_int_equal(state(&s), SPI_BREAKER_OPEN);
  assert_int_equal(atomic_load(&s.open_until_ns), t1 + 5 * SEC);
  int probe = 0;
  assert_false(spi__breaker_allows(&s, t1 + 4 * SEC, &probe));
  assert_false(spi__breaker_claim_probe(&s));
  /* A new round, a new single probe. */
  assert_true(spi__breaker_allows(&s, t1 + 5 * SEC, &probe));
  assert_int_equal(probe, 1);
  assert_true(spi__breaker_claim_probe(&s));
  assert_false(spi__breaker_claim_probe(&s));
  assert_false(spi__breaker_record(&s, 1, 1, t1 + 6 * SEC, &c));
  assert_int_equal(state(&s), SPI_BREAKER_CLOSED);
}

static void test_probe_release(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  spi_replica_slot s;
  int64_t t0 = 1000 * SEC;
  half_open_with_probe(&s, t0, &c);
  /* The probe's request was cancelled: hand it back, another may go. */
  spi__breaker_release_probe(&s);
  int probe = 0;
  assert_true(spi__breaker_allows(&s, t0 + 11 * SEC, &probe));
  assert_int_equal(probe, 1);
  assert_true(spi__breaker_claim_probe(&s));
  /* Releasing outside HALF_OPEN does nothing. */
  assert_false(spi__breaker_record(&s, 1, 1, t0 + 12 * SEC, &c));
  spi__breaker_release_probe(&s);
  assert_false(spi__breaker_claim_probe(&s));
  assert_int_equal(atomic_load(&s.probe_taken), 1);
}

static void test_stale_probe_flag(void **st) {
  (void)st;
  spi_router_cfg c = cfg();
  spi_replica_slot s;
  slot_init(&s);
  /* was_probe on a breaker that is not half-open is an ordinary result. */
  assert_false(spi__breaker_record(&s, 0, 1, 0, &c));
  assert_int_equal(atomic_load(&s.consecutive_errors), 1);
  assert_false(spi__breaker_record(&s, 1, 1, 0, &c));
  assert_int_equal(state(&s), SPI_BREAKER_CLOSED);
}

static void test_defaults_and_overflow(void **st) {
  (void)st;
  /* Zero config: threshold 5, cooldown 10 s. */
  spi_router_cfg z;
  memset(&z, 0, sizeof z);
  spi_replica_slot s;
  slot_init(&s);
  for (int i = 0; i < 4; i++) assert_false(spi__breaker_record(&s, 0, 0, 0, &z));
  assert_true(spi__breaker_record(&s, 0, 0, 0, &z));
  assert_int_equal(atomic_load(&s.open_until_ns), 10 * SEC);
  slot_init(&s);
  for (int i = 0; i < 4; i++) assert_false(spi__breaker_record(&s, 0, 0, 0, NULL));
  assert_true(spi__breaker_record(&s, 0, 0, 0, NULL));
  /* A deadline past the end of time saturates instead of wrapping. */
  spi_router_cfg c = cfg();
  c.error_threshold = 1;
  c.error_cooldown_ms = INT64_MAX / 2;
  slot_init(&s);
  assert_true(spi__breaker_record(&s, 0, 0, INT64_MAX - SEC, &c));
  assert_int_equal(atomic_load(&s.open_until_ns), INT64_MAX);
  assert_false(spi__breaker_allows(&s, INT64_MAX - 1, NULL));
}

/* ------------------------------------------------------------ concurrency */

#define NTHREADS 16
#define ROUNDS 300

typedef struct race {
  spi_replica_slot slot;
  spi_router_cfg cfg;
  pthread_barrier_t start, end;
  atomic_int winners;
  atomic_int openers;
  int64_t now;
} race;

static void *probe_racer(void *arg) {
  race *r = arg;
  for (int round = 0; round < ROUNDS; round++) {
    pthread_barrier_wait(&r->start);
    int probe = 0;
    /* Everyone sees the cooldown end at once: one moves it to HALF_OPEN,
     * everyone is offered the probe, one claims it. */
    if (spi__breaker_allows(&r->slot, r->now, &probe) && probe &&
        spi__breaker_claim_probe(&r->slot))
      atomic_fetch_add(&r->winners, 1);
    pthread_barrier_wait(&r->end);
    pthread_barrier_wait(&r->end); /* main checks and resets */
  }
  return NULL;
}

static void test_one_probe_among_threads(void **st) {
  (void)st;
  race *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->cfg = cfg();
  pthread_barrier_init(&r->start, NULL, NTHREADS + 1);
  pthread_barrier_init(&r->end, NULL, NTHREADS + 1);
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, probe_racer, r), 0);
  for (int round = 0; round < ROUNDS; round++) {
    open_at(&r->slot, 0, &r->cfg);
    r->now = 5 * SEC;
    atomic_store(&r->winners, 0);
    pthread_barrier_wait(&r->start);
    pthread_barrier_wait(&r->end);
    assert_int_equal(atomic_load(&r->winners), 1);
    assert_int_equal(state(&r->slot), SPI_BREAKER_HALF_OPEN);
    assert_int_equal(atomic_load(&r->slot.probe_taken), 1);
    pthread_barrier_wait(&r->end);
  }
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&r->start);
  pthread_barrier_destroy(&r->end);
  free(r);
}

static void *error_racer(void *arg) {
  race *r = arg;
  for (int round = 0; round < ROUNDS; round++) {
    pthread_barrier_wait(&r->start);
    if (spi__breaker_record(&r->slot, 0, 0, r->now, &r->cfg))
      atomic_fetch_add(&r->openers, 1);
    pthread_barrier_wait(&r->end);
    pthread_barrier_wait(&r->end);
  }
  return NULL;
}

static void test_one_opener_among_threads(void **st) {
  (void)st;
  race *r = calloc(1, sizeof *r);
  assert_non_null(r);
  r->cfg = cfg();
  r->cfg.error_threshold = 4;
  pthread_barrier_init(&r->start, NULL, NTHREADS + 1);
  pthread_barrier_init(&r->end, NULL, NTHREADS + 1);
  pthread_t th[NTHREADS];
  for (int i = 0; i < NTHREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, error_racer, r), 0);
  for (int round = 0; round < ROUNDS; round++) {
    slot_init(&r->slot);
    r->now = (int64_t)round * SEC;
    atomic_store(&r->openers, 0);
    pthread_barrier_wait(&r->start);
    pthread_barrier_wait(&r->end);
    assert_int_equal(atomic_load(&r->openers), 1);
    assert_int_equal(state(&r->slot), SPI_BREAKER_OPEN);
    assert_int_equal(atomic_load(&r->slot.consecutive_errors), NTHREADS);
    assert_int_equal(atomic_load(&r->slot.open_until_ns), r->now + 5 * SEC);
    pthread_barrier_wait(&r->end);
  }
  for (int i = 0; i < NTHREADS; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&r->start);
  pthread_barrier_destroy(&r->end);
  free(r);
}

/* A free-running mix: routers asking and claiming, tickets ending ok or
 * not, the clock moving. Invariants: at most one probe out per half-open
 * round, and the breaker is always one of its three states. */
typedef struct soak {
  spi_replica_slot slot;
  spi_router_cfg cfg;
  atomic_llong now;
  atomic_int probes_out;
  atomic_int violations;
  atomic_int probes, opens; /* the soak must reach every state */
} soak;

static void *soak_worker(void *arg) {
  soak *k = arg;
  unsigned seed = (unsigned)(uintptr_t)&seed;
  for (int i = 0; i < 20000; i++) {
    seed = seed * 1103515245u + 12345u;
    int64_t now = atomic_fetch_add(&k->now, 1 * MS);
    int probe = 0;
    if (!spi__breaker_allows(&k->slot, now, &probe)) continue;
    int mine = 0;
    if (probe) {
      if (!spi__breaker_claim_probe(&k->slot)) continue;
      if (atomic_fetch_add(&k->probes_out, 1) != 0)
        atomic_fetch_add(&k->violations, 1);
      atomic_fetch_add(&k->probes, 1);
      mine = 1;
    }
    int ok = (seed >> 16) % 3 != 0;
    if (mine) atomic_fetch_sub(&k->probes_out, 1);
    if (spi__breaker_record(&k->slot, ok, mine, now, &k->cfg))
      atomic_fetch_add(&k->opens, 1);
    int b = atomic_load(&k->slot.breaker);
    if (b < SPI_BREAKER_CLOSED || b > SPI_BREAKER_HALF_OPEN)
      atomic_fetch_add(&k->violations, 1);
  }
  return NULL;
}

static void test_soak(void **st) {
  (void)st;
  soak *k = calloc(1, sizeof *k);
  assert_non_null(k);
  slot_init(&k->slot);
  k->cfg = cfg();
  k->cfg.error_cooldown_ms = 20;
  atomic_init(&k->now, 1 * SEC);
  pthread_t th[8];
  for (int i = 0; i < 8; i++)
    assert_int_equal(pthread_create(&th[i], NULL, soak_worker, k), 0);
  for (int i = 0; i < 8; i++) pthread_join(th[i], NULL);
  assert_int_equal(atomic_load(&k->violations), 0);
  assert_true(atomic_load(&k->probes) > 10);
  assert_true(atomic_load(&k->opens) > 10);
  free(k);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kv_rising),
      cmocka_unit_test(test_kv_falling),
      cmocka_unit_test(test_kv_flapping),
      cmocka_unit_test(test_kv_odd_inputs),
      cmocka_unit_test(test_kv_table_rules),
      cmocka_unit_test(test_pressure_level),
      cmocka_unit_test(test_kv_step_level_same),
      cmocka_unit_test(test_names),
      cmocka_unit_test(test_closed_counts_errors),
      cmocka_unit_test(test_open_then_half_open),
      cmocka_unit_test(test_probe_ok_closes),
      cmocka_unit_test(test_probe_error_reopens),
      cmocka_unit_test(test_probe_release),
      cmocka_unit_test(test_stale_probe_flag),
      cmocka_unit_test(test_defaults_and_overflow),
      cmocka_unit_test(test_one_probe_among_threads),
      cmocka_unit_test(test_one_opener_among_threads),
      cmocka_unit_test(test_soak),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
