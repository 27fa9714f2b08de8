/* lru.c - a fixed-capacity LRU set of 64-bit keys (one replica's KV blocks):
 * linear-probing hash with backward-shift deletion, intrusive list.
 *
 * It is on the simulator's hot path (every block of every request started
 * on a replica), and a replica's table does not stay in cache between two
 * of its requests, so the layout is for cache lines: a probe reads one
 * slot holding the key and its node, a node holds its links and its slot,
 * and sim_lru_prefix_fill prefetches the slots of the blocks it will look
 * up and re-touches its hits through the nodes it found. */
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#define NIL UINT32_MAX

struct sim_lru_slot {
  uint64_t key1; /* key + 1; 0 = empty */
  uint32_t node;
  uint32_t spare;
};

struct sim_lru_node {
  uint32_t prev, next, slot, spare;
};

#if defined(__GNUC__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)(p))
#endif

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
  l->slots = calloc(slots, sizeof *l->slots);
  l->nodes = calloc(capacity, sizeof *l->nodes);
  if (!l->slots || !l->nodes) {
    sim_lru_free(l);
    return -1;
  }
  sim_lru_clear(l);
  return 0;
}

void sim_lru_free(sim_lru *l) {
  free(l->slots);
  free(l->nodes);
  memset(l, 0, sizeof *l);
}

void sim_lru_clear(sim_lru *l) {
  memset(l->slots, 0, ((size_t)l->mask + 1) * sizeof *l->slots);
  l->size = 0;
  l->head = l->tail = NIL;
}

/* Keys are hashes already (chained block hashes, mixed pairs), so their
 * low bits pick the slot without mixing again. */
static uint32_t home_of(uint64_t key) { return (uint32_t)(key ^ (key >> 32)); }

/* The slot holding key, or NIL; *empty gets the first empty slot of its
 * probe sequence (where key would go). */
static uint32_t find_slot(const sim_lru *l, uint64_t key, uint32_t *empty) {
  uint32_t i = home_of(key) & l->mask;
  while (l->slots[i].key1) {
    if (l->slots[i].key1 == key + 1) return i;
    i = (i + 1) & l->mask;
  }
  *empty = i;
  return NIL;
}

static void unlink_node(sim_lru *l, uint32_t n) {
  struct sim_lru_node *x = &l->nodes[n];
  if (x->prev != NIL) l->nodes[x->prev].next = x->next;
  else l->head = x->next;
  if (x->next != NIL) l->nodes[x->next].prev = x->prev;
  else l->tail = x->prev;
}

static void push_front(sim_lru *l, uint32_t n) {
  l->nodes[n].prev = NIL;
  l->nodes[n].next = l->head;
  if (l->head != NIL) l->nodes[l->head].prev = n;
  l->head = n;
  if (l->tail == NIL) l->tail = n;
}

static void move_front(sim_lru *l, uint32_t n) {
  if (l->head != n) {
    unlink_node(l, n);
    push_front(l, n);
  }
}

static void delete_slot(sim_lru *l, uint32_t i) {
  /* Backward-shift deletion keeps probe chains intact without tombstones. */
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & l->mask;
    if (!l->slots[j].key1) break;
    uint32_t home = home_of(l->slots[j].key1 - 1) & l->mask;
    int between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (between) continue;
    l->slots[i] = l->slots[j];
    l->nodes[l->slots[i].node].slot = i;
    i = j;
  }
  l->slots[i].key1 = 0;
}

int sim_lru_contains(const sim_lru *l, uint64_t key) {
  uint32_t empty;
  return find_slot(l, key, &empty) != NIL;
}

/* The node now holding key, made most recent, or NIL when absent (then
 * *empty is where key would go). */
static uint32_t touch_node(sim_lru *l, uint64_t key, uint32_t *empty) {
  uint32_t s = find_slot(l, key, empty);
  if (s == NIL) return NIL;
  uint32_t n = l->slots[s].node;
  move_front(l, n);
  return n;
}

int sim_lru_touch(sim_lru *l, uint64_t key) {
  uint32_t empty;
  return touch_node(l, key, &empty) != NIL;
}

void sim_lru_insert(sim_lru *l, uint64_t key) {
  uint32_t i;
  if (touch_node(l, key, &i) != NIL) return;
  uint32_t n;
  if (l->size < l->cap) {
    n = l->size++; /* nodes are taken in order and only all given back */
  } else {
    n = l->tail;
    unlink_node(l, n);
    delete_slot(l, l->nodes[n].slot);
    /* The deletion may have shifted entries into or out of key's probe
     * sequence: look for its place again. */
    i = home_of(key) & l->mask;
    while (l->slots[i].key1) i = (i + 1) & l->mask;
  }
  l->slots[i].key1 = key + 1;
  l->slots[i].node = n;
  l->nodes[n].slot = i;
  push_front(l, n);
}

/* Hits remembered by node for the second touch (longer prompts look the
 * rest up again). */
#define PREFIX_NODES 256
#define PREFETCH_AHEAD 8

static void prefetch_home(const sim_lru *l, uint64_t key) {
  PREFETCH(&l->slots[home_of(key) & l->mask]);
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
  uint32_t node[PREFIX_NODES], hit = 0, empty;
  for (uint32_t b = 0; b < n && b < PREFETCH_AHEAD; b++) prefetch_home(l, chain[b]);
  while (hit < n) {
    if (hit + PREFETCH_AHEAD < n) prefetch_home(l, chain[hit + PREFETCH_AHEAD]);
    uint32_t x = touch_node(l, chain[hit], &empty);
    if (x == NIL) break;
    if (hit < PREFIX_NODES) node[hit] = x;
    hit++;
  }
  for (uint32_t b = n; b-- > hit;) {
    if (b >= hit + PREFETCH_AHEAD) prefetch_home(l, chain[b - PREFETCH_AHEAD]);
    if (l->size == l->cap) {
      /* The next two to be evicted: the tail's slot, and the node after. */
      const struct sim_lru_node *t = &l->nodes[l->tail];
      PREFETCH(&l->slots[t->slot]);
      if (t->prev != NIL) PREFETCH(&l->nodes[t->prev]);
    }
    sim_lru_insert(l, chain[b]);
  }
  /* A hit's node still holds its key unless the inserts evicted it (a
   * prompt longer than the cache); then look the key up as before. */
  for (uint32_t b = hit; b-- > 0;) {
    if (b < PREFIX_NODES && l->slots[l->nodes[node[b]].slot].key1 == chain[b] + 1)
      move_front(l, node[b]);
    else
      sim_lru_touch(l, chain[b]);
  }
  return hit;
}
