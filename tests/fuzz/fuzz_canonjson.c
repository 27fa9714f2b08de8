/*
 * fuzz_canonjson.c - canonical JSON of arbitrary input.
 *
 * Parses the input as JSON (cJSON_ParseWithLengthOpts, no NUL needed) and
 * canonicalises it. Beyond "no crash, no leak", it checks the properties the
 * cache key relies on, and aborts when one fails:
 *   - the status is one spi__canon_json documents, and an error leaves the
 *     output buffer as it was;
 *   - canonical text is valid JSON and a fixed point: canonicalising it
 *     again gives the same bytes;
 *   - it contains no whitespace outside strings and no raw byte < 0x20;
 *   - the same input through a failing allocator gives SPI_ENOMEM or the
 *     same result, never anything else.
 */
#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spi_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fuzz_alloc {
  long calls;
  long fail_at; /* -1: never */
  long live;
} fuzz_alloc;

static void *fz_alloc(void *ud, size_t n) {
  fuzz_alloc *a = ud;
  if (a->calls++ == a->fail_at) return NULL;
  void *p = malloc(n);
  if (p) a->live++;
  return p;
}

static void fz_free(void *ud, void *p) {
  fuzz_alloc *a = ud;
  if (p) a->live--;
  free(p);
}

static void check(int cond) {
  if (!cond) abort();
}

/* Canonical text: outside strings, no whitespace and no control byte;
 * inside strings, no raw byte < 0x20. */
static void check_shape(const uint8_t *p, size_t n) {
  int in_str = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t c = p[i];
    check(c >= 0x20);
    if (in_str) {
      if (c == '\\')
        i++;
      else if (c == '"')
        in_str = 0;
    } else {
      check(c != ' ');
      if (c == '"') in_str = 1;
    }
  }
  check(!in_str);
}

static int canon_text(const char *text, size_t len, spi_buf *out,
                      const spi_mem *m) {
  cJSON *v = cJSON_ParseWithLengthOpts(text, len, NULL, 0);
  if (!v) return SPI_EPARSE - 1000; /* not JSON: distinct from canon errors */
  int rc = spi__canon_json(v, out, m);
  cJSON_Delete(v);
  return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > (1u << 20)) return 0;
  fuzz_alloc a = {0, -1, 0};
  spi_mem m = {fz_alloc, fz_free, &a};

  spi_buf out = {0};
  int rc = canon_text((const char *)data, size, &out, &m);
  if (rc == SPI_EPARSE - 1000) {
    check(a.live == 0);
    return 0;
  }
  check(rc == SPI_OK || rc == SPI_EPARSE || rc == SPI_ETOOBIG);
  if (rc != SPI_OK) {
    check(out.len == 0);
  } else {
    check_shape(out.data, out.len);
    /* Fixed point. */
    spi_buf again = {0};
    int rc2 = canon_text((const char *)out.data, out.len, &again, &m);
    check(rc2 == SPI_OK);
    check(again.len == out.len && memcmp(again.data, out.data, out.len) == 0);
    spi__buf_free(&again, &m);
  }

  /* A failing allocation somewhere in the same work. */
  long total = a.calls;
  if (total > 0) {
    fuzz_alloc f = {0, (long)(size % (size_t)total), 0};
    spi_mem fm = {fz_alloc, fz_free, &f};
    spi_buf o2 = {0};
    uint8_t pre = 'x';
    check(spi__buf_append(&o2, &fm, &pre, 1) == SPI_OK || f.fail_at == 0);
    size_t start = o2.len;
    int rc3 = canon_text((const char *)data, size, &o2, &fm);
    if (rc3 == SPI_OK) {
      check(rc == SPI_OK && o2.len - start == out.len &&
            memcmp(o2.data + start, out.data, out.len) == 0);
    } else {
      check(rc3 == SPI_ENOMEM || rc3 == rc);
      check(o2.len == start);
    }
    spi__buf_free(&o2, &fm);
    check(f.live == 0);
  }

  spi__buf_free(&out, &m);
  check(a.live == 0);
  return 0;
}
