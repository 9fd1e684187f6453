// Package pgtest gives integration tests real PostgreSQL databases: one
// throw-away server per test binary, and a fresh source/chat database pair
// per test, migrated like `cdc migrate` does, plus row-by-row comparison.
package pgtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/demo"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/internal/tablediff"
	"github.com/myusta/cdc/migrations"
)

var (
	once    sync.Once
	shared  *pglocal.Server
	initErr error
	seq     atomic.Int64

	chatOnce    sync.Once
	chatShared  *pglocal.Server
	chatInitErr error
)

// Main runs a package's tests and then stops the shared servers.
func Main(m *testing.M) {
	code := m.Run()
	for _, s := range []*pglocal.Server{shared, chatShared} {
		if s != nil {
			_ = s.Stop()
		}
	}
	os.Exit(code)
}

// ChatServer returns a second shared server, started on first use: a
// cluster of its own, whose type OIDs are not the first server's.
func ChatServer(t testing.TB) *pglocal.Server {
	t.Helper()
	chatOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		chatShared, chatInitErr = pglocal.Start(ctx, pglocal.Options{Fast: true, Bin: os.Getenv("PG_BIN_CHAT"), Settings: map[string]string{
			"max_replication_slots": "16", "max_wal_senders": "16",
		}})
	})
	if chatInitErr != nil {
		t.Fatalf("start the second PostgreSQL: %v", chatInitErr)
	}
	return chatShared
}

// NewClusterPair is a bare pair (reference users table on the source, no
// migrations) whose chat database is on ChatServer: two clusters, as in
// production. Chat's OID counter is first moved well away from the
// source's (types of its own in schema cdc_pad), so that types created
// later on both sides have other OIDs.
func NewClusterPair(t testing.TB) *Pair {
	t.Helper()
	p := newPair(t, Server(t), ChatServer(t), 0)
	Exec(t, p.Chat, "CREATE SCHEMA cdc_pad")
	const gap = 5000 // OIDs; the types a test creates take far fewer
	for i := 0; ; i++ {
		src, chat := nextOID(t, p.Source), nextOID(t, p.Chat)
		if chat > src+gap || src > chat+gap {
			return p
		}
		var ddl strings.Builder
		for j := range 500 { // 3 OIDs each: the type, its array, its label
			fmt.Fprintf(&ddl, "CREATE TYPE cdc_pad.e%d_%d AS ENUM ('x');", i, j)
		}
		Exec(t, p.Chat, ddl.String())
	}
}

// nextOID is about the OID the database's cluster assigns next.
func nextOID(t testing.TB, pool *pgxpool.Pool) int64 {
	t.Helper()
	var oid int64
	Exec(t, pool, "CREATE TYPE cdc_oid_probe AS ENUM ()")
	// By name in pg_type, not 'cdc_oid_probe'::regtype: a cached plan
	// would keep the first probe's OID as a constant.
	if err := pool.QueryRow(context.Background(), "SELECT oid::int8 FROM pg_type WHERE typname = 'cdc_oid_probe'").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	Exec(t, pool, "DROP TYPE cdc_oid_probe")
	return oid
}

// Server returns the test binary's shared server, starting it on first use.
// A machine without PostgreSQL fails the test with the install command.
//
// PG_BIN_SOURCE and PG_BIN_CHAT choose the binaries of Server and
// ChatServer (default: PG_BIN, else pglocal.BinDir). When PG_BIN_CHAT is
// set, every pair's chat database is on ChatServer, so a suite run with
// two versions tests that pair of versions (see .ci/run's matrix).
func Server(t testing.TB) *pglocal.Server {
	t.Helper()
	once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared, initErr = pglocal.Start(ctx, pglocal.Options{Fast: true, Bin: os.Getenv("PG_BIN_SOURCE"), Settings: map[string]string{
			"max_replication_slots": "64", "max_wal_senders": "64", "wal_sender_timeout": "60s",
		}})
	})
	if initErr != nil {
		t.Fatalf("start PostgreSQL: %v", initErr)
	}
	return shared
}

