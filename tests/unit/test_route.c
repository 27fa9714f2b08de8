/*
 * test_route.c - spi_route end to end: pool rules, replica choice, affinity,
 * breakers, tickets, ledger, metrics, shadow mode, cascade, bad input.
 */
#include <pthread.h>
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
#include "spotinfer/spotinfer_module.h"
#include "fake_world.h"

static void add(world *w, const char *id, int32_t pool, int32_t tier,
                uint32_t max_inflight) {
  spi_replica_info ri = ff_replica(
      id, pool, pool == SPI_POOL_SPOT ? 1.8 : 4.5, max_inflight);
  ri.model_tier = tier;
  ff_place(&ri, NULL, "g5.xlarge", "z1");
  int rc = spi_replica_upsert(w->e, &ri);
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
}

static void load(world *w, const char *id, double running, double waiting,
                 double kv) {
  assert_int_equal(ff_report(w->e, id, running, waiting, kv), SPI_OK);
}

static void fleet(world *w) {
  add(w, "spot-a", SPI_POOL_SPOT, 0, 16);
  add(w, "spot-b", SPI_POOL_SPOT, 0, 16);
  add(w, "od-a", SPI_POOL_ON_DEMAND, 0, 16);
  add(w, "od-b", SPI_POOL_ON_DEMAND, 0, 16);
  const char *ids[] = {"spot-a", "spot-b", "od-a", "od-b"};
  for (int i = 0; i < 4; i++) load(w, ids[i], 1, 0, 0.2);
}

/* A chat request with a long shared system prompt (several blocks). */
static void chat(world *w, const char *user, int stream, int sla_ms,
                 const char *tier, int replayable) {
  static char sys[4096];
  for (size_t i = 0; i < sizeof sys - 1; i++) sys[i] = "abcdefgh "[i % 9];
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "llama", 5);
  spi_request_add_message(w->r, "system", 6, sys, sizeof sys - 1);
  spi_request_add_message(w->r, "user", 4, user, strlen(user));
  spi_request_set_int(w->r, SPI_REQ_STREAM, stream);
  if (sla_ms) spi_request_set_int(w->r, SPI_REQ_SLA_MS, sla_ms);
  if (tier) spi_request_set_str(w->r, SPI_REQ_SERVICE_TIER, tier, strlen(tier));
  if (replayable >= 0) spi_request_set_int(w->r, SPI_REQ_REPLAYABLE, replayable);
}

static int route(world *w, spi_decision *d) {
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  return spi_route(w->r, d);
}

static void finish(world *w, uint64_t t, int32_t status) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = status;
  res.prompt_tokens = 1000;
  res.output_tokens = 100;
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_OK);
}

/* ------------------------------------------------------------ pool rules */

static void test_pool_rules(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d;
  chat(w, "hi", 1, 800, NULL, -1); /* interactive gold */
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.klass, SPI_CLASS_GOLD);
  assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
  assert_true(strncmp(d.replica_id, "od-", 3) == 0);
  assert_true(d.ticket != 0);
  assert_true(d.n_fallbacks >= 1);
  assert_true(d.est_usd > 0);
  finish(w, d.ticket, SPI_TICKET_OK);

  chat(w, "hi", 0, 5000, NULL, 1); /* retry tolerant silver */
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.klass, SPI_CLASS_SILVER);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  /* silver falls back to on-demand: the fallbacks end there */
  assert_true(d.n_fallbacks >= 2);
  finish(w, d.ticket, SPI_TICKET_OK);

  chat(w, "summarise", 0, 0, "flex", -1); /* bronze */
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.klass, SPI_CLASS_BRONZE);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  finish(w, d.ticket, SPI_TICKET_OK);

  /* No spot capacity up: bronze is queued, silver goes on-demand. */
  spi_replica_set_state(w->e, "spot-a", 6, SPI_REPLICA_DRAINING);
  spi_replica_set_state(w->e, "spot-b", 6, SPI_REPLICA_NOTICED);
  chat(w, "summarise", 0, 0, "flex", -1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_QUEUE);
  assert_int_equal(d.reason_code, SPI_REASON_QUEUE_NO_SPOT);
  assert_int_equal(d.ticket, 0);
  chat(w, "hi", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
  finish(w, d.ticket, SPI_TICKET_OK);
  done(w);
}

static void test_no_capacity(void **st) {
  (void)st;
  world *w = mk(NULL);
  spi_decision d;
  chat(w, "hi", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d), SPI_ENOCAPACITY);
  assert_int_equal(d.reason_code, SPI_REASON_NO_CAPACITY);
  assert_int_equal(d.klass, SPI_CLASS_GOLD);
  assert_non_null(strstr(spi_request_errmsg(w->r), "no eligible"));
  /* A replica serving another model only. */
  spi_replica_info ri = ff_replica("od-x", SPI_POOL_ON_DEMAND, 4, 4);
  ri.models = "mistral,qwen";
  ri.models_len = 12;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  load(w, "od-x", 0, 0, 0);
  assert_int_equal(route(w, &d), SPI_ENOCAPACITY);
  ri.models = "mistral,llama";
  ri.models_len = 13;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-x");
  finish(w, d.ticket, SPI_TICKET_OK);
  done(w);
}

/* --------------------------------------------------------- affinity */

