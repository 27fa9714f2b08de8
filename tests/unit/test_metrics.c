/*
 * test_metrics.c - routing counters, the TTFT histograms and their p95, the
 * prefix-family table, the autoscaling signals and the Prometheus text:
 * every line of it is checked against the exposition format.
 */
#include <locale.h>
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "routing.h"
#include "fake_fleet.h"
#include "metrics.h"
#include "std_mem.h"

/* ---------------------------------------------------------------- helpers */

static spi_metrics *new_metrics(size_t families) {
  spi_metrics *x = NULL;
  assert_int_equal(spi__metrics_new(&MEM, families, &x), SPI_OK);
  assert_non_null(x);
  return x;
}

/* The exposition as a NUL-terminated string (free it). */
static char *render(spi_metrics *x, const spi_replica_gauge *g, size_t ng,
                    const spi_signals *sig) {
  spi_buf b = {0};
  assert_int_equal(spi__metrics_render(x, g, ng, sig, &b, &MEM), SPI_OK);
  assert_int_equal(spi__buf_append_byte(&b, &MEM, 0), SPI_OK);
  return (char *)b.data;
}

/* The value of the sample whose line starts with series + " "; fails if
 * absent. */
static double value_of(const char *text, const char *series) {
  size_t n = strlen(series);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
    if (strncmp(p, series, n) == 0 && p[n] == ' ')
      return strtod(p + n + 1, NULL);
  fail_msg("no sample %s in:\n%s", series, text);
  return NAN;
}

static int has_line(const char *text, const char *line) {
  size_t n = strlen(line);
  for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p)
    if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0')) return 1;
  return 0;
}

#define NEAR(got, want)                                                        \
  assert_true(fabs((double)(got) - (double)(want)) <=                          \
              1e-9 * (1 + fabs((double)(want))))

/* ---------------------------------------------- exposition format checker */

typedef struct famrec {
  char name[128];
  char type[16];
  int help;
} famrec;

static int name_char(char c, int first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         c == ':' || (!first && c >= '0' && c <= '9');
}

static famrec *fam_find(famrec *f, int n, const char *name, size_t len) {
  for (int i = 0; i < n; i++)
    if (strlen(f[i].name) == len && memcmp(f[i].name, name, len) == 0)
      return &f[i];
  return NULL;
}

/* A sample value: a float strtod reads whole, or +Inf, -Inf, NaN. */
static int valid_value(const char *s, size_t len) {
  char tmp[64];
  if (len == 0 || len >= sizeof tmp) return 0;
  memcpy(tmp, s, len);
  tmp[len] = '\0';
  if (!strcmp(tmp, "+Inf") || !strcmp(tmp, "-Inf") || !strcmp(tmp, "NaN"))
    return 1;
  for (size_t i = 0; i < len; i++)
    if (!strchr("0123456789+-.eE", tmp[i])) return 0;
  char *end = NULL;
  strtod(tmp, &end);
  return end == tmp + len;
}

/*
 * Check text against the Prometheus text exposition format (0.0.4): lines
 * end in \n; "# HELP name text" and "# TYPE name type" precede a family's
 * samples, once each; a sample is name{label="value",...} value, with
 * label values escaping only \\, \" and \n; a histogram's samples are
 * name_bucket (with le), name_sum and name_count. Returns the number of
 * samples; fails the test on the first bad line.
 */
static int check_exposition(const char *text) {
  famrec fams[128];
  int nf = 0, samples = 0, lineno = 0;
  size_t total = strlen(text);
  if (total == 0 || text[total - 1] != '\n') fail_msg("text must end in \\n");
  for (const char *line = text; *line;) {
    const char *eol = strchr(line, '\n');
    size_t len = (size_t)(eol - line);
    lineno++;
    if (len == 0) fail_msg("line %d is empty", lineno);
    if (line[0] == '#') {
      int is_help = len > 7 && strncmp(line, "# HELP ", 7) == 0;
      int is_type = len > 7 && strncmp(line, "# TYPE ", 7) == 0;
      if (!is_help && !is_type)
        fail_msg("line %d: comment is neither HELP nor TYPE", lineno);
      const char *nm = line + 7, *p = nm;
      while (p < eol && name_char(*p, p == nm)) p++;
      if (p == nm || p >= eol || *p != ' ')
        fail_msg("line %d: bad metric name", lineno);
      famrec *f = fam_find(fams, nf, nm, (size_t)(p - nm));
      if (!f) {
        assert_true(nf < 128);
        f = &fams[nf++];
        memset(f, 0, sizeof *f);
        memcpy(f->name, nm, (size_t)(p - nm));
      }
      if (is_help) {
        if (f->help) fail_msg("line %d: second HELP for %s", lineno, f->name);
        f->help = 1;
      } else {
        if (f->type[0])
          fail_msg("line %d: second TYPE for %s", lineno, f->name);
        size_t tl = (size_t)(eol - p - 1);
        if (tl == 0 || tl >= sizeof f->type)
          fail_msg("line %d: bad type", lineno);
        memcpy(f->type, p + 1, tl);
        if (strcmp(f->type, "counter") && strcmp(f->type, "gauge") &&
            strcmp(f->type, "histogram") && strcmp(f->type, "summary") &&
            strcmp(f->type, "untyped"))
          fail_msg("line %d: unknown type %s", lineno, f->type);
      }
    } else {
      const char *p = line;
      while (p < eol && name_char(*p, p == line)) p++;
      size_t nlen = (size_t)(p - line);
      if (nlen == 0) fail_msg("line %d: no metric name", lineno);
      if (strncmp(line, "spotinfer_", 10) != 0)
        fail_msg("line %d: name without the spotinfer_ prefix", lineno);
      int has_le = 0;
      if (p < eol && *p == '{') {
        p++;
        while (p < eol && *p != '}') {
          const char *ln = p;
          while (p < eol && name_char(*p, p == ln)) p++;
          if (p == ln || p + 1 >= eol || p[0] != '=' || p[1] != '"')
            fail_msg("line %d: bad label", lineno);
          if (p - ln == 2 && strncmp(ln, "le", 2) == 0) has_le = 1;
          p += 2;
          while (p < eol && *p != '"') {
            if (*p == '\\') {
              if (p + 1 >= eol || !strchr("\\\"n", p[1]))
                fail_msg("line %d: bad escape in label value", lineno);
              p += 2;
            } else {
              p++;
            }
          }
          if (p >= eol) fail_msg("line %d: unterminated label value", lineno);
          p++;
          if (p < eol && *p == ',') p++;
        }
        if (p >= eol) fail_msg("line %d: unterminated labels", lineno);
        p++;
      }
      if (p >= eol || *p != ' ')
        fail_msg("line %d: no space before value", lineno);
      p++;
      if (!valid_value(p, (size_t)(eol - p)))
        fail_msg("line %d: bad value \"%.*s\"", lineno, (int)(eol - p), p);
      /* Its family: the name itself, or a histogram's base name. */
      famrec *f = fam_find(fams, nf, line, nlen);
      if (!f) {
        static const char *const sfx[] = {"_bucket", "_sum", "_count"};
        for (int k = 0; k < 3 && !f; k++) {
          size_t sl = strlen(sfx[k]);
          if (nlen > sl && memcmp(line + nlen - sl, sfx[k], sl) == 0) {
            f = fam_find(fams, nf, line, nlen - sl);
            if (f && strcmp(f->type, "histogram") != 0) f = NULL;
            if (f && k == 0 && !has_le)
              fail_msg("line %d: bucket without le", lineno);
          }
        }
      }
      if (!f || !f->type[0])
        fail_msg("line %d: sample %.*s has no # TYPE before it", lineno,
                 (int)nlen, line);
      if (!f->help)
        fail_msg("line %d: family %s has no # HELP", lineno, f->name);
      samples++;
    }
    line = eol + 1;
  }
  for (int i = 0; i < nf; i++)
    if (!fams[i].type[0] || !fams[i].help)
      fail_msg("family %s lacks HELP or TYPE", fams[i].name);
  return samples;
}

