/*
 * chart.c - the simulator's --svg chart: four panels in one plain SVG, each
 * answering one question about the policies compared on one trace:
 *   1. what does each policy cost (ledger $ per 1M tokens, and the saving
 *      against the all-on-demand baseline);
 *   2. how much of the prefix cache does it hit, against the pooled-LRU and
 *      oracle ceilings;
 *   3. how long does gold wait for its first token (p50/p95/p99 on a log
 *      axis, with the gold p95 SLO);
 *   4. what did spot capacity do over the run, and when did notices, drains
 *      and replays happen (the library policy's run).
 * Horizontal bars throughout, so policy names and value labels have room.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "sim_run.h"

#define CH_W 1200
#define CH_H 860
#define PANEL_W 570
#define PANEL_H 370
#define NAME_W 120  /* policy names, left of the bars */
#define PLOT_TOP 72 /* panel title, subtitle and label rows above the bars */
#define PLOT_BOTTOM 36 /* axis ticks below */

static const char *C_LIB = "#d1495b", *C_OTHER = "#5b8db8", *C_BASE = "#8c8c8c";
static const char *C_ORACLE = "#2a7f3f", *C_POOLED = "#c77d00", *C_SLO = "#b00020";
static const char *C_NOTICE = "#c77d00", *C_DRAIN = "#5b8db8", *C_REPLAY = "#d1495b";

/* A panel's frame and where its bars go. */
typedef struct panel {
  FILE *f;
  double x, y;         /* top left */
  double px, py, pw, ph; /* plot area */
} panel;

static void text(FILE *f, double x, double y, const char *anchor, const char *cls,
                 const char *fill, const char *fmt, ...) {
  char buf[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"%s\" class=\"%s\" fill=\"%s\">",
          x, y, anchor, cls, fill);
  /* Trace file and zone names are the user's: escape them. */
  for (const char *c = buf; *c; c++) {
    if (*c == '&') fputs("&amp;", f);
    else if (*c == '<') fputs("&lt;", f);
    else if (*c == '>') fputs("&gt;", f);
    else fputc(*c, f);
  }
  fputs("</text>\n", f);
}

static void line(FILE *f, double x1, double y1, double x2, double y2, const char *stroke,
                 double width, const char *dash) {
  fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
             "stroke-width=\"%.1f\"%s%s%s/>\n",
          x1, y1, x2, y2, stroke, width, dash ? " stroke-dasharray=\"" : "", dash ? dash : "",
          dash ? "\"" : "");
}

static void rect(FILE *f, double x, double y, double w, double h, const char *fill) {
  fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x, y,
          w > 0 ? w : 0, h > 0 ? h : 0, fill);
}

/* note_w: room right of the plot for value labels. */
static panel panel_open(FILE *f, int col, int row, double note_w, const char *id,
                        const char *title) {
  panel p = {f, 20 + col * (PANEL_W + 20.0), 70 + row * (PANEL_H + 20.0), 0, 0, 0, 0};
  p.px = p.x + NAME_W, p.py = p.y + PLOT_TOP;
  p.pw = PANEL_W - NAME_W - note_w, p.ph = PANEL_H - PLOT_TOP - PLOT_BOTTOM;
  fprintf(f, "<g id=\"%s\">\n", id);
  fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%d\" height=\"%d\" fill=\"#fafafa\" "
             "stroke=\"#d0d0d0\"/>\n", p.x, p.y, PANEL_W, PANEL_H);
  text(f, p.x + 10, p.y + 20, "start", "title", "#222", "%s", title);
  return p;
}

static void panel_close(const panel *p) { fprintf(p->f, "</g>\n"); }

static const char *policy_colour(const sim_result *r) {
  if (!strcmp(r->name, "library")) return C_LIB;
  if (!strcmp(r->name, "all-on-demand")) return C_BASE;
  return C_OTHER;
}

/* Row k of n in the plot area: its centre line and bar height. */
static double row_y(const panel *p, size_t k, size_t n, double *bar_h) {
  double rh = p->ph / (double)(n ? n : 1);
  *bar_h = rh * 0.6 < 22 ? rh * 0.6 : 22;
  return p->py + rh * ((double)k + 0.5);
}

static void policy_names(const panel *p, const sim_result *rs, size_t n) {
  double bh;
  for (size_t k = 0; k < n; k++)
    text(p->f, p->px - 8, row_y(p, k, n, &bh) + 4, "end", "name", "#222", "%s", rs[k].name);
}

