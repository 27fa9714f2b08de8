package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// textThenStall answers its first completion with the words w0 .. w(n-1)
// in events without a role chunk, then sends nothing more and holds the
// connection open (a backend whose engine hung mid-answer) until the
// gateway closes it or release is closed; the next completions are
// next's.
func textThenStall(n int, release <-chan struct{}, next http.Handler) http.Handler {
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
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
}

// stallOutcome is what a client and the replicas' breakers saw of one
// stream whose first leg broke.
type stallOutcome struct {
	text, last    string
	timedOut      bool
	took          time.Duration
	continuations int
	errors        uint32 // consecutive errors, all replicas together
	metrics       []string
}

// breakOnce streams body through a gateway whose first leg (on spot-a, or
// on od-1 alone when onlyOD) is broken by broken(next) and whose other
// legs get 10 words, with -event-wait 300ms and the extra flags.
func breakOnce(t *testing.T, body string, onlyOD bool,
	broken func(next http.Handler) http.Handler, extra ...string) stallOutcome {
	t.Helper()
	od := &fakeBackend{n: 10}
	backends := map[string]http.Handler{"spot-a": broken(od), "od-1": od}
	pools := map[string]string{"spot-a": "spot", "od-1": "on_demand"}
	if onlyOD {
		backends, pools = map[string]http.Handler{"od-1": broken(od)}, map[string]string{"od-1": "on_demand"}
	}
	srv, g := startRawGateway(t, backends, pools, append([]string{"-event-wait", "300ms"}, extra...)...)
	t0 := time.Now()
	evs, timedOut := postChatFor(t, srv.URL, body, 5*time.Second)
	o := stallOutcome{text: textOf(evs), last: lastEvent(evs), timedOut: timedOut, took: time.Since(t0),
		continuations: len(continuations(od))}
	for id := range backends {
		o.errors += replicaStatus(t, g, id).ConsecutiveErrors
	}
	m := get(t, srv.URL+"/metrics")
	for _, s := range []string{`gateway_requests_total{outcome="ok"} 1`, `gateway_requests_total{outcome="failed"} 1`,
		`gateway_replays_total{step="enqueued"} 1`, `gateway_replays_total{step="resumed"} 1`} {
		if strings.Contains(m, s) {
			o.metrics = append(o.metrics, s)
		}
	}
	return o
}

// silverAndGold: a replayable stream, and one that is not (gold, placed
// on on-demand replicas only).
var silverAndGold = []struct {
	name   string
	body   string
	onlyOD bool
}{{"silver", silverStream, false}, {"gold", strings.Replace(silverStream, `"silver"`, `"gold"`, 1), true}}

// stallAgainstDrop sends body once to a spot backend that answers sent
// events and then goes silent with its connection open, and once to one
// that answers as many and drops its connection, each gateway started
// with extra flags: what a stall ends as, beside what a drop does.
func stallAgainstDrop(t *testing.T, body string, onlyOD bool, sent int, extra ...string) (stalled, dropped stallOutcome) {
	t.Helper()
	release := make(chan struct{})
	stalled = breakOnce(t, body, onlyOD, func(next http.Handler) http.Handler {
		return textThenStall(sent, release, next)
	}, extra...)
	close(release)
	dropped = breakOnce(t, body, onlyOD, func(next http.Handler) http.Handler {
		return textThenDrop(sent, next)
	}, extra...)
	return stalled, dropped
}

// A backend that stalls mid-answer with its connection open is taken, once
// it has sent nothing for -event-wait, for one whose connection dropped,
// and the stream goes on as after a drop: a replayable (silver) stream is
// continued on another replica from what the client has, and one that is
// not (gold) ends with an error event naming the wait; the tickets end as
// a drop's do, so the breakers count the same.
func TestStalledStreamIsTreatedAsDropped(t *testing.T) {
	for _, c := range silverAndGold {
		stalled, dropped := stallAgainstDrop(t, c.body, c.onlyOD, 3)
		if stalled.timedOut || stalled.took > 3*time.Second {
			t.Fatalf("%s: a stalled stream was not ended: the client waited %v for %q", c.name, stalled.took, stalled.text)
		}
		if stalled.took < 300*time.Millisecond {
			t.Errorf("%s: ended after %v, before -event-wait", c.name, stalled.took)
		}
		wantText, wantLast := want(10), "[DONE]"
		if c.onlyOD {
			wantText, wantLast = want(3), "-event-wait"
		}
		if stalled.text != wantText || !strings.Contains(stalled.last, wantLast) {
			t.Errorf("%s: text %q, last event %.200s", c.name, stalled.text, stalled.last)
		}
		if stalled.continuations != dropped.continuations || stalled.errors != dropped.errors ||
			strings.Join(stalled.metrics, ",") != strings.Join(dropped.metrics, ",") {
			t.Errorf("%s: stalled %+v, dropped %+v", c.name, stalled, dropped)
		}
	}
}

// A backend that sends its response headers and then nothing at all,
// with its connection open, is taken for one whose connection dropped
// once -first-event-wait has passed, as one silent mid-answer is after
// -event-wait: the stream goes on as after a drop with no bytes (a
// replayable stream is routed again, one that is not is answered with an
// error). Its wait for the first bytes used to have no bound, and the
// client waited for as long as the backend held the connection.
func TestSilentAfterHeadersIsTreatedAsDropped(t *testing.T) {
	for _, c := range silverAndGold {
		stalled, dropped := stallAgainstDrop(t, c.body, c.onlyOD, 0, "-first-event-wait", "400ms")
		if stalled.timedOut || stalled.took > 3*time.Second {
			t.Fatalf("%s: a stream silent after its headers was not ended: the client waited %v for %q",
				c.name, stalled.took, stalled.text)
		}
		if stalled.took < 400*time.Millisecond {
			t.Errorf("%s: ended after %v, before -first-event-wait", c.name, stalled.took)
		}
		if stalled.text != dropped.text || stalled.continuations != dropped.continuations ||
			stalled.errors != dropped.errors || strings.Join(stalled.metrics, ",") != strings.Join(dropped.metrics, ",") {
			t.Errorf("%s: stalled %+v, dropped %+v", c.name, stalled, dropped)
		}
		if !c.onlyOD && (stalled.text != want(10) || stalled.last != "[DONE]") {
			t.Errorf("%s: text %q, last event %.200s", c.name, stalled.text, stalled.last)
		}
	}
}

