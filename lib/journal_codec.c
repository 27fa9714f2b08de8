/*
 * journal_codec.c - the journal's record codec: one record to bytes, and
 * bytes back to records, resynchronising past damage.
 *
 * Recovery must never let one bad record hide the good ones after it (a
 * flipped bit or a cut-off write in the middle of a segment). Every record
 * carries a magic, its length and a CRC-32C over header and payload, so
 * after a record fails its checks the scan looks for the next offset where
 * a complete record starts whose checksum holds and whose sequence is past
 * the last good one, and carries on from there. The damaged range is
 * skipped and counted; only damage with nothing good after it (the tail)
 * ends the scan.
 *
 * The first candidate tried is where the damaged record's own header says
 * it ends: when only its payload or checksum is damaged, that is where the
 * next record starts, and a search inside its payload (which may hold
 * caller bytes that look like a record) is never needed. When the header
 * itself is damaged, the search does go through the payload, and may find
 * a record there that a caller enqueued as bytes; settle() below says how
 * such a record is kept from outvoting the good records after it.
 *
 * A flipped bit in a record's length field alone would otherwise lose a
 * record whose bytes are all there: it reads as cut off when the length
 * grows past the end of the data (so recovery dropped it as an append that
 * never returned, though it had), and as a checksum mismatch otherwise.
 * Where a record is expected (where the chain of good records has got to,
 * never during the byte-by-byte search), a record that fails either way is
 * read again with the length its payload's own fields give, and kept when
 * its checksum holds for that length (repair_at()). Only damaged records
 * pay for it; an undamaged journal is read as before.
 */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "journal_codec.h"

/* ------------------------------------------------------ little-endian I/O */

static void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p) {
  return (uint16_t)(p[0] | (uint16_t)(p[1] << 8));
}

static uint32_t get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

static uint64_t get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}

/* -------------------------------------------------------- record payload */

/*
 * Payload, version 1 (all integers little-endian):
 *
 *   ENQUEUE  u8 version | u8 key_len | u8 tenant_len | u8 openai_kind |
 *            u8 class | u8[3] 0 | u32 attempts | u32 flags |
 *            u64 stream_offset | i64 first_enqueued_ns | i64 deadline_ns |
 *            u32 body_len | u32 text_len | u32 token_count |
 *            key | tenant | body | text | token ids (u32 each)
 *   ACK,DEAD u8 version | u8 key_len | u16 0 | u32 attempts | key
 *   NACK     u8 version | u8 key_len | u16 0 | u32 attempts |
 *            i64 visible_ns | key
 */
#define JR_VERSION 1u
#define JR_ENQ_FIXED 52u
#define JR_KEY_FIXED 8u
#define JR_NACK_FIXED 16u
#define JR_KEY_MAX 128u

static size_t tenant_len(const spi_envelope *env) {
  const void *nul = memchr(env->tenant, '\0', sizeof env->tenant);
  return nul ? (size_t)((const char *)nul - env->tenant) : sizeof env->tenant;
}

static int payload_len(const spi_replay_record *rec, uint64_t *out) {
  if (!rec->key || rec->key_len == 0 || rec->key_len > JR_KEY_MAX)
    return SPI_EINVAL;
  switch (rec->type) {
  case SPI_REPLAY_REC_ENQUEUE: {
    const spi_envelope *e = rec->envelope;
    if (!e || tenant_len(e) >= sizeof e->tenant) return SPI_EINVAL;
    if (e->body_len > UINT32_MAX || e->partial_text_len > UINT32_MAX ||
        e->partial_token_count > UINT32_MAX / 4)
      return SPI_EINVAL;
    if ((e->body_len && !e->body) ||
        (e->partial_text_len && !e->partial_text) ||
        (e->partial_token_count && !e->partial_tokens))
      return SPI_EINVAL;
    if (e->openai_kind < 0 || e->openai_kind > 2 || e->klass < 1 ||
        e->klass > 3)
      return SPI_EINVAL;
    *out = JR_ENQ_FIXED + rec->key_len + tenant_len(e) + e->body_len +
           e->partial_text_len + 4 * (uint64_t)e->partial_token_count;
    break;
  }
  case SPI_REPLAY_REC_ACK:
  case SPI_REPLAY_REC_DEAD:
    *out = JR_KEY_FIXED + rec->key_len;
    break;
  case SPI_REPLAY_REC_NACK:
    *out = JR_NACK_FIXED + rec->key_len;
    break;
  default:
    return SPI_EINVAL;
  }
  return *out > SPI_JR_MAX_PAYLOAD ? SPI_EINVAL : SPI_OK;
}

