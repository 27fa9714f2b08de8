/*
 * readout_text.c - the engine's counters, signals and replica gauges as
 * Prometheus text (the exposition format, version 0.0.4).
 *
 * Rendering is the only part of metrics that allocates: the text buffer.
 * TTFT histograms accumulate the per-bucket counters and print the total as
 * the histogram's _count, so _count always equals the +Inf bucket; bounds,
 * sum and the p95 signal are converted from milliseconds to seconds
 * (spotinfer_ttft_seconds, spotinfer_ttft_p95_seconds), the base unit
 * Prometheus names and tools expect.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "metrics.h"

/* The TTFT bucket bounds of metrics.c, in seconds. */
static const char *const TTFT_LE_SECONDS[SPI_TTFT_BUCKETS] = {
    "0.025", "0.05", "0.1", "0.2", "0.3", "0.5", "0.8",
    "1",     "1.5",  "2.5", "5",   "10",  "30",  "+Inf"};

typedef struct writer {
  spi_buf *b;
  const spi_mem *m;
  int rc;
} writer;

static void put(writer *w, const char *s, size_t n) {
  if (w->rc == SPI_OK) w->rc = spi__buf_append(w->b, w->m, s, n);
}

static void puts_(writer *w, const char *s) { put(w, s, strlen(s)); }

static void put_u64(writer *w, uint64_t v) {
  char t[24];
  int n = snprintf(t, sizeof t, "%" PRIu64, v);
  put(w, t, (size_t)n);
}

/*
 * A sample value in the exposition format whatever LC_NUMERIC says:
 * integers from an int64_t (no separator involved), other finite values as
 * %.15g with every run of bytes that is not a digit, sign or exponent letter
 * (the locale's decimal separator) replaced by '.'.
 */
static void put_double(writer *w, double d) {
  if (isnan(d) || isinf(d)) {
    puts_(w, isnan(d) ? "NaN" : d > 0 ? "+Inf" : "-Inf");
    return;
  }
  char t[64], f[64];
  int n;
  if (d == floor(d) && fabs(d) <= 9007199254740992.0)
    n = snprintf(t, sizeof t, "%" PRId64, (int64_t)d);
  else
    n = snprintf(t, sizeof t, "%.15g", d);
  if (n < 0 || (size_t)n >= sizeof t) {
    puts_(w, "NaN");
    return;
  }
  size_t k = 0;
  int in_sep = 0;
  for (int i = 0; i < n; i++) {
    char ch = t[i];
    if ((ch >= '0' && ch <= '9') || ch == '-' || ch == '+' || ch == 'e' ||
        ch == 'E') {
      f[k++] = ch;
      in_sep = 0;
    } else if (!in_sep) {
      f[k++] = '.';
      in_sep = 1;
    }
  }
  put(w, f, k);
}

/* Length of a valid UTF-8 sequence at s[0..n), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t len;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf)
    len = 2;
  else if (c >= 0xe0 && c <= 0xef)
    len = 3;
  else if (c >= 0xf0 && c <= 0xf4)
    len = 4;
  else
    return 0;
  unsigned min = len == 2 ? 0x80u : len == 3 ? 0x800u : 0x10000u;
  if (len > n) return 0;
  unsigned cp = c & (0x7fu >> len);
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3fu);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return len;
}

/* A label value: \ " and line feed escaped as the format requires; a byte
 * that is not valid UTF-8 becomes U+FFFD, as the format is UTF-8. */
static void put_label_value(writer *w, const char *s) {
  const unsigned char *u = (const unsigned char *)s;
  size_t n = strlen(s);
  for (size_t i = 0; i < n;) {
    unsigned char c = u[i];
    if (c == '\\') {
      puts_(w, "\\\\");
      i++;
    } else if (c == '"') {
      puts_(w, "\\\"");
      i++;
    } else if (c == '\n') {
      puts_(w, "\\n");
      i++;
    } else {
      size_t l = utf8_len(u + i, n - i);
      if (l == 0) {
        puts_(w, "\xef\xbf\xbd");
        i++;
      } else {
        put(w, s + i, l);
        i += l;
      }
    }
  }
}

static void family(writer *w, const char *name, const char *type,
                   const char *help) {
  puts_(w, "# HELP ");
  puts_(w, name);
  put(w, " ", 1);
  puts_(w, help);
  puts_(w, "\n# TYPE ");
  puts_(w, name);
  put(w, " ", 1);
  puts_(w, type);
  put(w, "\n", 1);
}

/* Labels as alternating names and values, up to four pairs. */
typedef struct labels {
  const char *k[4];
  const char *v[4];
  int n;
} labels;

