/*
 * replica_pass.c - the pass over the replicas one route makes: what every
 * replica's slot says now (load, eligibility, breaker), the summaries the
 * policy reads, the prefix holders' warm re-ranking, and the candidates.
 * The per-replica work is inlined into the three passes (full, lean, and
 * through the pool index), so its cost is a few compares for most replicas.
 */
#include <math.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "pool_index.h"


/* The TTFT estimate (prefill_model.h): every caller goes through there,
 * so the same inputs give the same bits whichever pass computed them. */
static double est_ttft_of(const route_env *x, double wait_ms, double running,
                          double ms_tok, int32_t advised,
                          const spi_replica_ident *r, double uncached) {
  return spi__prefill_ttft_ms(x->cfg, wait_ms, running, r->inv_max_inflight,
                              uncached, ms_tok, advised);
}
static double est_ttft(const route_env *x, const replica_eval *ev,
                       const spi_replica_ident *r, double uncached) {
  return est_ttft_of(x, ev->wait_ms, ev->running, ev->ms_tok, ev->advised, r,
                     uncached);
}

static double rel_load(const replica_eval *ev, const spi_replica_ident *r) {
  return rel_ratio(r, ev->running, ev->waiting, ev->inflight);
}

/* Whether the replica takes a request now, all but the pool's KV shedding
 * (which depends on the class): ACTIVE, its spot pool not cooling down, no
 * advice against a long request, not excluded by the request, serving the
 * model, its breaker letting it (*probe: as the half-open probe). The
 * common case takes no branch that depends on the replica: most serve any
 * model, most breakers are closed, most requests exclude nothing. Every way
 * a replica becomes a candidate asks here (the passes, the hinted seeds,
 * the pool index's exceptions, the prefix holders), so an excluded replica
 * is none; it is refused before its breaker is asked, which may hand it
 * the half-open probe. */
static inline int usable_of(const route_env *x, const spi_replica_ident *r,
                            spi_replica_slot *s, const slot_read *rd,
                            int *probe) {
  int advised = rd->advised_until > x->now;
  int ok = (rd->state == SPI_REPLICA_ACTIVE) &
           !(r->pool == SPI_POOL_SPOT && rd->cooldown_until > x->now) &
           !(advised & x->long_request);
  *probe = 0;
  if (__builtin_expect(x->excl != NULL, 0) && ok)
    ok = !(x->excl[r->slot / 64] >> (r->slot % 64) & 1u);
  if (ok && r->models_len)
    ok = spi__replica_serves(r, x->v->model, x->v->model_len);
  if (ok && rd->breaker != SPI_BREAKER_CLOSED) {
    ok = spi__breaker_allows(s, x->now, probe);
    /* An open breaker whose cooldown ended is half-open now: its slot is
     * marked, as any write routing reads marks it, so that an index that
     * keeps it set aside until that end reads it again even for a route
     * whose clock is behind this one's. */
    if (atomic_load_explicit(&s->breaker, memory_order_relaxed) != rd->breaker)
      spi__replica_touch(&x->e->registry, r->slot);
  }
  return ok;
}

/* The evaluation of what was read, with usable and probe as given. */
static inline void eval_of(const route_env *x, const spi_replica_ident *r,
                           const slot_read *rd, uint32_t matched, int usable,
                           int probe, replica_eval *o) {
  eval_ident(o, r);
  o->running = rd->run;
  o->waiting = rd->wait;
  o->kv_usage = rd->kv;
  o->fresh = rd->fresh;
  o->inflight = rd->inflight;
  o->matched = matched;
  o->match_flags = 0;
  o->active = rd->state == SPI_REPLICA_ACTIVE;
  o->advised = rd->advised_until > x->now;
  o->rate = rd->pf.rate;
  o->ms_tok = rd->pf.ms_tok;
  o->served = rd->pf.served;
  o->wait_ms = spi__prefill_wait_ms(x->cfg, r, rd->run, rd->wait, rd->inflight, &rd->pf);
  o->t = est_ttft(x, o, r, matched ? x->warm_tok : x->cold_tok);
  o->rdv = spi__rdv_weight(r->id_hash, x->rkey);
  o->busy = (uint8_t)busy_of(r, rd);
  o->usable = (uint8_t)usable;
  o->probe = usable && probe;
  o->eligible = usable && !probe;
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

/* A candidate is the evaluation's first bytes (replica_eval), identity
 * and all: one copy. */
static inline __attribute__((always_inline)) void
fill_candidate(spi_candidate *c, const replica_eval *ev) {
  memcpy(c, ev, sizeof *c);
}


/* Clear the first words of a bitmap: in a fleet of up to 64 replicas one
 * store, where a call to memset took more than the clear. */
static inline void bits_clear(uint64_t *b, size_t words) {
  if (words == 1)
    b[0] = 0;
  else
    memset(b, 0, words * sizeof *b);
}

static void mark_counted(scan *sc, size_t pos) {
  sc->counted[pos / 64] |= UINT64_C(1) << (pos % 64);
}
static int was_counted(const scan *sc, size_t pos) {
  return (int)(sc->counted[pos / 64] >> (pos % 64) & 1u);
}

static void cell_clear(cell_acc *c) {
  c->usable = c->n_top = 0;
  c->cap = SPI_SUMMARY_TOP;
  c->thr_t = HUGE_VAL;
  c->thr_pos = UINT32_MAX;
  c->least = c->rdv = c->warm = NO_EV;
  c->least_rel = c->least_srv = HUGE_VAL;
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
    sc->a.head[n] = sc->a.head[i];
    sc->a.tail[n] = sc->a.tail[i];
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

/* An arena entry for pos, holding ev (or left for the caller to fill when
 * ev is NULL). */
static uint32_t arena_put(scan *sc, uint32_t pos, const replica_eval *ev) {
  if (sc->a.n == ARENA_CAP) arena_sweep(sc);
  uint32_t i = sc->a.n++;
  sc->a.pos[i] = pos;
  if (ev) arena_set(&sc->a, i, ev);
  return i;
}

/* Ranking by TTFT, ties to the lower position. Bitwise, not short-circuit:
 * the outcome is data, and a branch on it would be mispredicted often.
 * Where ta < tb fails, ta <= tb holds exactly when ta == tb (for a NaN on
 * either side both fail), so "<=" tests the tie: on x86 one compare and
 * one flag, where "==" needs the parity flag as well. */
static inline int ttft_before(double ta, uint32_t pa, double tb, uint32_t pb) {
  return (ta < tb) | ((ta <= tb) & (pa < pb));
}

/* Whether a replica enters each summary now. Bitwise, like ttft_before.
 * An empty cell takes anything: (+inf, UINT32_MAX) loses to every finite
 * value, and weight 0 at UINT32_MAX to every weight at a real position. */
static inline int top_enters(const cell_acc *c, double t, uint32_t pos) {
  return ttft_before(t, pos, c->thr_t, c->thr_pos);
}
static inline int least_enters(const cell_acc *c, double rel, double srv,
                               uint32_t pos) {
  return least_before(rel, srv, pos, c->least_rel, c->least_srv, c->least_pos);
}
static inline int rdv_enters(const cell_acc *c, uint64_t w, uint32_t pos) {
  return (w > c->rdv_w) | ((w == c->rdv_w) & (pos < c->rdv_pos));
}

/* Where pos is in cell c's top: its index, or c->n_top when it is not. */
static uint32_t top_index(const cell_acc *c, uint32_t pos) {
  uint32_t j = 0;
  while (j < c->n_top && c->top[j].pos != pos) j++;
  return j;
}

/* The arena index of the scan's evaluation of pos in cell c, or NO_EV; j
 * is top_index(c, pos). */
static uint32_t cell_find(const cell_acc *c, const ev_arena *a, uint32_t pos,
                          uint32_t j) {
  if (j < c->n_top) return c->top[j].ei;
  if (c->least != NO_EV && a->pos[c->least] == pos) return c->least;
  if (c->rdv != NO_EV && a->pos[c->rdv] == pos) return c->rdv;
  return NO_EV;
}

/* Keep top sorted, best first (ties to the lower position, as the summary
 * promises): a better replica shifts the worse ones down, and the last one
 * drops out once top is full. The caller checked top_enters. */
static inline __attribute__((always_inline)) void
top_insert(cell_acc *c, double t, uint32_t pos, uint32_t ei) {
  uint32_t n = c->n_top;
  /* Walked by pointer, as top_append is. */
  top_ent *e = &c->top[n < c->cap ? n : n - 1];
  while (e != c->top && ttft_before(t, pos, e[-1].t, e[-1].pos)) {
    e[0] = e[-1];
    e--;
  }
  e->t = t;
  e->pos = pos;
  e->ei = ei;
  if (n < c->cap) c->n_top = n + 1;
  if (c->n_top == c->cap) {
    c->thr_t = c->top[c->cap - 1].t;
    c->thr_pos = c->top[c->cap - 1].pos;
  }
}

/* Top keeps cap entries from now on: the best cap of those it has (it is
 * sorted), and what a replica must beat to enter if that fills it. */
static void cell_cap(cell_acc *c, uint32_t cap) {
  c->cap = cap;
  if (c->n_top < cap) return;
  c->n_top = cap;
  c->thr_t = c->top[cap - 1].t;
  c->thr_pos = c->top[cap - 1].pos;
}

/* A usable replica, already counted in usable: let it into whatever it
 * ranks in. */
static void cell_offer(scan *sc, int k, uint32_t pos, double rel, double srv,
                       const replica_eval *ev) {
  cell_acc *c = &sc->cell[k];
  uint32_t ei = NO_EV;
  if (top_enters(c, ev->t, pos)) {
    ei = arena_put(sc, pos, ev);
    top_insert(c, ev->t, pos, ei);
  }
  if (least_enters(c, rel, srv, pos)) {
    if (ei == NO_EV) ei = arena_put(sc, pos, ev);
    c->least = ei;
    c->least_rel = rel;
    c->least_srv = srv;
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
  cell_offer(sc, k, pos, rel_load(ev, r), served_ratio(r, ev->served), ev);
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
  sc->seed_kv[*n] = rd.fresh ? rd.kv : -1.0; /* -1: no KV pressure */
  sc->seed_served[*n] = rd.pf.served;
  sc->seed_wait[*n] = spi__wait_fix(ev.wait_ms, rd.run, r->max_inflight);
  sc->byte_of[pos] = (uint8_t)(*n)++;
  cell_offer(sc, k, pos, rel_of(r, &rd), served_ratio(r, rd.pf.served), &ev);
}

/* Every cell's hinted replicas, evaluated and offered before the pass
 * (the hint: the comment above seed_one). */
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
 * changed, so routes that agree do not write the shared line. A cell
 * named whole (no more usable replicas than a summary holds) is not
 * ranked, so its hint would speed nothing up: it is left as it is (a
 * stale hint only costs time). */
static void hint_store(spi_engine *e, const scan *sc) {
#pragma GCC unroll 4
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    const cell_acc *c = &sc->cell[k];
    if (c->usable <= SPI_SUMMARY_TOP) continue;
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
                      size_t nrep, scan *sc, pool_sums *sums) {
  const spi_router_cfg *cfg = x->cfg;
  spi_replica_slot *slots = x->e->registry.slots;
  seed_from_hint(x, set, nrep, sc);
  /* Tallies stay in registers: adding to memory every iteration would chain
   * the iterations through store-to-load forwarding. */
  uint64_t counts = 0;  /* usable per cell, 16 bits each (nrep <= 4096) */
  uint64_t seeded = nrep ? sc->counted[0] : 0; /* of the 64 around i */
  uint64_t word = 0;    /* the counted bits of positions [i & ~63, i] */
  uint64_t kv_count = 0; /* ACTIVE and fresh per pool, 32 bits each */
  int64_t kv_spot = 0, kv_od = 0;
  uint64_t sv_spot = 0, sv_od = 0; /* tokens served by the usable */
  uint64_t st_spot = 0, st_od = 0; /* their max_inflight */
  uint64_t wait_fix[SPI_SUMMARY_CELLS] = {0}; /* their spi__wait_fix */
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
      double kvd = sc->seed_kv[sc->byte_of[i]];
      uint64_t sv = (uint64_t)sc->seed_served[sc->byte_of[i]];
      wait_fix[r->cell] += sc->seed_wait[sc->byte_of[i]];
      uint64_t one = kvd >= 0; /* -1: its load is stale, no KV pressure */
      int64_t kv = one ? spi__kv_fix(kvd) : 0;
      kv_spot += spot ? kv : 0;
      kv_od += spot ? 0 : kv;
      sv_spot += spot ? sv : 0;
      sv_od += spot ? 0 : sv;
      st_spot += spot ? r->max_inflight : 0;
      st_od += spot ? 0 : r->max_inflight;
      kv_count += spot ? one : one << 32;
      counts += UINT64_C(1) << (16 * r->cell);
      word |= UINT64_C(1) << (i % 64);
      continue;
    }
    spi_replica_slot *s = &slots[r->slot];
    slot_read rd;
    read_slot(x, s, &rd);
    if (rd.state != SPI_REPLICA_ACTIVE) continue;
    uint64_t one = (uint64_t)rd.fresh; /* a stale load: no KV pressure */
    int64_t kv = one ? spi__kv_fix(rd.kv) : 0;
    kv_spot += spot ? kv : 0;
    kv_od += spot ? 0 : kv;
    kv_count += spot ? one : one << 32;
    int probe;
    if (r->cell < 0 || !usable_of(x, r, s, &rd, &probe)) continue;
    counts += UINT64_C(1) << (16 * r->cell);
    word |= UINT64_C(1) << (i % 64);
    uint64_t sv = (uint64_t)rd.pf.served;
    sv_spot += spot ? sv : 0;
    sv_od += spot ? 0 : sv;
    st_spot += spot ? r->max_inflight : 0;
    st_od += spot ? 0 : r->max_inflight;
    cell_acc *c = &sc->cell[r->cell];
    int advised = rd.advised_until > x->now;
    double wait = spi__prefill_wait_ms(cfg, r, rd.run, rd.wait, rd.inflight, &rd.pf);
    wait_fix[r->cell] += spi__wait_fix(wait, rd.run, r->max_inflight);
    double t = spi__prefill_ttft_ms(cfg, wait, rd.run, r->inv_max_inflight,
                                    x->cold_tok, rd.pf.ms_tok, advised);
    double rel = rel_of(r, &rd);
    int busy = busy_of(r, &rd);
    uint64_t w = spi__rdv_weight(r->id_hash, x->rkey);
    uint32_t pos = (uint32_t)i;
    /* One branch for "may rank in anything": a value at most a threshold
     * (ties with one are rare), then the exact test with positions (and
     * the tokens served per stream, only then); only then the full
     * evaluation. */
    if ((t <= c->thr_t) | (rel <= c->least_rel) | ((!busy) & (w >= c->rdv_w))) {
      double srv = served_ratio(r, rd.pf.served);
      if (top_enters(c, t, pos) | least_enters(c, rel, srv, pos) |
          ((!busy) & rdv_enters(c, w, pos))) {
        replica_eval ev;
        eval_of(x, r, &rd, 0, 1, probe, &ev);
        cell_offer(sc, r->cell, pos, rel, srv, &ev);
      }
    }
  }
  if (nrep) sc->counted[(nrep - 1) / 64] = word;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    sc->cell[k].usable += (uint32_t)(counts >> (16 * k) & 0xffffu);
  sums->kv_fix[SPI_POOL_SPOT] += kv_spot;
  sums->kv_fix[SPI_POOL_ON_DEMAND] += kv_od;
  sums->kv_n[SPI_POOL_SPOT] += (uint32_t)(kv_count & 0xffffffffu);
  sums->kv_n[SPI_POOL_ON_DEMAND] += (uint32_t)(kv_count >> 32);
  sums->served[SPI_POOL_SPOT] += sv_spot;
  sums->served[SPI_POOL_ON_DEMAND] += sv_od;
  sums->streams[SPI_POOL_SPOT] += st_spot;
  sums->streams[SPI_POOL_ON_DEMAND] += st_od;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) sums->wait_fix[k] += wait_fix[k];
  /* A ranking without the replicas one request excluded would only seed
   * the routes that follow worse. */
  if (!x->excl) hint_store(x->e, sc);
}

