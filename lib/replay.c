/*
 * replay.c - the replay queue: lanes, leases, backoff, dead-letters,
 * duplicate suppression and the public spi_replay_* API.
 *
 * The queue's state lives in memory; every change of it is first appended
 * to the store as a record (spotinfer_module.h) and only then applied, so
 * the store always holds the history of what the queue became, and a
 * failed append changes nothing. On open the store hands the records back
 * and the queue replays them.
 *
 * Entries (one per key) are in exactly one state:
 *   READY    in the FIFO lane of its class (gold, silver, bronze)
 *   LEASED   claimed; in the timer heap until its lease ends, and in the
 *            claim table under its claim id
 *   DELAYED  nacked; in the timer heap until its backoff ends
 *   DEAD     dead-lettered; in the dead list (oldest first), kept up to
 *            replay.max_dead, after which the oldest keeps only its key
 * Acked keys (and the keys of forgotten dead-letters) stay in a bounded
 * FIFO set (replay.max_acked_keys), so a late duplicate is still refused.
 *
 * A lease that ends unacked, and a nack, count as a failed attempt: the
 * entry is dead-lettered once attempts reach replay.max_attempts or its
 * deadline has passed; otherwise a nack waits out an exponential backoff
 * (spi__replay_backoff_ms) and an expired lease is ready again at once.
 * Leases are not recorded: after a restart every claim is ready again.
 *
 * Memory: every entry is one allocation (struct, token ids, body, text)
 * plus its key node, which is allocated at enqueue and later moves into the
 * acked set, so ack, nack and claim never allocate; the timer heap keeps
 * room for every entry. replay.max_bytes bounds what entries hold.
 *
 * One mutex guards a queue; store syncs (fsync) run outside it, so callers
 * in "batch" mode share them. Time is the engine's clock hook.
 */
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "engine.h"
#include "replay.h"
#include "replay_ds.h"

#define RQ_MAGIC 0x53505251u /* "SPRQ" */
#define RQ_KEY_MAX 128
#define RQ_CONFIG_MAX (1u << 20)
#define RQ_LEASE_MAX_MS 86400000
#define RQ_CLASS_MASK 0xeu /* bits 1 << gold, silver, bronze */
#define RQ_REC_OVERHEAD 24 /* framing of one journal record */

enum rq_state { RQ_READY = 1, RQ_LEASED = 2, RQ_DELAYED = 3, RQ_DEAD = 4 };

/* A key. Lives with its entry, then (acked or forgotten dead) in the done
 * set, so acking never allocates. */
typedef struct rq_key {
  spi_hnode hn;               /* in the done set */
  struct rq_key *prev, *next; /* done-set FIFO */
  size_t len;
  char key[]; /* len bytes + NUL */
} rq_key;

typedef struct rq_entry {
  spi_hnode kn;                 /* in the key table */
  spi_hnode cn;                 /* in the claim table (hash: claim id) */
  struct rq_entry *prev, *next; /* ready lane or dead list */
  rq_key *k;
  uint64_t claim_id; /* while LEASED */
  spi_hpnode tn;     /* in the timer heap; key: LEASED lease end, DELAYED
                        visible at */
  size_t bytes;      /* counted against max_bytes */
  uint64_t est;      /* journal bytes a compaction restates */
  uint64_t seq;      /* store sequence of its ENQUEUE (0: recovered) */
  int32_t state;
  int32_t reserved0;
  spi_envelope env; /* points into this allocation and k */
} rq_entry;

typedef struct rq_list {
  rq_entry *head, *tail;
  uint64_t n;
} rq_list;

typedef struct rq_cfg {
  char store[SPI_MODULE_NAME_MAX + 1];
  int32_t fallback; /* 1: "journal" (queue stores only) */
  int64_t lease_ms, backoff_base_ms, backoff_max_ms, max_attempts;
  int64_t max_bytes, max_envelope_bytes, max_acked_keys, max_dead;
  int64_t compact_min_bytes;
  double backoff_jitter, compact_ratio;
} rq_cfg;

struct spi_replay_queue {
  uint32_t magic;
  spi_engine *engine;
  spi_mem mem;
  rq_cfg cfg;
  const spi_modentry *mod;
  const spi_replay_store_module *store;
  void *inst;
  /* Error-checking: a store callback that calls back into its queue finds
   * the lock already held by its thread and gets SPI_EMISUSE. */
  pthread_mutex_t mu;
  spi_htab keytab;   /* key -> entry (every state but acked) */
  spi_htab claimtab; /* claim id -> LEASED entry */
  spi_htab donetab;  /* acked keys, and forgotten dead-letters' */
  rq_key *done_head, *done_tail;
  rq_list lane[4]; /* by enum spi_class */
  rq_list dead;
  spi_heap heap;     /* LEASED and DELAYED entries by due time */
  uint64_t nleased, ndelayed;
  size_t bytes;
  uint64_t live_est; /* what a compaction would write */
  uint64_t compact_retry_at;
  uint64_t next_claim;
  uint64_t last_seq; /* of the newest append */
  /* Every append up to here is known to be as durable as the store's
   * policy promises (updated without mu, atomically, after a sync). */
  uint64_t durable_seq;
  uint64_t enqueued, duplicates, acked, nacked, expired_leases;
  spi_errtab err; /* per calling thread (errtab.c) */
  /* A queue store keeps the queue: every call goes to it
   * (replay_shared.c) and the tables above stay empty. */
  spi_rqs *sh;
};

/* ------------------------------------------------------------- messages */