static uint8_t *put_bytes(uint8_t *p, const void *src, size_t n) {
  if (n) memcpy(p, src, n);
  return p + n;
}

int spi__journal_encode(spi_buf *b, const spi_mem *m,
                        const spi_replay_record *rec, uint64_t seq) {
  uint64_t plen = 0;
  int rc = payload_len(rec, &plen);
  if (rc != SPI_OK) return rc;
  size_t total = SPI_JR_HEADER_BYTES + (size_t)plen + SPI_JR_TRAILER_BYTES;
  if ((rc = spi__buf_reserve(b, m, total)) != SPI_OK) return rc;
  uint8_t *start = b->data + b->len, *p = start;
  put32(p, SPI_JR_MAGIC);
  put16(p + 4, (uint16_t)rec->type);
  put16(p + 6, 0);
  put32(p + 8, (uint32_t)plen);
  put64(p + 12, seq);
  p += SPI_JR_HEADER_BYTES;
  p[0] = JR_VERSION;
  p[1] = (uint8_t)rec->key_len;
  if (rec->type == SPI_REPLAY_REC_ENQUEUE) {
    const spi_envelope *e = rec->envelope;
    size_t tl = tenant_len(e);
    p[2] = (uint8_t)tl;
    p[3] = (uint8_t)e->openai_kind;
    p[4] = (uint8_t)e->klass;
    p[5] = p[6] = p[7] = 0;
    put32(p + 8, e->attempts);
    put32(p + 12, e->flags);
    put64(p + 16, e->stream_offset);
    put64(p + 24, (uint64_t)e->first_enqueued_ns);
    put64(p + 32, (uint64_t)e->deadline_ns);
    put32(p + 40, (uint32_t)e->body_len);
    put32(p + 44, (uint32_t)e->partial_text_len);
    put32(p + 48, (uint32_t)e->partial_token_count);
    p += JR_ENQ_FIXED;
    p = put_bytes(p, rec->key, rec->key_len);
    p = put_bytes(p, e->tenant, tl);
    p = put_bytes(p, e->body, e->body_len);
    p = put_bytes(p, e->partial_text, e->partial_text_len);
    for (size_t i = 0; i < e->partial_token_count; i++, p += 4)
      put32(p, e->partial_tokens[i]);
  } else {
    put16(p + 2, 0);
    put32(p + 4, rec->attempts);
    if (rec->type == SPI_REPLAY_REC_NACK) {
      put64(p + 8, (uint64_t)rec->visible_ns);
      p += JR_NACK_FIXED;
    } else {
      p += JR_KEY_FIXED;
    }
    p = put_bytes(p, rec->key, rec->key_len);
  }
  put32(p, spi__crc32c(0, start, SPI_JR_HEADER_BYTES + (size_t)plen));
  b->len += total;
  return SPI_OK;
}

/* Decode a checksummed payload into rec (and env for ENQUEUE). Token ids
 * are copied into scratch, since the payload holds them unaligned. Returns
 * SPI_OK, SPI_EPARSE (inconsistent payload) or SPI_ENOMEM. */
