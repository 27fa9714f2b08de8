/*
 * route.c - spi_route() and the ticket calls: the routing path that ties the
 * classifier, the key builder, the prefix index, the replica registry, the
 * breakers and the policy module together, and the reports that flow back.
 *
 * spi_route pins the engine's RCU domain once and reads the configuration
 * snapshot, the replica set and the prefix index through it. Everything it
 * writes is atomic (replica in-flight counts, index entries, breaker levels,
 * ticket slots, metric counters); scratch space lives in the request and is
 * reused, so a warm route neither allocates nor locks.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "engine.h"

/* A 64-bit mix (splitmix64's finaliser) for rendezvous weights. */
static uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

#define GEN_MASK 0xfffu /* the index keeps 12 bits of a replica's gen */

/* An index entry is live while its replica is ACTIVE with the same gen. */
static int entry_live(void *ctx, uint32_t slot, uint32_t gen) {
  const spi_engine *e = ctx;
  if (slot >= SPI_REPLICA_SLOTS) return 0;
  const spi_replica_slot *s = &e->registry.slots[slot];
  return atomic_load_explicit(&s->state, memory_order_relaxed) ==
             SPI_REPLICA_ACTIVE &&
         (atomic_load_explicit(&s->gen, memory_order_relaxed) & GEN_MASK) ==
             (gen & GEN_MASK);
}

static int grow_scratch(spi_request *r, size_t hashes, size_t cands) {
  const spi_mem *m = &r->engine->mem;
  if (hashes > r->hashcap) {
    uint64_t *p = spi__calloc(m, hashes, sizeof *p);
    if (!p) return SPI_ENOMEM;
    spi__free(m, r->hashes);
    r->hashes = p;
    r->hashcap = hashes;
  }
  if (cands > r->candcap) {
    spi_candidate *p = spi__calloc(m, cands, sizeof *p);
    if (!p) return SPI_ENOMEM;
    spi__free(m, r->cands);
    r->cands = p;
    r->candcap = cands;
  }
  return SPI_OK;
}

static uint64_t prompt_tokens(const spi_request_view *v, double bytes_per_token) {
  if (v->prompt_tokens_set) return (uint64_t)v->prompt_tokens;
  if (v->token_count) return v->token_count;
  return (uint64_t)ceil((double)v->prompt_len / bytes_per_token);
}

static int choice_ok(const spi_policy_choice *c, const spi_route_context *x) {
  if (c->pool == SPI_POOL_QUEUE || c->pool == 0) return 1;
  if (c->pool != SPI_POOL_SPOT && c->pool != SPI_POOL_ON_DEMAND) return 0;
  if (c->n_order < 1 || c->n_order > 1 + x->max_fallbacks) return 0;
  for (uint32_t i = 0; i < c->n_order; i++) {
    if (c->order[i] >= x->n_candidates) return 0;
    const spi_candidate *k = &x->candidates[c->order[i]];
    if (!k->eligible && !(i == 0 && k->probe)) return 0;
  }
  return x->candidates[c->order[0]].pool == c->pool;
}

static int run_policy(const spi_modentry *m, void *inst,
                      const spi_route_context *x, spi_policy_choice *out) {
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  int rc = m->m.policy.choose(m->state, inst, x, out);
  out->reason[sizeof out->reason - 1] = '\0';
  if (rc == SPI_OK && !choice_ok(out, x)) rc = SPI_EMODULE;
  return rc;
}

static void copy_id(char dst[SPI_ID_MAX], const char *src, size_t len) {
  if (len >= SPI_ID_MAX) len = SPI_ID_MAX - 1;
  memcpy(dst, src, len);
  dst[len] = '\0';
}

