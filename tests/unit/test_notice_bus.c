/*
 * test_notice_bus.c - the fleet bus: two engines on one in-process bus (a
 * fake module over a shared list of messages, fake_bus.h). A notice handed
 * to engine A stops routing to its machine in engine B after B's next tick;
 * the spot pool it cools is cooled in B too; nothing B applies is published
 * again; each engine drops its own echo; unreadable messages are skipped
 * and counted; a failing bus loses no local notice, says so in its status,
 * and sends what it kept once it is back, a slow one over several ticks
 * (each tick's sending bounded in time), and never a withdrawal before
 * the notice it withdraws; polls are bounded; the plans for
 * B's own tickets come from spi_engine_node_plans; and engines publishing,
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
#include "unit/fake_bus.h"
#include "watchdog.h"

#define SEC FB_SEC

/* ---------------------------------------------------------- the engines */

/* Route a silver request with prompt p; the ticket stays open. */
static void route(fb_world *w, const char *p, spi_decision *d) {
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

static void finish(fb_world *w, uint64_t ticket) {
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  assert_int_equal(spi_ticket_finish(w->e, ticket, &res), SPI_OK);
}

/* A prompt that w routes to replica id (cold placement spreads them). */
static void prompt_for(fb_world *w, const char *id, char *p, size_t cap) {
  spi_decision d;
  for (int i = 0; i < 1000; i++) {
    snprintf(p, cap, "prefix %d", i);
    route(w, p, &d);
    finish(w, d.ticket);
    if (!strcmp(d.replica_id, id)) return;
  }
  fail_msg("no prompt routes to %s", id);
}

/* The cooldown end on replica id's slot (internal: routing reads it). */
static int64_t cooldown_of(fb_world *w, const char *id) {
  const spi_replica_set *set = atomic_load(&w->e->registry.set);
  for (size_t i = 0; set && i < set->n; i++)
    if (!strcmp(set->r[i].id, id))
      return atomic_load(&w->e->registry.slots[set->r[i].slot].cooldown_until_ns);
  fail_msg("no replica %s", id);
  return 0;
}

/* B's fleet: two spot machines and one on-demand. */
static void fleet(fb_world *w) {
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_add(w, "spot-b", "i-bbb", SPI_POOL_SPOT, "g5.xlarge", "use1-az2");
  fb_add(w, "od-a", "i-odd", SPI_POOL_ON_DEMAND, "g5.xlarge", "use1-az1");
}

/* ----------------------------------------------------------------- tests */

static void test_notice_reaches_other_engine(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *a = two.a, *bw = two.b;
  fleet(a);
  fleet(bw);
  char p[32];
  prompt_for(bw, "spot-a", p, sizeof p);
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "aws:i-aaa:terminate");
  fb_hand(a, &n);
  /* A published the notice and the cooldown of its pool. */
  assert_int_equal(broker_count(b), 2);
  assert_int_equal(fb_stats(a->e).published, 2);
  /* B has not ticked: it still routes there. */
  spi_decision d;
  route(bw, p, &d);
  assert_string_equal(d.replica_id, "spot-a");
  finish(bw, d.ticket);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(bw->to_noticed, 1);
  for (int i = 0; i < 20; i++) {
    char q[48];
    snprintf(q, sizeof q, "other %d", i);
    route(bw, i ? q : p, &d);
    assert_string_not_equal(d.replica_id, "spot-a");
    finish(bw, d.ticket);
  }
  spi_fleet_stats sb = fb_stats(bw->e);
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
  spi_fleet_stats sa = fb_stats(a->e);
  assert_int_equal(sa.received, 2);
  assert_int_equal(sa.duplicates, 2);
  assert_int_equal(sa.applied, 0);
  assert_int_equal(a->to_noticed, 1);
  /* B's own poller then hears the same event: it still gets its plans
   * (none here), and it does not publish what the fleet already has. */
  fb_hand(bw, &n);
  assert_int_equal(bw->to_noticed, 1);
  assert_int_equal(broker_count(b), 4);
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  assert_int_equal(fb_stats(a->e).applied, 0);
  fb_two_done(&two);
}

