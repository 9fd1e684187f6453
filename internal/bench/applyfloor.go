package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/myusta/cdc/internal/db"
)

// The latency floor of the sweep: the simplest real consumer of cdc's
// shape, measured at each rate as cdc and native are. A child process of
// this program (ApplyEnv set) reads the slot (pgoutput v1, binary) and
// applies each change at once with one prepared statement on one chat
// connection, autocommit, synchronous_commit off: no batching, no
// checkpoint row, no decoding beyond the three columns it writes, no
// goroutine between receiving and applying. It is the simplest such
// consumer, not the fastest possible one (cdc beats it at some rates), so
// its latency above native's marks a target no simple consumer meets, not
// a bound.

// ApplyEnv, when set in a cdc-bench process's environment, makes it the
// latency floor's consumer (see RunApply): a JSON object with the source
// and chat DSNs and the slot's name.
const ApplyEnv = "CDC_BENCH_APPLY"

// applySpec is ApplyEnv's value.
type applySpec struct{ Source, Chat, Slot string }

// applySlot is the latency floor's slot on the source.
const applySlot = "bench_apply_floor"

// Columns of the reference table's published tuple that the floor writes.
const (
	idColumn        = 0
	firstNameColumn = 1
	statusColumn    = 6
)

// RunApply is the latency floor's consumer: it streams spec's slot and
// applies each row update (status and updated_at, by id) and insert (the
// bench's marker rows) to chat, until it is killed or a connection fails.
func RunApply(spec string) error {
	var a applySpec
	if err := json.Unmarshal([]byte(spec), &a); err != nil {
		return fmt.Errorf("%s: %w", ApplyEnv, err)
	}
	ctx := context.Background()
	chat, err := pgconn.Connect(ctx, a.Chat)
	if err != nil {
		return fmt.Errorf("floor consumer: connect to chat: %w", err)
	}
	defer chat.Close(ctx)
	if _, err := chat.Exec(ctx, "SET synchronous_commit = off; SET application_name = "+quoteLiteral(applySlot)).ReadAll(); err != nil {
		return fmt.Errorf("floor consumer: %w", err)
	}
	for name, sql := range map[string]string{
		"u": "UPDATE public.users SET status = $2, updated_at = $3 WHERE id = $1",
		"i": "INSERT INTO public.users (id, first_name, updated_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
	} {
		if _, err := chat.Prepare(ctx, name, sql, nil); err != nil {
			return fmt.Errorf("floor consumer: prepare: %w", err)
		}
	}
	src, err := db.ConnectReplication(ctx, a.Source)
	if err != nil {
		return fmt.Errorf("floor consumer: %w", err)
	}
	defer src.Close(ctx)
	err = pglogrepl.StartReplication(ctx, src, a.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'cdc_users'", "binary 'true'"},
	})
	if err != nil {
		return fmt.Errorf("floor consumer: start replication: %w", err)
	}
	binary := []int16{1, 1, 1}
	var last pglogrepl.LSN
	next := time.Now().Add(time.Second)
	for {
		msg, err := src.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("floor consumer: receive: %w", err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		reply := false
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return err
			}
			reply = k.ReplyRequested
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return err
			}
			last = max(last, x.WALStart+pglogrepl.LSN(len(x.WALData)))
			m, err := pglogrepl.Parse(x.WALData)
			if err != nil {
				return err
			}
			var stmt string
			var t *pglogrepl.TupleData
			var second int
			switch m := m.(type) {
			case *pglogrepl.UpdateMessage:
				stmt, t, second = "u", m.NewTuple, statusColumn
			case *pglogrepl.InsertMessage:
				stmt, t, second = "i", m.Tuple, firstNameColumn
			}
			if t != nil {
				c := t.Columns
				params := [][]byte{c[idColumn].Data, c[second].Data, c[updatedAtColumn].Data}
				if _, err := chat.ExecPrepared(ctx, stmt, params, binary, nil).Close(); err != nil {
					return fmt.Errorf("floor consumer: apply: %w", err)
				}
			}
		}
		if reply || time.Now().After(next) {
			err := pglogrepl.SendStandbyStatusUpdate(ctx, src, pglogrepl.StandbyStatusUpdate{WALWritePosition: last})
			if err != nil {
				return fmt.Errorf("floor consumer: %w", err)
			}
			next = time.Now().Add(time.Second)
		}
	}
}

// applyFloor measures the latency floor for one sweep window at
// o.SteadyTPS, as steadyPhase measures cdc and native: into the COPY
// pipe's database (free after the copy, latency trigger installed).
func applyFloor(ctx context.Context, s *servers, ids []string, o Options) (Steady, error) {
	c := ceiling{dsn: s.sourceDSN, slot: applySlot}
	if err := c.create(ctx); err != nil {
		return Steady{}, err
	}
	defer c.drop()
	spec, err := json.Marshal(applySpec{Source: s.sourceDSN, Chat: s.chat.DSN(chatPipe), Slot: applySlot})
	if err != nil {
		return Steady{}, err
	}
	self, err := os.Executable()
	if err != nil {
		return Steady{}, err
	}
	cmd := exec.CommandContext(ctx, self)
	cmd.Env = append(os.Environ(), ApplyEnv+"="+string(spec))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return Steady{}, fmt.Errorf("start the floor consumer: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	st, err := steadyPhase(ctx, s, s.pipe, ids, o, "latency floor", nil, func(ctx context.Context) ([]procGroup, error) {
		return consumerProcesses(ctx, s, "floor consumer", cmd.Process.Pid, applySlot,
			s.pipe, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", applySlot)
	})
	select {
	case werr := <-exited:
		// It never ends on its own: its error is why the window failed.
		exited <- werr
		if err == nil {
			err = fmt.Errorf("floor consumer: %v", werr)
		}
	default:
	}
	if err != nil {
		return st, fmt.Errorf("latency floor: %w", err)
	}
	return st, nil
}
