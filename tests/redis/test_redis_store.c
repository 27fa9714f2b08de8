/*
 * test_redis_store.c - the "redis" store as the engine sees it: loaded by
 * configuration (the engine dlopen()s libspotinfer_redis), the fallback
 * option's checks, store_config errors at open, a server that cannot be
 * reached (SPI_EIO with a message, or the fallback journal, moved into
 * Redis once it answers: with SPI_REDIS_PORT), and the module struct rules
 * for queue stores (a record store built before them still registers).
 * Through a proxy (redis_proxy.h): one deadline for a call that reconnects,
 * one round trip to set up with AUTH and SELECT; an ack or nack whose
 * answer was lost, repeated. Entries written into the
 * streams by hand: what a claim cannot take is dead-lettered at once.
 * Consumers of processes gone are removed from the groups. The store by
 * hand: a claim never finished is forgotten after its lease, and the
 * claims it holds are bounded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"
#include "spotinfer/spotinfer_redis.h"
#include "redis_conn.h"
#include "redis_proxy.h"
#include "store_lua.h"
#include "unit/journal_files.h"
#include "unit/replay_helpers.h"

static spi_envelope env_of(const char *key) {
  return rq_envelope(key, SPI_CLASS_GOLD, "{\"model\":\"m\",\"messages\":[]}");
}

static int open_q(spi_engine *e, const char *json, spi_replay_queue **q) {
  return spi_replay_open(e, json, strlen(json), q);
}

static void expect_open(const char *json, int status, const char *part) {
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  int rc = open_q(e, json, &q);
  if (rc != status || !strstr(spi_engine_errmsg(e), part))
    print_error("%s: got %d \"%s\"\n", json, rc, spi_engine_errmsg(e));
  assert_int_equal(rc, status);
  assert_null(q);
  assert_non_null(strstr(spi_engine_errmsg(e), part));
  spi_engine_free(e);
}

static void test_loaded_by_configuration(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  const char *name = NULL;
  assert_int_equal(spi_engine_module_name(e, SPI_MODULE_REPLAY_STORE, 2, &name),
                   SPI_ENOTFOUND);
  const char *cfg = "{\"replay\":{\"store\":\"redis\"}}";
  assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(spi_engine_module_name(e, SPI_MODULE_REPLAY_STORE, 2, &name),
                   SPI_OK);
  assert_string_equal(name, "redis");
  /* store_config is checked at configure time, like every option. */
  const char *bad =
      "{\"replay\":{\"store\":\"redis\",\"store_config\":{\"adress\":1}}}";
  assert_int_equal(spi_engine_configure(e, bad, strlen(bad)), SPI_EUNKNOWN);
  assert_non_null(
      strstr(spi_engine_errmsg(e), "replay.store_config.adress: unknown key"));
  bad = "{\"replay\":{\"store\":\"redis\",\"store_config\":"
        "{\"address\":\"h:0\"}}}";
  assert_int_equal(spi_engine_configure(e, bad, strlen(bad)), SPI_ERANGE);
  assert_non_null(strstr(spi_engine_errmsg(e), "port must be 1..65535"));
  /* Configuring again finds it registered. */
  assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(spi_engine_module_name(e, SPI_MODULE_REPLAY_STORE, 3, &name),
                   SPI_ENOTFOUND);
  spi_engine_free(e);
  /* spi_replay_open loads it too, on an engine that never configured it. */
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  assert_int_equal(open_q(e,
                          "{\"store\":\"redis\",\"store_config\":{\"address\":"
                          "\"127.0.0.1:1\"}}",
                          &q),
                   SPI_OK);
  spi_replay_close(q);
  spi_engine_free(e);
}

static void test_config_errors(void **st) {
  (void)st;
  expect_open("{\"store\":\"memory\",\"fallback\":\"journal\",\"dir\":\"/tmp\"}",
              SPI_EINVAL, "replay.fallback: only a queue store");
  expect_open("{\"store\":\"redis\",\"fallback\":\"journal\"}", SPI_EINVAL,
              "\"journal\" needs replay.dir");
  expect_open("{\"store\":\"redis\",\"fallback\":\"disk\"}", SPI_EUNKNOWN,
              "replay.fallback");
  expect_open("{\"store\":\"redis\",\"store_config\":{\"adress\":\"x\"}}",
              SPI_EUNKNOWN, "replay.store_config.adress: unknown key");
  expect_open("{\"store\":\"redis\",\"store_config\":{\"timeout_ms\":0}}",
              SPI_ERANGE, "replay.store_config.timeout_ms");
}

static void test_unreachable(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  assert_int_equal(open_q(e,
                          "{\"store\":\"redis\",\"store_config\":{\"address\":"
                          "\"127.0.0.1:1\",\"timeout_ms\":100}}",
                          &q),
                   SPI_OK);
  spi_envelope v = env_of("u1");
  assert_int_equal(spi_replay_enqueue(q, &v, NULL), SPI_EIO);
  assert_non_null(strstr(spi_replay_errmsg(q), "redis 127.0.0.1:1"));
  rq_claimed c;
  assert_int_equal(rq_claim(q, RQ_ALL, 0, &c), SPI_EIO);
  assert_int_equal(spi_replay_tick(q), SPI_EIO);
  spi_replay_stats s;
  assert_int_equal(rq_stats_rc(q, &s), SPI_EIO);
  spi_replay_close(q);
  spi_engine_free(e);
}

/* Unreachable with a fallback journal: enqueues succeed; a queue on the
 * same directory and a server that answers moves them over, once. */
static void test_fallback_moves_once(void **st) {
  (void)st;
  const char *port = getenv("SPI_REDIS_PORT");
  char dir[256];
  rq_tmpdir(dir, sizeof dir, "fb");
  char json[512];
  rq_unreachable_redis(json, sizeof json, dir);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  assert_int_equal(open_q(e, json, &q), SPI_OK);
  const char *keys[] = {"f1", "f2", "f3", "f4"};
  for (int i = 0; i < 3; i++) {
    spi_envelope v = env_of(keys[i]);
    int32_t dup = -1;
    assert_int_equal(spi_replay_enqueue(q, &v, &dup), SPI_OK);
    assert_int_equal(dup, 0);
  }
  spi_replay_close(q);
  /* The same from the engine's own "replay" section. */
  char cfg[600];
  snprintf(cfg, sizeof cfg, "{\"replay\":%s}", json);
  assert_int_equal(spi_engine_configure(e, cfg, strlen(cfg)), SPI_OK);
  assert_int_equal(spi_replay_open(e, NULL, 0, &q), SPI_OK);
  spi_envelope v4 = env_of("f4");
  assert_int_equal(spi_replay_enqueue(q, &v4, NULL), SPI_OK);
  spi_replay_close(q);
  if (port) {
    snprintf(json, sizeof json,
             "{\"store\":\"redis\",\"fallback\":\"journal\",\"dir\":\"%s\","
             "\"store_config\":{\"address\":\"127.0.0.1:%s\",\"key_prefix\":"
             "\"fb:%ld:\"}}",
             dir, port, (long)getpid());
    assert_int_equal(open_q(e, json, &q), SPI_OK);
    assert_int_equal(spi_replay_tick(q), SPI_OK);
    spi_replay_stats s = rq_stats(q);
    assert_int_equal(s.ready[SPI_CLASS_GOLD], 4);
    /* A second queue on it finds nothing left to move. */
    spi_replay_close(q);
    assert_int_equal(open_q(e, json, &q), SPI_OK);
    assert_int_equal(spi_replay_tick(q), SPI_OK);
    s = rq_stats(q);
    assert_int_equal(s.ready[SPI_CLASS_GOLD], 4);
    for (int i = 0; i < 4; i++) {
      rq_claimed c;
      assert_int_equal(rq_claim(q, RQ_ALL, 0, &c), SPI_OK);
      assert_string_equal(c.key, keys[i]); /* oldest first */
      assert_int_equal(spi_replay_ack(q, c.id), SPI_OK);
    }
    spi_replay_close(q);
  }
  spi_engine_free(e);
  rm_rf(dir);
}

