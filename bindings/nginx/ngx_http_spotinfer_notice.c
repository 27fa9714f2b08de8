/*
 * ngx_http_spotinfer: pushed interruption notices.
 *
 * A node poller (the way node-termination handlers do) POSTs the body the
 * cloud served to a location with "spotinfer_notice", naming its format
 * and machine in the query: ?format=aws_instance_action&node=i-0a1b2c3d.
 * The worker that takes it parses it, appends each notice to the shared
 * ring and hands it to its own engine at once; every other worker reads
 * the ring before its next routing decision (and on its 100 ms tick), so
 * no worker routes to the machine once the POST has been answered.
 */

#include "ngx_http_spotinfer.h"


#define NGX_HTTP_SPI_PARSE_MAX  16
#define NGX_HTTP_SPI_PLANS      64
/* the largest body spi_notice_parse reads */
#define NGX_HTTP_SPI_NOTICE_MAX_BODY  (1024 * 1024)


static void ngx_http_spi_notice_body(ngx_http_request_t *r);


static const struct {
    const char  *name;
    int32_t      format;
} ngx_http_spi_formats[] = {
    { "aws_instance_action", SPI_NOTICE_AWS_INSTANCE_ACTION },
    { "aws_rebalance", SPI_NOTICE_AWS_REBALANCE },
    { "aws_scheduled", SPI_NOTICE_AWS_SCHEDULED },
    { "aws_eventbridge", SPI_NOTICE_AWS_EVENTBRIDGE },
    { "gcp_preempted", SPI_NOTICE_GCP_PREEMPTED },
    { "gcp_maintenance", SPI_NOTICE_GCP_MAINTENANCE },
    { "azure_scheduled", SPI_NOTICE_AZURE_SCHEDULED }
};


ngx_int_t
ngx_http_spi_shm_init(ngx_shm_zone_t *zone, void *data)
{
    ngx_http_spi_upstream_t  *up = zone->data;
    ngx_http_spi_upstream_t  *old = data;

    if (old != NULL) {
        up->shpool = old->shpool;
        up->shm = old->shm;
        return NGX_OK;
    }

    up->shpool = (ngx_slab_pool_t *) zone->shm.addr;

    if (zone->shm.exists) {
        up->shm = up->shpool->data;
        return NGX_OK;
    }

    up->shm = ngx_slab_calloc(up->shpool, sizeof(ngx_http_spi_shm_t));
    if (up->shm == NULL) {
        return NGX_ERROR;
    }

    up->shpool->data = up->shm;

    return NGX_OK;
}


/* The library's plan for each open request on the machine, in the log:
 * the module lets every one finish where it is (it does not cut or replay
 * streams), and the plan says how far each had streamed (progress, the
 * output tokens reported over those expected) and what a gateway that
 * replays would have done. */
static void
ngx_http_spi_notice_plans(ngx_http_spi_upstream_t *up, spi_notice *n,
    spi_ticket_plan *plans, size_t nplans)
{
    size_t  i;

    for (i = 0; i < ngx_min(nplans, NGX_HTTP_SPI_PLANS); i++) {
        ngx_log_error(NGX_LOG_INFO, up->log, 0,
                      "spotinfer: machine \"%s\": ticket %uL on \"%s\" "
                      "(%s): progress %.4f, %.1f s left, %.1f s to the "
                      "deadline; the library's plan: %s",
                      n->node, plans[i].ticket, plans[i].replica_id,
                      spi_class_name(plans[i].klass), plans[i].progress,
                      plans[i].remaining_s, plans[i].deadline_s,
                      plans[i].action == SPI_ACTION_DRAIN ? "drain"
                                                          : "replay");
    }
}


