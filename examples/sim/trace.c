/* trace.c - the built-in request generator, what the request-trace readers
 * share (trace_read.c, trace_jsonl.c, trace_csv.c), and SkyPilot spot-trace
 * reading and generation. Bad lines are counted and skipped, never fatal. */
#include <cjson/cJSON.h>
#include <dirent.h>
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

/* A session's class: the same for every request of the session, drawn
 * from the mix with the run's seed (r only carries the seed). */
uint32_t sim_session_class(const sim_rng *r, const double mix[4], uint64_t session) {
  sim_rng x;
  sim_rng_seed(&x, r->s[0] ^ sim_mix64(session));
  return pick_class(&x, mix);
}

/* -------------------------------------------------------------- traces */

void sim_trace_free(sim_trace *t) {
  free(t->reqs);
  free(t->blocks);
  free(t->chain);
  free(t->ids);
  memset(t, 0, sizeof *t);
}

sim_trace_req *sim_trace_add_req(sim_trace *t) {
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

int sim_trace_add_block(sim_trace *t, uint64_t id) {
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
  free(t->ids);
  t->chain = malloc((t->nb ? t->nb : 1) * sizeof *t->chain);
  t->ids = malloc((t->nb ? t->nb : 1) * SIM_IDS_PER_BLOCK * sizeof *t->ids);
  if (!t->chain || !t->ids) {
    free(t->chain);
    free(t->ids);
    t->chain = NULL, t->ids = NULL;
    return;
  }
  /* The token ids a block stands for, made once: a request's ids are then
   * the contiguous run of its blocks' ids. */
  for (size_t b = 0; b < t->nb; b++) {
    uint64_t h = sim_mix64(t->blocks[b] ^ 0x424c4b31ull);
    for (uint32_t k = 0; k < SIM_IDS_PER_BLOCK; k++)
      t->ids[b * SIM_IDS_PER_BLOCK + k] = (uint32_t)(sim_mix64(h + k) % 128000u);
  }
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
 * The generator: named families of traffic with the patterns real traffic
 * has. Every family builds prompts as conversations: a conversation's turn
 * is its earlier turns plus 1-3 new blocks, so its earlier turns are its
 * prefix. The families differ in what comes before the conversation and how
 * requests arrive:
 *
 *   mixed          Zipf-popular system prompts (24 of 2-11 blocks); the
 *                  default, and the traffic of earlier releases.
 *   global-prompt  one 4-block system prompt in front of everything, then
 *                  the mixed family's prompts.
 *   tenants        a 2-block global prompt, then one of 32 Zipf-popular
 *                  tenants' own prompts (3-8 blocks); the class is the
 *                  tenant's.
 *   long-sessions  few conversations that run for up to 160 blocks (80k
 *                  tokens) before they restart.
 *   agents         tool-agent loops: a task makes 4-24 calls 0.3-3 s apart,
 *                  each adding one tool-output block, short answers; six
 *                  agent types share their tool prompts (6 blocks).
 *   bursts         the mixed family, arriving in bursts: one minute in six
 *                  at 4x the mean rate, the rest at 0.4x.
 *   long-gen       the mixed family with long generations for every
 *                  non-gold request (1,500-8,000 tokens), so a 30 s notice
 *                  cannot drain them.
 *   documents      questions over shared documents (retrieval, document
 *                  QA): a 2-block instruction in front of everything, then
 *                  one of 1,000 Zipf-popular documents (4-16 blocks, 2k-8k
 *                  tokens), then the question; short follow-ups. More
 *                  distinct documents than one replica's KV holds, so
 *                  where a document lives decides the hit rate.
 *
 * Classes are drawn per conversation (per tenant in "tenants"), never per
 * request, so the turns of one conversation share a class.
 */

static const char *const FAMILY_NAMES[SIM_FAMILIES] = {
    "mixed",  "global-prompt", "tenants",  "long-sessions",
    "agents", "bursts",        "long-gen", "documents"};

const char *sim_family_name(int f) {
  return f >= 0 && f < SIM_FAMILIES ? FAMILY_NAMES[f] : "?";
}

int sim_family_parse(const char *name, int *out) {
  for (int f = 0; f < SIM_FAMILIES; f++)
    if (!strcmp(name, FAMILY_NAMES[f])) return *out = f, 0;
  return -1;
}

enum { GEN_FAMILIES = 24, GEN_TENANTS = 32, GEN_DOCS = 1000, GEN_MAX_BLOCKS = 176 };

typedef struct gen_session {
  uint64_t id;
  uint32_t len, klass;
  uint64_t ids[GEN_MAX_BLOCKS];
} gen_session;

typedef struct gen_state {
  sim_trace *t;
  const sim_gen_opts *o;
  sim_rng r;
  uint64_t next_id, next_session;
  /* Cumulative Zipf weights, 1 + 1/2 + ... + 1/(k+1); the first n serve a
   * pick among n (GEN_DOCS is the largest n). */
  double zipf[GEN_DOCS];
  uint32_t fam_len[GEN_FAMILIES], tenant_len[GEN_TENANTS], tenant_class[GEN_TENANTS];
  uint32_t doc_len[GEN_DOCS];
} gen_state;

/* One of n by Zipf popularity: the first whose cumulative weight reaches
 * a uniform draw over the n weights. */
static uint32_t zipf_pick(gen_state *g, uint32_t n) {
  double u = sim_rng_unit(&g->r) * g->zipf[n - 1];
  uint32_t lo = 0, hi = n - 1;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (g->zipf[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

static uint32_t out_tokens(gen_state *g, uint32_t klass) {
  sim_rng *r = &g->r;
  if (g->o->family == SIM_FAMILY_LONG_GEN && klass != SPI_CLASS_GOLD)
    return 1500 + (uint32_t)fmin(rng_exp(r, 2000.0), 6500.0);
  if (g->o->family == SIM_FAMILY_AGENTS) return 30 + (uint32_t)fmin(rng_exp(r, 60.0), 400.0);
  /* Interactive answers are short; batch work (reports, code) has the
   * long generations, a third of them longer than a 30 s notice can drain. */
  return 16 + (uint32_t)(klass == 3 ? (sim_rng_unit(r) < 0.3 ? fmin(rng_exp(r, 1500.0), 8000.0)
                                                             : fmin(rng_exp(r, 300.0), 2000.0))
                                    : fmin(rng_exp(r, 100.0), 500.0));
}

/* A new conversation in slot s: its fixed prefix and its class. */
static void gen_restart(gen_state *g, gen_session *s) {
  int fam = g->o->family;
  s->len = 0;
  s->id = ++g->next_session;
  s->klass = pick_class(&g->r, g->o->mix);
  uint32_t global = fam == SIM_FAMILY_GLOBAL_PROMPT ? 4
                    : fam == SIM_FAMILY_TENANTS || fam == SIM_FAMILY_DOCUMENTS ? 2
                                                                                : 0;
  for (uint32_t b = 0; b < global; b++) s->ids[s->len++] = (7ull << 40) | b;
  if (fam == SIM_FAMILY_TENANTS) {
    uint32_t t = zipf_pick(g, GEN_TENANTS);
    s->klass = g->tenant_class[t];
    s->id = (1ull << 62) | t; /* the tenant is the unit of class */
    for (uint32_t b = 0; b < g->tenant_len[t]; b++) s->ids[s->len++] = (8ull << 40) | (t << 8) | b;
  } else if (fam == SIM_FAMILY_DOCUMENTS) {
    uint32_t d = zipf_pick(g, GEN_DOCS);
    for (uint32_t b = 0; b < g->doc_len[d]; b++)
      s->ids[s->len++] = (10ull << 40) | ((uint64_t)d << 8) | b;
  } else if (fam == SIM_FAMILY_AGENTS) {
    uint32_t a = (uint32_t)(sim_rng_next(&g->r) % 6);
    for (uint32_t b = 0; b < 6; b++) s->ids[s->len++] = (9ull << 40) | (a << 8) | b;
  } else {
    uint32_t f = zipf_pick(g, GEN_FAMILIES);
    for (uint32_t b = 0; b < g->fam_len[f]; b++) s->ids[s->len++] = ((uint64_t)f << 8) | b;
  }
}

static int gen_emit(gen_state *g, gen_session *s, double at, uint32_t add) {
  uint32_t cap = g->o->family == SIM_FAMILY_LONG_SESSIONS ? GEN_MAX_BLOCKS - 16 : 48;
  if (s->len + add > cap) gen_restart(g, s);
  for (uint32_t b = 0; b < add; b++) s->ids[s->len++] = g->next_id++;
  sim_trace_req *q = sim_trace_add_req(g->t);
  if (!q) return -1;
  q->arrival_ns = (int64_t)(at * 1e9);
  q->nblocks = s->len;
  q->in_tokens = s->len * SIM_BLOCK_TOKENS - (uint32_t)(sim_rng_next(&g->r) % (SIM_BLOCK_TOKENS / 2));
  q->klass = s->klass;
  q->session = s->id;
  q->out_tokens = out_tokens(g, q->klass);
  for (uint32_t b = 0; b < s->len; b++)
    if (sim_trace_add_block(g->t, s->ids[b])) return -1;
  g->t->n++;
  return 0;
}

/* The arrival-rate multiplier at time t: bursts one minute in six. */
static double burst_rate(gen_state *g, double t) {
  if (g->o->family != SIM_FAMILY_BURSTS) return 1.0;
  uint64_t minute = (uint64_t)(t / 60.0);
  return sim_mix64(minute ^ g->o->seed ^ 0x42555253ull) % 6 == 0 ? 4.0 : 0.4;
}

int sim_trace_generate(sim_trace *t, const sim_gen_opts *o) {
  int fam = o->family;
  uint32_t nsess = fam == SIM_FAMILY_LONG_SESSIONS ? 512 : 4096;
  double new_conv = fam == SIM_FAMILY_LONG_SESSIONS ? 0.02 : fam == SIM_FAMILY_DOCUMENTS ? 0.5 : 0.25;
  gen_state g;
  memset(&g, 0, sizeof g);
  memset(t, 0, sizeof *t);
  t->source = "generator";
  t->format = "generator";
  t->file_block_tokens = SIM_BLOCK_TOKENS;
  g.t = t, g.o = o;
  sim_rng_seed(&g.r, o->seed ^ 0x47454e31ull);
  g.next_id = 1u << 20;
  double sum = 0;
  for (int f = 0; f < GEN_DOCS; f++) {
    sum += 1.0 / (f + 1);
    g.zipf[f] = sum;
  }
  for (int f = 0; f < GEN_FAMILIES; f++) g.fam_len[f] = 2 + (uint32_t)(sim_rng_next(&g.r) % 10);
  for (int f = 0; f < GEN_TENANTS; f++) {
    g.tenant_len[f] = 3 + (uint32_t)(sim_rng_next(&g.r) % 6);
    g.tenant_class[f] = pick_class(&g.r, o->mix);
  }
  if (fam == SIM_FAMILY_DOCUMENTS) /* drawn only here: other families keep their streams */
    for (int d = 0; d < GEN_DOCS; d++) g.doc_len[d] = 4 + (uint32_t)(sim_rng_next(&g.r) % 13);
  gen_session *ss = calloc(nsess, sizeof *ss);
  if (!ss) return -1;
  double now = 0;
  int rc = 0;
  while (t->n < o->requests && !rc) {
    now += rng_exp(&g.r, 1.0 / (o->rate_per_s * burst_rate(&g, now)));
    gen_session *s = &ss[sim_rng_next(&g.r) % nsess];
    if (fam == SIM_FAMILY_AGENTS) {
      /* One agent task: a loop of tool calls, each one block longer. */
      gen_restart(&g, s);
      uint32_t calls = 4 + (uint32_t)(sim_rng_next(&g.r) % 21);
      double at = now;
      for (uint32_t c = 0; c < calls && t->n < o->requests && !rc; c++) {
        rc = gen_emit(&g, s, at, c ? 1 : 2);
        at += 0.3 + 2.7 * sim_rng_unit(&g.r);
      }
      continue; /* tasks overlap: the next starts at its own arrival */
    }
    if (s->len == 0 || sim_rng_unit(&g.r) < new_conv) gen_restart(&g, s);
    rc = gen_emit(&g, s, now, 1 + (uint32_t)(sim_rng_next(&g.r) % 3));
  }
  free(ss);
  if (rc) return -1;
  qsort(t->reqs, t->n, sizeof *t->reqs, sim_trace_cmp_arrival);
  sim_trace_chain(t);
  return 0;
}

void sim_oom(const char *what) {
  fprintf(stderr, "spotinfer_sim: out of memory (%s)\n", what);
  exit(1);
}

void sim_trace_note_bad(sim_trace *t, size_t line, const char *why) {
  if (!t->bad_lines++)
    snprintf(t->first_bad, sizeof t->first_bad, "line %zu: %s", line, why);
}

int sim_trace_cmp_arrival(const void *a, const void *b) {
  const sim_trace_req *x = a, *y = b;
  if (x->arrival_ns != y->arrival_ns) return x->arrival_ns < y->arrival_ns ? -1 : 1;
  return x->block_off < y->block_off ? -1 : x->block_off > y->block_off;
}

/* --------------------------------------------------------- spot traces */

/* The cloud a spot set or file is of, by its name: gcp or azure when it
 * says so, else aws. */
static const char *cloud_of(const char *name) {
  return strstr(name, "gcp") ? "gcp" : strstr(name, "azure") ? "azure" : "aws";
}

/* Notice lead time by cloud: AWS instance-action 120 s, GCP preemption
 * 30 s, Azure Scheduled Events Preempt 30 s. */
static void set_cloud(sim_spot_trace *s, const char *cloud) {
  snprintf(s->cloud, sizeof s->cloud, "%s", cloud);
  s->lead_s = strcmp(cloud, "aws") ? 30.0 : 120.0;
}

/* "aws:FILE", "gcp:FILE" or "azure:FILE" name the cloud; a bare FILE is
 * taken as GCP when its path says "gcp", Azure when it says "azure", else
 * as AWS. */
int sim_spot_read(sim_spot_trace *s, const char *arg, char *msg,
                  size_t msgcap) {
  memset(s, 0, sizeof *s);
  static const char *const CLOUDS[3] = {"aws", "gcp", "azure"};
  const char *path = arg, *cloud = cloud_of(arg);
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
  int rc = sim_spot_parse(s, f, path, cloud, msg, msgcap);
  fclose(f);
  return rc;
}

int sim_spot_parse(sim_spot_trace *s, FILE *f, const char *path, const char *cloud,
                   char *msg, size_t msgcap) {
  memset(s, 0, sizeof *s);
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 65536 > cap) {
      cap = cap ? cap * 2 : 262144;
      char *p = realloc(buf, cap);
      if (!p) { free(buf); return snprintf(msg, msgcap, "out of memory"), -1; }
      buf = p;
    }
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (!n) break;
  }
  const char *end = NULL;
  cJSON *o = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
  if (o) { /* nothing but white space after the document */
    const char *e = end;
    while (e < buf + len && (*e == ' ' || *e == '\t' || *e == '\n' || *e == '\r')) e++;
    if (e < buf + len) {
      cJSON_Delete(o);
      o = NULL;
    }
  }
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
  /* A tick between a millisecond and about four months: tick indexes stay
   * far inside size_t over any run. */
  if (!cJSON_IsNumber(gap) || !(gap->valuedouble >= 1e-3 && gap->valuedouble <= 1e7) ||
      !cJSON_IsArray(data) || !cJSON_GetArraySize(data)) {
    cJSON_Delete(o);
    return snprintf(msg, msgcap,
                    "%s: needs metadata.gap_seconds in [0.001, 1e7] and a non-empty data[]",
                    path), -1;
  }
  s->gap_s = gap->valuedouble;
  size_t n = (size_t)cJSON_GetArraySize(data);
  s->v = calloc(n ? n : 1, sizeof *s->v);
  if (!s->v) { cJSON_Delete(o); return snprintf(msg, msgcap, "out of memory"), -1; }
  const cJSON *x;
  /* Each value is how many instances are available (SkyPilot's README);
   * a non-number tick reads as none. */
  cJSON_ArrayForEach(x, data) {
    double d = cJSON_IsNumber(x) && x->valuedouble > 0 ? x->valuedouble : 0;
    int32_t v = d > 1e6 ? 1000000 : (int32_t)d;
    if (v > s->vmax) s->vmax = v;
    s->v[s->n++] = v;
  }
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
  s->vmax = 1;
  snprintf(s->zone, sizeof s->zone, "%s", zone);
  set_cloud(s, cloud);
}

void sim_spot_free(sim_spot_trace *s) {
  free(s->v);
  memset(s, 0, sizeof *s);
}

/* ------------------------------------------------ the data directory */

static int cmp_name(const void *a, const void *b) { return strcmp(a, b); }

/* Names in dir (not starting with '.') that end in one of exts ("" for
 * any), as dir/name, sorted. */
size_t sim_list_dir(const char *dir, const char *const *exts, size_t next,
                    char out[][512], size_t max) {
  DIR *d = opendir(dir);
  size_t n = 0;
  if (!d) return 0;
  struct dirent *e;
  while ((e = readdir(d)) && n < max) {
    size_t l = strlen(e->d_name);
    if (e->d_name[0] == '.') continue;
    for (size_t k = 0; k < next; k++) {
      size_t el = strlen(exts[k]);
      if (l > el && !strcmp(e->d_name + l - el, exts[k])) {
        /* A path too long for the list is left out, not cut short. */
        if (snprintf(out[n], 512, "%s/%s", dir, e->d_name) < 512) n++;
        break;
      }
    }
  }
  closedir(d);
  qsort(out, n, 512, cmp_name);
  return n;
}

/* DATA_DIR/spot/<set>/<zone>.json, prefixed with the cloud (a set named
 * gcp-... is GCP, azure-... Azure, anything else AWS), as the targets
 * program reads them. */
size_t sim_list_spot(const char *data, char out[][512], size_t max) {
  static const char *const any[] = {""}, *const json[] = {".json"};
  char dir[512], sets[SIM_LIST_MAX][512];
  snprintf(dir, sizeof dir, "%s/spot", data);
  size_t ns = sim_list_dir(dir, any, 1, sets, SIM_LIST_MAX), n = 0;
  for (size_t k = 0; k < ns && n < max; k++) {
    char files[SIM_LIST_MAX][512];
    size_t nf = sim_list_dir(sets[k], json, 1, files, SIM_LIST_MAX);
    const char *base = strrchr(sets[k], '/') + 1;
    for (size_t f = 0; f < nf && n < max; f++) {
      if (snprintf(out[n], 512, "%s:%s", cloud_of(base), files[f]) >= 512) continue;
      /* A file the reader cannot use drives no zone: said, and left out. */
      sim_spot_trace st;
      char msg[256] = "";
      if (sim_spot_read(&st, out[n], msg, sizeof msg)) {
        fprintf(stderr, "spotinfer_sim: spot trace skipped: %s\n", msg);
        continue;
      }
      sim_spot_free(&st);
      n++;
    }
  }
  return n;
}
