/*
 * test_notice.c - the cloud interruption notice parsers: every fixture under
 * ../shared/data/notices (read at run time, never copied here) with its
 * exact kind, node, deadline, active flag and dedup key; every malformed
 * fixture with its status and the field its message names; dedup keys that
 * survive a poller moving times; the three time formats on their edges;
 * multi-event documents against small caps; 404s, empty bodies, argument
 * checks, and concurrent callers.
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

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "spotinfer/spotinfer.h"

#define NS(s) ((int64_t)(s)*INT64_C(1000000000))
/* The poll time handed to the parser: 2026-11-22T06:01:40Z. */
#define NOW (NS(1795327300) + 123)
#define NODE "i-polled-node"

/* -------------------------------------------------------------- helpers */

/* A heap copy of exactly len bytes with no NUL after it, so reading past
 * the body shows under ASan and valgrind. */
static char *exact_copy(const char *s, size_t len) {
  char *p = malloc(len ? len : 1);
  assert_non_null(p);
  if (len) memcpy(p, s, len);
  return p;
}

typedef struct result {
  int rc;
  size_t n;
  spi_notice out[8];
  char err[256];
} result;

static void parse_full(result *r, int32_t format, int32_t status,
                       const char *body, size_t len, const char *node,
                       int64_t now) {
  memset(r, 0, sizeof *r);
  char *copy = body ? exact_copy(body, len) : NULL;
  r->n = 999;
  r->rc =
      spi_notice_parse(format, status, copy, len, node, node ? strlen(node) : 0,
                       now, r->out, 8, &r->n, r->err, sizeof r->err);
  free(copy);
  if (r->rc != SPI_OK) {
    assert_int_equal(r->n, 0);
    assert_true(r->err[0] != '\0');
  } else {
    assert_string_equal(r->err, "");
  }
}

static void parse_text(result *r, int32_t format, const char *text) {
  parse_full(r, format, 200, text, strlen(text), NODE, NOW);
}

static void parse_at(result *r, int32_t format, const char *text,
                     const char *node, int64_t now) {
  parse_full(r, format, 200, text, strlen(text), node, now);
}

static void expect_error(int32_t format, const char *text, int rc,
                         const char *needle) {
  result r;
  parse_text(&r, format, text);
  if (r.rc != rc || !strstr(r.err, needle))
    print_error(
        "body %s\n  rc %d (%s), message \"%s\"; wanted %d with \"%s\"\n", text,
        r.rc, spi_strerror(r.rc), r.err, rc, needle);
  assert_int_equal(r.rc, rc);
  assert_non_null(strstr(r.err, needle));
}

/* A body that parses with entries skipped: SPI_OK, n notices, the skip
 * counted and the first one named in the message (both entry points). */
static void expect_skipped(int32_t format, const char *text, size_t n,
                           size_t skipped, size_t first, const char *needle) {
  spi_notice out[8];
  spi_parse_report rep;
  memset(&rep, 0, sizeof rep);
  rep.struct_size = sizeof rep;
  char err[256] = "x";
  char *copy = exact_copy(text, strlen(text));
  int rc = spi_notice_parse_v2(format, 200, copy, strlen(text), NODE,
                               strlen(NODE), NOW, out, 8, &rep, err,
                               sizeof err);
  if (rc != SPI_OK || rep.found != n || rep.skipped != skipped ||
      rep.first_skipped != first || !strstr(err, needle))
    print_error("body %s\n  rc %d found %zu skipped %zu first %zu \"%s\"; "
                "wanted %zu %zu %zu \"%s\"\n",
                text, rc, rep.found, rep.skipped, rep.first_skipped, err, n,
                skipped, first, needle);
  assert_int_equal(rc, SPI_OK);
  assert_int_equal(rep.found, n);
  assert_int_equal(rep.skipped, skipped);
  assert_int_equal(rep.first_skipped, first);
  assert_non_null(strstr(err, needle));
  assert_non_null(strstr(err, "skipped"));
  /* The first interface reads the same and writes the same message. */
  size_t n1 = 99;
  char err1[256] = "";
  assert_int_equal(spi_notice_parse(format, 200, copy, strlen(text), NODE,
                                    strlen(NODE), NOW, out, 8, &n1, err1,
                                    sizeof err1),
                   SPI_OK);
  assert_int_equal(n1, n);
  assert_string_equal(err1, err);
  free(copy);
}

static void expect_notice(const spi_notice *nt, int32_t format, int32_t kind,
                          const char *node, int64_t deadline, int32_t active,
                          const char *event_id, const char *dedup) {
  assert_int_equal(nt->struct_size, sizeof(spi_notice));
  assert_int_equal(nt->format, format);
  assert_string_equal(spi_notice_kind_name(nt->kind),
                      spi_notice_kind_name(kind));
  assert_int_equal(nt->kind, kind);
  assert_string_equal(nt->node, node);
  assert_int_equal(nt->deadline_ns, deadline);
  assert_int_equal(nt->active, active);
  assert_int_equal(nt->reserved0, 0);
  assert_string_equal(nt->event_id, event_id);
  assert_string_equal(nt->dedup_key, dedup);
}

/* ------------------------------------------------------------- fixtures */

static const char *shared_notices(void) {
  static const char dir[] = SPI_SHARED_DATA "/notices";
  DIR *d = opendir(dir);
  if (!d)
    fail_msg("shared fixtures not found: cannot open %s (SPI_SHARED_DATA); "
             "the notice fixture tests need ../shared/data next to the "
             "source tree",
             dir);
  closedir(d);
  return dir;
}

static char *load(const char *rel, size_t *len) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", shared_notices(), rel);
  FILE *f = fopen(path, "rb");
  if (!f) fail_msg("cannot open fixture %s", path);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  assert_true(size >= 0);
  char *buf = malloc(size ? (size_t)size : 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
  fclose(f);
  *len = (size_t)size;
  return buf;
}

typedef struct want {
  int32_t kind;
  const char *node;
  int64_t deadline_ns;
  int32_t active;
  const char *event_id;
  const char *dedup;
} want;

typedef struct fixture {
  const char *file;
  int32_t format;
  int32_t status;
  size_t n;
  want w[2];
} fixture;

#define IA SPI_NOTICE_AWS_INSTANCE_ACTION
#define RB SPI_NOTICE_AWS_REBALANCE
#define SC SPI_NOTICE_AWS_SCHEDULED
#define EB SPI_NOTICE_AWS_EVENTBRIDGE
#define GP SPI_NOTICE_GCP_PREEMPTED
#define GM SPI_NOTICE_GCP_MAINTENANCE
#define AZ SPI_NOTICE_AZURE_SCHEDULED

static const fixture FIXTURES[] = {
    {"aws/imds_instance_action_terminate.json",
     IA,
     200,
     1,
     {{SPI_NOTICE_TERMINATE, NODE, NS(1795327320), 1, "",
       "aws:action:" NODE ":terminate"}}},
    {"aws/imds_instance_action_stop.json",
     IA,
     200,
     1,
     {{SPI_NOTICE_STOP, NODE, NS(1795327320), 1, "",
       "aws:action:" NODE ":stop"}}},
    {"aws/imds_instance_action_hibernate.json",
     IA,
     200,
     1,
     {{SPI_NOTICE_HIBERNATE, NODE, NS(1795327320), 1, "",
       "aws:action:" NODE ":hibernate"}}},
    {"aws/imds_rebalance_recommendation.json",
     RB,
     200,
     1,
     {{SPI_NOTICE_REBALANCE, NODE, 0, 1, "", "aws:rebalance:" NODE}}},
    {"aws/imds_scheduled_events.json",
     SC,
     200,
     2,
     {{SPI_NOTICE_MAINTENANCE, NODE, NS(1548061243), 1,
       "instance-event-0d59937288b749b32",
       "aws:scheduled:instance-event-0d59937288b749b32"},
      {SPI_NOTICE_TERMINATE, NODE, 0, 0, "instance-event-0a1b2c3d4e5f60718",
       "aws:scheduled:instance-event-0a1b2c3d4e5f60718:canceled"}}},
    {"aws/imds_scheduled_events_empty.json", SC, 200, 0, {{0}}},
    {"aws/imds_404_no_notice.html", IA, 404, 0, {{0}}},
    {"aws/eventbridge_spot_interruption_warning.json",
     EB,
     200,
     1,
     {{SPI_NOTICE_TERMINATE, "i-1234567890abcdef0", NS(1795327200 + 120), 1,
       "1e5527d7-bb36-4607-3370-4164db56a40e",
       "aws:eb:i-1234567890abcdef0:terminate"}}},
    {"aws/eventbridge_rebalance_recommendation.json",
     EB,
     200,
     1,
     {{SPI_NOTICE_REBALANCE, "i-0abcdef1234567890", 0, 1,
       "5d5555d5-dd55-5555-5555-5555dd55d55d",
       "aws:eb:i-0abcdef1234567890:rebalance"}}},
    {"aws/eventbridge_state_change_shutting_down.json",
     EB,
     200,
     1,
     {{SPI_NOTICE_TERMINATE, "i-1234567890abcdef0", NS(1795327321), 1,
       "7bf73129-1428-4cd3-a780-95db273d1602",
       "aws:eb:i-1234567890abcdef0:terminate"}}},
    {"gcp/preempted_true.txt",
     GP,
     200,
     1,
     {{SPI_NOTICE_PREEMPT, NODE, NOW + NS(30), 1, "", "gcp:preempted:" NODE}}},
    {"gcp/preempted_false.txt", GP, 200, 0, {{0}}},
    {"gcp/maintenance_event_none.txt", GM, 200, 0, {{0}}},
    {"gcp/maintenance_event_migrate.txt",
     GM,
     200,
     1,
     {{SPI_NOTICE_MAINTENANCE, NODE, 0, 1, "",
       "gcp:maintenance:" NODE ":MIGRATE_ON_HOST_MAINTENANCE"}}},
    {"gcp/maintenance_event_terminate.txt",
     GM,
     200,
     1,
     {{SPI_NOTICE_TERMINATE, NODE, NOW + NS(30), 1, "",
       "gcp:maintenance:" NODE ":TERMINATE_ON_HOST_MAINTENANCE"}}},
    {"azure/scheduled_events_empty.json", AZ, 200, 0, {{0}}},
    {"azure/scheduled_events_preempt.json",
     AZ,
     200,
     1,
     {{SPI_NOTICE_PREEMPT, "myspotvm_3", NS(1795327230), 1,
       "A123BC45-1234-5678-AB90-ABCDEF123456",
       "azure:A123BC45-1234-5678-AB90-ABCDEF123456:myspotvm_3"}}},
    {"azure/scheduled_events_terminate_rfc3339.json",
     AZ,
     200,
     1,
     {{SPI_NOTICE_TERMINATE, "myspotvm_3", NS(1795327800), 1,
       "B8E2C0AF-3F2A-4E0B-9A51-0E5C2A7D9F10",
       "azure:B8E2C0AF-3F2A-4E0B-9A51-0E5C2A7D9F10:myspotvm_3"}}},
    /* Started, NotBefore "": it is happening now. One notice per resource. */
    {"azure/scheduled_events_freeze_started.json",
     AZ,
     200,
     2,
     {{SPI_NOTICE_MAINTENANCE, "WestNO_0", NOW, 1,
       "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
       "azure:C7061BAC-AFDC-4513-B24B-AA5F13A16123:WestNO_0"},
      {SPI_NOTICE_MAINTENANCE, "WestNO_1", NOW, 1,
       "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
       "azure:C7061BAC-AFDC-4513-B24B-AA5F13A16123:WestNO_1"}}},
};

