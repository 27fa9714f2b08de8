/*
 * test_node_move.c - a replica updated (spi_replica_upsert, same id) onto
 * another machine or spot pool: it takes the interruption state, advice
 * and cooldown of where it is now, as a replica added there would, and
 * keeps the host's own decision to drain it.
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
#include "spotinfer/spotinfer_extras.h"
#include "unit/fake_bus.h"

#define SEC FB_SEC

static int32_t rstate(fb_world *w, const char *id) {
  spi_replica_status rs;
  memset(&rs, 0, sizeof rs);
  rs.struct_size = sizeof rs;
  assert_int_equal(spi_replica_status_of(w->e, id, strlen(id), &rs), SPI_OK);
  return rs.state;
}

/* A route of class cls for max_tokens output (0: unsaid); its ticket is
 * finished at once unless keep. */
static int route(fb_world *w, const char *cls, int64_t max_tokens, int keep,
                 spi_decision *d) {
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(w->r, SPI_REQ_PROMPT, "hello world", 11);
  spi_request_set_str(w->r, SPI_REQ_CLASS, cls, strlen(cls));
  if (max_tokens)
    spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, max_tokens);
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  int rc = spi_route(w->r, d);
  if (rc == SPI_OK && !keep) {
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    spi_ticket_finish(w->e, d->ticket, &res);
  }
  return rc;
}

/* Re-register id (same id) on node, in pool (type, zone). */
static void move(fb_world *w, const char *id, const char *node, int32_t pool,
                 const char *type, const char *zone) {
  spi_replica_info ri = fb_replica(id, node, pool, type, zone);
  ri.max_inflight = w->max_inflight;
  ri.decode_tokens_per_s = 50;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
}

static void load(fb_world *w, const char *id) {
  spi_load l = ff_load(1, 0, 0.2);
  assert_int_equal(spi_replica_report_load(w->e, id, strlen(id), &l), SPI_OK);
}

/* A replica rescheduled onto a noticed machine takes nothing new, and
 * its open ticket is planned with that machine's. */
static void test_moved_onto_noticed_machine(void **st) {
  (void)st;
  fb_world *w = fb_mk(NULL, NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "od-b", "i-bbb", SPI_POOL_ON_DEMAND, "g5", "z1");
  spi_decision d;
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK); /* index built */
  spi_notice n = fb_notice("i-bbb", w->now + 120 * SEC, "k-bbb");
  fb_hand(w, &n);
  assert_int_equal(rstate(w, "od-b"), SPI_REPLICA_NOTICED);
  assert_int_equal(route(w, "silver", 100, 1, &d), SPI_OK);
  assert_string_equal(d.replica_id, "spot-a");
  uint64_t open = d.ticket;
  move(w, "spot-a", "i-bbb", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(rstate(w, "spot-a"), SPI_REPLICA_NOTICED);
  for (int i = 0; i < 5; i++)
    assert_int_equal(route(w, "silver", 100, 0, &d), SPI_ENOCAPACITY);
  spi_ticket_plan plans[4];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  assert_int_equal(
      spi_engine_node_plans(w->e, "i-bbb", 5, plans, 4, &np), SPI_OK);
  assert_int_equal(np, 1);
  assert_int_equal(plans[0].ticket, open);
  assert_string_equal(plans[0].replica_id, "spot-a");
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  spi_ticket_finish(w->e, open, &res);
  fb_done(w);
}

/* A replica rescheduled off a noticed machine onto a healthy one takes
 * requests again, and the old machine's end does not reach it. */
static void test_moved_off_noticed_machine(void **st) {
  (void)st;
  fb_world *w = fb_mk(NULL, NULL);
  fb_add(w, "od-b", "i-bbb", SPI_POOL_ON_DEMAND, "g5", "z1");
  spi_decision d;
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  spi_notice n = fb_notice("i-bbb", w->now + 120 * SEC, "k-bbb");
  fb_hand(w, &n);
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_ENOCAPACITY);
  move(w, "od-b", "i-ccc", SPI_POOL_ON_DEMAND, "g5", "z1");
  assert_int_equal(rstate(w, "od-b"), SPI_REPLICA_ACTIVE);
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  w->now += 3600 * SEC; /* i-bbb is long gone */
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  load(w, "od-b");
  assert_int_equal(rstate(w, "od-b"), SPI_REPLICA_ACTIVE);
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  fb_done(w);
}

/* Advice is the machine's too: it comes with an advised machine and
 * stays with it. */
