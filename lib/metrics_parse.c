/*
 * metrics_parse.c - the load signal from a vLLM or SGLang /metrics page.
 *
 * The page is Prometheus text exposition format (version 0.0.4; the
 * OpenMetrics additions a server may send when asked, "# EOF", "# UNIT" and
 * exemplars, are accepted too):
 *
 *   # HELP vllm:num_requests_running Number of requests in model execution.
 *   # TYPE vllm:num_requests_running gauge
 *   vllm:num_requests_running{engine="0",model_name="m"} 3.0 [timestamp]
 *
 * Prometheus 3's quoted names ({"name",label="v"}, quoted label names and
 * # TYPE "name") are read too.
 *
 * The samples of a load metric are added up over its series (tensor- and
 * data-parallel ranks, engines), all but a series with a non-empty
 * priority label: SGLang with priority scheduling writes each queue gauge
 * as the total under priority="" and again as a breakdown by priority, so
 * adding the breakdown would count every request twice.
 *
 * Every line is checked against that grammar, whether or not its metric is
 * one we read, so a page that is not metrics text is rejected rather than
 * half-read. Servers add syntax, though, so a line that is well-formed up to
 * a part this version does not read - a composite (native-histogram) value,
 * or an annotation such as OpenMetrics 2.0's start time "st@<seconds>" after
 * the value - is skipped and counted instead of refusing the whole page;
 * the load is read from the other lines. The parser works on pointer + length,
 * never reads past len, needs no NUL and allocates nothing. Numbers are parsed
 * by hand: strtod would need a NUL and follows the process locale's decimal
 * point.
 *
 * A page must end with a line feed (as the format requires): a body cut off
 * in the middle of "... 12" would otherwise read as 1. OpenMetrics' "# EOF"
 * ends the page: lines after it are not read but skipped and counted, as
 * lines in newer syntax are (they may be a second page run on).
 */
#include <math.h>
#include <string.h>

#include "routing.h"

enum load_field { F_RUNNING = 0, F_WAITING = 1, F_USAGE = 2 };

static const struct known_metric {
  const char *name;
  size_t len;
  int field;
} KNOWN[] = {
#define K(n, f) {n, sizeof(n) - 1, f}
    K("vllm:num_requests_running", F_RUNNING),
    K("vllm:num_requests_waiting", F_WAITING),
    K("vllm:gpu_cache_usage_perc", F_USAGE), /* before vLLM V1 */
    K("vllm:kv_cache_usage_perc", F_USAGE),  /* its newer name */
    K("sglang:num_running_reqs", F_RUNNING),
    K("sglang:num_queue_reqs", F_WAITING),
    K("sglang:token_usage", F_USAGE),
#undef K
};

#define NKNOWN (sizeof KNOWN / sizeof KNOWN[0])

/* ------------------------------------------------------------- characters */

static int is_blank(char c) { return c == ' ' || c == '\t'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }
static int is_alpha_(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static size_t skip_blanks(const char *s, size_t i, size_t n) {
  while (i < n && is_blank(s[i])) i++;
  return i;
}

/* [a-zA-Z_:][a-zA-Z0-9_:]*, or for labels [a-zA-Z_][a-zA-Z0-9_]*.
 * Returns the end, equal to i when there is no name. */
static size_t scan_name(const char *s, size_t i, size_t n, int colons) {
  if (i >= n || !(is_alpha_(s[i]) || (colons && s[i] == ':'))) return i;
  i++;
  while (i < n && (is_alpha_(s[i]) || is_digit(s[i]) || (colons && s[i] == ':')))
    i++;
  return i;
}

static int lower_eq(const char *s, size_t n, const char *lit) {
  size_t m = strlen(lit);
  if (n != m) return 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
    if (c != lit[i]) return 0;
  }
  return 1;
}

/* ---------------------------------------------------------------- numbers */

static const double POW10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,
                                 1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                 1e12, 1e13, 1e14, 1e15, 1e16, 1e17,
                                 1e18, 1e19, 1e20, 1e21, 1e22};

/* mant * 10^e10. Exact (correctly rounded) when mant < 2^53 and |e10| <= 22,
 * which covers what inference servers print; otherwise within a few ulps,
 * which is plenty for a load signal. */
