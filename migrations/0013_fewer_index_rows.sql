-- Fewer rows written per lab (issue 28; docs/PERFORMANCE.md, "Rows written per lab"). D1 counts
-- a row written for the table's row and for every index entry a statement inserts (not for the
-- entries it removes), so:
-- * `sessions` is rebuilt WITHOUT ROWID: keyed by its text id, it kept that key in an index of
--   its own (`sqlite_autoindex_sessions_1`), one more row at every create; the table is now that
--   index (1 row a lab).
-- * `sessions_by_status` holds only the labs in the rare statuses (being cleaned up, retrying,
--   stopped): a lab scheduled and then completed never enters it (2 rows a lab). The list's
--   status filter reads the scheduled labs from `sessions_active_by_expiry` and the completed
--   ones from `sessions_by_expiry`, where nearly every row matches (`lab::index::list`).
-- * `sessions_active_by_attempts` holds the status too, so that the stuck count reads it alone
--   (in a table without row ids, a lookup of the row is a search by its text key: the count of
--   12,500 stuck labs among a million took 15 ms that way, 0.3 ms from the index). The status is
--   in the index's `WHERE` already: a change of it rewrote the entry anyway, no row more.
-- * `sessions_by_end_reason` leaves out the labs that ended because their time was up, nearly
--   all of them (1 row a lab): the list's `end_reason=expired` pages the expiry index.
-- Every row is copied; the triggers of 0003, 0007 and 0011 are created again on the new table
-- (dropping a table drops its indexes and triggers). The copy of a million rows and the building
-- of its indexes take about 3 s on SQLite 3.40 (docs/PERFORMANCE.md), within D1's limit a query.
CREATE TABLE sessions_keyed (
  lab_request_id     TEXT    NOT NULL PRIMARY KEY,
  user_id            TEXT    NOT NULL,
  lab_type           TEXT    NOT NULL,
  vm_count           INTEGER NOT NULL,
  status             TEXT    NOT NULL,
  created_at         INTEGER NOT NULL,
  expires_at         INTEGER NOT NULL,
  attempts           INTEGER NOT NULL,
  next_attempt_at    INTEGER,
  pending_count      INTEGER NOT NULL,
  already_gone_count INTEGER NOT NULL DEFAULT 0,
  last_error         TEXT,
  completed_at       INTEGER,
  updated_at         INTEGER NOT NULL,
  revision           INTEGER NOT NULL,
  origin             TEXT    NOT NULL DEFAULT 'api',
  end_reason         TEXT
) WITHOUT ROWID;
INSERT INTO sessions_keyed (lab_request_id, user_id, lab_type, vm_count, status, created_at,
  expires_at, attempts, next_attempt_at, pending_count, already_gone_count, last_error,
  completed_at, updated_at, revision, origin, end_reason)
  SELECT lab_request_id, user_id, lab_type, vm_count, status, created_at, expires_at, attempts,
    next_attempt_at, pending_count, already_gone_count, last_error, completed_at, updated_at,
    revision, origin, end_reason FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_keyed RENAME TO sessions;

CREATE INDEX sessions_by_expiry ON sessions (expires_at, lab_request_id);
CREATE INDEX sessions_by_user ON sessions (user_id, expires_at, lab_request_id);
CREATE INDEX sessions_active_by_expiry ON sessions (expires_at, lab_request_id)
  WHERE status != 'completed';
CREATE INDEX sessions_by_status ON sessions (status, expires_at, lab_request_id, pending_count)
  WHERE status IN ('cleaning_up', 'retrying', 'stopped');
CREATE INDEX sessions_by_completion ON sessions (completed_at, expires_at, vm_count, already_gone_count)
  WHERE completed_at IS NOT NULL;
CREATE INDEX sessions_active_by_attempts ON sessions (attempts, status)
  WHERE status != 'completed' AND attempts > 0;
CREATE INDEX sessions_by_end_reason ON sessions (end_reason, expires_at, lab_request_id)
  WHERE end_reason IS NOT NULL AND end_reason != 'expired';
CREATE INDEX sessions_by_origin ON sessions (origin, expires_at, lab_request_id)
  WHERE origin != 'api';

CREATE TRIGGER sessions_counted_on_insert AFTER INSERT ON sessions BEGIN
  UPDATE fleet_counts SET n = n + 1 WHERE name = 'status:' || NEW.status;
END;
CREATE TRIGGER sessions_gone_counted_on_insert AFTER INSERT ON sessions
  WHEN NEW.already_gone_count != 0 BEGIN
  UPDATE fleet_counts SET n = n + NEW.already_gone_count WHERE name = 'already_gone';
END;
CREATE TRIGGER sessions_gone_counted_on_update AFTER UPDATE OF already_gone_count ON sessions
  WHEN OLD.already_gone_count IS NOT NEW.already_gone_count BEGIN
  UPDATE fleet_counts SET n = n - OLD.already_gone_count + NEW.already_gone_count WHERE name = 'already_gone';
END;
CREATE TRIGGER sessions_counted_on_delete AFTER DELETE ON sessions BEGIN
  UPDATE fleet_counts SET n = n - 1 WHERE name = 'status:' || OLD.status;
END;
CREATE TRIGGER sessions_gone_counted_on_delete AFTER DELETE ON sessions
  WHEN OLD.already_gone_count != 0 BEGIN
  UPDATE fleet_counts SET n = n - OLD.already_gone_count WHERE name = 'already_gone';
END;
CREATE TRIGGER sessions_moved_on_update AFTER UPDATE OF status ON sessions
  WHEN OLD.status IS NOT NEW.status BEGIN
  INSERT INTO fleet_counts (name, n) VALUES ('move:' || OLD.status || '>' || NEW.status, 1)
    ON CONFLICT (name) DO UPDATE SET n = n + 1;
END;