/* ------------------------------------------------------------------ tests */

static void test_reason_names(void **st) {
  (void)st;
  static const char *const want[SPI_REASON_COUNT] = {
      "none",       "affinity",     "affinity_left",  "imbalance",
      "rendezvous", "least_loaded", "wait_warm",      "queue_no_spot",
      "shed",       "no_capacity",  "half_open_probe"};
  for (int r = 0; r < SPI_REASON_COUNT; r++)
    assert_string_equal(spi_reason_name(r), want[r]);
  assert_string_equal(spi_reason_name(-1), "invalid");
  assert_string_equal(spi_reason_name(SPI_REASON_COUNT), "invalid");
  assert_string_equal(spi_reason_name(INT32_MIN), "invalid");
  assert_string_equal(spi_reason_name(INT32_MAX), "invalid");
}

static void test_counters(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(8);
  for (int i = 0; i < 3; i++)
    spi__metrics_decision(x, SPI_POOL_SPOT, SPI_CLASS_GOLD, SPI_REASON_AFFINITY,
                          0, 0, 0);
  spi__metrics_decision(x, SPI_POOL_QUEUE, SPI_CLASS_BRONZE,
                        SPI_REASON_QUEUE_NO_SPOT, 0, 0, 0);
  spi__metrics_decision(x, 0, SPI_CLASS_SILVER, SPI_REASON_SHED, 0, 0, 0);
  spi__metrics_decision(x, 77, SPI_CLASS_SILVER, SPI_REASON_NO_CAPACITY, 0, 0,
                        0);
  spi__metrics_decision(x, SPI_POOL_ON_DEMAND, SPI_CLASS_GOLD, 99, 0, 0, 0);
  spi__metrics_shed(x, SPI_CLASS_SILVER);
  spi__metrics_shed(x, SPI_CLASS_SILVER);
  spi__metrics_breaker_open(x);
  spi__metrics_draft(x, 1);
  spi__metrics_draft(x, 1);
  spi__metrics_draft(x, 1);
  spi__metrics_draft(x, 0);
  spi__metrics_shadow(x, 1, 5);
  spi__metrics_shadow(x, 0, 2);
  spi__metrics_shadow(x, 0, 0);
  spi__metrics_queue_delta(x, SPI_CLASS_GOLD, 3);
  spi__metrics_queue_delta(x, SPI_CLASS_GOLD, -1);
  spi__metrics_queue_delta(x, SPI_CLASS_BRONZE, 1);

  NEAR(spi__metrics_queue_depth(x, SPI_CLASS_GOLD), 2);
  NEAR(spi__metrics_queue_depth(x, SPI_CLASS_SILVER), 0);
  NEAR(spi__metrics_queue_depth(x, SPI_CLASS_BRONZE), 1);
  NEAR(spi__metrics_draft_acceptance(x), 0.75);

  char *t = render(x, NULL, 0, NULL);
  check_exposition(t);
  assert_true(has_line(t, "spotinfer_decisions_total{pool=\"spot\","
                          "class=\"gold\",reason=\"affinity\"} 3"));
  assert_true(has_line(t, "spotinfer_decisions_total{pool=\"queue\","
                          "class=\"bronze\",reason=\"queue_no_spot\"} 1"));
  assert_true(has_line(t, "spotinfer_decisions_total{pool=\"none\","
                          "class=\"silver\",reason=\"shed\"} 1"));
  /* An unknown pool counts as none, an unknown reason as none. */
  assert_true(has_line(t, "spotinfer_decisions_total{pool=\"none\","
                          "class=\"silver\",reason=\"no_capacity\"} 1"));
  assert_true(has_line(t, "spotinfer_decisions_total{pool=\"on_demand\","
                          "class=\"gold\",reason=\"none\"} 1"));
  assert_true(has_line(t, "spotinfer_decisions_total{pool=\"spot\","
                          "class=\"bronze\",reason=\"rendezvous\"} 0"));
  assert_null(strstr(t, "class=\"unset\""));
  assert_true(has_line(t, "spotinfer_shed_total{class=\"silver\"} 2"));
  assert_true(has_line(t, "spotinfer_shed_total{class=\"gold\"} 0"));
  assert_true(has_line(t, "spotinfer_breaker_opens_total 1"));
  assert_true(
      has_line(t, "spotinfer_draft_outcomes_total{outcome=\"accepted\"} 3"));
  assert_true(
      has_line(t, "spotinfer_draft_outcomes_total{outcome=\"rejected\"} 1"));
  assert_true(
      has_line(t, "spotinfer_shadow_decisions_total{outcome=\"agreed\"} 1"));
  assert_true(
      has_line(t, "spotinfer_shadow_decisions_total{outcome=\"disagreed\"} 2"));
  assert_true(has_line(t, "spotinfer_shadow_matched_blocks_total 7"));
  assert_true(has_line(t, "spotinfer_queue_depth{class=\"gold\"} 2"));
  assert_true(has_line(t, "spotinfer_queue_depth{class=\"bronze\"} 1"));
  assert_true(has_line(t, "spotinfer_draft_acceptance_ratio 0.75"));
  assert_true(has_line(t, "spotinfer_warm_on_demand_replicas 0"));
  /* 4 pools x 3 classes x 11 reasons. */
  int n = 0;
  for (const char *p = t; (p = strstr(p, "\nspotinfer_decisions_total{")); p++)
    n++;
  assert_int_equal(n, 4 * 3 * SPI_REASON_COUNT);
  free(t);

  /* An unset class shows up only once it has counted something. */
  spi__metrics_decision(x, SPI_POOL_SPOT, 0, SPI_REASON_AFFINITY, 0, 0, 0);
  spi__metrics_shed(x, 42);
  t = render(x, NULL, 0, NULL);
  check_exposition(t);
  assert_true(has_line(t, "spotinfer_decisions_total{pool=\"spot\","
                          "class=\"unset\",reason=\"affinity\"} 1"));
  assert_true(has_line(t, "spotinfer_shed_total{class=\"unset\"} 1"));
  free(t);
  spi__metrics_free(&MEM, x);
  spi__metrics_free(&MEM, NULL);
}

