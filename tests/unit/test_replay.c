/*
 * test_replay.c - the replay queue on the memory store and a fake clock:
 * (With SPI_REPLAY_TEST_STORE=redis and SPI_REDIS_PORT, the same bodies run
 * on the "redis" queue store of libspotinfer_redis instead: every memory
 * store a test opens becomes a Redis one on a fresh key prefix; the few
 * tests about the memory store itself or the local queue's allocations
 * skip. tests/redis runs it that way.)
 * configuration, the round trip of an envelope, lanes and FIFO order,
 * leases, backoff values, dead-letters, duplicates, claim buffers, memory
 * bounds, argument checks, allocation failures, a user store module, queue
 * stores (the fallback drain, a claimed envelope the library refuses), and
 * threads enqueueing, claiming and acking at once.
 */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "engine.h"
#include "replay.h"
#include "replay_helpers.h"

#define NOTHING_READY RQ_NOTHING_READY
#define MS 1000000LL
#define T0 (1700000000LL * 1000000000LL)

/* ---------------------------------------------------------------- helpers */

typedef struct fixture {
  rq_hooks h; /* the engine's clock and allocator */
  spi_engine *e;
  spi_replay_queue *q;
  int logged_dead;
} fixture;

static void f_log(void *ud, int32_t level, const char *msg, size_t len) {
  fixture *f = ud;
  (void)level;
  if (len && strstr(msg, "dead-lettered")) f->logged_dead++;
}

static fixture *setup_engine(void) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->h.now = T0;
  f->h.fail_at = -1;
  spi_hooks h = rq_hooks_of(&f->h);
  h.log = f_log;
  h.log_user_data = f;
  h.log_level = SPI_LOG_DEBUG;
  assert_int_equal(spi_engine_new(&f->e, &h), SPI_OK);
  return f;
}

/* ------------------------------------------------- the store under test */

static int redis_mode(void) {
  const char *s = getenv("SPI_REPLAY_TEST_STORE");
  return s && strcmp(s, "redis") == 0;
}

/* Tests about the memory store or the local queue's own memory. */
#define LOCAL_ONLY()                                                           \
  do {                                                                         \
    if (redis_mode()) skip();                                                  \
  } while (0)

/* json, or under redis_mode() its memory store made a Redis one with a key
 * prefix of its own. Free with free(). */
static char *store_json(const char *json) {
  cJSON *o = redis_mode() ? cJSON_Parse(json) : NULL;
  const cJSON *st = o ? cJSON_GetObjectItemCaseSensitive(o, "store") : NULL;
  if (!o || !cJSON_IsString(st) || strcmp(st->valuestring, "memory") != 0) {
    cJSON_Delete(o);
    return strdup(json);
  }
  static int opened;
  char sc[256];
  snprintf(sc, sizeof sc,
           "{\"address\":\"127.0.0.1:%s\",\"key_prefix\":"
           "\"spitest:%ld:%d:\"}",
           getenv("SPI_REDIS_PORT"), (long)getpid(), opened++);
  cJSON_DeleteItemFromObjectCaseSensitive(o, "store");
  cJSON_AddStringToObject(o, "store", "redis");
  cJSON_AddItemToObject(o, "store_config", cJSON_Parse(sc));
  char *out = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  char *copy = strdup(out);
  cJSON_free(out);
  return copy;
}

static int open_q(fixture *f, const char *json) {
  char *j = store_json(json);
  assert_non_null(j);
  int rc = spi_replay_open(f->e, j, strlen(j), &f->q);
  free(j);
  return rc;
}

static fixture *setup(const char *json) {
  fixture *f = setup_engine();
  int rc = open_q(f, json);
  if (rc != SPI_OK) print_error("open: %s\n", spi_engine_errmsg(f->e));
  assert_int_equal(rc, SPI_OK);
  return f;
}

static void teardown(fixture *f) {
  spi_replay_close(f->q);
  spi_engine_free(f->e);
  assert_int_equal(f->h.allocs, f->h.frees);
  free(f);
}

