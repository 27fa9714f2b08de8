/*
 * replica_pass.h - the pass over the replicas that one route makes
 * (replica_pass.c): each replica's load and eligibility, the pools' mean
 * KV usage, the per pool and tier summaries a policy reads, the re-ranking
 * of the prefix holders, and the candidates built from all of it.
 *
 * Everything here lives in the route's own scan (on its stack), so a warm
 * route allocates nothing; route.c calls these in its phases.
 */
#ifndef SPI_REPLICA_PASS_H
#define SPI_REPLICA_PASS_H

#include "engine.h"
#include "prefill_model.h"

/* What one route needs to evaluate a replica, fixed for the route. */
typedef struct route_env {
  spi_engine *e;
  const spi_router_cfg *cfg;
  uint64_t cfg_seq;         /* the seq of the snapshot cfg is in */
  const spi_request_view *v;
  int64_t now, max_age;
  double cold_tok, warm_tok; /* uncached prompt tokens: cold, or warm to the
                                match */
  double default_rate;      /* router.prefill_tokens_per_s */
  double default_ms_tok;    /* 1000 / default_rate */
  uint64_t rkey;            /* rendezvous key of the prefix */
  int long_request;         /* too long for an advised machine */
  const uint64_t *excl;     /* the slots the request excludes, a bit each;
                               NULL when it excludes none */
  uint32_t thread_no;       /* the routing thread's (spi__thread_no): its
                               index lane and ticket stripe */
} route_env;

/* The fields of an evaluation a candidate has too (spi_candidate, field
 * for field at the same offsets), under the pass's own names. */
#define SPI_EV_HEAD                                                          \
  const char *id;                                                            \
  size_t id_len;                                                             \
  int32_t pool, model_tier;                                                  \
  /* As the candidate has them: eligible (usable, not as the probe), the   \
   * half-open breaker's probe, a fresh load, rebalance advice. */          \
  int32_t eligible, probe, fresh, advised;                                   \
  double running, waiting, kv_usage; /* stale reads as saturated */          \
  uint32_t inflight;                                                         \
  uint32_t max_inflight;                                                     \
  uint32_t matched;                                                          \
  uint32_t match_flags; /* SPI_MATCH_CONTINUED or 0 (spi_candidate) */       \
  uint64_t rdv;         /* rendezvous weight */                              \
  double t;             /* est TTFT, ms */                                   \
  double usd_per_hour;                                                       \
  double wait_ms, served, rate; /* the TTFT model's parts */
/* ... and what only the route reads. */
#define SPI_EV_TAIL                                                          \
  double ms_tok; /* ... (prefill_model.h) */                                 \
  uint8_t active, usable, busy; /* usable: eligible or the probe */

/* One replica as this request sees it: a candidate (spi_candidate, field
 * for field at the same offsets), then what only the route reads. Every
 * evaluation carries its replica's identity (id, pool, tier, max_inflight,
 * price), so a candidate is its first sizeof(spi_candidate) bytes in one
 * copy (fill_candidate). */
typedef struct replica_eval {
  SPI_EV_HEAD
  /* The candidate ends here. */
  SPI_EV_TAIL
} replica_eval;

/* An evaluation in the scan's arena lies in two parts: its candidate's
 * bytes (ev_head, over a spi_candidate: the arena's entries are
 * candidates as they lie, so a fleet whose every entry is named hands the
 * policy the arena itself) and the rest (ev_tail). ev_head may alias the
 * spi_candidate it is read over. */
typedef struct __attribute__((may_alias)) ev_head {
  SPI_EV_HEAD
} ev_head;
typedef struct ev_tail {
  SPI_EV_TAIL
} ev_tail;
#undef SPI_EV_HEAD
#undef SPI_EV_TAIL

