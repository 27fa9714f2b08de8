package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// register makes the leg's ticket findable by a REPLAY plan, and the leg
// the one a cut stops. A leg is registered from its request on (a REPLAY
// plan reaches a leg still waiting for its first byte) until its relay
// ends, registering it again on the way (try, then relayLeg) keeps a cut
// that came in between: only a new leg starts uncut.
func (st *stream) register(l *leg) {
	st.mu.Lock()
	if l.ticket.ID == 0 || l.ticket.ID != st.ticket {
		st.cut = false
	}
	st.ticket, st.cancel = l.ticket.ID, l.cancel
	st.mu.Unlock()
	if l.ticket.ID == 0 {
		return
	}
	st.g.mu.Lock()
	st.g.open[l.ticket.ID] = st
	st.g.mu.Unlock()
}

func (st *stream) unregister(l *leg) {
	if l.ticket.ID == 0 {
		return
	}
	st.g.mu.Lock()
	if st.g.open[l.ticket.ID] == st {
		delete(st.g.open, l.ticket.ID)
	}
	st.g.mu.Unlock()
}

// cutTicket reports whether a REPLAY plan cut the leg of this ticket.
func (st *stream) cutTicket(ticket uint64) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cut && st.ticket == ticket && ticket != 0
}

func (st *stream) wasCut() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cut
}

// interrupt cuts the leg holding a ticket, for a REPLAY plan: the stream
// then checkpoints what the client has and waits to be resumed (or, with
// nothing sent yet, is routed again).
func (g *gateway) interrupt(ticket uint64) bool {
	g.mu.Lock()
	st := g.open[ticket]
	g.mu.Unlock()
	if st == nil {
		return false // finished meanwhile
	}
	st.mu.Lock()
	if st.ticket != ticket {
		st.mu.Unlock()
		return false // the stream has moved on to another leg
	}
	st.cut = true
	cancel := st.cancel
	st.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	return true
}

// resumeAfterCut checkpoints the stream into the replay queue and waits
// for a replay worker to hand back a continuation leg. A stream whose
// continuations keep breaking is given up once replay.max_attempts replays
// in a row have failed, as the queue dead-letters an envelope nacked that
// often, and each checkpoint after a failed replay waits out the queue's
// backoff first. A stream is also given up after maxReplays continuations
// in all, whether they failed or not.
func (st *stream) resumeAfterCut(ctx context.Context, cause error) resumption {
	g := st.g
	st.mu.Lock()
	if st.firstCut == 0 {
		st.firstCut = time.Now().UnixNano()
	}
	st.cuts++
	env := spotinfer.Envelope{Key: fmt.Sprintf("%s/%d", st.key, st.cuts), Body: st.body,
		OpenAIKind: st.kind, Class: st.class, PartialText: st.text.String(),
		StreamOffset: st.tokens, Attempts: st.failed, FirstEnqueuedNs: st.firstCut}
	estimated := st.estimated
	st.resume, st.claimed = make(chan resumption, 1), make(chan struct{}, 1)
	resume, claimed := st.resume, st.claimed
	replays := st.replays
	st.mu.Unlock()
	var err error
	switch {
	case env.Attempts >= g.retry.maxAttempts:
		err = fmt.Errorf("%v, after %d failed replays (replay.max_attempts)", cause, env.Attempts)
	case replays >= g.retry.maxReplays():
		err = fmt.Errorf("%v, after %d replays, the most one stream is given (%d x replay.max_attempts)",
			cause, replays, replaysPerAttempt)
	}
	if err != nil {
		g.stats.replayFailed.Add(1)
		g.events.write(map[string]any{"event": "replay_failed", "key": env.Key, "error": err.Error()})
		return resumption{err: err}
	}
	if env.Attempts > 0 {
		select {
		case <-time.After(g.retry.backoff(env.Attempts)):
		case <-ctx.Done():
			return resumption{err: ctx.Err()}
		}
	}
	g.mu.Lock()
	g.waiting[env.Key] = st
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.waiting, env.Key)
		g.mu.Unlock()
		// A leg handed over as the wait ended is nobody's: close it.
		select {
		case r := <-resume:
			g.discard(r)
		default:
		}
	}()
	if _, err := g.queue.Enqueue(env); err != nil {
		g.stats.replayFailed.Add(1)
		g.events.write(map[string]any{"event": "replay_failed", "key": env.Key, "error": err.Error()})
		return resumption{err: err}
	}
	g.stats.replayEnqueued.Add(1)
	g.events.write(map[string]any{"event": "replay_enqueued", "key": env.Key,
		"offset": env.StreamOffset, "offset_estimated": estimated, "attempts": env.Attempts,
		"cause": cause.Error()})
	select {
	case g.wake <- struct{}{}:
	default:
	}
	// -replay-wait for a worker to take the envelope up; once one has, as
	// long as its lease, which outlasts the continuation's opens (each up
	// to -header-wait): a continuation is not opened only to be dropped.
	until := time.Now().Add(g.o.replayWait)
	wait := time.NewTimer(g.o.replayWait)
	defer wait.Stop()
	for {
		select {
		case r := <-resume:
			if r.err != nil {
				g.stats.replayFailed.Add(1)
				g.events.write(map[string]any{"event": "replay_failed", "key": env.Key, "error": r.err.Error()})
				return r
			}
			g.stats.replayResumed.Add(1)
			g.events.write(map[string]any{"event": "replay_resumed", "key": env.Key, "replica": r.leg.replica,
				"ticket": r.leg.ticket.ID, "offset": r.leg.offset, "complete": r.complete})
			return r
		case <-claimed:
			if lease := time.Now().Add(g.replayLease()); lease.After(until) {
				until = lease
				if !wait.Stop() {
					select {
					case <-wait.C:
					default:
					}
				}
				wait.Reset(time.Until(until))
			}
		case <-ctx.Done():
			return resumption{err: ctx.Err()}
		case <-wait.C:
			return resumption{err: fmt.Errorf("not resumed within %v (-replay-wait, or the lease of "+
				"the replay worker that took it up)", g.o.replayWait)}
		}
	}
}

