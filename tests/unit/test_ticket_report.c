/*
 * test_ticket_report.c - stream reports (first token) read the ticket they
 * name, never the next ticket given the same record.
 *
 * The interleaving is forced, not raced: the engine's clock hook, which a
 * first-token report calls, lets another thread finish the reported ticket
 * and route a new request of another class, which takes the same ticket
 * record (the free list hands back the record freed last). A report that
 * found its record before that and reads it after (without a pin) takes
 * the new ticket's class and start time, marks the new ticket as having
 * its first token, and answers SPI_OK for a ticket already finished: the
 * new ticket's first token is then never counted and it stays in the
 * queue-depth gauge for good. A second test races the same reports
 * (progress too) against finishes and routes for real, for
 * ThreadSanitizer to judge.
 */
#include <pthread.h>
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
#include "watchdog.h"

static void add(world *w, const char *id, int32_t pool) {
  add_replica(w, id, pool, 16);
  report_load(w, id, 1, 0, 0.2);
}

/* Route a short chat request of a class on its own request object. */
static uint64_t route_class(world *w, spi_request *r, const char *klass) {
  static const char user[] = "what is the capital of France?";
  spi_request_reset(r);
  spi_request_set_str(r, SPI_REQ_MODEL, "llama", 5);
  spi_request_set_str(r, SPI_REQ_CLASS, klass, strlen(klass));
  spi_request_add_message(r, "user", 4, user, sizeof user - 1);
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  int rc = spi_route(r, &d);
  if (rc) print_error("%s\n", spi_engine_errmsg(w->e));
  assert_int_equal(rc, SPI_OK);
  assert_true(d.ticket != 0);
  return d.ticket;
}

static spi_signals signals(world *w) {
  spi_signals s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  assert_int_equal(spi_engine_signals(w->e, &s), SPI_OK);
  return s;
}

/* What the other thread does inside the report. */
typedef struct meddler {
  world *w;
  pthread_t reporter;  /* the thread whose clock read sets it off */
  atomic_int armed;
  uint64_t finished;   /* finished by the meddler */
  uint64_t routed;     /* routed by the meddler: same record, other class */
  int finish_rc, route_rc;
} meddler;

static void *meddle(void *arg) {
  meddler *m = arg;
  m->finish_rc = finish_rc(m->w, m->finished, SPI_TICKET_OK);
  spi_request *r = NULL;
  m->route_rc = spi_request_new(m->w->e, &r);
  if (m->route_rc == SPI_OK) {
    static const char user[] = "a different question entirely";
    spi_request_set_str(r, SPI_REQ_MODEL, "llama", 5);
    spi_request_set_str(r, SPI_REQ_CLASS, "gold", 4);
    spi_request_add_message(r, "user", 4, user, sizeof user - 1);
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    m->route_rc = spi_route(r, &d);
    m->routed = d.ticket;
    spi_request_free(r);
  }
  return NULL;
}

/* The clock hook: on the reporting thread, once, finish and reroute on
 * another thread and wait for it. */
static void on_clock(world *w) {
  meddler *m = w->user;
  if (!pthread_equal(pthread_self(), m->reporter)) return;
  int one = 1;
  if (!atomic_compare_exchange_strong(&m->armed, &one, 0)) return;
  pthread_t th;
  assert_int_equal(pthread_create(&th, NULL, meddle, m), 0);
  pthread_join(th, NULL);
}

static void test_first_token_reads_its_own_ticket(void **st) {
  (void)st;
  spi_test_watchdog("first token vs a reused record", 30);
  world *w = mk(NULL);
  add(w, "spot-a", SPI_POOL_SPOT);
  add(w, "od-a", SPI_POOL_ON_DEMAND);
  meddler m;
  memset(&m, 0, sizeof m);
  m.w = w;
  m.reporter = pthread_self();
  m.finished = route_class(w, w->r, "silver");
  assert_int_equal(signals(w).queue_depth[SPI_CLASS_SILVER], 1);
  w->user = &m;
  w->on_clock = on_clock;
  atomic_store(&m.armed, 1);
  w->now += 40 * MS;
  int rc = spi_ticket_first_token(w->e, m.finished);
  assert_int_equal(atomic_load(&m.armed), 0); /* the hook did run */
  w->on_clock = NULL;
  assert_int_equal(m.finish_rc, SPI_OK);
  assert_int_equal(m.route_rc, SPI_OK);
  assert_true(m.routed != 0 && m.routed != m.finished);
  /* The new ticket has the same record: the id's low bits are its index. */
  assert_int_equal(m.routed & 0xffffff, m.finished & 0xffffff);

  /* The reported ticket was finished before the report read it. */
  assert_int_equal(rc, SPI_ESTALE);
  spi_signals s = signals(w);
  assert_int_equal(s.queue_depth[SPI_CLASS_SILVER], 0);
  assert_int_equal(s.queue_depth[SPI_CLASS_GOLD], 1);
  assert_true(s.p95_ttft_ms[SPI_CLASS_SILVER] == 0);

  /* The new ticket's own first token counts, once, in its own class. */
  w->now += 100 * MS;
  assert_int_equal(spi_ticket_first_token(w->e, m.routed), SPI_OK);
  s = signals(w);
  assert_int_equal(s.queue_depth[SPI_CLASS_GOLD], 0);
  assert_true(s.p95_ttft_ms[SPI_CLASS_GOLD] > 0);
  assert_true(s.p95_ttft_ms[SPI_CLASS_SILVER] == 0);
  assert_int_equal(finish_rc(w, m.routed, SPI_TICKET_OK), SPI_OK);
  s = signals(w);
  for (int c = 0; c < 4; c++) assert_true(s.queue_depth[c] == 0);
  done(w);
  spi_test_watchdog("test", 0);
}

