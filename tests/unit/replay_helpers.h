/*
 * replay_helpers.h - what the replay-queue tests (test_replay.c,
 * test_journal.c, test_journal_damage.c, test_replay_durable.c and the
 * Redis store's tests) each did by hand. Failures fail the test (cmocka):
 * include after <cmocka.h>.
 *
 *   rq_hooks h; spi_hooks sh = rq_hooks_of(&h);   a fake clock (h.now) and
 *                                                  an allocator counting
 *                                                  allocs and frees, which
 *                                                  refuses allocation
 *                                                  number fail_at (-1 never)
 *   rq_tmpdir(dir, cap, "name")          a fresh $TMPDIR/spi-name-XXXXXX
 *   rq_open_journal(e, dir, extra, &q)   {"store":"journal","dir":dir,extra}
 *   rq_unreachable_redis(json, cap, dir)  "redis" at 127.0.0.1:1, fallback
 *                                        journal in dir
 *   v = rq_envelope(key, klass, body)    every other field zero
 *   rq_enqueue(q, &v)                    SPI_OK, and not a duplicate
 *   rq_is_dup(q, &v)                     SPI_OK; whether a duplicate
 *   rq_enqueue_keys(q, &v, "k", n)       v again as k0 .. k<n-1>
 *   rq_claim(q, mask, lease_ms, &c)      status, or RQ_NOTHING_READY
 *   rq_stats_rc(q, &s), rq_stats(q)      spi_replay_stats_get (SPI_OK)
 */
#ifndef SPI_TEST_REPLAY_HELPERS_H
#define SPI_TEST_REPLAY_HELPERS_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"

/* What rq_claim answers when nothing is ready; the library's answer is
 * SPI_OK with claim id 0 (SPI_ENOTFOUND before 0.3.0). */
#define RQ_NOTHING_READY 1
/* Every class lane. */
#define RQ_ALL                                                                 \
  ((1u << SPI_CLASS_GOLD) | (1u << SPI_CLASS_SILVER) | (1u << SPI_CLASS_BRONZE))

/* ------------------------------------------------------------- the hooks */

typedef struct rq_hooks {
  int64_t now;                 /* the engine's clock, ns */
  long allocs, frees, fail_at; /* fail_at: allocation to refuse, -1 never */
} rq_hooks;

static inline int64_t rq_clock(void *ud) {
  return __atomic_load_n(&((rq_hooks *)ud)->now, __ATOMIC_SEQ_CST);
}

static inline void *rq_alloc(void *ud, size_t n) {
  rq_hooks *h = ud;
  /* Threads allocate at once in some tests: count atomically. */
  long fail_at = __atomic_load_n(&h->fail_at, __ATOMIC_SEQ_CST);
  if (fail_at >= 0 &&
      __atomic_load_n(&h->allocs, __ATOMIC_SEQ_CST) == fail_at) {
    __atomic_store_n(&h->fail_at, -1, __ATOMIC_SEQ_CST);
    return NULL;
  }
  __atomic_fetch_add(&h->allocs, 1, __ATOMIC_SEQ_CST);
  return malloc(n);
}

static inline void rq_free(void *ud, void *p) {
  __atomic_fetch_add(&((rq_hooks *)ud)->frees, 1, __ATOMIC_SEQ_CST);
  free(p);
}

/* Hooks on *h (clock and allocator; no log). */
static inline spi_hooks rq_hooks_of(rq_hooks *h) {
  spi_hooks sh;
  memset(&sh, 0, sizeof sh);
  sh.struct_size = sizeof sh;
  sh.clock = rq_clock;
  sh.clock_user_data = h;
  sh.alloc = rq_alloc;
  sh.free = rq_free;
  sh.alloc_user_data = h;
  return sh;
}

/* --------------------------------------------------------- the journal */

static inline void rq_tmpdir(char *dir, size_t cap, const char *name) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, cap, "%s/spi-%s-XXXXXX", tmp && tmp[0] ? tmp : "/tmp", name);
  assert_non_null(mkdtemp(dir));
}

