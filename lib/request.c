/*
 * request.c - a request's attributes, set field by field or read from an
 * OpenAI chat-completions / completions body.
 *
 * Everything given is copied into buffers the request owns and keeps across
 * spi_request_reset(), so a warm request is refilled without allocating.
 * Derived views (canonical prompt, system prompt, last user text) are built
 * on demand and cached until the next change.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"

int spi__request_ok(const spi_request *r) { return spi__request_ok_inline(r); }

int spi__req_fail(spi_request *r, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(r->errmsg, sizeof r->errmsg, fmt, ap);
  va_end(ap);
  return status;
}

static const char *const ROLE_NAMES[SPI_ROLE_COUNT] = {
    "system", "developer", "user", "assistant", "tool"};

const char *spi__role_name(int32_t role) {
  return role >= 0 && role < SPI_ROLE_COUNT ? ROLE_NAMES[role] : "invalid";
}

static const char *const STR_NAMES[SPI_REQ_STR_MAX + 1] = {
    "", "model", "tokenizer_version", "system_prompt", "tools",
    "retrieval_template", "tenant", "tenant_tier", "tenant_salt",
    "decode_profile", "service_tier", "user", "class", "prompt", "request_id"};
static const char *const INT_NAMES[SPI_REQ_INT_MAX] = {
    "", "priority", "sla_ms", "stream", "replayable", "max_output_tokens",
    "expected_output_tokens", "prompt_tokens", "model_tier",
    "replay_since_ns"};

/* Inclusive bounds of each integer attribute. */
static const int64_t INT_MIN_V[SPI_REQ_INT_MAX] = {
    0, -1000000, 1, 0, 0, 1, 0, 0, SPI_TIER_SMALL, 1};
static const int64_t INT_MAX_V[SPI_REQ_INT_MAX] = {
    0, 1000000, 86400000, 1, 1, 1000000000, 1000000000, 100000000000LL,
    SPI_TIER_LARGE, INT64_MAX};

/* --------------------------------------------------------------- lifecycle */

int spi_request_new(spi_engine *engine, spi_request **out) {
  if (!out) return SPI_EINVAL;
  *out = NULL;
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  spi_request *r = spi__calloc(&engine->mem, 1, sizeof *r);
  if (!r) return spi__engine_fail(engine, SPI_ENOMEM, "request: out of memory");
  r->magic = SPI_REQUEST_MAGIC;
  r->engine = engine;
  r->hashes = r->hash_room;
  r->hashcap = SPI_HASH_ROOM;
  *out = r;
  return SPI_OK;
}

void spi_request_free(spi_request *req) {
  if (!req || req->magic != SPI_REQUEST_MAGIC) return;
  const spi_mem *m = &req->engine->mem;
  for (int i = 0; i <= SPI_REQ_STR_MAX; i++) spi__buf_free(&req->str[i], m);
  spi__free(m, req->msgs);
  spi__buf_free(&req->msgbuf, m);
  spi__buf_free(&req->metabuf, m);
  spi__free(m, req->tokens);
  spi__buf_free(&req->prompt, m);
  spi__buf_free(&req->sysprompt, m);
  if (req->hashes != req->hash_room) spi__free(m, req->hashes);
  spi__free(m, req->cands);
  req->magic = SPI_DEAD_MAGIC;
  spi__free(m, req);
}

void spi__req_clear(spi_request *r) {
  for (int i = 0; i <= SPI_REQ_STR_MAX; i++) {
    spi__buf_clear(&r->str[i]);
    r->str_set[i] = 0;
  }
  memset(r->ival, 0, sizeof r->ival);
  memset(r->iset, 0, sizeof r->iset);
  r->explicit_class = SPI_CLASS_UNSET;
  r->service_tier = SPI_SERVICE_TIER_UNSET;
  r->nmsgs = 0;
  spi__buf_clear(&r->msgbuf);
  spi__buf_clear(&r->metabuf);
  r->nmeta = 0;
  r->ntokens = 0;
  r->derived_ok = 0;
  r->nexcl = 0;
}

