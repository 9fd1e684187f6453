package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// The alerting rules (deploy/prometheus) and the Grafana dashboard
// (deploy/grafana): checked by promtool, against cdc's configuration and
// commands, and against a real Prometheus server scraping a real cdc run.

// promDir holds alerts.yml and alerts_test.yml.
var promDir = filepath.Join("..", "..", "deploy", "prometheus")

// wantAlerts are the alerts README's "Alerts and dashboard" lists.
var wantAlerts = []string{"CdcDown", "CdcNotReady", "CdcLagHigh", "CdcLagCritical", "CdcSlotWALRetained", "CdcSlotLost",
	"CdcDeadLetters", "CdcChatWritesFailing", "CdcReconcileRepaired", "CdcReconcileFailed"}

// alertRule is one rule of alerts.yml.
type alertRule struct {
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func loadAlerts(t *testing.T) map[string]alertRule {
	t.Helper()
	var f struct {
		Groups []struct {
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "deploy/prometheus/alerts.yml")), &f); err != nil {
		t.Fatalf("alerts.yml does not parse: %v", err)
	}
	rules := map[string]alertRule{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if _, dup := rules[r.Alert]; dup {
				t.Errorf("alert %s is defined twice", r.Alert)
			}
			rules[r.Alert] = r
		}
	}
	return rules
}

// TestAlertRules_Promtool runs promtool check rules and promtool test
// rules, and checks that the unit tests show every alert both firing and
// silent.
func TestAlertRules_Promtool(t *testing.T) {
	promtool := tool(t, "promtool")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = promDir
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "SUCCESS") {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal([]byte(read(t, "deploy/prometheus/alerts_test.yml")), &tests); err != nil {
		t.Fatalf("alerts_test.yml does not parse: %v", err)
	}
	fires, silent := map[string]int{}, map[string]int{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname]++
			} else {
				silent[a.Alertname]++
			}
		}
	}
	for name := range loadAlerts(t) {
		if fires[name] == 0 || silent[name] == 0 {
			t.Errorf("alerts_test.yml: %s is shown firing %d times and silent %d times; want both", name, fires[name], silent[name])
		}
	}
}

// TestAlertRules_MatchTheCode checks the alerts' names, labels and
// annotations, and that their thresholds are cdc's defaults.
func TestAlertRules_MatchTheCode(t *testing.T) {
	rules := loadAlerts(t)
	if got := slices.Sorted(maps.Keys(rules)); !slices.Equal(got, slices.Sorted(slices.Values(wantAlerts))) {
		t.Errorf("alerts %v, want %v", got, slices.Sorted(slices.Values(wantAlerts)))
	}
	for name, r := range rules {
		if s := r.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q, want warning or critical", name, s)
		}
		if r.Annotations["summary"] == "" || !strings.Contains(r.Annotations["runbook"], "`cdc ") {
			t.Errorf("%s: want a summary and a runbook naming a cdc command; annotations %v", name, r.Annotations)
		}
	}
	def := map[string]string{}
	for _, v := range config.Vars {
		def[v.Name] = v.Default
	}
	seconds := func(name string) string {
		d, err := time.ParseDuration(def[name])
		if err != nil {
			t.Fatalf("%s default %q: %v", name, def[name], err)
		}
		return strconv.FormatFloat(d.Seconds(), 'f', -1, 64)
	}
	mb, err := strconv.ParseInt(def["SLOT_WAL_WARN_MB"], 10, 64)
	if err != nil {
		t.Fatalf("SLOT_WAL_WARN_MB default %q: %v", def["SLOT_WAL_WARN_MB"], err)
	}
	for name, want := range map[string]string{
		"CdcLagHigh":         "cdc_lag_seconds > " + seconds("LAG_WARN"),
		"CdcLagCritical":     "cdc_lag_seconds > " + seconds("LAG_CRITICAL"),
		"CdcSlotWALRetained": "cdc_slot_retained_bytes > " + strconv.FormatInt(mb<<20, 10),
	} {
		if got := strings.TrimSpace(rules[name].Expr); got != want {
			t.Errorf("%s: expr %q, want %q (cdc's default)", name, got, want)
		}
	}
}

