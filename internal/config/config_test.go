package config_test

import (
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/ident"
)

// validDSN parses with pgconn without touching the network.
const validDSN = "postgres://u:p@localhost:5432/db?sslmode=disable"

// mustLoad loads from a map source and fails the test on error.
func mustLoad(t *testing.T, m map[string]string) *config.Config {
	t.Helper()
	cfg, err := config.Load(config.MapSource(m))
	if err != nil {
		t.Fatalf("Load(%v): unexpected error: %v", m, err)
	}
	return cfg
}

// configError asserts err is a *config.Error and returns it.
func configError(t *testing.T, err error) *config.Error {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got nil")
	}
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *config.Error", err, err)
	}
	return ce
}

func TestLoad_Defaults(t *testing.T) {
	cfg := mustLoad(t, map[string]string{})

	want := &config.Config{
		SourceURL:             "",
		ChatURL:               "",
		Mode:                  config.ModeReplication,
		SyncInterval:          time.Minute,
		WindowMultiplier:      3,
		FullReconcileInterval: time.Hour,
		SourcePoolSize:        10,
		ChatPoolSize:          10,
		MaxRetries:            3,
		RetryInitialDelay:     time.Second,
		RetryMaxDelay:         30 * time.Second,
		RetryMultiplier:       2,
		MaxReconnectAttempts:  10,
		SlotName:              "cdc_users",
		PublicationName:       "cdc_users",
		BatchMaxRows:          10000,
		BatchMaxMB:            2,
		BatchMaxWait:          10 * time.Millisecond,
		AsyncCommit:           true,
		CopyWorkers:           2,
		StatusInterval:        10 * time.Second,
		SlotWALWarnBytes:      1 << 30,
		LagWarn:               30 * time.Second,
		LagCritical:           5 * time.Minute,
		HTTPAddr:              "127.0.0.1:8080",
		LogLevel:              slog.LevelInfo,
		LogFormat:             "auto",
		SourceTable:           ident.Table{Schema: "public", Name: "users"},
		ChatTable:             ident.Table{Schema: "public", Name: "users"},
		Columns:               strings.Split(config.DefaultColumns, ","),
		ChatColumns:           strings.Split(config.DefaultColumns, ","),
		UpdatedAtColumn:       "updated_at",
		SecretColumns:         []string{"password_hash"},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", *cfg, *want)
	}
	for _, c := range cfg.Columns {
		if c == "password_hash" {
			t.Errorf("default SYNC_COLUMNS contains password_hash: %v", cfg.Columns)
		}
	}
}

// TestLoad_DefaultsMatchVars checks the documented Default of each Var is
// what an empty source produces, and that every default is itself valid.
func TestLoad_DefaultsMatchVars(t *testing.T) {
	m := map[string]string{}
	for _, v := range config.Vars {
		if v.Default != "" {
			m[v.Name] = v.Default
		}
	}
	explicit := mustLoad(t, m)
	implicit := mustLoad(t, map[string]string{})
	if !reflect.DeepEqual(explicit, implicit) {
		t.Errorf("explicit defaults differ from implicit ones:\n got %+v\nwant %+v", *explicit, *implicit)
	}
}

