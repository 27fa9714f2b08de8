package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// leg is one backend response feeding a client's stream: the first, or a
// continuation after an interruption.
type leg struct {
	replica string
	ticket  spotinfer.Ticket // the try's
	sent    time.Time
	offset  uint64 // tokens the client had when this leg started
	resumed bool   // a continuation after a cut
	skip    string // a from-scratch replay: text the client already has
	cancel  context.CancelFunc
}

// stream is one client's answer, across however many legs it takes.
type stream struct {
	g          *gateway
	key        string // the replay envelope's idempotency key
	path       string
	body       []byte
	kind       spotinfer.OpenAIKind
	class      spotinfer.Class
	replayable bool
	asked      usageAsk        // the usage the client's stream_options ask for
	hideUsage  bool            // the gateway asked for more: hide what it did not
	ctx        context.Context // the client's request
	firstCut   int64           // when it was first interrupted (ns), 0 before
	streamID   string          // the id of the first leg's events
	// The first event's object, created and model, for the chunks the
	// gateway writes itself (endings.go).
	head eventHead
	// The most tokens a backend's count may run ahead of the text sent by
	// (stopHoldBack): the offset is lowered to what the client has.
	holdBack uint64
	// heldUntil bounds how long the library may keep it queued, over
	// all of its routes: -queue-wait from its arrival.
	heldUntil time.Time
	// The replicas whose stream broke before its first event, kept out
	// of the request's next routes, and the last such break.
	broken    []string
	brokeWith error
	// The client has had its response headers, sent with its first
	// event (begin). Read and written by the relaying goroutine only.
	began bool
	// The client has had a role chunk: a continuation's is dropped then,
	// and passed on when the first leg broke before its own.
	roleSent bool
	// The client has had the usage chunk (choices empty, usage given),
	// and the usage the last leg's events gave as the client sees it.
	usageSent bool
	lastUsage clientUsage

	mu     sync.Mutex
	cut    bool               // a REPLAY plan asked for this leg to stop
	ticket uint64             // the current leg's ticket
	cancel context.CancelFunc // cancels the current leg
	resume chan resumption
	// A worker took the envelope up (noteClaim): wait for its lease.
	claimed chan struct{}
	text    strings.Builder // what the client has
	tokens  uint64          // its output tokens: the stream offset (tokens.go)
	// tokens holds an estimate: a leg's backend did not count its tokens.
	estimated bool
	cuts      uint32 // checkpoints so far: the envelope keys' sequence
	// The replicas whose leg went silent for -event-wait (or, before its
	// first bytes, -first-event-wait), kept out of the stream's
	// continuations: a hung engine keeps its connections open,
	// and would stall a continuation routed back to it the same way.
	quiet []string
	// The failed replays in a row, the Attempts of the next envelope: the
	// nacks of the envelope whose leg feeds the stream, and that leg if it
	// breaks before it made progress (madeProgress). A leg that did, or
	// that a notice cuts, sets it back to 0. At replay.max_attempts the
	// stream is given up.
	failed uint32
	// The continuations the stream has had, failed or not: at
	// maxReplays it is given up however each of them went.
	replays uint32

	// The client has had a finish_reason for every choice: the answer is
	// whole, and a leg cut before its [DONE] is not continued. Read and
	// written by the relaying goroutine only, as are the fields up to mu.
	finished bool
	choices  choiceSet
	// Why the stream is not continued after a cut, "" when it may be: the
	// client has had what a checkpoint does not hold, tool-call or
	// reasoning deltas (a continuation would repeat or lose them),
	// several choices (a checkpoint holds one text and one offset), or an
	// echo of its prompt (whyEcho).
	notContinued string
	// The client had a backend's error event: the stream ends with it.
	errorSent bool
}

// choiceSet is what a stream's choices have had: the choices, by index,
// and those that had their finish_reason.
type choiceSet struct {
	asked    int // the body's n, 0 when it gives none
	seen     map[string]bool
	finished map[string]bool
}

