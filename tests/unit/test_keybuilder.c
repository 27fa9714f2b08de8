/*
 * test_keybuilder.c - the built-in "xxh3-v1" key builder.
 *
 * The golden vectors (tests/golden/cache_key_vectors.json) come from an
 * independent implementation of the wire format (tests/golden/gen_vectors.py);
 * every key and block hash must match them byte for byte, and every OpenAI
 * body in it must read as the canonical prompt, system prompt, key and
 * blocks that implementation gives. The property tests
 * below check what the vectors cannot: argument validation, the cap /
 * SPI_EBUFSIZE contract, chaining, isolation, configuration errors and
 * allocation failure.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include <xxhash.h>

#include "spi_internal.h"
#include "std_mem.h"

#ifndef SPI_SOURCE_DIR
#define SPI_SOURCE_DIR "."
#endif

/* ------------------------------------------------------------- fixtures */

typedef struct kb {
  counting_alloc counts;
  spi_mem mem;
  spi_key_builder_module mod;
  void *inst;
  char err[SPI_ERRMSG_CAP];
} kb;

static int kb_config(kb *k, const char *json) {
  if (k->inst) k->mod.release(&k->mem, k->inst);
  k->inst = NULL;
  k->err[0] = '\0';
  return k->mod.configure(&k->mem, json, strlen(json), &k->inst, k->err,
                          sizeof k->err);
}

static kb *kb_new(const char *json) {
  kb *k = calloc(1, sizeof *k);
  assert_non_null(k);
  k->counts.fail_at = -1;
  k->mem = counting_mem(&k->counts);
  spi__builtin_key_builder(&k->mod);
  assert_int_equal(kb_config(k, json), SPI_OK);
  return k;
}

static void kb_free(kb *k) {
  if (k->inst) k->mod.release(&k->mem, k->inst);
  assert_int_equal(k->counts.live, 0);
  free(k);
}

static spi_request_view base_view(void) {
  spi_request_view v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
#define SETS(f, s) (v.f = (s), v.f##_len = strlen(s))
  SETS(model, "llama-3.1-70b-instruct");
  SETS(tokenizer_version, "llama3-tok-2024-07");
  SETS(system_prompt, "You are a helpful assistant.");
  SETS(tools_canonical, "[{\"name\":\"f\"}]");
  SETS(retrieval_template, "Context: {{docs}}");
  SETS(tenant, "acme");
  SETS(tenant_tier, "enterprise");
  SETS(tenant_salt, "salt-a");
  SETS(decode_profile, "streaming-balanced");
#undef SETS
  return v;
}

static spi_cache_key key_of(kb *k, const spi_request_view *v) {
  spi_cache_key key = {0, 0};
  assert_int_equal(k->mod.build_key(&k->mem, k->inst, v, &key), SPI_OK);
  return key;
}

static int same_key(spi_cache_key a, spi_cache_key b) {
  return a.high64 == b.high64 && a.low64 == b.low64;
}

static uint8_t *pattern(size_t n, unsigned mul, unsigned add) {
  uint8_t *p = malloc(n ? n : 1);
  assert_non_null(p);
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * mul + add);
  return p;
}

/* -------------------------------------------------------- golden vectors */

static char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (n == cap) buf = realloc(buf, cap *= 2);
    size_t r = fread(buf + n, 1, cap - n, f);
    if (r == 0) break;
    n += r;
  }
  fclose(f);
  *len = n;
  return buf;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* A vector field: a string, {"hex": ...} or {"repeat": s, "count": n}.
 * Returns a malloc'd buffer (never NULL) and its length. */
static char *field_bytes(const cJSON *req, const char *name, size_t *len) {
  const cJSON *f = cJSON_GetObjectItemCaseSensitive(req, name);
  *len = 0;
  if (!f) return calloc(1, 1);
  if (cJSON_IsString(f)) {
    *len = strlen(f->valuestring);
    char *p = malloc(*len + 1);
    memcpy(p, f->valuestring, *len + 1);
    return p;
  }
  const cJSON *hex = cJSON_GetObjectItemCaseSensitive(f, "hex");
  if (hex) {
    size_t n = strlen(hex->valuestring) / 2;
    char *p = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
      p[i] = (char)(hexval(hex->valuestring[2 * i]) * 16 +
                    hexval(hex->valuestring[2 * i + 1]));
    *len = n;
    return p;
  }
  const char *rep = cJSON_GetObjectItemCaseSensitive(f, "repeat")->valuestring;
  size_t count =
      (size_t)cJSON_GetObjectItemCaseSensitive(f, "count")->valuedouble;
  size_t rl = strlen(rep);
  char *p = malloc(rl * count + 1);
  for (size_t i = 0; i < count; i++) memcpy(p + i * rl, rep, rl);
  *len = rl * count;
  return p;
}

static double num(const cJSON *obj, const char *name) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
  assert_non_null(it);
  return it->valuedouble;
}

/* A vector's request, decoded into bytes. */
enum { F_MODEL, F_TOK, F_SYS, F_TOOLS, F_RETR, F_TIER, F_SALT, F_PROF, F_N };
static const char *const FIELD_NAMES[F_N] = {
    "model",              "tokenizer_version", "system_prompt", "tools_json",
    "retrieval_template", "tenant_tier",       "tenant_salt",   "decode_profile"};
static const int32_t FIELD_IDS[F_N] = {
    SPI_REQ_MODEL,      SPI_REQ_TOKENIZER_VERSION, SPI_REQ_SYSTEM_PROMPT,
    SPI_REQ_TOOLS_JSON, SPI_REQ_RETRIEVAL_TEMPLATE, SPI_REQ_TENANT_TIER,
    SPI_REQ_TENANT_SALT, SPI_REQ_DECODE_PROFILE};

typedef struct vec_input {
  const char *name;
  char *f[F_N];
  size_t len[F_N];
  uint8_t *prompt;
  size_t prompt_len;
  uint32_t *ids;
  size_t nids;
  char want_key[33];
  size_t want_n;
  uint64_t *want_blocks;
  /* The blocks of the prompt sent as a completions prompt, which escapes
   * bytes 0x1B-0x1F: given when that changes it, else want_blocks. */
  size_t want_cn;
  uint64_t *want_cblocks;
  const char *want_tools;
} vec_input;

static uint64_t *hex_list(const cJSON *arr, size_t *n) {
  *n = (size_t)cJSON_GetArraySize(arr);
  uint64_t *out = calloc(*n + 1, sizeof *out);
  assert_non_null(out);
  size_t i = 0;
  for (const cJSON *b = arr ? arr->child : NULL; b; b = b->next)
    out[i++] = strtoull(b->valuestring, NULL, 16);
  return out;
}

