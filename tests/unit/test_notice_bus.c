/*
 * test_notice_bus.c - the fleet bus: two engines on one in-process bus (a
 * fake module over a shared list of messages). A notice handed to engine A
 * stops routing to its machine in engine B after B's next tick; the spot
 * pool it cools is cooled in B too; nothing B applies is published again;
 * each engine drops its own echo; unreadable messages are skipped and
 * counted; a failing bus loses no local notice, says so in its status, and
 * sends what it kept once it is back; polls are bounded; the plans for B's
 * own tickets come from spi_engine_node_plans; and engines publishing,
 * polling, routing and reconfiguring at once (run under TSan).
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "spotinfer/spotinfer.h"
#include "watchdog.h"
#include "spotinfer/spotinfer_module.h"

#define SEC 1000000000LL
#define MAX_MSGS 4096
#define READERS 4

/* ------------------------------------------------------------- the bus */

/* Every message ever published, in order; each reader (named in its
 * module_config) has a position that outlives its instances, as a stream
 * consumer's last id would. */
typedef struct broker {
  pthread_mutex_t mu;
  char *msg[MAX_MSGS];
  size_t len[MAX_MSGS];
  size_t n;
  char reader[READERS][16];
  size_t next[READERS];
  size_t nreaders;
  int fail_publish, fail_poll;
  int live; /* instances not yet released */
  /* hold: publish waits (without the broker's lock) until it is cleared;
   * held is set while one waits. */
  pthread_cond_t cv;
  int hold, held;
} broker;

typedef struct inst {
  broker *b;
  size_t reader;
} inst;

static int fb_configure(void *state, const char *json, size_t len, void **out,
                        char *err, size_t cap) {
  broker *b = state;
  char cfg[256];
  snprintf(cfg, sizeof cfg, "%.*s", (int)len, json);
  if (strstr(cfg, "\"refuse\"")) {
    snprintf(err, cap, "WRONGPASS invalid username-password pair");
    return SPI_EIO;
  }
  const char *r = strstr(cfg, "\"reader\":\"");
  char name[16] = "?";
  if (r) sscanf(r + 10, "%15[^\"]", name);
  inst *in = calloc(1, sizeof *in);
  in->b = b;
  pthread_mutex_lock(&b->mu);
  size_t i = 0;
  while (i < b->nreaders && strcmp(b->reader[i], name)) i++;
  if (i == b->nreaders) {
    snprintf(b->reader[i], sizeof b->reader[i], "%s", name);
    b->next[i] = b->n; /* a new reader starts at the end */
    b->nreaders++;
  }
  in->reader = i;
  b->live++;
  pthread_mutex_unlock(&b->mu);
  *out = in;
  return SPI_OK;
}

static void fb_release(void *state, void *instance) {
  broker *b = state;
  pthread_mutex_lock(&b->mu);
  b->live--;
  pthread_mutex_unlock(&b->mu);
  free(instance);
}

static void broker_put(broker *b, const char *msg, size_t len) {
  assert_true(b->n < MAX_MSGS);
  b->msg[b->n] = malloc(len ? len : 1);
  memcpy(b->msg[b->n], msg, len);
  b->len[b->n++] = len;
}

static int fb_publish(void *state, void *instance, const char *msg,
                      size_t len, char *err, size_t cap) {
  broker *b = state;
  (void)instance;
  pthread_mutex_lock(&b->mu);
  if (b->hold) {
    b->held = 1;
    pthread_cond_broadcast(&b->cv);
    while (b->hold) pthread_cond_wait(&b->cv, &b->mu);
    b->held = 0;
  }
  int fail = b->fail_publish;
  if (!fail) broker_put(b, msg, len);
  pthread_mutex_unlock(&b->mu);
  if (fail) snprintf(err, cap, "connection refused");
  return fail ? SPI_EIO : SPI_OK;
}

static int fb_poll(void *state, void *instance, size_t max, spi_fleet_msg_fn fn,
                   void *ud, char *err, size_t cap) {
  broker *b = state;
  inst *in = instance;
  pthread_mutex_lock(&b->mu);
  if (b->fail_poll) {
    pthread_mutex_unlock(&b->mu);
    snprintf(err, cap, "read timed out");
    return SPI_EIO;
  }
  size_t *next = &b->next[in->reader];
  for (size_t k = 0; k < max && *next < b->n; k++) {
    if (fn(ud, b->msg[*next], b->len[*next]) != SPI_OK) break;
    (*next)++;
  }
  pthread_mutex_unlock(&b->mu);
  return SPI_OK;
}