const (
	whyBeyondText = "it had tool-call or reasoning deltas, which a checkpoint does not hold"
	whyChoices    = "it has several choices, and a checkpoint holds one"
	// A checkpoint would take the echoed prompt (or last message) for
	// part of the answer, and the continuation would echo its own prompt,
	// which holds that text, again.
	whyEcho = "it echoes its prompt, which a checkpoint would take for the answer"
)

// echoes reports whether a body asks the backend to echo its prompt
// (completions) or its last message (chat): its last member echo is true.
func echoes(body []byte) bool {
	if !bytes.Contains(body, []byte(`"echo"`)) && !bytes.Contains(body, []byte(`\u`)) {
		return false
	}
	echo := false
	eachMember(body, func(m member) bool {
		if m.is("echo") {
			echo = string(body[m.val:m.end]) == "true"
		}
		return true
	})
	return echo
}

// askedChoices is the body's n (the last given), 0 when it gives none or
// it is not a number; a continuation body keeps it.
func askedChoices(body []byte) int {
	// Most bodies are seen without a walk; a key written with escapes
	// ("\u006e") needs one.
	if !bytes.Contains(body, []byte(`"n"`)) && !bytes.Contains(body, []byte(`\u`)) {
		return 0
	}
	n := 0
	eachMember(body, func(m member) bool {
		if m.is("n") {
			var v float64
			n = 0
			if json.Unmarshal(body[m.val:m.end], &v) == nil && v >= 1 {
				n = int(min(v, 1<<20))
			}
		}
		return true
	})
	return n
}

// add notes an event's choices; several reports whether the stream has
// more than one. A choice index other than 0 says so on its own: a
// stream of one choice numbers it 0.
func (cs *choiceSet) add(ev *event) (several bool) {
	if cs.seen == nil {
		cs.seen, cs.finished = map[string]bool{}, map[string]bool{}
	}
	other := false
	for _, c := range ev.Choices {
		k := c.index()
		cs.seen[k] = true
		other = other || k != "0"
		if c.FinishReason != nil {
			cs.finished[k] = true
		}
	}
	return cs.asked > 1 || len(cs.seen) > 1 || len(ev.Choices) > 1 || other
}

// whole reports whether every choice has had its finish_reason: every one
// seen, and as many as the body asked for. It decides whether a leg cut
// before its [DONE] left the client a whole answer: with fewer choices
// finished than asked, more may still have been coming.
func (cs *choiceSet) whole() bool {
	return len(cs.finished) > 0 && len(cs.finished) >= max(cs.asked, len(cs.seen))
}

// ended reports whether an answer the backend ended with [DONE] is whole:
// at least one choice, and every choice seen has had its finish_reason.
// The backend had the last word on how many choices there are: one that
// does not implement n answers one, whatever the body asked.
func (cs *choiceSet) ended() bool {
	return len(cs.finished) > 0 && len(cs.finished) >= len(cs.seen)
}

// resumption is what the replay worker hands a waiting stream.
type resumption struct {
	resp     *http.Response
	leg      leg
	attempts uint32 // the envelope's failed attempts before this leg
	complete bool   // nothing was left to generate: the client has it all
	err      error  // the stream cannot be resumed
}

// delta is a streamed chat choice's delta, as far as the gateway reads it.
type delta struct {
	Role    string `json:"role"`
	Content string `json:"content"`
	// Deltas a checkpoint does not hold (its text is the content): a
	// stream that had any is not continued after a cut.
	ToolCalls        json.RawMessage `json:"tool_calls"`
	ReasoningContent string          `json:"reasoning_content"`
	// vLLM's newer name for it; while both are sent they hold the same
	// text (reasoningText takes one).
	Reasoning string `json:"reasoning"`
}

// choice is one of an event's choices, as far as the gateway reads it.
type choice struct {
	// As written: a choice is told from another by it, whatever it holds.
	Index        json.RawMessage `json:"index"`
	Delta        delta           `json:"delta"`
	Text         string          `json:"text"`
	FinishReason *string         `json:"finish_reason"`
}