/* A linear axis from 0 to mx along the bottom, with about five ticks. */
static void linear_axis(const panel *p, double mx, const char *unit) {
  double raw = mx / 5, mag = pow(10, floor(log10(raw))), step = mag;
  if (raw / mag > 5) step = 10 * mag;
  else if (raw / mag > 2) step = 5 * mag;
  else if (raw / mag > 1) step = 2 * mag;
  double yb = p->py + p->ph;
  line(p->f, p->px, yb, p->px + p->pw, yb, "#888", 1, NULL);
  for (double v = 0; v <= mx * 1.0001; v += step) {
    double x = p->px + p->pw * v / mx;
    line(p->f, x, p->py, x, yb, "#e4e4e4", 1, NULL);
    text(p->f, x, yb + 14, "middle", "tick", "#555", "%g", v);
  }
  text(p->f, p->px + p->pw / 2, yb + 29, "middle", "tick", "#555", "%s", unit);
}

/* ------------------------------------------------------------ 1. cost */

static const sim_result *baseline(const sim_result *rs, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (!strcmp(rs[k].name, "all-on-demand")) return &rs[k];
  return NULL;
}

static double per_million(const sim_result *r) {
  return r->tokens > 0 ? r->usd / r->tokens * 1e6 : 0;
}

static void panel_cost(FILE *f, const sim_result *rs, size_t n) {
  panel p = panel_open(f, 0, 0, 120, "panel-cost", "1. What does each policy cost?");
  text(f, p.x + 10, p.y + 38, "start", "sub", "#555",
       "ledger $ per 1M tokens (prompt + output); saving against all-on-demand");
  double mx = 0;
  for (size_t k = 0; k < n; k++)
    if (per_million(&rs[k]) > mx) mx = per_million(&rs[k]);
  mx = mx > 0 ? mx * 1.05 : 1;
  linear_axis(&p, mx, "$ per 1M tokens");
  policy_names(&p, rs, n);
  const sim_result *base = baseline(rs, n);
  for (size_t k = 0; k < n; k++) {
    double bh, y = row_y(&p, k, n, &bh), v = per_million(&rs[k]), w = p.pw * v / mx;
    rect(f, p.px, y - bh / 2, w, bh, policy_colour(&rs[k]));
    char save[48] = "";
    double d = base && base->usd > 0 ? round(-100.0 * (1 - rs[k].usd / base->usd)) : 0;
    /* Against the baseline only when both did the same work; else how
     * much the run left unfinished. */
    uint64_t all = rs[k].completed + rs[k].lost + rs[k].expired + rs[k].at_horizon;
    if (base && base != &rs[k] && !sim_savings_comparable(&rs[k], base)) {
      if (sim_unfinished(&rs[k]))
        snprintf(save, sizeof save, " (%.1f%% unfinished)",
                 all ? 100.0 * (double)sim_unfinished(&rs[k]) / (double)all : 0);
      else
        snprintf(save, sizeof save, " (n/a)");
    }
    else if (base && base != &rs[k] && base->usd > 0)
      snprintf(save, sizeof save, d == 0 ? " (0%%)" : " (%+.0f%%)", d);
    text(f, p.px + w + 4, y + 4, "start", "value cost", "#222", "$%#.3g%s", v, save);
  }
  panel_close(&p);
}

/* ------------------------------------------------------- 2. hit rate */

static void ceiling_line(const panel *p, double pct, double mx, int row, const char *colour,
                         const char *dash, const char *label) {
  double x = p->px + p->pw * pct / mx;
  line(p->f, x, p->py - 4, x, p->py + p->ph, colour, 2, dash);
  /* Each ceiling's label on its own row above the plot: they cannot
   * overprint however close the two ceilings are. */
  double ly = p->py - 8 - 13.0 * (1 - row);
  const char *anchor = x > p->px + p->pw * 0.6 ? "end" : "start";
  text(p->f, x + (anchor[0] == 'e' ? -4 : 4), ly, anchor, "value", colour, "%s %.1f%%", label,
       pct);
}

