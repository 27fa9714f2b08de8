/*
 * policy.c - the built-in routing policies: "reference" and its
 * affinity-blind baseline "least-loaded".
 *
 * Pool choice follows the reference architecture; each rule is a config
 * switch ("policy" section):
 *   1. gold with a tight SLA (or none)          -> on-demand
 *   2. a spot cache hit with short output        -> spot
 *   3. replayable                                -> spot
 *   4. bronze (batch)                            -> spot, else queue
 *   5. silver (low priority)                     -> spot, on-demand fallback
 *   6. otherwise                                 -> policy.default_pool
 * Replica choice inside the pool trades prefix affinity against load:
 *   - the warm replica (deepest prefix match) is preferred;
 *   - gold leaves it when its TTFT estimate is worse than the best
 *     alternative by more than gold_leave_warm_margin_ms;
 *   - bronze may queue for its busy warm replica (bronze_wait_for_warm);
 *   - the imbalance switch moves any choice whose load leads the least
 *     loaded replica by both imbalance_abs and imbalance_rel;
 *   - a cold prefix goes to the rendezvous-hash winner, so proxies that
 *     share no state still agree on where a new prefix lives.
 * The policy only reads its arguments: no allocation, no lock.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "spi_internal.h"

enum { OVERFLOW_NEVER = 0, OVERFLOW_WARM = 1, OVERFLOW_ALWAYS = 2 };

typedef struct pinst {
  int32_t affinity;
  int64_t gold_sla_ms;
  int32_t gold_overflow;
  int64_t hit_max_output;
  int32_t replayable_to_spot, bronze_queue, silver_fallback, default_pool;
  double leave_margin_ms;
  int32_t bronze_wait;
  double imb_abs, imb_rel;
  int32_t speculative_first;
} pinst;

static int policy_configure_with(void *state, const char *json, size_t len,
                                 void **out, char *err, size_t errcap,
                                 int affinity_forced_off) {
  const spi_mem *mem = state;
  cJSON *o = NULL;
  int rc = spi__json_parse_object(json, len, SIZE_MAX, "policy", &o, err,
                                  errcap);
  if (rc) return rc;
  pinst *p = spi__calloc(mem, 1, sizeof *p);
  if (!p) {
    cJSON_Delete(o);
    spi__errf(err, errcap, "policy: out of memory");
    return SPI_ENOMEM;
  }
  const char *S = "policy";
  static const char *const overflow[] = {"never", "warm", "always"};
  static const char *const pools[] = {"spot", "on_demand"};
  int32_t ov = OVERFLOW_WARM, dp = 1;
  rc = spi__cfg_check_keys(o, S, S, err, errcap);
  if (!rc) rc = spi__cfg_bool(o, "policy.affinity", S, &p->affinity, err, errcap);
  if (!rc) rc = spi__cfg_int(o, "policy.gold_on_demand_sla_ms", S, &p->gold_sla_ms, err, errcap);
  if (!rc) rc = spi__cfg_enum(o, "policy.gold_spot_overflow", S, overflow, 3, &ov, err, errcap);
  if (!rc) rc = spi__cfg_int(o, "policy.cache_hit_spot_max_output_tokens", S, &p->hit_max_output, err, errcap);
  if (!rc) rc = spi__cfg_bool(o, "policy.replayable_to_spot", S, &p->replayable_to_spot, err, errcap);
  if (!rc) rc = spi__cfg_bool(o, "policy.bronze_queue_without_spot", S, &p->bronze_queue, err, errcap);
  if (!rc) rc = spi__cfg_bool(o, "policy.silver_on_demand_fallback", S, &p->silver_fallback, err, errcap);
  if (!rc) rc = spi__cfg_enum(o, "policy.default_pool", S, pools, 2, &dp, err, errcap);
  if (!rc) rc = spi__cfg_double(o, "policy.gold_leave_warm_margin_ms", S, &p->leave_margin_ms, err, errcap);
  if (!rc) rc = spi__cfg_bool(o, "policy.bronze_wait_for_warm", S, &p->bronze_wait, err, errcap);
  if (!rc) rc = spi__cfg_double(o, "policy.imbalance_abs", S, &p->imb_abs, err, errcap);
  if (!rc) rc = spi__cfg_double(o, "policy.imbalance_rel", S, &p->imb_rel, err, errcap);
  if (!rc) rc = spi__cfg_bool(o, "policy.speculative_first", S, &p->speculative_first, err, errcap);
  cJSON_Delete(o);
  if (rc) {
    spi__free(mem, p);
    return rc;
  }
  p->gold_overflow = ov;
  p->default_pool = dp == 0 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND;
  if (affinity_forced_off) p->affinity = 0;
  *out = p;
  return SPI_OK;
}

static int ref_configure(void *state, const char *json, size_t len, void **out,
                         char *err, size_t errcap) {
  return policy_configure_with(state, json, len, out, err, errcap, 0);
}

static int baseline_configure(void *state, const char *json, size_t len,
                              void **out, char *err, size_t errcap) {
  return policy_configure_with(state, json, len, out, err, errcap, 1);
}

static void policy_release(void *state, void *inst) {
  spi__free((const spi_mem *)state, inst);
}

/* ----------------------------------------------------------------- choice */

