/*
 * test_node.c - interruption notices: the node state machine, what a notice
 * does to routing at once, drain/replay plans, advice, pool cooldown, the
 * transition callback and metric, and the ledger's interruption accounting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_extras.h"
#include "unit/fake_bus.h"

/* lib/node.c: entries its lookups and scans examined (engine.h). */
uint64_t spi__nodes_probes(spi_engine *e);

#define SEC FB_SEC

/* An engine on a fake clock; its replicas take 32 streams each. */
static fb_world *mk(const char *config) {
  fb_world *w = fb_mk(NULL, config);
  w->max_inflight = 32;
  return w;
}

static void refresh_loads(fb_world *w) {
  for (size_t i = 0; i < spi_replica_count(w->e); i++) {
    spi_replica_status rs;
    memset(&rs, 0, sizeof rs);
    rs.struct_size = sizeof rs;
    spi_replica_status_at(w->e, i, &rs);
    spi_load l;
    memset(&l, 0, sizeof l);
    l.struct_size = sizeof l;
    l.running = 1;
    l.kv_usage = 0.2;
    spi_replica_report_load(w->e, rs.id, strlen(rs.id), &l);
  }
}

static int route(fb_world *w, const char *cls, int64_t max_tokens,
                 spi_decision *d) {
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(w->r, SPI_REQ_PROMPT, "hello world", 11);
  spi_request_set_str(w->r, SPI_REQ_CLASS, cls, strlen(cls));
  if (max_tokens) spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, max_tokens);
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  return spi_route(w->r, d);
}

static spi_notice notice(const char *node, int32_t kind, int64_t deadline,
                         const char *key) {
  spi_notice n = fb_notice(node, deadline, key);
  n.kind = kind;
  return n;
}

static void test_notice_stops_routing_at_once(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5.xlarge", "use1-az2");
  spi_decision d;
  /* Open some silver tickets: they land on either replica. */
  uint64_t open[8];
  int on_a = 0;
  for (int i = 0; i < 8; i++) {
    assert_int_equal(route(w, "silver", 400, &d), SPI_OK);
    open[i] = d.ticket;
    on_a += strcmp(d.replica_id, "spot-a") == 0;
    spi_ticket_progress(w->e, d.ticket, (uint64_t)(i * 50));
  }
  spi_notice n = notice("i-aaa", SPI_NOTICE_TERMINATE, w->now + 120 * SEC,
                        "aws:action:i-aaa:terminate");
  spi_ticket_plan plans[16];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, &n, plans, 16, &np), SPI_OK);
  assert_int_equal((int)np, on_a);
  for (size_t i = 0; i < np; i++) {
    assert_string_equal(plans[i].replica_id, "spot-a");
    /* 400 tokens at 50/s = 8 s at most, deadline 120 s: all drain. */
    assert_int_equal(plans[i].action, SPI_ACTION_DRAIN);
    assert_true(plans[i].deadline_s > 119 && plans[i].deadline_s <= 120);
  }
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(w->last_to, SPI_NODE_NOTICED);
  assert_string_equal(w->last_node, "i-aaa");
  /* From the moment the call returned: nothing new goes there. */
  for (int i = 0; i < 20; i++) {
    assert_int_equal(route(w, "silver", 400, &d), SPI_OK);
    assert_string_equal(d.replica_id, "spot-b");
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    spi_ticket_finish(w->e, d.ticket, &res);
  }
  /* The same notice polled again: no plans, no transition. */
  int before = w->transitions;
  np = 99;
  assert_int_equal(spi_engine_notice(w->e, &n, plans, 16, &np), SPI_OK);
  assert_int_equal(np, 0);
  assert_int_equal(w->transitions, before);
  for (int i = 0; i < 8; i++) {
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    spi_ticket_finish(w->e, open[i], &res);
  }
  fb_done(w);
}

static void test_drain_or_replay(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "od-a", "i-odd", SPI_POOL_ON_DEMAND, "g5", "z1");
  spi_decision d;
  /* A long silver request early in its stream, and a long gold request
   * past 85 % of its output, both on the spot machine. */
  assert_int_equal(route(w, "silver", 4000, &d), SPI_OK);
  assert_string_equal(d.replica_id, "spot-a");
  uint64_t silver = d.ticket;
  spi_ticket_progress(w->e, silver, 100);
  spi_request_reset(w->r);
  assert_int_equal(route(w, "silver", 4000, &d), SPI_OK);
  uint64_t silver2 = d.ticket;
  spi_ticket_progress(w->e, silver2, 3900);
  /* 30 s window (GCP): 3900 of 4000 at 50/s = 2 s left, fits; 3900 left
   * = 78 s does not. */
  spi_notice n = notice("i-aaa", SPI_NOTICE_PREEMPT, w->now + 30 * SEC, "k1");
  spi_ticket_plan plans[4];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, &n, plans, 4, &np), SPI_OK);
  assert_int_equal(np, 2);
  for (size_t i = 0; i < np; i++) {
    if (plans[i].ticket == silver) {
      assert_int_equal(plans[i].action, SPI_ACTION_REPLAY);
      assert_true(plans[i].remaining_s > 70);
    } else {
      assert_int_equal(plans[i].ticket, silver2);
      assert_int_equal(plans[i].action, SPI_ACTION_DRAIN);
      assert_true(plans[i].progress > 0.97);
    }
  }
  /* Room for one plan only: EBUFSIZE, the count, and the transition done. */
  spi_notice n2 = notice("i-aaa", SPI_NOTICE_PREEMPT, w->now + 30 * SEC, "k2");
  assert_int_equal(spi_engine_notice(w->e, &n2, plans, 1, &np), SPI_EBUFSIZE);
  assert_int_equal(np, 2);
  /* The replayed ticket is finished as interrupted: wasted spot work. */
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_INTERRUPTED;
  res.prompt_tokens = 1000;
  res.output_tokens = 100;
  assert_int_equal(spi_ticket_finish(w->e, silver, &res), SPI_OK);
  /* Its replay goes on-demand (spot pool cooling down) and is counted. */
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(w->r, SPI_REQ_PROMPT, "hello world", 11);
  spi_request_set_str(w->r, SPI_REQ_CLASS, "silver", 6);
  spi_request_set_int(w->r, SPI_REQ_REPLAY_SINCE_NS, w->now);
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  assert_int_equal(spi_route(w->r, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  w->now += 2 * SEC;
  spi_ticket_first_token(w->e, d.ticket);
  res.status = SPI_TICKET_OK;
  res.duration_ms = 5000;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_OK);
  res.status = SPI_TICKET_OK;
  spi_ticket_finish(w->e, silver2, &res);
  uint64_t interrupted = 0, wasted = 0, replays = 0;
  double latency = 0, od_s = 0;
  for (size_t i = 0; i < spi_ledger_count(w->e); i++) {
    spi_ledger_row row;
    memset(&row, 0, sizeof row);
    row.struct_size = sizeof row;
    assert_int_equal(spi_ledger_row_at(w->e, i, &row), SPI_OK);
    interrupted += row.interrupted;
    wasted += row.wasted_output_tokens;
    replays += row.replays;
    latency += row.replay_latency_ms;
    od_s += row.fallback_on_demand_seconds;
    if (row.interrupted) {
      assert_int_equal(row.pool, SPI_POOL_SPOT);
      assert_int_equal(row.reprefilled_tokens, 1100);
      assert_true(row.wasted_usd > 0);
    }
  }
  assert_int_equal(interrupted, 1);
  assert_int_equal(wasted, 100);
  assert_int_equal(replays, 1);
  assert_true(latency > 1999 && latency < 2001);
  assert_true(od_s > 4.9 && od_s < 5.1);
  fb_done(w);
}

static void test_gold_past_progress_drains(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_decision d;
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(w->r, SPI_REQ_PROMPT, "x", 1);
  spi_request_set_str(w->r, SPI_REQ_CLASS, "gold", 4);
  spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, 10000);
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  /* gold overflows to spot only when warm; allow it always for this test */
  const char *cfg = "{\"policy\":{\"gold_spot_overflow\":\"always\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(spi_route(w->r, &d), SPI_OK);
  spi_ticket_progress(w->e, d.ticket, 9000); /* 90 %, 1000 left = 20 s */
  spi_notice n = notice("i-aaa", SPI_NOTICE_PREEMPT, w->now + 15 * SEC, "g");
  spi_ticket_plan plans[2];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, &n, plans, 2, &np), SPI_OK);
  assert_int_equal(np, 1);
  assert_int_equal(plans[0].action, SPI_ACTION_DRAIN); /* gold, past 85 % */
  fb_done(w);
}