#define SPI_EV_SAME(f, g) (offsetof(replica_eval, f) == offsetof(spi_candidate, g))
_Static_assert(SPI_EV_SAME(id, id) && SPI_EV_SAME(id_len, id_len) &&
                   SPI_EV_SAME(pool, pool) && SPI_EV_SAME(model_tier, model_tier) &&
                   SPI_EV_SAME(eligible, eligible) && SPI_EV_SAME(probe, probe) &&
                   SPI_EV_SAME(fresh, fresh) && SPI_EV_SAME(advised, advised) &&
                   SPI_EV_SAME(running, running) && SPI_EV_SAME(waiting, waiting) &&
                   SPI_EV_SAME(kv_usage, kv_usage) &&
                   SPI_EV_SAME(inflight, inflight) &&
                   SPI_EV_SAME(max_inflight, max_inflight) &&
                   SPI_EV_SAME(matched, matched_blocks) &&
                   SPI_EV_SAME(match_flags, match_flags) &&
                   SPI_EV_SAME(rdv, rendezvous) && SPI_EV_SAME(t, est_ttft_ms) &&
                   SPI_EV_SAME(usd_per_hour, usd_per_hour) &&
                   SPI_EV_SAME(wait_ms, est_wait_ms) &&
                   SPI_EV_SAME(served, served_tokens) &&
                   SPI_EV_SAME(rate, prefill_tokens_per_s) &&
                   offsetof(replica_eval, ms_tok) == sizeof(spi_candidate),
               "an evaluation begins as a candidate (fill_candidate)");
#undef SPI_EV_SAME
_Static_assert(sizeof(ev_head) == sizeof(spi_candidate) &&
                   _Alignof(ev_head) <= _Alignof(spi_candidate) &&
                   sizeof(replica_eval) == sizeof(ev_head) + sizeof(ev_tail) &&
                   offsetof(replica_eval, ms_tok) ==
                       sizeof(ev_head) + offsetof(ev_tail, ms_tok) &&
                   offsetof(replica_eval, active) ==
                       sizeof(ev_head) + offsetof(ev_tail, active),
               "an evaluation is its head and then its tail, byte for byte");

/* The identity fields of an evaluation, from its replica. */
static inline void eval_ident(replica_eval *o, const spi_replica_ident *r) {
  o->id = r->id;
  o->id_len = r->id_len;
  o->pool = r->pool;
  o->model_tier = r->model_tier;
  o->max_inflight = r->max_inflight;
  o->usd_per_hour = r->usd_per_hour;
}

/* The summary's definitions, one place each. Load is divided by the
 * capacity, not multiplied by its inverse: the header defines it so, and
 * equal ratios must compare equal across replica sizes. */
static inline double rel_ratio(const spi_replica_ident *r, double running,
                               double waiting, uint32_t inflight) {
  return (running + waiting + inflight) / r->cap;
}
/* Tokens served per stream: the least loaded's tie-break (divided, as
 * above, so equal ratios compare equal across sizes). */
static inline double served_ratio(const spi_replica_ident *r, double served) {
  return served / r->cap;
}
/* The least loaded's order, a total one: the lower relative load, then the
 * fewer tokens served per stream (among idle replicas, the one furthest
 * below its share of the pool's work, where new work balances the pool:
 * by position alone the same few idle replicas would always be named,
 * and a replica never named could never be sent new work), then the
 * lower position. */
static inline int least_before(double rel, double srv, uint32_t pos, double brel,
                               double bsrv, uint32_t bpos) {
  /* "<=" after "<" fails is "==" (ttft_before in replica_pass.c), in
   * fewer instructions. */
  return (rel < brel) |
         ((rel <= brel) & ((srv < bsrv) | ((srv <= bsrv) & (pos < bpos))));
}
static inline int is_busy(const spi_replica_ident *r, double running,
                          double waiting, uint32_t inflight) {
  return (inflight >= r->max_inflight) | (running + waiting >= r->cap);
}

/* What routing reads of a replica's slot (all in its first cache line),
 * with a stale load already read as saturated. */
typedef struct slot_read {
  double run, wait, kv;
  spi_prefill_read pf;
  int64_t advised_until, cooldown_until;
  uint32_t inflight;
  int32_t state, breaker;
  int fresh;
} slot_read;

