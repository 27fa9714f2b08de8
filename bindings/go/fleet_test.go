package spotinfer

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestFleetStatsAndNodePlans(t *testing.T) {
	e := newEngine(t, "")
	st, err := e.FleetStats()
	skipUnlessExported(t, err, "spi_engine_fleet_stats")
	must(t, err)
	if st.Configured || st.Published != 0 || st.LastError != "" {
		t.Fatalf("%+v", st)
	}
	// A bus that is not registered: the configuration names it.
	err = e.Configure(`{"modules":{"fleet_bus":"nope"}}`)
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "modules.fleet_bus") {
		t.Fatal(err)
	}
	must(t, e.UpsertReplica(ReplicaInfo{ID: "spot-a", Pool: PoolSpot, USDPerHour: 2,
		MaxInflight: 16, Node: "i-1", Zone: "z1", InstanceType: "g5.xlarge"}))
	must(t, e.ReportLoad("spot-a", Load{Running: 1, KVUsage: 0.2}))
	r := newRequest(t, e)
	must(t, r.SetStr(FieldModel, "m"))
	must(t, r.SetBool(FieldReplayable, true))
	must(t, r.AddMessage("user", "hello"))
	d, err := r.Route()
	must(t, err)
	if plans, err := e.NodePlans("i-1"); err != nil || len(plans) != 0 {
		t.Fatal(plans, err) // not noticed: none
	}
	// The engine runs on the wall clock: a deadline still to come.
	wall := time.Now().UnixNano()
	_, err = e.Notice(Notice{Kind: NoticeTerminate, Format: NoticeAWSInstanceAction,
		Node: "i-1", DeadlineNs: wall + 120*sec, ReceivedNs: wall, Active: true})
	must(t, err)
	// Asked again later, the same plan (a notice plans only once).
	plans, err := e.NodePlans("i-1")
	must(t, err)
	if len(plans) != 1 || plans[0].Ticket != d.Ticket.ID || plans[0].ReplicaID != "spot-a" {
		t.Fatalf("%+v", plans)
	}
	if _, err := e.NodePlans(""); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if ModuleFleetBus.String() != "fleet_bus" {
		t.Fatal(ModuleFleetBus.String())
	}
	if err := e.Register(ModuleFleetBus, "bus", &threshold{}, OnFailureError); !errors.Is(err, ErrNotSup) {
		t.Fatal(err)
	}
}