static void test_advice_and_expiry(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"advised_ttl_ms\":60000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5", "z2");
  spi_notice n = notice("i-aaa", SPI_NOTICE_REBALANCE, 0, "aws:rebalance:i-aaa");
  size_t np = 9;
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_OK);
  assert_int_equal(np, 0); /* advice moves no work */
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ADVISED);
  spi_decision d;
  /* Long requests avoid the advised machine. */
  for (int i = 0; i < 10; i++) {
    assert_int_equal(route(w, "silver", 4000, &d), SPI_OK);
    assert_string_equal(d.replica_id, "spot-b");
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    spi_ticket_finish(w->e, d.ticket, &res);
  }
  /* It lapses. */
  w->now += 61 * SEC;
  refresh_loads(w);
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(w->last_from, SPI_NODE_ADVISED);
  assert_int_equal(w->last_to, SPI_NODE_ACTIVE);
  fb_done(w);
}

static void test_pool_cooldown(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"pool_cooldown_ms\":180000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_add(w, "spot-c", "i-ccc", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_add(w, "spot-d", "i-ddd", SPI_POOL_SPOT, "g5.xlarge", "use1-az2");
  spi_notice n = notice("i-aaa", SPI_NOTICE_TERMINATE, w->now + 120 * SEC, "t");
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_OK);
  spi_decision d;
  for (int i = 0; i < 10; i++) {
    assert_int_equal(route(w, "silver", 100, &d), SPI_OK);
    assert_string_equal(d.replica_id, "spot-d"); /* az1 pool cooling */
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    spi_ticket_finish(w->e, d.ticket, &res);
  }
  /* A replica added in the cooling pool starts cooling too. */
  fb_add(w, "spot-e", "i-eee", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  assert_int_equal(route(w, "silver", 100, &d), SPI_OK);
  assert_string_not_equal(d.replica_id, "spot-e");
  /* Three minutes later the pool is back. */
  w->now += 181 * SEC;
  refresh_loads(w);
  int seen_az1 = 0;
  for (int i = 0; i < 20; i++) {
    char p[32];
    snprintf(p, sizeof p, "prefix %d", i);
    spi_request_reset(w->r);
    spi_request_set_str(w->r, SPI_REQ_MODEL, "m", 1);
    spi_request_set_str(w->r, SPI_REQ_PROMPT, p, strlen(p));
    spi_request_set_str(w->r, SPI_REQ_SYSTEM_PROMPT, p, strlen(p));
    spi_request_set_str(w->r, SPI_REQ_CLASS, "silver", 6);
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    assert_int_equal(spi_route(w->r, &d), SPI_OK);
    seen_az1 += !strcmp(d.replica_id, "spot-c") || !strcmp(d.replica_id, "spot-e");
  }
  assert_true(seen_az1 > 0);
  fb_done(w);
}

static void test_state_machine(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(fb_state(w->e, "i-unknown"), SPI_NODE_ACTIVE);
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_DRAINING), SPI_OK);
  spi_replica_status rs;
  memset(&rs, 0, sizeof rs);
  rs.struct_size = sizeof rs;
  spi_replica_status_of(w->e, "spot-a", 6, &rs);
  assert_int_equal(rs.state, SPI_REPLICA_DRAINING);
  /* Illegal: draining back to noticed or active. */
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_NOTICED),
                   SPI_EINVAL);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "draining -> noticed"));
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_ACTIVE),
                   SPI_EINVAL);
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_TERMINATED),
                   SPI_OK);
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_ACTIVE),
                   SPI_EINVAL);
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_REMOVED),
                   SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE); /* forgotten */
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, 42), SPI_EINVAL);
  /* A machine no replica or notice could name (a control byte, as a
   * notice's node and a replica's refuse) is refused, not tracked. */
  assert_int_equal(spi_node_set_state(w->e, "i-1\0i-2", 7, SPI_NODE_DRAINING),
                   SPI_EINVAL);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "control character at byte 3"));
  /* A withdrawn notice returns a noticed machine to work. */
  spi_notice n = notice("i-bbb", SPI_NOTICE_MAINTENANCE, w->now + 600 * SEC,
                        "aws:scheduled:ev-1");
  snprintf(n.event_id, sizeof n.event_id, "ev-1");
  size_t np;
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_NOTICED);
  /* A replica added on a noticed machine starts noticed. */
  fb_add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5", "z2");
  spi_replica_status_of(w->e, "spot-b", 6, &rs);
  assert_int_equal(rs.state, SPI_REPLICA_NOTICED);
  n.active = 0;
  snprintf(n.dedup_key, sizeof n.dedup_key, "aws:scheduled:ev-1:canceled");
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_ACTIVE);
  spi_replica_status_of(w->e, "spot-b", 6, &rs);
  assert_int_equal(rs.state, SPI_REPLICA_ACTIVE);
  /* Past its deadline a noticed machine is terminated. */
  n = notice("i-bbb", SPI_NOTICE_TERMINATE, w->now + 10 * SEC, "t2");
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_OK);
  w->now += 11 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_TERMINATED);
  /* Bad input. */
  memset(&n, 0, sizeof n);
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_EINVAL);
  n.struct_size = sizeof n;
  n.kind = SPI_NOTICE_TERMINATE;
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_EINVAL);
  /* The metric counts transitions. */
  char buf[1 << 16];
  size_t need;
  assert_int_equal(spi_engine_metrics(w->e, buf, sizeof buf, &need), SPI_OK);
  assert_non_null(strstr(buf, "spotinfer_node_transitions_total{from=\"active\",to=\"noticed\"}"));
  fb_done(w);
}

/* A later notice that brings a noticed machine's deadline forward is
 * reported as NOTICED -> NOTICED (plans made before may be wrong); one
 * with a later deadline changes nothing. A machine noticed by hand has no
 * deadline until a notice gives it one, and then goes at that deadline. */
static void test_deadline_brought_forward_is_reported(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_notice m = notice("i-aaa", SPI_NOTICE_MAINTENANCE, w->now + 600 * SEC,
                        "m-1");
  fb_hand(w, &m);
  int before = w->transitions;
  spi_notice later = notice("i-aaa", SPI_NOTICE_TERMINATE, w->now + 900 * SEC,
                            "t-late");
  fb_hand(w, &later);
  assert_int_equal(w->transitions, before);
  spi_notice t = notice("i-aaa", SPI_NOTICE_TERMINATE, w->now + 120 * SEC,
                        "t-1");
  fb_hand(w, &t);
  assert_int_equal(w->transitions, before + 1);
  assert_int_equal(w->last_from, SPI_NODE_NOTICED);
  assert_int_equal(w->last_to, SPI_NODE_NOTICED);
  fb_add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5", "z2");
  assert_int_equal(spi_node_set_state(w->e, "i-bbb", 5, SPI_NODE_NOTICED),
                   SPI_OK);
  w->now += 3600 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_NOTICED); /* no deadline */
  t = notice("i-bbb", SPI_NOTICE_TERMINATE, w->now + 60 * SEC, "t-2");
  fb_hand(w, &t);
  assert_string_equal(w->last_node, "i-bbb");
  assert_int_equal(w->last_from, SPI_NODE_NOTICED);
  assert_int_equal(w->last_to, SPI_NODE_NOTICED);
  w->now += 61 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_TERMINATED);
  fb_done(w);
}

static int32_t replica_state(fb_world *w, const char *id) {
  spi_replica_status rs;
  memset(&rs, 0, sizeof rs);
  rs.struct_size = sizeof rs;
  assert_int_equal(spi_replica_status_of(w->e, id, strlen(id), &rs), SPI_OK);
  return rs.state;
}

/* NOTICED -> ADVISED is a withdrawal's move (an interruption taken back,
 * advice still open), not the host's: by hand it is refused, and the
 * machine stays NOTICED, so the interruption's next poll is still a
 * repeat of one that holds it, not of one a lapsed advice let go. */
static void test_noticed_to_advised_is_not_by_hand(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_notice n = notice("i-aaa", SPI_NOTICE_TERMINATE, w->now + 120 * SEC,
                        "aws:action:i-aaa:terminate");
  fb_hand(w, &n);
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_ADVISED),
                   SPI_EINVAL);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "noticed -> advised"));
  fb_hand(w, &n); /* the cloud still serves the interruption */
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_NOTICED);
  fb_done(w);
}