static broker *broker_new(void) {
  broker *b = calloc(1, sizeof *b);
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  return b;
}

static void broker_free(broker *b) {
  assert_int_equal(b->live, 0);
  for (size_t i = 0; i < b->n; i++) free(b->msg[i]);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv);
  free(b);
}

static size_t broker_count(broker *b) {
  pthread_mutex_lock(&b->mu);
  size_t n = b->n;
  pthread_mutex_unlock(&b->mu);
  return n;
}

static spi_fleet_bus_module fake_module(void) {
  spi_fleet_bus_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.configure = fb_configure;
  m.release = fb_release;
  m.publish = fb_publish;
  m.poll = fb_poll;
  return m;
}

/* ---------------------------------------------------------- the engines */

typedef struct world {
  spi_engine *e;
  spi_request *r;
  int64_t now;
  int to_noticed; /* transitions to NOTICED reported */
} world;

static int64_t clock_fn(void *ud) { return ((world *)ud)->now; }

static void on_transition(void *ud, const char *node, size_t len, int32_t from,
                          int32_t to) {
  (void)node, (void)len, (void)from;
  ((world *)ud)->to_noticed += to == SPI_NODE_NOTICED;
}

static void configure(world *w, const char *reader, const char *extra) {
  char cfg[512];
  snprintf(cfg, sizeof cfg,
           "{\"modules\":{\"fleet_bus\":\"fake\"},"
           "\"module_config\":{\"fake\":{\"reader\":\"%s\"}}%s%s}",
           reader, extra ? "," : "", extra ? extra : "");
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
}

static world *mk(broker *b, const char *reader, const char *extra) {
  world *w = calloc(1, sizeof *w);
  w->now = 1700000000 * SEC;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = clock_fn;
  h.clock_user_data = w;
  assert_int_equal(spi_engine_new(&w->e, &h), SPI_OK);
  spi_fleet_bus_module m = fake_module();
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_FLEET_BUS,
                                              "fake", 4, &m, b, NULL),
                   SPI_OK);
  configure(w, reader, extra);
  assert_int_equal(spi_engine_on_node_transition(w->e, on_transition, w),
                   SPI_OK);
  assert_int_equal(spi_request_new(w->e, &w->r), SPI_OK);
  return w;
}

static void done(world *w) {
  spi_request_free(w->r);
  spi_engine_free(w->e);
  free(w);
}

static void add(world *w, const char *id, const char *node, int32_t pool,
                const char *type, const char *zone) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = strlen(id);
  ri.node = node;
  ri.node_len = strlen(node);
  ri.pool = pool;
  ri.instance_type = type;
  ri.instance_type_len = strlen(type);
  ri.zone = zone;
  ri.zone_len = strlen(zone);
  ri.usd_per_hour = pool == SPI_POOL_SPOT ? 1.8 : 4.5;
  ri.max_inflight = 64;
  ri.decode_tokens_per_s = 50;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = 1;
  l.kv_usage = 0.2;
  assert_int_equal(spi_replica_report_load(w->e, id, strlen(id), &l), SPI_OK);
}

/* Route a silver request with prompt p; the ticket stays open. */
static void route(world *w, const char *p, spi_decision *d) {
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(w->r, SPI_REQ_PROMPT, p, strlen(p));
  spi_request_set_str(w->r, SPI_REQ_SYSTEM_PROMPT, p, strlen(p));
  spi_request_set_str(w->r, SPI_REQ_CLASS, "silver", 6);
  spi_request_set_int(w->r, SPI_REQ_MAX_OUTPUT_TOKENS, 200);
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  assert_int_equal(spi_route(w->r, d), SPI_OK);
}

static void finish(world *w, uint64_t ticket) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  assert_int_equal(spi_ticket_finish(w->e, ticket, &res), SPI_OK);
}

/* A prompt that w routes to replica id (cold placement spreads them). */
static void prompt_for(world *w, const char *id, char *p, size_t cap) {
  spi_decision d;
  for (int i = 0; i < 1000; i++) {
    snprintf(p, cap, "prefix %d", i);
    route(w, p, &d);
    finish(w, d.ticket);
    if (!strcmp(d.replica_id, id)) return;
  }
  fail_msg("no prompt routes to %s", id);
}

