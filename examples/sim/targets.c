/*
 * targets.c - the targets program (--targets DATA_DIR) and the built-in
 * replay scenario (--scenario replay).
 *
 * The targets program runs every policy on every request trace in
 * DATA_DIR/traces and on every generator family, in three set-ups, and
 * prints one JSON object a line (a benchmark's output, not a test: it
 * judges nothing, the reader compares):
 *
 *   "hit":    one pool of 16 on-demand replicas x 1,024 KV blocks; hit rate
 *             as % of the pooled-LRU ceiling, token-load imbalance (max /
 *             mean) and request-start imbalance;
 *   "spot":   4 on-demand + 12 spot replicas, the spot zones driven by the
 *             capacity traces in DATA_DIR/spot; savings against all on
 *             demand beside the class-feasible and the reachable maxima,
 *             lost, expired, notices, replays and replay success, and gold
 *             p95 TTFT beside the same run without interruptions. Twice:
 *             "window":"drawn", the run placed in the traces at a start
 *             drawn from the seed (or --spot-start: "given"), and
 *             "window":"trace-start", at the traces' first tick (a stress
 *             case: there only two of the twelve spot replicas are up);
 *   "replay": the replay scenario (below), where replays really happen;
 *   "trace":  per file of DATA_DIR/traces, what was read (its format,
 *             requests and skipped lines), or why it cannot be used: such
 *             a file is left out and the other traces run;
 *   "speed":  the simulator's own rate on 64 replicas (16 on-demand + 48
 *             spot) per trace, the median of 5 runs: requests per
 *             CPU-second of the event loop alone (loop_cpu_s, the thread's
 *             CPU clock), and of the whole run with its engine set-up
 *             (cpu_s, the process's); --speed DATA_DIR measures it more
 *             carefully (speed.c).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"


static void json_or_null(double v, int have) {
  if (have) printf("%.3f", v);
  else printf("null");
}

/* One run; 0 or -1. The result's name is the policy's. */
static int run(const sim_opts *o, const sim_setup *su, const char *name, const char *module,
               int all_od, sim_result *r) {
  memset(r, 0, sizeof *r);
  snprintf(r->name, sizeof r->name, "%s", name);
  sim_zone zones[SIM_MAX_ZONES];
  memcpy(zones, su->zones, sizeof zones);
  return sim_run_policy(o, &su->tr, zones, su->nz, module, all_od, r, su->horizon_s);
}

static int target_hit(const sim_opts *base, const char *label) {
  sim_opts o = *base;
  o.replicas = 16, o.on_demand = 16, o.kv_blocks = 1024, o.n_spot = 0;
  sim_setup su;
  if (sim_setup_load(&su, &o)) return -1;
  for (size_t k = 0; k < SIM_N_POLICIES; k++) {
    sim_result r;
    if (run(&o, &su, SIM_POLICIES[k].name, SIM_POLICIES[k].module, 0, &r)) {
      sim_setup_free(&su);
      return -1;
    }
    printf("{\"target\":\"hit\",\"trace\":\"%s\",\"setup\":\"16 on-demand x 1024 blocks\","
           "\"policy\":\"%s\",\"requests\":%zu,\"hit_pct\":%.3f,\"predicted_hit_pct\":%.3f,"
           "\"pooled_ceiling_pct\":%.3f,"
           "\"hit_of_pooled_pct\":%.3f,\"token_imbalance\":%.3f,\"start_imbalance\":%.3f,"
           "\"conserved\":%s}\n",
           label, r.name, su.tr.n, sim_hit_pct(&r), sim_predicted_hit_pct(&r),
           su.ceil.total > 0 ? 100 * su.ceil.pooled / su.ceil.total : 0,
           sim_of_pooled_pct(&r, &su.ceil), r.imbalance, r.start_imbalance,
           sim_conserved(&r, su.tr.n) ? "true" : "false");
    fflush(stdout);
  }
  sim_setup_free(&su);
  return 0;
}

/* Where the spot run sits in its capacity traces. */
static const char *window_name(const sim_opts *o, const sim_setup *su) {
  if (!o->n_spot) return "built-in";
  if (su->spot_start_drawn) return "drawn";
  return su->spot_start_s == 0 ? "trace-start" : "given";
}

