package main

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"testing"
)

// modelsBackend serves /v1/models as vLLM does, naming one model.
type modelsBackend struct {
	model string
	next  http.Handler
}

func (m *modelsBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/models" {
		m.next.ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": []map[string]any{
		{"id": m.model, "object": "model", "owned_by": "vllm"}}})
}

func getModels(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// GET /v1/models lists, in OpenAI's list format, the union of the models
// the backends file names and, for a backend it names none for, those the
// backend's own /v1/models names; GET /v1/models/{id} gives one, or 404.
func TestModelsListsTheBackendsModels(t *testing.T) {
	srv, _ := startRawGateway(t, map[string]http.Handler{
		"spot-a": &fakeBackend{n: 1}, "spot-b": &fakeBackend{n: 1},
		"od-1": &modelsBackend{model: "org/m4", next: &fakeBackend{n: 1}}},
		map[string]string{"spot-a": "spot", "spot-b": "spot", "od-1": "on_demand",
			"spot-a.models": `["m1","m2"]`, "spot-b.models": `["m2","m3"]`})
	status, b := getModels(t, srv.URL+"/v1/models")
	var list struct {
		Object string
		Data   []modelEntry
	}
	if status != 200 || json.Unmarshal(b, &list) != nil || list.Object != "list" {
		t.Fatalf("status %d: %s", status, b)
	}
	var ids []string
	for _, m := range list.Data {
		if m.Object != "model" || m.Created == 0 || m.OwnedBy == "" {
			t.Errorf("entry %+v", m)
		}
		ids = append(ids, m.ID)
	}
	if want := []string{"m1", "m2", "m3", "org/m4"}; !reflect.DeepEqual(ids, want) {
		t.Errorf("models %v, want %v", ids, want)
	}
	var one modelEntry
	if status, b := getModels(t, srv.URL+"/v1/models/org/m4"); status != 200 ||
		json.Unmarshal(b, &one) != nil || one.ID != "org/m4" || one.Object != "model" {
		t.Errorf("/v1/models/org/m4: status %d: %s", status, b)
	}
	if status, b := getModels(t, srv.URL+"/v1/models/nope"); status != 404 {
		t.Errorf("/v1/models/nope: status %d, want 404: %s", status, b)
	}
}
