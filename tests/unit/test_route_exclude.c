/*
 * test_route_exclude.c - spi_request_exclude_replica: a route that
 * excludes replicas decides as one over a fleet where those replicas are
 * drained, whichever pass it takes; the ids it takes and refuses; an
 * excluded probe, an excluded warm replica, and what a policy that reads
 * every candidate sees.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"
#include "fake_world.h"

static void add(world *w, const char *id, int32_t pool, int32_t tier,
                uint32_t max_inflight) {
  spi_replica_info ri = ff_replica(
      id, pool, pool == SPI_POOL_SPOT ? 1.8 : 4.5, max_inflight);
  ri.model_tier = tier;
  int rc = spi_replica_upsert(w->e, &ri);
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
}

static void load(world *w, const char *id, double running, double waiting,
                 double kv) {
  assert_int_equal(ff_report(w->e, id, running, waiting, kv), SPI_OK);
}

/* A chat request with a shared system prompt of several blocks. */
static void chat(world *w, const char *user, int stream, int sla_ms,
                 const char *tier) {
  static char sys[4096];
  for (size_t i = 0; i < sizeof sys - 1; i++) sys[i] = "abcdefgh "[i % 9];
  assert_int_equal(spi_request_reset(w->r), SPI_OK);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "llama", 5);
  spi_request_add_message(w->r, "system", 6, sys, sizeof sys - 1);
  spi_request_add_message(w->r, "user", 4, user, strlen(user));
  spi_request_set_int(w->r, SPI_REQ_STREAM, stream);
  spi_request_set_int(w->r, SPI_REQ_REPLAYABLE, 1);
  if (sla_ms) spi_request_set_int(w->r, SPI_REQ_SLA_MS, sla_ms);
  if (tier) spi_request_set_str(w->r, SPI_REQ_SERVICE_TIER, tier, strlen(tier));
}

static void exclude(world *w, const char *id) {
  int rc = spi_request_exclude_replica(w->r, id, strlen(id));
  if (rc) print_error("%s\n", spi_request_errmsg(w->r));
  assert_int_equal(rc, SPI_OK);
}

static int route(world *w, spi_decision *d) {
  memset(d, 0, sizeof *d);
  d->struct_size = sizeof *d;
  return spi_route(w->r, d);
}

static void finish(world *w, uint64_t t) {
  if (t) assert_int_equal(finish_rc(w, t, SPI_TICKET_OK), SPI_OK);
}

/* A policy module that reads every candidate and answers QUEUE: as the
 * shadow policy, it makes the built-in policy run on the full array. It
 * checks that no excluded replica is ever eligible or a probe. */
static const char *const *banned;
static int n_banned;
static int banned_eligible;

static int needs_all(void *state, void *inst, const spi_route_context *x,
                     spi_policy_choice *out) {
  (void)state;
  (void)inst;
  for (size_t i = 0; i < x->n_candidates; i++) {
    const spi_candidate *c = &x->candidates[i];
    for (int b = 0; b < n_banned; b++)
      if (strlen(banned[b]) == c->id_len &&
          memcmp(banned[b], c->id, c->id_len) == 0 && (c->eligible || c->probe))
        banned_eligible++;
  }
  out->pool = SPI_POOL_QUEUE;
  return SPI_OK;
}

/* A world whose built-in policy runs on every candidate (full) or on the
 * summaries' (compact, the default). */
static world *mk_world(int full) {
  world *w = mk(NULL);
  if (!full) return w;
  spi_policy_module m = ff_policy_module(needs_all, 0);
  assert_int_equal(spi_engine_register_module(w->e, SPI_MODULE_POLICY,
                                              "needsall", 8, &m, NULL, NULL),
                   SPI_OK);
  const char *cfg = "{\"router\":{\"shadow_policy\":\"needsall\"}}";
  assert_int_equal(spi_engine_configure(w->e, cfg, strlen(cfg)), SPI_OK);
  return w;
}

