/*
 * ngx_http_spotinfer: libspotinfer inside nginx.
 *
 * One engine per upstream per worker process, configured from the
 * library's JSON file named by the "spotinfer" directive; the replicas are
 * the upstream's servers, described by "spotinfer_replica" lines. Pushed
 * interruption notices go through a shared memory ring that every worker
 * reads before it routes, so a notice stops new requests in all workers.
 */

#ifndef _NGX_HTTP_SPOTINFER_H_INCLUDED_
#define _NGX_HTTP_SPOTINFER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <spotinfer/spotinfer.h>

#include "ngx_http_spotinfer_tokens.h"


#define NGX_HTTP_SPI_NOTICE_RING    64
#define NGX_HTTP_SPI_NOTICE_KEPT    512
#define NGX_HTTP_SPI_SCRAPE_MAX     (4 * 1024 * 1024)
#define NGX_HTTP_SPI_SCRAPE_TIMEOUT 2000
#define NGX_HTTP_SPI_TICK           100
#define NGX_HTTP_SPI_METRIC_SLOTS   64
#define NGX_HTTP_SPI_ZONE_SIZE      (8 * 1024 * 1024)


typedef struct ngx_http_spi_upstream_s  ngx_http_spi_upstream_t;


/* One backend's /metrics read, per worker. */
typedef struct {
    ngx_http_spi_upstream_t        *up;
    ngx_uint_t                      index;     /* in up->replicas */
    ngx_peer_connection_t           pc;
    u_char                         *buf;
    size_t                          cap;
    size_t                          len;
    size_t                          sent;
    ngx_str_t                       request;
    unsigned                        busy:1;
    unsigned                        failing:1;
} ngx_http_spi_scrape_t;


typedef struct {
    ngx_str_t                       server;    /* as in "server" */
    ngx_str_t                       id;
    ngx_str_t                       zone;
    ngx_str_t                       instance_type;
    ngx_str_t                       models;
    ngx_str_t                       node;
    ngx_int_t                       pool;      /* SPI_POOL_* */
    double                          price;
    double                          decode_tps;
    ngx_uint_t                      max_inflight;

    /* from the upstream's server, set when the upstream is initialised */
    struct sockaddr                *sockaddr;
    socklen_t                       socklen;
    ngx_str_t                       name;
    ngx_uint_t                      found;

    ngx_http_spi_scrape_t           scrape;    /* per worker */
} ngx_http_spi_replica_t;


/* One worker's metrics text, copied in every second. */
typedef struct {
    u_char                         *text;      /* in the zone's slab */
    size_t                          len;
    size_t                          cap;
    time_t                          updated;
    ngx_uint_t                      worker;    /* nginx's worker number */
} ngx_http_spi_slot_t;


/* The upstream's shared zone: the ring of pushed notices (seq counts every
 * notice written), the notices still in force (in the order they came: a
 * worker that starts, or one the ring went past, replays them) and the
 * workers' metrics. */
typedef struct {
    ngx_atomic_t                    seq;
    spi_notice                      ring[NGX_HTTP_SPI_NOTICE_RING];
    ngx_uint_t                      nkept;
    spi_notice                      kept[NGX_HTTP_SPI_NOTICE_KEPT];
    ngx_http_spi_slot_t             slots[NGX_HTTP_SPI_METRIC_SLOTS];
} ngx_http_spi_shm_t;


struct ngx_http_spi_upstream_s {
    ngx_str_t                       name;
    ngx_str_t                       config_path;
    ngx_str_t                       config_json;
    ngx_msec_t                      scrape_interval;
    ngx_array_t                     replicas;  /* ngx_http_spi_replica_t */
    ngx_http_upstream_srv_conf_t   *uscf;
    ngx_shm_zone_t                 *shm_zone;
    ngx_http_spi_shm_t             *shm;
    ngx_slab_pool_t                *shpool;
    unsigned                        defined:1;
    u_char                         *conf_file;
    ngx_uint_t                      conf_line;

    /* per worker */
    spi_engine                     *engine;
    spi_request                    *req;
    ngx_atomic_uint_t               seen_seq;
    int64_t                         advice_ns; /* router.advised_ttl_ms */
    off_t                           max_body;  /* limits.max_body_bytes */
    unsigned                        replayed:1;
    ngx_event_t                     timer;
    ngx_msec_t                      last_scrape;
    ngx_msec_t                      last_publish;
    u_char                         *text;      /* rendering buffer */
    size_t                          text_cap;
    unsigned                        zone_full_logged:1;
    unsigned                        encoded_logged:1;
    ngx_log_t                      *log;
};


typedef struct {
    ngx_array_t                     upstreams; /* ngx_http_spi_upstream_t * */
} ngx_http_spi_main_conf_t;


typedef struct {
    ngx_http_spi_upstream_t        *up;
} ngx_http_spi_srv_conf_t;


typedef struct {
    ngx_http_spi_upstream_t        *route;
    ngx_int_t                       kind;      /* SPI_OPENAI_* */
    ngx_http_spi_upstream_t        *metrics;
    ngx_http_spi_upstream_t        *notice;
} ngx_http_spi_loc_conf_t;


/* nginx's own retries of a request on its kept-alive connections gone
 * stale, at most (nginx's tries bound them too) */
#define NGX_HTTP_SPI_STALE_MAX  8


/* One request's routing, from the decision to the log phase. Once routed
 * it is found again after an internal redirect (which clears r->ctx)
 * through the pool cleanup that holds it: ngx_http_spi_get_ctx().
 * Each try after a failed one is routed again (ngx_http_spi_reroute()),
 * so ticket, tokens and the decision's fields are the last try's. */
