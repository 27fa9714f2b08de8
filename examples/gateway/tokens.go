package main

import (
	"bytes"
	"encoding/json"
	"unicode"
	"unicode/utf8"
)

// What the gateway counts as a stream's output tokens, and where it gets
// the count.
//
// The stream offset (the replay envelope's StreamOffset) is the output
// tokens the client already has: a continuation may generate what is left of
// the client's max_tokens and of the decision's cap, and the usage the
// client gets adds the offset to the continuation's own count. A leg's count
// is also its ticket's (Progress while it streams, OutputTokens at the end),
// which the library's drain plans and ledger read. An event is not a token:
// vLLM puts several tokens in one event with a stream interval or
// speculative decoding, and none in an event for tokens a parser holds back.
//
// The count, best first:
//   - The backend's own. vLLM and SGLang put the usage so far in every chunk
//     with stream_options.continuous_usage_stats (and include_usage), which
//     the gateway asks for (-backend-usage) and takes out again for a client
//     that did not ask for it; the usage chunk at the end gives the total.
//   - Else an estimate from the text: an event's whitespace-separated words,
//     and at least one for an event with any output. Tokenizers split text
//     at whitespace before they merge (the pre-tokenization of byte-level
//     BPE, as in GPT-2, cl100k, Llama 3 and Qwen; SentencePiece's split by
//     whitespace, as in Llama 2 and Mistral), so no token spans two words:
//     the count is a lower bound, exact for one token an event and for text
//     of whole-word tokens, and short by the word pieces otherwise (English
//     prose runs about 1.3 tokens a word). A ratio of bytes (the library's
//     router.bytes_per_token) is right only on average over long text, and
//     wrong for the common event of one token: " understanding" is one
//     token, 3.5 by 4 bytes a token. Counting short errs on the safe side:
//     a stream is never taken for complete (nothing left of max_tokens)
//     when it is not, the library sees a stream further from its end and
//     replays it rather than drain it, and the client is not billed for
//     tokens it did not get; the cost is a continuation that may write that
//     many tokens past max_tokens.
//
// The stream offset is what the client has, which the backend's running
// count may run ahead of: vLLM holds back the last characters of the
// output, one fewer than the longest stop string has, so as not to send
// the start of a stop string it then takes out, and counts their tokens.
// For a body with stop strings the offset is lowered to a lower bound of
// the tokens of the text sent (legTally.clientHas, stopHoldBack); the
// ticket keeps the backend's count, since the backend generated them. Not
// covered: vLLM also holds back the bytes of a character whose tokens have
// not all come (up to 3 tokens), with or without stop strings
// (docs/integrations.md).

// tokenCount is one leg's output tokens so far.
type tokenCount struct {
	n         uint64
	estimated bool // n holds an estimate: the backend did not count it
}

// add counts an event, before anything in it is dropped: the backend
// generated all of it.
func (c *tokenCount) add(ev *event) {
	if ev.Usage != nil {
		// The backend's count of the leg so far, or its total at the end.
		c.n, c.estimated = ev.Usage.CompletionTokens, false
		return
	}
	if k := ev.estimateTokens(); k > 0 {
		c.n += k
		c.estimated = true
	}
}

// estimateTokens is the words of the event's output (text, reasoning), at
// least one when it has any output (tool calls included).
func (e *event) estimateTokens() uint64 {
	var n uint64
	output := e.beyondText()
	for _, c := range e.Choices {
		for _, s := range [...]string{c.Delta.Content, c.Text, c.Delta.reasoningText()} {
			n += words(s)
			output = output || s != ""
		}
	}
	if n == 0 && output {
		n = 1
	}
	return n
}

// words counts the runs of non-space characters in s.
func words(s string) uint64 {
	var n uint64
	in := false
	for _, r := range s {
		space := unicode.IsSpace(r)
		if !space && !in {
			n++
		}
		in = !space
	}
	return n
}

// wordRun counts the words of a text given in pieces: a word cut across
// two pieces counts once.
type wordRun struct {
	n  uint64
	in bool
}

func (w *wordRun) add(s string) {
	for _, r := range s {
		space := unicode.IsSpace(r)
		if !space && !w.in {
			w.n++
		}
		w.in = !space
	}
}

// clientHas is the output tokens of the leg the client has, and whether
// that is an estimate: the leg's count, but for a stream whose backend
// may hold text back (holdBack > 0, stopHoldBack), at most the larger of
// two lower bounds of the tokens in the text sent, its words (tokens.go's
// estimate, counted over the whole text, as a held back piece of a word
// may come in the next event) and, from the backend's own count, that
// count less the most tokens held back.
func (t *legTally) clientHas(holdBack uint64) (uint64, bool) {
	n, estimated := t.count.n, t.count.estimated
	if holdBack == 0 {
		return n, estimated
	}
	floor := t.words.n
	if !estimated && n > holdBack {
		floor = max(floor, n-holdBack)
	}
	if floor < n {
		return floor, true
	}
	return n, estimated
}

