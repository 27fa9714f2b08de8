/* lru.c - a fixed-capacity LRU set of 64-bit keys (one replica's KV blocks):
 * linear-probing hash with backward-shift deletion, intrusive list. */
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#define NIL UINT32_MAX

uint64_t sim_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int sim_lru_init(sim_lru *l, uint32_t capacity) {
  memset(l, 0, sizeof *l);
  if (capacity < 1) capacity = 1;
  uint32_t slots = 4;
  while (slots < capacity * 2u) slots <<= 1;
  l->cap = capacity;
  l->mask = slots - 1;
  l->keys = calloc(slots, sizeof *l->keys);
  l->slot_node = calloc(slots, sizeof *l->slot_node);
  l->node_key = calloc(capacity, sizeof *l->node_key);
  l->prev = calloc(capacity, sizeof *l->prev);
  l->next = calloc(capacity, sizeof *l->next);
  l->node_slot = calloc(capacity, sizeof *l->node_slot);
  if (!l->keys || !l->slot_node || !l->node_key || !l->prev || !l->next ||
      !l->node_slot) {
    sim_lru_free(l);
    return -1;
  }
  sim_lru_clear(l);
  return 0;
}

void sim_lru_free(sim_lru *l) {
  free(l->keys);
  free(l->slot_node);
  free(l->node_key);
  free(l->prev);
  free(l->next);
  free(l->node_slot);
  memset(l, 0, sizeof *l);
}

void sim_lru_clear(sim_lru *l) {
  memset(l->keys, 0, ((size_t)l->mask + 1) * sizeof *l->keys);
  l->size = 0;
  l->head = l->tail = NIL;
  for (uint32_t i = 0; i < l->cap; i++) l->next[i] = i + 1 < l->cap ? i + 1 : NIL;
  l->free_head = 0;
}

/* Keys are hashes already (chained block hashes, mixed pairs), so their
 * low bits pick the slot without mixing again. */
static uint32_t home_of(uint64_t key) { return (uint32_t)(key ^ (key >> 32)); }

static uint32_t find_slot(const sim_lru *l, uint64_t key) {
  uint32_t i = home_of(key) & l->mask;
  while (l->keys[i]) {
    if (l->keys[i] == key + 1) return i;
    i = (i + 1) & l->mask;
  }
  return NIL;
}

static void unlink_node(sim_lru *l, uint32_t n) {
  if (l->prev[n] != NIL) l->next[l->prev[n]] = l->next[n];
  else l->head = l->next[n];
  if (l->next[n] != NIL) l->prev[l->next[n]] = l->prev[n];
  else l->tail = l->prev[n];
}

static void push_front(sim_lru *l, uint32_t n) {
  l->prev[n] = NIL;
  l->next[n] = l->head;
  if (l->head != NIL) l->prev[l->head] = n;
  l->head = n;
  if (l->tail == NIL) l->tail = n;
}

static void delete_slot(sim_lru *l, uint32_t i) {
  /* Backward-shift deletion keeps probe chains intact without tombstones. */
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & l->mask;
    if (!l->keys[j]) break;
    uint32_t home = home_of(l->keys[j] - 1) & l->mask;
    int between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (between) continue;
    l->keys[i] = l->keys[j];
    l->slot_node[i] = l->slot_node[j];
    l->node_slot[l->slot_node[i]] = i;
    i = j;
  }
  l->keys[i] = 0;
}

int sim_lru_contains(const sim_lru *l, uint64_t key) {
  return find_slot(l, key) != NIL;
}

int sim_lru_touch(sim_lru *l, uint64_t key) {
  uint32_t s = find_slot(l, key);
  if (s == NIL) return 0;
  uint32_t n = l->slot_node[s];
  if (l->head != n) {
    unlink_node(l, n);
    push_front(l, n);
  }
  return 1;
}

void sim_lru_insert(sim_lru *l, uint64_t key) {
  if (sim_lru_touch(l, key)) return;
  uint32_t n;
  if (l->free_head != NIL) {
    n = l->free_head;
    l->free_head = l->next[n];
    l->size++;
  } else {
    n = l->tail;
    unlink_node(l, n);
    delete_slot(l, l->node_slot[n]);
  }
  uint32_t i = home_of(key) & l->mask;
  while (l->keys[i]) i = (i + 1) & l->mask;
  l->keys[i] = key + 1;
  l->slot_node[i] = n;
  l->node_slot[n] = i;
  l->node_key[n] = key;
  push_front(l, n);
}

/* A request's prompt meets a replica's cache: the leading blocks present
 * are hits; then the cache holds the whole chain, its head the most
 * recently used. Engines evict the tail of a chain first (vLLM frees a
 * finished request's blocks last to first; SGLang's radix tree evicts
 * leaves), so a cached prefix is never cut off at its head while its tail
 * stays useless. The hits are touched first, so the blocks inserted after
 * them cannot evict them (a running request's blocks are in use), then the
 * missing blocks are inserted last to first, then the hits again last to
 * first. */
uint32_t sim_lru_prefix_fill(sim_lru *l, const uint64_t *chain, uint32_t n) {
  uint32_t hit = 0;
  while (hit < n && sim_lru_touch(l, chain[hit])) hit++;
  for (uint32_t b = n; b-- > hit;) sim_lru_insert(l, chain[b]);
  for (uint32_t b = hit; b-- > 0;) sim_lru_touch(l, chain[b]);
  return hit;
}
