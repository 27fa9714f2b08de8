/*
 * test_policy.c - the reference policy's cost model, pinned on hand-made
 * fleets: what a held prefix is worth against load, how the class weights
 * the wait, the prefill queued by tickets, the rate learnt from first
 * tokens, and the fleet-relative share guard. Then the summaries the
 * lean pass builds against those of the pass that makes every replica a
 * candidate, on random histories (SPI_EQ_SEEDS seeds).
 *
 * Blocks are 4 token ids and every request says it has 512 prompt tokens a
 * block, so at router.prefill_tokens_per_s (10000) a block is 51.2 ms of
 * prefill; router.ttft_per_queued_ms is 50 ms a reported waiting request.
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
#define MS 1000000LL
#define IDS_PER_BLOCK 4
#define TOKENS_PER_BLOCK 512
#define UNIVERSAL 1u /* the block every request starts with */

typedef struct world {
  spi_engine *e;
  spi_request *r;
  int64_t now;
} world;

static int64_t clock_fn(void *ud) { return ((world *)ud)->now; }

/* An engine configured with the policy's settings (or none) and more
 * top-level keys (`more`: "" or ",\"key\":..."). */
static world *mk_with(const char *policy_json, const char *more) {
  world *w = calloc(1, sizeof *w);
  w->now = 1700000000 * SEC;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = clock_fn;
  h.clock_user_data = w;
  assert_int_equal(spi_engine_new(&w->e, &h), SPI_OK);
  char cfg[768];
  snprintf(cfg, sizeof cfg,
           "{\"cache_key\":{\"block_tokens\":%d},"
           "\"router\":{\"load_max_age_ms\":3600000}%s%s%s}",
           IDS_PER_BLOCK, policy_json ? ",\"policy\":" : "",
           policy_json ? policy_json : "", more);
  int rc = spi_engine_configure(w->e, cfg, strlen(cfg));
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
  assert_int_equal(spi_request_new(w->e, &w->r), SPI_OK);
  return w;
}

static world *mk(const char *policy_json) { return mk_with(policy_json, ""); }

static void done(world *w) {
  spi_request_free(w->r);
  spi_engine_free(w->e);
  free(w);
}

/* A replica of pool taking max_inflight requests at once. */
static void add_sized(world *w, const char *id, int32_t pool, uint32_t max_inflight) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = strlen(id);
  ri.pool = pool;
  ri.usd_per_hour = pool == SPI_POOL_SPOT ? 1.8 : 4.5;
  ri.max_inflight = max_inflight;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
}

static void add(world *w, const char *id, int32_t pool) { add_sized(w, id, pool, 16); }

static void load(world *w, const char *id, double running, double waiting) {
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = running;
  l.waiting = waiting;
  l.kv_usage = 0.2;
  assert_int_equal(spi_replica_report_load(w->e, id, strlen(id), &l), SPI_OK);
}

/* n replicas "r0".."r{n-1}" in pool, all idle. */
static void fleet(world *w, int n, int32_t pool) {
  for (int i = 0; i < n; i++) {
    char id[12]; /* "r" and any int */
    snprintf(id, sizeof id, "r%d", i);
    add(w, id, pool);
    load(w, id, 0, 0);
  }
}

/* A request whose prompt is the given blocks (ids), of the given class. */
static void prompt(world *w, const uint32_t *blocks, size_t n,
                   const char *klass) {
  uint32_t ids[64 * IDS_PER_BLOCK];
  assert_true(n <= 64);
  for (size_t b = 0; b < n; b++)
    for (int k = 0; k < IDS_PER_BLOCK; k++)
      ids[b * IDS_PER_BLOCK + (size_t)k] = blocks[b] * 16 + (uint32_t)k;
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(w->r, SPI_REQ_CLASS, klass, strlen(klass));
  spi_request_set_int(w->r, SPI_REQ_REPLAYABLE, strcmp(klass, "gold") != 0);
  spi_request_set_int(w->r, SPI_REQ_PROMPT_TOKENS,
                      (int64_t)n * TOKENS_PER_BLOCK);
  spi_request_set_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 100);
  assert_int_equal(spi_request_set_token_ids(w->r, ids, n * IDS_PER_BLOCK),
                   SPI_OK);
}

/* Blocks UNIVERSAL, then first..first+n-1. */
static size_t chain(uint32_t *out, uint32_t first, size_t n) {
  out[0] = UNIVERSAL;
  for (size_t i = 0; i < n; i++) out[1 + i] = first + (uint32_t)i;
  return n + 1;
}

static int route(world *w, spi_decision *d) {
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  int rc = spi_route(w->r, d);
  if (rc) print_error("%s\n", spi_request_errmsg(w->r));
  return rc;
}

static void finish(world *w, uint64_t t) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_OK);
}

/* Serve blocks on replica `on` only: every other replica of the fleet reads
 * as saturated meanwhile (its load is made stale), then all are idle again.
 */
static void seed_as(world *w, int n, const char *on, const uint32_t *blocks,
                    size_t nb, const char *klass) {
  w->now += 2 * 3600 * SEC; /* every load report is now stale */
  load(w, on, 0, 0);
  prompt(w, blocks, nb, klass);
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, on);
  finish(w, d.ticket);
  for (int i = 0; i < n; i++) {
    char id[12]; /* "r" and any int */
    snprintf(id, sizeof id, "r%d", i);
    load(w, id, 0, 0);
  }
}

static void seed(world *w, int n, const char *on, const uint32_t *blocks,
                 size_t nb) {
  seed_as(w, n, on, blocks, nb, "gold");
}

/* Give every replica but `except` a history: nb blocks of their own, so
 * the fleet has served evenly before the test's request (a share guard
 * has nothing to say then). */
static void history(world *w, int n, const char *except, size_t nb,
                    const char *klass) {
  uint32_t b[64];
  for (int i = 0; i < n; i++) {
    char id[12]; /* "r" and any int */
    snprintf(id, sizeof id, "r%d", i);
    if (strcmp(id, except) == 0) continue;
    for (size_t k = 0; k < nb; k++) b[k] = 9000 + 100 * (uint32_t)i + (uint32_t)k;
    seed_as(w, n, id, b, nb, klass);
  }
}

/* A replica holding only the block every request starts with is not
 * preferred over an idle one: that block saves the same everywhere. */
static void test_universal_block_is_not_affinity(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  uint32_t b[32];
  seed(w, 4, "r2", b, chain(b, 100, 3)); /* r2 holds U + 3 of its own */
  /* A new conversation: only U in common with r2. Idle or slightly busy,
   * r2 is not chosen over an idle replica. */
  for (int busy = 0; busy < 2; busy++) {
    load(w, "r2", busy ? 2 : 0, 0);
    prompt(w, b, chain(b, 200 + 10 * (uint32_t)busy, 5), "gold");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_not_equal(d.replica_id, "r2");
    finish(w, d.ticket);
  }
  done(w);

  /* Every replica holds U (a global system prompt): all are "warm" to the
   * same depth, and the one with a queue loses to the idle ones. */
  w = mk(NULL);
  fleet(w, 3, SPI_POOL_ON_DEMAND);
  for (int i = 0; i < 3; i++) {
    char id[8];
    snprintf(id, sizeof id, "r%d", i);
    seed(w, 3, id, b, chain(b, 300 + 10 * (uint32_t)i, 2));
  }
  load(w, "r0", 1, 1);
  prompt(w, b, chain(b, 400, 4), "gold");
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.matched_blocks, 1);
  assert_string_not_equal(d.replica_id, "r0");
  finish(w, d.ticket);
  done(w);
}

/* A replica holding 20 more blocks wins against a slightly busier one and
 * loses against a saturated one. */
static void test_twenty_blocks_against_load(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  uint32_t b[32];
  seed(w, 4, "r1", b, chain(b, 500, 20)); /* U + 20 conversation blocks */
  history(w, 4, "r1", 21, "gold");

  /* Slightly busier: a few decodes and one request queued (50 ms). */
  load(w, "r1", 4, 1);
  prompt(w, b, chain(b, 500, 21), "gold");
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "r1");
  assert_int_equal(d.reason_code, SPI_REASON_AFFINITY);
  assert_int_equal(d.matched_blocks, 21);
  finish(w, d.ticket);

  /* Saturated: a full batch and 40 queued (2 s) outweigh the 1 s of prefill
   * the 20 blocks save. */
  load(w, "r1", 16, 40);
  prompt(w, b, chain(b, 500, 22), "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_not_equal(d.replica_id, "r1");
  assert_int_equal(d.reason_code, SPI_REASON_AFFINITY_LEFT);
  finish(w, d.ticket);

  /* A stale load signal reads as saturated too. */
  load(w, "r1", 0, 0);
  w->now += 2 * 3600 * SEC;
  for (int i = 0; i < 4; i++)
    if (i != 1) {
      char id[8];
      snprintf(id, sizeof id, "r%d", i);
      load(w, id, 0, 0);
    }
  prompt(w, b, chain(b, 500, 21), "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_not_equal(d.replica_id, "r1");
  finish(w, d.ticket);
  done(w);
}

/* Prefill a replica would redo counts once more where a queue waits
 * behind it. r0 holds U + 20 blocks with 50 requests queued (2.5 s); r1
 * and r2 hold none of them with 20 queued (1 s). Gold moving to r1 would
 * save 1.5 s of wait for 1.1 s more prefill, but r1 is backlogged (about
 * half its time to first token is queue), so the next request there would
 * wait for that prefill too: the request stays on r0. With r1 idle the
 * redundant prefill delays no one and the request leaves r0. */
static void test_redundant_prefill_delays_the_queue(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 3, SPI_POOL_ON_DEMAND);
  uint32_t b[32];
  seed(w, 3, "r0", b, chain(b, 500, 20));
  history(w, 3, "r0", 21, "gold");
  load(w, "r0", 0, 50);
  load(w, "r1", 0, 20);
  load(w, "r2", 0, 20);
  prompt(w, b, chain(b, 500, 21), "gold");
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "r0");
  assert_int_equal(d.reason_code, SPI_REASON_AFFINITY);
  finish(w, d.ticket);
  load(w, "r1", 0, 0);
  prompt(w, b, chain(b, 500, 22), "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "r1");
  assert_int_equal(d.reason_code, SPI_REASON_AFFINITY_LEFT);
  finish(w, d.ticket);
  done(w);
}

/* In a loaded pool the redundant prefill delays the pool's later
 * requests too, wherever it lands. r0 holds U + 20 blocks with 40 queued
 * (2 s of wait); the 20 blocks save about 1 s of prefill (the whole
 * prompt takes 1.1 s). With r1, r2 and r3 idle, gold leaves r0 for an
 * idle replica. With r1 idle but r2 and r3 40 queued too, the rest of the
 * pool waits 1.33 s on average, omega = 1.2 of this prompt's prefills:
 * the second copy r1 would make delays omega * (omega + 0.95), about 2.5,
 * later requests by as much, and with it moving costs more than the wait
 * it saves, so gold stays on r0 although r1 is idle. */
