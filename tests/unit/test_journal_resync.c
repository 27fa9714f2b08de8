/*
 * test_journal_resync.c - after a damaged record, recovery's search for the
 * next good record must not let a frame it finds inside the damaged
 * record's own payload (bytes a caller enqueued that happen to be a journal
 * record) outvote the good records after it.
 *
 * The images are built with the record encoder, so every byte is known: a
 * header is damaged by overwriting its magic, and a frame is planted in an
 * envelope's body. The scan in memory is checked first, then the same
 * images as segment files of a journal that a queue recovers, with what it
 * keeps aside. A record whose length alone is flipped is read by the length
 * its payload gives, before any search: neither a planted record inside it
 * nor a record where the flipped length points takes its place.
 */
#include <errno.h>
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
#include "std_mem.h"

#include "journal_codec.h"
#include "replay.h"

/* ------------------------------------------------------ building images */

#define MAX_RECS 16

/* An image and where each record starts (start[n] is its end). */
typedef struct image {
  spi_buf b;
  size_t start[MAX_RECS + 1];
  int n;
} image;

/* Append an enqueue of key with body (len bytes) as sequence seq. */
static void put_enqueue(image *im, const char *key, const void *body,
                        size_t len, uint64_t seq) {
  spi_envelope v = rq_envelope(key, SPI_CLASS_SILVER, "");
  v.body = body;
  v.body_len = len;
  v.openai_kind = SPI_OPENAI_COMPLETIONS;
  spi_replay_record rec;
  memset(&rec, 0, sizeof rec);
  rec.struct_size = sizeof rec;
  rec.type = SPI_REPLAY_REC_ENQUEUE;
  rec.key = key;
  rec.key_len = strlen(key);
  rec.envelope = &v;
  assert_true(im->n < MAX_RECS);
  im->start[im->n++] = im->b.len;
  assert_int_equal(spi__journal_encode(&im->b, &MEM, &rec, seq), SPI_OK);
  im->start[im->n] = im->b.len;
}

static const char BODY[] = "{\"prompt\":\"p\"}";

/* Records k<from> .. k<to - 1>, sequence seq0 + i for k<i>. */
static void put_keys(image *im, int from, int to, uint64_t seq0) {
  for (int i = from; i < to; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    put_enqueue(im, key, BODY, sizeof BODY - 1, seq0 + (uint64_t)i);
  }
}

/* A body holding n well-formed records "fake0", "fake1", ... with
 * sequences seq, seq + 1, ..., between a little text on each side. */
static void fake_body(spi_buf *out, uint64_t seq, int n) {
  image inner = {0};
  assert_int_equal(spi__buf_append(out, &MEM, "pad:", 4), SPI_OK);
  for (int i = 0; i < n; i++) {
    char key[16];
    snprintf(key, sizeof key, "fake%d", i);
    put_enqueue(&inner, key, BODY, sizeof BODY - 1, seq + (uint64_t)i);
  }
  assert_int_equal(spi__buf_append(out, &MEM, inner.b.data, inner.b.len),
                   SPI_OK);
  assert_int_equal(spi__buf_append(out, &MEM, ":pad", 4), SPI_OK);
  spi__buf_free(&inner.b, &MEM);
}

/* Append record k<i> (sequence seq) whose body plants n frames from
 * sequence fake_seq. */
static void put_planted(image *im, int i, uint64_t seq, uint64_t fake_seq,
                        int n) {
  spi_buf body = {0};
  fake_body(&body, fake_seq, n);
  char key[16];
  snprintf(key, sizeof key, "k%d", i);
  put_enqueue(im, key, body.data, body.len, seq);
  spi__buf_free(&body, &MEM);
}

/* Overwrite the magic of record r: its header no longer says how long it
 * is, so the scan has to search for the next record. */
static void break_header(image *im, int r) {
  memcpy(im->b.data + im->start[r], "XXXX", 4);
}

