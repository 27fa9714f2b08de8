/*
 * notice.c - cloud interruption notices read into spi_notice: the public
 * calls and the dispatch to one backend per cloud (notice_aws.c: IMDS
 * spot/instance-action, events/recommendations/rebalance,
 * events/maintenance/scheduled and EventBridge envelopes; notice_gcp.c:
 * instance/preempted, instance/maintenance-event; notice_azure.c: Scheduled
 * Events). This file is the only caller of the backends (see notice.h).
 *
 * What the parser decides, beyond what spotinfer.h says:
 *
 *  - Errors are reported in a fixed order so a body with several faults
 *    always gets the same status: wrong types (SPI_ETYPE) first, then bad
 *    values (SPI_EUNKNOWN, SPI_EPARSE), then absent required fields
 *    (SPI_EMISSING). A key that appears twice in one object is SPI_EPARSE:
 *    which of two values the cloud meant would be a guess.
 *  - Clouds add event types without warning. In the documents that list
 *    events (AWS scheduled, Azure) and in EventBridge envelopes, an event
 *    whose type or state is not one this version knows is skipped and
 *    counted, after its fields' types are checked, and the other events are
 *    still read: one new event type must not hide a Preempt beside it. A
 *    known event that is broken still fails the whole document.
 *  - Ids taken from a body (instance ids, resource names, event ids) must
 *    be 1..63 bytes without control characters; a longer one is
 *    SPI_ETOOBIG, never truncated (a truncated node or event id could
 *    collide with another in the dedup key). The same bound on the caller's
 *    node is SPI_EINVAL.
 *  - Bodies over SPI__NOTICE_MAX_BODY bytes are SPI_ETOOBIG unread.
 *  - Per cloud: GCP's deadlines in notice_gcp.c, Azure's resources in
 *    notice_azure.c, AWS's withdrawn events in notice_aws.c, the time
 *    formats in notice_time.c.
 *  - An empty (or all-whitespace) body is "no notice" for the three AWS IMDS
 *    paths, whose clients commonly turn the 404 into an empty string. GCP,
 *    Azure and EventBridge always serve a value, so there it is SPI_EPARSE.
 *
 * Pure: the only allocation is cJSON's parse tree, freed before returning.
 * Every document is walked twice, first to validate and count with nothing
 * written, then to write, so a failed call leaves out[] untouched, but for
 * SPI_EBUFSIZE, which fills the first cap.
 */
#include <string.h>

#include "notice.h"

/* A Scheduled Events document with many events is a few KiB; this bounds
 * the work done on a runaway or hostile response. */
#define SPI__NOTICE_MAX_BODY ((size_t)1 << 20)

/* ------------------------------------------------------------------ API */

static const char *format_label(int32_t format) {
  switch (format) {
  case SPI_NOTICE_AWS_INSTANCE_ACTION:
    return "aws spot/instance-action";
  case SPI_NOTICE_AWS_REBALANCE:
    return "aws events/recommendations/rebalance";
  case SPI_NOTICE_AWS_SCHEDULED:
    return "aws events/maintenance/scheduled";
  case SPI_NOTICE_AWS_EVENTBRIDGE:
    return "aws eventbridge";
  case SPI_NOTICE_GCP_PREEMPTED:
    return "gcp instance/preempted";
  case SPI_NOTICE_GCP_MAINTENANCE:
    return "gcp instance/maintenance-event";
  case SPI_NOTICE_AZURE_SCHEDULED:
    return "azure scheduled events";
  default:
    return NULL;
  }
}

static int is_blank(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!spi__notice_is_space(s[i])) return 0;
  return 1;
}

/* One pass over the parsed body. */
static int walk(nctx *c, const cJSON *root, const char *body, size_t len) {
  switch (c->format) {
  case SPI_NOTICE_AWS_INSTANCE_ACTION:
    return spi__notice_aws_instance_action(c, root);
  case SPI_NOTICE_AWS_REBALANCE:
    return spi__notice_aws_rebalance(c, root);
  case SPI_NOTICE_AWS_SCHEDULED:
    return spi__notice_aws_scheduled(c, root);
  case SPI_NOTICE_AWS_EVENTBRIDGE:
    return spi__notice_aws_eventbridge(c, root);
  case SPI_NOTICE_GCP_PREEMPTED:
    return spi__notice_gcp_preempted(c, body, len);
  case SPI_NOTICE_GCP_MAINTENANCE:
    return spi__notice_gcp_maintenance(c, body, len);
  default:
    return spi__notice_azure_scheduled(c, root);
  }
}

static int check_args(nctx *c, int32_t http_status, const char *body,
                      size_t len, const char *node, size_t node_len,
                      const spi_notice *out, size_t cap, const size_t *n_out) {
  if (!n_out) return spi__notice_fail(c, SPI_EINVAL, "n_out is NULL");
  if (!out && cap)
    return spi__notice_fail(c, SPI_EINVAL, "out is NULL with cap %zu", cap);
  if (!body && len)
    return spi__notice_fail(c, SPI_EINVAL, "body is NULL with length %zu", len);
  if (!node && node_len)
    return spi__notice_fail(c, SPI_EINVAL, "node is NULL with length %zu",
                            node_len);
  if (node_len >= SPI_ID_MAX)
    return spi__notice_fail(c, SPI_EINVAL,
                            "node: %zu bytes, over the %d allowed", node_len,
                            SPI_ID_MAX - 1);
  for (size_t i = 0; i < node_len; i++)
    if ((unsigned char)node[i] < 0x20 || node[i] == 0x7f)
      return spi__notice_fail(c, SPI_EINVAL,
                              "node: control character at byte %zu", i);
  /* The largest window added to now_ns must not overflow. */
  if (c->now_ns < 0 || c->now_ns > INT64_MAX - GCP_WINDOW_NS)
    return spi__notice_fail(c, SPI_EINVAL, "now_ns %lld out of range",
                            (long long)c->now_ns);
  if (http_status != 0 && http_status != 404 &&
      (http_status < 200 || http_status > 299))
    return spi__notice_fail(
        c, SPI_EINVAL,
        "http status %d: only 2xx carries a notice and 404 means "
        "none",
        (int)http_status);
  return SPI_OK;
}

