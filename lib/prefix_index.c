/*
 * prefix_index.c - the bounded prefix index: which replicas likely hold the
 * KV cache of which prefix blocks.
 *
 * Memory
 * ------
 * One allocation: the header, up to 63 bytes of padding, then a table of
 * buckets aligned to 64 bytes. A bucket is 8 entries of 16 bytes (a 64-bit
 * tag and a 64-bit payload), stored as the 8 tags in one cache line and the
 * 8 payloads in the next, so a probe that finds no tag touches one line.
 * The bucket count is the largest that keeps header + padding + table
 * within the byte budget; it is not rounded to a power of two, because the
 * header would then push every power-of-two budget (the default 8 MiB among
 * them) down to half a table. The bucket of a hash is
 * ((hash >> 32) * buckets) >> 32: block hashes are already uniform, so the
 * top 32 bits spread evenly over any bucket count below 2^32. Nothing is
 * allocated after spi__index_new, whatever is inserted, and every page of
 * the allocation is written there (touch_pages), so no insert is the first
 * to touch one.
 *
 * Entries
 * -------
 *   tag     = version (32 bits) << 32 | key (32 bits)
 *   key     = low 32 bits of the block hash; 0 and 1 are reserved (empty,
 *             being written), so hashes whose low bits are 0 or 1 use 2, 3
 *   payload = continued (1) << 63 | stamp (31) << 32 | weight (8) << 24 |
 *             gen (12) << 12 | slot (12)
 * The key is the hash's low half, the bucket its high half, so two blocks
 * of one bucket share an entry's key only if their hashes agree on their
 * low 32 bits: for a block not in the index, a probe of a full bucket
 * takes another block's entries for its own with a chance of 8 in 2^32,
 * which costs at most one misplaced request, as a stale gen does. The
 * version counts the rewrites of the entry; it lets a reader tell a
 * rewritten entry from the one it started reading (see Concurrency). The
 * slot field has 12 bits, so no slot read from the table can reach
 * SPI_REPLICA_SLOTS, torn or not. The gen is the replica's generation &
 * SPI_INDEX_GEN_MASK; after 4096 generations of one slot an old entry may
 * look live again, which costs at most one misplaced request. The stamp is
 * in seconds and ages are taken modulo 2^31 (68 years). The continued bit
 * says a request routed to the replica went on past this block with
 * blocks of its own (spi__index_mark_continued): a request that matches
 * the block there later is a second continuation, a branch, not the next
 * turn of one conversation. Refreshes keep the bit.
 *
 * No entry is ever emptied again (a rewrite goes from one block to
 * another), and an insert fills the first empty entry of its bucket, so a
 * bucket's empty entries all follow its others. Every scan of a bucket
 * stops at its first empty entry: in a table that is not full yet, a
 * probe reads the bucket's blocks and one more tag, not all eight. A scan
 * that stops at an empty entry just as a writer claims it misses only
 * blocks written while it ran, as any scan may.
 *
 * Concurrency
 * -----------
 * Readers and writers only use atomics. A writer claims an entry by a CAS of
 * its tag from the value it saw to "being written" (keeping the version),
 * stores the payload (release), then publishes the tag with the next version
 * (release). A writer that loses the CAS rescans the bucket once, then lets
 * the block go: the index is a hint. A reader loads the tag (acquire), the
 * payload (acquire) and the tag again, and drops the entry unless both tags
 * are equal: if the payload came from a later claim, that claim's tag store
 * precedes it, so the second load sees "being written" or another version.
 * The version wraps after 2^32 claims of the entry, so a reader takes a
 * payload that was not written with the tag it loaded only if the entry is
 * claimed a multiple of 2^32 times between its two loads of the tag and
 * ends on the same key: at one claim every 10 ns, a pause of 43 seconds
 * between two loads a few instructions apart, while every claim in the
 * process lands on that one entry. (An 8-bit version came back after 256
 * claims; test_reader_paused rewrites an entry 65536 times under a paused
 * reader.) Refreshing an entry (same key, slot and gen) changes only its
 * stamp and weight, by a CAS on the payload, and skips the store when
 * nothing changed, so a hot prefix does not bounce its cache line between
 * routing threads.
 *
 * Longest match
 * -------------
 * A replica that holds block i held every block before it (block hashes are
 * chained), so "some live replica holds block i" is true for a prefix of the
 * chain and false after it, and a binary search finds its end. Block 0 is
 * probed first, so a cold prompt costs one probe; the rest takes
 * ceil(log2(n)) probes, each one bucket. Evictions can punch holes in a
 * chain; the search then returns the end of some matched run, which is an
 * acceptable answer for a hint.
 *
 * Eviction
 * --------
 * Inserting a block into a full bucket picks, in this order: an entry of the
 * same block and slot from an older generation, an empty entry, an entry the
 * live callback calls dead, and else the live entry of lowest value, where
 * value = weight * weight_seconds - age. The new entry has value weight *
 * weight_seconds; if even the lowest live entry is worth more, the new one
 * is not stored, so a burst of bronze traffic cannot push out gold prefixes
 * younger than (gold - bronze) * weight_seconds. The live callback's answers
 * are remembered for the length of one call (direct-mapped: 16 places for a
 * lookup, 64 for an insert), since a chain's buckets mostly name the same
 * few replicas.
 */
