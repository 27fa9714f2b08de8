/*
 * test_replica.c - the replica registry: add, update, remove, state, every
 * validation error with its message, the router.max_replicas bound, load
 * signals going stale on a fake clock, the /metrics text path, status by
 * index and by id, slot generations, allocation failure, and concurrent
 * writers and readers.
 */
#include <math.h>
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
#include "fake_world.h"

/* ---------------------------------------------------------------- helpers */

static spi_replica_info info(const char *id, int32_t pool) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = strlen(id);
  ri.pool = pool;
  ri.zone = "us-east-1a";
  ri.zone_len = strlen(ri.zone);
  ri.instance_type = "g6e.xlarge";
  ri.instance_type_len = strlen(ri.instance_type);
  ri.models = "llama-3.1-8b";
  ri.models_len = strlen(ri.models);
  ri.usd_per_hour = pool == SPI_POOL_SPOT ? 0.93 : 1.86;
  ri.max_inflight = 32;
  return ri;
}

static void add(world *w, const char *id, int32_t pool) {
  spi_replica_info ri = info(id, pool);
  int rc = spi_replica_upsert(w->e, &ri);
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
}

static spi_replica_status status_of(world *w, const char *id) {
  spi_replica_status s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  int rc = spi_replica_status_of(w->e, id, strlen(id), &s);
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
  return s;
}

static const spi_replica_ident *ident(world *w, const char *id) {
  return spi__registry_find(atomic_load(&w->e->registry.set), id, strlen(id));
}

static spi_replica_slot *slot_of(world *w, const char *id) {
  const spi_replica_ident *r = ident(w, id);
  assert_non_null(r);
  return &w->e->registry.slots[r->slot];
}

static unsigned gen_of(world *w, const char *id) {
  return atomic_load(&slot_of(w, id)->gen);
}

static int report(world *w, const char *id, double running, double waiting,
                  double kv, int64_t at_ns) {
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = running;
  l.waiting = waiting;
  l.kv_usage = kv;
  l.at_ns = at_ns;
  return spi_replica_report_load(w->e, id, strlen(id), &l);
}

static void expect_msg(world *w, int rc, int want, const char *part) {
  if (rc != want || !strstr(spi_engine_errmsg(w->e), part))
    print_error("got %d \"%s\", want %d with \"%s\"\n", rc,
                spi_engine_errmsg(w->e), want, part);
  assert_int_equal(rc, want);
  assert_non_null(strstr(spi_engine_errmsg(w->e), part));
}

/* ------------------------------------------------------------------ tests */

static void test_add_and_status(void **st) {
  (void)st;
  world *w = mk(NULL);
  assert_int_equal(spi_replica_count(w->e), 0);
  add(w, "spot-a", SPI_POOL_SPOT);
  assert_int_equal(spi_replica_count(w->e), 1);
  spi_replica_status s = status_of(w, "spot-a");
  assert_int_equal(s.struct_size, sizeof s);
  assert_string_equal(s.id, "spot-a");
  assert_int_equal(s.pool, SPI_POOL_SPOT);
  assert_int_equal(s.model_tier, SPI_TIER_LARGE); /* 0 means large */
  assert_int_equal(s.state, SPI_REPLICA_ACTIVE);
  assert_int_equal(s.breaker, SPI_BREAKER_CLOSED);
  assert_int_equal(s.load_at_ns, 0);
  assert_int_equal(s.load_fresh, 0);
  assert_true(s.running == 0 && s.waiting == 0 && s.kv_usage == 0);
  assert_int_equal(s.inflight, 0);
  assert_true(s.usd_per_hour == 0.93);
  assert_int_equal(s.max_inflight, 32);
  assert_int_equal(s.consecutive_errors, 0);
  /* The identity kept for routing. */
  const spi_replica_ident *r = ident(w, "spot-a");
  assert_non_null(r);
  assert_string_equal(r->zone, "us-east-1a");
  assert_string_equal(r->instance_type, "g6e.xlarge");
  assert_string_equal(r->models, "llama-3.1-8b");
  assert_int_equal(r->id_len, 6);
  assert_true(r->id_hash != 0);
  /* A 63-byte id, a small tier, empty optional texts. */
  char id63[64];
  memset(id63, 'x', 63);
  id63[63] = '\0';
  spi_replica_info ri = info(id63, SPI_POOL_ON_DEMAND);
  ri.model_tier = SPI_TIER_SMALL;
  ri.zone = NULL;
  ri.zone_len = 0;
  ri.instance_type_len = 0;
  ri.models = NULL;
  ri.models_len = 0;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  s = status_of(w, id63);
  assert_string_equal(s.id, id63);
  assert_int_equal(s.model_tier, SPI_TIER_SMALL);
  assert_string_equal(ident(w, id63)->zone, "");
  assert_int_equal(spi_replica_count(w->e), 2);
  /* Different ids, different slots and hashes. */
  assert_int_not_equal(ident(w, id63)->slot, ident(w, "spot-a")->slot);
  assert_true(ident(w, id63)->id_hash != ident(w, "spot-a")->id_hash);
  done(w);
}

