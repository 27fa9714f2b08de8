/*
 * prefill_model.h - the time-to-first-token model routing ranks replicas
 * by, and the per-replica state it reads (kept by tickets, prefill_model.c).
 *
 * With continuous batching a new request waits for the prefill queued
 * ahead of it, then runs its own prefill; decodes already running do not
 * make it wait, they slow every token a little, until they fill the batch:
 * then it waits for a slot. So, on replica r:
 *
 *   wait_r = max(queued_r / rate_r, waiting_r * router.ttft_per_queued_ms,
 *                slot_r)
 *   slot_r = (streams_r + 1 - max_inflight_r) / max_inflight_r
 *            * output_r / decode_r              (0 while the batch has room)
 *   TTFT_r = ttft_base_ms + wait_r
 *            + (prompt - cached_r) / rate_r * (1 + running_r / max_inflight_r)
 *
 * queued_r: uncached prompt tokens of this library's open tickets there
 * without a first token; waiting_r: the queue the replica itself reports
 * (other proxies' work too); rate_r: its prefill rate learnt from first
 * tokens, router.prefill_tokens_per_s until PREFILL_MIN_SAMPLES have been
 * seen; cached_r: the prefix it holds; streams_r: running_r + waiting_r,
 * or this library's open tickets there when more; output_r: the mean
 * output of its finished tickets; decode_r: one stream's decode rate. A
 * stale load reads as saturated, so its wait and slowdown are huge.
 *
 * Everything here is inline: the pass over the replicas evaluates it for
 * every replica on every route, with no allocation, lock or syscall.
 */
#ifndef SPI_PREFILL_MODEL_H
#define SPI_PREFILL_MODEL_H

#include "routing.h"

/* First tokens seen before a replica's own rate replaces the configured
 * one: a single TTFT is noisy (it carries network and scheduling time). */
#define SPI_PREFILL_MIN_SAMPLES 8u

/* The cost-model counters of one slot, as a route reads them. */
typedef struct spi_prefill_read {
  double queued;   /* uncached prompt tokens queued, no first token yet */
  double served;   /* work sent there since it joined: prompt + output tokens */
  double rate;     /* prefill tokens/s in use for the estimate */
  double ms_tok;   /* ... as ms a token: 1000 / rate */
  double mean_out; /* output tokens of its finished tickets, a moving mean
                      (prefill_model.c); 0 before the first */
} spi_prefill_read;

/* The cost-model counters as a route reads them, from the slot's words w
 * (spi__slot_words_read). default_ms_tok: 1000 / default_rate, computed
 * once a route (the same bits as here), so a replica still on the
 * configured rate costs no division. */
static inline void spi__prefill_read(const spi_slot_words *w,
                                     double default_rate,
                                     double default_ms_tok,
                                     spi_prefill_read *o) {
  double learnt = spi__bitsd(w->rate);
  o->queued = (double)w->queued;
  o->served = (double)w->served;
  int own = w->rate_samples >= SPI_PREFILL_MIN_SAMPLES && learnt > 0;
  o->rate = own ? learnt : default_rate;
  o->ms_tok = own ? 1000.0 / learnt : default_ms_tok;
  o->mean_out = spi__bitsd(w->mean_out);
}

/* The streams a replica carries: what it reports running and waiting, or
 * this library's open tickets there when those are more (placements since
 * its last report). */
static inline double spi__streams(double running, double waiting,
                                  uint32_t inflight) {
  double streams = running + waiting;
  return (double)inflight > streams ? (double)inflight : streams;
}

/* The wait for a batch slot, ms. While the streams on r (spi__streams)
 * fill its batch, a new request starts only once streams + 1 -
 * max_inflight of them have ended, and a full batch ends about
 * max_inflight streams in the time one takes: its mean output (pf->
 * mean_out, learnt from finished tickets) at one stream's decode rate (the
 * replica's, else router.decode_tokens_per_s). 0 while the batch has room
 * or before a ticket there has finished. */
static inline double spi__slot_wait_ms(const spi_router_cfg *c,
                                       const spi_replica_ident *r,
                                       double running, double waiting,
                                       uint32_t inflight,
                                       const spi_prefill_read *pf) {
  double ahead = spi__streams(running, waiting, inflight) + 1.0 - r->cap;
  if (!(ahead > 0) || !(pf->mean_out > 0)) return 0;
  return ahead / r->cap * pf->mean_out / spi__decode_rate(r, c) * 1000.0;
}

