package deploy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
)

// The Compose file loads with compose-go, the loader Docker Compose v2
// itself uses (schema validation, interpolation from .env, env_file
// resolution): no Docker engine or compose plugin can be installed here
// (Debian's docker-compose is v1, which predates the Compose
// Specification). The environment compose would hand each cdc container,
// resolved from .env.example and cdc.env.example, holds no admin password.
func TestCompose_LoadsWithComposeGo(t *testing.T) {
	dir := t.TempDir()
	for src, dst := range map[string]string{"docker-compose.yml": "docker-compose.yml", ".env.example": ".env", "cdc.env.example": "cdc.env"} {
		if err := os.WriteFile(filepath.Join(dir, dst), []byte(read(t, src)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts, err := cli.NewProjectOptions([]string{filepath.Join(dir, "docker-compose.yml")},
		cli.WithWorkingDirectory(dir), cli.WithEnvFiles(filepath.Join(dir, ".env")), cli.WithDotEnv, cli.WithName("cdc"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load as Docker Compose would: %v", err)
	}
	for _, name := range []string{"source-db", "chat-db", "cdc-migrate", "cdc"} {
		if _, ok := p.Services[name]; !ok {
			t.Errorf("no service %s after loading", name)
		}
	}
	for _, name := range []string{"cdc", "cdc-migrate"} {
		svc, ok := p.Services[name]
		if !ok {
			continue
		}
		if len(svc.Environment) == 0 {
			t.Errorf("%s: compose resolved no environment from cdc.env", name)
		}
		for k, v := range svc.Environment {
			if strings.Contains(k, "ADMIN_PASSWORD") {
				t.Errorf("%s gets %s: the long-running containers must not hold the admin passwords", name, k)
			}
			if v != nil && strings.Contains(*v, "change-me") && !strings.Contains(k, "DATABASE_URL") {
				t.Errorf("%s: %s carries the placeholder password", name, k)
			}
		}
		if svc.Logging == nil || svc.Logging.Options["max-size"] == "" {
			t.Errorf("%s: no log rotation (logging.options.max-size) after loading", name)
		}
	}
}