static void
ngx_http_spi_notice_apply(ngx_http_spi_upstream_t *up, spi_notice *n)
{
    int               st;
    size_t            nplans;
    spi_ticket_plan   plans[NGX_HTTP_SPI_PLANS];

    plans[0].struct_size = sizeof(spi_ticket_plan);
    nplans = 0;

    st = spi_engine_notice(up->engine, n, plans, NGX_HTTP_SPI_PLANS, &nplans);

    if (st != SPI_OK && st != SPI_EBUFSIZE) {
        ngx_log_error(NGX_LOG_ERR, up->log, 0,
                      "spotinfer: notice for \"%s\": %s", n->node,
                      spi_engine_errmsg(up->engine));
        return;
    }

    ngx_log_error(NGX_LOG_INFO, up->log, 0,
                  "spotinfer: notice \"%s\" for machine \"%s\": %uz open "
                  "requests on it finish where they are", n->dedup_key,
                  n->node, nplans);

    ngx_http_spi_notice_plans(up, n, plans, nplans);
}


static int64_t
ngx_http_spi_wall_ns(void)
{
    struct timespec  ts;

    (void) clock_gettime(CLOCK_REALTIME, &ts);

    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}


/* A worker's start: its new engine has none of the notices handed in so
 * far, and takes those still in force at its first sync. */
void
ngx_http_spi_notice_start(ngx_http_spi_upstream_t *up)
{
    up->seen_seq = 0;
    up->replayed = 0;
    /* advice kept past that would advise its machine anew in an engine it
     * is replayed to */
    up->advice_ns = ngx_http_spi_config_int(up, "advised_ttl_ms", 1200000)
                    * 1000000;
}


static ngx_uint_t
ngx_http_spi_is_advice(spi_notice *n)
{
    return n->kind == SPI_NOTICE_REBALANCE
           || (n->kind == SPI_NOTICE_MAINTENANCE && n->deadline_ns == 0);
}


static void
ngx_http_spi_kept_remove(ngx_http_spi_shm_t *shm, ngx_uint_t i)
{
    ngx_memmove(&shm->kept[i], &shm->kept[i + 1],
                (shm->nkept - i - 1) * sizeof(spi_notice));
    shm->nkept--;
}


/* Advice that has lapsed holds nothing any more. A notice past its
 * deadline is kept: its machine is terminated in every engine that has
 * it, and would be routed to by one that had not. Zone locked. */
static void
ngx_http_spi_kept_prune(ngx_http_spi_upstream_t *up, int64_t now)
{
    ngx_uint_t           i;
    spi_notice          *k;
    ngx_http_spi_shm_t  *shm = up->shm;

    for (i = 0; i < shm->nkept; /* void */) {
        k = &shm->kept[i];

        if (ngx_http_spi_is_advice(k) && k->received_ns + up->advice_ns < now) {
            ngx_http_spi_kept_remove(shm, i);
            continue;
        }

        i++;
    }
}


/* The one to let go when the table is full: the notice whose deadline
 * passed first, else (every one still in force) the oldest. */
static ngx_uint_t
ngx_http_spi_kept_victim(ngx_http_spi_shm_t *shm, int64_t now)
{
    ngx_uint_t   i, victim;
    spi_notice  *k;

    victim = 0;

    for (i = 0; i < shm->nkept; i++) {
        k = &shm->kept[i];

        if (k->deadline_ns != 0 && k->deadline_ns < now
            && (shm->kept[victim].deadline_ns == 0
                || shm->kept[victim].deadline_ns >= now
                || k->deadline_ns < shm->kept[victim].deadline_ns))
        {
            victim = i;
        }
    }

    return victim;
}


/* A withdrawal takes the notices of the event it names out of the table
 * (the engines that had them apply it; one that starts has neither); a
 * notice handed in again under its dedup key is kept once. Returns 1 when
 * a notice still in force was let go to make room. Zone locked. */
static ngx_uint_t
ngx_http_spi_kept_add(ngx_http_spi_upstream_t *up, spi_notice *n, int64_t now)
{
    ngx_uint_t           i, lost;
    spi_notice          *k;
    ngx_http_spi_shm_t  *shm = up->shm;

    ngx_http_spi_kept_prune(up, now);

    for (i = 0; i < shm->nkept; /* void */) {
        k = &shm->kept[i];

        if (ngx_strcmp(k->node, n->node) == 0
            && ((!n->active && n->event_id[0] != '\0'
                 && ngx_strcmp(k->event_id, n->event_id) == 0)
                || (n->active && n->dedup_key[0] != '\0'
                    && ngx_strcmp(k->dedup_key, n->dedup_key) == 0)))
        {
            if (n->active) {
                return 0;
            }

            ngx_http_spi_kept_remove(shm, i);
            continue;
        }

        i++;
    }

    if (!n->active) {
        return 0;
    }

    lost = 0;

    if (shm->nkept == NGX_HTTP_SPI_NOTICE_KEPT) {
        i = ngx_http_spi_kept_victim(shm, now);
        k = &shm->kept[i];
        lost = k->deadline_ns == 0 || k->deadline_ns >= now;
        ngx_http_spi_kept_remove(shm, i);
    }

    shm->kept[shm->nkept++] = *n;

    return lost;
}


