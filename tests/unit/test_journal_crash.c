/*
 * test_journal_crash.c - the journal survives SIGKILL at any point.
 *
 * A child process opens a journal queue (recovering what the previous child
 * left), then enqueues new keys and claims and acks old ones in a loop. It
 * tells the parent through a pipe, one atomic write per message, what it is
 * about to do ("e", "a") and what returned SPI_OK ("E", "A"). The parent
 * kills it with SIGKILL after a random delay, reads every message, recovers
 * the journal itself and checks:
 *
 *   - every enqueue reported as returned is there, unless an ack of it was
 *     at least started;
 *   - no key whose ack was reported as returned comes back;
 *   - nothing comes back that was never enqueued.
 *
 * In-flight operations (started, not reported) may land either way; the
 * parent learns which from the recovered state. The fsync policy rotates
 * through always, batch and none (all three survive a killed process), and
 * small segments and compaction thresholds make the kills land in rolls
 * and compactions too. Every seventh round the parent also appends a torn
 * record (a prefix of a valid one) or garbage to the last segment and checks
 * that recovery reports it and still loses nothing.
 *
 * Seeded (SPI_CRASH_SEED). By default at most 100 rounds and about 20 s in
 * all, for CI; SPI_CRASH_ROUNDS sets the rounds (up to 100000) and then the
 * time limit is off unless SPI_CRASH_SECONDS sets one. The long run:
 *
 *   SPI_CRASH_ROUNDS=1000 build/tests/test_journal_crash
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "journal_files.h"

#include "replay.h"

#define DEFAULT_ROUNDS 100
#define MAX_ROUNDS 100000
#define MAX_PER_ROUND 20000
#define ALL 0xeu

enum { UNKNOWN = 0, ENQ_STARTED, ENQUEUED, ACK_STARTED, ACKED };

typedef struct msg {
  uint32_t op; /* 'R' (recovered), 'e', 'E', 'a', 'A' */
  uint32_t reserved;
  uint64_t key; /* round * MAX_PER_ROUND + n */
} msg;

static const char *const POLICIES[] = {"always", "batch", "none"};

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void config(char *buf, size_t cap, const char *dir, int round) {
  snprintf(buf, cap,
           "{\"store\":\"journal\",\"dir\":\"%s\",\"fsync\":\"%s\","
           "\"segment_bytes\":32768,\"compact_min_bytes\":16384,"
           "\"lease_ms\":3600000,\"max_acked_keys\":1000}",
           dir, POLICIES[round % 3]);
}

static void send_msg(int fd, uint32_t op, uint64_t key) {
  msg m = {op, 0, key};
  /* One write of 16 bytes to a pipe is atomic: a kill never splits it. */
  while (write(fd, &m, sizeof m) < 0 && errno == EINTR) {
  }
}

/* The child: never returns. */
static void child(const char *dir, int round, int wfd) {
  spi_engine *e = NULL;
  if (spi_engine_new(&e, NULL) != SPI_OK) _exit(3);
  char cfg[512];
  config(cfg, sizeof cfg, dir, round);
  spi_replay_queue *q = NULL;
  if (spi_replay_open(e, cfg, strlen(cfg), &q) != SPI_OK) _exit(4);
  send_msg(wfd, 'R', 0);
  static uint8_t buf[65536];
  for (uint64_t n = 0; n < MAX_PER_ROUND; n++) {
    uint64_t key = (uint64_t)round * MAX_PER_ROUND + n;
    char k[32];
    snprintf(k, sizeof k, "k%llu", (unsigned long long)key);
    spi_envelope v;
    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    v.key = k;
    v.key_len = strlen(k);
    v.body = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
             "\"write a long story\"}]}";
    v.body_len = strlen(v.body);
    v.klass = 1 + (int32_t)(n % 3);
    v.partial_text = "Once upon a time";
    v.partial_text_len = 16;
    send_msg(wfd, 'e', key);
    if (spi_replay_enqueue(q, &v, NULL) != SPI_OK) _exit(5);
    send_msg(wfd, 'E', key);
    if (n % 8 == 0) continue; /* seven acks per eight enqueues */
    spi_envelope out;
    memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    uint64_t id = 0;
    int rc = spi_replay_claim(q, ALL, 0, &id, &out, buf, sizeof buf, NULL);
    if (rc != SPI_OK) _exit(6);
    if (id == 0) continue; /* nothing ready */
    unsigned long long got = 0;
    if (sscanf(out.key, "k%llu", &got) != 1) _exit(7);
    send_msg(wfd, 'a', got);
    if (spi_replay_ack(q, id) != SPI_OK) _exit(8);
    send_msg(wfd, 'A', got);
  }
  _exit(0);
}

typedef struct model {
  uint64_t total;  /* rounds * MAX_PER_ROUND keys */
  uint8_t *state;  /* by key */
  uint8_t *seen;
  size_t rbuf_len;
  uint8_t rbuf[sizeof(msg)];
  uint64_t acks, enqueues;
  int ready; /* the child has recovered and started */
} model;