static void test_loaded_pool_keeps_the_prefix(void **st) {
  (void)st;
  for (int loaded = 0; loaded < 2; loaded++) {
    world *w = mk(NULL);
    fleet(w, 4, SPI_POOL_ON_DEMAND);
    uint32_t b[32];
    seed(w, 4, "r0", b, chain(b, 500, 20));
    history(w, 4, "r0", 21, "gold");
    load(w, "r0", 0, 40);
    load(w, "r2", 0, loaded ? 40 : 0);
    load(w, "r3", 0, loaded ? 40 : 0);
    prompt(w, b, chain(b, 500, 21), "gold");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    if (loaded) {
      assert_string_equal(d.replica_id, "r0");
      assert_int_equal(d.reason_code, SPI_REASON_AFFINITY);
    } else {
      assert_string_equal(d.replica_id, "r1");
      assert_int_equal(d.reason_code, SPI_REASON_AFFINITY_LEFT);
    }
    finish(w, d.ticket);
    done(w);
  }
}

/* A second copy of a hot prefix, priced by the rest of the pool's backlog.
 * r0 holds U + a 20-block document that many requests ask about: 60 of
 * them queue there (3 s). A question on it would wait 3 s at r0, or redo
 * the document's 1.1 s of prefill on idle r1, whose copy then serves the
 * document's later questions too. The other ten replicas:
 * - 4 queued each (0.2 s): the rest of the pool waits 0.18 s, 0.16 of
 *   this prompt's prefills, so the copy's prefill delays about 0.18 later
 *   requests there; the copy wins;
 * - 30 queued each (1.5 s), four of them not named by the summaries (only
 *   the seven lowest TTFTs are): the rest of the pool waits 1.36 s, omega
 *   = 1.2 prefills, and work added there delays every request that
 *   arrives before its backlog clears, omega * (omega + 0.95), about 2.6
 *   of them; the request stays with the prefix (a pool estimate that
 *   counted the named replicas only, and the delay as omega alone, about
 *   1.1 requests, sent it to r1);
 * - the same queues behind full batches (16 running of 16): those
 *   requests wait for decodes to end, which the copy's prefill does not
 *   lengthen, so only the requests the named queues hold count, about
 *   1.1, and the copy wins;
 * - and with r0 only 10 queued (0.5 s) it stays there whatever the rest
 *   does. */
static void test_hot_prefix_second_copy(void **st) {
  (void)st;
  static const struct {
    double holder, rest, rest_running;
    const char *want;
    int32_t reason;
  } cases[] = {{60, 4, 0, "r1", SPI_REASON_AFFINITY_LEFT},
               {60, 30, 0, "r0", SPI_REASON_AFFINITY},
               {60, 30, 16, "r1", SPI_REASON_AFFINITY_LEFT},
               {10, 4, 0, "r0", SPI_REASON_AFFINITY}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    world *w = mk(NULL);
    fleet(w, 12, SPI_POOL_ON_DEMAND);
    uint32_t b[32];
    seed(w, 12, "r0", b, chain(b, 500, 20));
    history(w, 12, "r0", 21, "gold");
    load(w, "r0", 0, cases[k].holder);
    for (int i = 2; i < 12; i++) {
      char id[12]; /* "r" and any int */
      snprintf(id, sizeof id, "r%d", i);
      load(w, id, cases[k].rest_running, cases[k].rest);
    }
    prompt(w, b, chain(b, 500, 21), "gold");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_equal(d.replica_id, cases[k].want);
    assert_int_equal(d.reason_code, cases[k].reason);
    finish(w, d.ticket);
    done(w);
  }
}

/* The class weighs the wait: with the same queue on the warm replica, a
 * class that pays for every millisecond leaves it, one that may wait stays.
 * 20 blocks save 1024 ms; 30 queued requests are 1500 ms of wait. */
static void test_class_weighs_the_wait(void **st) {
  (void)st;
  const char *cfg[2] = {"{\"silver_wait_weight\":1}",
                        "{\"silver_wait_weight\":0.25}"};
  for (int k = 0; k < 2; k++) {
    world *w = mk(cfg[k]);
    fleet(w, 3, SPI_POOL_SPOT);
    uint32_t b[32];
    seed_as(w, 3, "r0", b, chain(b, 700, 20), "silver");
    history(w, 3, "r0", 21, "silver");
    load(w, "r0", 2, 30);
    prompt(w, b, chain(b, 700, 21), "silver");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    assert_int_equal(d.pool, SPI_POOL_SPOT);
    if (k == 0)
      assert_string_not_equal(d.replica_id, "r0");
    else
      assert_string_equal(d.replica_id, "r0");
    finish(w, d.ticket);
    done(w);
  }
  /* The weights are bounded: above 1 would rank by something the
   * summaries do not hold the best of. */
  world *w = calloc(1, sizeof *w);
  assert_int_equal(spi_engine_new(&w->e, NULL), SPI_OK);
  const char *bad = "{\"policy\":{\"bronze_wait_weight\":1.5}}";
  assert_int_equal(spi_engine_configure(w->e, bad, strlen(bad)), SPI_ERANGE);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "policy.bronze_wait_weight"));
  const char *gone = "{\"policy\":{\"imbalance_abs\":8}}";
  assert_int_equal(spi_engine_configure(w->e, gone, strlen(gone)), SPI_EUNKNOWN);
  spi_engine_free(w->e);
  free(w);
}

/* Prefill the library queued on a replica (open tickets without a first
 * token) is a wait there; the first token takes it off. */
static void test_queued_prefill_is_a_wait(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 2, SPI_POOL_ON_DEMAND);
  uint32_t b[32];
  size_t n = chain(b, 900, 9); /* 10 blocks: 5120 tokens, 512 ms */
  prompt(w, b, n, "gold");
  spi_decision d1, d2;
  assert_int_equal(route(w, &d1), SPI_OK);
  /* Another cold prompt: the replica with 512 ms queued is not taken. */
  prompt(w, b, chain(b, 950, 9), "gold");
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_not_equal(d2.replica_id, d1.replica_id);
  /* Its estimate there carries no wait; after both first tokens, a third
   * cold prompt sees no queue anywhere. */
  double cold = d2.est_ttft_ms;
  assert_int_equal(spi_ticket_first_token(w->e, d1.ticket), SPI_OK);
  assert_int_equal(spi_ticket_first_token(w->e, d2.ticket), SPI_OK);
  spi_decision d3;
  prompt(w, b, chain(b, 980, 9), "gold");
  assert_int_equal(route(w, &d3), SPI_OK);
  assert_true(d3.est_ttft_ms <= cold + 1e-9);
  finish(w, d1.ticket);
  finish(w, d2.ticket);
  finish(w, d3.ticket);
  done(w);
}

/* A replica's prefill rate is learnt from first tokens: the configured one
 * until 8 are seen, then what they say. */
static void test_rate_is_learnt(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 1, SPI_POOL_ON_DEMAND);
  uint32_t b[32];
  spi_decision d;
  for (uint32_t k = 0; k < 9; k++) {
    for (uint32_t i = 0; i < 10; i++) b[i] = 2000 + 20 * k + i;
    prompt(w, b, 10, "gold"); /* 5120 tokens, nothing in common */
    assert_int_equal(route(w, &d), SPI_OK);
    if (k < 8) /* configured: 20 ms + 5120 / 10000 s */
      assert_true(d.est_ttft_ms > 531 && d.est_ttft_ms < 533);
    else /* learnt: 5120 tokens in 1 s */
      assert_true(d.est_ttft_ms > 1019 && d.est_ttft_ms < 1021);
    w->now += 1020 * MS; /* 20 ms fixed part + 1 s of prefill */
    assert_int_equal(spi_ticket_first_token(w->e, d.ticket), SPI_OK);
    finish(w, d.ticket);
    load(w, "r0", 0, 0);
  }
  done(w);

  /* Behind a full batch a TTFT is the wait for a slot, not prefill: such
   * first tokens teach nothing, and the configured rate stays. */
  w = mk(NULL);
  fleet(w, 1, SPI_POOL_ON_DEMAND);
  for (uint32_t k = 0; k < 10; k++) {
    load(w, "r0", 16, 3);
    for (uint32_t i = 0; i < 10; i++) b[i] = 3000 + 20 * k + i;
    prompt(w, b, 10, "gold");
    assert_int_equal(route(w, &d), SPI_OK);
    w->now += 5020 * MS;
    assert_int_equal(spi_ticket_first_token(w->e, d.ticket), SPI_OK);
    finish(w, d.ticket);
  }
  load(w, "r0", 0, 0);
  for (uint32_t i = 0; i < 10; i++) b[i] = 3900 + i;
  prompt(w, b, 10, "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_true(d.est_ttft_ms > 531 && d.est_ttft_ms < 533);
  finish(w, d.ticket);
  done(w);
}

/* Requests for one hot prefix spread once its holder would carry more than
 * policy.load_share_cap times the pool's mean; requests for prefixes nobody
 * holds fill the others. The share stays bounded at any load. */
/* The largest share of 80 routes: three in four share one long prefix
 * (each with its own last block), the rest are prefixes nobody holds. */
static double max_share(const char *policy_json) {
  world *w = mk(policy_json);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  uint32_t b[32];
  double served[4] = {0};
  for (uint32_t k = 0; k < 80; k++) {
    size_t n = k % 4 ? chain(b, 3000, 12) : chain(b, 4000 + 20 * k, 12);
    b[n - 1] = 5000 + k;
    prompt(w, b, n, "gold");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    served[d.replica_id[1] - '0'] += (double)n * TOKENS_PER_BLOCK;
    finish(w, d.ticket); /* light load: nothing ever queues */
  }
  double mx = 0, sum = 0;
  for (int i = 0; i < 4; i++) {
    sum += served[i];
    if (served[i] > mx) mx = served[i];
  }
  done(w);
  return mx / (sum / 4);
}

/* Requests for one hot prefix spread once its holder would carry more than
 * policy.load_share_cap times the pool's mean, at light load too: without
 * the guard (a cap of 100) its holder takes most of them. */
static void test_share_guard_is_fleet_relative(void **st) {
  (void)st;
  double guarded = max_share(NULL);
  double loose = max_share("{\"load_share_cap\":100}");
  print_message("max/mean share: %.3f guarded, %.3f without\n", guarded, loose);
  assert_true(guarded <= 1.25 + 1e-9);
  assert_true(loose > 2.0);
}