// replayWorker claims envelopes and resumes their streams.
func (g *gateway) replayWorker(ctx context.Context) {
	all := spotinfer.ClassMask(spotinfer.ClassGold, spotinfer.ClassSilver, spotinfer.ClassBronze)
	poll := time.NewTicker(25 * time.Millisecond)
	defer poll.Stop()
	for {
		c, ok, err := g.queue.Claim(all, g.replayLease().Milliseconds())
		if err != nil || !ok {
			select {
			case <-ctx.Done():
				return
			case <-g.wake:
			case <-poll.C:
			}
			continue
		}
		g.resumeClaim(ctx, c)
	}
}

// resumeClaim builds the continuation of a claimed envelope, routes it
// (the library keeps it off the noticed machine), opens the leg and hands
// it to the waiting stream. The claim is acked just before the hand-over
// (and whenever nothing is left to retry), and nacked (retried after a
// backoff) when no leg could be opened for want of capacity (every ticket
// open included) or a backend; the nack that dead-letters it (the
// replay.max_attempts-th failure) ends the stream at once.
func (g *gateway) resumeClaim(ctx context.Context, c spotinfer.Claim) {
	env := c.Envelope
	g.mu.Lock()
	st := g.waiting[env.Key]
	g.mu.Unlock()
	if st == nil {
		g.queue.Ack(c.ID) // the client is gone: nothing to resume
		return
	}
	g.noteClaim(env.Key, st)
	give := func(r resumption) { g.handOver(env.Key, st, r) }
	cont, flags, err := spotinfer.Continuation(env)
	if errors.Is(err, spotinfer.ErrRange) {
		// The client already has every token the request allowed.
		g.queue.Ack(c.ID)
		give(resumption{complete: true})
		return
	}
	if err != nil {
		g.queue.Ack(c.ID)
		give(resumption{err: err})
		return
	}
	scratch := flags&spotinfer.EnvelopeFromScratch != 0
	resp, l, err := g.openContinuation(ctx, st, []byte(cont), env, scratch)
	for reroute := 1; errors.Is(err, errCut) && reroute <= maxReroutes && st.ctx.Err() == nil; reroute++ {
		// Cut by a REPLAY plan before its first byte: route it again; the
		// library keeps it off the noticed machine.
		g.stats.rerouted.Add(1)
		resp, l, err = g.openContinuation(ctx, st, []byte(cont), env, scratch)
	}
	if err != nil {
		g.events.write(map[string]any{"event": "replay_retry", "key": env.Key, "error": err.Error()})
		if errors.Is(err, spotinfer.ErrNoCapacity) || errors.Is(err, spotinfer.ErrShed) ||
			errors.Is(err, spotinfer.ErrFull) || errors.Is(err, errUpstream) || errors.Is(err, errCut) {
			g.queue.Nack(c.ID)
			if env.Attempts+1 >= g.retry.maxAttempts {
				// That nack dead-lettered the envelope: nobody will claim
				// it again, and the stream ends now.
				give(resumption{err: fmt.Errorf("%v, after %d failed replays (replay.max_attempts)",
					err, env.Attempts+1)})
			}
			return
		}
		g.queue.Ack(c.ID)
		give(resumption{err: err})
		return
	}
	l.offset, l.resumed = env.StreamOffset, true
	if scratch {
		l.offset, l.skip = 0, env.PartialText
	}
	// Acked before the hand-over: a claim whose lease ran out meanwhile
	// belongs to another worker now, and only one leg may feed the stream.
	r := resumption{resp: resp, leg: l, attempts: env.Attempts}
	if err := g.queue.Ack(c.ID); err != nil {
		g.events.write(map[string]any{"event": "replay_dropped", "key": env.Key, "error": err.Error()})
		g.discard(r)
		return
	}
	if !g.handOver(env.Key, st, r) {
		g.discard(r)
	}
}

