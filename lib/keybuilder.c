/*
 * keybuilder.c - the built-in key-builder module "xxh3-v1".
 *
 * Cache keys and block hashes are stored and compared across processes and
 * library versions, so they are a wire format. For this module the bytes
 * below never change; a different layout would be a new module name
 * ("xxh3-v2"). Bumping cache_key.schema_version changes every key (and so
 * every block hash) without changing the layout.
 *
 * Notation: u32le(x) is x as 4 bytes little-endian;
 * be128(h) is a 128-bit XXH3 result as 16 bytes, high64 big-endian then
 * low64 big-endian (XXH128_canonical_t order); || is concatenation;
 * XXH3_128(x, s) / XXH3_64(x, s) are XXH3 of the bytes x with seed s
 * (libxxhash 0.8's XXH3_128bits_withSeed / XXH3_64bits_withSeed).
 *
 * ---- cache key --------------------------------------------------------
 *
 *   D(x)      = be128(XXH3_128(x, 0))        digest of a field, any length
 *   rec(t, v) = t (1 byte) || u32le(len(v)) || v
 *   id(t, x)  = rec(t, x)           when len(x) <= 256
 *             = rec(t | 0x80, D(x)) when len(x) >  256
 *
 *   M = "spotinfer:key:v1"              16 ASCII bytes, no NUL
 *    || rec(0x01, u32le(schema_version))
 *    || id (0x02, model)
 *    || id (0x03, tokenizer_version)
 *    || rec(0x04, D(system_prompt))
 *    || rec(0x05, D(tools_canonical))   canonical JSON, see canonjson.c
 *    || rec(0x06, D(retrieval_template))
 *    || id (0x07, tenant_tier)
 *    || id (0x08, tenant_salt)
 *    || id (0x09, decode_profile)
 *
 *   key = XXH3_128(M, 0x7370692d6b657931)   (seed is ASCII "spi-key1")
 *
 * An unset field is the empty string. Every record carries its tag and
 * length, so no two different field tuples give the same M. Short
 * identifiers go in as they are; long text is digested first so M stays
 * under KB_KEY_MSG_MAX bytes and build_key needs no allocation.
 *
 * ---- prefix block hashes ----------------------------------------------
 *
 * Byte mode (the request has no token ids): the prompt is the canonical
 * prompt text and a block is block_bytes consecutive bytes of it. Token
 * mode (token_count > 0): a block is block_tokens consecutive token ids,
 * each serialised as u32le. Only full blocks count; a trailing partial
 * block is ignored. n = min(full blocks, max_blocks).
 *
 *   S   = "spotinfer:blk:v1"            16 ASCII bytes
 *      || be128(key)
 *      || mode (1 byte: 0x01 bytes, 0x02 tokens)
 *      || u32le(block size: block_bytes or block_tokens)
 *   c_0 = XXH3_64(S, 0x7370692d626c6b31)    (seed is ASCII "spi-blk1")
 *   c_i = XXH3_64(block_i, c_{i-1})         for i = 1..n
 *   hash of block i = c_i
 *
 * Each block is hashed once, seeded with the chain so far: c_i depends on
 * the key and on every byte of the prefix up to the end of block i, so two
 * keys (tenants, models, schema versions) never share a block hash, and
 * equal c_i means an equal prefix (to the strength of a 64-bit
 * non-cryptographic hash). A seeded XXH3 over more than 240 bytes derives
 * its secret on every call; with libxxhash 0.8 on x86-64 that measured
 * about 1 ns per 1 KiB block, far less than the ~10 ns per block of a
 * second call for an unseeded block hash plus a separate chaining step.
 * On x86-64 CPUs with AVX2 the blocks go through an AVX2 build of the same
 * function (xxh_wide.c), about twice as fast over long blocks, and on CPUs
 * with AVX-512 F through seeded_avx512 below, the same function again.
 * tests/bench/bench_key.c prints the resulting throughput.
 *
 * Neither build_key nor block_hashes allocates: M fits a stack buffer. On
 * a little-endian host token blocks are hashed where they lie (their u32le
 * bytes are the ids' own); on a big-endian one each is serialised into a
 * stack buffer of at most KB_MAX_BLOCK_TOKENS ids (the
 * cache_key.block_tokens bound).
 */
#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

#include "spi_internal.h"

/* XXH3 inlined here: the key's message and the chain's seed input are
 * short, and a call into the shared libxxhash (through its dispatch) cost
 * more than the hashing. The functions and their results are the same. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#define KB_KEY_MAGIC "spotinfer:key:v1"
#define KB_BLK_MAGIC "spotinfer:blk:v1"
#define KB_MAGIC_LEN 16
#define KB_KEY_SEED UINT64_C(0x7370692d6b657931)
#define KB_BLK_SEED UINT64_C(0x7370692d626c6b31)

#define KB_INLINE_MAX 256
#define KB_REC_HDR 5 /* tag + u32le length */
/* magic + schema record + 5 identifiers inline at most + 3 digests */
#define KB_KEY_MSG_MAX \
  (KB_MAGIC_LEN + (KB_REC_HDR + 4) + 5 * (KB_REC_HDR + KB_INLINE_MAX) + \
   3 * (KB_REC_HDR + 16))

#define KB_MODE_BYTES 0x01
#define KB_MODE_TOKENS 0x02
/* Must match the max of cache_key.block_tokens in options.c. */
#define KB_MAX_BLOCK_TOKENS 4096

/* The largest configuration text accepted for the cache_key section. */
#define KB_MAX_CONFIG_BYTES 65536

#define KB_INSTANCE_MAGIC 0x6b623176u /* "kb1v" */

/* What XXH3_128 of a short key message (key_short) takes from the parts
 * of M that never change: its first 16 bytes (the magic) and its last 64
 * (the empty tail's), each 16-byte chunk's XXH3_mix16B with its secret and
 * the sum of its two words. Made once, at configure (kb_tail_init). */
