/*
 * replica.c - the replica registry: identities, slots and load signals.
 *
 * A replica has two halves. Its identity (id, pool, tier, price, models)
 * lives in an immutable spi_replica_set that is replaced on every change:
 * writers serialise on registry.lock, publish the new set with an atomic
 * exchange and, once the lock is released, wait for readers pinned on the
 * old one (spi__rcu_synchronize) and free it (lock order: engine.h). An add
 * copies no entry: the new set shares the old one's entries and has the new
 * one past their end, where no reader of the old set looks (set_append); an
 * update or a removal copies them. Its run-time state (lifecycle state,
 * load, open tickets, error breaker) lives in a slot that never moves, all
 * atomics, so routers and reporters touch it without a lock.
 *
 * A slot's gen is bumped whenever entries of the prefix index that name the
 * slot must stop counting: on removal, when the replica leaves ACTIVE, and
 * when its pool or models change. Freed slots are reused round-robin, as
 * late as possible, and a reused slot starts with a new gen.
 *
 * Writers must not hold an RCU pin (synchronize would wait for themselves),
 * nor any lock while they wait: a pinned notice takes the nodes and registry
 * locks, so waiting for it under them would hang both.
 */
#include <math.h>
#include <sched.h>
#include <string.h>
#include <xxhash.h>

#include "engine.h"
#include "pool_index.h"


/* A set's entries live in a block that the sets made from it by adds
 * share. An add writes its entry at the block's end, past the n of every
 * set published on the block (each reader reads r[0..n) of its own set and
 * nothing more), then publishes a new set over the same block: no entry is
 * copied. Entries below a published set's n are never written again; an
 * update or a removal copies them into a new block. A block is freed with
 * the last set on it (retire, after readers of that set are gone). */
typedef struct ident_block {
  atomic_size_t refs;  /* sets on it */
  size_t cap;          /* entries it has room for */
  size_t used;         /* entries written (registry.lock) */
  size_t ixmask;       /* the index by id's slots - 1 */
  spi_replica_ident r[]; /* cap entries, then the index by id */
} ident_block;

/* The block's index by id: open addressing by id_hash over at least twice
 * as many slots as entries, each the position of an entry or SPI_NO_POS.
 * Entries are only ever added to a block, so a slot once filled keeps its
 * position: a reader of any set on the block probes it with relaxed loads
 * (an add may fill a slot meanwhile), skips positions at or past its own
 * n, and stops at an empty slot, which no entry of its set lies past. */
typedef _Atomic uint16_t ix_slot;

static ix_slot *ix_of(const ident_block *b) {
  return (ix_slot *)(void *)(uintptr_t)(b->r + b->cap);
}

/* Index entry pos of block b (registry lock held, before the set that
 * holds it is published). */
static void ix_put(ident_block *b, uint64_t hash, size_t pos) {
  ix_slot *ix = ix_of(b);
  size_t i = (size_t)hash & b->ixmask;
  while (atomic_load_explicit(&ix[i], memory_order_relaxed) != SPI_NO_POS)
    i = (i + 1) & b->ixmask;
  atomic_store_explicit(&ix[i], (uint16_t)pos, memory_order_relaxed);
}

/* A set: its header and slot-to-position map, over a block of entries. */
typedef struct set_block {
  spi_replica_set set; /* first: a set's address is its block's */
  ident_block *ids;
  uint16_t pos_of_slot[SPI_REPLICA_SLOTS];
} set_block;

_Static_assert(SPI_REPLICA_SLOTS <= SPI_NO_POS, "positions fit 16 bits");
_Static_assert(offsetof(set_block, set) == 0, "a set is its block");

static set_block *block_of(const spi_replica_set *set) {
  return (set_block *)(void *)(uintptr_t)set;
}

/* A set of n entries over ids, which gains a reference. */
static spi_replica_set *set_on(const spi_mem *m, ident_block *ids, size_t n) {
  set_block *b = spi__alloc(m, sizeof *b);
  if (!b) return NULL;
  b->set.n = n;
  b->set.version = 0;
  b->set.r = ids->r;
  b->set.pos_of_slot = b->pos_of_slot;
  b->ids = ids;
  atomic_fetch_add(&ids->refs, 1);
  return &b->set;
}

/* A set of n entries in a new block with room for half as many again (at
 * least 16, at most every slot), so adds that follow copy nothing; the
 * caller writes the entries, then set_index. */
static spi_replica_set *set_new(const spi_mem *m, size_t n) {
  size_t cap = n + n / 2 + 16;
  if (cap > SPI_REPLICA_SLOTS) cap = n > SPI_REPLICA_SLOTS ? n : SPI_REPLICA_SLOTS;
  size_t slots = 32;
  while (slots < 2 * cap) slots *= 2;
  ident_block *ids = spi__alloc(m, sizeof *ids + cap * sizeof(spi_replica_ident) +
                                       slots * sizeof(ix_slot));
  if (!ids) return NULL;
  atomic_init(&ids->refs, 0);
  ids->cap = cap;
  ids->used = n;
  ids->ixmask = slots - 1;
  for (size_t i = 0; i < slots; i++) atomic_init(&ix_of(ids)[i], SPI_NO_POS);
  spi_replica_set *set = set_on(m, ids, n);
  if (!set) {
    spi__free(m, ids);
    return NULL;
  }
  memset(block_of(set)->pos_of_slot, 0xff, sizeof block_of(set)->pos_of_slot);
  return set;
}

/* Free a set no reader holds, and its entries with the last set on them. */
static void set_free(const spi_mem *m, spi_replica_set *set) {
  if (!set) return;
  set_block *b = block_of(set);
  if (atomic_fetch_sub(&b->ids->refs, 1) == 1) spi__free(m, b->ids);
  spi__free(m, b);
}

/* n entries copied into a new block: the fixed fields and each text up to
 * and with its NUL, not the rest of its array. An entry is 864 bytes, most
 * of them room for text (the models list's 512 alone) that nothing reads
 * past the NUL. A removal or an update copies every entry, and a spot
 * fleet removes and adds replicas as its zones come and go. */
