/*
 * store_redis.c - the "redis" replay store: a queue store
 * (spotinfer_module.h) on Redis Streams, shared by every process that opens
 * it with the same address and key_prefix.
 *
 * Keys (P = key_prefix):
 *   P lane:1, lane:2, lane:3  a stream per class lane (gold, silver,
 *                             bronze), one consumer group ("group"); an
 *                             entry holds k (key), a (failed attempts),
 *                             dl (deadline, ms, 0 none), l (lane), e (the
 *                             envelope, encoded below)
 *   P leases    sorted set: "lane:id" of every claimed entry by lease end
 *   P delayed   sorted set: nacked entries (whole, msgpack) by visible time
 *   P keys      hash: key -> "lane:id", "delayed" or "dead" (kept while
 *               in the dead stream), every key the queue holds
 *   P done      sorted set: remembered keys (acked, dead letters trimmed
 *               from the dead stream), newest last,
 *               trimmed to replay.max_acked_keys
 *   P dead      stream of dead letters, trimmed to replay.max_dead; why
 *               says why: attempts, deadline, refused (the library
 *               refused the envelope: a nack with dead right after the
 *               claim), malformed (not as an enqueue writes an entry:
 *               dead-lettered by claim or when its lease or backoff ends)
 *   P bytes     bytes held (keys and envelopes), for replay.max_bytes
 *   P seq       counter ordering the done set
 *   P finished  sorted set: "lane:id:what" of claims acked (what 0),
 *               nacked (1) or dead-lettered (2), by when it is forgotten
 *               (the claim's lease length after): a finish repeated after
 *               its answer was lost answers as the first did; at most
 *               replay.max_acked_keys, those due first trimmed first
 *
 * Each call is one Lua script (store_lua.h), so it is atomic on the server:
 * an enqueue is a duplicate check and XADD at once (idempotent on the
 * key), a claim is XREADGROUP for this consumer plus a lease, an ack is
 * XACK + XDEL + remembering the key, a nack moves the entry to the delayed
 * set (or the dead stream). Leases are per claim (spi_replay_claim's
 * lease_ms), so expiry is kept in the leases set by lease end rather than
 * by XAUTOCLAIM's idle time: any consumer's next call puts an expired
 * entry back at its lane's tail as a failed attempt, where the next claim,
 * by whichever process, takes it; the consumer group's pending list still
 * shows who holds what (XPENDING). Times are the callers' clocks, in ms.
 * Every process reads as a consumer of its own; those with nothing pending
 * that have not read for consumer_idle_ms are removed from the groups when
 * a connection is set up and by a tick, at most every consumer_idle_ms
 * (at once for a new store), at most REAP_MAX a time (listed by XINFO
 * CONSUMERS, removed by SPR_LUA_REAP), so the groups do not keep one for
 * every start.
 *
 * The store keeps one connection (redis_conn.h) behind a mutex; claim ids
 * name (lane, stream id) in a table of this instance. A call whose reply
 * is lost (timeout) may still have run on the server: an enqueue is
 * repeated safely (idempotent), a claim's lease simply runs out, and an
 * ack or nack keeps its claim here (SPI_EIO), so it can be repeated: the
 * server remembers the finish (P finished) and answers the repeat as the
 * first. A claim neither acked nor nacked is forgotten here its lease
 * length after its lease ended (at least HELD_GRACE_MS), on the next claim
 * or tick, and the table holds at most max(HELD_MIN, replay.max_bytes /
 * an entry's size) claims (held_claim).
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer_redis.h"
#include "redis_conn.h"
#include "redis_modules.h"
#include "store_lua.h"

enum { S_ENQUEUE, S_CLAIM, S_SETTLE, S_STATS, S_TICK, S_COUNT };
/* Each script's own part; the store loads SPR_LUA_HELPERS and
 * SPR_LUA_HOUSEKEEPING before it (script_text). */
static const char *const SCRIPTS[S_COUNT] = {
    SPR_LUA_ENQUEUE, SPR_LUA_CLAIM, SPR_LUA_SETTLE, SPR_LUA_STATS,
    SPR_LUA_TICK};
static const char *const SCRIPT_NAMES[S_COUNT] = {"enqueue", "claim", "ack/nack",
                                                  "stats", "tick"};

enum { NKEYS = 11 };
static const char *const KEY_NAMES[NKEYS] = {
    "lane:1", "lane:2", "lane:3", "delayed", "leases",  "keys",
    "done",   "dead",   "bytes",  "seq",     "finished"};

/* The envelope's first bytes: its format (store_lua.h). */
#define ENV_MAGIC SPR_ENV_TAG SPR_ENV_VERSION
#define ENV_HEAD 56

/* The claim table: at least this many claims, and a claim is kept at least
 * this long after its lease ended (held_claim). */
#define HELD_MIN 1024
#define HELD_GRACE_MS 1000

/* A claim this instance handed out, kept until it is acked or nacked, or
 * forgotten at forget_at: its lease length after its lease ended (at least
 * HELD_GRACE_MS), as long as the server remembers a finish (P finished).
 * Its ack or nack then answers SPI_ESTALE, as once its lease ended. */
typedef struct held_claim {
  struct held_claim *next;             /* in its slot of tab */
  struct held_claim *lprev, *lnext;    /* in held_head, by forget_at */
  int64_t forget_at;                   /* ns, the callers' clock */
  uint64_t id;
  int lane;
  int refused;         /* fn refused the envelope */
  int64_t deadline_ns; /* the envelope's, 0 none */
  int64_t lease_ms;    /* how long the server remembers its finish */
  char sid[48];        /* stream entry id */
} held_claim;

