/*
 * test_pool_index.c - the pool index stays exact when routes, ticket
 * reports, load reports and state changes come from several threads at
 * once (lib/pool_index.c: every write marks its slot, and a route that
 * clears a mark reads the slot after).
 *
 * Threads route (opening and finishing tickets, giving first tokens) and
 * report loads and states on one engine, with interruptions that cool
 * spot pools down and replicas changing the models they serve (the index
 * keeps some replicas set aside). Once they have stopped, the same
 * requests are routed with a policy that reads the summaries (through the
 * index) and with one that reads every candidate (a pass over every slot):
 * what the two see must be the same, bit for bit. Run under
 * ThreadSanitizer in CI, it must also show no race. Finished tickets
 * report outputs, so replicas whose batch is full wait for a slot there.
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
#include "spotinfer/spotinfer_module.h"
#include "fake_fleet.h"
#include "metrics_text.h"
#include "pool_index.h"

#define NREP 150
#define ROUTERS 2
#define ROUTES 1500
#define HELD 12

static int64_t fixed_clock(void *ud) {
  (void)ud;
  return 1700000000LL * 1000000000LL;
}

static uint32_t mix(uint64_t *s) {
  uint64_t x = (*s += 0x9e3779b97f4a7c15ULL);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return (uint32_t)(x ^ (x >> 31));
}

/* What a policy saw: the summaries with the numbers of the candidates
 * they name, as text. It answers "queue", so routing it changes nothing. */
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
                          " %.*s/%d%d%d%d/%a/%a/%a/%u/%a/%a/%llx", (int)c->id_len,
                          c->id, c->eligible, c->probe, c->fresh, c->advised,
                          c->est_ttft_ms,
                          c->est_wait_ms, c->running + c->waiting, c->inflight,
                          c->kv_usage, c->served_tokens,
                          (unsigned long long)c->rendezvous);
}

static int seen_choose(void *state, void *inst, const spi_route_context *x,
                       spi_policy_choice *out) {
  (void)state;
  seen *o = inst;
  size_t at = (size_t)snprintf(o->text, sizeof o->text, "%a %a %a %a %d%d",
                               x->mean_served_tokens[SPI_POOL_SPOT],
                               x->mean_served_tokens[SPI_POOL_ON_DEMAND],
                               x->mean_max_inflight[SPI_POOL_SPOT],
                               x->mean_max_inflight[SPI_POOL_ON_DEMAND],
                               x->pressure[1], x->pressure[2]);
  for (size_t k = 0; k < x->n_summaries && at < sizeof o->text - 512; k++) {
    const spi_pool_summary *m = &x->summaries[k];
    at += (size_t)snprintf(o->text + at, sizeof o->text - at, "\n%u:",
                           m->usable);
    for (uint32_t j = 0; j < m->n_top; j++) seen_cand(o, &at, x, m->top[j]);
    seen_cand(o, &at, x, m->least);
    seen_cand(o, &at, x, m->rendezvous);
  }
  out->pool = SPI_POOL_QUEUE;
  return SPI_OK;
}

static void register_seen(spi_engine *e, const char *name, int summaries,
                          seen *o) {
  spi_policy_module m =
      ff_policy_module(seen_choose, summaries ? SPI_POLICY_SUMMARIES_ONLY : 0);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_POLICY, name,
                                              strlen(name), &m, o, NULL),
                   SPI_OK);
}

static void configure(spi_engine *e, const char *policy) {
  char cfg[256];
  snprintf(cfg, sizeof cfg,
           "{\"router\":{\"max_tickets\":1024,\"error_threshold\":2}%s%s%s}",
           policy ? ",\"modules\":{\"policy\":\"" : "", policy ? policy : "",
           policy ? "\"}" : "");
  int rc = spi_engine_configure(e, cfg, strlen(cfg));
  if (rc) print_error("%s\n", spi_engine_errmsg(e));
  assert_int_equal(rc, SPI_OK);
}

/* Request q of a few kinds: prompt family, length, class. */
static void request(spi_request *r, uint32_t q) {
  static const char *const classes[] = {"gold", "silver", "bronze"};
  char prompt[3000];
  size_t n = 600 + (q % 5) * 500;
  for (size_t k = 0; k < n; k++)
    prompt[k] = (char)('a' + (k * 7 + (q % 9) * 3) % 26);
  spi_request_reset(r);
  spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(r, SPI_REQ_PROMPT, prompt, n);
  spi_request_set_str(r, SPI_REQ_CLASS, classes[q % 3], strlen(classes[q % 3]));
  spi_request_set_int(r, SPI_REQ_REPLAYABLE, (q / 3) % 2);
}

/* An engine on the fixed clock, so loads never go stale. */
static spi_engine *fixed_engine(void) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fixed_clock;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  return e;
}

/* Route request q under the policy configured; what that policy saw
 * lands in its seen. */
static void route_seen(spi_request *r, uint32_t q, seen *o) {
  request(r, q);
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  if (o) o->text[0] = '\0';
  assert_int_equal(spi_route(r, &d), SPI_OK);
}

/* Route request q under policy. */
static void route_as(spi_engine *e, spi_request *r, uint32_t q,
                     const char *policy, seen *o) {
  configure(e, policy);
  route_seen(r, q, o);
}

/* What the policy reading the summaries and the one reading every
 * candidate saw of request q must be the same. */
static void assert_saw_same(uint32_t q, seen saw[2]) {
  if (strcmp(saw[0].text, saw[1].text))
    print_error("request %u:\n%s\n----\n%s\n", q, saw[0].text, saw[1].text);
  assert_string_equal(saw[0].text, saw[1].text);
}

/* Request q routed through the index (policy "seen") and through a pass
 * over every slot ("seenall"): both must see the same. */
static void same_as_full(spi_engine *e, spi_request *r, uint32_t q,
                         seen saw[2]) {
  route_as(e, r, q, "seen", &saw[0]);
  route_as(e, r, q, "seenall", &saw[1]);
  assert_saw_same(q, saw);
}

static void load(spi_engine *e, uint32_t i, uint64_t *rng) {
  char id[16];
  snprintf(id, sizeof id, "p%u", i);
  /* One draw at a time: the order of a call's arguments is unspecified. */
  double running = (double)(mix(rng) % 6);
  double waiting = (double)(mix(rng) % 3);
  ff_report(e, id, running, waiting, 0.01 * (mix(rng) % 100));
}

/* Replica "p<i>" of 8 streams: odd ones on-demand, even ones spot. */
static void upsert_even(spi_engine *e, uint32_t i) {
  char id[16];
  snprintf(id, sizeof id, "p%u", i);
  spi_replica_info ri =
      ff_replica(id, i % 2 ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT, 2.0, 8);
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
}

/* n replicas "p0".. of 8 streams each, the pools taking turns, each with
 * a load drawn from seed. */
static void even_fleet(spi_engine *e, uint32_t n, uint64_t seed) {
  uint64_t rng = seed;
  for (uint32_t i = 0; i < n; i++) {
    upsert_even(e, i);
    load(e, i, &rng);
  }
}

/* The model index of model, if one has it (no route is running). */
static const spi_pool_index *model_index(const spi_registry *g,
                                         const char *model) {
  for (unsigned k = 0; k < atomic_load(&g->pix_models_n); k++)
    if (spi__pix_names(g->pix_model[k], model, strlen(model)))
      return g->pix_model[k];
  return NULL;
}

typedef struct worker {
  spi_engine *e;
  uint64_t rng;
} worker;

/* How many of the index's n positions are set in bitmap b. */
static unsigned positions_in(const spi_pool_index *p, const uint64_t *b) {
  unsigned c = 0;
  for (size_t w = 0; w < (p->n + 63) / 64; w++)
    c += (unsigned)__builtin_popcountll(b[w]);
  return c;
}

/* Models that come and go in the concurrent fleet: every replica p<i>
 * with i % 20 == 19 serves one of them (7 in all, so fewer are listed at
 * once than there are model indexes), and the routers move one such
 * replica at a time to the next (rotated, the newest so far), so that
 * more models than there are model indexes come and go while routes ask
 * for the newest few: indexes are given to new models as routes run. */
static atomic_uint rotated;
static void rotating_model(unsigned k, char out[16]) {
  snprintf(out, 16, "r%u", k);
}

static void upsert_rotating(spi_engine *e, uint32_t i, unsigned k);

static void *router(void *arg) {
  worker *w = arg;
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(w->e, &r), SPI_OK);
  uint64_t held[HELD] = {0};
  for (uint32_t i = 0; i < ROUTES; i++) {
    request(r, mix(&w->rng) % 40);
    /* A fifth ask for "x", which has an index of its own; a ninth for one
     * of the models that come and go (rotating_model). */
    if (i % 5 == 4) spi_request_set_str(r, SPI_REQ_MODEL, "x", 1);
    if (i % 9 == 2) {
      char model[16];
      rotating_model(atomic_load(&rotated) - mix(&w->rng) % 4, model);
      spi_request_set_str(r, SPI_REQ_MODEL, model, strlen(model));
    }
    /* Now and then a router moves a replica to the next model. */
    if (i % 40 == 39) {
      unsigned k = atomic_fetch_add(&rotated, 1) + 1;
      upsert_rotating(w->e, 20 * (k % (NREP / 20)) + 19, k);
    }
    /* A seventh exclude two replicas: the index that ranks them sets them
     * aside for that route and marks their slots. */
    for (int k = 0; k < 2 && i % 7 == 3; k++) {
      char id[16];
      snprintf(id, sizeof id, "p%u", (unsigned)(mix(&w->rng) % NREP));
      assert_int_equal(spi_request_exclude_replica(r, id, strlen(id)), SPI_OK);
    }
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    if (spi_route(r, &d) != SPI_OK || !d.ticket) continue;
    uint32_t j = i % HELD;
    spi_ticket_result res;
    memset(&res, 0, sizeof res);
    res.struct_size = sizeof res;
    res.status = mix(&w->rng) % 9 ? SPI_TICKET_OK : SPI_TICKET_ERROR;
    /* Outputs teach each replica its streams' length, so full batches
     * (max_inflight 1-4 against loads of up to 7) wait for a slot. */
    res.output_tokens = 1 + mix(&w->rng) % 400;
    if (held[j]) spi_ticket_finish(w->e, held[j], &res);
    held[j] = d.ticket;
    if (mix(&w->rng) % 3 == 0) spi_ticket_first_token(w->e, d.ticket);
  }
  spi_request_free(r); /* the last tickets stay open */
  return NULL;
}

