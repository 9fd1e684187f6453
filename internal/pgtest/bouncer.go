package pgtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pglocal"
)

// Bouncer starts PgBouncer in pool mode mode in front of srv, stopped when
// the test ends. Without pgbouncer installed the test is skipped, saying
// how to install it, except in CI (CI set), where it fails.
func Bouncer(t testing.TB, srv *pglocal.Server, mode string, users ...string) *pglocal.Bouncer {
	t.Helper()
	if _, err := pglocal.BouncerBin(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := pglocal.StartBouncer(ctx, srv, pglocal.BouncerOptions{Mode: mode, Users: users})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	return b
}