// Pair is a source and a chat database on one server, with the reference
// users table on the source and both sides migrated.
type Pair struct {
	Name      string
	Server    *pglocal.Server
	SourceURL string
	ChatURL   string
	Source    *pgxpool.Pool
	Chat      *pgxpool.Pool
	Slot      string
}

// NewPair creates the databases, seeds users rows and migrates. Everything
// is dropped when the test ends.
func NewPair(t testing.TB, users int) *Pair {
	t.Helper()
	return NewPairOn(t, Server(t), users)
}

// NewPairOn is NewPair on a given server.
func NewPairOn(t testing.TB, srv *pglocal.Server, users int) *Pair {
	t.Helper()
	p := NewBarePair(t, srv, users)
	p.Migrate(t)
	return p
}

// NewSplitPair is NewPair with the source database on srcSrv and the chat
// database on chatSrv, so that a test can stop one side alone.
func NewSplitPair(t testing.TB, srcSrv, chatSrv *pglocal.Server, users int) *Pair {
	t.Helper()
	p := newPair(t, srcSrv, chatSrv, users)
	p.Migrate(t)
	return p
}

// NewBarePair is NewPairOn without the migrations.
func NewBarePair(t testing.TB, srv *pglocal.Server, users int) *Pair {
	t.Helper()
	return newPair(t, srv, srv, users)
}

