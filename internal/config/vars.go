package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/exporter-toolkit/web"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
)

// Var describes one configuration variable: its name, default, meaning and
// how its raw text becomes a field of Config.
type Var struct {
	Name    string
	Default string
	Help    string
	parse   func(c *Config, raw string) error
}

// FlagName is the command-line flag for the variable: SLOT_NAME -> slot-name.
func (v Var) FlagName() string { return strings.ReplaceAll(strings.ToLower(v.Name), "_", "-") }

// DefaultColumns is the reference schema's allow-list: every column of the
// backend's users table except password_hash.
const DefaultColumns = "id,first_name,last_name,email,phone,role,status,profile_picture,created_at,updated_at"

// Vars is every configuration variable cdc reads, in documentation order.
var Vars = []Var{
	{"SOURCE_DATABASE_URL", "", "backend (source) database DSN; needs REPLICATION and SELECT on the source table", func(c *Config, s string) error {
		c.SourceURL = s
		return checkDSN(s)
	}},
	{"CHAT_DATABASE_URL", "", "chat (target) database DSN", func(c *Config, s string) error {
		c.ChatURL = s
		return checkDSN(s)
	}},
	{"SOURCE_REPLICATION_URL", "", "DSN of the replication connection when it must differ from SOURCE_DATABASE_URL (the queries go through a pooler: the replication connection cannot); default SOURCE_DATABASE_URL", func(c *Config, s string) error {
		c.ReplicationURL = s
		return checkDSN(s)
	}},
	{"SOURCE_PRIMARY_URL", "", "DSN of the source's primary when SOURCE_DATABASE_URL names a hot standby (16+): the publication, the notify trigger and their checks are made there", func(c *Config, s string) error {
		c.PrimaryURL = s
		return checkDSN(s)
	}},
	{"SYNC_MODE", ModeReplication, "replication (pgoutput slot) or notify (trigger + LISTEN/NOTIFY fallback)", func(c *Config, s string) error {
		if s != ModeReplication && s != ModeNotify {
			return fmt.Errorf("%q is not a mode: use replication or notify", s)
		}
		c.Mode = s
		return nil
	}},
	{"SYNC_INTERVAL_MINUTES", "1", "minutes between windowed reconcile runs (fractions allowed, e.g. 0.05)", func(c *Config, s string) error {
		f, err := parseFloat(s, 0.001, 24*60, "a number of minutes from 0.001 to 1440")
		c.SyncInterval = time.Duration(f * float64(time.Minute))
		return err
	}},
	{"SYNC_WINDOW_MULTIPLIER", "3", "reconcile window = interval × this", func(c *Config, s string) error {
		f, err := parseFloat(s, 1, 1000, "a number from 1 to 1000")
		c.WindowMultiplier = f
		return err
	}},
	{"FULL_RECONCILE_INTERVAL", "1h", "period of the full key-range checksum compare (Go duration, 0 = off)", func(c *Config, s string) error {
		d, err := parseDuration(s, 0, 30*24*time.Hour, "a duration such as 1h or 30m, or 0 for off")
		c.FullReconcileInterval = d
		return err
	}},
	{"SOURCE_DB_POOL_SIZE", "10", "max connections to the source database", func(c *Config, s string) error {
		n, err := parseInt(s, 1, 1000, "an integer from 1 to 1000")
		c.SourcePoolSize = int32(n)
		return err
	}},
	{"CHAT_DB_POOL_SIZE", "10", "max connections to the chat database (at least 2: the writer holds one)", func(c *Config, s string) error {
		n, err := parseInt(s, 2, 1000, "an integer from 2 to 1000")
		c.ChatPoolSize = int32(n)
		return err
	}},
	{"MAX_RETRIES", "3", "retries of a failed database operation before it is recorded as failed", func(c *Config, s string) error {
		n, err := parseInt(s, 0, 100, "an integer from 0 to 100")
		c.MaxRetries = n
		return err
	}},
	{"RETRY_INITIAL_DELAY", "1000", "first retry delay in milliseconds", func(c *Config, s string) error {
		n, err := parseInt(s, 1, 3_600_000, "milliseconds from 1 to 3600000")
		c.RetryInitialDelay = time.Duration(n) * time.Millisecond
		return err
	}},
	{"RETRY_MAX_DELAY", "30000", "longest retry delay in milliseconds; also the probe period during long outages", func(c *Config, s string) error {
		n, err := parseInt(s, 1, 3_600_000, "milliseconds from 1 to 3600000")
		c.RetryMaxDelay = time.Duration(n) * time.Millisecond
		return err
	}},
	{"RETRY_BACKOFF_MULTIPLIER", "2", "growth factor between retry delays", func(c *Config, s string) error {
		f, err := parseFloat(s, 1, 10, "a number from 1 to 10")
		c.RetryMultiplier = f
		return err
	}},
	{"MAX_RECONNECT_ATTEMPTS", "10", "fast reconnect attempts before probing every RETRY_MAX_DELAY (the daemon never exits on an outage)", func(c *Config, s string) error {
		n, err := parseInt(s, 0, 1000, "an integer from 0 to 1000")
		c.MaxReconnectAttempts = n
		return err
	}},
	{"SLOT_NAME", "cdc_users", "logical replication slot on the source", func(c *Config, s string) error {
		if !slotName.MatchString(s) {
			return fmt.Errorf("%q is not a slot name: use 1-63 lower-case letters, digits or underscores", s)
		}
		c.SlotName = s
		return nil
	}},
	{"PUBLICATION_NAME", "cdc_users", "publication on the source (created by cdc migrate; a name, SQL syntax)", func(c *Config, s string) (err error) {
		c.PublicationName, err = ident.ParseName(s)
		return err
	}},
	{"SOURCE_RUN_ROLE", "", "role cdc run logs in as on the source, when not the one cdc migrate uses: migrate grants it SELECT on the source table (it needs REPLICATION too, in replication mode)", func(c *Config, s string) (err error) {
		c.SourceRunRole, err = optionalName(s)
		return err
	}},
	{"CHAT_RUN_ROLE", "", "role cdc run logs in as on chat, when not the one cdc migrate uses: migrate grants it what cdc needs on the chat table and cdc's own tables, nothing else", func(c *Config, s string) (err error) {
		c.ChatRunRole, err = optionalName(s)
		return err
	}},
	{"BATCH_MAX_ROWS", "10000", "most changes applied in one chat transaction", func(c *Config, s string) error {
		n, err := parseInt(s, 1, 1_000_000, "an integer from 1 to 1000000")
		c.BatchMaxRows = n
		return err
	}},
	{"BATCH_MAX_MB", "2", "most megabytes of row values in one batch, so that wide rows are not held ten thousand at a time (a single larger change is a batch of its own; replication mode)", func(c *Config, s string) error {
		n, err := parseInt(s, 1, 1024, "an integer number of megabytes from 1 to 1024")
		c.BatchMaxMB = n
		return err
	}},
	{"BATCH_MAX_WAIT", "10ms", "under heavy load (transactions arriving faster than chat writes one at a time), longest a change waits for others to share its chat transaction while the writer is idle, less the time the source's walsender held it after its commit; at lower rates a change is written at once (0 to 1s; 0 = always at once)", func(c *Config, s string) error {
		d, err := parseDuration(s, 0, time.Second, "a duration from 0 to 1s, such as 10ms")
		c.BatchMaxWait = d
		return err
	}},
	{"CHAT_SYNCHRONOUS_COMMIT", "off", "off: the stream's chat transactions commit asynchronously, as PostgreSQL's own apply worker's do, and cdc confirms to the slot only positions whose chat commit is on disk (a chat crash loses no change: the slot still holds it); on: every chat transaction waits for its WAL flush (notify mode and repairs always do)", func(c *Config, s string) error {
		switch s {
		case "off":
			c.AsyncCommit = true
		case "on":
			c.AsyncCommit = false
		default:
			return errors.New("must be on or off")
		}
		return nil
	}},
	{"COPY_WORKERS", "2", "parts of the table the first copy reads and writes at once, each on its own source and chat connection (1 to 16; tables under ~16 MB, sources before PostgreSQL 14, and notify mode copy in one part)", func(c *Config, s string) error {
		n, err := parseInt(s, 1, 16, "an integer from 1 to 16")
		c.CopyWorkers = n
		return err
	}},
	{"SPOOL_DIR", "", "directory where a source transaction larger than the source's logical_decoding_work_mem waits, past 1 MB, for its commit (the source streams it while it runs); must be writable; empty = the system's temporary directory (TMPDIR)", func(c *Config, s string) error {
		c.SpoolDir = s
		return checkWritableDir(s)
	}},
	{"STANDBY_STATUS_INTERVAL", "10s", "how often the committed position is confirmed to the slot (100ms to 10s)", func(c *Config, s string) error {
		d, err := parseDuration(s, 100*time.Millisecond, 10*time.Second, "a duration from 100ms to 10s")
		c.StatusInterval = d
		return err
	}},
	{"SLOT_WAL_WARN_MB", "1024", "WAL the slot may hold on the source (MB) before cdc warns and health degrades", func(c *Config, s string) error {
		n, err := parseInt(s, 1, 100_000_000, "an integer number of megabytes from 1 to 100000000")
		c.SlotWALWarnBytes = int64(n) << 20
		return err
	}},
	{"LAG_WARN", "30s", "lag (source commit to chat commit) past which /readyz answers 503 and health is DEGRADED (Go duration)", func(c *Config, s string) error {
		d, err := parseDuration(s, time.Second, 24*time.Hour, "a duration from 1s to 24h, such as 30s")
		c.LagWarn = d
		return err
	}},
	{"LAG_CRITICAL", "5m", "lag past which health is UNHEALTHY (Go duration, at least LAG_WARN)", func(c *Config, s string) error {
		d, err := parseDuration(s, time.Second, 7*24*time.Hour, "a duration from 1s to 168h, such as 5m")
		c.LagCritical = d
		return err
	}},
	{"HTTP_ADDR", "127.0.0.1:8080", "health, stats and metrics listener (host:port)", func(c *Config, s string) error {
		if _, port, err := net.SplitHostPort(s); err != nil || !validPort(port) {
			return fmt.Errorf("%q is not host:port, e.g. 127.0.0.1:8080 or 0.0.0.0:8080", s)
		}
		c.HTTPAddr = s
		return nil
	}},
	{"WEB_CONFIG_FILE", "", "TLS and basic authentication for the HTTP listener: a web configuration file in the format Prometheus exporters use (tls_server_config, basic_auth_users with bcrypt hashes); empty = plain HTTP (cdc says so at start when HTTP_ADDR is not loopback)", func(c *Config, s string) error {
		c.WebConfigFile = s
		if s == "" {
			return nil
		}
		if err := web.Validate(s); err != nil {
			return fmt.Errorf("must be a readable web configuration file (exporter-toolkit format: tls_server_config, basic_auth_users): %w", err)
		}
		return nil
	}},
	{"ALERT_WEBHOOK_URL", "", "Slack-compatible webhook (an absolute http or https URL) that cdc run posts a JSON message to when health changes state (HEALTHY, DEGRADED, UNHEALTHY), with the checks that do not pass and their recommendations; at most one message per state a minute; empty = off", func(c *Config, s string) error {
		c.AlertWebhookURL = s
		return checkWebhookURL(s)
	}},
	{"LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, s string) error {
		if err := c.LogLevel.UnmarshalText([]byte(s)); err != nil {
			return fmt.Errorf("%q is not a level: use debug, info, warn or error", s)
		}
		return nil
	}},
	{"LOG_FORMAT", "auto", "text (coloured, for terminals), json, or auto (text on a terminal, else json)", func(c *Config, s string) error {
		switch s {
		case "auto", "text", "json":
			c.LogFormat = s
			return nil
		}
		return fmt.Errorf("%q is not a format: use text, json or auto", s)
	}},
	{"SOURCE_TABLE", "public.users", "source table: table or schema.table in SQL syntax (unquoted names fold to lower case: public.\"Users\" keeps its case)", func(c *Config, s string) (err error) {
		c.SourceTable, err = ident.ParseTable(s)
		return err
	}},
	{"CHAT_TABLE", "public.users", "chat table, as SOURCE_TABLE", func(c *Config, s string) (err error) {
		c.ChatTable, err = ident.ParseTable(s)
		return err
	}},
	{"SYNC_COLUMNS", DefaultColumns, "comma-separated source columns copied to chat, SQL syntax (\"firstName\" keeps its case); \"col AS other\" writes col into chat's column other", func(c *Config, s string) error {
		cols, err := ident.ParseList(s, true)
		if err != nil {
			return err
		}
		c.Columns, c.ChatColumns = nil, nil
		for _, m := range cols {
			c.Columns = append(c.Columns, m.Source)
			c.ChatColumns = append(c.ChatColumns, m.Chat)
		}
		if len(cols) == 0 {
			return errors.New("is empty: list the columns to copy, e.g. " + DefaultColumns)
		}
		if len(cols) > 64 {
			return fmt.Errorf("names %d columns: at most 64 are supported", len(cols))
		}
		return nil
	}},
	{"KEY_COLUMNS", "", "the key: comma-separated source columns of a unique index (default: the source table's primary key)", func(c *Config, s string) (err error) {
		c.KeyColumns, err = keyList(s)
		return err
	}},
	{"KEY_COLUMN", "", "older name of KEY_COLUMNS (one column)", func(c *Config, s string) error {
		if s == "" {
			return nil
		}
		if c.KeyColumns != nil {
			return errors.New("is set together with KEY_COLUMNS: keep only KEY_COLUMNS")
		}
		var err error
		c.KeyColumns, err = keyList(s)
		return err
	}},
	{"UPDATED_AT_COLUMN", "updated_at", "timestamptz column bumped on every change (the reconciler's window); a source column name, SQL syntax", func(c *Config, s string) (err error) {
		c.UpdatedAtColumn, err = ident.ParseName(s)
		return err
	}},
	{"SECRET_COLUMNS", "password_hash", "source columns that must never leave the source; SYNC_COLUMNS may not name them", func(c *Config, s string) (err error) {
		c.SecretColumns, err = ident.ParseNames(s)
		return err
	}},
	{"WIRE_FORMAT", "auto", "how values travel: auto (binary when every column's type is the same on both sides and its binary form carries no type OIDs, else text), binary, or text", func(c *Config, s string) (err error) {
		c.WireFormat, err = schema.ParseFormat(s)
		return err
	}},
}