/* Work that a replica holds nothing of beyond what another holds (a new
 * conversation, cold or behind a prompt others hold too) goes to a replica
 * below the pool's mean, though the one above it is within
 * policy.load_share_cap: later turns stay where it lands, so placing new
 * work is how a pool balances without redoing any history. A replica's own
 * conversation keeps it up to the cap. r0 and r1 have served 60 blocks and
 * hold the prompt S, r2 and r3 40 blocks (r0 at 1.2 times the mean). */
static void test_new_work_goes_below_the_mean(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  history(w, 4, "none", 40, "gold");
  uint32_t b[64];
  for (int i = 0; i < 2; i++) {
    for (uint32_t k = 0; k < 4; k++) b[k] = 600 + k; /* S */
    for (uint32_t k = 4; k < 20; k++) b[k] = 700 + 100 * (uint32_t)i + k;
    seed(w, 4, i ? "r1" : "r0", b, 20);
  }
  spi_decision d;
  /* New conversations behind S: r0 and r1 both hold it, so it is no one's
   * own prefix; they go to r2 or r3 at the prefill of S. */
  for (uint32_t k = 0; k < 3; k++) {
    for (uint32_t j = 0; j < 4; j++) b[j] = 600 + j;
    b[4] = 1000 + 2 * k, b[5] = 1001 + 2 * k;
    prompt(w, b, 6, "gold");
    assert_int_equal(route(w, &d), SPI_OK);
    assert_true(d.replica_id[1] == '2' || d.replica_id[1] == '3');
    finish(w, d.ticket);
  }
  /* Prefixes nobody holds: not to r0 or r1, whatever the rendezvous
   * hash would say. */
  for (uint32_t k = 0; k < 8; k++) {
    b[0] = 1100 + 2 * k, b[1] = 1101 + 2 * k;
    prompt(w, b, 2, "gold");
    assert_int_equal(route(w, &d), SPI_OK);
    assert_true(d.replica_id[1] == '2' || d.replica_id[1] == '3');
    finish(w, d.ticket);
  }
  /* r0's own conversation, its next turn: it stays. */
  for (uint32_t k = 0; k < 4; k++) b[k] = 600 + k;
  for (uint32_t k = 4; k < 20; k++) b[k] = 700 + k;
  b[20] = 1300;
  prompt(w, b, 21, "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "r0");
  assert_int_equal(d.reason_code, SPI_REASON_AFFINITY);
  finish(w, d.ticket);
  done(w);
}

/* Staying on a replica over its share is rent, paid by each of the turns
 * the conversation is expected still to send there (as many as it has);
 * moving is paid once, with its history's prefill. r0 holds conversation
 * C (U + 20 blocks, so about 11 turns of one block) and is about 5 blocks
 * over its share: one turn's rent (5 blocks) is less than the 21 blocks a
 * move redoes, the rent of the turns ahead is not, so C's next turn leaves
 * r0. r1..r3 have served 200 blocks each, r0 262. */
static void test_over_share_rent_against_a_move(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  for (int k = 0; k < 4; k++) history(w, 4, "r0", 50, "gold");
  uint32_t b[64];
  seed(w, 4, "r0", b, chain(b, 800, 20));
  for (uint32_t k = 0; k < 5; k++) {
    for (uint32_t j = 0; j < 48; j++) b[j] = 20000 + 100 * k + j;
    seed(w, 4, "r0", b, 48);
  }
  prompt(w, b, chain(b, 800, 21), "gold");
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_not_equal(d.replica_id, "r0");
  assert_int_equal(d.reason_code, SPI_REASON_IMBALANCE);
  finish(w, d.ticket);
  done(w);
}

/* Where prefix P (nobody holds it) goes in a fresh fleet of 4 where
 * replica `high` has served 40 blocks (none when NULL) and `some` 10;
 * the replica's id is written to out, and the reason returned. */
static int32_t place_cold(const char *high, const char *some,
                          char out[SPI_ID_MAX]) {
  world *w = mk(NULL);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  uint32_t b[64];
  if (high) {
    for (uint32_t k = 0; k < 40; k++) b[k] = 4000 + k;
    seed(w, 4, high, b, 40);
  }
  if (some) {
    for (uint32_t k = 0; k < 10; k++) b[k] = 4100 + k;
    seed(w, 4, some, b, 10);
  }
  for (uint32_t k = 0; k < 6; k++) b[k] = 3100 + k;
  prompt(w, b, 6, "gold");
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  memcpy(out, d.replica_id, SPI_ID_MAX);
  finish(w, d.ticket);
  done(w);
  return d.reason_code;
}

/* A prefix nobody holds goes to its rendezvous winner; when that replica
 * is above its pool's mean, to the next in rendezvous order that is not,
 * though another at or below the mean was sent less: proxies that share
 * no state still agree where their counts do. */
static void test_cold_prefix_follows_rendezvous_order(void **st) {
  (void)st;
  char first[SPI_ID_MAX], second[SPI_ID_MAX], again[SPI_ID_MAX];
  assert_int_equal(place_cold(NULL, NULL, first), SPI_REASON_RENDEZVOUS);
  assert_int_equal(place_cold(first, NULL, second), SPI_REASON_RENDEZVOUS);
  assert_string_not_equal(second, first);
  /* second has served 10 blocks, two others none; the mean is 12.5. */
  assert_int_equal(place_cold(first, second, again), SPI_REASON_RENDEZVOUS);
  assert_string_equal(again, second);
}

/* The work 120 requests for prefixes nobody holds bring, sent to a pool of
 * two replicas of 16 streams and two of 48 (light load: each finishes
 * before the next), as the large ones' tokens over the small ones'. */
static double large_over_small(void) {
  world *w = mk(NULL);
  static const uint32_t size[4] = {16, 16, 48, 48};
  for (int i = 0; i < 4; i++) {
    char id[4] = {'r', (char)('0' + i), 0, 0};
    add_sized(w, id, SPI_POOL_ON_DEMAND, size[i]);
    load(w, id, 0, 0);
  }
  double served[4] = {0};
  uint32_t b[8];
  for (uint32_t k = 0; k < 120; k++) {
    for (uint32_t j = 0; j < 4; j++) b[j] = 30000 + 8 * k + j;
    prompt(w, b, 4, "gold");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    served[d.replica_id[1] - '0'] += 4.0 * TOKENS_PER_BLOCK + 100;
    finish(w, d.ticket);
  }
  done(w);
  return (served[2] + served[3]) / (served[0] + served[1]);
}

/* In a pool of replicas of different sizes each one's share of the work
 * is in proportion to its streams (max_inflight): new work fills a large
 * replica to three times what a third of its size carries, not to the
 * plain mean, where the small ones' batches would fill first. */
static void test_shares_follow_replica_size(void **st) {
  (void)st;
  double r = large_over_small();
  print_message("large / small replicas' tokens: %.3f (streams: 3)\n", r);
  assert_true(r > 2.5 && r < 3.5);
}

/* Finish a ticket that generated `out` tokens. */
static void finish_out(world *w, uint64_t t, uint64_t out) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  res.output_tokens = out;
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_OK);
}

/* Which of r0 and r1 four cold 2-block prompts go to, after each served
 * one 10-block prompt: r0's expected to generate `said` tokens and
 * reporting `made`, r1's 100 and 100. Counts in n[2]. */
static void after_generations(uint64_t said, uint64_t made, int n[2]) {
  world *w = mk(NULL);
  fleet(w, 2, SPI_POOL_ON_DEMAND);
  uint32_t b[16];
  for (int i = 0; i < 2; i++) {
    const char *id = i ? "r1" : "r0";
    w->now += 2 * 3600 * SEC; /* only `id` reports a fresh load */
    load(w, id, 0, 0);
    for (uint32_t k = 0; k < 10; k++) b[k] = 1500 + 20 * (uint32_t)i + k;
    prompt(w, b, 10, "gold");
    spi_request_set_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS,
                        (int64_t)(i ? 100 : said));
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_equal(d.replica_id, id);
    finish_out(w, d.ticket, i ? 100 : made);
  }
  load(w, "r0", 0, 0);
  load(w, "r1", 0, 0);
  n[0] = n[1] = 0;
  for (uint32_t k = 0; k < 4; k++) {
    b[0] = 1600 + 2 * k, b[1] = 1601 + 2 * k;
    prompt(w, b, 2, "gold");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    n[d.replica_id[1] - '0']++;
    finish(w, d.ticket);
  }
  done(w);
}

/* What a replica was sent counts the output it generated as well as its
 * prompts: a replica that ran an 8,000-token generation has done more work
 * than one that answered in 100, and new work goes to the other. The count
 * is what the finish reports, not what the request said it expected. */
static void test_generated_tokens_are_work(void **st) {
  (void)st;
  int n[2];
  after_generations(8000, 8000, n);
  assert_int_equal(n[0], 0);
  assert_int_equal(n[1], 4);
  after_generations(8000, 100, n); /* said 8,000, made 100: even */
  assert_true(n[0] >= 1 && n[1] >= 1);
}

/* Route turn `turn` of conversation `conv` (a block a turn after U);
 * return the replica's index. */
static int turn_of(world *w, uint32_t conv, uint32_t turn) {
  uint32_t b[64];
  size_t n = chain(b, 10000 + 100 * conv, turn + 1);
  prompt(w, b, n, "gold");
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  finish(w, d.ticket); /* light load: nothing ever queues */
  return d.replica_id[1] - '0';
}

/* A few conversations in a small pool keep their replicas across turns at
 * the default config: two or three conversations leave replicas idle, and
 * no placement can spread them without splitting one (each move redoes
 * the whole history), so their lead is not imbalance. A runaway one, which
 * sends far more than the others, still leaves its replica once the work
 * it carries beyond its share outweighs the prefill a move redoes. */
static void test_few_conversations_keep_their_replicas(void **st) {
  (void)st;
  for (uint32_t k = 2; k <= 3; k++) {
    world *w = mk(NULL);
    fleet(w, 4, SPI_POOL_ON_DEMAND);
    int home[3];
    int moves = 0;
    for (uint32_t t = 0; t < 40; t++)
      for (uint32_t c = 0; c < k; c++) {
        int r = turn_of(w, c, t);
        if (t == 0) home[c] = r;
        moves += r != home[c];
      }
    print_message("%u conversations, 40 turns: %d moves\n", k, moves);
    assert_int_equal(moves, 0);
    done(w);
  }
  /* A runaway conversation keeps its replica while it is cheapest in
   * full, but the new conversations go elsewhere (it carries more than its
   * share, they bring no history to it), and once a queue there costs more
   * than the prefill a move redoes, the conversation moves too. */
  world *w = mk(NULL);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  int home = turn_of(w, 0, 0);
  for (uint32_t t = 1; t < 30; t++) assert_int_equal(turn_of(w, 0, t), home);
  char id[8];
  snprintf(id, sizeof id, "r%d", home);
  for (uint32_t c = 1; c <= 8; c++) {
    assert_int_not_equal(turn_of(w, c, 0), home);
    assert_int_equal(turn_of(w, 0, 29 + c), home);
  }
  /* Turn 38 holds 39 of its 40 blocks there (2 s of prefill): 36 queued
   * (1.8 s of wait) and it stays; 44 queued (2.2 s) and it moves. */
  load(w, id, 0, 36);
  assert_int_equal(turn_of(w, 0, 38), home);
  load(w, id, 0, 44);
  assert_int_not_equal(turn_of(w, 0, 39), home);
  done(w);
}

