-- The fleet index at a million labs (docs/PERFORMANCE.md, "The fleet view"): the stats route reads a
-- handful of rows per call, never the whole table (D1 bills and times rows read).
--
-- Counts kept up to date as rows change: one row per status, and the VMs found already gone.
-- An upsert that changes nothing (an older revision) changes no count.
CREATE TABLE IF NOT EXISTS fleet_counts (
  name TEXT    PRIMARY KEY,
  n    INTEGER NOT NULL
);
INSERT OR IGNORE INTO fleet_counts (name, n) VALUES
  ('status:scheduled', 0), ('status:cleaning_up', 0), ('status:retrying', 0),
  ('status:completed', 0), ('already_gone', 0);
UPDATE fleet_counts SET n = (SELECT COUNT(*) FROM sessions WHERE 'status:' || status = fleet_counts.name)
  WHERE name LIKE 'status:%';
UPDATE fleet_counts SET n = (SELECT COALESCE(SUM(already_gone_count), 0) FROM sessions)
  WHERE name = 'already_gone';

CREATE TRIGGER IF NOT EXISTS sessions_counted_on_insert AFTER INSERT ON sessions BEGIN
  UPDATE fleet_counts SET n = n + 1 WHERE name = 'status:' || NEW.status;
  UPDATE fleet_counts SET n = n + NEW.already_gone_count WHERE name = 'already_gone';
END;
CREATE TRIGGER IF NOT EXISTS sessions_counted_on_update AFTER UPDATE OF status, already_gone_count ON sessions BEGIN
  UPDATE fleet_counts SET n = n - 1 WHERE name = 'status:' || OLD.status;
  UPDATE fleet_counts SET n = n + 1 WHERE name = 'status:' || NEW.status;
  UPDATE fleet_counts SET n = n - OLD.already_gone_count + NEW.already_gone_count WHERE name = 'already_gone';
END;
CREATE TRIGGER IF NOT EXISTS sessions_counted_on_delete AFTER DELETE ON sessions BEGIN
  UPDATE fleet_counts SET n = n - 1 WHERE name = 'status:' || OLD.status;
  UPDATE fleet_counts SET n = n - OLD.already_gone_count WHERE name = 'already_gone';
END;

-- Labs not completed (a small part of the table once most labs are done), for the stuck count
-- and list, and the sweep: partial indexes hold only them.
CREATE INDEX IF NOT EXISTS sessions_active_by_attempts ON sessions (attempts) WHERE status != 'completed';
CREATE INDEX IF NOT EXISTS sessions_active_by_expiry ON sessions (expires_at, lab_request_id) WHERE status != 'completed';
-- The VMs pending and the oldest pending expiry, from the index alone: the status index of
-- 0001 with the pending count added (a covering index; one index, not two, to write per row).
DROP INDEX IF EXISTS sessions_by_status;
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, expires_at, lab_request_id, pending_count);
