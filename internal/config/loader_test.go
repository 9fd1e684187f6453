package config_test

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/myusta/cdc/internal/config"
)

// isolateEnv removes every configuration variable from the process
// environment for the duration of the test (restored by t.Setenv).
func isolateEnv(t *testing.T) {
	t.Helper()
	for _, name := range config.Names() {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
}

func writeDotenv(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoader_Precedence(t *testing.T) {
	isolateEnv(t)
	path := writeDotenv(t, strings.Join([]string{
		"# layered configuration",
		"SLOT_NAME=from_file",
		"PUBLICATION_NAME=from_file",
		"BATCH_MAX_ROWS=42",
		"",
	}, "\n"))
	t.Setenv("SLOT_NAME", "from_env")
	t.Setenv("PUBLICATION_NAME", "from_env")

	src, err := config.EnvSource(path)
	if err != nil {
		t.Fatalf("EnvSource: %v", err)
	}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	loader := config.NewLoader(src, fs)
	if err := fs.Parse([]string{"--slot-name=from_flag"}); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	cfg, err := loader.Load()
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	tests := []struct {
		layer, got, want string
	}{
		{"flag beats env and file", cfg.SlotName, "from_flag"},
		{"env beats file", cfg.PublicationName, "from_env"},
		{"default when set nowhere", cfg.HTTPAddr, "127.0.0.1:8080"},
	}
	for _, tt := range tests {
		t.Run(tt.layer, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
	t.Run("file beats default", func(t *testing.T) {
		if cfg.BatchMaxRows != 42 {
			t.Errorf("BatchMaxRows = %d, want 42 from .env", cfg.BatchMaxRows)
		}
	})
}

func TestLoader_FlagErrorsAndUnsetFlags(t *testing.T) {
	tests := []struct {
		name    string
		src     map[string]string
		args    []string
		wantVar string // "" = no error
		check   func(t *testing.T, c *config.Config)
	}{
		{
			name: "bad flag value beats good env", src: map[string]string{"SLOT_NAME": "ok"},
			args: []string{"--slot-name", "Bad-Name"}, wantVar: "SLOT_NAME",
		},
		{
			name: "good flag value beats bad env", src: map[string]string{"BATCH_MAX_ROWS": "0"},
			args: []string{"--batch-max-rows=5"},
			check: func(t *testing.T, c *config.Config) {
				if c.BatchMaxRows != 5 {
					t.Errorf("BatchMaxRows = %d, want 5", c.BatchMaxRows)
				}
			},
		},
		{
			name: "unset flags leave source values", src: map[string]string{"SYNC_MODE": "notify"},
			args: nil,
			check: func(t *testing.T, c *config.Config) {
				if c.Mode != config.ModeNotify {
					t.Errorf("Mode = %q, want notify", c.Mode)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			loader := config.NewLoader(config.MapSource(tt.src), fs)
			if err := fs.Parse(tt.args); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			cfg, err := loader.Load()
			if tt.wantVar != "" {
				if ce := configError(t, err); ce.Var != tt.wantVar {
					t.Errorf("Var = %q, want %q", ce.Var, tt.wantVar)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.check(t, cfg)
		})
	}
}

func TestNewLoader_RegistersOneFlagPerVar(t *testing.T) {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	config.NewLoader(config.MapSource(nil), fs)
	for _, v := range config.Vars {
		f := fs.Lookup(v.FlagName())
		if f == nil {
			t.Errorf("no flag --%s for %s", v.FlagName(), v.Name)
			continue
		}
		if !strings.Contains(f.Usage, v.Name) {
			t.Errorf("usage of --%s does not name %s: %q", f.Name, v.Name, f.Usage)
		}
	}
	if got := (config.Var{Name: "SLOT_NAME"}).FlagName(); got != "slot-name" {
		t.Errorf("FlagName(SLOT_NAME) = %q, want slot-name", got)
	}
}

func TestEnvSource(t *testing.T) {
	tests := []struct {
		name    string
		path    func(t *testing.T) string
		wantErr bool
		lookup  string // variable to look up when no error
		want    string
		wantOK  bool
	}{
		{
			name:   "missing file is fine",
			path:   func(t *testing.T) string { return filepath.Join(t.TempDir(), "absent.env") },
			lookup: "SLOT_NAME", wantOK: false,
		},
		{
			name:   "empty path is fine",
			path:   func(t *testing.T) string { return "" },
			lookup: "SLOT_NAME", wantOK: false,
		},
		{
			name: "values read from file",
			path: func(t *testing.T) string {
				return writeDotenv(t, "export SLOT_NAME=s_file\nPUBLICATION_NAME='pub_quoted' # comment\n")
			},
			lookup: "PUBLICATION_NAME", want: "pub_quoted", wantOK: true,
		},
		{
			name:    "directory fails to read",
			path:    func(t *testing.T) string { return t.TempDir() },
			wantErr: true,
		},
		{
			name: "path through a regular file fails",
			path: func(t *testing.T) string {
				return filepath.Join(writeDotenv(t, "A=b\n"), ".env")
			},
			wantErr: true,
		},
		{
			name:    "unparsable file fails",
			path:    func(t *testing.T) string { return writeDotenv(t, "SLOT_NAME='unterminated\n") },
			wantErr: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			isolateEnv(t)
			path := tt.path(t)
			src, err := config.EnvSource(path)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("EnvSource(%q): want error, got nil", path)
				}
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the path %q", err, path)
				}
				return
			}
			if err != nil {
				t.Fatalf("EnvSource(%q): %v", path, err)
			}
			got, ok := src.Lookup(tt.lookup)
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("Lookup(%s) = %q, %v; want %q, %v", tt.lookup, got, ok, tt.want, tt.wantOK)
			}
			// A missing file still yields a usable source with defaults.
			if _, err := config.NewLoader(src, nil).Load(); err != nil {
				t.Errorf("Load: %v", err)
			}
		})
	}
}

func TestEnvSource_EnvironmentOverFile(t *testing.T) {
	isolateEnv(t)
	path := writeDotenv(t, "SLOT_NAME=from_file\nSYNC_MODE=notify\n")
	t.Setenv("SLOT_NAME", "from_env")
	src, err := config.EnvSource(path)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, want string }{
		{"SLOT_NAME", "from_env"},
		{"SYNC_MODE", "notify"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, ok := src.Lookup(tt.name); !ok || got != tt.want {
				t.Errorf("Lookup(%s) = %q, %v; want %q, true", tt.name, got, ok, tt.want)
			}
		})
	}
}

func TestNames(t *testing.T) {
	names := config.Names()
	if !sort.StringsAreSorted(names) {
		t.Errorf("Names() not sorted: %v", names)
	}
	if len(names) != len(config.Vars) {
		t.Fatalf("len(Names()) = %d, want %d", len(names), len(config.Vars))
	}
	count := map[string]int{}
	for _, n := range names {
		count[n]++
	}
	for _, v := range config.Vars {
		if count[v.Name] != 1 {
			t.Errorf("%s appears %d times in Names(), want 1", v.Name, count[v.Name])
		}
	}
	for _, want := range []string{"SOURCE_DATABASE_URL", "CHAT_DATABASE_URL", "SLOT_NAME", "SECRET_COLUMNS"} {
		if count[want] != 1 {
			t.Errorf("Names() lacks %s", want)
		}
	}
}
