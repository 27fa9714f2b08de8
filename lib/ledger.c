/*
 * ledger.c - the cost ledger: completed work and its price, by tenant,
 * model, pool and class.
 *
 * Rows live in one array allocated at creation, in order of first use, with
 * an open-addressing hash of their keys beside it. Up to max_rows keys get a
 * row of their own. After that, a new key is folded into the overflow row
 * of its pool and class (tenant "(other)", model "(other)"); room for one
 * such row per pool and class (4 x 4, out-of-range values count as 0) is
 * reserved at creation, so adding never fails and never allocates. The
 * ledger therefore holds at most max_rows + 16 rows.
 *
 * A row's key is written once, before the row is published (the count of
 * rows and its hash slot, release), and never again, so finding a row
 * takes no lock; adding one takes the ledger's lock. Its sums are kept in
 * stripes (LEDGER_STRIPES), each with a mutex of its own: a finish adds
 * to its thread's stripe (spi__thread_no), and a read adds the stripes up,
 * taking their mutexes one at a time. One mutex over the whole ledger had
 * every finish of every thread take the same lock and write the same row,
 * so threads sharing an engine moved both between their CPUs at each
 * finish. A row's sums are zeroed in every stripe when it is made, so no
 * page of a stripe is touched before a row uses it. Every mutex here is a
 * leaf: none is taken while another is held.
 */
#include <float.h>
#include <stdalign.h>
#include <string.h>

#include "routing.h"

#define LEDGER_POOLS 4
#define LEDGER_CLASSES 4
#define LEDGER_RESERVE (LEDGER_POOLS * LEDGER_CLASSES)
#define LEDGER_OTHER "(other)"
#define LEDGER_MAX_ROWS ((size_t)1 << 24)
#define LEDGER_STRIPES 4

/* What a row is kept by. */
typedef struct ledger_key {
  char tenant[SPI_ID_MAX];
  char model[SPI_ID_MAX];
  int32_t pool, klass;
} ledger_key;

/* What a row adds up (spi_ledger_totals' sums). */
typedef struct ledger_sums {
  uint64_t completed, failed;
  uint64_t prompt_tokens, output_tokens, cached_tokens;
  double gpu_seconds, usd;
  uint64_t interrupted, wasted_output_tokens, reprefilled_tokens, replays;
  double wasted_usd, replay_latency_ms, fallback_on_demand_seconds;
} ledger_sums;

/* One stripe: every row's sums from the threads that add here. Its mutex
 * and pointer fill a line of their own, so stripes never share one. */
typedef union ledger_stripe {
  struct {
    pthread_mutex_t lock;
    ledger_sums *sums; /* a row each */
  } s;
  char line[128];
} ledger_stripe;

struct spi_ledger {
  pthread_mutex_t lock; /* adding a row */
  size_t max_rows;      /* keyed rows */
  atomic_size_t n;      /* rows in use, keyed and overflow (release: the
                           rows below it are whole) */
  size_t n_keyed;       /* under lock */
  size_t hmask;         /* hash slots - 1 */
  ledger_key *keys;     /* max_rows + LEDGER_RESERVE */
  atomic_uint *hash;    /* row index + 1, 0 = empty (release: the row is
                           whole) */
  int stripes_made;     /* stripe mutexes initialised (for the unwind) */
  ledger_stripe stripe[LEDGER_STRIPES];
};

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* The ledger's mutex and the stripes' made so far (stripes_made),
 * destroyed. */
static void ledger_locks_end(spi_ledger *l) {
  for (int i = 0; i < l->stripes_made; i++)
    pthread_mutex_destroy(&l->stripe[i].s.lock);
  pthread_mutex_destroy(&l->lock);
}

