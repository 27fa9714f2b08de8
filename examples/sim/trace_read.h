/*
 * trace_read.h - what the request-trace readers share (trace_read.c reads
 * a file and finishes the trace, trace_jsonl.c reads JSONL lines,
 * trace_csv.c CSV lines). Private to the simulator.
 */
#ifndef SPOTINFER_SIM_TRACE_READ_H
#define SPOTINFER_SIM_TRACE_READ_H

#include "sim.h"

enum { TRACE_UNKNOWN, TRACE_MOONCAKE, TRACE_BAILIAN, TRACE_CSV };

/* The fewest tokens a hash id of a JSONL trace stands for (trace_read.c
 * finds the unit, 16 to 4096): a line with more ids than its input_length
 * makes of these is a bad line. */
#define TRACE_MIN_ID_TOKENS 16

/* Nonzero 64-bit keys to values, open addressing, grown at half full
 * (trace_conv.c): Bailian's chats to their first chat, Mooncake's prompts
 * to their conversation. */
typedef struct trace_map {
  uint64_t *key, *val;
  size_t cap, n;
} trace_map;
void trace_map_free(trace_map *m);
/* Where key is, or the empty slot where it goes (key[slot] == 0); cap > 0. */
size_t trace_map_slot(const trace_map *m, uint64_t key);
/* Room for one more key: 0, or -1 out of memory. */
int trace_map_reserve(trace_map *m);

/* The conversations of a Mooncake trace, which names none (trace_conv.c
 * says how they are found); chain[] filled. 0, or -1 out of memory. */
int trace_mooncake_conversations(sim_trace *t);

typedef struct trace_reader {
  sim_trace *t;
  int fmt;          /* TRACE_*, from the first line that gives a request */
  trace_map chats;  /* Bailian: chat id + 1 to its first chat */
  int col[3];       /* CSV: the columns of time, input and output */
  int ncols;        /* CSV: columns a line must have at least */
  int time_kind;    /* CSV: 0 not yet known, 1 dates and times, 2 seconds
                       (the first line's; a line of the other kind is bad) */
  int unknown_header; /* a line with 3+ fields that named no column: the
                         CSV rows after it are bad, not read as the first
                         three columns */
} trace_reader;

/* A JSONL line: its format from the first object line, until a line gives
 * a request (trace_read.c; Mooncake unless it names chat_id). Arrivals are in ns from the file's zero and
 * sessions are set for Bailian lines only. 0 read or skipped (counted),
 * -1 out of memory. */
int trace_jsonl_line(trace_reader *rd, const char *line, size_t len, size_t lineno);

/* A line that may be a CSV's first: 1 a header (its columns taken), 0 data
 * (the columns are time, input, output in that order), -1 a header that
 * names no time, input or output column (msg says which), -2 out of
 * memory. */
int trace_csv_header(trace_reader *rd, const char *line, char *msg, size_t msgcap);
/* A CSV line: 0 read or skipped (counted), -1 out of memory. Arrivals are
 * absolute ns (or s since the file's zero, as ns); every request is its own
 * session with blocks of its own. */
int trace_csv_line(trace_reader *rd, char *line, size_t lineno);

#endif
