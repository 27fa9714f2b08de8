package spotinfer

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// threshold is a classifier written in Go: gold for SLAs under a
// configured threshold, bronze otherwise.
type threshold struct {
	mu        sync.Mutex
	configs   []string
	released  []any
	destroyed bool
	calls     atomic.Int64
}

type thresholdInst struct{ ms int64 }

func (m *threshold) Configure(config []byte) (any, error) {
	m.mu.Lock()
	m.configs = append(m.configs, string(config))
	m.mu.Unlock()
	var c struct {
		ThresholdMs *int64 `json:"threshold_ms"`
	}
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, err
	}
	if c.ThresholdMs == nil {
		return &thresholdInst{1000}, nil
	}
	if *c.ThresholdMs <= 0 {
		return nil, fmt.Errorf("threshold_ms must be positive, got %d", *c.ThresholdMs)
	}
	return &thresholdInst{*c.ThresholdMs}, nil
}

func (m *threshold) Classify(inst any, req *RequestView, p Pressure) (Verdict, error) {
	m.calls.Add(1)
	sla, ok := req.SLAMs()
	if ok && sla < inst.(*thresholdInst).ms {
		return Verdict{Class: ClassGold, Reason: "go fast " + req.Model(),
			MaxOutputTokens: 100 * int64(p+1)}, nil
	}
	return Verdict{Class: ClassBronze, Replayable: true, NoTools: true}, nil
}

func (m *threshold) Release(inst any) {
	m.mu.Lock()
	m.released = append(m.released, inst)
	m.mu.Unlock()
}

func (m *threshold) Destroy() { m.destroyed = true }

type failing struct {
	err   error
	panic bool
}

func (f failing) Configure([]byte) (any, error) { return nil, nil }
func (f failing) Classify(any, *RequestView, Pressure) (Verdict, error) {
	if f.panic {
		panic("classifier exploded")
	}
	return Verdict{}, f.err
}

func useClassifier(t *testing.T, e *Engine, name, cfg string) error {
	t.Helper()
	return e.Configure(`{"modules":{"classifier":"` + name + `"},"module_config":{"` + name + `":` + cfg + `}}`)
}

func TestGoClassifier(t *testing.T) {
	e, err := NewEngine("")
	must(t, err)
	m := &threshold{}
	must(t, e.RegisterClassifier("go-threshold", m, OnFailureError))
	names, _ := e.ModuleNames(ModuleClassifier)
	if !strings.Contains(strings.Join(names, ","), "go-threshold") {
		t.Fatal(names)
	}
	must(t, useClassifier(t, e, "go-threshold", `{"threshold_ms":2000}`))
	r, err := e.NewRequest()
	must(t, err)
	must(t, r.SetStr(FieldModel, "llama"))
	must(t, r.SetInt(FieldSLAMs, 1500))
	c, err := r.Classify(PressureHigh)
	must(t, err)
	if c.Class != ClassGold || c.Reason != "go fast llama" || c.MaxOutputTokens != 300 ||
		c.ModelTier != TierLarge || !c.ToolsAllowed || c.RuleIndex != -1 ||
		c.VLLMPriority != -1 || c.Pressure != PressureHigh {
		t.Fatalf("%+v", c)
	}
	must(t, r.SetInt(FieldSLAMs, 5000))
	c, err = r.Classify(PressureNormal)
	must(t, err)
	if c.Class != ClassBronze || !c.Replayable || c.ToolsAllowed {
		t.Fatalf("%+v", c)
	}
	// Reconfiguring releases the previous instance.
	must(t, useClassifier(t, e, "go-threshold", `{"threshold_ms":9000}`))
	if len(m.released) == 0 || m.released[0].(*thresholdInst).ms != 2000 {
		t.Fatalf("released %v", m.released)
	}
	if c, _ := r.Classify(PressureNormal); c.Class != ClassGold {
		t.Fatal(c.Class)
	}
	must(t, e.Close())
	if !m.destroyed {
		t.Fatal("destroy not called")
	}
}