// handOver gives r to the stream waiting under key, and reports whether
// it took it: under g.mu, so a stream that has stopped waiting (its entry
// gone, its leftovers drained) is never handed what it would not read.
func (g *gateway) handOver(key string, st *stream, r resumption) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waiting[key] != st {
		return false
	}
	select {
	case st.resume <- r:
		return true
	default:
		return false
	}
}

// noteClaim tells the stream waiting under key that a worker has taken
// its envelope up and is opening its continuation.
func (g *gateway) noteClaim(key string, st *stream) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.waiting[key] != st {
		return
	}
	select {
	case st.claimed <- struct{}{}:
	default:
	}
}

// discard closes a leg no stream will read, and finishes its ticket.
func (g *gateway) discard(r resumption) {
	if r.resp == nil {
		return
	}
	g.mu.Lock()
	delete(g.open, r.leg.ticket.ID)
	g.mu.Unlock()
	r.resp.Body.Close()
	r.leg.cancel()
	g.finish(r.leg.ticket, spotinfer.TicketResult{Status: spotinfer.TicketCancelled})
}

var errUpstream = errors.New("upstream")

// replayLease is a claim's lease. It outlasts resumeClaim: up to
// maxReroutes+1 opens of the continuation (it is routed again each time a
// REPLAY plan cuts it before its first byte), each waiting at most to
// connect and then -header-wait for the backend's headers, with time to
// spare for the rest. A lease that ran out would let another worker claim
// the envelope while this one still opens its leg.
func (g *gateway) replayLease() time.Duration {
	return time.Duration(maxReroutes+1)*(dialWait+g.o.headerWait) + leaseSpare
}

// leaseSpare is the lease's time beyond its opens' waits.
const leaseSpare = 30 * time.Second

