/*
 * timeline.c - spot capacity per zone and the notices, drains and replays
 * of a run over simulated time, in a fixed number of bins (see
 * sim_timeline in sim_run.h) for the chart's timeline panel, with every
 * capacity change also kept as it happened; where a run starts in its spot
 * traces; and the reachable maximum saving, which follows the spot pool's
 * size over the run.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"

void sim_timeline_init(sim_timeline *t, uint32_t nz) {
  memset(t, 0, sizeof *t);
  t->bin_s = 1.0;
  t->nz = nz < SIM_MAX_ZONES ? nz : SIM_MAX_ZONES;
  memset(t->cap_min, 0xFF, sizeof t->cap_min);
  memset(t->cap_last, 0xFF, sizeof t->cap_last);
}

static uint16_t min_set(uint16_t a, uint16_t b) {
  if (a == SIM_TL_UNSET) return b;
  if (b == SIM_TL_UNSET) return a;
  return a < b ? a : b;
}

/* Halve the resolution: bins 2i and 2i+1 become bin i. */
static void merge_pairs(sim_timeline *t) {
  for (uint32_t i = 0; i < SIM_TL_BINS / 2; i++) {
    uint32_t a = 2 * i, b = 2 * i + 1;
    for (uint32_t z = 0; z < SIM_MAX_ZONES; z++) {
      t->cap_min[i][z] = min_set(t->cap_min[a][z], t->cap_min[b][z]);
      uint16_t last = t->cap_last[b][z];
      t->cap_last[i][z] = last != SIM_TL_UNSET ? last : t->cap_last[a][z];
    }
    t->notices[i] = t->notices[a] + t->notices[b];
    t->drains[i] = t->drains[a] + t->drains[b];
    t->replays[i] = t->replays[a] + t->replays[b];
  }
  size_t half = SIM_TL_BINS / 2;
  memset(t->cap_min[half], 0xFF, half * sizeof t->cap_min[0]);
  memset(t->cap_last[half], 0xFF, half * sizeof t->cap_last[0]);
  memset(t->notices + half, 0, half * sizeof t->notices[0]);
  memset(t->drains + half, 0, half * sizeof t->drains[0]);
  memset(t->replays + half, 0, half * sizeof t->replays[0]);
  t->used = (t->used + 1) / 2;
  t->bin_s *= 2;
}

/* The bin of time at_s, widening the bins until it fits. */
static uint32_t bin_of(sim_timeline *t, double at_s) {
  if (at_s < 0) at_s = 0;
  while (at_s >= t->bin_s * SIM_TL_BINS) merge_pairs(t);
  uint32_t b = (uint32_t)(at_s / t->bin_s);
  if (b >= SIM_TL_BINS) b = SIM_TL_BINS - 1;
  if (b + 1 > t->used) t->used = b + 1;
  return b;
}

void sim_timeline_cap(sim_timeline *t, double at_s, uint32_t zone, uint32_t cap) {
  if (zone >= t->nz) return;
  uint32_t b = bin_of(t, at_s);
  uint16_t c = cap < SIM_TL_UNSET ? (uint16_t)cap : SIM_TL_UNSET - 1;
  t->cap_min[b][zone] = min_set(t->cap_min[b][zone], c);
  t->cap_last[b][zone] = c;
  if (t->nlog < SIM_TL_LOG) {
    struct sim_tl_change *e = &t->log[t->nlog++];
    e->t_s = at_s > 0 ? at_s : 0;
    e->zone = zone;
    e->cap = cap;
  } else {
    t->log_full = 1;
  }
}

void sim_timeline_count(sim_timeline *t, double at_s, int kind) {
  uint32_t b = bin_of(t, at_s);
  if (kind == SIM_TL_NOTICE) t->notices[b]++;
  else if (kind == SIM_TL_DRAIN) t->drains[b]++;
  else t->replays[b]++;
}

uint32_t sim_timeline_cap_at(const sim_timeline *t, uint32_t b, uint32_t z) {
  if (z >= t->nz) return 0;
  /* The lowest capacity in the bin, so a short outage stays visible. */
  if (b < SIM_TL_BINS && t->cap_min[b][z] != SIM_TL_UNSET) return t->cap_min[b][z];
  for (uint32_t k = b < SIM_TL_BINS ? b : SIM_TL_BINS; k-- > 0;)
    if (t->cap_last[k][z] != SIM_TL_UNSET) return t->cap_last[k][z];
  return t->zone_size[z];
}

uint32_t sim_timeline_cap_start(const sim_timeline *t, uint32_t z) {
  for (uint32_t k = 0; k < t->nlog && t->log[k].t_s <= 0; k++)
    if (t->log[k].zone == z) return t->log[k].cap;
  return sim_timeline_cap_at(t, 0, z);
}

/* ------------------------------------------------ the run's spot window */

