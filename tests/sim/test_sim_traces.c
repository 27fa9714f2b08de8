/*
 * test_sim_traces.c - the simulator's request-trace readers
 * (examples/sim/trace_read.c, trace_jsonl.c, trace_csv.c) on every format
 * they tell apart, from small inputs written here: Mooncake JSONL (ms,
 * 512-token ids, conversations past a global prompt), Qwen/Bailian JSONL (s, 16-token ids, conversations by
 * parent_chat_id), Azure CSV (2023 and 2024 timestamps), BurstGPT CSV (a
 * header in another order, failed requests), SplitwiseSim's and Vidur's
 * column names, headers that name no usable column, and first lines that
 * are cut or stray (bad lines, not the format). Exits 0 when every check
 * holds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sim_run.h"

static int fails;

static void check(int ok, const char *what) {
  if (!ok) {
    fprintf(stderr, "FAIL: %s\n", what);
    fails++;
  }
}

static const double MIX[4] = {0, 0.2, 0.5, 0.3};

/* Read text as a trace; 0 when it was read. */
static int read_text(sim_trace *t, const char *text, char *msg, size_t msgcap) {
  FILE *f = fmemopen((void *)text, strlen(text), "rb");
  if (!f) return -1;
  int rc = sim_trace_parse(t, f, "test", 0, MIX, 3, msg, msgcap);
  fclose(f);
  return rc;
}

static int same_block(const sim_trace *t, size_t a, size_t ka, size_t b, size_t kb) {
  return t->blocks[t->reqs[a].block_off + ka] == t->blocks[t->reqs[b].block_off + kb];
}

static void test_mooncake(void) {
  const char *text =
      "{\"timestamp\": 0, \"input_length\": 1000, \"output_length\": 5, \"hash_ids\": [1, 2]}\n"
      "{\"timestamp\": 1500, \"input_length\": 1100, \"output_length\": 7, \"hash_ids\": [1, 3, 4]}\n"
      "{\"timestamp\": 2000, \"input_length\": 20, \"hash_ids\": [9]}\n";
  sim_trace t;
  char msg[256];
  check(!read_text(&t, text, msg, sizeof msg), "mooncake: read");
  check(t.n == 2 && t.bad_lines == 1, "mooncake: the line without output_length skipped");
  check(!strcmp(t.format, "Mooncake JSONL") && t.file_block_tokens == 512, "mooncake: format");
  check(t.reqs[1].arrival_ns == 1500000000ll, "mooncake: timestamps in ms");
  sim_trace_speedup(&t, 2);
  check(t.reqs[0].arrival_ns == 0 && t.reqs[1].arrival_ns == 750000000ll,
        "--speedup 2: arrivals twice as early");
  sim_trace_speedup(&t, 0.5);
  check(t.reqs[1].arrival_ns == 1500000000ll, "--speedup 0.5: half as early");
  check(t.reqs[0].nblocks == 2 && t.reqs[1].nblocks == 3, "mooncake: one block an id");
  check(same_block(&t, 0, 0, 1, 0), "mooncake: equal ids, equal blocks");
  sim_trace_free(&t);
}

/* Mooncake names no conversation: it is the first block past the prompt
 * more than half the trace starts with (here block 0, a global system
 * prompt, as in Mooncake's conversation trace), or past two such blocks. */
