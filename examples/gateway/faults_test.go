package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// Backends that misbehave in ways a fakeBackend does not: any handler as a
// backend, and the gateway's answer read as raw events.

// postChatFor posts a stream and reads its data lines for at most d;
// timedOut is true when the stream had not ended by then.
func postChatFor(t *testing.T, url, body string, d time.Duration) (events []string, timedOut bool) {
	t.Helper()
	c := &http.Client{Timeout: d}
	resp, err := c.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		return nil, true
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, d)
		}
	}
	return events, sc.Err() != nil
}

// textOf is the text of the events' choices.
func textOf(events []string) string {
	var b strings.Builder
	for _, d := range events {
		var ev event
		if decodeEvent([]byte(d), &ev) == nil {
			b.WriteString(ev.content())
		}
	}
	return b.String()
}

// lastEvent is the last of the events, "" for none.
func lastEvent(events []string) string {
	if len(events) == 0 {
		return ""
	}
	return events[len(events)-1]
}

// counting is a backend handler that counts the completions it is sent
// and answers them with serve; /metrics is a fakeBackend's.
func counting(n *atomic.Int32, serve func(w http.ResponseWriter)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			(&fakeBackend{}).ServeHTTP(w, r)
			return
		}
		n.Add(1)
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		serve(w)
	})
}

const roleChunk = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n"