void sim_spot_place(sim_setup *su, const sim_opts *o) {
  double start = 0;
  int drawn = 0;
  if (o->spot_start_given) {
    start = o->spot_start_s;
  } else if (o->n_spot) {
    /* The seed alone decides, never what the window holds; a stream of its
     * own, so the traffic drawn from the same seed does not move it. */
    double longest = 0;
    for (size_t z = 0; z < su->nz; z++) {
      double len = (double)su->zones[z].tr.n * su->zones[z].tr.gap_s;
      if (len > longest) longest = len;
    }
    sim_rng r;
    sim_rng_seed(&r, o->gen.seed ^ 0x73706f742d737461ull);
    start = floor(sim_rng_unit(&r) * longest);
    drawn = 1;
  }
  for (size_t z = 0; z < su->nz; z++) su->zones[z].start_s = start;
  su->spot_start_s = start;
  su->spot_start_drawn = drawn;
}

/* ------------------------------------------------- the reachable maximum */

/* The spot pool as the reachable maximum sees it: a pooled LRU of the
 * blocks of the spot replicas up, walked through the run's capacity
 * changes in time order. */
typedef struct reach_walk {
  const sim_timeline *tl;
  const sim_trace *tr;
  sim_lru lru;
  double kv, pre, dec;   /* blocks a spot replica; prefill, decode tok/s */
  uint32_t cap[SIM_MAX_ZONES];
  uint32_t li, up;       /* next log entry; spot replicas up now */
  uint32_t *deferred;    /* bronze that arrived with no spot replica up */
  size_t ndef;
  double spot_gpu_s;     /* the non-gold work on spot, GPU-seconds */
  double free_at;        /* when the pool has done the work given it so far */
  double od_tokens;      /* silver that found no spot replica up: tokens */
} reach_walk;

/* Spot replicas up at t_s past the end of a full log: from the bins. */
static uint32_t up_from_bins(const sim_timeline *tl, double t_s) {
  double b = tl->bin_s > 0 ? t_s / tl->bin_s : 0;
  uint32_t bin = b < SIM_TL_BINS - 1 ? (uint32_t)b : SIM_TL_BINS - 1, up = 0;
  for (uint32_t z = 0; z < tl->nz; z++) up += sim_timeline_cap_at(tl, bin, z);
  return up;
}

/* The most spot replicas up at once over the run. */
static uint32_t spot_peak(const sim_timeline *tl) {
  uint32_t cap[SIM_MAX_ZONES] = {0}, peak = 0;
  for (uint32_t k = 0; k < tl->nlog; k++) {
    cap[tl->log[k].zone] = tl->log[k].cap;
    uint32_t up = 0;
    for (uint32_t z = 0; z < tl->nz; z++) up += cap[z];
    if (up > peak) peak = up;
  }
  if (tl->log_full)
    for (uint32_t b = 0; b < SIM_TL_BINS; b++) {
      uint32_t up = up_from_bins(tl, ((double)b + 0.5) * tl->bin_s);
      if (up > peak) peak = up;
    }
  return peak;
}

/* Request i on the spot pool from at_s: its prompt cached as the pooled
 * LRU caches it, its work in GPU-seconds as the ledger prices it (cached
 * tokens counted as the run counts them), shared by the replicas up. */
static void reach_serve(reach_walk *w, size_t i, double at_s) {
  const sim_trace_req *q = &w->tr->reqs[i];
  uint32_t hit = sim_lru_prefix_fill(&w->lru, w->tr->chain + q->block_off, q->nblocks);
  double cached = (double)hit * SIM_BLOCK_TOKENS;
  if (cached >= q->in_tokens) cached = q->in_tokens ? q->in_tokens - 1 : 0;
  double gpu_s = ((double)q->in_tokens - cached) / w->pre + q->out_tokens / w->dec;
  w->spot_gpu_s += gpu_s;
  w->free_at = (w->free_at > at_s ? w->free_at : at_s) + gpu_s / w->up;
}

/* The spot pool is now `up` replicas: its cache shrinks to the replicas
 * still up (keeping its most recent blocks, as the replicas that stay
 * would), empties with the last of them and grows as they return; bronze
 * held for spot runs as soon as a replica is up. */
static void reach_set_up(reach_walk *w, uint32_t up, double at_s) {
  if (up == w->up) return;
  w->up = up;
  sim_lru_set_cap(&w->lru, (uint32_t)fmin((double)up * w->kv, (double)SIM_LRU_MAX_CAP));
  if (!up) return;
  for (size_t k = 0; k < w->ndef; k++) reach_serve(w, w->deferred[k], at_s);
  w->ndef = 0;
}

