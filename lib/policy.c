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

static double rel_load(const spi_candidate *c) {
  double cap = c->max_inflight ? (double)c->max_inflight : 1;
  return (load_of(c) + c->inflight) / cap;
}

/* What the policy knows about one pool and tier: the library's summaries
 * of that pool, merged over the tiers asked for. Indices are -1 when there
 * is none; top is every summarised candidate, best TTFT first. */
typedef struct summary {
  int64_t warm;     /* deepest match, then best TTFT */
  int64_t best;     /* best TTFT */
  int64_t second;   /* second-best TTFT (the alternative to best) */
  int64_t least;    /* least loaded, relative to size */
  int64_t rdv;      /* rendezvous winner among the not busy */
  int any;
  uint32_t n_top;
  int32_t top[2 * SPI_SUMMARY_TOP];
} summary;

static const spi_pool_summary *cell(const spi_route_context *x, int32_t pool,
                                    int32_t tier) {
  int i = SPI_SUMMARY_INDEX(pool, tier);
  if (i < 0 || (size_t)i >= x->n_summaries) return NULL;
  return (const spi_pool_summary *)(const void *)((const char *)x->summaries +
                                                  (size_t)i * x->summary_size);
}

static int ttft_before(const spi_route_context *x, int32_t a, int32_t b) {
  double ta = x->candidates[a].est_ttft_ms, tb = x->candidates[b].est_ttft_ms;
  return ta < tb || (ta == tb && a < b);
}

/* Fold one summary into m. Every candidate a summary names is usable. */
static void fold(const spi_route_context *x, const spi_pool_summary *s,
                 summary *m) {
  const spi_candidate *cs = x->candidates;
  if (!s || s->usable == 0) return;
  m->any = 1;
  /* Merge s->top into m->top, both sorted. */
  int32_t merged[2 * SPI_SUMMARY_TOP];
  uint32_t i = 0, j = 0, n = 0, ns = s->n_top < SPI_SUMMARY_TOP ? s->n_top
                                                               : SPI_SUMMARY_TOP;
  while ((i < m->n_top || j < ns) && n < 2 * SPI_SUMMARY_TOP) {
    if (j >= ns || (i < m->n_top && ttft_before(x, m->top[i], s->top[j])))
      merged[n++] = m->top[i++];
    else
      merged[n++] = s->top[j++];
  }
  memcpy(m->top, merged, n * sizeof merged[0]);
  m->n_top = n;
  m->best = n > 0 ? m->top[0] : -1;
  m->second = n > 1 ? m->top[1] : -1;
  if (s->warm >= 0) {
    const spi_candidate *c = &cs[s->warm];
    if (m->warm < 0 || c->matched_blocks > cs[m->warm].matched_blocks ||
        (c->matched_blocks == cs[m->warm].matched_blocks &&
         ttft_before(x, s->warm, (int32_t)m->warm)))
      m->warm = s->warm;
  }
  if (s->least >= 0) {
    double l = rel_load(&cs[s->least]);
    if (m->least < 0 || l < rel_load(&cs[m->least]) ||
        (l == rel_load(&cs[m->least]) && s->least < m->least))
      m->least = s->least;
  }
  if (s->rendezvous >= 0) {
    uint64_t w = cs[s->rendezvous].rendezvous;
    if (m->rdv < 0 || w > cs[m->rdv].rendezvous ||
        (w == cs[m->rdv].rendezvous && s->rendezvous < m->rdv))
      m->rdv = s->rendezvous;
  }
}

/* The summary of pool for tier (0 = any tier). */
static void summarise(const spi_route_context *x, int32_t pool, int32_t tier,
                      summary *m) {
  m->warm = m->best = m->second = m->least = m->rdv = -1;
  m->any = 0;
  m->n_top = 0;
  if (tier != SPI_TIER_LARGE) fold(x, cell(x, pool, SPI_TIER_SMALL), m);
  if (tier != SPI_TIER_SMALL) fold(x, cell(x, pool, SPI_TIER_LARGE), m);
}

/* Whether chosen leads the least loaded by both thresholds. */
static int imbalanced(const pinst *p, const spi_route_context *x,
                      const summary *m, int64_t chosen) {
  if (m->least < 0 || m->least == chosen) return 0;
  const spi_candidate *c = &x->candidates[chosen], *l = &x->candidates[m->least];
  double lc = load_of(c) + c->inflight, ll = load_of(l) + l->inflight;
  return lc > ll + p->imb_abs && lc > ll * (1 + p->imb_rel);
}

typedef struct pick {
  int64_t idx;
  int32_t reason;
  const char *why;
} pick;

