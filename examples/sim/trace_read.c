/*
 * trace_read.c - a request trace from a file: its format told by content
 * (the first line that reads as one: a line that starts with '{' as JSONL,
 * trace_jsonl.c; anything else as CSV, trace_csv.c), then made into what
 * the simulator runs: arrivals from the
 * file's first, the file's hash ids as the simulator's 512-token blocks,
 * a session and a class for every request, arrivals in order, chained
 * block hashes. Bad lines are counted and skipped, never fatal.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "trace_read.h"

/* The tokens a hash id of the file stands for: the power of two, 16 to
 * 4096, for which most requests have exactly ceil(input / it) ids (a tie
 * keeps 512, Mooncake's). */
static uint32_t file_block_tokens(const sim_trace *t) {
  size_t hits[9] = {0};
  for (size_t i = 0; i < t->n; i++) {
    const sim_trace_req *q = &t->reqs[i];
    for (int k = 0; k < 9; k++) {
      uint32_t b = 16u << k;
      hits[k] += q->nblocks && (q->in_tokens + b - 1) / b == q->nblocks;
    }
  }
  int best = 5; /* 512 */
  for (int k = 0; k < 9; k++)
    if (hits[k] > hits[best]) best = k;
  return 16u << best;
}

/* A request's file ids [ids, ids + n) as the simulator's blocks, appended:
 * g ids of a smaller unit make one block (a hash of them and their count,
 * so a short last group never matches a full one); an id of a larger unit
 * makes `split` blocks, as many as its input needs. */
static int reblock(sim_trace *t, const uint64_t *ids, uint32_t n, uint32_t unit,
                   uint32_t in_tokens) {
  if (unit < SIM_BLOCK_TOKENS) {
    uint32_t g = SIM_BLOCK_TOKENS / unit;
    for (uint32_t i = 0; i < n; i += g) {
      uint32_t m = n - i < g ? n - i : g;
      uint64_t h = sim_mix64(0x47525031ull ^ m); /* "GRP1" */
      for (uint32_t j = 0; j < m; j++) h = sim_mix64(h ^ ids[i + j]);
      if (sim_trace_add_block(t, h)) return -1;
    }
    return 0;
  }
  uint32_t split = unit / SIM_BLOCK_TOKENS, need = (in_tokens + SIM_BLOCK_TOKENS - 1) / SIM_BLOCK_TOKENS;
  for (uint32_t i = 0, made = 0; i < n && made < need; i++)
    for (uint32_t j = 0; j < split && made < need; j++, made++)
      if (sim_trace_add_block(t, sim_mix64(sim_mix64(ids[i]) + j))) return -1;
  return 0;
}

/* Every request's blocks in the simulator's unit, when the file's is
 * another. 0, or -1 out of memory. */
static int to_sim_blocks(sim_trace *t, uint32_t unit) {
  if (unit == SIM_BLOCK_TOKENS) return 0;
  uint64_t *old = t->blocks;
  t->blocks = NULL, t->nb = t->bcap = 0;
  int rc = 0;
  for (size_t i = 0; i < t->n && !rc; i++) {
    sim_trace_req *q = &t->reqs[i];
    size_t off = q->block_off;
    q->block_off = t->nb;
    rc = reblock(t, old + off, q->nblocks, unit, q->in_tokens);
    q->nblocks = (uint32_t)(t->nb - q->block_off);
  }
  free(old);
  return rc;
}

/* Arrivals from the file's first, chained hashes, Mooncake's conversations
 * (trace_conv.c), classes by conversation, arrivals in order. 0, or -1 out
 * of memory. */
static int finish(sim_trace *t, int fmt, const double mix[4], uint64_t seed) {
  t->file_block_tokens = fmt == TRACE_CSV ? SIM_BLOCK_TOKENS : file_block_tokens(t);
  if (to_sim_blocks(t, t->file_block_tokens)) return -1;
  int64_t t0 = t->reqs[0].arrival_ns;
  for (size_t i = 1; i < t->n; i++)
    if (t->reqs[i].arrival_ns < t0) t0 = t->reqs[i].arrival_ns;
  for (size_t i = 0; i < t->n; i++) t->reqs[i].arrival_ns -= t0;
  sim_trace_chain(t);
  if (!t->chain) return -1;
  if (fmt == TRACE_MOONCAKE && trace_mooncake_conversations(t)) return -1;
  sim_rng r;
  sim_rng_seed(&r, seed ^ 0x54524331ull);
  for (size_t i = 0; i < t->n; i++)
    t->reqs[i].klass = sim_session_class(&r, mix, t->reqs[i].session);
  qsort(t->reqs, t->n, sizeof *t->reqs, sim_trace_cmp_arrival);
  return 0;
}

