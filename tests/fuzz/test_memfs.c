/*
 * test_memfs.c - the in-memory file system of the journal fuzz target
 * (memfs.c) answers as the real one does.
 *
 * One script of file calls, the ones the journal makes and their error
 * cases (O_EXCL, O_NOFOLLOW on a link, O_DIRECTORY on a file, a write-only
 * read, ftruncate of a read-only descriptor, links and st_nlink, rename
 * over a name, unlink of an open file, readdir, rmdir of a non-empty
 * directory...), runs once in a new directory under $TMPDIR (or /tmp) and
 * once under MEMFS_ROOT. Each step logs its result (a descriptor as "fd",
 * -1 with its errno, the bytes read, stat fields); the two logs must be
 * the same line for line. The program is linked with the same
 * -Wl,--wrap options as the fuzz target.
 */
#define _GNU_SOURCE /* AT_SYMLINK_NOFOLLOW, O_NOFOLLOW, symlinkat */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memfs.h"

typedef struct {
  char text[16384];
  size_t len;
  int steps;
} log_t;

static void note(log_t *l, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(l->text + l->len, sizeof l->text - l->len, fmt, ap);
  va_end(ap);
  if (n > 0 && l->len + (size_t)n < sizeof l->text) l->len += (size_t)n;
}

/* Log a call's result: "fd" for a descriptor when fd is set. */
static long step(log_t *l, int line, long rc, int fd) {
  int e = errno;
  l->steps++;
  if (rc < 0)
    note(l, "%d: -1 errno %d (%s)\n", line, e, strerror(e));
  else if (fd)
    note(l, "%d: fd\n", line);
  else
    note(l, "%d: %ld\n", line, rc);
  errno = 0;
  return rc;
}

static int step_fd(log_t *l, int line, int fd) {
  return (int)step(l, line, fd, 1);
}

#define RC(expr) ((void)step(l, __LINE__, (long)(expr), 0))
#define FD(expr) step_fd(l, __LINE__, (expr))

static void stat_note(log_t *l, int line, int rc, const struct stat *sb) {
  if (rc != 0) {
    step(l, line, rc, 0);
    return;
  }
  note(l, "%d: %s nlink %ld size %lld own %d\n", line,
       S_ISDIR(sb->st_mode)   ? "dir"
       : S_ISLNK(sb->st_mode) ? "link"
       : S_ISREG(sb->st_mode) ? "file"
                              : "other",
       (long)sb->st_nlink, S_ISREG(sb->st_mode) ? (long long)sb->st_size : 0LL,
       sb->st_uid == geteuid());
}

#define FSTAT(fd)                                                              \
  do {                                                                         \
    struct stat sb_;                                                           \
    stat_note(l, __LINE__, fstat((fd), &sb_), &sb_);                           \
  } while (0)
#define FSTATAT(dfd, name, flags)                                              \
  do {                                                                         \
    struct stat sb_;                                                           \
    stat_note(l, __LINE__, fstatat((dfd), (name), &sb_, (flags)), &sb_);       \
  } while (0)

static void read_note(log_t *l, int line, int fd, size_t n) {
  char buf[64];
  if (n > sizeof buf) n = sizeof buf;
  ssize_t got = read(fd, buf, n);
  if (got < 0) {
    step(l, line, -1, 0);
    return;
  }
  note(l, "%d: read %zd \"", line, got);
  for (ssize_t i = 0; i < got; i++)
    note(l, buf[i] >= 32 && buf[i] < 127 ? "%c" : "\\%o", buf[i]);
  note(l, "\"\n");
}

#define READ(fd, n) read_note(l, __LINE__, (fd), (n))

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names of a directory, sorted, on one line. */
static void list_note(log_t *l, int line, int dfd) {
  int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    step(l, line, -1, 0);
    return;
  }
  char *names[64];
  int n = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL && n < 64) names[n++] = strdup(de->d_name);
  rewinddir(d);
  int again = 0;
  while (readdir(d) != NULL) again++;
  closedir(d);
  qsort(names, (size_t)n, sizeof names[0], cmp_str);
  note(l, "%d: %d names (%d after rewind):", line, n, again);
  for (int i = 0; i < n; i++) {
    note(l, " %s", names[i]);
    free(names[i]);
  }
  note(l, "\n");
}