static void test_cooldown_shared(void **st) {
  (void)st;
  fb_pair two = fb_two("\"router\":{\"pool_cooldown_ms\":180000}",
                     "\"router\":{\"pool_cooldown_ms\":5000}");
  broker *b = two.bus;
  fb_world *a = two.a, *bw = two.b;
  bw->now = a->now + 2 * SEC; /* clocks of two machines */
  fb_add(a, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  /* B runs nothing on A's machine, but a replica in the same pool. */
  fb_add(bw, "spot-c", "i-ccc", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  fb_add(bw, "spot-d", "i-ddd", SPI_POOL_SPOT, "g5.xlarge", "use1-az2");
  char p[32];
  prompt_for(bw, "spot-c", p, sizeof p);
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "k1");
  fb_hand(a, &n);
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
  fb_add(bw, "spot-e", "i-eee", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  assert_int_equal(cooldown_of(bw, "spot-e"), a->now + 180 * SEC);
  /* A cooldown message never shortens one. */
  const char *older = "{\"instance_type\":\"g5.xlarge\",\"type\":\"cooldown\","
                      "\"until_ns\":\"1700000010000000000\",\"v\":1,"
                      "\"zone\":\"use1-az1\"}";
  broker_put(b, older, strlen(older));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(cooldown_of(bw, "spot-c"), a->now + 180 * SEC);
  assert_int_equal(fb_stats(bw->e).duplicates, 1);
  fb_two_done(&two);
}

/* JSON's whitespace is space, tab, LF and CR; cJSON would skip any byte
 * below 0x20. Before a message, between its tokens or after it, such a
 * byte makes it malformed, named with its offset; inside a string it is
 * read like a letter (here: a type no engine knows, so unknown). */
static void test_control_bytes_malformed(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *bw = two.b;
  fleet(bw);
  static const char msg[] = "{\"type\":\"breaker\",\"v\":1}";
  const size_t len = sizeof msg - 1;
  const size_t at[] = {0, 8, len}; /* before, after the colon, after */
  static const char bytes[] = {'\x01', '\x1f', '\0'};
  char t[sizeof msg + 1], want[96];
  uint64_t malformed = 0;
  for (size_t i = 0; i < 3; i++) {
    for (size_t k = 0; k < sizeof bytes; k++) {
      memcpy(t, msg, at[i]);
      t[at[i]] = bytes[k];
      memcpy(t + at[i] + 1, msg + at[i], len - at[i]);
      broker_put(b, t, len + 1);
      assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
      spi_fleet_stats s = fb_stats(bw->e);
      assert_int_equal(s.malformed, ++malformed);
      if (bytes[k] == 0)
        snprintf(want, sizeof want, "message: NUL byte at offset %zu", at[i]);
      else
        snprintf(want, sizeof want,
                 "message: control byte 0x%02x at byte offset %zu",
                 (unsigned)bytes[k], at[i]);
      if (!strstr(s.last_error, want))
        fail_msg("\"%s\", want \"%s\"", s.last_error, want);
    }
  }
  memcpy(t, msg, 10);
  t[10] = '\x01';
  memcpy(t + 11, msg + 10, len - 10);
  broker_put(b, t, len + 1);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  spi_fleet_stats s = fb_stats(bw->e);
  assert_int_equal(s.malformed, malformed);
  assert_int_equal(s.unknown, 1);
  fb_two_done(&two);
}

static void test_malformed_skipped(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *a = two.a, *bw = two.b;
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
      "\"event_id\":\"\",\"kind\":\"terminate\",\"node\":\"\","
      "\"type\":\"notice\",\"v\":1}",
      "{\"type\":\"cooldown\",\"v\":1,\"zone\":\"z\"}",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    broker_put(b, bad[i], strlen(bad[i]));
  /* A newer engine's message (a type, a version, a notice kind it does
   * not know): skipped as unknown, not as broken. */
  const char *newer = "{\"type\":\"breaker\",\"v\":1}";
  const char *v2 = "{\"type\":\"notice\",\"v\":2}";
  const char *kind = "{\"active\":true,\"dedup_key\":\"\",\"deadline_ns\":\"1\","
                     "\"event_id\":\"\",\"kind\":\"explode\",\"node\":\"i-bbb\","
                     "\"type\":\"notice\",\"v\":1}";
  broker_put(b, newer, strlen(newer));
  broker_put(b, v2, strlen(v2));
  broker_put(b, kind, strlen(kind));
  char big[SPI_FLEET_MSG_MAX + 2];
  memset(big, ' ', sizeof big);
  broker_put(b, big, sizeof big);
  /* And a good one after all of them still acts. */
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "good");
  fb_hand(a, &n);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  spi_fleet_stats s = fb_stats(bw->e);
  assert_int_equal(s.malformed, sizeof bad / sizeof bad[0] + 1);
  assert_int_equal(s.unknown, 3);
  assert_int_equal(s.applied, 1);
  assert_int_equal(s.received, sizeof bad / sizeof bad[0] + 5);
  assert_non_null(strstr(s.last_error, "message skipped"));
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(fb_state(bw->e, "i-bbb"), SPI_NODE_ACTIVE);
  fb_two_done(&two);
}

/* A notice every other engine's reader would refuse as malformed (an
 * event_id or dedup_key without its NUL, a control character in a text
 * field, a negative deadline) is refused by spi_engine_notice with
 * SPI_EINVAL naming the field, and acts nowhere: it would otherwise act
 * on the engine it was handed to and be lost on every other. At the
 * limits (63 and 159 bytes, DEL, UTF-8) a notice acts here and on B. */
static void test_notice_the_bus_cannot_carry_is_refused(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  const char *want[] = {"event_id: not NUL-terminated", "dedup_key: not NUL",
                        "node: control character at byte 2",
                        "event_id: control character at byte 2",
                        "dedup_key: control character at byte 1",
                        "deadline_ns: -1 is negative"};
  for (int i = 0; i < 6; i++) {
    spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "k-1");
    if (i == 0) memset(n.event_id, 'e', sizeof n.event_id);
    if (i == 1) memset(n.dedup_key, 'k', sizeof n.dedup_key);
    if (i == 2) n.node[2] = '\x1f';
    if (i == 3) snprintf(n.event_id, sizeof n.event_id, "ev\n1");
    if (i == 4) snprintf(n.dedup_key, sizeof n.dedup_key, "k\t1");
    if (i == 5) n.deadline_ns = -1;
    size_t np = 9;
    assert_int_equal(spi_engine_notice(a->e, &n, NULL, 0, &np), SPI_EINVAL);
    if (!strstr(spi_engine_errmsg(a->e), want[i]))
      fail_msg("case %d: \"%s\", want \"%s\"", i, spi_engine_errmsg(a->e),
               want[i]);
    assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_ACTIVE);
  }
  assert_int_equal(broker_count(two.bus), 0);
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "");
  memset(n.event_id, 'e', sizeof n.event_id - 1);
  memset(n.dedup_key, 'k', sizeof n.dedup_key - 1);
  n.dedup_key[0] = '\x7f';
  memcpy(n.dedup_key + 1, "\xc3\xa9", 2);
  fb_hand(a, &n);
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  spi_fleet_stats s = fb_stats(bw->e);
  assert_int_equal(s.malformed, 0);
  assert_int_equal(s.applied, 1);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  fb_two_done(&two);
}

static void test_publish_failure_keeps_local(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *a = two.a, *bw = two.b;
  fleet(a);
  fleet(bw);
  char p[32];
  prompt_for(a, "spot-a", p, sizeof p);
  spi_decision d;
  route(a, p, &d); /* open on spot-a */
  b->fail_publish = 1;
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "k");
  spi_ticket_plan plans[4];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  /* The notice acts here and its plan comes back: the bus is not asked
   * before, and its failure is no failure of this call. */
  assert_int_equal(spi_engine_notice(a->e, &n, plans, 4, &np), SPI_OK);
  assert_int_equal(np, 1);
  assert_int_equal(plans[0].ticket, d.ticket);
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_NOTICED);
  spi_fleet_stats s = fb_stats(a->e);
  assert_int_equal(s.publish_failed, 1);
  assert_int_equal(s.pending, 2); /* the notice, and the cooldown behind */
  assert_non_null(strstr(s.last_error, "connection refused"));
  /* The tick says so, and keeps them. */
  assert_int_equal(spi_engine_tick(a->e), SPI_EMODULE);
  const char *msg = spi_engine_errmsg(a->e);
  assert_non_null(strstr(msg, "fleet bus \"fake\": publish: connection refused"));
  assert_int_equal(fb_stats(a->e).pending, 2);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  /* Back: the next tick sends both, in order, and B gets them. */
  b->fail_publish = 0;
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  s = fb_stats(a->e);
  assert_int_equal(s.pending, 0);
  assert_int_equal(s.published, 2);
  assert_non_null(strstr(b->msg[0], "\"type\":\"notice\""));
  assert_non_null(strstr(b->msg[1], "\"type\":\"cooldown\""));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  finish(a, d.ticket);
  fb_two_done(&two);
}

