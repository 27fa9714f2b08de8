/*
 * fake_bus.h - the fleet bus the notice and bus tests run on, and the
 * engines around it.
 *
 * Pieces any test or fuzz target may use (cmocka is not needed: FB_CHECK
 * and FB_OK are cmocka's asserts where cmocka.h was included first, else
 * abort):
 *
 *   fb_module(configure, release, publish, poll)  a fleet-bus vtable
 *   fb_replica(id, node, pool, type, zone)        a replica's description
 *                                                 (64 in flight, $1.8/h
 *                                                 spot, $4.5/h on demand)
 *   fb_add_loaded(e, &ri)                         upsert it, reporting a
 *                                                 light load (1 running)
 *   fb_notice(node, deadline_ns, dedup_key)       an active AWS terminate
 *   fb_stats(e), fb_state(e, node)                fleet stats, node state
 *
 * The in-memory bus, a broker: every message ever published, in order;
 * each reader (named by "reader" in the module's module_config) has a
 * position that outlives its instances, as a stream consumer's last id
 * would. fail_publish and fail_poll make those calls fail; hold makes a
 * publish wait (without the broker's lock) until it is cleared, with held
 * set while one waits; live counts instances not yet released.
 *
 *   broker *b = broker_new();  ... broker_put(b, msg, len) (a message from
 *   elsewhere), broker_count(b) ... broker_free(b) (no instance may be left)
 *
 * holds at most FB_MAX_MSGS messages and FB_READERS readers.
 *
 * An engine on a fake clock (fb_world): its node transitions counted, a
 * request to route with, registered on a broker when one is given; its
 * allocations of w->fail_from bytes or more fail while that is set:
 *
 *   fb_world *w = fb_mk(b_or_NULL, config_or_NULL);
 *   fb_world *w = fb_on_bus(b, "A", extra_or_NULL);   fleet_bus "fake",
 *                                                     reader A, + extra
 *   fb_add(w, id, node, pool, type, zone);            w->max_inflight each
 *   fb_hand(w, &notice);  fb_done(w);
 *
 * and two engines, A and B, on one new broker: fb_two(extra_a, extra_b),
 * fb_two_done.
 */
#ifndef SPI_TEST_FAKE_BUS_H
#define SPI_TEST_FAKE_BUS_H

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"

#include "fake_fleet.h"

/* FB_OK(call): the call returns SPI_OK (cmocka shows the status). */
#ifdef assert_true
#define FB_CHECK(cond) assert_true(cond)
#define FB_OK(call) assert_int_equal((call), SPI_OK)
#else
#define FB_CHECK(cond)    \
  do {                    \
    if (!(cond)) abort(); \
  } while (0)
#define FB_OK(call) FB_CHECK((call) == SPI_OK)
#endif

#define FB_SEC 1000000000LL
#define FB_MAX_MSGS 4096
#define FB_READERS 4

/* ------------------------------------------------------------ the parts */

static inline spi_fleet_bus_module fb_module(
    int (*configure)(void *, const char *, size_t, void **, char *, size_t),
    void (*release)(void *, void *),
    int (*publish)(void *, void *, const char *, size_t, char *, size_t),
    int (*poll)(void *, void *, size_t, spi_fleet_msg_fn, void *, char *,
                size_t)) {
  spi_fleet_bus_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.configure = configure;
  m.release = release;
  m.publish = publish;
  m.poll = poll;
  return m;
}

static inline spi_replica_info fb_replica(const char *id, const char *node,
                                          int32_t pool, const char *type,
                                          const char *zone) {
  spi_replica_info ri =
      ff_replica(id, pool, pool == SPI_POOL_SPOT ? 1.8 : 4.5, 64);
  ff_place(&ri, node, type, zone);
  return ri;
}

static inline void fb_add_loaded(spi_engine *e, const spi_replica_info *ri) {
  FB_OK(spi_replica_upsert(e, ri));
  spi_load l = ff_load(1, 0, 0.2);
  FB_OK(spi_replica_report_load(e, ri->id, ri->id_len, &l));
}

