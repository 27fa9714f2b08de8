/*
 * memfs.c - an in-memory file system behind the file calls of a program,
 * for the journal fuzz target (fuzz_journal.c).
 *
 * The program is linked with -Wl,--wrap=<call> for the calls below, so the
 * library's own objects, unchanged, call __wrap_<call> here. A call on a
 * path under MEMFS_ROOT (or relative to a descriptor of it), on a
 * descriptor or a directory stream this file handed out, is served from
 * memory; any other goes to the real call (__real_<call>), which is how
 * libFuzzer still reads its corpus and the target can still run on a real
 * directory.
 *
 * What it models, as Linux does for the cases the journal meets: regular
 * files, directories and symbolic links; names looked up component by
 * component; O_CREAT, O_EXCL (EEXIST, also for a link), O_TRUNC, O_APPEND,
 * O_DIRECTORY (ENOTDIR), O_NOFOLLOW (ELOOP on a link), access modes (EBADF
 * on a read of a write-only descriptor and the reverse, EISDIR);
 * hard links (st_nlink), unlink of an open file (its data lives until the
 * last close), rename over an existing name, rmdir of a non-empty
 * directory (ENOTEMPTY); readdir with "." and "..", whose position lseek
 * can rewind; fcntl record locks (one process: a lock is always granted,
 * F_GETLK reports none); fsync and fdatasync do nothing (nothing is lost).
 * Not modelled: permissions (the owner is the caller, mode bits are kept
 * and reported only), times, ".." above MEMFS_ROOT and links that leave it
 * (EXDEV), dup.
 *
 * Bounded: 64 nodes, 128 names, 64 descriptors, 8 directory streams, 16
 * MiB a file (EFBIG past it), 64 MiB in all (ENOSPC). Thread-safe (one
 * mutex); the pass-through path takes no lock.
 */
#define _GNU_SOURCE /* AT_EMPTY_PATH, F_OFD_*, DT_* */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "memfs.h"

enum { NODES = 64, ENTRIES = 128, FDS = 64, DIRS = 8, NAME_CAP = 128 };
enum { LINK_DEPTH = 8 };
#define FD_BASE (1 << 29)
#define FILE_MAX ((size_t)16 << 20)
#define TOTAL_MAX ((size_t)64 << 20)
#define MEMFS_DEV ((dev_t)0x5350)

enum { K_FREE = 0, K_REG, K_DIR, K_LNK };

typedef struct {
  int kind;
  ino_t ino;
  int links; /* names that point at it */
  int opens; /* descriptors open on it */
  mode_t mode;
  int parent; /* a directory's */
  uint8_t *data;
  size_t size, cap;
} node_t;

typedef struct {
  int used;
  int dir, node;
  char name[NAME_CAP];
} entry_t;

typedef struct {
  int used;
  int node;
  int flags;
  int fdflags;
  off_t off;
} fd_t;

typedef struct {
  int used;
  int fd;
  struct dirent de;
} dir_t;

static struct {
  pthread_mutex_t mu;
  int ready;
  uid_t uid;
  gid_t gid;
  ino_t next_ino;
  size_t bytes;
  node_t nodes[NODES];
  entry_t ents[ENTRIES];
  fd_t fds[FDS];
  dir_t dirs[DIRS];
} fs = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The result of a lookup: the directory the last name is in, that name,
 * its entry and node (-1 when missing). */
typedef struct {
  int parent, ent, node;
  int slash; /* the path ended in '/' */
  char name[NAME_CAP];
} res_t;

/* ------------------------------------------------------------- helpers */

static int fail(int e) {
  errno = e;
  return -1;
}

static int in_root(const char *p) {
  static const char root[] = MEMFS_ROOT;
  if (!p) return 0;
  size_t k = 0;
  while (root[k] && p[k] == root[k]) k++;
  return root[k] == '\0' && (p[k] == '\0' || p[k] == '/');
}

static int our_fd(int fd) { return fd >= FD_BASE && fd < FD_BASE + FDS; }

/* Whether a (dirfd, path) pair names something of ours. */
static int ours(int dirfd, const char *path) {
  if (!path) return 0;
  return path[0] == '/' ? in_root(path) : our_fd(dirfd);
}

static int our_dir(const void *d) {
  const char *p = d, *lo = (const char *)fs.dirs;
  return p >= lo && p < lo + sizeof fs.dirs;
}

static void lock(void) {
  pthread_mutex_lock(&fs.mu);
  if (!fs.ready) {
    memset(fs.nodes, 0, sizeof fs.nodes);
    fs.nodes[0].kind = K_DIR;
    fs.nodes[0].ino = 1;
    fs.nodes[0].links = 1;
    fs.nodes[0].mode = 0755;
    fs.next_ino = 2;
    fs.uid = geteuid();
    fs.gid = getegid();
    fs.ready = 1;
  }
}

static void unlock(void) { pthread_mutex_unlock(&fs.mu); }

