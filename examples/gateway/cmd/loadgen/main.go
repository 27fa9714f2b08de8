// loadgen is the gateway's load run: streamed chat requests against the
// backends directly, through the round-robin proxy and through the
// gateway, in alternating phases of the same run, printed as JSON lines:
// one per phase, then a summary with the gateway-to-proxy ratios and the
// library's in-process time (from the gateway's /debug/timing) beside the
// added latency.
//
// Two kinds of phase: "throughput" keeps -concurrency requests in flight
// and counts requests/s; "latency" sends -rate requests/s whatever the
// answers (open loop), so the three targets see the same load and a
// proxy's added latency is its latency minus the direct one's.
//
//	loadgen -direct http://a,http://b -roundrobin http://rr -gateway http://gw \
//	        -concurrency 16 -phase 3s -rounds 3
//
// Every phase stops by itself (duration and request count).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type target struct {
	name string
	urls []string
}

type phase struct {
	Kind       string  `json:"kind"`
	Mode       string  `json:"mode"`
	Target     string  `json:"target"`
	Round      int     `json:"round"`
	Requests   int     `json:"requests"`
	Errors     int     `json:"errors"`
	Seconds    float64 `json:"seconds"`
	RPS        float64 `json:"rps"`
	P50Ms      float64 `json:"latency_p50_ms"`
	P99Ms      float64 `json:"latency_p99_ms"`
	TTFTP50Ms  float64 `json:"ttft_p50_ms"`
	AddedP50Ms float64 `json:"added_p50_ms,omitempty"`
	AddedP99Ms float64 `json:"added_p99_ms,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
	latencies  []float64
	ttfts      []float64
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("loadgen: ")
	direct := flag.String("direct", "", "comma-separated backend URLs (the baseline, taken in turn)")
	rr := flag.String("roundrobin", "", "URL of the gateway run with -balancer roundrobin")
	gw := flag.String("gateway", "", "URL of the gateway on the library")
	conc := flag.Int("concurrency", 16, "requests in flight")
	dur := flag.Duration("phase", 3*time.Second, "length of each phase")
	maxReq := flag.Int("max-requests", 200000, "most requests per phase")
	rounds := flag.Int("rounds", 3, "rounds of (direct, roundrobin, gateway)")
	rate := flag.Float64("rate", 100, "requests/s of the latency phases")
	families := flag.Int("families", 8, "distinct system prompts")
	promptBytes := flag.Int("prompt-bytes", 8192, "bytes of each system prompt")
	maxTokens := flag.Int("max-tokens", 32, "max_tokens of each request")
	flag.Parse()
	if *direct == "" || *rr == "" || *gw == "" || *conc < 1 || *rounds < 1 || *families < 1 {
		log.Fatal("-direct, -roundrobin and -gateway are required; counts must be positive")
	}
	bodies := makeBodies(*families, *promptBytes, *maxTokens)
	targets := []target{{"direct", strings.Split(*direct, ",")}, {"roundrobin", []string{*rr}},
		{"gateway", []string{*gw}}}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *conc * 2,
		DisableCompression: true}, Timeout: 30 * time.Second}
	enc := json.NewEncoder(os.Stdout)
	all := map[string][]*phase{}
	// Warm connections and the gateway's prefix index first.
	for _, t := range targets {
		run(client, t, bodies, *conc, 300*time.Millisecond, *maxReq)
	}
	before, err := timing(client, *gw)
	if err != nil {
		log.Fatal(err)
	}
	for r := 0; r < *rounds; r++ {
		for _, t := range targets {
			p := run(client, t, bodies, *conc, *dur, *maxReq)
			p.Round = r
			all["tp/"+t.name] = append(all["tp/"+t.name], p)
			enc.Encode(p)
		}
		var base *phase
		for _, t := range targets {
			p := runOpen(client, t, bodies, *rate, *dur)
			p.Round = r
			if t.name == "direct" {
				base = p
			} else {
				p.AddedP50Ms, p.AddedP99Ms = p.P50Ms-base.P50Ms, p.P99Ms-base.P99Ms
			}
			all["lat/"+t.name] = append(all["lat/"+t.name], p)
			enc.Encode(p)
		}
	}
	after, err := timing(client, *gw)
	if err != nil {
		log.Fatal(err)
	}
	enc.Encode(summary(all, before, after))
	for _, ps := range all {
		for _, p := range ps {
			if p.Errors > 0 {
				log.Fatalf("%s round %d: %d errors (first: %s)", p.Target, p.Round, p.Errors, p.FirstError)
			}
		}
	}
}

func makeBodies(families, promptBytes, maxTokens int) [][]byte {
	var out [][]byte
	for f := 0; f < families; f++ {
		var sys strings.Builder
		for sys.Len() < promptBytes {
			fmt.Fprintf(&sys, "Family %d policy line %d: answer briefly and cite the section. ", f, sys.Len())
		}
		for q := 0; q < 16; q++ {
			b, _ := json.Marshal(map[string]any{"model": "fake-model", "stream": true,
				"max_tokens": maxTokens, "stream_options": map[string]any{"include_usage": true},
				"metadata": map[string]any{"class": "silver"},
				"messages": []any{map[string]any{"role": "system", "content": sys.String()[:promptBytes]},
					map[string]any{"role": "user", "content": fmt.Sprintf("question %d of family %d", q, f)}}})
			out = append(out, b)
		}
	}
	return out
}

// run drives one target with conc closed-loop clients for d.
// finish fills in the phase's figures from its samples, for a phase that
// started at start and has just ended.
func (p *phase) finish(start time.Time) {
	p.Seconds = time.Since(start).Seconds()
	p.Requests = len(p.latencies)
	p.RPS = float64(p.Requests) / p.Seconds
	p.P50Ms, p.P99Ms = quantile(p.latencies, 0.5), quantile(p.latencies, 0.99)
	p.TTFTP50Ms = quantile(p.ttfts, 0.5)
}

func run(client *http.Client, t target, bodies [][]byte, conc int, d time.Duration, maxReq int) *phase {
	var next, n atomic.Int64
	var mu sync.Mutex
	p := &phase{Kind: "phase", Mode: "throughput", Target: t.name}
	start := time.Now()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for c := 0; c < conc; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat, ttft []float64
			errs, first := 0, ""
			for time.Now().Before(stop) && n.Add(1) <= int64(maxReq) {
				i := next.Add(1)
				url := t.urls[int(i)%len(t.urls)] + "/v1/chat/completions"
				t0 := time.Now()
				tf, err := stream(client, url, bodies[int(i)%len(bodies)])
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
					continue
				}
				lat = append(lat, float64(time.Since(t0))/1e6)
				ttft = append(ttft, float64(tf.Sub(t0))/1e6)
			}
			mu.Lock()
			p.latencies = append(p.latencies, lat...)
			p.ttfts = append(p.ttfts, ttft...)
			p.Errors += errs
			if p.FirstError == "" {
				p.FirstError = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	p.finish(start)
	return p
}

// runOpen sends rate requests/s to one target for d (open loop, at most
// 1024 in flight), whatever the answers.
func runOpen(client *http.Client, t target, bodies [][]byte, rate float64, d time.Duration) *phase {
	p := &phase{Kind: "phase", Mode: "latency", Target: t.name}
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, 1024)
	n := int(rate * d.Seconds())
	start := time.Now()
	for i := 0; i < n; i++ {
		time.Sleep(time.Until(start.Add(time.Duration(float64(i) / rate * 1e9))))
		slots <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-slots; wg.Done() }()
			url := t.urls[i%len(t.urls)] + "/v1/chat/completions"
			t0 := time.Now()
			tf, err := stream(client, url, bodies[i%len(bodies)])
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				p.Errors++
				if p.FirstError == "" {
					p.FirstError = err.Error()
				}
				return
			}
			p.latencies = append(p.latencies, float64(time.Since(t0))/1e6)
			p.ttfts = append(p.ttfts, float64(tf.Sub(t0))/1e6)
		}(i)
	}
	wg.Wait()
	p.finish(start)
	return p
}

// stream sends one streamed request and reads it to [DONE]; it returns the
// time of the first content event.
func stream(client *http.Client, url string, body []byte) (time.Time, error) {
	resp, err := client.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return time.Time{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		return time.Time{}, fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var first time.Time
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("data: ")) {
			continue
		}
		if bytes.Equal(line[6:], []byte("[DONE]")) {
			return first, nil
		}
		if first.IsZero() && bytes.Contains(line, []byte(`"content":" `)) {
			first = time.Now()
		}
		if bytes.Contains(line, []byte(`"error"`)) {
			return first, fmt.Errorf("error event: %s", line)
		}
	}
	if err := sc.Err(); err != nil {
		return first, err
	}
	return first, errors.New("stream ended without [DONE]")
}