static double scale10(uint64_t mant, long e10) {
  if (mant == 0) return 0.0;
  double d = (double)mant;
  if (mant <= (1ull << 53) && e10 >= -22 && e10 <= 22)
    return e10 < 0 ? d / POW10[-e10] : d * POW10[e10];
  if (e10 > 330) return HUGE_VAL;
  if (e10 < -350) return 0.0; /* mant < 2^64 < 1e20 */
  if (e10 > 300) return d * pow(10.0, (double)(e10 - 300)) * 1e300;
  if (e10 < -300) return d * pow(10.0, (double)(e10 + 300)) * 1e-300;
  return d * pow(10.0, (double)e10);
}

/*
 * The whole of s[0..n) as a number: [+-] digits [. digits] [e [+-] digits]
 * (digits on at least one side of the point), or Inf, Infinity, NaN in any
 * case with an optional sign, as Prometheus accepts. Returns 0 on success.
 */
static int parse_number(const char *s, size_t n, double *out) {
  size_t i = 0;
  int neg = 0;
  if (i < n && (s[i] == '+' || s[i] == '-')) neg = s[i++] == '-';
  if (i < n && !is_digit(s[i]) && s[i] != '.') {
    if (lower_eq(s + i, n - i, "inf") || lower_eq(s + i, n - i, "infinity")) {
      *out = neg ? -HUGE_VAL : HUGE_VAL;
      return 0;
    }
    if (lower_eq(s + i, n - i, "nan")) {
      *out = NAN;
      return 0;
    }
    return -1;
  }
  uint64_t mant = 0;
  int ndig = 0;      /* significant digits kept in mant (at most 19) */
  long e10 = 0;      /* decimal exponent of mant */
  int any = 0;
  for (; i < n && is_digit(s[i]); i++, any = 1) {
    if (ndig < 19) {
      mant = mant * 10 + (uint64_t)(s[i] - '0');
      if (mant) ndig++;
    } else {
      e10++; /* a dropped integer digit */
    }
  }
  if (i < n && s[i] == '.') {
    for (i++; i < n && is_digit(s[i]); i++, any = 1) {
      if (ndig < 19) {
        mant = mant * 10 + (uint64_t)(s[i] - '0');
        if (mant) ndig++;
        e10--;
      }
    }
  }
  if (!any) return -1;
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    int eneg = 0;
    if (i < n && (s[i] == '+' || s[i] == '-')) eneg = s[i++] == '-';
    if (i >= n || !is_digit(s[i])) return -1;
    long ex = 0;
    for (; i < n && is_digit(s[i]); i++)
      if (ex < 100000) ex = ex * 10 + (s[i] - '0');
    e10 += eneg ? -ex : ex;
  }
  if (i != n) return -1;
  double d = scale10(mant, e10);
  *out = neg ? -d : d;
  return 0;
}

/* ---------------------------------------------------------------- parsing */

/* parse_sample's answer for a line in syntax newer than this parser reads:
 * not an error, the line is counted and left out (never a spi_status). */
#define SKIP_LINE 1

typedef struct parse_state {
  size_t line;
  char *err;
  size_t errcap;
  double sum[3]; /* running, waiting: sums; usage: maximum */
  int seen[3];
  size_t found;         /* samples of a load metric read */
  size_t skipped;       /* lines in newer syntax or after # EOF, left out */
  size_t first_skipped; /* line number of the first */
  const char *skip_why; /* what the current line has that we do not read */
  const char *first_why;
  int ended;            /* an OpenMetrics "# EOF" line was read */
} parse_state;

static int fail(parse_state *ps, int status, const char *what) {
  spi__errf(ps->err, ps->errcap, "line %zu: %s", ps->line, what);
  return status;
}

/* A line this version does not read: why, for the message. */
static int skip_line(parse_state *ps, const char *why) {
  ps->skip_why = why;
  return SKIP_LINE;
}

/* A double-quoted string starting at s[*pi] == '"', left at the closing
 * quote. Escapes: \\ \" \n. what names it in a message. */
static int parse_string(parse_state *ps, const char *s, size_t n, size_t *pi,
                        const char *what) {
  char msg[96];
  for (size_t i = *pi + 1;; i++) {
    if (i >= n) {
      spi__errf(msg, sizeof msg, "unterminated %s", what);
      return fail(ps, SPI_EPARSE, msg);
    }
    if (s[i] == '"') {
      *pi = i;
      return SPI_OK;
    }
    if (s[i] == '\\') {
      if (i + 1 >= n) {
        spi__errf(msg, sizeof msg, "unterminated %s", what);
        return fail(ps, SPI_EPARSE, msg);
      }
      char x = s[++i];
      if (x != '\\' && x != '"' && x != 'n') {
        spi__errf(msg, sizeof msg,
                  "invalid escape in a %s (only \\\\ \\\" \\n)", what);
        return fail(ps, SPI_EPARSE, msg);
      }
    }
  }
}