typedef struct kb_tail {
  uint8_t head[32]; /* M[0..32) but the model's length and bytes */
  uint64_t mix_head, sum_head;  /* M[0..16), with the secret at 0 */
  uint64_t mix[4], sum[4];      /* M[len-16(4-i)..), with the secret at 32i+16 */
} kb_tail;

/* A short key (key_of_short) and its byte chain's start (chain_start at
 * block_bytes) by its model: both are functions of the model's bytes
 * alone once the instance is made, and a gateway's requests name few
 * models, so those of the last few are kept. A slot is a
 * sequence lock: seq is 0 while empty and odd while a writer fills it; a
 * reader takes the slot's words only if seq was even and non-zero and the
 * same before and after. A writer that finds the slot busy leaves it. */
#define KB_MEMO_SLOTS 8
typedef struct kb_memo {
  atomic_uint seq;
  atomic_ullong m0, m1; /* the model's bytes, 0-padded; m1's top byte its length */
  atomic_ullong high64, low64; /* its key */
  atomic_ullong c0;            /* the key's byte chain's start (chain_start) */
  char pad[64 - 6 * 8];        /* a slot a cache line's worth */
} kb_memo;

typedef struct kb_instance {
  uint32_t magic;
  uint32_t schema_version;
  uint32_t block_bytes;
  uint32_t block_tokens;
  uint32_t max_blocks;
  kb_tail tail;
  /* Written by the routes that key a model first: the one part of the
   * instance that changes after kb_configure (kb_memo_of). */
  kb_memo memo[KB_MEMO_SLOTS];
} kb_instance;

/* ------------------------------------------------------------ encoding */

/* Whether the host stores integers little-endian, as the key's u32le
 * fields are: then they can be read or hashed where they lie. */
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define KB_LITTLE_ENDIAN 1
#else
#define KB_LITTLE_ENDIAN 0
#endif

static void put_u32le(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
  p[2] = (uint8_t)(v >> 16);
  p[3] = (uint8_t)(v >> 24);
}

static void put_u64be(uint8_t *p, uint64_t v) {
#if KB_LITTLE_ENDIAN
  v = __builtin_bswap64(v);
  memcpy(p, &v, sizeof v);
#else
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (56 - 8 * i));
#endif
}

static void put_be128(uint8_t *p, uint64_t high64, uint64_t low64) {
  put_u64be(p, high64);
  put_u64be(p + 8, low64);
}

/* A bounded writer over the stack buffer that holds M. */
typedef struct kb_msg {
  uint8_t buf[KB_KEY_MSG_MAX];
  size_t len;
} kb_msg;

static void msg_rec(kb_msg *m, uint8_t tag, const void *v, size_t n) {
  /* Callers only pass n <= KB_INLINE_MAX; KB_KEY_MSG_MAX covers them all. */
  m->buf[m->len] = tag;
  put_u32le(m->buf + m->len + 1, (uint32_t)n);
  if (n <= 16)
    spi__copy_small(m->buf + m->len + KB_REC_HDR, v, n);
  else
    memcpy(m->buf + m->len + KB_REC_HDR, v, n);
  m->len += KB_REC_HDR + n;
}

/* D(""): most requests leave most digested fields unset. */
#define KB_EMPTY_DIGEST                                                    \
  0x99, 0xaa, 0x06, 0xd3, 0x01, 0x47, 0x98, 0xd8, 0x60, 0x01, 0xc3, 0x24, \
      0x46, 0x8d, 0x49, 0x7f
static const uint8_t kb_empty_digest[16] = {KB_EMPTY_DIGEST};

/* M's records after the model's when every field after it is empty, as
 * most requests leave them: rec(0x03, ""), rec(0x04..0x06, D("")) and
 * rec(0x07..0x09, ""), copied in one piece (key_of). */
static const uint8_t kb_empty_tail[5 + 3 * (KB_REC_HDR + 16) + 3 * 5] = {
    0x03, 0, 0, 0, 0,
    0x04, 16, 0, 0, 0, KB_EMPTY_DIGEST,
    0x05, 16, 0, 0, 0, KB_EMPTY_DIGEST,
    0x06, 16, 0, 0, 0, KB_EMPTY_DIGEST,
    0x07, 0, 0, 0, 0,
    0x08, 0, 0, 0, 0,
    0x09, 0, 0, 0, 0};

/* M's bytes past the model's record when every later field is empty:
 * 16 + (5 + 4) + 5 + model_len + sizeof kb_empty_tail. With a model of at
 * most KB_SHORT_MODEL bytes M is at most 128 bytes, and XXH3_128 reads it
 * as four pairs of 16-byte chunks (XXH3_len_17to128_128b): M[16i..16i+16)
 * with M[len-16(i+1)..len-16i) for i = 3, 2, 1, 0. The second chunk of
 * each pair lies in the empty tail (len - 64 is past the model's record),
 * and so does nothing of it depend on the model; nor does the first
 * chunk of the last pair, the magic. */
#define KB_SHORT_MODEL 15
#define KB_SHORT_FIXED (KB_MAGIC_LEN + KB_REC_HDR + 4 + KB_REC_HDR)
_Static_assert(KB_SHORT_FIXED + sizeof kb_empty_tail > 96 &&
                   KB_SHORT_FIXED + KB_SHORT_MODEL + sizeof kb_empty_tail <= 128,
               "a short key message is read as four pairs of chunks");
_Static_assert(sizeof kb_empty_tail >= 64, "the pairs' second chunks are the tail's");
/* The empty tail's bytes a short message is made with: enough to reach
 * M[64) after a model of no bytes, in whole 16-byte copies. */
