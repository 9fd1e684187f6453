package health

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/myusta/cdc/internal/retry"
)

// Defaults of a Webhook.
const (
	webhookTimeout  = 5 * time.Second // one POST
	webhookEvery    = time.Minute     // at most one message per state this often
	webhookQueue    = 16              // changes waiting to be sent
	webhookAttempts = 4               // POSTs of one message, when Retry.Attempts is 0
)

// WebhookOptions configure a Webhook.
type WebhookOptions struct {
	// URL is ALERT_WEBHOOK_URL: an absolute http or https URL. Its
	// userinfo, path and query are treated as secret (a Slack webhook's
	// token is its path): logs and errors show only its scheme and host.
	URL string
	// Host, Slot and Mode name this cdc in the messages.
	Host, Slot, Mode string
	// Retry paces the attempts of one message (retry.Do, the one retry
	// policy); Attempts bounds them (default 4). Timeouts, failed
	// connections, 429 and 5xx answers are retried; any other answer is
	// final.
	Retry   retry.Policy
	Timeout time.Duration // of one POST (default 5s)
	Every   time.Duration // at most one message per state this often (default 1m)
	Queue   int           // changes waiting to be sent (default 16); beyond, the oldest is dropped
	Client  *http.Client  // default: one that does not follow redirects
	Logger  *slog.Logger
}

// Webhook posts a Slack-compatible message each time the overall health
// status changes. Notify queues a change and never blocks; Run, on a
// goroutine of its own, sends the messages: rate-limited (a state flapping
// faster than Every is summarised in one message), each POST bounded by
// Timeout and retried by Retry. A message carries the states, the names,
// levels and recommendations of the checks that do not pass, counts,
// host, slot and mode: never row data, DSNs or the webhook URL.
type Webhook struct {
	opts   WebhookOptions
	url    string // as given: secret
	safe   string // scheme://host/… for logs
	client *http.Client
	log    *slog.Logger
	wake   chan struct{}

	mu      sync.Mutex
	queue   []StateChange
	counts  WebhookCounts
	dropped int // changes dropped since the last message

	// Run's goroutine only.
	lastSent map[Status]time.Time // last message per state
	held     *StateChange         // the newest change the rate limit held back
	heldN    int                  // changes held back since the last message
}

// WebhookCounts are what a Webhook did since it was made.
type WebhookCounts struct {
	Changes    int64 // changes Notify was given
	Sent       int64 // messages delivered
	Failed     int64 // messages given up after their attempts
	Attempts   int64 // POSTs made
	Dropped    int64 // changes dropped from the full queue
	Suppressed int64 // changes the rate limit held back
	Held       int   // changes held back now, awaiting a summary
}

// NewWebhook checks o.URL and returns a Webhook; Run sends its messages.
func NewWebhook(o WebhookOptions) (*Webhook, error) {
	u, err := ParseWebhookURL(o.URL)
	if err != nil {
		return nil, err
	}
	if o.Timeout <= 0 {
		o.Timeout = webhookTimeout
	}
	if o.Every <= 0 {
		o.Every = webhookEvery
	}
	if o.Queue <= 0 {
		o.Queue = webhookQueue
	}
	if o.Retry.Attempts <= 0 {
		o.Retry.Attempts = webhookAttempts
	}
	if o.Retry.Initial <= 0 {
		o.Retry.Initial = time.Second
	}
	if o.Retry.Max < o.Retry.Initial {
		o.Retry.Max = max(30*time.Second, o.Retry.Initial)
	}
	if o.Retry.Multiplier < 1 {
		o.Retry.Multiplier = 2
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	client := o.Client
	if client == nil {
		client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	return &Webhook{opts: o, url: o.URL, safe: SafeWebhookURL(u), client: client,
		log: o.Logger.With("component", "alerts"), wake: make(chan struct{}, 1), lastSent: map[Status]time.Time{}}, nil
}

// ParseWebhookURL parses an alert webhook URL: absolute, http or https,
// with a host. Its errors quote nothing of it.
func ParseWebhookURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return nil, errors.New("the alert webhook URL cannot be read as a URL: want an absolute http:// or https:// URL")
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("the alert webhook URL is not an http:// or https:// URL")
	case u.Host == "":
		return nil, errors.New("the alert webhook URL has no host")
	}
	return u, nil
}

// SafeWebhookURL is u for logs: its scheme and host, with "/…" for a path
// or query, which may hold a token.
func SafeWebhookURL(u *url.URL) string {
	s := u.Scheme + "://" + u.Host
	if (u.Path != "" && u.Path != "/") || u.RawPath != "" || u.RawQuery != "" || u.Opaque != "" {
		s += "/…"
	}
	return s
}

