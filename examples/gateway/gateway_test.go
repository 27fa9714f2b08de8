package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
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

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// fakeBackend streams " w0 w1 ... w(n-1)", at most max_tokens of them, one
// word (token) per event or perEvent, and resumes a continue_final_message
// request after the words it already holds. It reads stream_options as vLLM
// does: a usage chunk at the end with include_usage, and the usage so far in
// every chunk with continuous_usage_stats too (unless noRunningUsage). With
// cutAfter > 0 it drops the connection once, at the first event starting at
// or after that many words.
type fakeBackend struct {
	n        int
	perEvent int           // words an event holds; default 1
	delay    time.Duration // between events; default 2 ms
	// noRunningUsage ignores continuous_usage_stats, as a backend that
	// does not know it.
	noRunningUsage bool
	kv             string        // KV-cache usage on /metrics; default 0.1
	ttft           time.Duration // before the response headers, once
	fail           atomic.Int32  // answer this many requests 500
	onFail         func()        // called before each of those answers
	cutAfter       atomic.Int32
	// choices > 0 streams that many choices whatever the body's n.
	choices int
	// stopHold > 0 holds back the text of the last stopHold words for a
	// body with stop strings, as vLLM holds back what may be the start of
	// one, while the running count counts them; it sends them before the
	// finish_reason.
	stopHold int
	// cutAtFinish > 0 drops the connection once, after that many choices
	// have had their finish_reason.
	cutAtFinish atomic.Int32
	mu          sync.Mutex
	bodies      []map[string]any
}

func (f *fakeBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/metrics" {
		kv := f.kv
		if kv == "" {
			kv = "0.1"
		}
		fmt.Fprintf(w, "vllm:num_requests_running{model_name=\"m\"} 0\nvllm:num_requests_waiting{model_name=\"m\"} 0\nvllm:kv_cache_usage_perc{model_name=\"m\"} %s\n", kv)
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, err.Error(), 400)
		return
	}
	if f.fail.Load() > 0 {
		f.fail.Add(-1)
		if f.onFail != nil {
			f.onFail()
		}
		http.Error(w, "engine dead", http.StatusInternalServerError)
		return
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, body)
	ttft := f.ttft
	f.ttft = 0
	f.mu.Unlock()
	if ttft > 0 {
		select {
		case <-time.After(ttft):
		case <-r.Context().Done():
			return
		}
	}
	start := 0
	if body["continue_final_message"] == true {
		msgs := body["messages"].([]any)
		last := msgs[len(msgs)-1].(map[string]any)
		start = len(strings.Fields(last["content"].(string)))
	}
	end, finish := f.n, "stop"
	if m, ok := body["max_tokens"].(float64); ok && start+int(m) < end {
		end, finish = start+int(m), "length"
	}
	if body["stream"] != true {
		var b strings.Builder
		for i := start; i < end; i++ {
			fmt.Fprintf(&b, " w%d", i)
		}
		json.NewEncoder(w).Encode(map[string]any{"choices": []any{map[string]any{
			"message": map[string]any{"role": "assistant", "content": b.String()}}},
			"usage": map[string]any{"prompt_tokens": 3, "completion_tokens": end - start}})
		return
	}
	// vLLM's defaults: an object asks for the usage chunk unless it says
	// include_usage false or null.
	opts, isObject := body["stream_options"].(map[string]any)
	include, given := opts["include_usage"]
	usageAtEnd := isObject && (include == true || !given)
	running := usageAtEnd && opts["continuous_usage_stats"] == true && !f.noRunningUsage
	usage := func(k int) string {
		if !running {
			return ""
		}
		return fmt.Sprintf(`,"usage":{"prompt_tokens":3,"completion_tokens":%d,"total_tokens":%d}`, k, k+3)
	}
	per := f.perEvent
	if per == 0 {
		per = 1
	}
	w.Header().Set("Content-Type", "text/event-stream")
	fl := w.(http.Flusher)
	cut := int(f.cutAfter.Swap(0))
	f.mu.Lock()
	id := fmt.Sprintf("chatcmpl-%p-%d", f, len(f.bodies))
	f.mu.Unlock()
	// n choices stream as vLLM streams them: one event a choice, each
	// with its index; choice c's words are " w0 w1 ..." for the first and
	// " c1w0 c1w1 ..." for the second.
	choices := 1
	if n, ok := body["n"].(float64); ok && n > 1 {
		choices = int(n)
	}
	if f.choices > 0 {
		choices = f.choices
	}
	index := func(c int) string {
		if choices == 1 {
			return ""
		}
		return fmt.Sprintf(`"index":%d,`, c)
	}
	word := func(c, k int) string {
		if c == 0 {
			return fmt.Sprintf(" w%d", k)
		}
		return fmt.Sprintf(" c%dw%d", c, k)
	}
	drop := func() {
		fl.Flush()
		// Drop the connection mid-stream, as a machine that dies does.
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}
	for c := 0; c < choices; c++ {
		fmt.Fprintf(w, "data: {\"id\":%q,\"choices\":[{%s\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]%s}\n\n",
			id, index(c), usage(0))
	}
	hold := 0
	if _, ok := body["stop"]; ok {
		hold = f.stopHold
	}
	sent := start // the words whose text went out
	send := func(upTo, counted int) {
		for c := 0; c < choices; c++ {
			var text strings.Builder
			for k := sent; k < upTo; k++ {
				text.WriteString(word(c, k))
			}
			fmt.Fprintf(w, "data: {\"id\":%q,\"choices\":[{%s\"delta\":{\"content\":%q}}]%s}\n\n",
				id, index(c), text.String(), usage(choices*(counted-start)))
		}
		sent = max(sent, upTo)
	}
	for i := start; i < end; i += per {
		if cut > 0 && i >= cut {
			drop()
			return
		}
		send(min(i+per, end)-hold, min(i+per, end))
		fl.Flush()
		d := f.delay
		if d == 0 {
			d = 2 * time.Millisecond
		}
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	if sent < end {
		send(end, end)
	}
	cutFinish := int(f.cutAtFinish.Swap(0))
	for c := 0; c < choices; c++ {
		if cutFinish > 0 && c >= cutFinish {
			drop()
			return
		}
		fmt.Fprintf(w, "data: {\"id\":%q,\"choices\":[{%s\"delta\":{},\"finish_reason\":%q}]%s}\n\n",
			id, index(c), finish, usage(choices*(end-start)))
	}
	if usageAtEnd {
		fmt.Fprintf(w, "data: {\"id\":%q,\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":%d,\"total_tokens\":%d}}\n\n",
			id, choices*(end-start), choices*(end-start)+3)
	}
	fmt.Fprintf(w, "data: [DONE]\n\n")
	fl.Flush()
}