/* Reports racing their ticket's finish and the next route, for real: one
 * thread routes and finishes over and over (every route reuses the record
 * just freed), another reports progress and first tokens on the ticket
 * most recently routed. Under ThreadSanitizer, a report that reads the
 * record's fields without pinning it races the route that refills it.
 * Everywhere, a report answers SPI_OK or SPI_ESTALE, and in the end no
 * ticket is left in the queue-depth gauge. Bounded by count and time. */
typedef struct racer {
  world *w;
  _Atomic uint64_t latest;
  atomic_int stop;
  atomic_long routed, bad;
} racer;

static void *route_loop(void *arg) {
  racer *x = arg;
  spi_request *r = NULL;
  if (spi_request_new(x->w->e, &r) != SPI_OK) {
    atomic_fetch_add(&x->bad, 1);
    atomic_store(&x->stop, 1);
    return NULL;
  }
  static const char user[] = "again";
  spi_request_set_str(r, SPI_REQ_MODEL, "llama", 5);
  spi_request_add_message(r, "user", 4, user, sizeof user - 1);
  for (int i = 0; i < 20000 && !atomic_load(&x->stop); i++) {
    spi_request_set_str(r, SPI_REQ_CLASS, i % 2 ? "gold" : "silver", i % 2 ? 4 : 6);
    spi_decision d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    if (spi_route(r, &d) != SPI_OK || !d.ticket) {
      atomic_fetch_add(&x->bad, 1);
      continue;
    }
    atomic_store(&x->latest, d.ticket);
    if (finish_rc(x->w, d.ticket, SPI_TICKET_OK) != SPI_OK)
      atomic_fetch_add(&x->bad, 1);
    atomic_fetch_add(&x->routed, 1);
  }
  atomic_store(&x->stop, 1);
  spi_request_free(r);
  return NULL;
}

static void *report_loop(void *arg) {
  racer *x = arg;
  for (uint64_t n = 1; !atomic_load(&x->stop); n++) {
    uint64_t t = atomic_load(&x->latest);
    if (!t) continue;
    int rc = n % 2 ? spi_ticket_progress(x->w->e, t, n)
                   : spi_ticket_first_token(x->w->e, t);
    if (rc != SPI_OK && rc != SPI_ESTALE && rc != SPI_ERANGE)
      atomic_fetch_add(&x->bad, 1);
  }
  return NULL;
}

static void test_reports_race_finish_and_reuse(void **st) {
  (void)st;
  spi_test_watchdog("reports racing finish and reuse", 60);
  world *w = mk(NULL);
  add(w, "spot-a", SPI_POOL_SPOT);
  add(w, "od-a", SPI_POOL_ON_DEMAND);
  racer x;
  memset(&x, 0, sizeof x);
  x.w = w;
  pthread_t a, b;
  assert_int_equal(pthread_create(&a, NULL, route_loop, &x), 0);
  assert_int_equal(pthread_create(&b, NULL, report_loop, &x), 0);
  /* At most about two seconds, whatever the machine. */
  struct timespec tick = {0, 10000000};
  for (int i = 0; i < 200 && !atomic_load(&x.stop); i++) nanosleep(&tick, NULL);
  atomic_store(&x.stop, 1);
  pthread_join(a, NULL);
  pthread_join(b, NULL);
  assert_int_equal(atomic_load(&x.bad), 0);
  assert_true(atomic_load(&x.routed) > 0);
  spi_signals s = signals(w);
  for (int c = 0; c < 4; c++) assert_true(s.queue_depth[c] == 0);
  done(w);
  spi_test_watchdog("test", 0);
}

