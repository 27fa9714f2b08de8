/*
 * test_journal_damage.c - recovery keeps every good record around damage,
 * and opens only the files the journal made.
 *
 * A small journal of three segments is damaged in every record in turn: a
 * flipped byte, seven bytes cut out of the record (the rest of the file
 * kept), and the segment truncated seven bytes before each record boundary.
 * Each time every good record outside the damage must come back, open must
 * succeed and say what it skipped, and the damage must stay visible on the
 * next open. Then: the repro (300 records, record 15 flipped), a
 * second recovery never overwriting the first one's evidence, every bit of
 * one record's length field flipped (the last record, and one inside the
 * segment) under fsync always, where every acknowledged record must come
 * back, once and in order, on every later open, and symbolic and hard
 * links planted under the journal's names, whose targets must stay
 * untouched.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "journal_files.h"
#include "replay_helpers.h"

#include "replay.h"

#define ALL 0xeu
#define SEG_CFG "\"segment_bytes\":4096,\"fsync\":\"none\""
#define NREC 24

/* ---------------------------------------------------------------- helpers */

typedef struct fixture {
  spi_engine *e;
  spi_replay_queue *q;
  char dir[256];
} fixture;

static fixture *setup(void) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  rq_tmpdir(f->dir, sizeof f->dir, "damage");
  assert_int_equal(spi_engine_new(&f->e, NULL), SPI_OK);
  return f;
}

static void teardown(fixture *f) {
  spi_replay_close(f->q);
  spi_engine_free(f->e);
  rm_rf(f->dir);
  free(f);
}

static int open_j(fixture *f, const char *extra) {
  return rq_open_journal(f->e, f->dir, extra, &f->q);
}

static void close_j(fixture *f) {
  spi_replay_close(f->q);
  f->q = NULL;
}

static spi_envelope env_of(const char *key) {
  /* About 450 bytes a record: a few segments of 4096 bytes. */
  static char body[512];
  if (!body[0]) {
    int at = snprintf(body, sizeof body, "{\"model\":\"m\",\"prompt\":\"");
    for (; at < 400; at++) body[at] = (char)('a' + at % 26);
    snprintf(body + at, sizeof body - (size_t)at, "\"}");
  }
  spi_envelope v = rq_envelope(key, SPI_CLASS_SILVER, body);
  v.openai_kind = SPI_OPENAI_COMPLETIONS;
  return v;
}

static void enqueue(fixture *f, const char *key) {
  spi_envelope v = env_of(key);
  rq_enqueue(f->q, &v);
}

/* Enqueue k0 .. k<n-1>. */
static void enqueue_n(fixture *f, int n) {
  spi_envelope v = env_of("");
  rq_enqueue_keys(f->q, &v, "k", n);
}

/* Claim everything; mark which of keys k0..k(n-1) came back. */
static int drain(fixture *f, uint8_t *seen, int n) {
  static uint8_t buf[8192];
  int count = 0;
  memset(seen, 0, (size_t)n);
  for (;;) {
    spi_envelope out;
    memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    uint64_t id = 0;
    int rc = spi_replay_claim(f->q, ALL, 0, &id, &out, buf, sizeof buf, NULL);
    assert_int_equal(rc, SPI_OK);
    if (id == 0) break; /* nothing ready */
    int k = -1;
    assert_int_equal(sscanf(out.key, "k%d", &k), 1);
    assert_true(k >= 0 && k < n);
    assert_int_equal(seen[k], 0);
    seen[k] = 1;
    count++;
  }
  return count;
}

static spi_replay_stats qstats(fixture *f) { return rq_stats(f->q); }

/* ------------------------------------------------------ a small journal */

typedef struct seg {
  char path[600];
  uint8_t *data;
  size_t len;
  int nrec;
  size_t end[NREC]; /* end of each record in the file */
  int first_key;    /* key number of its first record */
} seg;

typedef struct journal_image {
  seg segs[8];
  int nsegs;
} journal_image;

