package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// Streams cut at their edges: before their first event, around their
// role chunk, after their last token; and streams a checkpoint cannot hold.

// postFor posts a stream to path and reads its data lines for at most d;
// timedOut is true when the stream had not ended by then.
func postFor(t *testing.T, url, path, body string, d time.Duration) (events []string, timedOut bool) {
	t.Helper()
	c := &http.Client{Timeout: d}
	resp, err := c.Post(url+path, "application/json", strings.NewReader(body))
	if err != nil {
		return nil, true
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			events = append(events, d)
		}
	}
	return events, sc.Err() != nil
}

// echoBackend is a /v1/completions server that streams as vLLM does with
// "echo": true: the first event's text is the prompt, then " w<k>" words up
// to w9 (a prompt that already ends in " w0 ... w<k-1>" resumes at k). The
// first request dies after 3 words.
type echoBackend struct {
	mu     sync.Mutex
	bodies []string
}

func (e *echoBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/metrics" {
		(&fakeBackend{}).ServeHTTP(w, r)
		return
	}
	raw, _ := io.ReadAll(r.Body)
	var b struct {
		Prompt string `json:"prompt"`
		Echo   bool   `json:"echo"`
	}
	json.Unmarshal(raw, &b)
	e.mu.Lock()
	e.bodies = append(e.bodies, string(raw))
	first := len(e.bodies) == 1
	e.mu.Unlock()
	start := 0
	for k := 10; k > 0; k-- {
		if strings.HasSuffix(b.Prompt, want(k)) {
			start = k
			break
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	ev := func(text string, finish string) {
		f := "null"
		if finish != "" {
			f = `"` + finish + `"`
		}
		t, _ := json.Marshal(text)
		fmt.Fprintf(w, "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,\"text\":%s,\"finish_reason\":%s}]}\n\n", t, f)
		fl.Flush()
	}
	if b.Echo {
		ev(b.Prompt, "")
	}
	for k := start; k < 10; k++ {
		if first && k == 3 {
			time.Sleep(10 * time.Millisecond)
			if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
				c.Close()
			}
			return
		}
		ev(fmt.Sprintf(" w%d", k), "")
	}
	ev("", "stop")
	fmt.Fprint(w, "data: [DONE]\n\n")
	fl.Flush()
}

// A stream that echoes its prompt is not continued after a cut: a
// checkpoint would hold the echo as answer text, and the continuation
// would echo it again. The client keeps what it had, once, and an error
// event that says why; chat's echo (of the last message) likewise.
func TestEchoStreamIsNotContinued(t *testing.T) {
	eb := &echoBackend{}
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": eb, "od-1": eb},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"})
	body := `{"model":"m","stream":true,"echo":true,"metadata":{"class":"silver"},"prompt":"hello"}`
	evs, _ := postFor(t, srv.URL, "/v1/completions", body, 5*time.Second)
	eb.mu.Lock()
	sent := len(eb.bodies)
	eb.mu.Unlock()
	if text := textOf(evs); text != "hello"+want(3) || sent != 1 ||
		!strings.Contains(lastEvent(evs), "echoes its prompt") {
		t.Errorf("%d requests, text %q, last event %s", sent, text, lastEvent(evs))
	}

	fb := &fakeBackend{n: 10}
	fb.cutAfter.Store(4)
	od := &fakeBackend{n: 10}
	srv, _ = startRawGateway(t, map[string]http.Handler{"spot-a": fb, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"})
	chat := strings.Replace(silverStream, `"stream":true,`, `"stream":true,"echo":true,`, 1)
	evs, _ = postFor(t, srv.URL, "/v1/chat/completions", chat, 5*time.Second)
	fb.mu.Lock()
	od.mu.Lock()
	sent = len(fb.bodies) + len(od.bodies)
	od.mu.Unlock()
	fb.mu.Unlock()
	if text := textOf(evs); text != want(4) || sent != 1 ||
		!strings.Contains(lastEvent(evs), "echoes its prompt") {
		t.Errorf("chat: %d requests, text %q, last event %s", sent, text, lastEvent(evs))
	}
}

// headersThenDrop answers its first completion with the response headers
// and nothing more, then drops the connection (a machine that dies during
// prefill); the next ones are next's (with next nil, every one drops).
func headersThenDrop(next http.Handler) http.Handler { return textThenDrop(0, next) }

// A gold stream (not replayable) whose backend dies after its response
// headers and before its first event leaves the client nothing: the
// client's headers wait for the first event, and the request is routed
// again, with the replica that broke kept out. Its ticket ends as ERROR.
func TestStreamBrokenBeforeItsFirstEventIsRoutedAgain(t *testing.T) {
	od := &fakeBackend{n: 6}
	a := headersThenDrop(od)
	srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": a, "od-1": a},
		map[string]string{"spot-a": "on_demand", "od-1": "on_demand"}, "-config", breakerOfOne(t))
	gold := strings.Replace(silverStream, `"silver"`, `"gold"`, 1)
	evs, _ := postChatFor(t, srv.URL, gold, 5*time.Second)
	if textOf(evs) != want(6) || lastEvent(evs) != "[DONE]" {
		t.Fatalf("gold stream broken before its first event: %v", evs)
	}
	errs := replicaStatus(t, g, "spot-a").ConsecutiveErrors + replicaStatus(t, g, "od-1").ConsecutiveErrors
	if errs != 1 {
		t.Errorf("%d consecutive errors in all, want 1 (the leg that broke)", errs)
	}
	if m := get(t, srv.URL+"/metrics"); !strings.Contains(m, "gateway_rerouted_total 1") {
		t.Errorf("/metrics: not rerouted once")
	}
}

