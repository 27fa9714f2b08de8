/*
 * metrics.c - the engine's counters, the TTFT histograms, the autoscaling
 * signals and their Prometheus text.
 *
 * Every counter is a relaxed atomic: routers on any number of threads add to
 * them without a lock, and a reader sees each counter's value at some moment
 * (not one consistent snapshot of all of them, which Prometheus does not
 * need). The object is allocated once; counting never allocates. Only
 * rendering does: the text buffer, and in spi_engine_metrics the list of
 * replica gauges.
 *
 * Prefix families. The hit rate of the KV cache is counted per prefix family
 * (a 64-bit id the router passes with each decision, such as half of the
 * request's cache key) for the first max_families distinct families; later
 * ones share the series
 * family="other". Families sit in an open-addressing table of at least twice
 * max_families slots, claimed by CAS of an empty slot's id from 0, so a
 * lookup ends at the family's slot or at an empty one after a short probe.
 * A budget counter stops claims at max_families. Family 0 means "none" and
 * is counted as "other".
 *
 * TTFT. Each class has SPI_TTFT_BUCKETS counters, one per bucket (not
 * cumulative: one increment per sample), and a sum kept as the bits of a
 * double, both in milliseconds as the library measures. Rendering
 * accumulates the buckets and prints the total as the histogram's _count, so
 * _count always equals the +Inf bucket, and converts bounds, sum and the p95
 * signal to seconds (spotinfer_ttft_seconds, spotinfer_ttft_p95_seconds).
 */
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdalign.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "routing.h"

#define M_POOLS 4   /* index = enum spi_pool; 0 = none */
#define M_CLASSES 4 /* index = enum spi_class; 0 = unset or invalid */
#define M_MAX_FAMILIES ((size_t)1 << 20)

/* Upper bounds of the TTFT buckets in milliseconds (the unit the library
 * measures in); the last is +Inf. The text shows them in seconds, the base
 * unit Prometheus names and tools expect, as TTFT_LE_SECONDS. */
static const double TTFT_LE[SPI_TTFT_BUCKETS] = {
    25,   50,   100,  200,  300,   500,   800,
    1000, 1500, 2500, 5000, 10000, 30000, INFINITY};
static const char *const TTFT_LE_SECONDS[SPI_TTFT_BUCKETS] = {
    "0.025", "0.05", "0.1", "0.2", "0.3", "0.5", "0.8",
    "1",     "1.5",  "2.5", "5",   "10",  "30",  "+Inf"};

typedef struct fam_entry {
  _Atomic uint64_t id; /* 0 = free */
  atomic_ullong matched, total;
} fam_entry;

/* A counter added here is also checked by spi__metrics_untouched. */
struct spi_metrics {
  size_t max_families;
  size_t fam_mask; /* table slots - 1 */
  fam_entry *fam;
  atomic_size_t fam_claimed;
  atomic_ullong decisions[M_POOLS][M_CLASSES][SPI_REASON_COUNT];
  atomic_ullong shed[M_CLASSES];
  atomic_ullong breaker_opens;
  atomic_ullong blocks_matched, blocks_total;
  atomic_ullong other_matched, other_total;
  atomic_ullong ttft_bucket[M_CLASSES][SPI_TTFT_BUCKETS];
  atomic_ullong ttft_sum[M_CLASSES]; /* double bits, milliseconds */
  atomic_llong queue[M_CLASSES];
  atomic_ullong draft_accepted, draft_rejected;
  atomic_ullong shadow_agreed, shadow_disagreed, shadow_matched;
  atomic_ullong node_transitions[7][7]; /* [from][to], enum spi_node_state */
  atomic_ullong lines_skipped; /* /metrics lines in newer syntax, not read */
};

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

static void add(atomic_ullong *a, uint64_t v) {
  atomic_fetch_add_explicit(a, v, memory_order_relaxed);
}

static uint64_t get(const atomic_ullong *a) {
  return atomic_load_explicit((atomic_ullong *)a, memory_order_relaxed);
}

static int pool_index(int32_t pool) {
  return pool >= SPI_POOL_SPOT && pool <= SPI_POOL_QUEUE ? pool : 0;
}

static int class_index(int32_t klass) {
  return klass >= SPI_CLASS_GOLD && klass <= SPI_CLASS_BRONZE ? klass : 0;
}

size_t spi__metrics_max_families(const spi_metrics *x) {
  return x ? x->max_families : 0;
}

