/* trace.c - the built-in request generator, Mooncake JSONL and Azure CSV
 * readers, and SkyPilot spot-trace reading and generation. Bad lines are
 * counted and skipped, never fatal. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "sim.h"

/* ---------------------------------------------------------------- PRNG */

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void sim_rng_seed(sim_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) {
    seed += 0x9e3779b97f4a7c15ull;
    r->s[i] = sim_mix64(seed);
  }
}

uint64_t sim_rng_next(sim_rng *r) { /* xoshiro256** */
  uint64_t *s = r->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

double sim_rng_unit(sim_rng *r) {
  return (double)(sim_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

static double rng_exp(sim_rng *r, double mean) {
  return -mean * log(1.0 - sim_rng_unit(r));
}

static uint32_t pick_class(sim_rng *r, const double mix[4]) {
  double u = sim_rng_unit(r) * (mix[1] + mix[2] + mix[3]);
  if (u < mix[1]) return SPI_CLASS_GOLD;
  if (u < mix[1] + mix[2]) return SPI_CLASS_SILVER;
  return SPI_CLASS_BRONZE;
}

/* -------------------------------------------------------------- traces */

void sim_trace_free(sim_trace *t) {
  free(t->reqs);
  free(t->blocks);
  free(t->chain);
  memset(t, 0, sizeof *t);
}

static sim_trace_req *add_req(sim_trace *t) {
  if (t->n == t->cap) {
    size_t c = t->cap ? t->cap * 2 : 1024;
    sim_trace_req *p = realloc(t->reqs, c * sizeof *p);
    if (!p) return NULL;
    t->reqs = p;
    t->cap = c;
  }
  sim_trace_req *q = &t->reqs[t->n];
  memset(q, 0, sizeof *q);
  q->block_off = t->nb;
  return q;
}

static int add_block(sim_trace *t, uint64_t id) {
  if (t->nb == t->bcap) {
    size_t c = t->bcap ? t->bcap * 2 : 8192;
    uint64_t *p = realloc(t->blocks, c * sizeof *p);
    if (!p) return -1;
    t->blocks = p;
    t->bcap = c;
  }
  t->blocks[t->nb++] = id;
  return 0;
}

void sim_trace_chain(sim_trace *t) {
  free(t->chain);
  t->chain = malloc((t->nb ? t->nb : 1) * sizeof *t->chain);
  if (!t->chain) return;
  for (size_t i = 0; i < t->n; i++) {
    const sim_trace_req *q = &t->reqs[i];
    uint64_t h = 0x5350494d43484e31ull; /* "SPIMCHN1" */
    for (uint32_t b = 0; b < q->nblocks; b++) {
      h = sim_mix64(h ^ sim_mix64(t->blocks[q->block_off + b]));
      t->chain[q->block_off + b] = h;
    }
  }
}

/*
 * The generator: conversations over shared system prompts. A few prompt
 * families (Zipf-popular) share long prefixes; each request continues one
 * of a pool of live conversations (its earlier turns are its prefix) or
 * starts a new one; output lengths are long-tailed.
 */
int sim_trace_generate(sim_trace *t, const sim_gen_opts *o) {
  enum { FAMILIES = 24, SESSIONS = 4096, MAX_TURN_BLOCKS = 48 };
  sim_rng r;
  sim_rng_seed(&r, o->seed ^ 0x47454e31ull);
  memset(t, 0, sizeof *t);
  t->source = "generator";
  uint64_t next_id = 1u << 20;
  uint32_t fam_len[FAMILIES];
  double fam_cdf[FAMILIES], sum = 0;
  for (int f = 0; f < FAMILIES; f++) {
    fam_len[f] = 2 + (uint32_t)(sim_rng_next(&r) % 10);
    sum += 1.0 / (f + 1);
    fam_cdf[f] = sum;
  }
  typedef struct {
    uint32_t fam, len, klass;
    uint64_t ids[MAX_TURN_BLOCKS];
  } session;
  session *ss = calloc(SESSIONS, sizeof *ss);
  if (!ss) return -1;
  double now = 0;
  for (size_t i = 0; i < o->requests; i++) {
    now += rng_exp(&r, 1.0 / o->rate_per_s);
    session *s = &ss[sim_rng_next(&r) % SESSIONS];
    if (s->len == 0 || s->len + 3 > MAX_TURN_BLOCKS ||
        sim_rng_unit(&r) < 0.25) { /* a new conversation */
      double u = sim_rng_unit(&r) * sum;
      uint32_t f = 0;
      while (f + 1 < FAMILIES && fam_cdf[f] < u) f++;
      s->fam = f;
      s->len = 0;
      s->klass = pick_class(&r, o->mix);
      for (uint32_t b = 0; b < fam_len[f]; b++)
        s->ids[s->len++] = ((uint64_t)f << 8) | b; /* shared system prompt */
    }
    uint32_t add = 1 + (uint32_t)(sim_rng_next(&r) % 3);
    for (uint32_t b = 0; b < add; b++) s->ids[s->len++] = next_id++;
    sim_trace_req *q = add_req(t);
    if (!q) break;
    q->arrival_ns = (int64_t)(now * 1e9);
    q->nblocks = s->len;
    q->in_tokens = s->len * SIM_BLOCK_TOKENS -
                   (uint32_t)(sim_rng_next(&r) % (SIM_BLOCK_TOKENS / 2));
    q->klass = sim_rng_unit(&r) < 0.8 ? s->klass : pick_class(&r, o->mix);
    /* Interactive answers are short; batch work (reports, code) has the
     * long generations, a third of them longer than a 30 s notice can
     * drain. */
    q->out_tokens =
        16 + (uint32_t)(q->klass == 3 ? (sim_rng_unit(&r) < 0.3
                                             ? fmin(rng_exp(&r, 1500.0), 8000.0)
                                             : fmin(rng_exp(&r, 300.0), 2000.0))
                                      : fmin(rng_exp(&r, 100.0), 500.0));
    for (uint32_t b = 0; b < s->len; b++)
      if (add_block(t, s->ids[b])) break;
    t->n++;
  }
  free(ss);
  sim_trace_chain(t);
  return 0;
}

static void note_bad(sim_trace *t, size_t line, const char *why) {
  if (!t->bad_lines++)
    snprintf(t->first_bad, sizeof t->first_bad, "line %zu: %s", line, why);
}

static int read_mooncake_line(sim_trace *t, const char *line, size_t len,
                              size_t lineno, sim_rng *r, const double mix[4]) {
  cJSON *o = cJSON_ParseWithLength(line, len);
  if (!o) return note_bad(t, lineno, "malformed JSON"), 0;
  const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "timestamp");
  const cJSON *in = cJSON_GetObjectItemCaseSensitive(o, "input_length");
  const cJSON *out = cJSON_GetObjectItemCaseSensitive(o, "output_length");
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "hash_ids");
  if (!cJSON_IsNumber(ts) || !cJSON_IsNumber(in) || !cJSON_IsNumber(out) ||
      !cJSON_IsArray(ids) || ts->valuedouble < 0 || in->valuedouble < 1 ||
      out->valuedouble < 1 || in->valuedouble > 4e6 || out->valuedouble > 1e6) {
    cJSON_Delete(o);
    return note_bad(t, lineno, "missing or out-of-range field"), 0;
  }
  size_t save_nb = t->nb;
  sim_trace_req *q = add_req(t);
  if (!q) return cJSON_Delete(o), -1;
  const cJSON *id;
  cJSON_ArrayForEach(id, ids) {
    if (!cJSON_IsNumber(id) || id->valuedouble < 0) {
      t->nb = save_nb;
      cJSON_Delete(o);
      return note_bad(t, lineno, "hash_ids holds a non-id"), 0;
    }
    if (add_block(t, (uint64_t)id->valuedouble)) return cJSON_Delete(o), -1;
  }
  q->arrival_ns = (int64_t)(ts->valuedouble * 1e6);
  q->in_tokens = (uint32_t)in->valuedouble;
  q->out_tokens = (uint32_t)out->valuedouble;
  q->nblocks = (uint32_t)(t->nb - q->block_off);
  q->klass = pick_class(r, mix);
  t->n++;
  cJSON_Delete(o);
  return 0;
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

static int read_azure_line(sim_trace *t, char *line, size_t lineno,
                           sim_rng *r, const double mix[4], int64_t *t0) {
  int y, mo, d, h, mi;
  double sec;
  long ctx, gen;
  if (sscanf(line, "%d-%d-%d %d:%d:%lf,%ld,%ld", &y, &mo, &d, &h, &mi, &sec,
             &ctx, &gen) != 8 ||
      mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec < 0 ||
      sec >= 61 || ctx < 1 || gen < 1 || ctx > 4000000 || gen > 1000000)
    return note_bad(t, lineno, "not TIMESTAMP,ContextTokens,GeneratedTokens"), 0;
  int64_t ns = (days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60) *
                   1000000000ll + (int64_t)(sec * 1e9);
  if (*t0 < 0) *t0 = ns;
  sim_trace_req *q = add_req(t);
  if (!q) return -1;
  q->arrival_ns = ns - *t0 < 0 ? 0 : ns - *t0;
  q->in_tokens = (uint32_t)ctx;
  q->out_tokens = (uint32_t)gen;
  /* No prefix information: every block is this request's own. */
  q->nblocks = (q->in_tokens + SIM_BLOCK_TOKENS - 1) / SIM_BLOCK_TOKENS;
  for (uint32_t b = 0; b < q->nblocks; b++)
    if (add_block(t, (1ull << 62) | ((uint64_t)t->n << 16) | b)) return -1;
  q->klass = pick_class(r, mix);
  t->n++;
  return 0;
}

static int cmp_arrival(const void *a, const void *b) {
  const sim_trace_req *x = a, *y = b;
  if (x->arrival_ns != y->arrival_ns) return x->arrival_ns < y->arrival_ns ? -1 : 1;
  return x->block_off < y->block_off ? -1 : x->block_off > y->block_off;
}

int sim_trace_read(sim_trace *t, const char *path, size_t limit,
                   const double mix[4], uint64_t seed, char *msg,
                   size_t msgcap) {
  memset(t, 0, sizeof *t);
  t->source = path;
  FILE *f = fopen(path, "rb");
  if (!f) return snprintf(msg, msgcap, "%s: cannot open", path), -1;
  sim_rng r;
  sim_rng_seed(&r, seed ^ 0x54524331ull);
  char *line = NULL;
  size_t cap = 0, lineno = 0;
  int64_t t0 = -1;
  int fmt = 0; /* 1 mooncake, 2 azure */
  ssize_t got;
  while ((got = getline(&line, &cap, f)) >= 0) {
    lineno++;
    size_t len = (size_t)got;
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (!len) continue;
    if (!fmt) {
      if (line[0] == '{') fmt = 1;
      else if (!strncmp(line, "TIMESTAMP", 9)) { fmt = 2; continue; }
      else fmt = 2;
    }
    int rc = fmt == 1 ? read_mooncake_line(t, line, len, lineno, &r, mix)
                      : read_azure_line(t, line, lineno, &r, mix, &t0);
    if (rc) {
      snprintf(msg, msgcap, "%s: out of memory", path);
      free(line);
      fclose(f);
      return -1;
    }
    if (limit && t->n >= limit) break;
  }
  free(line);
  fclose(f);
  if (!t->n) return snprintf(msg, msgcap, "%s: no usable request", path), -1;
  qsort(t->reqs, t->n, sizeof *t->reqs, cmp_arrival);
  sim_trace_chain(t);
  return 0;
}

/* --------------------------------------------------------- spot traces */

/* Notice lead time by cloud: AWS instance-action 120 s, GCP preemption
 * 30 s, Azure Scheduled Events Preempt 30 s. */
static void set_cloud(sim_spot_trace *s, const char *cloud) {
  snprintf(s->cloud, sizeof s->cloud, "%s", cloud);
  s->lead_s = strcmp(cloud, "aws") ? 30.0 : 120.0;
}

/* "aws:FILE", "gcp:FILE" or "azure:FILE" name the cloud; a bare FILE is
 * taken as GCP when its path says "gcp", else as AWS. */
int sim_spot_read(sim_spot_trace *s, const char *arg, char *msg,
                  size_t msgcap) {
  memset(s, 0, sizeof *s);
  static const char *const CLOUDS[3] = {"aws", "gcp", "azure"};
  const char *path = arg, *cloud = strstr(arg, "gcp") ? "gcp" : "aws";
  for (int k = 0; k < 3; k++) {
    size_t n = strlen(CLOUDS[k]);
    if (!strncmp(arg, CLOUDS[k], n) && arg[n] == ':') {
      cloud = CLOUDS[k];
      path = arg + n + 1;
      break;
    }
  }
  FILE *f = fopen(path, "rb");
  if (!f) return snprintf(msg, msgcap, "%s: cannot open", path), -1;
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 65536 > cap) {
      cap = cap ? cap * 2 : 262144;
      char *p = realloc(buf, cap);
      if (!p) { free(buf); fclose(f); return snprintf(msg, msgcap, "out of memory"), -1; }
      buf = p;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (!n) break;
  }
  fclose(f);
  const char *end = NULL;
  cJSON *o = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
  if (!o) {
    snprintf(msg, msgcap, "%s: malformed JSON at byte %td", path,
             end ? end - buf : 0);
    free(buf);
    return -1;
  }
  free(buf);
  const cJSON *md = cJSON_GetObjectItemCaseSensitive(o, "metadata");
  const cJSON *gap = cJSON_GetObjectItemCaseSensitive(md, "gap_seconds");
  const cJSON *data = cJSON_GetObjectItemCaseSensitive(o, "data");
  if (!cJSON_IsNumber(gap) || gap->valuedouble <= 0 || !cJSON_IsArray(data)) {
    cJSON_Delete(o);
    return snprintf(msg, msgcap, "%s: needs metadata.gap_seconds > 0 and data[]", path), -1;
  }
  s->gap_s = gap->valuedouble;
  size_t n = (size_t)cJSON_GetArraySize(data);
  s->v = calloc(n ? n : 1, sizeof *s->v);
  if (!s->v) { cJSON_Delete(o); return snprintf(msg, msgcap, "out of memory"), -1; }
  const cJSON *x;
  cJSON_ArrayForEach(x, data) /* a non-number tick reads as unavailable */
    s->v[s->n++] = cJSON_IsNumber(x) && x->valuedouble > 0 ? 1 : 0;
  cJSON_Delete(o);
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  size_t zl = strcspn(base, "_.");
  snprintf(s->zone, sizeof s->zone, "%.*s", (int)(zl < 40 ? zl : 40), base);
  set_cloud(s, cloud);
  return 0;
}

/* Built-in capacity: up for exponential stretches (mean 6 min), down for
 * shorter ones (mean 90 s), on 15 s ticks; the first minute is up. */
void sim_spot_generate(sim_spot_trace *s, const char *zone, const char *cloud,
                       double horizon_s, uint64_t seed) {
  memset(s, 0, sizeof *s);
  sim_rng r;
  sim_rng_seed(&r, seed);
  s->gap_s = 15;
  s->n = (size_t)(horizon_s / s->gap_s) + 2;
  s->v = calloc(s->n, sizeof *s->v);
  if (!s->v) { s->n = 0; return; }
  size_t i = 0;
  int up = 1;
  while (i < s->n) {
    double d = up ? (i == 0 ? 60 : 0) + rng_exp(&r, 360) : 30 + rng_exp(&r, 60);
    size_t ticks = (size_t)(d / s->gap_s) + 1;
    for (size_t k = 0; k < ticks && i < s->n; k++) s->v[i++] = up;
    up = !up;
  }
  snprintf(s->zone, sizeof s->zone, "%s", zone);
  set_cloud(s, cloud);
}

void sim_spot_free(sim_spot_trace *s) {
  free(s->v);
  memset(s, 0, sizeof *s);
}
