// fakellm is an OpenAI-compatible model server for tests and demos: it
// speaks vLLM's HTTP API (chat and text completions, streamed or whole,
// continue_final_message, stream_options with include_usage and
// continuous_usage_stats) and its /metrics names, streams deterministic text
// at a set token rate, one or several tokens an event, models a prefix
// cache, and can be told to die at a given time, as a spot machine does at
// its interruption deadline.
//
//	fakellm -addr 127.0.0.1:0 -addr-file /tmp/a.addr -id spot-a \
//	        -token-rate 50 -tokens-per-event 3 -die-at 2026-01-02T03:04:05Z -log /tmp/a.jsonl
//
// Standard library only, so any integration test can build it.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/libspotinfer/libspotinfer/examples/internal/addrfile"
)

type options struct {
	addr, addrFile, id, model, logPath string
	tokenRate                          float64
	answerTokens, defaultMaxTokens     int
	tokensPerEvent                     int
	coldTTFT, warmTTFT                 time.Duration
	prefixBlocks                       int
	prefixTTL                          time.Duration
	maxRunning                         int
	kvTokens                           float64
	legacyMetrics                      bool
	dieAt                              time.Time
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("fakellm", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:0", "listen address (port 0: any free port)")
	fs.StringVar(&o.addrFile, "addr-file", "", "write the bound host:port here once listening")
	fs.StringVar(&o.id, "id", "fakellm", "server name, sent as system_fingerprint and logged")
	fs.StringVar(&o.model, "model", "fake-model", "model name in responses and metric labels")
	fs.StringVar(&o.logPath, "log", "", "append one JSON line per request event here")
	fs.Float64Var(&o.tokenRate, "token-rate", 50, "tokens per second of each stream (> 0)")
	fs.IntVar(&o.tokensPerEvent, "tokens-per-event", 1,
		"tokens each streamed event holds (vLLM sends several with a stream interval or speculative decoding)")
	fs.IntVar(&o.answerTokens, "answer-tokens", 48, "tokens of a full answer (finish_reason stop)")
	fs.IntVar(&o.defaultMaxTokens, "default-max-tokens", 1024, "max_tokens when a request gives none")
	fs.DurationVar(&o.coldTTFT, "ttft", 60*time.Millisecond, "time to first token for an uncached prompt")
	fs.DurationVar(&o.warmTTFT, "cached-ttft", 10*time.Millisecond, "time to first token when the whole prompt is cached")
	fs.IntVar(&o.prefixBlocks, "prefix-cache-blocks", 4096, "prefix cache size in 256-byte blocks (0: no cache)")
	fs.DurationVar(&o.prefixTTL, "prefix-cache-ttl", 5*time.Minute, "how long a cached block stays warm")
	fs.IntVar(&o.maxRunning, "max-running", 64, "sequences decoded at once; more wait")
	fs.Float64Var(&o.kvTokens, "kv-tokens", 100000, "KV-cache capacity in tokens, for kv_cache_usage_perc")
	fs.BoolVar(&o.legacyMetrics, "legacy-metrics", false, "name KV usage vllm:gpu_cache_usage_perc (vLLM before V1)")
	dieAt := fs.String("die-at", "", "exit abruptly at this time (RFC 3339, or Unix seconds)")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if !(o.tokenRate > 0) || o.answerTokens < 1 || o.defaultMaxTokens < 1 || o.maxRunning < 1 ||
		!(o.kvTokens > 0) || o.tokensPerEvent < 1 || o.prefixBlocks < 0 || o.coldTTFT < 0 || o.warmTTFT < 0 {
		return o, fmt.Errorf("-token-rate, -answer-tokens, -default-max-tokens, -max-running, -kv-tokens and -tokens-per-event must be positive; -ttft, -cached-ttft and -prefix-cache-blocks not negative")
	}
	if *dieAt != "" {
		t, err := parseTime(*dieAt)
		if err != nil {
			return o, fmt.Errorf("-die-at: %v", err)
		}
		o.dieAt = t
	}
	return o, nil
}

func parseTime(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	secs, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor Unix seconds", s)
	}
	return time.Unix(0, int64(secs*1e9)), nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("fakellm: ")
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		log.Fatal(err)
	}
	s, err := newServer(o)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		log.Fatal(err)
	}
	if o.addrFile != "" {
		if err := addrfile.Write(o.addrFile, ln.Addr().String()); err != nil {
			log.Fatal(err)
		}
	}
	if !o.dieAt.IsZero() {
		go s.dieAt(o.dieAt)
	}
	srv := &http.Server{Handler: s.routes(), ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return context.Background() }}
	log.Printf("%s serving %s on %s", o.id, o.model, ln.Addr())
	if err := srv.Serve(ln); err != nil {
		log.Fatal(err)
	}
}

// dieAt ends the process at t without closing anything cleanly: open
// streams are cut mid-token, as when a spot machine is reclaimed.
func (s *server) dieAt(t time.Time) {
	time.Sleep(time.Until(t))
	s.event(map[string]any{"event": "died"})
	os.Exit(3)
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/chat/completions", s.post(s.chat))
	mux.HandleFunc("/v1/completions", s.post(s.completions))
	mux.HandleFunc("/metrics", s.metrics)
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	})
	mux.HandleFunc("/v1/models", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": []any{
			map[string]any{"id": s.o.model, "object": "model", "owned_by": "fakellm"}}})
	})
	return mux
}

func (s *server) post(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			apiError(w, http.StatusMethodNotAllowed, "use POST")
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") {
			apiError(w, http.StatusBadRequest, "Content-Type must be application/json")
			return
		}
		h(w, r)
	}
}
