/*
 * ngx_http_spotinfer: the routing decision, taken in the precontent phase
 * once the whole body is read (and again by the balancer for a try after
 * a failed one), and the answers when there is none (400, 429, 503 in the
 * OpenAI error shape).
 */

#include "ngx_http_spotinfer.h"


static void ngx_http_spi_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_spi_decide(ngx_http_request_t *r,
    ngx_http_spi_ctx_t *ctx, ngx_http_spi_loc_conf_t *lcf);


/* The main request's context. An internal redirect (error_page,
 * X-Accel-Redirect, a named location) and ngx_http_filter_finalize_request()
 * clear r->ctx; a routed request's context is still held by the pool
 * cleanup that would finish its ticket, and is found there again, as
 * ngx_http_realip_module finds its own. A subrequest shares the main
 * request's pool but never has a decision of its own. */
ngx_http_spi_ctx_t *
ngx_http_spi_get_ctx(ngx_http_request_t *r)
{
    ngx_pool_cleanup_t  *cln;
    ngx_http_spi_ctx_t  *ctx;

    if (r != r->main) {
        return NULL;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_spotinfer_module);

    if (ctx != NULL || !(r->internal || r->filter_finalize)) {
        return ctx;
    }

    for (cln = r->pool->cleanup; cln; cln = cln->next) {
        if (cln->handler == ngx_http_spi_ticket_cleanup) {
            ctx = cln->data;
            ngx_http_set_ctx(r, ctx, ngx_http_spotinfer_module);
            return ctx;
        }
    }

    return NULL;
}


ngx_int_t
ngx_http_spi_route_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_str_t                 msg;
    ngx_http_spi_ctx_t       *ctx;
    ngx_http_spi_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_spotinfer_module);

    if (lcf->route == NULL || r != r->main) {
        return NGX_DECLINED;
    }

    /* Reading the body, or routed: a request is routed here once, and
     * after an internal redirect its decision (and its ticket, finished
     * or not) stands, so a second location does not open a second ticket;
     * only the balancer routes it again, for a try after a failed one. */
    ctx = ngx_http_spi_get_ctx(r);
    if (ctx != NULL) {
        return ctx->phase_rc;
    }

    if (r->method != NGX_HTTP_POST) {
        rc = ngx_http_discard_request_body(r);
        if (rc != NGX_OK) {
            return rc;
        }

        ngx_str_set(&msg, "use POST");
        rc = ngx_http_spi_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                     "invalid_request_error", &msg, 0);
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_spi_ctx_t));
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->up = lcf->route;
    ctx->request = r;
    ctx->phase_rc = NGX_DONE;
    ngx_http_set_ctx(r, ctx, ngx_http_spotinfer_module);

    rc = ngx_http_read_client_request_body(r, ngx_http_spi_body_handler);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    ngx_http_finalize_request(r, NGX_DONE);

    return NGX_DONE;
}


static void
ngx_http_spi_body_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_http_spi_ctx_t       *ctx;
    ngx_http_spi_loc_conf_t  *lcf;

    ctx = ngx_http_get_module_ctx(r, ngx_http_spotinfer_module);
    lcf = ngx_http_get_module_loc_conf(r, ngx_http_spotinfer_module);

    rc = ngx_http_spi_decide(r, ctx, lcf);

    if (rc != NGX_DECLINED) {
        /* answered here (or failed): the phases do not go on */
        ctx->phase_rc = NGX_DONE;
        ngx_http_finalize_request(r, rc);
        return;
    }

    ctx->phase_rc = NGX_DECLINED;
    r->preserve_body = 1;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
}


/* The body in one piece: the buffered body is a chain of memory and file
 * buffers (a body over client_body_buffer_size is in a file). A body over
 * max bytes is not copied (client_max_body_size may let in far more than
 * the library takes): NGX_DECLINED, out->len its size. */
