/*
 * replay_main.c - runs a fuzz target's LLVMFuzzerTestOneInput over every file
 * of a corpus directory, without libFuzzer, so any compiler and every test
 * run replays the seeds (and the crash reproducers kept beside them).
 *
 *   fuzz_<name>_replay <corpus-dir>
 *
 * Files are found recursively and run in sorted path order so a failure
 * reproduces the same way everywhere. Nothing is printed on success; a
 * missing or empty directory is an error, so a mistyped corpus path cannot
 * pass by running nothing. Hidden entries (".*") are skipped. With
 * SPI_REPLAY_VERBOSE set in the environment each path is printed to stderr
 * before it runs, which names the input behind a crash.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* opendir, stat */
#endif
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional in a target, as with libFuzzer. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

typedef struct path_list {
  char **items;
  size_t len;
  size_t cap;
} path_list;

static int list_push(path_list *l, char *path) {
  if (l->len == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    char **items = realloc(l->items, cap * sizeof *items);
    if (!items) return -1;
    l->items = items;
    l->cap = cap;
  }
  l->items[l->len++] = path;
  return 0;
}

static void list_free(path_list *l) {
  for (size_t i = 0; i < l->len; i++) free(l->items[i]);
  free(l->items);
}

static char *join_path(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  p[a] = '/';
  memcpy(p + a + 1, name, b + 1);
  return p;
}

/* Collect the regular files under dir. Returns 0, or -1 after a message. */
static int collect(const char *dir, path_list *out, int depth) {
  if (depth > 32) {
    fprintf(stderr, "replay: %s: directories nested too deep\n", dir);
    return -1;
  }
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "replay: cannot open %s: %s\n", dir, strerror(errno));
    return -1;
  }
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char *path = join_path(dir, e->d_name);
    if (!path) {
      fprintf(stderr, "replay: out of memory\n");
      rc = -1;
      break;
    }
    struct stat st;
    if (stat(path, &st) != 0) {
      fprintf(stderr, "replay: cannot stat %s: %s\n", path, strerror(errno));
      free(path);
      rc = -1;
    } else if (S_ISDIR(st.st_mode)) {
      rc = collect(path, out, depth + 1);
      free(path);
    } else if (S_ISREG(st.st_mode)) {
      if (list_push(out, path) != 0) {
        fprintf(stderr, "replay: out of memory\n");
        free(path);
        rc = -1;
      }
    } else {
      free(path);
    }
  }
  closedir(d);
  return rc;
}

static int compare_paths(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Read a whole file into a fresh buffer of exactly its size, so ASan and
 * valgrind see reads past the end of the input. */
static int read_file(const char *path, uint8_t **out, size_t *out_len) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "replay: cannot open %s: %s\n", path, strerror(errno));
    return -1;
  }
  uint8_t *data = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      size_t ncap = cap ? cap * 2 : 4096;
      uint8_t *n = realloc(data, ncap);
      if (!n) {
        fprintf(stderr, "replay: out of memory reading %s\n", path);
        free(data);
        fclose(f);
        return -1;
      }
      data = n;
      cap = ncap;
    }
    size_t got = fread(data + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  int err = ferror(f);
  fclose(f);
  if (err) {
    fprintf(stderr, "replay: error reading %s\n", path);
    free(data);
    return -1;
  }
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact) {
    fprintf(stderr, "replay: out of memory reading %s\n", path);
    free(data);
    return -1;
  }
  if (len) memcpy(exact, data, len);
  free(data);
  *out = exact;
  *out_len = len;
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s <corpus-dir>\n", argc > 0 ? argv[0] : "replay");
    return 2;
  }
  if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);

  path_list files = {0};
  if (collect(argv[1], &files, 0) != 0) {
    list_free(&files);
    return 1;
  }
  if (files.len == 0) {
    fprintf(stderr, "replay: %s holds no input files\n", argv[1]);
    list_free(&files);
    return 1;
  }
  qsort(files.items, files.len, sizeof *files.items, compare_paths);

  int verbose = getenv("SPI_REPLAY_VERBOSE") != NULL;
  int rc = 0;
  for (size_t i = 0; i < files.len && rc == 0; i++) {
    if (verbose) fprintf(stderr, "replay: %s\n", files.items[i]);
    uint8_t *data;
    size_t len;
    if (read_file(files.items[i], &data, &len) != 0) {
      rc = 1;
      break;
    }
    /* libFuzzer reserves nonzero returns ("reject this input"); a crash or
     * a sanitizer report is the failure, not the return value. */
    (void)LLVMFuzzerTestOneInput(data, len);
    free(data);
  }
  list_free(&files);
  return rc;
}
