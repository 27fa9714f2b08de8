/*
 * test_journal.c - the journal store: CRC-32C vectors, record framing, the
 * round trip through close and recovery, torn tails cut at every byte of the
 * last record, bit flips caught by the checksum (a flipped length read
 * back by the length the payload gives), damage in an earlier
 * segment, compaction (forced, automatic, and interrupted at its commit
 * point), fsync policies and shared syncs, segment rolling, the directory
 * lock, and allocation failures during recovery. Each test works in a fresh
 * mkdtemp() directory and removes it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "journal_files.h"
#include "replay_helpers.h"
#include "std_mem.h"

#include "engine.h"
#include "replay.h"

#define NOTHING_READY RQ_NOTHING_READY
#define MS 1000000LL
#define T0 (1700000000LL * 1000000000LL)
#define ALL RQ_ALL

/* ---------------------------------------------------------------- helpers */

typedef struct fixture {
  rq_hooks h; /* the engine's clock and allocator */
  spi_engine *e;
  spi_replay_queue *q;
  char dir[256];
  int quiet; /* no message for a failed open */
} fixture;

static fixture *setup(void) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->h.now = T0;
  f->h.fail_at = -1;
  rq_tmpdir(f->dir, sizeof f->dir, "journal");
  spi_hooks h = rq_hooks_of(&f->h);
  assert_int_equal(spi_engine_new(&f->e, &h), SPI_OK);
  return f;
}

static void teardown(fixture *f) {
  spi_replay_close(f->q);
  spi_engine_free(f->e);
  assert_int_equal(f->h.allocs, f->h.frees);
  rm_rf(f->dir);
  free(f);
}

/* Open a journal queue on f->dir; extra is more JSON members or "". */
static int open_j(fixture *f, const char *extra) {
  int rc = rq_open_journal(f->e, f->dir, extra, &f->q);
  if (rc != SPI_OK && !f->quiet)
    print_message("open: %s\n", spi_engine_errmsg(f->e));
  return rc;
}

static void close_q(fixture *f) {
  spi_replay_close(f->q);
  f->q = NULL;
}

static void reopen(fixture *f, const char *extra) {
  close_q(f);
  assert_int_equal(open_j(f, extra), SPI_OK);
}

static spi_envelope env_of(const char *key, int32_t klass) {
  spi_envelope v = rq_envelope(
      key, klass,
      "{\"model\":\"m\",\"prompt\":\"Tell me a story\",\"max_tokens\":64}");
  v.openai_kind = SPI_OPENAI_COMPLETIONS;
  return v;
}

static void enqueue(fixture *f, const char *key, int32_t klass) {
  spi_envelope v = env_of(key, klass);
  rq_enqueue(f->q, &v);
}

/* Enqueue <prefix>0 .. <prefix><n-1> in lane klass. */
static void enqueue_n(fixture *f, const char *prefix, int n, int32_t klass) {
  spi_envelope v = env_of("", klass);
  rq_enqueue_keys(f->q, &v, prefix, n);
}

static int is_dup(fixture *f, const char *key) {
  spi_envelope v = env_of(key, SPI_CLASS_BRONZE);
  return rq_is_dup(f->q, &v);
}

typedef rq_claimed claimed;

static int claim(fixture *f, claimed *c) { return rq_claim(f->q, ALL, 0, c); }

static spi_replay_stats stats(fixture *f) { return rq_stats(f->q); }

/* A caller built against 0.1.0 passes the struct as it was then (up to
 * journal_bytes): it is filled that far and not a byte further. */
static void check_v1_stats(fixture *f) {
  union {
    spi_replay_stats s;
    unsigned char b[sizeof(spi_replay_stats)];
  } u;
  memset(&u, 0xab, sizeof u);
  size_t v1 = offsetof(spi_replay_stats, journal_bytes) + sizeof(uint64_t);
  u.s.struct_size = v1;
  assert_int_equal(spi_replay_stats_get(f->q, &u.s), SPI_OK);
  assert_int_equal(u.s.struct_size, v1);
  for (size_t i = v1; i < sizeof u; i++) assert_int_equal(u.b[i], 0xab);
  u.s.struct_size = v1 - 1;
  assert_int_equal(spi_replay_stats_get(f->q, &u.s), SPI_EINVAL);
}

static spi_replay_store_stats sstats(fixture *f) {
  spi_replay_store_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  assert_int_equal(spi__replay_store_stats(f->q, &s), SPI_OK);
  return s;
}

static uint64_t ready(fixture *f) {
  spi_replay_stats s = stats(f);
  return s.ready[1] + s.ready[2] + s.ready[3];
}

static void seg_path(fixture *f, int no, const char *ext, char *buf,
                     size_t cap) {
  snprintf(buf, cap, "%s/%06d.%s", f->dir, no, ext);
}

/* ------------------------------------------------------------------ CRC */

