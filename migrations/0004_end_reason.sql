-- Why each lab ended (docs/API.md, "end_reason"): expired, idle, ended, operator or orphan; NULL
-- while it is scheduled. The list filters on it (`end_reason=`), newest expiry order kept.
ALTER TABLE sessions ADD COLUMN end_reason TEXT;
CREATE INDEX IF NOT EXISTS sessions_by_end_reason ON sessions (end_reason, expires_at, lab_request_id);
