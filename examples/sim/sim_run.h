/* sim_run.h - the simulation run and its report. */
#ifndef SPOTINFER_SIM_RUN_H
#define SPOTINFER_SIM_RUN_H

#include "sim.h"

#define SIM_MAX_ZONES 8
#define SIM_MAX_GROUPS 64
#define SIM_NAME_MAX 40

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

typedef struct sim_opts {
  sim_gen_opts gen;
  uint32_t replicas, on_demand, kv_blocks, max_batch;
  double prefill_tps, decode_tps; /* per replica; decode per stream */
  double od_usd_h, spot_usd_h;
  const char *trace;
  size_t limit;
  const char *spot[SIM_MAX_ZONES];
  size_t n_spot;
  double spot_offset_s;
  const sim_cluster *cluster; /* NULL: the flags above describe it */
  const char *policies;
  const char *json, *svg;
  int quiet;
} sim_opts;

void sim_opts_default(sim_opts *o);
int sim_main(const sim_opts *o);

#endif