/* Route with a pinned snapshot. */
static int route_pinned(spi_request *req, spi_snapshot *snap,
                        spi_request_view *v, spi_decision *out) {
  spi_engine *e = req->engine;
  const spi_router_cfg *rc_cfg = &snap->router;
  const spi_replica_set *set = atomic_load(&e->registry.set);
  spi_prefix_index *ix = atomic_load(&e->index);
  int rc = spi__router_ready(e, rc_cfg);
  if (rc) return spi__req_fail(req, rc, "route: out of memory");
  int64_t now = spi__engine_now(e);
  int64_t max_age = rc_cfg->load_max_age_ms * 1000000;
  size_t nrep = set ? set->n : 0;

  /* Key and prefix blocks, into the request's warm scratch. */
  if ((rc = spi__key_in(req, snap, v, &out->key))) return rc;
  size_t nblocks = 0;
  rc = spi__blocks_in(req, snap, v, &out->key, req->hashes, req->hashcap,
                      &nblocks);
  if (rc == SPI_EBUFSIZE || req->candcap < nrep) {
    if (grow_scratch(req, nblocks, nrep))
      return spi__req_fail(req, SPI_ENOMEM, "route: out of memory");
    rc = spi__blocks_in(req, snap, v, &out->key, req->hashes, req->hashcap,
                        &nblocks);
  }
  if (rc) return rc;
  out->total_blocks = (uint32_t)nblocks;

  /* One pass over the replicas: their load as routing sees it, and the
   * pools' mean KV usage (ACTIVE replicas; stale counts as full). */
  double kv_sum[4] = {0}, kv_n[4] = {0};
  for (size_t i = 0; i < nrep; i++) {
    const spi_replica_ident *r = &set->r[i];
    spi_replica_slot *s = &e->registry.slots[r->slot];
    spi_candidate *c = &req->cands[i];
    spi_load_view l;
    spi__replica_load(s, now, max_age, &l);
    c->id = r->id;
    c->id_len = r->id_len;
    c->pool = r->pool;
    c->model_tier = r->model_tier;
    c->eligible = atomic_load_explicit(&s->state, memory_order_relaxed) ==
                  SPI_REPLICA_ACTIVE;
    c->probe = 0;
    c->fresh = l.fresh;
    c->reserved0 = 0;
    c->running = l.running;
    c->waiting = l.waiting;
    c->kv_usage = l.kv_usage;
    c->inflight = atomic_load_explicit(&s->inflight, memory_order_relaxed);
    c->max_inflight = r->max_inflight;
    c->matched_blocks = 0;
    c->reserved1 = 0;
    c->usd_per_hour = r->usd_per_hour;
    if (c->eligible) {
      kv_sum[r->pool] += l.kv_usage;
      kv_n[r->pool] += 1;
    }
  }

  /* The KV breakers, and the class at the worse pool's pressure. */
  int32_t level[4] = {0}, kvl[4] = {0};
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++) {
    double press = kv_n[p] > 0 ? kv_sum[p] / kv_n[p] : 0;
    unsigned old = atomic_load(&e->kv_level[p]);
    int nl = spi__kv_breaker_step((int)old, press, rc_cfg);
    if ((unsigned)nl != old &&
        atomic_compare_exchange_strong(&e->kv_level[p], &old, (unsigned)nl) &&
        nl > (int)old && atomic_load(&e->metrics))
      spi__metrics_breaker_open(atomic_load(&e->metrics));
    kvl[p] = nl;
    level[p] = spi__pressure_level(press, rc_cfg);
  }
  spi_classification cls;
  memset(&cls, 0, sizeof cls);
  cls.struct_size = sizeof cls;
  int32_t worst = level[1] > level[2] ? level[1] : level[2];
  if ((rc = spi__classify_in(req, snap, v, worst, &cls))) return rc;

  /* Which replicas likely hold the prefix. */
  uint32_t holders[64], hgens[64], nh = 0, matched = 0;
  if (ix && nblocks)
    matched = spi__index_longest(ix, req->hashes, (uint32_t)nblocks, entry_live,
                                 e, holders, hgens, 64, &nh);

  /* Second pass: eligibility for this class, TTFT estimate, rendezvous
   * weight. The uncached prefill time has two values only (cold, or warm to
   * the matched depth), so it is computed once, not per replica. */
  int32_t shed[4] = {0};
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++)
    shed[p] = (kvl[p] >= 1 && cls.klass == SPI_CLASS_BRONZE) ||
              (kvl[p] >= 2 && cls.klass != SPI_CLASS_GOLD);
  uint64_t tokens = prompt_tokens(v, rc_cfg->bytes_per_token);
  double ms_per_token = 1000.0 / rc_cfg->prefill_tokens_per_s;
  double cold_ms = (double)tokens * ms_per_token;
  double warm_ms = nblocks ? cold_ms * (1.0 - (double)matched / (double)nblocks)
                           : cold_ms;
  uint64_t rkey = nblocks ? req->hashes[0] : out->key.low64;
  int64_t expect_out = v->expected_output_tokens_set ? v->expected_output_tokens
                       : v->max_output_tokens_set    ? v->max_output_tokens
                                                     : 0;
  int long_request = expect_out > rc_cfg->advised_max_output_tokens;
  for (size_t i = 0; i < nrep; i++) {
    const spi_replica_ident *r = &set->r[i];
    spi_replica_slot *s = &e->registry.slots[r->slot];
    spi_candidate *c = &req->cands[i];
    for (uint32_t h = 0; h < nh; h++)
      if (holders[h] == r->slot) c->matched_blocks = matched;
    double prefill = c->matched_blocks ? warm_ms : cold_ms;
    c->est_ttft_ms = rc_cfg->ttft_base_ms + c->waiting * rc_cfg->ttft_per_queued_ms +
                     prefill * (1.0 + c->running * r->inv_max_inflight);
    c->rendezvous = mix64(r->id_hash ^ rkey);
    /* Interruption signals: a cooling spot pool takes nothing new; an
     * advised machine takes no long request and weighs less. */
    int cooling = r->pool == SPI_POOL_SPOT &&
                  atomic_load_explicit(&s->cooldown_until_ns,
                                       memory_order_relaxed) > now;
    int advised =
        atomic_load_explicit(&s->advised_until_ns, memory_order_relaxed) > now;
    if (advised) c->est_ttft_ms += rc_cfg->advised_penalty_ms;
    int probe = 0;
    /* Fast paths first: most replicas serve any model, most breakers are
     * closed. */
    int ok = c->eligible && !shed[r->pool] && !cooling &&
             !(advised && long_request) &&
             (r->models_len == 0 || spi__replica_serves(r, v->model, v->model_len)) &&
             (atomic_load_explicit(&s->breaker, memory_order_relaxed) ==
                  SPI_BREAKER_CLOSED ||
              spi__breaker_allows(s, now, &probe));
    c->eligible = ok && !probe;
    c->probe = ok && probe;
  }

  spi_route_context x;
  memset(&x, 0, sizeof x);
  x.struct_size = sizeof x;
  x.candidate_size = sizeof(spi_candidate);
  x.req = v;
  x.cls = &cls;
  x.candidates = req->cands;
  x.n_candidates = nrep;
  x.total_blocks = (uint32_t)nblocks;
  x.max_fallbacks = (uint32_t)rc_cfg->max_fallbacks;
  for (int p = 0; p < 4; p++) {
    x.pressure[p] = level[p];
    x.shed[p] = shed[p];
  }
  x.now_ns = now;

  spi_policy_choice ch;
  const spi_slot *sl = &snap->slot[SPI_MODULE_POLICY];
  rc = run_policy(sl->mod, sl->inst, &x, &ch);
  if (rc != SPI_OK && sl->mod != sl->builtin &&
      sl->mod->on_failure == SPI_ON_FAILURE_FALLBACK)
    rc = run_policy(sl->builtin, sl->builtin_inst, &x, &ch);
  if (rc != SPI_OK)
    return spi__req_fail(req, SPI_EMODULE,
                         "policy module \"%s\" failed or chose an ineligible "
                         "replica",
                         sl->mod->name);

  /* Shadow mode: the other policy's answer, recorded only. */
  if (snap->shadow.mod) {
    spi_policy_choice sh;
    if (run_policy(snap->shadow.mod, snap->shadow.inst, &x, &sh) == SPI_OK) {
      out->shadow_pool = sh.pool ? sh.pool : -1;
      if (sh.n_order && (sh.pool == SPI_POOL_SPOT || sh.pool == SPI_POOL_ON_DEMAND)) {
        const spi_candidate *c = &req->cands[sh.order[0]];
        copy_id(out->shadow_replica_id, c->id, c->id_len);
        out->shadow_matched_blocks = c->matched_blocks;
      }
    }
  }

  /* A half-open replica takes one probe; losing that race means the next. */
  uint32_t first = 0;
  while ((ch.pool == SPI_POOL_SPOT || ch.pool == SPI_POOL_ON_DEMAND) &&
         first < ch.n_order && req->cands[ch.order[first]].probe) {
    spi_replica_slot *s =
        &e->registry.slots[set->r[ch.order[first]].slot];
    if (spi__breaker_claim_probe(s)) {
      ch.reason_code = SPI_REASON_HALF_OPEN_PROBE;
      break;
    }
    first++;
  }
  if ((ch.pool == SPI_POOL_SPOT || ch.pool == SPI_POOL_ON_DEMAND) &&
      first == ch.n_order) {
    ch.pool = 0;
    ch.reason_code = SPI_REASON_NO_CAPACITY;
    spi__join(ch.reason, sizeof ch.reason, "recovering replica's probe taken",
              NULL, NULL);
  }

  /* The plan at the chosen pool's own pressure. */
  int32_t chosen_pool = ch.pool == SPI_POOL_SPOT ? SPI_POOL_SPOT
                                                 : SPI_POOL_ON_DEMAND;
  if (level[chosen_pool] != worst &&
      (rc = spi__classify_in(req, snap, v, level[chosen_pool], &cls)))
    return rc;
  out->pool = ch.pool;
  out->klass = cls.klass;
  out->replayable = cls.replayable;
  out->model_tier = v->forced_model_tier ? v->forced_model_tier : cls.model_tier;
  if (ch.pool == SPI_POOL_SPOT || ch.pool == SPI_POOL_ON_DEMAND)
    out->model_tier = req->cands[ch.order[first]].model_tier
                          ? req->cands[ch.order[first]].model_tier
                          : SPI_TIER_LARGE;
  out->pressure = level[chosen_pool];
  out->tools_allowed = cls.tools_allowed;
  out->max_output_tokens = cls.max_output_tokens;
  out->reason_code = ch.reason_code;
  spi__join(out->reason, sizeof out->reason, ch.reason, " / ", cls.reason);
  spi_metrics *mx = atomic_load(&e->metrics);
  uint64_t family = out->key.high64;

  if (ch.pool != SPI_POOL_SPOT && ch.pool != SPI_POOL_ON_DEMAND) {
    if (mx) {
      spi__metrics_decision(mx, ch.pool, cls.klass, ch.reason_code, family, 0,
                            (uint32_t)nblocks);
      if (ch.reason_code == SPI_REASON_SHED) spi__metrics_shed(mx, cls.klass);
    }
    if (ch.pool == SPI_POOL_QUEUE) return SPI_OK;
    out->pool = 0;
    return spi__req_fail(req,
                         ch.reason_code == SPI_REASON_SHED ? SPI_ESHED
                                                           : SPI_ENOCAPACITY,
                         "%s", out->reason);
  }

  /* Serve: open a ticket, count it on the replica, record the placement. */
  const spi_candidate *c = &req->cands[ch.order[first]];
  const spi_replica_ident *r = &set->r[ch.order[first]];
  spi_replica_slot *s = &e->registry.slots[r->slot];
  spi_ticket_table *tt = atomic_load(&e->tickets);
  spi_ticket *k = tt ? spi__ticket_take(tt) : NULL;
  if (!k) {
    out->pool = 0;
    return spi__req_fail(req, SPI_EFULL, "route: all %lld tickets are open",
                         (long long)rc_cfg->max_tickets);
  }
  uint32_t gen = atomic_load(&s->gen);
  k->slot = r->slot;
  k->gen = gen;
  k->incarnation = atomic_load(&s->incarnation);
  k->expected_output = expect_out > 0 ? (uint64_t)expect_out
                       : cls.max_output_tokens > 0 ? (uint64_t)cls.max_output_tokens
                                                   : 256;
  k->replay_since_ns = req->iset[SPI_REQ_REPLAY_SINCE_NS]
                           ? req->ival[SPI_REQ_REPLAY_SINCE_NS]
                           : 0;
  k->pool = r->pool;
  k->klass = cls.klass;
  k->model_tier = r->model_tier;
  k->probe = ch.reason_code == SPI_REASON_HALF_OPEN_PROBE;
  k->start_ns = now;
  k->prompt_tokens_est = tokens;
  k->matched_blocks = c->matched_blocks;
  k->total_blocks = (uint32_t)nblocks;
  k->weight = (uint32_t)rc_cfg->class_weight[cls.klass];
  k->n_hashes = nblocks < SPI_TICKET_HASHES ? (uint32_t)nblocks : SPI_TICKET_HASHES;
  if (k->n_hashes)
    memcpy(k->hashes, req->hashes, k->n_hashes * sizeof k->hashes[0]);
  copy_id(k->tenant, v->tenant, v->tenant_len);
  copy_id(k->model, v->model, v->model_len);
  out->ticket = spi__ticket_publish(tt, k);
  atomic_fetch_add(&s->inflight, 1);
  if (ix && nblocks > c->matched_blocks)
    spi__index_insert(ix, req->hashes, c->matched_blocks, (uint32_t)nblocks,
                      r->slot, gen, k->weight, (uint32_t)(now / 1000000000),
                      (uint32_t)rc_cfg->weight_seconds, entry_live, e);
  copy_id(out->replica_id, r->id, r->id_len);
  out->matched_blocks = c->matched_blocks;
  out->est_ttft_ms = c->est_ttft_ms;
  for (uint32_t i = first + 1; i < ch.n_order && out->n_fallbacks < SPI_MAX_FALLBACKS; i++) {
    const spi_candidate *f = &req->cands[ch.order[i]];
    copy_id(out->fallback_ids[out->n_fallbacks++], f->id, f->id_len);
  }
  spi_price price;
  memset(&price, 0, sizeof price);
  price.struct_size = sizeof price;
  if (spi__price_in(req, snap, v, r->pool, &price) == SPI_OK)
    out->est_usd = price.usd;
  if (mx) {
    spi__metrics_decision(mx, ch.pool, cls.klass, ch.reason_code, family,
                          c->matched_blocks, (uint32_t)nblocks);
    spi__metrics_queue_delta(mx, cls.klass, +1);
    if (snap->shadow.mod)
      spi__metrics_shadow(mx,
                          out->shadow_pool == out->pool &&
                              strcmp(out->shadow_replica_id, out->replica_id) == 0,
                          out->shadow_matched_blocks);
  }
  return SPI_OK;
}

