package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// metrics serves the library's Prometheus text and the gateway's own
// counters after it.
func (g *gateway) metrics(w http.ResponseWriter, r *http.Request) {
	var b strings.Builder
	if g.eng != nil {
		text, err := g.eng.Metrics()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		b.WriteString(text)
	}
	s := &g.stats
	fmt.Fprintf(&b, "# HELP gateway_requests_total Client requests by outcome.\n# TYPE gateway_requests_total counter\n")
	for _, o := range []struct {
		name string
		v    uint64
	}{{"ok", s.ok.Load()}, {"failed", s.failed.Load()}, {"cancelled", s.cancelled.Load()},
		{"shed", s.shed.Load()}, {"no_capacity", s.noCapacity.Load()}, {"overloaded", s.overloaded.Load()},
		{"bad_request", s.badRequest.Load()}} {
		fmt.Fprintf(&b, "gateway_requests_total{outcome=%q} %d\n", o.name, o.v)
	}
	counter := func(name, help string, v uint64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s counter\n%s %d\n", name, help, name, name, v)
	}
	counter("gateway_fallbacks_total", "Tries routed again, the replicas tried so far excluded, after a try failed before the first byte.", s.fallbacks.Load())
	counter("gateway_notices_total", "Interruption notices handed to the library (each event once).", s.notices.Load())
	counter("gateway_streams_cut_total", "Requests cut for a REPLAY plan.", s.interrupted.Load())
	counter("gateway_rerouted_total", "Requests cut before their first byte, or whose stream broke before its first event, routed again.", s.rerouted.Load())
	fmt.Fprintf(&b, "# HELP gateway_replays_total Stream replays by step.\n# TYPE gateway_replays_total counter\n")
	for _, o := range []struct {
		name string
		v    uint64
	}{{"enqueued", s.replayEnqueued.Load()}, {"resumed", s.replayResumed.Load()}, {"failed", s.replayFailed.Load()}} {
		fmt.Fprintf(&b, "gateway_replays_total{step=%q} %d\n", o.name, o.v)
	}
	if lb := g.longEvents; lb != nil {
		fmt.Fprintf(&b, "# HELP gateway_long_event_bytes Bytes held for server-sent events over a stream's read buffer, "+
			"against -long-event-budget.\n# TYPE gateway_long_event_bytes gauge\ngateway_long_event_bytes %d\n", lb.held())
		counter("gateway_long_event_refusals_total", "Events over a stream's read buffer refused: -long-event-budget was spent.",
			lb.refused.Load())
	}
	if g.queue != nil {
		// With its store unreachable the queue's gauges would read 0: left out.
		if qs, err := g.queue.Stats(); err == nil && !qs.StoreUnreachable {
			ready := qs.Ready[0] + qs.Ready[1] + qs.Ready[2] + qs.Ready[3]
			fmt.Fprintf(&b, "# HELP gateway_replay_queue Envelopes in the replay queue by state.\n# TYPE gateway_replay_queue gauge\n")
			for _, o := range []struct {
				name string
				v    uint64
			}{{"ready", ready}, {"leased", qs.Leased}, {"delayed", qs.Delayed}, {"dead", qs.Dead}} {
				fmt.Fprintf(&b, "gateway_replay_queue{state=%q} %d\n", o.name, o.v)
			}
			counter("gateway_replay_queue_acked_total", "Envelopes acked (resumed or given up for a gone client).", qs.Acked)
			// A damaged journal opens with SPI_OK; these say it was damaged.
			counter("gateway_replay_journal_damaged_ranges_total", "Damaged journal ranges met when the queue opened (skipped or cut off).", qs.Torn)
			counter("gateway_replay_journal_damaged_bytes_total", "Bytes of those ranges.", qs.TruncatedBytes)
			counter("gateway_replay_journal_repaired_records_total", "Journal records read back whole when the queue opened although their length field was damaged (nothing lost).", qs.Repaired)
			fmt.Fprintf(&b, "# HELP gateway_replay_journal_aside_files Files of damaged journal bytes kept for inspection (*.corrupt).\n# TYPE gateway_replay_journal_aside_files gauge\ngateway_replay_journal_aside_files %d\n", qs.AsideFiles)
		}
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	io.WriteString(w, b.String())
}

func (g *gateway) healthz(w http.ResponseWriter, r *http.Request) {
	out := map[string]any{"ready": g.ready.Load(), "balancer": g.o.balancer}
	status := http.StatusOK
	if !g.ready.Load() {
		status = http.StatusServiceUnavailable
	}
	if g.eng != nil {
		reps, err := g.eng.Replicas()
		if err != nil {
			status = http.StatusInternalServerError
			out["error"] = err.Error()
		}
		list := make([]map[string]any, 0, len(reps))
		for _, rs := range reps {
			list = append(list, map[string]any{"id": rs.ID, "state": replicaStateName(rs.State),
				"load_fresh": rs.LoadFresh, "inflight": rs.Inflight, "running": rs.Running})
		}
		out["replicas"] = list
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(out)
}

// timing reports the time spent in the library: per request, parsing and
// routing (the decision), and reporting tickets (each call).
func (g *gateway) timing(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"decision": g.timings.decision.summary(), "ticket_call": g.timings.ticket.summary()})
}

type timings struct{ decision, ticket samples }

// samples keeps the last 64Ki durations.
type samples struct {
	mu    sync.Mutex
	ring  [1 << 16]int64
	n     uint64
	total time.Duration
}

func (s *samples) add(d time.Duration) {
	s.mu.Lock()
	s.ring[s.n%uint64(len(s.ring))] = int64(d)
	s.n++
	s.total += d
	s.mu.Unlock()
}

func (s *samples) summary() map[string]any {
	s.mu.Lock()
	k := s.n
	if k > uint64(len(s.ring)) {
		k = uint64(len(s.ring))
	}
	v := append([]int64(nil), s.ring[:k]...)
	n, total := s.n, s.total
	s.mu.Unlock()
	out := map[string]any{"count": n}
	if len(v) == 0 {
		return out
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	q := func(p float64) int64 { return v[int(p*float64(len(v)-1))] }
	out["p50_ns"], out["p99_ns"], out["mean_ns"] = q(0.5), q(0.99), int64(total)/int64(n)
	return out
}

func replicaStateName(s spotinfer.ReplicaState) string {
	switch s {
	case spotinfer.ReplicaActive:
		return "active"
	case spotinfer.ReplicaDraining:
		return "draining"
	case spotinfer.ReplicaNoticed:
		return "noticed"
	}
	return fmt.Sprintf("state %d", int(s))
}
