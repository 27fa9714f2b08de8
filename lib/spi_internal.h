/*
 * spi_internal.h - declarations shared by the library's modules. Nothing here
 * is exported: every symbol is hidden by -fvisibility=hidden and named spi__.
 */
#ifndef SPI_INTERNAL_H
#define SPI_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "spotinfer/spotinfer.h"
#include "spotinfer/spotinfer_module.h"
#include "spotinfer/spotinfer_extras.h"

struct cJSON;

#define SPI_ERRMSG_CAP 256

/* ---------------------------------------------------------------- memory */

/* The engine's allocator (hooks or malloc/free). */
typedef struct spi_mem {
  spi_alloc_fn alloc;
  spi_free_fn free;
  void *user_data;
} spi_mem;

/* NULL on failure; size 0 allocates 1 byte so NULL always means failure. */
void *spi__alloc(const spi_mem *m, size_t size);
/* Zeroed; NULL on failure or when n * size overflows. With the default
 * hooks this is calloc, so a large block's pages are zero-filled by the
 * system when first touched, not written here. */
void *spi__calloc(const spi_mem *m, size_t n, size_t size);
/* The memory hooks an engine gets when its caller sets none (floor.c). */
void *spi__default_alloc(void *ud, size_t size);
void spi__default_free(void *ud, void *ptr);
void spi__free(const spi_mem *m, void *ptr);
/* A NUL-terminated copy of s[0..len); NULL on failure. */
char *spi__strndup(const spi_mem *m, const char *s, size_t len);

/* A growable byte buffer. Zero-initialise; keeps its memory across clears. */
typedef struct spi_buf {
  uint8_t *data;
  size_t len;
  size_t cap;
} spi_buf;

/* Make room for extra more bytes. SPI_OK or SPI_ENOMEM (buffer unchanged). */
int spi__buf_reserve(spi_buf *b, const spi_mem *m, size_t extra);
int spi__buf_append(spi_buf *b, const spi_mem *m, const void *data, size_t n);
int spi__buf_append_byte(spi_buf *b, const spi_mem *m, uint8_t c);
void spi__buf_clear(spi_buf *b);
/* The canonical prompt (docs/cache-key.md) keeps bytes 0x1B-0x1F for its
 * own structure. spi__prompt_reserved_at: the offset of the first such byte
 * in data, or n. spi__buf_append_text: append text with each of them
 * written as 0x1B, byte ^ 0x40 ("\x1b[" .. "\x1b_"), so no text can spell
 * a message boundary. SPI_OK or SPI_ENOMEM (buffer unchanged). */
size_t spi__prompt_reserved_at(const void *data, size_t n);
size_t spi__prompt_reserved_at_avx2(const void *data, size_t n); /* text_avx2.c */
int spi__buf_append_text(spi_buf *b, const spi_mem *m, const void *data,
                         size_t n);
void spi__buf_free(spi_buf *b, const spi_mem *m);

/* ---------------------------------------------------------------- errors */

/* snprintf into buf (cap > 0), always NUL-terminated, never fails. */
void spi__errf(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void spi__verrf(char *buf, size_t cap, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));

/* Messages are UTF-8 and are cut to fit their buffers; a cut never splits a
 * character. spi__utf8_fit: how many of the len bytes at s to show in at
 * most max (all of them when len <= max; else max, less the start of a
 * character max would split), for "%.*s". spi__utf8_fitz: the same for the
 * NUL-terminated s. spi__utf8_trim: s[0..len) less a last character it
 * holds only part of, NUL-terminated there; returns the new length. Bytes
 * that are not UTF-8 are left as they are. */
size_t spi__utf8_fit(const char *s, size_t len, size_t max);
int spi__utf8_fitz(const char *s, size_t max);
size_t spi__utf8_trim(char *s, size_t len);
/* The two arguments of "%.*s" that show the NUL-terminated s in at most
 * max bytes without splitting a character. */
#define SPI_CUT(s, max) spi__utf8_fitz((s), (max)), (s)

/*
 * Error detail per calling thread on a shared handle (errtab.c). The rule,
 * for every handle many threads share (engine, replay queue): a failing call
 * records its message with the calling thread, and the errmsg getter
 * returns the calling thread's, so a message always belongs to the caller's
 * own last failed call on that handle. A request is used by one thread at a
 * time and keeps a single message.
 */