int spi__metrics_new(const spi_mem *m, size_t max_families, spi_metrics **out) {
  if (!m || !out) return SPI_EINVAL;
  *out = NULL;
  if (max_families > M_MAX_FAMILIES) return SPI_ERANGE;
  size_t slots = 8;
  while (slots < 2 * max_families) slots *= 2;
  size_t off_fam = align_up(sizeof(spi_metrics), alignof(max_align_t));
  size_t total = off_fam + slots * sizeof(fam_entry);
  unsigned char *p = spi__alloc(m, total);
  if (!p) return SPI_ENOMEM;
  /* All-zero bytes are a valid zero for every lock-free atomic used here. */
  memset(p, 0, total);
  spi_metrics *x = (spi_metrics *)(void *)p;
  x->max_families = max_families;
  x->fam_mask = slots - 1;
  x->fam = (fam_entry *)(void *)(p + off_fam);
  *out = x;
  return SPI_OK;
}

void spi__metrics_free(const spi_mem *m, spi_metrics *x) {
  if (x) spi__free(m, x);
}

static int any_set(const atomic_ullong *a, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (get(&a[i])) return 1;
  return 0;
}

/* Whether anything was ever counted (configure may still resize it). */
int spi__metrics_untouched(const spi_metrics *x) {
  if (!x) return 1;
  const atomic_ullong *one[] = {&x->breaker_opens,  &x->blocks_matched,
                                &x->blocks_total,   &x->other_matched,
                                &x->other_total,    &x->draft_accepted,
                                &x->draft_rejected, &x->shadow_agreed,
                                &x->shadow_disagreed, &x->shadow_matched,
                                &x->lines_skipped};
  for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
    if (get(one[i])) return 0;
  if (any_set(&x->decisions[0][0][0], sizeof x->decisions / sizeof(atomic_ullong)) ||
      any_set(x->shed, M_CLASSES) ||
      any_set(&x->ttft_bucket[0][0], sizeof x->ttft_bucket / sizeof(atomic_ullong)) ||
      any_set(x->ttft_sum, M_CLASSES) ||
      any_set(&x->node_transitions[0][0],
              sizeof x->node_transitions / sizeof(atomic_ullong)))
    return 0;
  for (int k = 0; k < M_CLASSES; k++)
    if (atomic_load_explicit((atomic_llong *)&x->queue[k], memory_order_relaxed))
      return 0;
  return atomic_load_explicit((atomic_size_t *)&x->fam_claimed,
                              memory_order_relaxed) == 0;
}

/* --------------------------------------------------------------- counters */

/* The table entry of a family, claiming one if the budget allows; NULL for
 * "other". */
static fam_entry *family_entry(spi_metrics *x, uint64_t family) {
  if (family == 0) return NULL;
  uint64_t h = (family ^ (family >> 31)) * UINT64_C(0x9e3779b97f4a7c15);
  size_t i = (size_t)(h >> 32) & x->fam_mask;
  for (;; i = (i + 1) & x->fam_mask) {
    fam_entry *f = &x->fam[i];
    uint64_t id = atomic_load_explicit(&f->id, memory_order_acquire);
    if (id == family) return f;
    if (id != 0) continue;
    /* Not in the table: probes end at the first empty slot because slots
     * are never freed. Claim this one if the budget has room. */
    if (atomic_load_explicit(&x->fam_claimed, memory_order_relaxed) >=
        x->max_families)
      return NULL;
    if (atomic_fetch_add_explicit(&x->fam_claimed, 1, memory_order_relaxed) >=
        x->max_families) {
      atomic_fetch_sub_explicit(&x->fam_claimed, 1, memory_order_relaxed);
      return NULL;
    }
    uint64_t expect = 0;
    if (atomic_compare_exchange_strong_explicit(&f->id, &expect, family,
                                                memory_order_acq_rel,
                                                memory_order_acquire))
      return f;
    /* Another thread took the slot first: give the budget back and go on
     * from here (it may have claimed it for this very family). */
    atomic_fetch_sub_explicit(&x->fam_claimed, 1, memory_order_relaxed);
    if (expect == family) return f;
  }
}

/* Prefix blocks count only for decisions that placed the request on a
 * replica: a queued or shed request was not routed, and counting its blocks
 * as misses would skew the cache-miss rate. */