/* -------------------------------------------------- through a proxy */

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A queue on the Redis store behind proxy p; top is more "replay" members
 * and extra more store_config members, or "". Reconnects are not held
 * back. */
static void open_proxied_with(spi_engine *e, const rp_proxy *p,
                              const char *prefix, const char *top,
                              const char *extra, spi_replay_queue **q) {
  char json[768];
  snprintf(json, sizeof json,
           "{%s%s\"store\":\"redis\",\"store_config\":{\"address\":"
           "\"127.0.0.1:%d\",\"key_prefix\":\"%s:%ld:\","
           "\"reconnect_min_ms\":0,\"reconnect_max_ms\":0%s%s}}",
           top, top[0] ? "," : "", p->port, prefix, (long)getpid(),
           extra[0] ? "," : "", extra);
  int rc = open_q(e, json, q);
  if (rc != SPI_OK) print_error("open: %s\n", spi_engine_errmsg(e));
  assert_int_equal(rc, SPI_OK);
}

static void open_proxied(spi_engine *e, const rp_proxy *p, const char *prefix,
                         const char *extra, spi_replay_queue **q) {
  open_proxied_with(e, p, prefix, "", extra, q);
}

/* Drop q's connection: the next call connects again. */
static void drop_connection(rp_proxy *p, spi_replay_queue *q) {
  rp_drop_next_reply(p);
  assert_int_equal(spi_replay_tick(q), SPI_EIO);
}

/* Enqueue key on q; its status, and in *took how long it took (ms). */
static int timed_enqueue(spi_replay_queue *q, const char *key, int64_t *took) {
  spi_envelope v = env_of(key);
  int64_t t0 = mono_ms();
  int rc = spi_replay_enqueue(q, &v, NULL);
  *took = mono_ms() - t0;
  return rc;
}

/* A call has one deadline: timeout_ms, and connect_timeout_ms more when it
 * has to connect first. Connecting and setting the connection up (the
 * handshake's PING with the consumer groups and the scripts: one round
 * trip) end within connect_timeout_ms, and the call's script has
 * timeout_ms from when it is sent: a server that answers each round trip
 * within its timeout is used after a reconnect too. All three round trips
 * shared the one deadline, so a server slower than a third of it failed
 * every call that reconnected, and was never used again once the
 * connection dropped; before that, each step had a timeout of its own, and
 * a slow server could hold a call for ten round trips. */
static void test_one_deadline_per_call(void **st) {
  rp_proxy *p = *st;
  if (!p) skip();
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  open_proxied(e, p, "dl",
               "\"connect_timeout_ms\":600,\"timeout_ms\":600", &q);
  /* 100 ms a round trip: connecting and setting up, then the enqueue. */
  drop_connection(p, q);
  rp_set_delay(p, 100);
  int64_t took = 0;
  int rc = timed_enqueue(q, "d1", &took);
  if (rc != SPI_OK) print_error("enqueue: %s\n", spi_replay_errmsg(q));
  assert_int_equal(rc, SPI_OK);
  if (took >= 1000)
    print_error("a call that connected took %lld ms\n", (long long)took);
  assert_true(took < 1000);
  /* 450 ms a round trip, each within its 600 (three past 1200): the call
   * that reconnects, and those after it, succeed. */
  rp_set_delay(p, 0);
  drop_connection(p, q);
  rp_set_delay(p, 450);
  for (int i = 0; i < 3; i++) {
    char key[8];
    snprintf(key, sizeof key, "s%d", i);
    rc = timed_enqueue(q, key, &took);
    if (rc != SPI_OK || took >= 1200)
      print_error("slow server, call %d: %d in %lld ms: %s\n", i, rc,
                  (long long)took, spi_replay_errmsg(q));
    assert_int_equal(rc, SPI_OK);
    assert_true(took < 1200);
  }
  /* 700 ms a round trip: the setup is not answered within the 600 of
   * connecting, and the call ends then. */
  rp_set_delay(p, 0);
  drop_connection(p, q);
  rp_set_delay(p, 700);
  rc = timed_enqueue(q, "d2", &took);
  assert_int_equal(rc, SPI_EIO);
  assert_non_null(strstr(spi_replay_errmsg(q), "timed out"));
  if (took < 550 || took > 1000)
    print_error("a call whose setup is late took %lld ms\n", (long long)took);
  assert_true(took >= 550 && took <= 1000);
  rp_set_delay(p, 0);
  spi_replay_close(q);
  /* connect_timeout_ms 900, timeout_ms 400, 500 ms a round trip: set up in
   * time, and the script is late by its own 400, not by what is left of
   * the 1300 (it had 800 of it and succeeded). */
  open_proxied(e, p, "dl",
               "\"connect_timeout_ms\":900,\"timeout_ms\":400", &q);
  drop_connection(p, q);
  rp_set_delay(p, 500);
  rc = timed_enqueue(q, "d3", &took);
  assert_int_equal(rc, SPI_EIO);
  assert_non_null(strstr(spi_replay_errmsg(q), "read: timed out"));
  if (took < 850 || took > 1300)
    print_error("a script late by its 400 ms took %lld ms\n",
                (long long)took);
  assert_true(took >= 850 && took <= 1300);
  rp_set_delay(p, 0);
  spi_replay_close(q);
  spi_engine_free(e);
}

/* A queue on the Redis store straight to the server (no proxy), on the
 * same keys as open_proxied(prefix); top and extra as there. */
static void open_direct_with(spi_engine *e, const char *prefix,
                             const char *top, const char *extra,
                             spi_replay_queue **q) {
  char json[768];
  snprintf(json, sizeof json,
           "{%s%s\"store\":\"redis\",\"store_config\":{\"address\":"
           "\"127.0.0.1:%s\",\"key_prefix\":\"%s:%ld:\"%s%s}}",
           top, top[0] ? "," : "", getenv("SPI_REDIS_PORT"), prefix,
           (long)getpid(), extra[0] ? "," : "", extra);
  int rc = open_q(e, json, q);
  if (rc != SPI_OK) print_error("open: %s\n", spi_engine_errmsg(e));
  assert_int_equal(rc, SPI_OK);
}