typedef struct spi_errtab {
  uint64_t id; /* names the handle to its threads' messages; never reused */
} spi_errtab;
extern const char SPI_ERRTAB_LOST[];
int spi__errtab_init(spi_errtab *t);
void spi__errtab_destroy(spi_errtab *t);
/* This thread's message on the handle is now msg (copied, truncated). */
void spi__errtab_set(spi_errtab *t, const char *msg);
/* This thread's message on the handle is now "". */
void spi__errtab_clear(spi_errtab *t);
/* This thread's message: "", its last failure's, or SPI_ERRTAB_LOST.
 * Borrowed until this thread's next call on the handle (only the thread
 * itself writes it). */
const char *spi__errtab_get(const spi_errtab *t);

/* The calling thread's number: given from 1 in the order threads first ask
 * (thread_no.c), so that a few threads fall on different stripes. */
uint32_t spi__thread_no(void);

/* Whether the 512-bit vector builds run (cpu_pick.c): the CPU has AVX-512
 * F and DQ and is not an Intel one. Picked on first use. */
int spi__cpu_wide512(void);
/* For tests: the 512-bit builds run on any CPU that has them, Intel ones
 * too, so that they are tested wherever they can run. Call before the
 * first engine or key. */
void spi__cpu_wide512_any_vendor(void);

/* Asymmetric fences (fences.c). spi__fences_init once before the first
 * spi__fences_cheap (an engine's RCU domain does it); spi__fences_cheap: 1
 * when a reader's store-then-load handshake may go without a fence because
 * the waiting side calls spi__fence_all first, which fences every thread
 * of the process (a no-op when spi__fences_cheap is 0). The flag is read
 * inline: a route asks three times. */
extern int spi__fences_flag;
void spi__fences_init(void);
static inline int spi__fences_cheap(void) {
  return __atomic_load_n(&spi__fences_flag, __ATOMIC_RELAXED);
}
void spi__fence_all(void);

/* memcpy of n bytes through the C library's memcpy. gcc inlines a copy
 * whose size it knows to be bounded as `rep movsq`, which takes about
 * 8-10 ns here whatever the size, against 3 ns for the call; the size
 * goes through a volatile, so no build sees it (as spi__zero does). */
static inline void spi__copy(void *dst, const void *src, size_t n) {
  volatile size_t size = n;
  memcpy(dst, src, size);
}

/* n bytes from src to dst by words, the last word overlapping the one
 * before it, reading only the n bytes: for the few bytes of an id or a
 * model name, where a bounded memcpy is a `rep movsb`, slow to start. */
static inline void spi__copy_small(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if (n >= 8) { /* the first and last words, and any between */
    uint64_t w;
    for (size_t i = 8; i + 8 < n; i += 8) {
      memcpy(&w, s + i, 8);
      memcpy(d + i, &w, 8);
    }
    memcpy(&w, s, 8);
    memcpy(d, &w, 8);
    memcpy(&w, s + n - 8, 8);
    memcpy(d + n - 8, &w, 8);
  } else if (n >= 4) {
    uint32_t a, b;
    memcpy(&a, s, 4);
    memcpy(&b, s + n - 4, 4);
    memcpy(d, &a, 4);
    memcpy(d + n - 4, &b, 4);
  } else {
    for (size_t i = 0; i < n; i++) d[i] = s[i];
  }
}

/* The n < 16 bytes at src, zero-padded to 16, with n in the last byte, as
 * two native words: what copying them into 16 zeroed bytes, setting byte
 * 15 and reading the two words back gives. Made in registers on a
 * little-endian machine: a word read back from several smaller stores
 * just made cannot be forwarded from them and waits for them to reach the
 * cache (about 15 cycles). */
static inline void spi__short_words(const void *src, size_t n, uint64_t *w0,
                                    uint64_t *w1) {
  const unsigned char *s = src;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint64_t a = 0, b = 0;
  if (n >= 8) {
    memcpy(&a, s, 8);
    if (n > 8) { /* bytes [8, n): the last word's top n - 8 */
      memcpy(&b, s + n - 8, 8);
      b >>= 8 * (16 - n);
    }
  } else if (n >= 4) { /* two words of 4 that may overlap */
    uint32_t x, y;
    memcpy(&x, s, 4);
    memcpy(&y, s + n - 4, 4);
    a = x | (uint64_t)y << (8 * (n - 4));
  } else {
    for (size_t i = 0; i < n; i++) a |= (uint64_t)s[i] << (8 * i);
  }
  *w0 = a;
  *w1 = b | (uint64_t)(uint8_t)n << 56;
#else
  unsigned char b[16] = {0};
  memcpy(b, s, n);
  b[15] = (unsigned char)n;
  memcpy(w0, b, 8);
  memcpy(w1, b + 8, 8);
#endif
}

