/*
 * dispatch.c - the calls that run a request through the engine's modules.
 *
 * Each call pins the configuration snapshot, builds the request's view, calls
 * the selected module, checks what came back, and on failure either falls
 * back to the built-in of the same kind or fails with SPI_EMODULE, as the
 * module declared. A module's output is never used unchecked.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "engine.h"

/* ------------------------------------------------------- derived request */

/* The canonical prompt (docs/cache-key.md): each message as role, 0x1F,
 * content, 0x1E, where the content is stored canonical already (text with
 * 0x1B-0x1F escaped, other parts framed by 0x1D); so content can never
 * spell a message boundary. The system prompt joins the system/developer
 * contents with 0x1E, one between every two (an empty message too). */
static int derive(spi_request *r) {
  if (r->derived_ok) return SPI_OK;
  const spi_mem *m = &r->engine->mem;
  spi__buf_clear(&r->prompt);
  spi__buf_clear(&r->sysprompt);
  r->prompt_escaped = 0;
  r->last_user_off = r->last_user_len = 0;
  r->last_user_in_prompt = 0;
  int rc = SPI_OK;
  size_t nsys = 0;
  for (size_t i = 0; i < r->nmsgs && rc == SPI_OK; i++) {
    const spi_msg *g = &r->msgs[i];
    const char *role = spi__role_name(g->role);
    /* An empty message may come before msgbuf has any memory: no offset
     * may be applied to its NULL data. */
    const uint8_t *content =
        g->len ? r->msgbuf.data + g->off : (const uint8_t *)"";
    rc = spi__buf_reserve(&r->prompt, m, strlen(role) + g->len + 2);
    if (rc) break;
    spi__buf_append(&r->prompt, m, role, strlen(role));
    spi__buf_append_byte(&r->prompt, m, 0x1F);
    spi__buf_append(&r->prompt, m, content, g->len);
    spi__buf_append_byte(&r->prompt, m, 0x1E);
    if (g->role == SPI_ROLE_SYSTEM || g->role == SPI_ROLE_DEVELOPER) {
      if (nsys++) rc = spi__buf_append_byte(&r->sysprompt, m, 0x1E);
      if (!rc) rc = spi__buf_append(&r->sysprompt, m, content, g->len);
    }
    if (g->role == SPI_ROLE_USER) {
      r->last_user_off = g->off;
      r->last_user_len = g->len;
    }
  }
  if (rc) return spi__req_fail(r, SPI_ENOMEM, "request: out of memory");
  if (r->nmsgs == 0) {
    r->last_user_in_prompt = 1;
    r->last_user_len = r->str[SPI_REQ_PROMPT].len;
    /* A completions prompt is its text, escaped as message content is: it
     * never holds a raw 0x1E or 0x1F, which every chat prompt does. The
     * common prompt without such bytes is used in place. */
    const spi_buf *p = &r->str[SPI_REQ_PROMPT];
    if (p->len && spi__prompt_reserved_at(p->data, p->len) < p->len) {
      if (spi__buf_append_text(&r->prompt, m, p->data, p->len))
        return spi__req_fail(r, SPI_ENOMEM, "request: out of memory");
      r->prompt_escaped = 1;
    }
  }
  r->derived_ok = 1;
  return SPI_OK;
}

static void strv(const spi_request *r, int field, const char **p, size_t *n) {
  *p = r->str[field].len ? (const char *)r->str[field].data : "";
  *n = r->str[field].len;
}

/* A request's first view: derive it, then view it. Out of line, so the
 * view of a request derived already (a second call on it, or a route
 * again) saves no registers for the derivation. */
static __attribute__((noinline)) int view_derived(spi_request *r,
                                                 spi_request_view *v) {
  int rc = derive(r);
  if (rc) return rc;
  return spi__request_view(r, v);
}