#define KB_SHORT_TAIL 48
_Static_assert(KB_SHORT_FIXED + KB_SHORT_TAIL >= 64 &&
                   KB_SHORT_TAIL <= sizeof kb_empty_tail,
               "a short message's first 64 bytes are made");

/* The constant parts of a short message (kb_tail): its head, the magic
 * and the schema's record then the model's tag, with the model's length
 * and bytes left 0; and what key_short's hash takes from M's constant
 * chunks. */
static void kb_tail_init(kb_tail *t, uint32_t schema_version) {
  memset(t->head, 0, sizeof t->head);
  memcpy(t->head, KB_KEY_MAGIC, KB_MAGIC_LEN);
  t->head[KB_MAGIC_LEN] = 0x01;
  put_u32le(t->head + KB_MAGIC_LEN + 1, 4);
  put_u32le(t->head + KB_MAGIC_LEN + KB_REC_HDR, schema_version);
  t->head[KB_MAGIC_LEN + KB_REC_HDR + 4] = 0x02;
  const uint8_t *end = kb_empty_tail + sizeof kb_empty_tail;
  const uint8_t *head = (const uint8_t *)KB_KEY_MAGIC;
  t->mix_head = XXH3_mix16B(head, XXH3_kSecret, KB_KEY_SEED);
  t->sum_head = XXH_readLE64(head) + XXH_readLE64(head + 8);
  for (int i = 0; i < 4; i++) {
    const uint8_t *c = end - 16 * (i + 1);
    t->mix[i] = XXH3_mix16B(c, XXH3_kSecret + 32 * i + 16, KB_KEY_SEED);
    t->sum[i] = XXH_readLE64(c) + XXH_readLE64(c + 8);
  }
}

/* The digest of a field that is set: out of line, so the common empty
 * field (msg_digest) is a few stores where the message is built. */
static __attribute__((noinline)) void msg_digest_of(kb_msg *m, uint8_t tag,
                                                    const char *s, size_t n) {
  uint8_t d[16];
  XXH128_hash_t h = XXH3_128bits(s, n);
  put_be128(d, h.high64, h.low64);
  msg_rec(m, tag, d, sizeof d);
}

static inline void msg_digest(kb_msg *m, uint8_t tag, const char *s, size_t n) {
  if (n == 0)
    msg_rec(m, tag, kb_empty_digest, sizeof kb_empty_digest);
  else
    msg_digest_of(m, tag, s, n);
}

/* Inlined: six fields a key, most of them empty (a record header). */
static inline __attribute__((always_inline)) void
msg_id(kb_msg *m, uint8_t tag, const char *s, size_t n) {
  if (n <= KB_INLINE_MAX)
    msg_rec(m, tag, s, n);
  else
    msg_digest(m, (uint8_t)(tag | 0x80), s, n);
}

/* A text field of the view: NULL is only valid with length 0. */
static int field_ok(const char *p, size_t n) { return p != NULL || n == 0; }

static int view_ok(const spi_request_view *r) {
  if (!r) return 0;
  if (r->struct_size <
      offsetof(spi_request_view, token_count) + sizeof r->token_count)
    return 0;
  return field_ok(r->model, r->model_len) &&
         field_ok(r->tokenizer_version, r->tokenizer_version_len) &&
         field_ok(r->system_prompt, r->system_prompt_len) &&
         field_ok(r->tools_canonical, r->tools_canonical_len) &&
         field_ok(r->retrieval_template, r->retrieval_template_len) &&
         field_ok(r->tenant_tier, r->tenant_tier_len) &&
         field_ok(r->tenant_salt, r->tenant_salt_len) &&
         field_ok(r->decode_profile, r->decode_profile_len) &&
         (r->prompt != NULL || r->prompt_len == 0) &&
         (r->token_ids != NULL || r->token_count == 0);
}

static const kb_instance *instance_of(const void *instance) {
  const kb_instance *in = instance;
  return in && in->magic == KB_INSTANCE_MAGIC ? in : NULL;
}

/* ----------------------------------------------------------- callbacks */

/* XXH3_128(M, KB_KEY_SEED) of the message m of len bytes (97 to 128)
 * whose last 64 bytes are the empty tail's: XXH3_len_17to128_128b's steps
 * in its order, with the chunks that never change taken from in->tail. */
static inline __attribute__((always_inline)) void
key_short(const kb_instance *in, const uint8_t *m, size_t len,
          spi_cache_key *out) {
  const kb_tail *t = &in->tail;
  const uint64_t seed = KB_KEY_SEED;
  uint64_t lo = len * XXH_PRIME64_1, hi = 0;
  for (int i = 3; i >= 1; i--) { /* XXH128_mix32B(M + 16i, tail chunk i) */
    const uint8_t *c = m + 16 * i;
    lo += XXH3_mix16B(c, XXH3_kSecret + 32 * i, seed);
    lo ^= t->sum[i];
    hi += t->mix[i];
    hi ^= XXH_readLE64(c) + XXH_readLE64(c + 8);
  }
  lo += t->mix_head;
  lo ^= t->sum[0];
  hi += t->mix[0];
  hi ^= t->sum_head;
  uint64_t h_lo = lo + hi;
  uint64_t h_hi = lo * XXH_PRIME64_1 + hi * XXH_PRIME64_4 +
                  (len - seed) * XXH_PRIME64_2;
  out->low64 = XXH3_avalanche(h_lo);
  out->high64 = (uint64_t)0 - XXH3_avalanche(h_hi);
}

/* The memo slot of the model whose 16 bytes (memo's m0, m1) are m0, m1. */
static kb_memo *kb_memo_of(const kb_instance *in, uint64_t m0, uint64_t m1) {
  uint64_t h = (m0 ^ m1) * UINT64_C(0x9e3779b97f4a7c15);
  _Static_assert(KB_MEMO_SLOTS == 8, "three bits of the hash pick the slot");
  return (kb_memo *)&in->memo[h >> 61];
}

