/*
 * bus_redis.c - the "redis" fleet bus (spotinfer_module.h): one Redis
 * Stream, <key_prefix><stream> ("spotinfer:fleet" by default), that every
 * engine XADDs its messages to and XREADs from with a last id of its own.
 *
 * Why a stream and not pub/sub: a pub/sub message reaches only the
 * subscribers connected at that instant, so an engine whose connection
 * blinked, or that was restarting, would never hear of a notice; and
 * reading pub/sub without blocking needs a connection held in subscribe
 * mode that someone drains. A stream keeps the messages: XREAD from the
 * last id read, without BLOCK, returns at once with what came since, up to
 * the engine's bound (COUNT), however long the engine was away. XADD trims
 * it to about max_len entries (MAXLEN ~), so it stays bounded.
 *
 * Where a new engine starts reading: lookback_ms before the server's time
 * at configure (TIME; a stream id starts with its milliseconds; at the
 * first poll if the server was unreachable then), so an instance that
 * starts (or restarts) while a machine is noticed learns of it; what is
 * stale by then expires at once in the engine. The last id read is kept
 * in the module's state, which outlives the instances of one engine, so a
 * reconfiguration goes on where the previous instance stopped.
 *
 * Two connections per instance: publishes (which may come from several
 * threads at once: serialised by pub_mu) never wait behind a poll. A
 * server that cannot be reached at configure is not an error (every call
 * tries again, within spr_conn's backoff); one that refuses (AUTH, SELECT)
 * is.
 *
 * How long a call takes: each is one call with one deadline, taken at its
 * start (spr_conn_deadline): timeout_ms, and connect_timeout_ms more when
 * it connects first. A publish is one command. A poll's steps (connecting,
 * within connect_timeout_ms; TIME, when configure could not fix the
 * cursor; XREAD) all end by that one deadline, and what connecting leaves
 * of its share goes to the steps after it: a poll never takes longer than
 * a call, whatever its steps, and has nothing after them (no acks: XREAD
 * without a group, the cursor kept here). Bounds per step, as the replay
 * store has, would add nothing: the XREAD after a connect has timeout_ms
 * left at least, and only a poll that asks TIME as well has three round
 * trips; when the read is late after its TIME, the cursor is fixed all the
 * same, and the next poll connects and reads. Configure opens both
 * connections and asks TIME: at most 2 x connect_timeout_ms + timeout_ms.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "redis_conn.h"
#include "redis_modules.h"

#define ID_CAP 48
#define KEY_CAP (SPR_NAME_MAX + 1 + 64)

/* The state one registration owns (one engine): where it has read to. */
typedef struct bus_state {
  pthread_mutex_t mu;
  char key[KEY_CAP];   /* the stream the cursor is on */
  char last_id[ID_CAP]; /* "" until known */
} bus_state;

typedef struct bus {
  spr_config cfg;
  bus_state *st;
  char key[KEY_CAP];
  char max_len[24];
  int64_t lookback_ms;
  pthread_mutex_t pub_mu;
  spr_conn *pub;
  spr_conn *sub;
} bus;

static int bfail(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int bfail(char *err, size_t cap, int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, cap, fmt, ap);
  va_end(ap);
  return rc;
}

/* ------------------------------------------------------- configuration */

#define CFG_PATH "module_config.redis"
static const char *const EXTRA_KEYS[] = {"stream", "max_len", "lookback_ms",
                                         NULL};

/* An integer member in [lo, hi], or def when absent. */
static int get_int(const cJSON *o, const char *key, int64_t lo, int64_t hi,
                   int64_t def, int64_t *out, char *err, size_t cap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  *out = def;
  if (!v) return SPI_OK;
  if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble)
    return bfail(err, cap, SPI_ETYPE, CFG_PATH ".%s: must be an integer", key);
  if (v->valuedouble < (double)lo || v->valuedouble > (double)hi)
    return bfail(err, cap, SPI_ERANGE, CFG_PATH ".%s: %g is not in %lld..%lld",
                 key, v->valuedouble, (long long)lo, (long long)hi);
  *out = (int64_t)v->valuedouble;
  return SPI_OK;
}

/* The bus's own keys (spr_config_parse checked the rest). */
static int read_extra(bus *b, const char *json, size_t len, char *err,
                      size_t cap) {
  cJSON *o = cJSON_ParseWithLength(json, len);
  if (!o) return bfail(err, cap, SPI_ENOMEM, CFG_PATH ": out of memory");
  const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "stream");
  const char *stream = "fleet";
  int64_t max_len = 0;
  int rc = SPI_OK;
  if (s && (!cJSON_IsString(s) || !s->valuestring[0] ||
            strlen(s->valuestring) > 64))
    rc = bfail(err, cap, SPI_ETYPE, CFG_PATH ".stream: a string of 1..64 bytes");
  else if (s)
    stream = s->valuestring;
  if (rc == SPI_OK)
    rc = get_int(o, "max_len", 16, 100000000, 100000, &max_len, err, cap);
  if (rc == SPI_OK)
    rc = get_int(o, "lookback_ms", 0, 86400000, 300000, &b->lookback_ms, err,
                 cap);
  if (rc == SPI_OK) {
    snprintf(b->key, sizeof b->key, "%s%s", b->cfg.key_prefix, stream);
    snprintf(b->max_len, sizeof b->max_len, "%lld", (long long)max_len);
  }
  cJSON_Delete(o);
  return rc;
}