static void apply(model *m, const msg *x) {
  if (x->op == 'R') {
    m->ready = 1;
    return;
  }
  assert_true(x->key < m->total);
  uint8_t *s = &m->state[x->key];
  switch (x->op) {
  case 'e':
    assert_int_equal(*s, UNKNOWN);
    *s = ENQ_STARTED;
    break;
  case 'E':
    assert_int_equal(*s, ENQ_STARTED);
    *s = ENQUEUED;
    m->enqueues++;
    break;
  case 'a':
    assert_int_equal(*s, ENQUEUED);
    *s = ACK_STARTED;
    break;
  case 'A':
    assert_int_equal(*s, ACK_STARTED);
    *s = ACKED;
    m->acks++;
    break;
  default:
    fail_msg("bad message op %u", x->op);
  }
}

static void feed(model *m, const uint8_t *p, size_t n) {
  while (n) {
    size_t take = sizeof(msg) - m->rbuf_len;
    if (take > n) take = n;
    memcpy(m->rbuf + m->rbuf_len, p, take);
    m->rbuf_len += take;
    p += take;
    n -= take;
    if (m->rbuf_len == sizeof(msg)) {
      msg x;
      memcpy(&x, m->rbuf, sizeof x);
      apply(m, &x);
      m->rbuf_len = 0;
    }
  }
}

/* The highest number of the files <number>.<ext> in dir (0: none). */
static unsigned highest_no(const char *dir, const char *ext) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  unsigned best = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    unsigned no = 0;
    char e[16] = "";
    if (sscanf(de->d_name, "%u.%15s", &no, e) == 2 && strcmp(e, ext) == 0 &&
        no > best)
      best = no;
  }
  closedir(d);
  return best;
}

/* The snapshot number in dir (0: none). */
static unsigned snapshot_no(const char *dir) { return highest_no(dir, "snap"); }

/* The highest-numbered log segment of dir. */
static int last_log(const char *dir, char *out, size_t cap) {
  unsigned best = highest_no(dir, "log");
  if (!best) return 0;
  snprintf(out, cap, "%s/%06u.log", dir, best);
  return 1;
}

/* Append a torn record (kind 0) or garbage (kind 1) to the last segment. */
static void damage_tail(const char *dir, int kind, uint64_t *rng) {
  char path[600];
  if (!last_log(dir, path, sizeof path)) return;
  int fd = open(path, O_WRONLY | O_APPEND);
  assert_true(fd >= 0);
  uint8_t junk[512];
  size_t n;
  if (kind == 0) {
    /* A valid ACK record, cut short. */
    uint8_t rec[64];
    memset(rec, 0, sizeof rec);
    rec[0] = 'S', rec[1] = 'P', rec[2] = 'J', rec[3] = 'R';
    rec[4] = SPI_REPLAY_REC_ACK;
    rec[8] = 10; /* payload length: 8 + key "kx" */
    n = 1 +
        rng_next(rng) % (SPI_JR_HEADER_BYTES + 10 + SPI_JR_TRAILER_BYTES - 1);
    memcpy(junk, rec, n < sizeof rec ? n : sizeof rec);
  } else {
    n = 16 + rng_next(rng) % 200;
    for (size_t i = 0; i < n; i++) junk[i] = (uint8_t)rng_next(rng);
    junk[0] = 0x00; /* never a valid magic */
  }
  assert_int_equal(write(fd, junk, n), (ssize_t)n);
  close(fd);
}

/* Recover in this process and check the model; resolve in-flight ops. */
static void verify(model *m, const char *dir, int round, int damaged) {
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  char cfg[512];
  config(cfg, sizeof cfg, dir, round);
  spi_replay_queue *q = NULL;
  int rc = spi_replay_open(e, cfg, strlen(cfg), &q);
  if (rc != SPI_OK) fail_msg("round %d: open: %s", round, spi_engine_errmsg(e));
  spi_replay_store_stats ss;
  memset(&ss, 0, sizeof ss);
  ss.struct_size = sizeof ss;
  assert_int_equal(spi__replay_store_stats(q, &ss), SPI_OK);
  if (damaged) {
    assert_int_equal(ss.torn, 1);
    const char *msg_ = spi_replay_errmsg(q);
    assert_true(strstr(msg_, "torn record") || strstr(msg_, "corrupt record"));
  }
  size_t total = (size_t)m->total;
  memset(m->seen, 0, total);
  static uint8_t buf[65536];
  for (;;) {
    spi_envelope out;
    memset(&out, 0, sizeof out);
    out.struct_size = sizeof out;
    uint64_t id = 0;
    rc = spi_replay_claim(q, ALL, 0, &id, &out, buf, sizeof buf, NULL);
    assert_int_equal(rc, SPI_OK);
    if (id == 0) break; /* nothing ready */
    unsigned long long key = 0;
    assert_int_equal(sscanf(out.key, "k%llu", &key), 1);
    assert_true(key < total);
    assert_int_equal(m->seen[key], 0);
    m->seen[key] = 1;
    uint8_t s = m->state[key];
    if (s == UNKNOWN || s == ACKED)
      fail_msg("round %d: k%llu came back (state %d)", round, key, s);
    assert_int_equal(out.partial_text_len, 16);
  }
  for (size_t k = 0; k < total; k++) {
    uint8_t *s = &m->state[k];
    if (*s == ENQUEUED && !m->seen[k])
      fail_msg("round %d: acknowledged enqueue k%zu lost", round, k);
    /* What was in flight is now known. */
    if (*s == ENQ_STARTED) *s = m->seen[k] ? ENQUEUED : UNKNOWN;
    if (*s == ACK_STARTED) *s = m->seen[k] ? ENQUEUED : ACKED;
  }
  /* Leases are not durable: closing leaves everything ready. */
  spi_replay_close(q);
  spi_engine_free(e);
}

