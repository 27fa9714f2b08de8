/*
 * ngx_http_spotinfer: each worker reads every replica's /metrics (vLLM or
 * SGLang names) on nginx's event loop and hands the text to its engine. A
 * replica that stops answering is not reported, so its reading ages and
 * the library counts it saturated.
 */

#include "ngx_http_spotinfer.h"


static void ngx_http_spi_scrape_write(ngx_event_t *wev);
static void ngx_http_spi_scrape_read(ngx_event_t *rev);


static void
ngx_http_spi_scrape_close(ngx_http_spi_scrape_t *s)
{
    if (s->pc.connection) {
        ngx_close_connection(s->pc.connection);
        s->pc.connection = NULL;
    }

    s->busy = 0;
}


/* A replica that stops answering is logged once, and once when it is
 * back, not on every read. */
static void
ngx_http_spi_scrape_result(ngx_http_spi_scrape_t *s, const char *failure)
{
    ngx_http_spi_replica_t  *rep;

    rep = s->up->replicas.elts;
    rep = &rep[s->index];

    if (failure != NULL && !s->failing) {
        ngx_log_error(NGX_LOG_WARN, s->up->log, 0,
                      "spotinfer: replica \"%V\" (%V/metrics): %s; its load "
                      "reading goes stale", &rep->id, &rep->name, failure);

    } else if (failure == NULL && s->failing) {
        ngx_log_error(NGX_LOG_NOTICE, s->up->log, 0,
                      "spotinfer: replica \"%V\" (%V/metrics) answers again",
                      &rep->id, &rep->name);
    }

    s->failing = (failure != NULL);
}


static void
ngx_http_spi_scrape_fail(ngx_http_spi_scrape_t *s, const char *failure)
{
    ngx_http_spi_scrape_close(s);
    ngx_http_spi_scrape_result(s, failure);
}


/* The request's Host: the replica's address, or "localhost" for a unix
 * socket (a server like nginx refuses "unix:/path", a path in a host
 * name, with 400). */
static ngx_int_t
ngx_http_spi_scrape_prepare(ngx_http_spi_replica_t *rep)
{
    ngx_str_t               host;
    ngx_http_spi_scrape_t  *s = &rep->scrape;

    if (s->buf != NULL) {
        return NGX_OK;
    }

    host = rep->name;

#if (NGX_HAVE_UNIX_DOMAIN)
    if (rep->sockaddr->sa_family == AF_UNIX) {
        ngx_str_set(&host, "localhost");
    }
#endif

    s->cap = 64 * 1024;
    s->buf = ngx_alloc(s->cap, s->up->log);
    if (s->buf == NULL) {
        return NGX_ERROR;
    }

    s->request.len = sizeof("GET /metrics HTTP/1.0\r\nHost: \r\n"
                            "Connection: close\r\n\r\n") - 1 + host.len;
    s->request.data = ngx_alloc(s->request.len, s->up->log);
    if (s->request.data == NULL) {
        ngx_free(s->buf);
        s->buf = NULL;
        return NGX_ERROR;
    }

    ngx_sprintf(s->request.data,
                "GET /metrics HTTP/1.0\r\nHost: %V\r\nConnection: close\r\n\r\n",
                &host);

    return NGX_OK;
}


void
ngx_http_spi_scrape_start(ngx_http_spi_replica_t *rep)
{
    ngx_int_t               rc;
    ngx_connection_t       *c;
    ngx_http_spi_scrape_t  *s = &rep->scrape;

    if (s->busy || ngx_http_spi_scrape_prepare(rep) != NGX_OK) {
        return;
    }

    ngx_memzero(&s->pc, sizeof(ngx_peer_connection_t));
    s->pc.sockaddr = rep->sockaddr;
    s->pc.socklen = rep->socklen;
    s->pc.name = &rep->name;
    s->pc.get = ngx_event_get_peer;
    s->pc.log = s->up->log;
    s->pc.log_error = NGX_ERROR_INFO;
    s->len = 0;
    s->sent = 0;

    rc = ngx_event_connect_peer(&s->pc);

    if (rc == NGX_ERROR || rc == NGX_BUSY || rc == NGX_DECLINED) {
        ngx_http_spi_scrape_fail(s, "cannot connect");
        return;
    }

    s->busy = 1;
    c = s->pc.connection;
    c->data = s;
    c->read->handler = ngx_http_spi_scrape_read;
    c->write->handler = ngx_http_spi_scrape_write;

    ngx_add_timer(c->write, NGX_HTTP_SPI_SCRAPE_TIMEOUT);
    ngx_add_timer(c->read, NGX_HTTP_SPI_SCRAPE_TIMEOUT);

    if (rc == NGX_OK) {
        ngx_http_spi_scrape_write(c->write);
    }
}


