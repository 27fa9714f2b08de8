/*
 * ngx_http_spotinfer: the metrics text of every worker in one scrape.
 *
 * Each worker has its own engine, so its own counters. Every second (and
 * when it answers a scrape) a worker copies its engine's text into its slot
 * of the upstream's shared zone; the worker that answers the scrape prints
 * each metric family once, with the samples of every worker whose slot is
 * fresh, each with a label worker="N" (nginx's worker number). Sum them
 * without that label for the whole server.
 */

#include "ngx_http_spotinfer.h"


#define NGX_HTTP_SPI_SLOT_MAX_AGE  5        /* seconds */
#define NGX_HTTP_SPI_MAX_FAMILIES  256


typedef struct {
    ngx_str_t        name;
    ngx_str_t        header;                /* # HELP and # TYPE lines */
    ngx_str_t        samples;               /* its sample lines */
} ngx_http_spi_family_t;


typedef struct {
    ngx_uint_t               worker;
    ngx_str_t                text;
    ngx_http_spi_family_t   *families;
    ngx_uint_t               nfamilies;
} ngx_http_spi_worker_text_t;


/* This worker's text into its slot; NGX_DECLINED when the zone is full. */
ngx_int_t
ngx_http_spi_metrics_publish(ngx_http_spi_upstream_t *up)
{
    size_t                  needed;
    ngx_int_t               rc;
    ngx_http_spi_slot_t    *slot;

    if (up->engine == NULL || up->shm == NULL) {
        return NGX_ERROR;
    }

    needed = 0;
    (void) spi_engine_metrics(up->engine, NULL, 0, &needed);

    if (up->text_cap < needed + 1) {
        ngx_free(up->text);
        up->text_cap = 0;
        up->text = ngx_alloc(needed * 2 + 1, up->log);
        if (up->text == NULL) {
            return NGX_ERROR;
        }

        up->text_cap = needed * 2 + 1;
    }

    if (spi_engine_metrics(up->engine, (char *) up->text, up->text_cap,
                           &needed)
        != SPI_OK)
    {
        return NGX_ERROR;
    }

    slot = &up->shm->slots[ngx_worker % NGX_HTTP_SPI_METRIC_SLOTS];
    rc = NGX_OK;

    ngx_shmtx_lock(&up->shpool->mutex);

    if (slot->cap < needed) {
        if (slot->text) {
            ngx_slab_free_locked(up->shpool, slot->text);
        }

        slot->cap = 0;
        slot->len = 0;
        slot->text = ngx_slab_alloc_locked(up->shpool, needed * 2);

        if (slot->text != NULL) {
            slot->cap = needed * 2;
        }
    }

    if (slot->text != NULL) {
        ngx_memcpy(slot->text, up->text, needed);
        slot->len = needed;
        slot->updated = ngx_time();
        slot->worker = ngx_worker;

    } else {
        rc = NGX_DECLINED;
    }

    ngx_shmtx_unlock(&up->shpool->mutex);

    if (rc == NGX_DECLINED && !up->zone_full_logged) {
        ngx_log_error(NGX_LOG_WARN, up->log, 0,
                      "spotinfer: upstream \"%V\": the shared zone has no "
                      "room for this worker's metrics", &up->name);
        up->zone_full_logged = 1;
    }

    return rc;
}


/* Copies of the fresh slots, this worker's first. */
static ngx_int_t
ngx_http_spi_metrics_collect(ngx_http_request_t *r,
    ngx_http_spi_upstream_t *up, ngx_array_t *texts)
{
    time_t                       now;
    ngx_uint_t                   i, j, own;
    ngx_http_spi_slot_t         *slot;
    ngx_http_spi_worker_text_t  *t;

    now = ngx_time();
    own = ngx_worker % NGX_HTTP_SPI_METRIC_SLOTS;

    ngx_shmtx_lock(&up->shpool->mutex);

    for (j = 0; j < NGX_HTTP_SPI_METRIC_SLOTS; j++) {
        i = (own + j) % NGX_HTTP_SPI_METRIC_SLOTS;
        slot = &up->shm->slots[i];

        if (slot->text == NULL || slot->len == 0
            || now - slot->updated > NGX_HTTP_SPI_SLOT_MAX_AGE)
        {
            continue;
        }

        t = ngx_array_push(texts);
        if (t == NULL) {
            break;
        }

        ngx_memzero(t, sizeof(ngx_http_spi_worker_text_t));
        t->worker = slot->worker;
        t->text.len = slot->len;
        t->text.data = ngx_pnalloc(r->pool, slot->len);
        if (t->text.data == NULL) {
            break;
        }

        ngx_memcpy(t->text.data, slot->text, slot->len);
    }

    ngx_shmtx_unlock(&up->shpool->mutex);

    return (j == NGX_HTTP_SPI_METRIC_SLOTS) ? NGX_OK : NGX_ERROR;
}


/* The families of one text: "# HELP name ..." opens a family, its
 * "# TYPE" line and samples follow it. */
