/*
 * ngx_http_spotinfer: directives, configuration and the engine of each
 * worker process.
 *
 *   upstream llm {
 *       spotinfer /etc/nginx/spotinfer.json scrape_interval=250ms;
 *       server 10.0.0.1:8000;
 *       spotinfer_replica 10.0.0.1:8000 pool=spot zone=us-east-1a
 *                         price=0.45 node=i-0a1b2c3d;
 *   }
 *   location /v1/ { spotinfer_route llm; proxy_pass http://llm; }
 *   location = /metrics { spotinfer_metrics llm; }
 *   location = /notice { spotinfer_notice llm; }
 */

#include "ngx_http_spotinfer.h"


static void *ngx_http_spi_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_spi_create_srv_conf(ngx_conf_t *cf);
static void *ngx_http_spi_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_spi_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_spi_balancer(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_spi_replica(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_spi_route(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_spi_location(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_spi_postconfiguration(ngx_conf_t *cf);
static ngx_int_t ngx_http_spi_init_process(ngx_cycle_t *cycle);
static void ngx_http_spi_exit_process(ngx_cycle_t *cycle);
static void ngx_http_spi_tick(ngx_event_t *ev);


static ngx_command_t  ngx_http_spi_commands[] = {

    { ngx_string("spotinfer"),
      NGX_HTTP_UPS_CONF|NGX_CONF_TAKE12,
      ngx_http_spi_balancer,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("spotinfer_replica"),
      NGX_HTTP_UPS_CONF|NGX_CONF_2MORE,
      ngx_http_spi_replica,
      NGX_HTTP_SRV_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("spotinfer_route"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE12,
      ngx_http_spi_route,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("spotinfer_metrics"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_spi_location,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_spi_loc_conf_t, metrics),
      NULL },

    { ngx_string("spotinfer_notice"),
      NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_http_spi_location,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_spi_loc_conf_t, notice),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_spi_module_ctx = {
    ngx_http_spi_add_variables,            /* preconfiguration */
    ngx_http_spi_postconfiguration,        /* postconfiguration */

    ngx_http_spi_create_main_conf,         /* create main configuration */
    NULL,                                  /* init main configuration */

    ngx_http_spi_create_srv_conf,          /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_spi_create_loc_conf,          /* create location configuration */
    ngx_http_spi_merge_loc_conf            /* merge location configuration */
};


ngx_module_t  ngx_http_spotinfer_module = {
    NGX_MODULE_V1,
    &ngx_http_spi_module_ctx,              /* module context */
    ngx_http_spi_commands,                 /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_spi_init_process,             /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_spi_exit_process,             /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_spi_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_spi_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_spi_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    if (ngx_array_init(&mcf->upstreams, cf->pool, 4,
                       sizeof(ngx_http_spi_upstream_t *))
        != NGX_OK)
    {
        return NULL;
    }

    return mcf;
}


static void *
ngx_http_spi_create_srv_conf(ngx_conf_t *cf)
{
    return ngx_pcalloc(cf->pool, sizeof(ngx_http_spi_srv_conf_t));
}


static void *
ngx_http_spi_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_spi_loc_conf_t  *lcf;

    lcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_spi_loc_conf_t));
    if (lcf == NULL) {
        return NULL;
    }

    lcf->kind = NGX_CONF_UNSET;

    return lcf;
}


static char *
ngx_http_spi_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_spi_loc_conf_t  *prev = parent;
    ngx_http_spi_loc_conf_t  *conf = child;

    if (conf->route == NULL) {
        conf->route = prev->route;
        conf->kind = prev->kind;
    }

    ngx_conf_merge_value(conf->kind, prev->kind, SPI_OPENAI_AUTO);

    return NGX_CONF_OK;
}


/* The engine record of an upstream, made on first mention: locations may
 * name an upstream defined further down. */
ngx_http_spi_upstream_t *
ngx_http_spi_upstream_get(ngx_conf_t *cf, ngx_str_t *name)
{
    ngx_uint_t                 i;
    ngx_http_spi_upstream_t   *up, **ups, **slot;
    ngx_http_spi_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_spotinfer_module);
    ups = mcf->upstreams.elts;

    for (i = 0; i < mcf->upstreams.nelts; i++) {
        if (ups[i]->name.len == name->len
            && ngx_strncmp(ups[i]->name.data, name->data, name->len) == 0)
        {
            return ups[i];
        }
    }

    up = ngx_pcalloc(cf->pool, sizeof(ngx_http_spi_upstream_t));
    if (up == NULL) {
        return NULL;
    }

    if (ngx_array_init(&up->replicas, cf->pool, 4,
                       sizeof(ngx_http_spi_replica_t))
        != NGX_OK)
    {
        return NULL;
    }

    up->name = *name;
    up->scrape_interval = 250;

    slot = ngx_array_push(&mcf->upstreams);
    if (slot == NULL) {
        return NULL;
    }

    *slot = up;

    return up;
}


static ngx_http_spi_upstream_t *
ngx_http_spi_this_upstream(ngx_conf_t *cf, ngx_http_spi_srv_conf_t *scf)
{
    ngx_http_upstream_srv_conf_t  *uscf;

    if (scf->up == NULL) {
        uscf = ngx_http_conf_get_module_srv_conf(cf, ngx_http_upstream_module);
        scf->up = ngx_http_spi_upstream_get(cf, &uscf->host);

        if (scf->up != NULL) {
            scf->up->uscf = uscf;
        }
    }

    return scf->up;
}


/* The library's configuration is read once, here: "nginx -t" checks it
 * and every worker configures its engine from the same bytes. */
static char *
ngx_http_spi_read_config(ngx_conf_t *cf, ngx_http_spi_upstream_t *up)
{
    ssize_t          n;
    size_t           size;
    ngx_fd_t         fd;
    ngx_file_info_t  fi;
    char            *rv;

    if (ngx_conf_full_name(cf->cycle, &up->config_path, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    fd = ngx_open_file(up->config_path.data, NGX_FILE_RDONLY, NGX_FILE_OPEN,
                       0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "spotinfer: cannot open \"%V\"", &up->config_path);
        return NGX_CONF_ERROR;
    }

    rv = NGX_CONF_ERROR;

    if (ngx_fd_info(fd, &fi) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "spotinfer: cannot stat \"%V\"", &up->config_path);
        goto done;
    }

    size = (size_t) ngx_file_size(&fi);
    if (size > 16 * 1024 * 1024) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "spotinfer: \"%V\" is over 16 MiB",
                           &up->config_path);
        goto done;
    }

    up->config_json.data = ngx_pnalloc(cf->pool, size + 1);
    if (up->config_json.data == NULL) {
        goto done;
    }

    n = ngx_read_fd(fd, up->config_json.data, size);
    if (n < 0 || (size_t) n != size) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno,
                           "spotinfer: cannot read \"%V\"", &up->config_path);
        goto done;
    }

    up->config_json.len = size;
    up->config_json.data[size] = '\0';
    rv = NGX_CONF_OK;