/* Notices other workers wrote since this one last looked: from the ring,
 * or, for a worker that starts or that the ring went past, every notice
 * still in force (those it had already are repeats to its engine). */
void
ngx_http_spi_notice_sync(ngx_http_spi_upstream_t *up)
{
    ngx_uint_t         i, n, behind;
    ngx_atomic_uint_t  seq, from;

    static spi_notice  copy[NGX_HTTP_SPI_NOTICE_KEPT];

    if (up->shm == NULL || up->engine == NULL) {
        return;
    }

    seq = up->shm->seq;
    if (seq == up->seen_seq && up->replayed) {
        return;
    }

    ngx_shmtx_lock(&up->shpool->mutex);

    seq = up->shm->seq;
    from = up->seen_seq;
    behind = up->replayed && seq - from > NGX_HTTP_SPI_NOTICE_RING;

    if (!up->replayed || behind) {
        n = up->shm->nkept;
        ngx_memcpy(copy, up->shm->kept, n * sizeof(spi_notice));

    } else {
        for (n = 0; from + n < seq; n++) {
            copy[n] = up->shm->ring[(from + n) % NGX_HTTP_SPI_NOTICE_RING];
        }
    }

    ngx_shmtx_unlock(&up->shpool->mutex);

    if (behind) {
        ngx_log_error(NGX_LOG_WARN, up->log, 0,
                      "spotinfer: upstream \"%V\": %uA notices came since "
                      "this worker last read them, more than the ring of "
                      "%d holds: it takes the %ui still in force again",
                      &up->name, seq - from, NGX_HTTP_SPI_NOTICE_RING, n);
    }

    up->seen_seq = seq;
    up->replayed = 1;

    for (i = 0; i < n; i++) {
        ngx_http_spi_notice_apply(up, &copy[i]);
    }
}


static void
ngx_http_spi_notice_publish(ngx_http_spi_upstream_t *up, spi_notice *n,
    size_t count)
{
    size_t             i;
    int64_t            now;
    ngx_uint_t         lost;
    ngx_atomic_uint_t  seq;

    now = ngx_http_spi_wall_ns();
    lost = 0;

    ngx_shmtx_lock(&up->shpool->mutex);

    seq = up->shm->seq;

    for (i = 0; i < count; i++) {
        up->shm->ring[seq % NGX_HTTP_SPI_NOTICE_RING] = n[i];
        seq++;
        lost += ngx_http_spi_kept_add(up, &n[i], now);
    }

    up->shm->seq = seq;

    ngx_shmtx_unlock(&up->shpool->mutex);

    if (lost) {
        ngx_log_error(NGX_LOG_WARN, up->log, 0,
                      "spotinfer: upstream \"%V\": %ui notices in force were "
                      "let go to keep newer ones (%d are kept): a worker "
                      "that starts now does not have them",
                      &up->name, lost, NGX_HTTP_SPI_NOTICE_KEPT);
    }
}


