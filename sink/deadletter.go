package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/schema"
)

// errorTypes names the SQLSTATEs a chat database typically rejects rows with.
var errorTypes = map[string]string{
	"23502": "not_null_violation",
	"23505": "unique_violation",
	"23503": "foreign_key_violation",
	"23514": "check_violation",
	"23P01": "exclusion_violation",
	"22001": "value_too_long",
	"22003": "numeric_out_of_range",
	"22007": "invalid_datetime",
	"22008": "datetime_out_of_range",
	"22P02": "invalid_value",
	"22021": "bad_encoding",
	"54000": "program_limit_exceeded",
}

// deadLetter records a change the chat database would not take, in the
// current transaction, so it commits together with the rest of the batch.
func (s *Sink) deadLetter(ctx context.Context, pc *pgconn.PgConn, c *change.Change, cause error) error {
	errType, msg, detail := "rejected", cause.Error(), ""
	var pgErr *pgconn.PgError
	switch {
	case errors.As(cause, &pgErr):
		errType = errorTypes[pgErr.Code]
		if errType == "" {
			errType = "sqlstate_" + pgErr.Code
		}
		msg, detail = pgErr.Message, pgErr.Detail
	case errors.Is(cause, errMissingRow):
		errType = "missing_row"
	}
	k := s.table.KeyOf(c.Values)
	key := keyed.FormatKey(s.table, k)
	payload, err := RowJSON(s.table, c.Values, c.Unchanged)
	if err != nil {
		return err
	}
	var lsn []byte
	if c.LSN != 0 {
		lsn = []byte(c.LSN.String())
	}
	s.log.Error("change rejected by the chat database; recorded in sync_errors",
		"user_id", key, "lsn", c.LSN, "error_type", errType, "err", msg)
	// One open dead letter per id and kind of error: a change that keeps
	// failing counts its attempts instead of adding rows.
	_, err = pc.ExecParams(ctx, `WITH open AS (
  UPDATE sync_errors SET attempts = attempts + 1, message = $3, detail = NULLIF($4, ''), payload = $5::jsonb,
         lsn = COALESCE($6::pg_lsn, lsn), last_attempt_at = now()
  WHERE NOT resolved AND user_id = $2 AND error_type = $1 RETURNING id)
INSERT INTO sync_errors (error_type, user_id, message, detail, payload, lsn)
SELECT $1, $2, $3, NULLIF($4, ''), $5::jsonb, $6::pg_lsn WHERE NOT EXISTS (SELECT 1 FROM open)`,
		[][]byte{[]byte(errType), []byte(key), []byte(msg), []byte(detail), payload, lsn}, nil, nil, nil).Close()
	if err != nil {
		return fmt.Errorf("record dead letter: %w", err)
	}
	s.open.failed(k)
	return nil
}

// RowJSON renders a row as a JSON object of column name to value, omitting
// columns that were not carried.
func RowJSON(t *schema.Table, values [][]byte, unchanged uint64) ([]byte, error) {
	m := make(map[string]any, len(t.Columns))
	for i, c := range t.Columns {
		if unchanged&(1<<i) != 0 || i >= len(values) {
			continue
		}
		if values[i] == nil {
			m[c.Name] = nil
			continue
		}
		switch x := keyed.DecodeValue(t, i, values[i]).(type) {
		case [16]byte, []byte, time.Time:
			m[c.Name] = keyed.FormatValue(t, i, values[i])
		default:
			m[c.Name] = x
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode payload: %w", err)
	}
	return b, nil
}
