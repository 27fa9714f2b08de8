/*
 * trace_csv.c - request traces as CSV: a time, an input and an output
 * column. A header line names them (Azure's TIMESTAMP, ContextTokens,
 * GeneratedTokens; BurstGPT's Timestamp, Request tokens, Response tokens;
 * SplitwiseSim's and Vidur's names; the rest in COLUMN_NAMES), in any
 * order and among other columns, which are ignored; with no header they
 * are the first three. A time is a date and
 * time (2023-11-16 18:17:03.97996, with T, Z or an offset such as +00:00
 * allowed) or a number of seconds. CSV traces carry no prefix information:
 * every request's blocks are its own. A request that produced no output (a
 * failed one, as BurstGPT logs them) is a skipped line.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "trace_read.h"

enum { COL_TIME, COL_IN, COL_OUT };

/* The names each column goes by in published traces and simulators'
 * inputs (Azure, BurstGPT, SplitwiseSim's arrival_timestamp / prompt_size
 * / token_size, Vidur's arrived_at / num_prefill_tokens /
 * num_decode_tokens, and the usual spellings), matched whole and without
 * case. */
static const char *const COLUMN_NAMES[3][12] = {
    {"timestamp", "time", "arrival_time", "arrival_timestamp", "arrived_at", "arrival",
     "request_time", NULL},
    {"contexttokens", "context_tokens", "request tokens", "input_tokens", "input_length",
     "prompt_tokens", "prompt_size", "num_prefill_tokens", "prompt_len", "input_len",
     "num_prompt_tokens", NULL},
    {"generatedtokens", "generated_tokens", "response tokens", "output_tokens",
     "output_length", "completion_tokens", "token_size", "num_decode_tokens", "output_len",
     "response_len", "num_output_tokens", NULL},
};

/* The next field of a line at *p (cut at its comma), spaces and one pair
 * of double quotes taken off; NULL after the last. */
static char *next_field(char **p) {
  char *f = *p;
  if (!f) return NULL;
  char *c = strchr(f, ',');
  if (c) *c = 0;
  *p = c ? c + 1 : NULL;
  while (*f == ' ' || *f == '\t') f++;
  size_t n = strlen(f);
  while (n && (f[n - 1] == ' ' || f[n - 1] == '\t')) f[--n] = 0;
  if (n >= 2 && f[0] == '"' && f[n - 1] == '"') f[n - 1] = 0, f++;
  return f;
}

static int column_kind(const char *name) {
  for (int k = 0; k < 3; k++)
    for (int i = 0; COLUMN_NAMES[k][i]; i++)
      if (!strcasecmp(name, COLUMN_NAMES[k][i])) return k;
  return -1;
}