func TestGoClassifierConfigureError(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.RegisterClassifier("go", &threshold{}, OnFailureError))
	err := useClassifier(t, e, "go", `{"threshold_ms":-5}`)
	if !errors.Is(err, ErrModule) || !strings.Contains(err.Error(), "threshold_ms must be positive") {
		t.Fatalf("%v", err)
	}
	js, _ := e.ConfigJSON()
	if !strings.Contains(js, `"classifier":"reference"`) {
		t.Fatal("failed configure changed the configuration")
	}
	// A module's own *Error code is passed through.
	must(t, e.RegisterClassifier("typed", typedErr{}, OnFailureError))
	if err := useClassifier(t, e, "typed", `{}`); !errors.Is(err, ErrRange) {
		t.Fatal(err)
	}
}

type typedErr struct{}

func (typedErr) Configure([]byte) (any, error) {
	return nil, &Error{Code: StatusRange, Message: "out of range"}
}
func (typedErr) Classify(any, *RequestView, Pressure) (Verdict, error) { return Verdict{}, nil }

func TestGoClassifierFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  failing
	}{
		{"err", failing{err: errors.New("boom")}},
		{"panic", failing{panic: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, "")
			must(t, e.RegisterClassifier("bad", tc.mod, OnFailureError))
			must(t, e.RegisterClassifier("bad-fb", tc.mod, OnFailureFallback))
			must(t, useClassifier(t, e, "bad", "{}"))
			r := newRequest(t, e)
			must(t, r.SetStr(FieldModel, "m"))
			must(t, r.SetBool(FieldStream, true))
			_, err := r.Classify(PressureNormal)
			if !errors.Is(err, ErrModule) || !strings.Contains(err.Error(), `"bad"`) {
				t.Fatalf("%v", err)
			}
			// Still usable, and the fallback policy uses the built-in.
			must(t, useClassifier(t, e, "bad-fb", "{}"))
			c, err := r.Classify(PressureNormal)
			must(t, err)
			if c.Class != ClassGold || c.Reason != "rule interactive" {
				t.Fatalf("%+v", c)
			}
		})
	}
}

type badTier struct{ failing }

func (badTier) Classify(any, *RequestView, Pressure) (Verdict, error) {
	return Verdict{Class: ClassGold, ModelTier: 7}, nil
}

func TestGoClassifierOutputIsChecked(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.RegisterClassifier("bad", badTier{}, OnFailureError))
	must(t, useClassifier(t, e, "bad", "{}"))
	r := newRequest(t, e)
	if _, err := r.Classify(PressureNormal); !errors.Is(err, ErrModule) ||
		!strings.Contains(err.Error(), "invalid") {
		t.Fatal(err)
	}
}

func TestRegistrationErrors(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.RegisterClassifier("dup", &threshold{}, OnFailureError))
	if err := e.RegisterClassifier("dup", &threshold{}, OnFailureError); !errors.Is(err, ErrExist) {
		t.Fatal(err)
	}
	if err := e.RegisterClassifier("bad name!", &threshold{}, OnFailureError); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if err := e.RegisterClassifier("x", nil, OnFailureError); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if err := e.RegisterClassifier("badpolicy", &threshold{}, 7); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
}

// viewKeeper keeps the view past its callback, which must then panic.
type viewKeeper struct {
	failing
	kept *RequestView
	seen []string
}

func (k *viewKeeper) Classify(_ any, req *RequestView, _ Pressure) (Verdict, error) {
	k.kept = req
	sla, slaOK := req.SLAMs()
	k.seen = append(k.seen, req.Model(), req.Tenant(), req.LastUserText(),
		fmt.Sprint(req.Stream(), sla, slaOK, req.MessageCount(), req.PriorityClass(),
			req.ExplicitClass(), len(req.Prompt()), req.HasTools()))
	return Verdict{Class: ClassSilver}, nil
}

func TestRequestView(t *testing.T) {
	e := newEngine(t, "")
	k := &viewKeeper{}
	must(t, e.RegisterClassifier("keeper", k, OnFailureError))
	must(t, useClassifier(t, e, "keeper", "{}"))
	r, err := e.ParseOpenAI([]byte(`{"model":"m","stream":true,"priority":5,`+
		`"metadata":{"tenant":"acme","sla_ms":"700"},`+
		`"messages":[{"role":"user","content":"why?"}]}`), OpenAIAuto)
	must(t, err)
	defer r.Close()
	_, err = r.Classify(PressureNormal)
	must(t, err)
	want := []string{"m", "acme", "why?", "true 700 true 1 bronze unset 10 false"}
	if fmt.Sprint(k.seen) != fmt.Sprint(want) {
		t.Fatalf("%q", k.seen)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("a view used after its callback did not panic")
		}
	}()
	_ = k.kept.Model()
}