static int decode_payload(int32_t type, const uint8_t *p, uint32_t len,
                          spi_replay_record *rec, spi_envelope *env,
                          spi_buf *scratch, const spi_mem *m) {
  memset(rec, 0, sizeof *rec);
  rec->struct_size = sizeof *rec;
  rec->type = type;
  if (len < JR_KEY_FIXED || p[0] != JR_VERSION) return SPI_EPARSE;
  size_t klen = p[1];
  if (klen == 0 || klen > JR_KEY_MAX) return SPI_EPARSE;
  if (type == SPI_REPLAY_REC_ENQUEUE) {
    if (len < JR_ENQ_FIXED) return SPI_EPARSE;
    size_t tl = p[2];
    if (tl >= sizeof env->tenant || p[3] > 2 || p[4] < 1 || p[4] > 3 || p[5] ||
        p[6] || p[7])
      return SPI_EPARSE;
    uint64_t body = get32(p + 40), text = get32(p + 44), ntok = get32(p + 48);
    if ((uint64_t)JR_ENQ_FIXED + klen + tl + body + text + 4 * ntok != len)
      return SPI_EPARSE;
    memset(env, 0, sizeof *env);
    env->struct_size = sizeof *env;
    env->openai_kind = p[3];
    env->klass = p[4];
    env->attempts = get32(p + 8);
    env->flags = get32(p + 12);
    env->stream_offset = get64(p + 16);
    env->first_enqueued_ns = (int64_t)get64(p + 24);
    env->deadline_ns = (int64_t)get64(p + 32);
    const uint8_t *q = p + JR_ENQ_FIXED;
    env->key = (const char *)q;
    env->key_len = klen;
    q += klen;
    memcpy(env->tenant, q, tl);
    env->tenant[tl] = '\0';
    q += tl;
    env->body = (const char *)q;
    env->body_len = (size_t)body;
    q += body;
    env->partial_text = (const char *)q;
    env->partial_text_len = (size_t)text;
    q += text;
    if (ntok) {
      spi__buf_clear(scratch);
      if (spi__buf_reserve(scratch, m, (size_t)ntok * 4) != SPI_OK)
        return SPI_ENOMEM;
      uint32_t *ids = (uint32_t *)(void *)scratch->data;
      for (size_t i = 0; i < ntok; i++) ids[i] = get32(q + 4 * i);
      env->partial_tokens = ids;
      env->partial_token_count = (size_t)ntok;
    }
    rec->key = env->key;
    rec->key_len = klen;
    rec->attempts = env->attempts;
    rec->envelope = env;
    return SPI_OK;
  }
  if (get16(p + 2) != 0) return SPI_EPARSE;
  rec->attempts = get32(p + 4);
  size_t fixed = type == SPI_REPLAY_REC_NACK ? JR_NACK_FIXED : JR_KEY_FIXED;
  if (fixed + klen != len) return SPI_EPARSE;
  if (type == SPI_REPLAY_REC_NACK) rec->visible_ns = (int64_t)get64(p + 8);
  rec->key = (const char *)p + fixed;
  rec->key_len = klen;
  return SPI_OK;
}

/* ---------------------------------------------------------------- reader */

void spi__jr_reader_file(spi_jr_reader *r, int fd, uint64_t size,
                         const spi_mem *m) {
  memset(r, 0, sizeof *r);
  r->fd = fd;
  r->size = size;
  r->before_seq = r->bound = UINT64_MAX;
  r->m = m;
}

void spi__jr_reader_free(spi_jr_reader *r) {
  spi__free(r->m, r->own);
  r->own = NULL;
  r->data = NULL;
}

/* Make n bytes available at data[start]: 1 when they are, 0 when the data
 * ends first, -1 on a read error (err set), -2 out of memory. */
static int rd_need(spi_jr_reader *r, size_t n) {
  if (r->end - r->start >= n) return 1;
  if (r->fd < 0 || r->eof) return 0;
  if (r->start) {
    memmove(r->own, r->own + r->start, r->end - r->start);
    r->base += r->start;
    r->end -= r->start;
    r->start = 0;
  }
  if (n > r->cap) {
    size_t cap = r->cap ? r->cap : 65536;
    while (cap < n) cap *= 2;
    uint8_t *p = spi__alloc(r->m, cap);
    if (!p) return -2;
    if (r->end) memcpy(p, r->own, r->end);
    spi__free(r->m, r->own);
    r->own = p;
    r->data = p;
    r->cap = cap;
  }
  while (r->end < n) {
    ssize_t got = read(r->fd, r->own + r->end, r->cap - r->end);
    if (got < 0) {
      if (errno == EINTR) continue;
      r->err = errno;
      return -1;
    }
    if (got == 0) {
      r->eof = 1;
      return 0;
    }
    r->end += (size_t)got;
  }
  return 1;
}

/* The status of a failed rd_need (-1 a read error, -2 out of memory). */
static int rd_status(int got) { return got == -2 ? SPI_ENOMEM : SPI_EIO; }

static uint64_t rd_pos(const spi_jr_reader *r) { return r->base + r->start; }

/* Move the window to absolute offset pos. */
static void rd_seek(spi_jr_reader *r, uint64_t pos) {
  if (pos >= r->base && pos - r->base <= r->end) {
    r->start = (size_t)(pos - r->base);
    return;
  }
  /* Outside what is buffered (a file only): drop the window, read anew. */
  r->base = pos;
  r->start = r->end = 0;
  r->eof = 0;
  if (lseek(r->fd, (off_t)pos, SEEK_SET) < 0) {
    r->err = errno;
    r->eof = 1;
  }
}

