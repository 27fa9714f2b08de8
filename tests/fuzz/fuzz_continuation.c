/*
 * fuzz_continuation.c - spi_replay_continuation() on arbitrary bodies and
 * partial output.
 *
 * Input: byte 0 picks the body kind (auto, chat, completions) and whether
 * the envelope is already flagged from scratch, byte 1 is the stream offset,
 * then the body up to the first NUL byte and the partial text after it;
 * partial token ids are taken from the text's bytes when its length is odd.
 * The call must not crash; on success the output must be a JSON object, the
 * size query must agree with the write, and a buffer one byte short must
 * give SPI_EBUFSIZE.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "spi_internal.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "fuzz_continuation: check failed: %s (line %d)\n", #c,   \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2) return 0;
  const uint8_t *rest = data + 2;
  size_t n = size - 2;
  const uint8_t *nul = memchr(rest, 0, n);
  size_t body_len = nul ? (size_t)(nul - rest) : n;
  spi_envelope v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.key = "k";
  v.key_len = 1;
  v.body = (const char *)rest;
  v.body_len = body_len;
  v.openai_kind = data[0] % 3;
  v.flags = (data[0] & 0x80) ? SPI_ENVELOPE_FROM_SCRATCH : 0;
  v.klass = SPI_CLASS_SILVER;
  v.stream_offset = data[1];
  uint32_t toks[16];
  if (nul) {
    v.partial_text = (const char *)nul + 1;
    v.partial_text_len = n - body_len - 1;
    if (v.partial_text_len % 2) {
      size_t k = v.partial_text_len < 16 ? v.partial_text_len : 16;
      for (size_t i = 0; i < k; i++) toks[i] = (uint32_t)v.partial_text[i] * 977u;
      v.partial_tokens = toks;
      v.partial_token_count = k;
    }
  }
  size_t need = 0;
  uint32_t flags = 0;
  int rc = spi_replay_continuation(&v, NULL, 0, &need, &flags);
  CHECK(rc == SPI_EBUFSIZE || rc == SPI_EINVAL || rc == SPI_EPARSE ||
        rc == SPI_ERANGE || rc == SPI_ENOMEM);
  if (rc != SPI_EBUFSIZE) return 0;
  char *buf = malloc(need + 1);
  CHECK(buf != NULL);
  if (need > 0)
    CHECK(spi_replay_continuation(&v, buf, need, NULL, NULL) == SPI_EBUFSIZE);
  size_t need2 = 0;
  uint32_t flags2 = 0;
  CHECK(spi_replay_continuation(&v, buf, need + 1, &need2, &flags2) == SPI_OK);
  CHECK(need2 == need && flags2 == flags && strlen(buf) == need);
  CHECK((flags & ~SPI_ENVELOPE_FROM_SCRATCH) == 0);
  cJSON *out = cJSON_ParseWithLength(buf, need);
  CHECK(out != NULL && cJSON_IsObject(out));
  if (flags & SPI_ENVELOPE_FROM_SCRATCH)
    CHECK(need == v.body_len && memcmp(buf, v.body, need) == 0);
  cJSON_Delete(out);
  free(buf);
  return 0;
}
