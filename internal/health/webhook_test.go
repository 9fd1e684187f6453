package health

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/retry"
)

// secret stands for anything a message must never carry: a password, a
// row value, the webhook's token.
const secret = "Sup3rSecret"

// fastRetry retries quickly and gives up after three attempts.
var fastRetry = retry.Policy{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond, Multiplier: 2, Loud: 100, Attempts: 3}

// hookServer is a webhook on loopback that records what it is sent and
// answers the n-th request (from 1) with answer(n).
type hookServer struct {
	*httptest.Server
	answer func(n int) int
	mu     sync.Mutex
	posts  []hookPost
}

type hookPost struct {
	at          time.Time
	body        []byte
	contentType string
}

func newHookServer(t *testing.T, answer func(n int) int) *hookServer {
	h := &hookServer{answer: answer}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		h.posts = append(h.posts, hookPost{at: time.Now(), body: body, contentType: r.Header.Get("Content-Type")})
		n := len(h.posts)
		h.mu.Unlock()
		w.WriteHeader(h.answer(n))
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hookServer) got() []hookPost {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookPost(nil), h.posts...)
}

// ok answers every request 200.
func ok(int) int { return http.StatusOK }

// syncBuffer is a log destination goroutines may share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startHook makes a webhook posting to rawURL and runs it until the test
// ends, checking that Run returns promptly then.
func startHook(t *testing.T, o WebhookOptions) (*Webhook, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.Retry.Attempts == 0 {
		o.Retry = fastRetry
	}
	w, err := NewWebhook(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Webhook.Run did not return within 5s of its context ending")
		}
	})
	return w, logs
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type fakeObjects struct{ now atomic.Pointer[string] }

func (f *fakeObjects) Report() (now, last string, at time.Time) {
	if p := f.now.Load(); p != nil {
		return *p, "", time.Time{}
	}
	return "", "", time.Time{}
}

func stateChange(from, to Status) StateChange {
	return StateChange{At: time.Now(), From: from, To: to, Health: Health{Status: to, Checks: map[string]Check{}}}
}

// TestWebhook_StateChangePostsOnce drives a real Monitor from HEALTHY to
// UNHEALTHY, with secrets in the checks' sources, and expects one POST of
// Slack's JSON naming both states, the failing checks, their
// recommendations, host and slot, and carrying no secret; the logs name
// the webhook by scheme and host only.
func TestWebhook_StateChangePostsOnce(t *testing.T) {
	srv := newHookServer(t, ok)
	hookURL := srv.URL + "/services/T0/B0/" + secret + "?token=" + secret
	u, _ := url.Parse(hookURL)
	u.User = url.UserPassword("alerts", secret)
	w, logs := startHook(t, WebhookOptions{URL: u.String(), Host: "db-host-1", Slot: "cdc_users", Mode: "replication"})

	m := newTestMonitor("replication")
	stream, sk, objs := &fakeStream{}, &fakeWrites{}, &fakeObjects{}
	stream.Streaming.Store(true)
	m.Attach(Parts{Source: stream, Writes: sk, Objects: objs})
	m.OnChange(w.Notify)
	m.watchState(time.Now()) // the baseline
	m.watchState(time.Now())
	if c := w.Counts(); c.Changes != 0 {
		t.Fatalf("no change yet, but the webhook was given %d", c.Changes)
	}

	sk.Failing.Store(6)
	msg := "column email of row (42, '" + secret + "@example.com') is not what cdc set up"
	objs.now.Store(&msg)
	m.mu.Lock()
	m.probe.databases = []DatabaseStats{{Name: "source", Reachable: true},
		{Name: "chat", Error: "failed to connect to postgres://cdc:" + secret + "@chat:5432/chat; password=" + secret}}
	m.mu.Unlock()
	m.watchState(time.Now())
	m.watchState(time.Now()) // no second change
	waitFor(t, "the POST", func() bool { return w.Counts().Sent == 1 })

	posts := srv.got()
	if c := w.Counts(); len(posts) != 1 || c.Attempts != 1 || c.Changes != 1 || c.Held != 0 {
		t.Fatalf("%d POSTs, counts %+v; want exactly one POST of one change", len(posts), c)
	}
	p := posts[0]
	if p.contentType != "application/json" {
		t.Errorf("Content-Type %q", p.contentType)
	}
	if bytes.Contains(p.body, []byte(secret)) || bytes.Contains(p.body, []byte("postgres://")) {
		t.Errorf("the message carries a secret or a DSN: %s", p.body)
	}
	var got slackMessage
	if err := json.Unmarshal(p.body, &got); err != nil {
		t.Fatalf("not JSON: %v: %s", err, p.body)
	}
	for _, want := range []string{"cdc on db-host-1 (slot cdc_users) is UNHEALTHY (was HEALTHY): ", "consecutive_failures fails", "databases fails", "source_objects fails"} {
		if !strings.Contains(got.Text, want) {
			t.Errorf("text lacks %q: %s", want, got.Text)
		}
	}
	if len(got.Attachments) != 1 || got.Attachments[0].Color != "danger" {
		t.Fatalf("attachments %+v; want one, colour danger", got.Attachments)
	}
	fields := map[string]string{}
	for _, f := range got.Attachments[0].Fields {
		fields[f.Title] = f.Value
	}
	h := m.Health()
	for name, want := range map[string]string{
		"status":                     "UNHEALTHY (was HEALTHY)",
		"slot":                       "cdc_users",
		"consecutive_failures: fail": "6 consecutive failed chat writes\n→ " + h.Checks[CheckFailures].Recommendation,
		"databases: fail":            "chat database unreachable\n→ " + h.Checks[CheckDatabases].Recommendation,
		"source_objects: fail":       "→ " + h.Checks[CheckObjects].Recommendation,
	} {
		if fields[name] != want {
			t.Errorf("field %q = %q, want %q", name, fields[name], want)
		}
	}
	out := logs.String()
	if strings.Contains(out, secret) || !strings.Contains(out, "webhook="+srv.URL+"/…") {
		t.Errorf("logs quote the webhook URL's secrets or do not name it by host:\n%s", out)
	}
}

