/*
 * route.c - spi_route(): the routing path that ties the classifier, the key
 * builder, the prefix index, the replica registry, the breakers and the
 * policy module together (the reports that flow back are in
 * ticket_report.c).
 *
 * spi_route pins the engine's RCU domain once and reads the configuration
 * snapshot, the replica set and the prefix index through it. Everything it
 * writes is atomic (replica in-flight counts, index entries, breaker levels,
 * ticket slots, metric counters); scratch space lives in the request and is
 * reused, so a warm route neither allocates nor locks.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "prefill_model.h"

/* A 64-bit mix (splitmix64's finaliser) for rendezvous weights. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

#define GEN_MASK 0xfffu /* the index keeps 12 bits of a replica's gen */

/* An index entry is live while its replica is ACTIVE with the same gen. */
int spi__entry_live(void *ctx, uint32_t slot, uint32_t gen) {
  const spi_engine *e = ctx;
  if (slot >= SPI_REPLICA_SLOTS) return 0;
  const spi_replica_slot *s = &e->registry.slots[slot];
  return atomic_load_explicit(&s->state, memory_order_relaxed) ==
             SPI_REPLICA_ACTIVE &&
         (atomic_load_explicit(&s->gen, memory_order_relaxed) & GEN_MASK) ==
             (gen & GEN_MASK);
}

static int grow_scratch(spi_request *r, size_t hashes, size_t cands) {
  const spi_mem *m = &r->engine->mem;
  if (hashes > r->hashcap) {
    uint64_t *p = spi__calloc(m, hashes, sizeof *p);
    if (!p) return SPI_ENOMEM;
    spi__free(m, r->hashes);
    r->hashes = p;
    r->hashcap = hashes;
  }
  if (cands > r->candcap) {
    spi_candidate *p = spi__calloc(m, cands, sizeof *p);
    if (!p) return SPI_ENOMEM;
    spi__free(m, r->cands);
    r->cands = p;
    r->candcap = cands;
  }
  return SPI_OK;
}

/* ------------------------------------------------- the pass over replicas */

/* What one route needs to evaluate a replica, fixed for the route. */
typedef struct route_env {
  spi_engine *e;
  const spi_router_cfg *cfg;
  const spi_request_view *v;
  int64_t now, max_age;
  double cold_tok, warm_tok; /* uncached prompt tokens: cold, or warm to the
                                match */
  double default_rate;      /* router.prefill_tokens_per_s */
  double default_ms_tok;    /* 1000 / default_rate */
  uint64_t rkey;            /* rendezvous key of the prefix */
  int long_request;         /* too long for an advised machine */
} route_env;

/* One replica as this request sees it. */
typedef struct replica_eval {
  double running, waiting, kv_usage; /* stale reads as saturated */
  double t;                 /* est TTFT, ms */
  double wait_ms, served, rate, ms_tok; /* the TTFT model's parts
                                           (prefill_model.h) */
  uint64_t rdv;             /* rendezvous weight */
  uint32_t inflight, matched;
  uint8_t active, usable, probe, busy, fresh, advised;
} replica_eval;

/* The TTFT estimate (prefill_model.h): every caller goes through there,
 * so the same inputs give the same bits whichever pass computed them. */
static double est_ttft(const route_env *x, const replica_eval *ev,
                       const spi_replica_ident *r, double uncached) {
  return spi__prefill_ttft_ms(x->cfg, ev->wait_ms, ev->running,
                              r->inv_max_inflight, uncached, ev->ms_tok,
                              ev->advised);
}

/* The summary's definitions, one place each. Load is divided by the
 * capacity, not multiplied by its inverse: the header defines it so, and
 * equal ratios must compare equal across replica sizes. */
static inline double rel_ratio(const spi_replica_ident *r, double running,
                               double waiting, uint32_t inflight) {
  return (running + waiting + inflight) / r->cap;
}
static inline int is_busy(const spi_replica_ident *r, double running,
                          double waiting, uint32_t inflight) {
  return (inflight >= r->max_inflight) | (running + waiting >= r->cap);
}