// runbookCommand finds the cdc commands a runbook names, in backquotes.
var runbookCommand = regexp.MustCompile("`(cdc [^`]+)`")

// TestAlertRules_RunbookCommandsExist runs every cdc command the runbooks
// name with -h: each must be a real command taking the flags given.
func TestAlertRules_RunbookCommandsExist(t *testing.T) {
	bin := cdcBinary(t)
	seen := map[string]bool{}
	for name, r := range loadAlerts(t) {
		for _, m := range runbookCommand.FindAllStringSubmatch(r.Annotations["runbook"], -1) {
			if seen[m[1]] {
				continue
			}
			seen[m[1]] = true
			args := strings.Fields(m[1])[1:]
			for i, a := range args {
				if a == "N" { // a placeholder: --id N
					args[i] = "1"
				}
			}
			sub := args
			if i := slices.IndexFunc(args, func(a string) bool { return strings.HasPrefix(a, "-") }); i >= 0 {
				sub = args[:i]
			}
			cmd := exec.Command(bin, append(args, "-h")...)
			cmd.Dir, cmd.Env = t.TempDir(), []string{"PATH=" + os.Getenv("PATH")}
			out, err := cmd.Output()
			if err != nil || !strings.HasPrefix(string(out), "cdc "+strings.Join(sub, " ")+":") {
				t.Errorf("%s names `%s`, but `cdc %s -h` fails: %v\n%s", name, m[1], strings.Join(args, " "), err, out)
				continue
			}
			for _, a := range args {
				if f, ok := strings.CutPrefix(a, "--"); ok && !strings.Contains(string(out), "  -"+f) {
					t.Errorf("%s: `%s`: cdc %s has no flag --%s in its help", name, m[1], args[0], f)
				}
			}
		}
	}
	if len(seen) < 5 {
		t.Errorf("the runbooks name %d cdc commands: %v", len(seen), slices.Sorted(maps.Keys(seen)))
	}
}

// forLine is a rule's for: duration.
var forLine = regexp.MustCompile(`(?m)^(\s+for:\s*)\S+\s*$`)

// startPrometheus starts a Prometheus server on a free loopback port,
// scraping target as job cdc every second and evaluating alerts.yml every
// second, and returns a client once it is ready.
func startPrometheus(t *testing.T, ctx context.Context, bin, dir, target string) promClient {
	t.Helper()
	// alerts.yml as shipped, except that every for: is cut to 2s, so that
	// an alert fires seconds after its condition holds, not minutes; the
	// expressions, labels and annotations are the file's.
	shipped := read(t, "deploy/prometheus/alerts.yml")
	if n := len(forLine.FindAllString(shipped, -1)); n < 5 {
		t.Fatalf("alerts.yml has %d for: lines; the rewrite below finds none", n)
	}
	rules := filepath.Join(dir, "alerts.yml")
	cfg := filepath.Join(dir, "prometheus.yml")
	conf := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"+
		"rule_files: [%q]\nscrape_configs:\n  - job_name: cdc\n    static_configs:\n      - targets: [%q]\n", rules, target)
	for path, body := range map[string]string{rules: forLine.ReplaceAllString(shipped, "${1}2s"), cfg: conf} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := promClient{base: fmt.Sprintf("http://127.0.0.1:%d", freeLoopbackPort(t))}
	p := start(t, dir, nil, bin, "--config.file="+cfg, "--storage.tsdb.path="+filepath.Join(dir, "tsdb"),
		"--web.listen-address="+strings.TrimPrefix(c.base, "http://"), "--log.level=warn")
	waitFor(t, 30*time.Second, "Prometheus ready", func() string {
		if p.exited() {
			t.Fatalf("prometheus exited:\n%s", p.out.String())
		}
		if code, body := httpGet(ctx, c.base+"/-/ready"); code != 200 {
			return fmt.Sprintf("/-/ready %d %s", code, body)
		}
		return ""
	})
	return c
}