static void idents_copy(spi_replica_ident *dst, const spi_replica_ident *src,
                        size_t n) {
  for (size_t i = 0; i < n; i++) {
    spi_replica_ident *d = &dst[i];
    const spi_replica_ident *s = &src[i];
    memcpy(d, s, offsetof(spi_replica_ident, id));
    memcpy(d->id, s->id, s->id_len + 1);
    memcpy(d->zone, s->zone, s->zone_len + 1);
    memcpy(d->instance_type, s->instance_type, s->type_len + 1);
    memcpy(d->node, s->node, s->node_len + 1);
    memcpy(d->models, s->models, (size_t)s->models_len + 1);
  }
}

/* Fill the slot-to-position map and the index by id of a new block once
 * the entries are final. */
static void set_index(spi_replica_set *set) {
  ident_block *ids = block_of(set)->ids;
  for (size_t i = 0; i < set->n; i++) {
    set->pos_of_slot[set->r[i].slot] = (uint16_t)i;
    ix_put(ids, set->r[i].id_hash, i);
  }
}

/* What a slot holds of its replica, and its value before any report: one
 * list, so the slot's first set-up and a new replica's reset cannot drift
 * apart. (gen, incarnation, state, held and opening outlive a replica.) */
#define SLOT_REPLICA_FIELDS(X, s)              \
  X(&(s)->running, 0ull);                      \
  X(&(s)->waiting, 0ull);                      \
  X(&(s)->kv_usage, 0ull);                     \
  X(&(s)->load_at_ns, 0ll);                    \
  X(&(s)->inflight, 0u);                       \
  X(&(s)->breaker, SPI_BREAKER_CLOSED);        \
  X(&(s)->consecutive_errors, 0u);             \
  X(&(s)->open_until_ns, 0ll);                 \
  X(&(s)->probe_taken, 1); /* no probe outside HALF_OPEN */ \
  X(&(s)->advised_until_ns, 0ll);              \
  X(&(s)->cooldown_until_ns, 0ll);             \
  X(&(s)->prefill_queued, 0ull);               \
  X(&(s)->served_tokens, 0ull);                \
  X(&(s)->prefill_rate, 0ull);                 \
  X(&(s)->rate_samples, 0u);                   \
  X(&(s)->mean_output, 0ull)

static void slot_reset(spi_replica_slot *s) { SLOT_REPLICA_FIELDS(atomic_store, s); }

/* A tripwire: a field added to spi_replica_slot belongs in
 * SLOT_REPLICA_FIELDS (reset for each new replica) or beside gen,
 * incarnation, state, held and opening (set up once in
 * spi__registry_init). */
_Static_assert(sizeof(spi_replica_slot) == 128,
               "spi_replica_slot changed: set its new field up above");

/* What a replica of max_inflight streams joining pool starts with as
 * tokens served: its share of the pool's live replicas' tokens, that is
 * their tokens per stream times its streams (their mean when all have its
 * size), so the fleet-relative load guard (policy.c) neither floods a
 * newcomer nor shuns it. Registry lock held. */
static uint64_t pool_mean_served(spi_registry *g, const spi_replica_set *set,
                                 int32_t pool, uint32_t max_inflight) {
  uint64_t sum = 0, streams = 0;
  for (size_t i = 0; i < set->n; i++) {
    const spi_replica_slot *o = &g->slots[set->r[i].slot];
    if (set->r[i].pool != pool || atomic_load(&o->state) == 0) continue;
    sum += atomic_load(&o->served_tokens);
    streams += set->r[i].max_inflight;
  }
  if (!streams) return 0;
  /* sum * max_inflight / streams, rounded down, in two parts that do not
   * overflow: for equal sizes, sum / n as before. */
  return sum / streams * max_inflight + sum % streams * max_inflight / streams;
}

/* ------------------------------------------------- machines and spot pools */

/* The current set's replicas chained by the hash of their machine and of
 * their spot pool (instance type, zone), through per-slot links: what a
 * notice acts on is found without reading the whole set (node.c). As many
 * buckets as slots; LINK_NIL ends a chain. Chains keep the order replicas
 * joined them. Changed only by the set's writers, read only by node.c,
 * both under registry.lock. */
#define LINK_NIL 0xffffu
struct spi_replica_links {
  uint16_t node_head[SPI_REPLICA_SLOTS];
  uint16_t node_next[SPI_REPLICA_SLOTS];
  uint16_t pool_head[SPI_REPLICA_SLOTS];
  uint16_t pool_next[SPI_REPLICA_SLOTS];
};

_Static_assert((SPI_REPLICA_SLOTS & (SPI_REPLICA_SLOTS - 1)) == 0,
               "buckets are found by a mask");
_Static_assert(SPI_REPLICA_SLOTS < LINK_NIL, "slots fit the links");

static uint32_t node_bucket(const char *node, size_t len) {
  return (uint32_t)(XXH3_64bits(node, len) & (SPI_REPLICA_SLOTS - 1));
}

static uint32_t pool_bucket(const char *type, const char *zone) {
  uint64_t h = XXH3_64bits(type, strlen(type));
  return (uint32_t)(XXH3_64bits_withSeed(zone, strlen(zone), h) &
                    (SPI_REPLICA_SLOTS - 1));
}

static void chain_add(uint16_t *head, uint16_t *next, uint32_t b,
                      uint32_t slot) {
  uint16_t *p = &head[b];
  while (*p != LINK_NIL) p = &next[*p];
  *p = (uint16_t)slot;
  next[slot] = LINK_NIL;
}

static void chain_del(uint16_t *head, uint16_t *next, uint32_t b,
                      uint32_t slot) {
  uint16_t *p = &head[b];
  while (*p != LINK_NIL && *p != slot) p = &next[*p];
  if (*p == slot) *p = next[slot];
}

static void links_add(spi_registry *g, const spi_replica_ident *r) {
  struct spi_replica_links *l = g->links;
  chain_add(l->node_head, l->node_next, node_bucket(r->node, r->node_len),
            r->slot);
  if (r->pool == SPI_POOL_SPOT)
    chain_add(l->pool_head, l->pool_next,
              pool_bucket(r->instance_type, r->zone), r->slot);
}