static double rel_load(const replica_eval *ev, const spi_replica_ident *r) {
  return rel_ratio(r, ev->running, ev->waiting, ev->inflight);
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

/* Always inlined: the pass calls it for every replica, and a call per
 * replica (which gcc chose once the cost model's reads made it longer)
 * cost about a quarter of a route over 512 replicas. */
__attribute__((always_inline)) static inline void
read_slot(const route_env *x, const spi_replica_slot *s,
                             slot_read *o) {
  spi_load_view l;
  spi__replica_load(s, x->now, x->max_age, &l);
  o->run = l.running;
  o->wait = l.waiting;
  o->kv = l.kv_usage;
  o->fresh = l.fresh;
  spi__prefill_read(s, x->default_rate, x->default_ms_tok, &o->pf);
  o->inflight = atomic_load_explicit(&s->inflight, memory_order_relaxed);
  o->state = atomic_load_explicit(&s->state, memory_order_relaxed);
  o->breaker = atomic_load_explicit(&s->breaker, memory_order_relaxed);
  o->advised_until =
      atomic_load_explicit(&s->advised_until_ns, memory_order_relaxed);
  o->cooldown_until =
      atomic_load_explicit(&s->cooldown_until_ns, memory_order_relaxed);
}

static inline int busy_of(const spi_replica_ident *r, const slot_read *rd) {
  return is_busy(r, rd->run, rd->wait, rd->inflight);
}

static inline double rel_of(const spi_replica_ident *r, const slot_read *rd) {
  return rel_ratio(r, rd->run, rd->wait, rd->inflight);
}

/* Whether the replica takes a request now, all but the pool's KV shedding
 * (which depends on the class): ACTIVE, its spot pool not cooling down, no
 * advice against a long request, serving the model, its breaker letting it
 * (*probe: as the half-open probe). The common case takes no branch that
 * depends on the replica: most serve any model, most breakers are closed. */
static inline int usable_of(const route_env *x, const spi_replica_ident *r,
                            spi_replica_slot *s, const slot_read *rd,
                            int *probe) {
  int advised = rd->advised_until > x->now;
  int ok = (rd->state == SPI_REPLICA_ACTIVE) &
           !(r->pool == SPI_POOL_SPOT && rd->cooldown_until > x->now) &
           !(advised & x->long_request);
  *probe = 0;
  if (ok && r->models_len)
    ok = spi__replica_serves(r, x->v->model, x->v->model_len);
  if (ok && rd->breaker != SPI_BREAKER_CLOSED)
    ok = spi__breaker_allows(s, x->now, probe);
  return ok;
}

/* The evaluation of what was read, with usable and probe as given. */
static inline void eval_of(const route_env *x, const spi_replica_ident *r,
                           const slot_read *rd, uint32_t matched, int usable,
                           int probe, replica_eval *o) {
  o->running = rd->run;
  o->waiting = rd->wait;
  o->kv_usage = rd->kv;
  o->fresh = (uint8_t)rd->fresh;
  o->inflight = rd->inflight;
  o->matched = matched;
  o->active = rd->state == SPI_REPLICA_ACTIVE;
  o->advised = rd->advised_until > x->now;
  o->rate = rd->pf.rate;
  o->ms_tok = rd->pf.ms_tok;
  o->served = rd->pf.served;
  o->wait_ms = spi__prefill_wait_ms(x->cfg, rd->wait, rd->pf.queued, rd->pf.ms_tok);
  o->t = est_ttft(x, o, r, matched ? x->warm_tok : x->cold_tok);
  o->rdv = mix64(r->id_hash ^ x->rkey);
  o->busy = (uint8_t)busy_of(r, rd);
  o->usable = (uint8_t)usable;
  o->probe = (uint8_t)(usable && probe);
}

/* Evaluate one replica: load, eligibility (all but shedding), TTFT
 * estimate and rendezvous weight. */
static inline void eval_replica(const route_env *x, const spi_replica_ident *r,
                                uint32_t matched, replica_eval *o) {
  spi_replica_slot *s = &x->e->registry.slots[r->slot];
  slot_read rd;
  read_slot(x, s, &rd);
  int probe;
  int ok = usable_of(x, r, s, &rd, &probe);
  eval_of(x, r, &rd, matched, ok, probe, o);
}

static void fill_candidate(spi_candidate *c, const spi_replica_ident *r,
                           const replica_eval *ev) {
  c->id = r->id;
  c->id_len = r->id_len;
  c->pool = r->pool;
  c->model_tier = r->model_tier;
  c->eligible = ev->usable && !ev->probe;
  c->probe = ev->probe;
  c->fresh = ev->fresh;
  c->advised = ev->advised;
  c->running = ev->running;
  c->waiting = ev->waiting;
  c->kv_usage = ev->kv_usage;
  c->inflight = ev->inflight;
  c->max_inflight = r->max_inflight;
  c->matched_blocks = ev->matched;
  c->reserved1 = 0;
  c->rendezvous = ev->rdv;
  c->est_ttft_ms = ev->t;
  c->usd_per_hour = r->usd_per_hour;
  c->est_wait_ms = ev->wait_ms;
  c->served_tokens = ev->served;
  c->prefill_tokens_per_s = ev->rate;
}

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
  top_ent top[SPI_SUMMARY_TOP]; /* best first */
  /* What a replica must beat to enter each summary, as (value, position)
   * pairs: every summary is a minimum or maximum under a total order, so
   * the outcome does not depend on the order replicas are met in. */
  double thr_t;              /* the last top entry's TTFT, +inf until full */
  uint32_t thr_pos;          /* ... and position, UINT32_MAX until full */
  uint32_t least, rdv, warm; /* arena indices, or NO_EV */
  double least_rel;          /* +inf while least is NO_EV */
  uint32_t least_pos, rdv_pos; /* UINT32_MAX while NO_EV */
  uint64_t rdv_w;
} cell_acc;

typedef struct ev_arena {
  uint32_t n;
  uint32_t pos[ARENA_CAP];
  replica_eval ev[ARENA_CAP];
} ev_arena;

/* The hint of a cell (see seed_from_hint): two words of four positions. */
#define HINT_PER_WORD 4
#define HINT_N (2 * HINT_PER_WORD)
_Static_assert(SPI_SUMMARY_TOP + 1 <= HINT_N, "top and least fit the hint");
_Static_assert(SPI_SUMMARY_CELLS * HINT_N <= 255, "a seed index fits a byte");

typedef struct scan {
  cell_acc cell[SPI_SUMMARY_CELLS];
  ev_arena a;
  /* Positions the pass counted as usable: a prefix holder the summaries
   * did not keep is re-read later, and must have been one of them. */
  uint64_t counted[SPI_REPLICA_SLOTS / 64];
  /* The hinted replicas evaluated first: their KV usage, by position (read
   * only where counted is set before the pass). */
  double seed_kv[SPI_SUMMARY_CELLS * HINT_N];
  double seed_served[SPI_SUMMARY_CELLS * HINT_N]; /* ... and tokens served */
  uint8_t seed_of[SPI_REPLICA_SLOTS];
} scan;

static void mark_counted(scan *sc, size_t pos) {
  sc->counted[pos / 64] |= UINT64_C(1) << (pos % 64);
}
static int was_counted(const scan *sc, size_t pos) {
  return (int)(sc->counted[pos / 64] >> (pos % 64) & 1u);
}

static void cell_clear(cell_acc *c) {
  c->usable = c->n_top = 0;
  c->thr_t = HUGE_VAL;
  c->thr_pos = UINT32_MAX;
  c->least = c->rdv = c->warm = NO_EV;
  c->least_rel = HUGE_VAL;
  c->least_pos = c->rdv_pos = UINT32_MAX;
  c->rdv_w = 0;
}

/* Drop the evaluations no summary points to; renumber the rest. */
static void arena_sweep(scan *sc) {
  uint32_t map[ARENA_CAP];
  for (uint32_t i = 0; i < sc->a.n; i++) map[i] = NO_EV;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    cell_acc *c = &sc->cell[k];
    for (uint32_t j = 0; j < c->n_top; j++) map[c->top[j].ei] = 0;
    if (c->least != NO_EV) map[c->least] = 0;
    if (c->rdv != NO_EV) map[c->rdv] = 0;
    if (c->warm != NO_EV) map[c->warm] = 0;
  }
  uint32_t n = 0;
  for (uint32_t i = 0; i < sc->a.n; i++) {
    if (map[i] == NO_EV) continue;
    sc->a.pos[n] = sc->a.pos[i];
    sc->a.ev[n] = sc->a.ev[i];
    map[i] = n++;
  }
  sc->a.n = n;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    cell_acc *c = &sc->cell[k];
    for (uint32_t j = 0; j < c->n_top; j++) c->top[j].ei = map[c->top[j].ei];
    if (c->least != NO_EV) c->least = map[c->least];
    if (c->rdv != NO_EV) c->rdv = map[c->rdv];
    if (c->warm != NO_EV) c->warm = map[c->warm];
  }
}

