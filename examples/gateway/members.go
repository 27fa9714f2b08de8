package main

// The top-level members of a JSON object, found without decoding it: the
// gateway edits one member of a body or an event (stream_options, usage) and
// passes every other byte on as it came. encoding/json would do it with a
// round trip through a map (about 120 µs for a body with an 8 KiB prompt,
// re-encoding all of it) or a Decoder walk (about 13 µs an event), several
// times the library's own time per request. The input has been decoded
// already (the library parsed the body, the relay each event), so this only
// needs to find where strings and nested values end; it does not validate.
// Keys are compared as decoded (member.is), and an edit applies to every
// member with the key: a JSON object may give a key twice, and the backend
// reads the last.

import (
	"bytes"
	"encoding/json"
)

// member is one top-level member: data[from:end] is the member with what
// separates it from the previous one (its comma; after the '{' for the
// first), data[val:end] its value.
type member struct {
	key            []byte // as written, escapes and all
	from, val, end int
}

// is reports whether the member's key is name once decoded, as the
// backend's decoder reads it: "stream_option\u0073" is stream_options.
// A key without a backslash is compared as it is, with no decoding.
func (m member) is(name string) bool {
	if bytes.IndexByte(m.key, '\\') < 0 {
		return string(m.key) == name
	}
	if len(m.key) < len(name) {
		return false // an escape is longer than what it stands for
	}
	var k string
	quoted := make([]byte, 0, len(m.key)+2)
	quoted = append(append(append(quoted, '"'), m.key...), '"')
	return json.Unmarshal(quoted, &k) == nil && k == name
}

// eachMember calls fn for the members of the JSON object data, in order,
// until fn returns false. data must be valid JSON: nothing is called for
// any other value, and what is called for invalid JSON is unspecified (but
// in bounds).
func eachMember(data []byte, fn func(m member) bool) {
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return
	}
	i++
	for first := true; ; first = false {
		m := member{from: i}
		i = skipSpace(data, i)
		if i >= len(data) || data[i] == '}' {
			return
		}
		if !first {
			i = skipSpace(data, i+1) // the comma
		}
		if i >= len(data) || data[i] != '"' {
			return
		}
		k := skipString(data, i)
		c := skipSpace(data, k)
		if k-1 <= i || c >= len(data) || data[c] != ':' {
			return
		}
		m.key = data[i+1 : k-1]
		m.val = skipSpace(data, c+1)
		if m.end = skipValue(data, m.val); m.end > len(data) || m.end <= m.val {
			return
		}
		if !fn(m) {
			return
		}
		i = m.end
	}
}

// withoutMembers returns the JSON object data without every top-level
// member named name (member.is), every other byte as it was; data as it
// came when it has none. A member goes with the comma before it, or, when
// no member before it stays, with the comma after it.
func withoutMembers(data []byte, name string) []byte {
	var out []byte
	at, kept := 0, false // data[:at] is done with
	eachMember(data, func(m member) bool {
		if !m.is(name) {
			kept = true
			return true
		}
		from, to := max(m.from, at), m.end
		if !kept {
			if j := skipSpace(data, to); j < len(data) && data[j] == ',' {
				to = j + 1
			}
		}
		out = append(out, data[at:from]...)
		at = to
		return true
	})
	if at == 0 {
		return data
	}
	return append(out, data[at:]...)
}

// withValue returns data with the value of each of the members ms (in
// order) replaced by raw.
func withValue(data []byte, ms []member, raw []byte) []byte {
	out := make([]byte, 0, len(data)+len(ms)*len(raw))
	at := 0
	for _, m := range ms {
		out = append(append(out, data[at:m.val]...), raw...)
		at = m.end
	}
	return append(out, data[at:]...)
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string that starts at data[i].
func skipString(data []byte, i int) int {
	for i++; i < len(data); i++ {
		switch data[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(data)
}

// skipValue returns the index after the value that starts at data[i].
func skipValue(data []byte, i int) int {
	if i >= len(data) {
		return i
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for ; i < len(data); i++ {
			switch data[i] {
			case '"':
				i = skipString(data, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(data)
	}
	for i < len(data) && data[i] != ',' && data[i] != '}' && data[i] != ']' &&
		data[i] != ' ' && data[i] != '\t' && data[i] != '\n' && data[i] != '\r' {
		i++ // a number, true, false or null
	}
	return i
}
