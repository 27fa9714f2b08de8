package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// keyedBackend answers as a vLLM started with --api-key does: 401 without
// the key. It keeps the headers of the last request, and answers with
// headers of its own.
type keyedBackend struct {
	key  string
	next http.Handler
	mu   sync.Mutex
	got  http.Header
	// metricsKeyed: /metrics was read with the key (a server may guard it).
	metricsKeyed atomic.Bool
}

func (k *keyedBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/metrics" {
		if r.Header.Get("Authorization") == "Bearer "+k.key {
			k.metricsKeyed.Store(true)
		}
		k.next.ServeHTTP(w, r)
		return
	}
	k.mu.Lock()
	k.got = r.Header.Clone()
	k.mu.Unlock()
	if r.Header.Get("Authorization") != "Bearer "+k.key {
		http.Error(w, `{"error":"Unauthorized"}`, http.StatusUnauthorized)
		return
	}
	w.Header().Set("Openai-Processing-Ms", "42")
	w.Header().Set("X-Backend-Internal", "yes")
	w.Header().Set("X-Request-Id", r.Header.Get("X-Request-Id"))
	k.next.ServeHTTP(w, r)
}

func (k *keyedBackend) header() http.Header {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.got
}

// postWithHeaders posts a whole (not streamed) chat request with the
// client's headers and returns the answer's status and headers.
func postWithHeaders(t *testing.T, url string) (int, http.Header) {
	t.Helper()
	body := strings.Replace(silverStream, `"stream":true,`, `"stream":false,`, 1)
	req, _ := http.NewRequest("POST", url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer the-gateway-key")
	req.Header.Set("OpenAI-Organization", "org-1")
	req.Header.Set("Traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	req.Header.Set("X-Request-Id", "client-req-1")
	req.Header.Set("X-Unlisted", "no")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// A backend that needs an API key gets the one the backends file gives it
// (here from an environment variable), on its /metrics too, never the
// client's Authorization;
// the client's listed headers reach it, others do not; the answer brings
// back the backend's listed headers and the client's X-Request-Id.
func TestBackendGetsItsKeyAndTheClientsListedHeaders(t *testing.T) {
	t.Setenv("GATEWAY_TEST_OD1_KEY", "sk-od-1")
	kb := &keyedBackend{key: "sk-od-1", next: &fakeBackend{n: 3}}
	for _, balancer := range []string{"spotinfer", "roundrobin"} {
		srv, _ := startRawGateway(t, map[string]http.Handler{"od-1": kb},
			map[string]string{"od-1": "on_demand", "od-1.api_key_env": "GATEWAY_TEST_OD1_KEY"},
			"-balancer", balancer)
		status, h := postWithHeaders(t, srv.URL)
		got := kb.header()
		if status != 200 {
			t.Fatalf("%s: status %d; the backend got Authorization %q", balancer, status, got.Get("Authorization"))
		}
		for k, want := range map[string]string{"Openai-Organization": "org-1",
			"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "X-Unlisted": ""} {
			if got.Get(k) != want {
				t.Errorf("%s: the backend got %s %q, want %q", balancer, k, got.Get(k), want)
			}
		}
		// A routed request's backends get the gateway's own id.
		if id := got.Get("X-Request-Id"); id == "" || (balancer == "spotinfer") == (id == "client-req-1") {
			t.Errorf("%s: the backend got X-Request-Id %q", balancer, id)
		}
		if balancer == "spotinfer" && !kb.metricsKeyed.Load() {
			t.Errorf("%s: /metrics was not read with the backend's key", balancer)
		}
		for k, want := range map[string]string{"Openai-Processing-Ms": "42", "X-Request-Id": "client-req-1",
			"X-Backend-Internal": ""} {
			if h.Get(k) != want {
				t.Errorf("%s: the client got %s %q, want %q", balancer, k, h.Get(k), want)
			}
		}
	}
}

// The key comes from exactly one of api_key, api_key_env and api_key_file
// (relative to the backends file); a mistake is named without the key.
func TestBackendAPIKeySources(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "od.key"), []byte("sk-from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("GATEWAY_TEST_EMPTY_KEY", "")
	entry := `{"id":"od-1","url":"http://127.0.0.1:1","pool":"on_demand",`
	cases := []struct{ fields, key, err string }{
		{`"api_key_file":"od.key"}`, "sk-from-file", ""},
		{`"api_key":"sk-inline"}`, "sk-inline", ""},
		{`"api_key":"sk-inline","api_key_file":"od.key"}`, "", "give one of"},
		{`"api_key_env":"GATEWAY_TEST_EMPTY_KEY"}`, "", "not set or empty"},
		{`"api_key_file":"missing.key"}`, "", "api_key_file"},
		{`"api_key":"sk-a\nX-Evil: 1"}`, "", "control character"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, "backends.json")
		if err := os.WriteFile(path, []byte("["+entry+c.fields+"]"), 0o644); err != nil {
			t.Fatal(err)
		}
		list, err := loadBackends(path)
		switch {
		case c.err == "" && (err != nil || list[0].apiKey != c.key):
			t.Errorf("%s: %v, want the key %q", c.fields, err, c.key)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: error %v, want one saying %q", c.fields, err, c.err)
		case err != nil && strings.Contains(err.Error(), "sk-"):
			t.Errorf("%s: the error shows the key: %v", c.fields, err)
		}
	}
}

// orgLog records the OpenAI-Organization header of each chat request
// before next serves it.
type orgLog struct {
	next http.Handler
	mu   sync.Mutex
	got  []string
}

func (o *orgLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		o.mu.Lock()
		o.got = append(o.got, r.Header.Get("Openai-Organization"))
		o.mu.Unlock()
	}
	o.next.ServeHTTP(w, r)
}

func (o *orgLog) seen() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.got...)
}

// A stream cut mid-way is resumed by a replay worker; the continuation's
// leg carries the client's listed headers as the first leg did.
func TestReplayLegGetsTheClientsListedHeaders(t *testing.T) {
	a, od := &fakeBackend{n: 40}, &fakeBackend{n: 40}
	a.cutAfter.Store(13)
	la, lod := &orgLog{next: a}, &orgLog{next: od}
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": la, "od-1": lod},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"})
	req, _ := http.NewRequest("POST", srv.URL+"/v1/chat/completions", strings.NewReader(withUsage))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("OpenAI-Organization", "org-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	text, done, _, _, _ := readStreamAll(t, resp)
	if text != want(40) || !done {
		t.Fatalf("got %q done=%v", text, done)
	}
	legs := append(la.seen(), lod.seen()...)
	if len(legs) < 2 {
		t.Fatalf("%d legs: the stream was not resumed", len(legs))
	}
	for i, org := range legs {
		if org != "org-1" {
			t.Errorf("leg %d got OpenAI-Organization %q, want org-1 (all: %q)", i, org, legs)
		}
	}
}
