/*
 * continuation.c - spi_replay_continuation(): the request that resumes an
 * interrupted stream on another replica.
 *
 * Chat bodies get what was streamed as a final assistant message (or added
 * to a trailing assistant message) with "continue_final_message": true and
 * "add_generation_prompt": false, which vLLM and compatible servers read as
 * "continue this message"; completions bodies get it appended to the prompt
 * (text to a string prompt, token ids to a token-id prompt). max_tokens and
 * max_completion_tokens shrink by the tokens the client already has, and
 * vLLM's min_tokens with them.
 *
 * Output that decoding constrained (response_format json_object or
 * json_schema, vLLM's guided_* keys, structured_outputs) cannot be resumed
 * mid-way, so such a body is replayed from scratch: the original bytes,
 * flagged SPI_ENVELOPE_FROM_SCRATCH. So is a body whose partial output is
 * in a form the prompt cannot take (token ids for a chat or text prompt,
 * text for a token-id prompt).
 *
 * Every number of the body comes back as the client spelled it (its
 * literal in the body's text), not as cJSON would print its double: an
 * integer beyond 2^53, a seed say, keeps its value, and tools keep the text
 * their cache key is made from. Only a budget the offset reduced, and
 * token ids appended to a prompt, are written anew.
 *
 * Pure: cJSON's own allocator, no engine, no state.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "spi_internal.h"

/* Keys that constrain decoding (vLLM's extra parameters). */
static const char *const GUIDED_KEYS[] = {
    "guided_json",   "guided_regex",    "guided_grammar",
    "guided_choice", "guided_decoding", "structured_outputs",
};

/* Well-formed UTF-8 without NUL (cJSON strings end at a NUL). */
static int utf8_ok(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c == 0) return 0;
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t len;
    uint32_t min, cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      min = 0x80;
      cp = c & 0x1fu;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      min = 0x800;
      cp = c & 0x0fu;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      min = 0x10000;
      cp = c & 0x07u;
    } else {
      return 0;
    }
    if (n - i < len) return 0;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    i += len;
  }
  return 1;
}

static int has_dup_keys(const cJSON *obj) {
  for (const cJSON *a = obj->child; a; a = a->next)
    for (const cJSON *b = a->next; b; b = b->next)
      if (a->string && b->string && strcmp(a->string, b->string) == 0) return 1;
  return 0;
}

/* Decoding constrained by a schema, a grammar or a choice. */
static int is_guided(const cJSON *root) {
  for (size_t i = 0; i < sizeof GUIDED_KEYS / sizeof GUIDED_KEYS[0]; i++) {
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(root, GUIDED_KEYS[i]);
    if (it && !cJSON_IsNull(it)) return 1;
  }
  const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
  const cJSON *t =
      cJSON_IsObject(rf) ? cJSON_GetObjectItemCaseSensitive(rf, "type") : NULL;
  if (cJSON_IsString(t) && (strcmp(t->valuestring, "json_schema") == 0 ||
                            strcmp(t->valuestring, "json_object") == 0))
    return 1;
  return 0;
}

/* Put item under key, replacing what was there (in its place). Takes item
 * either way. Not cJSON_ReplaceItemInObject: cJSON 1.7.15 ignores a failed
 * copy of the key there and leaves the item with no name, which printed
 * {"":...} with SPI_OK when that one allocation failed. */
static int set_item(cJSON *obj, const char *key, cJSON *item) {
  if (!item) return SPI_ENOMEM;
  cJSON *old = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!old) {
    if (cJSON_AddItemToObject(obj, key, item)) return SPI_OK;
    cJSON_Delete(item);
    return SPI_ENOMEM;
  }
  size_t n = strlen(key) + 1;
  char *name = cJSON_malloc(n);
  if (!name) {
    cJSON_Delete(item);
    return SPI_ENOMEM;
  }
  memcpy(name, key, n);
  if (item->string && !(item->type & cJSON_StringIsConst))
    cJSON_free(item->string);
  item->string = name;
  item->type &= ~cJSON_StringIsConst;
  /* Relinks and frees old; allocates nothing. */
  if (cJSON_ReplaceItemViaPointer(obj, old, item)) return SPI_OK;
  cJSON_Delete(item);
  return SPI_ENOMEM;
}