int spi_route(spi_request *req, spi_decision *out) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof *out)
    return spi__req_fail(req, SPI_EINVAL, "decision: NULL or struct_size");
  size_t size = out->struct_size;
  memset(out, 0, sizeof *out);
  out->struct_size = size;
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  unsigned pin;
  spi_snapshot *snap = spi__snap_acquire(req->engine, &pin);
  rc = route_pinned(req, snap, &v, out);
  spi__snap_release(req->engine, pin);
  return rc;
}

/* ---------------------------------------------------------------- tickets */

int spi_ticket_first_token(spi_engine *engine, uint64_t ticket) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  spi_ticket_table *tt = atomic_load(&engine->tickets);
  spi_ticket *k = tt ? spi__ticket_lookup(tt, ticket) : NULL;
  if (!k) return spi__engine_fail(engine, SPI_ESTALE, "ticket %llu is not open",
                                  (unsigned long long)ticket);
  int64_t now = spi__engine_now(engine);
  int32_t klass = k->klass;
  int64_t start = k->start_ns;
  long long zero = 0;
  /* Whoever moves first_token_ns off 0 (this, or finish with its sentinel)
   * takes the ticket out of the queue-depth gauge, exactly once; the id
   * re-check makes sure the fields read belonged to this ticket. */
  if (atomic_compare_exchange_strong(&k->first_token_ns, &zero, now > 0 ? now : 1) &&
      atomic_load(&k->id) == ticket) {
    spi_metrics *mx = atomic_load(&engine->metrics);
    if (mx) {
      spi__metrics_ttft(mx, klass, (double)(now - start) / 1e6);
      spi__metrics_queue_delta(mx, klass, -1);
    }
  }
  return SPI_OK;
}