static ngx_int_t
ngx_http_spi_metrics_split(ngx_http_request_t *r,
    ngx_http_spi_worker_text_t *t)
{
    u_char                 *p, *last, *eol, *name, *sp;
    ngx_http_spi_family_t  *f;

    t->families = ngx_pcalloc(r->pool, NGX_HTTP_SPI_MAX_FAMILIES
                                       * sizeof(ngx_http_spi_family_t));
    if (t->families == NULL) {
        return NGX_ERROR;
    }

    f = NULL;
    last = t->text.data + t->text.len;

    for (p = t->text.data; p < last; p = eol) {
        eol = ngx_strlchr(p, last, '\n');
        eol = (eol == NULL) ? last : eol + 1;

        if (eol - p > 7 && ngx_strncmp(p, "# HELP ", 7) == 0) {
            if (t->nfamilies == NGX_HTTP_SPI_MAX_FAMILIES) {
                return NGX_ERROR;
            }

            f = &t->families[t->nfamilies++];
            name = p + 7;
            sp = ngx_strlchr(name, eol, ' ');
            f->name.data = name;
            f->name.len = (sp == NULL) ? 0 : (size_t) (sp - name);
            f->header.data = p;
            f->header.len = eol - p;
            f->samples.data = eol;
            continue;
        }

        if (f == NULL) {
            return NGX_ERROR;
        }

        if (*p == '#') {
            f->header.len = eol - f->header.data;
            f->samples.data = eol;
            continue;
        }

        f->samples.len = eol - f->samples.data;
    }

    return NGX_OK;
}


/* "name{a="b"} 1" -> "name{worker="3",a="b"} 1"; "name 1" -> "name{...} 1" */
static u_char *
ngx_http_spi_metrics_label(u_char *out, ngx_str_t *samples, ngx_uint_t worker)
{
    u_char  *p, *last, *eol, *brace;

    last = samples->data + samples->len;

    for (p = samples->data; p < last; p = eol) {
        eol = ngx_strlchr(p, last, '\n');
        eol = (eol == NULL) ? last : eol + 1;

        for (brace = p; brace < eol && *brace != '{' && *brace != ' ';
             brace++)
        {
            /* void */
        }

        out = ngx_cpymem(out, p, brace - p);
        out = ngx_sprintf(out, "{worker=\"%ui\"", worker);

        if (brace < eol && *brace == '{') {
            brace++;
            if (*brace != '}') {
                *out++ = ',';
            }

        } else {
            *out++ = '}';
        }

        out = ngx_cpymem(out, brace, eol - brace);
    }

    return out;
}


static ngx_http_spi_family_t *
ngx_http_spi_metrics_find(ngx_http_spi_worker_text_t *t, ngx_str_t *name)
{
    ngx_uint_t  i;

    for (i = 0; i < t->nfamilies; i++) {
        if (t->families[i].name.len == name->len
            && ngx_strncmp(t->families[i].name.data, name->data, name->len)
               == 0)
        {
            return &t->families[i];
        }
    }

    return NULL;
}


/* Every family once, in the order of the first text that has it. */
static ngx_int_t
ngx_http_spi_metrics_merge(ngx_http_request_t *r, ngx_array_t *texts,
    ngx_str_t *out)
{
    size_t                       size;
    u_char                      *p;
    ngx_uint_t                   i, j, k, lines;
    ngx_http_spi_family_t       *f, *g;
    ngx_http_spi_worker_text_t  *t;

    t = texts->elts;
    size = 0;

    for (i = 0; i < texts->nelts; i++) {
        if (ngx_http_spi_metrics_split(r, &t[i]) != NGX_OK) {
            return NGX_ERROR;
        }

        lines = 0;
        for (p = t[i].text.data; p < t[i].text.data + t[i].text.len; p++) {
            lines += (*p == '\n');
        }

        size += t[i].text.len + (lines + 1) * (sizeof("{worker=\"\",}") - 1
                                               + NGX_INT_T_LEN);
    }

    out->data = ngx_pnalloc(r->pool, size);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = out->data;

    for (i = 0; i < texts->nelts; i++) {
        for (j = 0; j < t[i].nfamilies; j++) {
            f = &t[i].families[j];

            if (ngx_http_spi_metrics_find(&t[i], &f->name) != f) {
                continue;                  /* a repeated name: the first */
            }

            for (k = 0; k < i; k++) {
                if (ngx_http_spi_metrics_find(&t[k], &f->name)) {
                    break;
                }
            }

            if (k < i) {
                continue;                  /* printed with an earlier text */
            }

            p = ngx_cpymem(p, f->header.data, f->header.len);

            for (k = i; k < texts->nelts; k++) {
                g = ngx_http_spi_metrics_find(&t[k], &f->name);
                if (g != NULL) {
                    p = ngx_http_spi_metrics_label(p, &g->samples,
                                                   t[k].worker);
                }
            }
        }
    }

    out->len = p - out->data;

    return NGX_OK;
}


ngx_int_t
ngx_http_spi_metrics_handler(ngx_http_request_t *r)
{
    ngx_int_t                 rc;
    ngx_str_t                 text;
    ngx_array_t               texts;
    ngx_http_spi_loc_conf_t  *lcf;

    if (!(r->method & (NGX_HTTP_GET|NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }

    rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_spotinfer_module);

    ngx_http_spi_notice_sync(lcf->metrics);

    if (ngx_http_spi_metrics_publish(lcf->metrics) == NGX_ERROR
        || ngx_array_init(&texts, r->pool, 4,
                          sizeof(ngx_http_spi_worker_text_t))
           != NGX_OK
        || ngx_http_spi_metrics_collect(r, lcf->metrics, &texts) != NGX_OK
        || ngx_http_spi_metrics_merge(r, &texts, &text) != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_spi_send_text(r, NGX_HTTP_OK,
                                  "text/plain; version=0.0.4; charset=utf-8",
                                  &text);
}