func TestModuleSurvivesGC(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.RegisterClassifier("ephemeral", &threshold{}, OnFailureError))
	runtime.GC()
	must(t, useClassifier(t, e, "ephemeral", `{"threshold_ms":500}`))
	runtime.GC()
	r := newRequest(t, e)
	must(t, r.SetInt(FieldSLAMs, 100))
	if c, err := r.Classify(PressureNormal); err != nil || c.Class != ClassGold {
		t.Fatal(c, err)
	}
}

type lenKeys struct{ failing }

func (lenKeys) BuildKey(_ any, req *RequestView) (CacheKey, error) {
	return CacheKey{High: uint64(len(req.Model())), Low: 0xabc}, nil
}

func (lenKeys) BlockHashes(_ any, req *RequestView, key CacheKey, dst []uint64) ([]uint64, error) {
	for i := 0; i < len(req.Prompt())/10; i++ {
		dst = append(dst, key.Low+uint64(i))
	}
	return dst, nil
}

type flatPrice struct{ usd float64 }

func (f flatPrice) Configure(config []byte) (any, error) {
	var c struct{ USD float64 }
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, err
	}
	return c.USD, nil
}

func (f flatPrice) Price(inst any, _ *RequestView, pool Pool) (Price, error) {
	usd := inst.(float64)
	if pool == PoolOnDemand {
		usd *= 2
	}
	if usd < 0 {
		return Price{USD: usd}, nil // the library rejects it
	}
	return Price{PromptTokens: 1, OutputTokens: 2, GPUSeconds: 0.5, USD: usd, USDPerMillion: 1}, nil
}

func TestGoKeyBuilderAndCostModel(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.RegisterKeyBuilder("go-keys", lenKeys{}, OnFailureError))
	must(t, e.RegisterCostModel("go-flat", flatPrice{}, OnFailureError))
	must(t, e.Configure(`{"modules":{"key_builder":"go-keys","cost_model":"go-flat"},`+
		`"module_config":{"go-flat":{"usd":0.25}}}`))
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "abcd"))
	must(t, r.SetStr(FieldPrompt, strings.Repeat("z", 95)))
	k, err := r.CacheKey()
	must(t, err)
	if k != (CacheKey{4, 0xabc}) {
		t.Fatal(k)
	}
	b, err := r.BlockHashes()
	must(t, err)
	if len(b) != 9 || b[8] != 0xabc+8 {
		t.Fatal(b)
	}
	p, err := r.Price(PoolOnDemand)
	must(t, err)
	if p.USD != 0.5 || p.Pool != PoolOnDemand {
		t.Fatalf("%+v", p)
	}
	must(t, e.Configure(`{"modules":{"cost_model":"go-flat"},"module_config":{"go-flat":{"usd":-1}}}`))
	if _, err := r.Price(PoolSpot); !errors.Is(err, ErrModule) {
		t.Fatal(err)
	}
}

func TestRegisterKinds(t *testing.T) {
	e := newEngine(t, "")
	if err := e.Register(ModuleKeyBuilder, "x", &threshold{}, OnFailureError); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if err := e.Register(ModuleNoticeSource, "ns", &threshold{}, OnFailureError); !errors.Is(err, ErrNotSup) {
		t.Fatal(err)
	}
	must(t, e.Register(ModuleClassifier, "generic", &threshold{}, OnFailureError))
}

// tiers is a LevelsClassifier: silver, with a cap that tightens and tools
// that go as the pressure rises, and bronze deferred at critical pressure.
type tiers struct {
	levels   atomic.Int64
	classify atomic.Int64
	bad      bool
}

func (m *tiers) Configure([]byte) (any, error) { return nil, nil }