static void links_del(spi_registry *g, const spi_replica_ident *r) {
  struct spi_replica_links *l = g->links;
  chain_del(l->node_head, l->node_next, node_bucket(r->node, r->node_len),
            r->slot);
  if (r->pool == SPI_POOL_SPOT)
    chain_del(l->pool_head, l->pool_next,
              pool_bucket(r->instance_type, r->zone), r->slot);
}

static int same_node(const spi_replica_ident *a, const spi_replica_ident *b) {
  return a->node_len == b->node_len && !memcmp(a->node, b->node, a->node_len);
}

/* Whether a and b are in one spot pool (instance type, zone), or neither
 * is spot. */
static int same_spot_pool(const spi_replica_ident *a,
                          const spi_replica_ident *b) {
  return a->pool == b->pool &&
         (b->pool != SPI_POOL_SPOT ||
          (!strcmp(a->instance_type, b->instance_type) &&
           !strcmp(a->zone, b->zone)));
}

/* The replica cur becomes r (same slot): relinked if its machine or spot
 * pool changed. */
static void links_move(spi_registry *g, const spi_replica_ident *cur,
                       const spi_replica_ident *r) {
  if (same_spot_pool(cur, r) && same_node(cur, r)) return;
  links_del(g, cur);
  links_add(g, r);
}

/* The next replica of a chain from bucket b (*cursor: the slot last
 * returned, or SPI_CHAIN_START). */
static const spi_replica_ident *chain_next(spi_registry *g,
                                           const spi_replica_set *set,
                                           const uint16_t *head,
                                           const uint16_t *next, uint32_t b,
                                           uint32_t *cursor) {
  uint16_t s = *cursor == SPI_CHAIN_START ? head[b] : next[*cursor];
  for (; s != LINK_NIL; s = next[s]) {
    g->link_steps++;
    *cursor = s;
    uint16_t pos = set->pos_of_slot[s];
    if (pos < set->n) return &set->r[pos];
  }
  return NULL;
}

const spi_replica_ident *spi__registry_next_on_node(spi_registry *g,
                                                    const spi_replica_set *set,
                                                    const char *node,
                                                    size_t len,
                                                    uint32_t *cursor) {
  const struct spi_replica_links *l = g->links;
  uint32_t b = node_bucket(node, len);
  const spi_replica_ident *r;
  while ((r = chain_next(g, set, l->node_head, l->node_next, b, cursor)))
    if (r->node_len == len && memcmp(r->node, node, len) == 0) return r;
  return NULL;
}

const spi_replica_ident *spi__registry_next_in_pool(spi_registry *g,
                                                    const spi_replica_set *set,
                                                    const char *type,
                                                    const char *zone,
                                                    uint32_t *cursor) {
  const struct spi_replica_links *l = g->links;
  uint32_t b = pool_bucket(type, zone);
  const spi_replica_ident *r;
  while ((r = chain_next(g, set, l->pool_head, l->pool_next, b, cursor)))
    if (r->pool == SPI_POOL_SPOT && !strcmp(r->instance_type, type) &&
        !strcmp(r->zone, zone))
      return r;
  return NULL;
}

int spi__registry_init(spi_registry *g, const spi_mem *m) {
  /* Slots are cache-line aligned; the allocator only promises malloc's.
   * Zeroed, so a field left out of the lists below starts at 0, not at
   * whatever the allocator held. */
  g->slots_raw = spi__calloc(m, 1, SPI_REPLICA_SLOTS * sizeof *g->slots + 63);
  spi_replica_set *empty = set_new(m, 0);
  int lanes_made = 1;
  for (size_t k = 0; k < SPI_PIX_LANES; k++) {
    g->pix_lane[k] = spi__pix_new(m);
    lanes_made &= g->pix_lane[k] != NULL;
  }
  g->pix = g->pix_lane[0];
  g->links = spi__alloc(m, sizeof *g->links);
  if (!g->slots_raw || !empty || !lanes_made || !g->links ||
      pthread_mutex_init(&g->lock, NULL) != 0) {
    spi__free(m, g->slots_raw);
    set_free(m, empty);
    for (size_t k = 0; k < SPI_PIX_LANES; k++) {
      spi__pix_free(m, g->pix_lane[k]);
      g->pix_lane[k] = NULL;
    }
    spi__free(m, g->links);
    g->links = NULL;
    g->pix = NULL;
    g->slots_raw = NULL;
    g->slots = NULL;
    return SPI_ENOMEM;
  }
  g->slots = (spi_replica_slot *)(void *)((uintptr_t)((char *)g->slots_raw + 63) &
                                          ~(uintptr_t)63);
  for (size_t i = 0; i < SPI_REPLICA_SLOTS; i++) {
    spi_replica_slot *s = &g->slots[i];
    atomic_init(&s->gen, 0u);
    atomic_init(&s->incarnation, 0u);
    atomic_init(&s->state, 0);
    atomic_init(&s->held, 0);
    atomic_init(&s->opening, 0u);
    SLOT_REPLICA_FIELDS(atomic_init, s);
  }
  memset(g->links, 0xff, sizeof *g->links);
  g->link_steps = 0;
  atomic_init(&g->set, empty);
  g->next_slot = 0;
  g->set_version = 0;
  for (size_t w = 0; w < SPI_REPLICA_SLOTS / 64; w++) atomic_init(&g->dirty[w], 0);
  for (size_t k = 0; k < SPI_PIX_MODELS; k++) g->pix_model[k] = NULL;
  g->pix_names_n = 0;
  g->pix_counts = NULL;
  atomic_init(&g->pix_made_n, 0u);
  atomic_init(&g->pix_models_n, 0u);
  atomic_init(&g->pix_renamed_at, 0u);
  atomic_init(&g->pix_lanes, 1u);
  atomic_init(&g->spot_seen_ns, 0);
  return SPI_OK;
}

