/*
 * journal.c - the "journal" replay store: a directory of append-only,
 * checksummed segment files.
 *
 * Layout of the directory:
 *
 *   000001.log, 000002.log, ...   segments, appended in order; a new one is
 *                                 started once the current one would pass
 *                                 replay.segment_bytes
 *   000007.snap                   a compaction: the queue's whole state at
 *                                 one moment; it replaces every file with a
 *                                 smaller number, and the logs after it
 *                                 continue from it
 *   LOCK                          held with an fcntl() write lock while open
 *   compact.tmp                   a compaction being written (never read)
 *   *.corrupt                     bytes recovery set aside (never read)
 *
 * Every record is framed (replay.h): header, payload, CRC-32C over both. On
 * open, recovery reads the newest snapshot (if any) and the logs after it in
 * order, hands every good record to the queue, and stops at the first torn
 * or corrupt one: the file is truncated there, and what followed (the rest
 * of a damaged file, later segments) is renamed aside as *.corrupt rather
 * than deleted, so a fully written record is never destroyed silently. A
 * torn tail (a record cut off by a crash) is simply cut off: its append never
 * returned SPI_OK.
 *
 * Durability, by replay.fsync:
 *   always  every append is written and fdatasync()ed before it returns;
 *   batch   appends are written at once; sync() makes the caller wait for an
 *           fdatasync() that covers its record, shared by every caller that
 *           is waiting at the time (one leader syncs, the followers sleep on
 *           a condition variable; the leader first waits group_commit_ms for
 *           more company). Same promise as always, fewer fsyncs under load;
 *   none    appends are written (so they survive the process being killed)
 *           but never synced until close: a machine crash or power loss can
 *           lose whatever the OS had not written back yet.
 *
 * Compaction writes the live records to compact.tmp, syncs it, creates the
 * next log segment, renames the file to N.snap and syncs the directory: the
 * rename is the commit point. Older files are removed afterwards; if the
 * process dies first, the next recovery removes them.
 *
 * After a failed write that cannot be undone, or any failed fdatasync, the
 * journal refuses every further append with SPI_EIO: what reached the disk
 * is no longer known, and reopening (recovery) is the way back.
 *
 * Only POSIX calls: open, read, write, fdatasync, fsync, ftruncate, rename,
 * unlink, opendir, fcntl.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "replay.h"

/* --------------------------------------------------------------- CRC-32C */

/* The byte-at-a-time table of the reflected polynomial 0x82F63B78. */
static const uint32_t CRC32C_TABLE[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu,
    0x35f1141cu, 0x26a1e7e8u, 0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu,
    0x6be22838u, 0x9989ab3bu, 0x4d43cfd0u, 0xbf284cd3u, 0xac78bf27u,
    0x5e133c24u, 0x105ec76fu, 0xe235446cu, 0xf165b798u, 0x030e349bu,
    0xd7c45070u, 0x25afd373u, 0x36ff2087u, 0xc494a384u, 0x9a879fa0u,
    0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u, 0x5d1d08bfu, 0xaf768bbcu,
    0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u,
    0x33ed7d2au, 0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u,
    0xaa64d611u, 0x580f5512u, 0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu,
    0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau, 0x30e349b1u, 0xc288cab2u,
    0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu, 0x1642ae59u,
    0xe4292d5au, 0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au,
    0x7da08661u, 0x8fcb0562u, 0x9c9bf696u, 0x6ef07595u, 0x417b1dbcu,
    0xb3109ebfu, 0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u,
    0x67dafa54u, 0x95b17957u, 0xcba24573u, 0x39c9c670u, 0x2a993584u,
    0xd8f2b687u, 0x0c38d26cu, 0xfe53516fu, 0xed03a29bu, 0x1f682198u,
    0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u, 0x96bf4dccu,
    0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu,
    0x3ac7f2ebu, 0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u,
    0x0f36e6f7u, 0x61c69362u, 0x93ad1061u, 0x80fde395u, 0x72966096u,
    0xa65c047du, 0x5437877eu, 0x4767748au, 0xb50cf789u, 0xeb1fcbadu,
    0x197448aeu, 0x0a24bb5au, 0xf84f3859u, 0x2c855cb2u, 0xdeeedfb1u,
    0xcdbe2c45u, 0x3fd5af46u, 0x7198540du, 0x83f3d70eu, 0x90a324fau,
    0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u, 0xa55230e6u,
    0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu,
    0xceb018deu, 0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu,
    0x63cd4b8fu, 0x91a6c88cu, 0x456cac67u, 0xb7072f64u, 0xa457dc90u,
    0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u, 0xe9141340u, 0x1b7f9043u,
    0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu, 0x92a8fc17u,
    0x60c37f14u, 0x73938ce0u, 0x81f80fe3u, 0x55326b08u, 0xa759e80bu,
    0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu, 0xf94ad42fu,
    0x0b21572cu, 0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u,
    0xa24bb5a6u, 0x502036a5u, 0x4370c551u, 0xb11b4652u, 0x65d122b9u,
    0x97baa1bau, 0x84ea524eu, 0x7681d14du, 0x2892ed69u, 0xdaf96e6au,
    0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u, 0x0e330a81u,
    0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du,
    0x758fe5d6u, 0x87e466d5u, 0x94b49521u, 0x66df1622u, 0x38cc2a06u,
    0xcaa7a905u, 0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u, 0x0d3d3e1au,
    0x1e6dcdeeu, 0xec064eedu, 0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u,
    0xd0ddd530u, 0x0417b1dbu, 0xf67c32d8u, 0xe52cc12cu, 0x1747422fu,
    0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu, 0x5a048dffu, 0x8ecee914u,
    0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u,
    0x07198540u, 0x590ab964u, 0xab613a67u, 0xb831c993u, 0x4a5a4a90u,
    0x9e902e7bu, 0x6cfbad78u, 0x7fab5e8cu, 0x8dc0dd8fu, 0xe330a81au,
    0x115b2b19u, 0x020bd8edu, 0xf0605beeu, 0x24aa3f05u, 0xd6c1bc06u,
    0xc5914ff2u, 0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u, 0x88d28022u,
    0x7ab90321u, 0xae7367cau, 0x5c18e4c9u, 0x4f48173du, 0xbd23943eu,
    0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au,
    0xc69f7b69u, 0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u,
    0x988c474du, 0x6ae7c44eu, 0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u,
    0xad7d5351u,
};

