package replication

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
)

// readAll replays a spool's messages as strings.
func readAll(t *testing.T, s *spool) []string {
	t.Helper()
	rd, err := s.replay()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m, err := rd.next()
		if errors.Is(err, io.EOF) {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(m))
	}
}

// TestSpool_SubtransactionAbortsInMemoryAndInAFile writes a transaction
// with subtransactions, aborts some, and reads back exactly the rest, with
// the spool in memory and moved to a file part way (a limit of 40 bytes).
func TestSpool_SubtransactionAbortsInMemoryAndInAFile(t *testing.T) {
	for _, limit := range []int{spoolMemory, 40} {
		t.Run(fmt.Sprint("limit ", limit), func(t *testing.T) {
			dir := t.TempDir()
			s := newSpool(100, dir)
			s.limit = limit
			add := func(xid uint32, body string) {
				t.Helper()
				if err := s.add(xid, 'I', []byte(body)); err != nil {
					t.Fatal(err)
				}
			}
			add(100, "top 1")
			add(101, "sub 101 a") // SAVEPOINT a
			add(102, "sub 102")   // SAVEPOINT b, inside a
			abort := func(sub uint32) {
				t.Helper()
				if err := s.abortSub(sub); err != nil {
					t.Fatal(err)
				}
			}
			abort(102)            // ROLLBACK TO b
			add(101, "sub 101 b") // a writes on
			add(100, "top 2")     // RELEASE a
			add(105, "sub 105")   // SAVEPOINT c
			add(106, "sub 106")   // SAVEPOINT d, inside c
			add(105, "sub 105 b") // RELEASE d
			abort(105)            // ROLLBACK TO c: d's changes go with it
			abort(999)            // a subtransaction that wrote nothing
			add(107, "sub 107 kept")
			got := readAll(t, s)
			want := []string{"Itop 1", "Isub 101 a", "Isub 101 b", "Itop 2", "Isub 107 kept"}
			if !slices.Equal(got, want) {
				t.Fatalf("replayed %q, want %q", got, want)
			}
			if (s.file != nil) != (limit == 40) {
				t.Errorf("file in use = %t with a limit of %d bytes", s.file != nil, limit)
			}
			s.close()
			left, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(left) != 0 {
				t.Errorf("files left in the spool directory after close: %v", left)
			}
		})
	}
}

// TestSpool_RefusesAnUnwritableDirectory: the error names SPOOL_DIR.
func TestSpool_RefusesAnUnwritableDirectory(t *testing.T) {
	s := newSpool(7, "/nonexistent/spool")
	s.limit = 1
	err := s.add(7, 'I', []byte("row"))
	if err == nil || !strings.Contains(err.Error(), "SPOOL_DIR") {
		t.Fatalf("add into a missing directory: %v, want an error naming SPOOL_DIR", err)
	}
}
