/*
 * pool_index.c - the pool index: what the routing pass needs of each
 * replica, kept current from the events that change it, so that a route
 * does not read every replica's slot.
 *
 * Design. The pass (replica_pass.c) evaluates every replica for one request:
 * its load, whether it is usable, its TTFT estimate for the request's
 * uncached tokens, its relative load, whether it is busy, its rendezvous
 * weight for the prefix; and it adds up each pool's KV usage, tokens served
 * and usable count. Most of that does not depend on the request: for a
 * replica that is ACTIVE, has a load that stays as fresh or as stale as it
 * is (a stale or missing one reads as saturated until the next report), a
 * closed breaker, no rebalance advice, no cooling spot pool and no models
 * list, or one naming every model of the index's list
 * (spi__pix_models_choose) - a regular replica - every request the index
 * serves finds it usable, its TTFT is
 *
 *   (ttft_base_ms + wait_ms) + (uncached * ms_tok) * slow
 *
 * with wait_ms, ms_tok and slow fixed until its slot changes, and its
 * relative load, busy flag, KV usage and tokens served are fixed too. The
 * index keeps those per position of the replica set, and each pool's sums
 * over the regular replicas (KV usage only where the load is fresh: a stale
 * one says nothing of KV; integers: KV usage in fixed point, tokens, so
 * that sums kept as replicas come and go equal the sums a pass makes in
 * position order). Some replicas no request the index serves may use,
 * whatever else their slots say: those of a spot pool cooling down after
 * an interruption, those whose breaker opened and is cooling down
 * (router.error_cooldown_ms), and those serving none of the models of the
 * index's models list (spi__pix_models_choose). All a pass takes from
 * such a replica is its KV usage while its load is fresh, which the index
 * keeps in the sums too until the cooldown ends or the load's freshness
 * changes, then reads its slot again (PIX_ASIDE). A zone's replicas cool
 * together for minutes (router.pool_cooldown_ms), a failing zone opens
 * many breakers at once, and a fleet may serve several models: a route
 * would otherwise read every one of them. A replica regular but for its
 * machine's rebalance advice is usable by a request that is not long
 * (router.advised_max_output_tokens) only, at a TTFT higher by
 * router.advised_penalty_ms: the index keeps its values as a regular
 * one's, its KV usage in the sums as one set aside, and its other sums
 * apart (PIX_ADV). A long request meets it in the KV sums alone; any other
 * offers it from what is kept, after the regular replicas, which costs a
 * few compares each (a cloud advises many machines of a capacity pool at
 * once). Every other ACTIVE replica is an exception, read whole by every
 * route exactly as the pass reads it.
 *
 * Staying current. Every writer of a slot field routing reads calls
 * spi__replica_touch, which sets the slot's bit in the registry's dirty
 * bitmap (one word of bits a 64 slots; the index looks only at the words
 * holding its set's slots, and clears only those with a bit set). A route
 * that takes the index (one route at a time: a route that finds it taken
 * waits a bounded while, then reads every slot instead; spi__pix_take)
 * clears the bits it finds and reads those slots again: a write after it
 * cleared a bit sets it again, so nothing is lost. Time alone changes one
 * thing about a regular replica: its load goes stale at load_at +
 * load_max_age. The index keeps a lower bound of the earliest such time, and
 * a route at or past it reads those replicas again: stale for good, they
 * stay regular, out of the KV sums (a fleet whose loads all went stale, in
 * a metrics outage, or that never reports any, keeps its index). A route's
 * time may also be earlier than the last route's (threads read the clock,
 * then wait their turn for the index): the index still holds then unless a
 * regular entry was not yet as it has it at that time (its load still
 * fresh where it has it stale, its advice or its spot pool's cooldown
 * ending after it). A load stamped further ahead than it may be old (a
 * clock mix-up) is stale until it may be fresh, and regular as any stale
 * load, read again when it turns fresh. The index keeps the
 * latest such start (reg_from), and a route before it, a newer replica set
 * or a different configuration rebuilds the index from every slot. An
 * entry set aside or advised is read again when its cooldown or advice
 * ends. Nothing makes an exception regular again but its next write: an
 * exception is always read whole, so that costs time, never exactness.
 *
 * Exactness. Routes rank the regular replicas by the values above with the
 * same operations as the pass (same bits), offer them to the same
 * summaries (which do not depend on the order replicas are met in), and
 * build each kept evaluation from the same values; tests/unit/test_policy.c
 * compares every summary with a full pass on random histories.
 *
 * Models (pool_models.c). Each index has one models list whose every
 * model its regular replicas serve (spi__pix_models_choose). The
 * registry's first index chooses it from the set; a request for a model
 * it does not name goes to an index of that model alone
 * (spi__pix_for_model), which the registry hands out in turn to models
 * some replica's list names; once all are handed out, one whose model no
 * list names any more goes to the next model asked for (pix_rename:
 * models come and go in a long-lived gateway). One is made for each name
 * replicas' lists bring, up to SPI_PIX_MODELS (spi__pix_models_make, as
 * a replica is registered: a fleet of many models, such as a proxy in
 * front of many model groups, keeps its routes' cost, and one with no
 * lists makes none). Writers mark a slot
 * once, in the registry: the index that takes a mark hands it on to the
 * others in use (marks_take), so each reads the slot again; one set aside
 * whose words changed in nothing it reads (a ticket on a replica of
 * another model) is not read whole (aside_steady). With no model index in
 * use, that costs nothing.
 *
 * Exclusions. A request that excludes replicas (a retry, a proxy that
 * offers only some) may use none of them: the sync sets each regular one
 * aside for that route (pix_hide: its KV usage kept, as a pass adds up an
 * excluded replica's) and marks its slot, so the next sync reads it whole
 * and it is regular again.
 *
 * Rendezvous orders (pool_rdv.c): a prefix's replicas by rendezvous
 * weight, kept per cell for prefixes asked for again, so that a ranked
 * cell's winner among its free regular replicas is found without weighing
 * them all.
 *
 * Lanes. An index is one route's at a time. The registry keeps the first
 * in SPI_PIX_LANES lanes, each a whole index kept from the same marks:
 * the others are opened when a route finds the first taken (lane_take in
 * replica_pass.c asks; the first lane's holder opens them before it takes
 * any mark, others_in_use), so routes on several threads each have one,
 * and a caller on one thread never opens them.
 *
 * Memory: indexes of fixed arrays for SPI_REPLICA_SLOTS positions each
 * (about 1.9 MB of address space each, touched as positions are used):
 * the first's lanes made with the registry, the model indexes as lists
 * name models, at most SPI_PIX_MODELS of them; a route allocates nothing,
 * takes no lock and makes no system call (it may spin a bounded while for
 * an index: spi__pix_take).
 */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "pool_index.h"

/* Only what comes before the per-position arrays is cleared: a position's
 * entries are written before they are read (rebuild sets every position of
 * the set it describes, and the first route always rebuilds, version 0 and
 * an empty configuration matching none), so an engine's pages for
 * positions it never has stay untouched. */

