package main

import (
	"bytes"
	"encoding/json"
	"math"
)

// usage is an event's token usage, as far as the gateway reads it.
type usage struct {
	PromptTokens     uint64
	CompletionTokens uint64
	Details          *usageDetails // prompt_tokens_details
}

type usageDetails struct{ CachedTokens uint64 }

// decodeEvent decodes an event with encoding/json, but for its usage: that
// is read from the members whose key is usage exactly (member.is, as
// dropMember finds them), and so are the usage's own keys. The wire format
// is case-sensitive (vLLM's and OpenAI's clients read only "usage"), and
// encoding/json matches keys case-insensitively: it would count a "Usage"
// member that the gateway does not take out. Of a key given twice the last
// is read, as the backend's clients read it. A function, not an
// UnmarshalJSON method, which encoding/json would have validate every
// event twice.
func decodeEvent(data []byte, e *event) error {
	*e = event{}
	if err := json.Unmarshal(data, e); err != nil {
		return err
	}
	// Most events are read without a walk; a key written with escapes
	// ("usag\u0065") needs one.
	if !bytes.Contains(data, []byte(`"usage"`)) && !bytes.Contains(data, []byte(`"error"`)) &&
		!bytes.Contains(data, []byte(`\u`)) {
		return nil
	}
	eachMember(data, func(m member) bool {
		switch {
		case m.is("usage"):
			// A usage the gateway cannot read (a count that is a string,
			// a negative one) is no usage: the event's text still goes
			// on, and the leg's tokens are counted from its text.
			e.usageGiven = true
			var err error
			if e.Usage, err = decodeUsage(data[m.val:m.end]); err != nil {
				e.Usage = nil
			}
		case m.is("error"):
			e.Error = nil
			if v := data[m.val:m.end]; string(v) != "null" {
				e.Error = v
			}
		}
		return true
	})
	return nil
}

// errorMessage is the message of the event's error (its "message" when it
// is an object that has one, else the error as written), at most 512 bytes.
func (e *event) errorMessage() string {
	var obj struct {
		Message string `json:"message"`
	}
	msg := string(e.Error)
	if json.Unmarshal(e.Error, &obj) == nil && obj.Message != "" {
		msg = obj.Message
	}
	if len(msg) > 512 {
		msg = msg[:512]
	}
	return msg
}

// decodeUsage reads a usage object; nil for null.
func decodeUsage(raw []byte) (*usage, error) {
	if string(raw) == "null" {
		return nil, nil
	}
	if len(raw) == 0 || raw[0] != '{' {
		return nil, &json.UnmarshalTypeError{Value: string(raw), Field: "usage"}
	}
	u := &usage{}
	var err error
	eachMember(raw, func(m member) bool {
		v := raw[m.val:m.end]
		switch {
		case m.is("prompt_tokens"):
			err = readCount(v, &u.PromptTokens)
		case m.is("completion_tokens"):
			err = readCount(v, &u.CompletionTokens)
		case m.is("prompt_tokens_details"):
			u.Details, err = decodeDetails(v)
		}
		return err == nil
	})
	return u, err
}

func decodeDetails(raw []byte) (*usageDetails, error) {
	if string(raw) == "null" {
		return nil, nil
	}
	if len(raw) == 0 || raw[0] != '{' {
		return nil, &json.UnmarshalTypeError{Value: string(raw), Field: "usage.prompt_tokens_details"}
	}
	d := &usageDetails{}
	var err error
	eachMember(raw, func(m member) bool {
		if m.is("cached_tokens") {
			err = readCount(raw[m.val:m.end], &d.CachedTokens)
		}
		return err == nil
	})
	return d, err
}

// readCount reads a token count: a whole number, written as an integer or,
// as some servers write their counts, with a fraction or an exponent that
// leaves it whole (3.0, 3e0). Anything else is an error.
func readCount(v []byte, dst *uint64) error {
	if json.Unmarshal(v, dst) == nil {
		return nil
	}
	var f float64
	if err := json.Unmarshal(v, &f); err != nil {
		return err
	}
	if f < 0 || f > 1<<53 || f != math.Trunc(f) {
		return &json.UnmarshalTypeError{Value: string(v), Field: "usage"}
	}
	*dst = uint64(f)
	return nil
}