int spi_request_reset(spi_request *req) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  spi__req_clear(req);
  req->errmsg[0] = '\0';
  return SPI_OK;
}

const char *spi_request_errmsg(const spi_request *req) {
  if (!req || req->magic != SPI_REQUEST_MAGIC) return "invalid request handle";
  return req->errmsg;
}

/* ---------------------------------------------------------- exclusions */

/* Kept as given and resolved by the route (route.c, excl_resolve), so an
 * id added before its replica exists, or after it left, is no error. */
int spi_request_exclude_replica(spi_request *req, const char *id,
                                size_t id_len) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (id_len == 0 || id_len >= SPI_ID_MAX)
    return spi__req_fail(req, SPI_EINVAL,
                         "exclude: replica id of %zu bytes (1..%d)", id_len,
                         SPI_ID_MAX - 1);
  if (!id) return spi__req_fail(req, SPI_EINVAL, "exclude: NULL replica id");
  for (uint32_t i = 0; i < req->nexcl; i++)
    if (req->excl_len[i] == id_len && memcmp(req->excl[i], id, id_len) == 0)
      return SPI_OK;
  if (req->nexcl == SPI_MAX_EXCLUDED)
    return spi__req_fail(req, SPI_EFULL,
                         "exclude: a request excludes at most %d replicas",
                         SPI_MAX_EXCLUDED);
  memcpy(req->excl[req->nexcl], id, id_len);
  req->excl_len[req->nexcl++] = (uint8_t)id_len;
  return SPI_OK;
}

/* ------------------------------------------------------------- the limits */

/* The limits in force, from the request's copy while the engine's
 * snapshot is the one it came from: a setter then reads one atomic instead
 * of pinning the snapshot (two locked adds, most of a short setter's
 * time). A request being filled while the configuration changes is
 * checked against the old limits or the new, as a pin would have it. */
spi_limits spi__req_limits(spi_request *r) {
  uint64_t seq =
      atomic_load_explicit(&r->engine->snap_seq, memory_order_acquire);
  if (seq != r->lim_seq) {
    unsigned pin;
    spi_snapshot *s = spi__snap_acquire(r->engine, &pin);
    r->lim = s->limits;
    r->lim_seq = s->seq;
    spi__snap_release(r->engine, pin);
  }
  return r->lim;
}

/* ---------------------------------------------------------------- setters */

static int name_index(const char *const *names, size_t n, const char *s,
                      size_t len) {
  for (size_t i = 0; i < n; i++)
    if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0) return (int)i;
  return -1;
}

static const char *const CLASS_WORDS[] = {"gold", "silver", "bronze"};
static const char *const TIER_WORDS[] = {"auto", "default", "flex", "priority",
                                         "scale"};

static int set_tools(spi_request *r, const spi_limits *l, const char *v,
                     size_t len) {
  char err[SPI_ERRMSG_CAP];
  if ((int64_t)len > l->max_tools_bytes)
    return spi__req_fail(r, SPI_ETOOBIG, "tools: %zu bytes exceeds %lld", len,
                    (long long)l->max_tools_bytes);
  if (len == 0) {
    spi__buf_clear(&r->str[SPI_REQ_TOOLS_JSON]);
    r->str_set[SPI_REQ_TOOLS_JSON] = 0;
    return SPI_OK;
  }
  cJSON *root = NULL;
  int rc = spi__json_parse_as(v, len, cJSON_Array, "tools", &root, err,
                              sizeof err);
  /* A tools value of another type is malformed (SPI_EPARSE), as it always
   * was for this setter. */
  if (rc != SPI_OK)
    return spi__req_fail(r, rc == SPI_ETYPE ? SPI_EPARSE : rc, "%s", err);
  /* Canonicalise behind the current value in the buffer the request keeps,
   * then move it to the front: a warm request allocates nothing, and on
   * error (spi__canon_json restores the length) the old value stays. */
  spi_buf *b = &r->str[SPI_REQ_TOOLS_JSON];
  size_t old = b->len;
  spi_json_src src;
  spi__json_src_init(&src, v, len, root);
  rc = spi__canon_json_src(root, b, &r->engine->mem, &src);
  spi__json_src_free(&src, &r->engine->mem);
  cJSON_Delete(root);
  if (rc != SPI_OK) {
    b->len = old;
    spi__errf(err, sizeof err, "tools: %s", spi_strerror(rc));
    return spi__req_fail(r, rc, "%s", err);
  }
  memmove(b->data, b->data + old, b->len - old);
  b->len -= old;
  r->str_set[SPI_REQ_TOOLS_JSON] = 1;
  return SPI_OK;
}

