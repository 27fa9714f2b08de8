/*
 * notice.c - cloud interruption notices read into spi_notice: AWS IMDS
 * (spot/instance-action, events/recommendations/rebalance,
 * events/maintenance/scheduled) and EventBridge envelopes, GCP metadata
 * (instance/preempted, instance/maintenance-event) and Azure Scheduled
 * Events, with strict parsers for the three time formats they use.
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
 *  - An empty (or all-whitespace) body is "no notice" for the three AWS IMDS
 *    paths, whose clients commonly turn the 404 into an empty string. GCP,
 *    Azure and EventBridge always serve a value, so there it is SPI_EPARSE.
 *  - GCP gives no deadline. A preemption leaves about 30 s; for
 *    TERMINATE_ON_HOST_MAINTENANCE GCP documents 60 s, and the deadline is
 *    set 30 s after the poll so that a poll up to 30 s late still drains in
 *    time.
 *  - Azure: one notice per entry of Resources (each names a machine the
 *    event affects, not always the one polled); the caller's node when
 *    Resources is absent or empty.
 *  - AWS scheduled events: completed and canceled events give notices with
 *    active 0 whose dedup key carries the state, so that handing in the
 *    withdrawal is not mistaken for a repeat of the notice it withdraws.
 *  - Times: years 1970..2261 (so that ns since the epoch, plus a window,
 *    always fit an int64_t). A leap second (hh:mm:60, only valid at
 *    23:59:60 UTC on the last day of a month) is read as the second before
 *    it, 23:59:59 plus the same fraction: Unix time has no 60th second, and
 *    the earlier reading never makes a deadline later than it is.
 *    Fractional seconds beyond 9 digits are truncated toward the earlier
 *    instant for the same reason.
 *
 * Pure: the only allocation is cJSON's parse tree, freed before returning.
 * Every document is walked twice, first to validate and count with nothing
 * written, then to write, so a failed call leaves out[] untouched.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "spi_internal.h"

/* A Scheduled Events document with many events is a few KiB; this bounds
 * the work done on a runaway or hostile response. */
#define SPI__NOTICE_MAX_BODY ((size_t)1 << 20)

#define NS_PER_S INT64_C(1000000000)
/* Seconds after the poll that a GCP preemption or host termination is
 * assumed to leave (see above). */
#define GCP_WINDOW_NS (30 * NS_PER_S)
/* An EventBridge Spot Interruption Warning is sent two minutes ahead. */
#define AWS_WARNING_NS (120 * NS_PER_S)
/* Times outside [1970, 2262) are rejected; 2262-04-11 is where int64 ns
 * since the epoch run out. */
#define YEAR_MIN 1970
#define YEAR_MAX 2261

/* ------------------------------------------------------------ civil time */

static int is_leap(int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int64_t y, int m) {
  static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil; valid for every year an int64_t can hold here). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  y -= m <= 2;
  int64_t era = (y >= 0 ? y : y - 399) / 400;
  int64_t yoe = y - era * 400;
  int64_t mp = m > 2 ? m - 3 : m + 9;
  int64_t doy = (153 * mp + 2) / 5 + d - 1;
  int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/* The inverse, for the leap-second check. */
static void civil_from_days(int64_t z, int64_t *y, int *m, int *d) {
  z += 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  *d = (int)(doy - (153 * mp + 2) / 5 + 1);
  *m = (int)(mp < 10 ? mp + 3 : mp - 9);
  *y = yoe + era * 400 + (*m <= 2);
}

/* 0 = Sunday. */
static int weekday_of(int64_t days) {
  int64_t w = (days + 4) % 7; /* 1970-01-01 was a Thursday */
  return (int)(w < 0 ? w + 7 : w);
}

typedef struct civil {
  int64_t year;
  int month, day, hour, minute, second;
  int64_t frac_ns;
  int32_t offset_s; /* local time minus UTC */
} civil;

/* ns since the epoch, or a reason why not. */
static const char *civil_to_ns(const civil *t, int64_t *out) {
  if (t->month < 1 || t->month > 12) return "month out of range";
  if (t->day < 1 || t->day > days_in_month(t->year, t->month))
    return t->month == 2 && t->day == 29 ? "February 29 in a common year"
                                         : "day out of range for the month";
  if (t->hour > 23) return "hour out of range";
  if (t->minute > 59) return "minute out of range";
  if (t->second > 60) return "second out of range";
  if (t->year < YEAR_MIN || t->year > YEAR_MAX)
    return "year out of range (1970-2261)";
  int64_t secs = days_from_civil(t->year, t->month, t->day) * 86400 +
                 t->hour * 3600 + t->minute * 60 +
                 (t->second == 60 ? 59 : t->second) - t->offset_s;
  if (t->second == 60) {
    int64_t y;
    int m, d;
    int64_t day = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    civil_from_days(day, &y, &m, &d);
    if (secs - day * 86400 != 86399 || d != days_in_month(y, m))
      return "second 60 outside a leap second (23:59:60 UTC on the last "
             "day of a month)";
  }
  if (secs < 0 || (secs == 0 && t->frac_ns == 0))
    return "at or before the Unix epoch";
  *out = secs * NS_PER_S + t->frac_ns;
  return NULL;
}

typedef struct cursor {
  const char *p, *end;
} cursor;

