/*
 * speed.c - the simulator's own speed (--speed DATA_DIR): the library's
 * policy on every request trace in DATA_DIR/traces and on the built-in
 * generator, in three clusters of 64 and 16 replicas, one JSON object a
 * line on standard output (a benchmark's output: it judges nothing; the
 * cluster is in replicas, spot_replicas and spot_traces, 0 spot traces
 * meaning the built-in capacity), then the same figures as one table, a
 * row per trace, on standard error.
 *
 * The figure is simulated requests per CPU-second of the event loop: the
 * loop is timed with the thread's CPU clock, so other processes on the
 * machine do not enter it, and reading the trace (with the hit-rate
 * ceilings), setting up the engine and tearing it down are reported apart.
 * Each set-up runs SPEED_RUNS times (every run simulates the same thing).
 * On a shared machine other processes can only slow a run down (they evict
 * its caches), so the figure is the fastest run (requests_per_loop_cpu_s,
 * from loop_cpu_s), with the median and slowest beside it; run_setup_cpu_s
 * is the least engine set-up and tear-down time of a run, load_cpu_s the
 * trace's reading and its hit-rate ceilings, once.
 *
 *   "64 on-demand":          one pool of 64 replicas x 1,024 KV blocks;
 *   "16 on-demand + 48 spot": the default cluster, built-in spot zones;
 *   "4 on-demand + 12 spot":  the spot traces in DATA_DIR/spot (traces
 *                             only: the generator's rate is for 64).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"

#define SPEED_RUNS 7

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

enum { SPEED_SETUPS = 3 };
static const char *const SETUP_NAMES[SPEED_SETUPS] = {
    "64 on-demand", "16 on-demand + 48 spot", "4 on-demand + 12 spot"};

/* A set-up's figures for the table: fastest and median run. */
typedef struct speed_fig {
  double best, median;
  int done;
} speed_fig;

/* One set-up: load the trace once, run the library's policy SPEED_RUNS
 * times, print the line. 0, or -1 when a run cannot be set up. */
static int speed_setup(const sim_opts *o, const char *label, int setup, speed_fig *fig) {
  double c0 = sim_thread_cpu_s();
  sim_setup su;
  if (sim_setup_load(&su, o)) return -1;
  double load = sim_thread_cpu_s() - c0;
  double loop[SPEED_RUNS], other[SPEED_RUNS];
  static sim_result r;
  for (int k = 0; k < SPEED_RUNS; k++) {
    memset(&r, 0, sizeof r);
    snprintf(r.name, sizeof r.name, "library");
    sim_zone zones[SIM_MAX_ZONES];
    memcpy(zones, su.zones, sizeof zones);
    if (sim_run_policy(o, &su.tr, zones, su.nz, "reference", 0, &r, su.horizon_s)) {
      sim_setup_free(&su);
      return -1;
    }
    loop[k] = r.loop_cpu_s;
    other[k] = r.other_cpu_s;
  }
  qsort(loop, SPEED_RUNS, sizeof loop[0], cmp_double);
  qsort(other, SPEED_RUNS, sizeof other[0], cmp_double);
  double n = (double)su.tr.n, best = loop[0], mid = loop[SPEED_RUNS / 2];
  double worst = loop[SPEED_RUNS - 1];
  fig->best = best > 0 ? n / best : 0;
  fig->median = mid > 0 ? n / mid : 0;
  fig->done = 1;
  printf("{\"bench\":\"sim_speed\",\"trace\":\"%s\",\"setup\":\"%s\",\"policy\":\"library\","
         "\"replicas\":%u,\"spot_replicas\":%u,\"spot_traces\":%zu,"
         "\"requests\":%zu,\"runs\":%d,\"load_cpu_s\":%.4f,\"run_setup_cpu_s\":%.4f,"
         "\"loop_cpu_s\":%.4f,\"loop_cpu_s_median\":%.4f,\"requests_per_loop_cpu_s\":%.0f,"
         "\"requests_per_loop_cpu_s_median\":%.0f,\"requests_per_loop_cpu_s_worst\":%.0f}\n",
         label, SETUP_NAMES[setup], o->replicas, o->replicas - o->on_demand, o->n_spot, su.tr.n,
         SPEED_RUNS,
         load, other[0], best, mid, fig->best, fig->median, worst > 0 ? n / worst : 0);
  fflush(stdout);
  sim_setup_free(&su);
  return 0;
}

