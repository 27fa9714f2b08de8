/*
 * baselines.c - the published routing policies a user would otherwise run,
 * rebuilt as policy modules so the simulator can compare the library
 * against them on the same traffic:
 *
 *   sim-greedy   longest cached prefix under a token-load cap;
 *   sim-sglang   SGLang's cache-aware router policy;
 *   sim-epp      the Kubernetes Gateway API Inference Extension endpoint
 *                picker (v1.5.0) with its default scheduling profile.
 *
 * Each keeps its own view of the fleet, as the real router does: what it
 * sent where, and what a gateway sees of each replica (in-flight requests,
 * waiting queue, KV usage). None reads the library's prefix index. The
 * behaviour of the two published policies was learnt from their sources
 * and documentation (the comments above each say what and where); the code
 * here is the simulator's own.
 *
 * The simulator is single-threaded, so this state needs no locks.
 */
#include <stdlib.h>
#include <string.h>

#include "baselines.h"

/* Candidate i's replica index: simulator ids are "r<index>-...". */
uint32_t sim_cand_replica(const spi_candidate *c) {
  uint32_t v = 0;
  for (size_t k = 1; k < c->id_len && c->id[k] >= '0' && c->id[k] <= '9'; k++)
    v = v * 10 + (uint32_t)(c->id[k] - '0');
  return v;
}

/* The prompt's trace blocks as a chain of hashes (each block hash covers
 * every block before it, as a prefix cache keys them). Returns the count,
 * or -1 when the scratch array cannot grow. */
int sim_prompt_chain(const spi_request_view *rq, uint64_t **buf, size_t *cap) {
  size_t nb = rq->token_count / SIM_IDS_PER_BLOCK;
  if (nb > *cap) {
    uint64_t *p = realloc(*buf, nb * sizeof *p);
    if (!p) return -1;
    *buf = p;
    *cap = nb;
  }
  uint64_t h = 0x43484149ull;
  for (size_t b = 0; b < nb; b++) {
    const uint32_t *t = rq->token_ids + b * SIM_IDS_PER_BLOCK;
    uint64_t x = h;
    for (int k = 0; k < SIM_IDS_PER_BLOCK; k++) x = sim_mix64(x ^ t[k]);
    h = x;
    (*buf)[b] = h;
  }
  return (int)nb;
}

static void choose_one(const spi_route_context *ctx, size_t i,
                       spi_policy_choice *out, int32_t reason, const char *why) {
  out->pool = ctx->candidates[i].pool;
  out->reason_code = reason;
  out->order[0] = (uint32_t)i;
  out->n_order = 1;
  size_t n = strlen(why);
  if (n >= sizeof out->reason) n = sizeof out->reason - 1;
  memcpy(out->reason, why, n);
  out->reason[n] = 0;
}

static int none_eligible(spi_policy_choice *out) {
  out->pool = 0;
  out->reason_code = SPI_REASON_NO_CAPACITY;
  out->n_order = 0;
  memcpy(out->reason, "nothing eligible", 17);
  return SPI_OK;
}

/* ------------------------------------------------------------- greedy */

/*
 * Greedy longest prefix with a token-load cap: the ten-line policy a
 * gateway author writes first. Token load is the work the gateway has sent
 * a replica and not yet seen finish (prompt tokens plus the output still to
 * come). Skip every replica whose token load is above 1.25x the mean of the
 * eligible ones; among the rest take the longest cached prefix, then the
 * lowest token load, then one of the tied at random (as the published
 * policies below break ties; taking the lowest index would pile a lightly
 * loaded fleet's work onto replica 0). The cache it consults is its own
 * mirror of each replica's LRU (same capacity, fed with what it sent), so
 * it is the idealised greedy: it knows each cache exactly.
 */
#define GREEDY_CAP 1.25

typedef struct greedy_state {
  const sim_gw_view *view;
  sim_rng rng;
  sim_lru *mirror;
  uint32_t *epoch;
  uint64_t *chain;
  size_t chain_cap;
} greedy_state;

static uint32_t mirror_match(sim_lru *l, const uint64_t *chain, int nb) {
  uint32_t m = 0;
  while ((int)m < nb && sim_lru_contains(l, chain[m])) m++;
  return m;
}