/* A machine advised by hand is advised for router.advised_ttl_ms, as
 * advice handed in is; it used to lapse at the next call. */
static void test_advised_by_hand_lasts_advised_ttl(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"advised_ttl_ms\":60000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_ADVISED),
                   SPI_OK);
  w->now += 59 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ADVISED);
  w->now += 2 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(w->last_from, SPI_NODE_ADVISED);
  assert_int_equal(w->last_to, SPI_NODE_ACTIVE);
  fb_done(w);
}

static int hand_in(fb_world *w, const char *node, int32_t kind, int64_t deadline) {
  char key[96];
  snprintf(key, sizeof key, "k:%s:%d:%lld", node, (int)kind,
           (long long)deadline);
  spi_notice n = notice(node, kind, deadline, key);
  size_t np = 0;
  return spi_engine_notice(w->e, &n, NULL, 0, &np);
}

/* Parse one body of an AWS IMDS path for i-aaa at w->now: its notices. */
static size_t aws(fb_world *w, int32_t format, const char *body,
                  spi_notice *out, size_t cap) {
  char err[256];
  size_t found = 0;
  assert_int_equal(spi_notice_parse(format, 200, body, strlen(body), "i-aaa",
                                    5, w->now, out, cap, &found, err,
                                    sizeof err),
                   SPI_OK);
  return found;
}

/* A withdrawal takes back only the event it names. AWS lists canceled and
 * completed maintenance on events/maintenance/scheduled for days, next to
 * a live spot/instance-action: the canceled reboot must not put a machine
 * that goes in two minutes back to work (it did, and the interruption's
 * dedup key kept the next poll from noticing it again). A withdrawal with
 * no event id names nothing, and a machine noticed by hand stays so. */
static void test_withdrawal_takes_back_only_its_event(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  w->now = 1893456000LL * SEC; /* 2030-01-01T00:00:00Z */
  spi_notice n[4];
  assert_int_equal(aws(w, SPI_NOTICE_AWS_INSTANCE_ACTION,
                       "{\"action\":\"terminate\","
                       "\"time\":\"2030-01-01T00:02:00Z\"}",
                       n, 4),
                   1);
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, &n[0], NULL, 0, &np), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(
      aws(w, SPI_NOTICE_AWS_SCHEDULED,
          "[{\"Code\":\"system-reboot\",\"Description\":\"x\",\"EventId\":"
          "\"instance-event-0d59937288b749b32\",\"NotAfter\":\"21 Jan 2030 "
          "09:17:23 GMT\",\"NotBefore\":\"14 Jan 2030 09:00:43 GMT\","
          "\"State\":\"canceled\"}]",
          n, 4),
      1);
  assert_int_equal(n[0].active, 0);
  int before = w->transitions;
  assert_int_equal(spi_engine_notice(w->e, &n[0], NULL, 0, &np), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(w->transitions, before);
  /* No event id: nothing to take back. */
  spi_notice m = notice("i-bbb", SPI_NOTICE_MAINTENANCE, w->now + 600 * SEC,
                        "m-1");
  assert_int_equal(spi_engine_notice(w->e, &m, NULL, 0, &np), SPI_OK);
  m.active = 0;
  snprintf(m.dedup_key, sizeof m.dedup_key, "m-1:canceled");
  assert_int_equal(spi_engine_notice(w->e, &m, NULL, 0, &np), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_NOTICED);
  /* Noticed by hand: the host's reason is no event a withdrawal names. */
  assert_int_equal(spi_node_set_state(w->e, "i-ccc", 5, SPI_NODE_NOTICED),
                   SPI_OK);
  spi_notice c = notice("i-ccc", SPI_NOTICE_MAINTENANCE, w->now + 600 * SEC,
                        "c-1");
  snprintf(c.event_id, sizeof c.event_id, "ev-c");
  assert_int_equal(spi_engine_notice(w->e, &c, NULL, 0, &np), SPI_OK);
  c.active = 0;
  snprintf(c.dedup_key, sizeof c.dedup_key, "c-1:canceled");
  assert_int_equal(spi_engine_notice(w->e, &c, NULL, 0, &np), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-ccc"), SPI_NODE_NOTICED);
  fb_done(w);
}

/* When a withdrawal takes back what held a machine, what is left decides:
 * rebalance advice still open makes it ADVISED (NOTICED -> ADVISED) until
 * the advice lapses; an interruption still open keeps it NOTICED, with
 * that interruption's deadline (reported NOTICED -> NOTICED, as it moved). */
static void test_withdrawal_leaves_what_else_holds(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"advised_ttl_ms\":60000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_notice adv = notice("i-aaa", SPI_NOTICE_REBALANCE, 0, "r-1");
  spi_notice m = notice("i-aaa", SPI_NOTICE_MAINTENANCE, w->now + 600 * SEC,
                        "m-1");
  snprintf(m.event_id, sizeof m.event_id, "ev-1");
  fb_hand(w, &adv);
  w->now += 10 * SEC;
  fb_hand(w, &m);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  spi_notice wd = m;
  wd.active = 0;
  snprintf(wd.dedup_key, sizeof wd.dedup_key, "m-1:canceled");
  fb_hand(w, &wd);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ADVISED);
  assert_int_equal(w->last_from, SPI_NODE_NOTICED);
  assert_int_equal(w->last_to, SPI_NODE_ADVISED);
  assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_ACTIVE);
  w->now += 51 * SEC; /* the advice, given 61 s ago, lapses */
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  /* Two interruptions: maintenance in 60 s, a spot stop in 120 s. */
  m = notice("i-aaa", SPI_NOTICE_MAINTENANCE, w->now + 60 * SEC, "m-2");
  snprintf(m.event_id, sizeof m.event_id, "ev-2");
  spi_notice stop = notice("i-aaa", SPI_NOTICE_STOP, w->now + 120 * SEC,
                           "aws:action:i-aaa:stop");
  fb_hand(w, &m);
  fb_hand(w, &stop);
  wd = m;
  wd.active = 0;
  snprintf(wd.dedup_key, sizeof wd.dedup_key, "m-2:canceled");
  int before = w->transitions;
  fb_hand(w, &wd);
  assert_int_equal(w->transitions, before + 1);
  assert_int_equal(w->last_from, SPI_NODE_NOTICED);
  assert_int_equal(w->last_to, SPI_NODE_NOTICED);
  w->now += 61 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  w->now += 60 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  /* A moved deadline is no transition for the metric. */
  char buf[1 << 16];
  size_t need;
  assert_int_equal(spi_engine_metrics(w->e, buf, sizeof buf, &need), SPI_OK);
  assert_null(strstr(buf, "from=\"noticed\",to=\"noticed\""));
  assert_non_null(strstr(buf, "from=\"noticed\",to=\"advised\"} 1"));
  fb_done(w);
}

/* Hand in a maintenance event named ev-<id> for node, due in `in` s. */
static void event_in(fb_world *w, const char *node, int id, int64_t in) {
  char key[48];
  snprintf(key, sizeof key, "aws:scheduled:%s:ev-%d", node, id);
  spi_notice m = notice(node, SPI_NOTICE_MAINTENANCE, w->now + in * SEC, key);
  snprintf(m.event_id, sizeof m.event_id, "ev-%d", id);
  fb_hand(w, &m);
}

/* Withdraw event ev-<id> of node. */
static void withdraw(fb_world *w, const char *node, int id) {
  char key[56];
  snprintf(key, sizeof key, "aws:scheduled:%s:ev-%d:canceled", node, id);
  spi_notice m = notice(node, SPI_NOTICE_MAINTENANCE, 0, key);
  m.active = 0;
  snprintf(m.event_id, sizeof m.event_id, "ev-%d", id);
  fb_hand(w, &m);
}

/* A machine lists four events. Past that, the one due last is let go and
 * the earliest deadline of those let go is kept: withdrawals move the
 * deadline later, but never past it, as an event let go may still be
 * live. The machine used to be frozen at the deadline it had, withdrawn
 * or not, and terminated there. */