// index is the choice's index as written, with an absent or null index
// the first choice's, as a stream of one choice may leave it out.
func (c *choice) index() string {
	raw := string(c.Index)
	if raw == "" || raw == "null" || raw == "0" {
		return "0"
	}
	// A number written otherwise (0.0, 1e0) is the same index.
	var f float64
	if json.Unmarshal(c.Index, &f) == nil {
		return strconv.FormatFloat(f, 'g', -1, 64)
	}
	return raw
}

// event is one server-sent event's data, as far as the gateway reads it.
type event struct {
	ID      string   `json:"id"`
	Choices []choice `json:"choices"`
	eventHead
	// The usage, read by decodeEvent (usage.go) from the member whose
	// key is usage exactly: encoding/json would also take "Usage" for it,
	// which the gateway would then count and not take out.
	Usage *usage `json:"-"`
	// The event has a member usage, null included: what forClient takes
	// out.
	usageGiven bool
	// The event's top-level member error, as written, when it is not
	// null: a backend's failure reported in the stream (vLLM sends one,
	// then [DONE], when its engine fails mid-answer). Read, like the
	// usage, from the member whose key is error exactly.
	Error json.RawMessage `json:"-"`
}

// hasRole reports whether a choice's delta gives the role.
func (e *event) hasRole() bool {
	for _, c := range e.Choices {
		if c.Delta.Role != "" {
			return true
		}
	}
	return false
}

// beyondText reports deltas other than text: tool calls, reasoning.
func (e *event) beyondText() bool {
	for _, c := range e.Choices {
		calls := c.Delta.ToolCalls
		if (len(calls) > 0 && string(calls) != "null") || c.Delta.reasoningText() != "" {
			return true
		}
	}
	return false
}

// reasoningText is a delta's reasoning under either name: reasoning
// when the server sends it, else reasoning_content (vLLM sends both with
// the same text while it keeps the old name; counted once).
func (d *delta) reasoningText() string {
	if d.Reasoning != "" {
		return d.Reasoning
	}
	return d.ReasoningContent
}

func (e *event) content() string {
	var s string
	for _, c := range e.Choices {
		s += c.Delta.Content + c.Text
	}
	return s
}

var (
	errCut        = errors.New("interrupted")
	errClientGone = errors.New("the client went away")
	errDiverged   = errors.New("the replay diverged from what the client has")
	// The backend ended the stream with [DONE] before every choice it sent
	// had its finish_reason.
	errNoFinish = errors.New("the backend ended the stream before its finish_reason")
	// The backend sent an event with an error member.
	errInBand = errors.New("the backend reported an error")
)