static spi_notice notice(const char *node, int64_t deadline, const char *key) {
  spi_notice n;
  memset(&n, 0, sizeof n);
  n.struct_size = sizeof n;
  n.kind = SPI_NOTICE_TERMINATE;
  n.format = SPI_NOTICE_AWS_INSTANCE_ACTION;
  n.active = 1;
  n.deadline_ns = deadline;
  snprintf(n.node, sizeof n.node, "%s", node);
  snprintf(n.dedup_key, sizeof n.dedup_key, "%s", key);
  return n;
}

static void hand(world *w, const spi_notice *n) {
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, n, NULL, 0, &np), SPI_OK);
}

static int32_t state_of(world *w, const char *node) {
  int32_t st = 0;
  assert_int_equal(spi_node_get_state(w->e, node, strlen(node), &st), SPI_OK);
  return st;
}

static spi_fleet_stats stats(world *w) {
  spi_fleet_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  assert_int_equal(spi_engine_fleet_stats(w->e, &s), SPI_OK);
  return s;
}

/* The cooldown end on replica id's slot (internal: routing reads it). */
static int64_t cooldown_of(world *w, const char *id) {
  const spi_replica_set *set = atomic_load(&w->e->registry.set);
  for (size_t i = 0; set && i < set->n; i++)
    if (!strcmp(set->r[i].id, id))
      return atomic_load(&w->e->registry.slots[set->r[i].slot].cooldown_until_ns);
  fail_msg("no replica %s", id);
  return 0;
}

/* B's fleet: two spot machines and one on-demand. */
static void fleet(world *w) {
  add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5.xlarge", "use1-az2");
  add(w, "od-a", "i-odd", SPI_POOL_ON_DEMAND, "g5.xlarge", "use1-az1");
}

/* ----------------------------------------------------------------- tests */

