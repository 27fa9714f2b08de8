/*
 * journal_codec.h - the journal's record format: encoding one record, and
 * scanning a segment (a file or an image in memory) back into records,
 * resynchronising past damage. No file names, directories or fsync here:
 * those are journal.c's (segment I/O).
 */
#ifndef SPI_JOURNAL_CODEC_H
#define SPI_JOURNAL_CODEC_H

#include "crc32c.h"
#include "spi_internal.h"

/*
 * One record on disk, all integers little-endian:
 *
 *   u32 magic "SPJR" | u16 type | u16 flags (0) | u32 length | u64 sequence
 *   payload[length]
 *   u32 CRC-32C of the header and the payload
 *
 * The payload starts with a format version byte (1); see journal_codec.c.
 * The magic, the length and the checksum are what let a scan find the next
 * good record after a damaged one. The payload's fixed fields give its
 * length too, so a record whose length field alone is damaged is still
 * read, and its checksum says whether that is right.
 */
#define SPI_JR_MAGIC 0x524a5053u /* bytes 'S' 'P' 'J' 'R' */
#define SPI_JR_HEADER_BYTES 20u
#define SPI_JR_TRAILER_BYTES 4u
#define SPI_JR_MAX_PAYLOAD (1u << 30)

/* What follows the last good record of a scan. */
enum spi_jr_stop {
  SPI_JR_END = 0,  /* nothing: a clean end of the data */
  SPI_JR_TORN = 1, /* an incomplete record (cut off mid-write) */
  SPI_JR_CORRUPT =
      2 /* bad magic, type, length, checksum, sequence or payload */
};

typedef struct spi_jr_scan {
  uint64_t records;       /* good records handed to fn */
  uint64_t valid_bytes;   /* end of the last good record (or the start) */
  uint64_t last_seq;      /* sequence of the last good record (or after_seq) */
  uint64_t skipped;       /* damaged ranges skipped before valid_bytes, each
                             followed by a good record */
  uint64_t skipped_bytes; /* their bytes */
  uint64_t first_bad;     /* offset of the first damage (skipped or tail) */
  uint64_t repaired;      /* records handed out whose length field alone
                             was damaged (read by the length their payload
                             gives, checked by their checksum) */
  uint64_t repaired_at;   /* offset of the first (when repaired > 0) */
  int32_t stop;           /* enum spi_jr_stop: what follows valid_bytes */
  int32_t reserved0;
  char why[160]; /* the first thing wrong, for the warning */
} spi_jr_scan;

/* Encode rec as one framed record with sequence seq, appended to b.
 * Errors: SPI_EINVAL (a field out of range), SPI_ENOMEM. */
int spi__journal_encode(spi_buf *b, const spi_mem *m,
                        const spi_replay_record *rec, uint64_t seq);

/* A window over a file (fd >= 0) or over an image in memory. */
typedef struct spi_jr_reader {
  int fd;
  int eof;
  int err; /* errno of a failed read */
  int reserved0;
  const uint8_t *data; /* image, or own */
  uint8_t *own;
  size_t cap;        /* of own */
  size_t start, end; /* unread bytes are data[start..end) */
  uint64_t base;     /* offset of data[0] in the file */
  uint64_t size;     /* of the file or image */
  /* The first record of the next segment, when there is one (UINT64_MAX:
   * none): records found by a search after damage must have a smaller
   * sequence, while it is past every record read before (spi__jr_scan). */
  uint64_t before_seq;
  uint64_t bound; /* the scan's own: before_seq where it applies */
  const spi_mem *m;
} spi_jr_reader;

/* A reader over the open file fd of size bytes, read from its current
 * offset (0), with no before_seq; spi__jr_reader_free releases its buffer,
 * not fd. */
void spi__jr_reader_file(spi_jr_reader *r, int fd, uint64_t size,
                         const spi_mem *m);
void spi__jr_reader_free(spi_jr_reader *r);

/*
 * Scan from the reader's position: hand each good record to fn (may be
 * NULL) in order. A record whose checks fail only because its length
 * field changed is a good record: read by the length its payload gives
 * when the checksum holds for that length, and counted in out->repaired
 * too (journal_codec.c, repair_at()). A damaged range (a record that fails
 * its checks) is skipped by searching forward for the next complete record
 * whose checksum holds and whose sequence is past the last good one; the
 * scan then goes on from there and counts the range in out->skipped. Of
 * two runs of records found after damage that contradict each other (the
 * later one's sequence not past the earlier's), the one whose chain goes on
 * is kept and the other skipped with the damage, and the runs the skipped
 * one had beaten are weighed again (journal_codec.c, settle()). Damage
 * with no good record after it is the tail: out->stop says whether it looks cut
 * off (TORN) or damaged (CORRUPT). Sequences must increase from after_seq.
 * Records found by a search after damage must also stay below
 * r->before_seq, unless it is not past the records read in order from the
 * start of the data (nor past after_seq): then it is an old record, which
 * bounds nothing. Returns SPI_OK (then *out says what was found), fn's
 * status, SPI_ENOMEM, or SPI_EIO (a read failed; errno in r->err).
 */
int spi__jr_scan(spi_jr_reader *r, uint64_t after_seq, spi_replay_record_fn fn,
                 void *user_data, spi_jr_scan *out);

/* Whether the data starts with a good record (1, its sequence in *seq) or
 * not (0), a record whose length field alone is damaged included, as
 * spi__jr_scan reads it; SPI_ENOMEM or SPI_EIO (errno in r->err). Reads
 * from the reader's position, which it leaves anywhere. */
int spi__jr_first_seq(spi_jr_reader *r, uint64_t *seq);

/* The same scan over an image in memory (the fuzz target and the tests),
 * with no before_seq. */
int spi__journal_scan_mem(const spi_mem *m, const uint8_t *data, size_t len,
                          uint64_t after_seq, spi_replay_record_fn fn,
                          void *user_data, spi_jr_scan *out);

#endif /* SPI_JOURNAL_CODEC_H */
