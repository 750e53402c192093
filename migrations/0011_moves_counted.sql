-- Fewer rows written (docs/PERFORMANCE.md, "Rows written per lab"): a lab's status change wrote
-- two counts (its old status one fewer, its new one more: 0007). It now writes one, the count of
-- that move (`move:<old>><new>`, created by its first occurrence); `status:<name>` keeps the labs
-- inserted with that status less those deleted with it, and the labs in a status are that count
-- plus the moves into it less the moves out of it (`lab::index::by_status`). The counts of today
-- stay as they are: every move count starts at nothing.
DROP TRIGGER IF EXISTS sessions_counted_on_update;
CREATE TRIGGER IF NOT EXISTS sessions_moved_on_update AFTER UPDATE OF status ON sessions
  WHEN OLD.status IS NOT NEW.status BEGIN
  INSERT INTO fleet_counts (name, n) VALUES ('move:' || OLD.status || '>' || NEW.status, 1)
    ON CONFLICT (name) DO UPDATE SET n = n + 1;
END;