typedef struct redis_store {
  spr_config cfg;
  spr_conn *conn;
  pthread_mutex_t mu;
  char keys[NKEYS][SPR_NAME_MAX + 16];
  char *script[S_COUNT]; /* whole text of each script (script_text) */
  char sha[S_COUNT][48]; /* "" until loaded on this connection */
  uint64_t setup_for;    /* spr_conn_connects() the groups were made for */
  int64_t reap_at;       /* spr_now_ms() of the next removal of consumers */
  held_claim **tab;
  size_t mask, n;
  held_claim *held_head, *held_tail; /* every claim of tab, by forget_at */
  uint64_t next_id;
  uint64_t expired, calls;
} redis_store;

static int rfail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int rfail(char *err, size_t cap, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (cap) vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return rc;
}

/* ------------------------------------------------------ envelope codec */

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
  return v;
}
static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

/* The envelope (all but key and attempts, which have fields of their own)
 * as bytes: a fixed little-endian head, then tenant, body, text, tokens.
 * The head begins with ENV_MAGIC, "SPE" and the format's version, "1": a
 * format that changes anything after it raises the version byte, so an
 * older process tells an envelope it cannot read from bytes that are no
 * envelope, and gives it back for a newer process (store_lua.h). */
static uint8_t *env_encode(const spi_envelope *e, size_t *len) {
  size_t tl = strnlen(e->tenant, sizeof e->tenant);
  size_t n = ENV_HEAD + tl + e->body_len + e->partial_text_len +
             4 * e->partial_token_count;
  uint8_t *b = malloc(n ? n : 1);
  if (!b) return NULL;
  memcpy(b, ENV_MAGIC, 4);
  put32(b + 4, (uint32_t)e->openai_kind);
  put32(b + 8, (uint32_t)e->klass);
  put32(b + 12, e->flags);
  put64(b + 16, e->stream_offset);
  put64(b + 24, (uint64_t)e->first_enqueued_ns);
  put64(b + 32, (uint64_t)e->deadline_ns);
  put32(b + 40, (uint32_t)tl);
  put32(b + 44, (uint32_t)e->body_len);
  put32(b + 48, (uint32_t)e->partial_text_len);
  put32(b + 52, (uint32_t)e->partial_token_count);
  uint8_t *p = b + ENV_HEAD;
  memcpy(p, e->tenant, tl);
  p += tl;
  if (e->body_len) memcpy(p, e->body, e->body_len);
  p += e->body_len;
  if (e->partial_text_len) memcpy(p, e->partial_text, e->partial_text_len);
  p += e->partial_text_len;
  for (size_t i = 0; i < e->partial_token_count; i++, p += 4)
    put32(p, e->partial_tokens[i]);
  *len = n;
  return b;
}

/* Decode b into *e, borrowing b; token ids go to *toks (malloc'd, free it).
 * SPI_EMODULE when the bytes are not an envelope. */
static int env_decode(const uint8_t *b, size_t n, spi_envelope *e,
                      uint32_t **toks) {
  *toks = NULL;
  if (n < ENV_HEAD || memcmp(b, ENV_MAGIC, 4) != 0) return SPI_EMODULE;
  uint64_t tl = get32(b + 40), bl = get32(b + 44), xl = get32(b + 48),
           nt = get32(b + 52);
  if (tl >= sizeof e->tenant || ENV_HEAD + tl + bl + xl + 4 * nt != n)
    return SPI_EMODULE;
  e->openai_kind = (int32_t)get32(b + 4);
  e->klass = (int32_t)get32(b + 8);
  e->flags = get32(b + 12);
  e->stream_offset = get64(b + 16);
  e->first_enqueued_ns = (int64_t)get64(b + 24);
  e->deadline_ns = (int64_t)get64(b + 32);
  const uint8_t *p = b + ENV_HEAD;
  memset(e->tenant, 0, sizeof e->tenant);
  memcpy(e->tenant, p, tl);
  p += tl;
  e->body = (const char *)p;
  e->body_len = bl;
  p += bl;
  e->partial_text = (const char *)p;
  e->partial_text_len = xl;
  p += xl;
  e->partial_token_count = nt;
  e->partial_tokens = NULL;
  if (nt) {
    uint32_t *t = malloc(4 * nt);
    if (!t) return SPI_ENOMEM;
    for (size_t i = 0; i < nt; i++) t[i] = get32(p + 4 * i);
    e->partial_tokens = t;
    *toks = t;
  }
  return SPI_OK;
}

/* ---------------------------------------------------------- claim table */

static size_t cslot(const redis_store *s, uint64_t id) {
  return (size_t)((id * 0x9e3779b97f4a7c15ull) >> 20) & s->mask;
}

/* Into the list by forget_at, from its tail (most claims have one lease
 * length, so they go at the end). */
static void held_link(redis_store *s, held_claim *c) {
  held_claim *p = s->held_tail;
  while (p && p->forget_at > c->forget_at) p = p->lprev;
  c->lprev = p;
  c->lnext = p ? p->lnext : s->held_head;
  if (c->lnext)
    c->lnext->lprev = c;
  else
    s->held_tail = c;
  if (p)
    p->lnext = c;
  else
    s->held_head = c;
}

static void held_unlink(redis_store *s, held_claim *c) {
  if (c->lprev)
    c->lprev->lnext = c->lnext;
  else
    s->held_head = c->lnext;
  if (c->lnext)
    c->lnext->lprev = c->lprev;
  else
    s->held_tail = c->lprev;
  c->lprev = c->lnext = NULL;
}

