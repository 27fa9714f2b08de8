/*
 * pool_models.c - the pool index and models: which models list an index
 * serves (every model of it served by each of its regular replicas), and
 * the indexes of one model each, made as replicas' lists name models and
 * handed to the models requests ask for (pool_index.c's head has the
 * design; pool_index.h the calls).
 */
#include <string.h>

#include "pool_index.h"

static void bit_set(uint64_t *b, uint32_t pos) {
  b[pos / 64] |= UINT64_C(1) << (pos % 64);
}

int spi__pix_serves(const spi_pool_index *p, const char *model, size_t len) {
  /* A request that names no model may go to any replica, those set aside
   * for serving other models too. */
  if (len == 0) return !p->other_any;
  return spi__models_serve(p->models, p->models_len, model, len);
}

/* Whether a replica of set with a models list names model: a model index
 * is taken only for a model the fleet says it serves, not for every name
 * a request makes up. */
static int set_names(const spi_replica_set *set, const char *model,
                     size_t len) {
  for (size_t i = 0; i < set->n; i++) {
    const spi_replica_ident *r = &set->r[i];
    if (r->models_len && spi__models_serve(r->models, r->models_len, model, len))
      return 1;
  }
  return 0;
}

/* A model name's key (FNV-1a over its 8-byte words), never 0, which
 * stands for no model. Routes find a model index by its key alone: its
 * name may be rewritten (pix_rename) while they look. */
static uint64_t model_key(const char *model, size_t len) {
  uint64_t h = 0xcbf29ce484222325ULL, w;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    memcpy(&w, model + i, 8);
    h = (h ^ w) * 0x100000001b3ULL;
  }
  for (; i < len; i++) h = (h ^ (unsigned char)model[i]) * 0x100000001b3ULL;
  return h ? h : 1;
}

int spi__pix_names(const spi_pool_index *q, const char *model, size_t len) {
  return q->model_len == len && memcmp(q->model, model, len) == 0;
}

/* Index q, taken by no route, for the model model[0..len) of key key: its
 * name written first, then the key (release), by which routes find it. */
static void pix_name(spi_pool_index *q, const char *model, size_t len,
                     uint64_t key) {
  memcpy(q->model, model, len);
  q->model_len = (uint32_t)len;
  atomic_store_explicit(&q->named, 1, memory_order_relaxed);
  atomic_store_explicit(&q->model_key, key, memory_order_release);
}

/* Every model index taken: one whose model no replica of set lists any
 * more (its replicas removed, or serving others now) is given to
 * model[0..len), which one does. It is renamed while taken, so a route
 * holding it never sees its name change, and made again from every slot
 * at its next sync (version 0); a route that found it by the old key
 * finds the new name once it takes it, and reads every slot
 * (scan_of_model). The lists change only with the set, so the indexes
 * are looked over once per set version. */
static __attribute__((noinline)) spi_pool_index *
pix_rename(spi_registry *g, const spi_replica_set *set, const char *model,
           size_t len, uint64_t key, unsigned n) {
  if (atomic_load_explicit(&g->pix_renamed_at, memory_order_relaxed) ==
          set->version ||
      !set_names(set, model, len))
    return NULL;
  for (unsigned k = 0; k < n; k++) {
    spi_pool_index *q = g->pix_model[k];
    if (!spi__pix_acquire(q)) continue;
    /* Acquire: a model index counted in n may still be being named
     * (spi__pix_for_model's claim); its name is whole once its key is. */
    int gone = atomic_load_explicit(&q->model_key, memory_order_acquire) &&
               !set_names(set, q->model, q->model_len);
    if (gone) {
      q->version = 0;
      pix_name(q, model, len, key);
    }
    spi__pix_release(q);
    if (gone) return q;
  }
  atomic_store_explicit(&g->pix_renamed_at, set->version, memory_order_relaxed);
  return NULL;
}

spi_pool_index *spi__pix_for_model(spi_registry *g, const spi_replica_set *set,
                                   const char *model, size_t len) {
  if (len == 0 || len > SPI_PIX_MODEL_MAX) return NULL;
  uint64_t key = model_key(model, len);
  unsigned n = atomic_load_explicit(&g->pix_models_n, memory_order_acquire);
  for (unsigned k = 0; k < n; k++) {
    spi_pool_index *q = g->pix_model[k];
    if (atomic_load_explicit(&q->model_key, memory_order_acquire) == key)
      return q;
  }
  /* Acquire: the index's pointer was stored before the count of those
   * made (spi__pix_models_make). */
  unsigned made = atomic_load_explicit(&g->pix_made_n, memory_order_acquire);
  if (n >= made)
    return made == SPI_PIX_MODELS ? pix_rename(g, set, model, len, key, n)
                                  : NULL;
  if (!set_names(set, model, len)) return NULL;
  /* Taken by one route; another taking one at once reads every slot this
   * time, or takes the next for the same model (two indexes, both exact). */
  if (!atomic_compare_exchange_strong_explicit(&g->pix_models_n, &n, n + 1,
                                               memory_order_acq_rel,
                                               memory_order_acquire))
    return NULL;
  spi_pool_index *q = g->pix_model[n];
  pix_name(q, model, len, key);
  return q;
}

/* Whether g's names met so far (pix_names) have name[0..len). */
static int name_met(const spi_registry *g, const char *name, size_t len) {
  for (uint32_t k = 0; k < g->pix_names_n; k++)
    if (g->pix_names_len[k] == len && !memcmp(g->pix_names[k], name, len))
      return 1;
  return 0;
}