static void test_update(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "r1", SPI_POOL_SPOT);
  assert_int_equal(report(w, "r1", 3, 1, 0.5, 0), SPI_OK);
  spi_replica_slot *slot = slot_of(w, "r1");
  atomic_store(&slot->consecutive_errors, 2u);
  unsigned g = gen_of(w, "r1");
  uint32_t sl = ident(w, "r1")->slot;

  /* Identical: nothing republished. */
  spi_replica_set *set = atomic_load(&w->e->registry.set);
  spi_replica_info ri = info("r1", SPI_POOL_SPOT);
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_ptr_equal(atomic_load(&w->e->registry.set), set);

  /* Price, size, zone, type, tier: a new identity, same slot, load, breaker
   * and index entries. */
  ri.usd_per_hour = 1.1;
  ri.max_inflight = 8;
  ri.zone = "us-east-1b";
  ri.instance_type = "g6e.2xlarge";
  ri.instance_type_len = strlen(ri.instance_type);
  ri.model_tier = SPI_TIER_SMALL;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_int_equal(spi_replica_count(w->e), 1);
  spi_replica_status s = status_of(w, "r1");
  assert_true(s.usd_per_hour == 1.1);
  assert_int_equal(s.max_inflight, 8);
  assert_int_equal(s.model_tier, SPI_TIER_SMALL);
  assert_true(s.running == 3 && s.waiting == 1 && s.kv_usage == 0.5);
  assert_int_equal(s.load_fresh, 1);
  assert_int_equal(s.consecutive_errors, 2);
  assert_string_equal(ident(w, "r1")->zone, "us-east-1b");
  assert_int_equal(ident(w, "r1")->slot, sl);
  assert_int_equal(gen_of(w, "r1"), g);

  /* Models change: the index entries die. */
  ri.models = "llama-3.1-8b,qwen-2.5-7b";
  ri.models_len = strlen(ri.models);
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_int_equal(gen_of(w, "r1"), g + 1);
  /* Pool change: again. */
  ri.pool = SPI_POOL_ON_DEMAND;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_int_equal(gen_of(w, "r1"), g + 2);
  s = status_of(w, "r1");
  assert_int_equal(s.pool, SPI_POOL_ON_DEMAND);
  /* Load and breaker survive even those. */
  assert_true(s.running == 3);
  assert_int_equal(s.consecutive_errors, 2);
  /* An update keeps the lifecycle state. */
  assert_int_equal(spi_replica_set_state(w->e, "r1", 2, SPI_REPLICA_DRAINING),
                   SPI_OK);
  ri.usd_per_hour = 1.2;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_int_equal(status_of(w, "r1").state, SPI_REPLICA_DRAINING);
  done(w);
}

static void test_validation(void **st) {
  (void)st;
  world *w = mk(NULL);
  char id64[65], z64[65], m512[513];
  memset(id64, 'a', 64);
  id64[64] = '\0';
  memset(z64, 'z', 64);
  z64[64] = '\0';
  memset(m512, 'm', 512);
  m512[512] = '\0';

  assert_int_equal(spi_replica_upsert(w->e, NULL), SPI_EINVAL);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "info is NULL"));

  spi_replica_info ri;
#define CASE(mutation, part)                                   \
  do {                                                         \
    ri = info("gpu-1", SPI_POOL_SPOT);                         \
    mutation;                                                  \
    expect_msg(w, spi_replica_upsert(w->e, &ri), SPI_EINVAL, part); \
  } while (0)
  CASE(ri.struct_size = sizeof ri - 1, "struct_size");
  CASE(ri.struct_size = 0, "struct_size");
  CASE(ri.id = NULL, "replica id: must be 1..63 bytes");
  CASE(ri.id_len = 0, "replica id: must be 1..63 bytes");
  CASE((ri.id = id64, ri.id_len = 64), "replica id: must be 1..63 bytes");
  CASE((ri.id = "gpu 1", ri.id_len = 5), "replica id");
  CASE((ri.id = "gpu\t1", ri.id_len = 5), "replica id");
  CASE((ri.id = "gpu\x7f", ri.id_len = 4), "replica id");
  CASE((ri.id = "gp\xc3\xa9", ri.id_len = 4), "replica id");
  CASE((ri.id = "gpu\0x", ri.id_len = 5), "replica id");
  /* Ids of 8 bytes and more are checked a word at a time: a bad byte in
   * the first word, the middle one, the overlapping last one, the last. */
  CASE((ri.id = "g\x7fu-spot-us-east-1a", ri.id_len = 19), "replica id");
  CASE((ri.id = "gpu-spot us-east-1a", ri.id_len = 19), "replica id");
  CASE((ri.id = "gpu-spot-us-east-1\x80", ri.id_len = 19), "replica id");
  CASE((ri.id = "gpu-spot-us-east-1\x20", ri.id_len = 19), "replica id");
  CASE((ri.id = "gpu-spot-us-e\x01st-1a", ri.id_len = 19), "replica id");
  CASE((ri.id = "gpu-spo\xff", ri.id_len = 8), "replica id");
  CASE((ri.id = "gpu-spot\x1f", ri.id_len = 9), "replica id");
  CASE(ri.pool = 0, "replica \"gpu-1\": pool 0 is not valid");
  CASE(ri.pool = SPI_POOL_QUEUE, "pool 3 is not valid");
  CASE(ri.model_tier = 3, "replica \"gpu-1\": model_tier 3");
  CASE(ri.model_tier = -1, "model_tier -1");
  CASE(ri.usd_per_hour = 0, "usd_per_hour must be finite and > 0");
  CASE(ri.usd_per_hour = -1, "usd_per_hour");
  CASE(ri.usd_per_hour = NAN, "usd_per_hour");
  CASE(ri.usd_per_hour = INFINITY, "usd_per_hour");
  CASE(ri.max_inflight = 0, "replica \"gpu-1\": max_inflight must be >= 1");
  CASE((ri.zone = z64, ri.zone_len = 64), "zone must be under 64 bytes");
  CASE((ri.zone = NULL, ri.zone_len = 2), "zone is NULL");
  CASE((ri.zone = "a\nb", ri.zone_len = 3), "zone has a control character");
  CASE((ri.instance_type = z64, ri.instance_type_len = 64),
       "instance_type must be under 64 bytes");
  CASE((ri.instance_type = NULL, ri.instance_type_len = 1),
       "instance_type is NULL");
  CASE((ri.models = m512, ri.models_len = 512), "models must be under 512");
  CASE((ri.models = "a\0b", ri.models_len = 3), "models has a control");
#undef CASE
  assert_int_equal(spi_replica_count(w->e), 0);
  /* The limits themselves are accepted. */
  ri = info("gpu-1", SPI_POOL_SPOT);
  ri.zone = z64;
  ri.zone_len = 63;
  ri.instance_type = z64;
  ri.instance_type_len = 63;
  ri.models = m512;
  ri.models_len = 511;
  ri.id = "~!#$%&'()*+,-./:;<=>?@[\\]^_`{|}";
  ri.id_len = strlen(ri.id);
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  assert_int_equal(ident(w, ri.id)->models_len, 511);
  /* Other calls check the id the same way. */
  expect_msg(w, spi_replica_remove(w->e, "a b", 3), SPI_EINVAL, "replica id");
  expect_msg(w, spi_replica_remove(w->e, NULL, 0), SPI_EINVAL, "replica id");
  expect_msg(w, spi_replica_set_state(w->e, id64, 64, 1), SPI_EINVAL,
             "replica id");
  expect_msg(w, report(w, "", 0, 0, 0, 0), SPI_EINVAL, "replica id");
  done(w);
}