/* Request q (request()) for model. */
static void route_model(spi_engine *e, spi_request *r, uint32_t q,
                        const char *policy, const char *model, seen *o) {
  configure(e, policy);
  request(r, q);
  spi_request_set_str(r, SPI_REQ_MODEL, model, strlen(model));
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  o->text[0] = '\0';
  assert_int_equal(spi_route(r, &d), SPI_OK);
}

/* Replica p<i> of the concurrent fleet: its pool, tier and size by i, a
 * spot one in one of three zones, serving the models given. */
static void upsert_concurrent(spi_engine *e, uint32_t i, const char *models) {
  static const char *const zones[] = {"z0", "z1", "z2"};
  char id[16];
  snprintf(id, sizeof id, "p%u", i);
  spi_replica_info ri = ff_replica(
      id, i % 2 ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT, 2.0, 1 + i % 4);
  ri.model_tier = i % 3 ? SPI_TIER_LARGE : SPI_TIER_SMALL;
  if (i % 2 == 0) ff_place(&ri, NULL, "t", zones[i / 2 % 3]);
  ri.models = models;
  ri.models_len = strlen(models);
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
}

/* The models lists of the concurrent fleet: most serve the requests'
 * model "m" (regular), a fifth only "x" (set aside), some any. */
static const char *concurrent_models(uint32_t i) {
  static const char *const lists[] = {"x", "m, x", "", "m", "m"};
  return lists[i % 5];
}

/* Replica p<i> (i % 20 == 19) of the concurrent fleet moved to model
 * r<k> (rotating_model). */
static void upsert_rotating(spi_engine *e, uint32_t i, unsigned k) {
  char model[16];
  rotating_model(k, model);
  upsert_concurrent(e, i, model);
}

/* A notice of kind (format as AWS serves it) for the machine p<at>,
 * received at now, with dedup key key; room in its plans for the tickets
 * the tests leave open. */
static void machine_notice(spi_engine *e, uint32_t at, int64_t now,
                           int32_t kind, int32_t format, const char *key) {
  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  snprintf(n.node, sizeof n.node, "p%u", at);
  n.kind = kind;
  n.format = format;
  n.active = 1;
  n.received_ns = now;
  if (kind == SPI_NOTICE_TERMINATE) n.deadline_ns = now + 120000000000LL;
  snprintf(n.dedup_key, sizeof n.dedup_key, "%s", key);
  spi_ticket_plan plans[64];
  plans[0].struct_size = sizeof plans[0];
  size_t got = 0;
  assert_int_equal(spi_engine_notice(e, &n, plans, 64, &got), SPI_OK);
}

/* An interruption notice for the machine p<at>, received at now (dedup
 * key "cut-<k>"): its spot pool, if it has one, cools down. */
static void interrupt(spi_engine *e, uint32_t at, int64_t now, uint32_t k) {
  char key[32];
  snprintf(key, sizeof key, "cut-%u", k);
  machine_notice(e, at, now, SPI_NOTICE_TERMINATE,
                 SPI_NOTICE_AWS_INSTANCE_ACTION, key);
}

static void *reporter(void *arg) {
  worker *w = arg;
  for (uint32_t i = 0; i < 3 * ROUTES; i++) {
    uint32_t at = mix(&w->rng) % NREP;
    load(w->e, at, &w->rng);
    if (i % 97 == 0) {
      char id[16];
      snprintf(id, sizeof id, "p%u", at);
      spi_replica_set_state(w->e, id, strlen(id),
                            i % 2 ? SPI_REPLICA_DRAINING : SPI_REPLICA_ACTIVE);
    }
    /* Now and then a machine is reclaimed, or a replica changes what it
     * serves (a new replica set: the index is rebuilt and its models list
     * chosen again while routes go on). */
    if (i % 601 == 300) interrupt(w->e, at, fixed_clock(NULL), i);
    if (i % 307 == 0 && at % 20 != 19)
      upsert_concurrent(w->e, at, i % 2 ? "x" : concurrent_models(at));
  }
  return NULL;
}

static void test_index_exact_after_concurrent_writes(void **st) {
  (void)st;
  spi_engine *e = fixed_engine();
  seen saw[2];
  register_seen(e, "seen", 1, &saw[0]);
  register_seen(e, "seenall", 0, &saw[1]);
  configure(e, NULL);
  uint64_t rng = 7;
  atomic_store(&rotated, 0);
  for (uint32_t i = 0; i < NREP; i++) {
    if (i % 20 == 19)
      upsert_rotating(e, i, 0);
    else
      upsert_concurrent(e, i, concurrent_models(i));
    load(e, i, &rng);
  }
  worker w[ROUTERS + 1];
  pthread_t th[ROUTERS + 1];
  for (int k = 0; k <= ROUTERS; k++) {
    w[k].e = e;
    w[k].rng = 100 + (uint64_t)k;
    assert_int_equal(
        pthread_create(&th[k], NULL, k < ROUTERS ? router : reporter, &w[k]),
        0);
  }
  for (int k = 0; k <= ROUTERS; k++) pthread_join(th[k], NULL);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  for (uint32_t q = 0; q < 40; q++) {
    same_as_full(e, r, q, saw);
    assert_true(strchr(saw[0].text, '/') != NULL); /* it named replicas */
    route_model(e, r, q, "seen", "x", &saw[0]);
    route_model(e, r, q, "seenall", "x", &saw[1]);
    assert_saw_same(q, saw);
    char model[16];
    rotating_model(atomic_load(&rotated) - q % 4, model);
    route_model(e, r, q, "seen", model, &saw[0]);
    route_model(e, r, q, "seenall", model, &saw[1]);
    assert_saw_same(q, saw);
  }
  /* The routers met on the first index, so its other lanes were opened
   * (on a machine that ran them one at a time, maybe not): each is exact
   * too, lane 0 held as another route would. */
  if (spi__pix_lanes(&e->registry) > 1) {
    assert_true(spi__pix_acquire(e->registry.pix_lane[0]));
    for (uint32_t q = 40; q < 60; q++) same_as_full(e, r, q, saw);
    spi__pix_release(e->registry.pix_lane[0]);
  }
  const spi_pool_index *p = e->registry.pix;
  assert_true(positions_in(p, p->aside) > 0);
  assert_true(positions_in(p, p->reg) > 0);
  /* More models came than there are indexes, and the newest have one. */
  assert_true(atomic_load(&rotated) > SPI_PIX_MODELS + 1);
  assert_int_equal(atomic_load(&e->registry.pix_models_n), SPI_PIX_MODELS);
  char newest[16];
  rotating_model(atomic_load(&rotated), newest);
  assert_non_null(model_index(&e->registry, newest));
  spi_request_free(r);
  spi_engine_free(e);
}

static void route_one(spi_request *r, uint32_t q) {
  request(r, q);
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  assert_int_equal(spi_route(r, &d), SPI_OK);
  assert_true(d.replica_id[0] != '\0');
}

#define WAITS "spotinfer_route_index_waits_total"
static void assert_contention(spi_engine *e, long long took,
                              long long gave_up, long long slot_passes) {
  assert_int_equal(spi_test_metric(e, WAITS "{outcome=\"took\"}"), took);
  assert_int_equal(spi_test_metric(e, WAITS "{outcome=\"gave_up\"}"), gave_up);
  assert_int_equal(spi_test_metric(e, "spotinfer_route_slot_passes_total"), slot_passes);
}

/* A route that finds the index taken waits a bounded number of turns for
 * it: none with 0 turns, every one of them while it stays taken, none at
 * all for a holder some route has already waited out (descheduled, so
 * not about to give it back), and it has the index once a holder gives
 * it back during the wait. The engine's metrics count each wait, so a
 * wait where there should be none fails the test instead of spinning. */
typedef struct holder {
  spi_pool_index *p;
  atomic_int waiting; /* the test's thread is about to wait */
} holder;

static void *give_back_soon(void *arg) {
  holder *h = arg;
  while (!atomic_load(&h->waiting)) spi__spin_turn();
  for (int i = 0; i < 1000; i++) spi__spin_turn(); /* well inside the wait */
  spi__pix_release(h->p);
  return NULL;
}

static void test_take_waits_bounded(void **st) {
  (void)st;
  spi_engine *e = fixed_engine();
  configure(e, NULL); /* its metrics count the waits */
  spi_pool_index *p = e->registry.pix;
  assert_true(spi__pix_take(p, 0));
  assert_false(spi__pix_take(p, 0)); /* taken: no wait */
  assert_int_not_equal(atomic_load(&p->stuck), atomic_load(&p->turn));
  assert_contention(e, 0, 0, 0);
  assert_false(spi__pix_take(p, 100)); /* still taken after the wait */
  assert_int_equal(atomic_load(&p->stuck), atomic_load(&p->turn));
  assert_contention(e, 0, 1, 0);
  /* Waited out: no wait (one would count, after a few milliseconds of
   * turns). */
  assert_false(spi__pix_take(p, (size_t)1 << 18));
  assert_contention(e, 0, 1, 0);
  /* The next holder is waited for again. */
  spi__pix_release(p);
  assert_true(spi__pix_take(p, 0));
  assert_int_not_equal(atomic_load(&p->stuck), atomic_load(&p->turn));
  holder h = {.p = p};
  atomic_init(&h.waiting, 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, give_back_soon, &h), 0);
  atomic_store(&h.waiting, 1);
  /* Bounded, but far longer than the holder keeps it (a loaded machine
   * may deschedule the holder for a while). */
  int took = spi__pix_take(p, (size_t)1 << 40);
  pthread_join(th, NULL);
  assert_true(took);
  assert_contention(e, 1, 1, 0);
  spi__pix_release(p);
  assert_true(spi__pix_take(p, 0));
  spi__pix_release(p);
  spi_engine_free(e);
}

