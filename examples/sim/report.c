/*
 * report.c - the table program: every policy on the same trace and spot
 * schedule, the hit-rate ceilings, and the tables, JSON and SVG.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sim_run.h"

/* ----------------------------------------------------------- ceilings */

static double wall_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* CPU time of this process: the simulator's speed is reported per second of
 * one core, so other work on the machine does not change the figure. */
double sim_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}


static void compute_ceilings(const sim_opts *o, const sim_trace *tr, sim_ceilings *c) {
  memset(c, 0, sizeof c[0]);
  /* Oracle: a set large enough for every block of the trace. */
  size_t slots = 16;
  while (slots < tr->nb * 2) slots <<= 1;
  uint64_t *set = calloc(slots, sizeof *set);
  sim_lru pooled;
  uint64_t kv = (uint64_t)o->kv_blocks * o->replicas;
  if (o->cluster) {
    kv = 0;
    for (size_t g = 0; g < o->cluster->n; g++)
      kv += (uint64_t)o->cluster->g[g].kv_blocks * o->cluster->g[g].count;
  }
  if (kv > SIM_LRU_MAX_CAP) kv = SIM_LRU_MAX_CAP;
  if (!set) sim_oom("the oracle's set of blocks");
  if (sim_lru_init(&pooled, (uint32_t)kv)) sim_oom("the pooled LRU ceiling's cache");
  for (size_t i = 0; i < tr->n; i++) {
    const sim_trace_req *q = &tr->reqs[i];
    const uint64_t *ch = tr->chain + q->block_off;
    c->total += q->nblocks;
    for (uint32_t b = 0; b < q->nblocks; b++) {
      uint64_t k = ch[b] | 1;
      size_t j = (size_t)sim_mix64(k) & (slots - 1);
      while (set[j] && set[j] != k) j = (j + 1) & (slots - 1);
      if (set[j]) c->oracle++;
      else set[j] = k;
    }
    c->pooled += sim_lru_prefix_fill(&pooled, ch, q->nblocks);
  }
  free(set);
  sim_lru_free(&pooled);
}

/* ------------------------------------------------------------- set-up */

int sim_setup_load(sim_setup *su, const sim_opts *o) {
  char msg[256];
  memset(su, 0, sizeof *su);
  int rc = o->trace ? sim_trace_read(&su->tr, o->trace, o->limit, o->gen.mix, o->gen.seed,
                                     msg, sizeof msg)
                    : sim_trace_generate(&su->tr, &o->gen);
  if (rc) {
    fprintf(stderr, "spotinfer_sim: %s\n", o->trace ? msg : "generator failed");
    return -1;
  }
  if (!su->tr.chain || !su->tr.n) {
    fprintf(stderr, "spotinfer_sim: %s\n", su->tr.n ? "out of memory" : "no request to simulate");
    sim_trace_free(&su->tr);
    return -1;
  }
  if (o->trace) sim_trace_speedup(&su->tr, o->speedup);
  su->horizon_s = (double)su->tr.reqs[su->tr.n - 1].arrival_ns / 1e9 +
                  (o->horizon_s > 0 ? o->horizon_s : 3600);
  if (!(su->horizon_s <= SIM_MAX_RUN_S)) {
    fprintf(stderr, "spotinfer_sim: the run would last %.0f simulated seconds (%.0f s of "
            "arrivals and the horizon after them), more than the %.0f the simulator runs\n",
            su->horizon_s, (double)su->tr.reqs[su->tr.n - 1].arrival_ns / 1e9, SIM_MAX_RUN_S);
    sim_trace_free(&su->tr);
    return -1;
  }
  sim_zone *zones = su->zones;
  size_t nz = 0;
  if (o->n_spot) {
    for (size_t k = 0; k < o->n_spot; k++) {
      if (sim_spot_read(&zones[nz].tr, o->spot[k], msg, sizeof msg)) {
        fprintf(stderr, "spotinfer_sim: %s\n", msg);
        su->nz = nz;
        sim_setup_free(su);
        return -1;
      }
      /* With a cluster file the i-th trace drives its i-th spot zone. */
      if (o->cluster)
        snprintf(zones[nz].tr.zone, sizeof zones[nz].tr.zone, "%s", o->cluster->zones[k]);
      nz++;
    }
  } else if (o->cluster) {
    for (; nz < o->cluster->nzones; nz++)
      sim_spot_generate(&zones[nz].tr, o->cluster->zones[nz], o->cluster->zone_cloud[nz],
                        su->horizon_s, o->gen.seed * 1000003u + nz);
  } else {
    static const char *zn[4][2] = {{"us-east-1a", "aws"}, {"us-west-2b", "aws"},
                                   {"us-central1-a", "gcp"}, {"us-east1-b", "gcp"}};
    for (; nz < 4; nz++)
      sim_spot_generate(&zones[nz].tr, zn[nz][0], o->zone_cloud ? o->zone_cloud : zn[nz][1],
                        su->horizon_s, o->gen.seed * 1000003u + nz);
  }
  su->nz = nz;
  sim_spot_place(su, o);
  compute_ceilings(o, &su->tr, &su->ceil);
  return 0;
}

