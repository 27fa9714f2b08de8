/*
 * notice_bus.c - the fleet bus: notices and spot-pool cooldowns shared
 * between the engines of a deployment through a module that moves bytes
 * (spotinfer_module.h, "fleet bus").
 *
 * The library owns the message format, so every module carries the same
 * text and a bad message is found here, not in each module. A message is
 * one JSON object in canonical form (sorted keys, no spaces), version 1:
 *
 *   {"active":true,"dedup_key":"...","deadline_ns":"1700000120000000000",
 *    "event_id":"...","issued_ns":"1700000000000000000","kind":"terminate",
 *    "node":"i-0abc","type":"notice","v":1}
 *   {"instance_type":"g5.xlarge","type":"cooldown",
 *    "until_ns":"1700000180000000000","v":1,"zone":"us-east-1a"}
 *
 * Times are decimal strings: JSON numbers are doubles to most readers and
 * would round nanoseconds. A reader skips (and counts) a message of a
 * version or type it does not know, so a newer engine on the same bus is
 * not an error; it ignores members it does not know. issued_ns (the
 * publishing engine's time when the notice acted there) was added within
 * version 1: a message without it is read as issued at 0. It is carried
 * for the reader, not used to tell repeats apart (node.c, bus_key).
 *
 * Module calls run with no engine lock and no pin held: the bus's instance
 * is reference-counted (the snapshot holds one reference, each call in
 * flight another), so a configure that retires the snapshot while a slow
 * publish runs frees the instance only when the publish returns. The
 * engine's fleet state has one mutex, a leaf (engine.h's order, 5): the
 * ring of messages waiting to be sent, which thread is sending, and the
 * last error; counters are atomic. A notice's messages go into the ring
 * (copied, encoded only when sent, so nothing is allocated there) while
 * node.c still holds its lock, so the ring has them in the order
 * the notices acted, whatever the threads do once the lock is free; then
 * they are sent from the head. One thread publishes at a time (others
 * leave their messages in the ring behind it and ask it to send them
 * too, so order holds even when a publish fails) and one polls at a time
 * (a tick finding another poll running skips its own).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "engine.h"

#define MSG_VERSION 1

/* How long one tick may spend sending kept messages, by the engine's
 * clock. A bus that takes messages again, but each one slowly (near the
 * module's own timeout, which the library does not know), would otherwise
 * hold the tick for one publish per kept message, up to
 * SPI_FLEET_PENDING_MAX of them, on the host's event loop. Past the budget
 * the publish under way ends and the rest wait for the next tick: a tick
 * takes about one publish on a slow bus, while a quick one still sends
 * everything kept at once. */
#define FLUSH_BUDGET_NS (100 * 1000000LL)

struct spi_fleet_ref {
  atomic_uint refs;
  spi_modentry *mod;
  void *inst;
  size_t max_per_poll;
};

/* A message waiting to be sent: what it says, copied as it is queued
 * (under the nodes lock, so nothing is allocated there), and encoded
 * when it is sent. */
typedef struct pending_msg {
  uint64_t seq; /* 1, 2, ...: the order messages went into the ring */
  int cooldown; /* 1: cool; 0: notice, deadline, issued */
  int64_t deadline, issued;
  union {
    spi_notice notice;
    spi_fleet_cool cool;
  } u;
} pending_msg;

struct spi_fleet {
  pthread_mutex_t mu; /* pending, seq, kept, sending, want, last_error */
  pending_msg pending[SPI_FLEET_PENDING_MAX]; /* a ring, oldest at head */
  size_t head, npending;
  uint64_t seq; /* the last message put in the ring */
  /* What the ring holds waits for a tick: a publish failed, or a tick's
   * budget ran out, and the ring has not been empty since. A notice's
   * thread then only adds its messages behind. */
  int kept;
  /* A thread is publishing (a notice's messages, or a tick sending what
   * was kept): one at a time, so the bus gets messages in the order they
   * were put in the ring, and one that fails goes back ahead of those
   * that queued behind it meanwhile. */
  int sending;
  /* The last message a thread that found another sending asked for: the
   * sender goes on up to it, so a notice handed in meanwhile goes out
   * before the sender returns. 0 once the ring is empty. */
  uint64_t want;
  atomic_int polling; /* a tick is polling */
  atomic_ullong published, publish_failed, dropped, polls, poll_failed;
  atomic_ullong received, applied, duplicates, malformed, unknown;
  char last_error[256];
};