#define _DEFAULT_SOURCE /* MADV_HUGEPAGE */
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "prefix_index.h"
#include "routing.h"

#define IX_WAYS 8
#define IX_LINE 64

#define IX_KEY_BITS 32
#define IX_KEY_MASK ((UINT64_C(1) << IX_KEY_BITS) - 1)
#define IX_KEY_EMPTY UINT64_C(0)
#define IX_KEY_BUSY UINT64_C(1)

#define IX_SLOT(p) ((uint32_t)(p) & 0xfffu)
#define IX_GEN(p) ((uint32_t)((p) >> 12) & SPI_INDEX_GEN_MASK)
#define IX_WEIGHT(p) ((uint32_t)((p) >> 24) & 0xffu)
#define IX_STAMP_MASK UINT32_C(0x7fffffff)
#define IX_STAMP(p) ((uint32_t)((p) >> 32) & IX_STAMP_MASK)
#define IX_CONTINUED (UINT64_C(1) << 63)

_Static_assert(SPI_REPLICA_SLOTS <= 4096, "the slot field has 12 bits");
_Static_assert(SPI_INDEX_GEN_MASK == 0xfffu, "the gen field has 12 bits");

typedef struct ix_bucket {
  _Alignas(IX_LINE) _Atomic(uint64_t) tag[IX_WAYS];
  _Atomic(uint64_t) payload[IX_WAYS];
} ix_bucket;

_Static_assert(sizeof(ix_bucket) == 2 * IX_LINE, "a bucket is two lines");

struct spi_prefix_index {
  size_t bytes;      /* the whole allocation */
  uint64_t nbuckets; /* 1 .. UINT32_MAX */
  ix_bucket *b;      /* inside the allocation, 64-byte aligned */
};

/* ------------------------------------------------------------- helpers */

static inline ix_bucket *bucket_in(ix_bucket *tab, uint64_t nbuckets,
                                   uint64_t h) {
  return &tab[((h >> 32) * nbuckets) >> 32];
}

static inline ix_bucket *bucket_of(const spi_prefix_index *ix, uint64_t h) {
  return bucket_in(ix->b, ix->nbuckets, h);
}

static inline uint64_t key_of(uint64_t h) {
  uint64_t k = h & IX_KEY_MASK;
  return k > IX_KEY_BUSY ? k : k + 2;
}

static inline uint64_t pack(uint32_t slot, uint32_t gen, uint32_t weight,
                            uint32_t stamp) {
  return (uint64_t)(stamp & IX_STAMP_MASK) << 32 | (uint64_t)weight << 24 |
         (uint64_t)gen << 12 | slot;
}

/* How long ago, in seconds, an entry stamped at stamp was written, seen at
 * now_s: the difference modulo 2^31, negative if the stamp is ahead (a
 * clock stepped back). */
static inline int64_t stamp_age(uint32_t now_s, uint32_t stamp) {
  /* The 31-bit difference moved to the top of 32 bits (bit 31 of either
   * operand falls off) and back down with its sign, bit 30: gcc and clang
   * convert to int32_t modulo 2^32 and shift a negative one
   * arithmetically. Two instructions, where masking the difference and
   * taking 2^31 off when bit 30 is set took five. */
  return (int32_t)((now_s - stamp) << 1) >> 1;
}

/* A reader's second step: entry e's payload, after its tag was loaded
 * (acquire), so that it is at least as new as the tag. */
static inline uint64_t load_payload(ix_bucket *b, unsigned e) {
  return atomic_load_explicit(&b->payload[e], memory_order_acquire);
}

/* A reader's third step: whether entry e's tag is still t, the tag loaded
 * before the payload. */
static inline int tag_still(ix_bucket *b, unsigned e, uint64_t t) {
  return atomic_load_explicit(&b->tag[e], memory_order_relaxed) == t;
}