static void test_misuse(void **st) {
  (void)st;
  spi_replica_info ri = info("x", SPI_POOL_SPOT);
  spi_replica_status s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  assert_int_equal(spi_replica_upsert(NULL, &ri), SPI_EMISUSE);
  assert_int_equal(spi_replica_remove(NULL, "x", 1), SPI_EMISUSE);
  assert_int_equal(spi_replica_set_state(NULL, "x", 1, 1), SPI_EMISUSE);
  assert_int_equal(spi_replica_report_load(NULL, "x", 1, &l), SPI_EMISUSE);
  assert_int_equal(spi_replica_report_metrics(NULL, "x", 1, "", 0), SPI_EMISUSE);
  assert_int_equal(spi_replica_count(NULL), 0);
  assert_int_equal(spi_replica_status_at(NULL, 0, &s), SPI_EMISUSE);
  assert_int_equal(spi_replica_status_of(NULL, "x", 1, &s), SPI_EMISUSE);
  spi_engine fake;
  memset(&fake, 0, sizeof fake);
  assert_int_equal(spi_replica_upsert(&fake, &ri), SPI_EMISUSE);
  assert_int_equal(spi_replica_count(&fake), 0);
  assert_int_equal(spi_replica_status_at(&fake, 0, &s), SPI_EMISUSE);
}

static void test_full(void **st) {
  (void)st;
  world *w = mk("{\"router\":{\"max_replicas\":3}}");
  add(w, "a", SPI_POOL_SPOT);
  add(w, "b", SPI_POOL_SPOT);
  add(w, "c", SPI_POOL_ON_DEMAND);
  spi_replica_info ri = info("d", SPI_POOL_SPOT);
  expect_msg(w, spi_replica_upsert(w->e, &ri), SPI_EFULL, "router.max_replicas");
  assert_int_equal(spi_replica_count(w->e), 3);
  /* Updating one that exists is not adding. */
  ri = info("b", SPI_POOL_SPOT);
  ri.usd_per_hour = 2;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  /* Room again after a removal. */
  assert_int_equal(spi_replica_remove(w->e, "a", 1), SPI_OK);
  add(w, "d", SPI_POOL_SPOT);
  /* A larger bound applies at once; a smaller one stops additions only. */
  assert_int_equal(spi_engine_configure(w->e, "{\"router\":{\"max_replicas\":4}}",
                                        strlen("{\"router\":{\"max_replicas\":4}}")),
                   SPI_OK);
  add(w, "e", SPI_POOL_SPOT);
  assert_int_equal(spi_engine_configure(w->e, "{\"router\":{\"max_replicas\":1}}",
                                        strlen("{\"router\":{\"max_replicas\":1}}")),
                   SPI_OK);
  assert_int_equal(spi_replica_count(w->e), 4);
  ri = info("f", SPI_POOL_SPOT);
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_EFULL);
  ri = info("e", SPI_POOL_SPOT);
  ri.usd_per_hour = 3;
  assert_int_equal(spi_replica_upsert(w->e, &ri), SPI_OK);
  done(w);
}

static void test_remove_and_order(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "a", SPI_POOL_SPOT);
  add(w, "b", SPI_POOL_SPOT);
  add(w, "c", SPI_POOL_ON_DEMAND);
  spi_replica_status s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  const char *order[] = {"a", "b", "c"};
  for (size_t i = 0; i < 3; i++) {
    assert_int_equal(spi_replica_status_at(w->e, i, &s), SPI_OK);
    assert_string_equal(s.id, order[i]);
  }
  expect_msg(w, spi_replica_status_at(w->e, 3, &s), SPI_ENOTFOUND,
             "replica index 3");
  spi_replica_slot *bs = slot_of(w, "b");
  uint32_t bslot = ident(w, "b")->slot;
  unsigned g = atomic_load(&bs->gen);
  assert_int_equal(spi_replica_remove(w->e, "b", 1), SPI_OK);
  assert_int_equal(atomic_load(&bs->gen), g + 1);
  assert_int_equal(atomic_load(&bs->state), 0);
  assert_null(ident(w, "b"));
  assert_int_equal(spi_replica_count(w->e), 2);
  assert_int_equal(spi_replica_status_at(w->e, 1, &s), SPI_OK);
  assert_string_equal(s.id, "c"); /* indices shift */
  expect_msg(w, spi_replica_status_of(w->e, "b", 1, &s), SPI_ENOTFOUND,
             "replica \"b\": not found");
  expect_msg(w, spi_replica_remove(w->e, "b", 1), SPI_ENOTFOUND, "not found");
  expect_msg(w, spi_replica_set_state(w->e, "b", 1, 2), SPI_ENOTFOUND,
             "not found");
  expect_msg(w, report(w, "b", 1, 1, 0.1, 0), SPI_ENOTFOUND, "not found");
  /* Back again: a fresh slot (freed ones are reused last) and a fresh
   * start: no load, closed breaker. */
  atomic_store(&bs->consecutive_errors, 9u);
  add(w, "b", SPI_POOL_SPOT);
  assert_int_not_equal(ident(w, "b")->slot, bslot);
  s = status_of(w, "b");
  assert_int_equal(s.load_at_ns, 0);
  assert_int_equal(s.consecutive_errors, 0);
  assert_int_equal(spi_replica_status_at(w->e, 2, &s), SPI_OK);
  assert_string_equal(s.id, "b");
  /* Remove the first, the last, and all. */
  assert_int_equal(spi_replica_remove(w->e, "a", 1), SPI_OK);
  assert_int_equal(spi_replica_remove(w->e, "b", 1), SPI_OK);
  assert_int_equal(spi_replica_remove(w->e, "c", 1), SPI_OK);
  assert_int_equal(spi_replica_count(w->e), 0);
  expect_msg(w, spi_replica_status_at(w->e, 0, &s), SPI_ENOTFOUND, "index 0");
  /* Bad output structs. */
  add(w, "a", SPI_POOL_SPOT);
  expect_msg(w, spi_replica_status_at(w->e, 0, NULL), SPI_EINVAL, "NULL");
  s.struct_size = sizeof s - 1;
  expect_msg(w, spi_replica_status_at(w->e, 0, &s), SPI_EINVAL, "struct_size");
  expect_msg(w, spi_replica_status_of(w->e, "a", 1, &s), SPI_EINVAL,
             "struct_size");
  done(w);
}