static spi_envelope env_of(const char *key, int32_t klass) {
  return rq_envelope(
      key, klass,
      "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
}

static void enqueue(fixture *f, const char *key, int32_t klass) {
  spi_envelope v = env_of(key, klass);
  rq_enqueue(f->q, &v);
}

static int is_dup(fixture *f, const char *key) {
  spi_envelope v = env_of(key, SPI_CLASS_SILVER);
  return rq_is_dup(f->q, &v);
}

typedef rq_claimed claimed;

/* Claim from mask; returns the status, fills c. */
static int claim(fixture *f, uint32_t mask, int64_t lease_ms, claimed *c) {
  return rq_claim(f->q, mask, lease_ms, c);
}

static void claim_ok(fixture *f, uint32_t mask, claimed *c) {
  int rc = claim(f, mask, 0, c);
  if (rc != SPI_OK) print_error("claim: %s\n", spi_replay_errmsg(f->q));
  assert_int_equal(rc, SPI_OK);
}

static spi_replay_stats stats(fixture *f) { return rq_stats(f->q); }

#define ALL RQ_ALL

/* ------------------------------------------------------------ configuration */

static void expect_open_error(const char *json, int status, const char *part) {
  fixture *f = setup_engine();
  int rc = open_q(f, json);
  if (rc != status || !strstr(spi_engine_errmsg(f->e), part))
    print_error("open %s: got %d \"%s\", want %d with \"%s\"\n", json, rc,
                spi_engine_errmsg(f->e), status, part);
  assert_int_equal(rc, status);
  assert_null(f->q);
  assert_non_null(strstr(spi_engine_errmsg(f->e), part));
  teardown(f);
}

/* JSON's whitespace is space, tab, LF and CR; cJSON would skip any byte
 * below 0x20. Before the configuration, between its tokens or after it,
 * such a byte is refused with its offset; inside a string it is read like
 * a letter (here: in an unknown key). */
static void test_open_control_bytes(void **st) {
  (void)st;
  LOCAL_ONLY();
  static const char json[] = "{\"store\":\"memory\"}";
  const size_t len = sizeof json - 1;
  const size_t at[] = {0, 9, len}; /* before, after the colon, after */
  static const char bytes[] = {'\x01', '\x1f', '\0'};
  char t[sizeof json + 1], want[96];
  for (size_t i = 0; i < 3; i++) {
    for (size_t k = 0; k < sizeof bytes; k++) {
      memcpy(t, json, at[i]);
      t[at[i]] = bytes[k];
      memcpy(t + at[i] + 1, json + at[i], len - at[i]);
      if (bytes[k] == 0)
        snprintf(want, sizeof want, "replay: NUL byte at offset %zu", at[i]);
      else
        snprintf(want, sizeof want,
                 "replay: control byte 0x%02x at byte offset %zu",
                 (unsigned)bytes[k], at[i]);
      fixture *f = setup_engine();
      int rc = spi_replay_open(f->e, t, len + 1, &f->q);
      if (rc != SPI_EPARSE || strcmp(spi_engine_errmsg(f->e), want) != 0)
        fail_msg("%d \"%s\", want \"%s\"", rc, spi_engine_errmsg(f->e),
                 want);
      assert_null(f->q);
      teardown(f);
    }
  }
  expect_open_error("{\"store\":\"memory\",\"bo\x01gus\":1}", SPI_EUNKNOWN,
                    "replay.bo\x01gus");
}

static void test_open_errors(void **st) {
  (void)st;
  LOCAL_ONLY();
  expect_open_error("{\"store\":\"memory\",\"bogus\":1}", SPI_EUNKNOWN,
                    "replay.bogus");
  expect_open_error("{\"store\":\"memory\",\"lease_ms\":0}", SPI_ERANGE,
                    "replay.lease_ms");
  expect_open_error("{\"store\":\"memory\",\"lease_ms\":\"5\"}", SPI_ETYPE,
                    "replay.lease_ms");
  expect_open_error("{\"store\":\"nope\"}", SPI_ENOTFOUND, "replay.store");
  expect_open_error("{\"store\":\"memory\",\"fsync\":\"sometimes\"}",
                    SPI_EUNKNOWN, "replay.fsync");
  expect_open_error("{\"store\":\"journal\"}", SPI_EINVAL, "replay.dir");
  expect_open_error("{\"store\":\"memory\",\"backoff_base_ms\":500,"
                    "\"backoff_max_ms\":100}",
                    SPI_ERANGE, "replay.backoff_max_ms");
  expect_open_error("{\"store\":\"memory\",\"store_config\":3}", SPI_ETYPE,
                    "replay.store_config");
  expect_open_error("[1]", SPI_ETYPE, "replay");
  expect_open_error("{\"store\":", SPI_EPARSE, "replay");

  fixture *f = setup_engine();
  spi_replay_queue *q = (spi_replay_queue *)1;
  assert_int_equal(spi_replay_open(f->e, NULL, 3, &q), SPI_EINVAL);
  assert_null(q);
  assert_int_equal(spi_replay_open(NULL, "{}", 2, &q), SPI_EMISUSE);
  assert_int_equal(spi_replay_open(f->e, "{}", 2, NULL), SPI_EINVAL);
  teardown(f);
}

/* The engine's "replay" section gives every queue its defaults. */
static void test_engine_section_defaults(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup_engine();
  const char *cfg = "{\"replay\":{\"store\":\"memory\",\"lease_ms\":50}}";
  assert_int_equal(spi_engine_configure(f->e, cfg, strlen(cfg)), SPI_OK);
  /* Bad values in the engine's section are refused with their path. */
  const char *bad = "{\"replay\":{\"max_attempts\":0}}";
  assert_int_equal(spi_engine_configure(f->e, bad, strlen(bad)), SPI_ERANGE);
  assert_non_null(strstr(spi_engine_errmsg(f->e), "replay.max_attempts"));
  bad = "{\"replay\":{\"store\":\"nosuch\"}}";
  assert_int_equal(spi_engine_configure(f->e, bad, strlen(bad)), SPI_ENOTFOUND);
  /* NULL config: the engine's section as is. */
  assert_int_equal(spi_replay_open(f->e, NULL, 0, &f->q), SPI_OK);
  enqueue(f, "a", SPI_CLASS_GOLD);
  claimed c;
  claim_ok(f, ALL, &c);
  f->h.now += 50 * MS; /* the engine's lease_ms */
  assert_int_equal(stats(f).expired_leases, 1);
  spi_replay_close(f->q);
  /* The open's JSON overrides key by key. */
  assert_int_equal(open_q(f, "{\"lease_ms\":1000}"), SPI_OK);
  enqueue(f, "a", SPI_CLASS_GOLD);
  claim_ok(f, ALL, &c);
  f->h.now += 50 * MS;
  assert_int_equal(stats(f).expired_leases, 0);
  f->h.now += 950 * MS;
  assert_int_equal(stats(f).expired_leases, 1);
  /* The effective configuration lists the replay defaults. */
  size_t need = 0;
  assert_int_equal(spi_engine_config_json(f->e, NULL, 0, &need), SPI_EBUFSIZE);
  char *buf = malloc(need + 1);
  assert_non_null(buf);
  assert_int_equal(spi_engine_config_json(f->e, buf, need + 1, &need), SPI_OK);
  assert_non_null(strstr(buf, "\"max_acked_keys\":65536"));
  free(buf);
  teardown(f);
}

/* -------------------------------------------------------------- round trip */

static void test_round_trip(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\"}");
  static const uint32_t toks[] = {1, 2, 4294967295u};
  spi_envelope v = env_of("req-1", SPI_CLASS_SILVER);
  v.openai_kind = SPI_OPENAI_CHAT;
  v.partial_text = "Once upon";
  v.partial_text_len = 9;
  v.partial_tokens = toks;
  v.partial_token_count = 3;
  v.stream_offset = 3;
  v.attempts = 1;
  v.flags = SPI_ENVELOPE_FROM_SCRATCH;
  v.deadline_ns = T0 + 60000 * MS;
  strcpy(v.tenant, "acme");
  int32_t dup = -1;
  assert_int_equal(spi_replay_enqueue(f->q, &v, &dup), SPI_OK);
  assert_int_equal(dup, 0);
  assert_int_equal(stats(f).ready[SPI_CLASS_SILVER], 1);
  claimed c;
  claim_ok(f, ALL, &c);
  assert_true(c.id != 0);
  assert_int_equal(c.env.struct_size, sizeof c.env);
  assert_string_equal(c.key, "req-1");
  assert_int_equal(c.env.body_len, v.body_len);
  assert_memory_equal(c.env.body, v.body, v.body_len);
  assert_int_equal(c.env.body[c.env.body_len], '\0');
  assert_int_equal(c.env.partial_text_len, 9);
  assert_memory_equal(c.env.partial_text, "Once upon", 9);
  assert_int_equal(c.env.partial_token_count, 3);
  assert_int_equal(((uintptr_t)c.env.partial_tokens) % 4, 0);
  assert_memory_equal(c.env.partial_tokens, toks, sizeof toks);
  assert_int_equal(c.env.stream_offset, 3);
  assert_int_equal(c.env.attempts, 1);
  assert_int_equal(c.env.flags, SPI_ENVELOPE_FROM_SCRATCH);
  assert_int_equal(c.env.openai_kind, SPI_OPENAI_CHAT);
  assert_int_equal(c.env.klass, SPI_CLASS_SILVER);
  assert_int_equal(c.env.first_enqueued_ns, T0); /* 0 became now */
  assert_int_equal(c.env.deadline_ns, T0 + 60000 * MS);
  assert_string_equal(c.env.tenant, "acme");
  spi_replay_stats s = stats(f);
  assert_int_equal(s.ready[SPI_CLASS_SILVER], 0);
  assert_int_equal(s.leased, 1);
  assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
  assert_int_equal(spi_replay_ack(f->q, c.id), SPI_ESTALE);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "not held"));
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_ESTALE);
  assert_int_equal(claim(f, ALL, 0, &c), NOTHING_READY);
  s = stats(f);
  assert_int_equal(s.leased, 0);
  assert_int_equal(s.enqueued, 1);
  assert_int_equal(s.acked, 1);
  assert_int_equal(s.journal_bytes, 0);
  /* Given first_enqueued_ns is kept. */
  v.key = "req-2";
  v.key_len = 5;
  v.first_enqueued_ns = 12345;
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_OK);
  claim_ok(f, ALL, &c);
  assert_int_equal(c.env.first_enqueued_ns, 12345);
  teardown(f);
}

/* -------------------------------------------------------------- lanes */

static void test_lanes_and_fifo(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\"}");
  enqueue(f, "b1", SPI_CLASS_BRONZE);
  enqueue(f, "s1", SPI_CLASS_SILVER);
  enqueue(f, "g1", SPI_CLASS_GOLD);
  enqueue(f, "b2", SPI_CLASS_BRONZE);
  enqueue(f, "g2", SPI_CLASS_GOLD);
  enqueue(f, "s2", SPI_CLASS_SILVER);
  spi_replay_stats s = stats(f);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 2);
  assert_int_equal(s.ready[SPI_CLASS_SILVER], 2);
  assert_int_equal(s.ready[SPI_CLASS_BRONZE], 2);
  assert_int_equal(s.ready[0], 0);
  claimed c;
  /* One lane only: FIFO inside it. */
  claim_ok(f, 1u << SPI_CLASS_BRONZE, &c);
  assert_string_equal(c.key, "b1");
  /* Silver and bronze: silver first. */
  claim_ok(f, (1u << SPI_CLASS_SILVER) | (1u << SPI_CLASS_BRONZE), &c);
  assert_string_equal(c.key, "s1");
  static const char *const order[] = {"g1", "g2", "s2", "b2"};
  for (int i = 0; i < 4; i++) {
    claim_ok(f, ALL, &c);
    assert_string_equal(c.key, order[i]);
  }
  assert_int_equal(claim(f, ALL, 0, &c), NOTHING_READY);
  assert_int_equal(stats(f).leased, 6);
  /* A gold lane that is empty does not block the others. */
  enqueue(f, "b3", SPI_CLASS_BRONZE);
  assert_int_equal(claim(f, 1u << SPI_CLASS_GOLD, 0, &c), NOTHING_READY);
  claim_ok(f, ALL, &c);
  assert_string_equal(c.key, "b3");
  teardown(f);
}

/* -------------------------------------------------------------- leases */

