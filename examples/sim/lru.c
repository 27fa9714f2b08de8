/* lru.c - a fixed-capacity LRU set of 64-bit keys (one replica's KV blocks):
 * linear-probing hash with backward-shift deletion, its entries linked into
 * the recency list in place.
 *
 * It is on the simulator's hot path (every block of every request started
 * on a replica), and a replica's table does not stay in cache between two
 * of its requests, so the layout is for cache lines: a slot holds the key
 * and its list links (slot indices), so finding a key and moving it to the
 * front reads the slot and its two neighbours, and nothing else; the table
 * is 16 bytes a slot at half load, 32 KB for 1,024 blocks.
 * sim_lru_prefix_fill prefetches the slots of the blocks it looks up for
 * hits, and a fill that may evict those of the blocks it inserts. */
#include <stdlib.h>
#include <string.h>

#include "sim.h"

#define NIL UINT32_MAX

struct sim_lru_slot {
  uint64_t key1;       /* key + 1; 0 = empty */
  uint32_t prev, next; /* recency list, slot indices (NIL: none) */
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
  /* Slot indices are 32-bit with UINT32_MAX for none: at most 2^31 slots,
   * so at most SIM_LRU_MAX_CAP keys. Counted in 64 bits: twice a capacity
   * past 2^31 wraps in 32. */
  if (capacity > SIM_LRU_MAX_CAP) return -1;
  uint64_t slots = 4;
  while (slots < (uint64_t)capacity * 2) slots <<= 1;
  if (slots > SIZE_MAX / sizeof *l->slots) return -1;
  l->cap = capacity;
  l->mask = (uint32_t)(slots - 1);
  l->slots = calloc((size_t)slots, sizeof *l->slots);
  if (!l->slots) {
    sim_lru_free(l);
    return -1;
  }
  sim_lru_clear(l);
  return 0;
}

void sim_lru_free(sim_lru *l) {
  free(l->slots);
  memset(l, 0, sizeof *l);
}

/* A slot is empty when its key is 0; an empty slot's links are never read
 * (a key taking the slot writes them), so only the keys are cleared: a
 * store a slot, four a turn (a table has a power of two slots, at least
 * four), where a memset wrote every byte of the table. */