static fd_t *get_fd(int fd) {
  if (!our_fd(fd) || !fs.fds[fd - FD_BASE].used) return NULL;
  return &fs.fds[fd - FD_BASE];
}

static void maybe_free(int n) {
  node_t *x = &fs.nodes[n];
  if (n == 0 || x->links > 0 || x->opens > 0) return;
  fs.bytes -= x->cap;
  free(x->data);
  memset(x, 0, sizeof *x);
}

static int node_new(int kind, mode_t mode, int parent) {
  for (int i = 1; i < NODES; i++) {
    if (fs.nodes[i].kind != K_FREE) continue;
    memset(&fs.nodes[i], 0, sizeof fs.nodes[i]);
    fs.nodes[i].kind = kind;
    fs.nodes[i].ino = fs.next_ino++;
    fs.nodes[i].mode = mode & 07777;
    fs.nodes[i].parent = parent;
    return i;
  }
  return fail(ENOSPC);
}

/* Names are compared by hand: the sanitizers' strncmp, with the fuzzer's
 * hook behind it, costs far more than the loop. */
static int find_ent(int dir, const char *name, size_t n) {
  for (int i = 0; i < ENTRIES; i++) {
    const entry_t *e = &fs.ents[i];
    if (!e->used || e->dir != dir) continue;
    size_t k = 0;
    while (k < n && e->name[k] == name[k]) k++;
    if (k == n && e->name[n] == '\0') return i;
  }
  return -1;
}

static int ent_add(int dir, const char *name, int node) {
  for (int i = 0; i < ENTRIES; i++) {
    if (fs.ents[i].used) continue;
    fs.ents[i].used = 1;
    fs.ents[i].dir = dir;
    fs.ents[i].node = node;
    snprintf(fs.ents[i].name, NAME_CAP, "%s", name);
    fs.nodes[node].links++;
    return i;
  }
  return fail(ENOSPC);
}

static void ent_del(int e) {
  int n = fs.ents[e].node;
  memset(&fs.ents[e], 0, sizeof fs.ents[e]);
  fs.nodes[n].links--;
  maybe_free(n);
}

static int dir_empty(int dir) {
  for (int i = 0; i < ENTRIES; i++)
    if (fs.ents[i].used && fs.ents[i].dir == dir) return 0;
  return 1;
}

/* A directory that was removed takes no new names. */
static int dir_alive(int dir) { return dir == 0 || fs.nodes[dir].links > 0; }

/* Grow a file's buffer to hold want bytes. Returns 0 or an errno value. */
static int reserve(node_t *x, size_t want) {
  if (want <= x->cap) return 0;
  if (want > FILE_MAX) return EFBIG;
  size_t cap = x->cap ? x->cap : 256;
  while (cap < want) cap *= 2;
  if (cap > FILE_MAX) cap = FILE_MAX;
  if (fs.bytes - x->cap + cap > TOTAL_MAX) return ENOSPC;
  uint8_t *p = realloc(x->data, cap);
  if (!p) return ENOMEM;
  fs.bytes = fs.bytes - x->cap + cap;
  x->data = p;
  x->cap = cap;
  return 0;
}

/* Set a file's size, zero-filling what it gains. */
static int resize(node_t *x, size_t size) {
  int e = reserve(x, size);
  if (e) return e;
  if (size > x->size) memset(x->data + x->size, 0, size - x->size);
  x->size = size;
  return 0;
}

/* ------------------------------------------------------------- lookup */

static int walk(int start, const char *path, int follow, res_t *r, int depth);

/* A link's target, looked up from the directory the link is in. */
static int follow_link(int dir, int link, int follow, res_t *r, int depth) {
  if (depth >= LINK_DEPTH) return ELOOP;
  char target[4096];
  const node_t *x = &fs.nodes[link];
  if (x->size >= sizeof target) return ENAMETOOLONG;
  memcpy(target, x->data, x->size);
  target[x->size] = '\0';
  return walk(dir, target, follow, r, depth + 1);
}

/* Look path up from directory start (an absolute path from the root).
 * follow: a link as the last name is followed. Returns 0 or an errno
 * value; a missing last name is not an error (r->node is -1). */
