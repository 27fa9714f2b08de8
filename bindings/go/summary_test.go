package spotinfer

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strings"
	"sync"
	"testing"
)

// recorder is a Go policy that keeps the last context it was given. It
// serves pick when set, else the spot pool's large tier by its summary:
// the warm replica if any, else the least loaded, then the best TTFTs as
// fallbacks.
type recorder struct {
	mu    sync.Mutex
	pick  string
	last  *RouteContext
	calls int
}

func (p *recorder) Configure([]byte) (any, error) { return nil, nil }

func (p *recorder) Choose(_ any, ctx *RouteContext) (PolicyChoice, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls++
	p.last = ctx
	if p.pick != "" {
		for i, c := range ctx.Candidates {
			if c.ID == p.pick {
				return PolicyChoice{Pool: c.Pool, Order: []int{i}, Reason: "picked"}, nil
			}
		}
		return PolicyChoice{}, fmt.Errorf("%s is not a candidate", p.pick)
	}
	s := ctx.Summary(PoolSpot, TierLarge)
	if s == nil || s.Usable == 0 {
		return PolicyChoice{ReasonCode: ReasonNoCapacity, Reason: "no spot summary"}, nil
	}
	first, code := s.Warm, ReasonAffinity
	if first < 0 {
		first, code = s.Least, ReasonLeastLoaded
	}
	order := []int{first}
	for _, i := range s.Top {
		if i != first && len(order) < 1+int(ctx.MaxFallbacks) {
			order = append(order, i)
		}
	}
	return PolicyChoice{Pool: PoolSpot, Order: order, ReasonCode: code, Reason: "by summary"}, nil
}

func (p *recorder) context() *RouteContext {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last
}

// compact is the same policy declared summaries-only.
type compact struct{ *recorder }

func (compact) PolicyFlags() PolicyFlags { return PolicySummariesOnly }

// summaryFleet registers 20 replicas: 11 spot large (one draining, one
// serving another model, some busy, two tied for the lowest load), 3 spot
// small, 4 on-demand large and 2 on-demand small.
func summaryFleet(t *testing.T, e *Engine) {
	t.Helper()
	type rep struct {
		id               string
		pool             Pool
		tier             ModelTier
		max              uint32
		running, waiting float64
		models           []string
	}
	reps := []rep{
		{"sl-0", PoolSpot, TierLarge, 16, 3, 1, nil},
		{"sl-1", PoolSpot, TierLarge, 16, 0, 0, nil},  // tied with sl-4
		{"sl-2", PoolSpot, TierLarge, 16, 12, 5, nil}, // busy
		{"sl-3", PoolSpot, TierLarge, 8, 2, 0, nil},
		{"sl-4", PoolSpot, TierLarge, 16, 0, 0, nil},
		{"sl-5", PoolSpot, TierLarge, 32, 5, 2, nil},
		{"sl-6", PoolSpot, TierLarge, 16, 4, 0, nil},
		{"sl-7", PoolSpot, TierLarge, 8, 6, 3, nil}, // busy
		{"sl-8", PoolSpot, TierLarge, 16, 1, 0, nil},
		{"sl-9", PoolSpot, TierLarge, 16, 0, 0, []string{"qwen"}},
		{"sl-10", PoolSpot, TierLarge, 16, 0, 0, nil}, // draining below
		{"ss-0", PoolSpot, TierSmall, 8, 1, 0, nil},
		{"ss-1", PoolSpot, TierSmall, 8, 3, 2, nil},
		{"ss-2", PoolSpot, TierSmall, 4, 2, 2, nil}, // busy
		{"ol-0", PoolOnDemand, TierLarge, 16, 2, 0, nil},
		{"ol-1", PoolOnDemand, TierLarge, 16, 1, 1, nil},
		{"ol-2", PoolOnDemand, TierLarge, 12, 5, 0, nil},
		{"ol-3", PoolOnDemand, TierLarge, 16, 9, 0, nil},
		{"os-0", PoolOnDemand, TierSmall, 8, 2, 1, nil},
		{"os-1", PoolOnDemand, TierSmall, 8, 1, 0, nil},
	}
	for _, r := range reps {
		usd := 1.8
		if r.pool == PoolOnDemand {
			usd = 4.5
		}
		must(t, e.UpsertReplica(ReplicaInfo{ID: r.id, Pool: r.pool, ModelTier: r.tier,
			USDPerHour: usd, MaxInflight: r.max, Models: r.models}))
		must(t, e.ReportLoad(r.id, Load{Running: r.running, Waiting: r.waiting, KVUsage: 0.2}))
	}
	must(t, e.SetReplicaState("sl-10", ReplicaDraining))
}

