/*
 * fake_fleet.h - the pieces of a fleet the tests build by hand, every field
 * not named zero (cmocka is not needed):
 *
 *   spi_replica_info ri = ff_replica(id, pool, usd_per_hour, max_inflight);
 *   ff_place(&ri, node, instance_type, zone);   NULL leaves one unset
 *   spi_load l = ff_load(running, waiting, kv_usage);
 *   rc = ff_report(e, id, running, waiting, kv_usage);   that load, now
 *   ff_configure_state                  a module's configure that ignores
 *                                       its configuration and makes the
 *                                       module's state its instance
 *   spi_policy_module m = ff_policy_module(choose, flags);   configured by
 *                                       ff_configure_state, failing the
 *                                       route when choose errs
 *
 * Strings are C strings; their lengths are taken with strlen. fake_world.h
 * and fake_bus.h build their replicas and loads with these.
 */
#ifndef SPI_TEST_FAKE_FLEET_H
#define SPI_TEST_FAKE_FLEET_H

#include <stdint.h>
#include <string.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"

static inline spi_replica_info ff_replica(const char *id, int32_t pool,
                                          double usd_per_hour,
                                          uint32_t max_inflight) {
  spi_replica_info ri;
  memset(&ri, 0, sizeof ri);
  ri.struct_size = sizeof ri;
  ri.id = id;
  ri.id_len = strlen(id);
  ri.pool = pool;
  ri.usd_per_hour = usd_per_hour;
  ri.max_inflight = max_inflight;
  return ri;
}

/* The machine, instance type and zone of *ri (NULL: left as they are). */
static inline void ff_place(spi_replica_info *ri, const char *node,
                            const char *type, const char *zone) {
  if (node) {
    ri->node = node;
    ri->node_len = strlen(node);
  }
  if (type) {
    ri->instance_type = type;
    ri->instance_type_len = strlen(type);
  }
  if (zone) {
    ri->zone = zone;
    ri->zone_len = strlen(zone);
  }
}

static inline spi_load ff_load(double running, double waiting,
                               double kv_usage) {
  spi_load l;
  memset(&l, 0, sizeof l);
  l.struct_size = sizeof l;
  l.running = running;
  l.waiting = waiting;
  l.kv_usage = kv_usage;
  return l;
}

/* Report that load for replica id, measured now; the call's status. */
static inline int ff_report(spi_engine *e, const char *id, double running,
                            double waiting, double kv_usage) {
  spi_load l = ff_load(running, waiting, kv_usage);
  return spi_replica_report_load(e, id, strlen(id), &l);
}

static inline int ff_configure_state(void *state, const char *json,
                                     size_t len, void **inst, char *err,
                                     size_t cap) {
  (void)json;
  (void)len;
  (void)err;
  (void)cap;
  *inst = state;
  return SPI_OK;
}

static inline spi_policy_module ff_policy_module(
    int (*choose)(void *, void *, const spi_route_context *,
                  spi_policy_choice *),
    int32_t flags) {
  spi_policy_module m;
  memset(&m, 0, sizeof m);
  m.abi_version = SPI_MODULE_ABI_VERSION;
  m.struct_size = sizeof m;
  m.on_failure = SPI_ON_FAILURE_ERROR;
  m.flags = flags;
  m.configure = ff_configure_state;
  m.choose = choose;
  return m;
}

#endif /* SPI_TEST_FAKE_FLEET_H */
