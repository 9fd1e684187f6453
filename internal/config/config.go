// Package config reads cdc's configuration from flags, the environment and an
// optional .env file, and validates every value before anything starts.
package config

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/joho/godotenv"

	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
)

// Sync modes.
const (
	ModeReplication = "replication"
	ModeNotify      = "notify"
)

// Config is the validated configuration of one cdc process.
type Config struct {
	// Warnings are names set that look meant for cdc but are none of its
	// variables (typos), for the caller to log.
	Warnings []string

	SourceURL      string // SOURCE_DATABASE_URL
	ReplicationURL string // SOURCE_REPLICATION_URL, "" = SourceURL
	PrimaryURL     string // SOURCE_PRIMARY_URL, "" = the source is a primary
	ChatURL        string // CHAT_DATABASE_URL
	Mode           string // SYNC_MODE

	SyncInterval          time.Duration // SYNC_INTERVAL_MINUTES
	WindowMultiplier      float64       // SYNC_WINDOW_MULTIPLIER
	FullReconcileInterval time.Duration // FULL_RECONCILE_INTERVAL, 0 = off

	SourcePoolSize int32 // SOURCE_DB_POOL_SIZE
	ChatPoolSize   int32 // CHAT_DB_POOL_SIZE

	MaxRetries           int           // MAX_RETRIES
	RetryInitialDelay    time.Duration // RETRY_INITIAL_DELAY (ms)
	RetryMaxDelay        time.Duration // RETRY_MAX_DELAY (ms)
	RetryMultiplier      float64       // RETRY_BACKOFF_MULTIPLIER
	MaxReconnectAttempts int           // MAX_RECONNECT_ATTEMPTS

	SlotName        string // SLOT_NAME
	PublicationName string // PUBLICATION_NAME

	BatchMaxRows     int           // BATCH_MAX_ROWS
	BatchMaxMB       int           // BATCH_MAX_MB
	BatchMaxWait     time.Duration // BATCH_MAX_WAIT
	AsyncCommit      bool          // CHAT_SYNCHRONOUS_COMMIT=off
	CopyWorkers      int           // COPY_WORKERS
	SpoolDir         string        // SPOOL_DIR, "" = the system's temporary directory
	StatusInterval   time.Duration // STANDBY_STATUS_INTERVAL
	SourceRunRole    string        // SOURCE_RUN_ROLE
	ChatRunRole      string        // CHAT_RUN_ROLE
	SlotWALWarnBytes int64         // SLOT_WAL_WARN_MB, in bytes
	LagWarn          time.Duration // LAG_WARN
	LagCritical      time.Duration // LAG_CRITICAL

	HTTPAddr      string     // HTTP_ADDR
	WebConfigFile string     // WEB_CONFIG_FILE: TLS and basic auth of the HTTP listener, "" = plain HTTP
	LogLevel      slog.Level // LOG_LEVEL
	LogFormat     string     // LOG_FORMAT: auto, text or json

	// AlertWebhookURL is ALERT_WEBHOOK_URL, "" = off. Secret: log only
	// its scheme and host.
	AlertWebhookURL string

	SourceTable     ident.Table   // SOURCE_TABLE
	ChatTable       ident.Table   // CHAT_TABLE
	Columns         []string      // SYNC_COLUMNS, the allow-list that leaves the source (source names)
	ChatColumns     []string      // SYNC_COLUMNS' chat names, in the same order
	KeyColumns      []string      // KEY_COLUMNS (source names); nil: the source's primary key
	UpdatedAtColumn string        // UPDATED_AT_COLUMN (a source name)
	SecretColumns   []string      // SECRET_COLUMNS, never synced
	WireFormat      schema.Format // WIRE_FORMAT
}

// ChatName is the chat name of source column col (col itself if unmapped).
func (c *Config) ChatName(col string) string {
	for i, s := range c.Columns {
		if s == col {
			return c.ChatColumns[i]
		}
	}
	return col
}

// Error is a configuration value that cannot be used. Its message names the
// variable and what it accepts; it never repeats a secret.
type Error struct {
	Var  string // environment variable name
	Msg  string // what is wrong and what is accepted
	Flag string // the flag that sets it
}

func (e *Error) Error() string { return e.Var + ": " + e.Msg }

// Errors is every configuration problem found at once, one per variable.
type Errors []*Error