typedef struct bad_fixture {
  const char *file;
  int32_t format;
  int rc;
  const char *needle; /* the message names this */
} bad_fixture;

static const bad_fixture MALFORMED[] = {
    {"malformed/aws_action_not_string.json", IA, SPI_ETYPE, "action: must be"},
    {"malformed/aws_bad_time.json", IA, SPI_EPARSE, "time: not an RFC 3339"},
    {"malformed/aws_rebalance_time_number.json", RB, SPI_ETYPE,
     "noticeTime: must be a string"},
    {"malformed/aws_truncated.json", IA, SPI_EPARSE, "malformed JSON"},
    {"malformed/aws_unknown_action.json", IA, SPI_EUNKNOWN,
     "action: unknown value \"explode\""},
    {"malformed/azure_bad_time.json", AZ, SPI_EPARSE, "Events[0].NotBefore"},
    {"malformed/azure_wrong_types.json", AZ, SPI_ETYPE,
     "DocumentIncarnation: must be"},
    {"malformed/gcp_preempted_garbage.txt", GP, SPI_EPARSE,
     "expected TRUE or FALSE, not \"MAYBE\""},
    /* Too deep for any reader: each format refuses it. */
    {"malformed/deeply_nested.json", IA, SPI_EPARSE, "malformed JSON"},
    {"malformed/deeply_nested.json", RB, SPI_EPARSE, "malformed JSON"},
    {"malformed/deeply_nested.json", SC, SPI_EPARSE, "malformed JSON"},
    {"malformed/deeply_nested.json", EB, SPI_EPARSE, "malformed JSON"},
    {"malformed/deeply_nested.json", GP, SPI_EPARSE, "expected TRUE or FALSE"},
    {"malformed/deeply_nested.json", GM, SPI_EPARSE, "not a maintenance-event"},
    {"malformed/deeply_nested.json", AZ, SPI_EPARSE, "malformed JSON"},
};

/* Every file in the fixture directories has an expectation here, so a
 * fixture added later cannot go untested. */
static void test_every_fixture_is_listed(void **state) {
  (void)state;
  const char *root = shared_notices();
  static const char *const dirs[] = {"aws", "gcp", "azure", "malformed"};
  size_t seen = 0;
  for (size_t i = 0; i < 4; i++) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", root, dirs[i]);
    DIR *d = opendir(dir);
    if (!d) fail_msg("cannot open fixture directory %s", dir);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (e->d_name[0] == '.') continue;
      char rel[512];
      snprintf(rel, sizeof rel, "%s/%s", dirs[i], e->d_name);
      int found = 0;
      for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++)
        if (strcmp(FIXTURES[f].file, rel) == 0) found = 1;
      for (size_t f = 0; f < sizeof MALFORMED / sizeof *MALFORMED; f++)
        if (strcmp(MALFORMED[f].file, rel) == 0) found = 1;
      if (!found)
        fail_msg("fixture %s has no expectation in test_notice.c", rel);
      seen++;
    }
    closedir(d);
  }
  assert_true(seen >= 28);
}

static void test_fixtures(void **state) {
  (void)state;
  for (size_t f = 0; f < sizeof FIXTURES / sizeof *FIXTURES; f++) {
    const fixture *fx = &FIXTURES[f];
    size_t len;
    char *body = load(fx->file, &len);
    result r;
    parse_full(&r, fx->format, fx->status, body, len, NODE, NOW);
    if (r.rc != SPI_OK || r.n != fx->n)
      print_error("%s: rc %d n %zu: %s\n", fx->file, r.rc, r.n, r.err);
    assert_int_equal(r.rc, SPI_OK);
    assert_int_equal(r.n, fx->n);
    for (size_t i = 0; i < fx->n; i++) {
      expect_notice(&r.out[i], fx->format, fx->w[i].kind, fx->w[i].node,
                    fx->w[i].deadline_ns, fx->w[i].active, fx->w[i].event_id,
                    fx->w[i].dedup);
      assert_int_equal(r.out[i].received_ns, NOW);
    }
    /* Status 0 is 200. */
    if (fx->status == 200) {
      result r0;
      parse_full(&r0, fx->format, 0, body, len, NODE, NOW);
      assert_int_equal(r0.rc, SPI_OK);
      assert_int_equal(r0.n, fx->n);
      assert_memory_equal(r0.out, r.out, sizeof r.out);
    }
    free(body);
  }
}

static void test_malformed_fixtures(void **state) {
  (void)state;
  for (size_t f = 0; f < sizeof MALFORMED / sizeof *MALFORMED; f++) {
    const bad_fixture *fx = &MALFORMED[f];
    size_t len;
    char *body = load(fx->file, &len);
    result r;
    parse_full(&r, fx->format, 200, body, len, NODE, NOW);
    if (r.rc != fx->rc || !strstr(r.err, fx->needle))
      print_error("%s (format %d): rc %d \"%s\"\n", fx->file, (int)fx->format,
                  r.rc, r.err);
    assert_int_equal(r.rc, fx->rc);
    assert_non_null(strstr(r.err, fx->needle));
    free(body);
  }
}

/* The AWS 404 page is HTML: with a 404 it is no notice whatever the format;
 * with a 200 it is a parse error, never a guess. */
static void test_404_and_status(void **state) {
  (void)state;
  size_t len;
  char *html = load("aws/imds_404_no_notice.html", &len);
  for (int32_t fmt = IA; fmt <= AZ; fmt++) {
    result r;
    parse_full(&r, fmt, 404, html, len, NODE, NOW);
    assert_int_equal(r.rc, SPI_OK);
    assert_int_equal(r.n, 0);
    parse_full(&r, fmt, 404, NULL, 0, NULL, NOW); /* no node needed */
    assert_int_equal(r.rc, SPI_OK);
    parse_full(&r, fmt, 200, html, len, NODE, NOW);
    assert_int_equal(r.rc, SPI_EPARSE);
    for (size_t i = 0; i < 5; i++) {
      static const int32_t other[] = {500, 503, 301, 401, 199};
      parse_full(&r, fmt, other[i], html, len, NODE, NOW);
      assert_int_equal(r.rc, SPI_EINVAL);
      assert_non_null(strstr(r.err, "http status"));
    }
    parse_full(&r, fmt, -1, "", 0, NODE, NOW);
    assert_int_equal(r.rc, SPI_EINVAL);
  }
  free(html);
  /* Any 2xx carries a body. */
  result r;
  parse_full(&r, GP, 203, "TRUE", 4, NODE, NOW);
  assert_int_equal(r.rc, SPI_OK);
  assert_int_equal(r.n, 1);
}

/* Empty means no notice where the clouds' clients hand one for "none" (the
 * AWS IMDS paths); GCP, Azure and EventBridge always serve a value. */
static void test_empty_bodies(void **state) {
  (void)state;
  static const char *const blanks[] = {"", " ", "\n", " \r\n\t "};
  for (size_t b = 0; b < 4; b++) {
    for (int32_t fmt = IA; fmt <= AZ; fmt++) {
      result r;
      parse_full(&r, fmt, 200, blanks[b], strlen(blanks[b]), NODE, NOW);
      if (fmt == IA || fmt == RB || fmt == SC) {
        assert_int_equal(r.rc, SPI_OK);
        assert_int_equal(r.n, 0);
      } else {
        assert_int_equal(r.rc, SPI_EPARSE);
        assert_non_null(strstr(r.err, "empty body"));
      }
    }
  }
  result r;
  parse_full(&r, IA, 204, NULL, 0, NODE, NOW);
  assert_int_equal(r.rc, SPI_OK);
  assert_int_equal(r.n, 0);
}

/* --------------------------------------------------------------- dedup */

