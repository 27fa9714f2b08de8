package main

import (
	"context"
	"io"
	"net/http"
	"time"

	spotinfer "github.com/libspotinfer/libspotinfer/bindings/go"
)

// scrape reads a backend's /metrics (vLLM or SGLang names) into the
// library on an interval; firstDone is called after the first attempt. A
// backend that stops answering is not reported, so its reading ages and
// the library counts it saturated.
func (g *gateway) scrape(ctx context.Context, b *backend, firstDone func()) {
	t := time.NewTicker(g.o.scrapeEvery)
	defer t.Stop()
	client := &http.Client{Timeout: 2 * time.Second}
	for first := true; ; first = false {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, b.URL+"/metrics", nil)
		b.authorize(req) // a server may guard /metrics with its key too
		if resp, err := client.Do(req); err == nil {
			text, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
			resp.Body.Close()
			if err == nil && resp.StatusCode == http.StatusOK {
				if err := g.eng.ReportMetrics(b.ID, text); err != nil {
					g.events.write(map[string]any{"event": "scrape_error", "replica": b.ID, "error": err.Error()})
				}
			}
		}
		if first {
			firstDone()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// imds talks to an AWS instance metadata service with IMDSv2 session
// tokens: PUT /latest/api/token, then GETs carrying the token; a 401 means
// the token expired and a new one is taken.
type imds struct {
	base    string
	client  *http.Client
	token   string
	expires time.Time
}

const imdsTokenTTL = 21600 // seconds, the most IMDS grants

func (m *imds) get(ctx context.Context, path string) (int, []byte, error) {
	for try := 0; try < 2; try++ {
		if m.token == "" || time.Now().After(m.expires) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPut, m.base+"/latest/api/token", nil)
			req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", itoa(imdsTokenTTL))
			resp, err := m.client.Do(req)
			if err != nil {
				return 0, nil, err
			}
			tok, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return resp.StatusCode, nil, nil
			}
			m.token = string(tok)
			m.expires = time.Now().Add(imdsTokenTTL*time.Second - time.Minute)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, m.base+path, nil)
		req.Header.Set("X-aws-ec2-metadata-token", m.token)
		resp, err := m.client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == http.StatusUnauthorized {
			m.token = ""
			continue
		}
		return resp.StatusCode, body, err
	}
	return http.StatusUnauthorized, nil, nil
}

// pollNotices polls the machine's spot instance-action document and hands
// every notice to the library; for each REPLAY plan the stream holding the
// ticket is cut and resumed elsewhere, DRAIN plans finish where they are.
func (g *gateway) pollNotices(ctx context.Context, b *backend) {
	m := &imds{base: b.MetadataURL, client: &http.Client{Timeout: 2 * time.Second}}
	t := time.NewTicker(g.o.noticeEvery)
	defer t.Stop()
	seen := map[string]bool{}
	for {
		status, body, err := m.get(ctx, "/latest/meta-data/spot/instance-action")
		if err == nil && (status == http.StatusOK || status == http.StatusNotFound) {
			notices, perr := spotinfer.ParseNotice(spotinfer.NoticeAWSInstanceAction, status, body,
				b.Node, time.Now().UnixNano())
			if perr != nil {
				g.events.write(map[string]any{"event": "notice_error", "replica": b.ID, "error": perr.Error()})
			}
			for _, n := range notices {
				if !seen[n.DedupKey] {
					seen[n.DedupKey] = true
					g.handleNotice(b, n)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (g *gateway) handleNotice(b *backend, n spotinfer.Notice) {
	plans, err := g.eng.Notice(n)
	// From here on no route may choose the machine's replicas.
	handed := time.Now()
	g.stats.notices.Add(1)
	ev := map[string]any{"event": "notice", "replica": b.ID, "node": n.Node, "kind": n.Kind.String(),
		"deadline": float64(n.DeadlineNs) / 1e9, "plans": len(plans), "handed_in": unixSeconds(handed)}
	if err != nil {
		ev["error"] = err.Error()
	}
	replays, drains := 0, 0
	for _, p := range plans {
		if p.Action == spotinfer.ActionReplay {
			if g.interrupt(p.Ticket) {
				replays++
			}
		} else {
			drains++
		}
	}
	ev["replay"], ev["drain"] = replays, drains
	g.stats.interrupted.Add(uint64(replays))
	g.events.write(ev)
}
