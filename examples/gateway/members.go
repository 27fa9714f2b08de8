package main

// The top-level members of a JSON object, found without decoding it: the
// gateway edits one member of a body or an event (stream_options, usage) and
// passes every other byte on as it came. encoding/json would do it with a
// round trip through a map (about 120 µs for a body with an 8 KiB prompt,
// re-encoding all of it) or a Decoder walk (about 13 µs an event), several
// times the library's own time per request. The input has been decoded
// already (the library parsed the body, the relay each event), so this only
// needs to find where strings and nested values end; it does not validate.

// member is one top-level member: data[from:end] is the member with what
// separates it from the previous one (its comma; after the '{' for the
// first), data[val:end] its value.
type member struct {
	key            []byte // as written, escapes and all
	from, val, end int
	first          bool
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
		m := member{from: i, first: first}
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

// withoutMember returns data without the member: the bytes before and after
// it, and for the first member the comma after it.
func withoutMember(data []byte, m member) []byte {
	to := m.end
	if m.first {
		if j := skipSpace(data, to); j < len(data) && data[j] == ',' {
			to = j + 1
		}
	}
	out := make([]byte, 0, len(data)-(to-m.from))
	return append(append(out, data[:m.from]...), data[to:]...)
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
