/*
 * test_sim_lru.c - the simulator's replica cache evicts the tail of a
 * cached prompt before its head (examples/sim/lru.c, sim_lru_prefix_fill),
 * as vLLM and SGLang do: a cache full of one prompt that must make room
 * keeps that prompt's leading blocks, so the next request with the same
 * prefix still hits them; a capacity changed later (sim_lru_set_cap, the
 * reachable maximum's spot pool) keeps the most recent keys; a capacity
 * its 32-bit slot indices cannot hold is refused; and a long random run
 * of fills (shared prefixes, prompts longer than the cache, repeated
 * blocks) hits and evicts as a plain list model of the same rules does.
 * Exits 0 when every check holds.
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

/* The rules of sim_lru_prefix_fill on a plain recency list, most recent
 * first: the leading hits moved to the front, the rest inserted last to
 * first (the oldest evicted when full), then the hits touched again last
 * to first. */
enum { MODEL_CAP = 600 };
typedef struct model {
  uint64_t k[MODEL_CAP];
  uint32_t n, cap;
} model;

static int model_find(const model *m, uint64_t key) {
  for (uint32_t i = 0; i < m->n; i++)
    if (m->k[i] == key) return (int)i;
  return -1;
}

static void model_front(model *m, int i) {
  uint64_t key = m->k[i];
  for (; i > 0; i--) m->k[i] = m->k[i - 1];
  m->k[0] = key;
}

static void model_insert(model *m, uint64_t key) {
  int i = model_find(m, key);
  if (i < 0) {
    if (m->n == m->cap) m->n--;
    i = (int)m->n++;
    m->k[i] = key;
  }
  model_front(m, i);
}

static uint32_t model_fill(model *m, const uint64_t *chain, uint32_t n) {
  uint32_t hit = 0;
  for (int i; hit < n && (i = model_find(m, chain[hit])) >= 0; hit++) model_front(m, i);
  for (uint32_t b = n; b-- > hit;) model_insert(m, chain[b]);
  for (uint32_t b = hit; b-- > 0;) {
    int i = model_find(m, chain[b]);
    if (i >= 0) model_front(m, i);
  }
  return hit;
}

static uint64_t rng(uint64_t *s) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return *s >> 33;
}

/* Random prompts over a few shared prefixes against the model: the same
 * hits every fill and the same keys held after it. Capacities small
 * (evictions in most fills) and large (hits of several hundred blocks).
 * Every clear_every fills both start empty again, so fills that fit beside
 * what the cache holds (no eviction) come often, and the evictions after
 * them check the recency order they left. */
static void random_fills(uint32_t cap, uint32_t max_len, int fills, int clear_every) {
  sim_lru l;
  static model m;
  if (sim_lru_init(&l, cap)) {
    check(0, "random fills: init");
    return;
  }
  m.n = 0, m.cap = cap;
  uint64_t seed = cap, chain[1024];
  int bad = 0;
  for (int f = 0; f < fills && !bad; f++) {
    if (f % clear_every == 0) {
      sim_lru_clear(&l);
      m.n = 0;
    }
    uint32_t n = 1 + (uint32_t)(rng(&seed) % max_len);
    uint64_t root = rng(&seed) % 4, split = rng(&seed) % (n + 1);
    for (uint32_t b = 0; b < n; b++)
      chain[b] = b < split ? root * 100000 + b : 1000000 + rng(&seed) % (4 * cap);
    if (n > 2 && rng(&seed) % 8 == 0) chain[n - 1] = chain[n / 2]; /* a repeat */
    uint32_t want = model_fill(&m, chain, n), got = sim_lru_prefix_fill(&l, chain, n);
    bad |= want != got;
    for (uint32_t i = 0; i < m.n; i++) bad |= !sim_lru_contains(&l, m.k[i]);
    bad |= l.size != m.n;
  }
  check(!bad, "random fills: the same hits and keys as the list model");
  sim_lru_free(&l);
}

int main(void) {
  random_fills(16, 24, 4000, 4000);
  random_fills(64, 40, 4000, 4000);
  random_fills(MODEL_CAP, 400, 1500, 1500);
  random_fills(64, 12, 4000, 10);
  random_fills(MODEL_CAP, 60, 3000, 16);
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