int spi_ticket_progress(spi_engine *engine, uint64_t ticket,
                        uint64_t tokens_streamed) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  spi_ticket_table *tt = atomic_load(&engine->tickets);
  spi_ticket *k = tt ? spi__ticket_lookup(tt, ticket) : NULL;
  if (!k) return spi__engine_fail(engine, SPI_ESTALE, "ticket %llu is not open",
                                  (unsigned long long)ticket);
  unsigned long long cur = atomic_load(&k->tokens_streamed);
  while (tokens_streamed > cur &&
         !atomic_compare_exchange_weak(&k->tokens_streamed, &cur,
                                       tokens_streamed)) {
  }
  if (tokens_streamed < cur)
    return spi__engine_fail(engine, SPI_ERANGE,
                            "ticket %llu: progress %llu is below %llu",
                            (unsigned long long)ticket,
                            (unsigned long long)tokens_streamed,
                            (unsigned long long)cur);
  return SPI_OK;
}

static int result_ok(const spi_ticket_result *r) {
  return r->status >= SPI_TICKET_OK && r->status <= SPI_TICKET_INTERRUPTED &&
         isfinite(r->ttft_ms) && r->ttft_ms >= 0 && isfinite(r->duration_ms) &&
         r->duration_ms >= 0 &&
         (r->prompt_tokens == 0 || r->cached_tokens <= r->prompt_tokens);
}

