/*
 * trace_conv.c - which conversation each request of a trace belongs to.
 * Classes are drawn per conversation, so every turn of one keeps its
 * class (and, through it, its pool). Bailian's traces name the chain
 * (trace_jsonl.c follows parent_chat_id with the map here); Mooncake's do
 * not, and the rule below finds them from the prompts.
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

/* The chain hash of the most requests' first d blocks, and how many have
 * it: requests with fewer blocks count for none. 0, or -1 out of memory. */
static int commonest_prefix(const sim_trace *t, uint32_t d, uint64_t *chain, size_t *count) {
  trace_map m = {0};
  *chain = 0, *count = 0;
  for (size_t i = 0; i < t->n; i++) {
    const sim_trace_req *q = &t->reqs[i];
    if (q->nblocks < d) continue;
    uint64_t key = t->chain[q->block_off + d - 1];
    if (trace_map_reserve(&m)) return trace_map_free(&m), -1;
    size_t s = trace_map_slot(&m, key ? key : 1);
    if (!m.key[s]) m.key[s] = key ? key : 1, m.n++;
    if (++m.val[s] > *count) *count = m.val[s], *chain = key;
  }
  trace_map_free(&m);
  return 0;
}

/*
 * A Mooncake trace's conversations (or tenants): the requests that share
 * their first block past the prompt most of the trace starts with. The
 * blocks that more than half of all requests share are a global system
 * prompt: every request carries them, so they say nothing about who sent
 * it (Mooncake's conversation trace starts every request with block 0,
 * which made it one conversation of one class when the first block was
 * the key). A request without that prompt is keyed by its first block, one
 * with nothing past it is a conversation of its own. Mooncake's ids name a
 * block in its place in the prompt, so the block alone is the key.
 */
int trace_mooncake_conversations(sim_trace *t) {
  uint32_t global = 0;
  uint64_t prompt = 0;
  for (;;) {
    uint64_t chain;
    size_t count;
    if (commonest_prefix(t, global + 1, &chain, &count)) return -1;
    if (2 * count <= t->n) break;
    global++, prompt = chain;
  }
  for (size_t i = 0; i < t->n; i++) {
    sim_trace_req *q = &t->reqs[i];
    uint32_t past = global && q->nblocks >= global &&
                    t->chain[q->block_off + global - 1] == prompt ? global : 0;
    q->session = q->nblocks > past ? t->blocks[q->block_off + past]
                                   : ((uint64_t)1 << 63) | i;
  }
  return 0;
}
