-- Fewer rows written (docs/PERFORMANCE.md, "Rows written per lab"): `vms` (0002) is keyed by the
-- VM's id, and as a table with row ids it kept that key in an index of its own beside the table:
-- a row written in each at every VM's insert. Rebuilt WITHOUT ROWID, the table is its key's
-- index (SQLite: "The WITHOUT ROWID Optimization"): a VM of a lab of several VMs costs one row
-- fewer at its create. The rows are copied as they are, in the migration's one transaction
-- (the table holds the VMs of labs of several VMs within retention); the lookup by lab is
-- indexed again.
CREATE TABLE IF NOT EXISTS vms_keyed (
  vm_id          TEXT    PRIMARY KEY,
  lab_request_id TEXT    NOT NULL,
  state          TEXT    NOT NULL,
  revision       INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO vms_keyed (vm_id, lab_request_id, state, revision)
  SELECT vm_id, lab_request_id, state, revision FROM vms;
DROP TABLE vms;
ALTER TABLE vms_keyed RENAME TO vms;
CREATE INDEX IF NOT EXISTS vms_by_lab ON vms (lab_request_id);