static void vec_decode(const cJSON *vec, vec_input *in) {
  memset(in, 0, sizeof *in);
  in->name = cJSON_GetObjectItemCaseSensitive(vec, "name")->valuestring;
  const cJSON *req = cJSON_GetObjectItemCaseSensitive(vec, "request");
  for (int i = 0; i < F_N; i++)
    in->f[i] = field_bytes(req, FIELD_NAMES[i], &in->len[i]);
  const cJSON *pg = cJSON_GetObjectItemCaseSensitive(req, "prompt_gen");
  if (pg) {
    in->prompt_len = (size_t)num(pg, "len");
    in->prompt = pattern(in->prompt_len, (unsigned)num(pg, "mul"),
                         (unsigned)num(pg, "add"));
  } else {
    in->prompt = (uint8_t *)field_bytes(req, "prompt", &in->prompt_len);
  }
  const cJSON *tg = cJSON_GetObjectItemCaseSensitive(req, "token_gen");
  const cJSON *ti = cJSON_GetObjectItemCaseSensitive(req, "token_ids");
  if (tg) {
    in->nids = (size_t)num(tg, "count");
    in->ids = malloc(in->nids * sizeof *in->ids);
    uint64_t mul = (uint64_t)num(tg, "mul"), add = (uint64_t)num(tg, "add");
    for (size_t i = 0; i < in->nids; i++)
      in->ids[i] = (uint32_t)(i * mul + add);
  } else if (ti) {
    in->nids = (size_t)cJSON_GetArraySize(ti);
    in->ids = malloc((in->nids ? in->nids : 1) * sizeof *in->ids);
    size_t i = 0;
    for (const cJSON *e = ti->child; e; e = e->next)
      in->ids[i++] = (uint32_t)e->valuedouble;
  }
  snprintf(in->want_key, sizeof in->want_key, "%s",
           cJSON_GetObjectItemCaseSensitive(vec, "key")->valuestring);
  in->want_blocks =
      hex_list(cJSON_GetObjectItemCaseSensitive(vec, "blocks"), &in->want_n);
  const cJSON *cb = cJSON_GetObjectItemCaseSensitive(vec, "completions_blocks");
  in->want_cblocks = hex_list(
      cb ? cb : cJSON_GetObjectItemCaseSensitive(vec, "blocks"), &in->want_cn);
  in->want_tools =
      cJSON_GetObjectItemCaseSensitive(vec, "tools_canonical")->valuestring;
}

static void vec_free(vec_input *in) {
  for (int i = 0; i < F_N; i++) free(in->f[i]);
  free(in->prompt);
  free(in->ids);
  free(in->want_blocks);
  free(in->want_cblocks);
}

static void check_key(const char *name, const spi_cache_key *key,
                      const char *want) {
  char hex[33];
  snprintf(hex, sizeof hex, "%016llx%016llx", (unsigned long long)key->high64,
           (unsigned long long)key->low64);
  if (strcmp(hex, want) != 0)
    fail_msg("%s: key %s, expected %s", name, hex, want);
}

static void check_list(const char *name, const uint64_t *got, size_t n,
                       const uint64_t *want, size_t want_n) {
  if (n != want_n) fail_msg("%s: %zu blocks, expected %zu", name, n, want_n);
  for (size_t i = 0; i < n; i++)
    if (got[i] != want[i])
      fail_msg("%s: block %zu is %016llx, expected %016llx", name, i,
               (unsigned long long)got[i], (unsigned long long)want[i]);
}

static void check_blocks(const vec_input *in, const uint64_t *got, size_t n) {
  check_list(in->name, got, n, in->want_blocks, in->want_n);
}

/* The module called directly with a view built here. */
static void run_vector(const cJSON *vec) {
  char *cfg_text =
      cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(vec, "config"));
  kb *k = kb_new(cfg_text);
  cJSON_free(cfg_text);
  vec_input in;
  vec_decode(vec, &in);

  spi_request_view v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  v.model = in.f[F_MODEL];
  v.model_len = in.len[F_MODEL];
  v.tokenizer_version = in.f[F_TOK];
  v.tokenizer_version_len = in.len[F_TOK];
  v.system_prompt = in.f[F_SYS];
  v.system_prompt_len = in.len[F_SYS];
  v.retrieval_template = in.f[F_RETR];
  v.retrieval_template_len = in.len[F_RETR];
  v.tenant_tier = in.f[F_TIER];
  v.tenant_tier_len = in.len[F_TIER];
  v.tenant_salt = in.f[F_SALT];
  v.tenant_salt_len = in.len[F_SALT];
  v.decode_profile = in.f[F_PROF];
  v.decode_profile_len = in.len[F_PROF];

  /* Tools go through the same canonicalisation the request module uses. */
  spi_buf canon = {0};
  if (in.len[F_TOOLS]) {
    cJSON *t = cJSON_ParseWithLengthOpts(in.f[F_TOOLS], in.len[F_TOOLS], NULL, 0);
    assert_non_null(t);
    spi_json_src src;
    spi__json_src_init(&src, in.f[F_TOOLS], in.len[F_TOOLS], t);
    assert_int_equal(spi__canon_json_src(t, &canon, &k->mem, &src), SPI_OK);
    spi__json_src_free(&src, &k->mem);
    cJSON_Delete(t);
  }
  if (canon.len != strlen(in.want_tools) ||
      (canon.len && memcmp(canon.data, in.want_tools, canon.len) != 0))
    fail_msg("%s: canonical tools differ", in.name);
  v.tools_canonical = (const char *)canon.data;
  v.tools_canonical_len = canon.len;
  v.prompt = in.prompt;
  v.prompt_len = in.prompt_len;
  v.token_ids = in.ids;
  v.token_count = in.nids;

  spi_cache_key key = key_of(k, &v);
  check_key(in.name, &key, in.want_key);
  uint64_t *out = calloc(in.want_n + 1, sizeof *out);
  size_t n = 12345;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out,
                                       in.want_n + 1, &n),
                   SPI_OK);
  check_blocks(&in, out, n);
  free(out);
  spi__buf_free(&canon, &k->mem);
  vec_free(&in);
  kb_free(k);
}

/* The same vector through the public API: engine configuration, request
 * setters (the request module canonicalises the tools), key and blocks. */
static void run_vector_public(spi_engine *e, const cJSON *vec) {
  cJSON *cfg = cJSON_CreateObject();
  cJSON_AddItemToObject(
      cfg, "cache_key",
      cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(vec, "config"), 1));
  char *cfg_text = cJSON_PrintUnformatted(cfg);
  cJSON_Delete(cfg);
  if (spi_engine_configure(e, cfg_text, strlen(cfg_text)) != SPI_OK)
    fail_msg("configure %s: %s", cfg_text, spi_engine_errmsg(e));
  cJSON_free(cfg_text);

  vec_input in;
  vec_decode(vec, &in);
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  for (int i = 0; i < F_N; i++) {
    if (!in.len[i]) continue;
    if (spi_request_set_str(r, FIELD_IDS[i], in.f[i], in.len[i]) != SPI_OK)
      fail_msg("%s: set %s: %s", in.name, FIELD_NAMES[i],
               spi_request_errmsg(r));
  }
  if (in.prompt_len)
    assert_int_equal(spi_request_set_str(r, SPI_REQ_PROMPT,
                                         (const char *)in.prompt,
                                         in.prompt_len),
                     SPI_OK);
  if (in.nids)
    assert_int_equal(spi_request_set_token_ids(r, in.ids, in.nids), SPI_OK);

  /* The canonical prompt of a completions prompt is its text with each
   * byte 0x1B-0x1F written as 0x1B, byte ^ 0x40 (docs/cache-key.md). */
  uint8_t *want_cp = malloc(2 * in.prompt_len + 1);
  size_t want_cp_len = 0;
  for (size_t i = 0; i < in.prompt_len; i++) {
    if (in.prompt[i] >= 0x1B && in.prompt[i] <= 0x1F) {
      want_cp[want_cp_len++] = 0x1B;
      want_cp[want_cp_len++] = (uint8_t)(in.prompt[i] ^ 0x40);
    } else {
      want_cp[want_cp_len++] = in.prompt[i];
    }
  }
  const uint8_t *cp = NULL;
  size_t cp_len = 0;
  assert_int_equal(spi_request_canonical_prompt(r, &cp, &cp_len), SPI_OK);
  assert_int_equal(cp_len, want_cp_len);
  if (cp_len) assert_memory_equal(cp, want_cp, cp_len);
  free(want_cp);

  spi_cache_key key;
  if (spi_request_cache_key(r, &key) != SPI_OK)
    fail_msg("%s: %s", in.name, spi_request_errmsg(r));
  check_key(in.name, &key, in.want_key);
  char hex[33];
  assert_int_equal(spi_cache_key_hex(&key, hex, sizeof hex), SPI_OK);
  assert_string_equal(hex, in.want_key);

  uint64_t *out = calloc(in.want_cn + 1, sizeof *out);
  size_t n = 12345;
  assert_int_equal(spi_request_block_hashes(r, NULL, 0, &n),
                   in.want_cn ? SPI_EBUFSIZE : SPI_OK);
  assert_int_equal(n, in.want_cn);
  assert_int_equal(spi_request_block_hashes(r, out, in.want_cn + 1, &n), SPI_OK);
  check_list(in.name, out, n, in.want_cblocks, in.want_cn);
  free(out);
  spi_request_free(r);
  vec_free(&in);
}