/* The metric name quoted as the first member of a label set (Prometheus
 * 3's UTF-8 names: {"name", label="value"}), s[*pi] == '"'. Sets *name and
 * *name_len to the text between the quotes and leaves *pi after them. */
static int parse_quoted_name(parse_state *ps, const char *s, size_t n,
                             size_t *pi, const char **name, size_t *name_len) {
  size_t i = *pi;
  int rc = parse_string(ps, s, n, &i, "quoted metric name");
  if (rc != SPI_OK) return rc;
  size_t j = skip_blanks(s, i + 1, n);
  /* {"object":"error",...} is JSON, not a metric. */
  if (j >= n || (s[j] != ',' && s[j] != '}'))
    return fail(ps, SPI_EPARSE,
                "expected a metric name (a quoted name is followed by ',' or "
                "'}')");
  *name = s + *pi + 1;
  *name_len = i - *pi - 1;
  *pi = s[j] == ',' ? j + 1 : j;
  return SPI_OK;
}

/* Whether a label is priority="<something>", which marks a series as
 * SGLang's breakdown by priority of the total under priority="" (see the
 * top of the file). */
static int is_breakdown(const char *name, size_t name_len, size_t value_len) {
  return name_len == 8 && memcmp(name, "priority", 8) == 0 && value_len > 0;
}

/* A label set "{name="value",...}" starting at s[*pi] == '{'. Label names
 * bare or quoted; escapes in values: \\ \" \n; a trailing comma is
 * allowed. With name non-NULL the set opens the line and must start with
 * the quoted metric name, which *name and *name_len get. With breakdown
 * non-NULL (a series' own labels, not an exemplar's), *breakdown is set
 * when the set has a non-empty priority label (is_breakdown). */
static int parse_labels(parse_state *ps, const char *s, size_t n, size_t *pi,
                        const char **name, size_t *name_len, int *breakdown) {
  size_t i = *pi + 1;
  if (name) {
    i = skip_blanks(s, i, n);
    if (i >= n || s[i] != '"')
      return fail(ps, SPI_EPARSE, "expected a metric name");
    int rc = parse_quoted_name(ps, s, n, &i, name, name_len);
    if (rc != SPI_OK) return rc;
  }
  for (;;) {
    i = skip_blanks(s, i, n);
    if (i < n && s[i] == '}') break;
    size_t e = scan_name(s, i, n, 0);
    const char *label = s + i;
    size_t label_len = e - i;
    if (e == i && i < n && s[i] == '"') {
      int rc = parse_string(ps, s, n, &i, "quoted label name");
      if (rc != SPI_OK) return rc;
      label++;
      label_len = (size_t)(s + i - label);
      e = i + 1;
    }
    if (e == i) return fail(ps, SPI_EPARSE, "expected a label name or '}'");
    i = skip_blanks(s, e, n);
    if (i >= n || s[i] != '=')
      return fail(ps, SPI_EPARSE, "expected '=' after a label name");
    i = skip_blanks(s, i + 1, n);
    if (i >= n || s[i] != '"')
      return fail(ps, SPI_EPARSE, "expected '\"' to open a label value");
    size_t open = i;
    int rc = parse_string(ps, s, n, &i, "label value");
    if (rc != SPI_OK) return rc;
    if (breakdown && is_breakdown(label, label_len, i - open - 1))
      *breakdown = 1;
    i = skip_blanks(s, i + 1, n);
    if (i < n && s[i] == ',') {
      i++;
      continue;
    }
    if (i < n && s[i] == '}') break;
    return fail(ps, SPI_EPARSE, "expected ',' or '}' after a label value");
  }
  *pi = i + 1;
  return SPI_OK;
}

/* The blank-delimited token at s[i..) and its end. */
static size_t token_end(const char *s, size_t i, size_t n) {
  while (i < n && !is_blank(s[i])) i++;
  return i;
}

/* A token "word@..." after the value: an annotation this version does not
 * read (OpenMetrics 2.0 writes a counter's start time as st@<seconds>). */