static void test_affinity(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d1, d2;
  chat(w, "first question", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d1), SPI_OK);
  assert_int_equal(d1.matched_blocks, 0);
  assert_int_equal(d1.reason_code, SPI_REASON_RENDEZVOUS);
  assert_true(d1.total_blocks >= 3);
  finish(w, d1.ticket, SPI_TICKET_OK);
  chat(w, "second question", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_equal(d2.replica_id, d1.replica_id);
  assert_int_equal(d2.reason_code, SPI_REASON_AFFINITY);
  assert_true(d2.matched_blocks >= 3);
  finish(w, d2.ticket, SPI_TICKET_OK);

  /* Piled on: its wait costs more than the prefill it saves. */
  load(w, d1.replica_id, 16, 30, 0.5);
  chat(w, "third question", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_not_equal(d2.replica_id, d1.replica_id);
  assert_int_equal(d2.reason_code, SPI_REASON_AFFINITY_LEFT);
  finish(w, d2.ticket, SPI_TICKET_OK);

  /* A noticed replica's entries die at once and it is never chosen. */
  load(w, d1.replica_id, 1, 0, 0.2);
  spi_replica_set_state(w->e, d1.replica_id, strlen(d1.replica_id),
                        SPI_REPLICA_NOTICED);
  chat(w, "fourth", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_not_equal(d2.replica_id, d1.replica_id);
  finish(w, d2.ticket, SPI_TICKET_OK);
  spi_replica_set_state(w->e, d1.replica_id, strlen(d1.replica_id),
                        SPI_REPLICA_ACTIVE);
  done(w);
}

static void test_gold_leaves_warm(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d1, d2;
  chat(w, "q", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d1), SPI_OK);
  finish(w, d1.ticket, SPI_TICKET_OK);
  chat(w, "q2", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_equal(d2.replica_id, d1.replica_id);
  finish(w, d2.ticket, SPI_TICKET_OK);
  /* Warm but slow: 10 waiting is 500 ms over the margin of 200. */
  load(w, d1.replica_id, 4, 10, 0.5);
  chat(w, "q3", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_not_equal(d2.replica_id, d1.replica_id);
  assert_int_equal(d2.reason_code, SPI_REASON_AFFINITY_LEFT);
  finish(w, d2.ticket, SPI_TICKET_OK);
  done(w);
}

static void test_bronze_waits_for_warm(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d1, d2;
  chat(w, "batch", 0, 0, "flex", -1);
  assert_int_equal(route(w, &d1), SPI_OK);
  finish(w, d1.ticket, SPI_TICKET_OK);
  /* At capacity: it waits in the library's queue, not ahead of the other
   * classes in the replica's. */
  load(w, d1.replica_id, 16, 0, 0.5);
  chat(w, "batch 2", 0, 0, "flex", -1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_int_equal(d2.pool, SPI_POOL_QUEUE);
  assert_int_equal(d2.reason_code, SPI_REASON_WAIT_WARM);
  /* A queue but room: bronze weighs the wait at a quarter, so it waits
   * there for the prefill it saves. */
  load(w, d1.replica_id, 8, 4, 0.5);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_int_equal(d2.pool, SPI_POOL_SPOT);
  assert_string_equal(d2.replica_id, d1.replica_id);
  assert_int_equal(d2.reason_code, SPI_REASON_AFFINITY);
  finish(w, d2.ticket, SPI_TICKET_OK);
  done(w);
}

/* Two engines that share nothing place a cold prefix on the same replica,
 * whatever order they learnt the replicas in. */
static void test_rendezvous_agrees(void **st) {
  (void)st;
  world *a = mk(NULL), *b = mk(NULL);
  const char *ids[] = {"r1", "r2", "r3", "r4", "r5", "r6"};
  for (int i = 0; i < 6; i++) {
    add(a, ids[i], SPI_POOL_SPOT, 0, 16);
    add(b, ids[5 - i], SPI_POOL_SPOT, 0, 16);
  }
  for (int i = 0; i < 6; i++) {
    load(a, ids[i], 1, 0, 0.1);
    load(b, ids[i], 1, 0, 0.1);
  }
  int spread[6] = {0};
  for (int k = 0; k < 24; k++) {
    char q[32];
    snprintf(q, sizeof q, "prefix %d", k);
    spi_decision da, db;
    spi_request_reset(a->r);
    spi_request_reset(b->r);
    for (int j = 0; j < 2; j++) {
      spi_request *r = j ? b->r : a->r;
      spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
      spi_request_set_str(r, SPI_REQ_SYSTEM_PROMPT, q, strlen(q));
      spi_request_set_str(r, SPI_REQ_PROMPT, q, strlen(q));
      spi_request_set_str(r, SPI_REQ_CLASS, "silver", 6);
    }
    assert_int_equal(route(a, &da), SPI_OK);
    assert_int_equal(route(b, &db), SPI_OK);
    assert_string_equal(da.replica_id, db.replica_id);
    spread[da.replica_id[1] - '1']++;
    finish(a, da.ticket, SPI_TICKET_OK);
    finish(b, db.ticket, SPI_TICKET_OK);
  }
  int used = 0;
  for (int i = 0; i < 6; i++) used += spread[i] > 0;
  assert_true(used >= 3); /* cold prefixes spread out */
  done(a);
  done(b);
}

/* A pool larger than a summary names whole still gives a decision every
 * fallback it may carry: the summary names a primary and as many. */
static void test_fallbacks_fill(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"max_fallbacks\":4}}");
  char ids[12][8];
  for (int i = 0; i < 12; i++) {
    snprintf(ids[i], sizeof ids[i], "s%02d", i);
    add(w, ids[i], SPI_POOL_SPOT, 0, 16);
    load(w, ids[i], 1 + i % 5, 0, 0.1);
  }
  for (int k = 0; k < 2; k++) {
    spi_decision d;
    chat(w, "hello", 0, 5000, NULL, 1);
    assert_int_equal(route(w, &d), SPI_OK);
    assert_int_equal(d.n_fallbacks, 4);
    for (uint32_t i = 0; i < d.n_fallbacks; i++) {
      assert_string_not_equal(d.fallback_ids[i], d.replica_id);
      for (uint32_t j = 0; j < i; j++)
        assert_string_not_equal(d.fallback_ids[i], d.fallback_ids[j]);
    }
    finish(w, d.ticket, SPI_TICKET_OK);
    /* The warm replica busier than the best five: it may still be the
     * primary, and the five fill the fallbacks. */
    load(w, d.replica_id, 6, 0, 0.1);
  }
  done(w);
}

/* ------------------------------------------------------------ breakers */

static void test_kv_breaker(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d;
  load(w, "spot-a", 1, 0, 0.9);
  load(w, "spot-b", 1, 0, 0.9);
  chat(w, "batch", 0, 0, "flex", -1);
  assert_int_equal(route(w, &d), SPI_ESHED);
  assert_int_equal(d.reason_code, SPI_REASON_SHED);
  assert_int_equal(d.klass, SPI_CLASS_BRONZE);
  chat(w, "hi", 0, 5000, NULL, 1); /* silver still served on spot */
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  assert_int_equal(d.pressure, SPI_PRESSURE_HIGH);
  assert_int_equal(d.max_output_tokens, 512); /* silver plan at HIGH */
  finish(w, d.ticket, SPI_TICKET_OK);
  /* Hysteresis: 0.8 is below open but above close: still shedding. */
  load(w, "spot-a", 1, 0, 0.8);
  load(w, "spot-b", 1, 0, 0.8);
  chat(w, "batch", 0, 0, "flex", -1);
  assert_int_equal(route(w, &d), SPI_ESHED);
  load(w, "spot-a", 1, 0, 0.7);
  load(w, "spot-b", 1, 0, 0.7);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  finish(w, d.ticket, SPI_TICKET_OK);
  /* Silver shed on spot is shed, not moved to on-demand: the pool is
   * loaded, not gone (test_policy.c pins the rule). */
  load(w, "spot-a", 1, 0, 0.97);
  load(w, "spot-b", 1, 0, 0.97);
  chat(w, "hi", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d), SPI_ESHED);
  assert_int_equal(d.reason_code, SPI_REASON_SHED);
  /* The thresholds are exact: a pool at exactly kv_open sheds bronze, and
   * one at exactly kv_close is not below it, so it keeps shedding. */
  load(w, "spot-a", 1, 0, 0.6);
  load(w, "spot-b", 1, 0, 0.6);
  chat(w, "batch", 0, 0, "flex", -1);
  assert_int_equal(route(w, &d), SPI_OK);
  finish(w, d.ticket, SPI_TICKET_OK);
  load(w, "spot-a", 1, 0, 0.85);
  load(w, "spot-b", 1, 0, 0.85);
  assert_int_equal(route(w, &d), SPI_ESHED);
  load(w, "spot-a", 1, 0, 0.75);
  load(w, "spot-b", 1, 0, 0.75);
  assert_int_equal(route(w, &d), SPI_ESHED);
  load(w, "spot-a", 1, 0, 0.7);
  assert_int_equal(route(w, &d), SPI_OK);
  finish(w, d.ticket, SPI_TICKET_OK);
  /* Gold is never shed by pressure. */
  load(w, "od-a", 1, 0, 0.99);
  load(w, "od-b", 1, 0, 0.99);
  chat(w, "hi", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d), SPI_OK);
  finish(w, d.ticket, SPI_TICKET_OK);
  done(w);
}

static void test_error_breaker(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"error_threshold\":3,\"error_cooldown_ms\":5000}}");
  add(w, "od-a", SPI_POOL_ON_DEMAND, 0, 16);
  add(w, "od-b", SPI_POOL_ON_DEMAND, 0, 16);
  load(w, "od-a", 0, 0, 0.1);
  load(w, "od-b", 14, 6, 0.1); /* piled on: never the first choice */
  spi_decision d;
  for (int i = 0; i < 3; i++) {
    chat(w, "hi", 1, 800, NULL, -1);
    spi_request_set_str(w->r, SPI_REQ_SYSTEM_PROMPT, "x", 1);
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_equal(d.replica_id, "od-a");
    finish(w, d.ticket, SPI_TICKET_ERROR);
  }
  spi_replica_status rs;
  memset(&rs, 0, sizeof rs);
  rs.struct_size = sizeof rs;
  assert_int_equal(spi_replica_status_of(w->e, "od-a", 4, &rs), SPI_OK);
  assert_int_equal(rs.breaker, SPI_BREAKER_OPEN);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  finish(w, d.ticket, SPI_TICKET_OK);
  w->now += 6 * SEC;
  load(w, "od-a", 0, 0, 0.1);
  load(w, "od-b", 14, 6, 0.1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  assert_int_equal(d.reason_code, SPI_REASON_HALF_OPEN_PROBE);
  spi_decision d2; /* the probe is out: the next goes elsewhere */
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_equal(d2.replica_id, "od-b");
  finish(w, d2.ticket, SPI_TICKET_OK);
  finish(w, d.ticket, SPI_TICKET_OK);
  assert_int_equal(spi_replica_status_of(w->e, "od-a", 4, &rs), SPI_OK);
  assert_int_equal(rs.breaker, SPI_BREAKER_CLOSED);
  done(w);
}

/* -------------------------------------------------------------- tickets */

static void test_tickets(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d;
  chat(w, "hi", 1, 800, NULL, -1);
  spi_request_set_str(w->r, SPI_REQ_TENANT, "acme", 4);
  assert_int_equal(route(w, &d), SPI_OK);
  spi_signals sg;
  memset(&sg, 0, sizeof sg);
  sg.struct_size = sizeof sg;
  assert_int_equal(spi_engine_signals(w->e, &sg), SPI_OK);
  assert_true(sg.queue_depth[SPI_CLASS_GOLD] == 1);
  w->now += 300000000; /* 300 ms */
  assert_int_equal(spi_ticket_first_token(w->e, d.ticket), SPI_OK);
  assert_int_equal(spi_ticket_progress(w->e, d.ticket, 10), SPI_OK);
  assert_int_equal(spi_ticket_progress(w->e, d.ticket, 5), SPI_ERANGE);
  assert_int_equal(spi_engine_signals(w->e, &sg), SPI_OK);
  assert_true(sg.queue_depth[SPI_CLASS_GOLD] == 0);
  assert_true(sg.p95_ttft_ms[SPI_CLASS_GOLD] > 200 &&
              sg.p95_ttft_ms[SPI_CLASS_GOLD] <= 500);
  spi_replica_status rs;
  memset(&rs, 0, sizeof rs);
  rs.struct_size = sizeof rs;
  assert_int_equal(spi_replica_status_of(w->e, d.replica_id,
                                         strlen(d.replica_id), &rs),
                   SPI_OK);
  assert_int_equal(rs.inflight, 1);
  finish(w, d.ticket, SPI_TICKET_OK);
  assert_int_equal(spi_replica_status_of(w->e, d.replica_id,
                                         strlen(d.replica_id), &rs),
                   SPI_OK);
  assert_int_equal(rs.inflight, 0);
  /* Finished twice, garbage, unknown. */
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_ESTALE);
  assert_int_equal(spi_ticket_finish(w->e, 0, &res), SPI_ESTALE);
  assert_int_equal(spi_ticket_finish(w->e, 0xdeadbeefcafeULL, &res), SPI_ESTALE);
  assert_int_equal(spi_ticket_first_token(w->e, d.ticket), SPI_ESTALE);
  res.status = 9;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_EINVAL);
  /* The ledger priced it. */
  assert_true(spi_ledger_count(w->e) >= 1);
  int found = 0;
  for (size_t i = 0; i < spi_ledger_count(w->e); i++) {
    spi_ledger_row row;
    memset(&row, 0, sizeof row);
    row.struct_size = sizeof row;
    assert_int_equal(spi_ledger_row_at(w->e, i, &row), SPI_OK);
    if (strcmp(row.tenant, "acme") == 0) {
      found = 1;
      assert_string_equal(row.model, "llama");
      assert_int_equal(row.pool, SPI_POOL_ON_DEMAND);
      assert_int_equal(row.completed, 1);
      assert_true(row.usd > 0);
      assert_true(row.usd_per_completed > 0);
    }
  }
  assert_true(found);
  /* A removed replica's ticket: closed, priced, SPI_ESTALE. */
  chat(w, "hi", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(spi_replica_remove(w->e, d.replica_id, strlen(d.replica_id)),
                   SPI_OK);
  res.status = SPI_TICKET_OK;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_ESTALE);
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_ESTALE);
  assert_int_equal(spi_replica_remove(w->e, "nope", 4), SPI_ENOTFOUND);
  done(w);
}