static void sample_start(writer *w, const char *name, const labels *l) {
  puts_(w, name);
  if (l && l->n) {
    put(w, "{", 1);
    for (int i = 0; i < l->n; i++) {
      if (i) put(w, ",", 1);
      puts_(w, l->k[i]);
      puts_(w, "=\"");
      put_label_value(w, l->v[i]);
      put(w, "\"", 1);
    }
    put(w, "}", 1);
  }
  put(w, " ", 1);
}

static void sample_u64(writer *w, const char *name, const labels *l,
                       uint64_t v) {
  sample_start(w, name, l);
  put_u64(w, v);
  put(w, "\n", 1);
}

static void sample_double(writer *w, const char *name, const labels *l,
                          double v) {
  sample_start(w, name, l);
  put_double(w, v);
  put(w, "\n", 1);
}

static const char *pool_label(int p) {
  static const char *const names[M_POOLS] = {"none", "spot", "on_demand",
                                             "queue"};
  return names[p];
}

/* Label value of a class index; index 0 collects unset or invalid classes
 * and is only shown when it has counted something. */
static const char *class_label(int c) {
  static const char *const names[M_CLASSES] = {"unset", "gold", "silver",
                                               "bronze"};
  return names[c];
}

static const int POOL_ORDER[M_POOLS] = {SPI_POOL_SPOT, SPI_POOL_ON_DEMAND,
                                        SPI_POOL_QUEUE, 0};

static int class_has_decisions(const spi_metrics *x, int c) {
  for (int p = 0; p < M_POOLS; p++)
    for (int r = 0; r < SPI_REASON_COUNT; r++)
      if (spi__mdecisions(x, p, c, r)) return 1;
  return 0;
}

static int class_has_ttft(const spi_metrics *x, int c) {
  for (int b = 0; b < SPI_TTFT_BUCKETS; b++)
    if (spi__mttft_bucket(x, c, b)) return 1;
  return 0;
}

static void render_inputs(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_metrics_lines_skipped_total";
  family(w, name, "counter",
         "Lines of replicas' /metrics pages in syntax this version does not "
         "read, or after # EOF, skipped.");
  sample_u64(w, name, NULL, spi__mget(&x->lines_skipped));
}

/* Replay queues' fallback journals ("replay.fallback": "journal"). */
static void render_fallback(writer *w, const spi_metrics *x) {
  long long held = atomic_load_explicit((atomic_llong *)&x->fallback_held,
                                        memory_order_relaxed);
  const char *name = "spotinfer_replay_fallback_envelopes";
  family(w, name, "gauge",
         "Envelopes held in the fallback journals of replay queues, not yet "
         "moved to their queue store.");
  sample_u64(w, name, NULL, held > 0 ? (uint64_t)held : 0);
  name = "spotinfer_replay_fallback_enqueued_total";
  family(w, name, "counter",
         "Enqueues a fallback journal took because the queue store did not "
         "answer.");
  sample_u64(w, name, NULL, spi__mget(&x->fallback_enqueued));
  name = "spotinfer_replay_fallback_moved_total";
  family(w, name, "counter",
         "Envelopes moved from fallback journals into their queue store.");
  sample_u64(w, name, NULL, spi__mget(&x->fallback_moved));
}

/* Routes on several threads and the pool index they share. */
static void render_index(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_route_index_waits_total";
  family(w, name, "counter",
         "Routes that found the replicas' pool index in use by another route "
         "and waited for it, by outcome: took it, or gave up and read every "
         "replica.");
  labels took = {{"outcome"}, {"took"}, 1};
  sample_u64(w, name, &took, spi__mget(&x->index_waits_took));
  labels gave_up = {{"outcome"}, {"gave_up"}, 1};
  sample_u64(w, name, &gave_up, spi__mget(&x->index_waits_gave_up));
  name = "spotinfer_route_slot_passes_total";
  family(w, name, "counter",
         "Routes that read every replica's state instead of the pool index: "
         "it stayed in use by other routes, or described a newer replica set "
         "(a policy that reads every candidate and a route for a model no "
         "pool index serves always do; neither is counted).");
  sample_u64(w, name, NULL, spi__mget(&x->slot_passes));
}

static void render_nodes(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_node_transitions_total";
  family(w, name, "counter",
         "Machine state transitions (interruption state machine).");
  for (int f = 1; f <= 6; f++)
    for (int t = 1; t <= 6; t++) {
      uint64_t v = spi__mget(&x->node_transitions[f][t]);
      if (!v) continue;
      labels l = {{"from", "to"}, {spi_node_state_name(f), spi_node_state_name(t)}, 2};
      sample_u64(w, name, &l, v);
    }
}

