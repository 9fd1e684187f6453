package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// dashboard is the part of Grafana's dashboard JSON the checks read.
type dashboard struct {
	Title         string `json:"title"`
	UID           string `json:"uid"`
	SchemaVersion int    `json:"schemaVersion"`
	Templating    struct {
		List []struct {
			Name       string `json:"name"`
			Type       string `json:"type"`
			Query      any    `json:"query"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal([]byte(read(t, "deploy/grafana/cdc.json")), &d); err != nil {
		t.Fatalf("cdc.json does not parse: %v", err)
	}
	return d
}

// queryPanels are the dashboard's panels that query, rows' included.
func (d dashboard) queryPanels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			out = append(out, p)
		}
	}
	walk(d.Panels)
	return out
}

// TestDashboard_Structure checks the dashboard's format: a schema Grafana
// 9 and later reads, the Prometheus datasource variable every panel uses,
// and a panel for each of lag, throughput, apply latency, slot WAL, dead
// letters and reconcile.
func TestDashboard_Structure(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 36 || d.UID == "" || d.Title == "" {
		t.Errorf("schemaVersion %d uid %q title %q; want 36 or later, a uid and a title", d.SchemaVersion, d.UID, d.Title)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Name == "datasource" && (v.Type != "datasource" || v.Query != "prometheus") {
			t.Errorf("variable datasource: type %s query %v, want a prometheus datasource variable", v.Type, v.Query)
		}
	}
	if vars["datasource"] == "" {
		t.Error("no ${datasource} variable")
	}
	ids := map[int]bool{}
	var exprs []string
	for _, p := range d.queryPanels() {
		if ids[p.ID] {
			t.Errorf("panel id %d is used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, p.Datasource)
		}
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside Grafana's 24 columns", p.Title, g)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if q.Expr == "" || q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: query %+v: want an expr and a refId of its own", p.Title, q)
			}
			refs[q.RefID] = true
			exprs = append(exprs, q.Expr)
		}
	}
	all := strings.Join(exprs, "\n")
	for what, want := range map[string]*regexp.Regexp{
		"lag":            regexp.MustCompile(`cdc_lag_seconds`),
		"throughput":     regexp.MustCompile(`rate\(cdc_changes_applied_total`),
		"apply latency":  regexp.MustCompile(`histogram_quantile\([0-9.]+, sum by \([^)]*\ble\b[^)]*\) \(rate\(cdc_apply_latency_seconds_bucket`),
		"slot WAL":       regexp.MustCompile(`cdc_slot_retained_bytes`),
		"dead letters":   regexp.MustCompile(`cdc_dead_letters_unresolved`),
		"reconcile runs": regexp.MustCompile(`cdc_reconcile_runs_total`),
		"repairs":        regexp.MustCompile(`cdc_reconcile_repairs_total`),
	} {
		if !want.MatchString(all) {
			t.Errorf("no panel shows %s (%s)", what, want)
		}
	}
}

// grafanaVars are the values the checks give Grafana's variables: the
// built-in intervals and the dashboard's instance selector (all).
var grafanaVars = strings.NewReplacer("$__rate_interval", "30s", "$__interval", "5s", "$__range", "5m", "$instance", ".+")

// checkDashboardQueries runs each panel query of the dashboard, its
// variables replaced as Grafana would, against prom, which scrapes the cdc
// at instance: each must succeed and return samples. The instance
// variable's label_values query must list instance.
func checkDashboardQueries(t *testing.T, ctx context.Context, prom promClient, instance string) {
	t.Helper()
	d := loadDashboard(t)
	n := 0
	for _, p := range d.queryPanels() {
		for _, q := range p.Targets {
			expr := grafanaVars.Replace(q.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q: %s uses a variable the check does not know", p.Title, q.Expr)
				continue
			}
			n++
			samples, err := prom.query(ctx, expr)
			switch {
			case err != nil:
				t.Errorf("panel %q: %s: %v", p.Title, expr, err)
			case len(samples) == 0:
				t.Errorf("panel %q: %s returns nothing from a running cdc", p.Title, expr)
			}
		}
	}
	if n < 10 {
		t.Errorf("%d dashboard queries checked", n)
	}
	labelValues := regexp.MustCompile(`^label_values\((\w+), *(\w+)\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: definition %q: the check knows label_values(metric, label) only", v.Name, v.Definition)
			continue
		}
		data, err := prom.get(ctx, "/api/v1/label/"+m[2]+"/values", url.Values{"match[]": {m[1]}})
		var values []string
		if err == nil {
			err = json.Unmarshal(data, &values)
		}
		if err != nil || fmt.Sprint(values) != "["+instance+"]" {
			t.Errorf("variable %s (%s): %v %v, want [%s]", v.Name, v.Definition, values, err, instance)
		}
	}
}
