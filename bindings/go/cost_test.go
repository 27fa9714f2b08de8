package spotinfer

import (
	"errors"
	"math"
	"testing"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func TestCostWorkedExample(t *testing.T) {
	// 1000 spot hours at $1.80 vs on-demand $4.50, 5 % interrupted, 10 min lost each.
	s, err := CostSpotEffective(1000, 1.80, 4.50, 0.05, 10.0/60)
	must(t, err)
	if !near(s.EffectiveHours, 991.67, 0.005) || !near(s.CostPerEffectiveHour, 1.815, 0.0005) ||
		!near(s.OnDemandCost, 4462.50, 1e-6) || !near(s.Savings, 2662.50, 1e-6) ||
		!near(s.SavingsFraction, 0.5966, 0.00005) || !near(s.ExpectedInterruptions, 50, 1e-9) {
		t.Fatalf("%+v", s)
	}
}

func TestCostFormulas(t *testing.T) {
	pm, err := CostPerMillionTokens(3.50, 1, 1000)
	must(t, err)
	if !near(pm, 0.972, 0.0005) {
		t.Fatal(pm)
	}
	tps, err := CostBreakEvenTPS(3.50, 1, pm)
	must(t, err)
	if !near(tps, 1000, 1e-6) {
		t.Fatal(tps)
	}
	be, err := CostSelfHostBreakEven(3.50, 1, 730, 0.90)
	must(t, err)
	if be < 2.8e9 || be >= 2.9e9 {
		t.Fatal(be)
	}
	kv, err := CostKVBytesPerSequence(32, 8, 128, 4096, 2)
	must(t, err)
	if kv != 512*1024*1024 {
		t.Fatal(kv)
	}
	n, err := CostMaxSequences(80e9, 16e9, 0.9, kv)
	must(t, err)
	if n != uint64(math.Floor((80e9-16e9)*0.9/kv)) {
		t.Fatal(n)
	}
	if _, err := CostPerMillionTokens(math.NaN(), 1, 1000); !errors.Is(err, ErrRange) {
		t.Fatal(err)
	}
	if _, err := CostSpotEffective(10, 1, 2, 1, 2); !errors.Is(err, ErrRange) {
		t.Fatal(err)
	}
}