static void test_pending_is_bounded(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *a = two.a, *bw = two.b;
  b->fail_publish = 1;
  char node[32];
  for (int i = 0; i < SPI_FLEET_PENDING_MAX + 10; i++) {
    snprintf(node, sizeof node, "i-%04d", i);
    spi_notice n = fb_notice(node, a->now + 120 * SEC, node);
    fb_hand(a, &n);
  }
  spi_fleet_stats s = fb_stats(a->e);
  assert_int_equal(s.pending, SPI_FLEET_PENDING_MAX);
  assert_int_equal(s.dropped, 10);
  assert_int_equal(s.publish_failed, 1); /* the rest queued behind it */
  b->fail_publish = 0;
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  assert_int_equal(broker_count(b), SPI_FLEET_PENDING_MAX);
  /* The oldest went: the newest arrive. */
  assert_non_null(strstr(b->msg[0], "i-0010"));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-0009"), SPI_NODE_ACTIVE);
  assert_int_equal(fb_state(bw->e, "i-0010"), SPI_NODE_NOTICED);
  fb_two_done(&two);
}

/* A bus that takes every message, each publish taking per_send of the
 * engine's clock (a server that answers near the module's timeout), over
 * the broker; sends counts the publishes. */
typedef struct slow_bus {
  broker *b;
  fb_world *w;
  int64_t per_send;
  int sends;
} slow_bus;

static int slow_configure(void *state, const char *json, size_t len,
                          void **out, char *err, size_t cap) {
  return broker_configure(((slow_bus *)state)->b, json, len, out, err, cap);
}

static void slow_release(void *state, void *instance) {
  broker_release(((slow_bus *)state)->b, instance);
}

static int slow_publish(void *state, void *instance, const char *msg,
                        size_t len, char *err, size_t cap) {
  slow_bus *sb = state;
  sb->w->now += sb->per_send;
  sb->sends++;
  return broker_publish(sb->b, instance, msg, len, err, cap);
}

static int slow_poll(void *state, void *instance, size_t max,
                     spi_fleet_msg_fn fn, void *ud, char *err, size_t cap) {
  return broker_poll(((slow_bus *)state)->b, instance, max, fn, ud, err, cap);
}

/* Hand n notices while the bus refuses them (kept), named prefix0.. */
static void keep_n(slow_bus *sb, const char *prefix, int n) {
  sb->b->fail_publish = 1;
  for (int i = 0; i < n; i++) {
    char node[32];
    snprintf(node, sizeof node, "%s%d", prefix, i);
    spi_notice no = fb_notice(node, sb->w->now + 3600 * SEC, node);
    fb_hand(sb->w, &no);
  }
  sb->b->fail_publish = 0;
}

/* One tick: how many publishes it made. */
static int tick_sends(slow_bus *sb) {
  sb->sends = 0;
  assert_int_equal(spi_engine_tick(sb->w->e), SPI_OK);
  return sb->sends;
}

/* A bus that is back but takes each message slowly (every publish 1 s, as
 * near a 1 s timeout) holds a tick for one publish, not one per kept
 * message: what was kept goes out over the next ticks, oldest first, none
 * dropped, and a notice handed meanwhile goes out after it. A quick bus
 * still sends everything kept in one tick, and a clock stepped back ends
 * the tick's sending too. */
static void test_slow_bus_tick_is_bounded(void **st) {
  (void)st;
  broker *b = broker_new();
  fb_world *a = fb_mk(NULL, NULL);
  slow_bus sb = {b, a, SEC, 0};
  spi_fleet_bus_module m =
      fb_module(slow_configure, slow_release, slow_publish, slow_poll);
  assert_int_equal(spi_engine_register_module(a->e, SPI_MODULE_FLEET_BUS,
                                              "slow", 4, &m, &sb, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"fleet_bus\":\"slow\"},"
                    "\"module_config\":{\"slow\":{\"reader\":\"A\"}}}";
  assert_int_equal(spi_engine_configure(a->e, cfg, strlen(cfg)), SPI_OK);
  keep_n(&sb, "i-", 6);
  assert_int_equal(fb_stats(a->e).pending, 6);
  assert_int_equal(tick_sends(&sb), 1);
  assert_int_equal(fb_stats(a->e).pending, 5);
  spi_notice late = fb_notice("i-late", a->now + 3600 * SEC, "late");
  sb.sends = 0;
  fb_hand(a, &late); /* queued behind the kept ones, not sent */
  assert_int_equal(sb.sends, 0);
  assert_int_equal(fb_stats(a->e).pending, 6);
  for (int t = 0; t < 6; t++) {
    assert_int_equal(tick_sends(&sb), 1);
    assert_int_equal(fb_stats(a->e).pending, (uint64_t)(5 - t));
  }
  assert_int_equal(tick_sends(&sb), 0);
  spi_fleet_stats s = fb_stats(a->e);
  assert_int_equal(s.dropped, 0);
  assert_int_equal(broker_count(b), 7);
  const char *want[] = {"i-0", "i-1", "i-2", "i-3", "i-4", "i-5", "i-late"};
  for (size_t i = 0; i < 7; i++) {
    char node[40];
    snprintf(node, sizeof node, "\"node\":\"%s\"", want[i]);
    if (!strstr(b->msg[i], node)) fail_msg("message %zu: %s", i, b->msg[i]);
  }
  sb.per_send = SEC / 1000; /* 1 ms a publish: all in one tick */
  keep_n(&sb, "q-", 6);
  assert_int_equal(tick_sends(&sb), 6);
  sb.per_send = -SEC; /* the clock steps back */
  keep_n(&sb, "c-", 3);
  assert_int_equal(tick_sends(&sb), 1);
  assert_int_equal(fb_stats(a->e).pending, 2);
  assert_int_equal(fb_stats(a->e).dropped, 0);
  fb_done(a);
  broker_free(b);
}

static void test_poll_failure(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *a = two.a, *bw = two.b;
  fleet(bw);
  spi_notice mine = fb_notice("i-bbb", bw->now + 60 * SEC, "mine");
  fb_hand(bw, &mine);
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "theirs");
  fb_hand(a, &n);
  b->fail_poll = 1;
  assert_int_equal(spi_engine_tick(bw->e), SPI_EMODULE);
  assert_non_null(
      strstr(spi_engine_errmsg(bw->e), "fleet bus \"fake\": poll: read timed out"));
  spi_fleet_stats s = fb_stats(bw->e);
  assert_int_equal(s.poll_failed, 1);
  assert_int_equal(s.polls, 1);
  /* What this engine knows stands. */
  assert_int_equal(fb_state(bw->e, "i-bbb"), SPI_NODE_NOTICED);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  b->fail_poll = 0;
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  fb_two_done(&two);
}

/* A message the engine has no memory to take stays with the bus: nothing
 * of it is read (its length was once left behind without its bytes), and
 * the next poll takes it. */
static void test_poll_out_of_memory(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  fleet(bw);
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "theirs");
  fb_hand(a, &n);
  bw->fail_from = 100; /* a message of more than 60 bytes cannot follow its
                          length in the first 64-byte buffer */
  spi_engine_tick(bw->e);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(fb_stats(bw->e).malformed, 0);
  bw->fail_from = 0;
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(fb_stats(bw->e).applied, 1);
  fb_two_done(&two);
}

