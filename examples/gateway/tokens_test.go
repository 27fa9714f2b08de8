package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
)

// The estimate counts words, at least one for an event with output: exact
// for one token an event, a lower bound for several.
func TestEstimateTokens(t *testing.T) {
	for body, want := range map[string]uint64{
		`{"choices":[{"delta":{"role":"assistant","content":""}}]}`:                     0,
		`{"choices":[{"delta":{"content":" understanding"}}]}`:                          1,
		`{"choices":[{"delta":{"content":"\n\n"}}]}`:                                    1,
		`{"choices":[{"delta":{"content":"ing"}}]}`:                                     1,
		`{"choices":[{"delta":{"content":" alpha bravo\ncharlie  delta"}}]}`:            4,
		`{"choices":[{"text":" one two three"}]}`:                                       3,
		`{"choices":[{"delta":{"reasoning_content":"so then"}}]}`:                       2,
		`{"choices":[{"delta":{"reasoning":"so then"}}]}`:                               2,
		`{"choices":[{"delta":{"reasoning":"so then","reasoning_content":"so then"}}]}`: 2,
		`{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}`:                          1,
		`{"choices":[{"delta":{},"finish_reason":"stop"}]}`:                             0,
		`{"choices":[{"delta":{"content":"héllo wörld, ça va"}}]}`:                      4,
		`{"choices":[{"delta":{"content":"\u00a0x\u2003y"}}]}`:                          2,
		`{"choices":[{"delta":{"content":" a"}},{"index":1,"delta":{"content":" b"}}]}`: 2,
	} {
		var ev event
		if err := decodeEvent([]byte(body), &ev); err != nil {
			t.Fatal(err)
		}
		if got := ev.estimateTokens(); got != want {
			t.Errorf("%s: %d tokens, want %d", body, got, want)
		}
	}
}

// A backend's count replaces the estimate: it is the leg's so far.
func TestTokenCountTakesTheBackendsCount(t *testing.T) {
	var c tokenCount
	for _, body := range []string{
		`{"choices":[{"delta":{"content":" a b c"}}]}`,
		`{"choices":[{"delta":{"content":" d"}}]}`,
	} {
		var ev event
		decodeEvent([]byte(body), &ev)
		c.add(&ev)
	}
	if c.n != 4 || !c.estimated {
		t.Fatalf("estimated: %+v", c)
	}
	var ev event
	decodeEvent([]byte(`{"choices":[{"delta":{"content":" e"}}],"usage":{"completion_tokens":7}}`), &ev)
	c.add(&ev)
	if c.n != 7 || c.estimated {
		t.Fatalf("with the backend's count: %+v", c)
	}
}

// What a client asks for is read as vLLM reads it: an object asks for the
// usage chunk unless include_usage is false or null. Keys are read as
// decoded, and the last of a key given twice is the one read.
func TestAskRunningUsage(t *testing.T) {
	for _, c := range []struct {
		body    string
		changed bool
		asked   usageAsk
	}{
		{`{"stream":true,"messages":[]}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":null}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":{"include_usage":true,"other":1}}`, true, usageAsk{atEnd: true}},
		{`{"stream":true,"stream_options":{}}`, true, usageAsk{atEnd: true}},
		{`{"stream":true,"stream_options":{"include_usage":null}}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true}}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":{"continuous_usage_stats":true}}`, false,
			usageAsk{atEnd: true, running: true}},
		{`{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`, false,
			usageAsk{atEnd: true, running: true}},
		{`{"stream":true,"stream_option\u0073":{"include_usage":true,"other":1}}`, true, usageAsk{atEnd: true}},
		{`{"\u0073tream":true,"messages":[]}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":{"include_usage":true},"stream_option\u0073":null}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":null,"stream_options":{"include_usage":true,"other":1}}`, true,
			usageAsk{atEnd: true}},
		{`{"stream":false,"messages":[]}`, false, usageAsk{}},
		{`{"messages":[{"role":"user","content":"stream"}]}`, false, usageAsk{}},
		{`{"stream":true,"stream_options":"yes"}`, false, usageAsk{}},
		{`{"stream":true,"stream_options":{"include_usage":1}}`, false, usageAsk{}},
		{`[1]`, false, usageAsk{}},
	} {
		out, asked, changed := askRunningUsage([]byte(c.body))
		if changed != c.changed || asked != c.asked {
			t.Errorf("%s: changed %v asked %+v", c.body, changed, asked)
			continue
		}
		if !changed {
			if string(out) != c.body {
				t.Errorf("%s: rewritten as %s", c.body, out)
			}
			continue
		}
		if err := checkAsked([]byte(c.body), out); err != nil {
			t.Errorf("%s: %v", c.body, err)
		}
	}
}