/* ------------------------------------------------------------ commands */

/* One command of a call whose deadline (spr_conn_deadline) was taken at
 * its start: a poll that resolves its cursor first (TIME) and then reads
 * shares one. */
static int command(spr_conn *c, int argc, const char **argv, redisReply **r,
                   int64_t deadline, char *err, size_t cap) {
  size_t lens[12];
  for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  return spr_conn_command_by(c, argc, argv, lens, r, deadline, err, cap);
}

/* Where a new reader starts: lookback_ms before the server's clock. */
static int start_id(bus *b, char *id, size_t idcap, int64_t deadline,
                    char *err, size_t cap) {
  const char *argv[] = {"TIME"};
  redisReply *r = NULL;
  int rc = command(b->sub, 1, argv, &r, deadline, err, cap);
  if (rc != SPI_OK) return rc;
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
      r->element[0]->type != REDIS_REPLY_STRING) {
    freeReplyObject(r);
    return bfail(err, cap, SPI_EIO, "redis fleet bus: TIME: unexpected reply");
  }
  /* TIME is seconds and microseconds: both, or the start would fall up to
   * a second earlier than lookback_ms asks. */
  long long ms = atoll(r->element[0]->str) * 1000 - b->lookback_ms;
  if (r->elements >= 2 && r->element[1]->type == REDIS_REPLY_STRING)
    ms += atoll(r->element[1]->str) / 1000;
  freeReplyObject(r);
  /* XREAD returns what comes after the id given: the last id of the
   * millisecond before, so an entry added in this very millisecond is
   * read too. */
  if (ms > 0)
    snprintf(id, idcap, "%lld-18446744073709551615", ms - 1);
  else
    snprintf(id, idcap, "0-0");
  return SPI_OK;
}

/* The cursor, resolving it the first time; "" in *id on failure. */
static int cursor(bus *b, char *id, int64_t deadline, char *err,
                  size_t cap) {
  pthread_mutex_lock(&b->st->mu);
  if (strcmp(b->st->key, b->key) != 0) { /* another stream: start over */
    snprintf(b->st->key, sizeof b->st->key, "%s", b->key);
    b->st->last_id[0] = '\0';
  }
  snprintf(id, ID_CAP, "%s", b->st->last_id);
  pthread_mutex_unlock(&b->st->mu);
  if (id[0]) return SPI_OK;
  int rc = start_id(b, id, ID_CAP, deadline, err, cap);
  if (rc != SPI_OK) return rc;
  pthread_mutex_lock(&b->st->mu);
  if (!b->st->last_id[0]) snprintf(b->st->last_id, ID_CAP, "%s", id);
  snprintf(id, ID_CAP, "%s", b->st->last_id);
  pthread_mutex_unlock(&b->st->mu);
  return SPI_OK;
}

/* Fix where this engine starts reading now, at configure, when the server
 * answers: what anyone publishes from here on (this engine included) is
 * read at the next poll, however late that comes. Unreachable now: the
 * first poll fixes it. */
static void start_reading(bus *b, char *err, size_t cap) {
  char id[ID_CAP];
  (void)cursor(b, id, spr_conn_deadline(b->sub), err, cap);
}

/* --------------------------------------------------------- the module */

static int b_publish(void *state, void *inst, const char *msg, size_t len,
                     char *err, size_t cap) {
  (void)state;
  bus *b = inst;
  const char *argv[] = {"XADD", b->key, "MAXLEN", "~", b->max_len, "*", "m", msg};
  size_t lens[8];
  for (int i = 0; i < 7; i++) lens[i] = strlen(argv[i]);
  lens[7] = len;
  redisReply *r = NULL;
  pthread_mutex_lock(&b->pub_mu);
  int rc = spr_conn_command(b->pub, 8, argv, lens, &r, err, cap);
  pthread_mutex_unlock(&b->pub_mu);
  if (rc != SPI_OK) return rc;
  if (r->type != REDIS_REPLY_STRING)
    rc = bfail(err, cap, SPI_EIO, "redis fleet bus: XADD %s: %s", b->key,
               r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
  freeReplyObject(r);
  return rc;
}

/* Hand the entries of one XREAD reply to fn until it refuses one; last
 * gets the id of the last one taken. */
static void hand_over(const redisReply *r, spi_fleet_msg_fn fn, void *ud,
                      char *last) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) return;
  const redisReply *s = r->element[0];
  if (s->type != REDIS_REPLY_ARRAY || s->elements < 2) return;
  const redisReply *entries = s->element[1];
  for (size_t i = 0; entries->type == REDIS_REPLY_ARRAY && i < entries->elements;
       i++) {
    const redisReply *e = entries->element[i];
    if (e->type != REDIS_REPLY_ARRAY || e->elements < 2 ||
        e->element[0]->type != REDIS_REPLY_STRING)
      continue;
    const redisReply *f = e->element[1];
    const char *msg = "";
    size_t len = 0;
    for (size_t k = 0; f->type == REDIS_REPLY_ARRAY && k + 1 < f->elements;
         k += 2)
      if (f->element[k]->type == REDIS_REPLY_STRING &&
          !strcmp(f->element[k]->str, "m")) {
        msg = f->element[k + 1]->str ? f->element[k + 1]->str : "";
        len = f->element[k + 1]->len;
      }
    /* An entry without "m" is handed over empty: the engine counts it as
     * malformed rather than it vanishing here. */
    if (fn(ud, msg, len) != SPI_OK) return;
    snprintf(last, ID_CAP, "%s", e->element[0]->str);
  }
}

