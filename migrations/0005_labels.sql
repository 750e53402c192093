-- Each lab's labels (docs/API.md, "labels"): written with the lab's first row, never changed
-- (they are part of the create's identity), deleted with the lab's row at the end of retention.
-- The list filters on them (`label=key:value`) and a bulk action selects by them, from the
-- index by (key, value) in lab order.
CREATE TABLE IF NOT EXISTS labels (
  lab_request_id TEXT NOT NULL,
  key            TEXT NOT NULL,
  value          TEXT NOT NULL,
  PRIMARY KEY (lab_request_id, key)
);
CREATE INDEX IF NOT EXISTS labels_by_value ON labels (key, value, lab_request_id);