func (m *tiers) Classify(any, *RequestView, Pressure) (Verdict, error) {
	m.classify.Add(1)
	return Verdict{Class: ClassBronze, Reason: "classify"}, nil
}

func (m *tiers) ClassifyLevels(_ any, req *RequestView) (Verdict, DegradeLevels, error) {
	m.levels.Add(1)
	lv := DegradeLevels{
		MaxOutputTokens: [4]int64{0, 800, 400, 100},
		NoTools:         [4]bool{false, false, true, true},
		Defer:           [4]bool{false, false, false, true},
	}
	if m.bad {
		lv.MaxOutputTokens[3] = -1
	}
	// The plan fields of the verdict are ignored.
	return Verdict{Class: ClassSilver, Replayable: true, Reason: "levels " + req.Model(),
		MaxOutputTokens: 7, NoTools: true, Defer: true}, lv, nil
}

func TestGoLevelsClassifier(t *testing.T) {
	e := newEngine(t, "")
	m := &tiers{}
	must(t, e.RegisterClassifier("go-levels", m, OnFailureError))
	must(t, useClassifier(t, e, "go-levels", "{}"))
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "llama"))
	want := []struct {
		cap      int64
		tools    bool
		deferred bool
	}{{0, true, false}, {800, true, false}, {400, false, false}, {100, false, true}}
	for p, w := range want {
		c, err := r.Classify(Pressure(p))
		must(t, err)
		if c.Class != ClassSilver || !c.Replayable || c.Reason != "levels llama" ||
			c.MaxOutputTokens != w.cap || c.ToolsAllowed != w.tools || c.Defer != w.deferred ||
			c.Pressure != Pressure(p) {
			t.Fatalf("pressure %d: %+v", p, c)
		}
	}
	if m.levels.Load() != 4 || m.classify.Load() != 0 {
		t.Fatalf("ClassifyLevels %d calls, Classify %d", m.levels.Load(), m.classify.Load())
	}
	// Every level is checked, not only the one asked for.
	m.bad = true
	if _, err := r.Classify(PressureNormal); !errors.Is(err, ErrModule) ||
		!strings.Contains(err.Error(), "invalid") {
		t.Fatal(err)
	}
}

// A classifier without ClassifyLevels is registered without it: Classify
// answers.
func TestGoClassifierWithoutLevels(t *testing.T) {
	e := newEngine(t, "")
	m := &threshold{}
	must(t, e.RegisterClassifier("go-plain", m, OnFailureError))
	must(t, useClassifier(t, e, "go-plain", "{}"))
	r := newRequest(t, e)
	if c, err := r.Classify(PressureHigh); err != nil || c.Class != ClassBronze {
		t.Fatal(c, err)
	}
	if m.calls.Load() != 1 {
		t.Fatal(m.calls.Load())
	}
}

// metaClassifier records each view's metadata: gold for team=search.
type metaClassifier struct{ seen []map[string]string }

func (m *metaClassifier) Configure([]byte) (any, error) { return nil, nil }
func (m *metaClassifier) Classify(_ any, req *RequestView, _ Pressure) (Verdict, error) {
	md := req.Metadata()
	m.seen = append(m.seen, md)
	if md["team"] == "search" {
		return Verdict{Class: ClassGold}, nil
	}
	return Verdict{Class: ClassBronze}, nil
}

func TestGoViewMetadata(t *testing.T) {
	e, err := NewEngine("")
	must(t, err)
	defer e.Close()
	m := &metaClassifier{}
	must(t, e.RegisterClassifier("go-meta", m, OnFailureError))
	must(t, useClassifier(t, e, "go-meta", `{}`))
	r, err := e.NewRequest()
	must(t, err)
	must(t, r.SetStr(FieldModel, "m"))
	if c, err := r.Classify(PressureNormal); err != nil || c.Class != ClassBronze || len(m.seen[0]) != 0 {
		t.Fatalf("%+v %v %v", c, err, m.seen)
	}
	must(t, r.SetMetadata("team", "search"))
	must(t, r.SetMetadata("note", ""))
	if c, _ := r.Classify(PressureNormal); c.Class != ClassGold {
		t.Fatal(c.Class)
	}
	if got := m.seen[len(m.seen)-1]; len(got) != 2 || got["team"] != "search" || got["note"] != "" {
		t.Fatal(got)
	}
	must(t, r.SetMetadata("team", "ads")) // the later pair counts
	if c, _ := r.Classify(PressureNormal); c.Class != ClassBronze {
		t.Fatal(c.Class)
	}
	body := `{"model":"m","metadata":{"team":"search"},"messages":[{"role":"user","content":"hi"}]}`
	p, err := e.ParseOpenAI([]byte(body), OpenAIAuto)
	must(t, err)
	defer p.Close()
	if c, _ := p.Classify(PressureNormal); c.Class != ClassGold {
		t.Fatal(c.Class)
	}
}

