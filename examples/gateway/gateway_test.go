package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackend streams " w0 w1 ... w(n-1)" one word per event and resumes
// a continue_final_message request after the words it already holds. With
// cutAfter > 0 it drops the connection after that many words, once.
type fakeBackend struct {
	n        int
	cutAfter atomic.Int32
	mu       sync.Mutex
	bodies   []map[string]any
}

func (f *fakeBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/metrics" {
		io.WriteString(w, "vllm:num_requests_running{model_name=\"m\"} 0\nvllm:num_requests_waiting{model_name=\"m\"} 0\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.1\n")
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, body)
	f.mu.Unlock()
	start := 0
	if body["continue_final_message"] == true {
		msgs := body["messages"].([]any)
		last := msgs[len(msgs)-1].(map[string]any)
		start = len(strings.Fields(last["content"].(string)))
	}
	if body["stream"] != true {
		var b strings.Builder
		for i := start; i < f.n; i++ {
			fmt.Fprintf(&b, " w%d", i)
		}
		json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{
			"message": map[string]any{"role": "assistant", "content": b.String()}}},
			"usage": map[string]any{"prompt_tokens": 3, "completion_tokens": f.n - start}})
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	cut := int(f.cutAfter.Swap(0))
	fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n")
	for i := start; i < f.n; i++ {
		if cut > 0 && i == cut {
			fl.Flush()
			// Drop the connection mid-stream, as a machine that dies does.
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{\"content\":\" w%d\"}}]}\n\n", i)
		fl.Flush()
		time.Sleep(2 * time.Millisecond)
	}
	fmt.Fprintf(w, "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
	fmt.Fprintf(w, "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n", f.n-start, f.n-start+3)
	fmt.Fprintf(w, "data: [DONE]\n\n")
	fl.Flush()
}

func newTestGateway(t *testing.T, backends map[string]*fakeBackend, pools map[string]string, balancer string) *httptest.Server {
	t.Helper()
	dir := t.TempDir()
	var list []map[string]any
	for _, id := range []string{"spot-a", "spot-b", "od-1"} {
		fb, ok := backends[id]
		if !ok {
			continue
		}
		srv := httptest.NewServer(fb)
		t.Cleanup(srv.Close)
		list = append(list, map[string]any{"id": id, "url": srv.URL, "pool": pools[id],
			"zone": "z-" + id, "instance_type": "g5.xlarge", "usd_per_hour": 1.0})
	}
	raw, _ := json.Marshal(list)
	path := filepath.Join(dir, "backends.json")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags([]string{"-backends", path, "-balancer", balancer, "-replay-wait", "5s"})
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGateway(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel()
	g.start(ctx)
	srv := httptest.NewServer(g.routes())
	t.Cleanup(func() { srv.Close(); cancel(); g.close() })
	return srv
}

// readStream returns the streamed text and whether [DONE] arrived.
func readStream(t *testing.T, resp *http.Response) (string, bool, int) {
	t.Helper()
	defer resp.Body.Close()
	var text strings.Builder
	done, roles := false, 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var ev event
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			t.Fatalf("bad event %q", data)
		}
		if strings.Contains(data, `"error"`) {
			t.Fatalf("error event: %s", data)
		}
		if len(ev.Choices) > 0 && ev.Choices[0].Delta.Role != "" {
			roles++
		}
		text.WriteString(ev.content())
	}
	return text.String(), done, roles
}

func want(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, " w%d", i)
	}
	return b.String()
}

const silverStream = `{"model":"m","stream":true,"metadata":{"class":"silver"},
  "messages":[{"role":"system","content":"S"},{"role":"user","content":"hello"}]}`

func TestStreamPassesThroughAndBadBodyIs400(t *testing.T) {
	fb := &fakeBackend{n: 30}
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": fb},
		map[string]string{"spot-a": "spot"}, "spotinfer")
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(silverStream))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if text, done, _ := readStream(t, resp); text != want(30) || !done {
		t.Fatalf("got %q done=%v", text, done)
	}
	resp, err = http.Post(srv.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"model":"m","messages":[{"role":"user","content":1}]}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "messages[0].content") {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, s := range []string{"spotinfer_decisions_total{", `gateway_requests_total{outcome="ok"} 1`,
		`gateway_requests_total{outcome="bad_request"} 1`} {
		if !strings.Contains(string(b), s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// A stream whose backend dies mid-way is resumed on another backend from
// the replay queue: the client gets every word once, one role chunk, and
// [DONE].
func TestCutStreamIsResumedElsewhere(t *testing.T) {
	a, od := &fakeBackend{n: 40}, &fakeBackend{n: 40}
	a.cutAfter.Store(13)
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer")
	resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(silverStream))
	if err != nil {
		t.Fatal(err)
	}
	text, done, roles := readStream(t, resp)
	if text != want(40) || !done || roles != 1 {
		t.Fatalf("got %q done=%v roles=%d", text, done, roles)
	}
	// Nothing noticed the machine, so the library may pick it again: one
	// of the two must have got the continuation.
	var conts []map[string]any
	for _, fb := range []*fakeBackend{a, od} {
		fb.mu.Lock()
		for _, b := range fb.bodies {
			if b["continue_final_message"] == true {
				conts = append(conts, b)
			}
		}
		fb.mu.Unlock()
	}
	if len(conts) != 1 || conts[0]["add_generation_prompt"] != false {
		t.Fatalf("continuations sent: %v", conts)
	}
}

func TestRoundRobinRelays(t *testing.T) {
	a, b := &fakeBackend{n: 5}, &fakeBackend{n: 5}
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "spot-b": b},
		map[string]string{"spot-a": "spot", "spot-b": "spot"}, "roundrobin")
	for i := 0; i < 4; i++ {
		resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(silverStream))
		if err != nil {
			t.Fatal(err)
		}
		if text, done, _ := readStream(t, resp); text != want(5) || !done {
			t.Fatalf("got %q", text)
		}
	}
	if len(a.bodies) != 2 || len(b.bodies) != 2 {
		t.Fatalf("round robin sent %d and %d", len(a.bodies), len(b.bodies))
	}
}

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}