static void panel_hits(FILE *f, const sim_ceilings *c, const sim_result *rs, size_t n) {
  panel p = panel_open(f, 1, 0, 110, "panel-hits", "2. How much of the prefix cache is reused?");
  text(f, p.x + 10, p.y + 38, "start", "sub", "#555",
       "prompt blocks hit; in brackets, as a share of the oracle ceiling");
  double oracle = c->total > 0 ? 100 * c->oracle / c->total : 0;
  double pooled = c->total > 0 ? 100 * c->pooled / c->total : 0;
  double mx = oracle;
  for (size_t k = 0; k < n; k++)
    if (sim_hit_pct(&rs[k]) > mx) mx = sim_hit_pct(&rs[k]);
  mx = mx > 0 ? ceil(mx * 1.05 / 10) * 10 : 100;
  if (mx > 100) mx = 100;
  linear_axis(&p, mx, "prompt blocks served from cache, %");
  policy_names(&p, rs, n);
  for (size_t k = 0; k < n; k++) {
    double bh, y = row_y(&p, k, n, &bh), v = sim_hit_pct(&rs[k]), w = p.pw * v / mx;
    rect(f, p.px, y - bh / 2, w, bh, policy_colour(&rs[k]));
    text(f, p.px + p.pw + 6, y + 4, "start", "value", "#222", "%.1f%%  (%.0f%%)", v,
         oracle > 0 ? 100 * v / oracle : 0);
  }
  ceiling_line(&p, oracle, mx, 0, C_ORACLE, NULL, "oracle ceiling");
  ceiling_line(&p, pooled, mx, 1, C_POOLED, "6,3", "pooled-LRU ceiling");
  panel_close(&p);
}

/* ------------------------------------------------------------ 3. TTFT */

/* Decades lo..hi covering every percentile shown and the SLO. */
static void ttft_range(const sim_result *rs, size_t n, double *lo, double *hi) {
  double a = SIM_SLO_GOLD_TTFT_P95_MS, b = SIM_SLO_GOLD_TTFT_P95_MS;
  for (size_t k = 0; k < n; k++) {
    if (!rs[k].done_class[SPI_CLASS_GOLD]) continue;
    for (int j = 0; j < 3; j++) {
      double v = rs[k].ttft[SPI_CLASS_GOLD][j];
      if (v > 0 && v < a) a = v;
      if (v > b) b = v;
    }
  }
  *lo = pow(10, floor(log10(a)));
  *hi = pow(10, ceil(log10(b * 1.01)));
}

static double log_x(const panel *p, double v, double lo, double hi) {
  if (v < lo) v = lo;
  return p->px + p->pw * (log10(v) - log10(lo)) / (log10(hi) - log10(lo));
}

static void log_axis(const panel *p, double lo, double hi) {
  double yb = p->py + p->ph;
  line(p->f, p->px, yb, p->px + p->pw, yb, "#888", 1, NULL);
  for (double d = lo; d <= hi * 1.0001; d *= 10) {
    for (int m = 1; m < 10 && d * m <= hi * 1.0001; m++) {
      double x = log_x(p, d * m, lo, hi);
      line(p->f, x, p->py, x, yb, m == 1 ? "#d0d0d0" : "#efefef", 1, NULL);
    }
    double x = log_x(p, d, lo, hi);
    if (d >= 1000) text(p->f, x, yb + 14, "middle", "tick", "#555", "%g s", d / 1000);
    else text(p->f, x, yb + 14, "middle", "tick", "#555", "%g ms", d);
  }
  text(p->f, p->px + p->pw / 2, yb + 29, "middle", "tick", "#555",
       "gold time to first token (log scale)");
}

static void fmt_ms(char *out, size_t cap, double ms) {
  if (ms >= 600000) snprintf(out, cap, "%.0f min", ms / 60000);
  else if (ms >= 10000) snprintf(out, cap, "%.0f s", ms / 1000);
  else if (ms >= 1000) snprintf(out, cap, "%.1f s", ms / 1000);
  else snprintf(out, cap, "%.0f ms", ms);
}