static void test_crc32c(void **st) {
  (void)st;
  assert_int_equal(spi__crc32c(0, "123456789", 9), 0xe3069283u);
  uint8_t b[32];
  memset(b, 0, sizeof b);
  assert_int_equal(spi__crc32c(0, b, 32), 0x8a9136aau); /* RFC 3720 B.4 */
  memset(b, 0xff, sizeof b);
  assert_int_equal(spi__crc32c(0, b, 32), 0x62a8ab43u);
  for (int i = 0; i < 32; i++) b[i] = (uint8_t)i;
  assert_int_equal(spi__crc32c(0, b, 32), 0x46dd794eu);
  for (int i = 0; i < 32; i++) b[i] = (uint8_t)(31 - i);
  assert_int_equal(spi__crc32c(0, b, 32), 0x113fdb5cu);
  assert_int_equal(spi__crc32c(0, NULL, 0), 0);
  /* Incremental equals one pass. */
  assert_int_equal(spi__crc32c(spi__crc32c(0, "12345", 5), "6789", 4),
                   0xe3069283u);
}

/* ------------------------------------------------------------- framing */

typedef struct collected {
  int n;
  spi_replay_record recs[8];
  char keys[8][130];
  char bodies[8][128];
  uint32_t toks[8][4];
  spi_envelope envs[8];
} collected;

static int collect(void *user, const spi_replay_record *rec) {
  collected *c = user;
  int i = c->n++;
  c->recs[i] = *rec;
  memcpy(c->keys[i], rec->key, rec->key_len);
  if (rec->envelope) {
    c->envs[i] = *rec->envelope;
    memcpy(c->bodies[i], rec->envelope->body, rec->envelope->body_len);
    memcpy(c->toks[i], rec->envelope->partial_tokens,
           4 * rec->envelope->partial_token_count);
  }
  return SPI_OK;
}

static size_t build_records(spi_buf *b) {
  static const uint32_t toks[] = {5, 6, 7};
  spi_envelope v = env_of("key-1", SPI_CLASS_GOLD);
  v.partial_text = "abc";
  v.partial_text_len = 3;
  v.partial_tokens = toks;
  v.partial_token_count = 3;
  v.stream_offset = 3;
  v.attempts = 2;
  v.flags = 1;
  v.first_enqueued_ns = 42;
  v.deadline_ns = -7; /* any value round-trips */
  strcpy(v.tenant, "t");
  spi_replay_record r[4];
  memset(r, 0, sizeof r);
  for (int i = 0; i < 4; i++) {
    r[i].struct_size = sizeof r[i];
    r[i].key = "key-1";
    r[i].key_len = 5;
  }
  r[0].type = SPI_REPLAY_REC_ENQUEUE;
  r[0].envelope = &v;
  r[1].type = SPI_REPLAY_REC_NACK;
  r[1].attempts = 3;
  r[1].visible_ns = 123456789;
  r[2].type = SPI_REPLAY_REC_DEAD;
  r[2].attempts = 4;
  r[3].type = SPI_REPLAY_REC_ACK;
  for (int i = 0; i < 4; i++)
    assert_int_equal(spi__journal_encode(b, &MEM, &r[i], (uint64_t)(10 + i)),
                     SPI_OK);
  return 4;
}