// Error is one line per problem.
func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i, x := range e {
		lines[i] = x.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find each *Error.
func (e Errors) Unwrap() []error {
	out := make([]error, len(e))
	for i, x := range e {
		out[i] = x
	}
	return out
}

// join is nil, the one error, or all of them.
func join(errs Errors) error {
	switch len(errs) {
	case 0:
		return nil
	case 1:
		return errs[0]
	}
	return errs
}

func newError(name, msg string) *Error {
	return &Error{Var: name, Msg: msg, Flag: "--" + Var{Name: name}.FlagName()}
}

// Source tells where configuration values come from. Lookup reports the raw
// value of a variable and whether it is set.
type Source struct {
	Lookup func(name string) (string, bool)
	// Names lists the names the source holds that may be meant for cdc
	// (every .env key; environment variables shaped like cdc's), for
	// the warning about unknown ones; nil: none.
	Names func() (dotenv, environ []string)
}

// EnvSource reads the process environment and, below it, the .env file in
// the working directory when one exists.
func EnvSource(dotenvPath string) (Source, error) {
	fileVals := map[string]string{}
	if dotenvPath != "" {
		m, err := godotenv.Read(dotenvPath)
		switch {
		case err == nil:
			fileVals = m
		case errors.Is(err, os.ErrNotExist):
		default:
			return Source{}, fmt.Errorf("read %s: %w", dotenvPath, err)
		}
	}
	return Source{Lookup: func(name string) (string, bool) {
		if v, ok := os.LookupEnv(name); ok {
			return v, true
		}
		v, ok := fileVals[name]
		return v, ok
	}, Names: func() (dotenv, environ []string) {
		for k := range fileVals {
			dotenv = append(dotenv, k)
		}
		for _, kv := range os.Environ() {
			environ = append(environ, strings.SplitN(kv, "=", 2)[0])
		}
		return dotenv, environ
	}}, nil
}

// MapSource is a Source over a map, for tests and embedded use.
func MapSource(m map[string]string) Source {
	return Source{Lookup: func(name string) (string, bool) {
		v, ok := m[name]
		return v, ok
	}}
}

// Loader binds every variable to a flag on a FlagSet and, after the flags are
// parsed, builds the Config: flag over environment over .env over default.
type Loader struct {
	src   Source
	flags map[string]*string // var name -> flag value
	set   map[string]bool
	fs    *flag.FlagSet
}

// NewLoader registers one flag per variable (SLOT_NAME -> --slot-name) on fs.
func NewLoader(src Source, fs *flag.FlagSet) *Loader {
	l := &Loader{src: src, flags: map[string]*string{}, set: map[string]bool{}, fs: fs}
	if fs != nil {
		for _, v := range Vars {
			l.flags[v.Name] = fs.String(v.FlagName(), "", v.Help+" (env "+v.Name+", default "+quoteDefault(v.Default)+")")
		}
	}
	return l
}

func quoteDefault(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Load validates all values and returns the first problem as *Error.
func (l *Loader) Load() (*Config, error) {
	if l.fs != nil {
		l.fs.Visit(func(f *flag.Flag) { l.set[f.Name] = true })
	}
	cfg := &Config{}
	var errs Errors
	for _, v := range Vars {
		// An empty value means "not set", as compose files pass unset
		// variables through as empty strings.
		raw := v.Default
		if s, ok := l.src.Lookup(v.Name); ok && strings.TrimSpace(s) != "" {
			raw = s
		}
		if p := l.flags[v.Name]; p != nil && l.set[v.FlagName()] && strings.TrimSpace(*p) != "" {
			raw = *p
		}
		if err := v.parse(cfg, strings.TrimSpace(raw)); err != nil {
			errs = append(errs, newError(v.Name, err.Error()))
		}
	}
	if len(errs) > 0 {
		return nil, join(errs) // every one at once
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.Warnings = l.unknownNames()
	return cfg, nil
}

// Load reads the configuration from src alone (no flags).
func Load(src Source) (*Config, error) { return NewLoader(src, nil).Load() }

// check validates relations between values.
func (c *Config) check() error {
	if c.RetryMaxDelay < c.RetryInitialDelay {
		return newError("RETRY_MAX_DELAY", fmt.Sprintf("must be at least RETRY_INITIAL_DELAY (%d ms)", c.RetryInitialDelay.Milliseconds()))
	}
	if c.LagCritical < c.LagWarn {
		return newError("LAG_CRITICAL", fmt.Sprintf("must be at least LAG_WARN (%s)", c.LagWarn))
	}
	for _, k := range c.KeyColumns {
		if !contains(c.Columns, k) {
			return newError("SYNC_COLUMNS", fmt.Sprintf("must include the key column %s (KEY_COLUMNS)", ident.Display(k)))
		}
	}
	if !contains(c.Columns, c.UpdatedAtColumn) {
		return newError("SYNC_COLUMNS", fmt.Sprintf("must include UPDATED_AT_COLUMN %s", ident.Display(c.UpdatedAtColumn)))
	}
	for _, s := range c.SecretColumns {
		if contains(c.Columns, s) {
			return newError("SYNC_COLUMNS", fmt.Sprintf("must not include %s: it is listed in SECRET_COLUMNS and never leaves the source", ident.Display(s)))
		}
	}
	return nil
}

// ReplicationDSN is the DSN of the replication connection.
func (c *Config) ReplicationDSN() string {
	if c.ReplicationURL != "" {
		return c.ReplicationURL
	}
	return c.SourceURL
}

// RequireDatabases reports a missing SOURCE_DATABASE_URL or CHAT_DATABASE_URL.
func (c *Config) RequireDatabases() error {
	var errs Errors
	if c.SourceURL == "" {
		errs = append(errs, newError("SOURCE_DATABASE_URL", "is required: a postgres:// URL or key=value DSN of the backend database (myusta_backend)"))
	}
	if c.ChatURL == "" {
		errs = append(errs, newError("CHAT_DATABASE_URL", "is required: a postgres:// URL or key=value DSN of the chat database (myusta_chatapp)"))
	}
	return join(errs)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Names lists every variable name, sorted, for documentation checks.
func Names() []string {
	out := make([]string, 0, len(Vars))
	for _, v := range Vars {
		out = append(out, v.Name)
	}
	sort.Strings(out)
	return out
}