/* Slots are handed out round-robin, so one freed is reused only after every
 * other free slot was. */
static void test_slot_reuse(void **st) {
  (void)st;
  world *w = mk(NULL);
  uint32_t first = 0;
  for (int i = 0; i < 3000; i++) {
    char id[16];
    snprintf(id, sizeof id, "r%d", i);
    add(w, id, SPI_POOL_SPOT);
    uint32_t sl = ident(w, id)->slot;
    if (i == 0) first = sl;
    else assert_int_equal(sl, (first + (uint32_t)i) % SPI_REPLICA_SLOTS);
    assert_int_equal(spi_replica_remove(w->e, id, strlen(id)), SPI_OK);
  }
  done(w);
}

static void test_state_and_gen(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "r", SPI_POOL_SPOT);
  unsigned g = gen_of(w, "r");
  expect_msg(w, spi_replica_set_state(w->e, "r", 1, 0), SPI_EINVAL,
             "state 0 is not valid");
  expect_msg(w, spi_replica_set_state(w->e, "r", 1, 4), SPI_EINVAL, "state 4");
  assert_int_equal(spi_replica_set_state(w->e, "r", 1, SPI_REPLICA_ACTIVE),
                   SPI_OK);
  assert_int_equal(gen_of(w, "r"), g);
  assert_int_equal(spi_replica_set_state(w->e, "r", 1, SPI_REPLICA_DRAINING),
                   SPI_OK);
  assert_int_equal(status_of(w, "r").state, SPI_REPLICA_DRAINING);
  assert_int_equal(gen_of(w, "r"), g + 1);
  /* Off ACTIVE to off ACTIVE: its entries are already dead. */
  assert_int_equal(spi_replica_set_state(w->e, "r", 1, SPI_REPLICA_NOTICED),
                   SPI_OK);
  assert_int_equal(status_of(w, "r").state, SPI_REPLICA_NOTICED);
  assert_int_equal(gen_of(w, "r"), g + 1);
  assert_int_equal(spi_replica_set_state(w->e, "r", 1, SPI_REPLICA_ACTIVE),
                   SPI_OK);
  assert_int_equal(gen_of(w, "r"), g + 1);
  assert_int_equal(spi_replica_set_state(w->e, "r", 1, SPI_REPLICA_NOTICED),
                   SPI_OK);
  assert_int_equal(gen_of(w, "r"), g + 2);
  done(w);
}

static void test_load_and_stale(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "r", SPI_POOL_SPOT);
  spi_replica_slot *s = slot_of(w, "r");
  spi_load_view v;
  int64_t t0 = atomic_load(&w->now);
  /* Never reported: saturated. */
  spi__replica_load(s, t0, 1000 * MS, &v);
  assert_int_equal(v.fresh, 0);
  assert_true(v.running >= 1e9 && v.waiting >= 1e9 && v.kv_usage == 1);
  /* Reported now (at_ns 0). */
  assert_int_equal(report(w, "r", 4, 2, 0.25, 0), SPI_OK);
  spi_replica_status st1 = status_of(w, "r");
  assert_int_equal(st1.load_at_ns, t0);
  assert_int_equal(st1.load_fresh, 1);
  assert_true(st1.running == 4 && st1.waiting == 2 && st1.kv_usage == 0.25);
  spi__replica_load(s, t0, 1000 * MS, &v);
  assert_int_equal(v.fresh, 1);
  assert_true(v.running == 4 && v.waiting == 2 && v.kv_usage == 0.25);
  /* The default bound is 1000 ms: fresh just under it, stale at it. */
  atomic_store(&w->now, t0 + 999 * MS);
  assert_int_equal(status_of(w, "r").load_fresh, 1);
  atomic_store(&w->now, t0 + 1000 * MS);
  st1 = status_of(w, "r");
  assert_int_equal(st1.load_fresh, 0);
  assert_true(st1.running == 4); /* the last report, whatever its age */
  spi__replica_load(s, t0 + 1000 * MS, 1000 * MS, &v);
  assert_int_equal(v.fresh, 0);
  assert_true(v.running >= 1e9 && v.kv_usage == 1);
  /* A non-positive bound means the default. */
  spi__replica_load(s, t0 + 999 * MS, 0, &v);
  assert_int_equal(v.fresh, 1);
  /* An explicit measurement time. */
  assert_int_equal(report(w, "r", 1, 0, 0.5, t0 + 900 * MS), SPI_OK);
  assert_int_equal(status_of(w, "r").load_at_ns, t0 + 900 * MS);
  assert_int_equal(status_of(w, "r").load_fresh, 1);
  /* From too far in the future: stale too. */
  assert_int_equal(report(w, "r", 1, 0, 0.5, t0 + 5 * SEC), SPI_OK);
  assert_int_equal(status_of(w, "r").load_fresh, 0);
  spi__replica_load(s, t0 + 1000 * MS, 1000 * MS, &v);
  assert_int_equal(v.fresh, 0);
  /* Timestamps at the ends of the range do not wrap around. */
  spi__replica_load(s, INT64_MIN, 1000 * MS, &v);
  assert_int_equal(v.fresh, 0);
  assert_int_equal(report(w, "r", 1, 0, 0.5, INT64_MAX), SPI_OK);
  spi__replica_load(s, -5, 1000 * MS, &v);
  assert_int_equal(v.fresh, 0);
  /* The configured bound. */
  assert_int_equal(spi_engine_configure(w->e, "{\"router\":{\"load_max_age_ms\":250}}",
                                        strlen("{\"router\":{\"load_max_age_ms\":250}}")),
                   SPI_OK);
  int64_t t1 = atomic_load(&w->now);
  assert_int_equal(report(w, "r", 1, 0, 0.5, 0), SPI_OK);
  atomic_store(&w->now, t1 + 249 * MS);
  assert_int_equal(status_of(w, "r").load_fresh, 1);
  atomic_store(&w->now, t1 + 250 * MS);
  assert_int_equal(status_of(w, "r").load_fresh, 0);
  /* A clock at 0 still records a report. */
  atomic_store(&w->now, 0);
  assert_int_equal(report(w, "r", 1, 0, 0.5, 0), SPI_OK);
  assert_true(status_of(w, "r").load_at_ns != 0);
  assert_int_equal(status_of(w, "r").load_fresh, 1);
  done(w);
}

