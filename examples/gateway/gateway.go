package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// dialWait bounds connecting to a backend; -header-wait bounds the wait
// for a streamed answer's response headers after that (headerwait.go).
const dialWait = 2 * time.Second

type gateway struct {
	o        options
	eng      *spotinfer.Engine // nil with -balancer roundrobin
	queue    *spotinfer.ReplayQueue
	retry    replayRetry // the queue's retry settings
	backends []*backend
	byID     map[string]*backend
	client   *http.Client
	reqs     sync.Pool // *spotinfer.Request, reused: parsing refills one
	rr       atomic.Uint64
	seq      atomic.Uint64
	ready    atomic.Bool
	started  time.Time          // the models' "created"
	stop     context.CancelFunc // ends the background work
	bg       sync.WaitGroup

	// Open streams by ticket, so a REPLAY plan can cut its backend leg,
	// and cut streams by envelope key, waiting for the replay worker.
	mu      sync.Mutex
	open    map[uint64]*stream
	waiting map[string]*stream
	wake    chan struct{} // an envelope was enqueued

	events  *eventLog
	stats   counters
	timings timings
	// Bytes held by the streams' readers for events over their buffer.
	longEvents *byteBudget
}

func newGateway(o options) (*gateway, error) {
	list, err := loadBackends(o.backendsPath)
	if err != nil {
		return nil, err
	}
	g := &gateway{o: o, backends: list, byID: map[string]*backend{}, started: time.Now(),
		open: map[uint64]*stream{}, waiting: map[string]*stream{}, wake: make(chan struct{}, 1),
		longEvents: newByteBudget(o.longEventBudget)}
	for _, b := range list {
		g.byID[b.ID] = b
	}
	// Streams have no overall timeout (answers can be long); connecting
	// does, and so does waiting for a streamed answer's headers
	// (headerWaitTransport).
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: dialWait, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	g.client = &http.Client{Transport: headerWaitTransport{tr}}
	if o.eventsPath != "" {
		f, err := os.OpenFile(o.eventsPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		g.events = &eventLog{f: f}
	}
	if o.balancer == "roundrobin" {
		g.ready.Store(true)
		return g, nil
	}
	if g.eng, err = newEngine(o.configPath, o.maxBody); err != nil {
		return nil, err
	}
	if err := register(g.eng, list); err != nil {
		g.eng.Close()
		return nil, err
	}
	if err := replayFits(g.eng, o.replayConfig, o.maxBody); err != nil {
		g.eng.Close()
		return nil, err
	}
	// The in-memory store by default: a gateway that restarts loses its
	// clients' connections anyway. A journal keeps envelopes across
	// restarts, for replays whose answers are delivered another way.
	if g.queue, err = g.eng.OpenReplayQueue(o.replayConfig); err != nil {
		g.eng.Close()
		return nil, err
	}
	g.retry = replayRetryOf(g.eng, o.replayConfig)
	g.reqs.New = func() any {
		r, err := g.eng.NewRequest()
		if err != nil {
			return nil
		}
		return r
	}
	return g, nil
}

// close stops the background work, waits for it, then frees the queue and
// the engine (which must not be closed under a running call). Requests
// must be finished first.
func (g *gateway) close() {
	if g.stop != nil {
		g.stop()
		g.bg.Wait()
	}
	if g.queue != nil {
		g.queue.Close()
	}
	if g.eng != nil {
		g.eng.Close()
	}
	if g.events != nil {
		g.events.f.Close()
	}
}

// start runs the background work: load scraping, notice polling, the
// library's periodic tick and the replay workers. It returns once every
// backend has given a first load reading (a replica without one counts as
// saturated) or -ready-wait has passed.
func (g *gateway) start(parent context.Context) {
	if g.eng == nil {
		return
	}
	ctx, cancel := context.WithCancel(parent)
	g.stop = cancel
	run := func(f func(context.Context)) {
		g.bg.Add(1)
		go func() { defer g.bg.Done(); f(ctx) }()
	}
	var first sync.WaitGroup
	for _, b := range g.backends {
		b := b
		first.Add(1)
		run(func(ctx context.Context) { g.scrape(ctx, b, first.Done) })
		if b.MetadataURL != "" {
			run(func(ctx context.Context) { g.pollNotices(ctx, b) })
		}
	}
	run(g.tick)
	for i := 0; i < g.o.replayWorkers; i++ {
		run(g.replayWorker)
	}
	done := make(chan struct{})
	go func() { first.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(g.o.readyWait):
	}
	g.ready.Store(true)
}

func (g *gateway) tick(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			g.eng.Tick()
			g.queue.Tick()
		}
	}
}