/* -------------------------------------------------------------- the state */

struct spi_fleet *spi__fleet_new(const spi_mem *m) {
  struct spi_fleet *f = spi__calloc(m, 1, sizeof *f);
  if (!f) return NULL;
  if (pthread_mutex_init(&f->mu, NULL) != 0) {
    spi__free(m, f);
    return NULL;
  }
  return f;
}

void spi__fleet_free(struct spi_fleet *f, const spi_mem *m) {
  if (!f) return;
  pthread_mutex_destroy(&f->mu);
  spi__free(m, f);
}

static void set_error(struct spi_fleet *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_error(struct spi_fleet *f, const char *fmt, ...) {
  char msg[sizeof f->last_error];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&f->mu);
  memcpy(f->last_error, msg, sizeof msg);
  pthread_mutex_unlock(&f->mu);
}

/* ---------------------------------------------------- the bus's instance */

static struct spi_fleet_ref *ref_acquire(spi_engine *e) {
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(e, &pin);
  struct spi_fleet_ref *r = s->fleet;
  if (r) atomic_fetch_add(&r->refs, 1);
  spi__snap_release(e, pin);
  return r;
}

void spi__fleet_ref_drop(spi_engine *e, struct spi_fleet_ref *r) {
  if (!r || atomic_fetch_sub(&r->refs, 1) != 1) return;
  if (r->inst) r->mod->release(r->mod->state, r->inst);
  spi__free(&e->mem, r);
}

int spi__fleet_configure(spi_engine *e, const cJSON *root, spi_snapshot *s,
                         char *err, size_t errcap) {
  const cJSON *mods = cJSON_GetObjectItemCaseSensitive(root, "modules");
  const cJSON *fl = cJSON_GetObjectItemCaseSensitive(root, "fleet");
  const char *name = NULL;
  size_t nlen = 0;
  int64_t max_per_poll = 0;
  int rc = spi__cfg_string(mods, "modules.fleet_bus", "modules", &name, &nlen,
                           err, errcap);
  if (rc == SPI_OK && fl)
    rc = spi__cfg_check_keys(fl, "fleet", "fleet", err, errcap);
  if (rc == SPI_OK)
    rc = spi__cfg_int(fl, "fleet.max_per_poll", "fleet", &max_per_poll, err,
                      errcap);
  if (rc != SPI_OK || nlen == 0) return rc;
  spi_modentry *m = spi__module_find(e, SPI_MODULE_FLEET_BUS, name, nlen);
  if (!m) {
    /* "redis": loaded from libspotinfer_redis (module_load.c). */
    char lerr[SPI_ERRMSG_CAP] = "";
    rc = spi__module_autoload(e, SPI_MODULE_FLEET_BUS, name, nlen,
                              "modules.fleet_bus", lerr, sizeof lerr);
    if (rc == SPI_OK) m = spi__module_find(e, SPI_MODULE_FLEET_BUS, name, nlen);
    if (!m && lerr[0]) {
      spi__errf(err, errcap, "%s", lerr);
      return rc == SPI_OK ? SPI_ENOTFOUND : rc;
    }
  }
  if (!m) {
    spi__errf(err, errcap, "modules.fleet_bus: no fleet_bus module named \"%.*s\"",
              (int)spi__utf8_fit(name, nlen, 64), name);
    return SPI_ENOTFOUND;
  }
  struct spi_fleet_ref *r = spi__calloc(&e->mem, 1, sizeof *r);
  if (!r) {
    spi__errf(err, errcap, "modules.fleet_bus: out of memory");
    return SPI_ENOMEM;
  }
  atomic_init(&r->refs, 1u);
  r->mod = m;
  r->max_per_poll = (size_t)max_per_poll;
  const cJSON *mcfg = cJSON_GetObjectItemCaseSensitive(root, "module_config");
  char shown[96];
  snprintf(shown, sizeof shown, "module_config.%s", m->name);
  rc = spi__module_configure(
      e, m, mcfg ? cJSON_GetObjectItemCaseSensitive(mcfg, m->name) : NULL,
      shown, &r->inst, err, errcap);
  if (rc != SPI_OK) {
    spi__free(&e->mem, r);
    return rc;
  }
  s->fleet = r;
  return SPI_OK;
}