/* A removed replica's ticket: first token and progress answer SPI_ESTALE
 * and change nothing (the queue-depth gauge still counts the ticket until
 * finish closes and prices it). */
static void test_removed_replica_ticket_reports(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d;
  chat(w, "hi", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(spi_ticket_progress(w->e, d.ticket, 3), SPI_OK);
  assert_int_equal(spi_replica_remove(w->e, d.replica_id, strlen(d.replica_id)),
                   SPI_OK);
  w->now += 200000000; /* 200 ms */
  assert_int_equal(spi_ticket_first_token(w->e, d.ticket), SPI_ESTALE);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "removed"));
  assert_int_equal(spi_ticket_progress(w->e, d.ticket, 10), SPI_ESTALE);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "removed"));
  spi_signals sg;
  memset(&sg, 0, sizeof sg);
  sg.struct_size = sizeof sg;
  assert_int_equal(spi_engine_signals(w->e, &sg), SPI_OK);
  assert_true(sg.queue_depth[SPI_CLASS_GOLD] == 1);
  assert_true(sg.p95_ttft_ms[SPI_CLASS_GOLD] == 0);
  /* The same replica id added again is another replica: still stale. */
  add(w, d.replica_id, SPI_POOL_ON_DEMAND, 0, 16);
  assert_int_equal(spi_ticket_first_token(w->e, d.ticket), SPI_ESTALE);
  assert_int_equal(spi_ticket_progress(w->e, d.ticket, 10), SPI_ESTALE);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_ESTALE);
  assert_int_equal(spi_engine_signals(w->e, &sg), SPI_OK);
  assert_true(sg.queue_depth[SPI_CLASS_GOLD] == 0);
  assert_int_equal(spi_ticket_first_token(w->e, d.ticket), SPI_ESTALE);
  assert_int_equal(spi_ticket_progress(w->e, d.ticket, 11), SPI_ESTALE);
  done(w);
}

