/*
 * trace_jsonl.c - request traces as JSON lines. Two schemas share the
 * fields timestamp, input_length, output_length and hash_ids (a prompt's
 * blocks, equal ids at equal positions a shared prefix):
 *
 *   Mooncake   timestamps in ms; no sessions (a conversation is the
 *              requests that share a first block); 512-token blocks.
 *   Bailian    (Qwen's traces) also chat_id and parent_chat_id: timestamps
 *              in s, a conversation is a chain of parents; 16-token blocks.
 *
 * The first object line that gives a request decides the schema (the lines
 * before it are bad lines, trace_read.c): Bailian when it names chat_id. The tokens an id stands for are found from the lengths
 * (trace_read.c), not assumed. Other fields are ignored.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "trace_read.h"

/* The latest arrival a line may give, in ns (about 285 years): fits in
 * int64 whatever the unit. */
#define TRACE_MAX_NS 9e18

static const char *skip_ws(const char *p, const char *e) {
  while (p < e && (*p == ' ' || *p == '\t')) p++;
  return p;
}

/* A JSON number that is a plain integer of at most 15 digits (so exact as
 * the double cJSON would read), or NULL. */
static const char *plain_uint(const char *p, const char *e, double *v) {
  uint64_t x = 0;
  int nd = 0;
  if (p + 1 < e && p[0] == '0' && p[1] >= '0' && p[1] <= '9') return NULL;
  for (; p < e && *p >= '0' && *p <= '9'; p++) {
    if (++nd > 15) return NULL;
    x = x * 10 + (uint64_t)(*p - '0');
  }
  if (!nd || (p < e && (*p == '.' || *p == 'e' || *p == 'E'))) return NULL;
  *v = (double)x;
  return p;
}

/* The ids of a hash_ids array at p (after its '['), appended to blocks. */
static const char *plain_ids(sim_trace *t, const char *p, const char *e, int *oom) {
  p = skip_ws(p, e);
  if (p < e && *p == ']') return p + 1;
  for (;;) {
    double id;
    if (!(p = plain_uint(skip_ws(p, e), e, &id))) return NULL;
    if (sim_trace_add_block(t, (uint64_t)id)) return *oom = 1, NULL;
    p = skip_ws(p, e);
    if (p < e && *p == ',') p++;
    else return p < e && *p == ']' ? p + 1 : NULL;
  }
}

/* A Mooncake line in its usual shape read without building a JSON tree
 * (most of the time of reading a trace went to that): an object of exactly
 * the four fields, each once, plain integers, nothing after it. 1 when the
 * line had that shape (v: timestamp, input and output length; its ids
 * appended to blocks), 0 when not (nothing kept: cJSON reads it, with the
 * same result for every line both can read), -1 out of memory. */
static int plain_mooncake(sim_trace *t, const char *line, size_t len, double v[3]) {
  static const char *const KEYS[4] = {"timestamp", "input_length", "output_length",
                                      "hash_ids"};
  const char *p = skip_ws(line, line + len), *e = line + len;
  size_t nb0 = t->nb;
  int seen = 0, oom = 0;
  if (p == e || *p++ != '{') return 0;
  while (p) {
    p = skip_ws(p, e);
    const char *k = p + 1, *q = k;
    while (q < e && *q != '"' && *q != '\\') q++;
    int key = -1;
    for (int i = 0; i < 4 && p < e && *p == '"' && q < e && *q == '"'; i++)
      if (strlen(KEYS[i]) == (size_t)(q - k) && !memcmp(k, KEYS[i], (size_t)(q - k))) key = i;
    if (key < 0 || (seen >> key & 1)) break;
    seen |= 1 << key;
    p = skip_ws(q + 1, e);
    if (p == e || *p++ != ':') break;
    p = skip_ws(p, e);
    if (key < 3) p = plain_uint(p, e, &v[key]);
    else p = p < e && *p == '[' ? plain_ids(t, p + 1, e, &oom) : NULL;
    if (!p) break;
    p = skip_ws(p, e);
    if (p < e && *p == ',') { p++; continue; }
    if (p < e && *p == '}' && skip_ws(p + 1, e) == e && seen == 15) return 1;
    break;
  }
  t->nb = nb0;
  return oom ? -1 : 0;
}

static double unit_ns(const trace_reader *rd) {
  return rd->fmt == TRACE_BAILIAN ? 1e9 : 1e6;
}

/* The request of a line whose ids are at blocks [nb0, nb): v holds its
 * timestamp, input and output length. */
