package bench

import (
	"fmt"
	"os"
	"testing"
)

// TestMain lets the test binary be the relay of the CPU floor (RelayEnv)
// or the latency floor's consumer (ApplyEnv), as cdc-bench is when the
// bench runs for real.
func TestMain(m *testing.M) {
	if addrs := os.Getenv(RelayEnv); addrs != "" {
		if err := RunRelay(addrs); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if spec := os.Getenv(ApplyEnv); spec != "" {
		if err := RunApply(spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