/* A cJSON string of a + b. */
static cJSON *joined(const char *a, const char *b, size_t blen) {
  size_t alen = strlen(a);
  char *s = malloc(alen + blen + 1);
  if (!s) return NULL;
  memcpy(s, a, alen);
  memcpy(s + alen, b, blen);
  s[alen + blen] = '\0';
  cJSON *item = cJSON_CreateString(s);
  free(s);
  return item;
}

/* Add item to obj under key. cJSON leaves an item it could not add (the
 * copy of the key failed) to the caller: it is freed here. 1 if added. */
static int add_owned(cJSON *obj, const char *key, cJSON *item) {
  if (item && cJSON_AddItemToObject(obj, key, item)) return 1;
  cJSON_Delete(item);
  return 0;
}

static cJSON *text_of(const spi_envelope *env) {
  return joined("", env->partial_text, env->partial_text_len);
}

static int is_role(const cJSON *msg, const char *role) {
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(msg, "role");
  return cJSON_IsString(r) && strcmp(r->valuestring, role) == 0;
}

/* A message with tool calls is an action, not text to continue. */
static int has_tool_calls(const cJSON *msg) {
  const cJSON *tc = cJSON_GetObjectItemCaseSensitive(msg, "tool_calls");
  return tc && !cJSON_IsNull(tc) &&
         !(cJSON_IsArray(tc) && cJSON_GetArraySize(tc) == 0);
}

static int continue_chat(cJSON *root, const spi_envelope *env) {
  cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
  if (!cJSON_IsArray(msgs)) return SPI_EPARSE;
  cJSON *last = NULL;
  for (cJSON *m = msgs->child; m; m = m->next) last = m;
  int rc;
  if (last && cJSON_IsObject(last) && is_role(last, "assistant") &&
      !has_tool_calls(last) && !has_dup_keys(last)) {
    cJSON *content = cJSON_GetObjectItemCaseSensitive(last, "content");
    if (cJSON_IsString(content)) {
      rc = set_item(last, "content",
                    joined(content->valuestring, env->partial_text,
                           env->partial_text_len));
    } else if (!content || cJSON_IsNull(content)) {
      rc = set_item(last, "content", text_of(env));
    } else if (cJSON_IsArray(content)) {
      cJSON *part = cJSON_CreateObject();
      if (!part || !cJSON_AddStringToObject(part, "type", "text") ||
          !add_owned(part, "text", text_of(env)) ||
          !cJSON_AddItemToArray(content, part)) {
        cJSON_Delete(part);
        return SPI_ENOMEM;
      }
      rc = SPI_OK;
    } else {
      return SPI_EPARSE;
    }
  } else {
    cJSON *m = cJSON_CreateObject();
    if (!m || !cJSON_AddStringToObject(m, "role", "assistant") ||
        !add_owned(m, "content", text_of(env)) ||
        !cJSON_AddItemToArray(msgs, m)) {
      cJSON_Delete(m);
      return SPI_ENOMEM;
    }
    rc = SPI_OK;
  }
  if (rc == SPI_OK)
    rc = set_item(root, "continue_final_message", cJSON_CreateTrue());
  if (rc == SPI_OK)
    rc = set_item(root, "add_generation_prompt", cJSON_CreateFalse());
  return rc;
}

static int is_token_array(const cJSON *a) {
  if (!cJSON_IsArray(a) || !a->child) return 0;
  for (const cJSON *t = a->child; t; t = t->next) {
    if (!cJSON_IsNumber(t)) return 0;
    double v = t->valuedouble;
    if (!(v >= 0 && v <= 4294967295.0) || v != floor(v)) return 0;
  }
  return 1;
}

/* SPI_OK, SPI_EPARSE, SPI_ENOMEM, or 1: the partial output does not fit
 * the prompt's form (replay from scratch). */