static int greedy_choose(void *state, void *inst, const spi_route_context *ctx,
                         spi_policy_choice *out) {
  (void)inst;
  greedy_state *s = state;
  int nb = sim_prompt_chain(ctx->req, &s->chain, &s->chain_cap);
  if (nb < 0) return SPI_ENOMEM;
  double sum = 0;
  size_t n = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    sum += s->view->tokens[sim_cand_replica(c)];
    n++;
  }
  if (!n) return none_eligible(out);
  double cap = GREEDY_CAP * sum / (double)n;
  size_t best = SIZE_MAX, ties = 0;
  uint32_t bm = 0;
  double bl = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    uint32_t r = sim_cand_replica(c);
    double load = s->view->tokens[r];
    if (load > cap) continue;
    if (s->epoch[r] != s->view->epoch[r]) { /* it restarted: cache is empty */
      sim_lru_clear(&s->mirror[r]);
      s->epoch[r] = s->view->epoch[r];
    }
    uint32_t m = mirror_match(&s->mirror[r], s->chain, nb);
    if (best == SIZE_MAX || m > bm || (m == bm && load < bl)) best = i, bm = m, bl = load, ties = 1;
    else if (m == bm && load == bl && sim_rng_next(&s->rng) % ++ties == 0) best = i;
  }
  uint32_t r = sim_cand_replica(&ctx->candidates[best]);
  for (int b = 0; b < nb; b++) sim_lru_insert(&s->mirror[r], s->chain[b]);
  choose_one(ctx, best, out, bm ? SPI_REASON_AFFINITY : SPI_REASON_LEAST_LOADED,
             "greedy longest prefix under 1.25x mean token load");
  return SPI_OK;
}

static void greedy_destroy(void *state) {
  greedy_state *s = state;
  if (!s) return;
  if (s->mirror)
    for (uint32_t r = 0; r < s->view->nrep; r++) sim_lru_free(&s->mirror[r]);
  free(s->mirror);
  free(s->epoch);
  free(s->chain);
  free(s);
}

static greedy_state *greedy_new(const sim_gw_view *v) {
  greedy_state *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->view = v;
  sim_rng_seed(&s->rng, v->seed ^ 0x47524459ull);
  s->mirror = calloc(v->nrep, sizeof *s->mirror);
  s->epoch = calloc(v->nrep, sizeof *s->epoch);
  if (!s->mirror || !s->epoch) return greedy_destroy(s), NULL;
  for (uint32_t r = 0; r < v->nrep; r++)
    if (sim_lru_init(&s->mirror[r], v->kv_blocks[r])) return greedy_destroy(s), NULL;
  return s;
}

/* ------------------------------------------------------------- SGLang */

/*
 * SGLang's cache-aware router policy (sgl-router, now sgl-model-gateway:
 * src/policies/cache_aware.rs and the approximate radix tree in
 * src/tree.rs; defaults from its CLI and PolicyConfig):
 *
 *   - load is the router's own count of requests in flight per worker;
 *   - imbalanced when max - min > balance_abs_threshold (64) AND
 *     max > min * balance_rel_threshold (1.5): then the least-loaded worker
 *     (ties at random), and the request is still inserted into the tree;
 *   - otherwise match the prompt against one approximate radix tree whose
 *     nodes record which workers ("tenants") were sent that text; the match
 *     rate is matched / prompt characters. Above cache_threshold (0.3) the
 *     tenant of the deepest matched node wins (the one that touched it
 *     last); at or below it, recent releases take the least-loaded worker
 *     (ties at random; older ones took the worker with the smallest tree);
 *   - the chosen worker gets the prompt inserted; a matched tenant that is
 *     no longer healthy is removed from the tree and the first healthy
 *     worker is used;
 *   - every eviction_interval (120 s) each tenant is cut back to
 *     max_tree_size (2^26 characters).
 *
 * Here the tree's unit is the trace block (512 tokens, ~2,048 characters),
 * so the per-tenant bound is 2^26 / 2048 = 32,768 blocks, enforced as an
 * LRU over (block, tenant) pairs; the 120 s batching of the eviction is not
 * modelled (it only lets the tree overshoot for up to two minutes).
 */
#define SGL_CACHE_THRESHOLD 0.3
#define SGL_ABS_THRESHOLD 64
#define SGL_REL_THRESHOLD 1.5
#define SGL_TENANT_BLOCKS 32768u

typedef struct sgl_state {
  const sim_gw_view *view;
  sim_lru pairs;      /* (block, tenant, generation) present in the tree */
  uint64_t *last_key; /* open addressing: block -> last tenant that touched it */
  uint32_t *last_who;
  uint32_t last_mask;
  uint32_t *gen;      /* tenant generation: a removal starts a new one */
  uint32_t *seen_epoch;
  sim_rng rng;
  uint64_t *chain;
  size_t chain_cap;
} sgl_state;

