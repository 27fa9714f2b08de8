/*
 * timeline.c - spot capacity per zone and the notices, drains and replays
 * of a run over simulated time, in a fixed number of bins (see
 * sim_timeline in sim_run.h) for the chart's timeline panel.
 */
#include <string.h>

#include "sim_run.h"

void sim_timeline_init(sim_timeline *t, uint32_t nz) {
  memset(t, 0, sizeof *t);
  t->bin_s = 1.0;
  t->nz = nz < SIM_MAX_ZONES ? nz : SIM_MAX_ZONES;
  memset(t->cap_min, 0xFF, sizeof t->cap_min);
  memset(t->cap_last, 0xFF, sizeof t->cap_last);
}

static uint16_t min_set(uint16_t a, uint16_t b) {
  if (a == SIM_TL_UNSET) return b;
  if (b == SIM_TL_UNSET) return a;
  return a < b ? a : b;
}

/* Halve the resolution: bins 2i and 2i+1 become bin i. */
static void merge_pairs(sim_timeline *t) {
  for (uint32_t i = 0; i < SIM_TL_BINS / 2; i++) {
    uint32_t a = 2 * i, b = 2 * i + 1;
    for (uint32_t z = 0; z < SIM_MAX_ZONES; z++) {
      t->cap_min[i][z] = min_set(t->cap_min[a][z], t->cap_min[b][z]);
      uint16_t last = t->cap_last[b][z];
      t->cap_last[i][z] = last != SIM_TL_UNSET ? last : t->cap_last[a][z];
    }
    t->notices[i] = t->notices[a] + t->notices[b];
    t->drains[i] = t->drains[a] + t->drains[b];
    t->replays[i] = t->replays[a] + t->replays[b];
  }
  size_t half = SIM_TL_BINS / 2;
  memset(t->cap_min[half], 0xFF, half * sizeof t->cap_min[0]);
  memset(t->cap_last[half], 0xFF, half * sizeof t->cap_last[0]);
  memset(t->notices + half, 0, half * sizeof t->notices[0]);
  memset(t->drains + half, 0, half * sizeof t->drains[0]);
  memset(t->replays + half, 0, half * sizeof t->replays[0]);
  t->used = (t->used + 1) / 2;
  t->bin_s *= 2;
}

/* The bin of time at_s, widening the bins until it fits. */
static uint32_t bin_of(sim_timeline *t, double at_s) {
  if (at_s < 0) at_s = 0;
  while (at_s >= t->bin_s * SIM_TL_BINS) merge_pairs(t);
  uint32_t b = (uint32_t)(at_s / t->bin_s);
  if (b >= SIM_TL_BINS) b = SIM_TL_BINS - 1;
  if (b + 1 > t->used) t->used = b + 1;
  return b;
}

void sim_timeline_cap(sim_timeline *t, double at_s, uint32_t zone, uint32_t cap) {
  if (zone >= t->nz) return;
  uint32_t b = bin_of(t, at_s);
  uint16_t c = cap < SIM_TL_UNSET ? (uint16_t)cap : SIM_TL_UNSET - 1;
  t->cap_min[b][zone] = min_set(t->cap_min[b][zone], c);
  t->cap_last[b][zone] = c;
}

void sim_timeline_count(sim_timeline *t, double at_s, int kind) {
  uint32_t b = bin_of(t, at_s);
  if (kind == SIM_TL_NOTICE) t->notices[b]++;
  else if (kind == SIM_TL_DRAIN) t->drains[b]++;
  else t->replays[b]++;
}

uint32_t sim_timeline_cap_at(const sim_timeline *t, uint32_t b, uint32_t z) {
  if (z >= t->nz) return 0;
  /* The lowest capacity in the bin, so a short outage stays visible. */
  if (b < SIM_TL_BINS && t->cap_min[b][z] != SIM_TL_UNSET) return t->cap_min[b][z];
  for (uint32_t k = b < SIM_TL_BINS ? b : SIM_TL_BINS; k-- > 0;)
    if (t->cap_last[k][z] != SIM_TL_UNSET) return t->cap_last[k][z];
  return t->zone_size[z];
}