static int walk(int start, const char *path, int follow, res_t *r, int depth) {
  const char *p = path;
  int cur = start;
  if (*p == '\0') return ENOENT;
  if (*p == '/') {
    if (!in_root(p)) return EXDEV;
    p += sizeof MEMFS_ROOT - 1;
    cur = 0;
  }
  for (;;) {
    while (*p == '/') p++;
    if (fs.nodes[cur].kind != K_DIR) return ENOTDIR;
    if (*p == '\0') { /* the path names cur itself */
      r->parent = fs.nodes[cur].parent;
      r->ent = -1;
      r->node = cur;
      r->slash = 1;
      snprintf(r->name, NAME_CAP, ".");
      return 0;
    }
    const char *s = p;
    while (*p && *p != '/') p++;
    size_t n = (size_t)(p - s);
    if (n >= NAME_CAP) return ENAMETOOLONG;
    const char *q = p;
    while (*q == '/') q++;
    int last = *q == '\0', slash = *p == '/';
    int ent = -1, child;
    if (n == 1 && s[0] == '.')
      child = cur;
    else if (n == 2 && s[0] == '.' && s[1] == '.')
      child = fs.nodes[cur].parent;
    else
      child = (ent = find_ent(cur, s, n)) >= 0 ? fs.ents[ent].node : -1;
    if (child >= 0 && fs.nodes[child].kind == K_LNK && (!last || follow || slash)) {
      res_t sub;
      int e = follow_link(cur, child, 1, &sub, depth);
      if (e) return e;
      if (!last && sub.node < 0) return ENOENT;
      if (last) {
        *r = sub;
        return 0;
      }
      child = sub.node;
    }
    if (!last) {
      if (child < 0) return ENOENT;
      cur = child;
      continue;
    }
    if (slash && child >= 0 && fs.nodes[child].kind != K_DIR) return ENOTDIR;
    r->parent = cur;
    r->ent = ent;
    r->node = child;
    r->slash = slash;
    memcpy(r->name, s, n);
    r->name[n] = '\0';
    return 0;
  }
}

/* Where a relative path of dirfd starts. Returns 0 or an errno value. */
static int start_of(int dirfd, const char *path, int *start) {
  *start = 0;
  if (path[0] == '/') return 0;
  fd_t *f = get_fd(dirfd);
  if (!f) return EBADF;
  if (fs.nodes[f->node].kind != K_DIR) return ENOTDIR;
  *start = f->node;
  return 0;
}

static int lookup(int dirfd, const char *path, int follow, res_t *r) {
  int start, e = start_of(dirfd, path, &start);
  return e ? e : walk(start, path, follow, r, 0);
}

static void fill_stat(int n, struct stat *st) {
  const node_t *x = &fs.nodes[n];
  memset(st, 0, sizeof *st);
  st->st_dev = MEMFS_DEV;
  st->st_ino = x->ino;
  st->st_mode = x->mode | (x->kind == K_DIR   ? S_IFDIR
                           : x->kind == K_LNK ? S_IFLNK
                                              : S_IFREG);
  st->st_nlink = (nlink_t)(x->kind == K_DIR ? x->links + 1 : x->links);
  st->st_uid = fs.uid;
  st->st_gid = fs.gid;
  st->st_size = x->kind == K_DIR ? 0 : (off_t)x->size;
  st->st_blksize = 4096;
  st->st_blocks = (blkcnt_t)((x->cap + 511) / 512);
}

/* --------------------------------------------------------- operations */

static int fd_new(int node, int flags) {
  for (int i = 0; i < FDS; i++) {
    if (fs.fds[i].used) continue;
    fs.fds[i] = (fd_t){1, node, flags, (flags & O_CLOEXEC) ? FD_CLOEXEC : 0, 0};
    fs.nodes[node].opens++;
    return FD_BASE + i;
  }
  return fail(EMFILE);
}

static int do_open(int dirfd, const char *path, int flags, mode_t mode) {
  int excl = (flags & O_CREAT) && (flags & O_EXCL), acc = flags & O_ACCMODE;
  res_t r;
  int e = lookup(dirfd, path, !(flags & O_NOFOLLOW) && !excl, &r);
  if (e) return fail(e);
  int n = r.node;
  if (n >= 0) {
    const node_t *x = &fs.nodes[n];
    if (excl) return fail(EEXIST);
    if (x->kind == K_LNK) return fail(ELOOP);
    if ((flags & O_DIRECTORY) && x->kind != K_DIR) return fail(ENOTDIR);
    if (x->kind == K_DIR && (acc != O_RDONLY || (flags & O_CREAT)))
      return fail(EISDIR);
    if ((flags & O_TRUNC) && x->kind == K_REG && acc != O_RDONLY)
      fs.nodes[n].size = 0;
  } else {
    if (!(flags & O_CREAT)) return fail(ENOENT);
    if (flags & O_DIRECTORY) return fail(EINVAL);
    if (r.slash) return fail(EISDIR);
    if (!dir_alive(r.parent)) return fail(ENOENT);
    n = node_new(K_REG, mode, r.parent);
    if (n < 0) return -1;
    if (ent_add(r.parent, r.name, n) < 0) {
      maybe_free(n);
      return -1;
    }
  }
  return fd_new(n, flags);
}

static int do_close(int fd) {
  fd_t *f = get_fd(fd);
  if (!f) return fail(EBADF);
  int n = f->node;
  memset(f, 0, sizeof *f);
  fs.nodes[n].opens--;
  maybe_free(n);
  return 0;
}

