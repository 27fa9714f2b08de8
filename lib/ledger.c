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
 * Finishing a ticket is not the routing hot path, so one mutex guards the
 * whole ledger; holding it costs one hash probe and a few additions.
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

struct spi_ledger {
  pthread_mutex_t lock;
  size_t max_rows; /* keyed rows */
  size_t n;        /* rows in use, keyed and overflow */
  size_t n_keyed;
  size_t hmask;     /* hash slots - 1 */
  spi_ledger_totals *rows; /* max_rows + LEDGER_RESERVE */
  uint32_t *hash;   /* row index + 1, 0 = empty */
};

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

int spi__ledger_new(const spi_mem *m, size_t max_rows, spi_ledger **out) {
  if (!m || !out) return SPI_EINVAL;
  *out = NULL;
  if (max_rows > LEDGER_MAX_ROWS) return SPI_ERANGE;
  size_t cap = max_rows + LEDGER_RESERVE;
  /* At most half full: probes stay short and always end at an empty slot. */
  size_t slots = 16;
  while (slots < 2 * cap) slots *= 2;
  size_t off_rows = align_up(sizeof(spi_ledger), alignof(max_align_t));
  size_t off_hash = off_rows + cap * sizeof(spi_ledger_totals);
  size_t total = off_hash + slots * sizeof(uint32_t);
  unsigned char *p = spi__alloc(m, total);
  if (!p) return SPI_ENOMEM;
  memset(p, 0, total);
  spi_ledger *l = (spi_ledger *)(void *)p;
  if (pthread_mutex_init(&l->lock, NULL) != 0) {
    spi__free(m, p);
    return SPI_ENOMEM;
  }
  l->max_rows = max_rows;
  l->hmask = slots - 1;
  l->rows = (spi_ledger_totals *)(void *)(p + off_rows);
  l->hash = (uint32_t *)(void *)(p + off_hash);
  *out = l;
  return SPI_OK;
}

void spi__ledger_free(const spi_mem *m, spi_ledger *l) {
  if (!l) return;
  pthread_mutex_destroy(&l->lock);
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

/* The row of a key, created if there is room of the right kind; NULL when
 * a keyed row is wanted and the keyed rows are used up. Called with the
 * lock held. */
static spi_ledger_totals *find_or_add(spi_ledger *l, key_text tenant,
                               key_text model, int32_t pool, int32_t klass,
                               int overflow) {
  size_t i = (size_t)key_hash(tenant, model, pool, klass) & l->hmask;
  for (;; i = (i + 1) & l->hmask) {
    uint32_t v = l->hash[i];
    if (v == 0) break;
    spi_ledger_totals *r = &l->rows[v - 1];
    if (r->pool == pool && r->klass == klass && field_is(r->tenant, tenant) &&
        field_is(r->model, model))
      return r;
  }
  if (!overflow && l->n_keyed >= l->max_rows) return NULL;
  /* Keyed rows stop at max_rows and overflow rows at one per pool and
   * class, so n never passes max_rows + LEDGER_RESERVE. */
  spi_ledger_totals *r = &l->rows[l->n];
  field_set(r->tenant, tenant);
  field_set(r->model, model);
  r->pool = pool;
  r->klass = klass;
  l->hash[i] = (uint32_t)(l->n + 1);
  l->n++;
  if (!overflow) l->n_keyed++;
  return r;
}

/* NaN, infinite and negative amounts add nothing rather than poison a row
 * for good. */
static double amount(double d) { return d >= 0.0 && d <= DBL_MAX ? d : 0.0; }

/* Lock the ledger and return the row for the key, or its overflow row. */
static spi_ledger_totals *lock_row(spi_ledger *l, const char *tenant,
                            const char *model, int32_t pool, int32_t klass) {
  key_text t = key_text_of(tenant), mo = key_text_of(model);
  if (pool < 0 || pool >= LEDGER_POOLS) pool = 0;
  if (klass < 0 || klass >= LEDGER_CLASSES) klass = 0;
  pthread_mutex_lock(&l->lock);
  spi_ledger_totals *r = find_or_add(l, t, mo, pool, klass, 0);
  if (r) return r;
  key_text other = key_text_of(LEDGER_OTHER);
  return find_or_add(l, other, other, pool, klass, 1);
}

void spi__ledger_add(spi_ledger *l, const char *tenant, const char *model,
                     int32_t pool, int32_t klass, int ok,
                     uint64_t prompt_tokens, uint64_t output_tokens,
                     uint64_t cached_tokens, double gpu_seconds, double usd) {
  if (!l) return;
  spi_ledger_totals *r = lock_row(l, tenant, model, pool, klass);
  if (ok)
    r->completed++;
  else
    r->failed++;
  r->prompt_tokens += prompt_tokens;
  r->output_tokens += output_tokens;
  r->cached_tokens += cached_tokens;
  r->gpu_seconds += amount(gpu_seconds);
  r->usd += amount(usd);
  pthread_mutex_unlock(&l->lock);
}

void spi__ledger_add_extra(spi_ledger *l, const char *tenant, const char *model,
                           int32_t pool, int32_t klass,
                           const spi_ledger_extra *x) {
  if (!l || !x) return;
  spi_ledger_totals *r = lock_row(l, tenant, model, pool, klass);
  r->interrupted += x->interrupted ? 1u : 0u;
  r->wasted_output_tokens += x->wasted_output_tokens;
  r->reprefilled_tokens += x->reprefilled_tokens;
  r->wasted_usd += amount(x->wasted_usd);
  r->replays += x->replay ? 1u : 0u;
  r->replay_latency_ms += amount(x->replay_latency_ms);
  r->fallback_on_demand_seconds += amount(x->fallback_on_demand_seconds);
  pthread_mutex_unlock(&l->lock);
}

size_t spi__ledger_max_rows(const spi_ledger *l) { return l ? l->max_rows : 0; }

size_t spi__ledger_count(spi_ledger *l) {
  if (!l) return 0;
  pthread_mutex_lock(&l->lock);
  size_t n = l->n;
  pthread_mutex_unlock(&l->lock);
  return n;
}

int spi__ledger_totals_at(spi_ledger *l, size_t index, spi_ledger_totals *out) {
  if (!out) return SPI_EINVAL;
  if (!l) return SPI_ENOTFOUND;
  pthread_mutex_lock(&l->lock);
  int found = index < l->n;
  if (found) *out = l->rows[index];
  pthread_mutex_unlock(&l->lock);
  return found ? SPI_OK : SPI_ENOTFOUND;
}