void sim_setup_free(sim_setup *su) {
  for (size_t z = 0; z < su->nz; z++) sim_spot_free(&su->zones[z].tr);
  sim_trace_free(&su->tr);
  su->nz = 0;
}

/* ------------------------------------------------------------ metrics */

double sim_hit_pct(const sim_result *r) {
  return r->total_blocks > 0 ? 100.0 * r->hit_blocks / r->total_blocks : 0;
}

double sim_predicted_hit_pct(const sim_result *r) {
  return r->total_blocks > 0 ? 100.0 * r->predicted_blocks / r->total_blocks : 0;
}

double sim_of_pooled_pct(const sim_result *r, const sim_ceilings *c) {
  return c->pooled > 0 ? 100.0 * r->hit_blocks / c->pooled : 0;
}
double sim_of_oracle_pct(const sim_result *r, const sim_ceilings *c) {
  return c->oracle > 0 ? 100.0 * r->hit_blocks / c->oracle : 0;
}
/* Of the requests that were interrupted and replayed, the share that
 * completed; -1 (n/a) when nothing was replayed. */
double sim_replay_success_pct(const sim_result *r) {
  return r->replayed ? 100.0 * (double)r->replayed_ok / (double)r->replayed : -1;
}
int sim_conserved(const sim_result *r, size_t n) {
  return r->completed + r->lost + r->expired + r->at_horizon == n;
}

/* Savings against the all-on-demand run (base), and the most a policy
 * could save while keeping gold on demand: every non-gold request's cost
 * at the spot price. */
void sim_savings(const sim_opts *o, const sim_result *r, const sim_result *base,
                 double *saving_pct, double *max_pct) {
  *saving_pct = base->usd > 0 ? 100.0 * (1 - r->usd / base->usd) : 0;
  double nongold = base->usd - base->usd_class[SPI_CLASS_GOLD];
  /* No spot capacity: nothing can be saved. */
  int spot = o->cluster ? o->cluster->nzones > 0 : o->on_demand < o->replicas;
  double ratio = r->price_ratio < 1 ? r->price_ratio : 1;
  *max_pct = base->usd > 0 && spot ? 100.0 * nongold / base->usd * (1 - ratio) : 0;
}

uint64_t sim_unfinished(const sim_result *r) { return r->at_horizon + r->expired; }

int sim_savings_comparable(const sim_result *r, const sim_result *base) {
  return r == base || (!sim_unfinished(r) && !sim_unfinished(base));
}

/* sim_reachable_pct: timeline.c, beside the spot capacity it follows. */

/* ------------------------------------------------------------ reports */

static const char *CLS[4] = {"", "gold", "silver", "bronze"};
static const char *SLO_NAMES[4] = {"gold p95 TTFT < 800 ms", "silver p99 completion < 8 s",
                                   "hit >= 70% of the oracle", "replay success > 99%"};

