-- Fewer rows written (docs/PERFORMANCE.md, "Rows written per lab"): the origin index of 0002 held
-- an entry for every lab, written with its row at the create, though the list's `origin=` filter
-- is for the labs that did not come through the API (orphans an inventory reported, labs
-- adopted from the TypeScript worker): a few in a thousand. Narrowed to those; the filter's
-- statement says `origin != 'api'` beside `origin = ?` so that SQLite uses it, and `origin=api`
-- pages the expiry index, where nearly every lab matches.
DROP INDEX IF EXISTS sessions_by_origin;
CREATE INDEX IF NOT EXISTS sessions_by_origin ON sessions (origin, expires_at, lab_request_id)
  WHERE origin != 'api';