/* --------------------------------------------------------------- framing */

/* What is wrong with a record header's magic, type or flags, or NULL. */
static const char *header_problem(const uint8_t *h) {
  uint16_t type = get16(h + 4);
  if (get32(h) != SPI_JR_MAGIC) return "bad magic";
  if (type < SPI_REPLAY_REC_ENQUEUE || type > SPI_REPLAY_REC_DEAD)
    return "bad type";
  if (get16(h + 6) != 0) return "bad flags";
  return NULL;
}

enum { FR_OK = 0, FR_END = 1, FR_TORN = 2, FR_BAD = 3 };

/* One decoded frame. */
typedef struct jr_frame {
  spi_replay_record rec;
  spi_envelope env;
  size_t total;   /* bytes of the whole frame */
  uint64_t seq;
  const char *bad; /* FR_TORN, FR_BAD: why */
  int by_length;   /* FR_TORN, FR_BAD: a wrong length would explain it */
} jr_frame;

/* A frame whose checksum holds for payload length len (h its header in
 * the window): its sequence must pass last_seq and stay below the next
 * segment's first, and its payload must decode. FR_OK (fr decoded, fr->seq
 * set), FR_BAD (fr->bad says why) or SPI_ENOMEM. */
static int frame_accept(const spi_jr_reader *r, uint64_t last_seq,
                        const uint8_t *h, uint32_t len, spi_buf *scratch,
                        jr_frame *fr) {
  fr->seq = get64(h + 12);
  if (fr->seq <= last_seq)
    fr->bad = "sequence does not increase";
  else if (fr->seq >= r->bound)
    fr->bad = "sequence not below the next segment's first";
  if (fr->bad) return FR_BAD;
  int rc = decode_payload(get16(h + 4), h + SPI_JR_HEADER_BYTES, len, &fr->rec,
                          &fr->env, scratch, r->m);
  if (rc == SPI_ENOMEM) return rc;
  if (rc != SPI_OK) {
    fr->bad = "inconsistent payload";
    return FR_BAD;
  }
  return FR_OK;
}

/*
 * Check the frame at the reader's position without moving it: FR_OK (fr
 * decoded, its pointers into the window), FR_END (no bytes left), FR_TORN
 * (it runs past the end of the data), FR_BAD (it fails a check); or a
 * negative status (SPI_ENOMEM, SPI_EIO).
 */
static int frame_at(spi_jr_reader *r, uint64_t last_seq, spi_buf *scratch,
                    jr_frame *fr) {
  fr->bad = NULL;
  fr->total = 0;
  fr->by_length = 0;
  int got = rd_need(r, SPI_JR_HEADER_BYTES);
  if (got < 0) return rd_status(got);
  uint64_t at = rd_pos(r);
  if (got == 0) {
    if (r->end == r->start) return FR_END;
    fr->bad = "incomplete header";
    return FR_TORN;
  }
  const uint8_t *h = r->data + r->start;
  if ((fr->bad = header_problem(h)) != NULL) return FR_BAD;
  uint32_t len = get32(h + 8);
  fr->seq = get64(h + 12);
  /* Until the checksum holds, the length may be the damage (repair_at). */
  fr->by_length = 1;
  if (len > SPI_JR_MAX_PAYLOAD) {
    fr->bad = "bad length";
    return FR_BAD;
  }
  fr->total = SPI_JR_HEADER_BYTES + (size_t)len + SPI_JR_TRAILER_BYTES;
  /* A length past the end is a torn record: no buffer is grown for it. */
  got = at + fr->total > r->size ? 0 : rd_need(r, fr->total);
  if (got < 0) return rd_status(got);
  if (got == 0) {
    fr->bad = "record runs past the end";
    return FR_TORN;
  }
  h = r->data + r->start;
  uint32_t crc = get32(h + SPI_JR_HEADER_BYTES + len);
  if (spi__crc32c(0, h, SPI_JR_HEADER_BYTES + (size_t)len) != crc) {
    fr->bad = "checksum mismatch";
    return FR_BAD;
  }
  fr->by_length = 0;
  return frame_accept(r, last_seq, h, len, scratch, fr);
}