/* pos < 0: at (and moving) the descriptor's offset. */
static ssize_t do_read(int fd, void *buf, size_t len, off_t pos) {
  fd_t *f = get_fd(fd);
  if (!f || (f->flags & O_ACCMODE) == O_WRONLY) return fail(EBADF);
  node_t *x = &fs.nodes[f->node];
  if (x->kind == K_DIR) return fail(EISDIR);
  off_t at = pos < 0 ? f->off : pos;
  size_t got = 0;
  if ((uint64_t)at < x->size) {
    got = x->size - (size_t)at;
    if (got > len) got = len;
    memcpy(buf, x->data + at, got);
  }
  if (pos < 0) f->off = at + (off_t)got;
  return (ssize_t)got;
}

static ssize_t do_write(int fd, const void *buf, size_t len, off_t pos) {
  fd_t *f = get_fd(fd);
  if (!f || (f->flags & O_ACCMODE) == O_RDONLY) return fail(EBADF);
  node_t *x = &fs.nodes[f->node];
  /* As on Linux, O_APPEND appends even for pwrite. */
  off_t at = (f->flags & O_APPEND) ? (off_t)x->size : pos < 0 ? f->off : pos;
  if (len == 0) return 0;
  if ((uint64_t)at >= FILE_MAX) return fail(EFBIG);
  if (len > FILE_MAX - (size_t)at) len = FILE_MAX - (size_t)at;
  size_t end = (size_t)at + len;
  if (end > x->size) {
    int e = resize(x, end);
    if (e) return fail(e);
  }
  memcpy(x->data + at, buf, len);
  if (pos < 0) f->off = at + (off_t)len;
  return (ssize_t)len;
}

static off_t do_lseek(int fd, off_t off, int whence) {
  fd_t *f = get_fd(fd);
  if (!f) return fail(EBADF);
  const node_t *x = &fs.nodes[f->node];
  off_t base = whence == SEEK_SET   ? 0
               : whence == SEEK_CUR ? f->off
               : whence == SEEK_END ? (off_t)x->size
                                    : -1;
  if (base < 0 || (off < 0 && off < -base)) return fail(EINVAL);
  if (x->kind == K_DIR && base + off != 0) return fail(EINVAL);
  f->off = base + off;
  return f->off;
}

static int do_ftruncate(int fd, off_t len) {
  fd_t *f = get_fd(fd);
  if (!f) return fail(EBADF);
  node_t *x = &fs.nodes[f->node];
  if (len < 0 || x->kind != K_REG || (f->flags & O_ACCMODE) == O_RDONLY)
    return fail(EINVAL);
  if ((uint64_t)len > FILE_MAX) return fail(EFBIG);
  int e = resize(x, (size_t)len);
  return e ? fail(e) : 0;
}

static int do_fcntl(int fd, int cmd, long iarg, void *parg) {
  fd_t *f = get_fd(fd);
  if (!f) return fail(EBADF);
  struct flock *fl = parg;
  int acc = f->flags & O_ACCMODE;
  switch (cmd) {
  case F_GETFD: return f->fdflags;
  case F_SETFD: f->fdflags = (int)iarg & FD_CLOEXEC; return 0;
  case F_GETFL: return f->flags & ~O_CLOEXEC;
  case F_SETFL:
    f->flags = (f->flags & ~O_APPEND) | ((int)iarg & O_APPEND);
    return 0;
  case F_SETLK: case F_SETLKW: case F_OFD_SETLK: case F_OFD_SETLKW:
    if (!fl) return fail(EFAULT);
    if ((fl->l_type == F_RDLCK && acc == O_WRONLY) ||
        (fl->l_type == F_WRLCK && acc == O_RDONLY))
      return fail(EBADF);
    if (fl->l_type != F_RDLCK && fl->l_type != F_WRLCK && fl->l_type != F_UNLCK)
      return fail(EINVAL);
    return 0; /* one process: never in conflict */
  case F_GETLK: case F_OFD_GETLK:
    if (!fl) return fail(EFAULT);
    fl->l_type = F_UNLCK;
    return 0;
  default: return fail(EINVAL);
  }
}

static int do_stat(int dirfd, const char *path, struct stat *st, int flags) {
#ifdef AT_EMPTY_PATH
  if ((flags & AT_EMPTY_PATH) && path[0] == '\0') {
    fd_t *f = get_fd(dirfd);
    if (!f) return fail(EBADF);
    fill_stat(f->node, st);
    return 0;
  }
#endif
  res_t r;
  int e = lookup(dirfd, path, !(flags & AT_SYMLINK_NOFOLLOW), &r);
  if (e) return fail(e);
  if (r.node < 0) return fail(ENOENT);
  fill_stat(r.node, st);
  return 0;
}