static void check_slos(sim_result *r, const sim_ceilings *c) {
  /* Over every request of the class: one that never completed misses. */
  r->slo[0] = r->n_class[SPI_CLASS_GOLD] ? r->slo_gold_ttft_p95 < SIM_SLO_GOLD_TTFT_P95_MS : -1;
  r->slo[1] = r->n_class[SPI_CLASS_SILVER] ? r->slo_silver_done_p99 < SIM_SLO_SILVER_DONE_P99_MS
                                           : -1;
  r->slo[2] = c->oracle > 0 ? sim_of_oracle_pct(r, c) >= 70 : -1;
  r->slo[3] = r->replayed ? sim_replay_success_pct(r) > 99 : -1;
}

/* A latency cell: n/a when the class had no completed request (none at
 * all, or none that finished). */
static void cell(char *buf, size_t cap, const sim_result *r, int cl, double v, double scale,
                 int prec) {
  if (!r->done_class[cl]) snprintf(buf, cap, "n/a");
  else snprintf(buf, cap, "%.*f", prec, v / scale);
}

static void print_tables(const sim_opts *o, const sim_setup *su, const sim_result *rs,
                         size_t n) {
  const sim_result *base = &rs[n - 1];
  const sim_trace *tr = &su->tr;
  const sim_ceilings *c = &su->ceil;
  printf("# spotinfer simulator\n\n");
  printf("trace: %s, %zu requests, %zu prompt blocks of %d tokens",
         tr->source, tr->n, tr->nb, SIM_BLOCK_TOKENS);
  if (tr->format && strcmp(tr->format, "generator"))
    printf(" (read as %s, a hash id %u tokens)", tr->format, tr->file_block_tokens);
  if (tr->bad_lines) printf(", %zu bad lines skipped (first: %s)", tr->bad_lines, tr->first_bad);
  if (o->cluster) {
    printf("\ncluster: %u replicas in %zu groups\n", o->cluster->replicas, o->cluster->n);
    for (size_t g = 0; g < o->cluster->n; g++) {
      const sim_group *G = &o->cluster->g[g];
      printf("  %u x %s %s in %s at $%.2f/h", G->count,
             G->pool == SPI_POOL_SPOT ? "spot" : "on-demand", G->instance_type, G->zone,
             G->usd_h);
      if (G->pool == SPI_POOL_SPOT) printf(" ($%.2f/h on demand)", G->od_usd_h);
      printf(", %u KV blocks, batch %u, prefill %.0f tok/s, decode %.0f tok/s a stream\n",
             G->kv_blocks, G->max_batch, G->prefill_tps, G->decode_tps);
    }
  } else {
    printf("\ncluster: %u replicas (%u on-demand at $%.2f/h, %u spot at $%.2f/h), "
           "%u KV blocks each, batch %u, prefill %.0f tok/s, decode %.0f tok/s a stream\n",
           o->replicas, o->on_demand, o->od_usd_h, o->replicas - o->on_demand, o->spot_usd_h,
           o->kv_blocks, o->max_batch, o->prefill_tps, o->decode_tps);
  }
  const sim_result *sr = NULL; /* a run with the spot zones */
  for (size_t k = 0; k < n && !sr; k++)
    if (rs[k].tl.nz) sr = &rs[k];
  printf("spot zones:");
  for (size_t z = 0; z < su->nz; z++) {
    printf(" %s (%s, %.0f s notice%s", su->zones[z].tr.zone, su->zones[z].tr.cloud,
           su->zones[z].tr.lead_s, su->zones[z].tr.vmax > 1 ? ", node counts" : "");
    if (sr) printf(", %u of %u up at the start", sim_timeline_cap_start(&sr->tl, (uint32_t)z),
                   sr->tl.zone_size[z]);
    printf(")");
  }
  if (o->no_interruptions) printf(" (no interruptions)");
  if (su->nz && !o->n_spot && !o->spot_start_given)
    printf("\nspot window: built-in capacity traces, generated for the run");
  else if (su->nz)
    printf("\nspot window: the run starts %.0f s (%.2f days) into the spot traces (%s)",
           su->spot_start_s, su->spot_start_s / 86400,
           su->spot_start_drawn ? "drawn from the seed" : "--spot-start");
  printf("\nhit-rate ceilings: oracle (unlimited cache) %.1f%%, pooled LRU (whole cluster's KV) %.1f%%\n\n",
         c->total > 0 ? 100 * c->oracle / c->total : 0,
         c->total > 0 ? 100 * c->pooled / c->total : 0);
  printf("| policy | total $ | $/1M tok | savings | max saving | reachable | hit %% | %% of pooled | "
         "%% of oracle | p95 TTFT gold ms | p99 done silver s | replays | replay ok %% | lost | "
         "imbalance tok | imbalance starts | SLOs |\n");
  printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
  for (size_t k = 0; k < n; k++) {
    const sim_result *r = &rs[k];
    double sav, mx;
    sim_savings(o, r, base, &sav, &mx);
    char sv[24]; /* n/a when the run or the baseline left work unfinished */
    if (sim_savings_comparable(r, base)) snprintf(sv, sizeof sv, "%.1f%%", sav);
    else snprintf(sv, sizeof sv, "n/a");
    char rch[24]; /* n/a in a run with no spot zone (the all-on-demand one) */
    if (r->tl.nz) snprintf(rch, sizeof rch, "%.1f%%", sim_reachable_pct(o, tr, r, base, mx));
    else snprintf(rch, sizeof rch, "n/a");
    int ok = 0, na = 0;
    for (int j = 0; j < 4; j++) ok += r->slo[j] == 1, na += r->slo[j] < 0;
    char g95[24], s99[24], rok[24];
    cell(g95, sizeof g95, r, SPI_CLASS_GOLD, r->ttft[1][1], 1, 0);
    cell(s99, sizeof s99, r, SPI_CLASS_SILVER, r->done[2][2], 1000, 2);
    if (r->replayed) snprintf(rok, sizeof rok, "%.2f", sim_replay_success_pct(r));
    else snprintf(rok, sizeof rok, "n/a");
    printf("| %s | %.2f | %.3f | %s | %.1f%% | %s | %.1f | %.1f | %.1f | %s | %s | %" PRIu64
           " | %s | %" PRIu64 " | %.2f | %.2f | %d/%d %s |\n",
           r->name, r->usd, r->tokens > 0 ? r->usd / r->tokens * 1e6 : 0, sv, mx, rch,
           sim_hit_pct(r),
           sim_of_pooled_pct(r, c), sim_of_oracle_pct(r, c), g95, s99, r->replays, rok, r->lost,
           r->imbalance, r->start_imbalance, ok, 4 - na, ok == 4 - na ? "pass" : "FAIL");
  }
  int noted = 0; /* a blank line ends the table before the first note */
  for (size_t k = 0; k < n; k++)
    if (!sim_savings_comparable(&rs[k], base))
      printf("%ssavings n/a for %s: %" PRIu64 " of %zu requests unfinished in it and %" PRIu64
             " in all-on-demand (still queued at the horizon or expired), so the two costs are "
             "not for the same work\n",
             noted++ ? "" : "\n", rs[k].name, sim_unfinished(&rs[k]), tr->n, sim_unfinished(base));
  printf("\n| policy | class | requests | TTFT p50 / p95 / p99 ms | completion p50 / p95 / p99 s |\n");
  printf("|---|---|---:|---|---|\n");
  for (size_t k = 0; k < n; k++)
    for (int cl = 1; cl <= 3; cl++) {
      if (!rs[k].done_class[cl]) {
        printf("| %s | %s | %" PRIu64 " | n/a | n/a |\n", rs[k].name, CLS[cl],
               rs[k].n_class[cl]);
        continue;
      }
      printf("| %s | %s | %" PRIu64 " | %.0f / %.0f / %.0f | %.2f / %.2f / %.2f |\n", rs[k].name,
             CLS[cl], rs[k].n_class[cl], rs[k].ttft[cl][0], rs[k].ttft[cl][1], rs[k].ttft[cl][2],
             rs[k].done[cl][0] / 1000, rs[k].done[cl][1] / 1000, rs[k].done[cl][2] / 1000);
    }
  printf("\nSLOs: %s; %s; %s; %s (n/a: no such requests).\n", SLO_NAMES[0], SLO_NAMES[1],
         SLO_NAMES[2], SLO_NAMES[3]);
  for (size_t k = 0; k < n; k++) {
    printf("%s:", rs[k].name);
    for (int j = 0; j < 4; j++) printf(" %s", rs[k].slo[j] < 0 ? "n/a" : rs[k].slo[j] ? "ok" : "miss");
    printf("; conservation %s (%" PRIu64 " completed + %" PRIu64 " lost + %" PRIu64
           " expired + %" PRIu64 " still queued at the horizon of %zu), %" PRIu64
           " replayed requests, %" PRIu64 " notices, %" PRIu64 " drains, %" PRIu64
           " requeues, %" PRIu64 " spot / %" PRIu64 " on-demand placements, fleet $%.2f\n",
           sim_conserved(&rs[k], tr->n) ? "ok" : "BROKEN", rs[k].completed, rs[k].lost,
           rs[k].expired, rs[k].at_horizon, tr->n, rs[k].replayed, rs[k].notices, rs[k].drains,
           rs[k].requeued, rs[k].spot_served, rs[k].od_served, rs[k].usd_fleet);
    if (rs[k].route_errors)
      printf("%s: %" PRIu64 " ROUTE ERRORS: requests the library did not take (never offered "
             "again, so unfinished) or notices it did not read; the first is on standard "
             "error\n",
             rs[k].name, rs[k].route_errors);
  }
}

