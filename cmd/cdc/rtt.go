package main

import (
	"context"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// roundTrip is the median of a few pings on one pooled connection: the
// network round trip to the database (the connection is opened first, so
// its set-up is not counted).
func roundTrip(ctx context.Context, pool *pgxpool.Pool) (time.Duration, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	var rts []time.Duration
	for range 3 {
		start := time.Now()
		if err := conn.Ping(ctx); err != nil {
			return 0, err
		}
		rts = append(rts, time.Since(start))
	}
	slices.Sort(rts)
	return rts[len(rts)/2], nil
}

// farFromChat: cdc is farther from chat than this many times its round
// trip to the source, and chat's is at least minFar.
const (
	farFromChat = 3
	minFar      = 5 * time.Millisecond
)

// logRoundTrips measures the round trip to each database at start and
// says where cdc runs best. Each chat transaction waits for a round trip
// to chat, one after the other, while the source streams to cdc without
// waiting for it: beside chat, cdc keeps native replication's latency;
// beside the source, each commit pays the distance (see BENCHMARKS.md,
// "Across regions").
func logRoundTrips(ctx context.Context, log *slog.Logger, src, chat *pgxpool.Pool) {
	s, err := roundTrip(ctx, src)
	if err != nil {
		return // the preflight reports an unreachable database
	}
	c, err := roundTrip(ctx, chat)
	if err != nil {
		return
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	log.Info("round trips", "source_ms", ms(s), "chat_ms", ms(c))
	if c >= minFar && c > farFromChat*s {
		log.Warn("cdc runs far from chat: every chat commit waits a round trip to chat, so latency and catch-up suffer; run cdc beside the chat database (in its region), where only the source's stream crosses the distance",
			"source_ms", ms(s), "chat_ms", ms(c))
	}
}
