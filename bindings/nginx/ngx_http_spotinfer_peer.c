/*
 * ngx_http_spotinfer: the balancer (the replica the library chose; after a
 * failed try, what proxy_next_upstream tries next, the replica the library
 * chooses when it routes the request again without those tried), the
 * header filter that keeps the status served, the body filter that sees
 * the first byte and counts the output tokens
 * (ngx_http_spotinfer_tokens.c), and the log phase that finishes the
 * ticket.
 */

#include "ngx_http_spotinfer.h"


static ngx_int_t ngx_http_spi_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us);
static ngx_int_t ngx_http_spi_get_peer(ngx_peer_connection_t *pc,
    void *data);
static void ngx_http_spi_free_peer(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state);
static ngx_int_t ngx_http_spi_unrouted(ngx_peer_connection_t *pc);
static ngx_uint_t ngx_http_spi_stale_failed(ngx_http_spi_ctx_t *ctx,
    ngx_peer_connection_t *pc, ngx_uint_t state);
static ngx_uint_t ngx_http_spi_answer_failed(ngx_http_spi_ctx_t *ctx,
    ngx_peer_connection_t *pc);
static void ngx_http_spi_answer_kept(ngx_http_spi_ctx_t *ctx);
static void ngx_http_spi_passed_over(ngx_http_spi_ctx_t *ctx,
    ngx_uint_t code);
static ngx_uint_t ngx_http_spi_timed_out(ngx_peer_connection_t *pc);
static void ngx_http_spi_stale_settle(ngx_http_spi_ctx_t *ctx,
    ngx_peer_connection_t *pc);
static ngx_uint_t ngx_http_spi_status(ngx_http_spi_ctx_t *ctx);
static ngx_int_t ngx_http_spi_header_filter(ngx_http_request_t *r);
static ngx_int_t ngx_http_spi_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


static ngx_http_output_header_filter_pt  ngx_http_next_header_filter;
static ngx_http_output_body_filter_pt    ngx_http_next_body_filter;


/* A server line before "spotinfer" was read with nginx's parameters
 * allowed; the balancer would ignore them (a server marked down would still
 * be routed to), so any that differs from nginx's default is refused, as
 * nginx refuses them on a server line after "spotinfer". */
static ngx_int_t
ngx_http_spi_check_params(ngx_conf_t *cf, ngx_http_spi_upstream_t *up,
    ngx_http_upstream_server_t *server)
{
    const char  *param;

    param = NULL;

    if (server->down) {
        param = "down";

    } else if (server->weight != 1) {
        param = "weight=";

    } else if (server->max_fails != 1) {
        param = "max_fails=";

    } else if (server->fail_timeout != 10) {
        param = "fail_timeout=";

    } else if (server->max_conns != 0) {
        param = "max_conns=";

    } else if (server->slow_start != 0) {
        param = "slow_start=";
    }

    if (param == NULL) {
        return NGX_OK;
    }

    ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                  "spotinfer: upstream \"%V\": server \"%V\" has \"%s\", "
                  "which a spotinfer upstream does not take (the library's "
                  "load reading, error breaker and fallbacks decide; a "
                  "replica out of rotation is removed or noticed)",
                  &up->name, &server->name, param);
    return NGX_ERROR;
}


static ngx_int_t
ngx_http_spi_match_server(ngx_conf_t *cf, ngx_http_spi_upstream_t *up,
    ngx_http_upstream_server_t *server)
{
    ngx_uint_t               j;
    ngx_http_spi_replica_t  *rep;

    rep = up->replicas.elts;

    for (j = 0; j < up->replicas.nelts; j++) {
        if (rep[j].server.len == server->name.len
            && ngx_strncmp(rep[j].server.data, server->name.data,
                           server->name.len) == 0)
        {
            break;
        }
    }

    if (j == up->replicas.nelts) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "spotinfer: upstream \"%V\": server \"%V\" has no "
                      "spotinfer_replica line (pool, zone, price)",
                      &up->name, &server->name);
        return NGX_ERROR;
    }

    if (server->backup || server->naddrs != 1 || rep[j].found) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "spotinfer: upstream \"%V\": server \"%V\" must be "
                      "one address, listed once and not a backup (the "
                      "library's fallbacks are the backups)",
                      &up->name, &server->name);
        return NGX_ERROR;
    }

    if (ngx_http_spi_check_params(cf, up, server) != NGX_OK) {
        return NGX_ERROR;
    }

    rep[j].sockaddr = server->addrs[0].sockaddr;
    rep[j].socklen = server->addrs[0].socklen;
    rep[j].name = server->addrs[0].name;
    rep[j].found = 1;

    return NGX_OK;
}