/* A new name (mkdir, symlink): kind and, for a link, its target. */
static int do_make(int dirfd, const char *path, int kind, mode_t mode,
                   const char *target) {
  res_t r;
  int e = lookup(dirfd, path, 0, &r);
  if (e) return fail(e);
  if (r.node >= 0) return fail(EEXIST);
  if (!dir_alive(r.parent)) return fail(ENOENT);
  if (kind == K_LNK && r.slash) return fail(ENOENT);
  int n = node_new(kind, mode, r.parent);
  if (n < 0) return -1;
  if (kind == K_LNK) {
    size_t len = strlen(target);
    e = reserve(&fs.nodes[n], len + 1);
    if (e) {
      maybe_free(n);
      return fail(e);
    }
    memcpy(fs.nodes[n].data, target, len);
    fs.nodes[n].size = len;
  }
  if (ent_add(r.parent, r.name, n) < 0) {
    maybe_free(n);
    return -1;
  }
  return 0;
}

static int do_unlink(int dirfd, const char *path, int flags) {
  res_t r;
  int e = lookup(dirfd, path, 0, &r);
  if (e) return fail(e);
  if (r.node < 0) return fail(ENOENT);
  int isdir = fs.nodes[r.node].kind == K_DIR;
  if (!(flags & AT_REMOVEDIR)) {
    if (isdir) return fail(EISDIR);
  } else {
    if (!isdir) return fail(ENOTDIR);
    if (r.node == 0) return fail(EBUSY);
    if (r.ent < 0) return fail(EINVAL); /* "." */
    if (!dir_empty(r.node)) return fail(ENOTEMPTY);
  }
  ent_del(r.ent);
  return 0;
}

static int do_link(int od, const char *op, int nd, const char *np, int flags) {
  res_t a, b;
  int e = lookup(od, op, (flags & AT_SYMLINK_FOLLOW) != 0, &a);
  if (!e) e = lookup(nd, np, 0, &b);
  if (e) return fail(e);
  if (a.node < 0) return fail(ENOENT);
  if (fs.nodes[a.node].kind == K_DIR) return fail(EPERM);
  if (b.node >= 0) return fail(EEXIST);
  if (!dir_alive(b.parent)) return fail(ENOENT);
  return ent_add(b.parent, b.name, a.node) < 0 ? -1 : 0;
}

/* Whether directory d is dir or below it. */
static int below(int d, int dir) {
  for (int k = 0; k < NODES; k++) {
    if (d == dir) return 1;
    if (d == 0) return 0;
    d = fs.nodes[d].parent;
  }
  return 0;
}

static int do_rename(int od, const char *op, int nd, const char *np) {
  res_t a, b;
  int e = lookup(od, op, 0, &a);
  if (!e) e = lookup(nd, np, 0, &b);
  if (e) return fail(e);
  if (a.node < 0) return fail(ENOENT);
  if (a.ent < 0 || (b.node >= 0 && b.ent < 0)) return fail(EBUSY);
  int adir = fs.nodes[a.node].kind == K_DIR;
  if (b.node == a.node) return 0;
  if (adir && below(b.parent, a.node)) return fail(EINVAL);
  if (b.node >= 0) {
    int bdir = fs.nodes[b.node].kind == K_DIR;
    if (adir && !bdir) return fail(ENOTDIR);
    if (!adir && bdir) return fail(EISDIR);
    if (bdir && !dir_empty(b.node)) return fail(ENOTEMPTY);
  } else if (!dir_alive(b.parent)) {
    return fail(ENOENT);
  }
  if (b.node >= 0) ent_del(b.ent);
  entry_t *x = &fs.ents[a.ent];
  x->dir = b.parent;
  snprintf(x->name, NAME_CAP, "%s", b.name);
  if (adir) fs.nodes[a.node].parent = b.parent;
  return 0;
}

static DIR *do_fdopendir(int fd) {
  fd_t *f = get_fd(fd);
  if (!f) {
    errno = EBADF;
    return NULL;
  }
  if (fs.nodes[f->node].kind != K_DIR) {
    errno = ENOTDIR;
    return NULL;
  }
  for (int i = 0; i < DIRS; i++) {
    if (fs.dirs[i].used) continue;
    fs.dirs[i].used = 1;
    fs.dirs[i].fd = fd;
    return (DIR *)(void *)&fs.dirs[i];
  }
  errno = EMFILE;
  return NULL;
}

/* The directory position is the descriptor's offset: 0 ".", 1 "..", then
 * 2 + the index of the next name. */
static struct dirent *do_readdir(dir_t *d) {
  fd_t *f = get_fd(d->fd);
  if (!f) {
    errno = EBADF;
    return NULL;
  }
  int dir = f->node;
  struct dirent *de = &d->de;
  memset(de, 0, sizeof *de);
  if (f->off < 2) {
    int n = f->off == 0 ? dir : fs.nodes[dir].parent;
    snprintf(de->d_name, sizeof de->d_name, f->off == 0 ? "." : "..");
    de->d_ino = fs.nodes[n].ino;
    de->d_type = DT_DIR;
  } else {
    int i = (int)f->off - 2;
    while (i < ENTRIES && !(fs.ents[i].used && fs.ents[i].dir == dir)) i++;
    if (i >= ENTRIES) return NULL;
    const node_t *x = &fs.nodes[fs.ents[i].node];
    snprintf(de->d_name, sizeof de->d_name, "%s", fs.ents[i].name);
    de->d_ino = x->ino;
    de->d_type = x->kind == K_DIR ? DT_DIR : x->kind == K_LNK ? DT_LNK : DT_REG;
    f->off = i + 2;
  }
  f->off++;
  de->d_off = f->off;
  de->d_reclen = sizeof *de;
  return de;
}