void spi__metrics_decision(spi_metrics *x, int32_t pool, int32_t klass,
                           int32_t reason, uint64_t family,
                           uint32_t matched_blocks, uint32_t total_blocks) {
  if (!x) return;
  int p = pool_index(pool), c = class_index(klass);
  int r = reason >= 0 && reason < SPI_REASON_COUNT ? reason : SPI_REASON_NONE;
  add(&x->decisions[p][c][r], 1);
  if (total_blocks == 0 || (p != SPI_POOL_SPOT && p != SPI_POOL_ON_DEMAND))
    return;
  if (matched_blocks > total_blocks) matched_blocks = total_blocks;
  add(&x->blocks_matched, matched_blocks);
  add(&x->blocks_total, total_blocks);
  fam_entry *f = family_entry(x, family);
  add(f ? &f->matched : &x->other_matched, matched_blocks);
  add(f ? &f->total : &x->other_total, total_blocks);
}

void spi__metrics_shed(spi_metrics *x, int32_t klass) {
  if (x) add(&x->shed[class_index(klass)], 1);
}

void spi__metrics_breaker_open(spi_metrics *x) {
  if (x) add(&x->breaker_opens, 1);
}

void spi__metrics_ttft(spi_metrics *x, int32_t klass, double ttft_ms) {
  if (!x || isnan(ttft_ms)) return;
  if (ttft_ms < 0) ttft_ms = 0;
  int c = class_index(klass);
  int b = 0;
  while (b < SPI_TTFT_BUCKETS - 1 && !(ttft_ms <= TTFT_LE[b])) b++;
  add(&x->ttft_bucket[c][b], 1);
  /* An infinite sample lands in +Inf but is kept out of the sum. */
  if (ttft_ms > DBL_MAX) return;
  unsigned long long old =
      atomic_load_explicit(&x->ttft_sum[c], memory_order_relaxed);
  while (!atomic_compare_exchange_weak_explicit(
      &x->ttft_sum[c], &old, spi__dbits(spi__bitsd(old) + ttft_ms),
      memory_order_relaxed, memory_order_relaxed)) {
  }
}

void spi__metrics_queue_delta(spi_metrics *x, int32_t klass, int delta) {
  if (x)
    atomic_fetch_add_explicit(&x->queue[class_index(klass)], (long long)delta,
                              memory_order_relaxed);
}

void spi__metrics_draft(spi_metrics *x, int accepted) {
  if (x) add(accepted ? &x->draft_accepted : &x->draft_rejected, 1);
}

void spi__metrics_shadow(spi_metrics *x, int agreed, uint32_t matched_blocks) {
  if (!x) return;
  add(agreed ? &x->shadow_agreed : &x->shadow_disagreed, 1);
  add(&x->shadow_matched, matched_blocks);
}

/* ----------------------------------------------------------------- derived */

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
    n[b] = get(&x->ttft_bucket[c][b]);
    total += n[b];
  }
  if (total == 0) return 0.0;
  double rank = q * (double)total;
  uint64_t below = 0;
  for (int b = 0; b < SPI_TTFT_BUCKETS; b++) {
    if (n[b] > 0 && (double)(below + n[b]) >= rank) {
      if (b == SPI_TTFT_BUCKETS - 1) return TTFT_LE[b - 1];
      double lo = b == 0 ? 0.0 : TTFT_LE[b - 1];
      double frac = (rank - (double)below) / (double)n[b];
      return lo + (TTFT_LE[b] - lo) * frac;
    }
    below += n[b];
  }
  return TTFT_LE[SPI_TTFT_BUCKETS - 2];
}

double spi__metrics_p95_ttft(spi_metrics *x, int32_t klass) {
  return x ? quantile(x, class_index(klass), 0.95) : 0.0;
}

double spi__metrics_queue_depth(spi_metrics *x, int32_t klass) {
  if (!x) return 0.0;
  return (double)atomic_load_explicit(&x->queue[class_index(klass)],
                                      memory_order_relaxed);
}

double spi__metrics_cache_miss_rate(spi_metrics *x) {
  if (!x) return 0.0;
  /* Read total first: matched never exceeds a total read after it. */
  uint64_t total = get(&x->blocks_total);
  uint64_t matched = get(&x->blocks_matched);
  if (total == 0) return 0.0;
  if (matched > total) matched = total;
  return 1.0 - (double)matched / (double)total;
}

double spi__metrics_draft_acceptance(spi_metrics *x) {
  if (!x) return 0.0;
  uint64_t a = get(&x->draft_accepted), r = get(&x->draft_rejected);
  return a + r ? (double)a / (double)(a + r) : 0.0;
}

/* --------------------------------------------------------------- rendering */

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
      if (get(&x->decisions[p][c][r])) return 1;
  return 0;
}

static int class_has_ttft(const spi_metrics *x, int c) {
  for (int b = 0; b < SPI_TTFT_BUCKETS; b++)
    if (get(&x->ttft_bucket[c][b])) return 1;
  return 0;
}