static void test_notice_reaches_other_engine(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL), *bw = mk(b, "B", NULL);
  fleet(a);
  fleet(bw);
  char p[32];
  prompt_for(bw, "spot-a", p, sizeof p);
  spi_notice n = notice("i-aaa", a->now + 120 * SEC, "aws:i-aaa:terminate");
  hand(a, &n);
  /* A published the notice and the cooldown of its pool. */
  assert_int_equal(broker_count(b), 2);
  assert_int_equal(stats(a).published, 2);
  /* B has not ticked: it still routes there. */
  spi_decision d;
  route(bw, p, &d);
  assert_string_equal(d.replica_id, "spot-a");
  finish(bw, d.ticket);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(bw->to_noticed, 1);
  for (int i = 0; i < 20; i++) {
    char q[48];
    snprintf(q, sizeof q, "other %d", i);
    route(bw, i ? q : p, &d);
    assert_string_not_equal(d.replica_id, "spot-a");
    finish(bw, d.ticket);
  }
  spi_fleet_stats sb = stats(bw);
  assert_int_equal(sb.configured, 1);
  assert_int_equal(sb.received, 2);
  /* The notice cooled B's own replica of the pool to the same end (one
   * clock here), so the cooldown message after it changed nothing. */
  assert_int_equal(sb.applied, 1);
  assert_int_equal(sb.duplicates, 1);
  assert_int_equal(sb.published, 0);
  /* B publishes nothing of what it applied: no echo storm. */
  assert_int_equal(broker_count(b), 2);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(broker_count(b), 2);
  /* A reads its own two messages back and drops the notice; the cooldown
   * changes nothing there. */
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  spi_fleet_stats sa = stats(a);
  assert_int_equal(sa.received, 2);
  assert_int_equal(sa.duplicates, 2);
  assert_int_equal(sa.applied, 0);
  assert_int_equal(a->to_noticed, 1);
  /* B's own poller then hears the same event: it still gets its plans
   * (none here), and it does not publish what the fleet already has. */
  hand(bw, &n);
  assert_int_equal(bw->to_noticed, 1);
  assert_int_equal(broker_count(b), 4);
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  assert_int_equal(stats(a).applied, 0);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_cooldown_shared(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", "\"router\":{\"pool_cooldown_ms\":180000}");
  world *bw = mk(b, "B", "\"router\":{\"pool_cooldown_ms\":5000}");
  bw->now = a->now + 2 * SEC; /* clocks of two machines */
  add(a, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  /* B runs nothing on A's machine, but a replica in the same pool. */
  add(bw, "spot-c", "i-ccc", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  add(bw, "spot-d", "i-ddd", SPI_POOL_SPOT, "g5.xlarge", "use1-az2");
  char p[32];
  prompt_for(bw, "spot-c", p, sizeof p);
  spi_notice n = notice("i-aaa", a->now + 120 * SEC, "k1");
  hand(a, &n);
  assert_int_equal(cooldown_of(a, "spot-a"), a->now + 180 * SEC);
  assert_int_equal(cooldown_of(bw, "spot-c"), 0);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  /* A's end of the cooldown, not B's own shorter one. */
  assert_int_equal(cooldown_of(bw, "spot-c"), a->now + 180 * SEC);
  assert_int_equal(cooldown_of(bw, "spot-d"), 0);
  spi_decision d;
  route(bw, p, &d);
  assert_string_equal(d.replica_id, "spot-d");
  finish(bw, d.ticket);
  /* A replica B adds to the pool later starts cooling. */
  add(bw, "spot-e", "i-eee", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  assert_int_equal(cooldown_of(bw, "spot-e"), a->now + 180 * SEC);
  /* A cooldown message never shortens one. */
  const char *older = "{\"instance_type\":\"g5.xlarge\",\"type\":\"cooldown\","
                      "\"until_ns\":\"1700000010000000000\",\"v\":1,"
                      "\"zone\":\"use1-az1\"}";
  broker_put(b, older, strlen(older));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(cooldown_of(bw, "spot-c"), a->now + 180 * SEC);
  assert_int_equal(stats(bw).duplicates, 1);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_malformed_skipped(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL), *bw = mk(b, "B", NULL);
  fleet(bw);
  static const char *const bad[] = {
      "not json",
      "[1,2]",
      "{\"v\":1,\"type\":\"notice\"}",
      "{\"active\":true,\"dedup_key\":\"\",\"deadline_ns\":\"12x\","
      "\"event_id\":\"\",\"kind\":\"terminate\",\"node\":\"i-bbb\","
      "\"type\":\"notice\",\"v\":1}",
      "{\"active\":true,\"dedup_key\":\"\",\"deadline_ns\":"
      "\"99999999999999999999\",\"event_id\":\"\",\"kind\":\"terminate\","
      "\"node\":\"i-bbb\",\"type\":\"notice\",\"v\":1}",
      "{\"active\":true,\"dedup_key\":\"\",\"deadline_ns\":\"1\","
      "\"event_id\":\"\",\"kind\":\"explode\",\"node\":\"i-bbb\","
      "\"type\":\"notice\",\"v\":1}",
      "{\"active\":true,\"dedup_key\":\"\",\"deadline_ns\":\"1\","
      "\"event_id\":\"\",\"kind\":\"terminate\",\"node\":\"\","
      "\"type\":\"notice\",\"v\":1}",
      "{\"type\":\"cooldown\",\"v\":1,\"zone\":\"z\"}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    broker_put(b, bad[i], strlen(bad[i]));
  /* A newer engine's message: skipped as unknown, not as broken. */
  const char *newer = "{\"type\":\"breaker\",\"v\":1}";
  const char *v2 = "{\"type\":\"notice\",\"v\":2}";
  broker_put(b, newer, strlen(newer));
  broker_put(b, v2, strlen(v2));
  char big[SPI_FLEET_MSG_MAX + 2];
  memset(big, ' ', sizeof big);
  broker_put(b, big, sizeof big);
  /* And a good one after all of them still acts. */
  spi_notice n = notice("i-aaa", a->now + 120 * SEC, "good");
  hand(a, &n);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  spi_fleet_stats s = stats(bw);
  assert_int_equal(s.malformed, sizeof bad / sizeof bad[0] + 1);
  assert_int_equal(s.unknown, 2);
  assert_int_equal(s.applied, 1);
  assert_int_equal(s.received, sizeof bad / sizeof bad[0] + 4);
  assert_non_null(strstr(s.last_error, "message skipped"));
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(state_of(bw, "i-bbb"), SPI_NODE_ACTIVE);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_publish_failure_keeps_local(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL), *bw = mk(b, "B", NULL);
  fleet(a);
  fleet(bw);
  char p[32];
  prompt_for(a, "spot-a", p, sizeof p);
  spi_decision d;
  route(a, p, &d); /* open on spot-a */
  b->fail_publish = 1;
  spi_notice n = notice("i-aaa", a->now + 120 * SEC, "k");
  spi_ticket_plan plans[4];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  /* The notice acts here and its plan comes back: the bus is not asked
   * before, and its failure is no failure of this call. */
  assert_int_equal(spi_engine_notice(a->e, &n, plans, 4, &np), SPI_OK);
  assert_int_equal(np, 1);
  assert_int_equal(plans[0].ticket, d.ticket);
  assert_int_equal(state_of(a, "i-aaa"), SPI_NODE_NOTICED);
  spi_fleet_stats s = stats(a);
  assert_int_equal(s.publish_failed, 1);
  assert_int_equal(s.pending, 2); /* the notice, and the cooldown behind */
  assert_non_null(strstr(s.last_error, "connection refused"));
  /* The tick says so, and keeps them. */
  assert_int_equal(spi_engine_tick(a->e), SPI_EMODULE);
  const char *msg = spi_engine_errmsg(a->e);
  assert_non_null(strstr(msg, "fleet bus \"fake\": publish: connection refused"));
  assert_int_equal(stats(a).pending, 2);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_ACTIVE);
  /* Back: the next tick sends both, in order, and B gets them. */
  b->fail_publish = 0;
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  s = stats(a);
  assert_int_equal(s.pending, 0);
  assert_int_equal(s.published, 2);
  assert_non_null(strstr(b->msg[0], "\"type\":\"notice\""));
  assert_non_null(strstr(b->msg[1], "\"type\":\"cooldown\""));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_NOTICED);
  finish(a, d.ticket);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_pending_is_bounded(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL), *bw = mk(b, "B", NULL);
  b->fail_publish = 1;
  char node[32];
  for (int i = 0; i < SPI_FLEET_PENDING_MAX + 10; i++) {
    snprintf(node, sizeof node, "i-%04d", i);
    spi_notice n = notice(node, a->now + 120 * SEC, node);
    hand(a, &n);
  }
  spi_fleet_stats s = stats(a);
  assert_int_equal(s.pending, SPI_FLEET_PENDING_MAX);
  assert_int_equal(s.dropped, 10);
  assert_int_equal(s.publish_failed, 1); /* the rest queued behind it */
  b->fail_publish = 0;
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  assert_int_equal(broker_count(b), SPI_FLEET_PENDING_MAX);
  /* The oldest went: the newest arrive. */
  assert_non_null(strstr(b->msg[0], "i-0010"));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(state_of(bw, "i-0009"), SPI_NODE_ACTIVE);
  assert_int_equal(state_of(bw, "i-0010"), SPI_NODE_NOTICED);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_poll_failure(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL), *bw = mk(b, "B", NULL);
  fleet(bw);
  spi_notice mine = notice("i-bbb", bw->now + 60 * SEC, "mine");
  hand(bw, &mine);
  spi_notice n = notice("i-aaa", a->now + 120 * SEC, "theirs");
  hand(a, &n);
  b->fail_poll = 1;
  assert_int_equal(spi_engine_tick(bw->e), SPI_EMODULE);
  assert_non_null(
      strstr(spi_engine_errmsg(bw->e), "fleet bus \"fake\": poll: read timed out"));
  spi_fleet_stats s = stats(bw);
  assert_int_equal(s.poll_failed, 1);
  assert_int_equal(s.polls, 1);
  /* What this engine knows stands. */
  assert_int_equal(state_of(bw, "i-bbb"), SPI_NODE_NOTICED);
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_ACTIVE);
  b->fail_poll = 0;
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_NOTICED);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_poll_is_bounded(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL);
  world *bw = mk(b, "B", "\"fleet\":{\"max_per_poll\":2}");
  char node[32];
  for (int i = 0; i < 5; i++) {
    snprintf(node, sizeof node, "i-%d", i);
    spi_notice n = notice(node, a->now + 120 * SEC, node);
    hand(a, &n);
  }
  size_t want[] = {2, 4, 5, 5};
  for (size_t t = 0; t < 4; t++) {
    assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
    assert_int_equal(stats(bw).applied, want[t]);
  }
  assert_int_equal(state_of(bw, "i-4"), SPI_NODE_NOTICED);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_plans_for_remote_notice(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL), *bw = mk(b, "B", NULL);
  fleet(bw);
  char p[32];
  prompt_for(bw, "spot-a", p, sizeof p);
  spi_decision d;
  route(bw, p, &d); /* B's own ticket on A's noticed machine */
  assert_int_equal(spi_ticket_progress(bw->e, d.ticket, 190), SPI_OK);
  spi_ticket_plan plans[2];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 99;
  assert_int_equal(spi_engine_node_plans(bw->e, "i-aaa", 5, plans, 2, &np),
                   SPI_OK);
  assert_int_equal(np, 0); /* not noticed here yet */
  spi_notice n = notice("i-aaa", a->now + 120 * SEC, "k");
  hand(a, &n);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(spi_engine_node_plans(bw->e, "i-aaa", 5, plans, 2, &np),
                   SPI_OK);
  assert_int_equal(np, 1);
  assert_int_equal(plans[0].ticket, d.ticket);
  assert_int_equal(plans[0].action, SPI_ACTION_DRAIN);
  assert_string_equal(plans[0].replica_id, "spot-a");
  assert_true(plans[0].deadline_s > 119 && plans[0].deadline_s <= 120);
  /* No room: the count and SPI_EBUFSIZE. */
  assert_int_equal(spi_engine_node_plans(bw->e, "i-aaa", 5, plans, 0, &np),
                   SPI_EBUFSIZE);
  assert_int_equal(np, 1);
  assert_int_equal(spi_engine_node_plans(bw->e, "", 0, plans, 2, &np),
                   SPI_EINVAL);
  plans[0].struct_size = 8;
  assert_int_equal(spi_engine_node_plans(bw->e, "i-aaa", 5, plans, 2, &np),
                   SPI_EINVAL);
  finish(bw, d.ticket);
  done(a);
  done(bw);
  broker_free(b);
}