int spi__req_set_str(spi_request *r, const spi_limits *l, int32_t field,
                   const char *v, size_t len) {
  if (field < SPI_REQ_MODEL || field > SPI_REQ_REQUEST_ID)
    return spi__req_fail(r, SPI_EINVAL, "unknown string field %d", (int)field);
  if (!v && len) return spi__req_fail(r, SPI_EINVAL, "%s: NULL value", STR_NAMES[field]);
  if (field == SPI_REQ_TOOLS_JSON) return set_tools(r, l, v, len);
  if ((int64_t)len > l->max_field_bytes)
    return spi__req_fail(r, SPI_ETOOBIG, "%s: %zu bytes exceeds %lld",
                    STR_NAMES[field], len, (long long)l->max_field_bytes);
  int32_t klass = r->explicit_class, tier = r->service_tier;
  if (field == SPI_REQ_CLASS) {
    int i = len ? name_index(CLASS_WORDS, 3, v, len) : -1;
    if (len && i < 0)
      return spi__req_fail(r, SPI_EUNKNOWN,
                      "class: \"%.*s\" is not gold, silver or bronze",
                      (int)spi__utf8_fit(v, len, 32), v);
    klass = len ? i + SPI_CLASS_GOLD : SPI_CLASS_UNSET;
  } else if (field == SPI_REQ_SERVICE_TIER) {
    int i = len ? name_index(TIER_WORDS, 5, v, len) : -1;
    if (len && i < 0)
      return spi__req_fail(r, SPI_EUNKNOWN,
                      "service_tier: \"%.*s\" is not auto, default, flex, "
                      "priority or scale",
                      (int)spi__utf8_fit(v, len, 32), v);
    tier = len ? i + SPI_SERVICE_TIER_AUTO : SPI_SERVICE_TIER_UNSET;
  }
  spi_buf *b = &r->str[field];
  size_t old = b->len;
  b->len = 0;
  if (spi__buf_reserve(b, &r->engine->mem, len) != SPI_OK) {
    b->len = old;
    return spi__req_fail(r, SPI_ENOMEM, "%s: out of memory", STR_NAMES[field]);
  }
  if (len) memcpy(b->data, v, len);
  b->len = len;
  r->str_set[field] = len > 0;
  r->explicit_class = klass;
  r->service_tier = tier;
  r->derived_ok = 0;
  return SPI_OK;
}

int spi_request_set_str(spi_request *req, int32_t field, const char *value,
                        size_t len) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  spi_limits l = spi__req_limits(req);
  return spi__req_set_str(req, &l, field, value, len);
}

int spi__req_set_int(spi_request *r, int32_t field, int64_t v) {
  if (field < SPI_REQ_PRIORITY || field >= SPI_REQ_INT_MAX)
    return spi__req_fail(r, SPI_EINVAL, "unknown integer field %d", (int)field);
  if (v < INT_MIN_V[field] || v > INT_MAX_V[field])
    return spi__req_fail(r, SPI_ERANGE, "%s: %lld is outside [%lld, %lld]",
                    INT_NAMES[field], (long long)v,
                    (long long)INT_MIN_V[field], (long long)INT_MAX_V[field]);
  r->ival[field] = v;
  r->iset[field] = 1;
  return SPI_OK;
}