static uint32_t arena_put(scan *sc, uint32_t pos, const replica_eval *ev) {
  if (sc->a.n == ARENA_CAP) arena_sweep(sc);
  uint32_t i = sc->a.n++;
  sc->a.pos[i] = pos;
  sc->a.ev[i] = *ev;
  return i;
}

/* Ranking by TTFT, ties to the lower position. Bitwise, not short-circuit:
 * the outcome is data, and a branch on it would be mispredicted often. */
static inline int ttft_before(double ta, uint32_t pa, double tb, uint32_t pb) {
  return (ta < tb) | ((ta == tb) & (pa < pb));
}

/* Whether a replica enters each summary now. Bitwise, like ttft_before.
 * An empty cell takes anything: (+inf, UINT32_MAX) loses to every finite
 * value, and weight 0 at UINT32_MAX to every weight at a real position. */
static inline int top_enters(const cell_acc *c, double t, uint32_t pos) {
  return ttft_before(t, pos, c->thr_t, c->thr_pos);
}
static inline int least_enters(const cell_acc *c, double rel, uint32_t pos) {
  return (rel < c->least_rel) | ((rel == c->least_rel) & (pos < c->least_pos));
}
static inline int rdv_enters(const cell_acc *c, uint64_t w, uint32_t pos) {
  return (w > c->rdv_w) | ((w == c->rdv_w) & (pos < c->rdv_pos));
}

/* Keep top sorted, best first (ties to the lower position, as the summary
 * promises): a better replica shifts the worse ones down, and the last one
 * drops out once top is full. The caller checked top_enters. */
static void top_insert(cell_acc *c, double t, uint32_t pos, uint32_t ei) {
  uint32_t n = c->n_top;
  uint32_t at = n < SPI_SUMMARY_TOP ? n : n - 1;
  while (at > 0 && ttft_before(t, pos, c->top[at - 1].t, c->top[at - 1].pos)) {
    c->top[at] = c->top[at - 1];
    at--;
  }
  c->top[at].t = t;
  c->top[at].pos = pos;
  c->top[at].ei = ei;
  if (n < SPI_SUMMARY_TOP) c->n_top = n + 1;
  if (c->n_top == SPI_SUMMARY_TOP) {
    c->thr_t = c->top[SPI_SUMMARY_TOP - 1].t;
    c->thr_pos = c->top[SPI_SUMMARY_TOP - 1].pos;
  }
}

/* A usable replica, already counted in usable: let it into whatever it
 * ranks in. */
static void cell_offer(scan *sc, int k, uint32_t pos, double rel,
                       const replica_eval *ev) {
  cell_acc *c = &sc->cell[k];
  uint32_t ei = NO_EV;
  if (top_enters(c, ev->t, pos)) {
    ei = arena_put(sc, pos, ev);
    top_insert(c, ev->t, pos, ei);
  }
  if (least_enters(c, rel, pos)) {
    if (ei == NO_EV) ei = arena_put(sc, pos, ev);
    c->least = ei;
    c->least_rel = rel;
    c->least_pos = pos;
  }
  if (!ev->busy && rdv_enters(c, ev->rdv, pos)) {
    if (ei == NO_EV) ei = arena_put(sc, pos, ev);
    c->rdv = ei;
    c->rdv_w = ev->rdv;
    c->rdv_pos = pos;
  }
}

static void cell_add(scan *sc, int k, uint32_t pos, const spi_replica_ident *r,
                     const replica_eval *ev) {
  sc->cell[k].usable++;
  mark_counted(sc, pos);
  cell_offer(sc, k, pos, rel_load(ev, r), ev);
}

/*
 * The hint: for each cell, the positions of the last route's top entries
 * and of its least loaded replica, plus one (0 = none), 16 bits each. The
 * pass evaluates them first, so the summaries' thresholds are tight from
 * the start and few of the other replicas get in: a replica that enters a
 * summary costs several times one that does not. The summaries are the
 * same whatever the hint says (they do not depend on the order replicas
 * are met in, and every replica is still read once), so a stale hint, one
 * from an older replica set, or one torn by two routes storing at once
 * only costs time. (The rendezvous winner depends on the prefix, so it is
 * not hinted: a table of recent prefixes' winners took the pass's
 * rendezvous offers to nearly none and saved no time, the evaluations it
 * added costing what the offers had.)
 */
_Static_assert(SPI_REPLICA_SLOTS < 0xffff, "a position plus one fits 16 bits");

/* Evaluate the replica at hinted v (position + 1) for cell k, once, and
 * offer it if usable: it is then marked in sc->counted (which was clear),
 * so the pass counts it without reading it again, and its KV usage is kept
 * for the pass to add in position order (the sum then has the same bits as
 * the full pass's). */
static void seed_one(const route_env *x, const spi_replica_set *set,
                     size_t nrep, scan *sc, int k, uint32_t v, uint32_t *n) {
  if (v == 0 || v > nrep || was_counted(sc, v - 1)) return;
  uint32_t pos = v - 1;
  const spi_replica_ident *r = &set->r[pos];
  if (r->cell != k) return;
  spi_replica_slot *s = &x->e->registry.slots[r->slot];
  slot_read rd;
  read_slot(x, s, &rd);
  int probe;
  if (!usable_of(x, r, s, &rd, &probe)) return;
  replica_eval ev;
  eval_of(x, r, &rd, 0, 1, probe, &ev);
  mark_counted(sc, pos);
  sc->seed_kv[*n] = rd.kv;
  sc->seed_served[*n] = rd.pf.served;
  sc->seed_of[pos] = (uint8_t)(*n)++;
  cell_offer(sc, k, pos, rel_of(r, &rd), &ev);
}

static void seed_from_hint(const route_env *x, const spi_replica_set *set,
                           size_t nrep, scan *sc) {
  uint32_t n = 0;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    for (int h = 0; h < 2; h++) {
      uint64_t word = atomic_load_explicit(&x->e->route_hint[k][h],
                                           memory_order_relaxed);
      for (int j = 0; j < HINT_PER_WORD; j++, word >>= 16)
        seed_one(x, set, nrep, sc, k, (uint32_t)(word & 0xffffu), &n);
    }
}

/* Leave this route's ranking as the next one's hint; store only what
 * changed, so routes that agree do not write the shared line. */
