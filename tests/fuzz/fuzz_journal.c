/*
 * fuzz_journal.c - journal recovery on arbitrary bytes.
 *
 * Each input is scanned twice: in memory (spi__journal_scan_mem, the same
 * framing and payload checks recovery runs) and as the only segment file of
 * a journal directory opened by a replay queue, which recovers it: damaged
 * ranges are skipped (the scan resynchronises on the next good record), a
 * damaged tail is cut off, and every good record is replayed into the
 * queue. Neither may crash, and both must agree: the file is cut exactly
 * after the last good record, every damaged range is counted, and the tail
 * is kept aside exactly when the scan found corruption rather than a
 * cut-off record. Records handed out must be well-formed.
 *
 * Speed: the queue runs with fsync "none", but closing a queue still
 * flushes what it wrote (the acks), and every input creates, truncates and
 * unlinks files. On a disk file system that costs a real fdatasync and
 * journal commits per input (about 150 inputs/s); on a memory file system
 * it costs nothing. So the directory is made under $SPI_FUZZ_DIR if set,
 * else /dev/shm when it is a writable directory, else $TMPDIR or /tmp; it
 * is made once and reused, and between inputs only the files an input
 * leaves (segments, set-aside tails) are removed, not the lock file.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "replay.h"

#define CHECK(c)                                                               \
  do {                                                                         \
    if (!(c)) {                                                                \
      fprintf(stderr, "fuzz_journal: check failed: %s (line %d)\n", #c,        \
              __LINE__);                                                       \
      abort();                                                                 \
    }                                                                          \
  } while (0)

static void *f_alloc(void *ud, size_t n) {
  (void)ud;
  return malloc(n);
}
static void f_free(void *ud, void *p) {
  (void)ud;
  free(p);
}
static const spi_mem MEM = {f_alloc, f_free, NULL};

static char dir[256];
static char cfg[512];
static volatile uint32_t sink;
static spi_engine *engine;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Remove what an input left in the directory; the lock file stays unless
 * all is set (at exit). */
static void clear_dir(int all) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  char path[512];
  while ((de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    if (!all && strcmp(de->d_name, "LOCK") == 0) continue;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    unlink(path);
  }
  closedir(d);
}

static void cleanup(void) {
  clear_dir(1);
  rmdir(dir);
  spi_engine_free(engine);
}

/* Where the journal directory goes: see the comment at the top. */
static const char *base_dir(void) {
  const char *env = getenv("SPI_FUZZ_DIR");
  if (env && env[0]) return env;
  struct stat sb;
  if (stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) &&
      access("/dev/shm", W_OK | X_OK) == 0)
    return "/dev/shm";
  env = getenv("TMPDIR");
  return env && env[0] ? env : "/tmp";
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  snprintf(dir, sizeof dir, "%s/spi-fuzz-journal-XXXXXX", base_dir());
  CHECK(mkdtemp(dir) != NULL);
  snprintf(cfg, sizeof cfg,
           "{\"store\":\"journal\",\"dir\":\"%s\",\"fsync\":\"none\"}", dir);
  CHECK(spi_engine_new(&engine, NULL) == SPI_OK);
  atexit(cleanup);
  return 0;
}

static int check_record(void *user, const spi_replay_record *rec) {
  size_t *n = user;
  (*n)++;
  CHECK(rec->key && rec->key_len >= 1 && rec->key_len <= 128);
  CHECK(rec->type >= SPI_REPLAY_REC_ENQUEUE &&
        rec->type <= SPI_REPLAY_REC_DEAD);
  if (rec->type == SPI_REPLAY_REC_ENQUEUE) {
    const spi_envelope *e = rec->envelope;
    CHECK(e && e->key == rec->key && e->key_len == rec->key_len);
    CHECK(e->klass >= 1 && e->klass <= 3);
    CHECK(e->openai_kind >= 0 && e->openai_kind <= 2);
    CHECK(memchr(e->tenant, '\0', sizeof e->tenant) != NULL);
    CHECK(!e->partial_token_count || e->partial_tokens);
    /* Touch every byte handed out, so ASan sees a view past its data. */
    uint32_t sum = 0;
    for (size_t i = 0; i < e->partial_token_count; i++)
      sum += e->partial_tokens[i];
    for (size_t i = 0; i < e->body_len; i++) sum += (uint8_t)e->body[i];
    for (size_t i = 0; i < e->partial_text_len; i++)
      sum += (uint8_t)e->partial_text[i];
    sink = sum;
  } else {
    CHECK(rec->envelope == NULL);
  }
  return SPI_OK;
}

static int count_suffix(const char *suffix) {
  DIR *d = opendir(dir);
  CHECK(d != NULL);
  int n = 0;
  struct dirent *de;
  size_t sl = strlen(suffix);
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if (l >= sl && strcmp(de->d_name + l - sl, suffix) == 0) n++;
  }
  closedir(d);
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!engine) LLVMFuzzerInitialize(NULL, NULL);
  /* 1. In memory. */
  size_t seen = 0;
  spi_jr_scan sc;
  CHECK(spi__journal_scan_mem(&MEM, data, size, 0, check_record, &seen, &sc) ==
        SPI_OK);
  CHECK(sc.records == seen);
  CHECK(sc.valid_bytes <= size);
  CHECK((sc.stop == SPI_JR_END) == (sc.valid_bytes == size));
  CHECK(sc.skipped_bytes <= sc.valid_bytes);
  CHECK((sc.skipped == 0) == (sc.skipped_bytes == 0));

  /* 2. As a segment file, through a queue. */
  clear_dir(0);
  char path[512];
  snprintf(path, sizeof path, "%s/000001.log", dir);
  FILE *fp = fopen(path, "wb");
  CHECK(fp != NULL);
  CHECK(fwrite(data, 1, size, fp) == size);
  CHECK(fclose(fp) == 0);
  spi_replay_queue *q = NULL;
  int rc = spi_replay_open(engine, cfg, strlen(cfg), &q);
  CHECK(rc == SPI_OK);
  spi_replay_store_stats ss;
  memset(&ss, 0, sizeof ss);
  ss.struct_size = sizeof ss;
  CHECK(spi__replay_store_stats(q, &ss) == SPI_OK);
  CHECK(ss.recovered == sc.records);
  CHECK(ss.torn == sc.skipped + (sc.stop != SPI_JR_END));
  CHECK(ss.skipped == sc.skipped && ss.skipped_bytes == sc.skipped_bytes);
  CHECK(ss.bytes == sc.valid_bytes);
  struct stat sb;
  CHECK(stat(path, &sb) == 0);
  CHECK((uint64_t)sb.st_size == sc.valid_bytes);
  CHECK(count_suffix(".corrupt") == (sc.stop == SPI_JR_CORRUPT));
  CHECK((spi_replay_errmsg(q)[0] != '\0') ==
        (sc.stop != SPI_JR_END || sc.skipped > 0));
  /* Whatever came back can be claimed and acked. */
  static uint8_t buf[1 << 16];
  for (int i = 0; i < 64; i++) {
    spi_envelope out;
    memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    uint64_t id = 0;
    rc = spi_replay_claim(q, 0xe, 0, &id, &out, buf, sizeof buf, NULL);
    if (rc != SPI_OK || id == 0) break;
    CHECK(spi_replay_ack(q, id) == SPI_OK);
  }
  spi_replay_close(q);
  return 0;
}