/* Readers of one document (U, 30 blocks of it, then a question of their
 * own) are not one conversation: from the third on, the document's blocks
 * there are a branch point (SPI_MATCH_CONTINUED), each reader is a unit
 * of its own, and once the replica holding the document runs over its
 * share a reader makes a second copy elsewhere instead of the document's
 * replica taking every reader (as it would if their prompts were read as
 * turns of one long conversation, about 16 of them). A conversation's
 * turns (test_few_conversations_keep_their_replicas) are never marked:
 * each turn matches the last one's end, which no one went on from yet. */
static void test_document_readers_are_not_one_conversation(void **st) {
  (void)st;
  world *w = mk(NULL);
  fleet(w, 4, SPI_POOL_ON_DEMAND);
  uint32_t b[64];
  size_t n = chain(b, 20000, 31);
  int seq[12], copies = 1, home = -1;
  for (uint32_t q = 0; q < 12; q++) {
    b[n - 1] = 30000 + q; /* the reader's own question */
    prompt(w, b, n, "silver");
    spi_decision d;
    assert_int_equal(route(w, &d), SPI_OK);
    finish(w, d.ticket);
    seq[q] = d.replica_id[1] - '0';
    if (q == 0) home = seq[0];
    int seen_before = 0;
    for (uint32_t k = 0; k < q; k++) seen_before |= seq[k] == seq[q];
    if (q > 0 && !seen_before) {
      copies++;
      /* A new copy is made by a reader, never by the first few. */
      assert_true(q >= 2);
    }
  }
  print_message("readers: %d %d %d %d %d %d %d %d %d %d %d %d (copies %d)\n",
                seq[0], seq[1], seq[2], seq[3], seq[4], seq[5], seq[6], seq[7],
                seq[8], seq[9], seq[10], seq[11], copies);
  assert_int_equal(seq[1], home);
  assert_true(copies >= 2);
  done(w);
}

/* A spot pool whose KV breaker sheds silver is loaded, not gone: silver
 * is shed there (and retried), never moved cold into the on-demand pool,
 * which would split its conversation and queue it ahead of gold. Gold
 * still goes on demand, and silver falls back to on-demand when spot has
 * no replica at all. */
static void test_shed_pool_is_not_left_for_the_fallback(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "s0", SPI_POOL_SPOT);
  add(w, "s1", SPI_POOL_SPOT);
  add(w, "d0", SPI_POOL_ON_DEMAND);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = 4;
  l.kv_usage = 0.99;
  assert_int_equal(spi_replica_report_load(w->e, "s0", 2, &l), SPI_OK);
  assert_int_equal(spi_replica_report_load(w->e, "s1", 2, &l), SPI_OK);
  load(w, "d0", 0, 0);
  uint32_t b[32];
  prompt(w, b, chain(b, 300, 4), "silver");
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  assert_int_equal(spi_route(w->r, &d), SPI_ESHED);
  assert_int_equal(d.ticket, 0);
  prompt(w, b, chain(b, 300, 4), "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "d0");
  finish(w, d.ticket);
  /* No spot replica at all: the fallback is what it is for. */
  assert_int_equal(spi_replica_remove(w->e, "s0", 2), SPI_OK);
  assert_int_equal(spi_replica_remove(w->e, "s1", 2), SPI_OK);
  prompt(w, b, chain(b, 300, 4), "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "d0");
  finish(w, d.ticket);
  done(w);
}

/* A fleet that runs spot keeps on-demand's batches for gold while its spot
 * pool is gone: silver falling back there takes a replica only while the
 * replica's streams, silver's own included, are within
 * policy.fallback_batch_share (0.2) of its batch, and past that it is
 * refused (the gateway retries it) while gold is still served. A fleet
 * that never ran spot serves silver on on-demand, its only pool, whatever
 * the batches hold; so does a share of 1. */
static void test_fallback_leaves_gold_its_batch(void **st) {
  (void)st;
  const char *policy[3] = {NULL, NULL, "{\"fallback_batch_share\":1}"};
  for (int k = 0; k < 3; k++) {
    world *w = mk(policy[k]);
    int kept = k == 0;
    if (k != 1) { /* a spot fleet whose one spot replica is gone */
      add(w, "s0", SPI_POOL_SPOT);
      assert_int_equal(spi_replica_remove(w->e, "s0", 2), SPI_OK);
    }
    add(w, "d0", SPI_POOL_ON_DEMAND); /* 16 streams a batch: 3.2 spare */
    add(w, "d1", SPI_POOL_ON_DEMAND);
    load(w, "d0", 8, 0); /* 9 with silver: past the share */
    load(w, "d1", 1, 0); /* 2 with silver: within it */
    uint32_t b[32];
    spi_decision d;
    prompt(w, b, chain(b, 300, 4), "silver");
    assert_int_equal(route(w, &d), SPI_OK);
    assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
    /* Kept, on d1 with no fallback; else where the cold prefix's
     * rendezvous order puts it (d0 here), d1 as its fallback. */
    assert_string_equal(d.replica_id, kept ? "d1" : "d0");
    assert_int_equal(d.n_fallbacks, kept ? 0 : 1);
    finish(w, d.ticket);
    load(w, "d1", 3, 0); /* 4 with silver: both past the share */
    prompt(w, b, chain(b, 400, 4), "silver");
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    int rc = spi_route(w->r, &d);
    if (kept) {
      assert_int_equal(rc, SPI_ENOCAPACITY);
      assert_int_equal(d.ticket, 0);
      assert_int_equal(d.reason_code, SPI_REASON_NO_CAPACITY);
      assert_non_null(strstr(spi_request_errmsg(w->r), "kept for gold"));
    } else {
      assert_int_equal(rc, SPI_OK);
      assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
      finish(w, d.ticket);
    }
    prompt(w, b, chain(b, 500, 4), "gold");
    assert_int_equal(route(w, &d), SPI_OK);
    assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
    finish(w, d.ticket);
    done(w);
  }
}

/* A spot replica whose load is stale or missing (dead, or not scraped yet
 * after a reload) is saturated for choice but says nothing of the pool's
 * KV pressure: one healthy replica at 0.8 beside four silent ones serves
 * silver instead of shedding it (counted as full, the silent ones put the
 * pool's mean at 0.96, above the silver breaker's 0.95). With no fresh
 * replica left the pool is empty, and the fallback rules apply. */
static void test_stale_replica_is_not_kv_pressure(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "s0", SPI_POOL_SPOT);
  for (int i = 1; i <= 4; i++) {
    char id[8];
    snprintf(id, sizeof id, "s%d", i);
    add(w, id, SPI_POOL_SPOT);
  }
  add(w, "d0", SPI_POOL_ON_DEMAND);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = 2;
  l.kv_usage = 0.8;
  assert_int_equal(spi_replica_report_load(w->e, "s0", 2, &l), SPI_OK);
  load(w, "d0", 0, 0);
  uint32_t b[32];
  spi_decision d;
  for (int k = 0; k < 3; k++) {
    prompt(w, b, chain(b, 300 + 10 * (uint32_t)k, 4), k ? "bronze" : "silver");
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_equal(d.replica_id, "s0");
    finish(w, d.ticket);
  }
  /* An hour on, only d0 reports: spot has no replica with a fresh load. */
  w->now += 3601 * SEC;
  load(w, "d0", 0, 0);
  prompt(w, b, chain(b, 400, 4), "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "d0");
  finish(w, d.ticket);
  done(w);
}

/* A fleet whose replicas have never reported a load (a gateway before its
 * first metrics scrape, a proxy that scrapes none) reads as saturated, not
 * as gone: gold is served, on the replica with the fewest open requests,
 * and the reason says the load is unknown; so is silver, in its own pool. */
static void test_unreported_fleet_serves_gold(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "d0", SPI_POOL_ON_DEMAND);
  add(w, "d1", SPI_POOL_ON_DEMAND);
  add(w, "s0", SPI_POOL_SPOT);
  uint32_t b[32];
  spi_decision d, d2;
  prompt(w, b, chain(b, 300, 4), "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
  assert_string_equal(d.replica_id, "d0");
  assert_int_equal(d.reason_code, SPI_REASON_LEAST_LOADED);
  assert_non_null(strstr(d.reason, "load unknown"));
  assert_int_equal(d.n_fallbacks, 1);
  assert_string_equal(d.fallback_ids[0], "d1");
  /* d0 has an open request: the next goes to d1, the same prefix too. */
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_equal(d2.replica_id, "d1");
  finish(w, d.ticket);
  finish(w, d2.ticket);
  prompt(w, b, chain(b, 400, 4), "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  assert_string_equal(d.replica_id, "s0");
  assert_non_null(strstr(d.reason, "load unknown"));
  finish(w, d.ticket);
  done(w);
}

/* Pool choice still treats a pool with no fresh replica as empty: a spot
 * pool whose loads went stale beside a fresh on-demand one sends silver
 * (spot first, on-demand fallback) and gold to on-demand, and bronze to
 * its queue, none to a silent spot replica. Once on-demand is silent too,
 * silver is served on a stale replica of its own pool. */
static void test_stale_spot_sends_silver_to_on_demand(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "s0", SPI_POOL_SPOT);
  add(w, "s1", SPI_POOL_SPOT);
  add(w, "d0", SPI_POOL_ON_DEMAND);
  load(w, "s0", 0, 0);
  load(w, "s1", 0, 0);
  uint32_t b[32];
  spi_decision d;
  prompt(w, b, chain(b, 300, 4), "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  finish(w, d.ticket);
  w->now += 3601 * SEC;
  load(w, "d0", 0, 0);
  for (int k = 0; k < 2; k++) {
    prompt(w, b, chain(b, 400 + 100 * (uint32_t)k, 4), k ? "gold" : "silver");
    assert_int_equal(route(w, &d), SPI_OK);
    assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
    assert_string_equal(d.replica_id, "d0");
    assert_null(strstr(d.reason, "load unknown"));
    finish(w, d.ticket);
  }
  /* Not even the universal block: no spot cache hit, the batch rule. */
  const uint32_t cold[4] = {600, 601, 602, 603};
  prompt(w, cold, 4, "bronze");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_QUEUE);
  assert_int_equal(d.reason_code, SPI_REASON_QUEUE_NO_SPOT);
  w->now += 3601 * SEC;
  prompt(w, b, chain(b, 700, 4), "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  assert_non_null(strstr(d.reason, "load unknown"));
  finish(w, d.ticket);
  done(w);
}

/* Every replica reported, then the reports stopped (a metrics outage):
 * the fleet reads as saturated, every class is served as it was before
 * stale replicas were left out of pool choice, never answered "no
 * capacity": gold on on-demand, spread by open requests; silver and bronze
 * on spot. Reports resume: the fresh rules again. */
static void test_all_stale_reads_as_saturated(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "d0", SPI_POOL_ON_DEMAND);
  add(w, "d1", SPI_POOL_ON_DEMAND);
  add(w, "s0", SPI_POOL_SPOT);
  add(w, "s1", SPI_POOL_SPOT);
  load(w, "d0", 1, 0);
  load(w, "d1", 0, 0);
  load(w, "s0", 0, 0);
  load(w, "s1", 0, 0);
  uint32_t b[32];
  spi_decision d, d2;
  const char *klass[] = {"gold", "silver", "bronze"};
  for (int k = 0; k < 3; k++) {
    prompt(w, b, chain(b, 300 + 100 * (uint32_t)k, 4), klass[k]);
    assert_int_equal(route(w, &d), SPI_OK);
    finish(w, d.ticket);
  }
  w->now += 3601 * SEC;
  prompt(w, b, chain(b, 300, 4), "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
  assert_int_equal(d.reason_code, SPI_REASON_LEAST_LOADED);
  assert_non_null(strstr(d.reason, "load unknown"));
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_int_equal(d2.pool, SPI_POOL_ON_DEMAND);
  assert_string_not_equal(d2.replica_id, d.replica_id);
  finish(w, d.ticket);
  finish(w, d2.ticket);
  for (int k = 1; k < 3; k++) {
    prompt(w, b, chain(b, 300 + 100 * (uint32_t)k, 4), klass[k]);
    assert_int_equal(route(w, &d), SPI_OK);
    assert_int_equal(d.pool, SPI_POOL_SPOT);
    assert_non_null(strstr(d.reason, "load unknown"));
    finish(w, d.ticket);
  }
  load(w, "s1", 0, 0);
  prompt(w, b, chain(b, 800, 4), "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "s1");
  assert_null(strstr(d.reason, "load unknown"));
  finish(w, d.ticket);
  done(w);
}

/* The pool rules read only replicas with a fresh load, the prefix holder
 * of the spot cache-hit rule and of gold's "warm" overflow too: a stale
 * spot replica holding the prefix is no cache hit. Bronze whose prefix
 * only a silent spot replica holds goes to the library's queue (the batch
 * rule, as for a cold prefix), not onto that replica; gold with no fresh
 * on-demand replica does not overflow to a cold spot one because a silent
 * one holds its prefix: it is served on its own pool's stale replica.
 * Bronze is queued for spot only while some replica reports load. */
static void test_stale_warm_spot_is_no_cache_hit(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "s0", SPI_POOL_SPOT);
  add(w, "d0", SPI_POOL_ON_DEMAND);
  load(w, "s0", 0, 0);
  load(w, "d0", 0, 0);
  uint32_t b[32], g[32];
  size_t nb = chain(b, 300, 4), ng = chain(g, 500, 4);
  spi_decision d;
  prompt(w, b, nb, "bronze");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "s0");
  finish(w, d.ticket);
  prompt(w, g, ng, "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "s0");
  finish(w, d.ticket);
  w->now += 3601 * SEC; /* s0 falls silent */
  load(w, "d0", 0, 0);
  prompt(w, b, nb, "bronze");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_QUEUE);
  assert_int_equal(d.reason_code, SPI_REASON_QUEUE_NO_SPOT);
  w->now += 3601 * SEC; /* d0 too */
  add(w, "s1", SPI_POOL_SPOT);
  load(w, "s1", 0, 0);
  prompt(w, g, ng, "gold");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_ON_DEMAND);
  assert_string_equal(d.replica_id, "d0");
  assert_non_null(strstr(d.reason, "load unknown"));
  finish(w, d.ticket);
  /* No replica reports load: a cold bronze request is served on a stale
   * spot replica like every other class, not queued for ever. */
  w->now += 3601 * SEC;
  const uint32_t cold[4] = {900, 901, 902, 903};
  prompt(w, cold, 4, "bronze");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_int_equal(d.pool, SPI_POOL_SPOT);
  assert_non_null(strstr(d.reason, "load unknown"));
  finish(w, d.ticket);
  done(w);
}