/* ---------------------------------------------------------- the messages */

static int add_i64(cJSON *o, const char *key, int64_t v) {
  char num[24];
  snprintf(num, sizeof num, "%lld", (long long)v);
  return cJSON_AddStringToObject(o, key, num) != NULL;
}

/* The canonical text of o into out (engine memory); frees o. */
static int finish(spi_engine *e, cJSON *o, int ok, spi_buf *out) {
  int rc = ok ? spi__canon_json(o, out, &e->mem) : SPI_ENOMEM;
  cJSON_Delete(o);
  if (rc == SPI_OK && out->len > SPI_FLEET_MSG_MAX) rc = SPI_ETOOBIG;
  return rc;
}

static int encode_notice(spi_engine *e, const spi_notice *n, int64_t deadline,
                         int64_t issued, spi_buf *out) {
  cJSON *o = cJSON_CreateObject();
  int ok = o && cJSON_AddNumberToObject(o, "v", MSG_VERSION) &&
           cJSON_AddStringToObject(o, "type", "notice") &&
           cJSON_AddStringToObject(o, "node", n->node) &&
           cJSON_AddStringToObject(o, "kind", spi_notice_kind_name(n->kind)) &&
           add_i64(o, "deadline_ns", deadline) &&
           cJSON_AddBoolToObject(o, "active", n->active != 0) &&
           cJSON_AddStringToObject(o, "dedup_key", n->dedup_key) &&
           cJSON_AddStringToObject(o, "event_id", n->event_id) &&
           add_i64(o, "issued_ns", issued);
  return finish(e, o, ok, out);
}

static int encode_cooldown(spi_engine *e, const spi_fleet_cool *c,
                           spi_buf *out) {
  cJSON *o = cJSON_CreateObject();
  int ok = o && cJSON_AddNumberToObject(o, "v", MSG_VERSION) &&
           cJSON_AddStringToObject(o, "type", "cooldown") &&
           cJSON_AddStringToObject(o, "instance_type", c->type) &&
           cJSON_AddStringToObject(o, "zone", c->zone) &&
           add_i64(o, "until_ns", c->until);
  return finish(e, o, ok, out);
}

/* What a message decodes to. */
enum { MSG_NOTICE = 1, MSG_COOLDOWN = 2, MSG_UNKNOWN = 3 };
typedef struct decoded {
  spi_notice notice;
  spi_fleet_cool cool;
} decoded;

/* Where the first control character (a byte below 0x20) of s[0..len) is,
 * or len if there is none. */
static size_t control_at(const char *s, size_t len) {
  size_t i = 0;
  while (i < len && (unsigned char)s[i] >= 0x20) i++;
  return i;
}

/* A text field of cap bytes: NUL-terminated within them, at least min_len
 * bytes long, without control characters. */
static int check_text(const char *name, const char *s, size_t cap,
                      size_t min_len, char *err, size_t errcap) {
  const char *z = memchr(s, '\0', cap);
  if (!z) {
    spi__errf(err, errcap, "%s: not NUL-terminated within its %zu bytes", name,
              cap);
    return SPI_EINVAL;
  }
  size_t len = (size_t)(z - s), at = control_at(s, len);
  if (len < min_len) {
    spi__errf(err, errcap, "%s: %zu bytes, expected %zu..%zu", name, len,
              min_len, cap - 1);
    return SPI_EINVAL;
  }
  if (at < len) {
    spi__errf(err, errcap, "%s: control character at byte %zu", name, at);
    return SPI_EINVAL;
  }
  return SPI_OK;
}

/* The one statement of what a notice message may hold: decode_notice
 * applies it to what it reads, spi_engine_notice to what it is handed, so
 * no engine acts on a notice the others would refuse as malformed. */