static void ttft_row(const panel *p, const sim_result *r, size_t k, size_t n, double lo,
                     double hi) {
  double bh, y = row_y(p, k, n, &bh);
  if (!r->done_class[SPI_CLASS_GOLD]) {
    text(p->f, p->px + 6, y + 4, "start", "value", "#555",
         r->n_class[SPI_CLASS_GOLD] ? "no gold request completed" : "no gold requests");
    return;
  }
  const double *t = r->ttft[SPI_CLASS_GOLD];
  double x50 = log_x(p, t[0], lo, hi), x95 = log_x(p, t[1], lo, hi), x99 = log_x(p, t[2], lo, hi);
  const char *col = policy_colour(r);
  line(p->f, x50, y, x99, y, col, 2, NULL);
  rect(p->f, x50, y - bh / 2, x95 - x50, bh, col);
  line(p->f, x99, y - bh / 2, x99, y + bh / 2, col, 2, NULL);
  fprintf(p->f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"white\" stroke=\"%s\" "
                "stroke-width=\"2\"/>\n", x50, y, col);
  char a[16], b[16], c[16];
  fmt_ms(a, sizeof a, t[0]), fmt_ms(b, sizeof b, t[1]), fmt_ms(c, sizeof c, t[2]);
  text(p->f, p->px + p->pw + 6, y + 4, "start", "value", t[1] < SIM_SLO_GOLD_TTFT_P95_MS ?
       "#222" : C_SLO, "%s / %s / %s", a, b, c);
}

static void panel_ttft(FILE *f, const sim_result *rs, size_t n) {
  panel p = panel_open(f, 0, 1, 160, "panel-ttft", "3. How long does gold wait for a first token?");
  text(f, p.x + 10, p.y + 38, "start", "sub", "#555",
       "o p50, bar to p95, tick at p99; right: p50 / p95 / p99 (red: SLO missed)");
  double lo, hi;
  ttft_range(rs, n, &lo, &hi);
  log_axis(&p, lo, hi);
  policy_names(&p, rs, n);
  for (size_t k = 0; k < n; k++) ttft_row(&p, &rs[k], k, n, lo, hi);
  double xs = log_x(&p, SIM_SLO_GOLD_TTFT_P95_MS, lo, hi);
  line(f, xs, p.py - 4, xs, p.py + p.ph, C_SLO, 2, "6,3");
  text(f, xs + 4, p.py - 6, "start", "value", C_SLO, "SLO: gold p95 < %.0f ms",
       SIM_SLO_GOLD_TTFT_P95_MS);
  panel_close(&p);
}

/* -------------------------------------------------------- 4. timeline */

static const sim_result *timeline_run(const sim_result *rs, size_t n) {
  for (size_t k = 0; k < n; k++)
    if (!strcmp(rs[k].name, "library")) return &rs[k];
  for (size_t k = 0; k < n; k++)
    if (rs[k].tl.nz) return &rs[k];
  return n ? &rs[0] : NULL;
}

/* One zone's lane: capacity as a filled step area, 0 to the zone's size. */
static void zone_lane(const panel *p, const sim_timeline *t, const char *zone, uint32_t z,
                      uint32_t bins, double y0, double h) {
  uint32_t size = t->zone_size[z] ? t->zone_size[z] : 1;
  double bw = p->pw / bins;
  rect(p->f, p->px, y0, p->pw, h, "#f0f0f0");
  fprintf(p->f, "<path fill=\"#7fb77e\" stroke=\"#3f7f3e\" d=\"M%.1f %.1f", p->px, y0 + h);
  for (uint32_t b = 0; b < bins; b++) {
    double yc = y0 + h - h * sim_timeline_cap_at(t, b, z) / size;
    fprintf(p->f, " L%.1f %.1f L%.1f %.1f", p->px + bw * b, yc, p->px + bw * (b + 1), yc);
  }
  fprintf(p->f, " L%.1f %.1f Z\"/>\n", p->px + p->pw, y0 + h);
  text(p->f, p->px - 8, y0 + h / 2, "end", "name", "#222", "%s", zone);
  text(p->f, p->px - 8, y0 + h / 2 + 12, "end", "tick", "#555", "%u replicas", t->zone_size[z]);
}

/* One event kind as bars per bin, scaled to its busiest bin. */
static void event_lane(const panel *p, const uint32_t *v, uint32_t bins, double y0, double h,
                       const char *colour, const char *label) {
  uint32_t mx = 0, total = 0;
  for (uint32_t b = 0; b < bins; b++) total += v[b], mx = v[b] > mx ? v[b] : mx;
  double bw = p->pw / bins;
  line(p->f, p->px, y0 + h, p->px + p->pw, y0 + h, "#c8c8c8", 1, NULL);
  for (uint32_t b = 0; b < bins; b++)
    if (v[b]) rect(p->f, p->px + bw * b, y0 + h - h * v[b] / mx, bw < 2 ? 2 : bw, h * v[b] / mx,
                   colour);
  text(p->f, p->px - 8, y0 + h - 2, "end", "name", colour, "%s %u", label, total);
}