static void assert_same_decision(int ra, int rb, const spi_decision *da,
                                 const spi_decision *db) {
  assert_int_equal(ra, rb);
  assert_int_equal(da->pool, db->pool);
  assert_string_equal(da->replica_id, db->replica_id);
  assert_int_equal(da->reason_code, db->reason_code);
  assert_int_equal(da->n_fallbacks, db->n_fallbacks);
  for (uint32_t f = 0; f < da->n_fallbacks; f++)
    assert_string_equal(da->fallback_ids[f], db->fallback_ids[f]);
  assert_int_equal(da->matched_blocks, db->matched_blocks);
}

static void assert_avoids(const spi_decision *d, const char *const *ids,
                          int n) {
  for (int i = 0; i < n; i++) {
    assert_string_not_equal(d->replica_id, ids[i]);
    for (uint32_t f = 0; f < d->n_fallbacks; f++)
      assert_string_not_equal(d->fallback_ids[f], ids[i]);
  }
}

/* ------------------------------------------------- excluded as drained */

/* A random fleet of 8..8+spread-1 replicas on both worlds: pools, tiers,
 * sizes and loads (KV low enough that no pool is under pressure whichever
 * replicas count). */
static int random_fleet(world *a, world *b, unsigned *seed, int spread) {
  int n = 8 + rand_r(seed) % spread;
  for (int i = 0; i < n; i++) {
    char id[16];
    snprintf(id, sizeof id, "x%02d", i);
    int32_t pool = rand_r(seed) % 3 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND;
    int32_t tier = rand_r(seed) % 4 ? SPI_TIER_LARGE : SPI_TIER_SMALL;
    uint32_t cap = 2 + (uint32_t)(rand_r(seed) % 30);
    double run = rand_r(seed) % 8, wait = rand_r(seed) % 3;
    double kv = 0.05 * (rand_r(seed) % 8);
    add(a, id, pool, tier, cap);
    add(b, id, pool, tier, cap);
    load(a, id, run, wait, kv);
    load(b, id, run, wait, kv);
  }
  return n;
}

/* Routes on a, each excluding some replicas (and an id no replica has),
 * decide as routes of the same requests on b, where those replicas are
 * drained: with the compact candidates (a's pass over every slot against
 * b's pool index) and with the full array. The last round excludes every
 * replica. */
static void test_excluded_decides_as_drained(void **st) {
  (void)st;
  enum { ROUNDS = 12 };
  for (unsigned round = 0; round < ROUNDS; round++) {
    unsigned seed = 7919u * (round + 1);
    int full = (int)(round % 2), every = round == ROUNDS - 1;
    world *a = mk_world(full), *b = mk_world(full);
    int n = random_fleet(a, b, &seed, every ? 20 : 60);
    char ids[SPI_MAX_EXCLUDED][16];
    const char *ex[SPI_MAX_EXCLUDED];
    int nex = every ? n : 1 + rand_r(&seed) % (round % 3 == 2 ? 6 : 3);
    for (int k = 0; k < nex; k++) {
      int pick, dup;
      do { /* distinct replicas */
        pick = every ? k : rand_r(&seed) % n;
        snprintf(ids[k], sizeof ids[k], "x%02d", pick);
        dup = 0;
        for (int j = 0; j < k; j++) dup |= strcmp(ids[j], ids[k]) == 0;
      } while (dup);
      ex[k] = ids[k];
      assert_int_equal(spi_replica_set_state(b->e, ex[k], strlen(ex[k]),
                                             SPI_REPLICA_DRAINING),
                       SPI_OK);
    }
    banned = ex;
    n_banned = nex;
    banned_eligible = 0;
    const char *tiers[] = {"priority", "default", "flex", NULL};
    for (int i = 0; i < 120; i++) {
      char user[32];
      snprintf(user, sizeof user, "q%d", i % 9);
      int stream = i % 2, sla = i % 3 ? 0 : 500;
      chat(a, user, stream, sla, tiers[i % 4]);
      chat(b, user, stream, sla, tiers[i % 4]);
      for (int k = 0; k < nex; k++) exclude(a, ex[k]);
      exclude(a, "gone-replica");
      spi_decision da, db;
      int ra = route(a, &da), rb = route(b, &db);
      assert_same_decision(ra, rb, &da, &db);
      assert_avoids(&da, ex, nex);
      if (every) assert_true(ra == SPI_ENOCAPACITY || da.pool == SPI_POOL_QUEUE);
      if (ra == SPI_OK && i % 3) {
        finish(a, da.ticket);
        finish(b, db.ticket);
      }
      char id[16]; /* loads move, the same on both */
      snprintf(id, sizeof id, "x%02d", (i * 7) % n);
      load(a, id, i % 6, i % 4, 0.05 * (i % 8));
      load(b, id, i % 6, i % 4, 0.05 * (i % 8));
    }
    assert_int_equal(banned_eligible, 0);
    n_banned = 0; /* ex goes out of scope */
    done(a);
    done(b);
  }
}