static int b_poll(void *state, void *inst, size_t max, spi_fleet_msg_fn fn,
                  void *ud, char *err, size_t cap) {
  (void)state;
  bus *b = inst;
  char from[ID_CAP], count[24];
  int64_t deadline = spr_conn_deadline(b->sub);
  int rc = cursor(b, from, deadline, err, cap);
  if (rc != SPI_OK) return rc;
  snprintf(count, sizeof count, "%zu", max);
  const char *argv[] = {"XREAD", "COUNT", count, "STREAMS", b->key, from};
  redisReply *r = NULL;
  rc = command(b->sub, 6, argv, &r, deadline, err, cap);
  if (rc != SPI_OK) return rc;
  if (r->type == REDIS_REPLY_ERROR) {
    rc = bfail(err, cap, SPI_EIO, "redis fleet bus: XREAD %s: %s", b->key,
               r->str);
  } else if (r->type != REDIS_REPLY_NIL) {
    char last[ID_CAP];
    snprintf(last, sizeof last, "%s", from);
    hand_over(r, fn, ud, last);
    pthread_mutex_lock(&b->st->mu);
    if (!strcmp(b->st->key, b->key))
      snprintf(b->st->last_id, sizeof b->st->last_id, "%s", last);
    pthread_mutex_unlock(&b->st->mu);
  }
  freeReplyObject(r);
  return rc;
}

static void b_release(void *state, void *inst) {
  (void)state;
  bus *b = inst;
  if (!b) return;
  spr_conn_free(b->pub);
  spr_conn_free(b->sub);
  pthread_mutex_destroy(&b->pub_mu);
  free(b);
}

static int b_configure(void *state, const char *json, size_t len, void **out,
                       char *err, size_t cap) {
  *out = NULL;
  bus *b = calloc(1, sizeof *b);
  if (!b) return bfail(err, cap, SPI_ENOMEM, "redis fleet bus: out of memory");
  if (pthread_mutex_init(&b->pub_mu, NULL) != 0) {
    free(b);
    return bfail(err, cap, SPI_ENOMEM, "redis fleet bus: out of memory");
  }
  b->st = state;
  int rc = spr_config_parse(json, len, CFG_PATH, EXTRA_KEYS, &b->cfg, err, cap);
  if (rc == SPI_OK) rc = read_extra(b, json, len, err, cap);
  if (rc == SPI_OK) rc = spr_conn_new(&b->cfg, &b->pub, err, cap);
  if (rc == SPI_OK) rc = spr_conn_new(&b->cfg, &b->sub, err, cap);
  /* Refused (AUTH, SELECT): a configuration error now. Unreachable: every
   * publish and poll tries again. */
  if (rc == SPI_OK) {
    rc = spr_conn_open(b->pub, err, cap);
    if (rc == SPI_EIO) rc = SPI_OK;
    else if (rc == SPI_OK) start_reading(b, err, cap);
  }
  if (rc != SPI_OK) {
    b_release(state, b);
    return rc;
  }
  err[0] = '\0';
  *out = b;
  return SPI_OK;
}

static void b_destroy(void *state) {
  bus_state *st = state;
  if (!st) return;
  pthread_mutex_destroy(&st->mu);
  free(st);
}

int spr_bus_fill(void *module, void **state, spi_module_destroy_fn *destroy) {
  spi_fleet_bus_module *m = module;
  bus_state *st = calloc(1, sizeof *st);
  if (!st) return SPI_ENOMEM;
  if (pthread_mutex_init(&st->mu, NULL) != 0) {
    free(st);
    return SPI_ENOMEM;
  }
  m->abi_version = SPI_MODULE_ABI_VERSION;
  m->struct_size = sizeof *m;
  m->on_failure = SPI_ON_FAILURE_ERROR;
  m->configure = b_configure;
  m->release = b_release;
  m->publish = b_publish;
  m->poll = b_poll;
  *state = st;
  *destroy = b_destroy;
  return SPI_OK;
}