int spi__fleet_notice_check(const spi_notice *n, char *err, size_t errcap) {
  int rc = check_text("node", n->node, sizeof n->node, 1, err, errcap);
  if (rc == SPI_OK)
    rc = check_text("event_id", n->event_id, sizeof n->event_id, 0, err,
                    errcap);
  if (rc == SPI_OK)
    rc = check_text("dedup_key", n->dedup_key, sizeof n->dedup_key, 0, err,
                    errcap);
  if (rc == SPI_OK && n->deadline_ns < 0) {
    spi__errf(err, errcap, "deadline_ns: %lld is negative",
              (long long)n->deadline_ns);
    rc = SPI_EINVAL;
  }
  return rc;
}

/* A string member copied into dst (cap bytes with its NUL). */
static int copy_str(const cJSON *o, const char *key, char *dst, size_t cap,
                    char *err, size_t errcap) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsString(v) || !v->valuestring) {
    spi__errf(err, errcap, "%s: missing or not a string", key);
    return SPI_EPARSE;
  }
  size_t len = strlen(v->valuestring);
  if (len >= cap) {
    spi__errf(err, errcap, "%s: %zu bytes, expected at most %zu", key, len,
              cap - 1);
    return SPI_EPARSE;
  }
  memcpy(dst, v->valuestring, len + 1);
  return SPI_OK;
}

/* A string member copied into dst: at least min_len bytes, no control
 * characters. */
static int get_str(const cJSON *o, const char *key, char *dst, size_t cap,
                   size_t min_len, char *err, size_t errcap) {
  int rc = copy_str(o, key, dst, cap, err, errcap);
  if (rc == SPI_OK && check_text(key, dst, cap, min_len, err, errcap) != SPI_OK)
    rc = SPI_EPARSE;
  return rc;
}

/* A time: a string of 1..19 decimal digits that fits an int64. */
static int get_time(const cJSON *o, const char *key, int64_t *out, char *err,
                    size_t errcap) {
  char s[24];
  int rc = get_str(o, key, s, 20, 1, err, errcap);
  if (rc != SPI_OK) return rc;
  uint64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9' || v > (uint64_t)(INT64_MAX - (*p - '0')) / 10) {
      spi__errf(err, errcap, "%s: not a time in nanoseconds", key);
      return SPI_EPARSE;
    }
    v = v * 10 + (uint64_t)(*p - '0');
  }
  *out = (int64_t)v;
  return SPI_OK;
}

static int decode_notice(const cJSON *o, spi_notice *n, char *err,
                         size_t errcap) {
  memset(n, 0, sizeof *n);
  n->struct_size = sizeof *n;
  char kind[16];
  int rc = copy_str(o, "node", n->node, sizeof n->node, err, errcap);
  if (rc == SPI_OK) rc = get_str(o, "kind", kind, sizeof kind, 1, err, errcap);
  if (rc == SPI_OK) rc = get_time(o, "deadline_ns", &n->deadline_ns, err, errcap);
  if (rc == SPI_OK)
    rc = copy_str(o, "dedup_key", n->dedup_key, sizeof n->dedup_key, err,
                  errcap);
  if (rc == SPI_OK)
    rc = copy_str(o, "event_id", n->event_id, sizeof n->event_id, err, errcap);
  if (rc == SPI_OK && spi__fleet_notice_check(n, err, errcap) != SPI_OK)
    rc = SPI_EPARSE;
  /* Optional (an older engine neither sends nor reads it) and not used
   * here, but a message whose issued_ns is no time is malformed. */
  int64_t issued;
  if (rc == SPI_OK && cJSON_GetObjectItemCaseSensitive(o, "issued_ns"))
    rc = get_time(o, "issued_ns", &issued, err, errcap);
  if (rc != SPI_OK) return rc;
  const cJSON *active = cJSON_GetObjectItemCaseSensitive(o, "active");
  if (!cJSON_IsBool(active)) {
    spi__errf(err, errcap, "active: missing or not a boolean");
    return SPI_EPARSE;
  }
  n->active = cJSON_IsTrue(active);
  for (int32_t k = SPI_NOTICE_TERMINATE; k <= SPI_NOTICE_PREEMPT; k++)
    if (!strcmp(kind, spi_notice_kind_name(k))) n->kind = k;
  if (n->kind == SPI_NOTICE_NONE) { /* a newer engine's: skipped, counted */
    spi__errf(err, errcap, "kind: \"%s\" is not a notice kind this engine reads",
              kind);
    return MSG_UNKNOWN;
  }
  return SPI_OK;
}