static void claim_put(redis_store *s, held_claim *c) {
  if (s->n + 1 > s->mask + 1) {
    size_t ncap = (s->mask + 1) * 2;
    held_claim **nt = calloc(ncap, sizeof *nt);
    if (nt) {
      size_t om = s->mask;
      s->mask = ncap - 1;
      for (size_t i = 0; i <= om; i++)
        for (held_claim *x = s->tab[i], *nx; x; x = nx) {
          nx = x->next;
          size_t k = cslot(s, x->id);
          x->next = nt[k];
          nt[k] = x;
        }
      free(s->tab);
      s->tab = nt;
    }
  }
  size_t k = cslot(s, c->id);
  c->next = s->tab[k];
  s->tab[k] = c;
  s->n++;
  held_link(s, c);
}

static held_claim *claim_take(redis_store *s, uint64_t id) {
  for (held_claim **p = &s->tab[cslot(s, id)]; *p; p = &(*p)->next)
    if ((*p)->id == id) {
      held_claim *c = *p;
      *p = c->next;
      s->n--;
      held_unlink(s, c);
      return c;
    }
  return NULL;
}

/* With mu held: forget the claims due by now, and while more than max
 * would be held with room more, those due first. */
static void claims_forget(redis_store *s, int64_t now_ns, size_t room,
                          size_t max) {
  while (s->held_head &&
         (s->held_head->forget_at <= now_ns || s->n + room > max))
    free(claim_take(s, s->held_head->id));
}

/* How many claims an instance holds at most: max(HELD_MIN, max_bytes / the
 * size of one), so their memory is bounded by replay.max_bytes. */
static size_t claims_max(const spi_replay_ctx *ctx) {
  uint64_t fit = ctx->max_bytes > 0
                     ? (uint64_t)ctx->max_bytes / sizeof(held_claim)
                     : 0;
  return fit > HELD_MIN ? (size_t)fit : HELD_MIN;
}

/* ------------------------------------------------------------- commands */

/* Every call of the store has one deadline, end (spr_conn_deadline,
 * taken at its start: timeout_ms on, and connect_timeout_ms more when it
 * has to connect first). Within it, connecting and setting the connection
 * up end connect_timeout_ms after they start, and each round trip of the
 * call's own (its script; a tick's listing and removal of consumers)
 * timeout_ms after it is sent (step_by): so a server that answers each
 * step within its own timeout is used after a reconnect too, and the call
 * ends by end whatever happens. */
static int64_t step_by(int64_t end, int ms) {
  int64_t by = spr_now_ms() + ms;
  return by < end ? by : end;
}

/* The replies of setup's pipeline: the consumer groups, then the scripts.
 * A server that refuses for now (spr_reply_transient) is SPI_EIO. */
static int setup_check(redis_store *s, redisReply **r, char *err,
                       size_t cap) {
  for (int lane = 0; lane < 3; lane++)
    if (r[lane]->type == REDIS_REPLY_ERROR &&
        strncmp(r[lane]->str, "BUSYGROUP", 9) != 0)
      return rfail(err, cap,
                   spr_reply_transient(r[lane]) ? SPI_EIO : SPI_EMODULE,
                   "redis: XGROUP CREATE %s: %.160s", s->keys[lane],
                   r[lane]->str);
  for (int i = 0; i < S_COUNT; i++) {
    const redisReply *x = r[3 + i];
    if (x->type != REDIS_REPLY_STRING)
      return rfail(err, cap, spr_reply_transient(x) ? SPI_EIO : SPI_EMODULE,
                   "redis: SCRIPT LOAD %s: %.160s", SCRIPT_NAMES[i],
                   x->type == REDIS_REPLY_ERROR ? x->str : "?");
    snprintf(s->sha[i], sizeof s->sha[i], "%s", x->str);
  }
  return SPI_OK;
}

/* A command over argv[0..argc), its lens filled in. */
static spr_cmd cmd_of(int argc, const char **argv, size_t *lens) {
  for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  return (spr_cmd){argc, argv, lens};
}

/* ------------------------------------------------------ idle consumers */

#define REAP_MAX 100 /* consumers removed at most by one reap */
#define REAP_HEAD 7  /* EVAL, the script, 3, the lanes, the group */

/* The removal of idle consumers (SPR_LUA_REAP): its arguments, then a
 * lane ("1".."3") and a name for each consumer picked. */
typedef struct reap_args {
  const char *argv[REAP_HEAD + 2 * REAP_MAX];
  size_t lens[REAP_HEAD + 2 * REAP_MAX];
  int n;
} reap_args;

/* XINFO CONSUMERS of lane (0..2) over args (4) and lens. */
static spr_cmd list_cmd(const redis_store *s, int lane, const char **args,
                        size_t *lens) {
  const char *a[] = {"XINFO", "CONSUMERS", s->keys[lane], s->cfg.group};
  memcpy(args, a, sizeof a);
  return cmd_of(4, args, lens);
}

/* Pick from r, the XINFO CONSUMERS reply of lane (0..2), the consumers
 * other than this store's with nothing pending that have not read for
 * consumer_idle_ms, while a has room; a borrows their names from r. */