/* What a shadow policy saw of the work the reference policy costs: the
 * request's expected output as the policy reads it (what the request says,
 * never more than its class's cap in the classification the policy is
 * given; that cap when the request says nothing; else 256), the pools' pressures, and the work each replica was sent. */
typedef struct costed {
  double output;
  int32_t cls_pressure, pressure[4];
  double served[2]; /* "s0", "d0" */
  double od[2];     /* "d0", "d1" */
} costed;

static int costed_choose(void *state, void *inst, const spi_route_context *x,
                         spi_policy_choice *out) {
  (void)state;
  costed *o = inst;
  const spi_request_view *v = x->req;
  int64_t said = v->expected_output_tokens_set ? v->expected_output_tokens
                 : v->max_output_tokens_set    ? v->max_output_tokens
                                               : 0;
  int64_t cap = x->cls->max_output_tokens;
  if (cap > 0 && said > cap) said = cap;
  o->output = said > 0   ? (double)said
              : cap > 0  ? (double)cap
                         : 256.0;
  o->cls_pressure = x->cls->pressure;
  memcpy(o->pressure, x->pressure, sizeof o->pressure);
  for (size_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = &x->candidates[i];
    if (c->id_len == 2) o->served[c->id[0] == 'd'] = c->served_tokens;
    if (c->id_len == 2 && c->id[0] == 'd' && (c->id[1] == '0' || c->id[1] == '1'))
      o->od[c->id[1] - '0'] = c->served_tokens;
  }
  out->pool = SPI_POOL_QUEUE;
  return SPI_OK;
}

/* configure of the recording policies below: the state they were
 * registered with is their instance. */
static int state_is_instance(void *state, const char *j, size_t n, void **inst,
                             char *err, size_t cap) {
  (void)j;
  (void)n;
  (void)err;
  (void)cap;
  *inst = state;
  return SPI_OK;
}

/* Spot "s0" at normal KV pressure and on-demand "d0" at elevated, with
 * `saw` recording as the shadow policy. */
static world *costed_world(costed *saw) {
  world *w = calloc(1, sizeof *w);
  w->now = 1700000000 * SEC;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = clock_fn;
  h.clock_user_data = w;
  assert_int_equal(spi_engine_new(&w->e, &h), SPI_OK);
  memset(saw, 0, sizeof *saw);
  spi_policy_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.configure = state_is_instance;
  m.choose = costed_choose;
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY,
                                              "costed", 6, &m, saw, NULL),
                   SPI_OK);
  char cfg[256];
  snprintf(cfg, sizeof cfg,
           "{\"cache_key\":{\"block_tokens\":%d},\"router\":"
           "{\"load_max_age_ms\":3600000,\"shadow_policy\":\"costed\"}}",
           IDS_PER_BLOCK);
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(spi_request_new(w->e, &w->r), SPI_OK);
  add(w, "s0", SPI_POOL_SPOT);
  add(w, "d0", SPI_POOL_ON_DEMAND);
  load(w, "s0", 0, 0);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.kv_usage = 0.8; /* elevated: below every breaker */
  assert_int_equal(spi_replica_report_load(w->e, "d0", 2, &l), SPI_OK);
  return w;
}

/* Route a silver request of n blocks (b) that says `max_tokens` (0: says
 * nothing) to s0, then any request, and return the work s0 was sent for
 * the silver one (its count then, less its count when the silver one was
 * routed); the output the policy costed is in saw->output. */
static double silver_sent(world *w, costed *saw, const uint32_t *b, size_t n,
                          int64_t max_tokens) {
  prompt(w, b, n, "silver");
  spi_request_unset_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS);
  if (max_tokens)
    spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, max_tokens);
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "s0");
  assert_int_equal(saw->pressure[SPI_POOL_SPOT], SPI_PRESSURE_NORMAL);
  assert_int_equal(saw->pressure[SPI_POOL_ON_DEMAND], SPI_PRESSURE_ELEVATED);
  assert_int_equal(saw->cls_pressure, SPI_PRESSURE_ELEVATED);
  double output = saw->output, before = saw->served[0];
  uint64_t first = d.ticket;
  prompt(w, b, n, "gold"); /* any request: the shadow reads s0's count */
  assert_int_equal(route(w, &d), SPI_OK);
  double sent = saw->served[0] - before;
  saw->output = output;
  finish(w, d.ticket);
  finish(w, first);
  return sent;
}

/* Where bronze asking for 2,000 output tokens goes when its one spot
 * replica, s0, runs on a machine with rebalance advice (it takes no
 * request expected to be longer than router.advised_max_output_tokens,
 * 512), with on-demand d0 at KV usage kv_od: at 0.8 the pressure is
 * elevated, where bronze's plan caps its output at 512; at 0.2 it is
 * normal, and the plan has no cap. The replica's id, or "queue". */
static void advised_bronze(double kv_od, char out[SPI_ID_MAX]) {
  world *w = mk(NULL);
  static const char *const ids[2] = {"s0", "d0"};
  for (int i = 0; i < 2; i++) {
    spi_replica_info ri;
    memset(&ri, 0, sizeof ri);
    ri.struct_size = sizeof ri;
    ri.id = ids[i];
    ri.id_len = 2;
    ri.pool = i ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT;
    ri.usd_per_hour = i ? 4.5 : 1.8;
    ri.max_inflight = 16;
    ri.node = i ? "n1" : "n0";
    ri.node_len = 2;
    assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  }
  load(w, "s0", 0, 0);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.kv_usage = kv_od; /* 0.8: elevated, below every breaker */
  assert_int_equal(spi_replica_report_load(w->e, "d0", 2, &l), SPI_OK);
  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.kind = SPI_NOTICE_REBALANCE;
  n.format = SPI_NOTICE_AWS_INSTANCE_ACTION;
  n.active = 1;
  snprintf(n.node, sizeof n.node, "n0");
  snprintf(n.dedup_key, sizeof n.dedup_key, "rebalance-n0");
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, &n, NULL, 0, &np), SPI_OK);
  uint32_t b[4] = {60000, 60001, 60002, 60003};
  prompt(w, b, 4, "bronze");
  spi_request_unset_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS);
  spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, 2000);
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  snprintf(out, SPI_ID_MAX, "%s", d.pool == SPI_POOL_QUEUE ? "queue" : d.replica_id);
  if (d.ticket) finish(w, d.ticket);
  done(w);
}