/* A notice this engine could not take (no memory for its table of
 * machines, made at the first notice) is not remembered as applied:
 * another engine's copy of it acts once it can. */
static void test_unapplied_notice_applies_later(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *a = two.a, *bw = two.b;
  fleet(bw);
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "theirs");
  fb_hand(a, &n);
  size_t copy = broker_count(b) - 1;
  bw->fail_from = 16384; /* the table, not the message */
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  bw->fail_from = 0;
  spi_fleet_stats s = fb_stats(bw->e);
  assert_int_equal(s.applied, 0);
  assert_non_null(strstr(s.last_error, "not applied"));
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  pthread_mutex_lock(&b->mu);
  broker_put(b, b->msg[copy], b->len[copy]); /* a third engine's copy */
  pthread_mutex_unlock(&b->mu);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  s = fb_stats(bw->e);
  assert_int_equal(s.applied, 1);
  assert_int_equal(s.duplicates, 0);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  fb_two_done(&two);
}

static void test_poll_is_bounded(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, "\"fleet\":{\"max_per_poll\":2}");
  fb_world *a = two.a, *bw = two.b;
  char node[32];
  for (int i = 0; i < 5; i++) {
    snprintf(node, sizeof node, "i-%d", i);
    spi_notice n = fb_notice(node, a->now + 120 * SEC, node);
    fb_hand(a, &n);
  }
  size_t want[] = {2, 4, 5, 5};
  for (size_t t = 0; t < 4; t++) {
    assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
    assert_int_equal(fb_stats(bw->e).applied, want[t]);
  }
  assert_int_equal(fb_state(bw->e, "i-4"), SPI_NODE_NOTICED);
  fb_two_done(&two);
}

static void test_plans_for_remote_notice(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
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
  spi_notice n = fb_notice("i-aaa", a->now + 120 * SEC, "k");
  fb_hand(a, &n);
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
  fb_two_done(&two);
}

/* A notice from the bus that brings a noticed machine's deadline forward
 * is reported as a NOTICED -> NOTICED transition: the host hears of bus
 * notices only from its callback, and a stream it was told to DRAIN
 * against the old deadline must now be replayed. (The deadline used to
 * move silently.) */