/* The payload of entry e if its tag is still t after reading it. */
static inline int read_payload(ix_bucket *b, unsigned e, uint64_t t,
                               uint64_t *p) {
  *p = load_payload(b, e);
  return tag_still(b, e, t);
}

/* Whether the bucket's last entry is taken: then every entry is, for
 * good, and a scan need not look for the first empty one. An empty entry
 * has never been claimed, so its whole tag is 0. */
static inline int bucket_full(ix_bucket *b) {
  return atomic_load_explicit(&b->tag[IX_WAYS - 1], memory_order_relaxed) != 0;
}

/* Tags only (a lookup), or tags and payloads (an insert). */
static inline void prefetch_bucket(const spi_prefix_index *ix, uint64_t h,
                                   int both) {
  ix_bucket *b = bucket_of(ix, h);
  __builtin_prefetch(b->tag);
  if (both) __builtin_prefetch(b->payload);
}

/* The live callback's answers during one call: a lookup's in the first
 * IX_MEMO_LOOKUP, an insert's in all IX_MEMO_INSERT. An insert that
 * evicts asks about every entry of a full bucket, which a busy fleet's
 * slots fill from all over (at 64 replicas, 16 places lost an answer in
 * two); a lookup asks about few and clears what it uses on every call. */
#define IX_MEMO_LOOKUP 16u
#define IX_MEMO_INSERT 64u
typedef struct ix_memo {
  spi_index_live_fn fn;
  void *ctx;
  uint32_t key[IX_MEMO_INSERT]; /* 1 << 24 | gen << 12 | slot; 0 = nothing
                                   yet */
  uint8_t live[IX_MEMO_INSERT];
  int ready; /* an insert's: key and live cleared (when it first asks: most
              * inserts never do) */
} ix_memo;

/* The first n answers forgotten. */
static void memo_clear(ix_memo *m, size_t n) {
  memset(m->key, 0, n * sizeof m->key[0]);
  /* Read only after its key is set; cleared so that no compiler (gcc with
   * the probe's scan unrolled) takes it for read unset. */
  memset(m->live, 0, n);
}

/* A lookup's memo. */
static void memo_init(ix_memo *m, spi_index_live_fn fn, void *ctx) {
  m->fn = fn;
  m->ctx = ctx;
  memo_clear(m, IX_MEMO_LOOKUP);
}

/* An insert's memo, with nothing cleared until memo_ready. */
static void memo_init_lazy(ix_memo *m, spi_index_live_fn fn, void *ctx) {
  m->fn = fn;
  m->ctx = ctx;
  m->ready = 0;
}

/* An insert's memo, made ready before its first question. */
static void memo_ready(ix_memo *m) {
  if (m->ready) return;
  memo_clear(m, IX_MEMO_INSERT);
  m->ready = 1;
}

/* memo_live_gs with a callback (m->fn not NULL). */
static inline int memo_ask_gs(ix_memo *m, uint32_t gs, unsigned places) {
  uint32_t k = 1u << 24 | gs;
  unsigned i = gs & (places - 1u);
  if (m->key[i] != k) {
    m->key[i] = k;
    m->live[i] = m->fn(m->ctx, gs & 0xfffu, gs >> 12) != 0;
  }
  return m->live[i];
}

/* Whether the entry of gs = gen << 12 | slot (a payload's low 24 bits) is
 * live, asking the callback once a call for each; places is the memo's
 * size (a lookup's or an insert's). */
static inline int memo_live_gs(ix_memo *m, uint32_t gs, unsigned places) {
  if (!m->fn) return 1;
  /* memo_ask_gs's body, not a call to it: gcc then schedules the lookup's
   * probe as it did before the eviction's copy was split off. */
  uint32_t k = 1u << 24 | gs;
  unsigned i = gs & (places - 1u);
  if (m->key[i] != k) {
    m->key[i] = k;
    m->live[i] = m->fn(m->ctx, gs & 0xfffu, gs >> 12) != 0;
  }
  return m->live[i];
}

/* A lookup's question. */
static int memo_live(ix_memo *m, uint32_t slot, uint32_t gen) {
  return memo_live_gs(m, gen << 12 | slot, IX_MEMO_LOOKUP);
}

/* An insert's, for a payload, whose low 24 bits are the memo's gs
 * already. */
static inline int memo_live_payload(ix_memo *m, uint64_t p) {
  return memo_live_gs(m, (uint32_t)p & 0xffffffu, IX_MEMO_INSERT);
}

/* ---------------------------------------------------------- lifecycle */

