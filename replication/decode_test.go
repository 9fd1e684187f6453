package replication

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
)

var testTable = &schema.Table{Table: ident.Table{Schema: "public", Name: "users"}, Key: []int{0}, UpdatedAt: 2, Format: schema.Binary, Columns: []schema.Column{
	{Name: "id", TypeOID: 2950}, {Name: "name", TypeOID: 25}, {Name: "updated_at", TypeOID: 1184}, {Name: "pic", TypeOID: 25},
}}

func newTestDecoder(t *testing.T) *decoder {
	d := newDecoder(testTable, slog.New(slog.NewTextHandler(io.Discard, nil)))
	// The source has an extra column "secretless" between name and pic.
	rel := &pglogrepl.RelationMessage{RelationID: 7, Namespace: "public", RelationName: "users", Columns: []*pglogrepl.RelationMessageColumn{
		{Name: "id", DataType: 2950}, {Name: "name", DataType: 25}, {Name: "extra", DataType: 23}, {Name: "updated_at", DataType: 1184}, {Name: "pic", DataType: 25},
	}}
	if err := d.relation(rel); err != nil {
		t.Fatal(err)
	}
	return d
}

// col is one TupleData column: kind 'b', 't', 'n' or 'u'.
type col struct {
	kind byte
	data string
}

func tuple(tag byte, cols ...col) []byte {
	out := []byte{tag}
	out = binary.BigEndian.AppendUint16(out, uint16(len(cols)))
	for _, c := range cols {
		out = append(out, c.kind)
		if c.kind == 'b' || c.kind == 't' {
			out = binary.BigEndian.AppendUint32(out, uint32(len(c.data)))
			out = append(out, c.data...)
		}
	}
	return out
}