/* What routes did about the index's other holders shows in the metrics: a
 * route that finds the index held waits for it, gives up and reads every
 * slot (a wait and a slot pass); the next does not wait for the same
 * holder (a slot pass only); once it is given back, nothing more counts. */
static void test_contention_counted(void **st) {
  (void)st;
  spi_engine *e = fixed_engine();
  configure(e, NULL);
  even_fleet(e, 40, 5);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  route_one(r, 0);
  assert_contention(e, 0, 0, 0);
  /* Held, as by a route whose thread is not running. */
  spi_pool_index *p = e->registry.pix;
  assert_true(spi__pix_take(p, 0));
  route_one(r, 1);
  assert_contention(e, 0, 1, 1);
  route_one(r, 2);
  assert_contention(e, 0, 1, 2);
  spi__pix_release(p);
  route_one(r, 3);
  route_one(r, 4);
  assert_contention(e, 0, 1, 2);
  spi_request_free(r);
  spi_engine_free(e);
}

/* The index's per-block bounds follow each replica's change without a pass
 * over the block when they can (pool_index.c, block_move): after every
 * route, each block must hold what a pass over its regular replicas makes
 * of it, through loads that rise and fall, tickets held and finished,
 * first tokens, state changes and loads going stale. */
static int64_t moving_now;
static int64_t moving_clock(void *ud) {
  (void)ud;
  return moving_now;
}

/* An engine on the moving clock, which starts at t0. */
static spi_engine *moving_engine(int64_t t0) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = moving_clock;
  moving_now = t0;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  return e;
}

/* moving_engine with the policies "seen" (the summaries) and "seenall"
 * (every candidate) recording into saw[0] and saw[1]. */
static spi_engine *seen_engine(int64_t t0, seen saw[2]) {
  spi_engine *e = moving_engine(t0);
  register_seen(e, "seen", 1, &saw[0]);
  register_seen(e, "seenall", 0, &saw[1]);
  return e;
}

static void test_blocks_follow_every_change(void **st) {
  (void)st;
  spi_engine *e = moving_engine(1700000000LL * 1000000000LL);
  configure(e, NULL);
  enum { N = 200 };
  uint64_t rng = 11, held[HELD] = {0};
  for (uint32_t i = 0; i < N; i++) {
    char id[16];
    snprintf(id, sizeof id, "p%u", i);
    spi_replica_info ri = ff_replica(
        id, i % 2 ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT, 2.0, 1 + i % 4);
    ri.model_tier = i % 3 ? SPI_TIER_LARGE : SPI_TIER_SMALL;
    assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
    load(e, i, &rng);
  }
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_pool_index *p = e->registry.pix;
  uint32_t routed = 0;
  for (uint32_t step = 0; step < 4000; step++) {
    uint32_t op = mix(&rng) % 10, at = mix(&rng) % N;
    char id[16];
    snprintf(id, sizeof id, "p%u", at);
    if (op < 2) {
      load(e, at, &rng);
    } else if (op == 2) {
      spi_replica_set_state(e, id, strlen(id),
                            mix(&rng) % 2 ? SPI_REPLICA_DRAINING
                                          : SPI_REPLICA_ACTIVE);
    } else if (op == 3 && step % 40 == 0) {
      moving_now += 400000000LL; /* some loads go stale */
    }
    request(r, mix(&rng) % 40);
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    if (spi_route(r, &d) == SPI_OK && d.ticket) {
      routed++;
      uint32_t j = mix(&rng) % HELD;
      spi_ticket_result res;
      memset(&res, 0, sizeof res);
      res.struct_size = sizeof res;
      res.status = SPI_TICKET_OK;
      if (held[j]) spi_ticket_finish(e, held[j], &res);
      held[j] = d.ticket;
      if (mix(&rng) % 3 == 0) { /* a first token teaches a rate */
        moving_now += (int64_t)(1 + mix(&rng) % 3) * 1000000;
        spi_ticket_first_token(e, d.ticket);
      }
    }
    assert_true(spi__pix_acquire(p));
    int exact = spi__pix_blocks_exact(p);
    spi__pix_release(p);
    if (!exact) print_error("step %u: a block's bounds are not exact\n", step);
    assert_true(exact);
  }
  assert_true(routed > 1000);
  spi_request_free(r);
  spi_engine_free(e);
}

/* A route whose time is earlier than the last one's (threads read the
 * clock, then take their turn at the index) keeps the index while every
 * regular replica was regular at that time too, and rebuilds it once one
 * was not: here a load stamped ahead, not yet fresh that early. Either
 * way the summaries are the full pass's. */
static void test_clock_back_rebuilds_when_it_must(void **st) {
  (void)st;
  const int64_t t0 = 1700000000LL * 1000000000LL, ms = 1000000;
  seen saw[2];
  spi_engine *e = seen_engine(t0, saw);
  configure(e, NULL); /* load_max_age_ms: 1000 */
  even_fleet(e, 40, 3);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_pool_index *p = e->registry.pix;
  moving_now = t0 + 100 * ms;
  same_as_full(e, r, 0, saw);
  uint64_t built = p->rebuilds;
  moving_now = t0 + 99 * ms; /* back, but every replica was regular then */
  same_as_full(e, r, 1, saw);
  assert_int_equal(p->rebuilds, built);
  /* p3's load stamped 900 ms ahead: fresh from 600 ms on. */
  moving_now = t0 + 700 * ms;
  spi_load l = ff_load(1.0, 0.0, 0.2);
  l.at_ns = t0 + 1600 * ms;
  assert_int_equal(spi_replica_report_load(e, "p3", 2, &l), SPI_OK);
  same_as_full(e, r, 2, saw);
  moving_now = t0 + 650 * ms;
  same_as_full(e, r, 3, saw);
  assert_int_equal(p->rebuilds, built);
  moving_now = t0 + 550 * ms; /* p3's load is not fresh yet */
  same_as_full(e, r, 4, saw);
  assert_int_equal(p->rebuilds, built + 1);
  moving_now = t0 + 800 * ms; /* forward again: fresh, no rebuild */
  same_as_full(e, r, 5, saw);
  assert_int_equal(p->rebuilds, built + 1);
  spi_request_free(r);
  spi_engine_free(e);
}

/* The configuration of test_cooling_pool_kept_not_read: policy, and an
 * interruption's spot pool cooling down for cooldown_ms. */
static void configure_cooldown(spi_engine *e, const char *policy,
                               int cooldown_ms) {
  char cfg[256];
  snprintf(cfg, sizeof cfg,
           "{\"router\":{\"max_tickets\":1024,\"load_max_age_ms\":1000,"
           "\"pool_cooldown_ms\":%d},\"modules\":{\"policy\":\"%s\"}}",
           cooldown_ms, policy);
  int rc = spi_engine_configure(e, cfg, strlen(cfg));
  if (rc) print_error("%s\n", spi_engine_errmsg(e));
  assert_int_equal(rc, SPI_OK);
}

/* same_as_full with configure_cooldown's configuration. */
static void cooled_as_full(spi_engine *e, spi_request *r, uint32_t q,
                           int cooldown_ms, seen saw[2]) {
  static const char *const policies[2] = {"seen", "seenall"};
  for (int k = 0; k < 2; k++) {
    configure_cooldown(e, policies[k], cooldown_ms);
    route_seen(r, q, &saw[k]);
  }
  assert_saw_same(q, saw);
}

static void assert_kinds(const spi_pool_index *p, unsigned reg, unsigned exc,
                         unsigned aside) {
  assert_int_equal(positions_in(p, p->reg), reg);
  assert_int_equal(positions_in(p, p->exc), exc);
  assert_int_equal(positions_in(p, p->aside), aside);
}

/* A spot pool cooling down after an interruption: its other replicas,
 * which no request may use, are kept by the index (PIX_ASIDE) instead of
 * being read whole by every route as exceptions, their KV usage in the
 * sums while their loads are fresh. When the cooldown ends they are
 * regular again with no write to their slots, whether their loads are
 * still fresh or have gone stale by then (regular with no KV usage, as
 * any stale load is). Every route is compared with the full pass. */