static void test_withdrawal_and_advice_shared(void **st) {
  (void)st;
  broker *b = broker_new();
  world *a = mk(b, "A", NULL), *bw = mk(b, "B", NULL);
  fleet(bw);
  spi_notice n = notice("i-aaa", a->now + 600 * SEC, "ev-1");
  n.kind = SPI_NOTICE_MAINTENANCE;
  hand(a, &n);
  spi_notice adv = notice("i-bbb", 0, "rebalance-1");
  adv.kind = SPI_NOTICE_REBALANCE;
  hand(a, &adv);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(state_of(bw, "i-bbb"), SPI_NODE_ADVISED);
  spi_notice w = n;
  w.active = 0;
  snprintf(w.dedup_key, sizeof w.dedup_key, "ev-1:canceled");
  hand(a, &w);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(state_of(bw, "i-aaa"), SPI_NODE_ACTIVE);
  done(a);
  done(bw);
  broker_free(b);
}

static int bad_configure(void *state, const char *json, size_t len,
                         void **out, char *err, size_t cap) {
  (void)state, (void)json, (void)len, (void)out, (void)err, (void)cap;
  return SPI_OK;
}

static void test_config_and_registration(void **st) {
  (void)st;
  broker *b = broker_new();
  world *w = mk(b, "A", NULL);
  spi_engine *e = w->e;
  const char *cases[][2] = {
      {"{\"modules\":{\"fleet_bus\":\"nope\"}}", "modules.fleet_bus"},
      {"{\"modules\":{\"fleet_bus\":3}}", "modules.fleet_bus"},
      {"{\"fleet\":{\"max_per_poll\":0}}", "fleet.max_per_poll"},
      {"{\"fleet\":{\"max_per_pol\":5}}", "fleet.max_per_pol"},
      {"{\"fleet\":[]}", "fleet"},
      {"{\"modules\":{\"fleet_bus\":\"fake\"},"
       "\"module_config\":{\"fake\":{\"refuse\":1}}}",
       "WRONGPASS"},
  };
  int want[] = {SPI_ENOTFOUND, SPI_ETYPE, SPI_ERANGE, SPI_EUNKNOWN, SPI_ETYPE,
                SPI_EIO};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    assert_int_equal(spi_engine_configure(e, cases[i][0], strlen(cases[i][0])),
                     want[i]);
    assert_non_null(strstr(spi_engine_errmsg(e), cases[i][1]));
    /* The running configuration and its bus are untouched. */
    assert_int_equal(stats(w).configured, 1);
  }
  assert_int_equal(b->live, 1);
  char buf[8192];
  size_t need = 0;
  assert_int_equal(spi_engine_config_json(e, buf, sizeof buf, &need), SPI_OK);
  assert_non_null(strstr(buf, "\"fleet_bus\":\"fake\""));
  assert_non_null(strstr(buf, "\"max_per_poll\":256"));
  /* No bus: no instance, nothing published, ticks are quiet. */
  assert_int_equal(spi_engine_configure(e, "{}", 2), SPI_OK);
  assert_int_equal(b->live, 0);
  assert_int_equal(stats(w).configured, 0);
  spi_notice n = notice("i-x", w->now + SEC, "x");
  hand(w, &n);
  assert_int_equal(spi_engine_tick(e), SPI_OK);
  assert_int_equal(broker_count(b), 0);
  /* Registration checks. */
  spi_fleet_bus_module m = fake_module();
  m.poll = NULL;
  assert_int_equal(
      spi_engine_register_module(e, SPI_MODULE_FLEET_BUS, "x", 1, &m, b, NULL),
      SPI_EINVAL);
  m = fake_module();
  m.struct_size = sizeof m - 8;
  assert_int_equal(
      spi_engine_register_module(e, SPI_MODULE_FLEET_BUS, "x", 1, &m, b, NULL),
      SPI_EABI);
  m = fake_module();
  m.configure = bad_configure;
  assert_int_equal(
      spi_engine_register_module(e, SPI_MODULE_FLEET_BUS, "fake", 4, &m, b, NULL),
      SPI_EEXIST);
  const char *name = NULL;
  assert_int_equal(spi_engine_module_name(e, SPI_MODULE_FLEET_BUS, 0, &name),
                   SPI_OK);
  assert_string_equal(name, "fake");
  assert_string_equal(spi_module_kind_name(SPI_MODULE_FLEET_BUS), "fleet_bus");
  spi_fleet_stats s;
  s.struct_size = 8;
  assert_int_equal(spi_engine_fleet_stats(e, &s), SPI_EINVAL);
  assert_int_equal(spi_engine_fleet_stats(e, NULL), SPI_EINVAL);
  done(w);
  broker_free(b);
}

