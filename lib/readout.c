/*
 * readout.c - what the engine shows of itself: the autoscaling signals,
 * the Prometheus text (rendered by readout_text.c) with the replicas'
 * gauges, and the cost ledger's rows. The state they read lives in
 * metrics.c, ledger.c and replica.c; nothing here writes it.
 *
 * Every read-out pins the configuration snapshot: configure may replace a
 * ledger or a metrics object nothing was written to yet, and the replicas'
 * gauges borrow the pinned set's id strings.
 */
#include <string.h>

#include "engine.h"
#include "metrics.h"

/* ---------------------------------------------------------------- signals */

/*
 * A quantile from the bucket counts, as Prometheus' histogram_quantile
 * computes it: n samples, rank q * n; find the first bucket whose
 * cumulative count reaches the rank; assume its samples spread evenly
 * between the bucket's lower bound (the previous bucket's upper bound, 0
 * for the first) and its upper bound, and interpolate linearly:
 *
 *   lower + (upper - lower) * (rank - count below the bucket) / bucket count
 *
 * A rank in the +Inf bucket has no upper bound to interpolate towards and
 * yields the largest finite bound (30000 ms).
 */
static double quantile(const spi_metrics *x, int c, double q) {
  uint64_t n[SPI_TTFT_BUCKETS], total = 0;
  for (int b = 0; b < SPI_TTFT_BUCKETS; b++) {
    n[b] = spi__mttft_bucket(x, c, b);
    total += n[b];
  }
  if (total == 0) return 0.0;
  double rank = q * (double)total;
  uint64_t below = 0;
  for (int b = 0; b < SPI_TTFT_BUCKETS; b++) {
    if (n[b] > 0 && (double)(below + n[b]) >= rank) {
      if (b == SPI_TTFT_BUCKETS - 1) return spi__ttft_le[b - 1];
      double lo = b == 0 ? 0.0 : spi__ttft_le[b - 1];
      double frac = (rank - (double)below) / (double)n[b];
      return lo + (spi__ttft_le[b] - lo) * frac;
    }
    below += n[b];
  }
  return spi__ttft_le[SPI_TTFT_BUCKETS - 2];
}

double spi__metrics_p95_ttft(spi_metrics *x, int32_t klass) {
  return x ? quantile(x, spi__mclass(klass), 0.95) : 0.0;
}

double spi__metrics_queue_depth(spi_metrics *x, int32_t klass) {
  if (!x) return 0.0;
  return (double)spi__mqueue(x, spi__mclass(klass));
}

double spi__metrics_cache_miss_rate(spi_metrics *x) {
  if (!x) return 0.0;
  uint64_t matched, total;
  spi__metrics_blocks(x, &matched, &total);
  if (total == 0) return 0.0;
  return 1.0 - (double)matched / (double)total;
}

double spi__metrics_draft_acceptance(spi_metrics *x) {
  if (!x) return 0.0;
  uint64_t a = spi__mget(&x->draft_accepted), r = spi__mget(&x->draft_rejected);
  return a + r ? (double)a / (double)(a + r) : 0.0;
}

/* The signals the counters give (warm_on_demand aside, which needs the
 * replica set). */
void spi__metrics_signals(spi_metrics *x, spi_signals *s) {
  for (int c = 0; c < M_CLASSES; c++) {
    s->queue_depth[c] = spi__metrics_queue_depth(x, c);
    s->p95_ttft_ms[c] = spi__metrics_p95_ttft(x, c);
  }
  s->cache_miss_rate = spi__metrics_cache_miss_rate(x);
  s->draft_acceptance = spi__metrics_draft_acceptance(x);
}

/* ------------------------------------------------------- signals, metrics */

/* Replicas of the pinned set that are on-demand, ACTIVE, with a closed
 * breaker and a load signal younger than router.load_max_age_ms. */
static uint32_t warm_on_demand(spi_engine *e, const spi_snapshot *s,
                               const spi_replica_set *set, int64_t now) {
  if (!set || !e->registry.slots) return 0;
  int64_t age_ms =
      s && s->router.load_max_age_ms > 0 ? s->router.load_max_age_ms : 1000;
  uint32_t n = 0;
  for (size_t i = 0; i < set->n; i++) {
    const spi_replica_ident *r = &set->r[i];
    if (r->pool != SPI_POOL_ON_DEMAND || r->slot >= SPI_REPLICA_SLOTS) continue;
    spi_replica_slot *sl = &e->registry.slots[r->slot];
    if (atomic_load_explicit(&sl->state, memory_order_acquire) !=
            SPI_REPLICA_ACTIVE ||
        atomic_load_explicit(&sl->breaker, memory_order_acquire) !=
            SPI_BREAKER_CLOSED)
      continue;
    spi_load_view v;
    spi__replica_load(sl, now, age_ms * 1000000, &v);
    if (v.fresh) n++;
  }
  return n;
}

/* Signals with the replica set already pinned. */
static void engine_signals(spi_engine *e, const spi_snapshot *s,
                           const spi_replica_set *set, int64_t now,
                           spi_signals *out) {
  size_t size = out->struct_size;
  memset(out, 0, sizeof *out);
  out->struct_size = size;
  spi__metrics_signals(atomic_load(&e->metrics), out);
  out->warm_on_demand = warm_on_demand(e, s, set, now);
}