static int is_annotation(const char *s, size_t i, size_t e) {
  size_t j = i;
  while (j < e && (is_alpha_(s[j]) || is_digit(s[j]))) j++;
  return j > i && j < e && s[j] == '@';
}

/* An optional timestamp and an optional OpenMetrics exemplar
 * ("# {labels} value [timestamp]") after a sample's value. */
static int parse_tail(parse_state *ps, const char *s, size_t n, size_t i,
                      int exemplar_ok) {
  double v;
  int stamped = 0;
  i = skip_blanks(s, i, n);
  if (i < n && s[i] != '#') {
    size_t e = token_end(s, i, n);
    if (is_annotation(s, i, e))
      return skip_line(ps, "an annotation after the value (such as st@)");
    if (parse_number(s + i, e - i, &v) != 0 || !isfinite(v))
      return fail(ps, SPI_EPARSE, "invalid timestamp");
    i = skip_blanks(s, e, n);
    stamped = 1;
  }
  if (i >= n) return SPI_OK;
  if (s[i] != '#' && is_annotation(s, i, token_end(s, i, n)))
    return skip_line(ps, "an annotation after the timestamp (such as st@)");
  if (s[i] != '#' || !exemplar_ok)
    return fail(ps, SPI_EPARSE, stamped ? "unexpected text after the timestamp"
                                        : "unexpected text after the sample");
  i = skip_blanks(s, i + 1, n);
  if (i >= n || s[i] != '{')
    return fail(ps, SPI_EPARSE, "expected '{' to open an exemplar's labels");
  int rc = parse_labels(ps, s, n, &i, NULL, NULL, NULL);
  if (rc != SPI_OK) return rc;
  size_t j = skip_blanks(s, i, n);
  if (j == i || j >= n)
    return fail(ps, SPI_EPARSE, "expected a value after an exemplar's labels");
  size_t e = token_end(s, j, n);
  if (parse_number(s + j, e - j, &v) != 0)
    return fail(ps, SPI_EPARSE, "invalid exemplar value");
  return parse_tail(ps, s, n, e, 0);
}

static int record(parse_state *ps, const struct known_metric *k, double v) {
  char msg[160];
  if (isnan(v) || isinf(v)) {
    spi__errf(msg, sizeof msg, "%s is %s", k->name, isnan(v) ? "NaN" : "infinite");
    return fail(ps, SPI_ERANGE, msg);
  }
  if (v < 0) {
    spi__errf(msg, sizeof msg, "%s is negative (%.10g)", k->name, v);
    return fail(ps, SPI_ERANGE, msg);
  }
  if (k->field == F_USAGE) {
    if (v > 1) {
      spi__errf(msg, sizeof msg, "%s is %.10g, above 1", k->name, v);
      return fail(ps, SPI_ERANGE, msg);
    }
    if (!ps->seen[F_USAGE] || v > ps->sum[F_USAGE]) ps->sum[F_USAGE] = v;
  } else {
    double sum = ps->sum[k->field] + v;
    if (isinf(sum)) {
      spi__errf(msg, sizeof msg, "the sum of %s overflows", k->name);
      return fail(ps, SPI_ERANGE, msg);
    }
    ps->sum[k->field] = sum;
  }
  ps->seen[k->field] = 1;
  ps->found++;
  return SPI_OK;
}

/* Whether the '{' at s[i] opens a composite value ({count:12,sum:...}, a
 * native histogram) rather than a label set: a name then ':' in it. */
static int is_composite(const char *s, size_t i, size_t n) {
  size_t j = skip_blanks(s, i + 1, n);
  size_t e = scan_name(s, j, n, 0);
  return e > j && e < n && s[e] == ':';
}

/* The metric name, bare or (Prometheus 3) quoted inside the label set,
 * and the label set; *pi is left after them. *breakdown as parse_labels. */
static int parse_series(parse_state *ps, const char *s, size_t n, size_t *pi,
                        const char **name, size_t *name_len, int *labels,
                        int *breakdown) {
  size_t i = *pi;
  if (s[i] == '{') {
    *labels = 1;
    return parse_labels(ps, s, n, pi, name, name_len, breakdown);
  }
  size_t name_end = scan_name(s, i, n, 1);
  if (name_end == i) return fail(ps, SPI_EPARSE, "expected a metric name");
  *name = s + i;
  *name_len = name_end - i;
  i = skip_blanks(s, name_end, n);
  *labels = i < n && s[i] == '{' && !(i > name_end && is_composite(s, i, n));
  if (*labels) {
    int rc = parse_labels(ps, s, n, &i, NULL, NULL, breakdown);
    if (rc != SPI_OK) return rc;
  } else {
    i = name_end;
  }
  *pi = i;
  return SPI_OK;
}

