package schema

import (
	"bytes"
	"reflect"
	"testing"
)

func TestKey_JoinSplit(t *testing.T) {
	for _, parts := range [][][]byte{
		{[]byte("only")},
		{[]byte("acme"), []byte("42")},
		{{}, []byte("x"), []byte{0, 0, 0, 4}},
	} {
		k := JoinKey(parts)
		got, err := SplitKey(k, len(parts))
		if err != nil || !reflect.DeepEqual(got, parts) {
			t.Errorf("SplitKey(JoinKey(%q)) = %q, %v", parts, got, err)
		}
	}
	// Keys of different values never collide: ("ab", "c") is not ("a", "bc").
	if bytes.Equal(JoinKey([][]byte{[]byte("ab"), []byte("c")}), JoinKey([][]byte{[]byte("a"), []byte("bc")})) {
		t.Error("two different keys encode alike")
	}
	if _, err := SplitKey([]byte{0, 0, 0, 9, 'x'}, 2); err == nil {
		t.Error("a truncated key was accepted")
	}
}

func TestKey_Text(t *testing.T) {
	if got := KeyText([]string{"42"}); got != "42" {
		t.Errorf("single key rendered %q", got)
	}
	txt := KeyText([]string{`a"c`, "4,2"})
	parts, err := ParseKeyText(txt, 2)
	if err != nil || !reflect.DeepEqual(parts, []string{`a"c`, "4,2"}) {
		t.Errorf("ParseKeyText(%s) = %q, %v", txt, parts, err)
	}
	// A trigger's json_build_array writes numbers as numbers.
	if parts, err := ParseKeyText(`[3, 1001]`, 2); err != nil || !reflect.DeepEqual(parts, []string{"3", "1001"}) {
		t.Errorf("numbers: %q, %v", parts, err)
	}
	for _, bad := range []string{`["x"]`, `[null, "1"]`, `{"a":1}`, `[[1],2]`, "7"} {
		if _, err := ParseKeyText(bad, 2); err == nil {
			t.Errorf("ParseKeyText(%s) accepted", bad)
		}
	}
}

func FuzzKey(f *testing.F) {
	f.Add([]byte("a"), []byte("b"), []byte(""))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		parts := [][]byte{a, b, c}
		got, err := SplitKey(JoinKey(parts), 3)
		if err != nil || !bytes.Equal(got[0], a) || !bytes.Equal(got[1], b) || !bytes.Equal(got[2], c) {
			t.Fatalf("%q -> %q, %v", parts, got, err)
		}
	})
}