static cJSON *load_vectors(void) {
  size_t len = 0;
  char *text =
      read_file(SPI_SOURCE_DIR "/tests/golden/cache_key_vectors.json", &len);
  assert_non_null(text);
  cJSON *doc = cJSON_ParseWithLengthOpts(text, len, NULL, 0);
  free(text);
  assert_non_null(doc);
  assert_string_equal(
      cJSON_GetObjectItemCaseSensitive(doc, "module")->valuestring,
      SPI_BUILTIN_KEY_BUILDER);
  assert_true(cJSON_GetArraySize(
                  cJSON_GetObjectItemCaseSensitive(doc, "vectors")) >= 30);
  return doc;
}

static void test_golden_vectors_public_api(void **st) {
  (void)st;
  cJSON *doc = load_vectors();
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  const cJSON *vecs = cJSON_GetObjectItemCaseSensitive(doc, "vectors");
  for (const cJSON *v = vecs->child; v; v = v->next) run_vector_public(e, v);
  spi_engine_free(e);
  cJSON_Delete(doc);
}

/* An OpenAI body read by the request module: its canonical prompt, system
 * prompt, key and blocks are the independent implementation's. */
static void run_body(spi_engine *e, const cJSON *vec) {
  const char *name = cJSON_GetObjectItemCaseSensitive(vec, "name")->valuestring;
  cJSON *cfg = cJSON_CreateObject();
  cJSON_AddItemToObject(
      cfg, "cache_key",
      cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(vec, "config"), 1));
  char *cfg_text = cJSON_PrintUnformatted(cfg);
  cJSON_Delete(cfg);
  if (spi_engine_configure(e, cfg_text, strlen(cfg_text)) != SPI_OK)
    fail_msg("configure %s: %s", cfg_text, spi_engine_errmsg(e));
  cJSON_free(cfg_text);
  const char *body = cJSON_GetObjectItemCaseSensitive(vec, "body")->valuestring;
  spi_request *r = NULL;
  assert_int_equal(spi_request_new(e, &r), SPI_OK);
  if (spi_request_parse_openai(r, body, strlen(body), SPI_OPENAI_AUTO) != SPI_OK)
    fail_msg("%s: %s", name, spi_request_errmsg(r));
  const char *want =
      cJSON_GetObjectItemCaseSensitive(vec, "canonical_prompt")->valuestring;
  const uint8_t *cp = NULL;
  size_t cp_len = 0;
  assert_int_equal(spi_request_canonical_prompt(r, &cp, &cp_len), SPI_OK);
  if (cp_len != strlen(want) || memcmp(cp, want, cp_len) != 0)
    fail_msg("%s: canonical prompt \"%.*s\", expected \"%s\"", name,
             (int)cp_len, (const char *)cp, want);
  spi_request_view v;
  assert_int_equal(spi__request_view(r, &v), SPI_OK);
  want = cJSON_GetObjectItemCaseSensitive(vec, "system_prompt")->valuestring;
  if (v.system_prompt_len != strlen(want) ||
      memcmp(v.system_prompt, want, v.system_prompt_len) != 0)
    fail_msg("%s: system prompt \"%.*s\", expected \"%s\"", name,
             (int)v.system_prompt_len, v.system_prompt, want);
  spi_cache_key key;
  assert_int_equal(spi_request_cache_key(r, &key), SPI_OK);
  check_key(name, &key, cJSON_GetObjectItemCaseSensitive(vec, "key")->valuestring);
  size_t want_n = 0, n = 0;
  uint64_t *want_blocks =
      hex_list(cJSON_GetObjectItemCaseSensitive(vec, "blocks"), &want_n);
  uint64_t *out = calloc(want_n + 1, sizeof *out);
  assert_int_equal(spi_request_block_hashes(r, out, want_n + 1, &n), SPI_OK);
  check_list(name, out, n, want_blocks, want_n);
  free(out);
  free(want_blocks);
  spi_request_free(r);
}

static void test_golden_bodies(void **st) {
  (void)st;
  cJSON *doc = load_vectors();
  spi_engine *e = NULL;
  assert_int_equal(spi_engine_new(&e, NULL), SPI_OK);
  const cJSON *bodies = cJSON_GetObjectItemCaseSensitive(doc, "bodies");
  assert_true(cJSON_GetArraySize(bodies) >= 20);
  for (const cJSON *v = bodies->child; v; v = v->next) run_body(e, v);
  spi_engine_free(e);
  cJSON_Delete(doc);
}

static void test_golden_vectors(void **st) {
  (void)st;
  cJSON *doc = load_vectors();
  const cJSON *vecs = cJSON_GetObjectItemCaseSensitive(doc, "vectors");
  for (const cJSON *v = vecs->child; v; v = v->next) run_vector(v);
  cJSON_Delete(doc);
}

/* ------------------------------------------------------------ module */


/* The block hashes go through the AVX2 build of XXH3 where the CPU has it:
 * it must give libxxhash's bits for every length (the short, mid and long
 * paths, stripe and block edges) and seed. */
static void test_wide_xxh3_matches(void **st) {
  (void)st;
  static unsigned char buf[4500];
  uint64_t x = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < sizeof buf; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    buf[i] = (unsigned char)x;
  }
  for (size_t n = 0; n <= sizeof buf; n += n < 300 ? 1 : 37) {
    uint64_t seeds[] = {0, 1, x, UINT64_MAX};
    for (int k = 0; k < 4; k++)
      assert_true(spi__xxh3_seeded(buf + (n % 7), n - (n % 7 && n >= 7 ? 7 : 0),
                                   seeds[k]) ==
                  XXH3_64bits_withSeed(buf + (n % 7),
                                       n - (n % 7 && n >= 7 ? 7 : 0), seeds[k]));
  }
#if SPI_HAVE_XXH_AVX2
  if (__builtin_cpu_supports("avx2"))
    for (size_t n = 0; n <= sizeof buf; n += 61) {
      assert_true(spi__xxh3_avx2(buf, n) == XXH3_64bits(buf, n));
      assert_true(spi__xxh3_seeded_avx2(buf, n, n) ==
                  XXH3_64bits_withSeed(buf, n, n));
    }
#endif
}

/* Blocks longer than 240 bytes take XXH3's long path, which on CPUs with
 * AVX-512 F (keybuilder.c) or AVX2 (xxh_wide.c) the block hashes run with
 * the seeded secret's words made in registers: every length to 2,200
 * bytes (each stripe count, the last stripe and the 1 KiB edge of the
 * scramble), lengths
 * around further block edges, at every alignment mod 8, with random seeds
 * and the seeds whose pattern is all zeros or all ones, give libxxhash's
 * bits. */
