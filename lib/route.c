/*
 * route.c - spi_route(): the routing path that ties the classifier, the key
 * builder, the prefix index, the replica registry, the breakers and the
 * policy module together (the reports that flow back are in
 * ticket_report.c).
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

#include <xxhash.h>

#include "replica_pass.h"

/* An index entry is live while its replica is ACTIVE with the same gen. */
int spi__entry_live(void *ctx, uint32_t slot, uint32_t gen) {
  const spi_engine *e = ctx;
  if (slot >= SPI_REPLICA_SLOTS) return 0;
  const spi_replica_slot *s = &e->registry.slots[slot];
  return atomic_load_explicit(&s->state, memory_order_relaxed) ==
             SPI_REPLICA_ACTIVE &&
         (atomic_load_explicit(&s->gen, memory_order_relaxed) &
          SPI_INDEX_GEN_MASK) == (gen & SPI_INDEX_GEN_MASK);
}

static int grow_scratch(spi_request *r, size_t hashes, size_t cands) {
  const spi_mem *m = &r->engine->mem;
  if (hashes > r->hashcap) {
    uint64_t *p = spi__calloc(m, hashes, sizeof *p);
    if (!p) return SPI_ENOMEM;
    if (r->hashes != r->hash_room) spi__free(m, r->hashes);
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

/* (uint64_t)ceil(x), without ceil's sequence where x is in [0, 2^52):
 * there the conversion truncates exactly, so one more where it dropped a
 * fraction is the ceiling. */
static inline uint64_t ceil_u64(double x) {
  if (x >= 0 && x < 4503599627370496.0) {
    int64_t w = (int64_t)x; /* signed: one instruction each way */
    return (uint64_t)((double)w < x ? w + 1 : w);
  }
  return (uint64_t)ceil(x);
}

/* (double)t: through a signed conversion (one instruction) when t fits
 * one, the same value; prompt token counts always do. */
static inline double u64_double(uint64_t t) {
  return t <= INT64_MAX ? (double)(int64_t)t : (double)t;
}

static uint64_t prompt_tokens(const spi_request_view *v, double bytes_per_token) {
  if (v->prompt_tokens_set) return (uint64_t)v->prompt_tokens;
  if (v->token_count) return v->token_count;
  return ceil_u64((double)v->prompt_len / bytes_per_token);
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

/* A module's choice starts cleared. The built-in (builtin set) writes its
 * reason on every path, from the start, and reads none of the choice
 * before it writes it: only the fields before the reason are cleared. */
static int run_policy(const spi_modentry *m, void *inst,
                      const spi_route_context *x, spi_policy_choice *out,
                      int builtin) {
  if (builtin)
    memset(out, 0, offsetof(spi_policy_choice, reason));
  else
    spi__zero(out, sizeof *out);
  out->struct_size = sizeof *out;
  int rc = m->m.policy.choose(m->state, inst, x, out);
  out->reason[sizeof out->reason - 1] = '\0';
  if (rc == SPI_OK && !choice_ok(out, x)) rc = SPI_EMODULE;
  return rc;
}

/* An id (a replica's, a tenant's) of at most SPI_ID_MAX - 1 bytes kept,
 * and its NUL (spi__copy_small: no `rep movsb` for a few bytes). */
static inline void copy_id(char dst[SPI_ID_MAX], const char *src, size_t len) {
  if (len >= SPI_ID_MAX) len = SPI_ID_MAX - 1;
  spi__copy_small(dst, src, len);
  dst[len] = '\0';
}

/* A ticket's tenant or model, as the ledger keys its rows and the cost
 * model reads it at the finish: the name itself when it fits and has no
 * control byte, else its first SPI_NAME_KEPT bytes (cut before a UTF-8
 * character, control bytes as '?'), '~' and 16 hex digits of XXH3-64 of
 * the whole name. Cut alone, names sharing their first 63 bytes, or
 * "acme" and "acme\0x", shared one row. A name that already ends as that
 * form does ('~' and 16 lowercase hex digits) is hashed too, so no name
 * can spell another's row. */
#define SPI_NAME_KEPT (SPI_ID_MAX - 1 - 1 - 16)

/* Whether the name ends as copy_name's hashed form does. */
static int ends_hashed(const char *s, size_t len) {
  if (len < 17 || s[len - 17] != '~') return 0;
  for (size_t i = len - 16; i < len; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return 1;
}

/* Whether dst[0..len) (len < SPI_ID_MAX) holds a control byte (below
 * 0x20, or 0x7f). On a little-endian host eight bytes at a time: a word's
 * bytes below 0x20 and its 0x7f bytes each set their top bit in bad
 * (exactly at the lowest such byte; a borrow can mark only bytes above
 * it), and the bytes at and past len are masked off. The words lie within
 * dst's SPI_ID_MAX bytes. */
static int has_control(const char dst[SPI_ID_MAX], size_t len) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  const uint64_t ones = UINT64_C(0x0101010101010101);
  const uint64_t tops = UINT64_C(0x8080808080808080);
  for (size_t i = 0; i < len; i += 8) {
    uint64_t w, d;
    memcpy(&w, dst + i, sizeof w);
    d = w ^ (0x7f * ones);
    uint64_t bad = (((w - 0x20 * ones) & ~w) | ((d - ones) & ~d)) & tops;
    if (len - i < 8) bad &= (UINT64_C(1) << (8 * (len - i))) - 1;
    if (bad) return 1;
  }
  return 0;
#else
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)dst[i] < 0x20 || dst[i] == 0x7f) return 1;
  return 0;
#endif
}

/* The name's hashed form. Out of line: most names are kept as they are. */
static __attribute__((noinline, cold)) void
copy_name_hashed(char dst[SPI_ID_MAX], const char *src, size_t len) {
  size_t keep = len < SPI_NAME_KEPT ? len : SPI_NAME_KEPT;
  if (keep < len)
    while (keep > 0 && ((unsigned char)src[keep] & 0xC0) == 0x80) keep--;
  for (size_t i = 0; i < keep; i++)
    dst[i] = (unsigned char)src[i] < 0x20 || src[i] == 0x7f ? '?' : src[i];
  snprintf(dst + keep, SPI_ID_MAX - keep, "~%016llx",
           (unsigned long long)XXH3_64bits(src, len));
}

static inline void copy_name(char dst[SPI_ID_MAX], const char *src,
                             size_t len) {
  if (len == 0) { /* no tenant, say: as copy_id would leave it */
    dst[0] = '\0';
    return;
  }
  if (len < SPI_ID_MAX && !ends_hashed(src, len)) {
    copy_id(dst, src, len); /* checked where it was copied to */
    if (!has_control(dst, len)) return;
  }
  copy_name_hashed(dst, src, len);
}

/* What a route has taken that it must give back if it fails: the
 * half-open probe it claimed, and a ticket it took but did not publish. */
typedef struct route_taken {
  spi_engine *e;
  spi_replica_slot *probe;
  uint32_t probe_slot;
  spi_ticket_table *tt;
  spi_ticket *ticket;
} route_taken;

/* The one way out of a route that fails after taking something: give all
 * of it back, so a failed route leaves no trace (a probe kept here would
 * leave its replica half-open for good). Returns rc. */
static int route_unwind(route_taken *t, spi_decision *out, int rc) {
  if (t->ticket) spi__ticket_release(t->tt, t->ticket);
  if (t->probe) {
    spi__breaker_release_probe(t->probe);
    spi__replica_touch(&t->e->registry, t->probe_slot);
  }
  t->ticket = NULL;
  t->probe = NULL;
  out->pool = 0;
  out->ticket = 0;
  return rc;
}

/* Everything one route carries from phase to phase, on the route's stack.
 * Nothing is cleared whole (nor is the scan it points to, about 17 KiB):
 * each phase sets what it hands on. */
typedef struct route_state {
  spi_request *req;
  spi_snapshot *snap;
  spi_request_view *v;
  spi_decision *out;
  spi_engine *e;
  const spi_router_cfg *cfg;
  const spi_replica_set *set;
  spi_prefix_index *ix;
  size_t nrep;
  uint32_t nblocks;
  int compact;        /* the policies read summaries and named candidates */
  uint64_t tokens;    /* prompt tokens, estimated when not given */
  int64_t expect_out; /* expected output tokens; 0 = not said */
  uint64_t costed_out; /* the output the policy costs it with, and so the
                          ticket's expected output (spi__output_estimate) */
  uint64_t capped_out; /* costed_out where the class's cap decided it (the
                          request asked for more, or said nothing) or the
                          request said 0; else 0 */
  route_env *env;
  int32_t level[4];   /* each pool's pressure (enum spi_pressure) */
  int32_t shed[4];    /* the pool sheds this route's class */
  int32_t worst;      /* the higher of the two pools' pressures */
  double mean_served[4]; /* each pool's mean tokens served (usable) */
  double mean_streams[4]; /* ... and mean max_inflight */
  double mean_wait[SPI_SUMMARY_CELLS]; /* each cell's prefill backlog, ms */
  spi_classification *cls;
  const spi_candidate *cands; /* full, named, or the scan's arena */
  size_t ncand;
  spi_policy_choice *ch;
  uint32_t first;     /* the order entry served (past lost probe races) */
  route_taken taken;
  /* Objects whose addresses go to other files live beside this struct,
   * not in it, so the fields above can stay in registers across calls. */
  scan *sc;
  spi_pool_summary *sums;
  spi_candidate *named; /* the compact candidates (ARENA_KEEP of room) */
} route_state;

static int serves(int32_t pool) {
  return pool == SPI_POOL_SPOT || pool == SPI_POOL_ON_DEMAND;
}

/* Phase 1, key: the cache key and the prefix blocks, into the request's
 * warm scratch. The index buckets of the first blocks start loading now,
 * so their cache misses overlap the pass over the replicas. */
static int phase_key(route_state *rs) {
  spi_request *req = rs->req;
  size_t n = 0;
  int rc = spi__keys_in(req, rs->snap, rs->v, &rs->out->key, req->hashes,
                        req->hashcap, &n);
  if (rc == SPI_EBUFSIZE) {
    if (grow_scratch(req, n, 0))
      return spi__req_fail(req, SPI_ENOMEM, "route: out of memory");
    rc = spi__blocks_in(req, rs->snap, rs->v, &rs->out->key, req->hashes,
                        req->hashcap, &n);
  }
  if (rc == SPI_EBUFSIZE) /* a key builder that asked for more than it got */
    return spi__req_fail(req, rc, "route: block hashes: %zu blocks, room "
                         "for %zu", n, req->hashcap);
  if (rc) return rc;
  rs->nblocks = (uint32_t)n;
  rs->out->total_blocks = rs->nblocks;
  if (rs->ix) spi__index_prefetch(rs->ix, req->hashes, rs->nblocks);
  return SPI_OK;
}

/* The replicas the request excludes, found by id in the set this route
 * reads, as a bit per slot in the request's own scratch; NULL when none of
 * them is in the set, so the route is the one a request without exclusions
 * takes. Kept out of line: inlined, it cost the routes that exclude
 * nothing a few instructions of spills. */
static __attribute__((noinline, cold)) const uint64_t *
excl_resolve(spi_request *req, const spi_replica_set *set) {
  int any = 0;
  memset(req->excl_slots, 0, sizeof req->excl_slots);
  for (uint32_t i = 0; i < req->nexcl; i++) {
    const spi_replica_ident *r =
        spi__registry_find(set, req->excl[i], req->excl_len[i]);
    if (!r) continue;
    req->excl_slots[r->slot / 64] |= UINT64_C(1) << (r->slot % 64);
    any = 1;
  }
  return any ? req->excl_slots : NULL;
}

/* What the pass needs to evaluate a replica, fixed for the route. */
static void env_init(route_state *rs) {
  const spi_router_cfg *c = rs->cfg;
  const spi_request_view *v = rs->v;
  route_env *x = rs->env;
  x->e = rs->e;
  x->cfg = c;
  x->cfg_seq = rs->snap->seq;
  x->v = v;
  x->now = spi__engine_now(rs->e);
  x->thread_no = spi__thread_no();
  x->max_age = c->load_max_age_ms * 1000000;
  rs->tokens = prompt_tokens(v, c->bytes_per_token);
  x->cold_tok = u64_double(rs->tokens);
  x->warm_tok = x->cold_tok;
  x->default_rate = c->prefill_tokens_per_s;
  x->default_ms_tok = 1000.0 / x->default_rate;
  x->rkey = rs->nblocks ? rs->req->hashes[0] : rs->out->key.low64;
  rs->expect_out = v->expected_output_tokens_set ? v->expected_output_tokens
                   : v->max_output_tokens_set    ? v->max_output_tokens
                                                 : 0;
  x->long_request = rs->expect_out > c->advised_max_output_tokens;
  x->excl = NULL; /* the pass sets it (run_pass) */
}

/* The pass over the replicas, with the replicas the request excludes
 * (those the set holds) as x->excl: the pool index sets them aside for
 * this route alone (spi__pix_sync). Every other route tests one thing
 * more, the number of ids it excludes. */
static inline __attribute__((always_inline)) void run_pass(route_state *rs,
                                                        pool_sums *sums) {
  route_env *x = rs->env;
  spi_candidate *full = rs->compact ? NULL : rs->req->cands;
  if (__builtin_expect(rs->req->nexcl != 0, 0) && !x->excl)
    x->excl = excl_resolve(rs->req, rs->set);
  spi__pass_run(rs->sc, x, rs->set, rs->nrep, full, sums);
}

/* Phase 2, replicas: one pass reads every replica's slot (its load and
 * eligibility), the pools' mean KV usage, and the per pool and tier
 * summaries. A policy that reads every candidate gets them all; when the
 * policy and the shadow read only summaries, only the replicas those name
 * are made candidates. */
static int phase_replicas(route_state *rs, pool_sums *sums) {
  const spi_modentry *pol = rs->snap->slot[SPI_MODULE_POLICY].mod;
  const spi_modentry *sh = rs->snap->shadow.mod;
  rs->compact = (pol->m.policy.flags & SPI_POLICY_SUMMARIES_ONLY) &&
                (!sh || (sh->m.policy.flags & SPI_POLICY_SUMMARIES_ONLY));
  if (!rs->compact && rs->req->candcap < rs->nrep &&
      grow_scratch(rs->req, 0, rs->nrep))
    return spi__req_fail(rs->req, SPI_ENOMEM, "route: out of memory");
  env_init(rs);
  run_pass(rs, sums);
  spi__pass_means(rs->sc, sums, rs->mean_served, rs->mean_streams,
                  rs->mean_wait);
  return SPI_OK;
}

/* The pass read a machine with rebalance advice as unusable for a request
 * that asks for more output than such a machine takes; the class's cap,
 * known only now, may bound it below that (spi__output_bound): then the
 * pass is made again with those machines usable. Its KV sums are the
 * first pass's (they do not depend on usability). Rare: a long ask, a
 * tight cap. */
static void pass_for_capped_output(route_state *rs, pool_sums *sums) {
  route_env *x = rs->env;
  if (!x->long_request ||
      spi__output_bound(rs->v, rs->cls) > rs->cfg->advised_max_output_tokens)
    return;
  x->long_request = 0;
  run_pass(rs, sums);
  spi__pass_means(rs->sc, sums, rs->mean_served, rs->mean_streams,
                  rs->mean_wait);
}

/* Phase 3, pressure and breakers: each pool's KV breaker steps on the
 * pool's mean usage, the request is classified (at the worse pool's
 * pressure), and a pool whose breaker sheds that class has no usable
 * replica left. */
static int phase_pressure(route_state *rs, pool_sums *sums) {
  spi_engine *e = rs->e;
  int32_t kvl[4]; /* read at the two pools only */
  rs->level[0] = rs->level[3] = 0;
#pragma GCC unroll 2
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++) {
    double press = spi__pass_kv_mean(sums, p);
    unsigned old = atomic_load(&e->kv_level[p]);
    int32_t lv;
    int nl = spi__kv_breaker_step_level((int)old, press, rs->cfg, &lv);
    rs->level[p] = lv;
    if ((unsigned)nl != old &&
        atomic_compare_exchange_strong(&e->kv_level[p], &old, (unsigned)nl) &&
        nl > (int)old && atomic_load(&e->metrics))
      spi__metrics_breaker_open(atomic_load(&e->metrics));
    kvl[p] = nl;
  }
  rs->worst = rs->level[SPI_POOL_SPOT] > rs->level[SPI_POOL_ON_DEMAND]
                  ? rs->level[SPI_POOL_SPOT]
                  : rs->level[SPI_POOL_ON_DEMAND];
  rs->cls->struct_size = sizeof *rs->cls; /* the dispatch clears the rest */
  int rc = spi__classify_in(rs->req, rs->snap, rs->v, rs->worst, rs->cls);
  if (rc) return rc;
  pass_for_capped_output(rs, sums);
  int32_t klass = rs->cls->klass;
  rs->shed[0] = rs->shed[3] = 0;
#pragma GCC unroll 2
  for (int p = SPI_POOL_SPOT; p <= SPI_POOL_ON_DEMAND; p++) {
    rs->shed[p] = (kvl[p] >= 1 && klass == SPI_CLASS_BRONZE) ||
                  (kvl[p] >= 2 && klass != SPI_CLASS_GOLD);
    if (rs->shed[p])
      spi__pass_shed(rs->sc, p, rs->compact ? NULL : rs->req->cands, rs->nrep);
  }
  return SPI_OK;
}