// Notify queues c for Run and returns at once; it is what Monitor.OnChange
// is given. When the queue is full the oldest change is dropped (and
// counted, and mentioned in the next message).
func (w *Webhook) Notify(c StateChange) {
	w.mu.Lock()
	w.counts.Changes++
	if len(w.queue) >= w.opts.Queue {
		n := copy(w.queue, w.queue[1:])
		w.queue = w.queue[:n]
		w.counts.Dropped++
		w.dropped++
	}
	w.queue = append(w.queue, c)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Counts returns what the webhook did so far.
func (w *Webhook) Counts() WebhookCounts {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.counts
}

// Run sends the queued changes until ctx ends; a POST in flight is
// abandoned then. The daemon runs it on a goroutine it joins on shutdown.
func (w *Webhook) Run(ctx context.Context) {
	w.log.Info("health alerts on: a change of the health status is posted to ALERT_WEBHOOK_URL", "webhook", w.safe,
		"at_most_every", w.opts.Every.String(), "timeout", w.opts.Timeout.String())
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
		case <-timer.C:
		}
		for _, c := range w.take() {
			if ctx.Err() != nil {
				return
			}
			w.handle(ctx, c)
		}
		if w.held == nil || ctx.Err() != nil {
			continue
		}
		// The state flapped: summarise once its rate limit has passed.
		if due := w.lastSent[w.held.To].Add(w.opts.Every); time.Now().Before(due) {
			timer.Reset(time.Until(due))
		} else {
			w.send(ctx, *w.held, true)
		}
	}
}

// take empties the queue.
func (w *Webhook) take() []StateChange {
	w.mu.Lock()
	defer w.mu.Unlock()
	q := w.queue
	w.queue = nil
	return q
}

// handle sends c, or holds it back when a message about its state went
// out less than Every ago.
func (w *Webhook) handle(ctx context.Context, c StateChange) {
	if last, ok := w.lastSent[c.To]; ok && time.Since(last) < w.opts.Every {
		w.held = &c
		w.heldN++
		w.mu.Lock()
		w.counts.Suppressed++
		w.counts.Held = w.heldN
		w.mu.Unlock()
		return
	}
	w.send(ctx, c, false)
}

// send posts the message about c, retried by the policy; summary tells
// that c is itself the newest of the changes held back.
func (w *Webhook) send(ctx context.Context, c StateChange, summary bool) {
	changes := w.heldN
	if !summary {
		changes++
	}
	w.mu.Lock()
	dropped := w.dropped
	w.dropped, w.counts.Held = 0, 0
	w.mu.Unlock()
	w.held, w.heldN = nil, 0
	// The rate limit counts attempts, delivered or not: a webhook that is
	// down gets no more than one message per state per Every.
	w.lastSent[c.To] = time.Now()
	body, err := json.Marshal(w.message(c, changes+dropped, dropped))
	if err != nil {
		w.log.Error("cannot encode the health alert", "err", err)
		return
	}
	what := "post the health alert to ALERT_WEBHOOK_URL (" + w.safe + ")"
	err = retry.Do(ctx, w.opts.Retry, w.log, what, func(ctx context.Context) error { return w.post(ctx, body) })
	switch {
	case err == nil:
		w.mu.Lock()
		w.counts.Sent++
		w.mu.Unlock()
		w.log.Info("health alert sent", "status", string(c.To), "was", string(c.From), "webhook", w.safe)
	case ctx.Err() != nil: // shutting down
	default:
		w.mu.Lock()
		w.counts.Failed++
		w.mu.Unlock()
		w.log.Error("health alert not delivered; giving up on this message",
			"status", string(c.To), "was", string(c.From), "webhook", w.safe, "attempts", w.opts.Retry.Attempts, "err", err)
	}
}

// post makes one POST of body within Timeout.
func (w *Webhook) post(ctx context.Context, body []byte) error {
	w.mu.Lock()
	w.counts.Attempts++
	w.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		// Its text would quote the URL.
		return errors.New("cannot make a request of ALERT_WEBHOOK_URL")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "cdc")
	resp, err := w.client.Do(req)
	if err != nil {
		return w.transportError(ctx, rctx, err)
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	status := fmt.Sprintf("%d %s", code, http.StatusText(code))
	switch {
	case code >= 200 && code < 300:
		return nil
	case code == http.StatusTooManyRequests || code >= 500:
		return &deliveryError{msg: "the webhook answered " + status}
	}
	return fmt.Errorf("the webhook answered %s, which another attempt would not change: check ALERT_WEBHOOK_URL", status)
}

// transportError is the error of a POST that got no answer, without the
// URL (*url.Error quotes it, query included).
func (w *Webhook) transportError(ctx, rctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("alert webhook: %w", ctx.Err()) // shutting down: not retried
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	if rctx.Err() != nil {
		return &deliveryError{msg: fmt.Sprintf("the webhook did not answer within %s", w.opts.Timeout), timeout: true}
	}
	if retry.CertificateProblem(err) {
		return fmt.Errorf("the webhook's TLS certificate failed verification: %w", err)
	}
	return &deliveryError{msg: "cannot reach the webhook", err: err}
}

// deliveryError is a failed POST worth another attempt: a timeout, a
// failed connection, 429 or 5xx. It is a net.Error, which retry.Do (the
// one retry policy) retries. A timeout keeps no cause: retry never retries
// a context deadline, and this one is only the request's own.
type deliveryError struct {
	msg     string
	err     error
	timeout bool
}

func (e *deliveryError) Error() string {
	if e.err == nil {
		return e.msg
	}
	return e.msg + ": " + e.err.Error()
}

func (e *deliveryError) Unwrap() error   { return e.err }
func (e *deliveryError) Timeout() bool   { return e.timeout }
func (e *deliveryError) Temporary() bool { return true }
