package spotinfer

/*
#include <spotinfer/spotinfer.h>
*/
import "C"

import "fmt"

// Error is a failed libspotinfer call: the status code (a negative value of
// enum spi_status), the library's message from the handle the call was made
// on, and the C function (Op).
type Error struct {
	Code    int
	Message string
	Op      string
}

// Error formats as "op: status name: message (code)".
func (e *Error) Error() string {
	s := StatusText(e.Code)
	if e.Op != "" {
		s = e.Op + ": " + s
	}
	if e.Message != "" && e.Message != StatusText(e.Code) {
		s += ": " + e.Message
	}
	return fmt.Sprintf("%s (%d)", s, e.Code)
}

// Is reports whether target is an *Error with the same code, so that
// errors.Is(err, spotinfer.ErrShed) works whatever the message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Status codes (enum spi_status).
const (
	StatusOK         = 0
	StatusInvalid    = -1
	StatusMisuse     = -2
	StatusRange      = -3
	StatusBufSize    = -4
	StatusParse      = -20
	StatusType       = -21
	StatusUnknown    = -22
	StatusMissing    = -23
	StatusTooBig     = -24
	StatusNoMem      = -40
	StatusIO         = -41
	StatusNotFound   = -42
	StatusExist      = -43
	StatusStale      = -44
	StatusFull       = -45
	StatusModule     = -60
	StatusABI        = -61
	StatusNotSup     = -62
	StatusShed       = -80
	StatusNoCapacity = -81
)

func sentinel(code int) *Error { return &Error{Code: code} }

// Sentinels for errors.Is; they match any *Error with the same code.
var (
	ErrInvalid    = sentinel(StatusInvalid)    // an argument is invalid
	ErrMisuse     = sentinel(StatusMisuse)     // freed or foreign handle, closed object
	ErrRange      = sentinel(StatusRange)      // a number out of its range
	ErrBufSize    = sentinel(StatusBufSize)    // an output buffer too small
	ErrParse      = sentinel(StatusParse)      // malformed JSON or text
	ErrType       = sentinel(StatusType)       // a value of the wrong type
	ErrUnknown    = sentinel(StatusUnknown)    // an unknown key or name
	ErrMissing    = sentinel(StatusMissing)    // a required field is missing
	ErrTooBig     = sentinel(StatusTooBig)     // input over a configured limit
	ErrNoMem      = sentinel(StatusNoMem)      // the allocator failed
	ErrIO         = sentinel(StatusIO)         // a file could not be read
	ErrNotFound   = sentinel(StatusNotFound)   // no such module, option or item
	ErrExist      = sentinel(StatusExist)      // a module of that name exists
	ErrStale      = sentinel(StatusStale)      // ticket or replica gone
	ErrFull       = sentinel(StatusFull)       // a bounded table is full
	ErrModule     = sentinel(StatusModule)     // a module failed
	ErrABI        = sentinel(StatusABI)        // unsupported module ABI
	ErrNotSup     = sentinel(StatusNotSup)     // not supported
	ErrShed       = sentinel(StatusShed)       // shed under pressure: HTTP 429
	ErrNoCapacity = sentinel(StatusNoCapacity) // nothing can serve it: HTTP 503
)

// StatusText is the library's short description of any status integer
// (spi_strerror), "unknown status" for values it does not know.
func StatusText(code int) string {
	return C.GoString(C.spi_strerror(C.int(code)))
}

func newError(rc C.int, op, msg string) error {
	return &Error{Code: int(rc), Message: msg, Op: op}
}

func closedError(op, what string) error {
	return &Error{Code: StatusMisuse, Message: "the " + what + " is closed", Op: op}
}