static void open_direct(spi_engine *e, const char *prefix, const char *extra,
                        spi_replay_queue **q) {
  open_direct_with(e, prefix, "", extra, q);
}

static void claim_key(spi_replay_queue *q, uint32_t mask, int64_t lease_ms,
                      const char *key, rq_claimed *c) {
  int rc = rq_claim(q, mask, lease_ms, c);
  if (rc != SPI_OK) print_error("claim: %d %s\n", rc, spi_replay_errmsg(q));
  assert_int_equal(rc, SPI_OK);
  assert_string_equal(c->key, key);
}

#define GOLD (1u << SPI_CLASS_GOLD)
#define SILVER (1u << SPI_CLASS_SILVER)

/* An ack or nack whose answer was lost (the connection dropped after the
 * server ran it) answers SPI_EIO and keeps the claim; repeated, it answers
 * as the first did: SPI_OK, done once (it answered SPI_ESTALE). A finish
 * whose lease had really ended, the envelope claimed again by another
 * consumer, is SPI_ESTALE, repeated or not; so is another finish than the
 * one that was done. */
static void test_finish_after_lost_reply(void **st) {
  rp_proxy *p = *st;
  if (!p) skip();
  rq_hooks h = {.now = 1700000000000LL * 1000000, .fail_at = -1};
  spi_hooks sh = rq_hooks_of(&h);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &sh), SPI_OK);
  spi_replay_queue *qa = NULL, *qb = NULL;
  open_proxied(e, p, "fin", "\"consumer\":\"a\"", &qa);
  open_direct(e, "fin", "\"consumer\":\"b\"", &qb);
  spi_envelope v = rq_envelope("k1", SPI_CLASS_SILVER, "{}");
  rq_enqueue(qa, &v);
  rq_claimed c;
  claim_key(qa, SILVER, 0, "k1", &c);
  rp_drop_next_reply(p);
  assert_int_equal(spi_replay_ack(qa, c.id), SPI_EIO);
  assert_int_equal(spi_replay_ack(qa, c.id), SPI_OK);
  spi_replay_stats s = rq_stats(qa);
  assert_int_equal(s.acked, 1);
  assert_int_equal(s.leased, 0);
  assert_int_equal(s.ready[SPI_CLASS_SILVER], 0);
  assert_int_equal(rq_is_dup(qa, &v), 1); /* acked: its key remembered */
  /* Done: a third ack finds no claim. */
  assert_int_equal(spi_replay_ack(qa, c.id), SPI_ESTALE);

  /* A nack the same way: the envelope waits out its backoff, once. */
  v = rq_envelope("k2", SPI_CLASS_SILVER, "{}");
  rq_enqueue(qa, &v);
  claim_key(qa, SILVER, 0, "k2", &c);
  rp_drop_next_reply(p);
  assert_int_equal(spi_replay_nack(qa, c.id), SPI_EIO);
  assert_int_equal(spi_replay_nack(qa, c.id), SPI_OK);
  s = rq_stats(qa);
  assert_int_equal(s.nacked, 1);
  assert_int_equal(s.leased, 0);
  assert_int_equal(s.delayed, 1);

  /* An ack was done: a nack after it is not. */
  v = rq_envelope("k3", SPI_CLASS_SILVER, "{}");
  rq_enqueue(qa, &v);
  claim_key(qa, SILVER, 0, "k3", &c);
  rp_drop_next_reply(p);
  assert_int_equal(spi_replay_ack(qa, c.id), SPI_EIO);
  assert_int_equal(spi_replay_nack(qa, c.id), SPI_ESTALE);
  assert_int_equal(rq_is_dup(qa, &v), 1);

  /* The repeat is the same nack, though the envelope's deadline passed
   * in between (a new decision would dead-letter it). */
  v = rq_envelope("k5", SPI_CLASS_BRONZE, "{}");
  v.deadline_ns = h.now + 500 * 1000000LL;
  rq_enqueue(qa, &v);
  claim_key(qa, 1u << SPI_CLASS_BRONZE, 0, "k5", &c);
  rp_drop_next_reply(p);
  assert_int_equal(spi_replay_nack(qa, c.id), SPI_EIO);
  h.now += 1000 * 1000000LL;
  assert_int_equal(spi_replay_nack(qa, c.id), SPI_OK);
  assert_int_equal(rq_stats(qa).nacked, 2);

  /* The lease ends and b claims it: a's ack is stale, and stays stale
   * when its answer is lost and it is repeated. (a still holds the claim:
   * it forgets it a lease length after the lease ended.) */
  v = rq_envelope("k4", SPI_CLASS_GOLD, "{}");
  rq_enqueue(qa, &v);
  claim_key(qa, GOLD, 1000, "k4", &c);
  h.now += 1500 * 1000000LL;
  rq_claimed cb;
  claim_key(qb, GOLD, 0, "k4", &cb);
  assert_int_equal(cb.env.attempts, 1);
  rp_drop_next_reply(p);
  assert_int_equal(spi_replay_ack(qa, c.id), SPI_EIO);
  assert_int_equal(spi_replay_ack(qa, c.id), SPI_ESTALE);
  assert_int_equal(spi_replay_ack(qb, cb.id), SPI_OK);
  s = rq_stats(qb);
  assert_int_equal(s.leased, 0);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 0);
  spi_replay_close(qa);
  spi_replay_close(qb);
  spi_engine_free(e);
}

/* ------------------------------------------- entries written by hand */

/* A connection straight to the tests' server. */
static spr_conn *raw_conn(void) {
  char json[128], err[256] = "";
  snprintf(json, sizeof json, "{\"address\":\"127.0.0.1:%s\"}",
           getenv("SPI_REDIS_PORT"));
  spr_config c;
  assert_int_equal(spr_config_parse(json, strlen(json), "t", NULL, &c, err,
                                    sizeof err),
                   SPI_OK);
  spr_conn *k = NULL;
  assert_int_equal(spr_conn_new(&c, &k, err, sizeof err), SPI_OK);
  return k;
}

static redisReply *raw(spr_conn *k, int argc, const char **argv,
                       const size_t *lens) {
  char err[256] = "";
  redisReply *r = NULL;
  int rc = spr_conn_command(k, argc, argv, lens, &r, err, sizeof err);
  if (rc != SPI_OK) print_error("redis: %s\n", err);
  assert_int_equal(rc, SPI_OK);
  assert_int_not_equal(r->type, REDIS_REPLY_ERROR);
  return r;
}

/* An ACL user of the tests' server: made (on) or removed. */
static void acl_user(const char *name, int on) {
  spr_conn *k = raw_conn();
  const char *mk[] = {"ACL", "SETUSER", name, "on", ">slow-pw", "~*",
                      "+@all"};
  const char *rm[] = {"ACL", "DELUSER", name};
  size_t lens[7];
  const char **argv = on ? mk : rm;
  int argc = on ? 7 : 3;
  for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  freeReplyObject(raw(k, argc, argv, lens));
  spr_conn_free(k);
}

