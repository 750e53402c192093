-- Fewer rows written per lab of several VMs (issue 28; docs/PERFORMANCE.md, "Rows written per
-- lab"): each attempt wrote a row of `vms` again for every VM whose deletion moved on, and the
-- master had a row of its own. A lab's row, which every attempt writes anyway, now says how far
-- each of its VMs got (`vms_done`: a JSON object of the VMs deleted or already gone; a VM not
-- in it is pending), a master is found by its id in `sessions` (its id is its lab's), and
-- `vms` keeps one row per worker, written once, to find its lab (src/lab/index.rs, `lookup`).
ALTER TABLE sessions ADD COLUMN vms_done TEXT;

-- The states the rows of `vms` hold now, into their labs' rows (an index of the VMs by lab for
-- the copy only: 0014 dropped the one the worker no longer reads).
CREATE INDEX IF NOT EXISTS vms_by_lab_for_0015 ON vms (lab_request_id);
UPDATE sessions SET vms_done = (
  SELECT json_group_object(vm_id, state) FROM vms
  WHERE vms.lab_request_id = sessions.lab_request_id AND state != 'pending'
) WHERE vm_count != 1;
DROP INDEX vms_by_lab_for_0015;

-- The masters' rows (and single-VM labs' rows an older version wrote): the lookup reads those
-- VMs from `sessions`.
DELETE FROM vms WHERE vm_id = lab_request_id;