static void test_bus_deadline_brought_forward_is_reported(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  fb_add(bw, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  spi_request_reset(bw->r);
  spi_request_set_str(bw->r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(bw->r, SPI_REQ_PROMPT, "hello", 5);
  spi_request_set_str(bw->r, SPI_REQ_CLASS, "silver", 6);
  spi_request_set_int(bw->r, SPI_REQ_MAX_OUTPUT_TOKENS, 20000);
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  assert_int_equal(spi_route(bw->r, &d), SPI_OK);
  assert_string_equal(d.replica_id, "spot-a");
  /* B's own poller: maintenance a day away. 20000 tokens at 50/s end in
   * 400 s: DRAIN. */
  spi_notice m = fb_notice("i-aaa", bw->now + 86400 * SEC, "aws:scheduled:ev-9");
  m.kind = SPI_NOTICE_MAINTENANCE;
  spi_ticket_plan plans[4];
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  assert_int_equal(spi_engine_notice(bw->e, &m, plans, 4, &np), SPI_OK);
  assert_int_equal(np, 1);
  assert_int_equal(plans[0].action, SPI_ACTION_DRAIN);
  int seen = bw->transitions;
  /* A hears the spot interruption of the same machine: two minutes. */
  spi_notice t = fb_notice("i-aaa", bw->now + 120 * SEC,
                           "aws:action:i-aaa:terminate");
  fb_hand(a, &t);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(bw->transitions, seen + 1);
  assert_string_equal(bw->last_node, "i-aaa");
  assert_int_equal(bw->last_from, SPI_NODE_NOTICED);
  assert_int_equal(bw->last_to, SPI_NODE_NOTICED);
  plans[0].struct_size = sizeof plans[0];
  assert_int_equal(spi_engine_node_plans(bw->e, "i-aaa", 5, plans, 4, &np),
                   SPI_OK);
  assert_int_equal(np, 1);
  assert_int_equal(plans[0].action, SPI_ACTION_REPLAY);
  assert_true(plans[0].deadline_s > 119 && plans[0].deadline_s <= 120);
  /* A later deadline moves nothing and says nothing. */
  spi_notice late = fb_notice("i-aaa", bw->now + 3600 * SEC, "late");
  fb_hand(a, &late);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(bw->transitions, seen + 1);
  finish(bw, d.ticket);
  fb_two_done(&two);
}

/* An event another engine heard moved to an earlier deadline, under the
 * dedup key this engine's own poller handed in, moves the deadline here
 * too (NOTICED -> NOTICED). It used to be dropped as a repeat of the key,
 * and the machine kept the later deadline here. */
static void test_bus_event_moved_earlier_applies(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  fb_add(bw, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5.xlarge", "use1-az1");
  spi_notice x = fb_notice("i-aaa", bw->now + 600 * SEC, "aws:scheduled:ev-1");
  x.kind = SPI_NOTICE_STOP;
  snprintf(x.event_id, sizeof x.event_id, "ev-1");
  fb_hand(bw, &x); /* B's own poller */
  int seen = bw->transitions;
  x.deadline_ns = bw->now + 120 * SEC; /* moved earlier; A's poller hears it */
  fb_hand(a, &x);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(bw->transitions, seen + 1);
  assert_int_equal(bw->last_from, SPI_NODE_NOTICED);
  assert_int_equal(bw->last_to, SPI_NODE_NOTICED);
  bw->now += 121 * SEC;
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_TERMINATED);
  fb_two_done(&two);
}

/* An event moved earlier, applied from the bus under a dedup key this
 * engine's poller handed in, is the key's deadline here from then on: the
 * poller's copies later than it are repeats (they published and planned
 * again), and so is any copy once that deadline has passed (a dropped
 * machine was noticed again). The key kept the deadline the poller had
 * handed in. The poller's own first copy of the earlier deadline still
 * acts, as it does for a key it has not handed in. */
static void test_bus_moved_deadline_is_the_keys(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  spi_notice x = fb_notice("i-zzz", bw->now + 600 * SEC, "aws:scheduled:ev-2");
  x.kind = SPI_NOTICE_STOP;
  snprintf(x.event_id, sizeof x.event_id, "ev-2");
  fb_hand(bw, &x); /* B's own poller; i-zzz runs nothing here */
  x.deadline_ns = bw->now + 120 * SEC; /* moved earlier; A's poller hears it */
  fb_hand(a, &x);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(bw->last_to, SPI_NODE_NOTICED);
  uint64_t published = fb_stats(bw->e).published;
  /* Between the two: a repeat. */
  x.deadline_ns = bw->now + 300 * SEC;
  fb_hand(bw, &x);
  assert_int_equal(fb_stats(bw->e).published, published);
  /* The poller's first copy of the bus's deadline acts once. */
  x.deadline_ns = bw->now + 120 * SEC;
  fb_hand(bw, &x);
  assert_int_equal(fb_stats(bw->e).published, published + 1);
  fb_hand(bw, &x);
  assert_int_equal(fb_stats(bw->e).published, published + 1);
  fb_two_done(&two);
  /* Past the bus's deadline: the machine is dropped, and the event
   * served again does not notice it again. */
  two = fb_two(NULL, NULL);
  a = two.a, bw = two.b;
  x.deadline_ns = bw->now + 600 * SEC;
  fb_hand(bw, &x);
  x.deadline_ns = bw->now + 120 * SEC;
  fb_hand(a, &x);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  bw->now += 121 * SEC;
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(bw->terminated, 1);
  int noticed = bw->to_noticed;
  fb_hand(bw, &x);
  assert_int_equal(bw->to_noticed, noticed);
  assert_int_equal(fb_state(bw->e, "i-zzz"), SPI_NODE_ACTIVE);
  fb_two_done(&two);
}

static void test_withdrawal_and_advice_shared(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  fleet(bw);
  spi_notice n = fb_notice("i-aaa", a->now + 600 * SEC, "ev-1");
  n.kind = SPI_NOTICE_MAINTENANCE;
  snprintf(n.event_id, sizeof n.event_id, "ev-1");
  fb_hand(a, &n);
  spi_notice adv = fb_notice("i-bbb", 0, "rebalance-1");
  adv.kind = SPI_NOTICE_REBALANCE;
  fb_hand(a, &adv);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(fb_state(bw->e, "i-bbb"), SPI_NODE_ADVISED);
  spi_notice w = n;
  w.active = 0;
  snprintf(w.dedup_key, sizeof w.dedup_key, "ev-1:canceled");
  fb_hand(a, &w);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_two_done(&two);
}

static int bad_configure(void *state, const char *json, size_t len,
                         void **out, char *err, size_t cap) {
  (void)state, (void)json, (void)len, (void)out, (void)err, (void)cap;
  return SPI_OK;
}

static void test_config_and_registration(void **st) {
  (void)st;
  broker *b = broker_new();
  fb_world *w = fb_on_bus(b, "A", NULL);
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
      /* Refused before the bus is handed the section (it would connect). */
      {"{\"modules\":{\"fleet_bus\":\"fake\"},\"module_config\":{\"fake\":[1,2]}}",
       "module_config.fake: must be an object"},
  };
  int want[] = {SPI_ENOTFOUND, SPI_ETYPE, SPI_ERANGE, SPI_EUNKNOWN, SPI_ETYPE,
                SPI_EIO, SPI_ETYPE};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    assert_int_equal(spi_engine_configure(e, cases[i][0], strlen(cases[i][0])),
                     want[i]);
    assert_non_null(strstr(spi_engine_errmsg(e), cases[i][1]));
    /* The running configuration and its bus are untouched. */
    assert_int_equal(fb_stats(w->e).configured, 1);
  }
  assert_int_equal(b->live, 1);
  assert_int_equal(b->nreaders, 1); /* no configure of the bus saw [1,2] */
  char buf[8192];
  size_t need = 0;
  assert_int_equal(spi_engine_config_json(e, buf, sizeof buf, &need), SPI_OK);
  assert_non_null(strstr(buf, "\"fleet_bus\":\"fake\""));
  assert_non_null(strstr(buf, "\"max_per_poll\":256"));
  /* No bus: no instance, nothing published, ticks are quiet. */
  assert_int_equal(spi_engine_configure(e, "{}", 2), SPI_OK);
  assert_int_equal(b->live, 0);
  assert_int_equal(fb_stats(w->e).configured, 0);
  spi_notice n = fb_notice("i-x", w->now + SEC, "x");
  fb_hand(w, &n);
  assert_int_equal(spi_engine_tick(e), SPI_OK);
  assert_int_equal(broker_count(b), 0);
  /* Registration checks. */
  spi_fleet_bus_module m = broker_module();
  m.poll = NULL;
  assert_int_equal(
      spi_engine_register_module(e, SPI_MODULE_FLEET_BUS, "x", 1, &m, b, NULL),
      SPI_EINVAL);
  m = broker_module();
  m.struct_size = sizeof m - 8;
  assert_int_equal(
      spi_engine_register_module(e, SPI_MODULE_FLEET_BUS, "x", 1, &m, b, NULL),
      SPI_EABI);
  m = broker_module();
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
  fb_done(w);
  broker_free(b);
}

