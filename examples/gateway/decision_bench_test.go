package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// BenchmarkDecision is the library's work for one gateway request, as the
// load run sends them (8 KiB system prompt): parse the body, route, finish
// the ticket. The load run reports the same calls timed inside the gateway.
func BenchmarkDecision(b *testing.B) {
	e, err := spotinfer.NewEngine(`{"router":{"load_max_age_ms":3600000}}`)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	for i, pool := range []spotinfer.Pool{spotinfer.PoolSpot, spotinfer.PoolSpot, spotinfer.PoolOnDemand} {
		id := fmt.Sprintf("b%d", i)
		if err := e.UpsertReplica(spotinfer.ReplicaInfo{ID: id, Pool: pool, Zone: id,
			InstanceType: "g5.xlarge", USDPerHour: 1, MaxInflight: 256}); err != nil {
			b.Fatal(err)
		}
		e.ReportLoad(id, spotinfer.Load{})
	}
	var bodies [][]byte
	for f := 0; f < 8; f++ {
		sys := strings.Repeat(fmt.Sprintf("Family %d policy: answer briefly. ", f), 300)[:8192]
		body, _ := json.Marshal(map[string]any{"model": "fake-model", "stream": true, "max_tokens": 32,
			"metadata": map[string]any{"class": "silver"},
			"messages": []any{map[string]any{"role": "system", "content": sys},
				map[string]any{"role": "user", "content": "question"}}})
		bodies = append(bodies, body)
	}
	req, err := e.NewRequest()
	if err != nil {
		b.Fatal(err)
	}
	defer req.Close()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := req.ParseOpenAI(bodies[i%len(bodies)], spotinfer.OpenAIChat); err != nil {
			b.Fatal(err)
		}
		d, err := req.Route()
		if err != nil || !d.Serving() {
			b.Fatalf("%v %+v", err, d)
		}
		d.Ticket.Finish(spotinfer.TicketResult{Status: spotinfer.TicketOK, OutputTokens: 32})
	}
}