/* ------------------------------------------------------- the wrappers */

int __real_open(const char *path, int flags, ...);
int __real_openat(int dirfd, const char *path, int flags, ...);
int __real_close(int fd);
ssize_t __real_read(int fd, void *buf, size_t n);
ssize_t __real_write(int fd, const void *buf, size_t n);
ssize_t __real_pread(int fd, void *buf, size_t n, off_t off);
ssize_t __real_pwrite(int fd, const void *buf, size_t n, off_t off);
off_t __real_lseek(int fd, off_t off, int whence);
int __real_ftruncate(int fd, off_t len);
int __real_fsync(int fd);
int __real_fdatasync(int fd);
int __real_fcntl(int fd, int cmd, ...);
int __real_fstat(int fd, struct stat *st);
int __real_fstatat(int dirfd, const char *path, struct stat *st, int flags);
int __real_stat(const char *path, struct stat *st);
int __real_lstat(const char *path, struct stat *st);
int __real_mkdir(const char *path, mode_t mode);
int __real_mkdirat(int dirfd, const char *path, mode_t mode);
int __real_unlink(const char *path);
int __real_unlinkat(int dirfd, const char *path, int flags);
int __real_rmdir(const char *path);
int __real_link(const char *a, const char *b);
int __real_linkat(int ad, const char *a, int bd, const char *b, int flags);
int __real_rename(const char *a, const char *b);
int __real_renameat(int ad, const char *a, int bd, const char *b);
int __real_symlink(const char *target, const char *path);
int __real_symlinkat(const char *target, int dirfd, const char *path);
DIR *__real_opendir(const char *path);
DIR *__real_fdopendir(int fd);
struct dirent *__real_readdir(DIR *d);
int __real_closedir(DIR *d);
int __real_dirfd(DIR *d);
void __real_rewinddir(DIR *d);

int __wrap_open(const char *path, int flags, ...);
int __wrap_openat(int dirfd, const char *path, int flags, ...);
int __wrap_close(int fd);
ssize_t __wrap_read(int fd, void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n);
ssize_t __wrap_pread(int fd, void *buf, size_t n, off_t off);
ssize_t __wrap_pwrite(int fd, const void *buf, size_t n, off_t off);
off_t __wrap_lseek(int fd, off_t off, int whence);
int __wrap_ftruncate(int fd, off_t len);
int __wrap_fsync(int fd);
int __wrap_fdatasync(int fd);
int __wrap_fcntl(int fd, int cmd, ...);
int __wrap_fstat(int fd, struct stat *st);
int __wrap_fstatat(int dirfd, const char *path, struct stat *st, int flags);
int __wrap_stat(const char *path, struct stat *st);
int __wrap_lstat(const char *path, struct stat *st);
int __wrap_mkdir(const char *path, mode_t mode);
int __wrap_mkdirat(int dirfd, const char *path, mode_t mode);
int __wrap_unlink(const char *path);
int __wrap_unlinkat(int dirfd, const char *path, int flags);
int __wrap_rmdir(const char *path);
int __wrap_link(const char *a, const char *b);
int __wrap_linkat(int ad, const char *a, int bd, const char *b, int flags);
int __wrap_rename(const char *a, const char *b);
int __wrap_renameat(int ad, const char *a, int bd, const char *b);
int __wrap_symlink(const char *target, const char *path);
int __wrap_symlinkat(const char *target, int dirfd, const char *path);
DIR *__wrap_opendir(const char *path);
DIR *__wrap_fdopendir(int fd);
struct dirent *__wrap_readdir(DIR *d);
int __wrap_closedir(DIR *d);
int __wrap_dirfd(DIR *d);
void __wrap_rewinddir(DIR *d);

/* Run expr (an int or ssize_t operation) under the lock. */
#define LOCKED(type, expr)                                                     \
  do {                                                                         \
    lock();                                                                    \
    type rv_ = (expr);                                                         \
    int e_ = errno;                                                            \
    unlock();                                                                  \
    errno = e_;                                                                \
    return rv_;                                                                \
  } while (0)

static mode_t open_mode(int flags, va_list ap) {
  return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE
             ? (mode_t)va_arg(ap, unsigned int)
             : 0;
}

int __wrap_open(const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = open_mode(flags, ap);
  va_end(ap);
  if (!in_root(path)) return __real_open(path, flags, mode);
  LOCKED(int, do_open(AT_FDCWD, path, flags, mode));
}