static void time_axis(const panel *p, double span_s, double y) {
  int minutes = span_s >= 300;
  double mx = minutes ? span_s / 60 : span_s;
  double raw = mx / 6, mag = pow(10, floor(log10(raw > 0 ? raw : 1))), step = mag;
  if (raw / mag > 5) step = 10 * mag;
  else if (raw / mag > 2) step = 5 * mag;
  else if (raw / mag > 1) step = 2 * mag;
  for (double v = 0; v <= mx * 1.0001; v += step)
    text(p->f, p->px + p->pw * v / mx, y + 14, "middle", "tick", "#555", "%g", v);
  text(p->f, p->px + p->pw / 2, y + 29, "middle", "tick", "#555", "simulated time, %s",
       minutes ? "minutes" : "seconds");
}

static void panel_timeline(FILE *f, const sim_setup *su, const sim_result *rs, size_t n) {
  panel p = panel_open(f, 1, 1, 20, "panel-timeline", "4. What did spot capacity do over the run?");
  const sim_result *r = timeline_run(rs, n);
  const sim_timeline *t = r ? &r->tl : NULL;
  uint32_t spot = 0;
  for (uint32_t z = 0; t && z < t->nz; z++) spot += t->zone_size[z];
  if (!spot) {
    text(f, p.x + PANEL_W / 2.0, p.py + p.ph / 2, "middle", "sub", "#555",
         "no spot replicas in this run: nothing was interrupted");
    panel_close(&p);
    return;
  }
  text(f, p.x + 10, p.y + 38, "start", "sub", "#555",
       "replicas up per zone (green; grey: down) and events per time bin, %s run", r->name);
  uint32_t bins = (uint32_t)ceil(t->end_s / t->bin_s);
  bins = bins < 1 ? 1 : bins > SIM_TL_BINS ? SIM_TL_BINS : bins;
  double ev_h = 22, ev_gap = 6, lanes_h = p.ph - 3 * (ev_h + ev_gap);
  double zh = lanes_h / t->nz;
  for (uint32_t z = 0; z < t->nz; z++)
    zone_lane(&p, t, su->zones[z].tr.zone, z, bins, p.py + zh * z + 2, zh - 6);
  double y = p.py + lanes_h + ev_gap;
  event_lane(&p, t->notices, bins, y, ev_h, C_NOTICE, "notices");
  event_lane(&p, t->drains, bins, y + ev_h + ev_gap, ev_h, C_DRAIN, "drains");
  event_lane(&p, t->replays, bins, y + 2 * (ev_h + ev_gap), ev_h, C_REPLAY, "replays");
  time_axis(&p, bins * t->bin_s, p.py + p.ph);
  panel_close(&p);
}

/* ------------------------------------------------------------- whole */

static void header(FILE *f, const sim_setup *su) {
  fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
             "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n",
          CH_W, CH_H, CH_W, CH_H);
  fprintf(f, "<style>.title{font-size:15px;font-weight:bold}.sub{font-size:11px}"
             ".name{font-size:12px}.tick{font-size:10px}"
             ".value{font-size:11px;paint-order:stroke;stroke:#fafafa;stroke-width:3px}"
             "</style>\n");
  rect(f, 0, 0, CH_W, CH_H, "white");
  text(f, 20, 30, "start", "title", "#111", "spotinfer simulator: policies on one trace");
  text(f, 20, 50, "start", "sub", "#444", "trace: %s, %zu requests",
       su->tr.source ? su->tr.source : "?", su->tr.n);
}

int sim_write_chart(const char *path, const sim_setup *su, const sim_result *rs, size_t n) {
  FILE *f = fopen(path, "w");
  if (!f) return -1;
  header(f, su);
  panel_cost(f, rs, n);
  panel_hits(f, &su->ceil, rs, n);
  panel_ttft(f, rs, n);
  panel_timeline(f, su, rs, n);
  fprintf(f, "</svg>\n");
  int err = ferror(f);
  if (fclose(f) || err) {
    if (!errno) errno = EIO;
    return -1;
  }
  return 0;
}
