package main

import (
	"encoding/json"
	"strconv"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// toolKeys are what "tools not allowed" takes out of a body: the tool
// definitions and the switches that ask the model to use them.
var toolKeys = []string{"tools", "tool_choice", "parallel_tool_calls", "functions", "function_call"}

// applyPlan returns the body the backend gets under the decision's degrade
// plan: a non-zero MaxOutputTokens lowers max_tokens and
// max_completion_tokens to it (and sets max_tokens when the body gives
// neither), so a request cannot generate more than the library priced;
// ToolsAllowed false takes the tool keys out. A body the plan does not
// change, or that is not a JSON object, goes as it came.
func applyPlan(body []byte, d spotinfer.Decision) []byte {
	if d.MaxOutputTokens <= 0 && d.ToolsAllowed {
		return body
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil || m == nil {
		return body
	}
	changed := false
	if d.MaxOutputTokens > 0 {
		capText := json.RawMessage(strconv.FormatInt(d.MaxOutputTokens, 10))
		given := false
		for _, k := range []string{"max_tokens", "max_completion_tokens"} {
			raw, ok := m[k]
			if !ok || string(raw) == "null" {
				continue
			}
			given = true
			var n int64
			if json.Unmarshal(raw, &n) == nil && n > 0 && n <= d.MaxOutputTokens {
				continue
			}
			m[k] = capText
			changed = true
		}
		if !given {
			m["max_tokens"] = capText
			changed = true
		}
	}
	if !d.ToolsAllowed {
		for _, k := range toolKeys {
			if _, ok := m[k]; ok {
				delete(m, k)
				changed = true
			}
		}
	}
	if !changed {
		return body
	}
	out, err := json.Marshal(m)
	if err != nil {
		return body
	}
	return out
}