/* NREC enqueues of k0..k23 over several segments, and their layout. */
static void build(fixture *f, journal_image *img) {
  assert_int_equal(open_j(f, SEG_CFG), SPI_OK);
  enqueue_n(f, NREC);
  close_j(f);
  memset(img, 0, sizeof *img);
  int key_no = 0;
  for (int no = 1; no < 9; no++) {
    seg *s = &img->segs[img->nsegs];
    snprintf(s->path, sizeof s->path, "%s/%06d.log", f->dir, no);
    if (access(s->path, F_OK) != 0) break;
    s->data = read_all(s->path, &s->len);
    s->first_key = key_no;
    size_t at = 0;
    while (at < s->len) {
      uint32_t plen = (uint32_t)s->data[at + 8] |
                      (uint32_t)s->data[at + 9] << 8 |
                      (uint32_t)s->data[at + 10] << 16 |
                      (uint32_t)s->data[at + 11] << 24;
      at += SPI_JR_HEADER_BYTES + plen + SPI_JR_TRAILER_BYTES;
      s->end[s->nrec++] = at;
      key_no++;
    }
    assert_int_equal(at, s->len);
    img->nsegs++;
  }
  assert_int_equal(key_no, NREC);
  assert_true(img->nsegs >= 3);
}

static void restore(fixture *f, const journal_image *img) {
  for (int i = 0; i < img->nsegs; i++)
    write_all(img->segs[i].path, img->segs[i].data, img->segs[i].len);
  remove_suffix(f->dir, ".corrupt");
}

static void free_image(journal_image *img) {
  for (int i = 0; i < img->nsegs; i++) free(img->segs[i].data);
}

/* Open, check that exactly the keys outside [lost_from, lost_to) came back,
 * and that the damage was reported (counted when something was lost). */
static void expect(fixture *f, int lost_from, int lost_to, const char *what,
                   int round) {
  assert_int_equal(open_j(f, SEG_CFG), SPI_OK);
  spi_replay_stats st = qstats(f);
  assert_true(st.torn >= (lost_to > lost_from));
  assert_true(spi_replay_errmsg(f->q)[0] != '\0');
  uint8_t seen[NREC];
  int got = drain(f, seen, NREC);
  for (int k = 0; k < NREC; k++) {
    int lost = k >= lost_from && k < lost_to;
    if (seen[k] == lost)
      fail_msg("%s, round %d: k%d %s", what, round, k,
               lost ? "came back" : "was lost");
  }
  assert_int_equal(got, NREC - (lost_to - lost_from));
  close_j(f);
}

/* ------------------------------------------------------------------ tests */

/* Each record r of each segment in turn, on the journal as built: damage
 * restores the journal, writes the segment damaged at r (once or more)
 * and has expect() check each open. */
typedef void damage_fn(fixture *f, const journal_image *img, const seg *sg,
                       int r);

static void damage_each_record(fixture *f, damage_fn *damage) {
  journal_image img;
  build(f, &img);
  for (int s = 0; s < img.nsegs; s++)
    for (int r = 0; r < img.segs[s].nrec; r++) damage(f, &img, &img.segs[s], r);
  free_image(&img);
}

/* Header, payload and checksum bytes of record r, not every one of them,
 * each flipped in turn: only that record is lost, and not even that one
 * when the byte is in its length field. */
static void flip_bytes(fixture *f, const journal_image *img, const seg *sg,
                       int r) {
  size_t start = r ? sg->end[r - 1] : 0;
  for (size_t at = start; at < sg->end[r]; at += at < start + 24 ? 3 : 61) {
    restore(f, img);
    uint8_t *copy = malloc(sg->len);
    assert_non_null(copy);
    memcpy(copy, sg->data, sg->len);
    copy[at] ^= 0x5a;
    write_all(sg->path, copy, sg->len);
    free(copy);
    int key = sg->first_key + r;
    int in_length = at >= start + 8 && at < start + 12;
    expect(f, key, in_length ? key : key + 1, "flipped byte", (int)at);
  }
}

static void cut_record(fixture *f, const journal_image *img, const seg *sg,
                       int r) {
  restore(f, img);
  size_t cut = sg->end[r] - 7;
  uint8_t *copy = malloc(sg->len);
  assert_non_null(copy);
  memcpy(copy, sg->data, cut);
  memcpy(copy + cut, sg->data + sg->end[r], sg->len - sg->end[r]);
  write_all(sg->path, copy, sg->len - 7);
  free(copy);
  int key = sg->first_key + r;
  expect(f, key, key + 1, "record cut short", r);
}

