package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// BenchmarkAskRunningUsage is the gateway's own work to ask a backend for
// its running count, on a body as the load run sends them (8 KiB system
// prompt, stream_options.include_usage): once a request and leg.
func BenchmarkAskRunningUsage(b *testing.B) {
	sys := strings.Repeat("Family 0 policy: answer briefly. ", 300)[:8192]
	body, _ := json.Marshal(map[string]any{"model": "fake-model", "stream": true, "max_tokens": 32,
		"stream_options": map[string]any{"include_usage": true}, "metadata": map[string]any{"class": "silver"},
		"messages": []any{map[string]any{"role": "system", "content": sys},
			map[string]any{"role": "user", "content": "question"}}})
	b.SetBytes(int64(len(body)))
	for i := 0; i < b.N; i++ {
		if _, _, changed := askRunningUsage(body); !changed {
			b.Fatal("unchanged")
		}
	}
}

// BenchmarkHideUsage is the work of each event the gateway relays with
// the backend's running count in it: decoding the event (as the relay does
// for every event) and taking the usage out for a client that asked for it
// at the end only.
func BenchmarkHideUsage(b *testing.B) {
	for _, running := range []bool{false, true} {
		data := []byte(`{"id":"fakellm-1","object":"chat.completion.chunk","created":1700000000,` +
			`"model":"fake-model","system_fingerprint":"fakellm","choices":[{"index":0,` +
			`"delta":{"content":" alpha"},"logprobs":null,"finish_reason":null}]`)
		if running {
			data = append(data, `,"usage":{"prompt_tokens":2060,"completion_tokens":7,"total_tokens":2067}`...)
		}
		data = append(data, '}')
		b.Run(fmt.Sprintf("running_usage=%v", running), func(b *testing.B) {
			a := usageAsk{atEnd: true}
			for i := 0; i < b.N; i++ {
				var ev event
				if decodeEvent(data, &ev) != nil {
					b.Fatal("bad event")
				}
				a.forClient(data, &ev)
			}
		})
	}
}