void sim_lru_clear(sim_lru *l) {
  struct sim_lru_slot *x = l->slots, *end = x + (size_t)l->mask + 1;
  for (; x < end; x += 4) x[0].key1 = x[1].key1 = x[2].key1 = x[3].key1 = 0;
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

static void unlink_slot(sim_lru *l, uint32_t i) {
  struct sim_lru_slot *x = &l->slots[i];
  if (x->prev != NIL) l->slots[x->prev].next = x->next;
  else l->head = x->next;
  if (x->next != NIL) l->slots[x->next].prev = x->prev;
  else l->tail = x->prev;
}

static void push_front(sim_lru *l, uint32_t i) {
  l->slots[i].prev = NIL;
  l->slots[i].next = l->head;
  if (l->head != NIL) l->slots[l->head].prev = i;
  l->head = i;
  if (l->tail == NIL) l->tail = i;
}

static void move_front(sim_lru *l, uint32_t i) {
  if (l->head != i) {
    unlink_slot(l, i);
    push_front(l, i);
  }
}

/* The run of slots first..last (linked in that order) moved to the front
 * of the list in one piece; nothing when it is there already. */
static inline void splice_front(sim_lru *l, uint32_t first, uint32_t last) {
  struct sim_lru_slot *s = l->slots;
  if (l->head == first) return;
  /* first is not the head, so it has a prev; out, then in at the head */
  uint32_t before = s[first].prev, after = s[last].next;
  s[before].next = after;
  if (after != NIL) s[after].prev = before;
  else l->tail = before;
  s[first].prev = NIL;
  s[last].next = l->head;
  s[l->head].prev = last;
  l->head = first;
}

/* The same as move_front of at[n-1], at[n-2], ..., at[0] in turn: the
 * slots end at the front in the order at[0..n) gives, the rest of the list
 * in its own order behind them. A run of them that already follow one
 * another in the list (at[j-1]'s next is at[j], looked at when the run is
 * moved, after the runs behind it) is moved in one piece: the blocks a
 * prompt shares with one cached before lie in the list as it left them,
 * so a fill's hits are mostly one run or a few. */
static void move_front_all(sim_lru *l, const uint32_t *at, uint32_t n) {
  const struct sim_lru_slot *s = l->slots;
  while (n) {
    uint32_t last = at[--n], first = last;
    while (n && s[at[n - 1]].next == first) first = at[--n];
    splice_front(l, first, last);
  }
}

/* move_front_all when the n (at least one) slots at at follow one another
 * in the list, in that order: the one run it would find, moved in one
 * piece, without reading every hit's link to find it. */
static void move_front_run(sim_lru *l, const uint32_t *at, uint32_t n) {
  splice_front(l, at[0], at[n - 1]);
}

/* Move the entry in slot j to the empty slot i, links and all. */
static void move_entry(sim_lru *l, uint32_t i, uint32_t j) {
  struct sim_lru_slot *x = &l->slots[i];
  *x = l->slots[j];
  if (x->prev != NIL) l->slots[x->prev].next = i;
  else l->head = i;
  if (x->next != NIL) l->slots[x->next].prev = i;
  else l->tail = i;
}

/* Empty slot i (already out of the list). */
static void delete_slot(sim_lru *l, uint32_t i) {
  /* Backward-shift deletion keeps probe chains intact without tombstones. */
  uint32_t j = i;
  for (;;) {
    j = (j + 1) & l->mask;
    if (!l->slots[j].key1) break;
    uint32_t home = home_of(l->slots[j].key1 - 1) & l->mask;
    int between = i <= j ? (i < home && home <= j) : (i < home || home <= j);
    if (between) continue;
    move_entry(l, i, j);
    i = j;
  }
  l->slots[i].key1 = 0;
}

int sim_lru_contains(const sim_lru *l, uint64_t key) {
  uint32_t empty;
  return find_slot(l, key, &empty) != NIL;
}

int sim_lru_touch(sim_lru *l, uint64_t key) {
  uint32_t empty = NIL, i = find_slot(l, key, &empty);
  if (i == NIL) return 0;
  move_front(l, i);
  return 1;
}

/* key, absent, goes in: into the empty slot i of its probe sequence while
 * there is room, else in place of the least recently used entry. */
static void insert_absent(sim_lru *l, uint64_t key, uint32_t i) {
  if (!l->cap) return;
  if (l->size < l->cap) {
    l->size++;
  } else {
    uint32_t t = l->tail;
    unlink_slot(l, t);
    delete_slot(l, t);
    /* The deletion may have shifted entries into or out of key's probe
     * sequence: look for its place again. */
    i = home_of(key) & l->mask;
    while (l->slots[i].key1) i = (i + 1) & l->mask;
  }
  l->slots[i].key1 = key + 1;
  push_front(l, i);
}

void sim_lru_set_cap(sim_lru *l, uint32_t capacity) {
  if (capacity > (l->mask + 1) / 2) capacity = (l->mask + 1) / 2;
  if (!capacity) {
    sim_lru_clear(l);
  } else {
    while (l->size > capacity) {
      uint32_t t = l->tail;
      unlink_slot(l, t);
      delete_slot(l, t);
      l->size--;
    }
  }
  l->cap = capacity;
}

void sim_lru_insert(sim_lru *l, uint64_t key) {
  uint32_t empty = NIL, i = find_slot(l, key, &empty);
  if (i != NIL) move_front(l, i);
  else insert_absent(l, key, empty);
}

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
 * first (looked up again: an insert's eviction may have shifted them, and
 * a prompt longer than the cache may have evicted them). */
/* Not inlined: most fills have room, and without this path inlined
 * sim_lru_prefix_fill is 1.1 KB of code instead of 1.9 KB and runs a few
 * instructions fewer a fill (counted with callgrind). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static void fill_evicting(sim_lru *l, const uint64_t *chain, uint32_t n, uint32_t hit,
                          const uint32_t *at) {
  /* Nothing has moved since the hits were found: their slots, when kept. */
  for (uint32_t b = 0; b < hit; b++) {
    if (at) move_front(l, at[b]);
    else sim_lru_touch(l, chain[b]);
  }
  for (uint32_t b = n; b-- > hit;) {
    if (b >= hit + PREFETCH_AHEAD) prefetch_home(l, chain[b - PREFETCH_AHEAD]);
    if (l->size == l->cap) {
      /* The next two to be evicted: the tail, and the entry before it. */
      const struct sim_lru_slot *t = &l->slots[l->tail];
      if (t->prev != NIL) PREFETCH(&l->slots[t->prev]);
    }
    sim_lru_insert(l, chain[b]);
  }
  for (uint32_t b = hit; b-- > 0;) sim_lru_touch(l, chain[b]);
}