/* Steps on the files of one journal directory. */
static void files(log_t *l, int dfd) {
  int lk = FD(openat(dfd, "LOCK", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600));
  FSTAT(lk);
  struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
  RC(fcntl(lk, F_SETLK, &fl));
  fl.l_type = F_WRLCK;
  RC(fcntl(lk, F_GETLK, &fl));
  note(l, "getlk type %s\n", fl.l_type == F_UNLCK ? "unlocked" : "locked");
  RC(fcntl(lk, F_GETFD) & FD_CLOEXEC);
  int w = FD(openat(dfd, "000001.log", O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW, 0600));
  FD(openat(dfd, "000001.log", O_WRONLY | O_CREAT | O_EXCL, 0600));
  RC(write(w, "hello world", 11));
  READ(w, 4);
  RC(lseek(w, 0, SEEK_SET));
  RC(write(w, "!", 1)); /* O_APPEND: at the end all the same */
  RC(lseek(w, 0, SEEK_CUR));
  int r = FD(openat(dfd, "000001.log", O_RDWR | O_NOFOLLOW | O_CLOEXEC));
  READ(r, 5);
  RC(lseek(r, 0, SEEK_END));
  RC(lseek(r, -20, SEEK_CUR));
  RC(lseek(r, 3, SEEK_SET));
  READ(r, 64);
  READ(r, 64);
  RC(ftruncate(r, 5));
  FSTAT(r);
  RC(ftruncate(r, 8)); /* grows with zeros */
  RC(pread(r, (char[8]){0}, 8, 0));
  RC(pwrite(r, "XY", 2, 1));
  RC(lseek(r, 0, SEEK_SET));
  READ(r, 64);
  RC(ftruncate(r, -1));
  int ro = FD(openat(dfd, "000001.log", O_RDONLY));
  RC(ftruncate(ro, 1));
  RC(write(ro, "x", 1));
  RC(close(ro));
  /* Links: a set-aside name, then the old one goes. */
  RC(linkat(dfd, "000001.log", dfd, "000001.log.corrupt", 0));
  FSTAT(r);
  RC(linkat(dfd, "000001.log", dfd, "000001.log.corrupt", 0));
  RC(linkat(dfd, "nothing", dfd, "other", 0));
  RC(unlinkat(dfd, "000001.log", 0));
  FSTAT(r);
  FSTATAT(dfd, "000001.log", AT_SYMLINK_NOFOLLOW);
  FSTATAT(dfd, "000001.log.corrupt", AT_SYMLINK_NOFOLLOW);
  /* A planted link. */
  RC(symlinkat("LOCK", dfd, "000002.log"));
  FD(openat(dfd, "000002.log", O_RDWR | O_NOFOLLOW));
  FD(openat(dfd, "000002.log", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600));
  FD(openat(dfd, "000002.log", O_WRONLY | O_CREAT | O_EXCL, 0600));
  FSTATAT(dfd, "000002.log", AT_SYMLINK_NOFOLLOW);
  FSTATAT(dfd, "000002.log", 0);
  int viaf = FD(openat(dfd, "000002.log", O_RDONLY));
  FSTAT(viaf);
  RC(close(viaf));
  RC(symlinkat("nowhere", dfd, "000003.log"));
  FD(openat(dfd, "000003.log", O_RDONLY));
  FSTATAT(dfd, "000003.log", 0);
  /* Wrong kinds. */
  FD(openat(dfd, "LOCK", O_RDONLY | O_DIRECTORY));
  FD(openat(dfd, ".", O_WRONLY));
  FD(openat(dfd, "missing", O_RDONLY));
  FD(openat(dfd, "LOCK/x", O_RDONLY));
  FD(openat(dfd, "missing/x", O_RDWR | O_CREAT, 0600));
  RC(mkdirat(dfd, "LOCK", 0700));
  /* Rename over a name; the old content goes with the old name. */
  int t = FD(openat(dfd, "compact.tmp", O_WRONLY | O_CREAT | O_EXCL, 0600));
  RC(write(t, "snap", 4));
  RC(close(t));
  t = FD(openat(dfd, "000004.snap", O_WRONLY | O_CREAT | O_EXCL, 0600));
  RC(write(t, "old snapshot", 12));
  RC(renameat(dfd, "compact.tmp", dfd, "000004.snap"));
  FSTAT(t);
  RC(close(t));
  FSTATAT(dfd, "000004.snap", 0);
  RC(renameat(dfd, "compact.tmp", dfd, "000005.snap"));
  list_note(l, __LINE__, dfd);
  /* Unlinked while open: still readable through the descriptor. */
  RC(unlinkat(dfd, "000001.log.corrupt", 0));
  FSTAT(r);
  RC(lseek(r, 0, SEEK_SET));
  READ(r, 3);
  RC(close(r));
  RC(close(w));
  RC(close(lk));
}