static int continue_completion(cJSON *root, const spi_envelope *env) {
  cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
  /* A one-element list is one prompt. */
  cJSON *holder = root;
  const char *key = "prompt";
  if (cJSON_IsArray(prompt) && cJSON_GetArraySize(prompt) == 1 &&
      (cJSON_IsString(prompt->child) || is_token_array(prompt->child))) {
    holder = prompt;
    prompt = prompt->child;
    key = NULL;
  }
  cJSON *next;
  if (cJSON_IsString(prompt)) {
    if (!env->partial_text_len) return 1;
    next =
        joined(prompt->valuestring, env->partial_text, env->partial_text_len);
  } else if (is_token_array(prompt)) {
    if (!env->partial_token_count) return 1;
    next = cJSON_Duplicate(prompt, 1);
    for (size_t i = 0; next && i < env->partial_token_count; i++) {
      cJSON *n = cJSON_CreateNumber((double)env->partial_tokens[i]);
      if (!n || !cJSON_AddItemToArray(next, n)) {
        cJSON_Delete(n);
        cJSON_Delete(next);
        next = NULL;
      }
    }
  } else {
    return SPI_EPARSE; /* absent, a batch, or not a prompt */
  }
  if (!next) return SPI_ENOMEM;
  if (key) return set_item(holder, key, next);
  if (!cJSON_ReplaceItemInArray(holder, 0, next)) {
    cJSON_Delete(next);
    return SPI_ENOMEM;
  }
  return SPI_OK;
}

/* ---------------------------------------- numbers as the client wrote them */

/* Whether s[0..n) is a number as JSON's grammar has it, of any magnitude.
 * cJSON also reads "01", "1." and "1.e5"; such a literal is not kept. */
static int strict_number(const char *s, size_t n) {
  size_t i = 0, d;
  if (i < n && s[i] == '-') i++;
  if (i < n && s[i] == '0') {
    i++;
  } else {
    for (d = i; i < n && s[i] >= '0' && s[i] <= '9';) i++;
    if (i == d) return 0;
  }
  if (i < n && s[i] == '.') {
    for (d = ++i; i < n && s[i] >= '0' && s[i] <= '9';) i++;
    if (i == d) return 0;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    i++;
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    for (d = i; i < n && s[i] >= '0' && s[i] <= '9';) i++;
    if (i == d) return 0;
  }
  return i == n;
}

static void *cj_alloc(void *ud, size_t n) {
  (void)ud;
  return cJSON_malloc(n);
}

static void cj_free(void *ud, void *p) {
  (void)ud;
  cJSON_free(p);
}

/* Give each number node of the list v (and below) its literal, as a copy in
 * valuestring: cJSON leaves that unused for numbers, copies it in
 * cJSON_Duplicate and frees it in cJSON_Delete. A number whose literal is
 * not known, or not strict JSON, gets none and prints from its double.
 * Recursion is bounded by cJSON's nesting limit. */
static int attach_literals(cJSON *v, spi_json_src *src, const spi_mem *m) {
  for (; v; v = v->next) {
    if ((v->type & 0xff) == cJSON_Number && !v->valuestring) {
      const char *lit = NULL;
      size_t n = 0;
      int rc = spi__json_src_literal(src, v, m, &lit, &n);
      if (rc == SPI_ENOMEM) return rc;
      if (rc == 1 && strict_number(lit, n)) {
        char *copy = cJSON_malloc(n + 1);
        if (!copy) return SPI_ENOMEM;
        memcpy(copy, lit, n);
        copy[n] = '\0';
        v->valuestring = copy;
      }
    }
    int rc = attach_literals(v->child, src, m);
    if (rc != SPI_OK) return rc;
  }
  return SPI_OK;
}

/* Before any change to the tree: its numbers' literals, from the body. */
static int keep_literals(cJSON *root, const spi_envelope *env) {
  const spi_mem m = {cj_alloc, cj_free, NULL};
  spi_json_src src;
  spi__json_src_init(&src, env->body, env->body_len, root);
  int rc = attach_literals(root->child, &src, &m);
  spi__json_src_free(&src, &m);
  return rc;
}

/* Before printing: a number with its literal becomes a raw node, which
 * cJSON prints as that text. */
static void literals_as_raw(cJSON *v) {
  for (; v; v = v->next) {
    if ((v->type & 0xff) == cJSON_Number && v->valuestring)
      v->type = (v->type & ~0xff) | cJSON_Raw;
    literals_as_raw(v->child);
  }
}

