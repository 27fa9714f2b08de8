/*
 * test_route_notice.c - a route and a notice at once: from the notice on,
 * the machine's replicas get no new request its plans do not name.
 *
 * A route reads its replica as ACTIVE in the pass and opens its ticket
 * much later. A notice that sets the replica NOTICED and scans the open
 * tickets in between must not miss the ticket: either the route reads the
 * new state at the last moment and routes again elsewhere, or the notice
 * waits for the route's ticket and plans it (routing.h,
 * spi__slot_open_begin). Each side is forced here in turn (and the bound
 * on routing again), then both race for a bounded while.
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "engine.h"
#include "fake_bus.h"

#define PLANS_CAP 4096

static void silver(spi_request *r) {
  spi_request_reset(r);
  spi_request_set_str(r, SPI_REQ_MODEL, "m", 1);
  spi_request_set_str(r, SPI_REQ_PROMPT, "hello world", 11);
  spi_request_set_str(r, SPI_REQ_CLASS, "silver", 6);
  spi_request_set_int(r, SPI_REQ_MAX_OUTPUT_TOKENS, 100);
}

static int route(spi_request *r, spi_decision *d) {
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  return spi_route(r, d);
}

static int in_plans(const spi_ticket_plan *plans, size_t n, uint64_t t) {
  for (size_t i = 0; i < n; i++)
    if (plans[i].ticket == t) return 1;
  return 0;
}

/* ------------------------------------- the notice while the policy runs */

/* The policy that hands in the notice for i-aaa on its first call, after
 * the pass read spot-a as ACTIVE, then takes the first usable spot
 * replica (else the first usable one). */
static struct {
  fb_world *w;
  int calls;
  spi_ticket_plan plans[8];
  size_t np;
} during;

static int notice_then_choose(void *state, void *inst,
                              const spi_route_context *x,
                              spi_policy_choice *out) {
  (void)state;
  (void)inst;
  if (during.calls++ == 0) {
    spi_notice n = fb_notice("i-aaa", during.w->now + 120 * FB_SEC, "ev-a");
    during.plans[0].struct_size = sizeof during.plans[0];
    assert_int_equal(spi_engine_notice(during.w->e, &n, during.plans, 8,
                                       &during.np),
                     SPI_OK);
  }
  const spi_candidate *pick = NULL;
  uint32_t at = 0;
  for (uint32_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = (const spi_candidate *)(const void *)(
        (const char *)x->candidates + i * x->candidate_size);
    if (c->eligible && (!pick || (c->pool == SPI_POOL_SPOT &&
                                  pick->pool != SPI_POOL_SPOT))) {
      pick = c;
      at = i;
    }
  }
  out->reason_code = pick ? SPI_REASON_LEAST_LOADED : SPI_REASON_NO_CAPACITY;
  out->pool = pick ? pick->pool : 0;
  out->n_order = pick ? 1 : 0;
  out->order[0] = at;
  return SPI_OK;
}

/* A fleet whose routes go through the policy module choose, which hands
 * notices in through `during`. */
static fb_world *world_with_policy(int (*choose)(void *, void *,
                                                 const spi_route_context *,
                                                 spi_policy_choice *)) {
  fb_world *w = fb_mk(NULL, NULL);
  memset(&during, 0, sizeof during);
  during.w = w;
  spi_policy_module m = ff_policy_module(choose, 0);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY,
                                              "noticer", 7, &m, NULL, NULL),
                   SPI_OK);
  const char *cfg = "{\"modules\":{\"policy\":\"noticer\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  return w;
}

/* The pass read spot-a as ACTIVE; the notice for its machine comes while
 * the policy chooses it. The route must not open its ticket there: it
 * routes again and lands on od-b, and the notice planned nothing. */
static void notice_while_choosing(void **state) {
  (void)state;
  fb_world *w = world_with_policy(notice_then_choose);
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  fb_add(w, "od-b", "i-bbb", SPI_POOL_ON_DEMAND, "g5", "z2");
  silver(w->r);
  spi_decision d;
  assert_int_equal(route(w->r, &d), SPI_OK);
  assert_int_equal(fb_state(w->e, "i-aaa"), SPI_NODE_NOTICED);
  assert_int_equal(during.np, 0);
  /* Before: spot-a, a ticket no plan names, on a machine that is going. */
  assert_string_equal(d.replica_id, "od-b");
  assert_int_equal(during.calls, 2);
  assert_int_not_equal(d.ticket, 0);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_OK);
  fb_done(w);
}

/* Every replica the policy chooses is noticed while it chooses: the route
 * routes 4 times, then answers no capacity, leaving no ticket open. */
