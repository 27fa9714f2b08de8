/*
 * openai.c - fill a request from an OpenAI chat-completions or completions
 * JSON body.
 *
 * The reader is all-or-nothing: it resets the request first and resets it
 * again on any error, so a caller never routes half a request. Keys it does
 * not use (temperature, stop, response_format, ...) are accepted and ignored,
 * because gateways forward whatever clients send; keys it does use must have
 * the documented type.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"

typedef struct reader {
  spi_request *r;
  const spi_limits *l;
  spi_buf scratch;  /* assembled message content */
  spi_json_src src; /* the body's text, for numbers beyond 2^53 */
  size_t text;      /* bytes of text in scratch, for limits.max_field_bytes */
} reader;

static const cJSON *get(const cJSON *o, const char *key) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(o, key);
  return (it && !cJSON_IsNull(it)) ? it : NULL;
}

static int want_string(reader *rd, const cJSON *it, const char *path) {
  if (!cJSON_IsString(it) || !it->valuestring)
    return spi__req_fail(rd->r, SPI_ETYPE, "%s: must be a string", path);
  return SPI_OK;
}

static int want_int(reader *rd, const cJSON *it, const char *path,
                    int64_t *out) {
  if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) ||
      it->valuedouble != floor(it->valuedouble) ||
      fabs(it->valuedouble) > 9007199254740992.0)
    return spi__req_fail(rd->r, SPI_ETYPE, "%s: must be an integer", path);
  *out = (int64_t)it->valuedouble;
  return SPI_OK;
}

/* Prefix the message a setter left with the body path it came from. */
static int at(reader *rd, int rc, const char *path) {
  if (rc != SPI_OK && strncmp(rd->r->errmsg, path, strlen(path)) != 0) {
    char tmp[SPI_ERRMSG_CAP];
    spi__errf(tmp, sizeof tmp, "%s: %s", path, rd->r->errmsg);
    memcpy(rd->r->errmsg, tmp, sizeof tmp);
  }
  return rc;
}

static int set_string_field(reader *rd, const cJSON *body, const char *key,
                            int32_t field) {
  const cJSON *it = get(body, key);
  if (!it) return SPI_OK;
  int rc = want_string(rd, it, key);
  if (rc) return rc;
  return at(rd, spi__req_set_str(rd->r, rd->l, field, it->valuestring,
                                 strlen(it->valuestring)),
            key);
}

/* A key given twice would be read one way here and maybe the other way by
 * the server (Python's json keeps the last): refuse rather than guess, in
 * the body and in every object of it this reads (path says which). */
static int no_duplicate_keys(reader *rd, const cJSON *obj, const char *path) {
  const char *dup;
  int rc = spi__json_duplicate_key(obj, &rd->r->engine->mem, &dup);
  if (rc == SPI_ENOMEM)
    return spi__req_fail(rd->r, SPI_ENOMEM, "body: out of memory");
  if (rc != SPI_OK)
    return spi__req_fail(rd->r, SPI_EPARSE, "%s%s%.*s: duplicate key", path,
                         path[0] ? "." : "", SPI_CUT(dup, 64));
  return SPI_OK;
}

/* Text into the message's canonical content, 0x1B-0x1F escaped. */
static int put_text(reader *rd, const char *s, const char *path) {
  size_t len = strlen(s);
  if (spi__buf_append_text(&rd->scratch, &rd->r->engine->mem, s, len))
    return spi__req_fail(rd->r, SPI_ENOMEM, "%s: out of memory", path);
  rd->text += len;
  return SPI_OK;
}

/* A value that is not text - an image or other part, the tool calls, the
 * tool call id - as 0x1D, its canonical JSON, 0x1D. Canonical JSON escapes
 * every byte below 0x20 and escaped text has no raw 0x1D, so no text can
 * spell a frame and a frame's end is never in doubt. */
static int put_frame(reader *rd, const cJSON *v, const char *path) {
  const spi_mem *m = &rd->r->engine->mem;
  size_t start = rd->scratch.len;
  int rc = spi__buf_append_byte(&rd->scratch, m, 0x1D);
  if (!rc) rc = spi__canon_json_src(v, &rd->scratch, m, &rd->src);
  if (!rc) rc = spi__buf_append_byte(&rd->scratch, m, 0x1D);
  if (!rc) return SPI_OK;
  rd->scratch.len = start;
  if (rc == SPI_ENOMEM)
    return spi__req_fail(rd->r, SPI_ENOMEM, "%s: out of memory", path);
  return spi__req_fail(rd->r, rc, "%s: %s", path, spi_strerror(rc));
}

/* A part without "type" that vLLM still reads: its simple image, audio and
 * video forms, which carry the media under one of these names. */
