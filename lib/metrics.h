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
 * Stripes. The counters every route or finish adds to (decisions, queue
 * depth, prefix blocks, TTFT) are kept once a stripe (M_STRIPES, m_hot and
 * fam_count): a thread adds to its own (spi__thread_no), and a reader sums
 * the stripes (spi__mhot and the getters below). One copy had every
 * route of every thread add to the same lines, and threads sharing an
 * engine moved them between their CPUs at each route.
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
} fam_entry;

/* A family's prefix blocks in one stripe (fam_n: a row of the table's
 * slots a stripe). */
typedef struct fam_count {
  atomic_ullong matched, total;
} fam_count;

#define M_STRIPES 4

/* One stripe's copy of the counters routes and finishes add to. */
typedef struct m_hot {
  atomic_ullong decisions[M_POOLS][M_CLASSES][SPI_REASON_COUNT];
  atomic_llong queue[M_CLASSES];
  /* Prefix blocks of the decisions whose family has no entry; the totals
   * over every family are the entries' sums and these (spi__metrics_blocks),
   * so a decision adds to two counters, not four. */
  atomic_ullong other_matched, other_total;
  atomic_ullong ttft_bucket[M_CLASSES][SPI_TTFT_BUCKETS];
  atomic_ullong ttft_sum[M_CLASSES]; /* double bits, milliseconds */
  char apart[64]; /* no line shared with the next stripe's counters */
} m_hot;

/* A counter added here is also checked by spi__metrics_untouched. */
struct spi_metrics {
  size_t max_families;
  size_t fam_mask; /* table slots - 1 */
  fam_entry *fam;
  fam_count *fam_n; /* M_STRIPES rows of fam_mask + 1 */
  atomic_size_t fam_claimed;
  atomic_ullong shed[M_CLASSES];
  atomic_ullong breaker_opens;
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
  char apart[64]; /* the stripes on lines of their own */
  m_hot hot[M_STRIPES];
};

static inline uint64_t spi__mget(const atomic_ullong *a) {
  return atomic_load_explicit((atomic_ullong *)a, memory_order_relaxed);
}

/* A counter of stripe 0's m_hot (or a fam_count of row 0) summed over the
 * stripes: the same counter lies a stripe's size further on in each. */
static inline uint64_t spi__mhot(const atomic_ullong *in_first, size_t stride) {
  uint64_t n = 0;
  for (int s = 0; s < M_STRIPES; s++)
    n += spi__mget((const atomic_ullong *)(const void *)((const char *)in_first +
                                                         (size_t)s * stride));
  return n;
}
static inline uint64_t spi__mdecisions(const spi_metrics *x, int p, int c,
                                       int r) {
  return spi__mhot(&x->hot[0].decisions[p][c][r], sizeof(m_hot));
}
static inline uint64_t spi__mttft_bucket(const spi_metrics *x, int c, int b) {
  return spi__mhot(&x->hot[0].ttft_bucket[c][b], sizeof(m_hot));
}
/* The TTFT sum of class c, in milliseconds. */
static inline double spi__mttft_sum(const spi_metrics *x, int c) {
  double sum = 0.0;
  for (int s = 0; s < M_STRIPES; s++)
    sum += spi__bitsd(spi__mget(&x->hot[s].ttft_sum[c]));
  return sum;
}
/* Requests of class c routed and not yet finished. A stripe's count may
 * be below 0 (a ticket finished on another thread than its route's), and
 * a read may see a finish's -1 in one stripe before its route's +1 in
 * another (relaxed loads of two counters): the sum is cut at 0. */
static inline int64_t spi__mqueue(const spi_metrics *x, int c) {
  int64_t n = 0;
  for (int s = 0; s < M_STRIPES; s++)
    n += atomic_load_explicit((atomic_llong *)&x->hot[s].queue[c],
                              memory_order_relaxed);
  return n > 0 ? n : 0;
}

/* The prefix blocks (total: 1, else matched) of the family at table slot
 * slot, and of the decisions with no family entry, over the stripes. */
uint64_t spi__metrics_family(const spi_metrics *x, size_t slot, int total);
uint64_t spi__metrics_other(const spi_metrics *x, int total);

static inline int spi__mpool(int32_t pool) {
  return pool >= SPI_POOL_SPOT && pool <= SPI_POOL_QUEUE ? pool : 0;
}

static inline int spi__mclass(int32_t klass) {
  return klass >= SPI_CLASS_GOLD && klass <= SPI_CLASS_BRONZE ? klass : 0;
}

#endif /* SPI_METRICS_H */