static double load_of(const spi_candidate *c) { return c->running + c->waiting; }

static int busy(const spi_candidate *c) {
  double cap = c->max_inflight ? (double)c->max_inflight : 1;
  return c->inflight >= c->max_inflight || load_of(c) >= cap;
}

/* Candidate filter for one pool and tier. */
typedef struct want {
  int32_t pool;
  int32_t tier; /* 0 = any */
} want;

static int usable(const spi_candidate *c, want w) {
  return (c->eligible || c->probe) && c->pool == w.pool &&
         (!w.tier || c->model_tier == w.tier);
}

static int64_t best_by_ttft(const spi_route_context *x, want w, int64_t skip) {
  int64_t best = -1;
  for (size_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = &x->candidates[i];
    if ((int64_t)i == skip || !usable(c, w)) continue;
    if (best < 0 || c->est_ttft_ms < x->candidates[best].est_ttft_ms)
      best = (int64_t)i;
  }
  return best;
}

static int64_t least_loaded(const spi_route_context *x, want w) {
  int64_t best = -1;
  double bl = 0;
  for (size_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = &x->candidates[i];
    if (!usable(c, w)) continue;
    double l = load_of(c) / (c->max_inflight ? c->max_inflight : 1) +
               (double)c->inflight / (c->max_inflight ? c->max_inflight : 1);
    if (best < 0 || l < bl) {
      best = (int64_t)i;
      bl = l;
    }
  }
  return best;
}

/* The deepest-matched holder with the best TTFT, or -1. */
static int64_t best_warm(const spi_route_context *x, want w) {
  int64_t best = -1;
  for (size_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = &x->candidates[i];
    if (!usable(c, w) || c->matched_blocks == 0) continue;
    const spi_candidate *b = best >= 0 ? &x->candidates[best] : NULL;
    if (!b || c->matched_blocks > b->matched_blocks ||
        (c->matched_blocks == b->matched_blocks &&
         c->est_ttft_ms < b->est_ttft_ms))
      best = (int64_t)i;
  }
  return best;
}

static int64_t rendezvous(const spi_route_context *x, want w) {
  int64_t best = -1;
  for (size_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = &x->candidates[i];
    if (!usable(c, w) || busy(c)) continue;
    if (best < 0 || c->rendezvous > x->candidates[best].rendezvous)
      best = (int64_t)i;
  }
  return best;
}

static int any_usable(const spi_route_context *x, want w) {
  for (size_t i = 0; i < x->n_candidates; i++)
    if (usable(&x->candidates[i], w)) return 1;
  return 0;
}

static int any_warm(const spi_route_context *x, want w) {
  return best_warm(x, w) >= 0;
}

/* Whether chosen leads the least loaded by both thresholds. */
static int imbalanced(const pinst *p, const spi_route_context *x, want w,
                      int64_t chosen, int64_t *least) {
  *least = least_loaded(x, w);
  if (*least < 0 || *least == chosen) return 0;
  double lc = load_of(&x->candidates[chosen]) + x->candidates[chosen].inflight;
  double ll = load_of(&x->candidates[*least]) + x->candidates[*least].inflight;
  return lc > ll + p->imb_abs && lc > ll * (1 + p->imb_rel);
}

typedef struct pick {
  int64_t idx;
  int32_t reason;
  const char *why;
} pick;

