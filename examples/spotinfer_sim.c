/*
 * spotinfer_sim.c - a deterministic discrete-event simulator that replays a
 * request trace and spot-capacity traces through libspotinfer, one run per
 * routing policy, and compares cost, prefix-cache hits, latency by class and
 * replay success side by side. Only the public API is used, as a gateway
 * would use it: requests are real spi_requests whose prompt token ids are
 * synthesized from the trace's block ids, replicas report load and tickets
 * on a fake clock, spot machines get real notices (parsed from the cloud's
 * own body format), in-flight work follows the library's drain/replay plans,
 * and replays go through a journal-backed replay queue and the continuation
 * builder.
 *
 *   spotinfer_sim [--requests N] [--rate R] [--seed S] [--replicas N]
 *                 [--on-demand N] [--trace FILE] [--limit N] [--speedup F]
 *                 [--spot-trace FILE]... [--spot-start S] [--mix G,S,B]
 *                 [--kv-blocks N] [--cluster FILE] [--json FILE] [--svg FILE]
 *                 [--policies a,b,...] [--config FILE] [--horizon S]
 *                 [--no-interruptions] [--scenario replay] [--targets DIR]
 *                 [--speed DIR] [--quiet]
 *
 * The same arguments and seed give byte-identical standard output; the
 * rate and progress go to standard error.
 */
#include <errno.h>
#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim/sim.h"
#include "sim/sim_run.h"

static void usage(void) {
  fprintf(stderr,
          "usage: spotinfer_sim [--requests N] [--rate R] [--seed S]\n"
          "  [--replicas N] [--on-demand N] [--kv-blocks N] [--mix G,S,B]\n"
          "  [--trace FILE.jsonl|FILE.csv] [--limit N] [--speedup F]\n"
          "  [--cluster cluster.json]\n"
          "  [--spot-trace [aws:|gcp:|azure:]skypilot.json]... [--spot-start SECONDS]\n"
          "  [--policies p1,p2,...] [--json FILE] [--svg FILE] [--quiet]\n"
          "  [--config library.json] [--horizon SECONDS] [--no-interruptions]\n"
          "  [--family NAME] [--scenario replay] [--targets DATA_DIR]\n"
          "policies: library, greedy, sglang, epp, round-robin, least-loaded,\n"
          "  consistent-hash (all-on-demand is always run as the baseline)\n"
          "--requests: at most 10000000; --rate: 0.01 to 1000000 a second;\n"
          "  --replicas x --kv-blocks: at most 16777216 KV blocks; a run (the\n"
          "  arrivals and the horizon after them): at most 2e7 simulated seconds.\n"
          "--trace: requests from a file, its format told by content: Mooncake or\n"
          "  Qwen/Bailian JSONL (hash_ids of a power-of-two block, 16-4096 tokens), or CSV with a\n"
          "  time, an input-token and an output-token column (Azure, BurstGPT).\n"
          "--speedup: a trace's arrivals F times as fast (0.5: half its rate), to\n"
          "  replay a trace at another load; with --targets, every trace's.\n"
          "--on-demand: 0 makes a spot-only cluster, --replicas an on-demand-only one.\n"
          "--config: a library config (JSON) each run starts from; the simulator\n"
          "  sets the policy under test and cache_key.block_tokens, and fills in\n"
          "  router and cost settings the file does not give.\n"
          "--horizon: simulated seconds after the last arrival before the run stops;\n"
          "  what is still queued then is reported, not retried (default 3600,\n"
          "  at most 1e7).\n"
          "--no-interruptions: spot zones gain capacity as their traces say but\n"
          "  never lose any (the same run without interruptions).\n"
          "--family: generator traffic: mixed (default), global-prompt, tenants,\n"
          "  long-sessions, agents, bursts, long-gen, documents.\n"
          "--scenario replay: GCP zones (30 s notices) that preempt often, long\n"
          "  generations, 4 on-demand + 12 spot: drains cannot finish, replays happen.\n"
          "--targets DATA_DIR: the targets program: every trace in DATA_DIR/traces\n"
          "  and every generator family, JSON lines on standard output; the spot\n"
          "  lines twice: at the window --seed draws (or --spot-start gives) and at\n"
          "  the spot traces' first tick. With --family, that family alone.\n"
          "--speed DATA_DIR: the simulator's own speed on every trace in\n"
          "  DATA_DIR/traces and the generator, 64 and 16 replicas: simulated requests\n"
          "  per CPU-second of the event loop, JSON lines on standard output and\n"
          "  a table, a row per trace, on standard error.\n"
          "--spot-trace: a SkyPilot capacity series for one spot zone (at most 8);\n"
          "  values above 1 count nodes: the zone runs that many of its replicas.\n"
          "  The prefix chooses the cloud, its notice lead time and the notice body\n"
          "  handed to the library: aws: instance-action, 120 s; gcp: preempted,\n"
          "  30 s; azure: Scheduled Events Preempt, NotBefore = now + 30 s. With no\n"
          "  prefix a path containing \"gcp\" is GCP, \"azure\" Azure, anything\n"
          "  else AWS.\n"
          "--spot-start: where the run starts in the spot traces, seconds from their\n"
          "  first tick (a shorter trace wraps). By default a start drawn from --seed,\n"
          "  uniform over the longest --spot-trace; 0 with built-in traces.\n"
          "  --spot-offset is the same option.\n"
          "--cluster: JSON {\"groups\": [{\"pool\": \"spot\"|\"on_demand\",\n"
          "  \"zone\", \"instance_type\", \"count\", \"usd_per_hour\",\n"
          "  \"prefill_tokens_per_s\", \"decode_tokens_per_s\" (a stream),\n"
          "  \"kv_blocks\", \"max_batch\"}, ...]}, optional per group\n"
          "  \"on_demand_usd_per_hour\" (a spot group's price in the all-on-demand\n"
          "  baseline; default: an on_demand group of the same instance_type) and\n"
          "  \"cloud\" (aws|gcp|azure, for a spot zone's built-in capacity trace).\n"
          "  It replaces --replicas, --on-demand and --kv-blocks. The i-th\n"
          "  --spot-trace drives the i-th distinct spot zone in file order; give one\n"
          "  per spot zone, or none for built-in capacity traces.\n"
          "Progress goes to standard error (each 5%%, at most every 2 s).\n");
}

