package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/demo"
)

// compose is the part of the Compose file format the checks read.
type compose struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image       string            `yaml:"image"`
	Build       any               `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	EnvFile     any               `yaml:"env_file"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Restart     string   `yaml:"restart"`
	Ports       []string `yaml:"ports"`
	Volumes     []string `yaml:"volumes"`
	StopGrace   string   `yaml:"stop_grace_period"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	var c compose
	if err := yaml.Unmarshal([]byte(read(t, "docker-compose.yml")), &c); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	return c
}

// TestCompose_Services checks the services, their order of start, restart
// policies and health checks.
func TestCompose_Services(t *testing.T) {
	c := loadCompose(t)
	for _, name := range []string{"source-db", "chat-db", "cdc-migrate", "cdc"} {
		if _, ok := c.Services[name]; !ok {
			t.Fatalf("service %s is missing", name)
		}
	}
	src := c.Services["source-db"]
	cmd := strings.Join(src.Command, " ")
	for _, want := range []string{"wal_level=logical", "max_slot_wal_keep_size="} {
		if !strings.Contains(cmd, want) {
			t.Errorf("source-db command %q lacks %s", cmd, want)
		}
	}
	for _, db := range []string{"source-db", "chat-db"} {
		s := c.Services[db]
		if s.Healthcheck == nil || !strings.Contains(strings.Join(s.Healthcheck.Test, " "), "pg_isready") {
			t.Errorf("%s has no pg_isready health check", db)
		}
		if len(s.Volumes) == 0 || !strings.HasSuffix(strings.SplitN(s.Volumes[0], ":", 2)[1], "/var/lib/postgresql/data") {
			t.Errorf("%s keeps its data in no volume: %v", db, s.Volumes)
		}
	}

	m := c.Services["cdc-migrate"]
	if !slices.Equal(m.Command, []string{"migrate"}) || m.Restart != "no" {
		t.Errorf("cdc-migrate: command %v restart %q; want [migrate], no", m.Command, m.Restart)
	}
	for _, db := range []string{"source-db", "chat-db"} {
		if m.DependsOn[db].Condition != "service_healthy" {
			t.Errorf("cdc-migrate does not wait for %s to be healthy", db)
		}
	}

	r := c.Services["cdc"]
	if !slices.Equal(r.Command, []string{"run"}) {
		t.Errorf("cdc command %v, want [run]", r.Command)
	}
	if r.Restart != "unless-stopped" && r.Restart != "always" {
		t.Errorf("cdc restart %q: it must come back after a crash", r.Restart)
	}
	if r.DependsOn["cdc-migrate"].Condition != "service_completed_successfully" {
		t.Error("cdc does not wait for cdc-migrate to succeed")
	}
	if r.Healthcheck == nil || !slices.Equal(r.Healthcheck.Test, []string{"CMD", "/cdc", "status", "--live"}) {
		t.Errorf("cdc health check %v; want the binary itself probing /healthz (the image has no shell or curl)", r.Healthcheck)
	}
	if addr := r.Environment["HTTP_ADDR"]; !strings.HasPrefix(addr, "0.0.0.0:") {
		t.Errorf("cdc HTTP_ADDR %q: in a container it must listen beyond loopback for the health check and the port", addr)
	}
	for _, p := range r.Ports {
		if !strings.HasPrefix(p, "127.0.0.1:") {
			t.Errorf("cdc publishes %q beyond the host's loopback", p)
		}
	}
	if r.StopGrace == "" {
		t.Error("cdc has no stop_grace_period: the default 10 s is shorter than its 30 s drain")
	}
}

// TestCompose_EnvironmentMatchesTheCode checks that every variable the
// compose file gives cdc is one cdc reads (a typo would silently fall back
// to a default), that the run service logs in as the least-privileged roles,
// and that every ${VAR} it uses is in .env.example.
func TestCompose_EnvironmentMatchesTheCode(t *testing.T) {
	c := loadCompose(t)
	known := map[string]bool{}
	for _, v := range config.Vars {
		known[v.Name] = true
	}
	for _, name := range []string{"cdc-migrate", "cdc"} {
		s := c.Services[name]
		// cdc's settings, not compose's passwords: those reach the
		// containers only inside the DSNs.
		if s.EnvFile != "cdc.env" {
			t.Errorf("%s env_file %v, want cdc.env (not .env, which holds the admin passwords)", name, s.EnvFile)
		}
		for k, v := range s.Environment {
			if strings.Contains(v, "PASSWORD}") && !regexp.MustCompile(`password='\$\{[A-Z_]+\}'`).MatchString(v) {
				t.Errorf("%s %s pastes a password where its characters matter; want a quoted key=value password", name, k)
			}
		}
		for k := range s.Environment {
			if !known[k] {
				t.Errorf("%s sets %s, which cdc does not read", name, k)
			}
		}
	}
	run := c.Services["cdc"].Environment
	if !strings.Contains(run["SOURCE_DATABASE_URL"], "user=cdc_source ") || !strings.Contains(run["CHAT_DATABASE_URL"], "user=cdc_chat ") {
		t.Error("cdc run does not log in as the least-privileged roles cdc_source and cdc_chat")
	}
	mig := c.Services["cdc-migrate"].Environment
	if mig["SOURCE_RUN_ROLE"] != "cdc_source" || mig["CHAT_RUN_ROLE"] != "cdc_chat" {
		t.Error("cdc-migrate does not grant the run roles their privileges")
	}
	example := read(t, ".env.example")
	for _, m := range regexp.MustCompile(`\$\{([A-Z_]+)`).FindAllStringSubmatch(read(t, "docker-compose.yml"), -1) {
		if !regexp.MustCompile(`(?m)^#?` + m[1] + `=`).MatchString(example) {
			t.Errorf("docker-compose.yml uses ${%s}, which .env.example does not list", m[1])
		}
	}
	for _, script := range []string{"deploy/source-init.sh", "deploy/chat-init.sh"} {
		if !strings.Contains(read(t, "docker-compose.yml"), "./"+script+":") {
			t.Errorf("%s is not mounted", script)
		}
	}
	// The bundled source gets the reference table cdc dev and the tests use.
	if !strings.Contains(read(t, "deploy/source-init.sh"), strings.TrimSpace(demo.SourceSchema)) {
		t.Error("deploy/source-init.sh does not create the reference users table exactly as internal/demo does")
	}
	if !strings.Contains(read(t, "deploy/source-init.sh"), "cdc_source LOGIN REPLICATION") || !strings.Contains(read(t, "deploy/chat-init.sh"), "cdc_chat LOGIN") {
		t.Error("the init scripts do not create the run roles")
	}
}

// TestDockerfile builds a static binary and runs it as a non-root user on a
// minimal base.
func TestDockerfile(t *testing.T) {
	d := read(t, "Dockerfile")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "FROM gcr.io/distroless/static", "USER nonroot", `ENTRYPOINT ["/cdc"]`} {
		if !strings.Contains(d, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if n := len(regexp.MustCompile(`(?m)^FROM `).FindAllString(d, -1)); n < 2 {
		t.Errorf("Dockerfile has %d stages; want a build stage and a minimal runtime stage", n)
	}
	ignore := read(t, ".dockerignore")
	for _, want := range []string{".env", ".git"} {
		if !strings.Contains(ignore, want+"\n") {
			t.Errorf(".dockerignore does not keep %s out of the build context", want)
		}
	}
}
