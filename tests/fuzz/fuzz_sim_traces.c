/*
 * fuzz_sim_traces - the simulator's readers of outside data: request traces
 * (Mooncake or Bailian JSONL, Azure, BurstGPT or other headed CSV, told
 * apart by content), SkyPilot spot traces
 * (JSON) and cluster files (JSON). All three read the same input. A trace that is read must be
 * usable as the simulator uses it: at least one request, arrivals in order,
 * every request's blocks inside the block arrays, chained hashes made; a
 * spot trace at least a positive, bounded tick; a cluster 1 to 1000
 * replicas in groups that each name a pool. Anything else is refused
 * with a message, and nothing leaks either way.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"

static void check(int ok) {
  if (!ok) abort();
}

static void read_trace(const uint8_t *data, size_t size) {
  FILE *f = fmemopen((void *)(uintptr_t)data, size, "rb");
  if (!f) return;
  static const double mix[4] = {0, 0.2, 0.5, 0.3};
  char msg[256] = "";
  sim_trace t;
  int rc = sim_trace_parse(&t, f, "fuzz", 0, mix, 7, msg, sizeof msg);
  fclose(f);
  if (rc) {
    check(msg[0] != 0);
    return;
  }
  check(t.n > 0 && t.chain && t.ids);
  for (size_t i = 0; i < t.n; i++) {
    const sim_trace_req *q = &t.reqs[i];
    check(q->block_off <= t.nb && q->nblocks <= t.nb - q->block_off);
    check(q->klass <= SPI_CLASS_BRONZE);
    if (i) check(t.reqs[i - 1].arrival_ns <= q->arrival_ns);
  }
  sim_trace_free(&t);
}

static void read_spot(const uint8_t *data, size_t size) {
  FILE *f = fmemopen((void *)(uintptr_t)data, size, "rb");
  if (!f) return;
  char msg[256] = "";
  sim_spot_trace s;
  int rc = sim_spot_parse(&s, f, "zone-a_fuzz.json", "gcp", msg, sizeof msg);
  fclose(f);
  if (rc) {
    check(msg[0] != 0);
    return;
  }
  check(s.gap_s >= 1e-3 && s.gap_s <= 1e7);
  for (size_t i = 0; i < s.n; i++) check(s.v[i] >= 0 && s.v[i] <= s.vmax);
  check(!strcmp(s.zone, "zone-a") && s.lead_s == 30.0);
  sim_spot_free(&s);
}

static void read_cluster(const uint8_t *data, size_t size) {
  char msg[256] = "";
  sim_cluster c;
  if (sim_cluster_parse(&c, (const char *)data, size, "fuzz.json", msg, sizeof msg)) {
    check(msg[0] != 0);
    return;
  }
  uint32_t sum = 0;
  check(c.n >= 1 && c.n <= SIM_MAX_GROUPS && c.nzones <= SIM_MAX_ZONES);
  for (size_t i = 0; i < c.n; i++) {
    const sim_group *g = &c.g[i];
    check(g->pool == SPI_POOL_SPOT || g->pool == SPI_POOL_ON_DEMAND);
    check(g->pool != SPI_POOL_SPOT || (g->zone_index >= 0 && (size_t)g->zone_index < c.nzones));
    check(g->count >= 1 && g->od_usd_h > 0);
    sum += g->count;
  }
  check(sum == c.replicas && sum <= 1000);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!size) return 0; /* fmemopen needs at least one byte */
  read_trace(data, size);
  read_spot(data, size);
  read_cluster(data, size);
  return 0;
}
