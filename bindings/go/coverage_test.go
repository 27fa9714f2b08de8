package spotinfer

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every function of the public headers is called somewhere in the
// binding's (non-test) sources.
func TestEveryHeaderFunctionIsBound(t *testing.T) {
	root := repoRoot(t)
	decl := regexp.MustCompile(`\bSPI_API\b[^;(]*?\b(spi_\w+)\s*\(`)
	comment := regexp.MustCompile(`(?s)/\*.*?\*/`)
	var want []string
	for _, h := range []string{"spotinfer.h", "spotinfer_module.h", "spotinfer_extras.h"} {
		b, err := os.ReadFile(filepath.Join(root, "include", "spotinfer", h))
		must(t, err)
		for _, m := range decl.FindAllStringSubmatch(comment.ReplaceAllString(string(b), ""), -1) {
			want = append(want, m[1])
		}
	}
	if len(want) < 40 {
		t.Fatalf("found only %d functions in the headers", len(want))
	}
	var src strings.Builder
	files, _ := filepath.Glob("*.go")
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "bench_support.go" {
			continue
		}
		b, err := os.ReadFile(f)
		must(t, err)
		src.Write(b)
	}
	all := src.String()
	for _, fn := range want {
		// Called from Go (C.fn) or from a C helper in a preamble.
		if !strings.Contains(all, "C."+fn+"(") && !strings.Contains(all, " "+fn+"(") {
			t.Errorf("%s has no binding", fn)
		}
	}
}

// Every callback of the module structs the binding registers (classifier,
// key builder, cost model, policy) is set by module.go's C helpers, so a
// field added to the header is not silently left NULL for Go modules.
func TestEveryModuleCallbackIsBound(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "include", "spotinfer", "spotinfer_module.h"))
	must(t, err)
	text := regexp.MustCompile(`(?s)/\*.*?\*/`).ReplaceAllString(string(b), "")
	src, err := os.ReadFile("module.go")
	must(t, err)
	field := regexp.MustCompile(`\(\*(\w+)\)\s*\(`)
	n := 0
	for _, kind := range []string{"classifier", "key_builder", "cost_model", "policy"} {
		body := regexp.MustCompile(`(?s)typedef struct spi_` + kind + `_module \{(.*?)\}`).FindStringSubmatch(text)
		if body == nil {
			t.Fatalf("no spi_%s_module in the header", kind)
		}
		for _, f := range field.FindAllStringSubmatch(body[1], -1) {
			n++
			if !strings.Contains(string(src), "m."+f[1]+" = ") {
				t.Errorf("spi_%s_module.%s is never set by the binding", kind, f[1])
			}
		}
	}
	if n < 6 {
		t.Fatalf("found only %d callbacks", n)
	}
}