func TestLoad_RejectsBadValues(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
		wantMsg string // fragment of what is accepted
	}{
		{"source dsn malformed url", map[string]string{"SOURCE_DATABASE_URL": "postgres://u@host:notaport/db"}, "SOURCE_DATABASE_URL", "not a valid PostgreSQL DSN"},
		{"source dsn malformed kv", map[string]string{"SOURCE_DATABASE_URL": "host=x port=abc"}, "SOURCE_DATABASE_URL", "postgres://user:pass@host:5432/db"},
		{"chat dsn malformed", map[string]string{"CHAT_DATABASE_URL": "postgres://u@host:99x/db"}, "CHAT_DATABASE_URL", "not a valid PostgreSQL DSN"},
		{"replication dsn malformed", map[string]string{"SOURCE_REPLICATION_URL": "postgres://u@host:99x/db"}, "SOURCE_REPLICATION_URL", "not a valid PostgreSQL DSN"},
		{"primary dsn malformed", map[string]string{"SOURCE_PRIMARY_URL": "host=h port=x"}, "SOURCE_PRIMARY_URL", "not a valid PostgreSQL DSN"},
		{"sync mode", map[string]string{"SYNC_MODE": "x"}, "SYNC_MODE", "use replication or notify"},
		{"example password", map[string]string{"CHAT_DATABASE_URL": "host=h user=u password='change-me'"}, "CHAT_DATABASE_URL", "example password change-me"},
		{"source run role not an identifier", map[string]string{"SOURCE_RUN_ROLE": "Cdc-Reader"}, "SOURCE_RUN_ROLE", "unexpected"},
		{"chat run role with a quote", map[string]string{"CHAT_RUN_ROLE": `x"; DROP TABLE users; --`}, "CHAT_RUN_ROLE", "unexpected"},
		{"slot WAL warning with a unit", map[string]string{"SLOT_WAL_WARN_MB": "1GB"}, "SLOT_WAL_WARN_MB", "megabytes from 1"},
		{"sync interval zero", map[string]string{"SYNC_INTERVAL_MINUTES": "0"}, "SYNC_INTERVAL_MINUTES", "from 0.001 to 1440"},
		{"sync interval negative", map[string]string{"SYNC_INTERVAL_MINUTES": "-1"}, "SYNC_INTERVAL_MINUTES", "from 0.001 to 1440"},
		{"sync interval text", map[string]string{"SYNC_INTERVAL_MINUTES": "abc"}, "SYNC_INTERVAL_MINUTES", "a number of minutes"},
		{"sync interval NaN", map[string]string{"SYNC_INTERVAL_MINUTES": "NaN"}, "SYNC_INTERVAL_MINUTES", "a number of minutes"},
		{"sync interval Inf", map[string]string{"SYNC_INTERVAL_MINUTES": "+Inf"}, "SYNC_INTERVAL_MINUTES", "a number of minutes"},
		{"sync interval too big", map[string]string{"SYNC_INTERVAL_MINUTES": "1441"}, "SYNC_INTERVAL_MINUTES", "from 0.001 to 1440"},
		{"window multiplier below 1", map[string]string{"SYNC_WINDOW_MULTIPLIER": "0.5"}, "SYNC_WINDOW_MULTIPLIER", "from 1 to 1000"},
		{"window multiplier NaN", map[string]string{"SYNC_WINDOW_MULTIPLIER": "nan"}, "SYNC_WINDOW_MULTIPLIER", "from 1 to 1000"},
		{"full reconcile without unit", map[string]string{"FULL_RECONCILE_INTERVAL": "5"}, "FULL_RECONCILE_INTERVAL", "0 for off"},
		{"full reconcile negative", map[string]string{"FULL_RECONCILE_INTERVAL": "-1h"}, "FULL_RECONCILE_INTERVAL", "such as 1h or 30m"},
		{"full reconcile too long", map[string]string{"FULL_RECONCILE_INTERVAL": "721h"}, "FULL_RECONCILE_INTERVAL", "such as 1h or 30m"},
		{"source pool zero", map[string]string{"SOURCE_DB_POOL_SIZE": "0"}, "SOURCE_DB_POOL_SIZE", "from 1 to 1000"},
		{"source pool text", map[string]string{"SOURCE_DB_POOL_SIZE": "ten"}, "SOURCE_DB_POOL_SIZE", "an integer"},
		{"chat pool zero", map[string]string{"CHAT_DB_POOL_SIZE": "0"}, "CHAT_DB_POOL_SIZE", "from 2 to 1000"},
		{"chat pool one", map[string]string{"CHAT_DB_POOL_SIZE": "1"}, "CHAT_DB_POOL_SIZE", "from 2 to 1000"},
		{"max retries negative", map[string]string{"MAX_RETRIES": "-1"}, "MAX_RETRIES", "from 0 to 100"},
		{"max retries fractional", map[string]string{"MAX_RETRIES": "1.5"}, "MAX_RETRIES", "an integer"},
		{"retry initial zero", map[string]string{"RETRY_INITIAL_DELAY": "0"}, "RETRY_INITIAL_DELAY", "milliseconds from 1 to 3600000"},
		{"retry initial with unit", map[string]string{"RETRY_INITIAL_DELAY": "1s"}, "RETRY_INITIAL_DELAY", "milliseconds"},
		{"retry max zero", map[string]string{"RETRY_MAX_DELAY": "0"}, "RETRY_MAX_DELAY", "milliseconds from 1 to 3600000"},
		{"retry max below initial", map[string]string{"RETRY_INITIAL_DELAY": "5000", "RETRY_MAX_DELAY": "4999"}, "RETRY_MAX_DELAY", "at least RETRY_INITIAL_DELAY (5000 ms)"},
		{"retry multiplier below 1", map[string]string{"RETRY_BACKOFF_MULTIPLIER": "0.5"}, "RETRY_BACKOFF_MULTIPLIER", "from 1 to 10"},
		{"reconnect attempts text", map[string]string{"MAX_RECONNECT_ATTEMPTS": "x"}, "MAX_RECONNECT_ATTEMPTS", "an integer from 0 to 1000"},
		{"slot name upper and dash", map[string]string{"SLOT_NAME": "Bad-Name"}, "SLOT_NAME", "lower-case letters, digits or underscores"},
		{"slot name too long", map[string]string{"SLOT_NAME": strings.Repeat("a", 64)}, "SLOT_NAME", "1-63"},
		{"publication name with space", map[string]string{"PUBLICATION_NAME": "has space"}, "PUBLICATION_NAME", "unexpected"},
		{"batch max rows zero", map[string]string{"BATCH_MAX_ROWS": "0"}, "BATCH_MAX_ROWS", "from 1 to 1000000"},
		{"batch max mb too large", map[string]string{"BATCH_MAX_MB": "2048"}, "BATCH_MAX_MB", "megabytes from 1 to 1024"},
		{"batch wait without unit", map[string]string{"BATCH_MAX_WAIT": "5"}, "BATCH_MAX_WAIT", "from 0 to 1s"},
		{"batch wait too long", map[string]string{"BATCH_MAX_WAIT": "2s"}, "BATCH_MAX_WAIT", "from 0 to 1s"},
		{"commit mode not on/off", map[string]string{"CHAT_SYNCHRONOUS_COMMIT": "local"}, "CHAT_SYNCHRONOUS_COMMIT", "on or off"},
		{"no copy workers", map[string]string{"COPY_WORKERS": "0"}, "COPY_WORKERS", "from 1 to 16"},
		{"too many copy workers", map[string]string{"COPY_WORKERS": "17"}, "COPY_WORKERS", "from 1 to 16"},
		{"copy workers not a number", map[string]string{"COPY_WORKERS": "two"}, "COPY_WORKERS", "from 1 to 16"},
		{"status interval too long", map[string]string{"STANDBY_STATUS_INTERVAL": "11s"}, "STANDBY_STATUS_INTERVAL", "from 100ms to 10s"},
		{"status interval too short", map[string]string{"STANDBY_STATUS_INTERVAL": "99ms"}, "STANDBY_STATUS_INTERVAL", "from 100ms to 10s"},
		{"status interval zero", map[string]string{"STANDBY_STATUS_INTERVAL": "0"}, "STANDBY_STATUS_INTERVAL", "from 100ms to 10s"},
		{"slot wal warn zero", map[string]string{"SLOT_WAL_WARN_MB": "0"}, "SLOT_WAL_WARN_MB", "megabytes from 1"},
		{"lag warn without unit", map[string]string{"LAG_WARN": "30"}, "LAG_WARN", "from 1s to 24h"},
		{"lag warn below a second", map[string]string{"LAG_WARN": "500ms"}, "LAG_WARN", "from 1s to 24h"},
		{"lag critical too long", map[string]string{"LAG_CRITICAL": "200h"}, "LAG_CRITICAL", "from 1s to 168h"},
		{"lag critical below warn", map[string]string{"LAG_WARN": "2m", "LAG_CRITICAL": "1m"}, "LAG_CRITICAL", "at least LAG_WARN (2m0s)"},
		{"http addr nonsense", map[string]string{"HTTP_ADDR": "nonsense"}, "HTTP_ADDR", "host:port"},
		{"http addr without port", map[string]string{"HTTP_ADDR": "127.0.0.1:"}, "HTTP_ADDR", "e.g. 127.0.0.1:8080"},
		{"http addr port out of range", map[string]string{"HTTP_ADDR": "127.0.0.1:99999"}, "HTTP_ADDR", "host:port"},
		{"web config missing", map[string]string{"WEB_CONFIG_FILE": "/nonexistent/web.yml"}, "WEB_CONFIG_FILE", "readable web configuration file"},
		{"spool dir missing", map[string]string{"SPOOL_DIR": "/nonexistent/spool"}, "SPOOL_DIR", "existing directory cdc can write to"},
		{"alert webhook relative", map[string]string{"ALERT_WEBHOOK_URL": "hooks.slack.com/services/T0/B0/x"}, "ALERT_WEBHOOK_URL", "not an absolute URL"},
		{"alert webhook ftp", map[string]string{"ALERT_WEBHOOK_URL": "ftp://example.com/hook"}, "ALERT_WEBHOOK_URL", "absolute http:// or https:// URL"},
		{"alert webhook no host", map[string]string{"ALERT_WEBHOOK_URL": "https:///services/x"}, "ALERT_WEBHOOK_URL", "has no host"},
		{"alert webhook bad port", map[string]string{"ALERT_WEBHOOK_URL": "https://example.com:99999/x"}, "ALERT_WEBHOOK_URL", "port"},
		{"log level", map[string]string{"LOG_LEVEL": "loud"}, "LOG_LEVEL", "debug, info, warn or error"},
		{"log format", map[string]string{"LOG_FORMAT": "xml"}, "LOG_FORMAT", "text, json or auto"},
		{"source table three parts", map[string]string{"SOURCE_TABLE": "a.b.c"}, "SOURCE_TABLE", "table or schema.table"},
		{"source table unterminated quote", map[string]string{"SOURCE_TABLE": `public."Users`}, "SOURCE_TABLE", "unterminated"},
		{"chat table empty schema", map[string]string{"CHAT_TABLE": ".users"}, "CHAT_TABLE", "a name is"},
		{"table name too long", map[string]string{"CHAT_TABLE": strings.Repeat("u", 64)}, "CHAT_TABLE", "at most 63"},
		{"sync columns only commas", map[string]string{"SYNC_COLUMNS": " , ,"}, "SYNC_COLUMNS", "list the columns to copy"},
		{"sync columns duplicate", map[string]string{"SYNC_COLUMNS": "id,email,updated_at,email"}, "SYNC_COLUMNS", `names email twice`},
		{"sync columns duplicate after folding", map[string]string{"SYNC_COLUMNS": "id,email,updated_at,EMAIL"}, "SYNC_COLUMNS", `names email twice`},
		{"sync columns mapped twice", map[string]string{"SYNC_COLUMNS": "id,updated_at,a AS x,b AS x"}, "SYNC_COLUMNS", "two columns to x"},
		{"sync columns bad name", map[string]string{"SYNC_COLUMNS": "id,updated_at,E-mail"}, "SYNC_COLUMNS", "separate names with commas"},
		{"sync columns without key", map[string]string{"KEY_COLUMNS": "id", "SYNC_COLUMNS": "email,updated_at"}, "SYNC_COLUMNS", `the key column id`},
		{"sync columns without updated_at", map[string]string{"SYNC_COLUMNS": "id,email"}, "SYNC_COLUMNS", `UPDATED_AT_COLUMN updated_at`},
		{"sync columns with secret", map[string]string{"SYNC_COLUMNS": "id,updated_at,password_hash"}, "SYNC_COLUMNS", "SECRET_COLUMNS"},
		{"sync columns with custom secret", map[string]string{"SECRET_COLUMNS": "email", "SYNC_COLUMNS": "id,email,updated_at"}, "SYNC_COLUMNS", "SECRET_COLUMNS"},
		{"key columns injection", map[string]string{"KEY_COLUMNS": "Id;drop"}, "KEY_COLUMNS", "unexpected"},
		{"key columns not synced", map[string]string{"KEY_COLUMNS": "uuid"}, "SYNC_COLUMNS", `the key column uuid`},
		{"key columns mapped", map[string]string{"KEY_COLUMNS": "id AS x"}, "KEY_COLUMNS", "only allowed in SYNC_COLUMNS"},
		{"key column and key columns", map[string]string{"KEY_COLUMNS": "id", "KEY_COLUMN": "id"}, "KEY_COLUMN", "keep only KEY_COLUMNS"},
		{"updated_at column bad", map[string]string{"UPDATED_AT_COLUMN": "updated at"}, "UPDATED_AT_COLUMN", "unexpected"},
		{"secret columns bad", map[string]string{"SECRET_COLUMNS": "password_hash,To ken"}, "SECRET_COLUMNS", "separate names with commas"},
		{"wire format", map[string]string{"WIRE_FORMAT": "json"}, "WIRE_FORMAT", "auto, binary or text"},
		{"publication name quoted badly", map[string]string{"PUBLICATION_NAME": `"cdc`}, "PUBLICATION_NAME", "unterminated"},
		{"secret columns duplicate", map[string]string{"SECRET_COLUMNS": "a,a"}, "SECRET_COLUMNS", `names a twice`},
	}

	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.wantVar] = true
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Load(config.MapSource(tt.env))
			if cfg != nil {
				t.Errorf("Load returned a config alongside the error: %+v", *cfg)
			}
			ce := configError(t, err)
			if ce.Var != tt.wantVar {
				t.Errorf("Var = %q, want %q (error: %v)", ce.Var, tt.wantVar, err)
			}
			if !strings.Contains(ce.Msg, tt.wantMsg) {
				t.Errorf("Msg = %q, want it to contain %q", ce.Msg, tt.wantMsg)
			}
			if got, want := err.Error(), tt.wantVar+": "; !strings.HasPrefix(got, want) {
				t.Errorf("Error() = %q, want prefix %q", got, want)
			}
		})
	}

	// Every variable can be set to something invalid; make sure the table
	// exercises each one so a new variable without a case is noticed.
	t.Run("every var covered", func(t *testing.T) {
		for _, name := range config.Names() {
			if !covered[name] {
				t.Errorf("no bad-value case for %s", name)
			}
		}
	})
}