/* How long a new request on r waits before its prefill starts, ms: behind
 * the prefill queued there (this library's, at the learnt rate, or the
 * queue the replica reports), or for a batch slot, whichever is longer. */
static inline double spi__prefill_wait_ms(const spi_router_cfg *c,
                                          const spi_replica_ident *r,
                                          double running, double waiting,
                                          uint32_t inflight,
                                          const spi_prefill_read *pf) {
  double own = pf->queued * pf->ms_tok;
  double reported = waiting * c->ttft_per_queued_ms;
  double wait = own > reported ? own : reported;
  double slot = spi__slot_wait_ms(c, r, running, waiting, inflight, pf);
  return slot > wait ? slot : wait;
}

/* The TTFT estimate, ms, given the wait and the uncached prompt tokens. */
static inline double spi__prefill_ttft_ms(const spi_router_cfg *c,
                                          double wait_ms, double running,
                                          double inv_cap, double uncached,
                                          double ms_tok, int advised) {
  double t = c->ttft_base_ms + wait_ms +
             uncached * ms_tok * (1.0 + running * inv_cap);
  return advised ? t + c->advised_penalty_ms : t;
}

/* The most output a request can generate, as far as it and its class
 * say: what it says it expects, else its max_tokens, but never more than
 * its class's cap, which the gateway applies (spi_decision's
 * max_output_tokens), so a request asking for more cannot make it; the
 * cap alone when the request says nothing; -1 when neither says. */
static inline int64_t spi__output_bound(const spi_request_view *v,
                                        const spi_classification *cls) {
  int said_set = v->expected_output_tokens_set || v->max_output_tokens_set;
  int64_t said = v->expected_output_tokens_set ? v->expected_output_tokens
                 : v->max_output_tokens_set    ? v->max_output_tokens
                                               : 0;
  int64_t cap = cls->max_output_tokens;
  if (!said_set) return cap > 0 ? cap : -1;
  return cap > 0 && said > cap ? cap : said;
}

/* The output tokens a request is expected to generate: its bound
 * (spi__output_bound) when that is positive, else the class's cap, else
 * 256. The policy counts this for the request it places, from the
 * classification it chooses with (at the higher of the pools' pressures,
 * so the cap is that plan's), and the ticket keeps the same figure (drain
 * estimates, the work a replica was sent), not one from the plan at the
 * chosen pool's pressure (route.c). spi__output_estimate_of: the same
 * from the bound, read already. */
static inline uint64_t spi__output_estimate_of(int64_t b,
                                               const spi_classification *cls) {
  if (b > 0) return (uint64_t)b;
  return cls->max_output_tokens > 0 ? (uint64_t)cls->max_output_tokens : 256;
}
static inline uint64_t spi__output_estimate(const spi_request_view *v,
                                            const spi_classification *cls) {
  return spi__output_estimate_of(spi__output_bound(v, cls), cls);
}

/* The most output tokens a ticket may report, streamed or at its finish:
 * as many as a request may ask for (max_output_tokens, request.c). A
 * larger count is a caller's error, and summed into served_tokens it
 * could wrap that counter. */
#define SPI_OUTPUT_TOKENS_MAX UINT64_C(1000000000)
/* The most prompt (or cached prompt) tokens a ticket may report: as many
 * as a request may say it has (prompt_tokens, request.c). Beyond it the
 * count no longer converts to the cost model's signed view, and summed
 * into the ledger's totals it could wrap them. */
#define SPI_PROMPT_TOKENS_MAX UINT64_C(100000000000)

/* Ticket reports (prefill_model.c). Opening adds the ticket's prefill to
 * its replica's queue and its work (prompt plus expected output) to what
 * the replica was sent; the first token (or a finish without one) takes
 * the prefill back and, for a first token, teaches the replica its rate;
 * the finish puts the output it reported in place of the estimate. */
struct spi_ticket;
void spi__prefill_open(spi_replica_slot *s, struct spi_ticket *k,
                       uint64_t prompt_tokens, uint64_t cached_tokens,
                       double slowdown);
void spi__prefill_first_token(spi_replica_slot *s, const struct spi_ticket *k,
                              int64_t now_ns, const spi_router_cfg *c);
void spi__prefill_end(spi_replica_slot *s, const struct spi_ticket *k);
void spi__prefill_finish(spi_replica_slot *s, const struct spi_ticket *k,
                         uint64_t output_tokens);

#endif /* SPI_PREFILL_MODEL_H */
