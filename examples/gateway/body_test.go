package main

import (
	"encoding/json"
	"strings"
	"testing"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

func planned(t *testing.T, body string, d spotinfer.Decision) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(applyPlan([]byte(body), d), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// The decision's output cap reaches the backend, and "no tools" takes the
// tool keys out; a body the plan does not change goes byte for byte.
func TestApplyPlan(t *testing.T) {
	body := `{"model":"m","messages":[],"max_tokens":4000,"tools":[{"type":"function"}],"tool_choice":"auto"}`
	free := spotinfer.Decision{ToolsAllowed: true}
	if got := string(applyPlan([]byte(body), free)); got != body {
		t.Fatalf("unchanged body rewritten: %s", got)
	}
	m := planned(t, body, spotinfer.Decision{ToolsAllowed: true, MaxOutputTokens: 512})
	if m["max_tokens"] != 512.0 || m["tools"] == nil {
		t.Fatalf("cap: %v", m)
	}
	m = planned(t, `{"model":"m","max_completion_tokens":100}`, spotinfer.Decision{ToolsAllowed: true, MaxOutputTokens: 512})
	if m["max_completion_tokens"] != 100.0 || m["max_tokens"] != nil {
		t.Fatalf("below the cap: %v", m)
	}
	m = planned(t, `{"model":"m"}`, spotinfer.Decision{ToolsAllowed: true, MaxOutputTokens: 256})
	if m["max_tokens"] != 256.0 {
		t.Fatalf("no max given: %v", m)
	}
	m = planned(t, body, spotinfer.Decision{ToolsAllowed: false})
	if m["tools"] != nil || m["tool_choice"] != nil || m["max_tokens"] != 4000.0 {
		t.Fatalf("tools: %v", m)
	}
	if got := string(applyPlan([]byte(`[1]`), spotinfer.Decision{MaxOutputTokens: 5})); got != `[1]` {
		t.Fatalf("not an object: %s", got)
	}
}

// A continuation's usage moves the tokens the client already had from
// prompt to completion; a from-scratch replay that writes something else
// than what the client has is reported, not spliced on.
func TestContinuedEvent(t *testing.T) {
	st := &stream{streamID: "a"}
	l := &leg{offset: 5, resumed: true}
	data := []byte(`{"id":"b","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":7,"total_tokens":27}}`)
	var ev event
	if err := decodeEvent(data, &ev); err != nil {
		t.Fatal(err)
	}
	text := ""
	out, drop, diverged := st.continuedEvent(data, &ev, &text, l)
	if drop || diverged {
		t.Fatal(drop, diverged)
	}
	var m struct {
		ID    string             `json:"id"`
		Usage map[string]float64 `json:"usage"`
	}
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	if m.ID != "a" || m.Usage["prompt_tokens"] != 15 || m.Usage["completion_tokens"] != 12 ||
		m.Usage["total_tokens"] != 27 {
		t.Fatalf("usage: %s", out)
	}
	l = &leg{resumed: true, skip: "Hello"}
	d2 := []byte(`{"id":"a","choices":[{"delta":{"content":"Help"}}]}`)
	ev = event{}
	if err := decodeEvent(d2, &ev); err != nil {
		t.Fatal(err)
	}
	text = ev.content()
	if _, _, diverged = st.continuedEvent(d2, &ev, &text, l); !diverged {
		t.Fatal("a diverging replay was not reported")
	}
	// An event whose text the client has all of is dropped, unless it
	// carries the finish_reason: that goes on, without the text.
	for _, c := range []struct {
		data string
		drop bool
	}{{`{"id":"a","choices":[{"delta":{"content":"Hel"}}]}`, true},
		{`{"id":"a","choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}`, false}} {
		ev = event{}
		if err := decodeEvent([]byte(c.data), &ev); err != nil {
			t.Fatal(err)
		}
		text = ev.content()
		out, drop, diverged := st.continuedEvent([]byte(c.data), &ev, &text, l)
		if drop != c.drop || diverged || text != "" {
			t.Fatalf("%s: drop %v, diverged %v, text %q", c.data, drop, diverged, text)
		}
		if !drop && (!strings.Contains(string(out), `"content":""`) ||
			!strings.Contains(string(out), `"finish_reason":"stop"`)) {
			t.Fatalf("%s came out as %s", c.data, out)
		}
	}
}

// A stream that had tool-call or reasoning deltas is not continued after
// a cut: its checkpoint holds text only.
func TestBeyondText(t *testing.T) {
	for body, want := range map[string]bool{
		`{"choices":[{"delta":{"content":"hi"}}]}`:                                          false,
		`{"choices":[{"delta":{"tool_calls":null,"content":"hi"}}]}`:                        false,
		`{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}`: true,
		`{"choices":[{"delta":{"reasoning_content":"think"}}]}`:                             true,
		`{"choices":[{"delta":{"reasoning":"think"}}]}`:                                     true,
	} {
		var ev event
		if err := decodeEvent([]byte(body), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.beyondText() != want {
			t.Fatalf("%s: %v", body, !want)
		}
	}
}

// The choices a body asks for are its n as the backend reads it: the last
// given, its key as decoded.
func TestAskedChoices(t *testing.T) {
	for body, want := range map[string]int{
		`{"model":"m","messages":[]}`: 0,
		`{"n":1}`:                     1,
		`{"n":3,"messages":[{"content":"\"n\": 1"}]}`: 3,
		`{"\u006e":2}`:  2,
		`{"n":2,"n":1}`: 1,
		`{"n":null}`:    0,
		`{"N":4,"messages":[{"role":"user","content":"n"}]}`: 0,
		`{"x":{"n":5}}`: 0,
	} {
		if got := askedChoices([]byte(body)); got != want {
			t.Errorf("%s: %d, want %d", body, got, want)
		}
	}
}

// A stream has several choices when the body asks for more than one, when
// an event has more than one, when its events name more than one index,
// or when a choice's index is not 0 (a stream of one choice numbers it 0).
func TestSeveralChoices(t *testing.T) {
	for _, c := range []struct {
		name   string
		asked  int
		events []string
		want   bool
	}{
		{"one choice", 0, []string{`{"choices":[{"index":0}]}`, `{"choices":[{"index":0}]}`}, false},
		{"no index", 1, []string{`{"choices":[{}]}`}, false},
		{"n=2", 2, []string{`{"choices":[{"index":0}]}`}, true},
		{"two in one event", 0, []string{`{"choices":[{"index":0},{"index":1}]}`}, true},
		{"two indexes", 0, []string{`{"choices":[{"index":0}]}`, `{"choices":[{"index":1}]}`}, true},
		{"only index 1", 0, []string{`{"choices":[{"index":1}]}`}, true},
		{"index 0 written otherwise", 0, []string{`{"choices":[{"index":0.0}]}`, `{"choices":[{"index":0e0}]}`}, false},
	} {
		cs := choiceSet{asked: c.asked}
		several := false
		for _, e := range c.events {
			var ev event
			if err := decodeEvent([]byte(e), &ev); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			several = cs.add(&ev) || several
		}
		if several != c.want {
			t.Errorf("%s: several %v, want %v", c.name, several, c.want)
		}
	}
}

// At [DONE] an answer is whole when every choice the backend sent had its
// finish_reason, however many the body asked for; before [DONE], as many
// as asked must have had theirs.
func TestChoicesEndedAndWhole(t *testing.T) {
	for _, c := range []struct {
		name         string
		asked        int
		events       []string
		ended, whole bool
	}{
		{"none", 0, nil, false, false},
		{"one finished", 0, []string{`{"choices":[{"index":0,"finish_reason":"stop"}]}`}, true, true},
		{"one of n=2 sent, finished", 2, []string{`{"choices":[{"index":0,"finish_reason":"stop"}]}`}, true, false},
		{"two sent, one finished", 2, []string{`{"choices":[{"index":0,"finish_reason":"stop"}]}`,
			`{"choices":[{"index":1}]}`}, false, false},
		{"two sent, both finished", 2, []string{`{"choices":[{"index":0,"finish_reason":"stop"}]}`,
			`{"choices":[{"index":1,"finish_reason":"length"}]}`}, true, true},
		{"sent, none finished", 0, []string{`{"choices":[{"index":0}]}`}, false, false},
	} {
		cs := choiceSet{asked: c.asked}
		for _, e := range c.events {
			var ev event
			if err := decodeEvent([]byte(e), &ev); err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			cs.add(&ev)
		}
		if cs.ended() != c.ended || cs.whole() != c.whole {
			t.Errorf("%s: ended %v whole %v, want %v %v", c.name, cs.ended(), cs.whole(), c.ended, c.whole)
		}
	}
}