static void test_dedup_stable_across_polls(void **state) {
  (void)state;
  result a, b;
  parse_text(&a, IA,
             "{\"action\":\"terminate\",\"time\":\"2026-11-22T06:02:00Z\"}");
  parse_at(&b, IA,
           "{\"time\":\"2026-11-22T06:02:05.5Z\",\"action\":\"terminate\"}",
           NODE, NOW + NS(5));
  assert_int_equal(a.rc, SPI_OK);
  assert_int_equal(b.rc, SPI_OK);
  assert_string_equal(a.out[0].dedup_key, b.out[0].dedup_key);
  assert_true(a.out[0].deadline_ns != b.out[0].deadline_ns);
  /* A different action is a different notice. */
  parse_text(&b, IA, "{\"action\":\"stop\",\"time\":\"2026-11-22T06:02:00Z\"}");
  assert_string_not_equal(a.out[0].dedup_key, b.out[0].dedup_key);
  /* So is the same action on another machine. */
  parse_at(&b, IA,
           "{\"action\":\"terminate\",\"time\":\"2026-11-22T06:02:00Z\"}",
           "i-other", NOW);
  assert_int_equal(b.rc, SPI_OK);
  assert_string_not_equal(a.out[0].dedup_key, b.out[0].dedup_key);

  parse_text(&a, RB, "{\"noticeTime\":\"2026-11-22T05:45:12Z\"}");
  parse_text(&b, RB, "{\"noticeTime\":\"2026-11-22T05:46:12Z\"}");
  assert_string_equal(a.out[0].dedup_key, b.out[0].dedup_key);

  /* EventBridge redelivers with a new id and time. */
  parse_text(&a, EB,
             "{\"id\":\"a\",\"detail-type\":\"EC2 Spot Instance Interruption "
             "Warning\",\"time\":\"2026-11-22T06:00:00Z\",\"detail\":{"
             "\"instance-id\":\"i-1\",\"instance-action\":\"stop\"}}");
  parse_text(&b, EB,
             "{\"id\":\"b\",\"detail-type\":\"EC2 Spot Instance Interruption "
             "Warning\",\"time\":\"2026-11-22T06:00:09Z\",\"detail\":{"
             "\"instance-id\":\"i-1\",\"instance-action\":\"stop\"}}");
  assert_int_equal(a.rc, SPI_OK);
  assert_int_equal(b.rc, SPI_OK);
  assert_string_equal(a.out[0].dedup_key, "aws:eb:i-1:stop");
  assert_string_equal(a.out[0].dedup_key, b.out[0].dedup_key);

  /* Azure: a new incarnation, Scheduled becoming Started. */
  parse_text(&a, AZ,
             "{\"DocumentIncarnation\":1,\"Events\":[{\"EventId\":\"E\","
             "\"EventType\":\"Preempt\",\"EventStatus\":\"Scheduled\","
             "\"Resources\":[\"vm1\"],\"NotBefore\":\"Sun, 22 Nov 2026 "
             "06:00:30 GMT\"}]}");
  parse_text(&b, AZ,
             "{\"DocumentIncarnation\":2,\"Events\":[{\"EventId\":\"E\","
             "\"EventType\":\"Preempt\",\"EventStatus\":\"Started\","
             "\"Resources\":[\"vm1\"],\"NotBefore\":\"\"}]}");
  assert_int_equal(a.rc, SPI_OK);
  assert_int_equal(b.rc, SPI_OK);
  assert_string_equal(a.out[0].dedup_key, b.out[0].dedup_key);
  assert_int_equal(b.out[0].deadline_ns, NOW);

  /* GCP: the same TRUE polled twice. */
  parse_full(&a, GP, 200, "TRUE", 4, NODE, NOW);
  parse_full(&b, GP, 200, "TRUE\n", 5, NODE, NOW + NS(3));
  assert_string_equal(a.out[0].dedup_key, b.out[0].dedup_key);
  assert_int_equal(b.out[0].deadline_ns, NOW + NS(33));
}

/* A withdrawn AWS event must not share the key of the notice it withdraws,
 * or handing it in would look like a repeat. */
static void test_scheduled_withdrawal_key(void **state) {
  (void)state;
  static const char *const states[] = {"active", "completed", "canceled"};
  char keys[3][160];
  for (size_t i = 0; i < 3; i++) {
    char body[256];
    snprintf(body, sizeof body,
             "[{\"Code\":\"instance-stop\",\"EventId\":\"instance-event-1\","
             "\"State\":\"%s\",\"NotBefore\":\"2 Feb 2019 07:00:00 GMT\"}]",
             states[i]);
    result r;
    parse_text(&r, SC, body);
    assert_int_equal(r.rc, SPI_OK);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.out[0].kind, SPI_NOTICE_STOP);
    assert_int_equal(r.out[0].active, i == 0);
    assert_int_equal(r.out[0].deadline_ns, i == 0 ? NS(1549090800) : 0);
    assert_string_equal(r.out[0].event_id, "instance-event-1");
    memcpy(keys[i], r.out[0].dedup_key, sizeof keys[i]);
  }
  assert_string_equal(keys[0], "aws:scheduled:instance-event-1");
  assert_string_equal(keys[1], "aws:scheduled:instance-event-1:completed");
  assert_string_equal(keys[2], "aws:scheduled:instance-event-1:canceled");
}

/* A \u0000 in a string would cut it short (cJSON keeps strings
 * NUL-terminated): the array form refuses it as the object form does,
 * rather than shortening an event id and its dedup key. */
static void test_nul_escape_refused(void **state) {
  (void)state;
  result r;
  parse_text(&r, SC,
             "[{\"Code\":\"instance-stop\",\"EventId\":\"instance-event-0abc"
             "\\u0000zz\",\"State\":\"active\",\"NotBefore\":\"2 Feb 2019 "
             "07:00:00 GMT\"}]");
  assert_int_equal(r.rc, SPI_EPARSE);
  assert_non_null(strstr(r.err, "\\u0000 inside a string at byte offset 55"));
  parse_text(&r, SPI_NOTICE_AWS_INSTANCE_ACTION,
             "{\"action\":\"terminate\",\"time\":\"2026-11-22T06:02:00Z\","
             "\"x\":\"a\\u0000\"}");
  assert_int_equal(r.rc, SPI_EPARSE);
  assert_non_null(strstr(r.err, "u0000"));
}

/* text with ch put in at byte at: len + 1 bytes, no NUL after them. */
static char *spliced(const char *text, size_t len, size_t at, char ch) {
  char *t = malloc(len + 1);
  assert_non_null(t);
  memcpy(t, text, at);
  t[at] = ch;
  memcpy(t + at + 1, text + at, len - at);
  return t;
}

static void expect_control_at(int32_t format, const char *body, size_t len,
                              size_t at, char ch) {
  char *t = spliced(body, len, at, ch);
  result r;
  parse_full(&r, format, 200, t, len + 1, NODE, NOW);
  free(t);
  char want[64];
  if (ch == 0)
    snprintf(want, sizeof want, "NUL byte at offset %zu", at);
  else
    snprintf(want, sizeof want, "control byte 0x%02x at byte offset %zu",
             (unsigned)(unsigned char)ch, at);
  if (r.rc != SPI_EPARSE || !strstr(r.err, want))
    fail_msg("format %d, byte 0x%02x at %zu: %d \"%s\", want \"%s\"",
             (int)format, (unsigned)(unsigned char)ch, at, r.rc, r.err, want);
}

/* Bytes below 0x20 other than space, tab, LF and CR are not JSON
 * whitespace (cJSON would skip them): before a notice, between its tokens
 * or after it they are refused with their offset, in every JSON format.
 * Inside a string one is read as any other byte would be. */
static void test_control_bytes(void **state) {
  (void)state;
  static const struct {
    const char *file;
    int32_t format;
  } BODIES[] = {
      {"aws/imds_instance_action_terminate.json", IA},
      {"aws/imds_rebalance_recommendation.json", RB},
      {"aws/imds_scheduled_events.json", SC},
      {"aws/eventbridge_spot_interruption_warning.json", EB},
      {"azure/scheduled_events_preempt.json", AZ},
  };
  for (size_t i = 0; i < sizeof BODIES / sizeof BODIES[0]; i++) {
    size_t len;
    char *b = load(BODIES[i].file, &len);
    int32_t f = BODIES[i].format;
    size_t open = strcspn(b, "{[");
    assert_true(open < len);
    expect_control_at(f, b, len, 0, '\x01');
    expect_control_at(f, b, len, 0, '\0');
    expect_control_at(f, b, len, open + 1, '\x1f');
    expect_control_at(f, b, len, len, '\x0b');
    expect_control_at(f, b, len, len, '\0');
    /* In the first key, a control byte reads as a letter there would. */
    size_t key = open + 1 + strcspn(b + open + 1, "\"");
    assert_true(key < len);
    result ctl, letter;
    char *t = spliced(b, len, key + 1, '\x01');
    parse_full(&ctl, f, 200, t, len + 1, NODE, NOW);
    free(t);
    t = spliced(b, len, key + 1, 'Z');
    parse_full(&letter, f, 200, t, len + 1, NODE, NOW);
    free(t);
    if (ctl.rc != letter.rc || ctl.n != letter.n)
      fail_msg("%s: a control byte in a key: %d \"%s\", a letter: %d",
               BODIES[i].file, ctl.rc, ctl.err, letter.rc);
    free(b);
  }
}

/* ---------------------------------------------------------------- times */

typedef struct tcase {
  const char *text;
  int ok;
  int64_t ns;
} tcase;

/* The deadline parsed from an AWS instance-action with this time. */
static int rfc3339(const char *t, int64_t *ns, char *err, size_t errcap) {
  char body[256];
  snprintf(body, sizeof body, "{\"action\":\"terminate\",\"time\":\"%s\"}", t);
  result r;
  parse_text(&r, IA, body);
  *ns = r.rc == SPI_OK ? r.out[0].deadline_ns : -1;
  snprintf(err, errcap, "%s", r.err);
  return r.rc;
}

static void run_cases(const tcase *cases, size_t n,
                      int (*fn)(const char *, int64_t *, char *, size_t),
                      const char *field) {
  for (size_t i = 0; i < n; i++) {
    int64_t ns;
    char err[256];
    int rc = fn(cases[i].text, &ns, err, sizeof err);
    int ok = rc == SPI_OK;
    if (ok != cases[i].ok || (ok && ns != cases[i].ns))
      print_error("\"%s\": rc %d ns %lld (%s); wanted %s %lld\n", cases[i].text,
                  rc, (long long)ns, err, cases[i].ok ? "ok" : "error",
                  (long long)cases[i].ns);
    assert_int_equal(ok, cases[i].ok);
    if (ok) {
      assert_int_equal(ns, cases[i].ns);
    } else {
      assert_int_equal(rc, SPI_EPARSE);
      assert_non_null(strstr(err, field));
    }
  }
}