void spi__registry_destroy(spi_registry *g, const spi_mem *m) {
  if (!g->slots) return;
  set_free(m, atomic_exchange(&g->set, NULL));
  spi__free(m, g->slots_raw);
  for (size_t k = 0; k < SPI_PIX_LANES; k++) {
    spi__pix_free(m, g->pix_lane[k]);
    g->pix_lane[k] = NULL;
  }
  unsigned made = atomic_load(&g->pix_made_n);
  for (unsigned k = 0; k < made; k++) {
    spi__pix_free(m, g->pix_model[k]);
    g->pix_model[k] = NULL;
  }
  spi__free(m, g->links);
  g->links = NULL;
  g->pix = NULL;
  g->slots_raw = NULL;
  g->slots = NULL;
  pthread_mutex_destroy(&g->lock);
}

/* The ident for id in set, through its block's index; each entry looked
 * at is counted in *steps unless steps is NULL. */
static const spi_replica_ident *find_in(const spi_replica_set *set,
                                        const char *id, size_t len,
                                        uint64_t *steps) {
  if (!set || !id) return NULL;
  const ident_block *b = block_of(set)->ids;
  const ix_slot *ix = ix_of(b);
  uint64_t hash = XXH3_64bits(id, len);
  for (size_t i = (size_t)hash & b->ixmask;; i = (i + 1) & b->ixmask) {
    uint16_t pos = atomic_load_explicit(&ix[i], memory_order_relaxed);
    if (pos == SPI_NO_POS) return NULL;
    if (steps) ++*steps;
    if (pos >= set->n) continue; /* added after this set */
    const spi_replica_ident *r = &set->r[pos];
    if (r->id_hash == hash && r->id_len == len && memcmp(r->id, id, len) == 0)
      return r;
  }
}

const spi_replica_ident *spi__registry_find(const spi_replica_set *set,
                                            const char *id, size_t len) {
  return find_in(set, id, len, NULL);
}

const char *spi__models_next(const char **p, const char *end, size_t *len) {
  const char *comma = memchr(*p, ',', (size_t)(end - *p));
  const char *a = *p, *b = comma ? comma : end;
  while (a < b && (*a == ' ' || *a == '\t')) a++;
  while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
  *p = comma ? comma + 1 : end;
  *len = (size_t)(b - a);
  return a;
}

int spi__models_serve(const char *models, size_t models_len,
                      const char *model, size_t len) {
  /* No list serves every model; a request that names no model may go to
   * any replica. */
  if (models_len == 0 || len == 0) return 1;
  for (const char *p = models, *end = models + models_len; p < end;) {
    size_t n;
    const char *name = spi__models_next(&p, end, &n);
    if (n == len && memcmp(name, model, len) == 0) return 1;
  }
  return 0;
}

int spi__replica_serves(const spi_replica_ident *r, const char *model,
                        size_t len) {
  return spi__models_serve(r->models, r->models_len, model, len);
}

/* ------------------------------------------------------------- validation */

/* The high bit of each of w's bytes that is not printable ASCII other
 * than space (0x21..0x7e): set in w itself, in b + 1 for 0x7f, and clear
 * in b + 0x5f for 0x20 and below. Below 0x80 neither sum carries into the
 * next byte; a byte at 0x80 or above is out whatever its sums do. */
static uint64_t id_word_out(uint64_t w) {
  const uint64_t ones = UINT64_C(0x0101010101010101);
  return (w | (w + ones) | ~(w + 0x5f * ones)) & 0x80 * ones;
}

/* id_word_out for four bytes. */
static uint32_t id_word4_out(uint32_t w) {
  const uint32_t ones = UINT32_C(0x01010101);
  return (w | (w + ones) | ~(w + 0x5f * ones)) & 0x80 * ones;
}

/* An id of 1..7 bytes: two words of four that overlap (4..7), or the
 * first, middle and last bytes beside a printable 'a' (1..3: those are
 * all of them). A byte at a time cost a short id five instructions a
 * byte. */
static int valid_short_id(const char *id, size_t len) {
  uint32_t a, b;
  if (len >= 4) {
    memcpy(&a, id, 4);
    memcpy(&b, id + len - 4, 4);
  } else {
    a = (uint32_t)(unsigned char)id[0] |
        (uint32_t)(unsigned char)id[len / 2] << 8 |
        (uint32_t)(unsigned char)id[len - 1] << 16 | UINT32_C(0x61) << 24;
    b = a;
  }
  return (id_word4_out(a) | id_word4_out(b)) == 0;
}

/* A load report checks its id every time: eight bytes at a time, the last
 * eight read once more where they overlap the word before. */
static int valid_id(const char *id, size_t len) {
  if (!id || len == 0 || len >= SPI_ID_MAX) return 0;
  if (len < 8) return valid_short_id(id, len);
  uint64_t w, out = 0;
  for (size_t i = 0; i + 8 < len; i += 8) {
    memcpy(&w, id + i, 8);
    out |= id_word_out(w);
  }
  memcpy(&w, id + len - 8, 8);
  return (out | id_word_out(w)) == 0;
}

static int check_id(spi_engine *e, const char *id, size_t len) {
  if (valid_id(id, len)) return SPI_OK;
  return spi__engine_fail(
      e, SPI_EINVAL,
      "replica id: must be 1..63 bytes of printable ASCII without spaces");
}

/* Copy an optional text field of fewer than cap bytes without control
 * characters. */
static int copy_text(spi_engine *e, const spi_replica_info *in,
                     const char *field, const char *v, size_t len, char *dst,
                     size_t cap, size_t *dst_len) {
  if (!v && len)
    return spi__engine_fail(e, SPI_EINVAL, "replica \"%.*s\": %s is NULL",
                            (int)in->id_len, in->id, field);
  if (len >= cap)
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica \"%.*s\": %s must be under %zu bytes",
                            (int)in->id_len, in->id, field, cap);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f)
      return spi__engine_fail(e, SPI_EINVAL,
                              "replica \"%.*s\": %s has a control character",
                              (int)in->id_len, in->id, field);
  if (len) memcpy(dst, v, len);
  dst[len] = '\0';
  *dst_len = len;
  return SPI_OK;
}