/* Open a journal queue on dir; extra is more JSON members or "". */
static inline int rq_open_journal(spi_engine *e, const char *dir,
                                  const char *extra, spi_replay_queue **q) {
  char cfg[1024];
  snprintf(cfg, sizeof cfg, "{\"store\":\"journal\",\"dir\":\"%s\"%s%s}", dir,
           extra[0] ? "," : "", extra);
  *q = NULL;
  return spi_replay_open(e, cfg, strlen(cfg), q);
}

/* A Redis queue store that nobody answers (127.0.0.1:1, 100 ms), with its
 * fallback journal in dir: the configuration in json[cap]. */
static inline void rq_unreachable_redis(char *json, size_t cap,
                                        const char *dir) {
  snprintf(json, cap,
           "{\"store\":\"redis\",\"fallback\":\"journal\",\"dir\":\"%s\","
           "\"store_config\":{\"address\":\"127.0.0.1:1\",\"timeout_ms\":"
           "100}}",
           dir);
}

/* ------------------------------------------------------------ the queue */

static inline spi_envelope rq_envelope(const char *key, int32_t klass,
                                       const char *body) {
  spi_envelope v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.key = key;
  v.key_len = strlen(key);
  v.body = body;
  v.body_len = strlen(body);
  v.klass = klass;
  return v;
}

static inline void rq_enqueue(spi_replay_queue *q, const spi_envelope *v) {
  int32_t dup = -1;
  int rc = spi_replay_enqueue(q, v, &dup);
  if (rc != SPI_OK)
    print_error("enqueue %.*s: %s\n", (int)v->key_len, v->key,
                spi_replay_errmsg(q));
  assert_int_equal(rc, SPI_OK);
  assert_int_equal(dup, 0);
}

static inline int rq_is_dup(spi_replay_queue *q, const spi_envelope *v) {
  int32_t dup = -1;
  assert_int_equal(spi_replay_enqueue(q, v, &dup), SPI_OK);
  return dup;
}

/* Enqueue *like under the keys <prefix>0 .. <prefix><n-1>, each new. */
static inline void rq_enqueue_keys(spi_replay_queue *q,
                                   const spi_envelope *like,
                                   const char *prefix, int n) {
  char key[64];
  spi_envelope v = *like;
  for (int i = 0; i < n; i++) {
    snprintf(key, sizeof key, "%s%d", prefix, i);
    v.key = key;
    v.key_len = strlen(key);
    rq_enqueue(q, &v);
  }
}

typedef struct rq_claimed {
  uint64_t id;
  spi_envelope env;
  char key[160];
  uint8_t buf[8192];
} rq_claimed;

/* Claim from mask into *c (its key as a C string): the status, or
 * RQ_NOTHING_READY. */
static inline int rq_claim(spi_replay_queue *q, uint32_t mask,
                           int64_t lease_ms, rq_claimed *c) {
  memset(c, 0, sizeof *c);
  c->env.struct_size = sizeof c->env;
  size_t need = 0;
  int rc = spi_replay_claim(q, mask, lease_ms, &c->id, &c->env, c->buf,
                            sizeof c->buf, &need);
  if (rc == SPI_OK && c->id == 0) {
    assert_int_equal(need, 0);
    assert_null(c->env.key); /* untouched */
    return RQ_NOTHING_READY;
  }
  if (rc == SPI_OK) {
    assert_true(need <= sizeof c->buf);
    memcpy(c->key, c->env.key, c->env.key_len);
    c->key[c->env.key_len] = '\0';
  }
  return rc;
}

/* spi_replay_stats_get's status (the struct is filled on SPI_EIO too). */
static inline int rq_stats_rc(spi_replay_queue *q, spi_replay_stats *s) {
  memset(s, 0, sizeof *s);
  s->struct_size = sizeof *s;
  return spi_replay_stats_get(q, s);
}

static inline spi_replay_stats rq_stats(spi_replay_queue *q) {
  spi_replay_stats s;
  assert_int_equal(rq_stats_rc(q, &s), SPI_OK);
  return s;
}

#endif /* SPI_TEST_REPLAY_HELPERS_H */