// summaryWorld is the fleet with the request's prefix held by sl-6 and
// ol-1 (whose ticket stays open), routed by the returned recorder.
func summaryWorld(t *testing.T) (*Engine, *Request, *recorder) {
	e, _ := world(t, "")
	summaryFleet(t, e)
	p := &recorder{}
	must(t, e.RegisterPolicy("go-record", p, OnFailureError))
	must(t, e.Configure(`{"modules":{"policy":"go-record"}}`))
	r := newRequest(t, e)
	for _, id := range []string{"sl-6", "ol-1"} {
		p.pick = id
		chat(t, r, "seed", false, 5000, "", 1)
		d, err := r.Route()
		must(t, err)
		if d.ReplicaID != id {
			t.Fatalf("%+v", d)
		}
		if id == "sl-6" {
			must(t, d.Ticket.Finish(TicketResult{}))
		}
	}
	p.pick = ""
	return e, r, p
}

// wantSummary computes a summary by brute force over every candidate, with
// the header's definitions.
func wantSummary(cands []Candidate, pool Pool, tier ModelTier) PoolSummary {
	w := PoolSummary{Pool: pool, ModelTier: tier, Top: []int{}, Warm: -1, Least: -1, Rendezvous: -1}
	var usable []int
	for i, c := range cands {
		if (c.Eligible || c.Probe) && c.Pool == pool && c.ModelTier == tier {
			usable = append(usable, i)
		}
	}
	w.Usable = len(usable)
	top := append([]int(nil), usable...)
	sort.SliceStable(top, func(a, b int) bool { return cands[top[a]].EstTTFTMs < cands[top[b]].EstTTFTMs })
	if len(top) > SummaryTop { // the library names a primary and its fallbacks
		top = top[:1+MaxFallbacks]
	}
	w.Top = append(w.Top, top...)
	rel := func(c Candidate) float64 {
		return (c.Running + c.Waiting + float64(c.Inflight)) / float64(c.MaxInflight)
	}
	srv := func(c Candidate) float64 { return c.ServedTokens / float64(c.MaxInflight) }
	for _, i := range usable {
		c := cands[i]
		if w.Least < 0 || rel(c) < rel(cands[w.Least]) ||
			(rel(c) == rel(cands[w.Least]) && srv(c) < srv(cands[w.Least])) {
			w.Least = i
		}
		busy := c.Inflight >= c.MaxInflight || c.Running+c.Waiting >= float64(c.MaxInflight)
		if !busy && (w.Rendezvous < 0 || c.Rendezvous > cands[w.Rendezvous].Rendezvous) {
			w.Rendezvous = i
		}
		if c.MatchedBlocks > 0 {
			if w.Warm < 0 || c.MatchedBlocks > cands[w.Warm].MatchedBlocks ||
				(c.MatchedBlocks == cands[w.Warm].MatchedBlocks && c.EstTTFTMs < cands[w.Warm].EstTTFTMs) {
				w.Warm = i
			}
		}
	}
	return w
}

var cells = []struct {
	pool Pool
	tier ModelTier
}{{PoolSpot, TierSmall}, {PoolSpot, TierLarge}, {PoolOnDemand, TierSmall}, {PoolOnDemand, TierLarge}}

// checkSummaries compares every summary of ctx with the brute force.
func checkSummaries(t *testing.T, ctx *RouteContext) {
	t.Helper()
	if len(ctx.Summaries) != SummaryCells {
		t.Fatalf("%d summaries", len(ctx.Summaries))
	}
	for _, cell := range cells {
		got, want := ctx.Summary(cell.pool, cell.tier), wantSummary(ctx.Candidates, cell.pool, cell.tier)
		if got != &ctx.Summaries[SummaryIndex(cell.pool, cell.tier)] {
			t.Fatal("Summary does not look up by SummaryIndex")
		}
		if fmt.Sprintf("%+v", *got) != fmt.Sprintf("%+v", want) {
			t.Errorf("%v/%v:\n got  %+v\n want %+v", cell.pool, cell.tier, *got, want)
		}
	}
}