static void hint_store(spi_engine *e, const scan *sc) {
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    const cell_acc *c = &sc->cell[k];
    uint64_t w[2] = {0, 0};
    for (uint32_t j = 0; j < c->n_top; j++)
      w[j / HINT_PER_WORD] |= (uint64_t)(c->top[j].pos + 1)
                              << (16 * (j % HINT_PER_WORD));
    if (c->least != NO_EV)
      w[1] |= (uint64_t)(c->least_pos + 1) << (16 * (HINT_N - 1 - HINT_PER_WORD));
    for (int h = 0; h < 2; h++)
      if (atomic_load_explicit(&e->route_hint[k][h], memory_order_relaxed) != w[h])
        atomic_store_explicit(&e->route_hint[k][h], w[h], memory_order_relaxed);
  }
}

/*
 * The pass over the replicas when no policy needs every candidate. The
 * hinted replicas go first (seed_from_hint); then, in position order, most
 * replicas rank in nothing (not among the best TTFTs, not the least loaded,
 * not the rendezvous winner so far), so the common case is computed in
 * registers from the two cache lines of the replica and compared against
 * the summaries' thresholds; only a replica that gets in, or one that is
 * not plainly eligible (breaker not closed, a models list, an interruption
 * signal), takes the general path.
 */
static void scan_lean(const route_env *x, const spi_replica_set *set,
                      size_t nrep, scan *sc, double *kv_sum, double *kv_n,
                      double *served_sum) {
  const spi_router_cfg *cfg = x->cfg;
  spi_replica_slot *slots = x->e->registry.slots;
  seed_from_hint(x, set, nrep, sc);
  /* Tallies stay in registers: adding to memory every iteration would chain
   * the iterations through store-to-load forwarding. */
  uint64_t counts = 0;  /* usable per cell, 16 bits each (nrep <= 4096) */
  uint64_t seeded = nrep ? sc->counted[0] : 0; /* of the 64 around i */
  uint64_t word = 0;    /* the counted bits of positions [i & ~63, i] */
  uint64_t kv_count = 0; /* ACTIVE per pool, 32 bits each */
  double kv_spot = 0, kv_od = 0;
  double sv_spot = 0, sv_od = 0; /* tokens served by the usable */
  for (size_t i = 0; i < nrep; i++) {
    if (i && i % 64 == 0) {
      sc->counted[i / 64 - 1] = word;
      word = 0;
      seeded = sc->counted[i / 64];
    }
    const spi_replica_ident *r = &set->r[i];
    int spot = r->pool == SPI_POOL_SPOT;
    if (seeded >> (i % 64) & 1) {
      /* Read and offered already: only counted here, in order. */
      double kv = sc->seed_kv[sc->seed_of[i]];
      double sv = sc->seed_served[sc->seed_of[i]];
      kv_spot += spot ? kv : 0.0;
      kv_od += spot ? 0.0 : kv;
      sv_spot += spot ? sv : 0.0;
      sv_od += spot ? 0.0 : sv;
      kv_count += spot ? 1u : UINT64_C(1) << 32;
      counts += UINT64_C(1) << (16 * r->cell);
      word |= UINT64_C(1) << (i % 64);
      continue;
    }
    spi_replica_slot *s = &slots[r->slot];
    slot_read rd;
    read_slot(x, s, &rd);
    if (rd.state != SPI_REPLICA_ACTIVE) continue;
    kv_spot += spot ? rd.kv : 0.0;
    kv_od += spot ? 0.0 : rd.kv;
    kv_count += spot ? 1u : UINT64_C(1) << 32;
    int probe;
    if (r->cell < 0 || !usable_of(x, r, s, &rd, &probe)) continue;
    counts += UINT64_C(1) << (16 * r->cell);
    word |= UINT64_C(1) << (i % 64);
    sv_spot += spot ? rd.pf.served : 0.0;
    sv_od += spot ? 0.0 : rd.pf.served;
    cell_acc *c = &sc->cell[r->cell];
    int advised = rd.advised_until > x->now;
    double wait = spi__prefill_wait_ms(cfg, rd.wait, rd.pf.queued, rd.pf.ms_tok);
    double t = spi__prefill_ttft_ms(cfg, wait, rd.run, r->inv_max_inflight,
                                    x->cold_tok, rd.pf.ms_tok, advised);
    double rel = rel_of(r, &rd);
    int busy = busy_of(r, &rd);
    uint64_t w = mix64(r->id_hash ^ x->rkey);
    uint32_t pos = (uint32_t)i;
    /* One branch for "may rank in anything": a value at most a threshold
     * (ties with one are rare), then the exact test with positions; only
     * then the full evaluation. */
    if (((t <= c->thr_t) | (rel <= c->least_rel) |
         ((!busy) & (w >= c->rdv_w))) &&
        (top_enters(c, t, pos) | least_enters(c, rel, pos) |
         ((!busy) & rdv_enters(c, w, pos)))) {
      replica_eval ev;
      eval_of(x, r, &rd, 0, 1, probe, &ev);
      cell_offer(sc, r->cell, pos, rel, &ev);
    }
  }
  if (nrep) sc->counted[(nrep - 1) / 64] = word;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    sc->cell[k].usable += (uint32_t)(counts >> (16 * k) & 0xffffu);
  kv_sum[SPI_POOL_SPOT] += kv_spot;
  kv_sum[SPI_POOL_ON_DEMAND] += kv_od;
  kv_n[SPI_POOL_SPOT] += (double)(kv_count & 0xffffffffu);
  kv_n[SPI_POOL_ON_DEMAND] += (double)(kv_count >> 32);
  served_sum[SPI_POOL_SPOT] += sv_spot;
  served_sum[SPI_POOL_ON_DEMAND] += sv_od;
  hint_store(x->e, sc);
}

/* The arena index of the scan's evaluation of pos in cell c, or NO_EV. */
static uint32_t cell_find(const cell_acc *c, const ev_arena *a, uint32_t pos) {
  for (uint32_t k = 0; k < c->n_top; k++)
    if (c->top[k].pos == pos) return c->top[k].ei;
  if (c->least != NO_EV && a->pos[c->least] == pos) return c->least;
  if (c->rdv != NO_EV && a->pos[c->rdv] == pos) return c->rdv;
  return NO_EV;
}

/* A usable replica of cell k holds the matched prefix. Its evaluation (the
 * scan's when a summary kept one, updated in place, so every reference
 * agrees) has the warm TTFT: re-rank it, and let it compete for warm. */