/* ------------------------------------------- the pass through the index */

/* An exception of the pool index, read whole as the lean pass reads a
 * replica. */
static void indexed_exception(const route_env *x, const spi_replica_set *set,
                              uint32_t pos, scan *sc, pool_sums *sums) {
  const spi_replica_ident *r = &set->r[pos];
  spi_replica_slot *s = &x->e->registry.slots[r->slot];
  slot_read rd;
  read_slot(x, s, &rd);
  if (rd.state != SPI_REPLICA_ACTIVE) return;
  if (rd.fresh) { /* a stale load says nothing of KV */
    sums->kv_fix[r->pool] += spi__kv_fix(rd.kv);
    sums->kv_n[r->pool]++;
  }
  int probe;
  if (r->cell < 0 || !usable_of(x, r, s, &rd, &probe)) return;
  sc->cell[r->cell].usable++;
  mark_counted(sc, pos);
  sums->served[r->pool] += (uint64_t)rd.pf.served;
  sums->streams[r->pool] += r->max_inflight;
  replica_eval ev;
  eval_of(x, r, &rd, 0, 1, probe, &ev);
  sums->wait_fix[r->cell] += spi__wait_fix(ev.wait_ms, rd.run, r->max_inflight);
  cell_offer(sc, r->cell, pos, rel_of(r, &rd), served_ratio(r, rd.pf.served), &ev);
}

/* A regular replica's evaluation from the index, as eval_of makes it from
 * its slot: the index's copy (ev_at, made with its entry) with this
 * request's t, computed with the TTFT model's operations, and rdv, its
 * rendezvous weight (spi__rdv_weight of its id_hash). */
static inline __attribute__((always_inline)) void
indexed_eval(const spi_pool_index *p, uint32_t pos, double t, uint64_t rdv,
             ev_arena *a, uint32_t ei) {
  /* The copy around rdv and t, which lie together mid-head: as a copy of
   * the whole and two stores over it, but without copying those 16 bytes
   * (gcc left them out of a plain struct copy; of an ev_head, which may
   * alias, it cannot). */
  enum { RT = offsetof(replica_eval, rdv), AFTER = RT + 16 };
  _Static_assert(offsetof(replica_eval, t) == RT + 8 &&
                     offsetof(replica_eval, usd_per_hour) == AFTER,
                 "rdv and t lie together");
  const char *ev = (const char *)&p->ev_at[pos];
  char *h = (char *)&a->head[ei];
  memcpy(h, ev, RT);
  memcpy(h + AFTER, ev + AFTER, sizeof(ev_head) - AFTER);
  memcpy(h + RT, &rdv, 8);
  memcpy(h + RT + 8, &t, 8);
  memcpy(&a->tail[ei], ev + sizeof(ev_head), sizeof(ev_tail));
}

/* The TTFT of the regular replica h for this request: the TTFT model's
 * operations in its order (prefill_model.h), so the same bits. */
static inline double indexed_t(const route_env *x, const pix_hot *h) {
  return spi__pix_ttft(x->cfg->ttft_base_ms, h->wait_ms, x->cold_tok,
                       h->ms_tok, h->slow);
}

/* cell_offer for a regular replica, decided from the index's values
 * first: the evaluation is written once, straight into the arena, and only
 * if the replica gets in somewhere. (What it enters does not depend on the
 * order the three are tested in: each summary keeps its own.) */
