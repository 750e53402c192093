-- Fewer rows written (docs/PERFORMANCE.md, "Rows written per lab"): two indexes of 0003 and 0004
-- held an entry for every lab from its create, each written with the lab's row, though their
-- queries only ever look for labs that have one. Narrowed to those labs, a lab whose cleanup
-- succeeds at its first attempt never enters the stuck count's index, and enters the end
-- reason's only when it ends.
-- The stuck count (`status != 'completed' AND attempts >= ?`, `STUCK_AFTER_ATTEMPTS` at least 1;
-- its queries add `attempts > 0` so that SQLite can use this index).
DROP INDEX IF EXISTS sessions_active_by_attempts;
CREATE INDEX IF NOT EXISTS sessions_active_by_attempts ON sessions (attempts)
  WHERE status != 'completed' AND attempts > 0;
-- The list's `end_reason=` filter (an equality implies NOT NULL: SQLite uses the index).
DROP INDEX IF EXISTS sessions_by_end_reason;
CREATE INDEX IF NOT EXISTS sessions_by_end_reason ON sessions (end_reason, expires_at, lab_request_id)
  WHERE end_reason IS NOT NULL;