/* MSG_NOTICE, MSG_COOLDOWN or MSG_UNKNOWN, or SPI_EPARSE (with the reason)
 * or SPI_ENOMEM. */
static int decode(const char *text, size_t len, decoded *d, char *err,
                  size_t errcap) {
  cJSON *o = NULL;
  int rc = spi__json_parse_object(text, len, SPI_FLEET_MSG_MAX, "message", &o,
                                  err, errcap);
  if (rc != SPI_OK) return rc == SPI_ENOMEM ? rc : SPI_EPARSE;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "v");
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
  if (!cJSON_IsNumber(v) || !cJSON_IsString(type)) {
    spi__errf(err, errcap, "v and type: missing or of the wrong type");
    rc = SPI_EPARSE;
  } else if (v->valuedouble != MSG_VERSION) {
    spi__errf(err, errcap, "version %g is not one this engine reads",
              v->valuedouble);
    rc = MSG_UNKNOWN;
  } else if (!strcmp(type->valuestring, "notice")) {
    rc = decode_notice(o, &d->notice, err, errcap);
    if (rc == SPI_OK) rc = MSG_NOTICE;
  } else if (!strcmp(type->valuestring, "cooldown")) {
    spi_fleet_cool *c = &d->cool;
    rc = get_str(o, "instance_type", c->type, sizeof c->type, 0, err, errcap);
    if (rc == SPI_OK) rc = get_str(o, "zone", c->zone, sizeof c->zone, 0, err, errcap);
    if (rc == SPI_OK) rc = get_time(o, "until_ns", &c->until, err, errcap);
    if (rc == SPI_OK) rc = MSG_COOLDOWN;
  } else {
    spi__errf(err, errcap, "type \"%.*s\" is not one this engine reads",
              SPI_CUT(type->valuestring, 32));
    rc = MSG_UNKNOWN;
  }
  cJSON_Delete(o);
  return rc;
}

/* ------------------------------------------------------------- publishing */

/* Put a message at the ring's tail (it is copied); beyond the bound the
 * oldest goes. Returns its seq. Allocates nothing. f->mu held. */
static uint64_t pending_push(struct spi_fleet *f, const pending_msg *m) {
  if (f->npending == SPI_FLEET_PENDING_MAX) {
    f->head = (f->head + 1) % SPI_FLEET_PENDING_MAX;
    f->npending--;
    atomic_fetch_add(&f->dropped, 1);
  }
  pending_msg *p = &f->pending[(f->head + f->npending) % SPI_FLEET_PENDING_MAX];
  *p = *m;
  p->seq = ++f->seq;
  f->npending++;
  return p->seq;
}

static int call_publish(spi_engine *e, struct spi_fleet *f,
                        struct spi_fleet_ref *r, const char *msg, size_t len,
                        char *err, size_t errcap) {
  char merr[SPI_ERRMSG_CAP] = "";
  int rc = r->mod->m.fleet_bus.publish(r->mod->state, r->inst, msg, len, merr,
                                       sizeof merr);
  if (rc == SPI_OK) {
    atomic_fetch_add(&f->published, 1);
    return SPI_OK;
  }
  atomic_fetch_add(&f->publish_failed, 1);
  spi__errf(err, errcap, "fleet bus \"%s\": publish: %s", r->mod->name,
            merr[0] ? merr : spi_strerror(rc));
  set_error(f, "%s", err);
  spi__engine_log(e, SPI_LOG_WARN, "%s (kept to send again)", err);
  return SPI_EMODULE;
}

/* Put a message that failed again back at the head; if the ring filled
 * meanwhile, it is the one dropped. f->mu held. */
static void pending_unshift(struct spi_fleet *f, const pending_msg *p) {
  if (f->npending == SPI_FLEET_PENDING_MAX) {
    atomic_fetch_add(&f->dropped, 1);
    return;
  }
  f->head = (f->head + SPI_FLEET_PENDING_MAX - 1) % SPI_FLEET_PENDING_MAX;
  f->pending[f->head] = *p;
  f->npending++;
}

/* Take the oldest message off the ring (npending > 0) into *p. f->mu
 * held. */
static void pending_shift(struct spi_fleet *f, pending_msg *p) {
  *p = f->pending[f->head];
  f->head = (f->head + 1) % SPI_FLEET_PENDING_MAX;
  f->npending--;
  if (f->npending == 0) f->want = 0;
}

