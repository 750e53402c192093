-- The fleet index: one row per lab, written by the lab's SessionManager object (the source of
-- truth) on every change of its record, deleted at the end of retention. Times are epoch
-- milliseconds. `revision` orders writes: an older revision never overwrites a newer row.
CREATE TABLE IF NOT EXISTS sessions (
  lab_request_id     TEXT    PRIMARY KEY,
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
  revision           INTEGER NOT NULL
);

-- The list is ordered by (expires_at, lab_request_id) and pages by that key; each filter has an
-- index that keeps that order.
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at, lab_request_id);
CREATE INDEX IF NOT EXISTS sessions_by_status ON sessions (status, expires_at, lab_request_id);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id, expires_at, lab_request_id);
