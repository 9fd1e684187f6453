package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/myusta/cdc/internal/db"
)

// ceiling is a consumer that reads the slot and discards everything: the
// time it takes is what the source's walsender alone needs to decode and
// send the backlog, a floor no consumer can beat.
type ceiling struct {
	dsn, slot string
}

// create makes the slot; it must exist before the backlog is written.
func (c *ceiling) create(ctx context.Context) error {
	conn, err := db.ConnectReplication(ctx, c.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = pglogrepl.CreateReplicationSlot(ctx, conn, c.slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication})
	if err != nil {
		return fmt.Errorf("create ceiling slot: %w", err)
	}
	return nil
}

// drop drops the slot, waiting for its consumer to let go of it.
func (c *ceiling) drop() {
	if conn, err := db.ConnectReplication(context.Background(), c.dsn); err == nil {
		_ = pglogrepl.DropReplicationSlot(context.Background(), conn, c.slot, pglogrepl.DropReplicationSlotOptions{Wait: true})
		_ = conn.Close(context.Background())
	}
}

// drain reads the slot until the insert of the marker row arrives (its
// uuid's 16 bytes appear in an Insert message), returns how long that took,
// and drops the slot.
func (c *ceiling) drain(ctx context.Context, marker string) (time.Duration, error) {
	var id pgtype.UUID
	if err := id.Scan(marker); err != nil {
		return 0, err
	}
	conn, err := db.ConnectReplication(ctx, c.dsn)
	if err != nil {
		return 0, err
	}
	defer func() {
		_ = conn.Close(context.Background())
		c.drop()
	}()
	start := time.Now()
	err = pglogrepl.StartReplication(ctx, conn, c.slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'cdc_users'", "binary 'true'"},
	})
	if err != nil {
		return 0, fmt.Errorf("start ceiling replication: %w", err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return 0, fmt.Errorf("ceiling receive: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return 0, pgconn.ErrorResponseToPgError(m)
		case *pgproto3.CopyData:
			// XLogData: 'w', 24 bytes of header, then the pgoutput message.
			if len(m.Data) > 25 && m.Data[0] == pglogrepl.XLogDataByteID && m.Data[25] == 'I' && bytes.Contains(m.Data[26:], id.Bytes[:]) {
				return time.Since(start), nil
			}
		}
	}
}

// latency consumes the slot for as long as ctx lives and returns, for each
// updated row, the time from its updated_at (set by clock_timestamp() in the
// source transaction, as for the consumers) to its arrival here, in ms:
// replication's own latency, before any consumer applies anything. The slot
// is dropped at the end.
func (c *ceiling) latency(ctx context.Context) ([]float64, error) {
	conn, err := db.ConnectReplication(context.Background(), c.dsn)
	if err != nil {
		return nil, err
	}
	defer func() {
		_ = conn.Close(context.Background())
		c.drop()
	}()
	err = pglogrepl.StartReplication(context.Background(), conn, c.slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'cdc_users'", "binary 'true'"},
	})
	if err != nil {
		return nil, fmt.Errorf("start floor replication: %w", err)
	}
	var ms []float64
	var last pglogrepl.LSN
	next := time.Now().Add(time.Second)
	for ctx.Err() == nil {
		_ = conn.Conn().SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		msg, err := conn.ReceiveMessage(context.Background())
		if pgconn.Timeout(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("floor receive: %w", err)
		}
		m, ok := msg.(*pgproto3.CopyData)
		if !ok || len(m.Data) < 26 || m.Data[0] != pglogrepl.XLogDataByteID {
			continue
		}
		x, err := pglogrepl.ParseXLogData(m.Data[1:])
		if err != nil {
			return nil, err
		}
		last = max(last, x.WALStart)
		if t, ok := updatedAt(x.WALData); ok {
			ms = append(ms, float64(time.Since(t).Microseconds())/1000)
		}
		if time.Now().After(next) {
			// Confirm what was read, as any healthy consumer would.
			_ = pglogrepl.SendStandbyStatusUpdate(context.Background(), conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: last})
			next = time.Now().Add(time.Second)
		}
	}
	return ms, nil
}

// updatedAtColumn is updated_at's position among the published columns of
// the reference table.
const updatedAtColumn = 9

// updatedAt reads updated_at from a pgoutput Update message in binary form.
func updatedAt(m []byte) (time.Time, bool) {
	if len(m) < 8 || m[0] != 'U' {
		return time.Time{}, false
	}
	m = m[5:]
	if m[0] == 'K' || m[0] == 'O' {
		var ok bool
		if m, ok = skipTuple(m); !ok {
			return time.Time{}, false
		}
	}
	if len(m) < 3 || m[0] != 'N' {
		return time.Time{}, false
	}
	n := int(binary.BigEndian.Uint16(m[1:3]))
	m = m[3:]
	for i := 0; i < n && len(m) > 0; i++ {
		kind := m[0]
		m = m[1:]
		if kind != 'b' && kind != 't' {
			continue
		}
		l := int(binary.BigEndian.Uint32(m))
		v := m[4 : 4+l]
		m = m[4+l:]
		if i == updatedAtColumn && kind == 'b' && l == 8 {
			us := int64(binary.BigEndian.Uint64(v))
			return time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(us) * time.Microsecond), true
		}
	}
	return time.Time{}, false
}

// skipTuple returns what follows a tuple introduced by its tag byte.
func skipTuple(m []byte) ([]byte, bool) {
	if len(m) < 3 {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(m[1:3]))
	m = m[3:]
	for i := 0; i < n; i++ {
		if len(m) < 1 {
			return nil, false
		}
		kind := m[0]
		m = m[1:]
		if kind == 'b' || kind == 't' {
			l := int(binary.BigEndian.Uint32(m))
			m = m[4+l:]
		}
	}
	return m, true
}