func (g *gateway) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/chat/completions", g.completion(spotinfer.OpenAIChat))
	mux.HandleFunc("/v1/completions", g.completion(spotinfer.OpenAICompletions))
	mux.HandleFunc("/v1/models", g.models)
	mux.HandleFunc("/v1/models/", g.models)
	mux.HandleFunc("/metrics", g.metrics)
	mux.HandleFunc("/healthz", g.healthz)
	mux.HandleFunc("/debug/timing", g.timing)
	return mux
}

// apiError answers in the OpenAI error shape.
func apiError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": nil, "code": nil}})
}

func (g *gateway) completion(kind spotinfer.OpenAIKind) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			apiError(w, http.StatusMethodNotAllowed, "invalid_request_error", "use POST")
			return
		}
		p := clientPassed(r.Header)
		if p.requestID != "" {
			w.Header().Set("X-Request-Id", p.requestID)
		}
		r = r.WithContext(context.WithValue(r.Context(), passedKey{}, p))
		if !g.ready.Load() {
			w.Header().Set("Retry-After", "1")
			apiError(w, http.StatusServiceUnavailable, "unavailable", "starting: no load reading yet")
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.o.maxBody))
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				apiError(w, http.StatusRequestEntityTooLarge, "invalid_request_error",
					fmt.Sprintf("body over %d bytes", g.o.maxBody))
			} else {
				g.stats.cancelled.Add(1)
			}
			return
		}
		if g.eng == nil {
			g.serveRoundRobin(w, r, body)
			return
		}
		g.serveRouted(w, r, body, kind)
	}
}

// serveRoundRobin is the yardstick: the same forwarding and stream relay,
// with the backend taken in turn and no library call at all.
func (g *gateway) serveRoundRobin(w http.ResponseWriter, r *http.Request, body []byte) {
	b := g.backends[int(g.rr.Add(1)-1)%len(g.backends)]
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	resp, err := g.forward(g.headerWaitFor(ctx, body), b, r.URL.Path, "", body)
	if err != nil {
		g.stats.failed.Add(1)
		apiError(w, http.StatusBadGateway, "upstream_error", backendError(b.ID, err).Error())
		return
	}
	defer resp.Body.Close()
	st := &stream{g: g}
	if isEventStream(resp) {
		st.relayPassive(w, resp, cancel)
		return
	}
	copyWhole(w, resp)
}

// route asks the library where the request goes, with the replicas in
// exclude kept out. A request the library queues (batch work while no spot
// capacity is up) is routed again until heldUntil.
func (g *gateway) route(ctx context.Context, req *spotinfer.Request, body []byte,
	kind spotinfer.OpenAIKind, heldUntil time.Time, exclude []string) (
	d spotinfer.Decision, spent time.Duration, t0 time.Time, err error) {
	return g.routeHeld(ctx, heldUntil, func() (spotinfer.Decision, error) {
		if err := req.ParseOpenAI(body, kind); err != nil {
			return spotinfer.Decision{}, badRequest{err}
		}
		for _, id := range exclude {
			req.ExcludeReplica(id)
		}
		return req.Route()
	})
}

// routeHeld calls routeOnce until its decision is not to queue, every
// queueRetry, until heldUntil; then the queued decision comes back with
// ErrNoCapacity. spent is the time spent in routeOnce, t0 when its last
// call began.
func (g *gateway) routeHeld(ctx context.Context, heldUntil time.Time, routeOnce func() (spotinfer.Decision, error)) (
	d spotinfer.Decision, spent time.Duration, t0 time.Time, err error) {
	for {
		t0 = time.Now()
		d, err = routeOnce()
		spent += time.Since(t0)
		if err != nil || d.Pool != spotinfer.PoolQueue {
			return d, spent, t0, err
		}
		if time.Now().After(heldUntil) {
			return d, spent, t0, spotinfer.ErrNoCapacity
		}
		select {
		case <-ctx.Done():
			return d, spent, t0, ctx.Err()
		case <-time.After(queueRetry):
		}
	}
}