static inline __attribute__((always_inline)) void
offer_in_as(const route_env *x, const spi_pool_index *p, scan *sc, cell_acc *c,
            uint32_t pos, double t, int least_tested, int rdv_tested) {
  const pix_hot *h = &p->hot[pos];
  uint64_t w = spi__rdv_weight(h->id_hash, x->rkey);
  int top = top_enters(c, t, pos);
  int least = least_tested && least_enters(c, h->rel, h->srv, pos);
  int rdv = rdv_tested && !h->busy && rdv_enters(c, w, pos);
  if (!(top | least | rdv)) return;
  if (sc->a.n == ARENA_CAP) arena_sweep(sc);
  uint32_t ei = sc->a.n++;
  sc->a.pos[ei] = pos;
  indexed_eval(p, pos, t, w, &sc->a, ei);
  if (top) top_insert(c, t, pos, ei);
  if (least) {
    c->least = ei;
    c->least_rel = h->rel;
    c->least_srv = h->srv;
    c->least_pos = pos;
  }
  if (rdv) {
    c->rdv = ei;
    c->rdv_w = w;
    c->rdv_pos = pos;
  }
}

static inline __attribute__((always_inline)) void
offer_in(const route_env *x, const spi_pool_index *p, scan *sc, cell_acc *c,
         uint32_t pos, double t) {
  offer_in_as(x, p, sc, c, pos, t, 1, 1);
}

/* offer_in, into the replica's own cell. */
static inline __attribute__((always_inline)) void
offer_body(const route_env *x, const spi_pool_index *p, scan *sc, uint32_t pos,
           double t) {
  offer_in(x, p, sc, &sc->cell[p->hot[pos].cell], pos, t);
}

/* The advised replica at pos (PIX_ADV) that a request excludes out of
 * what indexed_advised_all counted it into. */
static void advised_uncount(const spi_pool_index *p, uint32_t pos, scan *sc,
                            pool_sums *sums) {
  const pix_hot *h = &p->hot[pos];
  const pix_cold *c = &p->cold[pos];
  sc->cell[h->cell].usable--;
  sc->counted[pos / 64] &= ~(UINT64_C(1) << (pos % 64));
  sums->served[c->pool] -= c->served;
  sums->streams[c->pool] -= c->max_inflight;
  sums->wait_fix[h->cell] -= c->wait_fix;
}

/* The advised replicas (PIX_ADV), for a request that is not long (a long
 * one meets them in the KV sums alone, as the index keeps them): what
 * indexed_exception would make of each from its slot, without the read.
 * Each is usable unless the request excludes it; the counts and sums of
 * them all are the index's (entry_advised; their KV is in its KV sums
 * already), and each is offered to its cell from what the index keeps, at
 * its TTFT with router.advised_penalty_ms added last, as the TTFT model
 * adds it. Offered after the regular replicas: the summaries are the same
 * whatever the order of the offers, and by then their thresholds are
 * tight, so few advised replicas get in (and a fleet named whole is
 * taken as it lies first, indexed_whole). 1 when any was offered: the
 * ranking is then a hint worth leaving. Out of line: few routes meet
 * advice. */
static __attribute__((noinline)) int
indexed_advised_all(const route_env *x, const spi_pool_index *p,
                    const spi_replica_set *set, size_t words, scan *sc,
                    pool_sums *sums) {
  if (x->long_request) return 0;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    sc->cell[k].usable += p->adv_usable[k];
    sums->wait_fix[k] += p->adv_wait_fix[k];
  }
  for (int k = 0; k < 4; k++) {
    sums->served[k] += p->adv_served[k];
    sums->streams[k] += p->adv_streams[k];
  }
  sc->a.in_order = 0; /* appended after the regular ones */
  const double base = x->cfg->ttft_base_ms, cold = x->cold_tok;
  const double pen = x->cfg->advised_penalty_ms;
  const uint64_t rkey = x->rkey;
  for (size_t w = 0; w < words; w++) {
    sc->counted[w] |= p->adv[w];
    for (uint64_t b = p->adv[w]; b; b &= b - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(b));
      if (__builtin_expect(x->excl != NULL, 0)) {
        uint32_t slot = set->r[pos].slot;
        if (x->excl[slot / 64] >> (slot % 64) & 1u) {
          advised_uncount(p, pos, sc, sums);
          continue;
        }
      }
      const pix_hot *h = &p->hot[pos];
      cell_acc *c = &sc->cell[h->cell];
      /* indexed_t's bits, the penalty added last */
      double t = spi__pix_ttft(base, h->wait_ms, cold, h->ms_tok, h->slow) + pen;
      /* What may rank in anything, by values alone (each exact test
       * implies its part; the lean pass's test): most advised replicas,
       * slower by the penalty, fail it. */
      uint64_t wt = spi__rdv_weight(h->id_hash, rkey);
      if ((t <= c->thr_t) | (h->rel <= c->least_rel) |
          ((!h->busy) & (wt >= c->rdv_w)))
        offer_in(x, p, sc, c, pos, t);
    }
  }
  return 1;
}

/* Offer the regular replica at pos to its cell's summaries, once: what it
 * did not get in the first time (the thresholds only get harder to pass)
 * it does not get in later, and where it got in it stays until a better
 * one takes its place, so a second offer would change nothing. */
static __attribute__((noinline)) void
indexed_offer_first(const route_env *x, const spi_pool_index *p, scan *sc,
                    uint32_t pos, double t) {
  offer_body(x, p, sc, pos, t);
}

/* Inlined: most calls find the replica offered already. t is its TTFT
 * (indexed_t), when the caller has it. */
static inline void indexed_offer_t(const route_env *x, const spi_pool_index *p,
                                   scan *sc, uint32_t pos, double t) {
  uint64_t bit = UINT64_C(1) << (pos % 64);
  if (sc->offered[pos / 64] & bit) return;
  sc->offered[pos / 64] |= bit;
  indexed_offer_first(x, p, sc, pos, t);
}

/* indexed_offer_t, the TTFT computed here. */
static inline void indexed_offer(const route_env *x, const spi_pool_index *p,
                                 scan *sc, uint32_t pos) {
  uint64_t bit = UINT64_C(1) << (pos % 64);
  if (sc->offered[pos / 64] & bit) return;
  sc->offered[pos / 64] |= bit;
  indexed_offer_first(x, p, sc, pos, indexed_t(x, &p->hot[pos]));
}

/* Top's entries put in order (ttft_before, a total order on entries whose
 * TTFT is a number: what inserting them one by one makes), and the
 * threshold top_insert sets once top holds cap. */
static void top_sort(cell_acc *c) {
  for (uint32_t i = 1; i < c->n_top; i++) {
    top_ent e = c->top[i];
    uint32_t at = i;
    for (; at > 0 && ttft_before(e.t, e.pos, c->top[at - 1].t, c->top[at - 1].pos); at--)
      c->top[at] = c->top[at - 1];
    c->top[at] = e;
  }
  if (c->n_top == c->cap) {
    c->thr_t = c->top[c->cap - 1].t;
    c->thr_pos = c->top[c->cap - 1].pos;
  }
}

/* Top after seeds put last (seed_append): ordered when one came out of
 * order, and its threshold set if it is full. */
static inline void top_done(cell_acc *c, int unsorted) {
  if (unsorted) {
    top_sort(c);
  } else if (c->n_top == c->cap) {
    c->thr_t = c->top[c->cap - 1].t;
    c->thr_pos = c->top[c->cap - 1].pos;
  }
}

/* A seed while top has room: it enters top whatever its TTFT (a number:
 * the threshold is +inf, at UINT32_MAX, until top is full), so it is put
 * last, and tried as the least loaded; not as the rendezvous winner
 * (indexed_seed). 1 when it ranks before the entry it follows, which
 * top_sort then places (the hint names the last route's top best first,
 * so seeds mostly come in order). */
static inline __attribute__((always_inline)) int
seed_append(const route_env *x, const spi_pool_index *p, scan *sc, cell_acc *c,
            uint32_t pos, double t, int least_tested) {
  const pix_hot *h = &p->hot[pos];
  uint64_t w = spi__rdv_weight(h->id_hash, x->rkey);
  int least = least_tested && least_enters(c, h->rel, h->srv, pos);
  if (sc->a.n == ARENA_CAP) arena_sweep(sc);
  uint32_t ei = sc->a.n++;
  sc->a.pos[ei] = pos;
  indexed_eval(p, pos, t, w, &sc->a, ei);
  uint32_t n = c->n_top++;
  int before = n && ttft_before(t, pos, c->top[n - 1].t, c->top[n - 1].pos);
  c->top[n].t = t;
  c->top[n].pos = pos;
  c->top[n].ei = ei;
  if (least) {
    c->least = ei;
    c->least_rel = h->rel;
    c->least_srv = h->srv;
    c->least_pos = pos;
  }
  return before;
}

/* A hinted position of cell k to seed: its bit was set in *avail (a
 * regular replica of cell k not offered yet) and is taken out of it. In a
 * set of one block (one), *avail is the cell's first word, kept here
 * rather than tested and set in creg and offered for each position, and
 * the caller marks what it took as offered; else the words are read and
 * offered is set here. */
static inline __attribute__((always_inline)) int
seed_take(const spi_pool_index *p, scan *sc, int k, uint32_t pos,
          uint64_t *avail, int one) {
  uint64_t bit = UINT64_C(1) << (pos % 64);
  if (one) {
    if (!(*avail & bit)) return 0;
    *avail &= ~bit;
    return 1;
  }
  if (!(p->creg[k][pos / 64] & ~sc->offered[pos / 64] & bit)) return 0;
  sc->offered[pos / 64] |= bit;
  return 1;
}