static void test_block_hash_long_path_matches(void **st) {
  (void)st;
  static unsigned char buf[9000 + 8];
  uint64_t x = 0x243f6a8885a308d3ull;
  for (size_t i = 0; i < sizeof buf; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    buf[i] = (unsigned char)x;
  }
  size_t lens[] = {2047, 2048, 2049, 3071, 3072, 3073, 4096, 4097,
                   5000, 8191, 8192, 8193, 9000};
  for (size_t n = 0; n <= 2200 + sizeof lens / sizeof lens[0]; n++) {
    size_t len = n <= 2200 ? n : lens[n - 2201];
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint64_t seeds[] = {x, 0, 1, UINT64_MAX, UINT64_C(1) << 63};
    for (int k = 0; k < 5; k++) {
      const unsigned char *p = buf + (n + (size_t)k) % 8;
      assert_true(spi__xxh3_seeded(p, len, seeds[k]) ==
                  XXH3_64bits_withSeed(p, len, seeds[k]));
    }
  }
}

#if SPI_HAVE_XXH_AVX2
#include <cpuid.h>
/* Whether the upper halves of the vector registers may be non-zero (the
 * AVX bit of XINUSE, read with XGETBV 1), or -1 if the CPU cannot say. */
static int upper_state_dirty(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(0xd, 1, &a, &b, &c, &d) || !(a & 4u)) return -1;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(1u));
  (void)hi;
  return (int)(lo >> 2 & 1u);
}
#endif

/* The AVX2 build hands the vector registers back clean: dirty upper halves
 * would slow every SSE instruction the caller's process runs afterwards. */
static void test_wide_xxh3_leaves_upper_state_clean(void **st) {
  (void)st;
#if SPI_HAVE_XXH_AVX2
  if (!__builtin_cpu_supports("avx2") || upper_state_dirty() < 0) skip();
  static unsigned char buf[8192];
  memset(buf, 'x', sizeof buf);
  volatile uint64_t sink = spi__xxh3_seeded_avx2(buf, sizeof buf, 7);
  assert_int_equal(upper_state_dirty(), 0);
  sink += spi__xxh3_avx2(buf, sizeof buf);
  assert_int_equal(upper_state_dirty(), 0);
  sink += spi__xxh3_seeded(buf, 1024, 9);
  assert_int_equal(upper_state_dirty(), 0);
  (void)sink;
#else
  skip();
#endif
}

static void test_module_struct(void **st) {
  (void)st;
  spi_key_builder_module m;
  memset(&m, 0xab, sizeof m);
  spi__builtin_key_builder(&m);
  assert_int_equal(m.abi_version, SPI_MODULE_ABI_VERSION);
  assert_int_equal(m.struct_size, sizeof m);
  assert_int_equal(m.on_failure, SPI_ON_FAILURE_ERROR);
  assert_int_equal(m.reserved0, 0);
  assert_non_null(m.configure);
  assert_non_null(m.release);
  assert_non_null(m.build_key);
  assert_non_null(m.block_hashes);
}

/* The defaults come from the option table, and the table's default block
 * size is what an empty configuration uses. */
static void test_defaults_from_table(void **st) {
  (void)st;
  const spi_optdesc *d = spi__opt_find("cache_key.block_bytes");
  assert_non_null(d);
  size_t bb = (size_t)strtoul(d->default_json, NULL, 10);
  assert_true(bb >= 16 && bb <= 1048576);
  kb *k = kb_new("{}");
  spi_request_view v = base_view();
  uint8_t *p = pattern(3 * bb - 1, 5, 1);
  v.prompt = p;
  v.prompt_len = 3 * bb - 1;
  spi_cache_key key = key_of(k, &v);
  uint64_t out[4];
  size_t n = 0;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, 4, &n),
                   SPI_OK);
  assert_int_equal(n, 2);
  /* Token mode uses block_tokens (default 16). */
  uint32_t ids[40] = {0};
  v.token_ids = ids;
  v.token_count = 40;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, 4, &n),
                   SPI_OK);
  assert_int_equal(n, 2);
  free(p);
  kb_free(k);
}

/* ------------------------------------------------------ argument checks */

static void test_null_arguments(void **st) {
  (void)st;
  kb *k = kb_new("{}");
  spi_request_view v = base_view();
  spi_cache_key key = key_of(k, &v);
  uint64_t out[2];
  size_t n = 0;
  assert_int_equal(k->mod.build_key(&k->mem, NULL, &v, &key), SPI_EINVAL);
  assert_int_equal(k->mod.build_key(&k->mem, k->inst, NULL, &key), SPI_EINVAL);
  assert_int_equal(k->mod.build_key(&k->mem, k->inst, &v, NULL), SPI_EINVAL);
  assert_int_equal(k->mod.block_hashes(&k->mem, NULL, &v, &key, out, 2, &n),
                   SPI_EINVAL);
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, NULL, &key, out, 2, &n),
                   SPI_EINVAL);
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, NULL, out, 2, &n),
                   SPI_EINVAL);
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, 2, NULL),
                   SPI_EINVAL);
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, NULL, 1, &n),
                   SPI_EINVAL);
  /* NULL with length 0 is the empty string, NULL with a length is not. */
  spi_request_view e = base_view();
  e.model = NULL;
  e.model_len = 0;
  spi_request_view z = base_view();
  z.model = "";
  z.model_len = 0;
  assert_true(same_key(key_of(k, &e), key_of(k, &z)));
  e.tenant_salt = NULL;
  e.tenant_salt_len = 3;
  assert_int_equal(k->mod.build_key(&k->mem, k->inst, &e, &key), SPI_EINVAL);
  e = base_view();
  e.prompt_len = 10;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &e, &key, out, 2, &n),
                   SPI_EINVAL);
  e = base_view();
  e.token_count = 10;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &e, &key, out, 2, &n),
                   SPI_EINVAL);
  /* A view older than the fields the builder reads is refused. */
  e = base_view();
  e.struct_size = offsetof(spi_request_view, prompt);
  assert_int_equal(k->mod.build_key(&k->mem, k->inst, &e, &key), SPI_EINVAL);
  /* An instance that is not one of ours. */
  uint32_t bogus[8] = {0};
  assert_int_equal(k->mod.build_key(&k->mem, bogus, &v, &key), SPI_EINVAL);
  kb_free(k);
}

/* ------------------------------------------------ cap and SPI_EBUFSIZE */

static void test_cap_contract(void **st) {
  (void)st;
  kb *k = kb_new("{\"block_bytes\":64}");
  spi_request_view v = base_view();
  uint8_t *p = pattern(64 * 5 + 10, 7, 3); /* 5 full blocks */
  v.prompt = p;
  v.prompt_len = 64 * 5 + 10;
  spi_cache_key key = key_of(k, &v);

  uint64_t all[5];
  size_t n = 0;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, all, 5, &n),
                   SPI_OK);
  assert_int_equal(n, 5);

  /* Size query: out NULL, cap 0. */
  n = 0;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, NULL, 0, &n),
                   SPI_EBUFSIZE);
  assert_int_equal(n, 5);

  /* cap < n: exactly cap written, the rest untouched, total reported. */
  for (size_t cap = 0; cap < 5; cap++) {
    uint64_t out[8];
    memset(out, 0xee, sizeof out);
    n = 0;
    assert_int_equal(
        k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, cap, &n),
        SPI_EBUFSIZE);
    assert_int_equal(n, 5);
    if (cap) assert_memory_equal(out, all, cap * sizeof *out);
    for (size_t i = cap; i < 8; i++)
      assert_true(out[i] == UINT64_C(0xeeeeeeeeeeeeeeee));
  }

  /* cap > n: n written, no more. */
  uint64_t big[8];
  memset(big, 0xee, sizeof big);
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, big, 8, &n),
                   SPI_OK);
  assert_int_equal(n, 5);
  assert_memory_equal(big, all, sizeof all);
  for (size_t i = 5; i < 8; i++)
    assert_true(big[i] == UINT64_C(0xeeeeeeeeeeeeeeee));

  /* No full block: n = 0 and SPI_OK even with cap 0. */
  v.prompt_len = 63;
  n = 99;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, NULL, 0, &n),
                   SPI_OK);
  assert_int_equal(n, 0);
  free(p);
  kb_free(k);
}