static ngx_int_t
ngx_http_spi_check_replicas(ngx_conf_t *cf, ngx_http_spi_upstream_t *up)
{
    ngx_uint_t               i, j;
    ngx_http_spi_replica_t  *rep;

    rep = up->replicas.elts;

    for (i = 0; i < up->replicas.nelts; i++) {
        if (!rep[i].found) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "spotinfer: upstream \"%V\": spotinfer_replica "
                          "\"%V\" names no server of the upstream",
                          &up->name, &rep[i].server);
            return NGX_ERROR;
        }

        for (j = 0; j < i; j++) {
            if (rep[j].id.len == rep[i].id.len
                && ngx_strncmp(rep[j].id.data, rep[i].id.data,
                               rep[i].id.len) == 0)
            {
                ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                              "spotinfer: upstream \"%V\": replica id "
                              "\"%V\" is used twice", &up->name, &rep[i].id);
                return NGX_ERROR;
            }
        }

        rep[i].scrape.up = up;
        rep[i].scrape.index = i;
    }

    return NGX_OK;
}


/* At configuration time: every server is a replica, and an engine built
 * from the configuration accepts them all (so "nginx -t" fails on what a
 * worker would fail on). */
ngx_int_t
ngx_http_spi_init_upstream(ngx_conf_t *cf, ngx_http_upstream_srv_conf_t *us)
{
    ngx_uint_t                   i;
    ngx_http_spi_srv_conf_t     *scf;
    ngx_http_spi_upstream_t     *up;
    ngx_http_upstream_server_t  *server;

    scf = ngx_http_conf_upstream_srv_conf(us, ngx_http_spotinfer_module);
    up = scf->up;

    if (us->servers == NULL || us->servers->nelts == 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "spotinfer: upstream \"%V\" has no servers", &up->name);
        return NGX_ERROR;
    }

    /* nginx's zone shares round robin peers between the workers, copied
     * from us->peer.data when the zone is made: a spotinfer upstream has
     * none (each worker's engine holds its replicas' state). */
    if (us->shm_zone != NULL) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "spotinfer: upstream \"%V\" cannot have a \"zone\" "
                      "(its replicas' state is each worker's engine's, not "
                      "round robin peers in shared memory)", &up->name);
        return NGX_ERROR;
    }

    server = us->servers->elts;

    for (i = 0; i < us->servers->nelts; i++) {
        if (ngx_http_spi_match_server(cf, up, &server[i]) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (ngx_http_spi_check_replicas(cf, up) != NGX_OK
        || ngx_http_spi_engine_open(up, cf->log) != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_http_spi_engine_close(up);

    us->peer.init = ngx_http_spi_init_peer;

    return NGX_OK;
}


static ngx_int_t
ngx_http_spi_init_peer(ngx_http_request_t *r,
    ngx_http_upstream_srv_conf_t *us)
{
    ngx_http_spi_ctx_t       *ctx;
    ngx_http_spi_srv_conf_t  *scf;

    scf = ngx_http_conf_upstream_srv_conf(us, ngx_http_spotinfer_module);
    /* A subrequest (mirror, SSI) has no decision of its own, and must not
     * take over the main request's tries and ticket. */
    ctx = ngx_http_spi_get_ctx(r);

    if (ctx != NULL && ctx->routed && ctx->up != scf->up) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "spotinfer: upstream \"%V\": the request was routed "
                      "through \"%V\" (a request is routed through one "
                      "upstream, internal redirects included)",
                      &scf->up->name, &ctx->up->name);
        return NGX_ERROR;
    }

    if (ctx == NULL || !ctx->routed) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "spotinfer: upstream \"%V\" is used by a location "
                      "without \"spotinfer_route %V\"",
                      &scf->up->name, &scf->up->name);
        return NGX_ERROR;
    }

    /* a failed try on a cached connection that nginx did not retry */
    ngx_http_spi_stale_settle(ctx, NULL);

    /* After an internal redirect (error_page to a location that proxies
     * here again) the request goes on where the first pass left it: the
     * replicas tried answered what sent the request there, so the next
     * pass routes it again without them, as proxy_next_upstream would,
     * within the tries left. With none left, nginx answers 502. A replica
     * that handed the request on without failing it (an X-Accel-Redirect,
     * a status below 400 sent to an error_page) is tried first again,
     * unrouted and without a ticket (its own ended with that answer). */
    if (ctx->again) {
        ctx->next = ctx->again - 1;
        ctx->again = 0;
        ctx->handed = 1;
    }

    /* A post_action that proxies here again runs after the answer was
     * served and before the log phase ends its ticket: it goes to the
     * replica that served, once, and neither ends that ticket nor routes
     * the request again (the answer, not this pass, is the try's). */
    if (r->post_action) {
        ctx->post = 1;
        ctx->handed = 1;
        ctx->next -= ctx->next > 0;
        ctx->tries = ctx->next + 1;
    }

    r->upstream->peer.data = ctx;
    r->upstream->peer.get = ngx_http_spi_get_peer;
    r->upstream->peer.free = ngx_http_spi_free_peer;
    r->upstream->peer.tries = ctx->tries - ctx->next;

    return NGX_OK;
}


