/*
 * ticket_report.c - what flows back from a routed request: the first
 * token, stream progress, and the finish that feeds the prefix index, the
 * replica's load and error breaker, the cost ledger and the metrics.
 *
 * Reports find their ticket by id without a lock (ticket.c). Each pins
 * the configuration snapshot while it reads the ticket table (configure
 * may replace a table that never handed out a ticket); a finish also
 * reads through it the breaker's thresholds, the prefix index's weight
 * horizon and the cost model that prices the work.
 */
#include <math.h>
#include <string.h>

#include "engine.h"
#include "prefill_model.h"

/* Whether the replica a ticket was opened on has gone (removed, or its
 * slot given to another replica). A drain or a notice is not that: it
 * changes gen, but the replica's tickets still count on it. */
static int ticket_replica_gone(const spi_engine *e, const spi_ticket *k) {
  const spi_replica_slot *s = &e->registry.slots[k->slot];
  return atomic_load(&s->state) == 0 ||
         atomic_load(&s->incarnation) != k->incarnation;
}

/* The open ticket a stream report names, pinned, whose replica is still
 * there; NULL (nothing pinned) after recording SPI_ESTALE on the engine.
 * The pin keeps the record's plain fields this ticket's until
 * spi__ticket_unpin_record: without it, a finish and the next route could
 * reset and refill the record while the report reads it. The report
 * changes nothing on a removed replica's ticket: finish still closes and
 * prices it. */
static spi_ticket *reported_ticket(spi_engine *engine, spi_ticket_table *tt,
                                   uint64_t ticket) {
  spi_ticket *k = spi__ticket_pin_id(tt, ticket);
  if (!k) {
    spi__engine_fail(engine, SPI_ESTALE, "ticket %llu is not open",
                     (unsigned long long)ticket);
    return NULL;
  }
  if (ticket_replica_gone(engine, k)) {
    spi__ticket_unpin_record(tt, k);
    spi__engine_fail(engine, SPI_ESTALE,
                     "ticket %llu: its replica was removed; finish it to "
                     "close and price it",
                     (unsigned long long)ticket);
    return NULL;
  }
  return k;
}

/* Report the first token on an open ticket. The ticket table is read
 * pinned: configure may replace one that never handed out a ticket. The
 * clock is read before the ticket is pinned: a pin's holder calls out to
 * nothing (lib/engine.h, rule A). */
static int first_token_pinned(spi_engine *engine, const spi_snapshot *snap,
                              uint64_t ticket) {
  int64_t now = spi__engine_now(engine);
  spi_ticket_table *tt = atomic_load(&engine->tickets);
  spi_ticket *k = reported_ticket(engine, tt, ticket);
  if (!k) return SPI_ESTALE;
  long long zero = 0;
  /* Whoever moves first_token_ns off 0 (this, or finish with its sentinel)
   * takes the ticket out of the queue-depth gauge, exactly once. */
  if (atomic_compare_exchange_strong(&k->first_token_ns, &zero,
                                     now > 0 ? now : 1)) {
    spi_metrics *mx = atomic_load(&engine->metrics);
    if (mx) {
      spi__metrics_ttft(mx, k->klass, (double)(now - k->start_ns) / 1e6);
      spi__metrics_queue_delta(mx, k->klass, -1);
    }
    /* Its prefill is done: off the replica's queue, and a rate sample. */
    spi__prefill_first_token(&engine->registry.slots[k->slot], k, now,
                             &snap->router);
    spi__replica_touch(&engine->registry, k->slot);
  }
  spi__ticket_unpin_record(tt, k);
  return SPI_OK;
}

int spi_ticket_first_token(spi_engine *engine, uint64_t ticket) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  unsigned pin;
  const spi_snapshot *snap = spi__snap_acquire(engine, &pin);
  int rc = first_token_pinned(engine, snap, ticket);
  spi__snap_release(engine, pin);
  return rc;
}

static int progress_pinned(spi_engine *engine, uint64_t ticket,
                           uint64_t tokens_streamed) {
  spi_ticket_table *tt = atomic_load(&engine->tickets);
  spi_ticket *k = reported_ticket(engine, tt, ticket);
  if (!k) return SPI_ESTALE;
  unsigned long long cur = atomic_load(&k->tokens_streamed);
  while (tokens_streamed > cur &&
         !atomic_compare_exchange_weak(&k->tokens_streamed, &cur,
                                       tokens_streamed)) {
  }
  spi__ticket_unpin_record(tt, k);
  if (tokens_streamed < cur)
    return spi__engine_fail(engine, SPI_ERANGE,
                            "ticket %llu: progress %llu is below %llu",
                            (unsigned long long)ticket,
                            (unsigned long long)tokens_streamed,
                            (unsigned long long)cur);
  return SPI_OK;
}

