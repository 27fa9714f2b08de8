package spotinfer

/*
#cgo pkg-config: spotinfer
#include <stdlib.h>
#include <spotinfer/spotinfer.h>
#include <spotinfer/spotinfer_module.h>
#include <spotinfer/spotinfer_extras.h>
*/
import "C"

import (
	"unsafe"
)

// Version is the loaded library's version, e.g. "0.1.0" (spi_version_string).
func Version() string { return C.GoString(C.spi_version_string()) }

// VersionNumber is the loaded library's MAJOR*10000 + MINOR*100 + PATCH.
func VersionNumber() uint32 { return uint32(C.spi_version_number()) }

// HeaderVersionNumber is the version of the header this package was built
// against (SPI_VERSION_NUMBER).
const HeaderVersionNumber = C.SPI_VERSION_NUMBER

// Class of a request (enum spi_class).
type Class int32

const (
	ClassUnset  Class = C.SPI_CLASS_UNSET
	ClassGold   Class = C.SPI_CLASS_GOLD
	ClassSilver Class = C.SPI_CLASS_SILVER
	ClassBronze Class = C.SPI_CLASS_BRONZE
)

// String is "gold", "silver", "bronze", "unset" or "invalid".
func (c Class) String() string { return C.GoString(C.spi_class_name(C.int32_t(c))) }

// ModelTier for cascade routing (enum spi_model_tier).
type ModelTier int32

const (
	TierUnset ModelTier = 0
	TierSmall ModelTier = C.SPI_TIER_SMALL
	TierLarge ModelTier = C.SPI_TIER_LARGE
)

// PriorityScheme selects a priority vocabulary (enum spi_priority_scheme).
type PriorityScheme int32

const (
	PrioVLLM PriorityScheme = C.SPI_PRIO_VLLM // lower is more urgent
	PrioLLMD PriorityScheme = C.SPI_PRIO_LLMD // higher is more urgent
)

// ServiceTier is an OpenAI service_tier (enum spi_service_tier).
type ServiceTier int32

const (
	ServiceTierUnset    ServiceTier = C.SPI_SERVICE_TIER_UNSET
	ServiceTierAuto     ServiceTier = C.SPI_SERVICE_TIER_AUTO
	ServiceTierDefault  ServiceTier = C.SPI_SERVICE_TIER_DEFAULT
	ServiceTierFlex     ServiceTier = C.SPI_SERVICE_TIER_FLEX
	ServiceTierPriority ServiceTier = C.SPI_SERVICE_TIER_PRIORITY
	ServiceTierScale    ServiceTier = C.SPI_SERVICE_TIER_SCALE
)

// String is "auto", "default", "flex", "priority", "scale", "" or "invalid".
func (t ServiceTier) String() string {
	return C.GoString(C.spi_service_tier_name(C.int32_t(t)))
}

// Pressure level for degrade plans (enum spi_pressure).
type Pressure int32

const (
	PressureNormal   Pressure = C.SPI_PRESSURE_NORMAL
	PressureElevated Pressure = C.SPI_PRESSURE_ELEVATED
	PressureHigh     Pressure = C.SPI_PRESSURE_HIGH
	PressureCritical Pressure = C.SPI_PRESSURE_CRITICAL
)

// Pool a request is priced or served on (enum spi_pool).
type Pool int32

const (
	PoolNone     Pool = 0
	PoolSpot     Pool = C.SPI_POOL_SPOT
	PoolOnDemand Pool = C.SPI_POOL_ON_DEMAND
	PoolQueue    Pool = C.SPI_POOL_QUEUE // hold the request and route it again later
)

func (p Pool) String() string {
	switch p {
	case PoolNone:
		return "none"
	case PoolSpot:
		return "spot"
	case PoolOnDemand:
		return "on_demand"
	case PoolQueue:
		return "queue"
	}
	return "invalid"
}

// OpenAIKind selects the body spi_request_parse_openai reads.
type OpenAIKind int32

const (
	OpenAIAuto        OpenAIKind = C.SPI_OPENAI_AUTO
	OpenAIChat        OpenAIKind = C.SPI_OPENAI_CHAT
	OpenAICompletions OpenAIKind = C.SPI_OPENAI_COMPLETIONS
)

// StrField is a string attribute of a request (enum spi_request_str).
type StrField int32

const (
	FieldModel             StrField = C.SPI_REQ_MODEL
	FieldTokenizerVersion  StrField = C.SPI_REQ_TOKENIZER_VERSION
	FieldSystemPrompt      StrField = C.SPI_REQ_SYSTEM_PROMPT
	FieldToolsJSON         StrField = C.SPI_REQ_TOOLS_JSON
	FieldRetrievalTemplate StrField = C.SPI_REQ_RETRIEVAL_TEMPLATE
	FieldTenant            StrField = C.SPI_REQ_TENANT
	FieldTenantTier        StrField = C.SPI_REQ_TENANT_TIER
	FieldTenantSalt        StrField = C.SPI_REQ_TENANT_SALT
	FieldDecodeProfile     StrField = C.SPI_REQ_DECODE_PROFILE
	FieldServiceTier       StrField = C.SPI_REQ_SERVICE_TIER
	FieldUser              StrField = C.SPI_REQ_USER
	FieldClass             StrField = C.SPI_REQ_CLASS
	FieldPrompt            StrField = C.SPI_REQ_PROMPT
	FieldRequestID         StrField = C.SPI_REQ_REQUEST_ID
)