static void test_cooling_pool_kept_not_read(void **st) {
  (void)st;
  const int64_t t0 = 1700000000LL * 1000000000LL, ms = 1000000;
  seen saw[2];
  spi_engine *e = seen_engine(t0, saw);
  configure_cooldown(e, "seen", 500);
  /* 24 replicas: the odd ones on-demand, the even ones spot, in zones z0
   * (p0, p4, .., p20) and z1 (p2, p6, .., p22) of one instance type. */
  uint64_t rng = 5;
  for (uint32_t i = 0; i < 24; i++) {
    char id[16];
    snprintf(id, sizeof id, "p%u", i);
    spi_replica_info ri = ff_replica(
        id, i % 2 ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT, 2.0, 8);
    if (i % 2 == 0) ff_place(&ri, NULL, "t", i % 4 == 0 ? "z0" : "z1");
    assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
    load(e, i, &rng);
  }
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_pool_index *p = e->registry.pix;
  moving_now = t0 + 100 * ms;
  cooled_as_full(e, r, 0, 500, saw);
  assert_kinds(p, 24, 0, 0);
  /* p0's machine is reclaimed: z0 cools until t0 + 600 ms. */
  interrupt(e, 0, moving_now, 0);
  cooled_as_full(e, r, 1, 500, saw);
  assert_kinds(p, 18, 0, 5);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT], 11);
  uint64_t built = p->rebuilds;
  moving_now = t0 + 700 * ms; /* over, the loads still fresh: no write */
  cooled_as_full(e, r, 2, 500, saw);
  assert_kinds(p, 23, 0, 0);
  /* p2's machine: z1 cools for 5 s, longer than its loads stay fresh. */
  configure_cooldown(e, "seen", 5000);
  interrupt(e, 2, moving_now, 2);
  cooled_as_full(e, r, 3, 5000, saw);
  assert_kinds(p, 17, 0, 5);
  moving_now = t0 + 1500 * ms; /* every load stale: regular, no KV */
  cooled_as_full(e, r, 4, 5000, saw);
  assert_kinds(p, 17, 0, 5);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT], 0);
  assert_int_equal(p->kv_n[SPI_POOL_ON_DEMAND], 0);
  moving_now = t0 + 5800 * ms; /* over, the loads stale: regular too */
  cooled_as_full(e, r, 5, 5000, saw);
  assert_kinds(p, 22, 0, 0);
  for (uint32_t i = 0; i < 24; i++) load(e, i, &rng);
  cooled_as_full(e, r, 6, 5000, saw);
  assert_kinds(p, 22, 0, 0);
  assert_int_equal(p->rebuilds, built); /* all of it kept, none rebuilt */
  spi_request_free(r);
  spi_engine_free(e);
}

/* A fleet that reports no load (a gateway that does not scrape its
 * servers' metrics) and one whose loads all go stale (a metrics outage):
 * each load reads as saturated until the next report, and the index keeps
 * those replicas regular, out of the KV sums, instead of handing every one
 * to every route to read whole. A report makes a replica fresh again.
 * Every route is compared with the full pass; the index is never built
 * again and no route reads every slot. */
static void test_stale_loads_kept_regular(void **st) {
  (void)st;
  const int64_t t0 = 1700000000LL * 1000000000LL, ms = 1000000;
  seen saw[2];
  spi_engine *e = seen_engine(t0, saw);
  configure(e, NULL); /* load_max_age_ms: 1000 */
  for (uint32_t i = 0; i < 40; i++) upsert_even(e, i); /* no load */
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_pool_index *p = e->registry.pix;
  moving_now = t0 + 100 * ms;
  for (uint32_t q = 0; q < 4; q++) same_as_full(e, r, q, saw);
  assert_kinds(p, 40, 0, 0);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT] + p->kv_n[SPI_POOL_ON_DEMAND], 0);
  uint64_t built = p->rebuilds;
  uint64_t rng = 17;
  for (uint32_t i = 0; i < 40; i++) load(e, i, &rng);
  same_as_full(e, r, 4, saw);
  assert_kinds(p, 40, 0, 0);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT], 20);
  assert_int_equal(p->kv_n[SPI_POOL_ON_DEMAND], 20);
  moving_now = t0 + 1200 * ms; /* every load stale */
  for (uint32_t q = 5; q < 9; q++) same_as_full(e, r, q, saw);
  assert_kinds(p, 40, 0, 0);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT] + p->kv_n[SPI_POOL_ON_DEMAND], 0);
  load(e, 3, &rng); /* p3, on-demand, reports again */
  same_as_full(e, r, 9, saw);
  assert_kinds(p, 40, 0, 0);
  assert_int_equal(p->kv_n[SPI_POOL_ON_DEMAND], 1);
  moving_now = t0 + 2300 * ms; /* and goes stale again */
  same_as_full(e, r, 10, saw);
  assert_int_equal(p->kv_n[SPI_POOL_ON_DEMAND], 0);
  /* p4 (spot) reports a load stamped 1.5 s ahead (a clock mix-up): stale
   * until it may be fresh, at - 999.999999 ms, and regular throughout. */
  spi_load ahead;
  memset(&ahead, 0, sizeof ahead);
  ahead.struct_size = sizeof ahead;
  ahead.running = 1;
  ahead.kv_usage = 0.5;
  ahead.at_ns = moving_now + 1500 * ms;
  assert_int_equal(spi_replica_report_load(e, "p4", 2, &ahead), SPI_OK);
  same_as_full(e, r, 11, saw);
  assert_kinds(p, 40, 0, 0);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT], 0);
  moving_now += 500 * ms; /* age -1000 ms: still stale */
  same_as_full(e, r, 12, saw);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT], 0);
  moving_now += 1; /* fresh from this nanosecond, with no write */
  same_as_full(e, r, 13, saw);
  assert_kinds(p, 40, 0, 0);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT], 1);
  assert_int_equal(p->rebuilds, built);
  assert_int_equal(
      spi_test_metric(e, "spotinfer_route_slot_passes_total"), 0);
  spi_request_free(r);
  spi_engine_free(e);
}

/* Request q routed by the built-in policy onto replica p<target> of the
 * first n (every other one excluded); its ticket, open. */
static uint64_t ticket_open_on(spi_engine *e, spi_request *r, uint32_t q,
                               uint32_t target, uint32_t n) {
  configure(e, NULL);
  request(r, q);
  spi_request_set_str(r, SPI_REQ_CLASS, "gold", 4);
  for (uint32_t i = 0; i < n; i++) {
    char id[16];
    snprintf(id, sizeof id, "p%u", i);
    if (i != target)
      assert_int_equal(spi_request_exclude_replica(r, id, strlen(id)), SPI_OK);
  }
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  assert_int_equal(spi_route(r, &d), SPI_OK);
  char want[16];
  snprintf(want, sizeof want, "p%u", target);
  assert_string_equal(d.replica_id, want);
  return d.ticket;
}

static void ticket_finish(spi_engine *e, uint64_t ticket, int status) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = status;
  assert_int_equal(spi_ticket_finish(e, ticket, &res), SPI_OK);
}

/* Request q routed by the built-in policy onto replica p<target> of the
 * first n (every other one excluded), its ticket finished as status. */
static void ticket_on(spi_engine *e, spi_request *r, uint32_t q,
                      uint32_t target, uint32_t n, int status) {
  ticket_finish(e, ticket_open_on(e, r, q, target, n), status);
}

/* A replica whose breaker opened after errors is usable by no request
 * until its cooldown ends (router.error_cooldown_ms): the index sets it
 * aside, its KV usage kept, instead of handing it to every route to read
 * whole. Once the cooldown ends it is half-open, the probe's to take: an
 * exception, as any breaker not closed that a route may use. With the
 * probe out it is set aside again until the probe ends; a cancelled
 * probe leaves it half-open, and after one succeeds it is regular again. Every route is compared with the
 * full pass. */
static void test_open_breaker_set_aside(void **st) {
  (void)st;
  const int64_t t0 = 1700000000LL * 1000000000LL, ms = 1000000;
  seen saw[2];
  spi_engine *e = seen_engine(t0, saw);
  configure(e, NULL); /* error_threshold: 2; error_cooldown_ms: 10000 */
  even_fleet(e, 8, 5);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_pool_index *p = e->registry.pix;
  moving_now = t0 + 100 * ms;
  same_as_full(e, r, 0, saw);
  assert_kinds(p, 8, 0, 0);
  ticket_on(e, r, 1, 3, 8, SPI_TICKET_ERROR);
  ticket_on(e, r, 2, 3, 8, SPI_TICKET_ERROR); /* p3's breaker opens */
  for (uint32_t q = 3; q < 6; q++) {
    same_as_full(e, r, q, saw);
    assert_kinds(p, 7, 0, 1);
  }
  /* p3's load, on-demand, still counts */
  assert_int_equal(p->kv_n[SPI_POOL_ON_DEMAND], 4);
  moving_now = t0 + 10200 * ms; /* the cooldown is over: half-open */
  same_as_full(e, r, 6, saw);
  assert_kinds(p, 7, 1, 0);
  /* The probe out: usable by none until it ends, set aside again. */
  uint64_t probe = ticket_open_on(e, r, 7, 3, 8);
  same_as_full(e, r, 8, saw);
  assert_kinds(p, 7, 0, 1);
  /* Cancelled, it says nothing of the replica: half-open again, the
   * next probe's (no word the entry keeps changed, only the mark). */
  ticket_finish(e, probe, SPI_TICKET_CANCELLED);
  same_as_full(e, r, 9, saw);
  assert_kinds(p, 7, 1, 0);
  ticket_on(e, r, 10, 3, 8, SPI_TICKET_OK); /* the probe succeeds */
  same_as_full(e, r, 11, saw);
  assert_kinds(p, 8, 0, 0);
  spi_request_free(r);
  spi_engine_free(e);
}

/* Rebalance advice for machine p<at>, received at now: no long request
 * there until it lapses (router.advised_ttl_ms later). */
static void advise(spi_engine *e, uint32_t at, int64_t now) {
  char key[32];
  snprintf(key, sizeof key, "advice-%u", at);
  machine_notice(e, at, now, SPI_NOTICE_REBALANCE, SPI_NOTICE_AWS_REBALANCE,
                 key);
}

/* Request q asking for out output tokens (0: it says nothing, a short
 * request), excluding replica p<excl> (none when excl < 0), routed through
 * the index ("seen") and through a pass over every slot ("seenall"), with
 * advice lasting 2 s: both must see the same. */