static void truncate_at_record(fixture *f, const journal_image *img,
                               const seg *sg, int r) {
  restore(f, img);
  write_all(sg->path, sg->data, sg->end[r] - 7);
  expect(f, sg->first_key + r, sg->first_key + sg->nrec, "segment truncated",
         r);
}

static void test_flip_every_record(void **state) {
  (void)state;
  fixture *f = setup();
  damage_each_record(f, flip_bytes);
  teardown(f);
}

/* Seven bytes cut out of the end of each record, the rest of the file kept:
 * only that record is lost. */
static void test_cut_inside_every_record(void **state) {
  (void)state;
  fixture *f = setup();
  damage_each_record(f, cut_record);
  teardown(f);
}

/* Each segment truncated seven bytes before each record boundary: what the
 * truncation removed is lost, every other segment is read whole. */
static void test_truncate_every_boundary(void **state) {
  (void)state;
  fixture *f = setup();
  damage_each_record(f, truncate_at_record);
  teardown(f);
}

/* The report: 300 envelopes, one flipped byte in record 15. Before, 286 of
 * them were gone with SPI_OK; now only the damaged one is, the open says so
 * on every open, and the stats count it. */
static void test_one_flip_in_300(void **state) {
  (void)state;
  fixture *f = setup();
  assert_int_equal(open_j(f, "\"segment_bytes\":16384"), SPI_OK);
  enqueue_n(f, 300);
  close_j(f);
  char path[600];
  snprintf(path, sizeof path, "%s/000001.log", f->dir);
  size_t len = 0;
  uint8_t *b = read_all(path, &len);
  size_t at = 0;
  for (int r = 0; r < 14; r++) {
    uint32_t plen = (uint32_t)b[at + 8] | (uint32_t)b[at + 9] << 8;
    at += SPI_JR_HEADER_BYTES + plen + SPI_JR_TRAILER_BYTES;
  }
  b[at + SPI_JR_HEADER_BYTES + 30] ^= 0x04; /* record 15's payload */
  write_all(path, b, len);
  free(b);
  for (int round = 0; round < 2; round++) {
    assert_int_equal(open_j(f, "\"segment_bytes\":16384"), SPI_OK);
    spi_replay_stats st = qstats(f);
    assert_int_equal(st.ready[SPI_CLASS_SILVER], 299);
    assert_int_equal(st.skipped, 1);
    assert_true(st.skipped_bytes > 0);
    assert_int_equal(st.torn, 1);
    assert_non_null(strstr(spi_replay_errmsg(f->q), "checksum mismatch"));
    assert_non_null(strstr(spi_replay_errmsg(f->q), "000001.log"));
    close_j(f);
  }
  /* Nothing was renamed away. */
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 0);
  teardown(f);
}

/* Two recoveries that each set a damaged tail aside at the same offset of
 * the same segment: the second never overwrites the first's file. */
static void test_evidence_never_overwritten(void **state) {
  (void)state;
  fixture *f = setup();
  assert_int_equal(open_j(f, ""), SPI_OK);
  enqueue(f, "k0");
  close_j(f);
  char path[600];
  snprintf(path, sizeof path, "%s/000001.log", f->dir);
  size_t good = 0;
  free(read_all(path, &good));
  const char junk1[] = "first damage, kept as evidence";
  const char junk2[] = "second damage at the same offset";
  for (int round = 0; round < 2; round++) {
    FILE *fp = fopen(path, "ab");
    assert_non_null(fp);
    const char *j = round ? junk2 : junk1;
    fwrite(j, 1, strlen(j), fp);
    fclose(fp);
    assert_int_equal(open_j(f, ""), SPI_OK);
    assert_non_null(strstr(spi_replay_errmsg(f->q), "kept as"));
    assert_int_equal(qstats(f).aside_files, (uint64_t)round + 1);
    close_j(f);
  }
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 2);
  char aside[700];
  snprintf(aside, sizeof aside, "%s/000001.log.%zu.corrupt", f->dir, good);
  size_t n = 0;
  uint8_t *first = read_all(aside, &n);
  assert_int_equal(n, strlen(junk1));
  assert_memory_equal(first, junk1, n);
  free(first);
  /* Every later open still names the evidence. */
  assert_int_equal(open_j(f, ""), SPI_OK);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "kept for inspection"));
  assert_int_equal(qstats(f).aside_files, 2);
  assert_int_equal(qstats(f).torn, 0);
  close_j(f);
  teardown(f);
}