spi_pool_index *spi__pix_new(const spi_mem *m) {
  spi_pool_index *p = spi__alloc(m, sizeof *p);
  if (!p) return NULL;
  memset(p, 0, offsetof(spi_pool_index, hot));
  p->models_len = 0; /* as an index of no set has it (rebuild sets these) */
  p->other_any = 0;
  atomic_init(&p->named, 0);
  atomic_init(&p->model_key, 0);
  p->model_len = 0;
  for (size_t w = 0; w < SPI_REPLICA_SLOTS / 64; w++)
    atomic_init(&p->pending[w], 0);
  atomic_init(&p->taken, 0);
  atomic_init(&p->turn, 0u);
  atomic_init(&p->stuck, UINT_MAX); /* no turn is */
  spi__pix_builds(p);
  return p;
}

void spi__pix_free(const spi_mem *m, spi_pool_index *p) { spi__free(m, p); }

/* A wait for the index, in the engine's metrics: it took the index or not. */
static void wait_counted(const spi_pool_index *p, int took) {
  if (p->counts)
    spi__metrics_index_wait(
        /* acquire: the counters were zeroed before the pointer was
         * published, as every other reader of it sees them */
        atomic_load_explicit(p->counts, memory_order_acquire), took);
}

int spi__pix_wait(spi_pool_index *p, size_t turns) {
  unsigned holder = atomic_load_explicit(&p->turn, memory_order_relaxed);
  if (!turns || atomic_load_explicit(&p->stuck, memory_order_relaxed) == holder)
    return 0;
  for (size_t i = 0; i < turns; i++) {
    spi__spin_turn();
    if (spi__pix_acquire(p)) {
      wait_counted(p, 1);
      return 1;
    }
  }
  if (atomic_load_explicit(&p->turn, memory_order_relaxed) == holder)
    atomic_store_explicit(&p->stuck, holder, memory_order_relaxed);
  wait_counted(p, 0);
  return 0;
}

static void bit_set(uint64_t *b, uint32_t pos) {
  b[pos / 64] |= UINT64_C(1) << (pos % 64);
}
static void bit_clear(uint64_t *b, uint32_t pos) {
  b[pos / 64] &= ~(UINT64_C(1) << (pos % 64));
}

/* One least value of a block and how many members are at it, as a member
 * with value v joins (a NaN is neither less nor equal: never counted, as
 * block_fix never takes one). */
static void least_join(double *least, uint32_t *at, double v) {
  if (v < *least) {
    *least = v;
    *at = 1;
  } else if (v == *least) {
    (*at)++;
  }
}

/* ... as a member with value o leaves: 0 when it was the last at the
 * least (sum the block up again). */
static int least_leave(double *least, uint32_t *at, double o) {
  if (o != *least) return 1;
  return --*at > 0;
}

/* ... as a member goes from o to v: v joins the least if it is no more
 * (o, not equal to v, was not at it); else as least_leave of o. */
static int least_moves(double *least, uint32_t *at, double o, double v) {
  if (v == o) return 1;
  if (v <= *least) {
    least_join(least, at, v);
    return 1;
  }
  return least_leave(least, at, o);
}

/* A regular replica leaves block pos / 64 of its cell (h: what it was):
 * the block's least values stay while another member holds each; else the
 * block is summed up again (block_fix) by the next sync. */
static void block_leave(spi_pool_index *p, uint32_t pos, const pix_hot *h) {
  pix_block *b = &p->blk[h->cell][pos / 64];
  b->n--;
  int ok = least_leave(&b->wait_ms, &b->n_wait_ms, h->wait_ms);
  ok &= least_leave(&b->ms_tok, &b->n_ms_tok, h->ms_tok);
  ok &= least_leave(&b->slow, &b->n_slow, h->slow);
  if (!ok) {
    p->blk_dirty[h->cell] |= UINT64_C(1) << (pos / 64);
    p->fix_cells |= (uint8_t)(1u << h->cell);
  } else if (pos == b->rel_pos) {
    p->lst_dirty[h->cell] |= UINT64_C(1) << (pos / 64);
    p->fix_cells |= (uint8_t)(1u << h->cell);
  }
}

/* Whether (rel, srv) at pos ranks before the block's least loaded
 * (least_before); a block with none takes only a finite load, as
 * block_fix's first strict comparison does (+inf or NaN is never taken). */
static int least_takes(const pix_block *b, double rel, double srv,
                       uint32_t pos) {
  if (b->rel_pos == UINT32_MAX) return rel < b->rel;
  return least_before(rel, srv, pos, b->rel, b->srv, b->rel_pos);
}

/* A regular replica joins block pos / 64 of its cell: each least value is
 * the lesser, as block_fix's strict comparisons in position order make it
 * (the least relative load goes to the first position of equals; a load
 * no block_fix would take, +inf or NaN, is not taken). */
static void block_join(spi_pool_index *p, uint32_t pos, const pix_hot *h) {
  pix_block *b = &p->blk[h->cell][pos / 64];
  b->n++;
  least_join(&b->wait_ms, &b->n_wait_ms, h->wait_ms);
  least_join(&b->ms_tok, &b->n_ms_tok, h->ms_tok);
  least_join(&b->slow, &b->n_slow, h->slow);
  if (least_takes(b, h->rel, h->srv, pos)) {
    b->rel = h->rel;
    b->srv = h->srv;
    b->rel_pos = pos;
  }
}

/* Block b's least loaded as the regular replica at pos of it moves from
 * (o_rel, o_srv) to h's: whether it is still known without the row's
 * values (block_least) read again. */
static int least_loaded_moves(pix_block *b, uint32_t pos, double o_rel,
                              double o_srv, const pix_hot *h) {
  if (pos == b->rel_pos) {
    if (!least_before(h->rel, h->srv, pos, o_rel, o_srv, pos + 1)) return 0;
    b->rel = h->rel; /* still the least: it ranks no lower than before */
    b->srv = h->srv;
  } else if (least_takes(b, h->rel, h->srv, pos)) {
    b->rel = h->rel;
    b->srv = h->srv;
    b->rel_pos = pos;
  }
  return 1;
}

/* Marks block pos / 64 of cell k for the next sync: summed up again when
 * its TTFT parts' least values are not known (ok 0), or its least loaded
 * found again (least_ok 0). */
static void block_mark(spi_pool_index *p, int k, uint32_t pos, int ok,
                       int least_ok) {
  if (!ok) {
    p->blk_dirty[k] |= UINT64_C(1) << (pos / 64);
    p->fix_cells |= (uint8_t)(1u << k);
  } else if (!least_ok) {
    p->lst_dirty[k] |= UINT64_C(1) << (pos / 64);
    p->fix_cells |= (uint8_t)(1u << k);
  }
}

/* A regular replica of the block stays regular with new values h (o: its
 * old ones): the block's least values follow without a pass over it when
 * they can (block_leave and block_join in one, without marking a block
 * whose least values this replica did not hold or still holds). */
static void block_move(spi_pool_index *p, uint32_t pos, const pix_hot *o,
                       const pix_hot *h) {
  if (o->wait_ms == h->wait_ms && o->ms_tok == h->ms_tok &&
      o->slow == h->slow && o->rel == h->rel && o->srv == h->srv)
    return; /* nothing ranked changed */
  pix_block *b = &p->blk[h->cell][pos / 64];
  int ok = least_moves(&b->wait_ms, &b->n_wait_ms, o->wait_ms, h->wait_ms);
  ok &= least_moves(&b->ms_tok, &b->n_ms_tok, o->ms_tok, h->ms_tok);
  ok &= least_moves(&b->slow, &b->n_slow, o->slow, h->slow);
  /* The TTFT parts' least needs the whole block; the least loaded alone
   * (the one that held it ranks lower now: a finished ticket's tokens
   * served) only rel and srv, in a row (block_least). */
  block_mark(p, h->cell, pos, ok,
             least_loaded_moves(b, pos, o->rel, o->srv, h));
}

