/*
 * notice_check.h - the invariants every notice-parser fuzz target checks.
 * Included by fuzz_notice_*.c, each of which hands run() its format.
 *
 * Beyond "no crash, no read past the input" (the input buffer is exactly
 * size bytes and is never NUL-terminated), it checks, and aborts when one
 * fails:
 *   - the status is one the parser documents for a valid call;
 *   - entries skipped as unknown are counted with the first named, and a
 *     success has a message exactly when something was skipped;
 *   - a failure has a message that starts with the format's label, reports
 *     no notices and leaves out[] untouched;
 *   - every notice has struct_size and format set, a kind in 1..6, active
 *     0 or 1, the poll time as received_ns, NUL-terminated node, event id
 *     and dedup key (zero bytes after the NUL), a non-empty node without
 *     control characters, a dedup key with the format's prefix;
 *   - an interruption (terminate, stop, hibernate, preempt) that is active
 *     has a deadline; rebalance advice and a withdrawn event have none;
 *   - parsing is deterministic; a smaller cap gives SPI_EBUFSIZE with the
 *     same count and the same leading notices; cap 0 asks for the count;
 *   - a 404 is no notice whatever the body.
 */
#ifndef SPI_NOTICE_CHECK_H
#define SPI_NOTICE_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"


#define CAP 64
#define NOW INT64_C(1795327300000000000)

static void check(int cond) {
  if (!cond) abort();
}

/* The byte checks below compare whole ranges with memcmp rather than
 * looping over bytes: every comparison in this file is instrumented for
 * coverage, and a byte loop over the 64 untouched notices cost most of each
 * input's time (a target ran 8k inputs a second, 85k without them). */
static const char zeros[256];
static unsigned char pristine[CAP * sizeof(spi_notice)]; /* all 0x5a */

/* A char array holds a NUL-terminated string followed only by zeros. */
static size_t check_cstr(const char *s, size_t cap) {
  const char *nul = memchr(s, '\0', cap);
  check(nul != NULL && cap <= sizeof zeros);
  size_t len = (size_t)(nul - s);
  check(memcmp(nul, zeros, cap - len) == 0);
  return len;
}

static void check_notice(const spi_notice *nt, int32_t format,
                         const char *key_prefix) {
  check(nt->struct_size == sizeof *nt);
  check(nt->format == format);
  check(nt->kind >= SPI_NOTICE_TERMINATE && nt->kind <= SPI_NOTICE_PREEMPT);
  check(strcmp(spi_notice_kind_name(nt->kind), "invalid") != 0);
  check(nt->active == 0 || nt->active == 1);
  check(nt->received_ns == NOW);
  check(nt->reserved0 == 0);
  size_t node_len = check_cstr(nt->node, sizeof nt->node);
  check(node_len > 0);
  for (size_t i = 0; i < node_len; i++)
    check((unsigned char)nt->node[i] >= 0x20 && nt->node[i] != 0x7f);
  check_cstr(nt->event_id, sizeof nt->event_id);
  check_cstr(nt->dedup_key, sizeof nt->dedup_key);
  check(strncmp(nt->dedup_key, key_prefix, strlen(key_prefix)) == 0);
  check(nt->deadline_ns >= 0);
  int interruption =
      nt->kind == SPI_NOTICE_TERMINATE || nt->kind == SPI_NOTICE_STOP ||
      nt->kind == SPI_NOTICE_HIBERNATE || nt->kind == SPI_NOTICE_PREEMPT;
  if (interruption && nt->active) check(nt->deadline_ns > 0);
  if (nt->kind == SPI_NOTICE_REBALANCE || !nt->active)
    check(nt->deadline_ns == 0);
}

static void run(int32_t format, const char *label, const char *key_prefix,
                const char *body, size_t len) {
  static const char node[] = "i-0fuzz";
  spi_notice *out = malloc(CAP * sizeof *out);
  spi_notice *again = malloc(CAP * sizeof *again);
  check(out && again);
  if (pristine[0] != 0x5a) memset(pristine, 0x5a, sizeof pristine);
  memset(out, 0x5a, CAP * sizeof *out);
  char err[256];
  err[0] = '\0';
  spi_parse_report rep;
  memset(&rep, 0x5a, sizeof rep);
  rep.struct_size = sizeof rep;
  int rc = spi_notice_parse_v2(format, 200, body, len, node, sizeof node - 1,
                               NOW, out, CAP, &rep, err, sizeof err);
  size_t n = rep.found;
  /* Skipped entries are counted, the first named, and never an error. */
  check(rep.struct_size == sizeof rep);
  check((rep.skipped == 0) == (rep.first_skipped == 0));
  if (rc != SPI_OK && rc != SPI_EBUFSIZE) check(rep.found == 0);
  check(rc == SPI_OK || rc == SPI_EPARSE || rc == SPI_ETYPE ||
        rc == SPI_EUNKNOWN || rc == SPI_EMISSING || rc == SPI_ETOOBIG ||
        rc == SPI_EBUFSIZE);
  if (rc != SPI_OK && rc != SPI_EBUFSIZE) {
    size_t ll = strlen(label);
    check(strncmp(err, label, ll) == 0 && err[ll] == ':' && err[ll + 2]);
    check(n == 0);
    check(memcmp(out, pristine, CAP * sizeof *out) == 0);
  } else {
    check(rc == SPI_OK ? n <= CAP : n > CAP);
    if (rc == SPI_OK && rep.skipped)
      check(strncmp(err, label, strlen(label)) == 0 && strstr(err, "skipped"));
    else if (rc == SPI_OK)
      check(err[0] == '\0');
    size_t shown = n < CAP ? n : CAP;
    for (size_t i = 0; i < shown; i++)
      check_notice(&out[i], format, key_prefix);
    if (shown < CAP) check(((const unsigned char *)&out[shown])[0] == 0x5a);

    /* The same input, the same answer, byte for byte. */
    size_t n2 = 0;
    memset(again, 0x5a, CAP * sizeof *again);
    int rc2 = spi_notice_parse(format, 200, body, len, node, sizeof node - 1,
                               NOW, again, CAP, &n2, NULL, 0);
    check(rc2 == rc && n2 == n);
    check(memcmp(out, again, shown * sizeof *out) == 0);

    /* Cap 0 asks for the count; one slot gets the first notice. */
    size_t n3 = 0;
    int rc3 = spi_notice_parse(format, 0, body, len, node, sizeof node - 1, NOW,
                               NULL, 0, &n3, err, sizeof err);
    check(n3 == n && rc3 == (n ? SPI_EBUFSIZE : SPI_OK));
    if (n > 1) {
      n3 = 0;
      rc3 = spi_notice_parse(format, 200, body, len, node, sizeof node - 1, NOW,
                             again, 1, &n3, err, sizeof err);
      check(rc3 == SPI_EBUFSIZE && n3 == n);
      check(memcmp(&again[0], &out[0], sizeof *out) == 0);
    }
  }

  /* A 404 is never read. */
  n = 1;
  rc = spi_notice_parse(format, 404, body, len, node, sizeof node - 1, NOW, out,
                        CAP, &n, err, sizeof err);
  check(rc == SPI_OK && n == 0);
  free(out);
  free(again);
}

#endif /* SPI_NOTICE_CHECK_H */