static void print_spot(const char *target, const char *label, const sim_opts *o,
                       const sim_setup *su, const sim_result *r, const sim_result *calm,
                       const sim_result *base) {
  double sav, mx;
  sim_savings(o, r, base, &sav, &mx);
  double reach = sim_reachable_pct(o, &su->tr, r, base, mx);
  int gold = r->done_class[SPI_CLASS_GOLD] > 0;
  /* Withheld (null) when the run or the baseline left work unfinished:
   * their costs are not for the same work. */
  int cmp = sim_savings_comparable(r, base);
  printf("{\"target\":\"%s\",\"trace\":\"%s\",\"setup\":\"%u on-demand + %u spot\","
         "\"window\":\"%s\",\"spot_start_s\":%.0f,\"seed\":%" PRIu64 ","
         "\"policy\":\"%s\",\"requests\":%zu,\"unfinished\":%" PRIu64 ",\"savings_pct\":",
         target, label, o->on_demand, o->replicas - o->on_demand, window_name(o, su),
         su->spot_start_s, o->gen.seed, r->name, su->tr.n, sim_unfinished(r));
  json_or_null(sav, cmp);
  printf(",\"max_savings_pct\":%.3f,\"savings_of_max_pct\":", mx);
  json_or_null(mx > 0 ? 100 * sav / mx : 0, cmp && mx > 0);
  printf(",\"reachable_savings_pct\":%.3f,\"savings_of_reachable_pct\":", reach);
  json_or_null(reach > 0 ? 100 * sav / reach : 0, cmp && reach > 0);
  /* The savings are against the library's own all-on-demand run, so a
   * policy change that makes that run cheaper too can lower them while the
   * spot run costs less: both costs, in dollars, for comparing runs. */
  printf(",\"usd\":%.6f,\"all_on_demand_usd\":%.6f", r->usd, base->usd);
  printf(",\"lost\":%" PRIu64 ",\"route_errors\":%" PRIu64 ",\"expired\":%" PRIu64
         ",\"at_horizon\":%" PRIu64
         ",\"notices\":%" PRIu64 ",\"replays\":%" PRIu64 ",\"replayed_requests\":%" PRIu64
         ",\"replay_success_pct\":",
         r->lost, r->route_errors, r->expired, r->at_horizon, r->notices, r->replays,
         r->replayed);
  json_or_null(sim_replay_success_pct(r), r->replayed > 0);
  printf(",\"spot_replicas_up_mean\":%.2f,\"spot_hit_pct\":", r->spot_up_mean);
  json_or_null(r->spot_total_blocks > 0 ? 100 * r->spot_hit_blocks / r->spot_total_blocks : 0,
               r->spot_total_blocks > 0);
  printf(",\"hit_pct\":%.3f,\"predicted_hit_pct\":%.3f", sim_hit_pct(r),
         sim_predicted_hit_pct(r));
  printf(",\"gold_p95_ttft_ms\":");
  json_or_null(r->ttft[SPI_CLASS_GOLD][1], gold);
  if (calm) {
    printf(",\"gold_p95_ttft_calm_ms\":");
    json_or_null(calm->ttft[SPI_CLASS_GOLD][1], calm->done_class[SPI_CLASS_GOLD] > 0);
    printf(",\"gold_p95_vs_calm\":");
    json_or_null(calm->ttft[SPI_CLASS_GOLD][1] > 0
                     ? r->ttft[SPI_CLASS_GOLD][1] / calm->ttft[SPI_CLASS_GOLD][1] : 0,
                 gold && calm->done_class[SPI_CLASS_GOLD] > 0 &&
                     calm->ttft[SPI_CLASS_GOLD][1] > 0);
  }
  printf(",\"conserved\":%s}\n", sim_conserved(r, su->tr.n) ? "true" : "false");
  fflush(stdout);
}

/* Every policy, the all-on-demand baseline, and (with calm) each policy
 * again with no interruptions, for the gold TTFT comparison. */
static int target_spot(const char *target, const sim_opts *o, const char *label, int calm) {
  sim_setup su;
  if (sim_setup_load(&su, o)) return -1;
  sim_result base, r, c;
  int rc = run(o, &su, "all-on-demand", "reference", 1, &base);
  sim_opts oc = *o;
  oc.no_interruptions = 1;
  for (size_t k = 0; k < SIM_N_POLICIES && !rc; k++) {
    rc = run(o, &su, SIM_POLICIES[k].name, SIM_POLICIES[k].module, 0, &r);
    if (!rc && calm) rc = run(&oc, &su, SIM_POLICIES[k].name, SIM_POLICIES[k].module, 0, &c);
    if (!rc) print_spot(target, label, o, &su, &r, calm ? &c : NULL, &base);
  }
  sim_setup_free(&su);
  return rc;
}