static void test_max_blocks(void **st) {
  (void)st;
  kb *k = kb_new("{\"block_bytes\":16,\"max_blocks\":4}");
  spi_request_view v = base_view();
  uint8_t *p = pattern(16 * 100, 11, 0);
  v.prompt = p;
  v.prompt_len = 16 * 100;
  spi_cache_key key = key_of(k, &v);
  uint64_t capped[8];
  size_t n = 0;
  assert_int_equal(
      k->mod.block_hashes(&k->mem, k->inst, &v, &key, capped, 8, &n), SPI_OK);
  assert_int_equal(n, 4);
  /* The capped hashes are the first ones of the uncapped chain. */
  assert_int_equal(kb_config(k, "{\"block_bytes\":16,\"max_blocks\":1000}"),
                   SPI_OK);
  uint64_t full[100];
  assert_int_equal(
      k->mod.block_hashes(&k->mem, k->inst, &v, &key, full, 100, &n), SPI_OK);
  assert_int_equal(n, 100);
  assert_memory_equal(capped, full, 4 * sizeof *full);
  free(p);
  kb_free(k);
}

/* ------------------------------------------------------------- chaining */

static void test_chaining(void **st) {
  (void)st;
  enum { B = 64, NB = 6 };
  kb *k = kb_new("{\"block_bytes\":64}");
  spi_request_view v = base_view();
  uint8_t *p = pattern(B * NB + 20, 13, 1);
  v.prompt = p;
  v.prompt_len = B * NB + 20;
  spi_cache_key key = key_of(k, &v);
  uint64_t ref[NB], out[NB];
  size_t n = 0;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, ref, NB, &n),
                   SPI_OK);
  assert_int_equal(n, NB);
  for (size_t i = 0; i < NB; i++)
    for (size_t j = i + 1; j < NB; j++) assert_true(ref[i] != ref[j]);

  /* A changed byte in block b changes the hash of b and every later block
   * and nothing before it. */
  for (size_t b = 0; b < NB; b++) {
    p[b * B + 17] ^= 0x40;
    assert_int_equal(
        k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, NB, &n), SPI_OK);
    for (size_t i = 0; i < NB; i++) {
      if (i < b)
        assert_true(out[i] == ref[i]);
      else
        assert_true(out[i] != ref[i]);
    }
    p[b * B + 17] ^= 0x40;
  }
  /* The trailing partial block does not count. */
  p[B * NB + 3] ^= 1;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, NB, &n),
                   SPI_OK);
  assert_memory_equal(out, ref, sizeof ref);

  /* The same block contents in a different order give different chains. */
  uint8_t *swapped = malloc(B * 2);
  memcpy(swapped, p + B, B);
  memcpy(swapped + B, p, B);
  spi_request_view s = v;
  s.prompt = swapped;
  s.prompt_len = B * 2;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &s, &key, out, 2, &n),
                   SPI_OK);
  assert_true(out[0] != ref[1] && out[1] != ref[0] && out[1] != ref[1]);

  /* A different block size gives different hashes even for block 0's
   * bytes (the size is part of the chain start). */
  assert_int_equal(kb_config(k, "{\"block_bytes\":32}"), SPI_OK);
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, NB, &n),
                   SPI_EBUFSIZE);
  assert_int_equal(n, (B * NB + 20) / 32);
  for (size_t i = 0; i < NB; i++) assert_true(out[i] != ref[i]);
  free(swapped);
  free(p);
  kb_free(k);
}

/* Token ids whose little-endian bytes equal a byte prompt never produce
 * the byte prompt's hashes: the mode is part of the chain. Also checks the
 * explicit u32le serialisation against a hand-built byte buffer. */
static void test_token_mode(void **st) {
  (void)st;
  kb *k = kb_new("{\"block_bytes\":64,\"block_tokens\":16}");
  spi_request_view v = base_view();
  uint32_t ids[40];
  uint8_t bytes[160];
  for (uint32_t i = 0; i < 40; i++) {
    ids[i] = i * 0x01010101u + 0x80;
    bytes[4 * i] = (uint8_t)ids[i];
    bytes[4 * i + 1] = (uint8_t)(ids[i] >> 8);
    bytes[4 * i + 2] = (uint8_t)(ids[i] >> 16);
    bytes[4 * i + 3] = (uint8_t)(ids[i] >> 24);
  }
  spi_cache_key key = key_of(k, &v);
  uint64_t th[4], bh[4];
  size_t n = 0;
  v.token_ids = ids;
  v.token_count = 40;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, th, 4, &n),
                   SPI_OK);
  assert_int_equal(n, 2); /* 40 / 16, 8 ids ignored */
  v.token_ids = NULL;
  v.token_count = 0;
  v.prompt = bytes;
  v.prompt_len = sizeof bytes;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, bh, 4, &n),
                   SPI_OK);
  assert_int_equal(n, 2); /* 160 / 64, 32 bytes ignored: the same bytes */
  assert_true(th[0] != bh[0] && th[1] != bh[1]);
  /* Token ids win over prompt bytes when both are present. */
  v.token_ids = ids;
  v.token_count = 40;
  uint64_t both[4];
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, both, 4, &n),
                   SPI_OK);
  assert_memory_equal(both, th, 2 * sizeof *th);
  /* The largest block_tokens works (serialised on the stack). */
  assert_int_equal(kb_config(k, "{\"block_tokens\":4096}"), SPI_OK);
  uint32_t *many = calloc(4096 * 3, sizeof *many);
  v.token_ids = many;
  v.token_count = 4096 * 3;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, th, 4, &n),
                   SPI_OK);
  assert_int_equal(n, 3);
  free(many);
  kb_free(k);
}

/* Token blocks of at most 240 bytes (60 ids) are hashed on XXH3's short
 * paths: every such block size, and the first long ones, give the chain
 * of the definition, c_0 = XXH3_64(S, "spi-blk1") and c_i = XXH3_64(the
 * block's u32le ids, c_{i-1}), computed here with libxxhash. */
static void test_token_chain_short_blocks(void **st) {
  (void)st;
  enum { NB = 5, MAXB = 64 };
  kb *k = kb_new("{}");
  spi_request_view v = base_view();
  static uint32_t ids[NB * MAXB];
  uint8_t bytes[MAXB * 4];
  for (uint32_t i = 0; i < NB * MAXB; i++) ids[i] = i * 2654435761u ^ 0x5bd1e995u;
  spi_cache_key key = key_of(k, &v);
  v.token_ids = ids;
  for (uint32_t b = 1; b <= MAXB; b++) {
    char cfg[64];
    snprintf(cfg, sizeof cfg, "{\"block_tokens\":%u}", b);
    assert_int_equal(kb_config(k, cfg), SPI_OK);
    v.token_count = NB * b + b / 2;
    uint64_t out[NB];
    size_t n = 0;
    assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, NB, &n),
                     SPI_OK);
    assert_int_equal(n, NB);
    uint8_t s[16 + 16 + 1 + 4];
    memcpy(s, "spotinfer:blk:v1", 16);
    for (int i = 0; i < 8; i++) {
      s[16 + i] = (uint8_t)(key.high64 >> (56 - 8 * i));
      s[24 + i] = (uint8_t)(key.low64 >> (56 - 8 * i));
    }
    s[32] = 0x02;
    for (int i = 0; i < 4; i++) s[33 + i] = (uint8_t)(b >> (8 * i));
    uint64_t c = XXH3_64bits_withSeed(s, sizeof s, UINT64_C(0x7370692d626c6b31));
    for (uint32_t i = 0; i < NB; i++) {
      for (uint32_t j = 0; j < b; j++)
        for (int q = 0; q < 4; q++) bytes[4 * j + q] = (uint8_t)(ids[i * b + j] >> (8 * q));
      c = XXH3_64bits_withSeed(bytes, 4 * (size_t)b, c);
      assert_true(out[i] == c);
    }
  }
  kb_free(k);
}