static int notice_every_choice(void *state, void *inst,
                               const spi_route_context *x,
                               spi_policy_choice *out) {
  (void)state;
  (void)inst;
  during.calls++;
  out->reason_code = SPI_REASON_NO_CAPACITY;
  for (uint32_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = (const spi_candidate *)(const void *)(
        (const char *)x->candidates + i * x->candidate_size);
    if (!c->eligible) continue;
    char node[16], key[24];
    snprintf(node, sizeof node, "i-%.*s", (int)c->id_len - 1, c->id + 1);
    snprintf(key, sizeof key, "ev-%s", node);
    spi_notice n = fb_notice(node, during.w->now + 120 * FB_SEC, key);
    size_t np = 0;
    if (!during.np) /* set: notice no more */
      assert_int_equal(spi_engine_notice(during.w->e, &n, NULL, 0, &np),
                       SPI_OK);
    out->pool = c->pool;
    out->reason_code = SPI_REASON_LEAST_LOADED;
    out->n_order = 1;
    out->order[0] = i;
    break;
  }
  return SPI_OK;
}

static void notice_at_every_try(void **state) {
  (void)state;
  fb_world *w = world_with_policy(notice_every_choice);
  /* Each in a zone of its own: a notice cools its machine's spot pool. */
  for (int i = 0; i < 6; i++) {
    char id[8], node[8], zone[8];
    snprintf(id, sizeof id, "s%d", i);
    snprintf(node, sizeof node, "i-%d", i);
    snprintf(zone, sizeof zone, "z%d", i);
    fb_add(w, id, node, SPI_POOL_SPOT, "g5", zone);
  }
  silver(w->r);
  spi_decision d;
  assert_int_equal(route(w->r, &d), SPI_ENOCAPACITY);
  assert_int_equal(during.calls, 4);
  assert_int_equal(d.pool, 0);
  assert_int_equal(d.ticket, 0);
  assert_int_equal(d.reason_code, SPI_REASON_NO_CAPACITY);
  assert_int_equal(d.klass, SPI_CLASS_SILVER);
  assert_int_equal(spi__tickets_open(atomic_load(&w->e->tickets)), 0);
  /* Two replicas were never chosen: with no more notices, the next route
   * takes one. */
  during.np = 1;
  assert_int_equal(route(w->r, &d), SPI_OK);
  assert_string_equal(d.replica_id, "s4");
  assert_int_equal(during.calls, 5);
  assert_int_not_equal(d.ticket, 0);
  fb_done(w);
}

/* --------------------------------- the notice while a ticket is opening */

static struct {
  fb_world *w;
  atomic_int done;
  int rc;
  spi_ticket_plan plans[8];
  size_t np;
} waiting;

static void *notice_thread(void *arg) {
  (void)arg;
  spi_notice n = fb_notice("i-aaa", waiting.w->now + 120 * FB_SEC, "ev-a");
  waiting.plans[0].struct_size = sizeof waiting.plans[0];
  waiting.rc = spi_engine_notice(waiting.w->e, &n, waiting.plans, 8,
                                 &waiting.np);
  atomic_store(&waiting.done, 1);
  return NULL;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A route that read spot-a as ACTIVE at the last moment (its window open)
 * and has not published its ticket yet, done by hand as serve() does it:
 * the notice sets the state, then waits for the ticket and plans it. The
 * route counts itself in its thread's own line when it has one (own), else
 * in the slot's counter, as threads beyond the first SPI_RCU_OWN and every
 * thread without cheap fences do. */
static void notice_waits_for_ticket_opened(int own) {
  spi__fences_init();
  if (own && !spi__fences_cheap()) skip(); /* no membarrier here */
  fb_world *w = fb_mk(NULL, NULL);
  memset(&waiting, 0, sizeof waiting);
  waiting.w = w;
  fb_add(w, "spot-a", "i-aaa", SPI_POOL_SPOT, "g5", "z1");
  spi_engine *e = w->e;
  const spi_replica_ident *r =
      spi__registry_find(atomic_load(&e->registry.set), "spot-a", 6);
  assert_non_null(r);
  spi_replica_slot *s = &e->registry.slots[r->slot];
  spi_ticket_table *tt = atomic_load(&e->tickets);
  spi_ticket *k = spi__ticket_take(tt);
  assert_non_null(k);
  k->slot = r->slot;
  k->incarnation = atomic_load(&s->incarnation);
  k->klass = SPI_CLASS_SILVER;
  k->expected_output = 100;
  spi_rcu_line *line = own ? spi__rcu_line(&e->rcu, spi__thread_no()) : NULL;
  assert_true(own == (line != NULL));
  assert_true(spi__slot_open_begin(line, s, r->slot));
  assert_int_equal(atomic_load(&s->opening), own ? 0u : 1u);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, notice_thread, NULL), 0);
  /* The notice stored the state; it must not scan before the publish. */
  for (int i = 0; i < 10000 && atomic_load(&s->state) == SPI_REPLICA_ACTIVE;
       i++)
    sleep_ms(1);
  assert_int_equal(atomic_load(&s->state), SPI_REPLICA_NOTICED);
  sleep_ms(50);
  assert_int_equal(atomic_load(&waiting.done), 0);
  uint64_t id = spi__ticket_publish(tt, k);
  spi__slot_open_end(line, s);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(waiting.rc, SPI_OK);
  assert_int_equal(waiting.np, 1);
  assert_int_equal(waiting.plans[0].ticket, id);
  assert_string_equal(waiting.plans[0].replica_id, "spot-a");
  assert_true(spi__ticket_claim(tt, k, id));
  spi__ticket_release(tt, k);
  fb_done(w);
}

