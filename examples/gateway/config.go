package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// backend is one OpenAI-compatible model server behind the gateway, as the
// backends file lists it.
type backend struct {
	ID           string   `json:"id"`
	URL          string   `json:"url"`
	Pool         string   `json:"pool"` // "spot" or "on_demand"
	Zone         string   `json:"zone"`
	InstanceType string   `json:"instance_type"`
	USDPerHour   float64  `json:"usd_per_hour"`
	MaxInflight  uint32   `json:"max_inflight"`
	Models       []string `json:"models"`
	// MetadataURL is the instance metadata service of the machine (AWS
	// IMDS, e.g. http://169.254.169.254), polled for interruption notices.
	MetadataURL string `json:"metadata_url"`
	// Node is the machine's instance id; "" means the backend id.
	Node             string  `json:"node"`
	DecodeTokensPerS float64 `json:"decode_tokens_per_s"`
	// The backend's own API key (vLLM's --api-key), sent to it as
	// "Authorization: Bearer <key>": at most one of the key itself, the
	// name of an environment variable holding it, or a file holding it
	// (a relative path is the backends file's directory's).
	APIKey     string `json:"api_key"`
	APIKeyEnv  string `json:"api_key_env"`
	APIKeyFile string `json:"api_key_file"`
	apiKey     string // the key, from whichever of the three is given
}

// loadBackends reads and checks the backends file: every mistake is named
// with the entry's index, and nothing starts on a bad file.
func loadBackends(path string) ([]*backend, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	var list []*backend
	if err := d.Decode(&list); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if len(list) == 0 {
		return nil, fmt.Errorf("%s: no backends", path)
	}
	seen := map[string]bool{}
	for i, b := range list {
		where := fmt.Sprintf("%s: backends[%d]", path, i)
		if b.ID == "" || len(b.ID) > 63 || seen[b.ID] {
			return nil, fmt.Errorf("%s.id: 1..63 bytes and unique (got %q)", where, b.ID)
		}
		seen[b.ID] = true
		u, err := url.Parse(b.URL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("%s.url: an http(s) URL (got %q)", where, b.URL)
		}
		b.URL = strings.TrimRight(b.URL, "/")
		if b.Pool != "spot" && b.Pool != "on_demand" {
			return nil, fmt.Errorf("%s.pool: \"spot\" or \"on_demand\" (got %q)", where, b.Pool)
		}
		if b.MetadataURL != "" {
			if u, err := url.Parse(b.MetadataURL); err != nil || u.Scheme != "http" || u.Host == "" {
				return nil, fmt.Errorf("%s.metadata_url: an http URL (got %q)", where, b.MetadataURL)
			}
			b.MetadataURL = strings.TrimRight(b.MetadataURL, "/")
		}
		if b.MaxInflight == 0 {
			b.MaxInflight = 64
		}
		if b.Node == "" {
			b.Node = b.ID
		}
		if err := b.readAPIKey(filepath.Dir(path)); err != nil {
			return nil, fmt.Errorf("%s.%v", where, err)
		}
	}
	return list, nil
}

// authorize gives a request to the backend its API key, if it has one.
func (b *backend) authorize(req *http.Request) {
	if b.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+b.apiKey)
	}
}

// readAPIKey sets b.apiKey from api_key, api_key_env or api_key_file.
// Errors name the key's source, never the key.
func (b *backend) readAPIKey(dir string) error {
	given := 0
	for _, s := range []string{b.APIKey, b.APIKeyEnv, b.APIKeyFile} {
		if s != "" {
			given++
		}
	}
	switch {
	case given > 1:
		return errors.New("api_key: give one of api_key, api_key_env and api_key_file")
	case b.APIKeyEnv != "":
		b.apiKey = os.Getenv(b.APIKeyEnv)
		if b.apiKey == "" {
			return fmt.Errorf("api_key_env: $%s is not set or empty", b.APIKeyEnv)
		}
	case b.APIKeyFile != "":
		p := b.APIKeyFile
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		raw, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("api_key_file: %v", err)
		}
		// A file written by echo or an editor ends with a newline.
		b.apiKey = strings.TrimRight(string(raw), "\r\n")
		if b.apiKey == "" {
			return fmt.Errorf("api_key_file: %s is empty", p)
		}
	default:
		b.apiKey = b.APIKey
	}
	// A header value cannot hold control characters (a line break would
	// end the header and start another).
	for _, c := range []byte(b.apiKey) {
		if c < 0x20 || c == 0x7f {
			return errors.New("api_key: holds a control character")
		}
	}
	return nil
}

func (b *backend) pool() spotinfer.Pool {
	if b.Pool == "spot" {
		return spotinfer.PoolSpot
	}
	return spotinfer.PoolOnDemand
}

// register adds the backends to the engine as replicas; the library then
// rejects what it finds wrong (a price of 0, ...) with the field's name.
func register(e *spotinfer.Engine, list []*backend) error {
	for _, b := range list {
		err := e.UpsertReplica(spotinfer.ReplicaInfo{ID: b.ID, Pool: b.pool(), Zone: b.Zone,
			InstanceType: b.InstanceType, Models: b.Models, USDPerHour: b.USDPerHour,
			MaxInflight: b.MaxInflight, Node: b.Node, DecodeTokensPerS: b.DecodeTokensPerS})
		if err != nil {
			return fmt.Errorf("backend %s: %v", b.ID, err)
		}
	}
	return nil
}
