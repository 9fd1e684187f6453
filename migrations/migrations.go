// Package migrations brings both databases to the shape cdc needs.
//
// The chat database gets versioned migrations (goose, embedded SQL, history
// in cdc_schema_version) for cdc's own tables, plus the synced table when it
// does not exist yet. The source database, which belongs to the backend
// application, gets no bookkeeping table: cdc declares the state it needs
// (a publication whose column list is SYNC_COLUMNS) and converges to it.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed chat/*.sql
var chatFS embed.FS

// VersionTable records which chat migrations are applied.
const VersionTable = "cdc_schema_version"

func chatProvider(db *sql.DB, log *slog.Logger) (*goose.Provider, error) {
	sub, err := fs.Sub(chatFS, "chat")
	if err != nil {
		return nil, err
	}
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, err
	}
	opts := []goose.ProviderOption{goose.WithTableName(VersionTable), goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true)}
	if log != nil {
		opts = append(opts, goose.WithSlog(log))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, opts...)
	if err != nil {
		return nil, fmt.Errorf("load chat migrations: %w", err)
	}
	return p, nil
}

// MigrateChat applies pending chat migrations and returns how many ran.
func MigrateChat(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (int, error) {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := chatProvider(db, log)
	if err != nil {
		return 0, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrate chat database: %w", err)
	}
	return len(res), nil
}

// ErrNotMigrated means the chat database lacks migrations: run cdc migrate.
var ErrNotMigrated = errors.New("the chat database is not migrated")

// CheckChat returns ErrNotMigrated (wrapped) when chat migrations are pending.
func CheckChat(ctx context.Context, pool *pgxpool.Pool) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := chatProvider(db, nil)
	if err != nil {
		return err
	}
	current, target, err := p.GetVersions(ctx)
	if err != nil {
		return fmt.Errorf("read chat migration version: %w", err)
	}
	if current < target {
		return fmt.Errorf("%w (at version %d of %d)", ErrNotMigrated, current, target)
	}
	return nil
}