static void test_ticket_exhaustion(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"max_tickets\":16}}");
  fleet(w);
  spi_decision d;
  uint64_t t[16];
  for (int i = 0; i < 16; i++) {
    chat(w, "hi", 0, 5000, NULL, 1);
    assert_int_equal(route(w, &d), SPI_OK);
    t[i] = d.ticket;
  }
  assert_int_equal(route(w, &d), SPI_EFULL);
  for (int i = 0; i < 16; i++) finish(w, t[i], SPI_TICKET_OK);
  assert_int_equal(route(w, &d), SPI_OK);
  finish(w, d.ticket, SPI_TICKET_OK);
  /* Fixed once routed. */
  const char *cfg = "{\"router\":{\"max_tickets\":32}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_EINVAL);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "router.max_tickets"));
  done(w);
}

/* One route (and its finish) on another thread, racing a configure. */
static void *route_once_thread(void *arg) {
  world *w = arg;
  spi_decision d;
  chat(w, "hi", 0, 5000, NULL, 1);
  if (route(w, &d) == SPI_OK) finish(w, d.ticket, SPI_TICKET_OK);
  return NULL;
}

/* A configuration that resizes the ticket table while the first route
 * runs: either it applies (the table has the new size) or it fails as a
 * configuration after routing does; it never answers SPI_OK and keeps the
 * old size. */
static void test_resize_racing_first_route(void **st) {
  (void)st;
  const char *cfg = "{\"router\":{\"max_tickets\":16}}";
  int applied = 0, refused = 0;
  for (int round = 0; round < 100; round++) {
    world *w = mk(NULL);
    fleet(w);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, route_once_thread, w), 0);
    int rc = spi_engine_configure(w->e, cfg, strlen(cfg));
    pthread_join(t, NULL);
    if (rc == SPI_OK) {
      applied++;
      uint64_t open[16];
      spi_decision d;
      for (int i = 0; i < 16; i++) {
        chat(w, "hi", 0, 5000, NULL, 1);
        assert_int_equal(route(w, &d), SPI_OK);
        open[i] = d.ticket;
      }
      assert_int_equal(route(w, &d), SPI_EFULL); /* the new size holds */
      for (int i = 0; i < 16; i++) finish(w, open[i], SPI_TICKET_OK);
    } else {
      refused++;
      assert_int_equal(rc, SPI_EINVAL);
      assert_non_null(strstr(spi_engine_errmsg(w->e), "router.max_tickets"));
    }
    done(w);
  }
  assert_int_equal(applied + refused, 100);
}

/* --------------------------------------------------- metrics and shadow */

static void test_metrics_and_shadow(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"shadow_policy\":\"least-loaded\"}}");
  fleet(w);
  spi_decision d;
  for (int i = 0; i < 3; i++) {
    chat(w, "hi", 0, 5000, NULL, 1);
    assert_int_equal(route(w, &d), SPI_OK);
    assert_true(d.shadow_pool == SPI_POOL_SPOT);
    assert_true(d.shadow_replica_id[0] != '\0');
    finish(w, d.ticket, SPI_TICKET_OK);
  }
  size_t need = 0;
  assert_int_equal(spi_engine_metrics(w->e, NULL, 0, &need), SPI_EBUFSIZE);
  char *buf = malloc(need + 1);
  assert_int_equal(spi_engine_metrics(w->e, buf, need + 1, &need), SPI_OK);
  assert_non_null(strstr(buf, "spotinfer_"));
  assert_non_null(strstr(buf, "silver"));
  free(buf);
  done(w);
}

static void test_speculative(void **st) {
  (void)st;
  world *w = mk("{\"policy\":{\"speculative_first\":true}}");
  add(w, "draft", SPI_POOL_SPOT, SPI_TIER_SMALL, 16);
  add(w, "target", SPI_POOL_SPOT, SPI_TIER_LARGE, 16);
  add(w, "target-od", SPI_POOL_ON_DEMAND, SPI_TIER_LARGE, 16);
  load(w, "draft", 0, 0, 0.1);
  load(w, "target", 0, 0, 0.1);
  load(w, "target-od", 0, 0, 0.1);
  spi_decision d;
  chat(w, "hi", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "draft");
  assert_int_equal(d.model_tier, SPI_TIER_SMALL);
  finish(w, d.ticket, SPI_TICKET_DRAFT_REJECTED);
  spi_request_set_int(w->r, SPI_REQ_MODEL_TIER, SPI_TIER_LARGE);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "target");
  finish(w, d.ticket, SPI_TICKET_OK);
  spi_signals sg;
  memset(&sg, 0, sizeof sg);
  sg.struct_size = sizeof sg;
  assert_int_equal(spi_engine_signals(w->e, &sg), SPI_OK);
  assert_true(sg.draft_acceptance == 0.0);
  done(w);
}