/* s (of len bytes, or up to its NUL) appended at dst[n], cut to leave
 * room for the terminator. A literal that fits is copied inline (its
 * length is known where it is joined); any other text through spi__copy. */
static inline size_t spi__join_part_len(char *dst, size_t n, size_t cap,
                                        const char *s, size_t len) {
  size_t room = cap - 1 - n;
  if (__builtin_constant_p(len) && len <= room) {
    memcpy(dst + n, s, len);
    return n + len;
  }
  if (len > room) len = room;
  spi__copy(dst + n, s, len);
  return n + len;
}
static inline size_t spi__join_part(char *dst, size_t n, size_t cap,
                                    const char *s) {
  if (!s) return n;
  return spi__join_part_len(dst, n, cap, s, strlen(s));
}

/* dst = a sep b, truncated to cap (> 0) with a NUL; NULL parts are skipped.
 * The routing path builds its reason strings with this, not printf. Inline:
 * the policy joins a reason on every route, and a separator given as a
 * literal then costs no call (its length and copy are known where it is
 * joined). */
static inline size_t spi__join(char *dst, size_t cap, const char *a,
                               const char *sep, const char *b) {
  if (cap == 0) return 0;
  size_t n = spi__join_part(dst, 0, cap, a);
  n = spi__join_part(dst, n, cap, sep);
  n = spi__join_part(dst, n, cap, b);
  dst[n] = '\0';
  return n;
}

/* ----------------------------------------------------- configuration read */

/*
 * One accepted option: the single table (options.c) that both the runtime
 * listing and the validators read, so bounds, defaults and docs can never
 * drift apart. Paths use "[]" for list elements, e.g.
 * "classifier.rules[].when.sla_ms_max".
 */
typedef struct spi_optdesc {
  const char *path;
  int32_t type; /* enum spi_option_type */
  const char *default_json;
  double min_value;
  double max_value;
  const char *doc;
} spi_optdesc;

const spi_optdesc *spi__opt_table(size_t *count);
/* The descriptor for an exact table path, or NULL (binary search). */
const spi_optdesc *spi__opt_find(const char *path);
/* The table's row numbers ordered by path (strcmp), as spi__opt_find
 * searches them; *count rows. */
const uint16_t *spi__opt_by_path(size_t *count);

/*
 * One pass over text[0..len), a JSON value cJSON has parsed, for what
 * cJSON takes and JSON forbids. *ctl gets the offset of the first byte
 * below 0x20 outside a string other than space, tab, LF and CR (cJSON
 * skips them all as whitespace); the pass stops there. *nul gets the
 * offset of the first U+0000 inside a string before it, as the escape
 * "\u0000" or a raw zero byte: cJSON keeps strings NUL-terminated and cuts
 * them there, so such text is refused rather than silently shortened (two
 * tool lists, or a tenant, told apart only after it would otherwise read
 * as one). Either is SIZE_MAX when there is none. Other raw control bytes
 * inside strings are left to the caller: cJSON keeps them. (json_syntax.c)
 */
void spi__json_scan(const char *text, size_t len, size_t *ctl, size_t *nul);
/* JSON's whitespace, all of it: space, tab, LF, CR. */
static inline int spi__json_is_ws(unsigned char ch) {
  return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}
/*
 * Parse text[0..len) as one JSON value whose top level is want
 * (cJSON_Object or cJSON_Array), with cJSON_ParseWithLengthOpts, so no NUL
 * is needed. Every message in err starts with "what: ". Errors: SPI_ENOMEM
 * (cJSON ran out), SPI_EPARSE (malformed, with the byte offset; a control
 * byte outside a string, since JSON's only whitespace is space, tab, LF and
 * CR; anything but whitespace after the value; \u0000 inside a string, see
 * spi__json_scan), SPI_ETYPE (the top level is another type). text
 * must not be NULL when len is not 0. Free *out with cJSON_Delete.
 */
int spi__json_parse_as(const char *text, size_t len, int want,
                       const char *what, struct cJSON **out, char *err,
                       size_t errcap);
/*
 * Parse text as a JSON object: SPI_EINVAL for NULL text with a length,
 * SPI_ETOOBIG over max_len, SPI_EPARSE for empty text, then as
 * spi__json_parse_as with cJSON_Object.
 */
int spi__json_parse_object(const char *text, size_t len, size_t max_len,
                           const char *what, struct cJSON **out, char *err,
                           size_t errcap);