static void pick_idle(const redis_store *s, int lane, const redisReply *r,
                      reap_args *a) {
  static const char *const LANES[3] = {"1", "2", "3"};
  if (r->type != REDIS_REPLY_ARRAY) return; /* no group: nothing to do */
  for (size_t i = 0; i < r->elements && a->n + 2 <= REAP_HEAD + 2 * REAP_MAX;
       i++) {
    const redisReply *c = r->element[i], *name = NULL;
    long long pending = -1, idle = -1;
    for (size_t j = 0; c->type == REDIS_REPLY_ARRAY && j + 1 < c->elements;
         j += 2) {
      const redisReply *k = c->element[j], *v = c->element[j + 1];
      if (k->type != REDIS_REPLY_STRING) continue;
      if (!strcmp(k->str, "name") && v->type == REDIS_REPLY_STRING)
        name = v;
      else if (!strcmp(k->str, "pending") && v->type == REDIS_REPLY_INTEGER)
        pending = v->integer;
      else if (!strcmp(k->str, "idle") && v->type == REDIS_REPLY_INTEGER)
        idle = v->integer;
    }
    if (!name || pending != 0 || idle <= s->cfg.consumer_idle_ms ||
        (name->len == strlen(s->cfg.consumer) &&
         !memcmp(name->str, s->cfg.consumer, name->len)))
      continue;
    a->argv[a->n] = LANES[lane];
    a->lens[a->n++] = 1;
    a->argv[a->n] = name->str;
    a->lens[a->n++] = name->len;
  }
}

/* Remove the idle consumers found in the XINFO CONSUMERS replies of the
 * three lanes (list[0..3)), by deadline: at most REAP_MAX, each checked
 * again on the server. What a healthy server answers is not checked (it
 * is tidying, not the call's job). */
static int reap_listed(redis_store *s, redisReply *const *list,
                       int64_t deadline, char *err, size_t cap) {
  reap_args a;
  const char *head[REAP_HEAD] = {"EVAL",     SPR_LUA_REAP, "3",
                                 s->keys[0], s->keys[1],   s->keys[2],
                                 s->cfg.group};
  for (a.n = 0; a.n < REAP_HEAD; a.n++) {
    a.argv[a.n] = head[a.n];
    a.lens[a.n] = strlen(head[a.n]);
  }
  for (int lane = 0; lane < 3; lane++) pick_idle(s, lane, list[lane], &a);
  if (a.n == REAP_HEAD) return SPI_OK;
  spr_cmd c = {a.n, a.argv, a.lens};
  redisReply *r = NULL;
  int rc = spr_conn_pipeline(s->conn, 1, &c, &r, deadline, err, cap);
  if (rc == SPI_OK) freeReplyObject(r);
  return rc;
}

/* List the lanes' consumers and remove the idle ones now, each a round
 * trip of the call that ends by end. The next time is consumer_idle_ms
 * on, whatever happens (a slow server costs one failed tick a period). */
static int reap(redis_store *s, int64_t end, char *err, size_t cap) {
  const char *args[3][4];
  size_t lens[3][4];
  spr_cmd cmds[3];
  for (int lane = 0; lane < 3; lane++)
    cmds[lane] = list_cmd(s, lane, args[lane], lens[lane]);
  redisReply *r[3];
  s->reap_at = spr_now_ms() + s->cfg.consumer_idle_ms;
  int rc = spr_conn_pipeline(s->conn, 3, cmds, r,
                             step_by(end, s->cfg.timeout_ms), err, cap);
  if (rc != SPI_OK) return rc;
  rc = reap_listed(s, r, step_by(end, s->cfg.timeout_ms), err, cap);
  for (int lane = 0; lane < 3; lane++) freeReplyObject(r[lane]);
  return rc;
}

/* ---------------------------------------------------------------- setup */

/* After each (re)connect: the consumer groups exist and the scripts are
 * loaded, in one round trip (the handshake's PING's, when it connects:
 * spr_conn_setup); when removing idle consumers is due (consumer_idle_ms
 * after the last time, at once for a new store), the lanes' consumers are
 * listed in it too, and the idle ones removed in a second. All within
 * connect_timeout_ms, by end. */
static int setup(redis_store *s, int64_t end, char *err, size_t cap) {
  if (spr_conn_up(s->conn) && s->setup_for == spr_conn_connects(s->conn))
    return SPI_OK;
  int64_t by = step_by(end, s->cfg.connect_timeout_ms);
  int reaping = spr_now_ms() >= s->reap_at;
  enum { NSETUP = 3 + S_COUNT + 3 };
  const char *args[NSETUP][6];
  size_t lens[NSETUP][6];
  spr_cmd cmds[NSETUP];
  for (int lane = 0; lane < 3; lane++) {
    const char *a[] = {"XGROUP", "CREATE", s->keys[lane], s->cfg.group, "0",
                       "MKSTREAM"};
    memcpy(args[lane], a, sizeof a);
    cmds[lane] = cmd_of(6, args[lane], lens[lane]);
  }
  for (int i = 0; i < S_COUNT; i++) {
    const char *a[] = {"SCRIPT", "LOAD", s->script[i]};
    memcpy(args[3 + i], a, sizeof a);
    cmds[3 + i] = cmd_of(3, args[3 + i], lens[3 + i]);
  }
  for (int lane = 0; lane < 3; lane++)
    cmds[3 + S_COUNT + lane] = list_cmd(s, lane, args[3 + S_COUNT + lane],
                                        lens[3 + S_COUNT + lane]);
  int n = reaping ? NSETUP : NSETUP - 3;
  redisReply *r[NSETUP];
  int rc = spr_conn_setup(s->conn, n, cmds, r, by, err, cap);
  if (rc != SPI_OK) return rc;
  rc = setup_check(s, r, err, cap);
  if (rc == SPI_OK && reaping) {
    s->reap_at = spr_now_ms() + s->cfg.consumer_idle_ms;
    rc = reap_listed(s, r + 3 + S_COUNT, by, err, cap);
  }
  for (int i = 0; i < n; i++) freeReplyObject(r[i]);
  if (rc == SPI_OK) s->setup_for = spr_conn_connects(s->conn);
  return rc;
}