/* The message for a document that parsed with entries skipped. */
static void skip_message(nctx *c) {
  spi__errf(c->err, c->errcap,
            "%s: skipped %zu %s of a type or state this version does not "
            "read (first: %s)",
            c->label, c->skipped, c->skipped == 1 ? "entry" : "entries",
            c->skip_note);
}

/* Validate and count with nothing written, then write. */
static int parse_body(nctx *c, int32_t format, const char *body, size_t len,
                      spi_notice *out, size_t cap, size_t *found) {
  int json = format != SPI_NOTICE_GCP_PREEMPTED &&
             format != SPI_NOTICE_GCP_MAINTENANCE;
  cJSON *root = NULL;
  int rc;
  if (json) {
    if (is_blank(body, len)) {
      if (format == SPI_NOTICE_AWS_INSTANCE_ACTION ||
          format == SPI_NOTICE_AWS_REBALANCE ||
          format == SPI_NOTICE_AWS_SCHEDULED)
        return SPI_OK;
      return spi__notice_fail(c, SPI_EPARSE, "empty body, expected a JSON %s",
                              format == SPI_NOTICE_AWS_SCHEDULED ? "array"
                                                                 : "object");
    }
    /* Its length was checked against SPI__NOTICE_MAX_BODY above. */
    int want = format == SPI_NOTICE_AWS_SCHEDULED ? cJSON_Array : cJSON_Object;
    rc = spi__json_parse_as(body, len, want, c->label, &root, c->err,
                            c->errcap);
    if (rc != SPI_OK) return rc;
  }
  rc = walk(c, root, body, len);
  *found = c->n;
  if (rc == SPI_OK && *found > 0 && cap > 0) {
    c->out = out;
    c->cap = cap;
    c->n = 0;
    rc = walk(c, root, body, len);
  }
  cJSON_Delete(root);
  return rc;
}

static int notice_parse(int32_t format, int32_t http_status, const char *body,
                        size_t len, const char *node, size_t node_len,
                        int64_t now_ns, spi_notice *out, size_t cap,
                        size_t *n_out, spi_parse_report *report, char *errbuf,
                        size_t errcap) {
  nctx c;
  memset(&c, 0, sizeof c);
  c.err = errbuf;
  c.errcap = errcap;
  if (errbuf && errcap) errbuf[0] = '\0';
  if (n_out) *n_out = 0;
  c.format = format;
  c.label = format_label(format);
  if (!c.label) {
    c.label = "notice";
    return spi__notice_fail(&c, SPI_EINVAL,
                            "format %d is not an enum spi_notice_format",
                            (int)format);
  }
  c.now_ns = now_ns;
  int rc =
      check_args(&c, http_status, body, len, node, node_len, out, cap, n_out);
  if (rc != SPI_OK) return rc;
  if (node_len) memcpy(c.node, node, node_len);
  c.node_len = node_len;

  /* The 404 body is the server's HTML error page: never read. */
  if (http_status == 404) return SPI_OK;
  if (len > SPI__NOTICE_MAX_BODY)
    return spi__notice_fail(&c, SPI_ETOOBIG,
                            "body of %zu bytes, over the %zu allowed", len,
                            SPI__NOTICE_MAX_BODY);
  size_t found = 0;
  rc = parse_body(&c, format, body, len, out, cap, &found);
  if (rc != SPI_OK) return rc;
  *n_out = found;
  if (report) {
    report->found = found;
    report->skipped = c.skipped;
    report->first_skipped = c.first_skipped;
  }
  if (found > cap)
    return spi__notice_fail(&c, SPI_EBUFSIZE, "%zu notices, room for %zu",
                            found, cap);
  if (c.skipped) skip_message(&c);
  return SPI_OK;
}

SPI_API int spi_notice_parse(int32_t format, int32_t http_status,
                             const char *body, size_t len, const char *node,
                             size_t node_len, int64_t now_ns, spi_notice *out,
                             size_t cap, size_t *n_out, char *errbuf,
                             size_t errcap) {
  return notice_parse(format, http_status, body, len, node, node_len, now_ns,
                      out, cap, n_out, NULL, errbuf, errcap);
}

SPI_API int spi_notice_parse_v2(int32_t format, int32_t http_status,
                                const char *body, size_t len, const char *node,
                                size_t node_len, int64_t now_ns,
                                spi_notice *out, size_t cap,
                                spi_parse_report *report, char *errbuf,
                                size_t errcap) {
  if (errbuf && errcap) errbuf[0] = '\0';
  if (!report || report->struct_size < sizeof(spi_parse_report)) {
    spi__errf(errbuf, errcap,
              "notice: report is NULL or its struct_size is "
              "below sizeof(spi_parse_report)");
    return SPI_EINVAL;
  }
  size_t size = report->struct_size;
  memset(report, 0, sizeof *report);
  report->struct_size = size;
  size_t n = 0;
  int rc = notice_parse(format, http_status, body, len, node, node_len, now_ns,
                        out, cap, &n, report, errbuf, errcap);
  report->found = n;
  return rc;
}
