package spotinfer

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

var bodies = func() []string {
	var out []string
	for i := 0; i < 6; i++ {
		out = append(out, fmt.Sprintf(`{"model":"llama-3.1-70b","stream":true,"messages":`+
			`[{"role":"user","content":%q}]}`, strings.Repeat(fmt.Sprintf("question %d ", i), (i+1)*40)))
	}
	out = append(out,
		`{"model":"llama-3.1-8b","service_tier":"flex","messages":[{"role":"system","content":"batch"},`+
			`{"role":"user","content":"`+strings.Repeat("x", 5000)+`"}]}`,
		`{"model":"llama-3.1-8b","metadata":{"sla_ms":"90000","tenant":"t"},"messages":[{"role":"user","content":"report"}]}`)
	return out
}()

type answer struct {
	c      Classification
	key    CacheKey
	blocks string
	usd    float64
}

func answers(t testing.TB, e *Engine, r *Request) []answer {
	var out []answer
	for _, b := range bodies {
		must(t, r.ParseOpenAI([]byte(b), OpenAIAuto))
		c, err := r.Classify(PressureNormal)
		must(t, err)
		k, err := r.CacheKey()
		must(t, err)
		bl, err := r.BlockHashes()
		must(t, err)
		p, err := r.Price(PoolSpot)
		must(t, err)
		out = append(out, answer{c, k, fmt.Sprint(bl), p.USD})
	}
	return out
}

func TestGoroutinesShareOneEngine(t *testing.T) {
	e := newEngine(t, `{"cache_key":{"block_bytes":128}}`)
	want := fmt.Sprint(answers(t, e, newRequest(t, e)))
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := e.NewRequest()
			if err != nil {
				errs <- err
				return
			}
			defer r.Close()
			for i := 0; i < 30; i++ {
				if got := fmt.Sprint(answers(t, e, r)); got != want {
					errs <- fmt.Errorf("answers differ under concurrency")
					return
				}
			}
		}()
	}
	// Reconfigure with the same settings while they run.
	for i := 0; i < 50; i++ {
		must(t, e.Configure(`{"cache_key":{"block_bytes":128}}`))
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestGoroutinesRouteAndGoModules(t *testing.T) {
	e, _ := world(t, "")
	fleet(t, e)
	m := &threshold{}
	must(t, e.RegisterClassifier("go", m, OnFailureError))
	must(t, e.Configure(`{"modules":{"classifier":"go"},"module_config":{"go":{"threshold_ms":1000}}}`))
	var wg sync.WaitGroup
	var mu sync.Mutex
	served := 0
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			r, err := e.NewRequest()
			if err != nil {
				t.Error(err)
				return
			}
			defer r.Close()
			n := 0
			for i := 0; i < 100; i++ {
				chat(t, r, fmt.Sprintf("user %d", g), false, int64(500+(i%2)*5000), "", 1)
				c, err := r.Classify(PressureNormal)
				if err != nil {
					t.Error(err)
					return
				}
				if want := map[bool]Class{true: ClassGold, false: ClassBronze}[i%2 == 0]; c.Class != want {
					t.Errorf("class %v, want %v", c.Class, want)
					return
				}
				d, err := r.Route()
				if err != nil {
					continue // shed or no capacity under this load is fine
				}
				if d.Serving() {
					if err := d.Ticket.FirstToken(); err != nil {
						t.Error(err)
					}
					if err := d.Ticket.Finish(TicketResult{OutputTokens: 10}); err != nil {
						t.Error(err)
					}
					n++
				}
			}
			mu.Lock()
			served += n
			mu.Unlock()
		}(g)
	}
	wg.Wait()
	rows, err := e.Ledger()
	must(t, err)
	var done uint64
	for _, r := range rows {
		done += r.Completed
	}
	if int(done) != served || served == 0 {
		t.Fatalf("ledger %d completed, %d served", done, served)
	}
	all, _ := e.Replicas()
	for _, s := range all {
		if s.Inflight != 0 {
			t.Fatalf("%s still has %d in flight", s.ID, s.Inflight)
		}
	}
	if m.calls.Load() < 800 {
		t.Fatal(m.calls.Load())
	}
}
