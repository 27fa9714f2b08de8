package spotinfer

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

const chatBody = `{"model":"llama-3.1-70b","stream":true,"messages":[` +
	`{"role":"system","content":"You are terse."},{"role":"user","content":"Hello"}]}`

func TestFields(t *testing.T) {
	e := newEngine(t, "")
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "llama"))
	must(t, r.SetStr(FieldTenant, "acme"))
	must(t, r.SetInt(FieldSLAMs, 1500))
	must(t, r.SetBool(FieldStream, true))
	must(t, r.SetClass(ClassBronze))
	if s, _ := r.Str(FieldModel); s != "llama" {
		t.Fatal(s)
	}
	if s, _ := r.Str(FieldClass); s != "bronze" {
		t.Fatal(s)
	}
	must(t, r.SetClass(ClassUnset)) // clears it
	if s, _ := r.Str(FieldClass); s != "" {
		t.Fatal(s)
	}
	must(t, r.SetClass(ClassBronze))
	if v, ok, err := r.Int(FieldSLAMs); v != 1500 || !ok || err != nil {
		t.Fatal(v, ok, err)
	}
	must(t, r.UnsetInt(FieldSLAMs))
	if _, ok, _ := r.Int(FieldSLAMs); ok {
		t.Fatal("still set")
	}
	bin := "\x00\xff\x10\xfe\x80"
	must(t, r.SetStr(FieldTenantSalt, bin))
	if s, _ := r.Str(FieldTenantSalt); s != bin {
		t.Fatalf("%q", s)
	}
	must(t, r.AddMessage("user", "hi"))
	must(t, r.SetMetadata("sla_ms", "2500"))
	if v, _, _ := r.Int(FieldSLAMs); v != 2500 {
		t.Fatal(v)
	}
	must(t, r.SetTools([]map[string]any{{"type": "function", "function": map[string]any{"name": "f"}}}))
	if r.MessageCount() != 1 {
		t.Fatal(r.MessageCount())
	}
	must(t, r.Reset())
	if s, _ := r.Str(FieldModel); s != "" || r.MessageCount() != 0 {
		t.Fatal("reset")
	}
}

func TestSetterErrors(t *testing.T) {
	e := newEngine(t, "")
	r := newRequest(t, e)
	err := r.SetInt(FieldSLAMs, 0)
	var se *Error
	if !errors.As(err, &se) || se.Code != StatusRange || !strings.Contains(se.Message, "sla_ms") {
		t.Fatalf("%v", err)
	}
	if err := r.SetStr(FieldClass, "platinum"); !errors.Is(err, ErrUnknown) {
		t.Fatal(err)
	}
	if err := r.SetStr(FieldToolsJSON, "{"); !errors.Is(err, ErrParse) {
		t.Fatal(err)
	}
	if err := r.AddMessage("robot", "x"); !errors.Is(err, ErrUnknown) || !strings.Contains(err.Error(), "robot") {
		t.Fatal(err)
	}
	if err := r.SetMetadata("sla_ms", "soon"); !errors.Is(err, ErrType) {
		t.Fatal(err)
	}
}

func TestParseOpenAI(t *testing.T) {
	e := newEngine(t, "")
	r, err := e.ParseOpenAI([]byte(chatBody), OpenAIAuto)
	must(t, err)
	defer r.Close()
	c, err := r.Classify(PressureNormal)
	must(t, err)
	if c.Class != ClassGold || c.Reason != "rule interactive" || c.ModelTier != TierLarge ||
		c.VLLMPriority != -1 || c.ServiceTier != ServiceTierPriority {
		t.Fatalf("%+v", c)
	}
	// All-or-nothing, with the path and the offset in the message.
	err = r.ParseOpenAI([]byte(`{"model":"m","messages":[{"role":"user","content":"a"},{"role":"robot","content":"b"}]}`), OpenAIAuto)
	if !errors.Is(err, ErrUnknown) || !strings.Contains(err.Error(), "messages[1].role") {
		t.Fatal(err)
	}
	if s, _ := r.Str(FieldModel); s != "" || r.MessageCount() != 0 {
		t.Fatal("not reset after a failed parse")
	}
	if _, err := e.ParseOpenAI([]byte(`{"model":`), OpenAIAuto); !errors.Is(err, ErrParse) {
		t.Fatal(err)
	}
	rc, err := e.ParseOpenAI([]byte(`{"model":"m","prompt":"Once upon"}`), OpenAICompletions)
	must(t, err)
	defer rc.Close()
	p, err := rc.CanonicalPrompt()
	must(t, err)
	if string(p) != "Once upon" {
		t.Fatalf("%q", p)
	}
}