void
ngx_http_spi_scrape_stop(ngx_http_spi_replica_t *rep)
{
    ngx_http_spi_scrape_close(&rep->scrape);

    if (rep->scrape.buf) {
        ngx_free(rep->scrape.buf);
        rep->scrape.buf = NULL;
    }

    if (rep->scrape.request.data) {
        ngx_free(rep->scrape.request.data);
        rep->scrape.request.data = NULL;
    }
}


static void
ngx_http_spi_scrape_write(ngx_event_t *wev)
{
    ssize_t                 n;
    ngx_connection_t       *c = wev->data;
    ngx_http_spi_scrape_t  *s = c->data;

    if (wev->timedout) {
        ngx_http_spi_scrape_fail(s, "timed out");
        return;
    }

    while (s->sent < s->request.len) {
        n = c->send(c, s->request.data + s->sent, s->request.len - s->sent);

        if (n == NGX_AGAIN) {
            if (ngx_handle_write_event(wev, 0) != NGX_OK) {
                ngx_http_spi_scrape_fail(s, "event error");
            }

            return;
        }

        if (n <= 0) {
            ngx_http_spi_scrape_fail(s, "cannot send");
            return;
        }

        s->sent += n;
    }

    if (wev->timer_set) {
        ngx_del_timer(wev);
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_spi_scrape_fail(s, "event error");
    }
}


/* "HTTP/1.x 200 ..." then the body after the blank line. */
static void
ngx_http_spi_scrape_done(ngx_http_spi_scrape_t *s)
{
    u_char                  *p, *last;
    ngx_http_spi_replica_t  *rep;

    last = s->buf + s->len;
    rep = s->up->replicas.elts;
    rep = &rep[s->index];

    if (s->len < 12 || ngx_strncmp(s->buf, "HTTP/1.", 7) != 0
        || ngx_strncmp(s->buf + 8, " 200", 4) != 0)
    {
        ngx_http_spi_scrape_result(s, "no 200 answer");
        return;
    }

    p = ngx_strlcasestrn(s->buf, last, (u_char *) "\r\n\r\n", 4 - 1);
    if (p == NULL || s->up->engine == NULL) {
        ngx_http_spi_scrape_result(s, "no complete answer");
        return;
    }

    p += 4;

    if (spi_replica_report_metrics(s->up->engine, (const char *) rep->id.data,
                                   rep->id.len, (const char *) p,
                                   (size_t) (last - p))
        != SPI_OK)
    {
        ngx_log_error(NGX_LOG_WARN, s->up->log, 0,
                      "spotinfer: %V/metrics: %s", &rep->name,
                      spi_engine_errmsg(s->up->engine));
        ngx_http_spi_scrape_result(s, "unreadable metrics");
        return;
    }

    ngx_http_spi_scrape_result(s, NULL);
}


static ngx_int_t
ngx_http_spi_scrape_grow(ngx_http_spi_scrape_t *s)
{
    u_char  *p;

    if (s->cap >= NGX_HTTP_SPI_SCRAPE_MAX) {
        return NGX_ERROR;
    }

    p = ngx_alloc(s->cap * 2, s->up->log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, s->buf, s->len);
    ngx_free(s->buf);
    s->buf = p;
    s->cap *= 2;

    return NGX_OK;
}


static void
ngx_http_spi_scrape_read(ngx_event_t *rev)
{
    ssize_t                 n;
    ngx_connection_t       *c = rev->data;
    ngx_http_spi_scrape_t  *s = c->data;

    if (rev->timedout) {
        ngx_http_spi_scrape_fail(s, "timed out");
        return;
    }

    for ( ;; ) {
        if (s->len == s->cap && ngx_http_spi_scrape_grow(s) != NGX_OK) {
            ngx_http_spi_scrape_fail(s, "answer over 4 MiB");
            return;
        }

        n = c->recv(c, s->buf + s->len, s->cap - s->len);

        if (n == NGX_AGAIN) {
            if (ngx_handle_read_event(rev, 0) != NGX_OK) {
                ngx_http_spi_scrape_fail(s, "event error");
            }

            return;
        }

        if (n == NGX_ERROR) {
            ngx_http_spi_scrape_fail(s, "cannot read");
            return;
        }

        if (n == 0) {
            break;
        }

        s->len += n;
    }

    ngx_http_spi_scrape_close(s);
    ngx_http_spi_scrape_done(s);
}