/* Whether text starts with a JSON value cJSON would parse (json_syntax.c),
 * checked without allocating. Asked after cJSON returned NULL: yes means
 * cJSON ran out of memory (SPI_ENOMEM), no means the text is malformed. */
int spi__json_well_formed(const char *text, size_t len);

/* The whole of s[0..n) as a JSON number (json_syntax.c), read the same in
 * every locale: 0 and *out set, or -1 when it is not a JSON number or not
 * a finite double. Correctly rounded for up to 15 significant digits and
 * exponents within 22; otherwise within a few ulps. */
int spi__json_number(const char *s, size_t n, double *out);

/* cJSON_ParseWithLengthOpts (not requiring a NUL after the value) and
 * cJSON_PrintUnformatted run in the C locale on the calling thread, so the
 * host's LC_NUMERIC never changes how numbers read or print
 * (json_syntax.c). The library calls cJSON through these only. */
struct cJSON *spi__cjson_parse(const char *text, size_t len, const char **end);
char *spi__cjson_print(const struct cJSON *item);

/*
 * Typed readers for one key of obj. table_path is the option's path in the
 * table (its last component is the key read from obj); shown is the path
 * printed in messages for obj itself (e.g. "classifier.rules[2].when"), or
 * "" for the root. An absent key (or JSON null) yields the table default.
 * Errors: SPI_ETYPE, SPI_ERANGE, SPI_EUNKNOWN (enum), message in err.
 */
int spi__cfg_int(const struct cJSON *obj, const char *table_path,
                 const char *shown, int64_t *out, char *err, size_t errcap);
int spi__cfg_double(const struct cJSON *obj, const char *table_path,
                    const char *shown, double *out, char *err, size_t errcap);
int spi__cfg_bool(const struct cJSON *obj, const char *table_path,
                  const char *shown, int32_t *out, char *err, size_t errcap);
/* *out points into obj or into the static default (then it is not
 * NUL-terminated); *out_len is its length. */
int spi__cfg_string(const struct cJSON *obj, const char *table_path,
                    const char *shown, const char **out, size_t *out_len,
                    char *err, size_t errcap);
/* names[0..n) are the accepted values; *out_index is the match. */
int spi__cfg_enum(const struct cJSON *obj, const char *table_path,
                  const char *shown, const char *const *names, size_t n,
                  int32_t *out_index, char *err, size_t errcap);
/*
 * Fail with SPI_EUNKNOWN on a key of obj that the table has no
 * "<table_prefix>.<key>" entry for (for the root, table_prefix is "").
 * Also fails with SPI_ETYPE when obj is not an object.
 */
int spi__cfg_check_keys(const struct cJSON *obj, const char *table_prefix,
                        const char *shown, char *err, size_t errcap);

/* ------------------------------------------------------- canonical JSON */

/*
 * Append the canonical form of v to out: object keys sorted bytewise,
 * no whitespace, integers in [-2^53, 2^53] without exponent or fraction
 * (beyond that, with spi__canon_json_src, integer literals as their exact
 * digits) and other numbers as %.17g, strings with only '"', '\\' and
 * bytes < 0x20
 * escaped (as \", \\, \b \f \n \r \t, else \u00xx lowercase), UTF-8 as is.
 * Errors: SPI_EPARSE (duplicate key, non-finite number),
 * SPI_ETOOBIG (nesting deeper than 64), SPI_ENOMEM.
 */
int spi__canon_json(const struct cJSON *v, spi_buf *out, const spi_mem *m);

/*
 * The text a cJSON tree was parsed from, so canonical JSON can write an
 * integer from its digits where the double cannot tell integers apart
 * (beyond 2^53: 9007199254740993 and 9007199254740992 are one double).
 * Which literal is which node is worked out on first need (a scan of the
 * text, numbers in document order), so text without such numbers costs
 * nothing. spi__json_src_free frees that map.
 */
typedef struct spi_json_src {
  const char *text;
  size_t len;
  const struct cJSON *root;
  struct spi_numlit *lits; /* sorted by node */
  size_t n;
  int state; /* 0 not built, 1 built, -1 unusable (fall back to doubles) */
} spi_json_src;
void spi__json_src_init(spi_json_src *src, const char *text, size_t len,
                        const struct cJSON *root);
void spi__json_src_free(spi_json_src *src, const spi_mem *m);
/* The literal number node v (of src->root's tree) was parsed from, as it
 * stands in src->text: 1 with *lit (not NUL-terminated) and *len set, 0
 * when it is not known (src NULL, v not a number of the tree as parsed, or
 * a map that could not be made), SPI_ENOMEM. m allocates the map. */
