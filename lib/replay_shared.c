/*
 * replay_shared.c - a replay queue on a queue store (spotinfer_module.h):
 * the queue lives in the store, shared by every process that opens it, and
 * this file keeps only what one process must know itself.
 *
 *   - The claims it handed out (claim id -> key, attempts, deadline), so a
 *     nack can compute the backoff and decide dead-lettering with the same
 *     rules as the local queue (spi__replay_backoff_ms, replay.max_attempts,
 *     the deadline) and hand the store the decision. A claim neither acked
 *     nor nacked (the worker gave up on it; the store hands the envelope
 *     out again once its lease ends) is forgotten its lease length again
 *     after its lease ended (at least 1 s after: the "redis" store
 *     remembers a finish as long), on the next claim or tick; its ack or
 *     nack then answers SPI_ESTALE, as the local queue's does after the
 *     lease. The table holds at most max(1024, replay.max_bytes / the size
 *     of an entry) claims; beyond, those due to be forgotten first are
 *     forgotten first (with a warning).
 *   - A claim the caller's buffer cannot take (SPI_EBUFSIZE) is given back
 *     at once (a nack with its attempts unchanged, ready now), so nothing
 *     is claimed, as with the local queue; in a shared queue it goes back
 *     to its lane's tail. A claim whose envelope the library refuses (no
 *     key, a class out of range: nothing will ever take it) is
 *     dead-lettered at once (a nack with dead set), with an error, instead
 *     of coming back each time its lease ends; when the store does not
 *     answer that nack (SPI_EIO), later claims and ticks repeat it.
 *   - The fallback journal ("replay.fallback": "journal"): an enqueue the
 *     store answers with SPI_EIO (unreachable, timed out) goes to a local
 *     journal queue instead and the call succeeds as durable as that
 *     journal's fsync policy. Every later enqueue, claim and tick first
 *     drains the journal into the store, oldest first: an envelope is acknowledged in the journal
 *     only after the store took it, and the store's enqueue is idempotent
 *     on the key, so each envelope reaches the store exactly once even if
 *     the process dies in between. While the store is unreachable, draining
 *     is tried again at most every 100 ms. What the journal holds, what it
 *     took and what moved are counted (spi_replay_stats' fallback_ fields)
 *     and added to the engine's metrics (spotinfer_replay_fallback_*).
 *
 * One mutex guards the claim table and the counters; store calls run
 * outside it (a queue store synchronises itself). report_mu orders the
 * updates of the engine's gauge: taken with no other lock held, it reads
 * the fallback journal (its queue mu, then the journal's) and then takes
 * mu.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include <xxhash.h>

#include "engine.h"
#include "replay.h"
#include "replay_ds.h"

#define RQS_DRAIN_BATCH 256
#define RQS_DRAIN_RETRY_NS (100 * 1000000LL)
#define RQS_REFUSED_MAX 16
#define RQS_KEY_MAX 128
/* The claim table holds at most max(RQS_HELD_MIN, replay.max_bytes / the
 * size of an entry) claims: its memory is bounded by replay.max_bytes. */
#define RQS_HELD_MIN 1024
#define RQS_HELD_GRACE_NS (1000 * 1000000LL)

/* A claim whose envelope the library refused and whose dead-lettering nack
 * went unanswered (SPI_EIO): the store still holds it, and the caller never
 * got its id, so the library repeats the nack itself (retry_refused). */
typedef struct rqs_refused {
  uint64_t id;
  uint32_t attempts;
  char key[129];
} rqs_refused;

/* A claimed envelope, copied whole from the store's callback until it is
 * handed out into the caller's buffer. */
typedef struct rqs_copy {
  size_t size;      /* of the copy in data */
  spi_envelope env; /* points into data */
  uint8_t data[];
} rqs_copy;

/* What this process keeps of a claim it handed out: what a nack needs
 * (not the envelope), until the claim is acked or nacked, or forgotten at
 * forget_at: its lease length again after its lease ends (at least
 * RQS_HELD_GRACE_NS), as long as the "redis" store remembers a finish. */
typedef struct rqs_claim {
  spi_hnode hn; /* in the claim table (hash: spread id) */
  struct rqs_claim *prev, *next; /* in s->held, by forget_at */
  uint64_t id;
  int64_t forget_at;
  uint32_t attempts;
  int64_t deadline_ns;
  size_t key_len;
  char key[RQS_KEY_MAX + 1];
  /* A nack whose answer was lost (SPI_EIO) is repeated as it was decided,
   * so the store sees the same finish again (the clock may have passed
   * the deadline since). */
  int nack_sent;
  int32_t nack_dead;
  int64_t nack_visible;
} rqs_claim;