static ngx_int_t
ngx_http_spi_get_peer(ngx_peer_connection_t *pc, void *data)
{
    ngx_http_spi_ctx_t      *ctx = data;
    ngx_http_upstream_t     *u;
    ngx_http_spi_replica_t  *rep;

    /* No replica left: nginx answers 502, and $upstream_addr names the
     * upstream for this try, as with nginx's own balancers. */
    pc->name = &ctx->up->name;

    ngx_http_spi_stale_settle(ctx, pc);

    if (ctx->next >= ctx->tries) {
        return NGX_BUSY;
    }

    if (ctx->next > 0 && !ctx->handed) {
        /* The try before was passed over (free_peer ended its ticket with
         * its outcome); a ticket still open here is one nginx did not
         * report failed, not counted as the replica's. */
        ngx_http_spi_ticket_end(ctx, SPI_TICKET_CANCELLED, 0);

        if (ngx_http_spi_reroute(ctx) != NGX_OK) {
            return ngx_http_spi_unrouted(pc);
        }
    }

    ctx->handed = 0;

    rep = ctx->up->replicas.elts;
    rep = &rep[ctx->tried[ctx->next++]];

    pc->sockaddr = rep->sockaddr;
    pc->socklen = rep->socklen;
    pc->name = &rep->name;
    pc->cached = 0;
    pc->connection = NULL;

    /* nginx clears the last try's answer once this try's connect() is
     * under way: a connect() that fails at once (a unix socket nobody
     * listens on, an unreachable network) is passed over with nothing
     * read, and must not be judged by that answer. */
    u = ctx->request->upstream;

    if (u != NULL) {
        u->headers_in.status_n = 0;
        u->headers_in.x_accel_redirect = NULL;
    }

    return NGX_OK;
}


/* A try the library placed nowhere (ngx_http_spi_reroute() logged why)
 * ends the tries. nginx answers 502 for a failed connection with no try
 * left, as it does for NGX_BUSY, but without the "no live upstreams"
 * error that NGX_BUSY logs: a live replica may be left, and the module's
 * line says why none was chosen. pc->cached is cleared because nginx
 * gives a try back for an error on a cached connection. */
static ngx_int_t
ngx_http_spi_unrouted(ngx_peer_connection_t *pc)
{
    pc->tries = 0;
    pc->cached = 0;

    return NGX_DECLINED;
}


/* A try's ticket ends with the try (a try handed back to the replica that
 * handed the request on has none). */
static void
ngx_http_spi_free_peer(ngx_peer_connection_t *pc, void *data,
    ngx_uint_t state)
{
    ngx_http_spi_ctx_t  *ctx = data;

    if (ngx_http_spi_stale_failed(ctx, pc, state)) {
        /* nginx may retry it on a new connection, giving back the try
         * after this call returns; the next get_peer sees whether it did
         * (ngx_http_spi_stale_settle), and the ticket stays open until
         * then */
        ctx->stale = 1;
        ctx->stale_code = ngx_http_spi_status(ctx);

    } else if (ctx->post) {
        /* a post_action pass: the served answer's ticket is the log
         * phase's */

    } else if (state == 0 && ngx_http_spi_answer_failed(ctx, pc)) {
        /* the client has the header and part of the answer, and its
         * status (a 200, say) would be the log phase's outcome */
        ngx_http_spi_ticket_end(ctx, SPI_TICKET_ERROR,
                                ngx_http_spi_status(ctx));

    } else if (state == 0) {
        ngx_http_spi_answer_kept(ctx);

    } else {
        ngx_http_spi_passed_over(ctx, ngx_http_spi_status(ctx));
    }

    if (pc->tries) {
        pc->tries--;
    }

    ctx->left = pc->tries;
}