/* Run script which with the common arguments and extra ones, in a call
 * that ends by end; *out gets an array reply. With s->mu held. */
static int run(redis_store *s, int which, const spi_replay_ctx *ctx,
               int64_t end, int nextra, const char **extra,
               const size_t *extra_lens, redisReply **out, char *err,
               size_t cap) {
  *out = NULL;
  enum { NCOMMON = 5 };
  const char *argv[3 + NKEYS + NCOMMON + 8];
  size_t lens[3 + NKEYS + NCOMMON + 8];
  char now[24], maxatt[24], maxdead[24], maxdone[24], nkeys[8];
  snprintf(now, sizeof now, "%lld", (long long)(ctx->now_ns / 1000000));
  snprintf(maxatt, sizeof maxatt, "%u", ctx->max_attempts);
  snprintf(maxdead, sizeof maxdead, "%lld", (long long)ctx->max_dead);
  snprintf(maxdone, sizeof maxdone, "%lld", (long long)ctx->max_acked_keys);
  snprintf(nkeys, sizeof nkeys, "%d", NKEYS);
  const char *common[NCOMMON] = {now, maxatt, s->cfg.group, maxdead, maxdone};
  for (int attempt = 0; attempt < 2; attempt++) {
    int rc = setup(s, end, err, cap);
    if (rc != SPI_OK) return rc;
    int n = 0;
    argv[n++] = "EVALSHA";
    argv[n++] = s->sha[which];
    argv[n++] = nkeys;
    for (int i = 0; i < NKEYS; i++) argv[n++] = s->keys[i];
    for (int i = 0; i < NCOMMON; i++) argv[n++] = common[i];
    for (int i = 0; i < n; i++) lens[i] = strlen(argv[i]);
    for (int i = 0; i < nextra; i++, n++) {
      argv[n] = extra[i];
      lens[n] = extra_lens ? extra_lens[i] : strlen(extra[i]);
    }
    redisReply *r = NULL;
    rc = spr_conn_command_by(s->conn, n, argv, lens, &r,
                             step_by(end, s->cfg.timeout_ms), err, cap);
    if (rc != SPI_OK) return rc;
    s->calls++;
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER) {
      s->expired += (uint64_t)r->element[0]->integer;
      *out = r;
      return SPI_OK;
    }
    /* Scripts or groups gone (a server restarted without its data, or
     * flushed): set up again once. */
    int again = r->type == REDIS_REPLY_ERROR &&
                (strncmp(r->str, "NOSCRIPT", 8) == 0 ||
                 strstr(r->str, "NOGROUP") != NULL);
    if (!again || attempt == 1) {
      rc = rfail(err, cap, spr_reply_transient(r) ? SPI_EIO : SPI_EMODULE,
                 "redis: %s script: %.200s", SCRIPT_NAMES[which],
                 r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
      freeReplyObject(r);
      return rc;
    }
    freeReplyObject(r);
    s->setup_for = 0;
  }
  return SPI_EMODULE; /* not reached */
}

static long long int_at(const redisReply *r, size_t i) {
  return i < r->elements && r->element[i]->type == REDIS_REPLY_INTEGER
             ? r->element[i]->integer
             : -1;
}

/* ------------------------------------------------------------ callbacks */

static int64_t ceil_ms(int64_t ns) { return ns <= 0 ? 0 : (ns + 999999) / 1000000; }

static int r_enqueue(void *state, void *inst, const spi_replay_ctx *ctx,
                     const spi_envelope *env, int32_t *duplicate, char *err,
                     size_t cap) {
  (void)state;
  redis_store *s = inst;
  size_t blen = 0;
  uint8_t *blob = env_encode(env, &blen);
  if (!blob) return rfail(err, cap, SPI_ENOMEM, "redis: out of memory");
  char lane[8], att[16], dl[24], maxb[24];
  snprintf(lane, sizeof lane, "%d", (int)env->klass);
  snprintf(att, sizeof att, "%u", env->attempts);
  snprintf(dl, sizeof dl, "%lld", (long long)ceil_ms(env->deadline_ns));
  snprintf(maxb, sizeof maxb, "%lld", (long long)ctx->max_bytes);
  const char *x[] = {env->key, lane, att, dl, (const char *)blob, maxb};
  size_t xl[] = {env->key_len, strlen(lane), strlen(att), strlen(dl), blen,
                 strlen(maxb)};
  redisReply *r = NULL;
  pthread_mutex_lock(&s->mu);
  int rc = run(s, S_ENQUEUE, ctx, spr_conn_deadline(s->conn), 6, x, xl, &r,
               err, cap);
  pthread_mutex_unlock(&s->mu);
  free(blob);
  if (rc != SPI_OK) return rc;
  long long st = int_at(r, 1);
  if (st == 2)
    rc = rfail(err, cap, SPI_EFULL,
               "the queue holds %lld bytes; replay.max_bytes is %lld",
               int_at(r, 2), (long long)ctx->max_bytes);
  else if (st != 0 && st != 1)
    rc = rfail(err, cap, SPI_EMODULE, "redis: enqueue: unexpected reply");
  else
    *duplicate = st == 1;
  freeReplyObject(r);
  return rc;
}

/* Run the settle script on the claimed entry lane:sid, by deadline: ack
 * (what 0), retry (1) or dead-letter (2, why says why). *st gets its
 * answer: 0 done, 1 stale. With s->mu held. */