int spi__request_view(spi_request *r, spi_request_view *v) {
  if (!r->derived_ok) return view_derived(r, v);
  /* Every field is set below, so the view is not cleared whole; a field
   * added to the view must be set here. Its only padding, after each of
   * the three int32 flags that an int64 follows, lies between
   * replayable_set and prompt_tokens: that span is cleared, since a
   * module may read the view as bytes (a memo keyed by it), and the
   * caller's stack must not reach it. */
  _Static_assert(sizeof *v == 42 * 8, "every field of the view is set");
  _Static_assert(offsetof(spi_request_view, prompt_tokens) -
                         offsetof(spi_request_view, replayable_set) == 40,
                 "the padded span is the three flags and the int64s after them");
  memset(&v->replayable_set, 0,
         offsetof(spi_request_view, prompt_tokens) -
             offsetof(spi_request_view, replayable_set));
  v->struct_size = sizeof *v;
  v->priority_class = SPI_CLASS_UNSET; /* spi__classify_in sets it */
  strv(r, SPI_REQ_MODEL, &v->model, &v->model_len);
  strv(r, SPI_REQ_TOKENIZER_VERSION, &v->tokenizer_version,
       &v->tokenizer_version_len);
  if (r->str_set[SPI_REQ_SYSTEM_PROMPT]) {
    strv(r, SPI_REQ_SYSTEM_PROMPT, &v->system_prompt, &v->system_prompt_len);
  } else {
    v->system_prompt = r->sysprompt.len ? (const char *)r->sysprompt.data : "";
    v->system_prompt_len = r->sysprompt.len;
  }
  strv(r, SPI_REQ_TOOLS_JSON, &v->tools_canonical, &v->tools_canonical_len);
  strv(r, SPI_REQ_RETRIEVAL_TEMPLATE, &v->retrieval_template,
       &v->retrieval_template_len);
  strv(r, SPI_REQ_TENANT, &v->tenant, &v->tenant_len);
  strv(r, SPI_REQ_TENANT_TIER, &v->tenant_tier, &v->tenant_tier_len);
  strv(r, SPI_REQ_TENANT_SALT, &v->tenant_salt, &v->tenant_salt_len);
  strv(r, SPI_REQ_DECODE_PROFILE, &v->decode_profile, &v->decode_profile_len);
  if (r->last_user_in_prompt) {
    strv(r, SPI_REQ_PROMPT, &v->last_user_text, &v->last_user_text_len);
  } else {
    v->last_user_text = r->last_user_len
                            ? (const char *)r->msgbuf.data + r->last_user_off
                            : "";
    v->last_user_text_len = r->last_user_len;
  }
  if (r->nmsgs || r->prompt_escaped) {
    v->prompt = r->prompt.len ? r->prompt.data : (const uint8_t *)"";
    v->prompt_len = r->prompt.len;
  } else {
    v->prompt = r->str[SPI_REQ_PROMPT].len ? r->str[SPI_REQ_PROMPT].data
                                           : (const uint8_t *)"";
    v->prompt_len = r->str[SPI_REQ_PROMPT].len;
  }
  v->token_ids = r->ntokens ? r->tokens : NULL;
  v->token_count = r->ntokens;
  v->explicit_class = r->explicit_class;
  v->service_tier = r->service_tier;
  v->priority = r->ival[SPI_REQ_PRIORITY];
  v->priority_set = r->iset[SPI_REQ_PRIORITY];
  v->stream = (int32_t)r->ival[SPI_REQ_STREAM];
  v->sla_ms = r->ival[SPI_REQ_SLA_MS];
  v->sla_ms_set = r->iset[SPI_REQ_SLA_MS];
  v->replayable = (int32_t)r->ival[SPI_REQ_REPLAYABLE];
  v->replayable_set = r->iset[SPI_REQ_REPLAYABLE];
  v->max_output_tokens = r->ival[SPI_REQ_MAX_OUTPUT_TOKENS];
  v->max_output_tokens_set = r->iset[SPI_REQ_MAX_OUTPUT_TOKENS];
  v->expected_output_tokens = r->ival[SPI_REQ_EXPECTED_OUTPUT_TOKENS];
  v->expected_output_tokens_set = r->iset[SPI_REQ_EXPECTED_OUTPUT_TOKENS];
  v->prompt_tokens = r->ival[SPI_REQ_PROMPT_TOKENS];
  v->prompt_tokens_set = r->iset[SPI_REQ_PROMPT_TOKENS];
  v->has_tools = r->str_set[SPI_REQ_TOOLS_JSON];
  v->message_count = r->nmsgs;
  v->forced_model_tier = r->iset[SPI_REQ_MODEL_TIER]
                             ? (int32_t)r->ival[SPI_REQ_MODEL_TIER]
                             : 0;
  v->metadata = r->metabuf.len ? (const char *)r->metabuf.data : "";
  v->metadata_len = r->metabuf.len;
  v->metadata_count = r->nmeta;
  return SPI_OK;
}

