package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