// A replica whose leg went silent is kept out of that stream's
// continuations: a hung engine keeps its connections open and would stall
// each continuation routed back to it for -event-wait again. spot-a
// stalls every answer here; the stream is continued on od-1 after one
// wait, and spot-a is sent nothing more.
func TestStalledReplicaIsKeptOutOfTheContinuation(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	var n atomic.Int32
	a := textThenStall(3, release, nil)
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			n.Add(1)
		}
		a.ServeHTTP(w, r)
	})
	od := &fakeBackend{n: 10}
	srv, _ := startRawGateway(t, map[string]http.Handler{"spot-a": counted, "od-1": od},
		map[string]string{"spot-a": "spot", "od-1": "on_demand"}, "-event-wait", "300ms")
	t0 := time.Now()
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	took := time.Since(t0)
	if timedOut || textOf(evs) != want(10) || lastEvent(evs) != "[DONE]" {
		t.Fatalf("timed out %v after %v, text %q, last event %.200s", timedOut, took, textOf(evs), lastEvent(evs))
	}
	if n.Load() != 1 || len(continuations(od)) != 1 || took > 2*time.Second {
		t.Errorf("spot-a was sent %d requests, od-1 %d continuations, in %v (want 1, 1, one wait)",
			n.Load(), len(continuations(od)), took)
	}
}

// The yardstick (-balancer roundrobin) reads its streams within
// -event-wait too: a stalled one ends with an error event.
func TestRoundRobinEndsAStalledStream(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	srv, _ := startRawGateway(t, map[string]http.Handler{"od-1": textThenStall(3, release, nil)},
		map[string]string{"od-1": "on_demand"}, "-balancer", "roundrobin", "-event-wait", "300ms")
	evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
	if timedOut || textOf(evs) != want(3) || !strings.Contains(lastEvent(evs), "-event-wait") {
		t.Errorf("timed out %v, text %q, last event %.200s", timedOut, textOf(evs), lastEvent(evs))
	}
}

// headersThenPause sends the response headers at once, then waits d
// before next answers (a backend that queues or prefills a request after
// taking it).
func headersThenPause(d time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			// Read first: the server ends a request's body once its
			// response has begun.
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			w.Header().Set("Content-Type", "text/event-stream")
			w.WriteHeader(http.StatusOK)
			w.(http.Flusher).Flush()
			time.Sleep(d)
		}
		next.ServeHTTP(w, r)
	})
}

// -event-wait bounds the silence between a streamed answer's bytes, not
// the answer: a backend that streams for longer than the wait, with
// shorter pauses, or that takes longer than it for its first event after
// its headers, is relayed whole without a replay.
func TestEventWaitBoundsSilenceNotTheAnswer(t *testing.T) {
	slow := &fakeBackend{n: 8, delay: 100 * time.Millisecond}
	late := &fakeBackend{n: 8}
	for name, h := range map[string]http.Handler{"slow": slow, "late": headersThenPause(500*time.Millisecond, late)} {
		srv, _ := startRawGateway(t, map[string]http.Handler{"od-1": h}, map[string]string{"od-1": "on_demand"},
			"-event-wait", "300ms")
		t0 := time.Now()
		evs, timedOut := postChatFor(t, srv.URL, silverStream, 5*time.Second)
		took := time.Since(t0)
		if timedOut || textOf(evs) != want(8) || lastEvent(evs) != "[DONE]" || took < 500*time.Millisecond {
			t.Errorf("%s: timed out %v after %v, text %q, last event %.200s",
				name, timedOut, took, textOf(evs), lastEvent(evs))
		}
		if m := get(t, srv.URL+"/metrics"); !strings.Contains(m, `gateway_replays_total{step="enqueued"} 0`) {
			t.Errorf("%s: replayed", name)
		}
	}
}

// -event-wait is more than 0 and at most 1h, as -header-wait is.
func TestEventWaitFlag(t *testing.T) {
	for _, v := range []string{"0s", "-1s", "61m"} {
		if _, err := parseFlags([]string{"-backends", "b.json", "-event-wait", v}); err == nil ||
			!strings.Contains(err.Error(), "-event-wait") {
			t.Errorf("-event-wait %s: %v", v, err)
		}
	}
	o, err := parseFlags([]string{"-backends", "b.json"})
	if err != nil || o.eventWait != 60*time.Second {
		t.Errorf("default -event-wait %v (%v), want 60s", o.eventWait, err)
	}
}

// -first-event-wait is more than 0 and at most 1h too, 60s by default.
func TestFirstEventWaitFlag(t *testing.T) {
	for _, v := range []string{"0s", "-1s", "61m"} {
		if _, err := parseFlags([]string{"-backends", "b.json", "-first-event-wait", v}); err == nil ||
			!strings.Contains(err.Error(), "-first-event-wait") {
			t.Errorf("-first-event-wait %s: %v", v, err)
		}
	}
	o, err := parseFlags([]string{"-backends", "b.json"})
	if err != nil || o.firstEventWait != 60*time.Second {
		t.Errorf("default -first-event-wait %v (%v), want 60s", o.firstEventWait, err)
	}
}