static void advised_as_full(spi_engine *e, spi_request *r, uint32_t q,
                            int64_t out, int excl, seen saw[2]) {
  static const char *const policies[2] = {"seen", "seenall"};
  for (int k = 0; k < 2; k++) {
    char cfg[256];
    snprintf(cfg, sizeof cfg,
             "{\"router\":{\"max_tickets\":1024,\"advised_ttl_ms\":2000},"
             "\"modules\":{\"policy\":\"%s\"}}",
             policies[k]);
    assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
    request(r, q);
    if (out) spi_request_set_int(r, SPI_REQ_EXPECTED_OUTPUT_TOKENS, out);
    if (excl >= 0) {
      char id[16];
      snprintf(id, sizeof id, "p%d", excl);
      assert_int_equal(spi_request_exclude_replica(r, id, strlen(id)), SPI_OK);
    }
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    saw[k].text[0] = '\0';
    assert_int_equal(spi_route(r, &d), SPI_OK);
  }
  assert_saw_same(q, saw);
}

/* Short and long requests (advised_as_full), none excluding a replica,
 * from request q on. */
static void advised_both(spi_engine *e, spi_request *r, uint32_t q,
                         seen saw[2]) {
  advised_as_full(e, r, q, 0, -1, saw);
  advised_as_full(e, r, q + 1, 4000, -1, saw);
}

/* Rebalance advice on a sixth of the fleet, as a cloud sends it to many
 * machines of a capacity pool at once: the index keeps those replicas
 * (PIX_ADV) instead of handing every one to every route to read whole. A
 * long request meets them in the KV sums alone; one that is not long
 * takes them from what the index keeps, at the TTFT with the penalty,
 * unless it excludes them. A ticket there reads the entry again; its load
 * going stale keeps it advised, out of the KV sums; the advice lapsing
 * makes it regular with no write to its slot. Every route is compared
 * with the full pass; the index is never built again. */
static void test_advised_kept_not_read(void **st) {
  (void)st;
  const int64_t t0 = 1700000000LL * 1000000000LL, ms = 1000000;
  seen saw[2];
  spi_engine *e = seen_engine(t0, saw);
  even_fleet(e, 24, 9);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_pool_index *p = e->registry.pix;
  moving_now = t0 + 100 * ms;
  advised_both(e, r, 0, saw);
  assert_kinds(p, 24, 0, 0);
  uint64_t built = p->rebuilds;
  static const uint32_t advised[] = {0, 3, 4, 7}; /* spot and on-demand */
  for (int k = 0; k < 4; k++) advise(e, advised[k], moving_now);
  for (uint32_t q = 2; q < 10; q += 2) advised_both(e, r, q, saw);
  assert_kinds(p, 20, 0, 0);
  assert_int_equal(positions_in(p, p->adv), 4);
  assert_int_equal(p->adv_n, 4);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT] + p->kv_n[SPI_POOL_ON_DEMAND], 24);
  advised_as_full(e, r, 10, 0, 3, saw); /* p3 excluded */
  advised_as_full(e, r, 11, 0, 4, saw); /* p4 excluded */
  ticket_on(e, r, 12, 3, 24, SPI_TICKET_OK); /* a short one on p3 */
  advised_both(e, r, 13, saw);
  assert_int_equal(p->adv_n, 4);
  moving_now = t0 + 1200 * ms; /* every load stale: still advised */
  advised_both(e, r, 15, saw);
  assert_int_equal(p->adv_n, 4);
  assert_int_equal(p->kv_n[SPI_POOL_SPOT] + p->kv_n[SPI_POOL_ON_DEMAND], 0);
  uint64_t rng = 21;
  for (uint32_t i = 0; i < 24; i++) load(e, i, &rng);
  advised_both(e, r, 17, saw);
  assert_kinds(p, 20, 0, 0);
  moving_now = t0 + 2200 * ms; /* the advice lapsed: no write */
  advised_both(e, r, 19, saw);
  assert_kinds(p, 24, 0, 0);
  assert_int_equal(p->adv_n, 0);
  assert_int_equal(p->rebuilds, built);
  assert_int_equal(
      spi_test_metric(e, "spotinfer_route_slot_passes_total"), 0);
  spi_request_free(r);
  spi_engine_free(e);
}

/* Routes on several threads share the registry's first index in lanes:
 * a route that finds the first lane taken asks for the others, which the
 * first lane's holder opens at its next sync; from then on each lane is
 * kept from the same marks, handed on between them. Holding lane 0 here,
 * as another thread's route would, makes a route take lane 1, and holding
 * lane 1 makes it take lane 0; with neither held, it takes lane 1 once
 * this thread has had it (each lane's turns counted). Every
 * route through either lane is compared with the full pass, with load
 * reports, tickets and advice in between; lane 1 is built once and then
 * kept from the marks alone. */
static void test_lanes_kept_from_the_same_marks(void **st) {
  (void)st;
  const int64_t t0 = 1700000000LL * 1000000000LL, ms = 1000000;
  seen saw[2];
  spi_engine *e = seen_engine(t0, saw);
  configure(e, NULL);
  even_fleet(e, 32, 11); /* a request excludes up to 32 (ticket_on) */
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  spi_registry *g = &e->registry;
  spi_pool_index *l0 = g->pix_lane[0], *l1 = g->pix_lane[1];
  moving_now = t0 + 100 * ms;
  same_as_full(e, r, 0, saw);
  assert_int_equal(spi__pix_lanes(g), 1);
  assert_true(spi__pix_acquire(l0)); /* another route has it */
  same_as_full(e, r, 1, saw);        /* waits, reads every slot, asks */
  spi__pix_release(l0);
  assert_int_equal(spi__pix_lanes(g), 1);
  assert_int_equal(
      spi_test_metric(e, "spotinfer_route_slot_passes_total"), 1);
  same_as_full(e, r, 2, saw); /* lane 0's sync opens lane 1 */
  assert_int_equal(spi__pix_lanes(g), 2);
  int had1 = 0; /* lane 1 was this thread's */
  uint64_t rng = 13;
  for (uint32_t q = 3; q < 120; q++) {
    uint32_t i = mix(&rng) % 32, what = mix(&rng) % 4;
    if (what == 0) load(e, i, &rng);
    if (what == 1) /* gold, on an on-demand replica */
      ticket_on(e, r, q + 1000, i | 1, 32, SPI_TICKET_OK);
    if (what == 2 && q % 16 == 2) advise(e, i, moving_now);
    if (what == 3) moving_now += 40 * ms;
    /* Another route has lane 0, lane 1 or neither: this one takes the
     * other, or with neither held lane 1 once it has had it (no other
     * thread took it since). */
    int hold = (int)(mix(&rng) % 3);
    spi_pool_index *held = hold == 1 ? l0 : hold == 2 ? l1 : NULL;
    if (held) assert_true(spi__pix_acquire(held));
    unsigned turns0 = atomic_load(&l0->turn), turns1 = atomic_load(&l1->turn);
    same_as_full(e, r, q, saw);
    spi_pool_index *took = held == l0 ? l1 : held == l1 ? l0 : had1 ? l1 : l0;
    assert_int_equal(atomic_load(&l0->turn) - turns0, took == l0);
    assert_int_equal(atomic_load(&l1->turn) - turns1, took == l1);
    had1 |= took == l1;
    if (held) spi__pix_release(held);
  }
  assert_int_equal(l1->rebuilds, 1);
  assert_int_equal(
      spi_test_metric(e, "spotinfer_route_slot_passes_total"), 1);
  assert_true(spi__pix_blocks_exact(l0));
  assert_true(spi__pix_blocks_exact(l1));
  spi_request_free(r);
  spi_engine_free(e);
}

/* Replica p<i> of 8 streams (odd: on-demand, even: spot) serving models. */
static void upsert_serving(spi_engine *e, uint32_t i, const char *models) {
  char id[16];
  snprintf(id, sizeof id, "p%u", i);
  spi_replica_info ri =
      ff_replica(id, i % 2 ? SPI_POOL_ON_DEMAND : SPI_POOL_SPOT, 2.0, 8);
  ri.models = models;
  ri.models_len = strlen(models);
  assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
}

/* Requests q0..q1-1 for models taking turns, each through the index and
 * through every slot; then how many replicas the index holds regular, as
 * exceptions and set aside. */
static void models_routed(spi_engine *e, spi_request *r, uint32_t q0,
                          uint32_t q1, seen saw[2], unsigned reg,
                          unsigned exc, unsigned aside) {
  static const char *const models[] = {"m", "big", "x", "none", ""};
  const spi_pool_index *p = e->registry.pix;
  for (uint32_t q = q0; q < q1; q++) {
    route_model(e, r, q, "seen", models[q % 5], &saw[0]);
    route_model(e, r, q, "seenall", models[q % 5], &saw[1]);
    assert_saw_same(q, saw);
    assert_kinds(p, reg, exc, aside);
  }
}

/* Replicas that say which models they serve: of the lists they have, the
 * one that the most replicas serve every model of is the index's, and
 * those replicas are regular, as those with no list (a fleet of one model
 * that says so keeps the index); those that serve none of its models are
 * set aside, those that serve some are exceptions. A request for a model
 * that list does not name, or for none, reads every slot, and is not
 * counted as a route that found the index in use. Every route is compared
 * with the full pass. */