/* Ask for transparent huge pages over the table's whole 2 MiB pages. Every
 * probe lands on a random bucket, so with 4 KiB pages a table of a few MiB
 * or more misses the TLB on nearly every probe; with 2 MiB pages it does
 * not. Only a hint, given once here: it changes no byte and may be
 * refused. */
static void advise_huge(void *p, size_t len) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = (uintptr_t)2 << 20;
  uintptr_t lo = ((uintptr_t)p + huge - 1) & ~(huge - 1);
  uintptr_t hi = ((uintptr_t)p + len) & ~(huge - 1);
  if (hi > lo) (void)madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)len;
#endif
}

/* Write every page of the table once (a zero over a zero), so
 * that no route is the first to touch one. A first touch is a page fault:
 * with 4 KiB pages a fresh prompt's inserts took about six a route until
 * the table had been touched all over, and in the huge-page range the
 * first touch of each 2 MiB zeroes it, after compacting memory when the
 * kernel has no free huge page (tens of microseconds to milliseconds,
 * inside a route). The index's whole budget is resident from here on,
 * which router.index_bytes allows. */
static void touch_pages(void *p, size_t len) {
  volatile unsigned char *c = p;
  for (size_t off = 0; off < len; off += 4096) c[off] = 0;
}

int spi__index_new(const spi_mem *m, size_t byte_budget,
                   spi_prefix_index **out) {
  if (!out) return SPI_EINVAL;
  *out = NULL;
  if (!m) return SPI_EINVAL;
  const size_t fixed = sizeof(spi_prefix_index) + (IX_LINE - 1);
  if (byte_budget < fixed + sizeof(ix_bucket)) return SPI_ERANGE;
  size_t nb = (byte_budget - fixed) / sizeof(ix_bucket);
  if ((uint64_t)nb > UINT32_MAX) nb = UINT32_MAX;
  size_t bytes = fixed + nb * sizeof(ix_bucket);
  /* Zeroed memory is the empty table (tag 0 = empty, payload 0). */
  unsigned char *raw = spi__calloc(m, 1, bytes);
  if (!raw) return SPI_ENOMEM;
  spi_prefix_index *ix = (spi_prefix_index *)(void *)raw;
  unsigned char *first = raw + sizeof *ix;
  size_t pad = (IX_LINE - (size_t)((uintptr_t)first % IX_LINE)) % IX_LINE;
  ix->bytes = bytes;
  ix->nbuckets = nb;
  ix->b = (ix_bucket *)(void *)(first + pad);
  advise_huge(ix->b, nb * sizeof(ix_bucket));
  touch_pages(ix->b, nb * sizeof(ix_bucket));
  *out = ix;
  return SPI_OK;
}

void spi__index_free(const spi_mem *m, spi_prefix_index *ix) {
  if (ix) spi__free(m, ix);
}

size_t spi__index_bytes(const spi_prefix_index *ix) {
  return ix ? ix->bytes : 0;
}

size_t spi__index_capacity(const spi_prefix_index *ix) {
  return ix ? (size_t)ix->nbuckets * IX_WAYS : 0;
}

size_t spi__index_live_entries(const spi_prefix_index *ix) {
  if (!ix) return 0;
  size_t n = 0;
  for (uint64_t i = 0; i < ix->nbuckets; i++)
    for (unsigned e = 0; e < IX_WAYS; e++) {
      uint64_t t = atomic_load_explicit(&ix->b[i].tag[e], memory_order_relaxed);
      n += (t & IX_KEY_MASK) != IX_KEY_EMPTY;
    }
  return n;
}

/* -------------------------------------------------------------- lookup */

/* What one probe found: the validated payloads of the block's entries, in
 * bucket order, and the first of them the live callback calls live. */
typedef struct ix_found {
  uint64_t pay[IX_WAYS];
  unsigned n, live;
} ix_found;

/*
 * One bucket probe: whether a live entry holds block hash h. Only the first
 * live entry is asked for here; the holders are taken from the deepest
 * successful probe once the search ends (emit_holders), so a probe that a
 * deeper one supersedes costs little more than its scan. Always inlined:
 * as a call (gcc's choice) its register saves cost 10-30 instructions a
 * lookup, the lookup's whole cost at 8 replicas over what it was before
 * the holders were deferred.
 */
/* Entry e, whose tag the scan read as t (an acquire load: the payload is
 * read after it, as read_payload's writer published them) and found
 * holding the key: into f if the tag is still t after its payload is
 * read. The scan's own load serves, so the tag is not loaded again before
 * the payload; an acquire load costs a plain one on x86 and, unlike a
 * relaxed load and a fence, is modelled by ThreadSanitizer. */