static void test_mooncake_conversations(void) {
  const char *text =
      "{\"timestamp\": 0, \"input_length\": 1400, \"output_length\": 5, \"hash_ids\": [0, 1, 2]}\n"
      "{\"timestamp\": 10, \"input_length\": 1400, \"output_length\": 5, \"hash_ids\": [0, 7, 8]}\n"
      "{\"timestamp\": 20, \"input_length\": 2000, \"output_length\": 5, \"hash_ids\": [0, 1, 3, 4]}\n"
      "{\"timestamp\": 30, \"input_length\": 2000, \"output_length\": 5, \"hash_ids\": [0, 7, 8, 9]}\n"
      "{\"timestamp\": 40, \"input_length\": 300, \"output_length\": 5, \"hash_ids\": [0]}\n"
      "{\"timestamp\": 50, \"input_length\": 900, \"output_length\": 5, \"hash_ids\": [0, 11]}\n"
      "{\"timestamp\": 60, \"input_length\": 900, \"output_length\": 5, \"hash_ids\": [5, 12]}\n";
  sim_trace t;
  char msg[256];
  check(!read_text(&t, text, msg, sizeof msg) && t.n == 7, "conversations: read");
  const sim_trace_req *r = t.reqs;
  check(r[0].session == r[2].session, "conversations: A's turns are one conversation");
  check(r[1].session == r[3].session, "conversations: B's turns are one");
  check(r[0].session != r[1].session, "conversations: the global first block joins none");
  check(r[4].session != r[5].session && r[4].session != r[0].session &&
            r[5].session != r[0].session,
        "conversations: nothing past the global block, or one block, is its own");
  check(r[6].session != r[0].session && r[6].session != r[1].session,
        "conversations: a request without the global prompt");
  int same_class = 1;
  for (size_t i = 0; i < t.n; i++)
    for (size_t j = 0; j < t.n; j++)
      if (r[i].session == r[j].session && r[i].klass != r[j].klass) same_class = 0;
  check(same_class, "conversations: one class a conversation");
  sim_trace_free(&t);
  const char *two =
      "{\"timestamp\": 0, \"input_length\": 1400, \"output_length\": 5, \"hash_ids\": [3, 4, 1]}\n"
      "{\"timestamp\": 10, \"input_length\": 1400, \"output_length\": 5, \"hash_ids\": [3, 4, 2]}\n"
      "{\"timestamp\": 20, \"input_length\": 2000, \"output_length\": 5, \"hash_ids\": [3, 4, 1, 6]}\n"
      "{\"timestamp\": 30, \"input_length\": 1400, \"output_length\": 5, \"hash_ids\": [3, 4, 8]}\n"
      "{\"timestamp\": 40, \"input_length\": 1400, \"output_length\": 5, \"hash_ids\": [9, 10, 11]}\n"
      "{\"timestamp\": 50, \"input_length\": 1400, \"output_length\": 5, \"hash_ids\": [9, 10, 12]}\n";
  check(!read_text(&t, two, msg, sizeof msg) && t.n == 6, "conversations: read a two-block prompt");
  check(t.reqs[0].session == t.reqs[2].session && t.reqs[0].session != t.reqs[1].session,
        "conversations: past a global prompt of two blocks");
  check(t.reqs[4].session == t.reqs[5].session && t.reqs[4].session != t.reqs[0].session,
        "conversations: without the global prompt, the first block is the key");
  sim_trace_free(&t);
}

static void bailian_line(char *out, size_t cap, int chat, int parent, double ts, int in,
                         int first, int n) {
  int k = snprintf(out, cap,
                   "{\"chat_id\": %d, \"parent_chat_id\": %d, \"timestamp\": %.3f, "
                   "\"input_length\": %d, \"output_length\": 50, \"type\": \"text\", "
                   "\"turn\": 1, \"hash_ids\": [",
                   chat, parent, ts, in);
  for (int i = 0; i < n; i++) k += snprintf(out + k, cap - (size_t)k, "%s%d", i ? ", " : "", first + i);
  snprintf(out + k, cap - (size_t)k, "]}\n");
}