int spi_request_canonical_prompt(spi_request *req, const uint8_t **out,
                                 size_t *out_len) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out || !out_len) return spi__req_fail(req, SPI_EINVAL, "NULL output");
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  *out = v.prompt;
  *out_len = v.prompt_len;
  return SPI_OK;
}

/* -------------------------------------------------------------- checking */

static int classification_ok(spi_classification *c) {
  c->reason[sizeof c->reason - 1] = '\0';
  return c->klass >= SPI_CLASS_GOLD && c->klass <= SPI_CLASS_BRONZE &&
         (c->replayable == 0 || c->replayable == 1) &&
         (c->model_tier == SPI_TIER_SMALL || c->model_tier == SPI_TIER_LARGE) &&
         isfinite(c->complexity) && c->max_output_tokens >= 0 &&
         (c->tools_allowed == 0 || c->tools_allowed == 1) &&
         (c->defer == 0 || c->defer == 1);
}

/* Finite and not negative: false for a NaN, an infinity or below 0. */
static int finite_nonneg(double d) { return d >= 0 && d <= DBL_MAX; }

static int price_ok(const spi_price *p) {
  return finite_nonneg(p->prompt_tokens) && finite_nonneg(p->output_tokens) &&
         finite_nonneg(p->gpu_seconds) && finite_nonneg(p->usd) &&
         finite_nonneg(p->usd_per_million);
}

/* What a call returns internally when a module claimed success but its
 * output failed the checks. Positive, so it never collides with a status. */
enum { BAD_OUTPUT = 1 };

/* The failure of a module call, as the library reports it. */
static int module_failed(spi_request *r, const spi_modentry *m, int rc,
                         const char *what) {
  if (rc == BAD_OUTPUT)
    return spi__req_fail(r, SPI_EMODULE, "%s module \"%s\" returned an invalid %s",
                         spi_module_kind_name(m->kind), m->name, what);
  return spi__req_fail(r, SPI_EMODULE, "%s module \"%s\" failed: %s",
                       spi_module_kind_name(m->kind), m->name, spi_strerror(rc));
}

/* Whether to retry with the built-in after the selected module failed. */
static int use_fallback(const spi_slot *sl) {
  return sl->mod != sl->builtin && sl->mod->on_failure == SPI_ON_FAILURE_FALLBACK;
}

/* The selected module failed and the built-in answers instead: a warning
 * (none without a request, whose engine would take it). The built-in is
 * then the module a second failure names. */
static const spi_modentry *fall_back(spi_request *req, const spi_slot *sl) {
  if (req)
    spi__engine_log(req->engine, SPI_LOG_WARN,
                    "%s module \"%s\" failed; using built-in",
                    spi_module_kind_name(sl->mod->kind), sl->mod->name);
  return sl->builtin;
}

/* ------------------------------------------------------------- classify */

/* Which classifier gave a request's last classification, and so where the
 * plan at another pressure comes from. */
enum spi_cls_from {
  CLS_BUILTIN = 0, /* the built-in: its degrade table */
  CLS_LEVELS = 1,  /* a module's classify_levels: req->cls_levels */
  CLS_ASK = 2      /* a module's classify: asked again */
};

static int levels_ok(const spi_degrade_levels *l) {
  for (int p = 0; p < 4; p++)
    if (l->max_output_tokens[p] < 0 ||
        (l->tools_allowed[p] != 0 && l->tools_allowed[p] != 1) ||
        (l->defer[p] != 0 && l->defer[p] != 1))
      return 0;
  return 1;
}

static void plan_of(const spi_degrade_levels *l, int32_t pressure,
                    spi_classification *out) {
  out->max_output_tokens = l->max_output_tokens[pressure];
  out->tools_allowed = l->tools_allowed[pressure];
  out->defer = l->defer[pressure];
}

/* One classifier call; a module with classify_levels also leaves every
 * pressure's plan in *lv. A module's output starts cleared; the built-in
 * (builtin set) writes every field it gives on every path (the reason as
 * far as its NUL), so its output is not cleared first. */