/* The planted-record journal: k0..k6 (sequences 1..7), k3's header damaged and
 * its body planting n records from sequence fake_seq. */
static void planted_image(image *im, uint64_t fake_seq, int n) {
  put_keys(im, 0, 3, 1);
  put_planted(im, 3, 4, fake_seq, n);
  put_keys(im, 4, 7, 1);
  break_header(im, 3);
}

/* ------------------------------------------------------- scan in memory */

typedef struct seen {
  char keys[256];
} seen;

static int note_key(void *user, const spi_replay_record *rec) {
  seen *s = user;
  size_t used = strlen(s->keys);
  snprintf(s->keys + used, sizeof s->keys - used, "%s%.*s", used ? " " : "",
           (int)rec->key_len, rec->key);
  return SPI_OK;
}

/* Scan im from after_seq 0: the keys handed out, in order, and *sc. */
static const char *scan(const image *im, spi_jr_scan *sc) {
  static seen s;
  memset(&s, 0, sizeof s);
  assert_int_equal(spi__journal_scan_mem(&MEM, im->b.data, im->b.len, 0,
                                         note_key, &s, sc),
                   SPI_OK);
  return s.keys;
}

static void expect_keys(const char *got, const char *want) {
  if (strcmp(got, want) != 0)
    fail_msg("records \"%s\", want \"%s\"", got, want);
}

/* A planted record: k3's header is damaged and its body holds a record with a
 * high sequence. The search after k3 finds that record first; it must not
 * make every record after k3 fail "sequence does not increase". */
static void test_planted_high_sequence(void **st) {
  (void)st;
  image im = {0};
  planted_image(&im, 1000, 1);
  spi_jr_scan sc;
  expect_keys(scan(&im, &sc), "k0 k1 k2 k4 k5 k6");
  assert_int_equal(sc.records, 6);
  assert_int_equal(sc.last_seq, 7);
  assert_int_equal(sc.stop, SPI_JR_END);
  assert_int_equal(sc.valid_bytes, im.b.len);
  /* One damaged range: k3 whole, the planted record with it. */
  assert_int_equal(sc.skipped, 1);
  assert_int_equal(sc.skipped_bytes, im.start[4] - im.start[3]);
  assert_int_equal(sc.first_bad, im.start[3]);
  assert_non_null(strstr(sc.why, "bad magic"));
  spi__buf_free(&im.b, &MEM);
}

/* The planted sequence equals the next record's own, or several planted
 * records chain on each other: the records after the damage still win,
 * whether they run to the end of the data or end in a torn record. */