static void test_events_past_four_are_bounded(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5", "z1");
  int64_t t0 = w->now;
  /* Five events at 600..604 s: the fifth is let go, 604 s kept. */
  for (int i = 0; i < 5; i++) event_in(w, "i-aaa", i, 600 + i);
  for (int i = 0; i < 4; i++) {
    int before = w->transitions;
    withdraw(w, "i-aaa", i);
    assert_int_equal(w->transitions, before + 1); /* the deadline moved */
    assert_int_equal(w->last_from, SPI_NODE_NOTICED);
    assert_int_equal(w->last_to, SPI_NODE_NOTICED);
  }
  withdraw(w, "i-aaa", 4); /* not listed: the bound holds */
  /* Events at 100, 200, 300, 400, 500 s (500 let go), then 150 s (400 let
   * go): the bound is 400 s, the earlier of the two. */
  int64_t in[] = {100, 200, 300, 400, 500, 150};
  for (int i = 0; i < 6; i++) event_in(w, "i-bbb", i, in[i]);
  withdraw(w, "i-bbb", 0);
  withdraw(w, "i-bbb", 5);
  withdraw(w, "i-bbb", 1);
  withdraw(w, "i-bbb", 2);
  w->now = t0 + 399 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_NOTICED);
  w->now = t0 + 401 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_TERMINATED);
  w->now = t0 + 603 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  w->now = t0 + 605 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  fb_done(w);
}

/* The notice of an AWS spot stop for i-aaa, due 120 s after w->now. */
static spi_notice stop_notice(fb_world *w) {
  time_t t = (time_t)(w->now / SEC + 120);
  struct tm tm;
  gmtime_r(&t, &tm);
  char when[32], body[96];
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
  snprintf(body, sizeof body, "{\"action\":\"stop\",\"time\":\"%s\"}", when);
  spi_notice n[2];
  assert_int_equal(aws(w, SPI_NOTICE_AWS_INSTANCE_ACTION, body, n, 2), 1);
  return n[0];
}

/* A spot instance whose interruption behaviour is stop (or a GCP VM
 * restarted after a preemption) keeps its id: interrupted, stopped,
 * forgotten, started again, interrupted again - with the same dedup key
 * ("aws:action:<id>:stop"). A replica added on a machine the table does
 * not hold, or holds as terminated, says it was started again: its keys
 * go, so the second interruption acts; it used to be taken for a repeat
 * (SPI_OK, no plans, the machine ACTIVE until it stopped). Round 0
 * forgets the machine by hand (REMOVED), round 1 by removing its last
 * replica (its keys stay until the replica is added again: the event
 * polled meanwhile is a repeat), round 2 has it put back to work by
 * hand. */
static void test_restarted_machine_is_noticed_again(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  for (int round = 0; round < 3; round++) {
    spi_notice n = stop_notice(w);
    int before = w->to_noticed;
    fb_hand(w, &n);
    assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
    assert_int_equal(w->to_noticed, before + 1);
    fb_hand(w, &n); /* polled again: nothing new */
    assert_int_equal(w->to_noticed, before + 1);
    if (round == 2) {
      assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_ACTIVE),
                       SPI_OK);
      fb_hand(w, &n);
      assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
      break;
    }
    w->now += 121 * SEC;
    assert_int_equal(spi_engine_tick(w->e), SPI_OK);
    assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
    assert_int_equal(spi_replica_remove(w->e, "spot-a", 6), SPI_OK);
    if (round == 0)
      assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_REMOVED),
                       SPI_OK);
    else
      assert_int_equal(spi_engine_tick(w->e), SPI_OK); /* nothing runs there */
    assert_int_equal(w->last_to, SPI_NODE_REMOVED);
    if (round == 1) {
      fb_hand(w, &n); /* served past its deadline: still a repeat */
      assert_int_equal(w->to_noticed, before + 1);
      assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
    }
    w->now += 3600 * SEC; /* started again an hour later, same id */
    fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
    assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  }
  fb_done(w);
}

/* Clouds go on serving an event past its deadline (AWS scheduled stops
 * between NotBefore and the stop, GCP maintenance events, Azure Started
 * events). A machine that runs nothing is dropped once it terminated, but
 * the event's key stays: polled again, it is a repeat, not a machine
 * noticed, terminated and dropped again on every poll, each time on the
 * bus. */
static void test_event_served_past_deadline_acts_once(void **st) {
  (void)st;
  broker *b = broker_new();
  fb_world *w = fb_on_bus(b, "A", NULL);
  spi_notice n = notice("i-zzz", SPI_NOTICE_STOP, w->now + 30 * SEC,
                        "aws:scheduled:ev-9");
  snprintf(n.event_id, sizeof n.event_id, "ev-9");
  fb_hand(w, &n);
  assert_int_equal(broker_count(b), 1);
  for (int i = 0; i < 5; i++) {
    w->now += 31 * SEC;
    assert_int_equal(spi_engine_tick(w->e), SPI_OK);
    assert_int_equal(fb_state(w->e, "i-zzz"), SPI_NODE_ACTIVE); /* dropped */
    fb_hand(w, &n); /* polled again: same event, same key */
  }
  assert_int_equal(w->to_noticed, 1);
  assert_int_equal(w->removed, 1);
  assert_int_equal(broker_count(b), 1);
  fb_done(w);
  broker_free(b);
}

/* What stays remembered: a withdrawal polled again does nothing, after it
 * put its machine back to work too, and is not published again; lapsed
 * advice keeps its key, so a rebalance recommendation the cloud keeps
 * serving advises a machine once, for advised_ttl_ms. */
static void test_keys_kept_while_the_machine_lives(void **st) {
  (void)st;
  broker *b = broker_new();
  fb_world *w = fb_on_bus(b, "A", "\"router\":{\"advised_ttl_ms\":60000}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_notice m = notice("i-aaa", SPI_NOTICE_MAINTENANCE, w->now + 600 * SEC,
                        "aws:scheduled:ev-1");
  snprintf(m.event_id, sizeof m.event_id, "ev-1");
  fb_hand(w, &m);
  m.active = 0;
  snprintf(m.dedup_key, sizeof m.dedup_key, "aws:scheduled:ev-1:canceled");
  fb_hand(w, &m);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  size_t sent = broker_count(b);
  int before = w->transitions;
  for (int i = 0; i < 3; i++) {
    fb_hand(w, &m);
    assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  }
  assert_int_equal(broker_count(b), sent);
  assert_int_equal(w->transitions, before);
  spi_notice adv = notice("i-aaa", SPI_NOTICE_REBALANCE, 0, "aws:rebalance:i-aaa");
  fb_hand(w, &adv);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ADVISED);
  w->now += 61 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_hand(w, &adv);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_done(w);
  broker_free(b);
}

/* A withdrawal that puts a machine back to work forgets the keys of the
 * interruptions that held it, not those of advice: a rebalance
 * recommendation the cloud goes on serving does not advise it again. */
static void test_withdrawal_keeps_advice_keys(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"advised_ttl_ms\":60000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_notice adv = notice("i-aaa", SPI_NOTICE_REBALANCE, 0,
                          "aws:rebalance:i-aaa");
  fb_hand(w, &adv);
  spi_notice m = notice("i-aaa", SPI_NOTICE_MAINTENANCE, w->now + 600 * SEC,
                        "aws:scheduled:ev-1");
  snprintf(m.event_id, sizeof m.event_id, "ev-1");
  fb_hand(w, &m);
  w->now += 61 * SEC; /* the advice lapses while NOTICED */
  spi_notice wd = m;
  wd.active = 0;
  wd.deadline_ns = 0;
  snprintf(wd.dedup_key, sizeof wd.dedup_key, "aws:scheduled:ev-1:canceled");
  fb_hand(w, &wd);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_hand(w, &adv); /* the cloud still serves the recommendation */
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_hand(w, &m); /* the interruption's key went: it acts again */
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  fb_done(w);
}

/* Advice keeps its key, lapsed or not, also when a replica is added on
 * the machine after its lapsed entry was dropped: the rebalance
 * recommendation the cloud still serves does not advise it again. */
static void test_replica_add_keeps_advice_keys(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "r1", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  spi_notice adv = fb_notice("i-aaa", 0, "aws:rebalance:2026-12-06T06:00:00Z");
  adv.kind = SPI_NOTICE_REBALANCE;
  fb_hand(w, &adv);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ADVISED);
  w->now += 1300 * SEC; /* past router.advised_ttl_ms (20 min) */
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_hand(w, &adv); /* still served: a repeat */
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_add(w, "r2", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_hand(w, &adv); /* still served */
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_done(w);
}