/* The last route's ranking of cell k (its hint, see seed_from_hint) goes
 * first, so the thresholds are tight from the start and few others get
 * in: the summaries do not depend on the order replicas are offered in.
 * A hinted position is offered when it is a regular replica of cell k
 * (its bit in creg[k]: kind and cell in one test) not offered yet; an
 * empty hint entry (0) reads as position UINT32_MAX, past the set. Its
 * TTFT is block_ttft's where that block's are made (the same bits as
 * indexed_t). While top has room, seeds are put in it as they come and
 * ordered once if they came out of order (seed_append, top_done). A seed
 * is not tried as the rendezvous winner here: the cell's winner among its
 * free regular replicas is found after (indexed_rdv), and no other
 * regular replica can take its place, so the test would only be undone;
 * indexed_rdv takes a winner that was seeded (seeded_rdv). Nor is a seed tried as the least
 * loaded unless it is the one the index knows (least_block, UINT32_MAX
 * when it knows none: then every seed is tried): no other regular replica
 * ranks before that one, which is offered after if it was not seeded. */
static inline __attribute__((always_inline)) void
seed_cell(const route_env *x, const spi_pool_index *p, scan *sc, int k,
          uint32_t least, int one) {
  cell_acc *c = &sc->cell[k];
  const double base = x->cfg->ttft_base_ms, cold = x->cold_tok;
  const uint32_t n = (uint32_t)p->n;
  uint64_t avail = one ? p->creg[k][0] & ~sc->offered[0] : 0, was = avail;
  int unsorted = 0;
  for (int h = 0; h < 2; h++) {
    uint64_t word =
        atomic_load_explicit(&x->e->route_hint[k][h], memory_order_relaxed);
    for (int j = 0; j < HINT_PER_WORD; j++, word >>= 16) {
      uint32_t pos = (uint32_t)(word & 0xffffu) - 1u;
      if (pos >= n || !seed_take(p, sc, k, pos, &avail, one)) continue;
      const pix_hot *hp = &p->hot[pos];
      double t = one || p->tdone >> (pos / 64) & 1
                     ? p->t_now[pos]
                     : spi__pix_ttft(base, hp->wait_ms, cold, hp->ms_tok, hp->slow);
      if (c->n_top < c->cap && t == t) {
        unsorted |= seed_append(x, p, sc, c, pos, t,
                                (least == UINT32_MAX) | (pos == least));
        continue;
      }
      top_done(c, unsorted);
      unsorted = 0;
      offer_in_as(x, p, sc, c, pos, t, (least == UINT32_MAX) | (pos == least), 0);
    }
  }
  top_done(c, unsorted);
  if (one) sc->offered[0] |= was & ~avail;
}

/* indexed_seed's two builds: a set of one block, whose TTFTs are made
 * before the seeds (indexed_ranked), and any other. */
static void indexed_seed(const route_env *x, const spi_pool_index *p,
                         scan *sc, int k, uint32_t least) {
  if (p->n <= 64)
    seed_cell(x, p, sc, k, least, 1);
  else
    seed_cell(x, p, sc, k, least, 0);
}

/* Cell k's least relatively loaded regular replica: the least of the
 * blocks' (each the first of its equals, and blocks ascend), or
 * UINT32_MAX when no block holds one. Every other regular replica of the
 * cell ranks after it (least_before): a block takes every finite load, and
 * a load it does not take, +inf or NaN, never ranks before a finite one. */
static uint32_t least_block(const spi_pool_index *p, int k) {
  const pix_block *best = NULL;
  for (size_t w = 0; w < (p->n + 63) / 64; w++) {
    const pix_block *b = &p->blk[k][w];
    if (!b->n) continue;
    /* A load not at most the best's is never before it (least_before
     * fails on its first two terms, a NaN too): one compare, most blocks. */
    if (best && !(b->rel <= best->rel)) continue;
    if (!best || least_before(b->rel, b->srv, b->rel_pos, best->rel,
                              best->srv, best->rel_pos))
      best = b;
  }
  return best ? best->rel_pos : UINT32_MAX;
}

/* Cell k's least loaded regular replica pos (least_block), offered if
 * it was not (as a seed, it was tried as the least loaded). */
static inline void indexed_least(const route_env *x, const spi_pool_index *p,
                                 scan *sc, uint32_t pos) {
  if (pos != UINT32_MAX) indexed_offer(x, p, sc, pos);
}

/* Cell k's rendezvous winner pos (a free regular replica of the cell),
 * offered once it was seeded: a seed was offered to top and least only
 * (indexed_seed), so it is made the rendezvous entry here as offer_in
 * would have made it, from its arena entry when a summary kept one, else
 * from a new one. */
static __attribute__((noinline)) void
seeded_rdv(const route_env *x, const spi_pool_index *p, scan *sc, int k,
           uint32_t pos) {
  cell_acc *c = &sc->cell[k];
  const pix_hot *h = &p->hot[pos];
  uint64_t w = spi__rdv_weight(h->id_hash, x->rkey);
  if (h->busy || !rdv_enters(c, w, pos)) return;
  uint32_t ei = cell_find(c, &sc->a, pos, top_index(c, pos));
  if (ei == NO_EV) {
    if (sc->a.n == ARENA_CAP) arena_sweep(sc);
    ei = sc->a.n++;
    sc->a.pos[ei] = pos;
    indexed_eval(p, pos, indexed_t(x, h), w, &sc->a, ei);
  }
  c->rdv = ei;
  c->rdv_w = w;
  c->rdv_pos = pos;
}

/* The winner's offer: whole when it was not offered yet, else as the
 * rendezvous entry only (seeded_rdv). */
static inline void rdv_offer(const route_env *x, const spi_pool_index *p,
                             scan *sc, int k, uint32_t pos) {
  uint64_t bit = UINT64_C(1) << (pos % 64);
  if (sc->offered[pos / 64] & bit) {
    seeded_rdv(x, p, sc, k, pos);
    return;
  }
  sc->offered[pos / 64] |= bit;
  indexed_offer_first(x, p, sc, pos, indexed_t(x, &p->hot[pos]));
}

/* The first regular replica that is not busy among an order's positions
 * [from, n), or UINT32_MAX. */
static uint32_t first_free(const spi_pool_index *p, const uint16_t *pos,
                           uint32_t from, uint32_t n) {
  for (uint32_t j = from; j < n; j++) {
    const pix_hot *h = &p->hot[pos[j]];
    if (h->kind == PIX_REG && !h->busy) return pos[j];
  }
  return UINT32_MAX;
}

/* Whether cell k has a regular replica that is not busy. */
static int cell_any_free(const spi_pool_index *p, int k) {
  uint64_t any = 0;
  for (size_t w = 0; w < (p->n + 63) / 64; w++) any |= p->cfree[k][w];
  return any != 0;
}

/* Cell k's rendezvous winner among the regular replicas that are not
 * busy: the first such of the prefix's kept order, else of its deeper one
 * (when it has one), else weighed (spi__pix_free_best). When the prefix
 * has no kept order (o NULL), win[k] is that weighing's answer, made for
 * every ranked cell at once (scan_indexed). Each order is the cell's true
 * first few, so the first such in it is the winner; only when it holds
 * none and is not the whole cell is the next step needed, and not even
 * then when the cell has no such replica (every one busy: a fleet whose
 * loads are all stale, read as saturated). */
static void indexed_rdv(const route_env *x, spi_pool_index *p,
                        const spi_replica_set *set, scan *sc, int k,
                        const pix_rdv *o, const uint32_t *win) {
  uint32_t pos = UINT32_MAX;
  if (!o) {
    pos = win[k];
  } else if ((pos = first_free(p, o->pos[k], 0, o->n[k])) == UINT32_MAX &&
             o->n[k] == PIX_RDV_TOP && cell_any_free(p, k)) {
    const pix_deep *d = spi__pix_deep(p, x, set, k);
    if (d) pos = first_free(p, d->pos[k], PIX_RDV_TOP, d->n[k]);
    if (pos == UINT32_MAX && (!d || d->n[k] == PIX_DEEP_TOP)) {
      uint32_t one[SPI_SUMMARY_CELLS];
      spi__pix_free_best(p, 1u << k, x->rkey, one);
      pos = one[k];
    }
  }
  if (pos != UINT32_MAX) rdv_offer(x, p, sc, k, pos);
}

/* The TTFTs of block w's positions for this route (indexed_t's operations
 * on the same values, so the same bits), in one straight loop over the
 * index's arrays; both cells of a pool share them. */
static void block_ttft(const route_env *x, spi_pool_index *p, uint32_t w) {
  const double base = x->cfg->ttft_base_ms, cold = x->cold_tok;
  size_t lo = (size_t)w * 64, n = p->n - lo < 64 ? p->n - lo : 64;
  double *restrict t = &p->t_now[lo];
  const double *restrict wait = &p->t_wait[lo], *restrict ms = &p->t_ms_tok[lo],
                         *restrict slow = &p->t_slow[lo];
#if SPI_HAVE_RDV_AVX512
  if (p->wide)
    spi__pix_ttft_avx512(t, wait, ms, slow, n, base, cold);
  else
#endif
#if SPI_HAVE_PIX_AVX2
  if (p->avx2)
    spi__pix_ttft_avx2(t, wait, ms, slow, n, base, cold);
  else
#endif
    spi__pix_ttft_from(0, t, wait, ms, slow, n, base, cold);
  p->tdone |= UINT64_C(1) << w;
}

/* The positions of block w whose TTFT is at most thr. */
static inline __attribute__((always_inline)) uint64_t
block_under_at(const spi_pool_index *p, uint32_t w, double thr) {
  const double *t = &p->t_now[(size_t)w * 64];
  size_t n = p->n - (size_t)w * 64 < 64 ? p->n - (size_t)w * 64 : 64;
#if SPI_HAVE_RDV_AVX512
  if (p->wide) return spi__pix_under_avx512(t, n, thr);
#endif
#if SPI_HAVE_PIX_AVX2
  if (p->avx2) return spi__pix_under_avx2(t, n, thr);
#endif
  uint64_t m = 0;
  size_t i = 0;
#if defined(__SSE2__)
  /* Eight at a time, two per compare: the same comparison (false for a
   * NaN), one mask bit per lane. */
  const __m128d th = _mm_set1_pd(thr);
#define UNDER2(j) \
  ((unsigned)_mm_movemask_pd(_mm_cmple_pd(_mm_loadu_pd(t + i + (j)), th)) << (j))
  for (; i + 8 <= n; i += 8)
    m |= (uint64_t)(UNDER2(0) | UNDER2(2) | UNDER2(4) | UNDER2(6)) << i;
#undef UNDER2
#endif
  m |= spi__pix_under_from(i, t, n, thr);
  return m;
}