/* The key kept for m0, m1 in slot e into out, its byte chain's start
 * into *c0: 1, or 0 if not kept. */
static inline int kb_memo_get(kb_memo *e, uint64_t m0, uint64_t m1,
                              spi_cache_key *out, uint64_t *c0) {
  unsigned s = atomic_load_explicit(&e->seq, memory_order_acquire);
  uint64_t a = atomic_load_explicit(&e->m0, memory_order_relaxed);
  uint64_t b = atomic_load_explicit(&e->m1, memory_order_relaxed);
  uint64_t hi = atomic_load_explicit(&e->high64, memory_order_relaxed);
  uint64_t lo = atomic_load_explicit(&e->low64, memory_order_relaxed);
  uint64_t c = atomic_load_explicit(&e->c0, memory_order_relaxed);
  atomic_thread_fence(memory_order_acquire);
  if (s == 0 || (s & 1) ||
      atomic_load_explicit(&e->seq, memory_order_relaxed) != s || a != m0 ||
      b != m1)
    return 0;
  out->high64 = hi;
  out->low64 = lo;
  *c0 = c;
  return 1;
}

/* Keep key for m0, m1 in slot e, unless another writer holds it. */
static __attribute__((noinline)) void kb_memo_put(kb_memo *e, uint64_t m0,
                                                  uint64_t m1,
                                                  const spi_cache_key *key,
                                                  uint64_t c0) {
  unsigned s = atomic_load_explicit(&e->seq, memory_order_relaxed);
  if ((s & 1) || !atomic_compare_exchange_strong_explicit(
                     &e->seq, &s, s + 1, memory_order_relaxed,
                     memory_order_relaxed))
    return;
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&e->m0, m0, memory_order_relaxed);
  atomic_store_explicit(&e->m1, m1, memory_order_relaxed);
  atomic_store_explicit(&e->high64, key->high64, memory_order_relaxed);
  atomic_store_explicit(&e->low64, key->low64, memory_order_relaxed);
  atomic_store_explicit(&e->c0, c0, memory_order_relaxed);
  /* 0 means empty: a count that wraps there skips it. */
  atomic_store_explicit(&e->seq, s + 2 ? s + 2 : 2, memory_order_release);
}

static uint64_t chain_start(const spi_cache_key *key, uint8_t mode,
                            uint32_t block_size);

/* key_of_short's key and its byte chain's start made, and kept in slot e
 * for the model's m0, m1. M is the instance's head with the model's
 * length (one byte of it) and bytes, then the empty tail. Out of line: a
 * model's first key, or one whose slot another took. */
static __attribute__((noinline)) uint64_t
key_of_short_made(const kb_instance *in, const spi_request_view *req,
                  spi_cache_key *out, kb_memo *e, uint64_t m0, uint64_t m1) {
  /* key_short reads M[16..64) of it (the rest is in in->tail), which
   * ends within the tail's first KB_SHORT_TAIL bytes. */
  uint8_t m[KB_SHORT_FIXED + KB_SHORT_MODEL + KB_SHORT_TAIL];
  size_t n = req->model_len;
  const uint8_t *model = (const uint8_t *)req->model;
  memcpy(m, in->tail.head, sizeof in->tail.head);
  m[KB_SHORT_FIXED - 4] = (uint8_t)n; /* u32le(n), n < 256 */
  spi__copy_small(m + KB_SHORT_FIXED, model, n);
  memcpy(m + KB_SHORT_FIXED + n, kb_empty_tail, KB_SHORT_TAIL);
  key_short(in, m, KB_SHORT_FIXED + n + sizeof kb_empty_tail, out);
  uint64_t c0 = chain_start(out, KB_MODE_BYTES, in->block_bytes);
  kb_memo_put(e, m0, m1, out, c0);
  return c0;
}

/* The key of a view whose model has at most KB_SHORT_MODEL bytes and
 * whose later fields are all empty, and its byte chain's start (the
 * instance's block_bytes). */
static inline __attribute__((always_inline)) uint64_t
key_of_short(const kb_instance *in, const spi_request_view *req,
             spi_cache_key *out) {
  _Static_assert(KB_SHORT_MODEL < 16, "a model and its length fit 16 bytes");
  uint64_t m0, m1;
  spi__short_words(req->model, req->model_len, &m0, &m1);
  kb_memo *e = kb_memo_of(in, m0, m1);
  uint64_t c0;
  if (kb_memo_get(e, m0, m1, out, &c0)) return c0;
  return key_of_short_made(in, req, out, e, m0, m1);
}

/* M and the key of a view that key_of did not find short. Out of line:
 * its message buffer (1.4 KB) and registers are no cost to a short key. */
static __attribute__((noinline)) void key_of_long(const kb_instance *in,
                                                  const spi_request_view *req,
                                                  spi_cache_key *out,
                                                  int tail_empty) {
  kb_msg m;
  memcpy(m.buf, KB_KEY_MAGIC, KB_MAGIC_LEN);
  m.len = KB_MAGIC_LEN;
  uint8_t ver[4];
  put_u32le(ver, in->schema_version);
  msg_rec(&m, 0x01, ver, sizeof ver);
  msg_id(&m, 0x02, req->model, req->model_len);
  if (tail_empty) {
    memcpy(m.buf + m.len, kb_empty_tail, sizeof kb_empty_tail);
    m.len += sizeof kb_empty_tail;
  } else {
    msg_id(&m, 0x03, req->tokenizer_version, req->tokenizer_version_len);
    msg_digest(&m, 0x04, req->system_prompt, req->system_prompt_len);
    msg_digest(&m, 0x05, req->tools_canonical, req->tools_canonical_len);
    msg_digest(&m, 0x06, req->retrieval_template,
               req->retrieval_template_len);
    msg_id(&m, 0x07, req->tenant_tier, req->tenant_tier_len);
    msg_id(&m, 0x08, req->tenant_salt, req->tenant_salt_len);
    msg_id(&m, 0x09, req->decode_profile, req->decode_profile_len);
  }

  XXH128_hash_t h = XXH3_128bits_withSeed(m.buf, m.len, KB_KEY_SEED);
  out->high64 = h.high64;
  out->low64 = h.low64;
}

