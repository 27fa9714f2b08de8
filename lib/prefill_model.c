/*
 * prefill_model.c - the per-replica state of the TTFT model
 * (prefill_model.h), kept by ticket reports so that a route only reads it.
 *
 * Counters are exact: what a ticket adds when it opens it takes back once,
 * at its first token or, if none came, at its finish; a ticket whose
 * replica went away (the slot was reset) takes nothing back. The work a
 * replica was sent counts a ticket's prompt and expected output at open,
 * and the output it reported at its finish. The rate is
 * learnt from first tokens: the prefill queued ahead of the ticket plus its
 * own, over the observed TTFT (less the fixed part), is one sample of
 * tokens per second; the first SPI_PREFILL_MIN_SAMPLES are averaged, then
 * an exponential average follows drift.
 */
#include <math.h>

#include "prefill_model.h"

/* Weight of a new sample once the rate is learnt: about the last 8 first
 * tokens count, so a replica that slows down is seen within a few
 * requests without one outlier moving it much. */
#define RATE_EWMA_SHIFT 3

void spi__prefill_open(spi_replica_slot *s, spi_ticket *k,
                       uint64_t prompt_tokens, uint64_t cached_tokens,
                       double slowdown) {
  uint64_t own = cached_tokens < prompt_tokens ? prompt_tokens - cached_tokens : 0;
  k->prefill_tokens = own;
  k->slowdown = slowdown;
  k->ahead_tokens = atomic_fetch_add_explicit(&s->prefill_queued, own,
                                              memory_order_relaxed);
  atomic_fetch_add_explicit(&s->served_tokens,
                            prompt_tokens + k->expected_output,
                            memory_order_relaxed);
}

/* Fold one rate sample into the slot's rate. */
static void learn(spi_replica_slot *s, double sample) {
  unsigned n = atomic_fetch_add_explicit(&s->rate_samples, 1u,
                                         memory_order_relaxed) + 1;
  if (n == 0) n = UINT32_MAX; /* saturates rather than wraps to "unlearnt" */
  unsigned long long cur =
      atomic_load_explicit(&s->prefill_rate, memory_order_relaxed);
  for (;;) {
    double old = spi__bitsd(cur), next;
    if (n <= 1 || !(old > 0))
      next = sample;
    else if (n <= SPI_PREFILL_MIN_SAMPLES)
      next = old + (sample - old) / (double)n; /* plain mean at first */
    else
      next = old + (sample - old) / (double)(1u << RATE_EWMA_SHIFT);
    if (atomic_compare_exchange_weak_explicit(&s->prefill_rate, &cur,
                                              spi__dbits(next),
                                              memory_order_relaxed,
                                              memory_order_relaxed))
      return;
  }
}

void spi__prefill_first_token(spi_replica_slot *s, const spi_ticket *k,
                              int64_t now_ns, const spi_router_cfg *c) {
  atomic_fetch_sub_explicit(&s->prefill_queued, k->prefill_tokens,
                            memory_order_relaxed);
  /* Only a plausible reading teaches: a stale load at open (no slowdown
   * known) or a TTFT inside the fixed part says nothing about the rate. */
  double ttft_ms = (double)(now_ns - k->start_ns) / 1e6 - c->ttft_base_ms;
  if (!(k->slowdown >= 1.0 && k->slowdown <= 3.0) || !(ttft_ms >= 1.0)) return;
  double tokens = (double)k->ahead_tokens + (double)k->prefill_tokens * k->slowdown;
  if (tokens < 1.0) return;
  double sample = tokens * 1000.0 / ttft_ms;
  if (isfinite(sample) && sample >= 1.0 && sample <= 1e9) learn(s, sample);
}

void spi__prefill_end(spi_replica_slot *s, const spi_ticket *k) {
  atomic_fetch_sub_explicit(&s->prefill_queued, k->prefill_tokens,
                            memory_order_relaxed);
}

/* The mean output of the replica's finished tickets, as the batch-slot
 * wait reads it (prefill_model.h): a moving mean over about the last 16,
 * the first one taken as it is. A ticket that ended early (cancelled,
 * failed, drained) held its slot for the output it got, so every finish
 * counts. Two finishes at once may lose one of the updates; the mean is
 * an estimate, and taking a lock for it would cost every finish. */
static void learn_output(spi_replica_slot *s, uint64_t output_tokens) {
  double m = spi__bitsd(atomic_load_explicit(&s->mean_output,
                                             memory_order_relaxed));
  double o = (double)output_tokens;
  m = m > 0 ? m + (o - m) / 16.0 : o;
  atomic_store_explicit(&s->mean_output, spi__dbits(m), memory_order_relaxed);
}

/* The finish of a ticket on its own replica: the output it generated
 * replaces the estimate counted at open, so what a replica was sent is
 * its prompts and outputs as they were, whatever the requests said; and
 * it is one more stream length for the replica's mean (learn_output). */
void spi__prefill_finish(spi_replica_slot *s, const spi_ticket *k,
                         uint64_t output_tokens) {
  if (output_tokens > k->expected_output)
    atomic_fetch_add_explicit(&s->served_tokens,
                              output_tokens - k->expected_output,
                              memory_order_relaxed);
  else if (output_tokens < k->expected_output)
    atomic_fetch_sub_explicit(&s->served_tokens,
                              k->expected_output - output_tokens,
                              memory_order_relaxed);
  learn_output(s, output_tokens);
}