static void test_moved_onto_and_off_advised_machine(void **st) {
  (void)st;
  fb_world *w = fb_mk(NULL, "{\"router\":{\"advised_ttl_ms\":600000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_notice n = fb_notice("i-bbb", 0, "aws:rebalance:i-bbb");
  n.kind = SPI_NOTICE_REBALANCE;
  fb_hand(w, &n); /* remembered: no replica runs there yet */
  spi_decision d;
  assert_int_equal(route(w, "silver", 4000, 0, &d), SPI_OK);
  move(w, "spot-a", "i-bbb", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(rstate(w, "spot-a"), SPI_REPLICA_ACTIVE);
  /* No long request on an advised machine; a short one still goes. */
  assert_int_equal(route(w, "silver", 4000, 0, &d), SPI_ENOCAPACITY);
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  move(w, "spot-a", "i-ccc", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(route(w, "silver", 4000, 0, &d), SPI_OK);
  assert_string_equal(d.replica_id, "spot-a");
  fb_done(w);
}

/* A spot pool's cooldown belongs to the pool: a replica that moves into a
 * cooling pool cools, one that moves out of it does not, whether or not
 * its machine changes. */
static void test_spot_pool_change_takes_its_cooldown(void **st) {
  (void)st;
  fb_world *w = fb_mk(NULL, "{\"router\":{\"pool_cooldown_ms\":180000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "spot-c", "i-ccc", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "spot-d", "i-ddd", SPI_POOL_SPOT, "g5", "z2");
  spi_decision d;
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  spi_notice n = fb_notice("i-aaa", w->now + 120 * SEC, "k-aaa");
  fb_hand(w, &n); /* (g5, z1) cools: only spot-d is left */
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  assert_string_equal(d.replica_id, "spot-d");
  /* spot-d's zone changes to the cooling one, on its own healthy machine;
   * spot-c's changes to z2. */
  move(w, "spot-d", "i-ddd", SPI_POOL_SPOT, "g5", "z1");
  move(w, "spot-c", "i-ccc", SPI_POOL_SPOT, "g5", "z2");
  for (int i = 0; i < 5; i++) {
    assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
    assert_string_equal(d.replica_id, "spot-c");
  }
  /* Spot onto another machine in a cooling pool: cooling; on demand: not. */
  move(w, "spot-c", "i-eee", SPI_POOL_SPOT, "g4", "z1");
  move(w, "spot-d", "i-fff", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  assert_string_equal(d.replica_id, "spot-c");
  move(w, "spot-c", "i-eee", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_ENOCAPACITY);
  move(w, "spot-d", "i-fff", SPI_POOL_ON_DEMAND, "g5", "z1");
  assert_int_equal(route(w, "silver", 100, 0, &d), SPI_OK);
  assert_string_equal(d.replica_id, "spot-d");
  fb_done(w);
}

/* DRAINING set by the host is the replica's and goes with it, unless the
 * new machine is noticed; DRAINING or NOTICED of the machine it left does
 * not, nor NOTICED set by the host (a notice names a machine). */
static void test_host_decisions_on_a_move(void **st) {
  (void)st;
  fb_world *w = fb_mk(NULL, NULL);
  fb_add(w, "r1", "i-aaa", SPI_POOL_ON_DEMAND, "g5", "z1");
  fb_add(w, "r2", "i-bbb", SPI_POOL_ON_DEMAND, "g5", "z1");
  fb_add(w, "r3", "i-ccc", SPI_POOL_ON_DEMAND, "g5", "z1");
  assert_int_equal(spi_replica_set_state(w->e, "r1", 2, SPI_REPLICA_DRAINING),
                   SPI_OK);
  move(w, "r1", "i-ddd", SPI_POOL_ON_DEMAND, "g5", "z1");
  assert_int_equal(rstate(w, "r1"), SPI_REPLICA_DRAINING);
  spi_notice n = fb_notice("i-eee", w->now + 120 * SEC, "k-eee");
  fb_hand(w, &n);
  move(w, "r1", "i-eee", SPI_POOL_ON_DEMAND, "g5", "z1");
  assert_int_equal(rstate(w, "r1"), SPI_REPLICA_NOTICED);
  /* The machine's DRAINING stays with the machine. */
  assert_int_equal(spi_node_set_state(w->e, "i-bbb", 5, SPI_NODE_DRAINING),
                   SPI_OK);
  assert_int_equal(rstate(w, "r2"), SPI_REPLICA_DRAINING);
  move(w, "r2", "i-fff", SPI_POOL_ON_DEMAND, "g5", "z1");
  assert_int_equal(rstate(w, "r2"), SPI_REPLICA_ACTIVE);
  /* NOTICED by the host: the notice was its machine's. */
  assert_int_equal(spi_replica_set_state(w->e, "r3", 2, SPI_REPLICA_NOTICED),
                   SPI_OK);
  move(w, "r3", "i-ggg", SPI_POOL_ON_DEMAND, "g5", "z1");
  assert_int_equal(rstate(w, "r3"), SPI_REPLICA_ACTIVE);
  /* An update that moves it nowhere changes no state. */
  assert_int_equal(spi_replica_set_state(w->e, "r3", 2, SPI_REPLICA_NOTICED),
                   SPI_OK);
  spi_replica_info ri = fb_replica("r3", "i-ggg", SPI_POOL_ON_DEMAND, "g5", "z1");
  ri.max_inflight = 8;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_int_equal(rstate(w, "r3"), SPI_REPLICA_NOTICED);
  fb_done(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_moved_onto_noticed_machine),
      cmocka_unit_test(test_moved_off_noticed_machine),
      cmocka_unit_test(test_moved_onto_and_off_advised_machine),
      cmocka_unit_test(test_spot_pool_change_takes_its_cooldown),
      cmocka_unit_test(test_host_decisions_on_a_move),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