/* What routing makes of a slot holding w's words (spi__slot_words_read),
 * made from w alone: the one definition a pass (read_slot) and the pool
 * index (which keeps the words an entry was read from) share. Always
 * inlined, as read_slot is. */
__attribute__((always_inline)) static inline void
slot_reading(const route_env *x, const spi_slot_words *w, slot_read *o) {
  spi_load_view l;
  spi__load_view_of(w, x->now, x->max_age, &l);
  o->run = l.running;
  o->wait = l.waiting;
  o->kv = l.kv_usage;
  o->fresh = l.fresh;
  spi__prefill_read(w, x->default_rate, x->default_ms_tok, &o->pf);
  o->inflight = w->inflight;
  o->state = w->state;
  o->breaker = w->breaker;
  o->advised_until = w->advised_until;
  o->cooldown_until = w->cooldown_until;
}

/* Always inlined: the pass calls it for every replica, and a call per
 * replica (which gcc chose once the cost model's reads made it longer)
 * cost about a quarter of a route over 512 replicas. */
__attribute__((always_inline)) static inline void
read_slot(const route_env *x, const spi_replica_slot *s, slot_read *o) {
  spi_slot_words w;
  spi__slot_words_read(s, &w);
  slot_reading(x, &w, o);
}

static inline int busy_of(const spi_replica_ident *r, const slot_read *rd) {
  return is_busy(r, rd->run, rd->wait, rd->inflight);
}

static inline double rel_of(const spi_replica_ident *r, const slot_read *rd) {
  return rel_ratio(r, rd->run, rd->wait, rd->inflight);
}

/* KV usage (0..1) in the fixed point the pools'
 * sums are kept in: integers add up to the same total in any order, so a
 * sum kept as replicas change equals the one a pass makes. */
#define SPI_KV_ONE 4294967296.0 /* 2^32 */
static inline int64_t spi__kv_fix(double kv) {
  return (int64_t)(kv * SPI_KV_ONE + 0.5);
}

/* How many of a cell's lowest TTFTs a summary names: every usable one
 * when they fit (SPI_SUMMARY_TOP), else a decision's primary and as many
 * fallbacks as it may carry. Every named replica is made a candidate and
 * priced by the policy, so naming two fewer in a large cell takes 9-13 %
 * fewer instructions a route (docs/performance.md, "Naming fewer
 * replicas"); a small cell named whole keeps cold placement the same in
 * proxies that learnt its replicas in another order (the rendezvous order
 * among all of them). */
#define PASS_TOP (1 + SPI_MAX_FALLBACKS)
_Static_assert(PASS_TOP <= SPI_SUMMARY_TOP, "the summary has room for top");

/*
 * The summaries being accumulated. Their entries point into an arena of
 * evaluations, so the candidates built at the end are exactly what was
 * ranked even if a load report lands meanwhile; an evaluation is copied
 * there only when a summary takes the replica. The arena is small and
 * fixed: when it fills, the evaluations no summary points to any more are
 * dropped (at most SPI_SUMMARY_CELLS * (SPI_SUMMARY_TOP + 3) are kept).
 */
#define NO_EV UINT32_MAX
#define ARENA_CAP 96
#define ARENA_KEEP (SPI_SUMMARY_CELLS * (SPI_SUMMARY_TOP + 3))
_Static_assert(ARENA_CAP > ARENA_KEEP, "the arena must have room after a sweep");

typedef struct top_ent {
  double t;
  uint32_t pos, ei;
} top_ent;

typedef struct cell_acc {
  uint32_t usable, n_top;
  uint32_t cap;          /* entries top keeps: SPI_SUMMARY_TOP or PASS_TOP */
  top_ent top[SPI_SUMMARY_TOP]; /* best first */
  /* What a replica must beat to enter each summary, as (value, position)
   * pairs: every summary is a minimum or maximum under a total order, so
   * the outcome does not depend on the order replicas are met in. */
  double thr_t;              /* the last top entry's TTFT, +inf until full */
  uint32_t thr_pos;          /* ... and position, UINT32_MAX until full */
  uint32_t least, rdv, warm; /* arena indices, or NO_EV */
  double least_rel, least_srv; /* +inf while least is NO_EV */
  uint32_t least_pos, rdv_pos; /* UINT32_MAX while NO_EV */
  uint64_t rdv_w;
} cell_acc;

