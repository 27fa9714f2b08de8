/*
 * router.c - the "router" configuration section and the routing state it
 * sizes: prefix index, ticket table, cost ledger and metrics.
 *
 * The state outlives configuration snapshots and is built by configure,
 * never by a route. A reconfigure that changes a size builds the new
 * object first (so a failure changes nothing), then swaps it in; the old
 * one is freed once no router can hold it. A table the engine has used
 * keeps its size: that reconfigure fails with a message rather than losing
 * open tickets, ledger rows or counts.
 */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"

static const char *const CLASSES[] = {"gold", "silver", "bronze"};

int spi__router_read_cfg(const cJSON *root, spi_router_cfg *c, char *err,
                         size_t errcap) {
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, "router");
  const char *S = "router";
  int rc;
  memset(c, 0, sizeof *c);
  if (o && (rc = spi__cfg_check_keys(o, S, S, err, errcap))) return rc;
  struct {
    const char *path;
    int64_t *dst;
  } ints[] = {
      {"router.max_replicas", &c->max_replicas},
      {"router.max_tickets", &c->max_tickets},
      {"router.index_bytes", &c->index_bytes},
      {"router.load_max_age_ms", &c->load_max_age_ms},
      {"router.error_threshold", &c->error_threshold},
      {"router.error_cooldown_ms", &c->error_cooldown_ms},
      {"router.max_fallbacks", &c->max_fallbacks},
      {"router.weight_seconds", &c->weight_seconds},
      {"router.ledger_max_rows", &c->ledger_max_rows},
      {"router.metrics_max_families", &c->metrics_max_families},
      {"router.drain_margin_ms", &c->drain_margin_ms},
      {"router.pool_cooldown_ms", &c->pool_cooldown_ms},
      {"router.advised_ttl_ms", &c->advised_ttl_ms},
      {"router.advised_max_output_tokens", &c->advised_max_output_tokens},
      {"router.default_window_ms", &c->default_window_ms},
  };
  for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
    if ((rc = spi__cfg_int(o, ints[i].path, S, ints[i].dst, err, errcap)))
      return rc;
  struct {
    const char *path;
    double *dst;
  } dbls[] = {
      {"router.bytes_per_token", &c->bytes_per_token},
      {"router.ttft_base_ms", &c->ttft_base_ms},
      {"router.ttft_per_queued_ms", &c->ttft_per_queued_ms},
      {"router.prefill_tokens_per_s", &c->prefill_tokens_per_s},
      {"router.kv_open", &c->kv_open},
      {"router.kv_close", &c->kv_close},
      {"router.kv_silver_open", &c->kv_silver_open},
      {"router.kv_silver_close", &c->kv_silver_close},
      {"router.decode_tokens_per_s", &c->decode_tokens_per_s},
      {"router.gold_drain_progress", &c->gold_drain_progress},
      {"router.advised_penalty_ms", &c->advised_penalty_ms},
  };
  for (size_t i = 0; i < sizeof dbls / sizeof dbls[0]; i++)
    if ((rc = spi__cfg_double(o, dbls[i].path, S, dbls[i].dst, err, errcap)))
      return rc;
  if (!(c->kv_close < c->kv_open && c->kv_silver_close < c->kv_silver_open &&
        c->kv_open <= c->kv_silver_open && c->kv_close <= c->kv_silver_close)) {
    spi__errf(err, errcap,
              "router: need kv_close < kv_open <= kv_silver_open and "
              "kv_silver_close < kv_silver_open, kv_close <= kv_silver_close");
    return SPI_ERANGE;
  }
  const cJSON *w = o ? cJSON_GetObjectItemCaseSensitive(o, "class_weight") : NULL;
  if (w && (rc = spi__cfg_check_keys(w, "router.class_weight",
                                     "router.class_weight", err, errcap)))
    return rc;
  for (int k = 0; k < 3; k++) {
    char path[64];
    int64_t v = 1;
    snprintf(path, sizeof path, "router.class_weight.%s", CLASSES[k]);
    if ((rc = spi__cfg_int(w, path, "router.class_weight", &v, err, errcap)))
      return rc;
    c->class_weight[k + 1] = (int32_t)v;
  }
  const char *sp = "";
  size_t splen = 0;
  if ((rc = spi__cfg_string(o, "router.shadow_policy", S, &sp, &splen, err,
                            errcap)))
    return rc;
  if (splen >= sizeof c->shadow_policy) {
    spi__errf(err, errcap, "router.shadow_policy: at most %zu bytes",
              sizeof c->shadow_policy - 1);
    return SPI_ERANGE;
  }
  memcpy(c->shadow_policy, sp, splen);
  c->shadow_policy[splen] = '\0';
  return SPI_OK;
}

/* The routing tables (ticket table, cost ledger, metrics) exist from the
 * engine's first configuration on, so no route creates them. Until the
 * engine has used them (a ticket handed out, a ledger row, a count), a
 * configuration may still size them anew: spi_engine_new configures the
 * defaults before the caller's own configuration arrives. The three are
 * replaced together, and only once the old ticket table is sealed (see
 * spi__router_take_tables). Once used they keep their sizes, since resizing
 * would lose open tickets or counts. */
