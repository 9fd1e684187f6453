package db_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestCheckSession runs the probe against a direct connection and a real
// PgBouncer in each pool mode.
func TestCheckSession(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Server(t)
	if err := db.CheckSession(ctx, srv.DSN("postgres")); err != nil {
		t.Fatalf("direct connection: %v", err)
	}
	for _, tc := range []struct{ mode, want string }{{"session", ""}, {"transaction", "transaction"}, {"statement", "statement"}} {
		t.Run(tc.mode, func(t *testing.T) {
			b := pgtest.Bouncer(t, srv, tc.mode)
			err := db.CheckSession(ctx, b.DSN("postgres"))
			var se *db.SharedSessionError
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("session mode: %v", err)
			case tc.want != "" && !errors.As(err, &se):
				t.Fatalf("%s mode: got %v, want a SharedSessionError", tc.mode, err)
			case tc.want != "" && (se.Mode != tc.want || !strings.Contains(err.Error(), "pool_mode = "+tc.want)):
				t.Fatalf("%s mode: %v", tc.mode, err)
			}
			if err != nil {
				t.Log(err)
			}
		})
	}
}
