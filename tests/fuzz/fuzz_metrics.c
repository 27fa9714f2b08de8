/*
 * fuzz_metrics.c - the /metrics text parser on arbitrary input.
 *
 * Beyond "no crash, no read past the input" (the input buffer is exactly
 * size bytes), it checks, and aborts when one fails:
 *   - the status is one the parser documents;
 *   - a parsed load is finite, counts are >= 0, usage is in 0..1, at_ns 0;
 *   - a parse or range error names its line ("line N: ..."), every error has
 *     a message, and the public function leaves *out untouched on failure;
 *   - the public and internal entry points agree, and parsing is
 *     deterministic;
 *   - lines skipped as newer syntax are counted with the first named, a
 *     success has a message exactly when something was skipped, and one
 *     reads at least one load sample.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "routing.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond) {
  if (!cond) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  char err[SPI_ERRMSG_CAP];
  err[0] = '\0';
  spi_load a;
  memset(&a, 0, sizeof a);
  a.struct_size = sizeof a;
  int rc = spi__metrics_parse(text, size, &a, err, sizeof err);
  check(rc == SPI_OK || rc == SPI_EPARSE || rc == SPI_EMISSING ||
        rc == SPI_ERANGE);
  if (rc == SPI_OK) {
    check(isfinite(a.running) && a.running >= 0);
    check(isfinite(a.waiting) && a.waiting >= 0);
    check(isfinite(a.kv_usage) && a.kv_usage >= 0 && a.kv_usage <= 1);
    check(a.at_ns == 0);
  } else {
    check(err[0] != '\0');
    if (rc != SPI_EMISSING) check(strncmp(err, "line ", 5) == 0);
  }

  spi_load b;
  memset(&b, 0x5a, sizeof b);
  b.struct_size = sizeof b;
  spi_load before = b;
  int rc2 = spi_metrics_parse(size ? text : NULL, size, &b);
  check(rc2 == rc);
  if (rc == SPI_OK) {
    check(memcmp(&a, &b, sizeof a) == 0);
  } else {
    check(memcmp(&before, &b, sizeof b) == 0);
  }

  spi_load c;
  memset(&c, 0, sizeof c);
  c.struct_size = sizeof c;
  spi_parse_report rep;
  memset(&rep, 0x5a, sizeof rep);
  rep.struct_size = sizeof rep;
  char err3[SPI_ERRMSG_CAP];
  int rc3 = spi_metrics_parse_v2(size ? text : NULL, size, &c, &rep, err3,
                                 sizeof err3);
  check(rc3 == rc);
  check((rep.skipped == 0) == (rep.first_skipped == 0));
  if (rc == SPI_OK) {
    check(memcmp(&a, &c, sizeof a) == 0);
    check(rep.found > 0);
    check(rep.skipped ? strstr(err3, "skipped") != NULL : err3[0] == '\0');
    check(strcmp(err, err3) == 0);
  } else {
    check(err3[0] != '\0');
  }
  return 0;
}