/* Validate info and build its identity (slot left 0). */
static int ident_from_info(spi_engine *e, const spi_replica_info *in,
                           spi_replica_ident *r) {
  if (!in) return spi__engine_fail(e, SPI_EINVAL, "replica: info is NULL");
  if (in->struct_size < sizeof(spi_replica_info))
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica: struct_size %zu is below "
                            "sizeof(spi_replica_info) %zu",
                            in->struct_size, sizeof(spi_replica_info));
  int rc = check_id(e, in->id, in->id_len);
  if (rc != SPI_OK) return rc;
  int idl = (int)in->id_len;
  memset(r, 0, sizeof *r);
  if (in->pool != SPI_POOL_SPOT && in->pool != SPI_POOL_ON_DEMAND)
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica \"%.*s\": pool %d is not valid "
                            "(1 spot, 2 on_demand)",
                            idl, in->id, (int)in->pool);
  if (in->model_tier != 0 && in->model_tier != SPI_TIER_SMALL &&
      in->model_tier != SPI_TIER_LARGE)
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica \"%.*s\": model_tier %d is not valid "
                            "(0 or 2 large, 1 small)",
                            idl, in->id, (int)in->model_tier);
  if (!isfinite(in->usd_per_hour) || !(in->usd_per_hour > 0))
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica \"%.*s\": usd_per_hour must be finite "
                            "and > 0 (got %g)",
                            idl, in->id, in->usd_per_hour);
  if (in->max_inflight < 1)
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica \"%.*s\": max_inflight must be >= 1",
                            idl, in->id);
  size_t models_len = 0;
  if ((rc = copy_text(e, in, "zone", in->zone, in->zone_len, r->zone,
                      sizeof r->zone, &r->zone_len)) != SPI_OK ||
      (rc = copy_text(e, in, "instance_type", in->instance_type,
                      in->instance_type_len, r->instance_type,
                      sizeof r->instance_type, &r->type_len)) != SPI_OK ||
      (rc = copy_text(e, in, "models", in->models, in->models_len, r->models,
                      sizeof r->models, &models_len)) != SPI_OK ||
      (rc = copy_text(e, in, "node", in->node, in->node_len, r->node,
                      sizeof r->node, &r->node_len)) != SPI_OK)
    return rc;
  if (!isfinite(in->decode_tokens_per_s) || in->decode_tokens_per_s < 0)
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica \"%.*s\": decode_tokens_per_s must be "
                            "finite and >= 0",
                            idl, in->id);
  r->decode_tps = in->decode_tokens_per_s;
  r->models_len = (uint32_t)models_len; /* < sizeof r->models */
  memcpy(r->id, in->id, in->id_len);
  r->id[in->id_len] = '\0';
  r->id_len = in->id_len;
  r->pool = in->pool;
  r->model_tier = in->model_tier ? in->model_tier : SPI_TIER_LARGE;
  r->max_inflight = in->max_inflight;
  r->inv_max_inflight = 1.0 / (double)in->max_inflight;
  r->cap = (double)in->max_inflight;
  r->cell = SPI_SUMMARY_INDEX(r->pool, r->model_tier);
  r->usd_per_hour = in->usd_per_hour;
  r->id_hash = XXH3_64bits(in->id, in->id_len);
  if (r->node_len == 0) { /* a replica is its own machine unless told */
    memcpy(r->node, r->id, r->id_len + 1);
    r->node_len = r->id_len;
  }
  return SPI_OK;
}

static int same_models(const spi_replica_ident *a, const spi_replica_ident *b) {
  return a->models_len == b->models_len &&
         memcmp(a->models, b->models, a->models_len) == 0;
}

static int same_ident(const spi_replica_ident *a, const spi_replica_ident *b) {
  return a->slot == b->slot && a->pool == b->pool &&
         a->model_tier == b->model_tier && a->max_inflight == b->max_inflight &&
         a->usd_per_hour == b->usd_per_hour && a->id_len == b->id_len &&
         memcmp(a->id, b->id, a->id_len) == 0 && a->zone_len == b->zone_len &&
         memcmp(a->zone, b->zone, a->zone_len) == 0 &&
         a->type_len == b->type_len &&
         memcmp(a->instance_type, b->instance_type, a->type_len) == 0 &&
         a->node_len == b->node_len &&
         memcmp(a->node, b->node, a->node_len) == 0 &&
         a->decode_tps == b->decode_tps && same_models(a, b);
}

/* ---------------------------------------------------------------- writers */

/* old with r added at its end. Over old's entries when the block has room
 * past them and no set on it goes further (old is the newest set on it):
 * r is written where no published set reaches, and only the slot map is
 * copied. Otherwise every entry is copied into a new block. Registry lock
 * held. */
static spi_replica_set *set_append(const spi_mem *m, const spi_replica_set *old,
                                   const spi_replica_ident *r) {
  ident_block *ids = block_of(old)->ids;
  spi_replica_set *next;
  if (ids->used == old->n && old->n < ids->cap) {
    if (!(next = set_on(m, ids, old->n + 1))) return NULL;
    ids->r[old->n] = *r;
    ix_put(ids, r->id_hash, old->n);
    ids->used = old->n + 1;
    memcpy(next->pos_of_slot, old->pos_of_slot,
           sizeof block_of(next)->pos_of_slot);
    next->pos_of_slot[r->slot] = (uint16_t)old->n;
    return next;
  }
  if (!(next = set_new(m, old->n + 1))) return NULL;
  idents_copy(next->r, old->r, old->n);
  next->r[old->n] = *r;
  set_index(next);
  return next;
}

/* Swap in next; the set it replaces goes to *retired, which the caller frees
 * with retire() after releasing the locks. Called with registry.lock held. */
static void publish(spi_engine *e, spi_replica_set *next,
                    spi_replica_set **retired) {
  next->version = ++e->registry.set_version;
  *retired = atomic_exchange(&e->registry.set, next);
}

/* Free a replaced set once no reader can hold it. Called with no lock held
 * and no pin (lock order: engine.h). */
static void retire(spi_engine *e, spi_replica_set *old) {
  if (!old) return;
  spi__rcu_synchronize(&e->rcu);
  set_free(&e->mem, old);
}

static int64_t replica_limit(spi_engine *e) {
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(e, &pin);
  int64_t limit = s ? s->router.max_replicas : 0;
  spi__snap_release(e, pin);
  if (limit <= 0 || limit > SPI_REPLICA_SLOTS) limit = SPI_REPLICA_SLOTS;
  return limit;
}