/* The key of a view that passed view_ok (kb_build_key), or that
 * spi__request_view made (spi__kb_key_view), and for a short key its byte
 * chain's start into *c0: 1, or 0 when that is to be made (chain_start).
 * Inline: a short key is made in its caller's frame. */
static inline __attribute__((always_inline)) int
key_and_start(const kb_instance *in, const spi_request_view *req,
              spi_cache_key *out, uint64_t *c0) {
  int tail_empty = (req->tokenizer_version_len | req->system_prompt_len |
                    req->tools_canonical_len | req->retrieval_template_len |
                    req->tenant_tier_len | req->tenant_salt_len |
                    req->decode_profile_len) == 0;
  if (tail_empty && req->model_len <= KB_SHORT_MODEL) {
    *c0 = key_of_short(in, req, out);
    return 1;
  }
  key_of_long(in, req, out, tail_empty);
  return 0;
}

/* key_and_start without the start. */
static inline __attribute__((always_inline)) void
key_of(const kb_instance *in, const spi_request_view *req, spi_cache_key *out) {
  uint64_t c0;
  (void)key_and_start(in, req, out, &c0);
}

static int kb_build_key(void *state, void *instance,
                        const spi_request_view *req, spi_cache_key *out) {
  (void)state;
  const kb_instance *in = instance_of(instance);
  if (!in || !out || !view_ok(req)) return SPI_EINVAL;
  key_of(in, req, out);
  return SPI_OK;
}

/* ------------------------------------------------------------ hashing */

typedef uint64_t (*seeded_fn)(const void *p, size_t n, uint64_t seed);

static uint64_t seeded_baseline(const void *p, size_t n, uint64_t seed) {
  return XXH3_64bits_withSeed(p, n, seed);
}

/*
 * XXH3_64bits_withSeed over more than 240 bytes, eight lanes at a time
 * (AVX-512 F), with the seeded secret's words made in registers. xxHash
 * derives a 192-byte secret from the seed on every call (each 8-byte word
 * of its default secret plus the seed at even words, minus it at odd
 * ones), stores it, and reads it back 64 bytes at a time at offsets that
 * straddle its stores. Here the key of stripe s (the secret's words
 * s..s+7) is the default secret's words plus (+seed, -seed, ...) or
 * (-seed, +seed, ...) by the parity of s, and the two keys that start
 * inside a word (the last stripe's at byte 121, the merge's at byte 11)
 * are joined from two such vectors by shifts; nothing goes through memory.
 * On the 2-vCPU AMD EPYC (AVX-512) this was measured on, eight chained
 * 1 KiB blocks took about 0.7 times as long as through xxh_wide.c's AVX2
 * build, where xxHash's own AVX-512 build took 0.9 times. The
 * accumulation, scramble and merge are xxHash's, so the bits are the same
 * (test_keybuilder.c compares them at every length to 2,200 bytes and
 * around later block edges, at every alignment, with random seeds).
 */
#if SPI_HAVE_RDV_AVX512 && defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KB_WIDE512 1

#define KB_W512 __attribute__((target("avx512f")))

/* The default secret's words at byte offset off (a multiple of 8) plus the
 * seed pattern: + at even words, - at odd ones. */
static KB_W512 inline __m512i kb_key(size_t off, __m512i even, __m512i odd) {
  __m512i k = _mm512_loadu_si512((const void *)(XXH3_kSecret + off));
  return _mm512_add_epi64(k, (off / 8) % 2 ? odd : even);
}

/* The seeded secret's 64 bytes at byte offset off (not a multiple of 8). */
static KB_W512 inline __m512i kb_key_at(size_t off, __m512i even,
                                        __m512i odd) {
  size_t w = off / 8 * 8;
  unsigned r = (unsigned)(off % 8) * 8;
  __m512i lo = kb_key(w, even, odd), hi = kb_key(w + 8, even, odd);
  return _mm512_or_si512(_mm512_srli_epi64(lo, r), _mm512_slli_epi64(hi, 64 - r));
}

/* XXH3_accumulate_512: one 64-byte stripe into the accumulators. */
static KB_W512 inline __m512i kb_stripe(__m512i acc, const uint8_t *p,
                                        __m512i key) {
  __m512i d = _mm512_loadu_si512((const void *)p);
  __m512i dk = _mm512_xor_si512(d, key);
  __m512i hi = _mm512_shuffle_epi32(dk, (_MM_PERM_ENUM)_MM_SHUFFLE(0, 3, 0, 1));
  __m512i prod = _mm512_mul_epu32(dk, hi);
  __m512i swap = _mm512_shuffle_epi32(d, (_MM_PERM_ENUM)_MM_SHUFFLE(1, 0, 3, 2));
  return _mm512_add_epi64(prod, _mm512_add_epi64(acc, swap));
}

/* XXH3_scrambleAcc, after every 1 KiB (16 stripes) of a longer input. */
static KB_W512 inline __m512i kb_scramble(__m512i acc, __m512i key) {
  const __m512i prime = _mm512_set1_epi32((int)XXH_PRIME32_1);
  __m512i dk = _mm512_xor_si512(_mm512_xor_si512(acc, _mm512_srli_epi64(acc, 47)), key);
  __m512i hi = _mm512_shuffle_epi32(dk, (_MM_PERM_ENUM)_MM_SHUFFLE(0, 3, 0, 1));
  return _mm512_add_epi64(_mm512_mul_epu32(dk, prime),
                          _mm512_slli_epi64(_mm512_mul_epu32(hi, prime), 32));
}