static void json_num_or_null(FILE *f, int have, double v) {
  if (have) fprintf(f, "%.3f", v);
  else fprintf(f, "null");
}

/* 0, or -1 (errno says why) when the file cannot be written whole. */
static int write_json(const char *path, const sim_opts *o, const sim_setup *su,
                      const sim_result *rs, size_t n) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  const sim_trace *tr = &su->tr;
  const sim_ceilings *c = &su->ceil;
  fprintf(f, "{\"trace\":{\"requests\":%zu,\"blocks\":%zu,\"bad_lines\":%zu},\n",
          tr->n, tr->nb, tr->bad_lines);
  fprintf(f, " \"spot_window\":{\"start_s\":%.0f,\"drawn\":%s,\"zones\":[", su->spot_start_s,
          su->spot_start_drawn ? "true" : "false");
  for (size_t z = 0, k0 = 0; z < su->nz; z++) {
    while (k0 + 1 < n && !rs[k0].tl.nz) k0++;
    fprintf(f, "%s{\"zone\":\"%s\",\"replicas\":%u,\"up_at_start\":%u}", z ? "," : "",
            su->zones[z].tr.zone, rs[k0].tl.zone_size[z], sim_timeline_cap_start(&rs[k0].tl, (uint32_t)z));
  }
  fprintf(f, "]},\n");
  fprintf(f, " \"ceilings\":{\"oracle_hit\":%.6f,\"pooled_lru_hit\":%.6f},\n \"policies\":[\n",
          c->total > 0 ? c->oracle / c->total : 0, c->total > 0 ? c->pooled / c->total : 0);
  for (size_t k = 0; k < n; k++) {
    const sim_result *r = &rs[k];
    double sav, mx;
    sim_savings(o, r, &rs[n - 1], &sav, &mx);
    char savs[32] = "null"; /* withheld when the two runs did different work */
    if (sim_savings_comparable(r, &rs[n - 1])) snprintf(savs, sizeof savs, "%.3f", sav);
    fprintf(f, "  {\"name\":\"%s\",\"usd\":%.4f,\"usd_fleet\":%.4f,\"usd_per_million\":%.6f,"
               "\"savings_pct\":%s,\"max_savings_pct\":%.3f,\"reachable_savings_pct\":%.3f,"
               "\"hit\":%.6f,\"predicted_hit\":%.6f,\"hit_of_pooled_pct\":%.3f,"
               "\"hit_of_oracle_pct\":%.3f,"
               "\"completed\":%" PRIu64 ",\"lost\":%" PRIu64 ",\"expired\":%" PRIu64
               ",\"at_horizon\":%" PRIu64 ",\"unfinished\":%" PRIu64 ",\"replays\":%" PRIu64
               ",\"replayed\":%" PRIu64
               ",\"replay_success\":",
            r->name, r->usd, r->usd_fleet, r->tokens > 0 ? r->usd / r->tokens * 1e6 : 0, savs, mx,
            sim_reachable_pct(o, tr, r, &rs[n - 1], mx),
            sim_hit_pct(r) / 100, sim_predicted_hit_pct(r) / 100, sim_of_pooled_pct(r, c),
            sim_of_oracle_pct(r, c), r->completed, r->lost, r->expired, r->at_horizon,
            sim_unfinished(r),
            r->replays, r->replayed);
    if (r->replayed) fprintf(f, "%.6f", sim_replay_success_pct(r) / 100);
    else fprintf(f, "null");
    fprintf(f, ",\"imbalance\":%.4f,\"start_imbalance\":%.4f,\"notices\":%" PRIu64
               ",\"route_errors\":%" PRIu64 ",\"continuation_budget_mismatches\":%" PRIu64 ",",
            r->imbalance, r->start_imbalance, r->notices, r->route_errors, r->budget_mismatches);
    fprintf(f, "\"classes\":{");
    for (int cl = 1; cl <= 3; cl++) {
      int h = r->done_class[cl] > 0; /* latencies of completed requests */
      fprintf(f, "%s\"%s\":{\"requests\":%" PRIu64 ",\"ttft_ms\":[", cl > 1 ? "," : "", CLS[cl],
              r->n_class[cl]);
      for (int j = 0; j < 3; j++) {
        if (j) fputc(',', f);
        json_num_or_null(f, h, r->ttft[cl][j]);
      }
      fprintf(f, "],\"completion_ms\":[");
      for (int j = 0; j < 3; j++) {
        if (j) fputc(',', f);
        json_num_or_null(f, h, r->done[cl][j]);
      }
      /* Its requests' prompt blocks found cached where they first ran. */
      double tb = r->class_total_blocks[cl];
      if (tb > 0) fprintf(f, "],\"hit\":%.6f}", r->class_hit_blocks[cl] / tb);
      else fprintf(f, "],\"hit\":null}");
    }
    static const char *SLO_KEYS[4] = {"gold_p95_ttft", "silver_p99_completion",
                                      "hit_of_oracle", "replay_success"};
    fprintf(f, "},\"slo\":{");
    for (int j = 0; j < 4; j++)
      fprintf(f, "%s\"%s\":%s", j ? "," : "", SLO_KEYS[j],
              r->slo[j] < 0 ? "null" : r->slo[j] ? "true" : "false");
    fprintf(f, "}}%s\n", k + 1 < n ? "," : "");
  }
  fprintf(f, " ]}\n");
  int err = ferror(f);
  if (fclose(f) || err) {
    if (!errno) errno = EIO;
    return -1;
  }
  return 0;
}