// TestLoad_ParseErrorsNameTheFlag checks that a bad value reports the flag
// that sets it (SLOT_NAME -> --slot-name).
func TestLoad_ParseErrorsNameTheFlag(t *testing.T) {
	_, err := config.Load(config.MapSource(map[string]string{"SLOT_NAME": "Bad-Name"}))
	ce := configError(t, err)
	if ce.Flag != "--slot-name" {
		t.Errorf("Flag = %q, want --slot-name", ce.Flag)
	}
}

func TestLoad_ErrorsNeverContainDSNPassword(t *testing.T) {
	const secret = "Sup3rSecret"
	tests := []struct {
		name, varName, dsn string
	}{
		{"url bad port", "SOURCE_DATABASE_URL", "postgres://u:" + secret + "@host:notaport/db"},
		{"url bad port chat", "CHAT_DATABASE_URL", "postgres://u:" + secret + "@host:notaport/db"},
		{"url bad sslmode", "SOURCE_DATABASE_URL", "postgres://u:" + secret + "@host/db?sslmode=" + secret},
		{"kv bad port", "SOURCE_DATABASE_URL", "host=x password=" + secret + " port=notaport"},
		{"kv unterminated quote", "SOURCE_DATABASE_URL", "host=x password='" + secret},
		{"url bad escape", "SOURCE_DATABASE_URL", "postgres://u:" + secret + "%zz@host/db"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Load(config.MapSource(map[string]string{tt.varName: tt.dsn}))
			ce := configError(t, err)
			if ce.Var != tt.varName {
				t.Errorf("Var = %q, want %q", ce.Var, tt.varName)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error message leaks the password: %q", err.Error())
			}
		})
	}
}