// TestWebhook_DownOrSlow: a webhook that refuses connections, or answers
// after the timeout, is tried Attempts times and given up on; meanwhile
// neither the monitor nor a caller of Notify waits, and the queue drops
// its oldest changes.
func TestWebhook_DownOrSlow(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  func(t *testing.T) (string, func() int)
	}{
		{"connection refused", func(t *testing.T) (string, func() int) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			_ = ln.Close()
			return "http://" + addr + "/hook?token=" + secret, nil
		}},
		{"slower than the timeout", func(t *testing.T) (string, func() int) {
			var n atomic.Int64
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n.Add(1)
				select { // far longer than the timeout
				case <-r.Context().Done():
				case <-release:
				}
			}))
			t.Cleanup(srv.Close)
			t.Cleanup(func() { close(release) })
			return srv.URL + "/hook?token=" + secret, func() int { return int(n.Load()) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, served := tc.url(t)
			w, logs := startHook(t, WebhookOptions{URL: raw, Timeout: 100 * time.Millisecond, Queue: 4})
			m := newTestMonitor("replication")
			stream, sk := &fakeStream{}, &fakeWrites{}
			stream.Streaming.Store(true)
			m.Attach(Parts{Source: stream, Writes: sk})
			m.OnChange(w.Notify)
			m.watchState(time.Now())
			sk.Failing.Store(6)
			m.watchState(time.Now())
			waitFor(t, "the message to be given up", func() bool { return w.Counts().Failed == 1 })
			if c := w.Counts(); c.Attempts != int64(fastRetry.Attempts) || c.Sent != 0 {
				t.Errorf("counts %+v; want %d attempts, none delivered", c, fastRetry.Attempts)
			}
			if served != nil && served() != fastRetry.Attempts {
				t.Errorf("the webhook got %d requests, want %d", served(), fastRetry.Attempts)
			}

			// While a POST hangs (or keeps failing), the monitor's loop and
			// Notify's callers go on at once: 200 changes take no time
			// the webhook's.
			start := time.Now()
			for i := range 200 {
				sk.Failing.Store(int64(6 * (i % 2)))
				m.watchState(time.Now())
			}
			for range 200 {
				w.Notify(stateChange(Degraded, Unhealthy))
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("400 changes took %s: the monitor or the caller waited on the webhook", took)
			}
			if h := m.Health(); h.Status != Unhealthy {
				t.Errorf("monitor health %s, want the last state it was given", h.Status)
			}
			if served != nil && w.Counts().Dropped == 0 {
				t.Errorf("counts %+v; want changes dropped from a queue of 4 while a POST hangs", w.Counts())
			}
			// Every change is accounted for: sent, given up, held back or
			// dropped.
			waitFor(t, "the queue to drain", func() bool {
				c := w.Counts()
				return c.Changes == 401 && c.Sent+c.Failed+c.Suppressed+c.Dropped == c.Changes
			})
			if out := logs.String(); strings.Contains(out, secret) || !strings.Contains(out, "retrying") || !strings.Contains(out, "giving up") {
				t.Errorf("logs quote the URL's query, or do not tell of the retries and the giving up:\n%s", out)
			}
		})
	}
}

