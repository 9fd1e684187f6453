package sink_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/sink"
)

// With asynchronous commits, Durable never reports a checkpoint that chat
// then loses: a chat server restarted in immediate mode right after each
// commit (its WAL writer made slow, so commits are lost) keeps at least
// what Durable reported, and the sink says when it lost commits
// (ErrCommitsLost) instead of writing on past the hole.
func TestSink_AsyncCommitDurableSurvivesImmediateRestarts(t *testing.T) {
	ctx := context.Background()
	chat, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Settings: map[string]string{"wal_writer_delay": "10s"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = chat.Stop() })
	p := pgtest.NewSplitPair(t, pgtest.Server(t), chat, 0)
	_, tbl := p.Tables(t, nil)
	s := sink.New(p.Chat, tbl, sink.Options{Slot: p.Slot, Logger: quiet, AsyncCommit: true,
		Retry: retry.Policy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2, Loud: 3, Attempts: 50}})
	t.Cleanup(s.Close)
	if _, _, err := s.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	stored := func() change.Checkpoint {
		t.Helper()
		c, err := pgx.Connect(ctx, p.ChatURL)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		var cp change.Checkpoint
		err = c.QueryRow(ctx, "SELECT lsn::text FROM cdc_checkpoint WHERE slot_name = $1", p.Slot).Scan(&cp.LSN)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
		return cp
	}
	lost, reported := 0, 0
	apply := func(k int) change.Checkpoint {
		t.Helper()
		b := change.NewBatch(len(tbl.Columns), tbl.Key)
		b.Add(user{id: uuidOf(k), first: fmt.Sprint(k)}.change(t, b, tbl, change.OpUpsert))
		b.Checkpoint = change.Checkpoint{LSN: pglogrepl.LSN(0x100 * k)}
		err := s.Apply(ctx, b)
		if errors.Is(err, change.ErrCommitsLost) {
			// The stream starts again from what chat kept; so does the test.
			lost++
			if _, _, err := s.Checkpoint(ctx); err != nil {
				t.Fatal(err)
			}
			err = s.Apply(ctx, b)
		}
		if err != nil {
			t.Fatalf("batch %d: %v", k, err)
		}
		return b.Checkpoint
	}
	for k := 1; k <= 12; k++ {
		cp := apply(k)
		d, err := s.Durable(ctx, true)
		if err != nil {
			t.Fatalf("batch %d: durable: %v", k, err)
		}
		if d.LSN == cp.LSN {
			reported++
		}
		if err := chat.Restart(ctx, pglocal.ImmediateStop); err != nil {
			t.Fatal(err)
		}
		if kept := stored(); kept.LSN < d.LSN {
			t.Fatalf("batch %d: Durable reported %s, but after an immediate restart chat kept only %s", k, d.LSN, kept.LSN)
		}
	}
	t.Logf("12 immediate restarts: the sink reported lost commits %d times; Durable had reported the last commit %d times", lost, reported)
	if lost == 0 {
		t.Fatal("no commit was lost: the test did not exercise asynchronous commit")
	}
	// Once chat flushes (within wal_writer_delay), a commit is reported
	// durable.
	last := apply(13)
	deadline := time.Now().Add(30 * time.Second)
	for {
		d, err := s.Durable(ctx, true)
		if err == nil && d == last {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the last commit was never reported durable: %s, %v", d.LSN, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