/* A publish that takes its time (a bus at its timeout) holds no pin and
 * no engine lock: replica writers, which wait for pins to end, and a
 * configure that retires the bus's instance go on meanwhile; the retired
 * instance lives until the publish returns. Called pinned, this hangs. */
typedef struct slow {
  fb_world *w;
  int rc;
} slow;

static void *hand_slowly(void *arg) {
  slow *sl = arg;
  spi_notice n = fb_notice("i-aaa", sl->w->now + 120 * SEC, "slow");
  size_t np = 0;
  sl->rc = spi_engine_notice(sl->w->e, &n, NULL, 0, &np);
  return NULL;
}

static void test_slow_bus_blocks_nothing(void **st) {
  (void)st;
  spi_test_watchdog("a publish held while replicas and config change", 30);
  broker *b = broker_new();
  fb_world *a = fb_on_bus(b, "A", NULL);
  fleet(a);
  b->hold = 1;
  slow sl = {a, -1};
  pthread_t t;
  pthread_create(&t, NULL, hand_slowly, &sl);
  pthread_mutex_lock(&b->mu);
  while (!b->held) pthread_cond_wait(&b->cv, &b->mu);
  pthread_mutex_unlock(&b->mu);
  /* The notice has acted already; the publish is stuck. */
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_NOTICED);
  fb_add(a, "spot-z", "i-zzz", SPI_POOL_SPOT, "g5.xlarge", "use1-az3");
  assert_int_equal(spi_replica_remove(a->e, "spot-z", 6), SPI_OK);
  char cfg[512];
  fb_bus_config(cfg, sizeof cfg, "A", "\"fleet\":{\"max_per_poll\":3}");
  assert_int_equal(spi_engine_configure(a->e, cfg, strlen(cfg)), SPI_OK);
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
  fb_done(a);
  broker_free(b);
}

/* A bus over the broker whose first publish waits until released and
 * then fails (a server that times out); every other publish goes
 * through. */
typedef struct gated_bus {
  broker *b;
  int calls, entered, released;
} gated_bus;

static int gated_configure(void *state, const char *json, size_t len,
                           void **out, char *err, size_t cap) {
  return broker_configure(((gated_bus *)state)->b, json, len, out, err, cap);
}

static void gated_release(void *state, void *instance) {
  broker_release(((gated_bus *)state)->b, instance);
}

static int gated_publish(void *state, void *instance, const char *msg,
                         size_t len, char *err, size_t cap) {
  gated_bus *g = state;
  pthread_mutex_lock(&g->b->mu);
  int first = g->calls++ == 0;
  if (first) {
    g->entered = 1;
    pthread_cond_broadcast(&g->b->cv);
    while (!g->released) pthread_cond_wait(&g->b->cv, &g->b->mu);
  }
  pthread_mutex_unlock(&g->b->mu);
  if (first) return snprintf(err, cap, "timed out"), SPI_EIO;
  return broker_publish(g->b, instance, msg, len, err, cap);
}

static int gated_poll(void *state, void *instance, size_t max,
                      spi_fleet_msg_fn fn, void *ud, char *err, size_t cap) {
  return broker_poll(((gated_bus *)state)->b, instance, max, fn, ud, err, cap);
}

typedef struct handing {
  fb_world *w;
  spi_notice n;
} handing;

static void *hand_one(void *arg) {
  handing *h = arg;
  size_t np = 0;
  spi_engine_notice(h->w->e, &h->n, NULL, 0, &np);
  return NULL;
}

/* A withdrawal handed in while its notice's publish is still under way on
 * another thread waits behind it; when that publish fails, the notice is
 * kept ahead of the withdrawal, so the bus gets the notice first and every
 * other engine ends with the machine at work, as here. (A publish in
 * flight used to be neither kept nor a tick's sending: the withdrawal went
 * out at once, the failed notice after it, and B stayed NOTICED.) */
static void test_withdrawal_waits_for_notice_in_flight(void **st) {
  (void)st;
  spi_test_watchdog("a withdrawal behind a notice in flight", 30);
  broker *b = broker_new();
  gated_bus g = {b, 0, 0, 0};
  fb_world *a = fb_mk(NULL, NULL);
  spi_fleet_bus_module m =
      fb_module(gated_configure, gated_release, gated_publish, gated_poll);
  assert_int_equal(spi_engine_register_module(a->e, SPI_MODULE_FLEET_BUS,
                                              "gated", 5, &m, &g, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"fleet_bus\":\"gated\"},"
                    "\"module_config\":{\"gated\":{\"reader\":\"A\"}}}";
  assert_int_equal(spi_engine_configure(a->e, cfg, strlen(cfg)), SPI_OK);
  fb_world *bw = fb_on_bus(b, "B", NULL);
  handing h = {a, fb_notice("i-aaa", a->now + 600 * SEC, "aws:scheduled:ev-1")};
  h.n.kind = SPI_NOTICE_MAINTENANCE;
  snprintf(h.n.event_id, sizeof h.n.event_id, "ev-1");
  pthread_t t;
  pthread_create(&t, NULL, hand_one, &h);
  pthread_mutex_lock(&b->mu);
  while (!g.entered) pthread_cond_wait(&b->cv, &b->mu);
  pthread_mutex_unlock(&b->mu);
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_NOTICED);
  spi_notice w = h.n;
  w.active = 0;
  w.deadline_ns = 0;
  snprintf(w.dedup_key, sizeof w.dedup_key, "aws:scheduled:ev-1:canceled");
  size_t np = 0;
  int rc = spi_engine_notice(a->e, &w, NULL, 0, &np);
  pthread_mutex_lock(&b->mu);
  g.released = 1;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  pthread_join(t, NULL);
  spi_test_watchdog("", 0);
  assert_int_equal(rc, SPI_OK);
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(fb_stats(a->e).pending, 2);
  assert_int_equal(spi_engine_tick(a->e), SPI_OK); /* sends what was kept */
  assert_int_equal(fb_stats(a->e).pending, 0);
  assert_int_equal(broker_count(b), 2);
  assert_non_null(strstr(b->msg[0], "\"active\":true"));
  assert_non_null(strstr(b->msg[1], "\"active\":false"));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_done(a);
  fb_done(bw);
  broker_free(b);
}

/* Two events of one machine alike but for their event id (same kind and
 * deadline, no dedup key) are two messages to every other engine, and
 * the withdrawal of one leaves the other holding the machine there as
 * here. The bus's key had no event id: the second was dropped as a
 * duplicate, and the withdrawal put the machine back to work. */
static void test_events_alike_but_for_their_id_both_apply(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  spi_notice x = fb_notice("i-aaa", a->now + 600 * SEC, "");
  x.kind = SPI_NOTICE_MAINTENANCE;
  snprintf(x.event_id, sizeof x.event_id, "ev-x");
  spi_notice y = x;
  snprintf(y.event_id, sizeof y.event_id, "ev-y");
  fb_hand(a, &x);
  fb_hand(a, &y);
  spi_notice wx = x;
  wx.active = 0;
  wx.deadline_ns = 0;
  fb_hand(a, &wx);
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_NOTICED); /* y holds */
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  spi_fleet_stats s = fb_stats(bw->e);
  assert_int_equal(s.received, 3);
  assert_int_equal(s.applied, 3);
  assert_int_equal(s.duplicates, 0);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  /* A's own three come back as duplicates. */
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  assert_int_equal(fb_stats(a->e).duplicates, 3);
  fb_two_done(&two);
}

