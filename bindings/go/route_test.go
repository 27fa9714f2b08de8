package spotinfer

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

const sec = int64(1_000_000_000)

var systemPrompt = func() string {
	b := make([]byte, 4095)
	for i := range b {
		b[i] = "abcdefgh "[i%9]
	}
	return string(b)
}()

type fakeClock struct{ now atomic.Int64 }

func (c *fakeClock) read() int64 { return c.now.Load() }

func world(t testing.TB, config string) (*Engine, *fakeClock) {
	t.Helper()
	clk := &fakeClock{}
	clk.now.Store(1_700_000_000 * sec)
	e, err := NewEngineWithHooks(config, Hooks{Clock: clk.read})
	must(t, err)
	t.Cleanup(func() { e.Close() })
	return e, clk
}

func fleet(t testing.TB, e *Engine) {
	t.Helper()
	for _, r := range []struct {
		id   string
		pool Pool
	}{{"spot-a", PoolSpot}, {"spot-b", PoolSpot}, {"od-a", PoolOnDemand}, {"od-b", PoolOnDemand}} {
		usd := 1.8
		if r.pool == PoolOnDemand {
			usd = 4.5
		}
		must(t, e.UpsertReplica(ReplicaInfo{ID: r.id, Pool: r.pool, USDPerHour: usd,
			MaxInflight: 16, Zone: "z1", InstanceType: "g5.xlarge"}))
		must(t, e.ReportLoad(r.id, Load{Running: 1, KVUsage: 0.2}))
	}
}

// chat fills r like the C route tests do.
func chat(t testing.TB, r *Request, user string, stream bool, slaMs int64, tier string, replayable int) {
	t.Helper()
	must(t, r.Reset())
	must(t, r.SetStr(FieldModel, "llama"))
	must(t, r.AddMessage("system", systemPrompt))
	must(t, r.AddMessage("user", user))
	must(t, r.SetBool(FieldStream, stream))
	if slaMs > 0 {
		must(t, r.SetInt(FieldSLAMs, slaMs))
	}
	if tier != "" {
		must(t, r.SetStr(FieldServiceTier, tier))
	}
	if replayable >= 0 {
		must(t, r.SetInt(FieldReplayable, int64(replayable)))
	}
}

func TestReplicas(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.UpsertReplica(ReplicaInfo{ID: "r1", Pool: PoolSpot, USDPerHour: 1.8,
		MaxInflight: 8, Models: []string{"llama", "qwen"}}))
	must(t, e.UpsertReplica(ReplicaInfo{ID: "r2", Pool: PoolOnDemand, USDPerHour: 4.5, MaxInflight: 4}))
	if e.ReplicaCount() != 2 {
		t.Fatal(e.ReplicaCount())
	}
	s, err := e.ReplicaStatusOf("r1")
	must(t, err)
	if s.ID != "r1" || s.Pool != PoolSpot || s.State != ReplicaActive || s.Breaker != BreakerClosed ||
		s.MaxInflight != 8 || s.LoadAtNs != 0 || s.LoadFresh {
		t.Fatalf("%+v", s)
	}
	must(t, e.ReportLoad("r1", Load{Running: 2, Waiting: 1, KVUsage: 0.5}))
	s, _ = e.ReplicaStatusOf("r1")
	if s.Running != 2 || s.Waiting != 1 || s.KVUsage != 0.5 || !s.LoadFresh {
		t.Fatalf("%+v", s)
	}
	all, err := e.Replicas()
	must(t, err)
	if len(all) != 2 || all[1].ID != "r2" {
		t.Fatal(all)
	}
	must(t, e.SetReplicaState("r1", ReplicaDraining))
	if s, _ := e.ReplicaStatusAt(0); s.State != ReplicaDraining {
		t.Fatal(s.State)
	}
	must(t, e.RemoveReplica("r1"))
	if _, err := e.ReplicaStatusOf("r1"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if err := e.RemoveReplica("r1"); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	err = e.UpsertReplica(ReplicaInfo{ID: "r3", Pool: PoolSpot, MaxInflight: 1})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "usd_per_hour") {
		t.Fatal(err)
	}
	if err := e.ReportLoad("r2", Load{KVUsage: 1.5}); !errors.Is(err, ErrRange) {
		t.Fatal(err)
	}
}

const vllmMetrics = `# HELP vllm:num_requests_running Number of requests running.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="llama"} 3.0
vllm:num_requests_waiting{model_name="llama"} 1.0
vllm:gpu_cache_usage_perc{model_name="llama"} 0.42
`