static void cell_warm(scan *sc, int k, uint32_t pos, uint32_t ei) {
  cell_acc *c = &sc->cell[k];
  const replica_eval *ev = &sc->a.ev[ei];
  /* Its TTFT only drops: take it out and put it back in its new place. */
  for (uint32_t j = 0; j < c->n_top; j++)
    if (c->top[j].pos == pos) {
      for (; j + 1 < c->n_top; j++) c->top[j] = c->top[j + 1];
      c->n_top--;
      c->thr_t = HUGE_VAL;
      c->thr_pos = UINT32_MAX;
      break;
    }
  if (top_enters(c, ev->t, pos)) top_insert(c, ev->t, pos, ei);
  if (c->warm == NO_EV) {
    c->warm = ei;
    return;
  }
  const replica_eval *w = &sc->a.ev[c->warm];
  if (ev->matched > w->matched ||
      (ev->matched == w->matched &&
       ttft_before(ev->t, pos, w->t, sc->a.pos[c->warm])))
    c->warm = ei;
}

/* Positions named by the summaries, ascending and distinct, with the
 * evaluation each was ranked by, and the compact index of every arena
 * entry named (a named position has exactly one arena entry: a cell keeps
 * one per replica, and a replica is in one cell). Positions are gathered
 * in a bitmap, so they come out sorted without a sort. */
#define NOT_NAMED 0xffu
_Static_assert(ARENA_CAP < NOT_NAMED, "arena indices fit a byte");
typedef struct named_set {
  uint32_t n;
  uint32_t pos[ARENA_KEEP];
  uint32_t ei[ARENA_KEEP];
  uint8_t cidx[ARENA_CAP];
  uint64_t bits[SPI_REPLICA_SLOTS / 64];
  uint8_t ei_of[SPI_REPLICA_SLOTS]; /* read only where bits are set */
} named_set;

static void named_mark(named_set *ns, const ev_arena *a, uint32_t ei) {
  uint32_t pos = a->pos[ei];
  ns->bits[pos / 64] |= UINT64_C(1) << (pos % 64);
  ns->ei_of[pos] = (uint8_t)ei;
}

static void named_collect(named_set *ns, size_t nrep) {
  ns->n = 0;
  for (size_t w = 0; w < (nrep + 63) / 64; w++)
    for (uint64_t b = ns->bits[w]; b; b &= b - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(b));
      ns->pos[ns->n] = pos;
      ns->ei[ns->n] = ns->ei_of[pos];
      ns->n++;
    }
}

/* The candidate index of arena entry ei: its position (full), or its rank
 * among the named positions (compact). */
static int32_t index_of(const named_set *ns, const ev_arena *a, uint32_t ei) {
  if (!ns) return (int32_t)a->pos[ei];
  return ns->cidx[ei] == NOT_NAMED ? -1 : (int32_t)ns->cidx[ei];
}

static void summary_out(const scan *sc, int k, const named_set *ns,
                        spi_pool_summary *o) {
  const cell_acc *c = &sc->cell[k];
  const ev_arena *a = &sc->a;
  o->pool = k / 2 + SPI_POOL_SPOT;
  o->model_tier = k % 2 + SPI_TIER_SMALL;
  o->usable = c->usable;
  o->n_top = c->n_top;
  for (uint32_t j = 0; j < SPI_SUMMARY_TOP; j++)
    o->top[j] = j < c->n_top ? index_of(ns, a, c->top[j].ei) : -1;
  o->warm = c->warm != NO_EV ? index_of(ns, a, c->warm) : -1;
  o->least = c->least != NO_EV ? index_of(ns, a, c->least) : -1;
  o->rendezvous = c->rdv != NO_EV ? index_of(ns, a, c->rdv) : -1;
  o->reserved0 = 0;
}

/* The candidate array position of a policy's index. */
static uint32_t pos_of(const named_set *ns, uint32_t idx) {
  return ns ? ns->pos[idx] : idx;
}

static uint64_t prompt_tokens(const spi_request_view *v, double bytes_per_token) {
  if (v->prompt_tokens_set) return (uint64_t)v->prompt_tokens;
  if (v->token_count) return v->token_count;
  return (uint64_t)ceil((double)v->prompt_len / bytes_per_token);
}

static int choice_ok(const spi_policy_choice *c, const spi_route_context *x) {
  if (c->pool == SPI_POOL_QUEUE || c->pool == 0) return 1;
  if (c->pool != SPI_POOL_SPOT && c->pool != SPI_POOL_ON_DEMAND) return 0;
  if (c->n_order < 1 || c->n_order > 1 + x->max_fallbacks) return 0;
  for (uint32_t i = 0; i < c->n_order; i++) {
    if (c->order[i] >= x->n_candidates) return 0;
    const spi_candidate *k = &x->candidates[c->order[i]];
    if (!k->eligible && !(i == 0 && k->probe)) return 0;
  }
  return x->candidates[c->order[0]].pool == c->pool;
}

static int run_policy(const spi_modentry *m, void *inst,
                      const spi_route_context *x, spi_policy_choice *out) {
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  int rc = m->m.policy.choose(m->state, inst, x, out);
  out->reason[sizeof out->reason - 1] = '\0';
  if (rc == SPI_OK && !choice_ok(out, x)) rc = SPI_EMODULE;
  return rc;
}

static void copy_id(char dst[SPI_ID_MAX], const char *src, size_t len) {
  if (len >= SPI_ID_MAX) len = SPI_ID_MAX - 1;
  memcpy(dst, src, len);
  dst[len] = '\0';
}

/* What a route has taken that it must give back if it fails: the
 * half-open probe it claimed, and a ticket it took but did not publish. */
typedef struct route_taken {
  spi_replica_slot *probe;
  spi_ticket_table *tt;
  spi_ticket *ticket;
} route_taken;

/* The one way out of a route that fails after taking something: give all
 * of it back, so a failed route leaves no trace (a probe kept here would
 * leave its replica half-open for good). Returns rc. */
static int route_unwind(route_taken *t, spi_decision *out, int rc) {
  if (t->ticket) spi__ticket_release(t->tt, t->ticket);
  if (t->probe) spi__breaker_release_probe(t->probe);
  t->ticket = NULL;
  t->probe = NULL;
  out->pool = 0;
  out->ticket = 0;
  return rc;
}