uint64_t spi__fleet_queue_notice(spi_engine *e, const spi_notice *n,
                                 int64_t deadline, int64_t issued,
                                 const spi_fleet_cool *cool, size_t ncool) {
  unsigned pin;
  int configured = spi__snap_acquire(e, &pin)->fleet != NULL;
  spi__snap_release(e, pin);
  if (!configured) return 0;
  struct spi_fleet *f = spi__nodes_fleet(e);
  /* Copied as they are, encoded when sent: nothing here can fail. */
  pending_msg m;
  memset(&m, 0, sizeof m);
  m.u.notice = *n;
  m.u.notice.struct_size = sizeof m.u.notice;
  m.deadline = deadline;
  m.issued = issued;
  pthread_mutex_lock(&f->mu);
  uint64_t last = pending_push(f, &m);
  m.cooldown = 1;
  for (size_t i = 0; i < ncool; i++) {
    m.u.cool = cool[i];
    last = pending_push(f, &m);
  }
  pthread_mutex_unlock(&f->mu);
  return last;
}

/* Encode p and publish it; no lock held. SPI_OK: sent, or dropped as a
 * message that can never be written (counted); otherwise it failed and
 * is to be kept (err says why). */
static int send_one(spi_engine *e, struct spi_fleet *f,
                    struct spi_fleet_ref *r, const pending_msg *p,
                    spi_buf *b, char *err, size_t errcap) {
  spi__buf_clear(b);
  int rc = p->cooldown ? encode_cooldown(e, &p->u.cool, b)
                       : encode_notice(e, &p->u.notice, p->deadline,
                                       p->issued, b);
  const char *what = p->cooldown ? p->u.cool.zone : p->u.notice.node;
  if (rc == SPI_ENOMEM) {
    spi__errf(err, errcap, "fleet bus: a message for %.*s: out of memory "
              "(kept to send again)", SPI_CUT(what, 63));
    set_error(f, "%s", err);
    return rc;
  }
  if (rc != SPI_OK) {
    atomic_fetch_add(&f->dropped, 1);
    set_error(f, "fleet bus: a message for %.*s could not be written: %s",
              SPI_CUT(what, 63), spi_strerror(rc));
    return SPI_OK;
  }
  return call_publish(e, f, r, (const char *)b->data, b->len, err, errcap);
}

/* Whether a flush that started at start has spent FLUSH_BUDGET_NS. A clock
 * that went back counts as spent: a stepped clock must not stretch a tick. */
static int budget_spent(const spi_engine *e, int64_t start) {
  int64_t now = spi__engine_now(e);
  return now < start || (uint64_t)now - (uint64_t)start >= FLUSH_BUDGET_NS;
}

/* Send the message at the ring's head (npending > 0): taken off, sent
 * with f->mu released, and put back at the head if it failed. With
 * spent, also whether a flush that started at start has spent its
 * budget, read before f->mu is taken again (the clock is a host hook).
 * f->mu held on entry and on return. */
static int send_head(spi_engine *e, struct spi_fleet *f,
                     struct spi_fleet_ref *r, spi_buf *b, char *err,
                     size_t errcap, int64_t start, int *spent) {
  pending_msg p;
  pending_shift(f, &p);
  pthread_mutex_unlock(&f->mu);
  int rc = send_one(e, f, r, &p, b, err, errcap);
  if (spent) *spent = budget_spent(e, start);
  pthread_mutex_lock(&f->mu);
  if (rc != SPI_OK) pending_unshift(f, &p);
  return rc;
}

/* Send from the head of the ring up to message upto, or up to what a
 * thread that found this one sending asked for (want), unless the ring
 * is kept for a tick (the next tick sends it, in order). If another
 * thread is sending, ask it for upto and return: it sends this thread's
 * messages before it stops, unless a publish fails or (the tick's flush)
 * its time runs out, when the next tick does. A publish that fails goes
 * back to the head, and the ring then waits for a tick. */