// rulesEvaluated returns "" once Prometheus has evaluated every alert of
// alerts.yml without an error, else what is missing.
func rulesEvaluated(ctx context.Context, c promClient) string {
	data, err := c.get(ctx, "/api/v1/rules", url.Values{"type": {"alert"}})
	if err != nil {
		return err.Error()
	}
	var d struct {
		Groups []struct {
			Rules []struct {
				Name, Health, LastError string
				LastEvaluation          time.Time `json:"lastEvaluation"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return err.Error()
	}
	n := 0
	for _, g := range d.Groups {
		for _, r := range g.Rules {
			if r.Health != "ok" || r.LastError != "" || r.LastEvaluation.Year() < 2000 {
				return fmt.Sprintf("rule %s: health %q, error %q, evaluated %s", r.Name, r.Health, r.LastError, r.LastEvaluation)
			}
			n++
		}
	}
	if n != len(wantAlerts) {
		return fmt.Sprintf("%d alert rules loaded, want %d", n, len(wantAlerts))
	}
	return ""
}

// alertStates describes the active alerts, for failure messages.
func alertStates(a map[string]promAlert) string {
	var s []string
	for _, name := range slices.Sorted(maps.Keys(a)) {
		s = append(s, name+"="+a[name].State)
	}
	return "active alerts: [" + strings.Join(s, " ") + "]"
}

// listenAddr is cdc's HTTP address, from its "http listening" log line
// (the test runs it with HTTP_ADDR=127.0.0.1:0: a free loopback port).
func listenAddr(t *testing.T, c *proc) string {
	t.Helper()
	var addr string
	waitFor(t, 60*time.Second, `cdc's "http listening" line`, func() string {
		if c.exited() {
			t.Fatalf("cdc run exited:\n%s", c.out.String())
		}
		for _, line := range strings.Split(c.out.String(), "\n") {
			var m struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &m) == nil && m.Msg == "http listening" && m.Addr != "" {
				addr = m.Addr
				return ""
			}
		}
		return "not logged yet"
	})
	return addr
}