static void test_rfc3339(void **state) {
  (void)state;
  static const tcase cases[] = {
      {"2026-11-22T06:02:00Z", 1, NS(1795327320)},
      {"2026-11-22t06:02:00z", 1, NS(1795327320)},
      /* Offsets: local minus UTC. */
      {"2026-11-22T07:02:00+01:00", 1, NS(1795327320)},
      {"2026-11-22T00:32:00-05:30", 1, NS(1795327320)},
      {"2026-11-22T06:02:00+00:00", 1, NS(1795327320)},
      {"2026-11-22T06:02:00-00:00", 1, NS(1795327320)},
      {"2026-11-23T06:01:00+23:59", 1, NS(1795327320)},
      {"2026-11-22T06:02:00+24:00", 0, 0},
      {"2026-11-22T06:02:00+01:60", 0, 0},
      {"2026-11-22T06:02:00+0100", 0, 0},
      {"2026-11-22T06:02:00+01", 0, 0},
      {"2026-11-22T06:02:00", 0, 0},
      /* Fractions: any number of digits, beyond ns truncated. */
      {"2026-11-22T06:02:00.5Z", 1, NS(1795327320) + 500000000},
      {"2026-11-22T06:02:00.000000001Z", 1, NS(1795327320) + 1},
      {"2026-11-22T06:02:00.123456789Z", 1, NS(1795327320) + 123456789},
      {"2026-11-22T06:02:00.1234567899999Z", 1, NS(1795327320) + 123456789},
      {"2026-11-22T06:02:00.Z", 0, 0},
      {"2026-11-22T06:02:00,5Z", 0, 0},
      {"2026-11-22T06:02:00.5+01:00", 1, NS(1795327320 - 3600) + 500000000},
      /* Leap days. */
      {"2024-02-29T00:00:00Z", 1, NS(1709164800)},
      {"2000-02-29T12:00:00Z", 1, NS(951825600)},
      {"2023-02-29T00:00:00Z", 0, 0},
      {"2100-02-29T00:00:00Z", 0, 0},
      {"2024-02-30T00:00:00Z", 0, 0},
      /* Leap second: 23:59:60 UTC on a month's last day reads as :59. */
      {"2016-12-31T23:59:60Z", 1, NS(1483228799)},
      {"2016-12-31T23:59:60.25Z", 1, NS(1483228799) + 250000000},
      {"2017-01-01T00:59:60+01:00", 1, NS(1483228799)},
      {"2026-06-30T23:59:60Z", 1, NS(1782863999)},
      {"2016-12-30T23:59:60Z", 0, 0},
      {"2016-12-31T23:58:60Z", 0, 0},
      {"2016-12-31T23:59:60+01:00", 0, 0},
      {"2016-12-31T23:59:61Z", 0, 0},
      /* Field ranges. */
      {"2026-13-01T00:00:00Z", 0, 0},
      {"2026-00-01T00:00:00Z", 0, 0},
      {"2026-01-00T00:00:00Z", 0, 0},
      {"2026-01-32T00:00:00Z", 0, 0},
      {"2026-04-31T00:00:00Z", 0, 0},
      {"2026-01-01T24:00:00Z", 0, 0},
      {"2026-01-01T00:60:00Z", 0, 0},
      /* Years the int64 nanosecond clock holds. */
      {"1970-01-01T00:00:00.000000001Z", 1, 1},
      {"1970-01-01T00:00:00Z", 0, 0},
      {"1970-01-01T00:30:00+01:00", 0, 0},
      {"1969-12-31T23:59:59Z", 0, 0},
      {"2261-12-31T23:59:59Z", 1, NS(9214646399)},
      {"2262-01-01T00:00:00Z", 0, 0},
      {"9999-12-31T23:59:59Z", 0, 0},
      {"0000-01-01T00:00:00Z", 0, 0},
      /* Shapes and trailing garbage. */
      {"2026-11-22T06:02:00Zjunk", 0, 0},
      {"2026-11-22T06:02:00Z ", 0, 0},
      {" 2026-11-22T06:02:00Z", 0, 0},
      {"2026-11-22 06:02:00Z", 0, 0},
      {"2026-11-22T6:02:00Z", 0, 0},
      {"2026-1-22T06:02:00Z", 0, 0},
      {"26-11-22T06:02:00Z", 0, 0},
      {"+2026-11-22T06:02:00Z", 0, 0},
      {"2026-11-22T06:02Z", 0, 0},
      {"2026-11-22", 0, 0},
      {"20261122T060200Z", 0, 0},
      {"", 0, 0},
      {"tomorrow at noon", 0, 0},
  };
  run_cases(cases, sizeof cases / sizeof *cases, rfc3339, "time:");

  /* Every prefix of a valid time is an error, and says so. */
  static const char full[] = "2026-11-22T06:02:00.123+01:00";
  for (size_t n = 0; n < sizeof full - 1; n++) {
    char cut[64];
    memcpy(cut, full, n);
    cut[n] = '\0';
    int64_t ns;
    char err[256];
    int rc = rfc3339(cut, &ns, err, sizeof err);
    /* "...00.123" without an offset is also incomplete. */
    assert_int_equal(rc, SPI_EPARSE);
    assert_non_null(strstr(err, "time: "));
  }
  /* An escaped NUL is refused for the whole body, before the time field is
   * read: the parser would cut the string there. */
  int64_t ns;
  char err[256];
  assert_int_equal(rfc3339("2026-11-22T06:02:00\\u0000Z", &ns, err, sizeof err),
                   SPI_EPARSE);
  assert_non_null(strstr(err, "u0000"));
}

static int aws_sched_time(const char *t, int64_t *ns, char *err,
                          size_t errcap) {
  char body[256];
  snprintf(body, sizeof body,
           "[{\"Code\":\"system-reboot\",\"EventId\":\"e-1\",\"State\":"
           "\"active\",\"NotBefore\":\"%s\"}]",
           t);
  result r;
  parse_text(&r, SC, body);
  *ns = r.rc == SPI_OK ? r.out[0].deadline_ns : -1;
  snprintf(err, errcap, "%s", r.err);
  return r.rc;
}

static void test_aws_event_time(void **state) {
  (void)state;
  static const tcase cases[] = {
      {"21 Jan 2019 09:00:43 GMT", 1, NS(1548061243)},
      {"2 Feb 2019 07:00:00 GMT", 1, NS(1549090800)},
      {"02 Feb 2019 07:00:00 GMT", 1, NS(1549090800)},
      {"29 Feb 2024 00:00:00 GMT", 1, NS(1709164800)},
      {"21 Jan 2019 09:00:43 UTC", 1, NS(1548061243)},
      {"21 Jan 2019 10:00:43 +0100", 1, NS(1548061243)},
      {"31 Dec 2016 23:59:60 GMT", 1, NS(1483228799)},
      {"29 Feb 2019 00:00:00 GMT", 0, 0},
      {"31 Apr 2019 00:00:00 GMT", 0, 0},
      {"0 Jan 2019 00:00:00 GMT", 0, 0},
      {"021 Jan 2019 09:00:43 GMT", 0, 0},
      {"21 jan 2019 09:00:43 GMT", 0, 0},
      {"21 January 2019 09:00:43 GMT", 0, 0},
      {"21 Jan 19 09:00:43 GMT", 0, 0},
      {"21 Jan 2019 9:00:43 GMT", 0, 0},
      {"21 Jan 2019 24:00:00 GMT", 0, 0},
      {"21 Jan 2019 09:00:43", 0, 0},
      {"21 Jan 2019 09:00:43 PST", 0, 0},
      {"21 Jan 2019 09:00:43 GMT ", 0, 0},
      {"21  Jan 2019 09:00:43 GMT", 0, 0},
      {"Mon, 21 Jan 2019 09:00:43 GMT", 0, 0}, /* that is RFC 1123 */
      {"2019-01-21T09:00:43Z", 0, 0},
      {"21 Jan 1969 09:00:43 GMT", 0, 0},
  };
  run_cases(cases, sizeof cases / sizeof *cases, aws_sched_time,
            "[0].NotBefore:");
}

static int azure_time(const char *t, int64_t *ns, char *err, size_t errcap) {
  char body[320];
  snprintf(body, sizeof body,
           "{\"DocumentIncarnation\":1,\"Events\":[{\"EventId\":\"E\","
           "\"EventType\":\"Preempt\",\"EventStatus\":\"Scheduled\","
           "\"Resources\":[\"vm\"],\"NotBefore\":\"%s\"}]}",
           t);
  result r;
  parse_text(&r, AZ, body);
  *ns = r.rc == SPI_OK ? r.out[0].deadline_ns : -1;
  snprintf(err, errcap, "%s", r.err);
  return r.rc;
}

static void test_azure_times(void **state) {
  (void)state;
  static const tcase cases[] = {
      {"Sun, 22 Nov 2026 06:00:30 GMT", 1, NS(1795327230)},
      {"Sun, 06 Nov 1994 08:49:37 GMT", 1, NS(784111777)},
      {"Sun, 6 Nov 1994 08:49:37 GMT", 1, NS(784111777)},
      {"Sun, 1 Nov 2026 00:00:00 GMT", 1, NS(1793491200)},
      {"Sun, 22 Nov 2026 06:00:30 UT", 1, NS(1795327230)},
      {"Sun, 22 Nov 2026 07:00:30 +0100", 1, NS(1795327230)},
      {"Sat, 21 Nov 2026 23:00:30 -0700", 1, NS(1795327230)},
      {"Thu, 29 Feb 2024 00:00:00 GMT", 1, NS(1709164800)},
      {"Sat, 31 Dec 2016 23:59:60 GMT", 1, NS(1483228799)},
      /* RFC 3339 too, as some tools write it. */
      {"2026-11-22T06:00:30Z", 1, NS(1795327230)},
      {"2026-11-22T06:00:30.75-00:00", 1, NS(1795327230) + 750000000},
      /* The weekday must match the date as written. */
      {"Mon, 22 Nov 2026 06:00:30 GMT", 0, 0},
      {"Sat, 21 Nov 2026 23:00:30 GMT", 1, NS(1795327230 - 7 * 3600)},
      {"Sun, 21 Nov 2026 23:00:30 -0700", 0, 0},
      {"Mon, 19 Sep 2016 18:29:47 GMT", 1, NS(1474309787)},
      {"Mon, 99 Foo 2026 99:99:99 GMT", 0, 0},
      {"Mon, 32 Nov 2026 00:00:00 GMT", 0, 0},
      {"Thu, 29 Feb 2023 00:00:00 GMT", 0, 0},
      {"Sun 22 Nov 2026 06:00:30 GMT", 0, 0},
      {"Sun,22 Nov 2026 06:00:30 GMT", 0, 0},
      {"Sunday, 22 Nov 2026 06:00:30 GMT", 0, 0},
      {"sun, 22 Nov 2026 06:00:30 GMT", 0, 0},
      {"22 Nov 2026 06:00:30 GMT", 0, 0},
      {"Sun, 22 Nov 2026 06:00:30", 0, 0},
      {"Sun, 22 Nov 2026 06:00:30 GMT+1", 0, 0},
      {"Sun, 22 Nov 2026 06:00:30 +2400", 0, 0},
      {"Sun, 22 Nov 2026 06:00:30 GMTx", 0, 0},
      {"2026-11-22T06:00:30", 0, 0},
      {"2026-11-22T06:00:30Z trailing", 0, 0},
      {"Thu, 01 Jan 1970 00:00:00 GMT", 0, 0},
  };
  run_cases(cases, sizeof cases / sizeof *cases, azure_time,
            "Events[0].NotBefore:");
}

/* ------------------------------------------------------- per format */

