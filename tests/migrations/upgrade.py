#!/usr/bin/env python3
"""The D1 migrations on a database written by the previous schema: every migration up to the
newest but one applied, labs written and changed, then the newest applied, and more changes.
Checks that no row is lost and that the counts the triggers keep (`fleet_counts`) equal the
counts of the rows at every step. SQLite here is the engine D1 runs; the worker's statements
are the ones in src/lab/index.rs (upsert by revision, delete).

Usage: python3 upgrade.py MIGRATIONS_DIR   (prints "ok: ..." or fails with the difference)
"""
import glob
import json
import random
import sqlite3
import sys

COLUMNS = ("lab_request_id,user_id,lab_type,vm_count,status,created_at,expires_at,attempts,"
           "next_attempt_at,pending_count,already_gone_count,last_error,completed_at,updated_at,"
           "revision,origin,end_reason").split(",")
# The worker's upsert (`index::upsert`): the columns an attempt changes, then the ones a row keeps
# from its create (an extend moves the expiry) where they differ.
FIXED = [1, 2, 3, 5, 6, 15]
UPSERT = (f"INSERT INTO sessions ({', '.join(COLUMNS)}) VALUES ({', '.join(f'?{i}' for i in range(1, 18))}) "
          "ON CONFLICT (lab_request_id) DO UPDATE SET "
          + ", ".join(f"{c} = excluded.{c}" for i, c in enumerate(COLUMNS) if i and i not in FIXED)
          + " WHERE excluded.revision > sessions.revision")
UPSERT_FIXED = ("UPDATE sessions SET " + ", ".join(f"{COLUMNS[i]} = ?{i + 1}" for i in FIXED)
                + " WHERE lab_request_id = ?1 AND revision = ?15 AND ("
                + ", ".join(COLUMNS[i] for i in FIXED) + ") IS NOT ("
                + ", ".join(f"?{i + 1}" for i in FIXED) + ")")
STATUSES = ["scheduled", "cleaning_up", "retrying", "completed"]
ORIGINS = ["api", "api", "api", "inventory", "legacy"]

draw = random.Random(7)
revision = {}
# What each lab's row must hold: the values of its newest revision written.
want = {}
written = {}


def upsert(db, n):
    lab = f"lab-{n}"
    revision[lab] = revision.get(lab, 0) + draw.choice([1, 1, 1, -1])  # now and then an old one
    status = draw.choice(STATUSES)
    # A revision is one content (the worker's revision moves with every change of the record).
    row = written.setdefault((lab, revision[lab]), (lab, "u", "single", 1, status, 1, 100 + n + draw.choice([0, 0, 0, 60]), 1, None, 1,
           draw.choice([0, 0, 1, 2]), None, 200 if status == "completed" else None,
           1, revision[lab], ORIGINS[n % len(ORIGINS)], None))
    db.execute(UPSERT, row)
    db.execute(UPSERT_FIXED, row[:16])
    if lab not in want or row[14] > want[lab][14]:
        want[lab] = row
    if n % 3 == 0:
        write_vms(db, lab, revision[lab])


# The VMs of a lab of several VMs (`index::upsert_all`): at the lab's first row, a VM whose row
# names another lab moves to it (when that row is older); then each VM's state is set, unless
# the index holds a newer revision or the row is another lab's.
MOVE = ("UPDATE vms SET lab_request_id = ?1 WHERE vm_id IN (SELECT value FROM json_each(?2)) "
        "AND lab_request_id != ?1 AND revision < ?3")
VM_UPSERT = ("INSERT INTO vms (vm_id, lab_request_id, state, revision) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (vm_id) DO UPDATE SET state = excluded.state, "
             "revision = excluded.revision WHERE excluded.revision > vms.revision "
             "AND vms.lab_request_id = excluded.lab_request_id")
want_vms = {}
first_done = set()