/* Choose a replica in one pool; idx -1 when none (or QUEUE for bronze). */
static pick choose_in_pool(const pinst *p, const spi_route_context *x, want w,
                           int32_t klass) {
  pick r = {-1, SPI_REASON_NONE, ""};
  int64_t warm = p->affinity ? best_warm(x, w) : -1;
  if (warm >= 0) {
    const spi_candidate *c = &x->candidates[warm];
    r.idx = warm;
    r.reason = SPI_REASON_AFFINITY;
    r.why = "holds the prefix";
    if (klass == SPI_CLASS_GOLD) {
      int64_t alt = best_by_ttft(x, w, warm);
      if (alt >= 0 &&
          c->est_ttft_ms > x->candidates[alt].est_ttft_ms + p->leave_margin_ms) {
        r.idx = alt;
        r.reason = SPI_REASON_AFFINITY_LEFT;
        r.why = "warm replica's TTFT exceeds the best by more than the margin";
        return r;
      }
    } else if (klass == SPI_CLASS_BRONZE && p->bronze_wait && busy(c)) {
      r.idx = -2; /* queue for it */
      r.reason = SPI_REASON_WAIT_WARM;
      r.why = "waits for its busy warm replica";
      return r;
    }
  } else if (p->affinity) {
    r.idx = rendezvous(x, w);
    r.reason = SPI_REASON_RENDEZVOUS;
    r.why = "cold prefix placed by rendezvous hash";
  }
  if (r.idx < 0) {
    r.idx = least_loaded(x, w);
    r.reason = SPI_REASON_LEAST_LOADED;
    r.why = "least loaded";
    return r;
  }
  int64_t least;
  if (imbalanced(p, x, w, r.idx, &least)) {
    r.idx = least;
    r.reason = SPI_REASON_IMBALANCE;
    r.why = "placed replica was piled on; least loaded instead";
  }
  return r;
}

/* Append usable candidates of w, best TTFT first, skipping what is listed. */
static void add_fallbacks(const spi_route_context *x, want w,
                          spi_policy_choice *out, uint32_t limit) {
  while (out->n_order < limit) {
    int64_t best = -1;
    for (size_t i = 0; i < x->n_candidates; i++) {
      const spi_candidate *c = &x->candidates[i];
      if (!usable(c, w) || !c->eligible) continue;
      int listed = 0;
      for (uint32_t k = 0; k < out->n_order && !listed; k++)
        listed = out->order[k] == i;
      if (listed) continue;
      if (best < 0 || c->est_ttft_ms < x->candidates[best].est_ttft_ms)
        best = (int64_t)i;
    }
    if (best < 0) return;
    out->order[out->n_order++] = (uint32_t)best;
  }
}

/* Expected output tokens, or -1 when nothing says. */
static int64_t expected_output(const spi_request_view *v) {
  if (v->expected_output_tokens_set) return v->expected_output_tokens;
  if (v->max_output_tokens_set) return v->max_output_tokens;
  return -1;
}