static uint64_t sgl_pair(const sgl_state *s, uint64_t block, uint32_t t) {
  return sim_mix64(block ^ ((uint64_t)t << 40) ^ ((uint64_t)s->gen[t] << 20) ^ 0x53474cull);
}

static uint32_t *sgl_last(sgl_state *s, uint64_t block, int create) {
  uint64_t k = block | 1;
  uint32_t i = (uint32_t)sim_mix64(k) & s->last_mask;
  while (s->last_key[i] && s->last_key[i] != k) i = (i + 1) & s->last_mask;
  if (!s->last_key[i]) {
    if (!create) return NULL;
    s->last_key[i] = k;
  }
  return &s->last_who[i];
}

/* The tenant holding `block` that touched it last, or UINT32_MAX. */
static uint32_t sgl_holder(sgl_state *s, uint64_t block) {
  uint32_t *w = sgl_last(s, block, 0);
  if (!w) return UINT32_MAX;
  if (sim_lru_contains(&s->pairs, sgl_pair(s, block, *w))) return *w;
  for (uint32_t t = 0; t < s->view->nrep; t++) /* it left; any other holder */
    if (sim_lru_contains(&s->pairs, sgl_pair(s, block, t))) return t;
  return UINT32_MAX;
}

static void sgl_insert(sgl_state *s, const uint64_t *chain, int nb, uint32_t t) {
  for (int b = 0; b < nb; b++) {
    sim_lru_insert(&s->pairs, sgl_pair(s, chain[b], t));
    *sgl_last(s, chain[b], 1) = t;
  }
}

/* Least in-flight among eligible candidates, ties uniformly at random. */
static size_t least_inflight(sgl_state *s, const spi_route_context *ctx) {
  size_t best = SIZE_MAX, ties = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    if (best == SIZE_MAX || c->inflight < ctx->candidates[best].inflight) {
      best = i, ties = 1;
    } else if (c->inflight == ctx->candidates[best].inflight &&
               sim_rng_next(&s->rng) % ++ties == 0) {
      best = i;
    }
  }
  return best;
}

static int sgl_choose(void *state, void *inst, const spi_route_context *ctx,
                      spi_policy_choice *out) {
  (void)inst;
  sgl_state *s = state;
  int nb = sim_prompt_chain(ctx->req, &s->chain, &s->chain_cap);
  if (nb < 0) return SPI_ENOMEM;
  uint32_t mn = UINT32_MAX, mx = 0;
  size_t first = SIZE_MAX;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    uint32_t r = sim_cand_replica(c);
    if (s->seen_epoch[r] != s->view->epoch[r]) { /* re-added after it left */
      s->seen_epoch[r] = s->view->epoch[r];
      s->gen[r]++;
    }
    if (first == SIZE_MAX) first = i;
    if (c->inflight < mn) mn = c->inflight;
    if (c->inflight > mx) mx = c->inflight;
  }
  if (first == SIZE_MAX) return none_eligible(out);
  size_t pick;
  const char *why;
  int32_t reason = SPI_REASON_LEAST_LOADED;
  if (mx - mn > SGL_ABS_THRESHOLD && (double)mx > (double)mn * SGL_REL_THRESHOLD) {
    pick = least_inflight(s, ctx);
    why = "sglang cache-aware: imbalanced, shortest queue";
  } else {
    int m = 0;
    uint32_t tenant = UINT32_MAX;
    for (; m < nb; m++) {
      uint32_t h = sgl_holder(s, s->chain[m]);
      if (h == UINT32_MAX) break;
      tenant = h;
    }
    double rate = nb ? (double)m / (double)nb : 0;
    if (rate > SGL_CACHE_THRESHOLD) {
      pick = SIZE_MAX;
      for (size_t i = 0; i < ctx->n_candidates; i++)
        if (ctx->candidates[i].eligible && sim_cand_replica(&ctx->candidates[i]) == tenant)
          pick = i;
      if (pick == SIZE_MAX) { /* stale tenant: drop it, first healthy worker */
        s->gen[tenant]++;
        pick = first;
        why = "sglang cache-aware: matched worker gone, first healthy";
      } else {
        reason = SPI_REASON_AFFINITY;
        why = "sglang cache-aware: prefix match above threshold";
      }
    } else {
      pick = least_inflight(s, ctx);
      why = "sglang cache-aware: low match, least loaded";
    }
  }
  sgl_insert(s, s->chain, nb, sim_cand_replica(&ctx->candidates[pick]));
  choose_one(ctx, pick, out, reason, why);
  return SPI_OK;
}

