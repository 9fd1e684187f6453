package logging_test

import (
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/myusta/cdc/internal/logging"
)

func TestProbe(t *testing.T) {
	for _, s := range []string{
		"postgres://u:pa#ss@host/db",
		"postgres://u:pa ss@host/db",
		"postgres://u:pa?ss@host/db",
		"postgres://u:pa%ss@host/db",
		"postgres://u:pa[ss@host/db",
		"postgres://u:pa^ss@host/db",
		"postgres://u:secret@host/db?password=other",
		"postgres://u@host/db?sslmode=disable&password=pa^ss",
		"postgres://u@host/db?password=pa%20ss",
		"postgresql://u:secret@host/db",
		"POSTGRES://u:secret@host/db",
	} {
		c, err := pgconn.ParseConfig(s)
		if err != nil {
			fmt.Printf("%q -> err %v ; redact %q\n", s, err, logging.RedactDSN(s))
			continue
		}
		fmt.Printf("%q -> %q ; redact %q\n", s, c.Password, logging.RedactDSN(s))
	}
}
