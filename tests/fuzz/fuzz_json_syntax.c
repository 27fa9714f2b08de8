/*
 * fuzz_json_syntax.c - the allocation-free JSON check on arbitrary input.
 *
 * The check is what turns a NULL from cJSON into SPI_ENOMEM rather than
 * "malformed JSON", so it must never accept text that cJSON refuses. This
 * target asserts exactly that: whenever spi__json_well_formed() says yes,
 * cJSON (with working memory) parses the same bytes. It also checks that
 * the answer does not depend on anything past len.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "spi_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond) {
  if (!cond) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *text = (const char *)data;
  int ok = spi__json_well_formed(size ? text : NULL, size);
  if (ok) {
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, size, &end, 0);
    check(root != NULL);
    cJSON_Delete(root);
  }
  /* Bytes past len are never looked at: the same input with more after it
   * (here a quote and a backslash) answers the same. */
  char *more = malloc(size + 2);
  check(more != NULL);
  if (size) memcpy(more, data, size);
  more[size] = '"';
  more[size + 1] = '\\';
  check(spi__json_well_formed(more, size) == ok);
  free(more);
  return 0;
}
