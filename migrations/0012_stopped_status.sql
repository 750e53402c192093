-- The grace stage (STOP_PATH): a lab may be `stopped`. Its count row, so that a lab whose first
-- row is written while it is stopped (an index repaired late) is counted on insert and on delete
-- as the others are (`status:<name>` rows are updated, never created, by the triggers of 0007).
INSERT OR IGNORE INTO fleet_counts (name, n) VALUES ('status:stopped', 0);
