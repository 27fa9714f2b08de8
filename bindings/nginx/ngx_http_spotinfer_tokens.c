/*
 * ngx_http_spotinfer: an answer's output tokens, read as it passes
 * (ngx_http_spotinfer_tokens.h says what is counted).
 */

#include <string.h>

#include "ngx_http_spotinfer_tokens.h"


/* Where a stream's line is: LINE_DATA bytes of "data:" matched so far
 * (0..4), then the spaces before the event, the event, or a line that is
 * none (a comment, "event:", "data: [DONE]"). A whole answer is one JSON
 * document; OFF: no more of it is read. */
enum {
    LINE_SPACE = 5,
    LINE_JSON,
    LINE_SKIP,
    LINE_OFF
};

enum {
    LEX_OUT = 0,    /* between JSON tokens */
    LEX_STR,
    LEX_ESC,        /* after a backslash in a string */
    LEX_HEX,        /* the digits of \uXXXX */
    LEX_NUM         /* the digits of a usage count */
};

enum {
    KEY_NONE = 0,
    KEY_CONTENT,
    KEY_TEXT,
    KEY_REASONING,
    KEY_REASONING_CONTENT,
    KEY_TOOL_CALLS,
    KEY_PROMPT,
    KEY_COMPLETION,
    KEY_CACHED
};


static const struct {
    const char  *name;
    size_t       len;
} ngx_http_spi_keys[] = {
    { "", 0 },
    { "content", 7 },
    { "text", 4 },
    { "reasoning", 9 },
    { "reasoning_content", 17 },
    { "tool_calls", 10 },
    { "prompt_tokens", 13 },
    { "completion_tokens", 17 },
    { "cached_tokens", 13 }
};


/* A usage count above this is kept at it: the module reports at most 1e9. */
#define NGX_HTTP_SPI_COUNT_MAX  UINT64_C(1000000000000)


static void ngx_http_spi_json(ngx_http_spi_tokens_t *t, unsigned c);


void
ngx_http_spi_tokens_init(ngx_http_spi_tokens_t *t, int stream)
{
    memset(t, 0, sizeof(ngx_http_spi_tokens_t));
    t->stream = (stream != 0);
    t->line = stream ? 0 : LINE_JSON;
}


/* What Go's unicode.IsSpace says is a space, as the gateway's estimate
 * splits words. */
static int
ngx_http_spi_is_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || cp == 0x20 || cp == 0x85
           || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a)
           || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f
           || cp == 0x3000;
}


/* One character of a text value: a word starts at a character that is not
 * a space after one that is (or at the string's start). */
static void
ngx_http_spi_char(ngx_http_spi_tokens_t *t, int space)
{
    if (space) {
        t->in_word = 0;

    } else if (!t->in_word) {
        t->in_word = 1;
        t->ev_words[t->words_of]++;
    }
}


/* A UTF-8 sequence cut short by the next byte: one character, not a space
 * (Go reads an invalid byte as U+FFFD). */
static void
ngx_http_spi_seq_broken(ngx_http_spi_tokens_t *t)
{
    if (t->seq_left) {
        t->seq_left = 0;
        ngx_http_spi_char(t, 0);
    }
}


/* A raw byte of a text value. A multi-byte space counts as one only in its
 * shortest form. */
static void
ngx_http_spi_text_byte(ngx_http_spi_tokens_t *t, unsigned c)
{
    static const uint32_t  shortest[5] = { 0, 0, 0x80, 0x800, 0x10000 };

    t->nonempty = 1;

    if (c < 0x80) {
        ngx_http_spi_seq_broken(t);
        ngx_http_spi_char(t, ngx_http_spi_is_space(c));
        return;
    }

    if (c < 0xc0) {
        if (t->seq_left == 0) {
            ngx_http_spi_char(t, 0);
            return;
        }

        t->cp = (t->cp << 6) | (c & 0x3f);

        if (--t->seq_left == 0) {
            ngx_http_spi_char(t, ngx_http_spi_is_space(t->cp)
                                 && t->cp >= shortest[t->seq_len]);
        }

        return;
    }

    ngx_http_spi_seq_broken(t);

    if (c >= 0xf8) {
        ngx_http_spi_char(t, 0);
        return;
    }

    t->seq_len = (c >= 0xf0) ? 4 : (c >= 0xe0) ? 3 : 2;
    t->seq_left = t->seq_len - 1;
    t->cp = c & (0x7f >> t->seq_len);
}


