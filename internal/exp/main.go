package main

import (
	"context"
	"fmt"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/sink"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/demo"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
)

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func main() {
	ctx := context.Background()
	set := map[string]string{"max_wal_size": "4GB", "shared_buffers": "256MB"}
	srv, err := pglocal.Start(ctx, pglocal.Options{Settings: set})
	must(err)
	defer srv.Stop()
	must(srv.CreateDatabase(ctx, "b"))
	must(srv.CreateDatabase(ctx, "c"))
	sp, _ := db.NewPool(ctx, srv.DSN("b"), 8)
	cp, _ := db.NewPool(ctx, srv.DSN("c"), 8)
	must(demo.CreateSchema(ctx, sp))
	must(demo.Seed(ctx, sp, 1000000))
	cfg, _ := config.Load(config.MapSource(nil))
	spec := migrations.SpecFor(cfg)
	migrations.MigrateChat(ctx, cp, nil)
	migrations.EnsureChatTable(ctx, sp, cp, spec)
	s, _ := sp.Acquire(ctx)
	rows, _ := s.Query(ctx, "SELECT id::text FROM users")
	ids, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	s.Release()
	tbl, err := schema.Load(ctx, sp, "public.users", cfg.Columns, "id", "updated_at")
	must(err)
	a, _ := sp.Acquire(ctx)
	b, _ := cp.Acquire(ctx)
	pr, pw := io.Pipe()
	go func() {
		_, err := a.Conn().PgConn().CopyTo(ctx, pw, "COPY users ("+tbl.ColumnList()+") TO STDOUT (FORMAT binary)")
		pw.CloseWithError(err)
	}()
	_, err = b.Conn().PgConn().CopyFrom(ctx, pr, "COPY users ("+tbl.ColumnList()+") FROM STDIN (FORMAT binary)")
	must(err)
	a.Release()
	b.Release()
	_, err = cp.Exec(ctx, "VACUUM ANALYZE users")
	must(err)
	ctbl, err := schema.Load(ctx, cp, "public.users", cfg.Columns, "id", "updated_at")
	must(err)
	sk := sink.New(cp, ctbl, sink.Options{Slot: "x", Retry: retry.Policy{Initial: time.Millisecond, Max: time.Second, Multiplier: 2, Loud: 3}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	m := pgtype.NewMap()
	enc := func(oid uint32, v any) []byte { b, err := m.Encode(oid, 1, v, nil); must(err); return b }
	mk := func(size, k int) *sink.Batch {
		bt := sink.NewBatch(len(ctbl.Columns), ctbl.Key)
		for j := 0; j < size; j++ {
			id := ids[(k*size+j*7919)%len(ids)]
			var u pgtype.UUID
			u.Scan(id)
			v := bt.NewValues()
			for i, c := range ctbl.Columns {
				switch c.Name {
				case "id":
					v[i] = bt.Copy(enc(c.TypeOID, u))
				case "created_at", "updated_at":
					v[i] = bt.Copy(enc(c.TypeOID, time.Now()))
				default:
					v[i] = bt.Copy([]byte("value " + c.Name))
				}
			}
			bt.Add(sink.Change{Op: sink.OpUpsert, Values: v})
		}
		bt.Checkpoint = sink.Checkpoint{LSN: 1}
		return bt
	}
	for round := 0; round < 3; round++ {
		for _, size := range []int{999, 1000, 10000} {
			var bs []*sink.Batch
			for k := 0; k*size < 200000; k++ {
				bs = append(bs, mk(size, k+round*1000))
			}
			t0 := time.Now()
			for _, bt := range bs {
				must(sk.Apply(ctx, bt))
			}
			d := time.Since(t0)
			fmt.Printf("round %d size %d: %.0f rows/s\n", round, size, float64(len(bs)*size)/d.Seconds())
		}
	}

}