/* Route with a pinned snapshot. */
static int route_pinned(spi_request *req, spi_snapshot *snap,
                        spi_request_view *v, spi_decision *out) {
  spi_engine *e = req->engine;
  const spi_router_cfg *rc_cfg = &snap->router;
  const spi_replica_set *set = atomic_load(&e->registry.set);
  spi_prefix_index *ix = atomic_load(&e->index);
  int rc;
  int64_t now = spi__engine_now(e);
  int64_t max_age = rc_cfg->load_max_age_ms * 1000000;
  size_t nrep = set ? set->n : 0;

  /* Key and prefix blocks, into the request's warm scratch. */
  if ((rc = spi__key_in(req, snap, v, &out->key))) return rc;
  size_t nblocks = 0;
  rc = spi__blocks_in(req, snap, v, &out->key, req->hashes, req->hashcap,
                      &nblocks);
  if (rc == SPI_EBUFSIZE) {
    if (grow_scratch(req, nblocks, 0))
      return spi__req_fail(req, SPI_ENOMEM, "route: out of memory");
    rc = spi__blocks_in(req, snap, v, &out->key, req->hashes, req->hashcap,
                        &nblocks);
  }
  if (rc) return rc;
  out->total_blocks = (uint32_t)nblocks;
  if (ix) spi__index_prefetch(ix, req->hashes, (uint32_t)nblocks);

  /* Which policies read every candidate: the others get the summaries and
   * only the candidates those name. */
  const spi_slot *sl = &snap->slot[SPI_MODULE_POLICY];
  int full = !(sl->mod->m.policy.flags & SPI_POLICY_SUMMARIES_ONLY) ||
             (snap->shadow.mod &&
              !(snap->shadow.mod->m.policy.flags & SPI_POLICY_SUMMARIES_ONLY));
  if (full && req->candcap < nrep) {
    if (grow_scratch(req, 0, nrep))
      return spi__req_fail(req, SPI_ENOMEM, "route: out of memory");
  }

  route_env env;
  env.e = e;
  env.cfg = rc_cfg;
  env.v = v;
  env.now = now;
  env.max_age = max_age;
  uint64_t tokens = prompt_tokens(v, rc_cfg->bytes_per_token);
  env.cold_tok = (double)tokens;
  env.warm_tok = env.cold_tok;
  env.default_rate = rc_cfg->prefill_tokens_per_s;
  env.default_ms_tok = 1000.0 / env.default_rate;
  env.rkey = nblocks ? req->hashes[0] : out->key.low64;
  int64_t expect_out = v->expected_output_tokens_set ? v->expected_output_tokens
                       : v->max_output_tokens_set    ? v->max_output_tokens
                                                     : 0;
  env.long_request = expect_out > rc_cfg->advised_max_output_tokens;

  /* One pass over the replicas: each one's load and eligibility, the
   * pools' mean KV usage (ACTIVE replicas; stale counts as full), and the
   * per pool and tier summaries. */
  double kv_sum[4] = {0}, kv_n[4] = {0}, served_sum[4] = {0};
  scan sc;
  sc.a.n = 0;
  memset(sc.counted, 0, (nrep + 63) / 64 * sizeof sc.counted[0]);
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) cell_clear(&sc.cell[k]);
  if (!full) scan_lean(&env, set, nrep, &sc, kv_sum, kv_n, served_sum);
  for (size_t i = 0; full && i < nrep; i++) {
    const spi_replica_ident *r = &set->r[i];
    replica_eval ev;
    eval_replica(&env, r, 0, &ev);
    if (ev.active) {
      kv_sum[r->pool] += ev.kv_usage;
      kv_n[r->pool] += 1;
    }
    fill_candidate(&req->cands[i], r, &ev);
    if (ev.usable && r->cell >= 0) {
      served_sum[r->pool] += ev.served;
      cell_add(&sc, r->cell, (uint32_t)i, r, &ev);
    }
  }
  /* The pools' mean tokens served, before shedding empties any. */
  double mean_served[4] = {0};
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++) {
    uint32_t n = sc.cell[SPI_SUMMARY_INDEX(p, SPI_TIER_SMALL)].usable +
                 sc.cell[SPI_SUMMARY_INDEX(p, SPI_TIER_LARGE)].usable;
    mean_served[p] = n ? served_sum[p] / (double)n : 0.0;
  }

  /* The KV breakers, and the class at the worse pool's pressure. */
  int32_t level[4] = {0}, kvl[4] = {0};
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++) {
    double press = kv_n[p] > 0 ? kv_sum[p] / kv_n[p] : 0;
    unsigned old = atomic_load(&e->kv_level[p]);
    int nl = spi__kv_breaker_step((int)old, press, rc_cfg);
    if ((unsigned)nl != old &&
        atomic_compare_exchange_strong(&e->kv_level[p], &old, (unsigned)nl) &&
        nl > (int)old && atomic_load(&e->metrics))
      spi__metrics_breaker_open(atomic_load(&e->metrics));
    kvl[p] = nl;
    level[p] = spi__pressure_level(press, rc_cfg);
  }
  spi_classification cls;
  memset(&cls, 0, sizeof cls);
  cls.struct_size = sizeof cls;
  int32_t worst = level[1] > level[2] ? level[1] : level[2];
  if ((rc = spi__classify_in(req, snap, v, worst, &cls))) return rc;

  /* A pool that sheds this class has no usable replica. */
  int32_t shed[4] = {0};
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++) {
    shed[p] = (kvl[p] >= 1 && cls.klass == SPI_CLASS_BRONZE) ||
              (kvl[p] >= 2 && cls.klass != SPI_CLASS_GOLD);
    if (!shed[p]) continue;
    cell_clear(&sc.cell[SPI_SUMMARY_INDEX(p, SPI_TIER_SMALL)]);
    cell_clear(&sc.cell[SPI_SUMMARY_INDEX(p, SPI_TIER_LARGE)]);
    if (full)
      for (size_t i = 0; i < nrep; i++)
        if (req->cands[i].pool == p) req->cands[i].eligible = req->cands[i].probe = 0;
  }

  /* Which replicas likely hold the prefix (its buckets were prefetched
   * before the pass), and their warm TTFT. */
  uint32_t holders[64], hgens[64], nh = 0, matched = 0;
  if (ix && nblocks)
    matched = spi__index_longest(ix, req->hashes, (uint32_t)nblocks,
                                 spi__entry_live, e, holders, hgens, 64, &nh);
  if (matched)
    env.warm_tok = env.cold_tok * (1.0 - (double)matched / (double)nblocks);
  for (uint32_t h = 0; h < nh; h++) {
    uint16_t pos = set->pos_of_slot[holders[h]];
    if (pos == SPI_NO_POS || pos >= nrep) continue;
    const spi_replica_ident *r = &set->r[pos];
    int k = r->cell >= 0 && !shed[r->pool] ? r->cell : -1;
    uint32_t ei = k >= 0 ? cell_find(&sc.cell[k], &sc.a, pos) : NO_EV;
    replica_eval fresh, *ev = &fresh;
    if (ei != NO_EV) {
      ev = &sc.a.ev[ei];
      ev->matched = matched;
      ev->t = est_ttft(&env, ev, r, env.warm_tok);
    } else if (full) {
      /* What the candidate already says, so it stays one reading. */
      const spi_candidate *c = &req->cands[pos];
      fresh.running = c->running;
      fresh.waiting = c->waiting;
      fresh.kv_usage = c->kv_usage;
      fresh.rdv = c->rendezvous;
      fresh.inflight = c->inflight;
      fresh.matched = matched;
      fresh.active = 1;
      fresh.usable = (uint8_t)(c->eligible || c->probe);
      fresh.probe = (uint8_t)c->probe;
      fresh.busy = (uint8_t)is_busy(r, c->running, c->waiting, c->inflight);
      fresh.fresh = (uint8_t)c->fresh;
      fresh.advised = (uint8_t)c->advised;
      fresh.wait_ms = c->est_wait_ms;
      fresh.served = c->served_tokens;
      fresh.rate = c->prefill_tokens_per_s;
      /* The same division as spi__prefill_read's, so the same bits. */
      fresh.ms_tok = 1000.0 / fresh.rate;
      fresh.t = est_ttft(&env, &fresh, r, env.warm_tok);
    } else if (k >= 0 && was_counted(&sc, pos)) {
      eval_replica(&env, r, matched, &fresh);
    } else {
      continue; /* not usable when the pass met it */
    }
    if (full) {
      req->cands[pos].matched_blocks = matched;
      req->cands[pos].est_ttft_ms = ev->t;
    }
    if (!ev->usable || k < 0) continue;
    if (ei == NO_EV) ei = arena_put(&sc, pos, ev);
    cell_warm(&sc, k, pos, ei);
  }

  /* The candidates a summaries-only policy reads: those named. */
  named_set named, *ns = NULL;
  size_t ncand = nrep;
  /* The compact array lives on the stack: it is small, and so it is in
   * cache on every route and never allocated. */
  spi_candidate compact[ARENA_KEEP];
  spi_candidate *cands = req->cands;
  if (!full) {
    ns = &named;
    memset(named.cidx, NOT_NAMED, sizeof named.cidx);
    memset(named.bits, 0, (nrep + 63) / 64 * sizeof named.bits[0]);
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
      const cell_acc *c = &sc.cell[k];
      for (uint32_t j = 0; j < c->n_top; j++) named_mark(&named, &sc.a, c->top[j].ei);
      if (c->warm != NO_EV) named_mark(&named, &sc.a, c->warm);
      if (c->least != NO_EV) named_mark(&named, &sc.a, c->least);
      if (c->rdv != NO_EV) named_mark(&named, &sc.a, c->rdv);
    }
    named_collect(&named, nrep);
    cands = compact;
    for (uint32_t j = 0; j < named.n; j++) {
      named.cidx[named.ei[j]] = (uint8_t)j;
      fill_candidate(&compact[j], &set->r[named.pos[j]], &sc.a.ev[named.ei[j]]);
    }
    ncand = named.n;
  }
  spi_pool_summary sums[SPI_SUMMARY_CELLS];
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) summary_out(&sc, k, ns, &sums[k]);

  spi_route_context x;
  memset(&x, 0, sizeof x);
  x.struct_size = sizeof x;
  x.candidate_size = sizeof(spi_candidate);
  x.req = v;
  x.cls = &cls;
  x.candidates = cands;
  x.n_candidates = ncand;
  x.total_blocks = (uint32_t)nblocks;
  x.max_fallbacks = (uint32_t)rc_cfg->max_fallbacks;
  for (int p = 0; p < 4; p++) {
    x.pressure[p] = level[p];
    x.shed[p] = shed[p];
  }
  x.now_ns = now;
  x.summaries = sums;
  x.summary_size = sizeof(spi_pool_summary);
  x.n_summaries = SPI_SUMMARY_CELLS;
  for (int p = 0; p < 4; p++) x.mean_served_tokens[p] = mean_served[p];
  x.prompt_tokens = (double)tokens;

  spi_policy_choice ch;
  rc = run_policy(sl->mod, sl->inst, &x, &ch);
  if (rc != SPI_OK && sl->mod != sl->builtin &&
      sl->mod->on_failure == SPI_ON_FAILURE_FALLBACK)
    rc = run_policy(sl->builtin, sl->builtin_inst, &x, &ch);
  if (rc != SPI_OK)
    return spi__req_fail(req, SPI_EMODULE,
                         "policy module \"%s\" failed or chose an ineligible "
                         "replica",
                         sl->mod->name);

  /* Shadow mode: the other policy's answer, recorded only. */
  if (snap->shadow.mod) {
    spi_policy_choice sh;
    if (run_policy(snap->shadow.mod, snap->shadow.inst, &x, &sh) == SPI_OK) {
      out->shadow_pool = sh.pool ? sh.pool : -1;
      if (sh.n_order && (sh.pool == SPI_POOL_SPOT || sh.pool == SPI_POOL_ON_DEMAND)) {
        const spi_candidate *c = &cands[sh.order[0]];
        copy_id(out->shadow_replica_id, c->id, c->id_len);
        out->shadow_matched_blocks = c->matched_blocks;
      }
    }
  }

  /* A half-open replica takes one probe; losing that race means the next.
   * From here on, a failure goes through route_unwind, which gives back
   * whatever the route has taken. */
  route_taken taken = {NULL, NULL, NULL};
  uint32_t first = 0;
  while ((ch.pool == SPI_POOL_SPOT || ch.pool == SPI_POOL_ON_DEMAND) &&
         first < ch.n_order && cands[ch.order[first]].probe) {
    spi_replica_slot *s =
        &e->registry.slots[set->r[pos_of(ns, ch.order[first])].slot];
    if (spi__breaker_claim_probe(s)) {
      ch.reason_code = SPI_REASON_HALF_OPEN_PROBE;
      taken.probe = s;
      break;
    }
    first++;
  }
  if ((ch.pool == SPI_POOL_SPOT || ch.pool == SPI_POOL_ON_DEMAND) &&
      first == ch.n_order) {
    ch.pool = 0;
    ch.reason_code = SPI_REASON_NO_CAPACITY;
    spi__join(ch.reason, sizeof ch.reason, "recovering replica's probe taken",
              NULL, NULL);
  }

  /* The plan at the chosen pool's own pressure. */
  int32_t chosen_pool = ch.pool == SPI_POOL_SPOT ? SPI_POOL_SPOT
                                                 : SPI_POOL_ON_DEMAND;
  if (level[chosen_pool] != worst &&
      (rc = spi__classify_in(req, snap, v, level[chosen_pool], &cls)))
    return route_unwind(&taken, out, rc);
  out->pool = ch.pool;
  out->klass = cls.klass;
  out->replayable = cls.replayable;
  out->model_tier = v->forced_model_tier ? v->forced_model_tier : cls.model_tier;
  if (ch.pool == SPI_POOL_SPOT || ch.pool == SPI_POOL_ON_DEMAND)
    out->model_tier = cands[ch.order[first]].model_tier
                          ? cands[ch.order[first]].model_tier
                          : SPI_TIER_LARGE;
  out->pressure = level[chosen_pool];
  out->tools_allowed = cls.tools_allowed;
  out->max_output_tokens = cls.max_output_tokens;
  out->reason_code = ch.reason_code;
  spi__join(out->reason, sizeof out->reason, ch.reason, " / ", cls.reason);
  spi_metrics *mx = atomic_load(&e->metrics);
  uint64_t family = out->key.high64;

  if (ch.pool != SPI_POOL_SPOT && ch.pool != SPI_POOL_ON_DEMAND) {
    if (mx) {
      spi__metrics_decision(mx, ch.pool, cls.klass, ch.reason_code, family, 0,
                            (uint32_t)nblocks);
      if (ch.reason_code == SPI_REASON_SHED) spi__metrics_shed(mx, cls.klass);
    }
    if (ch.pool == SPI_POOL_QUEUE) return SPI_OK;
    out->pool = 0;
    return spi__req_fail(req,
                         ch.reason_code == SPI_REASON_SHED ? SPI_ESHED
                                                           : SPI_ENOCAPACITY,
                         "%s", out->reason);
  }

  /* Serve: open a ticket, count it on the replica, record the placement. */
  const spi_candidate *c = &cands[ch.order[first]];
  const spi_replica_ident *r = &set->r[pos_of(ns, ch.order[first])];
  spi_replica_slot *s = &e->registry.slots[r->slot];
  spi_ticket_table *tt = atomic_load(&e->tickets);
  spi_ticket *k = tt ? spi__ticket_take(tt) : NULL;
  if (!k)
    return route_unwind(&taken, out,
                        spi__req_fail(req, SPI_EFULL,
                                      "route: all %lld tickets are open",
                                      (long long)rc_cfg->max_tickets));
  uint32_t gen = atomic_load(&s->gen);
  k->slot = r->slot;
  k->gen = gen;
  k->incarnation = atomic_load(&s->incarnation);
  k->expected_output = expect_out > 0 ? (uint64_t)expect_out
                       : cls.max_output_tokens > 0 ? (uint64_t)cls.max_output_tokens
                                                   : 256;
  k->replay_since_ns = req->iset[SPI_REQ_REPLAY_SINCE_NS]
                           ? req->ival[SPI_REQ_REPLAY_SINCE_NS]
                           : 0;
  k->pool = r->pool;
  k->klass = cls.klass;
  k->model_tier = r->model_tier;
  k->probe = ch.reason_code == SPI_REASON_HALF_OPEN_PROBE;
  k->start_ns = now;
  k->prompt_tokens_est = tokens;
  k->matched_blocks = c->matched_blocks;
  k->total_blocks = (uint32_t)nblocks;
  k->weight = (uint32_t)rc_cfg->class_weight[cls.klass];
  k->n_hashes = nblocks < SPI_TICKET_HASHES ? (uint32_t)nblocks : SPI_TICKET_HASHES;
  if (k->n_hashes)
    memcpy(k->hashes, req->hashes, k->n_hashes * sizeof k->hashes[0]);
  copy_id(k->tenant, v->tenant, v->tenant_len);
  copy_id(k->model, v->model, v->model_len);
  /* The cost model's counters: the prefill this ticket queues there (the
   * part of the prompt the replica does not hold) and the prompt it was
   * sent; the slowdown at open lets its first token teach the rate. */
  double uncached = c->matched_blocks ? env.warm_tok : env.cold_tok;
  uint64_t cached = tokens - (uint64_t)ceil(uncached < (double)tokens ? uncached
                                                                       : (double)tokens);
  spi__prefill_open(s, k, tokens, cached,
                    c->fresh ? 1.0 + c->running * r->inv_max_inflight : 0.0);
  out->ticket = spi__ticket_publish(tt, k);
  atomic_fetch_add(&s->inflight, 1);
  if (ix && nblocks > c->matched_blocks)
    spi__index_insert(ix, req->hashes, c->matched_blocks, (uint32_t)nblocks,
                      r->slot, gen, k->weight, (uint32_t)(now / 1000000000),
                      (uint32_t)rc_cfg->weight_seconds, spi__entry_live, e);
  copy_id(out->replica_id, r->id, r->id_len);
  out->matched_blocks = c->matched_blocks;
  out->est_ttft_ms = c->est_ttft_ms;
  for (uint32_t i = first + 1; i < ch.n_order && out->n_fallbacks < SPI_MAX_FALLBACKS; i++) {
    const spi_candidate *f = &cands[ch.order[i]];
    copy_id(out->fallback_ids[out->n_fallbacks++], f->id, f->id_len);
  }
  spi_price price;
  memset(&price, 0, sizeof price);
  price.struct_size = sizeof price;
  if (spi__price_in(req, snap, v, r->pool, &price) == SPI_OK)
    out->est_usd = price.usd;
  if (mx) {
    spi__metrics_decision(mx, ch.pool, cls.klass, ch.reason_code, family,
                          c->matched_blocks, (uint32_t)nblocks);
    spi__metrics_queue_delta(mx, cls.klass, +1);
    if (snap->shadow.mod)
      spi__metrics_shadow(mx,
                          out->shadow_pool == out->pool &&
                              strcmp(out->shadow_replica_id, out->replica_id) == 0,
                          out->shadow_matched_blocks);
  }
  return SPI_OK;
}

int spi_route(spi_request *req, spi_decision *out) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof *out)
    return spi__req_fail(req, SPI_EINVAL, "decision: NULL or struct_size");
  size_t size = out->struct_size;
  memset(out, 0, sizeof *out);
  out->struct_size = size;
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  unsigned pin;
  spi_snapshot *snap = spi__snap_acquire(req->engine, &pin);
  rc = route_pinned(req, snap, &v, out);
  spi__snap_release(req->engine, pin);
  return rc;
}