/* Whether a try failed with an error on a kept-alive connection, which
 * nginx may send again on a new one. A post_action pass's too: nginx's
 * round robin has a try for that retry, and so does this balancer (the
 * same replica again). A timeout is the replica's failure: nginx gives
 * nothing back for it. */
static ngx_uint_t
ngx_http_spi_stale_failed(ngx_http_spi_ctx_t *ctx, ngx_peer_connection_t *pc,
    ngx_uint_t state)
{
    return pc->cached && (state & NGX_PEER_FAILED)
           && !ngx_http_spi_timed_out(pc)
           && ctx->stale_retries < NGX_HTTP_SPI_STALE_MAX;
}


/* A failed try on a cached connection (ctx->stale), at the next get_peer
 * (pc) or when nginx went on without one (NULL: an internal redirect, the
 * log phase). nginx gave the try back (pc->tries above what free_peer
 * left) when the connection failed with an error: a kept-alive connection
 * the replica had closed, which it retries on a new one. That is not a try
 * of the request: the same replica again, unrouted, on the same ticket and
 * not counted against ctx->tries. Otherwise (nginx's retry not taken)
 * the try failed, and its ticket ends as free_peer would have ended it;
 * a post_action pass has no ticket of its own to end. */
static void
ngx_http_spi_stale_settle(ngx_http_spi_ctx_t *ctx, ngx_peer_connection_t *pc)
{
    if (!ctx->stale) {
        return;
    }

    ctx->stale = 0;

    if (pc != NULL && pc->tries > ctx->left && ctx->next > 0) {
        ctx->stale_retries++;
        ctx->next--;
        ctx->handed = 1;
        return;
    }

    if (ctx->post) {
        return;
    }

    if (ctx->request->connection->error) {
        /* the client left before nginx tried again: not the replica's */
        ngx_http_spi_ticket_end(ctx, SPI_TICKET_CANCELLED, 0);
        return;
    }

    ngx_http_spi_passed_over(ctx, ctx->stale_code);
}


/* Whether the try's connection timed out (a read or a write). */
static ngx_uint_t
ngx_http_spi_timed_out(ngx_peer_connection_t *pc)
{
    ngx_connection_t  *c = pc->connection;

    return c != NULL && (c->read->timedout || c->write->timedout);
}


/* The status the replica answered this try, 0 for none. */
static ngx_uint_t
ngx_http_spi_status(ngx_http_spi_ctx_t *ctx)
{
    ngx_http_upstream_t  *u = ctx->request->upstream;

    return (u != NULL) ? u->headers_in.status_n : 0;
}


/* nginx leaves a try for the next replica (proxy_next_upstream): failed
 * (error, timeout, a 5xx or a 429 listed there) or, for a 403 or 404
 * listed there, not. An answer the replica gave is its outcome, as in the
 * log phase; the next replica's answer is not its work and must not end
 * its ticket. No answer, or one that failed after its header, is its
 * error. */
static void
ngx_http_spi_passed_over(ngx_http_spi_ctx_t *ctx, ngx_uint_t code)
{
    if (code < NGX_HTTP_BAD_REQUEST) {
        ngx_http_spi_ticket_end(ctx, SPI_TICKET_ERROR, code);
        return;
    }

    ngx_http_spi_ticket_end(ctx, ngx_http_spi_outcome(code), code);
}


/* Whether the replica failed an answer whose header nginx had sent on
 * (nginx frees the try with state 0 however it ended): its read or write
 * timed out, or the answer stopped short, the cases nginx ends with 502 or
 * 504 in ngx_http_upstream_process_non_buffered_request() (proxy_buffering
 * off) and ngx_http_upstream_process_request() (on). Without buffering,
 * u->length counts down what a Content-Length or chunked answer has left
 * (-1: it ends when the connection does); with buffering, the pipe says
 * whether it read to the answer's end. An answer nginx stopped sending
 * for the client (it left, timed out, or failed a write) is not the
 * replica's failure, nor is a header-only answer or an upgraded
 * connection. */