/* ------------------------------------------------------------ the ids */

static void test_ids_checked(void **st) {
  world *w = *st;
  char id[SPI_ID_MAX + 1];
  memset(id, 'r', sizeof id);
  assert_int_equal(spi_request_exclude_replica(NULL, "a", 1), SPI_EMISUSE);
  assert_int_equal(spi_request_exclude_replica(w->r, NULL, 3), SPI_EINVAL);
  assert_non_null(strstr(spi_request_errmsg(w->r), "NULL replica id"));
  assert_int_equal(spi_request_exclude_replica(w->r, NULL, 0), SPI_EINVAL);
  assert_non_null(strstr(spi_request_errmsg(w->r), "0 bytes"));
  assert_int_equal(spi_request_exclude_replica(w->r, "a", 0), SPI_EINVAL);
  assert_non_null(strstr(spi_request_errmsg(w->r), "0 bytes"));
  assert_int_equal(spi_request_exclude_replica(w->r, id, SPI_ID_MAX), SPI_EINVAL);
  assert_non_null(strstr(spi_request_errmsg(w->r), "64 bytes"));
  assert_int_equal(spi_request_exclude_replica(w->r, id, SPI_ID_MAX - 1), SPI_OK);
  /* Not NUL-terminated: the length says. */
  assert_int_equal(spi_request_exclude_replica(w->r, "od-a-and-more", 4), SPI_OK);
}

static void test_cap_and_reset(void **st) {
  world *w = *st;
  add(w, "od-a", SPI_POOL_ON_DEMAND, 0, 16);
  add(w, "od-b", SPI_POOL_ON_DEMAND, 0, 16);
  load(w, "od-a", 0, 0, 0.1);
  load(w, "od-b", 6, 2, 0.1); /* busier: never the first choice */
  chat(w, "hi", 1, 800, NULL);
  exclude(w, "od-a");
  exclude(w, "od-a"); /* again: counted once */
  for (int i = 1; i < SPI_MAX_EXCLUDED; i++) {
    char id[16];
    snprintf(id, sizeof id, "other-%d", i);
    exclude(w, id);
  }
  assert_int_equal(spi_request_exclude_replica(w->r, "one-more", 8), SPI_EFULL);
  assert_non_null(strstr(spi_request_errmsg(w->r), "at most 32"));
  exclude(w, "other-5"); /* already there: no room needed */
  spi_decision d;
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  assert_int_equal(d.n_fallbacks, 0);
  finish(w, d.ticket);
  /* A failed call changed nothing: the same route again. */
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  finish(w, d.ticket);
  /* Reset clears them. */
  chat(w, "hi", 1, 800, NULL);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  finish(w, d.ticket);
  exclude(w, "od-a");
  /* So does reading a body. */
  const char *body = "{\"model\":\"llama\",\"messages\":[{\"role\":\"user\","
                     "\"content\":\"hi\"}]}";
  assert_int_equal(spi_request_parse_openai(w->r, body, strlen(body),
                                            SPI_OPENAI_CHAT),
                   SPI_OK);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  finish(w, d.ticket);
  /* Every replica excluded: no capacity, as with none. */
  chat(w, "hi", 1, 800, NULL);
  exclude(w, "od-b");
  exclude(w, "od-a");
  assert_int_equal(route(w, &d), SPI_ENOCAPACITY);
  assert_int_equal(d.reason_code, SPI_REASON_NO_CAPACITY);
  assert_int_equal(d.ticket, 0);
  assert_string_equal(d.replica_id, "");
  assert_non_null(strstr(spi_request_errmsg(w->r), "no eligible"));
}

