/*
 * metrics.c - the engine's counters: routing decisions, sheds, breakers,
 * prefix blocks by family, the TTFT histograms, queue depth, drafts,
 * shadow decisions and machine transitions (layout and rules in
 * metrics.h). Reading them out (the autoscaling signals, the Prometheus
 * text) is readout.c's and readout_text.c's.
 *
 * The object is allocated once; counting never allocates.
 *
 * Families sit in an open-addressing table of at least twice max_families
 * slots, claimed by CAS of an empty slot's id from 0, so a lookup ends at
 * the family's slot or at an empty one after a short probe. A budget
 * counter stops claims at max_families.
 */
#include <float.h>
#include <math.h>
#include <stdalign.h>
#include <string.h>

#include "metrics.h"

#define M_MAX_FAMILIES ((size_t)1 << 20)

const double spi__ttft_le[SPI_TTFT_BUCKETS] = {
    25,   50,   100,  200,  300,   500,   800,
    1000, 1500, 2500, 5000, 10000, 30000, INFINITY};

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* Adding 0 changes nothing, and a locked add costs a route several ns
 * (a cold prompt adds 0 matched blocks). */
static void add(atomic_ullong *a, uint64_t v) {
  if (v) atomic_fetch_add_explicit(a, v, memory_order_relaxed);
}

size_t spi__metrics_max_families(const spi_metrics *x) {
  return x ? x->max_families : 0;
}

int spi__metrics_new(const spi_mem *m, size_t max_families, spi_metrics **out) {
  if (!m || !out) return SPI_EINVAL;
  *out = NULL;
  if (max_families > M_MAX_FAMILIES) return SPI_ERANGE;
  size_t slots = 8;
  while (slots < 2 * max_families) slots *= 2;
  size_t off_fam = align_up(sizeof(spi_metrics), alignof(max_align_t));
  size_t off_n = off_fam + slots * sizeof(fam_entry);
  size_t total = off_n + M_STRIPES * slots * sizeof(fam_count);
  unsigned char *p = spi__alloc(m, total);
  if (!p) return SPI_ENOMEM;
  /* All-zero bytes are a valid zero for every lock-free atomic used here. */
  memset(p, 0, total);
  spi_metrics *x = (spi_metrics *)(void *)p;
  x->max_families = max_families;
  x->fam_mask = slots - 1;
  x->fam = (fam_entry *)(void *)(p + off_fam);
  x->fam_n = (fam_count *)(void *)(p + off_n);
  *out = x;
  return SPI_OK;
}

void spi__metrics_free(const spi_mem *m, spi_metrics *x) {
  if (x) spi__free(m, x);
}

static int any_set(const atomic_ullong *a, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (spi__mget(&a[i])) return 1;
  return 0;
}

/* Whether anything was ever counted in stripe h. */
static int hot_untouched(const m_hot *h) {
  if (spi__mget(&h->other_matched) || spi__mget(&h->other_total) ||
      any_set(&h->decisions[0][0][0], sizeof h->decisions / sizeof(atomic_ullong)) ||
      any_set(&h->ttft_bucket[0][0], sizeof h->ttft_bucket / sizeof(atomic_ullong)) ||
      any_set(h->ttft_sum, M_CLASSES))
    return 0;
  for (int k = 0; k < M_CLASSES; k++)
    if (atomic_load_explicit((atomic_llong *)&h->queue[k], memory_order_relaxed))
      return 0;
  return 1;
}

/* Whether anything was ever counted (configure may still resize it). */
int spi__metrics_untouched(const spi_metrics *x) {
  if (!x) return 1;
  for (int s = 0; s < M_STRIPES; s++)
    if (!hot_untouched(&x->hot[s])) return 0;
  const atomic_ullong *one[] = {&x->breaker_opens,    &x->draft_accepted,
                                &x->draft_rejected, &x->shadow_agreed,
                                &x->shadow_disagreed, &x->shadow_matched,
                                &x->lines_skipped, &x->fallback_enqueued,
                                &x->fallback_moved, &x->index_waits_took,
                                &x->index_waits_gave_up, &x->slot_passes};
  for (size_t i = 0; i < sizeof one / sizeof one[0]; i++)
    if (spi__mget(one[i])) return 0;
  if (any_set(x->shed, M_CLASSES) ||
      any_set(&x->node_transitions[0][0],
              sizeof x->node_transitions / sizeof(atomic_ullong)))
    return 0;
  if (atomic_load_explicit((atomic_llong *)&x->fallback_held,
                           memory_order_relaxed))
    return 0;
  return atomic_load_explicit((atomic_size_t *)&x->fam_claimed,
                              memory_order_relaxed) == 0;
}

/* --------------------------------------------------------------- counters */