// relay passes the backend's events to the client one at a time, flushing
// each, and reports the ticket. When a leg breaks before the answer ends
// (the machine died, or a REPLAY plan cut it) and the request may be
// replayed, the stream is checkpointed into the replay queue and resumed
// from the leg a replay worker hands back. A first leg that breaks before
// its first event leaves the client nothing, not even its headers: relay
// then returns why, and the caller routes the request again or answers
// it; otherwise the client has had its answer and relay returns nil.
func (st *stream) relay(w http.ResponseWriter, ctx context.Context, resp *http.Response, l leg) error {
	g := st.g
	fl, _ := w.(http.Flusher)
	for {
		st.mu.Lock()
		had, hadTokens := st.text.Len(), st.tokens
		st.mu.Unlock()
		began := time.Now()
		done, err := st.relayLeg(w, fl, resp, &l)
		st.mu.Lock()
		if errors.Is(err, errEventWait) {
			st.quiet = append(st.quiet, l.replica)
		}
		if errors.Is(err, errCut) || g.retry.madeProgress(st.text.Len() > had, st.tokens-min(st.tokens, hadTokens),
			time.Since(began)) {
			// The replay worked: it streamed more of the answer to the
			// client, or a notice cut it, which says nothing of the replay.
			// The failures before it no longer count.
			st.failed = 0
		}
		st.mu.Unlock()
		resp.Body.Close()
		if l.cancel != nil {
			l.cancel()
		}
		if done {
			g.stats.ok.Add(1)
			return nil
		}
		if ctx.Err() != nil || errors.Is(err, errClientGone) {
			g.stats.cancelled.Add(1)
			return nil
		}
		if !st.began {
			return err
		}
		if errors.Is(err, errDiverged) {
			g.stats.failed.Add(1)
			writeStreamError(w, fl, "the stream was interrupted and its replay "+
				"answered differently from what was already sent")
			return nil
		}
		if tooLong(err) {
			g.stats.failed.Add(1)
			writeStreamError(w, fl, "the backend sent "+err.Error())
			return nil
		}
		if st.finished {
			// Cut after the finish_reason and before [DONE]: nothing of
			// the answer is missing, and a continuation would write past
			// the end. The usage chunk may be.
			st.endWhole(w, fl)
			g.stats.ok.Add(1)
			return nil
		}
		if !st.replayable || st.notContinued != "" {
			g.stats.failed.Add(1)
			if st.errorSent {
				return nil // the client has the backend's error event
			}
			msg := fmt.Sprintf("the backend stream broke: %v", err)
			if st.replayable {
				msg += "; not continued: " + st.notContinued
			}
			writeStreamError(w, fl, msg)
			return nil
		}
		var r resumption
		if r = st.resumeAfterCut(ctx, err); r.err != nil {
			if ctx.Err() != nil {
				g.stats.cancelled.Add(1)
				return nil
			}
			g.stats.failed.Add(1)
			writeStreamError(w, fl, "the stream was interrupted and could not be resumed: "+r.err.Error())
			return nil
		}
		if r.complete {
			// Cut after the last token max_tokens allows and before the
			// finish chunk: the answer is whole but for its ending.
			st.endLength(w, fl)
			g.stats.ok.Add(1)
			return nil
		}
		resp, l = r.resp, r.leg
		// Should this leg break too before it makes progress, that is one
		// more failed replay.
		st.mu.Lock()
		st.failed = r.attempts + 1
		st.replays++
		st.mu.Unlock()
	}
}

// begin sends the client's response headers, once, as its first event
// goes out: until then a broken leg leaves the client nothing, and the
// request can be routed again.
func (st *stream) begin(w http.ResponseWriter) {
	if st.began {
		return
	}
	st.began = true
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
}

// writeDone ends the client's stream as a backend's [DONE] would.
func writeDone(w io.Writer, fl http.Flusher) {
	io.WriteString(w, "data: [DONE]\n\n")
	if fl != nil {
		fl.Flush()
	}
}

// writeEvent writes one event to the client and flushes it. An event that
// holds bytes of -long-event-budget (held) is written within
// -long-event-write-wait: a client that stops reading would otherwise keep
// those bytes from every other stream for as long as its connection lives.
// A write that runs out of time fails, and the stream ends as the client's
// going away does, giving the bytes back.
func (g *gateway) writeEvent(w http.ResponseWriter, fl http.Flusher, data []byte, held bool) error {
	// A held (long) event may not wait on a client that stops reading for
	// longer than -long-event-write-wait; a writer without deadlines
	// writes as before. Short events take no controller.
	var rc *http.ResponseController
	if held {
		rc = http.NewResponseController(w)
		if rc.SetWriteDeadline(time.Now().Add(g.o.longEventWriteWait)) == nil {
			defer rc.SetWriteDeadline(time.Time{})
		}
	}
	if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
		return err
	}
	switch {
	case fl == nil:
		return nil
	case rc != nil:
		return rc.Flush()
	}
	fl.Flush()
	return nil
}

func writeStreamError(w io.Writer, fl http.Flusher, msg string) {
	b, _ := json.Marshal(map[string]any{"error": map[string]any{"message": msg, "type": "upstream_error"}})
	fmt.Fprintf(w, "data: %s\n\n", b)
	if fl != nil {
		fl.Flush()
	}
}

