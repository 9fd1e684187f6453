package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/reconcile"
	"github.com/myusta/cdc/sink"
)

// deadLetter is a row of sync_errors.
type deadLetter struct {
	ID            int64           `json:"id"`
	ErrorType     string          `json:"error_type"`
	UserID        *string         `json:"user_id"`
	Message       string          `json:"message"`
	Detail        *string         `json:"detail,omitempty"`
	Payload       json.RawMessage `json:"payload,omitempty"`
	LSN           *string         `json:"lsn,omitempty"`
	Attempts      int             `json:"attempts"`
	Resolved      bool            `json:"resolved"`
	CreatedAt     time.Time       `json:"created_at"`
	LastAttemptAt time.Time       `json:"last_attempt_at"`
	ResolvedAt    *time.Time      `json:"resolved_at,omitempty"`
}

// cmdErrors is `cdc errors list | retry | resolve`: the dead letters in
// sync_errors, changes the chat database refused.
func cmdErrors(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		commandHelp(e.stdout, "errors", nil)
		fmt.Fprintln(e.stdout, "\nsubcommands: list, retry, resolve (cdc errors <subcommand> -h for each one's flags)")
		return nil
	}
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return usageError("cdc errors needs a subcommand: list, retry or resolve (run 'cdc errors -h')")
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("errors "+sub, flag.ContinueOnError)
	var all *bool
	var id *int64
	var limit *int
	var asJSON *bool
	switch sub {
	case "list":
		all = fs.Bool("all", false, "include resolved dead letters")
		limit = fs.Int("limit", 50, "most rows shown (newest first)")
		asJSON = fs.Bool("json", false, "print one JSON array, with payloads ([] when none)")
	case "retry", "resolve":
		all = fs.Bool("all", false, "every unresolved dead letter")
		id = fs.Int64("id", 0, "the dead letter with this id")
	default:
		return usageError("unknown errors subcommand %q: use list, retry or resolve", sub)
	}
	cfg, log, err := e.setup(fs, args)
	if err != nil {
		return err
	}
	if id != nil && (*id != 0) == *all {
		return usageError("cdc errors %s needs --id N or --all", sub)
	}
	if sub == "list" {
		return cmdErrorsList(ctx, e, cfg, log, *all, *limit, *asJSON)
	}
	return cmdErrorsSettle(ctx, e, cfg, log, sub, *id)
}

// cmdErrorsList is `cdc errors list`.
func cmdErrorsList(ctx context.Context, e *env, cfg *config.Config, log *slog.Logger, all bool, limit int, asJSON bool) error {
	if err := cfg.RequireDatabases(); err != nil {
		return err
	}
	pool, err := openPool(ctx, log, "CHAT_DATABASE_URL", cfg.ChatURL, 2, oneShotPolicy(cfg))
	if err != nil {
		return err
	}
	defer pool.Close()
	return listErrors(ctx, e, pool, all, limit, asJSON)
}

// cmdErrorsSettle is `cdc errors retry` and `cdc errors resolve`: the
// dead letter with id (0: every unresolved one) is applied again from the
// current source row, or marked resolved.
func cmdErrorsSettle(ctx context.Context, e *env, cfg *config.Config, log *slog.Logger, sub string, id int64) error {
	o, err := openOneShot(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer o.close()
	rows, err := openErrors(ctx, o.chat.Pool, id)
	if err != nil {
		return err
	}
	if len(rows) == 0 {
		if id != 0 {
			return &exitError{code: exitFailure, err: fmt.Errorf("no unresolved dead letter with id %d", id)}
		}
		fmt.Fprintln(e.stdout, "no unresolved dead letters")
		return nil
	}
	if sub == "resolve" {
		tag, err := o.chat.Pool.Exec(ctx, "UPDATE sync_errors SET resolved = true, resolved_at = now() WHERE NOT resolved AND id = ANY($1)", ids(rows))
		if err != nil {
			return fmt.Errorf("resolve dead letters: %w", err)
		}
		fmt.Fprintf(e.stdout, "marked %d dead letters resolved (nothing was written to the chat table)\n", tag.RowsAffected())
		return nil
	}
	sk := newSink(cfg, log, o.chat, nil)
	defer sk.Close()
	return retryErrors(ctx, e, sk, o.src, o.chat.Pool, rows)
}

// retryErrors re-reads the current source rows of the dead letters' ids and
// writes them through the sink (under the writer lock, so it is safe beside
// cdc run). Ids written or found already equal are resolved; ids refused
// again stay open with one more attempt.
func retryErrors(ctx context.Context, e *env, sk *sink.Sink, src reconcile.Side, chat *pgxpool.Pool, rows []deadLetter) error {
	var users []string
	seen := map[string]bool{}
	for _, r := range rows {
		if r.UserID != nil && !seen[*r.UserID] {
			seen[*r.UserID] = true
			users = append(users, *r.UserID)
		}
	}
	conn, err := chat.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect to chat database: %w", err)
	}
	keys, bad, err := keyed.ParseKeys(ctx, conn.Conn().PgConn(), sk.Table(), users)
	conn.Release()
	if err != nil {
		return fmt.Errorf("read ids: %w", err)
	}
	for _, b := range bad {
		fmt.Fprintf(e.stdout, "skipping user_id %q: not a valid key (%s); use cdc errors resolve --id\n", b, ident.DisplayList(sk.Table().KeyNames()))
	}
	res, err := sk.Repair(ctx, keys, keyed.PoolFetch(src.Pool, src.Table))
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "retried %d ids: %d written (%d missing, %d stale, %d gone from the source), %d already equal; %d refused again\n",
		len(keys), res.Repairs(), res.Missing, res.Stale, res.Extra, res.Same, res.Dead)
	left, err := openErrors(ctx, chat, 0)
	if err != nil {
		return err
	}
	still := 0
	for _, r := range left {
		if r.UserID != nil && seen[*r.UserID] {
			still++
		}
	}
	if still > 0 {
		return &exitError{code: exitFailure, err: fmt.Errorf("%d dead letters are still unresolved: the chat database refuses those rows (see cdc errors list)", still)}
	}
	return nil
}