/* Token counts a report cannot mean: a finish's output and a progress
 * report beyond what any request may ask for (1e9 tokens) are refused with
 * SPI_ERANGE and change nothing. Taken, such a count would be summed into
 * the tokens the replica was sent (the finish puts the output in place of
 * the estimate) and wrap that counter: the load guard would then read the
 * replica as having served almost nothing or forever too much, and every
 * replica joining its pool starts at the pool's mean. */
static void test_token_counts_out_of_range(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "od-a", SPI_POOL_ON_DEMAND);
  const spi_replica_ident *r =
      spi__registry_find(atomic_load(&w->e->registry.set), "od-a", 4);
  assert_non_null(r);
  spi_replica_slot *s = &w->e->registry.slots[r->slot];
  uint64_t t = route_class(w, w->r, "gold");
  unsigned long long sent = atomic_load(&s->served_tokens);
  assert_true(sent > 0);
  assert_int_equal(spi_ticket_progress(w->e, t, UINT64_MAX - 7), SPI_ERANGE);
  assert_int_equal(spi_ticket_progress(w->e, t, 1000000001), SPI_ERANGE);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  res.output_tokens = UINT64_MAX - 7;
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_ERANGE);
  assert_true(atomic_load(&s->served_tokens) == sent);
  /* The ticket is still open, and a count in range closes it. */
  assert_int_equal(spi_ticket_progress(w->e, t, 1000000000), SPI_OK);
  res.output_tokens = 0; /* unknown: the progress reported stands for it */
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_OK);
  assert_true(atomic_load(&s->served_tokens) > sent);
  assert_true(atomic_load(&s->served_tokens) < sent + 1000000000ull);
  done(w);
}

/* A finish's prompt and cached counts beyond what any request may say it
 * has (1e11 tokens) are refused with SPI_ERANGE, the ticket left open: 2^63
 * prompt tokens priced nothing (the cost model's signed view went
 * negative) and wrapped the ledger's total. A cached count above the
 * prompt's is summed into the ledger as priced: no more than the prompt. */
static void test_prompt_counts_out_of_range(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "od-a", SPI_POOL_ON_DEMAND);
  uint64_t t = route_class(w, w->r, "gold");
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  res.output_tokens = 10;
  res.prompt_tokens = UINT64_C(1) << 63;
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_ERANGE);
  assert_non_null(strstr(spi_engine_errmsg(w->e), "prompt"));
  res.prompt_tokens = 0;
  res.cached_tokens = UINT64_C(100000000001);
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_ERANGE);
  /* Still open: a finish in range closes it, cached past the prompt's
   * estimate (the finish names no prompt count) counted as the prompt. */
  res.cached_tokens = 1000000;
  assert_int_equal(spi_ticket_finish(w->e, t, &res), SPI_OK);
  size_t n = spi_ledger_count(w->e);
  int seen = 0;
  for (size_t i = 0; i < n; i++) {
    spi_ledger_row row;
    memset(&row, 0, sizeof row);
    row.struct_size = sizeof row;
    assert_int_equal(spi_ledger_row_at(w->e, i, &row), SPI_OK);
    if (!row.completed) continue;
    seen++;
    assert_true(row.usd > 0);
    assert_true(row.prompt_tokens > 0);
    assert_true(row.cached_tokens <= row.prompt_tokens);
  }
  assert_int_equal(seen, 1);
  done(w);
}

/* Route and finish one ticket of tenant t (n bytes) on w. */
static void serve_tenant(world *w, const char *t, size_t n) {
  spi_request_reset(w->r);
  spi_request_set_str(w->r, SPI_REQ_MODEL, "llama", 5);
  spi_request_set_str(w->r, SPI_REQ_CLASS, "gold", 4);
  assert_int_equal(spi_request_set_str(w->r, SPI_REQ_TENANT, t, n), SPI_OK);
  spi_request_add_message(w->r, "user", 4, "hello", 5);
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  assert_int_equal(spi_route(w->r, &d), SPI_OK);
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  res.output_tokens = 5;
  assert_int_equal(spi_ticket_finish(w->e, d.ticket, &res), SPI_OK);
}

/* The ledger's rows with completed work: how many, each holding one
 * ticket; the name of the last whose tenant starts with c in named. */
