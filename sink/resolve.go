package sink

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
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
		ids = append(ids, keyed.FormatKey(t, k))
	}
	if r != nil {
		r.param = keyed.TextArray(ids)
	}
	return r
}

// resolvableChanges is resolvable over the keys of changes.
func (s *Sink) resolvableChanges(changes []change.Change) *resolution {
	r := s.open.resolvable(s.table, len(changes), func(i int) []byte { return s.table.KeyOf(changes[i].Values) })
	if r != nil {
		s.resolving = append(s.resolving, r)
	}
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

// loadOpenErrors reads the ids with unresolved dead letters, as keys, on a
// fresh writer connection.
func (s *Sink) loadOpenErrors(ctx context.Context, pc *pgconn.PgConn) error {
	s.open = openErrors{loaded: true, keys: map[string]struct{}{}}
	rr := pc.ExecParams(ctx, "SELECT DISTINCT user_id FROM sync_errors WHERE NOT resolved AND user_id IS NOT NULL AND user_id <> 'NULL'", nil, nil, nil, nil)
	var ids []string
	for rr.NextRow() {
		ids = append(ids, string(rr.Values()[0]))
	}
	if _, err := rr.Close(); err != nil {
		return fmt.Errorf("read open dead letters: %w", err)
	}
	keys, bad, err := keyed.ParseKeys(ctx, pc, s.table, ids)
	if err != nil {
		return fmt.Errorf("read open dead letters: %w", err)
	}
	if len(bad) > 0 {
		// Ids that are no longer valid keys (the key changed): such errors
		// cannot be resolved by a write; cdc errors resolve can.
		s.log.Warn("sync_errors holds ids that are not valid keys; they are resolved only by cdc errors resolve", "ids", len(bad))
	}
	for _, k := range keys {
		s.open.keys[string(k)] = struct{}{}
	}
	return nil
}
