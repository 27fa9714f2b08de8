package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// postStatus posts a chat body and returns the status and the answer.
func postStatus(t *testing.T, url, body string) (int, []byte) {
	t.Helper()
	resp := postChat(t, url, body)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, b
}

// A body under -max-body-bytes is not refused for being over the library's
// own default limits: a message with a 1.5 MiB image (over the default 1
// MiB a message), a 5 MiB body (over the default 4 MiB) and a 300 KiB tools
// array (over the default 256 KiB) all reach the backend.
func TestBodyUnderGatewayLimitPassesLibraryLimits(t *testing.T) {
	od := &fakeBackend{n: 5}
	srv, _ := startRawGateway(t, map[string]http.Handler{"od-1": od}, map[string]string{"od-1": "on_demand"})
	img := strings.Repeat("A", 1536<<10)
	image := `{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"what is this"},` +
		`{"type":"image_url","image_url":{"url":"data:image/png;base64,` + img + `"}}]}]}`
	var msgs []string
	for i := 0; i < 10; i++ {
		msgs = append(msgs, `{"role":"user","content":"`+strings.Repeat("x", 512<<10)+`"}`)
	}
	many := `{"model":"m","messages":[` + strings.Join(msgs, ",") + `]}`
	tools := `{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function",` +
		`"function":{"name":"f","description":"` + strings.Repeat("d", 300<<10) + `"}}]}`
	for name, body := range map[string]string{"image": image, "5 MiB": many, "tools": tools} {
		if status, b := postStatus(t, srv.URL, body); status != 200 {
			t.Errorf("%s (%d bytes): status %d, want 200: %.300s", name, len(body), status, b)
		}
	}
}

// A body over a limit -config sets is refused by the library with 413 in
// the OpenAI error shape, not 400.
func TestBodyOverALibraryLimitIs413(t *testing.T) {
	config := filepath.Join(t.TempDir(), "spotinfer.json")
	if err := os.WriteFile(config, []byte(`{"limits":{"max_field_bytes":1024}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	od := &fakeBackend{n: 5}
	srv, _ := startRawGateway(t, map[string]http.Handler{"od-1": od}, map[string]string{"od-1": "on_demand"},
		"-config", config)
	want413(t, srv.URL, `{"model":"m","messages":[{"role":"user","content":"`+strings.Repeat("x", 2048)+`"}]}`)
	if status, b := postStatus(t, srv.URL, `{"model":"m","messages":[{"role":"user","content":"hi"}]}`); status != 200 {
		t.Errorf("a small body: status %d: %s", status, b)
	}
}

// -max-body-bytes bounds the body the gateway reads.
func TestMaxBodyBytesFlag(t *testing.T) {
	od := &fakeBackend{n: 5}
	srv, _ := startRawGateway(t, map[string]http.Handler{"od-1": od}, map[string]string{"od-1": "on_demand"},
		"-max-body-bytes", "65536")
	want413(t, srv.URL, `{"model":"m","messages":[{"role":"user","content":"`+strings.Repeat("x", 70000)+`"}]}`)
	body := `{"model":"m","messages":[{"role":"user","content":"` + strings.Repeat("x", 60000) + `"}]}`
	if status, b := postStatus(t, srv.URL, body); status != 200 {
		t.Errorf("a body under the limit: status %d: %.300s", status, b)
	}
	if _, err := parseFlags([]string{"-backends", "b.json", "-max-body-bytes", "63"}); err == nil {
		t.Errorf("-max-body-bytes 63 accepted")
	}
}

// want413 posts body and fails the test unless it is refused with 413 and
// an OpenAI error.
func want413(t *testing.T, url, body string) {
	t.Helper()
	status, b := postStatus(t, url, body)
	var e struct {
		Error struct{ Message, Type string }
	}
	if status != http.StatusRequestEntityTooLarge || json.Unmarshal(b, &e) != nil ||
		e.Error.Type != "invalid_request_error" || e.Error.Message == "" {
		t.Errorf("%d-byte body: status %d, want 413 with an error: %.300s", len(body), status, b)
	}
}

// bodyOf is a silver stream whose body is size bytes: one user message
// of x's.
func bodyOf(t *testing.T, size int) string {
	t.Helper()
	head := `{"model":"m","stream":true,"metadata":{"class":"silver"},"messages":[{"role":"user","content":"`
	tail := `"}]}`
	if size < len(head)+len(tail) {
		t.Fatalf("a body of %d bytes", size)
	}
	return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
}

// continuesAfter3 answers a continuation (a body that has
// continue_final_message, of a stream cut after w0 w1 w2) with w3 .. w9
// and its finish, and counts them. It does not decode the body, which
// may be tens of MiB.
func continuesAfter3(n *atomic.Int32) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			(&fakeBackend{}).ServeHTTP(w, r)
			return
		}
		body, _ := io.ReadAll(r.Body)
		if !bytes.Contains(body, []byte(`"continue_final_message":true`)) {
			http.Error(w, "not a continuation", http.StatusBadRequest)
			return
		}
		n.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 3; i < 10; i++ {
			fmt.Fprintf(w, "data: {\"id\":\"y\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w%d\"}}]}\n\n", i)
		}
		fmt.Fprint(w, "data: {\"id\":\"y\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n")
		fmt.Fprint(w, "data: [DONE]\n\n")
	})
}

// A stream whose body is as large as -max-body-bytes allows is continued
// after a cut like any other: its continuation (the body, and the text
// the client has as its last message) is within the library's body
// limit.
func TestStreamWithTheLargestBodyIsContinued(t *testing.T) {
	var n atomic.Int32
	od := continuesAfter3(&n)
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": textThenDrop(3, od), "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "-max-body-bytes", "65536")
	evs, timedOut := postChatFor(t, srv.URL, bodyOf(t, 65536), 5*time.Second)
	if timedOut || textOf(evs) != want(10) || lastEvent(evs) != "[DONE]" {
		t.Errorf("timed out %v, text %q, last event %.300s", timedOut, textOf(evs), lastEvent(evs))
	}
	if n.Load() != 1 {
		t.Errorf("od-1 was sent %d continuations", n.Load())
	}
}

