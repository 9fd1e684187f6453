package replication

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
)

// relation is a cached pgoutput Relation message for the synced table.
type relation struct {
	cols   []int  // relation column index -> synced column index, or -1
	absent uint64 // synced columns the relation lacks (unpublished, renamed or dropped)
}

// decoder turns pgoutput Insert/Update/Delete messages of the synced table
// into sink changes. Values are copied straight from the tuple (binary or
// text, as the table's format asked the walsender for) into the batch's
// memory; nothing else is allocated per change.
type decoder struct {
	table *schema.Table
	want  byte // tuple value kind of the table's format: 'b' binary, 't' text
	log   *slog.Logger
	rels  map[uint32]*relation // only the synced table's relation IDs
	warns map[string]bool      // extra columns already warned about
}

func newDecoder(t *schema.Table, log *slog.Logger) *decoder {
	want := byte('t')
	if t.Format == schema.Binary {
		want = 'b'
	}
	return &decoder{table: t, want: want, log: log, rels: map[uint32]*relation{}, warns: map[string]bool{}}
}

// errTuple marks a message whose shape does not match its relation.
var errTuple = errors.New("malformed tuple")

// relation caches a Relation message. Relations of other tables (if the
// publication holds more) are ignored, as are published columns that are not
// synced; a synced column that is not published stops the stream.
func (d *decoder) relation(m *pglogrepl.RelationMessage) error {
	if m.Namespace != d.table.Schema || m.RelationName != d.table.Name {
		delete(d.rels, m.RelationID)
		return nil
	}
	byName := make(map[string]int, len(d.table.Columns))
	for i, c := range d.table.Columns {
		byName[c.Name] = i
	}
	r := &relation{cols: make([]int, len(m.Columns))}
	seen := make([]bool, len(d.table.Columns))
	for i, c := range m.Columns {
		idx, ok := byName[c.Name]
		if !ok {
			r.cols[i] = -1
			if !d.warns[c.Name] {
				d.warns[c.Name] = true
				d.log.Warn("ignoring a published column that is not in SYNC_COLUMNS", "column", ident.Display(c.Name))
			}
			continue
		}
		if c.DataType != d.table.Columns[idx].TypeOID {
			return fmt.Errorf("column %s changed type on the source (type oid %d, was %d, %s): update the chat column to match and restart",
				ident.Display(c.Name), c.DataType, d.table.Columns[idx].TypeOID, d.table.Columns[idx].Display)
		}
		r.cols[i] = idx
		seen[idx] = true
	}
	var absent []string
	for i, ok := range seen {
		if ok {
			continue
		}
		if d.table.IsKey(i) {
			return fmt.Errorf("key column %s is not published by the source any more (renamed or unpublished): run cdc migrate", ident.Display(d.table.Columns[i].Name))
		}
		r.absent |= 1 << i
		absent = append(absent, d.table.Columns[i].Name)
	}
	if len(absent) > 0 {
		// Changes still arrive, without these columns: they are kept as
		// they are in chat (like unchanged TOASTed values) until the watch
		// (watch.go) restores the publication or follows the change, and
		// the repair that follows brings them up to date.
		d.log.Warn("the source's stream no longer carries some synced columns (unpublished, renamed or dropped); their chat values are kept until cdc restores the publication or follows the change",
			"columns", ident.DisplayList(absent))
	}
	d.rels[m.RelationID] = r
	return nil
}