// queueRetry is how often a queued request is routed again.
const queueRetry = 50 * time.Millisecond

// maxReroutes bounds how often a request cut before its first byte (its
// machine got a notice while the backend was still prefilling), or whose
// stream broke before its first event, is routed again.
const maxReroutes = 3

func (g *gateway) serveRouted(w http.ResponseWriter, r *http.Request, body []byte, kind spotinfer.OpenAIKind) {
	st := &stream{g: g, key: fmt.Sprintf("%x-%d", time.Now().UnixNano(), g.seq.Add(1)),
		body: body, kind: kind, ctx: r.Context(), path: r.URL.Path}
	// A request is held while queued for -queue-wait in all, however
	// often it is routed.
	st.heldUntil = time.Now().Add(g.o.queueWait)
	st.choices.asked = askedChoices(body)
	st.holdBack = stopHoldBack(body)
	if echoes(body) {
		st.notContinued = whyEcho
	}
	// The client's id, or else the one the backends and the event log get.
	if w.Header().Get("X-Request-Id") == "" {
		w.Header().Set("X-Request-Id", st.key)
	}
	// The backend gets a streamed body asking for its running token count;
	// the envelope keeps the client's.
	fwd, asked, hide := askRunningUsage(body)
	st.asked = asked // what the client asked for, asked or not for more
	if g.o.backendUsage {
		st.hideUsage = hide
	} else {
		fwd = body
	}
	for attempt := 0; ; attempt++ {
		d, started, req, ok := g.decide(w, r, st)
		if !ok {
			return
		}
		st.class, st.replayable = d.Class, d.Replayable
		more := map[string]any{"attempt": attempt}
		if p, _ := r.Context().Value(passedKey{}).(passed); p.requestID != "" {
			more["client_request_id"] = p.requestID
		}
		g.logRoute(st.key, d, started, more)
		// A leg has its own context so that a REPLAY plan can cut it
		// without touching the client's connection.
		lctx, cancel := context.WithCancel(r.Context())
		resp, l, err := g.firstLeg(lctx, cancel, st, req, fwd, d, attempt)
		g.reqs.Put(req)
		if err != nil {
			cancel()
			if st.wasCut() && r.Context().Err() == nil && attempt < maxReroutes {
				// Nothing reached the client yet: route it again; the
				// library keeps it off the noticed machine.
				g.stats.rerouted.Add(1)
				continue
			}
			if r.Context().Err() != nil { // the client left first
				g.stats.cancelled.Add(1)
				return
			}
			if errors.Is(err, spotinfer.ErrFull) {
				// Routed again, it found every ticket open.
				g.overloaded(w, err)
				return
			}
			g.stats.failed.Add(1)
			apiError(w, http.StatusBadGateway, "upstream_error", err.Error())
			return
		}
		if !isEventStream(resp) {
			// A whole answer is not cut once it has come: no REPLAY plan
			// reaches it any more.
			st.unregister(&l)
			defer cancel()
			defer resp.Body.Close()
			passBack(w.Header(), resp)
			st.relayWhole(w, resp, l)
			return
		}
		err = st.relay(w, r.Context(), resp, l)
		if err == nil {
			return
		}
		// The stream broke before its first event: the client has nothing
		// yet, whatever the class, and it is routed again. A leg that was
		// not cut (the library keeps a noticed machine out) broke on its
		// own: its replica is kept out.
		err = fmt.Errorf("%s: the stream broke before its first event: %w", l.replica, err)
		if r.Context().Err() == nil && attempt < maxReroutes && !tooLong(err) {
			g.stats.rerouted.Add(1)
			if !errors.Is(err, errCut) {
				st.broken = append(st.broken, l.replica)
			}
			st.brokeWith = err
			continue
		}
		g.stats.failed.Add(1)
		apiError(w, http.StatusBadGateway, "upstream_error", err.Error())
		return
	}
}