/* ------------------------------------------------- probe and warm replica */

/* A recovering replica's probe: a request that excludes it goes elsewhere
 * and leaves the probe for the next route. */
static void test_excluded_probe(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"error_threshold\":3,\"error_cooldown_ms\":5000}}");
  add(w, "od-a", SPI_POOL_ON_DEMAND, 0, 16);
  add(w, "od-b", SPI_POOL_ON_DEMAND, 0, 16);
  load(w, "od-a", 0, 0, 0.1);
  load(w, "od-b", 14, 6, 0.1);
  spi_decision d;
  for (int i = 0; i < 3; i++) {
    chat(w, "hi", 1, 800, NULL);
    assert_int_equal(route(w, &d), SPI_OK);
    assert_string_equal(d.replica_id, "od-a");
    assert_int_equal(finish_rc(w, d.ticket, SPI_TICKET_ERROR), SPI_OK);
  }
  w->now += 6 * SEC;
  load(w, "od-a", 0, 0, 0.1);
  load(w, "od-b", 14, 6, 0.1);
  chat(w, "hi", 1, 800, NULL);
  exclude(w, "od-a");
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-b");
  assert_int_not_equal(d.reason_code, SPI_REASON_HALF_OPEN_PROBE);
  assert_int_equal(d.n_fallbacks, 0);
  finish(w, d.ticket);
  chat(w, "hi", 1, 800, NULL);
  assert_int_equal(route(w, &d), SPI_OK);
  assert_string_equal(d.replica_id, "od-a");
  assert_int_equal(d.reason_code, SPI_REASON_HALF_OPEN_PROBE);
  finish(w, d.ticket);
  done(w);
}

/* The replica holding the prompt's prefix, excluded: the route goes to a
 * replica that holds none of it. */
static void warm_excluded(int full) {
  world *w = mk_world(full);
  const char *ids[] = {"spot-a", "spot-b", "od-a", "od-b"};
  for (int i = 0; i < 4; i++) {
    add(w, ids[i], i < 2 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND, 0, 16);
    load(w, ids[i], 1, 0, 0.2);
  }
  spi_decision d1, d2;
  chat(w, "first question", 0, 5000, NULL);
  assert_int_equal(route(w, &d1), SPI_OK);
  finish(w, d1.ticket);
  chat(w, "second question", 0, 5000, NULL);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_equal(d2.replica_id, d1.replica_id);
  assert_int_equal(d2.reason_code, SPI_REASON_AFFINITY);
  assert_true(d2.matched_blocks >= 3);
  finish(w, d2.ticket);
  chat(w, "third question", 0, 5000, NULL);
  exclude(w, d1.replica_id);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_string_not_equal(d2.replica_id, d1.replica_id);
  assert_int_not_equal(d2.reason_code, SPI_REASON_AFFINITY);
  assert_int_equal(d2.matched_blocks, 0);
  assert_avoids(&d2, (const char *const[]){d1.replica_id}, 1);
  finish(w, d2.ticket);
  /* Without the exclusion a warm replica is chosen again (the first, or
   * the one the excluding route placed the prompt on). */
  chat(w, "fourth question", 0, 5000, NULL);
  assert_int_equal(route(w, &d2), SPI_OK);
  assert_int_equal(d2.reason_code, SPI_REASON_AFFINITY);
  assert_true(d2.matched_blocks >= 3);
  finish(w, d2.ticket);
  done(w);
}