/* Phase 4, candidates: the replicas that likely hold the prefix (their
 * buckets were prefetched in phase 1) get their warm TTFT and their place
 * in the summaries; then the candidates and summaries the policy reads. */
static void phase_candidates(route_state *rs) {
  spi_candidate *full = rs->compact ? NULL : rs->req->cands;
  spi__pass_prefix(rs->sc, rs->env, rs->set, rs->nrep, rs->shed, full,
                   rs->ix, rs->req->hashes, rs->nblocks);
  rs->cands = full;
  rs->ncand = spi__pass_candidates(rs->sc, rs->set, rs->nrep,
                                   rs->compact ? rs->named : NULL, rs->sums,
                                   &rs->cands);
}

/* Shadow mode: the other policy's answer, recorded only. */
static void run_shadow(route_state *rs, const spi_route_context *x) {
  spi_policy_choice sh;
  spi_decision *out = rs->out;
  if (run_policy(rs->snap->shadow.mod, rs->snap->shadow.inst, x, &sh, 0) !=
      SPI_OK)
    return;
  out->shadow_pool = sh.pool ? sh.pool : -1;
  if (sh.n_order && serves(sh.pool)) {
    const spi_candidate *c = &rs->cands[sh.order[0]];
    copy_id(out->shadow_replica_id, c->id, c->id_len);
    out->shadow_matched_blocks = c->matched_blocks;
  }
}

