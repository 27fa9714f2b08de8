/*
 * replay.h - internals of the replay queue (replay.c) and its stores
 * (journal.c, store_memory.c), shared with the tests, the fuzz target and
 * the benchmark; the record format is journal_codec.h. Nothing here is
 * exported.
 */
#ifndef SPI_REPLAY_H
#define SPI_REPLAY_H

#include "journal_codec.h"
#include "spi_internal.h"

/* ------------------------------------------------------------ the queue */

/*
 * The retry delay after a queue entry's attempt-th failure (attempt >= 1):
 * d = min(max_ms, base_ms * 2^(attempt-1)), then shortened by up to
 * jitter * d, the fraction taken from XXH3-64 (seed 0) of the key followed
 * by the attempt as 4 little-endian bytes. Deterministic, so a fake clock
 * reproduces every schedule.
 */
int64_t spi__replay_backoff_ms(const char *key, size_t key_len,
                               uint32_t attempt, int64_t base_ms,
                               int64_t max_ms, double jitter);

/* The queue's store statistics. Errors: SPI_EMISUSE, SPI_EINVAL. */
int spi__replay_store_stats(spi_replay_queue *q, spi_replay_store_stats *out);

/* Force a compaction now (tests and benchmarks). SPI_ENOTSUP when the store
 * cannot compact. */
int spi__replay_compact(spi_replay_queue *q);

/* The journal's keys of a "replay" section (dir, fsync, group_commit_ms,
 * segment_bytes), read and range-checked in one place (replay.c) for both
 * the queue's check of the section and the journal store's configure.
 * dir points into obj. fsync: 0 always, 1 batch, 2 none. */
typedef struct spi_journal_cfg {
  const char *dir;
  size_t dir_len;
  int32_t fsync;
  int64_t group_commit_ms, segment_bytes;
} spi_journal_cfg;
int spi__replay_journal_cfg(const struct cJSON *obj, spi_journal_cfg *out,
                            char *err, size_t cap);

/* --------------------------------------------- queue stores (replay_shared.c)
 *
 * A queue whose store is a queue store (spotinfer_module.h, enqueue set)
 * delegates every call to it through an spi_rqs; replay.c checks the
 * arguments first and hands over. */
typedef struct spi_rqs spi_rqs;

typedef struct spi_rqs_cfg {
  const char *store_name;
  int64_t lease_ms, backoff_base_ms, backoff_max_ms, max_attempts;
  int64_t max_bytes, max_acked_keys, max_dead;
  double backoff_jitter;
} spi_rqs_cfg;

/* Take over an open store instance (released by spi__rqs_free) and, when
 * not NULL, a fallback queue (closed by spi__rqs_free). err is the queue's
 * error table, mem its allocator. SPI_ENOMEM. */
int spi__rqs_new(spi_engine *e, const spi_mem *mem, spi_errtab *err,
                 const spi_replay_store_module *store, void *mstate,
                 void *inst, const spi_rqs_cfg *cfg, spi_replay_queue *fallback,
                 spi_rqs **out);
void spi__rqs_free(spi_rqs *s);
int spi__rqs_enqueue(spi_rqs *s, const spi_envelope *env, int32_t *duplicate);
int spi__rqs_claim(spi_rqs *s, uint32_t class_mask, int64_t lease_ms,
                   uint64_t *claim_id, spi_envelope *out, void *buf,
                   size_t cap, size_t *needed);
int spi__rqs_ack(spi_rqs *s, uint64_t claim_id);
int spi__rqs_nack(spi_rqs *s, uint64_t claim_id);
int spi__rqs_stats(spi_rqs *s, spi_replay_stats *all);
int spi__rqs_tick(spi_rqs *s);

/* replay.c for replay_shared.c: the bytes claim copies e into, and the copy
 * (buf aligned as claim needs, out->struct_size already set). */
size_t spi__replay_env_size(const spi_envelope *e);
void spi__replay_env_copy(const spi_envelope *e, spi_envelope *out,
                          uint8_t *buf);

/* Hand the READY envelopes of q (a fallback journal), oldest first per lane,
 * gold first, to push, at most max of them; each one push takes (SPI_OK)
 * is acknowledged in q for good; one push refuses for good (the envelope,
 * not the call: SPI_EINVAL, SPI_ETOOBIG, SPI_ERANGE, SPI_EPARSE) is
 * dead-lettered in q, so those behind it still go. Stops at the first
 * other failure of push, or of writing or syncing a record, and returns
 * it. *moved counts what went, at most max. */
int spi__replay_drain(spi_replay_queue *q,
                      int (*push)(void *ud, const spi_envelope *env),
                      void *ud, size_t max, size_t *moved);


/* modules.c: register a module loaded at run time (not a built-in). */
int spi__module_register_loaded(spi_engine *e, int32_t kind, const char *name,
                                size_t name_len, const void *module,
                                void *state, spi_module_destroy_fn destroy);

#endif /* SPI_REPLAY_H */