/* A publish that takes its time (a bus at its timeout) holds no pin and
 * no engine lock: replica writers, which wait for pins to end, and a
 * configure that retires the bus's instance go on meanwhile; the retired
 * instance lives until the publish returns. Called pinned, this hangs. */
typedef struct slow {
  world *w;
  int rc;
} slow;

static void *hand_slowly(void *arg) {
  slow *sl = arg;
  spi_notice n = notice("i-aaa", sl->w->now + 120 * SEC, "slow");
  size_t np = 0;
  sl->rc = spi_engine_notice(sl->w->e, &n, NULL, 0, &np);
  return NULL;
}

static void test_slow_bus_blocks_nothing(void **st) {
  (void)st;
  spi_test_watchdog("a publish held while replicas and config change", 30);
  broker *b = broker_new();
  world *a = mk(b, "A", NULL);
  fleet(a);
  b->hold = 1;
  slow sl = {a, -1};
  pthread_t t;
  pthread_create(&t, NULL, hand_slowly, &sl);
  pthread_mutex_lock(&b->mu);
  while (!b->held) pthread_cond_wait(&b->cv, &b->mu);
  pthread_mutex_unlock(&b->mu);
  /* The notice has acted already; the publish is stuck. */
  assert_int_equal(state_of(a, "i-aaa"), SPI_NODE_NOTICED);
  add(a, "spot-z", "i-zzz", SPI_POOL_SPOT, "g5.xlarge", "use1-az3");
  assert_int_equal(spi_replica_remove(a->e, "spot-z", 6), SPI_OK);
  configure(a, "A", "\"fleet\":{\"max_per_poll\":3}");
  pthread_mutex_lock(&b->mu);
  assert_int_equal(b->live, 2); /* the retired one is still in use */
  b->hold = 0;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  pthread_join(t, NULL);
  assert_int_equal(sl.rc, SPI_OK);
  assert_int_equal(b->live, 1);
  /* Its notice went out on the old instance; the cooldown after it on the
   * same one. */
  assert_int_equal(broker_count(b), 2);
  spi_test_watchdog("", 0);
  done(a);
  broker_free(b);
}