func newPair(t testing.TB, srcSrv, chatSrv *pglocal.Server, users int) *Pair {
	t.Helper()
	if chatSrv == shared && os.Getenv("PG_BIN_CHAT") != "" {
		chatSrv = ChatServer(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := seq.Add(1)
	p := &Pair{Name: fmt.Sprintf("t%d", n), Server: srcSrv, Slot: fmt.Sprintf("cdc_t%d_%d", os.Getpid(), n)}
	src, chat := "src_"+p.Name, "chat_"+p.Name
	if err := srcSrv.CreateDatabase(ctx, src); err != nil {
		t.Fatalf("create database: %v", err)
	}
	if err := chatSrv.CreateDatabase(ctx, chat); err != nil {
		t.Fatalf("create database: %v", err)
	}
	p.SourceURL, p.ChatURL = srcSrv.DSN(src), chatSrv.DSN(chat)
	var err error
	if p.Source, err = db.NewPool(ctx, p.SourceURL, 8); err != nil {
		t.Fatal(err)
	}
	if p.Chat, err = db.NewPool(ctx, p.ChatURL, 8); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Source.Close()
		p.Chat.Close()
		dropOn(srcSrv, p.Slot, src)
		dropOn(chatSrv, "", chat)
	})
	if err := demo.CreateSchema(ctx, p.Source); err != nil {
		t.Fatal(err)
	}
	if users > 0 {
		if err := demo.Seed(ctx, p.Source, users); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// Config is the default configuration pointed at the pair.
func (p *Pair) Config(t testing.TB) *config.Config {
	t.Helper()
	cfg, err := config.Load(config.MapSource(p.Env()))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// Env is the environment that configures cdc for the pair, with short
// retry delays for tests.
func (p *Pair) Env() map[string]string {
	return map[string]string{
		"SOURCE_DATABASE_URL": p.SourceURL,
		"CHAT_DATABASE_URL":   p.ChatURL,
		"SLOT_NAME":           p.Slot,
		"RETRY_INITIAL_DELAY": "100",
		"RETRY_MAX_DELAY":     "1000",
		"LOG_FORMAT":          "json",
		"LOG_LEVEL":           "debug",
		"HTTP_ADDR":           "127.0.0.1:0", // tests run side by side
	}
}

// Migrate does what `cdc migrate` does for the default configuration.
func (p *Pair) Migrate(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	cfg := p.Config(t)
	if _, err := migrations.MigrateChat(ctx, p.Chat, nil); err != nil {
		t.Fatal(err)
	}
	spec := migrations.SpecFor(cfg)
	if _, _, err := migrations.EnsureChatTable(ctx, p.Source, p.Chat, spec, false); err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.EnsurePublication(ctx, p.Source, spec); err != nil {
		t.Fatal(err)
	}
}

// Tables loads and matches the pair's source and chat tables as cdc run
// does for cfg (the default configuration when cfg is nil).
func (p *Pair) Tables(t testing.TB, cfg *config.Config) (src, chat *schema.Table) {
	t.Helper()
	if cfg == nil {
		cfg = p.Config(t)
	}
	src, chat, err := migrations.LoadTables(context.Background(), p.Source, p.Chat, migrations.SpecFor(cfg), cfg.WireFormat)
	if err != nil {
		t.Fatal(err)
	}
	return src, chat
}

// dropOn drops slot (unless empty) and dbs on srv.
func dropOn(srv *pglocal.Server, slot string, dbs ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	if slot != "" {
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot)
		for i := 0; i < 50; i++ {
			_, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
			if err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, name := range dbs {
		_, _ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	}
}

// Columns is the default synced column list, for comparisons.
var Columns = strings.Split(config.DefaultColumns, ",")

// Diff compares the users tables row by row over the synced columns and
// describes up to 10 differences; empty means equal.
func (p *Pair) Diff(ctx context.Context) ([]string, error) {
	return tablediff.Diff(ctx, p.Source, p.Chat, "public.users", "id", Columns, 10)
}

// WaitEqual polls until chat equals source row by row, or fails the test
// with the differences after timeout.
func (p *Pair) WaitEqual(t testing.TB, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		diff, err := p.Diff(context.Background())
		if err == nil && len(diff) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("chat did not converge to source within %s: err=%v diff=%v", timeout, err, diff)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Exec runs sql on pool or fails the test.
func Exec(t testing.TB, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		if len(sql) > 500 {
			sql = sql[:500] + "…"
		}
		t.Fatalf("%s: %v", sql, err)
	}
}

// TrackApplies installs a trigger on the chat users table that logs every
// row version written (id, updated_at), to prove nothing is applied twice.
func (p *Pair) TrackApplies(t testing.TB) {
	t.Helper()
	Exec(t, p.Chat, `
CREATE TABLE apply_log (id uuid, updated_at timestamptz, op text);
CREATE FUNCTION log_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO apply_log VALUES (NEW.id, NEW.updated_at, TG_OP); RETURN NULL; END $$;
CREATE TRIGGER log_apply AFTER INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION log_apply();`)
}

// Applies returns how many row versions were written to chat and how many
// of them were written more than once.
func (p *Pair) Applies(t testing.TB) (total, twice int) {
	t.Helper()
	err := p.Chat.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM apply_log),
 (SELECT count(*) FROM (SELECT 1 FROM apply_log GROUP BY id, updated_at HAVING count(*) > 1) d)`).Scan(&total, &twice)
	if err != nil {
		t.Fatal(err)
	}
	return total, twice
}

// CopyToChat copies the source users rows into the (empty) chat table with
// a binary COPY pipe, as a first copy would.
func (p *Pair) CopyToChat(t testing.TB) {
	t.Helper()
	ctx := context.Background()
	src, err := p.Source.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Release()
	dst, err := p.Chat.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Release()
	cols := strings.Join(Columns, ", ")
	pr, pw := io.Pipe()
	go func() {
		_, err := src.Conn().PgConn().CopyTo(ctx, pw, "COPY users ("+cols+") TO STDOUT (FORMAT binary)")
		pw.CloseWithError(err)
	}()
	if _, err := dst.Conn().PgConn().CopyFrom(ctx, pr, "COPY users ("+cols+") FROM STDIN (FORMAT binary)"); err != nil {
		t.Fatal(err)
	}
}

// Buffer is a bytes.Buffer safe for concurrent writers, for capturing logs
// and process output in tests.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// BinFor returns the bin directory of PostgreSQL major version major for
// a test that needs that version. Without it the test is skipped, saying
// how to install it, unless CDC_REQUIRE_PG_VERSIONS is set (CI sets it:
// there a missing version fails the test).
func BinFor(t testing.TB, major int) string {
	t.Helper()
	dir, err := pglocal.BinDirFor(major)
	if err == nil {
		return dir
	}
	if os.Getenv("CDC_REQUIRE_PG_VERSIONS") != "" {
		t.Fatal(err)
	}
	t.Skip(err)
	return ""
}

// Major returns the major version of the server pool connects to.
func Major(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	var v int
	if err := pool.QueryRow(context.Background(), "SELECT current_setting('server_version_num')::int / 10000").Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}