/* A user policy that always answers with candidate 0, eligible or not. */
static int bad_choose(void *state, void *inst, const spi_route_context *x,
                      spi_policy_choice *out) {
  (void)state;
  (void)inst;
  out->pool = x->candidates[0].pool;
  out->n_order = 1;
  out->order[0] = 0;
  return SPI_OK;
}
static void test_user_policy_checked(void **st) {
  (void)st;
  world *w = mk(NULL);
  spi_policy_module m = ff_policy_module(bad_choose, 0);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY, "first",
                                              5, &m, NULL, NULL),
                   SPI_OK);
  m.on_failure = SPI_ON_FAILURE_FALLBACK;
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY, "first2",
                                              6, &m, NULL, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"policy\":\"first\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  add(w, "od-a", SPI_POOL_ON_DEMAND, 0, 16);
  add(w, "od-b", SPI_POOL_ON_DEMAND, 0, 16);
  load(w, "od-b", 0, 0, 0.1); /* od-a has no load: fine, still eligible */
  spi_replica_set_state(w->e, "od-a", 4, SPI_REPLICA_DRAINING);
  spi_decision d;
  chat(w, "hi", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d), SPI_EMODULE);
  cfg = "{\"modules\":{\"policy\":\"first2\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  finish(w, d.ticket, SPI_TICKET_OK);
  done(w);
}

/* A module reads the request view as bytes (a memo keyed by it, say): the
 * view's padding, between its int32 flags and the int64 after them, is
 * zero whatever the caller's stack held before the route. */
static int view_dirty;
static int view_bytes_choose(void *state, void *inst, const spi_route_context *x,
                             spi_policy_choice *out) {
  (void)state;
  (void)inst;
  const unsigned char *v = (const unsigned char *)x->req;
  size_t from = offsetof(spi_request_view, replayable_set);
  size_t to = offsetof(spi_request_view, prompt_tokens);
  for (size_t i = from; i < to; i++) view_dirty |= v[i] != 0 && v[i] != 1;
  out->pool = x->candidates[0].pool;
  out->n_order = 1;
  out->order[0] = 0;
  return SPI_OK;
}
static void __attribute__((noinline)) soil_stack(void) {
  volatile unsigned char junk[1 << 16]; /* volatile: every store made */
  for (size_t i = 0; i < sizeof junk; i++) junk[i] = 0xAA;
}
static void test_view_padding_is_zero(void **st) {
  (void)st;
  world *w = mk(NULL);
  spi_policy_module m = ff_policy_module(view_bytes_choose, 0);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY, "bytes",
                                              5, &m, NULL, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"policy\":\"bytes\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  add(w, "od-a", SPI_POOL_ON_DEMAND, 0, 16);
  load(w, "od-a", 0, 0, 0.1);
  spi_decision d;
  chat(w, "hi", 1, 800, NULL, -1);
  view_dirty = 0;
  soil_stack();
  assert_int_equal(route(w, &d), SPI_OK);
  assert_false(view_dirty);
  finish(w, d.ticket, SPI_TICKET_OK);
  done(w);
}

/* New conversations behind a system prompt the replicas hold reach every
 * idle replica. The built-in policy reads the summaries' candidates only,
 * and among idle replicas (equal load) the least loaded is the one sent
 * the fewest tokens: by position alone the same idle ones were named
 * route after route, and a replica never named was never sent new work,
 * however far below its share it was. */
static void test_new_work_reaches_every_idle_replica(void **st) {
  (void)st;
  world *w = mk(NULL);
  enum { N = 16 };
  for (int i = 0; i < N; i++) {
    char id[16];
    snprintf(id, sizeof id, "od-%02d", i);
    add(w, id, SPI_POOL_ON_DEMAND, 0, 16);
    load(w, id, 0, 0, 0.1);
  }
  int got[N] = {0};
  for (int i = 0; i < 10 * N; i++) {
    char user[64];
    snprintf(user, sizeof user, "conversation %d asks a question of its own", i);
    chat(w, user, 1, 800, NULL, -1);
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    int k = atoi(d.replica_id + 3);
    assert_true(k >= 0 && k < N);
    got[k]++;
    finish(w, d.ticket, SPI_TICKET_OK);
  }
  for (int k = 0; k < N; k++) {
    if (!got[k]) print_error("od-%02d was sent nothing\n", k);
    assert_true(got[k] > 0);
  }
  done(w);
}

/* ------------------------------------------------------------- summaries */

static int check_failures;
static size_t seen_candidates;

static int usable_c(const spi_candidate *c) { return c->eligible || c->probe; }
static double rel_c(const spi_candidate *c) {
  return (c->running + c->waiting + c->inflight) / (double)c->max_inflight;
}
/* Whether c ranks before b as the least loaded: the lower relative load,
 * then the fewer tokens served per stream (candidates come in index
 * order, so the lower index wins the rest). */
static int least_c(const spi_candidate *c, const spi_candidate *b) {
  double sc = (double)c->served_tokens / (double)c->max_inflight,
         sb = (double)b->served_tokens / (double)b->max_inflight;
  return rel_c(c) < rel_c(b) || (rel_c(c) == rel_c(b) && sc < sb);
}
static int busy_c(const spi_candidate *c) {
  return c->inflight >= c->max_inflight ||
         c->running + c->waiting >= (double)c->max_inflight;
}

/* How many of a cell's best TTFTs the library names: every usable one
 * when they fit in the summary, else a primary and its fallbacks. */
static uint32_t named_top(uint32_t usable) {
  return usable <= SPI_SUMMARY_TOP ? usable : 1 + SPI_MAX_FALLBACKS;
}

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      print_error("summary check failed: %s (line %d)\n", #cond, __LINE__); \
      check_failures++;                                                    \
    }                                                                      \
  } while (0)

/* Every summary against a brute-force pass over the candidates. With all
 * candidates (full) the counts and winners must match exactly; with the
 * compact array each named candidate must still rank as stated. */