/* A whole decimal number: digits only (strtoull would take "-5" as
 * 2^64 - 5, and leading blanks or a '+'). */
static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  if (*s < '0' || *s > '9') return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s || *end) return -1;
  *out = v;
  return 0;
}

/* A finite number and nothing after it. */
static int parse_num(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (end == s || *end || errno == ERANGE || !isfinite(v)) return -1;
  *out = v;
  return 0;
}

/* --mix G,S,B: three weights, nothing else. */
static int parse_mix(const char *s, double mix[4]) {
  char buf[128];
  if (strlen(s) >= sizeof buf) return -1;
  snprintf(buf, sizeof buf, "%s", s);
  char *p = buf;
  for (int k = 1; k <= 3; k++) {
    char *c = strchr(p, ',');
    if ((k < 3) != (c != NULL)) return -1;
    if (c) *c = 0;
    if (parse_num(p, &mix[k]) || !(mix[k] >= 0)) return -1;
    p = c ? c + 1 : p;
  }
  return mix[1] + mix[2] + mix[3] > 0 ? 0 : -1;
}

/* The whole file as a string (free() it), or NULL with msg. */
static char *read_file(const char *path, char *msg, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) return snprintf(msg, cap, "%s: cannot open", path), NULL;
  size_t len = 0, sz = 4096;
  char *buf = malloc(sz);
  while (buf) {
    len += fread(buf + len, 1, sz - len - 1, f);
    if (len < sz - 1) break;
    char *p = realloc(buf, sz * 2);
    if (!p) free(buf);
    buf = p;
    sz *= 2;
  }
  int err = ferror(f);
  fclose(f);
  if (!buf) return snprintf(msg, cap, "out of memory"), NULL;
  if (err) {
    free(buf);
    return snprintf(msg, cap, "%s: read error", path), NULL;
  }
  buf[len] = 0;
  return buf;
}

