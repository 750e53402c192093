-- Fewer rows written (docs/PERFORMANCE.md, "What a lab costs"): the counting triggers of 0003
-- wrote their counter rows on every upsert of a lab, whether its status or its count of VMs
-- found gone changed or not (D1 bills each as a row written). The same counts, written only
-- when they change. Replaced in one migration: the counts stay exact across it.
DROP TRIGGER IF EXISTS sessions_counted_on_insert;
DROP TRIGGER IF EXISTS sessions_counted_on_update;
DROP TRIGGER IF EXISTS sessions_counted_on_delete;

CREATE TRIGGER IF NOT EXISTS sessions_counted_on_insert AFTER INSERT ON sessions BEGIN
  UPDATE fleet_counts SET n = n + 1 WHERE name = 'status:' || NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS sessions_gone_counted_on_insert AFTER INSERT ON sessions
  WHEN NEW.already_gone_count != 0 BEGIN
  UPDATE fleet_counts SET n = n + NEW.already_gone_count WHERE name = 'already_gone';
END;
CREATE TRIGGER IF NOT EXISTS sessions_counted_on_update AFTER UPDATE OF status ON sessions
  WHEN OLD.status IS NOT NEW.status BEGIN
  UPDATE fleet_counts SET n = n - 1 WHERE name = 'status:' || OLD.status;
  UPDATE fleet_counts SET n = n + 1 WHERE name = 'status:' || NEW.status;
END;
CREATE TRIGGER IF NOT EXISTS sessions_gone_counted_on_update AFTER UPDATE OF already_gone_count ON sessions
  WHEN OLD.already_gone_count IS NOT NEW.already_gone_count BEGIN
  UPDATE fleet_counts SET n = n - OLD.already_gone_count + NEW.already_gone_count WHERE name = 'already_gone';
END;
CREATE TRIGGER IF NOT EXISTS sessions_counted_on_delete AFTER DELETE ON sessions BEGIN
  UPDATE fleet_counts SET n = n - 1 WHERE name = 'status:' || OLD.status;
END;
CREATE TRIGGER IF NOT EXISTS sessions_gone_counted_on_delete AFTER DELETE ON sessions
  WHEN OLD.already_gone_count != 0 BEGIN
  UPDATE fleet_counts SET n = n - OLD.already_gone_count WHERE name = 'already_gone';
END;
