/*
 * trace_read.h - what the request-trace readers share (trace_read.c reads
 * a file and finishes the trace, trace_jsonl.c reads JSONL lines,
 * trace_csv.c CSV lines). Private to the simulator.
 */
#ifndef SPOTINFER_SIM_TRACE_READ_H
#define SPOTINFER_SIM_TRACE_READ_H

#include "sim.h"

enum { TRACE_UNKNOWN, TRACE_MOONCAKE, TRACE_BAILIAN, TRACE_CSV };

/* Each chat's conversation (its first chat), by chat id: Bailian's
 * parent_chat_id chains. Open addressing; key 0 is stored as ~0. */
typedef struct trace_chats {
  uint64_t *key, *root;
  size_t cap, n;
} trace_chats;

typedef struct trace_reader {
  sim_trace *t;
  int fmt;          /* TRACE_*, from the first line */
  trace_chats chats;
  int col[3];       /* CSV: the columns of time, input and output */
  int ncols;        /* CSV: columns a line must have at least */
} trace_reader;

/* A JSONL line: its format from the first line that is an object (Mooncake
 * unless it names chat_id). Arrivals are in ns from the file's zero and
 * sessions are set for Bailian lines only. 0 read or skipped (counted),
 * -1 out of memory. */
int trace_jsonl_line(trace_reader *rd, const char *line, size_t len, size_t lineno);
void trace_chats_free(trace_chats *c);

/* The first line of a CSV: 1 a header (its columns taken), 0 data (the
 * columns are time, input, output in that order), -1 a header that names
 * no time, input or output column (msg says which). */
int trace_csv_header(trace_reader *rd, const char *line, char *msg, size_t msgcap);
/* A CSV line: 0 read or skipped (counted), -1 out of memory. Arrivals are
 * absolute ns (or s since the file's zero, as ns); every request is its own
 * session with blocks of its own. */
int trace_csv_line(trace_reader *rd, char *line, size_t lineno);

#endif