/* The stripe of the thread numbered thread_no. The first M_STRIPES - 1
 * numbered threads have one of their own, which only they write: a load
 * and a store make their add, where an atomic add is a locked instruction
 * that also waits for the thread's earlier stores to drain (a route made
 * two here). Every other thread adds to stripe 0 atomically. */
static unsigned stripe_of(uint32_t thread_no) {
  return thread_no < M_STRIPES ? thread_no : 0;
}

static unsigned stripe_here(void) { return stripe_of(spi__thread_no()); }

/* v added to a counter of stripe s. */
static void add_in(unsigned s, atomic_ullong *a, uint64_t v) {
  if (!v) return;
  if (s)
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + v,
                          memory_order_relaxed);
  else
    atomic_fetch_add_explicit(a, v, memory_order_relaxed);
}

static void queue_in(spi_metrics *x, unsigned s, int c, int delta) {
  atomic_llong *q = &x->hot[s].queue[c];
  if (s)
    atomic_store_explicit(q, atomic_load_explicit(q, memory_order_relaxed) +
                                 delta, memory_order_relaxed);
  else
    atomic_fetch_add_explicit(q, (long long)delta, memory_order_relaxed);
}

/* The table slot of a family, claiming one if the budget allows; SIZE_MAX
 * for "other". */
static size_t family_slot(spi_metrics *x, uint64_t family) {
  if (family == 0) return SIZE_MAX;
  uint64_t h = (family ^ (family >> 31)) * UINT64_C(0x9e3779b97f4a7c15);
  size_t i = (size_t)(h >> 32) & x->fam_mask;
  for (;; i = (i + 1) & x->fam_mask) {
    fam_entry *f = &x->fam[i];
    uint64_t id = atomic_load_explicit(&f->id, memory_order_acquire);
    if (id == family) return i;
    if (id != 0) continue;
    /* Not in the table: probes end at the first empty slot because slots
     * are never freed. Claim this one if the budget has room. */
    if (atomic_load_explicit(&x->fam_claimed, memory_order_relaxed) >=
        x->max_families)
      return SIZE_MAX;
    if (atomic_fetch_add_explicit(&x->fam_claimed, 1, memory_order_relaxed) >=
        x->max_families) {
      atomic_fetch_sub_explicit(&x->fam_claimed, 1, memory_order_relaxed);
      return SIZE_MAX;
    }
    uint64_t expect = 0;
    if (atomic_compare_exchange_strong_explicit(&f->id, &expect, family,
                                                memory_order_acq_rel,
                                                memory_order_acquire))
      return i;
    /* Another thread took the slot first: give the budget back and go on
     * from here (it may have claimed it for this very family). */
    atomic_fetch_sub_explicit(&x->fam_claimed, 1, memory_order_relaxed);
    if (expect == family) return i;
  }
}

/* Prefix blocks count only for decisions that placed the request on a
 * replica: a queued or shed request was not routed, and counting its blocks
 * as misses would skew the cache-miss rate. */
static void decision_in(spi_metrics *x, unsigned s, int p, int c,
                        int32_t reason, uint64_t family,
                        uint32_t matched_blocks, uint32_t total_blocks) {
  int r = reason >= 0 && reason < SPI_REASON_COUNT ? reason : SPI_REASON_NONE;
  m_hot *h = &x->hot[s];
  add_in(s, &h->decisions[p][c][r], 1);
  if (total_blocks == 0 || (p != SPI_POOL_SPOT && p != SPI_POOL_ON_DEMAND))
    return;
  if (matched_blocks > total_blocks) matched_blocks = total_blocks;
  size_t i = family_slot(x, family);
  if (i == SIZE_MAX) {
    add_in(s, &h->other_matched, matched_blocks);
    add_in(s, &h->other_total, total_blocks);
    return;
  }
  fam_count *f = &x->fam_n[s * (x->fam_mask + 1) + i];
  add_in(s, &f->matched, matched_blocks);
  add_in(s, &f->total, total_blocks);
}

void spi__metrics_decision(spi_metrics *x, int32_t pool, int32_t klass,
                           int32_t reason, uint64_t family,
                           uint32_t matched_blocks, uint32_t total_blocks) {
  if (x)
    decision_in(x, stripe_here(), spi__mpool(pool),
                spi__mclass(klass), reason, family, matched_blocks,
                total_blocks);
}

void spi__metrics_routed_for(spi_metrics *x, uint32_t thread_no, int32_t pool,
                             int32_t klass, int32_t reason, uint64_t family,
                             uint32_t matched_blocks, uint32_t total_blocks) {
  if (!x) return;
  unsigned s = stripe_of(thread_no);
  int c = spi__mclass(klass);
  decision_in(x, s, spi__mpool(pool), c, reason, family, matched_blocks,
              total_blocks);
  queue_in(x, s, c, +1);
}