// refMember is a top-level member as encoding/json reads it.
type refMember struct {
	key string
	val any
}

// refMembers reads the members of the JSON object data with encoding/json:
// keys decoded, each member kept (a key given twice too), in order.
func refMembers(data []byte) ([]refMember, bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	var out []refMember
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		var v any
		if dec.Decode(&v) != nil {
			return nil, false
		}
		out = append(out, refMember{tok.(string), v})
	}
	return out, true
}

// refLast is the value of the last member named key, as a decoder that
// keeps the last reads it.
func refLast(ms []refMember, key string) (any, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].key == key {
			return ms[i].val, true
		}
	}
	return nil, false
}

// refAsk is what a client asks for by the JSON object in, read as vLLM
// reads it, and whether the gateway can ask the backend for more (the body
// is streamed and its switches are booleans or null).
func refAsk(ms []refMember) (asked usageAsk, usable bool) {
	if s, _ := refLast(ms, "stream"); s != true {
		return usageAsk{}, false
	}
	v, _ := refLast(ms, "stream_options")
	if v == nil {
		return usageAsk{}, true
	}
	o, ok := v.(map[string]any)
	if !ok {
		return usageAsk{}, false
	}
	on := func(k string, def bool) (bool, bool) {
		x, given := o[k]
		b, isBool := x.(bool)
		return b || (!given && def), !given || x == nil || isBool
	}
	include, ok1 := on("include_usage", true)
	continuous, ok2 := on("continuous_usage_stats", false)
	if !ok1 || !ok2 {
		return usageAsk{}, false
	}
	return usageAsk{atEnd: include, running: include && continuous}, true
}

// checkAsked checks the body askRunningUsage made of in: every other
// member as it was, in order, and each stream_options member asking for
// include_usage and continuous_usage_stats with the other options of the
// last one in gave.
func checkAsked(in, out []byte) error {
	was, _ := refMembers(in)
	got, ok := refMembers(out)
	if !ok {
		return fmt.Errorf("asked as %s: not a JSON object", out)
	}
	prev, _ := refLast(was, "stream_options")
	want, _ := prev.(map[string]any)
	var rest, restWas []refMember
	for _, m := range got {
		if m.key != "stream_options" {
			rest = append(rest, m)
			continue
		}
		o, _ := m.val.(map[string]any)
		if o["include_usage"] != true || o["continuous_usage_stats"] != true {
			return fmt.Errorf("asked as %s", out)
		}
		for k, v := range want {
			if k != "include_usage" && k != "continuous_usage_stats" && !reflect.DeepEqual(o[k], v) {
				return fmt.Errorf("asked as %s: lost a stream option", out)
			}
		}
	}
	for _, m := range was {
		if m.key != "stream_options" {
			restWas = append(restWas, m)
		}
	}
	if !reflect.DeepEqual(rest, restWas) || len(got) < len(was) {
		return fmt.Errorf("asked as %s", out)
	}
	return nil
}

