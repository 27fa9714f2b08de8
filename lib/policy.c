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
 * In a fleet that runs spot (spot_seen_ns), a class below gold that falls
 * back to on-demand takes a replica only within policy.fallback_batch_share
 * of its batch (kept_to_spare): on-demand is where gold is kept.
 * A conversation stays in one pool: the rules read the class and the
 * request, never load, and a pool is left for the fallback only when it
 * has no usable replica at all (no load guard empties it, and a pool
 * whose KV breaker sheds the class sheds it rather than passing it on),
 * so load never moves a conversation's turns away from its cache. A replica
 * whose load is stale or missing counts as no replica for these rules, nor
 * as a prefix holder (rule 2, gold's warm overflow);
 * when every replica the class may use is stale, the request is served on
 * the one with the fewest open requests rather than refused (last_resort).
 * Rule 2 applies
 * only where the prefix lives deepest, so a short turn of a conversation
 * held on on-demand is not split off to spot.
 *
 * Replica choice inside the pool is by an explicit cost, in time, from the
 * library's TTFT model (prefill_model.h): on each candidate,
 *
 *   cost = w_class * wait + (est_ttft - wait)
 *
 * where wait is the time behind the prefill already queued there and the
 * rest is this request's own prefill of what the replica does not hold.
 * Gold pays for every millisecond (w = 1: the lowest TTFT); silver and
 * bronze weigh waiting less than prefill, so they wait for a replica that
 * saves them prefill. Prefill a replica would redo (a prefix another
 * holds) counts once more on a backlogged replica, weighted by its share
 * of queue, for the requests that will wait behind it there, and again for
 * each later request it delays in the rest of the pool, as many as arrive
 * before that backlog clears (queue_delay_ms): in an idle pool it costs no
 * one else, so a prefix whose one holder queues gets a second copy; in a
 * backlogged one it delays many, and requests stay where their prefix is.
 * Costs within one block's prefill of the lowest are
 * ties the model cannot tell apart (a block every replica holds, such as
 * a global system prompt, saves the same everywhere and so weighs
 * nothing); of those the replica sent the fewest tokens wins, so ties
 * spread work. Work is counted as tokens, prompt and output. A replica
 * that would be sent more than its share of its pool's work also pays for
 * the work beyond its share, as prefill time: a request leaves it only
 * when another costs less in full, with the prefill it would redo. Its
 * share of its own conversation's turns is policy.load_share_cap times the
 * mean (or the conversation, when one is bigger than that); of new work
 * (a prefix it holds no more of than another replica does) it is the
 * mean: new conversations are where a pool balances without redoing any
 * history. The guard is relative to the fleet, so it holds at any load. A
 * prefix nobody holds goes to the rendezvous-hash winner (so proxies that
 * share no state agree on where it lives) unless that replica is above the
 * mean or costs more than the prefill one later hit there would save; then
 * to the next in rendezvous order that may take it. The policy only
 * reads its arguments: no allocation, no lock.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "prefill_model.h"
#include "spi_internal.h"

enum { OVERFLOW_NEVER = 0, OVERFLOW_WARM = 1, OVERFLOW_ALWAYS = 2 };

typedef struct pinst {
  int32_t affinity;
  int64_t gold_sla_ms;
  int32_t gold_overflow;
  int64_t hit_max_output;
  int32_t replayable_to_spot, bronze_queue, silver_fallback, default_pool;
  double wait_weight[4]; /* by class */
  double load_cap;
  double fallback_share; /* policy.fallback_batch_share */
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
  if (!rc) rc = spi__cfg_double(o, "policy.fallback_batch_share", S, &p->fallback_share, err, errcap);
  if (!rc) rc = spi__cfg_enum(o, "policy.default_pool", S, pools, 2, &dp, err, errcap);
  if (!rc) rc = spi__cfg_double(o, "policy.gold_wait_weight", S, &p->wait_weight[SPI_CLASS_GOLD], err, errcap);
  if (!rc) rc = spi__cfg_double(o, "policy.silver_wait_weight", S, &p->wait_weight[SPI_CLASS_SILVER], err, errcap);
  if (!rc) rc = spi__cfg_double(o, "policy.bronze_wait_weight", S, &p->wait_weight[SPI_CLASS_BRONZE], err, errcap);
  if (!rc) rc = spi__cfg_double(o, "policy.load_share_cap", S, &p->load_cap, err, errcap);
  if (!rc) rc = spi__cfg_bool(o, "policy.speculative_first", S, &p->speculative_first, err, errcap);
  cJSON_Delete(o);
  if (rc) {
    spi__free(mem, p);
    return rc;
  }
  p->gold_overflow = ov;
  p->wait_weight[SPI_CLASS_UNSET] = 1.0; /* unclassified pays like gold */
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

/* Whether the policy may serve on c: eligible (or the breaker's probe) and
 * with a fresh load. A replica whose load is stale or missing reads as
 * saturated and may be gone: a pool with no other is empty, and the
 * fallback rules apply, rather than a request being sent to it. Only when
 * no pool the class may use has a fresh replica is a stale one served on
 * (last_resort). */
static int servable(const spi_candidate *c) {
  return (c->eligible || c->probe) && c->fresh;
}

/* servable for a candidate a summary names: every one is usable (eligible,
 * or the breaker's probe; spi_pool_summary), so it is servable when its
 * load is fresh. */
static int summary_servable(const spi_candidate *c) { return c->fresh; }

static double rel_load(const spi_candidate *c) {
  double cap = c->max_inflight ? (double)c->max_inflight : 1;
  return (load_of(c) + c->inflight) / cap;
}

/* What the policy knows about one pool and tier: the library's summaries
 * of that pool, merged over the tiers asked for. Indices are -1 when there
 * is none; top is every summarised candidate, best TTFT first. */
typedef struct summary {
  int32_t pool;     /* the pool summarised */
  int64_t warm;     /* deepest match, then best TTFT */
  int64_t least;    /* least loaded, relative to size */
  int64_t rdv;      /* rendezvous winner among the not busy */
  int any;
  uint32_t usable;  /* usable candidates in the pool (the tiers asked) */
  double backlog;   /* their est_wait_ms summed, full batches at 0 (from
                       the context's mean_prefill_wait_ms) */
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

/* Merge s, a second tier's summary, into m (fold_tier). Out of line: a pool's
 * one tier, the usual summary, is only copied, and the copy is cheaper
 * inline without the registers the merge takes. */
__attribute__((noinline)) static void merge(const spi_route_context *x,
                                            const spi_pool_summary *s,
                                            summary *m) {
  const spi_candidate *cs = x->candidates;
  uint32_t ns = s->n_top < SPI_SUMMARY_TOP ? s->n_top : SPI_SUMMARY_TOP;
  m->usable += s->usable;
  /* Merge s->top into m->top, both sorted. */
  int32_t merged[2 * SPI_SUMMARY_TOP];
  uint32_t i = 0, j = 0, n = 0;
  while ((i < m->n_top || j < ns) && n < 2 * SPI_SUMMARY_TOP) {
    if (j >= ns || (i < m->n_top && ttft_before(x, m->top[i], s->top[j])))
      merged[n++] = m->top[i++];
    else
      merged[n++] = s->top[j++];
  }
  memcpy(m->top, merged, n * sizeof merged[0]);
  m->n_top = n;
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

/* The first summary folded into an empty m: the merge would copy s as it
 * is, and every comparison take s's entry. */
static inline void copy_first(const spi_pool_summary *s, summary *m) {
  m->any = 1;
  m->usable = s->usable;
  /* All SPI_SUMMARY_TOP entries in a fixed-size copy (those past n_top
   * are never read): cheaper than a loop of n_top. */
  memcpy(m->top, s->top, sizeof s->top);
  m->n_top = s->n_top < SPI_SUMMARY_TOP ? s->n_top : SPI_SUMMARY_TOP;
  /* As they are: every reader of these asks only whether one is
   * negative (none), as -1 is. */
  m->warm = s->warm;
  m->least = s->least;
  m->rdv = s->rendezvous;
}

/* Fold the summary of pool and tier into m, with its prefill backlog.
 * Every candidate a summary names is usable. */
static void fold_tier(const spi_route_context *x, int32_t pool, int32_t tier,
                      summary *m) {
  const spi_pool_summary *s = cell(x, pool, tier);
  if (!s || s->usable == 0) return;
  if (m->any)
    merge(x, s, m);
  else
    copy_first(s, m);
  m->backlog += x->mean_prefill_wait_ms[SPI_SUMMARY_INDEX(pool, tier)] *
                (double)s->usable;
}

/* An empty summary of pool: no replica named, nothing folded. */
static inline void summary_empty(int32_t pool, summary *m) {
  m->pool = pool;
  m->warm = m->least = m->rdv = -1;
  m->any = 0;
  m->usable = 0;
  m->backlog = 0;
  m->n_top = 0;
}

/* The summary of pool for tier (0 = any tier). */
static void summarise(const spi_route_context *x, int32_t pool, int32_t tier,
                      summary *m) {
  summary_empty(pool, m);
  if (tier != SPI_TIER_LARGE) fold_tier(x, pool, SPI_TIER_SMALL, m);
  if (tier != SPI_TIER_SMALL) fold_tier(x, pool, SPI_TIER_LARGE, m);
}

/* summarise for one tier (not 0), inline: what fold_tier makes of an
 * empty m, each field set once (the backlog added to 0, as it was). */
static inline void summarise_one(const spi_route_context *x, int32_t pool,
                                 int32_t tier, summary *m) {
  const spi_pool_summary *s = cell(x, pool, tier);
  if (!s || s->usable == 0) {
    summary_empty(pool, m);
    return;
  }
  m->pool = pool;
  copy_first(s, m);
  m->backlog = 0.0 + x->mean_prefill_wait_ms[SPI_SUMMARY_INDEX(pool, tier)] *
                         (double)s->usable;
}

/* summarise, inline for one tier. */
static inline void summarise_tier(const spi_route_context *x, int32_t pool,
                                  int32_t tier, summary *m) {
  if (tier == SPI_TIER_SMALL || tier == SPI_TIER_LARGE)
    summarise_one(x, pool, tier, m);
  else
    summarise(x, pool, tier, m);
}

/* The on-demand pool's summary, made when first read (od): a request
 * placed on spot whose own pool fills its fallbacks, and whose rule does
 * not compare the pools' prefix holders, never reads it. */
typedef struct od_lazy {
  summary m;
  int made;
  int32_t tier;
} od_lazy;

static summary *od(const spi_route_context *x, od_lazy *o) {
  if (!o->made) {
    summarise_tier(x, SPI_POOL_ON_DEMAND, o->tier, &o->m);
    o->made = 1;
  }
  return &o->m;
}

/* The cost of serving on c, in weighted ms: the wait behind queued
 * prefill counts w, the rest of the TTFT (its own prefill) counts fully. */
static double cost_of(const spi_candidate *c, double w) {
  return w * c->est_wait_ms + (c->est_ttft_ms - c->est_wait_ms);
}

/* The part of c's TTFT estimate that is not the wait: its own prefill of
 * what it lacks (and the fixed part). */
static double own_ms(const spi_candidate *c) {
  return c->est_ttft_ms - c->est_wait_ms;
}

/* The prompt tokens this request brings. */
static double request_tokens(const spi_route_context *x) {
  return x->prompt_tokens;
}

/* The work it brings, as served_tokens counts it: its prompt and the
 * output it is expected to generate (decoding is work too, and a long
 * generation holds its replica's batch and KV longer than its prompt
 * says). */
static double work_tokens(const spi_route_context *x, int64_t bound) {
  return x->prompt_tokens + (double)spi__output_estimate_of(bound, x->cls);
}

/* The parts of a candidate's cost that depend only on the request and its
 * pool, computed once per pool a request is placed in rather than once per
 * candidate. Each is the very subexpression the per-candidate formulas
 * below used to evaluate, with the same operations in the same order, so
 * every cost, and so every decision, is the same bits. */
typedef struct terms {
  double req;        /* request_tokens */
  double work;       /* work_tokens */
  double block;      /* req / total_blocks: one block's tokens */
  double block_k;    /* block * 1000.0 (block_ms before the rate) */
  double req_k;      /* 1000.0 * req (queue_delay_ms) */
  /* Of the pool placed in, the one pool whose candidates are costed
   * (every candidate its summary names is of that pool): */
  double after;      /* its mean with this request's share of it
                        (excess_tokens) */
  double allowed;    /* an own turn's share before the conversation's
                        own size is counted */
  double streams;    /* its mean max_inflight (0: none) */
  uint32_t whole;    /* ... when a whole number (a pool of one size),
                        else 0: a replica of that size is of size 1
                        without a division (replica_size would give it
                        exactly 1 too) */
  double cap;        /* policy.load_share_cap */
} terms;

/* What an own turn may take a replica of share `after` up to: cap times
 * it, and never less than one request (work) above it. */
static double allowed_for(double cap, double after, double work) {
  double allowed = cap * after;
  return allowed < after + work ? after + work : allowed;
}

/* The terms for pool (spot or on-demand), of n usable replicas, for a
 * request of output bound (spi__output_bound). */
static void terms_for(const pinst *p, const spi_route_context *x,
                      int32_t pool, uint32_t n, int64_t bound, terms *t) {
  t->req = request_tokens(x);
  t->req_k = 1000.0 * t->req;
  t->work = work_tokens(x, bound);
  t->block = x->total_blocks ? t->req / (double)x->total_blocks : 0;
  t->block_k = t->block * 1000.0;
  double share = t->work / (double)(n ? n : 1);
  t->cap = p->load_cap;
  double s = x->mean_max_inflight[pool];
  t->streams = s;
  t->whole = s >= 1 && s <= (double)UINT32_MAX && s == (double)(uint32_t)s
                 ? (uint32_t)s
                 : 0;
  t->after = x->mean_served_tokens[pool] + share;
  t->allowed = allowed_for(p->load_cap, t->after, t->work);
}

/* The backlogs of the pool the request could add to, ms
 * (alternatives_wait). */
typedef struct pool_waits {
  double named;   /* mean wait of the named candidates but the holder */
  double prefill; /* mean prefill backlog of the pool's usable replicas
                     but the holder, the ones not named included */
} pool_waits;

/* What c's redundant prefill costs the requests that queue behind it, ms.
 * Prefill c would do beyond what the candidate needing the least does
 * (own_min: the prefix another replica holds) is work the pool did
 * already, and it delays whoever arrives before it is done:
 *
 * - on a backlogged replica, the next request to arrive, which finds c
 *   still busy with about the share of c's time to first token that is
 *   queue, wait / (wait + own);
 * - in a loaded pool, the pool's later requests, wherever it lands, an
 *   idle replica included (the pool's next arrivals go there too). Work x
 *   added to a prefill backlog W, where requests of mean prefill S arrive
 *   at rate lambda and keep the prefill busy a share rho = lambda * S of
 *   the time, makes that backlog last (W + x) / (1 - rho), and each of
 *   the lambda * (W + x) / (1 - rho) requests that arrive meanwhile waits
 *   x longer. A queue's mean wait is W = S * rho / (1 - rho), so with
 *   omega = W / S that is omega * (omega + x / S) requests: about omega
 *   while the pool is light, omega squared once its backlog is several
 *   requests deep. W is the rest of the pool's prefill backlog (pw->
 *   prefill) and S this request's whole prompt at c's rate. The count is
 *   never taken below the requests the named candidates' backlogs hold,
 *   rho / (1 - rho) = their mean wait over S (pw->named), which counts
 *   waits of every kind.
 *
 * The holder's backlog is in neither: the requests that wait there are
 * the ones whose prefix lives there, and a second copy is what takes some
 * of them off it. So when a prefix is so hot that its one holder queues
 * while the rest of the pool does not, the copy costs little beyond its
 * own prefill, and a request that would wait longer than that at the
 * holder makes it, spreading the hot prefix's load over two replicas;
 * when the rest of the pool is backlogged too, the copy's prefill delays
 * many requests there, and requests stay where their prefix is: capacity
 * is then the prefill the cache saves. In an idle pool the term is 0 and
 * a request leaves a busy warm replica for an idle one. */
static double queue_delay_ms(const terms *t, const spi_candidate *c, double own_min,
                             const pool_waits *pw) {
  double own = own_ms(c), redundant = own - own_min;
  if (!(redundant > 0)) return 0;
  double next = c->est_wait_ms > 0 ? c->est_wait_ms / (c->est_wait_ms + own) : 0;
  if (!(t->req > 0) || !(c->prefill_tokens_per_s > 0))
    return redundant * next;
  double held = pw->named * c->prefill_tokens_per_s / t->req_k;
  double full = t->req_k / c->prefill_tokens_per_s;
  double omega = pw->prefill / full;
  double during = omega * (omega + redundant / full);
  return redundant * (next + (during > held ? during : held));
}

/* The time one prompt block takes to prefill on c, ms: the resolution of
 * the cost model (a replica saves whole blocks). */
static double block_ms(const terms *t, const spi_candidate *c) {
  /* Without blocks, block_k is +0.0, and so is its quotient. */
  if (!(c->prefill_tokens_per_s > 0)) return 0;
  return t->block_k / c->prefill_tokens_per_s;
}

/* The work the request's conversation has likely sent c, this request
 * included: its turns there, if each added what c lacks of this one (a
 * conversation's prompt grows by a turn, so its turns sum to the prompt
 * times half their number plus one), each with an output like this one's.
 * The request alone when c holds none of it, or when what c holds is a
 * branch point (SPI_MATCH_CONTINUED: another request already went on from
 * it there): then the prompt is a prefix several requests share, a
 * document or a tenant's prompt, whose readers are separate units that a
 * second copy can serve, not the turns of one conversation that only c
 * can carry. */
static double unit_tokens(const terms *t, const spi_route_context *x,
                          const spi_candidate *c) {
  double req = t->req;
  if (x->total_blocks == 0 || c->matched_blocks == 0 || !(req > 0) ||
      (c->match_flags & SPI_MATCH_CONTINUED))
    return t->work;
  double lack = req * (double)(x->total_blocks - c->matched_blocks) /
                (double)x->total_blocks;
  if (lack < t->block) lack = t->block;
  double turns = (req / lack + 1.0) / 2.0;
  return t->work * turns;
}

/* c's size relative to its pool's replicas: its max_inflight over their
 * mean, so its share of the pool's work is that many times the mean. A
 * replica that takes twice the streams serves twice the conversations,
 * and its share grows with it; in a pool of one size it is exactly 1 (n
 * equal integers sum and divide back exactly), and every share is the
 * plain mean's bits. */
static double replica_size(const terms *t, const spi_candidate *c) {
  if (!(t->streams > 0) || !c->max_inflight) return 1.0;
  return (double)c->max_inflight / t->streams;
}

/* The work c, sent this request too, would have beyond its share of the
 * pool's work: the pool's mean times c's size (replica_size), the plain
 * mean in a pool of one size; "the mean" below is that share. Work that c
 * holds nothing of beyond what another replica
 * holds (own == 0: a new conversation, or one whose only prefix is a
 * prompt others hold too) is new work: it can go anywhere at the same
 * prefill, and its later turns will stay where it lands, so a replica
 * takes it only up to the pool's mean (plus this request): placing new
 * work is the one way to balance that redoes no history, and a replica
 * above the mean that takes it builds a lead its conversations' later turns
 * cannot shed without redoing their history. A conversation's own turn
 * (own == 1: c holds more of its prompt than any other) may take c up to
 * policy.load_share_cap times the pool's mean (both counting this request),
 * and never less than one request above the mean nor than the
 * conversation there (unit_tokens). Work comes in whole requests, and
 * turns of a conversation belong together: a lead of one request is
 * placement granularity, and a replica carrying one conversation bigger
 * than a fair share (a few conversations in a pool of more replicas)
 * cannot spread it without redoing its history, so neither is imbalance.
 * The guard depends on the history served, never on the load of the
 * moment, so it holds at any load; it engages from the start (a guard that
 * waits for a few requests a replica lets a hot prefix pile up, and the
 * pool pays for it long after). The pool's terms (terms_for) hold the
 * mean and the share cap; unit is c's unit_tokens, read only for an own
 * turn. Positive: over its share. */
static double excess_tokens(const terms *t, const spi_candidate *c, int own,
                            double unit) {
  double after = t->after, allowed = t->allowed;
  double size = c->max_inflight == t->whole ? 1.0 : replica_size(t, c);
  if (size != 1.0) { /* terms_for's allowance on this replica's share */
    after = t->after * size;
    allowed = allowed_for(t->cap, after, t->work);
  }
  if (!own) return c->served_tokens - after;
  if (allowed < unit) allowed = unit;
  return c->served_tokens + t->work - allowed;
}

/* Whether c is over its share for a prefix nobody holds (new work). */
static int over_share_new(const terms *t, const spi_candidate *c) {
  return excess_tokens(t, c, 0, 0) > 0;
}

/* How many requests a choice of c for this one decides: a conversation's
 * turn that stays on c leaves its later turns there too, and one that has
 * sent k turns there is as likely as not to send about as many more (its
 * length is not known; the best guess of what is left is what has been),
 * so the turns it sent there, this one included (unit_tokens over this
 * request's work; unit is c's). One for new work: it has no turns
 * anywhere yet. */
static double turns_ahead(const terms *t, int own, double unit) {
  if (!own) return 1.0;
  double a = unit / t->work;
  return a > 1.0 ? a : 1.0;
}

/* The cost c competes with: a replica over its share also pays for the
 * work it carries beyond it, as the time its prefill takes (work the
 * others do not have, so a wait it owes the pool), once for every turn
 * the choice decides (turns_ahead). Staying is rent, paid by every later
 * turn while the replica is over its share; moving is bought once, with
 * the history's prefill: a conversation moves once the rent its expected
 * turns would pay exceeds that price, so an over-share replica sheds
 * conversations instead of staying over its share by about a history
 * each. The request leaves it only when another's full cost, with the
 * prefill it would redo, is lower: the requests that save little move
 * first, and work drifts to the others without ever queueing behind a
 * busier one. */
static double guarded_cost(const terms *t, const spi_route_context *x,
                           const spi_candidate *c, double w, int own) {
  double cost = cost_of(c, w);
  double unit = own ? unit_tokens(t, x, c) : 0; /* an own turn's, once */
  double ex = excess_tokens(t, c, own, unit);
  if (!(ex > 0)) return cost;
  /* Without a prefill rate the excess takes no known time. */
  if (!(c->prefill_tokens_per_s > 0)) return cost;
  return cost + ex * turns_ahead(t, own, unit) * 1000.0 /
                    c->prefill_tokens_per_s;
}

/* A reason's text with its length, so that joining it needs no strlen. */
typedef struct text {
  const char *s;
  size_t n;
} text;
#define TEXT(lit) ((text)TEXT_INIT(lit))
#define TEXT_INIT(lit) {"" lit, sizeof(lit) - 1} /* a static table's */

/* What a pool's choice says for itself: its reason code and text. */
enum {
  WHY_NONE, WHY_LEAST, WHY_COLD_COST, WHY_COLD_RDV, WHY_COLD_RDV_MEAN,
  WHY_WAIT_WARM, WHY_AFFINITY, WHY_IMBALANCE, WHY_AFFINITY_LEFT
};
static const struct {
  int32_t reason;
  text why;
} WHY[] = {
    [WHY_NONE] = {SPI_REASON_NONE, TEXT_INIT("")},
    [WHY_LEAST] = {SPI_REASON_LEAST_LOADED, TEXT_INIT("least loaded")},
    [WHY_COLD_COST] = {SPI_REASON_LEAST_LOADED,
                       TEXT_INIT("cold prefix: lowest estimated cost")},
    [WHY_COLD_RDV] = {SPI_REASON_RENDEZVOUS,
                      TEXT_INIT("cold prefix placed by rendezvous hash")},
    [WHY_COLD_RDV_MEAN] = {SPI_REASON_RENDEZVOUS,
                           TEXT_INIT("cold prefix placed by rendezvous hash "
                                     "among the replicas at or below the "
                                     "pool's mean")},
    [WHY_WAIT_WARM] = {SPI_REASON_WAIT_WARM,
                       TEXT_INIT("waits for its busy warm replica")},
    [WHY_AFFINITY] = {SPI_REASON_AFFINITY,
                      TEXT_INIT("holds the prefix: lowest estimated cost")},
    [WHY_IMBALANCE] = {SPI_REASON_IMBALANCE,
                       TEXT_INIT("warm replica over its share of the "
                                 "pool's work")},
    [WHY_AFFINITY_LEFT] = {SPI_REASON_AFFINITY_LEFT,
                           TEXT_INIT("warm replica's wait costs more than "
                                     "the prefill it saves")},
};

/* A pool's choice: the index and what it says for itself (WHY), small
 * enough to come back in two registers. */
typedef struct pick {
  int64_t idx;
  uint32_t why;
} pick;

/* Whether a should win over b among near-ties: the one sent fewer tokens
 * for its size (per stream of max_inflight: the products of integers are
 * exact, and replicas of one size compare their tokens), then the higher
 * rendezvous weight (so proxies sharing no state still break ties alike),
 * then the lower index. */
static int tie_before(const spi_route_context *x, int64_t a, int64_t b) {
  const spi_candidate *ca = &x->candidates[a], *cb = &x->candidates[b];
  double sa = ca->served_tokens, sb = cb->served_tokens;
  if (ca->max_inflight != cb->max_inflight) {
    sa *= (double)cb->max_inflight;
    sb *= (double)ca->max_inflight;
  }
  if (sa != sb) return sa < sb;
  if (ca->rendezvous != cb->rendezvous) return ca->rendezvous > cb->rendezvous;
  return a < b;
}

/* The servable candidates the summary names, each once, as cheapest
 * reads them (at most 2 * SPI_SUMMARY_TOP + 3). A replica named twice (the
 * warm one is usually in the top too) would only be costed twice to the
 * same bits: the lowest cost and the tie order do not depend on repeats
 * nor on the order of the list. Gathered with them, in the same order as
 * separate loops over the list would meet them: the least own_ms (the
 * prefill part of the TTFT), the holder, the one that holds more of the
 * prompt than every other (-1 when none holds any, or two hold it as
 * deep: then the request is new work to each, excess_tokens), and the sum
 * of the est_wait_ms of all but the holder (alternatives_wait), added in
 * list order: the sum of all of them so far, and of all but the holder so
 * far, which is the sum of all before it when it is met. */
typedef struct named_list {
  uint32_t n;
  int32_t i[2 * SPI_SUMMARY_TOP + 3];
  /* est_wait_ms summed: all, all but holder (apart: stored as a pair,
   * they were summed as one) */
  double wait_all;
  int64_t holder;  /* -2 while a second as deep has been met */
  double wait_others;
  uint32_t deep;
  double own_min;
} named_list;

/* What named_servable gathers besides the list, kept apart from it so
 * that it stays in registers while the list is written. */
typedef struct named_acc {
  double own_min;
  int64_t holder;
  uint32_t deep;
  double wait_all, wait_others;
} named_acc;

static inline void name_one(const spi_candidate *c, named_acc *a, int32_t i) {
  double own = own_ms(c), wait = c->est_wait_ms;
  if (own < a->own_min) a->own_min = own;
  uint32_t mb = c->matched_blocks;
  if (mb > a->deep) {
    a->holder = i, a->deep = mb;
    a->wait_others = a->wait_all;
  } else {
    if (mb == a->deep && a->deep > 0) a->holder = -2; /* a second as deep */
    a->wait_others += wait;
  }
  a->wait_all += wait;
}

/* Whether i is among the first n of named. */
static int listed_in(const int32_t *named, uint32_t n, int32_t i) {
  for (uint32_t k = 0; k < n; k++)
    if (named[k] == i) return 1;
  return 0;
}

static void named_servable(const spi_route_context *x, const summary *m,
                           named_list *l) {
  const spi_candidate *cs = x->candidates;
  named_acc a = {HUGE_VAL, -1, 0, 0, 0};
  uint32_t n = 0;
  /* The top's entries are distinct: only the three more are looked up,
   * and not even they when the top lists every usable candidate (n_top ==
   * usable: a summary's top holds them all when they fit), as each of
   * them is a usable one. */
  for (uint32_t k = 0; k < m->n_top; k++) {
    int32_t i = m->top[k];
    if (summary_servable(&cs[i])) {
      l->i[n++] = i;
      name_one(&cs[i], &a, i);
    }
  }
  if (m->n_top != m->usable) {
    int64_t more[3] = {m->warm, m->least, m->rdv};
    for (int k = 0; k < 3; k++) {
      int32_t i = (int32_t)more[k];
      if (i >= 0 && summary_servable(&cs[i]) && !listed_in(l->i, n, i)) {
        l->i[n++] = i;
        name_one(&cs[i], &a, i);
      }
    }
  }
  l->n = n;
  l->own_min = a.own_min;
  l->holder = a.holder < 0 ? -1 : a.holder;
  l->deep = a.deep;
  l->wait_all = a.wait_all;
  l->wait_others = a.wait_others;
}

/* Whether c's batch is full: its later requests wait for a decode to end,
 * not behind prefill, and prefill added elsewhere does not lengthen that
 * wait (decodes already running slow every stream a little, they do not
 * queue a prefill). */
static int batch_full(const spi_candidate *c) {
  double cap = c->max_inflight ? (double)c->max_inflight : 1;
  return c->running >= cap;
}

/* How far behind the rest of the pool runs, for the candidates other than
 * the one holding the prefix deepest (holder; -1 none), whose queue the
 * request weighs already and whose later requests are those whose prefix
 * lives there. pw->named: the mean wait of the named ones. pw->prefill:
 * the mean prefill backlog of the pool's other usable replicas, those with
 * a full batch at none (batch_full), from the pool's whole backlog the
 * library adds up in its pass (m->backlog). */
static void alternatives_wait(const spi_route_context *x,
                              const named_list *l, const summary *m,
                              pool_waits *pw) {
  double rest = m->backlog;
  uint32_t others = m->usable;
  /* The named ones' waits summed but the holder's, in list order. */
  double sum = l->holder >= 0 ? l->wait_others : l->wait_all;
  uint32_t seen = l->n - (l->holder >= 0);
  if (l->holder >= 0 && others > 0) {
    const spi_candidate *h = &x->candidates[l->holder];
    if (!batch_full(h)) rest -= h->est_wait_ms;
    others--;
  }
  pw->named = seen ? sum / seen : 0;
  pw->prefill = others && rest > 0 ? rest / others : 0;
}

/* Whether cheapest may leave out the queue delay (queue_delay_ms) of a
 * candidate whose guarded cost (guarded_cost) is finite and above the
 * lowest full cost so far plus its block's prefill, when its prefill rate
 * is finite too. Its queue delay is then at least 0 and never NaN: the
 * wait weight is positive (policy.*_wait_weight are at least 0.01) and
 * the prompt a finite count at least 0 (route.c), so a finite cost makes
 * the wait and own prefill finite; the least own prefill at least 0 makes
 * a redundant one positive and finite, and the share of queue ahead in
 * [0, 1]; the named mean wait at least 0 makes the requests held at least
 * 0 or +inf (an omega that is NaN loses to them). So its full cost is no
 * lower than the guarded one: above the lowest so far plus the block, so
 * above the lowest in the end plus the block (rounding is monotone, the
 * block's prefill at least 0), out of the ties and not the lowest, as its
 * full cost would have been. */
static int may_leave_uncosted(double own_min, const pool_waits *pw) {
  return own_min >= 0 && pw->named >= 0;
}

/* The candidate to serve on among the usable ones the summary names: of
 * those whose guarded cost, with the delay its redundant prefill makes
 * (queue_delay_ms), is within one block's prefill of the lowest,
 * the one sent the fewest tokens (tie_before). Costs closer than a block
 * are below what the model can tell apart (a block every replica holds,
 * such as a global system prompt, saves the same everywhere), and there
 * the share of work decides, so ties spread work instead of piling it on
 * one replica. The answer does not depend on the order the summary lists
 * them in. With w <= 1 the named ones hold the lowest cost but in corner
 * cases: a replica not named is slower than every best-TTFT one, so it
 * could only win by holding the prefix, and the warm one holds it at least
 * as deep and, of those that do, has the lowest TTFT (the lowest cost too
 * unless their rates or batches differ). -1 when none is usable. */
static int64_t cheapest(const terms *t, const spi_route_context *x,
                        const summary *m, double w, named_list *l) {
  /* The costed candidates (the others are out of the ties): their index,
   * full cost and block's prefill. */
  double cost[2 * SPI_SUMMARY_TOP + 3], tie[2 * SPI_SUMMARY_TOP + 3];
  int32_t at[2 * SPI_SUMMARY_TOP + 3];
  named_servable(x, m, l);
  const int32_t *named = l->i;
  uint32_t n = l->n, kept = 0;
  double low = HUGE_VAL, own_min = l->own_min;
  int64_t holder = l->holder;
  pool_waits pw;
  alternatives_wait(x, l, m, &pw);
  /* The holder first: most often the lowest, it leaves the others whose
   * guarded cost is beyond it uncosted (may_leave_uncosted). */
  double held = 0;
  if (holder >= 0) {
    const spi_candidate *h = &x->candidates[holder];
    held = guarded_cost(t, x, h, w, 1) + queue_delay_ms(t, h, own_min, &pw);
    if (held < low) low = held;
  }
  double z = may_leave_uncosted(own_min, &pw) ? 0.0 : NAN;
  double cut = low + z; /* low, or NaN: none left uncosted */
  for (uint32_t k = 0; k < n; k++) {
    const spi_candidate *c = &x->candidates[named[k]];
    at[kept] = named[k];
    if (named[k] == holder) {
      cost[kept] = held;
      tie[kept++] = block_ms(t, c);
      continue;
    }
    double g = guarded_cost(t, x, c, w, 0);
    tie[kept] = block_ms(t, c); /* while c is at hand */
    if (g > cut + tie[kept] && g < HUGE_VAL &&
        c->prefill_tokens_per_s < HUGE_VAL)
      continue; /* out of the ties, and not the lowest */
    cost[kept] = g + queue_delay_ms(t, c, own_min, &pw);
    if (cost[kept] < low) low = cost[kept], cut = low + z;
    kept++;
  }
  int64_t best = -1;
  for (uint32_t k = 0; k < kept; k++) {
    int64_t i = at[k];
    if (cost[k] > low + tie[k]) continue;
    if (best < 0 || tie_before(x, i, best)) best = i;
  }
  return best;
}

/* Whether c is at capacity: as many open tickets or running and waiting
 * requests as it takes at once. */
static int full(const spi_candidate *c) {
  double cap = c->max_inflight ? (double)c->max_inflight : 1;
  return c->inflight >= c->max_inflight || c->running + c->waiting >= cap;
}

/* Where a prefix nobody holds goes: the highest rendezvous weight among
 * the named replicas that may take new work (at or below the pool's mean,
 * excess_tokens) and cost no more than best (b) by more than the prefill
 * one later hit there saves: the rendezvous winner itself when it may, so
 * proxies that share no state agree, and otherwise the next in rendezvous
 * order they can see, so they still agree where their counts do. -1 when
 * none may (then the lowest cost decides). The named replicas are
 * cheapest's list l: with no warm replica, the servable ones of the top,
 * the least loaded and the rendezvous winner, each once (the answer does
 * not depend on their order nor on repeats). */
static int64_t cold_placement(const terms *t, const spi_route_context *x,
                              const named_list *l, double w,
                              const spi_candidate *b) {
  int64_t v = -1;
  double cost_b = cost_of(b, w);
  for (uint32_t k = 0; k < l->n; k++) {
    int64_t i = l->i[k];
    const spi_candidate *c = &x->candidates[i];
    if (over_share_new(t, c) ||
        cost_of(c, w) - cost_b > c->est_ttft_ms - c->est_wait_ms)
      continue;
    if (v < 0 || c->rendezvous > x->candidates[v].rendezvous ||
        (c->rendezvous == x->candidates[v].rendezvous && i < v))
      v = i;
  }
  return v;
}

/* Whether a request of klass that falls back into on-demand is kept to
 * the spare part of its replicas' batches. On-demand is where gold is
 * kept, and gold pays for every millisecond: each stream a replica runs
 * slows every prefill there (the TTFT model's 1 + running / max_inflight),
 * and the long generations of a class that lost its spot pool would fill
 * gold's batches until spot is back. A fleet that runs spot sizes its
 * on-demand pool for the classes kept there, and its spot pool is empty
 * only for now (spot_seen_ns: the engine has registered spot replicas);
 * in one that runs no spot, on-demand serves every class, and nothing
 * is held back. */
static int kept_to_spare(const pinst *p, const spi_route_context *x,
                         int32_t klass) {
  return p->fallback_share < 1.0 && x->spot_seen_ns != 0 &&
         (klass == SPI_CLASS_SILVER || klass == SPI_CLASS_BRONZE);
}

/* Whether c has room for one more stream (spi__streams) within share of
 * its batch. */
static int within_share(const spi_candidate *c, double share) {
  double cap = c->max_inflight ? (double)c->max_inflight : 1;
  return spi__streams(c->running, c->waiting, c->inflight) + 1.0 <= share * cap;
}

/* m with only the candidates that have room within share (within_share):
 * the pool as a request kept to the spare part of it sees it. */
static void spare_summary(const spi_route_context *x, const summary *m,
                          double share, summary *out) {
  *out = *m;
  out->n_top = 0;
  for (uint32_t k = 0; k < m->n_top; k++)
    if (within_share(&x->candidates[m->top[k]], share))
      out->top[out->n_top++] = m->top[k];
  int64_t *named[3] = {&out->warm, &out->least, &out->rdv};
  for (int k = 0; k < 3; k++)
    if (*named[k] >= 0 && !within_share(&x->candidates[*named[k]], share))
      *named[k] = -1;
}

/* The affinity-blind choice (least-loaded): the pool's least loaded. */
static pick choose_least(const spi_route_context *x, const summary *m) {
  pick r = {-1, WHY_LEAST};
  r.idx = m->least >= 0 && servable(&x->candidates[m->least]) ? m->least : -1;
  return r;
}

/* Choose a replica in one pool for a request of output bound
 * (spi__output_bound); idx -1 when none, -2 to queue (bronze). */
static pick choose_in_pool(const pinst *p, const spi_route_context *x,
                           const summary *m, int32_t klass, int64_t bound) {
  pick r = {-1, WHY_NONE};
  if (!p->affinity) return choose_least(x, m);
  double w = p->wait_weight[klass >= 0 && klass < 4 ? klass : 0];
  terms t;
  terms_for(p, x, m->pool, m->usable, bound, &t);
  named_list l;
  int64_t best = cheapest(&t, x, m, w, &l);
  if (best < 0) return r;
  const spi_candidate *b = &x->candidates[best];
  r.idx = best;
  if (m->warm < 0) {
    int64_t v = cold_placement(&t, x, &l, w, b);
    if (v >= 0) r.idx = v;
    r.why = v < 0 ? WHY_COLD_COST : v == m->rdv ? WHY_COLD_RDV
                                                : WHY_COLD_RDV_MEAN;
    return r;
  }
  const spi_candidate *wm = &x->candidates[m->warm];
  if (b->matched_blocks > 0 && klass == SPI_CLASS_BRONZE && full(b)) {
    /* Bronze waits for its warm replica in the library's queue, not in
     * the replica's, where it would be served ahead of the classes that
     * pay for every millisecond. */
    r.idx = -2;
    r.why = WHY_WAIT_WARM;
  } else if (b->matched_blocks > 0) {
    r.why = WHY_AFFINITY;
  } else if (cost_of(wm, w) <= cost_of(b, w) + block_ms(&t, b)) {
    /* It would have won on cost: only the guard moved the request. */
    r.why = WHY_IMBALANCE;
  } else {
    r.why = WHY_AFFINITY_LEFT;
  }
  return r;
}

/* Append the best-TTFT eligible candidates of the pool's summary not yet
 * listed, up to limit in all: those with a fresh load, or any when
 * stale_ok (the last resort, where every one is stale). */
static void add_fallbacks(const spi_route_context *x, const summary *m,
                          spi_policy_choice *out, uint32_t limit,
                          int stale_ok) {
  /* The count in a local: every store to order[] could otherwise be
   * taken to change n_order, and it would be read again. The top's
   * entries are distinct, so one is looked up only among those listed
   * before this call. */
  size_t n = out->n_order, before = n; /* size_t: no widening to index */
  if (n >= limit) return;
  for (uint32_t k = 0; k < m->n_top; k++) {
    uint32_t i = (uint32_t)m->top[k];
    const spi_candidate *c = &x->candidates[i];
    if (!c->eligible || !(c->fresh || stale_ok)) continue;
    size_t j = 0;
    while (j < before && out->order[j] != i) j++;
    if (j < before) continue;
    out->order[n++] = i;
    if (n == limit) break;
  }
  out->n_order = (uint32_t)n;
}

/* Whether the summary names a replica the policy may serve on. */
static int has_servable(const spi_route_context *x, const summary *m) {
  int64_t named[3] = {m->warm, m->least, m->rdv};
  for (uint32_t k = 0; k < m->n_top; k++)
    if (servable(&x->candidates[m->top[k]])) return 1;
  for (int k = 0; k < 3; k++)
    if (named[k] >= 0 && servable(&x->candidates[named[k]])) return 1;
  return 0;
}

/*
 * The last resort, where the answer would be "no eligible replica": the
 * pools the class may use (its rule's and that rule's fallback) have
 * usable replicas, but none with a fresh load. A stale or missing load
 * reads as saturated: the most expensive, not forbidden. Pool choice
 * treats a pool with no fresh replica as empty, so a fallback pool with
 * fresh replicas serves first (a silent spot pool does not keep silver
 * from on-demand), and a class that may queue queues; but when every
 * replica the class may use is stale (a gateway before its first scrape, a
 * proxy that reports no load, a metrics outage), refusing would turn
 * unknown load into an outage. The request is served on the least loaded
 * of them, in the first such pool: every running and waiting count read as
 * saturated, that is the fewest open requests relative to size, the one
 * load the library knows itself (a replica that is gone fails those and
 * its breaker opens). The other stale ones are its fallbacks. Decided here
 * only. 1 when it decided (out filled), else 0.
 */
static int last_resort(const spi_route_context *x, const summary *ms,
                       const summary *mo, int32_t pool, int32_t fallback,
                       const char *rule, spi_policy_choice *out) {
  int32_t pools[2] = {pool, fallback == SPI_POOL_SPOT ||
                                    fallback == SPI_POOL_ON_DEMAND
                                ? fallback
                                : 0};
  const summary *use[2] = {NULL, NULL};
  int32_t at = 0;
  for (int k = 0; k < 2 && pools[k]; k++) {
    const summary *m = pools[k] == SPI_POOL_SPOT ? ms : mo;
    if (x->shed[pools[k]] || has_servable(x, m)) return 0;
    if (m->least < 0) continue;
    if (!use[0]) at = pools[k];
    use[use[0] ? 1 : 0] = m;
  }
  if (!use[0]) return 0;
  out->pool = at;
  out->reason_code = SPI_REASON_LEAST_LOADED;
  out->order[0] = (uint32_t)use[0]->least;
  out->n_order = 1;
  for (int k = 0; k < 2 && use[k]; k++)
    add_fallbacks(x, use[k], out, 1 + x->max_fallbacks, 1);
  spi__join(out->reason, sizeof out->reason, rule, "; ",
            "load unknown (stale or missing), read as saturated: "
            "fewest open requests");
  return 1;
}

/* The summary's prefix holder if the policy may serve on it, else -1. The
 * pool rules read only replicas with a fresh load: a stale holder is no
 * cache hit, and no warm replica for gold to overflow to. */
static int64_t fresh_warm(const spi_route_context *x, const summary *m) {
  return m->warm >= 0 && summary_servable(&x->candidates[m->warm]) ? m->warm
                                                                      : -1;
}

/* The pool rules (the file's comment), in order: the rule's pool, its
 * fallback (0: none, SPI_POOL_QUEUE: queue) and the rule's text. ms is
 * the spot summary and o the on-demand one; their fresh prefix holders
 * are read only by the rules that compare them (after the rules' other
 * conditions). out_tokens is the request's spi__output_bound, which the
 * costs read too (work_tokens). */
static text pool_rule(const pinst *p, const spi_route_context *x,
                      const summary *ms, od_lazy *o, int64_t out_tokens,
                      int32_t *pool, int32_t *fallback) {
  const spi_request_view *v = x->req;
  const spi_classification *cls = x->cls;
  int32_t klass = cls->klass;
  *fallback = 0;
  if (klass == SPI_CLASS_GOLD &&
      (!v->sla_ms_set || v->sla_ms <= p->gold_sla_ms)) {
    *pool = SPI_POOL_ON_DEMAND;
    if (p->gold_overflow == OVERFLOW_ALWAYS ||
        (p->gold_overflow == OVERFLOW_WARM && fresh_warm(x, ms) >= 0))
      *fallback = SPI_POOL_SPOT;
    return TEXT("gold within its SLA: on-demand");
  }
  int64_t warm_s, warm_o;
  if (p->affinity && out_tokens >= 0 && out_tokens < p->hit_max_output &&
      klass != SPI_CLASS_GOLD && (warm_s = fresh_warm(x, ms)) >= 0 &&
      ((warm_o = fresh_warm(x, od(x, o))) < 0 ||
       x->candidates[warm_s].matched_blocks >=
           x->candidates[warm_o].matched_blocks)) {
    /* Only where the prefix lives deepest: one short turn of a
     * conversation held on on-demand does not split it off to spot. */
    *pool = SPI_POOL_SPOT;
    *fallback = klass == SPI_CLASS_BRONZE ? 0 : SPI_POOL_ON_DEMAND;
    return TEXT("spot cache hit with short output: spot");
  }
  if (cls->replayable && p->replayable_to_spot && klass != SPI_CLASS_BRONZE) {
    *pool = SPI_POOL_SPOT;
    *fallback = (klass == SPI_CLASS_GOLD || p->silver_fallback)
                    ? SPI_POOL_ON_DEMAND
                    : 0;
    return TEXT("replayable: spot");
  }
  if (klass == SPI_CLASS_BRONZE) {
    *pool = SPI_POOL_SPOT;
    *fallback = p->bronze_queue ? SPI_POOL_QUEUE : SPI_POOL_ON_DEMAND;
    return TEXT("batch: spot");
  }
  if (klass == SPI_CLASS_SILVER) {
    *pool = SPI_POOL_SPOT;
    *fallback = p->silver_fallback ? SPI_POOL_ON_DEMAND : 0;
    return TEXT("low priority: spot");
  }
  *pool = p->default_pool;
  *fallback = *pool == SPI_POOL_SPOT ? SPI_POOL_ON_DEMAND : 0;
  return TEXT("default pool");
}

/* out->reason = rule "; " why, their lengths known. */
static inline __attribute__((always_inline)) void
join_reason(spi_policy_choice *out, text rule, text why) {
  size_t cap = sizeof out->reason;
  size_t n = spi__join_part_len(out->reason, 0, cap, rule.s, rule.n);
  n = spi__join_part(out->reason, n, cap, "; ");
  n = spi__join_part_len(out->reason, n, cap, why.s, why.n);
  out->reason[n] = '\0';
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
  summary ms;
  od_lazy o;
  o.made = 0;
  o.tier = tier;
  summarise_tier(x, SPI_POOL_SPOT, tier, &ms);
  /* No replica of the small tier at all: the target serves it. */
  if (tier == SPI_TIER_SMALL && !v->forced_model_tier && !ms.any &&
      !od(x, &o)->any) {
    summarise(x, SPI_POOL_SPOT, SPI_TIER_LARGE, &ms);
    summarise(x, SPI_POOL_ON_DEMAND, SPI_TIER_LARGE, &o.m);
  }

  /* Pool rules, in order; fallback pool and whether queueing is allowed. */
  int32_t pool, fallback = 0;
  int64_t bound = spi__output_bound(v, cls);
  text rule = pool_rule(p, x, &ms, &o, bound, &pool, &fallback);

  const summary *primary = pool == SPI_POOL_SPOT ? &ms : od(x, &o);
  const int32_t rule_pool = pool, rule_fallback = fallback;
  summary spare;
  int kept = 0;
  pick pk = choose_in_pool(p, x, primary, klass, bound);
  if (pk.idx == -2) { /* bronze waits for its warm replica */
    out->pool = SPI_POOL_QUEUE;
    out->reason_code = WHY[pk.why].reason;
    join_reason(out, rule, WHY[pk.why].why);
    return SPI_OK;
  }
  /* A pool whose KV breaker sheds this class is loaded, not gone: the
   * class is shed (and retried), never pushed into the fallback pool,
   * where it would land cold, split its conversation across pools and
   * queue ahead of the class that pool serves. */
  if (pk.idx < 0 && !x->shed[pool] &&
      (fallback == SPI_POOL_SPOT || fallback == SPI_POOL_ON_DEMAND)) {
    primary = fallback == SPI_POOL_SPOT ? &ms : od(x, &o);
    pool = fallback;
    fallback = 0;
    if (pool == SPI_POOL_ON_DEMAND && kept_to_spare(p, x, klass)) {
      spare_summary(x, primary, p->fallback_share, &spare);
      primary = &spare;
      kept = 1;
    }
    pk = choose_in_pool(p, x, primary, klass, bound);
    if (pk.idx == -2) pk.idx = -1;
  }
  if (pk.idx < 0) {
    const summary *mo = od(x, &o);
    if (fallback == SPI_POOL_QUEUE && !x->shed[SPI_POOL_SPOT]) {
      /* The queue waits for spot capacity to come back; a fleet that
       * reports no load at all (no fresh replica in either pool) cannot
       * say whether it has, so bronze is served on a stale spot replica
       * as a last resort, and queued only when there is none. */
      if (!has_servable(x, mo) &&
          last_resort(x, &ms, mo, rule_pool, rule_fallback, rule.s, out))
        return SPI_OK;
      out->pool = SPI_POOL_QUEUE;
      out->reason_code = SPI_REASON_QUEUE_NO_SPOT;
      spi__join(out->reason, sizeof out->reason, rule.s, "; ",
                "no spot capacity: queued");
      return SPI_OK;
    }
    int shed = x->shed[pool] || (fallback && x->shed[fallback]);
    if (kept && !shed && has_servable(x, mo)) {
      out->pool = 0;
      out->reason_code = SPI_REASON_NO_CAPACITY;
      spi__join(out->reason, sizeof out->reason, rule.s, "; ",
                "no spot replica, and on-demand is kept for gold beyond "
                "policy.fallback_batch_share of each batch");
      return SPI_OK;
    }
    if (!shed &&
        last_resort(x, &ms, mo, rule_pool, rule_fallback, rule.s, out))
      return SPI_OK;
    out->pool = 0;
    out->reason_code = shed ? SPI_REASON_SHED : SPI_REASON_NO_CAPACITY;
    spi__join(out->reason, sizeof out->reason, rule.s, "; ",
              shed ? "KV pressure sheds this class" : "no eligible replica");
    return SPI_OK;
  }
  out->pool = pool;
  out->reason_code = WHY[pk.why].reason;
  out->order[0] = (uint32_t)pk.idx;
  out->n_order = 1;
  uint32_t limit = 1 + x->max_fallbacks;
  add_fallbacks(x, primary, out, limit, 0);
  if ((fallback == SPI_POOL_SPOT || fallback == SPI_POOL_ON_DEMAND) &&
      out->n_order < limit) /* else it would add none */
    add_fallbacks(x, fallback == SPI_POOL_SPOT ? &ms : od(x, &o), out, limit,
                  0);
  join_reason(out, rule, WHY[pk.why].why);
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
