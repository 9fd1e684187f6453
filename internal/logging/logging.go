// Package logging sets up cdc's slog handler in one place (tint on a
// terminal, JSON otherwise) and keeps secrets out of log lines.
package logging

import (
	"io"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lmittmann/tint"
	"github.com/mattn/go-isatty"
)

// New returns a logger writing to w. format is "text", "json" or "auto"
// (text when w is a terminal, JSON otherwise).
func New(w io.Writer, level slog.Leveler, format string) *slog.Logger {
	if format == "auto" || format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
			format = "text"
		}
	}
	var h slog.Handler
	if format == "text" {
		noColor := true
		if f, ok := w.(*os.File); ok && isatty.IsTerminal(f.Fd()) && os.Getenv("NO_COLOR") == "" {
			noColor = false
		}
		h = tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly + ".000", NoColor: noColor})
	} else {
		h = slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: readable})
	}
	return slog.New(h)
}

// readable writes values in JSON as people (and the text format) read
// them: durations as Go duration strings ("871ms", not 871000000) and
// WAL positions in PostgreSQL's X/Y form ("0/2C33C20", not 46348320), as
// /stats and the text log show them.
func readable(_ []string, a slog.Attr) slog.Attr {
	switch v := a.Value; v.Kind() {
	case slog.KindDuration:
		a.Value = slog.StringValue(v.Duration().String())
	case slog.KindAny:
		if lsn, ok := v.Any().(pglogrepl.LSN); ok {
			a.Value = slog.StringValue(lsn.String())
		}
	}
	return a
}

var (
	// kvPassword is password=… in a key=value DSN, quoted or with escapes.
	kvPassword = regexp.MustCompile(`(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|(?:[^\s\\]|\\.)+)`)
	// urlUserinfo is scheme://user:password@ up to the last @, also when
	// the URL is malformed.
	urlUserinfo = regexp.MustCompile(`^([a-zA-Z][a-zA-Z0-9+.-]*://[^:@/]*):.*@`)
	// urlPassword is password=… in a URL query.
	urlPassword = regexp.MustCompile(`([?&]password=)[^&]*`)
)

// RedactDSN hides the password of a PostgreSQL URL or key=value DSN so the
// rest of it can be shown to a person. It masks the password wherever the
// driver would find one, even in a DSN that net/url cannot parse.
func RedactDSN(dsn string) string {
	out := urlUserinfo.ReplaceAllString(dsn, "${1}:xxxxx@")
	out = urlPassword.ReplaceAllString(out, "${1}xxxxx")
	out = kvPassword.ReplaceAllString(out, "${1}xxxxx")
	if cfg, err := pgconn.ParseConfig(dsn); err == nil && len(cfg.Password) >= 4 {
		// Whatever the driver reads as the password must not survive in
		// any spelling. (Shorter strings would mask ordinary text.)
		for _, p := range []string{cfg.Password, url.QueryEscape(cfg.Password), url.PathEscape(cfg.Password)} {
			out = strings.ReplaceAll(out, p, "xxxxx")
		}
	}
	return out
}