static int finish(redis_store *s, const spi_replay_ctx *ctx, int64_t deadline,
                  int lane, const char *sid, int what, uint32_t attempts,
                  int64_t visible_ns, int64_t keep_ms, const char *why,
                  long long *st, char *err, size_t cap) {
  char l[8], w[4], att[16], vis[24], keep[24];
  snprintf(l, sizeof l, "%d", lane);
  snprintf(w, sizeof w, "%d", what);
  snprintf(att, sizeof att, "%u", attempts);
  snprintf(vis, sizeof vis, "%lld", (long long)ceil_ms(visible_ns));
  snprintf(keep, sizeof keep, "%lld", (long long)keep_ms);
  const char *x[] = {l, sid, w, att, vis, keep, why};
  redisReply *r = NULL;
  int rc = run(s, S_SETTLE, ctx, deadline, 7, x, NULL, &r, err, cap);
  if (rc != SPI_OK) return rc;
  *st = int_at(r, 1);
  freeReplyObject(r);
  return SPI_OK;
}

/* "entry <id> of <key>" of a claim's reply r (its id and key elements),
 * for messages; the key cut at 64 bytes. */
static const char *entry_name(const redisReply *r, char *buf, size_t cap) {
  const redisReply *id = r->element[2], *k = r->element[3];
  int ids = id->type == REDIS_REPLY_STRING;
  int klen = k->type == REDIS_REPLY_STRING ? (int)(k->len < 64 ? k->len : 64)
                                           : 0;
  if (klen)
    snprintf(buf, cap, "entry %.*s of %.*s", ids ? (int)id->len : 1,
             ids ? id->str : "?", klen, k->str);
  else
    snprintf(buf, cap, "entry %.*s without a key", ids ? (int)id->len : 1,
             ids ? id->str : "?");
  return buf;
}

/* The claim script met an entry that is not as an enqueue writes one
 * (reply r: {expired, 0, id, key, what is wrong}) and dead-lettered it
 * (why "malformed"): the claim's answer is the error. */
static int met_malformed(const redisReply *r, char *err, size_t cap) {
  char name[160];
  const redisReply *what = r->element[4];
  return rfail(err, cap, SPI_EMODULE,
               "redis: claim: %s is malformed (%.*s): dead-lettered",
               entry_name(r, name, sizeof name),
               what->type == REDIS_REPLY_STRING ? (int)what->len : 1,
               what->type == REDIS_REPLY_STRING ? what->str : "?");
}

/* A claimed entry whose envelope does not decode (written by something
 * else, or damaged): nothing will ever take it, so it is dead-lettered now
 * (why "malformed") instead of coming back each time its lease ends. The
 * claim's answer is the error; the next claim goes on. */
static int drop_malformed(redis_store *s, const spi_replay_ctx *ctx,
                          int64_t deadline, const redisReply *r, char *err,
                          size_t cap) {
  const redisReply *id = r->element[2], *a = r->element[4];
  char sid[48], name[160];
  snprintf(sid, sizeof sid, "%.*s", (int)id->len, id->str);
  entry_name(r, name, sizeof name);
  uint32_t att =
      a->type == REDIS_REPLY_STRING ? (uint32_t)strtoul(a->str, NULL, 10) : 0;
  long long st = -1;
  char why[200] = "its lease ended";
  pthread_mutex_lock(&s->mu);
  int rc = finish(s, ctx, deadline, (int)int_at(r, 1), sid, 2, att, 0,
                  ctx->lease_ms, "malformed", &st, why, sizeof why);
  pthread_mutex_unlock(&s->mu);
  if (rc == SPI_OK && st == 0)
    return rfail(err, cap, SPI_EMODULE,
                 "redis: claim: %s is malformed (its envelope does not "
                 "decode): dead-lettered",
                 name);
  return rfail(err, cap, rc == SPI_OK ? SPI_EMODULE : rc,
               "redis: claim: %s is malformed (its envelope does not "
               "decode); dead-lettering it failed: %s",
               name, why);
}

/* Hand the claimed entry of reply r to fn; the claim id on success.
 * deadline is the claim's. */
static int hand_claim(redis_store *s, const spi_replay_ctx *ctx,
                      int64_t deadline, const redisReply *r,
                      spi_replay_envelope_fn fn, void *fn_data,
                      uint64_t *claim_id, char *err, size_t cap) {
  const redisReply *id = r->element[2], *k = r->element[3], *a = r->element[4],
                   *e = r->element[5];
  if (id->type != REDIS_REPLY_STRING ||
      id->len >= sizeof(((held_claim *)0)->sid))
    return rfail(err, cap, SPI_EMODULE, "redis: claim: malformed entry");
  spi_envelope env;
  memset(&env, 0, sizeof env);
  env.struct_size = sizeof env;
  uint32_t *toks = NULL;
  int rc = SPI_EMODULE;
  if (k->type == REDIS_REPLY_STRING && a->type == REDIS_REPLY_STRING &&
      e->type == REDIS_REPLY_STRING && k->len > 0 && k->len <= 128)
    rc = env_decode((const uint8_t *)e->str, e->len, &env, &toks);
  if (rc == SPI_EMODULE) return drop_malformed(s, ctx, deadline, r, err, cap);
  if (rc != SPI_OK) return rfail(err, cap, rc, "redis: out of memory");
  env.key = k->str;
  env.key_len = k->len;
  env.attempts = (uint32_t)strtoul(a->str, NULL, 10);
  held_claim *c = calloc(1, sizeof *c);
  if (!c) {
    free(toks);
    return rfail(err, cap, SPI_ENOMEM, "redis: out of memory");
  }
  c->lane = (int)int_at(r, 1);
  c->deadline_ns = env.deadline_ns;
  c->lease_ms = ctx->lease_ms;
  c->forget_at =
      ctx->now_ns + (ctx->lease_ms +
                     (ctx->lease_ms > HELD_GRACE_MS ? ctx->lease_ms
                                                    : HELD_GRACE_MS)) *
                        1000000;
  memcpy(c->sid, id->str, id->len);
  rc = fn(fn_data, &env);
  free(toks);
  /* Kept whatever fn said: the lease is ours until acked or expired (and
   * the library dead-letters an envelope it refused: why "refused"). */
  c->refused = rc != SPI_OK;
  pthread_mutex_lock(&s->mu);
  claims_forget(s, ctx->now_ns, 1, claims_max(ctx));
  c->id = s->next_id++;
  claim_put(s, c);
  pthread_mutex_unlock(&s->mu);
  *claim_id = c->id;
  if (rc != SPI_OK)
    return rfail(err, cap, rc, "claim: the envelope could not be taken");
  return SPI_OK;
}