static void test_models_lists_kept_regular(void **st) {
  (void)st;
  seen saw[2];
  spi_engine *e = seen_engine(1700000000LL * 1000000000LL, saw);
  configure(e, NULL);
  /* 30 replicas: p0..p19 serve "m, big" (as written, with a blank),
   * p20..p22 "big, y", p23..p25 "x", p26..p29 any model. */
  static const char *const lists[] = {"m, big", "big, y", "x", ""};
  uint64_t rng = 9;
  for (uint32_t i = 0; i < 30; i++) {
    upsert_serving(e, i, lists[i < 20 ? 0 : i < 23 ? 1 : i < 26 ? 2 : 3]);
    load(e, i, &rng);
  }
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  models_routed(e, r, 0, 40, saw, 24, 3, 3);
  assert_int_equal(
      spi_test_metric(e, "spotinfer_route_slot_passes_total"), 0);
  /* The requests for "x" went to an index of their own: regular there are
   * the replicas that serve "x", set aside the others. "none", which no
   * list names, took no index. */
  const spi_registry *g = &e->registry;
  assert_int_equal(atomic_load(&g->pix_models_n), 1);
  assert_kinds(g->pix_model[0], 7, 0, 23);
  /* p10..p29 made to serve "x": now most lists are "x". */
  for (uint32_t i = 10; i < 30; i++) upsert_serving(e, i, "x");
  models_routed(e, r, 40, 60, saw, 20, 0, 10);
  /* p0..p4 serve "x, m": every model of "x" and more, so regular too. */
  for (uint32_t i = 0; i < 5; i++) upsert_serving(e, i, "x, m");
  models_routed(e, r, 60, 80, saw, 25, 0, 5);
  /* "m" and "big" have an index each now; "m"'s holds "x, m" and
   * "m, big" regular. */
  assert_int_equal(atomic_load(&g->pix_models_n), 3);
  const spi_pool_index *m = spi__pix_for_model(
      &e->registry, atomic_load(&e->registry.set), "m", 1);
  assert_non_null(m);
  assert_kinds(m, 10, 0, 20);
  spi_request_free(r);
  spi_engine_free(e);
}

/* A fleet of 20 models, two replicas each: a model index is made for
 * each name the lists bring, up to SPI_PIX_MODELS (none before any list
 * names a model), and handed to the models requests ask for in turn; the
 * first index serves the list it chose ("m0", the first of equals), 15
 * more models get one each, and the last four read every slot. Every
 * route is compared with the full pass, and none is counted as a slot
 * pass. */
static void test_model_indexes_made_as_named(void **st) {
  (void)st;
  seen saw[2];
  spi_engine *e = seen_engine(1700000000LL * 1000000000LL, saw);
  configure(e, NULL);
  const spi_registry *g = &e->registry;
  assert_int_equal(atomic_load(&g->pix_made_n), 0);
  uint64_t rng = 21;
  for (uint32_t i = 0; i < 40; i++) {
    char list[16];
    snprintf(list, sizeof list, "m%u", i % 20);
    upsert_serving(e, i, list);
    load(e, i, &rng);
  }
  assert_int_equal(atomic_load(&g->pix_made_n), SPI_PIX_MODELS);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  for (uint32_t q = 0; q < 80; q++) {
    char model[16];
    snprintf(model, sizeof model, "m%u", q % 20);
    route_model(e, r, q, "seen", model, &saw[0]);
    route_model(e, r, q, "seenall", model, &saw[1]);
    assert_saw_same(q, saw);
  }
  assert_int_equal(atomic_load(&g->pix_models_n), SPI_PIX_MODELS);
  for (uint32_t k = 0; k < SPI_PIX_MODELS; k++) {
    char model[16];
    snprintf(model, sizeof model, "m%u", k + 1);
    assert_int_equal(g->pix_model[k]->model_len, strlen(model));
    assert_memory_equal(g->pix_model[k]->model, model, strlen(model));
    assert_kinds(g->pix_model[k], 2, 0, 38);
  }
  assert_int_equal(
      spi_test_metric(e, "spotinfer_route_slot_passes_total"), 0);
  spi_request_free(r);
  spi_engine_free(e);
}

/* The wide loops over a block (rdv_wide.c with AVX-512, pix_avx2.c with
 * AVX2) give the scalar loops' bits: a block's TTFTs ((base + wait) +
 * (cold * ms) * slow, never fused) and which are at most a threshold
 * (false for a NaN), on every length. */
typedef void (*ttft_fn)(double *, const double *, const double *,
                        const double *, size_t, double, double);
typedef uint64_t (*under_fn)(const double *, size_t, double);

/* Requests for each of the 20 models from q0 on, through the index and
 * through the full pass: both must see the same. */
static void twenty_models_routed(spi_engine *e, spi_request *r, uint32_t q0,
                                 seen saw[2]) {
  for (uint32_t q = q0; q < q0 + 40; q++) {
    char model[16];
    snprintf(model, sizeof model, "m%u", q % 20);
    route_model(e, r, q, "seen", model, &saw[0]);
    route_model(e, r, q, "seenall", model, &saw[1]);
    assert_saw_same(q, saw);
  }
}

/* Models come and go: with every model index taken, one whose model no
 * replica lists any more (its replicas moved to another model) is given
 * to a model that has none, instead of that model's requests reading
 * every slot for good; the models still listed keep theirs. A route that
 * found the index under its old name reads every slot. Every route is
 * compared with the full pass. */
static void test_model_indexes_given_again(void **st) {
  (void)st;
  seen saw[2];
  spi_engine *e = seen_engine(1700000000LL * 1000000000LL, saw);
  configure(e, NULL);
  const spi_registry *g = &e->registry;
  uint64_t rng = 23;
  for (uint32_t i = 0; i < 40; i++) {
    char list[16];
    snprintf(list, sizeof list, "m%u", i % 20);
    upsert_serving(e, i, list);
    load(e, i, &rng);
  }
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  twenty_models_routed(e, r, 0, saw);
  assert_int_equal(atomic_load(&g->pix_models_n), SPI_PIX_MODELS);
  assert_null(model_index(g, "m16"));
  /* m1..m4's replicas serve m16..m19 now. */
  for (uint32_t i = 1; i <= 4; i++) {
    char list[16];
    snprintf(list, sizeof list, "m%u", i + 15);
    upsert_serving(e, i, list);
    upsert_serving(e, i + 20, list);
  }
  twenty_models_routed(e, r, 40, saw);
  /* Each of the 16 models listed now has an index, the first (whose list
   * is one with the most replicas now, four) or a model index of its own;
   * those no list names have none. */
  for (uint32_t k = 0; k <= 19; k++) {
    char model[16];
    snprintf(model, sizeof model, "m%u", k);
    const spi_pool_index *q = model_index(g, model);
    int first = spi__pix_serves(g->pix, model, strlen(model));
    uint32_t served_by = k >= 16 ? 4 : 2;
    if (k >= 1 && k <= 4) {
      assert_true(q == NULL && !first);
    } else if (!first) {
      assert_non_null(q);
      assert_kinds(q, served_by, 0, 40 - served_by);
    }
  }
  /* A route that found m18's index by its key after it was given to
   * another model (the name checked once taken) reads every slot. */
  spi_pool_index *q18 = (spi_pool_index *)model_index(g, "m18");
  assert_non_null(q18);
  memcpy(q18->model, "m15", 3); /* as a rename leaves it */
  q18->version = 0;
  route_model(e, r, 80, "seen", "m18", &saw[0]);
  route_model(e, r, 80, "seenall", "m18", &saw[1]);
  assert_saw_same(80, saw);
  memcpy(q18->model, "m18", 3);
  spi_request_free(r);
  spi_engine_free(e);
}

/* Which wide loops can run here: AVX-512 when the index uses it (the
 * build and the CPU have it); AVX2 wherever the CPU has it (the index uses
 * those loops only on CPUs without AVX-512, but the tests check them on
 * any). Skips the test when neither can. */
static void wide_loops(int *wide, int *avx2) {
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  *wide = e->registry.pix->wide;
  *avx2 = e->registry.pix->avx2;
  spi_engine_free(e);
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  *avx2 |= __builtin_cpu_supports("avx2");
#endif
  if (!*wide && !*avx2) skip();
}

/* A block of 1..64 positions' TTFT inputs, and a route's base and cold
 * tokens, drawn from rng; the number of positions. */
static size_t random_block(uint64_t *rng, double *wait, double *ms,
                           double *slow, double *base, double *cold) {
  size_t n = 1 + mix(rng) % 64;
  *base = (double)(mix(rng) % 1000) / 7.0;
  *cold = (double)(mix(rng) % 50000);
  for (size_t i = 0; i < n; i++) {
    wait[i] = (double)(mix(rng) % 100000) / 3.0;
    ms[i] = 1000.0 / (double)(500 + mix(rng) % 40000);
    slow[i] = 1.0 + (double)(mix(rng) % 9) / (double)(1 + mix(rng) % 7);
  }
  return n;
}

static void block_loops_same_bits(ttft_fn ttft, under_fn under) {
  uint64_t rng = 5;
  double wait[64], ms[64], slow[64], t[64];
  for (uint32_t round = 0; round < 4000; round++) {
    double base, cold;
    size_t n = random_block(&rng, wait, ms, slow, &base, &cold);
    ttft(t, wait, ms, slow, n, base, cold);
    for (size_t i = 0; i < n; i++) {
      double want = (base + wait[i]) + (cold * ms[i]) * slow[i];
      assert_memory_equal(&t[i], &want, sizeof want);
    }
    if (round % 4 == 0) t[mix(&rng) % n] = 0.0 / 0.0; /* a NaN: never under */
    double thr = t[mix(&rng) % n];
    uint64_t want = 0;
    for (size_t i = 0; i < n; i++) want |= (uint64_t)(t[i] <= thr) << i;
    assert_true(under(t, n, thr) == want);
  }
}

/* The one pass of both (spi__pix_ttft_under_avx2): the scalar loops'
 * TTFTs, bit for bit, and their mask, NaNs never under. */