static int typeless_media(const cJSON *part) {
  static const char *const FIELDS[] = {"image_url", "audio_url", "input_audio",
                                       "video_url"};
  for (size_t i = 0; i < sizeof FIELDS / sizeof FIELDS[0]; i++) {
    if (get(part, FIELDS[i])) return 1; /* present and not null */
  }
  return 0;
}

/* One part of an array content, read as vLLM reads it: a string is text;
 * a text part is its text, or nothing when the text is null; any other
 * part, a type-less media part included, is framed. */
static int content_part(reader *rd, const cJSON *part, const char *p) {
  if (cJSON_IsString(part)) return put_text(rd, part->valuestring, p);
  if (!cJSON_IsObject(part))
    return spi__req_fail(rd->r, SPI_ETYPE, "%s: must be a string or an object",
                         p);
  int dup = no_duplicate_keys(rd, part, p);
  if (dup) return dup;
  const cJSON *type = get(part, "type");
  if (!type && typeless_media(part)) return put_frame(rd, part, p);
  if (!type)
    return spi__req_fail(rd->r, SPI_EMISSING,
                         "%s.type: missing (and no image_url, audio_url, "
                         "input_audio or video_url)", p);
  if (!cJSON_IsString(type))
    return spi__req_fail(rd->r, SPI_ETYPE, "%s.type: must be a string", p);
  /* Images, audio, files: their canonical JSON stands for them, so two
   * prompts with different images never share a prefix. */
  if (strcmp(type->valuestring, "text") != 0) return put_frame(rd, part, p);
  /* A null text is skipped (vLLM does so); a missing one is an error. */
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
  if (cJSON_IsNull(text)) return SPI_OK;
  if (!cJSON_IsString(text))
    return spi__req_fail(rd->r, SPI_ETYPE, "%s.text: must be a string", p);
  return put_text(rd, text->valuestring, p);
}

/*
 * A message's canonical content (docs/cache-key.md): its content - a
 * string, an array of parts, or null - as text with the non-text parts
 * framed, then its tool_calls (an assistant's) and its tool_call_id (a tool
 * result's) framed, so two messages that differ in any of them differ.
 */
static int message_content(reader *rd, const cJSON *msg, const char *path) {
  spi__buf_clear(&rd->scratch);
  rd->text = 0;
  const cJSON *c = get(msg, "content");
  char p[96];
  int rc = SPI_OK;
  if (c && cJSON_IsString(c)) {
    snprintf(p, sizeof p, "%s.content", path);
    rc = put_text(rd, c->valuestring, p);
  } else if (c && !cJSON_IsArray(c)) {
    return spi__req_fail(rd->r, SPI_ETYPE,
                         "%s.content: must be a string, an array or null", path);
  }
  int i = 0;
  for (const cJSON *part = c && cJSON_IsArray(c) ? c->child : NULL;
       part && !rc; part = part->next, i++) {
    snprintf(p, sizeof p, "%s.content[%d]", path, i);
    rc = content_part(rd, part, p);
  }
  if (rc) return rc;
  /* Only the text counts toward the field limit: an image's base64 is
   * most of a body that limits.max_body_bytes already bounds. */
  if ((int64_t)rd->text > rd->l->max_field_bytes)
    return spi__req_fail(rd->r, SPI_ETOOBIG,
                         "%s.content: %zu bytes of text exceeds %lld", path,
                         rd->text, (long long)rd->l->max_field_bytes);
  const cJSON *calls = get(msg, "tool_calls");
  if (calls) {
    snprintf(p, sizeof p, "%s.tool_calls", path);
    if (!cJSON_IsArray(calls))
      return spi__req_fail(rd->r, SPI_ETYPE, "%s: must be an array", p);
    if ((rc = put_frame(rd, calls, p))) return rc;
  }
  const cJSON *id = get(msg, "tool_call_id");
  if (id) {
    snprintf(p, sizeof p, "%s.tool_call_id", path);
    if (!cJSON_IsString(id))
      return spi__req_fail(rd->r, SPI_ETYPE, "%s: must be a string", p);
    if ((rc = put_frame(rd, id, p))) return rc;
  }
  return SPI_OK;
}