static void test_sigkill_loop(void **st) {
  (void)st;
  const char *seed_env = getenv("SPI_CRASH_SEED");
  const char *secs_env = getenv("SPI_CRASH_SECONDS");
  uint64_t rng = seed_env ? strtoull(seed_env, NULL, 0) : 0x5eedf00dULL;
  if (!rng) rng = 1;
  const char *rounds_env = getenv("SPI_CRASH_ROUNDS");
  int max_rounds = rounds_env ? atoi(rounds_env) : DEFAULT_ROUNDS;
  if (max_rounds < 10 || max_rounds > MAX_ROUNDS)
    fail_msg("SPI_CRASH_ROUNDS=%s: 10 .. %d", rounds_env, MAX_ROUNDS);
  /* An explicit round count runs them all unless a time limit is set too;
   * 0 means no limit. */
  double budget = secs_env ? atof(secs_env) : rounds_env ? 0.0 : 20.0;
  const char *tmp = getenv("TMPDIR");
  char dir[256];
  snprintf(dir, sizeof dir, "%s/spi-crash-XXXXXX",
           tmp && tmp[0] ? tmp : "/tmp");
  assert_non_null(mkdtemp(dir));
  model m;
  memset(&m, 0, sizeof m);
  m.total = (uint64_t)max_rounds * MAX_PER_ROUND;
  m.state = calloc((size_t)m.total, 1);
  m.seen = calloc((size_t)m.total, 1);
  assert_non_null(m.state);
  assert_non_null(m.seen);
  double start = mono_s();
  int rounds = 0, damaged_rounds = 0, compacted_rounds = 0;
  unsigned snap = 0;
  for (int round = 0; round < max_rounds; round++) {
    if (round >= 10 && budget > 0 && mono_s() - start > budget) break;
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      close(fds[0]);
      child(dir, round, fds[1]);
    }
    close(fds[1]);
    /* Mostly 0..30 ms after the child has recovered; one round in five
     * 0..30 ms after the fork, which can land inside recovery itself. */
    double delay = (double)(rng_next(&rng) % 30000) / 1e6;
    int armed = rng_next(&rng) % 5 == 0; /* timer runs from the fork */
    double until = mono_s() + (armed ? delay : 60.0);
    m.ready = 0;
    uint8_t chunk[4096];
    for (;;) {
      if (!armed && m.ready) {
        until = mono_s() + delay;
        armed = 1;
      }
      double left = until - mono_s();
      if (left <= 0) break;
      struct pollfd p = {fds[0], POLLIN, 0};
      int pr = poll(&p, 1, (int)(left * 1000) + 1);
      if (pr <= 0) continue;
      ssize_t got = read(fds[0], chunk, sizeof chunk);
      if (got <= 0) break; /* the child ended on its own */
      feed(&m, chunk, (size_t)got);
    }
    kill(pid, SIGKILL);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
      fail_msg("round %d: child failed with %d", round, WEXITSTATUS(status));
    for (;;) {
      ssize_t got = read(fds[0], chunk, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) break;
      feed(&m, chunk, (size_t)got);
    }
    close(fds[0]);
    assert_int_equal(m.rbuf_len, 0);
    int damaged = round % 7 == 6;
    if (damaged) {
      damage_tail(dir, (round / 7) % 2, &rng);
      damaged_rounds++;
    }
    /* A new snapshot: a child compacted during this round. */
    unsigned now_snap = snapshot_no(dir);
    if (now_snap != snap) compacted_rounds++;
    snap = now_snap;
    verify(&m, dir, round, damaged);
    rounds++;
  }
  print_message("crash: %d rounds (%d with a damaged tail, %d compacted) in "
                "%.1f s, %llu enqueues and %llu acks confirmed\n",
                rounds, damaged_rounds, compacted_rounds, mono_s() - start,
                (unsigned long long)m.enqueues, (unsigned long long)m.acks);
  assert_true(rounds >= 10);
  assert_true(m.enqueues > 0);
  free(m.state);
  free(m.seen);
  rm_rf(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sigkill_loop),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