int spi_ticket_progress(spi_engine *engine, uint64_t ticket,
                        uint64_t tokens_streamed) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (tokens_streamed > SPI_OUTPUT_TOKENS_MAX)
    return spi__engine_fail(engine, SPI_ERANGE,
                            "ticket %llu: progress %llu is above %llu tokens",
                            (unsigned long long)ticket,
                            (unsigned long long)tokens_streamed,
                            (unsigned long long)SPI_OUTPUT_TOKENS_MAX);
  unsigned pin;
  spi__snap_acquire(engine, &pin);
  int rc = progress_pinned(engine, ticket, tokens_streamed);
  spi__snap_release(engine, pin);
  return rc;
}

static int result_ok(const spi_ticket_result *r) {
  return r->status >= SPI_TICKET_OK && r->status <= SPI_TICKET_INTERRUPTED &&
         isfinite(r->ttft_ms) && r->ttft_ms >= 0 && isfinite(r->duration_ms) &&
         r->duration_ms >= 0 &&
         (r->prompt_tokens == 0 || r->cached_tokens <= r->prompt_tokens);
}

/* Whether no first token was reported for k: the finish marks it so (-1),
 * or finds a report's time, the exchange arbitrating a report that races
 * it. Looked at first: a failed exchange is a locked instruction too, and
 * most finishes come after their first token. */
static int first_token_none(spi_ticket *k) {
  long long zero = 0;
  return atomic_load_explicit(&k->first_token_ns, memory_order_acquire) == 0 &&
         atomic_compare_exchange_strong(&k->first_token_ns, &zero, (int64_t)-1);
}

/* Price finished work with the engine's cost model: actual tokens, cached
 * prompt tokens not prefilled again. */
static void price_finished(const spi_snapshot *s, const spi_ticket *k,
                           const spi_ticket_result *res, double *gpu_s,
                           double *usd) {
  spi_request_view v;
  spi__zero(&v, sizeof v); /* not an inlined "rep stos": routing.h */
  v.struct_size = sizeof v;
  uint64_t prompt = res->prompt_tokens ? res->prompt_tokens : k->prompt_tokens_est;
  uint64_t cached = res->cached_tokens < prompt ? res->cached_tokens : prompt;
  v.prompt_tokens = (int64_t)(prompt - cached);
  v.prompt_tokens_set = 1;
  v.expected_output_tokens = (int64_t)(res->output_tokens
                                           ? res->output_tokens
                                           : atomic_load(&k->tokens_streamed));
  v.expected_output_tokens_set = 1;
  v.model = k->model;
  v.model_len = strlen(k->model);
  spi_price p;
  spi__zero(&p, sizeof p);
  p.struct_size = sizeof p;
  *gpu_s = *usd = 0;
  if (spi__price_in(NULL, s, &v, k->pool, &p) == SPI_OK) {
    *gpu_s = p.gpu_seconds;
    *usd = p.usd;
  }
}

