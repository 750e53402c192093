-- The cleanup's service levels (docs/API.md, "stats"; GET /metrics): the labs completed in the
-- last 24 hours with their lag, read from this index alone (a covering, partial index: rows
-- read per call are the labs of one day, not the table).
CREATE INDEX IF NOT EXISTS sessions_by_completion ON sessions (completed_at, expires_at, vm_count, already_gone_count) WHERE completed_at IS NOT NULL;
