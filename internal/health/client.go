package health

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
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
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/stats", nil)
	if err != nil {
		return nil, nil, fmt.Errorf("build request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("get %s/stats: %w", base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s/stats: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, body, fmt.Errorf("get %s/stats: %s", base, resp.Status)
	}
	var st Stats
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, body, fmt.Errorf("decode %s/stats: %w", base, err)
	}
	return &st, body, nil
}