static void test_lease_expiry(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\",\"lease_ms\":1000}");
  enqueue(f, "a", SPI_CLASS_GOLD);
  enqueue(f, "b", SPI_CLASS_GOLD);
  claimed c1, c2;
  assert_int_equal(claim(f, ALL, 100, &c1), SPI_OK);
  assert_int_equal(claim(f, ALL, 0, &c2), SPI_OK); /* replay.lease_ms */
  assert_string_equal(c1.key, "a");
  f->h.now += 99 * MS;
  spi_replay_stats s = stats(f);
  assert_int_equal(s.leased, 2);
  assert_int_equal(s.expired_leases, 0);
  f->h.now += 1 * MS; /* a's lease ends now */
  s = stats(f);
  assert_int_equal(s.leased, 1);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 1);
  assert_int_equal(s.expired_leases, 1);
  /* Acking a lost lease fails; a new claim sees the attempt counted. */
  assert_int_equal(spi_replay_ack(f->q, c1.id), SPI_ESTALE);
  claimed c3;
  claim_ok(f, ALL, &c3);
  assert_string_equal(c3.key, "a");
  assert_int_equal(c3.env.attempts, 1);
  assert_true(c3.id != c1.id);
  /* b's lease runs to 1000 ms. */
  f->h.now += 899 * MS;
  assert_int_equal(spi_replay_ack(f->q, c2.id), SPI_OK);
  f->h.now += 2000 * MS;
  s = stats(f);
  assert_int_equal(s.expired_leases, 2);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 1);
  /* tick runs the same periodic work. */
  claim_ok(f, ALL, &c3);
  f->h.now += 1000 * MS;
  assert_int_equal(spi_replay_tick(f->q), SPI_OK);
  s = stats(f);
  assert_int_equal(s.expired_leases, 3);
  teardown(f);
}

/* -------------------------------------------------------------- backoff */

static void test_backoff_values(void **st) {
  (void)st;
  /* Without jitter: base doubling up to the cap. */
  static const int64_t want[] = {100, 200, 400, 800, 1000, 1000, 1000};
  for (uint32_t a = 1; a <= 7; a++)
    assert_int_equal(spi__replay_backoff_ms("k", 1, a, 100, 1000, 0),
                     want[a - 1]);
  assert_int_equal(spi__replay_backoff_ms("k", 1, 0, 100, 1000, 0), 100);
  assert_int_equal(spi__replay_backoff_ms("k", 1, 4000000000u, 100, 1000, 0),
                   1000);
  /* With jitter: within [d (1 - j), d], reproducible, spread over keys. */
  int64_t first = -1;
  int differ = 0;
  for (int i = 0; i < 64; i++) {
    char key[16];
    snprintf(key, sizeof key, "key-%d", i);
    for (uint32_t a = 1; a <= 5; a++) {
      int64_t d = want[a - 1];
      int64_t v = spi__replay_backoff_ms(key, strlen(key), a, 100, 1000, 0.5);
      assert_int_equal(
          v, spi__replay_backoff_ms(key, strlen(key), a, 100, 1000, 0.5));
      assert_true(v <= d && v >= d / 2);
      if (a == 1) {
        if (first >= 0 && v != first) differ = 1;
        first = v;
      }
    }
  }
  assert_true(differ);
  /* The jitter depends on the attempt too. */
  int attempts_differ = 0;
  for (uint32_t a = 5; a <= 12; a++)
    if (spi__replay_backoff_ms("x", 1, a, 100, 1000, 1) !=
        spi__replay_backoff_ms("x", 1, 5, 100, 1000, 1))
      attempts_differ = 1;
  assert_true(attempts_differ);

  /* The queue applies exactly that delay on its fake clock. */
  fixture *f = setup("{\"store\":\"memory\",\"backoff_base_ms\":100,"
                     "\"backoff_max_ms\":1000,\"backoff_jitter\":0.5,"
                     "\"max_attempts\":10}");
  enqueue(f, "job", SPI_CLASS_SILVER);
  claimed c;
  for (uint32_t a = 1; a <= 5; a++) {
    claim_ok(f, ALL, &c);
    assert_int_equal(c.env.attempts, a - 1);
    assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
    int64_t d = spi__replay_backoff_ms("job", 3, a, 100, 1000, 0.5);
    spi_replay_stats s = stats(f);
    assert_int_equal(s.delayed, 1);
    assert_int_equal(s.nacked, a);
    f->h.now += d * MS - 1;
    assert_int_equal(claim(f, ALL, 0, &c), NOTHING_READY);
    f->h.now += 1;
    assert_int_equal(stats(f).delayed, 0);
  }
  teardown(f);
}

/* -------------------------------------------------------------- dead letters
 */

static void test_dead_letter(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\",\"max_attempts\":3,"
                     "\"backoff_base_ms\":10,\"backoff_max_ms\":10,"
                     "\"lease_ms\":100}");
  enqueue(f, "poison", SPI_CLASS_GOLD);
  claimed c;
  /* nack, expired lease, nack: three failed attempts. */
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  f->h.now += 10 * MS;
  claim_ok(f, ALL, &c);
  f->h.now += 100 * MS;
  claim_ok(f, ALL, &c);
  assert_int_equal(c.env.attempts, 2);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  spi_replay_stats s = stats(f);
  assert_int_equal(s.dead, 1);
  assert_int_equal(s.delayed, 0);
  assert_int_equal(s.ready[SPI_CLASS_GOLD], 0);
  assert_int_equal(f->logged_dead, 1);
  assert_int_equal(claim(f, ALL, 0, &c), NOTHING_READY);
  assert_int_equal(is_dup(f, "poison"), 1);

  /* Past the deadline: dead at claim time, and at nack time. */
  spi_envelope v = env_of("late", SPI_CLASS_GOLD);
  v.deadline_ns = f->h.now + 1000 * MS;
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_OK);
  f->h.now += 1000 * MS;
  assert_int_equal(claim(f, ALL, 0, &c), NOTHING_READY);
  assert_int_equal(stats(f).dead, 2);
  v = env_of("late2", SPI_CLASS_GOLD);
  v.deadline_ns = f->h.now + 50 * MS;
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_OK);
  claim_ok(f, ALL, &c);
  f->h.now += 50 * MS;
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(stats(f).dead, 3);
  /* A backoff that ends after the deadline ends in the dead-letter. */
  v = env_of("late3", SPI_CLASS_GOLD);
  v.deadline_ns = f->h.now + 5 * MS;
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_OK);
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(stats(f).delayed, 1);
  f->h.now += 10 * MS;
  s = stats(f);
  assert_int_equal(s.delayed, 0);
  assert_int_equal(s.dead, 4);
  teardown(f);
}

/* Only replay.max_dead dead-letters are kept; older ones keep their key. */
static void test_max_dead(void **st) {
  (void)st;
  fixture *f =
      setup("{\"store\":\"memory\",\"max_attempts\":1,\"max_dead\":1}");
  enqueue(f, "d1", SPI_CLASS_GOLD);
  enqueue(f, "d2", SPI_CLASS_GOLD);
  claimed c;
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(stats(f).dead, 1);
  assert_int_equal(is_dup(f, "d1"), 1);
  assert_int_equal(is_dup(f, "d2"), 1);
  teardown(f);
}

/* -------------------------------------------------------------- duplicates */

static void test_duplicates(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\",\"max_acked_keys\":2,"
                     "\"max_attempts\":1}");
  enqueue(f, "queued", SPI_CLASS_GOLD);
  enqueue(f, "leased", SPI_CLASS_SILVER);
  enqueue(f, "delayed", SPI_CLASS_BRONZE);
  claimed c, cl;
  claim_ok(f, 1u << SPI_CLASS_SILVER, &cl);
  assert_string_equal(cl.key, "leased");
  /* queued, leased */
  assert_int_equal(is_dup(f, "queued"), 1);
  assert_int_equal(is_dup(f, "leased"), 1);
  spi_replay_close(f->q);
  f->q = NULL;
  assert_int_equal(open_q(f, "{\"store\":\"memory\",\"max_acked_keys\":2,"
                             "\"max_attempts\":2}"),
                   SPI_OK);
  enqueue(f, "delayed", SPI_CLASS_BRONZE);
  enqueue(f, "dead", SPI_CLASS_BRONZE);
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(is_dup(f, "delayed"), 1);
  assert_int_equal(stats(f).delayed, 1);
  claim_ok(f, ALL, &c);
  assert_string_equal(c.key, "dead");
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  f->h.now += 100000 * MS;
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(stats(f).dead, 2);
  assert_int_equal(is_dup(f, "dead"), 1);
  /* Acked keys are remembered, up to max_acked_keys. */
  enqueue(f, "k1", SPI_CLASS_GOLD);
  enqueue(f, "k2", SPI_CLASS_GOLD);
  enqueue(f, "k3", SPI_CLASS_GOLD);
  for (int i = 0; i < 3; i++) {
    claim_ok(f, ALL, &c);
    assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
  }
  assert_int_equal(is_dup(f, "k3"), 1);
  assert_int_equal(is_dup(f, "k2"), 1);
  spi_replay_stats s = stats(f);
  assert_int_equal(s.duplicates, 4);
  /* k1 is the oldest and was forgotten: enqueued anew. */
  assert_int_equal(is_dup(f, "k1"), 0);
  assert_int_equal(stats(f).ready[SPI_CLASS_SILVER], 1);
  teardown(f);
}