// decide asks the library where the stream's request goes, with the
// replicas its earlier streams broke on kept out. The request it was
// routed with comes back with the decision, parsed, for the tries after a
// failed one to route again; the caller puts it back in g.reqs. When it
// goes nowhere, the client has its answer (400, 429, 500, 503: no
// capacity, or every ticket open; 502 with the last broken stream's error
// when no replica is left for it) and ok is false.
func (g *gateway) decide(w http.ResponseWriter, r *http.Request, st *stream) (spotinfer.Decision, time.Time, *spotinfer.Request, bool) {
	req, _ := g.reqs.Get().(*spotinfer.Request)
	if req == nil {
		apiError(w, http.StatusInternalServerError, "internal_error", "no request handle")
		return spotinfer.Decision{}, time.Time{}, nil, false
	}
	d, spent, started, err := g.route(r.Context(), req, st.body, st.kind, st.heldUntil, st.broken)
	g.timings.decision.add(spent)
	if err == nil {
		return d, started, req, true
	}
	g.reqs.Put(req)
	switch {
	case st.brokeWith != nil && (errors.Is(err, spotinfer.ErrShed) || errors.Is(err, spotinfer.ErrNoCapacity)):
		// No replica left after the streams that broke: the client gets
		// the last one's error, as after failed tries.
		g.stats.failed.Add(1)
		apiError(w, http.StatusBadGateway, "upstream_error", st.brokeWith.Error())
	case errors.Is(err, spotinfer.ErrShed):
		g.stats.shed.Add(1)
		w.Header().Set("Retry-After", "1")
		apiError(w, http.StatusTooManyRequests, "rate_limit_error", "shed under KV-cache pressure: "+d.Reason)
	case errors.Is(err, spotinfer.ErrNoCapacity):
		g.stats.noCapacity.Add(1)
		w.Header().Set("Retry-After", "1")
		apiError(w, http.StatusServiceUnavailable, "unavailable", "no capacity: "+d.Reason)
	case errors.Is(err, spotinfer.ErrFull):
		g.overloaded(w, err)
	case errors.Is(err, context.Canceled):
		g.stats.cancelled.Add(1)
	default:
		var br badRequest
		if errors.As(err, &br) {
			g.refuse(w, br.err)
			break
		}
		g.stats.failed.Add(1)
		apiError(w, http.StatusInternalServerError, "internal_error", err.Error())
	}
	return d, started, nil, false
}

// refuse answers a body the library would not read: 413 when it is over
// one of the library's limits, 400 when it is malformed. The library's
// message names the field (and the byte offset of malformed JSON).
func (g *gateway) refuse(w http.ResponseWriter, err error) {
	g.stats.badRequest.Add(1)
	msg := err.Error()
	var se *spotinfer.Error
	if errors.As(err, &se) && se.Message != "" {
		msg = se.Message
	}
	status := http.StatusBadRequest
	if errors.Is(err, spotinfer.ErrTooBig) {
		status = http.StatusRequestEntityTooLarge
	}
	apiError(w, status, "invalid_request_error", msg)
}

// overloaded answers a route that found every ticket open
// (router.max_tickets requests are open): overload, not a fault.
func (g *gateway) overloaded(w http.ResponseWriter, err error) {
	g.stats.overloaded.Add(1)
	w.Header().Set("Retry-After", "1")
	apiError(w, http.StatusServiceUnavailable, "unavailable", "overloaded: "+err.Error())
}