static unsigned
ngx_http_spi_key_of(const ngx_http_spi_tokens_t *t)
{
    unsigned  k;

    for (k = 1; k < sizeof(ngx_http_spi_keys) / sizeof(ngx_http_spi_keys[0]);
         k++)
    {
        if (t->key_len == ngx_http_spi_keys[k].len
            && memcmp(t->key_buf, ngx_http_spi_keys[k].name, t->key_len) == 0)
        {
            return k;
        }
    }

    return KEY_NONE;
}


static void
ngx_http_spi_string(ngx_http_spi_tokens_t *t, unsigned c)
{
    if (c == '"') {
        t->lex = LEX_OUT;

        if (t->text) {
            ngx_http_spi_seq_broken(t);
            t->ev_output |= t->nonempty;
            t->text = 0;

            if (t->words_of == NGX_HTTP_SPI_WORDS_REASONING) {
                t->reasoning_said |= t->nonempty;
            }
        }

        /* A key, if ":" comes next. */
        t->last_key = ngx_http_spi_key_of(t);
        return;
    }

    if (c == '\\') {
        t->lex = LEX_ESC;
        t->key_len = NGX_HTTP_SPI_KEY_MAX + 1;   /* no key has one */
        return;
    }

    if (t->key_len < NGX_HTTP_SPI_KEY_MAX) {
        t->key_buf[t->key_len++] = (unsigned char) c;

    } else {
        t->key_len = NGX_HTTP_SPI_KEY_MAX + 1;
    }

    if (t->text) {
        ngx_http_spi_text_byte(t, c);
    }
}


static void
ngx_http_spi_escape(ngx_http_spi_tokens_t *t, unsigned c)
{
    t->lex = LEX_STR;

    /* Only a text value's escapes matter: elsewhere what follows a
     * backslash is one more byte of the string (\uXXXX holds no quote). */
    if (!t->text) {
        return;
    }

    t->nonempty = 1;
    ngx_http_spi_seq_broken(t);

    switch (c) {

    case 'n':
    case 't':
    case 'r':
    case 'f':
        ngx_http_spi_char(t, 1);
        break;

    case 'u':
        t->lex = LEX_HEX;
        t->hex = 0;
        t->cp = 0;
        break;

    default:
        ngx_http_spi_char(t, 0);
    }
}


static void
ngx_http_spi_hex(ngx_http_spi_tokens_t *t, unsigned c)
{
    unsigned  v;

    if (c >= '0' && c <= '9') {
        v = c - '0';

    } else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') {
        v = (c | 0x20) - 'a' + 10;

    } else {
        /* Not JSON: the escape is one character, and c is read anew. */
        t->lex = LEX_STR;
        ngx_http_spi_char(t, 0);
        ngx_http_spi_string(t, c);
        return;
    }

    t->cp = (t->cp << 4) | v;

    if (++t->hex == 4) {
        t->lex = LEX_STR;
        ngx_http_spi_char(t, ngx_http_spi_is_space(t->cp));
    }
}


static void
ngx_http_spi_number_end(ngx_http_spi_tokens_t *t)
{
    switch (t->number_key) {

    case KEY_PROMPT:
        t->usage[NGX_HTTP_SPI_USAGE_PROMPT] = t->number;
        t->usage_found |= 1u << NGX_HTTP_SPI_USAGE_PROMPT;
        break;

    case KEY_CACHED:
        t->usage[NGX_HTTP_SPI_USAGE_CACHED] = t->number;
        t->usage_found |= 1u << NGX_HTTP_SPI_USAGE_CACHED;
        break;

    default: /* KEY_COMPLETION */
        t->usage[NGX_HTTP_SPI_USAGE_COMPLETION] = t->number;
        t->usage_found |= 1u << NGX_HTTP_SPI_USAGE_COMPLETION;
        t->ev_completion = t->number;
        t->ev_usage = 1;
    }

    t->lex = LEX_OUT;
}