// TestLoad_AlertWebhookURLErrorsQuoteNothing: the user, password, path
// and query of a webhook URL can each be its token; no error repeats them.
func TestLoad_AlertWebhookURLErrorsQuoteNothing(t *testing.T) {
	const secret = "Sup3rSecret"
	for _, raw := range []string{
		"https://u:" + secret + "@example.com:notaport/hook?token=" + secret,
		"https://u:" + secret + "%zz@example.com/hook",
		"ftp://u:" + secret + "@example.com/" + secret + "?token=" + secret,
		"example.com/services/" + secret,
		"https://u:" + secret + "@/services/" + secret,
		"https://example.com/\x7f" + secret + "\x00",
	} {
		_, err := config.Load(config.MapSource(map[string]string{"ALERT_WEBHOOK_URL": raw}))
		ce := configError(t, err)
		if ce.Var != "ALERT_WEBHOOK_URL" || !strings.Contains(ce.Msg, "http:// or https://") {
			t.Errorf("%q: error %q; want ALERT_WEBHOOK_URL and what it accepts", raw, err)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error quotes the URL's secret: %q", err)
		}
	}
	for _, ok := range []string{"", "https://hooks.slack.com/services/T0/B0/x", "http://127.0.0.1:9000/alerts?token=x", "https://u:p@example.com"} {
		cfg := mustLoad(t, map[string]string{"ALERT_WEBHOOK_URL": ok})
		if cfg.AlertWebhookURL != ok {
			t.Errorf("AlertWebhookURL = %q, want %q", cfg.AlertWebhookURL, ok)
		}
	}
}