/* Every capacity change up to t_s, one at a time. */
static void reach_advance(reach_walk *w, double t_s) {
  const sim_timeline *tl = w->tl;
  while (w->li < tl->nlog && tl->log[w->li].t_s <= t_s) {
    w->cap[tl->log[w->li].zone] = tl->log[w->li].cap;
    w->li++;
    uint32_t up = 0;
    for (uint32_t z = 0; z < tl->nz; z++) up += w->cap[z];
    reach_set_up(w, up, tl->log[w->li - 1].t_s);
  }
  if (tl->log_full && tl->nlog && isfinite(t_s) && t_s > tl->log[tl->nlog - 1].t_s)
    reach_set_up(w, up_from_bins(tl, t_s), t_s);
}

/* The reachable maximum saving, % of the all-on-demand cost: what the
 * class-feasible maximum becomes with the spot capacity the run had, as
 * it changed. Gold costs what it cost in run r (gold may overflow to a
 * warm spot replica, which a policy may or may not do, so the bound is on
 * the non-gold work alone). The non-gold requests run on spot at the spot
 * price, in arrival order, each when the spot replicas up have done the
 * work before it (one queue, no replica idle while work waits), its prompt
 * cached as well as one pooled LRU of the KV of the spot replicas up at
 * that moment, fed only the non-gold requests, would cache it. With no
 * spot replica up, silver runs on demand (at the all-on-demand run's mean
 * cost per token) and bronze waits for the first spot replica back (if
 * none comes back, it is priced uncached at the spot price). Work is
 * priced as the ledger prices it: uncached prompt at the prefill rate,
 * output at a full batch's decode rate. Generous to spot: silver never
 * spills to on demand while spot is busy, and it ignores the work notices
 * cut and that a departing replica takes its own cache, not the pool's
 * oldest blocks. At most the class-feasible maximum. */
double sim_reachable_pct(const sim_opts *o, const sim_trace *tr, const sim_result *r,
                         const sim_result *base, double max_pct) {
  reach_walk w;
  memset(&w, 0, sizeof w);
  w.tl = &r->tl, w.tr = tr;
  w.pre = o->prefill_tps, w.dec = o->decode_tps * o->max_batch, w.kv = o->kv_blocks;
  double od_h = o->od_usd_h;
  const sim_cluster *cl = o->cluster;
  if (cl && cl->n) { /* the replica-weighted means run.c prices with */
    double n = 0, ns = 0;
    w.pre = w.dec = od_h = w.kv = 0;
    for (size_t g = 0; g < cl->n; g++) {
      const sim_group *G = &cl->g[g];
      double c = G->count;
      n += c, w.pre += c * G->prefill_tps, w.dec += c * G->decode_tps * G->max_batch;
      od_h += c * G->od_usd_h;
      if (G->pool == SPI_POOL_SPOT) ns += c, w.kv += c * G->kv_blocks;
    }
    w.pre /= n, w.dec /= n, od_h /= n, w.kv = ns > 0 ? w.kv / ns : 0;
  }
  double ratio = r->price_ratio < 1 ? r->price_ratio : 1;
  double blocks = spot_peak(&r->tl) * w.kv;
  if (!(base->usd > 0) || !(w.pre > 0) || !(w.dec > 0) || !(blocks >= 1)) return 0;
  if (blocks > SIM_LRU_MAX_CAP) blocks = SIM_LRU_MAX_CAP;
  w.deferred = malloc((tr->n ? tr->n : 1) * sizeof *w.deferred);
  if (!w.deferred) sim_oom("the reachable maximum's queue");
  if (sim_lru_init(&w.lru, (uint32_t)blocks)) sim_oom("the reachable maximum's spot cache");
  sim_lru_set_cap(&w.lru, 0);
  for (size_t i = 0; i < tr->n; i++) {
    const sim_trace_req *q = &tr->reqs[i];
    if (q->klass == SPI_CLASS_GOLD) continue;
    /* The pool takes work in arrival order as fast as its replicas up can
     * do it (all of them busy, none idle while work waits): a request's
     * cache is the pool's when its turn comes. */
    double at = (double)q->arrival_ns / 1e9;
    if (w.free_at > at) at = w.free_at;
    reach_advance(&w, at);
    if (w.up) reach_serve(&w, i, at);
    else if (q->klass == SPI_CLASS_BRONZE) w.deferred[w.ndef++] = (uint32_t)i;
    else w.od_tokens += (double)q->in_tokens + q->out_tokens;
  }
  reach_advance(&w, INFINITY); /* bronze still held: served if spot returns */
  for (size_t k = 0; k < w.ndef; k++) {
    const sim_trace_req *q = &tr->reqs[w.deferred[k]];
    w.spot_gpu_s += q->in_tokens / w.pre + q->out_tokens / w.dec;
  }
  sim_lru_free(&w.lru);
  free(w.deferred);
  double od_per_token = base->tokens > 0 ? base->usd / base->tokens : 0;
  double cost = r->usd_class[SPI_CLASS_GOLD] + w.spot_gpu_s * od_h / 3600.0 * ratio +
                w.od_tokens * od_per_token;
  double pct = 100.0 * (1 - cost / base->usd);
  return pct < max_pct ? pct : max_pct;
}
