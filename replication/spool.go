package replication

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// spoolMemory is how many bytes of a streamed transaction's messages a
// spool keeps in memory before it moves them to a temporary file.
const spoolMemory = 1 << 20

// spool keeps the messages of one source transaction that the walsender
// streams before it commits (pgoutput protocol 2), until its stream commit
// or abort: in memory up to a bound, then in a temporary file. It follows
// PostgreSQL's own apply worker: a subtransaction's abort truncates the
// spool to that subtransaction's first message, which is correct because
// everything after it belongs to it or to its own subtransactions.
type spool struct {
	xid   uint32 // the top-level transaction
	dir   string // where the file goes ("" = the system's temporary directory)
	limit int    // bytes kept in memory before moving to a file

	mem  bytes.Buffer // the records, until they pass limit
	file *os.File     // then the records, here
	w    *bufio.Writer
	size int64 // bytes of records, in mem or file

	subs map[uint32]int64 // first record offset of each subtransaction seen
}

func newSpool(xid uint32, dir string) *spool {
	return &spool{xid: xid, dir: dir, limit: spoolMemory, subs: map[uint32]int64{}}
}

// add appends a message of (sub)transaction xid: kind and body are the
// message without the xid the protocol puts after its kind, so it replays
// as a protocol 1 message.
func (s *spool) add(xid uint32, kind byte, body []byte) error {
	if _, seen := s.subs[xid]; !seen && xid != s.xid {
		s.subs[xid] = s.size
	}
	var hdr [binary.MaxVarintLen64 + 1]byte
	n := binary.PutUvarint(hdr[:], uint64(len(body)+1))
	hdr[n] = kind
	n++
	if s.file == nil && s.mem.Len()+n+len(body) > s.limit {
		if err := s.toFile(); err != nil {
			return err
		}
	}
	var w io.Writer = &s.mem
	if s.file != nil {
		w = s.w
	}
	if _, err := w.Write(hdr[:n]); err != nil {
		return fmt.Errorf("spool streamed transaction %d: %w", s.xid, err)
	}
	if _, err := w.Write(body); err != nil {
		return fmt.Errorf("spool streamed transaction %d: %w", s.xid, err)
	}
	s.size += int64(n + len(body))
	return nil
}

// toFile moves the records to a new temporary file. On systems that allow
// it the file is unlinked at once, so a crash leaves nothing behind.
func (s *spool) toFile() error {
	f, err := os.CreateTemp(s.dir, fmt.Sprintf("cdc-xact-%d-*", s.xid))
	if err != nil {
		return fmt.Errorf("spool streamed transaction %d to a file (SPOOL_DIR): %w", s.xid, err)
	}
	_ = os.Remove(f.Name()) // fails on Windows while open; close removes it there
	s.file, s.w = f, bufio.NewWriterSize(f, 64<<10)
	if _, err := s.w.Write(s.mem.Bytes()); err != nil {
		return fmt.Errorf("spool streamed transaction %d: %w", s.xid, err)
	}
	s.mem = bytes.Buffer{}
	return nil
}

// abortSub drops what subtransaction sub wrote (and its subtransactions).
func (s *spool) abortSub(sub uint32) error {
	off, ok := s.subs[sub]
	if !ok {
		return nil // it wrote nothing this stream carries
	}
	for x, o := range s.subs {
		if o >= off {
			delete(s.subs, x)
		}
	}
	s.size = off
	if s.file == nil {
		s.mem.Truncate(int(off))
		return nil
	}
	if err := s.w.Flush(); err != nil {
		return fmt.Errorf("spool streamed transaction %d: %w", s.xid, err)
	}
	if err := s.file.Truncate(off); err != nil {
		return fmt.Errorf("drop an aborted subtransaction of streamed transaction %d: %w", s.xid, err)
	}
	if _, err := s.file.Seek(off, io.SeekStart); err != nil {
		return fmt.Errorf("drop an aborted subtransaction of streamed transaction %d: %w", s.xid, err)
	}
	s.w.Reset(s.file)
	return nil
}

// replay returns a reader of the records from the first; add must not be
// called after it.
func (s *spool) replay() (*spoolReader, error) {
	if s.file == nil {
		return &spoolReader{r: bufio.NewReader(bytes.NewReader(s.mem.Bytes()))}, nil
	}
	if err := s.w.Flush(); err != nil {
		return nil, fmt.Errorf("spool streamed transaction %d: %w", s.xid, err)
	}
	if _, err := s.file.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("read back streamed transaction %d: %w", s.xid, err)
	}
	return &spoolReader{r: bufio.NewReaderSize(s.file, 64<<10)}, nil
}

// close drops the spool and its file.
func (s *spool) close() {
	if s.file != nil {
		_ = s.file.Close()
		_ = os.Remove(s.file.Name())
		s.file = nil
	}
	s.mem = bytes.Buffer{}
}

// spoolReader reads a spool's records back in order.
type spoolReader struct {
	r   *bufio.Reader
	buf []byte
}

// next returns the next message (valid until the next call), or io.EOF.
func (sr *spoolReader) next() ([]byte, error) {
	n, err := binary.ReadUvarint(sr.r)
	if err != nil {
		return nil, err // io.EOF at the end
	}
	if cap(sr.buf) < int(n) {
		sr.buf = make([]byte, n)
	}
	sr.buf = sr.buf[:n]
	if _, err := io.ReadFull(sr.r, sr.buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF // a record cut short is no end
		}
		return nil, fmt.Errorf("read back a streamed transaction: %w", err)
	}
	return sr.buf, nil
}
