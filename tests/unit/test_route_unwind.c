/*
 * test_route_unwind.c - a route that fails gives back everything it took.
 *
 * A half-open replica has one probe. A route that claims it and then fails
 * (the ticket table is full, the classifier fails, an allocation fails)
 * must hand it back, or the replica stays half-open for good and every
 * later route answers "no capacity". Each case checks the replica still
 * takes its probe after the failed route, and that nothing stays counted
 * on it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"
#include "fake_world.h"

/* An interactive gold chat: the built-in rules send it on-demand. */
static void gold(spi_request *r) {
  spi_request_reset(r);
  spi_request_set_str(r, SPI_REQ_MODEL, "llama", 5);
  spi_request_add_message(r, "system", 6, "You are terse.", 14);
  spi_request_add_message(r, "user", 4, "hi", 2);
  spi_request_set_int(r, SPI_REQ_STREAM, 1);
  spi_request_set_int(r, SPI_REQ_SLA_MS, 800);
}

static int route_req(spi_request *r, spi_decision *d) {
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  return spi_route(r, d);
}

static int route(world *w, spi_decision *d) {
  gold(w->r);
  return route_req(w->r, d);
}

static void finish(world *w, uint64_t t, int32_t status) {
  assert_int_equal(finish_rc(w, t, status), SPI_OK);
}

static spi_replica_status status_of(world *w, const char *id) {
  spi_replica_status rs;
  memset(&rs, 0, sizeof rs);
  rs.struct_size = sizeof rs;
  assert_int_equal(spi_replica_status_of(w->e, id, strlen(id), &rs), SPI_OK);
  return rs;
}

/* od-a's breaker opened by one failed ticket (error_threshold 1). */
static void trip(world *w) {
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  finish(w, d.ticket, SPI_TICKET_ERROR);
  assert_int_equal(status_of(w, "od-a").breaker, SPI_BREAKER_OPEN);
}

/* After the cooldown od-a takes one probe, and the probe closes it. */
static void expect_probe_then_closed(world *w) {
  spi_decision d;
  report_load(w, "od-a", 0, 0, 0.1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  assert_int_equal(d.reason_code, SPI_REASON_HALF_OPEN_PROBE);
  assert_int_equal(status_of(w, "od-a").inflight, 1);
  finish(w, d.ticket, SPI_TICKET_OK);
  assert_int_equal(status_of(w, "od-a").breaker, SPI_BREAKER_CLOSED);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  finish(w, d.ticket, SPI_TICKET_OK);
}

/*
 * The reported case: one on-demand replica, error_threshold 1,
 * max_tickets 16. One ticket fails; 16 tickets are held open (on a second
 * replica, taken out of service afterwards: od-a cannot take new work
 * while its breaker is open); past the cooldown the next route claims
 * od-a's probe and finds the ticket table full. Once every ticket is
 * finished, od-a must take its probe again.
 */
static void test_probe_returned_when_tickets_full(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"error_threshold\":1,\"error_cooldown_ms\":5000,"
                "\"max_tickets\":16}}");
  add_replica(w, "od-a", SPI_POOL_ON_DEMAND, 64);
  report_load(w, "od-a", 0, 0, 0.1);
  trip(w);
  add_replica(w, "holder", SPI_POOL_ON_DEMAND, 64);
  report_load(w, "holder", 0, 0, 0.1);
  uint64_t held[16];
  spi_decision d;
  for (int i = 0; i < 16; i++) {
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_equal(d.replica_id, "holder");
    held[i] = d.ticket;
  }
  assert_int_equal(spi_replica_set_state(w->e, "holder", 6, SPI_REPLICA_DRAINING),
                   SPI_OK);
  w->now += 6 * SEC;
  report_load(w, "od-a", 0, 0, 0.1);
  assert_int_equal(route(w, &d), SPI_EFULL);
  assert_int_equal(d.ticket, 0);
  assert_int_equal(status_of(w, "od-a").inflight, 0);
  for (int i = 0; i < 16; i++) finish(w, held[i], SPI_TICKET_OK);
  w->now += 6 * SEC;
  expect_probe_then_closed(w);
  done(w);
}

/* A classifier that fails at normal pressure and answers gold otherwise. */
static int fail_at_normal;

static int cls_configure(void *state, const char *json, size_t len,
                         void **instance, char *err, size_t errcap) {
  (void)state, (void)json, (void)len, (void)err, (void)errcap;
  *instance = NULL;
  return SPI_OK;
}

static int cls_classify(void *state, void *inst, const spi_request_view *req,
                        int32_t pressure, spi_classification *out) {
  (void)state, (void)inst, (void)req;
  if (fail_at_normal && pressure == SPI_PRESSURE_NORMAL) return SPI_EMODULE;
  out->klass = SPI_CLASS_GOLD;
  out->replayable = 0;
  out->model_tier = SPI_TIER_LARGE;
  out->tools_allowed = 1;
  snprintf(out->reason, sizeof out->reason, "test gold");
  return SPI_OK;
}