/* An advised machine's bound on output reads the output a request can
 * generate: bronze asking for 2,000 tokens, capped at 512 by its plan at
 * elevated pressure, is not too long for it, and is served there rather
 * than queued; at normal pressure, uncapped, it is, and waits. */
static void test_advised_machine_reads_the_capped_output(void **st) {
  (void)st;
  char id[SPI_ID_MAX];
  advised_bronze(0.8, id);
  print_message("bronze asking 2,000, capped at 512: %s\n", id);
  assert_string_equal(id, "s0");
  advised_bronze(0.2, id);
  print_message("bronze asking 2,000, no cap: %s\n", id);
  assert_string_equal(id, "queue");
}

/* The decision's estimated cost prices the output the request can
 * generate: silver asking for 8,000 tokens at elevated KV pressure, whose
 * plan caps it at 1,024, costs what the request asking for 1,024 does
 * (priced at 8,000 before, as though the gateway let it run on). */
static void test_price_reads_the_capped_output(void **st) {
  (void)st;
  costed saw;
  world *w = costed_world(&saw);
  uint32_t b[16];
  for (uint32_t j = 0; j < 16; j++) b[j] = 50000 + j;
  spi_price asked[2]; /* asking for 1,024 and for 8,000 */
  static const int64_t said[2] = {1024, 8000};
  for (int k = 0; k < 2; k++) {
    prompt(w, b, 16, "silver");
    spi_request_unset_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS);
    spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, said[k]);
    memset(&asked[k], 0, sizeof asked[k]);
    asked[k].struct_size = sizeof asked[k];
    assert_int_equal(spi_request_price(w->r, SPI_POOL_SPOT, &asked[k]), SPI_OK);
  }
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK); /* asking for 8,000 */
  assert_string_equal(d.replica_id, "s0");
  assert_int_equal(saw.cls_pressure, SPI_PRESSURE_ELEVATED);
  print_message("estimated $%.9f; asking 1,024 $%.9f, 8,000 $%.9f\n",
                d.est_usd, asked[0].usd, asked[1].usd);
  assert_true(asked[1].usd > asked[0].usd);
  assert_true(d.est_usd == asked[0].usd);
  finish(w, d.ticket);
  done(w);
}

/* A request that names no output is priced at its class's cap, as the
 * ticket counts it ("the cap when the request says neither"): silver at
 * elevated KV pressure, capped at 1,024, costs what asking for 1,024 does
 * (it was priced at the cost model's default of 256, so asking for less
 * cost more than asking for nothing). One that says it expects 0 tokens is
 * counted as one that says nothing, and priced so (it was priced at 0). */
static void price_at_the_cap(int say_zero) {
  costed saw;
  world *w = costed_world(&saw);
  uint32_t b[16];
  for (uint32_t j = 0; j < 16; j++) b[j] = 51000 + j;
  prompt(w, b, 16, "silver");
  spi_request_unset_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS);
  spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, 1024);
  spi_price asked;
  memset(&asked, 0, sizeof asked);
  asked.struct_size = sizeof asked;
  assert_int_equal(spi_request_price(w->r, SPI_POOL_SPOT, &asked), SPI_OK);
  spi_request_unset_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS);
  if (say_zero) spi_request_set_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 0);
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK); /* asking for nothing */
  assert_string_equal(d.replica_id, "s0");
  assert_int_equal(saw.cls_pressure, SPI_PRESSURE_ELEVATED);
  print_message("estimated $%.9f; asking 1,024 $%.9f\n", d.est_usd, asked.usd);
  assert_true(d.est_usd == asked.usd);
  finish(w, d.ticket);
  done(w);
}

static void test_price_reads_the_cap_when_nothing_is_asked(void **st) {
  (void)st;
  price_at_the_cap(0);
  price_at_the_cap(1);
}

/* A replica joining its pool starts at its share of the pool's work, so
 * the guard neither floods nor shuns it: the pool's tokens per stream
 * times its streams. d1, of 48 streams, joins an on-demand pool whose one
 * replica of 16 was sent S tokens: at 3 S (at S, the plain mean, it would
 * be below its share and take the pool's new work until it caught up). */
static void test_replica_joins_at_its_share(void **st) {
  (void)st;
  costed saw;
  world *w = costed_world(&saw);
  uint32_t b[8];
  spi_decision d;
  for (uint32_t k = 0; k < 3; k++) {
    for (uint32_t j = 0; j < 8; j++) b[j] = 40000 + 8 * k + j;
    prompt(w, b, 8, "gold");
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_equal(d.replica_id, "d0");
    finish(w, d.ticket);
  }
  add_sized(w, "d1", SPI_POOL_ON_DEMAND, 48);
  load(w, "d1", 0, 0);
  prompt(w, b, 8, "gold"); /* the shadow reads both counts */
  assert_int_equal(route(w, &d), SPI_OK);
  finish(w, d.ticket);
  print_message("d0 was sent %.0f tokens, d1 joined at %.0f\n", saw.od[0], saw.od[1]);
  assert_true(saw.od[0] > 0);
  assert_true(saw.od[1] == 3 * saw.od[0]);
  done(w);
}

/* A replica is sent the work the policy costed for the request: its prompt
 * and the output expected in the classification the policy chose with.
 * The two pools' KV pressures differ (on-demand elevated, spot normal), so
 * the classification the policy reads (at the worse pool's pressure: the
 * pool is not chosen yet) has silver's elevated plan, a 1,024-token cap,
 * and the plan at the chosen spot pool's pressure has no cap (256
 * expected). The share guard compares the work a replica was sent with
 * what the request adds; counted from another plan than the one it was
 * costed with, a request would be charged 256 tokens and costed 1,024. */
static void test_work_sent_is_the_work_costed(void **st) {
  (void)st;
  costed saw;
  world *w = costed_world(&saw);
  uint32_t b[8];
  size_t n = chain(b, 500, 3);
  double sent = silver_sent(w, &saw, b, n, 0);
  assert_true(saw.output == 1024.0);
  double costed_work = (double)n * TOKENS_PER_BLOCK + saw.output;
  print_message("s0 was sent %.0f tokens; the policy costed %.0f\n", sent,
                costed_work);
  assert_true(sent == costed_work);
  done(w);
}

/* A request asking for more output than its class allows cannot make it:
 * the gateway caps it at the class's max_output_tokens. Its output is
 * costed, and counted in the work its replica was sent, at that cap, not
 * at its max_tokens (silver's elevated plan: 1,024; the request asks for
 * 8,000); below the cap, what it asks for. */
static void test_output_estimate_is_capped_by_the_class(void **st) {
  (void)st;
  costed saw;
  world *w = costed_world(&saw);
  uint32_t b[8];
  size_t n = chain(b, 500, 3);
  double sent = silver_sent(w, &saw, b, n, 8000);
  print_message("s0 was sent %.0f tokens for a %zu-token prompt\n", sent,
                n * TOKENS_PER_BLOCK);
  assert_true(saw.output == 1024.0);
  assert_true(sent == (double)n * TOKENS_PER_BLOCK + 1024.0);
  /* Below the cap the request's own figure counts. */
  sent = silver_sent(w, &saw, b, n, 300);
  assert_true(saw.output == 300.0);
  assert_true(sent == (double)n * TOKENS_PER_BLOCK + 300.0);
  done(w);
}

/* The spot cache-hit rule reads the same bounded output: a request whose
 * class caps its output below policy.cache_hit_spot_max_output_tokens
 * (400) has a short output whatever max_tokens it asks for. */
static void test_cache_hit_rule_reads_the_capped_output(void **st) {
  (void)st;
  world *w = mk_with(NULL, ",\"classifier\":{\"degrade\":{\"silver\":"
                           "[{\"max_output_tokens\":300},{},{},{}]}}");
  add(w, "s0", SPI_POOL_SPOT);
  add(w, "d0", SPI_POOL_ON_DEMAND);
  load(w, "s0", 0, 0);
  load(w, "d0", 0, 0);
  uint32_t b[8];
  size_t n = chain(b, 700, 4);
  spi_decision d;
  prompt(w, b, n, "silver");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "s0");
  finish(w, d.ticket);
  prompt(w, b, n, "silver");
  spi_request_unset_int(w->r, SPI_REQ_EXPECTED_OUTPUT_TOKENS);
  spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, 4000);
  assert_int_equal(route(w, &d), SPI_OK);
  print_message("%s\n", d.reason);
  assert_int_equal(d.max_output_tokens, 300);
  assert_non_null(strstr(d.reason, "spot cache hit with short output"));
  finish(w, d.ticket);
  done(w);
}

/* ------------------------------------------- summaries against every replica
 *
 * The built-in policy reads per pool and tier summaries (the best few by
 * TTFT, the least loaded, the rendezvous winner, the prefix holders) that
 * the lean pass builds without making every replica a candidate. Twin
 * engines get the same random history: on one the built-in policy reads
 * the summaries' named candidates; on the other a shadow policy needs
 * every candidate, so the pass fills them all. Every decision must be the
 * same, across random fleets, churn, stale and future-stamped loads, open
 * breakers and their probes, advice, interruptions that cool a spot pool,
 * model lists, drains, learnt rates and queued prefill. The summaries-only
 * twin ranks through the pool index (lib/pool_index.c), which keeps each
 * replica's standing as it changes: the history also reconfigures both
 * (which rebuilds the index), steps the clock back, and on some seeds gives
 * every replica room for one or two requests, so that many are busy and the
 * rendezvous winner is often not among the kept order's first. SPI_EQ_SEEDS
 * sets how many seeds run (8 by default; the first is SPI_EQ_SEED_BASE). */

typedef struct seen seen;
typedef struct twin {
  world *w[2];       /* [0] summaries only, [1] every candidate */
  seen *saw[2];      /* what each one's shadow policy saw */
  uint64_t rng;
  uint64_t open[2][48]; /* open tickets, the same request on both */
  uint32_t n_open;
  uint32_t n_ids;    /* replica ids "q0".."q{n_ids-1}" */
  uint32_t notices;
  int small;         /* replicas take one or two requests: many are busy */
  int regular;       /* no models lists, fresh loads, nothing that makes a
                        replica an exception to the pool index */
} twin;

static uint32_t rnd(twin *t, uint32_t n) {
  uint64_t x = (t->rng += 0x9e3779b97f4a7c15ULL);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return (uint32_t)((x ^ (x >> 31)) % n);
}

/* What a shadow policy saw: every summary, with the named candidates as
 * ids and the numbers the policy reads, rendered as text. */
typedef struct seen {
  char text[8192];
} seen;