// firstLeg sends the request to the chosen replica. A try that cannot
// reach its replica or gets a 5xx before the first byte ends its ticket
// (as ERROR, which the replica's error breaker counts, unless it was cut
// or the client left), and the request is routed again with every replica
// tried so far excluded: the library picks the next replica, opens its
// ticket and counts its load, which serving the decision's fallbacks
// without one did not. There are at most as many tries as the first
// decision names replicas (its choice and its fallbacks); a route that
// finds none (no capacity, shed, still queued after -queue-wait) ends them
// with the last try's error, and one that finds every ticket open with its
// own (ErrFull), which the client gets as from a first route. req is the
// request d was routed with, still parsed.
func (g *gateway) firstLeg(ctx context.Context, cancel context.CancelFunc, st *stream,
	req *spotinfer.Request, body []byte, d spotinfer.Decision, attempt int) (*http.Response, leg, error) {
	tries := min(1+len(d.FallbackIDs), spotinfer.MaxExcluded+1)
	for try := 1; ; try++ {
		resp, l, err := g.try(ctx, cancel, st, body, d)
		if err == nil {
			return resp, l, nil
		}
		if try == tries || ctx.Err() != nil {
			return nil, leg{}, err
		}
		next, ok, full := g.routeAgain(ctx, st, req, d.ReplicaID, attempt, try+1)
		if full != nil {
			return nil, leg{}, full
		}
		if !ok {
			return nil, leg{}, err
		}
		d = next
	}
}

// try sends the request to the decision's replica; on a failure before
// the first byte it ends the decision's ticket.
func (g *gateway) try(ctx context.Context, cancel context.CancelFunc, st *stream,
	body []byte, d spotinfer.Decision) (*http.Response, leg, error) {
	b := g.byID[d.ReplicaID]
	if b == nil {
		g.finish(d.Ticket, spotinfer.TicketResult{Status: spotinfer.TicketError})
		return nil, leg{}, fmt.Errorf("the library chose %q, which is not a configured backend", d.ReplicaID)
	}
	// The ticket is findable from the start, so a REPLAY plan reaches a
	// request still waiting for its first byte.
	// It stays registered when the try gets its answer: the relay takes it
	// over, and a cut in between still stops it.
	l := leg{replica: d.ReplicaID, ticket: d.Ticket, sent: time.Now(), cancel: cancel}
	st.register(&l)
	resp, err := g.forward(g.headerWaitFor(ctx, body), b, st.path, st.key, applyPlan(body, d))
	if err == nil && resp.StatusCode < 500 {
		return resp, l, nil
	}
	defer st.unregister(&l)
	err = backendError(d.ReplicaID, err)
	if err == nil {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		err = fmt.Errorf("%s answered %d: %s", d.ReplicaID, resp.StatusCode, bytes.TrimSpace(msg))
	}
	status := spotinfer.TicketError
	if st.wasCut() {
		status = spotinfer.TicketInterrupted
	} else if ctx.Err() != nil {
		status = spotinfer.TicketCancelled
	}
	g.finish(d.Ticket, spotinfer.TicketResult{Status: status})
	return nil, leg{}, err
}

// routeAgain routes req once more, for its try number try (the first is
// 1), with the replica that just failed it excluded too (the earlier ones
// still are); ok is false when the library places it nowhere, and full is
// then the route's error when that is because every ticket is open
// (ErrFull). A request the library queues (bronze whose spot replicas are
// all tried) is held as a first route is, for spot capacity to come back,
// within what is left of the request's -queue-wait.
func (g *gateway) routeAgain(ctx context.Context, st *stream, req *spotinfer.Request,
	failed string, attempt, try int) (d spotinfer.Decision, ok bool, full error) {
	if req.ExcludeReplica(failed) != nil {
		return spotinfer.Decision{}, false, nil
	}
	d, spent, t0, err := g.routeHeld(ctx, st.heldUntil, req.Route)
	g.timings.decision.add(spent)
	if errors.Is(err, spotinfer.ErrFull) {
		return d, false, err
	}
	if err != nil || !d.Serving() {
		return d, false, nil
	}
	g.stats.fallbacks.Add(1)
	g.logRoute(st.key, d, t0, map[string]any{"attempt": attempt, "try": try})
	return d, true, nil
}

// logRoute writes a decision's route event, routed from started, with the
// fields in more added.
func (g *gateway) logRoute(key string, d spotinfer.Decision, started time.Time, more map[string]any) {
	ev := map[string]any{"event": "route", "key": key, "replica": d.ReplicaID,
		"ticket": d.Ticket.ID, "class": d.Class.String(), "reason": d.ReasonCode.String(),
		"matched_blocks": d.MatchedBlocks, "total_blocks": d.TotalBlocks, "why": d.Reason,
		"route_start": unixSeconds(started)}
	for k, v := range more {
		ev[k] = v
	}
	g.events.write(ev)
}