static KB_W512 uint64_t seeded_avx512(const void *input, size_t n,
                                      uint64_t seed) {
  if (n <= XXH3_MIDSIZE_MAX) return seeded_baseline(input, n, seed);
  const uint8_t *p = input;
  const __m512i even = _mm512_mask_set1_epi64(
      _mm512_set1_epi64((long long)seed), 0xAA, (long long)(0 - seed));
  const __m512i odd = _mm512_mask_set1_epi64(
      _mm512_set1_epi64((long long)(0 - seed)), 0xAA, (long long)seed);
  const size_t per_block = (XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN) /
                           XXH_SECRET_CONSUME_RATE; /* 16 stripes, 1 KiB */
  const size_t block = per_block * XXH_STRIPE_LEN;
  __m512i acc = _mm512_set_epi64(
      (long long)XXH_PRIME32_1, (long long)XXH_PRIME64_5,
      (long long)XXH_PRIME32_2, (long long)XXH_PRIME64_4,
      (long long)XXH_PRIME64_3, (long long)XXH_PRIME64_2,
      (long long)XXH_PRIME64_1, (long long)XXH_PRIME32_3); /* XXH3_INIT_ACC */
  size_t blocks = (n - 1) / block;
  for (size_t b = 0; b < blocks; b++, p += block) {
    for (size_t s = 0; s < per_block; s++)
      acc = kb_stripe(acc, p + s * XXH_STRIPE_LEN,
                      kb_key(s * XXH_SECRET_CONSUME_RATE, even, odd));
    acc = kb_scramble(acc, kb_key(XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN,
                                  even, odd));
  }
  size_t stripes = ((n - 1) - block * blocks) / XXH_STRIPE_LEN, s = 0;
  /* Two at a time, so that each key's pattern is known without a test. */
  for (; s + 2 <= stripes; s += 2) {
    const uint8_t *k = XXH3_kSecret + s * XXH_SECRET_CONSUME_RATE;
    acc = kb_stripe(acc, p + s * XXH_STRIPE_LEN,
                    _mm512_add_epi64(_mm512_loadu_si512((const void *)k), even));
    acc = kb_stripe(acc, p + (s + 1) * XXH_STRIPE_LEN,
                    _mm512_add_epi64(_mm512_loadu_si512((const void *)(k + 8)), odd));
  }
  if (s < stripes)
    acc = kb_stripe(acc, p + s * XXH_STRIPE_LEN,
                    kb_key(s * XXH_SECRET_CONSUME_RATE, even, odd));
  acc = kb_stripe(acc, (const uint8_t *)input + n - XXH_STRIPE_LEN,
                  kb_key_at(XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN - 7, even,
                            odd)); /* XXH_SECRET_LASTACC_START */
  /* XXH3_mergeAccs with the secret from byte 11 (XXH_SECRET_MERGEACCS_START) */
  uint64_t a[8] __attribute__((aligned(64)));
  _mm512_store_si512((void *)a, _mm512_xor_si512(acc, kb_key_at(11, even, odd)));
  _mm256_zeroupper();
  uint64_t h = (uint64_t)n * XXH_PRIME64_1;
  for (int i = 0; i < 4; i++) h += XXH3_mul128_fold64(a[2 * i], a[2 * i + 1]);
  return XXH3_avalanche(h);
}
#else
#define KB_WIDE512 0
#endif

static seeded_fn seeded_pick(void) {
#if SPI_HAVE_XXH_AVX2 || KB_WIDE512
  __builtin_cpu_init();
#endif
#if KB_WIDE512
  if (spi__cpu_wide512()) return seeded_avx512;
#endif
#if SPI_HAVE_XXH_AVX2
  if (__builtin_cpu_supports("avx2")) return spi__xxh3_seeded_avx2;
#endif
  return seeded_baseline;
}

/* Picked on first use; racing first users store the same pointer. */
static _Atomic(seeded_fn) seeded_impl;

uint64_t spi__xxh3_seeded(const void *p, size_t n, uint64_t seed) {
  seeded_fn f = atomic_load_explicit(&seeded_impl, memory_order_relaxed);
  if (!f) {
    f = seeded_pick();
    atomic_store_explicit(&seeded_impl, f, memory_order_relaxed);
  }
  return f(p, n, seed);
}

static uint64_t chain_start(const spi_cache_key *key, uint8_t mode,
                            uint32_t block_size) {
  uint8_t s[KB_MAGIC_LEN + 16 + 1 + 4];
  memcpy(s, KB_BLK_MAGIC, KB_MAGIC_LEN);
  put_be128(s + KB_MAGIC_LEN, key->high64, key->low64);
  s[KB_MAGIC_LEN + 16] = mode;
  put_u32le(s + KB_MAGIC_LEN + 17, block_size);
  return XXH3_64bits_withSeed(s, sizeof s, KB_BLK_SEED);
}

/* The byte chain of n blocks from its start c. */
static void byte_chain_from(uint64_t c, const uint8_t *p, size_t block,
                            size_t n, uint64_t *out) {
  for (size_t i = 0; i < n; i++, p += block) {
    c = spi__xxh3_seeded(p, block, c);
    out[i] = c;
  }
}

static void byte_chain(const spi_cache_key *key, const uint8_t *p,
                       size_t block, size_t n, uint64_t *out) {
  byte_chain_from(chain_start(key, KB_MODE_BYTES, (uint32_t)block), p, block,
                  n, out);
}

