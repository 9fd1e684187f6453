package bench

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// CPUUse is the CPU that named processes used during a window, and how busy
// the whole machine was: on a machine shared by both servers, the load and
// the consumer, saturation is what makes tail latency.
type CPUUse struct {
	Procs   []ProcCPU
	Machine float64 // % of all cores busy (not idle, not waiting for I/O)
	Secs    float64 // the window's length
}

// ProcCPU is one group of processes' CPU in % of one core.
type ProcCPU struct {
	Name    string
	Percent float64
}

func (c CPUUse) String() string {
	if len(c.Procs) == 0 {
		return "–"
	}
	var parts []string
	for _, p := range c.Procs {
		parts = append(parts, fmt.Sprintf("%s %.0f", p.Name, p.Percent))
	}
	return fmt.Sprintf("%s; machine %.0f %% busy", strings.Join(parts, " + "), c.Machine)
}

// procGroup names the processes whose CPU is summed.
type procGroup struct {
	name string
	pids []int
}

// cpuWatch holds the /proc readings at the start of a window.
type cpuWatch struct {
	groups      []procGroup
	ticks       []uint64
	busy, total uint64
	start       time.Time
}

// clockTicks is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTicks = 100

func startCPU(groups []procGroup) *cpuWatch {
	w := &cpuWatch{groups: groups, start: time.Now()}
	for _, g := range groups {
		w.ticks = append(w.ticks, groupTicks(g.pids))
	}
	w.busy, w.total = machineTicks()
	return w
}

// stop reads /proc again and returns the use since start.
func (w *cpuWatch) stop() CPUUse {
	secs := time.Since(w.start).Seconds()
	use := CPUUse{Secs: secs}
	for i, g := range w.groups {
		d := float64(groupTicks(g.pids) - w.ticks[i])
		use.Procs = append(use.Procs, ProcCPU{g.name, d / clockTicks / secs * 100})
	}
	busy, total := machineTicks()
	if total > w.total {
		use.Machine = float64(busy-w.busy) / float64(total-w.total) * 100
	}
	return use
}

// groupTicks sums utime + stime of pids; a process gone counts 0.
func groupTicks(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseUint(f[11], 10, 64)
		k, _ := strconv.ParseUint(f[12], 10, 64)
		sum += u + k
	}
	return sum
}

// machineTicks reads the busy and total CPU time of all cores.
func machineTicks() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseUint(f, 10, 64)
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total
}

// pidsOf runs a query returning server process ids.
func pidsOf(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) ([]int, error) {
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return nil, fmt.Errorf("find processes: %w", err)
	}
	return pids, nil
}

// walsender returns the pid of the walsender serving slot.
func walsender(ctx context.Context, s *servers, slot string) ([]int, error) {
	return pidsOf(ctx, s.source, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", slot)
}

// cdcProcesses are cdc, its chat backends and its walsender.
func cdcProcesses(ctx context.Context, s *servers, proc *cdcProc) ([]procGroup, error) {
	return consumerProcesses(ctx, s, "cdc", proc.cmd.Process.Pid, slot,
		s.cdc, "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()", chatCDC)
}

// consumerProcesses are a consumer process (pid, as name), its chat
// backends (chatSQL with arg on chat lists them) and the walsender of its
// slot.
func consumerProcesses(ctx context.Context, s *servers, name string, pid int, slot string, chat *pgxpool.Pool, chatSQL string, arg any) ([]procGroup, error) {
	backends, err := pidsOf(ctx, chat, chatSQL, arg)
	if err != nil {
		return nil, err
	}
	ws, err := walsender(ctx, s, slot)
	if err != nil {
		return nil, err
	}
	return []procGroup{{name, []int{pid}}, {"chat backends", backends}, {"walsender", ws}}, nil
}

// nativeProcesses are the subscription's apply worker and its walsender.
func nativeProcesses(ctx context.Context, s *servers) ([]procGroup, error) {
	apply, err := pidsOf(ctx, s.native, "SELECT pid FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL", subName)
	if err != nil {
		return nil, err
	}
	ws, err := walsender(ctx, s, subName)
	if err != nil {
		return nil, err
	}
	return []procGroup{{"apply worker", apply}, {"walsender", ws}}, nil
}
