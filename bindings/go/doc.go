// Package spotinfer is the Go binding of libspotinfer, the embeddable C
// library that decides, for every LLM request and before any GPU work
// starts, its class (gold, silver, bronze), its versioned KV-cache key, what
// it costs, and which pool and replica serve it.
//
// The binding is thin: every decision is made in C. It links the installed
// library through pkg-config (package "spotinfer"), so building needs
// PKG_CONFIG_PATH to find spotinfer.pc and running needs the loader to find
// libspotinfer.so.0.
//
//	e, err := spotinfer.NewEngine(`{"cost":{"spot_usd_per_gpu_hour":1.8}}`)
//	if err != nil { ... }
//	defer e.Close()
//	r, err := e.ParseOpenAI(body, spotinfer.OpenAIAuto)
//	if err != nil { ... }          // *spotinfer.Error; errors.Is(err, spotinfer.ErrParse)
//	defer r.Close()
//	c, _ := r.Classify(spotinfer.PressureNormal)
//	d, err := r.Route()
//	switch {
//	case errors.Is(err, spotinfer.ErrShed):       // HTTP 429
//	case errors.Is(err, spotinfer.ErrNoCapacity): // HTTP 503
//	case err == nil && d.Ticket.ID != 0:
//		// send to d.ReplicaID, then d.Ticket.Finish(...)
//	}
//
// # Ownership and threads
//
// An Engine and its Requests own C memory. Close frees it and is idempotent;
// a finalizer frees what was not closed, as a safety net only. Closing an
// engine frees the requests still open on it first (the C library requires
// requests to be freed before their engine).
//
// Any number of goroutines may use one Engine at once, each with its own
// Request: Classify, CacheKey, BlockHashes, Price and Route run concurrently
// in C, and Configure may run beside them. RegisterClassifier,
// RegisterPolicy and Close must not run concurrently with other calls on the
// same engine. A Request is used by one goroutine at a time.
//
// # Errors
//
// Every failed call returns a *Error carrying the C status code and the
// message the library left on the handle. Compare with errors.Is against
// the exported sentinels (ErrParse, ErrShed, ErrNoCapacity, ...), which
// match on the code alone.
//
// # Modules in Go
//
// A classifier or routing policy can be written in Go (the Classifier and
// Policy interfaces) and registered on an engine; the library calls it
// through runtime/cgo handles and small C trampolines. A panic or error in a
// module becomes an error status in C, never a crash. Key builders and cost
// models can be written in Go the same way.
//
// A Policy decides from a RouteContext: the candidates (replicas) and, from
// library 0.2.0 on, Summaries, one PoolSummary per pool and model tier (see
// SummaryIndex and RouteContext.Summary) naming the best-TTFT, warm, least
// loaded and rendezvous candidates by index. A policy that implements
// PolicyFlagger and returns PolicySummariesOnly reads only those: the
// library then passes only the candidates the summaries name, and every
// index, in the summaries and in the PolicyChoice, refers to that compact
// slice.
package spotinfer
