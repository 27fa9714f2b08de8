/*
 * floor.c - what every call stands on: the handle check, the clock, the log,
 * the one error-slot setter every module reports through, and snapshot
 * pinning. It calls nothing above it: no configure, no module registry, no
 * state file (the roof, engine.c, builds the engine on top of this).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

void *spi__default_alloc(void *ud, size_t size) {
  (void)ud;
  return malloc(size);
}

void spi__default_free(void *ud, void *ptr) {
  (void)ud;
  free(ptr);
}

int64_t spi__default_clock(void *ud) {
  (void)ud;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int spi__engine_ok(const spi_engine *e) {
  return e && e->magic == SPI_ENGINE_MAGIC;
}

int64_t spi__engine_now(const spi_engine *e) {
  return e->clock(e->clock_user_data);
}

void spi__engine_log(const spi_engine *e, int32_t level, const char *fmt, ...) {
  if (!e->log || level > e->log_level) return;
  char line[SPI_ERRMSG_CAP];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(line, sizeof line, fmt, ap);
  va_end(ap);
  e->log(e->log_user_data, level, line, strlen(line));
}

int spi__engine_fail(spi_engine *e, int status, const char *fmt, ...) {
  char msg[SPI_ERRMSG_CAP];
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  spi__errtab_set(&e->err, msg);
  return status;
}

uint32_t spi_version_number(void) { return SPI_VERSION_NUMBER; }

const char *spi_version_string(void) { return SPI_VERSION_STRING; }

spi_snapshot *spi__snap_acquire(spi_engine *e, unsigned *pin) {
  *pin = spi__rcu_enter(&e->rcu);
  return atomic_load(&e->snap);
}

void spi__snap_release(spi_engine *e, unsigned pin) {
  spi__rcu_exit(&e->rcu, pin);
}

const char *spi_engine_errmsg(const spi_engine *engine) {
  if (!spi__engine_ok(engine)) return "invalid engine handle";
  /* The table's lock is a mutex: reading it does not change the engine as
   * the caller sees it, hence the const in the signature. */
  return spi__errtab_get(&engine->err);
}
