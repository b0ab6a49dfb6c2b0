package agent

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	pmproto "github.com/profilemate/profilemate/proto"
)

// DefaultMaxLine caps one socket line; longer lines are rejected and skipped without buffering.
const DefaultMaxLine = 4 << 20

// errLineTooLong is returned (once per oversized line) after the rest of the line was discarded.
var errLineTooLong = errors.New("line too long")

// lineReader reads newline-terminated lines of at most max bytes. An oversized line is discarded
// chunk by chunk, so a 10 MB line costs the buffer size in memory, not 10 MB.
type lineReader struct {
	r   *bufio.Reader
	max int
	buf []byte
}

func newLineReader(r io.Reader, max int) *lineReader {
	return &lineReader{r: bufio.NewReaderSize(r, 64<<10), max: max}
}

// next returns the next line without its newline. The slice is valid until the next call.
// A final line without a newline is a truncated line: it is reported as an error.
func (l *lineReader) next() ([]byte, error) {
	l.buf = l.buf[:0]
	for {
		chunk, err := l.r.ReadSlice('\n')
		if len(l.buf)+len(chunk) > l.max+1 {
			n := len(l.buf) + len(chunk)
			l.buf = l.buf[:0]
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
