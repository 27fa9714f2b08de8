/* sim_run.h - the simulation run and its report. */
#ifndef SPOTINFER_SIM_RUN_H
#define SPOTINFER_SIM_RUN_H

#include "sim.h"

#define SIM_MAX_ZONES 8

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
  const char *policies;
  const char *json, *svg;
  int quiet;
} sim_opts;

void sim_opts_default(sim_opts *o);
int sim_main(const sim_opts *o);

#endif