// TestWebhook_RateLimit: at most one message per state per Every; a state
// flapping faster is summarised in one message once Every has passed.
func TestWebhook_RateLimit(t *testing.T) {
	srv := newHookServer(t, ok)
	const every = time.Second
	logs := &syncBuffer{}
	w, err := NewWebhook(WebhookOptions{URL: srv.URL, Every: every, Retry: fastRetry, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	// Queued before Run starts, so all five are taken at once.
	for _, c := range [][2]Status{{Healthy, Degraded}, {Degraded, Healthy}, {Healthy, Degraded}, {Degraded, Healthy}, {Healthy, Degraded}} {
		w.Notify(stateChange(c[0], c[1]))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitFor(t, "two messages", func() bool { return w.Counts().Sent == 2 })
	if c := w.Counts(); c.Suppressed != 3 || c.Held != 3 {
		t.Fatalf("counts %+v; want 3 changes held back", c)
	}
	waitFor(t, "the summary", func() bool { return w.Counts().Sent == 3 })
	posts := srv.got()
	if c := w.Counts(); len(posts) != 3 || c.Held != 0 || c.Attempts != 3 {
		t.Fatalf("%d POSTs, counts %+v; want 3 and nothing held", len(posts), c)
	}
	var msgs [3]slackMessage
	for i, p := range posts {
		if err := json.Unmarshal(p.body, &msgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(msgs[0].Text, "is DEGRADED (was HEALTHY)") || !strings.Contains(msgs[1].Text, "is HEALTHY (was DEGRADED): all checks pass") {
		t.Errorf("first messages: %q, %q", msgs[0].Text, msgs[1].Text)
	}
	if !strings.Contains(msgs[2].Text, "is DEGRADED") || !strings.Contains(msgs[2].Text, "changed 3 times since the last message") {
		t.Errorf("summary: %q", msgs[2].Text)
	}
	if gap := posts[2].at.Sub(posts[0].at); gap < every/2 {
		t.Errorf("second DEGRADED message %s after the first, want about %s", gap, every)
	}
	// Within Every of the summary, DEGRADED is held back again.
	w.Notify(stateChange(Healthy, Degraded))
	waitFor(t, "the change to be held", func() bool { return w.Counts().Held == 1 })
	if n := len(srv.got()); n != 3 {
		t.Errorf("%d POSTs, want still 3", n)
	}
}

// TestWebhook_QueueDropsOldest: a full queue drops its oldest change, and
// the next message says how many were dropped.
func TestWebhook_QueueDropsOldest(t *testing.T) {
	w, err := NewWebhook(WebhookOptions{URL: "http://127.0.0.1:1/hook", Queue: 4, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for i := range 10 {
		c := stateChange(Healthy, Degraded)
		c.At = t0.Add(time.Duration(i) * time.Second)
		w.Notify(c)
	}
	q := w.take()
	if c := w.Counts(); c.Changes != 10 || c.Dropped != 6 || len(q) != 4 || !q[0].At.Equal(t0.Add(6*time.Second)) {
		t.Fatalf("counts %+v, queue of %d from %s; want the newest 4 kept, 6 dropped", c, len(q), q[0].At.Sub(t0))
	}
	msg := w.message(q[3], 7, 6)
	if !strings.Contains(msg.Text, "changed 7 times") || !strings.Contains(fieldsText(msg), "6 changes dropped") {
		t.Errorf("message does not tell of the dropped changes: %+v", msg)
	}
}

func fieldsText(m slackMessage) string {
	var b strings.Builder
	for _, a := range m.Attachments {
		for _, f := range a.Fields {
			b.WriteString(f.Title + ": " + f.Value + "\n")
		}
	}
	return b.String()
}

// TestWebhook_Answers: 429 and 5xx are retried; another 4xx is final.
func TestWebhook_Answers(t *testing.T) {
	for _, tc := range []struct {
		name             string
		answer           func(n int) int
		attempts         int64
		sent, failed     int64
		retriedOrGivenUp string
	}{
		{"bad request is final", func(int) int { return http.StatusBadRequest }, 1, 0, 1, "400 Bad Request"},
		{"not found is final", func(int) int { return http.StatusNotFound }, 1, 0, 1, "404 Not Found"},
		{"too many requests is retried", func(n int) int { return map[bool]int{true: 429, false: 200}[n == 1] }, 2, 1, 0, "429 Too Many Requests"},
		{"server error is retried", func(n int) int { return map[bool]int{true: 503, false: 200}[n < 3] }, 3, 1, 0, "503 Service Unavailable"},
		{"server error until given up", func(int) int { return http.StatusBadGateway }, 3, 0, 1, "502 Bad Gateway"},
		{"redirect is not followed", func(int) int { return http.StatusFound }, 1, 0, 1, "302 Found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newHookServer(t, tc.answer)
			w, logs := startHook(t, WebhookOptions{URL: srv.URL})
			w.Notify(stateChange(Healthy, Unhealthy))
			waitFor(t, "the outcome", func() bool { c := w.Counts(); return c.Sent+c.Failed == 1 })
			if c := w.Counts(); c.Attempts != tc.attempts || c.Sent != tc.sent || c.Failed != tc.failed {
				t.Errorf("counts %+v; want %d attempts, %d sent, %d failed", c, tc.attempts, tc.sent, tc.failed)
			}
			if out := logs.String(); !strings.Contains(out, tc.retriedOrGivenUp) {
				t.Errorf("logs lack %q:\n%s", tc.retriedOrGivenUp, out)
			}
		})
	}
}

// TestMonitor_OnChangeFromRun: Monitor.Run reports a change of status to
// the callback, and returns promptly once its context ends.
func TestMonitor_OnChangeFromRun(t *testing.T) {
	m := newTestMonitor("replication")
	stream, sk := &fakeStream{}, &fakeWrites{}
	stream.Streaming.Store(true)
	m.Attach(Parts{Source: stream, Writes: sk})
	changes := make(chan StateChange, 100)
	m.OnChange(func(c StateChange) { changes <- c })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	// Hold each state longer than a sample, so two samples differ.
	var got StateChange
	deadline := time.Now().Add(20 * time.Second)
	for failing := int64(6); got.To == ""; failing = 6 - failing {
		if time.Now().After(deadline) {
			t.Fatal("no change reported")
		}
		sk.Failing.Store(failing)
		select {
		case got = <-changes:
		case <-time.After(2500 * time.Millisecond):
		}
	}
	if got.From == got.To || (got.To != Unhealthy && got.To != Healthy) || got.Health.Status != got.To {
		t.Errorf("change %s → %s (health %s)", got.From, got.To, got.Health.Status)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Monitor.Run did not return")
	}
}

func TestWebhookURL(t *testing.T) {
	for raw, want := range map[string]string{
		"https://u:" + secret + "@hooks.slack.com/services/T/B/" + secret + "?x=" + secret: "https://hooks.slack.com/…",
		"http://127.0.0.1:9000":         "http://127.0.0.1:9000",
		"http://127.0.0.1:9000/":        "http://127.0.0.1:9000",
		"https://x.example?k=" + secret: "https://x.example/…",
	} {
		u, err := ParseWebhookURL(raw)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if got := SafeWebhookURL(u); got != want {
			t.Errorf("SafeWebhookURL(%q) = %q, want %q", raw, got, want)
		}
	}
	for _, raw := range []string{"", "hooks.slack.com/x", "ftp://x/y", "https:///x", "mailto:a@" + secret, "https://x/%zz" + secret} {
		if _, err := ParseWebhookURL(raw); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("ParseWebhookURL(%q) = %v; want an error quoting nothing", raw, err)
		}
	}
}