typedef struct ev_arena {
  uint32_t n;
  /* Set by a pass that put every entry in ascending positions
   * (indexed_whole); an entry put after it clears it (prefix_holder). */
  uint32_t in_order;
  uint32_t pos[ARENA_CAP];
  spi_candidate head[ARENA_CAP]; /* each entry's ev_head (arena_ev) */
  ev_tail tail[ARENA_CAP];
} ev_arena;

/* Arena entry i's head, with the pass's names for its fields. */
static inline ev_head *arena_ev(ev_arena *a, uint32_t i) {
  return (ev_head *)(void *)&a->head[i];
}
static inline const ev_head *arena_cev(const ev_arena *a, uint32_t i) {
  return (const ev_head *)(const void *)&a->head[i];
}

/* Arena entry i takes ev: its head and its tail, a copy each. */
static inline __attribute__((always_inline)) void
arena_set(ev_arena *a, uint32_t i, const replica_eval *ev) {
  memcpy(&a->head[i], ev, sizeof(ev_head));
  memcpy(&a->tail[i], (const char *)ev + sizeof(ev_head), sizeof(ev_tail));
}

/* The hint of a cell (see seed_from_hint): two words of four positions. */
#define HINT_PER_WORD 4
#define HINT_N (2 * HINT_PER_WORD)
_Static_assert(SPI_SUMMARY_TOP + 1 <= HINT_N, "top and least fit the hint");
_Static_assert(SPI_SUMMARY_CELLS * HINT_N <= 255, "a seed index fits a byte");

/* Positions named by the summaries, ascending and distinct (each one's
 * candidate is made from the evaluation it was ranked by), and the compact
 * index of every arena entry named (a named position has exactly one arena entry: a cell keeps
 * one per replica, and a replica is in one cell). Positions are gathered
 * in a bitmap, so they come out sorted without a sort. */
#define NOT_NAMED 0xffu
_Static_assert(ARENA_CAP < NOT_NAMED, "arena indices fit a byte");
/* cidx holds a candidate index as a signed byte, NOT_NAMED reading as -1:
 * the summary's "none" without a test. */
_Static_assert(ARENA_KEEP <= INT8_MAX, "candidate indices fit a signed byte");
typedef struct named_set {
  uint32_t n;
  uint32_t pos[ARENA_KEEP];
  const uint32_t *at; /* candidate i's position: pos, or the arena's when
                         the candidates are the arena's heads */
  int8_t cidx[ARENA_CAP];
  uint64_t bits[SPI_REPLICA_SLOTS / 64];
} named_set;

typedef struct scan {
  cell_acc cell[SPI_SUMMARY_CELLS];
  ev_arena a;
  /* Positions the pass counted as usable: a prefix holder the summaries
   * did not keep is re-read later, and must have been one of them. */
  uint64_t counted[SPI_REPLICA_SLOTS / 64];
  /* The hinted replicas evaluated first: their KV usage, by seed index
   * (byte_of[pos]; read only where counted is set before the pass). */
  double seed_kv[SPI_SUMMARY_CELLS * HINT_N];
  double seed_served[SPI_SUMMARY_CELLS * HINT_N]; /* ... and tokens served */
  uint64_t seed_wait[SPI_SUMMARY_CELLS * HINT_N]; /* ... and spi__wait_fix */
  /* One byte per position, read only where a bitmap says so: during the
   * lean pass, a hinted replica's index in seed_kv (where counted is set
   * before the pass); during the pass of a fleet named whole
   * (indexed_whole), a regular replica's arena entry (where the index's
   * reg is set); once the summaries are final, a named replica's arena
   * entry (where named.bits is set). One array serves all three: each use
   * has ended when the next begins. */
  uint8_t byte_of[SPI_REPLICA_SLOTS];
  /* The regular replicas the pass through the pool index has offered to
   * their cell's summaries (cleared for the set's words when it starts). */
  uint64_t offered[SPI_REPLICA_SLOTS / 64];
  named_set named; /* compact candidates only */
} scan;