static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* Exactly n digits. */
static int take_digits(cursor *c, int n, int64_t *out) {
  if (c->end - c->p < n) return 0;
  int64_t v = 0;
  for (int i = 0; i < n; i++) {
    if (!is_digit(c->p[i])) return 0;
    v = v * 10 + (c->p[i] - '0');
  }
  c->p += n;
  *out = v;
  return 1;
}

static int take_char(cursor *c, char ch) {
  if (c->p == c->end || *c->p != ch) return 0;
  c->p++;
  return 1;
}

static int take_word(cursor *c, const char *w) {
  size_t n = strlen(w);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, w, n) != 0) return 0;
  c->p += n;
  return 1;
}

/* hh:mm:ss, two digits each. */
static int take_clock(cursor *c, civil *t) {
  int64_t h, mi, s;
  if (!take_digits(c, 2, &h) || !take_char(c, ':') || !take_digits(c, 2, &mi) ||
      !take_char(c, ':') || !take_digits(c, 2, &s))
    return 0;
  t->hour = (int)h;
  t->minute = (int)mi;
  t->second = (int)s;
  return 1;
}

static const char RFC3339_SHAPE[] =
    "not an RFC 3339 time (YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm))";

/*
 * RFC 3339 date-time: YYYY-MM-DD, 'T', hh:mm:ss, an optional fraction of
 * one or more digits, then 'Z' or +hh:mm / -hh:mm ("-00:00" is UTC). 'T'
 * and 'Z' may be lower case (RFC 3339 section 5.6); nothing else is allowed,
 * before or after.
 */
static const char *parse_rfc3339(const char *s, size_t n, int64_t *out) {
  cursor c = {s, s + n};
  civil t = {0};
  int64_t mo, d;
  if (!take_digits(&c, 4, &t.year) || !take_char(&c, '-') ||
      !take_digits(&c, 2, &mo) || !take_char(&c, '-') ||
      !take_digits(&c, 2, &d) || !(take_char(&c, 'T') || take_char(&c, 't')) ||
      !take_clock(&c, &t))
    return RFC3339_SHAPE;
  t.month = (int)mo;
  t.day = (int)d;
  if (take_char(&c, '.')) {
    int digits = 0;
    int64_t scale = NS_PER_S / 10;
    while (c.p < c.end && is_digit(*c.p)) {
      if (digits < 9) t.frac_ns += (*c.p - '0') * scale;
      scale /= 10;
      digits++;
      c.p++;
    }
    if (digits == 0) return "no digits after the decimal point";
  }
  if (take_char(&c, 'Z') || take_char(&c, 'z')) {
    t.offset_s = 0;
  } else if (c.p < c.end && (*c.p == '+' || *c.p == '-')) {
    int sign = *c.p == '-' ? -1 : 1;
    c.p++;
    int64_t oh, om;
    if (!take_digits(&c, 2, &oh) || !take_char(&c, ':') ||
        !take_digits(&c, 2, &om))
      return RFC3339_SHAPE;
    if (oh > 23 || om > 59) return "UTC offset out of range";
    t.offset_s = (int32_t)(sign * (oh * 3600 + om * 60));
  } else {
    return c.p == c.end ? "no UTC offset (Z or +hh:mm)" : RFC3339_SHAPE;
  }
  if (c.p != c.end) return "trailing characters after the time";
  return civil_to_ns(&t, out);
}

static const char *const WEEKDAYS[7] = {"Sun", "Mon", "Tue", "Wed",
                                        "Thu", "Fri", "Sat"};
static const char *const MONTHS[12] = {"Jan", "Feb", "Mar", "Apr",
                                       "May", "Jun", "Jul", "Aug",
                                       "Sep", "Oct", "Nov", "Dec"};

static const char HTTP_SHAPE[] =
    "not an RFC 1123 time (Sun, 06 Nov 1994 08:49:37 GMT)";
static const char AWS_SHAPE[] =
    "not an AWS event time (21 Jan 2019 09:00:43 GMT)";

/*
 * "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 1123, weekday required and checked
 * against the date) or, with_weekday 0, the AWS scheduled-event form
 * "21 Jan 2019 09:00:43 GMT". Day of one or two digits, four-digit year,
 * names in the case shown, single spaces. Zone GMT, UT, UTC or +hhmm/-hhmm
 * (RFC 1123 section 5.2.14).
 */
