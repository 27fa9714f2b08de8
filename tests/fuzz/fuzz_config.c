/*
 * fuzz_config.c - configuration text through spi_engine_configure(), and
 * every accepted configuration through spi_engine_config_json() and a
 * classify / key / price of a fixed request.
 *
 * Contracts checked beyond crashes: a refused configuration explains itself
 * and changes nothing (the dump stays byte for byte the default one); an
 * accepted one dumps to JSON that configures an engine to the very same
 * dump again. The engine is put back to "{}" after every input so runs do
 * not depend on each other.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_extras.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) \
  do {              \
    if (!(cond)) abort(); \
  } while (0)

static spi_engine *engine;
static spi_request *req;
static char *default_dump;
static size_t default_len;

static const char BODY[] =
    "{\"model\":\"m\",\"stream\":true,\"service_tier\":\"flex\","
    "\"priority\":2,\"messages\":[{\"role\":\"system\",\"content\":\"s\"},"
    "{\"role\":\"user\",\"content\":\"Analyze this and compare that? or? "
    "what? 0123456789012345678901234567890123456789\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
    "\"metadata\":{\"sla_ms\":\"2000\",\"tenant_tier\":\"free\"}}";

/* The engine's effective configuration in a fresh malloc'd buffer. */
static char *dump(spi_engine *e, size_t *len) {
  size_t need = 0;
  CHECK(spi_engine_config_json(e, NULL, 0, &need) == SPI_EBUFSIZE);
  char *buf = malloc(need + 1);
  CHECK(buf != NULL);
  size_t again = 0;
  CHECK(spi_engine_config_json(e, buf, need + 1, &again) == SPI_OK);
  CHECK(again == need && buf[need] == '\0' && strlen(buf) == need);
  *len = need;
  return buf;
}

static void teardown(void) {
  free(default_dump);
  spi_request_free(req);
  spi_engine_free(engine);
  default_dump = NULL;
  req = NULL;
  engine = NULL;
}

static void setup(void) {
  CHECK(spi_engine_new(&engine, NULL) == SPI_OK);
  CHECK(spi_request_new(engine, &req) == SPI_OK);
  default_dump = dump(engine, &default_len);
  atexit(teardown);
}

/* Whatever the configuration, the fixed request goes through cleanly. */
static void exercise(void) {
  int rc = spi_request_parse_openai(req, BODY, sizeof BODY - 1,
                                    SPI_OPENAI_AUTO);
  if (rc != SPI_OK) {
    /* Only the configured limits may refuse it. */
    CHECK(rc == SPI_ETOOBIG);
    return;
  }
  for (int32_t p = SPI_PRESSURE_NORMAL; p <= SPI_PRESSURE_CRITICAL; p++) {
    spi_classification c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    CHECK(spi_classify(req, p, &c) == SPI_OK);
    CHECK(c.klass >= SPI_CLASS_GOLD && c.klass <= SPI_CLASS_BRONZE);
    int32_t prio = 0, back = 0;
    CHECK(spi_engine_class_to_priority(engine, SPI_PRIO_VLLM, c.klass,
                                       &prio) == SPI_OK);
    CHECK(prio == c.vllm_priority);
    CHECK(spi_engine_class_from_priority(engine, SPI_PRIO_VLLM, prio,
                                         &back) == SPI_OK);
    CHECK(back == c.klass);
    CHECK(spi_engine_class_from_priority(engine, SPI_PRIO_LLMD,
                                         c.llmd_priority, &back) == SPI_OK);
    CHECK(back == c.klass);
  }
  spi_cache_key k;
  CHECK(spi_request_cache_key(req, &k) == SPI_OK);
  uint64_t hashes[16];
  size_t n = 0;
  rc = spi_request_block_hashes(req, hashes, 16, &n);
  CHECK(rc == SPI_OK || rc == SPI_EBUFSIZE);
  spi_price pr;
  memset(&pr, 0, sizeof pr);
  pr.struct_size = sizeof pr;
  CHECK(spi_request_price(req, SPI_POOL_SPOT, &pr) == SPI_OK);
  CHECK(spi_request_price(req, SPI_POOL_ON_DEMAND, &pr) == SPI_OK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!engine) setup();
  int rc = spi_engine_configure(engine, (const char *)data, size);
  if (rc != SPI_OK) {
    CHECK(rc < 0);
    CHECK(spi_engine_errmsg(engine)[0] != '\0');
    size_t len = 0;
    char *now = dump(engine, &len);
    CHECK(len == default_len && memcmp(now, default_dump, len) == 0);
    free(now);
    return 0;
  }
  CHECK(spi_engine_errmsg(engine)[0] == '\0');
  size_t len = 0;
  char *first = dump(engine, &len);
  exercise();
  /* The dump is a configuration that reproduces itself. */
  CHECK(spi_engine_configure(engine, first, len) == SPI_OK);
  size_t len2 = 0;
  char *second = dump(engine, &len2);
  CHECK(len2 == len && memcmp(first, second, len) == 0);
  free(first);
  free(second);
  CHECK(spi_engine_configure(engine, "{}", 2) == SPI_OK);
  return 0;
}
