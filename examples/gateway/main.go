// gateway is an OpenAI-compatible reverse proxy that asks libspotinfer,
// in process, where every request goes: it routes chat and text
// completions to the backends the library picks, reports each stream's
// ticket, feeds the library the backends' /metrics and their machines'
// spot interruption notices (AWS IMDS, IMDSv2 token flow), and resumes a
// stream cut by an interruption on another backend from the replay queue,
// so the client sees one uninterrupted answer.
//
//	gateway -config spotinfer.json -backends backends.json -addr 127.0.0.1:8080
//
// -balancer roundrobin runs the same proxy without the library (plain round
// robin over the backends), the yardstick of the load run.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
	"github.com/libspotinfer/libspotinfer/examples/internal/addrfile"
)

type options struct {
	addr, addrFile, configPath, backendsPath, eventsPath, balancer string
	replayConfig                                                   string
	scrapeEvery, noticeEvery, readyWait, replayWait, queueWait     time.Duration
	headerWait, firstEventWait, eventWait                          time.Duration
	replayWorkers                                                  int
	backendUsage                                                   bool
	longEventBudget                                                int64
	longEventWriteWait                                             time.Duration
	maxBody                                                        int64
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("gateway", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8080", "listen address (port 0: any free port)")
	fs.StringVar(&o.addrFile, "addr-file", "", "write the bound host:port here once ready")
	fs.StringVar(&o.configPath, "config", "", "the library's JSON configuration (default: its defaults)")
	fs.StringVar(&o.backendsPath, "backends", "", "JSON list of backends (required)")
	fs.StringVar(&o.eventsPath, "events", "", "append one JSON line per routing, notice and replay event here")
	fs.StringVar(&o.balancer, "balancer", "spotinfer", "spotinfer, or roundrobin (no library: the yardstick)")
	fs.StringVar(&o.replayConfig, "replay", `{"store":"memory"}`,
		`the replay queue's store, e.g. {"store":"journal","dir":"/var/lib/gateway/replay"}; `+
			`its max_attempts and backoff_* also bound how often, and how soon, one stream is replayed`)
	fs.DurationVar(&o.scrapeEvery, "scrape-interval", 250*time.Millisecond, "how often each backend's /metrics is read")
	fs.DurationVar(&o.noticeEvery, "notice-interval", 200*time.Millisecond, "how often each machine's metadata is polled")
	fs.DurationVar(&o.readyWait, "ready-wait", 5*time.Second, "longest wait for a first load reading of every backend")
	fs.DurationVar(&o.replayWait, "replay-wait", 60*time.Second,
		"longest a cut stream waits for a replay worker to take its continuation up; "+
			"once one has, the stream waits as long as the worker's lease (see -header-wait)")
	fs.DurationVar(&o.queueWait, "queue-wait", 2*time.Second, "longest a request the library queues is held, over all of its routes")
	fs.DurationVar(&o.headerWait, "header-wait", 60*time.Second,
		"longest wait for a streamed answer's response headers once connected, up to 1h (a try "+
			"without them is a dead backend: it is tried elsewhere; a non-streamed answer, whose headers "+
			"come with the whole answer, has no such wait); "+
			"a replay worker's claim on an envelope is leased long enough for 4 such waits, "+
			"and a cut stream waits for a claimed continuation that long, beyond -replay-wait if need be")
	fs.DurationVar(&o.firstEventWait, "first-event-wait", 60*time.Second,
		"longest wait for a streamed answer's first bytes once its response headers have come, up to "+
			"1h (the backend's queue and prefill): a backend that sends nothing for that long with its "+
			"connection open is taken for one whose connection dropped, as with -event-wait")
	fs.DurationVar(&o.eventWait, "event-wait", 60*time.Second,
		"longest silence of a streamed answer once its first bytes have come, up to 1h: a backend "+
			"that sends nothing for that long (no event, not even a comment line) with its connection "+
			"open is taken for one whose connection dropped, and the stream goes on as after a drop "+
			"(a replayable stream is continued elsewhere; its wait for the first bytes is "+
			"-first-event-wait's)")
	fs.IntVar(&o.replayWorkers, "replay-workers", 4, "goroutines resuming streams from the replay queue")
	fs.BoolVar(&o.backendUsage, "backend-usage", true,
		"ask streamed backends for their running token count (stream_options.continuous_usage_stats, "+
			"as vLLM and SGLang send it; hidden from clients that did not ask); false for a backend "+
			"that refuses the key: tokens are then estimated from the text")
	fs.Int64Var(&o.longEventBudget, "long-event-budget", defaultLongEventBudget,
		"bytes the streams may hold, all together, for server-sent events over their 64 KiB read buffer "+
			"(an event takes up to twice its size while it is read); a stream whose event finds it "+
			"spent ends with an error event")
	fs.DurationVar(&o.longEventWriteWait, "long-event-write-wait", 30*time.Second,
		"longest a client may take to read an event that holds -long-event-budget bytes; "+
			"a client slower than that is taken for gone and its stream ends, giving the bytes back")
	fs.Int64Var(&o.maxBody, "max-body-bytes", 8<<20,
		"largest request body, 64 bytes to 1 GiB less 8 MiB; a larger one gets 413. Unless -config "+
			"names them, it also sets the library's limits.max_tools_bytes to it, and "+
			"limits.max_body_bytes and max_field_bytes to it and 8 MiB more, so a body under it is not "+
			"refused for one large message (an image) or a large tools array, nor its continuation after "+
			"a cut (which holds the answer so far); and it raises replay.max_envelope_bytes to at least "+
			"that and replay.max_bytes to hold one such envelope, so such a stream can be checkpointed. "+
			"Smaller replay settings named in -config or -replay are refused")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	case o.backendsPath == "":
		return o, errors.New("-backends is required")
	case o.balancer != "spotinfer" && o.balancer != "roundrobin":
		return o, fmt.Errorf("-balancer: spotinfer or roundrobin (got %q)", o.balancer)
	case o.scrapeEvery <= 0 || o.noticeEvery <= 0 || o.replayWorkers < 1:
		return o, errors.New("-scrape-interval, -notice-interval and -replay-workers must be positive")
	case o.headerWait <= 0 || o.headerWait > time.Hour:
		return o, fmt.Errorf("-header-wait: more than 0, at most 1h (got %v)", o.headerWait)
	case o.eventWait <= 0 || o.eventWait > time.Hour:
		return o, fmt.Errorf("-event-wait: more than 0, at most 1h (got %v)", o.eventWait)
	case o.firstEventWait <= 0 || o.firstEventWait > time.Hour:
		return o, fmt.Errorf("-first-event-wait: more than 0, at most 1h (got %v)", o.firstEventWait)
	case o.longEventWriteWait <= 0:
		return o, fmt.Errorf("-long-event-write-wait: more than 0 (got %v)", o.longEventWriteWait)
	case o.maxBody < 64 || o.maxBody > maxMaxBody:
		return o, fmt.Errorf("-max-body-bytes: 64 to %d, 1 GiB less %d MiB of room for a cut "+
			"stream's answer (got %d)", maxMaxBody, replayRoom>>20, o.maxBody)
	case o.longEventBudget < 0:
		return o, fmt.Errorf("-long-event-budget: 0 or more bytes (got %d)", o.longEventBudget)
	}
	return o, nil
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("gateway: ")
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		log.Fatal(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	g, err := newGateway(o)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		log.Fatal(err)
	}
	// Not the signal's context: replay workers and notice polling keep
	// running while Shutdown drains the open streams; g.close stops them.
	g.start(context.Background())
	if o.addrFile != "" {
		if err := addrfile.Write(o.addrFile, ln.Addr().String()); err != nil {
			log.Fatal(err)
		}
	}
	srv := &http.Server{Handler: g.routes(), ReadHeaderTimeout: 10 * time.Second}
	shut := make(chan error, 1)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- srv.Shutdown(sctx)
	}()
	log.Printf("%s balancer on %s, %d backends", o.balancer, ln.Addr(), len(g.backends))
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	// Serve returns as soon as shutdown starts; the engine is freed only
	// once no handler can be inside a library call.
	if err := <-shut; err != nil {
		log.Printf("exiting with streams still open: %v", err)
		return
	}
	g.close()
}