static int read_messages(reader *rd, const cJSON *msgs) {
  if (!cJSON_IsArray(msgs))
    return spi__req_fail(rd->r, SPI_ETYPE, "messages: must be an array");
  int n = cJSON_GetArraySize(msgs);
  if (n == 0)
    return spi__req_fail(rd->r, SPI_EMISSING, "messages: must not be empty");
  if (n > rd->l->max_messages)
    return spi__req_fail(rd->r, SPI_ETOOBIG, "messages: %d exceeds %lld", n,
                         (long long)rd->l->max_messages);
  int i = 0;
  for (const cJSON *msg = msgs->child; msg; msg = msg->next, i++) {
    char path[64];
    snprintf(path, sizeof path, "messages[%d]", i);
    if (!cJSON_IsObject(msg))
      return spi__req_fail(rd->r, SPI_ETYPE, "%s: must be an object", path);
    int dup = no_duplicate_keys(rd, msg, path);
    if (dup) return dup;
    const cJSON *role = get(msg, "role");
    if (!role)
      return spi__req_fail(rd->r, SPI_EMISSING, "%s.role: missing", path);
    if (!cJSON_IsString(role))
      return spi__req_fail(rd->r, SPI_ETYPE, "%s.role: must be a string", path);
    int ri = spi__role_from_name(role->valuestring, strlen(role->valuestring));
    if (ri < 0)
      return spi__req_fail(rd->r, SPI_EUNKNOWN,
                           "%s.role: unknown role \"%.*s\"", path,
                           SPI_CUT(role->valuestring, 32));
    int rc = message_content(rd, msg, path);
    if (rc) return rc;
    rc = spi__req_add_message(rd->r, rd->l, ri, (const char *)rd->scratch.data,
                              rd->scratch.len, 1);
    if (rc) return at(rd, rc, path);
  }
  return SPI_OK;
}

/* A completions prompt: a string, one string in an array, or token ids. */
static int read_prompt(reader *rd, const cJSON *prompt) {
  if (cJSON_IsString(prompt))
    return at(rd, spi__req_set_str(rd->r, rd->l, SPI_REQ_PROMPT,
                                   prompt->valuestring,
                                   strlen(prompt->valuestring)),
              "prompt");
  if (!cJSON_IsArray(prompt))
    return spi__req_fail(rd->r, SPI_ETYPE,
                         "prompt: must be a string, an array of one string, "
                         "or an array of token ids");
  int n = cJSON_GetArraySize(prompt);
  if (n == 0) return spi__req_fail(rd->r, SPI_EMISSING, "prompt: empty array");
  if (cJSON_IsString(prompt->child)) {
    if (n != 1)
      return spi__req_fail(rd->r, SPI_ENOTSUP,
                           "prompt: %d prompts in one body; send one per request",
                           n);
    return read_prompt(rd, prompt->child);
  }
  if (cJSON_IsArray(prompt->child))
    return spi__req_fail(rd->r, SPI_ENOTSUP,
                         "prompt: batched token prompts; send one per request");
  if ((int64_t)n > rd->l->max_token_ids)
    return spi__req_fail(rd->r, SPI_ETOOBIG, "prompt: %d token ids exceeds %lld",
                         n, (long long)rd->l->max_token_ids);
  /* Token ids: stage them in scratch, then copy in one call. */
  spi__buf_clear(&rd->scratch);
  if (spi__buf_reserve(&rd->scratch, &rd->r->engine->mem,
                       (size_t)n * sizeof(uint32_t)))
    return spi__req_fail(rd->r, SPI_ENOMEM, "prompt: out of memory");
  uint32_t *ids = (uint32_t *)(void *)rd->scratch.data;
  int i = 0;
  for (const cJSON *t = prompt->child; t; t = t->next, i++) {
    double v = cJSON_IsNumber(t) ? t->valuedouble : -1;
    if (!cJSON_IsNumber(t) || v < 0 || v > 4294967295.0 || v != floor(v))
      return spi__req_fail(rd->r, SPI_ETYPE,
                           "prompt[%d]: token ids are integers in [0, 2^32)", i);
    ids[i] = (uint32_t)v;
  }
  return at(rd, spi__req_set_tokens(rd->r, rd->l, ids, (size_t)n), "prompt");
}

static int read_metadata(reader *rd, const cJSON *md) {
  if (!cJSON_IsObject(md))
    return spi__req_fail(rd->r, SPI_ETYPE, "metadata: must be an object");
  int dup = no_duplicate_keys(rd, md, "metadata");
  if (dup) return dup;
  for (const cJSON *kv = md->child; kv; kv = kv->next) {
    char path[96];
    spi__errf(path, sizeof path, "metadata.%.*s",
              SPI_CUT(kv->string ? kv->string : "", 64));
    if (!cJSON_IsString(kv))
      return spi__req_fail(rd->r, SPI_ETYPE, "%s: values must be strings", path);
    int rc = spi__req_set_metadata(rd->r, rd->l, kv->string, strlen(kv->string),
                                   kv->valuestring, strlen(kv->valuestring));
    if (rc) return at(rd, rc, "metadata");
  }
  return SPI_OK;
}