/* ------------------------------------------------------------ isolation */

static void test_every_field_matters(void **st) {
  (void)st;
  kb *k = kb_new("{}");
  const spi_request_view base = base_view();
  spi_cache_key ref = key_of(k, &base);
  spi_cache_key seen[16];
  size_t nseen = 0;
  seen[nseen++] = ref;
#define CHANGE(f, s)                                       \
  do {                                                     \
    spi_request_view c = base;                             \
    c.f = (s);                                             \
    c.f##_len = strlen(s);                                 \
    spi_cache_key kk = key_of(k, &c);                      \
    for (size_t i = 0; i < nseen; i++)                     \
      assert_false(same_key(kk, seen[i]));                 \
    seen[nseen++] = kk;                                    \
  } while (0)
  CHANGE(model, "llama-3.1-8b-instruct");
  CHANGE(tokenizer_version, "llama3-tok-2024-09");
  CHANGE(system_prompt, "You are a helpful assistant!");
  CHANGE(tools_canonical, "[{\"name\":\"g\"}]");
  CHANGE(retrieval_template, "Context: {{doc}}");
  CHANGE(tenant_tier, "free");
  CHANGE(tenant_salt, "salt-b");
  CHANGE(decode_profile, "batch");
  /* Moving bytes between adjacent fields changes the key (lengths are
   * part of the encoding). */
  CHANGE(model, "llama-3.1-70b-instructl");
#undef CHANGE
  spi_request_view c = base;
  c.tokenizer_version = "lama3-tok-2024-07";
  c.tokenizer_version_len = strlen(c.tokenizer_version);
  c.model = "llama-3.1-70b-instructl";
  c.model_len = strlen(c.model);
  assert_false(same_key(key_of(k, &c), ref));

  /* Fields the key does not cover leave it alone. */
  c = base;
  c.tenant = "someone-else";
  c.tenant_len = strlen(c.tenant);
  c.stream = 1;
  c.priority = -5;
  c.priority_set = 1;
  uint8_t prompt[100] = {1};
  c.prompt = prompt;
  c.prompt_len = sizeof prompt;
  assert_true(same_key(key_of(k, &c), ref));

  /* The schema version is part of every key. */
  assert_int_equal(kb_config(k, "{\"schema_version\":2}"), SPI_OK);
  assert_false(same_key(key_of(k, &base), ref));
  assert_int_equal(kb_config(k, "{\"schema_version\":1,\"block_bytes\":64}"),
                   SPI_OK);
  assert_true(same_key(key_of(k, &base), ref)); /* block size is not */
  kb_free(k);
}

static void test_salt_isolation(void **st) {
  (void)st;
  kb *k = kb_new("{\"block_bytes\":32}");
  spi_request_view a = base_view(), b = base_view();
  b.tenant_salt = "salt-b";
  b.tenant_salt_len = 6;
  uint8_t *p = pattern(32 * 20, 3, 9);
  a.prompt = b.prompt = p;
  a.prompt_len = b.prompt_len = 32 * 20;
  spi_cache_key ka = key_of(k, &a), kbk = key_of(k, &b);
  assert_false(same_key(ka, kbk));
  uint64_t ha[20], hb[20];
  size_t n = 0;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &a, &ka, ha, 20, &n),
                   SPI_OK);
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &b, &kbk, hb, 20, &n),
                   SPI_OK);
  for (size_t i = 0; i < 20; i++)
    for (size_t j = 0; j < 20; j++) assert_true(ha[i] != hb[j]);
  free(p);
  kb_free(k);
}

/* Tools JSON that means the same gives the same key once canonicalised. */
static void test_tools_order_invariance(void **st) {
  (void)st;
  static const char *const variants[] = {
      "[{\"type\":\"function\",\"function\":{\"name\":\"lookup\",\"parameters\":"
      "{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\"},"
      "\"n\":{\"type\":\"integer\",\"default\":10}}}}}]",
      "[ { \"function\" : { \"parameters\" : { \"properties\" : { \"n\" : "
      "{ \"default\" : 1e1 , \"type\" : \"integer\" } , \"q\" : { \"type\" : "
      "\"string\" } } , \"type\" : \"object\" } , \"name\" : \"lookup\" } , "
      "\"type\" : \"function\" } ]",
      "[\n\t{\"function\":{\"name\":\"look\\u0075p\",\"parameters\":"
      "{\"properties\":{\"q\":{\"type\":\"string\"},\"n\":{\"default\":10.0,"
      "\"type\":\"integer\"}},\"type\":\"object\"}},\"type\":\"function\"}\r\n]",
  };
  kb *k = kb_new("{}");
  spi_cache_key first = {0, 0};
  for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
    cJSON *t = cJSON_ParseWithLengthOpts(variants[i], strlen(variants[i]),
                                         NULL, 0);
    assert_non_null(t);
    spi_buf canon = {0};
    assert_int_equal(spi__canon_json(t, &canon, &k->mem), SPI_OK);
    cJSON_Delete(t);
    spi_request_view v = base_view();
    v.tools_canonical = (const char *)canon.data;
    v.tools_canonical_len = canon.len;
    spi_cache_key kk = key_of(k, &v);
    if (i == 0)
      first = kk;
    else
      assert_true(same_key(kk, first));
    spi__buf_free(&canon, &k->mem);
  }
  kb_free(k);
}

/* Fields of 1 MiB work without allocation and long identifiers take their
 * digest form; a 256-byte and a 257-byte model differ. */
static void test_large_fields(void **st) {
  (void)st;
  kb *k = kb_new("{}");
  size_t big = 1u << 20;
  char *text = malloc(big);
  memset(text, 'x', big);
  spi_request_view v = base_view();
  long before = k->counts.calls;
  v.model = v.tokenizer_version = v.system_prompt = v.tools_canonical = text;
  v.retrieval_template = v.tenant_tier = v.tenant_salt = v.decode_profile = text;
  v.model_len = v.tokenizer_version_len = v.system_prompt_len = big;
  v.tools_canonical_len = v.retrieval_template_len = v.tenant_tier_len = big;
  v.tenant_salt_len = v.decode_profile_len = big;
  spi_cache_key a = key_of(k, &v);
  v.decode_profile_len = big - 1;
  spi_cache_key b = key_of(k, &v);
  assert_false(same_key(a, b));
  assert_int_equal(k->counts.calls, before); /* nothing allocated */

  spi_request_view m = base_view();
  m.model = text;
  m.model_len = 256;
  spi_cache_key k256 = key_of(k, &m);
  m.model_len = 257;
  spi_cache_key k257 = key_of(k, &m);
  assert_false(same_key(k256, k257));
  free(text);
  kb_free(k);
}

/* ---------------------------------------------------------- configuration */

