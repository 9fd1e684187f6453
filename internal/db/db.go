// Package db opens cdc's database connections: pools for queries and the
// replication connection, all with connect timeouts and TCP keepalives so a
// half-open connection after a failover is noticed.
package db

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ApplicationName is reported to PostgreSQL (pg_stat_activity).
const ApplicationName = "cdc"

// dialer enables TCP keepalives: a peer that vanished is detected within
// about 30 s instead of the kernel's default two hours.
var dialer = &net.Dialer{
	Timeout:         10 * time.Second,
	KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 15 * time.Second, Interval: 5 * time.Second, Count: 3},
}

// TextSettings fix how every cdc session writes values as text, whatever
// the servers' configuration: values that travel in text form (see
// schema.Format) are one server's output read by another's input, and are
// compared byte for byte, so both sides must write them alike. They are
// the settings PostgreSQL's own subscriptions use for their walsender
// (datestyle ISO, intervalstyle postgres, extra_float_digits 3), plus UTC,
// so timestamps with time zone print alike, and hex bytea. They are set
// once a connection is up rather than in the startup packet, which
// connection poolers accept only for a few parameters.
const TextSettings = "SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; " +
	"SET TimeZone = 'UTC'; SET bytea_output = 'hex'"

func tune(cfg *pgconn.Config) {
	cfg.DialFunc = dialer.DialContext
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = ApplicationName
	}
	cfg.AfterConnect = func(ctx context.Context, pc *pgconn.PgConn) error {
		if _, err := pc.Exec(ctx, TextSettings).ReadAll(); err != nil {
			return fmt.Errorf("set session: %w", err)
		}
		return nil
	}
}

// NewPool opens a pool of at most size connections to dsn.
func NewPool(ctx context.Context, dsn string, size int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("parse DSN: invalid connection string")
	}
	tune(&cfg.ConnConfig.Config)
	cfg.MaxConns = size
	cfg.MinConns = 0
	cfg.HealthCheckPeriod = 15 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	return pool, nil
}

// ConnectReplication opens a logical replication connection (replication =
// database) to dsn.
func ConnectReplication(ctx context.Context, dsn string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("parse DSN: invalid connection string")
	}
	tune(cfg)
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open replication connection: %w", err)
	}
	return conn, nil
}

// Connect opens one plain connection to dsn.
func Connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	return connect(ctx, dsn, true)
}

// connect opens one connection to dsn, with TextSettings applied when
// settings is set.
func connect(ctx context.Context, dsn string, settings bool) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, errors.New("parse DSN: invalid connection string")
	}
	tune(&cfg.Config)
	if !settings {
		cfg.AfterConnect = nil
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}
