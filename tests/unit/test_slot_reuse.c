/*
 * test_slot_reuse.c - a replica's slot is not given to another replica
 * while a route that chose the removed one is still running.
 *
 * The interleaving is forced, not raced: a policy module holds the route
 * (after it read the replica set, before it opens the ticket) while one
 * thread removes the chosen replica and another adds a new one, and lets it
 * go once the new replica is published. The slots are first cycled so that
 * the next free-slot search starts at the removed replica's slot. The held
 * route reads its replica's slot again before it opens its ticket (route.c,
 * still_active): it finds "a" gone and routes again, to "b". If the new
 * replica had got that slot, that last look would read it ACTIVE (as "b")
 * and the ticket would open under "a"'s name, counted in flight on "b",
 * although nothing was ever sent there.
 */
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

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"
#include "fake_fleet.h"

#define SLOTS 4096 /* SPI_REPLICA_SLOTS */

typedef struct world {
  spi_engine *e;
  int hold;      /* the next choose holds the route */
  pthread_t remover, adder;
  int remove_rc, add_rc; /* checked on the main thread */
} world;

static int add_rc(spi_engine *e, const char *id) {
  spi_replica_info ri = ff_replica(id, SPI_POOL_SPOT, 1.5, 8);
  int rc = spi_replica_upsert(e, &ri);
  if (rc != SPI_OK) return rc;
  return ff_report(e, id, 0, 0, 0.1);
}

static void add(spi_engine *e, const char *id) {
  assert_int_equal(add_rc(e, id), SPI_OK);
}

static void *remove_a(void *arg) {
  world *w = arg;
  w->remove_rc = spi_replica_remove(w->e, "a", 1);
  return NULL;
}

static void *add_b(void *arg) {
  world *w = arg;
  w->add_rc = add_rc(w->e, "b");
  return NULL;
}

/* Whether the replica set has n replicas; polled while a writer runs. */
static void wait_count(spi_engine *e, size_t n) {
  while (spi_replica_count(e) != n) sched_yield();
}

/* Chooses the first candidate; the held route first lets "a" be removed
 * and "b" be added (each writer then waits for this route to end). */
static int hold_choose(void *state, void *inst, const spi_route_context *x,
                       spi_policy_choice *out) {
  world *w = state;
  (void)inst;
  if (w->hold) {
    w->hold = 0;
    assert_int_equal(pthread_create(&w->remover, NULL, remove_a, w), 0);
    wait_count(w->e, 0);
    assert_int_equal(pthread_create(&w->adder, NULL, add_b, w), 0);
    wait_count(w->e, 1);
  }
  if (x->n_candidates == 0) {
    out->pool = 0;
    out->reason_code = SPI_REASON_NO_CAPACITY;
    return SPI_OK;
  }
  out->pool = x->candidates[0].pool;
  out->reason_code = SPI_REASON_LEAST_LOADED;
  out->order[out->n_order++] = 0;
  return SPI_OK;
}

static uint32_t inflight_of(spi_engine *e, const char *id) {
  for (size_t i = 0; i < spi_replica_count(e); i++) {
    spi_replica_status rs;
    memset(&rs, 0, sizeof rs);
    rs.struct_size = sizeof rs;
    assert_int_equal(spi_replica_status_at(e, i, &rs), SPI_OK);
    if (strcmp(rs.id, id) == 0) return rs.inflight;
  }
  fail_msg("replica %s is not registered", id);
  return 0;
}

static void test_removed_slot_not_reused_under_route(void **st) {
  (void)st;
  world w;
  memset(&w, 0, sizeof w);
  assert_int_equal(spi_engine_new(&w.e, NULL), SPI_OK);
  spi_policy_module m = ff_policy_module(hold_choose, 0);
  assert_int_equal(spi_engine_register_module(w.e, SPI_MODULE_POLICY, "hold", 4,
                                              &m, &w, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"policy\":\"hold\"}}";
  assert_int_equal(spi_engine_configure(w.e, cfg, strlen(cfg)), SPI_OK);
  /* "a" takes slot 0; one replica added and removed in every other slot
   * brings the free-slot search back to slot 0. */
  add(w.e, "a");
  for (int i = 1; i < SLOTS; i++) {
    add(w.e, "t");
    assert_int_equal(spi_replica_remove(w.e, "t", 1), SPI_OK);
  }

  spi_request *r = NULL;
  assert_int_equal(spi_request_new(w.e, &r), SPI_OK);
  assert_int_equal(spi_request_set_str(r, SPI_REQ_MODEL, "m", 1), SPI_OK);
  assert_int_equal(spi_request_add_message(r, "user", 4, "hello", 5), SPI_OK);
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  w.hold = 1;
  int rc = spi_route(r, &d);
  pthread_join(w.remover, NULL);
  pthread_join(w.adder, NULL);
  assert_int_equal(w.remove_rc, SPI_OK);
  assert_int_equal(w.add_rc, SPI_OK);
  assert_int_equal(rc, SPI_OK);
  /* "a" was removed before the ticket opened: routed again, to "b", and
   * counted there once. */
  assert_string_equal(d.replica_id, "b");
  assert_true(d.ticket != 0);
  assert_int_equal(inflight_of(w.e, "b"), 1);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  assert_int_equal(spi_ticket_finish(w.e, d.ticket, &res), SPI_OK);
  assert_int_equal(inflight_of(w.e, "b"), 0);

  /* "b" counts what is routed to it, exactly. */
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  assert_int_equal(spi_route(r, &d), SPI_OK);
  assert_string_equal(d.replica_id, "b");
  assert_int_equal(inflight_of(w.e, "b"), 1);
  assert_int_equal(spi_ticket_finish(w.e, d.ticket, &res), SPI_OK);
  assert_int_equal(inflight_of(w.e, "b"), 0);
  spi_request_free(r);
  spi_engine_free(w.e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_removed_slot_not_reused_under_route)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