/* The same when the missing blocks fit beside what the cache holds: no
 * insert evicts, so no slot moves and the hits' slots found before the
 * inserts are still theirs. Touching the hits before the inserts changes
 * nothing then (each is touched again after them, and nothing is evicted
 * in between), so they are touched once, after: the same recency order
 * and the same slots as fill_evicting, with one lookup a hit, not two.
 * Its inserts are not prefetched ahead: that was five instructions a block
 * and no time told apart (docs/simulator.md). */
static void fill_in_room(sim_lru *l, const uint64_t *chain, uint32_t n, uint32_t hit,
                         const uint32_t *at, int one_run) {
  for (uint32_t b = n; b-- > hit;) {
    uint32_t empty = NIL, i = find_slot(l, chain[b], &empty);
    if (i != NIL) {
      move_front(l, i);
      one_run = 0; /* a block past the hits was cached: the list moved */
    } else {
      l->size++;
      l->slots[empty].key1 = chain[b] + 1;
      push_front(l, empty);
    }
  }
  if (one_run) move_front_run(l, at, hit);
  else move_front_all(l, at, hit);
}

/* Hits whose slots a fill remembers; a longer run of hits takes
 * fill_evicting. */
#define FILL_AT_MAX 1024

/* The leading blocks present: their count, and the slots of the first
 * FILL_AT_MAX of them in at. A block is looked for first in the slot after
 * the one before it in the recency list: a fill leaves a prompt's blocks
 * there in order, so a prefix cached before is mostly found that way, with
 * one comparison; a key is in one slot only, so a match is the slot a
 * lookup would find. *lookups counts the hits found by a lookup: with one,
 * the first, the hits follow one another in the list (a walk along it
 * meets no slot twice, so no key repeats among them either). */
static uint32_t leading_hits(const sim_lru *l, const uint64_t *chain, uint32_t n,
                             uint32_t *at, uint32_t *lookups) {
  uint32_t hit = 0, empty = NIL, i, next = NIL, found = 0;
  for (uint32_t b = 0; b < n && b < PREFETCH_AHEAD; b++) prefetch_home(l, chain[b]);
  while (hit < n) {
    if (hit + PREFETCH_AHEAD < n) prefetch_home(l, chain[hit + PREFETCH_AHEAD]);
    if (next != NIL && l->slots[next].key1 == chain[hit] + 1) {
      i = next;
    } else {
      i = find_slot(l, chain[hit], &empty);
      if (i == NIL) break;
      found++;
    }
    if (hit < FILL_AT_MAX) at[hit] = i;
    hit++;
    next = l->slots[i].next;
  }
  *lookups = found;
  return hit;
}

uint32_t sim_lru_prefix_fill(sim_lru *l, const uint64_t *chain, uint32_t n) {
  uint32_t at[FILL_AT_MAX], lookups;
  if (!l->cap) return 0; /* emptied by sim_lru_set_cap: holds nothing */
  uint32_t hit = leading_hits(l, chain, n, at, &lookups);
  const uint32_t *kept = hit <= FILL_AT_MAX ? at : NULL;
  if (kept && n - hit <= l->cap - l->size) fill_in_room(l, chain, n, hit, kept, lookups == 1);
  else fill_evicting(l, chain, n, hit, kept);
  return hit;
}