static size_t served_rows(world *w, char c, char named[SPI_ID_MAX]) {
  size_t n = spi_ledger_count(w->e), rows = 0;
  for (size_t i = 0; i < n; i++) {
    spi_ledger_row row;
    memset(&row, 0, sizeof row);
    row.struct_size = sizeof row;
    assert_int_equal(spi_ledger_row_at(w->e, i, &row), SPI_OK);
    if (!row.completed) continue;
    rows++;
    assert_int_equal(row.completed, 1);
    assert_true(strlen(row.tenant) < SPI_ID_MAX);
    if (row.tenant[0] == c) memcpy(named, row.tenant, SPI_ID_MAX);
  }
  return rows;
}

/* Tenants the ledger must tell apart although a row's name holds 63
 * bytes: two sharing their first 63 bytes, "acme" beside "acme" with a NUL
 * and more after it, and a plain name that spells a long name's row. Each
 * gets a row of its own; a plain short name keeps its own text. */
static void test_ledger_tells_long_tenants_apart(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "od-a", SPI_POOL_ON_DEMAND);
  char a[80], b[80];
  memset(a, 'x', sizeof a);
  memcpy(b, a, sizeof b);
  b[sizeof b - 1] = 'y';
  serve_tenant(w, a, sizeof a);
  serve_tenant(w, b, sizeof b);
  serve_tenant(w, "acme", 4);
  serve_tenant(w, "acme\0evil", 9);
  char named[SPI_ID_MAX] = "", acme[SPI_ID_MAX] = "";
  assert_int_equal(served_rows(w, 'x', named), 4);
  assert_non_null(strchr(named, '~'));
  served_rows(w, 'a', acme); /* the later "acme" row: the hashed one */
  assert_int_equal(strncmp(acme, "acme?evil~", 10), 0);
  serve_tenant(w, named, strlen(named));
  char again[SPI_ID_MAX] = "";
  assert_int_equal(served_rows(w, 'x', again), 5);
  done(w);
}

/* Whether the ledger has a completed row whose tenant is want (exact), or
 * with hashed set, one that starts with want followed by '~' and 16 hex
 * digits. */
static int has_row(world *w, const char *want, int hashed) {
  size_t n = spi_ledger_count(w->e), k = strlen(want);
  for (size_t i = 0; i < n; i++) {
    spi_ledger_row row;
    memset(&row, 0, sizeof row);
    row.struct_size = sizeof row;
    assert_int_equal(spi_ledger_row_at(w->e, i, &row), SPI_OK);
    if (!row.completed) continue;
    if (!hashed && strcmp(row.tenant, want) == 0) return 1;
    if (hashed && strncmp(row.tenant, want, k) == 0 && row.tenant[k] == '~' &&
        strlen(row.tenant) == k + 17)
      return 1;
  }
  return 0;
}

/* A tenant keeps its own text unless it holds a control byte (below 0x20,
 * or 0x7f): then it is the hashed form with each such byte as '?'. Every
 * length a row holds whole, that byte at every place, and bytes beside
 * the control range (0x20, 0x7e, 0x80) that are kept. */
static void test_ledger_names_control_bytes_anywhere(void **st) {
  (void)st;
  world *w = mk(NULL);
  add(w, "od-a", SPI_POOL_ON_DEMAND);
  const unsigned char bytes[] = {0x01, 0x1f, 0x7f, 0x20, 0x7e, 0x80};
  const size_t lens[] = {1, 7, 8, 9, 16, 17, 46}; /* rows: under 1024 */
  int t = 0;
  for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
    for (size_t at = 0; at < lens[li]; at++) {
      for (size_t bi = 0; bi < sizeof bytes; bi++, t++) {
        char name[64];
        /* Distinct names: a serial in the first bytes, then 'n's. */
        memset(name, 'n', sizeof name);
        name[lens[li]] = '\0';
        char tag[8];
        snprintf(tag, sizeof tag, "%c%c%c", 'A' + t % 26, 'A' + t / 26 % 26,
                 'A' + t / 676 % 26);
        memcpy(name, tag, lens[li] < 3 ? lens[li] : 3);
        name[at] = (char)bytes[bi];
        int control = bytes[bi] < 0x20 || bytes[bi] == 0x7f;
        serve_tenant(w, name, lens[li]);
        char want[64];
        memcpy(want, name, lens[li] + 1);
        if (control) want[at] = '?';
        if (!has_row(w, want, control))
          fail_msg("tenant of %zu bytes, 0x%02x at %zu: no row", lens[li],
                   bytes[bi], at);
      }
    }
  }
  done(w);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ledger_names_control_bytes_anywhere),
      cmocka_unit_test(test_first_token_reads_its_own_ticket),
      cmocka_unit_test(test_reports_race_finish_and_reuse),
      cmocka_unit_test(test_token_counts_out_of_range),
      cmocka_unit_test(test_prompt_counts_out_of_range),
      cmocka_unit_test(test_ledger_tells_long_tenants_apart),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