static void test_aws_instance_action(void **state) {
  (void)state;
  expect_error(IA, "{\"time\":\"2026-11-22T06:02:00Z\"}", SPI_EMISSING,
               "action: required");
  expect_error(IA, "{\"action\":\"stop\"}", SPI_EMISSING, "time: required");
  expect_error(IA, "{\"action\":\"stop\",\"time\":null}", SPI_ETYPE,
               "time: must be a string, not null");
  expect_error(IA, "{\"action\":\"stop\",\"time\":1795327320}", SPI_ETYPE,
               "time: must be a string, not a number");
  expect_error(IA,
               "{\"action\":\"Terminate\",\"time\":\"2026-11-22T06:02:00Z\"}",
               SPI_EUNKNOWN, "expected terminate, stop or hibernate");
  /* Types first, then values, then absence. */
  expect_error(IA, "{\"action\":\"explode\",\"time\":7}", SPI_ETYPE, "time:");
  expect_error(IA, "{\"action\":\"explode\"}", SPI_EUNKNOWN, "action:");
  expect_error(IA,
               "{\"action\":\"stop\",\"action\":\"terminate\",\"time\":"
               "\"2026-11-22T06:02:00Z\"}",
               SPI_EPARSE, "action: duplicate key");
  expect_error(IA, "[{\"action\":\"stop\"}]", SPI_ETYPE, "JSON object");
  expect_error(IA, "{\"action\":\"stop\",\"time\":\"2026-11-22T06:02:00Z\"} x",
               SPI_EPARSE, "trailing data");
  /* Fields other clouds or tools add are ignored. */
  result r;
  parse_text(&r, IA,
             "{\"action\":\"stop\",\"time\":\"2026-11-22T06:02:00Z\","
             "\"extra\":{\"x\":[1,2]}}");
  assert_int_equal(r.rc, SPI_OK);
  assert_int_equal(r.out[0].kind, SPI_NOTICE_STOP);
  /* The caller must name the machine. */
  parse_at(&r, IA, "{\"action\":\"stop\",\"time\":\"2026-11-22T06:02:00Z\"}",
           "", NOW);
  assert_int_equal(r.rc, SPI_EINVAL);
  assert_non_null(strstr(r.err, "node: empty"));
}

static void test_aws_rebalance(void **state) {
  (void)state;
  expect_error(RB, "{}", SPI_EMISSING, "noticeTime: required");
  expect_error(RB, "{\"noticeTime\":\"2026-11-22 05:45:12\"}", SPI_EPARSE,
               "noticeTime: not an RFC 3339");
  expect_error(RB, "{\"noticeTime\":[]}", SPI_ETYPE, "noticeTime");
  expect_error(RB, "\"2026-11-22T05:45:12Z\"", SPI_ETYPE, "JSON object");
}

static void test_aws_scheduled(void **state) {
  (void)state;
  expect_error(SC, "{\"Code\":\"system-reboot\"}", SPI_ETYPE,
               "top level must be a JSON array");
  expect_error(SC, "[1]", SPI_ETYPE, "[0]: must be an object");
  expect_error(SC, "[] []", SPI_EPARSE, "trailing data");
  expect_error(SC, "[{\"Code\":", SPI_EPARSE, "malformed JSON at byte");
  /* An unknown code or state is a newer kind of event: skipped, counted. */
  expect_skipped(SC,
                 "[{\"Code\":\"system-reboot\",\"EventId\":\"e\",\"State\":"
                 "\"active\",\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"},"
                 "{\"Code\":\"meteor-strike\",\"EventId\":\"f\",\"State\":"
                 "\"active\",\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"}]",
                 1, 1, 2, "[1].Code \"meteor-strike\"");
  expect_skipped(SC,
                 "[{\"Code\":\"system-reboot\",\"EventId\":\"e\",\"State\":"
                 "\"pending\",\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"}]",
                 0, 1, 1, "[0].State \"pending\"");
  expect_error(SC,
               "[{\"Code\":\"system-reboot\",\"State\":\"active\","
               "\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"}]",
               SPI_EMISSING, "[0].EventId: required");
  expect_error(SC,
               "[{\"Code\":\"system-reboot\",\"EventId\":\"e\",\"State\":"
               "\"active\"}]",
               SPI_EMISSING, "[0].NotBefore: required");
  expect_error(SC,
               "[{\"Code\":\"system-reboot\",\"EventId\":5,\"State\":"
               "\"active\",\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"}]",
               SPI_ETYPE, "[0].EventId: must be a string");
  expect_error(SC,
               "[{\"Code\":\"system-reboot\",\"EventId\":\"\",\"State\":"
               "\"active\",\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"}]",
               SPI_EPARSE, "[0].EventId: empty");
  /* Every code AWS documents, and its kind. */
  static const struct {
    const char *code;
    int32_t kind;
  } codes[] = {{"instance-reboot", SPI_NOTICE_MAINTENANCE},
               {"system-reboot", SPI_NOTICE_MAINTENANCE},
               {"system-maintenance", SPI_NOTICE_MAINTENANCE},
               {"instance-retirement", SPI_NOTICE_TERMINATE},
               {"instance-stop", SPI_NOTICE_STOP}};
  for (size_t i = 0; i < 5; i++) {
    char body[256];
    snprintf(body, sizeof body,
             "[{\"Code\":\"%s\",\"EventId\":\"e\",\"State\":\"active\","
             "\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\",\"NotAfter\":\"x\"}]",
             codes[i].code);
    result r;
    parse_text(&r, SC, body);
    assert_int_equal(r.rc, SPI_OK);
    assert_int_equal(r.out[0].kind, codes[i].kind);
    assert_string_equal(r.out[0].node, NODE);
  }
}

static const char WARNING_HEAD[] =
    "{\"detail-type\":\"EC2 Spot Instance Interruption Warning\","
    "\"time\":\"2026-11-22T06:00:00Z\",";

static void test_aws_eventbridge(void **state) {
  (void)state;
  char body[512];
  static const char *const actions[] = {"terminate", "stop", "hibernate"};
  static const int32_t kinds[] = {SPI_NOTICE_TERMINATE, SPI_NOTICE_STOP,
                                  SPI_NOTICE_HIBERNATE};
  for (size_t i = 0; i < 3; i++) {
    snprintf(
        body, sizeof body,
        "%s\"detail\":{\"instance-id\":\"i-9\",\"instance-action\":\"%s\"}}",
        WARNING_HEAD, actions[i]);
    result r;
    parse_full(&r, EB, 200, body, strlen(body), NULL, NOW); /* node unused */
    assert_int_equal(r.rc, SPI_OK);
    char key[64];
    snprintf(key, sizeof key, "aws:eb:i-9:%s", actions[i]);
    expect_notice(&r.out[0], EB, kinds[i], "i-9", NS(1795327200 + 120), 1, "",
                  key);
  }
  /* Instance states. */
  static const struct {
    const char *state;
    int32_t kind;
  } states[] = {{"pending", SPI_NOTICE_NONE},
                {"running", SPI_NOTICE_NONE},
                {"shutting-down", SPI_NOTICE_TERMINATE},
                {"terminated", SPI_NOTICE_TERMINATE},
                {"stopping", SPI_NOTICE_STOP},
                {"stopped", SPI_NOTICE_STOP}};
  for (size_t i = 0; i < 6; i++) {
    snprintf(body, sizeof body,
             "{\"detail-type\":\"EC2 Instance State-change Notification\","
             "\"id\":\"ev\",\"time\":\"2026-11-22T06:02:01Z\",\"detail\":{"
             "\"instance-id\":\"i-9\",\"state\":\"%s\"}}",
             states[i].state);
    result r;
    parse_text(&r, EB, body);
    assert_int_equal(r.rc, SPI_OK);
    assert_int_equal(r.n, states[i].kind != SPI_NOTICE_NONE);
    if (r.n)
      expect_notice(&r.out[0], EB, states[i].kind, "i-9", NS(1795327321), 1,
                    "ev",
                    states[i].kind == SPI_NOTICE_STOP ? "aws:eb:i-9:stop"
                                                      : "aws:eb:i-9:terminate");
  }
  expect_error(EB,
               "{\"detail-type\":\"EC2 Instance State-change Notification\","
               "\"time\":\"2026-11-22T06:02:01Z\",\"detail\":{"
               "\"instance-id\":\"i-9\",\"state\":\"exploded\"}}",
               SPI_EUNKNOWN, "detail.state: unknown value \"exploded\"");
  /* A rule may forward EC2 events this version does not read: skipped. */
  expect_skipped(EB,
                 "{\"detail-type\":\"EC2 Instance Scheduled Change\",\"time\":"
                 "\"2026-11-22T06:02:01Z\",\"detail\":{}}",
                 0, 1, 1, "detail-type \"EC2 Instance Scheduled Change\"");
  expect_error(EB, "{\"detail-type\":7}", SPI_ETYPE, "detail-type: must be");
  expect_error(EB, "{\"time\":\"2026-11-22T06:02:01Z\"}", SPI_EMISSING,
               "detail-type: required");
  snprintf(body, sizeof body, "%s\"detail\":[]}", WARNING_HEAD);
  expect_error(EB, body, SPI_ETYPE, "detail: must be an object, not an array");
  snprintf(body, sizeof body, "%s\"detail\":{\"instance-id\":\"i-9\"}}",
           WARNING_HEAD);
  expect_error(EB, body, SPI_EMISSING, "detail.instance-action: required");
  snprintf(body, sizeof body, "%s\"detail\":{\"instance-action\":\"stop\"}}",
           WARNING_HEAD);
  expect_error(EB, body, SPI_EMISSING, "detail.instance-id: required");
  snprintf(
      body, sizeof body,
      "%s\"detail\":{\"instance-id\":\"i-9\",\"instance-action\":\"pause\"}}",
      WARNING_HEAD);
  expect_error(EB, body, SPI_EUNKNOWN, "detail.instance-action");
  expect_error(EB,
               "{\"detail-type\":\"EC2 Instance Rebalance Recommendation\","
               "\"time\":\"06:00\",\"detail\":{\"instance-id\":\"i-9\"}}",
               SPI_EPARSE, "time: not an RFC 3339");
  expect_error(EB,
               "{\"detail-type\":\"EC2 Instance Rebalance Recommendation\","
               "\"detail\":{\"instance-id\":\"i-9\"}}",
               SPI_EMISSING, "time: required");
  expect_error(EB, "{\"detail-type\":42,\"time\":\"2026-11-22T06:00:00Z\"}",
               SPI_ETYPE, "detail-type: must be a string");
  /* An instance id the node field cannot hold is refused, not cut. */
  char id63[64], id64[65];
  memset(id63, 'x', 63);
  id63[63] = '\0';
  memset(id64, 'x', 64);
  id64[64] = '\0';
  snprintf(
      body, sizeof body,
      "%s\"detail\":{\"instance-id\":\"%s\",\"instance-action\":\"stop\"}}",
      WARNING_HEAD, id63);
  result r;
  parse_text(&r, EB, body);
  assert_int_equal(r.rc, SPI_OK);
  assert_string_equal(r.out[0].node, id63);
  snprintf(
      body, sizeof body,
      "%s\"detail\":{\"instance-id\":\"%s\",\"instance-action\":\"stop\"}}",
      WARNING_HEAD, id64);
  expect_error(EB, body, SPI_ETOOBIG, "detail.instance-id: 64 bytes");
  snprintf(body, sizeof body,
           "%s\"id\":\"%s\",\"detail\":{\"instance-id\":\"i\","
           "\"instance-action\":\"stop\"}}",
           WARNING_HEAD, id64);
  expect_error(EB, body, SPI_ETOOBIG, "id: 64 bytes");
  snprintf(body, sizeof body,
           "%s\"detail\":{\"instance-id\":\"i-\\u0001\",\"instance-action\":"
           "\"stop\"}}",
           WARNING_HEAD);
  expect_error(EB, body, SPI_EPARSE, "control character in \"i-\\x01\"");
}