int spi_request_set_int(spi_request *req, int32_t field, int64_t value) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  return spi__req_set_int(req, field, value);
}

int spi_request_unset_int(spi_request *req, int32_t field) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (field < SPI_REQ_PRIORITY || field >= SPI_REQ_INT_MAX)
    return spi__req_fail(req, SPI_EINVAL, "unknown integer field %d", (int)field);
  req->ival[field] = 0;
  req->iset[field] = 0;
  return SPI_OK;
}

int spi__req_add_message(spi_request *r, const spi_limits *l, int32_t role,
                         const char *content, size_t len, int canonical) {
  if ((int64_t)r->nmsgs >= l->max_messages)
    return spi__req_fail(r, SPI_ETOOBIG, "messages: more than %lld",
                    (long long)l->max_messages);
  /* A canonical content's text was counted by its reader (openai.c); its
   * framed parts count toward the body only. */
  if (!canonical && (int64_t)len > l->max_field_bytes)
    return spi__req_fail(r, SPI_ETOOBIG, "messages[%zu].content: %zu bytes exceeds %lld",
                    r->nmsgs, len, (long long)l->max_field_bytes);
  if (!content && len)
    return spi__req_fail(r, SPI_EINVAL, "messages[%zu].content: NULL", r->nmsgs);
  const spi_mem *m = &r->engine->mem;
  if (r->nmsgs == r->msgcap) {
    size_t cap = r->msgcap ? r->msgcap * 2 : 8;
    spi_msg *p = spi__calloc(m, cap, sizeof *p);
    if (!p) return spi__req_fail(r, SPI_ENOMEM, "messages: out of memory");
    if (r->nmsgs) memcpy(p, r->msgs, r->nmsgs * sizeof *p);
    spi__free(m, r->msgs);
    r->msgs = p;
    r->msgcap = cap;
  }
  size_t off = r->msgbuf.len;
  if ((canonical ? spi__buf_append(&r->msgbuf, m, content, len)
                 : spi__buf_append_text(&r->msgbuf, m, content, len)) != SPI_OK)
    return spi__req_fail(r, SPI_ENOMEM, "messages: out of memory");
  r->msgs[r->nmsgs].role = role;
  r->msgs[r->nmsgs].off = off;
  r->msgs[r->nmsgs].len = r->msgbuf.len - off;
  r->nmsgs++;
  r->derived_ok = 0;
  return SPI_OK;
}

int spi__role_from_name(const char *s, size_t len) {
  int i = name_index(ROLE_NAMES, SPI_ROLE_COUNT, s, len);
  /* "function" is the pre-tools name of a tool result. */
  if (i < 0 && len == 8 && memcmp(s, "function", 8) == 0) i = SPI_ROLE_TOOL;
  return i;
}

int spi_request_add_message(spi_request *req, const char *role,
                            size_t role_len, const char *content,
                            size_t content_len) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!role && role_len) return spi__req_fail(req, SPI_EINVAL, "role: NULL");
  int ri = role ? spi__role_from_name(role, role_len) : -1;
  if (ri < 0)
    return spi__req_fail(req, SPI_EUNKNOWN,
                    "role: \"%.*s\" is not system, developer, user, assistant "
                    "or tool",
                    (int)spi__utf8_fit(role ? role : "", role ? role_len : 0, 32),
                    role ? role : "");
  spi_limits l = spi__req_limits(req);
  return spi__req_add_message(req, &l, ri, content, content_len, 0);
}