/* A replica added on a machine terminated past its deadline is a restart:
 * the entry goes (reported as REMOVED), the replica starts ACTIVE, and
 * the machine's next notice acts. It used to stay TERMINATED, with its
 * keys forgotten, and ignore every later notice. */
static void test_replica_add_restarts_terminated_machine(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "r1", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  spi_notice n = fb_notice("i-aaa", w->now + 120 * SEC, "aws:spot:1");
  fb_hand(w, &n);
  w->now += 121 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  fb_add(w, "r2", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(w->last_to, SPI_NODE_REMOVED);
  spi_notice adv = fb_notice("i-aaa", 0, "aws:rebalance:new");
  adv.kind = SPI_NOTICE_REBALANCE;
  fb_hand(w, &adv);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ADVISED);
  n.deadline_ns = w->now + 120 * SEC;
  fb_hand(w, &n); /* its next interruption, under the key seen before */
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  fb_done(w);
}

/* The same restart when no tick ran between the deadline and the add: the
 * machine is taken as TERMINATED then, and the new replica starts ACTIVE.
 * It used to start NOTICED and stay out of routing on an entry the next
 * tick terminated. */
static void test_replica_add_restarts_machine_past_deadline(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "r1", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  spi_notice n = fb_notice("i-aaa", w->now + 120 * SEC, "aws:spot:1");
  fb_hand(w, &n);
  w->now += 121 * SEC; /* no tick, no other engine call */
  fb_add(w, "r2", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(replica_state(w, "r2"), SPI_REPLICA_ACTIVE);
  fb_done(w);
}

/* A replica added on a machine terminated by hand before its deadline
 * starts as the machine's other replicas and forgets no key: the machine
 * has not been started again. */
static void test_replica_add_before_deadline_is_no_restart(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "r1", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  spi_notice n = fb_notice("i-aaa", w->now + 120 * SEC, "aws:spot:1");
  fb_hand(w, &n);
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_TERMINATED),
                   SPI_OK);
  fb_add(w, "r2", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  fb_done(w);
}

/* A machine advised by hand, then noticed, goes back to ADVISED when that
 * notice is withdrawn (and to ACTIVE once the advice lapses), not NOTICED
 * until the withdrawn deadline and then TERMINATED: by hand it was advised,
 * not noticed. */
static void test_advised_by_hand_then_withdrawn(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"advised_ttl_ms\":600000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_ADVISED),
                   SPI_OK);
  spi_notice m = notice("i-aaa", SPI_NOTICE_MAINTENANCE, w->now + 3600 * SEC,
                        "ev-1");
  snprintf(m.event_id, sizeof m.event_id, "ev-1");
  fb_hand(w, &m);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  spi_notice wd = m;
  wd.active = 0;
  snprintf(wd.dedup_key, sizeof wd.dedup_key, "ev-1:canceled");
  fb_hand(w, &wd);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ADVISED);
  assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_ACTIVE);
  w->now += 601 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  w->now += 3600 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_ACTIVE);
  fb_done(w);
}

/* Hand in the AWS scheduled event ev-1 for i-aaa: `code`, `state`, not
 * before `when` (AWS's own time format); its plans go to p[0..cap). */
static size_t scheduled(fb_world *w, const char *code, const char *state,
                        const char *when, spi_ticket_plan *p, size_t cap) {
  char body[256];
  snprintf(body, sizeof body,
           "[{\"Code\":\"%s\",\"EventId\":\"instance-event-1\","
           "\"State\":\"%s\",\"NotBefore\":\"%s\"}]",
           code, state, when);
  spi_notice ns[2];
  assert_int_equal(aws(w, SPI_NOTICE_AWS_SCHEDULED, body, ns, 2), 1);
  size_t np = 0;
  if (p) p[0].struct_size = sizeof p[0];
  assert_int_equal(spi_engine_notice(w->e, &ns[0], p, cap, &np), SPI_OK);
  return np;
}

/* A machine the host drains, whose only interruption is then withdrawn,
 * stays DRAINING (the host's drain) and loses the withdrawn deadline,
 * reported as DRAINING -> DRAINING: plans made against it may drain now.
 * It used to be TERMINATED at the cancelled time. Drained before the
 * notice, or noticed and then drained, alike. */
static void test_drain_outlives_withdrawn_notice(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  for (int round = 0; round < 2; round++) {
    w->now = (1893456000LL + round * 86400) * SEC; /* 2030-01-01, 02 */
    const char *when = round ? "2 Jan 2030 00:10:00 GMT"
                             : "1 Jan 2030 00:10:00 GMT";
    if (round == 0)
      assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_DRAINING),
                       SPI_OK);
    scheduled(w, "instance-stop", "active", when, NULL, 0);
    if (round == 1) {
      assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
      assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_DRAINING),
                       SPI_OK);
    }
    int before = w->transitions;
    scheduled(w, "instance-stop", "canceled", when, NULL, 0);
    assert_int_equal(w->transitions, before + 1);
    assert_int_equal(w->last_from, SPI_NODE_DRAINING);
    assert_int_equal(w->last_to, SPI_NODE_DRAINING);
    w->now += 601 * SEC; /* past the cancelled time */
    assert_int_equal(spi_engine_tick(w->e), SPI_OK);
    assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_DRAINING);
    assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_DRAINING);
    assert_int_equal(w->terminated, 0);
    /* Forgotten by hand, for the next round. */
    assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_REMOVED),
                     SPI_OK);
  }
  fb_done(w);
}

/* An AWS scheduled event moved to an earlier NotBefore under the same
 * EventId (its dedup key, which holds no time) moves the machine's
 * deadline earlier and plans again: a stream that drained against the
 * old deadline is replayed now. It used to be a repeat, and streams
 * stayed planned against the later deadline. A repeat that is not earlier
 * does nothing, the earliest deadline in force stays, and one earlier
 * than a deadline that has passed is a repeat too. */
static void test_event_moved_earlier_replans(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  w->now = 1893456000LL * SEC; /* 2030-01-01T00:00:00Z */
  refresh_loads(w);
  spi_decision d;
  assert_int_equal(route(w, "silver", 4000, &d), SPI_OK);
  spi_ticket_progress(w->e, d.ticket, 100); /* 3900 left at 50/s: 78 s */
  spi_ticket_plan p[2];
  const char *code = "instance-retirement";
  assert_int_equal(scheduled(w, code, "active", "1 Jan 2030 00:10:00 GMT", p,
                             2), 1);
  assert_int_equal(p[0].action, SPI_ACTION_DRAIN);
  int before = w->transitions;
  assert_int_equal(scheduled(w, code, "active", "1 Jan 2030 00:01:00 GMT", p,
                             2), 1);
  assert_int_equal(p[0].action, SPI_ACTION_REPLAY);
  assert_true(p[0].deadline_s > 59.9 && p[0].deadline_s <= 60.0);
  assert_int_equal(w->transitions, before + 1);
  assert_int_equal(w->last_from, SPI_NODE_NOTICED);
  assert_int_equal(w->last_to, SPI_NODE_NOTICED);
  /* Polled again, or back at the later time: a repeat. */
  assert_int_equal(scheduled(w, code, "active", "1 Jan 2030 00:01:00 GMT", p,
                             2), 0);
  assert_int_equal(scheduled(w, code, "active", "1 Jan 2030 00:10:00 GMT", p,
                             2), 0);
  assert_int_equal(w->transitions, before + 1);
  w->now += 61 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_INTERRUPTED;
  spi_ticket_finish(w->e, d.ticket, &res);
  /* A machine that runs nothing, dropped once terminated: the event
   * served again, even earlier, is a repeat of one that has passed. */
  spi_notice z = notice("i-zzz", SPI_NOTICE_STOP, w->now + 30 * SEC,
                        "aws:scheduled:ev-9");
  snprintf(z.event_id, sizeof z.event_id, "ev-9");
  fb_hand(w, &z);
  w->now += 31 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  int noticed = w->to_noticed;
  z.deadline_ns -= 10 * SEC;
  fb_hand(w, &z);
  assert_int_equal(w->to_noticed, noticed);
  assert_int_equal(fb_state(w->e, "i-zzz"), SPI_NODE_ACTIVE);
  fb_done(w);
}

/* A replica added on a machine terminated past its deadline starts the
 * machine's new life, for every replica registered there: those still
 * registered from before take requests again (ACTIVE), as they do when
 * the host forgets the machine by hand. They used to stay NOTICED on a
 * machine that read ACTIVE until its next transition. Also when no tick
 * ran since the deadline, and when the replica moves there. */