/* The payload length that the fixed fields of a payload of this type give
 * (its key, tenant, body, text and token counts), read from its first
 * avail bytes; 0 when they are too few or it is out of range.
 * decode_payload accepts no other length. */
static uint64_t implied_len(int32_t type, const uint8_t *p, size_t avail) {
  uint64_t n;
  if (type == SPI_REPLAY_REC_ENQUEUE) {
    if (avail < JR_ENQ_FIXED) return 0;
    n = JR_ENQ_FIXED + (uint64_t)p[1] + p[2] + get32(p + 40) + get32(p + 44) +
        4 * (uint64_t)get32(p + 48);
  } else {
    if (avail < JR_KEY_FIXED) return 0;
    n = (type == SPI_REPLAY_REC_NACK ? JR_NACK_FIXED : JR_KEY_FIXED) +
        (uint64_t)p[1];
  }
  return n <= SPI_JR_MAX_PAYLOAD ? n : 0;
}

/*
 * The frame at the reader's position, which frame_at found torn or failing
 * its checksum, read again with the length its payload gives in place of
 * the one in its header: 1 when that holds (fr decoded as by frame_at,
 * fr->total the true size), 0 when it does not (fr's record, envelope
 * and reason may be overwritten: frame_or_repair puts the reason back), or
 * SPI_ENOMEM, SPI_EIO.
 *
 * It holds when the CRC-32C over the header with that length, and the
 * payload, is the one stored after it, and the sequence and payload checks
 * pass as for any record: then the record was written whole and only bits
 * of its length changed since, so what the caller was told is stored is
 * here. The length comes from the payload rather than from where the next
 * good record starts, which after a flipped length may be a frame inside
 * this payload (caller bytes) or one several records on (where the damaged
 * length points). The header's own length is never tried again: a payload
 * damaged too fails its checksum either way.
 */
static int repair_at(spi_jr_reader *r, uint64_t last_seq, spi_buf *scratch,
                     jr_frame *fr) {
  const uint8_t *h = r->data + r->start; /* frame_at read the header */
  int32_t type = get16(h + 4);
  size_t fixed = type == SPI_REPLAY_REC_ENQUEUE ? JR_ENQ_FIXED : JR_KEY_FIXED;
  int got = rd_need(r, SPI_JR_HEADER_BYTES + fixed);
  if (got <= 0) return got < 0 ? rd_status(got) : 0;
  h = r->data + r->start;
  uint64_t len = implied_len(type, h + SPI_JR_HEADER_BYTES, fixed);
  if (len == 0 || len == get32(h + 8)) return 0;
  size_t total = SPI_JR_HEADER_BYTES + (size_t)len + SPI_JR_TRAILER_BYTES;
  got = rd_pos(r) + total > r->size ? 0 : rd_need(r, total);
  if (got <= 0) return got < 0 ? rd_status(got) : 0;
  h = r->data + r->start;
  uint8_t head[SPI_JR_HEADER_BYTES];
  memcpy(head, h, sizeof head);
  put32(head + 8, (uint32_t)len);
  uint32_t crc = spi__crc32c(0, head, sizeof head);
  crc = spi__crc32c(crc, h + SPI_JR_HEADER_BYTES, (size_t)len);
  if (crc != get32(h + SPI_JR_HEADER_BYTES + len)) return 0;
  fr->bad = NULL;
  int k = frame_accept(r, last_seq, h, (uint32_t)len, scratch, fr);
  if (k != FR_OK) return k == SPI_ENOMEM ? k : 0;
  fr->total = total;
  return 1;
}

/* frame_at, then repair_at when a wrong length would explain the failure:
 * what frame_at found, or FR_OK with *repaired set. */
static int frame_or_repair(spi_jr_reader *r, uint64_t last_seq,
                           spi_buf *scratch, jr_frame *fr, int *repaired) {
  *repaired = 0;
  int k = frame_at(r, last_seq, scratch, fr);
  if (k < 0 || !fr->by_length) return k;
  const char *bad = fr->bad;
  size_t total = fr->total;
  int got = repair_at(r, last_seq, scratch, fr);
  if (got < 0) return got;
  if (got == 1) {
    *repaired = 1;
    return FR_OK;
  }
  fr->bad = bad;
  fr->total = total;
  return k;
}

/*
 * Move to the first offset from `from` on where a good frame with a
 * sequence past last_seq starts (1, its sequence in *seq), or to the end
 * (0); negative: SPI_ENOMEM, SPI_EIO. hint, when it is at or past from, is
 * tried first: where the damaged record's header says it ends.
 */