static void check_summaries(const spi_route_context *x, int full) {
  CHECK(x->struct_size >= offsetof(spi_route_context, n_summaries) + sizeof(size_t));
  CHECK(x->n_summaries == SPI_SUMMARY_CELLS);
  CHECK(x->summary_size == sizeof(spi_pool_summary));
  for (int pool = SPI_POOL_SPOT; pool <= SPI_POOL_ON_DEMAND; pool++)
    for (int tier = SPI_TIER_SMALL; tier <= SPI_TIER_LARGE; tier++) {
      const spi_pool_summary *s = &x->summaries[SPI_SUMMARY_INDEX(pool, tier)];
      CHECK(s->pool == pool && s->model_tier == tier);
      uint32_t usable = 0;
      int32_t best = -1, least = -1, rdv = -1, warm = -1;
      for (size_t i = 0; i < x->n_candidates; i++) {
        const spi_candidate *c = &x->candidates[i];
        if (!usable_c(c) || c->pool != pool || c->model_tier != tier) continue;
        usable++;
        int32_t k = (int32_t)i;
        if (best < 0 || c->est_ttft_ms < x->candidates[best].est_ttft_ms) best = k;
        if (least < 0 || least_c(c, &x->candidates[least])) least = k;
        if (!busy_c(c) &&
            (rdv < 0 || c->rendezvous > x->candidates[rdv].rendezvous))
          rdv = k;
        if (c->matched_blocks &&
            (warm < 0 || c->matched_blocks > x->candidates[warm].matched_blocks ||
             (c->matched_blocks == x->candidates[warm].matched_blocks &&
              c->est_ttft_ms < x->candidates[warm].est_ttft_ms)))
          warm = k;
      }
      if (full) {
        CHECK(s->usable == usable);
        CHECK(s->n_top == named_top(usable));
        CHECK(s->least == least);
        CHECK(s->rendezvous == rdv);
        CHECK(s->warm == warm);
      } else {
        CHECK(s->usable >= usable || s->usable == 0);
      }
      /* Every candidate a summary names is usable and of its cell: the
       * built-in policy serves a named one on its fresh load alone. */
      const int32_t named[3] = {s->least, s->rendezvous, s->warm};
      for (int j = 0; j < 3; j++) {
        if (named[j] < 0) continue;
        CHECK((size_t)named[j] < x->n_candidates);
        const spi_candidate *c = &x->candidates[named[j]];
        CHECK(usable_c(c) && c->pool == pool && c->model_tier == tier);
      }
      CHECK(s->n_top == 0 || s->top[0] == best);
      for (uint32_t j = 0; j < SPI_SUMMARY_TOP; j++) {
        if (j >= s->n_top) {
          CHECK(s->top[j] == -1);
          continue;
        }
        CHECK(s->top[j] >= 0 && (size_t)s->top[j] < x->n_candidates);
        const spi_candidate *c = &x->candidates[s->top[j]];
        CHECK(usable_c(c) && c->pool == pool && c->model_tier == tier);
        if (j > 0) {
          const spi_candidate *p = &x->candidates[s->top[j - 1]];
          CHECK(p->est_ttft_ms < c->est_ttft_ms ||
                (p->est_ttft_ms == c->est_ttft_ms && s->top[j - 1] < s->top[j]));
        }
      }
    }
}

/* Checks the summaries, then serves from the first pool with a usable
 * replica of the large tier, best TTFT first. */
static int summary_choose(void *state, void *inst, const spi_route_context *x,
                          spi_policy_choice *out) {
  int full = *(const int *)state;
  (void)inst;
  check_summaries(x, full);
  seen_candidates = x->n_candidates;
  for (int pool = SPI_POOL_SPOT; pool <= SPI_POOL_ON_DEMAND; pool++) {
    const spi_pool_summary *s =
        &x->summaries[SPI_SUMMARY_INDEX(pool, SPI_TIER_LARGE)];
    if (!s->n_top) continue;
    out->pool = pool;
    out->reason_code = SPI_REASON_LEAST_LOADED;
    out->order[out->n_order++] = (uint32_t)s->top[0];
    for (uint32_t j = 1; j < s->n_top && out->n_order < 1 + x->max_fallbacks; j++)
      if (x->candidates[s->top[j]].eligible)
        out->order[out->n_order++] = (uint32_t)s->top[j];
    return SPI_OK;
  }
  out->pool = 0;
  out->reason_code = SPI_REASON_NO_CAPACITY;
  return SPI_OK;
}

static void register_summary_policy(world *w, const char *name, int *full) {
  spi_policy_module m =
      ff_policy_module(summary_choose, *full ? 0 : SPI_POLICY_SUMMARIES_ONLY);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY, name,
                                              strlen(name), &m, full, NULL),
                   SPI_OK);
}

/* ------------------------------------------------- waiting for a slot */

/* What a policy saw of replicas "a" and "b": their est_wait_ms. It sends
 * the request to the one named by slot_pick. */
static double slot_seen[2];
static const char *slot_pick;

static int slot_choose(void *state, void *inst, const spi_route_context *x,
                       spi_policy_choice *out) {
  (void)state;
  (void)inst;
  for (size_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = &x->candidates[i];
    if (c->id_len != 1 || (c->id[0] != 'a' && c->id[0] != 'b')) continue;
    slot_seen[c->id[0] - 'a'] = c->est_wait_ms;
    if (c->id[0] == slot_pick[0]) {
      out->pool = c->pool;
      out->reason_code = SPI_REASON_LEAST_LOADED;
      out->order[out->n_order++] = (uint32_t)i;
    }
  }
  return SPI_OK;
}

static void register_slot_policy(world *w, const char *name) {
  spi_policy_module m = ff_policy_module(slot_choose, 0);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY, name,
                                              strlen(name), &m, NULL, NULL),
                   SPI_OK);
}

/* Routes the chat request to the replica named pick, and finishes its
 * ticket with output tokens. */
static void slot_route(world *w, const char *pick, uint64_t output) {
  spi_decision d;
  slot_pick = pick;
  chat(w, "slot", 1, 0, NULL, -1);
  slot_seen[0] = slot_seen[1] = -1;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, pick);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  res.output_tokens = output;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_OK);
}

/* A replica whose batch is full makes a new request wait for streams to
 * end once the library has seen how long its streams are: (running +
 * waiting + 1 - max_inflight) / max_inflight of one stream's time, its
 * mean output at its decode rate. One with room waits for queued prefill
 * only. (test_pool_index.c checks that the pass through the pool index
 * sees the same waits.) */