static void test_framing(void **st) {
  (void)st;
  spi_buf b = {0};
  build_records(&b);
  collected c;
  memset(&c, 0, sizeof c);
  spi_jr_scan sc;
  assert_int_equal(
      spi__journal_scan_mem(&MEM, b.data, b.len, 0, collect, &c, &sc), SPI_OK);
  assert_int_equal(sc.stop, SPI_JR_END);
  assert_int_equal(sc.records, 4);
  assert_int_equal(sc.valid_bytes, b.len);
  assert_int_equal(sc.last_seq, 13);
  assert_int_equal(c.recs[0].type, SPI_REPLAY_REC_ENQUEUE);
  assert_string_equal(c.keys[0], "key-1");
  assert_int_equal(c.envs[0].klass, SPI_CLASS_GOLD);
  assert_int_equal(c.envs[0].openai_kind, SPI_OPENAI_COMPLETIONS);
  assert_int_equal(c.envs[0].attempts, 2);
  assert_int_equal(c.envs[0].flags, 1);
  assert_int_equal(c.envs[0].stream_offset, 3);
  assert_int_equal(c.envs[0].first_enqueued_ns, 42);
  assert_int_equal(c.envs[0].deadline_ns, -7);
  assert_string_equal(c.envs[0].tenant, "t");
  assert_int_equal(c.envs[0].partial_text_len, 3);
  assert_int_equal(c.envs[0].partial_token_count, 3);
  assert_int_equal(c.toks[0][2], 7);
  assert_string_equal(c.bodies[0], env_of("x", 1).body);
  assert_int_equal(c.recs[1].type, SPI_REPLAY_REC_NACK);
  assert_int_equal(c.recs[1].attempts, 3);
  assert_int_equal(c.recs[1].visible_ns, 123456789);
  assert_int_equal(c.recs[2].type, SPI_REPLAY_REC_DEAD);
  assert_int_equal(c.recs[2].attempts, 4);
  assert_int_equal(c.recs[3].type, SPI_REPLAY_REC_ACK);

  /* Every prefix: the complete records, then a torn one (or a clean end). */
  size_t ends[4];
  size_t at = 0;
  for (int i = 0; i < 4; i++) {
    spi_jr_scan one;
    assert_int_equal(spi__journal_scan_mem(&MEM, b.data + at, b.len - at, 0,
                                           NULL, NULL, &one),
                     SPI_OK);
    /* The first record of what is left ends where the next starts. */
    uint32_t len = (uint32_t)b.data[at + 8] | (uint32_t)b.data[at + 9] << 8 |
                   (uint32_t)b.data[at + 10] << 16 |
                   (uint32_t)b.data[at + 11] << 24;
    at += SPI_JR_HEADER_BYTES + len + SPI_JR_TRAILER_BYTES;
    ends[i] = at;
  }
  assert_int_equal(at, b.len);
  for (size_t cut = 0; cut <= b.len; cut++) {
    int whole = 0;
    while (whole < 4 && ends[whole] <= cut) whole++;
    assert_int_equal(
        spi__journal_scan_mem(&MEM, b.data, cut, 0, NULL, NULL, &sc), SPI_OK);
    assert_int_equal(sc.records, whole);
    size_t good = whole ? ends[whole - 1] : 0;
    assert_int_equal(sc.valid_bytes, good);
    assert_int_equal(sc.stop, cut == good ? SPI_JR_END : SPI_JR_TORN);
  }
  /* Every single bit flip: the checksum (or the header check) catches it,
   * the damaged record alone is lost, and the scan resynchronises on the
   * record after it (skipped) unless it was the last one (the tail). A flip
   * in a length field, up or down, loses nothing: the record is read by the
   * length its payload gives, and counted as repaired. */
  for (size_t i = 0; i < b.len; i++) {
    for (int bit = 0; bit < 8; bit++) {
      b.data[i] ^= (uint8_t)(1u << bit);
      assert_int_equal(
          spi__journal_scan_mem(&MEM, b.data, b.len, 0, NULL, NULL, &sc),
          SPI_OK);
      b.data[i] ^= (uint8_t)(1u << bit);
      int rec = 0;
      while (ends[rec] <= i) rec++;
      size_t from = rec ? ends[rec - 1] : 0;
      if (i >= from + 8 && i < from + 12) {
        assert_int_equal(sc.records, 4);
        assert_int_equal(sc.repaired, 1);
        assert_int_equal(sc.repaired_at, from);
        assert_int_equal(sc.skipped, 0);
        assert_int_equal(sc.stop, SPI_JR_END);
        assert_int_equal(sc.valid_bytes, b.len);
        assert_int_equal(sc.last_seq, 13);
        continue;
      }
      assert_int_equal(sc.repaired, 0);
      assert_int_equal(sc.records, 3);
      assert_true(sc.first_bad <= i);
      if (rec == 3) {
        assert_int_not_equal(sc.stop, SPI_JR_END);
        assert_int_equal(sc.skipped, 0);
        assert_int_equal(sc.valid_bytes, ends[2]);
      } else {
        assert_int_equal(sc.stop, SPI_JR_END);
        assert_int_equal(sc.skipped, 1);
        assert_int_equal(sc.skipped_bytes, ends[rec] - from);
        assert_int_equal(sc.valid_bytes, b.len);
      }
    }
  }
  /* Sequences must increase. */
  assert_int_equal(
      spi__journal_scan_mem(&MEM, b.data, b.len, 10, NULL, NULL, &sc), SPI_OK);
  assert_int_equal(sc.records, 3); /* the first (10) is not past 10 */
  assert_int_equal(sc.skipped, 1);
  assert_int_equal(sc.stop, SPI_JR_END);
  assert_non_null(strstr(sc.why, "sequence"));
  /* A checksummed but inconsistent payload (key length past the end). */
  spi_buf b2 = {0};
  spi_replay_record ack;
  memset(&ack, 0, sizeof ack);
  ack.struct_size = sizeof ack;
  ack.type = SPI_REPLAY_REC_ACK;
  ack.key = "k";
  ack.key_len = 1;
  assert_int_equal(spi__journal_encode(&b2, &MEM, &ack, 1), SPI_OK);
  b2.data[SPI_JR_HEADER_BYTES + 1] = 9; /* key_len */
  uint32_t crc = spi__crc32c(0, b2.data, b2.len - 4);
  for (int k = 0; k < 4; k++)
    b2.data[b2.len - 4 + (size_t)k] = (uint8_t)(crc >> (8 * k));
  assert_int_equal(
      spi__journal_scan_mem(&MEM, b2.data, b2.len, 0, NULL, NULL, &sc), SPI_OK);
  assert_int_equal(sc.stop, SPI_JR_CORRUPT);
  assert_non_null(strstr(sc.why, "payload"));
  /* Out-of-range records are not encoded. */
  ack.key_len = 129;
  assert_int_equal(spi__journal_encode(&b2, &MEM, &ack, 2), SPI_EINVAL);
  ack.key_len = 1;
  ack.type = 9;
  assert_int_equal(spi__journal_encode(&b2, &MEM, &ack, 2), SPI_EINVAL);
  spi__buf_free(&b2, &MEM);
  spi__buf_free(&b, &MEM);
}

/* --------------------------------------------------------- round trip */