/* ------------------------------------------------- a damaged length field */

#define ALWAYS "\"fsync\":\"always\""
#define NLEN 8

/* k0..k7 in one segment under fsync always, so each enqueue that returned
 * was acknowledged: the segment's bytes (malloc'd), its path, and where
 * each record starts (start[NLEN] is the end). */
typedef struct acked {
  char path[600];
  uint8_t *data;
  size_t len;
  size_t start[NLEN + 1];
} acked;

static void build_acked(fixture *f, acked *a) {
  assert_int_equal(open_j(f, ALWAYS), SPI_OK);
  for (int i = 0; i < NLEN; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    a->start[i] = qstats(f).journal_bytes;
    enqueue(f, key);
  }
  a->start[NLEN] = qstats(f).journal_bytes;
  close_j(f);
  snprintf(a->path, sizeof a->path, "%s/000001.log", f->dir);
  a->data = read_all(a->path, &a->len);
  assert_int_equal(a->len, a->start[NLEN]);
}

/* The segment written back with bit `bit` of record r's length field
 * flipped; whether that made the length larger. */
static int flip_length(const acked *a, int r, int bit) {
  uint8_t *copy = malloc(a->len);
  assert_non_null(copy);
  memcpy(copy, a->data, a->len);
  uint8_t *p = copy + a->start[r] + 8 + bit / 8;
  int larger = !(*p & (1u << (bit % 8)));
  *p ^= (uint8_t)(1u << (bit % 8));
  write_all(a->path, copy, a->len);
  free(copy);
  return larger;
}

/* Claim everything: the keys in the order they come, space-separated. The
 * claims are not acked, so the next open hands them out again. */
static const char *claim_keys(fixture *f) {
  static char keys[512];
  keys[0] = '\0';
  rq_claimed c;
  while (rq_claim(f->q, RQ_ALL, 60000, &c) == SPI_OK) {
    size_t used = strlen(keys);
    snprintf(keys + used, sizeof keys - used, "%s%s", used ? " " : "", c.key);
  }
  return keys;
}

static void expect_keys(const char *got, const char *want, int bit) {
  if (strcmp(got, want) != 0)
    fail_msg("bit %d: records \"%s\", want \"%s\"", bit, got, want);
}

static const char ALL_KEYS[] = "k0 k1 k2 k3 k4 k5 k6 k7";

/* Open, and check that every acknowledged record came back, once and in
 * order, with `more` after them, that nothing was lost or cut off, and
 * that the repair was reported. */
static void expect_repaired(fixture *f, const acked *a, const char *more,
                            int bit) {
  assert_int_equal(open_j(f, ALWAYS), SPI_OK);
  char want[600];
  snprintf(want, sizeof want, "%s%s", ALL_KEYS, more);
  expect_keys(claim_keys(f), want, bit);
  spi_replay_stats st = qstats(f);
  assert_int_equal(st.torn, 0);
  assert_int_equal(st.truncated_bytes, 0);
  assert_int_equal(st.skipped, 0);
  assert_int_equal(st.repaired, 1);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "damaged length field"));
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 0);
  struct stat sb;
  assert_int_equal(stat(a->path, &sb), 0);
  assert_true((size_t)sb.st_size >= a->len); /* nothing cut */
  close_j(f);
}

/* Every bit of record r's length field flipped in turn: every acknowledged
 * record comes back, once and in order, on this open and the next; an
 * append after it reads back too, on two more opens. */
static void flip_each_length_bit(fixture *f, const acked *a, int r) {
  int larger = 0, smaller = 0;
  for (int bit = 0; bit < 32; bit++) {
    write_all(a->path, a->data, a->len);
    if (flip_length(a, r, bit))
      larger++;
    else
      smaller++;
    expect_repaired(f, a, "", bit);
    expect_repaired(f, a, "", bit);
    assert_int_equal(open_j(f, ALWAYS), SPI_OK);
    enqueue(f, "after");
    close_j(f);
    expect_repaired(f, a, " after", bit);
    expect_repaired(f, a, " after", bit);
  }
  assert_true(larger > 0 && smaller > 0);
}