/* A call that reconnects with AUTH and SELECT configured sets up in one
 * round trip (AUTH, SELECT, the PING, the groups and the scripts
 * together) within connect_timeout_ms, then its script within timeout_ms:
 * a server slower than a third of connect_timeout_ms is used again after
 * its connection dropped. AUTH and SELECT took a round trip each before,
 * inside connect_timeout_ms, and the store never got the connection back. */
static void test_slow_reconnect_with_auth_and_db(void **st) {
  rp_proxy *p = *st;
  if (!p) skip();
  acl_user("spislowstore", 1);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  open_proxied(e, p, "auth",
               "\"username\":\"spislowstore\",\"password\":\"slow-pw\","
               "\"db\":1,\"connect_timeout_ms\":500,\"timeout_ms\":500",
               &q);
  static const int delays[] = {200, 300}; /* 0.4 and 0.6 of the 500 */
  for (int i = 0; i < 2; i++) {
    drop_connection(p, q);
    rp_set_delay(p, delays[i]);
    char key[8];
    snprintf(key, sizeof key, "a%d", i);
    int64_t took = 0;
    int rc = timed_enqueue(q, key, &took);
    if (rc != SPI_OK || took >= 1000)
      print_error("%d ms a round trip: %d in %lld ms: %s\n", delays[i], rc,
                  (long long)took, spi_replay_errmsg(q));
    assert_int_equal(rc, SPI_OK);
    assert_true(took < 1000);
    rp_set_delay(p, 0);
  }
  spi_replay_stats s = rq_stats(q);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 2);
  spi_replay_close(q);
  spi_engine_free(e);
  acl_user("spislowstore", 0);
}

/* An entry of lane stream key as the store writes one, its envelope e. */
static void xadd_entry(spr_conn *k, const char *key, const char *ekey,
                       const uint8_t *e, size_t elen) {
  const char *argv[] = {"XADD", key, "*", "k", ekey, "a", "0", "dl", "0",
                        "l", "1", "e", (const char *)e};
  size_t lens[13];
  for (int i = 0; i < 12; i++) lens[i] = strlen(argv[i]);
  lens[12] = elen;
  freeReplyObject(raw(k, 13, argv, lens));
}

/* Entries the store finds in a stream that a claim cannot take: an
 * envelope the library refuses (its class) and bytes that are no envelope
 * at all. Each is dead-lettered at once (why "refused", "malformed"), its
 * claim answering the error, and the next claim goes on; they came back
 * each time their lease ended. */
static void test_claim_dead_letters_what_cannot_be_taken(void **st) {
  (void)st;
  if (!getenv("SPI_REDIS_PORT")) skip();
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  open_direct(e, "bad", "", &q); /* makes the streams and groups */
  spr_conn *k = raw_conn();
  char lane[96], dead[96];
  snprintf(lane, sizeof lane, "bad:%ld:lane:1", (long)getpid());
  snprintf(dead, sizeof dead, "bad:%ld:dead", (long)getpid());
  /* store_redis.c's codec: "SPE1", kind, class, ..., lengths, the body. */
  uint8_t blob[58];
  memset(blob, 0, sizeof blob);
  memcpy(blob, "SPE1", 4);
  blob[8] = 9;  /* class 9 */
  blob[44] = 2; /* body length */
  memcpy(blob + 56, "{}", 2);
  xadd_entry(k, lane, "bad1", blob, sizeof blob);
  xadd_entry(k, lane, "bad2", (const uint8_t *)"nope", 4);
  xadd_entry(k, lane, "bad3", blob, sizeof blob - 1); /* lengths wrong */
  spi_envelope v = env_of("good");
  rq_enqueue(q, &v);
  rq_claimed c;
  assert_int_equal(rq_claim(q, RQ_ALL, 0, &c), SPI_EMODULE);
  assert_non_null(strstr(spi_replay_errmsg(q),
                         "envelope bad1 refused (class out of range): "
                         "dead-lettered"));
  assert_int_equal(rq_claim(q, RQ_ALL, 0, &c), SPI_EMODULE);
  assert_non_null(strstr(spi_replay_errmsg(q),
                         "of bad2 is malformed (field e is not an envelope): "
                         "dead-lettered"));
  assert_int_equal(rq_claim(q, RQ_ALL, 0, &c), SPI_EMODULE);
  assert_non_null(strstr(spi_replay_errmsg(q),
                         "of bad3 is malformed (its envelope does not decode): "
                         "dead-lettered"));
  claim_key(q, RQ_ALL, 0, "good", &c);
  assert_int_equal(spi_replay_ack(q, c.id), SPI_OK);
  spi_replay_stats s = rq_stats(q);
  assert_int_equal(s.dead, 3);
  assert_int_equal(s.leased, 0);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 0);
  /* The dead letters say why. */
  const char *argv[] = {"XRANGE", dead, "-", "+"};
  size_t lens[] = {6, strlen(dead), 1, 1};
  redisReply *r = raw(k, 4, argv, lens);
  assert_int_equal(r->elements, 3);
  const char *why[] = {"refused", "malformed", "malformed"};
  for (size_t i = 0; i < 3; i++) {
    const redisReply *f = r->element[i]->element[1];
    const char *got = "";
    for (size_t j = 0; j + 1 < f->elements; j += 2)
      if (!strcmp(f->element[j]->str, "why")) got = f->element[j + 1]->str;
    assert_string_equal(got, why[i]);
  }
  freeReplyObject(r);
  spr_conn_free(k);
  spi_replay_close(q);
  spi_engine_free(e);
}

/* A command of words straight to the server. */
static redisReply *raw_words(spr_conn *k, int argc, const char **argv) {
  size_t lens[16];
  for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
  return raw(k, argc, argv, lens);
}

/* The integer a command of words answers. */
static long long raw_int(spr_conn *k, int argc, const char **argv) {
  redisReply *r = raw_words(k, argc, argv);
  long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
  freeReplyObject(r);
  return n;
}

/* The keys of one test's queue (prefix:pid:name). */
typedef struct qkeys {
  char lane1[96], dead[96], leases[96], delayed[96], bytes[96], fin[96];
} qkeys;

static qkeys keys_of(const char *prefix) {
  qkeys q;
  long pid = (long)getpid();
  snprintf(q.lane1, sizeof q.lane1, "%s:%ld:lane:1", prefix, pid);
  snprintf(q.dead, sizeof q.dead, "%s:%ld:dead", prefix, pid);
  snprintf(q.leases, sizeof q.leases, "%s:%ld:leases", prefix, pid);
  snprintf(q.delayed, sizeof q.delayed, "%s:%ld:delayed", prefix, pid);
  snprintf(q.bytes, sizeof q.bytes, "%s:%ld:bytes", prefix, pid);
  snprintf(q.fin, sizeof q.fin, "%s:%ld:finished", prefix, pid);
  return q;
}

/* Field name of the i-th entry of stream key ("" when it has none). */
static void entry_field(spr_conn *k, const char *key, size_t i,
                        const char *name, char *out, size_t cap) {
  const char *argv[] = {"XRANGE", key, "-", "+"};
  redisReply *r = raw_words(k, 4, argv);
  out[0] = '\0';
  assert_true(i < r->elements);
  const redisReply *f = r->element[i]->element[1];
  for (size_t j = 0; j + 1 < f->elements; j += 2)
    if (!strcmp(f->element[j]->str, name))
      snprintf(out, cap, "%s", f->element[j + 1]->str);
  freeReplyObject(r);
}