// relayLeg relays one leg; done is true when the answer ended ([DONE]).
func (st *stream) relayLeg(w http.ResponseWriter, fl http.Flusher, resp *http.Response, l *leg) (done bool, err error) {
	g := st.g
	st.register(l)
	defer st.unregister(l)
	rd := newSSEReader(newEventWaitBody(resp.Body, g.o.firstEventWait, g.o.eventWait, l.cancel), g.longEvents)
	defer rd.release()
	var tally legTally
	st.mu.Lock()
	baseEstimated := st.estimated && l.offset > 0
	st.mu.Unlock()
	var firstAt time.Time
	end := func(status spotinfer.TicketStatus) {
		res := tally.result(status)
		res.DurationMs = float64(time.Since(l.sent)) / 1e6
		if !firstAt.IsZero() {
			res.TTFTMs = float64(firstAt.Sub(l.sent)) / 1e6
		}
		g.finish(l.ticket, res)
	}
	for {
		data, rerr := rd.next()
		if rerr != nil {
			if errors.Is(rerr, errEventTooLong) {
				// The backend's answer, not its machine: not replayed.
				end(spotinfer.TicketError)
				return false, rerr
			}
			if errors.Is(rerr, errLongEventBudget) {
				// The gateway's memory, not the replica's fault.
				end(spotinfer.TicketCancelled)
				return false, rerr
			}
			if st.wasCut() {
				rerr = errCut
			}
			status := spotinfer.TicketError
			if rerr == errCut {
				status = spotinfer.TicketInterrupted
			} else if errors.Is(rerr, context.Canceled) {
				status = spotinfer.TicketCancelled
			}
			if st.replayable && status != spotinfer.TicketCancelled {
				status = spotinfer.TicketInterrupted
			}
			end(status)
			return false, rerr
		}
		if string(data) == "[DONE]" {
			if !st.choices.ended() {
				// A choice ended without its finish_reason: a backend
				// that gave up on it, not a whole answer.
				end(spotinfer.TicketError)
				return false, errNoFinish
			}
			st.begin(w)
			if _, err := io.WriteString(w, "data: [DONE]\n\n"); err != nil {
				end(spotinfer.TicketCancelled)
				return false, errClientGone
			}
			if fl != nil {
				fl.Flush()
			}
			end(spotinfer.TicketOK)
			return true, nil
		}
		var ev event
		if decodeEvent(data, &ev) != nil {
			continue // not JSON: pass nothing on
		}
		if ev.Error != nil {
			// The backend failed mid-answer and said so in the stream: the
			// leg is broken (the replica's fault: ERROR, which its breaker
			// counts). A stream that may be resumed, or that the client
			// has whole, does not pass the event on; any other stream ends
			// with it, unless the client has had nothing yet: the request
			// is then routed again.
			if st.began && !st.finished && (!st.replayable || st.notContinued != "") {
				if err := g.writeEvent(w, fl, data, rd.holding()); err != nil {
					end(spotinfer.TicketCancelled)
					return false, errClientGone
				}
				st.errorSent = true
			}
			end(spotinfer.TicketError)
			return false, fmt.Errorf("%w: %s", errInBand, ev.errorMessage())
		}
		text := ev.content()
		// Counted before anything is dropped: the backend generated it all.
		tally.add(g, l.ticket, &ev)
		st.lastUsage = tally.forClient(l.offset)
		if st.holdBack > 0 {
			tally.words.add(text) // all of it: a skipped text is the client's too
		}
		if st.hideUsage {
			var keep bool
			if data, keep = st.asked.forClient(data, &ev); !keep {
				continue
			}
		}
		if l.resumed {
			var drop, diverged bool
			data, drop, diverged = st.continuedEvent(data, &ev, &text, l)
			if diverged {
				end(spotinfer.TicketCancelled)
				return false, errDiverged
			}
			if drop {
				continue
			}
		}
		// The client gets the event before the text counts as delivered:
		// what a checkpoint holds is what the client has.
		st.begin(w)
		if err := g.writeEvent(w, fl, data, rd.holding()); err != nil {
			end(spotinfer.TicketCancelled)
			return false, errClientGone
		}
		if st.streamID == "" {
			// The id of the first event the client has (a leg that broke
			// before it wrote one may be followed by another's).
			st.streamID, st.head = ev.ID, ev.eventHead
		}
		if st.choices.add(&ev) {
			st.notContinued = whyChoices
		}
		st.roleSent = st.roleSent || ev.hasRole()
		st.usageSent = st.usageSent || (ev.usageGiven && len(ev.Choices) == 0)
		st.finished = st.choices.whole()
		if ev.beyondText() && st.notContinued == "" {
			st.notContinued = whyBeyondText
		}
		// The client has everything the leg generated so far: a from-scratch
		// replay's skipped events hold what it already had.
		st.mu.Lock()
		st.text.WriteString(text)
		has, estimated := tally.clientHas(st.holdBack)
		st.tokens = l.offset + has
		st.estimated = baseEstimated || estimated
		st.mu.Unlock()
		if text != "" && firstAt.IsZero() {
			firstAt = time.Now()
			if l.ticket.ID != 0 {
				t0 := time.Now()
				l.ticket.FirstToken()
				g.timings.ticket.add(time.Since(t0))
			}
		}
	}
}