func TestLoad_AcceptsValues(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c *config.Config)
	}{
		{"fractional interval", map[string]string{"SYNC_INTERVAL_MINUTES": "0.05"}, func(t *testing.T, c *config.Config) {
			if c.SyncInterval != 3*time.Second {
				t.Errorf("SyncInterval = %v, want 3s", c.SyncInterval)
			}
		}},
		{"smallest interval", map[string]string{"SYNC_INTERVAL_MINUTES": "0.001"}, func(t *testing.T, c *config.Config) {
			if c.SyncInterval != 60*time.Millisecond {
				t.Errorf("SyncInterval = %v, want 60ms", c.SyncInterval)
			}
		}},
		{"full reconcile off", map[string]string{"FULL_RECONCILE_INTERVAL": "0"}, func(t *testing.T, c *config.Config) {
			if c.FullReconcileInterval != 0 {
				t.Errorf("FullReconcileInterval = %v, want 0 (off)", c.FullReconcileInterval)
			}
		}},
		{"full reconcile 30m", map[string]string{"FULL_RECONCILE_INTERVAL": "30m"}, func(t *testing.T, c *config.Config) {
			if c.FullReconcileInterval != 30*time.Minute {
				t.Errorf("FullReconcileInterval = %v, want 30m", c.FullReconcileInterval)
			}
		}},
		{"unqualified tables", map[string]string{"SOURCE_TABLE": "users", "CHAT_TABLE": "chat_users"}, func(t *testing.T, c *config.Config) {
			if c.SourceTable != (ident.Table{Schema: "public", Name: "users"}) || c.ChatTable != (ident.Table{Schema: "public", Name: "chat_users"}) {
				t.Errorf("tables = %v, %v; want public.users, public.chat_users", c.SourceTable, c.ChatTable)
			}
		}},
		{"qualified table kept", map[string]string{"SOURCE_TABLE": "app.users"}, func(t *testing.T, c *config.Config) {
			if c.SourceTable != (ident.Table{Schema: "app", Name: "users"}) {
				t.Errorf("SourceTable = %v, want app.users", c.SourceTable)
			}
		}},
		{"quoted names keep their case, unquoted fold", map[string]string{"SOURCE_TABLE": `Public."Users"`,
			"SYNC_COLUMNS": `"id", "firstName", Email, "createdAt" AS created_at, "updatedAt"`, "UPDATED_AT_COLUMN": `"updatedAt"`,
			"KEY_COLUMNS": `"id"`, "SECRET_COLUMNS": `"password"`, "PUBLICATION_NAME": `"Cdc Pub"`}, func(t *testing.T, c *config.Config) {
			if c.SourceTable != (ident.Table{Schema: "public", Name: "Users"}) {
				t.Errorf("SourceTable = %#v", c.SourceTable)
			}
			if want := []string{"id", "firstName", "email", "createdAt", "updatedAt"}; !reflect.DeepEqual(c.Columns, want) {
				t.Errorf("Columns = %q, want %q", c.Columns, want)
			}
			if want := []string{"id", "firstName", "email", "created_at", "updatedAt"}; !reflect.DeepEqual(c.ChatColumns, want) {
				t.Errorf("ChatColumns = %q, want %q", c.ChatColumns, want)
			}
			if c.UpdatedAtColumn != "updatedAt" || c.PublicationName != "Cdc Pub" || !reflect.DeepEqual(c.SecretColumns, []string{"password"}) ||
				!reflect.DeepEqual(c.KeyColumns, []string{"id"}) || c.ChatName("createdAt") != "created_at" {
				t.Errorf("UpdatedAtColumn, PublicationName, SecretColumns, KeyColumns = %q, %q, %q, %q", c.UpdatedAtColumn, c.PublicationName, c.SecretColumns, c.KeyColumns)
			}
		}},
		{"older KEY_COLUMN", map[string]string{"KEY_COLUMN": "id"}, func(t *testing.T, c *config.Config) {
			if !reflect.DeepEqual(c.KeyColumns, []string{"id"}) {
				t.Errorf("KeyColumns = %q, want [id]", c.KeyColumns)
			}
		}},
		{"multi-column key", map[string]string{"KEY_COLUMNS": "tenant_id, id", "SYNC_COLUMNS": "tenant_id,id,updated_at"}, func(t *testing.T, c *config.Config) {
			if !reflect.DeepEqual(c.KeyColumns, []string{"tenant_id", "id"}) {
				t.Errorf("KeyColumns = %q", c.KeyColumns)
			}
		}},
		{"values are trimmed", map[string]string{"SYNC_MODE": "  notify\t", "SLOT_NAME": " s1 "}, func(t *testing.T, c *config.Config) {
			if c.Mode != config.ModeNotify || c.SlotName != "s1" {
				t.Errorf("Mode, SlotName = %q, %q; want notify, s1", c.Mode, c.SlotName)
			}
		}},
		{"column list trimmed", map[string]string{"SYNC_COLUMNS": " id , email,,updated_at "}, func(t *testing.T, c *config.Config) {
			if want := []string{"id", "email", "updated_at"}; !reflect.DeepEqual(c.Columns, want) {
				t.Errorf("Columns = %q, want %q", c.Columns, want)
			}
		}},
		{"empty values mean the default", map[string]string{"SYNC_MODE": "", "SYNC_COLUMNS": " ", "SECRET_COLUMNS": ""}, func(t *testing.T, c *config.Config) {
			if c.Mode != config.ModeReplication || strings.Join(c.Columns, ",") != config.DefaultColumns {
				t.Errorf("Mode = %q, Columns = %q; want the defaults", c.Mode, c.Columns)
			}
			// An empty SECRET_COLUMNS cannot switch the protection off.
			if strings.Join(c.SecretColumns, ",") != "password_hash" {
				t.Errorf("SecretColumns = %q, want [password_hash]", c.SecretColumns)
			}
		}},
		{"retry delays in ms", map[string]string{"RETRY_INITIAL_DELAY": "250", "RETRY_MAX_DELAY": "250", "MAX_RETRIES": "0"}, func(t *testing.T, c *config.Config) {
			if c.RetryInitialDelay != 250*time.Millisecond || c.RetryMaxDelay != 250*time.Millisecond || c.MaxRetries != 0 {
				t.Errorf("retry = %v, %v, %d; want 250ms, 250ms, 0", c.RetryInitialDelay, c.RetryMaxDelay, c.MaxRetries)
			}
		}},
		{"log level and format", map[string]string{"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "json"}, func(t *testing.T, c *config.Config) {
			if c.LogLevel != slog.LevelDebug || c.LogFormat != "json" {
				t.Errorf("log = %v, %q; want DEBUG, json", c.LogLevel, c.LogFormat)
			}
		}},
		{"dsns kept verbatim", map[string]string{"SOURCE_DATABASE_URL": validDSN, "CHAT_DATABASE_URL": "host=localhost user=u dbname=chat"}, func(t *testing.T, c *config.Config) {
			if c.SourceURL != validDSN || c.ChatURL != "host=localhost user=u dbname=chat" {
				t.Errorf("URLs = %q, %q", c.SourceURL, c.ChatURL)
			}
		}},
		{"chat pool two", map[string]string{"CHAT_DB_POOL_SIZE": "2", "SOURCE_DB_POOL_SIZE": "1"}, func(t *testing.T, c *config.Config) {
			if c.ChatPoolSize != 2 || c.SourcePoolSize != 1 {
				t.Errorf("pools = %d, %d; want 2, 1", c.ChatPoolSize, c.SourcePoolSize)
			}
		}},
		{"lag thresholds", map[string]string{"LAG_WARN": "5s", "LAG_CRITICAL": "5s"}, func(t *testing.T, c *config.Config) {
			if c.LagWarn != 5*time.Second || c.LagCritical != 5*time.Second {
				t.Errorf("lag = %v, %v; want 5s, 5s", c.LagWarn, c.LagCritical)
			}
		}},
		{"http addr any host", map[string]string{"HTTP_ADDR": ":9090"}, func(t *testing.T, c *config.Config) {
			if c.HTTPAddr != ":9090" {
				t.Errorf("HTTPAddr = %q, want :9090", c.HTTPAddr)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, mustLoad(t, tt.env))
		})
	}
}

