/*
 * metrics.h - the layout of the engine's counters. Internal: metrics.c
 * counts into them; readout.c and readout_text.c read them out (signals,
 * Prometheus text) and write nothing.
 *
 * Every counter is a relaxed atomic: routers on any number of threads add to
 * them without a lock, and a reader sees each counter's value at some moment
 * (not one consistent snapshot of all of them, which Prometheus does not
 * need).
 *
 * Prefix families. The hit rate of the KV cache is counted per prefix family
 * (a 64-bit id the router passes with each decision, such as half of the
 * request's cache key) for the first max_families distinct families; later
 * ones share the series family="other". Family 0 means "none" and is counted
 * as "other".
 *
 * TTFT. Each class has SPI_TTFT_BUCKETS counters, one per bucket (not
 * cumulative: one increment per sample), and a sum kept as the bits of a
 * double, both in milliseconds as the library measures.
 */
#ifndef SPI_METRICS_H
#define SPI_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#include "routing.h"

#define M_POOLS 4   /* index = enum spi_pool; 0 = none */
#define M_CLASSES 4 /* index = enum spi_class; 0 = unset or invalid */

/* Upper bounds of the TTFT buckets in milliseconds (the unit the library
 * measures in); the last is +Inf. */
extern const double spi__ttft_le[SPI_TTFT_BUCKETS];

typedef struct fam_entry {
  _Atomic uint64_t id; /* 0 = free */
  atomic_ullong matched, total;
} fam_entry;

/* A counter added here is also checked by spi__metrics_untouched. */
struct spi_metrics {
  size_t max_families;
  size_t fam_mask; /* table slots - 1 */
  fam_entry *fam;
  atomic_size_t fam_claimed;
  atomic_ullong decisions[M_POOLS][M_CLASSES][SPI_REASON_COUNT];
  atomic_ullong shed[M_CLASSES];
  atomic_ullong breaker_opens;
  /* Prefix blocks of the decisions whose family has no entry; the totals
   * over every family are the entries' sums and these (spi__metrics_blocks),
   * so a decision adds to two counters, not four. */
  atomic_ullong other_matched, other_total;
  atomic_ullong ttft_bucket[M_CLASSES][SPI_TTFT_BUCKETS];
  atomic_ullong ttft_sum[M_CLASSES]; /* double bits, milliseconds */
  atomic_llong queue[M_CLASSES];
  atomic_ullong draft_accepted, draft_rejected;
  atomic_ullong shadow_agreed, shadow_disagreed, shadow_matched;
  atomic_ullong node_transitions[7][7]; /* [from][to], enum spi_node_state */
  atomic_ullong lines_skipped; /* /metrics lines skipped (new syntax, # EOF) */
  /* Replay queues' fallback journals: envelopes held (all queues of the
   * engine), enqueues they took, envelopes moved into the store. */
  atomic_llong fallback_held;
  atomic_ullong fallback_enqueued, fallback_moved;
  /* Routes that found the pool index held by another route and waited for
   * it: took it, or gave up (pool_index.c, spi__pix_wait); and routes that
   * read every replica's slot instead of the index (replica_pass.c). */
  atomic_ullong index_waits_took, index_waits_gave_up, slot_passes;
};

static inline uint64_t spi__mget(const atomic_ullong *a) {
  return atomic_load_explicit((atomic_ullong *)a, memory_order_relaxed);
}

static inline int spi__mpool(int32_t pool) {
  return pool >= SPI_POOL_SPOT && pool <= SPI_POOL_QUEUE ? pool : 0;
}

static inline int spi__mclass(int32_t klass) {
  return klass >= SPI_CLASS_GOLD && klass <= SPI_CLASS_BRONZE ? klass : 0;
}

#endif /* SPI_METRICS_H */
