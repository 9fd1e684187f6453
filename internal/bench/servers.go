package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/demo"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/migrations"
)

// Table shapes.
const (
	ShapeReference = "reference"
	ShapeWide      = "wide"
)

// wideColumns are the wide shape's columns beyond the reference table's:
// 20 in all (19 synced), with an array, ~1 kB of jsonb and an enum, as a
// backend's users table grows them.
var wideColumns = []string{"tags", "settings", "tier", "locale", "bio", "last_login", "login_count", "score", "referral_code"}

// wideDDL adds wideColumns to the reference table before it is seeded;
// their defaults fill them as the seed inserts.
const wideDDL = `CREATE TYPE user_tier AS ENUM ('free', 'plus', 'pro');
ALTER TABLE users
  ADD COLUMN tags text[] DEFAULT ARRAY['tag' || (random() * 100)::int, 'x,y "z"', NULL],
  ADD COLUMN settings jsonb DEFAULT jsonb_build_object('theme', 'dark', 'notify', jsonb_build_object('email', random() < 0.5, 'push', true),
    'recent', jsonb_build_array(md5(random()::text), md5(random()::text)), 'about', repeat(md5(random()::text), 26)),
  ADD COLUMN tier user_tier DEFAULT (enum_range(NULL::user_tier))[1 + (random() * 2)::int],
  ADD COLUMN locale text DEFAULT 'en-US',
  ADD COLUMN bio text DEFAULT 'Bio of a user, ' || md5(random()::text),
  ADD COLUMN last_login timestamptz DEFAULT now() - random() * interval '30 days',
  ADD COLUMN login_count int DEFAULT (random() * 1000)::int,
  ADD COLUMN score numeric(10,2) DEFAULT round((random() * 100)::numeric, 2),
  ADD COLUMN referral_code uuid DEFAULT gen_random_uuid()`

// autovacuum turns autovacuum of the users tables on or off, on every
// server.
func autovacuum(ctx context.Context, s *servers, on bool) error {
	for _, p := range []*pgxpool.Pool{s.source, s.cdc, s.native, s.pipe} {
		if _, err := p.Exec(ctx, fmt.Sprintf("ALTER TABLE users SET (autovacuum_enabled = %v)", on)); err != nil {
			return fmt.Errorf("autovacuum: %w", err)
		}
	}
	return nil
}