static void seen_cand(seen *o, size_t *at, const spi_route_context *x,
                      int32_t i) {
  if (i < 0) {
    *at += (size_t)snprintf(o->text + *at, sizeof o->text - *at, " -");
    return;
  }
  const spi_candidate *c = &x->candidates[i];
  *at += (size_t)snprintf(o->text + *at, sizeof o->text - *at,
                          " %.*s/%d%d%d%d/%a/%a/%a/%u/%u/%u/%a/%a/%a", (int)c->id_len,
                          c->id, c->eligible, c->probe, c->fresh, c->advised,
                          c->est_ttft_ms,
                          c->est_wait_ms, c->running + c->waiting,
                          c->inflight, c->matched_blocks, c->match_flags, c->kv_usage,
                          c->served_tokens, c->prefill_tokens_per_s);
}

static int seen_choose(void *state, void *inst, const spi_route_context *x,
                       spi_policy_choice *out) {
  (void)state;
  seen *o = inst;
  size_t at = (size_t)snprintf(o->text, sizeof o->text, "%a %a %a %a %d%d %d%d",
                               x->mean_served_tokens[SPI_POOL_SPOT],
                               x->mean_served_tokens[SPI_POOL_ON_DEMAND],
                               x->mean_max_inflight[SPI_POOL_SPOT],
                               x->mean_max_inflight[SPI_POOL_ON_DEMAND],
                               x->shed[1], x->shed[2], x->pressure[1],
                               x->pressure[2]);
  for (size_t k = 0; k < x->n_summaries && at < sizeof o->text - 512; k++) {
    const spi_pool_summary *m = &x->summaries[k];
    at += (size_t)snprintf(o->text + at, sizeof o->text - at, "\n%u %a:",
                           m->usable, x->mean_prefill_wait_ms[k]);
    for (uint32_t j = 0; j < m->n_top; j++) seen_cand(o, &at, x, m->top[j]);
    seen_cand(o, &at, x, m->warm);
    seen_cand(o, &at, x, m->least);
    seen_cand(o, &at, x, m->rendezvous);
  }
  out->pool = SPI_POOL_QUEUE;
  return SPI_OK;
}

/* The twins' configuration; variant v > 0 changes what the pool index
 * keeps per replica (the wait per queued request, the configured prefill
 * rate, the age a load goes stale at, and the decode rate a batch slot's
 * wait is read with), so the index is built again. Odd and even variants
 * differ in the decode rate alone: a change no other one hides. Advice
 * lapses within seconds (router.advised_ttl_ms), so that histories meet
 * machines whose advice ran out with no tick since. */
static void twin_configure(world *w, uint32_t v) {
  char cfg[512];
  snprintf(cfg, sizeof cfg,
           "{\"cache_key\":{\"block_tokens\":%d},"
           "\"router\":{\"load_max_age_ms\":%u,\"error_threshold\":2,"
           "\"error_cooldown_ms\":700,\"pool_cooldown_ms\":1500,"
           "\"ttft_per_queued_ms\":%u,\"prefill_tokens_per_s\":%u,"
           "\"max_fallbacks\":4,\"shadow_policy\":\"seen\","
           "\"advised_ttl_ms\":%u,\"decode_tokens_per_s\":%u}}",
           IDS_PER_BLOCK, 4000 - 1000 * (v / 2 % 3), 50 + 25 * (v / 2 % 2),
           10000 + 5000 * (v / 2 % 4), 1500 + 1000 * (v / 2 % 2),
           30 + 970 * (v % 2));
  int rc = spi_engine_configure(w->e, cfg, strlen(cfg));
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
}

/* An engine on the reference policy with a shadow that records what it
 * saw into o: reading only the summaries, or every candidate. */
static world *mk_twin(int every_candidate, seen *o) {
  world *w = calloc(1, sizeof *w);
  w->now = 1700000000 * SEC;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = clock_fn;
  h.clock_user_data = w;
  assert_int_equal(spi_engine_new(&w->e, &h), SPI_OK);
  spi_policy_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.flags = every_candidate ? 0 : SPI_POLICY_SUMMARIES_ONLY;
  m.configure = state_is_instance;
  m.choose = seen_choose;
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY, "seen",
                                              4, &m, o, NULL),
                   SPI_OK);
  twin_configure(w, 0);
  assert_int_equal(spi_request_new(w->e, &w->r), SPI_OK);
  return w;
}

/* Add or change replica q<i> on both: pool, tier, size, models, machine. */
static void twin_upsert(twin *t, uint32_t i) {
  static const char *const models[] = {"", "", "", "m", "x,m", "x"};
  static const uint32_t caps[] = {1, 2, 4, 16, 64};
  char id[16], node[16], zone[8], type[8];
  snprintf(id, sizeof id, "q%u", i);
  snprintf(node, sizeof node, "n%u", i % 7 == 0 ? i : i % 11);
  snprintf(zone, sizeof zone, "z%u", rnd(t, 2));
  snprintf(type, sizeof type, "t%u", rnd(t, 2));
  const char *mo = t->regular ? "" : models[rnd(t, 6)];
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = strlen(id);
  ri.pool = rnd(t, 2) ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND;
  ri.model_tier = rnd(t, 4) ? SPI_TIER_LARGE : SPI_TIER_SMALL;
  ri.zone = zone;
  ri.zone_len = strlen(zone);
  ri.instance_type = type;
  ri.instance_type_len = strlen(type);
  ri.models = mo;
  ri.models_len = strlen(mo);
  ri.usd_per_hour = ri.pool == SPI_POOL_SPOT ? 1.8 : 4.5;
  ri.max_inflight = t->small ? 1 + rnd(t, 2) : caps[rnd(t, 5)];
  ri.node = node;
  ri.node_len = strlen(node);
  for (int k = 0; k < 2; k++)
    assert_int_equal(spi_replica_upsert(t->w[k]->e, &ri), SPI_OK);
}

/* A load report on q<i>: fresh, old (maybe stale), or stamped ahead. */
static void twin_load(twin *t, uint32_t i) {
  char id[16];
  snprintf(id, sizeof id, "q%u", i);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = rnd(t, 5) ? (double)rnd(t, 20) : 0.5 * rnd(t, 9);
  l.waiting = rnd(t, 3) ? 0 : (double)rnd(t, 6);
  l.kv_usage = rnd(t, 6) ? 0.006 * rnd(t, 101) : 0.97;
  uint32_t age = t->regular ? 0 : rnd(t, 12);
  l.at_ns = age < 8 ? 0
            : age < 11 ? t->w[0]->now - (int64_t)rnd(t, 6000) * MS
                      : t->w[0]->now + (int64_t)rnd(t, 6000) * MS;
  int rc[2];
  for (int k = 0; k < 2; k++)
    rc[k] = spi_replica_report_load(t->w[k]->e, id, strlen(id), &l);
  assert_int_equal(rc[0], rc[1]);
}

/* Finish open ticket j on both with status, and forget it. */
static void twin_finish(twin *t, uint32_t j, int32_t status) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = status;
  res.output_tokens = 10;
  int rc[2];
  for (int k = 0; k < 2; k++)
    rc[k] = spi_ticket_finish(t->w[k]->e, t->open[k][j], &res);
  assert_int_equal(rc[0], rc[1]);
  t->n_open--;
  for (int k = 0; k < 2; k++) t->open[k][j] = t->open[k][t->n_open];
}

/* The same random request on both requests. */
static void twin_request(twin *t) {
  static const char *const classes[] = {"gold", "silver", "bronze", ""};
  uint32_t ids[24 * IDS_PER_BLOCK];
  uint32_t nb = 1 + rnd(t, 24), family = rnd(t, 6), shared = rnd(t, nb + 1);
  uint32_t tail = rnd(t, 1u << 20);
  for (uint32_t b = 0; b < nb; b++)
    for (uint32_t k = 0; k < IDS_PER_BLOCK; k++)
      ids[b * IDS_PER_BLOCK + k] =
          (b < shared ? family * 1000 + b : tail * 64 + b) * 16 + k;
  const char *klass = classes[rnd(t, 4)];
  uint32_t out = rnd(t, 5), sla = rnd(t, 4), tier = rnd(t, 8);
  int stream = (int)rnd(t, 2), model_x = rnd(t, 10) == 0;
  /* One request in eight excludes up to four replicas (a retry, a proxy
   * that offers only some): the index sets them aside for that route. */
  uint32_t nex = rnd(t, 8) == 0 ? 1 + rnd(t, 4) : 0, ex[4];
  for (uint32_t k = 0; k < nex; k++) ex[k] = rnd(t, t->n_ids);
  for (int k = 0; k < 2; k++) {
    spi_request *r = t->w[k]->r;
    spi_request_reset(r);
    spi_request_set_str(r, SPI_REQ_MODEL, model_x ? "x" : "m", 1);
    if (*klass) spi_request_set_str(r, SPI_REQ_CLASS, klass, strlen(klass));
    spi_request_set_int(r, SPI_REQ_REPLAYABLE, out % 2);
    spi_request_set_int(r, SPI_REQ_STREAM, stream);
    spi_request_set_int(r, SPI_REQ_PROMPT_TOKENS, (int64_t)nb * 100);
    if (out < 3)
      spi_request_set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS,
                          out == 0 ? 50 : out == 1 ? 300 : 4000);
    if (sla == 0) spi_request_set_int(r, SPI_REQ_SLA_MS, 400);
    if (sla == 1) spi_request_set_int(r, SPI_REQ_SLA_MS, 9000);
    if (tier == 0) spi_request_set_int(r, SPI_REQ_MODEL_TIER, SPI_TIER_SMALL);
    if (tier == 1) spi_request_set_int(r, SPI_REQ_MODEL_TIER, SPI_TIER_LARGE);
    assert_int_equal(spi_request_set_token_ids(r, ids, nb * IDS_PER_BLOCK),
                     SPI_OK);
    for (uint32_t k = 0; k < nex; k++) {
      char id[16];
      snprintf(id, sizeof id, "q%u", ex[k]);
      assert_int_equal(spi_request_exclude_replica(r, id, strlen(id)), SPI_OK);
    }
  }
}

/* Route the same request on both; the decisions must agree. The ticket is
 * kept open, finished, or given its first token (which teaches a rate). */
