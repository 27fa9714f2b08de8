/*
 * ngx_http_spotinfer: the output tokens of an answer, read as its buffers
 * pass through the body filter.
 *
 * Plain C with no nginx header, so the unit test and the fuzz target
 * (tests/unit/test_nginx_tokens.c, tests/fuzz/fuzz_nginx_tokens.c) build
 * it without an nginx tree.
 *
 * A stream's events are lines "data: {...}". Its count, as the Go gateway
 * counts (examples/gateway/tokens.go says why):
 *   - an event with "completion_tokens" (the usage so far, which vLLM and
 *     SGLang send in every event with stream_options.continuous_usage_stats,
 *     or the usage chunk at the end with include_usage) sets the count to
 *     the backend's;
 *   - any other event adds an estimate: the whitespace-separated words of
 *     its "content", "text" and reasoning strings, at least one for an
 *     event with output (text, or "tool_calls" that are not null). Role,
 *     finish and [DONE] lines add nothing. An object's reasoning is its
 *     "reasoning" (vLLM's newer name) when that is not empty, else its
 *     "reasoning_content": vLLM sends both with the same text while it
 *     keeps the old name, and the words count once.
 * A whole answer (not a stream) has only its usage read.
 *
 * Each byte is looked at once, in order, with a state of fixed size: a line
 * or a JSON string cut between two buffers goes on in the next one. A key
 * is a string followed by ":" (only its first bytes are kept, as many as the
 * longest key looked for); a string inside a value is never taken for a
 * key, and a JSON string cannot hold a raw newline, so a stream's line
 * always starts outside of one.
 */

#ifndef _NGX_HTTP_SPOTINFER_TOKENS_H_INCLUDED_
#define _NGX_HTTP_SPOTINFER_TOKENS_H_INCLUDED_


#include <stddef.h>
#include <stdint.h>


#define NGX_HTTP_SPI_KEY_MAX  17   /* "reasoning_content", "completion_tokens" */


/* What a text value's words count toward. */
enum {
    NGX_HTTP_SPI_WORDS_OUTPUT = 0,            /* "content", "text" */
    NGX_HTTP_SPI_WORDS_REASONING,
    NGX_HTTP_SPI_WORDS_REASONING_CONTENT,
    NGX_HTTP_SPI_WORDS_N
};


enum {
    NGX_HTTP_SPI_USAGE_PROMPT = 0,
    NGX_HTTP_SPI_USAGE_COMPLETION,
    NGX_HTTP_SPI_USAGE_CACHED,
    NGX_HTTP_SPI_USAGE_N
};


typedef struct {
    /* what was read */
    uint64_t       output;     /* a stream's output tokens so far */
    uint64_t       usage[NGX_HTTP_SPI_USAGE_N];   /* the last of each */
    unsigned       usage_found;                   /* bit k: usage[k] read */

    /* the event being read */
    uint64_t       ev_words[NGX_HTTP_SPI_WORDS_N];
    uint64_t       ev_completion;
    unsigned       ev_output;
    unsigned       ev_usage;
    unsigned       reasoning_depth;  /* of the object whose reasoning words
                                        are held; 0: none */
    unsigned       reasoning_said;   /* its "reasoning" was not empty */

    /* where the reader is: the line, then the JSON within it */
    unsigned       stream;
    unsigned       line;
    unsigned       lex;
    unsigned       key;        /* the key whose value comes next */
    unsigned       last_key;   /* the key a string just read would be */
    unsigned       text;       /* the string is a value whose words count */
    unsigned       words_of;   /* toward which: NGX_HTTP_SPI_WORDS_* */
    unsigned       depth;      /* of the objects and arrays open */
    unsigned       nonempty;
    unsigned       in_word;
    unsigned       seq_left;   /* UTF-8 continuation bytes still due */
    unsigned       seq_len;
    unsigned       hex;        /* \u digits read */
    uint32_t       cp;
    uint64_t       number;
    unsigned       number_key;
    unsigned       key_len;
    unsigned char  key_buf[NGX_HTTP_SPI_KEY_MAX];
} ngx_http_spi_tokens_t;


/* stream: the answer is text/event-stream. */
void ngx_http_spi_tokens_init(ngx_http_spi_tokens_t *t, int stream);
void ngx_http_spi_tokens_read(ngx_http_spi_tokens_t *t,
    const unsigned char *p, const unsigned char *last);
/* Bytes that passed unread (a buffer nginx spooled to a file): a stream
 * reads on from its next line, which is the next byte when line_end says
 * the bytes unread ended with a line feed; a whole answer is read no
 * further. */
void ngx_http_spi_tokens_gap(ngx_http_spi_tokens_t *t, int line_end);
/* The answer ended: a stream's last event counts without the line feed
 * that would have ended its line, when its JSON is whole. */
void ngx_http_spi_tokens_end(ngx_http_spi_tokens_t *t);
/* The answer's output tokens: a stream's count, else the usage's, else 0
 * (unknown). */
uint64_t ngx_http_spi_tokens_output(const ngx_http_spi_tokens_t *t);


#endif /* _NGX_HTTP_SPOTINFER_TOKENS_H_INCLUDED_ */