static void test_gcp(void **state) {
  (void)state;
  static const struct {
    int32_t format;
    const char *body;
    int rc;
    size_t n;
  } cases[] = {
      {GP, "TRUE", SPI_OK, 1},
      {GP, "TRUE\n", SPI_OK, 1},
      {GP, "\r\n  TRUE \t\r\n", SPI_OK, 1},
      {GP, "FALSE\n", SPI_OK, 0},
      {GP, " FALSE ", SPI_OK, 0},
      {GP, "true", SPI_EPARSE, 0},
      {GP, "True", SPI_EPARSE, 0},
      {GP, "TRUE FALSE", SPI_EPARSE, 0},
      {GP, "TRUEX", SPI_EPARSE, 0},
      {GP, "1", SPI_EPARSE, 0},
      {GP, "\"TRUE\"", SPI_EPARSE, 0},
      {GM, "NONE", SPI_OK, 0},
      {GM, "NONE\n", SPI_OK, 0},
      {GM, "MIGRATE_ON_HOST_MAINTENANCE\n", SPI_OK, 1},
      {GM, " TERMINATE_ON_HOST_MAINTENANCE ", SPI_OK, 1},
      {GM, "SOMETHING_NEW_2030", SPI_EUNKNOWN, 0},
      {GM, "none", SPI_EPARSE, 0},
      {GM, "NONE NONE", SPI_EPARSE, 0},
      {GM, "{\"value\":\"NONE\"}", SPI_EPARSE, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    result r;
    parse_text(&r, cases[i].format, cases[i].body);
    if (r.rc != cases[i].rc) print_error("%s: %s\n", cases[i].body, r.err);
    assert_int_equal(r.rc, cases[i].rc);
    assert_int_equal(r.n, cases[i].n);
  }
  /* An embedded NUL is not TRUE. */
  result r;
  parse_full(&r, GP, 200, "TRUE\0", 5, NODE, NOW);
  assert_int_equal(r.rc, SPI_EPARSE);
  assert_non_null(strstr(r.err, "\"TRUE\\x00\""));
  /* Long garbage is quoted short in the message. */
  char big[4096];
  memset(big, 'A', sizeof big);
  parse_full(&r, GP, 200, big, sizeof big, NODE, NOW);
  assert_int_equal(r.rc, SPI_EPARSE);
  assert_true(strlen(r.err) < 160);
  assert_non_null(strstr(r.err, "A\"..."));
  /* The deadline is the poll time plus 30 s. */
  parse_full(&r, GP, 200, "TRUE", 4, "gke-node-1", NS(1000));
  expect_notice(&r.out[0], GP, SPI_NOTICE_PREEMPT, "gke-node-1", NS(1030), 1,
                "", "gcp:preempted:gke-node-1");
  assert_int_equal(r.out[0].received_ns, NS(1000));
  parse_full(&r, GM, 200, "TRUE", 4, "", NOW); /* a word, not a value */
  assert_int_equal(r.rc, SPI_EUNKNOWN);
  parse_full(&r, GP, 200, "TRUE", 4, "", NOW);
  assert_int_equal(r.rc, SPI_EINVAL);
  parse_full(&r, GP, 200, "FALSE", 5, "", NOW); /* no notice, no node */
  assert_int_equal(r.rc, SPI_OK);
}

static void test_azure(void **state) {
  (void)state;
  static const struct {
    const char *type;
    int32_t kind;
  } types[] = {{"Reboot", SPI_NOTICE_MAINTENANCE},
               {"Redeploy", SPI_NOTICE_MAINTENANCE},
               {"Freeze", SPI_NOTICE_MAINTENANCE},
               {"Preempt", SPI_NOTICE_PREEMPT},
               {"Terminate", SPI_NOTICE_TERMINATE}};
  char body[512];
  for (size_t i = 0; i < 5; i++) {
    snprintf(body, sizeof body,
             "{\"DocumentIncarnation\":0,\"Events\":[{\"EventId\":\"E%zu\","
             "\"EventType\":\"%s\",\"EventStatus\":\"Started\",\"NotBefore\":"
             "\"Sun, 22 Nov 2026 06:00:30 GMT\",\"ResourceType\":"
             "\"VirtualMachine\",\"DurationInSeconds\":15}]}",
             i, types[i].type);
    result r;
    parse_text(&r, AZ, body);
    assert_int_equal(r.rc, SPI_OK);
    assert_int_equal(r.n, 1);
    char key[64], eid[8];
    snprintf(key, sizeof key, "azure:E%zu:%s", i, NODE);
    snprintf(eid, sizeof eid, "E%zu", i);
    /* No Resources: the polled machine. Started keeps its NotBefore. */
    expect_notice(&r.out[0], AZ, types[i].kind, NODE, NS(1795327230), 1, eid,
                  key);
  }
  /* Resources [] is the polled machine too; with no node that is an error. */
  static const char no_resources[] =
      "{\"DocumentIncarnation\":0,\"Events\":[{\"EventId\":\"E\","
      "\"EventType\":\"Freeze\",\"EventStatus\":\"Started\",\"NotBefore\":\"\","
      "\"Resources\":[]}]}";
  result r;
  parse_text(&r, AZ, no_resources);
  assert_int_equal(r.rc, SPI_OK);
  assert_string_equal(r.out[0].node, NODE);
  assert_int_equal(r.out[0].deadline_ns, NOW);
  parse_full(&r, AZ, 200, no_resources, strlen(no_resources), NULL, NOW);
  assert_int_equal(r.rc, SPI_EINVAL);

  static const char ev_head[] =
      "{\"DocumentIncarnation\":3,\"Events\":[{\"EventId\":\"E\","
      "\"EventType\":\"Preempt\",";
  snprintf(body, sizeof body,
           "%s\"EventStatus\":\"Scheduled\",\"NotBefore\":\"\"}]}", ev_head);
  expect_error(AZ, body, SPI_EMISSING,
               "Events[0].NotBefore: empty for a Scheduled event");
  snprintf(body, sizeof body, "%s\"EventStatus\":\"Scheduled\"}]}", ev_head);
  expect_error(AZ, body, SPI_EMISSING, "Events[0].NotBefore: required");
  snprintf(body, sizeof body, "%s\"EventStatus\":\"Completed\"}]}", ev_head);
  expect_skipped(AZ, body, 0, 1, 1, "Events[0].EventStatus \"Completed\"");
  snprintf(body, sizeof body,
           "%s\"EventStatus\":\"Started\",\"Resources\":[\"a\",7]}]}", ev_head);
  expect_error(AZ, body, SPI_ETYPE,
               "Events[0].Resources[1]: must be a string, not a number");
  snprintf(body, sizeof body,
           "%s\"EventStatus\":\"Started\",\"Resources\":\"vm\"}]}", ev_head);
  expect_error(AZ, body, SPI_ETYPE, "Events[0].Resources: must be an array");
  snprintf(body, sizeof body,
           "%s\"EventStatus\":\"Started\",\"Resources\":[\"\"]}]}", ev_head);
  expect_error(AZ, body, SPI_EPARSE, "Events[0].Resources[0]: empty");
  /* An unknown type is skipped whatever else the event lacks: its fields
   * are not this version's to judge. Types are still checked first. */
  expect_skipped(AZ,
                 "{\"DocumentIncarnation\":1,\"Events\":[{\"EventType\":"
                 "\"Explode\",\"EventStatus\":\"Started\"}]}",
                 0, 1, 1, "Events[0].EventType \"Explode\"");
  expect_error(AZ,
               "{\"DocumentIncarnation\":1,\"Events\":[{\"EventType\":"
               "\"Explode\",\"EventStatus\":7}]}",
               SPI_ETYPE, "Events[0].EventStatus: must be a string");
  expect_error(AZ,
               "{\"DocumentIncarnation\":1,\"Events\":[{\"EventType\":"
               "[\"Preempt\"],\"EventStatus\":\"Started\"}]}",
               SPI_ETYPE, "Events[0].EventType: must be a string");
  expect_error(AZ,
               "{\"DocumentIncarnation\":1,\"Events\":[{\"EventType\":"
               "\"Reboot\",\"EventStatus\":\"Started\"}]}",
               SPI_EMISSING, "Events[0].EventId: required");
  expect_error(AZ, "{\"DocumentIncarnation\":1,\"Events\":[[]]}", SPI_ETYPE,
               "Events[0]: must be an object, not an array");
  expect_error(AZ, "{\"DocumentIncarnation\":-1,\"Events\":[]}", SPI_ETYPE,
               "DocumentIncarnation");
  expect_error(AZ, "{\"DocumentIncarnation\":1.5,\"Events\":[]}", SPI_ETYPE,
               "DocumentIncarnation");
  expect_error(AZ, "{\"DocumentIncarnation\":1e300,\"Events\":[]}", SPI_ETYPE,
               "DocumentIncarnation");
  expect_error(AZ, "{\"Events\":[]}", SPI_EMISSING,
               "DocumentIncarnation: required");
  expect_error(AZ, "{\"DocumentIncarnation\":1}", SPI_EMISSING,
               "Events: required");
  expect_error(AZ, "{\"DocumentIncarnation\":1,\"Events\":null}", SPI_ETYPE,
               "Events: must be an array, not null");
  expect_error(AZ, "{\"DocumentIncarnation\":1,\"Events\":[],\"Events\":[{}]}",
               SPI_EPARSE, "Events: duplicate key");
}

/* ------------------------------------------- unknown entries (bug 3) */

/* A Scheduled Events document with a Preempt beside an event type this
 * version has never seen: the Preempt is read, the other counted. Before,
 * the whole document was refused and the Preempt lost. */
static void test_unknown_entries_skipped(void **state) {
  (void)state;
  static const char AZ_MIXED[] =
      "{\"DocumentIncarnation\":7,\"Events\":["
      "{\"EventId\":\"N1\",\"EventType\":\"LiveMigrate\",\"EventStatus\":"
      "\"Scheduled\",\"NotBefore\":\"Sun, 22 Nov 2026 06:30:00 GMT\","
      "\"Resources\":[\"vm9\"],\"DurationInSeconds\":12},"
      "{\"EventId\":\"P1\",\"EventType\":\"Preempt\",\"EventStatus\":"
      "\"Scheduled\",\"NotBefore\":\"Sun, 22 Nov 2026 06:00:30 GMT\","
      "\"Resources\":[\"myspotvm_3\"]},"
      "{\"EventId\":\"N2\",\"EventType\":\"Hibernate\",\"EventStatus\":"
      "\"Pending\",\"NotBefore\":\"not a time we read\"}]}";
  expect_skipped(AZ, AZ_MIXED, 1, 2, 1, "Events[0].EventType \"LiveMigrate\"");
  expect_skipped(AZ, AZ_MIXED, 1, 2, 1, "skipped 2 entries");
  result r;
  spi_parse_report rep = {sizeof rep, 0, 0, 0};
  assert_int_equal(spi_notice_parse_v2(AZ, 200, AZ_MIXED, strlen(AZ_MIXED),
                                       NODE, strlen(NODE), NOW, r.out, 8, &rep,
                                       r.err, sizeof r.err),
                   SPI_OK);
  expect_notice(&r.out[0], AZ, SPI_NOTICE_PREEMPT, "myspotvm_3",
                NS(1795327230), 1, "P1", "azure:P1:myspotvm_3");
  /* cap 0 counts notices, not skipped entries. */
  assert_int_equal(spi_notice_parse_v2(AZ, 200, AZ_MIXED, strlen(AZ_MIXED),
                                       NODE, strlen(NODE), NOW, NULL, 0, &rep,
                                       r.err, sizeof r.err),
                   SPI_EBUFSIZE);
  assert_int_equal(rep.found, 1);
  assert_int_equal(rep.skipped, 2);

  /* AWS scheduled events: a retirement beside a code from the future. */
  static const char SC_MIXED[] =
      "[{\"Code\":\"instance-hibernate\",\"EventId\":\"instance-event-1\","
      "\"State\":\"active\",\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"},"
      "{\"Code\":\"instance-retirement\",\"EventId\":\"instance-event-2\","
      "\"State\":\"active\",\"NotBefore\":\"2 Feb 2019 07:00:00 GMT\"},"
      "{\"Code\":\"system-reboot\",\"EventId\":\"instance-event-3\","
      "\"State\":\"in-progress\",\"NotBefore\":\"2 Feb 2019 07:00:00 GMT\"}]";
  expect_skipped(SC, SC_MIXED, 1, 2, 1, "[0].Code \"instance-hibernate\"");
  assert_int_equal(spi_notice_parse(SC, 200, SC_MIXED, strlen(SC_MIXED), NODE,
                                    strlen(NODE), NOW, r.out, 8, &r.n, r.err,
                                    sizeof r.err),
                   SPI_OK);
  assert_int_equal(r.n, 1);
  assert_int_equal(r.out[0].kind, SPI_NOTICE_TERMINATE);
  assert_string_equal(r.out[0].event_id, "instance-event-2");

  /* Nothing skipped: no message, zero counts. */
  static const char AZURE_PREEMPT_BODY[] =
      "{\"DocumentIncarnation\":3,\"Events\":[{\"EventId\":\"P1\","
      "\"EventType\":\"Preempt\",\"EventStatus\":\"Scheduled\","
      "\"NotBefore\":\"Sun, 22 Nov 2026 06:00:30 GMT\"}]}";
  memset(&rep, 0x77, sizeof rep);
  rep.struct_size = sizeof rep;
  assert_int_equal(spi_notice_parse_v2(AZ, 200, AZURE_PREEMPT_BODY,
                                       strlen(AZURE_PREEMPT_BODY), NODE,
                                       strlen(NODE), NOW, r.out, 8, &rep,
                                       r.err, sizeof r.err),
                   SPI_OK);
  assert_string_equal(r.err, "");
  assert_int_equal(rep.found, 1);
  assert_int_equal(rep.skipped, 0);
  assert_int_equal(rep.first_skipped, 0);

  /* A known event that is broken still fails the whole document, and an
   * unknown one does not hide it. */
  static const char AZ_BROKEN[] =
      "{\"DocumentIncarnation\":7,\"Events\":["
      "{\"EventId\":\"N1\",\"EventType\":\"LiveMigrate\",\"EventStatus\":"
      "\"Scheduled\"},"
      "{\"EventId\":\"P1\",\"EventType\":\"Preempt\",\"EventStatus\":"
      "\"Scheduled\",\"NotBefore\":\"Mon, 99 Foo 2026 99:99:99 GMT\"}]}";
  expect_error(AZ, AZ_BROKEN, SPI_EPARSE, "Events[1].NotBefore");

  /* The report is required and checked. */
  rep.struct_size = sizeof rep - 1;
  assert_int_equal(spi_notice_parse_v2(AZ, 200, AZ_MIXED, strlen(AZ_MIXED),
                                       NODE, strlen(NODE), NOW, r.out, 8, &rep,
                                       r.err, sizeof r.err),
                   SPI_EINVAL);
  assert_non_null(strstr(r.err, "report"));
  assert_int_equal(spi_notice_parse_v2(AZ, 200, AZ_MIXED, strlen(AZ_MIXED),
                                       NODE, strlen(NODE), NOW, r.out, 8, NULL,
                                       NULL, 0),
                   SPI_EINVAL);
}

