package spotinfer

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const now = int64(1_700_000_000) * sec

// skipUnlessExported skips a test whose functions the loaded library does
// not export yet (the binding then answers ErrNotSup, checked here).
func skipUnlessExported(t *testing.T, err error, what string) {
	t.Helper()
	if errors.Is(err, ErrNotSup) {
		if !strings.Contains(err.Error(), "not exported") {
			t.Fatalf("ErrNotSup without the reason: %v", err)
		}
		t.Skipf("the loaded libspotinfer does not export %s yet", what)
	}
}

func TestParseNotice(t *testing.T) {
	body := []byte(`{"action":"terminate","time":"2023-11-14T22:15:20Z"}`)
	ns, err := ParseNotice(NoticeAWSInstanceAction, 200, body, "i-0abc", now)
	skipUnlessExported(t, err, "spi_notice_parse")
	must(t, err)
	if len(ns) != 1 || ns[0].Kind != NoticeTerminate || ns[0].Node != "i-0abc" ||
		ns[0].DeadlineNs != now+120*sec || ns[0].ReceivedNs != now || !ns[0].Active ||
		ns[0].DedupKey == "" || ns[0].Kind.String() != "terminate" {
		t.Fatalf("%+v", ns)
	}
	ns, err = ParseNotice(NoticeAWSInstanceAction, 404, nil, "i-0abc", now)
	if err != nil || len(ns) != 0 {
		t.Fatal(ns, err)
	}
	ns, err = ParseNotice(NoticeGCPPreempted, 200, []byte("TRUE"), "vm-1", now)
	must(t, err)
	if len(ns) != 1 || ns[0].Kind != NoticePreempt || ns[0].DeadlineNs != now+30*sec {
		t.Fatalf("%+v", ns)
	}
	_, err = ParseNotice(NoticeAWSInstanceAction, 200, []byte("{not json"), "i-1", now)
	var se *Error
	if !errors.As(err, &se) || se.Code > StatusParse || se.Code < StatusTooBig || se.Message == "" {
		t.Fatalf("%v", err)
	}
}

func TestNoticePlansAndNodes(t *testing.T) {
	e, _ := world(t, "")
	var seen []string
	err := e.OnNodeTransition(func(node string, from, to NodeState) {
		seen = append(seen, node+":"+from.String()+">"+to.String())
	})
	skipUnlessExported(t, err, "spi_engine_on_node_transition")
	must(t, err)
	for _, r := range []struct {
		id, node string
		pool     Pool
	}{{"spot-a", "i-1", PoolSpot}, {"od-a", "i-2", PoolOnDemand}} {
		must(t, e.UpsertReplica(ReplicaInfo{ID: r.id, Pool: r.pool, USDPerHour: 2, MaxInflight: 16,
			Node: r.node, Zone: "z1", InstanceType: "g5.xlarge"}))
		must(t, e.ReportLoad(r.id, Load{Running: 1, KVUsage: 0.2}))
	}
	if st, err := e.NodeState("i-1"); err != nil || st != NodeActive {
		t.Fatal(st, err)
	}
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	must(t, r.SetInt(FieldSLAMs, 5000))
	must(t, r.SetBool(FieldReplayable, true))
	must(t, r.AddMessage("user", "hello"))
	d, err := r.Route()
	must(t, err)
	if d.ReplicaID != "spot-a" {
		t.Fatalf("%+v", d)
	}
	n := Notice{Kind: NoticeTerminate, Format: NoticeAWSInstanceAction, Node: "i-1",
		DeadlineNs: now + 120*sec, ReceivedNs: now, Active: true, DedupKey: "aws:i-1:terminate"}
	plans, err := e.Notice(n)
	must(t, err)
	if len(plans) != 1 || plans[0].Ticket != d.Ticket.ID || plans[0].ReplicaID != "spot-a" ||
		(plans[0].Action != ActionDrain && plans[0].Action != ActionReplay) {
		t.Fatalf("%+v", plans)
	}
	if st, _ := e.NodeState("i-1"); st != NodeNoticed {
		t.Fatal(st)
	}
	if strings.Join(seen, ",") != "i-1:active>noticed" {
		t.Fatalf("%q", seen)
	}
	if again, err := e.Notice(n); err != nil || len(again) != 0 {
		t.Fatal(again, err)
	}
	d2, err := r.Route()
	must(t, err)
	if d2.ReplicaID == "spot-a" {
		t.Fatal("routed to a noticed machine")
	}
	must(t, e.SetNodeState("i-1", NodeDraining))
	if err := e.SetNodeState("i-1", NodeActive); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	must(t, e.Tick())
	must(t, e.OnNodeTransition(nil))
}