static void test_full_batch_waits_for_a_slot(void **st) {
  (void)st;
  world *w = mk(NULL);
  register_slot_policy(w, "slot");
  const char *cfg = "{\"modules\":{\"policy\":\"slot\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  spi_replica_info a = ff_replica("a", SPI_POOL_ON_DEMAND, 4.5, 4);
  a.decode_tokens_per_s = 60;
  assert_int_equal(spi_replica_upsert(w->e, &a), SPI_OK);
  add(w, "b", SPI_POOL_ON_DEMAND, 0, 4);
  load(w, "a", 4, 2, 0.5); /* full: 3 streams must end first */
  load(w, "b", 1, 0, 0.1);
  /* No stream has ended on a yet: only its reported queue, 2 x 50 ms. */
  slot_route(w, "a", 300);
  assert_true(slot_seen[0] == 100.0);
  assert_true(slot_seen[1] == 0.0);
  /* A 300-token stream takes 5 s at 60 a second; 3 of 4 to end first. */
  slot_route(w, "b", 100);
  assert_true(slot_seen[0] == 3750.0);
  assert_true(slot_seen[1] == 0.0);
  /* b full, no queue: 1 of 4 to end, 100 tokens at the router's default
   * rate (router.decode_tokens_per_s, 30 a second). */
  load(w, "b", 4, 0, 0.1);
  slot_route(w, "a", 300);
  assert_true(slot_seen[0] == 3750.0);
  assert_true(slot_seen[1] == 1.0 / 4.0 * 100.0 / 30.0 * 1000.0);
  /* The mean moves a sixteenth of the way to each new output. */
  slot_route(w, "b", 500);
  assert_true(slot_seen[0] == 3.0 / 4.0 * 300.0 / 60.0 * 1000.0);
  slot_route(w, "a", 0);
  assert_true(slot_seen[1] == 1.0 / 4.0 * (100.0 + (500.0 - 100.0) / 16.0) /
                                  30.0 * 1000.0);
  done(w);
}

/* A mixed fleet: both pools, both tiers, ties in load, a draining replica,
 * an open breaker, a busy one. */
static void big_fleet(world *w, int n) {
  for (int i = 0; i < n; i++) {
    char id[32];
    snprintf(id, sizeof id, "r%02d", i);
    add(w, id, i % 3 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND,
        i % 5 ? SPI_TIER_LARGE : SPI_TIER_SMALL, i == 7 ? 2 : 16);
    load(w, id, i % 4, i % 3, 0.1 + 0.01 * (i % 6));
  }
  spi_replica_set_state(w->e, "r03", 3, SPI_REPLICA_DRAINING);
}

static void route_checked(world *w, int n_routes, int keep_open) {
  for (int i = 0; i < n_routes; i++) {
    char user[32];
    snprintf(user, sizeof user, "question %d", i % 5);
    chat(w, user, 1, 0, "flex", 1);
    spi_decision d;
    int rc = route(w, &d);
    if (rc) print_error("%s\n", spi_request_errmsg(w->r));
    assert_int_equal(rc, SPI_OK);
    if (!keep_open || i % 2) finish(w, d.ticket, SPI_TICKET_OK);
  }
}

static void test_summaries_full(void **st) {
  (void)st;
  world *w = mk(NULL);
  static int full = 1;
  register_summary_policy(w, "sumfull", &full);
  const char *cfg = "{\"modules\":{\"policy\":\"sumfull\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  big_fleet(w, 24);
  check_failures = 0;
  route_checked(w, 40, 1);
  assert_int_equal(check_failures, 0);
  assert_int_equal(seen_candidates, 24);
  done(w);
}

static void test_summaries_compact(void **st) {
  (void)st;
  world *w = mk(NULL);
  static int full = 0;
  register_summary_policy(w, "sumonly", &full);
  const char *cfg = "{\"modules\":{\"policy\":\"sumonly\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  big_fleet(w, 40);
  check_failures = 0;
  route_checked(w, 40, 1);
  assert_int_equal(check_failures, 0);
  assert_true(seen_candidates > 0 && seen_candidates < 40);
  /* Unknown flag bits are refused. */
  spi_policy_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.flags = 0x40;
  m.configure = ff_configure_state;
  m.choose = summary_choose;
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY, "odd", 3,
                                              &m, &full, NULL),
                   SPI_EINVAL);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "flags"));
  done(w);
}

/* The built-in policy decides the same from the compact candidates as from
 * all of them: engine b has a shadow policy that needs every candidate, so
 * its built-in policy runs on the full array. */
/* An engine whose shadow policy needs every candidate, so its built-in
 * policy runs on the full array. */
static world *full_array_world(void) {
  world *b = mk(NULL);
  static int full = 1;
  register_summary_policy(b, "needsall", &full);
  const char *cfg = "{\"router\":{\"shadow_policy\":\"needsall\"}}";
  assert_int_equal(spi_engine_configure(b->e, cfg, strlen(cfg)), SPI_OK);
  return b;
}

/* Two routes of the same request on engines in the same state decided the
 * same. */
static void assert_same_decision(int ra, int rb, const spi_decision *da,
                                 const spi_decision *db) {
  assert_int_equal(ra, rb);
  assert_int_equal(da->pool, db->pool);
  assert_string_equal(da->replica_id, db->replica_id);
  assert_int_equal(da->reason_code, db->reason_code);
  assert_int_equal(da->n_fallbacks, db->n_fallbacks);
  for (uint32_t f = 0; f < da->n_fallbacks; f++)
    assert_string_equal(da->fallback_ids[f], db->fallback_ids[f]);
  assert_int_equal(da->matched_blocks, db->matched_blocks);
}

/* The same chat request routed on both engines; the decisions must agree.
 * Returns the status; tickets[] get both engines' tickets. */
static int route_twins(world *a, world *b, const char *user, int stream,
                       int sla_ms, const char *tier, int replayable,
                       uint64_t tickets[2]) {
  spi_decision da, db;
  chat(a, user, stream, sla_ms, tier, replayable);
  chat(b, user, stream, sla_ms, tier, replayable);
  int ra = route(a, &da), rb = route(b, &db);
  assert_same_decision(ra, rb, &da, &db);
  tickets[0] = da.ticket;
  tickets[1] = db.ticket;
  return ra;
}

static void finish_twins(world *a, world *b, const uint64_t tickets[2]) {
  finish(a, tickets[0], SPI_TICKET_OK);
  finish(b, tickets[1], SPI_TICKET_OK);
}

static void test_compact_matches_full(void **st) {
  (void)st;
  world *a = mk(NULL), *b = full_array_world();
  big_fleet(a, 40);
  big_fleet(b, 40);
  const char *tiers[] = {"priority", "default", "flex", NULL};
  for (int i = 0; i < 300; i++) {
    char user[32], id[32];
    snprintf(user, sizeof user, "q%d", i % 9);
    uint64_t t[2];
    if (route_twins(a, b, user, i % 2, i % 3 ? 0 : 500, tiers[i % 4],
                    i % 5 ? 1 : 0, t) == SPI_OK &&
        t[0] && i % 3)
      finish_twins(a, b, t);
    /* Loads move between routes, the same on both. */
    snprintf(id, sizeof id, "r%02d", (i * 7) % 40);
    load(a, id, i % 6, i % 4, 0.05 * (i % 10));
    load(b, id, i % 6, i % 4, 0.05 * (i % 10));
  }
  done(a);
  done(b);
}

