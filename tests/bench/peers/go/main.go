// Command peer-epp drives the Gateway API Inference Extension endpoint
// picker (EPP) in-process on the shared peer workload (../README.md):
//
//	peer-epp <prompt bytes> <replicas> <decisions> <samples file> [in flight]
//
// The scheduler is built as the EPP's default configuration builds it: one
// profile with the queue scorer (weight 2), the KV-cache utilization scorer
// (weight 2) and the prefix-cache scorer (weight 3), the max-score picker
// and the single-profile handler, fed by the approximate prefix-cache data
// producer with its default parameters. One decision is what the EPP's
// director runs per request around the scheduler: the producer's
// PrepareRequestData, Schedule, and the producer's PreRequest (which
// records the prompt's blocks for the chosen endpoint). The candidate
// endpoints are built once and kept, with their metrics updated in place
// (the director snapshots them for every request; that cost is left out).
// A request is finished outside the timed span: at once, or with [in
// flight] > 0 when that many later decisions have been made (the oldest
// open one first).
package main

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/scheduling"

	fwkdl "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/datalayer"
	fwkplugin "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/plugin"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/requestcontrol"
	fwksched "sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/interface/scheduling"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/picker"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/profile"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/scorer/kvcacheutilization"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/scorer/prefix"
	"sigs.k8s.io/gateway-api-inference-extension/pkg/epp/framework/plugins/scheduling/scorer/queuedepth"
)

func die(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "peer-epp: "+format+"\n", args...)
	os.Exit(1)
}

type producer interface {
	requestcontrol.PrepareDataPlugin
	requestcontrol.PreRequest
}

type epp struct {
	ctx       context.Context
	sched     *scheduling.Scheduler
	producer  producer
	endpoints []fwksched.Endpoint
	requests  []*fwksched.LLMRequest
}

func newEpp(replicas int, all []string) *epp {
	ctx := log.IntoContext(context.Background(), logr.Discard())
	names := make([]k8stypes.NamespacedName, replicas)
	endpoints := make([]fwksched.Endpoint, replicas)
	for i := range names {
		names[i] = k8stypes.NamespacedName{Namespace: "default", Name: fmt.Sprintf("replica-%03d", i)}
		meta := &fwkdl.EndpointMetadata{NamespacedName: names[i], PodName: names[i].Name,
			Address: fmt.Sprintf("10.0.%d.%d", i/250, i%250+1), Port: "8000"}
		m := fwkdl.NewMetrics()
		m.RunningRequestsSize = running(i)
		m.WaitingQueueSize = waiting(i)
		m.KVCacheUsagePercent = 0.3
		m.UpdateTime = time.Now()
		endpoints[i] = fwksched.NewEndpoint(meta, m, nil)
	}
	handle := fwkplugin.NewEppHandle(ctx, func() []k8stypes.NamespacedName { return names })
	p, err := approximateprefix.ApproxPrefixCacheFactory(approximateprefix.ApproxPrefixCachePluginType, nil, handle)
	if err != nil {
		die("prefix producer: %v", err)
	}
	prod, ok := p.(producer)
	if !ok {
		die("the prefix producer is not a PrepareData + PreRequest plugin")
	}
	prefixScorer, err := prefix.New(ctx)
	if err != nil {
		die("prefix scorer: %v", err)
	}
	prof := scheduling.NewSchedulerProfile().
		WithScorers(
			scheduling.NewWeightedScorer(queuedepth.NewQueueScorer(), 2),
			scheduling.NewWeightedScorer(kvcacheutilization.NewKVCacheUtilizationScorer(), 2),
			scheduling.NewWeightedScorer(prefixScorer, 3)).
		WithPicker(picker.NewMaxScorePicker(picker.DefaultMaxNumOfEndpoints))
	cfg := scheduling.NewSchedulerConfig(profile.NewSingleProfileHandler(),
		map[string]fwksched.SchedulerProfile{"default": prof})
	requests := make([]*fwksched.LLMRequest, len(all))
	for k, text := range all {
		requests[k] = &fwksched.LLMRequest{
			RequestId:        "req-" + strconv.Itoa(k),
			TargetModel:      "llama",
			Body:             &fwksched.LLMRequestBody{Completions: &fwksched.CompletionsRequest{Prompt: fwksched.Prompt{Raw: text}}},
			RequestSizeBytes: len(text),
		}
	}
	return &epp{ctx: ctx, sched: scheduling.NewSchedulerWithConfig(cfg), producer: prod,
		endpoints: endpoints, requests: requests}
}