static int run_classifier(const spi_modentry *m, void *inst,
                          const spi_request_view *v, int32_t pressure,
                          spi_classification *out, spi_degrade_levels *lv,
                          int builtin) {
  size_t size = out->struct_size;
  if (!builtin) spi__zero(out, sizeof *out);
  out->struct_size = size;
  out->rule_index = -1;
  int rc;
  if (m->m.classifier.classify_levels) {
    memset(lv, 0, sizeof *lv);
    lv->struct_size = sizeof *lv;
    rc = m->m.classifier.classify_levels(m->state, inst, v, out, lv);
    if (rc == SPI_OK && !levels_ok(lv)) rc = BAD_OUTPUT;
    plan_of(lv, pressure, out);
  } else {
    rc = m->m.classifier.classify(m->state, inst, v, pressure, out);
  }
  out->struct_size = size;
  if (rc == SPI_OK && !classification_ok(out)) rc = BAD_OUTPUT;
  return rc;
}

static int32_t answered_by(const spi_modentry *m, const spi_slot *sl) {
  if (m == sl->builtin) return CLS_BUILTIN;
  return m->m.classifier.classify_levels ? CLS_LEVELS : CLS_ASK;
}

/* What the engine adds to a classification. */
static void classified(const spi_snapshot *s, int32_t pressure,
                       spi_classification *out) {
  out->vllm_priority = s->vllm_prio[out->klass];
  out->llmd_priority = s->llmd_prio[out->klass];
  out->service_tier = s->service_tier[out->klass];
  out->pressure = pressure;
}

/* The selected classifier failed (rc): the built-in answers if the module
 * falls back, else the failure is recorded. Out of line, so the classify
 * that succeeds saves no registers for it. */
static __attribute__((noinline, cold)) int
classify_failed(spi_request *req, const spi_snapshot *s, spi_request_view *v,
                int32_t pressure, spi_classification *out, int rc) {
  const spi_slot *sl = &s->slot[SPI_MODULE_CLASSIFIER];
  const spi_modentry *by = sl->mod;
  if (use_fallback(sl)) {
    by = fall_back(req, sl);
    rc = run_classifier(sl->builtin, sl->builtin_inst, v, pressure, out,
                        &req->cls_levels, 0);
  }
  if (rc != SPI_OK) rc = module_failed(req, by, rc, "classification");
  req->cls_from = answered_by(by, sl);
  if (rc == SPI_OK) classified(s, pressure, out);
  return rc;
}

int spi__classify_in(spi_request *req, const spi_snapshot *s,
                     spi_request_view *v, int32_t pressure,
                     spi_classification *out) {
  const spi_slot *sl = &s->slot[SPI_MODULE_CLASSIFIER];
  /* The priority's class comes from the engine's map, so every classifier
   * sees the same vocabulary. */
  v->priority_class = SPI_CLASS_UNSET;
  if (v->priority_set)
    v->priority_class = v->priority <= s->vllm_prio[1]   ? SPI_CLASS_GOLD
                        : v->priority <= s->vllm_prio[2] ? SPI_CLASS_SILVER
                                                         : SPI_CLASS_BRONZE;
  int rc = run_classifier(sl->mod, sl->inst, v, pressure, out, &req->cls_levels,
                          sl->mod == sl->builtin);
  if (__builtin_expect(rc != SPI_OK, 0))
    return classify_failed(req, s, v, pressure, out, rc);
  req->cls_from = answered_by(sl->mod, sl);
  classified(s, pressure, out);
  return SPI_OK;
}

int spi__classify_plan_at(spi_request *req, const spi_snapshot *s,
                          spi_request_view *v, int32_t pressure,
                          spi_classification *out) {
  const spi_slot *sl = &s->slot[SPI_MODULE_CLASSIFIER];
  switch (req->cls_from) {
  case CLS_BUILTIN:
    spi__classifier_plan_at(sl->builtin_inst, pressure, out);
    return SPI_OK;
  case CLS_LEVELS:
    plan_of(&req->cls_levels, pressure, out);
    out->pressure = pressure;
    return SPI_OK;
  default:
    return spi__classify_in(req, s, v, pressure, out);
  }
}