func ids(ctx *RouteContext, idx []int) []string {
	var out []string
	for _, i := range idx {
		if i < 0 {
			out = append(out, "-")
		} else {
			out = append(out, ctx.Candidates[i].ID)
		}
	}
	return out
}

// namedIDs is every summary with indices turned into replica ids.
func namedIDs(ctx *RouteContext) string {
	var s string
	for _, cs := range ctx.Summaries {
		s += fmt.Sprintf("%v/%v usable=%d top=%v warm,least,rdv=%v\n", cs.Pool, cs.ModelTier, cs.Usable,
			ids(ctx, cs.Top), ids(ctx, []int{cs.Warm, cs.Least, cs.Rendezvous}))
	}
	return s
}

func TestSummaryIndex(t *testing.T) {
	for i, cell := range cells {
		if SummaryIndex(cell.pool, cell.tier) != i {
			t.Fatal(cell, SummaryIndex(cell.pool, cell.tier))
		}
	}
	for _, bad := range [][2]int32{{int32(PoolQueue), int32(TierLarge)}, {int32(PoolNone), int32(TierSmall)},
		{int32(PoolSpot), int32(TierUnset)}, {int32(PoolOnDemand), 3}} {
		if SummaryIndex(Pool(bad[0]), ModelTier(bad[1])) != -1 {
			t.Fatal(bad)
		}
	}
	if SummaryCells != 4 || SummaryTop != 3+MaxFallbacks {
		t.Fatal(SummaryCells, SummaryTop)
	}
	var ctx RouteContext
	if ctx.Summary(PoolSpot, TierLarge) != nil {
		t.Fatal("a context without summaries has one")
	}
}

func TestGoPolicySummaries(t *testing.T) {
	e, r, p := summaryWorld(t)
	reps, err := e.Replicas()
	must(t, err)
	chat(t, r, "seed", false, 5000, "", 1)
	d, err := r.Route()
	must(t, err)
	ctx := p.context()
	// Every replica, in replica order.
	if len(ctx.Candidates) != len(reps) || len(reps) != 20 {
		t.Fatal(len(ctx.Candidates), len(reps))
	}
	for i, c := range ctx.Candidates {
		if c.ID != reps[i].ID || c.Index != i {
			t.Fatal(i, c.ID, reps[i].ID)
		}
	}
	checkSummaries(t, ctx)
	sl, ss, ol, os := ctx.Summary(PoolSpot, TierLarge), ctx.Summary(PoolSpot, TierSmall),
		ctx.Summary(PoolOnDemand, TierLarge), ctx.Summary(PoolOnDemand, TierSmall)
	// The fixture exercises what it should: a full top, ties to the lower
	// index, warm replicas in two cells only, busy replicas skipped.
	if sl.Usable != 9 || len(sl.Top) != 1+MaxFallbacks || ss.Usable != 3 || len(ss.Top) != 3 {
		t.Fatalf("%+v %+v", sl, ss)
	}
	if got := ids(ctx, []int{sl.Warm, sl.Least, ol.Warm, ss.Warm, os.Warm}); fmt.Sprint(got) != "[sl-6 sl-1 ol-1 - -]" {
		t.Fatal(got)
	}
	if ctx.Candidates[sl.Warm].MatchedBlocks == 0 || ctx.Candidates[sl.Warm].MatchedBlocks != d.MatchedBlocks {
		t.Fatalf("%+v", ctx.Candidates[sl.Warm])
	}
	if d.ReplicaID != "sl-6" || d.ReasonCode != ReasonAffinity ||
		fmt.Sprint(d.FallbackIDs) != fmt.Sprint(ids(ctx, sl.Top[1:1+ctx.MaxFallbacks])) {
		t.Fatalf("%+v (top %v)", d, ids(ctx, sl.Top))
	}
	must(t, d.Ticket.Finish(TicketResult{}))

	// Make the spot-large rendezvous winner busy: the next one takes over.
	winner := ctx.Candidates[sl.Rendezvous].ID
	must(t, e.ReportLoad(winner, Load{Running: 40, KVUsage: 0.2}))
	d, err = r.Route()
	must(t, err)
	must(t, d.Ticket.Finish(TicketResult{}))
	ctx = p.context()
	checkSummaries(t, ctx)
	sl = ctx.Summary(PoolSpot, TierLarge)
	if sl.Rendezvous < 0 || ctx.Candidates[sl.Rendezvous].ID == winner {
		t.Fatal(winner, sl.Rendezvous)
	}
	if p.calls != 4 {
		t.Fatal(p.calls)
	}
}