/* The KV usage of the entry c into its pool's sums, or out of them, while
 * its load is fresh: a stale load says nothing of KV (the pass's rule). */
static inline void kv_join(spi_pool_index *p, const pix_cold *c) {
  if (!c->fresh) return;
  p->kv_fix[c->pool] += spi__kv_fix(c->kv);
  p->kv_n[c->pool]++;
}
static inline void kv_leave(spi_pool_index *p, const pix_cold *c) {
  if (!c->fresh) return;
  p->kv_fix[c->pool] -= spi__kv_fix(c->kv);
  p->kv_n[c->pool]--;
}

/* The advised entry at pos (hot and cold made) into the advised counts
 * and sums the index keeps apart, or out of them. */
static void adv_join(spi_pool_index *p, uint32_t pos) {
  const pix_cold *c = &p->cold[pos];
  int k = p->hot[pos].cell;
  p->adv_n++;
  p->adv_usable[k]++;
  p->adv_served[c->pool] += c->served;
  p->adv_streams[c->pool] += c->max_inflight;
  p->adv_wait_fix[k] += c->wait_fix;
}
static void adv_leave(spi_pool_index *p, uint32_t pos) {
  const pix_cold *c = &p->cold[pos];
  int k = p->hot[pos].cell;
  p->adv_n--;
  p->adv_usable[k]--;
  p->adv_served[c->pool] -= c->served;
  p->adv_streams[c->pool] -= c->max_inflight;
  p->adv_wait_fix[k] -= c->wait_fix;
}

/* The entry set aside or advised at pos out of the sums and the kinds
 * (entry_drop). Out of line, so that entry_drop stays small enough to be
 * inlined. */
static __attribute__((noinline)) void aside_drop(spi_pool_index *p,
                                                 uint32_t pos) {
  kv_leave(p, &p->cold[pos]);
  if (p->hot[pos].kind == PIX_ADV) {
    bit_clear(p->adv, pos);
    adv_leave(p, pos);
  } else {
    bit_clear(p->aside, pos);
  }
}

/* Take position pos out of the sums and the kinds; a regular entry leaves
 * its block unless the caller puts it back (moved). */
static void entry_drop(spi_pool_index *p, uint32_t pos, int moved) {
  pix_hot *h = &p->hot[pos];
  if (h->kind == PIX_REG) {
    const pix_cold *c = &p->cold[pos];
    p->usable[h->cell]--;
    kv_leave(p, c);
    p->served[c->pool] -= c->served;
    p->streams[c->pool] -= c->max_inflight;
    p->wait_fix[h->cell] -= c->wait_fix;
    bit_clear(p->reg, pos);
    bit_clear(p->creg[h->cell], pos);
    bit_clear(p->cfree[h->cell], pos);
    if (!moved) block_leave(p, pos, h);
  } else if (h->kind == PIX_EXC) {
    bit_clear(p->exc, pos);
  } else if (h->kind == PIX_ASIDE || h->kind == PIX_ADV) {
    aside_drop(p, pos);
  }
  h->kind = PIX_OFF;
}

/* When a load stamped at goes stale (spi__load_view_of's rule). */
static int64_t stale_at(int64_t at, int64_t max_age) {
  int64_t until;
  if (__builtin_add_overflow(at, spi__load_max_age(max_age), &until))
    until = INT64_MAX;
  return until;
}

/* The times [*from, *until) around x->now over which rd's load stays as
 * fresh or as stale as it is now (spi__load_view_of: fresh from
 * at - max_age + 1 up to before at + max_age, stale before and for good
 * after, and at every time when none was ever reported, at 0). 1 when
 * both bounds are exact, 0 when one is saturated (an overflow), -1 when
 * there is no such window: a load so far off that its age overflows. */
static int load_window(const route_env *x, const slot_read *rd, int64_t at,
                       int64_t *from, int64_t *until) {
  int64_t m = spi__load_max_age(x->max_age), age;
  *from = INT64_MIN;
  *until = INT64_MAX;
  if (at == 0) return 1;
  if (__builtin_sub_overflow(x->now, at, &age)) return -1;
  if (rd->fresh) {
    int exact = !__builtin_sub_overflow(at, m - 1, from);
    if (!exact) *from = INT64_MIN;
    *until = stale_at(at, x->max_age);
    return exact && *until != INT64_MAX;
  }
  if (age < m) { /* stamped further ahead than it may be old */
    *until = at - (m - 1); /* fresh from then; no overflow: at >= now + m */
    return 1;
  }
  *from = stale_at(at, x->max_age); /* at + max_age <= now: exact */
  return 1;
}

/* The earliest time a replica that is regular now, but for its advice,
 * has been so since, as far as time alone goes: its load as fresh or as
 * stale as now (from, load_window's) and, in the spot pool, its cooldown
 * over. Advice needs no start: advised_until > t holds at every t before
 * the now that found it so. */
static int64_t cooled_from(const spi_replica_ident *r, const slot_read *rd,
                           int64_t from) {
  if (r->pool == SPI_POOL_SPOT && rd->cooldown_until > from)
    from = rd->cooldown_until;
  return from;
}

/* ... and that of a replica regular now: its advice over too. Regular at
 * x->now and at any time between this and x->now, since each condition
 * holds over an interval. */
static int64_t regular_from(const spi_replica_ident *r, const slot_read *rd,
                            int64_t from) {
  if (rd->advised_until > from) from = rd->advised_until;
  return cooled_from(r, rd, from);
}

/* Whether what rd says makes the replica one of a spot pool cooling down
 * at x->now: usable by no request (usable_of), whatever else it says. */
static int cooling(const route_env *x, const spi_replica_ident *r,
                   const slot_read *rd) {
  return r->pool == SPI_POOL_SPOT && rd->cooldown_until > x->now;
}

/* Whether what rd says makes the replica regular at x->now but for
 * rebalance advice, its load holding as fresh or as stale as now over a
 * window of time (window, load_window's answer, not -1). A stale load is
 * read as saturated (spi__load_view_of) until the next report, which any
 * route reads as the index keeps it: such a replica is regular too, only
 * out of the KV sums, so that a fleet that reports no load (or a metrics
 * outage) keeps a route's cost where a reporting one has it. Advised, it
 * is PIX_ADV: a cloud advises many machines of a capacity pool at once,
 * and a fleet with a zone advised would otherwise have every route read
 * each of them whole. */
static int regular_but_advice(const spi_pool_index *p, const route_env *x,
                              const spi_replica_ident *r, uint32_t pos,
                              const slot_read *rd, int window) {
  return r->cell >= 0 && window >= 0 &&
         (p->serves[pos / 64] >> (pos % 64) & 1) &&
         rd->breaker == SPI_BREAKER_CLOSED && !cooling(x, r, rd);
}

/* Whether what rd says makes the replica's breaker open with its cooldown
 * running at x->now: spi__breaker_allows refuses it to every request, not
 * even the probe, until then (*until). The cooldown's end is read from the
 * slot, which the words rd was made from do not hold: a breaker that
 * opens again meanwhile marks the slot, and the index reads it again. */