/* An envelope in a later format than this build's ("SPE2": a newer
 * process wrote it, in a rolling upgrade) is given back untried, not
 * dead-lettered: the claim goes on to the next entry, and it waits in the
 * delayed set until the claim's lease would have ended, its attempts
 * unchanged, then goes back to its lane for whoever claims next. Bytes
 * that only look like it ("SPE0") are malformed. */
static void test_claim_gives_back_a_later_format(void **st) {
  (void)st;
  if (!getenv("SPI_REDIS_PORT")) skip();
  rq_hooks h = {.now = 1700000000000LL * 1000000, .fail_at = -1};
  spi_hooks sh = rq_hooks_of(&h);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &sh), SPI_OK);
  spi_replay_queue *q = NULL;
  open_direct(e, "later", "", &q);
  spr_conn *k = raw_conn();
  qkeys K = keys_of("later");
  const char *next[] = {"XADD", K.lane1, "*", "k", "next", "a", "2",
                        "dl", "0", "l", "1", "e", "SPE2 a newer format"};
  freeReplyObject(raw_words(k, 13, next));
  const char *zero[] = {"XADD", K.lane1, "*", "k", "zero", "a", "0",
                        "dl", "0", "l", "1", "e", "SPE0"};
  freeReplyObject(raw_words(k, 13, zero));
  spi_envelope v = env_of("good");
  rq_enqueue(q, &v);
  rq_claimed c;
  assert_int_equal(rq_claim(q, RQ_ALL, 1000, &c), SPI_EMODULE);
  assert_non_null(strstr(spi_replay_errmsg(q),
                         "of zero is malformed (field e is not an envelope)"));
  claim_key(q, RQ_ALL, 1000, "good", &c);
  assert_int_equal(spi_replay_ack(q, c.id), SPI_OK);
  spi_replay_stats s = rq_stats(q);
  assert_int_equal(s.dead, 1);
  assert_int_equal(s.delayed, 1);
  assert_int_equal(s.leased, 0);
  /* Back in its lane when the lease would have ended, untouched. */
  h.now += 999LL * 1000000;
  assert_int_equal(spi_replay_tick(q), SPI_OK);
  assert_int_equal(rq_stats(q).delayed, 1);
  h.now += 1LL * 1000000;
  assert_int_equal(spi_replay_tick(q), SPI_OK);
  s = rq_stats(q);
  assert_int_equal(s.delayed, 0);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 1);
  assert_int_equal(s.dead, 1);
  char got[64];
  entry_field(k, K.lane1, 0, "k", got, sizeof got);
  assert_string_equal(got, "next");
  entry_field(k, K.lane1, 0, "a", got, sizeof got);
  assert_string_equal(got, "2");
  entry_field(k, K.lane1, 0, "e", got, sizeof got);
  assert_string_equal(got, "SPE2 a newer format");
  /* Still known to the queue: enqueued again, it is a duplicate. */
  v = env_of("next");
  assert_int_equal(rq_is_dup(q, &v), 1);
  spr_conn_free(k);
  spi_replay_close(q);
  spi_engine_free(e);
}

/* The finishes the server remembers (P finished) are at most
 * replay.max_acked_keys: beyond, the one due to be forgotten first goes,
 * and its repeat after a lost answer is SPI_ESTALE (as every repeat was
 * before P finished); one still held answers SPI_OK. They were kept for
 * the lease length whatever their number. */
static void test_finished_bounded(void **st) {
  rp_proxy *p = *st;
  if (!p) skip();
  rq_hooks h = {.now = 1700000000000LL * 1000000, .fail_at = -1};
  spi_hooks sh = rq_hooks_of(&h);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &sh), SPI_OK);
  spi_replay_queue *q = NULL;
  open_proxied_with(e, p, "finb", "\"max_acked_keys\":2", "", &q);
  spr_conn *k = raw_conn();
  qkeys K = keys_of("finb");
  const char *zcard[] = {"ZCARD", K.fin};
  const char *keys[] = {"f1", "f2", "f3", "f4", "f5"};
  for (int i = 0; i < 5; i++) {
    spi_envelope v = rq_envelope(keys[i], SPI_CLASS_SILVER, "{}");
    rq_enqueue(q, &v);
  }
  rq_claimed c[5];
  for (int i = 0; i < 5; i++) {
    claim_key(q, SILVER, 0, keys[i], &c[i]);
    if (i == 0 || i == 2) {
      rp_drop_next_reply(p); /* done, its answer lost */
      assert_int_equal(spi_replay_ack(q, c[i].id), SPI_EIO);
    } else {
      assert_int_equal(spi_replay_ack(q, c[i].id), SPI_OK);
    }
    if (i == 1) /* f1's finish is one of the two: its repeat is done */
      assert_int_equal(spi_replay_ack(q, c[0].id), SPI_OK);
    assert_true(raw_int(k, 2, zcard) <= 2);
    h.now += 1000000; /* each finish due a millisecond after the one before */
  }
  assert_int_equal(raw_int(k, 2, zcard), 2);
  /* f3's finish was forgotten for f4's and f5's. */
  assert_int_equal(spi_replay_ack(q, c[2].id), SPI_ESTALE);
  assert_int_equal(rq_stats(q).acked, 4);
  spr_conn_free(k);
  spi_replay_close(q);
  spi_engine_free(e);
}

/* A dead letter the library makes with a nack says why: "deadline" for an
 * envelope whose deadline passed before its attempts ran out (it said
 * "attempts"), "attempts" for one that ran out of them. */
static void test_dead_letter_says_why(void **st) {
  (void)st;
  if (!getenv("SPI_REDIS_PORT")) skip();
  rq_hooks h = {.now = 1700000000000LL * 1000000, .fail_at = -1};
  spi_hooks sh = rq_hooks_of(&h);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &sh), SPI_OK);
  spi_replay_queue *q = NULL;
  open_direct_with(e, "why", "\"max_attempts\":2", "", &q);
  spr_conn *k = raw_conn();
  qkeys K = keys_of("why");
  spi_envelope v = rq_envelope("late", SPI_CLASS_GOLD, "{}");
  v.deadline_ns = h.now + 500 * 1000000LL;
  rq_enqueue(q, &v);
  v = rq_envelope("spent", SPI_CLASS_GOLD, "{}");
  rq_enqueue(q, &v);
  rq_claimed c;
  claim_key(q, GOLD, 0, "late", &c);
  h.now += 1000 * 1000000LL;
  assert_int_equal(spi_replay_nack(q, c.id), SPI_OK); /* 1 of 2 attempts */
  claim_key(q, GOLD, 0, "spent", &c);
  assert_int_equal(spi_replay_nack(q, c.id), SPI_OK);
  h.now += 3600LL * 1000 * 1000000; /* its backoff is over */
  claim_key(q, GOLD, 0, "spent", &c);
  assert_int_equal(spi_replay_nack(q, c.id), SPI_OK); /* 2 of 2 */
  assert_int_equal(rq_stats(q).dead, 2);
  char got[64];
  entry_field(k, K.dead, 0, "k", got, sizeof got);
  assert_string_equal(got, "late");
  entry_field(k, K.dead, 0, "why", got, sizeof got);
  assert_string_equal(got, "deadline");
  entry_field(k, K.dead, 1, "k", got, sizeof got);
  assert_string_equal(got, "spent");
  entry_field(k, K.dead, 1, "why", got, sizeof got);
  assert_string_equal(got, "attempts");
  spr_conn_free(k);
  spi_replay_close(q);
  spi_engine_free(e);
}