func TestConfig_RequireDatabases(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string // "" = no error
		wantMsg string
	}{
		{"both missing names source first", map[string]string{}, "SOURCE_DATABASE_URL", "is required"},
		{"source missing", map[string]string{"CHAT_DATABASE_URL": validDSN}, "SOURCE_DATABASE_URL", "backend database"},
		{"chat missing", map[string]string{"SOURCE_DATABASE_URL": validDSN}, "CHAT_DATABASE_URL", "chat database"},
		{"both set", map[string]string{"SOURCE_DATABASE_URL": validDSN, "CHAT_DATABASE_URL": validDSN}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := mustLoad(t, tt.env).RequireDatabases()
			if tt.wantVar == "" {
				if err != nil {
					t.Fatalf("RequireDatabases: %v", err)
				}
				return
			}
			ce := configError(t, err)
			if ce.Var != tt.wantVar {
				t.Errorf("Var = %q, want %q", ce.Var, tt.wantVar)
			}
			if !strings.Contains(ce.Msg, tt.wantMsg) {
				t.Errorf("Msg = %q, want it to contain %q", ce.Msg, tt.wantMsg)
			}
		})
	}
}

// TestLoad_EveryErrorAtOnce: several bad values are all reported, one per
// variable, and both missing DSNs are named together.
func TestLoad_EveryErrorAtOnce(t *testing.T) {
	_, err := config.Load(config.MapSource(map[string]string{"SYNC_MODE": "x", "SLOT_WAL_WARN_MB": "1GB", "MAX_RETRIES": "-3"}))
	var all config.Errors
	if !errors.As(err, &all) || len(all) != 3 {
		t.Fatalf("Load = %v, want the three errors at once", err)
	}
	for i, name := range []string{"SYNC_MODE", "MAX_RETRIES", "SLOT_WAL_WARN_MB"} {
		found := false
		for _, e := range all {
			found = found || e.Var == name
		}
		if !found {
			t.Errorf("error %d: %s not reported in %v", i, name, err)
		}
	}
	cfg := mustLoad(t, map[string]string{})
	if err := cfg.RequireDatabases(); !errors.As(err, &all) || len(all) != 2 {
		t.Errorf("RequireDatabases with neither DSN = %v, want both named", err)
	}
}