__attribute__((always_inline)) static inline void
probe_entry(ix_bucket *b, unsigned e, uint64_t t, ix_memo *lm,
            ix_found *f) {
  uint64_t p;
  if (!read_payload(b, e, t, &p)) return;
  if (f->live == IX_WAYS && memo_live(lm, IX_SLOT(p), IX_GEN(p)))
    f->live = f->n;
  f->pay[f->n++] = p;
}

__attribute__((always_inline)) static inline int
probe(const spi_prefix_index *ix, uint64_t h, ix_memo *lm, ix_found *f) {
  ix_bucket *b = bucket_of(ix, h);
  uint64_t key = key_of(h);
  f->n = 0;
  f->live = IX_WAYS;
  if (bucket_full(b)) {
#pragma GCC unroll 8
    for (unsigned e = 0; e < IX_WAYS; e++) {
      uint64_t t = atomic_load_explicit(&b->tag[e], memory_order_acquire);
      if ((t & IX_KEY_MASK) == key) probe_entry(b, e, t, lm, f);
    }
    return f->live != IX_WAYS;
  }
#pragma GCC unroll 8
  for (unsigned e = 0; e < IX_WAYS; e++) {
    uint64_t t = atomic_load_explicit(&b->tag[e], memory_order_acquire);
    uint64_t k = t & IX_KEY_MASK;
    if (k == key)
      probe_entry(b, e, t, lm, f);
    else if (k == IX_KEY_EMPTY)
      break; /* the rest is empty too */
  }
  return f->live != IX_WAYS;
}

/* The live holders of a successful probe's entries (f->live is the first),
 * deduplicated by slot (the first entry of a slot wins), at most cap (> 0),
 * with bit h of *continued set if holder h's entry is (for h < 64).
 * A bit per slot modulo 64 says which slots may already be listed; only
 * those are searched for. */
static uint32_t emit_holders(const ix_found *f, ix_memo *lm, uint32_t *slots,
                             uint32_t *gens, uint32_t cap,
                             uint64_t *continued) {
  uint32_t slot = IX_SLOT(f->pay[f->live]), n = 1;
  uint64_t seen = UINT64_C(1) << (slot & 63u);
  slots[0] = slot;
  gens[0] = IX_GEN(f->pay[f->live]);
  *continued = (f->pay[f->live] & IX_CONTINUED) != 0;
  for (unsigned i = f->live + 1; i < f->n && n < cap; i++) {
    uint32_t gen = IX_GEN(f->pay[i]);
    slot = IX_SLOT(f->pay[i]);
    if (!memo_live(lm, slot, gen)) continue;
    uint64_t bit = UINT64_C(1) << (slot & 63u);
    if (seen & bit) {
      uint32_t j = 0;
      while (j < n && slots[j] != slot) j++;
      if (j < n) continue;
    }
    seen |= bit;
    slots[n] = slot;
    gens[n] = gen;
    if ((f->pay[i] & IX_CONTINUED) && n < 64) *continued |= UINT64_C(1) << n;
    n++;
  }
  return n;
}

uint32_t spi__index_longest(const spi_prefix_index *ix, const uint64_t *hashes,
                            uint32_t n, spi_index_live_fn live, void *ctx,
                            uint32_t *slots, uint32_t *gens, uint32_t cap,
                            uint32_t *n_holders, uint64_t *continued) {
  uint64_t cont = 0;
  if (n_holders) *n_holders = 0;
  if (continued) *continued = 0;
  if (!ix || !hashes || n == 0) return 0;
  ix_memo lm;
  memo_init(&lm, live, ctx);
  /* The deepest successful probe's entries are in found[best], the next
   * probe writes the other one. */
  ix_found found[2];
  unsigned best = 0;
  /* Blocks [0, lo) are matched; the matched length is in [lo, hi]. Probing
   * block mid - 1 halves the range. The next probe, or both candidates for
   * it, are prefetched, so the table's cache misses overlap. */
  if (n > 1) prefetch_bucket(ix, hashes[n / 2], 0);
  if (!probe(ix, hashes[0], &lm, &found[0])) return 0;
  uint64_t lo = 1, hi = n;
  while (lo < hi) {
    uint64_t mid = lo + (hi - lo + 1) / 2;
    uint64_t up = mid + (hi - mid + 1) / 2, down = lo + (mid - lo) / 2;
    if (up > mid) prefetch_bucket(ix, hashes[up - 1], 0);
    if (down > lo) prefetch_bucket(ix, hashes[down - 1], 0);
    if (probe(ix, hashes[mid - 1], &lm, &found[best ^ 1u])) {
      lo = mid;
      best ^= 1u;
    } else {
      hi = mid - 1;
    }
  }
  uint32_t nh = slots && gens && cap
                    ? emit_holders(&found[best], &lm, slots, gens, cap, &cont)
                    : 0;
  if (n_holders) *n_holders = nh;
  if (continued) *continued = cont;
  return (uint32_t)lo;
}

