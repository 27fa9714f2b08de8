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
 * cut-off record, and the open warns exactly when there was damage (a
 * record read whole despite a damaged length field included). Records
 * handed out must be well-formed.
 *
 * Where the journal lives: by default on the in-memory file system of
 * memfs.c, under MEMFS_ROOT. This target is linked with -Wl,--wrap for
 * each file call the journal makes (tests/CMakeLists.txt), so the
 * library's unchanged objects read, write, rename and sync files there:
 * the same framing, recovery, resync, set-aside and claim/ack code runs,
 * without a system call. That is ~4 times faster than a directory on
 * /dev/shm (docs/testing.md has the figures), and it also checks that the
 * queue leaves no descriptor open after it is closed. With SPI_FUZZ_DIR
 * set the journal goes to a new directory under that real directory
 * instead (the calls pass through to the C library), as before: it costs
 * a real fdatasync per input on a disk file system, little on /dev/shm.
 * Either way the directory is made once and reused; between inputs only
 * the files an input leaves (segments, set-aside tails) are removed, not
 * the lock file.
 *
 * SPI_FUZZ_TRACE=<file> appends one line per input with what it came to
 * (recovery figures, message, claims, the files left and their sizes);
 * tests/fuzz/same_outcomes.sh compares these lines between the two file
 * systems over a corpus.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memfs.h"
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
static int in_memory;
static FILE *trace;

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
  if (trace) fclose(trace);
  if (in_memory) memfs_reset();
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  /* Where the journal directory goes: see the comment at the top. */
  const char *base = getenv("SPI_FUZZ_DIR");
  in_memory = !base || !base[0];
  if (in_memory) {
    snprintf(dir, sizeof dir, "%s/spi-fuzz-journal", MEMFS_ROOT);
    CHECK(mkdir(dir, 0700) == 0);
  } else {
    snprintf(dir, sizeof dir, "%s/spi-fuzz-journal-XXXXXX", base);
    CHECK(mkdtemp(dir) != NULL);
  }
  const char *tr = getenv("SPI_FUZZ_TRACE");
  if (tr && tr[0]) CHECK((trace = fopen(tr, "a")) != NULL);
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

static int cmp_name(const void *a, const void *b) {
  return strcmp((const char *)a, (const char *)b);
}

/* One line of what an input came to (SPI_FUZZ_TRACE): the recovery
 * figures, the queue's message with the directory's name taken out, the
 * claims, and the files left (sorted, with sizes). */
static void trace_outcome(const spi_replay_store_stats *ss, const char *msg,
                          int claimed) {
  fprintf(trace, "recovered=%llu torn=%llu skipped=%llu/%llu bytes=%llu "
                 "claimed=%d msg=",
          (unsigned long long)ss->recovered, (unsigned long long)ss->torn,
          (unsigned long long)ss->skipped,
          (unsigned long long)ss->skipped_bytes,
          (unsigned long long)ss->bytes, claimed);
  size_t dl = strlen(dir);
  for (const char *m = msg; *m;) {
    if (strncmp(m, dir, dl) == 0) {
      fputs("DIR", trace);
      m += dl;
    } else {
      fputc(*m++, trace);
    }
  }
  static char names[64][300];
  int n = 0;
  DIR *d = opendir(dir);
  CHECK(d != NULL);
  struct dirent *de;
  while ((de = readdir(d)) != NULL && n < 64) {
    if (de->d_name[0] == '.') continue;
    char path[512];
    struct stat sb;
    snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    CHECK(lstat(path, &sb) == 0);
    snprintf(names[n++], sizeof names[0], "%s:%lld%s", de->d_name,
             (long long)sb.st_size, S_ISREG(sb.st_mode) ? "" : "(not a file)");
  }
  closedir(d);
  qsort(names, (size_t)n, sizeof names[0], cmp_name);
  fputs(" files=", trace);
  for (int i = 0; i < n; i++) fprintf(trace, "%s%s", i ? "," : "", names[i]);
  fputc('\n', trace);
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
  char path[512];
  snprintf(path, sizeof path, "%s/000001.log", dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  CHECK(fd >= 0);
  CHECK(size == 0 || write(fd, data, size) == (ssize_t)size);
  CHECK(close(fd) == 0);
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
        (sc.stop != SPI_JR_END || sc.skipped > 0 || sc.repaired > 0));
  static char msg[1024];
  if (trace) snprintf(msg, sizeof msg, "%s", spi_replay_errmsg(q));
  /* Whatever came back can be claimed and acked. */
  static uint8_t buf[1 << 16];
  int claimed = 0;
  for (int i = 0; i < 64; i++) {
    spi_envelope out;
    memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    uint64_t id = 0;
    rc = spi_replay_claim(q, 0xe, 0, &id, &out, buf, sizeof buf, NULL);
    if (rc != SPI_OK || id == 0) break;
    CHECK(spi_replay_ack(q, id) == SPI_OK);
    claimed++;
  }
  spi_replay_close(q);
  /* The closed queue holds no descriptor of the journal. */
  if (in_memory) CHECK(memfs_open_count() == 0);
  if (trace) trace_outcome(&ss, msg, claimed);
  /* Cleared now rather than before the next input, so what the input
   * allocated it also frees: libFuzzer reruns any input that does not
   * under the leak checker. */
  clear_dir(0);
  return 0;
}