int spi__ledger_new(const spi_mem *m, size_t max_rows, spi_ledger **out) {
  if (!m || !out) return SPI_EINVAL;
  *out = NULL;
  if (max_rows > LEDGER_MAX_ROWS) return SPI_ERANGE;
  size_t cap = max_rows + LEDGER_RESERVE;
  /* At most half full: probes stay short and always end at an empty slot. */
  size_t slots = 16;
  while (slots < 2 * cap) slots *= 2;
  /* One allocation: header, hash, keys, then each stripe's sums. Only the
   * header and the hash are zeroed here: a row is made whole when it is
   * added (row_add). */
  size_t off_hash = align_up(sizeof(spi_ledger), alignof(max_align_t));
  size_t off_keys =
      align_up(off_hash + slots * sizeof(atomic_uint), alignof(max_align_t));
  size_t off_sums = off_keys + cap * sizeof(ledger_key);
  size_t total = off_sums + LEDGER_STRIPES * cap * sizeof(ledger_sums);
  unsigned char *p = spi__alloc(m, total);
  if (!p) return SPI_ENOMEM;
  memset(p, 0, off_keys);
  spi_ledger *l = (spi_ledger *)(void *)p;
  if (pthread_mutex_init(&l->lock, NULL) != 0) goto fail_alloc;
  for (; l->stripes_made < LEDGER_STRIPES; l->stripes_made++) {
    ledger_stripe *s = &l->stripe[l->stripes_made];
    if (pthread_mutex_init(&s->s.lock, NULL) != 0) goto fail_locks;
    s->s.sums = (ledger_sums *)(void *)(p + off_sums +
                                        (size_t)l->stripes_made * cap *
                                            sizeof(ledger_sums));
  }
  l->max_rows = max_rows;
  l->hmask = slots - 1;
  l->keys = (ledger_key *)(void *)(p + off_keys);
  l->hash = (atomic_uint *)(void *)(p + off_hash);
  atomic_init(&l->n, (size_t)0);
  *out = l;
  return SPI_OK;
fail_locks:
  ledger_locks_end(l);
fail_alloc:
  spi__free(m, p);
  return SPI_ENOMEM;
}

void spi__ledger_free(const spi_mem *m, spi_ledger *l) {
  if (!l) return;
  ledger_locks_end(l);
  spi__free(m, l);
}

/* A key's text as the row keeps it: s cut to SPI_ID_MAX - 1 bytes (NULL is
 * ""). Read in place, not copied: a finish looks up a row it has used
 * before far more often than it makes one. */
typedef struct key_text {
  const char *s;
  size_t n;
} key_text;

static key_text key_text_of(const char *s) {
  key_text k = {"", 0};
  if (s) {
    const char *end = memchr(s, '\0', SPI_ID_MAX - 1);
    k.s = s;
    k.n = end ? (size_t)(end - s) : SPI_ID_MAX - 1;
  }
  return k;
}

/* Eight bytes of a key's text at a time, then its length: the hash only
 * places rows in the table (rows keep the order of first use), so any
 * hash that spreads keys will do, and bytes one at a time cost a finish
 * some sixty instructions for a model name. */
static uint64_t text_hash(uint64_t h, key_text k) {
  const uint64_t prime = UINT64_C(0x100000001b3);
  size_t i = 0;
  for (; i + 8 <= k.n; i += 8) {
    uint64_t w;
    memcpy(&w, k.s + i, 8);
    h = (h ^ w) * prime;
    h ^= h >> 32;
  }
  uint64_t w = 0;
  for (size_t j = 0; i + j < k.n; j++) w |= (uint64_t)(uint8_t)k.s[i + j] << (8 * j);
  return (h ^ w ^ ((uint64_t)k.n << 56)) * prime;
}

/* Tenant, model, pool and class, finished as splitmix64 does: the table's
 * slot is the hash's low bits. */