/* The last complete record: a larger length ran past the end and read as
 * torn, and was dropped though its enqueue had returned. */
static void test_length_flip_last_record(void **state) {
  (void)state;
  fixture *f = setup();
  acked a;
  build_acked(f, &a);
  flip_each_length_bit(f, &a, NLEN - 1);
  free(a.data);
  teardown(f);
}

/* A record inside the segment: it failed its checksum and was skipped. */
static void test_length_flip_mid_segment(void **state) {
  (void)state;
  fixture *f = setup();
  acked a;
  build_acked(f, &a);
  flip_each_length_bit(f, &a, 3);
  free(a.data);
  teardown(f);
}

/* A repaired record followed by a record torn by a crash (cut mid-write):
 * the torn one alone is dropped, nothing is kept aside, and the file is
 * cut after the repaired one, so appends follow it. */
static void test_torn_after_repaired(void **state) {
  (void)state;
  fixture *f = setup();
  acked a;
  build_acked(f, &a);
  flip_length(&a, NLEN - 2, 12);
  size_t flipped = 0;
  uint8_t *b = read_all(a.path, &flipped);
  write_all(a.path, b, a.start[NLEN - 1] + 30);
  free(b);
  assert_int_equal(open_j(f, ALWAYS), SPI_OK);
  expect_keys(claim_keys(f), "k0 k1 k2 k3 k4 k5 k6", 12);
  const char *msg = spi_replay_errmsg(f->q);
  assert_non_null(strstr(msg, "torn record"));
  assert_non_null(strstr(msg, "damaged length field"));
  assert_int_equal(qstats(f).torn, 1);
  assert_int_equal(qstats(f).truncated_bytes, 30);
  assert_int_equal(qstats(f).repaired, 1);
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 0);
  enqueue(f, "after");
  close_j(f);
  for (int round = 0; round < 2; round++) {
    assert_int_equal(open_j(f, ALWAYS), SPI_OK);
    expect_keys(claim_keys(f), "k0 k1 k2 k3 k4 k5 k6 after", 12);
    assert_int_equal(qstats(f).torn, 0);
    close_j(f);
  }
  free(a.data);
  teardown(f);
}

/* A flipped length on a record whose payload is damaged too is not
 * repaired: at the end, or inside the segment, that record alone is lost. */