/* Shrink the output budget by what the client already has. */
static int reduce_budget(cJSON *root, uint64_t offset) {
  static const char *const caps[] = {"max_tokens", "max_completion_tokens"};
  for (int i = 0; i < 3; i++) {
    const char *k = i < 2 ? caps[i] : "min_tokens";
    cJSON *it = cJSON_GetObjectItemCaseSensitive(root, k);
    if (!it || cJSON_IsNull(it)) continue;
    if (!cJSON_IsNumber(it)) return SPI_EPARSE;
    double v = it->valuedouble;
    if (!(v >= 0) || v != floor(v) || v > 9007199254740992.0) return SPI_EPARSE;
    double left = v - (double)offset;
    if (i < 2 && left < 1) return SPI_ERANGE;
    if (left < 0) left = 0;
    if (left == v) continue; /* as the client wrote it */
    cJSON_free(it->valuestring);
    it->valuestring = NULL;
    cJSON_SetNumberValue(it, left);
  }
  return SPI_OK;
}

static int emit(const char *text, size_t len, char *buf, size_t cap,
                size_t *needed) {
  if (needed) *needed = len;
  if (cap < len + 1) return SPI_EBUFSIZE;
  memcpy(buf, text, len);
  buf[len] = '\0';
  return SPI_OK;
}

/* The body as a JSON object with no key twice. Every fault of the body is
 * SPI_EPARSE; a \u0000 in a string is one, since cJSON would cut the string
 * there and the continuation would resume a different request. SPI_ENOMEM
 * when cJSON ran out. */
static int parse_body(const spi_envelope *env, cJSON **out) {
  *out = NULL;
  if (!env->body || env->body_len == 0) return SPI_EPARSE;
  int rc = spi__json_parse_as(env->body, env->body_len, cJSON_Object, "body",
                              out, NULL, 0);
  if (rc == SPI_OK && has_dup_keys(*out)) {
    cJSON_Delete(*out);
    *out = NULL;
    rc = SPI_EPARSE;
  }
  return rc == SPI_OK || rc == SPI_ENOMEM ? rc : SPI_EPARSE;
}

int spi_replay_continuation(const spi_envelope *env, char *buf, size_t cap,
                            size_t *needed, uint32_t *flags) {
  if (!env || env->struct_size < sizeof *env || (!buf && cap))
    return SPI_EINVAL;
  if ((env->partial_text_len && !env->partial_text) ||
      (env->partial_token_count && !env->partial_tokens) ||
      (env->body_len && !env->body))
    return SPI_EINVAL;
  if (env->openai_kind < SPI_OPENAI_AUTO ||
      env->openai_kind > SPI_OPENAI_COMPLETIONS)
    return SPI_EINVAL;
  if (env->partial_text_len &&
      !utf8_ok((const uint8_t *)env->partial_text, env->partial_text_len))
    return SPI_EINVAL;
  cJSON *root = NULL;
  int rc = parse_body(env, &root);
  if (rc != SPI_OK) return rc;
  uint32_t out_flags = env->flags;
  int kind = env->openai_kind;
  if (kind == SPI_OPENAI_AUTO)
    kind = cJSON_GetObjectItemCaseSensitive(root, "messages")
               ? SPI_OPENAI_CHAT
               : SPI_OPENAI_COMPLETIONS;
  int streamed =
      env->partial_text_len || env->partial_token_count || env->stream_offset;
  int scratch = (out_flags & SPI_ENVELOPE_FROM_SCRATCH) || is_guided(root);
  if (!scratch && streamed) rc = keep_literals(root, env);
  if (rc == SPI_OK && !scratch && streamed) {
    if (kind == SPI_OPENAI_CHAT)
      rc = env->partial_text_len ? continue_chat(root, env) : 1;
    else
      rc = continue_completion(root, env);
    if (rc == 1) {
      scratch = 1;
      rc = SPI_OK;
    } else if (rc == SPI_OK) {
      rc = reduce_budget(root, env->stream_offset);
    }
  }
  if (scratch) out_flags |= SPI_ENVELOPE_FROM_SCRATCH;
  if (flags) *flags = out_flags;
  if (rc == SPI_OK) {
    if (scratch || !streamed) {
      /* The request as it came: nothing to continue. */
      rc = emit(env->body, env->body_len, buf, cap, needed);
    } else {
      literals_as_raw(root->child);
      char *text = spi__cjson_print(root);
      rc = text ? emit(text, strlen(text), buf, cap, needed) : SPI_ENOMEM;
      cJSON_free(text);
    }
  }
  cJSON_Delete(root);
  return rc;
}