func TestReplayQueue(t *testing.T) {
	e := newEngine(t, "")
	q, err := e.OpenReplayQueue(`{"store":"memory"}`)
	skipUnlessExported(t, err, "spi_replay_open")
	must(t, err)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	dup, err := q.Enqueue(Envelope{Key: "a", Body: body, Class: ClassBronze})
	must(t, err)
	if dup {
		t.Fatal("first enqueue is a duplicate")
	}
	_, err = q.Enqueue(Envelope{Key: "b", Body: body, Class: ClassGold, PartialText: "Hel",
		StreamOffset: 1, Tenant: "acme", PartialTokens: []uint32{1, 2}})
	must(t, err)
	if dup, _ := q.Enqueue(Envelope{Key: "a", Body: body, Class: ClassBronze}); !dup {
		t.Fatal("duplicate not reported")
	}
	st, err := q.Stats()
	must(t, err)
	if st.Ready[ClassGold] != 1 || st.Ready[ClassBronze] != 1 || st.Duplicates != 1 || st.Enqueued != 2 {
		t.Fatalf("%+v", st)
	}
	c, ok, err := q.Claim(ClassMask(ClassGold, ClassSilver, ClassBronze), 0)
	must(t, err)
	if !ok || c.Envelope.Key != "b" || c.Envelope.PartialText != "Hel" || c.Envelope.Tenant != "acme" ||
		len(c.Envelope.PartialTokens) != 2 || string(c.Envelope.Body) != string(body) {
		t.Fatalf("%+v", c)
	}
	must(t, q.Ack(c.ID))
	if err := q.Ack(c.ID); !errors.Is(err, ErrStale) {
		t.Fatal(err)
	}
	c, ok, err = q.Claim(ClassMask(ClassBronze), 0)
	must(t, err)
	if !ok || c.Envelope.Key != "a" {
		t.Fatalf("%+v", c)
	}
	must(t, q.Nack(c.ID))
	if _, ok, err := q.Claim(ClassMask(ClassGold), 0); ok || err != nil {
		t.Fatal(ok, err)
	}
	must(t, q.Tick())
	must(t, q.Close())
	must(t, q.Close())
	if _, err := q.Stats(); !errors.Is(err, ErrMisuse) {
		t.Fatal(err)
	}
	// Closing the engine closes its queues.
	q2, err := e.OpenReplayQueue(`{"store":"memory"}`)
	must(t, err)
	must(t, e.Close())
	if _, err := q2.Stats(); !errors.Is(err, ErrMisuse) {
		t.Fatal(err)
	}
}

func TestContinuation(t *testing.T) {
	body := []byte(`{"model":"m","max_tokens":100,"messages":[{"role":"user","content":"count"}]}`)
	text, flags, err := Continuation(Envelope{Key: "k", Body: body, PartialText: "1 2 3", StreamOffset: 3})
	skipUnlessExported(t, err, "spi_replay_continuation")
	must(t, err)
	var cont map[string]any
	must(t, json.Unmarshal([]byte(text), &cont))
	if cont["continue_final_message"] != true || flags&EnvelopeFromScratch != 0 {
		t.Fatalf("%s %d", text, flags)
	}
	guided := []byte(`{"model":"m","response_format":{"type":"json_object"},"messages":[{"role":"user","content":"j"}]}`)
	_, flags, err = Continuation(Envelope{Key: "g", Body: guided, PartialText: "{"})
	must(t, err)
	if flags&EnvelopeFromScratch == 0 {
		t.Fatal("guided decoding not replayed from scratch")
	}
}

func TestNamesOfNewerEnums(t *testing.T) {
	// Without the library functions the names read "invalid".
	if s := NodeAdvised.String(); s != "advised" && s != "invalid" {
		t.Fatal(s)
	}
	if s := NoticeRebalance.String(); s != "rebalance" && s != "invalid" {
		t.Fatal(s)
	}
}