int spi__req_set_tokens(spi_request *r, const spi_limits *l, const uint32_t *ids,
                      size_t n) {
  if (n && !ids) return spi__req_fail(r, SPI_EINVAL, "token ids: NULL");
  if ((int64_t)n > l->max_token_ids)
    return spi__req_fail(r, SPI_ETOOBIG, "token ids: %zu exceeds %lld", n,
                    (long long)l->max_token_ids);
  if (n > r->tokcap) {
    uint32_t *p = spi__calloc(&r->engine->mem, n, sizeof *p);
    if (!p) return spi__req_fail(r, SPI_ENOMEM, "token ids: out of memory");
    spi__free(&r->engine->mem, r->tokens);
    r->tokens = p;
    r->tokcap = n;
  }
  if (n) memcpy(r->tokens, ids, n * sizeof *ids);
  r->ntokens = n;
  r->derived_ok = 0;
  return SPI_OK;
}

int spi_request_set_token_ids(spi_request *req, const uint32_t *ids, size_t n) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  spi_limits l = spi__req_limits(req);
  return spi__req_set_tokens(req, &l, ids, n);
}

/* Strict decimal integer: optional '-', digits, nothing else. */
static int parse_i64(const char *s, size_t len, int64_t *out) {
  if (len == 0 || len > 19) return 0;
  size_t i = 0;
  int neg = 0;
  if (s[0] == '-') {
    neg = 1;
    i = 1;
    if (len == 1) return 0;
  }
  int64_t v = 0;
  for (; i < len; i++) {
    if (s[i] < '0' || s[i] > '9') return 0;
    int d = s[i] - '0';
    if (v > (INT64_MAX - d) / 10) return 0; /* would overflow */
    v = v * 10 + d;
  }
  *out = neg ? -v : v;
  return 1;
}

static int parse_bool_word(const char *s, size_t len, int64_t *out) {
  if ((len == 4 && memcmp(s, "true", 4) == 0) || (len == 1 && s[0] == '1')) {
    *out = 1;
    return 1;
  }
  if ((len == 5 && memcmp(s, "false", 5) == 0) || (len == 1 && s[0] == '0')) {
    *out = 0;
    return 1;
  }
  return 0;
}

/* Metadata keys that set an attribute. */
static const struct {
  const char *key;
  int32_t str_field; /* 0 if integer */
  int32_t int_field;
  int32_t boolean;
} META_KEYS[] = {
    {"class", SPI_REQ_CLASS, 0, 0},
    {"priority", 0, SPI_REQ_PRIORITY, 0},
    {"sla_ms", 0, SPI_REQ_SLA_MS, 0},
    {"replayable", 0, SPI_REQ_REPLAYABLE, 1},
    {"expected_output_tokens", 0, SPI_REQ_EXPECTED_OUTPUT_TOKENS, 0},
    {"tenant", SPI_REQ_TENANT, 0, 0},
    {"tenant_tier", SPI_REQ_TENANT_TIER, 0, 0},
    {"tenant_salt", SPI_REQ_TENANT_SALT, 0, 0},
    {"decode_profile", SPI_REQ_DECODE_PROFILE, 0, 0},
    {"tokenizer_version", SPI_REQ_TOKENIZER_VERSION, 0, 0},
    {"retrieval_template", SPI_REQ_RETRIEVAL_TEMPLATE, 0, 0},
};

/* OpenAI's metadata limits, in characters: keys 1..64, values up to 512. */
#define META_KEY_CHARS 64
#define META_VALUE_CHARS 512

/* Characters of UTF-8 text: every byte but a continuation byte (10xxxxxx)
 * starts one. The text is not checked to be UTF-8, so the caller bounds the
 * bytes as well (4 a character), which keeps a pair's memory bounded
 * whatever the bytes are. */
static size_t utf8_chars(const char *s, size_t n) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++) c += ((unsigned char)s[i] & 0xC0) != 0x80;
  return c;
}

static int meta_size_ok(const char *k, size_t klen, const char *v,
                        size_t vlen) {
  return klen > 0 && klen <= 4 * META_KEY_CHARS &&
         vlen <= 4 * META_VALUE_CHARS &&
         utf8_chars(k, klen) <= META_KEY_CHARS &&
         utf8_chars(v, vlen) <= META_VALUE_CHARS;
}

