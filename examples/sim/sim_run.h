/* sim_run.h - the simulation run and its report. */
#ifndef SPOTINFER_SIM_RUN_H
#define SPOTINFER_SIM_RUN_H

#include "sim.h"

#define SIM_MAX_ZONES 8
#define SIM_MAX_GROUPS 64
#define SIM_NAME_MAX 40
/* The report's service-level objectives (see check_slos in report.c). */
#define SIM_SLO_GOLD_TTFT_P95_MS 800.0
#define SIM_SLO_SILVER_DONE_P99_MS 8000.0

/* One group of identical replicas from a --cluster file. */
typedef struct sim_group {
  int32_t pool; /* SPI_POOL_SPOT or SPI_POOL_ON_DEMAND */
  char zone[SIM_NAME_MAX + 1], instance_type[SIM_NAME_MAX + 1];
  char cloud[8];   /* spot: cloud of a generated capacity trace */
  uint32_t count, kv_blocks, max_batch;
  double usd_h;    /* what the group costs in its own pool */
  double od_usd_h; /* what it costs on demand (the all-on-demand baseline) */
  double prefill_tps, decode_tps;
  int32_t zone_index; /* spot: which distinct spot zone, else -1 */
} sim_group;

typedef struct sim_cluster {
  sim_group g[SIM_MAX_GROUPS];
  size_t n;
  uint32_t replicas; /* sum of the counts */
  /* Distinct spot zones in order of first appearance; the i-th
   * --spot-trace drives the i-th of them. */
  char zones[SIM_MAX_ZONES][SIM_NAME_MAX + 1];
  char zone_cloud[SIM_MAX_ZONES][8];
  size_t nzones;
} sim_cluster;

/* Read and validate a cluster file. Returns 0, or -1 with msg naming the
 * key path of the first problem. */
int sim_cluster_read(sim_cluster *c, const char *path, char *msg, size_t msgcap);
/* The same from len bytes at buf; path is what messages call it. */
int sim_cluster_parse(sim_cluster *c, const char *buf, size_t len, const char *path, char *msg,
                      size_t msgcap);

typedef struct sim_opts {
  sim_gen_opts gen;
  uint32_t replicas, on_demand, kv_blocks, max_batch;
  double prefill_tps, decode_tps; /* per replica; decode per stream */
  double od_usd_h, spot_usd_h;
  const char *trace;
  size_t limit;
  double speedup; /* a trace's arrivals this many times as fast; 0 is 1 */
  const char *spot[SIM_MAX_ZONES];
  size_t n_spot;
  /* Where the run starts in its spot traces, seconds from their first tick
   * (--spot-start); with spot_start_given 0 it is drawn from the seed when
   * the zones' traces are read from files (see sim_spot_place). */
  double spot_start_s;
  int spot_start_given;
  const sim_cluster *cluster; /* NULL: the flags above describe it */
  const char *policies;
  const char *json, *svg;
  const char *config_json; /* --config: a library config to start from */
  double horizon_s;        /* simulated time after the last arrival */
  int no_interruptions;    /* spot zones gain capacity, never lose any */
  const char *zone_cloud;  /* built-in zones: this cloud for all four */
  int requests_given, rate_given; /* --requests / --rate were on the command line */
  int family_given;               /* --family: the targets program runs that family alone */
  int quiet;
} sim_opts;

/* What the simulator sets in a run's library config (see engine_config.c). */
typedef struct sim_engine_params {
  const char *policy;
  int all_on_demand;
  double prefill_tps, decode_tps, batch, spot_usd_h, od_usd_h;
  size_t requests, block_refs; /* of the trace: size the tables to it */
  double price_ratio; /* out: spot / on-demand $ per GPU-hour the run uses */
} sim_engine_params;

/* The run's config as JSON (free() it), or NULL with msg. */
char *sim_engine_config(const char *user_json, sim_engine_params *p, char *msg,
                        size_t msgcap);

/* A spot zone during a run. */
typedef struct sim_zone {
  sim_spot_trace tr;
  uint32_t size; /* replicas in the zone */
  uint32_t cap;  /* how many of them may run now */
  double start_s; /* the run's time 0 is this far into the trace (wrapping) */
} sim_zone;

