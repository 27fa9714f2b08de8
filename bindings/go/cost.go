package spotinfer

/*
#include <spotinfer/spotinfer.h>
#include <spotinfer/spotinfer_extras.h>
*/
import "C"

import "unsafe"

// The pure cost formulas. Every input is validated by the library: NaN,
// infinity, negative values or zero where zero is meaningless give ErrRange.

// CostPerMillionTokens is $/GPU-h x GPUs / (tokens/s x 3600) x 1e6.
func CostPerMillionTokens(usdPerGPUHour float64, gpus uint32, tokensPerS float64) (float64, error) {
	var out C.double
	if rc := C.spi_cost_per_million_tokens(C.double(usdPerGPUHour), C.uint32_t(gpus),
		C.double(tokensPerS), &out); rc != 0 {
		return 0, newError(rc, "spi_cost_per_million_tokens", "")
	}
	return float64(out), nil
}

// CostBreakEvenTPS is the tokens/s needed to reach a target $ per million.
func CostBreakEvenTPS(usdPerGPUHour float64, gpus uint32, targetUSDPerMillion float64) (float64, error) {
	var out C.double
	if rc := C.spi_cost_break_even_tps(C.double(usdPerGPUHour), C.uint32_t(gpus),
		C.double(targetUSDPerMillion), &out); rc != 0 {
		return 0, newError(rc, "spi_cost_break_even_tps", "")
	}
	return float64(out), nil
}

// SpotCost is the spot-with-interruptions calculation.
type SpotCost struct {
	EffectiveHours        float64 // spot hours minus restart overhead lost
	SpotCost              float64 // spot hours x spot price
	CostPerEffectiveHour  float64
	OnDemandCost          float64 // effective hours x on-demand price
	Savings               float64
	SavingsFraction       float64
	ExpectedInterruptions float64
}

// CostSpotEffective is the effective cost of spot hours when a fraction of
// them is interrupted and each interruption loses restartOverheadHours.
func CostSpotEffective(spotHours, spotUSDPerHour, onDemandUSDPerHour,
	interruptionRate, restartOverheadHours float64) (SpotCost, error) {
	var out C.spi_spot_cost
	out.struct_size = C.size_t(unsafe.Sizeof(out))
	if rc := C.spi_cost_spot_effective(C.double(spotHours), C.double(spotUSDPerHour),
		C.double(onDemandUSDPerHour), C.double(interruptionRate),
		C.double(restartOverheadHours), &out); rc != 0 {
		return SpotCost{}, newError(rc, "spi_cost_spot_effective", "")
	}
	return SpotCost{float64(out.effective_hours), float64(out.spot_cost),
		float64(out.cost_per_effective_hour), float64(out.on_demand_cost),
		float64(out.savings), float64(out.savings_fraction),
		float64(out.expected_interruptions)}, nil
}

// CostSelfHostBreakEven is the tokens per month above which self-hosting
// beats an API at apiUSDPerMillion.
func CostSelfHostBreakEven(usdPerGPUHour float64, gpus uint32, hoursPerMonth,
	apiUSDPerMillion float64) (float64, error) {
	var out C.double
	if rc := C.spi_cost_self_host_break_even(C.double(usdPerGPUHour), C.uint32_t(gpus),
		C.double(hoursPerMonth), C.double(apiUSDPerMillion), &out); rc != 0 {
		return 0, newError(rc, "spi_cost_self_host_break_even", "")
	}
	return float64(out), nil
}

// CostKVBytesPerSequence is 2 x layers x kvHeads x headDim x seqLen x bytes.
func CostKVBytesPerSequence(layers, kvHeads, headDim, seqLen uint32, bytesPerElement float64) (float64, error) {
	var out C.double
	if rc := C.spi_cost_kv_bytes_per_sequence(C.uint32_t(layers), C.uint32_t(kvHeads),
		C.uint32_t(headDim), C.uint32_t(seqLen), C.double(bytesPerElement), &out); rc != 0 {
		return 0, newError(rc, "spi_cost_kv_bytes_per_sequence", "")
	}
	return float64(out), nil
}

// CostMaxSequences is how many sequences fit in (GPU memory - model) x
// utilization, rounded down.
func CostMaxSequences(gpuMemoryBytes, modelBytes, utilization, kvBytesPerSequence float64) (uint64, error) {
	var out C.uint64_t
	if rc := C.spi_cost_max_sequences(C.double(gpuMemoryBytes), C.double(modelBytes),
		C.double(utilization), C.double(kvBytesPerSequence), &out); rc != 0 {
		return 0, newError(rc, "spi_cost_max_sequences", "")
	}
	return uint64(out), nil
}