/* A large fleet whose later replicas are ever less loaded, so nearly every
 * replica enters a summary as the pass meets it: the pass's arena of
 * evaluations fills and is swept many times. Decisions must still match
 * the full-array ones. */
static void test_compact_matches_full_large(void **st) {
  (void)st;
  world *a = mk(NULL), *b = full_array_world();
  enum { N = 300 };
  world *ws[2] = {a, b};
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < N; i++) {
      char id[32];
      snprintf(id, sizeof id, "big%03d", i);
      add(ws[k], id, i % 2 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND,
          i % 7 ? SPI_TIER_LARGE : SPI_TIER_SMALL, 64);
      load(ws[k], id, (N - i) * 0.1, (N - i) % 5, 0.2);
    }
  for (int i = 0; i < 120; i++) {
    char user[32];
    snprintf(user, sizeof user, "large q%d", i % 11);
    uint64_t t[2];
    if (route_twins(a, b, user, 1, i % 4 ? 0 : 500, i % 3 ? "flex" : NULL, 1,
                    t) == SPI_OK)
      finish_twins(a, b, t);
  }
  done(a);
  done(b);
}

/* Replicas leave and come back between routes, so positions shift and the
 * ranking the last route leaves for the next one names replicas that moved,
 * changed cell or are gone. Decisions must still match the full-array
 * ones, route after route. */
static void test_compact_matches_full_churn(void **st) {
  (void)st;
  world *a = mk(NULL), *b = full_array_world();
  world *ws[2] = {a, b};
  big_fleet(a, 40);
  big_fleet(b, 40);
  for (int i = 0; i < 200; i++) {
    char user[32], id[32];
    snprintf(user, sizeof user, "churn q%d", i % 7);
    snprintf(id, sizeof id, "r%02d", (i * 11) % 40);
    for (int k = 0; k < 2; k++) {
      if (i % 5 == 1) {
        /* Gone (it may already be), or back in the other pool and tier,
         * at the end of the set. */
        int rc = spi_replica_remove(ws[k]->e, id, strlen(id));
        assert_true(rc == SPI_OK || rc == SPI_ENOTFOUND);
      } else if (i % 5 == 3) {
        add(ws[k], id, i % 2 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND,
            i % 3 ? SPI_TIER_LARGE : SPI_TIER_SMALL, 8 + (uint32_t)(i % 9));
        load(ws[k], id, i % 3, i % 2, 0.3);
      }
    }
    uint64_t t[2];
    if (route_twins(a, b, user, 1, i % 4 ? 0 : 500, i % 3 ? "flex" : NULL, 1,
                    t) == SPI_OK &&
        t[0] && i % 2)
      finish_twins(a, b, t);
  }
  done(a);
  done(b);
}

/* ---------------------------------------------------- hot path, bad input */

static void test_warm_route_allocates_nothing(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_decision d;
  for (int round = 0; round < 3; round++) {
    long before = w->allocs;
    chat(w, "hi", 0, 5000, NULL, 1);
    assert_int_equal(route(w, &d), SPI_OK);
    finish(w, d.ticket, SPI_TICKET_OK);
    if (round == 2) assert_int_equal(w->allocs, before);
  }
  done(w);
}

/* The routing tables (tickets, ledger, metrics) are built by configure:
 * the first route allocates only its request's scratch, and a configure
 * that cannot build them fails and changes nothing. */
static void test_tables_built_at_configure(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"max_tickets\":65536}}");
  fleet(w);
  w->biggest = 0;
  spi_decision d;
  chat(w, "hi", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d), SPI_OK);
  finish(w, d.ticket, SPI_TICKET_OK);
  /* 65536 tickets take megabytes; the request's scratch a few KiB. */
  assert_true(w->biggest < 256 * 1024);
  assert_int_equal(spi_ledger_count(w->e), 1);
  done(w);
}

static void test_bad_input(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.kv_usage = 0.0 / 0.0;
  assert_int_equal(spi_replica_report_load(w->e, "od-a", 4, &l), SPI_ERANGE);
  l.kv_usage = 0.5;
  l.running = -1;
  assert_int_equal(spi_replica_report_load(w->e, "od-a", 4, &l), SPI_ERANGE);
  l.running = 1;
  assert_int_equal(spi_replica_report_load(w->e, "ghost", 5, &l), SPI_ENOTFOUND);
  spi_decision d;
  memset(&d, 0, sizeof d);
  assert_int_equal(spi_route(w->r, &d), SPI_EINVAL); /* struct_size 0 */
  assert_int_equal(spi_route(NULL, &d), SPI_EMISUSE);
  const char *page = "vllm:num_requests_running 3\nvllm:num_requests_waiting 1\n"
                     "vllm:gpu_cache_usage_perc 0.5\n";
  assert_int_equal(spi_replica_report_metrics(w->e, "od-a", 4, page, strlen(page)),
                   SPI_OK);
  assert_int_equal(spi_replica_report_metrics(w->e, "od-a", 4, "garbage{", 8),
                   SPI_EPARSE);
  /* Stale load: saturated, so the fresh replica wins. */
  w->now += 5 * SEC;
  load(w, "od-b", 8, 4, 0.6);
  chat(w, "hi", 1, 800, NULL, -1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  finish(w, d.ticket, SPI_TICKET_OK);
  done(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pool_rules),
      cmocka_unit_test(test_no_capacity),
      cmocka_unit_test(test_affinity),
      cmocka_unit_test(test_gold_leaves_warm),
      cmocka_unit_test(test_bronze_waits_for_warm),
      cmocka_unit_test(test_full_batch_waits_for_a_slot),
      cmocka_unit_test(test_rendezvous_agrees),
      cmocka_unit_test(test_fallbacks_fill),
      cmocka_unit_test(test_kv_breaker),
      cmocka_unit_test(test_error_breaker),
      cmocka_unit_test(test_tickets),
      cmocka_unit_test(test_removed_replica_ticket_reports),
      cmocka_unit_test(test_ticket_exhaustion),
      cmocka_unit_test(test_resize_racing_first_route),
      cmocka_unit_test(test_metrics_and_shadow),
      cmocka_unit_test(test_speculative),
      cmocka_unit_test(test_user_policy_checked),
      cmocka_unit_test(test_view_padding_is_zero),
      cmocka_unit_test(test_new_work_reaches_every_idle_replica),
      cmocka_unit_test(test_summaries_full),
      cmocka_unit_test(test_summaries_compact),
      cmocka_unit_test(test_compact_matches_full),
      cmocka_unit_test(test_compact_matches_full_large),
      cmocka_unit_test(test_compact_matches_full_churn),
      cmocka_unit_test(test_warm_route_allocates_nothing),
      cmocka_unit_test(test_tables_built_at_configure),
      cmocka_unit_test(test_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