/* Calls on no metrics object do nothing and read as zero. */
static void test_null_metrics(void **st) {
  (void)st;
  spi__metrics_decision(NULL, 1, 1, 1, 1, 1, 1);
  spi__metrics_shed(NULL, 1);
  spi__metrics_breaker_open(NULL);
  spi__metrics_ttft(NULL, 1, 5);
  spi__metrics_queue_delta(NULL, 1, 1);
  spi__metrics_draft(NULL, 1);
  spi__metrics_shadow(NULL, 1, 1);
  assert_true(spi__metrics_p95_ttft(NULL, 1) == 0);
  assert_true(spi__metrics_queue_depth(NULL, 1) == 0);
  assert_true(spi__metrics_cache_miss_rate(NULL) == 0);
  assert_true(spi__metrics_draft_acceptance(NULL) == 0);
  char *t = render(NULL, NULL, 0, NULL);
  assert_true(check_exposition(t) > 100);
  assert_true(has_line(t, "spotinfer_breaker_opens_total 0"));
  assert_true(
      has_line(t, "spotinfer_prefix_family_blocks_total{family=\"other\"} 0"));
  assert_true(
      has_line(t, "spotinfer_ttft_seconds_count{class=\"gold\"} 0"));
  free(t);

  spi_metrics *x = (spi_metrics *)1;
  assert_int_equal(spi__metrics_new(&MEM, ((size_t)1 << 20) + 1, &x),
                   SPI_ERANGE);
  assert_null(x);
  assert_int_equal(spi__metrics_new(NULL, 1, &x), SPI_EINVAL);
  assert_int_equal(spi__metrics_new(&MEM, 1, NULL), SPI_EINVAL);
}

static void test_histogram_buckets(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(1);
  /* Bounds are inclusive (le); below 0 counts as 0; NaN is dropped; +Inf
   * takes everything above 30 s, but an infinite sample stays out of the
   * sum. */
  const double samples[] = {0,    -5,   25,    25.001,  50,  99.9, 800,
                            1000, 1001, 30000, 30000.5, 1e9, NAN,  INFINITY};
  for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++)
    spi__metrics_ttft(x, SPI_CLASS_GOLD, samples[i]);
  spi__metrics_ttft(x, SPI_CLASS_BRONZE, 400);
  char *t = render(x, NULL, 0, NULL);
  check_exposition(t);
  static const struct {
    const char *le;
    int cum;
  } want[] = {{"0.025", 3}, {"0.05", 5}, {"0.1", 6}, {"0.2", 6},
              {"0.3", 6},   {"0.5", 6},  {"0.8", 7}, {"1", 8},
              {"1.5", 9},   {"2.5", 9},  {"5", 9},   {"10", 9},
              {"30", 10},   {"+Inf", 13}};
  assert_int_equal(sizeof want / sizeof want[0], SPI_TTFT_BUCKETS);
  for (size_t i = 0; i < SPI_TTFT_BUCKETS; i++) {
    char series[128];
    snprintf(series, sizeof series,
             "spotinfer_ttft_seconds_bucket{class=\"gold\",le=\"%s\"}",
             want[i].le);
    NEAR(value_of(t, series), want[i].cum);
  }
  NEAR(value_of(t, "spotinfer_ttft_seconds_count{class=\"gold\"}"), 13);
  NEAR(value_of(t, "spotinfer_ttft_seconds_sum{class=\"gold\"}"),
       (0 + 0 + 25 + 25.001 + 50 + 99.9 + 800 + 1000 + 1001 + 30000 + 30000.5 +
        1e9) /
           1000);
  NEAR(value_of(t, "spotinfer_ttft_seconds_bucket{class=\"bronze\","
                   "le=\"0.3\"}"),
       0);
  NEAR(value_of(t, "spotinfer_ttft_seconds_bucket{class=\"bronze\","
                   "le=\"0.5\"}"),
       1);
  NEAR(value_of(t, "spotinfer_ttft_seconds_count{class=\"silver\"}"), 0);
  free(t);
  spi__metrics_free(&MEM, x);
}