func newTestGateway(t *testing.T, backends map[string]*fakeBackend, pools map[string]string, balancer string,
	extra ...string) *httptest.Server {
	t.Helper()
	srv, _ := startTestGateway(t, backends, pools, balancer, extra...)
	return srv
}

// startTestGateway is newTestGateway, also handing out the gateway.
func startTestGateway(t *testing.T, backends map[string]*fakeBackend, pools map[string]string, balancer string,
	extra ...string) (*httptest.Server, *gateway) {
	t.Helper()
	handlers := make(map[string]http.Handler, len(backends))
	for id, fb := range backends {
		handlers[id] = fb
	}
	return startRawGateway(t, handlers, pools, append([]string{"-balancer", balancer}, extra...)...)
}

// startRawGateway starts a gateway over the backends spot-a, spot-b and od-1
// (those of them in backends), any handler as a backend.
func startRawGateway(t *testing.T, backends map[string]http.Handler, pools map[string]string,
	extra ...string) (*httptest.Server, *gateway) {
	t.Helper()
	dir := t.TempDir()
	var list []map[string]any
	for _, id := range []string{"spot-a", "spot-b", "od-1"} {
		h, ok := backends[id]
		if !ok {
			continue
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		b := map[string]any{"id": id, "url": srv.URL, "pool": pools[id],
			"zone": "z-" + id, "instance_type": "g5.xlarge", "usd_per_hour": 1.0}
		// pools["<id>.<field>"] sets a field of the entry ("metadata":
		// metadata_url), to a list of strings if it is one in JSON.
		for k, v := range pools {
			if f, ok := strings.CutPrefix(k, id+"."); ok {
				if f == "metadata" {
					f = "metadata_url"
				}
				var list []string // a JSON list: a list field (models)
				if json.Unmarshal([]byte(v), &list) == nil {
					b[f] = list
				} else {
					b[f] = v
				}
			}
		}
		list = append(list, b)
	}
	raw, _ := json.Marshal(list)
	path := filepath.Join(dir, "backends.json")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := parseFlags(append([]string{"-backends", path, "-replay-wait", "5s"}, extra...))
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
	return srv, g
}

// postChat posts body to the gateway's chat completions endpoint at url; a
// transport error fails the test.
func postChat(t *testing.T, url, body string) *http.Response {
	t.Helper()
	resp, err := http.Post(url+"/v1/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// wantRetryAfter reads and closes resp, and fails the test unless it has
// the status and a Retry-After header.
func wantRetryAfter(t *testing.T, resp *http.Response, status int) {
	t.Helper()
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != status || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
}

// readStream returns the streamed text and whether [DONE] arrived.
func readStream(t *testing.T, resp *http.Response) (string, bool, int) {
	text, done, roles, ids, _ := readStreamAll(t, resp)
	if len(ids) > 1 {
		t.Errorf("the stream changed its id: %v", ids)
	}
	return text, done, roles
}

// readStreamAll also returns the distinct event ids and the usage chunk's
// completion tokens (-1 without one).
func readStreamAll(t *testing.T, resp *http.Response) (string, bool, int, []string, int) {
	t.Helper()
	defer resp.Body.Close()
	var text strings.Builder
	done, roles, usage := false, 0, -1
	var ids []string
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
		if err := decodeEvent([]byte(data), &ev); err != nil {
			t.Fatalf("bad event %q", data)
		}
		if strings.Contains(data, `"error"`) {
			t.Fatalf("error event: %s", data)
		}
		if len(ev.Choices) > 0 && ev.Choices[0].Delta.Role != "" {
			roles++
		}
		if ev.ID != "" && (len(ids) == 0 || ids[len(ids)-1] != ev.ID) {
			ids = append(ids, ev.ID)
		}
		if ev.Usage != nil {
			usage = int(ev.Usage.CompletionTokens)
		}
		text.WriteString(ev.content())
	}
	return text.String(), done, roles, ids, usage
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

// withUsage is silverStream asking for a usage chunk at the end.
var withUsage = strings.Replace(silverStream, `"stream":true,`,
	`"stream":true,"stream_options":{"include_usage":true},`, 1)

func TestStreamPassesThroughAndBadBodyIs400(t *testing.T) {
	fb := &fakeBackend{n: 30}
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": fb},
		map[string]string{"spot-a": "spot"}, "spotinfer")
	resp := postChat(t, srv.URL, silverStream)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if text, done, _ := readStream(t, resp); text != want(30) || !done {
		t.Fatalf("got %q done=%v", text, done)
	}
	resp = postChat(t, srv.URL, `{"model":"m","messages":[{"role":"user","content":1}]}`)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(b), "messages[0].content") {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	resp, err := http.Get(srv.URL + "/metrics")
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
	resp := postChat(t, srv.URL, withUsage)
	text, done, roles, ids, usage := readStreamAll(t, resp)
	if text != want(40) || !done || roles != 1 || len(ids) != 1 || usage != 40 {
		t.Fatalf("got %q done=%v roles=%d ids=%v usage=%d", text, done, roles, ids, usage)
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
		resp := postChat(t, srv.URL, silverStream)
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

// fakeIMDS is an AWS instance metadata service that only answers IMDSv2:
// a token from PUT /latest/api/token, then GETs carrying it (401 without).
type fakeIMDS struct {
	notice    atomic.Bool
	deadline  time.Time
	tokens    atomic.Int32
	unauthGet atomic.Int32
}

func (m *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		if r.Header.Get("X-aws-ec2-metadata-token-ttl-seconds") == "" {
			http.Error(w, "ttl header required", 400)
			return
		}
		m.tokens.Add(1)
		io.WriteString(w, "tok-1")
	case r.Header.Get("X-aws-ec2-metadata-token") != "tok-1":
		m.unauthGet.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
	case r.URL.Path == "/latest/meta-data/spot/instance-action" && m.notice.Load():
		fmt.Fprintf(w, `{"action":"terminate","time":%q}`, m.deadline.UTC().Format(time.RFC3339))
	default:
		http.NotFound(w, r)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A notice for the spot backend's machine, read from its IMDS with the
// token flow: the open stream there is cut and resumed on on-demand with
// the same text, and no new request goes to the noticed backend.
func TestNoticeCutsStreamAndResumesOnDemand(t *testing.T) {
	a, od := &fakeBackend{n: 300, delay: 5 * time.Millisecond}, &fakeBackend{n: 300, delay: time.Millisecond}
	imds := &fakeIMDS{deadline: time.Now().Add(time.Second)}
	meta := httptest.NewServer(imds)
	defer meta.Close()
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "spot-a.metadata": meta.URL, "od-1": "on_demand"},
		"spotinfer", "-notice-interval", "20ms")
	done := make(chan string)
	go func() {
		resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(silverStream))
		if err != nil {
			done <- err.Error()
			return
		}
		text, ok, roles := readStream(t, resp)
		if !ok || roles != 1 {
			text += fmt.Sprintf(" (done=%v roles=%d)", ok, roles)
		}
		done <- text
	}()
	time.Sleep(200 * time.Millisecond) // about 40 words streamed from spot-a
	imds.notice.Store(true)
	if text := <-done; text != want(300) {
		t.Fatalf("got %q", text)
	}
	a.mu.Lock()
	onA := len(a.bodies)
	a.mu.Unlock()
	od.mu.Lock()
	conts := 0
	for _, b := range od.bodies {
		if b["continue_final_message"] == true {
			conts++
		}
	}
	od.mu.Unlock()
	if onA != 1 || conts != 1 {
		t.Fatalf("spot-a got %d requests, od-1 %d continuations", onA, conts)
	}
	// New work avoids the noticed machine.
	resp := postChat(t, srv.URL, silverStream)
	if text, ok, _ := readStream(t, resp); text != want(300) || !ok {
		t.Fatalf("after the notice: %q", text)
	}
	if len(a.bodies) != 1 {
		t.Fatalf("spot-a got a request after the notice")
	}
	if imds.tokens.Load() < 1 || imds.unauthGet.Load() != 0 {
		t.Fatalf("IMDSv2: %d tokens taken, %d GETs without one", imds.tokens.Load(), imds.unauthGet.Load())
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`spotinfer_node_transitions_total{from="active",to="noticed"} 1`,
		"gateway_notices_total 1", `gateway_replays_total{step="resumed"} 1`,
		`gateway_replay_queue{state="ready"} 0`, `gateway_replay_queue{state="leased"} 0`,
		"gateway_replay_journal_repaired_records_total 0"} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// With its only backend noticed, the gateway answers 503 with Retry-After.
func TestNoCapacityIs503(t *testing.T) {
	imds := &fakeIMDS{deadline: time.Now().Add(time.Minute)}
	imds.notice.Store(true)
	meta := httptest.NewServer(imds)
	defer meta.Close()
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": {n: 3}},
		map[string]string{"spot-a": "spot", "spot-a.metadata": meta.URL}, "spotinfer",
		"-notice-interval", "20ms")
	for i := 0; ; i++ {
		if strings.Contains(get(t, srv.URL+"/metrics"), "gateway_notices_total 1") {
			break
		}
		if i > 200 {
			t.Fatal("the notice was not handed in")
		}
		time.Sleep(10 * time.Millisecond)
	}
	resp := postChat(t, srv.URL, silverStream)
	wantRetryAfter(t, resp, 503)
}

// A backend whose /metrics reports a nearly full KV cache makes the library
// shed silver work: 429 with Retry-After.
func TestShedIs429(t *testing.T) {
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": {n: 3, kv: "0.9"}},
		map[string]string{"spot-a": "spot"}, "spotinfer")
	resp := postChat(t, srv.URL, bronzeStream)
	wantRetryAfter(t, resp, 429)
}

// A notice that comes while the request still waits for its first byte
// (the backend is prefilling) routes it again, away from the machine.
func TestNoticeBeforeFirstByteRoutesAgain(t *testing.T) {
	a, od := &fakeBackend{n: 20, ttft: 5 * time.Second}, &fakeBackend{n: 20}
	imds := &fakeIMDS{deadline: time.Now().Add(time.Second)}
	meta := httptest.NewServer(imds)
	defer meta.Close()
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "spot-a.metadata": meta.URL, "od-1": "on_demand"},
		"spotinfer", "-notice-interval", "20ms")
	go func() {
		time.Sleep(150 * time.Millisecond)
		imds.notice.Store(true)
	}()
	start := time.Now()
	resp := postChat(t, srv.URL, silverStream)
	if text, ok, _ := readStream(t, resp); text != want(20) || !ok {
		t.Fatalf("got %q", text)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("took %v: it waited for the noticed backend", took)
	}
	a.mu.Lock()
	onA := len(a.bodies)
	a.mu.Unlock()
	od.mu.Lock()
	onOD := len(od.bodies)
	fresh := onOD == 1 && od.bodies[0]["continue_final_message"] == nil
	od.mu.Unlock()
	if onA != 1 || !fresh {
		t.Fatalf("spot-a got %d, od-1 %d (a fresh request: %v)", onA, onOD, fresh)
	}
	if m := get(t, srv.URL+"/metrics"); !strings.Contains(m, "gateway_rerouted_total 1") {
		t.Errorf("/metrics: no reroute counted")
	}
}