// gatewayWith builds (and does not start) a gateway over one backend with
// the flags given; the caller closes it.
func gatewayWith(t *testing.T, flags ...string) (*gateway, error) {
	t.Helper()
	list := filepath.Join(t.TempDir(), "backends.json")
	if err := os.WriteFile(list, []byte(`[{"id":"od-1","url":"http://127.0.0.1:1","pool":"on_demand",`+
		`"zone":"z","instance_type":"g5.xlarge","usd_per_hour":1}]`), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags(append([]string{"-backends", list}, flags...))
	if err != nil {
		return nil, err
	}
	return newGateway(o)
}

// The replay queue takes the checkpoint of a stream cut with a body of
// -max-body-bytes and 8 MiB of answer, however large the flag: at 17 MiB,
// over the library's default envelope limit (16 MiB), it is enqueued as
// a cut stream's is; at the flag's top, over the queue's default memory
// (256 MiB), the gateway starts, its settings fitting such a checkpoint
// (one of 1 GiB takes tens of seconds under the race detector). One byte
// more is refused: the library's limits could not hold its continuation.
func TestReplayQueueHoldsTheLargestBody(t *testing.T) {
	size := 17 << 20
	g, err := gatewayWith(t, "-max-body-bytes", fmt.Sprint(size))
	if err != nil {
		t.Fatal(err)
	}
	env := spotinfer.Envelope{Key: "k/1", Body: []byte(bodyOf(t, size)), OpenAIKind: spotinfer.OpenAIChat,
		Class: spotinfer.ClassSilver, PartialText: strings.Repeat(" w", (replayRoom-64)/2), StreamOffset: 1}
	if _, err := g.queue.Enqueue(env); err != nil {
		t.Errorf("-max-body-bytes %d: %v", size, err)
	}
	g.close()
	if g, err = gatewayWith(t, "-max-body-bytes", fmt.Sprint(maxMaxBody)); err != nil {
		t.Fatalf("-max-body-bytes %d: %v", maxMaxBody, err)
	}
	g.close()
	if _, err := parseFlags([]string{"-backends", "b.json", "-max-body-bytes", fmt.Sprint(maxMaxBody + 1)}); err == nil {
		t.Errorf("-max-body-bytes %d accepted", maxMaxBody+1)
	}
}

// An envelope limit or a queue that -config or -replay names too small for
// a stream cut with a body of -max-body-bytes is refused at start, with
// the setting named.
func TestReplayLimitsTooSmallForTheBodyAreRefused(t *testing.T) {
	config := filepath.Join(t.TempDir(), "spotinfer.json")
	if err := os.WriteFile(config, []byte(`{"replay":{"max_envelope_bytes":16777216}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		flags []string
		want  string
	}{
		{[]string{"-config", config, "-max-body-bytes", "9437184"}, "replay.max_envelope_bytes 16777216"},
		{[]string{"-replay", `{"store":"memory","max_envelope_bytes":9000000}`}, "replay.max_envelope_bytes 9000000"},
		{[]string{"-replay", `{"store":"memory","max_bytes":8388608}`}, "replay.max_bytes 8388608"},
	} {
		g, err := gatewayWith(t, c.flags...)
		if err == nil {
			g.close()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error naming %s", c.flags, err, c.want)
		}
	}
	// The library's defaults fit the default body, named or not.
	g, err := gatewayWith(t, "-config", config)
	if err != nil {
		t.Fatalf("-config %s: %v", config, err)
	}
	g.close()
}