static int breaker_cooling(const route_env *x, const spi_replica_ident *r,
                           const slot_read *rd, int64_t *until) {
  if (rd->breaker != SPI_BREAKER_OPEN) return 0;
  *until = atomic_load_explicit(&x->e->registry.slots[r->slot].open_until_ns,
                                memory_order_relaxed);
  return x->now < *until;
}

/* Whether what rd says makes the replica's breaker half-open with its one
 * probe out: spi__breaker_allows refuses it to every request until the
 * probe ends. Read from the slot, which the words rd was made from do not
 * hold; the probe's claim and its end (the probe's ticket finished, or
 * the route that claimed it failing) each mark the slot after the write. */
static int probe_out(const route_env *x, const spi_replica_ident *r,
                     const slot_read *rd) {
  return rd->breaker == SPI_BREAKER_HALF_OPEN &&
         atomic_load_explicit(&x->e->registry.slots[r->slot].probe_taken,
                              memory_order_acquire) != 0;
}

/* When a replica set aside stops being so: at until (INT64_MAX: no time
 * ends it), or, marked, at the next write to its slot whatever it writes
 * (a probe's end changes none of the words the entry keeps). */
typedef struct aside_end {
  int64_t until;
  int marked;
} aside_end;

/* Whether the replica at pos is usable by no request the index serves:
 * its spot pool cooling, its breaker open and cooling down or half-open
 * with its probe out, or a models list naming none of the index's (its
 * bit in p->other). *end: when the first of them ends. */
static int set_aside(const spi_pool_index *p, const route_env *x,
                     const spi_replica_ident *r, uint32_t pos,
                     const slot_read *rd, aside_end *end) {
  int64_t open_until;
  int aside = (int)(p->other[pos / 64] >> (pos % 64) & 1);
  end->until = INT64_MAX;
  end->marked = 0;
  if (cooling(x, r, rd)) {
    aside = 1;
    end->until = rd->cooldown_until;
  }
  if (breaker_cooling(x, r, rd, &open_until)) {
    aside = 1;
    if (open_until < end->until) end->until = open_until;
  }
  if (probe_out(x, r, rd)) {
    aside = 1;
    end->marked = 1;
  }
  return aside;
}

/* The entry at pos as one set aside (PIX_ASIDE), read as rd from the
 * slot's words raw: only its KV pressure, while its load is fresh, is in
 * what the pass adds up, as an exception's would be (indexed_exception).
 * Its reading stays as rd has it over [from, until), its load's window
 * (load_window), up to end->until (set_aside's: its pool's or its
 * breaker's cooldown ending), and is not steady when end says only a
 * mark ends it. 0 when there is no such window: it is an exception
 * then. */
static int entry_aside(spi_pool_index *p, const spi_replica_ident *r,
                       uint32_t pos, const slot_read *rd,
                       const spi_slot_words *raw, int window, int64_t from,
                       int64_t until, const aside_end *end) {
  if (window < 0) return 0;
  if (end->until < until) until = end->until;
  pix_cold *c = &p->cold[pos];
  p->hot[pos].kind = PIX_ASIDE;
  bit_set(p->aside, pos);
  c->raw = *raw;
  c->steady = window == 1 && !end->marked; /* marked: no aside_steady */
  c->pool = r->pool;
  c->fresh = rd->fresh;
  c->kv = rd->kv;
  c->from = from;
  c->until = until;
  if (from > p->reg_from) p->reg_from = from;
  if (until < p->min_until) p->min_until = until;
  kv_join(p, c);
  return 1;
}

/* The regular or advised entry at pos as a route's evaluation of it
 * (ev_at), from its hot and cold parts: what a pass reading its slot would
 * make of it (eval_of: usable, no probe, advised as said), but for the
 * TTFT and rendezvous weight, which the route writes over the copy. An
 * entry that was regular already (moved) has its identity and the fields
 * every regular entry has alike from then: only what its slot says is
 * written again. */
static void entry_eval(spi_pool_index *p, const spi_replica_ident *r,
                       uint32_t pos, int moved, int advised) {
  const pix_hot *h = &p->hot[pos];
  const pix_cold *c = &p->cold[pos];
  replica_eval *o = &p->ev_at[pos];
  if (!moved) {
    eval_ident(o, r);
    o->eligible = 1;
    o->probe = 0;
    o->advised = advised;
    o->matched = 0;
    o->match_flags = 0;
    o->rdv = 0;
    o->t = 0;
    o->active = 1;
    o->usable = 1;
  }
  o->fresh = c->fresh;
  o->running = c->running;
  o->waiting = c->waiting;
  o->kv_usage = c->kv;
  o->inflight = c->inflight;
  o->wait_ms = h->wait_ms;
  o->served = (double)c->served;
  o->rate = c->rate;
  o->ms_tok = h->ms_tok;
  o->busy = h->busy;
}

/* The bits of d: two doubles are the same bits (0.0 and -0.0 are not:
 * either may be copied out to a caller as it is) when their xor is 0. */
static uint64_t bits_of(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}

/* Whether the regular entry at pos, read again as rd (regular, in the
 * same cell), differs from what it was read from in tokens served at
 * most: its load (fresh or stale), counters, rate and its load's window
 * the same bits, so every
 * value made from them is too (the configuration they were read with is
 * the index's, or it is rebuilt). A ticket opened and finished there
 * since the last route leaves just that. */
static int served_only(const spi_pool_index *p, const slot_read *rd,
                       int64_t until, uint32_t pos) {
  const pix_cold *c = &p->cold[pos];
  uint64_t d = (bits_of(rd->run) ^ bits_of(c->running)) |
               (bits_of(rd->wait) ^ bits_of(c->waiting)) |
               (bits_of(rd->kv) ^ bits_of(c->kv)) |
               (bits_of(rd->pf.rate) ^ bits_of(c->rate)) |
               (bits_of(rd->pf.ms_tok) ^ bits_of(p->hot[pos].ms_tok)) |
               (bits_of(rd->pf.queued) ^ bits_of(c->queued)) |
               (bits_of(rd->pf.mean_out) ^ bits_of(c->mean_out)) |
               ((uint64_t)until ^ (uint64_t)c->until) |
               (uint64_t)(rd->inflight ^ c->inflight) |
               (uint64_t)(rd->fresh ^ c->fresh);
  return d == 0;
}

/* The regular entry at pos takes tokens served as read (spi_prefill_read:
 * the counter as a double); every other value stands (served_only). The
 * pool's sum moves by the difference, modulo 2^64 as the sums are kept. */
static void entry_served(spi_pool_index *p, const spi_replica_ident *r,
                         double read, uint32_t pos) {
  pix_hot *h = &p->hot[pos];
  pix_cold *c = &p->cold[pos];
  uint64_t served = (uint64_t)read;
  p->served[c->pool] += served - c->served;
  c->served = served;
  p->ev_at[pos].served = (double)served;
  double o_srv = h->srv;
  h->srv = served_ratio(r, read);
  p->t_srv[pos] = h->srv;
  /* block_move with the TTFT parts and rel unchanged: each of the parts
   * keeps its least (least_moves of equal values), unless it is NaN. */
  if (!(h->wait_ms == h->wait_ms && h->ms_tok == h->ms_tok &&
        h->slow == h->slow && h->rel == h->rel)) {
    pix_hot old = *h;
    old.srv = o_srv;
    block_move(p, pos, &old, h);
  } else if (h->srv != o_srv) {
    block_mark(p, h->cell, pos, 1,
               least_loaded_moves(&p->blk[h->cell][pos / 64], pos, h->rel,
                                  o_srv, h));
  }
}