/* ------------------------------------------------- everything at once */

#define NODES 120

typedef struct race {
  world *a, *b;
  broker *br;
  atomic_int stop;
} race;

static void *hand_all(void *arg) {
  race *r = arg;
  for (int i = 0; i < NODES; i++) {
    char node[32];
    snprintf(node, sizeof node, "i-r%03d", i);
    spi_notice n = notice(node, r->a->now + 300 * SEC, node);
    size_t np = 0;
    spi_engine_notice(r->a->e, &n, NULL, 0, &np);
  }
  return NULL;
}

static void *tick_loop(void *arg) {
  world *w = arg;
  for (int i = 0; i < 300; i++) spi_engine_tick(w->e);
  return NULL;
}

static void *route_loop(void *arg) {
  race *r = arg;
  spi_request *q = NULL;
  if (spi_request_new(r->b->e, &q) != SPI_OK) return NULL;
  for (int i = 0; i < 300; i++) {
    char p[32];
    snprintf(p, sizeof p, "p%d", i);
    spi_request_reset(q);
    spi_request_set_str(q, SPI_REQ_MODEL, "m", 1);
    spi_request_set_str(q, SPI_REQ_PROMPT, p, strlen(p));
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    if (spi_route(q, &d) == SPI_OK && d.ticket) {
      spi_ticket_result res;
      memset(&res, 0, sizeof res);
      res.struct_size = sizeof res;
      spi_ticket_finish(r->b->e, d.ticket, &res);
    }
  }
  spi_request_free(q);
  return NULL;
}