void sim_trace_speedup(sim_trace *t, double f) {
  if (!(f > 0) || f == 1) return;
  for (size_t i = 0; i < t->n; i++)
    t->reqs[i].arrival_ns = (int64_t)((double)t->reqs[i].arrival_ns / f);
}

static const char *format_name(int fmt) {
  return fmt == TRACE_BAILIAN ? "Bailian JSONL" : fmt == TRACE_CSV ? "CSV" : "Mooncake JSONL";
}

int sim_trace_read(sim_trace *t, const char *path, size_t limit,
                   const double mix[4], uint64_t seed, char *msg,
                   size_t msgcap) {
  memset(t, 0, sizeof *t);
  FILE *f = fopen(path, "rb");
  if (!f) return snprintf(msg, msgcap, "%s: cannot open", path), -1;
  int rc = sim_trace_parse(t, f, path, limit, mix, seed, msg, msgcap);
  fclose(f);
  return rc;
}

/* A line of the file. Until a line gives a request (or a CSV header names
 * the three columns), each is tried as each format: a line that starts
 * with '{' as JSONL, any other as a CSV header or row; one that gives
 * nothing is a bad line (counted) and the format stays open, so a first
 * line cut in half, or a stray one, does not decide how the rest is read.
 * 0 read or skipped, -1 out of memory. */
static int read_line(trace_reader *rd, char *line, size_t len, size_t lineno) {
  if (rd->fmt != TRACE_UNKNOWN)
    return rd->fmt == TRACE_CSV ? trace_csv_line(rd, line, lineno)
                                : trace_jsonl_line(rd, line, len, lineno);
  sim_trace *t = rd->t;
  size_t n0 = t->n;
  int rc;
  if (line[0] == '{') {
    rc = trace_jsonl_line(rd, line, len, lineno);
  } else {
    char why[96];
    int h = trace_csv_header(rd, line, why, sizeof why);
    if (h == -2) return -1;
    if (h == 1) return rd->fmt = TRACE_CSV, 0;
    if (h < 0) {
      char note[160];
      snprintf(note, sizeof note, "neither JSON nor CSV: %s", why);
      /* Three or more fields and no digit: a header with names this
       * reader does not know, so the rows under it cannot be read as time,
       * input, output. A line with digits is a row cut short (the tail of
       * a file) or a stray note, and says nothing of the rows after it. */
      const char *c = strchr(line, ',');
      if (c && strchr(c + 1, ',') && !strpbrk(line, "0123456789"))
        rd->unknown_header = 1;
      return sim_trace_note_bad(t, lineno, note), 0;
    }
    if (rd->unknown_header)
      return sim_trace_note_bad(t, lineno, "a CSV row under a header of unknown columns"), 0;
    rd->fmt = TRACE_CSV;
    rc = trace_csv_line(rd, line, lineno);
  }
  if (!rc && t->n == n0) rd->fmt = TRACE_UNKNOWN, rd->time_kind = 0;
  return rc;
}

int sim_trace_parse(sim_trace *t, FILE *f, const char *name, size_t limit,
                    const double mix[4], uint64_t seed, char *msg,
                    size_t msgcap) {
  memset(t, 0, sizeof *t);
  t->source = name;
  trace_reader rd = {.t = t};
  char *line = NULL;
  size_t cap = 0, lineno = 0;
  int rc = 0;
  ssize_t got;
  while (!rc && (got = getline(&line, &cap, f)) >= 0) {
    lineno++;
    size_t len = (size_t)got;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    /* A byte-order mark before the first line, and blanks before a line,
     * say nothing of its format. */
    char *s = line;
    if (lineno == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3;
    while (*s == ' ' || *s == '\t') s++;
    len -= (size_t)(s - line);
    if (!len) continue;
    rc = read_line(&rd, s, len, lineno);
    if (limit && t->n >= limit) break;
  }
  free(line);
  trace_map_free(&rd.chats);
  t->format = format_name(rd.fmt);
  if (!rc && !t->n) {
    /* Why: how many lines were bad, and what the first was. */
    if (t->bad_lines)
      snprintf(msg, msgcap, "%s: no usable request (%zu bad line%s, the first %s)", name,
               t->bad_lines, t->bad_lines == 1 ? "" : "s", t->first_bad);
    else
      snprintf(msg, msgcap, "%s: no usable request (no line of text)", name);
    sim_trace_free(t);
    return -1;
  }
  if (!rc && !finish(t, rd.fmt, mix, seed)) return 0;
  snprintf(msg, msgcap, "%s: out of memory", name);
  sim_trace_free(t);
  return -1;
}