// legTally is what a leg's ticket reports: its output tokens, while it
// streams and at the end, and the backend's usage.
type legTally struct {
	count          tokenCount
	words          wordRun // of the leg's text, for clientHas
	reported       uint64  // the last Progress
	prompt, cached uint64  // from the backend's usage, 0 without one
}

func (t *legTally) add(g *gateway, ticket spotinfer.Ticket, ev *event) {
	t.count.add(ev)
	if u := ev.Usage; u != nil {
		t.prompt, t.cached = u.PromptTokens, 0
		if u.Details != nil {
			t.cached = u.Details.CachedTokens
		}
	}
	// A backend's count may come in below an estimate: progress only ever
	// goes up.
	if t.count.n > t.reported && ticket.ID != 0 {
		t.reported = t.count.n
		t0 := time.Now()
		ticket.Progress(t.count.n)
		g.timings.ticket.add(time.Since(t0))
	}
}

func (t *legTally) result(status spotinfer.TicketStatus) spotinfer.TicketResult {
	return spotinfer.TicketResult{Status: status, PromptTokens: t.prompt,
		OutputTokens: t.count.n, CachedTokens: t.cached}
}

// continuedEvent adapts an event of a continuation leg: the role-only
// opening chunk is dropped (drop) when the client had one, a from-scratch
// replay's text the client already has is skipped, and the usage chunk
// counts the tokens of every leg. diverged: a from-scratch replay wrote
// something else than what the client has, which cannot be joined to it.
func (st *stream) continuedEvent(data []byte, ev *event, text *string, l *leg) (out []byte, drop, diverged bool) {
	if st.roleSent && len(ev.Choices) == 1 && ev.Choices[0].Delta.Role != "" && *text == "" &&
		ev.Choices[0].FinishReason == nil {
		return data, true, false
	}
	if l.skip != "" && *text != "" {
		n := len(l.skip)
		if len(*text) < n {
			n = len(*text)
		}
		if (*text)[:n] != l.skip[:n] {
			return data, false, true
		} else {
			l.skip = l.skip[n:]
			*text = (*text)[n:]
			if *text == "" && ev.Choices[0].FinishReason == nil {
				return data, true, false
			}
			// What is left of the text; a finish_reason goes on without
			// the text the client has.
			data = rewriteText(data, *text)
		}
	}
	// The client sees one stream: the first leg's id, and usage counting
	// every leg's tokens.
	newID := st.streamID != "" && ev.ID != "" && ev.ID != st.streamID
	addUsage := ev.Usage != nil && l.offset > 0
	if newID || addUsage {
		var m map[string]any
		if json.Unmarshal(data, &m) == nil {
			if newID {
				m["id"] = st.streamID
			}
			if u, ok := m["usage"].(map[string]any); ok && addUsage {
				// The continuation's prompt holds the tokens the client
				// already had: they move from prompt to completion, and
				// the total stays.
				off := float64(l.offset)
				p, _ := u["prompt_tokens"].(float64)
				c, _ := u["completion_tokens"].(float64)
				if p >= off {
					u["prompt_tokens"] = p - off
				}
				u["completion_tokens"] = c + off
				ev.Usage.CompletionTokens += l.offset
			}
			if b, err := json.Marshal(m); err == nil {
				data = b
			}
		}
	}
	return data, false, false
}