/* ----------------------------------------------------- caps and output */

static const char AZURE_FOUR[] =
    "{\"DocumentIncarnation\":5,\"Events\":["
    "{\"EventId\":\"A\",\"EventType\":\"Preempt\",\"EventStatus\":"
    "\"Scheduled\",\"NotBefore\":\"Sun, 22 Nov 2026 06:00:30 GMT\","
    "\"Resources\":[\"vm0\",\"vm1\"]},"
    "{\"EventId\":\"B\",\"EventType\":\"Reboot\",\"EventStatus\":\"Started\","
    "\"NotBefore\":\"\",\"Resources\":[\"vm2\"]},"
    "{\"EventId\":\"C\",\"EventType\":\"Terminate\",\"EventStatus\":"
    "\"Scheduled\",\"NotBefore\":\"2026-11-22T06:10:00Z\","
    "\"Resources\":[\"vm3\"]}]}";

static void test_cap_and_ebufsize(void **state) {
  (void)state;
  static const char *const nodes[] = {"vm0", "vm1", "vm2", "vm3"};
  spi_notice out[5];
  size_t n;
  char err[256];
  size_t len = strlen(AZURE_FOUR);
  /* cap 0 asks for the count. */
  assert_int_equal(spi_notice_parse(AZ, 200, AZURE_FOUR, len, NULL, 0, NOW,
                                    NULL, 0, &n, err, sizeof err),
                   SPI_EBUFSIZE);
  assert_int_equal(n, 4);
  assert_non_null(strstr(err, "4 notices, room for 0"));
  /* A short cap gets the first notices and the full count. */
  memset(out, 0xab, sizeof out);
  assert_int_equal(spi_notice_parse(AZ, 200, AZURE_FOUR, len, NULL, 0, NOW, out,
                                    2, &n, err, sizeof err),
                   SPI_EBUFSIZE);
  assert_int_equal(n, 4);
  assert_string_equal(out[0].node, "vm0");
  assert_string_equal(out[1].node, "vm1");
  unsigned char pattern[sizeof(spi_notice)];
  memset(pattern, 0xab, sizeof pattern);
  assert_memory_equal(&out[2], pattern, sizeof pattern);
  /* Enough room. */
  memset(out, 0xab, sizeof out);
  assert_int_equal(spi_notice_parse(AZ, 200, AZURE_FOUR, len, NULL, 0, NOW, out,
                                    5, &n, err, sizeof err),
                   SPI_OK);
  assert_int_equal(n, 4);
  for (size_t i = 0; i < 4; i++) assert_string_equal(out[i].node, nodes[i]);
  assert_string_equal(out[0].dedup_key, "azure:A:vm0");
  assert_string_equal(out[1].dedup_key, "azure:A:vm1");
  assert_int_equal(out[2].deadline_ns, NOW);
  assert_int_equal(out[3].kind, SPI_NOTICE_TERMINATE);
  assert_int_equal(out[3].deadline_ns, NS(1795327800));
  assert_memory_equal(&out[4], pattern, sizeof pattern);
  /* Single-notice formats with cap 0. */
  assert_int_equal(spi_notice_parse(GP, 200, "TRUE", 4, "n", 1, NOW, NULL, 0,
                                    &n, err, sizeof err),
                   SPI_EBUFSIZE);
  assert_int_equal(n, 1);
  /* No notice fits any cap. */
  assert_int_equal(spi_notice_parse(GP, 200, "FALSE", 5, "n", 1, NOW, NULL, 0,
                                    &n, err, sizeof err),
                   SPI_OK);
  assert_int_equal(n, 0);
}

/* ------------------------------------------------------ out of memory */

/* cJSON allocates the parse tree through its process-wide hooks (the
 * library never sets them); the test sets them to fail one allocation. */
static long cj_allocs, cj_fail_at = -1;

static void *cj_malloc(size_t n) {
  if (cj_allocs++ == cj_fail_at) return NULL;
  return malloc(n);
}

/* Issue 12.6: running out of memory inside the JSON parser was reported as
 * "malformed JSON" (SPI_EPARSE). Failing each of cJSON's allocations in
 * turn, every failure is SPI_ENOMEM saying so, writes nothing, and the
 * next call with memory parses as usual; a malformed body stays SPI_EPARSE
 * however allocation goes. */