func TestDegradePlan(t *testing.T) {
	e := newEngine(t, "")
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	must(t, r.SetClass(ClassBronze))
	type plan struct {
		cap             int64
		tools, deferred bool
	}
	want := []plan{{0, true, false}, {512, true, false}, {256, false, false}, {256, false, true}}
	for p := PressureNormal; p <= PressureCritical; p++ {
		c, err := r.Classify(p)
		must(t, err)
		if got := (plan{c.MaxOutputTokens, c.ToolsAllowed, c.Defer}); got != want[p] {
			t.Errorf("pressure %d: %+v, want %+v", p, got, want[p])
		}
	}
	if _, err := r.Classify(9); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
}

func TestKeyAndBlocks(t *testing.T) {
	e := newEngine(t, `{"cache_key":{"block_bytes":64}}`)
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	must(t, r.SetStr(FieldPrompt, strings.Repeat("y", 64*300)))
	k, err := r.CacheKey()
	must(t, err)
	if k.String() != k.Hex() || len(k.String()) != 32 {
		t.Fatal(k.String(), k.Hex())
	}
	blocks, err := r.BlockHashes()
	must(t, err)
	if len(blocks) != 300 {
		t.Fatal(len(blocks))
	}
	dst := make([]uint64, 1, 512)
	dst, err = r.AppendBlockHashes(dst)
	must(t, err)
	if len(dst) != 301 || dst[1] != blocks[0] {
		t.Fatal(len(dst))
	}
	r2 := newRequest(t, e)
	must(t, r2.SetStr(FieldModel, "m"))
	must(t, r2.SetStr(FieldPrompt, strings.Repeat("y", 64*10)))
	b2, _ := r2.BlockHashes()
	k2, _ := r2.CacheKey()
	if k2 != k || len(b2) != 10 || b2[9] != blocks[9] {
		t.Fatal("shared prefix does not share blocks")
	}
	must(t, e.Configure(`{"cache_key":{"block_tokens":16}}`))
	ids := make([]uint32, 50)
	for i := range ids {
		ids[i] = uint32(i)
	}
	must(t, r2.SetTokenIDs(ids))
	if b, _ := r2.BlockHashes(); len(b) != 3 {
		t.Fatal(len(b))
	}
	must(t, r2.SetTokenIDs(nil))
}

func TestPrice(t *testing.T) {
	e := newEngine(t, `{"cost":{"spot_usd_per_gpu_hour":1.8,"on_demand_usd_per_gpu_hour":4.5}}`)
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	must(t, r.SetStr(FieldPrompt, strings.Repeat("hello ", 100)))
	must(t, r.SetInt(FieldMaxOutputTokens, 256))
	spot, err := r.Price(PoolSpot)
	must(t, err)
	od, err := r.Price(PoolOnDemand)
	must(t, err)
	if spot.Pool != PoolSpot || !(0 < spot.USD && spot.USD < od.USD) || spot.OutputTokens != 256 {
		t.Fatalf("%+v %+v", spot, od)
	}
	if _, err := r.Price(9); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
}

