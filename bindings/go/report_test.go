package spotinfer

import (
	"errors"
	"strings"
	"testing"
)

func TestParseNoticeReportSkipsUnknownEvents(t *testing.T) {
	body := []byte(`{"DocumentIncarnation":7,"Events":[` +
		`{"EventId":"N1","EventType":"LiveMigrate","EventStatus":"Scheduled",` +
		`"NotBefore":"Sun, 22 Nov 2026 06:30:00 GMT","Resources":["vm9"]},` +
		`{"EventId":"P1","EventType":"Preempt","EventStatus":"Scheduled",` +
		`"NotBefore":"Sun, 22 Nov 2026 06:00:30 GMT","Resources":["vm3"]}]}`)
	ns, rep, err := ParseNoticeReport(NoticeAzureScheduled, 200, body, "", now)
	skipUnlessExported(t, err, "spi_notice_parse_v2")
	must(t, err)
	if len(ns) != 1 || ns[0].Kind != NoticePreempt || ns[0].Node != "vm3" {
		t.Fatalf("%+v", ns)
	}
	if rep.Found != 1 || rep.Skipped != 1 || rep.FirstSkipped != 1 ||
		!strings.Contains(rep.Message, "LiveMigrate") {
		t.Fatalf("%+v", rep)
	}
	old, err := ParseNotice(NoticeAzureScheduled, 200, body, "", now)
	must(t, err)
	if len(old) != 1 || old[0] != ns[0] {
		t.Fatalf("%+v", old)
	}
	if _, _, err := ParseNoticeReport(NoticeAzureScheduled, 200, []byte(`{"Ev`), "", now); !errors.Is(err, ErrParse) {
		t.Fatal(err)
	}
}

func TestParseMetricsReportSkipsNewerSyntax(t *testing.T) {
	page := []byte("{\"vllm:num_requests_running\",engine=\"0\"} 3\n" +
		"vllm:ttft_seconds {count:2,sum:0.5,schema:0}\n" +
		"vllm:request_success_total 9 st@1731602000\n" +
		"vllm:num_requests_waiting 1\n")
	l, rep, err := ParseMetricsReport(page)
	skipUnlessExported(t, err, "spi_metrics_parse_v2")
	must(t, err)
	if l.Running != 3 || l.Waiting != 1 {
		t.Fatalf("%+v", l)
	}
	if rep.Found != 2 || rep.Skipped != 2 || rep.FirstSkipped != 2 ||
		!strings.Contains(rep.Message, "native-histogram") {
		t.Fatalf("%+v", rep)
	}
	if _, _, err := ParseMetricsReport([]byte("vllm:num_requests_running{ 1\n")); !errors.Is(err, ErrParse) ||
		!strings.Contains(err.Error(), "line 1") {
		t.Fatal(err)
	}
}