func TestGoPolicySummariesOnly(t *testing.T) {
	e, r, full := summaryWorld(t)
	chat(t, r, "seed", false, 5000, "", 1)
	d, err := r.Route()
	must(t, err)
	must(t, d.Ticket.Finish(TicketResult{}))
	want := full.context()

	p := compact{&recorder{}}
	must(t, e.Register(ModulePolicy, "go-compact", p, OnFailureError))
	must(t, e.Configure(`{"modules":{"policy":"go-compact"}}`))
	dc, err := r.Route()
	must(t, err)
	must(t, dc.Ticket.Finish(TicketResult{}))
	ctx := p.context()

	// Only the named candidates, in replica order, every one of them named.
	if n := len(ctx.Candidates); n >= e.ReplicaCount() || n > SummaryCells*(SummaryTop+3) {
		t.Fatal(n, e.ReplicaCount())
	}
	pos := map[string]int{}
	for i, c := range want.Candidates {
		pos[c.ID] = i
	}
	for i, c := range ctx.Candidates {
		if i > 0 && pos[ctx.Candidates[i-1].ID] >= pos[c.ID] {
			t.Fatal("compact candidates out of replica order")
		}
		// As the full array has it, but for the index and the tokens the
		// route in between sent to its replica.
		f := want.Candidates[pos[c.ID]]
		f.Index = i
		if c.ID == d.ReplicaID {
			f.ServedTokens += want.PromptTokens
		}
		if c != f {
			t.Fatalf("\n%+v\n%+v", c, f)
		}
	}
	t.Logf("%d candidates of %d replicas", len(ctx.Candidates), e.ReplicaCount())
	named := map[int]bool{}
	for _, cs := range ctx.Summaries {
		for _, i := range append(append([]int(nil), cs.Top...), cs.Warm, cs.Least, cs.Rendezvous) {
			if i < 0 {
				continue
			}
			if i >= len(ctx.Candidates) {
				t.Fatal(i, len(ctx.Candidates))
			}
			c := ctx.Candidates[i]
			if !(c.Eligible || c.Probe) || c.Pool != cs.Pool || c.ModelTier != cs.ModelTier {
				t.Fatalf("%+v in %v/%v", c, cs.Pool, cs.ModelTier)
			}
			named[i] = true
		}
	}
	if len(named) != len(ctx.Candidates) {
		t.Fatal(len(named), len(ctx.Candidates))
	}
	// The same summaries, by replica, as a policy that gets every replica.
	if a, b := namedIDs(ctx), namedIDs(want); a != b {
		t.Fatalf("summaries-only:\n%s\nfull:\n%s", a, b)
	}
	// Routed by the summaries, with compact indices.
	if dc.ReplicaID != d.ReplicaID || dc.ReplicaID != "sl-6" ||
		fmt.Sprint(dc.FallbackIDs) != fmt.Sprint(d.FallbackIDs) || len(dc.FallbackIDs) != int(ctx.MaxFallbacks) {
		t.Fatalf("%+v\n%+v", dc, d)
	}
}

// flagged declares the policy flags it is given.
type flagged struct {
	leastLoaded
	flags PolicyFlags
}

func (f *flagged) PolicyFlags() PolicyFlags { return f.flags }

func TestPolicyFlagsAreChecked(t *testing.T) {
	e := newEngine(t, "")
	if err := e.RegisterPolicy("flagged", &flagged{flags: 2}, OnFailureError); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	must(t, e.RegisterPolicy("flagged", &flagged{flags: PolicySummariesOnly}, OnFailureError))
	must(t, e.RegisterPolicy("unflagged", &flagged{}, OnFailureError))
}