int trace_csv_header(trace_reader *rd, const char *line, char *msg, size_t msgcap) {
  const char *s = line;
  while (*s == ' ' || *s == '"') s++;
  if (isdigit((unsigned char)*s)) {
    rd->col[COL_TIME] = 0, rd->col[COL_IN] = 1, rd->col[COL_OUT] = 2, rd->ncols = 3;
    return 0;
  }
  /* A copy of the whole header, however wide: columns past any fixed
   * width would be lost. */
  char *buf = strdup(line);
  if (!buf) {
    snprintf(msg, msgcap, "out of memory");
    return -2;
  }
  char *p = buf, *f;
  rd->col[0] = rd->col[1] = rd->col[2] = -1;
  for (int i = 0; (f = next_field(&p)) != NULL; i++) {
    int k = column_kind(f);
    if (k >= 0 && rd->col[k] < 0) rd->col[k] = i;
  }
  free(buf);
  static const char *const what[3] = {"time", "input-token", "output-token"};
  for (int k = 0; k < 3; k++)
    if (rd->col[k] < 0) {
      snprintf(msg, msgcap, "CSV header names no %s column (such as %s)", what[k],
               COLUMN_NAMES[k][0]);
      return -1;
    }
  rd->ncols = 0;
  for (int k = 0; k < 3; k++)
    if (rd->col[k] + 1 > rd->ncols) rd->ncols = rd->col[k] + 1;
  return 1;
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/* n digits at *p as a number, or -1. */
static int digits(const char **p, int n) {
  int v = 0;
  for (int i = 0; i < n; i++, (*p)++) {
    if (!isdigit((unsigned char)**p)) return -1;
    v = v * 10 + (**p - '0');
  }
  return v;
}

/* After the seconds: nothing, Z, or an offset ±HH[:]MM; its seconds east of
 * UTC in *off. 0, or -1 when it is something else. */
static int utc_offset(const char *p, int64_t *off) {
  *off = 0;
  if (!*p || ((*p == 'Z' || *p == 'z') && !p[1])) return 0;
  if (*p != '+' && *p != '-') return -1;
  int sign = *p++ == '-' ? -1 : 1, h = digits(&p, 2);
  if (*p == ':') p++;
  int m = digits(&p, 2);
  if (h < 0 || h > 23 || m < 0 || m > 59 || *p) return -1;
  *off = sign * (h * 3600 + m * 60);
  return 0;
}

/* Step over the separator c at *p: 1, or 0 (and *p stays) when it is not
 * there, so a field cut short is never read past its end. */
static int sep(const char **p, char c) {
  if (**p != c) return 0;
  (*p)++;
  return 1;
}

/* "YYYY-MM-DD[ T]HH:MM:SS[.frac][offset]" as ns since 1970 (UTC), years
 * 1970-2200 so it fits in int64. 0, or -1. */
static int parse_datetime(const char *p, int64_t *ns) {
  int y = digits(&p, 4);
  int mo = y >= 0 && sep(&p, '-') ? digits(&p, 2) : -1;
  int d = mo >= 0 && sep(&p, '-') ? digits(&p, 2) : -1;
  if (y < 1970 || y > 2200 || mo < 1 || mo > 12 || d < 1 || d > 31 ||
      !(sep(&p, ' ') || sep(&p, 'T')))
    return -1;
  int h = digits(&p, 2);
  int mi = h >= 0 && sep(&p, ':') ? digits(&p, 2) : -1;
  int s = mi >= 0 && sep(&p, ':') ? digits(&p, 2) : -1;
  if (h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 || s > 60) return -1;
  int64_t frac = 0, scale = 1000000000;
  if (*p == '.')
    for (p++; isdigit((unsigned char)*p); p++)
      if (scale > 1) scale /= 10, frac += (*p - '0') * scale;
  int64_t off;
  if (utc_offset(p, &off)) return -1;
  int64_t secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s - off;
  *ns = secs * 1000000000ll + frac;
  return 0;
}

/* A time field: a date and time, or seconds (from any zero) up to ~285
 * years; *kind (0 unknown, 1 dates, 2 seconds) is the file's, taken from
 * its first time, and a field of the other kind is refused (a lone "0" in
 * a file of dates would become its zero, decades before the others). 0,
 * or -1. */
static int parse_time(const char *f, int *kind, int64_t *ns) {
  if (!parse_datetime(f, ns)) {
    if (*kind == 2) return -1;
    *kind = 1;
    return 0;
  }
  char *end;
  double s = strtod(f, &end);
  if (end == f || *end || !(s >= 0 && s <= 9e9) || *kind == 1) return -1;
  *kind = 2;
  *ns = (int64_t)(s * 1e9);
  return 0;
}

/* A token count: a whole number 0..max (as some exports write 12.0). */
static long parse_count(const char *f, long max) {
  char *end;
  double v = strtod(f, &end);
  if (end == f || *end || !(v >= 0 && v <= (double)max) || v != (double)(long)v) return -1;
  return (long)v;
}

int trace_csv_line(trace_reader *rd, char *line, size_t lineno) {
  sim_trace *t = rd->t;
  char *p = line, *f, *field[3] = {NULL, NULL, NULL};
  for (int i = 0; i < rd->ncols && (f = next_field(&p)) != NULL; i++)
    for (int k = 0; k < 3; k++)
      if (rd->col[k] == i) field[k] = f;
  int64_t ns;
  if (!field[COL_TIME] || !field[COL_IN] || !field[COL_OUT])
    return sim_trace_note_bad(t, lineno, "fewer columns than the header"), 0;
  long ctx = parse_count(field[COL_IN], 4000000), gen = parse_count(field[COL_OUT], 1000000);
  if (ctx < 1 || gen < 0 || parse_time(field[COL_TIME], &rd->time_kind, &ns))
    return sim_trace_note_bad(t, lineno, "not a time, input tokens and output tokens"), 0;
  if (gen == 0) return sim_trace_note_bad(t, lineno, "no output tokens (a failed request)"), 0;
  sim_trace_req *q = sim_trace_add_req(t);
  if (!q) return -1;
  q->arrival_ns = ns;
  q->in_tokens = (uint32_t)ctx;
  q->out_tokens = (uint32_t)gen;
  /* No prefix information: every block is this request's own. */
  q->nblocks = (q->in_tokens + SIM_BLOCK_TOKENS - 1) / SIM_BLOCK_TOKENS;
  for (uint32_t b = 0; b < q->nblocks; b++)
    if (sim_trace_add_block(t, (1ull << 62) | ((uint64_t)t->n << 16) | b)) return -1;
  q->session = ((uint64_t)1 << 63) | t->n; /* no sessions: each its own */
  t->n++;
  return 0;
}