static void *reconfigure_loop(void *arg) {
  race *r = arg;
  const char *cfg = "{\"modules\":{\"fleet_bus\":\"fake\"},"
                    "\"module_config\":{\"fake\":{\"reader\":\"B\"}},"
                    "\"fleet\":{\"max_per_poll\":7}}";
  for (int i = 0; i < 40; i++) spi_engine_configure(r->b->e, cfg, strlen(cfg));
  return NULL;
}

static void test_concurrent(void **st) {
  (void)st;
  race r;
  r.br = broker_new();
  r.a = mk(r.br, "A", NULL);
  r.b = mk(r.br, "B", NULL);
  fleet(r.b);
  pthread_t t[5];
  pthread_create(&t[0], NULL, hand_all, &r);
  pthread_create(&t[1], NULL, tick_loop, r.a);
  pthread_create(&t[2], NULL, tick_loop, r.b);
  pthread_create(&t[3], NULL, route_loop, &r);
  pthread_create(&t[4], NULL, reconfigure_loop, &r);
  for (int i = 0; i < 5; i++) pthread_join(t[i], NULL);
  /* Whatever the interleaving, B ends up knowing every machine. */
  for (int i = 0; i < NODES / 7 + 2; i++)
    assert_int_equal(spi_engine_tick(r.b->e), SPI_OK);
  for (int i = 0; i < NODES; i++) {
    char node[32];
    snprintf(node, sizeof node, "i-r%03d", i);
    assert_int_equal(state_of(r.b, node), SPI_NODE_NOTICED);
  }
  spi_fleet_stats s = stats(r.b);
  assert_int_equal(s.applied, NODES);
  assert_int_equal(s.published, 0);
  done(r.a);
  done(r.b);
  broker_free(r.br);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_notice_reaches_other_engine),
      cmocka_unit_test(test_cooldown_shared),
      cmocka_unit_test(test_malformed_skipped),
      cmocka_unit_test(test_publish_failure_keeps_local),
      cmocka_unit_test(test_pending_is_bounded),
      cmocka_unit_test(test_poll_failure),
      cmocka_unit_test(test_poll_is_bounded),
      cmocka_unit_test(test_plans_for_remote_notice),
      cmocka_unit_test(test_withdrawal_and_advice_shared),
      cmocka_unit_test(test_config_and_registration),
      cmocka_unit_test(test_slow_bus_blocks_nothing),
      cmocka_unit_test(test_concurrent),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