func TestJournalSurvivesReopen(t *testing.T) {
	e := newEngine(t, "")
	cfg := `{"store":"journal","dir":` + jsonString(t.TempDir()) + `,"fsync":"always"}`
	q, err := e.OpenReplayQueue(cfg)
	skipUnlessExported(t, err, "spi_replay_open")
	must(t, err)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	_, err = q.Enqueue(Envelope{Key: "durable", Body: body, Class: ClassGold, PartialText: "par", StreamOffset: 2})
	must(t, err)
	must(t, q.Close())
	q, err = e.OpenReplayQueue(cfg)
	must(t, err)
	defer q.Close()
	c, ok, err := q.Claim(ClassMask(ClassGold), 0)
	must(t, err)
	if !ok || c.Envelope.Key != "durable" || c.Envelope.PartialText != "par" || c.Envelope.StreamOffset != 2 {
		t.Fatalf("%+v", c)
	}
	must(t, q.Ack(c.ID))
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func TestReplayJournalStats(t *testing.T) {
	e := newEngine(t, "")
	cfg := `{"store":"journal","fsync":"always","dir":"` + t.TempDir() + `"}`
	q, err := e.OpenReplayQueue(cfg)
	skipUnlessExported(t, err, "spi_replay_open")
	must(t, err)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	_, err = q.Enqueue(Envelope{Key: "a", Body: body, Class: ClassGold})
	must(t, err)
	st, err := q.Stats()
	must(t, err)
	if st.Syncs == 0 || st.JournalBytes == 0 {
		t.Fatalf("after a durable enqueue: %+v", st)
	}
	must(t, q.Close())
	q, err = e.OpenReplayQueue(cfg)
	must(t, err)
	defer q.Close()
	st, err = q.Stats()
	must(t, err)
	if st.Recovered == 0 || st.Torn != 0 || st.TruncatedBytes != 0 || st.Ready[ClassGold] != 1 ||
		st.Skipped != 0 || st.SkippedBytes != 0 || st.AsideFiles != 0 || st.Repaired != 0 {
		t.Fatalf("after reopening: %+v", st)
	}
}

// A record whose length field alone was damaged on disk is read back
// whole, and Stats counts it in Repaired (in no count of what was lost).
func TestReplayJournalRepairedCount(t *testing.T) {
	e := newEngine(t, "")
	dir := t.TempDir()
	cfg := `{"store":"journal","fsync":"always","dir":` + jsonString(dir) + `}`
	q, err := e.OpenReplayQueue(cfg)
	skipUnlessExported(t, err, "spi_replay_open")
	must(t, err)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	for _, k := range []string{"a", "b"} {
		_, err = q.Enqueue(Envelope{Key: k, Body: body, Class: ClassGold})
		must(t, err)
	}
	must(t, q.Close())
	seg := filepath.Join(dir, "000001.log")
	b, err := os.ReadFile(seg)
	must(t, err)
	b[8] ^= 0x01 // the first record's length field (header: magic, type, flags, length)
	must(t, os.WriteFile(seg, b, 0o600))
	q, err = e.OpenReplayQueue(cfg)
	must(t, err)
	defer q.Close()
	st, err := q.Stats()
	must(t, err)
	if st.Repaired != 1 || st.Ready[ClassGold] != 2 || st.Torn != 0 || st.Skipped != 0 {
		t.Fatalf("after reopening with a damaged length field: %+v", st)
	}
}

// "redis" at an address nobody answers, with the fallback journal: the
// enqueues go to the journal and the engine's metrics text counts them as
// held; Stats still returns this process's counts (the same as the metrics
// text) with the outage flagged (SPI_EIO from C), while a journal queue
// reads the new fields as 0. Needs libspotinfer_redis beside the library.
func TestReplayFallbackCounts(t *testing.T) {
	e := newEngine(t, "")
	dir := t.TempDir()
	q, err := e.OpenReplayQueue(`{"store":"redis","fallback":"journal","dir":` + jsonString(dir) +
		`,"store_config":{"address":"127.0.0.1:1","timeout_ms":100}}`)
	skipUnlessExported(t, err, "spi_replay_open")
	if errors.Is(err, ErrNotFound) {
		t.Skipf("no libspotinfer_redis: %v", err)
	}
	must(t, err)
	body := []byte(`{"model":"m","messages":[{"role":"user","content":"hi"}]}`)
	for _, k := range []string{"a", "b"} {
		_, err = q.Enqueue(Envelope{Key: k, Body: body, Class: ClassGold})
		must(t, err)
	}
	text, err := e.Metrics()
	must(t, err)
	for _, want := range []string{"\nspotinfer_replay_fallback_envelopes 2\n",
		"\nspotinfer_replay_fallback_enqueued_total 2\n", "\nspotinfer_replay_fallback_moved_total 0\n"} {
		if !strings.Contains(text, want) {
			t.Fatalf("the metrics text lacks %q", want)
		}
	}
	out, err := q.Stats()
	if err != nil {
		t.Fatalf("Stats with the store unreachable: %v", err)
	}
	if !out.StoreUnreachable || !strings.Contains(out.StoreError, `replay store "redis"`) ||
		out.Enqueued != 2 || out.Duplicates != 0 || out.Acked != 0 || out.Nacked != 0 ||
		out.FallbackHeld != 2 || out.FallbackEnqueued != 2 || out.FallbackMoved != 0 ||
		out.Ready != [4]uint64{} || out.Leased != 0 {
		t.Fatalf("Stats with the store unreachable: %+v", out)
	}
	must(t, q.Close())
	j, err := e.OpenReplayQueue(`{"store":"journal","dir":` + jsonString(t.TempDir()) + `}`)
	must(t, err)
	defer j.Close()
	st, err := j.Stats()
	must(t, err)
	if st.FallbackHeld != 0 || st.FallbackEnqueued != 0 || st.FallbackMoved != 0 ||
		st.StoreUnreachable || st.StoreError != "" {
		t.Fatalf("a journal queue: %+v", st)
	}
}

// A notice's node, event id and dedup key are identifiers: one that does
// not fit its C field, or holds a NUL, is refused, never cut into another
// value (a cut node would name another machine).
func TestNoticeIdentifiersAreRefusedNotCut(t *testing.T) {
	e := newEngine(t, "")
	short := strings.Repeat("n", 63)
	for _, node := range []string{short, "i-1"} {
		must(t, e.UpsertReplica(ReplicaInfo{ID: "spot-" + node[:1], Pool: PoolSpot, USDPerHour: 2,
			MaxInflight: 16, Node: node}))
	}
	base := Notice{Kind: NoticeTerminate, Format: NoticeAWSInstanceAction, Node: "i-1",
		DeadlineNs: 1 << 62, Active: true, DedupKey: "k"}
	for _, c := range []struct {
		field string
		edit  func(n *Notice)
	}{
		{"node", func(n *Notice) { n.Node = short + "-other-machine" }},
		{"node", func(n *Notice) { n.Node = "i-1\x00i-2" }},
		{"event_id", func(n *Notice) { n.EventID = strings.Repeat("e", 64) }},
		{"event_id", func(n *Notice) { n.EventID = "ev\x00" }},
		{"dedup_key", func(n *Notice) { n.DedupKey = strings.Repeat("d", 160) }},
		{"dedup_key", func(n *Notice) { n.DedupKey = "k\x00other" }},
	} {
		n := base
		c.edit(&n)
		_, err := e.Notice(n)
		skipUnlessExported(t, err, "spi_engine_notice")
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("notice %+v: %v; want ErrInvalid naming %s", n, err, c.field)
		}
	}
	for _, node := range []string{short, "i-1"} {
		if st, err := e.NodeState(node); err != nil || st != NodeActive {
			t.Errorf("machine %q is %v (%v) after refused notices", node, st, err)
		}
	}
	// What fits is taken as is.
	n := base
	n.Node, n.EventID, n.DedupKey = short, strings.Repeat("e", 63), strings.Repeat("d", 159)
	_, err := e.Notice(n)
	must(t, err)
	if st, _ := e.NodeState(short); st != NodeNoticed {
		t.Fatalf("machine %q is %v", short, st)
	}
}