/* The table on standard error: a row per trace, fastest / median run of
 * each set-up, and the slowest of the 64-replica set-ups named. */
static void speed_table(char labels[][96], speed_fig figs[][SPEED_SETUPS], size_t n) {
  fprintf(stderr, "simulated requests per CPU-second of the event loop, fastest / median of %d "
                  "runs (thousands)\n%-34s", SPEED_RUNS, "trace");
  for (int k = 0; k < SPEED_SETUPS; k++) fprintf(stderr, " %24s", SETUP_NAMES[k]);
  fprintf(stderr, "\n");
  size_t low_t = 0;
  int low_k = -1;
  for (size_t t = 0; t < n; t++) {
    fprintf(stderr, "%-34s", labels[t]);
    for (int k = 0; k < SPEED_SETUPS; k++) {
      const speed_fig *f = &figs[t][k];
      if (!f->done) {
        fprintf(stderr, " %24s", "-");
        continue;
      }
      char cell[32];
      snprintf(cell, sizeof cell, "%.0f / %.0f", f->best / 1e3, f->median / 1e3);
      fprintf(stderr, " %24s", cell);
      if (k < 2 && (low_k < 0 || f->best < figs[low_t][low_k].best)) low_t = t, low_k = k;
    }
    fprintf(stderr, "\n");
  }
  if (low_k >= 0)
    fprintf(stderr, "slowest with 64 replicas: %s, %s, %.0f requests per loop CPU-second\n",
            labels[low_t], SETUP_NAMES[low_k], figs[low_t][low_k].best);
}

int sim_speed(const sim_opts *base, const char *data) {
  static const char *const exts[] = {".jsonl", ".csv"};
  char traces[SIM_LIST_MAX][512], spot[SIM_MAX_ZONES][512], dir[512];
  snprintf(dir, sizeof dir, "%s/traces", data);
  size_t nt = sim_list_dir(dir, exts, 2, traces, SIM_LIST_MAX);
  size_t nsp = sim_list_spot(data, spot, SIM_MAX_ZONES);
  if (!nt) {
    fprintf(stderr, "spotinfer_sim: --speed: no traces in %s/traces\n", data);
    return -1;
  }
  sim_opts o = *base;
  o.quiet = 1;
  if (!o.requests_given) o.gen.requests = 20000;
  static char labels[SIM_LIST_MAX + 1][96];
  static speed_fig figs[SIM_LIST_MAX + 1][SPEED_SETUPS];
  memset(figs, 0, sizeof figs);
  int rc = 0;
  size_t k = 0;
  for (; k <= nt && !rc; k++) {
    sim_opts t = o;
    t.trace = k < nt ? traces[k] : NULL;
    if (k < nt) snprintf(labels[k], sizeof labels[k], "%s", strrchr(traces[k], '/') + 1);
    else snprintf(labels[k], sizeof labels[k], "generator:%s", sim_family_name(t.gen.family));
    if (k < nt && !sim_trace_usable(&t, labels[k], 0)) continue; /* its row: "-" */
    t.replicas = 64, t.on_demand = 64, t.kv_blocks = 1024, t.n_spot = 0;
    rc = speed_setup(&t, labels[k], 0, &figs[k][0]);
    t.on_demand = 16;
    if (!rc) rc = speed_setup(&t, labels[k], 1, &figs[k][1]);
    t.replicas = 16, t.on_demand = 4, t.n_spot = nsp;
    for (size_t z = 0; z < nsp; z++) t.spot[z] = spot[z];
    if (!rc && nsp && k < nt) rc = speed_setup(&t, labels[k], 2, &figs[k][2]);
  }
  if (!rc) speed_table(labels, figs, k);
  return rc;
}