// longReason answers a reason longer than the C field, in two-byte
// characters, so a cut at the field's size lands inside one.
type longReason struct{}

func (longReason) Configure([]byte) (any, error) { return nil, nil }
func (longReason) Classify(any, *RequestView, Pressure) (Verdict, error) {
	return Verdict{Class: ClassGold, Reason: strings.Repeat("é", 100)}, nil
}

func TestGoReasonIsCutBeforeACharacter(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.RegisterClassifier("long", longReason{}, OnFailureError))
	must(t, e.Configure(`{"modules":{"classifier":"long"}}`))
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	c, err := r.Classify(PressureNormal)
	must(t, err)
	full := strings.Repeat("é", 100)
	if !utf8.ValidString(c.Reason) || !strings.HasPrefix(full, c.Reason) || len(c.Reason) < 100 {
		t.Fatalf("reason %d bytes %q: want a whole-character prefix of the module's", len(c.Reason), c.Reason)
	}
}

// bufSizeKeys fails its block hashes with ErrBufSize, as an error passed up
// from another spotinfer call would.
type bufSizeKeys struct{ failing }

func (bufSizeKeys) BuildKey(any, *RequestView) (CacheKey, error) { return CacheKey{1, 2}, nil }
func (bufSizeKeys) BlockHashes(any, *RequestView, CacheKey, []uint64) ([]uint64, error) {
	return nil, &Error{Code: StatusBufSize, Message: "inner buffer"}
}

func TestBlockHashesReturnsAModuleBufSizeError(t *testing.T) {
	e := newEngine(t, "")
	must(t, e.RegisterKeyBuilder("bs", bufSizeKeys{}, OnFailureError))
	must(t, e.Configure(`{"modules":{"key_builder":"bs"}}`))
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	must(t, r.SetStr(FieldPrompt, strings.Repeat("z", 200)))
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		_, err := r.AppendBlockHashes(make([]uint64, 0, 4))
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrBufSize) {
			t.Fatalf("want the module's ErrBufSize, got %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AppendBlockHashes still retrying after 5 s")
	}
}

// panicRelease panics in Release.
type panicRelease struct{ failing }

func (panicRelease) Configure([]byte) (any, error) { return &thresholdInst{}, nil }
func (panicRelease) Release(any)                   { panic("release failed") }

func TestPanickingReleaseStillDeletesTheHandle(t *testing.T) {
	m := &module{name: "pr", impl: panicRelease{}, handles: map[cgo.Handle]struct{}{}}
	inst, err := m.configure([]byte("{}"))
	must(t, err)
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("release let the panic out: %v", p)
			}
		}()
		m.release(inst)
	}()
	if err := m.lastErr; err == nil || !strings.Contains(err.Error(), "release failed") {
		t.Errorf("the panic is not kept as the module's error: %v", err)
	}
	deleted := func() (ok bool) {
		defer func() { ok = recover() != nil }() // Value panics on a deleted handle
		cgo.Handle(inst).Value()
		return false
	}()
	if !deleted {
		t.Fatal("the instance's handle outlived a panicking Release")
	}
	// Through an engine: configurations come and go, Close releases the last.
	e, err := NewEngine("")
	must(t, err)
	must(t, e.RegisterClassifier("pr", panicRelease{}, OnFailureError))
	for i := 0; i < 3; i++ {
		must(t, useClassifier(t, e, "pr", fmt.Sprintf(`{"n":%d}`, i)))
	}
	must(t, e.Close())
}