int spi__req_set_metadata(spi_request *r, const spi_limits *l, const char *k,
                        size_t klen, const char *v, size_t vlen) {
  if ((!k && klen) || (!v && vlen))
    return spi__req_fail(r, SPI_EINVAL, "metadata: NULL key or value");
  if (!meta_size_ok(k, klen, v, vlen))
    return spi__req_fail(r, SPI_ETOOBIG,
                         "metadata: keys are 1..%d characters and values at "
                         "most %d (UTF-8, at most 4 bytes a character)",
                         META_KEY_CHARS, META_VALUE_CHARS);
  if ((int64_t)r->nmeta >= l->max_metadata_pairs)
    return spi__req_fail(r, SPI_ETOOBIG, "metadata: more than %lld pairs",
                    (long long)l->max_metadata_pairs);
  if (memchr(k, 0, klen) || (vlen && memchr(v, 0, vlen)))
    return spi__req_fail(r, SPI_EPARSE, "metadata: NUL byte in key or value");
  /* Room for the pair first: a call that fails changes nothing. */
  const spi_mem *m = &r->engine->mem;
  if (spi__buf_reserve(&r->metabuf, m, klen + vlen + 2) != SPI_OK)
    return spi__req_fail(r, SPI_ENOMEM, "metadata: out of memory");
  for (size_t i = 0; i < sizeof META_KEYS / sizeof META_KEYS[0]; i++) {
    if (strlen(META_KEYS[i].key) != klen || memcmp(META_KEYS[i].key, k, klen))
      continue;
    int rc;
    if (META_KEYS[i].str_field) {
      rc = spi__req_set_str(r, l, META_KEYS[i].str_field, v, vlen);
    } else {
      int64_t n = 0;
      int ok = META_KEYS[i].boolean ? parse_bool_word(v, vlen, &n)
                                    : parse_i64(v, vlen, &n);
      if (!ok)
        return spi__req_fail(r, SPI_ETYPE, "metadata.%s: \"%.*s\" is not %s",
                        META_KEYS[i].key, (int)spi__utf8_fit(v, vlen, 32), v,
                        META_KEYS[i].boolean ? "true or false" : "an integer");
      rc = spi__req_set_int(r, META_KEYS[i].int_field, n);
    }
    if (rc != SPI_OK) {
      char tmp[SPI_ERRMSG_CAP];
      spi__errf(tmp, sizeof tmp, "metadata.%s", r->errmsg);
      memcpy(r->errmsg, tmp, sizeof tmp);
      return rc;
    }
    break;
  }
  spi__buf_append(&r->metabuf, m, k, klen);
  spi__buf_append_byte(&r->metabuf, m, 0);
  spi__buf_append(&r->metabuf, m, v, vlen);
  spi__buf_append_byte(&r->metabuf, m, 0);
  r->nmeta++;
  return SPI_OK;
}

int spi_request_set_metadata(spi_request *req, const char *key, size_t key_len,
                             const char *value, size_t value_len) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  spi_limits l = spi__req_limits(req);
  return spi__req_set_metadata(req, &l, key, key_len, value, value_len);
}

/* ----------------------------------------------------------------- getters */

int spi_request_get_str(const spi_request *req, int32_t field, const char **out,
                        size_t *out_len) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out || !out_len || field < SPI_REQ_MODEL || field > SPI_REQ_REQUEST_ID)
    return SPI_EINVAL;
  const spi_buf *b = &req->str[field];
  *out = b->len ? (const char *)b->data : "";
  *out_len = b->len;
  return SPI_OK;
}

int spi_request_get_int(const spi_request *req, int32_t field, int64_t *out,
                        int32_t *is_set) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  if (!out || field < SPI_REQ_PRIORITY || field >= SPI_REQ_INT_MAX)
    return SPI_EINVAL;
  *out = req->ival[field];
  if (is_set) *is_set = req->iset[field];
  return SPI_OK;
}

size_t spi_request_message_count(const spi_request *req) {
  return spi__request_ok(req) ? req->nmsgs : 0;
}
