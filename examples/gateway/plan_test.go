package main

import (
	"encoding/json"
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