static void sgl_destroy(void *state) {
  sgl_state *s = state;
  if (!s) return;
  sim_lru_free(&s->pairs);
  free(s->last_key);
  free(s->last_who);
  free(s->gen);
  free(s->seen_epoch);
  free(s->chain);
  free(s);
}

static sgl_state *sgl_new(const sim_gw_view *v) {
  sgl_state *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->view = v;
  sim_rng_seed(&s->rng, v->seed ^ 0x53474c47ull);
  /* Bounded by what the trace can insert: sizing it to the per-tenant
   * bound for every tenant would cost memory no run can fill. */
  uint64_t cap = (uint64_t)v->nrep * SGL_TENANT_BLOCKS;
  if (cap > v->refs + 16) cap = v->refs + 16;
  uint32_t slots = 16;
  while (slots < 2 * (v->refs + 16) && slots < (1u << 30)) slots <<= 1;
  s->last_mask = slots - 1;
  s->last_key = calloc(slots, sizeof *s->last_key);
  s->last_who = calloc(slots, sizeof *s->last_who);
  s->gen = calloc(v->nrep, sizeof *s->gen);
  s->seen_epoch = calloc(v->nrep, sizeof *s->seen_epoch);
  if (!s->last_key || !s->last_who || !s->gen || !s->seen_epoch ||
      sim_lru_init(&s->pairs, (uint32_t)cap))
    return sgl_destroy(s), NULL;
  return s;
}

/* ----------------------------------------------------------------- EPP */

/*
 * The Gateway API Inference Extension endpoint picker, v1.5.0, default
 * scheduling profile (config/charts/inferencepool epp-config.yaml):
 * queue-scorer weight 2, kv-cache-utilization-scorer weight 2,
 * prefix-cache-scorer weight 3, then max-score-picker (one endpoint; the
 * candidates are shuffled before a stable sort, so ties go at random).
 *
 *   queue:   (max waiting - waiting) / (max - min) over the candidates,
 *            1 for all when max == min;
 *   kv:      1 - KV-cache usage (a fraction);
 *   prefix:  the prompt is cut into 64-character blocks, at most 256 of
 *            them, and hashed as a chain whose first element is the model
 *            name; walking the chain, every server the indexer lists for a
 *            block gets +1, and the walk stops at the first block no server
 *            has; score = a server's count / the number of hashes. After
 *            the pick, every hash is added to the chosen server's LRU of
 *            31,250 entries.
 *
 * Here one trace block (512 tokens, ~2,048 characters) is 32 of its
 * 64-character blocks, so the 256-block limit is the first 8 trace blocks
 * and the per-server LRU holds 976 trace blocks plus the model entry.
 * Waiting queue and KV usage are the simulator's load reports, as the EPP
 * scrapes them from each model server.
 */
#define EPP_W_QUEUE 2.0
#define EPP_W_KV 2.0
#define EPP_W_PREFIX 3.0
#define EPP_HASHES_PER_BLOCK 32u
#define EPP_MAX_BLOCKS (256u / EPP_HASHES_PER_BLOCK)
#define EPP_LRU_BLOCKS (31250u / EPP_HASHES_PER_BLOCK)
#define EPP_MODEL_KEY 0x4d4f44454cull

typedef struct epp_state {
  const sim_gw_view *view;
  sim_lru *idx;      /* per replica: model entry + trace blocks sent */
  uint32_t *count;   /* per candidate: matched hashes */
  size_t count_cap;
  double *score;
  sim_rng rng;
  uint64_t *chain;
  size_t chain_cap;
} epp_state;

