// Command promlint checks the metrics text libspotinfer renders against the
// Prometheus conventions, with the Prometheus client library's own parser
// and linter (the checks `promtool check metrics` runs).
//
// It builds an engine through the Go binding, routes and finishes requests
// so every metric family has samples, renders the text and then
//   - parses it with expfmt's text parser (a parse error fails),
//   - lints it with promlint (any problem fails: units that are not base
//     units, counters without _total, bad names, missing help),
//   - checks the TTFT histogram is in seconds with buckets in seconds.
//
// Given file arguments ("-" for stdin) it checks those texts instead.
//
//	go run . [FILE|-]...
package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"strings"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		text, err := engineText()
		if err != nil {
			fmt.Fprintln(os.Stderr, "promlint:", err)
			return 1
		}
		return check("engine metrics", text, true)
	}
	rc := 0
	for _, a := range args {
		var b []byte
		var err error
		if a == "-" {
			b, err = io.ReadAll(os.Stdin)
		} else {
			b, err = os.ReadFile(a)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "promlint:", err)
			return 2
		}
		if r := check(a, string(b), false); r != 0 {
			rc = r
		}
	}
	return rc
}

// engineText renders the metrics of an engine that has routed and finished
// requests of every class, with known TTFTs.
func engineText() (string, error) {
	e, err := spotinfer.NewEngine(`{}`)
	if err != nil {
		return "", err
	}
	defer e.Close()
	for _, r := range []struct {
		id   string
		pool spotinfer.Pool
		usd  float64
	}{{"spot-a", spotinfer.PoolSpot, 1.8}, {"od-a", spotinfer.PoolOnDemand, 4.5}} {
		if err := e.UpsertReplica(spotinfer.ReplicaInfo{ID: r.id, Pool: r.pool,
			USDPerHour: r.usd, MaxInflight: 16}); err != nil {
			return "", err
		}
		if err := e.ReportLoad(r.id, spotinfer.Load{Running: 1, KVUsage: 0.2}); err != nil {
			return "", err
		}
	}
	bodies := []string{
		`{"model":"llama","stream":true,"messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"llama","messages":[{"role":"user","content":"summarise this"}]}`,
		`{"model":"llama","service_tier":"flex","messages":[{"role":"user","content":"batch"}]}`,
	}
	for i, body := range bodies {
		r, err := e.ParseOpenAI([]byte(body), spotinfer.OpenAIAuto)
		if err != nil {
			return "", err
		}
		d, err := r.Route()
		r.Close()
		if err != nil || !d.Serving() {
			continue // shed or queued: still counted as a decision
		}
		if err := d.Ticket.FirstToken(); err != nil {
			return "", err
		}
		if err := d.Ticket.Finish(spotinfer.TicketResult{Status: spotinfer.TicketOK,
			PromptTokens: 10, OutputTokens: 20, TTFTMs: 120 * float64(i+1),
			DurationMs: 900}); err != nil {
			return "", err
		}
	}
	return e.Metrics()
}

func check(name, text string, engine bool) int {
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		fmt.Printf("FAIL %s: does not parse: %v\n", name, err)
		return 1
	}
	bad := 0
	problems, err := promlint.New(bytes.NewReader([]byte(text))).Lint()
	if err != nil {
		fmt.Printf("FAIL %s: lint: %v\n", name, err)
		return 1
	}
	for _, pr := range problems {
		fmt.Printf("FAIL %s: %s: %s\n", name, pr.Metric, pr.Text)
		bad++
	}
	if engine {
		bad += checkTTFT(name, fams)
	}
	if bad > 0 {
		return 1
	}
	fmt.Printf("ok   %s: %d families parse and lint clean\n", name, len(fams))
	return 0
}

// checkTTFT: the histogram is in seconds, its bounds are seconds (no bound
// above a minute), and the finished requests' TTFTs (0.12 s, 0.24 s, ...)
// are in its sum.
func checkTTFT(name string, fams map[string]*dto.MetricFamily) int {
	for n := range fams {
		if strings.Contains(n, "millisecond") {
			fmt.Printf("FAIL %s: %s is not in base units\n", name, n)
			return 1
		}
	}
	f := fams["spotinfer_ttft_seconds"]
	if f == nil || f.GetType() != dto.MetricType_HISTOGRAM {
		fmt.Printf("FAIL %s: no spotinfer_ttft_seconds histogram\n", name)
		return 1
	}
	var count uint64
	var sum float64
	for _, m := range f.GetMetric() {
		h := m.GetHistogram()
		count += h.GetSampleCount()
		sum += h.GetSampleSum()
		for _, b := range h.GetBucket() {
			if ub := b.GetUpperBound(); ub > 60 && !math.IsInf(ub, 1) {
				fmt.Printf("FAIL %s: bucket le=%g is not in seconds\n", name, ub)
				return 1
			}
		}
	}
	if count == 0 || sum <= 0 || sum > 60 {
		fmt.Printf("FAIL %s: TTFT count %d sum %g (want samples summing to seconds)\n",
			name, count, sum)
		return 1
	}
	if _, ok := fams["spotinfer_ttft_p95_seconds"]; !ok {
		fmt.Printf("FAIL %s: no spotinfer_ttft_p95_seconds\n", name)
		return 1
	}
	return 0
}