int __wrap_openat(int dirfd, const char *path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  mode_t mode = open_mode(flags, ap);
  va_end(ap);
  if (!ours(dirfd, path)) return __real_openat(dirfd, path, flags, mode);
  LOCKED(int, do_open(dirfd, path, flags, mode));
}

int __wrap_close(int fd) {
  if (!our_fd(fd)) return __real_close(fd);
  LOCKED(int, do_close(fd));
}

ssize_t __wrap_read(int fd, void *buf, size_t n) {
  if (!our_fd(fd)) return __real_read(fd, buf, n);
  LOCKED(ssize_t, do_read(fd, buf, n, -1));
}

ssize_t __wrap_write(int fd, const void *buf, size_t n) {
  if (!our_fd(fd)) return __real_write(fd, buf, n);
  LOCKED(ssize_t, do_write(fd, buf, n, -1));
}

ssize_t __wrap_pread(int fd, void *buf, size_t n, off_t off) {
  if (!our_fd(fd)) return __real_pread(fd, buf, n, off);
  if (off < 0) return fail(EINVAL);
  LOCKED(ssize_t, do_read(fd, buf, n, off));
}

ssize_t __wrap_pwrite(int fd, const void *buf, size_t n, off_t off) {
  if (!our_fd(fd)) return __real_pwrite(fd, buf, n, off);
  if (off < 0) return fail(EINVAL);
  LOCKED(ssize_t, do_write(fd, buf, n, off));
}

off_t __wrap_lseek(int fd, off_t off, int whence) {
  if (!our_fd(fd)) return __real_lseek(fd, off, whence);
  LOCKED(off_t, do_lseek(fd, off, whence));
}

int __wrap_ftruncate(int fd, off_t len) {
  if (!our_fd(fd)) return __real_ftruncate(fd, len);
  LOCKED(int, do_ftruncate(fd, len));
}

int __wrap_fsync(int fd) {
  if (!our_fd(fd)) return __real_fsync(fd);
  LOCKED(int, get_fd(fd) ? 0 : fail(EBADF));
}

int __wrap_fdatasync(int fd) {
  if (!our_fd(fd)) return __real_fdatasync(fd);
  LOCKED(int, get_fd(fd) ? 0 : fail(EBADF));
}

/* fcntl's third argument: none, an int, or a pointer, by command. */
int __wrap_fcntl(int fd, int cmd, ...) {
  long iarg = 0;
  void *parg = NULL;
  int ptr = cmd == F_GETLK || cmd == F_SETLK || cmd == F_SETLKW ||
            cmd == F_OFD_GETLK || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW ||
            cmd == F_GETOWN_EX || cmd == F_SETOWN_EX;
  int none = cmd == F_GETFD || cmd == F_GETFL || cmd == F_GETOWN ||
             cmd == F_GETSIG || cmd == F_GETLEASE || cmd == F_GETPIPE_SZ;
  va_list ap;
  va_start(ap, cmd);
  if (ptr)
    parg = va_arg(ap, void *);
  else if (!none)
    iarg = va_arg(ap, int);
  va_end(ap);
  if (!our_fd(fd)) {
    if (ptr) return __real_fcntl(fd, cmd, parg);
    if (none) return __real_fcntl(fd, cmd);
    return __real_fcntl(fd, cmd, (int)iarg);
  }
  LOCKED(int, do_fcntl(fd, cmd, iarg, parg));
}

int __wrap_fstat(int fd, struct stat *st) {
  if (!our_fd(fd)) return __real_fstat(fd, st);
  lock();
  fd_t *f = get_fd(fd);
  if (f) fill_stat(f->node, st);
  unlock();
  return f ? 0 : fail(EBADF);
}

int __wrap_fstatat(int dirfd, const char *path, struct stat *st, int flags) {
  if (!ours(dirfd, path)) return __real_fstatat(dirfd, path, st, flags);
  LOCKED(int, do_stat(dirfd, path, st, flags));
}

int __wrap_stat(const char *path, struct stat *st) {
  if (!in_root(path)) return __real_stat(path, st);
  LOCKED(int, do_stat(AT_FDCWD, path, st, 0));
}

int __wrap_lstat(const char *path, struct stat *st) {
  if (!in_root(path)) return __real_lstat(path, st);
  LOCKED(int, do_stat(AT_FDCWD, path, st, AT_SYMLINK_NOFOLLOW));
}

int __wrap_mkdir(const char *path, mode_t mode) {
  if (!in_root(path)) return __real_mkdir(path, mode);
  LOCKED(int, do_make(AT_FDCWD, path, K_DIR, mode, NULL));
}

int __wrap_mkdirat(int dirfd, const char *path, mode_t mode) {
  if (!ours(dirfd, path)) return __real_mkdirat(dirfd, path, mode);
  LOCKED(int, do_make(dirfd, path, K_DIR, mode, NULL));
}