int spi_classify(spi_request *req, int32_t pressure, spi_classification *out) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof *out)
    return spi__req_fail(req, SPI_EINVAL, "classification: NULL or struct_size");
  if (pressure < SPI_PRESSURE_NORMAL || pressure > SPI_PRESSURE_CRITICAL)
    return spi__req_fail(req, SPI_EINVAL, "pressure %d is not 0..3", (int)pressure);
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(req->engine, &pin);
  rc = spi__classify_in(req, s, &v, pressure, out);
  spi__snap_release(req->engine, pin);
  return rc;
}

/* ------------------------------------------------------------ cache key */

int spi_cache_key_hex(const spi_cache_key *key, char *out, size_t cap) {
  static const char hex[] = "0123456789abcdef";
  if (!key || !out || cap < 33) return SPI_EINVAL;
  for (int i = 0; i < 16; i++) {
    uint64_t w = i < 8 ? key->high64 : key->low64;
    unsigned byte = (unsigned)(w >> (56 - 8 * (i % 8))) & 0xffu;
    out[2 * i] = hex[byte >> 4];
    out[2 * i + 1] = hex[byte & 15];
  }
  out[32] = '\0';
  return SPI_OK;
}

int spi__key_in(spi_request *req, const spi_snapshot *s,
                const spi_request_view *v, spi_cache_key *out) {
  const spi_slot *sl = &s->slot[SPI_MODULE_KEY_BUILDER];
  if (sl->mod == sl->builtin) { /* v is spi__request_view's: it cannot fail */
    spi__kb_key_view(sl->inst, v, out);
    return SPI_OK;
  }
  const spi_modentry *by = sl->mod;
  int rc = sl->mod->m.key_builder.build_key(sl->mod->state, sl->inst, v, out);
  if (rc != SPI_OK && use_fallback(sl)) {
    by = fall_back(req, sl);
    rc = sl->builtin->m.key_builder.build_key(sl->builtin->state,
                                              sl->builtin_inst, v, out);
  }
  if (rc != SPI_OK) return module_failed(req, by, rc, "key");
  return SPI_OK;
}

int spi_request_cache_key(spi_request *req, spi_cache_key *out) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out) return spi__req_fail(req, SPI_EINVAL, "cache key: NULL output");
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(req->engine, &pin);
  rc = spi__key_in(req, s, &v, out);
  spi__snap_release(req->engine, pin);
  return rc;
}

static int blocks_with(const spi_modentry *m, void *inst,
                       const spi_request_view *v, const spi_cache_key *key,
                       uint64_t *out, size_t cap, size_t *n) {
  *n = 0;
  int rc = m->m.key_builder.block_hashes(m->state, inst, v, key, out, cap, n);
  /* A module that claims success must not report more than it wrote. */
  if (rc == SPI_OK && *n > cap) rc = BAD_OUTPUT;
  return rc;
}

int spi__blocks_in(spi_request *req, const spi_snapshot *s,
                   const spi_request_view *v, const spi_cache_key *key,
                   uint64_t *out, size_t cap, size_t *n_out) {
  const spi_slot *sl = &s->slot[SPI_MODULE_KEY_BUILDER];
  if (sl->mod == sl->builtin) { /* as spi__key_in */
    *n_out = spi__kb_blocks_view(sl->inst, v, key, out, cap);
    return *n_out > cap ? SPI_EBUFSIZE : SPI_OK;
  }
  const spi_modentry *by = sl->mod;
  int rc = blocks_with(sl->mod, sl->inst, v, key, out, cap, n_out);
  if (rc != SPI_OK && rc != SPI_EBUFSIZE && use_fallback(sl)) {
    by = fall_back(req, sl);
    rc = blocks_with(sl->builtin, sl->builtin_inst, v, key, out, cap, n_out);
  }
  if (rc != SPI_OK && rc != SPI_EBUFSIZE)
    rc = module_failed(req, by, rc, "block count");
  return rc;
}

/* spi__keys_in with a key-builder module. Out of line, so the built-in's
 * path saves no registers for it. */
static __attribute__((noinline)) int
keys_with_module(spi_request *req, const spi_snapshot *s,
                 const spi_request_view *v, spi_cache_key *key, uint64_t *out,
                 size_t cap, size_t *n_out) {
  int rc = spi__key_in(req, s, v, key);
  if (rc == SPI_OK) rc = spi__blocks_in(req, s, v, key, out, cap, n_out);
  return rc;
}