static void render_decisions(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_decisions_total";
  family(w, name, "counter",
         "Routing decisions by chosen pool, request class and reason.");
  for (int c = 1; c <= M_CLASSES; c++) {
    int ci = c % M_CLASSES; /* gold, silver, bronze, then unset */
    if (ci == 0 && !class_has_decisions(x, 0)) continue;
    for (int pi = 0; pi < M_POOLS; pi++) {
      int p = POOL_ORDER[pi];
      for (int r = 0; r < SPI_REASON_COUNT; r++) {
        labels l = {{"pool", "class", "reason"},
                    {pool_label(p), class_label(ci), spi_reason_name(r)},
                    3};
        sample_u64(w, name, &l, spi__mdecisions(x, p, ci, r));
      }
    }
  }
  name = "spotinfer_shed_total";
  family(w, name, "counter",
         "Requests shed under KV-cache pressure, by class.");
  for (int c = 1; c <= M_CLASSES; c++) {
    int ci = c % M_CLASSES;
    if (ci == 0 && !spi__mget(&x->shed[0])) continue;
    labels l = {{"class"}, {class_label(ci)}, 1};
    sample_u64(w, name, &l, spi__mget(&x->shed[ci]));
  }
  name = "spotinfer_breaker_opens_total";
  family(w, name, "counter", "Replica error breakers that opened.");
  sample_u64(w, name, NULL, spi__mget(&x->breaker_opens));
}

static void render_prefix(writer *w, const spi_metrics *x) {
  uint64_t matched, total;
  spi__metrics_blocks(x, &matched, &total);
  const char *name = "spotinfer_prefix_blocks_matched_total";
  family(w, name, "counter",
         "Prefix blocks of routed requests the chosen replica likely held.");
  sample_u64(w, name, NULL, matched);
  name = "spotinfer_prefix_blocks_total";
  family(w, name, "counter", "Prefix blocks of routed requests.");
  sample_u64(w, name, NULL, total);

  static const char *const fam_names[2] = {
      "spotinfer_prefix_family_blocks_matched_total",
      "spotinfer_prefix_family_blocks_total"};
  static const char *const fam_help[2] = {
      "Prefix blocks the chosen replica likely held, by prefix family.",
      "Prefix blocks of routed requests, by prefix family."};
  for (int k = 0; k < 2; k++) {
    family(w, fam_names[k], "counter", fam_help[k]);
    for (size_t i = 0; i <= x->fam_mask; i++) {
      const fam_entry *f = &x->fam[i];
      uint64_t id = atomic_load_explicit((_Atomic uint64_t *)&f->id,
                                         memory_order_acquire);
      if (id == 0) continue;
      char hex[17];
      snprintf(hex, sizeof hex, "%016" PRIx64, id);
      labels l = {{"family"}, {hex}, 1};
      sample_u64(w, fam_names[k], &l, spi__metrics_family(x, i, k));
    }
    labels l = {{"family"}, {"other"}, 1};
    sample_u64(w, fam_names[k], &l, spi__metrics_other(x, k));
  }
}

static void render_ttft(writer *w, const spi_metrics *x) {
  family(w, "spotinfer_ttft_seconds", "histogram",
         "Time to first token in seconds, by class.");
  for (int c = 1; c <= M_CLASSES; c++) {
    int ci = c % M_CLASSES;
    if (ci == 0 && !class_has_ttft(x, 0)) continue;
    uint64_t cum = 0;
    for (int b = 0; b < SPI_TTFT_BUCKETS; b++) {
      cum += spi__mttft_bucket(x, ci, b);
      labels l = {{"class", "le"}, {class_label(ci), TTFT_LE_SECONDS[b]}, 2};
      sample_u64(w, "spotinfer_ttft_seconds_bucket", &l, cum);
    }
    labels l = {{"class"}, {class_label(ci)}, 1};
    sample_double(w, "spotinfer_ttft_seconds_sum", &l,
                  spi__mttft_sum(x, ci) / 1000.0);
    sample_u64(w, "spotinfer_ttft_seconds_count", &l, cum);
  }
}

