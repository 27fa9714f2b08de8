package spotinfer

import (
	"errors"
	"strings"
	"sync"
	"testing"
)

// Goroutines failing calls on one engine at once each get their own
// message: the library keeps one per OS thread and the binding keeps each
// call and its read on one thread.
func TestErrorMessagesDoNotCross(t *testing.T) {
	e := newEngine(t, "")
	ids := []string{"alpha-replica", "beta-replica", "gamma-replica", "delta-replica"}
	for _, id := range ids {
		must(t, e.UpsertReplica(ReplicaInfo{ID: id, Pool: PoolOnDemand, USDPerHour: 1, MaxInflight: 4}))
	}
	var wg sync.WaitGroup
	crossed := make([]int, len(ids))
	for i, id := range ids {
		wg.Add(1)
		go func(i int, id string) {
			defer wg.Done()
			for n := 0; n < 5000; n++ {
				err := e.ReportMetrics(id, []byte("x{"))
				var se *Error
				if !errors.As(err, &se) {
					crossed[i]++
					continue
				}
				if !strings.Contains(se.Message, id) {
					crossed[i]++
				}
			}
		}(i, id)
	}
	wg.Wait()
	for i, n := range crossed {
		if n != 0 {
			t.Errorf("%s: %d messages were not its own", ids[i], n)
		}
	}
}