/* Whether a and b hold the same words, tokens served aside. */
static int raw_same(const spi_slot_words *a, const spi_slot_words *b) {
  uint64_t d = (uint64_t)(a->load_at ^ b->load_at) |
               (uint64_t)(a->advised_until ^ b->advised_until) |
               (uint64_t)(a->cooldown_until ^ b->cooldown_until) |
               (a->running ^ b->running) | (a->waiting ^ b->waiting) |
               (a->kv ^ b->kv) | (a->queued ^ b->queued) |
               (a->rate ^ b->rate) | (a->mean_out ^ b->mean_out) |
               (a->inflight ^ b->inflight) |
               (a->rate_samples ^ b->rate_samples) |
               (uint32_t)(a->state ^ b->state) |
               (uint32_t)(a->breaker ^ b->breaker);
  return d == 0;
}

/* The regular entry at pos keeps raw, the words its values are made from
 * (or stand for: served_only), the start of its being regular, and
 * whether its load's window is exact (load_window's 1: steady). */
static void entry_raw(pix_cold *c, const spi_slot_words *raw, int64_t from,
                      int window) {
  c->raw = *raw;
  c->from = from;
  c->steady = window == 1;
}

/* Whether x->now is in the entry c's window [from, until) and both bounds
 * are exact (steady): the same words make the same entry at those times. */
static inline int window_holds(const pix_cold *c, const route_env *x) {
  return c->steady && x->now >= c->from && x->now < c->until;
}

/* Whether the regular entry at pos is what entry_read would make of the
 * slot's words raw, tokens served aside: they are the words it was read
 * from, and x->now is in its window. The same words, with neither bound
 * saturated, make a regular entry at exactly those times: its load as
 * fresh or as stale as when read (load_window), its advice and, in the
 * spot pool, its cooldown over from their ends on (regular_but_advice,
 * regular_from). The configuration its values were read with holds
 * (spi__pix_sync). */
static int entry_steady(const spi_pool_index *p, const route_env *x,
                        const spi_slot_words *raw, uint32_t pos) {
  const pix_cold *c = &p->cold[pos];
  return p->hot[pos].kind == PIX_REG && window_holds(c, x) &&
         raw_same(raw, &c->raw);
}

/* What the index makes of a replica read as rd at x->now (PIX_OFF ...
 * PIX_ADV); *end as set_aside sets it. */
static int entry_kind(const spi_pool_index *p, const route_env *x,
                      const spi_replica_ident *r, uint32_t pos,
                      const slot_read *rd, int window, aside_end *end) {
  if (rd->state != SPI_REPLICA_ACTIVE) return PIX_OFF;
  if (regular_but_advice(p, x, r, pos, rd, window))
    return rd->advised_until <= x->now ? PIX_REG : PIX_ADV;
  return set_aside(p, x, r, pos, rd, end) ? PIX_ASIDE : PIX_EXC;
}

/* The values of a regular or advised entry at pos, from rd: its hot and
 * cold parts, as a pass reading its slot makes them. */
static void entry_values(spi_pool_index *p, const route_env *x,
                         const spi_replica_ident *r, uint32_t pos,
                         const slot_read *rd) {
  pix_hot *h = &p->hot[pos];
  pix_cold *c = &p->cold[pos];
  h->cell = r->cell;
  h->wait_ms = spi__prefill_wait_ms(x->cfg, r, rd->run, rd->wait, rd->inflight, &rd->pf);
  h->ms_tok = rd->pf.ms_tok;
  h->slow = 1.0 + rd->run * r->inv_max_inflight;
  h->rel = rel_ratio(r, rd->run, rd->wait, rd->inflight);
  h->srv = served_ratio(r, rd->pf.served);
  h->busy = (uint8_t)is_busy(r, rd->run, rd->wait, rd->inflight);
  h->id_hash = r->id_hash;
  c->running = rd->run;
  c->waiting = rd->wait;
  c->kv = rd->kv;
  c->rate = rd->pf.rate;
  c->queued = rd->pf.queued;
  c->mean_out = rd->pf.mean_out;
  c->served = (uint64_t)rd->pf.served;
  c->wait_fix = spi__wait_fix(h->wait_ms, rd->run, r->max_inflight);
  c->inflight = rd->inflight;
  c->pool = r->pool;
  c->max_inflight = r->max_inflight;
  c->fresh = rd->fresh;
}

/* The entry at pos, its values made (entry_values), as an advised one:
 * in the KV sums while its load is fresh, as an entry set aside is, and
 * in no other sum, order or block. It stays so over its load's window
 * (from, until) from the end of its pool's cooldown, up to the advice's
 * end; then it is read whole again. */
static void entry_advised(spi_pool_index *p, const spi_replica_ident *r,
                          uint32_t pos, const slot_read *rd,
                          const spi_slot_words *raw, int window, int64_t from,
                          int64_t until) {
  pix_cold *c = &p->cold[pos];
  p->hot[pos].kind = PIX_ADV;
  bit_set(p->adv, pos);
  adv_join(p, pos);
  if (rd->advised_until < until) until = rd->advised_until;
  c->until = until;
  if (until < p->min_until) p->min_until = until;
  int64_t since = cooled_from(r, rd, from);
  if (since > p->reg_from) p->reg_from = since;
  entry_raw(c, raw, since, window);
  kv_join(p, c);
  entry_eval(p, r, pos, 0, 1);
}

/* The entry at pos, its values made (entry_values), as a regular one:
 * in the sums, the cell's bitmaps and its block (moved: it was regular in
 * the same cell, with old's values). */
static void entry_regular(spi_pool_index *p, const spi_replica_ident *r,
                          uint32_t pos, const slot_read *rd,
                          const spi_slot_words *raw, int window, int64_t from,
                          int64_t until, const pix_hot *old, int moved) {
  pix_hot *h = &p->hot[pos];
  pix_cold *c = &p->cold[pos];
  h->kind = PIX_REG;
  p->t_wait[pos] = h->wait_ms;
  p->t_ms_tok[pos] = h->ms_tok;
  p->t_slow[pos] = h->slow;
  p->t_rel[pos] = h->rel;
  p->t_srv[pos] = h->srv;
  c->until = until;
  if (until < p->min_until) p->min_until = until;
  int64_t since = regular_from(r, rd, from);
  if (since > p->reg_from) p->reg_from = since;
  entry_raw(c, raw, since, window);
  p->usable[h->cell]++;
  kv_join(p, c);
  p->served[c->pool] += c->served;
  p->streams[c->pool] += c->max_inflight;
  p->wait_fix[h->cell] += c->wait_fix;
  bit_set(p->reg, pos);
  bit_set(p->creg[h->cell], pos);
  if (!h->busy) bit_set(p->cfree[h->cell], pos);
  entry_eval(p, r, pos, moved, 0);
  if (moved)
    block_move(p, pos, old, h);
  else
    block_join(p, pos, h);
}

/* The entry at pos read from raw, the words just read from its slot. Out
 * of line: most reads take tokens served alone (entry_read). */
