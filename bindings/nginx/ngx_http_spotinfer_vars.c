/*
 * ngx_http_spotinfer: the decision as variables, for log_format and
 * add_header:
 *
 *   $spotinfer_replica  the replica chosen ("" when none)
 *   $spotinfer_class    gold, silver or bronze
 *   $spotinfer_reason   affinity, rendezvous, shed, no_capacity, ...
 *   $spotinfer_blocks   prefix blocks the replica likely holds / the
 *                       prompt's blocks, e.g. "3/4"
 *   $spotinfer_tokens   output tokens: a stream's (the backend's count
 *                       when its events carry one, else their words), a
 *                       whole answer's usage (at log time: what the
 *                       ticket was finished with)
 *
 * A try after a failed one is routed again: the variables are then the
 * last try's, its replica, its decision and its ticket's tokens (a route
 * that placed the request nowhere leaves the try before it).
 */

#include "ngx_http_spotinfer.h"


enum {
    NGX_HTTP_SPI_VAR_REPLICA = 0,
    NGX_HTTP_SPI_VAR_CLASS,
    NGX_HTTP_SPI_VAR_REASON,
    NGX_HTTP_SPI_VAR_BLOCKS,
    NGX_HTTP_SPI_VAR_TOKENS
};


static ngx_int_t ngx_http_spi_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_spi_vars[] = {

    { ngx_string("spotinfer_replica"), NULL, ngx_http_spi_variable,
      NGX_HTTP_SPI_VAR_REPLICA, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("spotinfer_class"), NULL, ngx_http_spi_variable,
      NGX_HTTP_SPI_VAR_CLASS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("spotinfer_reason"), NULL, ngx_http_spi_variable,
      NGX_HTTP_SPI_VAR_REASON, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("spotinfer_blocks"), NULL, ngx_http_spi_variable,
      NGX_HTTP_SPI_VAR_BLOCKS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("spotinfer_tokens"), NULL, ngx_http_spi_variable,
      NGX_HTTP_SPI_VAR_TOKENS, NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_spi_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_spi_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static void
ngx_http_spi_var_text(ngx_http_variable_value_t *v, u_char *data, size_t len)
{
    v->data = data;
    v->len = len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
}


static ngx_int_t
ngx_http_spi_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v,
    uintptr_t data)
{
    u_char                  *p;
    const char              *s;
    ngx_http_spi_ctx_t      *ctx;
    ngx_http_spi_replica_t  *rep;

    ctx = ngx_http_spi_get_ctx(r->main);

    if (ctx == NULL || !ctx->decided) {
        v->not_found = 1;
        return NGX_OK;
    }

    switch (data) {

    case NGX_HTTP_SPI_VAR_REPLICA:
        if (!ctx->routed) {
            ngx_http_spi_var_text(v, (u_char *) "", 0);
            return NGX_OK;
        }

        rep = ctx->up->replicas.elts;
        rep = &rep[ctx->tried[ctx->next ? ctx->next - 1 : 0]];
        ngx_http_spi_var_text(v, rep->id.data, rep->id.len);
        return NGX_OK;

    case NGX_HTTP_SPI_VAR_CLASS:
        s = spi_class_name(ctx->klass);
        break;

    case NGX_HTTP_SPI_VAR_REASON:
        s = spi_reason_name(ctx->reason);
        break;

    default:
        p = ngx_pnalloc(r->pool, 2 * NGX_INT64_LEN + 1);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (data == NGX_HTTP_SPI_VAR_BLOCKS) {
            ngx_http_spi_var_text(v, p, ngx_sprintf(p, "%uD/%uD",
                                  ctx->matched_blocks, ctx->total_blocks)
                                  - p);
        } else {
            ngx_http_spi_var_text(v, p,
                                  ngx_sprintf(p, "%uL",
                                              ngx_http_spi_output_tokens(ctx))
                                  - p);
        }

        return NGX_OK;
    }

    ngx_http_spi_var_text(v, (u_char *) s, ngx_strlen(s));

    return NGX_OK;
}
