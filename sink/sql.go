package sink

import (
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/schema"
)

// The sink's statements pass a batch's rows as one array parameter per
// column, unnested into rows. In binary format each array has the chat
// column's (base) type; in text format every array is text[] and each
// value is cast to its column's type on chat, so arrays, composites and
// user-defined types of any kind travel as their text form. The arrays are
// always sent in binary: a text[] carries only the built-in text OID, the
// same on every cluster.

// preparedSQL is a statement prepared once per writer connection.
type preparedSQL struct {
	text string
	oids []uint32
}

// statementSQL is the SQL the sink runs against the chat table.
type statementSQL struct {
	createStage  string      // the writer connection's staging table
	upsertStaged preparedSQL // from the staging table
	upsert       preparedSQL // all synced columns as arrays, unnested
	delete       preparedSQL // key arrays
	checkpoint   preparedSQL
	truncate     string
	lock         string // the writer lock, held until the transaction ends
	// streamLock is the first statement of a stream write: the writer lock,
	// generic plans for the transaction and, with asynchronous commits,
	// synchronous_commit=off for it and chat's WAL positions (durable.go).
	streamLock string
}

const (
	stmtUpsert       = "cdc_upsert"
	stmtUpsertStaged = "cdc_upsert_staged"
	stmtDelete       = "cdc_delete"
	stmtCheckpoint   = "cdc_checkpoint"
	stmtStreamLock   = "cdc_stream_lock"
)

// stageTable is the writer connection's temporary staging table.
const stageTable = "cdc_stage"

func buildSQL(t *schema.Table, slot string, async bool) statementSQL {
	from, sel, oids := keyed.Unnest(t, all(len(t.Columns)), 1)
	del, delOIDs := keyed.KeyMatch(t, "", 1)
	return statementSQL{
		createStage: fmt.Sprintf("DROP TABLE IF EXISTS pg_temp.%s; CREATE TEMP TABLE %s (%s) ON COMMIT DELETE ROWS",
			stageTable, stageTable, stageColumns(t)),
		upsertStaged: preparedSQL{text: fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM pg_temp.%s s %s",
			t.Ident(), t.ColumnList(), strings.Join(fromStage(t, "s"), ", "), stageTable, onConflict(t))},
		upsert: preparedSQL{
			text: fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s %s", t.Ident(), t.ColumnList(), strings.Join(sel, ", "), from, onConflict(t)),
			oids: oids,
		},
		delete: preparedSQL{text: fmt.Sprintf("DELETE FROM %s WHERE %s", t.Ident(), del), oids: delOIDs},
		checkpoint: preparedSQL{
			text: `INSERT INTO cdc_checkpoint (slot_name, lsn, partial_xact_lsn, partial_changes, updated_at)
VALUES ($1, $2::pg_lsn, $3::pg_lsn, $4::bigint, now())
ON CONFLICT (slot_name) DO UPDATE SET lsn = EXCLUDED.lsn, partial_xact_lsn = EXCLUDED.partial_xact_lsn,
  partial_changes = EXCLUDED.partial_changes, updated_at = EXCLUDED.updated_at`,
		},
		truncate:   "DELETE FROM " + t.Ident(),
		lock:       WriterLock(slot),
		streamLock: streamLock(slot, async),
	}
}

// streamLock is statementSQL.streamLock, a prepared statement. It also
// makes the transaction's prepared statements use their generic plans:
// PostgreSQL would otherwise plan the upsert again for every batch of a few
// rows (a custom plan looks cheaper than the generic plan's 100-row guess),
// though the plan is the same either way. Together with preparing this
// statement, that cut the chat backend's CPU at 100 single-row changes/s by
// ~27 % (BENCHMARKS.md, session 10).
func streamLock(slot string, async bool) string {
	lock := WriterLock(slot) + ", set_config('plan_cache_mode', 'force_generic_plan', true)"
	if !async {
		return lock
	}
	return lock + ", set_config('synchronous_commit', 'off', true), " + walSQL
}

// onConflict is the upsert's conflict clause: every column that is not
// part of the key takes the new value.
func onConflict(t *schema.Table) string {
	var set []string
	for i, c := range t.Columns {
		if !t.IsKey(i) {
			set = append(set, fmt.Sprintf("%s = EXCLUDED.%s", schema.Quote(c.Name), schema.Quote(c.Name)))
		}
	}
	keys := "ON CONFLICT (" + strings.Join(quoteAll(t.KeyNames()), ", ") + ") "
	if len(set) == 0 {
		return keys + "DO NOTHING"
	}
	return keys + "DO UPDATE SET " + strings.Join(set, ", ")
}

func quoteAll(names []string) []string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = schema.Quote(n)
	}
	return out
}

// stageColumns declares a staging table's columns c0, c1, …: text in text
// format (chat casts them when it takes them in), the base types in binary
// format. Either way a staging table holds no constraint, so a value chat
// refuses fails the statement that takes it into the chat table, where it
// can be isolated.
func stageColumns(t *schema.Table) string {
	defs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		typ := c.Base.Name.Quoted()
		if t.Format == schema.Text {
			typ = "text"
		}
		defs[i] = fmt.Sprintf("c%d %s", i, typ)
	}
	return strings.Join(defs, ", ")
}

// stageNames is the list of a staging table's columns.
func stageNames(t *schema.Table) string {
	names := make([]string, len(t.Columns))
	for i := range names {
		names[i] = fmt.Sprintf("c%d", i)
	}
	return strings.Join(names, ", ")
}

// fromStage reads a staging table's columns (alias.c0, …) as the chat
// columns' types.
func fromStage(t *schema.Table, alias string) []string {
	out := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		out[i] = fmt.Sprintf("%s.c%d", alias, i)
		if t.Format == schema.Text {
			out[i] += "::" + c.Cast
		}
	}
	return out
}

// copyFormat is the COPY option of the table's format.
func copyFormat(t *schema.Table) string {
	if t.Format == schema.Text {
		return ""
	}
	return " (FORMAT binary)"
}

// WriterLock is the transaction-scoped advisory lock every chat write of a
// stream takes first (keyed by slot). Repairs take it before reading the
// source, so whatever they write is at least as new as anything already
// written, by this process or another one (cdc reconcile beside cdc run).
func WriterLock(slot string) string {
	h := fnv.New64a()
	h.Write([]byte("cdc writer " + slot))
	return fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", int64(h.Sum64()))
}

func (q statementSQL) prepared() map[string]preparedSQL {
	return map[string]preparedSQL{stmtUpsert: q.upsert, stmtUpsertStaged: q.upsertStaged, stmtDelete: q.delete, stmtCheckpoint: q.checkpoint,
		stmtStreamLock: {text: q.streamLock}}
}