/* An id is 1..63 bytes of 0x21..0x7e: every byte value at every place of
 * ids of 1 to 17 bytes, each in a buffer of its own length (so a read past
 * it is a sanitizer's error), is taken or refused as that says. */
static void test_id_bytes(void **st) {
  (void)st;
  world *w = mk(NULL);
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  for (size_t len = 1; len <= 17; len++) {
    char *id = malloc(len);
    assert_non_null(id);
    for (size_t at = 0; at < len; at++)
      for (unsigned v = 0; v < 256; v++) {
        memset(id, 'a', len);
        id[at] = (char)v;
        int want = v > 0x20 && v < 0x7f ? SPI_ENOTFOUND : SPI_EINVAL;
        int rc = spi_replica_report_load(w->e, id, len, &l);
        if (rc != want)
          fail_msg("len %zu, byte %zu = 0x%02x: %d, want %d", len, at, v, rc,
                   want);
      }
    free(id);
  }
  done(w);
}

static void test_load_errors(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "r", SPI_POOL_SPOT);
  assert_int_equal(report(w, "r", 1, 2, 0.3, 0), SPI_OK);
  expect_msg(w, report(w, "r", NAN, 0, 0, 0), SPI_ERANGE,
             "replica \"r\": load.running");
  expect_msg(w, report(w, "r", -1, 0, 0, 0), SPI_ERANGE, "load.running");
  expect_msg(w, report(w, "r", INFINITY, 0, 0, 0), SPI_ERANGE, "load.running");
  expect_msg(w, report(w, "r", 0, -0.5, 0, 0), SPI_ERANGE, "load.waiting");
  expect_msg(w, report(w, "r", 0, NAN, 0, 0), SPI_ERANGE, "load.waiting");
  expect_msg(w, report(w, "r", 0, 0, 1.01, 0), SPI_ERANGE, "load.kv_usage");
  expect_msg(w, report(w, "r", 0, 0, -0.01, 0), SPI_ERANGE, "load.kv_usage");
  expect_msg(w, report(w, "r", 0, 0, NAN, 0), SPI_ERANGE, "load.kv_usage");
  expect_msg(w, report(w, "r", 0, 0, 0, -1), SPI_ERANGE, "load.at_ns");
  expect_msg(w, spi_replica_report_load(w->e, "r", 1, NULL), SPI_EINVAL,
             "NULL load");
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l - 1;
  expect_msg(w, spi_replica_report_load(w->e, "r", 1, &l), SPI_EINVAL,
             "struct_size");
  expect_msg(w, report(w, "nope", 0, 0, 0, 0), SPI_ENOTFOUND,
             "replica \"nope\": not found");
  /* Nothing was stored by the failures; the limits themselves are fine. */
  spi_replica_status s = status_of(w, "r");
  assert_true(s.running == 1 && s.waiting == 2 && s.kv_usage == 0.3);
  assert_int_equal(report(w, "r", 0, 0, 1, 0), SPI_OK);
  assert_int_equal(report(w, "r", 1e6, 1e6, 0, 0), SPI_OK);
  done(w);
}

static const char VLLM_PAGE[] =
    "# HELP vllm:num_requests_running Number of requests in model execution "
    "batches.\n"
    "# TYPE vllm:num_requests_running gauge\n"
    "vllm:num_requests_running{engine=\"0\",model_name=\"llama-3.1-8b\"} 9.0\n"
    "# HELP vllm:num_requests_waiting Number of requests waiting to be "
    "processed.\n"
    "# TYPE vllm:num_requests_waiting gauge\n"
    "vllm:num_requests_waiting{engine=\"0\",model_name=\"llama-3.1-8b\"} 4.0\n"
    "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent "
    "usage.\n"
    "# TYPE vllm:kv_cache_usage_perc gauge\n"
    "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"llama-3.1-8b\"} "
    "0.6875\n";

static void test_metrics_text(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "r1", SPI_POOL_SPOT);
  int64_t t0 = atomic_load(&w->now);
  assert_int_equal(
      spi_replica_report_metrics(w->e, "r1", 2, VLLM_PAGE, strlen(VLLM_PAGE)),
      SPI_OK);
  spi_replica_status s = status_of(w, "r1");
  assert_true(s.running == 9 && s.waiting == 4 && s.kv_usage == 0.6875);
  assert_int_equal(s.load_at_ns, t0);
  assert_int_equal(s.load_fresh, 1);
  /* Errors carry the parser's line number; the last good load stays. */
  atomic_store(&w->now, t0 + 100 * MS);
  static const char bad[] =
      "vllm:num_requests_running 1\nvllm:num_requests_waiting{x=y} 2\n";
  expect_msg(w, spi_replica_report_metrics(w->e, "r1", 2, bad, strlen(bad)),
             SPI_EPARSE, "replica \"r1\" metrics: line 2: ");
  static const char nan[] = "# c\n\nsglang:token_usage NaN\n";
  expect_msg(w, spi_replica_report_metrics(w->e, "r1", 2, nan, strlen(nan)),
             SPI_ERANGE, "line 3: sglang:token_usage is NaN");
  expect_msg(w, spi_replica_report_metrics(w->e, "r1", 2, "up 1\n", 5),
             SPI_EMISSING, "no load metric");
  expect_msg(w, spi_replica_report_metrics(w->e, "r1", 2, NULL, 4), SPI_EINVAL,
             "NULL");
  s = status_of(w, "r1");
  assert_true(s.running == 9 && s.load_at_ns == t0);
  /* SGLang, stamped now. */
  static const char sg[] = "sglang:num_running_reqs{model_name=\"m\"} 3\n"
                           "sglang:num_queue_reqs{model_name=\"m\"} 1\n"
                           "sglang:token_usage{model_name=\"m\"} 0.5\n";
  assert_int_equal(spi_replica_report_metrics(w->e, "r1", 2, sg, strlen(sg)),
                   SPI_OK);
  s = status_of(w, "r1");
  assert_true(s.running == 3 && s.waiting == 1 && s.kv_usage == 0.5);
  assert_int_equal(s.load_at_ns, t0 + 100 * MS);
  expect_msg(w, spi_replica_report_metrics(w->e, "r2", 2, sg, strlen(sg)),
             SPI_ENOTFOUND, "not found");
  done(w);
}