/* Entries a lane can hold that an enqueue never writes: a field missing
 * (dl, l, e, k), attempts that are no count. A claim that meets one
 * dead-letters it (why "malformed", everything the entry had kept) and
 * answers the error naming what is wrong; the next claim goes on. One
 * without dl stopped the claim script after XREADGROUP (held with no
 * lease, never handed out again, its consumer never removed); one without
 * l was deleted by the dead-lettering that then failed; one without e cut
 * the script's reply short and was deleted later without a dead letter.
 * Leases and backoffs of such entries (made by an older store, or by hand)
 * are dead-lettered the same way when they come due. */
static void test_claim_dead_letters_malformed_entries(void **st) {
  (void)st;
  if (!getenv("SPI_REDIS_PORT")) skip();
  rq_hooks h = {.now = 1700000000000LL * 1000000, .fail_at = -1};
  spi_hooks sh = rq_hooks_of(&h);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &sh), SPI_OK);
  spi_replay_queue *q = NULL;
  open_direct(e, "mal", "", &q);
  spr_conn *k = raw_conn();
  qkeys K = keys_of("mal");
  spi_envelope v = env_of("good");
  rq_enqueue(q, &v);
  redisReply *r = NULL;
  /* Taken out and put back behind the bad ones. */
  rq_claimed c;
  claim_key(q, RQ_ALL, 0, "good", &c);
  static const struct {
    int n; /* words in fields */
    const char *fields[10];
    const char *what;
  } bad[] = {
      {8, {"k", "noDL", "a", "0", "l", "1", "e", "x"}, "no field dl"},
      {8, {"k", "noL", "a", "0", "dl", "0", "e", "x"}, "no field l"},
      {8, {"k", "noE", "a", "0", "dl", "0", "l", "1"}, "no field e"},
      {8, {"a", "0", "dl", "0", "l", "1", "e", "x"}, "no field k"},
      {10, {"k", "badA", "a", "x", "dl", "0", "l", "1", "e", "x"},
       "field a is not a count"},
      {10, {"k", "badL", "a", "0", "dl", "0", "l", "7", "e", "x"},
       "field l is not a lane"},
  };
  size_t nbad = sizeof bad / sizeof bad[0];
  for (size_t i = 0; i < nbad; i++) {
    const char *argv[13] = {"XADD", K.lane1, "*"};
    for (int j = 0; j < bad[i].n; j++) argv[3 + j] = bad[i].fields[j];
    freeReplyObject(raw_words(k, 3 + bad[i].n, argv));
  }
  assert_int_equal(spi_replay_nack(q, c.id), SPI_OK);
  h.now += 3600LL * 1000 * 1000000; /* its backoff is over */
  for (size_t i = 0; i < nbad; i++) {
    int rc = rq_claim(q, RQ_ALL, 0, &c);
    char want[96];
    snprintf(want, sizeof want, "malformed (%s): dead-lettered", bad[i].what);
    if (rc != SPI_EMODULE || !strstr(spi_replay_errmsg(q), want))
      print_error("bad entry %zu: %d %s\n", i, rc, spi_replay_errmsg(q));
    assert_int_equal(rc, SPI_EMODULE);
    assert_non_null(strstr(spi_replay_errmsg(q), want));
  }
  claim_key(q, RQ_ALL, 0, "good", &c);
  assert_int_equal(spi_replay_ack(q, c.id), SPI_OK);
  spi_replay_stats s = rq_stats(q);
  assert_int_equal(s.dead, nbad);
  assert_int_equal(s.leased, 0);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 0);
  const char *pending[] = {"XPENDING", K.lane1, "spotinfer"};
  r = raw_words(k, 3, pending);
  assert_int_equal(r->element[0]->integer, 0);
  freeReplyObject(r);
  const char *xlen[] = {"XLEN", K.lane1};
  assert_int_equal(raw_int(k, 2, xlen), 0);
  char got[64];
  for (size_t i = 0; i < nbad; i++) {
    entry_field(k, K.dead, i, "why", got, sizeof got);
    assert_string_equal(got, "malformed");
  }
  entry_field(k, K.dead, 0, "k", got, sizeof got);
  assert_string_equal(got, "noDL");
  entry_field(k, K.dead, 2, "l", got, sizeof got);
  assert_string_equal(got, "1"); /* what it had is kept */
  /* Now a lease and a backoff of entries an enqueue never wrote, due. */
  const char *add[] = {"XADD", K.lane1, "*", "k", "leased", "a", "0",
                       "l", "1", "e", "x"};
  freeReplyObject(raw_words(k, 11, add));
  const char *rd[] = {"XREADGROUP", "GROUP", "spotinfer", "old", "COUNT", "1",
                      "STREAMS", K.lane1, ">"};
  r = raw_words(k, 9, rd);
  char lease[80];
  snprintf(lease, sizeof lease, "1:%s", r->element[0]->element[1]->element[0]
                                            ->element[0]->str);
  freeReplyObject(r);
  const char *zl[] = {"ZADD", K.leases, "1", lease};
  freeReplyObject(raw_words(k, 4, zl));
  const char *zd[] = {"ZADD", K.delayed, "1", "not msgpack"};
  freeReplyObject(raw_words(k, 4, zd));
  assert_int_equal(spi_replay_tick(q), SPI_OK);
  s = rq_stats(q);
  assert_int_equal(s.dead, nbad + 2);
  assert_int_equal(s.leased, 0);
  assert_int_equal(s.delayed, 0);
  assert_int_equal(s.expired_leases, 1);
  entry_field(k, K.dead, nbad, "why", got, sizeof got);
  assert_string_equal(got, "malformed");
  entry_field(k, K.dead, nbad + 1, "why", got, sizeof got);
  assert_string_equal(got, "malformed");
  spr_conn_free(k);
  spi_replay_close(q);
  spi_engine_free(e);
}