static int qfail(spi_replay_queue *q, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int qfail(spi_replay_queue *q, int status, const char *fmt, ...) {
  char msg[SPI_ERRMSG_CAP];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  spi__errtab_set(&q->err, msg);
  return status;
}

static int queue_ok(const spi_replay_queue *q) {
  return q && q->magic == RQ_MAGIC;
}

/* Lock q; fails only for a call from inside q's own store callback (the
 * mutex checks for errors). */
static int lock(spi_replay_queue *q) {
  if (pthread_mutex_lock(&q->mu) == 0) return SPI_OK;
  return qfail(q, SPI_EMISUSE,
               "replay: called from inside the queue's own store callback");
}

static void unlock(spi_replay_queue *q) { pthread_mutex_unlock(&q->mu); }

/* --------------------------------------------------------------- backoff */

int64_t spi__replay_backoff_ms(const char *key, size_t key_len,
                               uint32_t attempt, int64_t base_ms,
                               int64_t max_ms, double jitter) {
  if (attempt < 1) attempt = 1;
  if (base_ms < 0) base_ms = 0;
  if (max_ms < base_ms) max_ms = base_ms;
  int64_t d = base_ms;
  for (uint32_t i = 1; i < attempt && d < max_ms; i++)
    d = d > max_ms / 2 ? max_ms : d * 2;
  uint8_t buf[RQ_KEY_MAX + 4];
  if (key_len > RQ_KEY_MAX) key_len = RQ_KEY_MAX;
  if (key_len) memcpy(buf, key, key_len);
  for (int i = 0; i < 4; i++)
    buf[key_len + (size_t)i] = (uint8_t)(attempt >> (8 * i));
  uint64_t h = XXH3_64bits(buf, key_len + 4);
  double u = (double)(h >> 11) * (1.0 / 9007199254740992.0); /* [0, 1) */
  if (!(jitter > 0)) jitter = 0;
  if (jitter > 1) jitter = 1;
  return d - (int64_t)(jitter * u * (double)d);
}

/* ---------------------------------------------------------- hash tables */

static uint64_t key_hash(const char *key, size_t len) {
  return XXH3_64bits(key, len);
}

/* A claim id spread over the table's bits. */
static uint64_t claim_hash(uint64_t id) { return id * 0x9e3779b97f4a7c15ull; }

static rq_entry *find_entry(const spi_replay_queue *q, const char *key,
                            size_t len, uint64_t h) {
  for (spi_hnode *n = spi__htab_first(&q->keytab, h); n;
       n = spi__htab_next(n, h)) {
    rq_entry *e = SPI_CONTAINER(n, rq_entry, kn);
    if (e->k->len == len && memcmp(e->k->key, key, len) == 0) return e;
  }
  return NULL;
}

static void keytab_insert(spi_replay_queue *q, rq_entry *e) {
  spi__htab_insert(&q->keytab, &q->mem, &e->kn, e->k->hn.hash);
}

static void keytab_remove(spi_replay_queue *q, rq_entry *e) {
  spi__htab_remove(&q->keytab, &e->kn);
}

static rq_entry *find_claim(const spi_replay_queue *q, uint64_t id) {
  uint64_t h = claim_hash(id);
  for (spi_hnode *n = spi__htab_first(&q->claimtab, h); n;
       n = spi__htab_next(n, h)) {
    rq_entry *e = SPI_CONTAINER(n, rq_entry, cn);
    if (e->claim_id == id) return e;
  }
  return NULL;
}

static void claim_insert(spi_replay_queue *q, rq_entry *e) {
  spi__htab_insert(&q->claimtab, &q->mem, &e->cn, claim_hash(e->claim_id));
}

static void claim_remove(spi_replay_queue *q, rq_entry *e) {
  if (spi__htab_remove(&q->claimtab, &e->cn)) e->claim_id = 0;
}

static rq_key *find_done(const spi_replay_queue *q, const char *key, size_t len,
                         uint64_t h) {
  for (spi_hnode *n = spi__htab_first(&q->donetab, h); n;
       n = spi__htab_next(n, h)) {
    rq_key *k = SPI_CONTAINER(n, rq_key, hn);
    if (k->len == len && memcmp(k->key, key, len) == 0) return k;
  }
  return NULL;
}

static uint64_t done_est(const rq_key *k) {
  return RQ_REC_OVERHEAD + 8 + k->len;
}

static void done_remove(spi_replay_queue *q, rq_key *k) {
  spi__htab_remove(&q->donetab, &k->hn);
  if (k->prev)
    k->prev->next = k->next;
  else
    q->done_head = k->next;
  if (k->next)
    k->next->prev = k->prev;
  else
    q->done_tail = k->prev;
  q->live_est -= done_est(k);
}

/* Remember k (taking it over); the oldest key goes beyond the bound. */
static void done_add(spi_replay_queue *q, rq_key *k) {
  if (q->cfg.max_acked_keys <= 0) {
    spi__free(&q->mem, k);
    return;
  }
  spi__htab_insert(&q->donetab, &q->mem, &k->hn, k->hn.hash);
  k->next = NULL;
  k->prev = q->done_tail;
  if (q->done_tail)
    q->done_tail->next = k;
  else
    q->done_head = k;
  q->done_tail = k;
  q->live_est += done_est(k);
  while (q->donetab.n > (size_t)q->cfg.max_acked_keys) {
    rq_key *old = q->done_head;
    done_remove(q, old);
    spi__free(&q->mem, old);
  }
}

/* ------------------------------------------------------- lists and heap */

static void list_push(rq_list *l, rq_entry *e) {
  e->next = NULL;
  e->prev = l->tail;
  if (l->tail)
    l->tail->next = e;
  else
    l->head = e;
  l->tail = e;
  l->n++;
}

static void list_remove(rq_list *l, rq_entry *e) {
  if (e->prev)
    e->prev->next = e->next;
  else
    l->head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  else
    l->tail = e->prev;
  e->prev = e->next = NULL;
  l->n--;
}

/* Room is reserved at enqueue (heap_reserve), so pushing cannot fail. */
static void heap_push(spi_replay_queue *q, rq_entry *e) {
  spi__heap_push(&q->heap, &e->tn);
}

static void heap_remove(spi_replay_queue *q, rq_entry *e) {
  spi__heap_remove(&q->heap, &e->tn);
}

static int heap_reserve(spi_replay_queue *q, size_t n) {
  return spi__heap_reserve(&q->heap, &q->mem, n);
}

/* The entry due first (NULL when none is leased or delayed). */
static rq_entry *heap_top(const spi_replay_queue *q) {
  spi_hpnode *t = spi__heap_top(&q->heap);
  return t ? SPI_CONTAINER(t, rq_entry, tn) : NULL;
}

/* ------------------------------------------------------------ entries */

static size_t env_payload(const spi_envelope *env) {
  return env->key_len + env->body_len + env->partial_text_len +
         4 * env->partial_token_count;
}

/* A copy of env (key given separately, already hashed), READY and in no
 * structure yet. NULL when out of memory. */
static rq_entry *entry_new(spi_replay_queue *q, const spi_envelope *env,
                           const char *key, size_t key_len, uint64_t h) {
  size_t ntok = env->partial_token_count;
  size_t size = sizeof(rq_entry) + 4 * ntok + env->body_len + 1 +
                env->partial_text_len + 1;
  rq_entry *e = spi__alloc(&q->mem, size);
  rq_key *k = spi__alloc(&q->mem, sizeof(rq_key) + key_len + 1);
  if (!e || !k) {
    spi__free(&q->mem, e);
    spi__free(&q->mem, k);
    return NULL;
  }
  memset(e, 0, sizeof *e);
  memset(k, 0, sizeof *k);
  k->hn.hash = h;
  k->len = key_len;
  memcpy(k->key, key, key_len);
  k->key[key_len] = '\0';
  e->k = k;
  e->tn.idx = SIZE_MAX;
  e->state = RQ_READY;
  e->bytes = size + sizeof(rq_key) + key_len + 1;
  e->env = *env;
  e->env.struct_size = sizeof e->env;
  e->env.key = k->key;
  e->env.key_len = key_len;
  uint8_t *p = (uint8_t *)(e + 1);
  if (ntok) {
    memcpy(p, env->partial_tokens, 4 * ntok);
    e->env.partial_tokens = (const uint32_t *)(void *)p;
    p += 4 * ntok;
  } else {
    e->env.partial_tokens = NULL;
  }
  char *body = (char *)p;
  if (env->body_len) memcpy(body, env->body, env->body_len);
  body[env->body_len] = '\0';
  e->env.body = body;
  char *text = body + env->body_len + 1;
  if (env->partial_text_len)
    memcpy(text, env->partial_text, env->partial_text_len);
  text[env->partial_text_len] = '\0';
  e->env.partial_text = text;
  size_t tl = strnlen(env->tenant, sizeof env->tenant);
  e->est = RQ_REC_OVERHEAD + 52 + tl + env_payload(&e->env);
  return e;
}

/* Add a new READY entry to the tables and its lane. */
static void entry_add(spi_replay_queue *q, rq_entry *e) {
  keytab_insert(q, e);
  list_push(&q->lane[e->env.klass], e);
  q->bytes += e->bytes;
  q->live_est += e->est;
}

/* Take e out of whatever holds it for its state. */
static void entry_detach(spi_replay_queue *q, rq_entry *e) {
  switch (e->state) {
  case RQ_READY:
    list_remove(&q->lane[e->env.klass], e);
    break;
  case RQ_LEASED:
    heap_remove(q, e);
    claim_remove(q, e);
    q->nleased--;
    break;
  case RQ_DELAYED:
    heap_remove(q, e);
    q->ndelayed--;
    break;
  case RQ_DEAD:
    list_remove(&q->dead, e);
    break;
  default:
    break;
  }
}

/* Remove e for good; its key is remembered in the done set, or freed. */
static void entry_drop(spi_replay_queue *q, rq_entry *e, int remember) {
  entry_detach(q, e);
  keytab_remove(q, e);
  q->bytes -= e->bytes;
  q->live_est -= e->est;
  if (remember)
    done_add(q, e->k);
  else
    spi__free(&q->mem, e->k);
  spi__free(&q->mem, e);
}

static void make_ready(spi_replay_queue *q, rq_entry *e) {
  entry_detach(q, e);
  e->state = RQ_READY;
  list_push(&q->lane[e->env.klass], e);
}

static void make_delayed(spi_replay_queue *q, rq_entry *e, int64_t visible) {
  entry_detach(q, e);
  e->state = RQ_DELAYED;
  e->tn.key = visible;
  heap_push(q, e);
  q->ndelayed++;
}

static void make_dead(spi_replay_queue *q, rq_entry *e) {
  entry_detach(q, e);
  e->state = RQ_DEAD;
  list_push(&q->dead, e);
  while (q->dead.n > (uint64_t)q->cfg.max_dead) entry_drop(q, q->dead.head, 1);
}

/* ------------------------------------------------------------ the store */

static int store_append(spi_replay_queue *q, spi_replay_record *rec) {
  char err[SPI_ERRMSG_CAP] = "";
  uint64_t seq = 0;
  rec->struct_size = sizeof *rec;
  int rc = q->store->append(q->mod->state, q->inst, rec, &seq, err, sizeof err);
  if (rc != SPI_OK) {
    if (rc > 0 || strcmp(spi_strerror(rc), "unknown status") == 0)
      rc = SPI_EMODULE;
    qfail(q, rc, "replay store \"%s\": append: %s", q->cfg.store,
          err[0] ? err : spi_strerror(rc));
    spi__engine_log(q->engine, SPI_LOG_ERROR, "replay store \"%s\": append: %s",
                    q->cfg.store, err[0] ? err : spi_strerror(rc));
    return rc;
  }
  if (seq > q->last_seq) q->last_seq = seq;
  return SPI_OK;
}

static int key_record(spi_replay_queue *q, int32_t type, const rq_entry *e,
                      uint32_t attempts, int64_t visible) {
  spi_replay_record rec;
  memset(&rec, 0, sizeof rec);
  rec.type = type;
  rec.attempts = attempts;
  rec.key = e->k->key;
  rec.key_len = e->k->len;
  rec.visible_ns = visible;
  return store_append(q, &rec);
}

/* Outside mu: wait until seq is as durable as the store promises. */
static int store_sync(spi_replay_queue *q, uint64_t seq) {
  char err[SPI_ERRMSG_CAP] = "";
  int rc = q->store->sync(q->mod->state, q->inst, seq, err, sizeof err);
  if (rc != SPI_OK) {
    if (rc > 0 || strcmp(spi_strerror(rc), "unknown status") == 0)
      rc = SPI_EMODULE;
    qfail(q, rc, "replay store \"%s\": sync: %s", q->cfg.store,
          err[0] ? err : spi_strerror(rc));
    spi__engine_log(q->engine, SPI_LOG_ERROR, "replay store \"%s\": sync: %s",
                    q->cfg.store, err[0] ? err : spi_strerror(rc));
  }
  return rc;
}

/* Outside mu: wait until seq is durable, unless it is known to be. */
static int make_durable(spi_replay_queue *q, uint64_t seq) {
  if (seq <= __atomic_load_n(&q->durable_seq, __ATOMIC_ACQUIRE)) return SPI_OK;
  int rc = store_sync(q, seq);
  if (rc != SPI_OK) return rc;
  uint64_t cur = __atomic_load_n(&q->durable_seq, __ATOMIC_RELAXED);
  while (cur < seq &&
         !__atomic_compare_exchange_n(&q->durable_seq, &cur, seq, 1,
                                      __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {
  }
  return SPI_OK;
}

static int store_stats(spi_replay_queue *q, spi_replay_store_stats *out) {
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  int rc = q->store->stats(q->mod->state, q->inst, out);
  return rc;
}

/* The whole state as records, oldest facts first: remembered keys, dead
 * letters, ready lanes in order, then leased and delayed entries. */
static int compact_locked(spi_replay_queue *q) {
  if (!q->store->compact) return SPI_ENOTSUP;
  size_t n = q->donetab.n + 2 * q->keytab.n;
  spi_replay_record *recs = spi__calloc(&q->mem, n ? n : 1, sizeof *recs);
  if (!recs) return qfail(q, SPI_ENOMEM, "replay: compaction: out of memory");
  size_t i = 0;
  for (rq_key *k = q->done_head; k; k = k->next, i++) {
    recs[i].struct_size = sizeof recs[i];
    recs[i].type = SPI_REPLAY_REC_ACK;
    recs[i].key = k->key;
    recs[i].key_len = k->len;
  }
#define PUT(T, E, ATT, VIS)                                                    \
  do {                                                                         \
    recs[i].struct_size = sizeof recs[i];                                      \
    recs[i].type = (T);                                                        \
    recs[i].key = (E)->k->key;                                                 \
    recs[i].key_len = (E)->k->len;                                             \
    recs[i].attempts = (ATT);                                                  \
    recs[i].visible_ns = (VIS);                                                \
    recs[i].envelope = (T) == SPI_REPLAY_REC_ENQUEUE ? &(E)->env : NULL;       \
    i++;                                                                       \
  } while (0)
  for (rq_entry *e = q->dead.head; e; e = e->next) {
    PUT(SPI_REPLAY_REC_ENQUEUE, e, e->env.attempts, 0);
    PUT(SPI_REPLAY_REC_DEAD, e, e->env.attempts, 0);
  }
  for (int c = SPI_CLASS_GOLD; c <= SPI_CLASS_BRONZE; c++)
    for (rq_entry *e = q->lane[c].head; e; e = e->next)
      PUT(SPI_REPLAY_REC_ENQUEUE, e, e->env.attempts, 0);
  for (size_t h = 0; h < q->heap.len; h++) {
    rq_entry *e = SPI_CONTAINER(q->heap.a[h], rq_entry, tn);
    PUT(SPI_REPLAY_REC_ENQUEUE, e, e->env.attempts, 0);
    if (e->state == RQ_DELAYED)
      PUT(SPI_REPLAY_REC_NACK, e, e->env.attempts, e->tn.key);
  }
#undef PUT
  char err[SPI_ERRMSG_CAP] = "";
  int rc = q->store->compact(q->mod->state, q->inst, recs, i, err, sizeof err);
  spi__free(&q->mem, recs);
  if (rc != SPI_OK) {
    if (rc > 0 || strcmp(spi_strerror(rc), "unknown status") == 0)
      rc = SPI_EMODULE;
    qfail(q, rc, "replay store \"%s\": compact: %s", q->cfg.store,
          err[0] ? err : spi_strerror(rc));
    spi__engine_log(q->engine, SPI_LOG_ERROR,
                    "replay store \"%s\": compact: %s", q->cfg.store,
                    err[0] ? err : spi_strerror(rc));
    return rc;
  }
  spi__engine_log(q->engine, SPI_LOG_INFO,
                  "replay: compacted to %zu records (%zu keys remembered)", i,
                  q->donetab.n);
  return SPI_OK;
}

/* Compact once acked and superseded records dominate what is stored. */
static void maybe_compact(spi_replay_queue *q) {
  if (!q->store->compact) return;
  spi_replay_store_stats st;
  if (store_stats(q, &st) != SPI_OK) return;
  if (st.bytes < (uint64_t)q->cfg.compact_min_bytes ||
      st.bytes < q->compact_retry_at)
    return;
  if ((double)st.bytes < q->cfg.compact_ratio * (double)q->live_est) return;
  if (compact_locked(q) != SPI_OK) {
    /* Not again until it has grown by as much once more. */
    uint64_t step = (uint64_t)q->cfg.compact_min_bytes;
    q->compact_retry_at =
        st.bytes + (step > st.bytes / 2 ? step : st.bytes / 2);
  } else {
    q->compact_retry_at = 0;
  }
}

/* ------------------------------------------------------------- timers */

static int deadline_passed(const rq_entry *e, int64_t now) {
  return e->env.deadline_ns != 0 && now >= e->env.deadline_ns;
}

/* Dead-letter e (any state) with a record. */
static int dead_letter(spi_replay_queue *q, rq_entry *e, uint32_t attempts,
                       int64_t now) {
  int rc = key_record(q, SPI_REPLAY_REC_DEAD, e, attempts, 0);
  if (rc != SPI_OK) return rc;
  e->env.attempts = attempts;
  spi__engine_log(q->engine, SPI_LOG_WARN,
                  "replay: %.*s dead-lettered after %u attempts%s",
                  (int)e->k->len, e->k->key, attempts,
                  deadline_passed(e, now) ? " (past its deadline)" : "");
  make_dead(q, e);
  return SPI_OK;
}

/* A lease ran out: a failed attempt, ready again at once. */
static int expire_lease(spi_replay_queue *q, rq_entry *e, int64_t now) {
  uint32_t attempts = e->env.attempts + 1;
  int rc;
  if (attempts >= (uint64_t)q->cfg.max_attempts || deadline_passed(e, now)) {
    rc = dead_letter(q, e, attempts, now);
  } else {
    rc = key_record(q, SPI_REPLAY_REC_NACK, e, attempts, now);
    if (rc == SPI_OK) {
      e->env.attempts = attempts;
      make_ready(q, e);
    }
  }
  if (rc == SPI_OK) q->expired_leases++;
  return rc;
}

/* Expire leases and end backoffs that are due. A failed record stops the
 * pass; the next call tries again. */
static void run_timers(spi_replay_queue *q, int64_t now) {
  rq_entry *e;
  while ((e = heap_top(q)) != NULL && e->tn.key <= now) {
    int rc;
    if (e->state == RQ_LEASED) {
      rc = expire_lease(q, e, now);
    } else if (deadline_passed(e, now)) {
      rc = dead_letter(q, e, e->env.attempts, now);
    } else {
      make_ready(q, e);
      rc = SPI_OK;
    }
    if (rc != SPI_OK) break;
  }
}

/* --------------------------------------------------------- configuration */

static const char *const FSYNC_NAMES[] = {"always", "batch", "none"};
static const char *const FALLBACK_NAMES[] = {"none", "journal"};

static const spi_modentry *find_store(const spi_engine *e, const char *name,
                                      size_t len) {
  for (const spi_modentry *m = e->modules; m; m = m->next)
    if (m->kind == SPI_MODULE_REPLAY_STORE && strlen(m->name) == len &&
        memcmp(m->name, name, len) == 0)
      return m;
  return NULL;
}

int spi__replay_journal_cfg(const cJSON *obj, spi_journal_cfg *out, char *err,
                            size_t cap) {
  memset(out, 0, sizeof *out);
  int rc = spi__cfg_string(obj, "replay.dir", "replay", &out->dir,
                           &out->dir_len, err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_enum(obj, "replay.fsync", "replay", FSYNC_NAMES, 3,
                       &out->fsync, err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_int(obj, "replay.group_commit_ms", "replay",
                      &out->group_commit_ms, err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_int(obj, "replay.segment_bytes", "replay",
                      &out->segment_bytes, err, cap);
  return rc;
}

/* Read and check a "replay" object (absent keys take the table defaults). */
static int read_cfg(spi_engine *e, const cJSON *obj, rq_cfg *c, char *err,
                    size_t cap) {
  memset(c, 0, sizeof *c);
  int rc = spi__cfg_check_keys(obj, "replay", "replay", err, cap);
  const char *s = NULL;
  size_t slen = 0;
  if (rc == SPI_OK)
    rc = spi__cfg_string(obj, "replay.store", "replay", &s, &slen, err, cap);
  if (rc == SPI_OK) {
    if (!find_store(e, s, slen)) {
      spi__errf(err, cap, "replay.store: no replay_store module named \"%.*s\"",
                (int)spi__utf8_fit(s, slen, 64), s);
      rc = SPI_ENOTFOUND;
    } else {
      memcpy(c->store, s, slen);
      c->store[slen] = '\0';
    }
  }
  spi_journal_cfg jc;
  if (rc == SPI_OK) rc = spi__replay_journal_cfg(obj, &jc, err, cap);
  size_t dir_len = rc == SPI_OK ? jc.dir_len : 0;
  if (rc == SPI_OK)
    rc = spi__cfg_enum(obj, "replay.fallback", "replay", FALLBACK_NAMES, 2,
                       &c->fallback, err, cap);
  struct {
    const char *path;
    int64_t *dst;
  } ints[] = {
      {"replay.compact_min_bytes", &c->compact_min_bytes},
      {"replay.lease_ms", &c->lease_ms},
      {"replay.backoff_base_ms", &c->backoff_base_ms},
      {"replay.backoff_max_ms", &c->backoff_max_ms},
      {"replay.max_attempts", &c->max_attempts},
      {"replay.max_bytes", &c->max_bytes},
      {"replay.max_envelope_bytes", &c->max_envelope_bytes},
      {"replay.max_acked_keys", &c->max_acked_keys},
      {"replay.max_dead", &c->max_dead},
  };
  for (size_t i = 0; rc == SPI_OK && i < sizeof ints / sizeof ints[0]; i++)
    rc = spi__cfg_int(obj, ints[i].path, "replay", ints[i].dst, err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_double(obj, "replay.backoff_jitter", "replay",
                         &c->backoff_jitter, err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_double(obj, "replay.compact_ratio", "replay",
                         &c->compact_ratio, err, cap);
  if (rc == SPI_OK) {
    const cJSON *sc = cJSON_GetObjectItemCaseSensitive(obj, "store_config");
    if (sc && !cJSON_IsNull(sc) && !cJSON_IsObject(sc)) {
      spi__errf(err, cap, "replay.store_config: must be an object");
      rc = SPI_ETYPE;
    }
  }
  if (rc == SPI_OK && c->fallback) {
    const spi_modentry *m = find_store(e, c->store, strlen(c->store));
    if (!m->m.replay_store.enqueue) {
      spi__errf(err, cap,
                "replay.fallback: only a queue store (e.g. \"redis\") has a "
                "fallback; \"%s\" is not one",
                c->store);
      rc = SPI_EINVAL;
    } else if (dir_len == 0) {
      spi__errf(err, cap, "replay.fallback: \"journal\" needs replay.dir");
      rc = SPI_EINVAL;
    }
  }
  if (rc == SPI_OK && c->backoff_max_ms < c->backoff_base_ms) {
    spi__errf(err, cap,
              "replay.backoff_max_ms: must be at least replay.backoff_base_ms "
              "(%lld)",
              (long long)c->backoff_base_ms);
    rc = SPI_ERANGE;
  }
  return rc;
}

/* A "replay.store" nobody registered that the engine knows how to load
 * (module_load.c) is loaded now; any other name is read_cfg's to refuse.
 * The caller holds config_lock. */
static int load_store(spi_engine *e, const cJSON *sec, char *err, size_t cap) {
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(sec, "store");
  if (!cJSON_IsString(st)) return SPI_OK;
  size_t n = strlen(st->valuestring);
  if (find_store(e, st->valuestring, n)) return SPI_OK;
  char lerr[SPI_ERRMSG_CAP] = "";
  int rc = spi__module_autoload(e, SPI_MODULE_REPLAY_STORE, st->valuestring,
                                 n, "replay.store", lerr, sizeof lerr);
  if (rc == SPI_OK || !lerr[0]) return SPI_OK; /* read_cfg says the rest */
  spi__errf(err, cap, "%s", lerr);
  return rc;
}

/* A user's store checks its store_config, when it can, without opening. */
static int check_store(spi_engine *e, const rq_cfg *c, const cJSON *sec,
                       char *err, size_t cap) {
  const spi_modentry *m = find_store(e, c->store, strlen(c->store));
  if (m->builtin || !m->m.replay_store.check) return SPI_OK;
  const cJSON *sc = cJSON_GetObjectItemCaseSensitive(sec, "store_config");
  char *text = sc && !cJSON_IsNull(sc) ? spi__cjson_print(sc) : NULL;
  if (sc && !cJSON_IsNull(sc) && !text) {
    spi__errf(err, cap, "replay: out of memory");
    return SPI_ENOMEM;
  }
  char merr[SPI_ERRMSG_CAP] = "";
  int rc = m->m.replay_store.check(m->state, text ? text : "{}",
                                   text ? strlen(text) : 2, merr, sizeof merr);
  cJSON_free(text);
  if (rc == SPI_OK) return SPI_OK;
  if (rc > 0 || strcmp(spi_strerror(rc), "unknown status") == 0)
    rc = SPI_EMODULE;
  spi__errf(err, cap, "%s", merr[0] ? merr : spi_strerror(rc));
  return rc;
}

int spi__replay_check_section(spi_engine *e, const cJSON *root, char *err,
                              size_t errcap) {
  const cJSON *sec = cJSON_GetObjectItemCaseSensitive(root, "replay");
  if (!sec) return SPI_OK;
  /* The engine's configure holds config_lock: a store may load here. */
  int rc = load_store(e, sec, err, errcap);
  rq_cfg c;
  if (rc == SPI_OK) rc = read_cfg(e, sec, &c, err, errcap);
  if (rc == SPI_OK) rc = check_store(e, &c, sec, err, errcap);
  return rc;
}

/* spi_replay_open: a store that is not registered but loadable loads under
 * config_lock (never from inside a module callback of a configure, which
 * holds it: SPI_EMISUSE). */
static int load_store_locking(spi_engine *e, const cJSON *sec, char *err,
                              size_t cap) {
  const cJSON *st = cJSON_GetObjectItemCaseSensitive(sec, "store");
  if (!cJSON_IsString(st) ||
      find_store(e, st->valuestring, strlen(st->valuestring)))
    return SPI_OK;
  if (spi__in_module_configure(e)) {
    spi__errf(err, cap, "replay.store: \"%.*s\" cannot be loaded from a "
              "module callback", SPI_CUT(st->valuestring, 64));
    return SPI_EMISUSE;
  }
  pthread_mutex_lock(&e->config_lock);
  int rc = load_store(e, sec, err, cap);
  pthread_mutex_unlock(&e->config_lock);
  return rc;
}

/* The engine's "replay" section (defaults filled in) overridden key by key
 * by the caller's JSON. */
static int merged_config(spi_engine *e, const char *json, size_t len,
                         cJSON **out, char *err, size_t cap) {
  *out = NULL;
  unsigned pin;
  spi_snapshot *s = spi__snap_acquire(e, &pin);
  cJSON *root = spi__cjson_parse(s->json, s->json_len, NULL);
  spi__snap_release(e, pin);
  /* The snapshot is canonical JSON the engine wrote: it always parses, so
   * a failure here is memory, and going on with defaults would silently
   * drop the engine's section (fsync and all). */
  if (!root) {
    spi__errf(err, cap, "replay: out of memory reading the engine's config");
    return SPI_ENOMEM;
  }
  cJSON *sec = cJSON_DetachItemFromObjectCaseSensitive(root, "replay");
  cJSON_Delete(root);
  if (!sec) sec = cJSON_CreateObject();
  if (!sec) {
    spi__errf(err, cap, "replay: out of memory");
    return SPI_ENOMEM;
  }
  if (len == 0) {
    *out = sec;
    return SPI_OK;
  }
  cJSON *user = NULL;
  int rc = spi__json_parse_object(json, len, RQ_CONFIG_MAX, "replay", &user,
                                  err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_check_keys(user, "replay", "replay", err, cap);
  for (cJSON *c = user ? user->child : NULL; c && rc == SPI_OK; c = c->next) {
    cJSON *dup = cJSON_Duplicate(c, 1);
    cJSON_DeleteItemFromObjectCaseSensitive(sec, c->string);
    if (!dup || !cJSON_AddItemToObject(sec, c->string, dup)) {
      cJSON_Delete(dup);
      spi__errf(err, cap, "replay: out of memory");
      rc = SPI_ENOMEM;
    }
  }
  cJSON_Delete(user);
  if (rc != SPI_OK) {
    cJSON_Delete(sec);
    return rc;
  }
  *out = sec;
  return SPI_OK;
}

/* -------------------------------------------------------------- recovery */

/* Apply one recovered record. Records are facts that already happened, so
 * they apply whatever the current bounds say. */
static int apply_record(void *user, const spi_replay_record *rec) {
  spi_replay_queue *q = user;
  if (!rec || !rec->key || rec->key_len == 0 || rec->key_len > RQ_KEY_MAX)
    return qfail(q, SPI_EMODULE, "replay: the store recovered a bad record");
  int64_t now = spi__engine_now(q->engine);
  uint64_t h = key_hash(rec->key, rec->key_len);
  rq_entry *e = find_entry(q, rec->key, rec->key_len, h);
  switch (rec->type) {
  case SPI_REPLAY_REC_ENQUEUE: {
    const spi_envelope *env = rec->envelope;
    if (!env || env->klass < SPI_CLASS_GOLD || env->klass > SPI_CLASS_BRONZE ||
        (env->body_len && !env->body) ||
        (env->partial_text_len && !env->partial_text) ||
        (env->partial_token_count && !env->partial_tokens))
      return qfail(q, SPI_EMODULE,
                   "replay: the store recovered a bad envelope");
    rq_entry *n = entry_new(q, env, rec->key, rec->key_len, h);
    if (!n || heap_reserve(q, q->keytab.n + 1) != SPI_OK) {
      if (n) {
        spi__free(&q->mem, n->k);
        spi__free(&q->mem, n);
      }
      return qfail(q, SPI_ENOMEM, "replay: recovery: out of memory");
    }
    if (e) entry_drop(q, e, 0); /* restated: the newer record wins */
    rq_key *k = find_done(q, rec->key, rec->key_len, h);
    if (k) {
      done_remove(q, k);
      spi__free(&q->mem, k);
    }
    entry_add(q, n);
    break;
  }
  case SPI_REPLAY_REC_ACK:
    if (e) {
      entry_drop(q, e, 1);
    } else if (!find_done(q, rec->key, rec->key_len, h)) {
      rq_key *k = spi__alloc(&q->mem, sizeof(rq_key) + rec->key_len + 1);
      if (!k) return qfail(q, SPI_ENOMEM, "replay: recovery: out of memory");
      memset(k, 0, sizeof *k);
      k->hn.hash = h;
      k->len = rec->key_len;
      memcpy(k->key, rec->key, rec->key_len);
      k->key[rec->key_len] = '\0';
      done_add(q, k);
    }
    break;
  case SPI_REPLAY_REC_NACK:
    if (!e) break;
    e->env.attempts = rec->attempts;
    if (rec->visible_ns > now)
      make_delayed(q, e, rec->visible_ns);
    else
      make_ready(q, e);
    break;
  case SPI_REPLAY_REC_DEAD:
    if (!e) {
      /* A forgotten dead-letter: only its key is left. */
      spi_replay_record ack = *rec;
      ack.type = SPI_REPLAY_REC_ACK;
      return apply_record(user, &ack);
    }
    e->env.attempts = rec->attempts;
    make_dead(q, e);
    break;
  default:
    return qfail(q, SPI_EMODULE,
                 "replay: the store recovered a record of "
                 "unknown type %d",
                 (int)rec->type);
  }
  return SPI_OK;
}

/* Leased entries from before a restart do not exist; delayed ones whose
 * time has come are ready. */
static void after_recovery(spi_replay_queue *q) {
  run_timers(q, spi__engine_now(q->engine));
}

/* ------------------------------------------------------------ open, close */

static void free_entry(spi_hnode *n, void *ud) {
  spi_replay_queue *q = ud;
  rq_entry *e = SPI_CONTAINER(n, rq_entry, kn);
  spi__free(&q->mem, e->k);
  spi__free(&q->mem, e);
}

static void queue_free(spi_replay_queue *q) {
  spi__htab_each(&q->keytab, free_entry, q);
  rq_key *k = q->done_head;
  while (k) {
    rq_key *n = k->next;
    spi__free(&q->mem, k);
    k = n;
  }
  spi__htab_free(&q->keytab, &q->mem);
  spi__htab_free(&q->claimtab, &q->mem);
  spi__htab_free(&q->donetab, &q->mem);
  spi__heap_free(&q->heap, &q->mem);
  pthread_mutex_destroy(&q->mu);
  spi__errtab_destroy(&q->err);
  q->magic = SPI_DEAD_MAGIC;
  spi_mem m = q->mem;
  spi__free(&m, q);
}

static spi_replay_queue *queue_new(spi_engine *e) {
  spi_replay_queue *q = spi__calloc(&e->mem, 1, sizeof *q);
  if (!q) return NULL;
  q->engine = e;
  q->mem = e->mem;
  pthread_mutexattr_t ma;
  int ok = pthread_mutexattr_init(&ma) == 0;
  if (ok) {
    ok = pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_ERRORCHECK) == 0 &&
         pthread_mutex_init(&q->mu, &ma) == 0;
    pthread_mutexattr_destroy(&ma);
  }
  if (!ok) {
    spi__free(&e->mem, q);
    return NULL;
  }
  if (spi__errtab_init(&q->err) != SPI_OK) {
    pthread_mutex_destroy(&q->mu);
    spi__free(&e->mem, q);
    return NULL;
  }
  int rc = spi__htab_init(&q->keytab, &q->mem, 64);
  if (rc == SPI_OK) rc = spi__htab_init(&q->claimtab, &q->mem, 64);
  if (rc == SPI_OK) rc = spi__htab_init(&q->donetab, &q->mem, 64);
  if (rc == SPI_OK) rc = heap_reserve(q, 64);
  if (rc != SPI_OK) {
    queue_free(q);
    return NULL;
  }
  /* Claim ids from the clock: ids from an earlier queue on the same
   * engine do not match this one's. */
  q->next_claim = ((uint64_t)spi__engine_now(e) << 8) | 1;
  return q;
}

/* Open the store and recover it into q; err gets the message. */
static int open_store(spi_replay_queue *q, const cJSON *sec, char *err,
                      size_t cap) {
  const cJSON *what = sec;
  if (!q->mod->builtin)
    what = cJSON_GetObjectItemCaseSensitive(sec, "store_config");
  char *text =
      what && !cJSON_IsNull(what) ? spi__cjson_print(what) : NULL;
  if (what && !cJSON_IsNull(what) && !text) {
    spi__errf(err, cap, "replay: out of memory");
    return SPI_ENOMEM;
  }
  char merr[SPI_ERRMSG_CAP] = "";
  void *inst = NULL;
  int rc =
      q->store->configure(q->mod->state, text ? text : "{}",
                          text ? strlen(text) : 2, &inst, merr, sizeof merr);
  cJSON_free(text);
  if (rc != SPI_OK) {
    if (rc > 0 || strcmp(spi_strerror(rc), "unknown status") == 0)
      rc = SPI_EMODULE;
    if (q->mod->builtin)
      spi__errf(err, cap, "%s", merr[0] ? merr : spi_strerror(rc));
    else
      spi__errf(err, cap, "replay.store: replay_store module \"%s\": %s",
                q->mod->name, merr[0] ? merr : spi_strerror(rc));
    if (inst && q->store->release) q->store->release(q->mod->state, inst);
    return rc;
  }
  q->inst = inst;
  if (q->store->enqueue) return SPI_OK; /* a queue store: nothing to replay */
  merr[0] = '\0';
  rc = q->store->recover(q->mod->state, inst, apply_record, q, merr,
                         sizeof merr);
  if (rc != SPI_OK) {
    if (rc > 0 || strcmp(spi_strerror(rc), "unknown status") == 0)
      rc = SPI_EMODULE;
    if (merr[0])
      spi__errf(err, cap, "replay recovery: %s", merr);
    else {
      /* apply_record reports through qfail on this thread. */
      const char *qm = spi__errtab_get(&q->err);
      spi__errf(err, cap, "replay recovery: %s", qm[0] ? qm : spi_strerror(rc));
    }
    q->store->release(q->mod->state, inst);
    q->inst = NULL;
    return rc;
  }
  if (merr[0]) {
    /* Recovered, but something was cut off: say so on the queue. */
    qfail(q, SPI_OK, "replay recovery: %s", merr);
    spi__engine_log(q->engine, SPI_LOG_WARN, "replay recovery: %s", merr);
  }
  return SPI_OK;
}

/* The fallback journal of a queue store: the same "replay" section as a
 * journal queue of its own. */
static int open_fallback(spi_replay_queue *q, const cJSON *sec,
                         spi_replay_queue **out, char *err, size_t cap) {
  cJSON *fb = cJSON_Duplicate(sec, 1);
  if (fb) {
    cJSON_DeleteItemFromObjectCaseSensitive(fb, "store");
    cJSON_DeleteItemFromObjectCaseSensitive(fb, "store_config");
    cJSON_DeleteItemFromObjectCaseSensitive(fb, "fallback");
  }
  /* Every key is given, so nothing of the engine's section (its store,
   * its fallback) can override these. */
  char *text = NULL;
  if (fb && cJSON_AddStringToObject(fb, "store", SPI_BUILTIN_STORE_JOURNAL) &&
      cJSON_AddStringToObject(fb, "fallback", "none"))
    text = spi__cjson_print(fb);
  cJSON_Delete(fb);
  if (!text) {
    spi__errf(err, cap, "replay: out of memory");
    return SPI_ENOMEM;
  }
  int rc = spi_replay_open(q->engine, text, strlen(text), out);
  cJSON_free(text);
  if (rc != SPI_OK)
    spi__errf(err, cap, "replay.fallback: %s", spi_engine_errmsg(q->engine));
  return rc;
}

/* A queue store's queue: everything goes to it (replay_shared.c). */
static int open_shared(spi_replay_queue *q, const cJSON *sec, char *err,
                       size_t cap) {
  spi_replay_queue *fb = NULL;
  int rc = q->cfg.fallback ? open_fallback(q, sec, &fb, err, cap) : SPI_OK;
  spi_rqs_cfg c = {q->cfg.store,         q->cfg.lease_ms,
                   q->cfg.backoff_base_ms, q->cfg.backoff_max_ms,
                   q->cfg.max_attempts,  q->cfg.max_bytes,
                   q->cfg.max_acked_keys, q->cfg.max_dead,
                   q->cfg.backoff_jitter};
  if (rc == SPI_OK) {
    rc = spi__rqs_new(q->engine, &q->mem, &q->err, q->store, q->mod->state,
                      q->inst, &c, fb, &q->sh);
    if (rc != SPI_OK) spi__errf(err, cap, "replay: out of memory");
  }
  if (rc != SPI_OK) {
    spi_replay_close(fb);
    q->store->release(q->mod->state, q->inst);
  }
  q->inst = NULL; /* q->sh owns it, or it is gone */
  return rc;
}

int spi_replay_open(spi_engine *engine, const char *config_json, size_t len,
                    spi_replay_queue **out) {
  if (!out) return SPI_EINVAL;
  *out = NULL;
  if (!spi__engine_ok(engine)) return SPI_EMISUSE;
  if (!config_json && len)
    return spi__engine_fail(engine, SPI_EINVAL,
                            "replay: NULL config with length %zu", len);
  char err[SPI_ERRMSG_CAP] = "";
  cJSON *sec = NULL;
  rq_cfg cfg;
  int rc = merged_config(engine, config_json, len, &sec, err, sizeof err);
  if (rc == SPI_OK) rc = load_store_locking(engine, sec, err, sizeof err);
  if (rc == SPI_OK) rc = read_cfg(engine, sec, &cfg, err, sizeof err);
  if (rc != SPI_OK) {
    cJSON_Delete(sec);
    return spi__engine_fail(engine, rc, "%s", err);
  }
  spi_replay_queue *q = queue_new(engine);
  if (!q) {
    cJSON_Delete(sec);
    return spi__engine_fail(engine, SPI_ENOMEM, "replay: out of memory");
  }
  q->cfg = cfg;
  q->mod = find_store(engine, cfg.store, strlen(cfg.store));
  q->store = &q->mod->m.replay_store;
  rc = open_store(q, sec, err, sizeof err);
  if (rc == SPI_OK && q->store->enqueue) rc = open_shared(q, sec, err, sizeof err);
  cJSON_Delete(sec);
  if (rc == SPI_OK && !q->sh) after_recovery(q);
  if (rc != SPI_OK) {
    queue_free(q);
    return spi__engine_fail(engine, rc, "%s", err);
  }
  q->magic = RQ_MAGIC;
  *out = q;
  return SPI_OK;
}

void spi_replay_close(spi_replay_queue *queue) {
  if (!queue_ok(queue) || lock(queue) != SPI_OK) return;
  spi_replay_queue *q = queue;
  unlock(q);
  q->magic = SPI_DEAD_MAGIC;
  if (q->sh)
    spi__rqs_free(q->sh); /* releases the store instance */
  else if (q->inst)
    q->store->release(q->mod->state, q->inst);
  queue_free(q);
}

const char *spi_replay_errmsg(const spi_replay_queue *queue) {
  if (!queue_ok(queue)) return "invalid replay queue handle";
  return spi__errtab_get(&queue->err);
}

/* --------------------------------------------------------------- enqueue */

static int check_envelope(spi_replay_queue *q, const spi_envelope *env) {
  if (!env || env->struct_size < sizeof *env)
    return qfail(q, SPI_EINVAL, "envelope: NULL or struct_size too small");
  if (!env->key || env->key_len == 0 || env->key_len > RQ_KEY_MAX)
    return qfail(q, SPI_EINVAL, "envelope.key: must be 1..%d bytes",
                 RQ_KEY_MAX);
  if (!env->body || env->body_len == 0)
    return qfail(q, SPI_EINVAL, "envelope.body: missing");
  if ((env->partial_text_len && !env->partial_text) ||
      (env->partial_token_count && !env->partial_tokens))
    return qfail(q, SPI_EINVAL, "envelope: NULL partial output with a length");
  if (env->openai_kind < SPI_OPENAI_AUTO ||
      env->openai_kind > SPI_OPENAI_COMPLETIONS)
    return qfail(q, SPI_EINVAL, "envelope.openai_kind: %d is not valid",
                 (int)env->openai_kind);
  if (env->klass < SPI_CLASS_GOLD || env->klass > SPI_CLASS_BRONZE)
    return qfail(q, SPI_EINVAL, "envelope.klass: %d is not a class",
                 (int)env->klass);
  if (env->flags & ~SPI_ENVELOPE_FROM_SCRATCH)
    return qfail(q, SPI_EINVAL, "envelope.flags: unknown bits 0x%x",
                 (unsigned)(env->flags & ~SPI_ENVELOPE_FROM_SCRATCH));
  if (env->first_enqueued_ns < 0 || env->deadline_ns < 0)
    return qfail(q, SPI_EINVAL, "envelope: negative time");
  if (!memchr(env->tenant, '\0', sizeof env->tenant))
    return qfail(q, SPI_EINVAL, "envelope.tenant: not NUL-terminated");
  uint64_t max = (uint64_t)q->cfg.max_envelope_bytes;
  if (env->body_len > max || env->partial_text_len > max ||
      env->partial_token_count > max / 4 || env_payload(env) > max)
    return qfail(q, SPI_ETOOBIG,
                 "envelope: key, body and partial output exceed "
                 "replay.max_envelope_bytes (%llu)",
                 (unsigned long long)max);
  return SPI_OK;
}

/* An enqueue whose record could not be made durable was never
 * acknowledged: its entry goes again, so it can be neither claimed nor
 * taken for the original of a retry. e is only compared, never read, until
 * it is found under its key with its sequence. */
static void undo_enqueue(spi_replay_queue *q, const rq_entry *e,
                         const char *key, size_t key_len, uint64_t h,
                         uint64_t seq) {
  if (lock(q) != SPI_OK) return;
  rq_entry *now = find_entry(q, key, key_len, h);
  if (now == e && now->seq == seq) {
    entry_drop(q, now, 0);
    q->enqueued--;
  }
  unlock(q);
}

int spi_replay_enqueue(spi_replay_queue *queue, const spi_envelope *env,
                       int32_t *duplicate) {
  if (!queue_ok(queue)) return SPI_EMISUSE;
  spi_replay_queue *q = queue;
  if (duplicate) *duplicate = 0;
  int rc = check_envelope(q, env);
  if (rc != SPI_OK) return rc;
  if (q->sh) return spi__rqs_enqueue(q->sh, env, duplicate);
  uint64_t h = key_hash(env->key, env->key_len);
  /* Allocate before taking the lock; a duplicate frees it again. */
  rq_entry *e = entry_new(q, env, env->key, env->key_len, h);
  if (!e) return qfail(q, SPI_ENOMEM, "replay enqueue: out of memory");
  if (lock(q) != SPI_OK) {
    spi__free(&q->mem, e->k);
    spi__free(&q->mem, e);
    return SPI_EMISUSE;
  }
  int64_t now = spi__engine_now(q->engine);
  run_timers(q, now);
  rq_entry *old = find_entry(q, env->key, env->key_len, h);
  if (old || find_done(q, env->key, env->key_len, h)) {
    /* Acknowledged no sooner than the original: its record may still be
     * waiting for its fsync (an acked key's envelope was durable before
     * it could be claimed). */
    uint64_t wait = old ? old->seq : 0;
    q->duplicates++;
    unlock(q);
    spi__free(&q->mem, e->k);
    spi__free(&q->mem, e);
    rc = make_durable(q, wait);
    if (rc != SPI_OK) return rc;
    if (duplicate) *duplicate = 1;
    return SPI_OK;
  }
  if (q->bytes + e->bytes > (uint64_t)q->cfg.max_bytes) {
    size_t held = q->bytes;
    unlock(q);
    spi__free(&q->mem, e->k);
    spi__free(&q->mem, e);
    return qfail(q, SPI_EFULL,
                 "replay enqueue: the queue holds %zu bytes; replay.max_bytes "
                 "is %lld",
                 held, (long long)q->cfg.max_bytes);
  }
  if (!e->env.first_enqueued_ns) e->env.first_enqueued_ns = now;
  rc = heap_reserve(q, q->keytab.n + 1);
  if (rc != SPI_OK) {
    qfail(q, rc, "replay enqueue: out of memory");
  } else {
    spi_replay_record rec;
    memset(&rec, 0, sizeof rec);
    rec.type = SPI_REPLAY_REC_ENQUEUE;
    rec.key = e->k->key;
    rec.key_len = e->k->len;
    rec.attempts = e->env.attempts;
    rec.envelope = &e->env;
    rc = store_append(q, &rec);
  }
  if (rc != SPI_OK) {
    unlock(q);
    spi__free(&q->mem, e->k);
    spi__free(&q->mem, e);
    return rc;
  }
  e->seq = q->last_seq;
  entry_add(q, e);
  q->enqueued++;
  uint64_t seq = e->seq;
  unlock(q);
  rc = make_durable(q, seq);
  if (rc != SPI_OK) undo_enqueue(q, e, env->key, env->key_len, h, seq);
  return rc;
}

/* ----------------------------------------------------------------- claim */

/* Bytes claim copies an envelope into: token ids (aligned, so up to 3 bytes
 * of padding) then key, body and text, each NUL-terminated. */
size_t spi__replay_env_size(const spi_envelope *e) {
  size_t n = e->key_len + 1 + e->body_len + 1 + e->partial_text_len + 1;
  if (e->partial_token_count) n += 3 + 4 * e->partial_token_count;
  return n;
}

static uint8_t *put_str(uint8_t *p, const char *s, size_t n, const char **at) {
  if (n) memcpy(p, s, n);
  p[n] = '\0';
  *at = (const char *)p;
  return p + n + 1;
}

void spi__replay_env_copy(const spi_envelope *e, spi_envelope *out,
                          uint8_t *buf) {
  size_t ss = out->struct_size;
  *out = *e;
  out->struct_size = ss;
  uint8_t *p = buf;
  if (e->partial_token_count) {
    p += (4 - (uintptr_t)p % 4) % 4;
    memcpy(p, e->partial_tokens, 4 * e->partial_token_count);
    out->partial_tokens = (const uint32_t *)(void *)p;
    p += 4 * e->partial_token_count;
  } else {
    out->partial_tokens = NULL;
  }
  p = put_str(p, e->key, e->key_len, &out->key);
  p = put_str(p, e->body, e->body_len, &out->body);
  put_str(p, e->partial_text, e->partial_text_len, &out->partial_text);
}

static size_t claim_size(const rq_entry *e) {
  return spi__replay_env_size(&e->env);
}

static void claim_copy(const rq_entry *e, spi_envelope *out, uint8_t *buf) {
  spi__replay_env_copy(&e->env, out, buf);
}

/* The first ready entry of the lanes in mask (NULL if none), with mu held;
 * heads past their deadline are dead-lettered on the way. One whose
 * enqueue is not durable yet (sequence past durable, the caller's reading
 * of durable_seq) is returned instead, for the claim to wait
 * for its sync: its enqueue may still fail and be undone, which finds
 * nothing once the entry is a dead letter (or, with replay.max_dead 0, a
 * remembered key, so that a retry of the key answered OK, duplicate). */
static int next_ready(spi_replay_queue *q, uint32_t mask, int64_t now,
                      uint64_t durable, rq_entry **out) {
  rq_entry *e = NULL;
  int rc = SPI_OK;
  for (int c = SPI_CLASS_GOLD; c <= SPI_CLASS_BRONZE && !e && rc == SPI_OK;
       c++) {
    if (!(mask & (1u << c))) continue;
    while ((e = q->lane[c].head) != NULL && deadline_passed(e, now)) {
      if (e->seq > durable) break;
      rc = dead_letter(q, e, e->env.attempts, now);
      if (rc != SPI_OK) break;
    }
  }
  *out = rc == SPI_OK ? e : NULL;
  return rc;
}

int spi_replay_claim(spi_replay_queue *queue, uint32_t class_mask,
                     int64_t lease_ms, uint64_t *claim_id, spi_envelope *out,
                     void *buf, size_t cap, size_t *needed) {
  if (!queue_ok(queue)) return SPI_EMISUSE;
  spi_replay_queue *q = queue;
  if (!claim_id || !out || out->struct_size < sizeof *out || (!buf && cap))
    return qfail(q, SPI_EINVAL, "replay claim: NULL argument or struct_size");
  if (class_mask == 0 || (class_mask & ~RQ_CLASS_MASK))
    return qfail(q, SPI_EINVAL,
                 "replay claim: class_mask 0x%x (bits 1<<1 .. 1<<3)",
                 (unsigned)class_mask);
  if (lease_ms < 0 || lease_ms > RQ_LEASE_MAX_MS)
    return qfail(q, SPI_EINVAL, "replay claim: lease_ms %lld not in [0, %d]",
                 (long long)lease_ms, RQ_LEASE_MAX_MS);
  if (lease_ms == 0) lease_ms = q->cfg.lease_ms;
  if (q->sh)
    return spi__rqs_claim(q->sh, class_mask, lease_ms, claim_id, out, buf, cap,
                          needed);
  rq_entry *e = NULL;
  int64_t now = 0;
  for (;;) {
    if (lock(q) != SPI_OK) return SPI_EMISUSE;
    now = spi__engine_now(q->engine);
    run_timers(q, now);
    /* One reading for both: an entry next_ready did not dead-letter for
     * not being durable yet is waited for below, even if its sync ends in
     * between (then the wait returns at once, and the next pass sees it). */
    uint64_t durable = __atomic_load_n(&q->durable_seq, __ATOMIC_ACQUIRE);
    int rc = next_ready(q, class_mask, now, durable, &e);
    if (rc != SPI_OK) {
      unlock(q);
      return rc;
    }
    /* An envelope is claimed only once its enqueue is durable: a claim
     * would otherwise hand out (and a worker act on) what a power loss can
     * still take back. Wait for its sync outside the lock, then look
     * again: the head may have changed meanwhile. */
    uint64_t seq = e ? e->seq : 0;
    if (seq <= durable) break;
    unlock(q);
    rc = make_durable(q, seq);
    if (rc != SPI_OK) return rc;
  }
  if (!e) {
    /* An empty queue is the normal state of an idle worker, not an error:
     * SPI_OK with no claim, and no message. */
    unlock(q);
    *claim_id = 0;
    if (needed) *needed = 0;
    return SPI_OK;
  }
  size_t need = claim_size(e);
  if (needed) *needed = need;
  if (cap < need) {
    unlock(q);
    return qfail(q, SPI_EBUFSIZE, "replay claim: %zu bytes needed, %zu given",
                 need, cap);
  }
  list_remove(&q->lane[e->env.klass], e);
  e->state = RQ_LEASED;
  e->tn.key = now + lease_ms * 1000000;
  if (q->next_claim == 0) q->next_claim = 1; /* 0 is never a claim */
  e->claim_id = q->next_claim++;
  claim_insert(q, e);
  heap_push(q, e);
  q->nleased++;
  claim_copy(e, out, buf);
  *claim_id = e->claim_id;
  unlock(q);
  return SPI_OK;
}

/* ----------------------------------------------------------- ack, nack */

/* The LEASED entry of a live claim, with mu held and timers run. */
static rq_entry *claimed(spi_replay_queue *q, uint64_t claim_id) {
  rq_entry *e = claim_id ? find_claim(q, claim_id) : NULL;
  return e && e->state == RQ_LEASED ? e : NULL;
}

int spi_replay_ack(spi_replay_queue *queue, uint64_t claim_id) {
  if (!queue_ok(queue)) return SPI_EMISUSE;
  spi_replay_queue *q = queue;
  if (q->sh) return spi__rqs_ack(q->sh, claim_id);
  if (lock(q) != SPI_OK) return SPI_EMISUSE;
  run_timers(q, spi__engine_now(q->engine));
  rq_entry *e = claimed(q, claim_id);
  if (!e) {
    unlock(q);
    return qfail(q, SPI_ESTALE,
                 "replay ack: claim %llu is not held (lease "
                 "ended, already acked, or unknown)",
                 (unsigned long long)claim_id);
  }
  int rc = key_record(q, SPI_REPLAY_REC_ACK, e, e->env.attempts, 0);
  if (rc != SPI_OK) {
    unlock(q);
    return rc;
  }
  entry_drop(q, e, 1);
  q->acked++;
  uint64_t seq = q->last_seq;
  maybe_compact(q);
  unlock(q);
  return store_sync(q, seq);
}

int spi_replay_nack(spi_replay_queue *queue, uint64_t claim_id) {
  if (!queue_ok(queue)) return SPI_EMISUSE;
  spi_replay_queue *q = queue;
  if (q->sh) return spi__rqs_nack(q->sh, claim_id);
  if (lock(q) != SPI_OK) return SPI_EMISUSE;
  int64_t now = spi__engine_now(q->engine);
  run_timers(q, now);
  rq_entry *e = claimed(q, claim_id);
  if (!e) {
    unlock(q);
    return qfail(q, SPI_ESTALE,
                 "replay nack: claim %llu is not held (lease "
                 "ended, already acked, or unknown)",
                 (unsigned long long)claim_id);
  }
  uint32_t attempts = e->env.attempts + 1;
  int rc;
  if (attempts >= (uint64_t)q->cfg.max_attempts || deadline_passed(e, now)) {
    rc = dead_letter(q, e, attempts, now);
  } else {
    int64_t delay = spi__replay_backoff_ms(
        e->k->key, e->k->len, attempts, q->cfg.backoff_base_ms,
        q->cfg.backoff_max_ms, q->cfg.backoff_jitter);
    int64_t visible = now + delay * 1000000;
    rc = key_record(q, SPI_REPLAY_REC_NACK, e, attempts, visible);
    if (rc == SPI_OK) {
      e->env.attempts = attempts;
      make_delayed(q, e, visible);
    }
  }
  if (rc != SPI_OK) {
    unlock(q);
    return rc;
  }
  q->nacked++;
  uint64_t seq = q->last_seq;
  maybe_compact(q);
  unlock(q);
  return store_sync(q, seq);
}

/* ------------------------------------------------------ stats and tick */

int spi_replay_stats_get(spi_replay_queue *queue, spi_replay_stats *out) {
  if (!queue_ok(queue)) return SPI_EMISUSE;
  spi_replay_queue *q = queue;
  /* The struct as of 0.1.0 ended with journal_bytes; a caller built then
   * gets the fields it knows, a newer one all of them. */
  const size_t v1 = offsetof(spi_replay_stats, journal_bytes) +
                    sizeof out->journal_bytes;
  if (!out || out->struct_size < v1)
    return qfail(q, SPI_EINVAL, "replay stats: NULL or struct_size too small");
  size_t ss = out->struct_size;
  spi_replay_stats all;
  memset(&all, 0, sizeof all);
  if (q->sh) {
    /* Filled on SPI_EIO too: this process's own counts. */
    int rc = spi__rqs_stats(q->sh, &all);
    if (rc != SPI_OK && rc != SPI_EIO) return rc;
    all.struct_size = ss;
    memcpy(out, &all, ss < sizeof all ? ss : sizeof all);
    return rc;
  }
  if (lock(q) != SPI_OK) return SPI_EMISUSE;
  run_timers(q, spi__engine_now(q->engine));
  for (int c = SPI_CLASS_GOLD; c <= SPI_CLASS_BRONZE; c++)
    all.ready[c] = q->lane[c].n;
  all.leased = q->nleased;
  all.delayed = q->ndelayed;
  all.dead = q->dead.n;
  all.enqueued = q->enqueued;
  all.duplicates = q->duplicates;
  all.acked = q->acked;
  all.nacked = q->nacked;
  all.expired_leases = q->expired_leases;
  spi_replay_store_stats st;
  if (store_stats(q, &st) == SPI_OK) {
    all.journal_bytes = st.bytes;
    all.recovered = st.recovered;
    all.torn = st.torn;
    all.truncated_bytes = st.truncated_bytes;
    all.syncs = st.syncs;
    all.compactions = st.compactions;
    all.skipped = st.skipped;
    all.skipped_bytes = st.skipped_bytes;
    all.aside_files = st.aside_files;
    all.repaired = st.repaired;
  }
  unlock(q);
  all.struct_size = ss;
  memcpy(out, &all, ss < sizeof all ? ss : sizeof all);
  return SPI_OK;
}

int spi_replay_tick(spi_replay_queue *queue) {
  if (!queue_ok(queue)) return SPI_EMISUSE;
  spi_replay_queue *q = queue;
  if (q->sh) return spi__rqs_tick(q->sh);
  if (lock(q) != SPI_OK) return SPI_EMISUSE;
  run_timers(q, spi__engine_now(q->engine));
  maybe_compact(q);
  uint64_t seq = q->last_seq;
  unlock(q);
  return store_sync(q, seq);
}

/* ------------------------------------------------------------ internals */

int spi__replay_store_stats(spi_replay_queue *q, spi_replay_store_stats *out) {
  if (!queue_ok(q)) return SPI_EMISUSE;
  if (!out) return SPI_EINVAL;
  if (q->sh) return SPI_ENOTSUP;
  if (lock(q) != SPI_OK) return SPI_EMISUSE;
  int rc = store_stats(q, out);
  unlock(q);
  return rc;
}

int spi__replay_compact(spi_replay_queue *q) {
  if (!queue_ok(q)) return SPI_EMISUSE;
  if (q->sh) return SPI_ENOTSUP;
  if (lock(q) != SPI_OK) return SPI_EMISUSE;
  int rc = compact_locked(q);
  uint64_t seq = q->last_seq;
  unlock(q);
  if (rc == SPI_OK) rc = store_sync(q, seq);
  return rc;
}

/* A store's answer to an enqueue that no later drain can change: the
 * envelope itself is refused (its size, a field), not the call. */
static int refused_for_good(int rc) {
  return rc == SPI_EINVAL || rc == SPI_ETOOBIG || rc == SPI_ERANGE ||
         rc == SPI_EPARSE;
}

int spi__replay_drain(spi_replay_queue *q,
                      int (*push)(void *ud, const spi_envelope *env),
                      void *ud, size_t max, size_t *moved) {
  *moved = 0;
  if (!queue_ok(q) || q->sh) return SPI_EMISUSE;
  int rc = SPI_OK;
  /* Each pass moves an envelope, dead-letters one, or finds none. */
  while (rc == SPI_OK && *moved < max) {
    if (lock(q) != SPI_OK) return SPI_EMISUSE;
    int64_t now = spi__engine_now(q->engine);
    run_timers(q, now);
    rq_entry *e = NULL;
    for (int c = SPI_CLASS_GOLD; c <= SPI_CLASS_BRONZE && !e; c++)
      e = q->lane[c].head;
    /* Only an envelope whose enqueue is durable moves, as only such an
     * envelope is claimed: pushed while its sync is under way, it would be
     * in the store although that sync may still fail its enqueue with
     * SPI_EIO. Wait for the sync outside the lock, then look again. */
    uint64_t wait = e ? e->seq : 0;
    if (wait > __atomic_load_n(&q->durable_seq, __ATOMIC_ACQUIRE)) {
      unlock(q);
      rc = make_durable(q, wait);
      continue;
    }
    /* Pushed under the lock: the entry stays what push saw, and only a
     * drain takes entries out of a fallback journal. The store's enqueue
     * is idempotent, so an ACK record lost after a push only means the
     * next drain pushes a duplicate, which the store refuses. */
    if (e) rc = push(ud, &e->env);
    if (e && refused_for_good(rc)) {
      /* Kept here as a dead letter, so the envelopes behind it still
       * reach the store (retrying it would stop them all for good). */
      spi__engine_log(q->engine, SPI_LOG_ERROR,
                      "replay: the store refused %.*s for good (%s): "
                      "dead-lettered in the fallback journal",
                      (int)e->k->len, e->k->key, spi_strerror(rc));
      rc = dead_letter(q, e, e->env.attempts, now);
    } else if (e && rc == SPI_OK) {
      rc = key_record(q, SPI_REPLAY_REC_ACK, e, 0, 0);
      if (rc == SPI_OK) {
        entry_drop(q, e, 1);
        q->acked++;
        (*moved)++;
      }
    }
    /* What moved is acked here as an ack is: compact as an ack does, or
     * the journal keeps every envelope that ever passed through it. */
    if (e) maybe_compact(q);
    uint64_t seq = q->last_seq;
    unlock(q);
    if (!e) break;
    if (rc == SPI_OK) rc = store_sync(q, seq);
  }
  return rc;
}