static void test_length_and_payload_damaged(void **state) {
  (void)state;
  fixture *f = setup();
  acked a;
  build_acked(f, &a);
  static const struct {
    int r, bit;
    const char *want;
  } cases[] = {
      {NLEN - 1, 12, "k0 k1 k2 k3 k4 k5 k6"}, /* larger: looks torn */
      {NLEN - 1, 6, "k0 k1 k2 k3 k4 k5 k6"},  /* a bit of the length set */
      {3, 12, "k0 k1 k2 k4 k5 k6 k7"},
      {3, 1, "k0 k1 k2 k4 k5 k6 k7"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    write_all(a.path, a.data, a.len);
    remove_suffix(f->dir, ".corrupt");
    flip_length(&a, cases[c].r, cases[c].bit);
    size_t n = 0;
    uint8_t *b = read_all(a.path, &n);
    b[a.start[cases[c].r] + SPI_JR_HEADER_BYTES + 60] ^= 0x01; /* its body */
    write_all(a.path, b, n);
    free(b);
    assert_int_equal(open_j(f, ALWAYS), SPI_OK);
    expect_keys(claim_keys(f), cases[c].want, cases[c].bit);
    assert_null(strstr(spi_replay_errmsg(f->q), "damaged length field"));
    assert_int_equal(qstats(f).torn, 1);
    assert_int_equal(qstats(f).repaired, 0);
    close_j(f);
  }
  free(a.data);
  teardown(f);
}

/* The stats count a record read whole despite a damaged length field in
 * repaired (queue and store alike), and in no count of what was lost; an
 * undamaged journal counts none. A caller whose struct ends before
 * repaired (built before it was added) is filled as far as it reaches and
 * not a byte further. */
static void test_repaired_counted(void **state) {
  (void)state;
  fixture *f = setup();
  acked a;
  build_acked(f, &a);
  assert_int_equal(open_j(f, ALWAYS), SPI_OK);
  assert_int_equal(qstats(f).repaired, 0);
  assert_int_equal(qstats(f).recovered, NLEN);
  close_j(f);
  flip_length(&a, 3, 5);
  assert_int_equal(open_j(f, ALWAYS), SPI_OK);
  spi_replay_stats st = qstats(f);
  assert_int_equal(st.repaired, 1);
  assert_int_equal(st.recovered, NLEN);
  assert_int_equal(st.torn + st.truncated_bytes + st.skipped, 0);
  spi_replay_store_stats ss;
  memset(&ss, 0, sizeof ss);
  ss.struct_size = sizeof ss;
  assert_int_equal(spi__replay_store_stats(f->q, &ss), SPI_OK);
  assert_int_equal(ss.repaired, 1);
  union {
    spi_replay_stats s;
    unsigned char b[sizeof(spi_replay_stats)];
  } u;
  memset(&u, 0xab, sizeof u);
  size_t before = offsetof(spi_replay_stats, repaired);
  u.s.struct_size = before;
  assert_int_equal(spi_replay_stats_get(f->q, &u.s), SPI_OK);
  assert_int_equal(u.s.struct_size, before);
  assert_int_equal(u.s.recovered, NLEN);
  for (size_t i = before; i < sizeof u; i++) assert_int_equal(u.b[i], 0xab);
  close_j(f);
  free(a.data);
  teardown(f);
}

/* A segment with a repaired record is kept aside whole by a compaction,
 * like one with skipped damage; the snapshot holds every record, and later
 * opens are quiet but for naming the evidence. */
static void test_repaired_segment_compacted(void **state) {
  (void)state;
  fixture *f = setup();
  acked a;
  build_acked(f, &a);
  flip_length(&a, 3, 20);
  assert_int_equal(open_j(f, ALWAYS), SPI_OK);
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  close_j(f);
  assert_int_equal(count_suffix(f->dir, ".log.corrupt"), 1);
  assert_int_equal(open_j(f, ALWAYS), SPI_OK);
  expect_keys(claim_keys(f), ALL_KEYS, 20);
  assert_null(strstr(spi_replay_errmsg(f->q), "damaged length field"));
  assert_non_null(strstr(spi_replay_errmsg(f->q), "kept for inspection"));
  assert_int_equal(qstats(f).repaired, 0); /* the snapshot was read whole */
  close_j(f);
  free(a.data);
  teardown(f);
}

/* ------------------------------------------------------------- links */

static const char VICTIM[] = "the victim's data, which must stay as it is\n";

static void make_victim(const char *path) {
  write_all(path, (const uint8_t *)VICTIM, strlen(VICTIM));
}

static void check_victim(const char *path) {
  size_t n = 0;
  uint8_t *b = read_all(path, &n);
  assert_int_equal(n, strlen(VICTIM));
  assert_memory_equal(b, VICTIM, n);
  free(b);
}

static void test_planted_symlinks(void **state) {
  (void)state;
  fixture *f = setup();
  char victim[600], link_path[600];
  snprintf(victim, sizeof victim, "%s.victim", f->dir);
  make_victim(victim);
  const char *names[] = {"000001.log", "LOCK"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    snprintf(link_path, sizeof link_path, "%s/%s", f->dir, names[i]);
    unlink(link_path); /* LOCK was made by the open before */
    assert_int_equal(symlink(victim, link_path), 0);
    assert_int_equal(open_j(f, ""), SPI_EIO);
    assert_non_null(strstr(spi_engine_errmsg(f->e), "symbolic link"));
    assert_non_null(strstr(spi_engine_errmsg(f->e), names[i]));
    check_victim(victim);
    unlink(link_path);
  }
  /* A hard link to another file is refused too. */
  snprintf(link_path, sizeof link_path, "%s/000001.log", f->dir);
  assert_int_equal(link(victim, link_path), 0);
  assert_int_equal(open_j(f, ""), SPI_EIO);
  assert_non_null(strstr(spi_engine_errmsg(f->e), "one link"));
  check_victim(victim);
  unlink(link_path);
  /* Links at the names the journal creates later: the next segment and a
   * compaction's file. Neither target is written. */
  assert_int_equal(open_j(f, "\"segment_bytes\":4096"), SPI_OK);
  int n = 0;
  char key[16];
  while (qstats(f).journal_bytes + 600 < 4096) {
    snprintf(key, sizeof key, "k%d", n++);
    enqueue(f, key);
  }
  snprintf(link_path, sizeof link_path, "%s/000002.log", f->dir);
  assert_int_equal(symlink(victim, link_path), 0);
  char tmp_link[600];
  snprintf(tmp_link, sizeof tmp_link, "%s/compact.tmp", f->dir);
  assert_int_equal(symlink(victim, tmp_link), 0);
  static char big[1024];
  memset(big, 'x', sizeof big - 1);
  spi_envelope v = rq_envelope("big", SPI_CLASS_GOLD, big);
  /* It would start 000002.log: refused, nothing written through the link. */
  assert_int_equal(spi_replay_enqueue(f->q, &v, NULL), SPI_EIO);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "000002.log"));
  check_victim(victim);
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  check_victim(victim);
  struct stat sb;
  assert_int_equal(lstat(tmp_link, &sb), -1); /* the link itself went */
  close_j(f);
  unlink(link_path);
  assert_int_equal(open_j(f, ""), SPI_OK);
  uint8_t seen[64];
  assert_int_equal(drain(f, seen, 64), n);
  close_j(f);
  check_victim(victim);
  unlink(victim);
  teardown(f);
}