/* Phase 5, policy: the policy module chooses from the candidates and
 * summaries (the built-in answers if a module that may fall back fails);
 * its choice is checked before it is used. */
static int phase_policy(route_state *rs) {
  const spi_slot *sl = &rs->snap->slot[SPI_MODULE_POLICY];
  /* Every field is set below (there is no padding), so x is not cleared
   * first. A field added to the context must be set here. */
  spi_route_context x;
  _Static_assert(sizeof x == 25 * 8 + 8 * SPI_SUMMARY_CELLS,
                 "every field of the context is set");
  x.struct_size = sizeof x;
  x.candidate_size = sizeof(spi_candidate);
  x.req = rs->v;
  x.cls = rs->cls;
  /* The plan at the chosen pool's pressure (plan_at) may cap the output
   * differently: the ticket counts the output the policy costed. */
  rs->costed_out = spi__output_estimate(rs->v, rs->cls);
  int64_t bound = spi__output_bound(rs->v, rs->cls);
  /* A request that says it expects no output is costed as one that says
   * nothing (spi__output_estimate): priced so too. */
  rs->capped_out = bound == 0                           ? rs->costed_out
                   : bound > 0 && bound != rs->expect_out ? (uint64_t)bound
                                                          : 0;
  x.candidates = rs->cands;
  x.n_candidates = rs->ncand;
  x.total_blocks = rs->nblocks;
  x.max_fallbacks = (uint32_t)rs->cfg->max_fallbacks;
  for (int p = 0; p < 4; p++) {
    x.pressure[p] = rs->level[p];
    x.shed[p] = rs->shed[p];
  }
  x.now_ns = rs->env->now;
  x.summaries = rs->sums;
  x.summary_size = sizeof(spi_pool_summary);
  x.n_summaries = SPI_SUMMARY_CELLS;
  for (int p = 0; p < 4; p++) x.mean_served_tokens[p] = rs->mean_served[p];
  x.prompt_tokens = u64_double(rs->tokens);
  for (int p = 0; p < 4; p++) x.mean_max_inflight[p] = rs->mean_streams[p];
  for (int k = 0; k < SPI_SUMMARY_CELLS; k++)
    x.mean_prefill_wait_ms[k] = rs->mean_wait[k];
  x.spot_seen_ns = atomic_load_explicit(&rs->e->registry.spot_seen_ns,
                                        memory_order_relaxed);
  int rc = run_policy(sl->mod, sl->inst, &x, rs->ch, sl->mod == sl->builtin);
  if (rc != SPI_OK && sl->mod != sl->builtin &&
      sl->mod->on_failure == SPI_ON_FAILURE_FALLBACK)
    rc = run_policy(sl->builtin, sl->builtin_inst, &x, rs->ch, 0);
  if (rc != SPI_OK)
    return spi__req_fail(rs->req, SPI_EMODULE,
                         "policy module \"%s\" failed or chose an ineligible "
                         "replica",
                         sl->mod->name);
  if (rs->snap->shadow.mod) run_shadow(rs, &x);
  return SPI_OK;
}