static void test_serves_and_find(void **st) {
  (void)st;
  spi_replica_ident r;
  memset(&r, 0, sizeof r);
  assert_true(spi__replica_serves(&r, "anything", 8));
  strcpy(r.models, "llama-3.1-8b, mistral-7b ,qwen,");
  r.models_len = strlen(r.models);
  assert_true(spi__replica_serves(&r, "llama-3.1-8b", 12));
  assert_true(spi__replica_serves(&r, "mistral-7b", 10));
  assert_true(spi__replica_serves(&r, "qwen", 4));
  assert_false(spi__replica_serves(&r, "llama", 5));
  assert_false(spi__replica_serves(&r, "qwen2", 5));
  assert_false(spi__replica_serves(&r, "mistral-7b ", 11));
  assert_true(spi__replica_serves(&r, "", 0)); /* no model named */
  strcpy(r.models, "solo");
  r.models_len = 4;
  assert_true(spi__replica_serves(&r, "solo", 4));
  assert_false(spi__replica_serves(&r, "sol", 3));

  world *w = mk(NULL);
  add(w, "a", SPI_POOL_SPOT);
  add(w, "ab", SPI_POOL_SPOT);
  spi_replica_set *set = atomic_load(&w->e->registry.set);
  assert_string_equal(spi__registry_find(set, "ab", 2)->id, "ab");
  assert_string_equal(spi__registry_find(set, "ab", 1)->id, "a");
  assert_null(spi__registry_find(set, "b", 1));
  assert_null(spi__registry_find(set, NULL, 0));
  assert_null(spi__registry_find(NULL, "a", 1));
  done(w);
}

/* Bytes allocated through the engine's hook, for test_add_cost. */
typedef struct byte_count {
  size_t bytes;
} byte_count;

static void *count_alloc(void *ud, size_t n) {
  ((byte_count *)ud)->bytes += n;
  return malloc(n);
}

static void count_free(void *ud, void *p) {
  (void)ud;
  free(p);
}

/* Adding a replica writes the new entry where readers of the current set
 * never look and publishes a set over the same entries: it copies none of
 * the others (each add used to copy the whole set, ~900 bytes a replica:
 * 1,024 adds allocated ~460 MB), and finds whether its id is registered
 * through the entries' index by id (it read every entry: ~520,000 looks
 * for 1,024 adds). */
static void test_add_cost(void **st) {
  (void)st;
  byte_count c = {0};
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = count_alloc;
  h.free = count_free;
  h.alloc_user_data = &c;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  enum { N = 1024 };
  char id[32];
  size_t before = c.bytes;
  uint64_t steps = e->registry.link_steps;
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof id, "r-%05d", i);
    spi_replica_info ri = info(id, i % 2 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND);
    assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
  }
  size_t used = c.bytes - before;
  print_message("%zu bytes allocated by %d adds\n", used, N);
  /* Nor does an add read the set to find out whether its id is there. */
  steps = e->registry.link_steps - steps;
  print_message("%llu entries looked at by their lookups\n",
                (unsigned long long)steps);
  assert_true(steps <= 4 * (uint64_t)N);
  /* Each add: a set header with its slot map (~8 KB); the entries grow
   * geometrically, so they are written a bounded number of times. */
  assert_true(used < (size_t)N * (2 * SPI_REPLICA_SLOTS * sizeof(uint16_t)) +
                         4 * (size_t)N * sizeof(spi_replica_ident));
  assert_int_equal(spi_replica_count(e), N);
  for (int i = 0; i < N; i += 97) {
    snprintf(id, sizeof id, "r-%05d", i);
    spi_replica_status rs;
    memset(&rs, 0, sizeof rs);
    rs.struct_size = sizeof rs;
    assert_int_equal(spi_replica_status_at(e, (size_t)i, &rs), SPI_OK);
    assert_string_equal(rs.id, id);
  }
  spi_engine_free(e);
}

/* Every allocation filled with a byte no text holds, so a copy that
 * missed a text's end would show it. */
static void *poison_alloc(void *ud, size_t n) {
  (void)ud;
  void *p = malloc(n);
  if (p) memset(p, 0xA5, n);
  return p;
}

static void poison_free(void *ud, void *p) {
  (void)ud;
  free(p);
}

/* An entry's text as it was given: the same length and the NUL after it. */
static void expect_text(const char *have, size_t have_len, const char *want) {
  assert_int_equal(have_len, strlen(want));
  assert_string_equal(have, want);
}

/* A removal or an update copies the other entries into a new set, their
 * texts up to the NUL and no further (replica.c, idents_copy): each keeps
 * its id, zone, type, node and models whole, whatever it is next to. */
