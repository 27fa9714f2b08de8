/*
 * test_sim_reach.c - the simulator's reachable maximum saving follows the
 * spot pool's size over the run (examples/sim/timeline.c,
 * sim_reachable_pct): a pool that loses a replica mid-run caches less than
 * one that keeps both; a pool with no replica up sends silver on demand;
 * bronze waits for the first replica back. Exits 0 when every check holds.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"

static int fails;

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "FAIL: %s\n", what);
    fails++;
  }
}

#define N 40     /* requests, one a second, prompts A and B in turn */
#define BLOCKS 4 /* blocks a prompt; a replica holds one prompt */
#define IN 2048
#define OUT 1

static sim_trace_req reqs[N];
static uint64_t chain[N * BLOCKS];

static void make_trace(sim_trace *t, uint32_t klass) {
  memset(t, 0, sizeof *t);
  for (size_t i = 0; i < N; i++) {
    sim_trace_req *q = &reqs[i];
    memset(q, 0, sizeof *q);
    q->arrival_ns = (int64_t)i * 1000000000ll;
    q->in_tokens = IN, q->out_tokens = OUT, q->nblocks = BLOCKS, q->klass = klass;
    q->block_off = i * BLOCKS;
    for (size_t b = 0; b < BLOCKS; b++) chain[i * BLOCKS + b] = sim_mix64(1000 * (i % 2) + b);
  }
  t->reqs = reqs, t->n = N, t->chain = chain, t->nb = N * BLOCKS;
}

static void make_opts(sim_opts *o) {
  memset(o, 0, sizeof *o);
  o->prefill_tps = 20000, o->decode_tps = 80, o->max_batch = 64;
  o->kv_blocks = BLOCKS, o->od_usd_h = 4.5, o->spot_usd_h = 1.8;
  o->replicas = 4, o->on_demand = 2;
}

/* GPU-seconds of one request with `cached` prompt tokens, as priced. */
static double gpu_s(double cached) { return (IN - cached) / 20000.0 + OUT / (80.0 * 64); }

/* A run of one zone of two replicas whose capacity changes as given:
 * (time, capacity) pairs. */
static double reach(const sim_trace *t, const double *changes, size_t n, sim_result *base) {
  sim_opts o;
  make_opts(&o);
  static sim_result r;
  memset(&r, 0, sizeof r);
  r.price_ratio = 0.4;
  sim_timeline_init(&r.tl, 1);
  r.tl.zone_size[0] = 2;
  for (size_t k = 0; k < n; k++)
    sim_timeline_cap(&r.tl, changes[2 * k], 0, (uint32_t)changes[2 * k + 1]);
  return sim_reachable_pct(&o, t, &r, base, 100);
}

int main(void) {
  sim_trace t;
  make_trace(&t, SPI_CLASS_SILVER);
  /* All on demand: every request uncached. */
  static sim_result base;
  memset(&base, 0, sizeof base);
  base.usd = N * gpu_s(0) * 4.5 / 3600;
  base.tokens = N * (IN + OUT);

  const double both[] = {0, 2};
  double r2 = reach(&t, both, 1, &base);
  /* Two replicas hold A and B: the first of each misses, the rest hit all
   * but the prompt's last token (the run counts hits in whole blocks and
   * leaves one token to prefill). */
  double want = 100 * (1 - (2 * gpu_s(0) + (N - 2) * gpu_s(IN - 1)) * 4.5 / 3600 * 0.4 / base.usd);
  check(fabs(r2 - want) < 1e-9, "two replicas up all along: A and B stay cached");

  const double one[] = {0, 1};
  double r1 = reach(&t, one, 1, &base);
  want = 100 * (1 - N * gpu_s(0) * 4.5 / 3600 * 0.4 / base.usd);
  check(fabs(r1 - want) < 1e-9, "one replica: A and B evict each other");

  /* Two replicas, then one from 20.5 s: the second half misses. Priced at
   * the peak, as before, this equalled two replicas all along. */
  const double drop[] = {0, 2, 20.5, 1};
  double rd = reach(&t, drop, 2, &base);
  check(rd < r2 - 1 && rd > r1 + 1, "a replica lost mid-run lowers the reachable maximum");

  /* No spot replica up: silver runs on demand, nothing is saved. */
  const double none[] = {0, 0};
  check(fabs(reach(&t, none, 1, &base)) < 1e-9, "no spot: silver on demand saves nothing");

  /* Bronze waits: nothing up until 100 s, then two replicas serve it all. */
  sim_trace tb;
  make_trace(&tb, SPI_CLASS_BRONZE);
  const double late[] = {0, 0, 100, 2};
  check(fabs(reach(&tb, late, 2, &base) - r2) < 1e-9, "bronze held for spot runs when it returns");

  if (!fails) printf("sim reachable checks passed\n");
  return fails ? 1 : 0;
}