/* Block w's positions whose TTFT is at most thr, its TTFTs made first
 * where they were not (block_ttft): with AVX2, in the same pass, each
 * TTFT compared as it is made (the same bits and compares as the two
 * passes). */
static inline uint64_t block_ttft_under(const route_env *x, spi_pool_index *p,
                                        uint32_t w, double thr) {
#if SPI_HAVE_PIX_AVX2
  if (!(p->tdone >> w & 1) && !p->wide && p->avx2) {
    size_t lo = (size_t)w * 64, n = p->n - lo < 64 ? p->n - lo : 64;
    p->tdone |= UINT64_C(1) << w;
    return spi__pix_ttft_under_avx2(&p->t_now[lo], &p->t_wait[lo],
                                    &p->t_ms_tok[lo], &p->t_slow[lo], n,
                                    x->cfg->ttft_base_ms, x->cold_tok, thr);
  }
#endif
  if (!(p->tdone >> w & 1)) block_ttft(x, p, w);
  return block_under_at(p, w, thr);
}

/* ... of block 0, of any cell. */
static inline uint64_t block_under_all(const spi_pool_index *p, double thr) {
  return block_under_at(p, 0, thr);
}

/* Every ranked cell's best TTFTs among its regular replicas, a block at a
 * time: a block is read whole where some ranked cell's bound for it (the
 * least TTFT any of the cell's replicas there can have, at the block's
 * first position) enters that cell's top, its positions at most the
 * loosest such cell's threshold found in one pass and each tried against
 * its own cell's (ttft_before). Every position that can enter a top is
 * among them (its block's bound for its cell enters too, thresholds only
 * drop as replicas get in), and the tops do not depend on the order
 * positions are offered in. */
static void many_block_tops(const route_env *x, spi_pool_index *p, scan *sc,
                            unsigned ranked) {
  const double base = x->cfg->ttft_base_ms, cold = x->cold_tok;
  for (uint32_t w = 0; w < (p->n + 63) / 64; w++) {
    uint64_t regs = 0;
    double thr = -HUGE_VAL;
#pragma GCC unroll 4
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
      const pix_block *b = &p->blk[k][w];
      if (!(ranked >> k & 1) || !b->n) continue;
      const cell_acc *c = &sc->cell[k];
      if (!top_enters(c, spi__pix_ttft(base, b->wait_ms, cold, b->ms_tok, b->slow),
                      w * 64))
        continue;
      regs |= p->creg[k][w];
      if (c->thr_t > thr) thr = c->thr_t;
    }
    if (!regs) continue;
    for (uint64_t m = block_ttft_under(x, p, w, thr) & regs & ~sc->offered[w];
         m; m &= m - 1) {
      uint32_t pos = w * 64 + (uint32_t)__builtin_ctzll(m);
      const cell_acc *c = &sc->cell[p->hot[pos].cell];
      double t = p->t_now[pos]; /* indexed_t's bits (block_ttft) */
      if (ttft_before(t, pos, c->thr_t, c->thr_pos))
        indexed_offer_t(x, p, sc, pos, t);
    }
  }
}

/* many_block_tops for a set of one block (its TTFTs made,
 * indexed_ranked), without the blocks' bounds: the positions at most the
 * loosest ranked cell's threshold found in one pass, each then tried
 * against its own cell's (ttft_before). */
static void one_block_tops(const route_env *x, spi_pool_index *p, scan *sc,
                           unsigned ranked) {
  double thr = -HUGE_VAL;
  uint64_t regs = 0;
#pragma GCC unroll 4
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    if (ranked >> k & 1) {
      regs |= p->creg[k][0];
      if (sc->cell[k].thr_t > thr) thr = sc->cell[k].thr_t;
    }
  uint64_t m = block_under_all(p, thr) & regs & ~sc->offered[0];
  for (; m; m &= m - 1) {
    uint32_t pos = (uint32_t)__builtin_ctzll(m);
    const cell_acc *c = &sc->cell[p->hot[pos].cell];
    double t = p->t_now[pos]; /* indexed_t's bits (block_ttft) */
    if (ttft_before(t, pos, c->thr_t, c->thr_pos))
      indexed_offer_t(x, p, sc, pos, t);
  }
}

/* Cell k's regular replicas, every one offered: where there are no more
 * than its top holds, ranking blocks, seeding and the rendezvous order
 * find nothing the offers would not (each summary is the same whatever
 * the order of the offers, and every replica is offered once). Each is
 * offered here only, so without the offered bits the ranked cells keep. */
static __attribute__((noinline)) void
indexed_all(const route_env *x, const spi_pool_index *p, scan *sc, int k) {
  cell_acc *c = &sc->cell[k]; /* the cell of every replica in creg[k] */
  for (size_t w = 0; w < (p->n + 63) / 64; w++)
    for (uint64_t m = p->creg[k][w]; m; m &= m - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(m));
      offer_in(x, p, sc, c, pos, indexed_t(x, &p->hot[pos]));
    }
}

/* Every cell named whole (none ranked): each regular replica offered to
 * its own cell, in position order across the cells. Each cell meets its
 * replicas in the order indexed_all gives it (ascending positions), so
 * the summaries are the same; the arena then lies in position order, as
 * the candidates do, and they can be taken from it as they lie
 * (named_candidates). */
static __attribute__((noinline)) void
indexed_all_cells(const route_env *x, const spi_pool_index *p, scan *sc) {
  for (size_t w = 0; w < (p->n + 63) / 64; w++) {
    uint64_t m = 0;
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) m |= p->creg[k][w];
    for (; m; m &= m - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(m));
      offer_body(x, p, sc, pos, indexed_t(x, &p->hot[pos]));
    }
  }
}

/* Top of a cell that cannot fill (no more usable replicas than it
 * holds) takes a replica whose TTFT is a number (top_enters against an
 * empty cell's threshold): met in ascending positions, a replica goes
 * before the entries of higher TTFT only (its position is above all of
 * theirs, so ttft_before is "<"). The threshold is set as top_insert
 * sets it, once top holds cap. */
static inline __attribute__((always_inline)) void
top_append(cell_acc *c, double t, uint32_t pos, uint32_t ei) {
  /* Walked by pointer: indexed, gcc computed each entry's address from
   * the cell's again at every step. */
  top_ent *e = &c->top[c->n_top];
  while (e != c->top && t < e[-1].t) {
    e[0] = e[-1];
    e--;
  }
  e->t = t;
  e->pos = pos;
  e->ei = ei;
  c->n_top++;
}

/* Cell k's least loaded after indexed_whole: its regular replicas' least
 * (least_before), which the index's blocks keep (indexed_least); its
 * arena entry is byte_of[pos]. A block with members but no least (a load
 * no block takes) is ranked from the arena instead, in the order the
 * offers meet them. */
static void whole_least(const spi_pool_index *p, scan *sc, int k) {
  cell_acc *c = &sc->cell[k];
  const pix_block *best = NULL;
  int odd = 0;
  for (size_t w = 0; w < (p->n + 63) / 64; w++) {
    const pix_block *b = &p->blk[k][w];
    if (!b->n) continue;
    odd |= b->rel_pos == UINT32_MAX;
    if (!best || least_before(b->rel, b->srv, b->rel_pos, best->rel,
                              best->srv, best->rel_pos))
      best = b;
  }
  if (odd) {
    for (uint32_t ei = 0; ei < sc->a.n; ei++) {
      uint32_t pos = sc->a.pos[ei];
      const pix_hot *h = &p->hot[pos];
      if (h->cell != k || !least_enters(c, h->rel, h->srv, pos)) continue;
      c->least = ei;
      c->least_rel = h->rel;
      c->least_srv = h->srv;
      c->least_pos = pos;
    }
    return;
  }
  if (!best) return;
  uint32_t pos = best->rel_pos;
  c->least = sc->byte_of[pos];
  c->least_rel = p->hot[pos].rel;
  c->least_srv = p->hot[pos].srv;
  c->least_pos = pos;
}

/* Every cell named whole and no exception: every regular replica is
 * usable and no cell has more than its top holds, so each goes into the
 * arena, in ascending positions (the candidates are the arena as it lies:
 * named_candidates), and into its cell's top unless its TTFT is not a
 * number; the rendezvous winner is met as indexed_all_cells meets it, and the least
 * loaded is the index's (whole_least). The summaries are those of
 * indexed_all_cells: each is a minimum or maximum under a total order. */
static __attribute__((noinline)) void
indexed_whole(const route_env *x, const spi_pool_index *p, scan *sc) {
  const double base = x->cfg->ttft_base_ms, cold = x->cold_tok;
  const uint64_t rkey = x->rkey;
  uint32_t n = 0; /* no exception: the arena is empty */
  for (size_t w = 0; w < (p->n + 63) / 64; w++)
    for (uint64_t m = p->reg[w]; m; m &= m - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(m));
      const pix_hot *h = &p->hot[pos];
      cell_acc *c = &sc->cell[h->cell];
      double t = spi__pix_ttft(base, h->wait_ms, cold, h->ms_tok, h->slow);
      uint64_t wt = spi__rdv_weight(h->id_hash, rkey);
      sc->a.pos[n] = pos;
      indexed_eval(p, pos, t, wt, &sc->a, n);
      sc->byte_of[pos] = (uint8_t)n;
      if (t <= HUGE_VAL) top_append(c, t, pos, n);
      /* rdv_enters, of a position above every one met before: a tie goes
       * to the one met first, so only a heavier weight enters, or any
       * weight while the cell has none (weight 0 then). */
      if (!h->busy && ((wt > c->rdv_w) | (c->rdv == NO_EV))) {
        c->rdv = n;
        c->rdv_w = wt;
        c->rdv_pos = pos;
      }
      n++;
    }
  sc->a.n = n;
  sc->a.in_order = 1;
  /* Unrolled: each cell's block row is then at a constant offset. */