// checkpoint flushes both servers so no checkpoint lands inside a timed
// phase by accident.
func checkpoint(ctx context.Context, s *servers) error {
	for _, p := range []*pgxpool.Pool{s.source, s.cdc} {
		if _, err := p.Exec(ctx, "CHECKPOINT"); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	return nil
}

// setup starts the servers, loads the source and prepares the three chat
// databases with identical tables.
func setup(ctx context.Context, o Options, r *Result) (*servers, error) {
	s := &servers{}
	// wal_retrieve_retry_interval: the launcher would otherwise take up to
	// 5 s to start an enabled subscription's worker, which is not apply speed.
	settings := map[string]string{"max_wal_size": "4GB", "shared_buffers": "256MB", "checkpoint_timeout": "30min",
		"wal_retrieve_retry_interval": "100ms"}
	var err error
	srcSettings := maps.Clone(settings)
	if o.DecodingWorkMem != "" {
		srcSettings["logical_decoding_work_mem"] = o.DecodingWorkMem
	}
	if s.src, err = pglocal.Start(ctx, pglocal.Options{Fast: o.Fast, Settings: srcSettings}); err != nil {
		return s, err
	}
	if s.chat, err = pglocal.Start(ctx, pglocal.Options{Fast: o.Fast, Settings: settings}); err != nil {
		return s, err
	}
	if err := s.src.CreateDatabase(ctx, sourceDB); err != nil {
		return s, err
	}
	for _, name := range []string{chatCDC, chatNative, chatPipe} {
		if err := s.chat.CreateDatabase(ctx, name); err != nil {
			return s, err
		}
	}
	s.sourceDSN, s.cdcDSN, s.natDSN = s.src.DSN(sourceDB), s.chat.DSN(chatCDC), s.chat.DSN(chatNative)
	for _, x := range []struct {
		p   **pgxpool.Pool
		dsn string
	}{{&s.source, s.sourceDSN}, {&s.cdc, s.cdcDSN}, {&s.native, s.natDSN}, {&s.pipe, s.chat.DSN(chatPipe)}} {
		if *x.p, err = db.NewPool(ctx, x.dsn, 16); err != nil {
			return s, err
		}
	}
	if err := s.source.QueryRow(ctx, "SHOW server_version").Scan(&r.PGVersion); err != nil {
		return s, err
	}
	cols := config.DefaultColumns
	if o.Shape == ShapeWide {
		cols += "," + strings.Join(wideColumns, ",")
	}
	if s.cfg, err = config.Load(config.MapSource(map[string]string{"SYNC_COLUMNS": cols, "WIRE_FORMAT": o.Wire})); err != nil {
		return s, err
	}
	fmt.Fprintf(o.Log, "bench: seeding %d users (%s table) …\n", o.Rows, o.Shape)
	if err := demo.CreateSchema(ctx, s.source); err != nil {
		return s, err
	}
	if o.Shape == ShapeWide {
		if _, err := s.source.Exec(ctx, wideDDL); err != nil {
			return s, fmt.Errorf("wide table: %w", err)
		}
	}
	if err := demo.Seed(ctx, s.source, o.Rows); err != nil {
		return s, err
	}
	if _, err := s.source.Exec(ctx, "VACUUM ANALYZE users"); err != nil {
		return s, err
	}
	spec := migrations.SpecFor(s.cfg)
	if _, err := migrations.EnsurePublication(ctx, s.source, spec); err != nil {
		return s, err
	}
	if _, err := migrations.MigrateChat(ctx, s.cdc, nil); err != nil {
		return s, err
	}
	for _, p := range []*pgxpool.Pool{s.cdc, s.native, s.pipe} {
		if _, _, err := migrations.EnsureChatTable(ctx, s.source, p, spec, true); err != nil {
			return s, err
		}
	}
	return s, nil
}

// pipeCopy is the practical limit of a first copy: binary COPY out of the
// source piped into COPY into an empty chat table.
func pipeCopy(ctx context.Context, s *servers) (time.Duration, error) {
	if _, err := s.pipe.Exec(ctx, "TRUNCATE users"); err != nil {
		return 0, err
	}
	src, err := s.source.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer src.Release()
	dst, err := s.pipe.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer dst.Release()
	cols := migrations.SpecFor(s.cfg).Columns
	list := ""
	for i, c := range cols {
		if i > 0 {
			list += ", "
		}
		list += c
	}
	start := time.Now()
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		// Buffered like a shell pipe between two psql: chat gets 64 KiB
		// CopyData messages, not one per row.
		bw := bufio.NewWriterSize(pw, 64<<10)
		_, err := src.Conn().PgConn().CopyTo(ctx, bw, "COPY users ("+list+") TO STDOUT (FORMAT binary)")
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		errc <- err
	}()
	_, err = dst.Conn().PgConn().CopyFrom(ctx, pr, "COPY users ("+list+") FROM STDIN (FORMAT binary)")
	if oerr := <-errc; oerr != nil {
		return 0, oerr
	}
	if err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// resetCDC makes the next cdc start a first start: no slot, no checkpoint,
// an empty chat table.
func resetCDC(ctx context.Context, s *servers) error {
	if _, err := s.source.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot); err != nil {
		return fmt.Errorf("drop slot: %w", err)
	}
	_, err := s.cdc.Exec(ctx, "TRUNCATE users; DELETE FROM cdc_checkpoint")
	return err
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// median of durations.
func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
