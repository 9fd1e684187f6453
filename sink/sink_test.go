package sink_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/sink"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// newSink returns a sink for p's chat table; onBatch, if given, sees each
// committed batch.
func newSink(t *testing.T, p *pgtest.Pair, onBatch ...func(change.BatchInfo)) *sink.Sink {
	t.Helper()
	_, tbl := p.Tables(t, nil)
	opts := sink.Options{
		Slot:   p.Slot,
		Retry:  retry.Policy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2, Loud: 3},
		Logger: quiet,
	}
	if len(onBatch) > 0 {
		opts.OnBatch = onBatch[0]
	}
	s := sink.New(p.Chat, tbl, opts)
	t.Cleanup(s.Close)
	return s
}

var typeMap = pgtype.NewMap()

// encode renders v in the binary format of the column's type.
func encode(t *testing.T, c schema.Column, v any) []byte {
	t.Helper()
	if v == nil {
		return nil
	}
	if s, ok := v.(string); ok && c.Base.Name.Name == "uuid" {
		var u pgtype.UUID
		if err := u.Scan(s); err != nil {
			t.Fatal(err)
		}
		v = u
	}
	b, err := typeMap.Encode(c.Base.OID, pgtype.BinaryFormatCode, v, nil)
	if err != nil {
		t.Fatalf("encode %v as %s: %v", v, c.Display, err)
	}
	return b
}

// user is a row of the reference chat table; empty strings are NULL.
type user struct {
	id, first, last, picture string
}

func (u user) change(t *testing.T, b *change.Batch, tbl *schema.Table, op change.Op) change.Change {
	t.Helper()
	v := b.NewValues()
	set := map[string]any{"id": u.id, "first_name": u.first, "last_name": u.last, "profile_picture": u.picture,
		"updated_at": time.Now(), "created_at": time.Now()}
	for i, c := range tbl.Columns {
		x, ok := set[c.Name]
		if !ok || x == "" || (op == change.OpDelete && c.Name != "id") {
			continue
		}
		v[i] = b.Copy(encode(t, c, x))
	}
	return change.Change{Op: op, Values: v, LSN: pglogrepl.LSN(0x1000)}
}

func uuidOf(i int) string { return fmt.Sprintf("00000000-0000-0000-0000-%012d", i) }

func count(t *testing.T, p *pgtest.Pair, where string) int {
	t.Helper()
	var n int
	if err := p.Chat.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE "+where).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSink_ApplyUpsertsDeletesAndCheckpoint(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	s := newSink(t, p)
	tbl := s.Table()
	b := change.NewBatch(len(tbl.Columns), tbl.Key)
	for i := 1; i <= 3; i++ {
		b.Add(user{id: uuidOf(i), first: fmt.Sprintf("n%d", i), last: "Ünïcode ✓"}.change(t, b, tbl, change.OpUpsert))
	}
	b.Checkpoint = change.Checkpoint{LSN: 0x10}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if n := count(t, p, "last_name = 'Ünïcode ✓'"); n != 3 {
		t.Fatalf("%d rows inserted, want 3", n)
	}
	b = change.NewBatch(len(tbl.Columns), tbl.Key)
	b.Add(user{id: uuidOf(1), first: "renamed"}.change(t, b, tbl, change.OpUpsert))
	b.Add(user{id: uuidOf(2)}.change(t, b, tbl, change.OpDelete))
	b.Checkpoint = change.Checkpoint{LSN: 0x20, PartialXact: 0x30, PartialChanges: 5}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if n := count(t, p, "first_name = 'renamed' AND last_name IS NULL"); n != 1 {
		t.Fatalf("update not applied (NULL last_name): %d", n)
	}
	if n := count(t, p, "true"); n != 2 {
		t.Fatalf("%d rows after delete, want 2", n)
	}
	cp, ok, err := s.Checkpoint(ctx)
	if err != nil || !ok || cp != (change.Checkpoint{LSN: 0x20, PartialXact: 0x30, PartialChanges: 5}) {
		t.Fatalf("checkpoint %+v ok=%v err=%v", cp, ok, err)
	}
	if got := s.Stats.Upserts.Load(); got != 4 {
		t.Errorf("upserts counted %d, want 4", got)
	}
}