static ngx_uint_t
ngx_http_spi_answer_failed(ngx_http_spi_ctx_t *ctx, ngx_peer_connection_t *pc)
{
    ngx_event_pipe_t     *p;
    ngx_connection_t     *c = pc->connection;
    ngx_http_request_t   *r = ctx->request;
    ngx_http_upstream_t  *u = r->upstream;

    if (u == NULL || !u->header_sent || u->upgrade || r->header_only
        || r->connection->error || r->connection->timedout)
    {
        return 0;
    }

    if (ngx_http_spi_timed_out(pc)) {
        return 1;
    }

    if (!u->buffering) {
        /* nginx's order: an answer read to its end is finished, whatever
         * the connection does after (a reset while a slow client drains
         * the last buffers sets read->error, and nginx still ends the
         * request well). */
        if (u->length == 0) {
            return 0;
        }

        return u->length > 0 || u->error || (c != NULL && c->read->error);
    }

    p = u->pipe;

    return p != NULL && !p->downstream_error
           && (p->upstream_eof || p->upstream_error)
           && !(p->upstream_done || (p->upstream_eof && p->length == -1));
}


/* A replica answered, and nginx keeps the answer from the client:
 * proxy_intercept_errors hands its status to an error_page, or its
 * X-Accel-Redirect names what to serve instead. An internal redirect
 * follows, and what it serves is not the replica's work, so the try's
 * ticket ends here with the replica's own status (a 5xx is its error,
 * whatever the error page answers), and an answer that did not fail the
 * request sends a second pass through the balancer back to the replica
 * that gave it (ctx->again). An answer on its way to the client (the
 * header sent) is left to the log phase, as is a client that went away. */
static void
ngx_http_spi_answer_kept(ngx_http_spi_ctx_t *ctx)
{
    ngx_uint_t            code;
    ngx_http_request_t   *r = ctx->request;
    ngx_http_upstream_t  *u = r->upstream;

    if (u == NULL || u->header_sent || r->connection->error) {
        return;
    }

    code = u->headers_in.status_n;

    if (u->headers_in.x_accel_redirect != NULL
        || (code != 0 && code < NGX_HTTP_BAD_REQUEST))
    {
        ctx->again = ctx->next;
    }

    if (ctx->ticket != 0 && code != 0) {
        ngx_http_spi_ticket_end(ctx, ngx_http_spi_outcome(code), code);
    }
}


static int64_t
ngx_http_spi_now_us(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_MONOTONIC, &ts);

    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}


void
ngx_http_spi_ticket_mark(ngx_http_spi_ctx_t *ctx)
{
    ctx->routed_us = ngx_http_spi_now_us();
}


void
ngx_http_spi_ticket_end(ngx_http_spi_ctx_t *ctx, ngx_int_t status,
    ngx_uint_t http_status)
{
    int                rc;
    spi_ticket_result  res;

    if (ctx->ticket == 0 || ctx->up->engine == NULL) {
        ctx->ticket = 0;
        return;
    }

    ngx_memzero(&res, sizeof(spi_ticket_result));
    res.struct_size = sizeof(spi_ticket_result);
    res.status = (int32_t) status;
    res.output_tokens = ngx_http_spi_output_tokens(ctx);
    res.prompt_tokens = ctx->tokens.usage[NGX_HTTP_SPI_USAGE_PROMPT];
    res.cached_tokens = ctx->tokens.usage[NGX_HTTP_SPI_USAGE_CACHED];
    res.duration_ms = (double) (ngx_http_spi_now_us() - ctx->routed_us)
                      / 1000.0;

    if (ctx->first_byte_us) {
        res.ttft_ms = (double) (ctx->first_byte_us - ctx->routed_us) / 1000.0;
    }

    /* Counts come from the backend's answer: kept within what the library
     * takes (at most 1e9 output tokens, no more cached than prompt), and
     * when it still refuses them the ticket ends without them, so it is
     * never left open. */
    if (res.output_tokens > 1000000000) {
        res.output_tokens = 1000000000;
    }
    if (res.prompt_tokens && res.cached_tokens > res.prompt_tokens) {
        res.cached_tokens = res.prompt_tokens;
    }

    rc = spi_ticket_finish(ctx->up->engine, ctx->ticket, &res);
    if (rc == SPI_EINVAL || rc == SPI_ERANGE) {
        res.output_tokens = res.prompt_tokens = res.cached_tokens = 0;
        res.ttft_ms = 0;
        (void) spi_ticket_finish(ctx->up->engine, ctx->ticket, &res);
    }

    ctx->ticket = 0;
}