/* What the pass adds up per pool (index enum spi_pool). */
typedef struct pool_sums {
  int64_t kv_fix[4];         /* KV usage of ACTIVE replicas with a fresh
                                load (spi__kv_fix) */
  uint32_t kv_n[4];          /* ... their count */
  uint64_t served[4];        /* tokens served by the usable */
  uint64_t streams[4];       /* max_inflight of the usable */
  uint64_t wait_fix[SPI_SUMMARY_CELLS]; /* their spi__wait_fix, by cell */
} pool_sums;
/* A pool's mean KV usage (0 without an ACTIVE replica with a fresh load). */
static inline double spi__pass_kv_mean(const pool_sums *s, int pool) {
  return s->kv_n[pool] ? (double)s->kv_fix[pool] / SPI_KV_ONE / s->kv_n[pool]
                       : 0.0;
}

/* A usable replica's part of its cell's prefill backlog (pool_sums), in
 * microseconds: its wait behind queued prefill, none when its batch is
 * full (its next request waits for a decode to end, which prefill
 * elsewhere does not lengthen). Integers, so that every pass, whatever
 * order it adds them in, comes to the same sum. */
static inline uint64_t spi__wait_fix(double wait_ms, double running,
                                     uint32_t max_inflight) {
  double cap = max_inflight ? (double)max_inflight : 1.0;
  if (running >= cap || !(wait_ms > 0)) return 0;
  return wait_ms < 1e12 ? (uint64_t)(wait_ms * 1000.0 + 0.5)
                        : UINT64_C(1000000000000000);
}

/* Pass over every replica of set: cands (full candidates, nrep of them)
 * filled when not NULL, else the lean pass that evaluates only replicas
 * that may rank in a summary. Sets every field of sums. */
void spi__pass_run(scan *sc, const route_env *x, const spi_replica_set *set,
                   size_t nrep, spi_candidate *cands, pool_sums *sums);
/* Each pool's mean tokens served by its usable replicas (before shedding
 * empties any), and their mean max_inflight; each cell's mean prefill
 * backlog over its usable replicas, ms (spi_route_context.
 * mean_prefill_wait_ms). One call for the three. */
void spi__pass_means(const scan *sc, const pool_sums *sums, double mean[4],
                     double streams[4], double wait[SPI_SUMMARY_CELLS]);
/* A pool that sheds the route's class: no usable replica there. */
void spi__pass_shed(scan *sc, int32_t pool, spi_candidate *cands, size_t nrep);
/* The replicas that likely hold the longest matched prefix of hashes: their
 * warm TTFT (x->warm_tok is set), re-ranked, and the warm summary. Returns
 * the matched length in blocks. */
uint32_t spi__pass_prefix(scan *sc, route_env *x, const spi_replica_set *set,
                          size_t nrep, const int32_t shed[4],
                          spi_candidate *cands, spi_prefix_index *ix,
                          const uint64_t *hashes, uint32_t nblocks);
/* The candidates and summaries the policy reads. With named (room for
 * ARENA_KEEP), a summaries-only policy's: only the replicas the summaries
 * name are made candidates, and the summaries index them; *cands is where
 * they lie (named, or the scan's own arena when each of its entries is a
 * candidate as it lies, valid while the scan is). Else every replica is a
 * candidate (filled by the pass), the summaries give positions, and
 * *cands is left as it is. Returns the number of candidates. */
size_t spi__pass_candidates(scan *sc, const spi_replica_set *set, size_t nrep,
                            spi_candidate *named, spi_pool_summary *summaries,
                            const spi_candidate **cands);
/* The replica position of a policy's candidate index. */
static inline uint32_t spi__pass_position(const scan *sc, int compact,
                                          uint32_t idx) {
  return compact ? sc->named.at[idx] : idx;
}

#endif /* SPI_REPLICA_PASS_H */