/* An output file the run could not write: what and why on standard error;
 * the run then exits 1. */
static int write_failed(const char *what, const char *path) {
  fprintf(stderr, "spotinfer_sim: %s%s%s: %s\n", what, path ? " " : "", path ? path : "",
          errno ? strerror(errno) : "write error");
  return 1;
}

/* --------------------------------------------------------------- main */

const sim_policy_name SIM_POLICIES[] = {
    {"library", "reference"},
    {"greedy", "sim-greedy"},
    {"sglang", "sim-sglang"},
    {"epp", "sim-epp"},
    {"round-robin", "sim-round-robin"},
    {"least-loaded", "sim-least-loaded"},
    {"consistent-hash", "sim-consistent-hash"},
};
const size_t SIM_N_POLICIES = sizeof SIM_POLICIES / sizeof SIM_POLICIES[0];

int sim_wanted(const char *list, const char *name) {
  if (!list) return 1;
  size_t n = strlen(name);
  for (const char *p = list; (p = strstr(p, name)); p += n)
    if ((p == list || p[-1] == ',') && (p[n] == ',' || !p[n])) return 1;
  return 0;
}

int sim_policies_check(const char *list, char *bad, size_t cap) {
  for (const char *p = list;; p++) {
    size_t n = strcspn(p, ",");
    int known = n == strlen("all-on-demand") && !strncmp(p, "all-on-demand", n);
    for (size_t k = 0; k < SIM_N_POLICIES && !known; k++)
      known = strlen(SIM_POLICIES[k].name) == n && !strncmp(p, SIM_POLICIES[k].name, n);
    if (!known) {
      snprintf(bad, cap, "%.*s", (int)(n < 64 ? n : 64), p);
      return -1;
    }
    p += n;
    if (!*p) return 0;
  }
}