// An envelope's tenant goes to a fixed C field too: refused when it does
// not fit or holds a NUL, never cut (possibly inside a character).
func TestEnvelopeTenantIsRefusedNotCut(t *testing.T) {
	e := newEngine(t, "")
	q, err := e.OpenReplayQueue(`{"store":"memory"}`)
	skipUnlessExported(t, err, "spi_replay_open")
	must(t, err)
	defer q.Close()
	body := []byte(`{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`)
	for _, tenant := range []string{strings.Repeat("t", 62) + "é", strings.Repeat("t", 64), "acme\x00evil"} {
		env := Envelope{Key: "a", Body: body, Class: ClassGold, Tenant: tenant, PartialText: "x"}
		if _, err := q.Enqueue(env); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "tenant") {
			t.Errorf("enqueue with tenant %q (%d bytes): %v; want ErrInvalid", tenant, len(tenant), err)
		}
		if _, _, err := Continuation(env); !errors.Is(err, ErrInvalid) {
			t.Errorf("continuation with tenant %q: %v; want ErrInvalid", tenant, err)
		}
	}
	tenant := strings.Repeat("t", 61) + "é" // 63 bytes: fits
	_, err = q.Enqueue(Envelope{Key: "b", Body: body, Class: ClassGold, Tenant: tenant})
	must(t, err)
	c, ok, err := q.Claim(ClassMask(ClassGold), 0)
	must(t, err)
	if !ok || c.Envelope.Key != "b" || c.Envelope.Tenant != tenant {
		t.Fatalf("claimed %+v, want key b with tenant %q", c, tenant)
	}
}