static __attribute__((noinline)) void
entry_read_whole(spi_pool_index *p, const route_env *x,
                 const spi_replica_ident *r, uint32_t pos,
                 const spi_slot_words *raw) {
  slot_read rd;
  slot_reading(x, raw, &rd);
  int64_t from, until;
  aside_end end = {INT64_MAX, 0};
  int window = load_window(x, &rd, raw->load_at, &from, &until);
  int kind = entry_kind(p, x, r, pos, &rd, window, &end);
  pix_hot *h = &p->hot[pos];
  if (kind == PIX_REG && h->kind == PIX_REG && h->cell == r->cell &&
      served_only(p, &rd, until, pos)) {
    int64_t since = regular_from(r, &rd, from);
    if (since > p->reg_from) p->reg_from = since;
    entry_raw(&p->cold[pos], raw, since, window);
    entry_served(p, r, rd.pf.served, pos);
    return;
  }
  /* A replica that stays regular moves within its block (block_move):
   * one whose ranked values come back the same (a ticket opened and
   * finished) leaves the block's bounds be. */
  pix_hot old = *h;
  int moved = old.kind == PIX_REG && kind == PIX_REG && old.cell == r->cell;
  entry_drop(p, pos, moved);
  p->t_wait[pos] = p->t_ms_tok[pos] = p->t_slow[pos] = 0.0;
  if (kind == PIX_OFF) return;
  if (kind == PIX_ASIDE &&
      entry_aside(p, r, pos, &rd, raw, window, from, until, &end))
    return;
  if (kind == PIX_ASIDE || kind == PIX_EXC) {
    h->kind = PIX_EXC;
    bit_set(p->exc, pos);
    return;
  }
  entry_values(p, x, r, pos, &rd);
  if (kind == PIX_ADV)
    entry_advised(p, r, pos, &rd, raw, window, from, until);
  else
    entry_regular(p, r, pos, &rd, raw, window, from, until, &old, moved);
}

/* Whether a and b hold the same words in all that a replica set aside
 * is read from: its state, its load's stamp and KV usage, its spot pool's
 * cooldown and its breaker (set_aside: serving none of the index's
 * models, cooling, or its breaker open, it is usable by none of its
 * requests whatever else it says; a breaker open again later has its
 * entry read again at the earlier end, as a cooldown's end is). */
static int aside_same(const spi_slot_words *a, const spi_slot_words *b) {
  uint64_t d = (uint64_t)(a->load_at ^ b->load_at) |
               (uint64_t)(a->cooldown_until ^ b->cooldown_until) |
               (a->kv ^ b->kv) | (uint32_t)(a->state ^ b->state) |
               (uint32_t)(a->breaker ^ b->breaker);
  return d == 0;
}

/* Whether the entry at pos is set aside and is what entry_read_whole would
 * make of the slot's words raw: they are its words where it reads any
 * (aside_same), and x->now is in its window, bounds exact (steady). A
 * ticket opened or finished on a replica of another model leaves that. */
static int aside_steady(const spi_pool_index *p, const route_env *x,
                        const spi_slot_words *raw, uint32_t pos) {
  const pix_cold *c = &p->cold[pos];
  return p->hot[pos].kind == PIX_ASIDE && window_holds(c, x) &&
         aside_same(raw, &c->raw);
}

/* The entry at pos, whose slot's words raw changed in more than tokens
 * served: nothing to do for one set aside whose words changed in nothing
 * it reads (aside_steady), else read whole. Out of line, as
 * entry_read_whole is: inlined, its test cost a route over a fleet with
 * no entry set aside 60 instructions in the sync's layout. */
static __attribute__((noinline)) void
entry_read_changed(spi_pool_index *p, const route_env *x,
                   const spi_replica_ident *r, uint32_t pos,
                   const spi_slot_words *raw) {
  if (!aside_steady(p, x, raw, pos)) entry_read_whole(p, x, r, pos, raw);
}

/* Read the slot of the replica at pos again, its words once. A slot whose
 * words changed in tokens served alone (a ticket opened and finished there
 * since the last route) takes only those (entry_steady), without a reading
 * of the rest, and one set aside whose words changed in nothing it reads
 * takes nothing (aside_steady); any other entry is made whole from the
 * same words (a load report changes them: a second read of the slot would
 * cost a tenth more a sync when reports come often). */
static void entry_read(spi_pool_index *p, const route_env *x,
                       const spi_replica_ident *r, uint32_t pos) {
  spi_slot_words raw;
  spi__slot_words_read(&x->e->registry.slots[r->slot], &raw);
  if (!entry_steady(p, x, &raw, pos)) {
    entry_read_changed(p, x, r, pos, &raw);
    return;
  }
  const pix_cold *c = &p->cold[pos];
  if (c->from > p->reg_from) p->reg_from = c->from;
  entry_served(p, r, (double)raw.served, pos);
}

/* The configuration x's route reads entries with (pix_config). */
static void config_of(const route_env *x, pix_config *o) {
  o->per_queued_ms = x->cfg->ttft_per_queued_ms;
  o->default_rate = x->default_rate;
  o->decode_rate = x->cfg->decode_tokens_per_s;
  o->max_age = x->max_age;
}

/* Whether entries read with c read the same under x's configuration. */
static int config_same(const pix_config *c, const route_env *x) {
  pix_config now;
  config_of(x, &now);
  return c->per_queued_ms == now.per_queued_ms &&
         c->default_rate == now.default_rate &&
         c->decode_rate == now.decode_rate && c->max_age == now.max_age;
}

/* The other indexes in use that marks are handed on to: the model
 * indexes taken so far and the first index's lanes open. */
typedef struct pix_others {
  unsigned models, lanes;
} pix_others;

static int others_any(pix_others o) { return (o.models != 0) | (o.lanes > 1); }

/* Hand the marks bits of word w, taken from the registry by p, on to
 * every other index in use (o): each must read those slots again too. */
static void marks_forward(const spi_pool_index *p, spi_registry *g, size_t w,
                          uint64_t bits, pix_others o) {
  for (unsigned k = 0; k < o.lanes; k++)
    if (g->pix_lane[k] != p)
      atomic_fetch_or_explicit(&g->pix_lane[k]->pending[w], bits,
                               memory_order_release);
  for (unsigned k = 0; k < o.models; k++)
    if (g->pix_model[k] != p)
      atomic_fetch_or_explicit(&g->pix_model[k]->pending[w], bits,
                               memory_order_release);
}

/* The other indexes in use now: loaded after a take of the registry's
 * marks, so that an index made or opened before its first rebuild (which
 * takes every mark, then reads every slot) is counted by whoever takes a
 * mark of a write that rebuild may have missed: that take reads the mark
 * after the rebuild's own take, in the release sequence the rebuild's
 * exchange heads, so the count's store that came before the rebuild
 * happened before this load. */
static pix_others others_now(spi_registry *g) {
  pix_others o;
  o.models = atomic_load_explicit(&g->pix_models_n, memory_order_acquire);
  o.lanes = atomic_load_explicit(&g->pix_lanes, memory_order_acquire) & 0xffu;
  return o;
}

/* The marks of word w for p: the registry's, handed on to the other
 * indexes in use when they were taken (others_now), and, while others are
 * in use at its sync (o), what those handed on to p. A write that marked
 * its slot after the registry's word was taken marks it again, so nothing
 * is lost. Inlined: with no other index and no mark it is the one load
 * and test a word it always was. */