var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

func optionalName(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	return ident.ParseName(s)
}

func keyList(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	names, err := ident.ParseNames(s)
	if err == nil && len(names) == 0 {
		err = errors.New("is empty: name the key's columns, or leave it unset for the primary key")
	}
	return names, err
}

func checkDSN(s string) error {
	if s == "" {
		return nil // required-ness is checked by the commands that connect
	}
	cfg, err := pgconn.ParseConfig(s)
	if err == nil && cfg.Password == "change-me" {
		return errors.New("has the example password change-me: set a real one (in .env with docker compose)")
	}
	if err != nil {
		// The parser's message can quote the input, password included, when
		// it is malformed: say only what is accepted.
		return errors.New("is not a valid PostgreSQL DSN: " + dsnProblem(s) + "; use postgres://user:pass@host:5432/db?sslmode=… or host=… user=… dbname=…")
	}
	return nil
}

// dsnProblem names the part of a DSN the driver refused, quoting nothing
// of it (any value may be the password).
func dsnProblem(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		if scheme := s[:i]; scheme != "postgres" && scheme != "postgresql" {
			return "the scheme is not PostgreSQL's (postgres:// or postgresql://)"
		}
		u, err := url.Parse(s)
		var esc url.EscapeError
		switch {
		case errors.As(err, &esc):
			return "a % escape is invalid (a % not followed by two hex digits, often in the password: write @ : / # % ? there as %40 %3A %2F %23 %25 %3F)"
		case err != nil && strings.Contains(err.Error(), "port"):
			return "the port is not a number from 1 to 65535"
		case err != nil:
			return "it cannot be read as a URL (percent-encode @ : / # % ? in the user and password)"
		}
		for _, h := range strings.Split(u.Host, ",") {
			if _, port, err := net.SplitHostPort(h); err == nil && !validPort(port) {
				return "the port is not a number from 1 to 65535"
			}
		}
		return paramProblem(u.Query())
	}
	params := url.Values{}
	for _, f := range strings.Fields(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			params.Set(k, strings.Trim(v, "'"))
		} else {
			return "an entry is not key=value"
		}
	}
	if p := params.Get("port"); p != "" && !validPort(p) {
		return "the port is not a number from 1 to 65535"
	}
	return paramProblem(params)
}

