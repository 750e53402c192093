-- Fewer rows written per lab of several VMs (issue 28; docs/PERFORMANCE.md, "Rows written per
-- lab"): `vms_by_lab` wrote an entry for every VM's row at a lab's create (a D1 row each). Only
-- the delete at the end of retention read it; that delete now names the lab's VMs by their ids
-- (the table's key), so the index goes. Dropping an index changes no row.
DROP INDEX IF EXISTS vms_by_lab;
