package health

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/change"
)

// serve runs an HTTP server for m on a free loopback port until the test
// ends and returns its base URL.
func serve(t *testing.T, m *Monitor) string {
	t.Helper()
	return "http://" + serveWith(t, m, "")
}

// serveWith is serve with webConfig as the server's WEB_CONFIG_FILE; it
// returns the bound host:port.
func serveWith(t *testing.T, m *Monitor, webConfig string) string {
	t.Helper()
	srv, err := Listen("127.0.0.1:0", m, quiet)
	if err != nil {
		t.Fatal(err)
	}
	srv.WebConfig = webConfig
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv.Addr().String()
}

func fetch(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

// attachedStream attaches a connected replication stream to m.
func attachedStream(m *Monitor) (*fakeStream, *fakeWrites) {
	stream := &fakeStream{}
	sk := &fakeWrites{}
	m.Attach(Parts{Source: stream, Writes: sk})
	stream.Streaming.Store(true)
	return stream, sk
}

// TestServer_HealthzAndReadyz checks that /healthz always answers and that
// /readyz follows the stream, the lag and the chat writes.
func TestServer_HealthzAndReadyz(t *testing.T) {
	m := newTestMonitor("replication")
	base := serve(t, m)
	if resp, body := fetch(t, base+"/healthz"); resp.StatusCode != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", resp.StatusCode, body)
	}
	if resp, body := fetch(t, base+"/readyz"); resp.StatusCode != 503 || !strings.Contains(body, "stream: starting") {
		t.Errorf("/readyz before start = %d %q, want 503 naming the stream", resp.StatusCode, body)
	}
	stream, sk := attachedStream(m)
	if resp, body := fetch(t, base+"/readyz"); resp.StatusCode != 200 || body != "ready\n" {
		t.Errorf("/readyz streaming = %d %q, want 200", resp.StatusCode, body)
	}
	stream.Pending.Store(time.Now().Add(-time.Minute).UnixNano())
	if resp, body := fetch(t, base+"/readyz"); resp.StatusCode != 503 || !strings.Contains(body, "lag: ") {
		t.Errorf("/readyz lagging = %d %q, want 503 naming the lag", resp.StatusCode, body)
	}
	stream.Pending.Store(0)
	sk.Failing.Store(6)
	if resp, body := fetch(t, base+"/readyz"); resp.StatusCode != 503 || !strings.Contains(body, CheckFailures) {
		t.Errorf("/readyz failing writes = %d %q, want 503", resp.StatusCode, body)
	}
	if resp, _ := fetch(t, base+"/nope"); resp.StatusCode != 404 {
		t.Errorf("/nope = %d, want 404", resp.StatusCode)
	}
}

// TestServer_StatsShape checks /stats has the old service's fields, by
// name and JSON type, and the new ones.
func TestServer_StatsShape(t *testing.T) {
	m := newTestMonitor("replication")
	attachedStream(m)
	m.ObserveBatch(change.BatchInfo{Received: 1, Upserts: 1, Took: time.Millisecond})
	resp, body := fetch(t, serve(t, m)+"/stats")
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "application/json" {
		t.Fatalf("/stats = %d %s", resp.StatusCode, ct)
	}
	var doc map[string]any
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		t.Fatalf("/stats is not JSON: %v\n%s", err, body)
	}
	kinds := map[string]string{
		"totalSynced": "number", "lastSyncTime": "string", "lastSyncDuration": "number", "errors": "number",
		"consecutiveFailures": "number", "isRealTimeActive": "bool", "isSyncInProgress": "bool", "healthStatus": "object",
		"mode": "string", "ready": "bool", "appliedLsn": "null", "lagBytes": "number", "lagSeconds": "number",
		"reconcile": "object", "deadLetters": "object", "uptimeSeconds": "number", "throughput": "array",
		"pools": "array", "databases": "array", "stream": "object", "applied": "object",
	}
	for key, want := range kinds {
		if got := jsonKind(doc[key]); got != want {
			t.Errorf("/stats %s is %s, want %s", key, got, want)
		}
	}
	hs, _ := doc["healthStatus"].(map[string]any)
	for _, key := range []string{"status", "checks", "recommendations"} {
		if _, ok := hs[key]; !ok {
			t.Errorf("healthStatus lacks %s: %v", key, hs)
		}
	}
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case float64:
		return "number"
	case string:
		return "string"
	case bool:
		return "bool"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "?"
}