// stopHoldBack is the most output tokens a backend may have counted and
// not yet sent the text of, for the body's stop strings. vLLM holds back
// the last characters of the output, one fewer than the longest stop
// string has, so as not to send the start of a stop string it then takes
// out (unless include_stop_str_in_output is true); its running count
// (continuous_usage_stats) counts their tokens. A character is at most 4
// bytes and a token at least 1, so those characters touch at most 4 a
// character. Keys as the backend reads them: decoded, the last given.
func stopHoldBack(body []byte) uint64 {
	if !bytes.Contains(body, []byte(`"stop"`)) && !bytes.Contains(body, []byte(`\u`)) {
		return 0
	}
	var stop []byte
	include := false
	eachMember(body, func(m member) bool {
		switch {
		case m.is("stop"):
			stop = body[m.val:m.end]
		case m.is("include_stop_str_in_output"):
			include = string(body[m.val:m.end]) == "true"
		}
		return true
	})
	if stop == nil || include {
		return 0
	}
	var one string
	var list []string
	if json.Unmarshal(stop, &one) == nil {
		list = []string{one}
	} else if json.Unmarshal(stop, &list) != nil {
		return 0 // the backend refuses it
	}
	longest := 0
	for _, s := range list {
		longest = max(longest, utf8.RuneCountInString(s))
	}
	if longest < 2 {
		return 0
	}
	return 4 * uint64(longest-1)
}

// usageAsk is the usage a client's stream_options asked for.
type usageAsk struct {
	atEnd   bool // include_usage: a usage chunk before [DONE]
	running bool // continuous_usage_stats too: the usage so far in every chunk
}

// askRunningUsage returns a streamed body that asks the backend for its
// running count (include_usage and continuous_usage_stats), what the client
// asked for, and whether the body changed: when it did, the relay takes out
// of the events what the client did not ask for. Only stream_options
// changes (members.go). A body that is not streamed, or already asks for
// both, goes as it came; so does one whose stream_options is not an object
// or holds a switch that is neither a boolean nor null (the backend says
// what is wrong with it, or reads it its own way).
//
// What the client asked for is read as vLLM reads it, so that a client
// gets the same usage through the gateway as from vLLM itself, and the same
// with -backend-usage=false: stream_options null or absent asks for
// nothing; an object asks for the usage chunk unless include_usage is
// false or null (vLLM's default is true, OpenAI's false), and for the
// running count with continuous_usage_stats true as well.
func askRunningUsage(body []byte) ([]byte, usageAsk, bool) {
	var asked usageAsk
	// Most whole answers are seen without a scan; a key written with
	// escapes ("\u0073tream") needs one.
	if !bytes.Contains(body, []byte(`"stream"`)) && !bytes.Contains(body, []byte(`\u`)) {
		return body, asked, false
	}
	var stream member
	var opts []member
	eachMember(body, func(m member) bool {
		switch {
		case m.is("stream"):
			stream = m // the last one given is the one read
		case m.is("stream_options"):
			opts = append(opts, m)
		}
		return true
	})
	if stream.key == nil || string(body[stream.val:stream.end]) != "true" {
		return body, asked, false
	}
	var o map[string]json.RawMessage
	if len(opts) > 0 {
		last := opts[len(opts)-1]
		if string(body[last.val:last.end]) != "null" {
			if json.Unmarshal(body[last.val:last.end], &o) != nil || o == nil {
				return body, asked, false
			}
		}
	}
	if o != nil {
		include, ok1 := switchOf(o, "include_usage", true)
		continuous, ok2 := switchOf(o, "continuous_usage_stats", false)
		if !ok1 || !ok2 {
			return body, asked, false
		}
		asked = usageAsk{atEnd: include, running: include && continuous}
	}
	if asked.running {
		return body, asked, false
	}
	if o == nil {
		o = map[string]json.RawMessage{}
	}
	o["include_usage"] = json.RawMessage("true")
	o["continuous_usage_stats"] = json.RawMessage("true")
	raw, err := json.Marshal(o)
	if err != nil {
		return body, asked, false
	}
	if len(opts) > 0 {
		// Every stream_options the body gives says the same, for a
		// decoder that reads the first as for one that reads the last.
		return withValue(body, opts, raw), asked, true
	}
	from := skipSpace(body, 0) + 1 // a new first member
	raw = append(append([]byte(`"stream_options":`), raw...), ',')
	out := make([]byte, 0, len(body)+len(raw))
	return append(append(append(out, body[:from]...), raw...), body[from:]...), asked, true
}

// switchOf reads a stream option as vLLM does: absent is the default, null
// is false; ok is false for anything but a boolean or null.
func switchOf(o map[string]json.RawMessage, key string, def bool) (on, ok bool) {
	raw, given := o[key]
	switch {
	case !given:
		return def, true
	case string(raw) == "null":
		return false, true
	}
	return on, json.Unmarshal(raw, &on) == nil
}

// forClient takes out of an event the usage the gateway asked for and the
// client did not: the running count in a chunk with choices, and the usage
// chunk at the end (keep is then false: nothing is passed on).
func (a usageAsk) forClient(data []byte, ev *event) (out []byte, keep bool) {
	switch {
	case !ev.usageGiven:
		return data, true
	case len(ev.Choices) == 0:
		return data, a.atEnd
	case a.running:
		return data, true
	}
	ev.Usage, ev.usageGiven = nil, false
	return dropMember(data, "usage"), true
}

// dropMember returns the JSON object data (valid JSON) without its
// top-level member key (each of them, and written with escapes too), every
// other byte as it was; data as it came when it is not an object or has no
// such member.
func dropMember(data []byte, key string) []byte {
	return withoutMembers(data, key)
}