static void test_planted_runs(void **st) {
  (void)st;
  static const struct {
    uint64_t fake_seq;
    int fakes;
    int torn_end; /* the last record cut short */
    const char *want;
  } cases[] = {
      {5, 1, 0, "k0 k1 k2 k4 k5 k6"},    /* k4's own sequence */
      {6, 1, 0, "k0 k1 k2 k4 k5 k6"},    /* k5's */
      {1000, 5, 0, "k0 k1 k2 k4 k5 k6"}, /* a longer planted chain */
      {1000, 2, 1, "k0 k1 k2 k4 k5"},    /* as long as the good run */
      {1000, 1, 1, "k0 k1 k2 k4 k5"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    image im = {0};
    planted_image(&im, cases[c].fake_seq, cases[c].fakes);
    size_t len = im.b.len;
    if (cases[c].torn_end) im.b.len -= 5;
    spi_jr_scan sc;
    const char *got = scan(&im, &sc);
    if (strcmp(got, cases[c].want) != 0)
      fail_msg("case %zu: records \"%s\", want \"%s\"", c, got,
               cases[c].want);
    assert_int_equal(sc.skipped, 1);
    assert_int_equal(sc.skipped_bytes, im.start[4] - im.start[3]);
    assert_int_equal(sc.stop, cases[c].torn_end ? SPI_JR_TORN : SPI_JR_END);
    im.b.len = len;
    spi__buf_free(&im.b, &MEM);
  }
}

/* The other way round: good records k2..k4 after a first damaged record,
 * then a second damaged record whose body plants a sequence among theirs.
 * The planted record is the odd one out; the good run stays. */
static void test_planted_low_sequence(void **st) {
  (void)st;
  image im = {0};
  put_keys(&im, 0, 5, 1);
  put_planted(&im, 5, 6, 4, 1);
  put_keys(&im, 6, 8, 1);
  break_header(&im, 1);
  break_header(&im, 5);
  spi_jr_scan sc;
  expect_keys(scan(&im, &sc), "k0 k2 k3 k4 k6 k7");
  assert_int_equal(sc.last_seq, 8);
  assert_int_equal(sc.skipped, 2);
  assert_int_equal(sc.skipped_bytes, (im.start[2] - im.start[1]) +
                                         (im.start[6] - im.start[5]));
  assert_int_equal(sc.stop, SPI_JR_END);
  spi__buf_free(&im.b, &MEM);
}

/* The journal of a held run that loses after it beat a good one: k0..k<n-1>
 * (sequences 1..n), k3's header damaged and its body planting `fakes`
 * records from sequence 1000, and the headers of the records in `broken`
 * (a list ending in 0) damaged too; with `fakes5`, k5's body plants that
 * many records from sequence 500. */
static void beaten_image(image *im, int n, int fakes, const int *broken,
                         int fakes5) {
  put_keys(im, 0, 3, 1);
  put_planted(im, 3, 4, 1000, fakes);
  put_keys(im, 4, fakes5 ? 5 : n, 1);
  if (fakes5) {
    put_planted(im, 5, 6, 500, fakes5);
    put_keys(im, 6, n, 1);
  }
  break_header(im, 3);
  for (const int *b = broken; *b; b++) break_header(im, *b);
}

/* The planted run found after k3 beats the good runs after it that are
 * shorter and end in more damage, then loses to a run that goes on further.
 * Those good runs must come back: only what lost to a run that won is
 * skipped. */
static void test_beaten_runs_come_back(void **st) {
  (void)st;
  static const struct {
    int n, fakes;
    int broken[3];
    int fakes5;
    int torn_end; /* the last record cut short */
    const char *want;
  } cases[] = {
      /* k4 between the damaged k3 and k5, then k6..k9 to the end */
      {10, 2, {5}, 0, 0, "k0 k1 k2 k4 k6 k7 k8 k9"},
      /* two good runs beaten, k4 and k6 */
      {12, 3, {5, 7}, 0, 0, "k0 k1 k2 k4 k6 k8 k9 k10 k11"},
      /* a beaten run of two records */
      {10, 3, {6}, 0, 0, "k0 k1 k2 k4 k5 k7 k8 k9"},
      /* the winner is only as long as the planted run, and ends torn */
      {9, 2, {5}, 0, 1, "k0 k1 k2 k4 k6 k7"},
      /* the damaged k5 plants two records too, which the first planted run
       * beat with k4 and k6: searched again, they continue k4 and beat k6,
       * then lose to k8..k11, and k6 is searched again in its turn */
      {12, 3, {5, 7}, 2, 0, "k0 k1 k2 k4 k6 k8 k9 k10 k11"},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    image im = {0};
    beaten_image(&im, cases[c].n, cases[c].fakes, cases[c].broken,
                 cases[c].fakes5);
    size_t len = im.b.len;
    if (cases[c].torn_end) im.b.len -= 5;
    spi_jr_scan sc;
    const char *got = scan(&im, &sc);
    if (strcmp(got, cases[c].want) != 0)
      fail_msg("case %zu: records \"%s\", want \"%s\"", c, got, cases[c].want);
    /* Each damaged record is one range, up to the next good record. */
    uint64_t ranges = 1, bytes = im.start[4] - im.start[3];
    for (const int *b = cases[c].broken; *b; b++, ranges++)
      bytes += im.start[*b + 1] - im.start[*b];
    assert_int_equal(sc.skipped, ranges);
    assert_int_equal(sc.skipped_bytes, bytes);
    assert_int_equal(sc.stop, cases[c].torn_end ? SPI_JR_TORN : SPI_JR_END);
    assert_int_equal(sc.first_bad, im.start[3]);
    im.b.len = len;
    spi__buf_free(&im.b, &MEM);
  }
}

/* A payload planting many runs, each shorter than the one before and
 * contradicting it: chains of 10, 9, ..., 1 records, all from sequence 1000.
 * Each beats the ones after it and loses to k4..k7, which reach the end, so
 * the search runs again after each in turn, up to its bound; the good
 * records are read all the same. */
static void test_many_planted_runs(void **st) {
  (void)st;
  spi_buf body = {0};
  for (int len = 10; len > 0; len--) fake_body(&body, 1000, len);
  image im = {0};
  put_keys(&im, 0, 3, 1);
  put_enqueue(&im, "k3", body.data, body.len, 4);
  put_keys(&im, 4, 8, 1);
  break_header(&im, 3);
  spi__buf_free(&body, &MEM);
  spi_jr_scan sc;
  expect_keys(scan(&im, &sc), "k0 k1 k2 k4 k5 k6 k7");
  assert_int_equal(sc.skipped, 1);
  assert_int_equal(sc.skipped_bytes, im.start[4] - im.start[3]);
  assert_int_equal(sc.stop, SPI_JR_END);
  spi__buf_free(&im.b, &MEM);
}

/* A flipped length that points exactly at a later record (records of 128
 * bytes, k1's length grown by 256): the search tries where the header says
 * the record ends first, finds k4 there, and would skip k1..k3 as one
 * damaged range. The length k1's payload gives is tried before any search,
 * so nothing is skipped. */
static void test_length_flip_onto_a_record(void **st) {
  (void)st;
  image im = {0};
  char body[50];
  memset(body, 'b', sizeof body);
  for (int i = 0; i < 6; i++) {
    char key[16];
    snprintf(key, sizeof key, "k%d", i);
    put_enqueue(&im, key, body, sizeof body, (uint64_t)i + 1);
  }
  assert_int_equal(im.start[1] - im.start[0], 128);
  im.b.data[im.start[1] + 9] ^= 0x01; /* length 104 -> 360 */
  spi_jr_scan sc;
  expect_keys(scan(&im, &sc), "k0 k1 k2 k3 k4 k5");
  assert_int_equal(sc.repaired, 1);
  assert_int_equal(sc.repaired_at, im.start[1]);
  assert_int_equal(sc.skipped, 0);
  assert_int_equal(sc.stop, SPI_JR_END);
  spi__buf_free(&im.b, &MEM);
}

/* k3's body plants a record, and k3's length is flipped, larger or smaller:
 * k3 is read whole by the length its payload gives, so the search that
 * would meet the planted record inside it never runs. */
static void test_length_flip_over_planted(void **st) {
  (void)st;
  for (int bit = 0; bit < 32; bit++) {
    image im = {0};
    put_keys(&im, 0, 3, 1);
    put_planted(&im, 3, 4, 1000, 2);
    put_keys(&im, 4, 7, 1);
    im.b.data[im.start[3] + 8 + bit / 8] ^= (uint8_t)(1u << (bit % 8));
    spi_jr_scan sc;
    const char *got = scan(&im, &sc);
    if (strcmp(got, "k0 k1 k2 k3 k4 k5 k6") != 0)
      fail_msg("bit %d: records \"%s\"", bit, got);
    assert_int_equal(sc.repaired, 1);
    assert_int_equal(sc.skipped, 0);
    assert_int_equal(sc.last_seq, 7);
    spi__buf_free(&im.b, &MEM);
  }
}

/* ------------------------------------------------------ through a queue */

typedef struct fixture {
  spi_engine *e;
  spi_replay_queue *q;
  char dir[256];
} fixture;

static int setup(void **st) {
  fixture *f = calloc(1, sizeof *f);
  assert_non_null(f);
  rq_tmpdir(f->dir, sizeof f->dir, "resync");
  assert_int_equal(spi_engine_new(&f->e, NULL), SPI_OK);
  *st = f;
  return 0;
}

static int teardown(void **st) {
  fixture *f = *st;
  spi_replay_close(f->q);
  spi_engine_free(f->e);
  rm_rf(f->dir);
  free(f);
  return 0;
}

static void write_seg(fixture *f, int no, const image *im) {
  char path[512];
  snprintf(path, sizeof path, "%s/%06d.log", f->dir, no);
  write_all(path, im->b.data, im->b.len);
}

static void open_q(fixture *f) {
  spi_replay_close(f->q);
  f->q = NULL;
  int rc = rq_open_journal(f->e, f->dir, "\"fsync\":\"none\"", &f->q);
  if (rc != SPI_OK) fail_msg("open: %s", spi_engine_errmsg(f->e));
}

/* Segments 1 and 2, recovered; the images are freed. */
static void recover_two(fixture *f, image *one, image *two) {
  write_seg(f, 1, one);
  write_seg(f, 2, two);
  spi__buf_free(&one->b, &MEM);
  spi__buf_free(&two->b, &MEM);
  open_q(f);
}

/* Claim everything (then release it: the claims are not acked), and the
 * keys in the order the queue hands them out. */
static const char *claim_all(fixture *f) {
  static char keys[256];
  keys[0] = '\0';
  rq_claimed c;
  while (rq_claim(f->q, RQ_ALL, 60000, &c) == SPI_OK) {
    size_t used = strlen(keys);
    snprintf(keys + used, sizeof keys - used, "%s%s", used ? " " : "", c.key);
  }
  open_q(f);
  return keys;
}

static spi_replay_store_stats store_stats(fixture *f) {
  spi_replay_store_stats s;
  memset(&s, 0, sizeof s);
  s.struct_size = sizeof s;
  assert_int_equal(spi__replay_store_stats(f->q, &s), SPI_OK);
  return s;
}

/* The file named name in f->dir is exactly bytes [from, to) of im. */
static void expect_file(fixture *f, const char *name, const image *im,
                        size_t from, size_t to) {
  char path[600];
  snprintf(path, sizeof path, "%s/%s", f->dir, name);
  size_t len = 0;
  uint8_t *got = read_all(path, &len);
  assert_int_equal(len, to - from);
  assert_memory_equal(got, im->b.data + from, len);
  free(got);
}

/* The same through a journal directory: the damaged record and its planted
 * record stay where they are (the segment is only read) and every good record
 * comes back; the corrupt tail is cut and kept aside byte for byte; a
 * compaction keeps the damaged segment aside whole. */
static void test_journal_planted(void **st) {
  fixture *f = *st;
  image im = {0};
  planted_image(&im, 1000, 1);
  break_header(&im, 6); /* and a corrupt last record */
  write_seg(f, 1, &im);
  open_q(f);
  expect_keys(claim_all(f), "k0 k1 k2 k4 k5");
  spi_replay_store_stats s = store_stats(f);
  assert_int_equal(s.recovered, 5);
  assert_int_equal(s.skipped, 1);
  /* The second open found the file already cut: only k3 is left to skip. */
  assert_int_equal(s.torn, 1);
  char name[64];
  snprintf(name, sizeof name, "000001.log.%zu.corrupt", im.start[6]);
  expect_file(f, name, &im, im.start[6], im.start[7]);
  expect_file(f, "000001.log", &im, 0, im.start[6]);
  /* A compaction keeps the segment with the damaged k3 aside, whole, and
   * numbers what it keeps on from k5's sequence, not the planted one. */
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  expect_file(f, "000001.log.corrupt", &im, 0, im.start[6]);
  char path[600];
  snprintf(path, sizeof path, "%s/000002.snap", f->dir);
  size_t len = 0;
  uint8_t *snap = read_all(path, &len);
  spi_jr_scan sc;
  assert_int_equal(
      spi__journal_scan_mem(&MEM, snap, len, 0, NULL, NULL, &sc), SPI_OK);
  free(snap);
  assert_int_equal(sc.records, 5);
  assert_int_equal(sc.last_seq, 7 + 4);
  spi_envelope v = rq_envelope("new", SPI_CLASS_SILVER, BODY);
  rq_enqueue(f->q, &v);
  open_q(f);
  expect_keys(claim_all(f), "k0 k1 k2 k4 k5 new");
  assert_int_equal(store_stats(f).torn, 0);
  spi__buf_free(&im.b, &MEM);
}

/* A damaged last record of one segment planting a sequence past the next
 * segment's records: the next segment's first record bounds the earlier
 * segment's sequences, so the planted one is refused and the next segment
 * is read whole. */
static void test_planted_before_next_segment(void **st) {
  fixture *f = *st;
  image one = {0}, two = {0};
  put_keys(&one, 0, 3, 1);
  put_planted(&one, 3, 4, 1000, 1);
  break_header(&one, 3);
  put_keys(&two, 4, 8, 1);
  size_t len = one.b.len;
  recover_two(f, &one, &two);
  expect_keys(claim_all(f), "k0 k1 k2 k4 k5 k6 k7");
  spi_replay_store_stats s = store_stats(f);
  assert_int_equal(s.recovered, 7);
  assert_int_equal(s.torn, 1);
  /* Not the segment appends go to: the damage is left in place. */
  assert_int_equal(count_suffix(f->dir, ".corrupt"), 0);
  char path[600];
  snprintf(path, sizeof path, "%s/000001.log", f->dir);
  struct stat sb;
  assert_int_equal(stat(path, &sb), 0);
  assert_int_equal(sb.st_size, len);
}

/* As above, with the next segment's first record (k4) damaged in its
 * length field alone: it is read by repair, and it still bounds what the
 * search in the first segment finds, so the planted record (sequence 1000)
 * does not make k4..k7 fail "sequence does not increase". */
static void test_planted_before_repaired_segment(void **st) {
  fixture *f = *st;
  image one = {0}, two = {0};
  put_keys(&one, 0, 3, 1);
  put_planted(&one, 3, 4, 1000, 1);
  break_header(&one, 3);
  put_keys(&two, 4, 8, 1);
  two.b.data[two.start[0] + 9] ^= 0x10; /* k4's length: +4096 */
  recover_two(f, &one, &two);
  expect_keys(claim_all(f), "k0 k1 k2 k4 k5 k6 k7");
  assert_int_equal(store_stats(f).recovered, 7);
  assert_non_null(strstr(spi_replay_errmsg(f->q), "damaged length field"));
}

/* Records lost at the end of one segment took sequences that have no bytes
 * in the next. Every good record of both segments must come back: with the
 * next segment whole, and with its first record damaged too, where the
 * search meets a gap of sequences far wider than the bytes it skipped (a
 * bound of one sequence per smallest record skipped would refuse k9 and
 * k10). */
static void test_damaged_tail_then_gap(void **st) {
  fixture *f = *st;
  for (int whole = 0; whole < 2; whole++) {
    image one = {0}, two = {0};
    put_keys(&one, 0, 8, 1);
    for (int r = 3; r < 8; r++) break_header(&one, r);
    put_keys(&two, 8, 12, 1);
    if (!whole) break_header(&two, 0);
    recover_two(f, &one, &two);
    expect_keys(claim_all(f), whole ? "k0 k1 k2 k8 k9 k10 k11"
                                    : "k0 k1 k2 k9 k10 k11");
    spi_replay_store_stats s = store_stats(f);
    assert_int_equal(s.recovered, whole ? 7 : 6);
    assert_int_equal(s.skipped, whole ? 0 : 1);
    assert_int_equal(s.torn, whole ? 1 : 2);
  }
}

/* A segment that starts with an old record (blocks of a compacted segment
 * reused after a crash, a file put back by hand): segment 1 holds k0..k4
 * (sequences 1..5), segment 2 a good record "old" of sequence 2, then
 * k5..k7 (6..8). Segment 2's first record is no bound on segment 1, whose
 * records are read in order from its first byte; "old" is skipped as a
 * record whose sequence does not increase. With damage in segment 1 (k3 of
 * k0..k5, then k6..k8 in segment 2), "old" bounds nothing either: its
 * sequence is not past the records already read, so it cannot be a later
 * record. */
static void test_old_first_record(void **st) {
  fixture *f = *st;
  for (int damaged = 0; damaged < 2; damaged++) {
    image one = {0}, two = {0};
    int n = damaged ? 6 : 5;
    put_keys(&one, 0, n, 1);
    if (damaged) break_header(&one, 3);
    put_enqueue(&two, "old", BODY, sizeof BODY - 1, 2);
    put_keys(&two, n, n + 3, 1);
    recover_two(f, &one, &two);
    expect_keys(claim_all(f), damaged ? "k0 k1 k2 k4 k5 k6 k7 k8"
                                      : "k0 k1 k2 k3 k4 k5 k6 k7");
    spi_replay_store_stats s = store_stats(f);
    assert_int_equal(s.recovered, 8);
    assert_int_equal(s.skipped, damaged ? 2 : 1);
    assert_int_equal(s.torn, damaged ? 2 : 1);
    assert_int_equal(count_suffix(f->dir, ".corrupt"), 0);
  }
}

/* The journal of test_beaten_runs_come_back's first case, with a corrupt
 * last record: k4 comes back, the tail is cut and kept aside byte for byte,
 * and a compaction keeps the segment with the damage aside whole. */
static void test_journal_beaten_run(void **st) {
  fixture *f = *st;
  image im = {0};
  static const int broken[] = {5, 9, 0};
  beaten_image(&im, 10, 2, broken, 0);
  write_seg(f, 1, &im);
  open_q(f);
  expect_keys(claim_all(f), "k0 k1 k2 k4 k6 k7 k8");
  spi_replay_store_stats s = store_stats(f);
  assert_int_equal(s.recovered, 7);
  assert_int_equal(s.skipped, 2);
  char name[64];
  snprintf(name, sizeof name, "000001.log.%zu.corrupt", im.start[9]);
  expect_file(f, name, &im, im.start[9], im.start[10]);
  expect_file(f, "000001.log", &im, 0, im.start[9]);
  assert_int_equal(spi__replay_compact(f->q), SPI_OK);
  expect_file(f, "000001.log.corrupt", &im, 0, im.start[9]);
  open_q(f);
  expect_keys(claim_all(f), "k0 k1 k2 k4 k6 k7 k8");
  assert_int_equal(store_stats(f).torn, 0);
  spi__buf_free(&im.b, &MEM);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_planted_high_sequence),
      cmocka_unit_test(test_planted_runs),
      cmocka_unit_test(test_planted_low_sequence),
      cmocka_unit_test(test_beaten_runs_come_back),
      cmocka_unit_test(test_many_planted_runs),
      cmocka_unit_test(test_length_flip_onto_a_record),
      cmocka_unit_test(test_length_flip_over_planted),
      cmocka_unit_test_setup_teardown(test_journal_planted, setup, teardown),
      cmocka_unit_test_setup_teardown(test_planted_before_next_segment, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_planted_before_repaired_segment,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_damaged_tail_then_gap, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_old_first_record, setup, teardown),
      cmocka_unit_test_setup_teardown(test_journal_beaten_run, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