void spi__metrics_node_transition(spi_metrics *x, int32_t from, int32_t to) {
  if (!x || from < 1 || from > 6 || to < 1 || to > 6) return;
  add(&x->node_transitions[from][to], 1);
}

void spi__metrics_lines_skipped(spi_metrics *x, uint64_t n) {
  if (x && n) add(&x->lines_skipped, n);
}

static void render_inputs(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_metrics_lines_skipped_total";
  family(w, name, "counter",
         "Lines of replicas' /metrics pages in syntax this version does not "
         "read, skipped.");
  sample_u64(w, name, NULL, get(&x->lines_skipped));
}

static void render_nodes(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_node_transitions_total";
  family(w, name, "counter",
         "Machine state transitions (interruption state machine).");
  for (int f = 1; f <= 6; f++)
    for (int t = 1; t <= 6; t++) {
      uint64_t v = get(&x->node_transitions[f][t]);
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
        sample_u64(w, name, &l, get(&x->decisions[p][ci][r]));
      }
    }
  }
  name = "spotinfer_shed_total";
  family(w, name, "counter",
         "Requests shed under KV-cache pressure, by class.");
  for (int c = 1; c <= M_CLASSES; c++) {
    int ci = c % M_CLASSES;
    if (ci == 0 && !get(&x->shed[0])) continue;
    labels l = {{"class"}, {class_label(ci)}, 1};
    sample_u64(w, name, &l, get(&x->shed[ci]));
  }
  name = "spotinfer_breaker_opens_total";
  family(w, name, "counter", "Replica error breakers that opened.");
  sample_u64(w, name, NULL, get(&x->breaker_opens));
}

static void render_prefix(writer *w, const spi_metrics *x) {
  const char *name = "spotinfer_prefix_blocks_matched_total";
  family(w, name, "counter",
         "Prefix blocks of routed requests the chosen replica likely held.");
  sample_u64(w, name, NULL, get(&x->blocks_matched));
  name = "spotinfer_prefix_blocks_total";
  family(w, name, "counter", "Prefix blocks of routed requests.");
  sample_u64(w, name, NULL, get(&x->blocks_total));

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
      sample_u64(w, fam_names[k], &l, get(k ? &f->total : &f->matched));
    }
    labels l = {{"family"}, {"other"}, 1};
    sample_u64(w, fam_names[k], &l,
               get(k ? &x->other_total : &x->other_matched));
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
      cum += get(&x->ttft_bucket[ci][b]);
      labels l = {{"class", "le"}, {class_label(ci), TTFT_LE_SECONDS[b]}, 2};
      sample_u64(w, "spotinfer_ttft_seconds_bucket", &l, cum);
    }
    labels l = {{"class"}, {class_label(ci)}, 1};
    sample_double(w, "spotinfer_ttft_seconds_sum", &l,
                  spi__bitsd(get(&x->ttft_sum[ci])) / 1000.0);
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
  sample_u64(w, name, &a, get(&x->draft_accepted));
  sample_u64(w, name, &r, get(&x->draft_rejected));
  name = "spotinfer_shadow_decisions_total";
  family(w, name, "counter",
         "Shadow-policy decisions by whether they agreed with the policy.");
  labels ag = {{"outcome"}, {"agreed"}, 1};
  labels dis = {{"outcome"}, {"disagreed"}, 1};
  sample_u64(w, name, &ag, get(&x->shadow_agreed));
  sample_u64(w, name, &dis, get(&x->shadow_disagreed));
  name = "spotinfer_shadow_matched_blocks_total";
  family(w, name, "counter",
         "Prefix blocks the shadow policy's replica likely held.");
  sample_u64(w, name, NULL, get(&x->shadow_matched));
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
                  {g[i].id ? g[i].id : "", pool_label(pool_index(g[i].pool))},
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

static void signals_of(spi_metrics *x, spi_signals *s) {
  for (int c = 0; c < M_CLASSES; c++) {
    s->queue_depth[c] = spi__metrics_queue_depth(x, c);
    s->p95_ttft_ms[c] = spi__metrics_p95_ttft(x, c);
  }
  s->cache_miss_rate = spi__metrics_cache_miss_rate(x);
  s->draft_acceptance = spi__metrics_draft_acceptance(x);
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
    signals_of(x, &own);
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
  render_replicas(&w, g, ng);
  spi__metrics_free(m, tmp);
  if (w.rc != SPI_OK) out->len = mark;
  return w.rc;
}

/* ------------------------------------------------------------- public API */

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
  signals_of(atomic_load(&e->metrics), out);
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