func msg(op byte, parts ...[]byte) []byte {
	out := []byte{op}
	out = binary.BigEndian.AppendUint32(out, 7)
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func b(s string) col { return col{'b', s} }

var null, unchanged = col{kind: 'n'}, col{kind: 'u'}

func TestDecoder_Change(t *testing.T) {
	d := newTestDecoder(t)
	batch := change.NewBatch(len(testTable.Columns), testTable.Key)
	add := func(m []byte) {
		t.Helper()
		ours, err := d.change(m, batch, 0x10, testTime)
		if err != nil || !ours {
			t.Fatalf("change: ours=%v err=%v", ours, err)
		}
	}
	add(msg('I', tuple('N', b("k1"), b("Ann"), b("42"), b("T1"), null)))
	add(msg('I', tuple('N', b("k2"), b(""), null, b("T1"), b("pic2"))))
	add(msg('U', tuple('N', b("k2"), b("Bob"), null, b("T2"), unchanged)))
	add(msg('U', tuple('K', b("k1"), null, null, null, null), tuple('N', b("k9"), b("Ann"), null, b("T3"), null)))
	add(msg('D', tuple('K', b("k3"), null, null, null, null)))

	got := map[string]change.Change{}
	for _, c := range batch.Changes() {
		got[string(c.Values[0])] = c
	}
	if c := got["k2"]; c.Op != change.OpUpsert || string(c.Values[1]) != "Bob" || string(c.Values[3]) != "pic2" || c.Unchanged != 0 {
		t.Errorf("k2: update with an unchanged TOAST column should inherit the inserted value: %q unchanged=%b", c.Values, c.Unchanged)
	}
	if c := got["k1"]; c.Op != change.OpDelete {
		t.Errorf("k1: a key change deletes the old key, got %v", c.Op)
	}
	if c := got["k9"]; c.Op != change.OpUpsert || c.Values[3] != nil {
		t.Errorf("k9: %v %q", c.Op, c.Values)
	}
	if c := got["k3"]; c.Op != change.OpDelete || c.LSN != 0x10 {
		t.Errorf("k3: %v lsn %s", c.Op, c.LSN)
	}
	// An empty string is a value, not NULL.
	batch.Reset()
	add(msg('I', tuple('N', b("k4"), b(""), null, null, unchanged)))
	c := batch.Changes()[0]
	if c.Values[1] == nil || c.Values[2] != nil || c.Unchanged != 1<<3 {
		t.Errorf("empty vs NULL vs unchanged: %q unchanged=%b", c.Values, c.Unchanged)
	}
}

func TestDecoder_Rejects(t *testing.T) {
	cases := map[string][]byte{
		"short message":     {'I', 0, 0},
		"wrong tuple tag":   msg('I', tuple('X', b("k"), b("a"), null, null, null)),
		"column count":      msg('I', tuple('N', b("k"), b("a"))),
		"text format value": msg('I', tuple('N', b("k"), col{'t', "a"}, null, null, null)),
		"null key":          msg('I', tuple('N', null, b("a"), null, null, null)),
		"length past end":   append(msg('I', tuple('N', b("k"), b("a"), null, null))[:12], 0, 0, 0, 99),
	}
	for name, m := range cases {
		t.Run(name, func(t *testing.T) {
			d := newTestDecoder(t)
			_, err := d.change(m, change.NewBatch(len(testTable.Columns), []int{0}), 1, testTime)
			if err == nil {
				t.Fatal("accepted a malformed message")
			}
		})
	}
}

func TestDecoder_OtherRelationIsIgnored(t *testing.T) {
	d := newTestDecoder(t)
	m := msg('I', tuple('N', b("k"), b("a"), null, null, null))
	binary.BigEndian.PutUint32(m[1:], 99)
	ours, err := d.change(m, change.NewBatch(len(testTable.Columns), []int{0}), 1, testTime)
	if ours || err != nil {
		t.Fatalf("ours=%v err=%v", ours, err)
	}
}

// TestDecoder_RelationWithoutSomeSyncedColumns: a relation that lacks a
// synced column (unpublished, renamed, dropped) does not stop the stream:
// its changes arrive with that column left unchanged; without the key, or
// with a synced column of another type, the stream stops.
func TestDecoder_RelationWithoutSomeSyncedColumns(t *testing.T) {
	d := newDecoder(testTable, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.relation(&pglogrepl.RelationMessage{RelationID: 7, Namespace: "public", RelationName: "users",
		Columns: []*pglogrepl.RelationMessageColumn{{Name: "id", DataType: 2950}, {Name: "name", DataType: 25}}}); err != nil {
		t.Fatalf("a relation lacking synced columns stopped the stream: %v", err)
	}
	batch := change.NewBatch(len(testTable.Columns), []int{0})
	if _, err := d.change(msg('I', tuple('N', b("k1"), b("Ann"))), batch, 1, testTime); err != nil {
		t.Fatal(err)
	}
	c := batch.Changes()[0]
	if want := uint64(1<<2 | 1<<3); c.Unchanged != want || string(c.Values[1]) != "Ann" {
		t.Fatalf("unchanged %b, want %b (updated_at and pic kept in chat); values %q", c.Unchanged, want, c.Values)
	}
	if err := d.relation(&pglogrepl.RelationMessage{RelationID: 8, Namespace: "public", RelationName: "users",
		Columns: []*pglogrepl.RelationMessageColumn{{Name: "name", DataType: 25}, {Name: "updated_at", DataType: 1184}, {Name: "pic", DataType: 25}}}); err == nil {
		t.Fatal("a relation without the key must stop the stream")
	}
	err := d.relation(&pglogrepl.RelationMessage{RelationID: 7, Namespace: "public", RelationName: "users",
		Columns: []*pglogrepl.RelationMessageColumn{{Name: "id", DataType: 2950}, {Name: "name", DataType: 23}, {Name: "updated_at", DataType: 1184}, {Name: "pic", DataType: 25}}})
	if err == nil {
		t.Fatal("a synced column whose type changed must stop the stream")
	}
}

// FuzzDecoder_Change feeds arbitrary bytes: decoding may fail, never panic,
// and a decoded change always carries a key.
func FuzzDecoder_Change(f *testing.F) {
	f.Add(msg('I', tuple('N', b("k1"), b("Ann"), b("42"), b("T1"), null)))
	f.Add(msg('U', tuple('K', b("k1"), null, null, null, null), tuple('N', b("k9"), b("Ann"), null, b("T3"), unchanged)))
	f.Add(msg('D', tuple('K', b("k3"), null, null, null, null)))
	f.Fuzz(func(t *testing.T, m []byte) {
		d := newTestDecoder(&testing.T{})
		batch := change.NewBatch(len(testTable.Columns), []int{0})
		_, err := d.change(m, batch, 1, testTime)
		if err != nil && errors.Is(err, errTuple) {
			return
		}
		for _, c := range batch.Changes() {
			if c.Values[0] == nil {
				t.Fatal("change without key")
			}
		}
	})
}

var testTime = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