static void expect_config_error(const char *json, int status,
                                const char *needle) {
  kb *k = kb_new("{}");
  void *inst = (void *)1;
  char err[SPI_ERRMSG_CAP] = "";
  int rc = k->mod.configure(&k->mem, json, strlen(json), &inst, err, sizeof err);
  if (rc != status)
    fail_msg("config %s: status %d, expected %d (%s)", json, rc, status, err);
  assert_null(inst);
  if (!strstr(err, needle))
    fail_msg("config %s: message \"%s\" lacks \"%s\"", json, err, needle);
  kb_free(k);
}

static void test_config_errors(void **st) {
  (void)st;
  expect_config_error("{\"block_byte\":64}", SPI_EUNKNOWN,
                      "cache_key.block_byte");
  expect_config_error("{\"block_bytes\":\"64\"}", SPI_ETYPE,
                      "cache_key.block_bytes");
  expect_config_error("{\"block_bytes\":64.5}", SPI_ETYPE,
                      "cache_key.block_bytes");
  expect_config_error("{\"block_bytes\":8}", SPI_ERANGE,
                      "cache_key.block_bytes");
  expect_config_error("{\"block_bytes\":1048577}", SPI_ERANGE,
                      "cache_key.block_bytes");
  expect_config_error("{\"block_tokens\":0}", SPI_ERANGE,
                      "cache_key.block_tokens");
  expect_config_error("{\"block_tokens\":4097}", SPI_ERANGE,
                      "cache_key.block_tokens");
  expect_config_error("{\"max_blocks\":0}", SPI_ERANGE, "cache_key.max_blocks");
  expect_config_error("{\"schema_version\":65536}", SPI_ERANGE,
                      "cache_key.schema_version");
  expect_config_error("{\"schema_version\":true}", SPI_ETYPE,
                      "cache_key.schema_version");
  expect_config_error("{\"block_bytes\":64", SPI_EPARSE, "cache_key");
  expect_config_error("[]", SPI_ETYPE, "cache_key");
  expect_config_error("{\"max_blocks\":1,\"max_blocks\":2}", SPI_EPARSE,
                      "cache_key.max_blocks");

  /* Bounds are inclusive; null means the default. */
  kb *k = kb_new("{\"block_bytes\":16,\"block_tokens\":4096,"
                 "\"max_blocks\":1048576,\"schema_version\":65535}");
  assert_int_equal(kb_config(k, "{\"block_bytes\":1048576,\"block_tokens\":1,"
                                "\"max_blocks\":1,\"schema_version\":1}"),
                   SPI_OK);
  assert_int_equal(kb_config(k, "{\"block_bytes\":null}"), SPI_OK);
  /* configure's own argument checks */
  void *inst = NULL;
  char err[64];
  assert_int_equal(k->mod.configure(NULL, "{}", 2, &inst, err, sizeof err),
                   SPI_EINVAL);
  assert_int_equal(k->mod.configure(&k->mem, "{}", 2, NULL, err, sizeof err),
                   SPI_EINVAL);
  assert_int_equal(k->mod.configure(&k->mem, NULL, 2, &inst, err, sizeof err),
                   SPI_EINVAL);
  k->mod.release(&k->mem, NULL); /* harmless */
  kb_free(k);
}

/* Failing each allocation of configure in turn: SPI_ENOMEM, no instance,
 * nothing leaked; then the first run with no failure succeeds. */
static void test_alloc_failures(void **st) {
  (void)st;
  spi_key_builder_module mod;
  spi__builtin_key_builder(&mod);
  const char *json = "{\"block_bytes\":256,\"max_blocks\":100}";
  for (long fail = 0;; fail++) {
    counting_alloc a = {0, 0, fail};
    spi_mem m = counting_mem(&a);
    void *inst = (void *)1;
    char err[SPI_ERRMSG_CAP] = "";
    int rc = mod.configure(&m, json, strlen(json), &inst, err, sizeof err);
    if (a.calls <= fail) { /* the failure point was never reached */
      assert_int_equal(rc, SPI_OK);
      assert_non_null(inst);
      mod.release(&m, inst);
      assert_int_equal(a.live, 0);
      assert_true(fail >= 1);
      break;
    }
    assert_int_equal(rc, SPI_ENOMEM);
    assert_null(inst);
    assert_int_equal(a.live, 0);
    assert_true(fail < 100);
  }
}

/* Keys and block hashes allocate nothing. */
static void test_no_allocation_on_hot_path(void **st) {
  (void)st;
  kb *k = kb_new("{\"block_bytes\":64}");
  spi_request_view v = base_view();
  uint8_t *p = pattern(64 * 50, 1, 2);
  v.prompt = p;
  v.prompt_len = 64 * 50;
  uint32_t ids[64] = {0};
  long before = k->counts.calls;
  spi_cache_key key = key_of(k, &v);
  uint64_t out[50];
  size_t n = 0;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, 50, &n),
                   SPI_OK);
  v.token_ids = ids;
  v.token_count = 64;
  assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &key, out, 50, &n),
                   SPI_OK);
  assert_int_equal(k->counts.calls, before);
  free(p);
  kb_free(k);
}

/* The key of a model of 0 to 40 bytes with every later field
 * empty, at several schema versions, against XXH3_128 of the message the
 * wire format spells (the built-in takes a short message's constant
 * chunks from its instance). */
static const uint8_t empty_digest[16] = {0x99, 0xaa, 0x06, 0xd3, 0x01, 0x47,
                                         0x98, 0xd8, 0x60, 0x01, 0xc3, 0x24,
                                         0x46, 0x8d, 0x49, 0x7f};

/* XXH3_128 of the key message the wire format spells for a model of n
 * (at most 40) bytes with every later field empty. */
static XXH128_hash_t short_key_want(uint32_t version, const char *model,
                                    size_t n) {
  uint8_t m[512];
  size_t len = 0;
  memcpy(m, "spotinfer:key:v1", 16);
  len = 16;
  m[len++] = 0x01;
  m[len++] = 4, m[len++] = 0, m[len++] = 0, m[len++] = 0;
  for (int b = 0; b < 4; b++) m[len++] = (uint8_t)(version >> (8 * b));
  m[len++] = 0x02;
  m[len++] = (uint8_t)n, m[len++] = 0, m[len++] = 0, m[len++] = 0;
  memcpy(m + len, model, n);
  len += n;
  for (uint8_t tag = 0x03; tag <= 0x09; tag++) {
    int digest = tag >= 0x04 && tag <= 0x06;
    m[len++] = tag;
    m[len++] = digest ? 16 : 0, m[len++] = 0, m[len++] = 0, m[len++] = 0;
    if (digest) memcpy(m + len, empty_digest, 16), len += 16;
  }
  return XXH3_128bits_withSeed(m, len, UINT64_C(0x7370692d6b657931));
}

static void test_short_messages(void **st) {
  (void)st;
  XXH128_canonical_t d;
  XXH128_canonicalFromHash(&d, XXH3_128bits("", 0));
  assert_memory_equal(d.digest, empty_digest, 16);
  const uint32_t versions[] = {1, 2, 256, 65535};
  char model[40];
  for (size_t i = 0; i < sizeof model; i++) model[i] = (char)('a' + i % 26);
  for (size_t vi = 0; vi < sizeof versions / sizeof versions[0]; vi++) {
    char cfg[64];
    snprintf(cfg, sizeof cfg, "{\"schema_version\":%u}", (unsigned)versions[vi]);
    kb *k = kb_new(cfg);
    for (size_t n = 0; n <= 40; n++) {
      XXH128_hash_t want = short_key_want(versions[vi], model, n);
      spi_request_view v;
      memset(&v, 0, sizeof v);
      v.struct_size = sizeof v;
      v.model = model;
      v.model_len = n;
      spi_cache_key key = key_of(k, &v);
      assert_true(key.high64 == want.high64 && key.low64 == want.low64);
    }
    kb_free(k);
  }
}