#if !KB_LITTLE_ENDIAN
/* ids[0..n) as u32le, on a big-endian host (a little-endian one hashes the
 * ids where they lie). Pairs go out as one 8-byte value, so the hash's
 * 8-byte loads that follow can be forwarded from one store. */
static void serialise_ids(uint8_t *p, const uint32_t *ids, size_t n) {
  size_t j = 0;
  for (; j + 2 <= n; j += 2, p += 8) {
    uint64_t pair = (uint64_t)ids[j] | (uint64_t)ids[j + 1] << 32;
    p[0] = (uint8_t)pair;
    p[1] = (uint8_t)(pair >> 8);
    p[2] = (uint8_t)(pair >> 16);
    p[3] = (uint8_t)(pair >> 24);
    p[4] = (uint8_t)(pair >> 32);
    p[5] = (uint8_t)(pair >> 40);
    p[6] = (uint8_t)(pair >> 48);
    p[7] = (uint8_t)(pair >> 56);
  }
  if (j < n) put_u32le(p, ids[j]);
}
#endif

#if KB_LITTLE_ENDIAN
/* A block of at most 240 bytes takes XXH3's short paths, which the AVX2
 * and AVX-512 builds hand to xxHash's own code unchanged: inlined here, a
 * chain of them goes without a call through the picked function and its
 * length tests per block, and the 4-id (16-byte) block, one 64-bit
 * multiply with every length test known, is compiled apart. The same
 * function of the same bytes, so the same bits. */
static void short_chain(uint64_t c, const uint32_t *ids, size_t block,
                        size_t n, uint64_t *out) {
  if (block == 4) {
#pragma GCC unroll 4
    for (size_t i = 0; i < n; i++, ids += 4) {
      c = XXH3_64bits_withSeed(ids, 16, c);
      out[i] = c;
    }
    return;
  }
  for (size_t i = 0; i < n; i++, ids += block) {
    c = XXH3_64bits_withSeed(ids, block * 4, c);
    out[i] = c;
  }
}
#endif

/* Kept out of line so the byte path stays small. On a little-endian host
 * the ids as they lie in memory are already their u32le serialisation,
 * so each block is hashed where it lies: the same bytes, so the same bits,
 * without the copy (two fifths of the chain's instructions at 16 ids a
 * block); elsewhere each block is serialised into a buffer first. */
__attribute__((noinline)) static void token_chain(const spi_cache_key *key,
                                                  const uint32_t *ids,
                                                  size_t block, size_t n,
                                                  uint64_t *out) {
  uint64_t c = chain_start(key, KB_MODE_TOKENS, (uint32_t)block);
#if KB_LITTLE_ENDIAN
  if (block * 4 <= XXH3_MIDSIZE_MAX) {
    short_chain(c, ids, block, n, out);
    return;
  }
  for (size_t i = 0; i < n; i++, ids += block) {
    c = spi__xxh3_seeded(ids, block * 4, c);
    out[i] = c;
  }
#else
  uint8_t ser[KB_MAX_BLOCK_TOKENS * 4];
  for (size_t i = 0; i < n; i++, ids += block) {
    serialise_ids(ser, ids, block);
    c = spi__xxh3_seeded(ser, block * 4, c);
    out[i] = c;
  }
#endif
}

/* A view's block size and full blocks (at most max_blocks); 0 for a block
 * size the instance cannot hash (kb_block_hashes refuses it). */
static size_t blocks_of(const kb_instance *in, const spi_request_view *req,
                        size_t *block) {
  int tokens = req->token_count > 0;
  *block = tokens ? in->block_tokens : in->block_bytes;
  size_t total = tokens ? req->token_count : req->prompt_len;
  if (*block == 0 || (tokens && *block > KB_MAX_BLOCK_TOKENS)) return 0;
  size_t n = total / *block;
  return n > in->max_blocks ? in->max_blocks : n;
}

/* The first todo block hashes of a view (todo <= its full blocks). */
static void hash_blocks(const spi_request_view *req, const spi_cache_key *key,
                        size_t block, size_t todo, uint64_t *out) {
  if (todo == 0) return;
  if (req->token_count > 0)
    token_chain(key, req->token_ids, block, todo, out);
  else
    byte_chain(key, req->prompt, block, todo, out);
}

/* byte_chain_from of a view's n blocks, SPI_OK: as hashed. */
static __attribute__((noinline)) int hashed_from(uint64_t c0,
                                                 const uint8_t *p,
                                                 size_t block, size_t n,
                                                 uint64_t *out) {
  if (n == 1) { /* one block: no loop to keep registers for */
    out[0] = spi__xxh3_seeded(p, block, c0);
    return SPI_OK;
  }
  byte_chain_from(c0, p, block, n, out);
  return SPI_OK;
}

/* hash_blocks of a view's n blocks, SPI_OK: spi__kb_key_blocks ends in a
 * jump here, with no frame kept for after it. */
static __attribute__((noinline)) int hashed(const spi_request_view *req,
                                            const spi_cache_key *key,
                                            size_t block, size_t n,
                                            uint64_t *out) {
  hash_blocks(req, key, block, n, out);
  return SPI_OK;
}

static int kb_block_hashes(void *state, void *instance,
                           const spi_request_view *req,
                           const spi_cache_key *key, uint64_t *out,
                           size_t cap, size_t *n_out) {
  (void)state;
  const kb_instance *in = instance_of(instance);
  if (!in || !key || !n_out || !view_ok(req) || (!out && cap > 0))
    return SPI_EINVAL;

  size_t block;
  size_t n = blocks_of(in, req, &block);
  if (block == 0 || (req->token_count > 0 && block > KB_MAX_BLOCK_TOKENS))
    return SPI_EINVAL;
  *n_out = n;
  hash_blocks(req, key, block, n < cap ? n : cap, out);
  return n > cap ? SPI_EBUFSIZE : SPI_OK;
}