/* A ticket nothing was sent on, which the request never held: cancelled,
 * with nothing measured. */
void
ngx_http_spi_ticket_drop(ngx_http_spi_upstream_t *up, uint64_t ticket)
{
    spi_ticket_result  res;

    if (ticket == 0 || up->engine == NULL) {
        return;
    }

    ngx_memzero(&res, sizeof(spi_ticket_result));
    res.struct_size = sizeof(spi_ticket_result);
    res.status = SPI_TICKET_CANCELLED;

    (void) spi_ticket_finish(up->engine, ticket, &res);
}


void
ngx_http_spi_ticket_cleanup(void *data)
{
    ngx_http_spi_ctx_t  *ctx = data;

    ngx_http_spi_ticket_end(ctx, SPI_TICKET_CANCELLED, 0);
}


/* A status the replica answered (or nginx answered for it): OK below 500,
 * ERROR for a 5xx or none. */
ngx_int_t
ngx_http_spi_outcome(ngx_uint_t http_status)
{
    if (http_status == 0 || http_status >= NGX_HTTP_INTERNAL_SERVER_ERROR) {
        return SPI_TICKET_ERROR;
    }

    return SPI_TICKET_OK;
}


ngx_int_t
ngx_http_spi_log_handler(ngx_http_request_t *r)
{
    ngx_int_t            status;
    ngx_uint_t           code;
    ngx_http_spi_ctx_t  *ctx;

    ctx = ngx_http_spi_get_ctx(r);

    if (ctx == NULL) {
        return NGX_OK;
    }

    ngx_http_spi_stale_settle(ctx, NULL);

    if (ctx->ticket == 0) {
        return NGX_OK;
    }

    /* A post_action's answer, wherever it proxied, replaced the status
     * served in headers_out: the header filter kept the served one (0:
     * none was sent, as when nginx runs the post_action after an error
     * of its own). */
    code = r->post_action ? ctx->served : r->headers_out.status;

    /* The replica never got the request (an internal redirect, try_files
     * or another content handler took it first), or, in a post_action, no
     * answer of its went out: not its error. */
    if (r->connection->error || code == NGX_HTTP_CLIENT_CLOSED_REQUEST
        || (r->post_action && code == 0) || ctx->next == 0)
    {
        status = SPI_TICKET_CANCELLED;

    } else {
        status = ngx_http_spi_outcome(code);
    }

    ngx_http_spi_ticket_end(ctx, status, code);

    return NGX_OK;
}


ngx_int_t
ngx_http_spi_filter_init(ngx_conf_t *cf)
{
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_spi_header_filter;

    ngx_http_next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = ngx_http_spi_body_filter;

    return NGX_OK;
}


/* The status of the answer the client gets, kept for the log phase: a
 * post_action (nginx sends no header for it) proxying anywhere writes its
 * own answer's status over r->headers_out.status. */
static ngx_int_t
ngx_http_spi_header_filter(ngx_http_request_t *r)
{
    ngx_http_spi_ctx_t  *ctx;

    ctx = ngx_http_spi_get_ctx(r);

    if (ctx != NULL && !r->post_action) {
        ctx->served = r->headers_out.status;
    }

    return ngx_http_next_header_filter(r);
}


/* A stream's count (the backend's when it sends one, else estimated from
 * its text), a whole answer's "usage", else 0 (unknown). */
uint64_t
ngx_http_spi_output_tokens(ngx_http_spi_ctx_t *ctx)
{
    return ngx_http_spi_tokens_output(&ctx->tokens);
}


/* An answer the backend compressed (the client's Accept-Encoding passed
 * on) is not text the token reader can read: it is not counted (0,
 * unknown), rather than read as garbage, and the first such answer in a
 * worker says how to keep the backend's answers readable. */
