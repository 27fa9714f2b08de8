package spotinfer

/*
#include <stdint.h>
#include <string.h>
#include <spotinfer/spotinfer_module.h>

// Newer than the rest of the API: weak, as in notices.go, so the package
// still runs against a library that predates them.
#pragma weak spi_engine_fleet_stats
#pragma weak spi_engine_node_plans

#define SPI_GO_FLEET_MISSING (-1000)

static int spi_go_fleet_stats(spi_engine *e, spi_fleet_stats *out) {
  if (!spi_engine_fleet_stats) return SPI_GO_FLEET_MISSING;
  memset(out, 0, sizeof *out);
  out->struct_size = sizeof *out;
  return spi_engine_fleet_stats(e, out);
}

static int spi_go_node_plans(spi_engine *e, const char *node, size_t len,
                             spi_ticket_plan *plans, size_t cap,
                             size_t *n_out) {
  if (!spi_engine_node_plans) return SPI_GO_FLEET_MISSING;
  return spi_engine_node_plans(e, node, len, plans, cap, n_out);
}
*/
import "C"

import "runtime"

// FleetStats is what an engine's fleet bus did since the engine was made
// (spi_fleet_stats): the bus is selected in the configuration with
// {"modules":{"fleet_bus":"<name>"}}.
type FleetStats struct {
	Configured    bool   // a fleet bus is selected
	Published     uint64 // messages the bus took
	PublishFailed uint64 // publish calls that failed (sent again later)
	Pending       uint64 // failed messages waiting to be sent again
	Dropped       uint64 // pending messages dropped over the bound
	Polls         uint64
	PollFailed    uint64
	Received      uint64 // messages polls handed back
	Applied       uint64 // notices and cooldowns that acted here
	Duplicates    uint64 // already applied here (own echoes included)
	Malformed     uint64 // unreadable: skipped
	Unknown       uint64 // a newer version's message: skipped
	LastError     string // the last bus failure or skipped message
}

// FleetStats reads the engine's fleet-bus counters.
func (e *Engine) FleetStats() (FleetStats, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_fleet_stats")
	if err != nil {
		return FleetStats{}, err
	}
	var s C.spi_fleet_stats
	rc := C.spi_go_fleet_stats(p, &s)
	if rc == C.SPI_GO_FLEET_MISSING {
		return FleetStats{}, missing("spi_engine_fleet_stats")
	}
	if rc != 0 {
		return FleetStats{}, e.fail(rc, "spi_engine_fleet_stats")
	}
	runtime.KeepAlive(e)
	return FleetStats{Configured: s.configured != 0,
		Published: uint64(s.published), PublishFailed: uint64(s.publish_failed),
		Pending: uint64(s.pending), Dropped: uint64(s.dropped),
		Polls: uint64(s.polls), PollFailed: uint64(s.poll_failed),
		Received: uint64(s.received), Applied: uint64(s.applied),
		Duplicates: uint64(s.duplicates), Malformed: uint64(s.malformed),
		Unknown: uint64(s.unknown), LastError: goText(&s.last_error[0])}, nil
}

// NodePlans returns the plan for every ticket open on a machine that is
// noticed or draining, computed now: for a machine another engine's notice
// reached through the fleet bus inside Tick (OnNodeTransition reports it).
// Any other machine has none.
func (e *Engine) NodePlans(node string) ([]TicketPlan, error) {
	runtime.LockOSThread() // the call and its errmsg on one OS thread
	defer runtime.UnlockOSThread()
	p, err := e.ptr("spi_engine_node_plans")
	if err != nil {
		return nil, err
	}
	capacity := 64
	for try := 0; ; try++ {
		plans := make([]C.spi_ticket_plan, capacity)
		plans[0].struct_size = C.sizeof_spi_ticket_plan // the element size
		s, n := cstr(node)
		var count C.size_t
		rc := C.spi_go_node_plans(p, s, n, &plans[0], C.size_t(capacity), &count)
		runtime.KeepAlive(node)
		if rc == C.SPI_EBUFSIZE && int(count) > capacity && try < maxRetries {
			capacity = int(count) + 64 // tickets opened meanwhile: retry
			continue
		}
		if rc == C.SPI_GO_FLEET_MISSING {
			return nil, missing("spi_engine_node_plans")
		}
		if rc != 0 {
			return nil, e.fail(rc, "spi_engine_node_plans")
		}
		out := plansFrom(plans[:int(count)])
		runtime.KeepAlive(e)
		return out, nil
	}
}
