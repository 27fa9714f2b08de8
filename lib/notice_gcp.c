/*
 * notice_gcp.c - GCP metadata: instance/preempted and
 * instance/maintenance-event, plain-text bodies.
 *
 * GCP gives no deadline. A preemption leaves about 30 s; for
 * TERMINATE_ON_HOST_MAINTENANCE GCP documents 60 s, and the deadline is set
 * 30 s after the poll so that a poll up to 30 s late still drains in time.
 *
 * A backend of the notice dispatch (curl's vtls pattern): no code but
 * notice.c should ever call the functions this file exports.
 */
#include <string.h>

#include "notice.h"

/* The body without surrounding whitespace. */
static void trim(const char **s, size_t *n) {
  while (*n > 0 && spi__notice_is_space(**s)) (*s)++, (*n)--;
  while (*n > 0 && spi__notice_is_space((*s)[*n - 1])) (*n)--;
}

static int text_is(const char *s, size_t n, const char *word) {
  return n == strlen(word) && memcmp(s, word, n) == 0;
}

/* instance/preempted: TRUE or FALSE. */
int spi__notice_gcp_preempted(nctx *c, const char *body, size_t len) {
  trim(&body, &len);
  if (text_is(body, len, "FALSE")) return SPI_OK;
  if (!text_is(body, len, "TRUE")) {
    char q[QUOTE_CAP];
    if (len == 0)
      return spi__notice_fail(c, SPI_EPARSE,
                              "empty body, expected TRUE or FALSE");
    return spi__notice_fail(c, SPI_EPARSE, "expected TRUE or FALSE, not %s",
                            spi__notice_quoted(q, sizeof q, body, len));
  }
  int rc = spi__notice_need_node(c);
  if (rc != SPI_OK) return rc;
  draft d = {SPI_NOTICE_PREEMPT, c->node, c->now_ns + GCP_WINDOW_NS, 1, ""};
  return spi__notice_emit(c, &d, "gcp:preempted:%s", c->node);
}

/* instance/maintenance-event: NONE, MIGRATE_ON_HOST_MAINTENANCE (live
 * migration: advice, no deadline) or TERMINATE_ON_HOST_MAINTENANCE. */
int spi__notice_gcp_maintenance(nctx *c, const char *body, size_t len) {
  static const char *const VALUES[] = {"NONE", "MIGRATE_ON_HOST_MAINTENANCE",
                                       "TERMINATE_ON_HOST_MAINTENANCE"};
  trim(&body, &len);
  char q[QUOTE_CAP];
  if (len == 0)
    return spi__notice_fail(c, SPI_EPARSE,
                            "empty body, expected NONE, "
                            "MIGRATE_ON_HOST_MAINTENANCE or "
                            "TERMINATE_ON_HOST_MAINTENANCE");
  size_t v = 3;
  for (size_t i = 0; i < 3 && v == 3; i++)
    if (text_is(body, len, VALUES[i])) v = i;
  if (v == 3) {
    /* A value in the metadata server's own alphabet is one this version
     * does not know yet; anything else is not a value at all. */
    int word = 1;
    for (size_t i = 0; i < len; i++)
      if (!((body[i] >= 'A' && body[i] <= 'Z') ||
            spi__notice_is_digit(body[i]) || body[i] == '_'))
        word = 0;
    return spi__notice_fail(
        c, word ? SPI_EUNKNOWN : SPI_EPARSE,
        "%s %s (expected NONE, MIGRATE_ON_HOST_MAINTENANCE or "
        "TERMINATE_ON_HOST_MAINTENANCE)",
        word ? "unknown value" : "not a maintenance-event value:",
        spi__notice_quoted(q, sizeof q, body, len));
  }
  if (v == 0) return SPI_OK;
  int rc = spi__notice_need_node(c);
  if (rc != SPI_OK) return rc;
  draft d = {SPI_NOTICE_MAINTENANCE, c->node, 0, 1, ""};
  if (v == 2) {
    d.kind = SPI_NOTICE_TERMINATE;
    d.deadline_ns = c->now_ns + GCP_WINDOW_NS;
  }
  return spi__notice_emit(c, &d, "gcp:maintenance:%s:%s", c->node, VALUES[v]);
}
