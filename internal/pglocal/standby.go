package pglocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
)

// StartStandby takes a base backup of primary and starts it as a hot
// standby that streams from primary through the physical replication slot
// slot (created if absent). opts configure the standby as they do Start;
// Dir must be "" or empty, and Bin defaults to the primary's.
//
// The backup is PostgreSQL's low-level one (pg_backup_start, a copy of
// the data directory, pg_backup_stop), so it needs no pg_basebackup: the
// embedded builds some tests run lack it. primary_conninfo names database
// postgres, which lets a 17+ standby synchronise failover slots
// (sync_replication_slots) when opts.Settings turn that on.
func StartStandby(ctx context.Context, primary *Server, slot string, opts Options) (*Server, error) {
	if opts.Bin == "" {
		opts.Bin = primary.bin
	}
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres application_name=%s", primary.port, slot)
	if primary.password != "" {
		conninfo += " password=" + primary.password
	}
	seed := func(s *Server) error {
		if err := baseBackup(ctx, primary, s, slot); err != nil {
			return err
		}
		conf := fmt.Sprintf("\nprimary_conninfo = '%s'\nprimary_slot_name = '%s'\nhot_standby = on\n",
			strings.ReplaceAll(conninfo, "'", "''"), slot)
		f, err := os.OpenFile(filepath.Join(s.dataDir, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("standby: %w", err)
		}
		_, err = f.WriteString(conf)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("standby: %w", err)
		}
		return s.writeFiles(map[string][]byte{"standby.signal": nil})
	}
	return start(ctx, opts, seed)
}

// baseBackup copies primary's data directory into s's under a backup
// started and stopped on one connection, and writes the backup label.
func baseBackup(ctx context.Context, primary, s *Server, slot string) error {
	conn, err := pgx.Connect(ctx, primary.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("base backup: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, `SELECT pg_create_physical_replication_slot($1, true)
WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, slot)
	if err != nil {
		return fmt.Errorf("base backup: create slot %s: %w", slot, err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_backup_start('pglocal standby', true)"); err != nil {
		return fmt.Errorf("base backup: %w", err)
	}
	copyErr := copyDataDir(primary.dataDir, s.dataDir, s.owner)
	for _, dir := range []string{"archive_status", "summaries"} {
		if err := os.MkdirAll(filepath.Join(s.dataDir, "pg_wal", dir), 0o700); copyErr == nil && err != nil {
			copyErr = err
		}
		if err := chownTo(filepath.Join(s.dataDir, "pg_wal", dir), s.owner); copyErr == nil && err != nil {
			copyErr = err
		}
	}
	var label, spcmap string
	if err := conn.QueryRow(ctx, "SELECT labelfile, spcmapfile FROM pg_backup_stop(false)").Scan(&label, &spcmap); err != nil {
		return fmt.Errorf("base backup: %w", err)
	}
	if copyErr != nil {
		return fmt.Errorf("base backup: %w", copyErr)
	}
	files := map[string][]byte{"backup_label": []byte(label)}
	if spcmap != "" {
		files["tablespace_map"] = []byte(spcmap)
	}
	return s.writeFiles(files)
}

// backupSkips are the parts of a data directory a base backup leaves out
// (their directories are kept, empty), as pg_basebackup does.
var backupSkips = map[string]bool{
	"postmaster.pid": true, "postmaster.opts": true, "pg_wal": true, "pg_replslot": true,
	"pg_stat_tmp": true, "pg_dynshmem": true, "pg_notify": true, "pg_serial": true,
	"pg_snapshots": true, "pg_subtrans": true, "standby.signal": true, "recovery.signal": true,
}

// copyDataDir copies a running server's data directory; files that
// vanish during the copy are skipped (the WAL replay restores them).
func copyDataDir(from, to string, o *owner) error {
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		dst := filepath.Join(to, rel)
		switch {
		case rel == ".":
			return nil
		case d.IsDir():
			if err := os.MkdirAll(dst, 0o700); err != nil {
				return err
			}
			if err := chownTo(dst, o); err != nil {
				return err
			}
			if backupSkips[rel] {
				return fs.SkipDir
			}
			return nil
		case backupSkips[rel]:
			return nil
		}
		return copyFile(path, dst, o)
	})
}

func copyFile(from, to string, o *owner) error {
	in, err := os.Open(from)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return chownTo(to, o)
}

// Promote ends recovery on a standby and waits until it accepts writes.
func (s *Server) Promote(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	defer conn.Close(context.Background())
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, 60)").Scan(&ok); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	if !ok {
		return errors.New("promote: the standby did not leave recovery within 60 s")
	}
	return nil
}