/* -------------------------------------------------------------- buffers */

static void test_claim_buffer(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\"}");
  static const uint32_t toks[] = {7, 8, 9, 10, 11};
  spi_envelope v = env_of("buf", SPI_CLASS_GOLD);
  v.partial_text = "abc";
  v.partial_text_len = 3;
  v.partial_tokens = toks;
  v.partial_token_count = 5;
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_OK);
  spi_envelope out;
  memset(&out, 0, sizeof out);
  out.struct_size = sizeof out;
  uint64_t id = 0;
  size_t need = 0;
  assert_int_equal(spi_replay_claim(f->q, ALL, 0, &id, &out, NULL, 0, &need),
                   SPI_EBUFSIZE);
  size_t want = 3 + 1 + v.body_len + 1 + 3 + 1 + 3 + 4 * 5;
  assert_int_equal(need, want);
  uint8_t *buf = malloc(need + 1);
  assert_non_null(buf);
  assert_int_equal(
      spi_replay_claim(f->q, ALL, 0, &id, &out, buf, need - 1, &need),
      SPI_EBUFSIZE);
  /* Nothing was claimed. */
  assert_int_equal(stats(f).ready[SPI_CLASS_GOLD], 1);
  assert_int_equal(stats(f).leased, 0);
  /* Any alignment of the buffer works with the size reported. */
  assert_int_equal(
      spi_replay_claim(f->q, ALL, 0, &id, &out, buf + 1, need, NULL), SPI_OK);
  assert_int_equal(((uintptr_t)out.partial_tokens) % 4, 0);
  assert_memory_equal(out.partial_tokens, toks, sizeof toks);
  assert_memory_equal(out.key, "buf", 4);
  assert_memory_equal(out.partial_text, "abc", 4);
  assert_memory_equal(out.body, v.body, v.body_len + 1);
  assert_true((uint8_t *)out.key >= buf + 1 &&
              (uint8_t *)out.body < buf + 1 + need);
  free(buf);
  teardown(f);
}

/* -------------------------------------------------------------- bounds */

static void test_bounded_memory(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\",\"max_bytes\":8192,"
                     "\"max_envelope_bytes\":2000}");
  char key[32];
  int n = 0;
  for (;; n++) {
    snprintf(key, sizeof key, "k%d", n);
    spi_envelope v = env_of(key, SPI_CLASS_BRONZE);
    int rc = spi_replay_enqueue(f->q, &v, NULL);
    if (rc == SPI_EFULL) break;
    assert_int_equal(rc, SPI_OK);
    assert_true(n < 1000);
  }
  assert_true(n > 5);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "replay.max_bytes"));
  assert_int_equal(stats(f).ready[SPI_CLASS_BRONZE], (uint64_t)n);
  /* Acking frees room. */
  claimed c;
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
  spi_envelope v = env_of(key, SPI_CLASS_BRONZE);
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_OK);
  /* Over max_envelope_bytes. */
  char *big = malloc(3000);
  assert_non_null(big);
  memset(big, 'x', 3000);
  v = env_of("big", SPI_CLASS_GOLD);
  v.partial_text = big;
  v.partial_text_len = 3000;
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_ETOOBIG);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "replay.max_envelope_bytes"));
  free(big);
  teardown(f);
}

/* -------------------------------------------------------------- arguments */

static void test_arguments(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\"}");
  spi_envelope v = env_of("a", SPI_CLASS_GOLD);
  assert_int_equal(spi_replay_enqueue(NULL, &v, NULL), SPI_EMISUSE);
  assert_int_equal(spi_replay_enqueue(f->q, NULL, NULL), SPI_EINVAL);
  spi_envelope b = v;
  b.struct_size = 8;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  b.key_len = 0;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  char longkey[200];
  memset(longkey, 'k', sizeof longkey);
  b = v;
  b.key = longkey;
  b.key_len = 129;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b.key_len = 128;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_OK);
  b = v;
  b.body = NULL;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  b.klass = SPI_CLASS_UNSET;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b.klass = 4;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  b.openai_kind = 3;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  b.partial_text_len = 4;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  b.partial_token_count = 1;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  b.flags = 0x80;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  b.deadline_ns = -1;
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  b = v;
  memset(b.tenant, 'x', sizeof b.tenant);
  assert_int_equal(spi_replay_enqueue(f->q, &b, NULL), SPI_EINVAL);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "tenant"));

  spi_envelope out;
  memset(&out, 0, sizeof out);
  out.struct_size = sizeof out;
  uint64_t id;
  uint8_t buf[512];
  assert_int_equal(
      spi_replay_claim(NULL, ALL, 0, &id, &out, buf, sizeof buf, NULL),
      SPI_EMISUSE);
  assert_int_equal(
      spi_replay_claim(f->q, 0, 0, &id, &out, buf, sizeof buf, NULL),
      SPI_EINVAL);
  assert_int_equal(
      spi_replay_claim(f->q, 1, 0, &id, &out, buf, sizeof buf, NULL),
      SPI_EINVAL);
  assert_int_equal(
      spi_replay_claim(f->q, 1u << 4, 0, &id, &out, buf, sizeof buf, NULL),
      SPI_EINVAL);
  assert_int_equal(
      spi_replay_claim(f->q, ALL, -1, &id, &out, buf, sizeof buf, NULL),
      SPI_EINVAL);
  assert_int_equal(
      spi_replay_claim(f->q, ALL, 0, NULL, &out, buf, sizeof buf, NULL),
      SPI_EINVAL);
  assert_int_equal(spi_replay_claim(f->q, ALL, 0, &id, &out, NULL, 10, NULL),
                   SPI_EINVAL);
  out.struct_size = 0;
  assert_int_equal(
      spi_replay_claim(f->q, ALL, 0, &id, &out, buf, sizeof buf, NULL),
      SPI_EINVAL);
  assert_int_equal(spi_replay_ack(NULL, 1), SPI_EMISUSE);
  assert_int_equal(spi_replay_ack(f->q, 0), SPI_ESTALE);
  assert_int_equal(spi_replay_nack(f->q, 12345), SPI_ESTALE);
  assert_int_equal(spi_replay_tick(NULL), SPI_EMISUSE);
  spi_replay_stats s;
  memset(&s, 0, sizeof s);
  assert_int_equal(spi_replay_stats_get(f->q, &s), SPI_EINVAL);
  assert_int_equal(spi_replay_stats_get(NULL, &s), SPI_EMISUSE);
  assert_string_equal(spi_replay_errmsg(NULL), "invalid replay queue handle");
  spi_replay_close(NULL);
  teardown(f);
}

/* -------------------------------------------------------------- allocation */

/* Fail each allocation of an enqueue in turn: ENOMEM, nothing changes,
 * nothing leaks. */
static void test_alloc_failures(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup("{\"store\":\"memory\"}");
  int failed = 0;
  for (long n = 0; n < 64; n++) {
    char key[32];
    snprintf(key, sizeof key, "k%ld", n);
    spi_envelope v = env_of(key, SPI_CLASS_GOLD);
    uint64_t before = stats(f).ready[SPI_CLASS_GOLD];
    f->h.fail_at = f->h.allocs + n % 4;
    int rc = spi_replay_enqueue(f->q, &v, NULL);
    if (rc == SPI_ENOMEM) {
      failed++;
      assert_int_equal(stats(f).ready[SPI_CLASS_GOLD], before);
      assert_int_equal(is_dup(f, key), 0); /* it was not there */
    } else {
      assert_int_equal(rc, SPI_OK);
      assert_int_equal(stats(f).ready[SPI_CLASS_GOLD], before + 1);
    }
    f->h.fail_at = -1;
  }
  assert_true(failed > 0);
  /* Open itself, failing each allocation in turn. */
  for (long n = 0; n < 200; n++) {
    spi_replay_queue *q = NULL;
    f->h.fail_at = f->h.allocs + n;
    int rc = spi_replay_open(f->e, "{\"store\":\"memory\"}", 18, &q);
    int reached = f->h.fail_at == -1;
    f->h.fail_at = -1;
    if (rc == SPI_OK) {
      spi_replay_close(q);
      if (!reached) break;
      continue;
    }
    assert_int_equal(rc, SPI_ENOMEM);
    assert_null(q);
  }
  teardown(f);
}


/* cJSON's own allocations (the engine's snapshot is parsed with them), the
 * Nth one failed. The library never sets cJSON's hooks; this test does. */
static long cj_calls, cj_fail_at = -1;

static void *cj_malloc(size_t n) {
  if (cj_calls++ == cj_fail_at) return NULL;
  return malloc(n);
}

