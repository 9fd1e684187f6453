package main

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pgtest"
)

// TestRun_FarFromChat puts 15 ms each way between cdc and chat: cdc
// measures the round trip at start, warns that it runs far from chat and
// says where to run it, health shows the round trip, and the sync works.
func TestRun_FarFromChat(t *testing.T) {
	p := pgtest.NewPair(t, 500)
	tp := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	u, err := url.Parse(p.ChatURL) // chat may be on a server of its own (PG_BIN_CHAT)
	if err != nil {
		t.Fatal(err)
	}
	px := toxiproxy.NewProxy(tp, "chat", "127.0.0.1:0", u.Host)
	if err := px.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(px.Stop)
	for _, stream := range []string{"upstream", "downstream"} {
		spec := fmt.Sprintf(`{"name": "latency_%s", "type": "latency", "stream": %q, "toxicity": 1, "attributes": {"latency": 15}}`, stream, stream)
		if _, err := px.Toxics.AddToxicJson(strings.NewReader(spec)); err != nil {
			t.Fatal(err)
		}
	}
	c := startCDC(t, with(p.Env(), "CHAT_DATABASE_URL", viaProxy(t, p.ChatURL, px), "LOG_LEVEL", "info"), "run")
	c.waitOutput(t, "run cdc beside the chat database", 30*time.Second)
	st := waitHealth(t, "http://"+httpAddr(t, c), 30*time.Second, "chat's round trip in health", func(st *health.Stats, _ int) bool {
		for _, d := range st.Databases {
			if d.Name == "chat" && d.RoundTripMs >= 30 {
				return true
			}
		}
		return false
	})
	if msg := st.HealthStatus.Checks[health.CheckDatabases].Message; !strings.Contains(msg, "round trip") {
		t.Errorf("databases check %q: want the round trips", msg)
	}
	pgtest.Exec(t, p.Source, "UPDATE users SET last_name = 'far', updated_at = now() WHERE hashtext(id::text) % 5 = 0")
	p.WaitEqual(t, 60*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
