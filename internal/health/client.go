package health

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// BaseURL is where a cdc listening on addr (HTTP_ADDR) is reached from
// this host: a wildcard or empty host is reached on loopback.
func BaseURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("HTTP_ADDR %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// Fetch reads the /stats document of the cdc at base, returning it both
// decoded and as sent.
func Fetch(ctx context.Context, base string) (*Stats, []byte, error) {
	body, err := get(ctx, base+"/stats")
	if err != nil {
		return nil, body, err
	}
	var st Stats
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, body, fmt.Errorf("decode %s/stats: %w", base, err)
	}
	return &st, body, nil
}

// Live asks the cdc at base whether its process is alive (/healthz): the
// container health check, for an image with no shell or curl.
func Live(ctx context.Context, base string) error {
	_, err := get(ctx, base+"/healthz")
	return err
}

// Scrape reads and parses the /metrics of the cdc at base.
func Scrape(ctx context.Context, base string) (map[string]*dto.MetricFamily, error) {
	body, err := get(ctx, base+"/metrics")
	if err != nil {
		return nil, err
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parse %s/metrics: %w", base, err)
	}
	return families, nil
}

// Value returns the value of the first sample of the metric name whose
// labels include labels (name, value pairs): a counter's or gauge's value,
// a histogram's sample count.
func Value(families map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := families[name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.Metric {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		found := false
		for _, l := range m.Label {
			found = found || (l.GetName() == labels[i] && l.GetValue() == labels[i+1])
		}
		if !found {
			return false
		}
	}
	return true
}

// get returns the body of a 200 answer to GET url, within 5 s.
func get(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("get %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return body, fmt.Errorf("get %s: %s", url, resp.Status)
	}
	return body, nil
}
