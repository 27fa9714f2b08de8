/*
 * notice.h - what the cloud notice parsers share: the parse context every
 * backend writes through, the JSON-path helpers, the time formats, and the
 * per-cloud entry points.
 *
 * The layout follows curl's vtls: notice.c is the dispatch (the public
 * calls, argument checks, body parsing) and the only caller of the
 * per-cloud backends in notice_aws.c, notice_gcp.c and notice_azure.c;
 * those call down into notice_json.c (fields by path), notice_time.c (the
 * three time formats) and notice_ctx.c (messages, notices, skipped
 * entries), never back up.
 */
#ifndef SPI_NOTICE_H
#define SPI_NOTICE_H

#include <cjson/cJSON.h>

#include "spi_internal.h"

#define NS_PER_S INT64_C(1000000000)
/* Seconds after the poll that a GCP preemption or host termination is
 * assumed to leave (see notice_gcp.c). */
#define GCP_WINDOW_NS (30 * NS_PER_S)
/* An EventBridge Spot Interruption Warning is sent two minutes ahead. */
#define AWS_WARNING_NS (120 * NS_PER_S)

static inline int spi__notice_is_digit(char ch) {
  return ch >= '0' && ch <= '9';
}

static inline int spi__notice_is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* ---------------------------------------------------- the parse context */

#define QUOTE_CAP 56
#define PATH_CAP 96

typedef struct nctx {
  int32_t format;
  const char *label;     /* prefixes every message */
  char node[SPI_ID_MAX]; /* the caller's, NUL-terminated */
  size_t node_len;
  int64_t now_ns;
  spi_notice *out; /* NULL while validating and counting */
  size_t cap;
  size_t n; /* notices found so far */
  /* Entries of a type or state this version does not know: skipped, not
   * fatal, since clouds add event types without notice. Counted on the
   * first pass only; what the first one was goes into the message. */
  size_t skipped;
  size_t first_skipped; /* its 1-based entry index */
  char skip_note[PATH_CAP + QUOTE_CAP];
  char *err;
  size_t errcap;
} nctx;

typedef struct draft {
  int32_t kind;
  const char *node; /* NUL-terminated, < SPI_ID_MAX bytes */
  int64_t deadline_ns;
  int32_t active;
  const char *event_id; /* "" for none */
} draft;

/* ------------------------------------------------- notice_ctx.c: output */

/* Writes "<label>: <message>" to the caller's errbuf; returns rc. */
int spi__notice_fail(nctx *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A short printable rendering of untrusted text for a message. */
const char *spi__notice_quoted(char *buf, size_t cap, const char *s, size_t n);
/* Entry i (0-based) names a type or state this version does not know:
 * counted and skipped (see notice_ctx.c). Returns SPI_OK. */
int spi__notice_skip(nctx *c, size_t i, const char *path, const char *value);
/* Count a notice and, on the writing pass, store it while there is room. */
int spi__notice_emit(nctx *c, const draft *d, const char *key_fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* SPI_EINVAL unless the caller named the polled machine. */
int spi__notice_need_node(nctx *c);

/* ------------------------------------ notice_json.c: fields by their path */

void spi__notice_field_path(char *buf, const char *parent, const char *key);
const char *spi__notice_type_name(const cJSON *it);
int spi__notice_member(nctx *c, const cJSON *obj, const char *parent,
                       const char *key, const cJSON **out);
int spi__notice_get_string(nctx *c, const cJSON *obj, const char *parent,
                           const char *key, const char **out);
int spi__notice_get_typed(nctx *c, const cJSON *obj, const char *parent,
                          const char *key, int type, const cJSON **out);
int spi__notice_missing(nctx *c, const char *parent, const char *key);
int spi__notice_check_id(nctx *c, const char *path, const char *s);
int spi__notice_one_of(nctx *c, const char *path, const char *value,
                       const char *const *names, size_t n, size_t *index);
int spi__notice_known(const char *value, const char *const *names, size_t n,
                      size_t *index);

/* ------------------------------------------ notice_time.c: time formats */

/* Each returns NULL and sets *out (ns since the epoch), or says why not. */
typedef const char *(*time_parser)(const char *s, size_t n, int64_t *out);
const char *spi__notice_time_rfc3339(const char *s, size_t n, int64_t *out);
const char *spi__notice_time_rfc1123(const char *s, size_t n, int64_t *out);
const char *spi__notice_time_aws(const char *s, size_t n, int64_t *out);
const char *spi__notice_time_azure(const char *s, size_t n, int64_t *out);
/* A time at path, SPI_EPARSE with the reason (notice_json.c). */
int spi__notice_parse_time(nctx *c, const char *path, const char *s,
                           time_parser parse, int64_t *out);

/* ------------------- the backends: no code but notice.c calls these */

int spi__notice_aws_instance_action(nctx *c, const cJSON *root);
int spi__notice_aws_rebalance(nctx *c, const cJSON *root);
int spi__notice_aws_scheduled(nctx *c, const cJSON *root);
int spi__notice_aws_eventbridge(nctx *c, const cJSON *root);
int spi__notice_gcp_preempted(nctx *c, const char *body, size_t len);
int spi__notice_gcp_maintenance(nctx *c, const char *body, size_t len);
int spi__notice_azure_scheduled(nctx *c, const cJSON *root);

#endif /* SPI_NOTICE_H */