static void test_round_trip(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, "\"max_attempts\":2,\"backoff_base_ms\":1000,"
                             "\"backoff_max_ms\":1000,\"backoff_jitter\":0"),
                   SPI_OK);
  static const uint32_t toks[] = {11, 22, 33};
  spi_envelope v = env_of("full", SPI_CLASS_SILVER);
  v.partial_text = "Once upon a time";
  v.partial_text_len = 16;
  v.partial_tokens = toks;
  v.partial_token_count = 3;
  v.stream_offset = 3;
  v.deadline_ns = T0 + 3600000 * MS;
  strcpy(v.tenant, "acme");
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_OK);
  enqueue(f, "acked", SPI_CLASS_GOLD);
  enqueue(f, "delayed", SPI_CLASS_GOLD);
  enqueue(f, "dead", SPI_CLASS_GOLD);
  enqueue(f, "leased", SPI_CLASS_BRONZE);
  claimed c;
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "acked");
  assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "delayed");
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "dead");
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  f->h.now += 1000 * MS;
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "delayed");
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK); /* 2nd: dead */
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "dead");
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  enqueue(f, "delayed2", SPI_CLASS_GOLD);
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "full");
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "leased");
  spi_replay_stats before = stats(f);
  assert_int_equal(before.dead, 2);
  assert_int_equal(before.delayed, 1);
  assert_int_equal(before.leased, 2);
  assert_true(before.journal_bytes > 0);

  reopen(f, "");
  spi_replay_stats s = stats(f);
  assert_int_equal(s.dead, 2);
  assert_int_equal(s.delayed, 1);
  assert_int_equal(s.leased, 0); /* leases are not durable: ready again */
  assert_int_equal(s.ready[SPI_CLASS_SILVER], 1);
  assert_int_equal(s.ready[SPI_CLASS_BRONZE], 1);
  assert_int_equal(s.journal_bytes, before.journal_bytes);
  assert_int_equal(sstats(f).recovered, 12);
  assert_int_equal(sstats(f).torn, 0);
  assert_string_equal(spi_replay_errmsg(f->q), "");
  assert_int_equal(is_dup(f, "acked"), 1);
  assert_int_equal(is_dup(f, "dead"), 1);
  assert_int_equal(is_dup(f, "delayed2"), 1);
  /* The envelope comes back byte for byte. */
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "full");
  assert_int_equal(c.env.body_len, v.body_len);
  assert_memory_equal(c.env.body, v.body, v.body_len);
  assert_memory_equal(c.env.partial_text, v.partial_text, 16);
  assert_memory_equal(c.env.partial_tokens, toks, sizeof toks);
  assert_int_equal(c.env.stream_offset, 3);
  assert_int_equal(c.env.first_enqueued_ns, T0);
  assert_int_equal(c.env.deadline_ns, v.deadline_ns);
  assert_string_equal(c.env.tenant, "acme");
  assert_int_equal(c.env.openai_kind, SPI_OPENAI_COMPLETIONS);
  /* The delayed one waits out its backoff across the restart. */
  f->h.now += 1000 * MS;
  assert_int_equal(stats(f).delayed, 0);
  teardown(f);
}

/* ---------------------------------------------------------- torn tails */

/* Ten enqueues r0..r9 into 000001.log (its name in path): the file's
 * bytes (malloc'd, *len of them), and the byte range of the last record. */
static uint8_t *ten_records(fixture *f, char *path, size_t cap, size_t *len,
                            uint64_t *start, uint64_t *end) {
  assert_int_equal(open_j(f, ""), SPI_OK);
  enqueue_n(f, "r", 9, SPI_CLASS_SILVER);
  *start = sstats(f).bytes;
  enqueue(f, "r9", SPI_CLASS_SILVER);
  *end = sstats(f).bytes;
  close_q(f);
  seg_path(f, 1, "log", path, cap);
  return read_all(path, len);
}

static void test_torn_tail_every_offset(void **st) {
  (void)st;
  fixture *f = setup();
  uint64_t start, end;
  char path[512];
  size_t len = 0;
  uint8_t *orig = ten_records(f, path, sizeof path, &len, &start, &end);
  assert_int_equal(len, end);
  for (uint64_t cut = start; cut < end; cut++) {
    write_all(path, orig, (size_t)cut);
    assert_int_equal(open_j(f, ""), SPI_OK);
    spi_replay_store_stats ss = sstats(f);
    assert_int_equal(ready(f), 9);
    assert_int_equal(ss.recovered, 9);
    assert_int_equal(ss.torn, cut > start ? 1 : 0);
    assert_int_equal(ss.truncated_bytes, cut - start);
    /* The public stats say the same. */
    spi_replay_stats ps = stats(f);
    assert_int_equal(ps.recovered, 9);
    assert_int_equal(ps.torn, ss.torn);
    assert_int_equal(ps.truncated_bytes, ss.truncated_bytes);
    if (cut > start) {
      assert_non_null(strstr(spi_replay_errmsg(f->q), "torn record"));
      assert_non_null(strstr(spi_replay_errmsg(f->q), "000001.log"));
    } else {
      assert_string_equal(spi_replay_errmsg(f->q), "");
    }
    assert_int_equal(is_dup(f, "r8"), 1);
    assert_int_equal(is_dup(f, "r0"), 1);
    if (cut == start) check_v1_stats(f);
    /* The cut was made durable: the next open is clean, and appends after
     * it read back. */
    enqueue(f, "after", SPI_CLASS_GOLD);
    reopen(f, "");
    assert_int_equal(sstats(f).torn, 0);
    assert_int_equal(ready(f), 10);
    assert_int_equal(count_suffix(f->dir, ".corrupt"),
                     0); /* torn: nothing kept */
    close_q(f);
  }
  free(orig);
  teardown(f);
}