static int policy_choose(void *state, void *inst, const spi_route_context *x,
                         spi_policy_choice *out) {
  (void)state;
  const pinst *p = inst;
  const spi_request_view *v = x->req;
  const spi_classification *cls = x->cls;
  int32_t klass = cls->klass;
  int32_t tier = v->forced_model_tier ? v->forced_model_tier
                 : p->speculative_first ? SPI_TIER_SMALL
                                        : cls->model_tier;
  want spot = {SPI_POOL_SPOT, tier}, od = {SPI_POOL_ON_DEMAND, tier};
  /* No replica of the small tier at all: the target serves it. */
  if (tier == SPI_TIER_SMALL && !v->forced_model_tier) {
    want s2 = {SPI_POOL_SPOT, SPI_TIER_SMALL}, o2 = {SPI_POOL_ON_DEMAND, SPI_TIER_SMALL};
    if (!any_usable(x, s2) && !any_usable(x, o2)) spot.tier = od.tier = SPI_TIER_LARGE;
  }
  int64_t out_tokens = expected_output(v);

  /* Pool rules, in order; fallback pool and whether queueing is allowed. */
  int32_t pool, fallback = 0;
  const char *rule;
  int gold_tight = klass == SPI_CLASS_GOLD &&
                   (!v->sla_ms_set || v->sla_ms <= p->gold_sla_ms);
  if (gold_tight) {
    pool = SPI_POOL_ON_DEMAND;
    rule = "gold within its SLA: on-demand";
    if (p->gold_overflow == OVERFLOW_ALWAYS ||
        (p->gold_overflow == OVERFLOW_WARM && any_warm(x, spot)))
      fallback = SPI_POOL_SPOT;
  } else if (p->affinity && any_warm(x, spot) && out_tokens >= 0 &&
             out_tokens < p->hit_max_output && klass != SPI_CLASS_GOLD) {
    pool = SPI_POOL_SPOT;
    rule = "spot cache hit with short output: spot";
    fallback = klass == SPI_CLASS_BRONZE ? 0 : SPI_POOL_ON_DEMAND;
  } else if (cls->replayable && p->replayable_to_spot &&
             klass != SPI_CLASS_BRONZE) {
    pool = SPI_POOL_SPOT;
    rule = "replayable: spot";
    fallback = (klass == SPI_CLASS_GOLD || p->silver_fallback) ? SPI_POOL_ON_DEMAND : 0;
  } else if (klass == SPI_CLASS_BRONZE) {
    pool = SPI_POOL_SPOT;
    rule = "batch: spot";
    fallback = p->bronze_queue ? SPI_POOL_QUEUE : SPI_POOL_ON_DEMAND;
  } else if (klass == SPI_CLASS_SILVER) {
    pool = SPI_POOL_SPOT;
    rule = "low priority: spot";
    fallback = p->silver_fallback ? SPI_POOL_ON_DEMAND : 0;
  } else {
    pool = p->default_pool;
    rule = "default pool";
    fallback = pool == SPI_POOL_SPOT ? SPI_POOL_ON_DEMAND : 0;
  }

  want primary = pool == SPI_POOL_SPOT ? spot : od;
  pick pk = choose_in_pool(p, x, primary, klass);
  if (pk.idx == -2) { /* bronze waits for its warm replica */
    out->pool = SPI_POOL_QUEUE;
    out->reason_code = pk.reason;
    snprintf(out->reason, sizeof out->reason, "%s; %s", rule, pk.why);
    return SPI_OK;
  }
  if (pk.idx < 0 && (fallback == SPI_POOL_SPOT || fallback == SPI_POOL_ON_DEMAND)) {
    primary = fallback == SPI_POOL_SPOT ? spot : od;
    pool = fallback;
    fallback = 0;
    pk = choose_in_pool(p, x, primary, klass);
    if (pk.idx == -2) pk.idx = -1;
  }
  if (pk.idx < 0) {
    if (fallback == SPI_POOL_QUEUE && !x->shed[SPI_POOL_SPOT]) {
      out->pool = SPI_POOL_QUEUE;
      out->reason_code = SPI_REASON_QUEUE_NO_SPOT;
      snprintf(out->reason, sizeof out->reason, "%s; no spot capacity: queued",
               rule);
      return SPI_OK;
    }
    int shed = x->shed[pool] || (fallback && x->shed[fallback]);
    out->pool = 0;
    out->reason_code = shed ? SPI_REASON_SHED : SPI_REASON_NO_CAPACITY;
    snprintf(out->reason, sizeof out->reason, "%s; %s", rule,
             shed ? "KV pressure sheds this class" : "no eligible replica");
    return SPI_OK;
  }
  out->pool = pool;
  out->reason_code = pk.reason;
  out->order[0] = (uint32_t)pk.idx;
  out->n_order = 1;
  uint32_t limit = 1 + x->max_fallbacks;
  add_fallbacks(x, primary, out, limit);
  if (fallback == SPI_POOL_SPOT || fallback == SPI_POOL_ON_DEMAND)
    add_fallbacks(x, fallback == SPI_POOL_SPOT ? spot : od, out, limit);
  snprintf(out->reason, sizeof out->reason, "%s; %s", rule, pk.why);
  return SPI_OK;
}

void spi__builtin_policy(spi_policy_module *out, int affinity) {
  memset(out, 0, sizeof *out);
  out->abi_version = SPI_MODULE_ABI_VERSION;
  out->struct_size = sizeof *out;
  out->on_failure = SPI_ON_FAILURE_ERROR;
  out->configure = affinity ? ref_configure : baseline_configure;
  out->release = policy_release;
  out->choose = policy_choose;
}