// A Go policy reads the TTFT model's parts: the wait behind queued prefill,
// tokens served, the prefill rate, and the pools' means.
func TestPolicySeesTTFTModel(t *testing.T) {
	e, _ := world(t, "")
	fleet(t, e)
	p := &recorder{pick: "spot-a"}
	must(t, e.RegisterPolicy("go-model", p, OnFailureError))
	must(t, e.Configure(`{"modules":{"policy":"go-model"}}`))
	r := newRequest(t, e)
	chat(t, r, "hi", false, 5000, "", 1)
	d1, err := r.Route() // stays open: its prefill is queued on spot-a
	must(t, err)
	first := p.context()
	if first.PromptTokens <= 0 || first.MeanServedTokens != [4]float64{} {
		t.Fatalf("%+v", first)
	}
	for _, c := range first.Candidates {
		if c.ServedTokens != 0 || c.EstWaitMs != 0 || c.PrefillTokensPerS != 10000 {
			t.Fatalf("%+v", c)
		}
	}
	d2, err := r.Route()
	must(t, err)
	second := p.context()
	var on *Candidate
	for i := range second.Candidates {
		if second.Candidates[i].ID == "spot-a" {
			on = &second.Candidates[i]
		}
	}
	// Tokens served: the prompt and the expected output (256 when the
	// request says nothing of it), until the ticket's finish says.
	served := first.PromptTokens + 256
	if on == nil || on.ServedTokens != served ||
		math.Abs(on.EstWaitMs-first.PromptTokens*1000/10000) > 1e-9 ||
		second.MeanServedTokens[PoolSpot] != served/2 {
		t.Fatalf("%+v %+v", on, second.MeanServedTokens)
	}
	// Every replica of the fleet takes 16 at once.
	if second.MeanMaxInflight[PoolSpot] != 16 || second.MeanMaxInflight[PoolOnDemand] != 16 {
		t.Fatalf("%+v", second.MeanMaxInflight)
	}
	// The prefill backlog: that wait, over the replicas of its summary.
	backlog := 0.0
	for i, s := range second.Summaries {
		backlog += second.MeanPrefillWaitMs[i] * float64(s.Usable)
	}
	if first.MeanPrefillWaitMs != [SummaryCells]float64{} || math.Abs(backlog-on.EstWaitMs) > 1e-3 {
		t.Fatalf("%+v %v %v", first.MeanPrefillWaitMs, backlog, on.EstWaitMs)
	}
	// The fleet has spot replicas: the engine says since when.
	if first.SpotSeenNs <= 0 || second.SpotSeenNs != first.SpotSeenNs {
		t.Fatalf("%v %v", first.SpotSeenNs, second.SpotSeenNs)
	}
	must(t, d1.Ticket.Finish(TicketResult{}))
	must(t, d2.Ticket.Finish(TicketResult{}))
}

// Requests that share the system prompt and differ after it: the second
// matches the first's prompt there and goes on from it, so the third finds
// the shared part marked (MatchContinued); the first two do not.
func TestPolicySeesABranchPoint(t *testing.T) {
	e, _ := world(t, "")
	fleet(t, e)
	p := &recorder{pick: "spot-a"}
	must(t, e.RegisterPolicy("go-branch", p, OnFailureError))
	must(t, e.Configure(`{"modules":{"policy":"go-branch"}}`))
	r := newRequest(t, e)
	var seen []Candidate
	for i := 0; i < 3; i++ {
		// Each question fills blocks of its own.
		chat(t, r, fmt.Sprintf("question %d: %s", i, strings.Repeat("and what of it? ", 200)),
			false, 5000, "", 1)
		d, err := r.Route()
		must(t, err)
		for _, c := range p.context().Candidates {
			if c.ID == "spot-a" {
				seen = append(seen, c)
			}
		}
		must(t, d.Ticket.Finish(TicketResult{}))
	}
	if len(seen) != 3 || seen[0].MatchedBlocks != 0 || seen[1].MatchedBlocks == 0 ||
		seen[2].MatchedBlocks != seen[1].MatchedBlocks {
		t.Fatalf("%+v", seen)
	}
	if seen[0].MatchContinued || seen[1].MatchContinued || !seen[2].MatchContinued {
		t.Fatalf("%+v", seen)
	}
}