/* Whether name is a consumer of group "spotinfer" on stream key. */
static int has_consumer(spr_conn *k, const char *key, const char *name) {
  const char *argv[] = {"XINFO", "CONSUMERS", key, "spotinfer"};
  redisReply *r = raw_words(k, 4, argv);
  int found = 0;
  for (size_t i = 0; i < r->elements; i++) {
    const redisReply *c = r->element[i];
    for (size_t j = 0; j + 1 < c->elements; j += 2)
      if (!strcmp(c->element[j]->str, "name") &&
          !strcmp(c->element[j + 1]->str, name))
        found = 1;
  }
  freeReplyObject(r);
  return found;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void sleep_until(int64_t t) {
  int64_t now = mono_ms();
  if (t > now) sleep_ms((long)(t - now));
}

/* Every process reads as a consumer of its own, so the groups gained one
 * with every start and never lost any. A consumer with nothing pending
 * that has not read for consumer_idle_ms is removed: by the setup of a
 * connection, and then by a tick at most every consumer_idle_ms. One with
 * entries pending, one that read lately and the store's own stay. The
 * times (ms, consumer_idle_ms 2000): "gone-1" and the others made at 0,
 * "lately" at 1000, the queue opened at 2100 (the setup removes "gone-1"
 * only); a tick at 3200 finds "lately" idle but is too early to list the
 * consumers again (it would remove it); one 2000 after the open does. */
static void test_idle_consumers_removed(void **st) {
  (void)st;
  if (!getenv("SPI_REDIS_PORT")) skip();
  spr_conn *k = raw_conn();
  char lane[3][96];
  for (int i = 0; i < 3; i++) {
    snprintf(lane[i], sizeof lane[i], "reap:%ld:lane:%d", (long)getpid(),
             i + 1);
    const char *mk[] = {"XGROUP", "CREATE", lane[i], "spotinfer", "0",
                        "MKSTREAM"};
    freeReplyObject(raw_words(k, 6, mk));
  }
  const char *old1[] = {"XGROUP", "CREATECONSUMER", lane[0], "spotinfer",
                        "gone-1"};
  const char *old2[] = {"XGROUP", "CREATECONSUMER", lane[1], "spotinfer",
                        "gone-1"};
  const char *mine[] = {"XGROUP", "CREATECONSUMER", lane[0], "spotinfer",
                        "me"};
  const char *add[] = {"XADD", lane[0], "*", "x", "1"};
  const char *busy[] = {"XREADGROUP", "GROUP", "spotinfer", "busy",
                        "COUNT", "1", "STREAMS", lane[0], ">"};
  int64_t t0 = mono_ms();
  freeReplyObject(raw_words(k, 5, old1));
  freeReplyObject(raw_words(k, 5, old2));
  freeReplyObject(raw_words(k, 5, mine));
  freeReplyObject(raw_words(k, 5, add));
  freeReplyObject(raw_words(k, 9, busy)); /* busy: one entry pending */
  sleep_until(t0 + 1000);
  const char *fresh[] = {"XGROUP", "CREATECONSUMER", lane[0], "spotinfer",
                         "lately"};
  freeReplyObject(raw_words(k, 5, fresh));
  sleep_until(t0 + 2100);
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  spi_replay_queue *q = NULL;
  int64_t opened = mono_ms();
  open_direct(e, "reap", "\"consumer\":\"me\",\"consumer_idle_ms\":2000",
              &q);
  int64_t open_end = mono_ms();
  assert_false(has_consumer(k, lane[0], "gone-1"));
  assert_false(has_consumer(k, lane[1], "gone-1"));
  assert_true(has_consumer(k, lane[0], "busy"));
  assert_true(has_consumer(k, lane[0], "me"));
  assert_true(has_consumer(k, lane[0], "lately"));
  /* "lately" idle for 2200 now, but the last listing was under 2000 ago:
   * the connection stays up, and the tick leaves the consumers alone. */
  sleep_until(t0 + 3200);
  assert_int_equal(spi_replay_tick(q), SPI_OK);
  if (mono_ms() >= opened + 2000)
    print_error("the check came too late (%lld ms after the open)\n",
                (long long)(mono_ms() - opened));
  assert_true(mono_ms() < opened + 2000);
  assert_true(has_consumer(k, lane[0], "lately"));
  sleep_until(open_end + 2100);
  assert_int_equal(spi_replay_tick(q), SPI_OK);
  assert_false(has_consumer(k, lane[0], "lately"));
  assert_true(has_consumer(k, lane[0], "busy"));
  assert_true(has_consumer(k, lane[0], "me"));
  /* The removal checks pending again (a consumer picked may have read
   * since it was listed): "busy" stays, even when picked. */
  const char *rm[] = {"EVAL", SPR_LUA_REAP, "3", lane[0], lane[1], lane[2],
                      "spotinfer", "1", "busy", "1", "me"};
  assert_int_equal(raw_int(k, 11, rm), 1);
  assert_true(has_consumer(k, lane[0], "busy"));
  assert_false(has_consumer(k, lane[0], "me"));
  spi_replay_close(q);
  spi_engine_free(e);
  spr_conn_free(k);
}

/* ---------------------------------------------------- module structs */

static int x_configure(void *st, const char *j, size_t n, void **out,
                       char *err, size_t cap) {
  (void)st, (void)j, (void)n, (void)err, (void)cap;
  *out = st;
  return SPI_OK;
}
static void x_release(void *st, void *inst) { (void)st, (void)inst; }
static int x_recover(void *st, void *inst, spi_replay_record_fn fn, void *ud,
                     char *err, size_t cap) {
  (void)st, (void)inst, (void)fn, (void)ud, (void)err, (void)cap;
  return SPI_OK;
}
static int x_append(void *st, void *inst, const spi_replay_record *r,
                    uint64_t *seq, char *err, size_t cap) {
  (void)st, (void)inst, (void)r, (void)err, (void)cap;
  *seq = 1;
  return SPI_OK;
}
static int x_sync(void *st, void *inst, uint64_t seq, char *err, size_t cap) {
  (void)st, (void)inst, (void)seq, (void)err, (void)cap;
  return SPI_OK;
}
static int x_stats(void *st, void *inst, spi_replay_store_stats *out) {
  (void)st, (void)inst, (void)out;
  return SPI_OK;
}

/* The Redis store by hand (no library queue in front of it), configured
 * for a queue of its own on the test's server. */
typedef struct bare_store {
  spi_replay_store_module m;
  void *state, *inst;
  spi_module_destroy_fn destroy;
} bare_store;

static void bare_open(bare_store *b, const char *prefix) {
  memset(b, 0, sizeof *b);
  assert_int_equal(spi_redis_get_module(SPI_MODULE_REPLAY_STORE,
                                        SPI_REDIS_STORE_NAME, &b->m,
                                        sizeof b->m, &b->state, &b->destroy),
                   SPI_OK);
  char json[512], err[256] = "";
  snprintf(json, sizeof json,
           "{\"address\":\"127.0.0.1:%s\",\"key_prefix\":\"%s:%ld:\"}",
           getenv("SPI_REDIS_PORT"), prefix, (long)getpid());
  int rc = b->m.configure(b->state, json, strlen(json), &b->inst, err,
                          sizeof err);
  if (rc != SPI_OK) print_error("configure: %s\n", err);
  assert_int_equal(rc, SPI_OK);
}

static void bare_close(bare_store *b) {
  b->m.release(b->state, b->inst);
  if (b->destroy) b->destroy(b->state);
}

/* A call's context; max_bytes 4096 (claims: the table's bound is 1024). */
static spi_replay_ctx bare_ctx(int64_t now_ns, int64_t lease_ms) {
  spi_replay_ctx c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  c.now_ns = now_ns;
  c.lease_ms = lease_ms;
  c.max_attempts = 5;
  c.max_bytes = 4096;
  c.max_acked_keys = 1000;
  c.max_dead = 1000;
  return c;
}

static int bare_take(void *ud, const spi_envelope *env) {
  (void)ud, (void)env;
  return SPI_OK;
}

static uint64_t bare_claim(bare_store *b, const spi_replay_ctx *ctx) {
  char err[256] = "";
  uint64_t id = 0;
  int rc = b->m.claim(b->state, b->inst, ctx, 0xe, bare_take, NULL, &id, err,
                      sizeof err);
  if (rc != SPI_OK) print_error("claim: %s\n", err);
  assert_int_equal(rc, SPI_OK);
  assert_true(id != 0);
  return id;
}

static void bare_enqueue(bare_store *b, const spi_replay_ctx *ctx, int n) {
  for (int i = 0; i < n; i++) {
    char key[32], err[256] = "";
    snprintf(key, sizeof key, "h%d", i);
    spi_envelope v = env_of(key);
    int32_t dup = 0;
    assert_int_equal(b->m.enqueue(b->state, b->inst, ctx, &v, &dup, err,
                                  sizeof err),
                     SPI_OK);
  }
}

/* The store forgets a claim neither acked nor nacked its lease length after
 * the lease ended (at least 1 s), on the next claim or tick, instead of
 * keeping it for ever; it holds at most max(1024, max_bytes / the size of
 * one). A forgotten claim's ack is SPI_ESTALE ("not held here"). */
static void test_claims_forgotten(void **st) {
  (void)st;
  if (!getenv("SPI_REDIS_PORT")) skip();
  bare_store b;
  bare_open(&b, "forget");
  int64_t t = 1700000000000LL * 1000000;
  spi_replay_ctx ctx = bare_ctx(t, 100);
  ctx.max_bytes = 1 << 20; /* room for them all */
  bare_enqueue(&b, &ctx, 1100);
  ctx.max_bytes = 4096;
  char err[256] = "";
  /* Abandoned, then forgotten by a tick past its lease and 1 s more. */
  uint64_t gone = bare_claim(&b, &ctx);
  ctx = bare_ctx(t + 1101 * 1000000LL, 100);
  assert_int_equal(b.m.tick(b.state, b.inst, &ctx, err, sizeof err), SPI_OK);
  assert_int_equal(b.m.ack(b.state, b.inst, &ctx, gone, err, sizeof err),
                   SPI_ESTALE);
  assert_non_null(strstr(err, "not held here"));
  /* Within its time, the ack is done. */
  uint64_t id = bare_claim(&b, &ctx);
  ctx = bare_ctx(t + 1150 * 1000000LL, 100);
  assert_int_equal(b.m.ack(b.state, b.inst, &ctx, id, err, sizeof err),
                   SPI_OK);
  /* 1,024 at most (max_bytes / an entry is less): the first of 1,050
   * claims, its lease still running, is forgotten. */
  ctx = bare_ctx(t + 1200 * 1000000LL, 600000);
  uint64_t first = bare_claim(&b, &ctx), last = 0;
  for (int i = 1; i < 1050; i++) last = bare_claim(&b, &ctx);
  err[0] = '\0';
  assert_int_equal(b.m.ack(b.state, b.inst, &ctx, first, err, sizeof err),
                   SPI_ESTALE);
  assert_non_null(strstr(err, "not held here"));
  assert_int_equal(b.m.ack(b.state, b.inst, &ctx, last, err, sizeof err),
                   SPI_OK);
  bare_close(&b);
}


static void test_module_structs(void **st) {
  (void)st;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  /* A record store as built before queue stores: its struct ends where the
   * queue callbacks begin. */
  spi_replay_store_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = (uint32_t)offsetof(spi_replay_store_module, enqueue);
  m.configure = x_configure;
  m.release = x_release;
  m.recover = x_recover;
  m.append = x_append;
  m.sync = x_sync;
  m.stats = x_stats;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_REPLAY_STORE,
                                              "old", 3, &m, NULL, NULL),
                   SPI_OK);
  m.struct_size = (uint32_t)offsetof(spi_replay_store_module, enqueue) - 8;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_REPLAY_STORE,
                                              "short", 5, &m, NULL, NULL),
                   SPI_EABI);
  /* The Redis store by hand, under a name of its own. */
  spi_replay_store_module r;
  void *state = NULL;
  spi_module_destroy_fn destroy = NULL;
  assert_int_equal(spi_redis_get_module(SPI_MODULE_REPLAY_STORE,
                                        SPI_REDIS_STORE_NAME, &r, sizeof r,
                                        &state, &destroy),
                   SPI_OK);
  assert_int_equal(spi_redis_get_module(SPI_MODULE_REPLAY_STORE, "nosuch", &r,
                                        sizeof r, &state, &destroy),
                   SPI_ENOTFOUND);
  assert_int_equal(spi_redis_get_module(SPI_MODULE_REPLAY_STORE,
                                        SPI_REDIS_STORE_NAME, &r, 8, &state,
                                        &destroy),
                   SPI_EABI);
  assert_int_equal(spi_redis_get_module(SPI_MODULE_REPLAY_STORE,
                                        SPI_REDIS_STORE_NAME, &r, sizeof r,
                                        &state, &destroy),
                   SPI_OK);
  /* A queue store must have every queue callback. */
  spi_replay_store_module bad = r;
  bad.ack = NULL;
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_REPLAY_STORE,
                                              "bad", 3, &bad, state, destroy),
                   SPI_EINVAL);
  assert_int_equal(spi_engine_register_module(e, SPI_MODULE_REPLAY_STORE,
                                              "shared", 6, &r, state, destroy),
                   SPI_OK);
  spi_replay_queue *q = NULL;
  assert_int_equal(open_q(e,
                          "{\"store\":\"shared\",\"store_config\":{\"address\":"
                          "\"127.0.0.1:1\"}}",
                          &q),
                   SPI_OK);
  spi_replay_close(q);
  spi_engine_free(e);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_loaded_by_configuration),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_unreachable),
      cmocka_unit_test(test_fallback_moves_once),
      cmocka_unit_test_setup_teardown(test_one_deadline_per_call, rp_setup,
                                      rp_teardown),
      cmocka_unit_test_setup_teardown(test_finish_after_lost_reply, rp_setup,
                                      rp_teardown),
      cmocka_unit_test_setup_teardown(test_slow_reconnect_with_auth_and_db,
                                      rp_setup, rp_teardown),
      cmocka_unit_test(test_claim_dead_letters_what_cannot_be_taken),
      cmocka_unit_test(test_claim_dead_letters_malformed_entries),
      cmocka_unit_test(test_claim_gives_back_a_later_format),
      cmocka_unit_test(test_dead_letter_says_why),
      cmocka_unit_test_setup_teardown(test_finished_bounded, rp_setup,
                                      rp_teardown),
      cmocka_unit_test(test_idle_consumers_removed),
      cmocka_unit_test(test_claims_forgotten),
      cmocka_unit_test(test_module_structs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
