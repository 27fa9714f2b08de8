package main

import (
	"encoding/json"
	"reflect"
	"strings"
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
		`{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}`:                          1,
		`{"choices":[{"delta":{},"finish_reason":"stop"}]}`:                             0,
		`{"choices":[{"delta":{"content":"héllo wörld, ça va"}}]}`:                      4,
		`{"choices":[{"delta":{"content":"\u00a0x\u2003y"}}]}`:                          2,
		`{"choices":[{"delta":{"content":" a"}},{"index":1,"delta":{"content":" b"}}]}`: 2,
	} {
		var ev event
		if err := json.Unmarshal([]byte(body), &ev); err != nil {
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
		json.Unmarshal([]byte(body), &ev)
		c.add(&ev)
	}
	if c.n != 4 || !c.estimated {
		t.Fatalf("estimated: %+v", c)
	}
	var ev event
	json.Unmarshal([]byte(`{"choices":[{"delta":{"content":" e"}}],"usage":{"completion_tokens":7}}`), &ev)
	c.add(&ev)
	if c.n != 7 || c.estimated {
		t.Fatalf("with the backend's count: %+v", c)
	}
}

func TestAskRunningUsage(t *testing.T) {
	type opts struct {
		IncludeUsage *bool `json:"include_usage"`
		Continuous   *bool `json:"continuous_usage_stats"`
		Other        *int  `json:"other"`
	}
	for _, c := range []struct {
		body    string
		changed bool
		asked   usageAsk
	}{
		{`{"stream":true,"messages":[]}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":null}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":{"include_usage":true,"other":1}}`, true, usageAsk{atEnd: true}},
		{`{"stream":true,"stream_options":{"continuous_usage_stats":true}}`, true, usageAsk{}},
		{`{"stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}`, false,
			usageAsk{atEnd: true, running: true}},
		{`{"stream":false,"messages":[]}`, false, usageAsk{}},
		{`{"messages":[{"role":"user","content":"stream"}]}`, false, usageAsk{}},
		{`{"stream":true,"stream_options":"yes"}`, false, usageAsk{}},
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
		var m struct {
			Stream        bool `json:"stream"`
			StreamOptions opts `json:"stream_options"`
		}
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatal(err)
		}
		o := m.StreamOptions
		if !m.Stream || o.IncludeUsage == nil || !*o.IncludeUsage || o.Continuous == nil || !*o.Continuous {
			t.Errorf("%s: sent as %s", c.body, out)
		}
		if c.asked.atEnd && (o.Other == nil || *o.Other != 1) {
			t.Errorf("%s: lost a stream option: %s", c.body, out)
		}
	}
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
	} {
		got := dropMember([]byte(in), "usage")
		if string(got) != want || json.Valid([]byte(in)) && !json.Valid(got) {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
}

// On a JSON object, dropMember leaves the same object without the member,
// and askRunningUsage the same streamed body asking for usage; on anything
// else the walk stays in bounds. go test runs the seeds;
// go test -fuzz FuzzDropMember looks further.
func FuzzDropMember(f *testing.F) {
	for _, s := range []string{
		`{"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"a\\\"b}"}]}`,
		`{"id":"a","choices":[{"delta":{"content":"x"}}],"usage":{"completion_tokens":3}}`,
		`{ "usage" : {"a":[1,{"b":2}]} , "id":"a" }`,
		`{"usage":1}`, `{"id":"a","usage":null,"model":"m"}`, `[1,{"usage":2}]`, `"usage"`, `{"a":-1.5e3,"usage":true}`,
		`{"stream":true}`, `{"model":"m", "stream" : true, "stream_options":{"include_usage":false,"x":[1]}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := dropMember([]byte(in), "usage")
		body, _, changed := askRunningUsage([]byte(in))
		var before map[string]any
		if json.Unmarshal([]byte(in), &before) != nil || before == nil {
			return
		}
		keys := map[string]bool{}
		eachMember([]byte(in), func(m member) bool {
			keys[string(m.key)] = true
			return true
		})
		for k := range before {
			if !keys[k] {
				return // an escaped key: not looked at
			}
		}
		if changed {
			var got map[string]any
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("%s: asked as %s: %v", in, body, err)
			}
			opts, _ := got["stream_options"].(map[string]any)
			was, _ := before["stream_options"].(map[string]any)
			for k, v := range was {
				if k != "include_usage" && k != "continuous_usage_stats" && !reflect.DeepEqual(opts[k], v) {
					t.Fatalf("%s: asked as %s", in, body)
				}
			}
			delete(got, "stream_options")
			delete(before, "stream_options")
			if opts["include_usage"] != true || opts["continuous_usage_stats"] != true ||
				!reflect.DeepEqual(got, before) {
				t.Fatalf("%s: asked as %s", in, body)
			}
			return
		}
		if strings.Count(in, `"usage"`) > 1 {
			return // which one goes is not said
		}
		var after map[string]any
		if err := json.Unmarshal(out, &after); err != nil {
			t.Fatalf("%s: gave %s: %v", in, out, err)
		}
		delete(before, "usage")
		if !reflect.DeepEqual(before, after) {
			t.Fatalf("%s: gave %s", in, out)
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