// An event line far over the reader's 64 KiB buffer (vLLM's logprobs, a
// large tool-call delta) is read whole and passed on: the stream is not
// taken for broken, and the backend gets the request once.
func TestLongEventLineIsPassedWhole(t *testing.T) {
	pad := strings.Repeat("x", 300<<10)
	var n atomic.Int32
	h := counting(&n, func(w http.ResponseWriter) {
		fmt.Fprint(w, roleChunk)
		fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w0\"},\"logprobs\":{\"pad\":%q}}]}\n\n", pad)
		fmt.Fprint(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": h}, map[string]string{"spot-a": "spot"})
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	if timedOut || lastEvent(evs) != "[DONE]" || textOf(evs) != " w0" || n.Load() != 1 {
		t.Fatalf("timed out %v, %d events, text %q, the backend got %d requests",
			timedOut, len(evs), textOf(evs), n.Load())
	}
	if !strings.Contains(evs[1], pad) {
		t.Fatalf("the long event came through %d bytes long", len(evs[1]))
	}
	if m := get(t, srv.URL+"/metrics"); !strings.Contains(m, "gateway_long_event_bytes 0\n") {
		t.Errorf("/metrics: the long event is still held")
	}
}

// With -long-event-budget spent, an event over the reader's buffer ends
// its stream with an error event naming the budget, and nothing is
// allocated for it. The backend is not at fault: its ticket does not end
// as ERROR (the breaker, at a threshold of 1, stays closed), and the
// stream is not replayed.
func TestLongEventOverTheBudgetEndsTheStream(t *testing.T) {
	pad := strings.Repeat("x", 300<<10)
	var n atomic.Int32
	h := counting(&n, func(w http.ResponseWriter) {
		fmt.Fprint(w, roleChunk)
		fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w0\"},\"logprobs\":{\"pad\":%q}}]}\n\n", pad)
		fmt.Fprint(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	od := &fakeBackend{n: 10}
	srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": h, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "-config", breakerOfOne(t),
		"-long-event-budget", "200000")
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	if timedOut || !strings.Contains(lastEvent(evs), `"error"`) || !strings.Contains(lastEvent(evs), "-long-event-budget") {
		t.Fatalf("timed out %v; last event %.200s", timedOut, lastEvent(evs))
	}
	if n.Load() != 1 || len(od.bodies) != 0 {
		t.Fatalf("spot-a got %d requests, od-1 %d: the stream was replayed", n.Load(), len(od.bodies))
	}
	if s := replicaStatus(t, g, "spot-a"); s.ConsecutiveErrors != 0 || s.Breaker != spotinfer.BreakerClosed {
		t.Errorf("spot-a: %d consecutive errors, breaker %v", s.ConsecutiveErrors, s.Breaker)
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="failed"} 1`, `gateway_replays_total{step="enqueued"} 0`,
		"gateway_long_event_bytes 0\n", "gateway_long_event_refusals_total 1\n"} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// A client that stops reading while an event holding -long-event-budget
// bytes is written to it is taken for gone after -long-event-write-wait:
// its stream ends (counted as cancelled), the bytes go back, and another
// stream's long event finds the budget free again.
// The wait is 2 s, not less: the client that does read takes its 8 MiB
// event under the same deadline, which under the race detector on a
// loaded machine can take longer than 300 ms.
func TestStalledClientGivesTheLongEventBudgetBack(t *testing.T) {
	pad := strings.Repeat("x", 8<<20)
	var n atomic.Int32
	h := counting(&n, func(w http.ResponseWriter) {
		fmt.Fprint(w, roleChunk)
		fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w0\"},\"logprobs\":{\"pad\":%q}}]}\n\n", pad)
		fmt.Fprint(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": h}, map[string]string{"spot-a": "spot"},
		"-long-event-budget", fmt.Sprint(20<<20), "-long-event-write-wait", "2s")
	// Client A sends its request and never reads its answer.
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\n\r\n%s", len(silverStream), silverStream)
	if !waitFor(5*time.Second, func() bool { return g.longEvents.held() > 0 }) {
		t.Fatal("A's long event never held the budget")
	}
	if !waitFor(15*time.Second, func() bool { return g.longEvents.held() == 0 && g.stats.cancelled.Load() == 1 }) {
		t.Fatalf("A stalls: %d bytes still held, %d streams cancelled", g.longEvents.held(), g.stats.cancelled.Load())
	}
	// Client B's long event (over postChatFor's line bound: read whole).
	c := &http.Client{Timeout: 30 * time.Second}
	resp, err := c.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(silverStream))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || !strings.HasSuffix(string(b), "data: [DONE]\n\n") || len(b) < 8<<20 {
		t.Fatalf("B: %v, %d bytes, ending %q", err, len(b), b[max(0, len(b)-200):])
	}
	if s := replicaStatus(t, g, "spot-a"); s.ConsecutiveErrors != 0 {
		t.Errorf("spot-a: %d consecutive errors for a client that went away", s.ConsecutiveErrors)
	}
}

// An event over the gateway's bound (16 MiB) ends the stream with an error
// event; the ticket ends as ERROR and the stream is not replayed: another
// leg would send the same event again.
func TestEventOverTheBoundEndsTheStream(t *testing.T) {
	pad := strings.Repeat("x", 17<<20)
	var n atomic.Int32
	h := counting(&n, func(w http.ResponseWriter) {
		fmt.Fprint(w, roleChunk)
		fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w0\"},\"logprobs\":{\"pad\":%q}}]}\n\n", pad)
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
	od := &fakeBackend{n: 10}
	srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": h, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"})
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	if timedOut || !strings.Contains(lastEvent(evs), `"error"`) || !strings.Contains(lastEvent(evs), "over 16777216 bytes") {
		t.Fatalf("timed out %v; last event %.200s", timedOut, lastEvent(evs))
	}
	if n.Load() != 1 || len(od.bodies) != 0 {
		t.Fatalf("spot-a got %d requests, od-1 %d: the stream was replayed", n.Load(), len(od.bodies))
	}
	if s := replicaStatus(t, g, "spot-a"); s.ConsecutiveErrors != 1 {
		t.Errorf("spot-a: %d consecutive errors, want the ticket ended as ERROR", s.ConsecutiveErrors)
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="failed"} 1`, `gateway_replays_total{step="enqueued"} 0`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// ticketsConfig writes a library configuration of at most 16 open tickets.
func ticketsConfig(t *testing.T) string {
	t.Helper()
	config := filepath.Join(t.TempDir(), "spotinfer.json")
	if err := os.WriteFile(config, []byte(`{"router":{"max_tickets":16}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return config
}

// With router.max_tickets requests open, the next one is overload: 503
// with Retry-After, counted as overloaded, not a 500.
func TestEveryTicketOpenIs503(t *testing.T) {
	a := &fakeBackend{n: 5000, delay: 5 * time.Millisecond}
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a},
		map[string]string{"spot-a": "spot"}, "spotinfer", "-config", ticketsConfig(t))
	var open []*http.Response
	defer func() {
		for _, r := range open {
			r.Body.Close()
		}
	}()
	for i := 0; i < 16; i++ {
		resp := postChat(t, srv.URL, silverStream)
		open = append(open, resp)
		if _, err := resp.Body.Read(make([]byte, 64)); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
	}
	wantRetryAfter(t, postChat(t, srv.URL, silverStream), http.StatusServiceUnavailable)
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="overloaded"} 1`, `gateway_requests_total{outcome="failed"} 0`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// A continuation routed while every ticket is open is nacked and tried
// again after the backoff, not failed: once a ticket ends, the stream is
// resumed.
func TestReplayWhileEveryTicketIsOpenIsRetried(t *testing.T) {
	od := &fakeBackend{n: 10}
	_, g := startTestGateway(t, map[string]*fakeBackend{"od-1": od},
		map[string]string{"od-1": "on_demand"}, "spotinfer", "-config", ticketsConfig(t),
		"-replay", `{"store":"memory","backoff_base_ms":20,"backoff_max_ms":20,"max_attempts":100}`)
	var held []spotinfer.Ticket
	for i := 0; i < 16; i++ {
		req, err := g.eng.ParseOpenAI([]byte(silverStream), spotinfer.OpenAIChat)
		if err != nil {
			t.Fatal(err)
		}
		d, err := req.Route()
		req.Close()
		if err != nil {
			t.Fatalf("route %d: %v", i, err)
		}
		held = append(held, d.Ticket)
	}
	ctx, cancel := contextWithCancel()
	defer cancel()
	st := &stream{g: g, key: "k", path: "/v1/chat/completions", body: []byte(silverStream),
		kind: spotinfer.OpenAIChat, class: spotinfer.ClassSilver, replayable: true, ctx: ctx}
	st.text.WriteString(" w0 w1")
	st.tokens = 2
	got := make(chan resumption, 1)
	go func() { got <- st.resumeAfterCut(ctx, errors.New("cut")) }()
	time.Sleep(300 * time.Millisecond) // several routes find every ticket open
	for _, tk := range held {
		g.finish(tk, spotinfer.TicketResult{Status: spotinfer.TicketOK})
	}
	r := <-got
	if r.err != nil || r.resp == nil {
		t.Fatalf("not resumed: %v", r.err)
	}
	g.discard(r)
	if len(od.bodies) != 1 {
		t.Fatalf("od-1 was sent %d continuations", len(od.bodies))
	}
}

// diesMidStream answers its first completion as vLLM's stream generator
// does when the engine fails mid-answer (EngineDeadError and the like): a
// few tokens, an error event, then "data: [DONE]", the connection kept.
// With noError it leaves the error event out: the answer just stops before
// its finish_reason. Every later request goes to next.
type diesMidStream struct {
	next    *fakeBackend
	noError bool
	used    atomic.Bool
}

func (v *diesMidStream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/metrics" || v.used.Swap(true) {
		v.next.ServeHTTP(w, r)
		return
	}
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/event-stream")
	fmt.Fprint(w, roleChunk)
	for i := 0; i < 5; i++ {
		fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w%d\"}}]}\n\n", i)
	}
	if !v.noError {
		fmt.Fprint(w, "data: {\"error\":{\"object\":\"error\",\"message\":\"EngineCore encountered an issue\","+
			"\"type\":\"InternalServerError\",\"code\":500}}\n\n")
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
}

// breakerOfOne writes a library configuration whose error breaker opens
// at the first error.
func breakerOfOne(t *testing.T) string {
	t.Helper()
	config := filepath.Join(t.TempDir(), "spotinfer.json")
	if err := os.WriteFile(config, []byte(`{"router":{"error_threshold":1}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	return config
}

// A failure the backend reports in the stream (an error event, then
// [DONE]), or a [DONE] before the finish_reason, is a broken leg, not a
// whole answer: the try's ticket ends as ERROR (the replica's breaker opens
// at a threshold of 1), the error event is held back, and the replayable
// stream is resumed on od-1 from what the client has.
func TestBrokenAnswerEndedByDoneIsResumed(t *testing.T) {
	for _, noError := range []bool{false, true} {
		a := &diesMidStream{next: &fakeBackend{n: 10}, noError: noError}
		od := &fakeBackend{n: 10}
		srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": a, "od-1": od},
			map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "-config", breakerOfOne(t))
		evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
		if text := textOf(evs); timedOut || text != want(10) || lastEvent(evs) != "[DONE]" {
			t.Fatalf("without the error event %v: timed out %v, text %q, last event %s",
				noError, timedOut, text, lastEvent(evs))
		}
		for _, e := range evs {
			if strings.Contains(e, `"error"`) {
				t.Errorf("the client got %s", e)
			}
		}
		if s := replicaStatus(t, g, "spot-a"); s.Breaker != spotinfer.BreakerOpen {
			t.Errorf("without the error event %v: spot-a's breaker is %v, want open", noError, s.Breaker)
		}
		if c := continuations(od); len(c) != 1 {
			t.Errorf("od-1 was sent %d continuations", len(c))
		}
		m := get(t, srv.URL+"/metrics")
		for _, s := range []string{`gateway_requests_total{outcome="ok"} 1`,
			`gateway_replays_total{step="enqueued"} 1`, `gateway_replays_total{step="resumed"} 1`} {
			if !strings.Contains(m, s) {
				t.Errorf("without the error event %v: /metrics lacks %s", noError, s)
			}
		}
	}
}

// A backend that does not implement n (llama.cpp's server, TGI, many
// proxies) answers one choice, its finish_reason and [DONE] to a body
// asking for two. That is a whole answer: the client gets [DONE], the
// ticket ends OK, and the replica's error breaker (a threshold of 1)
// counts nothing, so no client can open a healthy replica's breaker by
// asking for n=2.
func TestBackendIgnoringNGivesAWholeAnswer(t *testing.T) {
	od := &fakeBackend{n: 10, choices: 1} // one choice whatever the body's n
	srv, g := startRawGateway(t, map[string]http.Handler{"od-1": od},
		map[string]string{"od-1": "on_demand"}, "-config", breakerOfOne(t))
	body := strings.Replace(silverStream, `"stream":true,`, `"stream":true,"n":2,`, 1)
	evs, timedOut := postChatFor(t, srv.URL, body, 5*time.Second)
	if timedOut || lastEvent(evs) != "[DONE]" || textOf(evs) != want(10) {
		t.Fatalf("timed out %v, text %q; last event %.300s", timedOut, textOf(evs), lastEvent(evs))
	}
	if s := replicaStatus(t, g, "od-1"); s.ConsecutiveErrors != 0 || s.Breaker != spotinfer.BreakerClosed {
		t.Errorf("od-1: %d consecutive errors, breaker %v, for a whole answer", s.ConsecutiveErrors, s.Breaker)
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="ok"} 1`, `gateway_requests_total{outcome="failed"} 0`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// A stream that is not replayed (gold) ends with the backend's own error
// event, without [DONE]; its ticket ends as ERROR and it counts as failed.
func TestBackendErrorEventEndsAStreamNotReplayed(t *testing.T) {
	od := &diesMidStream{next: &fakeBackend{n: 10}}
	srv, g := startRawGateway(t, map[string]http.Handler{"od-1": od},
		map[string]string{"od-1": "on_demand"})
	gold := strings.Replace(silverStream, `"silver"`, `"gold"`, 1)
	evs, timedOut := postChatFor(t, srv.URL, gold, 5*time.Second)
	if timedOut || textOf(evs) != want(5) || !strings.Contains(lastEvent(evs), "EngineCore encountered an issue") {
		t.Fatalf("timed out %v, text %q, last event %s", timedOut, textOf(evs), lastEvent(evs))
	}
	if s := replicaStatus(t, g, "od-1"); s.ConsecutiveErrors != 1 {
		t.Errorf("od-1: %d consecutive errors, want the ticket ended as ERROR", s.ConsecutiveErrors)
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="failed"} 1`, `gateway_replays_total{step="enqueued"} 0`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// A stream whose every leg breaks (a request that kills or trips each
// backend it reaches, a proxy that drops it) is not replayed without end:
// after replay.max_attempts continuations have broken it ends with an
// error event, each checkpoint after a broken continuation having waited
// out the queue's backoff (10, 20, 40, 40 ms here, without jitter).
func TestStreamThatKeepsBreakingIsGivenUp(t *testing.T) {
	var n atomic.Int32
	h := counting(&n, func(w http.ResponseWriter) {
		fmt.Fprint(w, roleChunk)
		w.(http.Flusher).Flush()
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": h}, map[string]string{"spot-a": "spot"},
		"-replay", `{"store":"memory","backoff_base_ms":10,"backoff_max_ms":40,"backoff_jitter":0}`)
	t0 := time.Now()
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	took := time.Since(t0)
	if timedOut || !strings.Contains(lastEvent(evs), "after 5 failed replays (replay.max_attempts)") {
		t.Fatalf("timed out %v after %v, %d events, the backend got %d requests; last event %s",
			timedOut, took, len(evs), n.Load(), lastEvent(evs))
	}
	if n.Load() != 6 || took < 110*time.Millisecond {
		t.Errorf("the backend got %d requests (want the first and 5 continuations) in %v (want 110 ms of backoff)",
			n.Load(), took)
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="failed"} 1`, `gateway_replays_total{step="enqueued"} 5`,
		`gateway_replays_total{step="resumed"} 5`, `gateway_replays_total{step="failed"} 1`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// oneWordThenBreak is a backend handler that gives each request one word,
// its number, and then drops the connection after pause.
func oneWordThenBreak(n *atomic.Int32, pause time.Duration) http.Handler {
	return counting(n, func(w http.ResponseWriter) {
		fmt.Fprint(w, roleChunk)
		fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w%d\"}}]}\n\n", n.Load())
		w.(http.Flusher).Flush()
		time.Sleep(pause)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
}

// A request that breaks every backend one word into each leg is a failed
// replay each time, although every leg gives the client a word: a leg
// that broke within backoff_base and fewer than progressTokens tokens
// made no progress. With replay.max_attempts 2 the stream ends after the
// first leg and 2 continuations, the second after a 300 ms backoff.
func TestLegBrokenOneWordInIsAFailedReplay(t *testing.T) {
	var n atomic.Int32
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": oneWordThenBreak(&n, 0)},
		map[string]string{"spot-a": "spot"},
		"-replay", `{"store":"memory","max_attempts":2,"backoff_base_ms":300,"backoff_max_ms":300,"backoff_jitter":0}`)
	t0 := time.Now()
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	took := time.Since(t0)
	if timedOut || !strings.Contains(lastEvent(evs), "after 2 failed replays (replay.max_attempts)") {
		t.Fatalf("timed out %v after %v, the backend got %d requests; last event %.200s",
			timedOut, took, n.Load(), lastEvent(evs))
	}
	if n.Load() != 3 || took < 300*time.Millisecond {
		t.Errorf("the backend got %d requests (want 3) in %v (want 300 ms of backoff)", n.Load(), took)
	}
}

// A request that breaks every backend after some progress (each leg
// streams for longer than backoff_base) resets the failed replays each
// time, and is given up after 4 x replay.max_attempts continuations with
// an error event naming the limit.
func TestStreamIsGivenAtMostFourTimesMaxAttemptsReplays(t *testing.T) {
	var n atomic.Int32
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": oneWordThenBreak(&n, 40*time.Millisecond)},
		map[string]string{"spot-a": "spot"},
		"-replay", `{"store":"memory","max_attempts":2,"backoff_base_ms":10,"backoff_max_ms":40,"backoff_jitter":0}`)
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 10*time.Second)
	if timedOut || !strings.Contains(lastEvent(evs), "after 8 replays, the most one stream is given (4 x replay.max_attempts)") {
		t.Fatalf("timed out %v, the backend got %d requests; last event %.200s", timedOut, n.Load(), lastEvent(evs))
	}
	if n.Load() != 9 || len(strings.Fields(textOf(evs))) != 9 {
		t.Errorf("the backend got %d requests, the client %d words (want 9 of each)",
			n.Load(), len(strings.Fields(textOf(evs))))
	}
}

// openTicketOf is the ticket of the one stream the gateway relays, 0 when
// none is registered.
func openTicketOf(g *gateway) uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id := range g.open {
		return id
	}
	return 0
}

// enqueuedAttempts is the attempts of each replay_enqueued event in the
// gateway's -events file, in order.
func enqueuedAttempts(t *testing.T, path string) []float64 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []float64
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e map[string]any
		if json.Unmarshal([]byte(line), &e) == nil && e["event"] == "replay_enqueued" {
			a, _ := e["attempts"].(float64)
			out = append(out, a)
		}
	}
	return out
}

// A replay that streams and is then cut by one more notice did not fail:
// with replay.max_attempts 2, a long answer cut three times, each replay
// giving the client more of it, is resumed every time and ends whole, each
// envelope carrying 0 failed attempts. It used to be ended "after 2 failed
// replays" at the third cut.
func TestReplaysCutAfterStreamingAreNotFailures(t *testing.T) {
	a := &fakeBackend{n: 400, delay: 4 * time.Millisecond}
	od := &fakeBackend{n: 400, delay: 4 * time.Millisecond}
	events := filepath.Join(t.TempDir(), "events.jsonl")
	srv, g := startTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer", "-events", events,
		"-replay", `{"store":"memory","max_attempts":2,"backoff_base_ms":10,"backoff_max_ms":10,"backoff_jitter":0}`)
	go func() {
		for i := 0; i < 3; i++ {
			time.Sleep(250 * time.Millisecond) // each leg streams about 50 words first
			var tk uint64
			waitFor(2*time.Second, func() bool { tk = openTicketOf(g); return tk != 0 })
			g.interrupt(tk)
		}
	}()
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 10*time.Second)
	if timedOut || lastEvent(evs) != "[DONE]" || textOf(evs) != want(400) {
		t.Fatalf("timed out %v, got %d words; last event %.300s", timedOut,
			len(strings.Fields(textOf(evs))), lastEvent(evs))
	}
	if got := enqueuedAttempts(t, events); len(got) != 3 || got[0]+got[1]+got[2] != 0 {
		t.Errorf("envelopes' attempts %v, want 3 envelopes of 0", got)
	}
}

// A replay worker's lease on an envelope outlasts the continuation's
// opens, the first and its reroutes, each up to the connect timeout and
// -header-wait (which a streamed request gets): another worker cannot claim
// the envelope meanwhile. -header-wait is more than 0 and at most 1h, so
// the lease stays within the queue's bound of a day.
func TestReplayLeaseCoversTheReroutes(t *testing.T) {
	list := filepath.Join(t.TempDir(), "backends.json")
	if err := os.WriteFile(list, []byte(`[{"id":"od-1","url":"http://127.0.0.1:1","pool":"on_demand",`+
		`"zone":"z","instance_type":"g5.xlarge","usd_per_hour":1}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, wait := range []string{"", "1ms", "90s", "1h"} {
		args := []string{"-backends", list, "-balancer", "roundrobin"}
		if wait != "" {
			args = append(args, "-header-wait", wait)
		}
		o, err := parseFlags(args)
		if err != nil {
			t.Fatal(err)
		}
		g, err := newGateway(o)
		if err != nil {
			t.Fatal(err)
		}
		// The wait a streamed request's headers get (a continuation's is).
		hw, _ := g.headerWaitFor(context.Background(), []byte(`{"stream":true}`)).Value(headerWaitKey{}).(time.Duration)
		opens := time.Duration(maxReroutes+1) * (dialWait + hw)
		if l := g.replayLease(); hw != o.headerWait || l < opens+10*time.Second || l > 24*time.Hour {
			t.Errorf("-header-wait %q: headers awaited %v, lease %v for %v of opens", wait, hw, l, opens)
		}
		g.close()
	}
	for _, wait := range []string{"0s", "-1s", "61m"} {
		if _, err := parseFlags([]string{"-backends", list, "-header-wait", wait}); err == nil {
			t.Errorf("-header-wait %s taken", wait)
		}
	}
}

// A continuation whose backend sends no headers within -header-wait is a
// failed replay, nacked and tried again: with replay.max_attempts 2 the
// stream ends "after 2 failed replays" within a second, not after the
// minutes a backend may take.
func TestContinuationWithoutHeadersWithinTheWait(t *testing.T) {
	var n atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			(&fakeBackend{}).ServeHTTP(w, r)
			return
		}
		io.Copy(io.Discard, r.Body)
		if n.Add(1) > 1 {
			select { // no headers until the gateway gives up
			case <-r.Context().Done():
			case <-time.After(5 * time.Second):
			}
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, roleChunk)
		fmt.Fprint(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w0\"}}]}\n\n")
		w.(http.Flusher).Flush()
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
	srv, _ := startRawGateway(t, map[string]http.Handler{"od-1": h}, map[string]string{"od-1": "on_demand"},
		"-header-wait", "200ms",
		"-replay", `{"store":"memory","max_attempts":2,"backoff_base_ms":10,"backoff_max_ms":10,"backoff_jitter":0}`)
	t0 := time.Now()
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	took := time.Since(t0)
	if timedOut || took > 2*time.Second || !strings.Contains(lastEvent(evs), "after 2 failed replays") {
		t.Fatalf("timed out %v after %v; last event %.300s", timedOut, took, lastEvent(evs))
	}
	if n.Load() != 3 {
		t.Errorf("the backend got %d requests, want the first and 2 continuations", n.Load())
	}
}

// A cut stream waits -replay-wait for a worker to take its continuation
// up, and then as long as the worker's lease: a continuation whose
// headers come within -header-wait but after -replay-wait (a slow
// prefill) is relayed, not opened and dropped.
func TestContinuationSlowerThanReplayWaitIsRelayed(t *testing.T) {
	var n atomic.Int32
	h := counting(&n, func(w http.ResponseWriter) {
		if n.Load() > 1 {
			time.Sleep(1500 * time.Millisecond) // the continuation's prefill
			fmt.Fprint(w, roleChunk)
			fmt.Fprint(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" b\"},"+
				"\"finish_reason\":\"stop\"}]}\n\n")
			fmt.Fprint(w, "data: [DONE]\n\n")
			return
		}
		fmt.Fprint(w, roleChunk)
		fmt.Fprint(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" a\"}}]}\n\n")
		w.(http.Flusher).Flush()
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": h}, map[string]string{"spot-a": "spot"},
		"-header-wait", "5s", "-replay-wait", "1s", "-replay", `{"store":"memory"}`)
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	if timedOut || lastEvent(evs) != "[DONE]" || textOf(evs) != " a b" || n.Load() != 2 {
		t.Fatalf("timed out %v, %d backend requests, text %q; last event %.200s",
			timedOut, n.Load(), textOf(evs), lastEvent(evs))
	}
}

// The queue's retry settings are the engine's "replay" section with the
// keys of -replay over it; the backoff doubles from the base up to the
// most, shortened by up to the jitter.
func TestReplayRetrySettings(t *testing.T) {
	e, err := newEngine(ticketsConfig(t), 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Configure(`{"replay":{"max_attempts":7,"backoff_base_ms":100}}`); err != nil {
		t.Fatal(err)
	}
	r := replayRetryOf(e, `{"store":"memory","backoff_max_ms":500,"backoff_jitter":0}`)
	if r.maxAttempts != 7 || r.base != 100*time.Millisecond || r.max != 500*time.Millisecond || r.jitter != 0 {
		t.Fatalf("%+v", r)
	}
	for n, want := range map[uint32]time.Duration{1: 100, 2: 200, 3: 400, 4: 500, 40: 500, 1 << 31: 500} {
		if d := r.backoff(n); d != want*time.Millisecond {
			t.Errorf("backoff(%d) = %v, want %v ms", n, d, want)
		}
	}
	r.jitter = 0.5
	for i := 0; i < 100; i++ {
		if d := r.backoff(1); d < 50*time.Millisecond || d > 100*time.Millisecond {
			t.Fatalf("backoff(1) with a jitter of 0.5 = %v", d)
		}
	}
	if d := replayRetryOf(e, ""); d.maxAttempts != 7 || d.max != time.Minute || d.jitter != 0.5 {
		t.Fatalf("without -replay keys: %+v", d)
	}
}

// An envelope whose continuation fails replay.max_attempts times is
// dead-lettered by the nack, and nobody claims it again: the stream ends
// with an error event at once instead of waiting out -replay-wait.
func TestDeadLetteredReplayEndsTheStreamAtOnce(t *testing.T) {
	a := &fakeBackend{n: 300, delay: 5 * time.Millisecond}
	od := &fakeBackend{n: 300}
	od.fail.Store(1 << 20) // every continuation answers 500
	imds := &fakeIMDS{deadline: time.Now().Add(time.Second)}
	meta := httptest.NewServer(imds)
	defer meta.Close()
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "spot-a.metadata": meta.URL, "od-1": "on_demand"},
		"spotinfer", "-notice-interval", "20ms", "-replay-wait", "8s",
		"-replay", `{"store":"memory","max_attempts":2,"backoff_base_ms":10,"backoff_max_ms":10}`)
	go func() {
		time.Sleep(200 * time.Millisecond)
		imds.notice.Store(true)
	}()
	t0 := time.Now()
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 6*time.Second)
	took := time.Since(t0)
	if timedOut || took > 4*time.Second || !strings.Contains(lastEvent(evs), "after 2 failed replays") {
		t.Fatalf("timed out %v after %v; last event %s", timedOut, took, lastEvent(evs))
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_replay_queue{state="dead"} 1`, `gateway_replays_total{step="failed"} 1`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// waitFor polls cond every 10 ms for at most d; false when it never held.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// A REPLAY plan for a continuation still waiting for its first byte (its
// replica prefilling) reaches it: the continuation is cut and routed
// again, away from both noticed machines, and the client still gets the
// whole answer once.
func TestNoticeWhileAContinuationWaitsForItsFirstByte(t *testing.T) {
	ids := []string{"spot-a", "spot-b", "od-1"}
	fb := map[string]*fakeBackend{}
	imds := map[string]*fakeIMDS{}
	pools := map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand"}
	for _, id := range ids {
		fb[id] = &fakeBackend{n: 200, delay: 5 * time.Millisecond}
		imds[id] = &fakeIMDS{deadline: time.Now().Add(time.Second)}
		meta := httptest.NewServer(imds[id])
		defer meta.Close()
		pools[id+".metadata"] = meta.URL
	}
	events := filepath.Join(t.TempDir(), "events.jsonl")
	srv := newTestGateway(t, fb, pools, "spotinfer", "-notice-interval", "20ms", "-events", events)
	requests := func(id string) (all, conts int) {
		f := fb[id]
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, b := range f.bodies {
			if b["continue_final_message"] == true {
				conts++
			}
		}
		return len(f.bodies), conts
	}
	done := make(chan []string, 1)
	go func() {
		evs, _ := postChatFor(t, srv.URL, silverStream, 15*time.Second)
		done <- evs
	}()
	var first, second string
	if !waitFor(2*time.Second, func() bool {
		for _, id := range ids {
			if n, _ := requests(id); n == 1 {
				first = id
			}
		}
		return first != ""
	}) {
		t.Fatal("no backend got the request")
	}
	// The continuation waits 2 s for its headers, wherever it goes.
	for _, id := range ids {
		fb[id].mu.Lock()
		fb[id].ttft = 2 * time.Second
		fb[id].mu.Unlock()
	}
	time.Sleep(100 * time.Millisecond) // about 20 words streamed
	imds[first].notice.Store(true)
	if !waitFor(2*time.Second, func() bool {
		for _, id := range ids {
			if _, c := requests(id); c == 1 {
				second = id
			}
		}
		return second != ""
	}) {
		t.Fatal("no continuation was sent")
	}
	// The next route has nowhere to go but the third backend: it answers
	// at once.
	for _, id := range ids {
		if id != first && id != second {
			fb[id].mu.Lock()
			fb[id].ttft = 0
			fb[id].mu.Unlock()
		}
	}
	imds[second].notice.Store(true)
	evs := <-done
	if textOf(evs) != want(200) || lastEvent(evs) != "[DONE]" {
		t.Fatalf("the client got %q, last event %s", textOf(evs), lastEvent(evs))
	}
	raw, _ := os.ReadFile(events)
	seen := false
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatal(err)
		}
		if e["event"] == "notice" && e["replica"] == second {
			seen = true
			if e["plans"] != 1.0 || e["replay"] != 1.0 {
				t.Errorf("%s's notice: %v plans, %v acted on as REPLAY: %s", second, e["plans"], e["replay"], line)
			}
		}
	}
	if !seen {
		t.Errorf("no notice event for %s", second)
	}
	for _, id := range ids {
		all, conts := requests(id)
		if id == first && (all != 1 || conts != 0) || id != first && (all != 1 || conts != 1) {
			t.Errorf("%s got %d requests, %d of them continuations", id, all, conts)
		}
	}
	if m := get(t, srv.URL+"/metrics"); !strings.Contains(m, "gateway_rerouted_total 1") {
		t.Errorf("/metrics: want one reroute")
	}
}

// A leg registered again under the same ticket (a try's, then its relay's)
// keeps a cut that came in between; a new leg starts uncut, and a cut for
// the ticket of a leg the stream has left reaches nothing.
func TestRegisterKeepsACutAcrossTheHandOff(t *testing.T) {
	g := &gateway{open: map[uint64]*stream{}}
	st := &stream{g: g}
	cancelled := 0
	first := leg{ticket: spotinfer.Ticket{ID: 7}, cancel: func() { cancelled++ }}
	st.register(&first)
	if !g.interrupt(7) || cancelled != 1 {
		t.Fatal("the registered leg was not cut")
	}
	st.register(&first)
	if !st.wasCut() {
		t.Fatal("registering the same leg again forgot its cut")
	}
	st.unregister(&first)
	next := leg{ticket: spotinfer.Ticket{ID: 8}, cancel: func() {}}
	st.register(&next)
	if st.wasCut() {
		t.Fatal("a new leg starts cut")
	}
	g.open[7] = st // a stale entry
	if g.interrupt(7) || st.wasCut() {
		t.Fatal("a cut for the leg left behind reached the new one")
	}
	stale := leg{ticket: spotinfer.Ticket{ID: 8}}
	(&stream{g: g}).unregister(&stale)
	if g.open[8] != st {
		t.Fatal("another stream's unregister took the entry away")
	}
}
