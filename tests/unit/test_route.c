/*
 * test_route.c - spi_route end to end: pool rules, replica choice, affinity,
 * breakers, tickets, ledger, metrics, shadow mode, cascade, bad input.
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

#define SEC 1000000000LL

typedef struct world {
  spi_engine *e;
  spi_request *r;
  int64_t now;
  long allocs, frees;
} world;

static int64_t clock_fn(void *ud) { return ((world *)ud)->now; }
static void *w_alloc(void *ud, size_t n) {
  ((world *)ud)->allocs++;
  return malloc(n);
}
static void w_free(void *ud, void *p) {
  ((world *)ud)->frees++;
  free(p);
}

static world *mk(const char *config) {
  world *w = calloc(1, sizeof *w);
  w->now = 1700000000 * SEC;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = clock_fn;
  h.clock_user_data = w;
  h.alloc = w_alloc;
  h.free = w_free;
  h.alloc_user_data = w;
  assert_int_equal(spi_engine_new(&w->e, &h), SPI_OK);
  if (config) {
    int rc = spi_engine_configure(w->e, config, strlen(config));
    if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
    assert_int_equal(rc, SPI_OK);
  }
  assert_int_equal(spi_request_new(w->e, &w->r), SPI_OK);
  return w;
}

static void done(world *w) {
  spi_request_free(w->r);
  spi_engine_free(w->e);
  assert_int_equal(w->allocs, w->frees);
  free(w);
}

static void add(world *w, const char *id, int32_t pool, int32_t tier,
                uint32_t max_inflight) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = strlen(id);
  ri.pool = pool;
  ri.model_tier = tier;
  ri.zone = "z1";
  ri.zone_len = 2;
  ri.instance_type = "g5.xlarge";
  ri.instance_type_len = 9;
  ri.usd_per_hour = pool == SPI_POOL_SPOT ? 1.8 : 4.5;
  ri.max_inflight = max_inflight;
  int rc = spi_replica_upsert(w->e, &ri);
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
}

static void load(world *w, const char *id, double running, double waiting,
                 double kv) {
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = running;
  l.waiting = waiting;
  l.kv_usage = kv;
  assert_int_equal(spi_replica_report_load(w->e, id, strlen(id), &l), SPI_OK);
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
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = "od-x";
  ri.id_len = 4;
  ri.pool = SPI_POOL_ON_DEMAND;
  ri.models = "mistral,qwen";
  ri.models_len = 12;
  ri.usd_per_hour = 4;
  ri.max_inflight = 4;
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

  /* Piled on: the imbalance switch moves it. */
  load(w, d1.replica_id, 16, 30, 0.5);
  chat(w, "third question", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_not_equal(d2.replica_id, d1.replica_id);
  assert_int_equal(d2.reason_code, SPI_REASON_IMBALANCE);
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
  load(w, d1.replica_id, 16, 0, 0.5); /* at capacity */
  chat(w, "batch 2", 0, 0, "flex", -1);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_int_equal(d2.pool, SPI_POOL_QUEUE);
  assert_int_equal(d2.reason_code, SPI_REASON_WAIT_WARM);
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
  /* Silver shed on spot falls back to on-demand. */
  load(w, "spot-a", 1, 0, 0.97);
  load(w, "spot-b", 1, 0, 0.97);
  chat(w, "hi", 0, 5000, NULL, 1);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
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
static int plain_configure(void *state, const char *j, size_t n, void **inst,
                           char *err, size_t cap) {
  (void)j;
  (void)n;
  (void)err;
  (void)cap;
  *inst = state;
  return SPI_OK;
}

static void test_user_policy_checked(void **st) {
  (void)st;
  world *w = mk(NULL);
  spi_policy_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.configure = plain_configure;
  m.choose = bad_choose;
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
      cmocka_unit_test(test_rendezvous_agrees),
      cmocka_unit_test(test_kv_breaker),
      cmocka_unit_test(test_error_breaker),
      cmocka_unit_test(test_tickets),
      cmocka_unit_test(test_ticket_exhaustion),
      cmocka_unit_test(test_metrics_and_shadow),
      cmocka_unit_test(test_speculative),
      cmocka_unit_test(test_user_policy_checked),
      cmocka_unit_test(test_warm_route_allocates_nothing),
      cmocka_unit_test(test_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