// TestServer_Metrics scrapes /metrics and parses it with expfmt.
func TestServer_Metrics(t *testing.T) {
	m := newTestMonitor("replication")
	stream, _ := attachedStream(m)
	stream.Applied.Store(1 << 24)
	m.ObserveBatch(change.BatchInfo{Received: 4, Upserts: 3, Deletes: 1, Latency: 20 * time.Millisecond, Took: 2 * time.Millisecond})
	families, err := Scrape(context.Background(), serve(t, m))
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string, labels ...string) float64 {
		t.Helper()
		v, ok := Value(families, name, labels...)
		if !ok {
			t.Fatalf("no %s%v", name, labels)
		}
		return v
	}
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"cdc_changes_applied_total", []string{"op", "upsert"}, 3},
		{"cdc_changes_applied_total", []string{"op", "delete"}, 1},
		{"cdc_batches_total", nil, 1},
		{"cdc_apply_latency_seconds", nil, 1},
		{"cdc_batch_changes", nil, 1},
		{"cdc_batch_apply_duration_seconds", nil, 1},
		{"cdc_applied_lsn", nil, 1 << 24},
		{"cdc_lag_seconds", nil, 0},
		{"cdc_source_connected", nil, 1},
		{"cdc_health_status", nil, 0},
		{"cdc_health_check_status", []string{"check", CheckStream}, 0},
		{"cdc_info", []string{"mode", "replication"}, 1},
	}
	for _, c := range checks {
		if got := value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if sum := families["cdc_apply_latency_seconds"].Metric[0].Histogram.GetSampleSum(); sum != 0.02 {
		t.Errorf("latency sum = %v, want 0.02", sum)
	}
	for _, name := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_start_time_seconds"} {
		if families[name] == nil {
			t.Errorf("runtime metric %s missing", name)
		}
	}
	for name := range families {
		if !strings.HasPrefix(name, "cdc_") && !strings.HasPrefix(name, "go_") && !strings.HasPrefix(name, "process_") {
			t.Errorf("metric %s lacks the cdc_ prefix", name)
		}
	}
}

// TestServer_StatusPage checks the page is served whole, self-contained,
// with a CSP that allows exactly its inline script.
func TestServer_StatusPage(t *testing.T) {
	resp, body := fetch(t, serve(t, newTestMonitor("replication"))+"/")
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("/ = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src "+inlineHash(pageHTML, "<script>", "</script>")) || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q does not pin the inline script", csp)
	}
	if ext := regexp.MustCompile(`(?i)(src|href)\s*=\s*"(https?:)?//|@import|url\(`).FindString(body); ext != "" {
		t.Errorf("the page loads an external asset: %q", ext)
	}
	for _, id := range []string{`id="status"`, `id="lag"`, `id="total"`, `id="spark-line"`, `id="checks"`, `id="dead"`, `fetch("stats"`} {
		if !strings.Contains(body, id) {
			t.Errorf("the page lacks %s", id)
		}
	}
}

// TestServer_ShutsDownWithContext checks Serve returns once ctx ends and
// the port is released.
func TestServer_ShutsDownWithContext(t *testing.T) {
	srv, err := Listen("127.0.0.1:0", newTestMonitor("replication"), quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	addr := srv.Addr().String()
	if resp, _ := fetch(t, "http://"+addr+"/healthz"); resp.StatusCode != 200 {
		t.Fatalf("/healthz = %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(shutdownGrace + time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("the port still accepts connections after shutdown")
	}
}

// TestListen_AddressInUse checks a port in use is an error naming HTTP_ADDR.
func TestListen_AddressInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = Listen(ln.Addr().String(), newTestMonitor("replication"), quiet)
	if err == nil || !strings.Contains(err.Error(), "HTTP_ADDR "+ln.Addr().String()) || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("Listen on a used port: %v; want an error naming HTTP_ADDR and the address in use", err)
	}
}

func TestBaseURL(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:8080": "http://127.0.0.1:8080",
		"0.0.0.0:8080":   "http://127.0.0.1:8080",
		":9090":          "http://127.0.0.1:9090",
		"[::]:80":        "http://[::1]:80",
		"10.1.2.3:80":    "http://10.1.2.3:80",
	} {
		if got, err := BaseURL(addr); err != nil || got != want {
			t.Errorf("BaseURL(%q) = %q, %v; want %q", addr, got, err, want)
		}
	}
}