struct spi_rqs {
  spi_engine *engine;
  spi_mem mem;
  spi_errtab *err;
  const spi_replay_store_module *store;
  void *mstate, *inst;
  spi_rqs_cfg cfg;
  char store_name[SPI_MODULE_NAME_MAX + 1];
  spi_replay_queue *fallback;
  pthread_mutex_t mu;
  spi_htab tab;
  rqs_claim *held_head, *held_tail; /* every entry of tab, by forget_at */
  size_t nheld, held_max;
  uint64_t enqueued, duplicates, acked, nacked;
  uint64_t fb_enqueued, fb_moved;
  int64_t drain_after_ns;
  int draining;
  rqs_refused refused[RQS_REFUSED_MAX]; /* [0, n_refused) */
  size_t n_refused;
  int64_t refused_after_ns; /* no repeat before (one failed) */
  pthread_mutex_t report_mu;
  uint64_t held_reported; /* this queue's part of the engine's gauge */
};

static int sfail(spi_rqs *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int sfail(spi_rqs *s, int status, const char *fmt, ...) {
  char msg[SPI_ERRMSG_CAP];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  spi__errtab_set(s->err, msg);
  return status;
}

/* A store's failure: its status (unknown ones become SPI_EMODULE) with its
 * message, named, and logged. */
static int store_failed(spi_rqs *s, const char *call, int rc, const char *msg) {
  if (rc > 0 || strcmp(spi_strerror(rc), "unknown status") == 0)
    rc = SPI_EMODULE;
  const char *m = msg[0] ? msg : spi_strerror(rc);
  spi__engine_log(s->engine, SPI_LOG_ERROR, "replay store \"%s\": %s: %s",
                  s->store_name, call, m);
  return sfail(s, rc, "replay store \"%s\": %s: %s", s->store_name, call, m);
}

static spi_replay_ctx make_ctx(const spi_rqs *s, int64_t lease_ms) {
  spi_replay_ctx c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.now_ns = spi__engine_now(s->engine);
  c.lease_ms = lease_ms ? lease_ms : s->cfg.lease_ms;
  c.max_attempts = (uint32_t)s->cfg.max_attempts;
  c.max_bytes = s->cfg.max_bytes;
  c.max_acked_keys = s->cfg.max_acked_keys;
  c.max_dead = s->cfg.max_dead;
  return c;
}

/* ------------------------------------------------------- the claim table */

static uint64_t id_hash(uint64_t id) { return XXH3_64bits(&id, sizeof id); }

/* Into the list by forget_at, from its tail (most claims have one lease
 * length, so they go at the end). */
static void held_link(spi_rqs *s, rqs_claim *c) {
  rqs_claim *p = s->held_tail;
  while (p && p->forget_at > c->forget_at) p = p->prev;
  c->prev = p;
  c->next = p ? p->next : s->held_head;
  if (c->next)
    c->next->prev = c;
  else
    s->held_tail = c;
  if (p)
    p->next = c;
  else
    s->held_head = c;
  s->nheld++;
}

static void held_unlink(spi_rqs *s, rqs_claim *c) {
  if (c->prev)
    c->prev->next = c->next;
  else
    s->held_head = c->next;
  if (c->next)
    c->next->prev = c->prev;
  else
    s->held_tail = c->prev;
  c->prev = c->next = NULL;
  s->nheld--;
}

static void tab_put(spi_rqs *s, rqs_claim *c) {
  spi__htab_insert(&s->tab, &s->mem, &c->hn, id_hash(c->id));
  held_link(s, c);
}

/* The entry of claim id; one due to be forgotten by now counts as gone
 * (INT64_MIN: none does). */
static rqs_claim *tab_find(const spi_rqs *s, uint64_t id, int64_t now) {
  uint64_t h = id_hash(id);
  for (spi_hnode *n = spi__htab_first(&s->tab, h); n;
       n = spi__htab_next(n, h)) {
    rqs_claim *c = SPI_CONTAINER(n, rqs_claim, hn);
    if (c->id == id) return now < c->forget_at ? c : NULL;
  }
  return NULL;
}

static void tab_drop(spi_rqs *s, rqs_claim *c) {
  spi__htab_remove(&s->tab, &c->hn);
  held_unlink(s, c);
}

/* Take the claim id out of the table (NULL when not there). */
static rqs_claim *tab_take(spi_rqs *s, uint64_t id, int64_t now) {
  rqs_claim *c = tab_find(s, id, now);
  if (c) tab_drop(s, c);
  return c;
}

/* Forget, with mu held, the claims due by now and, while the table is
 * full, those due first; returns the list of them to free outside mu, and
 * how many were forgotten before their time. */
static rqs_claim *tab_expire(spi_rqs *s, int64_t now, size_t room,
                             size_t *early) {
  rqs_claim *out = NULL;
  *early = 0;
  while (s->held_head && (s->held_head->forget_at <= now ||
                          s->nheld + room > s->held_max)) {
    rqs_claim *c = s->held_head;
    if (c->forget_at > now) (*early)++;
    tab_drop(s, c);
    c->next = out;
    out = c;
  }
  return out;
}

static void free_list(spi_rqs *s, rqs_claim *c) {
  while (c) {
    rqs_claim *n = c->next;
    spi__free(&s->mem, c);
    c = n;
  }
}

/* Forget the claims due to be forgotten by now (claims, ticks). */
static void forget_ended(spi_rqs *s, int64_t now) {
  size_t early = 0;
  pthread_mutex_lock(&s->mu);
  rqs_claim *gone = tab_expire(s, now, 0, &early);
  pthread_mutex_unlock(&s->mu);
  free_list(s, gone);
}

static void free_claim(spi_hnode *n, void *ud) {
  spi_rqs *s = ud;
  spi__free(&s->mem, SPI_CONTAINER(n, rqs_claim, hn));
}

/* ------------------------------------------------- fallback journal counts */

/* What the fallback journal holds now: every envelope not yet moved. */
static int fallback_held(spi_rqs *s, uint64_t *n) {
  spi_replay_stats st;
  memset(&st, 0, sizeof st);
  st.struct_size = sizeof st;
  int rc = spi_replay_stats_get(s->fallback, &st);
  *n = st.ready[0] + st.ready[1] + st.ready[2] + st.ready[3] + st.leased +
       st.delayed;
  return rc;
}

/* Count enqueued and moved, and bring this queue's part of the engine's
 * gauge to what the fallback journal holds. */
static void report_fallback(spi_rqs *s, uint64_t enqueued, uint64_t moved) {
  if (!s->fallback) return;
  pthread_mutex_lock(&s->report_mu);
  uint64_t n = 0;
  int have = fallback_held(s, &n) == SPI_OK;
  pthread_mutex_lock(&s->mu);
  s->fb_enqueued += enqueued;
  s->fb_moved += moved;
  int64_t delta = have ? (int64_t)n - (int64_t)s->held_reported : 0;
  if (have) s->held_reported = n;
  pthread_mutex_unlock(&s->mu);
  spi__metrics_replay_fallback(atomic_load(&s->engine->metrics), delta,
                               enqueued, moved);
  pthread_mutex_unlock(&s->report_mu);
}

/* ------------------------------------------------------------ life cycle */

int spi__rqs_new(spi_engine *e, const spi_mem *mem, spi_errtab *err,
                 const spi_replay_store_module *store, void *mstate,
                 void *inst, const spi_rqs_cfg *cfg, spi_replay_queue *fallback,
                 spi_rqs **out) {
  *out = NULL;
  spi_rqs *s = spi__calloc(mem, 1, sizeof *s);
  if (!s) return SPI_ENOMEM;
  if (spi__htab_init(&s->tab, mem, 64) != SPI_OK) {
    spi__free(mem, s);
    return SPI_ENOMEM;
  }
  if (pthread_mutex_init(&s->mu, NULL) != 0) {
    spi__htab_free(&s->tab, mem);
    spi__free(mem, s);
    return SPI_ENOMEM;
  }
  if (pthread_mutex_init(&s->report_mu, NULL) != 0) {
    pthread_mutex_destroy(&s->mu);
    spi__htab_free(&s->tab, mem);
    spi__free(mem, s);
    return SPI_ENOMEM;
  }
  s->engine = e;
  s->mem = *mem;
  s->err = err;
  s->store = store;
  s->mstate = mstate;
  s->inst = inst;
  s->cfg = *cfg;
  size_t nl = strlen(cfg->store_name);
  if (nl > SPI_MODULE_NAME_MAX) nl = SPI_MODULE_NAME_MAX;
  memcpy(s->store_name, cfg->store_name, nl);
  s->store_name[nl] = '\0';
  s->cfg.store_name = s->store_name;
  uint64_t fit = (uint64_t)cfg->max_bytes / sizeof(rqs_claim);
  s->held_max = fit > RQS_HELD_MIN ? (size_t)fit : RQS_HELD_MIN;
  s->fallback = fallback;
  report_fallback(s, 0, 0); /* what an earlier process left in it */
  *out = s;
  return SPI_OK;
}

void spi__rqs_free(spi_rqs *s) {
  if (!s) return;
  /* Held claims are not given back: their leases end in the store, which
   * then hands them to another consumer (at-least-once). */
  s->store->release(s->mstate, s->inst);
  /* The engine outlives the queue: its gauge loses this queue's part. */
  spi__metrics_replay_fallback(atomic_load(&s->engine->metrics),
                               -(int64_t)s->held_reported, 0, 0);
  spi_replay_close(s->fallback);
  spi__htab_each(&s->tab, free_claim, s);
  spi__htab_free(&s->tab, &s->mem);
  pthread_mutex_destroy(&s->mu);
  pthread_mutex_destroy(&s->report_mu);
  spi_mem m = s->mem;
  spi__free(&m, s);
}

/* ------------------------------------------------------------- fallback */

static int push_to_store(void *ud, const spi_envelope *env) {
  spi_rqs *s = ud;
  char err[SPI_ERRMSG_CAP] = "";
  int32_t dup = 0;
  spi_replay_ctx ctx = make_ctx(s, 0);
  int rc = s->store->enqueue(s->mstate, s->inst, &ctx, env, &dup, err,
                             sizeof err);
  /* A duplicate is a success: the store has it (from an earlier drain that
   * died before the journal's ack) or had it. */
  if (rc != SPI_OK && rc != SPI_EIO)
    spi__engine_log(s->engine, SPI_LOG_ERROR,
                    "replay: draining the fallback journal: %.*s: %s",
                    (int)env->key_len, env->key, err);
  return rc;
}

/* Move what the fallback journal holds into the store, unless the store
 * failed less than RQS_DRAIN_RETRY_NS ago. One thread drains at a time. */
static void drain(spi_rqs *s) {
  if (!s->fallback) return;
  int64_t now = spi__engine_now(s->engine);
  pthread_mutex_lock(&s->mu);
  int go = !s->draining && now >= s->drain_after_ns;
  if (go) s->draining = 1;
  pthread_mutex_unlock(&s->mu);
  if (!go) return;
  size_t moved = 0, total = 0;
  int rc;
  do {
    moved = 0;
    rc = spi__replay_drain(s->fallback, push_to_store, s, RQS_DRAIN_BATCH,
                           &moved);
    total += moved;
  } while (rc == SPI_OK && moved == RQS_DRAIN_BATCH);
  if (total) {
    spi__engine_log(s->engine, SPI_LOG_INFO,
                    "replay: %zu envelope(s) moved from the fallback journal "
                    "to store \"%s\"",
                    total, s->store_name);
    report_fallback(s, 0, total);
  }
  pthread_mutex_lock(&s->mu);
  s->draining = 0;
  s->drain_after_ns = rc == SPI_OK ? 0 : now + RQS_DRAIN_RETRY_NS;
  pthread_mutex_unlock(&s->mu);
}

/* --------------------------------------------------------------- enqueue */

int spi__rqs_enqueue(spi_rqs *s, const spi_envelope *env, int32_t *duplicate) {
  drain(s);
  spi_envelope v = *env;
  spi_replay_ctx ctx = make_ctx(s, 0);
  if (!v.first_enqueued_ns) v.first_enqueued_ns = ctx.now_ns;
  char err[SPI_ERRMSG_CAP] = "";
  int32_t dup = 0;
  int rc = s->store->enqueue(s->mstate, s->inst, &ctx, &v, &dup, err,
                             sizeof err);
  if (rc == SPI_EIO && s->fallback) {
    spi__engine_log(s->engine, SPI_LOG_WARN,
                    "replay store \"%s\": %s; %.*s goes to the fallback "
                    "journal",
                    s->store_name, err, (int)v.key_len, v.key);
    rc = spi_replay_enqueue(s->fallback, &v, &dup);
    if (rc != SPI_OK)
      return sfail(s, rc, "replay: store \"%s\" unreachable (%s) and the "
                   "fallback journal failed: %s",
                   s->store_name, err, spi_replay_errmsg(s->fallback));
    pthread_mutex_lock(&s->mu);
    s->drain_after_ns = ctx.now_ns + RQS_DRAIN_RETRY_NS;
    pthread_mutex_unlock(&s->mu);
    report_fallback(s, dup ? 0 : 1, 0);
  } else if (rc != SPI_OK) {
    return store_failed(s, "enqueue", rc, err);
  }
  pthread_mutex_lock(&s->mu);
  if (dup)
    s->duplicates++;
  else
    s->enqueued++;
  pthread_mutex_unlock(&s->mu);
  if (duplicate) *duplicate = dup ? 1 : 0;
  return SPI_OK;
}

/* ----------------------------------------------------------------- claim */

typedef struct sink_data {
  spi_rqs *s;
  rqs_copy *c;
  rqs_claim *keep; /* its entry in the claim table, filled once handed out */
  const char *refused; /* why the envelope was refused, or NULL */
  rqs_refused r;       /* then its attempts and key (id: the claim's) */
} sink_data;

/* Why the library cannot take an envelope a store handed it, or NULL. */
static const char *refusal(const spi_envelope *env) {
  if (!env) return "no envelope";
  if (!env->key || !env->key_len) return "no key";
  if ((env->body_len && !env->body) ||
      (env->partial_text_len && !env->partial_text) ||
      (env->partial_token_count && !env->partial_tokens))
    return "a length without its data";
  if (env->klass < SPI_CLASS_GOLD || env->klass > SPI_CLASS_BRONZE)
    return "class out of range";
  return NULL;
}

/* The store's claimed envelope, copied whole. */
static int sink(void *ud, const spi_envelope *env) {
  sink_data *d = ud;
  d->refused = refusal(env);
  if (d->refused) {
    d->r.attempts = env ? env->attempts : 0;
    if (env && env->key && env->key_len)
      memcpy(d->r.key, env->key, env->key_len < 128 ? env->key_len : 128);
    return SPI_EMODULE;
  }
  size_t size = spi__replay_env_size(env);
  rqs_copy *c = spi__alloc(&d->s->mem, sizeof *c + size);
  rqs_claim *keep = spi__alloc(&d->s->mem, sizeof *keep);
  if (!c || !keep) {
    spi__free(&d->s->mem, c);
    spi__free(&d->s->mem, keep);
    return SPI_ENOMEM;
  }
  memset(keep, 0, sizeof *keep);
  d->keep = keep;
  memset(c, 0, sizeof *c);
  c->size = size;
  c->env.struct_size = sizeof c->env;
  spi__replay_env_copy(env, &c->env, c->data);
  d->c = c;
  return SPI_OK;
}

/* Hand c out into the caller's buffer, or say how much is needed. */
static int hand_out(rqs_copy *c, spi_envelope *out, void *buf, size_t cap,
                    size_t *needed) {
  if (needed) *needed = c->size;
  if (cap < c->size) return SPI_EBUFSIZE;
  size_t ss = out->struct_size;
  out->struct_size = sizeof *out;
  spi__replay_env_copy(&c->env, out, buf);
  out->struct_size = ss;
  return SPI_OK;
}

/* Keep in c what a nack of claim id (env, leased at now for lease_ms)
 * needs. With the table full, the claims due to be forgotten first are
 * forgotten now (their ack or nack answers SPI_ESTALE, as after their
 * lease). */
static void keep_claim(spi_rqs *s, rqs_claim *c, uint64_t id,
                       const spi_envelope *env, int64_t now,
                       int64_t lease_ms) {
  c->id = id;
  int64_t lease_ns = lease_ms * 1000000;
  c->forget_at = now + lease_ns +
                 (lease_ns > RQS_HELD_GRACE_NS ? lease_ns : RQS_HELD_GRACE_NS);
  c->attempts = env->attempts;
  c->deadline_ns = env->deadline_ns;
  c->key_len = env->key_len < RQS_KEY_MAX ? env->key_len : RQS_KEY_MAX;
  memcpy(c->key, env->key, c->key_len);
  size_t early = 0;
  pthread_mutex_lock(&s->mu);
  rqs_claim *gone = tab_expire(s, now, 1, &early);
  tab_put(s, c);
  pthread_mutex_unlock(&s->mu);
  free_list(s, gone);
  if (early)
    spi__engine_log(s->engine, SPI_LOG_WARN,
                    "replay: %zu claims held at once: the oldest was "
                    "forgotten before its lease ended (its ack or nack "
                    "answers SPI_ESTALE)",
                    s->held_max);
}

/* Keep refused claim r whose nack went unanswered, to repeat it from
 * RQS_DRAIN_RETRY_NS on; 0 when there is no room (then its lease ends in
 * the store, it is claimed again and refused again). */
static int keep_refused(spi_rqs *s, const rqs_refused *r, int64_t now) {
  pthread_mutex_lock(&s->mu);
  int room = s->n_refused < RQS_REFUSED_MAX;
  if (room) s->refused[s->n_refused++] = *r;
  s->refused_after_ns = now + RQS_DRAIN_RETRY_NS;
  pthread_mutex_unlock(&s->mu);
  return room;
}

/* Dead-letter refused claim r: the store's nack (dead, attempts unchanged).
 * An unanswered one is kept to be repeated; the rest is counted. */
static int dead_letter_refused(spi_rqs *s, const rqs_refused *r, char *err,
                               size_t cap) {
  spi_replay_ctx ctx = make_ctx(s, 0);
  int rc = s->store->nack(s->mstate, s->inst, &ctx, r->id, r->attempts, 0, 1,
                          err, cap);
  if (rc == SPI_EIO && !keep_refused(s, r, ctx.now_ns))
    spi__engine_log(s->engine, SPI_LOG_WARN,
                    "replay store \"%s\": %d refused claims wait for the "
                    "store; envelope %s is left to its lease",
                    s->store_name, RQS_REFUSED_MAX,
                    r->key[0] ? r->key : "without a key");
  if (rc == SPI_OK) {
    pthread_mutex_lock(&s->mu);
    s->nacked++;
    pthread_mutex_unlock(&s->mu);
  }
  return rc;
}

/* Repeat the nacks of refused claims that went unanswered, unless one
 * failed less than RQS_DRAIN_RETRY_NS ago. Each is out of the list while
 * its nack runs, so one thread sends it. */
static void retry_refused(spi_rqs *s) {
  int64_t now = spi__engine_now(s->engine);
  for (;;) {
    rqs_refused r;
    pthread_mutex_lock(&s->mu);
    int go = s->n_refused > 0 && now >= s->refused_after_ns;
    if (go) r = s->refused[--s->n_refused];
    pthread_mutex_unlock(&s->mu);
    if (!go) return;
    char err[SPI_ERRMSG_CAP] = "";
    int rc = dead_letter_refused(s, &r, err, sizeof err);
    if (rc == SPI_EIO) return;
    const char *key = r.key[0] ? r.key : "without a key";
    if (rc == SPI_OK)
      spi__engine_log(s->engine, SPI_LOG_WARN,
                      "replay store \"%s\": envelope %s, refused earlier: "
                      "dead-lettered",
                      s->store_name, key);
    else
      spi__engine_log(s->engine, SPI_LOG_WARN,
                      "replay store \"%s\": envelope %s, refused earlier: "
                      "dead-lettering it failed: %s",
                      s->store_name, key, err[0] ? err : spi_strerror(rc));
  }
}

/* The store handed out claim id with an envelope the library refuses
 * (d->refused): nothing will ever take it, so it is dead-lettered now, as
 * the fallback drain dead-letters what the store refuses for good. The
 * claim's answer is the error, logged; the next claim goes on. A nack the
 * store did not answer (SPI_EIO) leaves the claim held there, and the
 * caller never learnt its id: the library repeats the nack on later
 * claims and ticks (retry_refused). */
static int refuse_claim(spi_rqs *s, uint64_t id, sink_data *d) {
  char err[SPI_ERRMSG_CAP] = "", msg[SPI_ERRMSG_CAP];
  d->r.id = id;
  const char *key = d->r.key[0] ? d->r.key : "without a key";
  int rc = dead_letter_refused(s, &d->r, err, sizeof err);
  if (rc == SPI_OK)
    spi__errf(msg, sizeof msg, "envelope %s refused (%s): dead-lettered", key,
              d->refused);
  else
    spi__errf(msg, sizeof msg,
              "envelope %s refused (%s); dead-lettering it failed: %s%s", key,
              d->refused, err[0] ? err : spi_strerror(rc),
              rc == SPI_EIO ? " (tried again by the next claims and ticks)"
                            : "");
  return store_failed(s, "claim", rc == SPI_OK ? SPI_EMODULE : rc, msg);
}

int spi__rqs_claim(spi_rqs *s, uint32_t class_mask, int64_t lease_ms,
                   uint64_t *claim_id, spi_envelope *out, void *buf,
                   size_t cap, size_t *needed) {
  drain(s);
  retry_refused(s);
  spi_replay_ctx ctx = make_ctx(s, lease_ms);
  forget_ended(s, ctx.now_ns);
  sink_data d;
  memset(&d, 0, sizeof d);
  d.s = s;
  char err[SPI_ERRMSG_CAP] = "";
  uint64_t id = 0;
  int rc = s->store->claim(s->mstate, s->inst, &ctx, class_mask, sink, &d, &id,
                       err, sizeof err);
  if (id && d.refused) return refuse_claim(s, id, &d);
  if (rc != SPI_OK || (id && !d.c) || (!id && d.c)) {
    spi__free(&s->mem, d.c);
    spi__free(&s->mem, d.keep);
    if (rc != SPI_OK) return store_failed(s, "claim", rc, err);
    return store_failed(s, "claim", SPI_EMODULE,
                        "claim id and envelope do not match");
  }
  if (!id) {
    *claim_id = 0;
    if (needed) *needed = 0;
    return SPI_OK;
  }
  rqs_copy *c = d.c;
  rc = hand_out(c, out, buf, cap, needed);
  if (rc == SPI_OK) {
    keep_claim(s, d.keep, id, &c->env, ctx.now_ns, ctx.lease_ms);
    spi__free(&s->mem, c);
    *claim_id = id;
    return SPI_OK;
  }
  /* Too small a buffer: give it back, no attempt counted. */
  size_t size = c->size;
  int grc = s->store->nack(s->mstate, s->inst, &ctx, id, c->env.attempts,
                           ctx.now_ns, 0, err, sizeof err);
  spi__free(&s->mem, c);
  spi__free(&s->mem, d.keep);
  if (grc != SPI_OK)
    spi__engine_log(s->engine, SPI_LOG_WARN,
                    "replay store \"%s\": giving back a claim too large for "
                    "the caller's buffer: %s (its lease will end)",
                    s->store_name, err);
  return sfail(s, SPI_EBUFSIZE, "replay claim: %zu bytes needed, %zu given",
               size, cap);
}

/* ------------------------------------------------------------ ack, nack */

/* What a nack needs of a held claim, copied under the lock. */
typedef struct held {
  uint32_t attempts;
  int64_t deadline_ns;
  char key[129];
  size_t key_len;
  int nack_sent;
  int32_t nack_dead;
  int64_t nack_visible;
} held;

static int find_held(spi_rqs *s, uint64_t id, held *h) {
  int64_t now = spi__engine_now(s->engine);
  pthread_mutex_lock(&s->mu);
  rqs_claim *c = id ? tab_find(s, id, now) : NULL;
  if (c) {
    h->attempts = c->attempts;
    h->deadline_ns = c->deadline_ns;
    h->key_len = c->key_len;
    memcpy(h->key, c->key, h->key_len);
    h->nack_sent = c->nack_sent;
    h->nack_dead = c->nack_dead;
    h->nack_visible = c->nack_visible;
  }
  pthread_mutex_unlock(&s->mu);
  return c != NULL;
}

/* A nack of claim id went unanswered (SPI_EIO): a repeat sends the same. */
static void keep_nack(spi_rqs *s, uint64_t id, int32_t dead, int64_t visible) {
  pthread_mutex_lock(&s->mu);
  rqs_claim *c = tab_find(s, id, INT64_MIN);
  if (c) {
    c->nack_sent = 1;
    c->nack_dead = dead;
    c->nack_visible = visible;
  }
  pthread_mutex_unlock(&s->mu);
}

/* The store answered for the claim: forget it (unless it could not be
 * reached: the claim may still be held, the caller may try again). */
static void settle(spi_rqs *s, uint64_t id, int rc, uint64_t *counter) {
  if (rc == SPI_EIO) return;
  pthread_mutex_lock(&s->mu);
  rqs_claim *c = tab_take(s, id, INT64_MIN); /* answered: due or not */
  if (c && rc == SPI_OK) (*counter)++;
  pthread_mutex_unlock(&s->mu);
  spi__free(&s->mem, c);
}

int spi__rqs_ack(spi_rqs *s, uint64_t claim_id) {
  held h;
  if (!find_held(s, claim_id, &h))
    return sfail(s, SPI_ESTALE,
                 "replay ack: claim %llu is not held (lease ended, already "
                 "acked, or unknown)",
                 (unsigned long long)claim_id);
  spi_replay_ctx ctx = make_ctx(s, 0);
  char err[SPI_ERRMSG_CAP] = "";
  int rc = s->store->ack(s->mstate, s->inst, &ctx, claim_id, err, sizeof err);
  settle(s, claim_id, rc, &s->acked);
  return rc == SPI_OK ? SPI_OK : store_failed(s, "ack", rc, err);
}

int spi__rqs_nack(spi_rqs *s, uint64_t claim_id) {
  held h;
  if (!find_held(s, claim_id, &h))
    return sfail(s, SPI_ESTALE,
                 "replay nack: claim %llu is not held (lease ended, already "
                 "acked, or unknown)",
                 (unsigned long long)claim_id);
  spi_replay_ctx ctx = make_ctx(s, 0);
  uint32_t attempts = h.attempts + 1;
  int dead = attempts >= (uint64_t)s->cfg.max_attempts ||
             (h.deadline_ns != 0 && ctx.now_ns >= h.deadline_ns);
  int64_t visible = 0;
  if (h.nack_sent) {
    dead = h.nack_dead;
    visible = h.nack_visible;
  } else if (!dead) {
    visible = ctx.now_ns +
              spi__replay_backoff_ms(h.key, h.key_len, attempts,
                                     s->cfg.backoff_base_ms,
                                     s->cfg.backoff_max_ms,
                                     s->cfg.backoff_jitter) *
                  1000000;
  }
  char err[SPI_ERRMSG_CAP] = "";
  int rc = s->store->nack(s->mstate, s->inst, &ctx, claim_id, attempts,
                          visible, dead, err, sizeof err);
  if (rc == SPI_EIO) keep_nack(s, claim_id, dead, visible);
  settle(s, claim_id, rc, &s->nacked);
  if (rc == SPI_OK && dead)
    spi__engine_log(s->engine, SPI_LOG_WARN,
                    "replay: %.*s dead-lettered after %u attempts%s",
                    (int)h.key_len, h.key, attempts,
                    attempts < (uint64_t)s->cfg.max_attempts
                        ? " (past its deadline)"
                        : "");
  return rc == SPI_OK ? SPI_OK : store_failed(s, "nack", rc, err);
}

/* ------------------------------------------------------- stats and tick */

/* The store's counts of the queue, then this process's own. When the
 * store cannot be reached (SPI_EIO) the process's own are still filled. */
int spi__rqs_stats(spi_rqs *s, spi_replay_stats *all) {
  spi_replay_ctx ctx = make_ctx(s, 0);
  char err[SPI_ERRMSG_CAP] = "";
  all->struct_size = sizeof *all;
  int rc = s->store->queue_stats(s->mstate, s->inst, &ctx, all, err,
                                 sizeof err);
  if (rc != SPI_OK) {
    memset(all, 0, sizeof *all);
    all->struct_size = sizeof *all;
  }
  uint64_t in_fallback = 0;
  if (s->fallback) fallback_held(s, &in_fallback);
  pthread_mutex_lock(&s->mu);
  all->enqueued = s->enqueued;
  all->duplicates = s->duplicates;
  all->acked = s->acked;
  all->nacked = s->nacked;
  all->fallback_held = in_fallback;
  all->fallback_enqueued = s->fb_enqueued;
  all->fallback_moved = s->fb_moved;
  pthread_mutex_unlock(&s->mu);
  return rc == SPI_OK ? SPI_OK : store_failed(s, "stats", rc, err);
}

int spi__rqs_tick(spi_rqs *s) {
  drain(s);
  retry_refused(s);
  forget_ended(s, spi__engine_now(s->engine));
  if (!s->store->tick) return SPI_OK;
  spi_replay_ctx ctx = make_ctx(s, 0);
  char err[SPI_ERRMSG_CAP] = "";
  int rc = s->store->tick(s->mstate, s->inst, &ctx, err, sizeof err);
  return rc == SPI_OK ? SPI_OK : store_failed(s, "tick", rc, err);
}
