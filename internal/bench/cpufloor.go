package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// The CPU floor of the sweep: the least CPU per change a consumer built as
// cdc is (a Go process beside PostgreSQL that applies each change through
// a chat backend) can spend at a rate, measured in the same run as
// native's apply worker, which decodes nothing and applies inside the chat
// server. Two processes, measured together in one window:
//
//   - relay: a child process of this program (RelayEnv set) reads each
//     change as three small messages written one by one to a loopback
//     connection, as the source's walsender flushes Begin, the row and
//     Commit, then writes one message to a second connection and waits for
//     its echo: the Go runtime's wake-ups per change, with no decoding,
//     encoding or SQL. One goroutine does both, the cheapest shape.
//   - chat backend: one prepared single-row UPDATE (two columns, one of
//     them indexed, as the load's are) per change, autocommit, with
//     synchronous_commit off as cdc and native commit, on a chat backend
//     of its own, in the COPY pipe's database (free after the copy): the
//     least a chat backend does to apply one change sent as SQL.
//
// When these two alone use more CPU per change than native's apply worker,
// the CPU target is out of reach at that rate for any consumer of this
// shape, whatever cdc does.

// RelayEnv, when set in a cdc-bench process's environment, makes it the
// relay of the CPU floor: "source-address,chat-address" (see RunRelay).
const RelayEnv = "CDC_BENCH_RELAY"

// relayParts is how many messages make one change (Begin, row, Commit),
// and relayMsg their size, about a single-row update's.
const (
	relayParts = 3
	relayMsg   = 200
)

// Floor is one window of the CPU floor at a rate: CPU time, in ms per
// 1,000 changes, of the relay process and of the chat backend; and the
// median round trip of the chat backend's UPDATE, in ms: the hop a
// consumer of cdc's shape makes after receiving a change and native's
// apply worker does not.
type Floor struct {
	Relay, Chat float64
	RoundTrip   float64
}

// Total is the floor's CPU per 1,000 changes.
func (f Floor) Total() float64 { return f.Relay + f.Chat }

// RunRelay is the relay process (see the comment above): it reads changes
// from the source address and, after each change's last message, writes
// one message to the chat address and waits for its echo, until the
// source closes.
func RunRelay(addrs string) error {
	srcAddr, chatAddr, ok := strings.Cut(addrs, ",")
	if !ok {
		return fmt.Errorf("%s: want source,chat addresses, got %q", RelayEnv, addrs)
	}
	src, err := net.Dial("tcp", srcAddr)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer src.Close()
	chat, err := net.Dial("tcp", chatAddr)
	if err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	defer chat.Close()
	in, reply := bufio.NewReader(src), bufio.NewReader(chat)
	msg, answer := make([]byte, relayMsg), make([]byte, relayMsg)
	for n := 1; ; n++ {
		if _, err := io.ReadFull(in, msg); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("relay: read source: %w", err)
		}
		if n%relayParts != 0 {
			continue
		}
		if _, err := chat.Write(msg); err != nil {
			return fmt.Errorf("relay: write chat: %w", err)
		}
		if _, err := io.ReadFull(reply, answer); err != nil {
			return fmt.Errorf("relay: read chat: %w", err)
		}
	}
}