/* Spot capacity and interruption events over a run, in a fixed number of
 * bins: when an event falls past the last bin, neighbouring bins are merged
 * and the bin width doubles, so memory stays bounded whatever the run's
 * length and the bins always span it. */
#define SIM_TL_BINS 256
#define SIM_TL_UNSET 0xFFFFu
#define SIM_TL_LOG 2048
typedef struct sim_timeline {
  double bin_s;          /* width of a bin, seconds */
  double end_s;          /* simulated time the run ended */
  uint32_t used;         /* bins up to the latest event */
  uint32_t nz;           /* zones recorded */
  uint32_t zone_size[SIM_MAX_ZONES];
  uint16_t cap_min[SIM_TL_BINS][SIM_MAX_ZONES];  /* SIM_TL_UNSET: no change */
  uint16_t cap_last[SIM_TL_BINS][SIM_MAX_ZONES];
  uint32_t notices[SIM_TL_BINS], drains[SIM_TL_BINS], replays[SIM_TL_BINS];
  /* Every capacity change as it happened, for the reachable maximum; when
   * more than SIM_TL_LOG happen, the rest is only in the bins (log_full). */
  uint32_t nlog, log_full;
  struct sim_tl_change {
    double t_s;
    uint32_t zone, cap;
  } log[SIM_TL_LOG];
} sim_timeline;

enum { SIM_TL_NOTICE, SIM_TL_DRAIN, SIM_TL_REPLAY };

void sim_timeline_init(sim_timeline *t, uint32_t nz);
void sim_timeline_cap(sim_timeline *t, double at_s, uint32_t zone, uint32_t cap);
void sim_timeline_count(sim_timeline *t, double at_s, int kind);
/* Capacity of zone z in bin b: the last change at or before it. */
uint32_t sim_timeline_cap_at(const sim_timeline *t, uint32_t b, uint32_t z);
/* Capacity of zone z when the run started. */
uint32_t sim_timeline_cap_start(const sim_timeline *t, uint32_t z);

/* What one policy's run measured. */
typedef struct sim_result {
  char name[32];
  double usd, usd_fleet, tokens;
  double usd_class[4];  /* ledger cost by class */
  double hit_blocks, total_blocks, oracle_blocks;
  /* Blocks the library's prefix index said the replica a request first
   * started on held (its decision's matched_blocks), over the same
   * requests as hit_blocks: above hit_blocks, the index believes in cache
   * the replicas have evicted. */
  double predicted_blocks;
  double spot_hit_blocks, spot_total_blocks; /* of the requests on spot */
  double class_hit_blocks[4], class_total_blocks[4]; /* by class */
  double spot_up_mean;  /* spot replicas up, mean over the run */
  double ttft[4][3], done[4][3]; /* p50 p95 p99 by class, ms, of the
                                    requests that completed */
  /* The SLOs' percentiles over every request of the class, one that never
   * completed counted as infinitely late (INFINITY when too many did not):
   * gold p95 TTFT, silver p99 completion, ms. */
  double slo_gold_ttft_p95, slo_silver_done_p99;
  uint64_t n_class[4];  /* requests by class (0: the class shows n/a) */
  uint64_t done_class[4]; /* of them, completed: 0, its latencies are n/a */
  uint64_t completed, lost, expired, at_horizon;
  uint64_t replays, replayed, replayed_ok, requeued, notices, drains;
  uint64_t route_errors, spot_served, od_served;
  uint64_t budget_mismatches; /* replays whose continuation's max_tokens is
                                 not the output left (run.c, pump) */
  double price_ratio;     /* spot / on-demand price in the run's config */
  double imbalance;       /* token load per up-second, max / mean */
  double start_imbalance; /* request starts per up-second, max / mean */
  int slo[4];             /* 1 met, 0 missed, -1 n/a */
  /* CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), so other
   * processes on the machine do not enter it: the event loop alone, and
   * the rest of sim_run_policy (engine, replicas and replay queue set up,
   * the summary, tear-down). */
  double loop_cpu_s, other_cpu_s;
  sim_timeline tl;
} sim_result;