uint32_t spi__crc32c(uint32_t crc, const void *data, size_t n) {
  const uint8_t *p = data;
  crc = ~crc;
  while (n--) crc = CRC32C_TABLE[(crc ^ *p++) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

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

/* A window over a file (fd >= 0) or over a whole image in memory. */
typedef struct jr_reader {
  int fd;
  const uint8_t *data; /* image, or own */
  uint8_t *own;
  size_t cap;        /* of own */
  size_t start, end; /* unread bytes are data[start..end) */
  uint64_t base;     /* offset of data[0] in the file */
  uint64_t size;     /* of the file or image */
  int eof;
  int err; /* errno of a failed read */
  const spi_mem *m;
} jr_reader;

/* Make n bytes available at data[start]: 1 when they are, 0 when the data
 * ends first, -1 on a read error (err set), -2 out of memory. */
static int rd_need(jr_reader *r, size_t n) {
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

/* What is wrong with a record header, or NULL. */
static const char *header_problem(const uint8_t *h) {
  uint16_t type = get16(h + 4);
  if (get32(h) != SPI_JR_MAGIC) return "bad magic";
  if (type < SPI_REPLAY_REC_ENQUEUE || type > SPI_REPLAY_REC_DEAD)
    return "bad type";
  if (get16(h + 6) != 0) return "bad flags";
  if (get32(h + 8) > SPI_JR_MAX_PAYLOAD) return "bad length";
  return NULL;
}

/*
 * The scan both recovery and the fuzz target run. Returns SPI_OK with out
 * filled, fn's status, SPI_ENOMEM, or SPI_EIO (read error, errno in r->err).
 */
static int scan(jr_reader *r, uint64_t after_seq, spi_replay_record_fn fn,
                void *user, spi_buf *scratch, spi_jr_scan *out) {
  memset(out, 0, sizeof *out);
  out->last_seq = after_seq;
  out->valid_bytes = r->base + r->start;
  for (;;) {
    int got = rd_need(r, SPI_JR_HEADER_BYTES);
    if (got < 0) return got == -2 ? SPI_ENOMEM : SPI_EIO;
    uint64_t at = r->base + r->start;
    if (got == 0) {
      if (r->end == r->start) return SPI_OK; /* clean end */
      out->stop = SPI_JR_TORN;
      spi__errf(out->why, sizeof out->why, "incomplete header at offset %llu",
                (unsigned long long)at);
      return SPI_OK;
    }
    const uint8_t *h = r->data + r->start;
    const char *bad = header_problem(h);
    uint32_t len = get32(h + 8);
    uint64_t seq = get64(h + 12);
    if (bad) {
      out->stop = SPI_JR_CORRUPT;
      spi__errf(out->why, sizeof out->why, "%s at offset %llu", bad,
                (unsigned long long)at);
      return SPI_OK;
    }
    size_t total = SPI_JR_HEADER_BYTES + (size_t)len + SPI_JR_TRAILER_BYTES;
    /* A length past the end is a torn record: no buffer is grown for it. */
    got = at + total > r->size ? 0 : rd_need(r, total);
    if (got < 0) return got == -2 ? SPI_ENOMEM : SPI_EIO;
    if (got == 0) {
      out->stop = SPI_JR_TORN;
      spi__errf(out->why, sizeof out->why,
                "record of %zu bytes at offset %llu runs past the end (%llu "
                "bytes left)",
                total, (unsigned long long)at,
                (unsigned long long)(r->size - at));
      return SPI_OK;
    }
    h = r->data + r->start;
    uint32_t crc = get32(h + SPI_JR_HEADER_BYTES + len);
    if (spi__crc32c(0, h, SPI_JR_HEADER_BYTES + (size_t)len) != crc)
      bad = "checksum mismatch";
    else if (seq <= out->last_seq)
      bad = "sequence does not increase";
    spi_replay_record rec;
    spi_envelope env;
    if (!bad) {
      int rc = decode_payload(get16(h + 4), h + SPI_JR_HEADER_BYTES, len, &rec,
                              &env, scratch, r->m);
      if (rc == SPI_ENOMEM) return rc;
      if (rc != SPI_OK) bad = "inconsistent payload";
    }
    if (bad) {
      out->stop = SPI_JR_CORRUPT;
      spi__errf(out->why, sizeof out->why, "%s at offset %llu (sequence %llu)",
                bad, (unsigned long long)at, (unsigned long long)seq);
      return SPI_OK;
    }
    if (fn) {
      int rc = fn(user, &rec);
      if (rc != SPI_OK) return rc;
    }
    r->start += total;
    out->records++;
    out->last_seq = seq;
    out->valid_bytes = r->base + r->start;
  }
}

int spi__journal_scan_mem(const spi_mem *m, const uint8_t *data, size_t len,
                          uint64_t after_seq, spi_replay_record_fn fn,
                          void *user_data, spi_jr_scan *out) {
  jr_reader r;
  memset(&r, 0, sizeof r);
  r.fd = -1;
  r.data = data;
  r.end = data ? len : 0;
  r.size = r.end;
  r.m = m;
  spi_buf scratch = {0};
  int rc = scan(&r, after_seq, fn, user_data, &scratch, out);
  spi__buf_free(&scratch, m);
  return rc;
}

/* ----------------------------------------------------- per-engine state */

/* Directories open in this process. fcntl() locks are per process, so they
 * cannot stop one process opening a directory twice (one engine twice, or
 * two engines); this list, shared by every engine of the process, does.
 * An entry is allocated with the allocator of the engine that claimed it
 * and records that engine's state, so freeing an engine drops whatever it
 * still held. */
typedef struct jr_open {
  dev_t dev;
  ino_t ino;
  pid_t pid;         /* a child of fork() inherits the list, not the claims */
  const void *owner; /* the jr_state that claimed it */
  spi_mem mem;
  struct jr_open *next;
} jr_open;

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static jr_open *open_dirs;

typedef struct jr_state {
  spi_mem mem;
} jr_state;

void *spi__journal_state_new(const spi_mem *m) {
  jr_state *st = spi__calloc(m, 1, sizeof *st);
  if (!st) return NULL;
  st->mem = *m;
  return st;
}

void spi__journal_state_free(void *state) {
  jr_state *st = state;
  if (!st) return;
  pthread_mutex_lock(&open_lock);
  for (jr_open **p = &open_dirs; *p;) {
    jr_open *o = *p;
    if (o->owner == st) {
      *p = o->next;
      spi__free(&o->mem, o);
    } else {
      p = &o->next;
    }
  }
  pthread_mutex_unlock(&open_lock);
  spi_mem m = st->mem;
  spi__free(&m, st);
}

static int state_claim(jr_state *st, dev_t dev, ino_t ino) {
  pthread_mutex_lock(&open_lock);
  int rc = SPI_OK;
  pid_t self = getpid();
  for (jr_open *o = open_dirs; o; o = o->next)
    if (o->dev == dev && o->ino == ino && o->pid == self) rc = SPI_EIO;
  if (rc == SPI_OK) {
    jr_open *o = spi__alloc(&st->mem, sizeof *o);
    if (!o) {
      rc = SPI_ENOMEM;
    } else {
      o->dev = dev;
      o->ino = ino;
      o->pid = self;
      o->owner = st;
      o->mem = st->mem;
      o->next = open_dirs;
      open_dirs = o;
    }
  }
  pthread_mutex_unlock(&open_lock);
  return rc;
}

static void state_release(jr_state *st, dev_t dev, ino_t ino) {
  pthread_mutex_lock(&open_lock);
  for (jr_open **p = &open_dirs; *p; p = &(*p)->next) {
    if ((*p)->dev == dev && (*p)->ino == ino && (*p)->owner == st) {
      jr_open *o = *p;
      *p = o->next;
      spi__free(&o->mem, o);
      break;
    }
  }
  pthread_mutex_unlock(&open_lock);
}

/* --------------------------------------------------------------- journal */

enum { FSYNC_ALWAYS = 0, FSYNC_BATCH = 1, FSYNC_NONE = 2 };
static const char *const FSYNC_NAMES[] = {"always", "batch", "none"};

#define JR_DIR_MAX 3800 /* leaves room for a file name within PATH_MAX */
#define JR_NAME_MAX 48

typedef struct journal {
  jr_state *st;
  spi_mem mem;
  char *dir;
  int dirfd, lockfd, fd;
  dev_t dev;
  ino_t ino;
  int policy;
  int64_t group_commit_ms;
  uint64_t segment_bytes;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int recovered;
  uint32_t seg_no; /* the log appended to */
  uint64_t seg_size;
  uint64_t next_seq, written_seq, synced_seq;
  int syncing; /* a leader is in fdatasync() without mu */
  int failed;  /* sticky: see the top of the file */
  char failmsg[SPI_ERRMSG_CAP];
  uint64_t bytes; /* of the files recovery reads */
  spi_replay_store_stats stats;
  spi_buf enc;
} journal;

static void jpath(const journal *j, const char *name, char *buf, size_t cap) {
  snprintf(buf, cap, "%s/%s", j->dir, name);
}

static void seg_name(uint32_t no, int snap, char *buf, size_t cap) {
  snprintf(buf, cap, "%06u.%s", (unsigned)no, snap ? "snap" : "log");
}

/* An I/O failure: message with the path and errno text, SPI_EIO. */
static int io_fail(char *err, size_t cap, const journal *j, const char *name,
                   const char *op, int errnum) {
  spi__errf(err, cap, "journal %.160s/%s: %s: %s", j->dir, name ? name : "", op,
            strerror(errnum));
  return SPI_EIO;
}

/* Sticky failure: remembered and returned by every later append. */
static int set_failed(journal *j, char *err, size_t cap, const char *name,
                      const char *op, int errnum) {
  io_fail(j->failmsg, sizeof j->failmsg, j, name, op, errnum);
  j->failed = 1;
  spi__errf(err, cap, "%s", j->failmsg);
  return SPI_EIO;
}

static int write_all(int fd, const uint8_t *p, size_t n) {
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int sync_fd(int fd) {
  int r;
  do r = fdatasync(fd);
  while (r != 0 && errno == EINTR);
  return r;
}

static int sync_dir(journal *j) {
  int r;
  do r = fsync(j->dirfd);
  while (r != 0 && errno == EINTR);
  return r;
}

static int open_seg(journal *j, const char *name, int flags) {
  char path[JR_DIR_MAX + JR_NAME_MAX + 2];
  jpath(j, name, path, sizeof path);
  int fd;
  do fd = open(path, flags | O_CLOEXEC, 0600);
  while (fd < 0 && errno == EINTR);
  return fd;
}

/* ------------------------------------------------------------- configure */

static int parse_cfg(journal *j, const char *text, size_t len, char *err,
                     size_t cap) {
  cJSON *root = NULL;
  int rc =
      spi__json_parse_object(text, len, 1u << 20, "replay", &root, err, cap);
  if (rc != SPI_OK) return rc;
  const char *dir = NULL;
  size_t dlen = 0;
  int32_t pol = FSYNC_BATCH;
  int64_t seg = 0;
  rc = spi__cfg_string(root, "replay.dir", "replay", &dir, &dlen, err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_enum(root, "replay.fsync", "replay", FSYNC_NAMES, 3, &pol,
                       err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_int(root, "replay.group_commit_ms", "replay",
                      &j->group_commit_ms, err, cap);
  if (rc == SPI_OK)
    rc = spi__cfg_int(root, "replay.segment_bytes", "replay", &seg, err, cap);
  if (rc == SPI_OK && dlen == 0) {
    spi__errf(err, cap, "replay.dir: the journal store needs a directory");
    rc = SPI_EINVAL;
  }
  if (rc == SPI_OK && (dlen > JR_DIR_MAX || memchr(dir, '\0', dlen))) {
    spi__errf(err, cap, "replay.dir: longer than %d bytes", JR_DIR_MAX);
    rc = SPI_EINVAL;
  }
  if (rc == SPI_OK) {
    while (dlen > 1 && dir[dlen - 1] == '/') dlen--;
    j->dir = spi__strndup(&j->mem, dir, dlen);
    if (!j->dir) {
      spi__errf(err, cap, "replay.dir: out of memory");
      rc = SPI_ENOMEM;
    }
  }
  j->policy = pol;
  j->segment_bytes = (uint64_t)seg;
  cJSON_Delete(root);
  return rc;
}

/* Lock the directory against other processes. */
static int take_lock(journal *j, char *err, size_t cap) {
  j->lockfd = open_seg(j, "LOCK", O_RDWR | O_CREAT);
  if (j->lockfd < 0) return io_fail(err, cap, j, "LOCK", "open", errno);
  struct flock fl;
  memset(&fl, 0, sizeof fl);
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl(j->lockfd, F_SETLK, &fl) == 0) return SPI_OK;
  int e = errno;
  if (e == EACCES || e == EAGAIN) {
    memset(&fl, 0, sizeof fl);
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    long pid = fcntl(j->lockfd, F_GETLK, &fl) == 0 ? (long)fl.l_pid : -1;
    spi__errf(err, cap, "journal %.160s: in use by process %ld", j->dir, pid);
    return SPI_EIO;
  }
  return io_fail(err, cap, j, "LOCK", "fcntl(F_SETLK)", e);
}

static void journal_free(journal *j) {
  if (j->fd >= 0) close(j->fd);
  if (j->lockfd >= 0) close(j->lockfd); /* drops the fcntl lock */
  if (j->dirfd >= 0) {
    close(j->dirfd);
    state_release(j->st, j->dev, j->ino);
  }
  pthread_cond_destroy(&j->cv);
  pthread_mutex_destroy(&j->mu);
  spi__buf_free(&j->enc, &j->mem);
  spi__free(&j->mem, j->dir);
  spi__free(&j->mem, j);
}

static int j_configure(void *state, const char *config_json, size_t config_len,
                       void **out_instance, char *err, size_t cap) {
  jr_state *st = state;
  *out_instance = NULL;
  journal *j = spi__calloc(&st->mem, 1, sizeof *j);
  if (!j) {
    spi__errf(err, cap, "journal: out of memory");
    return SPI_ENOMEM;
  }
  j->st = st;
  j->mem = st->mem;
  j->dirfd = j->lockfd = j->fd = -1;
  pthread_condattr_t ca;
  int ok = pthread_condattr_init(&ca) == 0;
  if (ok) {
    ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
         pthread_cond_init(&j->cv, &ca) == 0;
    pthread_condattr_destroy(&ca);
  }
  if (!ok || pthread_mutex_init(&j->mu, NULL) != 0) {
    if (ok) pthread_cond_destroy(&j->cv);
    spi__free(&st->mem, j);
    spi__errf(err, cap, "journal: cannot create its lock");
    return SPI_ENOMEM;
  }
  j->next_seq = 1;
  int rc = parse_cfg(j, config_json, config_len, err, cap);
  /* Small records never allocate: ack and nack cannot run out of memory. */
  if (rc == SPI_OK && spi__buf_reserve(&j->enc, &j->mem, 4096) != SPI_OK) {
    spi__errf(err, cap, "journal: out of memory");
    rc = SPI_ENOMEM;
  }
  if (rc == SPI_OK && mkdir(j->dir, 0700) != 0 && errno != EEXIST)
    rc = io_fail(err, cap, j, NULL, "mkdir", errno);
  if (rc == SPI_OK) {
    do j->dirfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    while (j->dirfd < 0 && errno == EINTR);
    if (j->dirfd < 0) rc = io_fail(err, cap, j, NULL, "open", errno);
  }
  if (rc == SPI_OK) {
    struct stat sb;
    if (fstat(j->dirfd, &sb) != 0) {
      rc = io_fail(err, cap, j, NULL, "fstat", errno);
    } else {
      j->dev = sb.st_dev;
      j->ino = sb.st_ino;
      rc = state_claim(st, j->dev, j->ino);
      if (rc == SPI_EIO)
        spi__errf(err, cap, "journal %.160s: already open in this process",
                  j->dir);
      else if (rc != SPI_OK)
        spi__errf(err, cap, "journal: out of memory");
      if (rc != SPI_OK) {
        close(j->dirfd);
        j->dirfd = -1;
      }
    }
  }
  if (rc == SPI_OK) rc = take_lock(j, err, cap);
  if (rc != SPI_OK) {
    journal_free(j);
    return rc;
  }
  *out_instance = j;
  return SPI_OK;
}

/* -------------------------------------------------------------- recovery */

typedef struct jr_file {
  uint32_t no;
  int snap;
  uint64_t size;
} jr_file;

/* "000012.log" -> 12, log; "000007.snap" -> 7, snap; else 0. */
static int parse_name(const char *name, uint32_t *no, int *snap) {
  uint64_t v = 0;
  size_t i = 0;
  while (name[i] >= '0' && name[i] <= '9' && i < 10)
    v = v * 10 + (uint64_t)(name[i++] - '0');
  if (i == 0 || v == 0 || v > UINT32_MAX - 4) return 0;
  if (strcmp(name + i, ".log") == 0)
    *snap = 0;
  else if (strcmp(name + i, ".snap") == 0)
    *snap = 1;
  else
    return 0;
  *no = (uint32_t)v;
  return 1;
}

static int cmp_file(const void *a, const void *b) {
  const jr_file *x = a, *y = b;
  if (x->no != y->no) return x->no < y->no ? -1 : 1;
  return y->snap - x->snap; /* a snapshot before a log of the same number */
}

/* The segment files, sorted; removes a leftover compact.tmp. */
static int list_files(journal *j, jr_file **out, size_t *n, uint32_t *max_no,
                      char *err, size_t cap) {
  *out = NULL;
  *n = 0;
  *max_no = 0;
  DIR *d = opendir(j->dir);
  if (!d) return io_fail(err, cap, j, NULL, "opendir", errno);
  jr_file *v = NULL;
  size_t len = 0, vcap = 0;
  int rc = SPI_OK;
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(d);
    if (!de) {
      if (errno) rc = io_fail(err, cap, j, NULL, "readdir", errno);
      break;
    }
    if (strcmp(de->d_name, "compact.tmp") == 0) {
      char path[JR_DIR_MAX + JR_NAME_MAX + 2];
      jpath(j, de->d_name, path, sizeof path);
      (void)unlink(path); /* an unfinished compaction: never committed */
      continue;
    }
    /* Any number, including set-aside files, is never reused. */
    uint64_t num = 0;
    size_t k = 0;
    while (de->d_name[k] >= '0' && de->d_name[k] <= '9' && k < 10)
      num = num * 10 + (uint64_t)(de->d_name[k++] - '0');
    if (k && num <= UINT32_MAX - 4 && num > *max_no) *max_no = (uint32_t)num;
    uint32_t no;
    int snap;
    if (!parse_name(de->d_name, &no, &snap)) continue;
    if (len == vcap) {
      size_t nc = vcap ? vcap * 2 : 16;
      jr_file *nv = spi__calloc(&j->mem, nc, sizeof *nv);
      if (!nv) {
        rc = SPI_ENOMEM;
        spi__errf(err, cap, "journal: out of memory");
        break;
      }
      if (len) memcpy(nv, v, len * sizeof *v);
      spi__free(&j->mem, v);
      v = nv;
      vcap = nc;
    }
    v[len].no = no;
    v[len].snap = snap;
    v[len].size = 0;
    len++;
  }
  closedir(d);
  if (rc != SPI_OK) {
    spi__free(&j->mem, v);
    return rc;
  }
  if (len) qsort(v, len, sizeof *v, cmp_file);
  *out = v;
  *n = len;
  return SPI_OK;
}

/* Copy bytes [from, end) of the open file fd into aside (a new file). */
static int copy_tail(journal *j, int fd, uint64_t from, const char *aside) {
  int out = open_seg(j, aside, O_WRONLY | O_CREAT | O_TRUNC);
  if (out < 0) return -1;
  uint8_t buf[8192];
  int rc = 0;
  if (lseek(fd, (off_t)from, SEEK_SET) < 0) rc = -1;
  while (rc == 0) {
    ssize_t got = read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (got < 0) rc = -1;
      break;
    }
    if (write_all(out, buf, (size_t)got) != 0) rc = -1;
  }
  if (rc == 0 && j->policy != FSYNC_NONE && sync_fd(out) != 0) rc = -1;
  int e = errno;
  close(out);
  errno = e;
  return rc;
}

/* Cut file f (open as fd) at the end of its good prefix; set the rest aside
 * when it is corruption rather than a torn tail. */
static int cut_file(journal *j, const jr_file *f, int fd, const spi_jr_scan *sc,
                    char *aside_name, size_t aside_cap, char *err, size_t cap) {
  char name[JR_NAME_MAX];
  seg_name(f->no, f->snap, name, sizeof name);
  aside_name[0] = '\0';
  if (sc->stop == SPI_JR_CORRUPT && f->size > sc->valid_bytes) {
    snprintf(aside_name, aside_cap, "%s.%llu.corrupt", name,
             (unsigned long long)sc->valid_bytes);
    if (copy_tail(j, fd, sc->valid_bytes, aside_name) != 0)
      return io_fail(err, cap, j, aside_name, "write", errno);
  }
  if (ftruncate(fd, (off_t)sc->valid_bytes) != 0)
    return io_fail(err, cap, j, name, "ftruncate", errno);
  if (j->policy != FSYNC_NONE && sync_fd(fd) != 0)
    return io_fail(err, cap, j, name, "fdatasync", errno);
  return SPI_OK;
}

/* Rename the chain's files from index from on aside, adding their sizes to
 * *bytes. */
static int set_aside_after(journal *j, jr_file *v, size_t from, size_t n,
                           uint64_t *bytes, char *err, size_t cap) {
  for (size_t k = from; k < n; k++) {
    char name[JR_NAME_MAX], aside[JR_NAME_MAX + 16];
    char p1[JR_DIR_MAX + JR_NAME_MAX + 2], p2[JR_DIR_MAX + JR_NAME_MAX + 18];
    seg_name(v[k].no, v[k].snap, name, sizeof name);
    snprintf(aside, sizeof aside, "%s.corrupt", name);
    jpath(j, name, p1, sizeof p1);
    jpath(j, aside, p2, sizeof p2);
    struct stat sb;
    if (stat(p1, &sb) == 0) *bytes += (uint64_t)sb.st_size;
    if (rename(p1, p2) != 0) return io_fail(err, cap, j, name, "rename", errno);
  }
  return SPI_OK;
}

/* Read one chain file into fn. *sc says where it stopped. */
static int read_file(journal *j, jr_file *f, int *fd_out, uint64_t after_seq,
                     spi_replay_record_fn fn, void *user, spi_buf *scratch,
                     spi_jr_scan *sc, char *err, size_t cap) {
  char name[JR_NAME_MAX];
  seg_name(f->no, f->snap, name, sizeof name);
  int fd = open_seg(j, name, O_RDWR);
  if (fd < 0) return io_fail(err, cap, j, name, "open", errno);
  struct stat sb;
  if (fstat(fd, &sb) != 0) {
    int e = errno;
    close(fd);
    return io_fail(err, cap, j, name, "fstat", e);
  }
  f->size = (uint64_t)sb.st_size;
  jr_reader r;
  memset(&r, 0, sizeof r);
  r.fd = fd;
  r.size = f->size;
  r.m = &j->mem;
  int rc = scan(&r, after_seq, fn, user, scratch, sc);
  spi__free(&j->mem, r.own);
  if (rc == SPI_EIO)
    rc = io_fail(err, cap, j, name, "read", r.err);
  else if (rc == SPI_ENOMEM)
    spi__errf(err, cap, "journal: out of memory");
  if (rc != SPI_OK) {
    close(fd);
    return rc;
  }
  *fd_out = fd;
  return SPI_OK;
}

/* Open (or create) the log appended to from now on. */
static int open_active(journal *j, const jr_file *last, uint32_t max_no,
                       int *created, char *err, size_t cap) {
  char name[JR_NAME_MAX];
  if (last && !last->snap) {
    seg_name(last->no, 0, name, sizeof name);
    j->fd = open_seg(j, name, O_WRONLY | O_APPEND);
    if (j->fd < 0) return io_fail(err, cap, j, name, "open", errno);
    j->seg_no = last->no;
    j->seg_size = last->size;
    return SPI_OK;
  }
  uint32_t no = max_no + 1;
  seg_name(no, 0, name, sizeof name);
  j->fd = open_seg(j, name, O_WRONLY | O_APPEND | O_CREAT | O_EXCL);
  if (j->fd < 0) return io_fail(err, cap, j, name, "create", errno);
  j->seg_no = no;
  j->seg_size = 0;
  *created = 1;
  return SPI_OK;
}

static int j_recover(void *state, void *instance, spi_replay_record_fn fn,
                     void *user, char *err, size_t cap) {
  (void)state;
  journal *j = instance;
  if (j->recovered) {
    spi__errf(err, cap, "journal: recover() runs once, right after open");
    return SPI_EINVAL;
  }
  jr_file *v = NULL;
  size_t n = 0;
  uint32_t max_no = 0;
  int rc = list_files(j, &v, &n, &max_no, err, cap);
  if (rc != SPI_OK) return rc;
  size_t first = 0; /* the newest snapshot starts the chain */
  for (size_t i = 0; i < n; i++)
    if (v[i].snap) first = i;
  spi_buf scratch = {0};
  spi_jr_scan sc;
  memset(&sc, 0, sizeof sc);
  uint64_t last_seq = 0;
  size_t end = n; /* chain is v[first..end) after any cut */
  int changed = 0, damaged = 0;
  char warn[SPI_ERRMSG_CAP] = "";
  for (size_t i = first; i < n && rc == SPI_OK; i++) {
    int fd = -1;
    rc = read_file(j, &v[i], &fd, last_seq, fn, user, &scratch, &sc, err, cap);
    if (rc != SPI_OK) break;
    j->stats.recovered += sc.records;
    last_seq = sc.last_seq;
    if (sc.stop != SPI_JR_END) {
      char aside[JR_NAME_MAX + 32];
      uint64_t dropped = v[i].size - sc.valid_bytes;
      /* Later segments first: killed half-way, the next recovery stops at
       * the same damaged record again instead of reading past it. */
      aside[0] = '\0';
      rc = set_aside_after(j, v, i + 1, n, &dropped, err, cap);
      if (rc == SPI_OK)
        rc = cut_file(j, &v[i], fd, &sc, aside, sizeof aside, err, cap);
      if (rc == SPI_OK) {
        char name[JR_NAME_MAX];
        seg_name(v[i].no, v[i].snap, name, sizeof name);
        spi__errf(warn, sizeof warn,
                  "journal %.96s/%s: %s record: %s; cut off %llu bytes%s%s%s",
                  j->dir, name, sc.stop == SPI_JR_TORN ? "torn" : "corrupt",
                  sc.why, (unsigned long long)dropped,
                  aside[0] ? ", kept as " : "", aside,
                  i + 1 < n ? " (later segments set aside as *.corrupt)" : "");
        j->stats.torn++;
        j->stats.truncated_bytes += dropped;
        v[i].size = sc.valid_bytes;
        end = i + 1;
        changed = damaged = 1;
      }
    }
    close(fd);
    if (damaged) break;
  }
  spi__buf_free(&scratch, &j->mem);
  int created = 0;
  if (rc == SPI_OK) {
    for (size_t i = first; i < end; i++) j->bytes += v[i].size;
    rc = open_active(j, end > first ? &v[end - 1] : NULL, max_no, &created, err,
                     cap);
  }
  if (rc == SPI_OK && created) changed = 1;
  /* Files the snapshot replaced; only once it read back whole. */
  if (rc == SPI_OK && !damaged && n && v[first].snap) {
    for (size_t i = 0; i < first; i++) {
      char name[JR_NAME_MAX], path[JR_DIR_MAX + JR_NAME_MAX + 2];
      seg_name(v[i].no, v[i].snap, name, sizeof name);
      jpath(j, name, path, sizeof path);
      if (unlink(path) == 0) changed = 1;
    }
  }
  if (rc == SPI_OK && changed && j->policy != FSYNC_NONE && sync_dir(j) != 0)
    rc = io_fail(err, cap, j, NULL, "fsync", errno);
  spi__free(&j->mem, v);
  if (rc != SPI_OK) return rc;
  j->next_seq = last_seq + 1;
  j->written_seq = j->synced_seq = last_seq;
  j->recovered = 1;
  if (warn[0]) spi__errf(err, cap, "%s", warn);
  return SPI_OK;
}

/* ---------------------------------------------------------------- append */

/* Start the next segment. Called with mu held and no leader syncing. */
static int roll(journal *j, char *err, size_t cap) {
  char name[JR_NAME_MAX];
  seg_name(j->seg_no + 1, 0, name, sizeof name);
  int fd = open_seg(j, name, O_WRONLY | O_APPEND | O_CREAT | O_EXCL);
  if (fd < 0) return io_fail(err, cap, j, name, "create", errno);
  if (j->policy != FSYNC_NONE) {
    /* The old segment must be durable before appends move on: a later
     * fdatasync() of the new file says nothing about it. */
    if (sync_fd(j->fd) != 0) {
      int e = errno;
      close(fd);
      return set_failed(j, err, cap, NULL, "fdatasync", e);
    }
    if (sync_dir(j) != 0) {
      int e = errno;
      close(fd);
      return set_failed(j, err, cap, NULL, "fsync", e);
    }
    j->synced_seq = j->written_seq;
    j->stats.syncs++;
  }
  close(j->fd);
  j->fd = fd;
  j->seg_no++;
  j->seg_size = 0;
  return SPI_OK;
}

static void wait_no_leader(journal *j) {
  while (j->syncing) pthread_cond_wait(&j->cv, &j->mu);
}

static int j_append(void *state, void *instance, const spi_replay_record *rec,
                    uint64_t *out_seq, char *err, size_t cap) {
  (void)state;
  journal *j = instance;
  pthread_mutex_lock(&j->mu);
  int rc = SPI_OK;
  if (!j->recovered) {
    spi__errf(err, cap, "journal: append before recover");
    rc = SPI_EINVAL;
  } else if (j->failed) {
    spi__errf(err, cap, "%s", j->failmsg);
    rc = SPI_EIO;
  }
  if (rc == SPI_OK) {
    spi__buf_clear(&j->enc);
    rc = spi__journal_encode(&j->enc, &j->mem, rec, j->next_seq);
    if (rc != SPI_OK)
      spi__errf(err, cap, "journal: %s",
                rc == SPI_ENOMEM ? "out of memory" : "record out of range");
  }
  if (rc == SPI_OK && j->seg_size > 0 &&
      j->seg_size + j->enc.len > j->segment_bytes) {
    wait_no_leader(j);
    rc = roll(j, err, cap);
  }
  if (rc == SPI_OK && write_all(j->fd, j->enc.data, j->enc.len) != 0) {
    int e = errno;
    char name[JR_NAME_MAX];
    seg_name(j->seg_no, 0, name, sizeof name);
    /* Never leave half a record behind a good one. */
    if (ftruncate(j->fd, (off_t)j->seg_size) != 0)
      rc = set_failed(j, err, cap, name, "write, then ftruncate", e);
    else
      rc = io_fail(err, cap, j, name, "write", e);
  }
  if (rc == SPI_OK) {
    uint64_t seq = j->next_seq++;
    j->seg_size += j->enc.len;
    j->bytes += j->enc.len;
    j->written_seq = seq;
    j->stats.appended++;
    if (j->policy == FSYNC_ALWAYS) {
      if (sync_fd(j->fd) != 0)
        rc = set_failed(j, err, cap, NULL, "fdatasync", errno);
      else {
        j->synced_seq = seq;
        j->stats.syncs++;
      }
    }
    *out_seq = seq;
  }
  pthread_mutex_unlock(&j->mu);
  return rc;
}

/* ------------------------------------------------------------------ sync */

static void deadline_after_ms(struct timespec *ts, int64_t ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  int64_t ns = (int64_t)ts->tv_nsec + (ms % 1000) * 1000000;
  ts->tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
  ts->tv_nsec = (long)(ns % 1000000000);
}

/* With mu held: one fdatasync() as the leader, for everything written so
 * far; mu is released during the call so others can append and queue up. */
static void lead_sync(journal *j) {
  j->syncing = 1;
  if (j->group_commit_ms > 0) {
    struct timespec until;
    deadline_after_ms(&until, j->group_commit_ms);
    while (pthread_cond_timedwait(&j->cv, &j->mu, &until) == 0) {
    }
  }
  uint64_t target = j->written_seq;
  int fd = j->fd;
  pthread_mutex_unlock(&j->mu);
  int r = sync_fd(fd);
  int e = errno;
  pthread_mutex_lock(&j->mu);
  j->syncing = 0;
  if (r != 0) {
    char tmp[8];
    set_failed(j, tmp, sizeof tmp, NULL, "fdatasync", e);
  } else {
    if (target > j->synced_seq) j->synced_seq = target;
    j->stats.syncs++;
  }
  pthread_cond_broadcast(&j->cv);
}

static int j_sync(void *state, void *instance, uint64_t seq, char *err,
                  size_t cap) {
  (void)state;
  journal *j = instance;
  pthread_mutex_lock(&j->mu);
  if (seq > j->written_seq) seq = j->written_seq;
  if (j->policy == FSYNC_BATCH) {
    while (j->synced_seq < seq && !j->failed) {
      if (j->syncing)
        pthread_cond_wait(&j->cv, &j->mu);
      else
        lead_sync(j);
    }
  }
  int rc = SPI_OK;
  if (j->failed && (j->policy == FSYNC_NONE ? 0 : j->synced_seq < seq)) {
    spi__errf(err, cap, "%s", j->failmsg);
    rc = SPI_EIO;
  }
  pthread_mutex_unlock(&j->mu);
  return rc;
}

/* ------------------------------------------------------------ compaction */

static void unlink_name(journal *j, const char *name) {
  char path[JR_DIR_MAX + JR_NAME_MAX + 2];
  jpath(j, name, path, sizeof path);
  (void)unlink(path);
}

/* Write recs to compact.tmp with sequences from *seq on; syncs it. */
static int write_snapshot(journal *j, const spi_replay_record *recs, size_t n,
                          uint64_t *seq, uint64_t *size, char *err,
                          size_t cap) {
  int fd = open_seg(j, "compact.tmp", O_WRONLY | O_CREAT | O_TRUNC);
  if (fd < 0) return io_fail(err, cap, j, "compact.tmp", "create", errno);
  spi_buf b = {0};
  int rc = SPI_OK;
  *size = 0;
  for (size_t i = 0; i <= n && rc == SPI_OK; i++) {
    if (i < n) {
      rc = spi__journal_encode(&b, &j->mem, &recs[i], (*seq)++);
      if (rc != SPI_OK) {
        spi__errf(err, cap, "journal: compaction: %s",
                  rc == SPI_ENOMEM ? "out of memory" : "record out of range");
        break;
      }
    }
    if (b.len >= (1u << 20) || (i == n && b.len)) {
      if (write_all(fd, b.data, b.len) != 0) {
        rc = io_fail(err, cap, j, "compact.tmp", "write", errno);
        break;
      }
      *size += b.len;
      spi__buf_clear(&b);
    }
  }
  spi__buf_free(&b, &j->mem);
  if (rc == SPI_OK && j->policy != FSYNC_NONE && sync_fd(fd) != 0)
    rc = io_fail(err, cap, j, "compact.tmp", "fdatasync", errno);
  close(fd);
  if (rc != SPI_OK) unlink_name(j, "compact.tmp");
  return rc;
}

static int j_compact(void *state, void *instance, const spi_replay_record *recs,
                     size_t n, char *err, size_t cap) {
  (void)state;
  journal *j = instance;
  pthread_mutex_lock(&j->mu);
  int rc = SPI_OK;
  if (!j->recovered || j->failed) {
    spi__errf(err, cap, "%s",
              j->failed ? j->failmsg : "journal: not recovered");
    pthread_mutex_unlock(&j->mu);
    return j->failed ? SPI_EIO : SPI_EINVAL;
  }
  wait_no_leader(j);
  uint64_t seq = j->next_seq, size = 0;
  uint32_t snap_no = j->seg_no + 1, log_no = j->seg_no + 2;
  char snap[JR_NAME_MAX], logname[JR_NAME_MAX];
  seg_name(snap_no, 1, snap, sizeof snap);
  seg_name(log_no, 0, logname, sizeof logname);
  rc = write_snapshot(j, recs, n, &seq, &size, err, cap);
  int fd = -1;
  if (rc == SPI_OK) {
    fd = open_seg(j, logname, O_WRONLY | O_APPEND | O_CREAT | O_EXCL);
    if (fd < 0) {
      rc = io_fail(err, cap, j, logname, "create", errno);
      unlink_name(j, "compact.tmp");
    }
  }
  if (rc == SPI_OK) {
    char p1[JR_DIR_MAX + JR_NAME_MAX + 2], p2[JR_DIR_MAX + JR_NAME_MAX + 2];
    jpath(j, "compact.tmp", p1, sizeof p1);
    jpath(j, snap, p2, sizeof p2);
    if (rename(p1, p2) != 0) {
      rc = io_fail(err, cap, j, snap, "rename", errno);
      close(fd);
      unlink_name(j, logname);
      unlink_name(j, "compact.tmp");
    }
  }
  if (rc == SPI_OK) {
    /* Committed once the directory is synced. Appends go to the new log
     * either way: if the rename was lost, the old logs still hold the whole
     * history and the new log sorts after them. */
    close(j->fd);
    j->fd = fd;
    j->seg_no = log_no;
    j->seg_size = 0;
    j->next_seq = seq;
    j->written_seq = seq - 1;
    j->stats.compactions++;
    if (j->policy != FSYNC_NONE && sync_dir(j) != 0) {
      rc = set_failed(j, err, cap, NULL, "fsync", errno);
    } else {
      j->synced_seq = j->written_seq;
      /* Now the snapshot replaces every older file. */
      jr_file *v = NULL;
      size_t nf = 0;
      uint32_t max_no = 0;
      char tmp[SPI_ERRMSG_CAP];
      if (list_files(j, &v, &nf, &max_no, tmp, sizeof tmp) == SPI_OK) {
        for (size_t i = 0; i < nf; i++) {
          if (v[i].no >= snap_no) continue;
          char name[JR_NAME_MAX];
          seg_name(v[i].no, v[i].snap, name, sizeof name);
          unlink_name(j, name);
        }
        spi__free(&j->mem, v);
        if (j->policy != FSYNC_NONE) (void)sync_dir(j);
      }
      j->bytes = size;
    }
  }
  pthread_mutex_unlock(&j->mu);
  return rc;
}

/* ------------------------------------------------------- stats and close */

static int j_stats(void *state, void *instance, spi_replay_store_stats *out) {
  (void)state;
  journal *j = instance;
  if (!out || out->struct_size < sizeof *out) return SPI_EINVAL;
  pthread_mutex_lock(&j->mu);
  *out = j->stats;
  out->struct_size = sizeof *out;
  out->bytes = j->bytes;
  pthread_mutex_unlock(&j->mu);
  return SPI_OK;
}

static void j_release(void *state, void *instance) {
  (void)state;
  journal *j = instance;
  if (!j) return;
  pthread_mutex_lock(&j->mu);
  wait_no_leader(j);
  /* Flush and close, whatever the policy. */
  if (j->fd >= 0 && !j->failed && j->written_seq > j->synced_seq)
    (void)sync_fd(j->fd);
  pthread_mutex_unlock(&j->mu);
  journal_free(j);
}

void spi__builtin_store_journal(spi_replay_store_module *out) {
  memset(out, 0, sizeof *out);
  out->abi_version = SPI_MODULE_ABI_VERSION;
  out->struct_size = sizeof *out;
  out->on_failure = SPI_ON_FAILURE_ERROR;
  out->configure = j_configure;
  out->release = j_release;
  out->recover = j_recover;
  out->append = j_append;
  out->sync = j_sync;
  out->compact = j_compact;
  out->stats = j_stats;
}