ngx_int_t
ngx_http_spi_read_body(ngx_http_request_t *r, ngx_str_t *out, off_t max)
{
    u_char       *p;
    off_t         size;
    ssize_t       n;
    ngx_buf_t    *b;
    ngx_chain_t  *cl;

    out->len = 0;
    out->data = NULL;

    if (r->request_body == NULL || r->request_body->bufs == NULL) {
        return NGX_OK;
    }

    size = 0;
    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        size += ngx_buf_size(cl->buf);
    }

    if (size > max) {
        out->len = (size_t) size;
        return NGX_DECLINED;
    }

    cl = r->request_body->bufs;

    if (cl->next == NULL && !cl->buf->in_file) {
        out->data = cl->buf->pos;
        out->len = cl->buf->last - cl->buf->pos;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, (size_t) size + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    out->data = p;

    for (cl = r->request_body->bufs; cl; cl = cl->next) {
        b = cl->buf;

        if (!b->in_file) {
            p = ngx_cpymem(p, b->pos, b->last - b->pos);
            continue;
        }

        n = ngx_read_file(b->file, p, (size_t) (b->file_last - b->file_pos),
                          b->file_pos);
        if (n != (ssize_t) (b->file_last - b->file_pos)) {
            return NGX_ERROR;
        }

        p += n;
    }

    out->len = p - out->data;

    return NGX_OK;
}


/* The index in up->replicas of the replica the library named, NGX_ERROR
 * when it is none of the upstream's. */
static ngx_int_t
ngx_http_spi_replica_index(ngx_http_spi_upstream_t *up, const char *id)
{
    size_t                   len;
    ngx_uint_t               j;
    ngx_http_spi_replica_t  *rep;

    rep = up->replicas.elts;
    len = ngx_strlen(id);

    for (j = 0; j < up->replicas.nelts; j++) {
        if (rep[j].id.len == len
            && ngx_strncmp(rep[j].id.data, id, len) == 0)
        {
            return (ngx_int_t) j;
        }
    }

    return NGX_ERROR;
}


/* The decision's replica takes the request's next try, with the
 * decision's ticket and a fresh reading of the answer. NGX_ERROR when the
 * replica is none of the upstream's: the decision's ticket is cancelled
 * (nothing was sent), and the request's ticket, tokens and first byte
 * stay what they were, so the variables still show the try before. */
static ngx_int_t
ngx_http_spi_take(ngx_http_spi_ctx_t *ctx, spi_decision *d)
{
    ngx_int_t  j;

    j = ngx_http_spi_replica_index(ctx->up, d->replica_id);

    if (j == NGX_ERROR) {
        ngx_http_spi_ticket_drop(ctx->up, d->ticket);
        return NGX_ERROR;
    }

    ctx->tried[ctx->next] = (ngx_uint_t) j;
    ctx->ticket = d->ticket;
    ctx->first_byte_us = 0;
    ctx->progress = 0;
    ctx->body_seen = 0;
    ctx->counting = 0;
    ngx_memzero(&ctx->tokens, sizeof(ngx_http_spi_tokens_t));
    ngx_http_spi_ticket_mark(ctx);

    return NGX_OK;
}


/* What the variables show of a decision. */
static void
ngx_http_spi_note(ngx_http_spi_ctx_t *ctx, spi_decision *d)
{
    ctx->decided = 1;
    ctx->klass = d->klass;
    ctx->reason = d->reason_code;
    ctx->matched_blocks = d->matched_blocks;
    ctx->total_blocks = d->total_blocks;
}


/* NGX_DECLINED when routed (the phases go on to proxy_pass); otherwise
 * what finalizes the request. */