static const char *parse_day_month_year(const char *s, size_t n,
                                        int with_weekday, int64_t *out) {
  const char *shape = with_weekday ? HTTP_SHAPE : AWS_SHAPE;
  cursor c = {s, s + n};
  civil t = {0};
  int wday = -1;
  if (with_weekday) {
    for (int i = 0; i < 7 && wday < 0; i++)
      if (take_word(&c, WEEKDAYS[i])) wday = i;
    if (wday < 0 || !take_char(&c, ',') || !take_char(&c, ' ')) return shape;
  }
  int64_t d;
  if (!take_digits(&c, 1, &d)) return shape;
  if (c.p < c.end && is_digit(*c.p)) d = d * 10 + (*c.p++ - '0');
  if (!take_char(&c, ' ')) return shape;
  t.month = 0;
  for (int i = 0; i < 12 && t.month == 0; i++)
    if (take_word(&c, MONTHS[i])) t.month = i + 1;
  if (t.month == 0) return "unknown month name";
  t.day = (int)d;
  if (!take_char(&c, ' ') || !take_digits(&c, 4, &t.year) ||
      !take_char(&c, ' ') || !take_clock(&c, &t) || !take_char(&c, ' '))
    return shape;
  if (c.p < c.end && (*c.p == '+' || *c.p == '-')) {
    int sign = *c.p == '-' ? -1 : 1;
    c.p++;
    int64_t oh, om;
    if (!take_digits(&c, 2, &oh) || !take_digits(&c, 2, &om)) return shape;
    if (oh > 23 || om > 59) return "UTC offset out of range";
    t.offset_s = (int32_t)(sign * (oh * 3600 + om * 60));
  } else if (!take_word(&c, "GMT") && !take_word(&c, "UTC") &&
             !take_word(&c, "UT")) {
    return "zone must be GMT, UT, UTC or +hhmm";
  }
  if (c.p != c.end) return "trailing characters after the time";
  const char *why = civil_to_ns(&t, out);
  if (why) return why;
  if (with_weekday &&
      weekday_of(days_from_civil(t.year, t.month, t.day)) != wday)
    return "weekday does not match the date";
  return NULL;
}

/* --------------------------------------------------------------- context */

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

static int fail(nctx *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(nctx *c, int rc, const char *fmt, ...) {
  char msg[SPI_ERRMSG_CAP];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  spi__errf(c->err, c->errcap, "%s: %s", c->label, msg);
  return rc;
}

/* A short printable rendering of untrusted text for a message: quotes,
 * backslashes and bytes outside printable ASCII escaped, long text cut. */
static const char *quoted(char *buf, size_t cap, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  buf[o++] = '"';
  size_t i = 0;
  for (; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (o + 8 >= cap) break; /* room for one escape, "...", quote, NUL */
    if (ch == '"' || ch == '\\') {
      buf[o++] = '\\';
      buf[o++] = (char)ch;
    } else if (ch >= 0x20 && ch < 0x7f) {
      buf[o++] = (char)ch;
    } else {
      buf[o++] = '\\';
      buf[o++] = 'x';
      buf[o++] = hex[ch >> 4];
      buf[o++] = hex[ch & 15];
    }
  }
  buf[o++] = '"';
  if (i < n) {
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o] = '\0';
  return buf;
}

static void field_path(char *buf, const char *parent, const char *key) {
  if (parent[0])
    spi__errf(buf, PATH_CAP, "%s.%s", parent, key);
  else
    spi__errf(buf, PATH_CAP, "%s", key);
}

static const char *type_name(const cJSON *it) {
  if (cJSON_IsString(it)) return "a string";
  if (cJSON_IsNumber(it)) return "a number";
  if (cJSON_IsBool(it)) return "a boolean";
  if (cJSON_IsNull(it)) return "null";
  if (cJSON_IsArray(it)) return "an array";
  if (cJSON_IsObject(it)) return "an object";
  return "invalid";
}

/* The member of obj named key (exact case), NULL when absent. */
static int member(nctx *c, const cJSON *obj, const char *parent,
                  const char *key, const cJSON **out) {
  *out = NULL;
  for (const cJSON *it = obj->child; it; it = it->next) {
    if (!it->string || strcmp(it->string, key) != 0) continue;
    if (*out) {
      char path[PATH_CAP];
      field_path(path, parent, key);
      return fail(c, SPI_EPARSE, "%s: duplicate key", path);
    }
    *out = it;
  }
  return SPI_OK;
}

/* A string member, NULL when absent; SPI_ETYPE for any other type. */
static int get_string(nctx *c, const cJSON *obj, const char *parent,
                      const char *key, const char **out) {
  const cJSON *it;
  *out = NULL;
  int rc = member(c, obj, parent, key, &it);
  if (rc != SPI_OK || !it) return rc;
  if (!cJSON_IsString(it) || !it->valuestring) {
    char path[PATH_CAP];
    field_path(path, parent, key);
    return fail(c, SPI_ETYPE, "%s: must be a string, not %s", path,
                type_name(it));
  }
  *out = it->valuestring;
  return SPI_OK;
}

/* A member of the given type (cJSON_Object / cJSON_Array), NULL when
 * absent. */
static int get_typed(nctx *c, const cJSON *obj, const char *parent,
                     const char *key, int type, const cJSON **out) {
  int rc = member(c, obj, parent, key, out);
  if (rc != SPI_OK || !*out) return rc;
  if ((type == cJSON_Object && !cJSON_IsObject(*out)) ||
      (type == cJSON_Array && !cJSON_IsArray(*out))) {
    char path[PATH_CAP];
    field_path(path, parent, key);
    return fail(c, SPI_ETYPE, "%s: must be %s, not %s", path,
                type == cJSON_Object ? "an object" : "an array",
                type_name(*out));
  }
  return SPI_OK;
}

static int missing(nctx *c, const char *parent, const char *key) {
  char path[PATH_CAP];
  field_path(path, parent, key);
  return fail(c, SPI_EMISSING, "%s: required", path);
}

/* An id from the body: 1..63 bytes, no control characters. */
static int check_id(nctx *c, const char *path, const char *s) {
  size_t len = strlen(s);
  char q[QUOTE_CAP];
  if (len == 0) return fail(c, SPI_EPARSE, "%s: empty", path);
  if (len >= SPI_ID_MAX)
    return fail(c, SPI_ETOOBIG, "%s: %zu bytes, over the %d allowed", path, len,
                SPI_ID_MAX - 1);
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return fail(c, SPI_EPARSE, "%s: control character in %s", path,
                  quoted(q, sizeof q, s, len));
  return SPI_OK;
}

/* value must be one of names[0..n); *index gets which. */
static int one_of(nctx *c, const char *path, const char *value,
                  const char *const *names, size_t n, size_t *index) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(value, names[i]) == 0) {
      *index = i;
      return SPI_OK;
    }
  char q[QUOTE_CAP], list[160];
  size_t o = 0;
  list[0] = '\0';
  for (size_t i = 0; i < n && o < sizeof list; i++)
    o += (size_t)snprintf(list + o, sizeof list - o, "%s%s",
                          i == 0       ? ""
                          : i == n - 1 ? " or "
                                       : ", ",
                          names[i]);
  return fail(c, SPI_EUNKNOWN, "%s: unknown value %s (expected %s)", path,
              quoted(q, sizeof q, value, strlen(value)), list);
}

