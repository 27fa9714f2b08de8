/*
 * fuzz_fleet_msg.c - what a fleet bus hands back is outside input: each
 * input is one bus message, polled by an engine's tick (over a fake bus)
 * and applied or skipped.
 *
 * Contracts checked beyond crashes: the tick succeeds; the message is
 * counted once, as applied, duplicate, malformed or unknown (or, for a
 * machine the engine cannot track, named in the last error); nothing read
 * from the bus is ever published back (the fake bus aborts on publish); and
 * the engine still answers for its machines afterwards. The engine lives
 * across inputs (its tables are bounded), on a fixed clock.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../unit/fake_bus.h"
#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond) \
  do {              \
    if (!(cond)) abort(); \
  } while (0)

#define NOW INT64_C(1700000000000000000)

static spi_engine *engine;
static const uint8_t *input;
static size_t input_len;
static int pending; /* the input is still to be handed over */

static int64_t fixed_clock(void *ud) {
  (void)ud;
  return NOW;
}

static int f_configure(void *state, const char *json, size_t len, void **out,
                       char *err, size_t cap) {
  (void)state, (void)json, (void)len, (void)err, (void)cap;
  *out = &pending; /* any non-NULL instance */
  return SPI_OK;
}

static void f_release(void *state, void *inst) { (void)state, (void)inst; }

static int f_publish(void *state, void *inst, const char *msg, size_t len,
                     char *err, size_t cap) {
  (void)state, (void)inst, (void)msg, (void)len, (void)err, (void)cap;
  abort(); /* an engine never publishes what it read */
}

static int f_poll(void *state, void *inst, size_t max, spi_fleet_msg_fn fn,
                  void *ud, char *err, size_t cap) {
  (void)state, (void)inst, (void)err, (void)cap;
  if (pending && max > 0 && fn(ud, (const char *)input, input_len) == SPI_OK)
    pending = 0;
  return SPI_OK;
}

static void add(const char *id, const char *node, const char *type,
                const char *zone) {
  spi_replica_info ri = fb_replica(id, node, SPI_POOL_SPOT, type, zone);
  ri.max_inflight = 8;
  CHECK(spi_replica_upsert(engine, &ri) == SPI_OK);
}

static void teardown(void) {
  spi_engine_free(engine);
  engine = NULL;
}

static void setup(void) {
  spi_hooks h;
  memset(&h, 0, sizeof h);
  h.struct_size = sizeof h;
  h.clock = fixed_clock;
  CHECK(spi_engine_new(&engine, &h) == SPI_OK);
  spi_fleet_bus_module m = fb_module(f_configure, f_release, f_publish, f_poll);
  CHECK(spi_engine_register_module(engine, SPI_MODULE_FLEET_BUS, "fuzz", 4,
                                   &m, NULL, NULL) == SPI_OK);
  static const char cfg[] = "{\"modules\":{\"fleet_bus\":\"fuzz\"}}";
  CHECK(spi_engine_configure(engine, cfg, sizeof cfg - 1) == SPI_OK);
  add("spot-a", "i-aaa", "g5.xlarge", "z1");
  add("spot-b", "i-bbb", "g5.xlarge", "z2");
  atexit(teardown);
}

static uint64_t counted(const spi_fleet_stats *s) {
  return s->applied + s->duplicates + s->malformed + s->unknown;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!engine) setup();
  spi_fleet_stats before, after;
  memset(&before, 0, sizeof before);
  before.struct_size = sizeof before;
  after = before;
  CHECK(spi_engine_fleet_stats(engine, &before) == SPI_OK);
  input = data;
  input_len = size;
  pending = 1;
  CHECK(spi_engine_tick(engine) == SPI_OK);
  CHECK(!pending);
  CHECK(spi_engine_fleet_stats(engine, &after) == SPI_OK);
  CHECK(after.received == before.received + 1);
  CHECK(after.published == 0 && after.pending == 0);
  CHECK(counted(&after) == counted(&before) + 1 ||
        (counted(&after) == counted(&before) &&
         strstr(after.last_error, "not applied")));
  int32_t st = 0;
  CHECK(spi_node_get_state(engine, "i-aaa", 5, &st) == SPI_OK);
  CHECK(st >= SPI_NODE_ACTIVE && st <= SPI_NODE_TERMINATED);
  return 0;
}