def write_vms(db, lab, rev):
    # Now and then a VM another lab's row named.
    vms = [f"{lab}-w{k}" for k in range(2)] + [f"shared-{draw.randrange(5)}"]
    first = lab not in first_done
    first_done.add(lab)
    if first:
        db.execute(MOVE, (lab, json.dumps(vms), rev))
        for vm in vms:
            w = want_vms.get(vm)
            if w and w[1] != lab and w[3] < rev:
                want_vms[vm] = (vm, lab, w[2], w[3])
    for vm in vms:
        state = draw.choice(["pending", "deleted", "already_gone"])
        db.execute(VM_UPSERT, (vm, lab, state, rev))
        w = want_vms.get(vm)
        if w is None or (rev > w[3] and w[1] == lab):
            want_vms[vm] = (vm, lab, state, rev)


def check_vms(db, step):
    rows = {r[0]: r for r in db.execute("SELECT vm_id, lab_request_id, state, revision FROM vms")}
    if rows != want_vms:
        sys.exit(f"{step}: the VM rows are not the newest revisions written")
    by_lab = db.execute("SELECT COUNT(*) FROM vms INDEXED BY vms_by_lab WHERE lab_request_id > ''").fetchone()[0]
    if by_lab != len(rows):
        sys.exit(f"{step}: {by_lab} VM rows through the lab's index, {len(rows)} rows")


def delete(db, n):
    lab = f"lab-{n}"
    db.execute("DELETE FROM sessions WHERE lab_request_id = ?", (lab,))
    want.pop(lab, None)
    first_done.discard(lab)


def check(db, step):
    rows = dict(db.execute("SELECT name, n FROM fleet_counts"))
    # As `lab::index::by_status` reads them: `status:<s>` plus the moves into s less those out
    # of it (`move:<from>><to>`, since 0011).
    kept = {name: n for name, n in rows.items() if not name.startswith("move:")}
    for name, n in rows.items():
        if name.startswith("move:"):
            old, new = name[len("move:"):].split(">")
            kept[f"status:{old}"] = kept.get(f"status:{old}", 0) - n
            kept[f"status:{new}"] = kept.get(f"status:{new}", 0) + n
    real = {f"status:{s}": n for s, n in
            db.execute("SELECT status, COUNT(*) FROM sessions GROUP BY status")}
    real["already_gone"] = db.execute(
        "SELECT COALESCE(SUM(already_gone_count), 0) FROM sessions").fetchone()[0]
    for name, n in kept.items():
        if real.get(name, 0) != n:
            sys.exit(f"{step}: {name} counted {n}, the rows say {real.get(name, 0)}")
    check_vms(db, step)
    rows = {r[0]: r for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM sessions")}
    if rows != want:
        sys.exit(f"{step}: the rows are not the newest revisions written")
    # The list's origin filter, through the index it uses, finds every lab of that origin.
    for origin in ORIGINS[3:]:
        indexed = db.execute("SELECT COUNT(*) FROM sessions INDEXED BY sessions_by_origin "
                             "WHERE origin = ? AND origin != 'api'", (origin,)).fetchone()[0]
        scanned = sum(1 for r in rows.values() if r[15] == origin)
        if indexed != scanned:
            sys.exit(f"{step}: origin {origin}: {indexed} through the index, {scanned} rows")
    return len(rows)


def main():
    files = sorted(glob.glob(sys.argv[1] + "/*.sql"))
    db = sqlite3.connect(":memory:")
    for f in files[:-1]:
        db.executescript(open(f).read())
    for n in range(400):
        upsert(db, draw.randrange(300))
    for n in draw.sample(range(300), 40):
        delete(db, n)
    before = check(db, "before the newest migration")
    rows = db.execute("SELECT * FROM sessions ORDER BY lab_request_id").fetchall()
    vms = db.execute("SELECT * FROM vms ORDER BY vm_id").fetchall()
    db.executescript(open(files[-1]).read())
    if db.execute("SELECT * FROM sessions ORDER BY lab_request_id").fetchall() != rows:
        sys.exit("the newest migration changed the rows")
    if db.execute("SELECT * FROM vms ORDER BY vm_id").fetchall() != vms:
        sys.exit("the newest migration changed the VM rows")
    check(db, "right after the newest migration")
    for n in range(600):
        upsert(db, draw.randrange(400))
    for n in draw.sample(range(400), 60):
        delete(db, n)
    after = check(db, "after more writes")
    print(f"ok: {len(files)} migrations, {before} labs and {len(vms)} VMs kept across the newest, "
          f"{after} labs after more writes, counts exact")


main()