// What the client did not ask for is taken out; the rest of the event goes
// byte for byte.
func TestDropMember(t *testing.T) {
	for in, want := range map[string]string{
		`{"id":"a","choices":[],"usage":{"completion_tokens":3}}`:     `{"id":"a","choices":[]}`,
		`{"usage":{"completion_tokens":3},"id":"a","choices":[]}`:     `{"id":"a","choices":[]}`,
		`{ "usage" : {"a":[1,{"b":2}]} , "id":"a" }`:                  `{ "id":"a" }`,
		`{"id":"a","usage":null,"model":"m"}`:                         `{"id":"a","model":"m"}`,
		`{"usage":1}`:                                                 `{}`,
		`{"id":"a","choices":[{"usage":1}]}`:                          `{"id":"a","choices":[{"usage":1}]}`,
		`{"id":"usage","x":"usage"}`:                                  `{"id":"usage","x":"usage"}`,
		`[1,2]`:                                                       `[1,2]`,
		`{"id":`:                                                      `{"id":`,
		`{"id":"a","choices":[{"delta":{"content":"x"}}],"usage":{}}`: `{"id":"a","choices":[{"delta":{"content":"x"}}]}`,
		`{"id":"a","usag\u0065":{"completion_tokens":3}}`:             `{"id":"a"}`,
		`{"\u0075sage":1,"id":"a"}`:                                   `{"id":"a"}`,
		`{"usage":1,"usage":2,"id":"a","usage":3}`:                    `{"id":"a"}`,
		`{"usage":1 , "usag\u0065":2 }`:                               `{ }`,
		`{"id":"a","usage":1,"x":2,"usage":3}`:                        `{"id":"a","x":2}`,
		`{"usages":1,"usag":2,"usage\n":3}`:                           `{"usages":1,"usag":2,"usage\n":3}`,
	} {
		got := dropMember([]byte(in), "usage")
		if string(got) != want || json.Valid([]byte(in)) && !json.Valid(got) {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}

// membersSeeds are the fuzz tests' seeds: bodies and events, keys written
// with escapes and given twice.
var membersSeeds = []string{
	`{"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a\\\"b}"}]}`,
	`{"id":"a","choices":[{"delta":{"content":"x"}}],"usage":{"completion_tokens":3}}`,
	`{ "usage" : {"a":[1,{"b":2}]} , "id":"a" }`,
	`{"usage":1}`, `{"id":"a","usage":null,"model":"m"}`, `[1,{"usage":2}]`, `"usage"`, `{"a":-1.5e3,"usage":true}`,
	`{"stream":true}`, `{"model":"m", "stream" : true, "stream_options":{"include_usage":false,"x":[1]}}`,
	`{"stream":true,"stream_option\u0073":{"include_usage":true},"messages":[]}`,
	`{"\u0073tream":true,"stream_options":{},"usag\u0065":1}`,
	`{"usage":1,"usage":2,"id":"a","usage":3}`, `{"usage":1 , "usag\u0065":2}`,
	`{"stream":true,"stream_options":{"include_usage":true},"stream_options":{"continuous_usage_stats":true,"x":1}}`,
	`{"stream":true,"stream_options":{"include_usage":null,"continuous_usage_stats":true}}`,
	`{"stream":true,"stream_options":{"include_usage":"yes"}}`,
}

// On a JSON object, dropMember leaves the same members in the same order
// without every member named usage, however its key is written; on
// anything else the walk stays in bounds. go test runs the seeds;
// go test -fuzz FuzzDropMember looks further.
func FuzzDropMember(f *testing.F) {
	for _, s := range membersSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := dropMember([]byte(in), "usage")
		was, ok := refMembers([]byte(in))
		if !json.Valid([]byte(in)) || !ok {
			return
		}
		var want []refMember
		for _, m := range was {
			if m.key != "usage" {
				want = append(want, m)
			}
		}
		got, ok := refMembers(out)
		if !ok || !json.Valid(out) || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: gave %s", in, out)
		}
	})
}

// On a JSON object, askRunningUsage reads what the client asked for as a
// decoder reads it (keys decoded, the last of a key given twice), and a
// body it changes is the same body asking for the running count. go test
// runs the seeds; go test -fuzz FuzzAskRunningUsage looks further.
func FuzzAskRunningUsage(f *testing.F) {
	for _, s := range membersSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, asked, changed := askRunningUsage([]byte(in))
		ms, ok := refMembers([]byte(in))
		if !json.Valid([]byte(in)) || !ok {
			return
		}
		want, usable := refAsk(ms)
		if asked != want || changed != (usable && !want.running) {
			t.Fatalf("%s: asked %+v changed %v, want %+v changed %v", in, asked, changed, want,
				usable && !want.running)
		}
		if !changed {
			if string(out) != in {
				t.Fatalf("%s: rewritten as %s", in, out)
			}
			return
		}
		if err := checkAsked([]byte(in), out); err != nil {
			t.Fatalf("%s: %v", in, err)
		}
	})
}

// The member walk stays in bounds on every cut of a body and an event.
func TestMembersOnBrokenInput(t *testing.T) {
	for _, in := range []string{
		`{"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a\\\"b}"}]}`,
		`{"id":"a","choices":[{"delta":{"content":"x"}}],"usage":{"completion_tokens":3}}`,
	} {
		for n := 0; n <= len(in); n++ {
			for _, b := range []string{in[:n], in[:n] + "}", in[n:]} {
				dropMember([]byte(b), "usage")
				askRunningUsage([]byte(b))
			}
		}
	}
}