/* p95 interpolates linearly inside the bucket that holds rank 0.95 * n. */
static void test_p95_interpolation(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(1);
  assert_true(spi__metrics_p95_ttft(x, SPI_CLASS_GOLD) == 0);

  /* 90 samples in (0, 25], 10 in (100, 200]: rank 95 is the 5th of 10 in
   * (100, 200]: 100 + 100 * 5 / 10 = 150. */
  for (int i = 0; i < 90; i++) spi__metrics_ttft(x, SPI_CLASS_GOLD, 10);
  for (int i = 0; i < 10; i++) spi__metrics_ttft(x, SPI_CLASS_GOLD, 150);
  NEAR(spi__metrics_p95_ttft(x, SPI_CLASS_GOLD), 150);

  /* 20 samples in (300, 500]: rank 19: 300 + 200 * 19 / 20 = 490. */
  for (int i = 0; i < 20; i++) spi__metrics_ttft(x, SPI_CLASS_SILVER, 450);
  NEAR(spi__metrics_p95_ttft(x, SPI_CLASS_SILVER), 490);

  /* All in the first bucket: from 0: 25 * 0.95. */
  for (int i = 0; i < 100; i++) spi__metrics_ttft(x, SPI_CLASS_BRONZE, 1);
  NEAR(spi__metrics_p95_ttft(x, SPI_CLASS_BRONZE), 23.75);
  /* 100 more above 30 s: rank 190 of 200 lands in +Inf, which has no upper
   * bound: the largest finite bound. */
  for (int i = 0; i < 100; i++) spi__metrics_ttft(x, SPI_CLASS_BRONZE, 6e4);
  NEAR(spi__metrics_p95_ttft(x, SPI_CLASS_BRONZE), 30000);

  /* The signal in the text matches; classes are independent. */
  char *t = render(x, NULL, 0, NULL);
  NEAR(value_of(t, "spotinfer_ttft_p95_seconds{class=\"gold\"}"), 0.15);
  NEAR(value_of(t, "spotinfer_ttft_p95_seconds{class=\"silver\"}"), 0.49);
  free(t);
  spi__metrics_free(&MEM, x);

  /* One sample per bucket up to 1000 (8 samples, rank 7.6): the 8th
   * bucket (800, 1000], 0.6 of the way: 920. */
  x = new_metrics(1);
  const double one_each[] = {10, 40, 90, 150, 250, 400, 700, 900};
  for (int i = 0; i < 8; i++) spi__metrics_ttft(x, SPI_CLASS_GOLD, one_each[i]);
  NEAR(spi__metrics_p95_ttft(x, SPI_CLASS_GOLD), 920);
  spi__metrics_free(&MEM, x);
}

static void test_cache_miss_rate(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(4);
  assert_true(spi__metrics_cache_miss_rate(x) == 0);
  spi__metrics_decision(x, SPI_POOL_SPOT, 1, 1, 7, 6, 8);
  spi__metrics_decision(x, SPI_POOL_ON_DEMAND, 1, 4, 7, 0, 2);
  /* Not routed: no blocks counted. */
  spi__metrics_decision(x, SPI_POOL_QUEUE, 3, 7, 7, 0, 50);
  spi__metrics_decision(x, 0, 3, 8, 7, 0, 50);
  NEAR(spi__metrics_cache_miss_rate(x), 1 - 6.0 / 10);
  /* More matched than total is cut to total. */
  spi__metrics_decision(x, SPI_POOL_SPOT, 1, 1, 7, 30, 10);
  NEAR(spi__metrics_cache_miss_rate(x), 1 - 16.0 / 20);
  char *t = render(x, NULL, 0, NULL);
  assert_true(has_line(t, "spotinfer_prefix_blocks_matched_total 16"));
  assert_true(has_line(t, "spotinfer_prefix_blocks_total 20"));
  assert_true(has_line(t, "spotinfer_cache_miss_ratio 0.2"));
  free(t);
  spi__metrics_free(&MEM, x);
}

