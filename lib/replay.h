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

#endif /* SPI_REPLAY_H */