// TestPrometheus_AlertsFireAndClear runs a real cdc against two real
// PostgreSQL servers and a real Prometheus scraping it with alerts.yml
// loaded: with cdc healthy no alert fires; with chat stopped and a change
// waiting, CdcNotReady and CdcChatWritesFailing fire; with chat back they
// clear. Then every query of the Grafana dashboard runs against that
// Prometheus, and every metric the alerts and the dashboard name must be
// one cdc exposes.
func TestPrometheus_AlertsFireAndClear(t *testing.T) {
	promBin := tool(t, "prometheus")
	tool(t, "promtool")
	bin := cdcBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// The source limits the slot's WAL as the compose file does, so that
	// cdc_slot_safe_wal_bytes exists; chat has a server of its own, to be
	// stopped alone.
	srcSrv, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Settings: map[string]string{"max_slot_wal_keep_size": "1GB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srcSrv.Stop() })
	chatSrv, err := pglocal.Start(ctx, pglocal.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = chatSrv.Stop() })
	pair := pgtest.NewSplitPair(t, srcSrv, chatSrv, 200)
	env := pair.Env()
	env["LOG_LEVEL"], env["SYNC_INTERVAL_MINUTES"] = "info", "0.05" // a reconcile run every 3 s
	dir := t.TempDir()
	cdc := start(t, dir, env, bin, "run")
	addr := listenAddr(t, cdc)
	waitFor(t, 60*time.Second, "cdc ready", func() string {
		if code, body := httpGet(ctx, "http://"+addr+"/readyz"); code != 200 {
			return fmt.Sprintf("/readyz %d %s", code, strings.TrimSpace(body))
		}
		return ""
	})
	pair.WaitEqual(t, 30*time.Second)
	prom := startPrometheus(t, ctx, promBin, dir, addr)

	// Healthy: five seconds of scrapes (more than any shortened for:)
	// evaluated without error, and nothing fires.
	waitFor(t, 30*time.Second, "five scrapes of cdc and every rule evaluated", func() string {
		s, err := prom.query(ctx, `count_over_time(up{job="cdc"}[1m]) >= 5 and up{job="cdc"} == 1`)
		switch {
		case err != nil:
			return err.Error()
		case len(s) == 0:
			return "fewer than five scrapes, or the last one failed"
		}
		return rulesEvaluated(ctx, prom)
	})
	active, err := prom.alerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for name, a := range active {
		if a.State == "firing" {
			t.Errorf("%s fires while cdc is healthy: %v", name, a.Annotations["summary"])
		}
	}

	// Chat down, a change to write: not ready, writes failing.
	if err := chatSrv.Halt(pglocal.FastStop); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, pair.Source, `UPDATE users SET status = 'prometheus', updated_at = now() WHERE email LIKE 'user1%'`)
	outage := []string{"CdcNotReady", "CdcChatWritesFailing"}
	waitFor(t, 60*time.Second, "CdcNotReady and CdcChatWritesFailing firing with chat stopped", func() string {
		a, err := prom.alerts(ctx)
		if err != nil {
			return err.Error()
		}
		for _, name := range outage {
			if a[name].State != "firing" {
				return alertStates(a)
			}
		}
		active = a
		return ""
	})
	for _, name := range outage {
		if a := active[name]; a.Labels["instance"] != addr || !strings.Contains(a.Annotations["summary"], addr) || a.Annotations["runbook"] == "" {
			t.Errorf("%s: labels %v annotations %v; want instance %s in both and a runbook", name, a.Labels, a.Annotations, addr)
		}
	}
	if _, down := active["CdcDown"]; down {
		t.Error("CdcDown is active, but cdc answers scrapes while chat is down")
	}

	// Chat back: the change arrives and both alerts clear.
	if err := chatSrv.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	pair.Chat.Reset()
	pair.WaitEqual(t, 60*time.Second)
	waitFor(t, 60*time.Second, "CdcNotReady and CdcChatWritesFailing cleared with chat back", func() string {
		a, err := prom.alerts(ctx)
		if err != nil {
			return err.Error()
		}
		for _, name := range outage {
			if _, ok := a[name]; ok {
				return alertStates(a)
			}
		}
		return ""
	})

	checkDashboardQueries(t, ctx, prom, addr)
	checkMetricNames(t, ctx, "http://"+addr+"/metrics")
	if !cdc.stop(40 * time.Second) {
		t.Error("cdc run did not stop within 40 s of SIGTERM")
	}
}

// checkMetricNames checks that every cdc_ metric alerts.yml and the
// dashboard name is one cdc's /metrics serves.
func checkMetricNames(t *testing.T, ctx context.Context, metricsURL string) {
	t.Helper()
	code, body := httpGet(ctx, metricsURL)
	if code != 200 {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	served := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if name, _, _ := strings.Cut(line, " "); name != "" && !strings.HasPrefix(line, "#") {
			name, _, _ = strings.Cut(name, "{")
			served[name] = true
			if base, ok := strings.CutSuffix(name, "_bucket"); ok {
				served[base] = true // a histogram, named in prose
			}
		}
	}
	metric := regexp.MustCompile(`\bcdc_[a-z_]+`)
	for _, file := range []string{"deploy/prometheus/alerts.yml", "deploy/grafana/cdc.json"} {
		for _, name := range metric.FindAllString(read(t, file), -1) {
			if !served[name] {
				t.Errorf("%s names %s, which cdc's /metrics does not serve", file, name)
			}
		}
	}
}