void spi__index_prefetch(const spi_prefix_index *ix, const uint64_t *hashes,
                         uint32_t n) {
  if (!ix || !hashes) return;
  if (n > SPI_INDEX_PREFETCH_MAX) n = SPI_INDEX_PREFETCH_MAX;
  for (uint32_t i = 0; i < n; i++) prefetch_bucket(ix, hashes[i], 1);
}

/* -------------------------------------------------------------- insert */

/* What a block insert knows about itself. */
typedef struct ix_new {
  uint64_t payload;
  int64_t value; /* weight * weight_seconds, at age 0 */
  uint32_t slot, gen, now_s, weight_seconds;
} ix_new;

enum { RANK_TWIN, RANK_EMPTY, RANK_DEAD, RANK_LIVE, RANK_NONE };

/* An entry of this block, slot and gen rewritten with a new stamp and
 * weight; its continued bit stays. */
static void refresh(ix_bucket *b, unsigned e, uint64_t seen, uint64_t mine) {
  mine |= seen & IX_CONTINUED;
  if (seen == mine) return;
  /* Fails only if the entry changed since it was read: let it be. */
  atomic_compare_exchange_strong_explicit(&b->payload[e], &seen, mine,
                                          memory_order_release,
                                          memory_order_relaxed);
}

/* Write the block over entry e, whose tag was seen: claim it, store the
 * payload, publish the tag with the next version. 0 if the claim lost. */
static int claim(ix_bucket *b, unsigned e, uint64_t seen, uint64_t key,
                 uint64_t payload) {
  uint64_t version = seen >> IX_KEY_BITS;
  if (!atomic_compare_exchange_strong_explicit(
          &b->tag[e], &seen, version << IX_KEY_BITS | IX_KEY_BUSY,
          memory_order_acquire, memory_order_relaxed))
    return 0;
  atomic_store_explicit(&b->payload[e], payload, memory_order_release);
  /* The shift drops the carry out of the version: it wraps at 2^32. */
  atomic_store_explicit(&b->tag[e], (version + 1) << IX_KEY_BITS | key,
                        memory_order_release);
  return 1;
}

/*
 * One block into a bucket, in full: refresh this slot's entry of this
 * generation if the bucket has it; else write the block over, in this
 * order, an entry of this slot from an older generation (the last one),
 * the first empty entry, the first dead one, or the live one of lowest
 * value if the block is worth more, up to attempts times while a claim
 * is lost. Called once a claim is lost (insert_block, evict_into), with
 * attempts 1: rare, so out of line.
 */
__attribute__((noinline)) static void
insert_full(ix_bucket *b, uint64_t key, const ix_new *nw, ix_memo *lm,
            int attempts) {
  memo_ready(lm);
  for (int attempt = 0; attempt < attempts; attempt++) {
    uint64_t tags[IX_WAYS], pays[IX_WAYS];
    unsigned occupied = 0, victim = 0;
    int rank = RANK_NONE;
    int64_t vvalue = 0;
    /* One pass: every entry's payload is read, as an eviction needs
     * them all. The scan ends at the first empty entry (the rest is
     * empty too), which is the one to fill if the block is not there. */
    unsigned e = 0;
    for (; e < IX_WAYS; e++) {
      uint64_t t = atomic_load_explicit(&b->tag[e], memory_order_acquire);
      uint64_t k = t & IX_KEY_MASK;
      tags[e] = t;
      if (k == IX_KEY_EMPTY) break;
      if (k == IX_KEY_BUSY || !read_payload(b, e, t, &pays[e])) continue;
      if (k == key && IX_SLOT(pays[e]) == nw->slot) {
        if (IX_GEN(pays[e]) == nw->gen) {
          refresh(b, e, pays[e], nw->payload);
          return;
        }
        rank = RANK_TWIN, victim = e;
        continue;
      }
      occupied |= 1u << e;
    }
    if (rank > RANK_EMPTY && e < IX_WAYS) rank = RANK_EMPTY, victim = e;
    if (rank > RANK_EMPTY) {
      for (unsigned i = 0; i < IX_WAYS && rank > RANK_DEAD; i++) {
        if (!(occupied >> i & 1u)) continue;
        uint64_t p = pays[i];
        if (!memo_live_payload(lm, p)) {
          rank = RANK_DEAD, victim = i;
          break;
        }
        int64_t age = stamp_age(nw->now_s, IX_STAMP(p));
        int64_t v = (int64_t)IX_WEIGHT(p) * nw->weight_seconds - age;
        if (rank == RANK_NONE || v < vvalue) {
          rank = RANK_LIVE;
          victim = i;
          vvalue = v;
        }
      }
    }
    if (rank == RANK_NONE) return; /* every entry is being written */
    if (rank == RANK_LIVE && vvalue > nw->value) return;
    if (claim(b, victim, tags[victim], key, nw->payload)) return;
  }
}