static int resync(spi_jr_reader *r, uint64_t from, uint64_t hint,
                  uint64_t last_seq, spi_buf *scratch, uint64_t *seq) {
  jr_frame fr;
  if (hint >= from && hint < r->size) {
    rd_seek(r, hint);
    int k = frame_at(r, last_seq, scratch, &fr);
    if (k < 0) return k;
    if (k == FR_OK) {
      *seq = fr.seq;
      return 1;
    }
  }
  /* A byte at a time, looking for the magic in what is buffered. */
  static const uint8_t MAGIC[4] = {'S', 'P', 'J', 'R'};
  rd_seek(r, from);
  for (;;) {
    int got = rd_need(r, 4);
    if (got < 0) return rd_status(got);
    if (got == 0) {
      rd_seek(r, r->size); /* nothing good after the damage */
      return 0;
    }
    const uint8_t *p = r->data + r->start, *stop = r->data + r->end - 3;
    while (p < stop && memcmp(p, MAGIC, 4) != 0) {
      p = memchr(p + 1, 'S', (size_t)(stop - p - 1));
      if (!p) p = stop;
    }
    r->start = (size_t)(p - r->data);
    if (p == stop) continue; /* refill, keeping the last 3 bytes */
    int k = frame_at(r, last_seq, scratch, &fr);
    if (k < 0) return k;
    if (k == FR_OK) {
      *seq = fr.seq;
      return 1;
    }
    r->start++;
  }
}

/* Where a chain of frames stopped: the offset, what is there (FR_END,
 * FR_TORN, FR_BAD; FR_OK when it stopped at its most frames) and why, and
 * where the record there says it ends (0 when its header says nothing). */
typedef struct jr_stop {
  uint64_t at, hint;
  int kind;
  const char *why;
} jr_stop;

/* How many times the search after one damage may run again when a held
 * run loses (settle()). */
#define JR_MAX_AGAIN 8

/* Frames chained one after another, found after damage (see settle()). */
typedef struct jr_run {
  uint64_t gap;        /* where the damaged range before it starts */
  uint64_t start, end; /* its frames */
  uint64_t count;      /* 0: no run */
  uint64_t last_seq;
  uint32_t beat;  /* runs found after it that lost to it */
  uint32_t again; /* searches run again in its damaged range (settle()) */
} jr_run;

/*
 * Follow the chain of frames from the reader's position, at most max of
 * them: each good one (sequence past out->last_seq, each past the one
 * before; one repair_at() reads counts as good) is handed to fn when it is
 * set, and counted in out (records, last_seq, valid_bytes, repaired). On
 * the first frame that is not good, *stop says what is there. Returns
 * SPI_OK, fn's status, SPI_ENOMEM or SPI_EIO.
 */
static int follow(spi_jr_reader *r, uint64_t max, spi_replay_record_fn fn,
                  void *user, spi_buf *scratch, spi_jr_scan *out,
                  jr_stop *stop) {
  /* FR_OK: max frames followed, the next one not read. */
  stop->at = rd_pos(r);
  stop->kind = FR_OK;
  stop->why = "";
  stop->hint = 0;
  for (uint64_t i = 0; i < max; i++) {
    jr_frame fr;
    int repaired;
    int k = frame_or_repair(r, out->last_seq, scratch, &fr, &repaired);
    if (k < 0) return k;
    if (k != FR_OK) {
      stop->at = rd_pos(r);
      stop->kind = k;
      stop->why = fr.bad;
      stop->hint = k == FR_BAD && fr.total ? stop->at + fr.total : 0;
      return SPI_OK;
    }
    if (fn) {
      int rc = fn(user, &fr.rec);
      if (rc != SPI_OK) return rc;
    }
    if (repaired && out->repaired++ == 0) out->repaired_at = rd_pos(r);
    r->start += fr.total;
    out->records++;
    out->last_seq = fr.seq;
    out->valid_bytes = rd_pos(r);
  }
  return SPI_OK;
}

/* The run that starts at the reader's position, counted, not handed out. */
static int measure(spi_jr_reader *r, uint64_t after_seq, spi_buf *scratch,
                   jr_run *run, jr_stop *stop) {
  spi_jr_scan tmp;
  memset(&tmp, 0, sizeof tmp);
  tmp.last_seq = after_seq;
  run->start = rd_pos(r);
  int rc = follow(r, UINT64_MAX, NULL, NULL, scratch, &tmp, stop);
  run->count = tmp.records;
  run->last_seq = tmp.last_seq;
  run->end = tmp.valid_bytes;
  return rc;
}