static int epp_choose(void *state, void *inst, const spi_route_context *ctx,
                      spi_policy_choice *out) {
  (void)inst;
  epp_state *s = state;
  int nb = sim_prompt_chain(ctx->req, &s->chain, &s->chain_cap);
  if (nb < 0) return SPI_ENOMEM;
  if (nb > (int)EPP_MAX_BLOCKS) nb = EPP_MAX_BLOCKS;
  if (ctx->n_candidates > s->count_cap) {
    uint32_t *c = realloc(s->count, ctx->n_candidates * sizeof *c);
    if (c) s->count = c;
    double *d = c ? realloc(s->score, ctx->n_candidates * sizeof *d) : NULL;
    if (!c || !d) return SPI_ENOMEM;
    s->score = d;
    s->count_cap = ctx->n_candidates;
  }
  double qmin = 0, qmax = 0;
  int any = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    s->count[i] = 0;
    if (!c->eligible) continue;
    if (!any || c->waiting < qmin) qmin = c->waiting;
    if (!any || c->waiting > qmax) qmax = c->waiting;
    any = 1;
  }
  if (!any) return none_eligible(out);
  /* The prefix walk: the model hash, then each block while anyone has it. */
  uint32_t total = 1 + (uint32_t)nb * EPP_HASHES_PER_BLOCK;
  for (int b = -1; b < nb; b++) {
    uint64_t key = b < 0 ? EPP_MODEL_KEY : s->chain[b];
    uint32_t w = b < 0 ? 1 : EPP_HASHES_PER_BLOCK;
    int held = 0;
    for (size_t i = 0; i < ctx->n_candidates; i++) {
      if (!ctx->candidates[i].eligible) continue;
      if (sim_lru_contains(&s->idx[sim_cand_replica(&ctx->candidates[i])], key)) {
        s->count[i] += w;
        held = 1;
      }
    }
    if (!held) break;
  }
  size_t best = SIZE_MAX, ties = 0;
  double bs = 0;
  for (size_t i = 0; i < ctx->n_candidates; i++) {
    const spi_candidate *c = &ctx->candidates[i];
    if (!c->eligible) continue;
    double q = qmax == qmin ? 1.0 : (qmax - c->waiting) / (qmax - qmin);
    double kv = 1.0 - (c->kv_usage > 1 ? 1 : c->kv_usage);
    double px = (double)s->count[i] / (double)total;
    double sc = EPP_W_QUEUE * q + EPP_W_KV * kv + EPP_W_PREFIX * px;
    if (best == SIZE_MAX || sc > bs) best = i, bs = sc, ties = 1;
    else if (sc == bs && sim_rng_next(&s->rng) % ++ties == 0) best = i;
  }
  sim_lru *l = &s->idx[sim_cand_replica(&ctx->candidates[best])];
  sim_lru_insert(l, EPP_MODEL_KEY);
  for (int b = 0; b < nb; b++) sim_lru_insert(l, s->chain[b]);
  choose_one(ctx, best, out,
             s->count[best] > 1 ? SPI_REASON_AFFINITY : SPI_REASON_LEAST_LOADED,
             "endpoint picker default profile (queue 2, kv 2, prefix 3)");
  return SPI_OK;
}

static void epp_destroy(void *state) {
  epp_state *s = state;
  if (!s) return;
  if (s->idx)
    for (uint32_t r = 0; r < s->view->nrep; r++) sim_lru_free(&s->idx[r]);
  free(s->idx);
  free(s->count);
  free(s->score);
  free(s->chain);
  free(s);
}

static epp_state *epp_new(const sim_gw_view *v) {
  epp_state *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->view = v;
  sim_rng_seed(&s->rng, v->seed ^ 0x45505031ull);
  s->idx = calloc(v->nrep, sizeof *s->idx);
  if (!s->idx) return epp_destroy(s), NULL;
  for (uint32_t r = 0; r < v->nrep; r++)
    if (sim_lru_init(&s->idx[r], EPP_LRU_BLOCKS + 1)) return epp_destroy(s), NULL;
  return s;
}

/* --------------------------------------------------------- registration */

int sim_register_baselines(spi_engine *e, const sim_gw_view *view, sim_reg_fn reg,
                           const char *only) {
  int rc = SPI_OK;
  if (!only || !strcmp(only, "sim-greedy")) {
    greedy_state *g = greedy_new(view);
    rc = g ? reg(e, "sim-greedy", greedy_choose, g, greedy_destroy) : SPI_ENOMEM;
  }
  if (rc == SPI_OK && (!only || !strcmp(only, "sim-sglang"))) {
    sgl_state *s = sgl_new(view);
    rc = s ? reg(e, "sim-sglang", sgl_choose, s, sgl_destroy) : SPI_ENOMEM;
  }
  if (rc == SPI_OK && (!only || !strcmp(only, "sim-epp"))) {
    epp_state *p = epp_new(view);
    rc = p ? reg(e, "sim-epp", epp_choose, p, epp_destroy) : SPI_ENOMEM;
  }
  return rc;
}
