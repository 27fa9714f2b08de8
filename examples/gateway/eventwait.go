package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// A streamed answer has no overall timeout (answers can be long), and a
// backend whose engine hangs mid-answer keeps its connection open, so its
// stream never ends by itself: a read of its body waits without end. Once
// the answer's first bytes have come, -event-wait bounds the silence
// between them: a backend that sends nothing for that long is taken for
// one whose connection dropped. The wait for the first bytes is not
// bounded by it: after its headers, a backend queues and prefills the
// request before it sends anything.

// errEventWait is a leg whose backend sent nothing for -event-wait. It
// is not context.Canceled: the leg ends as a dropped one does (its ticket
// a failure, a replayable stream continued), not as a client's going.
var errEventWait = errors.New("no event within -event-wait")

// eventWaitBody cancels its leg (and so ends a read that waits) when a
// read after the first bytes waits more than wait; that read, and any
// after it, fails with errEventWait. Reads come from one goroutine; the
// time between them (the client's writes) does not count.
type eventWaitBody struct {
	r      io.Reader
	wait   time.Duration
	cancel context.CancelFunc
	begun  bool        // the first bytes have come
	timer  *time.Timer // runs cancel, armed during a read
	fired  bool
}

func newEventWaitBody(r io.Reader, wait time.Duration, cancel context.CancelFunc) *eventWaitBody {
	return &eventWaitBody{r: r, wait: wait, cancel: cancel}
}

func (b *eventWaitBody) Read(p []byte) (int, error) {
	if b.fired {
		return 0, b.err()
	}
	if !b.begun {
		n, err := b.r.Read(p)
		b.begun = n > 0
		return n, err
	}
	if b.timer == nil {
		b.timer = time.AfterFunc(b.wait, b.cancel)
	} else {
		b.timer.Reset(b.wait)
	}
	n, err := b.r.Read(p)
	if !b.timer.Stop() {
		// The wait ran out during the read: the leg is cancelled, and
		// whatever the read returned is its end.
		b.fired = true
		return n, b.err()
	}
	return n, err
}

func (b *eventWaitBody) err() error {
	return fmt.Errorf("%w (%v)", errEventWait, b.wait)
}