/* The replica of order entry i of the choice. */
static const spi_replica_ident *chosen(const route_state *rs, uint32_t i) {
  return &rs->set->r[spi__pass_position(rs->sc, rs->compact, rs->ch->order[i])];
}

/* A half-open replica takes one probe; losing that race means the next in
 * the order. A claimed probe is recorded in rs->taken. */
static void claim_probe(route_state *rs) {
  spi_policy_choice *ch = rs->ch;
  rs->first = 0;
  if (!serves(ch->pool)) return;
  while (rs->first < ch->n_order && rs->cands[ch->order[rs->first]].probe) {
    spi_replica_slot *s = &rs->e->registry.slots[chosen(rs, rs->first)->slot];
    if (spi__breaker_claim_probe(s)) {
      ch->reason_code = SPI_REASON_HALF_OPEN_PROBE;
      rs->taken.probe = s;
      rs->taken.probe_slot = chosen(rs, rs->first)->slot;
      spi__replica_touch(&rs->e->registry, rs->taken.probe_slot);
      return;
    }
    rs->first++;
  }
  if (rs->first == ch->n_order) {
    ch->pool = 0;
    ch->reason_code = SPI_REASON_NO_CAPACITY;
    spi__join(ch->reason, sizeof ch->reason, "recovering replica's probe taken",
              NULL, NULL);
  }
}

