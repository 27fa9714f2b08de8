/*
 * util.c - the engine's allocator wrappers, growable buffers and error text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "spi_internal.h"

void *spi__alloc(const spi_mem *m, size_t size) {
  if (size == 0) size = 1;
  return m->alloc(m->user_data, size);
}

void *spi__calloc(const spi_mem *m, size_t n, size_t size) {
  if (size != 0 && n > SIZE_MAX / size) return NULL;
  /* calloc hands out fresh pages already zero, without a pass over them
   * (the prefix index, ~8 MB by default, then writes one byte a page). */
  if (m->alloc == spi__default_alloc) return calloc(n ? n : 1, size ? size : 1);
  void *p = spi__alloc(m, n * size);
  if (p) memset(p, 0, n * size);
  return p;
}

void spi__free(const spi_mem *m, void *ptr) {
  if (ptr) m->free(m->user_data, ptr);
}

char *spi__strndup(const spi_mem *m, const char *s, size_t len) {
  if (len == SIZE_MAX) return NULL;
  char *p = spi__alloc(m, len + 1);
  if (!p) return NULL;
  if (len) memcpy(p, s, len);
  p[len] = '\0';
  return p;
}

int spi__buf_reserve(spi_buf *b, const spi_mem *m, size_t extra) {
  if (extra > SIZE_MAX - b->len) return SPI_ENOMEM;
  size_t need = b->len + extra;
  if (need <= b->cap) return SPI_OK;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  /* No realloc hook: grow by copy, which keeps the hook set to two calls. */
  uint8_t *p = spi__alloc(m, cap);
  if (!p) return SPI_ENOMEM;
  if (b->len) memcpy(p, b->data, b->len);
  spi__free(m, b->data);
  b->data = p;
  b->cap = cap;
  return SPI_OK;
}

int spi__buf_append(spi_buf *b, const spi_mem *m, const void *data, size_t n) {
  if (n == 0) return SPI_OK;
  int rc = spi__buf_reserve(b, m, n);
  if (rc != SPI_OK) return rc;
  memcpy(b->data + b->len, data, n);
  b->len += n;
  return SPI_OK;
}

int spi__buf_append_byte(spi_buf *b, const spi_mem *m, uint8_t c) {
  return spi__buf_append(b, m, &c, 1);
}

/* Whether byte c is one the canonical prompt escapes (0x1B-0x1F). */
static int prompt_reserved(uint8_t c) { return (uint8_t)(c - 0x1B) <= 4; }

#if defined(__SSE2__)
/* The lanes of x that hold a reserved byte: b - 0x1B (wrapping) is at most
 * 4 exactly for those, i.e. equal to its minimum with 4. */
static inline __m128i reserved_lanes(__m128i x) {
  const __m128i base = _mm_set1_epi8(0x1B), four = _mm_set1_epi8(4);
  __m128i d = _mm_sub_epi8(x, base);
  return _mm_cmpeq_epi8(_mm_min_epu8(d, four), d);
}
#endif

size_t spi__prompt_reserved_at(const void *data, size_t n) {
  const uint8_t *p = data;
  size_t i = 0;
#if defined(SPI_HAVE_TEXT_AVX2)
  if (n >= 256 && __builtin_cpu_supports("avx2"))
    return spi__prompt_reserved_at_avx2(data, n);
#endif
#if defined(__SSE2__)
  /* Sixty-four bytes a turn with one mask test, then sixteen at a time
   * from where the turn found one (or for the tail). */
  for (; i + 64 <= n; i += 64) {
    const __m128i *v = (const __m128i *)(p + i);
    __m128i any = _mm_or_si128(
        _mm_or_si128(reserved_lanes(_mm_loadu_si128(v)),
                     reserved_lanes(_mm_loadu_si128(v + 1))),
        _mm_or_si128(reserved_lanes(_mm_loadu_si128(v + 2)),
                     reserved_lanes(_mm_loadu_si128(v + 3))));
    if (_mm_movemask_epi8(any)) break;
  }
  for (; i + 16 <= n; i += 16) {
    int hit = _mm_movemask_epi8(reserved_lanes(_mm_loadu_si128((const __m128i *)(p + i))));
    if (hit) return i + (size_t)__builtin_ctz((unsigned)hit);
  }
#endif
  /* Eight bytes at a time: a byte in 0x18..0x1F has (b & 0xF8) == 0x18,
   * i.e. a zero byte after the mask and xor; 0x18..0x1A are rare enough
   * to be sorted out one by one. */
  const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    uint64_t z = (w & (0xF8 * ones)) ^ (0x18 * ones);
    if (((z - ones) & ~z & highs) == 0) continue;
    for (size_t k = i; k < i + 8; k++)
      if (prompt_reserved(p[k])) return k;
  }
  for (; i < n; i++)
    if (prompt_reserved(p[i])) return i;
  return n;
}

int spi__buf_append_text(spi_buf *b, const spi_mem *m, const void *data,
                         size_t n) {
  const uint8_t *p = data;
  size_t at = spi__prompt_reserved_at(p, n);
  if (at == n) return spi__buf_append(b, m, p, n);
  size_t start = b->len;
  while (n) {
    if (spi__buf_append(b, m, p, at) != SPI_OK) break;
    if (at == n) return SPI_OK;
    uint8_t esc[2] = {0x1B, (uint8_t)(p[at] ^ 0x40)};
    if (spi__buf_append(b, m, esc, 2) != SPI_OK) break;
    p += at + 1;
    n -= at + 1;
    at = spi__prompt_reserved_at(p, n);
  }
  if (n == 0) return SPI_OK;
  b->len = start;
  return SPI_ENOMEM;
}

void spi__buf_clear(spi_buf *b) { b->len = 0; }

void spi__buf_free(spi_buf *b, const spi_mem *m) {
  spi__free(m, b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* Whether byte c continues a UTF-8 character (10xxxxxx). */
static int utf8_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

size_t spi__utf8_fit(const char *s, size_t len, size_t max) {
  if (len <= max) return len;
  /* s[max] is the first byte left out: when it continues a character, the
   * cut is inside that character, whose start is at most 3 bytes back. */
  size_t n = max;
  while (n > 0 && max - n < 3 && utf8_cont((unsigned char)s[n])) n--;
  return utf8_cont((unsigned char)s[n]) ? max : n;
}

int spi__utf8_fitz(const char *s, size_t max) {
  size_t len = 0;
  while (len <= max && s[len]) len++;
  return (int)spi__utf8_fit(s, len, max);
}

size_t spi__utf8_trim(char *s, size_t len) {
  /* The last character's first byte, and how many bytes it says it has. */
  size_t i = len;
  while (i > 0 && len - i < 4 && utf8_cont((unsigned char)s[i - 1])) i--;
  unsigned char lead = i > 0 ? (unsigned char)s[i - 1] : 0;
  size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
  if (lead >= 0xC2 && lead <= 0xF4 && len - (i - 1) < want) len = i - 1;
  s[len] = '\0';
  return len;
}

void spi__verrf(char *buf, size_t cap, const char *fmt, va_list ap) {
  if (!buf || cap == 0) return;
  int n = vsnprintf(buf, cap, fmt, ap);
  if (n < 0) buf[0] = '\0';
  /* A message longer than buf is cut at a byte count; a reader (and a
   * binding that decodes it) must not get half a character at its end. */
  else if ((size_t)n >= cap) spi__utf8_trim(buf, cap - 1);
}

void spi__errf(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  spi__verrf(buf, cap, fmt, ap);
  va_end(ap);
}