static void test_family_table(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(3);
  const uint64_t fam[5] = {UINT64_C(0xabcd), UINT64_C(0xffffffffffffffff),
                           UINT64_C(0x0123456789abcdef), UINT64_C(0x42),
                           UINT64_C(0x43)};
  for (int round = 0; round < 2; round++)
    for (int i = 0; i < 5; i++)
      spi__metrics_decision(x, SPI_POOL_SPOT, 1, 1, fam[i], (uint32_t)i, 10);
  /* Family 0 is "none": other. */
  spi__metrics_decision(x, SPI_POOL_SPOT, 1, 1, 0, 1, 1);
  char *t = render(x, NULL, 0, NULL);
  check_exposition(t);
  assert_true(has_line(
      t,
      "spotinfer_prefix_family_blocks_total{family=\"000000000000abcd\"} 20"));
  assert_true(has_line(t, "spotinfer_prefix_family_blocks_matched_total{family="
                          "\"000000000000abcd\"} 0"));
  assert_true(has_line(
      t,
      "spotinfer_prefix_family_blocks_total{family=\"ffffffffffffffff\"} 20"));
  assert_true(has_line(t, "spotinfer_prefix_family_blocks_matched_total{family="
                          "\"ffffffffffffffff\"} 2"));
  assert_true(has_line(
      t,
      "spotinfer_prefix_family_blocks_total{family=\"0123456789abcdef\"} 20"));
  assert_true(has_line(t, "spotinfer_prefix_family_blocks_matched_total{family="
                          "\"0123456789abcdef\"} 4"));
  /* The first three took the table; the rest share "other". */
  assert_null(strstr(t, "family=\"0000000000000042\""));
  assert_null(strstr(t, "family=\"0000000000000043\""));
  assert_true(
      has_line(t, "spotinfer_prefix_family_blocks_total{family=\"other\"} 41"));
  assert_true(has_line(
      t, "spotinfer_prefix_family_blocks_matched_total{family=\"other\"} 15"));
  /* The totals are the table's and other's together. */
  assert_true(has_line(t, "spotinfer_prefix_blocks_total 101"));
  assert_true(has_line(t, "spotinfer_prefix_blocks_matched_total 21"));
  NEAR(spi__metrics_cache_miss_rate(x), 1 - 21.0 / 101);
  free(t);
  spi__metrics_free(&MEM, x);

  /* No table at all: everything is other. */
  x = new_metrics(0);
  spi__metrics_decision(x, SPI_POOL_SPOT, 1, 1, 5, 1, 2);
  t = render(x, NULL, 0, NULL);
  check_exposition(t);
  assert_true(
      has_line(t, "spotinfer_prefix_family_blocks_total{family=\"other\"} 2"));
  free(t);
  spi__metrics_free(&MEM, x);
}

/* Six: besides the threads with a stripe of their own, at least two share
 * stripe 0 (metrics.c, stripe_of). */
enum { F_THREADS = 6, F_ITERS = 20000, F_FAMILIES = 16 };

static void *family_thread(void *arg) {
  spi_metrics *x = arg;
  uint64_t s = (uint64_t)(uintptr_t)&s | 1;
  for (int i = 0; i < F_ITERS; i++) {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    uint64_t fam = 1 + s % 40; /* 40 families race for 16 entries */
    spi__metrics_decision(x, SPI_POOL_SPOT, 1 + i % 3, i % SPI_REASON_COUNT,
                          fam, 1, 2);
    spi__metrics_ttft(x, 1 + i % 3, (double)(i % 2000));
    spi__metrics_queue_delta(x, 1 + i % 3, 1);
    spi__metrics_queue_delta(x, 1 + i % 3, -1);
    if (i % 500 == 0) {
      spi_buf b = {0};
      spi__metrics_render(x, NULL, 0, NULL, &b, &MEM);
      spi__buf_free(&b, &MEM);
    }
  }
  return NULL;
}

/* Threads count without losing updates, in their own stripes and in the
 * shared one, and claim exactly max_families entries however they race. */
static void test_threads(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(F_FAMILIES);
  pthread_t th[F_THREADS];
  for (int i = 0; i < F_THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, family_thread, x), 0);
  for (int i = 0; i < F_THREADS; i++) pthread_join(th[i], NULL);
  char *t = render(x, NULL, 0, NULL);
  check_exposition(t);
  int families = 0;
  double sum = 0;
  const char *key = "spotinfer_prefix_family_blocks_total{family=\"";
  for (const char *p = t; (p = strstr(p, key)); p++) {
    const char *v = strchr(p, ' ');
    sum += strtod(v + 1, NULL);
    if (strncmp(p + strlen(key), "other", 5) != 0) families++;
  }
  assert_int_equal(families, F_FAMILIES);
  const double n = (double)F_THREADS * F_ITERS;
  NEAR(sum, 2 * n);
  NEAR(value_of(t, "spotinfer_prefix_blocks_total"), 2 * n);
  NEAR(spi__metrics_cache_miss_rate(x), 0.5);
  double decisions = 0, ttft = 0;
  for (const char *p = t; (p = strstr(p, "\nspotinfer_decisions_total{")); p++)
    decisions += strtod(strchr(p, ' ') + 1, NULL);
  for (int c = 1; c <= 3; c++) {
    char series[96];
    snprintf(series, sizeof series,
             "spotinfer_ttft_seconds_count{class=\"%s\"}",
             spi_class_name(c));
    ttft += value_of(t, series);
    assert_true(spi__metrics_queue_depth(x, c) == 0);
  }
  NEAR(decisions, n);
  NEAR(ttft, n);
  free(t);
  spi__metrics_free(&MEM, x);
}

/* One thread's part in test_stripes_summed: a route's counts, or its
 * finish's. */
static uint32_t route_no, finish_no; /* the two threads' numbers */

static void *route_counts(void *arg) {
  spi_metrics *x = arg;
  route_no = spi__thread_no();
  spi__metrics_decision(x, SPI_POOL_SPOT, SPI_CLASS_GOLD, 1, 7, 3, 4);
  spi__metrics_queue_delta(x, SPI_CLASS_GOLD, +1);
  spi__metrics_ttft(x, SPI_CLASS_GOLD, 100.0);
  return NULL;
}

static void *finish_counts(void *arg) {
  spi_metrics *x = arg;
  finish_no = spi__thread_no();
  spi__metrics_queue_delta(x, SPI_CLASS_GOLD, -1);
  spi__metrics_ttft(x, SPI_CLASS_GOLD, 50.0);
  spi__metrics_decision(x, SPI_POOL_SPOT, SPI_CLASS_GOLD, 1, 7, 1, 4);
  return NULL;
}

static void on_new_thread(void *(*f)(void *), spi_metrics *x) {
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, f, x), 0);
  pthread_join(th, NULL);
}

/* A thread's stripe: its own for the first M_STRIPES - 1 numbered
 * threads, stripe 0 (shared) for the rest (metrics.c, stripe_of). */