uint64_t spi__metrics_family(const spi_metrics *x, size_t slot, int total) {
  const fam_count *f = &x->fam_n[slot];
  return spi__mhot(total ? &f->total : &f->matched,
                   (x->fam_mask + 1) * sizeof(fam_count));
}

/* One counter (0 matched, 1 total) summed over every family entry and
 * other's. */
static uint64_t fam_sum(const spi_metrics *x, int total) {
  uint64_t n = spi__metrics_other(x, total);
  for (size_t i = 0; i <= x->fam_mask; i++) {
    const fam_entry *f = &x->fam[i];
    if (atomic_load_explicit((_Atomic uint64_t *)&f->id, memory_order_acquire))
      n += spi__metrics_family(x, i, total);
  }
  return n;
}

uint64_t spi__metrics_other(const spi_metrics *x, int total) {
  return spi__mhot(total ? &x->hot[0].other_total : &x->hot[0].other_matched,
                   sizeof(m_hot));
}

void spi__metrics_blocks(const spi_metrics *x, uint64_t *matched,
                         uint64_t *total) {
  /* Totals first: a decision adds to both, so matched read after them
   * can only pass the totals by what routes added meanwhile; it is cut to
   * them. Both still only grow, as counters must. */
  *total = x ? fam_sum(x, 1) : 0;
  *matched = x ? fam_sum(x, 0) : 0;
  if (*matched > *total) *matched = *total;
}

void spi__metrics_shed(spi_metrics *x, int32_t klass) {
  if (x) add(&x->shed[spi__mclass(klass)], 1);
}

void spi__metrics_breaker_open(spi_metrics *x) {
  if (x) add(&x->breaker_opens, 1);
}

void spi__metrics_ttft(spi_metrics *x, int32_t klass, double ttft_ms) {
  if (!x || isnan(ttft_ms)) return;
  if (ttft_ms < 0) ttft_ms = 0;
  int c = spi__mclass(klass);
  int b = 0;
  while (b < SPI_TTFT_BUCKETS - 1 && !(ttft_ms <= spi__ttft_le[b])) b++;
  unsigned s = stripe_here();
  m_hot *h = &x->hot[s];
  add_in(s, &h->ttft_bucket[c][b], 1);
  /* An infinite sample lands in +Inf but is kept out of the sum. */
  if (ttft_ms > DBL_MAX) return;
  unsigned long long old =
      atomic_load_explicit(&h->ttft_sum[c], memory_order_relaxed);
  if (s) {
    atomic_store_explicit(&h->ttft_sum[c], spi__dbits(spi__bitsd(old) + ttft_ms),
                          memory_order_relaxed);
    return;
  }
  while (!atomic_compare_exchange_weak_explicit(
      &h->ttft_sum[c], &old, spi__dbits(spi__bitsd(old) + ttft_ms),
      memory_order_relaxed, memory_order_relaxed)) {
  }
}

void spi__metrics_queue_delta(spi_metrics *x, int32_t klass, int delta) {
  if (x) queue_in(x, stripe_here(), spi__mclass(klass), delta);
}

void spi__metrics_draft(spi_metrics *x, int accepted) {
  if (x) add(accepted ? &x->draft_accepted : &x->draft_rejected, 1);
}

void spi__metrics_shadow(spi_metrics *x, int agreed, uint32_t matched_blocks) {
  if (!x) return;
  add(agreed ? &x->shadow_agreed : &x->shadow_disagreed, 1);
  add(&x->shadow_matched, matched_blocks);
}
void spi__metrics_node_transition(spi_metrics *x, int32_t from, int32_t to) {
  if (!x || from < 1 || from > 6 || to < 1 || to > 6) return;
  add(&x->node_transitions[from][to], 1);
}

void spi__metrics_lines_skipped(spi_metrics *x, uint64_t n) {
  if (x && n) add(&x->lines_skipped, n);
}

void spi__metrics_index_wait(spi_metrics *x, int took) {
  if (x) add(took ? &x->index_waits_took : &x->index_waits_gave_up, 1);
}

void spi__metrics_slot_pass(spi_metrics *x) {
  if (x) add(&x->slot_passes, 1);
}

void spi__metrics_replay_fallback(spi_metrics *x, int64_t held_delta,
                                  uint64_t enqueued, uint64_t moved) {
  if (!x) return;
  if (held_delta)
    atomic_fetch_add_explicit(&x->fallback_held, held_delta,
                              memory_order_relaxed);
  if (enqueued) add(&x->fallback_enqueued, enqueued);
  if (moved) add(&x->fallback_moved, moved);
}