/* A free slot, searched from where the last search ended so that a freed
 * slot is reused as late as possible. -1 if none. */
static long slot_alloc(spi_registry *g) {
  for (uint32_t k = 0; k < SPI_REPLICA_SLOTS; k++) {
    uint32_t i = (g->next_slot + k) % SPI_REPLICA_SLOTS;
    if (atomic_load(&g->slots[i].state) == 0 &&
        atomic_load(&g->slots[i].held) == 0) {
      g->next_slot = (i + 1) % SPI_REPLICA_SLOTS;
      return (long)i;
    }
  }
  return -1;
}

/* The replica cur becomes r (same slot, both locks held). What a notice
 * did to it belongs to its machine and spot pool, so on another machine it
 * takes that machine's state and advice, and in another spot pool that
 * pool's cooldown, as a replica added there would (spi__nodes_initial).
 * DRAINING that its old machine does not explain was set by the host
 * (spi_replica_set_state) and stays, unless the new machine is itself
 * noticed or draining. NOTICED always names a machine's interruption, so it
 * never follows the replica. Its open tickets go with it: plans find them
 * through the replicas a machine runs now. */
static void move_interruptions(spi_engine *e, const spi_replica_ident *cur,
                               const spi_replica_ident *r) {
  spi_replica_slot *s = &e->registry.slots[r->slot];
  int64_t now = spi__engine_now(e);
  if (!same_spot_pool(cur, r))
    atomic_store(&s->cooldown_until_ns, spi__nodes_cooldown(e, r, now));
  if (!same_node(cur, r)) {
    int32_t was = atomic_load(&s->state);
    int host_drains = was == SPI_REPLICA_DRAINING &&
                      spi__nodes_holds(e, cur->node, cur->node_len) !=
                          SPI_REPLICA_DRAINING;
    int64_t advised = 0, cooling = 0;
    int32_t state = spi__nodes_initial(e, r, now, &advised, &cooling);
    if (host_drains && state == SPI_REPLICA_ACTIVE)
      state = SPI_REPLICA_DRAINING;
    atomic_store(&s->advised_until_ns, advised);
    spi__replica_slot_set_state(s, state);
  }
  spi__replica_touch(&e->registry, r->slot);
}

static int upsert_locked(spi_engine *e, spi_replica_ident *r, int64_t limit,
                         spi_replica_set **retired) {
  spi_registry *g = &e->registry;
  spi_replica_set *old = atomic_load(&g->set);
  const spi_replica_ident *cur = find_in(old, r->id, r->id_len, &g->link_steps);
  if (cur) {
    r->slot = cur->slot;
    if (same_ident(cur, r)) return SPI_OK;
    spi_replica_set *next = set_new(&e->mem, old->n);
    if (!next) return spi__engine_fail(e, SPI_ENOMEM, "replica: out of memory");
    size_t at = (size_t)(cur - old->r);
    idents_copy(next->r, old->r, old->n);
    next->r[at] = *r;
    set_index(next);
    links_move(g, cur, r);
    move_interruptions(e, cur, r);
    /* Entries placed for the old pool or model list no longer hold. */
    if (cur->pool != r->pool || !same_models(cur, r))
      atomic_fetch_add(&g->slots[r->slot].gen, 1u);
    publish(e, next, retired);
    return SPI_OK;
  }
  if ((int64_t)old->n >= limit)
    return spi__engine_fail(e, SPI_EFULL,
                            "replica \"%s\": %zu replicas are registered, "
                            "the most router.max_replicas allows",
                            r->id, old->n);
  long slot = slot_alloc(g);
  if (slot < 0)
    return spi__engine_fail(e, SPI_EFULL, "replica \"%s\": no free slot",
                            r->id);
  r->slot = (uint32_t)slot;
  spi_replica_set *next = set_append(&e->mem, old, r);
  if (!next) return spi__engine_fail(e, SPI_ENOMEM, "replica: out of memory");
  links_add(g, r);
  /* Free and not held: no reader that saw its last replica is left, and
   * none reads it until publish. */
  spi_replica_slot *s = &g->slots[slot];
  slot_reset(s);
  atomic_store(&s->served_tokens,
               pool_mean_served(g, old, r->pool, r->max_inflight));
  atomic_fetch_add(&s->gen, 1u);
  atomic_fetch_add(&s->incarnation, 1u);
  int64_t advised = 0, cooling = 0;
  int32_t initial =
      spi__nodes_initial(e, r, spi__engine_now(e), &advised, &cooling);
  atomic_store(&s->advised_until_ns, advised);
  atomic_store(&s->cooldown_until_ns, cooling);
  atomic_store(&s->state, initial);
  spi__replica_touch(g, (uint32_t)slot);
  publish(e, next, retired);
  return SPI_OK;
}

int spi_replica_upsert(spi_engine *engine, const spi_replica_info *info) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  spi_replica_ident r;
  int rc = ident_from_info(engine, info, &r);
  if (rc != SPI_OK) return rc;
  int64_t limit = replica_limit(engine);
  /* Lock order: nodes, then the registry, so a replica added on a noticed
   * machine or in a cooling spot pool starts in the right state. */
  spi_replica_set *retired = NULL;
  spi__nodes_lock(engine);
  pthread_mutex_lock(&engine->registry.lock);
  rc = upsert_locked(engine, &r, limit, &retired);
  if (rc == SPI_OK && r.models_len)
    spi__pix_models_make(&engine->registry, &engine->mem, r.models,
                         r.models_len);
  pthread_mutex_unlock(&engine->registry.lock);
  spi__nodes_unlock(engine);
  retire(engine, retired);
  if (rc == SPI_OK && r.pool == SPI_POOL_SPOT) {
    int64_t now = spi__engine_now(engine);
    atomic_store(&engine->registry.spot_seen_ns, now > 0 ? now : 1);
  }
  return rc;
}

