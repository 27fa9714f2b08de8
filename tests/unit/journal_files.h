/*
 * journal_files.h - file helpers the journal tests share (test_journal.c,
 * test_journal_damage.c, test_journal_crash.c, test_replay_durable.c):
 * remove a journal directory, read a segment whole, write one back, count
 * or remove the files with a suffix; and the xorshift generator the crash
 * and power-loss rounds draw from. Failures fail the test (cmocka).
 * Include after <cmocka.h>.
 */
#ifndef SPI_TEST_JOURNAL_FILES_H
#define SPI_TEST_JOURNAL_FILES_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Remove dir and everything under it (links are removed, not followed). */
static inline void rm_rf(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  char path[1024];
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (snprintf(path, sizeof path, "%s/%s", dir, de->d_name) >=
        (int)sizeof path)
      continue; /* never in these tests */
    struct stat sb;
    if (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode))
      rm_rf(path);
    else
      unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

/* The whole file (malloc'd, one spare byte), its length in *len. */
static inline uint8_t *read_all(const char *path, size_t *len) {
  FILE *fp = fopen(path, "rb");
  assert_non_null(fp);
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  uint8_t *b = malloc((size_t)n + 1);
  assert_non_null(b);
  assert_int_equal(fread(b, 1, (size_t)n, fp), (size_t)n);
  fclose(fp);
  *len = (size_t)n;
  return b;
}

static inline void write_all(const char *path, const uint8_t *b, size_t n) {
  FILE *fp = fopen(path, "wb");
  assert_non_null(fp);
  assert_int_equal(fwrite(b, 1, n, fp), n);
  fclose(fp);
}

/* Names in dir ending in suffix. */
static inline int count_suffix(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  assert_non_null(d);
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

static inline void remove_suffix(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  assert_non_null(d);
  struct dirent *de;
  size_t sl = strlen(suffix);
  char path[1024];
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if (l >= sl && strcmp(de->d_name + l - sl, suffix) == 0 &&
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name) <
            (int)sizeof path)
      unlink(path);
  }
  closedir(d);
}

/* The next number of the xorshift64 sequence seeded by *s (not 0). */
static inline uint64_t rng_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

#endif /* SPI_TEST_JOURNAL_FILES_H */