static void test_restart_frees_other_replicas(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "r1", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_add(w, "r2", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_add(w, "mv", "i-bbb", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  for (int round = 0; round < 3; round++) {
    char key[16];
    snprintf(key, sizeof key, "aws:spot:%d", round);
    spi_notice n = fb_notice("i-aaa", w->now + 120 * SEC, key);
    fb_hand(w, &n);
    w->now += 121 * SEC;
    if (round != 1) {
      assert_int_equal(spi_engine_tick(w->e), SPI_OK);
      assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
      assert_int_equal(replica_state(w, "r1"), SPI_REPLICA_NOTICED);
    }
    int removed = w->removed;
    if (round == 2)
      fb_add(w, "mv", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
    else
      fb_add(w, round ? "r3b" : "r3", "i-aaa", SPI_POOL_SPOT, "g5.xlarge",
             "use1-az1");
    assert_int_equal(spi_engine_tick(w->e), SPI_OK);
    assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
    assert_int_equal(w->removed, removed + 1);
    assert_int_equal(replica_state(w, "r1"), SPI_REPLICA_ACTIVE);
    assert_int_equal(replica_state(w, "r2"), SPI_REPLICA_ACTIVE);
    assert_int_equal(replica_state(w, round == 2 ? "mv" : round ? "r3b" : "r3"),
                     SPI_REPLICA_ACTIVE);
  }
  fb_done(w);
}

/* A dedup key is its machine's: one a host built and reused for a second
 * machine notices that machine too (it used to be dropped as a repeat),
 * while the first machine's repeat is still one. */
static void test_dedup_key_is_per_machine(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5", "z2");
  spi_notice a = notice("i-aaa", SPI_NOTICE_TERMINATE, w->now + 120 * SEC,
                        "terminate");
  spi_notice b = notice("i-bbb", SPI_NOTICE_TERMINATE, w->now + 120 * SEC,
                        "terminate");
  fb_hand(w, &a);
  fb_hand(w, &b);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_NOTICED);
  assert_int_equal(replica_state(w, "spot-b"), SPI_REPLICA_NOTICED);
  int before = w->transitions;
  fb_hand(w, &a);
  fb_hand(w, &b);
  assert_int_equal(w->transitions, before);
  fb_done(w);
}

/* Plans for a machine noticed or drained by hand, which has no deadline,
 * are made against router.default_window_ms from now, as for a notice
 * without one: a stream a token from its end drains. They used to be made
 * against the epoch (deadline_s about -1.7e9) and replay everything. */
static void test_plans_by_hand_use_default_window(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"default_window_ms\":30000}}");
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  refresh_loads(w);
  spi_decision d;
  assert_int_equal(route(w, "silver", 100, &d), SPI_OK);
  spi_ticket_progress(w->e, d.ticket, 99);
  int32_t states[2] = {SPI_NODE_NOTICED, SPI_NODE_DRAINING};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, states[i]), SPI_OK);
    spi_ticket_plan p[2];
    p[0].struct_size = sizeof p[0];
    size_t np = 0;
    assert_int_equal(spi_engine_node_plans(w->e, "i-aaa", 5, p, 2, &np),
                     SPI_OK);
    assert_int_equal((int)np, 1);
    assert_true(p[0].deadline_s > 29.9 && p[0].deadline_s <= 30.0);
    assert_int_equal(p[0].action, SPI_ACTION_DRAIN);
  }
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  spi_ticket_finish(w->e, d.ticket, &res);
  fb_done(w);
}

/* A reboot, freeze or redeploy ends: a machine whose deadline passed with
 * only such maintenance holding it is TERMINATED, and the withdrawal of
 * that maintenance (AWS "completed"; for Azure, which drops an event once
 * it is over, the host's withdrawal naming it) brings it back to ACTIVE
 * with its replicas. It used to be terminated for good, the withdrawal
 * ignored. A spot interruption still ends a machine for good. */
static void test_maintenance_withdrawn_after_termination(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  const char *act =
      "[{\"Code\":\"system-reboot\",\"EventId\":\"instance-event-1\","
      "\"State\":\"active\",\"NotBefore\":\"14 Nov 2023 22:15:00 GMT\"}]";
  const char *done =
      "[{\"Code\":\"system-reboot\",\"EventId\":\"instance-event-1\","
      "\"State\":\"completed\",\"NotBefore\":\"14 Nov 2023 22:15:00 GMT\"}]";
  spi_notice ns[2];
  assert_int_equal(aws(w, SPI_NOTICE_AWS_SCHEDULED, act, ns, 2), 1);
  fb_hand(w, &ns[0]);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  w->now = ns[0].deadline_ns + 300 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_NOTICED);
  assert_int_equal(aws(w, SPI_NOTICE_AWS_SCHEDULED, done, ns, 2), 1);
  fb_hand(w, &ns[0]);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(w->last_from, SPI_NODE_TERMINATED);
  assert_int_equal(w->last_to, SPI_NODE_ACTIVE);
  assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_ACTIVE);

  /* Azure Freeze, started: noticed now, over a minute later. */
  fb_add(w, "r-az", "WestNO_0", SPI_POOL_ON_DEMAND, "D4", "z1");
  const char *frz =
      "{\"DocumentIncarnation\":4,\"Events\":[{\"EventId\":\"C7061BAC\","
      "\"EventStatus\":\"Started\",\"EventType\":\"Freeze\","
      "\"ResourceType\":\"VirtualMachine\",\"Resources\":[\"WestNO_0\"],"
      "\"NotBefore\":\"\",\"DurationInSeconds\":5}]}";
  char err[256];
  size_t found = 0;
  assert_int_equal(spi_notice_parse(SPI_NOTICE_AZURE_SCHEDULED, 200, frz,
                                    strlen(frz), "WestNO_0", 8, w->now, ns, 2,
                                    &found, err, sizeof err),
                   SPI_OK);
  assert_int_equal((int)found, 1);
  fb_hand(w, &ns[0]);
  w->now += 60 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "WestNO_0"), SPI_NODE_TERMINATED);
  spi_notice gone = ns[0];
  gone.active = 0;
  snprintf(gone.dedup_key, sizeof gone.dedup_key, "azure:C7061BAC:gone");
  fb_hand(w, &gone);
  assert_int_equal(fb_state(w->e, "WestNO_0"), SPI_NODE_ACTIVE);
  assert_int_equal(replica_state(w, "r-az"), SPI_REPLICA_ACTIVE);

  /* Maintenance and a spot interruption: terminated for good. */
  spi_notice m = notice("i-aaa", SPI_NOTICE_MAINTENANCE, w->now + 60 * SEC,
                        "m-2");
  snprintf(m.event_id, sizeof m.event_id, "ev-2");
  fb_hand(w, &m);
  spi_notice t = notice("i-aaa", SPI_NOTICE_TERMINATE, w->now + 120 * SEC,
                        "t-2");
  fb_hand(w, &t);
  w->now += 121 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  m.active = 0;
  snprintf(m.dedup_key, sizeof m.dedup_key, "m-2:completed");
  fb_hand(w, &m);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_TERMINATED);
  assert_int_equal(replica_state(w, "spot-a"), SPI_REPLICA_NOTICED);
  /* Nor can the host put a terminated machine to work by hand. */
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_ACTIVE),
                   SPI_EINVAL);
  fb_done(w);
}

/* A machine forgotten by hand is what an unknown machine is: its replicas
 * still registered take requests again, whether it was active, advised or
 * terminated (a VM preempted and restarted under its name, its replica
 * kept registered). They used to stay NOTICED for good while the machine
 * read ACTIVE. */