static int r_claim(void *state, void *inst, const spi_replay_ctx *ctx,
                   uint32_t class_mask, spi_replay_envelope_fn fn,
                   void *fn_data, uint64_t *claim_id, char *err, size_t cap) {
  (void)state;
  redis_store *s = inst;
  *claim_id = 0;
  char until[24], mask[16];
  snprintf(until, sizeof until, "%lld",
           (long long)(ctx->now_ns / 1000000 + ctx->lease_ms));
  snprintf(mask, sizeof mask, "%u", class_mask);
  const char *x[] = {s->cfg.consumer, until, mask};
  redisReply *r = NULL;
  pthread_mutex_lock(&s->mu);
  int64_t deadline = spr_conn_deadline(s->conn);
  int rc = run(s, S_CLAIM, ctx, deadline, 3, x, NULL, &r, err, cap);
  pthread_mutex_unlock(&s->mu);
  if (rc != SPI_OK) return rc;
  if (r->elements >= 6)
    rc = hand_claim(s, ctx, deadline, r, fn, fn_data, claim_id, err, cap);
  else if (r->elements == 5 && int_at(r, 1) == 0)
    rc = met_malformed(r, err, cap);
  else if (r->elements != 1)
    rc = rfail(err, cap, SPI_EMODULE, "redis: claim: unexpected reply");
  freeReplyObject(r);
  return rc;
}

/* Why the library dead-letters held claim c with a nack of attempts: it
 * refused the envelope, or the envelope reached max_attempts or its
 * deadline. The library decides on those two only, so a nack below
 * max_attempts is for the deadline; past both, the deadline is named, as
 * the housekeeping names it. */
static const char *dead_why(const held_claim *c, const spi_replay_ctx *ctx,
                            uint32_t attempts) {
  if (c->refused) return "refused";
  int late = c->deadline_ns != 0 && ctx->now_ns >= c->deadline_ns;
  return late || attempts < ctx->max_attempts ? "deadline" : "attempts";
}

/* Ack (what 0), retry (1) or dead-letter (2) a held claim. */
static int settle(redis_store *s, const spi_replay_ctx *ctx, uint64_t id,
                  int what, uint32_t attempts, int64_t visible_ns, char *err,
                  size_t cap) {
  pthread_mutex_lock(&s->mu);
  held_claim *c = claim_take(s, id);
  if (!c) {
    pthread_mutex_unlock(&s->mu);
    return rfail(err, cap, SPI_ESTALE, "claim %llu is not held here",
                 (unsigned long long)id);
  }
  long long st = -1;
  int rc = finish(s, ctx, spr_conn_deadline(s->conn), c->lane, c->sid, what,
                  attempts, visible_ns, c->lease_ms,
                  dead_why(c, ctx, attempts), &st, err, cap);
  if (rc == SPI_EIO)
    claim_put(s, c); /* may still be held: the caller may try again */
  else
    free(c);
  pthread_mutex_unlock(&s->mu);
  if (rc != SPI_OK) return rc;
  if (st == 1)
    return rfail(err, cap, SPI_ESTALE,
                 "claim %llu: the lease ended (another consumer may hold it)",
                 (unsigned long long)id);
  return st == 0 ? SPI_OK
                 : rfail(err, cap, SPI_EMODULE, "redis: unexpected reply");
}

static int r_ack(void *state, void *inst, const spi_replay_ctx *ctx,
                 uint64_t claim_id, char *err, size_t cap) {
  (void)state;
  return settle(inst, ctx, claim_id, 0, 0, 0, err, cap);
}

static int r_nack(void *state, void *inst, const spi_replay_ctx *ctx,
                  uint64_t claim_id, uint32_t attempts, int64_t visible_ns,
                  int32_t dead, char *err, size_t cap) {
  (void)state;
  return settle(inst, ctx, claim_id, dead ? 2 : 1, attempts, visible_ns, err,
                cap);
}

static int r_queue_stats(void *state, void *inst, const spi_replay_ctx *ctx,
                         spi_replay_stats *out, char *err, size_t cap) {
  (void)state;
  redis_store *s = inst;
  redisReply *r = NULL;
  pthread_mutex_lock(&s->mu);
  int rc = run(s, S_STATS, ctx, spr_conn_deadline(s->conn), 0, NULL, NULL, &r,
               err, cap);
  uint64_t expired = s->expired;
  pthread_mutex_unlock(&s->mu);
  if (rc != SPI_OK) return rc;
  if (r->elements < 8) {
    freeReplyObject(r);
    return rfail(err, cap, SPI_EMODULE, "redis: stats: unexpected reply");
  }
  for (int c = 1; c <= 3; c++) out->ready[c] = (uint64_t)int_at(r, (size_t)c);
  out->leased = (uint64_t)int_at(r, 4);
  out->delayed = (uint64_t)int_at(r, 5);
  out->dead = (uint64_t)int_at(r, 6);
  out->journal_bytes = (uint64_t)int_at(r, 7);
  out->expired_leases = expired;
  freeReplyObject(r);
  return SPI_OK;
}