/* Choose a replica in one pool; idx -1 when none, -2 to queue (bronze). */
static pick choose_in_pool(const pinst *p, const spi_route_context *x,
                           const summary *m, int32_t klass) {
  pick r = {-1, SPI_REASON_NONE, ""};
  int64_t warm = p->affinity ? m->warm : -1;
  if (warm >= 0) {
    const spi_candidate *c = &x->candidates[warm];
    r.idx = warm;
    r.reason = SPI_REASON_AFFINITY;
    r.why = "holds the prefix";
    if (klass == SPI_CLASS_GOLD) {
      int64_t alt = m->best == warm ? m->second : m->best;
      if (alt >= 0 &&
          c->est_ttft_ms > x->candidates[alt].est_ttft_ms + p->leave_margin_ms) {
        r.idx = alt;
        r.reason = SPI_REASON_AFFINITY_LEFT;
        r.why = "warm replica's TTFT exceeds the best by more than the margin";
        return r;
      }
    } else if (klass == SPI_CLASS_BRONZE && p->bronze_wait && busy(c)) {
      r.idx = -2;
      r.reason = SPI_REASON_WAIT_WARM;
      r.why = "waits for its busy warm replica";
      return r;
    }
  } else if (p->affinity) {
    r.idx = m->rdv;
    r.reason = SPI_REASON_RENDEZVOUS;
    r.why = "cold prefix placed by rendezvous hash";
  }
  if (r.idx < 0) {
    r.idx = m->least;
    r.reason = SPI_REASON_LEAST_LOADED;
    r.why = "least loaded";
    return r;
  }
  if (imbalanced(p, x, m, r.idx)) {
    r.idx = m->least;
    r.reason = SPI_REASON_IMBALANCE;
    r.why = "placed replica was piled on; least loaded instead";
  }
  return r;
}

/* Append the best-TTFT eligible candidates of the pool's summary not yet
 * listed, up to limit in all. */
static void add_fallbacks(const spi_route_context *x, const summary *m,
                          spi_policy_choice *out, uint32_t limit) {
  for (uint32_t k = 0; k < m->n_top && out->n_order < limit; k++) {
    uint32_t i = (uint32_t)m->top[k];
    if (!x->candidates[i].eligible) continue;
    int listed = 0;
    for (uint32_t j = 0; j < out->n_order && !listed; j++)
      listed = out->order[j] == i;
    if (!listed) out->order[out->n_order++] = i;
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
  summary ms, mo;
  summarise(x, SPI_POOL_SPOT, tier, &ms);
  summarise(x, SPI_POOL_ON_DEMAND, tier, &mo);
  /* No replica of the small tier at all: the target serves it. */
  if (tier == SPI_TIER_SMALL && !v->forced_model_tier && !ms.any && !mo.any) {
    summarise(x, SPI_POOL_SPOT, SPI_TIER_LARGE, &ms);
    summarise(x, SPI_POOL_ON_DEMAND, SPI_TIER_LARGE, &mo);
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
        (p->gold_overflow == OVERFLOW_WARM && ms.warm >= 0))
      fallback = SPI_POOL_SPOT;
  } else if (p->affinity && ms.warm >= 0 && out_tokens >= 0 &&
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

  const summary *primary = pool == SPI_POOL_SPOT ? &ms : &mo;
  pick pk = choose_in_pool(p, x, pool == SPI_POOL_SPOT ? &ms : &mo, klass);
  if (pk.idx == -2) { /* bronze waits for its warm replica */
    out->pool = SPI_POOL_QUEUE;
    out->reason_code = pk.reason;
    spi__join(out->reason, sizeof out->reason, rule, "; ", pk.why);
    return SPI_OK;
  }
  if (pk.idx < 0 && (fallback == SPI_POOL_SPOT || fallback == SPI_POOL_ON_DEMAND)) {
    primary = fallback == SPI_POOL_SPOT ? &ms : &mo;
    pool = fallback;
    fallback = 0;
    pk = choose_in_pool(p, x, pool == SPI_POOL_SPOT ? &ms : &mo, klass);
    if (pk.idx == -2) pk.idx = -1;
  }
  if (pk.idx < 0) {
    if (fallback == SPI_POOL_QUEUE && !x->shed[SPI_POOL_SPOT]) {
      out->pool = SPI_POOL_QUEUE;
      out->reason_code = SPI_REASON_QUEUE_NO_SPOT;
      spi__join(out->reason, sizeof out->reason, rule, "; ",
                "no spot capacity: queued");
      return SPI_OK;
    }
    int shed = x->shed[pool] || (fallback && x->shed[fallback]);
    out->pool = 0;
    out->reason_code = shed ? SPI_REASON_SHED : SPI_REASON_NO_CAPACITY;
    spi__join(out->reason, sizeof out->reason, rule, "; ",
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
    add_fallbacks(x, fallback == SPI_POOL_SPOT ? &ms : &mo, out, limit);
  spi__join(out->reason, sizeof out->reason, rule, "; ", pk.why);
  return SPI_OK;
}

void spi__builtin_policy(spi_policy_module *out, int affinity) {
  memset(out, 0, sizeof *out);
  out->abi_version = SPI_MODULE_ABI_VERSION;
  out->struct_size = sizeof *out;
  out->on_failure = SPI_ON_FAILURE_ERROR;
  out->flags = SPI_POLICY_SUMMARIES_ONLY;
  out->configure = affinity ? ref_configure : baseline_configure;
  out->release = policy_release;
  out->choose = policy_choose;
}