static void test_removed_by_hand_is_unknown(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  fb_add(w, "r0", "i-aaa", SPI_POOL_ON_DEMAND, "g5", "z1");
  fb_add(w, "r1", "i-bbb", SPI_POOL_ON_DEMAND, "g5", "z1");
  fb_add(w, "r2", "i-ccc", SPI_POOL_SPOT, "g5", "z2");
  assert_int_equal(spi_node_set_state(w->e, "i-aaa", 5, SPI_NODE_REMOVED),
                   SPI_OK);
  assert_int_equal(replica_state(w, "r0"), SPI_REPLICA_ACTIVE);
  assert_int_equal(spi_node_set_state(w->e, "i-bbb", 5, SPI_NODE_ADVISED),
                   SPI_OK);
  assert_int_equal(spi_node_set_state(w->e, "i-bbb", 5, SPI_NODE_REMOVED),
                   SPI_OK);
  w->now += 86400 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-bbb"), SPI_NODE_ACTIVE);
  assert_int_equal(replica_state(w, "r1"), SPI_REPLICA_ACTIVE);
  assert_int_equal(hand_in(w, "i-ccc", SPI_NOTICE_PREEMPT, w->now + 30 * SEC),
                   SPI_OK);
  w->now += 31 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-ccc"), SPI_NODE_TERMINATED);
  assert_int_equal(replica_state(w, "r2"), SPI_REPLICA_NOTICED);
  assert_int_equal(spi_node_set_state(w->e, "i-ccc", 5, SPI_NODE_REMOVED),
                   SPI_OK);
  assert_int_equal(fb_state(w->e, "i-ccc"), SPI_NODE_ACTIVE);
  assert_int_equal(replica_state(w, "r2"), SPI_REPLICA_ACTIVE);
  fb_done(w);
}

/* Every transition reaches the callback, however many one call makes:
 * 40 machines that run replicas and 4,000 that run nothing pass their
 * deadline at one tick (4,040 TERMINATED, 4,000 REMOVED). Only the first
 * 16 of a call used to be reported. */
static void test_every_transition_is_reported(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  char id[32], node[32];
  for (int i = 0; i < 40; i++) {
    snprintf(id, sizeof id, "r-%02d", i);
    snprintf(node, sizeof node, "i-%02d", i);
    fb_add(w, id, node, SPI_POOL_SPOT, "g5", "z1");
    assert_int_equal(hand_in(w, node, SPI_NOTICE_TERMINATE, w->now + 60 * SEC),
                     SPI_OK);
  }
  for (int i = 0; i < 4000; i++) {
    snprintf(node, sizeof node, "m-%04d", i);
    assert_int_equal(hand_in(w, node, SPI_NOTICE_TERMINATE, w->now + 60 * SEC),
                     SPI_OK);
  }
  assert_int_equal(w->to_noticed, 4040);
  w->now += 61 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(w->terminated, 4040);
  assert_int_equal(w->removed, 4000);
  assert_int_equal(fb_state(w->e, "i-39"), SPI_NODE_TERMINATED);
  fb_done(w);
}

/* When the table is full, the machines forgotten to make room are reported
 * and so is the notice's own move, last: for a notice from the fleet bus
 * it is how the host learns to ask for plans. It used to be dropped behind
 * the first 16 machines forgotten. */
static void test_notice_reported_when_table_full(void **st) {
  (void)st;
  fb_world *w = mk(NULL);
  char node[32];
  for (int i = 0; i < 4096; i++) {
    snprintf(node, sizeof node, "n-%04d", i);
    assert_int_equal(
        spi_node_set_state(w->e, node, strlen(node), SPI_NODE_NOTICED), SPI_OK);
  }
  fb_add(w, "spot-x", "i-x", SPI_POOL_SPOT, "g5", "z1");
  int noticed = w->to_noticed;
  assert_int_equal(hand_in(w, "i-x", SPI_NOTICE_TERMINATE, w->now + 120 * SEC),
                   SPI_OK);
  assert_int_equal(w->removed, 64);
  assert_int_equal(w->to_noticed, noticed + 1);
  assert_string_equal(w->last_node, "i-x");
  assert_int_equal(w->last_to, SPI_NODE_NOTICED);
  fb_done(w);
}

/* Issue 12 item 7: advisory notices for 4,096 machines that run nothing
 * filled the node table for good, and a terminate notice for a machine
 * that does run a replica was refused with SPI_EFULL, its replica left
 * ACTIVE. Entries for machines that run nothing now expire after their
 * notice's deadline, and when the table is full the oldest of them make
 * room, so such a flood never crowds out a machine with replicas. */
static void test_node_table_flood(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"advised_ttl_ms\":60000}}");
  fb_add(w, "busy-r", "i-busy", SPI_POOL_SPOT, "g5", "z1");
  char node[32];
  for (int i = 0; i < 4096; i++) {
    snprintf(node, sizeof node, "m-%05d", i);
    assert_int_equal(hand_in(w, node, SPI_NOTICE_REBALANCE, 0), SPI_OK);
  }
  assert_int_equal(w->removed, 0);
  assert_int_equal(hand_in(w, "i-busy", SPI_NOTICE_TERMINATE, w->now + 120 * SEC),
                   SPI_OK);
  assert_int_equal(fb_state(w->e, "i-busy"), SPI_NODE_NOTICED);
  assert_int_equal(replica_state(w, "busy-r"), SPI_REPLICA_NOTICED);
  /* Room was made by forgetting the oldest advised machines, in a batch. */
  assert_true(w->removed >= 1 && w->removed <= 64);
  assert_int_equal(fb_state(w->e, "m-00000"), SPI_NODE_ACTIVE);
  assert_int_equal(fb_state(w->e, "m-04095"), SPI_NODE_ADVISED);

  /* A longer flood of interruption notices for machines that run nothing:
   * every one is taken, the busy machine is never the one forgotten, and
   * the newest are remembered (a replica added there starts NOTICED). */
  for (int i = 0; i < 10000; i++) {
    snprintf(node, sizeof node, "x-%05d", i);
    assert_int_equal(
        hand_in(w, node, SPI_NOTICE_TERMINATE, w->now + 600 * SEC), SPI_OK);
  }
  assert_int_equal(fb_state(w->e, "i-busy"), SPI_NODE_NOTICED);
  assert_int_equal(fb_state(w->e, "x-00000"), SPI_NODE_ACTIVE);
  assert_int_equal(fb_state(w->e, "x-09999"), SPI_NODE_NOTICED);
  fb_add(w, "late-r", "x-09999", SPI_POOL_SPOT, "g5", "z2");
  assert_int_equal(replica_state(w, "late-r"), SPI_REPLICA_NOTICED);

  /* Past the deadlines: machines that run nothing are forgotten, those
   * with replicas stay TERMINATED until their replicas are removed. */
  w->now += 601 * SEC;
  int before = w->removed;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_true(w->removed > before);
  assert_int_equal(fb_state(w->e, "x-09998"), SPI_NODE_ACTIVE);
  assert_int_equal(fb_state(w->e, "i-busy"), SPI_NODE_TERMINATED);
  assert_int_equal(fb_state(w->e, "x-09999"), SPI_NODE_TERMINATED);
  assert_int_equal(spi_replica_remove(w->e, "late-r", 6), SPI_OK);
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  assert_int_equal(fb_state(w->e, "x-09999"), SPI_NODE_ACTIVE);
  assert_int_equal(fb_state(w->e, "i-busy"), SPI_NODE_TERMINATED);

  /* Advice lapses and its entries go with it: a second advisory flood of
   * 4,096 machines needs no eviction at all. */
  for (int i = 0; i < 4000; i++) {
    snprintf(node, sizeof node, "a-%05d", i);
    assert_int_equal(hand_in(w, node, SPI_NOTICE_REBALANCE, 0), SPI_OK);
  }
  w->now += 61 * SEC;
  assert_int_equal(spi_engine_tick(w->e), SPI_OK);
  before = w->removed;
  for (int i = 0; i < 4095; i++) {
    snprintf(node, sizeof node, "b-%05d", i);
    assert_int_equal(hand_in(w, node, SPI_NOTICE_REBALANCE, 0), SPI_OK);
  }
  assert_int_equal(w->removed, before);
  assert_int_equal(fb_state(w->e, "b-00000"), SPI_NODE_ADVISED);
  assert_int_equal(fb_state(w->e, "i-busy"), SPI_NODE_TERMINATED);
  fb_done(w);
}

/* When every tracked machine runs a replica there is nothing to forget:
 * a notice for yet another machine that runs nothing is refused. */
static void test_node_table_full_of_replicas(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"max_replicas\":4096}}");
  char id[32], node[32];
  for (int i = 0; i < 4096; i++) {
    snprintf(id, sizeof id, "r-%05d", i);
    snprintf(node, sizeof node, "n-%05d", i);
    fb_add(w, id, node, SPI_POOL_SPOT, "g5", "z1");
    assert_int_equal(hand_in(w, node, SPI_NOTICE_REBALANCE, 0), SPI_OK);
  }
  assert_int_equal(hand_in(w, "n-extra", SPI_NOTICE_TERMINATE, w->now + SEC),
                   SPI_EFULL);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "too many machines"));
  assert_int_equal(w->removed, 0);
  assert_int_equal(fb_state(w->e, "n-00000"), SPI_NODE_ADVISED);
  fb_done(w);
}