static void test_bailian(void) {
  static char text[16384];
  size_t k = 0;
  /* chat 7 (600 tokens: 38 ids), its follow-up 8 (1100 tokens: 69 ids
   * sharing the first 38), an unrelated chat 9 whose first 20 ids are the
   * same as chat 7's (a shared system prompt shorter than a block). */
  bailian_line(text + k, sizeof text - k, 7, -1, 61.114, 600, 1000, 38);
  k = strlen(text);
  bailian_line(text + k, sizeof text - k, 8, 7, 65.5, 1100, 1000, 69);
  k = strlen(text);
  bailian_line(text + k, sizeof text - k, 9, -1, 62.0, 600, 1000, 20);
  k = strlen(text);
  snprintf(text + k, sizeof text - k, "{\"chat_id\": \"x\", \"timestamp\": 1}\n");
  sim_trace t;
  char msg[256];
  check(!read_text(&t, text, msg, sizeof msg), "bailian: read");
  check(t.n == 3 && t.bad_lines == 1, "bailian: a chat_id that is not an id is a bad line");
  check(!strcmp(t.format, "Bailian JSONL") && t.file_block_tokens == 16, "bailian: 16-token ids found");
  /* In arrival order: chat 7 at 0 s, chat 9 at 0.886 s, chat 8 at 4.386 s. */
  check(t.reqs[0].arrival_ns == 0 && t.reqs[1].arrival_ns == 886000000ll &&
            t.reqs[2].arrival_ns == 4386000000ll,
        "bailian: timestamps in s, from the first arrival");
  check(t.reqs[0].nblocks == 2 && t.reqs[2].nblocks == 3, "bailian: 32 ids make a 512-token block");
  check(same_block(&t, 0, 0, 2, 0), "bailian: a follow-up shares its parent's full block");
  check(!same_block(&t, 0, 1, 2, 1), "bailian: a short last group is not a full one");
  check(t.reqs[1].nblocks == 1 && !same_block(&t, 0, 0, 1, 0),
        "bailian: 20 shared ids are not a shared block");
  check(t.reqs[0].session == t.reqs[2].session && t.reqs[0].session != t.reqs[1].session,
        "bailian: a conversation follows parent_chat_id");
  check(t.reqs[0].klass == t.reqs[2].klass, "bailian: a conversation keeps its class");
  sim_trace_free(&t);
}

static void test_azure(void) {
  const char *text = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                     "2023-11-16 18:17:03.9799600,4808,10\n"
                     "2023-11-16 18:17:04.0319600,3180,8\n"
                     "2023-11-16 18:17:05,bad,8\n";
  sim_trace t;
  char msg[256];
  check(!read_text(&t, text, msg, sizeof msg), "azure 2023: read");
  check(t.n == 2 && t.bad_lines == 1, "azure 2023: a bad count skipped");
  check(t.reqs[1].arrival_ns == 52000000ll, "azure 2023: fractions of a second");
  check(t.reqs[0].nblocks == 10 && t.reqs[0].session != t.reqs[1].session,
        "azure 2023: own blocks, own sessions");
  sim_trace_free(&t);
  /* The 2024 traces write an offset; an hour apart in local time is the
   * same instant here. */
  text = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
         "2024-05-10 00:00:00.009930+00:00,2162,5\n"
         "2024-05-10T01:00:02.5+01:00,300,9\n"
         "2024-05-10 00:00:03Z,10,1\n";
  check(!read_text(&t, text, msg, sizeof msg), "azure 2024: read");
  check(t.n == 3 && t.bad_lines == 0, "azure 2024: offsets and T read");
  check(t.reqs[1].arrival_ns == 2490070000ll && t.reqs[2].arrival_ns == 2990070000ll,
        "azure 2024: offsets applied");
  sim_trace_free(&t);
}

static void test_burstgpt(void) {
  const char *text = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                     "5,ChatGPT,472,18,490,Conversation log\n"
                     "45,ChatGPT,1087,0,1087,Conversation log\n"
                     "12.5,GPT-4,100,200,300,API log\n"
                     "13,GPT-4\n";
  sim_trace t;
  char msg[256];
  check(!read_text(&t, text, msg, sizeof msg), "burstgpt: read");
  check(t.n == 2 && t.bad_lines == 2, "burstgpt: a failed request and a short line skipped");
  check(!strcmp(t.format, "CSV"), "burstgpt: format");
  check(t.reqs[1].arrival_ns == 7500000000ll && t.reqs[1].in_tokens == 100 &&
            t.reqs[1].out_tokens == 200,
        "burstgpt: columns found by name, times in s");
  check(strstr(t.first_bad, "line 3") && strstr(t.first_bad, "failed"), "burstgpt: why");
  sim_trace_free(&t);
}