void spi__fleet_send_queued(spi_engine *e, uint64_t upto) {
  if (!upto) return;
  struct spi_fleet_ref *r = ref_acquire(e);
  if (!r) return; /* kept until a bus is configured again */
  struct spi_fleet *f = spi__nodes_fleet(e);
  spi_buf b = {0};
  pthread_mutex_lock(&f->mu);
  if (f->sending) {
    if (upto > f->want) f->want = upto;
  } else {
    f->sending = 1;
    while (!f->kept && f->npending > 0 &&
           f->pending[f->head].seq <= (upto > f->want ? upto : f->want)) {
      char err[SPI_ERRMSG_CAP];
      if (send_head(e, f, r, &b, err, sizeof err, 0, NULL) != SPI_OK) {
        f->kept = f->npending > 0;
        break;
      }
    }
    f->sending = 0;
  }
  pthread_mutex_unlock(&f->mu);
  spi__buf_free(&b, &e->mem);
  spi__fleet_ref_drop(e, r);
}

/* Send what the ring holds (kept after a failure, or left by notices'
 * threads), oldest first, until one fails again or the tick's budget is
 * spent (one is always tried, so the ring drains). What is not sent stays
 * at the head, kept for the next tick. While this runs, new messages
 * queue behind (sending), so order holds; while another thread is
 * sending, this tick leaves the ring to the next one. */
static int flush_pending(spi_engine *e, struct spi_fleet *f,
                         struct spi_fleet_ref *r, char *err, size_t errcap) {
  int rc = SPI_OK;
  int64_t start = spi__engine_now(e);
  pthread_mutex_lock(&f->mu);
  if (f->sending) {
    pthread_mutex_unlock(&f->mu);
    return SPI_OK;
  }
  f->sending = 1;
  spi_buf b = {0};
  while (f->npending > 0) {
    int spent;
    rc = send_head(e, f, r, &b, err, errcap, start, &spent);
    if (rc != SPI_OK || spent) break;
  }
  f->kept = f->npending > 0; /* the rest wait for the next tick */
  f->sending = 0;
  pthread_mutex_unlock(&f->mu);
  spi__buf_free(&b, &e->mem);
  return rc;
}

/* ---------------------------------------------------------------- polling */

/* What one poll took: length-prefixed copies, applied once the module has
 * returned (so no module lock is held while the engine's are taken). */
typedef struct taken {
  spi_engine *e;
  struct spi_fleet *f;
  spi_buf buf;
  size_t n, max;
} taken;

static int take(void *user_data, const char *msg, size_t len) {
  taken *t = user_data;
  if (t->n >= t->max) return SPI_EFULL;
  if ((!msg && len) || len > SPI_FLEET_MSG_MAX) {
    t->n++;
    atomic_fetch_add(&t->f->received, 1);
    atomic_fetch_add(&t->f->malformed, 1);
    set_error(t->f, "fleet bus: message skipped: %s",
              msg ? "over SPI_FLEET_MSG_MAX bytes" : "NULL with a length");
    return SPI_OK;
  }
  /* Room for the length and the bytes at once: a length appended without
   * its bytes would be read past the end. */
  uint32_t l = (uint32_t)len;
  if (spi__buf_reserve(&t->buf, &t->e->mem, sizeof l + len) != SPI_OK)
    return SPI_ENOMEM; /* not taken: the module keeps it for next time */
  spi__buf_append(&t->buf, &t->e->mem, &l, sizeof l);
  spi__buf_append(&t->buf, &t->e->mem, msg, len);
  t->n++;
  atomic_fetch_add(&t->f->received, 1);
  return SPI_OK;
}

static void apply_one(spi_engine *e, struct spi_fleet *f, const char *text,
                      size_t len) {
  decoded d;
  char err[200] = "";
  int kind = decode(text, len, &d, err, sizeof err);
  if (kind == MSG_UNKNOWN || kind < 0) {
    atomic_fetch_add(kind == MSG_UNKNOWN ? &f->unknown : &f->malformed, 1);
    set_error(f, "fleet bus: message skipped: %s", err);
    spi__engine_log(e, SPI_LOG_WARN, "fleet bus: message skipped: %s", err);
    return;
  }
  int rc = kind == MSG_NOTICE
               ? spi__nodes_apply_remote(e, &d.notice)
               : spi__nodes_apply_cooldown(e, d.cool.type, d.cool.zone,
                                           d.cool.until);
  if (rc >= 0) {
    atomic_fetch_add(rc > 0 ? &f->applied : &f->duplicates, 1);
    return;
  }
  set_error(f, "fleet bus: notice for %.*s not applied: %s",
            SPI_CUT(d.notice.node, 63), spi_strerror(rc));
  spi__engine_log(e, SPI_LOG_WARN, "fleet bus: notice for %.*s not applied: %s",
                  SPI_CUT(d.notice.node, 63), spi_strerror(rc));
}