static int read_body(reader *rd, const cJSON *body, int32_t kind) {
  int dup = no_duplicate_keys(rd, body, "");
  if (dup) return dup;
  const cJSON *msgs = get(body, "messages");
  const cJSON *prompt = get(body, "prompt");
  if (kind == SPI_OPENAI_AUTO) kind = msgs ? SPI_OPENAI_CHAT
                                           : SPI_OPENAI_COMPLETIONS;
  const cJSON *model = get(body, "model");
  if (!model) return spi__req_fail(rd->r, SPI_EMISSING, "model: missing");
  int rc = set_string_field(rd, body, "model", SPI_REQ_MODEL);
  if (rc) return rc;
  if (kind == SPI_OPENAI_CHAT) {
    if (!msgs) return spi__req_fail(rd->r, SPI_EMISSING, "messages: missing");
    if ((rc = read_messages(rd, msgs))) return rc;
  } else {
    if (!prompt) return spi__req_fail(rd->r, SPI_EMISSING, "prompt: missing");
    if ((rc = read_prompt(rd, prompt))) return rc;
  }
  const cJSON *tools = get(body, "tools");
  if (tools) {
    if (!cJSON_IsArray(tools))
      return spi__req_fail(rd->r, SPI_ETYPE, "tools: must be an array");
    spi_buf canon = {0};
    rc = spi__canon_json_src(tools, &canon, &rd->r->engine->mem, &rd->src);
    if (rc == SPI_OK)
      rc = spi__req_set_str(rd->r, rd->l, SPI_REQ_TOOLS_JSON,
                            (const char *)canon.data, canon.len);
    else
      spi__req_fail(rd->r, rc, "tools: %s", spi_strerror(rc));
    spi__buf_free(&canon, &rd->r->engine->mem);
    if (rc) return at(rd, rc, "tools");
  }
  const cJSON *stream = get(body, "stream");
  if (stream) {
    if (!cJSON_IsBool(stream))
      return spi__req_fail(rd->r, SPI_ETYPE, "stream: must be true or false");
    spi__req_set_int(rd->r, SPI_REQ_STREAM, cJSON_IsTrue(stream) ? 1 : 0);
  }
  /* max_completion_tokens supersedes max_tokens on the chat endpoint. */
  static const char *const caps[] = {"max_tokens", "max_completion_tokens"};
  for (int i = 0; i < 2; i++) {
    const cJSON *it = get(body, caps[i]);
    int64_t v = 0;
    if (!it) continue;
    if ((rc = want_int(rd, it, caps[i], &v))) return rc;
    if ((rc = at(rd, spi__req_set_int(rd->r, SPI_REQ_MAX_OUTPUT_TOKENS, v),
                 caps[i])))
      return rc;
  }
  if ((rc = set_string_field(rd, body, "service_tier", SPI_REQ_SERVICE_TIER)))
    return rc;
  if ((rc = set_string_field(rd, body, "user", SPI_REQ_USER))) return rc;
  const cJSON *prio = get(body, "priority");
  if (prio) {
    int64_t v = 0;
    if ((rc = want_int(rd, prio, "priority", &v))) return rc;
    if ((rc = at(rd, spi__req_set_int(rd->r, SPI_REQ_PRIORITY, v), "priority")))
      return rc;
  }
  const cJSON *md = get(body, "metadata");
  if (md && (rc = read_metadata(rd, md))) return rc;
  return SPI_OK;
}

int spi_request_parse_openai(spi_request *req, const char *json, size_t len,
                             int32_t kind) {
  if (!spi__request_ok(req)) return SPI_EMISUSE;
  spi__req_clear(req);
  if (kind < SPI_OPENAI_AUTO || kind > SPI_OPENAI_COMPLETIONS)
    return spi__req_fail(req, SPI_EINVAL, "kind %d is not valid", (int)kind);
  spi_limits l = spi__req_limits(req);
  cJSON *body = NULL;
  int rc = spi__json_parse_object(json, len, (size_t)l.max_body_bytes, "body",
                                  &body, req->errmsg, sizeof req->errmsg);
  if (rc != SPI_OK) return rc;
  reader rd = {req, &l, {0}, {0}, 0};
  spi__json_src_init(&rd.src, json, len, body);
  rc = read_body(&rd, body, kind);
  spi__buf_free(&rd.scratch, &req->engine->mem);
  spi__json_src_free(&rd.src, &req->engine->mem);
  cJSON_Delete(body);
  if (rc != SPI_OK) {
    char keep[SPI_ERRMSG_CAP];
    memcpy(keep, req->errmsg, sizeof keep);
    spi__req_clear(req);
    memcpy(req->errmsg, keep, sizeof keep);
    return rc;
  }
  req->errmsg[0] = '\0';
  return SPI_OK;
}