/* ------------------------------------------------ the library's own calls */

/* A view spi__request_view made passes view_ok by construction (an unset
 * text is "", the prompt is never NULL, token ids come with their count),
 * and an instance kb_configure made has a block size it can hash: the
 * library's calls to the built-in (dispatch.c) skip those checks and the
 * call through the module table. The bytes hashed are the same. */
void spi__kb_key_view(const void *instance, const spi_request_view *v,
                      spi_cache_key *out) {
  key_of(instance, v, out);
}

int spi__kb_key_blocks(const void *instance, const spi_request_view *v,
                       spi_cache_key *key, uint64_t *out, size_t cap,
                       size_t *n_out) {
  size_t block;
  uint64_t c0;
  int started = key_and_start(instance, v, key, &c0);
  size_t n = blocks_of(instance, v, &block);
  *n_out = n;
  if (n > cap) return SPI_EBUFSIZE;
  /* A short key's start is its byte chain's (block is block_bytes then). */
  if (started && v->token_count == 0 && n)
    return hashed_from(c0, v->prompt, block, n, out);
  return hashed(v, key, block, n, out);
}

size_t spi__kb_blocks_view(const void *instance, const spi_request_view *v,
                           const spi_cache_key *key, uint64_t *out,
                           size_t cap) {
  size_t block;
  size_t n = blocks_of(instance, v, &block);
  hash_blocks(v, key, block, n < cap ? n : cap, out);
  return n;
}

/* Read one integer option into a uint32_t (the table bounds fit). */
static int read_u32(const cJSON *obj, const char *path, uint32_t *out,
                    char *err, size_t errcap) {
  int64_t v = 0;
  int rc = spi__cfg_int(obj, path, "cache_key", &v, err, errcap);
  if (rc != SPI_OK) return rc;
  if (v < 0 || v > (int64_t)UINT32_MAX) {
    spi__errf(err, errcap, "%s: out of range", path);
    return SPI_ERANGE;
  }
  *out = (uint32_t)v;
  return SPI_OK;
}

static int kb_configure(void *state, const char *json, size_t len,
                        void **out_instance, char *err, size_t errcap) {
  const spi_mem *mem = state;
  if (!out_instance) return SPI_EINVAL;
  *out_instance = NULL;
  if (!mem || (!json && len > 0)) return SPI_EINVAL;
  if (!json) {
    json = "{}";
    len = 2;
  }

  cJSON *obj = NULL;
  int rc = spi__json_parse_object(json, len, KB_MAX_CONFIG_BYTES, "cache_key",
                                  &obj, err, errcap);
  if (rc != SPI_OK) return rc;

  kb_instance cfg = {KB_INSTANCE_MAGIC, 0, 0, 0, 0, {{0}, 0, 0, {0}, {0}}, {{0}}};
  rc = spi__cfg_check_keys(obj, "cache_key", "cache_key", err, errcap);
  if (rc == SPI_OK)
    rc = read_u32(obj, "cache_key.schema_version", &cfg.schema_version, err,
                  errcap);
  if (rc == SPI_OK)
    rc = read_u32(obj, "cache_key.block_bytes", &cfg.block_bytes, err, errcap);
  if (rc == SPI_OK)
    rc = read_u32(obj, "cache_key.block_tokens", &cfg.block_tokens, err,
                  errcap);
  if (rc == SPI_OK)
    rc = read_u32(obj, "cache_key.max_blocks", &cfg.max_blocks, err, errcap);
  cJSON_Delete(obj);
  if (rc != SPI_OK) return rc;
  kb_tail_init(&cfg.tail, cfg.schema_version);

  /* The table bounds already hold; these guard the stack buffers if the
   * table and this file ever disagree. */
  if (cfg.block_tokens == 0 || cfg.block_tokens > KB_MAX_BLOCK_TOKENS) {
    spi__errf(err, errcap, "cache_key.block_tokens: must be in [1, %d]",
              KB_MAX_BLOCK_TOKENS);
    return SPI_ERANGE;
  }
  if (cfg.block_bytes == 0) {
    spi__errf(err, errcap, "cache_key.block_bytes: must be positive");
    return SPI_ERANGE;
  }

  kb_instance *in = spi__alloc(mem, sizeof *in);
  if (!in) {
    spi__errf(err, errcap, "cache_key: out of memory");
    return SPI_ENOMEM;
  }
  in->magic = cfg.magic;
  in->schema_version = cfg.schema_version;
  in->block_bytes = cfg.block_bytes;
  in->block_tokens = cfg.block_tokens;
  in->max_blocks = cfg.max_blocks;
  in->tail = cfg.tail;
  for (int i = 0; i < KB_MEMO_SLOTS; i++) { /* empty */
    kb_memo *e = &in->memo[i];
    atomic_init(&e->seq, 0u);
    atomic_init(&e->m0, 0ull);
    atomic_init(&e->m1, 0ull);
    atomic_init(&e->high64, 0ull);
    atomic_init(&e->low64, 0ull);
    atomic_init(&e->c0, 0ull);
  }
  *out_instance = in;
  return SPI_OK;
}

static void kb_release(void *state, void *instance) {
  const spi_mem *mem = state;
  kb_instance *in = instance;
  if (!mem || !in) return;
  in->magic = 0;
  spi__free(mem, in);
}

void spi__builtin_key_builder(spi_key_builder_module *out) {
  memset(out, 0, sizeof *out);
  out->abi_version = SPI_MODULE_ABI_VERSION;
  out->struct_size = (uint32_t)sizeof *out;
  out->on_failure = SPI_ON_FAILURE_ERROR;
  out->configure = kb_configure;
  out->release = kb_release;
  out->build_key = kb_build_key;
  out->block_hashes = kb_block_hashes;
}