static uint64_t key_hash(key_text tenant, key_text model, int32_t pool,
                         int32_t klass) {
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  h = text_hash(h, tenant);
  h = text_hash(h, model);
  h ^= (uint64_t)(uint32_t)pool << 32 | (uint32_t)klass;
  h = (h ^ (h >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  h = (h ^ (h >> 27)) * UINT64_C(0x94d049bb133111eb);
  return h ^ (h >> 31);
}

/* Whether a row's field (NUL-terminated) holds exactly the key text. */
static int field_is(const char field[SPI_ID_MAX], key_text k) {
  return field[k.n] == '\0' && memcmp(field, k.s, k.n) == 0;
}

static void field_set(char field[SPI_ID_MAX], key_text k) {
  if (k.n) memcpy(field, k.s, k.n);
  field[k.n] = '\0';
}

/* The row of a key, or NO_ROW; where its hash slot is or would be, in
 * *slot. Takes no lock: a row found is whole and its key never changes. */
#define NO_ROW SIZE_MAX
static size_t row_find(const spi_ledger *l, key_text tenant, key_text model,
                       int32_t pool, int32_t klass, size_t *slot) {
  size_t i = (size_t)key_hash(tenant, model, pool, klass) & l->hmask;
  for (;; i = (i + 1) & l->hmask) {
    unsigned v = atomic_load_explicit(&l->hash[i], memory_order_acquire);
    if (v == 0) break;
    const ledger_key *k = &l->keys[v - 1];
    if (k->pool == pool && k->klass == klass && field_is(k->tenant, tenant) &&
        field_is(k->model, model))
      return v - 1;
  }
  *slot = i;
  return NO_ROW;
}

/* A new row for the key at hash slot i, made whole (its key, its sums
 * zeroed in every stripe) before it is published; NO_ROW when a keyed row
 * is wanted and the keyed rows are used up. Called with the lock held.
 * Keyed rows stop at max_rows and overflow rows at one per pool and class,
 * so n never passes max_rows + LEDGER_RESERVE. */
static size_t row_add(spi_ledger *l, key_text tenant, key_text model,
                      int32_t pool, int32_t klass, int overflow, size_t i) {
  if (!overflow && l->n_keyed >= l->max_rows) return NO_ROW;
  size_t r = atomic_load_explicit(&l->n, memory_order_relaxed);
  ledger_key *k = &l->keys[r];
  /* Whole: a lookup of a longer name reads past this one's NUL
   * (field_is). */
  memset(k, 0, sizeof *k);
  field_set(k->tenant, tenant);
  field_set(k->model, model);
  k->pool = pool;
  k->klass = klass;
  for (int s = 0; s < LEDGER_STRIPES; s++)
    memset(&l->stripe[s].s.sums[r], 0, sizeof(ledger_sums));
  atomic_store_explicit(&l->n, r + 1, memory_order_release);
  atomic_store_explicit(&l->hash[i], (unsigned)(r + 1), memory_order_release);
  if (!overflow) l->n_keyed++;
  return r;
}

/* The row of a key, made under the lock if no thread made it first. */
static size_t row_of(spi_ledger *l, key_text tenant, key_text model,
                     int32_t pool, int32_t klass, int overflow) {
  size_t slot;
  size_t r = row_find(l, tenant, model, pool, klass, &slot);
  if (r != NO_ROW) return r;
  pthread_mutex_lock(&l->lock);
  r = row_find(l, tenant, model, pool, klass, &slot);
  if (r == NO_ROW)
    r = row_add(l, tenant, model, pool, klass, overflow, slot);
  pthread_mutex_unlock(&l->lock);
  return r;
}

/* NaN, infinite and negative amounts add nothing rather than poison a row
 * for good. */
static double amount(double d) { return d >= 0.0 && d <= DBL_MAX ? d : 0.0; }

/* The sums of the key's row, or of its overflow row, in this thread's
 * stripe, with the stripe's mutex held (stripe_done releases it). */
static ledger_sums *stripe_row(spi_ledger *l, const char *tenant,
                               const char *model, int32_t pool, int32_t klass,
                               ledger_stripe **held) {
  key_text t = key_text_of(tenant), mo = key_text_of(model);
  if (pool < 0 || pool >= LEDGER_POOLS) pool = 0;
  if (klass < 0 || klass >= LEDGER_CLASSES) klass = 0;
  size_t r = row_of(l, t, mo, pool, klass, 0);
  if (r == NO_ROW) {
    key_text other = key_text_of(LEDGER_OTHER);
    r = row_of(l, other, other, pool, klass, 1);
  }
  ledger_stripe *s = &l->stripe[spi__thread_no() % LEDGER_STRIPES];
  pthread_mutex_lock(&s->s.lock);
  *held = s;
  return &s->s.sums[r];
}

static void stripe_done(ledger_stripe *s) { pthread_mutex_unlock(&s->s.lock); }

void spi__ledger_add(spi_ledger *l, const char *tenant, const char *model,
                     int32_t pool, int32_t klass, int ok,
                     uint64_t prompt_tokens, uint64_t output_tokens,
                     uint64_t cached_tokens, double gpu_seconds, double usd) {
  if (!l) return;
  ledger_stripe *s;
  ledger_sums *r = stripe_row(l, tenant, model, pool, klass, &s);
  if (ok)
    r->completed++;
  else
    r->failed++;
  r->prompt_tokens += prompt_tokens;
  r->output_tokens += output_tokens;
  r->cached_tokens += cached_tokens;
  r->gpu_seconds += amount(gpu_seconds);
  r->usd += amount(usd);
  stripe_done(s);
}

void spi__ledger_add_extra(spi_ledger *l, const char *tenant, const char *model,
                           int32_t pool, int32_t klass,
                           const spi_ledger_extra *x) {
  if (!l || !x) return;
  ledger_stripe *s;
  ledger_sums *r = stripe_row(l, tenant, model, pool, klass, &s);
  r->interrupted += x->interrupted ? 1u : 0u;
  r->wasted_output_tokens += x->wasted_output_tokens;
  r->reprefilled_tokens += x->reprefilled_tokens;
  r->wasted_usd += amount(x->wasted_usd);
  r->replays += x->replay ? 1u : 0u;
  r->replay_latency_ms += amount(x->replay_latency_ms);
  r->fallback_on_demand_seconds += amount(x->fallback_on_demand_seconds);
  stripe_done(s);
}

size_t spi__ledger_max_rows(const spi_ledger *l) { return l ? l->max_rows : 0; }

size_t spi__ledger_count(spi_ledger *l) {
  return l ? atomic_load_explicit(&l->n, memory_order_acquire) : 0;
}

/* s's sums added into out's. */
static void sums_into(spi_ledger_totals *out, const ledger_sums *s) {
  out->completed += s->completed;
  out->failed += s->failed;
  out->prompt_tokens += s->prompt_tokens;
  out->output_tokens += s->output_tokens;
  out->cached_tokens += s->cached_tokens;
  out->gpu_seconds += s->gpu_seconds;
  out->usd += s->usd;
  out->interrupted += s->interrupted;
  out->wasted_output_tokens += s->wasted_output_tokens;
  out->reprefilled_tokens += s->reprefilled_tokens;
  out->replays += s->replays;
  out->wasted_usd += s->wasted_usd;
  out->replay_latency_ms += s->replay_latency_ms;
  out->fallback_on_demand_seconds += s->fallback_on_demand_seconds;
}

int spi__ledger_totals_at(spi_ledger *l, size_t index, spi_ledger_totals *out) {
  if (!out) return SPI_EINVAL;
  if (!l || index >= spi__ledger_count(l)) return SPI_ENOTFOUND;
  const ledger_key *k = &l->keys[index];
  memset(out, 0, sizeof *out);
  memcpy(out->tenant, k->tenant, sizeof out->tenant);
  memcpy(out->model, k->model, sizeof out->model);
  out->pool = k->pool;
  out->klass = k->klass;
  /* One stripe at a time: each stripe's sums are whole, the row's are the
   * stripes' as each was when it was read. */
  for (int i = 0; i < LEDGER_STRIPES; i++) {
    ledger_stripe *s = &l->stripe[i];
    pthread_mutex_lock(&s->s.lock);
    sums_into(out, &s->s.sums[index]);
    pthread_mutex_unlock(&s->s.lock);
  }
  return SPI_OK;
}
