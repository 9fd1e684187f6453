package migrations

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
)

// Names of the notify-mode objects on the source: the ones the service cdc
// replaces used, so an existing setup is recognised.
const (
	NotifyChannel         = "user_changes"
	NotifyFunction        = "notify_user_changes"
	NotifyTrigger         = "user_changes_trigger"
	NotifyTruncateTrigger = "user_changes_truncate_trigger"
)

// notifySQL creates the trigger function and triggers for table t. The
// payload is {"op": …, "id": …} and nothing else: a NOTIFY payload is
// limited to 8000 bytes and row data (or secrets) must not travel. A key of
// several columns is sent as a JSON array of their values, in key order.
func notifySQL(t *schema.Table) string {
	fn := pgx.Identifier{t.Schema, NotifyFunction}.Sanitize()
	key := func(row string) string {
		parts := make([]string, len(t.Key))
		for i, name := range t.KeyNames() {
			parts[i] = row + "." + schema.Quote(name)
		}
		if len(parts) == 1 {
			return parts[0]
		}
		return "json_build_array(" + strings.Join(parts, ", ") + ")"
	}
	changed := make([]string, len(t.Key))
	for i, name := range t.KeyNames() {
		changed[i] = fmt.Sprintf("OLD.%s IS DISTINCT FROM NEW.%s", schema.Quote(name), schema.Quote(name))
	}
	return fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    PERFORM pg_notify('%[2]s', '{"op":"truncate"}');
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('%[2]s', json_build_object('op', 'delete', 'id', %[3]s)::text);
  ELSE
    IF TG_OP = 'UPDATE' AND (%[7]s) THEN
      PERFORM pg_notify('%[2]s', json_build_object('op', 'delete', 'id', %[3]s)::text);
    END IF;
    PERFORM pg_notify('%[2]s', json_build_object('op', lower(TG_OP), 'id', %[8]s)::text);
  END IF;
  RETURN NULL;
END
$fn$;
DROP TRIGGER IF EXISTS %[4]s ON %[5]s;
CREATE TRIGGER %[4]s AFTER INSERT OR UPDATE OR DELETE ON %[5]s FOR EACH ROW EXECUTE FUNCTION %[1]s();
DROP TRIGGER IF EXISTS %[6]s ON %[5]s;
CREATE TRIGGER %[6]s AFTER TRUNCATE ON %[5]s FOR EACH STATEMENT EXECUTE FUNCTION %[1]s();`,
		fn, NotifyChannel, key("OLD"), schema.Quote(NotifyTrigger), t.Ident(), schema.Quote(NotifyTruncateTrigger),
		strings.Join(changed, " OR "), key("NEW"))
}

// NotifyTriggerExists reports whether the notify-mode trigger is installed
// and enabled on table.
func NotifyTriggerExists(ctx context.Context, q schema.Querier, table ident.Table) (bool, error) {
	var n int
	err := q.QueryRow(ctx, `SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = ANY($2) AND tgenabled <> 'D'`,
		table.Quoted(), []string{NotifyTrigger, NotifyTruncateTrigger}).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("look up notify trigger: %w", err)
	}
	return n == 2, nil
}

// EnsureNotifyTrigger installs (or refreshes) the notify-mode trigger on
// the source table. It reports what it did.
func EnsureNotifyTrigger(ctx context.Context, pool *pgxpool.Pool, spec Spec) (string, error) {
	t, err := schema.Load(ctx, pool, spec.Source())
	if err != nil {
		return "", fmt.Errorf("source table: %w", err)
	}
	had, err := NotifyTriggerExists(ctx, pool, spec.SourceTable)
	if err != nil {
		return "", err
	}
	if _, err := pool.Exec(ctx, notifySQL(t)); err != nil {
		return "", fmt.Errorf("create notify trigger: %w", err)
	}
	if had {
		return "", nil
	}
	return fmt.Sprintf("created trigger %s on %s (NOTIFY %s with op and id only)", NotifyTrigger, spec.SourceTable, NotifyChannel), nil
}

// DropNotifyTrigger removes the notify-mode triggers and function, so
// replication mode leaves nothing behind. It reports what it did.
func DropNotifyTrigger(ctx context.Context, pool *pgxpool.Pool, spec Spec) (string, error) {
	had, err := NotifyTriggerExists(ctx, pool, spec.SourceTable)
	if err != nil {
		return "", err
	}
	fn := pgx.Identifier{spec.SourceTable.Schema, NotifyFunction}.Sanitize()
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", spec.SourceTable.Quoted()).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up source table: %w", err)
	}
	sql := "DROP FUNCTION IF EXISTS " + fn + "() CASCADE"
	if exists {
		t := spec.SourceTable.Quoted()
		sql = fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s; DROP TRIGGER IF EXISTS %s ON %s; %s",
			schema.Quote(NotifyTrigger), t, schema.Quote(NotifyTruncateTrigger), t, sql)
	}
	if _, err := pool.Exec(ctx, sql); err != nil {
		return "", fmt.Errorf("drop notify trigger: %w", err)
	}
	if !had {
		return "", nil
	}
	return fmt.Sprintf("dropped trigger %s from %s", NotifyTrigger, spec.SourceTable), nil
}

// ForceDropSlot drops slot even while a consumer uses it: it ends the
// consumer's replication connection and drops the slot in the moment it is
// free, before the consumer (which reconnects) takes it again. It reports
// what it did.
func ForceDropSlot(ctx context.Context, pool *pgxpool.Pool, slot string) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		msg, err := DropSlot(ctx, pool, slot)
		if !errors.Is(err, ErrSlotActive) || time.Now().After(deadline) {
			return msg, err
		}
		if _, err := pool.Exec(ctx, "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL", slot); err != nil {
			return "", fmt.Errorf("end the replication connection of slot %s: %w", slot, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ErrSlotActive means the slot is in use by a running consumer.
var ErrSlotActive = errors.New("replication slot is in use")

// DropSlot removes cdc's replication slot if it exists, so notify mode
// does not leave a slot pinning WAL. It reports what it did.
func DropSlot(ctx context.Context, pool *pgxpool.Pool, slot string) (string, error) {
	var active *bool
	err := pool.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("look up slot %s: %w", slot, err)
	}
	if active != nil && *active {
		return "", fmt.Errorf("slot %s: %w: stop cdc run first", slot, ErrSlotActive)
	}
	if _, err := pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot); err != nil {
		return "", fmt.Errorf("drop slot %s: %w", slot, err)
	}
	return fmt.Sprintf("dropped replication slot %s (it kept WAL on the source for cdc)", slot), nil
}
