/*
 * policies.c - the simple comparison routing policies, as policy modules
 * registered through the public module API: round robin, least loaded
 * (fewest running + waiting, then fewest in flight) and consistent hashing
 * on the prompt's first block (rendezvous over replica ids). The published
 * policies (greedy, SGLang, the endpoint picker) are in baselines.c. None
 * of them looks at the library's prefix index: each sees only what a
 * gateway without the library would see.
 *
 * The simulator is single-threaded, so the mutable state these modules keep
 * (a counter) needs no synchronisation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baselines.h"

static int cfg_none(void *state, const char *json, size_t len, void **out,
                    char *errbuf, size_t errcap) {
  (void)json, (void)len, (void)errbuf, (void)errcap;
  *out = state;
  return SPI_OK;
}

static uint64_t hash_bytes(const char *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 0x100000001b3ull;
  return sim_mix64(h);
}

static double load_of(const spi_candidate *c) { return c->running + c->waiting; }

/* Fill the choice with first and then up to max fallbacks in load order. */
static void finish(const spi_route_context *ctx, size_t first,
                   spi_policy_choice *out, int32_t reason, const char *why) {
  out->pool = ctx->candidates[first].pool;
  out->reason_code = reason;
  out->order[0] = (uint32_t)first;
  out->n_order = 1;
  snprintf(out->reason, sizeof out->reason, "%s", why);
}

static int no_capacity(spi_policy_choice *out) {
  out->pool = 0;
  out->reason_code = SPI_REASON_NO_CAPACITY;
  out->n_order = 0;
  snprintf(out->reason, sizeof out->reason, "nothing eligible");
  return SPI_OK;
}

/* ---------------------------------------------------------- round robin */

typedef struct rr_state {
  uint64_t next;
} rr_state;

static int rr_choose(void *state, void *inst, const spi_route_context *ctx,
                     spi_policy_choice *out) {
  (void)inst;
  rr_state *s = state;
  size_t n = ctx->n_candidates;
  for (size_t k = 0; k < n; k++) {
    size_t i = (size_t)((s->next + k) % n);
    if (ctx->candidates[i].eligible) {
      s->next = s->next + k + 1;
      finish(ctx, i, out, SPI_REASON_LEAST_LOADED, "round robin");
      return SPI_OK;
    }
  }
  return no_capacity(out);
}

/* --------------------------------------------------------- least loaded */

/* Fewest running + waiting, then fewest in flight, then one of the tied
 * at random (the lowest index would pile an idle fleet's work on one). */
static int ll_choose(void *state, void *inst, const spi_route_context *ctx,
                     spi_policy_choice *out) {
  (void)inst;
  sim_rng *rng = state;
  size_t best = SIZE_MAX, ties = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    const spi_candidate *b = best == SIZE_MAX ? NULL : &ctx->candidates[best];
    if (!b || load_of(c) < load_of(b) || (load_of(c) == load_of(b) && c->inflight < b->inflight))
      best = i, ties = 1;
    else if (load_of(c) == load_of(b) && c->inflight == b->inflight &&
             sim_rng_next(rng) % ++ties == 0)
      best = i;
  }
  if (best == SIZE_MAX) return no_capacity(out);
  finish(ctx, best, out, SPI_REASON_LEAST_LOADED, "least loaded");
  return SPI_OK;
}

/* ----------------------------------------------- consistent hash (prefix) */

/* The prefix is the first trace block of the prompt: requests sharing a
 * system prompt land together. Rendezvous hashing over replica ids is a
 * consistent hash: removing a replica moves only its own prefixes. */
static int ch_choose(void *state, void *inst, const spi_route_context *ctx,
                     spi_policy_choice *out) {
  (void)state, (void)inst;
  const spi_request_view *rq = ctx->req;
  size_t n = rq->token_count < SIM_IDS_PER_BLOCK ? rq->token_count
                                                 : SIM_IDS_PER_BLOCK;
  uint64_t p = hash_bytes((const char *)rq->token_ids, n * sizeof(uint32_t));
  size_t best = SIZE_MAX;
  uint64_t bw = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    uint64_t w = sim_mix64(p ^ hash_bytes(c->id, c->id_len));
    if (best == SIZE_MAX || w > bw) best = i, bw = w;
  }
  if (best == SIZE_MAX) return no_capacity(out);
  finish(ctx, best, out, SPI_REASON_RENDEZVOUS, "consistent hash on prefix");
  return SPI_OK;
}