func TestMetricsParse(t *testing.T) {
	l, err := ParseMetrics([]byte(vllmMetrics))
	must(t, err)
	if l != (Load{Running: 3, Waiting: 1, KVUsage: 0.42}) {
		t.Fatalf("%+v", l)
	}
	if _, err := ParseMetrics([]byte("other 1\n")); !errors.Is(err, ErrMissing) {
		t.Fatal(err)
	}
	if _, err := ParseMetrics([]byte("vllm:num_requests_running{ 1\n")); !errors.Is(err, ErrParse) {
		t.Fatal(err)
	}
	e := newEngine(t, "")
	must(t, e.UpsertReplica(ReplicaInfo{ID: "r", Pool: PoolSpot, USDPerHour: 1.8, MaxInflight: 8}))
	must(t, e.ReportMetrics("r", []byte(vllmMetrics)))
	if s, _ := e.ReplicaStatusOf("r"); s.Running != 3 || s.KVUsage != 0.42 {
		t.Fatalf("%+v", s)
	}
}

func TestRouteTicketsLedger(t *testing.T) {
	e, clk := world(t, "")
	fleet(t, e)
	r := newRequest(t, e)
	chat(t, r, "hi", true, 800, "", -1)
	must(t, r.SetStr(FieldTenant, "acme"))
	d, err := r.Route()
	must(t, err)
	if d.Class != ClassGold || d.Pool != PoolOnDemand || !strings.HasPrefix(d.ReplicaID, "od-") ||
		!d.Serving() || len(d.FallbackIDs) < 1 || d.EstUSD <= 0 || d.TotalBlocks < 3 {
		t.Fatalf("%+v", d)
	}
	if k, _ := r.CacheKey(); k != d.Key {
		t.Fatal("decision key differs from the request key")
	}
	if d.ReasonCode.String() == "invalid" || d.Reason == "" {
		t.Fatal(d.ReasonCode, d.Reason)
	}
	sg, err := e.Signals()
	must(t, err)
	if sg.QueueDepth[ClassGold] != 1 {
		t.Fatalf("%+v", sg)
	}
	clk.now.Add(300_000_000)
	must(t, d.Ticket.FirstToken())
	must(t, d.Ticket.Progress(10))
	if err := d.Ticket.Progress(5); !errors.Is(err, ErrRange) {
		t.Fatal(err)
	}
	sg, _ = e.Signals()
	if sg.QueueDepth[ClassGold] != 0 || sg.P95TTFTMs[ClassGold] <= 200 || sg.P95TTFTMs[ClassGold] > 500 {
		t.Fatalf("%+v", sg)
	}
	if s, _ := e.ReplicaStatusOf(d.ReplicaID); s.Inflight != 1 {
		t.Fatal(s.Inflight)
	}
	must(t, d.Ticket.Finish(TicketResult{Status: TicketOK, PromptTokens: 1000, OutputTokens: 100}))
	if err := d.Ticket.Finish(TicketResult{}); !errors.Is(err, ErrStale) {
		t.Fatal(err)
	}
	if err := e.Ticket(0xdeadbeefcafe).FirstToken(); !errors.Is(err, ErrStale) {
		t.Fatal(err)
	}
	rows, err := e.Ledger()
	must(t, err)
	found := false
	for _, row := range rows {
		if row.Tenant == "acme" {
			found = row.Model == "llama" && row.Pool == PoolOnDemand && row.Class == ClassGold &&
				row.Completed == 1 && row.USD > 0 && row.USDPerCompleted > 0
		}
	}
	if !found || e.LedgerCount() != len(rows) {
		t.Fatalf("%+v", rows)
	}
	text, err := e.Metrics()
	must(t, err)
	if !strings.Contains(text, "spotinfer_") || !strings.Contains(text, "gold") {
		t.Fatalf("%.300s", text)
	}
	// Times are in seconds, Prometheus' base unit.
	if !strings.Contains(text, "# TYPE spotinfer_ttft_seconds histogram\n") ||
		!strings.Contains(text, `spotinfer_ttft_seconds_bucket{class="gold",le="0.025"} `) ||
		strings.Contains(text, "millisecond") {
		t.Fatalf("TTFT not in seconds: %.600s", text)
	}
	// A removed replica's ticket finishes with ErrStale.
	chat(t, r, "hi", true, 800, "", -1)
	d, err = r.Route()
	must(t, err)
	must(t, e.RemoveReplica(d.ReplicaID))
	if err := d.Ticket.Finish(TicketResult{}); !errors.Is(err, ErrStale) {
		t.Fatal(err)
	}
}