/*
 * The eviction of insert_full for a full bucket that insert_block has just
 * scanned and found no entry of this block and slot in: one pass that
 * reads each payload and ranks it as it goes (the first dead entry ends
 * it), instead of a second scan for this block's entries and a pass over
 * what it kept. An entry is never emptied again, so the bucket is still
 * full. If a concurrent insert wrote this block for this slot between the
 * two scans, the block may be written twice; a refresh then keeps the
 * first and the other ages out, as with two inserts that claim two empty
 * entries at once. A lost claim goes to insert_full for one more try.
 * evict_rank is the pass (ask 0: no callback, every entry is live), its
 * victim the first dead entry (value INT64_MIN), else the live one of
 * lowest value, IX_WAYS if every entry is being written.
 */
__attribute__((always_inline)) static inline void
evict_rank(ix_bucket *b, const ix_new *nw, ix_memo *lm, int ask,
           unsigned *victim_out, uint64_t *vtag_out, int64_t *vvalue_out) {
  uint64_t vtag = 0;
  unsigned victim = IX_WAYS;
  /* In registers: the scan's acquire loads would have nw read again. */
  const int64_t wsec = nw->weight_seconds;
  const uint32_t now_s = nw->now_s;
  /* Above any live entry's value, so the first is taken; a dead entry's
   * is INT64_MIN, below any block's. */
  int64_t vvalue = INT64_MAX;
#pragma GCC unroll 8
  for (unsigned e = 0; e < IX_WAYS; e++) {
    uint64_t t = atomic_load_explicit(&b->tag[e], memory_order_acquire), p;
    if ((t & IX_KEY_MASK) == IX_KEY_BUSY || !read_payload(b, e, t, &p))
      continue;
    if (ask && !memo_ask_gs(lm, (uint32_t)p & 0xffffffu, IX_MEMO_INSERT)) {
      victim = e, vtag = t, vvalue = INT64_MIN;
      break;
    }
    int64_t v = (int64_t)IX_WEIGHT(p) * wsec - stamp_age(now_s, IX_STAMP(p));
    if (v < vvalue) victim = e, vtag = t, vvalue = v;
  }
  *victim_out = victim;
  *vtag_out = vtag;
  *vvalue_out = vvalue;
}

__attribute__((noinline)) static void evict_into(ix_bucket *b, uint64_t key,
                                                 const ix_new *nw,
                                                 ix_memo *lm) {
  uint64_t vtag;
  unsigned victim;
  int64_t vvalue;
  /* Whether there is a callback to ask, once, not at every entry: a copy
   * of the scan for each answer. */
  memo_ready(lm);
  if (lm->fn)
    evict_rank(b, nw, lm, 1, &victim, &vtag, &vvalue);
  else
    evict_rank(b, nw, lm, 0, &victim, &vtag, &vvalue);
  if (victim == IX_WAYS) return; /* every entry is being written */
  if (vvalue > nw->value) return; /* the block is worth less than any */
  if (!claim(b, victim, vtag, key, nw->payload))
    insert_full(b, key, nw, lm, 1);
}

/*
 * One block, h, into its bucket b: what insert_full does, taken here up
 * to the first empty entry, which is all a bucket that is not full has:
 * the refresh of this slot's entry of this generation, else the last entry
 * of this slot from an older generation, else the first empty one. A full
 * bucket with neither goes to evict_into, a lost claim to insert_full.
 */