/* Holds the first ACTIVE -> NOTICED callback until released. */
typedef struct gate {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int in_cb, go, first;
} gate;

static void blocking_cb(void *ud, const char *node, size_t len, int32_t from,
                        int32_t to) {
  (void)node, (void)len;
  gate *g = ud;
  pthread_mutex_lock(&g->mu);
  if (g->first && from == SPI_NODE_ACTIVE && to == SPI_NODE_NOTICED) {
    g->first = 0;
    g->in_cb = 1;
    pthread_cond_broadcast(&g->cv);
    while (!g->go) pthread_cond_wait(&g->cv, &g->mu);
  }
  pthread_mutex_unlock(&g->mu);
}

/* A notice goes on the bus in the order it acted: a withdrawal handed in
 * on another thread while the notice's thread is still in the transition
 * callback (after the locks, before its publish) goes out after it. It
 * used to go out first: every other engine kept the machine NOTICED and
 * terminated it, while the engine that heard both had it at work. */
static void test_withdrawal_waits_for_notice_in_callback(void **st) {
  (void)st;
  spi_test_watchdog("a withdrawal behind a notice in its callback", 30);
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  gate g = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 1};
  assert_int_equal(spi_engine_on_node_transition(a->e, blocking_cb, &g),
                   SPI_OK);
  handing h = {a, fb_notice("i-aaa", a->now + 600 * SEC, "aws:scheduled:ev-1")};
  h.n.kind = SPI_NOTICE_MAINTENANCE;
  snprintf(h.n.event_id, sizeof h.n.event_id, "ev-1");
  pthread_t t;
  pthread_create(&t, NULL, hand_one, &h);
  pthread_mutex_lock(&g.mu);
  while (!g.in_cb) pthread_cond_wait(&g.cv, &g.mu);
  pthread_mutex_unlock(&g.mu);
  spi_notice w = h.n;
  w.active = 0;
  w.deadline_ns = 0;
  snprintf(w.dedup_key, sizeof w.dedup_key, "aws:scheduled:ev-1:canceled");
  size_t np = 0;
  assert_int_equal(spi_engine_notice(a->e, &w, NULL, 0, &np), SPI_OK);
  pthread_mutex_lock(&g.mu);
  g.go = 1;
  pthread_cond_broadcast(&g.cv);
  pthread_mutex_unlock(&g.mu);
  pthread_join(t, NULL);
  spi_test_watchdog("", 0);
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(broker_count(two.bus), 2);
  assert_non_null(strstr(two.bus->msg[0], "\"active\":true"));
  assert_non_null(strstr(two.bus->msg[1], "\"active\":false"));
  assert_int_equal(fb_stats(a->e).pending, 0);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_two_done(&two);
}

/* Engines whose pollers hear the same cloud event each publish it at
 * their own time; the copies are one notice. After the event's withdrawal
 * on A, the copy B published is a repeat there: the machine stays at
 * work instead of being noticed again (and terminated at the deadline). */
static void test_copies_of_one_event_are_one_notice(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  bw->now = a->now + 1; /* the two hosts' clocks differ */
  spi_notice x = fb_notice("i-aaa", a->now + 600 * SEC, "aws:scheduled:ev-1");
  x.kind = SPI_NOTICE_MAINTENANCE;
  snprintf(x.event_id, sizeof x.event_id, "ev-1");
  spi_notice wx = x;
  wx.active = 0;
  wx.deadline_ns = 0;
  snprintf(wx.dedup_key, sizeof wx.dedup_key, "aws:scheduled:ev-1:canceled");
  fb_hand(a, &x);  /* bus: x from A */
  fb_hand(bw, &x); /* B's own poller: x from B */
  fb_hand(a, &wx); /* the event canceled: withdrawal from A */
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  assert_int_equal(fb_state(a->e, "i-aaa"), SPI_NODE_ACTIVE);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_ACTIVE);
  fb_two_done(&two);
}

/* issued_ns is optional within version 1: a notice from an engine that
 * does not send it is applied once (a second copy is a repeat), one with
 * members this engine does not know is applied, and one whose issued_ns
 * is not a time is malformed. */
