/*
 * trace_conv.c - which conversation each request of a trace belongs to.
 * Classes are drawn per conversation, so every turn of one keeps its
 * class (and, through it, its pool). Bailian's traces name the chain
 * (trace_jsonl.c follows parent_chat_id with the map here); Mooncake's do
 * not, and the rule below finds it from the prompts.
 */
#include <stdlib.h>
#include <string.h>

#include "trace_read.h"

void trace_map_free(trace_map *m) {
  free(m->key);
  free(m->val);
  memset(m, 0, sizeof *m);
}

size_t trace_map_slot(const trace_map *m, uint64_t key) {
  size_t i = (size_t)sim_mix64(key) & (m->cap - 1);
  while (m->key[i] && m->key[i] != key) i = (i + 1) & (m->cap - 1);
  return i;
}

int trace_map_reserve(trace_map *m) {
  if (2 * (m->n + 1) <= m->cap) return 0;
  size_t cap = m->cap ? m->cap * 2 : 4096;
  trace_map g = {calloc(cap, sizeof *g.key), calloc(cap, sizeof *g.val), cap, m->n};
  if (!g.key || !g.val) return trace_map_free(&g), -1;
  for (size_t i = 0; i < m->cap; i++)
    if (m->key[i]) {
      size_t s = trace_map_slot(&g, m->key[i]);
      g.key[s] = m->key[i];
      g.val[s] = m->val[i];
    }
  trace_map_free(m);
  *m = g;
  return 0;
}

/* A conversation's value in the map: its session, and whether a later
 * request has continued the prompt the key stands for. */
#define CONV_TAKEN ((uint64_t)1 << 63)

static uint64_t prompt_key(uint64_t chain) { return chain ? chain : 1; }

/* The earlier prompt request q continues: the longest prefix of q, two
 * blocks or more, that was an earlier request's whole prompt or all of it
 * but its last block. Its slot, or (size_t)-1 when there is none. */
static size_t continued(const trace_map *m, const uint64_t *chain, uint32_t n) {
  if (!m->cap) return (size_t)-1;
  for (uint32_t d = n; d >= 2; d--) {
    size_t s = trace_map_slot(m, prompt_key(chain[d - 1]));
    if (m->key[s]) return s;
  }
  return (size_t)-1;
}

static int remember(trace_map *m, uint64_t chain, uint64_t session) {
  if (trace_map_reserve(m)) return -1;
  size_t s = trace_map_slot(m, prompt_key(chain));
  if (!m->key[s]) m->key[s] = prompt_key(chain), m->val[s] = session, m->n++;
  return 0;
}

/*
 * A Mooncake request continues an earlier one when that one's whole prompt,
 * or all of it but its last block (a part-filled block is hashed anew once
 * the turn grows), is a prefix of its own at least two blocks long. One
 * block is not enough: a global system prompt puts the same first block in
 * front of every request, which would make the whole trace one
 * conversation. And a prompt that a second request also continues is
 * shared (a document, a tool list), not a turn, so that request starts a
 * conversation of its own. Requests in arrival order, chain[] filled.
 */
int trace_mooncake_conversations(sim_trace *t) {
  trace_map m = {0};
  int rc = 0;
  for (size_t i = 0; i < t->n && !rc; i++) {
    sim_trace_req *q = &t->reqs[i];
    const uint64_t *chain = t->chain + q->block_off;
    q->session = sim_mix64(i ^ 0x434f4e56ull) & ~CONV_TAKEN; /* "CONV" */
    size_t s = continued(&m, chain, q->nblocks);
    if (s != (size_t)-1 && !(m.val[s] & CONV_TAKEN)) {
      q->session = m.val[s];
      m.val[s] |= CONV_TAKEN;
    }
    if (q->nblocks >= 2) rc = remember(&m, chain[q->nblocks - 1], q->session);
    if (!rc && q->nblocks >= 3) rc = remember(&m, chain[q->nblocks - 2], q->session);
  }
  trace_map_free(&m);
  return rc;
}
