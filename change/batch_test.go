package change

import (
	"bytes"
	"fmt"
	"testing"
)

// vals builds a 3-column row (key, a, b) owned by the batch; "" is NULL.
func vals(b *Batch, key, a, c string) [][]byte {
	v := b.NewValues()
	for i, s := range []string{key, a, c} {
		if s != "" {
			v[i] = b.Copy([]byte(s))
		}
	}
	return v
}

func TestBatch_KeepsLastChangePerKey(t *testing.T) {
	b := NewBatch(3, []int{0})
	b.Add(Change{Op: OpUpsert, Values: vals(b, "k1", "a1", "b1")})
	b.Add(Change{Op: OpUpsert, Values: vals(b, "k2", "a2", "b2")})
	b.Add(Change{Op: OpUpsert, Values: vals(b, "k1", "a1'", "b1'")})
	b.Add(Change{Op: OpDelete, Values: vals(b, "k2", "", "")})
	if b.Len() != 2 || b.Received != 4 {
		t.Fatalf("Len %d Received %d, want 2 and 4", b.Len(), b.Received)
	}
	got := map[string]Change{}
	for _, c := range b.Changes() {
		got[string(c.Values[0])] = c
	}
	if c := got["k1"]; c.Op != OpUpsert || string(c.Values[1]) != "a1'" {
		t.Errorf("k1: %v %q, want the second upsert", c.Op, c.Values[1])
	}
	if c := got["k2"]; c.Op != OpDelete {
		t.Errorf("k2: %v, want delete", c.Op)
	}
}

func TestBatch_PartialUpdateInheritsEarlierValues(t *testing.T) {
	b := NewBatch(3, []int{0})
	b.Add(Change{Op: OpUpsert, Values: vals(b, "k", "a", "big toasted value")})
	// Column 2 unchanged (not sent).
	b.Add(Change{Op: OpUpsert, Values: vals(b, "k", "a2", ""), Unchanged: 1 << 2})
	c := b.Changes()[0]
	if c.Unchanged != 0 || string(c.Values[2]) != "big toasted value" || string(c.Values[1]) != "a2" {
		t.Fatalf("got unchanged=%b values=%q", c.Unchanged, c.Values)
	}

	// Without an earlier full version it stays partial.
	b2 := NewBatch(3, []int{0})
	b2.Add(Change{Op: OpUpsert, Values: vals(b2, "k", "a", ""), Unchanged: 1 << 2})
	b2.Add(Change{Op: OpUpsert, Values: vals(b2, "k", "", "c"), Unchanged: 1 << 1})
	c = b2.Changes()[0]
	if c.Unchanged != 0 || string(c.Values[1]) != "a" || string(c.Values[2]) != "c" {
		t.Fatalf("two partials: unchanged=%b values=%q", c.Unchanged, c.Values)
	}
	b3 := NewBatch(3, []int{0})
	b3.Add(Change{Op: OpUpsert, Values: vals(b3, "k", "a", ""), Unchanged: 1 << 2})
	b3.Add(Change{Op: OpUpsert, Values: vals(b3, "k", "b", ""), Unchanged: 1 << 2})
	if c := b3.Changes()[0]; c.Unchanged != 1<<2 || string(c.Values[1]) != "b" {
		t.Fatalf("both partial on the same column: unchanged=%b values=%q", c.Unchanged, c.Values)
	}
}

func TestBatch_TruncateDropsEarlierChanges(t *testing.T) {
	b := NewBatch(3, []int{0})
	b.Add(Change{Op: OpUpsert, Values: vals(b, "k1", "a", "b")})
	b.Truncate()
	b.Add(Change{Op: OpUpsert, Values: vals(b, "k2", "a", "b")})
	if !b.Truncates() || b.Len() != 1 || string(b.Changes()[0].Values[0]) != "k2" {
		t.Fatalf("truncates=%v len=%d", b.Truncates(), b.Len())
	}
	b.Reset()
	if b.Truncates() || b.Len() != 0 || !b.Empty() || b.Received != 0 {
		t.Fatal("Reset left state behind")
	}
}

func TestBatch_EmptyValueIsNotNull(t *testing.T) {
	b := NewBatch(1, []int{0})
	if v := b.Copy([]byte{}); v == nil {
		t.Fatal("an empty value must stay distinct from NULL")
	}
	if v := b.Copy(nil); v != nil {
		t.Fatal("NULL must stay nil")
	}
}

func TestBatch_ValuesSurviveArenaGrowth(t *testing.T) {
	b := NewBatch(3, []int{0})
	big := bytes.Repeat([]byte("x"), 100_000) // larger than a quarter chunk
	for i := 0; i < 5000; i++ {
		b.Add(Change{Op: OpUpsert, Values: vals(b, fmt.Sprintf("key-%05d", i), fmt.Sprintf("value-%d", i), "")})
		if i == 2500 {
			v := b.NewValues()
			v[0], v[1] = b.Copy([]byte("big")), b.Copy(big)
			b.Add(Change{Op: OpUpsert, Values: v})
		}
	}
	for _, c := range b.Changes() {
		k := string(c.Values[0])
		if k == "big" {
			if !bytes.Equal(c.Values[1], big) {
				t.Fatal("large value corrupted")
			}
			continue
		}
		var i int
		if _, err := fmt.Sscanf(k, "key-%05d", &i); err != nil || string(c.Values[1]) != fmt.Sprintf("value-%d", i) {
			t.Fatalf("row %q has value %q", k, c.Values[1])
		}
	}
}

// TestBatch_DecodingCostsAtMostOneAllocationPerChange guards the hot path:
// after the first batch, copying values and compacting allocate only the
// map key of a new row.
func TestBatch_DecodingCostsAtMostOneAllocationPerChange(t *testing.T) {
	b := NewBatch(10, []int{0})
	keys := make([][]byte, 1000)
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("%016d", i))
	}
	val := bytes.Repeat([]byte("v"), 40)
	fill := func() {
		b.Reset()
		for _, k := range keys {
			v := b.NewValues()
			v[0] = b.Copy(k)
			for j := 1; j < 10; j++ {
				v[j] = b.Copy(val)
			}
			b.Add(Change{Op: OpUpsert, Values: v})
		}
	}
	fill()
	allocs := testing.AllocsPerRun(5, fill)
	if perChange := allocs / float64(len(keys)); perChange > 1.05 {
		t.Fatalf("%.2f allocations per change, want ≤ 1", perChange)
	}
}