/* Hand run's frames to fn, read again, and count the damage before it. */
static int hand_out(spi_jr_reader *r, const jr_run *run,
                    spi_replay_record_fn fn, void *user, spi_buf *scratch,
                    spi_jr_scan *out) {
  jr_stop ignored;
  uint64_t before = out->records;
  rd_seek(r, run->start);
  int rc = follow(r, run->count, fn, user, scratch, out, &ignored);
  if (rc != SPI_OK) return rc;
  /* The same bytes read the same way: only a file changed under the scan
   * (or a failed seek, r->err) reads otherwise. */
  if (out->records - before != run->count) return SPI_EIO;
  out->skipped++;
  out->skipped_bytes += run->start - run->gap;
  return SPI_OK;
}

/*
 * After the damage at stop->at: find the run of good frames that goes on
 * from it (*run, and *stop where it ends), handing out the run before it;
 * or find there is none (*done; the tail).
 *
 * A run found after damage is held, not handed out, until the next one is
 * found, because it may not be a record at all: when a damaged record's
 * header is gone, the search goes through its payload, and a payload holds
 * caller bytes, which can be a well-formed record (an envelope whose body
 * is a journal record). Real records only ever follow one another with
 * increasing sequences, so a run found later whose first sequence is not
 * past the held run's last contradicts it, and one of the two was read
 * from inside a payload. Keeping the earlier one, as the scan once did, let
 * a planted record with a high sequence make every good record after it
 * fail "sequence does not increase".
 *
 * Instead the one whose chain goes on is kept. A planted run is confined to
 * the payload it sits in: it breaks inside that record, where the chain of
 * real records after the damage runs on to the end of the data or to the
 * next damage. So a later run that reaches the clean end of the data wins
 * outright (a planted chain ends exactly there only by a checksum collision,
 * or when its record is the last and was cut off at that very byte), and
 * otherwise the longer run wins, the later on a tie: one damaged record
 * carrying a planted one is a likelier fault than two damaged records with
 * a planted one between good ones. The loser is skipped as part of the
 * damaged range: left in place, never handed out, and counted in
 * skipped_bytes when a good record follows it.
 *
 * A held run that loses may have beaten runs found after it (good records
 * between two damaged ones, shorter than a planted chain), and those lost
 * only to it. So when it loses, the search goes back to where it stopped
 * and runs again, with nothing held, as if it had been damage: every run it
 * beat is weighed again against the runs after it, and the run that beat
 * it is found again (nothing was handed out in between, so the search finds
 * what it found the first time). A held run that beat nothing needs no
 * second search: the run that beat it is the next one there is. The
 * searches run again at most JR_MAX_AGAIN times in one damaged range (it
 * ends when a run is handed out), so the scan reads each byte a bounded
 * number of times; past that, a loser takes the runs it beat with it.
 *
 * Why this is safe: no record is refused for its sequence except by a
 * contradiction inside this one scan, or by r->bound: the next segment's
 * first record, which bounds only what a search finds, and only when it is
 * past everything read before the damage (an old record is not; see
 * scan_loop()). No bound on how far sequences may jump is assumed, so a
 * gap with no bytes here (the records lost in a previous segment's damaged
 * tail, or a compaction whose snapshot was lost) refuses nothing; and
 * without a contradiction every run is handed out, in order, as before.
 * What it costs: a good run is lost only to a run that beats it and is
 * kept, a planted chain at least as long found after a second damaged
 * record, where keeping the good run was right; or, past JR_MAX_AGAIN
 * searches in one damaged range, with a run that beat it and then lost.
 * What it cannot tell: a planted record whose sequence contradicts nothing
 * in its segment, nor the next segment's first record, is read as a
 * record, as before.
 */