func TestSink_PoisonRowGoesToSyncErrorsAndTheRestCommits(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	pgtest.Exec(t, p.Chat, `ALTER TABLE users ADD CONSTRAINT no_poison CHECK (first_name <> 'poison')`)
	s := newSink(t, p)
	tbl := s.Table()
	b := change.NewBatch(len(tbl.Columns), tbl.Key)
	for i := 1; i <= 100; i++ {
		name := fmt.Sprintf("ok%d", i)
		if i == 57 {
			name = "poison"
		}
		b.Add(user{id: uuidOf(i), first: name}.change(t, b, tbl, change.OpUpsert))
	}
	b.Checkpoint = change.Checkpoint{LSN: 0x40}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatalf("a poison row must not fail the batch: %v", err)
	}
	if n := count(t, p, "true"); n != 99 {
		t.Fatalf("%d rows committed, want 99", n)
	}
	var errType, userID, lsn string
	var payload []byte
	err := p.Chat.QueryRow(ctx, "SELECT error_type, user_id, payload, lsn::text FROM sync_errors").Scan(&errType, &userID, &payload, &lsn)
	if err != nil {
		t.Fatal(err)
	}
	var row map[string]any
	if err := json.Unmarshal(payload, &row); err != nil {
		t.Fatal(err)
	}
	if errType != "check_violation" || userID != uuidOf(57) || row["first_name"] != "poison" || row["id"] != uuidOf(57) || lsn != "0/1000" {
		t.Fatalf("dead letter: type %s user %s payload %s lsn %s", errType, userID, payload, lsn)
	}
	if cp, _, _ := s.Checkpoint(ctx); cp.LSN != 0x40 {
		t.Fatalf("checkpoint %s, want 0/40", cp.LSN)
	}
	if s.Stats.DeadLetters.Load() != 1 {
		t.Fatalf("dead letters counted %d", s.Stats.DeadLetters.Load())
	}
}