// forward posts the body to a backend with the client's headers that pass
// (clientHeaders, held in ctx) and the backend's API key; id goes as
// X-Request-Id, which vLLM takes as the request's id ("": the client's).
func (g *gateway) forward(ctx context.Context, b *backend, path, id string, body []byte) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.URL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if p, ok := ctx.Value(passedKey{}).(passed); ok {
		for k, v := range p.h {
			req.Header[k] = v
		}
		if id == "" {
			id = p.requestID
		}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if id != "" {
		req.Header.Set("X-Request-Id", id)
	}
	b.authorize(req)
	return g.client.Do(req)
}

// clientHeaders are the client's request headers passed on to each try's
// backend, a replay's leg included.
// Not Authorization: a client's key is the gateway's to check, if anyone's,
// and a backend gets its own (api_key in the backends file). Not
// X-Request-Id either: a routed request's backends get the gateway's id,
// unique for each request, which the event log names too; the client's
// comes back in the answer and is logged with the route.
var clientHeaders = []string{"OpenAI-Organization", "OpenAI-Project", "Traceparent", "Tracestate"}

// answerHeaders are the backend's response headers a whole (not streamed)
// answer passes back: none hop-by-hop, none the relay changes
// (Content-Length), and not X-Request-Id, which the gateway sets.
var answerHeaders = []string{"Openai-Processing-Ms", "Openai-Version", "Openai-Organization",
	"Openai-Project", "Retry-After"}

// maxRequestID bounds the client's X-Request-Id kept; a longer one is
// dropped.
const maxRequestID = 256

// passed is what a request's headers give its legs, held in its context
// (under passedKey), which every leg's context derives from.
type passed struct {
	h         http.Header
	requestID string // the client's X-Request-Id, "" if none
}

type passedKey struct{}

func clientPassed(in http.Header) passed {
	p := passed{h: http.Header{}}
	for _, k := range clientHeaders {
		if v := in.Values(k); len(v) > 0 {
			p.h[http.CanonicalHeaderKey(k)] = v
		}
	}
	if id := in.Get("X-Request-Id"); len(id) <= maxRequestID {
		p.requestID = id
	}
	return p
}

// passBack copies answerHeaders from a backend's answer into the client's.
// A helper for every relay of a whole answer.
func passBack(dst http.Header, resp *http.Response) {
	for _, k := range answerHeaders {
		if v := resp.Header.Values(k); len(v) > 0 {
			dst[http.CanonicalHeaderKey(k)] = v
		}
	}
}

func isEventStream(resp *http.Response) bool {
	ct := resp.Header.Get("Content-Type")
	return resp.StatusCode == http.StatusOK && len(ct) >= 17 && ct[:17] == "text/event-stream"
}

func copyWhole(w http.ResponseWriter, resp *http.Response) {
	passBack(w.Header(), resp)
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
}

// finish reports a ticket's end; the time it takes is the library's share.
func (g *gateway) finish(t spotinfer.Ticket, res spotinfer.TicketResult) {
	if t.ID == 0 {
		return
	}
	t0 := time.Now()
	t.Finish(res)
	g.timings.ticket.add(time.Since(t0))
}

type counters struct {
	ok, failed, cancelled, shed, noCapacity, overloaded, badRequest atomic.Uint64
	fallbacks                                                       atomic.Uint64
	notices, replayEnqueued, replayResumed, replayFailed            atomic.Uint64
	interrupted, rerouted                                           atomic.Uint64
}

// eventLog writes JSON lines; nil writes nothing.
type eventLog struct {
	mu sync.Mutex
	f  *os.File
}

func (l *eventLog) write(fields map[string]any) {
	if l == nil {
		return
	}
	fields["t"] = float64(time.Now().UnixNano()) / 1e9
	b, _ := json.Marshal(fields)
	l.mu.Lock()
	l.f.Write(append(b, '\n'))
	l.mu.Unlock()
}

// badRequest marks an error of the client's body.
type badRequest struct{ err error }

func (b badRequest) Error() string { return b.err.Error() }
func (b badRequest) Unwrap() error { return b.err }

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

func itoa(v uint64) string { return strconv.FormatUint(v, 10) }