/* --------------------------------------------------------- bit flips */

static void test_bit_flips(void **st) {
  (void)st;
  fixture *f = setup();
  uint64_t start, end;
  char path[512];
  size_t len = 0;
  uint8_t *orig = ten_records(f, path, sizeof path, &len, &start, &end);
  uint8_t *copy = malloc(len);
  assert_non_null(copy);
  for (uint64_t at = start; at < end; at++) {
    memcpy(copy, orig, len);
    copy[at] ^= (uint8_t)(1u << (at % 8));
    write_all(path, copy, len);
    assert_int_equal(open_j(f, ""), SPI_OK);
    spi_replay_store_stats ss = sstats(f);
    const char *msg = spi_replay_errmsg(f->q);
    /* A flipped length loses nothing (the record is read by the length its
     * payload gives); anything else is corruption, whose bytes are kept
     * aside. */
    int in_length = at >= start + 8 && at < start + 12;
    assert_int_equal(ss.recovered, in_length ? 10 : 9);
    assert_int_equal(ss.torn, in_length ? 0 : 1);
    assert_int_equal(ready(f), in_length ? 10 : 9);
    assert_int_equal(count_suffix(f->dir, ".corrupt"), in_length ? 0 : 1);
    assert_non_null(
        strstr(msg, in_length ? "damaged length field" : "corrupt record"));
    close_q(f);
    /* Clean up what was kept aside for the next round. */
    remove_suffix(f->dir, ".corrupt");
  }
  /* A flip in the middle: recovery skips that record alone and reads the
   * five after it; the segment is left as it is, so the damage is still
   * there (and reported) on the next open, and nothing is set aside. */
  memcpy(copy, orig, len);
  uint64_t rs = start / 9;                        /* ten records of one size */
  copy[4 * rs + SPI_JR_HEADER_BYTES + 9] ^= 0x10; /* 5th record's attempts */
  write_all(path, copy, len);
  for (int open_no = 0; open_no < 2; open_no++) {
    assert_int_equal(open_j(f, ""), SPI_OK);
    assert_int_equal(ready(f), 9);
    /* The records after the damaged one are there. */
    assert_int_equal(is_dup(f, "r5"), 1);
    assert_int_equal(is_dup(f, "r9"), 1);
    assert_non_null(strstr(spi_replay_errmsg(f->q), "checksum"));
    spi_replay_store_stats ss = sstats(f);
    assert_int_equal(ss.torn, 1);
    assert_int_equal(ss.skipped, 1);
    assert_int_equal(ss.skipped_bytes, rs);
    assert_int_equal(stats(f).skipped, 1);
    assert_int_equal(count_suffix(f->dir, ".corrupt"), 0);
    close_q(f);
  }
  f->q = NULL;
  free(copy);
  free(orig);
  teardown(f);
}

/* Damage at the end of an early segment: every later segment is still
 * read, and the damaged segment is left in place. */
static void test_damage_in_earlier_segment(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, "\"segment_bytes\":4096"), SPI_OK);
  enqueue_n(f, "s", 120, SPI_CLASS_GOLD);
  close_q(f);
  int logs = count_suffix(f->dir, ".log");
  assert_true(logs >= 3);
  char path[512];
  seg_path(f, 1, "log", path, sizeof path);
  size_t len = 0;
  uint8_t *b = read_all(path, &len);
  b[len - 3] ^= 1; /* the checksum of the last record of segment 1 */
  write_all(path, b, len);
  free(b);
  assert_int_equal(open_j(f, "\"segment_bytes\":4096"), SPI_OK);
  uint64_t n = ready(f);
  assert_int_equal(n, 119); /* all but the damaged record */
  assert_int_equal(sstats(f).torn, 1);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "later segments were read"));
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 0);
  assert_int_equal(count_suffix(f->dir, ".log"), logs);
  /* Appends continue in the last segment, and recover with the rest; the
   * damage is reported again. */
  enqueue(f, "new", SPI_CLASS_GOLD);
  reopen(f, "\"segment_bytes\":4096");
  assert_int_equal(ready(f), n + 1);
  assert_int_equal(sstats(f).torn, 1);
  /* A compaction replaces the damaged segment: it is kept aside whole, and
   * every later open names it until it is removed. */
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  assert_int_equal(count_suffix(f->dir, ".log.corrupt"), 1);
  reopen(f, "\"segment_bytes\":4096");
  assert_int_equal(ready(f), n + 1);
  assert_int_equal(sstats(f).torn, 0);
  assert_int_equal(sstats(f).aside_files, 1);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "kept for inspection"));
  teardown(f);
}