static inline __attribute__((always_inline)) uint64_t
marks_take(spi_pool_index *p, spi_registry *g, size_t w, pix_others o) {
  uint64_t bits = 0;
  /* Acquire, not relaxed: an index's first rebuild that finds a word
   * empty must still see the slots an earlier taker of its marks saw
   * written (free on x86, where every load acquires). */
  if (atomic_load_explicit(&g->dirty[w], memory_order_acquire)) {
    bits = atomic_exchange_explicit(&g->dirty[w], 0, memory_order_acq_rel);
    if (bits) {
      pix_others now = others_now(g);
      if (others_any(now)) marks_forward(p, g, w, bits, now);
    }
  }
  if (others_any(o) &&
      atomic_load_explicit(&p->pending[w], memory_order_acquire))
    bits |= atomic_exchange_explicit(&p->pending[w], 0, memory_order_acq_rel);
  return bits;
}

/* The other indexes in use for p's sync. The first lane's holder opens
 * the lanes routes asked for (spi__pix_lanes_ask) here, before it takes
 * any mark: every mark taken after is handed on to them, and every write
 * whose mark was taken before happened before their first rebuild (the
 * count's store, release, before their routes' load of it, acquire). */
static pix_others others_in_use(spi_pool_index *p, spi_registry *g) {
  pix_others o = others_now(g);
  unsigned asked =
      atomic_load_explicit(&g->pix_lanes, memory_order_relaxed) >> 8;
  if (__builtin_expect(asked > o.lanes, 0) && p == g->pix) {
    o.lanes = asked;
    atomic_store_explicit(&g->pix_lanes, asked << 8 | asked,
                          memory_order_release);
  }
  return o;
}

/* Read every replica of set. The marks are taken first: a write meanwhile
 * marks its slot again. */
static void rebuild(spi_pool_index *p, const route_env *x,
                    const spi_replica_set *set) {
  spi_registry *g = &x->e->registry;
  pix_others o = others_in_use(p, g);
  for (size_t w = 0; w < SPI_REPLICA_SLOTS / 64; w++)
    (void)marks_take(p, g, w, o);
  _Static_assert(SPI_REPLICA_SLOTS / 64 <= 64, "a bit a dirty word");
  p->slot_words = 0;
  for (size_t i = 0; i < set->n; i++)
    p->slot_words |= UINT64_C(1) << (set->r[i].slot / 64);
  memset(p->usable, 0, sizeof p->usable);
  memset(p->kv_fix, 0, sizeof p->kv_fix);
  memset(p->kv_n, 0, sizeof p->kv_n);
  memset(p->served, 0, sizeof p->served);
  memset(p->streams, 0, sizeof p->streams);
  memset(p->wait_fix, 0, sizeof p->wait_fix);
  memset(p->reg, 0, sizeof p->reg);
  memset(p->exc, 0, sizeof p->exc);
  memset(p->aside, 0, sizeof p->aside);
  memset(p->adv, 0, sizeof p->adv);
  p->adv_n = 0;
  memset(p->adv_usable, 0, sizeof p->adv_usable);
  memset(p->adv_served, 0, sizeof p->adv_served);
  memset(p->adv_streams, 0, sizeof p->adv_streams);
  memset(p->adv_wait_fix, 0, sizeof p->adv_wait_fix);
  memset(p->creg, 0, sizeof p->creg);
  memset(p->cfree, 0, sizeof p->cfree);
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++) {
    p->blk_dirty[k] = ~UINT64_C(0);
    p->lst_dirty[k] = 0;
  }
  p->fix_cells = (uint8_t)((1u << SPI_SUMMARY_CELLS) - 1);
  p->version = set->version;
  p->n = set->n;
  spi__pix_models_choose(p, set);
  config_of(x, &p->read_with);
  p->read_seq = x->cfg_seq;
  p->reg_from = INT64_MIN;
  p->min_until = INT64_MAX;
  p->rebuilds++;
  for (size_t i = 0; i < set->n; i++) {
    p->hot[i].kind = PIX_OFF;
    p->id_hash_at[i] = set->r[i].id_hash;
    p->cell_at[i] = (int8_t)set->r[i].cell;
    spi_slot_words raw;
    spi__slot_words_read(&x->e->registry.slots[set->r[i].slot], &raw);
    entry_read_whole(p, x, &set->r[i], (uint32_t)i, &raw);
  }
  for (size_t i = set->n; i % 8; i++) {
    p->id_hash_at[i] = 0;
    p->cell_at[i] = -1;
  }
}

/* Read again the slots of the set marked since the last route. Only the
 * words holding its slots are looked at, and only a word with a bit set is
 * cleared (a locked instruction): a bit set after the look is found by the
 * next route. A slot outside the set is read when a set holding it comes,
 * which rebuilds the index. */
/* Read again the slots of the set that bits (word w of the marks) name. */
static inline void read_marked(spi_pool_index *p, const route_env *x,
                               const spi_replica_set *set, uint32_t w,
                               uint64_t bits) {
  for (; bits; bits &= bits - 1) {
    uint32_t slot = w * 64 + (uint32_t)__builtin_ctzll(bits);
    uint16_t pos = set->pos_of_slot[slot];
    if (pos != SPI_NO_POS && pos < set->n) entry_read(p, x, &set->r[pos], pos);
  }
}

/* read_dirty while the registry has other indexes in use, or lanes
 * asked for (others_in_use). */
static __attribute__((noinline)) void
read_dirty_shared(spi_pool_index *p, const route_env *x,
                  const spi_replica_set *set) {
  spi_registry *g = &x->e->registry;
  pix_others o = others_in_use(p, g);
  for (uint64_t words = p->slot_words; words; words &= words - 1) {
    uint32_t w = (uint32_t)__builtin_ctzll(words);
    read_marked(p, x, set, w, marks_take(p, g, w, o));
  }
}

static void read_dirty(spi_pool_index *p, const route_env *x,
                       const spi_replica_set *set) {
  spi_registry *g = &x->e->registry;
  /* No model index taken, one lane open and none asked for: the index is
   * the registry's only one (two loads, one test). */
  unsigned models = atomic_load_explicit(&g->pix_models_n, memory_order_acquire);
  unsigned lanes = atomic_load_explicit(&g->pix_lanes, memory_order_relaxed);
  if (__builtin_expect((models | (lanes ^ 1u)) != 0, 0)) {
    read_dirty_shared(p, x, set);
    return;
  }
  const pix_others alone = {0, 1};
  for (uint64_t words = p->slot_words; words; words &= words - 1) {
    uint32_t w = (uint32_t)__builtin_ctzll(words);
    read_marked(p, x, set, w, marks_take(p, g, w, alone));
  }
}

/* Entries past their window (cold[].until) are read again: a regular
 * one whose load has gone stale stays regular with its load read as
 * saturated, one set aside or advised may be anything now. Then the
 * earliest time the next comes is found again (every entry just read is
 * due later than now: load_window, entry_aside). Out of line: few syncs
 * come to it. */
static __attribute__((noinline)) void
expire(spi_pool_index *p, const route_env *x, const spi_replica_set *set) {
  size_t words = (p->n + 63) / 64;
  for (size_t w = 0; w < words; w++)
    for (uint64_t b = p->reg[w] | p->aside[w] | p->adv[w]; b; b &= b - 1) {
      uint32_t pos = (uint32_t)(w * 64 + (size_t)__builtin_ctzll(b));
      if (p->cold[pos].until > x->now) continue;
      spi_slot_words raw; /* read whole: entry_steady holds before until */
      spi__slot_words_read(&x->e->registry.slots[set->r[pos].slot], &raw);
      entry_read_whole(p, x, &set->r[pos], pos, &raw);
    }
  int64_t min = INT64_MAX;
  for (size_t w = 0; w < words; w++)
    for (uint64_t b = p->reg[w] | p->aside[w] | p->adv[w]; b; b &= b - 1) {
      int64_t until = p->cold[(size_t)w * 64 + (size_t)__builtin_ctzll(b)].until;
      if (until < min) min = until;
    }
  p->min_until = min;
}