int spi__json_src_literal(spi_json_src *src, const struct cJSON *v,
                          const spi_mem *m, const char **lit, size_t *len);
/* spi__canon_json, with the numbers of v (a node of src->root's tree) read
 * from src where needed; src may be NULL. */
int spi__canon_json_src(const struct cJSON *v, spi_buf *out, const spi_mem *m,
                        spi_json_src *src);

/* Whether the object obj names a member twice, in O(n log n): SPI_EPARSE
 * with *dup the name, SPI_OK (*dup NULL), or SPI_ENOMEM. */
int spi__json_duplicate_key(const struct cJSON *obj, const spi_mem *m,
                            const char **dup);

/* ------------------------------------------------------------- built-ins */

/* Fill the built-in modules' structs; the engine registers them by name. */
#define SPI_BUILTIN_CLASSIFIER "reference"
#define SPI_BUILTIN_KEY_BUILDER "xxh3-v1"
#define SPI_BUILTIN_COST_MODEL "reference"
void spi__builtin_classifier(spi_classifier_module *out);
void spi__builtin_key_builder(spi_key_builder_module *out);
/* The built-in key builder called directly on a view spi__request_view
 * made and an instance it configured (dispatch.c): the key; the key and,
 * when they fit in cap, all the block hashes (SPI_OK), else none
 * (SPI_EBUFSIZE), their number in *n_out; and the first min(count, cap)
 * block hashes (returns the count). The same values as through the module
 * table. */
void spi__kb_key_view(const void *instance, const spi_request_view *v,
                      spi_cache_key *out);
int spi__kb_key_blocks(const void *instance, const spi_request_view *v,
                       spi_cache_key *key, uint64_t *out, size_t cap,
                       size_t *n_out);
size_t spi__kb_blocks_view(const void *instance, const spi_request_view *v,
                           const spi_cache_key *key, uint64_t *out,
                           size_t cap);

/* XXH3_64bits_withSeed / XXH3_64bits compiled for AVX2 (xxh_wide.c; the
 * seeded one over more than 240 bytes with each stripe's key made in
 * registers): call only when the CPU has AVX2. Present when
 * SPI_HAVE_XXH_AVX2. */
uint64_t spi__xxh3_seeded_avx2(const void *p, size_t n, uint64_t seed);
uint64_t spi__xxh3_avx2(const void *p, size_t n);
/* The seeded XXH3 of the block hashes (keybuilder.c), picked on first use:
 * where the 512-bit builds run (spi__cpu_wide512; in a build with
 * SPI_HAVE_RDV_AVX512), inputs of more than 240 bytes go eight lanes at a
 * time with each stripe's key made in a register (seeded_avx512; shorter
 * ones to libxxhash's); else the AVX2 build when the CPU has it; else
 * libxxhash's. Same results on every path. */
uint64_t spi__xxh3_seeded(const void *p, size_t n, uint64_t seed);
void spi__builtin_cost_model(spi_cost_model_module *out);
#define SPI_BUILTIN_POLICY "reference"
#define SPI_BUILTIN_POLICY_BASELINE "least-loaded"
/* affinity 0 gives the affinity-blind baseline of the same pool rules. */
void spi__builtin_policy(spi_policy_module *out, int affinity);

/* Replay stores (store_memory.c, journal.c). The memory store's state is
 * the engine's allocator; the journal's state (spi__journal_state_new) also
 * tracks the directories open through it, so one engine cannot open a
 * directory twice. */
#define SPI_BUILTIN_STORE_JOURNAL "journal"
#define SPI_BUILTIN_STORE_MEMORY "memory"
void spi__builtin_store_memory(spi_replay_store_module *out);
void spi__builtin_store_journal(spi_replay_store_module *out);
void *spi__journal_state_new(const spi_mem *m);
void spi__journal_state_free(void *state);

/* Validate the "replay" section of an engine configuration (replay.c): the
 * defaults of every queue spi_replay_open() opens on that engine.
 * Errors: SPI_ETYPE, SPI_ERANGE, SPI_EUNKNOWN, SPI_ENOTFOUND (store). */
int spi__replay_check_section(spi_engine *e, const struct cJSON *root,
                              char *err, size_t errcap);

/* The built-ins' state is the engine's allocator, so instances use it. */

/* Fill a view of req (derived fields computed on demand).
 * Errors: SPI_ENOMEM, SPI_EPARSE (tools). */
int spi__request_view(spi_request *req, spi_request_view *out);

#endif /* SPI_INTERNAL_H */