/* The reasoning words of the object that held them: vLLM sends the same
 * text as "reasoning" and "reasoning_content" while it keeps the old name,
 * so they count once, as the Go gateway counts them (reasoningText in
 * examples/gateway/stream.go): "reasoning" when it is not empty, else
 * "reasoning_content". */
static void
ngx_http_spi_reasoning_end(ngx_http_spi_tokens_t *t)
{
    uint64_t  *w = t->ev_words;

    w[NGX_HTTP_SPI_WORDS_OUTPUT] += t->reasoning_said
                                    ? w[NGX_HTTP_SPI_WORDS_REASONING]
                                    : w[NGX_HTTP_SPI_WORDS_REASONING_CONTENT];
    w[NGX_HTTP_SPI_WORDS_REASONING] = 0;
    w[NGX_HTTP_SPI_WORDS_REASONING_CONTENT] = 0;
    t->reasoning_said = 0;
    t->reasoning_depth = 0;
}


/* A string value starts: the words of a stream's text values count, each
 * toward what its key says. */
static void
ngx_http_spi_string_start(ngx_http_spi_tokens_t *t, unsigned k)
{
    t->lex = LEX_STR;
    t->key_len = 0;
    t->text = t->stream && k >= KEY_CONTENT && k <= KEY_REASONING_CONTENT;
    t->nonempty = 0;
    t->in_word = 0;
    t->seq_left = 0;

    if (!t->text || k < KEY_REASONING) {
        t->words_of = NGX_HTTP_SPI_WORDS_OUTPUT;
        return;
    }

    /* Held until the object that has them closes (a choice's delta). */
    if (t->reasoning_depth != 0 && t->reasoning_depth != t->depth) {
        ngx_http_spi_reasoning_end(t);
    }

    t->reasoning_depth = t->depth;
    t->words_of = (k == KEY_REASONING) ? NGX_HTTP_SPI_WORDS_REASONING
                                       : NGX_HTTP_SPI_WORDS_REASONING_CONTENT;
}


/* An object or array opens or closes. */
static void
ngx_http_spi_nesting(ngx_http_spi_tokens_t *t, unsigned c)
{
    if (c == '{' || c == '[') {
        t->depth++;
        return;
    }

    if (c == '}' && t->reasoning_depth != 0
        && t->reasoning_depth == t->depth)
    {
        ngx_http_spi_reasoning_end(t);
    }

    if (t->depth) {
        t->depth--;
    }
}


/* A byte between tokens: the key a value belongs to is known at the ":"
 * after it and used by the value's first byte. */
static void
ngx_http_spi_structure(ngx_http_spi_tokens_t *t, unsigned c)
{
    unsigned  k;

    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
        return;
    }

    if (c == ':') {
        t->key = t->last_key;
        return;
    }

    k = t->key;
    t->key = KEY_NONE;
    t->last_key = KEY_NONE;

    if (c == '"') {
        ngx_http_spi_string_start(t, k);
        return;
    }

    if (c == '{' || c == '[' || c == '}' || c == ']') {
        ngx_http_spi_nesting(t, c);
    }

    if (k >= KEY_PROMPT && c >= '0' && c <= '9') {
        t->lex = LEX_NUM;
        t->number = c - '0';
        t->number_key = k;
        return;
    }

    if (k == KEY_TOOL_CALLS && c != 'n') {
        t->ev_output = 1;
    }
}