static void ttft_under_same_bits(void) {
  uint64_t rng = 7;
  double wait[64], ms[64], slow[64], t[64], want_t[64];
  for (uint32_t round = 0; round < 4000; round++) {
    double base, cold;
    size_t n = random_block(&rng, wait, ms, slow, &base, &cold);
    if (round % 4 == 0) wait[mix(&rng) % n] = 0.0 / 0.0; /* a NaN TTFT */
    spi__pix_ttft_from(0, want_t, wait, ms, slow, n, base, cold);
    double thr = want_t[mix(&rng) % n];
    uint64_t want = spi__pix_under_from(0, want_t, n, thr);
    uint64_t got = spi__pix_ttft_under_avx2(t, wait, ms, slow, n, base, cold, thr);
    assert_memory_equal(t, want_t, n * sizeof t[0]);
    assert_true(got == want);
  }
}

static void test_wide_block_loops_same_bits(void **st) {
  (void)st;
  int wide, avx2;
  wide_loops(&wide, &avx2);
  if (wide) block_loops_same_bits(spi__pix_ttft_avx512, spi__pix_under_avx512);
  if (avx2) block_loops_same_bits(spi__pix_ttft_avx2, spi__pix_under_avx2);
  if (avx2) ttft_under_same_bits();
}

/* The rendezvous order made with the wide loops (rdv_wide.c with
 * AVX-512, pix_avx2.c with AVX2) is the one made one by one: the same
 * replicas kept in each cell, in the same order, with the same weights, on
 * sets of every size to 600, cells of every mix (-1: none), id hashes with
 * repeats (ties go to the lower position), and orders already part full. */
typedef void (*rdv_fn)(pix_rdv *, pix_rdv_acc *, const spi_pool_index *, uint64_t);

static void rdv_same_order(spi_pool_index *p, rdv_fn wide) {
  uint64_t rng = 11;
  for (uint32_t round = 0; round < 3000; round++) {
    size_t n = 1 + mix(&rng) % 600;
    int cells = 1 + (int)(mix(&rng) % SPI_SUMMARY_CELLS);
    p->n = n;
    for (size_t i = 0; i < n; i++) {
      p->id_hash_at[i] = round % 5 == 0 ? mix(&rng) % 8 : mix(&rng);
      p->cell_at[i] = (int8_t)((int)(mix(&rng) % (uint64_t)(cells + 1)) - 1);
    }
    for (size_t i = n; i % 8; i++) p->id_hash_at[i] = 0, p->cell_at[i] = -1;
    uint64_t rkey = mix(&rng);
    pix_rdv want, got;
    pix_rdv_acc wa, ga;
    memset(&want, 0, sizeof want);
    memset(&wa, 0, sizeof wa);
    if (round % 3 == 0) /* an order part made already */
      spi__pix_rdv_offer(&want, &wa, 0, mix(&rng), 9999);
    got = want, ga = wa;
    spi__pix_rdv_each(&want, &wa, p, rkey);
    wide(&got, &ga, p, rkey);
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
      assert_int_equal(got.n[k], want.n[k]);
      for (int j = 0; j < want.n[k]; j++) {
        assert_int_equal(got.pos[k][j], want.pos[k][j]);
        assert_true(ga.wt[k][j] == wa.wt[k][j]);
      }
    }
  }
}

static void test_wide_rdv_same_order(void **st) {
  (void)st;
  int wide, avx2;
  wide_loops(&wide, &avx2);
  spi_pool_index *p = calloc(1, sizeof *p);
  assert_non_null(p);
  if (wide) rdv_same_order(p, spi__pix_rdv_avx512);
  if (avx2) rdv_same_order(p, spi__pix_rdv_avx2);
  free(p);
}

/* The rendezvous winners among cells' free replicas found with the wide
 * loops (rdv_wide.c with AVX-512, pix_avx2.c with AVX2), two cells in one
 * pass, and through spi__pix_free_best for any set of cells, are the ones
 * found one by one: on sets of every size to 600, free bitmaps from empty
 * to full, id hashes with repeats (a tie goes to the lower position), and
 * replicas that weigh 0 (an id hash equal to the key), which the AVX-512
 * pass leaves to the one-by-one pass. Cells not asked for are left as
 * they were. */
typedef void (*best2_fn)(const spi_pool_index *, int, int, uint64_t,
                         uint32_t *);

static void random_free_set(spi_pool_index *p, uint64_t *rng, uint32_t round,
                            uint64_t rkey) {
  size_t n = 1 + mix(rng) % 600;
  p->n = n;
  memset(p->cfree, 0, sizeof p->cfree);
  uint32_t odds = mix(rng) % 5; /* a position is free 0, 1/4 .. all */
  for (size_t i = 0; i < n; i++) {
    p->id_hash_at[i] = round % 4 == 0 ? mix(rng) % 6 : mix(rng);
    if (round % 7 == 3 && mix(rng) % 8 == 0) p->id_hash_at[i] = rkey;
    if (round % 11 == 5) p->id_hash_at[i] = rkey; /* every weight 0 */
    int k = (int)(mix(rng) % SPI_SUMMARY_CELLS);
    if (odds && mix(rng) % 4 < odds)
      p->cfree[k][i / 64] |= UINT64_C(1) << (i % 64);
  }
  for (size_t i = n; i % 8; i++) p->id_hash_at[i] = mix(rng);
}

static void free_best_same(spi_pool_index *p, best2_fn wide) {
  uint64_t rng = 13;
  for (uint32_t round = 0; round < 3000; round++) {
    uint64_t rkey = mix(&rng);
    random_free_set(p, &rng, round, rkey);
    int ka = (int)(mix(&rng) % SPI_SUMMARY_CELLS);
    int kb = (int)(mix(&rng) % (SPI_SUMMARY_CELLS + 1)) - 1;
    if (kb == ka) kb = -1;
    unsigned cells = 1u << ka | (kb >= 0 ? 1u << kb : 0u);
    uint32_t want[SPI_SUMMARY_CELLS], got[SPI_SUMMARY_CELLS];
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) want[k] = got[k] = 7777;
    spi__pix_free_best_each(p, cells, rkey, want);
    wide(p, ka, kb, rkey, got);
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
      assert_int_equal(got[k], want[k]);
  }
}

static void test_wide_free_best_same(void **st) {
  (void)st;
  int wide, avx2;
  wide_loops(&wide, &avx2);
  spi_pool_index *p = calloc(1, sizeof *p);
  assert_non_null(p);
  if (wide) free_best_same(p, spi__pix_free_best2_avx512);
  if (avx2) free_best_same(p, spi__pix_free_best2_avx2);
  free(p);
}

/* spi__pix_free_best with any set of cells (three and four go two at a
 * time) answers each cell as the one-by-one pass does, whichever loops
 * this CPU runs. */
static void test_free_best_any_cells(void **st) {
  (void)st;
  spi_pool_index *p = calloc(1, sizeof *p);
  assert_non_null(p);
  int wide, avx2;
  wide_loops(&wide, &avx2);
  p->wide = wide;
  p->avx2 = !wide && avx2;
  uint64_t rng = 29;
  for (uint32_t round = 0; round < 2000; round++) {
    uint64_t rkey = mix(&rng);
    random_free_set(p, &rng, round, rkey);
    unsigned cells = (unsigned)(mix(&rng) % (1u << SPI_SUMMARY_CELLS));
    uint32_t want[SPI_SUMMARY_CELLS], got[SPI_SUMMARY_CELLS];
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) want[k] = got[k] = 7777;
    spi__pix_free_best_each(p, cells, rkey, want);
    spi__pix_free_best(p, cells, rkey, got);
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
      assert_int_equal(got[k], want[k]);
      if (!(cells >> k & 1u)) assert_int_equal(got[k], 7777);
    }
  }
  free(p);
}

/* Every candidate's id and rendezvous weight, as a policy that reads every
 * candidate sees them (it answers "queue", so routing changes nothing). */
typedef struct weights {
  uint32_t n;
  char id[160][16];
  uint64_t w[160];
} weights;

static int weights_choose(void *state, void *inst, const spi_route_context *x,
                          spi_policy_choice *out) {
  (void)state;
  weights *o = inst;
  o->n = 0;
  for (size_t i = 0; i < x->n_candidates && o->n < 160; i++, o->n++) {
    const spi_candidate *c = &x->candidates[i];
    snprintf(o->id[o->n], sizeof o->id[o->n], "%.*s", (int)c->id_len, c->id);
    o->w[o->n] = c->rendezvous;
  }
  out->pool = SPI_POOL_QUEUE;
  return SPI_OK;
}

/* The rendezvous winner of a prefix whose first replicas in its order are
 * busy (the ones its cold traffic goes to): through the index, from the
 * kept order, the deeper one (pix_deep) or the cell weighed one by one,
 * the first time and the second (when the deeper order is made), it is
 * the first replica of the order that is not busy, as the full pass names
 * it, for every count of busy replicas at the head of the order. */
/* The order of the prefix of request 1 over the candidates wt lists:
 * heaviest first, ties to the earlier one. */
static void rdv_order(const weights *wt, uint32_t *order) {
  for (uint32_t i = 0; i < wt->n; i++) order[i] = i;
  for (uint32_t i = 1; i < wt->n; i++)
    for (uint32_t j = i; j > 0 && wt->w[order[j]] > wt->w[order[j - 1]]; j--) {
      uint32_t t = order[j];
      order[j] = order[j - 1];
      order[j - 1] = t;
    }
}

/* The rendezvous replica the summary of the cell with all n replicas names
 * (the last name on its line) is want, or none when want is NULL. */
static void assert_rdv_named(const seen *o, uint32_t n, const char *want) {
  char head[16], name[32];
  snprintf(head, sizeof head, "\n%u:", n);
  snprintf(name, sizeof name, " %s/", want ? want : "-");
  const char *line = strstr(o->text, head);
  assert_non_null(line);
  const char *end = strchr(line + 1, '\n');
  const char *last = end ? end : line + strlen(line);
  while (last > line && *last != ' ') last--;
  if (want)
    assert_int_equal(strncmp(last, name, strlen(name)), 0);
  else
    assert_int_equal(strncmp(last, " -", 2), 0);
}