static int poll_once(spi_engine *e, struct spi_fleet *f,
                     struct spi_fleet_ref *r, char *err, size_t errcap) {
  taken t;
  memset(&t, 0, sizeof t);
  t.e = e;
  t.f = f;
  t.max = r->max_per_poll;
  char merr[SPI_ERRMSG_CAP] = "";
  atomic_fetch_add(&f->polls, 1);
  int rc = r->mod->m.fleet_bus.poll(r->mod->state, r->inst, t.max, take, &t,
                                    merr, sizeof merr);
  if (rc != SPI_OK) {
    atomic_fetch_add(&f->poll_failed, 1);
    spi__errf(err, errcap, "fleet bus \"%s\": poll: %s", r->mod->name,
              merr[0] ? merr : spi_strerror(rc));
    set_error(f, "%s", err);
    spi__engine_log(e, SPI_LOG_WARN, "%s", err);
    rc = SPI_EMODULE;
  }
  /* What was taken before a failure still acts. */
  for (size_t off = 0; off < t.buf.len;) {
    uint32_t l;
    memcpy(&l, t.buf.data + off, sizeof l);
    apply_one(e, f, (const char *)t.buf.data + off + sizeof l, l);
    off += sizeof l + l;
  }
  spi__buf_free(&t.buf, &e->mem);
  return rc;
}

int spi__fleet_tick(spi_engine *e) {
  struct spi_fleet_ref *r = ref_acquire(e);
  if (!r) return SPI_OK;
  struct spi_fleet *f = spi__nodes_fleet(e);
  int idle = 0;
  if (!atomic_compare_exchange_strong(&f->polling, &idle, 1)) {
    spi__fleet_ref_drop(e, r); /* another thread is at it right now */
    return SPI_OK;
  }
  char ferr[SPI_ERRMSG_CAP] = "", perr[SPI_ERRMSG_CAP] = "";
  int frc = flush_pending(e, f, r, ferr, sizeof ferr);
  int prc = poll_once(e, f, r, perr, sizeof perr);
  atomic_store(&f->polling, 0);
  spi__fleet_ref_drop(e, r);
  if (prc != SPI_OK) return spi__engine_fail(e, SPI_EMODULE, "%s", perr);
  if (frc != SPI_OK) return spi__engine_fail(e, SPI_EMODULE, "%s", ferr);
  return SPI_OK;
}

/* ------------------------------------------------------------------ stats */

int spi_engine_fleet_stats(spi_engine *engine, spi_fleet_stats *out) {
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!out || out->struct_size < sizeof *out)
    return spi__engine_fail(engine, SPI_EINVAL,
                            "fleet stats: out is NULL or its struct_size is "
                            "below sizeof(spi_fleet_stats)");
  size_t size = out->struct_size;
  memset(out, 0, size); /* a newer caller's tail too */
  out->struct_size = size;
  unsigned pin;
  out->configured = spi__snap_acquire(engine, &pin)->fleet != NULL;
  spi__snap_release(engine, pin);
  struct spi_fleet *f = spi__nodes_fleet(engine);
  out->published = atomic_load(&f->published);
  out->publish_failed = atomic_load(&f->publish_failed);
  out->dropped = atomic_load(&f->dropped);
  out->polls = atomic_load(&f->polls);
  out->poll_failed = atomic_load(&f->poll_failed);
  out->received = atomic_load(&f->received);
  out->applied = atomic_load(&f->applied);
  out->duplicates = atomic_load(&f->duplicates);
  out->malformed = atomic_load(&f->malformed);
  out->unknown = atomic_load(&f->unknown);
  pthread_mutex_lock(&f->mu);
  out->pending = f->npending;
  memcpy(out->last_error, f->last_error, sizeof out->last_error);
  pthread_mutex_unlock(&f->mu);
  return SPI_OK;
}