const deadLetterColumns = `id, error_type, user_id, message, detail, payload, lsn::text, attempts, resolved, created_at, last_attempt_at, resolved_at`

func scanDeadLetters(rows pgx.Rows) ([]deadLetter, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (deadLetter, error) {
		var d deadLetter
		err := r.Scan(&d.ID, &d.ErrorType, &d.UserID, &d.Message, &d.Detail, &d.Payload, &d.LSN, &d.Attempts, &d.Resolved,
			&d.CreatedAt, &d.LastAttemptAt, &d.ResolvedAt)
		return d, err
	})
}

// openErrors reads the unresolved dead letters (only id's, when id ≠ 0).
func openErrors(ctx context.Context, pool *pgxpool.Pool, id int64) ([]deadLetter, error) {
	rows, err := pool.Query(ctx, "SELECT "+deadLetterColumns+" FROM sync_errors WHERE NOT resolved AND ($1 = 0 OR id = $1) ORDER BY id", id)
	if err != nil {
		return nil, fmt.Errorf("read sync_errors: %w", err)
	}
	out, err := scanDeadLetters(rows)
	if err != nil {
		return nil, fmt.Errorf("read sync_errors: %w", err)
	}
	return out, nil
}

func ids(rows []deadLetter) []int64 {
	out := make([]int64, len(rows))
	for i, r := range rows {
		out[i] = r.ID
	}
	return out
}

// listErrors prints dead letters, newest first.
func listErrors(ctx context.Context, e *env, pool *pgxpool.Pool, all bool, limit int, asJSON bool) error {
	rows, err := pool.Query(ctx, "SELECT "+deadLetterColumns+" FROM sync_errors WHERE $1 OR NOT resolved ORDER BY id DESC LIMIT $2", all, limit)
	if err != nil {
		return fmt.Errorf("read sync_errors: %w", err)
	}
	list, err := scanDeadLetters(rows)
	if err != nil {
		return fmt.Errorf("read sync_errors: %w", err)
	}
	var open int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM sync_errors WHERE NOT resolved").Scan(&open); err != nil {
		return fmt.Errorf("count sync_errors: %w", err)
	}
	if asJSON {
		// One JSON document, [] when there is nothing.
		if list == nil {
			list = []deadLetter{}
		}
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(list)
	}
	fmt.Fprintf(e.stdout, "%d unresolved dead letters\n", open)
	if len(list) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tTYPE\tUSER_ID\tATTEMPTS\tLAST ATTEMPT\tMESSAGE")
	for _, d := range list {
		state := "open"
		if d.Resolved {
			state = "resolved"
		}
		user := "-"
		if d.UserID != nil {
			user = *d.UserID
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\t%s\n", d.ID, state, d.ErrorType, user, d.Attempts,
			d.LastAttemptAt.Local().Format(time.DateTime), truncate(d.Message, 80))
	}
	return tw.Flush()
}

func truncate(s string, n int) string {
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}