static int add_line(trace_reader *rd, size_t nb0, const double v[3], size_t lineno,
                    uint64_t session) {
  sim_trace *t = rd->t;
  double ns = v[0] * unit_ns(rd);
  if (!(v[0] >= 0 && ns <= TRACE_MAX_NS) || v[1] < 1 || v[2] < 1 || v[1] > 4e6 || v[2] > 1e6) {
    t->nb = nb0;
    return sim_trace_note_bad(t, lineno, "missing or out-of-range field"), 0;
  }
  /* An id stands for 16 tokens at the least (trace_read.c): more ids than
   * that makes of input_length is no prompt of that length, and would
   * give the library more token ids than it takes. */
  if ((double)(t->nb - nb0) > ceil(v[1] / TRACE_MIN_ID_TOKENS)) {
    t->nb = nb0;
    return sim_trace_note_bad(t, lineno, "more hash_ids than input_length has 16-token blocks"),
           0;
  }
  sim_trace_req *q = sim_trace_add_req(t);
  if (!q) return -1;
  q->block_off = nb0;
  q->arrival_ns = (int64_t)ns;
  q->in_tokens = (uint32_t)v[1];
  q->out_tokens = (uint32_t)v[2];
  q->nblocks = (uint32_t)(t->nb - q->block_off);
  q->session = session;
  t->n++;
  return 0;
}

/* ------------------------------------------------- Bailian conversations */

/* The conversation of chat `chat` whose parent is `parent` (negative: a
 * first turn): its parent's, or the parent itself when that was not seen.
 * 0, or -1 out of memory. */
static int chat_session(trace_map *c, double chat, double parent, uint64_t *session) {
  uint64_t key = (uint64_t)chat + 1, root = (uint64_t)chat;
  if (parent >= 0) {
    root = (uint64_t)parent;
    if (c->cap) {
      size_t s = trace_map_slot(c, (uint64_t)parent + 1);
      if (c->key[s]) root = c->val[s];
    }
  }
  *session = sim_mix64(root ^ 0x43484154ull); /* "CHAT" */
  if (trace_map_reserve(c)) return -1;
  size_t s = trace_map_slot(c, key);
  if (!c->key[s]) c->n++;
  c->key[s] = key;
  c->val[s] = root;
  return 0;
}

/* -------------------------------------------------------------- lines */

static int valid_id(const cJSON *v) {
  return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0;
}

/* The session of a line: Bailian's chain when it names its chat, else none
 * (0; trace_read.c gives Mooncake's). 1 when the chat fields are there but
 * are not ids. */
static int line_session(trace_reader *rd, const cJSON *o, uint64_t *session, int *oom) {
  const cJSON *chat = cJSON_GetObjectItemCaseSensitive(o, "chat_id");
  const cJSON *parent = cJSON_GetObjectItemCaseSensitive(o, "parent_chat_id");
  if (rd->fmt == TRACE_UNKNOWN) rd->fmt = chat ? TRACE_BAILIAN : TRACE_MOONCAKE;
  *session = 0;
  if (rd->fmt != TRACE_BAILIAN) return 0;
  if (!chat) return *session = sim_mix64(rd->t->n ^ 0x4f574e31ull), 0; /* its own */
  double p = -1;
  if (cJSON_IsNumber(parent) && parent->valuedouble >= 0) {
    if (!valid_id(parent)) return 1;
    p = parent->valuedouble;
  } else if (parent && !cJSON_IsNumber(parent) && !cJSON_IsNull(parent)) {
    return 1;
  }
  if (!valid_id(chat)) return 1;
  if (chat_session(&rd->chats, chat->valuedouble, p, session)) *oom = 1;
  return 0;
}

/* A line cJSON reads: any order, other fields, numbers in any notation. */
static int json_line(trace_reader *rd, const char *line, size_t len, size_t lineno) {
  sim_trace *t = rd->t;
  cJSON *o = cJSON_ParseWithLength(line, len);
  if (!o) return sim_trace_note_bad(t, lineno, "malformed JSON"), 0;
  const char *const names[3] = {"timestamp", "input_length", "output_length"};
  double v[3];
  for (int k = 0; k < 3; k++) {
    const cJSON *f = cJSON_GetObjectItemCaseSensitive(o, names[k]);
    v[k] = cJSON_IsNumber(f) ? f->valuedouble : -1;
  }
  const cJSON *ids = cJSON_GetObjectItemCaseSensitive(o, "hash_ids");
  int have_ids = cJSON_IsArray(ids);
  uint64_t session;
  int oom = 0, bad = line_session(rd, o, &session, &oom);
  size_t nb0 = t->nb;
  const cJSON *id;
  if (!bad && have_ids)
    cJSON_ArrayForEach(id, ids) {
      if (!valid_id(id)) { bad = 2; break; }
      if (sim_trace_add_block(t, (uint64_t)id->valuedouble)) { oom = 1; break; }
    }
  cJSON_Delete(o);
  if (oom) return -1;
  if (bad || !have_ids) {
    t->nb = nb0;
    return sim_trace_note_bad(t, lineno, bad == 2 ? "hash_ids holds a non-id"
                                         : bad ? "chat_id or parent_chat_id is not an id"
                                               : "missing or out-of-range field"), 0;
  }
  return add_line(rd, nb0, v, lineno, session);
}

int trace_jsonl_line(trace_reader *rd, const char *line, size_t len, size_t lineno) {
  double v[3];
  size_t nb0 = rd->t->nb;
  int plain = rd->fmt != TRACE_BAILIAN ? plain_mooncake(rd->t, line, len, v) : 0;
  if (plain < 0) return -1;
  if (plain) {
    rd->fmt = TRACE_MOONCAKE;
    return add_line(rd, nb0, v, lineno, 0);
  }
  return json_line(rd, line, len, lineno);
}