/* Whether value is one of names[0..n); *index gets which. */
static int known(const char *value, const char *const *names, size_t n,
                 size_t *index) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(value, names[i]) == 0) {
      *index = i;
      return 1;
    }
  return 0;
}

/* Entry i (0-based) names a type or state this version does not know:
 * count it and remember the first, then carry on with the next entry. Only
 * the counting pass records, so a document is counted once. */
static int skip_entry(nctx *c, size_t i, const char *path, const char *value) {
  if (c->out) return SPI_OK;
  if (c->skipped++ == 0) {
    char q[QUOTE_CAP];
    c->first_skipped = i + 1;
    spi__errf(c->skip_note, sizeof c->skip_note, "%s %s", path,
              quoted(q, sizeof q, value, strlen(value)));
  }
  return SPI_OK;
}

typedef const char *(*time_parser)(const char *s, size_t n, int64_t *out);

static const char *parse_rfc1123(const char *s, size_t n, int64_t *out) {
  return parse_day_month_year(s, n, 1, out);
}

static const char *parse_aws_time(const char *s, size_t n, int64_t *out) {
  return parse_day_month_year(s, n, 0, out);
}

/* Azure serves RFC 1123; some tools write RFC 3339. A date that starts with
 * a digit can only be the latter, one that starts with a weekday the
 * former. */
static const char *parse_azure_time(const char *s, size_t n, int64_t *out) {
  return n > 0 && is_digit(s[0]) ? parse_rfc3339(s, n, out)
                                 : parse_rfc1123(s, n, out);
}

static int parse_time(nctx *c, const char *path, const char *s,
                      time_parser parse, int64_t *out) {
  size_t len = strlen(s);
  const char *why = parse(s, len, out);
  if (!why) return SPI_OK;
  char q[QUOTE_CAP];
  return fail(c, SPI_EPARSE, "%s: %s: %s", path, why,
              quoted(q, sizeof q, s, len));
}

/* --------------------------------------------------------------- output */

typedef struct draft {
  int32_t kind;
  const char *node; /* NUL-terminated, < SPI_ID_MAX bytes */
  int64_t deadline_ns;
  int32_t active;
  const char *event_id; /* "" for none */
} draft;