/* The classification at the chosen pool's own pressure. The built-in
 * classifier and a module with classify_levels gave every pressure's plan
 * with the class: neither is asked again. A module with classify only may
 * answer differently at each pressure, so it is asked again when the
 * pressures differ (dispatch.c). */
static int plan_at(route_state *rs, int32_t pressure) {
  if (pressure == rs->worst) return SPI_OK;
  return spi__classify_plan_at(rs->req, rs->snap, rs->v, pressure, rs->cls);
}

/* The decision's fields that every outcome has. */
static void decision_fill(route_state *rs, int32_t pressure) {
  spi_decision *out = rs->out;
  const spi_classification *cls = rs->cls;
  out->pool = rs->ch->pool;
  out->klass = cls->klass;
  out->replayable = cls->replayable;
  out->model_tier = rs->v->forced_model_tier ? rs->v->forced_model_tier
                                             : cls->model_tier;
  if (serves(rs->ch->pool)) {
    int32_t t = rs->cands[rs->ch->order[rs->first]].model_tier;
    out->model_tier = t ? t : SPI_TIER_LARGE;
  }
  out->pressure = pressure;
  out->tools_allowed = cls->tools_allowed;
  out->max_output_tokens = cls->max_output_tokens;
  out->reason_code = rs->ch->reason_code;
  spi__join(out->reason, sizeof out->reason, rs->ch->reason, " / ", cls->reason);
}

