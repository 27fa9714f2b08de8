package main

import (
	"bufio"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// readAll reads every event of the stream, each copied (the reader reuses
// its buffer), until the first error.
func readAll(rd *sseReader) ([]string, error) {
	var out []string
	for i := 0; i < 1000; i++ {
		data, err := rd.next()
		if err != nil {
			return out, err
		}
		out = append(out, string(data))
	}
	return out, errors.New("more than 1000 events")
}

// Events are read whole whatever their lines' lengths and line ends: data
// lines joined, comments and other fields skipped (long ones too, without
// being held), "data:" with or without its space, \r\n and \r\r\n ends even
// when the read buffer splits them from the line, and the last event
// without its blank line at the end of the stream.
func TestSSEReaderEvents(t *testing.T) {
	long := strings.Repeat("y", 3*readerBytes+17)
	// A line whose "\r" is the last byte of a read buffer and "\n" the
	// first of the next.
	split := strings.Repeat("z", 2*readerBytes-len("data: ")-1)
	stream := "data: a\n\n" +
		": " + long + "\n" + // a long comment
		"event: x\ndata:b\r\n\r\n" +
		"data: " + long + "\r\n\n" +
		"data: c\ndata: " + long + "\ndata: d\n\n" +
		"data: " + split + "\r\n\n" +
		"data: " + long + "\r\r\n\n" +
		"id: 1\n\n" + // no data: no event
		"data: e"
	budget := newByteBudget(1 << 30)
	rd := newSSEReader(strings.NewReader(stream), budget)
	got, err := readAll(rd)
	want := []string{"a", "b", long, "c" + long + "d", split, long}
	if !errors.Is(err, io.EOF) || len(got) != len(want) {
		t.Fatalf("%d events, then %v", len(got), err)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d: %d bytes %.20q..., want %d bytes", i, len(got[i]), got[i], len(want[i]))
		}
	}
	if h := budget.held(); h != 0 {
		t.Errorf("%d bytes held after the stream ended", h)
	}
	// The last event ended by the end of the stream, without a blank line.
	rd = newSSEReader(strings.NewReader("data: a\n\ndata: e\n"), nil)
	if got, err := readAll(rd); !errors.Is(err, io.EOF) || len(got) != 2 || got[1] != "e" {
		t.Fatalf("%q, then %v", got, err)
	}
	// A long line cut off by the end of the stream is an error, not an event.
	rd = newSSEReader(strings.NewReader("data: "+long), budget)
	if got, err := readAll(rd); err != io.EOF || len(got) != 0 {
		t.Fatalf("%d events, then %v", len(got), err)
	}
	if h := budget.held(); h != 0 {
		t.Errorf("%d bytes held after a line was cut off", h)
	}
}

// Reading a long line allocates less than about twice it, the pieces
// copied out of the read buffer once and joined once; it used to cost six
// times it (the line gathered in a slice grown a quarter at a time, then
// copied into the event).
func TestLongLineAllocations(t *testing.T) {
	line := "data: {\"pad\":\"" + strings.Repeat("x", 15<<20) + "\"}\n\n"
	budget := newByteBudget(64 << 20)
	rd := &sseReader{r: bufio.NewReaderSize(strings.NewReader(line), readerBytes), budget: budget}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	data, err := rd.next()
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("event %d MiB, allocated %.3fx it", len(data)>>20, float64(alloc)/float64(len(data)))
	// Twice the event, and room for the list of pieces.
	if alloc > 2*uint64(len(data))+64<<10 {
		t.Errorf("allocated %.3fx the event", float64(alloc)/float64(len(data)))
	}
	if h := budget.held(); h != int64(len(data)) {
		t.Errorf("%d bytes held for an event of %d", h, len(data))
	}
	rd.release()
	if h := budget.held(); h != 0 {
		t.Errorf("%d bytes held after the release", h)
	}
}

// Events within the read buffer's size reuse one buffer: reading them
// allocates nothing once it has grown.
func TestShortEventsReuseTheBuffer(t *testing.T) {
	ev := "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\"}}]}\n\n"
	rd := newSSEReader(strings.NewReader(strings.Repeat(ev, 200)), nil)
	if _, err := rd.next(); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := rd.next(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations an event", allocs)
	}
}

// With the budget spent, a long event is refused before anything is
// allocated for it, and what the refused read took goes back; one within
// the read buffer still reads.
func TestLongEventBudget(t *testing.T) {
	long := strings.Repeat("x", 4*readerBytes)
	budget := newByteBudget(6 * readerBytes) // the pieces fit, not the joined event too
	rd := newSSEReader(strings.NewReader("data: "+long+"\n\ndata: a\n\n"), budget)
	if _, err := rd.next(); !errors.Is(err, errLongEventBudget) || !tooLong(err) {
		t.Fatalf("got %v", err)
	}
	if h, n := budget.held(), budget.refused.Load(); h != 0 || n != 1 {
		t.Fatalf("%d bytes held, %d refusals", h, n)
	}
	budget = newByteBudget(9 * readerBytes)
	rd = newSSEReader(strings.NewReader("data: "+long+"\n\ndata: a\n\n"), budget)
	if data, err := rd.next(); err != nil || string(data) != long {
		t.Fatalf("%d bytes, %v", len(data), err)
	}
	// Held until the next event: another reader finds too little left.
	other := newSSEReader(strings.NewReader("data: "+long+"\n\n"), budget)
	if _, err := other.next(); !errors.Is(err, errLongEventBudget) {
		t.Fatalf("the other reader got %v", err)
	}
	if data, err := rd.next(); err != nil || string(data) != "a" {
		t.Fatalf("%q, %v", data, err)
	}
	if h := budget.held(); h != 0 {
		t.Fatalf("%d bytes held", h)
	}
}