/* --------------------------------------------------------- registration */

/*
 * Every comparison policy keeps the one class rule a spot deployment
 * cannot do without: gold goes to on-demand replicas while any is
 * eligible. Without it a policy would "save" by running gold on spot and
 * beat the class-feasible maximum. The wrapper hides spot candidates from
 * the policy for a gold request and leaves everything else as it was.
 */
typedef struct class_rule {
  sim_choose_fn choose;
  void *state;
  spi_module_destroy_fn destroy;
  spi_candidate *buf;
  size_t cap;
} class_rule;

static int rule_choose(void *state, void *inst, const spi_route_context *ctx,
                       spi_policy_choice *out) {
  class_rule *w = state;
  int od = 0;
  if (ctx->cls && ctx->cls->klass == SPI_CLASS_GOLD)
    for (size_t i = 0; i < ctx->n_candidates && !od; i++)
      od = ctx->candidates[i].eligible && ctx->candidates[i].pool == SPI_POOL_ON_DEMAND;
  if (!od) return w->choose(w->state, inst, ctx, out);
  if (ctx->n_candidates > w->cap) {
    spi_candidate *b = realloc(w->buf, ctx->n_candidates * sizeof *b);
    if (!b) return SPI_ENOMEM;
    w->buf = b;
    w->cap = ctx->n_candidates;
  }
  memcpy(w->buf, ctx->candidates, ctx->n_candidates * sizeof *w->buf);
  for (size_t i = 0; i < ctx->n_candidates; i++)
    if (w->buf[i].pool != SPI_POOL_ON_DEMAND) w->buf[i].eligible = 0;
  spi_route_context c = *ctx;
  c.candidates = w->buf;
  return w->choose(w->state, inst, &c, out);
}

static void rule_destroy(void *state) {
  class_rule *w = state;
  if (w->destroy) w->destroy(w->state);
  free(w->buf);
  free(w);
}

static int reg(spi_engine *e, const char *name, sim_choose_fn choose, void *state,
               spi_module_destroy_fn destroy) {
  class_rule *w = calloc(1, sizeof *w);
  if (!w) {
    if (destroy) destroy(state);
    return SPI_ENOMEM;
  }
  w->choose = choose, w->state = state, w->destroy = destroy;
  spi_policy_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.configure = cfg_none;
  m.choose = rule_choose;
  int rc = spi_engine_register_module(e, SPI_MODULE_POLICY, name, strlen(name),
                                      &m, w, rule_destroy);
  if (rc != SPI_OK) rule_destroy(w);
  return rc;
}

int sim_register_policies(spi_engine *e, const sim_gw_view *view, const char *only) {
  int rc = SPI_OK;
  if (!only || !strcmp(only, "sim-round-robin")) {
    rr_state *rr = calloc(1, sizeof *rr);
    if (!rr) return SPI_ENOMEM;
    rc = reg(e, "sim-round-robin", rr_choose, rr, free);
  }
  if (rc == SPI_OK && (!only || !strcmp(only, "sim-least-loaded"))) {
    sim_rng *rng = malloc(sizeof *rng);
    if (!rng) return SPI_ENOMEM;
    sim_rng_seed(rng, view->seed ^ 0x4c4c31ull);
    rc = reg(e, "sim-least-loaded", ll_choose, rng, free);
  }
  if (rc == SPI_OK && (!only || !strcmp(only, "sim-consistent-hash")))
    rc = reg(e, "sim-consistent-hash", ch_choose, NULL, NULL);
  if (rc == SPI_OK) rc = sim_register_baselines(e, view, reg, only);
  return rc;
}