static int settle(spi_jr_reader *r, jr_stop *stop, jr_run *run,
                  spi_replay_record_fn fn, void *user, spi_buf *scratch,
                  spi_jr_scan *out, int *done) {
  uint64_t from = stop->at + 1, hint = stop->hint;
  uint64_t gap = stop->at; /* of the damage before a new run */
  uint32_t again = 0;      /* of a run found with none held */
  for (;;) {
    uint64_t seq = 0;
    int found = resync(r, from, hint, out->last_seq, scratch, &seq);
    if (found <= 0) {
      *done = 1;
      out->stop = stop->kind == FR_TORN ? SPI_JR_TORN : SPI_JR_CORRUPT;
      return found;
    }
    hint = 0;
    jr_run next;
    jr_stop next_stop;
    int rc = measure(r, out->last_seq, scratch, &next, &next_stop);
    if (rc != SPI_OK) return rc;
    next.gap = gap;
    next.beat = 0;
    next.again = run->count ? 0 : again;
    if (run->count && seq <= run->last_seq) {
      if (next_stop.kind != FR_END && next.count < run->count) {
        run->beat++;
        from = next.end; /* the held run stays; search on after this one */
        continue;
      }
      if (run->beat && run->again < JR_MAX_AGAIN) {
        /* The held run joins the damage; search again from its end. */
        gap = run->gap;
        again = run->again + 1;
        run->count = 0;
        from = stop->at + 1;
        hint = stop->hint;
        continue;
      }
      next.gap = run->gap; /* the held run joins the damage before it */
      next.again = run->again;
    } else if (run->count) {
      rc = hand_out(r, run, fn, user, scratch, out);
      if (rc != SPI_OK) return rc;
    }
    *run = next;
    *stop = next_stop;
    return SPI_OK;
  }
}

static int scan_loop(spi_jr_reader *r, uint64_t after_seq,
                     spi_replay_record_fn fn, void *user, spi_buf *scratch,
                     spi_jr_scan *out) {
  memset(out, 0, sizeof *out);
  out->last_seq = after_seq;
  out->valid_bytes = rd_pos(r);
  /* From the start of the data, records chain from one the journal wrote:
   * each is handed out as it is read, and the next segment's first record
   * does not bound them. That record is real unless it is old (blocks of a
   * removed segment reused after a crash, a file put back by hand), and an
   * old one has a sequence below everything written after it: when it is
   * not past what was read here, it is old and bounds nothing. */
  r->bound = UINT64_MAX;
  jr_stop stop;
  int rc = follow(r, UINT64_MAX, fn, user, scratch, out, &stop);
  if (r->before_seq > out->last_seq) r->bound = r->before_seq;
  jr_run run;
  memset(&run, 0, sizeof run);
  int done = 0;
  while (rc == SPI_OK && stop.kind != FR_END && !done) {
    if (!out->why[0]) {
      out->first_bad = stop.at;
      spi__errf(out->why, sizeof out->why, "%s at offset %llu", stop.why,
                (unsigned long long)stop.at);
    }
    rc = settle(r, &stop, &run, fn, user, scratch, out, &done);
  }
  if (rc == SPI_OK && run.count)
    rc = hand_out(r, &run, fn, user, scratch, out);
  return rc;
}

int spi__jr_scan(spi_jr_reader *r, uint64_t after_seq, spi_replay_record_fn fn,
                 void *user_data, spi_jr_scan *out) {
  spi_buf scratch = {0};
  int rc = scan_loop(r, after_seq, fn, user_data, &scratch, out);
  spi__buf_free(&scratch, r->m);
  if (rc == SPI_OK && r->err) rc = SPI_EIO; /* a failed seek while skipping */
  return rc;
}

int spi__jr_first_seq(spi_jr_reader *r, uint64_t *seq) {
  spi_buf scratch = {0};
  jr_frame fr;
  int repaired;
  r->bound = UINT64_MAX;
  /* As the scan reads it: a first record whose length field alone is
   * damaged is a good record, and bounds the segment before. */
  int k = frame_or_repair(r, 0, &scratch, &fr, &repaired);
  spi__buf_free(&scratch, r->m);
  if (k < 0) return k;
  if (k != FR_OK) return 0;
  *seq = fr.seq;
  return 1;
}

int spi__journal_scan_mem(const spi_mem *m, const uint8_t *data, size_t len,
                          uint64_t after_seq, spi_replay_record_fn fn,
                          void *user_data, spi_jr_scan *out) {
  spi_jr_reader r;
  memset(&r, 0, sizeof r);
  r.fd = -1;
  r.data = data;
  r.end = data ? len : 0;
  r.size = r.end;
  r.before_seq = r.bound = UINT64_MAX;
  r.m = m;
  return spi__jr_scan(&r, after_seq, fn, user_data, out);
}