/* ---------------------------------------------------------- compaction */

static void test_compaction(void **st) {
  (void)st;
  fixture *f = setup();
  const char *cfg = "\"max_attempts\":1,\"compact_min_bytes\":1000000000000";
  assert_int_equal(open_j(f, cfg), SPI_OK);
  char key[32];
  for (int i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "c%03d", i);
    enqueue(f, key, 1 + i % 3);
  }
  claimed c;
  /* Ack 180, dead-letter 5, leave 5 leased and 10 ready. */
  for (int i = 0; i < 190; i++) {
    assert_int_equal(claim(f, &c), SPI_OK);
    if (i < 180)
      assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
    else if (i < 185)
      assert_int_equal(spi_replay_nack(f->q, c.id), SPI_OK);
  }
  spi_replay_stats s = stats(f);
  uint64_t big = s.journal_bytes;
  assert_int_equal(s.dead, 5);
  assert_int_equal(s.leased, 5);
  assert_int_equal(ready(f), 10);
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  spi_replay_store_stats ss = sstats(f);
  assert_int_equal(ss.compactions, 1);
  assert_true(ss.bytes < big / 2);
  assert_int_equal(count_suffix(f->dir, ".snap"), 1);
  assert_int_equal(count_suffix(f->dir, ".log"), 1);
  /* Exactly the live records come back, and the acked keys stay known. */
  enqueue(f, "after", SPI_CLASS_GOLD);
  reopen(f, cfg);
  s = stats(f);
  assert_int_equal(s.dead, 5);
  assert_int_equal(ready(f), 10 + 5 + 1);
  assert_int_equal(sstats(f).recovered, 180 + 5 * 2 + 15 + 1);
  for (int i = 0; i < 200; i++) {
    snprintf(key, sizeof key, "c%03d", i);
    assert_int_equal(is_dup(f, key), 1);
  }
  assert_int_equal(stats(f).duplicates, 200);
  teardown(f);
}

static void test_compaction_automatic(void **st) {
  (void)st;
  fixture *f = setup();
  const char *cfg = "\"compact_min_bytes\":16384,\"max_acked_keys\":100";
  assert_int_equal(open_j(f, cfg), SPI_OK);
  char key[32];
  claimed c;
  uint64_t peak = 0;
  for (int i = 0; i < 3000; i++) {
    snprintf(key, sizeof key, "auto-%d", i);
    enqueue(f, key, SPI_CLASS_SILVER);
    assert_int_equal(claim(f, &c), SPI_OK);
    assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
    uint64_t b = sstats(f).bytes;
    if (b > peak) peak = b;
  }
  assert_true(sstats(f).compactions >= 5);
  assert_true(peak < 3 * 16384 + 4096);
  reopen(f, cfg);
  assert_int_equal(ready(f), 0);
  assert_int_equal(is_dup(f, "auto-2999"), 1);
  assert_int_equal(is_dup(f, "auto-0"),
                   0); /* forgotten: beyond max_acked_keys */
  teardown(f);
}

/* A crash after the snapshot's rename but before the old files were
 * removed: recovery reads the snapshot, ignores and removes the rest. A
 * leftover compact.tmp is never read. */
static void test_compaction_interrupted(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, ""), SPI_OK);
  enqueue(f, "a", SPI_CLASS_GOLD);
  enqueue(f, "b", SPI_CLASS_GOLD);
  claimed c;
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
  char path[512];
  seg_path(f, 1, "log", path, sizeof path);
  size_t len = 0;
  uint8_t *old = read_all(path, &len);
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  enqueue(f, "c", SPI_CLASS_GOLD);
  close_q(f);
  /* Put the old log back, as if its unlink never happened, plus a
   * half-written compaction. */
  write_all(path, old, len);
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s/compact.tmp", f->dir);
  write_all(tmp, (const uint8_t *)"garbage", 7);
  assert_int_equal(open_j(f, ""), SPI_OK);
  assert_int_equal(ready(f), 2); /* b, c */
  assert_int_equal(is_dup(f, "a"), 1);
  assert_int_equal(count_suffix(f->dir, ".tmp"), 0);
  assert_int_equal(access(path, F_OK), -1); /* replaced by the snapshot */
  free(old);
  teardown(f);
}

/* The path of the one file of dir ending in suffix. */
static void find_suffix(const char *dir, const char *suffix, char *buf,
                        size_t cap) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  struct dirent *de;
  int n = 0;
  size_t sl = strlen(suffix);
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if (l >= sl && strcmp(de->d_name + l - sl, suffix) == 0) {
      snprintf(buf, cap, "%s/%s", dir, de->d_name);
      n++;
    }
  }
  closedir(d);
  assert_int_equal(n, 1);
}

/* A snapshot damaged on disk: recovery skips what it lost and keeps the
 * files before it (left by a compaction that stopped before removing
 * them: the only other copy of those records). The next compaction keeps
 * the snapshot and those files aside, never deletes them, and counts them. */