static void test_remove_keeps_texts(void **st) {
  (void)st;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = poison_alloc;
  h.free = poison_free;
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, &h), SPI_OK);
  static const char *const ids[] = {"r0", "replica-one", "r2", "r-three-long-id"};
  static const char *const zones[] = {"z", "us-central1-a", "", "europe-west4-b"};
  static const char *const models[] = {"", "m1,m2", "llama-3.1-8b", "q"};
  char node[4][32];
  for (int i = 0; i < 4; i++) {
    spi_replica_info ri = info(ids[i], i % 2 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND);
    ri.zone = zones[i], ri.zone_len = strlen(zones[i]);
    ri.models = models[i], ri.models_len = strlen(models[i]);
    snprintf(node[i], sizeof node[i], "node-%d%s", i, i == 3 ? "-with-more" : "");
    ri.node = node[i], ri.node_len = i == 2 ? 0 : strlen(node[i]);
    assert_int_equal(spi_replica_upsert(e, &ri), SPI_OK);
  }
  /* An update of one (a new set, every entry copied), then removals. */
  spi_replica_info up = info(ids[2], SPI_POOL_ON_DEMAND);
  up.zone = zones[2], up.zone_len = 0;
  up.models = models[2], up.models_len = strlen(models[2]);
  up.usd_per_hour = 3.0;
  assert_int_equal(spi_replica_upsert(e, &up), SPI_OK);
  assert_int_equal(spi_replica_remove(e, ids[1], strlen(ids[1])), SPI_OK);
  assert_int_equal(spi_replica_remove(e, ids[0], strlen(ids[0])), SPI_OK);
  const spi_replica_set *set = atomic_load(&e->registry.set);
  assert_int_equal(set->n, 2);
  for (size_t k = 0; k < set->n; k++) {
    const spi_replica_ident *r = &set->r[k];
    int i = (int)k + 2;
    expect_text(r->id, r->id_len, ids[i]);
    expect_text(r->zone, r->zone_len, zones[i]);
    expect_text(r->instance_type, r->type_len, "g6e.xlarge");
    expect_text(r->node, r->node_len, i == 2 ? ids[2] : node[i]);
    expect_text(r->models, r->models_len, models[i]);
    assert_ptr_equal(spi__registry_find(set, ids[i], strlen(ids[i])), r);
  }
  spi_engine_free(e);
}

typedef struct adder {
  spi_engine *e;
  char id[16];
  int rc;
} adder;

static void *add_one(void *p) {
  adder *a = p;
  spi_replica_info ri = info(a->id, SPI_POOL_SPOT);
  a->rc = spi_replica_upsert(a->e, &ri);
  return NULL;
}

/* A reader pinned on a set while adds land after it: each add writes past
 * the end of every set it can see and publishes a new set over the same
 * entries; the pinned set keeps its n and its entries, byte for byte, and
 * the adds return once the reader leaves. */
static void test_add_beside_pinned_reader(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "a", SPI_POOL_SPOT);
  add(w, "b", SPI_POOL_ON_DEMAND);
  unsigned pin;
  spi__snap_acquire(w->e, &pin);
  const spi_replica_set *seen = atomic_load(&w->e->registry.set);
  spi_replica_ident copy[2];
  memcpy(copy, seen->r, sizeof copy);
  adder a[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    a[i].e = w->e;
    snprintf(a[i].id, sizeof a[i].id, "new-%d", i);
    a[i].rc = -1;
    assert_int_equal(pthread_create(&th[i], NULL, add_one, &a[i]), 0);
  }
  /* Wait (bounded in time, not in turns: on a loaded machine the adders
   * may not run for a while) for all three sets to be published. */
  const spi_replica_set *now = seen;
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (t = t0; now->n < 5 && t.tv_sec - t0.tv_sec < 30;
       clock_gettime(CLOCK_MONOTONIC, &t)) {
    sched_yield();
    now = atomic_load(&w->e->registry.set);
  }
  assert_int_equal(now->n, 5);
  assert_int_equal(seen->n, 2);
  assert_memory_equal(seen->r, copy, sizeof copy);
  assert_ptr_equal(now->r, seen->r); /* the same entries, none copied */
  for (size_t i = 0; i < 2; i++) assert_int_equal(seen->pos_of_slot[seen->r[i].slot], i);
  spi__snap_release(w->e, pin);
  for (int i = 0; i < 3; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(a[i].rc, SPI_OK);
  }
  assert_int_equal(spi_replica_count(w->e), 5);
  assert_non_null(ident(w, "new-0"));
  assert_non_null(ident(w, "new-2"));
  done(w);
}

/* Fail each allocation a write makes in turn: the call fails with
 * SPI_ENOMEM, the registry is as before, and nothing leaks. */
static void test_alloc_failure(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "keep", SPI_POOL_SPOT);
  for (int step = 0; step < 3; step++) {
    long before = w->allocs;
    w->fail_at = next_alloc(w);
    spi_replica_info ri = info("new", SPI_POOL_SPOT);
    int rc;
    if (step == 0) {
      rc = spi_replica_upsert(w->e, &ri);
      assert_int_equal(spi_replica_count(w->e), 1);
      assert_null(ident(w, "new"));
    } else if (step == 1) {
      ri = info("keep", SPI_POOL_ON_DEMAND);
      rc = spi_replica_upsert(w->e, &ri);
      assert_int_equal(status_of(w, "keep").pool, SPI_POOL_SPOT);
    } else {
      rc = spi_replica_remove(w->e, "keep", 4);
      assert_non_null(ident(w, "keep"));
      assert_int_equal(atomic_load(&slot_of(w, "keep")->state),
                       SPI_REPLICA_ACTIVE);
    }
    expect_msg(w, rc, SPI_ENOMEM, "out of memory");
    assert_int_equal(w->allocs, before);
  }
  /* The engine never allocates on the load and status paths. */
  long a = w->allocs;
  assert_int_equal(report(w, "keep", 1, 1, 0.1, 0), SPI_OK);
  assert_int_equal(
      spi_replica_report_metrics(w->e, "keep", 4, VLLM_PAGE, strlen(VLLM_PAGE)),
      SPI_OK);
  (void)status_of(w, "keep");
  assert_int_equal(spi_replica_count(w->e), 1);
  assert_int_equal(w->allocs, a);
  done(w);
}

/* ------------------------------------------------------------ concurrency */

#define WRITERS 4
#define READERS 2
#define PER_WRITER 40
#define STABLE 8

typedef struct crowd {
  world *w;
  atomic_int writers_left;
  atomic_int readers_started; /* writers wait for every reader */
  atomic_int bad;
  atomic_long reads;
} crowd;

typedef struct writer_arg {
  crowd *c;
  int n;
} writer_arg;