static void twin_route(twin *t, uint32_t step) {
  twin_request(t);
  spi_decision d[2];
  int rc[2];
  for (int k = 0; k < 2; k++) {
    memset(&d[k], 0, sizeof d[k]);
    d[k].struct_size = sizeof d[k];
    t->saw[k]->text[0] = '\0';
    rc[k] = spi_route(t->w[k]->r, &d[k]);
  }
  if (strcmp(t->saw[0]->text, t->saw[1]->text))
    print_error("step %u:\n%s\n----\n%s\n", step, t->saw[0]->text,
                t->saw[1]->text);
  assert_string_equal(t->saw[0]->text, t->saw[1]->text);
  if (rc[0] != rc[1] || strcmp(d[0].replica_id, d[1].replica_id) ||
      d[0].reason_code != d[1].reason_code)
    print_error("step %u: rc %d/%d, %s/%s, reason %d/%d\n", step, rc[0], rc[1],
                d[0].replica_id, d[1].replica_id, d[0].reason_code,
                d[1].reason_code);
  assert_int_equal(rc[0], rc[1]);
  assert_int_equal(d[0].pool, d[1].pool);
  assert_string_equal(d[0].replica_id, d[1].replica_id);
  assert_int_equal(d[0].reason_code, d[1].reason_code);
  assert_int_equal(d[0].klass, d[1].klass);
  assert_int_equal(d[0].model_tier, d[1].model_tier);
  assert_int_equal(d[0].matched_blocks, d[1].matched_blocks);
  assert_true(d[0].est_ttft_ms == d[1].est_ttft_ms);
  assert_int_equal(d[0].n_fallbacks, d[1].n_fallbacks);
  for (uint32_t f = 0; f < d[0].n_fallbacks; f++)
    assert_string_equal(d[0].fallback_ids[f], d[1].fallback_ids[f]);
  assert_int_equal(d[0].ticket != 0, d[1].ticket != 0);
  if (!d[0].ticket) return;
  if (t->n_open == 48) twin_finish(t, rnd(t, 48), SPI_TICKET_OK);
  for (int k = 0; k < 2; k++) t->open[k][t->n_open] = d[k].ticket;
  t->n_open++;
  uint32_t what = rnd(t, 10);
  if (what < 3) {
    twin_finish(t, t->n_open - 1, SPI_TICKET_OK);
  } else if (what < 4) {
    twin_finish(t, t->n_open - 1, SPI_TICKET_ERROR);
  } else if (what < 6) {
    int64_t dt = (int64_t)(20 + rnd(t, 200)) * MS;
    for (int k = 0; k < 2; k++) t->w[k]->now += dt;
    int r0 = spi_ticket_first_token(t->w[0]->e, d[0].ticket);
    int r1 = spi_ticket_first_token(t->w[1]->e, d[1].ticket);
    assert_int_equal(r0, r1);
  }
}

/* A notice on a machine of the fleet: advice, or an interruption (which
 * also cools down the spot pool of its replicas). */
static void twin_notice(twin *t) {
  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  uint32_t i = rnd(t, t->n_ids);
  snprintf(n.node, sizeof n.node, "n%u", i % 7 == 0 ? i : i % 11);
  n.kind = rnd(t, 3) ? SPI_NOTICE_REBALANCE : SPI_NOTICE_TERMINATE;
  n.format = SPI_NOTICE_AWS_INSTANCE_ACTION;
  n.active = 1;
  n.received_ns = t->w[0]->now;
  n.deadline_ns = n.kind == SPI_NOTICE_REBALANCE
                      ? t->w[0]->now + (int64_t)rnd(t, 3000) * MS
                      : t->w[0]->now + 120 * SEC;
  snprintf(n.dedup_key, sizeof n.dedup_key, "eq-%u", t->notices++);
  spi_ticket_plan plans[64];
  plans[0].struct_size = sizeof plans[0];
  size_t got[2];
  int rc[2];
  for (int k = 0; k < 2; k++)
    rc[k] = spi_engine_notice(t->w[k]->e, &n, plans, 64, &got[k]);
  assert_int_equal(rc[0], rc[1]);
}

/* One step of the shared history. */
static void twin_step(twin *t, uint32_t step) {
  uint32_t op = rnd(t, 100), i = rnd(t, t->n_ids);
  char id[16];
  snprintf(id, sizeof id, "q%u", i);
  int rc[2];
  if (op < 45) {
    twin_route(t, step);
  } else if (op < 64) {
    twin_load(t, i);
    twin_load(t, rnd(t, t->n_ids));
  } else if (op < 68) {
    /* Some tickets end in error (breakers open), a few are cancelled (a
     * cancelled probe leaves its breaker half-open for the next). */
    static const int32_t ends[] = {SPI_TICKET_OK, SPI_TICKET_OK,
                                   SPI_TICKET_ERROR, SPI_TICKET_OK,
                                   SPI_TICKET_ERROR, SPI_TICKET_CANCELLED};
    if (t->n_open) twin_finish(t, rnd(t, t->n_open), ends[rnd(t, 6)]);
  } else if (op < 71) {
    for (int k = 0; k < 2; k++)
      rc[k] = spi_replica_remove(t->w[k]->e, id, strlen(id));
    assert_int_equal(rc[0], rc[1]);
  } else if (op < 75) {
    twin_upsert(t, i);
    if (rnd(t, 2)) twin_load(t, i);
  } else if (op < 79) {
    int32_t st = rnd(t, 2) ? SPI_REPLICA_DRAINING : SPI_REPLICA_ACTIVE;
    for (int k = 0; k < 2; k++)
      rc[k] = spi_replica_set_state(t->w[k]->e, id, strlen(id), st);
    assert_int_equal(rc[0], rc[1]);
  } else if (op < 82) {
    twin_notice(t);
  } else if (op == 98) {
    uint32_t v = rnd(t, 12);
    for (int k = 0; k < 2; k++) twin_configure(t->w[k], v);
  } else {
    /* Time moves on; now and then a clock steps back. */
    int64_t dt = (int64_t)rnd(t, 150) * MS * (rnd(t, 40) ? 1 : -4);
    for (int k = 0; k < 2; k++) {
      t->w[k]->now += dt;
      if (op == 99) spi_engine_tick(t->w[k]->e);
    }
  }
}

/* One step of a history of regular replicas only: routes, fresh loads,
 * tickets that succeed, time. */
static void twin_step_regular(twin *t, uint32_t step) {
  uint32_t op = rnd(t, 100), i = rnd(t, t->n_ids);
  if (op < 55) {
    twin_route(t, step);
  } else if (op < 75) {
    twin_load(t, i);
  } else if (op < 85) {
    if (t->n_open) twin_finish(t, rnd(t, t->n_open), SPI_TICKET_OK);
  } else if (op < 88) {
    twin_upsert(t, i);
    twin_load(t, i);
  } else {
    int64_t dt = (int64_t)rnd(t, 150) * MS;
    for (int k = 0; k < 2; k++) t->w[k]->now += dt;
  }
}

/* Small fleets of regular replicas, where every cell is named whole and
 * none is an exception: the pass through the index takes every replica
 * as it lies (indexed_whole), the least loaded from the index's blocks. */
static void test_whole_cells_match_every_candidate(void **st) {
  (void)st;
  for (uint64_t seed = 1; seed <= 8; seed++) {
    twin t;
    memset(&t, 0, sizeof t);
    t.rng = seed * 0x9e3779b97f4a7c15ULL;
    seen saw[2];
    t.saw[0] = &saw[0];
    t.saw[1] = &saw[1];
    t.w[0] = mk_twin(0, &saw[0]);
    t.w[1] = mk_twin(1, &saw[1]);
    t.n_ids = 2 + rnd(&t, 14);
    t.small = seed % 2 == 0;
    t.regular = 1;
    for (uint32_t i = 0; i < t.n_ids; i++) {
      twin_upsert(&t, i);
      twin_load(&t, i);
    }
    for (uint32_t step = 0; step < 600; step++) twin_step_regular(&t, step);
    while (t.n_open) twin_finish(&t, 0, SPI_TICKET_OK);
    done(t.w[0]);
    done(t.w[1]);
  }
}

static void test_summaries_match_every_candidate(void **st) {
  (void)st;
  const char *s = getenv("SPI_EQ_SEEDS"), *b = getenv("SPI_EQ_SEED_BASE");
  uint32_t seeds = s ? (uint32_t)strtoul(s, NULL, 10) : 8;
  uint64_t base = b ? strtoull(b, NULL, 10) : 1;
  for (uint64_t seed = base; seed < base + seeds; seed++) {
    twin t;
    memset(&t, 0, sizeof t);
    t.rng = seed * 0x2545f4914f6cdd1dULL;
    seen saw[2];
    t.saw[0] = &saw[0];
    t.saw[1] = &saw[1];
    t.w[0] = mk_twin(0, &saw[0]);
    t.w[1] = mk_twin(1, &saw[1]);
    t.n_ids = 2 + rnd(&t, seed % 4 == 0 ? 300 : 90);
    t.small = seed % 4 == 1;
    for (uint32_t i = 0; i < t.n_ids; i++)
      if (rnd(&t, 10) < 8) {
        twin_upsert(&t, i);
        if (rnd(&t, 8)) twin_load(&t, i);
      }
    for (uint32_t step = 0; step < 600; step++) twin_step(&t, step);
    while (t.n_open) twin_finish(&t, 0, SPI_TICKET_OK);
    done(t.w[0]);
    done(t.w[1]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_universal_block_is_not_affinity),
      cmocka_unit_test(test_twenty_blocks_against_load),
      cmocka_unit_test(test_redundant_prefill_delays_the_queue),
      cmocka_unit_test(test_loaded_pool_keeps_the_prefix),
      cmocka_unit_test(test_hot_prefix_second_copy),
      cmocka_unit_test(test_class_weighs_the_wait),
      cmocka_unit_test(test_queued_prefill_is_a_wait),
      cmocka_unit_test(test_rate_is_learnt),
      cmocka_unit_test(test_share_guard_is_fleet_relative),
      cmocka_unit_test(test_new_work_goes_below_the_mean),
      cmocka_unit_test(test_generated_tokens_are_work),
      cmocka_unit_test(test_over_share_rent_against_a_move),
      cmocka_unit_test(test_cold_prefix_follows_rendezvous_order),
      cmocka_unit_test(test_shares_follow_replica_size),
      cmocka_unit_test(test_replica_joins_at_its_share),
      cmocka_unit_test(test_price_reads_the_capped_output),
      cmocka_unit_test(test_price_reads_the_cap_when_nothing_is_asked),
      cmocka_unit_test(test_advised_machine_reads_the_capped_output),
      cmocka_unit_test(test_few_conversations_keep_their_replicas),
      cmocka_unit_test(test_document_readers_are_not_one_conversation),
      cmocka_unit_test(test_shed_pool_is_not_left_for_the_fallback),
      cmocka_unit_test(test_fallback_leaves_gold_its_batch),
      cmocka_unit_test(test_stale_replica_is_not_kv_pressure),
      cmocka_unit_test(test_unreported_fleet_serves_gold),
      cmocka_unit_test(test_stale_spot_sends_silver_to_on_demand),
      cmocka_unit_test(test_all_stale_reads_as_saturated),
      cmocka_unit_test(test_stale_warm_spot_is_no_cache_hit),
      cmocka_unit_test(test_work_sent_is_the_work_costed),
      cmocka_unit_test(test_output_estimate_is_capped_by_the_class),
      cmocka_unit_test(test_cache_hit_rule_reads_the_capped_output),
      cmocka_unit_test(test_summaries_match_every_candidate),
      cmocka_unit_test(test_whole_cells_match_every_candidate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