static void render_signals(writer *w, const spi_signals *s) {
  const char *name = "spotinfer_queue_depth";
  family(w, name, "gauge",
         "Open requests without a first token yet, by class.");
  for (int c = SPI_CLASS_GOLD; c <= SPI_CLASS_BRONZE; c++) {
    labels l = {{"class"}, {class_label(c)}, 1};
    sample_double(w, name, &l, s->queue_depth[c]);
  }
  name = "spotinfer_ttft_p95_seconds";
  family(w, name, "gauge",
         "95th percentile time to first token in seconds from the histogram, "
         "by class.");
  for (int c = SPI_CLASS_GOLD; c <= SPI_CLASS_BRONZE; c++) {
    labels l = {{"class"}, {class_label(c)}, 1};
    sample_double(w, name, &l, s->p95_ttft_ms[c] / 1000.0);
  }
  name = "spotinfer_cache_miss_ratio";
  family(w, name, "gauge",
         "1 - matched / total prefix blocks of routed requests.");
  sample_double(w, name, NULL, s->cache_miss_rate);
  name = "spotinfer_warm_on_demand_replicas";
  family(w, name, "gauge",
         "Active on-demand replicas with a fresh load signal and a closed "
         "breaker.");
  sample_u64(w, name, NULL, s->warm_on_demand);
  name = "spotinfer_draft_acceptance_ratio";
  family(w, name, "gauge",
         "Draft-model answers accepted / (accepted + rejected).");
  sample_double(w, name, NULL, s->draft_acceptance);
}

static void render_outcomes(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_draft_outcomes_total";
  family(w, name, "counter", "Finished draft-model tickets by outcome.");
  labels a = {{"outcome"}, {"accepted"}, 1};
  labels r = {{"outcome"}, {"rejected"}, 1};
  sample_u64(w, name, &a, spi__mget(&x->draft_accepted));
  sample_u64(w, name, &r, spi__mget(&x->draft_rejected));
  name = "spotinfer_shadow_decisions_total";
  family(w, name, "counter",
         "Shadow-policy decisions by whether they agreed with the policy.");
  labels ag = {{"outcome"}, {"agreed"}, 1};
  labels dis = {{"outcome"}, {"disagreed"}, 1};
  sample_u64(w, name, &ag, spi__mget(&x->shadow_agreed));
  sample_u64(w, name, &dis, spi__mget(&x->shadow_disagreed));
  name = "spotinfer_shadow_matched_blocks_total";
  family(w, name, "counter",
         "Prefix blocks the shadow policy's replica likely held.");
  sample_u64(w, name, NULL, spi__mget(&x->shadow_matched));
}

static void render_replicas(writer *w, const spi_replica_gauge *g, size_t n) {
  static const struct {
    const char *name, *type, *help;
  } fams[4] = {
      {"spotinfer_replica_inflight", "gauge", "Open tickets on the replica."},
      {"spotinfer_replica_kv_usage", "gauge",
       "KV-cache usage (0..1) last reported by the replica."},
      {"spotinfer_replica_state", "gauge",
       "Replica state: 1 active, 2 draining, 3 noticed."},
      {"spotinfer_replica_breaker", "gauge",
       "Replica error breaker: 0 closed, 1 open, 2 half-open."},
  };
  for (int k = 0; k < 4; k++) {
    family(w, fams[k].name, fams[k].type, fams[k].help);
    for (size_t i = 0; i < n; i++) {
      labels l = {{"replica", "pool"},
                  {g[i].id ? g[i].id : "", pool_label(spi__mpool(g[i].pool))},
                  2};
      switch (k) {
      case 0:
        sample_u64(w, fams[k].name, &l, g[i].inflight);
        break;
      case 1:
        sample_double(w, fams[k].name, &l, g[i].kv_usage);
        break;
      case 2:
        sample_u64(w, fams[k].name, &l, (uint64_t)g[i].state);
        break;
      default:
        sample_u64(w, fams[k].name, &l, (uint64_t)g[i].breaker);
        break;
      }
    }
  }
}

/*
 * The whole exposition. Without metrics (x NULL) every counter renders as
 * zero from a temporary object; without signals, they are computed from x
 * with no warm on-demand replicas. On error out is left as it was.
 */
int spi__metrics_render(spi_metrics *x, const spi_replica_gauge *g, size_t ng,
                        const spi_signals *sig, spi_buf *out,
                        const spi_mem *m) {
  if (!out || !m || (ng && !g)) return SPI_EINVAL;
  spi_metrics *tmp = NULL;
  if (!x) {
    int rc = spi__metrics_new(m, 0, &tmp);
    if (rc != SPI_OK) return rc;
    x = tmp;
  }
  spi_signals own;
  if (!sig) {
    memset(&own, 0, sizeof own);
    own.struct_size = sizeof own;
    spi__metrics_signals(x, &own);
    sig = &own;
  }
  size_t mark = out->len;
  writer w = {out, m, SPI_OK};
  render_decisions(&w, x);
  render_prefix(&w, x);
  render_ttft(&w, x);
  render_signals(&w, sig);
  render_outcomes(&w, x);
  render_nodes(&w, x);
  render_inputs(&w, x);
  render_fallback(&w, x);
  render_index(&w, x);
  render_replicas(&w, g, ng);
  spi__metrics_free(m, tmp);
  if (w.rc != SPI_OK) out->len = mark;
  return w.rc;
}