static inline void insert_block(ix_bucket *b, uint64_t h, const ix_new *nw,
                                ix_memo *lm) {
  uint64_t key = key_of(h), seen = 0;
  unsigned victim = IX_WAYS;
#pragma GCC unroll 8
  for (unsigned e = 0; e < IX_WAYS; e++) {
    uint64_t t = atomic_load_explicit(&b->tag[e], memory_order_acquire), p;
    if ((t & IX_KEY_MASK) != key) {
      /* A key is never 0: an empty entry is only told apart here. */
      if ((t & IX_KEY_MASK) != IX_KEY_EMPTY) continue;
      if (victim == IX_WAYS) victim = e, seen = t;
      break;
    }
    /* Another slot's entry is passed over whether or not the payload is
     * still the tag's: the tag is checked again only for this slot's. */
    p = load_payload(b, e);
    if (IX_SLOT(p) != nw->slot || !tag_still(b, e, t)) continue;
    if (IX_GEN(p) == nw->gen) {
      refresh(b, e, p, nw->payload);
      return;
    }
    victim = e, seen = t;
  }
  if (victim == IX_WAYS)
    evict_into(b, key, nw, lm);
  else if (!claim(b, victim, seen, key, nw->payload))
    insert_full(b, key, nw, lm, 1);
}

void spi__index_mark_continued(spi_prefix_index *ix, uint64_t h, uint32_t slot,
                               uint32_t gen) {
  if (!ix || slot >= SPI_REPLICA_SLOTS) return;
  ix_bucket *b = bucket_of(ix, h);
  uint64_t key = key_of(h);
  gen &= SPI_INDEX_GEN_MASK;
#pragma GCC unroll 8
  for (unsigned e = 0; e < IX_WAYS; e++) {
    uint64_t t = atomic_load_explicit(&b->tag[e], memory_order_acquire), p;
    if ((t & IX_KEY_MASK) == IX_KEY_EMPTY) break; /* the rest is empty too */
    if ((t & IX_KEY_MASK) != key || !read_payload(b, e, t, &p) ||
        IX_SLOT(p) != slot || IX_GEN(p) != gen)
      continue;
    /* Set once: a shared prefix's later readers find it set and write
     * nothing, so its line does not bounce between routing threads. */
    if (!(p & IX_CONTINUED)) refresh(b, e, p, p | IX_CONTINUED);
    return;
  }
}

void spi__index_insert(spi_prefix_index *ix, const uint64_t *hashes,
                       uint32_t from, uint32_t n, uint32_t slot, uint32_t gen,
                       uint32_t weight, uint32_t now_s, uint32_t weight_seconds,
                       spi_index_live_fn live, void *ctx) {
  if (!ix || !hashes || slot >= SPI_REPLICA_SLOTS) return;
  if (weight > 255) weight = 255;
  ix_new nw;
  nw.slot = slot;
  nw.gen = gen & SPI_INDEX_GEN_MASK;
  nw.now_s = now_s;
  nw.weight_seconds = weight_seconds;
  nw.payload = pack(slot, nw.gen, weight, now_s);
  nw.value = (int64_t)weight * weight_seconds;
  ix_memo lm;
  memo_init_lazy(&lm, live, ctx);
  if (from >= n) return;
  /* The table's place in locals: the loop's atomic stores would have
   * the header read again for every bucket. Each block's bucket is found
   * once, when it is prefetched two blocks ahead, and kept till then; a
   * lone block (a short prompt) skips the ring. */
  ix_bucket *const tab = ix->b;
  const uint64_t nb = ix->nbuckets;
  ix_bucket *cur = bucket_in(tab, nb, hashes[from]);
  if (n - from == 1) {
    insert_block(cur, hashes[from], &nw, &lm);
    return;
  }
  ix_bucket *next = bucket_in(tab, nb, hashes[from + 1]);
  for (uint32_t i = from; i < n; i++) {
    ix_bucket *after = NULL;
    if (n - i > 2) {
      after = bucket_in(tab, nb, hashes[i + 2]);
      __builtin_prefetch(after->tag);
      __builtin_prefetch(after->payload);
    }
    insert_block(cur, hashes[i], &nw, &lm);
    cur = next;
    next = after;
  }
}

/* ------------------------------------------------------ reader's steps */

uint64_t spi__index_step_tag(const spi_prefix_index *ix, uint64_t h,
                             unsigned e) {
  return atomic_load_explicit(&bucket_of(ix, h)->tag[e % IX_WAYS],
                              memory_order_acquire);
}

int spi__index_step_key(uint64_t tag, uint64_t h) {
  return (tag & IX_KEY_MASK) == key_of(h);
}

uint64_t spi__index_step_payload(const spi_prefix_index *ix, uint64_t h,
                                 unsigned e) {
  return load_payload(bucket_of(ix, h), e % IX_WAYS);
}

int spi__index_step_confirm(const spi_prefix_index *ix, uint64_t h,
                            unsigned e, uint64_t t) {
  return tag_still(bucket_of(ix, h), e % IX_WAYS, t);
}