static void test_out_of_memory(void **state) {
  (void)state;
  static const struct {
    int32_t format;
    const char *body;
  } BODIES[] = {
      {AZ, AZURE_FOUR},
      {SC, "[{\"Code\":\"system-reboot\",\"EventId\":\"e\",\"State\":"
           "\"active\",\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"}]"},
      {IA, "{\"action\":\"terminate\",\"time\":\"2026-11-22T06:02:00Z\"}"},
      {EB, "{\"detail-type\":\"EC2 Spot Instance Interruption Warning\","
           "\"time\":\"2026-11-22T06:02:01Z\",\"id\":\"x\",\"detail\":{"
           "\"instance-id\":\"i-9\",\"instance-action\":\"terminate\"}}"},
  };
  cJSON_Hooks hooks = {cj_malloc, free};
  size_t points = 0;
  for (size_t b = 0; b < sizeof BODIES / sizeof BODIES[0]; b++) {
    const char *body = BODIES[b].body;
    for (long k = 0;; k++) {
      spi_notice out[8];
      memset(out, 0x5a, sizeof out);
      unsigned char before[sizeof out];
      memcpy(before, out, sizeof out);
      size_t n = 99;
      char err[256] = "";
      cj_allocs = 0;
      cj_fail_at = k;
      cJSON_InitHooks(&hooks);
      int rc = spi_notice_parse(BODIES[b].format, 200, body, strlen(body),
                                NODE, strlen(NODE), NOW, out, 8, &n, err,
                                sizeof err);
      cJSON_InitHooks(NULL);
      if (cj_allocs <= k) { /* nothing failed: the whole parse ran */
        assert_int_equal(rc, SPI_OK);
        assert_true(n >= 1);
        break;
      }
      points++;
      if (rc != SPI_ENOMEM)
        print_error("body %zu, allocation %ld: rc %d \"%s\"\n", b, k, rc,
                    err);
      assert_int_equal(rc, SPI_ENOMEM);
      assert_non_null(strstr(err, "out of memory while parsing JSON"));
      assert_int_equal(n, 0);
      assert_memory_equal(out, before, sizeof out);
    }
  }
  print_message("%zu allocation failures injected, each SPI_ENOMEM\n", points);
  assert_true(points >= 20);
  /* Malformed stays malformed whichever allocation fails. */
  static const char TRUNC[] = "{\"action\": \"terminate\", \"time\": \"2026";
  for (long k = 0; k < 8; k++) {
    size_t n;
    char err[256] = "";
    cj_allocs = 0;
    cj_fail_at = k;
    cJSON_InitHooks(&hooks);
    int rc = spi_notice_parse(IA, 200, TRUNC, strlen(TRUNC), NODE,
                              strlen(NODE), NOW, NULL, 0, &n, err, sizeof err);
    cJSON_InitHooks(NULL);
    assert_int_equal(rc, SPI_EPARSE);
    assert_non_null(strstr(err, "malformed JSON"));
  }
}

/* A document that fails part way writes nothing: out[] is untouched. */
static void test_failure_leaves_output(void **state) {
  (void)state;
  static const char body[] =
      "[{\"Code\":\"system-reboot\",\"EventId\":\"e1\",\"State\":\"active\","
      "\"NotBefore\":\"21 Jan 2019 09:00:43 GMT\"},"
      "{\"Code\":\"system-reboot\",\"EventId\":\"e2\",\"State\":\"active\","
      "\"NotBefore\":\"21 Jan 2019 25:00:43 GMT\"}]";
  spi_notice out[4];
  unsigned char before[sizeof out];
  memset(out, 0x5a, sizeof out);
  memcpy(before, out, sizeof out);
  size_t n = 7;
  char err[256];
  assert_int_equal(spi_notice_parse(SC, 200, body, strlen(body), "n", 1, NOW,
                                    out, 4, &n, err, sizeof err),
                   SPI_EPARSE);
  assert_int_equal(n, 0);
  assert_memory_equal(out, before, sizeof out);
  assert_non_null(strstr(err, "[1].NotBefore: hour out of range"));
}

static void test_arguments(void **state) {
  (void)state;
  spi_notice out[1];
  size_t n;
  char err[256];
  static const char t[] = "TRUE";
  assert_int_equal(
      spi_notice_parse(0, 200, t, 4, "n", 1, NOW, out, 1, &n, err, sizeof err),
      SPI_EINVAL);
  assert_non_null(strstr(err, "format 0"));
  assert_int_equal(
      spi_notice_parse(8, 200, t, 4, "n", 1, NOW, out, 1, &n, err, sizeof err),
      SPI_EINVAL);
  assert_int_equal(spi_notice_parse(GP, 200, t, 4, "n", 1, NOW, out, 1, NULL,
                                    err, sizeof err),
                   SPI_EINVAL);
  assert_int_equal(spi_notice_parse(GP, 200, t, 4, "n", 1, NOW, NULL, 1, &n,
                                    err, sizeof err),
                   SPI_EINVAL);
  assert_int_equal(spi_notice_parse(GP, 200, NULL, 4, "n", 1, NOW, out, 1, &n,
                                    err, sizeof err),
                   SPI_EINVAL);
  assert_int_equal(spi_notice_parse(GP, 200, t, 4, NULL, 1, NOW, out, 1, &n,
                                    err, sizeof err),
                   SPI_EINVAL);
  assert_int_equal(
      spi_notice_parse(GP, 200, t, 4, "n", 1, -1, out, 1, &n, err, sizeof err),
      SPI_EINVAL);
  assert_int_equal(spi_notice_parse(GP, 200, t, 4, "n", 1, INT64_MAX, out, 1,
                                    &n, err, sizeof err),
                   SPI_EINVAL);
  assert_int_equal(spi_notice_parse(GP, 200, t, 4, "a\nb", 3, NOW, out, 1, &n,
                                    err, sizeof err),
                   SPI_EINVAL);
  /* The caller's node: up to 63 bytes, not NUL-terminated. */
  char node[80];
  memset(node, 'n', sizeof node);
  assert_int_equal(spi_notice_parse(GP, 200, t, 4, node, 63, NOW, out, 1, &n,
                                    err, sizeof err),
                   SPI_OK);
  assert_int_equal(strlen(out[0].node), 63);
  assert_int_equal(strlen(out[0].dedup_key), strlen("gcp:preempted:") + 63);
  assert_int_equal(spi_notice_parse(GP, 200, t, 4, node, 64, NOW, out, 1, &n,
                                    err, sizeof err),
                   SPI_EINVAL);
  assert_non_null(strstr(err, "node: 64 bytes"));
  /* errbuf may be NULL or tiny; the message is cut, never overrun. */
  assert_int_equal(
      spi_notice_parse(GP, 200, "MAYBE", 5, "n", 1, NOW, out, 1, &n, NULL, 0),
      SPI_EPARSE);
  char tiny[8];
  memset(tiny, 'z', sizeof tiny);
  assert_int_equal(
      spi_notice_parse(GP, 200, "MAYBE", 5, "n", 1, NOW, out, 1, &n, tiny, 5),
      SPI_EPARSE);
  assert_int_equal(strlen(tiny), 4);
  assert_int_equal(tiny[5], 'z');
  /* Over the body limit, whatever it holds. */
  size_t big = (1u << 20) + 1;
  char *huge = malloc(big);
  assert_non_null(huge);
  memset(huge, ' ', big);
  assert_int_equal(spi_notice_parse(IA, 200, huge, big, "n", 1, NOW, out, 1, &n,
                                    err, sizeof err),
                   SPI_ETOOBIG);
  assert_int_equal(spi_notice_parse(IA, 404, huge, big, "n", 1, NOW, out, 1, &n,
                                    err, sizeof err),
                   SPI_OK);
  free(huge);
}

static void test_kind_names(void **state) {
  (void)state;
  static const char *const names[] = {"none",      "terminate", "stop",
                                      "hibernate", "rebalance", "maintenance",
                                      "preempt"};
  for (int32_t k = 0; k < 7; k++)
    assert_string_equal(spi_notice_kind_name(k), names[k]);
  assert_string_equal(spi_notice_kind_name(-1), "invalid");
  assert_string_equal(spi_notice_kind_name(7), "invalid");
  assert_string_equal(spi_notice_kind_name(INT32_MAX), "invalid");
  assert_string_equal(spi_notice_kind_name(INT32_MIN), "invalid");
}

/* Pure and thread-safe: concurrent callers on shared input agree. */
static void *parse_loop(void *arg) {
  spi_notice ref[4];
  size_t n;
  char err[256];
  int *failed = arg;
  if (spi_notice_parse(AZ, 200, AZURE_FOUR, strlen(AZURE_FOUR), NULL, 0, NOW,
                       ref, 4, &n, err, sizeof err) != SPI_OK)
    *failed = 1;
  for (int i = 0; i < 2000 && !*failed; i++) {
    spi_notice out[4];
    if (spi_notice_parse(AZ, 200, AZURE_FOUR, strlen(AZURE_FOUR), NULL, 0, NOW,
                         out, 4, &n, err, sizeof err) != SPI_OK ||
        n != 4 || memcmp(out, ref, sizeof out) != 0)
      *failed = 1;
    if (spi_notice_parse(IA, 200, "{\"action\":1}", 12, "n", 1, NOW, out, 4, &n,
                         err, sizeof err) != SPI_ETYPE)
      *failed = 1;
  }
  return NULL;
}

static void test_threads(void **state) {
  (void)state;
  pthread_t th[4];
  int failed[4] = {0};
  for (int i = 0; i < 4; i++)
    assert_int_equal(pthread_create(&th[i], NULL, parse_loop, &failed[i]), 0);
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(failed[i], 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_fixture_is_listed),
      cmocka_unit_test(test_fixtures),
      cmocka_unit_test(test_malformed_fixtures),
      cmocka_unit_test(test_404_and_status),
      cmocka_unit_test(test_empty_bodies),
      cmocka_unit_test(test_dedup_stable_across_polls),
      cmocka_unit_test(test_scheduled_withdrawal_key),
      cmocka_unit_test(test_nul_escape_refused),
      cmocka_unit_test(test_control_bytes),
      cmocka_unit_test(test_rfc3339),
      cmocka_unit_test(test_aws_event_time),
      cmocka_unit_test(test_azure_times),
      cmocka_unit_test(test_aws_instance_action),
      cmocka_unit_test(test_aws_rebalance),
      cmocka_unit_test(test_aws_scheduled),
      cmocka_unit_test(test_aws_eventbridge),
      cmocka_unit_test(test_gcp),
      cmocka_unit_test(test_azure),
      cmocka_unit_test(test_unknown_entries_skipped),
      cmocka_unit_test(test_out_of_memory),
      cmocka_unit_test(test_cap_and_ebufsize),
      cmocka_unit_test(test_failure_leaves_output),
      cmocka_unit_test(test_arguments),
      cmocka_unit_test(test_kind_names),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