// cpuFloor measures the floor at rate for d: the relay and the chat
// backend run side by side, each paced at rate.
func cpuFloor(ctx context.Context, s *servers, ids []string, rate int, d time.Duration) (Floor, error) {
	relay, err := startRelay(ctx)
	if err != nil {
		return Floor{}, err
	}
	defer relay.close()
	conn, err := pgx.Connect(ctx, s.chat.DSN(chatPipe))
	if err != nil {
		return Floor{}, fmt.Errorf("cpu floor: %w", err)
	}
	defer conn.Close(context.Background())
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid(), set_config('synchronous_commit', 'off', false)").Scan(&pid, nil); err != nil {
		return Floor{}, fmt.Errorf("cpu floor: %w", err)
	}
	if _, err := conn.Prepare(ctx, "floor", updateOne); err != nil {
		return Floor{}, fmt.Errorf("cpu floor: %w", err)
	}
	w := startCPU([]procGroup{{"relay", []int{relay.cmd.Process.Pid}}, {"chat", []int{pid}}})
	errs := make(chan error, 1)
	go func() { errs <- relay.send(rate, d) }()
	var took []float64
	err = paced(rate, d, func(i int) error {
		t0 := time.Now()
		_, err := conn.Exec(ctx, "floor", ids[i%len(ids)], "floor")
		took = append(took, float64(time.Since(t0).Microseconds())/1000)
		return err
	})
	n := len(took)
	if rerr := <-errs; err == nil {
		err = rerr
	}
	// Read before the relay ends: its start-up and exit are not the floor.
	use := w.stop()
	if err == nil {
		err = relay.end()
	}
	if err != nil {
		return Floor{}, fmt.Errorf("cpu floor: %w", err)
	}
	per := func(p ProcCPU) float64 { return p.Percent / 100 * use.Secs * 1e6 / float64(n) }
	return Floor{Relay: per(use.Procs[0]), Chat: per(use.Procs[1]), RoundTrip: quantiles(took)[0]}, nil
}

// paced calls f(0), f(1), … rate times a second, evenly, for d.
func paced(rate int, d time.Duration, f func(i int) error) error {
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	next := start
	for i := 0; time.Since(start) < d; i++ {
		if wait := time.Until(next); wait > 0 {
			time.Sleep(wait)
		}
		next = next.Add(interval)
		if err := f(i); err != nil {
			return err
		}
	}
	return nil
}

// relayProc is a running relay and the two ends this process plays.
type relayProc struct {
	cmd       *exec.Cmd
	src, chat net.Listener
	conn      net.Conn       // the relay's source connection
	echoes    sync.WaitGroup // the chat end's goroutines
}

// startRelay starts the relay child and accepts its source connection;
// its chat connection is echoed.
func startRelay(ctx context.Context) (*relayProc, error) {
	r := &relayProc{}
	var err error
	if r.src, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, err
	}
	if r.chat, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		r.src.Close()
		return nil, err
	}
	r.echoes.Go(func() { echo(r.chat, &r.echoes) })
	self, err := os.Executable()
	if err != nil {
		r.close()
		return nil, err
	}
	r.cmd = exec.CommandContext(ctx, self)
	r.cmd.Env = append(os.Environ(), RelayEnv+"="+r.src.Addr().String()+","+r.chat.Addr().String())
	r.cmd.Stdout, r.cmd.Stderr = os.Stderr, os.Stderr
	if err := r.cmd.Start(); err != nil {
		r.close()
		return nil, fmt.Errorf("start relay: %w", err)
	}
	if r.conn, err = r.src.Accept(); err != nil {
		r.close()
		return nil, fmt.Errorf("relay: %w", err)
	}
	return r, nil
}

// send writes rate changes a second for d, each as relayParts messages a
// little apart, as the walsender flushes them.
func (r *relayProc) send(rate int, d time.Duration) error {
	msg := make([]byte, relayMsg)
	return paced(rate, d, func(int) error {
		for p := range relayParts {
			if p > 0 {
				time.Sleep(20 * time.Microsecond)
			}
			if _, err := r.conn.Write(msg); err != nil {
				return fmt.Errorf("relay: %w", err)
			}
		}
		return nil
	})
}

// end closes the relay's source connection and waits for it to exit.
func (r *relayProc) end() error {
	r.conn.Close()
	if err := r.cmd.Wait(); err != nil {
		return fmt.Errorf("relay: %w", err)
	}
	return nil
}

// close ends whatever of the relay is still running and waits for the
// chat end's goroutines (the relay's exit closed their connection).
func (r *relayProc) close() {
	if r.cmd != nil && r.cmd.ProcessState == nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
	if r.conn != nil {
		r.conn.Close()
	}
	r.src.Close()
	if r.chat != nil {
		r.chat.Close()
	}
	r.echoes.Wait()
}

// echo answers every message on every connection l accepts with itself,
// until l is closed; wg holds each connection's goroutine.
func echo(l net.Listener, wg *sync.WaitGroup) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		wg.Go(func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		})
	}
}