func TestRouteOutcomes(t *testing.T) {
	e, _ := world(t, "")
	r := newRequest(t, e)
	chat(t, r, "hi", true, 800, "", -1)
	d, err := r.Route()
	if !errors.Is(err, ErrNoCapacity) || d.Class != ClassGold || d.ReasonCode != ReasonNoCapacity ||
		!strings.Contains(err.Error(), "no eligible") {
		t.Fatalf("%v %+v", err, d)
	}
	fleet(t, e)
	// Affinity: the second request with the same prefix lands where the first went.
	chat(t, r, "first", false, 5000, "", 1)
	d1, err := r.Route()
	must(t, err)
	must(t, d1.Ticket.Finish(TicketResult{}))
	chat(t, r, "second", false, 5000, "", 1)
	d2, err := r.Route()
	must(t, err)
	if d2.ReplicaID != d1.ReplicaID || d2.ReasonCode != ReasonAffinity || d2.MatchedBlocks < 3 {
		t.Fatalf("%+v", d2)
	}
	must(t, d2.Ticket.Finish(TicketResult{}))
	// KV pressure sheds bronze.
	must(t, e.ReportLoad("spot-a", Load{Running: 1, KVUsage: 0.9}))
	must(t, e.ReportLoad("spot-b", Load{Running: 1, KVUsage: 0.9}))
	chat(t, r, "batch", false, 0, "flex", -1)
	d, err = r.Route()
	if !errors.Is(err, ErrShed) || d.Class != ClassBronze || d.ReasonCode != ReasonShed {
		t.Fatalf("%v %+v", err, d)
	}
	// No spot up: bronze is queued without a ticket.
	must(t, e.SetReplicaState("spot-a", ReplicaDraining))
	must(t, e.SetReplicaState("spot-b", ReplicaNoticed))
	d, err = r.Route()
	must(t, err)
	if d.Pool != PoolQueue || d.ReasonCode != ReasonQueueNoSpot || d.Serving() {
		t.Fatalf("%+v", d)
	}
}

func TestExcludeReplica(t *testing.T) {
	e, _ := world(t, "")
	fleet(t, e)
	r := newRequest(t, e)
	chat(t, r, "first", false, 5000, "", 1)
	d1, err := r.Route()
	must(t, err)
	must(t, d1.Ticket.Finish(TicketResult{}))
	// The warm replica excluded: the route goes to one holding none of it.
	chat(t, r, "second", false, 5000, "", 1)
	must(t, r.ExcludeReplica(d1.ReplicaID))
	d2, err := r.Route()
	must(t, err)
	if d2.ReplicaID == d1.ReplicaID || d2.MatchedBlocks != 0 || d2.ReasonCode == ReasonAffinity {
		t.Fatalf("%+v", d2)
	}
	for _, f := range d2.FallbackIDs {
		if f == d1.ReplicaID {
			t.Fatalf("excluded %s is a fallback: %+v", f, d2)
		}
	}
	must(t, d2.Ticket.Finish(TicketResult{}))
	// Every replica excluded (and one that is gone): no capacity.
	for _, id := range []string{"spot-a", "spot-b", "od-a", "od-b", "gone"} {
		must(t, r.ExcludeReplica(id))
	}
	d, err := r.Route()
	if !errors.Is(err, ErrNoCapacity) || d.ReasonCode != ReasonNoCapacity {
		t.Fatalf("%v %+v", err, d)
	}
	// Reset clears them.
	chat(t, r, "third", false, 5000, "", 1)
	d3, err := r.Route()
	must(t, err)
	must(t, d3.Ticket.Finish(TicketResult{}))
	// Ids and the cap.
	if err := r.ExcludeReplica(""); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "0 bytes") {
		t.Fatalf("empty id: %v", err)
	}
	if err := r.ExcludeReplica(strings.Repeat("x", 64)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("long id: %v", err)
	}
	for i := 0; i < MaxExcluded; i++ {
		must(t, r.ExcludeReplica(fmt.Sprintf("r%d", i)))
	}
	must(t, r.ExcludeReplica("r3")) // again: counted once
	if err := r.ExcludeReplica("one-more"); !errors.Is(err, ErrFull) {
		t.Fatalf("over the cap: %v", err)
	}
}

func TestTicketTableFull(t *testing.T) {
	e, _ := world(t, `{"router":{"max_tickets":16}}`)
	fleet(t, e)
	r := newRequest(t, e)
	chat(t, r, "hi", false, 5000, "", 1)
	var open []Ticket
	for i := 0; i < 16; i++ {
		d, err := r.Route()
		must(t, err)
		open = append(open, d.Ticket)
	}
	if _, err := r.Route(); !errors.Is(err, ErrFull) {
		t.Fatal(err)
	}
	for _, tk := range open {
		must(t, tk.Finish(TicketResult{Status: TicketCancelled}))
	}
}