static void
ngx_http_spi_json(ngx_http_spi_tokens_t *t, unsigned c)
{
    switch (t->lex) {

    case LEX_STR:
        ngx_http_spi_string(t, c);
        return;

    case LEX_ESC:
        ngx_http_spi_escape(t, c);
        return;

    case LEX_HEX:
        ngx_http_spi_hex(t, c);
        return;

    case LEX_NUM:
        if (c >= '0' && c <= '9') {
            if (t->number < NGX_HTTP_SPI_COUNT_MAX) {
                t->number = t->number * 10 + (c - '0');
            }

            return;
        }

        ngx_http_spi_number_end(t);
        break;
    }

    ngx_http_spi_structure(t, c);
}


/* The event is whole: the backend's count when it sent one, else the
 * estimate added. */
static void
ngx_http_spi_event_end(ngx_http_spi_tokens_t *t)
{
    uint64_t  n;

    if (t->ev_usage) {
        t->output = t->ev_completion;
        return;
    }

    ngx_http_spi_reasoning_end(t);
    n = t->ev_words[NGX_HTTP_SPI_WORDS_OUTPUT];

    if (n == 0 && t->ev_output) {
        n = 1;
    }

    t->output += n;
}


/* A line starts with nothing of an event read; after a gap, so does a
 * line skipped to its end. */
static void
ngx_http_spi_line_start(ngx_http_spi_tokens_t *t, unsigned line)
{
    memset(t->ev_words, 0, sizeof(t->ev_words));
    t->ev_completion = 0;
    t->ev_output = 0;
    t->ev_usage = 0;
    t->reasoning_depth = 0;
    t->reasoning_said = 0;
    t->depth = 0;
    t->line = line;
    t->lex = LEX_OUT;
    t->key = KEY_NONE;
    t->last_key = KEY_NONE;
    t->text = 0;
    t->seq_left = 0;
}


void
ngx_http_spi_tokens_read(ngx_http_spi_tokens_t *t, const unsigned char *p,
    const unsigned char *last)
{
    unsigned  c;

    static const unsigned char  data[] = "data:";

    if (t->line == LINE_OFF) {
        return;
    }

    if (!t->stream) {
        for ( /* void */ ; p < last; p++) {
            ngx_http_spi_json(t, *p);
        }

        return;
    }

    for ( /* void */ ; p < last; p++) {
        c = *p;

        if (c == '\n') {
            if (t->line == LINE_JSON) {
                ngx_http_spi_event_end(t);
            }

            ngx_http_spi_line_start(t, 0);
            continue;
        }

        switch (t->line) {

        case LINE_JSON:
            ngx_http_spi_json(t, c);
            break;

        case LINE_SKIP:
            p = memchr(p, '\n', (size_t) (last - p));
            if (p == NULL) {
                return;
            }

            p--;
            break;

        case LINE_SPACE:
            if (c == '{') {
                t->line = LINE_JSON;
                ngx_http_spi_json(t, c);

            } else if (c != ' ') {
                t->line = LINE_SKIP;
            }

            break;

        default:
            t->line = (c == data[t->line]) ? t->line + 1 : LINE_SKIP;
        }
    }
}


void
ngx_http_spi_tokens_gap(ngx_http_spi_tokens_t *t, int line_end)
{
    if (!t->stream) {
        ngx_http_spi_line_start(t, LINE_OFF);
        return;
    }

    ngx_http_spi_line_start(t, line_end ? 0 : LINE_SKIP);
}


void
ngx_http_spi_tokens_end(ngx_http_spi_tokens_t *t)
{
    if (t->stream && t->line == LINE_JSON && t->lex == LEX_OUT
        && t->depth == 0)
    {
        ngx_http_spi_event_end(t);
    }

    ngx_http_spi_line_start(t, LINE_OFF);
}


uint64_t
ngx_http_spi_tokens_output(const ngx_http_spi_tokens_t *t)
{
    if (t->stream) {
        return t->output;
    }

    if (t->usage_found & (1u << NGX_HTTP_SPI_USAGE_COMPLETION)) {
        return t->usage[NGX_HTTP_SPI_USAGE_COMPLETION];
    }

    return 0;
}
