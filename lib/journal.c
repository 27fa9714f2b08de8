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
 *   *.corrupt                     damaged bytes kept for the operator
 *                                 (never read, never overwritten)
 *
 * Every record is framed (journal_codec.h): magic, length, sequence,
 * payload, CRC-32C. On open, recovery reads the newest snapshot (if any) and
 * every log after it in order and hands every good record to the queue. A
 * damaged record is skipped: the scan finds the next good record and goes
 * on, so one bad record never hides the ones after it, in its segment or in
 * later ones (nor does a record found inside its payload: journal_codec.c,
 * and next_bound() below). Nothing is renamed or deleted for it:
 *   - damage inside a segment stays where it is (the segment is only read),
 *     so every later open skips and reports it again, until a compaction
 *     replaces the segment; then the whole segment is kept as
 *     NNNNNN.log.corrupt (or .snap.corrupt) instead of being removed, and
 *     when it was the snapshot recovery started from, so is every older
 *     file recovery had kept for it (the only other copy of what it lost);
 *     a replaced file that the last compaction could not move aside is
 *     moved by the next recovery, which reads such leftovers before it
 *     removes them;
 *   - damage at the end of the log appends go to is cut off so appends go on
 *     after good records: a torn record (cut off mid-write by a crash; its
 *     append never returned SPI_OK) is dropped, anything else is first
 *     copied to NNNNNN.log.<offset>.corrupt;
 *   - a record whose length field alone was damaged is a good record: the
 *     scan reads it by the length its payload gives, checked by its
 *     checksum (journal_codec.c, repair_at()), wherever it is (a length
 *     grown past the end would make the last record look torn, and drop a
 *     record whose append had returned). It is left as it is, like
 *     damage inside a segment: nothing is cut after it (appends follow it)
 *     and its header is not rewritten. Rewriting four bytes in place would
 *     make later opens quiet, but it is a write into acknowledged bytes
 *     that a crash can tear, it needs a copy aside first to keep the
 *     evidence, and it buys nothing: the repair does not depend on what
 *     follows the record, so every later open reads it the same way (and
 *     says so), with no new file. A compaction keeps the segment aside
 *     like any other with damage.
 * Evidence files are created with O_EXCL under a fresh name, so a later
 * recovery never overwrites an earlier one's. Every open counts them
 * (stats aside_files) and says so in its warning until they are removed.
 *
 * Files are opened relative to the directory, never through a symbolic link
 * (O_NOFOLLOW), and must be regular files with one link, owned by this user:
 * anything else is refused with SPI_EIO, and its target is never touched.
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
 * rename is the commit point. It syncs under every policy, none too: the
 * snapshot replaces files that may have been on disk for long, and its
 * data and rename must be durable before their unlinks can be. Older files are removed afterwards; if the
 * process dies first, the next recovery removes them.
 *
 * After a failed write that cannot be undone, or any failed fdatasync, the
 * journal refuses every further append with SPI_EIO: what reached the disk
 * is no longer known, and reopening (recovery) is the way back.
 *
 * Only POSIX calls: openat, read, write, fdatasync, fsync, ftruncate,
 * renameat, linkat, unlinkat, fdopendir, fcntl.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "journal_codec.h"
#include "replay.h"

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

/* The order of replay.fsync's names (spi_journal_cfg.fsync). */
enum { FSYNC_ALWAYS = 0, FSYNC_BATCH = 1, FSYNC_NONE = 2 };

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
  uint64_t aside_bytes; /* of the *.corrupt files */
  uint32_t *damaged;    /* numbers of segments left in place with damage */
  size_t ndamaged;
  /* The number of the chain's snapshot when it had damage: the files
   * before it, which recovery keeps, are the only other copy of what it
   * lost, so compaction keeps them aside too. 0: none. */
  uint32_t keep_before;
  spi_replay_store_stats stats;
  spi_buf enc;
} journal;

static void seg_name(uint32_t no, int snap, char *buf, size_t cap) {
  snprintf(buf, cap, "%06u.%s", (unsigned)no, snap ? "snap" : "log");
}