static int parse_sample(parse_state *ps, const char *s, size_t n, size_t i) {
  const char *name = NULL;
  size_t name_len = 0;
  int labels = 0, breakdown = 0;
  int rc = parse_series(ps, s, n, &i, &name, &name_len, &labels, &breakdown);
  if (rc != SPI_OK) return rc;
  size_t j = skip_blanks(s, i, n);
  if (j >= n) return fail(ps, SPI_EPARSE, "missing value");
  /* "name{...}1" is valid; "name1" is a name, "name-1" is not a sample. */
  if (j == i && !labels)
    return fail(ps, SPI_EPARSE, "expected a blank before the value");
  /* A composite value, {count:...,sum:...,buckets:...}: a native
   * histogram in text form, which no load metric is. */
  if (s[j] == '{') return skip_line(ps, "a native-histogram value");
  size_t e = token_end(s, j, n);
  double v;
  if (parse_number(s + j, e - j, &v) != 0)
    return fail(ps, SPI_EPARSE, "invalid value");
  rc = parse_tail(ps, s, n, e, 1);
  if (rc != SPI_OK || breakdown) return rc;
  for (size_t k = 0; k < NKNOWN; k++)
    if (KNOWN[k].len == name_len && memcmp(KNOWN[k].name, name, name_len) == 0)
      return record(ps, &KNOWN[k], v);
  return SPI_OK;
}

static int parse_comment(parse_state *ps, const char *s, size_t n, size_t i) {
  i = skip_blanks(s, i + 1, n);
  size_t e = token_end(s, i, n);
  int help = e - i == 4 && memcmp(s + i, "HELP", 4) == 0;
  int type = e - i == 4 && memcmp(s + i, "TYPE", 4) == 0;
  if (!help && !type) return SPI_OK; /* a plain comment */
  i = skip_blanks(s, e, n);
  size_t name_end = scan_name(s, i, n, 1);
  if (name_end == i && i < n && s[i] == '"') { /* a Prometheus 3 name */
    size_t q = i;
    int rc = parse_string(ps, s, n, &q, "quoted metric name");
    if (rc != SPI_OK) return rc;
    name_end = q + 1;
  }
  if (name_end == i || (name_end < n && !is_blank(s[name_end])))
    return fail(ps, SPI_EPARSE, help ? "# HELP needs a metric name"
                                     : "# TYPE needs a metric name");
  if (help) return SPI_OK; /* the docstring is free text */
  i = skip_blanks(s, name_end, n);
  e = token_end(s, i, n);
  static const char *const TYPES[] = {"counter", "gauge",   "histogram",
                                      "summary", "untyped", "unknown",
                                      "info",    "stateset", "gaugehistogram"};
  int ok = 0;
  for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0] && !ok; t++)
    ok = e - i == strlen(TYPES[t]) && memcmp(s + i, TYPES[t], e - i) == 0;
  if (!ok) return fail(ps, SPI_EPARSE, "# TYPE has an unknown metric type");
  if (skip_blanks(s, e, n) != n)
    return fail(ps, SPI_EPARSE, "unexpected text after # TYPE");
  return SPI_OK;
}

/* Whether s[i..n) is OpenMetrics' "# EOF", which ends the page. */
static int is_eof(const char *s, size_t i, size_t n) {
  return n - i == 5 && memcmp(s + i, "# EOF", 5) == 0;
}

/* One line; blank and comment lines included. A line after "# EOF" is
 * not part of the page: skipped and counted, never read. */
static int parse_line(parse_state *ps, const char *s, size_t n) {
  size_t i = skip_blanks(s, 0, n);
  if (i == n) return SPI_OK;
  int rc;
  if (ps->ended) {
    rc = skip_line(ps, "a line after # EOF");
  } else if (is_eof(s, i, n)) {
    ps->ended = 1;
    return SPI_OK;
  } else {
    rc = s[i] == '#' ? parse_comment(ps, s, n, i) : parse_sample(ps, s, n, i);
  }
  if (rc != SKIP_LINE) return rc;
  if (ps->skipped++ == 0) {
    ps->first_skipped = ps->line;
    ps->first_why = ps->skip_why;
  }
  return SPI_OK;
}

