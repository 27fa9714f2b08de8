/*
 * policies.c - the comparison routing policies, as policy modules registered
 * through the public module API: round robin, least loaded, consistent
 * hashing on the prompt prefix, and an approximate-prefix scorer weighted
 * with queue depth and KV usage in the style of the Kubernetes inference
 * gateway's scheduler. None of them looks at the library's prefix index:
 * each sees only what a gateway without the library would see.
 *
 * The simulator is single-threaded, so the mutable state these modules keep
 * (a counter, the approximate index) needs no synchronisation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim.h"

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

static int ll_choose(void *state, void *inst, const spi_route_context *ctx,
                     spi_policy_choice *out) {
  (void)state, (void)inst;
  size_t best = SIZE_MAX;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    if (best == SIZE_MAX || load_of(c) < load_of(&ctx->candidates[best]) ||
        (load_of(c) == load_of(&ctx->candidates[best]) &&
         c->inflight < ctx->candidates[best].inflight))
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

/* ------------------------------------------------------ gateway scorer */

/*
 * The gateway keeps its own approximate index: block hash -> the last few
 * servers it sent that block to, in a fixed table (collisions overwrite).
 * Score = 3 * prefix match share + 2 * (1 - queue / max queue)
 *       + 2 * (1 - KV usage); the highest wins.
 */
#define GW_SLOTS (1u << 18)
#define GW_WAYS 4

typedef struct gw_entry {
  uint64_t block;
  uint64_t server[GW_WAYS];
} gw_entry;

typedef struct gw_state {
  gw_entry *table;
  uint64_t *blocks;
  size_t blocks_cap;
  uint32_t *matched;
  size_t matched_cap;
} gw_state;

static int gw_choose(void *state, void *inst, const spi_route_context *ctx,
                     spi_policy_choice *out) {
  (void)inst;
  gw_state *s = state;
  const spi_request_view *rq = ctx->req;
  size_t nb = rq->token_count / SIM_IDS_PER_BLOCK;
  if (nb > s->blocks_cap) {
    uint64_t *p = realloc(s->blocks, nb * sizeof *p);
    if (!p) return SPI_ENOMEM;
    s->blocks = p;
    s->blocks_cap = nb;
  }
  if (ctx->n_candidates > s->matched_cap) {
    uint32_t *p = realloc(s->matched, ctx->n_candidates * sizeof *p);
    if (!p) return SPI_ENOMEM;
    s->matched = p;
    s->matched_cap = ctx->n_candidates;
  }
  uint64_t h = 0x47574149ull;
  for (size_t b = 0; b < nb; b++) {
    h = sim_mix64(h ^ hash_bytes((const char *)(rq->token_ids + b * SIM_IDS_PER_BLOCK),
                                 SIM_IDS_PER_BLOCK * sizeof(uint32_t)));
    s->blocks[b] = h;
  }
  double max_wait = 1;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (c->eligible && c->waiting > max_wait) max_wait = c->waiting;
    uint64_t sid = hash_bytes(c->id, c->id_len);
    uint32_t m = 0;
    while (m < nb) {
      const gw_entry *e = &s->table[s->blocks[m] & (GW_SLOTS - 1)];
      int hit = 0;
      if (e->block == s->blocks[m])
        for (int w = 0; w < GW_WAYS; w++) hit |= e->server[w] == sid;
      if (!hit) break;
      m++;
    }
    s->matched[i] = m;
  }
  size_t best = SIZE_MAX;
  double bs = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    double prefix = nb ? (double)s->matched[i] / (double)nb : 0;
    double kv = c->kv_usage > 1 ? 1 : c->kv_usage;
    double score = 3 * prefix + 2 * (1 - c->waiting / max_wait) + 2 * (1 - kv);
    if (best == SIZE_MAX || score > bs) best = i, bs = score;
  }
  if (best == SIZE_MAX) return no_capacity(out);
  const spi_candidate *c = &ctx->candidates[best];
  uint64_t sid = hash_bytes(c->id, c->id_len);
  for (size_t b = 0; b < nb; b++) {
    gw_entry *e = &s->table[s->blocks[b] & (GW_SLOTS - 1)];
    if (e->block != s->blocks[b]) {
      memset(e, 0, sizeof *e);
      e->block = s->blocks[b];
    }
    int w = 0;
    while (w < GW_WAYS - 1 && e->server[w] != sid) w++;
    memmove(&e->server[1], &e->server[0], (size_t)w * sizeof e->server[0]);
    e->server[0] = sid;
  }
  finish(ctx, best, out,
         s->matched[best] ? SPI_REASON_AFFINITY : SPI_REASON_LEAST_LOADED,
         "gateway prefix/queue/kv scorer");
  return SPI_OK;
}

static void gw_destroy(void *state) {
  gw_state *s = state;
  if (!s) return;
  free(s->table);
  free(s->blocks);
  free(s->matched);
  free(s);
}

/* --------------------------------------------------------- registration */

static int reg(spi_engine *e, const char *name,
               int (*choose)(void *, void *, const spi_route_context *,
                             spi_policy_choice *),
               void *state, spi_module_destroy_fn destroy) {
  spi_policy_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.configure = cfg_none;
  m.choose = choose;
  int rc = spi_engine_register_module(e, SPI_MODULE_POLICY, name, strlen(name),
                                      &m, state, destroy);
  if (rc != SPI_OK && destroy) destroy(state);
  return rc;
}

int sim_register_policies(spi_engine *e) {
  rr_state *rr = calloc(1, sizeof *rr);
  gw_state *gw = calloc(1, sizeof *gw);
  if (gw) gw->table = calloc(GW_SLOTS, sizeof *gw->table);
  if (!rr || !gw || !gw->table) {
    free(rr);
    gw_destroy(gw);
    return SPI_ENOMEM;
  }
  int rc = reg(e, "sim-round-robin", rr_choose, rr, free);
  if (rc == SPI_OK) rc = reg(e, "sim-least-loaded", ll_choose, NULL, NULL);
  if (rc == SPI_OK) rc = reg(e, "sim-consistent-hash", ch_choose, NULL, NULL);
  if (rc == SPI_OK) rc = reg(e, "sim-gateway-scorer", gw_choose, gw, gw_destroy);
  else gw_destroy(gw);
  return rc;
}