static void test_rdv_winner_past_busy_head(void **st) {
  (void)st;
  spi_engine *e = fixed_engine();
  static seen saw[3];
  static weights wt;
  register_seen(e, "seen", 1, &saw[0]);
  register_seen(e, "seen2", 1, &saw[1]);
  register_seen(e, "seenall", 0, &saw[2]);
  spi_policy_module m = ff_policy_module(weights_choose, 0);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_POLICY, "weights",
                                              strlen("weights"), &m, &wt, NULL),
                   SPI_OK);
  enum { N = 120 };
  for (uint32_t i = 0; i < N; i++) {
    char id[16];
    snprintf(id, sizeof id, "p%u", i);
    spi_replica_info ri = ff_replica(id, SPI_POOL_SPOT, 2.0, 1);
    assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
    assert_int_equal(ff_report(e, id, 0, 0, 0.1), SPI_OK);
  }
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  route_as(e, r, 1, "weights", NULL);
  assert_int_equal(wt.n, N);
  uint32_t order[N];
  rdv_order(&wt, order);
  static const uint32_t busy_counts[] = {0,  1,  3,  4,  5,  17, 31, 32,
                                         33, 40, 90, 119, 120, 2};
  for (size_t c = 0; c < sizeof busy_counts / sizeof busy_counts[0]; c++) {
    uint32_t busy = busy_counts[c];
    for (uint32_t j = 0; j < N; j++)
      assert_int_equal(ff_report(e, wt.id[order[j]], j < busy ? 1 : 0, 0, 0.1),
                       SPI_OK);
    /* Twice through the index: a prefix's deeper order is made the second
     * time it is needed (the first, the cell is weighed). */
    route_as(e, r, 1, "seen", &saw[0]);
    route_as(e, r, 1, "seen2", &saw[1]);
    route_as(e, r, 1, "seenall", &saw[2]);
    for (int k = 0; k < 2; k++) {
      if (strcmp(saw[k].text, saw[2].text))
        print_error("%u busy:\n%s\n----\n%s\n", busy, saw[k].text, saw[2].text);
      assert_string_equal(saw[k].text, saw[2].text);
    }
    assert_rdv_named(&saw[2], N, busy < N ? wt.id[order[busy]] : NULL);
  }
  spi_request_free(r);
  spi_engine_free(e);
}

/* What a route makes of a slot (read_slot: the words read once, then
 * slot_reading, which the pool index also makes its entries with) is what
 * the rules say, bit for bit, worked out here on their own terms; and
 * spi__replica_load, which other readers use, sees the same load: loads
 * fresh, stale, missing, from the future and at the ends of int64; rates
 * learnt, not yet, and not positive; every state and breaker. */
/* now + d, wrapping at the ends of int64 as a clock stamp from a writer
 * may (a signed overflow would be undefined). */
static int64_t plus(int64_t now, int64_t d) {
  return (int64_t)((uint64_t)now + (uint64_t)d);
}

static int64_t pick_i64(uint64_t *rng, int64_t now, int64_t age) {
  switch (mix(rng) % 8) {
    case 0: return 0;
    case 1: return INT64_MIN;
    case 2: return INT64_MAX;
    case 3: return plus(now, -age);
    case 4: return plus(now, age);
    case 5: return plus(now, 1 - age);
    default: return plus(now, (int64_t)(mix(rng) % 4000000000u) - 2000000000);
  }
}

static uint64_t pick_bits(uint64_t *rng) {
  double v[] = {0.0, -0.0, 1.0, 0.25, 3e9, -2.0, 1.0 / 0.0, 0.0 / 0.0};
  double d = mix(rng) % 2 ? v[mix(rng) % 8] : (double)(mix(rng) % 100000) / 7.0;
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

static double bits_d(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}

/* The rules: a load is fresh when stamped (not 0) less than the maximum
 * age (1 s when not set) from now, either way, the difference taken
 * without overflow; a stale one reads as saturated (running and waiting
 * SPI_LOAD_SATURATED, KV usage 1). The learnt prefill rate counts from
 * SPI_PREFILL_MIN_SAMPLES first tokens on, when positive; before, the
 * configured one, at its precomputed ms a token. The rest as written. */
static void expect_reading(const route_env *x, const spi_replica_slot *s,
                           slot_read *o) {
  int64_t at = atomic_load(&s->load_at_ns);
  __int128 d = (__int128)x->now - at;
  __int128 age = x->max_age > 0 ? x->max_age : 1000000000;
  int fresh = at != 0 && d < age && d > -age;
  o->run = fresh ? bits_d(atomic_load(&s->running)) : SPI_LOAD_SATURATED;
  o->wait = fresh ? bits_d(atomic_load(&s->waiting)) : SPI_LOAD_SATURATED;
  o->kv = fresh ? bits_d(atomic_load(&s->kv_usage)) : 1.0;
  o->fresh = fresh;
  double learnt = bits_d(atomic_load(&s->prefill_rate));
  int own = atomic_load(&s->rate_samples) >= SPI_PREFILL_MIN_SAMPLES &&
            learnt > 0;
  o->pf.queued = (double)atomic_load(&s->prefill_queued);
  o->pf.served = (double)atomic_load(&s->served_tokens);
  o->pf.rate = own ? learnt : x->default_rate;
  o->pf.ms_tok = own ? 1000.0 / learnt : x->default_ms_tok;
  o->pf.mean_out = bits_d(atomic_load(&s->mean_output));
  o->inflight = atomic_load(&s->inflight);
  o->state = atomic_load(&s->state);
  o->breaker = atomic_load(&s->breaker);
  o->advised_until = atomic_load(&s->advised_until_ns);
  o->cooldown_until = atomic_load(&s->cooldown_until_ns);
}

static void random_slot(uint64_t *rng, int64_t now, int64_t age,
                        spi_replica_slot *s) {
  memset(s, 0, sizeof *s);
  atomic_init(&s->load_at_ns, pick_i64(rng, now, age));
  atomic_init(&s->running, pick_bits(rng));
  atomic_init(&s->waiting, pick_bits(rng));
  atomic_init(&s->kv_usage, pick_bits(rng));
  atomic_init(&s->rate_samples, mix(rng) % 12);
  atomic_init(&s->prefill_rate, pick_bits(rng));
  atomic_init(&s->prefill_queued, (uint64_t)mix(rng) << (mix(rng) % 40));
  atomic_init(&s->served_tokens, (uint64_t)mix(rng) << (mix(rng) % 40));
  atomic_init(&s->mean_output, pick_bits(rng));
  atomic_init(&s->inflight, mix(rng) % 300);
  atomic_init(&s->state, (int)(mix(rng) % 4));
  atomic_init(&s->breaker, (int)(mix(rng) % 3));
  atomic_init(&s->advised_until_ns, pick_i64(rng, now, age));
  atomic_init(&s->cooldown_until_ns, pick_i64(rng, now, age));
}

static void test_slot_reading_by_the_rules(void **st) {
  (void)st;
  uint64_t rng = 17;
  for (uint32_t round = 0; round < 20000; round++) {
    route_env x;
    memset(&x, 0, sizeof x);
    x.now = (int64_t)(mix(&rng) % 3) == 0 ? INT64_MAX - 5 : 1700000000000000000ll;
    x.max_age = mix(&rng) % 4 ? 1000000000ll : 0;
    x.default_rate = 1000.0 + (double)(mix(&rng) % 50000);
    x.default_ms_tok = 1000.0 / x.default_rate;
    spi_replica_slot s;
    random_slot(&rng, x.now, x.max_age ? x.max_age : 1000000000ll, &s);
    slot_read want, got;
    memset(&want, 0, sizeof want);
    memset(&got, 0, sizeof got);
    expect_reading(&x, &s, &want);
    read_slot(&x, &s, &got);
    assert_memory_equal(&got, &want, sizeof want);
    spi_load_view l;
    spi__replica_load(&s, x.now, x.max_age, &l);
    assert_memory_equal(&l.running, &want.run, sizeof l.running);
    assert_memory_equal(&l.waiting, &want.wait, sizeof l.waiting);
    assert_memory_equal(&l.kv_usage, &want.kv, sizeof l.kv_usage);
    assert_int_equal(l.fresh, want.fresh);
  }
}

int main(void) {
  /* The 512-bit rendezvous weights and block TTFTs run wherever the CPU has AVX-512, so that
   * they are tested there (the library leaves them out on Intel CPUs;
   * other tests run the library's own pick). */
  spi__cpu_wide512_any_vendor();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_index_exact_after_concurrent_writes),
      cmocka_unit_test(test_take_waits_bounded),
      cmocka_unit_test(test_contention_counted),
      cmocka_unit_test(test_blocks_follow_every_change),
      cmocka_unit_test(test_clock_back_rebuilds_when_it_must),
      cmocka_unit_test(test_cooling_pool_kept_not_read),
      cmocka_unit_test(test_stale_loads_kept_regular),
      cmocka_unit_test(test_open_breaker_set_aside),
      cmocka_unit_test(test_advised_kept_not_read),
      cmocka_unit_test(test_lanes_kept_from_the_same_marks),
      cmocka_unit_test(test_models_lists_kept_regular),
      cmocka_unit_test(test_model_indexes_made_as_named),
      cmocka_unit_test(test_model_indexes_given_again),
      cmocka_unit_test(test_wide_block_loops_same_bits),
      cmocka_unit_test(test_wide_rdv_same_order),
      cmocka_unit_test(test_wide_free_best_same),
      cmocka_unit_test(test_free_best_any_cells),
      cmocka_unit_test(test_rdv_winner_past_busy_head),
      cmocka_unit_test(test_slot_reading_by_the_rules),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