// newEngine builds the engine from the library's JSON configuration file.
func newEngine(path string, maxBody int64) (*spotinfer.Engine, error) {
	e, err := spotinfer.NewEngine("")
	if err != nil {
		return nil, err
	}
	if err := configure(e, path, maxBody); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

// replayRoom is what a cut stream's checkpoint and continuation hold
// beyond its body: the answer the client has had, as the checkpoint's
// partial output and as the continuation's last message (its text
// escaped). The library's defaults leave this much: an envelope of
// 16 MiB for the gateway's default body of 8 MiB.
const replayRoom = 8 << 20

// queueSlack is what the replay queue counts for an envelope beyond its
// key, body and partial output (its records), with room to spare.
const queueSlack = 64 << 10

// maxMaxBody is -max-body-bytes' top: the library's limits go up to 1 GiB,
// and a body leaves them replayRoom.
const maxMaxBody = 1<<30 - replayRoom

// derivedLimits are the library's settings the gateway's body limit sets
// where the configuration file does not name them: the body and a text
// field (a message with an image), which a continuation's body exceeds by
// the answer it holds, and the tools array; and, never below what the
// engine has (the file's or the library's default), the replay queue's
// envelope, which holds the body and the answer, and its memory, which
// holds one such envelope.
func derivedLimits(e *spotinfer.Engine, maxBody int64) map[string]map[string]int64 {
	room := maxBody + replayRoom
	now := replaySection(e, "")
	atLeast := func(key string, v int64) int64 {
		var n float64
		json.Unmarshal(now[key], &n)
		return max(int64(n), v)
	}
	envelope := atLeast("max_envelope_bytes", room)
	return map[string]map[string]int64{
		"limits": {"max_body_bytes": room, "max_field_bytes": room, "max_tools_bytes": maxBody},
		"replay": {"max_envelope_bytes": envelope, "max_bytes": atLeast("max_bytes", envelope+queueSlack)},
	}
}

// configure applies the configuration file (none: the defaults) with
// derivedLimits set where the file does not name them. The file is
// applied as it is first, so its mistakes are named as the library names
// them.
func configure(e *spotinfer.Engine, path string, maxBody int64) error {
	config := map[string]any{}
	if path != "" {
		if err := e.ConfigureFile(path); err != nil {
			return fmt.Errorf("%s: %v", path, err)
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber() // numbers go back to the library as they were written
		if err := d.Decode(&config); err != nil {
			return fmt.Errorf("%s: %v", path, err)
		}
	}
	for name, keys := range derivedLimits(e, maxBody) {
		section, _ := config[name].(map[string]any)
		if section == nil {
			section = map[string]any{}
		}
		for k, v := range keys {
			if _, given := section[k]; !given {
				section[k] = v
			}
		}
		config[name] = section
	}
	if err := e.ConfigureValue(config); err != nil {
		return fmt.Errorf("-config %q with the limits of -max-body-bytes: %v", path, err)
	}
	return nil
}
