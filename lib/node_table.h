/*
 * node_table.h - the bounded containers behind the machine table (node.c):
 * a hash index by key over a fixed array, a min-heap of wake-up times, and
 * a ring of remembered keys with its own index. None allocates after it is
 * made, and no operation reads more than its hash chain or a heap path, so
 * the cost of a notice does not grow with the number of machines.
 *
 * Elements are named by their index, below SPI_NT_NIL. Not thread-safe:
 * node.c holds its lock around every call. Each counts the entries it
 * looks at in *probes (the tests' measure of a notice's cost).
 */
#ifndef SPI_NODE_TABLE_H
#define SPI_NODE_TABLE_H

#include <stddef.h>
#include <stdint.h>

#include "spi_internal.h"

#define SPI_NT_NIL 0xffffu

/* Open addressing with linear probing over 2^k slots, at most half full:
 * slot[] holds element indices (SPI_NT_NIL = empty), hash[] the hash of
 * each element. Removal shifts the chain back, so no tombstones build up. */
typedef struct spi_hix {
  uint16_t *slot;
  uint64_t *hash;   /* by element */
  size_t mask;      /* slots - 1 */
  uint64_t *probes;
} spi_hix;

/* An index for up to n elements (n < SPI_NT_NIL / 2, that is at most
 * 32766); hash[] is the caller's. */
int spi__hix_init(spi_hix *h, const spi_mem *m, size_t n, uint64_t *hash,
                  uint64_t *probes);
void spi__hix_free(spi_hix *h, const spi_mem *m);
void spi__hix_insert(spi_hix *h, uint32_t e);
void spi__hix_remove(spi_hix *h, uint32_t e);
/* The elements with hash hv, one at a time: start with *cursor = 0; each
 * call returns the next candidate or SPI_NT_NIL (the caller compares). */
uint32_t spi__hix_next(spi_hix *h, uint64_t hv, size_t *cursor);

/* A min-heap of elements by wake time; at[e] is e's position or
 * SPI_NT_NIL. */
typedef struct spi_wheap {
  uint16_t *v;
  uint16_t *at;     /* by element */
  int64_t *wake;    /* by element */
  size_t n;
  uint64_t *probes;
} spi_wheap;

int spi__wheap_init(spi_wheap *q, const spi_mem *m, size_t cap,
                    uint64_t *probes);
void spi__wheap_free(spi_wheap *q, const spi_mem *m);
/* Put e in at time wake, or move it there if it is in. */
void spi__wheap_set(spi_wheap *q, uint32_t e, int64_t wake);
void spi__wheap_remove(spi_wheap *q, uint32_t e);
/* The element that wakes first if it wakes at or before now, else
 * SPI_NT_NIL; it stays in. */
uint32_t spi__wheap_due(const spi_wheap *q, int64_t now);

/* The last `ring` keys remembered (NUL-terminated, cut to cap - 1 bytes),
 * the oldest forgotten first, with an index to look them up. Each key has
 * an owner (a hash the caller picks: node.c's machine), may be marked
 * (node.c: advice) and carries a time (node.c: the deadline its event
 * last acted with), and an owner's keys, or its unmarked ones, can be
 * forgotten at once, found through a second index. */
typedef struct spi_keyring {
  char *keys;       /* ring * cap bytes */
  size_t cap, ring, next;
  uint64_t *hash;   /* by entry */
  uint64_t *owner;  /* by entry */
  uint8_t *live;    /* by entry: in both indexes */
  uint8_t *marked;  /* by entry */
  int64_t *when;    /* by entry */
  spi_hix ix, by_owner;
} spi_keyring;

int spi__keyring_init(spi_keyring *k, const spi_mem *m, size_t ring,
                      size_t cap, uint64_t *probes);
void spi__keyring_free(spi_keyring *k, const spi_mem *m);
/* Whether key was remembered for owner (the same key of another owner is
 * another key); if it was and when is not NULL, *when is its time. */
int spi__keyring_has(spi_keyring *k, const char *key, uint64_t owner,
                     int64_t *when);
/* Remember key for owner, as the newest entry. */
void spi__keyring_add(spi_keyring *k, const char *key, uint64_t owner,
                      int marked, int64_t when);
/* Give key, remembered for owner, the time when, where it is in the ring.
 * Returns 0 if it is not remembered. */
int spi__keyring_set_when(spi_keyring *k, const char *key, uint64_t owner,
                          int64_t when);
/* Forget every key of owner, or only its unmarked ones if keep_marked;
 * the reads are that owner's index chain. */
void spi__keyring_forget(spi_keyring *k, uint64_t owner, int keep_marked);

#endif
