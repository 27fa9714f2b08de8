package main

import (
	"hash/fnv"
	"strings"
)

// The answer to a prompt is a fixed sequence of words chosen by hashing the
// prompt and the word's position, so the same prompt always gets the same
// text, whatever the server, its token rate or where a stream was cut. A
// continuation (the prompt plus the text already streamed) is recognised as
// such and resumes the same sequence at the right position.

var vocabulary = strings.Fields(`alpha bravo charlie delta echo foxtrot golf
hotel india juliet kilo lima mike november oscar papa quebec romeo sierra
tango uniform victor whiskey xray yankee zulu amber basalt cedar dune ember
fjord granite harbor island jasper kelp lagoon meadow nectar orchard pebble
quartz river summit thicket upland valley willow yarrow zephyr`)

var inVocabulary = func() map[string]bool {
	m := make(map[string]bool, len(vocabulary))
	for _, w := range vocabulary {
		m[w] = true
	}
	return m
}()

// seedOf hashes the prompt a sequence is generated from.
func seedOf(prompt string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(prompt))
	return h.Sum64()
}

// token is the i-th token of the sequence for seed: a space and a word.
func token(seed uint64, i int) string {
	x := seed ^ (uint64(i)+1)*0x9e3779b97f4a7c15
	x ^= x >> 31
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 29
	return " " + vocabulary[x%uint64(len(vocabulary))]
}

// continuedTokens tells how many tokens of the sequence for seed the text
// is: ok is false when text is not exactly a whole number of them.
func continuedTokens(seed uint64, text string) (n int, ok bool) {
	for len(text) > 0 {
		t := token(seed, n)
		if !strings.HasPrefix(text, t) {
			return n, false
		}
		text = text[len(t):]
		n++
	}
	return n, true
}

// splitCompletionPrompt finds, in a completions prompt that may carry
// already generated text at its end, the original prompt and how many
// tokens follow it: the longest tail of vocabulary words that the head's
// own sequence generates. A prompt without such a tail is its own head.
func splitCompletionPrompt(prompt string) (head string, n int) {
	// Candidate cut points: before each trailing " word" from the vocabulary.
	var cuts []int
	end := len(prompt)
	for end > 0 {
		sp := strings.LastIndexByte(prompt[:end], ' ')
		if sp < 0 || !inVocabulary[prompt[sp+1:end]] {
			break
		}
		cuts = append(cuts, sp)
		end = sp
	}
	// Longest first: the original prompt may itself end in such words.
	for i := len(cuts) - 1; i >= 0; i-- {
		h := prompt[:cuts[i]]
		if k, ok := continuedTokens(seedOf(h), prompt[cuts[i]:]); ok && k == i+1 {
			return h, k
		}
	}
	return prompt, 0
}