#pragma GCC unroll 4
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    cell_acc *c = &sc->cell[k];
    if (!p->usable[k]) continue; /* no replica: nothing to find */
    if (c->n_top == c->cap) {
      c->thr_t = c->top[c->cap - 1].t;
      c->thr_pos = c->top[c->cap - 1].pos;
    }
    whole_least(p, sc, k);
  }
}

/* The cells of the pass through the index once some are ranked (more
 * usable replicas than a summary holds): those named whole offer every
 * replica (indexed_all), the ranked ones their seeds, least loaded,
 * rendezvous winner and best TTFTs. Out of line from scan_indexed, so
 * the route over a small fleet (indexed_all_cells) keeps its own
 * registers. */
static __attribute__((noinline)) void
indexed_ranked(const route_env *x, spi_pool_index *p,
               const spi_replica_set *set, scan *sc, unsigned ranked) {
  /* The prefix's rendezvous order, for the cells ranked below; without
   * one, each ranked cell's winner, weighed in one pass. */
  const pix_rdv *o = spi__pix_rdv(p, x, set);
  uint32_t win[SPI_SUMMARY_CELLS];
  if (!o) spi__pix_free_best(p, ranked, x->rkey, win);
  p->tdone = 0;
  /* One block holds every position: its TTFTs are made here, as the first
   * ranked cell's tops would make them, so that the seeds read
   * theirs (indexed_seed). */
  if (p->n <= 64) block_ttft(x, p, 0);
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    if (!p->usable[k]) continue;
    if (p->usable[k] <= SPI_SUMMARY_TOP) {
      indexed_all(x, p, sc, k);
      continue;
    }
    cell_cap(&sc->cell[k], PASS_TOP); /* ranks only what it will name */
    uint32_t least = least_block(p, k);
    indexed_seed(x, p, sc, k, least);
    indexed_least(x, p, sc, least);
    indexed_rdv(x, p, set, sc, k, o, win);
  }
  if (p->n <= 64)
    one_block_tops(x, p, sc, ranked);
  else
    many_block_tops(x, p, sc, ranked);
}

/*
 * How long a route waits for the pool index while another route has it, in
 * turns of a spin-wait: about what reading every slot instead would cost
 * beyond a pass through the index. That is 11-12 ns a replica on this
 * project's Zen 4 host (bench_route p50 with the index and without it:
 * 1,042 against 1,742 ns at 1 KiB x 64, 1,312 against 7,370 at 1 KiB x
 * 512), and a turn (x86 `pause`) takes 25 ns there and up to about 40 on
 * other x86 cores, so nrep / 4 turns: about half that cost here, about
 * all of it where a turn is slowest. A route that found the index taken
 * waited 13 turns on average (20-36 % of routes found it so, with two
 * threads routing). Against falling back at once, two threads over 512
 * replicas route 1.13-1.29 times as many decisions a second, four threads
 * on two CPUs 1.02-1.19 times, and over 64 replicas about the same
 * (docs/performance.md, "Routes on several threads"). A holder that keeps
 * the index for a whole wait is not running, and is not waited for again
 * (spi__pix_take).
 */
static size_t pix_wait_turns(size_t nrep) { return nrep / 4; }

static inline __attribute__((always_inline)) int
scan_taken(const route_env *x, spi_pool_index *p, const spi_replica_set *set,
           size_t nrep, scan *sc, pool_sums *sums);

/* The first lane of the registry's first index was taken by another
 * route: another lane free now, else one waited for (pix_wait_turns),
 * and while fewer than SPI_PIX_LANES are open, a word to open them all.
 * NULL when none was had (the route reads every slot). Out of line: a
 * route on one thread never comes here. */
static __attribute__((noinline)) spi_pool_index *
lane_take(spi_registry *g, size_t nrep, uint32_t me) {
  unsigned lanes = spi__pix_lanes(g);
  for (unsigned k = 1; k < lanes; k++)
    if (spi__pix_acquire(g->pix_lane[k])) return g->pix_lane[k];
  if (lanes < SPI_PIX_LANES) spi__pix_lanes_ask(g);
  spi_pool_index *p = g->pix_lane[me % lanes]; /* threads wait apart */
  return spi__pix_wait(p, pix_wait_turns(nrep)) ? p : NULL;
}

/* A lane after the first that thread me had last, taken; NULL when it had
 * none or another route has it. A thread then keeps to its lane: each
 * lane's entries and blocks stay in one CPU's cache, where taking the
 * first free lane moved both lanes between the threads' CPUs at every
 * other route. */
static inline spi_pool_index *own_lane(spi_registry *g, uint32_t me) {
  unsigned lanes = spi__pix_lanes(g);
  for (unsigned k = 1; k < lanes; k++) {
    spi_pool_index *q = g->pix_lane[k];
    if (atomic_load_explicit(&q->holder, memory_order_relaxed) == me)
      return spi__pix_acquire(q) ? q : NULL;
  }
  return NULL;
}

/* Whether the request is for a model the regular replicas of p do not
 * serve (their models list, spi__pix_serves). */
static inline int other_model(const spi_pool_index *p, const route_env *x) {
  return __builtin_expect(p->models_len != 0, 0) &&
         !spi__pix_serves(p, x->v->model, x->v->model_len);
}

/* scan_indexed for a request whose model the regular replicas of p (held)
 * do not serve: through the model's own index instead (taken and brought
 * up to date), or scan_indexed's 0 or -1. Out of line: most fleets never
 * come here. */
static __attribute__((noinline)) int
scan_of_model(const route_env *x, const spi_replica_set *set, size_t nrep,
              scan *sc, pool_sums *sums, spi_pool_index *p) {
  spi__pix_release(p);
  spi_pool_index *q = spi__pix_for_model(&x->e->registry, set, x->v->model,
                                         x->v->model_len);
  if (!q) return -1;
  if (!spi__pix_take(q, pix_wait_turns(nrep))) return 0;
  if (!spi__pix_names(q, x->v->model, x->v->model_len)) {
    spi__pix_release(q); /* given to another model meanwhile */
    return -1;
  }
  if (!spi__pix_sync(q, x, set)) {
    spi__pix_release(q);
    return 0;
  }
  return scan_taken(x, q, set, nrep, sc, sums);
}

/* The lean pass through the pool index: the regular replicas' sums as
 * kept, the exceptions read whole, the regular replicas ranked from the
 * index. 0 when the index stayed another route's (pix_wait_turns) or
 * cannot describe set, -1 when its regular replicas do not serve the
 * request's model (their models list, spi__pix_serves) and no model index
 * can be had for it (spi__pix_for_model): the caller then reads every
 * slot, counting the first case only. Not inlined into
 * spi__pass_run: since the wait for the index can end in a call, gcc 12
 * laid the inlined pass out in 70-80 more instructions a route (callgrind,
 * 8 KiB x 64: 14,866 inlined, 14,794 not, 14,787 before the wait). */
static __attribute__((noinline)) int
scan_indexed(const route_env *x, const spi_replica_set *set, size_t nrep,
             scan *sc, pool_sums *sums) {
  spi_registry *g = &x->e->registry;
  spi_pool_index *p = g->pix;
  if (!p) return 0;
  uint32_t me = x->thread_no;
  spi_pool_index *q = own_lane(g, me);
  if (q)
    p = q;
  else if (!spi__pix_acquire(p) && !(p = lane_take(g, nrep, me)))
    return 0;
  if (atomic_load_explicit(&p->holder, memory_order_relaxed) != me)
    atomic_store_explicit(&p->holder, me, memory_order_relaxed);
  /* p's models list changes only with the set: when p describes the set's
   * version, a request for a model it does not serve goes to that model's
   * index before p's sync (p is not brought up to date only to be let go;
   * its marks wait for its next route, the model's index handing the
   * registry's on to it). Else the list is looked at once p is synced. */
  int current = p->version == set->version;
  if (current && other_model(p, x))
    return scan_of_model(x, set, nrep, sc, sums, p);
  if (!spi__pix_sync(p, x, set)) {
    spi__pix_release(p);
    return 0;
  }
  if (!current && other_model(p, x))
    return scan_of_model(x, set, nrep, sc, sums, p);
  return scan_taken(x, p, set, nrep, sc, sums);
}

/* The pass through index p, taken and brought up to date (in both of its
 * callers: a call here would cost the common one a frame). */
static inline __attribute__((always_inline)) int
scan_taken(const route_env *x, spi_pool_index *p, const spi_replica_set *set,
           size_t nrep, scan *sc, pool_sums *sums) {
  /* The sums begin as the regular replicas' (sums is not cleared before
   * this pass: every field is set here), the exceptions added below. */
  unsigned ranked = 0; /* the cells with more usable than a top holds */
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    sc->cell[k].usable += p->usable[k];
    ranked |= (unsigned)(p->usable[k] > SPI_SUMMARY_TOP) << k;
  }
  /* Array by array, in wide copies. */
  _Static_assert(sizeof sums->wait_fix == sizeof p->wait_fix &&
                     sizeof sums->kv_fix == sizeof p->kv_fix &&
                     sizeof sums->kv_n == sizeof p->kv_n &&
                     sizeof sums->served == sizeof p->served &&
                     sizeof sums->streams == sizeof p->streams,
                 "the index keeps the pass's sums as the pass does");
  memcpy(sums->wait_fix, p->wait_fix, sizeof sums->wait_fix);
  memcpy(sums->kv_fix, p->kv_fix, sizeof sums->kv_fix);
  memcpy(sums->kv_n, p->kv_n, sizeof sums->kv_n);
  memcpy(sums->served, p->served, sizeof sums->served);
  memcpy(sums->streams, p->streams, sizeof sums->streams);
  size_t words = (nrep + 63) / 64;
  if (words == 1) /* as bits_clear: one word, not a call */
    sc->counted[0] = p->reg[0];
  else
    memcpy(sc->counted, p->reg, words * sizeof sc->counted[0]);
  bits_clear(sc->offered, words);
  uint64_t exc = 0;
  for (size_t w = 0; w < words; w++) {
    exc |= p->exc[w];
    for (uint64_t b = p->exc[w]; b; b &= b - 1)
      indexed_exception(x, set, (uint32_t)(w * 64 + (size_t)__builtin_ctzll(b)),
                        sc, sums);
  }
  if (ranked)
    indexed_ranked(x, p, set, sc, ranked);
  else if (!exc)
    indexed_whole(x, p, sc);
  else
    indexed_all_cells(x, p, sc);
  if (__builtin_expect(p->adv_n != 0, 0))
    exc |= (uint64_t)indexed_advised_all(x, p, set, words, sc, sums);
  spi__pix_release(p);
  /* Else every cell is named whole: no hint to leave. A ranking without
   * the replicas one request excluded would only seed the next routes
   * worse. */
  if ((ranked || exc) && !x->excl) hint_store(x->e, sc);
  return 1;
}

