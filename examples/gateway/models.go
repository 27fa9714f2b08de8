package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
)

// modelEntry is one model in OpenAI's list format.
type modelEntry struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// maxModelsAnswer bounds what is read of a backend's /v1/models.
const maxModelsAnswer = 1 << 20

// models serves GET /v1/models (every model a backend serves, in OpenAI's
// list format) and GET /v1/models/{id} (one of them, or 404). A backend's
// models are the backends file's list; for a backend without one (it
// serves any model the library routes to it) they are those its own
// /v1/models names, asked then; one that does not answer in time names
// none.
func (g *gateway) models(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		apiError(w, http.StatusMethodNotAllowed, "invalid_request_error", "use GET")
		return
	}
	id := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/v1/models"), "/")
	var list []modelEntry
	for _, name := range g.modelNames(r.Context()) {
		if id == "" || name == id {
			list = append(list, modelEntry{ID: name, Object: "model",
				Created: g.started.Unix(), OwnedBy: "spotinfer-gateway"})
		}
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case id == "":
		if list == nil {
			list = []modelEntry{}
		}
		json.NewEncoder(w).Encode(map[string]any{"object": "list", "data": list})
	case len(list) == 0:
		w.Header().Del("Content-Type")
		apiError(w, http.StatusNotFound, "invalid_request_error", "the model "+id+" does not exist")
	default:
		json.NewEncoder(w).Encode(list[0])
	}
}

// modelNames is the sorted union of the backends' models.
func (g *gateway) modelNames(ctx context.Context) []string {
	var mu sync.Mutex
	var wg sync.WaitGroup
	seen := map[string]bool{}
	add := func(names []string) {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range names {
			seen[n] = true
		}
	}
	for _, b := range g.backends {
		if len(b.Models) > 0 {
			add(b.Models)
			continue
		}
		wg.Add(1)
		go func(b *backend) { defer wg.Done(); add(g.askModels(ctx, b)) }(b)
	}
	wg.Wait()
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// askModels reads the ids of a backend's /v1/models; nil if it does not
// answer them within dialWait.
func (g *gateway) askModels(ctx context.Context, b *backend) []string {
	ctx, cancel := context.WithTimeout(ctx, dialWait)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.URL+"/v1/models", nil)
	if err != nil {
		return nil
	}
	b.authorize(req)
	resp, err := g.client.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var answer struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxModelsAnswer))
	if err != nil || resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &answer) != nil {
		return nil
	}
	var names []string
	for _, m := range answer.Data {
		if m.ID != "" {
			names = append(names, m.ID)
		}
	}
	return names
}