static unsigned stripe_no(uint32_t n) { return n < M_STRIPES ? n : 0; }

/* Threads count in stripes (threads are numbered as they first count): a
 * request routed on one thread and finished on another leaves +1 in one
 * stripe's queue depth and -1 in another's (or both in stripe 0 when
 * both threads are numbered beyond the own stripes), and every reading
 * sums the stripes. */
static void test_stripes_summed(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(4);
  assert_true(spi__metrics_untouched(x));
  on_new_thread(route_counts, x);
  assert_false(spi__metrics_untouched(x));
  on_new_thread(finish_counts, x);
  unsigned up = stripe_no(route_no), down = stripe_no(finish_no);
  for (unsigned s = 0; s < M_STRIPES; s++) {
    long long q = atomic_load(&x->hot[s].queue[SPI_CLASS_GOLD]);
    assert_true(q == (s == up) - (s == down));
  }
  assert_true(spi__metrics_queue_depth(x, SPI_CLASS_GOLD) == 0);
  assert_int_equal(spi__mdecisions(x, SPI_POOL_SPOT, SPI_CLASS_GOLD, 1), 2);
  uint64_t matched, total;
  spi__metrics_blocks(x, &matched, &total);
  assert_int_equal(matched, 4);
  assert_int_equal(total, 8);
  char *t = render(x, NULL, 0, NULL);
  check_exposition(t);
  assert_true(has_line(t, "spotinfer_ttft_seconds_sum{class=\"gold\"} 0.15"));
  assert_true(has_line(t, "spotinfer_ttft_seconds_count{class=\"gold\"} 2"));
  assert_true(has_line(
      t, "spotinfer_prefix_family_blocks_total{family=\"0000000000000007\"} 8"));
  free(t);
  /* A -1 whose +1 a read does not see: the depth is cut at 0. */
  on_new_thread(finish_counts, x);
  assert_true(spi__metrics_queue_depth(x, SPI_CLASS_GOLD) == 0);
  spi__metrics_free(&MEM, x);
}

/* ------------------------------------------------------------- rendering */

static void test_replica_gauges_and_escaping(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(2);
  const spi_replica_gauge g[3] = {
      {"spot-a", SPI_POOL_SPOT, SPI_REPLICA_ACTIVE, SPI_BREAKER_CLOSED, 3, 0.5},
      {"we\"ird\\id\nx", SPI_POOL_ON_DEMAND, SPI_REPLICA_DRAINING,
       SPI_BREAKER_OPEN, 0, 0.125},
      {"bad\xff"
       "utf8-\xc3\xa9",
       9, SPI_REPLICA_NOTICED, SPI_BREAKER_HALF_OPEN, 1, 1},
  };
  char *t = render(x, g, 3, NULL);
  check_exposition(t);
  assert_true(has_line(
      t, "spotinfer_replica_inflight{replica=\"spot-a\",pool=\"spot\"} 3"));
  assert_true(has_line(
      t, "spotinfer_replica_kv_usage{replica=\"spot-a\",pool=\"spot\"} 0.5"));
  assert_true(has_line(
      t, "spotinfer_replica_state{replica=\"spot-a\",pool=\"spot\"} 1"));
  assert_true(has_line(
      t, "spotinfer_replica_breaker{replica=\"spot-a\",pool=\"spot\"} 0"));
  assert_true(has_line(t, "spotinfer_replica_state{replica="
                          "\"we\\\"ird\\\\id\\nx\",pool=\"on_demand\"} 2"));
  assert_true(has_line(t, "spotinfer_replica_breaker{replica="
                          "\"we\\\"ird\\\\id\\nx\",pool=\"on_demand\"} 1"));
  assert_true(has_line(t, "spotinfer_replica_kv_usage{replica="
                          "\"we\\\"ird\\\\id\\nx\",pool=\"on_demand\"} 0.125"));
  /* A byte that is not UTF-8 becomes U+FFFD; valid UTF-8 is kept. */
  assert_true(has_line(t, "spotinfer_replica_breaker{replica="
                          "\"bad\xef\xbf\xbdutf8-\xc3\xa9\",pool=\"none\"} 2"));
  free(t);

  /* Signals passed in are what the text shows. */
  spi_signals sig;
  memset(&sig, 0, sizeof sig);
  sig.struct_size = sizeof sig;
  sig.queue_depth[SPI_CLASS_SILVER] = 4;
  sig.p95_ttft_ms[SPI_CLASS_GOLD] = 812.5;
  sig.cache_miss_rate = 0.3;
  sig.warm_on_demand = 2;
  sig.draft_acceptance = 0.68;
  t = render(x, NULL, 0, &sig);
  check_exposition(t);
  assert_true(has_line(t, "spotinfer_queue_depth{class=\"silver\"} 4"));
  assert_true(
      has_line(t, "spotinfer_ttft_p95_seconds{class=\"gold\"} 0.8125"));
  assert_true(has_line(t, "spotinfer_cache_miss_ratio 0.3"));
  assert_true(has_line(t, "spotinfer_warm_on_demand_replicas 2"));
  assert_true(has_line(t, "spotinfer_draft_acceptance_ratio 0.68"));
  /* No replicas: the families are still declared. */
  assert_non_null(strstr(t, "# TYPE spotinfer_replica_inflight gauge\n"));
  free(t);
  spi__metrics_free(&MEM, x);
}