// When every replica's stream breaks before its first event, the client
// gets 502 with the last break, as after failed tries.
func TestEveryStreamBrokenBeforeItsFirstEventIs502(t *testing.T) {
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": headersThenDrop(nil), "od-1": headersThenDrop(nil)},
		map[string]string{"spot-a": "on_demand", "od-1": "on_demand"})
	gold := strings.Replace(silverStream, `"silver"`, `"gold"`, 1)
	resp := postChat(t, srv.URL, gold)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(b), "broke before its first event") {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
}

// textThenDrop answers its first completion with the words w0 .. w(n-1)
// in events without a role chunk, then drops the connection; the next
// completions are next's (with next nil, every one drops).
func textThenDrop(n int, next http.Handler) http.Handler {
	var once sync.Once
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			(&fakeBackend{}).ServeHTTP(w, r)
			return
		}
		first := false
		once.Do(func() { first = true })
		if !first && next != nil {
			next.ServeHTTP(w, r)
			return
		}
		io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w%d\"}}]}\n\n", i)
		}
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
}

// A stream cut before the client had a role chunk gets the
// continuation's: the client has the role once.
func TestContinuationGivesTheRoleTheClientLacks(t *testing.T) {
	od := &fakeBackend{n: 6}
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": textThenDrop(2, od), "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"})
	text, done, roles := readStream(t, postChat(t, srv.URL, silverStream))
	if text != want(6) || !done || roles != 1 {
		t.Errorf("text %q done %v, %d role chunks (want 1)", text, done, roles)
	}
}

// streamThenDrop streams a role chunk and n words, each with the running
// usage, then (withFinish) the finish chunk, then drops the connection
// before the usage chunk and [DONE]. A continuation is answered by next.
func streamThenDrop(n int, withFinish bool, next http.Handler) http.Handler {
	var once sync.Once
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			(&fakeBackend{}).ServeHTTP(w, r)
			return
		}
		first := false
		once.Do(func() { first = true })
		if !first {
			next.ServeHTTP(w, r)
			return
		}
		io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		head := `"id":"x","object":"chat.completion.chunk","created":7,"model":"m"`
		fmt.Fprintf(w, "data: {%s,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n", head)
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "data: {%s,\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w%d\"}}],"+
				"\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", head, i, i+1, i+4)
		}
		if withFinish {
			fmt.Fprintf(w, "data: {%s,\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}],"+
				"\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", head, n, n+3)
		}
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
}

// streamEnd is a stream's finish_reason ("" without one), its usage
// chunk's completion tokens (-1 without one) and that chunk as written.
func streamEnd(evs []string) (finish string, usage int, usageChunk string) {
	usage = -1
	for _, d := range evs {
		var ev event
		if d == "[DONE]" || decodeEvent([]byte(d), &ev) != nil {
			continue
		}
		for _, c := range ev.Choices {
			if c.FinishReason != nil {
				finish = *c.FinishReason
			}
		}
		if ev.Usage != nil && len(ev.Choices) == 0 {
			usage, usageChunk = int(ev.Usage.CompletionTokens), d
		}
	}
	return finish, usage, usageChunk
}