// paramProblem names a connection parameter with a value the driver
// refuses, or says the DSN is otherwise malformed.
func paramProblem(q url.Values) string {
	if m := q.Get("sslmode"); m != "" && !slices.Contains([]string{"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}, m) {
		return "the parameter sslmode is not one of disable, allow, prefer, require, verify-ca, verify-full"
	}
	if t := q.Get("connect_timeout"); t != "" {
		if _, err := strconv.Atoi(t); err != nil {
			return "the parameter connect_timeout is not a number of seconds"
		}
	}
	return "a parameter or its value is not one the driver accepts"
}

// checkWebhookURL accepts "" (off) or an absolute http or https URL with
// a host. Its errors quote nothing of the URL: its user, password, path
// and query may all be a token.
func checkWebhookURL(s string) error {
	if s == "" {
		return nil
	}
	const want = ": want an absolute http:// or https:// URL, such as https://hooks.slack.com/services/…, or empty for off"
	u, err := url.Parse(s)
	var esc url.EscapeError
	switch {
	case errors.As(err, &esc):
		return errors.New("a % escape is invalid (a % not followed by two hex digits)" + want)
	case err != nil && strings.Contains(err.Error(), "port"):
		return errors.New("the port is not a number from 1 to 65535" + want)
	case err != nil:
		return errors.New("it cannot be read as a URL" + want)
	case u.Scheme == "":
		return errors.New("it is not an absolute URL (no http:// or https://)" + want)
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("the scheme is not http or https" + want)
	case u.Host == "" || u.Hostname() == "":
		return errors.New("it has no host" + want)
	case u.Port() != "" && (!validPort(u.Port()) || u.Port() == "0"):
		return errors.New("the port is not a number from 1 to 65535" + want)
	}
	return nil
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 0 && n <= 65535
}

func parseInt(s string, lo, hi int, want string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		return n, fmt.Errorf("%q is invalid: want %s", s, want)
	}
	return n, nil
}

func parseFloat(s string, lo, hi float64, want string) (float64, error) {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || f < lo || f > hi {
		return f, fmt.Errorf("%q is invalid: want %s", s, want)
	}
	return f, nil
}

func parseDuration(s string, lo, hi time.Duration, want string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d < lo || d > hi {
		return d, fmt.Errorf("%q is invalid: want %s", s, want)
	}
	return d, nil
}

// checkWritableDir checks that cdc can create files in dir ("" = the
// system's temporary directory, checked when used).
func checkWritableDir(dir string) error {
	if dir == "" {
		return nil
	}
	f, err := os.CreateTemp(dir, "cdc-check-*")
	if err != nil {
		return errors.New("must be an existing directory cdc can write to")
	}
	_ = f.Close()
	return os.Remove(f.Name())
}