/* The excluded replica holds the deepest prefix and another holds a
 * shorter part of it (the system prompt): the route finds that shorter
 * match, as over the fleet where the excluded replica is drained. A
 * retry that excludes the replica that failed it (whose entries hold the
 * whole prompt) is the case. */
static void deeper_than_the_rest(int full) {
  static char user[4096];
  for (size_t i = 0; i < sizeof user - 1; i++) user[i] = "zyxwvu tsr"[i % 10];
  world *w[2] = {mk_world(full), mk_world(full)};
  const char *ids[] = {"od-a", "od-b", "od-c"};
  char x[SPI_ID_MAX] = "", y[SPI_ID_MAX] = "";
  spi_decision d, dk[2];
  for (int k = 0; k < 2; k++) {
    for (int i = 0; i < 3; i++) {
      add(w[k], ids[i], SPI_POOL_ON_DEMAND, 0, 16);
      load(w[k], ids[i], 1, 0, 0.2);
    }
    /* A long turn lands on x, then a short one with the same system
     * prompt, kept off x, lands on y: y holds the system prompt, x it and
     * the long turn. */
    chat(w[k], user, 0, 5000, NULL);
    assert_int_equal(route(w[k], &d), SPI_OK);
    snprintf(x, sizeof x, "%s", d.replica_id);
    finish(w[k], d.ticket);
    chat(w[k], "short question", 0, 5000, NULL);
    exclude(w[k], x);
    assert_int_equal(route(w[k], &d), SPI_OK);
    snprintf(y, sizeof y, "%s", d.replica_id);
    finish(w[k], d.ticket);
  }
  chat(w[0], user, 0, 5000, NULL);
  exclude(w[0], x);
  int ra = route(w[0], &dk[0]);
  assert_int_equal(spi_replica_set_state(w[1]->e, x, strlen(x),
                                         SPI_REPLICA_DRAINING),
                   SPI_OK);
  chat(w[1], user, 0, 5000, NULL);
  int rb = route(w[1], &dk[1]);
  assert_same_decision(ra, rb, &dk[0], &dk[1]);
  assert_string_equal(dk[0].replica_id, y);
  assert_true(dk[0].matched_blocks > 0);
  assert_int_equal(dk[0].reason_code, SPI_REASON_AFFINITY);
  for (int k = 0; k < 2; k++) {
    finish(w[k], dk[k].ticket);
    done(w[k]);
  }
}

static void test_excluded_holds_the_deepest_prefix(void **st) {
  (void)st;
  deeper_than_the_rest(0);
  deeper_than_the_rest(1);
}

static void test_excluded_warm_replica(void **st) {
  (void)st;
  warm_excluded(0);
  warm_excluded(1);
}

/* A route with exclusions makes no allocation once the request is warm. */
static void test_excluding_route_allocates_nothing(void **st) {
  (void)st;
  world *w = mk(NULL);
  for (int i = 0; i < 40; i++) {
    char id[16];
    snprintf(id, sizeof id, "r%02d", i);
    add(w, id, i % 3 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND, 0, 16);
    load(w, id, i % 4, i % 3, 0.2);
  }
  spi_decision d;
  for (int round = 0; round < 4; round++) {
    chat(w, "hi", 0, 5000, NULL);
    exclude(w, "r01");
    exclude(w, "r05");
    exclude(w, "ghost");
    long before = atomic_load(&w->allocs);
    assert_int_equal(route(w, &d), SPI_OK);
    if (round >= 2) assert_int_equal(atomic_load(&w->allocs), before);
    finish(w, d.ticket);
  }
  done(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_excluded_decides_as_drained),
      cmocka_unit_test_setup_teardown(test_ids_checked, world_setup,
                                      world_teardown),
      cmocka_unit_test_setup_teardown(test_cap_and_reset, world_setup,
                                      world_teardown),
      cmocka_unit_test(test_excluded_probe),
      cmocka_unit_test(test_excluded_warm_replica),
      cmocka_unit_test(test_excluded_holds_the_deepest_prefix),
      cmocka_unit_test(test_excluding_route_allocates_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