/* Short models for the memo test: every prefix of one name (models that
 * share their first 8 bytes and differ in length), and some of them with
 * their last byte changed (the same length, one byte apart). */
#define MEMO_MODELS 24
typedef struct memo_run {
  kb *k;
  char model[MEMO_MODELS][16];
  size_t len[MEMO_MODELS];
  XXH128_hash_t want[MEMO_MODELS];
  unsigned stride;
  atomic_int wrong;
} memo_run;

typedef struct memo_thread {
  memo_run *run;
  unsigned id;
} memo_thread;

static void *memo_keys(void *arg) {
  memo_thread *t = arg;
  memo_run *r = t->run;
  spi_request_view v;
  memset(&v, 0, sizeof v);
  v.struct_size = sizeof v;
  for (unsigned i = 0; i < 20000; i++) {
    unsigned j = (i * (2 * t->id + 1) + t->id) % MEMO_MODELS;
    v.model = r->model[j];
    v.model_len = r->len[j];
    spi_cache_key key = {0, 0};
    if (r->k->mod.build_key(&r->k->mem, r->k->inst, &v, &key) != SPI_OK ||
        key.high64 != r->want[j].high64 || key.low64 != r->want[j].low64)
      atomic_fetch_add(&r->wrong, 1);
  }
  return NULL;
}

/* The built-in keeps the keys of the short models it keyed last: many
 * models, more than it keeps and sharing its slots, keyed by four
 * threads at once in different orders, every key the wire format's. */
/* spi__short_words, made in registers, is the two words of the 16 bytes
 * laid out in memory (the model zero-padded, its length in the last
 * byte), for every length a short key takes, and reads only the n bytes
 * (each source is a heap block of exactly n bytes: ASan and valgrind see
 * a read past it). */
static void test_short_words(void **state) {
  (void)state;
  uint64_t x = 0x9e3779b97f4a7c15u;
  for (size_t n = 0; n < 16; n++)
    for (int round = 0; round < 64; round++) {
      unsigned char b[16] = {0};
      for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        b[i] = round == 0 ? (unsigned char)0xff : (unsigned char)x;
      }
      unsigned char *src = malloc(n ? n : 1);
      assert_non_null(src);
      memcpy(src, b, n);
      b[15] = (unsigned char)n;
      uint64_t want0, want1, got0, got1;
      memcpy(&want0, b, 8);
      memcpy(&want1, b + 8, 8);
      spi__short_words(src, n, &got0, &got1);
      assert_true(got0 == want0);
      assert_true(got1 == want1);
      free(src);
    }
}

static void test_short_key_memo(void **st) {
  (void)st;
  static memo_run r;
  memset(&r, 0, sizeof r);
  r.k = kb_new("{\"schema_version\":3}");
  const char *name = "llama-3-8b-inst";
  for (unsigned j = 0; j < MEMO_MODELS; j++) {
    r.len[j] = j < 16 ? j : j - 8; /* 0..15, then 8..15 again */
    memcpy(r.model[j], name, r.len[j]);
    if (j >= 16) r.model[j][r.len[j] - 1] = 'X';
    r.want[j] = short_key_want(3, r.model[j], r.len[j]);
  }
  atomic_init(&r.wrong, 0);
  memo_thread t[4];
  pthread_t th[4];
  for (unsigned i = 0; i < 4; i++) {
    t[i].run = &r;
    t[i].id = i;
    assert_int_equal(pthread_create(&th[i], NULL, memo_keys, &t[i]), 0);
  }
  for (unsigned i = 0; i < 4; i++) pthread_join(th[i], NULL);
  assert_int_equal(atomic_load(&r.wrong), 0);
  kb_free(r.k);
}

/* The library's own key-and-blocks call (spi__kb_key_blocks, which takes
 * a short key and its byte chain's start from the instance's memo when
 * kept) against the module's build_key and block_hashes: models short and
 * long, with later fields and without, prompts of no block, one and
 * several, token ids; each asked twice (made, then kept). */
static void test_key_blocks_matches(void **st) {
  (void)st;
  kb *k = kb_new("{\"block_bytes\":64,\"block_tokens\":4}");
  const char *models[] = {"", "m", "llama", "llama-3-8b-inst", "llama-3-8b-instr",
                          "llama-3.1-70b-instruct"};
  uint8_t *prompt = pattern(1000, 7, 3);
  uint32_t ids[40];
  for (int i = 0; i < 40; i++) ids[i] = (uint32_t)(i * 2654435761u);
  for (size_t mi = 0; mi < sizeof models / sizeof models[0]; mi++) {
    for (int shape = 0; shape < 5; shape++) {
      spi_request_view v;
      memset(&v, 0, sizeof v);
      v.struct_size = sizeof v;
      v.model = models[mi];
      v.model_len = strlen(models[mi]);
      v.tenant_salt = shape == 1 ? "salt" : "";
      v.tenant_salt_len = shape == 1 ? 4 : 0;
      v.prompt = prompt;
      v.prompt_len = shape == 2 ? 63 : shape == 4 ? 100 : 1000; /* 0, 1, 15 blocks */
      v.token_ids = shape == 3 ? ids : NULL;
      v.token_count = shape == 3 ? 40 : 0;
      spi_cache_key want = key_of(k, &v);
      uint64_t want_h[32], got_h[32];
      size_t want_n = 0, got_n = 0;
      assert_int_equal(k->mod.block_hashes(&k->mem, k->inst, &v, &want, want_h,
                                           32, &want_n),
                       SPI_OK);
      for (int round = 0; round < 2; round++) {
        spi_cache_key got = {0, 0};
        memset(got_h, 0, sizeof got_h);
        assert_int_equal(spi__kb_key_blocks(k->inst, &v, &got, got_h, 32, &got_n),
                         SPI_OK);
        assert_true(same_key(got, want));
        assert_int_equal(got_n, want_n);
        assert_memory_equal(got_h, want_h, want_n * sizeof want_h[0]);
      }
    }
  }
  free(prompt);
  kb_free(k);
}

int main(void) {
  /* The 512-bit block hashes run wherever the CPU has AVX-512, so that
   * they are tested there (the library leaves them out on Intel CPUs;
   * other tests run the library's own pick). */
  spi__cpu_wide512_any_vendor();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_golden_vectors),
      cmocka_unit_test(test_golden_vectors_public_api),
      cmocka_unit_test(test_golden_bodies),
      cmocka_unit_test(test_wide_xxh3_matches),
      cmocka_unit_test(test_block_hash_long_path_matches),
      cmocka_unit_test(test_wide_xxh3_leaves_upper_state_clean),
      cmocka_unit_test(test_module_struct),
      cmocka_unit_test(test_defaults_from_table),
      cmocka_unit_test(test_null_arguments),
      cmocka_unit_test(test_cap_contract),
      cmocka_unit_test(test_max_blocks),
      cmocka_unit_test(test_chaining),
      cmocka_unit_test(test_token_mode),
      cmocka_unit_test(test_token_chain_short_blocks),
      cmocka_unit_test(test_every_field_matters),
      cmocka_unit_test(test_salt_isolation),
      cmocka_unit_test(test_tools_order_invariance),
      cmocka_unit_test(test_large_fields),
      cmocka_unit_test(test_config_errors),
      cmocka_unit_test(test_alloc_failures),
      cmocka_unit_test(test_no_allocation_on_hot_path),
      cmocka_unit_test(test_short_messages),
      cmocka_unit_test(test_short_words),
      cmocka_unit_test(test_short_key_memo),
      cmocka_unit_test(test_key_blocks_matches),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