/* The --config text lives until exit; freed there so leak checkers stay quiet. */
static char *config_buf;
static void free_config(void) { free(config_buf); }

int main(int argc, char **argv) {
  atexit(free_config);
  /* Whole lines on stdout: a note on stderr then falls between two lines
   * of the tables, not inside one, when both go to one file or pipe. */
  setvbuf(stdout, NULL, _IOLBF, 0);
#if defined(M_MMAP_THRESHOLD) && defined(M_TRIM_THRESHOLD)
  /* Every run builds an engine and its tables afresh and frees them at the
   * end; keep that memory in the process for the next run instead of
   * handing it back and faulting it in again (a third of a short run's
   * time went to the kernel zeroing pages). Speed only: no simulated
   * number depends on it. */
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  sim_opts o;
  sim_opts_default(&o);
  const char *cluster_path = NULL, *config_path = NULL, *targets = NULL, *speed = NULL;
  int sized = 0, scenario = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    uint64_t u = 0;
    int bad = 0;
    const char *want = NULL; /* what the option takes, for the message */
#define NEEDV() do { if (!v) { usage(); return 2; } i++; } while (0)
    if (!strcmp(a, "--requests")) { NEEDV(); bad = parse_u64(v, &u) || u < 1 || u > SIM_MAX_REQUESTS; want = "a whole number from 1 to 10000000"; o.gen.requests = (size_t)u; o.requests_given = 1; }
    else if (!strcmp(a, "--rate")) { NEEDV(); bad = parse_num(v, &o.gen.rate_per_s) || !(o.gen.rate_per_s >= SIM_MIN_RATE && o.gen.rate_per_s <= SIM_MAX_RATE); want = "a number from 0.01 to 1000000"; o.rate_given = 1; }
    else if (!strcmp(a, "--seed")) { NEEDV(); bad = parse_u64(v, &o.gen.seed); want = "a whole number"; }
    else if (!strcmp(a, "--replicas")) { NEEDV(); sized = 1; bad = parse_u64(v, &u) || u < 2 || u > 1000; want = "a whole number from 2 to 1000"; o.replicas = (uint32_t)u; }
    else if (!strcmp(a, "--on-demand")) { NEEDV(); sized = 1; bad = parse_u64(v, &u) || u > 1000; want = "a whole number from 0 to 1000"; o.on_demand = (uint32_t)u; }
    else if (!strcmp(a, "--kv-blocks")) { NEEDV(); sized = 1; bad = parse_u64(v, &u) || u < 16 || u > 100000000; want = "a whole number from 16 to 100000000"; o.kv_blocks = (uint32_t)u; }
    else if (!strcmp(a, "--limit")) { NEEDV(); bad = parse_u64(v, &u); want = "a whole number"; o.limit = (size_t)u; }
    else if (!strcmp(a, "--trace")) { NEEDV(); o.trace = v; }
    else if (!strcmp(a, "--speedup")) {
      NEEDV();
      char *end;
      o.speedup = strtod(v, &end);
      bad = end == v || *end || !(o.speedup >= 0.01 && o.speedup <= 1000);
    }
    else if (!strcmp(a, "--cluster")) { NEEDV(); cluster_path = v; }
    else if (!strcmp(a, "--spot-trace")) { NEEDV(); bad = o.n_spot >= SIM_MAX_ZONES; if (!bad) o.spot[o.n_spot++] = v; }
    else if (!strcmp(a, "--spot-start") || !strcmp(a, "--spot-offset")) {
      NEEDV();
      char *end;
      o.spot_start_s = strtod(v, &end);
      bad = end == v || *end || !(o.spot_start_s >= 0) || o.spot_start_s > 1e12;
      o.spot_start_given = 1;
    }
    else if (!strcmp(a, "--mix")) {
      NEEDV();
      bad = parse_mix(v, o.gen.mix);
      want = "three weights G,S,B, none negative, not all 0";
    }
    else if (!strcmp(a, "--policies")) {
      NEEDV();
      char which[72];
      if (sim_policies_check(v, which, sizeof which)) {
        fprintf(stderr, "spotinfer_sim: --policies: unknown policy \"%s\" (library, greedy, "
                "sglang, epp, round-robin, least-loaded, consistent-hash)\n", which);
        return 2;
      }
      o.policies = v;
    }
    else if (!strcmp(a, "--json")) { NEEDV(); o.json = v; }
    else if (!strcmp(a, "--svg")) { NEEDV(); o.svg = v; }
    else if (!strcmp(a, "--quiet")) o.quiet = 1;
    else if (!strcmp(a, "--config")) { NEEDV(); config_path = v; }
    /* At most about 115 days: its nanoseconds, and an arrival's plus it,
     * stay far inside int64. */
    else if (!strcmp(a, "--horizon")) { NEEDV(); bad = parse_num(v, &o.horizon_s) || !(o.horizon_s > 0 && o.horizon_s <= 1e7); want = "a number of seconds above 0, at most 1e7"; }
    else if (!strcmp(a, "--no-interruptions")) o.no_interruptions = 1;
    else if (!strcmp(a, "--family")) { NEEDV(); bad = sim_family_parse(v, &o.gen.family); o.family_given = 1; }
    else if (!strcmp(a, "--scenario")) { NEEDV(); bad = strcmp(v, "replay") != 0; scenario = 1; }
    else if (!strcmp(a, "--targets")) { NEEDV(); targets = v; }
    else if (!strcmp(a, "--speed")) { NEEDV(); speed = v; }
    else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(); return 0; }
    else { fprintf(stderr, "spotinfer_sim: unknown argument %s\n", a); usage(); return 2; }