/* The message for a page read with lines skipped (or, with no load metric
 * left, the reason why it may have none). */
static void skip_note(const parse_state *ps, char *err, size_t errcap,
                      const char *head) {
  spi__errf(err, errcap,
            "%sskipped %zu line%s this version does not read "
            "(first: line %zu, %s)",
            head, ps->skipped, ps->skipped == 1 ? "" : "s", ps->first_skipped,
            ps->first_why);
}

/* Whether a last line without a line feed says the page was cut short:
 * anything but blanks, or OpenMetrics' "# EOF", which says it is whole. */
static int cut_short(const char *s, size_t n) {
  size_t b = skip_blanks(s, 0, n);
  return b != n && !is_eof(s, b, n);
}

int spi__metrics_parse_report(const char *text, size_t len, spi_load *out,
                              spi_parse_report *report, char *err,
                              size_t errcap) {
  if (!out || (!text && len)) {
    spi__errf(err, errcap, "NULL %s", out ? "text" : "output");
    return SPI_EINVAL;
  }
  if (err && errcap) err[0] = '\0';
  parse_state ps;
  memset(&ps, 0, sizeof ps);
  ps.err = err;
  ps.errcap = errcap;
  size_t pos = 0;
  while (pos < len) {
    ps.line++;
    const char *nl = memchr(text + pos, '\n', len - pos);
    size_t end = nl ? (size_t)(nl - text) : len;
    const char *s = text + pos;
    size_t n = end - pos;
    pos = nl ? end + 1 : len;
    if (n && s[n - 1] == '\r') n--;
    if (!nl && !ps.ended && cut_short(s, n))
      return fail(&ps, SPI_EPARSE,
                  "the last line has no line feed (the page was cut short?)");
    int rc = parse_line(&ps, s, n);
    if (rc != SPI_OK) return rc;
  }
  if (report) {
    report->found = ps.found;
    report->skipped = ps.skipped;
    report->first_skipped = ps.first_skipped;
  }
  if (!ps.seen[F_RUNNING] && !ps.seen[F_WAITING] && !ps.seen[F_USAGE]) {
    if (ps.skipped)
      skip_note(&ps, err, errcap,
                "no load metric found (vllm:num_requests_running|waiting, "
                "vllm:kv_cache_usage_perc, sglang:num_running_reqs, ...); ");
    else
      spi__errf(err, errcap,
                "no load metric found (vllm:num_requests_running|waiting, "
                "vllm:kv_cache_usage_perc, sglang:num_running_reqs, ...)");
    return SPI_EMISSING;
  }
  if (ps.skipped) skip_note(&ps, err, errcap, "");
  out->running = ps.sum[F_RUNNING];
  out->waiting = ps.sum[F_WAITING];
  out->kv_usage = ps.sum[F_USAGE];
  out->at_ns = 0;
  return SPI_OK;
}

int spi__metrics_parse(const char *text, size_t len, spi_load *out, char *err,
                       size_t errcap) {
  return spi__metrics_parse_report(text, len, out, NULL, err, errcap);
}

int spi_metrics_parse(const char *text, size_t len, spi_load *out) {
  if (!out || out->struct_size < sizeof(spi_load)) return SPI_EINVAL;
  spi_load tmp = *out;
  int rc = spi__metrics_parse(text, len, &tmp, NULL, 0);
  if (rc == SPI_OK) *out = tmp;
  return rc;
}

int spi_metrics_parse_v2(const char *text, size_t len, spi_load *out,
                         spi_parse_report *report, char *errbuf,
                         size_t errcap) {
  if (errbuf && errcap) errbuf[0] = '\0';
  if (!out || out->struct_size < sizeof(spi_load) || !report ||
      report->struct_size < sizeof(spi_parse_report)) {
    spi__errf(errbuf, errcap,
              "metrics: %s is NULL or its struct_size is too small",
              !out || out->struct_size < sizeof(spi_load) ? "out" : "report");
    return SPI_EINVAL;
  }
  size_t size = report->struct_size;
  memset(report, 0, sizeof *report);
  report->struct_size = size;
  spi_load tmp = *out;
  int rc = spi__metrics_parse_report(text, len, &tmp, report, errbuf, errcap);
  if (rc == SPI_OK) *out = tmp;
  return rc;
}
