package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	pmproto "github.com/profilemate/profilemate/proto"
)

// DefaultMaxLine caps one socket line; longer lines are rejected and skipped without buffering.
const DefaultMaxLine = 4 << 20

// errLineTooLong is returned (once per oversized line) after the rest of the line was discarded.
var errLineTooLong = errors.New("line too long")

// errLineOverBudget is returned (once per line) when a line longer than the read buffer could not
// be held because every connection's partial lines together reached the agent's budget.
var errLineOverBudget = errors.New("line over the agent's buffer budget")

// lineReader reads newline-terminated lines of at most max bytes. An oversized line is discarded
// chunk by chunk, so a 10 MB line costs the buffer size in memory, not 10 MB. A line longer than
// the read buffer takes its bytes from budget (when set) while it is incomplete.
type lineReader struct {
	r      *bufio.Reader
	max    int
	buf    []byte
	budget *byteBudget
	held   int64 // taken from budget for the line being read
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// next returns the next line without its newline. The slice is valid until the next call.
// A final line without a newline is a truncated line: it is reported as an error.
func (l *lineReader) next() ([]byte, error) {
	l.release()
	for {
		chunk, err := l.r.ReadSlice('\n')
		over := len(l.buf)+len(chunk) > l.max+1
		if need := len(l.buf) + len(chunk); !over && need > cap(l.buf) && need > l.r.Size() {
			// A long line: grow the buffer here so the budget counts what it really holds.
			newCap := min(max(need, 2*cap(l.buf)), l.max+1)
			if !l.budget.take(int64(newCap - cap(l.buf))) {
				n := need
				l.close()
				for errors.Is(err, bufio.ErrBufferFull) {
					chunk, err = l.r.ReadSlice('\n')
					n += len(chunk)
				}
				if err != nil {
					return nil, err
				}
				return nil, fmt.Errorf("%w: %d bytes", errLineOverBudget, n)
			}
			l.held += int64(newCap - cap(l.buf))
			nb := make([]byte, len(l.buf), newCap)
			copy(nb, l.buf)
			l.buf = nb
		}
		if over {
			n := len(l.buf) + len(chunk)
			l.close()
			for errors.Is(err, bufio.ErrBufferFull) {
				chunk, err = l.r.ReadSlice('\n')
				n += len(chunk)
			}
			if err != nil {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %d bytes or more (limit %d)", errLineTooLong, n, l.max)
		}
		l.buf = append(l.buf, chunk...)
		switch {
		case err == nil:
			return l.buf[:len(l.buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(l.buf) > 0:
			return nil, fmt.Errorf("%w: truncated last line (%d bytes, no newline)", pmproto.ErrBadLine, len(l.buf))
		default:
			return nil, err
		}
	}
}

// release returns the budget the last line took and lets a large line buffer go, so an idle
// connection holds only its read buffer.
func (l *lineReader) release() {
	if cap(l.buf) > 256<<10 {
		l.budget.give(l.held)
		l.held = 0
		l.buf = nil
	}
	l.buf = l.buf[:0]
}

// close returns what the reader holds to the budget and lets its buffer go (also used to drop a
// discarded line's buffer).
func (l *lineReader) close() {
	l.budget.give(l.held)
	l.held, l.buf = 0, nil
}

// lineBuffered reports whether a whole line is already in the read buffer, so the next call to
// next returns without waiting for the socket.
func (l *lineReader) lineBuffered() bool {
	n := l.r.Buffered()
	if n == 0 {
		return false
	}
	b, _ := l.r.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}