/* Steps on directories; ends with base removed. */
static void dirs(log_t *l, const char *base, int dfd) {
  char p[512];
  RC(mkdirat(dfd, "sub", 0700));
  RC(unlinkat(dfd, "sub", 0));
  int f = FD(openat(dfd, "sub/f", O_WRONLY | O_CREAT, 0600));
  RC(close(f));
  RC(unlinkat(dfd, "sub", AT_REMOVEDIR));
  RC(unlinkat(dfd, "sub/f", AT_REMOVEDIR));
  RC(unlinkat(dfd, "sub/f", 0));
  RC(unlinkat(dfd, "sub", AT_REMOVEDIR));
  RC(unlinkat(dfd, "sub", AT_REMOVEDIR));
  snprintf(p, sizeof p, "%s/LOCK", base);
  struct stat sb;
  stat_note(l, __LINE__, stat(p, &sb), &sb);
  snprintf(p, sizeof p, "%s/000002.log", base);
  stat_note(l, __LINE__, lstat(p, &sb), &sb);
  DIR *d = opendir(base);
  note(l, "opendir %s\n", d ? "ok" : "failed");
  struct dirent *de;
  while (d && (de = readdir(d)) != NULL) {
    if (de->d_name[0] == '.') continue;
    snprintf(p, sizeof p, "%s/%s", base, de->d_name);
    RC(unlink(p));
  }
  if (d) closedir(d);
  list_note(l, __LINE__, dfd);
  RC(close(dfd));
  RC(rmdir(base));
  RC(rmdir(base));
  RC(mkdir(base, 0700));
  RC(mkdir(base, 0700));
  RC(rmdir(base));
}

static void script(log_t *l, const char *base) {
  RC(mkdir(base, 0700));
  RC(mkdir(base, 0700));
  int dfd = FD(open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  FSTAT(dfd);
  files(l, dfd);
  dirs(l, base, dfd);
}

static log_t real_log, mem_log;

int main(void) {
  const char *tmp = getenv("TMPDIR");
  char top[512], base[600];
  snprintf(top, sizeof top, "%s/spi-memfs-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(top)) {
    perror("mkdtemp");
    return 1;
  }
  snprintf(base, sizeof base, "%s/j", top);
  script(&real_log, base);
  rmdir(top);
  snprintf(base, sizeof base, "%s/j", MEMFS_ROOT);
  script(&mem_log, base);
  int fail = 0;
  if (real_log.len != mem_log.len ||
      memcmp(real_log.text, mem_log.text, real_log.len) != 0) {
    /* Show the first lines that differ. */
    const char *a = real_log.text, *b = mem_log.text;
    while (*a && *b) {
      const char *ea = strchr(a, '\n'), *eb = strchr(b, '\n');
      if (!ea || !eb) break;
      if (ea - a != eb - b || memcmp(a, b, (size_t)(ea - a)) != 0) {
        fprintf(stderr, "real:   %.*s\nmemory: %.*s\n", (int)(ea - a), a,
                (int)(eb - b), b);
        fail = 1;
      }
      a = ea + 1;
      b = eb + 1;
    }
    fail = 1;
  }
  if (memfs_open_count() != 0 || memfs_bytes() != 0) {
    fprintf(stderr, "memfs: %d descriptors and %zu bytes left\n",
            memfs_open_count(), memfs_bytes());
    fail = 1;
  }
  if (real_log.steps < 75) {
    fprintf(stderr, "only %d steps ran\n", real_log.steps);
    fail = 1;
  }
  if (getenv("SPI_MEMFS_VERBOSE")) fputs(mem_log.text, stdout);
  if (!fail) printf("memfs: %d steps, same results as %s\n", real_log.steps, top);
  return fail;
}