/* An allocation failure inside spi_replay_open either fails the open with
 * SPI_ENOMEM or opens with the engine's "replay" section; it never opens
 * with the defaults instead (before, most failure points did). */
static void test_open_keeps_engine_section(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup_engine();
  const char *cfg =
      "{\"replay\":{\"store\":\"memory\",\"max_envelope_bytes\":200}}";
  assert_int_equal(spi_engine_configure(f->e, cfg, strlen(cfg)), SPI_OK);
  static char big[400];
  memset(big, 'x', sizeof big - 1);
  cJSON_Hooks hooks = {cj_malloc, free};
  cJSON_InitHooks(&hooks);
  int opened = 0, failed = 0;
  for (long n = 0; n < 2000; n++) {
    cj_calls = 0;
    cj_fail_at = n;
    spi_replay_queue *q = NULL;
    int rc = spi_replay_open(f->e, NULL, 0, &q);
    long calls = cj_calls;
    cj_fail_at = -1;
    if (rc != SPI_OK) {
      assert_int_equal(rc, SPI_ENOMEM);
      assert_null(q);
      failed++;
      continue;
    }
    opened++;
    spi_envelope v = env_of("big", SPI_CLASS_GOLD);
    v.body = big;
    v.body_len = strlen(big);
    /* The engine's 200-byte bound holds (the default is far larger). */
    assert_int_equal(spi_replay_enqueue(q, &v, NULL), SPI_ETOOBIG);
    spi_replay_close(q);
    if (calls <= n) break; /* no allocation was failed: done */
  }
  cJSON_InitHooks(NULL);
  assert_true(failed > 0);
  assert_true(opened > 0);
  teardown(f);
}


/* Nothing ready is SPI_OK with claim id 0, needed 0, the envelope untouched
 * and no message: an idle worker's normal answer, not an error. */
static void test_empty_claim(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\"}");
  spi_envelope out;
  memset(&out, 0x5a, sizeof out);
  out.struct_size = sizeof out;
  spi_envelope before = out;
  uint64_t id = 77;
  size_t need = 99;
  uint8_t buf[64];
  assert_int_equal(
      spi_replay_claim(f->q, ALL, 0, &id, &out, buf, sizeof buf, &need),
      SPI_OK);
  assert_int_equal(id, 0);
  assert_int_equal(need, 0);
  assert_memory_equal(&out, &before, sizeof out);
  assert_string_equal(spi_replay_errmsg(f->q), "");
  /* Lanes without anything ready answer the same while another has one. */
  enqueue(f, "b", SPI_CLASS_BRONZE);
  assert_int_equal(spi_replay_claim(f->q, 1u << SPI_CLASS_GOLD, 0, &id, &out,
                                    buf, sizeof buf, NULL),
                   SPI_OK);
  assert_int_equal(id, 0);
  teardown(f);
}

/* -------------------------------------------------------------- user store */

/* A store kept in the test: records in an array, as a Redis Streams store
 * would keep them in a stream. */
typedef struct user_store {
  spi_replay_record recs[64];
  spi_envelope envs[64];
  char keys[64][129];
  char bodies[64][256];
  size_t n;
  int configured, released, fail_append;
  spi_replay_queue *q; /* to call back in from append */
  int reentry_status;
  char reentry_msg[256];
  char config[128];
} user_store;

static int us_configure(void *state, const char *json, size_t len, void **out,
                        char *err, size_t cap) {
  user_store *s = state;
  s->configured++;
  snprintf(s->config, sizeof s->config, "%.*s", (int)len, json);
  if (strstr(s->config, "\"fail\":true")) {
    snprintf(err, cap, "refused");
    return SPI_EIO;
  }
  *out = s;
  return SPI_OK;
}

static void us_release(void *state, void *inst) {
  (void)inst;
  ((user_store *)state)->released++;
}

static int us_recover(void *state, void *inst, spi_replay_record_fn fn,
                      void *user, char *err, size_t cap) {
  (void)inst;
  (void)err;
  (void)cap;
  user_store *s = state;
  for (size_t i = 0; i < s->n; i++) {
    int rc = fn(user, &s->recs[i]);
    if (rc != SPI_OK) return rc;
  }
  return SPI_OK;
}

static int us_append(void *state, void *inst, const spi_replay_record *rec,
                     uint64_t *seq, char *err, size_t cap) {
  (void)inst;
  user_store *s = state;
  if (s->q) {
    spi_replay_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    s->reentry_status = spi_replay_stats_get(s->q, &st);
    snprintf(s->reentry_msg, sizeof s->reentry_msg, "%s", spi_replay_errmsg(s->q));
  }
  if (s->fail_append) {
    snprintf(err, cap, "disk on fire");
    return SPI_EIO;
  }
  if (s->n == 64) return SPI_EFULL;
  size_t i = s->n++;
  s->recs[i] = *rec;
  memcpy(s->keys[i], rec->key, rec->key_len);
  s->keys[i][rec->key_len] = '\0';
  s->recs[i].key = s->keys[i];
  if (rec->envelope) {
    s->envs[i] = *rec->envelope;
    memcpy(s->bodies[i], rec->envelope->body, rec->envelope->body_len);
    s->envs[i].body = s->bodies[i];
    s->envs[i].key = s->keys[i];
    s->envs[i].partial_text = NULL;
    s->envs[i].partial_text_len = 0;
    s->envs[i].partial_tokens = NULL;
    s->envs[i].partial_token_count = 0;
    s->recs[i].envelope = &s->envs[i];
  }
  *seq = s->n;
  return SPI_OK;
}

static int us_sync(void *state, void *inst, uint64_t seq, char *err,
                   size_t cap) {
  (void)state;
  (void)inst;
  (void)seq;
  (void)err;
  (void)cap;
  return SPI_OK;
}

static int us_stats(void *state, void *inst, spi_replay_store_stats *out) {
  (void)inst;
  out->bytes = ((user_store *)state)->n;
  return SPI_OK;
}

static void test_user_store(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup_engine();
  user_store *s = calloc(1, sizeof *s);
  assert_non_null(s);
  spi_replay_store_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.configure = us_configure;
  m.release = us_release;
  m.recover = us_recover;
  m.append = us_append;
  m.sync = us_sync;
  m.stats = us_stats;
  spi_replay_store_module bad = m;
  bad.append = NULL;
  assert_int_equal(spi_engine_register_module(f->e, SPI_MODULE_REPLAY_STORE,
                                              "streams", 7, &bad, s, NULL),
                   SPI_EINVAL);
  bad = m;
  bad.struct_size = 16;
  assert_int_equal(spi_engine_register_module(f->e, SPI_MODULE_REPLAY_STORE,
                                              "streams", 7, &bad, s, NULL),
                   SPI_EABI);
  assert_int_equal(spi_engine_register_module(f->e, SPI_MODULE_REPLAY_STORE,
                                              "streams", 7, &m, s, NULL),
                   SPI_OK);
  const char *name = NULL;
  assert_int_equal(
      spi_engine_module_name(f->e, SPI_MODULE_REPLAY_STORE, 0, &name), SPI_OK);
  assert_string_equal(name, "journal");
  assert_int_equal(
      spi_engine_module_name(f->e, SPI_MODULE_REPLAY_STORE, 1, &name), SPI_OK);
  assert_string_equal(name, "memory");
  assert_int_equal(
      spi_engine_module_name(f->e, SPI_MODULE_REPLAY_STORE, 2, &name), SPI_OK);
  assert_string_equal(name, "streams");

  /* A user store's configure gets replay.store_config. */
  assert_int_equal(
      open_q(f, "{\"store\":\"streams\",\"store_config\":{\"fail\":true}}"),
      SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(f->e), "refused"));
  assert_int_equal(
      open_q(f, "{\"store\":\"streams\",\"store_config\":{\"url\":\"x\"}}"),
      SPI_OK);
  assert_string_equal(s->config, "{\"url\":\"x\"}");
  enqueue(f, "a", SPI_CLASS_GOLD);
  enqueue(f, "b", SPI_CLASS_SILVER);
  claimed c;
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
  claim_ok(f, ALL, &c);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(s->n, 4);
  assert_int_equal(s->recs[2].type, SPI_REPLAY_REC_ACK);
  assert_int_equal(s->recs[3].type, SPI_REPLAY_REC_NACK);
  assert_int_equal(s->recs[3].attempts, 1);
  assert_int_equal(stats(f).journal_bytes, 4);
  /* A failing append changes nothing and names the store. */
  s->fail_append = 1;
  spi_envelope v = env_of("c", SPI_CLASS_GOLD);
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_EIO);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "disk on fire"));
  s->fail_append = 0;
  assert_int_equal(is_dup(f, "c"), 0);
  /* Calling back into the queue from a store callback is refused. */
  s->q = f->q;
  enqueue(f, "d", SPI_CLASS_GOLD);
  assert_int_equal(s->reentry_status, SPI_EMISUSE);
  assert_non_null(strstr(s->reentry_msg, "own store callback"));
  s->q = NULL;
  spi_replay_close(f->q);
  assert_int_equal(s->released, 1);
  /* Recovery replays the records: a acked (duplicate), b delayed, c, d. */
  f->h.now += 3600000 * MS;
  assert_int_equal(open_q(f, "{\"store\":\"streams\"}"), SPI_OK);
  assert_int_equal(is_dup(f, "a"), 1);
  spi_replay_stats ss = stats(f);
  assert_int_equal(ss.ready[SPI_CLASS_SILVER], 2); /* b (backoff over), c */
  assert_int_equal(ss.ready[SPI_CLASS_GOLD], 1);   /* d */
  teardown(f);
  free(s);
}

