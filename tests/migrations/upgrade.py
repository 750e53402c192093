#!/usr/bin/env python3
"""The D1 migrations on a database written by the previous schema: every migration up to the
newest but one applied, labs written and changed, then the newest applied, and more changes.
Checks that no row is lost and that the counts the triggers keep (`fleet_counts`) equal the
counts of the rows at every step. SQLite here is the engine D1 runs; the worker's statements
are the ones in src/lab/index.rs (upsert by revision, delete).

Usage: python3 upgrade.py MIGRATIONS_DIR   (prints "ok: ..." or fails with the difference)
"""
import glob
import random
import sqlite3
import sys

COLUMNS = ("lab_request_id,user_id,lab_type,vm_count,status,created_at,expires_at,attempts,"
           "next_attempt_at,pending_count,already_gone_count,last_error,completed_at,updated_at,"
           "revision,origin,end_reason")
UPSERT = (f"INSERT INTO sessions ({COLUMNS}) VALUES ({', '.join('?' * 17)}) "
          "ON CONFLICT (lab_request_id) DO UPDATE SET "
          + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS.split(",")[1:])
          + " WHERE excluded.revision > sessions.revision")
STATUSES = ["scheduled", "cleaning_up", "retrying", "completed"]

draw = random.Random(7)
revision = {}


def upsert(db, n):
    lab = f"lab-{n}"
    revision[lab] = revision.get(lab, 0) + draw.choice([1, 1, 1, -1])  # now and then an old one
    status = draw.choice(STATUSES)
    db.execute(UPSERT, (lab, "u", "single", 1, status, 1, 100 + n, 1, None, 1,
                        draw.choice([0, 0, 1, 2]), None, 200 if status == "completed" else None,
                        1, revision[lab], "api", None))


def check(db, step):
    kept = dict(db.execute("SELECT name, n FROM fleet_counts"))
    real = {f"status:{s}": n for s, n in
            db.execute("SELECT status, COUNT(*) FROM sessions GROUP BY status")}
    real["already_gone"] = db.execute(
        "SELECT COALESCE(SUM(already_gone_count), 0) FROM sessions").fetchone()[0]
    for name, n in kept.items():
        if real.get(name, 0) != n:
            sys.exit(f"{step}: {name} counted {n}, the rows say {real.get(name, 0)}")
    return db.execute("SELECT COUNT(*) FROM sessions").fetchone()[0]


def main():
    files = sorted(glob.glob(sys.argv[1] + "/*.sql"))
    db = sqlite3.connect(":memory:")
    for f in files[:-1]:
        db.executescript(open(f).read())
    for n in range(400):
        upsert(db, draw.randrange(300))
    for n in draw.sample(range(300), 40):
        db.execute("DELETE FROM sessions WHERE lab_request_id = ?", (f"lab-{n}",))
    before = check(db, "before the newest migration")
    rows = db.execute("SELECT * FROM sessions ORDER BY lab_request_id").fetchall()
    db.executescript(open(files[-1]).read())
    if db.execute("SELECT * FROM sessions ORDER BY lab_request_id").fetchall() != rows:
        sys.exit("the newest migration changed the rows")
    check(db, "right after the newest migration")
    for n in range(600):
        upsert(db, draw.randrange(400))
    for n in draw.sample(range(400), 60):
        db.execute("DELETE FROM sessions WHERE lab_request_id = ?", (f"lab-{n}",))
    after = check(db, "after more writes")
    print(f"ok: {len(files)} migrations, {before} labs kept across the newest, {after} after more writes, counts exact")


main()