/* Numbers print with '.' whatever LC_NUMERIC says. */
static void test_locale(void **st) {
  (void)st;
  if (!setlocale(LC_NUMERIC, "de_DE.UTF-8") &&
      !setlocale(LC_NUMERIC, "de_DE.utf8") &&
      !setlocale(LC_NUMERIC, "fr_FR.UTF-8")) {
    print_message("no locale with a decimal comma; skipped\n");
    skip();
  }
  spi_metrics *x = new_metrics(1);
  const spi_replica_gauge g = {"r", SPI_POOL_SPOT, 1, 0, 0, 0.625};
  spi__metrics_ttft(x, SPI_CLASS_GOLD, 12.5);
  char *t = render(x, &g, 1, NULL);
  setlocale(LC_NUMERIC, "C");
  check_exposition(t);
  assert_true(has_line(
      t, "spotinfer_replica_kv_usage{replica=\"r\",pool=\"spot\"} 0.625"));
  assert_true(
      has_line(t, "spotinfer_ttft_seconds_sum{class=\"gold\"} 0.0125"));
  free(t);
  spi__metrics_free(&MEM, x);
}

/* Fails every allocation after the first `budget` ones. */
typedef struct budget {
  long left;
  long allocs, frees;
} budget;

static void *b_alloc(void *ud, size_t n) {
  budget *b = ud;
  if (b->left-- <= 0) return NULL;
  b->allocs++;
  return malloc(n);
}

static void b_free(void *ud, void *p) {
  ((budget *)ud)->frees++;
  free(p);
}

static void test_render_alloc_failure(void **st) {
  (void)st;
  spi_metrics *x = new_metrics(4);
  spi__metrics_decision(x, SPI_POOL_SPOT, 1, 1, 9, 1, 2);
  int failed = 0;
  for (long n = 0;; n++) {
    budget bu = {n, 0, 0};
    const spi_mem m = {b_alloc, b_free, &bu};
    spi_buf b = {0};
    assert_int_equal(spi__buf_append(&b, &m, "keep", 4),
                     n ? SPI_OK : SPI_ENOMEM);
    if (n == 0) continue;
    int rc = spi__metrics_render(x, NULL, 0, NULL, &b, &m);
    if (rc == SPI_OK) {
      assert_memory_equal(b.data, "keep", 4);
      spi__buf_free(&b, &m);
      assert_int_equal(bu.allocs, bu.frees);
      break;
    }
    assert_int_equal(rc, SPI_ENOMEM);
    assert_int_equal(b.len, 4); /* left as it was */
    spi__buf_free(&b, &m);
    assert_int_equal(bu.allocs, bu.frees);
    failed++;
  }
  assert_true(failed > 0);
  /* Without a metrics object the temporary one can fail too. */
  budget none = {0, 0, 0};
  const spi_mem m0 = {b_alloc, b_free, &none};
  spi_buf b = {0};
  assert_int_equal(spi__metrics_render(NULL, NULL, 0, NULL, &b, &m0),
                   SPI_ENOMEM);
  assert_int_equal(b.len, 0);
  spi__metrics_free(&MEM, x);
}

/* --------------------------------------------------------- public API */

static int64_t fake_now(void *ud) { return *(int64_t *)ud; }

static void add_replica(spi_engine *e, const char *id, int32_t pool) {
  spi_replica_info info = ff_replica(id, pool, 2.5, 8);
  assert_int_equal(spi_replica_upsert(e, &info), SPI_OK);
}

static void report(spi_engine *e, const char *id, double kv) {
  assert_int_equal(ff_report(e, id, 1, 0, kv), SPI_OK);
}

