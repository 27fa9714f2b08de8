package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// The wait for a backend's response headers is the request's, not the
// transport's. A streamed answer's headers come as soon as the backend has
// taken the request (vLLM sends them before the first token): headers that
// do not come within -header-wait are a dead or hung backend, and the try
// fails and is routed elsewhere. A non-streamed answer's headers come only
// once the whole answer is generated, however long that takes: it has no
// such wait, and is bounded by the client (who may leave) and by the
// connection's keepalive (a machine that is gone).

type headerWaitKey struct{}

// withHeaderWait marks a request's context: its response headers must
// come within d.
func withHeaderWait(ctx context.Context, d time.Duration) context.Context {
	return context.WithValue(ctx, headerWaitKey{}, d)
}

// errHeaderWait is a try whose headers did not come within -header-wait.
var errHeaderWait = errors.New("no response headers within -header-wait")

// headerWaitTransport applies the wait withHeaderWait set, if any.
type headerWaitTransport struct{ base http.RoundTripper }

func (t headerWaitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	d, _ := req.Context().Value(headerWaitKey{}).(time.Duration)
	if d <= 0 {
		return t.base.RoundTrip(req)
	}
	ctx, cancel := context.WithCancel(req.Context())
	timer := time.AfterFunc(d, cancel)
	resp, err := t.base.RoundTrip(req.WithContext(ctx))
	if !timer.Stop() {
		// The wait ran out (an answer that came just then is cancelled
		// with it: its body is cut).
		if err == nil {
			resp.Body.Close()
		}
		cancel()
		return nil, fmt.Errorf("%w (%v)", errHeaderWait, d)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

// cancelOnClose ends the context a response's body is read under when the
// body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}

// streamedBody reports whether a request body asks for a streamed answer
// (its last member stream is true, as the backend reads it).
func streamedBody(body []byte) bool {
	if !bytes.Contains(body, []byte(`"stream"`)) && !bytes.Contains(body, []byte(`\u`)) {
		return false
	}
	streamed := false
	eachMember(body, func(m member) bool {
		if m.is("stream") {
			streamed = string(body[m.val:m.end]) == "true"
		}
		return true
	})
	return streamed
}

// headerWaitFor is ctx with -header-wait for a streamed body, ctx as it is
// for any other.
func (g *gateway) headerWaitFor(ctx context.Context, body []byte) context.Context {
	if !streamedBody(body) {
		return ctx
	}
	return withHeaderWait(ctx, g.o.headerWait)
}

// backendError is err as a client may read it: the backend's id in place
// of its URL, which is the gateway's business.
func backendError(id string, err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", id, ue.Err)
	}
	return err
}