static void test_damaged_snapshot_kept_aside(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, ""), SPI_OK);
  char key[32];
  for (int i = 0; i < 20; i++) {
    snprintf(key, sizeof key, "s%02d", i);
    enqueue(f, key, SPI_CLASS_GOLD);
  }
  char path[512], snap[512];
  seg_path(f, 1, "log", path, sizeof path);
  size_t len = 0;
  uint8_t *old = read_all(path, &len);
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  close_q(f);
  write_all(path, old, len); /* as if the compaction stopped before this */
  find_suffix(f->dir, ".snap", snap, sizeof snap);
  size_t slen = 0;
  uint8_t *s = read_all(snap, &slen);
  s[slen / 2] ^= 0x40;
  write_all(snap, s, slen);
  assert_int_equal(open_j(f, ""), SPI_OK);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "corrupt record"));
  assert_true(ready(f) < 20);
  assert_int_equal(access(path, F_OK), 0); /* kept by recovery */
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  assert_int_equal(count_suffix(f->dir, ".snap.corrupt"), 1);
  assert_int_equal(count_suffix(f->dir, ".log.corrupt"), 1);
  assert_int_equal(sstats(f).aside_files, 2);
  /* The next open counts them and removes nothing more. */
  reopen(f, "");
  assert_int_equal(sstats(f).aside_files, 2);
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 2);
  free(s);
  free(old);
  teardown(f);
}

/* A file a whole snapshot replaced but with damage (a compaction that
 * could not move it aside left it): the next recovery moves it aside
 * rather than removing it. */
static void test_replaced_damaged_file_kept(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, ""), SPI_OK);
  enqueue(f, "a", SPI_CLASS_GOLD);
  enqueue(f, "b", SPI_CLASS_GOLD);
  char path[512];
  seg_path(f, 1, "log", path, sizeof path);
  size_t len = 0;
  uint8_t *old = read_all(path, &len);
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  close_q(f);
  old[len / 2] ^= 0x40;
  write_all(path, old, len);
  assert_int_equal(open_j(f, ""), SPI_OK);
  assert_int_equal(ready(f), 2); /* from the snapshot */
  assert_int_equal(access(path, F_OK), -1);
  assert_int_equal(count_suffix(f->dir, ".log.corrupt"), 1);
  assert_int_equal(sstats(f).aside_files, 1);
  free(old);
  teardown(f);
}

/* ---------------------------------------------------------- fsync */

static void test_fsync_policies(void **st) {
  (void)st;
  static const char *const pol[] = {"always", "batch", "none"};
  for (int p = 0; p < 3; p++) {
    fixture *f = setup();
    char cfg[64];
    snprintf(cfg, sizeof cfg, "\"fsync\":\"%s\"", pol[p]);
    assert_int_equal(open_j(f, cfg), SPI_OK);
    enqueue_n(f, "p", 20, SPI_CLASS_GOLD);
    claimed c;
    for (int i = 0; i < 10; i++) {
      assert_int_equal(claim(f, &c), SPI_OK);
      assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
    }
    spi_replay_store_stats ss = sstats(f);
    assert_int_equal(ss.appended, 30);
    if (p == 0) assert_int_equal(ss.syncs, 30);
    if (p == 1) assert_true(ss.syncs >= 1 && ss.syncs <= 30);
    if (p == 2) assert_int_equal(ss.syncs, 0);
    assert_int_equal(spi_replay_tick(f->q), SPI_OK);
    reopen(f, cfg);
    assert_int_equal(ready(f), 10);
    assert_int_equal(is_dup(f, "p0"), 1);
    teardown(f);
  }
}

typedef struct bworker {
  fixture *f;
  int id;
} bworker;

static void *batch_worker(void *arg) {
  bworker *w = arg;
  for (int i = 0; i < 50; i++) {
    char key[32];
    snprintf(key, sizeof key, "w%d-%d", w->id, i);
    spi_envelope v = env_of(key, SPI_CLASS_SILVER);
    assert_int_equal(spi_replay_enqueue(w->f->q, &v, NULL), SPI_OK);
  }
  return NULL;
}

/* Concurrent callers share fsyncs in batch mode. */
static void test_batch_shares_syncs(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, "\"fsync\":\"batch\",\"group_commit_ms\":5"),
                   SPI_OK);
  pthread_t t[4];
  bworker w[4];
  for (int i = 0; i < 4; i++) {
    w[i] = (bworker){f, i};
    assert_int_equal(pthread_create(&t[i], NULL, batch_worker, &w[i]), 0);
  }
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  spi_replay_store_stats ss = sstats(f);
  assert_int_equal(ss.appended, 200);
  assert_true(ss.syncs < 200);
  print_message("batch: 200 appends from 4 threads, %llu fsyncs\n",
                (unsigned long long)ss.syncs);
  reopen(f, "");
  assert_int_equal(ready(f), 200);
  teardown(f);
}

/* ---------------------------------------------------------- segments */

static void test_segments_roll(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, "\"segment_bytes\":4096"), SPI_OK);
  enqueue_n(f, "g", 100, SPI_CLASS_BRONZE);
  int logs = count_suffix(f->dir, ".log");
  assert_true(logs >= 3);
  reopen(f, "\"segment_bytes\":4096");
  assert_int_equal(ready(f), 100);
  claimed c;
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_string_equal(c.key, "g0"); /* order kept across segments */
  /* A larger segment size later is fine; appends go to the last one. */
  reopen(f, "");
  assert_int_equal(ready(f), 100);
  teardown(f);
}

