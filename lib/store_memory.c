/*
 * store_memory.c - the "memory" replay store.
 *
 * The queue already keeps its whole state in memory, so this store keeps
 * nothing: appends only count and hand out sequence numbers, and recovery
 * finds nothing. A queue on it is exactly as durable as the process. Use it
 * for tests, for the simulator, and where a lost replay costs less than a
 * disk write.
 */
#include <pthread.h>
#include <string.h>

#include "replay.h"

typedef struct mem_store {
  spi_mem mem;
  pthread_mutex_t mu;
  uint64_t next_seq;
  spi_replay_store_stats stats;
} mem_store;

static int m_configure(void *state, const char *config_json, size_t config_len,
                       void **out_instance, char *err, size_t cap) {
  (void)config_json;
  (void)config_len;
  const spi_mem *m = state;
  mem_store *s = spi__calloc(m, 1, sizeof *s);
  if (!s || pthread_mutex_init(&s->mu, NULL) != 0) {
    spi__free(m, s);
    spi__errf(err, cap, "memory store: out of memory");
    return SPI_ENOMEM;
  }
  s->mem = *m;
  s->next_seq = 1;
  *out_instance = s;
  return SPI_OK;
}

static void m_release(void *state, void *instance) {
  (void)state;
  mem_store *s = instance;
  if (!s) return;
  spi_mem m = s->mem;
  pthread_mutex_destroy(&s->mu);
  spi__free(&m, s);
}

static int m_recover(void *state, void *instance, spi_replay_record_fn fn,
                     void *user_data, char *err, size_t cap) {
  (void)state;
  (void)instance;
  (void)fn;
  (void)user_data;
  (void)err;
  (void)cap;
  return SPI_OK;
}

static int m_append(void *state, void *instance, const spi_replay_record *rec,
                    uint64_t *out_seq, char *err, size_t cap) {
  (void)state;
  (void)rec;
  (void)err;
  (void)cap;
  mem_store *s = instance;
  pthread_mutex_lock(&s->mu);
  *out_seq = s->next_seq++;
  s->stats.appended++;
  pthread_mutex_unlock(&s->mu);
  return SPI_OK;
}

static int m_sync(void *state, void *instance, uint64_t seq, char *err,
                  size_t cap) {
  (void)state;
  (void)instance;
  (void)seq;
  (void)err;
  (void)cap;
  return SPI_OK;
}

static int m_stats(void *state, void *instance, spi_replay_store_stats *out) {
  (void)state;
  mem_store *s = instance;
  if (!out || out->struct_size < sizeof *out) return SPI_EINVAL;
  pthread_mutex_lock(&s->mu);
  *out = s->stats;
  pthread_mutex_unlock(&s->mu);
  out->struct_size = sizeof *out;
  return SPI_OK;
}

void spi__builtin_store_memory(spi_replay_store_module *out) {
  memset(out, 0, sizeof *out);
  out->abi_version = SPI_MODULE_ABI_VERSION;
  out->struct_size = sizeof *out;
  out->on_failure = SPI_ON_FAILURE_ERROR;
  out->configure = m_configure;
  out->release = m_release;
  out->recover = m_recover;
  out->append = m_append;
  out->sync = m_sync;
  out->compact = NULL; /* nothing stored, nothing to compact */
  out->stats = m_stats;
}