static int cmp_seconds(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The median of TARGET_SPEED_RUNS runs: one run's rate moves by a third on
 * a busy machine. */
#define TARGET_SPEED_RUNS 5
static int target_speed(const sim_opts *base, const char *label) {
  sim_opts o = *base;
  o.replicas = 64, o.on_demand = 16, o.kv_blocks = 1024;
  sim_setup su;
  if (sim_setup_load(&su, &o)) return -1;
  sim_result r;
  double loop[TARGET_SPEED_RUNS], cpu[TARGET_SPEED_RUNS];
  int rc = 0;
  for (int k = 0; k < TARGET_SPEED_RUNS && !rc; k++) {
    double c0 = sim_cpu_s();
    rc = run(&o, &su, "library", "reference", 0, &r);
    cpu[k] = sim_cpu_s() - c0;
    loop[k] = r.loop_cpu_s;
  }
  if (!rc) { /* every run completed: the arrays are full */
    qsort(loop, TARGET_SPEED_RUNS, sizeof loop[0], cmp_seconds);
    qsort(cpu, TARGET_SPEED_RUNS, sizeof cpu[0], cmp_seconds);
    double lm = loop[TARGET_SPEED_RUNS / 2], cm = cpu[TARGET_SPEED_RUNS / 2];
    printf("{\"target\":\"speed\",\"trace\":\"%s\",\"setup\":\"16 on-demand + 48 spot\","
           "\"policy\":\"library\",\"requests\":%zu,\"runs\":%d,\"loop_cpu_s\":%.3f,"
           "\"requests_per_loop_cpu_s\":%.0f,\"cpu_s\":%.3f,\"requests_per_cpu_s\":%.0f}\n",
           label, su.tr.n, TARGET_SPEED_RUNS, lm, lm > 0 ? (double)su.tr.n / lm : 0, cm,
           cm > 0 ? (double)su.tr.n / cm : 0);
  }
  fflush(stdout);
  sim_setup_free(&su);
  return rc;
}

void sim_scenario_replay(sim_opts *o) {
  o->gen.family = SIM_FAMILY_LONG_GEN;
  if (!o->requests_given) o->gen.requests = 6000;
  if (!o->rate_given) o->gen.rate_per_s = 8;
  o->replicas = 16, o->on_demand = 4;
  o->zone_cloud = "gcp";
  o->n_spot = 0;
}

/* s as a JSON string. */
static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') printf("\\%c", c);
    else if (c < 0x20) printf("\\u%04x", c);
    else putchar(c);
  }
  putchar('"');
}

int sim_trace_usable(const sim_opts *t, const char *label, int json) {
  sim_trace tr;
  char msg[256] = "";
  int ok = !sim_trace_read(&tr, t->trace, t->limit, t->gen.mix, t->gen.seed, msg, sizeof msg);
  if (!ok) fprintf(stderr, "spotinfer_sim: %s skipped: %s\n", label, msg);
  if (!json) {
    if (ok) sim_trace_free(&tr);
    return ok;
  }
  printf("{\"target\":\"trace\",\"trace\":");
  json_string(label);
  if (ok) {
    printf(",\"usable\":true,\"format\":");
    json_string(tr.format ? tr.format : "");
    printf(",\"requests\":%zu,\"bad_lines\":%zu}\n", tr.n, tr.bad_lines);
    sim_trace_free(&tr);
  } else {
    printf(",\"usable\":false,\"reason\":");
    json_string(msg);
    printf("}\n");
  }
  fflush(stdout);
  return ok;
}

int sim_targets(const sim_opts *base, const char *data) {
  char traces[SIM_LIST_MAX][512], spot[SIM_MAX_ZONES][512], dir[512];
  snprintf(dir, sizeof dir, "%s/traces", data);
  static const char *const exts[] = {".jsonl", ".csv"};
  size_t nt = sim_list_dir(dir, exts, 2, traces, SIM_LIST_MAX);
  size_t nsp = sim_list_spot(data, spot, SIM_MAX_ZONES);
  if (!nt || !nsp) {
    fprintf(stderr, "spotinfer_sim: --targets: no traces in %s/traces or no spot traces in "
            "%s/spot\n", data, data);
    return -1;
  }
  sim_opts o = *base;
  o.quiet = 1;
  if (!o.requests_given) o.gen.requests = 5000;
  if (!o.rate_given) o.gen.rate_per_s = 20;
  int rc = 0;
  for (size_t k = 0; k < nt + SIM_FAMILIES && !rc; k++) {
    if (base->family_given && (k < nt || (int)(k - nt) != base->gen.family)) continue;
    sim_opts t = o;
    char label[96];
    if (k < nt) {
      t.trace = traces[k];
      const char *b = strrchr(traces[k], '/');
      snprintf(label, sizeof label, "%s", b ? b + 1 : traces[k]);
      if (!sim_trace_usable(&t, label, 1)) continue;
    } else {
      t.trace = NULL;
      t.gen.family = (int)(k - nt);
      snprintf(label, sizeof label, "generator:%s", sim_family_name(t.gen.family));
    }
    rc = target_hit(&t, label);
    sim_opts s = t;
    s.replicas = 16, s.on_demand = 4, s.kv_blocks = 1024, s.n_spot = nsp;
    for (size_t z = 0; z < nsp; z++) s.spot[z] = spot[z];
    if (!rc) rc = target_spot("spot", &s, label, 1);
    /* The traces' first tick, beside the drawn window: a stress case. */
    s.spot_start_given = 1, s.spot_start_s = 0;
    if (!rc) rc = target_spot("spot", &s, label, 1);
    if (!rc && k < nt) rc = target_speed(&t, label);
  }
  if (!rc && !base->family_given) {
    sim_opts r = o;
    r.requests_given = base->requests_given, r.rate_given = base->rate_given;
    sim_scenario_replay(&r);
    rc = target_spot("replay", &r, "scenario:replay", 1);
  }
  return rc;
}