/*
 * The spot pool runs hot (its pressure is high) and the on-demand pool is
 * cool, so the route needs the plan at both pressures: the one at
 * on-demand's normal pressure fails after the probe was claimed. The
 * failed route must give the probe back.
 */
static void test_probe_returned_when_classifier_fails(void **st) {
  (void)st;
  world *w = mk(NULL);
  spi_classifier_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.configure = cls_configure;
  m.classify = cls_classify;
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_CLASSIFIER,
                                              "picky", 5, &m, NULL, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"classifier\":\"picky\"},"
                    "\"router\":{\"error_threshold\":1,\"error_cooldown_ms\":5000}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  add_replica(w, "od-a", SPI_POOL_ON_DEMAND, 64);
  add_replica(w, "spot-a", SPI_POOL_SPOT, 64);
  report_load(w, "od-a", 0, 0, 0.1);
  report_load(w, "spot-a", 0, 0, 0.9);
  /* Only od-a is on-demand: the gold request goes there. */
  trip(w);
  w->now += 6 * SEC;
  report_load(w, "od-a", 0, 0, 0.1);
  report_load(w, "spot-a", 0, 0, 0.9);
  fail_at_normal = 1;
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_EMODULE);
  assert_int_equal(d.ticket, 0);
  fail_at_normal = 0;
  assert_int_equal(status_of(w, "od-a").inflight, 0);
  assert_int_equal(status_of(w, "od-a").breaker, SPI_BREAKER_HALF_OPEN);
  report_load(w, "spot-a", 0, 0, 0.9);
  expect_probe_then_closed(w);
  done(w);
}

/*
 * Fail each allocation in turn while routing a fresh request to a
 * half-open replica. Whatever the route had taken when its allocation
 * failed, the replica still takes its probe afterwards, nothing stays
 * counted on it, and nothing leaks (done() compares allocations and frees).
 */
static void test_alloc_failures_keep_probe(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"error_threshold\":1,\"error_cooldown_ms\":5000}}");
  add_replica(w, "od-a", SPI_POOL_ON_DEMAND, 64);
  report_load(w, "od-a", 0, 0, 0.1);
  trip(w);
  w->now += 6 * SEC;
  int reached_end = 0, failures = 0;
  for (long n = 1; n < 200 && !reached_end; n++) {
    report_load(w, "od-a", 0, 0, 0.1);
    /* Open past its cooldown (the first route moves it to half-open) or
     * half-open with the probe free. */
    assert_int_not_equal(status_of(w, "od-a").breaker, SPI_BREAKER_CLOSED);
    spi_request *r = NULL;
    spi_decision d;
    memset(&d, 0, sizeof d);
    w->failed = 0;
    w->fail_at = next_alloc(w) + n - 1;
    int rc = spi_request_new(w->e, &r);
    if (rc == SPI_OK) {
      gold(r);
      rc = route_req(r, &d);
    }
    int hit = w->failed > 0;
    w->fail_at = 0;
    if (!hit) {
      /* Every allocation of a route was failed once: this one ran clean. */
      assert_int_equal(rc, SPI_OK);
      assert_int_equal(d.reason_code, SPI_REASON_HALF_OPEN_PROBE);
      reached_end = 1;
    } else if (rc == SPI_OK) {
      /* A failure the route survives (e.g. an optional estimate). */
      assert_int_equal(d.reason_code, SPI_REASON_HALF_OPEN_PROBE);
    } else {
      failures++;
      assert_int_equal(d.ticket, 0);
      assert_int_equal(status_of(w, "od-a").inflight, 0);
    }
    /* A cancelled probe says nothing about the replica: it may be sent
     * again, so every round starts half-open with the probe free. */
    if (rc == SPI_OK) finish(w, d.ticket, SPI_TICKET_CANCELLED);
    spi_request_free(r);
    if (rc != SPI_OK) {
      /* The probe came back: a clean route claims it. */
      spi_request *c = NULL;
      assert_int_equal(spi_request_new(w->e, &c), SPI_OK);
      gold(c);
      assert_int_equal(route_req(c, &d), SPI_OK);
      assert_int_equal(d.reason_code, SPI_REASON_HALF_OPEN_PROBE);
      finish(w, d.ticket, SPI_TICKET_CANCELLED);
      spi_request_free(c);
    }
  }
  assert_true(reached_end);
  assert_true(failures > 0);
  expect_probe_then_closed(w);
  done(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_probe_returned_when_tickets_full),
      cmocka_unit_test(test_probe_returned_when_classifier_fails),
      cmocka_unit_test(test_alloc_failures_keep_probe),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
