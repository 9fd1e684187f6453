package main

import (
	"context"
	"log/slog"
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