func quantile(v []float64, q float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[int(q*float64(len(s)-1))]
}

type libTiming struct {
	Count  uint64  `json:"count"`
	MeanNs float64 `json:"mean_ns"`
	P50Ns  float64 `json:"p50_ns"`
	P99Ns  float64 `json:"p99_ns"`
}

type timings struct {
	Decision   libTiming `json:"decision"`
	TicketCall libTiming `json:"ticket_call"`
}

func timing(client *http.Client, gw string) (timings, error) {
	var t timings
	resp, err := client.Get(gw + "/debug/timing")
	if err != nil {
		return t, err
	}
	defer resp.Body.Close()
	return t, json.NewDecoder(resp.Body).Decode(&t)
}

func median(ps []*phase, f func(*phase) float64) float64 {
	v := make([]float64, len(ps))
	for i, p := range ps {
		v[i] = f(p)
	}
	return quantile(v, 0.5)
}

// summary compares the gateway with the round-robin proxy: ratios are
// taken within each round (phases run back to back, so they share the
// machine's load at the time) and the median over rounds is reported. The
// library's time per request, from the gateway's own measurements, is set
// beside the latency the gateway adds.
func summary(all map[string][]*phase, before, after timings) map[string]any {
	gw, rr := all["tp/gateway"], all["tp/roundrobin"]
	lgw, lrr := all["lat/gateway"], all["lat/roundrobin"]
	var rpsR, a50R, a99R []float64
	reqs := 0
	for i := range gw {
		reqs += gw[i].Requests + lgw[i].Requests
		rpsR = append(rpsR, ratio(gw[i].RPS, rr[i].RPS))
		a50R = append(a50R, ratio(lgw[i].AddedP50Ms, lrr[i].AddedP50Ms))
		a99R = append(a99R, ratio(lgw[i].AddedP99Ms, lrr[i].AddedP99Ms))
	}
	decisions := float64(after.Decision.Count - before.Decision.Count)
	calls := float64(after.TicketCall.Count - before.TicketCall.Count)
	callsPerReq := ratio(calls, float64(reqs))
	// A typical request: one decision and its ticket calls at their
	// medians. The means (over the last 64Ki samples) carry the times a
	// goroutine was descheduled inside a call on a busy machine.
	typicalUs := (after.Decision.P50Ns + callsPerReq*after.TicketCall.P50Ns) / 1e3
	meanUs := ratio(decisions*after.Decision.MeanNs+calls*after.TicketCall.MeanNs, float64(reqs)) / 1e3
	added50 := median(lgw, func(p *phase) float64 { return p.AddedP50Ms })
	return map[string]any{
		"kind":                      "summary",
		"rounds":                    len(gw),
		"gateway_rps":               median(gw, func(p *phase) float64 { return p.RPS }),
		"roundrobin_rps":            median(rr, func(p *phase) float64 { return p.RPS }),
		"rps_ratio":                 quantile(rpsR, 0.5),
		"gateway_added_p50_ms":      added50,
		"roundrobin_added_p50_ms":   median(lrr, func(p *phase) float64 { return p.AddedP50Ms }),
		"added_p50_ratio":           quantile(a50R, 0.5),
		"gateway_added_p99_ms":      median(lgw, func(p *phase) float64 { return p.AddedP99Ms }),
		"roundrobin_added_p99_ms":   median(lrr, func(p *phase) float64 { return p.AddedP99Ms }),
		"added_p99_ratio":           quantile(a99R, 0.5),
		"decision_p50_us":           after.Decision.P50Ns / 1e3,
		"decision_p99_us":           after.Decision.P99Ns / 1e3,
		"ticket_call_p50_us":        after.TicketCall.P50Ns / 1e3,
		"ticket_calls_per_request":  callsPerReq,
		"library_us_per_request":    typicalUs,
		"library_mean_us_per_req":   meanUs,
		"library_share_of_added_50": ratio(typicalUs/1e3, added50),
		"gateway_requests_timed":    reqs,
	}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