static ngx_int_t
ngx_http_spi_decide(ngx_http_request_t *r, ngx_http_spi_ctx_t *ctx,
    ngx_http_spi_loc_conf_t *lcf)
{
    int                       st;
    ngx_int_t                 rc;
    ngx_str_t                 body, msg;
    spi_decision              d;
    ngx_pool_cleanup_t       *cln;
    ngx_http_spi_upstream_t  *up = ctx->up;

    if (up->engine == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_spi_read_body(r, &body, up->max_body);
    if (rc == NGX_DECLINED) {
        return ngx_http_spi_too_big(r, body.len, up->max_body);
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_http_spi_notice_sync(up);

    st = spi_request_parse_openai(up->req, (const char *) body.data, body.len,
                                  (int32_t) lcf->kind);
    if (st != SPI_OK) {
        msg.data = (u_char *) spi_request_errmsg(up->req);
        msg.len = ngx_strlen(msg.data);
        if (st == SPI_ENOMEM) {
            return ngx_http_spi_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                           "internal_error", &msg, 0);
        }
        if (st == SPI_ETOOBIG) {
            return ngx_http_spi_send_error(r,
                                           NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                           "invalid_request_error", &msg, 0);
        }
        return ngx_http_spi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_request_error", &msg, 0);
    }

    ngx_memzero(&d, sizeof(spi_decision));
    d.struct_size = sizeof(spi_decision);

    st = spi_route(up->req, &d);

    ngx_http_spi_note(ctx, &d);

    if (st == SPI_OK && d.pool != SPI_POOL_QUEUE) {
        /* kept for a try after a failed one, which routes it again */
        ctx->body = body;
        ctx->kind = lcf->kind;
        ctx->routed = 1;
        ctx->tries = 1 + ngx_min(d.n_fallbacks, SPI_MAX_FALLBACKS);

        if (ngx_http_spi_take(ctx, &d) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == NULL) {
            /* nothing was sent to the replica: not its error */
            ngx_http_spi_ticket_end(ctx, SPI_TICKET_CANCELLED, 0);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /* The balancer or the log phase finishes the ticket; this is for
         * a request that never gets that far (ended early), and what
         * finds the context again after an internal redirect. */
        cln->handler = ngx_http_spi_ticket_cleanup;
        cln->data = ctx;

        return NGX_DECLINED;
    }

    msg.data = (u_char *) d.reason;
    msg.len = ngx_strlen(d.reason);

    if (st == SPI_ESHED) {
        return ngx_http_spi_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                       "rate_limit_error", &msg, 1);
    }

    if (st == SPI_OK || st == SPI_ENOCAPACITY) {
        /* a queued (batch) request is not held here: it comes back later */
        return ngx_http_spi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable", &msg, 1);
    }

    /* The route's own message is the request's. */
    msg.data = (u_char *) spi_request_errmsg(up->req);
    msg.len = ngx_strlen(msg.data);

    if (st == SPI_EFULL) {
        /* every ticket is open: overload, not a fault here */
        return ngx_http_spi_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                       "unavailable", &msg, 1);
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "spotinfer: route failed: %s: %V", spi_strerror(st), &msg);

    return ngx_http_spi_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                   "internal_error", &msg, 0);
}


/* Every try after the first excludes the replicas tried before it: at most
 * the first decision's fallbacks. */
#if (SPI_MAX_FALLBACKS > SPI_MAX_EXCLUDED)
#error "spotinfer: a request cannot exclude every fallback it may try"
#endif


/* The body as it was routed, into up->req again, with every replica tried
 * so far excluded (one tried twice, having handed the request on, counts
 * once). */
static int
ngx_http_spi_parse_again(ngx_http_spi_ctx_t *ctx)
{
    int                      st;
    ngx_uint_t               i;
    ngx_str_t               *id;
    ngx_http_spi_replica_t  *rep;

    st = spi_request_parse_openai(ctx->up->req, (const char *) ctx->body.data,
                                  ctx->body.len, (int32_t) ctx->kind);

    rep = ctx->up->replicas.elts;

    for (i = 0; st == SPI_OK && i < ctx->next; i++) {
        id = &rep[ctx->tried[i]].id;
        st = spi_request_exclude_replica(ctx->up->req, (const char *) id->data,
                                         id->len);
    }

    return st;
}


/* Why a try was not routed: the library's answer (shed, no capacity,
 * queued, every ticket open) at info, a failure at warn. */
static void
ngx_http_spi_log_unrouted(ngx_http_spi_ctx_t *ctx, int st, spi_decision *d)
{
    ngx_uint_t   level;
    const char  *what, *why;

    level = NGX_LOG_INFO;
    what = (st == SPI_OK) ? "queued" : spi_strerror(st);
    why = d->reason;

    if (st == SPI_EFULL) {
        why = spi_request_errmsg(ctx->up->req);

    } else if (st != SPI_OK && st != SPI_ESHED && st != SPI_ENOCAPACITY) {
        level = NGX_LOG_WARN;
        why = spi_request_errmsg(ctx->up->req);
    }

    ngx_log_error(level, ctx->request->connection->log, 0,
                  "spotinfer: upstream \"%V\": try %ui of the request not "
                  "routed, no replica left to try: %s: %s",
                  &ctx->up->name, ctx->next + 1, what, why);
}


/* A try failed (its ticket ended), and nginx asks for the next: the
 * request is routed again with every replica tried so far excluded, so
 * this try has a ticket of its own, as the first had: the library counts
 * the replica's load while it serves, and its failure opens the replica's
 * breaker. up->req is this worker's: nothing runs between the parse and
 * the route, and nothing of it is used once spi_route() returns. NGX_OK
 * with the replica in ctx->tried[ctx->next]; NGX_DECLINED (logged) when
 * the library places the request nowhere. */