// TestSink_DeadLettersCountAttemptsAndResolveOnALaterWrite: a row refused
// twice keeps one open dead letter with two attempts; a later successful
// write of the same id resolves it in the same transaction, through the
// pipelined path, the staged (COPY) path and the careful path alike; a
// sink started later (another process) knows the open ids from the table.
func TestSink_DeadLettersCountAttemptsAndResolveOnALaterWrite(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	pgtest.Exec(t, p.Chat, `ALTER TABLE users ADD CONSTRAINT no_poison CHECK (first_name NOT LIKE 'poison%')`)
	s := newSink(t, p)
	tbl := s.Table()
	apply := func(lsn uint64, n int, names map[int]string) {
		t.Helper()
		b := change.NewBatch(len(tbl.Columns), tbl.Key)
		for i := 1; i <= n; i++ {
			name := fmt.Sprintf("ok%d-%d", i, lsn)
			if x, ok := names[i]; ok {
				name = x
			}
			b.Add(user{id: uuidOf(i), first: name}.change(t, b, tbl, change.OpUpsert))
		}
		b.Checkpoint = change.Checkpoint{LSN: pglogrepl.LSN(lsn)}
		if err := s.Apply(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	state := func() (open, resolved, attempts int) {
		t.Helper()
		err := p.Chat.QueryRow(ctx, `SELECT count(*) FILTER (WHERE NOT resolved), count(*) FILTER (WHERE resolved AND resolved_at IS NOT NULL),
COALESCE(max(attempts) FILTER (WHERE NOT resolved), 0) FROM sync_errors`).Scan(&open, &resolved, &attempts)
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	// Refused twice (careful path both times): one open row, 2 attempts.
	apply(0x10, 10, map[int]string{3: "poison-a", 7: "poison-b"})
	apply(0x20, 10, map[int]string{3: "poison-a2", 7: "poison-b2"})
	if open, resolved, attempts := state(); open != 2 || resolved != 0 || attempts != 2 {
		t.Fatalf("after two refusals: open %d, resolved %d, max attempts %d; want 2, 0, 2", open, resolved, attempts)
	}
	// Id 7 succeeds through the pipelined path; id 3 is refused again.
	apply(0x30, 10, map[int]string{3: "poison-a3"})
	if open, resolved, _ := state(); open != 1 || resolved != 1 {
		t.Fatalf("after id 7 succeeded: open %d, resolved %d; want 1, 1", open, resolved)
	}
	// A second sink (another process) learns the open id from the table,
	// and resolves it through the staged path (a batch of ≥ 1000 upserts).
	s.Close()
	s2 := newSink(t, p)
	b := change.NewBatch(len(tbl.Columns), tbl.Key)
	for i := 1; i <= 1500; i++ {
		b.Add(user{id: uuidOf(i), first: fmt.Sprintf("big%d", i)}.change(t, b, tbl, change.OpUpsert))
	}
	b.Checkpoint = change.Checkpoint{LSN: 0x40}
	if err := s2.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if open, resolved, _ := state(); open != 0 || resolved != 2 {
		t.Fatalf("after the staged batch: open %d, resolved %d; want 0, 2", open, resolved)
	}
	if s2.Stats.Resolved.Load() != 1 {
		t.Fatalf("second sink counted %d resolved ids, want 1", s2.Stats.Resolved.Load())
	}
}

func TestSink_PartialUpdateKeepsUnsentColumns(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	s := newSink(t, p)
	tbl := s.Table()
	b := change.NewBatch(len(tbl.Columns), tbl.Key)
	b.Add(user{id: uuidOf(1), first: "a", picture: "kept-picture"}.change(t, b, tbl, change.OpUpsert))
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	pic := -1
	for i, c := range tbl.Columns {
		if c.Name == "profile_picture" {
			pic = i
		}
	}
	b = change.NewBatch(len(tbl.Columns), tbl.Key)
	c := user{id: uuidOf(1), first: "b"}.change(t, b, tbl, change.OpUpsert)
	c.Unchanged = 1 << pic
	b.Add(c)
	missing := user{id: uuidOf(2), first: "ghost"}.change(t, b, tbl, change.OpUpsert)
	missing.Unchanged = 1 << pic
	b.Add(missing)
	b.Checkpoint = change.Checkpoint{LSN: 0x50}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if n := count(t, p, "first_name = 'b' AND profile_picture = 'kept-picture'"); n != 1 {
		t.Fatal("partial update lost the unsent column or did not apply")
	}
	if n := count(t, p, "first_name = 'ghost'"); n != 0 {
		t.Fatal("a partial row without a chat row must not be inserted with NULLs")
	}
	var errType string
	if err := p.Chat.QueryRow(ctx, "SELECT error_type FROM sync_errors WHERE user_id = $1", uuidOf(2)).Scan(&errType); err != nil || errType != "missing_row" {
		t.Fatalf("missing row not recorded: %q %v", errType, err)
	}
}

func TestSink_ReconnectsAfterItsConnectionIsKilled(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	s := newSink(t, p)
	tbl := s.Table()
	for round := 1; round <= 3; round++ {
		b := change.NewBatch(len(tbl.Columns), tbl.Key)
		b.Add(user{id: uuidOf(round), first: "r"}.change(t, b, tbl, change.OpUpsert))
		b.Checkpoint = change.Checkpoint{LSN: pglogrepl.LSN(round * 0x100)}
		if err := s.Apply(ctx, b); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		// Kill every cdc connection to chat; the sink must reconnect.
		var killed int
		if err := p.Chat.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'cdc' AND pid <> pg_backend_pid() AND state = 'idle' AND query LIKE '%cdc_checkpoint%'`).Scan(&killed); err != nil || killed != 1 {
			t.Fatalf("terminated %d writer connections (want 1): %v", killed, err)
		}
	}
	if n := count(t, p, "true"); n != 3 {
		t.Fatalf("%d rows, want 3", n)
	}
}

// copyParts returns two CopyOuts that together write every source row
// (split by id), each on its own source connection; fail, when set, makes
// the second one fail after writing its first rows.
func copyParts(t *testing.T, p *pgtest.Pair, fail bool) []change.CopyOut {
	t.Helper()
	var outs []change.CopyOut
	for i, where := range []string{"id < '80000000-0000-0000-0000-000000000000'", "id >= '80000000-0000-0000-0000-000000000000'"} {
		src, err := p.Source.Acquire(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(src.Release)
		sql := "COPY (SELECT id, first_name, last_name, email, phone, role, status, profile_picture, created_at, updated_at FROM users WHERE " + where + ") TO STDOUT (FORMAT binary)"
		outs = append(outs, func(ctx context.Context, w io.Writer) error {
			if fail && i == 1 {
				var buf bytes.Buffer
				if _, err := src.Conn().PgConn().CopyTo(ctx, &buf, sql); err != nil {
					return err
				}
				if _, err := w.Write(buf.Bytes()[:buf.Len()/2]); err != nil {
					return err
				}
				time.Sleep(500 * time.Millisecond) // the other part has committed by now
				return errors.New("source went away")
			}
			_, err := src.Conn().PgConn().CopyTo(ctx, w, sql)
			return err
		})
	}
	return outs
}

// loadAll loads every source row in two parts and checks the rows
// written, that chat equals the source and that lsn is the checkpoint.
func loadAll(t *testing.T, s *sink.Sink, p *pgtest.Pair, lsn pglogrepl.LSN, want int64) {
	t.Helper()
	rows, err := s.LoadSnapshot(context.Background(), copyParts(t, p, false), change.Checkpoint{LSN: lsn})
	if err != nil || rows != want {
		t.Fatalf("load: %d rows (want %d), err %v", rows, want, err)
	}
	p.WaitEqual(t, time.Second)
	if got := checkpointOf(t, p); got != int64(lsn) {
		t.Fatalf("checkpoint %x, want %x", got, int64(lsn))
	}
}

func checkpointOf(t *testing.T, p *pgtest.Pair) int64 {
	t.Helper()
	var lsn int64
	if err := p.Chat.QueryRow(context.Background(), "SELECT COALESCE(max(lsn) - '0/0', 0)::int8 FROM cdc_checkpoint").Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	return lsn
}

func TestSink_LoadSnapshotMergesIntoAPopulatedTable(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 1000)
	// Chat holds what an older sync left: stale rows and rows the source
	// no longer has.
	pgtest.Exec(t, p.Chat, `INSERT INTO users (id, first_name, updated_at) VALUES
('00000000-0000-0000-0000-00000000dead', 'gone from source', now())`)
	s := newSink(t, p)
	if _, err := s.LoadSnapshot(ctx, copyParts(t, p, false), change.Checkpoint{LSN: 0x60}); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, p.Chat, `UPDATE users SET first_name = 'stale' WHERE email LIKE 'user1%'`)
	loadAll(t, s, p, 0x70, 1000)
}

// TestSink_LoadSnapshotInPartsIntoAnEmptyTable: parts are copied at once,
// each committing on its own, and the checkpoint is stored only when all
// have: a part that fails leaves rows but no checkpoint, and loading again
// merges into what the first attempt left.
func TestSink_LoadSnapshotInPartsIntoAnEmptyTable(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 3000)
	s := newSink(t, p)
	if _, err := s.LoadSnapshot(ctx, copyParts(t, p, true), change.Checkpoint{LSN: 0x60}); err == nil || !strings.Contains(err.Error(), "source went away") {
		t.Fatalf("a failing part must fail the load: %v", err)
	}
	if lsn := checkpointOf(t, p); lsn != 0 {
		t.Fatalf("checkpoint %x stored by a failed load", lsn)
	}
	if n := count(t, p, "true"); n == 0 || n >= 3000 {
		t.Fatalf("%d rows after a failed parallel load: want the first part's rows (about half)", n)
	}
	loadAll(t, s, p, 0x70, 3000) // merges into what the failed load left
	pgtest.Exec(t, p.Chat, "TRUNCATE users; DELETE FROM cdc_checkpoint")
	loadAll(t, s, p, 0x80, 3000) // both parts at once into an empty table
}

// TestSink_LargeBatchIsStaged covers batches big enough to go through COPY
// into the staging table: upserts, deletes, the checkpoint, and a poison
// row that sends the batch down the isolating path.
func TestSink_LargeBatchIsStaged(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	pgtest.Exec(t, p.Chat, `ALTER TABLE users ADD CONSTRAINT no_poison CHECK (first_name <> 'poison')`)
	s := newSink(t, p)
	tbl := s.Table()
	b := change.NewBatch(len(tbl.Columns), tbl.Key)
	for i := 1; i <= 3000; i++ {
		b.Add(user{id: uuidOf(i), first: fmt.Sprintf("n%d", i)}.change(t, b, tbl, change.OpUpsert))
	}
	b.Checkpoint = change.Checkpoint{LSN: 0x100}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	b = change.NewBatch(len(tbl.Columns), tbl.Key)
	for i := 1; i <= 2500; i++ {
		name := fmt.Sprintf("again%d", i)
		if i == 1234 {
			name = "poison"
		}
		b.Add(user{id: uuidOf(i), first: name}.change(t, b, tbl, change.OpUpsert))
	}
	for i := 2501; i <= 2600; i++ {
		b.Add(user{id: uuidOf(i)}.change(t, b, tbl, change.OpDelete))
	}
	b.Checkpoint = change.Checkpoint{LSN: 0x200}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if n := count(t, p, "first_name LIKE 'again%'"); n != 2499 {
		t.Fatalf("%d rows updated, want 2499", n)
	}
	if n := count(t, p, "true"); n != 2900 {
		t.Fatalf("%d rows after 100 deletes, want 2900", n)
	}
	if n := count(t, p, "first_name = 'n1234'"); n != 1 {
		t.Fatal("the rejected change must leave the old row as it was")
	}
	if cp, _, _ := s.Checkpoint(ctx); cp.LSN != 0x200 {
		t.Fatalf("checkpoint %s", cp.LSN)
	}
	if s.Stats.DeadLetters.Load() != 1 {
		t.Fatalf("dead letters %d", s.Stats.DeadLetters.Load())
	}
}