// IntField is an integer attribute of a request (enum spi_request_int).
type IntField int32

const (
	FieldPriority             IntField = C.SPI_REQ_PRIORITY
	FieldSLAMs                IntField = C.SPI_REQ_SLA_MS
	FieldStream               IntField = C.SPI_REQ_STREAM
	FieldReplayable           IntField = C.SPI_REQ_REPLAYABLE
	FieldMaxOutputTokens      IntField = C.SPI_REQ_MAX_OUTPUT_TOKENS
	FieldExpectedOutputTokens IntField = C.SPI_REQ_EXPECTED_OUTPUT_TOKENS
	FieldPromptTokens         IntField = C.SPI_REQ_PROMPT_TOKENS
	FieldModelTier            IntField = C.SPI_REQ_MODEL_TIER
	// FieldReplaySinceNs marks a replay of a request interrupted at this
	// time (the envelope's FirstEnqueuedNs), for the ledger.
	FieldReplaySinceNs IntField = C.SPI_REQ_REPLAY_SINCE_NS
)

// LogLevel of the log hook (enum spi_log_level).
type LogLevel int32

const (
	LogError LogLevel = C.SPI_LOG_ERROR
	LogWarn  LogLevel = C.SPI_LOG_WARN
	LogInfo  LogLevel = C.SPI_LOG_INFO
	LogDebug LogLevel = C.SPI_LOG_DEBUG
)

// ModuleKind (enum spi_module_kind).
type ModuleKind int32

const (
	ModuleClassifier   ModuleKind = C.SPI_MODULE_CLASSIFIER
	ModuleKeyBuilder   ModuleKind = C.SPI_MODULE_KEY_BUILDER
	ModulePolicy       ModuleKind = C.SPI_MODULE_POLICY
	ModuleCostModel    ModuleKind = C.SPI_MODULE_COST_MODEL
	ModuleNoticeSource ModuleKind = C.SPI_MODULE_NOTICE_SOURCE
	ModuleReplayStore  ModuleKind = C.SPI_MODULE_REPLAY_STORE
	ModuleFleetBus     ModuleKind = C.SPI_MODULE_FLEET_BUS
)

// String is "classifier", "key_builder", ... or "invalid".
func (k ModuleKind) String() string {
	return C.GoString(C.spi_module_kind_name(C.int32_t(k)))
}

// OnFailure says what the library does when a module call fails.
type OnFailure int32

const (
	OnFailureError    OnFailure = C.SPI_ON_FAILURE_ERROR    // fail the call with ErrModule
	OnFailureFallback OnFailure = C.SPI_ON_FAILURE_FALLBACK // use the built-in module
)

// OptionType of a configuration option (enum spi_option_type).
type OptionType int32

const (
	OptBool   OptionType = C.SPI_OPT_BOOL
	OptInt    OptionType = C.SPI_OPT_INT
	OptDouble OptionType = C.SPI_OPT_DOUBLE
	OptString OptionType = C.SPI_OPT_STRING
	OptEnum   OptionType = C.SPI_OPT_ENUM
	OptList   OptionType = C.SPI_OPT_LIST
	OptObject OptionType = C.SPI_OPT_OBJECT
)

// OptionInfo describes one accepted configuration option.
type OptionInfo struct {
	Path        string
	Type        OptionType
	DefaultJSON string
	Min, Max    float64
	Doc         string
}

// Options lists every accepted configuration option (spi_option_count,
// spi_option_get).
func Options() ([]OptionInfo, error) {
	n := int(C.spi_option_count())
	out := make([]OptionInfo, 0, n)
	for i := 0; i < n; i++ {
		var o C.spi_option_info
		o.struct_size = C.size_t(unsafe.Sizeof(o))
		if rc := C.spi_option_get(C.size_t(i), &o); rc != 0 {
			return out, newError(rc, "spi_option_get", "")
		}
		out = append(out, OptionInfo{
			Path: C.GoString(o.path), Type: OptionType(o._type),
			DefaultJSON: C.GoString(o.default_json),
			Min:         float64(o.min_value), Max: float64(o.max_value),
			Doc: C.GoString(o.doc),
		})
	}
	return out, nil
}

// cstr views s as a C pointer + length without copying. The library copies
// everything before the call returns, and string bytes hold no Go pointers,
// so this is within the cgo pointer rules.
func cstr(s string) (*C.char, C.size_t) {
	if len(s) == 0 {
		return nil, 0
	}
	return (*C.char)(unsafe.Pointer(unsafe.StringData(s))), C.size_t(len(s))
}

// cbytes is cstr for a byte slice.
func cbytes(b []byte) (*C.char, C.size_t) {
	if len(b) == 0 {
		return nil, 0
	}
	return (*C.char)(unsafe.Pointer(&b[0])), C.size_t(len(b))
}

// goText copies a NUL-terminated char array of a C struct.
func goText(p *C.char) string { return C.GoString(p) }

func b2i(b bool) C.int32_t {
	if b {
		return 1
	}
	return 0
}
