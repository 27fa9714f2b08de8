/*
 * test_rcu.c - the RCU domain's pins: a writer's wait ends only after
 * every reader pinned before it has left, whether the reader counted
 * itself in its thread's own line (the first SPI_RCU_OWN thread numbers,
 * when fences are cheap) or in a striped counter (every other thread);
 * and readers of both kinds never see an object freed under them.
 */
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "routing.h"

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void *numbered(void *arg) {
  *(uint32_t *)arg = spi__thread_no();
  return NULL;
}

/* Start threads until one is numbered beyond the own lines. */
static void use_up_own_lines(void) {
  for (int i = 0; i < SPI_RCU_OWN + 1; i++) {
    uint32_t n = 0;
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, numbered, &n), 0);
    assert_int_equal(pthread_join(th, NULL), 0);
    if (n > SPI_RCU_OWN) return;
  }
}

static struct {
  spi_rcu r;
  atomic_int done;
} w1;

static void *synchronizer(void *arg) {
  (void)arg;
  spi__rcu_synchronize(&w1.r);
  atomic_store(&w1.done, 1);
  return NULL;
}

/* Pin on this thread, start a writer, see it wait, leave, see it end. */
static void writer_waits_for(int want_own) {
  unsigned pin = spi__rcu_enter(&w1.r);
  assert_int_equal((pin & 2u) != 0, want_own);
  if (want_own)
    assert_int_equal(atomic_load(&w1.r.own[pin >> 2].n[pin & 1u]), 1);
  else
    assert_int_equal(atomic_load(&w1.r.readers[pin & 1u][pin >> 2].n), 1);
  atomic_store(&w1.done, 0);
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, synchronizer, NULL), 0);
  sleep_ms(50);
  assert_int_equal(atomic_load(&w1.done), 0);
  spi__rcu_exit(&w1.r, pin);
  assert_int_equal(pthread_join(th, NULL), 0);
  assert_int_equal(atomic_load(&w1.done), 1);
}

static void *striped_reader(void *arg) {
  (void)arg;
  writer_waits_for(0);
  return NULL;
}

static void writer_waits_for_both_kinds(void **state) {
  (void)state;
  assert_int_equal(spi__rcu_init(&w1.r), SPI_OK);
  /* Three readers were numbered before this thread (the race below, run
   * first): its number is still among the own lines'. */
  if (spi__fences_cheap()) writer_waits_for(1);
  use_up_own_lines();
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, striped_reader, NULL), 0);
  assert_int_equal(pthread_join(th, NULL), 0);
  spi__rcu_destroy(&w1.r);
}

/* ------------------------------------------- readers and a writer racing */

#define RACE_READERS 3
#define RACE_SWAPS 2000
#define RACE_NS 2000000000LL
#define CANARY 0x5eed5eedu

typedef struct obj {
  unsigned canary;
} obj;

static struct {
  spi_rcu r;
  _Atomic(obj *) cur;
  atomic_int stop;
  atomic_long bad;
} race;

static void *reader(void *arg) {
  (void)arg;
  while (!atomic_load(&race.stop)) {
    unsigned pin = spi__rcu_enter(&race.r);
    obj *o = atomic_load(&race.cur);
    for (int i = 0; i < 64; i++)
      if (o->canary != CANARY) atomic_fetch_add(&race.bad, 1);
    spi__rcu_exit(&race.r, pin);
  }
  return NULL;
}

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Readers pin while the writer swaps the object, waits and frees the old
 * one, for at most RACE_SWAPS swaps and RACE_NS. */
static void readers_race_a_writer(void) {
  memset(&race, 0, sizeof race);
  assert_int_equal(spi__rcu_init(&race.r), SPI_OK);
  obj *o = malloc(sizeof *o);
  assert_non_null(o);
  o->canary = CANARY;
  atomic_store(&race.cur, o);
  pthread_t th[RACE_READERS];
  for (int i = 0; i < RACE_READERS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, reader, NULL), 0);
  int64_t end = mono_ns() + RACE_NS;
  for (int i = 0; i < RACE_SWAPS && mono_ns() < end; i++) {
    obj *n = malloc(sizeof *n);
    assert_non_null(n);
    n->canary = CANARY;
    obj *old = atomic_exchange(&race.cur, n);
    spi__rcu_synchronize(&race.r);
    old->canary = 0; /* a reader still on it would count it bad */
    free(old);
    if (i % 64 == 0) sched_yield();
  }
  atomic_store(&race.stop, 1);
  for (int i = 0; i < RACE_READERS; i++)
    assert_int_equal(pthread_join(th[i], NULL), 0);
  assert_int_equal(atomic_load(&race.bad), 0);
  free(atomic_load(&race.cur));
  spi__rcu_destroy(&race.r);
}

/* Run first: the readers are this process's first numbered threads, each
 * with its own line where fences are cheap. */
static void readers_in_own_lines_never_see_a_freed_object(void **state) {
  (void)state;
  readers_race_a_writer();
}

/* Run after writer_waits_for_both_kinds: every number since is beyond the
 * own lines, so the readers count themselves in stripes. */
static void readers_in_stripes_never_see_a_freed_object(void **state) {
  (void)state;
  readers_race_a_writer();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(readers_in_own_lines_never_see_a_freed_object),
      cmocka_unit_test(writer_waits_for_both_kinds),
      cmocka_unit_test(readers_in_stripes_never_see_a_freed_object),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