// route is one decision; it returns the chosen replica.
func (e *epp) route(k int) int {
	req := e.requests[k]
	if err := e.producer.PrepareRequestData(e.ctx, req, e.endpoints); err != nil {
		die("PrepareRequestData: %v", err)
	}
	res, err := e.sched.Schedule(e.ctx, req, e.endpoints)
	if err != nil {
		die("Schedule: %v", err)
	}
	e.producer.PreRequest(e.ctx, req, res)
	targets := res.ProfileResults[res.PrimaryProfileName].TargetEndpoints
	if len(targets) == 0 {
		die("no endpoint picked")
	}
	name := targets[0].GetMetadata().NamespacedName.Name
	at, err := strconv.Atoi(strings.TrimPrefix(name, "replica-"))
	if err != nil {
		die("picked %q", name)
	}
	e.endpoints[at].GetMetrics().RunningRequestsSize++
	return at
}

func (e *epp) finish(at int) { e.endpoints[at].GetMetrics().RunningRequestsSize-- }

// window holds open requests (their replicas), oldest finished first.
type window struct {
	open  []int
	limit int
}

func (w *window) hold(e *epp, at int) {
	w.open = append(w.open, at)
	if len(w.open) > w.limit {
		e.finish(w.open[0])
		w.open = w.open[1:]
	}
}

func main() {
	if len(os.Args) != 5 && len(os.Args) != 6 {
		die("usage: peer-epp <prompt bytes> <replicas> <decisions> <samples file> [in flight]")
	}
	w := &window{}
	if len(os.Args) == 6 {
		var err error
		if w.limit, err = strconv.Atoi(os.Args[5]); err != nil || w.limit < 0 || w.limit > 4096 {
			die("bad in-flight count")
		}
	}
	size, _ := strconv.Atoi(os.Args[1])
	replicas, _ := strconv.Atoi(os.Args[2])
	n, _ := strconv.Atoi(os.Args[3])
	want, ok := golden[size]
	if !ok || replicas < 1 || replicas > 999 || n < 1 {
		die("bad arguments")
	}
	all := allPrompts(size)
	sum := checksum(all)
	if sum != want {
		die("prompt checksum differs from the golden one")
	}
	e := newEpp(replicas, all)
	for k := 0; k < batch*warmRounds; k++ {
		w.hold(e, e.route(k))
	}
	// The producer records blocks on a goroutine: let the warm-up's land.
	time.Sleep(200 * time.Millisecond)
	t := make([]int64, n)
	seen := make([]bool, replicas)
	distinct := 0
	for i := 0; i < n; i++ {
		k := batch*warmRounds + i%batch
		t0 := time.Now()
		at := e.route(k)
		t[i] = int64(time.Since(t0))
		w.hold(e, at)
		if !seen[at] {
			seen[at] = true
			distinct++
		}
	}
	var sb strings.Builder
	for _, x := range t {
		sb.WriteString(strconv.FormatInt(x, 10))
		sb.WriteByte('\n')
	}
	if err := os.WriteFile(os.Args[4], []byte(sb.String()), 0o644); err != nil {
		die("cannot write samples: %v", err)
	}
	sort.Slice(t, func(a, b int) bool { return t[a] < t[b] })
	fmt.Printf("{\"peer\":\"gie_epp\",\"prompt_bytes\":%d,\"replicas\":%d,\"in_flight\":%d,\"decisions\":%d,"+
		"\"prompts_fnv\":\"%016x\",\"replicas_chosen\":%d,\"failed\":0,\"p50_ns\":%d,\"p99_ns\":%d}\n",
		size, replicas, w.limit, n, sum, distinct, t[n/2], t[n*99/100])
}