static int remove_locked(spi_engine *e, const char *id, size_t len,
                         spi_replica_set **retired, spi_replica_slot **held) {
  spi_registry *g = &e->registry;
  spi_replica_set *old = atomic_load(&g->set);
  const spi_replica_ident *cur = find_in(old, id, len, &g->link_steps);
  if (!cur)
    return spi__engine_fail(e, SPI_ENOTFOUND, "replica \"%.*s\": not found",
                            (int)len, id);
  spi_replica_set *next = set_new(&e->mem, old->n - 1);
  if (!next) return spi__engine_fail(e, SPI_ENOMEM, "replica: out of memory");
  size_t at = (size_t)(cur - old->r);
  idents_copy(next->r, old->r, at);
  idents_copy(next->r + at, old->r + at + 1, old->n - at - 1);
  set_index(next);
  /* Ineligible at once for routers still reading the old set; the gen bump
   * kills its prefix-index entries. Held until those routers and the ticket
   * reports pinned with them are gone: one of them may still add to or take
   * from its counters (a route that chose it, a finish that found it
   * there), and a new replica reset into the slot meanwhile would be
   * charged for the old one's ticket. */
  links_del(g, cur);
  spi_replica_slot *s = &g->slots[cur->slot];
  atomic_store(&s->held, 1);
  *held = s;
  atomic_store(&s->state, 0);
  atomic_fetch_add(&s->gen, 1u);
  atomic_fetch_add(&s->incarnation, 1u);
  spi__replica_touch(g, cur->slot);
  publish(e, next, retired);
  return SPI_OK;
}

int spi_replica_remove(spi_engine *engine, const char *id, size_t id_len) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  int rc = check_id(engine, id, id_len);
  if (rc != SPI_OK) return rc;
  spi_replica_set *retired = NULL;
  spi_replica_slot *held = NULL;
  pthread_mutex_lock(&engine->registry.lock);
  rc = remove_locked(engine, id, id_len, &retired, &held);
  pthread_mutex_unlock(&engine->registry.lock);
  retire(engine, retired); /* waits for every reader of the old set */
  if (held) atomic_store(&held->held, 0);
  return rc;
}

void spi__replica_slot_set_state(spi_replica_slot *s, int32_t state) {
  int was = atomic_exchange(&s->state, state);
  /* State first: a router that sees the old gen also saw ACTIVE, and its
   * prefix-index entries die with the bump. */
  if (was == SPI_REPLICA_ACTIVE && state != SPI_REPLICA_ACTIVE)
    atomic_fetch_add(&s->gen, 1u);
}

static int slot_in(const uint64_t *mine, uint32_t slot) {
  return slot < SPI_REPLICA_SLOTS && (mine[slot / 64] >> (slot % 64) & 1u);
}

void spi__slot_opens_wait(spi_rcu *r, spi_registry *g, const uint64_t *mine) {
  /* A route's window is a few stores long and waits for nothing: it ends
   * as soon as its thread runs. The fence, then the first load, pair with
   * the route's count (routing.h); acquire on the 0 carries its ticket. */
  spi__fence_all();
  for (size_t w = 0; w < SPI_REPLICA_SLOTS / 64; w++)
    for (uint64_t m = mine[w]; m; m &= m - 1) {
      spi_replica_slot *s = &g->slots[w * 64 + (size_t)__builtin_ctzll(m)];
      while (atomic_load_explicit(&s->opening, memory_order_seq_cst) != 0)
        sched_yield();
    }
  for (int i = 0; i < SPI_RCU_OWN; i++) {
    unsigned o;
    while ((o = atomic_load_explicit(&r->own[i].opening,
                                     memory_order_acquire)) != 0 &&
           slot_in(mine, o - 1u))
      sched_yield();
  }
}

int spi_replica_set_state(spi_engine *engine, const char *id, size_t id_len,
                          int32_t state) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  int rc = check_id(engine, id, id_len);
  if (rc != SPI_OK) return rc;
  if (state < SPI_REPLICA_ACTIVE || state > SPI_REPLICA_NOTICED)
    return spi__engine_fail(engine, SPI_EINVAL,
                            "replica \"%.*s\": state %d is not valid "
                            "(1 active, 2 draining, 3 noticed)",
                            (int)id_len, id, (int)state);
  /* Under the writers' lock so a concurrent remove cannot free the slot
   * between the lookup and the store. */
  spi_registry *g = &engine->registry;
  pthread_mutex_lock(&g->lock);
  const spi_replica_ident *cur =
      spi__registry_find(atomic_load(&g->set), id, id_len);
  if (!cur) {
    rc = spi__engine_fail(engine, SPI_ENOTFOUND, "replica \"%.*s\": not found",
                          (int)id_len, id);
  } else {
    spi__replica_slot_set_state(&g->slots[cur->slot], state);
    spi__replica_touch(g, cur->slot);
  }
  pthread_mutex_unlock(&g->lock);
  return rc;
}

/* ------------------------------------------------------------------ load */

static int check_load(spi_engine *e, const char *id, size_t id_len,
                      const spi_load *l) {
  if (!l) return spi__engine_fail(e, SPI_EINVAL, "replica load: NULL load");
  if (l->struct_size < sizeof(spi_load))
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica load: struct_size %zu is below "
                            "sizeof(spi_load) %zu",
                            l->struct_size, sizeof(spi_load));
  const char *bad = NULL;
  if (!isfinite(l->running) || l->running < 0) bad = "running must be finite and >= 0";
  else if (!isfinite(l->waiting) || l->waiting < 0)
    bad = "waiting must be finite and >= 0";
  else if (!isfinite(l->kv_usage) || l->kv_usage < 0 || l->kv_usage > 1)
    bad = "kv_usage must be in 0..1";
  else if (l->at_ns < 0)
    bad = "at_ns must be >= 0 (0 = now)";
  if (bad)
    return spi__engine_fail(e, SPI_ERANGE, "replica \"%.*s\": load.%s",
                            (int)id_len, id, bad);
  return SPI_OK;
}

