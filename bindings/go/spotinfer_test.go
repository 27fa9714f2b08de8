package spotinfer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// repoRoot is the repository this package lives in (bindings/go).
func repoRoot(t testing.TB) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func newEngine(t testing.TB, config string) *Engine {
	t.Helper()
	e, err := NewEngine(config)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func newRequest(t testing.TB, e *Engine) *Request {
	t.Helper()
	r, err := e.NewRequest()
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestVersion(t *testing.T) {
	if VersionNumber() != HeaderVersionNumber {
		t.Fatalf("loaded %d, built against %d", VersionNumber(), HeaderVersionNumber)
	}
	v := VersionNumber()
	want := fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
	if Version() != want {
		t.Fatalf("Version() = %q, want %q", Version(), want)
	}
}

func TestNames(t *testing.T) {
	if ClassGold.String() != "gold" || Class(9).String() != "invalid" {
		t.Fatal(ClassGold.String(), Class(9).String())
	}
	if ServiceTierFlex.String() != "flex" || ModuleCostModel.String() != "cost_model" {
		t.Fatal("names")
	}
	if ReasonAffinity.String() != "affinity" || ReasonHalfOpenProbe.String() == "invalid" {
		t.Fatal(ReasonAffinity.String(), ReasonHalfOpenProbe.String())
	}
	if StatusText(-12345) != "unknown status" || StatusText(StatusParse) == "" {
		t.Fatal("status text")
	}
}

func TestErrorsIs(t *testing.T) {
	e := newEngine(t, "")
	err := e.Configure(`{"classifier":{"rules":3}}`)
	if !errors.Is(err, ErrType) {
		t.Fatalf("want ErrType, got %v", err)
	}
	if errors.Is(err, ErrParse) {
		t.Fatal("ErrType matched ErrParse")
	}
	var se *Error
	if !errors.As(err, &se) || se.Code != StatusType || se.Op != "spi_engine_configure" {
		t.Fatalf("errors.As: %#v", se)
	}
	if !strings.Contains(se.Message, "classifier.rules") {
		t.Fatalf("message %q does not name the path", se.Message)
	}
	if !strings.Contains(err.Error(), "classifier.rules") || !strings.Contains(err.Error(), "(-21)") {
		t.Fatalf("Error() = %q", err.Error())
	}
	if e.ErrMsg() != se.Message {
		t.Fatalf("ErrMsg %q", e.ErrMsg())
	}
	for cfg, want := range map[string]error{
		`{not json`:                        ErrParse,
		`{"nope":1}`:                       ErrUnknown,
		`{"cache_key":{"block_bytes":0}}`:  ErrRange,
		`{"modules":{"classifier":"zzz"}}`: ErrNotFound,
	} {
		if err := e.Configure(cfg); !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", cfg, err, want)
		}
	}
	// Wrapped errors still match.
	wrapped := errors.Join(errors.New("context"), e.Configure("{"))
	if !errors.Is(wrapped, ErrParse) {
		t.Fatal("wrapped")
	}
}

func TestConfigJSONAndFile(t *testing.T) {
	e := newEngine(t, `{"cost":{"spot_usd_per_gpu_hour":2.1}}`)
	js, err := e.ConfigJSON()
	must(t, err)
	if !strings.Contains(js, `"spot_usd_per_gpu_hour":2.1`) {
		t.Fatalf("config json: %.200s", js)
	}
	must(t, e.Configure(js))
	js2, _ := e.ConfigJSON()
	if js2 != js {
		t.Fatal("feeding the configuration back changed it")
	}
	path := filepath.Join(t.TempDir(), "c.json")
	must(t, os.WriteFile(path, []byte(`{"cache_key":{"block_bytes":64}}`), 0o600))
	must(t, e.ConfigureFile(path))
	js, _ = e.ConfigJSON()
	if !strings.Contains(js, `"block_bytes":64`) {
		t.Fatal("file config not applied")
	}
	if err := e.ConfigureFile(filepath.Join(t.TempDir(), "missing.json")); !errors.Is(err, ErrIO) {
		t.Fatalf("missing file: %v", err)
	}
	// A NUL would end the path C reads early: another file.
	if err := e.ConfigureFile(path + "\x00.missing"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("path with a NUL: %v", err)
	}
	must(t, e.ConfigureValue(map[string]any{"cache_key": map[string]any{"block_bytes": 128}}))
	if _, err := NewEngine("{"); !errors.Is(err, ErrParse) {
		t.Fatalf("NewEngine with bad config: %v", err)
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	e, err := NewEngine("")
	must(t, err)
	r, err := e.NewRequest()
	must(t, err)
	must(t, e.Close())
	must(t, e.Close())
	if err := e.Configure("{}"); !errors.Is(err, ErrMisuse) {
		t.Fatalf("use after close: %v", err)
	}
	// The engine freed its request; using it is a clean error.
	if _, err := r.Classify(PressureNormal); !errors.Is(err, ErrMisuse) {
		t.Fatalf("request after engine close: %v", err)
	}
	must(t, r.Close())
	if _, err := e.NewRequest(); !errors.Is(err, ErrMisuse) {
		t.Fatal(err)
	}
}

func TestFinalizersAreASafetyNet(t *testing.T) {
	for i := 0; i < 100; i++ {
		e, err := NewEngine("")
		must(t, err)
		for j := 0; j < 3; j++ {
			if _, err := e.NewRequest(); err != nil {
				t.Fatal(err)
			}
		}
		if i%2 == 0 {
			e.Close()
		}
	}
	runtime.GC()
	runtime.GC()
}

func TestVocabularies(t *testing.T) {
	e := newEngine(t, "")
	if p, err := e.ClassToPriority(PrioVLLM, ClassGold); err != nil || p != -1 {
		t.Fatal(p, err)
	}
	if p, err := e.ClassToPriority(PrioLLMD, ClassBronze); err != nil || p != -1 {
		t.Fatal(p, err)
	}
	if c, err := e.ClassFromPriority(PrioVLLM, 5); err != nil || c != ClassBronze {
		t.Fatal(c, err)
	}
	if st, err := e.ClassToServiceTier(ClassGold); err != nil || st != ServiceTierPriority {
		t.Fatal(st, err)
	}
	if c, err := e.ClassFromServiceTier(ServiceTierFlex); err != nil || c != ClassBronze {
		t.Fatal(c, err)
	}
	if _, err := e.ClassToPriority(7, ClassGold); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
}

func TestOptionsAndModuleNames(t *testing.T) {
	opts, err := Options()
	must(t, err)
	found := false
	for _, o := range opts {
		if o.Path == "cache_key.block_bytes" {
			found = o.Type == OptInt && o.DefaultJSON == "1024" && o.Min <= 1024 && o.Max >= 1024
		}
	}
	if len(opts) < 20 || !found {
		t.Fatalf("%d options, block_bytes ok=%v", len(opts), found)
	}
	e := newEngine(t, "")
	names, err := e.ModuleNames(ModuleKeyBuilder)
	must(t, err)
	if len(names) != 1 || names[0] != "xxh3-v1" {
		t.Fatal(names)
	}
}

func TestHooks(t *testing.T) {
	var lines []string
	now := int64(1_700_000_000_000_000_000)
	e, err := NewEngineWithHooks("", Hooks{
		Clock:    func() int64 { return now },
		Log:      func(l LogLevel, msg string) { lines = append(lines, msg) },
		LogLevel: LogDebug,
	})
	must(t, err)
	defer e.Close()
	must(t, e.RegisterClassifier("bad", failing{err: errors.New("boom")}, OnFailureFallback))
	must(t, e.Configure(`{"modules":{"classifier":"bad"}}`))
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	c, err := r.Classify(PressureNormal)
	must(t, err)
	if c.Class != ClassSilver {
		t.Fatal(c.Class)
	}
	if len(lines) == 0 || !strings.Contains(strings.Join(lines, "\n"), "bad") {
		t.Fatalf("log lines: %q", lines)
	}
}