// Golden vectors: the same file the C unit tests check, so Go and C agree
// byte for byte on keys and block hashes.
func TestGoldenVectors(t *testing.T) {
	raw, err := readFile(repoRoot(t), "tests/golden/cache_key_vectors.json")
	must(t, err)
	var doc struct {
		Module  string
		Vectors []struct {
			Name    string
			Config  json.RawMessage
			Request map[string]json.RawMessage
			Key     string
			Blocks  []string
			// The blocks of the prompt sent as a completions prompt,
			// when escaping bytes 0x1B-0x1F changes it.
			CompletionsBlocks []string `json:"completions_blocks"`
		}
		Bodies []struct {
			Name            string
			Config          json.RawMessage
			Body            string
			CanonicalPrompt string `json:"canonical_prompt"`
			Key             string
			Blocks          []string
		}
	}
	must(t, json.Unmarshal(raw, &doc))
	if doc.Module != "xxh3-v1" || len(doc.Vectors) < 30 {
		t.Fatal(doc.Module, len(doc.Vectors))
	}
	fields := map[string]StrField{
		"model": FieldModel, "tokenizer_version": FieldTokenizerVersion,
		"system_prompt": FieldSystemPrompt, "tools_json": FieldToolsJSON,
		"retrieval_template": FieldRetrievalTemplate, "tenant_tier": FieldTenantTier,
		"tenant_salt": FieldTenantSalt, "decode_profile": FieldDecodeProfile,
	}
	e := newEngine(t, "")
	for _, v := range doc.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			must(t, e.Configure(`{"cache_key":`+string(v.Config)+`}`))
			r := newRequest(t, e)
			for name, f := range fields {
				if raw, ok := v.Request[name]; ok {
					b := fieldBytes(t, raw)
					if len(b) > 0 {
						must(t, r.SetStr(f, string(b)))
					}
				}
			}
			prompt := promptBytes(t, v.Request)
			if len(prompt) > 0 {
				must(t, r.SetStr(FieldPrompt, string(prompt)))
			}
			if ids := tokenIDs(t, v.Request); len(ids) > 0 {
				must(t, r.SetTokenIDs(ids))
			}
			cp, err := r.CanonicalPrompt()
			must(t, err)
			if !bytes.Equal(cp, completionsText(prompt)) {
				t.Fatal("canonical prompt differs")
			}
			k, err := r.CacheKey()
			must(t, err)
			if k.Hex() != v.Key {
				t.Fatalf("key %s, want %s", k.Hex(), v.Key)
			}
			want := v.Blocks
			if v.CompletionsBlocks != nil {
				want = v.CompletionsBlocks
			}
			checkBlocks(t, r, want)
		})
	}
	if len(doc.Bodies) < 20 {
		t.Fatal(len(doc.Bodies))
	}
	for _, v := range doc.Bodies {
		t.Run("body/"+v.Name, func(t *testing.T) {
			must(t, e.Configure(`{"cache_key":`+string(v.Config)+`}`))
			r := newRequest(t, e)
			must(t, r.ParseOpenAI([]byte(v.Body), OpenAIAuto))
			cp, err := r.CanonicalPrompt()
			must(t, err)
			if string(cp) != v.CanonicalPrompt {
				t.Fatalf("canonical prompt %q, want %q", cp, v.CanonicalPrompt)
			}
			k, err := r.CacheKey()
			must(t, err)
			if k.Hex() != v.Key {
				t.Fatalf("key %s, want %s", k.Hex(), v.Key)
			}
			checkBlocks(t, r, v.Blocks)
		})
	}
}

// completionsText is a completions prompt's canonical text: each byte
// 0x1B-0x1F written as 0x1B, byte ^ 0x40 (docs/cache-key.md).
func completionsText(b []byte) []byte {
	out := make([]byte, 0, len(b))
	for _, x := range b {
		if x >= 0x1B && x <= 0x1F {
			out = append(out, 0x1B, x^0x40)
		} else {
			out = append(out, x)
		}
	}
	return out
}

func checkBlocks(t *testing.T, r *Request, want []string) {
	t.Helper()
	blocks, err := r.BlockHashes()
	must(t, err)
	if len(blocks) != len(want) {
		t.Fatalf("%d blocks, want %d", len(blocks), len(want))
	}
	for i, b := range blocks {
		if hex16(b) != want[i] {
			t.Fatalf("block %d: %s, want %s", i, hex16(b), want[i])
		}
	}
}