static int tables_fixed(spi_engine *e, const spi_router_cfg *c, char *err,
                        size_t errcap) {
  spi_ticket_table *t = atomic_load(&e->tickets);
  spi_ledger *lg = atomic_load(&e->ledger);
  spi_metrics *mx = atomic_load(&e->metrics);
  int used = spi__tickets_high(t) != 0 || spi__ledger_count(lg) != 0 ||
             !spi__metrics_untouched(mx);
  if (!used) return SPI_OK;
  if (spi__tickets_capacity(t) != (size_t)c->max_tickets)
    spi__errf(err, errcap,
              "router.max_tickets: fixed at %zu once the engine has routed",
              spi__tickets_capacity(t));
  else if (spi__ledger_max_rows(lg) != (size_t)c->ledger_max_rows)
    spi__errf(err, errcap,
              "router.ledger_max_rows: fixed at %zu once the engine has routed",
              spi__ledger_max_rows(lg));
  else
    spi__errf(err, errcap,
              "router.metrics_max_families: fixed at %zu once the engine "
              "has routed",
              spi__metrics_max_families(mx));
  return SPI_EINVAL;
}

static int tables_prepare(spi_engine *e, const spi_router_cfg *c,
                          spi_router_prep *p, char *err, size_t errcap) {
  const spi_mem *m = &e->mem;
  spi_ticket_table *t = atomic_load(&e->tickets);
  spi_ledger *lg = atomic_load(&e->ledger);
  spi_metrics *mx = atomic_load(&e->metrics);
  if (t && lg && mx && spi__tickets_capacity(t) == (size_t)c->max_tickets &&
      spi__ledger_max_rows(lg) == (size_t)c->ledger_max_rows &&
      spi__metrics_max_families(mx) == (size_t)c->metrics_max_families)
    return SPI_OK;
  int rc = t ? tables_fixed(e, c, err, errcap) : SPI_OK;
  if (rc) return rc;
  if (spi__tickets_new(m, (size_t)c->max_tickets, &p->tickets) ||
      spi__ledger_new(m, (size_t)c->ledger_max_rows, &p->ledger) ||
      spi__metrics_new(m, (size_t)c->metrics_max_families, &p->metrics)) {
    spi__errf(err, errcap, "router: out of memory for the routing tables");
    return SPI_ENOMEM;
  }
  return SPI_OK;
}

/* New objects a configuration needs, built before anything is swapped (so
 * a failure changes nothing). */
int spi__router_prepare(spi_engine *e, const spi_router_cfg *c,
                        spi_router_prep *p, char *err, size_t errcap) {
  memset(p, 0, sizeof *p);
  int rc = tables_prepare(e, c, p, err, errcap);
  if (rc) {
    spi__router_discard(e, p);
    return rc;
  }
  if (!atomic_load(&e->index) || e->index_budget != (size_t)c->index_bytes) {
    rc = spi__index_new(&e->mem, (size_t)c->index_bytes, &p->index);
    if (rc) {
      spi__router_discard(e, p);
      spi__errf(err, errcap, "router.index_bytes: %s", spi_strerror(rc));
      return rc;
    }
    p->index_budget = (size_t)c->index_bytes;
  }
  return SPI_OK;
}

void spi__router_discard(spi_engine *e, spi_router_prep *p) {
  const spi_mem *m = &e->mem;
  if (p->index) spi__index_free(m, p->index);
  if (p->tickets) spi__tickets_free(m, p->tickets);
  if (p->ledger) spi__ledger_free(m, p->ledger);
  if (p->metrics) spi__metrics_free(m, p->metrics);
  memset(p, 0, sizeof *p);
}

int spi__router_take_tables(spi_engine *e, const spi_router_cfg *c,
                            spi_router_prep *p, char *err, size_t errcap) {
  if (!p->tickets) return SPI_OK;
  spi_ticket_table *old = atomic_load(&e->tickets);
  if (old && !spi__tickets_seal(old)) {
    /* A route took a ticket since the check; it may not have published
     * it yet, so the check can still see the tables unused. */
    int rc = tables_fixed(e, c, err, errcap);
    if (rc == SPI_OK) {
      spi__errf(err, errcap,
                "router.max_tickets, router.ledger_max_rows and "
                "router.metrics_max_families: fixed once the engine has "
                "routed (a route began during this configuration)");
      rc = SPI_EINVAL;
    }
    return rc;
  }
  /* At once after the seal: a route that found the old table sealed
   * takes from the new one when it looks again (route.c's serve). */
  p->tickets = atomic_exchange(&e->tickets, p->tickets);
  p->ledger = atomic_exchange(&e->ledger, p->ledger);
  p->metrics = atomic_exchange(&e->metrics, p->metrics);
  return SPI_OK;
}

/* Swap the prepared index in, after the new snapshot is published, and
 * free the old objects (the index, and the tables spi__router_take_tables
 * replaced) once no router can hold them. A new index starts empty: the
 * old one's entries were placed for a table of another size. */
void spi__router_commit(spi_engine *e, spi_router_prep *p) {
  if (p->index) {
    p->index = atomic_exchange(&e->index, p->index);
    e->index_budget = p->index_budget;
  }
  if (p->index || p->tickets) spi__rcu_synchronize(&e->rcu);
  spi__router_discard(e, p); /* now the old objects, or unused new ones */
}

void spi__router_destroy(spi_engine *e) {
  const spi_mem *m = &e->mem;
  spi_prefix_index *ix = atomic_exchange(&e->index, NULL);
  if (ix) spi__index_free(m, ix);
  spi_ticket_table *t = atomic_exchange(&e->tickets, NULL);
  if (t) spi__tickets_free(m, t);
  spi_ledger *l = atomic_exchange(&e->ledger, NULL);
  if (l) spi__ledger_free(m, l);
  spi_metrics *x = atomic_exchange(&e->metrics, NULL);
  if (x) spi__metrics_free(m, x);
}