// routeEvents reads the route events of the gateway's -events file.
func routeEvents(t *testing.T, path string) []map[string]any {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if e["event"] == "route" {
			out = append(out, e)
		}
	}
	return out
}

// replicaStatus is the library's view of one replica.
func replicaStatus(t *testing.T, g *gateway, id string) spotinfer.ReplicaStatus {
	t.Helper()
	s, err := g.eng.ReplicaStatusOf(id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// wantTries checks the route events: one a try, on these replicas in this
// order, each with a ticket of its own.
func wantTries(t *testing.T, events []map[string]any, replicas ...string) {
	t.Helper()
	seen := map[float64]bool{}
	var got []string
	for _, e := range events {
		got = append(got, e["replica"].(string))
		id, _ := e["ticket"].(float64)
		if id == 0 || seen[id] {
			t.Errorf("a try without a ticket of its own: %v", e)
		}
		seen[id] = true
	}
	if strings.Join(got, " ") != strings.Join(replicas, " ") {
		t.Fatalf("tries on %v, want %v", got, replicas)
	}
}

// A 5xx before the first byte routes the request again without the replica
// that failed: the next try has a ticket, so the library counts its load
// while it runs, and the failed one ends as ERROR.
func TestFailedTryIsRoutedAgainWithATicket(t *testing.T) {
	a, od := &fakeBackend{n: 10}, &fakeBackend{n: 10, ttft: 400 * time.Millisecond}
	a.fail.Store(1)
	events := filepath.Join(t.TempDir(), "events.jsonl")
	srv, g := startTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer", "-events", events)
	type answer struct {
		resp *http.Response
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(silverStream))
		done <- answer{resp, err}
	}()
	// od-1 holds the request before its first byte: its ticket is open.
	for i := 0; replicaStatus(t, g, "od-1").Inflight != 1; i++ {
		if i > 300 {
			t.Fatal("od-1 has no open ticket while it serves the second try")
		}
		time.Sleep(time.Millisecond)
	}
	if s := replicaStatus(t, g, "spot-a"); s.Inflight != 0 || s.ConsecutiveErrors != 1 {
		t.Errorf("spot-a: %d in flight, %d consecutive errors", s.Inflight, s.ConsecutiveErrors)
	}
	got := <-done
	if got.err != nil {
		t.Fatal(got.err)
	}
	if text, ok, _ := readStream(t, got.resp); text != want(10) || !ok {
		t.Fatalf("got %q", text)
	}
	if a.fail.Load() != 0 || len(od.bodies) != 1 {
		t.Fatalf("spot-a failures left %d, od-1 got %d", a.fail.Load(), len(od.bodies))
	}
	if s := replicaStatus(t, g, "od-1"); s.Inflight != 0 || s.ConsecutiveErrors != 0 {
		t.Errorf("od-1: %d in flight, %d consecutive errors", s.Inflight, s.ConsecutiveErrors)
	}
	wantTries(t, routeEvents(t, events), "spot-a", "od-1")
	if m := get(t, srv.URL+"/metrics"); !strings.Contains(m, "gateway_fallbacks_total 1") {
		t.Errorf("/metrics: no fallback counted")
	}
}

// A second failure routes the request a third time with both failed
// replicas excluded.
func TestSecondFailureExcludesBoth(t *testing.T) {
	a, b, od := &fakeBackend{n: 10}, &fakeBackend{n: 10}, &fakeBackend{n: 10}
	a.fail.Store(2)
	b.fail.Store(2)
	events := filepath.Join(t.TempDir(), "events.jsonl")
	srv, g := startTestGateway(t, map[string]*fakeBackend{"spot-a": a, "spot-b": b, "od-1": od},
		map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand"}, "spotinfer",
		"-events", events)
	resp := postChat(t, srv.URL, silverStream)
	if text, ok, _ := readStream(t, resp); text != want(10) || !ok {
		t.Fatalf("got %q", text)
	}
	// Each spot backend was tried once.
	if a.fail.Load() != 1 || b.fail.Load() != 1 || len(od.bodies) != 1 {
		t.Fatalf("failures left: spot-a %d, spot-b %d; od-1 got %d", a.fail.Load(), b.fail.Load(), len(od.bodies))
	}
	tries := routeEvents(t, events)
	if len(tries) == 3 && tries[0]["replica"] == "spot-b" {
		wantTries(t, tries, "spot-b", "spot-a", "od-1")
	} else {
		wantTries(t, tries, "spot-a", "spot-b", "od-1")
	}
	for _, id := range []string{"spot-a", "spot-b"} {
		if s := replicaStatus(t, g, id); s.Inflight != 0 || s.ConsecutiveErrors != 1 {
			t.Errorf("%s: %d in flight, %d consecutive errors", id, s.Inflight, s.ConsecutiveErrors)
		}
	}
	if m := get(t, srv.URL+"/metrics"); !strings.Contains(m, "gateway_fallbacks_total 2") {
		t.Errorf("/metrics: not 2 fallbacks counted")
	}
}

// When every try fails the client gets 502 with the last try's error, and
// every try's ticket has ended as ERROR.
func TestEveryTryFailedIs502(t *testing.T) {
	backends := map[string]*fakeBackend{"spot-a": {n: 10}, "spot-b": {n: 10}, "od-1": {n: 10}}
	for _, fb := range backends {
		fb.fail.Store(1)
	}
	srv, g := startTestGateway(t, backends,
		map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand"}, "spotinfer")
	resp := postChat(t, srv.URL, silverStream)
	var body struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || body.Error.Type != "upstream_error" ||
		!strings.Contains(body.Error.Message, "answered 500: engine dead") {
		t.Fatalf("status %d: %+v", resp.StatusCode, body)
	}
	for id, fb := range backends {
		if fb.fail.Load() != 0 {
			t.Errorf("%s was not tried", id)
		}
		if s := replicaStatus(t, g, id); s.Inflight != 0 || s.ConsecutiveErrors != 1 {
			t.Errorf("%s: %d in flight, %d consecutive errors", id, s.Inflight, s.ConsecutiveErrors)
		}
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="failed"} 1`, "gateway_fallbacks_total 2"} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics: no %s", s)
		}
	}
}

// bronzeStream is a batch request: spot only, queued while no spot
// replica is up.
var bronzeStream = strings.Replace(silverStream, "silver", "bronze", 1)

// spotFailsAndOtherDrains makes whichever spot backend the library picks
// first fail its request and, as it fails, the other one leave (draining,
// through *g), so that routing the request again finds no spot replica
// and queues it. The other comes back after back (never when back is 0).
func spotFailsAndOtherDrains(t *testing.T, g **gateway, back time.Duration) map[string]*fakeBackend {
	backends := map[string]*fakeBackend{"spot-a": {n: 10}, "spot-b": {n: 10}, "od-1": {n: 10}}
	var once sync.Once
	for id, other := range map[string]string{"spot-a": "spot-b", "spot-b": "spot-a"} {
		other := other
		backends[id].fail.Store(1)
		backends[id].onFail = func() {
			once.Do(func() {
				backends[other].fail.Store(0)
				if err := (*g).eng.SetReplicaState(other, spotinfer.ReplicaDraining); err != nil {
					t.Error(err)
				}
				if back > 0 {
					time.AfterFunc(back, func() { (*g).eng.SetReplicaState(other, spotinfer.ReplicaActive) })
				}
			})
		}
	}
	return backends
}

// A try that fails while no other spot replica is up leaves bronze work
// queued: it is held, as a first route is, and served by the spot replica
// that comes back, with a ticket; on-demand never gets it.
func TestQueuedRetryWaitsForSpot(t *testing.T) {
	var g *gateway
	backends := spotFailsAndOtherDrains(t, &g, 300*time.Millisecond)
	events := filepath.Join(t.TempDir(), "events.jsonl")
	srv, gw := startTestGateway(t, backends,
		map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand"}, "spotinfer",
		"-events", events, "-queue-wait", "5s")
	g = gw
	resp := postChat(t, srv.URL, bronzeStream)
	if text, ok, _ := readStream(t, resp); text != want(10) || !ok {
		t.Fatalf("got %q", text)
	}
	tries := routeEvents(t, events)
	if len(tries) != 2 {
		t.Fatalf("%d route events, want 2: %v", len(tries), tries)
	}
	wantTries(t, tries, tries[0]["replica"].(string), tries[1]["replica"].(string))
	if tries[0]["replica"] == tries[1]["replica"] || len(backends["od-1"].bodies) != 0 {
		t.Fatalf("tries %v; od-1 got %d", tries, len(backends["od-1"].bodies))
	}
	for id := range backends {
		if s := replicaStatus(t, g, id); s.Inflight != 0 {
			t.Errorf("%s: %d in flight", id, s.Inflight)
		}
	}
}

// When no spot replica comes back within -queue-wait, the client gets the
// failed try's 502, and nothing is left in flight.
func TestQueuedRetryGivesUpAfterTheQueueWait(t *testing.T) {
	var g *gateway
	backends := spotFailsAndOtherDrains(t, &g, 0)
	srv, gw := startTestGateway(t, backends,
		map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand"}, "spotinfer",
		"-queue-wait", "200ms")
	g = gw
	t0 := time.Now()
	resp := postChat(t, srv.URL, bronzeStream)
	var body struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body.Error.Message, "answered 500") {
		t.Fatalf("status %d: %+v", resp.StatusCode, body)
	}
	if waited := time.Since(t0); waited < 200*time.Millisecond {
		t.Errorf("answered after %v, before the queue wait ran out", waited)
	}
	for id := range backends {
		if s := replicaStatus(t, g, id); s.Inflight != 0 {
			t.Errorf("%s: %d in flight", id, s.Inflight)
		}
	}
}

// A retry whose route finds every ticket open (router.max_tickets) is
// overload, as a first route finding it is: 503 with Retry-After, counted
// as overloaded, not a 502 with the failed try's error. Here the retry is
// held queued (bronze, its spot replicas tried or draining) while the
// test takes every ticket, then a spot replica comes back.
func TestRetryFindingEveryTicketOpenIs503(t *testing.T) {
	var g *gateway
	backends := spotFailsAndOtherDrains(t, &g, 0)
	var failed atomic.Bool
	for _, id := range []string{"spot-a", "spot-b"} {
		onFail := backends[id].onFail
		backends[id].onFail = func() { onFail(); failed.Store(true) }
	}
	srv, gw := startTestGateway(t, backends,
		map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand"}, "spotinfer",
		"-config", ticketsConfig(t), "-queue-wait", "5s")
	g = gw
	answer := make(chan *http.Response, 1)
	go func() {
		resp, err := http.Post(srv.URL+"/v1/chat/completions", "application/json", strings.NewReader(bronzeStream))
		if err != nil {
			t.Error(err)
		}
		answer <- resp
	}()
	// The failed try's ticket has ended: the retry is held without one.
	if !waitFor(3*time.Second, func() bool {
		inflight := uint32(0)
		for id := range backends {
			inflight += replicaStatus(t, g, id).Inflight
		}
		return failed.Load() && inflight == 0
	}) {
		t.Fatal("the first try did not fail")
	}
	var held []spotinfer.Ticket
	defer func() {
		for _, tk := range held {
			g.finish(tk, spotinfer.TicketResult{Status: spotinfer.TicketOK})
		}
	}()
	for i := 0; i < 32; i++ {
		req, err := g.eng.ParseOpenAI([]byte(silverStream), spotinfer.OpenAIChat)
		if err != nil {
			t.Fatal(err)
		}
		d, err := req.Route()
		req.Close()
		if errors.Is(err, spotinfer.ErrFull) {
			break
		}
		if err != nil {
			t.Fatalf("route %d: %v", i, err)
		}
		held = append(held, d.Ticket)
	}
	if len(held) != 16 {
		t.Fatalf("took %d tickets, want all 16", len(held))
	}
	for _, id := range []string{"spot-a", "spot-b"} {
		if err := g.eng.SetReplicaState(id, spotinfer.ReplicaActive); err != nil {
			t.Fatal(err)
		}
	}
	var resp *http.Response
	select {
	case resp = <-answer:
	case <-time.After(5 * time.Second):
		t.Fatal("no answer")
	}
	if resp == nil {
		return
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(string(b), "overloaded") {
		t.Fatalf("status %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="overloaded"} 1`, `gateway_requests_total{outcome="failed"} 0`} {
		if !strings.Contains(m, s) {
			t.Errorf("/metrics lacks %s", s)
		}
	}
}

// Each failed try counts toward its replica's error breaker: with a
// threshold of 1, both spot backends that failed a request are open, and
// the next request goes straight to od-1.
func TestFailedTriesOpenTheBreaker(t *testing.T) {
	a, b, od := &fakeBackend{n: 10}, &fakeBackend{n: 10}, &fakeBackend{n: 10}
	a.fail.Store(1)
	b.fail.Store(1)
	config := filepath.Join(t.TempDir(), "spotinfer.json")
	if err := os.WriteFile(config, []byte(`{"router":{"error_threshold":1}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	srv, g := startTestGateway(t, map[string]*fakeBackend{"spot-a": a, "spot-b": b, "od-1": od},
		map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand"}, "spotinfer",
		"-config", config)
	for i := 0; i < 2; i++ {
		resp := postChat(t, srv.URL, silverStream)
		if text, ok, _ := readStream(t, resp); text != want(10) || !ok {
			t.Fatalf("request %d: got %q", i, text)
		}
	}
	for _, id := range []string{"spot-a", "spot-b"} {
		if s := replicaStatus(t, g, id); s.Breaker != spotinfer.BreakerOpen {
			t.Errorf("%s: breaker %v, want open", id, s.Breaker)
		}
	}
	if s := replicaStatus(t, g, "od-1"); s.Breaker != spotinfer.BreakerClosed {
		t.Errorf("od-1: breaker %v, want closed", s.Breaker)
	}
	if len(a.bodies) != 0 || len(b.bodies) != 0 || len(od.bodies) != 2 {
		t.Fatalf("spot-a served %d, spot-b %d, od-1 %d", len(a.bodies), len(b.bodies), len(od.bodies))
	}
}

// The same with the replay queue in a journal on disk.
func TestCutStreamIsResumedFromAJournal(t *testing.T) {
	a, od := &fakeBackend{n: 40}, &fakeBackend{n: 40}
	a.cutAfter.Store(7)
	dir := t.TempDir()
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer",
		"-replay", `{"store":"journal","dir":"`+dir+`","fsync":"always"}`)
	resp := postChat(t, srv.URL, silverStream)
	if text, done, roles := readStream(t, resp); text != want(40) || !done || roles != 1 {
		t.Fatalf("got %q done=%v roles=%d", text, done, roles)
	}
	if files, _ := os.ReadDir(dir); len(files) == 0 {
		t.Fatal("nothing written to the journal directory")
	}
}

// A client that goes away mid-stream is not replayed: its ticket ends
// cancelled and nothing enters the replay queue.
func TestClientGoneIsNotReplayed(t *testing.T) {
	a := &fakeBackend{n: 500, delay: 5 * time.Millisecond}
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a},
		map[string]string{"spot-a": "spot"}, "spotinfer")
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions",
		strings.NewReader(silverStream))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	if _, err := resp.Body.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	for i := 0; ; i++ {
		m := get(t, srv.URL+"/metrics")
		if strings.Contains(m, `gateway_requests_total{outcome="cancelled"} 1`) {
			if !strings.Contains(m, `gateway_replays_total{step="enqueued"} 0`) {
				t.Fatalf("a gone client was replayed:\n%s", m)
			}
			break
		}
		if i > 300 {
			t.Fatalf("the cancellation was not counted:\n%s", m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A body with constrained decoding is replayed from scratch: the gateway
// skips the text the client already has, so it still gets it once.
func TestFromScratchReplaySkipsWhatTheClientHas(t *testing.T) {
	a, od := &fakeBackend{n: 40}, &fakeBackend{n: 40}
	a.cutAfter.Store(9)
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer")
	body := strings.Replace(silverStream, `"stream":true,`, `"stream":true,"response_format":{"type":"json_object"},`, 1)
	resp := postChat(t, srv.URL, body)
	text, done, roles, ids, _ := readStreamAll(t, resp)
	if text != want(40) || !done || roles != 1 || len(ids) != 1 {
		t.Fatalf("got %q done=%v roles=%d ids=%v", text, done, roles, ids)
	}
	n := 0
	for _, fb := range []*fakeBackend{a, od} {
		fb.mu.Lock()
		for _, b := range fb.bodies {
			if b["continue_final_message"] == true {
				t.Errorf("a constrained body was continued: %v", b)
			}
			n++
		}
		fb.mu.Unlock()
	}
	if n != 2 {
		t.Fatalf("%d requests reached the backends, want 2", n)
	}
}

// continuations returns the continue_final_message bodies the backends got.
func continuations(backends ...*fakeBackend) []map[string]any {
	var out []map[string]any
	for _, fb := range backends {
		fb.mu.Lock()
		for _, b := range fb.bodies {
			if b["continue_final_message"] == true {
				out = append(out, b)
			}
		}
		fb.mu.Unlock()
	}
	return out
}

// A backend may put several tokens in one event (vLLM with a stream
// interval, or speculative decoding). The stream offset is the tokens the
// client has, not the events it got: the continuation asks for what is
// left of max_tokens, the usage counts every token once, and the cut leg's
// ticket reports the tokens it streamed. Whether the backend sends its
// running count (continuous_usage_stats) or the gateway counts the text,
// and whether the 30 tokens are the client's max_tokens or the decision's
// cap (a degrade plan). A from-scratch replay writes the whole answer
// again, so it gets the whole of both.
func TestStreamOffsetCountsTokensNotEvents(t *testing.T) {
	capped := filepath.Join(t.TempDir(), "capped.json")
	level := `{"max_output_tokens":30}`
	err := os.WriteFile(capped, []byte(`{"classifier":{"degrade":{"silver":[`+
		strings.Repeat(level+",", 3)+level+`]}}}`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name        string
		running     bool // the backends send their running count
		fromScratch bool // a constrained body: replayed from the start
		capped      bool // the decision caps the answer, not max_tokens
	}{
		{"backend count", true, false, false}, {"estimate", false, false, false},
		{"from scratch", true, true, false},
		{"decision's cap", true, false, true}, {"decision's cap from scratch", true, true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := &fakeBackend{n: 40, perEvent: 3, noRunningUsage: !c.running}
			od := &fakeBackend{n: 40, perEvent: 5, noRunningUsage: !c.running}
			a.cutAfter.Store(12) // after 4 events of 3
			var extra []string
			body := strings.Replace(withUsage, `"stream":true,`, `"stream":true,"max_tokens":30,`, 1)
			if c.capped {
				extra, body = []string{"-config", capped}, withUsage
			}
			srv, g := startTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
				map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer", extra...)
			// 12 tokens cut off, then the 18 left, or all 30 again.
			wantOut, wantUsage := uint64(30), 30
			if c.fromScratch {
				body = strings.Replace(body, `"stream":true,`, `"stream":true,"response_format":{"type":"json_object"},`, 1)
				wantOut = 42
			}
			resp := postChat(t, srv.URL, body)
			text, done, roles, ids, usage := readStreamAll(t, resp)
			if text != want(30) || !done || roles != 1 || len(ids) != 1 || usage != wantUsage {
				t.Fatalf("got %q done=%v roles=%d ids=%v usage=%d", text, done, roles, ids, usage)
			}
			conts := continuations(a, od)
			if !c.fromScratch && (len(conts) != 1 || conts[0]["max_tokens"] != 18.0) {
				t.Fatalf("continuations sent: %v", conts)
			}
			if c.fromScratch {
				a.mu.Lock()
				od.mu.Lock()
				sent := append(append([]map[string]any{}, a.bodies...), od.bodies...)
				od.mu.Unlock()
				a.mu.Unlock()
				if len(sent) != 2 || len(conts) != 0 || sent[1]["max_tokens"] != 30.0 {
					t.Fatalf("sent %v, want the body again with max_tokens 30", sent)
				}
			}
			var out, wasted uint64
			for i := 0; ; i++ {
				rows, err := g.eng.Ledger()
				if err != nil {
					t.Fatal(err)
				}
				out, wasted = 0, 0
				for _, r := range rows {
					out += r.OutputTokens
					wasted += r.WastedOutputTokens
				}
				if out >= wantOut || i > 200 {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if out != wantOut || wasted != 12 {
				t.Fatalf("ledger: %d output tokens, %d wasted; want %d and 12", out, wasted, wantOut)
			}
		})
	}
}

// usagePerEvent reads a stream and returns, for each event carrying usage,
// its completion tokens, negated for a usage chunk without choices.
func usagePerEvent(t *testing.T, resp *http.Response) (string, []int) {
	t.Helper()
	defer resp.Body.Close()
	var text strings.Builder
	var counts []int
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var ev event
		if err := decodeEvent([]byte(data), &ev); err != nil {
			t.Fatalf("bad event %q", data)
		}
		text.WriteString(ev.content())
		if ev.Usage != nil {
			n := int(ev.Usage.CompletionTokens)
			if len(ev.Choices) == 0 {
				n = -n
			}
			counts = append(counts, n)
		}
	}
	return text.String(), counts
}

// The gateway asks the backend for its running count and gives the client
// the usage it asked for: none, the chunk at the end, or the running count
// too, read as vLLM reads stream_options (an object asks for the chunk
// unless include_usage is false) and with its key written any way JSON
// allows; -backend-usage=false sends the body as it came, and the client
// gets the same.
func TestUsageAsTheClientAskedIt(t *testing.T) {
	options := func(o string) string {
		return strings.Replace(silverStream, `"stream":true,`, `"stream":true,`+o+`,`, 1)
	}
	running := options(`"stream_options":{"include_usage":true,"continuous_usage_stats":true}`)
	empty := options(`"stream_options":{}`)
	runningOnly := options(`"stream_options":{"continuous_usage_stats":true}`)
	escaped := options(`"stream_option\u0073":{"include_usage":true}`)
	for _, c := range []struct {
		flag, body string
		want       string // usage per event, as usagePerEvent gives it
		toBackend  string // the stream_options the backend got
	}{
		{"true", silverStream, "[]", "map[continuous_usage_stats:true include_usage:true]"},
		{"true", withUsage, "[-10]", "map[continuous_usage_stats:true include_usage:true]"},
		{"true", running, "[0 3 6 9 10 10 -10]", "map[continuous_usage_stats:true include_usage:true]"},
		{"true", empty, "[-10]", "map[continuous_usage_stats:true include_usage:true]"},
		{"true", runningOnly, "[0 3 6 9 10 10 -10]", "map[continuous_usage_stats:true]"},
		{"true", escaped, "[-10]", "map[continuous_usage_stats:true include_usage:true]"},
		{"false", silverStream, "[]", "map[]"},
		{"false", withUsage, "[-10]", "map[include_usage:true]"},
		{"false", empty, "[-10]", "map[]"},
		{"false", runningOnly, "[0 3 6 9 10 10 -10]", "map[continuous_usage_stats:true]"},
		{"false", escaped, "[-10]", "map[include_usage:true]"},
	} {
		fb := &fakeBackend{n: 10, perEvent: 3}
		srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": fb},
			map[string]string{"spot-a": "spot"}, "spotinfer", "-backend-usage="+c.flag)
		text, counts := usagePerEvent(t, postChat(t, srv.URL, c.body))
		fb.mu.Lock()
		opts, _ := fb.bodies[0]["stream_options"].(map[string]any)
		fb.mu.Unlock()
		if text != want(10) || fmt.Sprint(counts) != c.want || fmt.Sprint(opts) != c.toBackend {
			t.Errorf("-backend-usage=%s %s: text %q, usage %v (want %s), the backend got %v",
				c.flag, c.body, text, counts, c.want, opts)
		}
	}
}

// streamData returns the data of each event of a stream.
func streamData(t *testing.T, resp *http.Response) []string {
	t.Helper()
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			out = append(out, data)
		}
	}
	return out
}

// A stream of several choices (n > 1, or events with a choice index
// other than 0) is not continued after a cut: a checkpoint holds one text
// and one offset, and a continuation would write every choice after the
// choices' words run together. It ends as a stream with reasoning deltas
// does: an error event, no [DONE], the request failed, nothing replayed.
// A cut after one choice's finish_reason but before another's does not
// end it as complete either.
func TestSeveralChoicesAreNotContinued(t *testing.T) {
	for _, c := range []struct {
		name             string
		n, forced, atEnd int
	}{
		{"n=2", 2, 0, 0}, {"index 1 without n", 0, 2, 0}, {"one choice finished", 2, 0, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, od := &fakeBackend{n: 40, choices: c.forced}, &fakeBackend{n: 40}
			if c.atEnd > 0 {
				a.cutAtFinish.Store(int32(c.atEnd))
			} else {
				a.cutAfter.Store(13)
			}
			srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
				map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer")
			body := withUsage
			if c.n > 0 {
				body = strings.Replace(body, `"stream":true,`, fmt.Sprintf(`"stream":true,"n":%d,`, c.n), 1)
			}
			events := streamData(t, postChat(t, srv.URL, body))
			last := ""
			if len(events) > 0 {
				last = events[len(events)-1]
			}
			if !strings.Contains(last, `"error"`) || !strings.Contains(last, "several choices") {
				t.Fatalf("the stream ended with %q", last)
			}
			for _, e := range events {
				if e == "[DONE]" {
					t.Fatalf("[DONE] sent: %v", events)
				}
			}
			a.mu.Lock()
			od.mu.Lock()
			sent := len(a.bodies) + len(od.bodies)
			od.mu.Unlock()
			a.mu.Unlock()
			if sent != 1 {
				t.Fatalf("%d requests reached the backends, want 1", sent)
			}
			m := get(t, srv.URL+"/metrics")
			for _, s := range []string{`gateway_requests_total{outcome="failed"} 1`,
				`gateway_requests_total{outcome="ok"} 0`, `gateway_replays_total{step="enqueued"} 0`} {
				if !strings.Contains(m, s) {
					t.Errorf("/metrics lacks %s", s)
				}
			}
		})
	}
}

// With stop strings, vLLM holds back the text that may start one while its
// running count counts its tokens: the count runs ahead of what the client
// has. The stream offset is what the client has, so the continuation asks
// for all that is left of max_tokens and the client gets it: here cut
// after 13 tokens with the last 3 held back, it continues after 10 and
// asks for 20.
func TestStopStringsHoldBackText(t *testing.T) {
	a, od := &fakeBackend{n: 40, stopHold: 3}, &fakeBackend{n: 40, stopHold: 3}
	a.cutAfter.Store(13)
	srv := newTestGateway(t, map[string]*fakeBackend{"spot-a": a, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "spotinfer")
	body := strings.Replace(withUsage, `"stream":true,`, `"stream":true,"max_tokens":30,"stop":["####"],`, 1)
	text, done, roles, ids, usage := readStreamAll(t, postChat(t, srv.URL, body))
	if text != want(30) || !done || roles != 1 || len(ids) != 1 || usage != 30 {
		t.Fatalf("got %q done=%v roles=%d ids=%v usage=%d", text, done, roles, ids, usage)
	}
	if conts := continuations(a, od); len(conts) != 1 || conts[0]["max_tokens"] != 20.0 {
		t.Fatalf("continuations sent: %v", conts)
	}
}