int spi_ticket_finish(spi_engine *engine, uint64_t ticket,
                      const spi_ticket_result *result) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!result || result->struct_size < sizeof *result || !result_ok(result))
    return spi__engine_fail(engine, SPI_EINVAL,
                            "ticket result: NULL, bad struct_size, unknown "
                            "status, negative or non-finite time, or more "
                            "cached than prompt tokens");
  if (result->output_tokens > SPI_OUTPUT_TOKENS_MAX)
    return spi__engine_fail(engine, SPI_ERANGE,
                            "ticket result: %llu output tokens, above %llu",
                            (unsigned long long)result->output_tokens,
                            (unsigned long long)SPI_OUTPUT_TOKENS_MAX);
  if (result->prompt_tokens > SPI_PROMPT_TOKENS_MAX ||
      result->cached_tokens > SPI_PROMPT_TOKENS_MAX)
    return spi__engine_fail(engine, SPI_ERANGE,
                            "ticket result: %llu prompt and %llu cached "
                            "tokens, above %llu",
                            (unsigned long long)result->prompt_tokens,
                            (unsigned long long)result->cached_tokens,
                            (unsigned long long)SPI_PROMPT_TOKENS_MAX);
  /* Pinned before the ticket table is read: configure may replace one
   * that never handed out a ticket. */
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  spi_ticket_table *tt = atomic_load(&engine->tickets);
  spi_ticket *k = tt ? spi__ticket_lookup(tt, ticket) : NULL;
  if (!k || !spi__ticket_claim(tt, k, ticket)) {
    spi__snap_release(engine, pin);
    return spi__engine_fail(engine, SPI_ESTALE,
                            "ticket %llu is not open (finished twice?)",
                            (unsigned long long)ticket);
  }
  int64_t now = spi__engine_now(engine);
  spi_replica_slot *slot = &engine->registry.slots[k->slot];
  int stale = ticket_replica_gone(engine, k);
  int ok = result->status == SPI_TICKET_OK;
  spi_metrics *mx = atomic_load(&engine->metrics);
  int no_first_token = first_token_none(k);
  if (mx) {
    if (no_first_token) {
      spi__metrics_queue_delta(mx, k->klass, -1);
      if (result->ttft_ms > 0) spi__metrics_ttft(mx, k->klass, result->ttft_ms);
    }
    if (k->model_tier == SPI_TIER_SMALL &&
        (ok || result->status == SPI_TICKET_DRAFT_REJECTED))
      spi__metrics_draft(mx, ok);
  }
  if (!stale) {
    atomic_fetch_sub(&slot->inflight, 1);
    if (no_first_token) spi__prefill_end(slot, k);
    spi__prefill_finish(slot, k, result->output_tokens
                                     ? result->output_tokens
                                     : atomic_load(&k->tokens_streamed));
    if (result->status == SPI_TICKET_CANCELLED) {
      /* A cancelled probe says nothing about the replica: let another try. */
      if (k->probe) spi__breaker_release_probe(slot);
    } else if (spi__breaker_record(slot, result->status != SPI_TICKET_ERROR,
                                   k->probe, now, &s->router) &&
               mx) {
      spi__metrics_breaker_open(mx);
    }
    spi__replica_touch(&engine->registry, k->slot);
    spi_prefix_index *ix = atomic_load(&engine->index);
    if (ok && ix && k->n_hashes && atomic_load(&slot->gen) == k->gen)
      spi__index_insert(ix, k->hashes, 0, k->n_hashes, k->slot, k->gen,
                        k->weight, (uint32_t)(now / 1000000000),
                        (uint32_t)s->router.weight_seconds, spi__entry_live,
                        engine);
  }
  double gpu_s, usd;
  price_finished(s, k, result, &gpu_s, &usd);
  spi_ledger *lg = atomic_load(&engine->ledger);
  if (lg) {
    /* The counts priced (price_finished): never more cached than prompt. */
    uint64_t prompt = result->prompt_tokens ? result->prompt_tokens
                                            : k->prompt_tokens_est;
    uint64_t cached = result->cached_tokens < prompt ? result->cached_tokens
                                                     : prompt;
    spi__ledger_add(lg, k->tenant, k->model, k->pool, k->klass, ok, prompt,
                    result->output_tokens, cached, gpu_s, usd);
  }
  /* Interruptions: the work cut off is wasted spot work, and a replay's
   * latency and on-demand time are what recovering it cost. */
  spi_ledger_extra x = {0}; /* 56 bytes: a few stores, not a memset call */
  if (result->status == SPI_TICKET_INTERRUPTED) {
    uint64_t out_tok = result->output_tokens ? result->output_tokens
                                             : atomic_load(&k->tokens_streamed);
    uint64_t prompt = result->prompt_tokens ? result->prompt_tokens
                                            : k->prompt_tokens_est;
    x.interrupted = 1;
    x.wasted_output_tokens = out_tok;
    x.reprefilled_tokens = prompt + out_tok;
    x.wasted_usd = usd;
  }
  if (k->replay_since_ns) {
    int64_t first = atomic_load(&k->first_token_ns);
    int64_t at = first > 0 ? first : now;
    x.replay = 1;
    x.replay_latency_ms =
        at > k->replay_since_ns ? (double)(at - k->replay_since_ns) / 1e6 : 0;
    if (k->pool == SPI_POOL_ON_DEMAND)
      x.fallback_on_demand_seconds =
          result->duration_ms > 0 ? result->duration_ms / 1000.0
                                  : (double)(now - k->start_ns) / 1e9;
  }
  if (lg && (x.interrupted || x.replay))
    spi__ledger_add_extra(lg, k->tenant, k->model, k->pool, k->klass, &x);
  spi__ticket_release(tt, k);
  spi__snap_release(engine, pin);
  if (stale)
    return spi__engine_fail(engine, SPI_ESTALE,
                            "ticket %llu: its replica was removed; closed and "
                            "priced",
                            (unsigned long long)ticket);
  return SPI_OK;
}
