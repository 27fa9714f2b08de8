/*
 * test_sim_lru.c - the simulator's replica cache evicts the tail of a
 * cached prompt before its head (examples/sim/lru.c, sim_lru_prefix_fill),
 * as vLLM and SGLang do: a cache full of one prompt that must make room
 * keeps that prompt's leading blocks, so the next request with the same
 * prefix still hits them; a capacity changed later (sim_lru_set_cap, the
 * reachable maximum's spot pool) keeps the most recent keys; a capacity
 * its 32-bit slot indices cannot hold is refused. Exits 0 when every
 * check holds.
 */
#include <stdio.h>

#include "sim.h"

static int fails;

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "FAIL: %s\n", what);
    fails++;
  }
}

int main(void) {
  sim_lru l;
  if (sim_lru_init(&l, 4)) return 2;
  const uint64_t chain[4] = {11, 12, 13, 14};
  const uint64_t other[2] = {21, 22};
  check(sim_lru_prefix_fill(&l, chain, 4) == 0, "a cold prompt has no hits");
  check(sim_lru_prefix_fill(&l, chain, 4) == 4, "the same prompt hits all of it");
  /* Two new blocks evict two: the tail of the cached prompt, not its head. */
  check(sim_lru_prefix_fill(&l, other, 2) == 0, "another prompt is cold");
  check(sim_lru_contains(&l, 11) && sim_lru_contains(&l, 12), "the head stays");
  check(!sim_lru_contains(&l, 13) && !sim_lru_contains(&l, 14), "the tail goes");
  check(sim_lru_prefix_fill(&l, chain, 4) == 2, "the prefix still hits its head");
  /* A request's hits are in use: the blocks it brings never evict them. */
  sim_lru_clear(&l);
  const uint64_t old[2] = {41, 42}, longer[4] = {11, 12, 31, 32};
  sim_lru_prefix_fill(&l, chain, 2);
  sim_lru_prefix_fill(&l, old, 2); /* 11 and 12 are now the oldest */
  check(sim_lru_prefix_fill(&l, longer, 4) == 2, "two leading hits");
  check(sim_lru_contains(&l, 11) && sim_lru_contains(&l, 12), "its hits stay cached");
  check(!sim_lru_contains(&l, 41) && !sim_lru_contains(&l, 42), "older blocks go");
  /* A smaller capacity keeps the most recent keys; 0 holds nothing until
   * the capacity is raised again. */
  sim_lru_clear(&l);
  sim_lru_prefix_fill(&l, chain, 4); /* 11 is the most recent, 14 the oldest */
  sim_lru_set_cap(&l, 2);
  check(sim_lru_contains(&l, 11) && sim_lru_contains(&l, 12), "shrunk: the recent stay");
  check(!sim_lru_contains(&l, 13) && !sim_lru_contains(&l, 14), "shrunk: the oldest go");
  sim_lru_set_cap(&l, 0);
  check(!sim_lru_contains(&l, 11) && sim_lru_prefix_fill(&l, chain, 4) == 0, "emptied");
  check(!sim_lru_contains(&l, 11), "nothing enters at capacity 0");
  sim_lru_set_cap(&l, 4);
  sim_lru_prefix_fill(&l, chain, 4);
  check(sim_lru_prefix_fill(&l, chain, 4) == 4, "raised again: it caches");
  sim_lru_free(&l);
  /* A capacity past what 32-bit slot indices can hold is refused (twice
   * 2^31 once wrapped to 0 in 32 bits: a 4-slot table for 2^31 keys). */
  sim_lru big;
  check(sim_lru_init(&big, 0x80000000u) == -1, "2^31 keys refused");
  if (!fails) printf("sim lru checks passed\n");
  return fails ? 1 : 0;
}