// leastLoaded is a routing policy written in Go.
type leastLoaded struct {
	calls atomic.Int64
	fail  bool
}

func (p *leastLoaded) Configure([]byte) (any, error) { return nil, nil }

func (p *leastLoaded) Choose(_ any, ctx *RouteContext) (PolicyChoice, error) {
	p.calls.Add(1)
	if p.fail {
		return PolicyChoice{}, errors.New("policy failed")
	}
	best := -1
	for i, c := range ctx.Candidates {
		if !c.Eligible && !c.Probe {
			continue
		}
		if best < 0 || c.Running+c.Waiting < ctx.Candidates[best].Running+ctx.Candidates[best].Waiting {
			best = i
		}
	}
	if best < 0 {
		return PolicyChoice{ReasonCode: ReasonNoCapacity, Reason: "nothing eligible"}, nil
	}
	if ctx.Req.Model() != "llama" || ctx.Classification == nil {
		return PolicyChoice{}, errors.New("context incomplete")
	}
	return PolicyChoice{Pool: ctx.Candidates[best].Pool, Order: []int{best},
		ReasonCode: ReasonLeastLoaded, Reason: "go least loaded"}, nil
}

func TestGoPolicy(t *testing.T) {
	e, _ := world(t, "")
	fleet(t, e)
	p := &leastLoaded{}
	must(t, e.RegisterPolicy("go-ll", p, OnFailureError))
	must(t, e.Configure(`{"modules":{"policy":"go-ll"}}`))
	must(t, e.ReportLoad("spot-b", Load{KVUsage: 0.1}))
	r := newRequest(t, e)
	chat(t, r, "hi", false, 5000, "", 1)
	d, err := r.Route()
	must(t, err)
	if d.ReplicaID != "spot-b" || !strings.HasPrefix(d.Reason, "go least loaded") || p.calls.Load() == 0 {
		t.Fatalf("%+v", d)
	}
	must(t, d.Ticket.Finish(TicketResult{}))
	bad := &leastLoaded{fail: true}
	must(t, e.RegisterPolicy("go-bad", bad, OnFailureError))
	must(t, e.Configure(`{"modules":{"policy":"go-bad"}}`))
	if _, err := r.Route(); !errors.Is(err, ErrModule) {
		t.Fatal(err)
	}
	must(t, e.RegisterPolicy("go-bad-fb", bad, OnFailureFallback))
	must(t, e.Configure(`{"modules":{"policy":"go-bad-fb"}}`))
	d, err = r.Route()
	must(t, err)
	must(t, d.Ticket.Finish(TicketResult{}))
}

func TestZeroTicket(t *testing.T) {
	var tk Ticket
	if err := tk.Finish(TicketResult{}); !errors.Is(err, ErrStale) {
		t.Fatal(err)
	}
}

// farIndex answers a candidate index the C order field (uint32) cannot
// hold, or one below 0.
type farIndex struct{ idx int }

func (farIndex) Configure([]byte) (any, error) { return nil, nil }
func (p farIndex) Choose(_ any, ctx *RouteContext) (PolicyChoice, error) {
	return PolicyChoice{Pool: ctx.Candidates[0].Pool, Order: []int{p.idx}, Reason: "far"}, nil
}

func TestGoPolicyIndexOutOfRangeIsAModuleError(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.UpsertReplica(ReplicaInfo{ID: "od-a", Pool: PoolOnDemand, USDPerHour: 4.5, MaxInflight: 16}))
	must(t, e.ReportLoad("od-a", Load{Running: 1, KVUsage: 0.2}))
	for i, idx := range []int{1 << 32, 1<<32 + 1, -1, 1} {
		name := fmt.Sprintf("far%d", i)
		must(t, e.RegisterPolicy(name, farIndex{idx}, OnFailureError))
		must(t, e.Configure(`{"modules":{"policy":"`+name+`"}}`))
		r := newRequest(t, e)
		must(t, r.SetStr(FieldModel, "m"))
		must(t, r.AddMessage("user", "hi"))
		d, err := r.Route()
		if !errors.Is(err, ErrModule) {
			t.Fatalf("index %d of 1 candidate: routed to %q (%s), err %v; want ErrModule",
				idx, d.ReplicaID, d.Reason, err)
		}
	}
}
