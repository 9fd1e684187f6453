package schema

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strings"
)

// A row's key is one byte string wherever cdc handles keys (batches,
// repairs, comparisons): for a single key column, the column's value
// itself, so the common case costs nothing; for several, each value
// prefixed by its length (4 bytes, big-endian). Key values are never NULL.

// AppendKey appends the key of a row with values to dst.
func AppendKey(dst []byte, values [][]byte, key []int) []byte {
	if len(key) == 1 {
		return append(dst, values[key[0]]...)
	}
	for _, k := range key {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(values[k])))
		dst = append(dst, values[k]...)
	}
	return dst
}

// KeyOf returns the key of a row with values.
func (t *Table) KeyOf(values [][]byte) []byte {
	if len(t.Key) == 1 {
		return values[t.Key[0]]
	}
	return AppendKey(nil, values, t.Key)
}

// JoinKey makes a key from its column values, in key order.
func JoinKey(parts [][]byte) []byte {
	if len(parts) == 1 {
		return parts[0]
	}
	idx := make([]int, len(parts))
	for i := range idx {
		idx[i] = i
	}
	return AppendKey(nil, parts, idx)
}

// SplitKey returns the n column values of key.
func SplitKey(key []byte, n int) ([][]byte, error) {
	if n == 1 {
		return [][]byte{key}, nil
	}
	parts := make([][]byte, 0, n)
	for i := 0; i < n; i++ {
		if len(key) < 4 {
			return nil, fmt.Errorf("malformed key")
		}
		l := int(binary.BigEndian.Uint32(key))
		if len(key) < 4+l {
			return nil, fmt.Errorf("malformed key")
		}
		parts = append(parts, key[4:4+l])
		key = key[4+l:]
	}
	if len(key) != 0 {
		return nil, fmt.Errorf("malformed key")
	}
	return parts, nil
}

// KeyText renders a key whose parts are already text for people and for
// sync_errors.user_id: the value itself for a single key column, a JSON
// array of the values for several (["acme","42"]).
func KeyText(parts []string) string {
	if len(parts) == 1 {
		return parts[0]
	}
	b, _ := json.Marshal(parts)
	return string(b)
}

// ParseKeyText is the inverse of KeyText for a key of n columns. It also
// takes JSON arrays whose elements are numbers, as a trigger's
// json_build_array writes them.
func ParseKeyText(s string, n int) ([]string, error) {
	if n == 1 {
		return []string{s}, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil || len(raw) != n {
		return nil, fmt.Errorf("%q is not a JSON array of %d key values", s, n)
	}
	out := make([]string, n)
	for i, r := range raw {
		v, err := JSONScalar(r)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		out[i] = v
	}
	return out, nil
}

// JSONScalar renders a JSON string, number or boolean as PostgreSQL input
// text (a string without its quotes, anything else as written).
func JSONScalar(r json.RawMessage) (string, error) {
	t := strings.TrimSpace(string(r))
	switch {
	case t == "" || t == "null":
		return "", fmt.Errorf("a key value is null")
	case t[0] == '"':
		var s string
		if err := json.Unmarshal([]byte(t), &s); err != nil {
			return "", err
		}
		return s, nil
	case t[0] == '[' || t[0] == '{':
		return "", fmt.Errorf("a key value is not a scalar")
	}
	return t, nil
}