static void *writer(void *p) {
  writer_arg *a = p;
  crowd *c = a->c;
  char id[32];
  /* Readers first: on a loaded machine the writers could otherwise be done
   * before a reader runs, and nothing would be read beside them. */
  while (atomic_load(&c->readers_started) < READERS) sched_yield();
  for (int i = 0; i < PER_WRITER; i++) {
    snprintf(id, sizeof id, "w%d-%d", a->n, i);
    spi_replica_info ri = info(id, i % 2 ? SPI_POOL_SPOT : SPI_POOL_ON_DEMAND);
    if (spi_replica_upsert(c->w->e, &ri) != SPI_OK) atomic_fetch_add(&c->bad, 1);
    ri.usd_per_hour = 5; /* an update */
    if (spi_replica_upsert(c->w->e, &ri) != SPI_OK) atomic_fetch_add(&c->bad, 1);
    if (spi_replica_set_state(c->w->e, id, strlen(id),
                              i % 3 ? SPI_REPLICA_ACTIVE
                                    : SPI_REPLICA_DRAINING) != SPI_OK)
      atomic_fetch_add(&c->bad, 1);
    if (i % 2 == 0) {
      if (spi_replica_remove(c->w->e, id, strlen(id)) != SPI_OK)
        atomic_fetch_add(&c->bad, 1);
    }
  }
  atomic_fetch_sub(&c->writers_left, 1);
  return NULL;
}

/* Readers only make calls that succeed whatever the writers do (stable
 * replicas are never removed), so a failure is a bug. */
static void *reader(void *p) {
  crowd *c = p;
  spi_engine *e = c->w->e;
  unsigned k = 0;
  atomic_fetch_add(&c->readers_started, 1);
  do {
    k++;
    char id[16];
    snprintf(id, sizeof id, "stable-%u", k % STABLE);
    spi_replica_status s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    size_t n = spi_replica_count(e);
    if (n < STABLE || n > STABLE + WRITERS * PER_WRITER)
      atomic_fetch_add(&c->bad, 1);
    if (spi_replica_status_at(e, k % STABLE, &s) != SPI_OK ||
        strncmp(s.id, "stable-", 7) != 0)
      atomic_fetch_add(&c->bad, 1);
    if (spi_replica_status_of(e, id, strlen(id), &s) != SPI_OK ||
        strcmp(s.id, id) != 0 || s.kv_usage < 0 || s.kv_usage > 1)
      atomic_fetch_add(&c->bad, 1);
    spi_load l;
    memset(&l, 0, sizeof l);
    l.struct_size = sizeof l;
    l.running = k % 50;
    l.kv_usage = (k % 100) / 100.0;
    if (spi_replica_report_load(e, id, strlen(id), &l) != SPI_OK)
      atomic_fetch_add(&c->bad, 1);
    /* Walk the whole published set while pinned, as a router does. */
    unsigned pin;
    spi__snap_acquire(e, &pin);
    spi_replica_set *set = atomic_load(&e->registry.set);
    for (size_t i = 0; i < set->n; i++) {
      spi_load_view v;
      spi__replica_load(&e->registry.slots[set->r[i].slot],
                        spi__engine_now(e), 1000 * MS, &v);
      if (set->r[i].id_len == 0 || v.kv_usage > 1) atomic_fetch_add(&c->bad, 1);
    }
    spi__snap_release(e, pin);
    atomic_fetch_add(&c->reads, 1);
    /* Let the writers' grace periods end on a machine with few cores. */
    sched_yield();
  } while (atomic_load(&c->writers_left) > 0);
  return NULL;
}

static void test_concurrent(void **st) {
  (void)st;
  crowd c;
  memset(&c, 0, sizeof c);
  c.w = mk(NULL);
  for (int i = 0; i < STABLE; i++) {
    char id[16];
    snprintf(id, sizeof id, "stable-%d", i);
    add(c.w, id, SPI_POOL_SPOT);
  }
  atomic_init(&c.writers_left, WRITERS);
  atomic_init(&c.readers_started, 0);
  atomic_init(&c.bad, 0);
  atomic_init(&c.reads, 0);
  pthread_t wt[WRITERS], rt[READERS];
  writer_arg wa[WRITERS];
  for (int i = 0; i < READERS; i++)
    assert_int_equal(pthread_create(&rt[i], NULL, reader, &c), 0);
  for (int i = 0; i < WRITERS; i++) {
    wa[i].c = &c;
    wa[i].n = i;
    assert_int_equal(pthread_create(&wt[i], NULL, writer, &wa[i]), 0);
  }
  for (int i = 0; i < WRITERS; i++) pthread_join(wt[i], NULL);
  for (int i = 0; i < READERS; i++) pthread_join(rt[i], NULL);
  assert_int_equal(atomic_load(&c.bad), 0);
  assert_true(atomic_load(&c.reads) > 0);
  assert_int_equal(spi_replica_count(c.w->e),
                   STABLE + WRITERS * (PER_WRITER / 2));
  /* Every survivor kept its last state and update. */
  for (int n = 0; n < WRITERS; n++)
    for (int i = 1; i < PER_WRITER; i += 2) {
      char id[32];
      snprintf(id, sizeof id, "w%d-%d", n, i);
      spi_replica_status s = status_of(c.w, id);
      assert_true(s.usd_per_hour == 5);
      assert_int_equal(s.state,
                       i % 3 ? SPI_REPLICA_ACTIVE : SPI_REPLICA_DRAINING);
    }
  /* Slots in use are exactly the published replicas'. */
  size_t used = 0;
  for (size_t i = 0; i < SPI_REPLICA_SLOTS; i++)
    used += atomic_load(&c.w->e->registry.slots[i].state) != 0;
  assert_int_equal(used, spi_replica_count(c.w->e));
  done(c.w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_add_and_status),
      cmocka_unit_test(test_update),
      cmocka_unit_test(test_validation),
      cmocka_unit_test(test_misuse),
      cmocka_unit_test(test_full),
      cmocka_unit_test(test_remove_and_order),
      cmocka_unit_test(test_slot_reuse),
      cmocka_unit_test(test_state_and_gen),
      cmocka_unit_test(test_load_and_stale),
      cmocka_unit_test(test_load_errors),
      cmocka_unit_test(test_id_bytes),
      cmocka_unit_test(test_metrics_text),
      cmocka_unit_test(test_serves_and_find),
      cmocka_unit_test(test_alloc_failure),
      cmocka_unit_test(test_add_cost),
      cmocka_unit_test(test_add_beside_pinned_reader),
      cmocka_unit_test(test_remove_keeps_texts),
      cmocka_unit_test(test_concurrent),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