static void test_issued_is_optional(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *bw = two.b;
  fleet(bw);
  const char *old = "{\"active\":true,\"dedup_key\":\"k-1\",\"deadline_ns\":"
                    "\"1700000600000000000\",\"event_id\":\"\","
                    "\"kind\":\"terminate\",\"node\":\"i-aaa\","
                    "\"type\":\"notice\",\"v\":1}";
  const char *grown = "{\"active\":true,\"dedup_key\":\"k-2\",\"deadline_ns\":"
                      "\"1700000600000000000\",\"event_id\":\"\","
                      "\"issued_ns\":\"5\",\"kind\":\"terminate\","
                      "\"node\":\"i-bbb\",\"region\":\"x\","
                      "\"type\":\"notice\",\"v\":1}";
  const char *bad = "{\"active\":true,\"dedup_key\":\"k-3\",\"deadline_ns\":"
                    "\"1700000600000000000\",\"event_id\":\"\","
                    "\"issued_ns\":5,\"kind\":\"terminate\","
                    "\"node\":\"i-ccc\",\"type\":\"notice\",\"v\":1}";
  broker_put(b, old, strlen(old));
  broker_put(b, old, strlen(old));
  broker_put(b, grown, strlen(grown));
  broker_put(b, bad, strlen(bad));
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  spi_fleet_stats s = fb_stats(bw->e);
  assert_int_equal(s.applied, 2);
  assert_int_equal(s.duplicates, 1);
  assert_int_equal(s.malformed, 1);
  assert_int_equal(fb_state(bw->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(fb_state(bw->e, "i-bbb"), SPI_NODE_NOTICED);
  assert_int_equal(fb_state(bw->e, "i-ccc"), SPI_NODE_ACTIVE);
  fb_two_done(&two);
}

/* Queuing a notice for the bus allocates nothing (it runs under the
 * engine's locks): a notice handed in while memory runs out acts here,
 * its message is kept, and it goes out once memory is back. It used to
 * be dropped. */
static void test_out_of_memory_keeps_message(void **st) {
  (void)st;
  fb_pair two = fb_two(NULL, NULL);
  fb_world *a = two.a, *bw = two.b;
  spi_notice first = fb_notice("i-aaa", a->now + 600 * SEC, "k-aaa");
  fb_hand(a, &first);
  assert_int_equal(broker_count(two.bus), 1);
  a->fail_from = 1;
  spi_notice n = fb_notice("i-bbb", a->now + 600 * SEC, "k-bbb");
  fb_hand(a, &n);
  a->fail_from = 0;
  assert_int_equal(fb_state(a->e, "i-bbb"), SPI_NODE_NOTICED);
  assert_int_equal(fb_stats(a->e).dropped, 0);
  assert_int_equal(fb_stats(a->e).pending, 1);
  assert_int_equal(spi_engine_tick(a->e), SPI_OK);
  assert_int_equal(fb_stats(a->e).pending, 0);
  assert_int_equal(broker_count(two.bus), 2);
  assert_int_equal(spi_engine_tick(bw->e), SPI_OK);
  assert_int_equal(fb_state(bw->e, "i-bbb"), SPI_NODE_NOTICED);
  fb_two_done(&two);
}

/* A notice handed in while another thread's publish is under way goes out
 * before either call returns: the thread that finds the bus busy asks the
 * sender to go on up to its message. It used to stay in the ring until the
 * host's next tick. */
static void test_notice_behind_sender_goes_out(void **st) {
  (void)st;
  spi_test_watchdog("a notice behind another thread's publish", 30);
  fb_pair two = fb_two(NULL, NULL);
  broker *b = two.bus;
  fb_world *a = two.a;
  pthread_mutex_lock(&b->mu);
  b->hold = 1;
  pthread_mutex_unlock(&b->mu);
  handing h = {a, fb_notice("i-aaa", a->now + 600 * SEC, "k-aaa")};
  pthread_t t;
  pthread_create(&t, NULL, hand_one, &h);
  pthread_mutex_lock(&b->mu);
  while (!b->held) pthread_cond_wait(&b->cv, &b->mu);
  pthread_mutex_unlock(&b->mu);
  spi_notice n2 = fb_notice("i-bbb", a->now + 600 * SEC, "k-bbb");
  fb_hand(a, &n2); /* returns at once: another thread is sending */
  pthread_mutex_lock(&b->mu);
  b->hold = 0;
  pthread_cond_broadcast(&b->cv);
  pthread_mutex_unlock(&b->mu);
  pthread_join(t, NULL);
  spi_test_watchdog("", 0);
  assert_int_equal(fb_stats(a->e).pending, 0);
  assert_int_equal(broker_count(b), 2);
  fb_two_done(&two);
}

/* ------------------------------------------------- everything at once */

#define NODES 120

typedef struct race {
  fb_world *a, *b;
  broker *br;
  atomic_int stop;
} race;

static void *hand_all(void *arg) {
  race *r = arg;
  for (int i = 0; i < NODES; i++) {
    char node[32];
    snprintf(node, sizeof node, "i-r%03d", i);
    spi_notice n = fb_notice(node, r->a->now + 300 * SEC, node);
    size_t np = 0;
    spi_engine_notice(r->a->e, &n, NULL, 0, &np);
  }
  return NULL;
}

static void *tick_loop(void *arg) {
  fb_world *w = arg;
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
  fb_pair two = fb_two(NULL, NULL);
  r.br = two.bus;
  r.a = two.a;
  r.b = two.b;
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
    assert_int_equal(fb_state(r.b->e, node), SPI_NODE_NOTICED);
  }
  spi_fleet_stats s = fb_stats(r.b->e);
  assert_int_equal(s.applied, NODES);
  assert_int_equal(s.published, 0);
  fb_two_done(&two);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_notice_reaches_other_engine),
      cmocka_unit_test(test_cooldown_shared),
      cmocka_unit_test(test_malformed_skipped),
      cmocka_unit_test(test_control_bytes_malformed),
      cmocka_unit_test(test_notice_the_bus_cannot_carry_is_refused),
      cmocka_unit_test(test_publish_failure_keeps_local),
      cmocka_unit_test(test_pending_is_bounded),
      cmocka_unit_test(test_slow_bus_tick_is_bounded),
      cmocka_unit_test(test_poll_failure),
      cmocka_unit_test(test_poll_out_of_memory),
      cmocka_unit_test(test_unapplied_notice_applies_later),
      cmocka_unit_test(test_poll_is_bounded),
      cmocka_unit_test(test_plans_for_remote_notice),
      cmocka_unit_test(test_bus_deadline_brought_forward_is_reported),
      cmocka_unit_test(test_bus_event_moved_earlier_applies),
      cmocka_unit_test(test_bus_moved_deadline_is_the_keys),
      cmocka_unit_test(test_withdrawal_and_advice_shared),
      cmocka_unit_test(test_events_alike_but_for_their_id_both_apply),
      cmocka_unit_test(test_config_and_registration),
      cmocka_unit_test(test_slow_bus_blocks_nothing),
      cmocka_unit_test(test_withdrawal_waits_for_notice_in_flight),
      cmocka_unit_test(test_withdrawal_waits_for_notice_in_callback),
      cmocka_unit_test(test_notice_behind_sender_goes_out),
      cmocka_unit_test(test_copies_of_one_event_are_one_notice),
      cmocka_unit_test(test_issued_is_optional),
      cmocka_unit_test(test_out_of_memory_keeps_message),
      cmocka_unit_test(test_concurrent),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