/* Store a checked load signal (at_ns 0 = now). */
static int store_load(spi_engine *e, const char *id, size_t id_len,
                      const spi_load *l) {
  int64_t at = l->at_ns ? l->at_ns : spi__engine_now(e);
  if (at == 0) at = 1; /* 0 means "never reported" */
  unsigned pin;
  spi__snap_acquire(e, &pin);
  const spi_replica_ident *cur =
      spi__registry_find(atomic_load(&e->registry.set), id, id_len);
  if (cur) {
    /* Lock-free: a reader may see fields of two reports mixed, both recent;
     * the time goes last so a first report is never read half-written. */
    spi_replica_slot *s = &e->registry.slots[cur->slot];
    atomic_store(&s->running, spi__dbits(l->running));
    atomic_store(&s->waiting, spi__dbits(l->waiting));
    atomic_store(&s->kv_usage, spi__dbits(l->kv_usage));
    atomic_store(&s->load_at_ns, at);
    spi__replica_touch(&e->registry, cur->slot);
  }
  spi__snap_release(e, pin);
  if (!cur)
    return spi__engine_fail(e, SPI_ENOTFOUND, "replica \"%.*s\": not found",
                            (int)id_len, id);
  return SPI_OK;
}

int spi_replica_report_load(spi_engine *engine, const char *id, size_t id_len,
                            const spi_load *load) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  int rc = check_id(engine, id, id_len);
  if (rc == SPI_OK) rc = check_load(engine, id, id_len, load);
  if (rc == SPI_OK) rc = store_load(engine, id, id_len, load);
  return rc;
}

int spi_replica_report_metrics(spi_engine *engine, const char *id,
                               size_t id_len, const char *text, size_t len) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  int rc = check_id(engine, id, id_len);
  if (rc != SPI_OK) return rc;
  char err[SPI_ERRMSG_CAP] = "";
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  spi_parse_report rep;
  memset(&rep, 0, sizeof rep);
  rep.struct_size = sizeof rep;
  rc = spi__metrics_parse_report(text, len, &l, &rep, err, sizeof err);
  /* Lines in newer syntax are skipped, not fatal: counted where an
   * operator sees them, since this call returns no report. Pinned:
   * configure may replace metrics nothing was written to. */
  unsigned pin;
  spi__snap_acquire(engine, &pin);
  spi__metrics_lines_skipped(atomic_load(&engine->metrics), rep.skipped);
  spi__snap_release(engine, pin);
  if (rc != SPI_OK)
    return spi__engine_fail(engine, rc, "replica \"%.*s\" metrics: %s",
                            (int)id_len, id, err);
  return store_load(engine, id, id_len, &l);
}

/* ---------------------------------------------------------------- status */

size_t spi_replica_count(spi_engine *engine) {
  if (!spi__engine_ok(engine)) return 0;
  unsigned pin;
  spi__snap_acquire(engine, &pin);
  spi_replica_set *set = atomic_load(&engine->registry.set);
  size_t n = set ? set->n : 0;
  spi__snap_release(engine, pin);
  return n;
}

static int check_status_out(spi_engine *e, const spi_replica_status *out) {
  if (!out) return spi__engine_fail(e, SPI_EINVAL, "replica status: NULL out");
  if (out->struct_size < sizeof(spi_replica_status))
    return spi__engine_fail(e, SPI_EINVAL,
                            "replica status: struct_size %zu is below "
                            "sizeof(spi_replica_status) %zu",
                            out->struct_size, sizeof(spi_replica_status));
  return SPI_OK;
}

/* Fill out for r; called pinned, with snap the pinned snapshot. */
static void fill_status(spi_engine *e, const spi_snapshot *snap,
                        const spi_replica_ident *r, spi_replica_status *out) {
  const spi_replica_slot *s = &e->registry.slots[r->slot];
  size_t size = out->struct_size;
  memset(out, 0, sizeof *out);
  out->struct_size = size;
  memcpy(out->id, r->id, r->id_len + 1);
  out->pool = r->pool;
  out->model_tier = r->model_tier;
  out->state = atomic_load(&s->state);
  out->breaker = atomic_load(&s->breaker);
  /* The last reported values, whatever their age; load_fresh says whether
   * routing believes them. */
  out->running = spi__bitsd(atomic_load(&s->running));
  out->waiting = spi__bitsd(atomic_load(&s->waiting));
  out->kv_usage = spi__bitsd(atomic_load(&s->kv_usage));
  out->load_at_ns = atomic_load(&s->load_at_ns);
  int64_t age_ms = snap ? snap->router.load_max_age_ms : 0; /* 0: default */
  spi_load_view v;
  spi__replica_load(s, spi__engine_now(e), age_ms * 1000000, &v);
  out->load_fresh = v.fresh;
  out->inflight = atomic_load(&s->inflight);
  out->usd_per_hour = r->usd_per_hour;
  out->max_inflight = r->max_inflight;
  out->consecutive_errors = atomic_load(&s->consecutive_errors);
}

int spi_replica_status_at(spi_engine *engine, size_t index,
                          spi_replica_status *out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  int rc = check_status_out(engine, out);
  if (rc != SPI_OK) return rc;
  unsigned pin;
  spi_snapshot *snap = spi__snap_acquire(engine, &pin);
  spi_replica_set *set = atomic_load(&engine->registry.set);
  if (set && index < set->n)
    fill_status(engine, snap, &set->r[index], out);
  else
    rc = SPI_ENOTFOUND;
  spi__snap_release(engine, pin);
  if (rc != SPI_OK)
    return spi__engine_fail(engine, rc, "replica index %zu: not found", index);
  return SPI_OK;
}

int spi_replica_status_of(spi_engine *engine, const char *id, size_t id_len,
                          spi_replica_status *out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  int rc = check_id(engine, id, id_len);
  if (rc == SPI_OK) rc = check_status_out(engine, out);
  if (rc != SPI_OK) return rc;
  unsigned pin;
  spi_snapshot *snap = spi__snap_acquire(engine, &pin);
  const spi_replica_ident *r =
      spi__registry_find(atomic_load(&engine->registry.set), id, id_len);
  if (r) fill_status(engine, snap, r, out);
  spi__snap_release(engine, pin);
  if (!r)
    return spi__engine_fail(engine, SPI_ENOTFOUND, "replica \"%.*s\": not found",
                            (int)id_len, id);
  return SPI_OK;
}
