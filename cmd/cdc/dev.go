package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/demo"
	"github.com/myusta/cdc/internal/pglocal"
	"golang.org/x/sync/errgroup"
)

// Database names of `cdc dev`, as in production.
const (
	devSourceDB = "myusta_backend"
	devChatDB   = "myusta_chatapp"
)

// cmdDev is the embedded default: a local throw-away PostgreSQL holding
// both databases, demo users, and the daemon running against them.
func cmdDev(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	dir := fs.String("dir", ".cdc-dev", "data directory of the throw-away PostgreSQL; reused on the next start")
	users := fs.Int("users", 10000, "demo users seeded into an empty source table")
	load := fs.Int("load", 0, "changes per second made on the source while running (0 = none)")
	port := fs.Int("port", 0, "PostgreSQL port (0 = a free one)")
	fresh := fs.Bool("fresh", false, "delete the data directory first")
	cfg, log, err := e.setup(fs, args)
	if err != nil {
		return err
	}
	if *users < 0 || *load < 0 {
		return usageError("--users and --load take a number ≥ 0")
	}
	root, err := filepath.Abs(*dir)
	if err != nil {
		return usageError("--dir: %v", err)
	}
	if *fresh {
		if err := os.RemoveAll(root); err != nil {
			return fmt.Errorf("remove %s: %w", root, err)
		}
	}
	fmt.Fprintf(e.stdout, "starting PostgreSQL in %s …\n", root)
	srv, err := startDevServer(ctx, root, *port)
	if err != nil {
		return err
	}
	defer func() {
		if err := srv.Stop(); err != nil {
			log.Warn("stop PostgreSQL", "err", err)
		}
	}()
	for _, name := range []string{devSourceDB, devChatDB} {
		if err := srv.CreateDatabase(ctx, name); err != nil {
			return err
		}
	}
	cfg.SourceURL, cfg.ChatURL = srv.DSN(devSourceDB), srv.DSN(devChatDB)
	fmt.Fprintf(e.stdout, "source: psql '%s'\nchat:   psql '%s'\nfor the other commands (cdc verify, cdc errors list, …) in another shell:\n  export SOURCE_DATABASE_URL='%s' CHAT_DATABASE_URL='%s'\n",
		cfg.SourceURL, cfg.ChatURL, cfg.SourceURL, cfg.ChatURL)
	srcPool, err := prepareDev(ctx, e, log, cfg, *users)
	if err != nil {
		return err
	}
	defer srcPool.Close()
	if *load == 0 {
		fmt.Fprintln(e.stdout, "change rows in the source (psql above) and watch them arrive; Ctrl-C stops everything")
		return runDaemon(ctx, cfg, log)
	}
	w, err := demo.NewWorkload(ctx, srcPool, 1)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "making %d changes/s on the source; Ctrl-C stops everything\n", *load)
	loadCtx, stopLoad := context.WithCancel(ctx)
	var g errgroup.Group
	g.Go(func() error { w.Run(loadCtx, *load, log.With("component", "demo-load")); return nil })
	err = runDaemon(ctx, cfg, log)
	stopLoad() // also when cdc stopped on an error
	_ = g.Wait()
	return err
}

// prepareDev seeds the dev source with users demo rows and migrates both
// databases; it returns the source pool for the demo load.
func prepareDev(ctx context.Context, e *env, log *slog.Logger, cfg *config.Config, users int) (*pgxpool.Pool, error) {
	srcPool, err := openPool(ctx, log, "SOURCE_DATABASE_URL", cfg.SourceURL, 4, writePolicy(cfg))
	if err != nil {
		return nil, err
	}
	chatPool, err := openPool(ctx, log, "CHAT_DATABASE_URL", cfg.ChatURL, 2, writePolicy(cfg))
	if err != nil {
		srcPool.Close()
		return nil, err
	}
	defer chatPool.Close()
	if err := seedDemo(ctx, e.stdout, srcPool, users); err != nil {
		srcPool.Close()
		return nil, err
	}
	if err := migrate(ctx, e.stdout, log, cfg, srcPool, chatPool, false); err != nil {
		srcPool.Close()
		return nil, err
	}
	return srcPool, nil
}

// seedDemo creates the reference users table on the source and, when it
// is empty, fills it with users demo rows.
func seedDemo(ctx context.Context, out io.Writer, pool *pgxpool.Pool, users int) error {
	if err := demo.CreateSchema(ctx, pool); err != nil {
		return err
	}
	var empty bool
	if err := pool.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM public.users)").Scan(&empty); err != nil {
		return fmt.Errorf("check demo data: %w", err)
	}
	if !empty || users == 0 {
		return nil
	}
	fmt.Fprintf(out, "seeding %d demo users …\n", users)
	return demo.Seed(ctx, pool, users)
}

// devPortFile remembers, in the data directory, the port cdc dev's
// PostgreSQL last listened on, so the psql and export lines it printed
// keep working across restarts.
const devPortFile = "cdc-dev.port"

// startDevServer starts cdc dev's PostgreSQL on port, or (0) on the port
// it used last time when that is still free, else on a free one.
func startDevServer(ctx context.Context, root string, port int) (*pglocal.Server, error) {
	if port == 0 {
		if b, err := os.ReadFile(filepath.Join(root, devPortFile)); err == nil {
			if last, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				if srv, err := pglocal.Start(ctx, pglocal.Options{Dir: root, Port: last}); err == nil {
					return srv, nil
				}
			}
		}
	}
	srv, err := pglocal.Start(ctx, pglocal.Options{Dir: root, Port: port})
	if err != nil {
		return nil, err
	}
	_ = os.WriteFile(filepath.Join(root, devPortFile), []byte(strconv.Itoa(srv.Port())+"\n"), 0o644)
	return srv, nil
}
