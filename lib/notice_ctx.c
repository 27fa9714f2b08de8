/*
 * notice_ctx.c - what a parse writes: the message (prefixed with the
 * format's label), the notices (counted on the first pass, stored on the
 * second), and the entries skipped as unknown.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "notice.h"

int spi__notice_fail(nctx *c, int rc, const char *fmt, ...) {
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
const char *spi__notice_quoted(char *buf, size_t cap, const char *s, size_t n) {
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

/* Entry i (0-based) names a type or state this version does not know:
 * count it and remember the first, then carry on with the next entry. Only
 * the counting pass records, so a document is counted once. */
int spi__notice_skip(nctx *c, size_t i, const char *path, const char *value) {
  if (c->out) return SPI_OK;
  if (c->skipped++ == 0) {
    char q[QUOTE_CAP];
    c->first_skipped = i + 1;
    spi__errf(c->skip_note, sizeof c->skip_note, "%s %s", path,
              spi__notice_quoted(q, sizeof q, value, strlen(value)));
  }
  return SPI_OK;
}

/* Count a notice and, on the writing pass, store it while there is room. */
int spi__notice_emit(nctx *c, const draft *d, const char *key_fmt, ...) {
  spi_notice nt;
  memset(&nt, 0, sizeof nt);
  nt.struct_size = sizeof nt;
  nt.kind = d->kind;
  nt.format = c->format;
  size_t node_len = strlen(d->node), id_len = strlen(d->event_id);
  if (node_len == 0)
    return spi__notice_fail(
        c, SPI_EINVAL, "node: empty, and the body does not name the machine");
  if (node_len >= sizeof nt.node || id_len >= sizeof nt.event_id)
    return spi__notice_fail(c, SPI_ETOOBIG, "node or event id over %d bytes",
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
    return spi__notice_fail(c, SPI_ETOOBIG, "dedup key over %zu bytes",
                            sizeof nt.dedup_key - 1);
  if (c->out && c->n < c->cap) c->out[c->n] = nt;
  c->n++;
  return SPI_OK;
}

int spi__notice_need_node(nctx *c) {
  if (c->node_len > 0) return SPI_OK;
  return spi__notice_fail(
      c, SPI_EINVAL, "node: empty, and this format does not name the machine");
}