/* Sum up block w of cell k again from its regular replicas. */
static void block_fix(spi_pool_index *p, int k, uint32_t w) {
  pix_block *b = &p->blk[k][w];
  b->wait_ms = b->ms_tok = b->slow = b->rel = b->srv = HUGE_VAL;
  b->rel_pos = UINT32_MAX;
  b->n = b->n_wait_ms = b->n_ms_tok = b->n_slow = 0;
  for (uint64_t m = p->creg[k][w]; m; m &= m - 1) {
    uint32_t pos = w * 64 + (uint32_t)__builtin_ctzll(m);
    const pix_hot *h = &p->hot[pos];
    least_join(&b->wait_ms, &b->n_wait_ms, h->wait_ms);
    least_join(&b->ms_tok, &b->n_ms_tok, h->ms_tok);
    least_join(&b->slow, &b->n_slow, h->slow);
    if (least_takes(b, h->rel, h->srv, pos)) {
      b->rel = h->rel; /* positions ascend: the first of equals stays */
      b->srv = h->srv;
      b->rel_pos = pos;
    }
    b->n++;
  }
}

/* Find block w of cell k's least loaded again (block_fix's choice, from
 * the same values in the same order); its other values stand. */
static void block_least(spi_pool_index *p, int k, uint32_t w) {
  /* The least so far in locals (least_takes' test on them): written
   * through b, it was stored and loaded again for every member, since
   * t_rel and t_srv are doubles too. */
  double rel_min = HUGE_VAL, srv_min = HUGE_VAL;
  uint32_t at = UINT32_MAX;
  for (uint64_t m = p->creg[k][w]; m; m &= m - 1) {
    uint32_t pos = w * 64 + (uint32_t)__builtin_ctzll(m);
    double rel = p->t_rel[pos], srv = p->t_srv[pos];
    /* Both tests below fail for a load not at most the least so far (a
     * NaN too): one compare for most members. */
    if (!(rel <= rel_min)) continue;
    if (at == UINT32_MAX ? rel < rel_min
                         : least_before(rel, srv, pos, rel_min, srv_min, at)) {
      rel_min = rel;
      srv_min = srv;
      at = pos;
    }
  }
  pix_block *b = &p->blk[k][w];
  b->rel = rel_min;
  b->srv = srv_min;
  b->rel_pos = at;
}

/* Whether every block that is not waiting for block_fix holds what
 * block_fix would make of it now (tests call this between routes). */
int spi__pix_blocks_exact(spi_pool_index *p) {
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    for (uint32_t w = 0; w < (p->n + 63) / 64; w++) {
      if (p->blk_dirty[k] >> w & 1) continue;
      int least_waits = (int)(p->lst_dirty[k] >> w & 1);
      pix_block kept = p->blk[k][w];
      block_fix(p, k, w);
      const pix_block *b = &p->blk[k][w];
      int same = kept.n == b->n && kept.wait_ms == b->wait_ms &&
                 kept.ms_tok == b->ms_tok && kept.slow == b->slow &&
                 kept.n_wait_ms == b->n_wait_ms &&
                 kept.n_ms_tok == b->n_ms_tok && kept.n_slow == b->n_slow &&
                 (least_waits || (kept.rel_pos == b->rel_pos &&
                                  kept.rel == b->rel && kept.srv == b->srv));
      p->blk[k][w] = kept;
      if (!same) return 0;
    }
  return 1;
}

/* The cells marked in fix_cells only: most syncs change no block's
 * bounds, and those that do, one cell's. */
static void blocks_fix(spi_pool_index *p) {
  for (unsigned cells = p->fix_cells; cells; cells &= cells - 1) {
    int k = __builtin_ctz(cells);
    for (uint64_t d = p->blk_dirty[k]; d; d &= d - 1)
      block_fix(p, k, (uint32_t)__builtin_ctzll(d));
    for (uint64_t d = p->lst_dirty[k] & ~p->blk_dirty[k]; d; d &= d - 1)
      block_least(p, k, (uint32_t)__builtin_ctzll(d));
    p->blk_dirty[k] = p->lst_dirty[k] = 0;
  }
  p->fix_cells = 0;
}

/* Whether the entries read the same under x's configuration: a snapshot
 * is never changed, so one found to hold read_with is not compared again
 * (seqs are the engine's, one a snapshot). */
static int config_holds(spi_pool_index *p, const route_env *x) {
  if (x->cfg_seq == p->read_seq && p->read_seq != 0) return 1;
  if (!config_same(&p->read_with, x)) return 0;
  p->read_seq = x->cfg_seq;
  return 1;
}

static int sync_entries(spi_pool_index *p, const route_env *x,
                        const spi_replica_set *set) {
  if (set->version < p->version) return 0;
  if (set->version != p->version || x->now < p->reg_from ||
      !config_holds(p, x)) {
    rebuild(p, x, set);
    return 1;
  }
  read_dirty(p, x, set);
  if (x->now >= p->min_until) expire(p, x, set);
  return 1;
}

static void pix_hide(spi_pool_index *p, const route_env *x,
                     const spi_replica_set *set);

int spi__pix_sync(spi_pool_index *p, const route_env *x,
                  const spi_replica_set *set) {
  if (!sync_entries(p, x, set)) return 0;
  if (__builtin_expect(x->excl != NULL, 0)) pix_hide(p, x, set);
  blocks_fix(p);
  return 1;
}

/* The regular entry at pos set aside for one route (pix_hide): out
 * of the ranking and of the sums but for its KV usage. */
static void entry_hide(spi_pool_index *p, uint32_t pos) {
  pix_cold *c = &p->cold[pos];
  entry_drop(p, pos, 0);
  p->t_wait[pos] = p->t_ms_tok[pos] = p->t_slow[pos] = 0.0;
  p->hot[pos].kind = PIX_ASIDE;
  bit_set(p->aside, pos);
  c->steady = 0; /* not one aside_steady may leave as it is */
  kv_join(p, c); /* entry_drop took it out; aside_drop takes it again */
}

/* The regular replicas x->excl names set aside for this route
 * (entry_hide), each slot marked again so that the next sync reads it
 * whole and it is regular again. Out of line: few routes exclude any. */
static __attribute__((noinline)) void pix_hide(spi_pool_index *p,
                                               const route_env *x,
                                               const spi_replica_set *set) {
  for (uint64_t words = p->slot_words; words; words &= words - 1) {
    uint32_t w = (uint32_t)__builtin_ctzll(words);
    for (uint64_t b = x->excl[w]; b; b &= b - 1) {
      uint32_t slot = w * 64 + (uint32_t)__builtin_ctzll(b);
      uint16_t pos = set->pos_of_slot[slot];
      if (pos == SPI_NO_POS || pos >= set->n || p->hot[pos].kind != PIX_REG)
        continue;
      entry_hide(p, pos);
      spi__replica_touch(&x->e->registry, slot);
    }
  }
}
