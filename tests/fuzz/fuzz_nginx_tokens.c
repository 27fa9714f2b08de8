/*
 * fuzz_nginx_tokens.c - the nginx module's reader of answers
 * (bindings/nginx/ngx_http_spotinfer_tokens.c) on arbitrary bytes.
 *
 * Input: byte 0 bit 0 says whether the answer is an event stream, bytes 1
 * and 2 where it is cut in two buffers; the answer is the rest. Beyond "no
 * crash, no read past the input", it checks, and aborts when one fails:
 *   - the answer read in one buffer, cut in two, and byte by byte gives the
 *     same count and usage (nginx hands it over in buffers cut anywhere);
 *   - without a backend's count, a stream's estimate is at most one token
 *     per byte; a usage count stays below its bound, so nothing wraps;
 *   - the answer's end (which counts a last event without its line feed)
 *     gives the same count however the answer was cut;
 *   - a gap (a buffer spooled to a file; byte 0 bit 1 says whether it
 *     ended a line) at the cut leaves a reader that goes on without harm.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ngx_http_spotinfer_tokens.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "fuzz_nginx_tokens: check failed: %s (line %d)\n", #c,   \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const ngx_http_spi_tokens_t *a,
                 const ngx_http_spi_tokens_t *b) {
  CHECK(ngx_http_spi_tokens_output(a) == ngx_http_spi_tokens_output(b));
  CHECK(a->usage_found == b->usage_found);
  CHECK(memcmp(a->usage, b->usage, sizeof a->usage) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 3) return 0;
  int stream = data[0] & 1;
  const unsigned char *p = data + 3, *end = data + size;
  size_t len = size - 3;
  size_t cut = ((size_t)data[1] | (size_t)data[2] << 8) % (len + 1);

  ngx_http_spi_tokens_t whole, two, bytes, gap;
  ngx_http_spi_tokens_init(&whole, stream);
  ngx_http_spi_tokens_read(&whole, p, end);

  ngx_http_spi_tokens_init(&two, stream);
  ngx_http_spi_tokens_read(&two, p, p + cut);
  ngx_http_spi_tokens_read(&two, p + cut, end);
  same(&whole, &two);

  ngx_http_spi_tokens_init(&bytes, stream);
  for (size_t i = 0; i < len; i++)
    ngx_http_spi_tokens_read(&bytes, p + i, p + i + 1);
  same(&whole, &bytes);

  for (int k = 0; k < NGX_HTTP_SPI_USAGE_N; k++)
    CHECK(whole.usage[k] < UINT64_C(10000000000000));
  if (stream && !(whole.usage_found & (1u << NGX_HTTP_SPI_USAGE_COMPLETION)))
    CHECK(ngx_http_spi_tokens_output(&whole) <= len);

  ngx_http_spi_tokens_end(&whole);
  ngx_http_spi_tokens_end(&bytes);
  same(&whole, &bytes);
  if (stream && !(whole.usage_found & (1u << NGX_HTTP_SPI_USAGE_COMPLETION)))
    CHECK(ngx_http_spi_tokens_output(&whole) <= len);

  ngx_http_spi_tokens_init(&gap, stream);
  ngx_http_spi_tokens_read(&gap, p, p + cut);
  ngx_http_spi_tokens_gap(&gap, data[0] & 2);
  ngx_http_spi_tokens_read(&gap, p + cut, end);
  ngx_http_spi_tokens_end(&gap);
  if (!(gap.usage_found & (1u << NGX_HTTP_SPI_USAGE_COMPLETION)))
    CHECK(ngx_http_spi_tokens_output(&gap) <= len);
  return 0;
}