ngx_int_t
ngx_http_spi_reroute(ngx_http_spi_ctx_t *ctx)
{
    int                       st;
    spi_decision              d;
    ngx_http_spi_upstream_t  *up = ctx->up;

    if (up->engine == NULL) {
        return NGX_DECLINED;
    }

    ngx_http_spi_notice_sync(up);

    ngx_memzero(&d, sizeof(spi_decision));
    d.struct_size = sizeof(spi_decision);

    st = ngx_http_spi_parse_again(ctx);
    if (st == SPI_OK) {
        st = spi_route(up->req, &d);
    }

    if (st != SPI_OK || d.pool == SPI_POOL_QUEUE) {
        ngx_http_spi_log_unrouted(ctx, st, &d);
        return NGX_DECLINED;
    }

    if (ngx_http_spi_take(ctx, &d) != NGX_OK) {
        ngx_log_error(NGX_LOG_WARN, ctx->request->connection->log, 0,
                      "spotinfer: upstream \"%V\": try %ui routed to \"%s\", "
                      "which is no server of the upstream",
                      &up->name, ctx->next + 1, d.replica_id);
        return NGX_DECLINED;
    }

    ngx_http_spi_note(ctx, &d);

    return NGX_OK;
}


static u_char *
ngx_http_spi_json_escape(u_char *p, ngx_str_t *s)
{
    u_char      c;
    ngx_uint_t  i;

    static u_char  hex[] = "0123456789abcdef";

    for (i = 0; i < s->len; i++) {
        c = s->data[i];

        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = c;

        } else if (c < 0x20) {
            p = ngx_cpymem(p, "\\u00", 4);
            *p++ = hex[c >> 4];
            *p++ = hex[c & 0xf];

        } else {
            *p++ = c;
        }
    }

    return p;
}


static ngx_int_t
ngx_http_spi_retry_after(ngx_http_request_t *r)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Retry-After");
    ngx_str_set(&h->value, "1");

    return NGX_OK;
}


/* {"error":{"message":...,"type":...,"param":null,"code":null}} */
/* A body over the limit, unread: the 413 the library's parser would give. */
ngx_int_t
ngx_http_spi_too_big(ngx_http_request_t *r, size_t size, off_t max)
{
    ngx_str_t  msg;

    msg.data = ngx_pnalloc(r->pool, NGX_OFF_T_LEN * 2 + 64);
    if (msg.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    msg.len = ngx_sprintf(msg.data, "body: %uz bytes exceeds the limit of %O",
                          size, max)
              - msg.data;

    return ngx_http_spi_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                   "invalid_request_error", &msg, 0);
}


/* Whether nginx's error_page of the location takes the status (by the
 * test nginx applies to its own errors): the module then leaves the answer
 * to it, so that "error_page 429 503 = @fallback" works for the module's
 * answers too. */
static ngx_uint_t
ngx_http_spi_error_page(ngx_http_request_t *r, ngx_uint_t status)
{
    ngx_uint_t                 i;
    ngx_http_err_page_t       *page;
    ngx_http_core_loc_conf_t  *clcf;

    clcf = ngx_http_get_module_loc_conf(r, ngx_http_core_module);

    if (r->error_page || clcf->error_pages == NULL || r->uri_changes == 0) {
        return 0;
    }

    page = clcf->error_pages->elts;

    for (i = 0; i < clcf->error_pages->nelts; i++) {
        if (page[i].status == (ngx_int_t) status) {
            return 1;
        }
    }

    return 0;
}


/* The error in the OpenAI shape, or, when the location has an error_page
 * for its status, the status for nginx to finalize the request with. */
ngx_int_t
ngx_http_spi_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, ngx_str_t *msg, ngx_uint_t retry_after)
{
    u_char     *p;
    size_t      len;
    ngx_str_t   text;

    if (ngx_http_spi_error_page(r, status)) {
        return status;
    }

    len = sizeof("{\"error\":{\"message\":\"\",\"type\":\"\","
                 "\"param\":null,\"code\":null}}\n") - 1
          + msg->len * 6 + ngx_strlen(type);

    text.data = ngx_pnalloc(r->pool, len);
    if (text.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(text.data, "{\"error\":{\"message\":\"", 21);
    p = ngx_http_spi_json_escape(p, msg);
    p = ngx_sprintf(p, "\",\"type\":\"%s\",\"param\":null,\"code\":null}}\n",
                    type);
    text.len = p - text.data;

    if (retry_after && ngx_http_spi_retry_after(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_spi_send_text(r, status, "application/json", &text);
}
