package spotinfer

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readFile(root, rel string) ([]byte, error) {
	return os.ReadFile(filepath.Join(root, filepath.FromSlash(rel)))
}

func hex16(v uint64) string { return fmt.Sprintf("%016x", v) }

// fieldBytes decodes a vector field: a string, {"hex": ...} or
// {"repeat": s, "count": n}.
func fieldBytes(t *testing.T, raw json.RawMessage) []byte {
	t.Helper()
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []byte(s)
	}
	var obj struct {
		Hex    *string
		Repeat string
		Count  int
	}
	must(t, json.Unmarshal(raw, &obj))
	if obj.Hex != nil {
		b, err := hex.DecodeString(*obj.Hex)
		must(t, err)
		return b
	}
	return []byte(strings.Repeat(obj.Repeat, obj.Count))
}

func promptBytes(t *testing.T, req map[string]json.RawMessage) []byte {
	if raw, ok := req["prompt_gen"]; ok {
		var g struct{ Len, Mul, Add int }
		must(t, json.Unmarshal(raw, &g))
		b := make([]byte, g.Len)
		for i := range b {
			b[i] = byte(i*g.Mul + g.Add)
		}
		return b
	}
	if raw, ok := req["prompt"]; ok {
		return fieldBytes(t, raw)
	}
	return nil
}

func tokenIDs(t *testing.T, req map[string]json.RawMessage) []uint32 {
	if raw, ok := req["token_gen"]; ok {
		var g struct{ Count, Mul, Add uint64 }
		must(t, json.Unmarshal(raw, &g))
		ids := make([]uint32, g.Count)
		for i := range ids {
			ids[i] = uint32(uint64(i)*g.Mul + g.Add)
		}
		return ids
	}
	var ids []uint32
	if raw, ok := req["token_ids"]; ok {
		must(t, json.Unmarshal(raw, &ids))
	}
	return ids
}
