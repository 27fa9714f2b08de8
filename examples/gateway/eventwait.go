package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// A streamed answer has no overall timeout (answers can be long), and a
// backend whose engine hangs keeps its connection open, so its stream
// never ends by itself: a read of its body waits without end. Two flags
// bound the silence of a streamed answer once its response headers have
// come: -first-event-wait the wait for its first bytes (after its
// headers, a backend queues and prefills the request before it sends
// anything, which may take longer than the pauses between its events),
// and -event-wait the silence between bytes after that. A backend that
// sends nothing for the wait in force is taken for one whose connection
// dropped.

// errEventWait is a leg whose backend sent nothing for -event-wait, or
// nothing after its headers for -first-event-wait (errFirstEventWait
// wraps it). It is not context.Canceled: the leg ends as a dropped one
// does (its ticket a failure, a replayable stream continued), not as a
// client's going.
var errEventWait = errors.New("no event within -event-wait")

// errFirstEventWait is the first bytes not come within -first-event-wait
// of the headers; errors.Is(err, errEventWait) holds for it too.
var errFirstEventWait = fmt.Errorf("no first event within -first-event-wait: %w", errEventWait)

// eventWaitBody cancels its leg (and so ends a read that waits) when a
// read waits more than first (before the first bytes) or wait (after
// them); that read, and any after it, fails with errEventWait. Reads come
// from one goroutine; the time between them (the client's writes) does
// not count.
type eventWaitBody struct {
	r           io.Reader
	first, wait time.Duration
	cancel      context.CancelFunc
	begun       bool        // the first bytes have come
	timer       *time.Timer // runs cancel, armed during a read
	fired       bool
}

func newEventWaitBody(r io.Reader, first, wait time.Duration, cancel context.CancelFunc) *eventWaitBody {
	return &eventWaitBody{r: r, first: first, wait: wait, cancel: cancel}
}

func (b *eventWaitBody) Read(p []byte) (int, error) {
	if b.fired {
		return 0, b.err()
	}
	d := b.wait
	if !b.begun {
		d = b.first
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(d, b.cancel)
	} else {
		b.timer.Reset(d)
	}
	n, err := b.r.Read(p)
	if !b.timer.Stop() {
		// The wait ran out during the read: the leg is cancelled, and
		// whatever the read returned is its end.
		b.fired = true
		return n, b.err()
	}
	b.begun = b.begun || n > 0
	return n, err
}

func (b *eventWaitBody) err() error {
	if !b.begun {
		return fmt.Errorf("%w (%v)", errFirstEventWait, b.first)
	}
	return fmt.Errorf("%w (%v)", errEventWait, b.wait)
}
