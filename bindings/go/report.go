package spotinfer

/*
#include <stdint.h>
#include <string.h>
#include <spotinfer/spotinfer.h>

// The parsers' reports are newer than the rest of the API: weak references,
// as in notices.go, so this package still runs against a library without
// them (the call then answers SPI_ENOTSUP). Every call of these functions
// is in this file, where the pragmas apply.
#pragma weak spi_notice_parse_v2
#pragma weak spi_metrics_parse_v2

#define SPI_GO_REPORT_MISSING (-1000)

static int spi_go_notice_parse_v2(int32_t format, int32_t status,
                                  const char *body, size_t len,
                                  const char *node, size_t node_len,
                                  int64_t now, spi_notice *out, size_t cap,
                                  spi_parse_report *rep, char *err,
                                  size_t errcap) {
  if (!spi_notice_parse_v2) return SPI_GO_REPORT_MISSING;
  for (size_t i = 0; i < cap; i++) {
    memset(&out[i], 0, sizeof out[i]);
    out[i].struct_size = sizeof out[i];
  }
  memset(rep, 0, sizeof *rep);
  rep->struct_size = sizeof *rep;
  return spi_notice_parse_v2(format, status, body, len, node, node_len, now,
                             out, cap, rep, err, errcap);
}

static int spi_go_metrics_parse_v2(const char *text, size_t len,
                                   spi_load *out, spi_parse_report *rep,
                                   char *err, size_t errcap) {
  if (!spi_metrics_parse_v2) return SPI_GO_REPORT_MISSING;
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  memset(rep, 0, sizeof *rep);
  rep->struct_size = sizeof *rep;
  return spi_metrics_parse_v2(text, len, out, rep, err, errcap);
}
*/
import "C"

import "runtime"

// ParseReport says what a parser of outside text read and what it left
// out. Clouds add event types and servers add exposition syntax without
// warning, so an event of a type or state the library does not know, or a
// metrics line in newer syntax, is skipped and counted instead of failing
// the whole body; a malformed body still fails.
type ParseReport struct {
	Found        int    // notices found, or load samples read
	Skipped      int    // event entries or lines skipped as unknown
	FirstSkipped int    // 1-based entry index or line number of the first; 0 = none
	Message      string // names the first skipped one; "" when none
}

func reportFrom(r *C.spi_parse_report, msg *C.char) ParseReport {
	return ParseReport{Found: int(r.found), Skipped: int(r.skipped),
		FirstSkipped: int(r.first_skipped), Message: C.GoString(msg)}
}

// ParseNoticeReport is ParseNotice that also reports the events it skipped
// (an Azure event type, AWS scheduled code or EventBridge detail-type the
// library does not know); the document's other events are still read.
func ParseNoticeReport(format NoticeFormat, httpStatus int, body []byte, node string, nowNs int64) ([]Notice, ParseReport, error) {
	b, bn := cbytes(body)
	nd, ndn := cstr(node)
	var errbuf [256]C.char
	var rep C.spi_parse_report
	notices, err := parseNotices("spi_notice_parse_v2", C.SPI_GO_REPORT_MISSING, errbuf[:],
		func(out *C.spi_notice, capacity C.size_t) (C.int, int) {
			rc := C.spi_go_notice_parse_v2(C.int32_t(format), C.int32_t(httpStatus), b, bn, nd, ndn,
				C.int64_t(nowNs), out, capacity, &rep, &errbuf[0], C.size_t(len(errbuf)))
			runtime.KeepAlive(body)
			runtime.KeepAlive(node)
			return rc, int(rep.found)
		})
	if err != nil {
		return nil, ParseReport{}, err
	}
	return notices, reportFrom(&rep, &errbuf[0]), nil
}

// ParseMetricsReport is ParseMetrics that also reports the lines it skipped
// (a native-histogram value, an st@ start time) while reading the load.
func ParseMetricsReport(text []byte) (Load, ParseReport, error) {
	var out C.spi_load
	var rep C.spi_parse_report
	var errbuf [256]C.char
	t, tn := cbytes(text)
	rc := C.spi_go_metrics_parse_v2(t, tn, &out, &rep, &errbuf[0], C.size_t(len(errbuf)))
	runtime.KeepAlive(text)
	if rc == C.SPI_GO_REPORT_MISSING {
		return Load{}, ParseReport{}, missing("spi_metrics_parse_v2")
	}
	if rc != 0 {
		return Load{}, ParseReport{}, newError(rc, "spi_metrics_parse_v2", C.GoString(&errbuf[0]))
	}
	return Load{float64(out.running), float64(out.waiting), float64(out.kv_usage),
		int64(out.at_ns)}, reportFrom(&rep, &errbuf[0]), nil
}
