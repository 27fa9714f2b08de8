package main

import (
	"bytes"
	"container/list"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

type server struct {
	o     options
	slots chan struct{} // one per sequence decoded at once

	mu         sync.Mutex
	running    int
	waiting    int
	kvInUse    float64 // tokens held by running sequences
	cache      *prefixCache
	queries    uint64 // prompt tokens looked up in the prefix cache
	hits       uint64 // of which were cached
	promptToks uint64
	genToks    uint64
	requests   map[string]uint64 // finished requests by finish reason

	logMu sync.Mutex
	logF  *os.File
	seq   uint64
}

func newServer(o options) (*server, error) {
	s := &server{o: o, slots: make(chan struct{}, o.maxRunning),
		cache: newPrefixCache(o.prefixBlocks, o.prefixTTL), requests: map[string]uint64{}}
	if o.logPath != "" {
		f, err := os.OpenFile(o.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		s.logF = f
	}
	return s, nil
}

// event appends one JSON line to the log, written at once (no buffer), so
// the log is complete even when the process dies at -die-at.
func (s *server) event(fields map[string]any) {
	if s.logF == nil {
		return
	}
	fields["t"] = float64(time.Now().UnixNano()) / 1e9
	fields["server"] = s.o.id
	b, _ := json.Marshal(fields)
	s.logMu.Lock()
	s.logF.Write(append(b, '\n'))
	s.logMu.Unlock()
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// apiError answers in vLLM's error shape.
func apiError(w http.ResponseWriter, status int, msg string) {
	typ := "BadRequestError"
	if status == http.StatusMethodNotAllowed {
		typ = "MethodNotAllowed"
	}
	writeJSON(w, status, map[string]any{"object": "error", "message": msg,
		"type": typ, "param": nil, "code": status})
}

// job is one generation: where its sequence starts and how far it goes.
type job struct {
	kind         string // "chat" or "text"
	seed         uint64
	offset       int // tokens already generated (a continuation)
	count        int // tokens to generate now
	finish       string
	promptTokens int
	cachedTokens int
	stream       bool
	usage        bool // a usage chunk at the end (include_usage)
	usageEach    bool // usage in every chunk too (continuous_usage_stats)
	created      int64
	id           string
}

type chatBody struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	MaxTokens            *int           `json:"max_tokens"`
	MaxCompletionTokens  *int           `json:"max_completion_tokens"`
	Stream               bool           `json:"stream"`
	ContinueFinalMessage bool           `json:"continue_final_message"`
	AddGenerationPrompt  *bool          `json:"add_generation_prompt"`
	StreamOptions        *streamOptions `json:"stream_options"`
}

// streamOptions are vLLM's: continuous_usage_stats puts the usage so far
// in every chunk, and only counts with include_usage. include_usage is true
// unless the object says false or null (vLLM's default; OpenAI's is false),
// and stream_options null or absent asks for no usage.
type streamOptions struct {
	IncludeUsage         *bool `json:"include_usage"`
	ContinuousUsageStats *bool `json:"continuous_usage_stats"`
}

func (o *streamOptions) UnmarshalJSON(data []byte) error {
	type fields streamOptions
	yes := true
	f := fields{IncludeUsage: &yes} // null sets it to nil
	if err := json.Unmarshal(data, &f); err != nil {
		return err
	}
	*o = streamOptions(f)
	return nil
}

func (o *streamOptions) set(j *job) {
	if o != nil {
		on := func(b *bool) bool { return b != nil && *b }
		j.usage = on(o.IncludeUsage)
		j.usageEach = j.usage && on(o.ContinuousUsageStats)
	}
}

// text of a message content: a string, or the text parts of a list.
func contentText(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return "", fmt.Errorf("content must be a string or a list of parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String(), nil
}

func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err != nil {
		return err
	}
	d := json.NewDecoder(bytes.NewReader(b))
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("malformed JSON body: %v", err)
	}
	return nil
}

func (s *server) chat(w http.ResponseWriter, r *http.Request) {
	var b chatBody
	if err := decodeBody(r, &b); err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	if len(b.Messages) == 0 {
		apiError(w, http.StatusBadRequest, "messages must be a non-empty list")
		return
	}
	addGen := b.AddGenerationPrompt == nil || *b.AddGenerationPrompt
	if b.ContinueFinalMessage && addGen {
		// vLLM refuses this combination the same way.
		apiError(w, http.StatusBadRequest, "continue_final_message and add_generation_prompt cannot both be true")
		return
	}
	var prompt, system, partial strings.Builder
	msgs := b.Messages
	last := len(msgs) - 1
	if b.ContinueFinalMessage {
		if msgs[last].Role != "assistant" {
			apiError(w, http.StatusBadRequest, "continue_final_message needs a final assistant message")
			return
		}
		t, err := contentText(msgs[last].Content)
		if err != nil {
			apiError(w, http.StatusBadRequest, "messages["+fmt.Sprint(last)+"]: "+err.Error())
			return
		}
		partial.WriteString(t)
		msgs = msgs[:last]
	}
	for i, m := range msgs {
		t, err := contentText(m.Content)
		if err != nil {
			apiError(w, http.StatusBadRequest, fmt.Sprintf("messages[%d]: %v", i, err))
			return
		}
		if m.Role == "system" || m.Role == "developer" {
			system.WriteString(t)
		}
		fmt.Fprintf(&prompt, "%s\x1f%s\x1e", m.Role, t)
	}
	maxTokens := b.MaxTokens
	if b.MaxCompletionTokens != nil {
		maxTokens = b.MaxCompletionTokens
	}
	j, ok := s.plan(w, "chat", prompt.String(), partial.String(), maxTokens)
	if !ok {
		return
	}
	j.stream = b.Stream
	b.StreamOptions.set(&j)
	s.event(map[string]any{"event": "request", "path": r.URL.Path, "request_id": r.Header.Get("X-Request-Id"), "system": hash(system.String()),
		"prompt": hash(prompt.String()), "continuation": b.ContinueFinalMessage, "offset": j.offset,
		"count": j.count, "stream": j.stream, "cached_tokens": j.cachedTokens})
	s.serve(w, r, j)
}

type completionBody struct {
	Model         string          `json:"model"`
	Prompt        json.RawMessage `json:"prompt"`
	MaxTokens     *int            `json:"max_tokens"`
	Stream        bool            `json:"stream"`
	StreamOptions *streamOptions  `json:"stream_options"`
}

func (s *server) completions(w http.ResponseWriter, r *http.Request) {
	var b completionBody
	if err := decodeBody(r, &b); err != nil {
		apiError(w, http.StatusBadRequest, err.Error())
		return
	}
	var p string
	if err := json.Unmarshal(b.Prompt, &p); err != nil {
		var one []string
		if json.Unmarshal(b.Prompt, &one) != nil || len(one) != 1 {
			apiError(w, http.StatusBadRequest, "prompt must be a string (or a list of one string)")
			return
		}
		p = one[0]
	}
	head, _ := splitCompletionPrompt(p)
	j, ok := s.plan(w, "text", head, p[len(head):], b.MaxTokens)
	if !ok {
		return
	}
	j.stream = b.Stream
	b.StreamOptions.set(&j)
	s.event(map[string]any{"event": "request", "path": r.URL.Path, "request_id": r.Header.Get("X-Request-Id"), "system": "",
		"prompt": hash(head), "continuation": j.offset > 0, "offset": j.offset,
		"count": j.count, "stream": j.stream, "cached_tokens": j.cachedTokens})
	s.serve(w, r, j)
}

func hash(s string) string {
	if s == "" {
		return ""
	}
	h := fnv.New64a()
	h.Write([]byte(s))
	return fmt.Sprintf("%016x", h.Sum64())
}

// plan works out what a request generates: the sequence of its prompt, from
// where the already streamed text ends, up to the answer's natural end or
// max_tokens. The prompt (with the partial text) goes through the prefix
// cache, which sets the time to first token.
func (s *server) plan(w http.ResponseWriter, kind, prompt, partial string, maxTokens *int) (job, bool) {
	j := job{kind: kind, seed: seedOf(prompt), created: time.Now().Unix()}
	k, ok := continuedTokens(j.seed, partial)
	if !ok {
		apiError(w, http.StatusBadRequest, fmt.Sprintf(
			"the final message does not continue this prompt's answer (it matches %d tokens, then differs)", k))
		return j, false
	}
	j.offset = k
	limit := s.o.defaultMaxTokens
	if maxTokens != nil {
		if *maxTokens < 1 {
			apiError(w, http.StatusBadRequest, "max_tokens must be at least 1")
			return j, false
		}
		limit = *maxTokens
	}
	// A final message that already holds the whole answer gets no more
	// text and finish_reason "stop", as from vLLM (the model's next token
	// ends it).
	left := max(s.o.answerTokens-k, 0)
	j.count, j.finish = left, "stop"
	if limit < left {
		j.count, j.finish = limit, "length"
	}
	full := prompt + partial
	j.promptTokens = (len(full) + 3) / 4
	s.mu.Lock()
	matched := s.cache.lookupInsert(full, time.Now())
	j.cachedTokens = matched * blockBytes / 4
	if j.cachedTokens > j.promptTokens {
		j.cachedTokens = j.promptTokens
	}
	s.queries += uint64(j.promptTokens)
	s.hits += uint64(j.cachedTokens)
	s.seq++
	j.id = fmt.Sprintf("%s-%d", s.o.id, s.seq)
	s.mu.Unlock()
	return j, true
}

func (s *server) ttft(j job) time.Duration {
	if j.promptTokens == 0 {
		return s.o.warmTTFT
	}
	uncached := float64(j.promptTokens-j.cachedTokens) / float64(j.promptTokens)
	return s.o.warmTTFT + time.Duration(uncached*float64(s.o.coldTTFT-s.o.warmTTFT))
}

// admit waits for a decode slot (the request counts as waiting meanwhile).
func (s *server) admit(r *http.Request, j job) bool {
	s.mu.Lock()
	s.waiting++
	s.mu.Unlock()
	select {
	case s.slots <- struct{}{}:
	case <-r.Context().Done():
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
		return false
	}
	s.mu.Lock()
	s.waiting--
	s.running++
	s.kvInUse += float64(j.promptTokens + j.count)
	s.promptToks += uint64(j.promptTokens)
	s.mu.Unlock()
	return true
}

func (s *server) release(j job, generated int, finish string) {
	<-s.slots
	s.mu.Lock()
	s.running--
	s.kvInUse -= float64(j.promptTokens + j.count)
	s.genToks += uint64(generated)
	s.requests[finish]++
	s.mu.Unlock()
	s.event(map[string]any{"event": "done", "id": j.id, "generated": generated, "finish": finish})
}

// chunk is the event holding tokens i..i+n-1 of the job (i < 0: the role
// chunk; finish set: the finishing chunk, with no text).
func (s *server) chunk(j job, i, n int, finish string) map[string]any {
	var text strings.Builder
	for k := i; i >= 0 && finish == "" && k < i+n; k++ {
		text.WriteString(token(j.seed, j.offset+k))
	}
	var choice map[string]any
	if j.kind == "chat" {
		delta := map[string]any{}
		switch {
		case i < 0:
			delta["role"], delta["content"] = "assistant", ""
		case finish == "":
			delta["content"] = text.String()
		}
		choice = map[string]any{"index": 0, "delta": delta, "logprobs": nil}
	} else {
		choice = map[string]any{"index": 0, "text": text.String(), "logprobs": nil, "stop_reason": nil}
	}
	if finish != "" {
		choice["finish_reason"] = finish
	} else {
		choice["finish_reason"] = nil
	}
	return s.envelope(j, []any{choice}, true)
}

func (s *server) envelope(j job, choices []any, stream bool) map[string]any {
	obj := "text_completion"
	if j.kind == "chat" {
		obj = "chat.completion"
		if stream {
			obj = "chat.completion.chunk"
		}
	}
	return map[string]any{"id": j.id, "object": obj, "created": j.created,
		"model": s.o.model, "system_fingerprint": s.o.id, "choices": choices}
}

func (s *server) usage(j job, generated int) map[string]any {
	u := map[string]any{"prompt_tokens": j.promptTokens, "completion_tokens": generated,
		"total_tokens": j.promptTokens + generated}
	if j.cachedTokens > 0 {
		u["prompt_tokens_details"] = map[string]any{"cached_tokens": j.cachedTokens}
	}
	return u
}

// serve generates the job: a stream of server-sent events, flushed one per
// -tokens-per-event tokens (the last may hold fewer), or one JSON answer
// after the same time.
func (s *server) serve(w http.ResponseWriter, r *http.Request, j job) {
	if !s.admit(r, j) {
		s.event(map[string]any{"event": "done", "id": j.id, "generated": 0, "finish": "client_gone"})
		return
	}
	generated, finish := 0, "client_gone"
	defer func() { s.release(j, generated, finish) }()
	timer := time.NewTimer(s.ttft(j))
	defer timer.Stop()
	per := time.Duration(float64(time.Second) / s.o.tokenRate)
	wait := func() bool {
		select {
		case <-timer.C:
			timer.Reset(per)
			return true
		case <-r.Context().Done():
			return false
		}
	}
	if !j.stream {
		for generated < j.count {
			if !wait() {
				return
			}
			generated++
		}
		var text strings.Builder
		for i := 0; i < j.count; i++ {
			text.WriteString(token(j.seed, j.offset+i))
		}
		choice := map[string]any{"index": 0, "finish_reason": j.finish, "logprobs": nil}
		if j.kind == "chat" {
			choice["message"] = map[string]any{"role": "assistant", "content": text.String()}
		} else {
			choice["text"] = text.String()
		}
		resp := s.envelope(j, []any{choice}, false)
		resp["usage"] = s.usage(j, generated)
		writeJSON(w, http.StatusOK, resp)
		finish = j.finish
		return
	}
	fl, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	// send writes an event; with continuous usage stats it carries the
	// tokens generated so far, as vLLM's do.
	send := func(v map[string]any, sofar int) bool {
		if j.usageEach {
			v["usage"] = s.usage(j, sofar)
		}
		b, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		if fl != nil {
			fl.Flush()
		}
		return true
	}
	if !wait() {
		return
	}
	if j.kind == "chat" && !send(s.chunk(j, -1, 0, ""), 0) {
		return
	}
	for generated < j.count {
		// An event goes out with the last of its tokens, each decoded at
		// the token rate, as with vLLM's stream interval or speculative
		// decoding.
		n := min(s.o.tokensPerEvent, j.count-generated)
		for k := 0; k < n; k++ {
			if generated+k > 0 && !wait() {
				return
			}
		}
		if !send(s.chunk(j, generated, n, ""), generated+n) {
			return
		}
		generated += n
	}
	if !send(s.chunk(j, generated, 0, j.finish), generated) {
		return
	}
	if j.usage {
		u := s.envelope(j, []any{}, true)
		u["usage"] = s.usage(j, generated)
		j.usageEach = false // the final usage chunk has its own
		if !send(u, generated) {
			return
		}
	}
	fmt.Fprint(w, "data: [DONE]\n\n")
	if fl != nil {
		fl.Flush()
	}
	finish = j.finish
}

// metrics serves vLLM's own metric names (V1 engine; -legacy-metrics
// gives the V0 name of KV usage), labelled as vLLM labels them.
func (s *server) metrics(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	running, waiting := s.running, s.waiting
	usage := s.kvInUse / s.o.kvTokens
	if usage > 1 {
		usage = 1
	}
	q, h, pt, gt := s.queries, s.hits, s.promptToks, s.genToks
	reqs := make(map[string]uint64, len(s.requests))
	for k, v := range s.requests {
		reqs[k] = v
	}
	s.mu.Unlock()
	labels := fmt.Sprintf(`{engine="0",model_name=%q}`, s.o.model)
	usageName := "vllm:kv_cache_usage_perc"
	if s.o.legacyMetrics {
		usageName = "vllm:gpu_cache_usage_perc"
	}
	var b strings.Builder
	gauge := func(name, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s%s %g\n", name, help, name, name, labels, v)
	}
	counter := func(name, help string, v uint64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n%s_total%s %d.0\n", name, help, name, name, labels, v)
	}
	gauge("vllm:num_requests_running", "Number of requests in model execution batches.", float64(running))
	gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", float64(waiting))
	gauge(usageName, "KV-cache usage. 1 means 100 percent usage.", usage)
	counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.", q)
	counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.", h)
	counter("vllm:prompt_tokens", "Number of prefill tokens processed.", pt)
	counter("vllm:generation_tokens", "Number of generation tokens processed.", gt)
	b.WriteString("# HELP vllm:request_success Count of successfully processed requests.\n# TYPE vllm:request_success counter\n")
	for _, reason := range []string{"stop", "length"} {
		fmt.Fprintf(&b, "vllm:request_success_total{engine=\"0\",finished_reason=%q,model_name=%q} %d.0\n",
			reason, s.o.model, reqs[reason])
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	io.WriteString(w, b.String())
}

// prefixCache holds chained hashes of 256-byte prompt blocks, least
// recently used first out, each warm for a TTL: a prompt's matched prefix
// is the run of leading blocks found.
const blockBytes = 256

type prefixCache struct {
	cap   int
	ttl   time.Duration
	order *list.List // of uint64, most recent at the front
	items map[uint64]*list.Element
	seen  map[uint64]time.Time
}

func newPrefixCache(capacity int, ttl time.Duration) *prefixCache {
	return &prefixCache{cap: capacity, ttl: ttl, order: list.New(),
		items: map[uint64]*list.Element{}, seen: map[uint64]time.Time{}}
}

// lookupInsert returns how many leading full blocks of text were cached,
// then caches all of them.
func (c *prefixCache) lookupInsert(text string, now time.Time) int {
	if c.cap == 0 {
		return 0
	}
	matched, prefix := 0, true
	h := fnv.New64a()
	for off := 0; off+blockBytes <= len(text); off += blockBytes {
		h.Write([]byte(text[off : off+blockBytes]))
		k := h.Sum64()
		if at, ok := c.seen[k]; prefix && ok && now.Sub(at) <= c.ttl {
			matched++
		} else {
			prefix = false
		}
		c.seen[k] = now
		if e, ok := c.items[k]; ok {
			c.order.MoveToFront(e)
		} else {
			c.items[k] = c.order.PushFront(k)
		}
		for c.order.Len() > c.cap {
			old := c.order.Remove(c.order.Back()).(uint64)
			delete(c.items, old)
			delete(c.seen, old)
		}
	}
	return matched
}
