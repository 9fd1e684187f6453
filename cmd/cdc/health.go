package main

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/health"
)

// startHealth binds HTTP_ADDR and serves the health endpoints, /stats,
// /metrics and the status page until stop is called or ctx ends. A port
// that cannot be bound is fatal: orchestrators' probes depend on it.
func startHealth(ctx context.Context, cfg *config.Config, log *slog.Logger) (mon *health.Monitor, stop func(), err error) {
	mon = health.NewMonitor(health.Options{Mode: cfg.Mode, Logger: log, Thresholds: health.Thresholds{
		LagWarn:           cfg.LagWarn,
		LagCritical:       cfg.LagCritical,
		SlotWALWarnBytes:  cfg.SlotWALWarnBytes,
		ReconcileInterval: cfg.SyncInterval,
		// Reconnects are probed every RETRY_MAX_DELAY at the slowest:
		// give two probes before a lost source counts as a failure.
		StallAfter: max(time.Minute, 2*cfg.RetryMaxDelay),
	}})
	srv, err := health.Listen(cfg.HTTPAddr, mon, log)
	if err != nil {
		return nil, nil, err
	}
	srv.WebConfig = cfg.WebConfigFile
	if cfg.WebConfigFile == "" && !loopback(cfg.HTTPAddr) {
		log.Info("HTTP_ADDR is not loopback and the listener has neither TLS nor authentication: if other hosts can reach it, set WEB_CONFIG_FILE (TLS, basic auth) or bind 127.0.0.1", "http_addr", cfg.HTTPAddr)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		mon.Run(ctx)
	}()
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx); err != nil {
			log.Error("health HTTP server stopped; /healthz, /readyz, /stats and /metrics are unavailable", "err", err)
		}
	}()
	return mon, func() { cancel(); wg.Wait() }, nil
}

// loopback reports that addr (host:port) listens only on this host.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