#undef NEEDV
    if (bad) {
      if (want) fprintf(stderr, "spotinfer_sim: bad value for %s: %s (want %s)\n", a, v, want);
      else fprintf(stderr, "spotinfer_sim: bad value for %s\n", a);
      return 2;
    }
  }
  if (config_path) {
    char msg[256];
    config_buf = read_file(config_path, msg, sizeof msg);
    o.config_json = config_buf;
    if (!config_buf) {
      fprintf(stderr, "spotinfer_sim: --config: %s\n", msg);
      return 2;
    }
  }
  if (scenario) {
    if (sized || cluster_path || o.trace || o.n_spot) {
      fprintf(stderr, "spotinfer_sim: --scenario replay sets the cluster, traffic and zones\n");
      return 2;
    }
    sim_scenario_replay(&o);
  }
  if (targets) return sim_targets(&o, targets) ? 1 : 0;
  if (speed) return sim_speed(&o, speed) ? 1 : 0;
  if (cluster_path) {
    static sim_cluster cluster;
    char msg[256];
    if (sized) {
      fprintf(stderr, "spotinfer_sim: --cluster replaces --replicas, --on-demand and --kv-blocks\n");
      return 2;
    }
    if (sim_cluster_read(&cluster, cluster_path, msg, sizeof msg)) {
      fprintf(stderr, "spotinfer_sim: bad cluster file: %s\n", msg);
      return 2;
    }
    if (o.n_spot && o.n_spot != cluster.nzones) {
      fprintf(stderr, "spotinfer_sim: %zu --spot-trace for %zu spot zones in %s "
              "(give one per spot zone, in file order, or none)\n",
              o.n_spot, cluster.nzones, cluster_path);
      return 2;
    }
    o.cluster = &cluster;
    return sim_main(&o);
  }
  if (o.on_demand > o.replicas) {
    fprintf(stderr, "spotinfer_sim: --on-demand cannot exceed --replicas\n");
    return 2;
  }
  if ((uint64_t)o.replicas * o.kv_blocks > SIM_MAX_CLUSTER_KV) {
    fprintf(stderr, "spotinfer_sim: --replicas x --kv-blocks is %" PRIu64 " KV blocks, "
            "more than the %u the simulator holds\n",
            (uint64_t)o.replicas * o.kv_blocks, SIM_MAX_CLUSTER_KV);
    return 2;
  }
  return sim_main(&o);
}