/* ---------------------------------------------------------- the directory */

static void test_directory_lock(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, ""), SPI_OK);
  /* The same engine, the same directory. */
  char cfg[512];
  snprintf(cfg, sizeof cfg, "{\"store\":\"journal\",\"dir\":\"%s/\"}", f->dir);
  spi_replay_queue *q2 = NULL;
  assert_int_equal(spi_replay_open(f->e, cfg, strlen(cfg), &q2), SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(f->e), "already open"));
  /* Another engine of the same process: fcntl() locks cannot tell it from
   * the first, the process-wide list does. Freeing it drops nothing of the
   * first engine's claim. */
  spi_engine *e2 = NULL;
  assert_int_equal(spi_engine_new(&e2, NULL), SPI_OK);
  assert_int_equal(spi_replay_open(e2, cfg, strlen(cfg), &q2), SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(e2), "already open in this process"));
  spi_engine_free(e2);
  assert_int_equal(spi_replay_open(f->e, cfg, strlen(cfg), &q2), SPI_EIO);
  /* Another process. It reports through a pipe, not its exit status: a
   * memory checker may rewrite a forked child's status. */
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(fds[0]);
    char verdict = 'n';
    spi_engine *e = NULL;
    if (spi_engine_new(&e, NULL) == SPI_OK) {
      int rc = spi_replay_open(e, cfg, strlen(cfg), &q2);
      if (rc == SPI_EIO && strstr(spi_engine_errmsg(e), "in use by process"))
        verdict = 'y';
      spi_engine_free(e);
    }
    ssize_t w = write(fds[1], &verdict, 1);
    (void)w;
    _exit(0);
  }
  close(fds[1]);
  char verdict = 0;
  assert_int_equal(read(fds[0], &verdict, 1), 1);
  close(fds[0]);
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_int_equal(verdict, 'y');
  /* Closed, it opens again. */
  reopen(f, "");
  teardown(f);
}

static void test_directory_errors(void **st) {
  (void)st;
  fixture *f = setup();
  char file[512], cfg[1024];
  snprintf(file, sizeof file, "%s/plain", f->dir);
  write_all(file, (const uint8_t *)"x", 1);
  snprintf(cfg, sizeof cfg, "{\"store\":\"journal\",\"dir\":\"%s\"}", file);
  spi_replay_queue *q = NULL;
  assert_int_equal(spi_replay_open(f->e, cfg, strlen(cfg), &q), SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(f->e), "plain"));
  snprintf(cfg, sizeof cfg, "{\"store\":\"journal\",\"dir\":\"%s/no/such\"}",
           f->dir);
  assert_int_equal(spi_replay_open(f->e, cfg, strlen(cfg), &q), SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(f->e), "mkdir"));
  assert_null(q);
  teardown(f);
}

/* Each allocation of an open with recovery fails in turn: ENOMEM, no leak,
 * and the journal still opens whole afterwards. */
static void test_recovery_alloc_failures(void **st) {
  (void)st;
  fixture *f = setup();
  assert_int_equal(open_j(f, "\"segment_bytes\":4096"), SPI_OK);
  enqueue_n(f, "m", 40, SPI_CLASS_GOLD);
  claimed c;
  assert_int_equal(claim(f, &c), SPI_OK);
  assert_int_equal(spi_replay_ack(f->q, c.id), SPI_OK);
  close_q(f);
  int failures = 0;
  f->quiet = 1;
  for (long n = 0; n < 400; n++) {
    f->h.fail_at = f->h.allocs + n;
    int rc = open_j(f, "");
    int hit = f->h.fail_at == -1;
    f->h.fail_at = -1;
    if (rc == SPI_OK) {
      assert_int_equal(ready(f), 39);
      close_q(f);
      if (!hit) break;
      continue;
    }
    failures++;
    assert_int_equal(rc, SPI_ENOMEM);
  }
  assert_true(failures > 10);
  assert_int_equal(open_j(f, ""), SPI_OK);
  assert_int_equal(ready(f), 39);
  teardown(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc32c),
      cmocka_unit_test(test_framing),
      cmocka_unit_test(test_round_trip),
      cmocka_unit_test(test_torn_tail_every_offset),
      cmocka_unit_test(test_bit_flips),
      cmocka_unit_test(test_damage_in_earlier_segment),
      cmocka_unit_test(test_compaction),
      cmocka_unit_test(test_compaction_automatic),
      cmocka_unit_test(test_compaction_interrupted),
      cmocka_unit_test(test_damaged_snapshot_kept_aside),
      cmocka_unit_test(test_replaced_damaged_file_kept),
      cmocka_unit_test(test_fsync_policies),
      cmocka_unit_test(test_batch_shares_syncs),
      cmocka_unit_test(test_segments_roll),
      cmocka_unit_test(test_directory_lock),
      cmocka_unit_test(test_directory_errors),
      cmocka_unit_test(test_recovery_alloc_failures),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