// openContinuation routes the continuation body and opens its leg.
// scratch: the body is the request as it came (a from-scratch replay),
// which generates the whole answer again.
func (g *gateway) openContinuation(ctx context.Context, st *stream, body []byte,
	env spotinfer.Envelope, scratch bool) (*http.Response, leg, error) {
	req, _ := g.reqs.Get().(*spotinfer.Request)
	if req == nil {
		return nil, leg{}, errors.New("no request handle")
	}
	t0 := time.Now()
	fwd := body
	if g.o.backendUsage {
		fwd, _, _ = askRunningUsage(body)
	}
	err := req.ParseOpenAI(body, env.OpenAIKind)
	if err == nil {
		err = req.SetInt(spotinfer.FieldReplaySinceNs, env.FirstEnqueuedNs)
	}
	st.mu.Lock()
	for _, id := range st.quiet {
		req.ExcludeReplica(id) // past spotinfer.MaxExcluded, the rest may be chosen
	}
	st.mu.Unlock()
	var d spotinfer.Decision
	if err == nil {
		d, err = req.Route()
	}
	g.reqs.Put(req)
	g.timings.decision.add(time.Since(t0))
	if err != nil {
		return nil, leg{}, err
	}
	if !d.Serving() {
		return nil, leg{}, fmt.Errorf("%w: the library queued the replay", spotinfer.ErrNoCapacity)
	}
	g.events.write(map[string]any{"event": "route", "key": env.Key, "replica": d.ReplicaID,
		"ticket": d.Ticket.ID, "class": d.Class.String(), "reason": d.ReasonCode.String(),
		"replay": true, "route_start": unixSeconds(t0)})
	b := g.byID[d.ReplicaID]
	if b == nil {
		g.finish(d.Ticket, spotinfer.TicketResult{Status: spotinfer.TicketError})
		return nil, leg{}, fmt.Errorf("the library chose %q, which is not a configured backend", d.ReplicaID)
	}
	// The leg lives as long as the client's stream, not the worker, and
	// carries what the client's request passes on (its listed headers):
	// the stream's context without its cancel, which the goroutine below
	// forwards.
	lctx, cancel := context.WithCancel(context.WithoutCancel(st.ctx))
	go func() {
		select {
		case <-st.ctx.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	l := leg{replica: d.ReplicaID, ticket: d.Ticket, sent: time.Now(), cancel: cancel}
	// The cap is the whole answer's: what the client has counts against
	// a continuation, which writes only the rest (its max_tokens is
	// reduced the same way by the library). A from-scratch replay writes
	// the whole answer again, from the first token, so it gets the whole
	// cap (and its max_tokens as the client sent it).
	plan := d
	if plan.MaxOutputTokens > 0 && !scratch {
		plan.MaxOutputTokens -= int64(env.StreamOffset)
		if plan.MaxOutputTokens < 1 {
			plan.MaxOutputTokens = 1
		}
	}
	// Findable from the start, as a first leg is: a REPLAY plan for the
	// machine reaches it while it waits for its first byte.
	st.register(&l)
	resp, err := g.forward(g.headerWaitFor(lctx, fwd), b, st.path, env.Key, applyPlan(fwd, plan))
	err = backendError(d.ReplicaID, err)
	if err == nil && resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		err = fmt.Errorf("%s answered %d: %s", d.ReplicaID, resp.StatusCode, msg)
		if resp.StatusCode >= 500 {
			err = fmt.Errorf("%w: %v", errUpstream, err)
		}
	} else if err != nil {
		err = fmt.Errorf("%w: %v", errUpstream, err)
	}
	if err != nil {
		cancel()
		st.unregister(&l)
		// A client gone, or a 4xx answer, says nothing of the replica.
		status := spotinfer.TicketError
		switch {
		case st.cutTicket(l.ticket.ID):
			status = spotinfer.TicketInterrupted
			err = fmt.Errorf("%w before its first byte: %v", errCut, err)
		case st.ctx.Err() != nil || (resp != nil && resp.StatusCode < 500):
			status = spotinfer.TicketCancelled
		}
		g.finish(d.Ticket, spotinfer.TicketResult{Status: status})
		return nil, leg{}, err
	}
	// Still registered: the stream's relay takes the leg over.
	return resp, l, nil
}

// replayRetry is how the replay queue retries, as the gateway reads it:
// the engine's "replay" section with the keys of -replay over it.
type replayRetry struct {
	maxAttempts uint32
	base, max   time.Duration
	jitter      float64
}

// replayRetryOf reads the queue's retry settings from the engine's
// configuration and the -replay JSON; a setting neither gives is the
// library's default.
func replayRetryOf(eng *spotinfer.Engine, replayConfig string) replayRetry {
	r := replayRetry{maxAttempts: 5, base: time.Second, max: time.Minute, jitter: 0.5}
	cfg := replaySection(eng, replayConfig)
	var n float64
	if json.Unmarshal(cfg["max_attempts"], &n) == nil && n >= 1 {
		r.maxAttempts = uint32(min(n, 1<<31))
	}
	if json.Unmarshal(cfg["backoff_base_ms"], &n) == nil && n >= 1 {
		r.base = time.Duration(n) * time.Millisecond
	}
	if json.Unmarshal(cfg["backoff_max_ms"], &n) == nil && n >= 1 {
		r.max = time.Duration(n) * time.Millisecond
	}
	if json.Unmarshal(cfg["backoff_jitter"], &n) == nil && n >= 0 && n <= 1 {
		r.jitter = n
	}
	return r
}

// replaySection is the queue's configuration as the library opens it: the
// engine's "replay" section with the keys of -replay over it.
func replaySection(eng *spotinfer.Engine, replayConfig string) map[string]json.RawMessage {
	var cfg struct {
		Replay map[string]json.RawMessage `json:"replay"`
	}
	if js, err := eng.ConfigJSON(); err == nil {
		json.Unmarshal([]byte(js), &cfg)
	}
	var over map[string]json.RawMessage
	json.Unmarshal([]byte(replayConfig), &over)
	if cfg.Replay == nil {
		cfg.Replay = map[string]json.RawMessage{}
	}
	for k, v := range over {
		cfg.Replay[k] = v
	}
	return cfg.Replay
}

// replayFits reports an error when the queue cannot hold the checkpoint
// of a stream cut with a body of maxBody: an envelope limit under the
// body and replayRoom for its answer, or a queue smaller than that
// envelope (settings -config or -replay named; those the gateway derives
// fit).
func replayFits(eng *spotinfer.Engine, replayConfig string, maxBody int64) error {
	cfg := replaySection(eng, replayConfig)
	var envelope, total float64
	json.Unmarshal(cfg["max_envelope_bytes"], &envelope)
	json.Unmarshal(cfg["max_bytes"], &total)
	if need := maxBody + replayRoom; envelope < float64(need) {
		return fmt.Errorf("replay.max_envelope_bytes %.0f cannot hold a stream cut with a body of "+
			"-max-body-bytes (%d) and %d MiB of its answer: give it at least %d, or a smaller "+
			"-max-body-bytes", envelope, maxBody, replayRoom>>20, need)
	}
	if total < envelope+queueSlack {
		return fmt.Errorf("replay.max_bytes %.0f cannot hold one envelope of replay.max_envelope_bytes "+
			"(%.0f), a stream cut with the largest body: give it at least %.0f",
			total, envelope, envelope+queueSlack)
	}
	return nil
}

// replaysPerAttempt is how many continuations one stream may have in all,
// per replay.max_attempts: a request that breaks every backend after some
// progress is not replayed without end.
const replaysPerAttempt = 4

// maxReplays is the most continuations one stream is given.
func (r replayRetry) maxReplays() uint32 {
	return uint32(min(uint64(r.maxAttempts)*replaysPerAttempt, 1<<31))
}

// progressTokens is the output tokens a continuation gives the client that
// count as progress however fast it broke (madeProgress).
const progressTokens = 32

// madeProgress reports whether a continuation that gave the client more
// text (grew) made progress: it streamed for at least the queue's
// backoff_base, or gave at least progressTokens tokens. One that broke
// sooner is a failed replay, as one that gave nothing is, so that a
// request that breaks every backend a token in is backed off and given up.
func (r replayRetry) madeProgress(grew bool, tokens uint64, streamed time.Duration) bool {
	return grew && (streamed >= r.base || tokens >= progressTokens)
}

// backoff is the wait before a replay after n failed ones (n >= 1), as
// the queue waits after a nack: base·2^(n-1), at most max, shortened by up
// to the jitter fraction.
func (r replayRetry) backoff(n uint32) time.Duration {
	d := r.base
	for i := uint32(1); i < n && d < r.max; i++ {
		d *= 2
	}
	d = min(d, r.max)
	return d - time.Duration(rand.Float64()*r.jitter*float64(d))
}
