package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A non-streamed answer's headers come once the whole answer is generated
// (as vLLM sends them): one that takes longer than -header-wait is
// relayed, and its replica is not taken for failed (the breaker opens at
// the first error here).
func TestNonStreamedAnswerSlowerThanHeaderWait(t *testing.T) {
	a := &fakeBackend{n: 10, ttft: 1500 * time.Millisecond}
	od := &fakeBackend{n: 10, ttft: 1500 * time.Millisecond}
	srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "-header-wait", "1s", "-config", breakerOfOne(t))
	body := strings.Replace(silverStream, `"stream":true,`, `"stream":false,`, 1)
	resp := postChat(t, srv.URL, body)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), want(10)) {
		t.Fatalf("a non-streamed answer slower than -header-wait: status %d: %s", resp.StatusCode, b)
	}
	for _, id := range []string{"spot-a", "od-1"} {
		if s := replicaStatus(t, g, id); s.ConsecutiveErrors != 0 || s.Inflight != 0 {
			t.Errorf("%s: %d consecutive errors, %d in flight", id, s.ConsecutiveErrors, s.Inflight)
		}
	}
}

// A streamed answer's headers come at once from a live backend: a try
// without them within -header-wait fails and the next replica is tried.
// When every try fails so, the client's 502 names the replica, never the
// backend's URL.
func TestStreamedHeadersLaterThanHeaderWait(t *testing.T) {
	a := &fakeBackend{n: 10, ttft: 2 * time.Second}
	od := &fakeBackend{n: 10}
	srv, g := startRawGateway(t, map[string]http.Handler{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "-header-wait", "300ms")
	text, done, _ := readStream(t, postChat(t, srv.URL, silverStream))
	if text != want(10) || !done {
		t.Fatalf("text %q done %v", text, done)
	}
	a.mu.Lock()
	od.mu.Lock()
	tried := len(a.bodies) + len(od.bodies)
	od.mu.Unlock()
	a.mu.Unlock()
	if s := replicaStatus(t, g, "spot-a"); tried == 2 && s.ConsecutiveErrors != 1 {
		t.Errorf("spot-a: %d consecutive errors after a try without headers", s.ConsecutiveErrors)
	}

	a = &fakeBackend{n: 10, ttft: 2 * time.Second}
	od = &fakeBackend{n: 10, ttft: 2 * time.Second}
	srv, _ = startRawGateway(t, map[string]http.Handler{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "-header-wait", "300ms")
	resp := postChat(t, srv.URL, silverStream)
	var body struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	msg := body.Error.Message
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(msg, "-header-wait") {
		t.Fatalf("status %d: %+v", resp.StatusCode, body)
	}
	if strings.Contains(msg, "http") || strings.Contains(msg, "127.0.0.1") ||
		!(strings.HasPrefix(msg, "spot-a:") || strings.HasPrefix(msg, "od-1:")) {
		t.Errorf("the message should name the replica, not its URL: %q", msg)
	}
}