/* Top entry j takes TTFT t: moved to its place in one go, the entries it
 * passes shifting by one (what taking it out and inserting it again
 * gives, with half the moves). */
static void top_move(cell_acc *c, uint32_t j, double t, uint32_t pos,
                     uint32_t ei) {
  /* Walked by pointer, as top_append is. */
  top_ent *e = &c->top[j], *last = &c->top[c->n_top - 1];
  while (e != c->top && ttft_before(t, pos, e[-1].t, e[-1].pos)) {
    e[0] = e[-1];
    e--;
  }
  while (e != last && ttft_before(e[1].t, e[1].pos, t, pos)) {
    e[0] = e[1];
    e++;
  }
  e->t = t;
  e->pos = pos;
  e->ei = ei;
  if (c->n_top == c->cap) {
    c->thr_t = c->top[c->cap - 1].t;
    c->thr_pos = c->top[c->cap - 1].pos;
  }
}

/* A usable replica of cell k holds the matched prefix; j is its
 * top_index. Its evaluation (the scan's when a summary kept one, updated
 * in place, so every reference agrees) has the warm TTFT: re-rank it, and
 * let it compete for warm. */
static void cell_warm(scan *sc, int k, uint32_t pos, uint32_t ei, uint32_t j) {
  cell_acc *c = &sc->cell[k];
  const ev_head *ev = arena_cev(&sc->a, ei);
  if (j < c->n_top && ttft_before(ev->t, pos, HUGE_VAL, UINT32_MAX)) {
    top_move(c, j, ev->t, pos, ei);
  } else {
    if (j < c->n_top) { /* a TTFT no top takes (NaN): it leaves */
      for (; j + 1 < c->n_top; j++) c->top[j] = c->top[j + 1];
      c->n_top--;
      c->thr_t = HUGE_VAL;
      c->thr_pos = UINT32_MAX;
    }
    if (top_enters(c, ev->t, pos)) top_insert(c, ev->t, pos, ei);
  }
  if (c->warm == NO_EV) {
    c->warm = ei;
    return;
  }
  const ev_head *w = arena_cev(&sc->a, c->warm);
  if (ev->matched > w->matched ||
      (ev->matched == w->matched &&
       ttft_before(ev->t, pos, w->t, sc->a.pos[c->warm])))
    c->warm = ei;
}


/* The arena entries the summaries name, in the order named_mark met them. */
static uint32_t named_list(const scan *sc, uint32_t *eis) {
  uint32_t n = 0;
#pragma GCC unroll 4
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    const cell_acc *c = &sc->cell[k];
    for (uint32_t j = 0; j < c->n_top; j++) eis[n++] = c->top[j].ei;
    if (c->warm != NO_EV) eis[n++] = c->warm;
    if (c->least != NO_EV) eis[n++] = c->least;
    if (c->rdv != NO_EV) eis[n++] = c->rdv;
  }
  return n;
}

/* Mark position pos as named by arena entry ei: byte_of keeps the last
 * entry naming it, *w gathers a set of at most 64 replicas' bits. */
static inline void named_one(scan *sc, uint32_t ei, uint64_t *w) {
  uint32_t pos = sc->a.pos[ei];
  sc->byte_of[pos] = (uint8_t)ei;
  *w |= UINT64_C(1) << (pos % 64);
}

/* Mark the named entries' positions (named.bits) and, per position, the
 * last entry naming it (byte_of). A set of at most 64 replicas keeps its
 * word in a register, so each entry is marked in one go. A larger one
 * stores the bytes first and the bits after: a byte store may alias the
 * bitmap, so interleaved, every bit would wait for the store before it to
 * reach memory. */
static void named_mark(scan *sc, size_t nrep) {
  if (nrep <= 64) {
    uint64_t w = 0;
#pragma GCC unroll 4
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
      const cell_acc *c = &sc->cell[k];
      for (uint32_t j = 0; j < c->n_top; j++) named_one(sc, c->top[j].ei, &w);
      if (c->warm != NO_EV) named_one(sc, c->warm, &w);
      if (c->least != NO_EV) named_one(sc, c->least, &w);
      if (c->rdv != NO_EV) named_one(sc, c->rdv, &w);
    }
    sc->named.bits[0] = w;
    return;
  }
  uint32_t eis[ARENA_KEEP];
  uint32_t n = named_list(sc, eis);
  for (uint32_t i = 0; i < n; i++) sc->byte_of[sc->a.pos[eis[i]]] = (uint8_t)eis[i];
  memset(sc->named.bits, 0, (nrep + 63) / 64 * sizeof sc->named.bits[0]);
  for (uint32_t i = 0; i < n; i++) {
    uint32_t pos = sc->a.pos[eis[i]];
    sc->named.bits[pos / 64] |= UINT64_C(1) << (pos % 64);
  }
}

/* How a summary names a candidate: by position (every replica a
 * candidate), by its rank among the named positions (compact), or by its
 * arena index (compact, each entry its own candidate as it lies in the
 * arena: named_candidates). */
enum { BY_POS, BY_NAMED, BY_ENTRY };

/* The candidate index of arena entry ei (-1 when not named); by entry,
 * NO_EV reads as -1 too. */
static inline __attribute__((always_inline)) int32_t
index_of(int by, const named_set *ns, const ev_arena *a, uint32_t ei) {
  if (by == BY_ENTRY) return (int32_t)ei;
  return by == BY_NAMED ? (int32_t)ns->cidx[ei] : (int32_t)a->pos[ei];
}

/* ... for a summary's warm, least or rendezvous entry, which may be NO_EV. */
static inline __attribute__((always_inline)) int32_t
index_or_none(int by, const named_set *ns, const ev_arena *a, uint32_t ei) {
  if (by == BY_ENTRY) return (int32_t)ei;
  return ei != NO_EV ? index_of(by, ns, a, ei) : -1;
}
_Static_assert((int32_t)NO_EV == -1, "NO_EV reads as -1");

/* Cell k's summary. Top is filled with -1 (all bits set) in a couple of
 * stores and the entries in use written over it: not a test of each of
 * the seven. */
static inline __attribute__((always_inline)) void
summary_out(const scan *sc, int k, int by, spi_pool_summary *o) {
  const cell_acc *c = &sc->cell[k];
  const ev_arena *a = &sc->a;
  const named_set *ns = &sc->named;
  uint32_t n = c->n_top;
  o->pool = k / 2 + SPI_POOL_SPOT;
  o->model_tier = k % 2 + SPI_TIER_SMALL;
  o->usable = c->usable;
  o->n_top = n;
  memset(o->top, 0xff, sizeof o->top);
  for (uint32_t j = 0; j < n; j++)
    o->top[j] = index_of(by, ns, a, c->top[j].ei);
  o->warm = index_or_none(by, ns, a, c->warm);
  o->least = index_or_none(by, ns, a, c->least);
  o->rendezvous = index_or_none(by, ns, a, c->rdv);
  o->reserved0 = 0;
}


/* ------------------------------------------------------ what route.c calls */

/* The full pass: every replica evaluated and made a candidate. */
static void scan_full(const route_env *x, const spi_replica_set *set,
                      size_t nrep, scan *sc, spi_candidate *cands,
                      pool_sums *sums) {
  for (size_t i = 0; i < nrep; i++) {
    const spi_replica_ident *r = &set->r[i];
    replica_eval ev;
    eval_replica(x, r, 0, &ev);
    if (ev.active && ev.fresh) { /* a stale load says nothing of KV */
      sums->kv_fix[r->pool] += spi__kv_fix(ev.kv_usage);
      sums->kv_n[r->pool] += 1;
    }
    fill_candidate(&cands[i], &ev);
    if (ev.usable && r->cell >= 0) {
      sums->served[r->pool] += (uint64_t)ev.served;
      sums->streams[r->pool] += r->max_inflight;
      sums->wait_fix[r->cell] += spi__wait_fix(ev.wait_ms, ev.running,
                                               r->max_inflight);
      cell_add(sc, r->cell, (uint32_t)i, r, &ev);
    }
  }
}

static void pass_begin(scan *sc, size_t nrep) {
  sc->a.n = 0;
  sc->a.in_order = 0;
  bits_clear(sc->counted, (nrep + 63) / 64);
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) cell_clear(&sc->cell[k]);
}

/* A cell with more usable replicas than the summary has room for names
 * its best PASS_TOP (replica_pass.h); the others name every one. */
static void pass_end(scan *sc) {
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    if (sc->cell[k].usable > SPI_SUMMARY_TOP) cell_cap(&sc->cell[k], PASS_TOP);
}

