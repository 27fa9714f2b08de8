/*
 * fuzz_request.c - OpenAI request bodies through spi_request_parse_openai(),
 * and every accepted request through classify, cache key, block hashes,
 * canonical prompt and price.
 *
 * Each input runs on two engines: one with the default configuration and
 * one with tight limits, so the SPI_ETOOBIG paths are reached by small
 * inputs too. The engines live for the whole run; every input gets fresh
 * requests, so a crash reproduces from its input alone, then the same body
 * is parsed once more into a request that held the previous input, which is
 * the reuse a gateway makes. Besides crashes and sanitizer reports, the target aborts when
 * a contract is broken: a failed parse must leave the request empty and
 * explain itself; an accepted one must classify, key and price cleanly and
 * give the same answers twice.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) \
  do {              \
    if (!(cond)) abort(); \
  } while (0)

static const char TIGHT_CONFIG[] =
    "{\"limits\":{\"max_body_bytes\":4096,\"max_field_bytes\":64,"
    "\"max_messages\":3,\"max_tools_bytes\":128,\"max_metadata_pairs\":2,"
    "\"max_token_ids\":8},\"cache_key\":{\"block_bytes\":16,"
    "\"block_tokens\":2},\"classifier\":{\"cascade\":{\"enabled\":true}}}";

typedef struct target {
  spi_engine *engine;
  spi_request *req; /* reused across inputs */
} target;

static target targets[2];

static void teardown(void) {
  for (int i = 0; i < 2; i++) {
    spi_request_free(targets[i].req);
    spi_engine_free(targets[i].engine);
    targets[i].req = NULL;
    targets[i].engine = NULL;
  }
}

static void setup(void) {
  for (int i = 0; i < 2; i++) {
    CHECK(spi_engine_new(&targets[i].engine, NULL) == SPI_OK);
    CHECK(spi_request_new(targets[i].engine, &targets[i].req) == SPI_OK);
  }
  CHECK(spi_engine_configure(targets[1].engine, TIGHT_CONFIG,
                             sizeof TIGHT_CONFIG - 1) == SPI_OK);
  atexit(teardown);
}

static void check_empty(spi_request *r) {
  CHECK(spi_request_message_count(r) == 0);
  for (int32_t f = SPI_REQ_MODEL; f <= SPI_REQ_REQUEST_ID; f++) {
    const char *p = NULL;
    size_t n = 1;
    CHECK(spi_request_get_str(r, f, &p, &n) == SPI_OK);
    CHECK(n == 0 && p && p[0] == '\0');
  }
  for (int32_t f = SPI_REQ_PRIORITY; f <= SPI_REQ_MODEL_TIER; f++) {
    int64_t v = 1;
    int32_t set = 1;
    CHECK(spi_request_get_int(r, f, &v, &set) == SPI_OK);
    CHECK(set == 0 && v == 0);
  }
}

static void classify_all(spi_request *r) {
  for (int32_t p = SPI_PRESSURE_NORMAL; p <= SPI_PRESSURE_CRITICAL; p++) {
    spi_classification c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    CHECK(spi_classify(r, p, &c) == SPI_OK);
    CHECK(c.klass >= SPI_CLASS_GOLD && c.klass <= SPI_CLASS_BRONZE);
    CHECK(c.replayable == 0 || c.replayable == 1);
    CHECK(c.model_tier == SPI_TIER_SMALL || c.model_tier == SPI_TIER_LARGE);
    CHECK(c.pressure == p);
    CHECK(memchr(c.reason, '\0', sizeof c.reason) != NULL);
  }
}

static void run(spi_request *r, const uint8_t *data, size_t size) {
  int rc = spi_request_parse_openai(r, (const char *)data, size,
                                    SPI_OPENAI_AUTO);
  if (rc != SPI_OK) {
    CHECK(rc < 0);
    CHECK(spi_request_errmsg(r)[0] != '\0');
    check_empty(r);
    return;
  }
  CHECK(spi_request_errmsg(r)[0] == '\0');
  classify_all(r);

  spi_cache_key k1, k2;
  CHECK(spi_request_cache_key(r, &k1) == SPI_OK);
  char hex[33];
  CHECK(spi_cache_key_hex(&k1, hex, sizeof hex) == SPI_OK);

  /* Ask for the count, then fetch a capped prefix of the blocks. */
  size_t nblocks = 0;
  rc = spi_request_block_hashes(r, NULL, 0, &nblocks);
  CHECK(rc == SPI_OK || (rc == SPI_EBUFSIZE && nblocks > 0));
  uint64_t hashes[64];
  size_t got = 0;
  rc = spi_request_block_hashes(r, hashes, 64, &got);
  CHECK(got == nblocks);
  CHECK(rc == (nblocks > 64 ? SPI_EBUFSIZE : SPI_OK));

  const uint8_t *prompt = NULL;
  size_t plen = 0;
  CHECK(spi_request_canonical_prompt(r, &prompt, &plen) == SPI_OK);
  CHECK(prompt != NULL);

  for (int32_t pool = SPI_POOL_SPOT; pool <= SPI_POOL_ON_DEMAND; pool++) {
    spi_price pr;
    memset(&pr, 0, sizeof pr);
    pr.struct_size = sizeof pr;
    CHECK(spi_request_price(r, pool, &pr) == SPI_OK);
    CHECK(pr.usd >= 0 && pr.gpu_seconds >= 0);
  }

  /* Derived values are cached; asking again must give the same key. */
  CHECK(spi_request_cache_key(r, &k2) == SPI_OK);
  CHECK(k1.high64 == k2.high64 && k1.low64 == k2.low64);

  /* Parsing the same body again gives the same request. */
  CHECK(spi_request_parse_openai(r, (const char *)data, size,
                                 SPI_OPENAI_AUTO) == SPI_OK);
  CHECK(spi_request_cache_key(r, &k2) == SPI_OK);
  CHECK(k1.high64 == k2.high64 && k1.low64 == k2.low64);
  const uint8_t *prompt2 = NULL;
  size_t plen2 = 0;
  CHECK(spi_request_canonical_prompt(r, &prompt2, &plen2) == SPI_OK);
  CHECK(plen2 == plen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!targets[0].engine) setup();
  for (int i = 0; i < 2; i++) {
    spi_request *fresh = NULL;
    CHECK(spi_request_new(targets[i].engine, &fresh) == SPI_OK);
    run(fresh, data, size);
    spi_request_free(fresh);
    run(targets[i].req, data, size);
  }
  return 0;
}