static void notice_waits_for_ticket_opened_own_line(void **state) {
  (void)state;
  notice_waits_for_ticket_opened(1);
}

static void notice_waits_for_ticket_opened_counted(void **state) {
  (void)state;
  notice_waits_for_ticket_opened(0);
}

/* ------------------------------------------------------ both, racing */

/* A routing thread routes while the test adds a replica on a fresh
 * machine and notices it, round after round (at most STRESS_ROUNDS, for
 * at most STRESS_NS). No ticket is finished during a round, so every
 * ticket on the noticed replica must be in the notice's plans. */
#define STRESS_ROUNDS 3000
#define STRESS_NS 2000000000LL
#define STRESS_TICKETS 512

static struct {
  spi_request *r;
  atomic_int phase; /* 0 stopped, 1 route, 2 stop asked, 3 quit */
  atomic_int attempts;
  uint64_t tk[STRESS_TICKETS];
  char rid[STRESS_TICKETS][SPI_ID_MAX];
  int ntk;
} race;

static void *router(void *arg) {
  (void)arg;
  for (;;) {
    int p;
    while ((p = atomic_load(&race.phase)) == 0) sched_yield();
    if (p == 3) return NULL;
    while (atomic_load(&race.phase) == 1 && race.ntk < STRESS_TICKETS) {
      atomic_fetch_add(&race.attempts, 1);
      spi_decision d;
      if (route(race.r, &d) == SPI_OK && d.ticket) {
        race.tk[race.ntk] = d.ticket;
        snprintf(race.rid[race.ntk], sizeof race.rid[0], "%s", d.replica_id);
        race.ntk++;
      }
    }
    atomic_store(&race.phase, 0);
  }
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One round: replica id on machine node, noticed while routes run; the
 * tickets on it that no plan names. */
static int race_round(fb_world *w, int i, spi_ticket_plan *plans) {
  char id[16], node[16], key[16], zone[16];
  snprintf(id, sizeof id, "r%d", i);
  snprintf(node, sizeof node, "i-%d", i);
  snprintf(key, sizeof key, "k%d", i);
  snprintf(zone, sizeof zone, "z%d", i);
  fb_add(w, id, node, SPI_POOL_SPOT, "g5", zone);
  race.ntk = 0;
  int a0 = atomic_load(&race.attempts);
  atomic_store(&race.phase, 1);
  while (atomic_load(&race.attempts) < a0 + 1 + i % 3) sched_yield();
  for (volatile int spin = 0; spin < (i % 64) * 40; spin++) {
  }
  spi_notice n = fb_notice(node, w->now + 120 * FB_SEC, key);
  plans[0].struct_size = sizeof plans[0];
  size_t np = 0;
  assert_int_equal(spi_engine_notice(w->e, &n, plans, PLANS_CAP, &np),
                   SPI_OK);
  atomic_store(&race.phase, 2);
  while (atomic_load(&race.phase) != 0) sched_yield();
  int missed = 0;
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  for (int t = 0; t < race.ntk; t++) {
    missed += strcmp(race.rid[t], id) == 0 && !in_plans(plans, np, race.tk[t]);
    assert_int_equal(spi_ticket_finish(w->e, race.tk[t], &res), SPI_OK);
  }
  assert_int_equal(spi_replica_remove(w->e, id, strlen(id)), SPI_OK);
  spi_engine_tick(w->e);
  return missed;
}

static void notices_racing_routes(void **state) {
  (void)state;
  fb_world *w = fb_mk(NULL, NULL);
  w->max_inflight = 100000;
  memset(&race, 0, sizeof race);
  assert_int_equal(spi_request_new(w->e, &race.r), SPI_OK);
  silver(race.r);
  static spi_ticket_plan plans[PLANS_CAP];
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, router, NULL), 0);
  int missed = 0, rounds = 0;
  int64_t end = mono_ns() + STRESS_NS;
  for (; rounds < STRESS_ROUNDS && mono_ns() < end; rounds++)
    missed += race_round(w, rounds, plans);
  atomic_store(&race.phase, 3);
  assert_int_equal(pthread_join(th, NULL), 0);
  print_message("%d rounds, %d routes, tickets on a noticed replica that "
                "no plan names: %d\n",
                rounds, atomic_load(&race.attempts), missed);
  assert_int_equal(missed, 0);
  spi_request_free(race.r);
  fb_done(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(notice_while_choosing),
      cmocka_unit_test(notice_at_every_try),
      cmocka_unit_test(notice_waits_for_ticket_opened_own_line),
      cmocka_unit_test(notice_waits_for_ticket_opened_counted),
      cmocka_unit_test(notices_racing_routes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