void spi__pass_run(scan *sc, const route_env *x, const spi_replica_set *set,
                   size_t nrep, spi_candidate *cands, pool_sums *sums) {
  pass_begin(sc, nrep);
  if (cands) {
    memset(sums, 0, sizeof *sums);
    scan_full(x, set, nrep, sc, cands, sums);
  } else {
    int indexed = scan_indexed(x, set, nrep, sc, sums);
    if (indexed <= 0) {
      memset(sums, 0, sizeof *sums);
      if (indexed == 0)
        spi__metrics_slot_pass(
            atomic_load_explicit(&x->e->metrics, memory_order_acquire));
      scan_lean(x, set, nrep, sc, sums);
    }
  }
  pass_end(sc);
}

void spi__pass_means(const scan *sc, const pool_sums *sums, double mean[4],
                     double streams[4], double wait[SPI_SUMMARY_CELLS]) {
  uint32_t u[SPI_SUMMARY_CELLS];
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    uint32_t n = u[k] = sc->cell[k].usable;
    wait[k] = n ? (double)sums->wait_fix[k] / 1000.0 / (double)n : 0.0;
  }
  mean[0] = mean[3] = streams[0] = streams[3] = 0.0;
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++) {
    uint32_t n = u[SPI_SUMMARY_INDEX(p, SPI_TIER_SMALL)] +
                 u[SPI_SUMMARY_INDEX(p, SPI_TIER_LARGE)];
    mean[p] = n ? (double)sums->served[p] / (double)n : 0.0;
    streams[p] = n ? (double)sums->streams[p] / (double)n : 0.0;
  }
}

void spi__pass_shed(scan *sc, int32_t pool, spi_candidate *cands, size_t nrep) {
  cell_clear(&sc->cell[SPI_SUMMARY_INDEX(pool, SPI_TIER_SMALL)]);
  cell_clear(&sc->cell[SPI_SUMMARY_INDEX(pool, SPI_TIER_LARGE)]);
  for (size_t i = 0; cands && i < nrep; i++)
    if (cands[i].pool == pool) cands[i].eligible = cands[i].probe = 0;
}

/* A full candidate's reading as an evaluation, so it stays one reading. */
static void eval_from_candidate(const route_env *x, const spi_replica_ident *r,
                                const spi_candidate *c, uint32_t matched,
                                replica_eval *o) {
  eval_ident(o, r);
  o->running = c->running;
  o->waiting = c->waiting;
  o->kv_usage = c->kv_usage;
  o->rdv = c->rendezvous;
  o->inflight = c->inflight;
  o->matched = matched;
  o->match_flags = 0;
  o->active = 1;
  o->usable = (uint8_t)(c->eligible || c->probe);
  o->probe = c->probe;
  o->eligible = o->usable && !o->probe; /* what fill_candidate made of it */
  o->busy = (uint8_t)is_busy(r, c->running, c->waiting, c->inflight);
  o->fresh = c->fresh;
  o->advised = c->advised;
  o->wait_ms = c->est_wait_ms;
  o->served = c->served_tokens;
  o->rate = c->prefill_tokens_per_s;
  /* The same division as spi__prefill_read's, so the same bits. */
  o->ms_tok = 1000.0 / o->rate;
  o->t = est_ttft(x, o, r, x->warm_tok);
}

/* One prefix holder at position pos: its warm evaluation (the scan's when a
 * summary kept one, updated in place, so every reference agrees), then
 * its place in the summaries if it is usable. continued: its entry of the
 * deepest matched block is marked so (spi__index_mark_continued). */
static void prefix_holder(scan *sc, const route_env *x,
                          const spi_replica_set *set, uint32_t pos,
                          const int32_t shed[4], spi_candidate *cands,
                          uint32_t matched, int continued) {
  const spi_replica_ident *r = &set->r[pos];
  int k = r->cell >= 0 && !shed[r->pool] ? r->cell : -1;
  uint32_t j = k >= 0 ? top_index(&sc->cell[k], pos) : 0;
  uint32_t ei = k >= 0 ? cell_find(&sc->cell[k], &sc->a, pos, j) : NO_EV;
  ev_head *ev;
  int taken = 0;
  if (ei != NO_EV) {
    ev = arena_ev(&sc->a, ei);
    ev->matched = matched;
    ev->t = est_ttft_of(x, ev->wait_ms, ev->running, sc->a.tail[ei].ms_tok,
                        ev->advised, r, x->warm_tok);
  } else if (cands || (k >= 0 && was_counted(sc, pos))) {
    /* Put in the arena (given back below if not usable). */
    replica_eval e;
    if (cands)
      eval_from_candidate(x, r, &cands[pos], matched, &e);
    else
      eval_replica(x, r, matched, &e);
    ei = arena_put(sc, pos, &e);
    taken = 1;
    ev = arena_ev(&sc->a, ei);
  } else {
    return; /* not usable when the pass met it */
  }
  ev->match_flags = continued ? SPI_MATCH_CONTINUED : 0;
  if (cands) {
    cands[pos].matched_blocks = matched;
    cands[pos].match_flags = continued ? SPI_MATCH_CONTINUED : 0;
    cands[pos].est_ttft_ms = ev->t;
  }
  if (!sc->a.tail[ei].usable || k < 0) {
    if (taken) sc->a.n--; /* the last entry, and nothing points to it */
    return;
  }
  if (taken) sc->a.in_order = 0; /* appended out of position order */
  cell_warm(sc, k, pos, ei, j);
}

/* For a request that excludes replicas, an index entry counts only if it
 * is live and not excluded: the deepest match is then the deepest a
 * replica the request may use holds, as over a fleet where the excluded
 * are drained (a retry that excludes the replica that failed it still
 * finds the shorter prefix the others hold). */
typedef struct live_unexcluded {
  spi_engine *e;
  const uint64_t *excl;
} live_unexcluded;

static int entry_live_unexcluded(void *ctx, uint32_t slot, uint32_t gen) {
  const live_unexcluded *u = ctx;
  if (slot < SPI_REPLICA_SLOTS && (u->excl[slot / 64] >> (slot % 64) & 1u))
    return 0;
  return spi__entry_live(u->e, slot, gen);
}

uint32_t spi__pass_prefix(scan *sc, route_env *x, const spi_replica_set *set,
                          size_t nrep, const int32_t shed[4],
                          spi_candidate *cands, spi_prefix_index *ix,
                          const uint64_t *hashes, uint32_t nblocks) {
  uint32_t holders[64], hgens[64], nh = 0, matched = 0;
  uint64_t cont = 0;
  live_unexcluded u = {x->e, x->excl};
  if (ix && nblocks)
    matched = spi__index_longest(ix, hashes, nblocks,
                                 x->excl ? entry_live_unexcluded : spi__entry_live,
                                 x->excl ? (void *)&u : (void *)x->e, holders,
                                 hgens, 64, &nh, &cont);
  if (matched)
    x->warm_tok = x->cold_tok * (1.0 - (double)matched / (double)nblocks);
  for (uint32_t h = 0; h < nh; h++) {
    uint16_t pos = set->pos_of_slot[holders[h]];
    if (pos == SPI_NO_POS || pos >= nrep) continue;
    prefix_holder(sc, x, set, pos, shed, cands, matched, (int)(cont >> h & 1u));
  }
  return matched;
}

/* Whether every arena entry is in a cell's top. Each top's entries are
 * distinct, and no entry is in two cells, so as many top entries as arena
 * entries are all of them; warm, least and rendezvous then name entries
 * of a top. */
static int all_in_tops(const scan *sc) {
  uint32_t tops = 0;
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) tops += sc->cell[k].n_top;
  return tops == sc->a.n;
}

/* Whether the arena's positions ascend: ev_arena.in_order says so of a
 * pass that put them so (indexed_whole); else they are looked at. */
static int arena_ascends(const ev_arena *a) {
  if (a->in_order) return 1;
  for (uint32_t ei = 1; ei < a->n; ei++)
    if (a->pos[ei] <= a->pos[ei - 1]) return 0;
  return 1;
}

/* The candidates a summaries-only policy reads: those the summaries name.
 * When every arena entry is named (all_in_tops) and their positions
 * ascend, each entry is its own candidate as it lies in the arena (the
 * summaries name it by its arena index, BY_ENTRY), and the arena's heads
 * are the candidates: nothing is copied. Else the named ones are copied
 * into out in position order (BY_NAMED). *by: how the summaries are to
 * name them (summary_out). */
static const spi_candidate *named_candidates(scan *sc, size_t nrep,
                                             spi_candidate *out, int *by) {
  named_set *ns = &sc->named;
  if (all_in_tops(sc) && arena_ascends(&sc->a)) {
    *by = BY_ENTRY;
    ns->n = sc->a.n;
    ns->at = sc->a.pos;
    return sc->a.head;
  }
  *by = BY_NAMED;
  memset(ns->cidx, NOT_NAMED, sizeof ns->cidx);
  named_mark(sc, nrep);
  /* Positions ascend out of the bitmap: each named one's entry is its
   * candidate, in position order. */
  uint32_t n = 0;
  for (size_t w = 0; w < (nrep + 63) / 64; w++)
    for (uint64_t b = ns->bits[w]; b; b &= b - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(b));
      uint8_t ei = sc->byte_of[pos];
      ns->pos[n] = pos;
      ns->cidx[ei] = (int8_t)n;
      memcpy(&out[n], &sc->a.head[ei], sizeof out[n]);
      n++;
    }
  ns->n = n;
  ns->at = ns->pos;
  return out;
}

size_t spi__pass_candidates(scan *sc, const spi_replica_set *set, size_t nrep,
                            spi_candidate *named, spi_pool_summary *summaries,
                            const spi_candidate **cands) {
  (void)set; /* each evaluation carries its replica's identity */
  if (!named) {
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
      summary_out(sc, k, BY_POS, &summaries[k]);
    return nrep;
  }
  int by;
  *cands = named_candidates(sc, nrep, named, &by);
  /* Unrolled: each cell's pool and tier are then constants. */
  if (by == BY_ENTRY) {
#pragma GCC unroll 4
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
      summary_out(sc, k, BY_ENTRY, &summaries[k]);
  } else {
#pragma GCC unroll 4
    for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
      summary_out(sc, k, BY_NAMED, &summaries[k]);
  }
  return sc->named.n;
}