static void test_engine_signals_and_metrics(void **st) {
  (void)st;
  int64_t now = INT64_C(1700000000000000000);
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fake_now;
  h.clock_user_data = &now;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  assert_int_equal(spi_engine_configure(e,
                                        "{\"router\":{\"load_max_age_ms\":"
                                        "5000}}",
                                        strlen("{\"router\":{\"load_max_age_ms"
                                               "\":5000}}")),
                   SPI_OK);

  /* No metrics object yet (the engine has not routed) and no replicas:
   * zeros, in valid text. */
  spi_metrics *saved = atomic_exchange(&e->metrics, NULL);
  size_t need = 0;
  assert_int_equal(spi_engine_metrics(e, NULL, 0, &need), SPI_EBUFSIZE);
  assert_true(need > 1000);
  char *buf = malloc(need + 1);
  assert_non_null(buf);
  assert_int_equal(spi_engine_metrics(e, buf, need, NULL), SPI_EBUFSIZE);
  size_t need2 = 0;
  assert_int_equal(spi_engine_metrics(e, buf, need + 1, &need2), SPI_OK);
  assert_int_equal(need2, need);
  assert_int_equal(strlen(buf), need);
  check_exposition(buf);
  assert_true(has_line(buf, "spotinfer_warm_on_demand_replicas 0"));
  free(buf);

  spi_signals sig;
  memset(&sig, 0xff, sizeof sig);
  sig.struct_size = sizeof sig;
  assert_int_equal(spi_engine_signals(e, &sig), SPI_OK);
  assert_int_equal(sig.struct_size, sizeof sig);
  assert_int_equal(sig.warm_on_demand, 0);
  assert_int_equal(sig.reserved0, 0);
  assert_true(sig.cache_miss_rate == 0 && sig.draft_acceptance == 0);
  for (int c = 0; c < 4; c++)
    assert_true(sig.queue_depth[c] == 0 && sig.p95_ttft_ms[c] == 0);

  /* Replicas: only od-warm counts as warm on-demand capacity. */
  add_replica(e, "od-warm", SPI_POOL_ON_DEMAND);
  add_replica(e, "od-cold", SPI_POOL_ON_DEMAND); /* never reported */
  add_replica(e, "od-drain", SPI_POOL_ON_DEMAND);
  add_replica(e, "od-open", SPI_POOL_ON_DEMAND);
  add_replica(e, "od-stale", SPI_POOL_ON_DEMAND);
  add_replica(e, "spot-1", SPI_POOL_SPOT);
  add_replica(e, "q\"uo\\te", SPI_POOL_SPOT);
  now -= INT64_C(6000000000); /* 6 s ago: older than load_max_age_ms */
  report(e, "od-stale", 0.1);
  now += INT64_C(6000000000);
  report(e, "od-warm", 0.25);
  report(e, "od-drain", 0.1);
  report(e, "od-open", 0.1);
  report(e, "spot-1", 0.75);
  assert_int_equal(
      spi_replica_set_state(e, "od-drain", 8, SPI_REPLICA_DRAINING), SPI_OK);
  {
    unsigned pin;
    spi__snap_acquire(e, &pin);
    const spi_replica_ident *r =
        spi__registry_find(atomic_load(&e->registry.set), "od-open", 7);
    assert_non_null(r);
    atomic_store(&e->registry.slots[r->slot].breaker, SPI_BREAKER_OPEN);
    spi__snap_release(e, pin);
  }

  /* Counters from a metrics object of our own. */
  spi_metrics *x = new_metrics(4);
  atomic_store(&e->metrics, x);
  spi__metrics_decision(x, SPI_POOL_SPOT, SPI_CLASS_GOLD, SPI_REASON_AFFINITY,
                        1, 3, 4);
  spi__metrics_queue_delta(x, SPI_CLASS_SILVER, 2);
  spi__metrics_ttft(x, SPI_CLASS_GOLD, 10);
  spi__metrics_draft(x, 1);
  spi__metrics_draft(x, 0);

  assert_int_equal(spi_engine_signals(e, &sig), SPI_OK);
  assert_int_equal(sig.warm_on_demand, 1);
  NEAR(sig.queue_depth[SPI_CLASS_SILVER], 2);
  NEAR(sig.p95_ttft_ms[SPI_CLASS_GOLD], 23.75);
  NEAR(sig.cache_miss_rate, 0.25);
  NEAR(sig.draft_acceptance, 0.5);
  /* The warm replica's signal ages out. */
  now += INT64_C(5000000000);
  assert_int_equal(spi_engine_signals(e, &sig), SPI_OK);
  assert_int_equal(sig.warm_on_demand, 0);
  now -= INT64_C(5000000000);

  assert_int_equal(spi_engine_metrics(e, NULL, 0, &need), SPI_EBUFSIZE);
  buf = malloc(need + 1);
  assert_non_null(buf);
  assert_int_equal(spi_engine_metrics(e, buf, need + 1, &need), SPI_OK);
  check_exposition(buf);
  assert_true(has_line(buf, "spotinfer_warm_on_demand_replicas 1"));
  assert_true(has_line(buf, "spotinfer_queue_depth{class=\"silver\"} 2"));
  assert_true(has_line(buf, "spotinfer_decisions_total{pool=\"spot\","
                            "class=\"gold\",reason=\"affinity\"} 1"));
  assert_true(has_line(buf, "spotinfer_replica_kv_usage{replica=\"od-warm\","
                            "pool=\"on_demand\"} 0.25"));
  assert_true(has_line(buf, "spotinfer_replica_state{replica=\"od-drain\","
                            "pool=\"on_demand\"} 2"));
  assert_true(has_line(buf, "spotinfer_replica_breaker{replica=\"od-open\","
                            "pool=\"on_demand\"} 1"));
  assert_true(has_line(buf,
                       "spotinfer_replica_inflight{replica=\"q\\\"uo\\\\te\","
                       "pool=\"spot\"} 0"));
  free(buf);

  /* Misuse. */
  assert_int_equal(spi_engine_metrics(e, NULL, 5, &need), SPI_EINVAL);
  assert_int_equal(spi_engine_metrics(NULL, NULL, 0, &need), SPI_EMISUSE);
  sig.struct_size = sizeof sig - 1;
  assert_int_equal(spi_engine_signals(e, &sig), SPI_EINVAL);
  assert_int_equal(spi_engine_signals(e, NULL), SPI_EINVAL);
  sig.struct_size = sizeof sig;
  assert_int_equal(spi_engine_signals(NULL, &sig), SPI_EMISUSE);
  spi_engine fake;
  memset(&fake, 0, sizeof fake);
  assert_int_equal(spi_engine_signals(&fake, &sig), SPI_EMISUSE);
  assert_int_equal(spi_engine_metrics(&fake, NULL, 0, NULL), SPI_EMISUSE);

  atomic_store(&e->metrics, saved);
  spi__metrics_free(&MEM, x);
  spi_engine_free(e);
}

/* The engine's allocator renders the text; a failure is reported, not
 * leaked. */
static void test_engine_metrics_alloc_failure(void **st) {
  (void)st;
  budget bu = {1L << 30, 0, 0};
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = b_alloc;
  h.free = b_free;
  h.alloc_user_data = &bu;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  add_replica(e, "r1", SPI_POOL_SPOT);
  int failed = 0;
  for (long n = 0;; n++) {
    long before = bu.allocs - bu.frees;
    bu.left = n;
    size_t need = 0;
    int rc = spi_engine_metrics(e, NULL, 0, &need);
    bu.left = 1L << 30;
    assert_int_equal(bu.allocs - bu.frees, before);
    if (rc == SPI_EBUFSIZE) break;
    assert_int_equal(rc, SPI_ENOMEM);
    assert_non_null(strstr(spi_engine_errmsg(e), "memory"));
    failed++;
  }
  assert_true(failed > 0);
  spi_engine_free(e);
  assert_int_equal(bu.allocs, bu.frees);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reason_names),
      cmocka_unit_test(test_counters),
      cmocka_unit_test(test_null_metrics),
      cmocka_unit_test(test_histogram_buckets),
      cmocka_unit_test(test_p95_interpolation),
      cmocka_unit_test(test_cache_miss_rate),
      cmocka_unit_test(test_family_table),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_stripes_summed),
      cmocka_unit_test(test_replica_gauges_and_escaping),
      cmocka_unit_test(test_locale),
      cmocka_unit_test(test_render_alloc_failure),
      cmocka_unit_test(test_engine_signals_and_metrics),
      cmocka_unit_test(test_engine_metrics_alloc_failure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