ngx_int_t
ngx_http_spi_notice_handler(ngx_http_request_t *r)
{
    ngx_int_t  rc;

    if (r->method != NGX_HTTP_POST) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_read_client_request_body(r, ngx_http_spi_notice_body);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return rc;
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_spi_notice_format(ngx_http_request_t *r, int32_t *format)
{
    ngx_str_t   v;
    ngx_uint_t  i;

    if (ngx_http_arg(r, (u_char *) "format", 6, &v) != NGX_OK) {
        return NGX_ERROR;
    }

    for (i = 0; i < sizeof(ngx_http_spi_formats)
                    / sizeof(ngx_http_spi_formats[0]); i++)
    {
        if (v.len == ngx_strlen(ngx_http_spi_formats[i].name)
            && ngx_strncmp(v.data, ngx_http_spi_formats[i].name, v.len) == 0)
        {
            *format = ngx_http_spi_formats[i].format;
            return NGX_OK;
        }
    }

    return NGX_ERROR;
}


static ngx_int_t
ngx_http_spi_notice_take(ngx_http_request_t *r)
{
    int                       st;
    size_t                    n;
    u_char                    errbuf[256], *out;
    int32_t                   format;
    ngx_int_t                 rc, status;
    ngx_str_t                 body, node, v, msg;
    spi_notice                stack[NGX_HTTP_SPI_PARSE_MAX], *notices;
    ngx_http_spi_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_spotinfer_module);

    if (lcf->notice->engine == NULL || lcf->notice->shm == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_spi_read_body(r, &body, NGX_HTTP_SPI_NOTICE_MAX_BODY);
    if (rc == NGX_DECLINED) {
        return ngx_http_spi_too_big(r, body.len, NGX_HTTP_SPI_NOTICE_MAX_BODY);
    }

    if (rc != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_spi_notice_format(r, &format) != NGX_OK) {
        ngx_str_set(&msg, "format: one of aws_instance_action, aws_rebalance, "
                    "aws_scheduled, aws_eventbridge, gcp_preempted, "
                    "gcp_maintenance, azure_scheduled");
        return ngx_http_spi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_request_error", &msg, 0);
    }

    if (ngx_http_arg(r, (u_char *) "node", 4, &node) != NGX_OK) {
        ngx_str_null(&node);
    }

    status = 200;
    if (ngx_http_arg(r, (u_char *) "status", 6, &v) == NGX_OK) {
        status = ngx_atoi(v.data, v.len);
    }

    ngx_memzero(stack, sizeof(stack));
    notices = stack;
    st = spi_notice_parse(format, status == NGX_ERROR ? -1 : (int32_t) status,
                          (const char *) body.data, body.len,
                          (const char *) node.data, node.len,
                          ngx_http_spi_wall_ns(), notices,
                          NGX_HTTP_SPI_PARSE_MAX, &n, (char *) errbuf,
                          sizeof(errbuf));
    if (st == SPI_EBUFSIZE) {
        /* A document with more events than the stack holds: n says how
         * many, all of them are taken. */
        notices = ngx_pcalloc(r->pool, n * sizeof(spi_notice));
        if (notices == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        st = spi_notice_parse(format,
                              status == NGX_ERROR ? -1 : (int32_t) status,
                              (const char *) body.data, body.len,
                              (const char *) node.data, node.len,
                              ngx_http_spi_wall_ns(), notices, n, &n,
                              (char *) errbuf, sizeof(errbuf));
    }
    if (st != SPI_OK) {
        msg.data = errbuf;
        msg.len = ngx_strlen(errbuf);
        return ngx_http_spi_send_error(r, NGX_HTTP_BAD_REQUEST,
                                       "invalid_request_error", &msg, 0);
    }

    ngx_http_spi_notice_publish(lcf->notice, notices, n);
    ngx_http_spi_notice_sync(lcf->notice);

    /* From the pool, not the stack: the answer may be sent after this
     * returns (a full socket, HTTP/2). */
    out = ngx_pnalloc(r->pool, 64);
    if (out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    msg.data = out;
    msg.len = ngx_sprintf(out, "{\"notices\":%uz}\n", n) - out;

    return ngx_http_spi_send_text(r, NGX_HTTP_OK, "application/json", &msg);
}


static void
ngx_http_spi_notice_body(ngx_http_request_t *r)
{
    ngx_http_finalize_request(r, ngx_http_spi_notice_take(r));
}


ngx_int_t
ngx_http_spi_send_text(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, ngx_str_t *text)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b->pos = text->data;
    b->last = text->data + text->len;
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;

    r->headers_out.status = status;
    r->headers_out.content_length_n = text->len;
    r->headers_out.content_type.data = (u_char *) type;
    r->headers_out.content_type.len = ngx_strlen(type);
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}