static inline spi_notice fb_notice(const char *node, int64_t deadline,
                                   const char *key) {
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

static inline spi_fleet_stats fb_stats(spi_engine *e) {
  spi_fleet_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  FB_OK(spi_engine_fleet_stats(e, &s));
  return s;
}

static inline int32_t fb_state(spi_engine *e, const char *node) {
  int32_t st = 0;
  FB_OK(spi_node_get_state(e, node, strlen(node), &st));
  return st;
}

/* ------------------------------------------------------------ the broker */

typedef struct broker {
  pthread_mutex_t mu;
  char *msg[FB_MAX_MSGS];
  size_t len[FB_MAX_MSGS];
  size_t n;
  char reader[FB_READERS][16];
  size_t next[FB_READERS];
  size_t nreaders;
  int fail_publish, fail_poll;
  int live;
  pthread_cond_t cv;
  int hold, held;
} broker;

typedef struct broker_inst {
  broker *b;
  size_t reader;
} broker_inst;

/* A module_config holding "refuse" is refused as a server would refuse a
 * login. */
static inline int broker_configure(void *state, const char *json, size_t len,
                                   void **out, char *err, size_t cap) {
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
  broker_inst *in = calloc(1, sizeof *in);
  FB_CHECK(in != NULL);
  in->b = b;
  pthread_mutex_lock(&b->mu);
  size_t i = 0;
  while (i < b->nreaders && strcmp(b->reader[i], name)) i++;
  if (i == b->nreaders) {
    FB_CHECK(i < FB_READERS);
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

static inline void broker_release(void *state, void *instance) {
  broker *b = state;
  pthread_mutex_lock(&b->mu);
  b->live--;
  pthread_mutex_unlock(&b->mu);
  free(instance);
}

/* Append a message (the caller holds the lock, or no other thread runs). */
static inline void broker_put(broker *b, const char *msg, size_t len) {
  FB_CHECK(b->n < FB_MAX_MSGS);
  b->msg[b->n] = malloc(len ? len : 1);
  FB_CHECK(b->msg[b->n] != NULL);
  memcpy(b->msg[b->n], msg, len);
  b->len[b->n++] = len;
}

static inline int broker_publish(void *state, void *instance, const char *msg,
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

static inline int broker_poll(void *state, void *instance, size_t max,
                              spi_fleet_msg_fn fn, void *ud, char *err,
                              size_t cap) {
  broker *b = state;
  broker_inst *in = instance;
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

static inline spi_fleet_bus_module broker_module(void) {
  return fb_module(broker_configure, broker_release, broker_publish,
                   broker_poll);
}

static inline broker *broker_new(void) {
  broker *b = calloc(1, sizeof *b);
  FB_CHECK(b != NULL);
  pthread_mutex_init(&b->mu, NULL);
  pthread_cond_init(&b->cv, NULL);
  return b;
}

static inline void broker_free(broker *b) {
  FB_CHECK(b->live == 0);
  for (size_t i = 0; i < b->n; i++) free(b->msg[i]);
  pthread_mutex_destroy(&b->mu);
  pthread_cond_destroy(&b->cv);
  free(b);
}

static inline size_t broker_count(broker *b) {
  pthread_mutex_lock(&b->mu);
  size_t n = b->n;
  pthread_mutex_unlock(&b->mu);
  return n;
}

/* ------------------------------------------------------------ the engines */

typedef struct fb_world {
  spi_engine *e;
  spi_request *r;
  int64_t now;
  int32_t max_inflight; /* of the replicas fb_add adds */
  int transitions;
  int to_noticed; /* transitions to NOTICED */
  int removed;    /* transitions to REMOVED: machines forgotten */
  int terminated; /* transitions to TERMINATED */
  int32_t last_from, last_to;
  char last_node[64];
  size_t fail_from; /* > 0: the engine's allocations of this many bytes
                       or more fail */
} fb_world;

static inline int64_t fb_clock(void *ud) { return ((fb_world *)ud)->now; }

static inline void *fb_alloc(void *ud, size_t size) {
  const fb_world *w = ud;
  return w->fail_from && size >= w->fail_from ? NULL : malloc(size);
}

static inline void fb_free(void *ud, void *p) {
  (void)ud;
  free(p);
}

static inline void fb_on_transition(void *ud, const char *node, size_t len,
                                    int32_t from, int32_t to) {
  fb_world *w = ud;
  w->transitions++;
  w->to_noticed += to == SPI_NODE_NOTICED;
  w->removed += to == SPI_NODE_REMOVED;
  w->terminated += to == SPI_NODE_TERMINATED;
  w->last_from = from;
  w->last_to = to;
  snprintf(w->last_node, sizeof w->last_node, "%.*s", (int)len, node);
}

/* An engine at 1700000000 s; the broker's bus registered as "fake" when b
 * is given; configured with config when given. */
static inline fb_world *fb_mk(broker *b, const char *config) {
  fb_world *w = calloc(1, sizeof *w);
  FB_CHECK(w != NULL);
  w->now = 1700000000 * FB_SEC;
  w->max_inflight = 64;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fb_clock;
  h.clock_user_data = w;
  h.alloc = fb_alloc;
  h.free = fb_free;
  h.alloc_user_data = w;
  FB_OK(spi_engine_new(&w->e, &h));
  if (b) {
    spi_fleet_bus_module m = broker_module();
    FB_OK(spi_engine_register_module(w->e, SPI_MODULE_FLEET_BUS, "fake", 4,
                                     &m, b, NULL));
  }
  if (config)
    FB_OK(spi_engine_configure(w->e, config, strlen(config)));
  FB_OK(spi_engine_on_node_transition(w->e, fb_on_transition, w));
  FB_OK(spi_request_new(w->e, &w->r));
  return w;
}

/* The configuration of an engine on the "fake" bus as reader, with extra
 * (more members of the top-level object) when given. */
static inline void fb_bus_config(char *cfg, size_t cap, const char *reader,
                                 const char *extra) {
  snprintf(cfg, cap,
           "{\"modules\":{\"fleet_bus\":\"fake\"},"
           "\"module_config\":{\"fake\":{\"reader\":\"%s\"}}%s%s}",
           reader, extra ? "," : "", extra ? extra : "");
}

static inline fb_world *fb_on_bus(broker *b, const char *reader,
                                  const char *extra) {
  char cfg[512];
  fb_bus_config(cfg, sizeof cfg, reader, extra);
  return fb_mk(b, cfg);
}

static inline void fb_done(fb_world *w) {
  spi_request_free(w->r);
  spi_engine_free(w->e);
  free(w);
}

static inline void fb_add(fb_world *w, const char *id, const char *node,
                          int32_t pool, const char *type, const char *zone) {
  spi_replica_info ri = fb_replica(id, node, pool, type, zone);
  ri.max_inflight = w->max_inflight;
  ri.decode_tokens_per_s = 50;
  fb_add_loaded(w->e, &ri);
}

static inline void fb_hand(fb_world *w, const spi_notice *n) {
  size_t np = 0;
  FB_OK(spi_engine_notice(w->e, n, NULL, 0, &np));
}

/* Two engines, reader A and reader B, on one new broker. */
typedef struct fb_pair {
  broker *bus;
  fb_world *a, *b;
} fb_pair;

static inline fb_pair fb_two(const char *extra_a, const char *extra_b) {
  fb_pair p;
  p.bus = broker_new();
  p.a = fb_on_bus(p.bus, "A", extra_a);
  p.b = fb_on_bus(p.bus, "B", extra_b);
  return p;
}

static inline void fb_two_done(fb_pair *p) {
  fb_done(p->a);
  fb_done(p->b);
  broker_free(p->bus);
}

#endif