/* Queued, shed or no capacity: counted, and an error unless queued. */
static int refuse(route_state *rs) {
  spi_metrics *mx = atomic_load(&rs->e->metrics);
  const spi_policy_choice *ch = rs->ch;
  if (mx) {
    spi__metrics_decision(mx, ch->pool, rs->cls->klass, ch->reason_code,
                          rs->out->key.high64, 0, rs->nblocks);
    if (ch->reason_code == SPI_REASON_SHED) spi__metrics_shed(mx, rs->cls->klass);
  }
  if (ch->pool == SPI_POOL_QUEUE) return SPI_OK;
  rs->out->pool = 0;
  return spi__req_fail(rs->req,
                       ch->reason_code == SPI_REASON_SHED ? SPI_ESHED
                                                          : SPI_ENOCAPACITY,
                       "%s", rs->out->reason);
}

/* A taken ticket, filled for the replica at slot r (not yet published). */
static void ticket_fill(route_state *rs, spi_ticket *k,
                        const spi_replica_ident *r, spi_replica_slot *s) {
  const spi_request_view *v = rs->v;
  const spi_classification *cls = rs->cls;
  spi_request *req = rs->req;
  k->slot = r->slot;
  k->gen = atomic_load(&s->gen);
  k->incarnation = atomic_load(&s->incarnation);
  k->expected_output = rs->costed_out;
  k->replay_since_ns = req->iset[SPI_REQ_REPLAY_SINCE_NS]
                           ? req->ival[SPI_REQ_REPLAY_SINCE_NS]
                           : 0;
  k->pool = r->pool;
  k->klass = cls->klass;
  k->model_tier = r->model_tier;
  k->probe = rs->ch->reason_code == SPI_REASON_HALF_OPEN_PROBE;
  k->start_ns = rs->env->now;
  k->prompt_tokens_est = rs->tokens;
  k->weight = (uint32_t)rs->cfg->class_weight[cls->klass];
  k->n_hashes = rs->nblocks < SPI_TICKET_HASHES ? rs->nblocks : SPI_TICKET_HASHES;
  if (k->n_hashes == 1) /* a prompt of one block: no call for 8 bytes */
    k->hashes[0] = req->hashes[0];
  else if (k->n_hashes)
    spi__copy(k->hashes, req->hashes, k->n_hashes * sizeof k->hashes[0]);
  copy_name(k->tenant, v->tenant, v->tenant_len);
  copy_name(k->model, v->model, v->model_len);
}

/* What the decision says of a served request besides the replica, and its
 * counts. Nothing here can fail. */
static void serve_record(route_state *rs, const spi_replica_ident *r,
                         const spi_candidate *c) {
  spi_decision *out = rs->out;
  const spi_policy_choice *ch = rs->ch;
  copy_id(out->replica_id, r->id, r->id_len);
  out->matched_blocks = c->matched_blocks;
  out->est_ttft_ms = c->est_ttft_ms;
  uint32_t nf = 0; /* out->n_fallbacks, counted in a register */
  for (uint32_t i = rs->first + 1; i < ch->n_order && nf < SPI_MAX_FALLBACKS;
       i++, nf++) {
    const spi_candidate *f = &rs->cands[ch->order[i]];
    copy_id(out->fallback_ids[nf], f->id, f->id_len);
  }
  out->n_fallbacks = nf;
  spi_price price; /* cleared by the dispatch but for its struct_size */
  price.struct_size = sizeof price;
  /* Priced at the output the ticket counts wherever the class's cap
   * decides it (capped_out): a request that asks for more than the cap,
   * which the gateway applies, cannot generate it, and one that asks for
   * nothing counts the cap. Elsewhere the cost model reads the request as
   * it is (its own default when neither the request nor a cap names an
   * output). */
  const spi_request_view *pv = rs->v;
  spi_request_view capped;
  if (rs->capped_out) {
    capped = *rs->v;
    capped.expected_output_tokens = (int64_t)rs->capped_out;
    capped.expected_output_tokens_set = 1;
    pv = &capped;
  }
  if (spi__price_in(rs->req, rs->snap, pv, r->pool, &price) == SPI_OK)
    out->est_usd = price.usd;
  spi_metrics *mx = atomic_load(&rs->e->metrics);
  if (!mx) return;
  spi__metrics_routed_for(mx, rs->env->thread_no, ch->pool, rs->cls->klass,
                          ch->reason_code, out->key.high64, c->matched_blocks,
                          rs->nblocks);
  if (rs->snap->shadow.mod)
    spi__metrics_shadow(mx,
                        out->shadow_pool == out->pool &&
                            strcmp(out->shadow_replica_id, out->replica_id) == 0,
                        out->shadow_matched_blocks);
}