/* ----------------------------------------- a queue store and its fallback */

/* A queue store that keeps the keys it took; down (SPI_EIO) while out is
 * set, and refusing the key "bad" for good (SPI_ETOOBIG). */
typedef struct fake_qstore {
  int out;
  char took[16][32];
  int n;
} fake_qstore;

static int fq_configure(void *state, const char *json, size_t len, void **inst,
                        char *err, size_t cap) {
  (void)json;
  (void)len;
  (void)err;
  (void)cap;
  *inst = state;
  return SPI_OK;
}

static void fq_release(void *state, void *inst) {
  (void)state;
  (void)inst;
}

static int fq_enqueue(void *state, void *inst, const spi_replay_ctx *ctx,
                      const spi_envelope *env, int32_t *dup, char *err,
                      size_t cap) {
  (void)inst;
  (void)ctx;
  fake_qstore *s = state;
  *dup = 0;
  if (s->out) return snprintf(err, cap, "down"), SPI_EIO;
  if (env->key_len == 3 && memcmp(env->key, "bad", 3) == 0)
    return snprintf(err, cap, "too big for this store"), SPI_ETOOBIG;
  if (s->n < 16)
    snprintf(s->took[s->n++], sizeof s->took[0], "%.*s", (int)env->key_len,
             env->key);
  return SPI_OK;
}

static int fq_claim(void *state, void *inst, const spi_replay_ctx *ctx,
                    uint32_t mask, spi_replay_envelope_fn fn, void *fn_data,
                    uint64_t *id, char *err, size_t cap) {
  (void)state, (void)inst, (void)ctx, (void)mask, (void)fn, (void)fn_data;
  (void)err, (void)cap;
  *id = 0; /* nothing ready: this test is about the drain */
  return SPI_OK;
}

static int fq_settle(void *state, void *inst, const spi_replay_ctx *ctx,
                     uint64_t id, char *err, size_t cap) {
  (void)state, (void)inst, (void)ctx, (void)id, (void)err, (void)cap;
  return SPI_ESTALE;
}

static int fq_nack(void *state, void *inst, const spi_replay_ctx *ctx,
                   uint64_t id, uint32_t attempts, int64_t visible, int32_t dead,
                   char *err, size_t cap) {
  (void)attempts, (void)visible, (void)dead;
  return fq_settle(state, inst, ctx, id, err, cap);
}

static int fq_stats(void *state, void *inst, const spi_replay_ctx *ctx,
                    spi_replay_stats *out, char *err, size_t cap) {
  (void)state, (void)inst, (void)ctx, (void)out, (void)err, (void)cap;
  return SPI_OK;
}

static int fq_rstats(void *state, void *inst, spi_replay_store_stats *out) {
  (void)state, (void)inst, (void)out;
  return SPI_OK;
}

/* Envelopes kept in the fallback journal while the store was down reach it
 * when it answers again; one the store refuses for good is dead-lettered in
 * the journal instead of stopping every envelope behind it. */
static void test_fallback_drain_past_a_refused_envelope(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup_engine();
  fake_qstore s;
  memset(&s, 0, sizeof s);
  spi_replay_store_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.configure = fq_configure;
  m.release = fq_release;
  m.enqueue = fq_enqueue;
  m.claim = fq_claim;
  m.ack = fq_settle;
  m.nack = fq_nack;
  m.queue_stats = fq_stats;
  m.stats = fq_rstats;
  assert_int_equal(spi_engine_register_module(f->e, SPI_MODULE_REPLAY_STORE,
                                              "fakeq", 5, &m, &s, NULL),
                   SPI_OK);
  char dir[256], json[512];
  rq_tmpdir(dir, sizeof dir, "fallback");
  snprintf(json, sizeof json,
           "{\"store\":\"fakeq\",\"fallback\":\"journal\",\"dir\":\"%s\"}", dir);
  assert_int_equal(spi_replay_open(f->e, json, strlen(json), &f->q), SPI_OK);
  s.out = 1;
  enqueue(f, "a", SPI_CLASS_SILVER);
  enqueue(f, "bad", SPI_CLASS_SILVER);
  enqueue(f, "c", SPI_CLASS_SILVER);
  assert_int_equal(s.n, 0);
  s.out = 0;
  f->h.now += 60 * 1000 * MS; /* past the drain's retry delay */
  spi_replay_tick(f->q);
  f->h.now += 60 * 1000 * MS;
  spi_replay_tick(f->q);
  assert_int_equal(s.n, 2);
  assert_string_equal(s.took[0], "a");
  assert_string_equal(s.took[1], "c");
  teardown(f);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* The bytes of the regular files in dir. */
static uint64_t dir_bytes(const char *dir) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  uint64_t n = 0;
  struct dirent *de;
  char p[512];
  while ((de = readdir(d)) != NULL) {
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    struct stat sb;
    if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) n += (uint64_t)sb.st_size;
  }
  closedir(d);
  return n;
}

/* What a drain moves out of the fallback journal is acked there, and the
 * journal is compacted as a journal queue's acks compact it: 2,000 envelopes
 * that each went through it (store down, then back) leave it nearly empty,
 * not holding every one of them (over 1 MB). */