typedef struct {
    ngx_http_spi_upstream_t        *up;
    ngx_http_request_t             *request;   /* the main request */
    ngx_str_t                       body;      /* as routed: r->pool or the
                                                  request body's buffer */
    ngx_int_t                       kind;      /* SPI_OPENAI_* */
    uint64_t                        ticket;    /* the current try's */
    ngx_uint_t                      tried[1 + SPI_MAX_FALLBACKS];
                                               /* replicas, in try order */
    ngx_uint_t                      tries;     /* at most: the first
                                                  decision's replica and
                                                  fallbacks */
    ngx_uint_t                      next;      /* tries taken */
    ngx_uint_t                      again;     /* 1 + the try that handed
                                                  the request on unfailed;
                                                  0: none */
    ngx_uint_t                      left;      /* pc->tries after free_peer
                                                  left a cached try open */
    ngx_uint_t                      stale_code;    /* that try's status */
    ngx_uint_t                      stale_retries; /* nginx's, taken */
    int64_t                         routed_us;     /* monotonic */
    int64_t                         first_byte_us;
    ngx_http_spi_tokens_t           tokens;    /* the answer's, so far */
    uint64_t                        progress;  /* the last reported */
    ngx_int_t                       phase_rc;
    ngx_uint_t                      served;    /* the status of the header
                                                  sent, which a post_action
                                                  overwrites in headers_out */
    int32_t                         klass;
    int32_t                         reason;
    uint32_t                        matched_blocks;
    uint32_t                        total_blocks;
    unsigned                        decided:1;
    unsigned                        routed:1;
    unsigned                        body_seen:1;
    unsigned                        counting:1;
    unsigned                        handed:1;  /* the next try goes back to
                                                  tried[next], unrouted */
    unsigned                        post:1;    /* a post_action pass: no
                                                  ticket, no route */
    unsigned                        stale:1;   /* a failed try on a cached
                                                  connection, its ticket
                                                  (none for a post_action
                                                  pass) still open: nginx's
                                                  retry or the replica's
                                                  error */
} ngx_http_spi_ctx_t;


extern ngx_module_t  ngx_http_spotinfer_module;


/* ngx_http_spotinfer_module.c: configuration and engines */
ngx_http_spi_upstream_t *ngx_http_spi_upstream_get(ngx_conf_t *cf,
    ngx_str_t *name);
ngx_int_t ngx_http_spi_engine_open(ngx_http_spi_upstream_t *up,
    ngx_log_t *log);
void ngx_http_spi_engine_close(ngx_http_spi_upstream_t *up);
int64_t ngx_http_spi_config_int(ngx_http_spi_upstream_t *up, const char *key,
    int64_t dflt);

/* ngx_http_spotinfer_route.c */
ngx_http_spi_ctx_t *ngx_http_spi_get_ctx(ngx_http_request_t *r);
ngx_int_t ngx_http_spi_route_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_spi_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, ngx_str_t *msg, ngx_uint_t retry_after);
ngx_int_t ngx_http_spi_read_body(ngx_http_request_t *r, ngx_str_t *out,
    off_t max);
ngx_int_t ngx_http_spi_too_big(ngx_http_request_t *r, size_t size, off_t max);
ngx_int_t ngx_http_spi_reroute(ngx_http_spi_ctx_t *ctx);

/* ngx_http_spotinfer_peer.c */
ngx_int_t ngx_http_spi_init_upstream(ngx_conf_t *cf,
    ngx_http_upstream_srv_conf_t *us);
ngx_int_t ngx_http_spi_log_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_spi_filter_init(ngx_conf_t *cf);
void ngx_http_spi_ticket_mark(ngx_http_spi_ctx_t *ctx);
void ngx_http_spi_ticket_end(ngx_http_spi_ctx_t *ctx, ngx_int_t status,
    ngx_uint_t http_status);
void ngx_http_spi_ticket_drop(ngx_http_spi_upstream_t *up, uint64_t ticket);
void ngx_http_spi_ticket_cleanup(void *data);
ngx_int_t ngx_http_spi_outcome(ngx_uint_t http_status);
uint64_t ngx_http_spi_output_tokens(ngx_http_spi_ctx_t *ctx);

/* ngx_http_spotinfer_metrics.c */
ngx_int_t ngx_http_spi_metrics_publish(ngx_http_spi_upstream_t *up);
ngx_int_t ngx_http_spi_metrics_handler(ngx_http_request_t *r);

/* ngx_http_spotinfer_vars.c */
ngx_int_t ngx_http_spi_add_variables(ngx_conf_t *cf);

/* ngx_http_spotinfer_scrape.c */
void ngx_http_spi_scrape_start(ngx_http_spi_replica_t *rep);
void ngx_http_spi_scrape_stop(ngx_http_spi_replica_t *rep);

/* ngx_http_spotinfer_notice.c */
ngx_int_t ngx_http_spi_shm_init(ngx_shm_zone_t *zone, void *data);
void ngx_http_spi_notice_start(ngx_http_spi_upstream_t *up);
void ngx_http_spi_notice_sync(ngx_http_spi_upstream_t *up);
ngx_int_t ngx_http_spi_notice_handler(ngx_http_request_t *r);
ngx_int_t ngx_http_spi_send_text(ngx_http_request_t *r, ngx_uint_t status,
    const char *type, ngx_str_t *text);


#endif /* _NGX_HTTP_SPOTINFER_H_INCLUDED_ */
