package main

// The shared peer workload (../README.md, "Workload") for the Go harness;
// the golden checksums are the ones prompts.h and prompts.rs check.

import "fmt"

const (
	batch      = 64
	families   = 16
	warmRounds = 8
)

// prompt of size bytes: byte i is 'a' + (i*7 + family*3) % 26; at size/2
// the nine bytes "u" and unique as eight decimal digits.
func prompt(size, family, unique int) string {
	p := make([]byte, size)
	for i := range p {
		p[i] = byte('a' + (i*7+family*3)%26)
	}
	if size > 16 {
		copy(p[size/2:], fmt.Sprintf("u%08d", unique%100000000))
	}
	return string(p)
}

// uniqueOf: warm-up round r uses (1000 + r) * 64 + j; the measured batch
// (r < 0) uses 64 + j.
func uniqueOf(round, j int) int {
	if round < 0 {
		return batch + j
	}
	return (1000+round)*batch + j
}

// allPrompts returns the eight warm batches, then the measured one.
func allPrompts(size int) []string {
	var all []string
	for round := 0; round <= warmRounds; round++ {
		r := round
		if round == warmRounds {
			r = -1
		}
		for j := 0; j < batch; j++ {
			all = append(all, prompt(size, j%families, uniqueOf(r, j)))
		}
	}
	return all
}

// checksum is FNV-1a 64 over every prompt in routing order.
func checksum(all []string) uint64 {
	h := uint64(14695981039346656037)
	for _, p := range all {
		for i := 0; i < len(p); i++ {
			h ^= uint64(p[i])
			h *= 1099511628211
		}
	}
	return h
}

var golden = map[int]uint64{
	1024:  0xb52fa1fd2f36ba71,
	8192:  0xbd576dd9bf240d89,
	65536: 0xd7418da25f3f424d,
}

func running(i int) int { return i % 7 }
func waiting(i int) int { return i % 3 }
