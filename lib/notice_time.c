/*
 * notice_time.c - the three time formats cloud notices use, parsed strictly
 * without the C library's locale: RFC 3339 (AWS, Azure tools), RFC 1123
 * (Azure) and AWS's scheduled-event form "21 Jan 2019 09:00:43 GMT".
 *
 * Years 1970..2261 (so that ns since the epoch, plus a window, always fit
 * an int64_t). A leap second (hh:mm:60, only valid at 23:59:60 UTC on the
 * last day of a month) is read as the second before it, 23:59:59 plus the
 * same fraction: Unix time has no 60th second, and the earlier reading
 * never makes a deadline later than it is. Fractional seconds beyond 9
 * digits are truncated toward the earlier instant for the same reason.
 */
#include <string.h>

#include "notice.h"

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

/* Exactly n digits. */
static int take_digits(cursor *c, int n, int64_t *out) {
  if (c->end - c->p < n) return 0;
  int64_t v = 0;
  for (int i = 0; i < n; i++) {
    if (!spi__notice_is_digit(c->p[i])) return 0;
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
const char *spi__notice_time_rfc3339(const char *s, size_t n, int64_t *out) {
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
    while (c.p < c.end && spi__notice_is_digit(*c.p)) {
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
  if (c.p < c.end && spi__notice_is_digit(*c.p)) d = d * 10 + (*c.p++ - '0');
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

const char *spi__notice_time_rfc1123(const char *s, size_t n, int64_t *out) {
  return parse_day_month_year(s, n, 1, out);
}

const char *spi__notice_time_aws(const char *s, size_t n, int64_t *out) {
  return parse_day_month_year(s, n, 0, out);
}

/* Azure serves RFC 1123; some tools write RFC 3339. A date that starts with
 * a digit can only be the latter, one that starts with a weekday the
 * former. */
const char *spi__notice_time_azure(const char *s, size_t n, int64_t *out) {
  return n > 0 && spi__notice_is_digit(s[0])
             ? spi__notice_time_rfc3339(s, n, out)
             : spi__notice_time_rfc1123(s, n, out);
}
