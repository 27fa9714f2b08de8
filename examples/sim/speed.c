/*
 * speed.c - the simulator's own speed (--speed DATA_DIR): the library's
 * policy on every request trace in DATA_DIR/traces and on the built-in
 * generator, in three clusters of 64 and 16 replicas, one JSON object a
 * line (a benchmark's output: it judges nothing).
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

/* One set-up: load the trace once, run the library's policy SPEED_RUNS
 * times, print the line. 0, or -1 when a run cannot be set up. */
static int speed_setup(const sim_opts *o, const char *label, const char *setup) {
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
  printf("{\"bench\":\"sim_speed\",\"trace\":\"%s\",\"setup\":\"%s\",\"policy\":\"library\","
         "\"requests\":%zu,\"runs\":%d,\"load_cpu_s\":%.4f,\"run_setup_cpu_s\":%.4f,"
         "\"loop_cpu_s\":%.4f,\"requests_per_loop_cpu_s\":%.0f,"
         "\"requests_per_loop_cpu_s_median\":%.0f,\"requests_per_loop_cpu_s_worst\":%.0f}\n",
         label, setup, su.tr.n, SPEED_RUNS, load, other[0], best, best > 0 ? n / best : 0,
         mid > 0 ? n / mid : 0, worst > 0 ? n / worst : 0);
  fflush(stdout);
  sim_setup_free(&su);
  return 0;
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
  int rc = 0;
  for (size_t k = 0; k <= nt && !rc; k++) {
    sim_opts t = o;
    char label[96];
    t.trace = k < nt ? traces[k] : NULL;
    if (k < nt) snprintf(label, sizeof label, "%s", strrchr(traces[k], '/') + 1);
    else snprintf(label, sizeof label, "generator:%s", sim_family_name(t.gen.family));
    t.replicas = 64, t.on_demand = 64, t.kv_blocks = 1024, t.n_spot = 0;
    rc = speed_setup(&t, label, "64 on-demand");
    t.on_demand = 16;
    if (!rc) rc = speed_setup(&t, label, "16 on-demand + 48 spot");
    t.replicas = 16, t.on_demand = 4, t.n_spot = nsp;
    for (size_t z = 0; z < nsp; z++) t.spot[z] = spot[z];
    if (!rc && nsp && k < nt) rc = speed_setup(&t, label, "4 on-demand + 12 spot");
  }
  return rc;
}