/* Hit-rate ceilings of a trace on a cluster. */
typedef struct sim_ceilings {
  double total, oracle, pooled; /* blocks: all, oracle hits, pooled-LRU hits */
} sim_ceilings;

/* A trace, its spot zones and ceilings, ready for runs. */
typedef struct sim_setup {
  sim_trace tr;
  sim_zone zones[SIM_MAX_ZONES];
  size_t nz;
  double horizon_s;
  sim_ceilings ceil;
  double spot_start_s;  /* the zones' start_s */
  int spot_start_drawn; /* 1: drawn from the seed, 0: --spot-start or 0 */
} sim_setup;

typedef struct sim_policy_name {
  const char *name, *module;
} sim_policy_name;
extern const sim_policy_name SIM_POLICIES[];
extern const size_t SIM_N_POLICIES;

int sim_setup_load(sim_setup *su, const sim_opts *o);
/* Place the run in its spot traces (timeline.c): --spot-start when given;
 * else, when the zones' traces come from files, a start drawn from the
 * seed alone, uniform over the longest trace, in whole seconds; else 0. */
void sim_spot_place(sim_setup *su, const sim_opts *o);
void sim_setup_free(sim_setup *su);
int sim_wanted(const char *list, const char *name);
/* A --policies list: 0 when every comma-separated name is one of
 * SIM_POLICIES (or all-on-demand, always run), else -1 with the first
 * that is not (an empty one too) in bad. */
int sim_policies_check(const char *list, char *bad, size_t cap);
double sim_cpu_s(void);
/* CPU time of the calling thread, seconds. */
double sim_thread_cpu_s(void);
double sim_hit_pct(const sim_result *r);
/* The hit rate the library's prefix index predicted (predicted_blocks). */
double sim_predicted_hit_pct(const sim_result *r);
double sim_of_pooled_pct(const sim_result *r, const sim_ceilings *c);
double sim_of_oracle_pct(const sim_result *r, const sim_ceilings *c);
double sim_replay_success_pct(const sim_result *r);
int sim_conserved(const sim_result *r, size_t n);
void sim_savings(const sim_opts *o, const sim_result *r, const sim_result *base,
                 double *saving_pct, double *max_pct);
/* The requests a run left unfinished: still queued at its horizon, or
 * expired. */
uint64_t sim_unfinished(const sim_result *r);
/* Whether r's saving against base compares like with like: r is base, or
 * neither left a request unfinished. A run that did less of the trace's
 * work costs less for it, so its saving is withheld (n/a, null). */
int sim_savings_comparable(const sim_result *r, const sim_result *base);
double sim_reachable_pct(const sim_opts *o, const sim_trace *tr, const sim_result *r,
                         const sim_result *base, double max_pct);

void sim_opts_default(sim_opts *o);
/* The table program: every policy on one trace, tables on stdout. */
int sim_main(const sim_opts *o);
/* The chart (--svg): four panels in one SVG. Returns 0, or -1 with errno. */
int sim_write_chart(const char *path, const sim_setup *su, const sim_result *rs, size_t n);
/* One run of the policy module `policy` (all_od: every replica on demand,
 * no spot zones). Returns 0, or -1 when the engine cannot be set up. */
int sim_run_policy(const sim_opts *o, const sim_trace *tr, sim_zone *zones, size_t nz,
                   const char *policy, int all_od, sim_result *res, double horizon_s);
/* The targets program (--targets DIR): JSON lines on stdout. */
int sim_targets(const sim_opts *o, const char *data_dir);
/* Whether the trace o->trace can be read; when not, its reason goes to
 * standard error, and the caller leaves that file out and goes on with
 * the others. json: also a "trace" line on standard output, either way
 * (its format, requests and skipped lines, or the reason). */
int sim_trace_usable(const sim_opts *o, const char *label, int json);
/* The simulator's speed (--speed DIR): JSON lines on stdout (speed.c). */
int sim_speed(const sim_opts *o, const char *data_dir);
/* --scenario replay: GCP zones, long generations, 4 on-demand + 12 spot. */
void sim_scenario_replay(sim_opts *o);


#endif