int __wrap_unlink(const char *path) {
  if (!in_root(path)) return __real_unlink(path);
  LOCKED(int, do_unlink(AT_FDCWD, path, 0));
}

int __wrap_unlinkat(int dirfd, const char *path, int flags) {
  if (!ours(dirfd, path)) return __real_unlinkat(dirfd, path, flags);
  LOCKED(int, do_unlink(dirfd, path, flags));
}

int __wrap_rmdir(const char *path) {
  if (!in_root(path)) return __real_rmdir(path);
  LOCKED(int, do_unlink(AT_FDCWD, path, AT_REMOVEDIR));
}

/* Two names: both ours, neither, or EXDEV. */
static int pair(int ad, const char *a, int bd, const char *b) {
  int x = ours(ad, a), y = ours(bd, b);
  return x && y ? 1 : !x && !y ? 0 : -1;
}

int __wrap_link(const char *a, const char *b) {
  int p = pair(AT_FDCWD, a, AT_FDCWD, b);
  if (p == 0) return __real_link(a, b);
  if (p < 0) return fail(EXDEV);
  LOCKED(int, do_link(AT_FDCWD, a, AT_FDCWD, b, 0));
}

int __wrap_linkat(int ad, const char *a, int bd, const char *b, int flags) {
  int p = pair(ad, a, bd, b);
  if (p == 0) return __real_linkat(ad, a, bd, b, flags);
  if (p < 0) return fail(EXDEV);
  LOCKED(int, do_link(ad, a, bd, b, flags));
}

int __wrap_rename(const char *a, const char *b) {
  int p = pair(AT_FDCWD, a, AT_FDCWD, b);
  if (p == 0) return __real_rename(a, b);
  if (p < 0) return fail(EXDEV);
  LOCKED(int, do_rename(AT_FDCWD, a, AT_FDCWD, b));
}

int __wrap_renameat(int ad, const char *a, int bd, const char *b) {
  int p = pair(ad, a, bd, b);
  if (p == 0) return __real_renameat(ad, a, bd, b);
  if (p < 0) return fail(EXDEV);
  LOCKED(int, do_rename(ad, a, bd, b));
}

int __wrap_symlink(const char *target, const char *path) {
  if (!in_root(path)) return __real_symlink(target, path);
  LOCKED(int, do_make(AT_FDCWD, path, K_LNK, 0777, target));
}

int __wrap_symlinkat(const char *target, int dirfd, const char *path) {
  if (!ours(dirfd, path)) return __real_symlinkat(target, dirfd, path);
  LOCKED(int, do_make(dirfd, path, K_LNK, 0777, target));
}

DIR *__wrap_opendir(const char *path) {
  if (!in_root(path)) return __real_opendir(path);
  lock();
  DIR *d = NULL;
  int fd = do_open(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd >= 0 && !(d = do_fdopendir(fd))) {
    int e = errno;
    do_close(fd);
    errno = e;
  }
  int e = errno;
  unlock();
  errno = e;
  return d;
}

DIR *__wrap_fdopendir(int fd) {
  if (!our_fd(fd)) return __real_fdopendir(fd);
  LOCKED(DIR *, do_fdopendir(fd));
}

struct dirent *__wrap_readdir(DIR *d) {
  if (!our_dir(d)) return __real_readdir(d);
  LOCKED(struct dirent *, do_readdir((dir_t *)(void *)d));
}

int __wrap_closedir(DIR *d) {
  if (!our_dir(d)) return __real_closedir(d);
  lock();
  dir_t *x = (dir_t *)(void *)d;
  int rc = x->used ? do_close(x->fd) : fail(EBADF);
  memset(x, 0, sizeof *x);
  int e = errno;
  unlock();
  errno = e;
  return rc;
}

int __wrap_dirfd(DIR *d) {
  if (!our_dir(d)) return __real_dirfd(d);
  return ((dir_t *)(void *)d)->fd;
}

void __wrap_rewinddir(DIR *d) {
  if (!our_dir(d)) {
    __real_rewinddir(d);
    return;
  }
  lock();
  fd_t *f = get_fd(((dir_t *)(void *)d)->fd);
  if (f) f->off = 0;
  unlock();
}

/* ------------------------------------------------------------- control */

int memfs_open_count(void) {
  lock();
  int n = 0;
  for (int i = 0; i < FDS; i++) n += fs.fds[i].used;
  unlock();
  return n;
}

size_t memfs_bytes(void) {
  lock();
  size_t n = fs.bytes;
  unlock();
  return n;
}

void memfs_reset(void) {
  lock();
  for (int i = 0; i < NODES; i++) free(fs.nodes[i].data);
  memset(fs.nodes, 0, sizeof fs.nodes);
  memset(fs.ents, 0, sizeof fs.ents);
  memset(fs.fds, 0, sizeof fs.fds);
  memset(fs.dirs, 0, sizeof fs.dirs);
  fs.bytes = 0;
  fs.ready = 0;
  unlock();
}