int spi_engine_signals(spi_engine *engine, spi_signals *out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof(spi_signals)) return SPI_EINVAL;
  int64_t now = spi__engine_now(engine);
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  spi_replica_set *set = atomic_load(&engine->registry.set);
  engine_signals(engine, s, set, now, out);
  spi__snap_release(engine, pin);
  return SPI_OK;
}

/* Render with the set pinned: the gauges borrow the set's id strings. */
static int render_pinned(spi_engine *e, const spi_snapshot *s,
                         const spi_replica_set *set, int64_t now,
                         spi_buf *out) {
  spi_signals sig;
  sig.struct_size = sizeof sig;
  engine_signals(e, s, set, now, &sig);
  size_t n = set && e->registry.slots ? set->n : 0;
  spi_replica_gauge *g = NULL;
  if (n) {
    g = spi__calloc(&e->mem, n, sizeof *g);
    if (!g) return SPI_ENOMEM;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++) {
    const spi_replica_ident *r = &set->r[i];
    if (r->slot >= SPI_REPLICA_SLOTS) continue;
    spi_replica_slot *sl = &e->registry.slots[r->slot];
    g[k].id = r->id;
    g[k].pool = r->pool;
    g[k].state = atomic_load_explicit(&sl->state, memory_order_relaxed);
    g[k].breaker = atomic_load_explicit(&sl->breaker, memory_order_relaxed);
    g[k].inflight = atomic_load_explicit(&sl->inflight, memory_order_relaxed);
    g[k].kv_usage =
        spi__bitsd(atomic_load_explicit(&sl->kv_usage, memory_order_relaxed));
    k++;
  }
  int rc =
      spi__metrics_render(atomic_load(&e->metrics), g, k, &sig, out, &e->mem);
  spi__free(&e->mem, g);
  return rc;
}

int spi_engine_metrics(spi_engine *engine, char *buf, size_t cap,
                       size_t *needed) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!buf && cap) return SPI_EINVAL;
  int64_t now = spi__engine_now(engine);
  spi_buf b = {0};
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  spi_replica_set *set = atomic_load(&engine->registry.set);
  int rc = render_pinned(engine, s, set, now, &b);
  spi__snap_release(engine, pin);
  if (rc != SPI_OK) {
    spi__buf_free(&b, &engine->mem);
    return spi__engine_fail(engine, rc, "metrics: out of memory");
  }
  if (needed) *needed = b.len;
  if (cap < b.len + 1) {
    rc = SPI_EBUFSIZE;
  } else {
    if (b.len) memcpy(buf, b.data, b.len);
    buf[b.len] = '\0';
  }
  spi__buf_free(&b, &engine->mem);
  return rc;
}


/* ----------------------------------------------------------------- ledger */

/* A row with what it derives from its totals. */
int spi__ledger_row(spi_ledger *l, size_t index, spi_ledger_row *out) {
  if (!out) return SPI_EINVAL;
  if (!l) return SPI_ENOTFOUND;
  spi_ledger_totals r;
  int rc = spi__ledger_totals_at(l, index, &r);
  if (rc != SPI_OK) return rc;
  memcpy(out->tenant, r.tenant, sizeof out->tenant);
  memcpy(out->model, r.model, sizeof out->model);
  out->pool = r.pool;
  out->klass = r.klass;
  out->completed = r.completed;
  out->failed = r.failed;
  out->prompt_tokens = r.prompt_tokens;
  out->output_tokens = r.output_tokens;
  out->cached_tokens = r.cached_tokens;
  out->gpu_seconds = r.gpu_seconds;
  out->usd = r.usd;
  out->usd_per_completed = r.completed ? r.usd / (double)r.completed : 0.0;
  out->interrupted = r.interrupted;
  out->wasted_output_tokens = r.wasted_output_tokens;
  out->reprefilled_tokens = r.reprefilled_tokens;
  out->wasted_usd = r.wasted_usd;
  out->replays = r.replays;
  out->replay_latency_ms = r.replay_latency_ms;
  out->fallback_on_demand_seconds = r.fallback_on_demand_seconds;
  out->tokens_per_gpu_second =
      r.gpu_seconds > 0.0
          ? (double)(r.prompt_tokens + r.output_tokens) / r.gpu_seconds
          : 0.0;
  return SPI_OK;
}


/* Pinned: configure may replace a ledger nothing was written to yet. */
size_t spi_ledger_count(spi_engine *engine) {
  if (!spi__engine_ok(engine)) return 0;
  unsigned pin;
  spi__snap_acquire(engine, &pin);
  size_t n = spi__ledger_count(atomic_load(&engine->ledger));
  spi__snap_release(engine, pin);
  return n;
}

int spi_ledger_row_at(spi_engine *engine, size_t index, spi_ledger_row *out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof(spi_ledger_row)) return SPI_EINVAL;
  unsigned pin;
  spi__snap_acquire(engine, &pin);
  int rc = spi__ledger_row(atomic_load(&engine->ledger), index, out);
  spi__snap_release(engine, pin);
  return rc;
}