/* Simulators' inputs: SplitwiseSim's columns (times in seconds, other
 * columns around them) and Vidur's. */
static void test_simulator_inputs(void) {
  const char *text = "request_id,request_type,application_id,arrival_timestamp,"
                     "batch_size,prompt_size,token_size\n"
                     "0,2,0,0.25,1,1020,129\n"
                     "1,2,0,1.5,1,300,12\n";
  sim_trace t;
  char msg[256];
  check(!read_text(&t, text, msg, sizeof msg), "splitwise: read");
  check(t.n == 2 && t.reqs[1].arrival_ns == 1250000000ll && t.reqs[0].in_tokens == 1020 &&
            t.reqs[0].out_tokens == 129,
        "splitwise: arrival_timestamp, prompt_size, token_size");
  sim_trace_free(&t);
  text = "arrived_at,num_prefill_tokens,num_decode_tokens\n"
         "0.0,512,64\n"
         "0.4,2048,16\n";
  check(!read_text(&t, text, msg, sizeof msg), "vidur: read");
  check(t.n == 2 && t.reqs[1].in_tokens == 2048 && t.reqs[1].out_tokens == 16,
        "vidur: arrived_at, num_prefill_tokens, num_decode_tokens");
  sim_trace_free(&t);
}

static void test_unusable(void) {
  sim_trace t;
  char msg[256] = "";
  check(read_text(&t, "when,prompt,answer\n1,2,3\n", msg, sizeof msg) &&
            strstr(msg, "names no time column"),
        "a header without a time column is refused with its reason");
  check(read_text(&t, "{\"timestamp\": 1}\n", msg, sizeof msg) && strstr(msg, "no usable request"),
        "a file of bad lines is refused");
  check(read_text(&t, "", msg, sizeof msg) && msg[0], "an empty file is refused");
  /* Without a header the columns are time, input, output. */
  check(!read_text(&t, "2023-11-16 18:17:03,100,5\n", msg, sizeof msg) && t.n == 1,
        "a CSV without a header");
  sim_trace_free(&t);
}

/* The format is the first line's that reads as one: a first line cut in
 * half (a trace's tail) or a stray line is a bad line, not the format. */
