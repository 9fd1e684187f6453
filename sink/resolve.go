package sink

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/schema"
)

// openErrors tracks the ids that have unresolved dead letters, so that a
// later successful write of the same id marks them resolved in the same
// transaction. The set is read from sync_errors once per writer connection
// and kept up to date by the sink's own dead letters; checking a batch
// against it costs a map lookup per change, and nothing when it is empty.
type openErrors struct {
	loaded bool
	keys   map[string]struct{} // binary key values
	dead   map[string]struct{} // keys dead-lettered in the transaction being written
}

// failed notes that key was dead-lettered in the current transaction.
func (o *openErrors) failed(key []byte) {
	if o.keys == nil {
		o.keys = map[string]struct{}{}
	}
	if o.dead == nil {
		o.dead = map[string]struct{}{}
	}
	o.keys[string(key)] = struct{}{}
	o.dead[string(key)] = struct{}{}
}

// begin starts a new transaction attempt.
func (o *openErrors) begin() { clear(o.dead) }

// resolution is what one transaction resolves.
type resolution struct {
	keys  [][]byte // binary, to drop from the open set after commit
	param []byte   // text[] of user_id values
}

// resolvable returns the ids among the n keys that have open dead letters
// and were not dead-lettered again in this transaction (nil when none).
func (o *openErrors) resolvable(t *schema.Table, n int, key func(i int) []byte) *resolution {
	if len(o.keys) == 0 {
		return nil
	}
	var r *resolution
	var ids []string
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		k := key(i)
		if _, ok := o.keys[string(k)]; !ok {
			continue
		}
		if _, ok := o.dead[string(k)]; ok || seen[string(k)] {
			continue
		}
		seen[string(k)] = true
		if r == nil {
			r = &resolution{}
		}
		r.keys = append(r.keys, k)
		ids = append(ids, FormatValue(t.KeyColumn(), k))
	}
	if r != nil {
		r.param = textArray(ids)
	}
	return r
}

// resolvableChanges is resolvable over the keys of changes.
func (s *Sink) resolvableChanges(changes []Change) *resolution {
	r := s.open.resolvable(s.table, len(changes), func(i int) []byte { return changes[i].Values[s.table.Key] })
	s.resolving = r
	return r
}

// committed drops what r resolved from the open set.
func (o *openErrors) committed(r *resolution) {
	if r == nil {
		return
	}
	for _, k := range r.keys {
		delete(o.keys, string(k))
	}
}

// resolveSQL marks the open dead letters of ids resolved.
const resolveSQL = `UPDATE sync_errors SET resolved = true, resolved_at = now() WHERE NOT resolved AND user_id = ANY($1::text[])`

// queueResolve adds r's statement to a pipelined batch.
func queueResolve(batch *pgconn.Batch, r *resolution) {
	if r != nil {
		batch.ExecParams(resolveSQL, [][]byte{r.param}, nil, nil, nil)
	}
}

// execResolve runs r's statement in the open transaction.
func execResolve(ctx context.Context, pc *pgconn.PgConn, r *resolution) error {
	if r == nil {
		return nil
	}
	if _, err := pc.ExecParams(ctx, resolveSQL, [][]byte{r.param}, nil, nil, nil).Close(); err != nil {
		return fmt.Errorf("resolve dead letters: %w", err)
	}
	return nil
}

// loadOpenErrors reads the ids with unresolved dead letters, as binary key
// values, on a fresh writer connection.
func (s *Sink) loadOpenErrors(ctx context.Context, pc *pgconn.PgConn) error {
	s.open = openErrors{loaded: true, keys: map[string]struct{}{}}
	sql := fmt.Sprintf("SELECT DISTINCT user_id::%s FROM sync_errors WHERE NOT resolved AND user_id IS NOT NULL AND user_id <> 'NULL'",
		s.table.KeyColumn().TypeName)
	rr := pc.ExecParams(ctx, sql, nil, nil, nil, []int16{1})
	for rr.NextRow() {
		s.open.keys[string(rr.Values()[0])] = struct{}{}
	}
	if _, err := rr.Close(); err != nil {
		if rowRejected(err) {
			// An id that is no longer a valid key (the key type changed):
			// such errors cannot be resolved by a write; cdc errors can.
			s.log.Warn("sync_errors holds ids that are not valid keys; they are resolved only by cdc errors resolve", "err", err)
			s.open = openErrors{loaded: true, keys: map[string]struct{}{}}
			return nil
		}
		return fmt.Errorf("read open dead letters: %w", err)
	}
	return nil
}

// textArray renders a text[] literal.
func textArray(ss []string) []byte {
	out := []byte{'{'}
	for i, s := range ss {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '"')
		for j := 0; j < len(s); j++ {
			if s[j] == '"' || s[j] == '\\' {
				out = append(out, '\\')
			}
			out = append(out, s[j])
		}
		out = append(out, '"')
	}
	return append(out, '}')
}

// ParseKeys turns ids as text (a notification's id, sync_errors.user_id)
// into binary key values of t, casting on the server so that every key
// type works. Ids that are not valid keys are returned in bad.
func ParseKeys(ctx context.Context, pc *pgconn.PgConn, t *schema.Table, ids []string) (keys [][]byte, bad []string, err error) {
	sql := "SELECT unnest($1::text[])::" + t.KeyColumn().TypeName
	rr := pc.ExecParams(ctx, sql, [][]byte{textArray(ids)}, nil, nil, []int16{1})
	for rr.NextRow() {
		keys = append(keys, append([]byte(nil), rr.Values()[0]...))
	}
	_, err = rr.Close()
	if err == nil || !rowRejected(err) {
		return keys, nil, err
	}
	if len(ids) == 1 {
		return nil, ids, nil
	}
	// One bad id spoils the cast of all: take them one by one.
	keys = keys[:0]
	for _, id := range ids {
		k, b, err := ParseKeys(ctx, pc, t, []string{id})
		if err != nil {
			return nil, nil, err
		}
		keys, bad = append(keys, k...), append(bad, b...)
	}
	return keys, bad, nil
}