static void test_fallback_journal_compacted(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup_engine();
  fake_qstore s;
  memset(&s, 0, sizeof s);
  spi_replay_store_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.configure = fq_configure;
  m.release = fq_release;
  m.enqueue = fq_enqueue;
  m.claim = fq_claim;
  m.ack = fq_settle;
  m.nack = fq_nack;
  m.queue_stats = fq_stats;
  m.stats = fq_rstats;
  assert_int_equal(spi_engine_register_module(f->e, SPI_MODULE_REPLAY_STORE,
                                              "fakeq", 5, &m, &s, NULL),
                   SPI_OK);
  char dir[256], json[512];
  rq_tmpdir(dir, sizeof dir, "fallback-compact");
  snprintf(json, sizeof json,
           "{\"store\":\"fakeq\",\"fallback\":\"journal\",\"dir\":\"%s\","
           "\"compact_min_bytes\":0,\"compact_ratio\":1.1,"
           "\"max_acked_keys\":0,\"segment_bytes\":4096}",
           dir);
  assert_int_equal(spi_replay_open(f->e, json, strlen(json), &f->q), SPI_OK);
  char body[512];
  memset(body, 'x', sizeof body - 1);
  body[sizeof body - 1] = '\0';
  for (int i = 0; i < 2000; i++) {
    char key[32];
    snprintf(key, sizeof key, "k%d", i);
    spi_envelope v = rq_envelope(key, SPI_CLASS_SILVER, body);
    s.out = 1;
    rq_enqueue(f->q, &v); /* into the fallback journal */
    s.out = 0;
    f->h.now += 200 * MS; /* past the drain's retry delay */
    assert_int_equal(spi_replay_tick(f->q), SPI_OK); /* moved to the store */
  }
  spi_replay_stats rs = stats(f);
  assert_int_equal(rs.fallback_enqueued, 2000);
  assert_int_equal(rs.fallback_moved, 2000);
  assert_int_equal(rs.fallback_held, 0);
  uint64_t bytes = dir_bytes(dir);
  if (bytes >= 64 * 1024)
    fail_msg("the fallback journal holds nothing but %llu bytes on disk",
             (unsigned long long)bytes);
  teardown(f);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* A queue store whose claims hand out what the test put in hand[], one a
 * claim (claim id: its index + 1), and keeps the nacks it gets. */
typedef struct hand_qstore {
  spi_envelope hand[4];
  int n, next;
  int nack_eio; /* nacks to answer SPI_EIO, first */
  int nacks;
  uint64_t nack_id;
  uint32_t nack_attempts;
  int32_t nack_dead;
} hand_qstore;

static int hq_enqueue(void *state, void *inst, const spi_replay_ctx *ctx,
                      const spi_envelope *env, int32_t *dup, char *err,
                      size_t cap) {
  (void)state, (void)inst, (void)ctx, (void)env, (void)err, (void)cap;
  *dup = 0;
  return SPI_OK;
}

static int hq_claim(void *state, void *inst, const spi_replay_ctx *ctx,
                    uint32_t mask, spi_replay_envelope_fn fn, void *fn_data,
                    uint64_t *id, char *err, size_t cap) {
  (void)inst, (void)ctx, (void)mask;
  hand_qstore *s = state;
  *id = 0;
  if (s->next == s->n) return SPI_OK;
  int i = s->next++;
  *id = (uint64_t)i + 1;
  int rc = fn(fn_data, &s->hand[i]);
  if (rc != SPI_OK) snprintf(err, cap, "the envelope could not be taken");
  return rc;
}

static int hq_nack(void *state, void *inst, const spi_replay_ctx *ctx,
                   uint64_t id, uint32_t attempts, int64_t visible,
                   int32_t dead, char *err, size_t cap) {
  (void)inst, (void)ctx, (void)visible;
  hand_qstore *s = state;
  s->nacks++;
  s->nack_id = id;
  s->nack_attempts = attempts;
  s->nack_dead = dead;
  if (s->nack_eio > 0) {
    s->nack_eio--;
    snprintf(err, cap, "no answer");
    return SPI_EIO;
  }
  return SPI_OK;
}

/* An engine whose replay queue is a hand store holding "bad" (a class out
 * of range, 2 attempts) and then "good"; its first nack_eio nacks go
 * unanswered (SPI_EIO). */
static fixture *open_refusing_store(hand_qstore *s, int nack_eio) {
  fixture *f = setup_engine();
  memset(s, 0, sizeof *s);
  s->hand[0] = env_of("bad", SPI_CLASS_SILVER);
  s->hand[0].klass = 9;
  s->hand[0].attempts = 2;
  s->hand[1] = env_of("good", SPI_CLASS_SILVER);
  s->n = 2;
  s->nack_eio = nack_eio;
  spi_replay_store_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.configure = fq_configure;
  m.release = fq_release;
  m.enqueue = hq_enqueue;
  m.claim = hq_claim;
  m.ack = fq_settle;
  m.nack = hq_nack;
  m.queue_stats = fq_stats;
  m.stats = fq_rstats;
  assert_int_equal(spi_engine_register_module(f->e, SPI_MODULE_REPLAY_STORE,
                                              "handq", 5, &m, s, NULL),
                   SPI_OK);
  const char *json = "{\"store\":\"handq\"}";
  assert_int_equal(spi_replay_open(f->e, json, strlen(json), &f->q), SPI_OK);
  return f;
}

/* A claimed envelope the library refuses (here its class) can never be
 * taken: it is dead-lettered at once (a nack with dead set, its attempts
 * unchanged), with an error, and the next claim goes on. It was held until
 * its lease ended, then claimed and refused again. */
static void test_claim_dead_letters_a_refused_envelope(void **st) {
  (void)st;
  LOCAL_ONLY();
  hand_qstore s;
  fixture *f = open_refusing_store(&s, 0);
  claimed c;
  assert_int_equal(claim(f, ALL, 0, &c), SPI_EMODULE);
  assert_int_equal(s.nacks, 1);
  assert_int_equal(s.nack_id, 1);
  assert_int_equal(s.nack_dead, 1);
  assert_int_equal(s.nack_attempts, 2);
  assert_non_null(strstr(spi_replay_errmsg(f->q),
                         "envelope bad refused (class out of range): "
                         "dead-lettered"));
  assert_int_equal(f->logged_dead, 1);
  assert_int_equal(stats(f).nacked, 1);
  claim_ok(f, ALL, &c);
  assert_string_equal(c.key, "good");
  assert_int_equal(c.id, 2);
  assert_int_equal(s.nacks, 1);
  teardown(f);
}

/* The nack that dead-letters a refused envelope went unanswered
 * (SPI_EIO): the store still holds the claim, whose id the caller never
 * got, so the library repeats the nack (same id, attempts, dead) on the
 * next claims and ticks, RQS_DRAIN_RETRY_NS after it failed, until the
 * store answers. It was forgotten, and the claim held until its lease
 * ended. */
static void test_refused_claim_nack_repeated(void **st) {
  (void)st;
  LOCAL_ONLY();
  hand_qstore s;
  fixture *f = open_refusing_store(&s, 2);
  claimed c;
  assert_int_equal(claim(f, ALL, 0, &c), SPI_EIO);
  assert_non_null(strstr(spi_replay_errmsg(f->q),
                         "envelope bad refused (class out of range); "
                         "dead-lettering it failed: no answer (tried again"));
  assert_int_equal(s.nacks, 1);
  /* Not again before RQS_DRAIN_RETRY_NS; then unanswered once more. */
  assert_int_equal(spi_replay_tick(f->q), SPI_OK);
  assert_int_equal(s.nacks, 1);
  f->h.now += 100 * MS;
  assert_int_equal(spi_replay_tick(f->q), SPI_OK);
  assert_int_equal(s.nacks, 2);
  f->h.now += 100 * MS;
  assert_int_equal(spi_replay_tick(f->q), SPI_OK);
  assert_int_equal(s.nacks, 3);
  assert_int_equal(s.nack_id, 1);
  assert_int_equal(s.nack_dead, 1);
  assert_int_equal(s.nack_attempts, 2);
  assert_int_equal(f->logged_dead, 1);
  assert_int_equal(stats(f).nacked, 1);
  /* Done: the next claim repeats nothing. */
  f->h.now += 100 * MS;
  claim_ok(f, ALL, &c);
  assert_string_equal(c.key, "good");
  assert_int_equal(s.nacks, 3);
  teardown(f);
}

/* A queue store that hands out one envelope again and again, under a new
 * claim id each time (as a store does once a lease ends), and counts the
 * acks it is asked for. */
typedef struct again_qstore {
  spi_envelope env;
  uint64_t next;
  int acks;
} again_qstore;

static int aq_claim(void *state, void *inst, const spi_replay_ctx *ctx,
                    uint32_t mask, spi_replay_envelope_fn fn, void *fn_data,
                    uint64_t *id, char *err, size_t cap) {
  (void)inst, (void)ctx, (void)mask, (void)err, (void)cap;
  again_qstore *s = state;
  *id = ++s->next;
  return fn(fn_data, &s->env);
}

static int aq_ack(void *state, void *inst, const spi_replay_ctx *ctx,
                  uint64_t id, char *err, size_t cap) {
  (void)inst, (void)ctx, (void)id, (void)err, (void)cap;
  ((again_qstore *)state)->acks++;
  return SPI_OK;
}

static void open_again(fixture *f, again_qstore *s, const char *json) {
  spi_replay_store_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.configure = fq_configure;
  m.release = fq_release;
  m.enqueue = hq_enqueue;
  m.claim = aq_claim;
  m.ack = aq_ack;
  m.nack = hq_nack;
  m.queue_stats = fq_stats;
  m.stats = fq_rstats;
  assert_int_equal(spi_engine_register_module(f->e, SPI_MODULE_REPLAY_STORE,
                                              "again", 5, &m, s, NULL),
                   SPI_OK);
  assert_int_equal(spi_replay_open(f->e, json, strlen(json), &f->q), SPI_OK);
}

static uint64_t claim_big(fixture *f, void *buf, size_t cap) {
  spi_envelope out;
  memset(&out, 0, sizeof out);
  out.struct_size = sizeof out;
  uint64_t id = 0;
  assert_int_equal(spi_replay_claim(f->q, ALL, 1, &id, &out, buf, cap, NULL),
                   SPI_OK);
  assert_true(id != 0);
  return id;
}

/* A shared queue forgets a claim neither acked nor nacked (the worker gave
 * up; the store hands the envelope out again) its lease length again after
 * the lease ended, at least 1 s after, and keeps no copy of the envelope:
 * 1,000 abandoned claims of a 60 KB envelope hold nothing (60 MB before).
 * An ack within that time reaches the store; one after answers SPI_ESTALE,
 * as the local queue's ack after a lease does, without asking the store. */
static void test_shared_claims_forgotten(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup_engine();
  static char body[60000];
  memset(body, 'x', sizeof body - 1);
  again_qstore s;
  memset(&s, 0, sizeof s);
  s.env = env_of("one", SPI_CLASS_SILVER);
  s.env.body = body;
  s.env.body_len = sizeof body - 1;
  open_again(f, &s, "{\"store\":\"again\",\"max_bytes\":4096,"
                    "\"max_envelope_bytes\":65536}");
  static uint8_t buf[70000];
  long base = f->h.allocs - f->h.frees;
  for (int i = 0; i < 1000; i++) {
    (void)claim_big(f, buf, sizeof buf);
    f->h.now += 1001 * MS; /* its lease (1 ms) and 1 s more */
    assert_int_equal(spi_replay_tick(f->q), SPI_OK);
  }
  long held = f->h.allocs - f->h.frees - base;
  if (held > 4)
    fail_msg("%ld allocations held after 1,000 abandoned claims", held);
  /* Within its time, an ack reaches the store. */
  uint64_t id = claim_big(f, buf, sizeof buf);
  f->h.now += 1000 * MS;
  assert_int_equal(spi_replay_ack(f->q, id), SPI_OK);
  assert_int_equal(s.acks, 1);
  assert_int_equal(stats(f).acked, 1);
  /* After it, the claim is not held: SPI_ESTALE, the store not asked. */
  id = claim_big(f, buf, sizeof buf);
  f->h.now += 1001 * MS;
  assert_int_equal(spi_replay_ack(f->q, id), SPI_ESTALE);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "is not held (lease ended"));
  assert_int_equal(spi_replay_nack(f->q, id), SPI_ESTALE);
  assert_int_equal(s.acks, 1);
  teardown(f);
}

