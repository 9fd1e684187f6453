package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/migrations"
	"github.com/myusta/cdc/replication"
)

func cmdMigrate(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	createTypes := fs.Bool("create-types", false, "create the enums, domains, composite and range types and extensions the chat table needs and chat lacks, from the source's definitions")
	cfg, log, err := e.setup(fs, args)
	if err != nil {
		return err
	}
	if err := cfg.RequireDatabases(); err != nil {
		return err
	}
	// A one-shot command: retry an outage a few times, then fail.
	p := writePolicy(cfg)
	ctx, cancel := context.WithTimeout(ctx, oneShotPatience(p))
	defer cancel()
	srcPool, err := openPool(ctx, log, "SOURCE_DATABASE_URL", cfg.SourceURL, 2, p)
	if err != nil {
		return err
	}
	defer srcPool.Close()
	chatPool, err := openPool(ctx, log, "CHAT_DATABASE_URL", cfg.ChatURL, 2, p)
	if err != nil {
		return err
	}
	defer chatPool.Close()
	return migrate(ctx, e.stdout, log, cfg, srcPool, chatPool, *createTypes)
}

// oneShotPatience bounds how long a one-shot command waits for a database:
// MAX_RETRIES attempts of the configured backoff.
func oneShotPatience(p retry.Policy) (d time.Duration) {
	b := p.BackOff()
	for i := 0; i <= p.Loud; i++ {
		d += b.NextBackOff()
	}
	return d + 10*time.Second
}

// migrate brings both databases to what cdc needs; running it twice changes
// nothing the second time.
func migrate(ctx context.Context, out io.Writer, log *slog.Logger, cfg *config.Config, srcPool, chatPool *pgxpool.Pool, createTypes bool) error {
	if cfg.Mode == config.ModeReplication {
		if err := replication.CheckSourceVersion(ctx, srcPool); err != nil {
			return err
		}
	}
	primary, err := openPrimary(ctx, log, cfg, srcPool, writePolicy(cfg))
	if err != nil {
		return err
	}
	if primary != nil {
		defer primary.Close()
	}
	// What only a primary can do goes there; the reads stay on srcPool.
	srcWriter := orPool(primary, srcPool)
	n, err := migrations.MigrateChat(ctx, chatPool, log)
	if err != nil {
		return err
	}
	if n == 0 {
		fmt.Fprintln(out, "chat: cdc tables up to date")
	} else {
		fmt.Fprintf(out, "chat: applied %d migration(s)\n", n)
	}
	spec := migrations.SpecFor(cfg)
	// Configuration problems (a table or column that is not there, a key
	// without an index) are named here, with the fix, and exit 2.
	src, err := replication.LoadTable(ctx, srcPool, spec.Source(), "source", "check SOURCE_TABLE and the database in the DSN")
	if err != nil {
		return err
	}
	if cfg.Mode == config.ModeReplication {
		// Before chat's table is made: a refused generated column must not
		// be created there as a plain one.
		if err := replication.CheckGenerated(ctx, srcPool, src); err != nil {
			return err
		}
	}
	created, notes, err := migrations.EnsureChatTable(ctx, srcPool, chatPool, spec, createTypes)
	var missing *migrations.MissingTypesError
	if errors.As(err, &missing) {
		return &exitError{code: exitUsage, err: err}
	}
	if err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(out, "chat:", n)
	}
	if created {
		fmt.Fprintf(out, "chat: created table %s from the source's columns\n", cfg.ChatTable)
	} else {
		fmt.Fprintf(out, "chat: table %s exists\n", cfg.ChatTable)
	}
	if err := grantRunRoles(ctx, out, cfg, srcWriter, chatPool, spec); err != nil {
		return err
	}
	if cfg.Mode == config.ModeNotify {
		err = migrateNotify(ctx, out, cfg, srcWriter, spec)
	} else {
		err = migratePublication(ctx, out, cfg, srcWriter, spec)
	}
	if err != nil {
		return err
	}
	// Last, once the source publishes them: a running cdc follows a
	// changed record within STANDBY_STATUS_INTERVAL.
	ch, err := migrations.RecordColumns(ctx, chatPool, cfg.SlotName, spec)
	if err != nil {
		return err
	}
	for _, c := range append(ch.Added, ch.Remap...) {
		fmt.Fprintf(out, "chat: column %s is synced now; cdc run fills it for the existing rows (a running cdc follows within %s)\n", c, cfg.StatusInterval)
	}
	for _, c := range ch.Removed {
		fmt.Fprintf(out, "chat: column %s is no longer synced; chat keeps it and its values, chat's own from now on\n", c)
	}
	return nil
}

// migratePublication publishes the synced columns and removes the notify
// trigger, which would cost every write in replication mode.
func migratePublication(ctx context.Context, out io.Writer, cfg *config.Config, srcPool *pgxpool.Pool, spec migrations.Spec) error {
	msg, err := migrations.EnsurePublication(ctx, srcPool, spec)
	if err != nil {
		return err
	}
	if msg == "" {
		msg = fmt.Sprintf("publication %s up to date", cfg.PublicationName)
	}
	fmt.Fprintln(out, "source:", msg)
	if msg, err = migrations.DropNotifyTrigger(ctx, srcPool, spec); err != nil {
		return err
	}
	if msg != "" {
		fmt.Fprintln(out, "source:", msg)
	}
	return nil
}

// migrateNotify installs the notify-mode trigger and removes the
// replication slot, which nothing would consume in this mode.
func migrateNotify(ctx context.Context, out io.Writer, cfg *config.Config, srcPool *pgxpool.Pool, spec migrations.Spec) error {
	msg, err := migrations.EnsureNotifyTrigger(ctx, srcPool, spec)
	if err != nil {
		return err
	}
	if msg == "" {
		msg = fmt.Sprintf("trigger %s up to date", migrations.NotifyTrigger)
	}
	fmt.Fprintln(out, "source:", msg)
	if msg, err = migrations.DropSlot(ctx, srcPool, cfg.SlotName); err != nil {
		return err
	}
	if msg != "" {
		fmt.Fprintln(out, "source:", msg)
	}
	return nil
}

// grantRunRoles gives SOURCE_RUN_ROLE and CHAT_RUN_ROLE, when set, the
// least privileges cdc run needs.
func grantRunRoles(ctx context.Context, out io.Writer, cfg *config.Config, srcPool, chatPool *pgxpool.Pool, spec migrations.Spec) error {
	if cfg.SourceRunRole != "" {
		msg, err := migrations.GrantSource(ctx, srcPool, spec, cfg.SourceRunRole, cfg.Mode == config.ModeReplication)
		if err != nil {
			return fmt.Errorf("SOURCE_RUN_ROLE: %w", err)
		}
		fmt.Fprintln(out, "source:", msg)
	}
	if cfg.ChatRunRole != "" {
		msg, err := migrations.GrantChat(ctx, chatPool, spec, cfg.ChatRunRole)
		if err != nil {
			return fmt.Errorf("CHAT_RUN_ROLE: %w", err)
		}
		fmt.Fprintln(out, "chat:", msg)
	}
	return nil
}