// A stream cut after its finish chunk and before its usage chunk is whole,
// but for that chunk: the client that asked for it (include_usage) gets
// one from the leg's count, then [DONE]; one that did not ask gets none.
func TestCutAfterTheFinishChunkGetsItsUsageChunk(t *testing.T) {
	for _, asked := range []bool{true, false} {
		od := &fakeBackend{n: 10}
		srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": streamThenDrop(5, true, od), "od-1": od},
			map[string]string{"spot-a": "spot", "od-1": "on_demand"})
		body := strings.Replace(silverStream, `"stream":true,`, `"stream":true,"max_tokens":5,`, 1)
		if asked {
			body = strings.Replace(withUsage, `"stream":true,`, `"stream":true,"max_tokens":5,`, 1)
		}
		evs, _ := postChatFor(t, srv.URL, body, 5*time.Second)
		finish, usage, chunk := streamEnd(evs)
		wantUsage := -1
		if asked {
			wantUsage = 5
		}
		if textOf(evs) != want(5) || finish != "length" || usage != wantUsage || lastEvent(evs) != "[DONE]" {
			t.Errorf("asked %v: text %q finish %q usage %d, last %s", asked, textOf(evs), finish, usage, lastEvent(evs))
		}
		if asked && !strings.Contains(chunk, `"prompt_tokens":3`) || asked && !strings.Contains(chunk, `"model":"m"`) {
			t.Errorf("usage chunk %s", chunk)
		}
		od.mu.Lock()
		if len(od.bodies) != 0 {
			t.Errorf("asked %v: a whole answer was continued", asked)
		}
		od.mu.Unlock()
		if s := replicaStatus(t, g, "spot-a"); s.Inflight != 0 {
			t.Errorf("spot-a: %d tickets still open", s.Inflight)
		}
	}
}

// A stream cut after the last token its max_tokens allows and before its
// finish chunk has the whole answer: it is not continued, and the client
// gets the finish chunk (finish_reason "length") and the usage chunk it
// asked for, then [DONE].
func TestCutAfterTheLastTokenGetsItsFinishChunk(t *testing.T) {
	od := &fakeBackend{n: 10}
	srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": streamThenDrop(5, false, od), "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"})
	body := strings.Replace(withUsage, `"stream":true,`, `"stream":true,"max_tokens":5,`, 1)
	evs, _ := postChatFor(t, srv.URL, body, 5*time.Second)
	finish, usage, _ := streamEnd(evs)
	if textOf(evs) != want(5) || finish != "length" || usage != 5 || lastEvent(evs) != "[DONE]" {
		t.Errorf("text %q finish %q usage %d, last %s", textOf(evs), finish, usage, lastEvent(evs))
	}
	od.mu.Lock()
	if len(od.bodies) != 0 {
		t.Errorf("a whole answer was continued")
	}
	od.mu.Unlock()
	for _, id := range []string{"spot-a", "od-1"} {
		if s := replicaStatus(t, g, id); s.Inflight != 0 {
			t.Errorf("%s: %d tickets still open", id, s.Inflight)
		}
	}
}

// A leg that broke before the client had an event may have sent events the
// client does not get (a usage chunk it did not ask for): the stream's id
// is the first event's the client has, and a continuation after a later
// cut keeps it.
func TestStreamIDIsTheFirstWrittenEvents(t *testing.T) {
	var once sync.Once
	later := &fakeBackend{n: 10}
	a := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := false
		if r.URL.Path != "/metrics" {
			once.Do(func() { first = true })
		}
		if !first {
			later.ServeHTTP(w, r)
			return
		}
		io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: {\"id\":\"unseen\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":0}}\n\n")
		w.(http.Flusher).Flush()
		time.Sleep(20 * time.Millisecond)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			conn.Close()
		}
	})
	od := &fakeBackend{n: 10}
	od.cutAfter.Store(3)
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"})
	text, done, _, ids, _ := readStreamAll(t, postChat(t, srv.URL, silverStream))
	if text != want(10) || !done || len(ids) != 1 || ids[0] == "unseen" {
		t.Errorf("text %q done %v ids %v", text, done, ids)
	}
}
