/*
 * replay.h - internals of the replay queue (replay.c), its stores
 * (journal.c, store_memory.c) and the journal's record format, shared with
 * the tests, the fuzz target and the benchmark. Nothing here is exported.
 */
#ifndef SPI_REPLAY_H
#define SPI_REPLAY_H

#include "spi_internal.h"

/* --------------------------------------------------------------- CRC-32C */

/* CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as in iSCSI and
 * ext4: crc is 0 for a fresh checksum, or a previous result to continue one.
 * spi__crc32c(0, "123456789", 9) == 0xE3069283. */
uint32_t spi__crc32c(uint32_t crc, const void *data, size_t n);

/* ------------------------------------------------------- journal records */

/*
 * One record on disk, all integers little-endian:
 *
 *   u32 magic "SPJR" | u16 type | u16 flags (0) | u32 length | u64 sequence
 *   payload[length]
 *   u32 CRC-32C of the header and the payload
 *
 * The payload starts with a format version byte (1); see journal.c.
 */
#define SPI_JR_MAGIC 0x524a5053u /* bytes 'S' 'P' 'J' 'R' */
#define SPI_JR_HEADER_BYTES 20u
#define SPI_JR_TRAILER_BYTES 4u
#define SPI_JR_MAX_PAYLOAD (1u << 30)

/* Why a scan stopped. */
enum spi_jr_stop {
  SPI_JR_END = 0,  /* clean end of the data */
  SPI_JR_TORN = 1, /* the last record is incomplete (cut off mid-write) */
  SPI_JR_CORRUPT =
      2 /* bad magic, type, length, checksum, sequence or payload */
};

typedef struct spi_jr_scan {
  uint64_t records;     /* good records handed to fn */
  uint64_t valid_bytes; /* length of the good prefix */
  uint64_t last_seq;    /* sequence of the last good record (or after_seq) */
  int32_t stop;         /* enum spi_jr_stop */
  int32_t reserved0;
  char why[160]; /* what was wrong, for the warning */
} spi_jr_scan;

/* Encode rec as one framed record with sequence seq, appended to b.
 * Errors: SPI_EINVAL (a field out of range), SPI_ENOMEM. */
int spi__journal_encode(spi_buf *b, const spi_mem *m,
                        const spi_replay_record *rec, uint64_t seq);

/*
 * Scan a segment image in memory, exactly as recovery scans a file: hand
 * each good record to fn (may be NULL) in order and stop at the end or at
 * the first torn or corrupt record. Sequences must increase from after_seq.
 * Returns SPI_OK (then *out says where and why it stopped), fn's status, or
 * SPI_ENOMEM.
 */
int spi__journal_scan_mem(const spi_mem *m, const uint8_t *data, size_t len,
                          uint64_t after_seq, spi_replay_record_fn fn,
                          void *user_data, spi_jr_scan *out);

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