void spi__pix_models_make(spi_registry *g, const spi_mem *m,
                          const char *models, size_t len) {
  for (const char *at = models, *end = models + len;
       at < end && g->pix_names_n < SPI_PIX_MODELS;) {
    size_t n;
    const char *name = spi__models_next(&at, end, &n);
    if (n == 0 || n > SPI_PIX_MODEL_MAX || name_met(g, name, n)) continue;
    memcpy(g->pix_names[g->pix_names_n], name, n);
    g->pix_names_len[g->pix_names_n++] = (uint32_t)n;
  }
  unsigned made = atomic_load_explicit(&g->pix_made_n, memory_order_relaxed);
  for (; made < g->pix_names_n; made++) {
    spi_pool_index *q = spi__pix_new(m);
    if (!q) return;
    q->counts = g->pix_counts;
    g->pix_model[made] = q;
    /* Release: a route that reads the count finds the index made. */
    atomic_store_explicit(&g->pix_made_n, made + 1, memory_order_release);
  }
}

/* How much of model list b's names a non-empty models list a serves
 * (spi__models_serve's reading of a list): MODELS_ALL every one of them,
 * MODELS_NONE none, MODELS_SOME the others. */
enum { MODELS_NONE, MODELS_SOME, MODELS_ALL };
static int models_cover(const char *a, size_t alen, const char *b,
                        size_t blen) {
  int some = 0, all = 1;
  for (const char *p = b, *end = b + blen; p < end;) {
    size_t n;
    const char *name = spi__models_next(&p, end, &n);
    int serves = spi__models_serve(a, alen, name, n);
    some |= serves;
    all &= serves;
  }
  return all ? MODELS_ALL : some ? MODELS_SOME : MODELS_NONE;
}

/* The distinct models lists of a set, the first MODELS_SEEN met, and how
 * many replicas have each. */
#define MODELS_SEEN 8
typedef struct models_seen {
  const spi_replica_ident *r[MODELS_SEEN];
  uint32_t count[MODELS_SEEN], n;
} models_seen;

/* Which of ms's lists r has (ms->n when none of them, or r has none). */
static uint32_t models_which(const models_seen *ms,
                             const spi_replica_ident *r) {
  uint32_t k = 0;
  while (k < ms->n && (ms->r[k]->models_len != r->models_len ||
                       memcmp(ms->r[k]->models, r->models, r->models_len)))
    k++;
  return r->models_len ? k : ms->n;
}

/* Which positions of set serve every model of the index's list (p->serves,
 * which alone may be regular) and which none (p->other: set aside). ms
 * holds the set's lists and cover[k] how much list k serves of the
 * index's (NULL: worked out a replica at a time). */
static void models_mark(spi_pool_index *p, const spi_replica_set *set,
                        const models_seen *ms, const uint8_t *cover) {
  memset(p->serves, 0, sizeof p->serves);
  memset(p->other, 0, sizeof p->other);
  p->other_any = 0;
  for (size_t i = 0; i < set->n; i++) {
    const spi_replica_ident *r = &set->r[i];
    uint32_t k = ms ? models_which(ms, r) : 0;
    int cover_of = !r->models_len ? MODELS_ALL
                   : ms && k < ms->n ? cover[k]
                                     : models_cover(r->models, r->models_len,
                                                    p->models, p->models_len);
    if (cover_of == MODELS_ALL) bit_set(p->serves, (uint32_t)i);
    if (cover_of == MODELS_NONE) bit_set(p->other, (uint32_t)i);
    p->other_any |= cover_of == MODELS_NONE;
  }
}

/* The index's models list: a model index's own model, else, of the lists
 * met, the one that the most replicas serve every model of (models_cover;
 * the first on a tie), "" when no replica has a list. Then which positions
 * serve every model it names and which none (models_mark): the index
 * serves a request for one of them (spi__pix_serves) as if no replica had
 * a list. A fleet of one model that says so keeps the index whole, and
 * one of several models keeps the replicas of the others aside. */
void spi__pix_models_choose(spi_pool_index *p, const spi_replica_set *set) {
  if (atomic_load_explicit(&p->named, memory_order_acquire)) {
    p->models_len = p->model_len;
    memcpy(p->models, p->model, p->model_len);
    models_mark(p, set, NULL, NULL);
    return;
  }
  models_seen ms;
  ms.n = 0;
  for (size_t i = 0; i < set->n; i++) {
    const spi_replica_ident *r = &set->r[i];
    uint32_t k = models_which(&ms, r);
    if (k == ms.n && r->models_len && ms.n < MODELS_SEEN) {
      ms.r[ms.n] = r;
      ms.count[ms.n++] = 0;
    }
    if (k < ms.n) ms.count[k]++;
  }
  uint8_t cover[MODELS_SEEN][MODELS_SEEN];
  uint32_t best = 0, best_n = 0;
  for (uint32_t c = 0; c < ms.n; c++) {
    uint32_t served = 0;
    for (uint32_t k = 0; k < ms.n; k++) {
      cover[c][k] = (uint8_t)models_cover(ms.r[k]->models, ms.r[k]->models_len,
                                          ms.r[c]->models, ms.r[c]->models_len);
      served += cover[c][k] == MODELS_ALL ? ms.count[k] : 0;
    }
    if (served > best_n) best = c, best_n = served;
  }
  p->models_len = ms.n ? ms.r[best]->models_len : 0;
  if (ms.n) memcpy(p->models, ms.r[best]->models, p->models_len);
  models_mark(p, set, &ms, cover[best]);
}
