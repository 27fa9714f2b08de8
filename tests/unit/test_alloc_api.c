/*
 * test_alloc_api.c - fail each allocation, one at a time, across a whole
 * session of the public API: engine creation and configuration, replicas,
 * a request read from an OpenAI body, a route, ticket reports, a notice
 * parsed from a cloud's JSON and handed in, and the ticket's finish.
 *
 * Two allocators are counted as one sequence: the engine's hook (everything
 * the library keeps) and cJSON's (parse trees, which use malloc; the test
 * installs cJSON hooks, the library never does). For each N the Nth
 * allocation fails; every call must answer SPI_OK or SPI_ENOMEM (never
 * "malformed JSON" or another status), a failure must say "memory", and at
 * the end every allocation of both kinds is freed. Run in the sanitizer
 * build, LeakSanitizer also checks nothing leaked outside the counters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "spotinfer/spotinfer.h"
#include "fake_fleet.h"

typedef struct counters {
  long n;       /* allocations so far, both kinds */
  long fail_at; /* fail this one (-1: never) */
  int failed;
  long hook_live, cjson_live;
} counters;

static counters C;

static int fail_now(void) {
  if (C.n++ == C.fail_at) {
    C.failed = 1;
    return 1;
  }
  return 0;
}

static void *hook_alloc(void *ud, size_t n) {
  (void)ud;
  if (fail_now()) return NULL;
  void *p = malloc(n ? n : 1);
  if (p) C.hook_live++;
  return p;
}

static void hook_free(void *ud, void *p) {
  (void)ud;
  if (p) C.hook_live--;
  free(p);
}

static void *cj_alloc(size_t n) {
  if (fail_now()) return NULL;
  void *p = malloc(n ? n : 1);
  if (p) C.cjson_live++;
  return p;
}

static void cj_free(void *p) {
  if (p) C.cjson_live--;
  free(p);
}

static int64_t fixed_clock(void *ud) {
  (void)ud;
  return (int64_t)1700000000 * 1000000000;
}

/* A step's status: OK goes on, ENOMEM (with a message saying so) ends the
 * session, anything else fails the test. */
#define STEP(call, msg)                                                      \
  do {                                                                       \
    int rc_ = (call);                                                        \
    if (rc_ == SPI_ENOMEM) {                                                 \
      const char *m_ = (msg);                                                \
      if (!strstr(m_, "memory"))                                             \
        fail_msg("N=%ld %s: ENOMEM with message \"%s\"", C.fail_at, #call,   \
                 m_);                                                        \
      goto out;                                                              \
    }                                                                        \
    if (rc_ != SPI_OK)                                                       \
      fail_msg("N=%ld %s: %s (%s)", C.fail_at, #call, spi_strerror(rc_),     \
               (msg));                                                       \
  } while (0)

static int upsert(spi_engine *e, const char *id) {
  spi_replica_info ri = ff_replica(id, SPI_POOL_ON_DEMAND, 3, 8);
  ff_place(&ri, "i-0abc", NULL, NULL);
  return spi_replica_upsert(e, &ri);
}

static const char *const BODY =
    "{\"model\":\"m\",\"stream\":true,"
    "\"metadata\":{\"tenant\":\"t1\",\"sla_ms\":\"60000\"},"
    "\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
    "{\"role\":\"user\",\"content\":\"hello there\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}";

static const char *const NOTICE =
    "{\"action\":\"terminate\",\"time\":\"2023-11-14T22:15:20Z\"}";

/* One session with the Nth allocation failing. */
static void session(void) {
  spi_engine *e = NULL;
  spi_request *r = NULL;
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.alloc = hook_alloc;
  h.free = hook_free;
  h.clock = fixed_clock;
  int rc = spi_engine_new(&e, &h);
  if (rc == SPI_ENOMEM) {
    assert_null(e);
    return;
  }
  assert_int_equal(rc, SPI_OK);
  const char *cfg = "{\"router\":{\"max_tickets\":64,\"index_bytes\":65536},"
                    "\"cache_key\":{\"block_bytes\":64}}";
  STEP(spi_engine_configure(e, cfg, strlen(cfg)), spi_engine_errmsg(e));
  STEP(upsert(e, "r1"), spi_engine_errmsg(e));
  STEP(upsert(e, "r2"), spi_engine_errmsg(e));
  spi_load l = ff_load(1, 0, 0);
  STEP(spi_replica_report_load(e, "r1", 2, &l), spi_engine_errmsg(e));
  STEP(spi_replica_report_load(e, "r2", 2, &l), spi_engine_errmsg(e));
  rc = spi_request_new(e, &r);
  STEP(rc, spi_engine_errmsg(e));
  STEP(spi_request_parse_openai(r, BODY, strlen(BODY), SPI_OPENAI_AUTO),
       spi_request_errmsg(r));
  spi_decision d;
  memset(&d, 0, sizeof d);
  d.struct_size = sizeof d;
  STEP(spi_route(r, &d), spi_request_errmsg(r));
  if (!d.ticket) fail_msg("N=%ld: routed without a ticket: %s", C.fail_at, d.reason);
  STEP(spi_ticket_first_token(e, d.ticket), spi_engine_errmsg(e));
  STEP(spi_ticket_progress(e, d.ticket, 3), spi_engine_errmsg(e));
  spi_notice n[2];
  size_t found = 0;
  char err[256] = "";
  STEP(spi_notice_parse(SPI_NOTICE_AWS_INSTANCE_ACTION, 200, NOTICE,
                        strlen(NOTICE), "i-0abc", 6, fixed_clock(NULL), n, 2,
                        &found, err, sizeof err),
       err);
  assert_int_equal(found, 1);
  spi_ticket_plan plans[4];
  plans[0].struct_size = sizeof plans[0];
  STEP(spi_engine_notice(e, &n[0], plans, 4, &found), spi_engine_errmsg(e));
  spi_ticket_result res;
  memset(&res, 0, sizeof res);
  res.struct_size = sizeof res;
  res.status = SPI_TICKET_OK;
  res.output_tokens = 3;
  STEP(spi_ticket_finish(e, d.ticket, &res), spi_engine_errmsg(e));
out:
  spi_request_free(r);
  spi_engine_free(e);
}

static void test_fail_each_allocation(void **st) {
  (void)st;
  cJSON_Hooks hooks = {cj_alloc, cj_free};
  cJSON_InitHooks(&hooks);
  long n;
  for (n = 0;; n++) {
    memset(&C, 0, sizeof C);
    C.fail_at = n;
    session();
    if (C.hook_live || C.cjson_live)
      fail_msg("N=%ld: %ld engine and %ld cJSON allocations not freed", n,
               C.hook_live, C.cjson_live);
    if (!C.failed) break; /* the whole session ran: every point covered */
    assert_true(n < 100000);
  }
  cJSON_InitHooks(NULL);
  print_message("%ld allocation points, each failed once\n", n);
  assert_true(n > 50);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fail_each_allocation),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