static ngx_uint_t
ngx_http_spi_encoded(ngx_http_request_t *r, ngx_http_spi_ctx_t *ctx)
{
    ngx_table_elt_t  *ce;

    ce = r->upstream->headers_in.content_encoding;

    if (ce == NULL || ce->value.len == 0
        || (ce->value.len == 8
            && ngx_strncasecmp(ce->value.data, (u_char *) "identity", 8) == 0))
    {
        return 0;
    }

    if (!ctx->up->encoded_logged) {
        ctx->up->encoded_logged = 1;
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "spotinfer: upstream \"%V\": an answer came with "
                      "\"Content-Encoding: %V\", whose output tokens are "
                      "not counted: set proxy_set_header Accept-Encoding \"\" "
                      "where it is proxied (said once per worker)",
                      &ctx->up->name, &ce->value);
    }

    return 1;
}


static void
ngx_http_spi_first_body(ngx_http_request_t *r, ngx_http_spi_ctx_t *ctx)
{
    ngx_str_t  *ct;

    ctx->body_seen = 1;

    if (r->upstream == NULL || r->upstream->headers_in.status_n < 200
        || r->upstream->headers_in.status_n >= 300)
    {
        ctx->counting = 0;
        return;
    }

    if (ngx_http_spi_encoded(r, ctx)) {
        ctx->counting = 0;
        return;
    }

    ctx->counting = 1;
    ct = &r->headers_out.content_type;
    ngx_http_spi_tokens_init(&ctx->tokens,
                             ct->len >= 17
                             && ngx_strncasecmp(ct->data,
                                                (u_char *) "text/event-stream",
                                                17) == 0);
}


/* Whether the bytes of a buffer nginx spooled to a temporary file end a
 * line: one byte read back, so that a stream's reader after them starts
 * at the event that follows rather than skipping it. The file's offset is
 * nginx's own bookkeeping of its writes, and is left as it was. */
static int
ngx_http_spi_spooled_line_end(ngx_buf_t *b)
{
    u_char   c;
    off_t    offset;
    ssize_t  n;

    offset = b->file->offset;
    n = ngx_read_file(b->file, &c, 1, b->file_last - 1);
    b->file->offset = offset;

    return n == 1 && c == LF;
}


static void
ngx_http_spi_read_buf(ngx_http_spi_ctx_t *ctx, ngx_buf_t *b)
{
    if (!ngx_buf_in_memory(b)) {
        if (b->in_file && b->file_last > b->file_pos) {
            ngx_http_spi_tokens_gap(&ctx->tokens,
                                    ngx_http_spi_spooled_line_end(b));
        }

    } else if (b->last > b->pos) {
        if (ctx->first_byte_us == 0) {
            ctx->first_byte_us = ngx_http_spi_now_us();
            (void) spi_ticket_first_token(ctx->up->engine, ctx->ticket);
        }

        ngx_http_spi_tokens_read(&ctx->tokens, b->pos, b->last);
    }

    if (b->last_buf) {
        ngx_http_spi_tokens_end(&ctx->tokens);
    }
}


/* Reads the answer's buffers as they pass (they go on unchanged). Only
 * buffers in memory are read: one nginx spooled to a temporary file
 * (proxy_buffering on) passes unread, and the reader starts again at the
 * next line of a stream, or stops reading a whole answer. The library's
 * progress only grows: a backend's count below an earlier estimate waits
 * for the stream to pass it. */
static ngx_int_t
ngx_http_spi_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    uint64_t             n;
    ngx_chain_t         *cl;
    ngx_http_spi_ctx_t  *ctx;

    ctx = ngx_http_spi_get_ctx(r);

    if (ctx != NULL && !ctx->post) {
        /* Output goes to the client: a try left open on a kept-alive
         * connection was not tried again (nginx went on to an error page,
         * say), and ends before another answer counts on its ticket. */
        ngx_http_spi_stale_settle(ctx, NULL);
    }

    if (ctx == NULL || ctx->ticket == 0 || in == NULL || ctx->post) {
        return ngx_http_next_body_filter(r, in);
    }

    if (!ctx->body_seen) {
        ngx_http_spi_first_body(r, ctx);
    }

    if (!ctx->counting) {
        return ngx_http_next_body_filter(r, in);
    }

    for (cl = in; cl; cl = cl->next) {
        ngx_http_spi_read_buf(ctx, cl->buf);
    }

    n = ngx_min(ngx_http_spi_tokens_output(&ctx->tokens),
                (uint64_t) 1000000000);

    if (ctx->tokens.stream && n > ctx->progress) {
        ctx->progress = n;
        (void) spi_ticket_progress(ctx->up->engine, ctx->ticket, n);
    }

    return ngx_http_next_body_filter(r, in);
}
