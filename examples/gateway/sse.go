package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// maxEventBytes bounds one server-sent event's data (its data lines
// together): an event is held whole before it is passed on, and a line
// may be far longer than the reader's buffer (vLLM's prompt_logprobs, a
// large tool-call delta). A backend that sends more in one event ends its
// leg with errEventTooLong.
const maxEventBytes = 16 << 20

// readerBytes is the size of a leg's read buffer. A line that fits it is
// read in place, and an event's data up to that size is held in a buffer
// the reader keeps from event to event; more than that is held only while
// the gateway's long-event budget has room for it.
const readerBytes = 64 << 10

// defaultLongEventBudget is -long-event-budget's default: room for eight
// events of the largest size read at once.
const defaultLongEventBudget = 256 << 20

// errEventTooLong: an event over maxEventBytes. It says nothing of the
// machine, so the stream is not replayed: another leg would send it again.
var errEventTooLong = fmt.Errorf("an event over %d bytes", maxEventBytes)

// errLongEventBudget: an event over the reader's buffer while the
// gateway's readers held their -long-event-budget in such events. The leg
// ends as with errEventTooLong (nothing is allocated for it, nothing
// replayed), but the backend is not at fault.
var errLongEventBudget = fmt.Errorf("an event over %d KiB while the gateway's -long-event-budget "+
	"for such events was spent", readerBytes>>10)

// tooLong reports an event the gateway does not hold: over maxEventBytes,
// or over the reader's buffer with the budget for such events spent.
func tooLong(err error) bool {
	return errors.Is(err, errEventTooLong) || errors.Is(err, errLongEventBudget)
}

// byteBudget bounds the bytes the gateway's readers hold, all streams
// together, for events over their buffer (-long-event-budget). Nil bounds
// nothing.
type byteBudget struct {
	size    int64
	left    atomic.Int64
	refused atomic.Uint64 // takes that found too little left
}

func newByteBudget(size int64) *byteBudget {
	b := &byteBudget{size: size}
	b.left.Store(size)
	return b
}

// take reserves n bytes, or reports false without reserving any.
func (b *byteBudget) take(n int) bool {
	if b == nil {
		return true
	}
	for {
		left := b.left.Load()
		if left < int64(n) {
			b.refused.Add(1)
			return false
		}
		if b.left.CompareAndSwap(left, left-int64(n)) {
			return true
		}
	}
}

// give returns n bytes that take reserved.
func (b *byteBudget) give(n int) {
	if b != nil && n > 0 {
		b.left.Add(int64(n))
	}
}

// held is the bytes reserved now.
func (b *byteBudget) held() int64 {
	if b == nil {
		return 0
	}
	return b.size - b.left.Load()
}

// sseReader yields the data of each server-sent event. The data is held in
// one buffer the reader reuses while events fit its read buffer; a larger
// one is held on the budget until the next event is read or release is
// called, which the reader's user does when it is done with it.
type sseReader struct {
	r      *bufio.Reader
	budget *byteBudget // nil: no bound but maxEventBytes
	buf    []byte      // the data of events up to readerBytes, reused
	held   int         // the budget's bytes the last event's data holds
}

func newSSEReader(body io.Reader, budget *byteBudget) *sseReader {
	return &sseReader{r: bufio.NewReaderSize(body, readerBytes), budget: budget}
}

// holding reports whether the last event's data holds bytes of the budget.
func (s *sseReader) holding() bool {
	return s.held > 0
}

// release gives back what the last event held on the budget.
func (s *sseReader) release() {
	s.budget.give(s.held)
	s.held = 0
}

// next returns the next event's data, valid until the next call.
func (s *sseReader) next() (data []byte, err error) {
	s.release()
	defer func() {
		if err != nil {
			s.release()
		} else if s.held == 0 {
			s.buf = data[:0] // within the read buffer's size: kept
		}
	}()
	data = s.buf[:0]
	for {
		line, err := s.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if data, err = s.longLine(data, line); err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			if err == io.EOF && len(line) == 0 && len(data) > 0 {
				return data, nil
			}
			return nil, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			if len(data) > 0 {
				return data, nil
			}
			continue
		}
		if d, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			d = bytes.TrimPrefix(d, []byte(" "))
			if len(data)+len(d) > maxEventBytes {
				return nil, errEventTooLong
			}
			if len(data)+len(d) > cap(data) {
				c := max(len(data)+len(d), 2*cap(data), 512)
				if len(data)+len(d) <= readerBytes {
					c = min(c, readerBytes)
				}
				if data, err = s.realloc(data, min(c, maxEventBytes)); err != nil {
					return nil, err
				}
			}
			data = append(data, d...)
		}
	}
}

// realloc moves data into a buffer of capacity c, taken from the budget
// when c is over the read buffer's size; what the old one held goes back.
func (s *sseReader) realloc(data []byte, c int) ([]byte, error) {
	charge := 0
	if c > readerBytes {
		if !s.budget.take(c) {
			return nil, errLongEventBudget
		}
		charge = c
	}
	out := make([]byte, len(data), c)
	copy(out, data)
	s.budget.give(s.held)
	s.held = charge
	return out, nil
}

// longLine reads the rest of a line longer than the read buffer, of which
// first is the start (the read buffer's, valid until the next read), and
// appends its data to data. The pieces are copied
// out of the read buffer as they come and joined once the line has ended,
// with data, into one buffer of the event's size: less than twice the line
// in all, each byte on the budget. A line other than a data line is read
// past without being held.
func (s *sseReader) longLine(data, first []byte) ([]byte, error) {
	isData := bytes.HasPrefix(first, []byte("data:"))
	skip := len("data:") // of the line, before its data
	if isData && first[skip] == ' ' {
		skip++
	}
	// "data: " and "\r\n" do not count against the bound.
	limit := maxEventBytes - len(data) + len("data: \r\n")
	var pieces [][]byte
	held := 0
	defer func() { s.budget.give(held) }() // the pieces are garbage once joined
	piece, err, total := first, bufio.ErrBufferFull, len(first)
	for errors.Is(err, bufio.ErrBufferFull) {
		if total > limit {
			return nil, errEventTooLong
		}
		if isData {
			if !s.budget.take(len(piece)) {
				return nil, errLongEventBudget
			}
			held += len(piece)
			pieces = append(pieces, append([]byte(nil), piece...))
		}
		piece, err = s.r.ReadSlice('\n')
		total += len(piece)
	}
	if err != nil {
		return nil, err // a line cut off: the stream broke
	}
	if total > limit {
		return nil, errEventTooLong
	}
	if !isData {
		return data, nil
	}
	segs := append(pieces, piece) // the last is the read buffer's, read no further
	// The line end: every '\r' and '\n' at the end of the line.
	end := 0
scan:
	for i := len(segs) - 1; i >= 0; i-- {
		for j := len(segs[i]) - 1; j >= 0; j-- {
			if c := segs[i][j]; c != '\r' && c != '\n' {
				break scan
			}
			end++
		}
	}
	n := total - skip - end
	if len(data)+n > maxEventBytes {
		return nil, errEventTooLong
	}
	if n <= 0 {
		return data, nil
	}
	out, err := s.realloc(data, len(data)+n)
	if err != nil {
		return nil, err
	}
	for _, seg := range segs {
		if skip > 0 {
			k := min(skip, len(seg))
			seg, skip = seg[k:], skip-k
		}
		k := min(len(seg), len(data)+n-len(out))
		out = append(out, seg[:k]...)
	}
	return out, nil
}