// rewriteText sets the text of the event's only choice.
func rewriteText(data []byte, text string) []byte {
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return data
	}
	cs, _ := m["choices"].([]any)
	if len(cs) != 1 {
		return data
	}
	c, _ := cs[0].(map[string]any)
	if d, ok := c["delta"].(map[string]any); ok {
		d["content"] = text
	} else {
		c["text"] = text
	}
	b, err := json.Marshal(m)
	if err != nil {
		return data
	}
	return b
}

// relayPassive is the yardstick's relay: the same event reading (within
// -first-event-wait and -event-wait, whose running out calls cancel),
// writing and flushing,
// without tickets or replays.
func (st *stream) relayPassive(w http.ResponseWriter, resp *http.Response, cancel context.CancelFunc) {
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rd := newSSEReader(newEventWaitBody(resp.Body, st.g.o.firstEventWait, st.g.o.eventWait, cancel), st.g.longEvents)
	defer rd.release()
	for {
		data, err := rd.next()
		if err != nil {
			st.g.stats.failed.Add(1)
			writeStreamError(w, fl, fmt.Sprintf("the backend stream broke: %v", err))
			return
		}
		if string(data) != "[DONE]" {
			// Decoded as the routed relay decodes every event, so that the
			// yardstick pays the same for it.
			var ev event
			_ = decodeEvent(data, &ev)
		}
		if err := st.g.writeEvent(w, fl, data, rd.holding()); err != nil {
			st.g.stats.cancelled.Add(1)
			return
		}
		if string(data) == "[DONE]" {
			st.g.stats.ok.Add(1)
			return
		}
	}
}

// maxWholeAnswer bounds a non-streamed answer the gateway holds whole.
const maxWholeAnswer = 64 << 20

// relayWhole passes a non-streamed answer on and reports its usage.
func (st *stream) relayWhole(w http.ResponseWriter, resp *http.Response, l leg) {
	g := st.g
	// One byte more than the bound tells an answer over it from one at it:
	// it is an error, not a truncated 200.
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxWholeAnswer+1))
	if err == nil && len(body) > maxWholeAnswer {
		err = fmt.Errorf("the answer is over %d bytes", maxWholeAnswer)
	}
	status := spotinfer.TicketOK
	res := spotinfer.TicketResult{}
	switch {
	case err != nil:
		status = spotinfer.TicketError
	case resp.StatusCode >= 400:
		status = spotinfer.TicketCancelled // the request's fault, not the replica's
	default:
		var out struct {
			Usage *struct {
				PromptTokens     uint64 `json:"prompt_tokens"`
				CompletionTokens uint64 `json:"completion_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal(body, &out) == nil && out.Usage != nil {
			res.PromptTokens, res.OutputTokens = out.Usage.PromptTokens, out.Usage.CompletionTokens
		}
	}
	res.Status = status
	res.DurationMs = float64(time.Since(l.sent)) / 1e6
	g.finish(l.ticket, res)
	if err != nil {
		g.stats.failed.Add(1)
		apiError(w, http.StatusBadGateway, "upstream_error", err.Error())
		return
	}
	if resp.StatusCode < 400 {
		g.stats.ok.Add(1)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	w.Write(body)
}