/* The warning is cut at its size, so what was lost comes first: a repaired
 * record in the first segment must not push out of it the report of a
 * corrupt tail, cut off and kept aside, in the last one (the stats count
 * the loss either way; the message is what an operator reads). */
static void test_loss_before_repair_in_warning(void **state) {
  (void)state;
  fixture *f = setup();
  assert_int_equal(open_j(f, ALWAYS ",\"segment_bytes\":4096"), SPI_OK);
  for (int i = 0; i < 20; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    enqueue(f, key);
  }
  close_j(f);
  char p1[700], plast[700];
  snprintf(p1, sizeof p1, "%s/000001.log", f->dir);
  int last = 1;
  for (int no = 2; no < 64; no++) {
    snprintf(plast, sizeof plast, "%s/%06d.log", f->dir, no);
    if (access(plast, F_OK) != 0) break;
    last = no;
  }
  assert_true(last >= 2);
  snprintf(plast, sizeof plast, "%s/%06d.log", f->dir, last);
  size_t n1 = 0, nl = 0;
  uint8_t *b1 = read_all(p1, &n1), *bl = read_all(plast, &nl);
  b1[8 + 1] ^= 0x10;   /* the first record's length field: +4096 */
  bl[nl - 10] ^= 0x01; /* the last record's payload */
  write_all(p1, b1, n1);
  write_all(plast, bl, nl);
  free(b1);
  free(bl);
  assert_int_equal(open_j(f, ALWAYS ",\"segment_bytes\":4096"), SPI_OK);
  const char *msg = spi_replay_errmsg(f->q);
  assert_int_equal(qstats(f).torn, 1);
  assert_int_equal(qstats(f).repaired, 1);
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 1);
  if (!strstr(msg, "cut off"))
    fail_msg("the corrupt tail is not in the warning: %s", msg);
  const char *repair = strstr(msg, "damaged length field");
  assert_non_null(repair);
  assert_true(strstr(msg, "cut off") < repair);
  close_j(f);
  teardown(f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flip_every_record),
      cmocka_unit_test(test_cut_inside_every_record),
      cmocka_unit_test(test_truncate_every_boundary),
      cmocka_unit_test(test_one_flip_in_300),
      cmocka_unit_test(test_evidence_never_overwritten),
      cmocka_unit_test(test_length_flip_last_record),
      cmocka_unit_test(test_length_flip_mid_segment),
      cmocka_unit_test(test_torn_after_repaired),
      cmocka_unit_test(test_length_and_payload_damaged),
      cmocka_unit_test(test_repaired_counted),
      cmocka_unit_test(test_repaired_segment_compacted),
      cmocka_unit_test(test_planted_symlinks),
      cmocka_unit_test(test_loss_before_repair_in_warning),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