/* The placement in the prefix index: the blocks the replica did not hold,
 * and, when it held the deepest match and the prompt goes on past it, the
 * mark on that block saying so (a later request matching only as deep
 * there is then a branch of a shared prefix, not the next turn). */
static void index_served(route_state *rs, const spi_replica_ident *r,
                         const spi_candidate *c, const spi_ticket *k) {
  uint32_t held = c->matched_blocks;
  if (!rs->ix || rs->nblocks <= held) return;
  if (held) spi__index_mark_continued(rs->ix, rs->req->hashes[held - 1],
                                      r->slot, k->gen);
  spi__index_insert(rs->ix, rs->req->hashes, held, rs->nblocks, r->slot,
                    k->gen, k->weight, (uint32_t)(rs->env->now / 1000000000),
                    (uint32_t)rs->cfg->weight_seconds, spi__entry_live, rs->e);
}

/* What a route returns (route_pinned) when its chosen replica left service
 * after the pass read it: spi_route routes again. Not an SPI_ code. */
#define ROUTE_AGAIN 1

/* The chosen replica left service before the ticket opened: give back
 * what the route took, to route again. Out of line: rare. */
static __attribute__((noinline, cold)) int left_service(route_state *rs) {
  return route_unwind(&rs->taken, rs->out, ROUTE_AGAIN);
}

/* The replica still takes the request: its state is read again at the last
 * moment, in the window a notice waits for (routing.h,
 * spi__slot_open_begin), so either the ticket is published before the
 * notice's plan scan, which plans it, or the route sees the new state and
 * gives back what it took to route again. On success the window is open:
 * serve closes it once the ticket is published. */
static inline int still_active(route_state *rs, spi_rcu_line *own,
                               spi_replica_slot *s, uint32_t slot) {
  if (__builtin_expect(spi__slot_open_begin(own, s, slot), 1)) return SPI_OK;
  return left_service(rs);
}

/* Serve: open a ticket, count it on the replica, record the placement in
 * the prefix index. The ticket is the last thing that can fail. */
static int serve(route_state *rs) {
  const spi_candidate *c = &rs->cands[rs->ch->order[rs->first]];
  const spi_replica_ident *r = chosen(rs, rs->first);
  spi_replica_slot *s = &rs->e->registry.slots[r->slot];
  spi_rcu_line *own = spi__rcu_line(&rs->e->rcu, rs->env->thread_no);
  spi_ticket_table *tt = atomic_load(&rs->e->tickets);
  spi_ticket *k = spi__ticket_take_for(tt, rs->env->thread_no);
  if (!k) {
    /* A table configure replaced (sealed before it was swapped out, so it
     * hands out nothing): take from the one in force. */
    spi_ticket_table *now = atomic_load(&rs->e->tickets);
    if (now != tt) k = spi__ticket_take_for(tt = now, rs->env->thread_no);
  }
  if (!k)
    return route_unwind(&rs->taken, rs->out,
                        spi__req_fail(rs->req, SPI_EFULL,
                                      "route: all %zu tickets are open",
                                      spi__tickets_capacity(tt)));
  rs->taken.tt = tt;
  rs->taken.ticket = k;
  ticket_fill(rs, k, r, s);
  if (still_active(rs, own, s, r->slot)) return ROUTE_AGAIN;
  /* The cost model's counters: the prefill this ticket queues there (the
   * part of the prompt the replica does not hold) and the work it was
   * sent (the prompt and the expected output); the slowdown at open lets
   * its first token teach the rate. */
  double uncached = c->matched_blocks ? rs->env->warm_tok : rs->env->cold_tok;
  double tokens = u64_double(rs->tokens);
  uint64_t cached =
      rs->tokens - ceil_u64(uncached < tokens ? uncached : tokens);
  /* A first token teaches the rate only if the request went straight to
   * prefill: behind a full batch its TTFT is the wait for a slot. */
  int straight = c->fresh && c->waiting == 0 &&
                 c->running + 1 <= (double)r->max_inflight &&
                 c->inflight < r->max_inflight;
  spi__prefill_open(s, k, rs->tokens, cached,
                    straight ? 1.0 + c->running * r->inv_max_inflight : 0.0);
  rs->out->ticket = spi__ticket_publish(tt, k);
  spi__slot_open_end(own, s);
  rs->taken.ticket = NULL; /* published: the caller's to finish */
  rs->taken.probe = NULL;  /* ... and the probe goes with it */
  atomic_fetch_add(&s->inflight, 1);
  spi__replica_touch(&rs->e->registry, r->slot);
  index_served(rs, r, c, k);
  serve_record(rs, r, c);
  return SPI_OK;
}