done:

    if (ngx_close_file(fd) == NGX_FILE_ERROR) {
        ngx_conf_log_error(NGX_LOG_ALERT, cf, ngx_errno,
                           "spotinfer: cannot close \"%V\"",
                           &up->config_path);
    }

    return rv;
}


static char *
ngx_http_spi_add_zone(ngx_conf_t *cf, ngx_http_spi_upstream_t *up)
{
    size_t      size;
    ngx_str_t   name;

    name.len = sizeof("spotinfer_") - 1 + up->name.len;
    name.data = ngx_pnalloc(cf->pool, name.len);
    if (name.data == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_sprintf(name.data, "spotinfer_%V", &up->name);

    /* the notice ring, and room for 64 workers' metrics texts */
    size = ngx_align(sizeof(ngx_http_spi_shm_t) + NGX_HTTP_SPI_ZONE_SIZE,
                     ngx_pagesize);

    up->shm_zone = ngx_shared_memory_add(cf, &name, size,
                                         &ngx_http_spotinfer_module);
    if (up->shm_zone == NULL) {
        return NGX_CONF_ERROR;
    }

    up->shm_zone->init = ngx_http_spi_shm_init;
    up->shm_zone->data = up;

    return NGX_CONF_OK;
}


static char *
ngx_http_spi_balancer(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t                *value, s;
    ngx_msec_t                ms;
    ngx_http_spi_upstream_t  *up;

    up = ngx_http_spi_this_upstream(cf, conf);
    if (up == NULL) {
        return NGX_CONF_ERROR;
    }

    if (up->defined) {
        return "is duplicate";
    }

    if (up->uscf->peer.init_upstream) {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "load balancing method redefined");
    }

    value = cf->args->elts;

    if (cf->args->nelts == 3) {
        if (ngx_strncmp(value[2].data, "scrape_interval=", 16) != 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid parameter \"%V\"", &value[2]);
            return NGX_CONF_ERROR;
        }

        s.data = value[2].data + 16;
        s.len = value[2].len - 16;
        ms = ngx_parse_time(&s, 0);

        if (ms == (ngx_msec_t) NGX_ERROR || ms < 10 || ms > 60000) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "spotinfer: scrape_interval is 10ms..60s, "
                               "got \"%V\"", &s);
            return NGX_CONF_ERROR;
        }

        up->scrape_interval = ms;
    }

    up->config_path = value[1];

    if (ngx_http_spi_read_config(cf, up) != NGX_CONF_OK
        || ngx_http_spi_add_zone(cf, up) != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    up->defined = 1;
    up->conf_file = cf->conf_file->file.name.data;
    up->conf_line = cf->conf_file->line;
    up->uscf->peer.init_upstream = ngx_http_spi_init_upstream;
    up->uscf->flags = NGX_HTTP_UPSTREAM_CREATE;

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_spi_param(ngx_str_t *arg, const char *key, ngx_str_t *out)
{
    size_t  n;

    n = ngx_strlen(key);

    if (arg->len <= n || ngx_strncmp(arg->data, key, n) != 0
        || arg->data[n] != '=')
    {
        return NGX_DECLINED;
    }

    out->data = arg->data + n + 1;
    out->len = arg->len - n - 1;

    return NGX_OK;
}


/* A positive number; the text is NUL-terminated by the parser. */
static ngx_int_t
ngx_http_spi_number(ngx_str_t *s, double *out)
{
    char  *end;

    if (s->len == 0) {
        return NGX_ERROR;
    }

    *out = strtod((char *) s->data, &end);

    if ((u_char *) end != s->data + s->len || !(*out >= 0.0)) {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static char *
ngx_http_spi_replica_param(ngx_conf_t *cf, ngx_http_spi_replica_t *rep,
    ngx_str_t *arg)
{
    double     v;
    ngx_str_t  s;

    if (ngx_http_spi_param(arg, "id", &rep->id) == NGX_OK
        || ngx_http_spi_param(arg, "zone", &rep->zone) == NGX_OK
        || ngx_http_spi_param(arg, "node", &rep->node) == NGX_OK
        || ngx_http_spi_param(arg, "models", &rep->models) == NGX_OK
        || ngx_http_spi_param(arg, "instance_type", &rep->instance_type)
           == NGX_OK)
    {
        return NGX_CONF_OK;
    }

    if (ngx_http_spi_param(arg, "pool", &s) == NGX_OK) {
        if (s.len == 4 && ngx_strncmp(s.data, "spot", 4) == 0) {
            rep->pool = SPI_POOL_SPOT;
            return NGX_CONF_OK;
        }

        if (s.len == 9 && ngx_strncmp(s.data, "on_demand", 9) == 0) {
            rep->pool = SPI_POOL_ON_DEMAND;
            return NGX_CONF_OK;
        }

        goto invalid;
    }

    if (ngx_http_spi_param(arg, "price", &s) == NGX_OK) {
        if (ngx_http_spi_number(&s, &rep->price) != NGX_OK) {
            goto invalid;
        }

        return NGX_CONF_OK;
    }

    if (ngx_http_spi_param(arg, "decode_tokens_per_s", &s) == NGX_OK) {
        if (ngx_http_spi_number(&s, &rep->decode_tps) != NGX_OK) {
            goto invalid;
        }

        return NGX_CONF_OK;
    }

    if (ngx_http_spi_param(arg, "max_inflight", &s) == NGX_OK) {
        if (ngx_http_spi_number(&s, &v) != NGX_OK || v < 1 || v > 1000000) {
            goto invalid;
        }

        rep->max_inflight = (ngx_uint_t) v;
        return NGX_CONF_OK;
    }

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", arg);

    return NGX_CONF_ERROR;
}


static char *
ngx_http_spi_replica(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t                *value;
    ngx_uint_t                i;
    ngx_http_spi_replica_t   *rep;
    ngx_http_spi_upstream_t  *up;

    up = ngx_http_spi_this_upstream(cf, conf);
    if (up == NULL) {
        return NGX_CONF_ERROR;
    }

    rep = ngx_array_push(&up->replicas);
    if (rep == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(rep, sizeof(ngx_http_spi_replica_t));

    value = cf->args->elts;
    rep->server = value[1];
    rep->id = value[1];
    rep->max_inflight = 64;

    for (i = 2; i < cf->args->nelts; i++) {
        if (ngx_http_spi_replica_param(cf, rep, &value[i]) != NGX_CONF_OK) {
            return NGX_CONF_ERROR;
        }
    }

    if (rep->pool == 0) {
        return "needs pool=spot or pool=on_demand";
    }

    if (rep->price <= 0.0) {
        return "needs price=<USD per hour>, above 0";
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_spi_kind(ngx_str_t *s)
{
    if (s->len == 4 && ngx_strncmp(s->data, "auto", 4) == 0) {
        return SPI_OPENAI_AUTO;
    }

    if (s->len == 4 && ngx_strncmp(s->data, "chat", 4) == 0) {
        return SPI_OPENAI_CHAT;
    }

    if (s->len == 11 && ngx_strncmp(s->data, "completions", 11) == 0) {
        return SPI_OPENAI_COMPLETIONS;
    }

    return NGX_ERROR;
}


static char *
ngx_http_spi_route(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_spi_loc_conf_t  *lcf = conf;

    ngx_str_t  *value;

    if (lcf->route != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    lcf->route = ngx_http_spi_upstream_get(cf, &value[1]);
    if (lcf->route == NULL) {
        return NGX_CONF_ERROR;
    }

    lcf->kind = SPI_OPENAI_AUTO;

    if (cf->args->nelts == 3) {
        lcf->kind = ngx_http_spi_kind(&value[2]);

        if (lcf->kind == NGX_ERROR) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid body kind \"%V\": "
                               "auto, chat or completions", &value[2]);
            return NGX_CONF_ERROR;
        }
    }

    return NGX_CONF_OK;
}


/* spotinfer_metrics and spotinfer_notice: content handlers. */
static char *
ngx_http_spi_location(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_str_t                  *value;
    ngx_http_spi_upstream_t   **field;
    ngx_http_core_loc_conf_t   *clcf;

    field = (ngx_http_spi_upstream_t **) ((char *) conf + cmd->offset);

    if (*field != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    *field = ngx_http_spi_upstream_get(cf, &value[1]);
    if (*field == NULL) {
        return NGX_CONF_ERROR;
    }

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);

    if (cmd->offset == offsetof(ngx_http_spi_loc_conf_t, metrics)) {
        clcf->handler = ngx_http_spi_metrics_handler;

    } else {
        clcf->handler = ngx_http_spi_notice_handler;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_spi_add_handler(ngx_conf_t *cf, ngx_http_phases phase,
    ngx_http_handler_pt handler)
{
    ngx_http_handler_pt        *h;
    ngx_http_core_main_conf_t  *cmcf;

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[phase].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = handler;

    return NGX_OK;
}


static ngx_int_t
ngx_http_spi_postconfiguration(ngx_conf_t *cf)
{
    ngx_uint_t                 i;
    ngx_http_spi_upstream_t  **ups;
    ngx_http_spi_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_spotinfer_module);
    ups = mcf->upstreams.elts;

    for (i = 0; i < mcf->upstreams.nelts; i++) {
        if (!ups[i]->defined) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "spotinfer: upstream \"%V\" is named by a "
                          "spotinfer directive but has no \"spotinfer\" "
                          "line in its upstream block", &ups[i]->name);
            return NGX_ERROR;
        }
    }

    if (mcf->upstreams.nelts == 0) {
        return NGX_OK;
    }

    if (ngx_http_spi_add_handler(cf, NGX_HTTP_PRECONTENT_PHASE,
                                 ngx_http_spi_route_handler)
        != NGX_OK
        || ngx_http_spi_add_handler(cf, NGX_HTTP_LOG_PHASE,
                                    ngx_http_spi_log_handler)
           != NGX_OK)
    {
        return NGX_ERROR;
    }

    return ngx_http_spi_filter_init(cf);
}


static void
ngx_http_spi_log_hook(void *data, int32_t level, const char *msg,
    size_t len)
{
    ngx_log_t   *log = data;
    ngx_uint_t   lvl;

    switch (level) {
    case SPI_LOG_ERROR:
        lvl = NGX_LOG_ERR;
        break;
    case SPI_LOG_WARN:
        lvl = NGX_LOG_WARN;
        break;
    case SPI_LOG_INFO:
        lvl = NGX_LOG_INFO;
        break;
    default:
        lvl = NGX_LOG_DEBUG;
        break;
    }

    ngx_log_error(lvl, log, 0, "spotinfer: %*s", len, msg);
}


static ngx_int_t
ngx_http_spi_upsert(ngx_http_spi_upstream_t *up, ngx_http_spi_replica_t *rep)
{
    spi_replica_info  info;

    ngx_memzero(&info, sizeof(spi_replica_info));

    info.struct_size = sizeof(spi_replica_info);
    info.id = (const char *) rep->id.data;
    info.id_len = rep->id.len;
    info.pool = (int32_t) rep->pool;
    info.zone = (const char *) rep->zone.data;
    info.zone_len = rep->zone.len;
    info.instance_type = (const char *) rep->instance_type.data;
    info.instance_type_len = rep->instance_type.len;
    info.models = (const char *) rep->models.data;
    info.models_len = rep->models.len;
    info.usd_per_hour = rep->price;
    info.max_inflight = (uint32_t) rep->max_inflight;
    info.node = (const char *) rep->node.data;
    info.node_len = rep->node.len;
    info.decode_tokens_per_s = rep->decode_tps;

    if (spi_replica_upsert(up->engine, &info) != SPI_OK) {
        ngx_log_error(NGX_LOG_EMERG, up->log, 0,
                      "spotinfer: upstream \"%V\": replica \"%V\": %s",
                      &up->name, &rep->id, spi_engine_errmsg(up->engine));
        return NGX_ERROR;
    }

    return NGX_OK;
}


/* An engine configured from the upstream's file with its replicas, and
 * the request handle the worker reuses (a worker routes one request at a
 * time). Also how the configuration is checked at load time. */
ngx_int_t
ngx_http_spi_engine_open(ngx_http_spi_upstream_t *up, ngx_log_t *log)
{
    ngx_uint_t               i;
    spi_hooks                hooks;
    ngx_http_spi_replica_t  *rep;

    ngx_memzero(&hooks, sizeof(spi_hooks));
    hooks.struct_size = sizeof(spi_hooks);
    hooks.log = ngx_http_spi_log_hook;
    hooks.log_user_data = log;
    hooks.log_level = SPI_LOG_WARN;

    up->log = log;

    if (spi_engine_new(&up->engine, &hooks) != SPI_OK) {
        ngx_log_error(NGX_LOG_EMERG, log, 0, "spotinfer: no engine");
        return NGX_ERROR;
    }

    if (spi_engine_configure(up->engine, (const char *) up->config_json.data,
                             up->config_json.len)
        != SPI_OK)
    {
        ngx_log_error(NGX_LOG_EMERG, log, 0, "spotinfer: \"%V\": %s",
                      &up->config_path, spi_engine_errmsg(up->engine));
        goto failed;
    }

    up->max_body = (off_t) ngx_http_spi_config_int(up, "max_body_bytes",
                                                   4194304);

    rep = up->replicas.elts;

    for (i = 0; i < up->replicas.nelts; i++) {
        if (ngx_http_spi_upsert(up, &rep[i]) != NGX_OK) {
            goto failed;
        }
    }

    if (spi_request_new(up->engine, &up->req) != SPI_OK) {
        ngx_log_error(NGX_LOG_EMERG, log, 0, "spotinfer: no request: %s",
                      spi_engine_errmsg(up->engine));
        goto failed;
    }

    return NGX_OK;

failed:

    ngx_http_spi_engine_close(up);

    return NGX_ERROR;
}


/* A number of the engine's effective configuration (its canonical JSON,
 * where each key's last part is one the configuration has once), dflt
 * when it cannot be read. */
int64_t
ngx_http_spi_config_int(ngx_http_spi_upstream_t *up, const char *key,
    int64_t dflt)
{
    size_t    needed;
    int64_t   v;
    u_char   *json, *p, name[64];

    needed = 0;
    (void) spi_engine_config_json(up->engine, NULL, 0, &needed);

    json = ngx_alloc(needed + 1, up->log);
    if (json == NULL) {
        return dflt;
    }

    v = dflt;
    ngx_snprintf(name, sizeof(name), "\"%s\":%Z", key);

    if (spi_engine_config_json(up->engine, (char *) json, needed + 1, NULL)
        == SPI_OK
        && (p = (u_char *) ngx_strstr(json, name)) != NULL)
    {
        p += ngx_strlen(name);
        while (*p == ' ') {
            p++;
        }
        if (*p >= '0' && *p <= '9') {
            for (v = 0; *p >= '0' && *p <= '9'; p++) {
                v = v * 10 + (*p - '0');
            }
        }
    }

    ngx_free(json);

    return v;
}


void
ngx_http_spi_engine_close(ngx_http_spi_upstream_t *up)
{
    spi_request_free(up->req);
    up->req = NULL;
    spi_engine_free(up->engine);
    up->engine = NULL;
}


static ngx_http_spi_main_conf_t *
ngx_http_spi_cycle_conf(ngx_cycle_t *cycle)
{
    if (cycle->conf_ctx[ngx_http_module.index] == NULL) {
        return NULL;
    }

    return ngx_http_cycle_get_module_main_conf(cycle,
                                               ngx_http_spotinfer_module);
}


/* Whether this process routes requests: a worker, or nginx's only
 * process with master_process off. */
static ngx_uint_t
ngx_http_spi_routing_process(void)
{
    return ngx_process == NGX_PROCESS_WORKER
           || ngx_process == NGX_PROCESS_SINGLE;
}


static ngx_int_t
ngx_http_spi_init_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                 i;
    ngx_http_spi_upstream_t  **ups, *up;
    ngx_http_spi_main_conf_t  *mcf;

    /* Workers route; the cache manager and loader run every module's
     * init_process too, and an engine there would scrape the replicas and
     * publish its zeros in worker 0's metrics slot. */
    if (!ngx_http_spi_routing_process()) {
        return NGX_OK;
    }

    mcf = ngx_http_spi_cycle_conf(cycle);
    if (mcf == NULL) {
        return NGX_OK;
    }

    ups = mcf->upstreams.elts;

    for (i = 0; i < mcf->upstreams.nelts; i++) {
        up = ups[i];

        if (ngx_http_spi_engine_open(up, cycle->log) != NGX_OK) {
            return NGX_ERROR;
        }

        ngx_http_spi_notice_start(up);
        up->timer.handler = ngx_http_spi_tick;
        up->timer.data = up;
        up->timer.log = cycle->log;
        up->timer.cancelable = 1;

        ngx_add_timer(&up->timer, 1);
    }

    return NGX_OK;
}


static void
ngx_http_spi_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                 i, j;
    ngx_http_spi_replica_t    *rep;
    ngx_http_spi_upstream_t  **ups;
    ngx_http_spi_main_conf_t  *mcf;

    if (!ngx_http_spi_routing_process()) {
        return;
    }

    mcf = ngx_http_spi_cycle_conf(cycle);
    if (mcf == NULL) {
        return;
    }

    ups = mcf->upstreams.elts;

    for (i = 0; i < mcf->upstreams.nelts; i++) {
        rep = ups[i]->replicas.elts;

        for (j = 0; j < ups[i]->replicas.nelts; j++) {
            ngx_http_spi_scrape_stop(&rep[j]);
        }

        if (ups[i]->timer.timer_set) {
            ngx_del_timer(&ups[i]->timer);
        }

        ngx_http_spi_engine_close(ups[i]);

        ngx_free(ups[i]->text);
        ups[i]->text = NULL;
        ups[i]->text_cap = 0;

        ngx_log_error(NGX_LOG_NOTICE, cycle->log, 0,
                      "spotinfer: upstream \"%V\": engine freed",
                      &ups[i]->name);
    }
}


/* Every 100 ms: notices pushed to other workers, the engine's node work,
 * and the backends' /metrics every scrape_interval. */
static void
ngx_http_spi_tick(ngx_event_t *ev)
{
    ngx_uint_t                i;
    ngx_http_spi_replica_t   *rep;
    ngx_http_spi_upstream_t  *up = ev->data;

    if (ngx_exiting || ngx_quit || ngx_terminate || up->engine == NULL) {
        return;
    }

    ngx_http_spi_notice_sync(up);
    (void) spi_engine_tick(up->engine);

    if (up->last_publish == 0 || ngx_current_msec - up->last_publish >= 1000) {
        up->last_publish = ngx_current_msec;
        (void) ngx_http_spi_metrics_publish(up);
    }

    if (up->last_scrape == 0
        || ngx_current_msec - up->last_scrape >= up->scrape_interval)
    {
        up->last_scrape = ngx_current_msec;
        rep = up->replicas.elts;

        for (i = 0; i < up->replicas.nelts; i++) {
            ngx_http_spi_scrape_start(&rep[i]);
        }
    }

    ngx_add_timer(ev, ngx_min(NGX_HTTP_SPI_TICK, up->scrape_interval));
}