/* Price finished work with the engine's cost model: actual tokens, cached
 * prompt tokens not prefilled again. */
static void price_finished(const spi_snapshot *s, const spi_ticket *k,
                           const spi_ticket_result *res, double *gpu_s,
                           double *usd) {
  spi_request_view v;
  memset(&v, 0, sizeof v);
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
  memset(&p, 0, sizeof p);
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
  spi_ticket_table *tt = atomic_load(&engine->tickets);
  spi_ticket *k = tt ? spi__ticket_lookup(tt, ticket) : NULL;
  if (!k || !spi__ticket_claim(tt, k, ticket))
    return spi__engine_fail(engine, SPI_ESTALE,
                            "ticket %llu is not open (finished twice?)",
                            (unsigned long long)ticket);
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(engine, &pin);
  int64_t now = spi__engine_now(engine);
  spi_replica_slot *slot = &engine->registry.slots[k->slot];
  /* Stale only if the replica itself went away: a drain or a notice changes
   * gen (its index entries die) but its tickets still count on it. */
  int stale = atomic_load(&slot->state) == 0 ||
              atomic_load(&slot->incarnation) != k->incarnation;
  int ok = result->status == SPI_TICKET_OK;
  spi_metrics *mx = atomic_load(&engine->metrics);
  long long zero = 0;
  int no_first_token =
      atomic_compare_exchange_strong(&k->first_token_ns, &zero, (int64_t)-1);
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
    if (result->status == SPI_TICKET_CANCELLED) {
      /* A cancelled probe says nothing about the replica: let another try. */
      if (k->probe) spi__breaker_release_probe(slot);
    } else if (spi__breaker_record(slot, result->status != SPI_TICKET_ERROR,
                                   k->probe, now, &s->router) &&
               mx) {
      spi__metrics_breaker_open(mx);
    }
    spi_prefix_index *ix = atomic_load(&engine->index);
    if (ok && ix && k->n_hashes && atomic_load(&slot->gen) == k->gen)
      spi__index_insert(ix, k->hashes, 0, k->n_hashes, k->slot, k->gen,
                        k->weight, (uint32_t)(now / 1000000000),
                        (uint32_t)s->router.weight_seconds, entry_live, engine);
  }
  double gpu_s, usd;
  price_finished(s, k, result, &gpu_s, &usd);
  spi_ledger *lg = atomic_load(&engine->ledger);
  if (lg)
    spi__ledger_add(lg, k->tenant, k->model, k->pool, k->klass, ok,
                    result->prompt_tokens ? result->prompt_tokens
                                          : k->prompt_tokens_est,
                    result->output_tokens, result->cached_tokens, gpu_s, usd);
  /* Interruptions: the work cut off is wasted spot work, and a replay's
   * latency and on-demand time are what recovering it cost. */
  spi_ledger_extra x;
  memset(&x, 0, sizeof x);
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
  spi__snap_release(engine, pin);
  spi__ticket_release(tt, k);
  if (stale)
    return spi__engine_fail(engine, SPI_ESTALE,
                            "ticket %llu: its replica was removed; closed and "
                            "priced",
                            (unsigned long long)ticket);
  return SPI_OK;
}