/* open_seg's errno for a file that is there but not one the journal made. */
#define JR_ENOTOURS (-1000)

static const char *errno_text(int errnum) {
  if (errnum == JR_ENOTOURS)
    return "not a regular file with one link owned by this user; refused";
  /* O_NOFOLLOW on a final component that is a link. */
  if (errnum == ELOOP) return "a symbolic link; refused (links are never followed)";
  return strerror(errnum);
}

/* An I/O failure: message with the path and errno text, SPI_EIO. */
static int io_fail(char *err, size_t cap, const journal *j, const char *name,
                   const char *op, int errnum) {
  spi__errf(err, cap, "journal %.*s/%s: %s: %s", SPI_CUT(j->dir, 160),
            name ? name : "", op, errno_text(errnum));
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

/*
 * Open a file of the directory by name, relative to the directory's fd and
 * never through a symbolic link: a link planted as 000001.log would
 * otherwise have its target truncated and written. What opens must be a
 * regular file with a single link, owned by this user, as the journal
 * creates them (a hard link to someone else's file fails the check).
 * Returns the fd, or -1 with errno (JR_ENOTOURS for a failed check).
 */
static int open_seg(journal *j, const char *name, int flags) {
  int fd;
  do fd = openat(j->dirfd, name, flags | O_CLOEXEC | O_NOFOLLOW, 0600);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) return -1;
  struct stat sb;
  int e = 0;
  if (fstat(fd, &sb) != 0)
    e = errno;
  else if (!S_ISREG(sb.st_mode) || sb.st_nlink != 1 || sb.st_uid != geteuid())
    e = JR_ENOTOURS;
  if (e) {
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static int unlink_name(journal *j, const char *name) {
  return unlinkat(j->dirfd, name, 0);
}

/* A new file name for evidence: base, or base.1, base.2, ... whichever does
 * not exist yet, made with O_EXCL so nothing earlier is ever overwritten.
 * Returns the fd (name in out) or -1 with errno. */
static int create_aside(journal *j, const char *base, char *out, size_t cap) {
  for (int k = 0; k < 1000; k++) {
    if (k == 0)
      snprintf(out, cap, "%s.corrupt", base);
    else
      snprintf(out, cap, "%s.%d.corrupt", base, k);
    int fd = open_seg(j, out, O_WRONLY | O_CREAT | O_EXCL);
    if (fd >= 0 || errno != EEXIST) return fd;
  }
  errno = EEXIST;
  return -1;
}

/* ------------------------------------------------------------- configure */

static int parse_cfg(journal *j, const char *text, size_t len, char *err,
                     size_t cap) {
  cJSON *root = NULL;
  int rc =
      spi__json_parse_object(text, len, 1u << 20, "replay", &root, err, cap);
  if (rc != SPI_OK) return rc;
  /* The keys are read where the queue reads them (replay.c). */
  spi_journal_cfg jc;
  rc = spi__replay_journal_cfg(root, &jc, err, cap);
  const char *dir = jc.dir;
  size_t dlen = rc == SPI_OK ? jc.dir_len : 0;
  j->group_commit_ms = jc.group_commit_ms;
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
  j->policy = rc == SPI_OK ? jc.fsync : FSYNC_BATCH;
  j->segment_bytes = (uint64_t)jc.segment_bytes;
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
    spi__errf(err, cap, "journal %.*s: in use by process %ld",
              SPI_CUT(j->dir, 160), pid);
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
  spi__free(&j->mem, j->damaged);
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
        spi__errf(err, cap, "journal %.*s: already open in this process",
                  SPI_CUT(j->dir, 160));
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

/* The directory's files: the segments sorted (out, n), the highest number
 * any name carries (never reused), and the evidence files (*.corrupt)
 * counted into j->stats. Removes a leftover compact.tmp. */
static int list_files(journal *j, jr_file **out, size_t *n, uint32_t *max_no,
                      char *err, size_t cap) {
  *out = NULL;
  *n = 0;
  *max_no = 0;
  /* A fresh descriptor of the directory: its own read position. */
  int dfd = openat(j->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
  if (!d) {
    int e = errno;
    if (dfd >= 0) close(dfd);
    return io_fail(err, cap, j, NULL, "opendir", e);
  }
  jr_file *v = NULL;
  size_t len = 0, vcap = 0;
  uint64_t aside = 0, aside_bytes = 0;
  int rc = SPI_OK;
  for (;;) {
    errno = 0;
    struct dirent *de = readdir(d);
    if (!de) {
      if (errno) rc = io_fail(err, cap, j, NULL, "readdir", errno);
      break;
    }
    if (strcmp(de->d_name, "compact.tmp") == 0) {
      (void)unlink_name(j, de->d_name); /* never committed */
      continue;
    }
    size_t nl = strlen(de->d_name);
    if (nl > 8 && strcmp(de->d_name + nl - 8, ".corrupt") == 0) {
      struct stat sb;
      aside++;
      if (fstatat(j->dirfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0)
        aside_bytes += (uint64_t)sb.st_size;
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
    memset(&v[len], 0, sizeof v[len]);
    v[len].no = no;
    v[len].snap = snap;
    len++;
  }
  closedir(d);
  if (rc != SPI_OK) {
    spi__free(&j->mem, v);
    return rc;
  }
  if (len) qsort(v, len, sizeof *v, cmp_file);
  j->stats.aside_files = aside;
  j->aside_bytes = aside_bytes;
  *out = v;
  *n = len;
  return SPI_OK;
}

/* Copy bytes [from, end) of the open file fd into a new evidence file named
 * after base; its name goes to aside. */
static int copy_tail(journal *j, int fd, uint64_t from, const char *base,
                     char *aside, size_t aside_cap) {
  int out = create_aside(j, base, aside, aside_cap);
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

/* Move segment name to a fresh NAME.corrupt, never over an existing file:
 * a new link, then the old name goes; where the file system has no hard
 * links, a rename to a name found free (the directory is this journal's
 * alone while it is open). 0, or -1 with the segment left where it is. */
static int keep_aside(journal *j, const char *name) {
  char aside[JR_NAME_MAX + 24];
  struct stat sb;
  uint64_t size = fstatat(j->dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0
                      ? (uint64_t)sb.st_size
                      : 0;
  for (int k = 0; k < 1000; k++) {
    if (k == 0)
      snprintf(aside, sizeof aside, "%s.corrupt", name);
    else
      snprintf(aside, sizeof aside, "%s.%d.corrupt", name, k);
    if (linkat(j->dirfd, name, j->dirfd, aside, 0) == 0) {
      (void)unlink_name(j, name);
    } else if (errno == EEXIST ||
               fstatat(j->dirfd, aside, &sb, AT_SYMLINK_NOFOLLOW) == 0) {
      continue; /* the name is taken: the next one */
    } else if (errno != ENOENT ||
               renameat(j->dirfd, name, j->dirfd, aside) != 0) {
      return -1;
    }
    j->stats.aside_files++;
    j->aside_bytes += size;
    return 0;
  }
  return -1;
}

/* Cut the log appends go to (open as fd) after its last good record, so
 * appends follow good records; damage that is not a torn record is copied
 * aside first. */
static int cut_tail(journal *j, const jr_file *f, int fd, const spi_jr_scan *sc,
                    char *aside, size_t aside_cap, char *err, size_t cap) {
  char name[JR_NAME_MAX];
  seg_name(f->no, f->snap, name, sizeof name);
  aside[0] = '\0';
  if (sc->stop == SPI_JR_CORRUPT) {
    char base[JR_NAME_MAX + 24];
    snprintf(base, sizeof base, "%s.%llu", name,
             (unsigned long long)sc->valid_bytes);
    if (copy_tail(j, fd, sc->valid_bytes, base, aside, aside_cap) != 0)
      return io_fail(err, cap, j, aside[0] ? aside : base, "set aside", errno);
    j->stats.aside_files++;
    j->aside_bytes += f->size - sc->valid_bytes;
  }
  if (ftruncate(fd, (off_t)sc->valid_bytes) != 0)
    return io_fail(err, cap, j, name, "ftruncate", errno);
  if (j->policy != FSYNC_NONE && sync_fd(fd) != 0)
    return io_fail(err, cap, j, name, "fdatasync", errno);
  return SPI_OK;
}

/* Read one chain file into fn, its sequences past after_seq and below
 * before_seq. *sc says what it found; *fd_out is the file, still open. */
static int read_file(journal *j, jr_file *f, int *fd_out, uint64_t after_seq,
                     uint64_t before_seq, spi_replay_record_fn fn, void *user,
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
  spi_jr_reader r;
  spi__jr_reader_file(&r, fd, f->size, &j->mem);
  r.before_seq = before_seq;
  int rc = spi__jr_scan(&r, after_seq, fn, user, sc);
  spi__jr_reader_free(&r);
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

/* Add "; " and a formatted part to the warning w (cut at its size). */
static void warn_add(char *w, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn_add(char *w, size_t cap, const char *fmt, ...) {
  size_t used = strlen(w);
  if (used + 3 >= cap) return;
  if (used) {
    memcpy(w + used, "; ", 3);
    used += 2;
  }
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(w + used, cap - used, fmt, ap); /* cut between characters */
  va_end(ap);
}

/* Remember that segment no holds damage: a compaction keeps it aside. */
static int note_damaged(journal *j, uint32_t no) {
  uint32_t *nv = spi__calloc(&j->mem, j->ndamaged + 1, sizeof *nv);
  if (!nv) return SPI_ENOMEM;
  if (j->ndamaged) memcpy(nv, j->damaged, j->ndamaged * sizeof *nv);
  nv[j->ndamaged++] = no;
  spi__free(&j->mem, j->damaged);
  j->damaged = nv;
  return SPI_OK;
}

/* Add to rep, the repair notes, that file name held records read by
 * repair_at(). The stats count them in repaired alone, not with what
 * recovery lost or skipped: these records were read whole. j_recover puts
 * rep after every note of a loss, since the warning is cut at its size. */
static void note_repaired(const char *name, const spi_jr_scan *sc, char *rep,
                          size_t rcap) {
  warn_add(rep, rcap,
           "%s: %llu record%s with a damaged length field read whole (first "
           "at offset %llu)",
           name, (unsigned long long)sc->repaired, sc->repaired == 1 ? "" : "s",
           (unsigned long long)sc->repaired_at);
}

/* The damaged end of chain file f: cut off when f is the log appends go to
 * (active), else left in place. Adds to the warning w. */
static int handle_tail(journal *j, jr_file *f, int fd, int active,
                       const spi_jr_scan *sc, const char *name, char *w,
                       size_t wcap, char *err, size_t cap) {
  uint64_t tail = f->size - sc->valid_bytes;
  const char *kind = sc->stop == SPI_JR_TORN ? "torn" : "corrupt";
  if (!active) {
    warn_add(w, wcap,
             "journal %.*s/%s: %s record at the end: %s; %llu bytes left in "
             "place (later segments were read)",
             SPI_CUT(j->dir, 96), name, kind,
             sc->skipped ? "see above" : sc->why,
             (unsigned long long)tail);
    return SPI_OK;
  }
  char aside[JR_NAME_MAX + 40];
  int rc = cut_tail(j, f, fd, sc, aside, sizeof aside, err, cap);
  if (rc != SPI_OK) return rc;
  warn_add(w, wcap, "journal %.*s/%s: %s record: %s; cut off %llu bytes%s%s",
           SPI_CUT(j->dir, 96), name, kind,
           sc->skipped ? "at the end" : sc->why,
           (unsigned long long)tail, aside[0] ? ", kept as " : "", aside);
  f->size = sc->valid_bytes;
  return SPI_OK;
}

/*
 * Account for what the scan of chain file f found, and cut the tail of the
 * log appends go to (active). Adds what was lost to the warning w, what
 * was repaired to rep. A file that keeps damage in place (skipped,
 * repaired, or a tail not cut) is noted for compaction.
 */
static int handle_damage(journal *j, jr_file *f, int fd, int active,
                         const spi_jr_scan *sc, char *w, char *rep,
                         size_t wcap, char *err, size_t cap) {
  char name[JR_NAME_MAX];
  seg_name(f->no, f->snap, name, sizeof name);
  uint64_t tail = sc->stop == SPI_JR_END ? 0 : f->size - sc->valid_bytes;
  j->stats.skipped += sc->skipped;
  j->stats.skipped_bytes += sc->skipped_bytes;
  j->stats.repaired += sc->repaired;
  /* torn and truncated_bytes count every damaged range, as they always
   * have: a monitor that only knows them still sees the damage. */
  j->stats.torn += sc->skipped + (sc->stop != SPI_JR_END);
  j->stats.truncated_bytes += sc->skipped_bytes + tail;
  if (sc->skipped)
    warn_add(w, wcap,
             "journal %.*s/%s: corrupt record: %s; skipped %llu damaged "
             "range(s), %llu bytes, left in place; every good record after "
             "them was read",
             SPI_CUT(j->dir, 96), name, sc->why,
             (unsigned long long)sc->skipped,
             (unsigned long long)sc->skipped_bytes);
  int rc = SPI_OK;
  if (sc->stop != SPI_JR_END)
    rc = handle_tail(j, f, fd, active, sc, name, w, wcap, err, cap);
  if (rc != SPI_OK) return rc;
  if (sc->repaired) note_repaired(name, sc, rep, wcap);
  int kept = sc->skipped || sc->repaired || (sc->stop != SPI_JR_END && !active);
  return kept ? note_damaged(j, f->no) : SPI_OK;
}

/* Whether file f starts with a good record (1, its sequence in *seq) or
 * not (0); or SPI_EIO, SPI_ENOMEM with the message in err. */
static int first_seq(journal *j, const jr_file *f, uint64_t *seq, char *err,
                     size_t cap) {
  char name[JR_NAME_MAX];
  seg_name(f->no, f->snap, name, sizeof name);
  int fd = open_seg(j, name, O_RDONLY);
  if (fd < 0) return io_fail(err, cap, j, name, "open", errno);
  struct stat sb;
  int rc = SPI_OK;
  if (fstat(fd, &sb) != 0) {
    rc = io_fail(err, cap, j, name, "fstat", errno);
  } else {
    spi_jr_reader r;
    spi__jr_reader_file(&r, fd, (uint64_t)sb.st_size, &j->mem);
    rc = spi__jr_first_seq(&r, seq);
    spi__jr_reader_free(&r);
    if (rc == SPI_EIO)
      io_fail(err, cap, j, name, "read", r.err);
    else if (rc == SPI_ENOMEM)
      spi__errf(err, cap, "journal: out of memory");
  }
  close(fd);
  return rc;
}

/*
 * The bound on the sequences of chain file i: the sequence of the first
 * record of the nearest later file that starts with a good one, *bound_at
 * that file's index (n, and UINT64_MAX, when none does).
 *
 * Sound because sequences only grow along the chain: appends take the next
 * one, a new segment goes on from the last, and a snapshot and the log
 * after it take theirs from past everything they replace. A file's first
 * byte is always the start of a record the journal wrote, so a good record
 * there is a real one, and no record of an earlier file can have its
 * sequence or a later one; or it is an old one (blocks of a removed segment
 * reused after a crash, a file put back by hand), whose sequence is below
 * everything written after it. So the bound refuses only what a search
 * after damage finds, never a record read in order from a file's first
 * byte, and only while it is past every record read before the damage (an
 * old one is not): see spi__jr_scan. What it refuses is what a search
 * inside a damaged record found in its payload (see journal_codec.c):
 * without it, one such record with a high sequence at the end of a segment
 * would make every record of the later segments fail "sequence does not
 * increase".
 */
static int next_bound(journal *j, const jr_file *v, size_t i, size_t n,
                      size_t *bound_at, uint64_t *bound, char *err,
                      size_t cap) {
  for (size_t k = i + 1; k < n; k++) {
    int found = first_seq(j, &v[k], bound, err, cap);
    if (found < 0) return found;
    if (found) {
      *bound_at = k;
      return SPI_OK;
    }
  }
  *bound_at = n;
  *bound = UINT64_MAX;
  return SPI_OK;
}

/* Read the chain v[first..n) into fn; *last_seq gets the newest sequence,
 * *damaged whether the first file (a snapshot) had damage. What was lost
 * goes to the warning w, what was repaired to rep (both wcap bytes). */
static int read_chain(journal *j, jr_file *v, size_t first, size_t n,
                      spi_replay_record_fn fn, void *user, uint64_t *last_seq,
                      int *damaged, char *w, char *rep, size_t wcap,
                      char *err, size_t cap) {
  int rc = SPI_OK;
  size_t bound_at = first; /* the file the bound comes from */
  uint64_t bound = UINT64_MAX;
  for (size_t i = first; i < n && rc == SPI_OK; i++) {
    if (bound_at <= i) {
      rc = next_bound(j, v, i, n, &bound_at, &bound, err, cap);
      if (rc != SPI_OK) break;
    }
    int fd = -1;
    spi_jr_scan sc;
    rc = read_file(j, &v[i], &fd, *last_seq, bound, fn, user, &sc, err, cap);
    if (rc != SPI_OK) break;
    j->stats.recovered += sc.records;
    *last_seq = sc.last_seq;
    if (sc.skipped || sc.stop != SPI_JR_END || sc.repaired) {
      /* A repaired record lost nothing: the snapshot still read whole. */
      if (i == first && (sc.skipped || sc.stop != SPI_JR_END)) *damaged = 1;
      int active = i + 1 == n && !v[i].snap;
      rc = handle_damage(j, &v[i], fd, active, &sc, w, rep, wcap, err, cap);
      if (rc == SPI_ENOMEM) spi__errf(err, cap, "journal: out of memory");
    }
    close(fd);
  }
  return rc;
}

/*
 * The files a snapshot that read back whole replaced (v[0..first), left by
 * a compaction that stopped before removing them): removed, but for one
 * with damage (a compaction that could not move it aside left it), which
 * is moved aside now, and, when that is a snapshot, every file before it
 * too, the only other copy of what it lost. One that cannot be read stays.
 * Nonzero if the directory changed.
 */
static int remove_replaced(journal *j, jr_file *v, size_t first) {
  int changed = 0, keep = 0;
  for (size_t i = first; i-- > 0;) {
    char name[JR_NAME_MAX], tmp[SPI_ERRMSG_CAP];
    seg_name(v[i].no, v[i].snap, name, sizeof name);
    int bad = keep, lost = keep;
    if (!bad) {
      int fd = -1;
      spi_jr_scan sc;
      if (read_file(j, &v[i], &fd, 0, UINT64_MAX, NULL, NULL, &sc, tmp,
                    sizeof tmp) != SPI_OK)
        continue;
      close(fd);
      lost = sc.skipped || sc.stop != SPI_JR_END;
      bad = lost || sc.repaired; /* repaired: damaged, nothing lost */
    }
    if (!bad) {
      if (unlink_name(j, name) == 0) changed = 1;
      continue;
    }
    if (keep_aside(j, name) == 0) changed = 1;
    if (v[i].snap && lost) keep = 1;
  }
  return changed;
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
  uint64_t aside_before = j->stats.aside_files;
  size_t first = 0; /* the newest snapshot starts the chain */
  for (size_t i = 0; i < n; i++)
    if (v[i].snap) first = i;
  uint64_t last_seq = 0;
  int damaged = 0, created = 0;
  char warn[SPI_ERRMSG_CAP] = "", rep[SPI_ERRMSG_CAP] = "";
  rc = read_chain(j, v, first, n, fn, user, &last_seq, &damaged, warn, rep,
                  sizeof warn, err, cap);
  int changed = j->stats.truncated_bytes > 0;
  if (rc == SPI_OK) {
    for (size_t i = first; i < n; i++) j->bytes += v[i].size;
    rc = open_active(j, n > first ? &v[n - 1] : NULL, max_no, &created, err,
                     cap);
  }
  if (rc == SPI_OK && created) changed = 1;
  /* Files the snapshot replaced; only once it read back whole. */
  if (rc == SPI_OK && damaged && n && v[first].snap) j->keep_before = v[first].no;
  if (rc == SPI_OK && !damaged && n && v[first].snap && remove_replaced(j, v, first))
    changed = 1;
  if (rc == SPI_OK && changed && j->policy != FSYNC_NONE && sync_dir(j) != 0)
    rc = io_fail(err, cap, j, NULL, "fsync", errno);
  spi__free(&j->mem, v);
  if (rc != SPI_OK) return rc;
  j->next_seq = last_seq + 1;
  j->written_seq = j->synced_seq = last_seq;
  j->recovered = 1;
  /* Evidence from earlier opens is named on every open until removed. */
  if (aside_before)
    warn_add(warn, sizeof warn,
             "journal %.*s: %llu file(s) of damaged records (*.corrupt, "
             "%llu bytes) are kept for inspection; remove them once seen",
             SPI_CUT(j->dir, 96), (unsigned long long)j->stats.aside_files,
             (unsigned long long)j->aside_bytes);
  /* Last, what lost nothing: the warning is cut at its size, and a loss
   * in any file must not be cut for a repair in an earlier one. */
  if (rep[0]) warn_add(warn, sizeof warn, "journal %.*s/%s", SPI_CUT(j->dir, 96), rep);
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

static int was_damaged(const journal *j, uint32_t no) {
  for (size_t i = 0; i < j->ndamaged; i++)
    if (j->damaged[i] == no) return 1;
  return 0;
}

/* Write recs to compact.tmp with sequences from *seq on; syncs it. */
static int write_snapshot(journal *j, const spi_replay_record *recs, size_t n,
                          uint64_t *seq, uint64_t *size, char *err,
                          size_t cap) {
  /* Whatever is there (an unfinished compaction, or a planted link) goes;
   * the new file is created, never opened through a name that exists. */
  (void)unlink_name(j, "compact.tmp");
  int fd = open_seg(j, "compact.tmp", O_WRONLY | O_CREAT | O_EXCL);
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
  /* Synced under every policy, "none" too: the snapshot replaces files
   * that may have been on disk for long, so it must be on disk before its
   * rename and the unlinks of those files can be (one sync a compaction). */
  if (rc == SPI_OK && sync_fd(fd) != 0)
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
    if (renameat(j->dirfd, "compact.tmp", j->dirfd, snap) != 0) {
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
    /* Under "none" too: the rename must be durable before the unlinks of
     * the files the snapshot replaces, or a power loss can keep the
     * unlinks and lose the rename. */
    if (sync_dir(j) != 0) {
      rc = set_failed(j, err, cap, NULL, "fsync", errno);
    } else {
      j->synced_seq = j->written_seq;
      /* Now the snapshot replaces every older file. */
      jr_file *v = NULL;
      size_t nf = 0;
      uint32_t max_no = 0;
      char tmp[SPI_ERRMSG_CAP];
      if (list_files(j, &v, &nf, &max_no, tmp, sizeof tmp) == SPI_OK) {
        int kept_all = 1;
        for (size_t i = 0; i < nf; i++) {
          if (v[i].no >= snap_no) continue;
          char name[JR_NAME_MAX];
          seg_name(v[i].no, v[i].snap, name, sizeof name);
          /* Damaged bytes, and what a damaged snapshot summarised, stay
           * readable; a file that cannot be moved stays where it is and
           * is tried again at the next compaction. */
          if (was_damaged(j, v[i].no) || v[i].no < j->keep_before)
            kept_all &= keep_aside(j, name) == 0;
          else
            unlink_name(j, name);
        }
        if (kept_all) j->ndamaged = 0, j->keep_before = 0;
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