/* Phase 6, commit: the probe, the plan at the chosen pool's pressure, the
 * decision, and the ticket when the request is served. From the probe
 * claim on, a failure leaves through route_unwind. */
static int phase_commit(route_state *rs) {
  claim_probe(rs);
  int32_t pool = rs->ch->pool == SPI_POOL_SPOT ? SPI_POOL_SPOT
                                              : SPI_POOL_ON_DEMAND;
  int32_t pressure = rs->level[pool];
  int rc = plan_at(rs, pressure);
  if (rc) return route_unwind(&rs->taken, rs->out, rc);
  decision_fill(rs, pressure);
  if (!serves(rs->ch->pool)) return refuse(rs);
  return serve(rs);
}

/* Route with a pinned snapshot: the phases in order. A phase that fails
 * has taken nothing, or has given it back. */
static int route_pinned(spi_request *req, spi_snapshot *snap,
                        spi_request_view *v, spi_decision *out) {
  route_state rs;
  route_env env;
  spi_classification cls;
  spi_policy_choice ch;
  spi_pool_summary sums[SPI_SUMMARY_CELLS];
  scan sc;
  /* Small, so on the stack and in cache on every route, never allocated. */
  spi_candidate named[ARENA_KEEP];
  rs.env = &env;
  rs.cls = &cls;
  rs.ch = &ch;
  rs.sums = sums;
  rs.sc = &sc;
  rs.named = named;
  rs.req = req;
  rs.snap = snap;
  rs.v = v;
  rs.out = out;
  rs.e = req->engine;
  rs.cfg = &snap->router;
  rs.set = atomic_load(&rs.e->registry.set);
  rs.ix = atomic_load(&rs.e->index);
  rs.nrep = rs.set ? rs.set->n : 0;
  rs.taken.e = rs.e;
  rs.taken.probe = NULL;
  rs.taken.tt = NULL;
  rs.taken.ticket = NULL;
  pool_sums sums_of_pools; /* the pass sets every field */
  int rc = phase_key(&rs);
  if (rc == SPI_OK) rc = phase_replicas(&rs, &sums_of_pools);
  if (rc == SPI_OK) rc = phase_pressure(&rs, &sums_of_pools);
  if (rc != SPI_OK) return rc;
  phase_candidates(&rs);
  if ((rc = phase_policy(&rs))) return rc;
  return phase_commit(&rs);
}

/* Route again, after a route whose chosen replica left service between
 * the pass and its ticket (ROUTE_AGAIN): each pass reads the replicas as
 * they are then, so one that left is not chosen again. Bounded: a fleet
 * whose replicas keep leaving under every route gets no capacity, not a
 * route that never ends. Out of line: rare. */
#define ROUTE_TRIES 4
static __attribute__((noinline, cold)) int
route_again(spi_request *req, spi_snapshot *snap, spi_request_view *v,
            spi_decision *out) {
  size_t size = out->struct_size;
  for (int i = 1; i < ROUTE_TRIES; i++) {
    spi__zero(out, sizeof *out); /* the next route writes it anew */
    out->struct_size = size;
    int rc = route_pinned(req, snap, v, out);
    if (rc != ROUTE_AGAIN) return rc;
  }
  /* The last route's class and key stay, as for any refusal. */
  out->reason_code = SPI_REASON_NO_CAPACITY;
  spi__join(out->reason, sizeof out->reason,
            "chosen replica left service while routing", NULL, NULL);
  return spi__req_fail(req, SPI_ENOCAPACITY,
                       "route: the chosen replica left service before its "
                       "ticket opened, %d times",
                       ROUTE_TRIES);
}

int spi_route(spi_request *req, spi_decision *out) {
  if (!spi__request_ok_inline(req)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof *out)
    return spi__req_fail(req, SPI_EINVAL, "decision: NULL or struct_size");
  size_t size = out->struct_size;
  spi__zero(out, sizeof *out);
  out->struct_size = size;
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  unsigned pin;
  spi_snapshot *snap = spi__snap_acquire(req->engine, &pin);
  rc = route_pinned(req, snap, &v, out);
  if (__builtin_expect(rc == ROUTE_AGAIN, 0))
    rc = route_again(req, snap, &v, out);
  spi__snap_release(req->engine, pin);
  return rc;
}
