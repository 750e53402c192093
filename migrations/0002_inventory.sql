-- Inventory reconciliation (docs/OPERATIONS.md, "Reconciling the backend's inventory"): which lab
-- each VM belongs to and how far its deletion got, written by the lab's object with its row in
-- `sessions` (same revision: an older write never overwrites a newer one), deleted with it.
CREATE TABLE IF NOT EXISTS vms (
  vm_id          TEXT    PRIMARY KEY,
  lab_request_id TEXT    NOT NULL,
  state          TEXT    NOT NULL,
  revision       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS vms_by_lab ON vms (lab_request_id);

-- Where a lab came from: `api` (a create), `legacy` (adopted from the TypeScript worker),
-- `inventory` (an orphan VM the backend reported and no lab listed).
ALTER TABLE sessions ADD COLUMN origin TEXT NOT NULL DEFAULT 'api';
CREATE INDEX IF NOT EXISTS sessions_by_origin ON sessions (origin, expires_at, lab_request_id);

-- When an inventory first reported a VM no lab lists, for a VM reported without `created_at`
-- (its grace counts from then). Written only by reconciliations that act.
CREATE TABLE IF NOT EXISTS inventory_seen (
  vm_id         TEXT    PRIMARY KEY,
  first_seen_at INTEGER NOT NULL
);

-- Each reconciliation's counts, the latest shown by the stats route and the dashboard.
CREATE TABLE IF NOT EXISTS reconciliations (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  at        INTEGER NOT NULL,
  source    TEXT    NOT NULL,
  act       INTEGER NOT NULL,
  tracked   INTEGER NOT NULL,
  overdue   INTEGER NOT NULL,
  finished  INTEGER NOT NULL,
  unknown   INTEGER NOT NULL,
  scheduled INTEGER NOT NULL
);

-- Small state of the fleet-wide jobs: where the scheduled inventory pull stopped.
CREATE TABLE IF NOT EXISTS fleet_state (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
