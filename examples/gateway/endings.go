package main

import (
	"encoding/json"
	"net/http"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// The chunks a backend would have sent at the end of a stream that was cut
// after the answer was whole and before them: the gateway writes them
// itself, in the shape of the stream's own events.

// eventHead is what every event of a stream repeats, as the first one
// gave it.
type eventHead struct {
	Object  string          `json:"object"`
	Created json.RawMessage `json:"created"`
	Model   string          `json:"model"`
}

// clientUsage is a usage as the client sees it.
type clientUsage struct {
	prompt, completion uint64
}

// forClient is the leg's usage as the client sees it: the continuation's
// prompt holds the offset tokens the client already had, which move from
// prompt to completion (as continuedEvent moves them in the backend's usage
// chunk).
func (t *legTally) forClient(offset uint64) clientUsage {
	u := clientUsage{prompt: t.prompt, completion: t.count.n + offset}
	if u.prompt >= offset {
		u.prompt -= offset
	}
	return u
}

// endWhole ends a stream whose answer the client has whole: the usage
// chunk it asked for (stream_options.include_usage) and did not have yet,
// from the last leg's count, then [DONE].
func (st *stream) endWhole(w http.ResponseWriter, fl http.Flusher) {
	if st.asked.atEnd && !st.usageSent {
		st.writeChunk(w, fl, []any{}, true)
	}
	writeDone(w, fl)
}

// endLength ends a stream that has every token its max_tokens allows and
// no finish_reason yet: the finish chunk (finish_reason "length", with the
// usage when the client asked for it in every chunk), then as endWhole.
func (st *stream) endLength(w http.ResponseWriter, fl http.Flusher) {
	c := map[string]any{"index": 0, "finish_reason": "length"}
	if st.kind == spotinfer.OpenAICompletions {
		c["text"] = ""
	} else {
		c["delta"] = map[string]any{}
	}
	st.writeChunk(w, fl, []any{c}, st.asked.running)
	st.endWhole(w, fl)
}

// writeChunk writes an event of the stream's with these choices, and with
// the usage when withUsage.
func (st *stream) writeChunk(w http.ResponseWriter, fl http.Flusher, choices []any, withUsage bool) {
	obj := st.head.Object
	if obj == "" {
		obj = "chat.completion.chunk"
		if st.kind == spotinfer.OpenAICompletions {
			obj = "text_completion"
		}
	}
	m := map[string]any{"id": st.streamID, "object": obj, "choices": choices}
	if len(st.head.Created) > 0 {
		m["created"] = st.head.Created
	}
	if st.head.Model != "" {
		m["model"] = st.head.Model
	}
	if withUsage {
		u := st.lastUsage
		m["usage"] = map[string]uint64{"prompt_tokens": u.prompt, "completion_tokens": u.completion,
			"total_tokens": u.prompt + u.completion}
	}
	data, err := json.Marshal(m)
	if err != nil {
		return
	}
	st.begin(w)
	st.g.writeEvent(w, fl, data, false)
}