// change decodes an 'I', 'U' or 'D' message into b. It reports false when
// the message belongs to another table.
func (d *decoder) change(msg []byte, b *change.Batch, lsn pglogrepl.LSN, commitTime time.Time) (bool, error) {
	if len(msg) < 6 {
		return false, errTuple
	}
	op, relID, rest := msg[0], binary.BigEndian.Uint32(msg[1:5]), msg[5:]
	rel, ok := d.rels[relID]
	if !ok {
		return false, nil
	}
	switch op {
	case 'I':
		vals, unchanged, _, err := d.tuple(rest, 'N', rel, b)
		if err != nil {
			return true, err
		}
		b.Add(change.Change{Op: change.OpUpsert, Values: vals, Unchanged: unchanged, LSN: lsn, CommitTime: commitTime})
	case 'U':
		var old [][]byte
		if len(rest) > 0 && (rest[0] == 'K' || rest[0] == 'O') {
			var err error
			old, _, rest, err = d.tuple(rest, rest[0], rel, b)
			if err != nil {
				return true, err
			}
		}
		vals, unchanged, _, err := d.tuple(rest, 'N', rel, b)
		if err != nil {
			return true, err
		}
		if old != nil && !d.sameKey(old, vals) {
			// The key itself changed: the old row goes away.
			b.Add(change.Change{Op: change.OpDelete, Values: old, LSN: lsn, CommitTime: commitTime})
		}
		b.Add(change.Change{Op: change.OpUpsert, Values: vals, Unchanged: unchanged, LSN: lsn, CommitTime: commitTime})
	case 'D':
		if len(rest) == 0 {
			return true, errTuple
		}
		vals, _, _, err := d.tuple(rest, rest[0], rel, b)
		if err != nil {
			return true, err
		}
		b.Add(change.Change{Op: change.OpDelete, Values: vals, LSN: lsn, CommitTime: commitTime})
	default:
		return false, fmt.Errorf("unexpected message type %q", op)
	}
	return true, nil
}

// tuple reads one TupleData introduced by the byte want ('N', 'K' or 'O').
// It returns the synced columns' values, the set of columns sent as
// unchanged TOAST, and the rest of msg.
func (d *decoder) tuple(msg []byte, want byte, rel *relation, b *change.Batch) (vals [][]byte, unchanged uint64, rest []byte, err error) {
	if len(msg) < 3 || msg[0] != want {
		return nil, 0, nil, fmt.Errorf("%w: expected tuple %q", errTuple, want)
	}
	unchanged = rel.absent
	n := int(binary.BigEndian.Uint16(msg[1:3]))
	if n != len(rel.cols) {
		return nil, 0, nil, fmt.Errorf("%w: %d columns, relation has %d", errTuple, n, len(rel.cols))
	}
	msg = msg[3:]
	vals = b.NewValues()
	for i := 0; i < n; i++ {
		if len(msg) < 1 {
			return nil, 0, nil, errTuple
		}
		kind := msg[0]
		msg = msg[1:]
		col := rel.cols[i]
		switch kind {
		case 'n':
		case 'u':
			if col >= 0 {
				unchanged |= 1 << col
			}
		case 'b', 't':
			if len(msg) < 4 {
				return nil, 0, nil, errTuple
			}
			l := int(binary.BigEndian.Uint32(msg))
			if l < 0 || len(msg) < 4+l {
				return nil, 0, nil, errTuple
			}
			if col >= 0 {
				if kind != d.want {
					return nil, 0, nil, fmt.Errorf("column %s arrived in %s format, not %s as requested", ident.Display(d.table.Columns[col].Name), formatName(kind), d.table.Format)
				}
				vals[col] = b.Copy(msg[4 : 4+l])
			}
			msg = msg[4+l:]
		default:
			return nil, 0, nil, fmt.Errorf("%w: column kind %q", errTuple, kind)
		}
	}
	for _, k := range d.table.Key {
		if vals[k] == nil {
			return nil, 0, nil, fmt.Errorf("%w: key column %s is NULL", errTuple, ident.Display(d.table.Columns[k].Name))
		}
	}
	return vals, unchanged, msg, nil
}

// sameKey reports whether two rows have the same key.
func (d *decoder) sameKey(a, b [][]byte) bool {
	for _, k := range d.table.Key {
		if !bytes.Equal(a[k], b[k]) {
			return false
		}
	}
	return true
}

func formatName(kind byte) string {
	if kind == 'b' {
		return "binary"
	}
	return "text"
}