int spi__keys_in(spi_request *req, const spi_snapshot *s,
                 const spi_request_view *v, spi_cache_key *key, uint64_t *out,
                 size_t cap, size_t *n_out) {
  const spi_slot *sl = &s->slot[SPI_MODULE_KEY_BUILDER];
  if (sl->mod != sl->builtin)
    return keys_with_module(req, s, v, key, out, cap, n_out);
  /* as spi__key_in */
  return spi__kb_key_blocks(sl->inst, v, key, out, cap, n_out);
}

int spi_request_block_hashes(spi_request *req, uint64_t *out, size_t cap,
                             size_t *n_out) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!n_out || (!out && cap))
    return spi__req_fail(req, SPI_EINVAL, "block hashes: NULL output");
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(req->engine, &pin);
  spi_cache_key key;
  rc = spi__key_in(req, s, &v, &key);
  if (rc == SPI_OK) rc = spi__blocks_in(req, s, &v, &key, out, cap, n_out);
  spi__snap_release(req->engine, pin);
  if (rc == SPI_EBUFSIZE)
    spi__req_fail(req, rc, "block hashes: %zu blocks, room for %zu", *n_out,
                  cap);
  return rc;
}

/* ----------------------------------------------------------------- price */

static int price_with(const spi_modentry *m, void *inst,
                      const spi_request_view *v, int32_t pool, spi_price *out) {
  size_t size = out->struct_size;
  memset(out, 0, sizeof *out);
  out->struct_size = size;
  out->pool = pool;
  int rc = m->m.cost_model.price(m->state, inst, v, pool, out);
  out->struct_size = size;
  out->pool = pool;
  if (rc == SPI_OK && !price_ok(out)) rc = BAD_OUTPUT;
  return rc;
}

/* The selected cost model failed (rc): as classify_failed. */
static __attribute__((noinline, cold)) int
price_failed(spi_request *req, const spi_slot *sl, const spi_request_view *v,
             int32_t pool, spi_price *out, int rc) {
  const spi_modentry *by = sl->mod;
  if (use_fallback(sl)) {
    by = fall_back(req, sl);
    rc = price_with(sl->builtin, sl->builtin_inst, v, pool, out);
  }
  if (rc != SPI_OK && req) rc = module_failed(req, by, rc, "price");
  else if (rc != SPI_OK) rc = SPI_EMODULE;
  return rc;
}

/* The price through the module table. Out of line, so the built-in's
 * path in spi__price_in saves no registers for it. */
static __attribute__((noinline)) int
price_module(spi_request *req, const spi_slot *sl, const spi_request_view *v,
             int32_t pool, spi_price *out) {
  int rc = price_with(sl->mod, sl->inst, v, pool, out);
  if (__builtin_expect(rc != SPI_OK, 0))
    return price_failed(req, sl, v, pool, out, rc);
  return SPI_OK;
}

int spi__price_in(spi_request *req, const spi_snapshot *s,
                  const spi_request_view *v, int32_t pool, spi_price *out) {
  const spi_slot *sl = &s->slot[SPI_MODULE_COST_MODEL];
  /* The built-in, called directly: its output is every field, so it is
   * not cleared first, and its price is checked as a module's. Any other
   * outcome takes the module path, which gives the same answer with the
   * output cleared. */
  if (sl->mod == sl->builtin &&
      spi__cost_price_view(sl->inst, v, pool, out) == SPI_OK && price_ok(out))
    return SPI_OK;
  return price_module(req, sl, v, pool, out);
}

int spi_request_price(spi_request *req, int32_t pool, spi_price *out) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof *out)
    return spi__req_fail(req, SPI_EINVAL, "price: NULL or struct_size");
  if (pool != SPI_POOL_SPOT && pool != SPI_POOL_ON_DEMAND)
    return spi__req_fail(req, SPI_EINVAL, "pool %d is not valid", (int)pool);
  spi_request_view v;
  int rc = spi__request_view(req, &v);
  if (rc) return rc;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(req->engine, &pin);
  rc = spi__price_in(req, s, &v, pool, out);
  spi__snap_release(req->engine, pin);
  return rc;
}