// TestLoad_DSNErrorNamesThePart: a DSN the driver refuses is described by
// the part that is wrong, without quoting any of it.
func TestLoad_DSNErrorNamesThePart(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"mysql://u:pw@host/db", "the scheme is not PostgreSQL's"},
		{"postgres://u:pw@host:99x/db", "the port is not a number"},
		{"postgres://u:p%zzw@host/db", "a % escape is invalid"},
		{"postgres://u:pw@host/db?sslmode=sometimes", "the parameter sslmode is not one of"},
		{"host=x port=abc", "the port is not a number"},
	} {
		_, err := config.Load(config.MapSource(map[string]string{"SOURCE_DATABASE_URL": tc.dsn}))
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "pw") {
			t.Errorf("%s: %v, want %q and no part of the DSN", tc.dsn, err, tc.want)
		}
	}
}

// TestLoad_WarnsAboutUnknownNames: an unknown .env key is a warning with
// the closest variable; an environment variable two edits from one too;
// unrelated environment variables and compose's own .env keys are not.
func TestLoad_WarnsAboutUnknownNames(t *testing.T) {
	vals := map[string]string{"SYNC_INTERVALL_MINUTES": "5", "CHAT_DATABSE_URL": "x", "HOME": "/root", "SOURCE_ADMIN_PASSWORD": "p"}
	src := config.MapSource(vals)
	src.Names = func() (dotenv, environ []string) {
		return []string{"SYNC_INTERVALL_MINUTES", "SOURCE_ADMIN_PASSWORD", "WHATEVER"}, []string{"CHAT_DATABSE_URL", "HOME", "PATH"}
	}
	cfg, err := config.Load(src)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(cfg.Warnings, "\n")
	for _, want := range []string{
		".env sets SYNC_INTERVALL_MINUTES, which is not a cdc variable: did you mean SYNC_INTERVAL_MINUTES?",
		".env sets WHATEVER, which is not a cdc variable",
		"the environment sets CHAT_DATABSE_URL, which is not a cdc variable: did you mean CHAT_DATABASE_URL?",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("warnings lack %q:\n%s", want, got)
		}
	}
	if len(cfg.Warnings) != 3 || strings.Contains(got, "HOME") || strings.Contains(got, "ADMIN") {
		t.Errorf("warnings:\n%s\nwant exactly those three", got)
	}
}