static int emit(nctx *c, const draft *d, const char *key_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Count a notice and, on the writing pass, store it while there is room. */
static int emit(nctx *c, const draft *d, const char *key_fmt, ...) {
  spi_notice nt;
  memset(&nt, 0, sizeof nt);
  nt.struct_size = sizeof nt;
  nt.kind = d->kind;
  nt.format = c->format;
  size_t node_len = strlen(d->node), id_len = strlen(d->event_id);
  if (node_len == 0)
    return fail(c, SPI_EINVAL,
                "node: empty, and the body does not name the machine");
  if (node_len >= sizeof nt.node || id_len >= sizeof nt.event_id)
    return fail(c, SPI_ETOOBIG, "node or event id over %d bytes",
                SPI_ID_MAX - 1);
  memcpy(nt.node, d->node, node_len);
  memcpy(nt.event_id, d->event_id, id_len);
  nt.deadline_ns = d->deadline_ns;
  nt.received_ns = c->now_ns;
  nt.active = d->active;
  va_list ap;
  va_start(ap, key_fmt);
  int k = vsnprintf(nt.dedup_key, sizeof nt.dedup_key, key_fmt, ap);
  va_end(ap);
  /* Cannot happen with ids under SPI_ID_MAX, but a cut key would merge
   * distinct events, so it is an error rather than a truncation. */
  if (k < 0 || (size_t)k >= sizeof nt.dedup_key)
    return fail(c, SPI_ETOOBIG, "dedup key over %zu bytes",
                sizeof nt.dedup_key - 1);
  if (c->out && c->n < c->cap) c->out[c->n] = nt;
  c->n++;
  return SPI_OK;
}

static int need_node(nctx *c) {
  if (c->node_len > 0) return SPI_OK;
  return fail(c, SPI_EINVAL,
              "node: empty, and this format does not name the machine");
}

/* ------------------------------------------------------------------ AWS */

static const char *const AWS_ACTIONS[] = {"terminate", "stop", "hibernate"};
static const int32_t AWS_ACTION_KINDS[] = {
    SPI_NOTICE_TERMINATE, SPI_NOTICE_STOP, SPI_NOTICE_HIBERNATE};

/* spot/instance-action: {"action": "terminate", "time": RFC 3339}. */
static int aws_instance_action(nctx *c, const cJSON *root) {
  const char *action, *time;
  int rc;
  if ((rc = get_string(c, root, "", "action", &action)) != SPI_OK ||
      (rc = get_string(c, root, "", "time", &time)) != SPI_OK)
    return rc;
  size_t a = 0;
  int64_t deadline = 0;
  if (action && (rc = one_of(c, "action", action, AWS_ACTIONS, 3, &a)) != 0)
    return rc;
  if (time && (rc = parse_time(c, "time", time, parse_rfc3339, &deadline)) != 0)
    return rc;
  if (!action) return missing(c, "", "action");
  if (!time) return missing(c, "", "time");
  if ((rc = need_node(c)) != SPI_OK) return rc;
  /* Not the time: some pollers move it on every poll. */
  draft d = {AWS_ACTION_KINDS[a], c->node, deadline, 1, ""};
  return emit(c, &d, "aws:action:%s:%s", c->node, AWS_ACTIONS[a]);
}

/* events/recommendations/rebalance: {"noticeTime": RFC 3339}. Advice: the
 * time is when it was given, not a deadline. */
static int aws_rebalance(nctx *c, const cJSON *root) {
  const char *when;
  int64_t at;
  int rc = get_string(c, root, "", "noticeTime", &when);
  if (rc != SPI_OK) return rc;
  if (!when) return missing(c, "", "noticeTime");
  if ((rc = parse_time(c, "noticeTime", when, parse_rfc3339, &at)) != 0)
    return rc;
  if ((rc = need_node(c)) != SPI_OK) return rc;
  draft d = {SPI_NOTICE_REBALANCE, c->node, 0, 1, ""};
  return emit(c, &d, "aws:rebalance:%s", c->node);
}

static const char *const AWS_STATES[] = {"active", "completed", "canceled"};
static const char *const AWS_CODES[] = {"instance-reboot", "system-reboot",
                                        "system-maintenance",
                                        "instance-retirement", "instance-stop"};
/* A retirement stops an EBS-backed instance and terminates the rest; for
 * the node either way the machine goes. */
static const int32_t AWS_CODE_KINDS[] = {
    SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE,
    SPI_NOTICE_TERMINATE, SPI_NOTICE_STOP};

static int aws_scheduled_event(nctx *c, const cJSON *ev, size_t i) {
  char at[PATH_CAP], path[PATH_CAP];
  spi__errf(at, sizeof at, "[%zu]", i);
  if (!cJSON_IsObject(ev))
    return fail(c, SPI_ETYPE, "%s: must be an object, not %s", at,
                type_name(ev));
  const char *code, *id, *state, *not_before;
  int rc;
  if ((rc = get_string(c, ev, at, "Code", &code)) != SPI_OK ||
      (rc = get_string(c, ev, at, "EventId", &id)) != SPI_OK ||
      (rc = get_string(c, ev, at, "State", &state)) != SPI_OK ||
      (rc = get_string(c, ev, at, "NotBefore", &not_before)) != SPI_OK)
    return rc;
  size_t k = 0, s = 0;
  int64_t deadline = 0;
  /* A code or state this version does not know is a newer kind of event,
   * not a broken document: skipped and counted, the others still read. */
  if (code && !known(code, AWS_CODES, 5, &k)) {
    field_path(path, at, "Code");
    return skip_entry(c, i, path, code);
  }
  if (state && !known(state, AWS_STATES, 3, &s)) {
    field_path(path, at, "State");
    return skip_entry(c, i, path, state);
  }
  if (not_before) {
    field_path(path, at, "NotBefore");
    if ((rc = parse_time(c, path, not_before, parse_aws_time, &deadline)) !=
        SPI_OK)
      return rc;
  }
  if (id) {
    field_path(path, at, "EventId");
    if ((rc = check_id(c, path, id)) != SPI_OK) return rc;
  }
  if (!code) return missing(c, at, "Code");
  if (!id) return missing(c, at, "EventId");
  if (!state) return missing(c, at, "State");
  if (!not_before) return missing(c, at, "NotBefore");
  if ((rc = need_node(c)) != SPI_OK) return rc;
  draft d = {AWS_CODE_KINDS[k], c->node, s == 0 ? deadline : 0, s == 0, id};
  if (s == 0) return emit(c, &d, "aws:scheduled:%s", id);
  return emit(c, &d, "aws:scheduled:%s:%s", id, AWS_STATES[s]);
}

/* events/maintenance/scheduled: a JSON array of events; [] = none. */
static int aws_scheduled(nctx *c, const cJSON *root) {
  size_t i = 0;
  for (const cJSON *ev = root->child; ev; ev = ev->next, i++) {
    int rc = aws_scheduled_event(c, ev, i);
    if (rc != SPI_OK) return rc;
  }
  return SPI_OK;
}

static const char *const EB_TYPES[] = {
    "EC2 Spot Instance Interruption Warning",
    "EC2 Instance Rebalance Recommendation",
    "EC2 Instance State-change Notification"};
static const char *const EC2_STATES[] = {
    "pending", "running", "shutting-down", "terminated", "stopping", "stopped"};
static const int32_t EC2_STATE_KINDS[] = {
    SPI_NOTICE_NONE,      SPI_NOTICE_NONE, SPI_NOTICE_TERMINATE,
    SPI_NOTICE_TERMINATE, SPI_NOTICE_STOP, SPI_NOTICE_STOP};

/* The EventBridge envelope of the three EC2 events above. detail-type
 * decides what else is read, so it is checked first. */
static int aws_eventbridge(nctx *c, const cJSON *root) {
  const char *type, *time, *id, *instance = NULL, *arg = NULL;
  const cJSON *detail;
  size_t t = 0, k = 0;
  int rc;
  if ((rc = get_string(c, root, "", "detail-type", &type)) != SPI_OK) return rc;
  if (!type) return missing(c, "", "detail-type");
  /* An EventBridge rule may well forward EC2 events this version does not
   * read: skipped and counted, not an error. */
  if (!known(type, EB_TYPES, 3, &t))
    return skip_entry(c, 0, "detail-type", type);
  /* What detail says happens: the action, or the new state. */
  const char *arg_key = t == 0 ? "instance-action" : "state";
  if ((rc = get_string(c, root, "", "time", &time)) != SPI_OK ||
      (rc = get_string(c, root, "", "id", &id)) != SPI_OK ||
      (rc = get_typed(c, root, "", "detail", cJSON_Object, &detail)) != 0)
    return rc;
  if (detail &&
      ((rc = get_string(c, detail, "detail", "instance-id", &instance)) != 0 ||
       (t != 1 && (rc = get_string(c, detail, "detail", arg_key, &arg)) != 0)))
    return rc;
  int64_t at = 0;
  if (time && (rc = parse_time(c, "time", time, parse_rfc3339, &at)) != 0)
    return rc;
  if (id && (rc = check_id(c, "id", id)) != SPI_OK) return rc;
  if (instance && (rc = check_id(c, "detail.instance-id", instance)) != 0)
    return rc;
  if (arg && t == 0 &&
      (rc = one_of(c, "detail.instance-action", arg, AWS_ACTIONS, 3, &k)) != 0)
    return rc;
  if (arg && t == 2 &&
      (rc = one_of(c, "detail.state", arg, EC2_STATES, 6, &k)) != 0)
    return rc;
  if (!time) return missing(c, "", "time");
  if (!detail) return missing(c, "", "detail");
  if (!instance) return missing(c, "detail", "instance-id");
  if (t != 1 && !arg) return missing(c, "detail", arg_key);

  draft d = {SPI_NOTICE_NONE, instance, 0, 1, id ? id : ""};
  if (t == 0) {
    d.kind = AWS_ACTION_KINDS[k];
    d.deadline_ns = at + AWS_WARNING_NS; /* at is before 2262: no overflow */
  } else if (t == 1) {
    d.kind = SPI_NOTICE_REBALANCE;
  } else {
    d.kind = EC2_STATE_KINDS[k];
    if (d.kind == SPI_NOTICE_NONE) return SPI_OK; /* pending, running */
    d.deadline_ns = at; /* the machine is going, or gone, now */
  }
  return emit(c, &d, "aws:eb:%s:%s", instance, spi_notice_kind_name(d.kind));
}

/* ------------------------------------------------------------------ GCP */

static int is_space(char ch) {
  return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* The body without surrounding whitespace. */
static void trim(const char **s, size_t *n) {
  while (*n > 0 && is_space(**s)) (*s)++, (*n)--;
  while (*n > 0 && is_space((*s)[*n - 1])) (*n)--;
}

static int text_is(const char *s, size_t n, const char *word) {
  return n == strlen(word) && memcmp(s, word, n) == 0;
}

/* instance/preempted: TRUE or FALSE. */
static int gcp_preempted(nctx *c, const char *body, size_t len) {
  trim(&body, &len);
  if (text_is(body, len, "FALSE")) return SPI_OK;
  if (!text_is(body, len, "TRUE")) {
    char q[QUOTE_CAP];
    if (len == 0)
      return fail(c, SPI_EPARSE, "empty body, expected TRUE or FALSE");
    return fail(c, SPI_EPARSE, "expected TRUE or FALSE, not %s",
                quoted(q, sizeof q, body, len));
  }
  int rc = need_node(c);
  if (rc != SPI_OK) return rc;
  draft d = {SPI_NOTICE_PREEMPT, c->node, c->now_ns + GCP_WINDOW_NS, 1, ""};
  return emit(c, &d, "gcp:preempted:%s", c->node);
}

/* instance/maintenance-event: NONE, MIGRATE_ON_HOST_MAINTENANCE (live
 * migration: advice, no deadline) or TERMINATE_ON_HOST_MAINTENANCE. */
static int gcp_maintenance(nctx *c, const char *body, size_t len) {
  static const char *const VALUES[] = {"NONE", "MIGRATE_ON_HOST_MAINTENANCE",
                                       "TERMINATE_ON_HOST_MAINTENANCE"};
  trim(&body, &len);
  char q[QUOTE_CAP];
  if (len == 0)
    return fail(c, SPI_EPARSE,
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
      if (!((body[i] >= 'A' && body[i] <= 'Z') || is_digit(body[i]) ||
            body[i] == '_'))
        word = 0;
    return fail(c, word ? SPI_EUNKNOWN : SPI_EPARSE,
                "%s %s (expected NONE, MIGRATE_ON_HOST_MAINTENANCE or "
                "TERMINATE_ON_HOST_MAINTENANCE)",
                word ? "unknown value" : "not a maintenance-event value:",
                quoted(q, sizeof q, body, len));
  }
  if (v == 0) return SPI_OK;
  int rc = need_node(c);
  if (rc != SPI_OK) return rc;
  draft d = {SPI_NOTICE_MAINTENANCE, c->node, 0, 1, ""};
  if (v == 2) {
    d.kind = SPI_NOTICE_TERMINATE;
    d.deadline_ns = c->now_ns + GCP_WINDOW_NS;
  }
  return emit(c, &d, "gcp:maintenance:%s:%s", c->node, VALUES[v]);
}

/* ---------------------------------------------------------------- Azure */

static const char *const AZ_TYPES[] = {"Reboot", "Redeploy", "Freeze",
                                       "Preempt", "Terminate"};
static const int32_t AZ_TYPE_KINDS[] = {
    SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE, SPI_NOTICE_MAINTENANCE,
    SPI_NOTICE_PREEMPT, SPI_NOTICE_TERMINATE};
/* Azure removes an event once it is over; there is no completed state. */
static const char *const AZ_STATUSES[] = {"Scheduled", "Started"};

static int azure_event(nctx *c, const cJSON *ev, size_t i) {
  char at[PATH_CAP], path[PATH_CAP];
  spi__errf(at, sizeof at, "Events[%zu]", i);
  if (!cJSON_IsObject(ev))
    return fail(c, SPI_ETYPE, "%s: must be an object, not %s", at,
                type_name(ev));
  const char *id, *type, *status, *not_before;
  const cJSON *resources;
  int rc;
  if ((rc = get_string(c, ev, at, "EventId", &id)) != SPI_OK ||
      (rc = get_string(c, ev, at, "EventType", &type)) != SPI_OK ||
      (rc = get_string(c, ev, at, "EventStatus", &status)) != SPI_OK ||
      (rc = get_string(c, ev, at, "NotBefore", &not_before)) != SPI_OK ||
      (rc = get_typed(c, ev, at, "Resources", cJSON_Array, &resources)) != 0)
    return rc;
  size_t j = 0;
  for (const cJSON *r = resources ? resources->child : NULL; r;
       r = r->next, j++) {
    if (!cJSON_IsString(r) || !r->valuestring)
      return fail(c, SPI_ETYPE, "%s.Resources[%zu]: must be a string, not %s",
                  at, j, type_name(r));
  }
  size_t k = 0, s = 0;
  int64_t deadline = 0;
  /* Azure adds event types (and may add states): such an event is skipped
   * and counted, and the document's other events are still read. */
  if (type && !known(type, AZ_TYPES, 5, &k)) {
    field_path(path, at, "EventType");
    return skip_entry(c, i, path, type);
  }
  if (status && !known(status, AZ_STATUSES, 2, &s)) {
    field_path(path, at, "EventStatus");
    return skip_entry(c, i, path, status);
  }
  if (not_before && not_before[0]) {
    field_path(path, at, "NotBefore");
    if ((rc = parse_time(c, path, not_before, parse_azure_time, &deadline)) !=
        SPI_OK)
      return rc;
  }
  if (id) {
    field_path(path, at, "EventId");
    if ((rc = check_id(c, path, id)) != SPI_OK) return rc;
  }
  j = 0;
  for (const cJSON *r = resources ? resources->child : NULL; r;
       r = r->next, j++) {
    spi__errf(path, sizeof path, "%s.Resources[%zu]", at, j);
    if ((rc = check_id(c, path, r->valuestring)) != SPI_OK) return rc;
  }
  if (!id) return missing(c, at, "EventId");
  if (!type) return missing(c, at, "EventType");
  if (!status) return missing(c, at, "EventStatus");
  if (!not_before || !not_before[0]) {
    /* Empty once started: it is happening now. Before that an empty time
     * would be a guessed deadline. */
    if (s != 1)
      return fail(c, SPI_EMISSING, "%s.NotBefore: %s for a Scheduled event", at,
                  not_before ? "empty" : "required");
    deadline = c->now_ns;
  }
  draft d = {AZ_TYPE_KINDS[k], c->node, deadline, 1, id};
  if (!resources || !resources->child) {
    if ((rc = need_node(c)) != SPI_OK) return rc;
    return emit(c, &d, "azure:%s:%s", id, c->node);
  }
  for (const cJSON *r = resources->child; r; r = r->next) {
    d.node = r->valuestring;
    if ((rc = emit(c, &d, "azure:%s:%s", id, r->valuestring)) != SPI_OK)
      return rc;
  }
  return SPI_OK;
}

/* {"DocumentIncarnation": n, "Events": [...]}. */
static int azure_scheduled(nctx *c, const cJSON *root) {
  const cJSON *inc, *events;
  int rc;
  if ((rc = member(c, root, "", "DocumentIncarnation", &inc)) != SPI_OK)
    return rc;
  /* 2^53: above it a double no longer holds every integer. */
  if (inc && (!cJSON_IsNumber(inc) || inc->valuedouble < 0 ||
              inc->valuedouble > 9007199254740992.0 ||
              inc->valuedouble != (double)(int64_t)inc->valuedouble))
    return fail(c, SPI_ETYPE,
                "DocumentIncarnation: must be a non-negative integer, not %s",
                cJSON_IsNumber(inc) ? "this number" : type_name(inc));
  if ((rc = get_typed(c, root, "", "Events", cJSON_Array, &events)) != 0)
    return rc;
  if (!inc) return missing(c, "", "DocumentIncarnation");
  if (!events) return missing(c, "", "Events");
  size_t i = 0;
  for (const cJSON *ev = events->child; ev; ev = ev->next, i++)
    if ((rc = azure_event(c, ev, i)) != SPI_OK) return rc;
  return SPI_OK;
}

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
    if (!is_space(s[i])) return 0;
  return 1;
}

/* Any JSON value with nothing but whitespace after it (the array form of
 * spi__json_parse_object). */
static int parse_json_array(nctx *c, const char *body, size_t len,
                            cJSON **out) {
  const char *end = NULL;
  *out = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
  if (!root) {
    size_t off =
        (end && end >= body && end <= body + len) ? (size_t)(end - body) : 0;
    return fail(c, SPI_EPARSE, "malformed JSON at byte offset %zu", off);
  }
  for (const char *p = end ? end : body + len; p < body + len; p++) {
    if (!is_space(*p)) {
      cJSON_Delete(root);
      return fail(c, SPI_EPARSE, "trailing data at byte offset %zu",
                  (size_t)(p - body));
    }
  }
  if (!cJSON_IsArray(root)) {
    int rc = fail(c, SPI_ETYPE, "top level must be a JSON array, not %s",
                  type_name(root));
    cJSON_Delete(root);
    return rc;
  }
  *out = root;
  return SPI_OK;
}

/* One pass over the parsed body. */
static int walk(nctx *c, const cJSON *root, const char *body, size_t len) {
  switch (c->format) {
  case SPI_NOTICE_AWS_INSTANCE_ACTION:
    return aws_instance_action(c, root);
  case SPI_NOTICE_AWS_REBALANCE:
    return aws_rebalance(c, root);
  case SPI_NOTICE_AWS_SCHEDULED:
    return aws_scheduled(c, root);
  case SPI_NOTICE_AWS_EVENTBRIDGE:
    return aws_eventbridge(c, root);
  case SPI_NOTICE_GCP_PREEMPTED:
    return gcp_preempted(c, body, len);
  case SPI_NOTICE_GCP_MAINTENANCE:
    return gcp_maintenance(c, body, len);
  default:
    return azure_scheduled(c, root);
  }
}

static int check_args(nctx *c, int32_t http_status, const char *body,
                      size_t len, const char *node, size_t node_len,
                      const spi_notice *out, size_t cap, const size_t *n_out) {
  if (!n_out) return fail(c, SPI_EINVAL, "n_out is NULL");
  if (!out && cap) return fail(c, SPI_EINVAL, "out is NULL with cap %zu", cap);
  if (!body && len)
    return fail(c, SPI_EINVAL, "body is NULL with length %zu", len);
  if (!node && node_len)
    return fail(c, SPI_EINVAL, "node is NULL with length %zu", node_len);
  if (node_len >= SPI_ID_MAX)
    return fail(c, SPI_EINVAL, "node: %zu bytes, over the %d allowed", node_len,
                SPI_ID_MAX - 1);
  for (size_t i = 0; i < node_len; i++)
    if ((unsigned char)node[i] < 0x20 || node[i] == 0x7f)
      return fail(c, SPI_EINVAL, "node: control character at byte %zu", i);
  /* The largest window added to now_ns must not overflow. */
  if (c->now_ns < 0 || c->now_ns > INT64_MAX - GCP_WINDOW_NS)
    return fail(c, SPI_EINVAL, "now_ns %lld out of range",
                (long long)c->now_ns);
  if (http_status != 0 && http_status != 404 &&
      (http_status < 200 || http_status > 299))
    return fail(c, SPI_EINVAL,
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
      return fail(c, SPI_EPARSE, "empty body, expected a JSON %s",
                  format == SPI_NOTICE_AWS_SCHEDULED ? "array" : "object");
    }
    if (format == SPI_NOTICE_AWS_SCHEDULED)
      rc = parse_json_array(c, body, len, &root);
    else
      rc = spi__json_parse_object(body, len, SPI__NOTICE_MAX_BODY, c->label,
                                  &root, c->err, c->errcap);
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
    return fail(&c, SPI_EINVAL, "format %d is not an enum spi_notice_format",
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
    return fail(&c, SPI_ETOOBIG, "body of %zu bytes, over the %zu allowed", len,
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
    return fail(&c, SPI_EBUFSIZE, "%zu notices, room for %zu", found, cap);
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
    spi__errf(errbuf, errcap, "notice: report is NULL or its struct_size is "
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
