package migrations

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/schema"
)

// SyncedColumn is one chat column of a sync as cdc_columns records it.
type SyncedColumn struct {
	Chat, Source string
	// Filled reports that every existing chat row has the source's values
	// (the first copy or a backfill wrote them).
	Filled bool
}

// ReadColumns returns the record of slot's synced columns by chat name;
// empty before the first cdc migrate or run recorded it.
func ReadColumns(ctx context.Context, q schema.Querier, slot string) (map[string]SyncedColumn, error) {
	rows, err := q.Query(ctx, "SELECT chat_column, source_column, filled FROM cdc_columns WHERE slot_name = $1", slot)
	if err != nil {
		return nil, fmt.Errorf("read cdc_columns: %w", err)
	}
	out := map[string]SyncedColumn{}
	var c SyncedColumn
	_, err = pgx.ForEachRow(rows, []any{&c.Chat, &c.Source, &c.Filled}, func() error {
		out[c.Chat] = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read cdc_columns: %w", err)
	}
	return out, nil
}

// ColumnChanges is what RecordColumns changed, by chat name.
type ColumnChanges struct {
	Added   []string // new to the record, to be backfilled
	Removed []string // no longer synced: chat's column stays, chat's own
	Remap   []string // synced from another source column now, to be backfilled
}

// RecordColumns makes slot's record equal spec's columns. A column new to
// the record, or mapped from another source column than recorded, is
// recorded unfilled, for cdc run to backfill; when the record is empty
// (the first time for this sync) every column is recorded filled, because
// the first copy writes them all.
func RecordColumns(ctx context.Context, pool *pgxpool.Pool, slot string, spec Spec) (ColumnChanges, error) {
	var ch ColumnChanges
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtext('cdc_columns ' || $1))", slot); err != nil {
			return err
		}
		had, err := ReadColumns(ctx, tx, slot)
		if err != nil {
			return err
		}
		fresh := len(had) == 0
		for i, chat := range spec.ChatColumns {
			src := spec.Columns[i]
			old, ok := had[chat]
			switch {
			case ok && old.Source == src:
				continue
			case ok:
				ch.Remap = append(ch.Remap, chat)
			case !fresh:
				ch.Added = append(ch.Added, chat)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO cdc_columns (slot_name, chat_column, source_column, filled) VALUES ($1, $2, $3, $4)
ON CONFLICT (slot_name, chat_column) DO UPDATE SET source_column = excluded.source_column, filled = excluded.filled, updated_at = now()`,
				slot, chat, src, fresh); err != nil {
				return fmt.Errorf("record column %s: %w", chat, err)
			}
		}
		for chat := range had {
			if !slices.Contains(spec.ChatColumns, chat) {
				ch.Removed = append(ch.Removed, chat)
			}
		}
		slices.Sort(ch.Removed)
		if _, err := tx.Exec(ctx, "DELETE FROM cdc_columns WHERE slot_name = $1 AND chat_column = ANY($2)", slot, ch.Removed); err != nil {
			return fmt.Errorf("record columns: %w", err)
		}
		return nil
	})
	return ch, err
}

// MarkFilled records that chat's columns (chat names) hold the source's
// values in every row; filled false records that they must be backfilled.
func MarkFilled(ctx context.Context, pool *pgxpool.Pool, slot string, columns []string, filled bool) error {
	if _, err := pool.Exec(ctx, "UPDATE cdc_columns SET filled = $3, updated_at = now() WHERE slot_name = $1 AND chat_column = ANY($2)", slot, columns, filled); err != nil {
		return fmt.Errorf("record columns: %w", err)
	}
	return nil
}