/* What one notice costs does not grow with the fleet: it is counted in
 * entries examined (node entries, replicas, remembered keys), not in time.
 * 512 machines each run a spot replica, in 16 pools; every one is noticed,
 * then 1,536 machines that run nothing are advised; their deadlines pass;
 * and it all happens again. Scanning the table and the replica set for
 * each notice cost thousands of entries a notice here. */
static void test_notice_cost_is_bounded(void **st) {
  (void)st;
  fb_world *w = mk("{\"router\":{\"max_replicas\":4096,"
                   "\"advised_ttl_ms\":60000}}");
  enum { BUSY = 512, IDLE = 1536 };
  char id[32], node[32], zone[16];
  for (int i = 0; i < BUSY; i++) {
    snprintf(id, sizeof id, "r-%05d", i);
    snprintf(node, sizeof node, "n-%05d", i);
    snprintf(zone, sizeof zone, "z%d", i % 16);
    fb_add(w, id, node, SPI_POOL_SPOT, "g5", zone);
  }
  uint64_t p0 = spi__nodes_probes(w->e);
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < BUSY; i++) {
      snprintf(node, sizeof node, "n-%05d", i);
      assert_int_equal(
          hand_in(w, node, SPI_NOTICE_PREEMPT, w->now + 30 * SEC), SPI_OK);
      assert_int_equal(fb_state(w->e, node), SPI_NODE_NOTICED);
    }
    for (int i = 0; i < IDLE; i++) {
      snprintf(node, sizeof node, "e-%d-%05d", round, i);
      assert_int_equal(hand_in(w, node, SPI_NOTICE_REBALANCE, 0), SPI_OK);
    }
    w->now += 61 * SEC;
    assert_int_equal(spi_engine_tick(w->e), SPI_OK);
    assert_int_equal(fb_state(w->e, "n-00000"), SPI_NODE_TERMINATED);
    assert_int_equal(fb_state(w->e, "e-0-00000"), SPI_NODE_ACTIVE);
    if (round == 0)
      for (int i = 0; i < BUSY; i++) { /* the machines come back */
        snprintf(node, sizeof node, "n-%05d", i);
        assert_int_equal(spi_node_set_state(w->e, node, strlen(node),
                                            SPI_NODE_REMOVED),
                         SPI_OK);
      }
  }
  /* Every call above: 2 x (512 notices + 512 lookups + 1,536 notices)
   * + 2 ticks + 2 lookups + 512 state changes. */
  uint64_t calls = 2 * (BUSY + BUSY + IDLE) + 2 + 4 + BUSY;
  uint64_t delta = spi__nodes_probes(w->e) - p0;
  uint64_t per_call = delta / calls;
  print_message("%llu entries examined, %llu a call\n",
                (unsigned long long)delta,
                (unsigned long long)per_call);
  assert_true(per_call <= 64);
  fb_done(w);
}

typedef struct counting {
  long allocs, frees, fail_at; /* fail_at -1: never */
} counting;

static void *c_alloc(void *ud, size_t n) {
  counting *c = ud;
  if (c->allocs == c->fail_at) {
    c->fail_at = -1;
    return NULL;
  }
  c->allocs++;
  return malloc(n);
}

static void c_free(void *ud, void *p) {
  if (p) ((counting *)ud)->frees++;
  free(p);
}

/* The notice and metrics paths under the engine's allocator hook, failing
 * each allocation in turn: a call either works or answers SPI_ENOMEM
 * saying so (never another status), the engine keeps working, and nothing
 * leaks. Reading a /metrics page allocates nothing at all. */
static void test_alloc_failure(void **st) {
  (void)st;
  static const char PAGE[] =
      "vllm:num_requests_running 3\nh {count:2,sum:1}\nvllm:num_requests_"
      "waiting 1 st@5\n";
  long injected = 0;
  for (long k = 0;; k++) {
    counting c = {0, 0, -1};
    spi_hooks h;
    memset(&h, 0, sizeof h);
    h.struct_size = sizeof h;
    h.alloc = c_alloc;
    h.free = c_free;
    h.alloc_user_data = &c;
    spi_engine *e = NULL;
    assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
    spi_replica_info ri;
    memset(&ri, 0, sizeof ri);
    ri.struct_size = sizeof ri;
    ri.id = "r1";
    ri.id_len = 2;
    ri.node = "i-1";
    ri.node_len = 3;
    ri.pool = SPI_POOL_SPOT;
    ri.usd_per_hour = 1;
    ri.max_inflight = 4;
    assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
    long base = c.allocs;
    c.fail_at = base + k;
    assert_int_equal(spi_replica_report_metrics(e, "r1", 2, PAGE,
                                                strlen(PAGE)),
                     SPI_OK);
    assert_int_equal(c.allocs, base); /* the page parser allocates nothing */
    int failed = 0;
    for (int i = 0; i < 40; i++) {
      char node[16];
      snprintf(node, sizeof node, "n-%d", i);
      spi_notice n = notice(node, SPI_NOTICE_TERMINATE,
                            4000000000LL * SEC, node);
      size_t np = 0;
      int rc = spi_engine_notice(e, &n, NULL, 0, &np);
      if (rc == SPI_ENOMEM) {
        failed = 1;
        assert_non_null(strstr(spi_engine_errmsg(e), "out of memory"));
        /* The same notice with memory back goes through. */
        rc = spi_engine_notice(e, &n, NULL, 0, &np);
      }
      assert_int_equal(rc, SPI_OK);
    }
    int32_t state = 0;
    assert_int_equal(spi_node_get_state(e, "n-39", 4, &state), SPI_OK);
    assert_true(state == SPI_NODE_NOTICED || state == SPI_NODE_TERMINATED);
    int done_all = c.fail_at >= 0; /* never reached: nothing left to fail */
    spi_engine_free(e);
    assert_int_equal(c.allocs, c.frees);
    if (done_all) break;
    injected += failed;
  }
  print_message("%ld allocation failures on the notice path\n", injected);
  assert_true(injected >= 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_notice_stops_routing_at_once),
      cmocka_unit_test(test_drain_or_replay),
      cmocka_unit_test(test_gold_past_progress_drains),
      cmocka_unit_test(test_advice_and_expiry),
      cmocka_unit_test(test_pool_cooldown),
      cmocka_unit_test(test_state_machine),
      cmocka_unit_test(test_noticed_to_advised_is_not_by_hand),
      cmocka_unit_test(test_advised_by_hand_lasts_advised_ttl),
      cmocka_unit_test(test_deadline_brought_forward_is_reported),
      cmocka_unit_test(test_withdrawal_takes_back_only_its_event),
      cmocka_unit_test(test_withdrawal_leaves_what_else_holds),
      cmocka_unit_test(test_events_past_four_are_bounded),
      cmocka_unit_test(test_restarted_machine_is_noticed_again),
      cmocka_unit_test(test_event_served_past_deadline_acts_once),
      cmocka_unit_test(test_keys_kept_while_the_machine_lives),
      cmocka_unit_test(test_withdrawal_keeps_advice_keys),
      cmocka_unit_test(test_replica_add_keeps_advice_keys),
      cmocka_unit_test(test_replica_add_restarts_terminated_machine),
      cmocka_unit_test(test_replica_add_restarts_machine_past_deadline),
      cmocka_unit_test(test_replica_add_before_deadline_is_no_restart),
      cmocka_unit_test(test_removed_by_hand_is_unknown),
      cmocka_unit_test(test_maintenance_withdrawn_after_termination),
      cmocka_unit_test(test_plans_by_hand_use_default_window),
      cmocka_unit_test(test_dedup_key_is_per_machine),
      cmocka_unit_test(test_advised_by_hand_then_withdrawn),
      cmocka_unit_test(test_drain_outlives_withdrawn_notice),
      cmocka_unit_test(test_event_moved_earlier_replans),
      cmocka_unit_test(test_restart_frees_other_replicas),
      cmocka_unit_test(test_every_transition_is_reported),
      cmocka_unit_test(test_notice_reported_when_table_full),
      cmocka_unit_test(test_node_table_flood),
      cmocka_unit_test(test_node_table_full_of_replicas),
      cmocka_unit_test(test_notice_cost_is_bounded),
      cmocka_unit_test(test_alloc_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