static void test_first_line(void) {
  const char *good =
      "{\"timestamp\": 0, \"input_length\": 1000, \"output_length\": 5, \"hash_ids\": [1, 2]}\n"
      "{\"timestamp\": 1500, \"input_length\": 1100, \"output_length\": 7, \"hash_ids\": [1, 3, 4]}\n";
  static const char *const firsts[4] = {
      "97]}\n",                                                      /* digits: a CSV row? */
      "put_length\": 10, \"output_length\": 5, \"hash_ids\": [1]}\n", /* fields: a header? */
      "garbage here\n",
      "{\"timestamp\": 0, \"input_len\n",                           /* JSON, cut */
  };
  char text[1024], msg[256] = "";
  for (int k = 0; k < 4; k++) {
    sim_trace t;
    snprintf(text, sizeof text, "%s%s", firsts[k], good);
    int rc = read_text(&t, text, msg, sizeof msg);
    check(!rc, "first line: the file is read");
    if (rc) {
      fprintf(stderr, "  after %s  %s\n", firsts[k], msg);
      continue;
    }
    check(t.n == 2 && t.bad_lines == 1 && !strncmp(t.first_bad, "line 1:", 7),
          "first line: counted as a bad line");
    check(!strcmp(t.format, "Mooncake JSONL") && t.file_block_tokens == 512,
          "first line: the rest read as Mooncake");
    sim_trace_free(&t);
  }
  /* A Qwen/Bailian trace's cut first line does not make it Mooncake. */
  sim_trace t;
  snprintf(text, sizeof text, "%s%s", "d\": 3, \"timestamp\": 1}\n",
           "{\"chat_id\": 1, \"parent_chat_id\": -1, \"timestamp\": 1, \"input_length\": 32, "
           "\"output_length\": 4, \"hash_ids\": [1, 2]}\n");
  check(!read_text(&t, text, msg, sizeof msg) && t.n == 1 && !strcmp(t.format, "Bailian JSONL"),
        "first line: a cut Bailian line");
  sim_trace_free(&t);
  /* A CSV after a stray line: its header still names the columns. */
  check(!read_text(&t, "exported by tool\nTIMESTAMP,ContextTokens,GeneratedTokens\n"
                       "2023-11-16 18:17:03,100,5\n2023-11-16 18:17:04,200,6\n",
                   msg, sizeof msg) &&
            t.n == 2 && t.bad_lines == 1 && !strcmp(t.format, "CSV"),
        "first line: a stray line before a CSV header");
  sim_trace_free(&t);
  /* A headerless CSV's tail whose first line is cut in its time (three
   * fields, not a row): the rows after it are read. A stray note with
   * commas and digits does not make them rows of an unknown header. */
  static const char *const cuts[2] = {"-16 18:56:48.4634000,849,85\n",
                                      "note: exported by tool, v2, 2024\n"};
  for (int k = 0; k < 2; k++) {
    snprintf(text, sizeof text, "%s%s", cuts[k],
             "2023-11-16 18:17:03,100,5\n2023-11-16 18:17:04,200,6\n");
    check(!read_text(&t, text, msg, sizeof msg) && t.n == 2 && t.bad_lines == 1 &&
              !strcmp(t.format, "CSV"),
          "first line: a CSV row cut in its time, or a note, before the rows");
    if (t.n != 2) fprintf(stderr, "  after %s  %s\n", cuts[k], msg);
    sim_trace_free(&t);
  }
  /* With no usable request, the reason: how many lines were bad and why
   * the first was. */
  check(read_text(&t, "{oops\n{\"timestamp\": 1}\n", msg, sizeof msg) &&
            strstr(msg, "no usable request") && strstr(msg, "2 bad lines") &&
            strstr(msg, "line 1: malformed JSON"),
        "no usable request: the count and the first reason");
  if (!strstr(msg, "2 bad lines")) fprintf(stderr, "  got: %s\n", msg);
}

/* The targets program's spot sets: each file prefixed with the cloud its
 * set's name says. */
static void test_spot_sets(void) {
  char dir[] = "/tmp/spi-spot-XXXXXX", path[600];
  if (!mkdtemp(dir)) {
    check(0, "spot sets: a temporary directory");
    return;
  }
  static const char *const sets[3] = {"aws-v100", "azure-nc24", "gcp-c3"};
  for (int k = 0; k < 3; k++) {
    snprintf(path, sizeof path,
             "mkdir -p %s/spot/%s && echo '{\"metadata\": {\"gap_seconds\": 60}, "
             "\"data\": [1, 0, 1]}' > %s/spot/%s/z%d.json",
             dir, sets[k], dir, sets[k], k);
    check(system(path) == 0, "spot sets: files made");
  }
  /* One the spot reader cannot use: left out, the others kept. */
  snprintf(path, sizeof path, "echo '{}' > %s/spot/gcp-c3/z9.json", dir);
  check(system(path) == 0, "spot sets: a file without data made");
  char out[SIM_MAX_ZONES][512];
  size_t n = sim_list_spot(dir, out, SIM_MAX_ZONES);
  check(n == 3 && !strncmp(out[0], "aws:", 4) && !strncmp(out[1], "azure:", 6) &&
            !strncmp(out[2], "gcp:", 4),
        "spot sets: the cloud from the set's name, an unusable file left out");
  snprintf(path, sizeof path, "rm -rf %s", dir);
  check(system(path) == 0, "spot sets: cleaned up");
}

int main(void) {
  test_mooncake();
  test_mooncake_conversations();
  test_bailian();
  test_azure();
  test_burstgpt();
  test_simulator_inputs();
  test_unusable();
  test_first_line();
  test_spot_sets();
  if (fails) fprintf(stderr, "%d check(s) failed\n", fails);
  else printf("trace readers: every check holds\n");
  return fails ? 1 : 0;
}