/* A shared queue holds at most max(1024, replay.max_bytes / an entry's
 * size) claims: beyond, the oldest is forgotten (its ack answers
 * SPI_ESTALE) though its lease runs, and memory stays bounded. */
static void test_shared_claims_bounded(void **st) {
  (void)st;
  LOCAL_ONLY();
  fixture *f = setup_engine();
  again_qstore s;
  memset(&s, 0, sizeof s);
  s.env = env_of("one", SPI_CLASS_SILVER);
  open_again(f, &s, "{\"store\":\"again\",\"max_bytes\":4096}");
  static uint8_t buf[4096];
  long base = f->h.allocs - f->h.frees;
  uint64_t first = 0, last = 0;
  for (int i = 0; i < 3000; i++) {
    spi_envelope out;
    memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    uint64_t id = 0;
    assert_int_equal(spi_replay_claim(f->q, ALL, 600000, &id, &out, buf,
                                      sizeof buf, NULL),
                     SPI_OK);
    if (!first) first = id;
    last = id;
  }
  long held = f->h.allocs - f->h.frees - base;
  if (held > 1024 + 16)
    fail_msg("%ld allocations held for 3,000 claims", held);
  assert_int_equal(spi_replay_ack(f->q, first), SPI_ESTALE);
  assert_int_equal(spi_replay_ack(f->q, last), SPI_OK);
  assert_int_equal(s.acks, 1);
  teardown(f);
}

/* -------------------------------------------------------------- threads */

#define THREADS 4
#define PER_THREAD 500

typedef struct worker {
  fixture *f;
  int id;
  unsigned char *seen; /* THREADS * PER_THREAD */
  pthread_mutex_t *seen_lock;
  int acked;
} worker;

static void *producer(void *arg) {
  worker *w = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    char key[32];
    snprintf(key, sizeof key, "t%d-%d", w->id, i);
    spi_envelope v = env_of(key, 1 + (i % 3));
    int32_t dup = 1;
    assert_int_equal(spi_replay_enqueue(w->f->q, &v, &dup), SPI_OK);
    assert_int_equal(dup, 0);
  }
  return NULL;
}

static void *consumer(void *arg) {
  worker *w = arg;
  int idle = 0;
  while (idle < 2000) {
    claimed c;
    int rc = claim(w->f, ALL, 60000, &c);
    if (rc == NOTHING_READY) {
      idle++;
      sched_yield();
      continue;
    }
    assert_int_equal(rc, SPI_OK);
    idle = 0;
    int t = 0, i = 0;
    assert_int_equal(sscanf(c.key, "t%d-%d", &t, &i), 2);
    pthread_mutex_lock(w->seen_lock);
    assert_int_equal(w->seen[t * PER_THREAD + i], 0);
    w->seen[t * PER_THREAD + i] = 1;
    pthread_mutex_unlock(w->seen_lock);
    /* Every third is nacked once first (backoff 0 ms: ready at once). */
    if (i % 3 == 0 && c.env.attempts == 0) {
      pthread_mutex_lock(w->seen_lock);
      w->seen[t * PER_THREAD + i] = 0;
      pthread_mutex_unlock(w->seen_lock);
      assert_int_equal(spi_replay_nack(w->f->q, c.id), SPI_OK);
    } else {
      assert_int_equal(spi_replay_ack(w->f->q, c.id), SPI_OK);
      w->acked++;
    }
  }
  return NULL;
}

static void test_threads(void **st) {
  (void)st;
  fixture *f = setup("{\"store\":\"memory\",\"backoff_base_ms\":1,"
                     "\"backoff_max_ms\":1,\"backoff_jitter\":1}");
  unsigned char *seen = calloc(THREADS * PER_THREAD, 1);
  pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
  pthread_t p[THREADS], c[THREADS];
  worker pw[THREADS], cw[THREADS];
  for (int i = 0; i < THREADS; i++) {
    pw[i] = (worker){f, i, seen, &lock, 0};
    cw[i] = (worker){f, i, seen, &lock, 0};
    assert_int_equal(pthread_create(&p[i], NULL, producer, &pw[i]), 0);
    assert_int_equal(pthread_create(&c[i], NULL, consumer, &cw[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) pthread_join(p[i], NULL);
  /* Let delayed entries come due for the consumers still polling. */
  __atomic_store_n(&f->h.now, f->h.now + 10 * MS, __ATOMIC_SEQ_CST);
  for (int i = 0; i < THREADS; i++) pthread_join(c[i], NULL);
  int acked = 0;
  for (int i = 0; i < THREADS; i++) acked += cw[i].acked;
  /* Whatever the consumers missed while the clock stood still, including
   * what they nacked after it last moved. */
  __atomic_store_n(&f->h.now, f->h.now + 10 * MS, __ATOMIC_SEQ_CST);
  claimed cl;
  while (claim(f, ALL, 0, &cl) == SPI_OK) {
    assert_int_equal(spi_replay_ack(f->q, cl.id), SPI_OK);
    int t = 0, i = 0;
    assert_int_equal(sscanf(cl.key, "t%d-%d", &t, &i), 2);
    seen[t * PER_THREAD + i] = 1;
    acked++;
  }
  assert_int_equal(acked, THREADS * PER_THREAD);
  for (int i = 0; i < THREADS * PER_THREAD; i++) assert_int_equal(seen[i], 1);
  spi_replay_stats s = stats(f);
  assert_int_equal(s.enqueued, THREADS * PER_THREAD);
  assert_int_equal(s.acked, THREADS * PER_THREAD);
  assert_int_equal(s.leased + s.delayed + s.ready[1] + s.ready[2] + s.ready[3],
                   0);
  free(seen);
  teardown(f);
}

int main(void) {
  if (redis_mode() && !getenv("SPI_REDIS_PORT")) {
    fprintf(stderr, "SPI_REPLAY_TEST_STORE=redis needs SPI_REDIS_PORT\n");
    return 77; /* skipped */
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_open_errors),
      cmocka_unit_test(test_open_control_bytes),
      cmocka_unit_test(test_engine_section_defaults),
      cmocka_unit_test(test_open_keeps_engine_section),
      cmocka_unit_test(test_empty_claim),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_lanes_and_fifo),
      cmocka_unit_test(test_lease_expiry),
      cmocka_unit_test(test_backoff_values),
      cmocka_unit_test(test_dead_letter),
      cmocka_unit_test(test_max_dead),
      cmocka_unit_test(test_duplicates),
      cmocka_unit_test(test_claim_buffer),
      cmocka_unit_test(test_bounded_memory),
      cmocka_unit_test(test_arguments),
      cmocka_unit_test(test_alloc_failures),
      cmocka_unit_test(test_user_store),
      cmocka_unit_test(test_fallback_drain_past_a_refused_envelope),
      cmocka_unit_test(test_fallback_journal_compacted),
      cmocka_unit_test(test_claim_dead_letters_a_refused_envelope),
      cmocka_unit_test(test_refused_claim_nack_repeated),
      cmocka_unit_test(test_shared_claims_forgotten),
      cmocka_unit_test(test_shared_claims_bounded),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