static int r_tick(void *state, void *inst, const spi_replay_ctx *ctx,
                  char *err, size_t cap) {
  (void)state;
  redis_store *s = inst;
  redisReply *r = NULL;
  pthread_mutex_lock(&s->mu);
  claims_forget(s, ctx->now_ns, 0, claims_max(ctx));
  int64_t end = spr_conn_deadline(s->conn);
  int rc = run(s, S_TICK, ctx, end, 0, NULL, NULL, &r, err, cap);
  /* A long-lived connection still tidies up now and then. */
  if (rc == SPI_OK && spr_now_ms() >= s->reap_at) rc = reap(s, end, err, cap);
  pthread_mutex_unlock(&s->mu);
  freeReplyObject(r);
  return rc;
}

static int r_stats(void *state, void *inst, spi_replay_store_stats *out) {
  (void)state;
  redis_store *s = inst;
  pthread_mutex_lock(&s->mu);
  out->appended = s->calls;
  pthread_mutex_unlock(&s->mu);
  return SPI_OK;
}

/* ------------------------------------------------------ open and close */

/* The whole text of script which: the helpers, the housekeeping and its
 * own part (store_lua.h); NULL when out of memory. */
static char *script_text(int which) {
  size_t a = strlen(SPR_LUA_HELPERS), b = strlen(SPR_LUA_HOUSEKEEPING),
         c = strlen(SCRIPTS[which]);
  char *t = malloc(a + b + c + 1);
  if (!t) return NULL;
  memcpy(t, SPR_LUA_HELPERS, a);
  memcpy(t + a, SPR_LUA_HOUSEKEEPING, b);
  memcpy(t + a + b, SCRIPTS[which], c + 1);
  return t;
}

static void r_release(void *state, void *inst) {
  (void)state;
  redis_store *s = inst;
  if (!s) return;
  spr_conn_free(s->conn);
  for (size_t i = 0; s->tab && i <= s->mask; i++)
    for (held_claim *c = s->tab[i], *n; c; c = n) {
      n = c->next;
      free(c);
    }
  free(s->tab);
  for (int i = 0; i < S_COUNT; i++) free(s->script[i]);
  pthread_mutex_destroy(&s->mu);
  free(s);
}

static int r_configure(void *state, const char *json, size_t len,
                       void **out, char *err, size_t cap) {
  (void)state;
  *out = NULL;
  redis_store *s = calloc(1, sizeof *s);
  if (!s) return rfail(err, cap, SPI_ENOMEM, "redis: out of memory");
  s->mask = 255;
  s->tab = calloc(s->mask + 1, sizeof *s->tab);
  int scripts = 1;
  for (int i = 0; i < S_COUNT; i++)
    scripts = (s->script[i] = script_text(i)) != NULL && scripts;
  if (!s->tab || !scripts || pthread_mutex_init(&s->mu, NULL) != 0) {
    free(s->tab);
    for (int i = 0; i < S_COUNT; i++) free(s->script[i]);
    free(s);
    return rfail(err, cap, SPI_ENOMEM, "redis: out of memory");
  }
  int rc = spr_config_parse(json, len, "replay.store_config", NULL, &s->cfg,
                            err, cap);
  for (int i = 0; rc == SPI_OK && i < NKEYS; i++)
    snprintf(s->keys[i], sizeof s->keys[i], "%s%s", s->cfg.key_prefix,
             KEY_NAMES[i]);
  if (rc == SPI_OK) rc = spr_conn_new(&s->cfg, &s->conn, err, cap);
  /* Claim ids from the clock: a reopened queue does not reuse old ones. */
  s->next_id = ((uint64_t)spr_now_ms() << 16) | 1;
  /* A server that refuses (AUTH, SELECT) or a broken setup fails the open;
   * one that cannot be reached now is tried again by every call. */
  if (rc == SPI_OK) {
    rc = setup(s, spr_conn_deadline(s->conn), err, cap);
    if (rc == SPI_EIO) rc = SPI_OK;
  }
  if (rc != SPI_OK) {
    r_release(NULL, s);
    return rc;
  }
  err[0] = '\0';
  *out = s;
  return SPI_OK;
}

static int r_check(void *state, const char *json, size_t len, char *err,
                   size_t cap) {
  (void)state;
  spr_config c;
  int rc = spr_config_parse(json, len, "replay.store_config", NULL, &c, err,
                            cap);
#ifndef SPR_HAVE_TLS
  if (rc == SPI_OK && c.tls)
    rc = rfail(err, cap, SPI_ENOTSUP,
               "replay.store_config.tls: this libspotinfer_redis was built "
               "without TLS");
#endif
  return rc;
}

int spr_store_fill(void *module, void **state, spi_module_destroy_fn *destroy) {
  spi_replay_store_module *m = module;
  m->abi_version = SPI_MODULE_ABI_VERSION;
  m->struct_size = sizeof *m;
  m->on_failure = SPI_ON_FAILURE_ERROR;
  m->configure = r_configure;
  m->release = r_release;
  m->stats = r_stats;
  m->enqueue = r_enqueue;
  m->claim = r_claim;
  m->ack = r_ack;
  m->nack = r_nack;
  m->queue_stats = r_queue_stats;
  m->tick = r_tick;
  m->check = r_check;
  *state = NULL;
  *destroy = NULL;
  return SPI_OK;
}