// The usage is the member whose key is usage exactly, as vLLM and OpenAI
// write it and as a client's decoder reads it: what is counted is what is
// taken out for a client that did not ask for it. A member named otherwise
// ("Usage", "USAGE", or "Completion_Tokens" inside the usage) is neither
// counted nor taken out; the event's words are counted instead.
func TestUsageKeyIsExact(t *testing.T) {
	const text = `{"id":"a","choices":[{"delta":{"content":" x y"}}]`
	for _, c := range []struct {
		in    string
		count uint64
		out   string // "" for the event as it came
	}{
		{text + `,"usage":{"completion_tokens":9}}`, 9, text + `}`},
		{text + `,"Usage":{"completion_tokens":9}}`, 2, ""},
		{text + `,"USAGE":{"completion_tokens":9}}`, 2, ""},
		{text + `,"usag\u0065":{"completion_tokens":9}}`, 9, text + `}`},
		{text + `,"Usage":{"completion_tokens":5},"usage":{"completion_tokens":9}}`, 9,
			text + `,"Usage":{"completion_tokens":5}}`},
		{text + `,"usage":{"completion_tokens":9},"USAGE":null}`, 9, text + `,"USAGE":null}`},
		{text + `,"usage":{"completion_tokens":5},"usage":{"completion_tokens":9}}`, 9, text + `}`},
		{text + `,"usage":{"Completion_Tokens":5,"completion_tokens":9,"COMPLETION_TOKENS":7}}`, 9, text + `}`},
		{text + `,"usage":{"completion_tokens":9},"usage":null}`, 2, text + `}`},
	} {
		var ev event
		if err := decodeEvent([]byte(c.in), &ev); err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		var n tokenCount
		n.add(&ev)
		out, keep := usageAsk{atEnd: true}.forClient([]byte(c.in), &ev)
		want := c.out
		if want == "" {
			want = c.in
		}
		if n.n != c.count || !keep || string(out) != want {
			t.Errorf("%s: counted %d (want %d), passed on %s (want %s)", c.in, n.n, c.count, out, want)
		}
	}
}

// The tokens a backend may hold text back for are 4 a character of the
// longest stop string but one, none when the stop string is sent too.
func TestStopHoldBack(t *testing.T) {
	for body, want := range map[string]uint64{
		`{"messages":[]}`:            0,
		`{"stop":"\n"}`:              0,
		`{"stop":"####"}`:            12,
		`{"stop":["a","</answer>"]}`: 32,
		`{"stop":["é!"]}`:            4,
		`{"stop":"####","include_stop_str_in_output":true}`:  0,
		`{"stop":"####","include_stop_str_in_output":false}`: 12,
		`{"stop":null}`:                     0,
		`{"stop":[]}`:                       0,
		`{"stop":7}`:                        0,
		`{"\u0073top":"ab"}`:                4,
		`{"stop":"abc","stop":null}`:        0,
		`{"Stop":"abc"}`:                    0,
		`{"messages":[{"content":"stop"}]}`: 0,
	} {
		if got := stopHoldBack([]byte(body)); got != want {
			t.Errorf("%s: %d, want %d", body, got, want)
		}
	}
}

// What the client has of a leg: the count, or with text held back the
// larger of its words and the backend's count less what may be held.
func TestClientHas(t *testing.T) {
	for _, c := range []struct {
		count, words, holdBack uint64
		estimated              bool
		want                   uint64
		wantEstimated          bool
	}{
		{13, 10, 0, false, 13, false},
		{13, 10, 12, false, 10, true},
		{40, 10, 12, false, 28, true},
		{13, 13, 12, false, 13, false},
		{13, 10, 12, true, 10, true},
		{9, 10, 12, true, 9, true},
		{0, 0, 12, false, 0, false},
	} {
		tl := legTally{count: tokenCount{n: c.count, estimated: c.estimated}, words: wordRun{n: c.words}}
		if got, est := tl.clientHas(c.holdBack); got != c.want || est != c.wantEstimated {
			t.Errorf("%+v: %d %v", c, got, est)
		}
	}
	var w wordRun
	for _, s := range []string{" he", "llo wo", "rld", " ", "x"} {
		w.add(s)
	}
	if w.n != 3 {
		t.Errorf("words of a text in pieces: %d, want 3", w.n)
	}
}

// A usage whose counts are whole numbers written with a fraction or an
// exponent is read; one the gateway cannot read (a string, a negative or
// fractional count) is no usage: the event and its text still go on, and
// its words are counted instead.
func TestUsageTheGatewayCannotReadKeepsTheEvent(t *testing.T) {
	const text = `{"id":"a","choices":[{"delta":{"content":" x y"}}]`
	for _, c := range []struct {
		in    string
		count uint64
	}{
		{text + `,"usage":{"prompt_tokens":3.0,"completion_tokens":9e0}}`, 9},
		{text + `,"usage":{"completion_tokens":"9"}}`, 2},
		{text + `,"usage":{"completion_tokens":-1}}`, 2},
		{text + `,"usage":{"completion_tokens":2.5}}`, 2},
		{text + `,"usage":{"completion_tokens":9,"prompt_tokens_details":{"cached_tokens":"all"}}}`, 2},
		{text + `,"usage":[9]}`, 2},
	} {
		var ev event
		if err := decodeEvent([]byte(c.in), &ev); err != nil {
			t.Fatalf("%s: the event is dropped: %v", c.in, err)
		}
		var n tokenCount
		n.add(&ev)
		if ev.content() != " x y" || n.n != c.count {
			t.Errorf("%s: text %q, counted %d (want %d)", c.in, ev.content(), n.n, c.count)
		}
	}
}