int sim_main(const sim_opts *o) {
  sim_setup su;
  if (sim_setup_load(&su, o)) return 1;
  sim_result rs[16];
  memset(rs, 0, sizeof rs);
  size_t n = 0;
  double t0 = wall_s(), c0 = sim_cpu_s();
  uint64_t simulated = 0;
  for (size_t k = 0; k <= SIM_N_POLICIES; k++) {
    int od = k == SIM_N_POLICIES;
    if (!od && !sim_wanted(o->policies, SIM_POLICIES[k].name)) continue;
    snprintf(rs[n].name, sizeof rs[n].name, "%s", od ? "all-on-demand" : SIM_POLICIES[k].name);
    if (sim_run_policy(o, &su.tr, su.zones, su.nz, od ? "reference" : SIM_POLICIES[k].module,
                       od, &rs[n], su.horizon_s)) {
      sim_setup_free(&su);
      return 1;
    }
    check_slos(&rs[n], &su.ceil);
    simulated += su.tr.n;
    n++;
  }
  double el = wall_s() - t0, cpu = sim_cpu_s() - c0;
  print_tables(o, &su, rs, n);
  int unwritten = 0;
  errno = 0;
  if (fflush(stdout) || ferror(stdout)) unwritten = write_failed("standard output", NULL);
  errno = 0;
  if (o->json && write_json(o->json, o, &su, rs, n)) unwritten = write_failed("--json", o->json);
  errno = 0;
  if (o->svg && sim_write_chart(o->svg, &su, rs, n)) unwritten = write_failed("--svg", o->svg);
  double loop = 0;
  for (size_t k = 0; k < n; k++) loop += rs[k].loop_cpu_s;
  if (!o->quiet)
    fprintf(stderr, "simulated %" PRIu64 " requests (%zu policies x %zu) on %u replicas: "
            "%.0f requests per CPU-second of the event loops (%.2f s); with each run's engine "
            "set-up and summary %.2f s of CPU (%.2f s wall), %.0f requests/s; reading the "
            "trace not counted\n",
            simulated, n, su.tr.n, o->cluster ? o->cluster->replicas : o->replicas,
            loop > 0 ? (double)simulated / loop : 0, loop, cpu, el,
            cpu > 0 ? (double)simulated / cpu : 0);
  int bad = 0;
  for (size_t k = 0; k < n; k++) bad |= rs[k].lost != 0 || !sim_conserved(&rs[k], su.tr.n);
  sim_setup_free(&su);
  return bad ? 3 : unwritten ? 1 : 0;
}
