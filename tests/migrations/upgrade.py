#!/usr/bin/env python3
"""The D1 migrations on a database written by the previous schema: every migration up to the
newest but one applied, labs written and changed, then the newest applied, and more changes.
Checks that no row is lost, that the counts the triggers keep (`fleet_counts`) equal the
counts of the rows at every step, and that the inventory's lookup answers the same for every VM
across the newest migration and what the newest revision of each lab says after it. SQLite here
is the engine D1 runs; the worker's statements are the ones in src/lab/index.rs (upsert by
revision, delete, lookup; its tests check that this file holds the ones it makes).

Usage: python3 upgrade.py MIGRATIONS_DIR   (prints "ok: ..." or fails with the difference)
"""
import glob
import json
import random
import sqlite3
import sys

OLD_COLUMNS = ("lab_request_id,user_id,lab_type,vm_count,status,created_at,expires_at,attempts,"
               "next_attempt_at,pending_count,already_gone_count,last_error,completed_at,updated_at,"
               "revision,origin,end_reason").split(",")
# 0015 adds the states of a lab's VMs to its row.
NEW_COLUMNS = OLD_COLUMNS + ["vms_done"]
# The worker's upsert (`index::upsert`): the columns an attempt changes, then the ones a row keeps
# from its create (an extend moves the expiry) where they differ.
FIXED = [1, 2, 3, 5, 6, 15]


def upsert_statement(columns):
    return (f"INSERT INTO sessions ({', '.join(columns)}) VALUES ({', '.join(f'?{i}' for i in range(1, len(columns) + 1))}) "
            "ON CONFLICT (lab_request_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for i, c in enumerate(columns) if i and i not in FIXED)
            + " WHERE excluded.revision > sessions.revision")


COLUMNS = OLD_COLUMNS
UPSERT = upsert_statement(OLD_COLUMNS)
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
# Whether the newest migration is applied: the worker's statements are then the new ones.
new = False


def multi(lab):
    """Every third lab has a master (its own id) and workers, one of them another lab's too."""
    return int(lab.split("-")[1]) % 3 == 0


def workers(lab):
    n = int(lab.split("-")[1])
    return [f"{lab}-w0", f"{lab}-w1", f"shared-{n % 5}"] if multi(lab) else []


def vm_state(lab, vm, rev):
    """A VM's state in its lab's revision `rev`: pending, then from a revision on (drawn per lab
    and VM) deleted or already gone, never back: a VM's states only go forward."""
    h = random.Random(f"{lab}/{vm}")
    return "pending" if rev < h.randrange(1, 6) else h.choice(["deleted", "already_gone"])


def vms_done(lab, rev):
    """`index::row`'s `vms_done`: the lab's VMs deleted or already gone, master first."""
    if not multi(lab):
        return None
    done = [(vm, vm_state(lab, vm, rev)) for vm in [lab] + workers(lab)]
    return "{" + ",".join(f'"{vm}":"{st}"' for vm, st in done if st != "pending") + "}"


def upsert(db, n):
    lab = f"lab-{n}"
    revision[lab] = revision.get(lab, 0) + draw.choice([1, 1, 1, -1])  # now and then an old one
    status = draw.choice(STATUSES)
    rev = revision[lab]
    # A revision is one content (the worker's revision moves with every change of the record).
    row = written.setdefault((lab, rev), (lab, "u", "single", 1 + len(workers(lab)), status, 1, 100 + n + draw.choice([0, 0, 0, 60]), 1, None, 1,
           draw.choice([0, 0, 1, 2]), None, 200 if status == "completed" else None,
           1, rev, ORIGINS[n % len(ORIGINS)], None))
    if new:
        row = row + (vms_done(lab, rev),)
        db.execute(upsert_statement(NEW_COLUMNS), row)
    else:
        db.execute(UPSERT, row)
    db.execute(UPSERT_FIXED, row[:16])
    if lab not in want or row[14] > want[lab][14]:
        want[lab] = row
    if multi(lab):
        write_vms(db, lab, rev)


# The VMs of a lab of several VMs (`index::upsert_all`). Before 0015: at the lab's first row, a
# VM whose row names another lab moves to it (when that row is older); then each VM's state is
# set, the master's among them, unless the index holds a newer revision or the row is another
# lab's. From 0015: at the lab's first row only, the same move, then the workers' rows the index
# lacks; their states are in the lab's row.
MOVE = ("UPDATE vms SET lab_request_id = ?1 WHERE vm_id IN (SELECT value FROM json_each(?2)) "
        "AND lab_request_id != ?1 AND revision < ?3")
VM_UPSERT = ("INSERT INTO vms (vm_id, lab_request_id, state, revision) VALUES (?, ?, ?, ?) "
             "ON CONFLICT (vm_id) DO UPDATE SET state = excluded.state, "
             "revision = excluded.revision WHERE excluded.revision > vms.revision "
             "AND vms.lab_request_id = excluded.lab_request_id AND vms.state IS NOT excluded.state")
VM_INSERT = "INSERT INTO vms (vm_id, lab_request_id, state, revision) SELECT value, ?1, 'pending', ?3 FROM json_each(?2) WHERE 1 ON CONFLICT (vm_id) DO NOTHING"
# The worker's lookup, before 0015 and from it (`index::lookup`).
OLD_LOOKUP = "WITH ids(id) AS (SELECT value FROM json_each(?)) SELECT v.vm_id AS vm_id, v.lab_request_id AS lab_request_id, v.state AS state, s.status AS status, s.expires_at AS expires_at, COALESCE(s.completed_at, s.updated_at) AS updated_at FROM vms v JOIN sessions s ON s.lab_request_id = v.lab_request_id WHERE v.vm_id IN (SELECT id FROM ids) AND s.vm_count != 1 UNION ALL SELECT s.lab_request_id AS vm_id, s.lab_request_id AS lab_request_id, CASE WHEN s.pending_count > 0 THEN 'pending' WHEN s.already_gone_count > 0 THEN 'already_gone' ELSE 'deleted' END AS state, s.status AS status, s.expires_at AS expires_at, COALESCE(s.completed_at, s.updated_at) AS updated_at FROM sessions s WHERE s.lab_request_id IN (SELECT id FROM ids) AND s.vm_count = 1"
LOOKUP = "WITH ids(id) AS (SELECT value FROM json_each(?)) SELECT v.vm_id AS vm_id, v.lab_request_id AS lab_request_id, CASE WHEN s.vms_done IS NULL THEN v.state ELSE COALESCE((SELECT d.value FROM json_each(s.vms_done) d WHERE d.key = v.vm_id), 'pending') END AS state, s.status AS status, s.expires_at AS expires_at, COALESCE(s.completed_at, s.updated_at) AS updated_at FROM vms v JOIN sessions s ON s.lab_request_id = v.lab_request_id WHERE v.vm_id IN (SELECT id FROM ids) AND v.vm_id != v.lab_request_id AND s.vm_count != 1 UNION ALL SELECT s.lab_request_id AS vm_id, s.lab_request_id AS lab_request_id, CASE WHEN s.vm_count != 1 THEN COALESCE((SELECT d.value FROM json_each(s.vms_done) d WHERE d.key = s.lab_request_id), (SELECT m.state FROM vms m WHERE s.vms_done IS NULL AND m.vm_id = s.lab_request_id AND m.lab_request_id = s.lab_request_id), 'pending') WHEN s.pending_count > 0 THEN 'pending' WHEN s.already_gone_count > 0 THEN 'already_gone' ELSE 'deleted' END AS state, s.status AS status, s.expires_at AS expires_at, COALESCE(s.completed_at, s.updated_at) AS updated_at FROM sessions s WHERE s.lab_request_id IN (SELECT id FROM ids)"
# Each VM's row: (vm, lab, state, revision); the state only before 0015.
want_vms = {}
first_done = set()


def write_vms(db, lab, rev):
    first = lab not in first_done
    first_done.add(lab)
    vms = workers(lab) if new else [lab] + workers(lab)
    if first:
        db.execute(MOVE, (lab, json.dumps(vms), rev))
        for vm in vms:
            w = want_vms.get(vm)
            if w and w[1] != lab and w[3] < rev:
                want_vms[vm] = (vm, lab, w[2], w[3])
    if new:
        if first:
            db.execute(VM_INSERT, (lab, json.dumps(vms), rev))
            for vm in vms:
                want_vms.setdefault(vm, (vm, lab, "pending", rev))
        return
    for vm in vms:
        state = vm_state(lab, vm, rev)
        db.execute(VM_UPSERT, (vm, lab, state, rev))
        w = want_vms.get(vm)
        # The row holds its lab's newest revision written (the statement writes it only when
        # the state moves: then the state of that revision is the one kept).
        if w is None or (rev > w[3] and w[1] == lab):
            want_vms[vm] = (vm, lab, state, rev)


def check_vms(db, step):
    rows = {r[0]: r for r in db.execute("SELECT vm_id, lab_request_id, state, revision FROM vms")}
    # The lab and (before 0015) the state of the newest revision written; the revision kept is
    # that of the write that moved the state, at most the newest.
    cut = 3 if not new else 2
    if {k: r[:cut] for k, r in rows.items()} != {k: w[:cut] for k, w in want_vms.items()} or any(
            r[3] > want_vms[k][3] for k, r in rows.items()):
        sys.exit(f"{step}: the VM rows are not the newest revisions written")
    # Until 0014 dropped it, the index by lab holds every row.
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'vms_by_lab'").fetchone():
        by_lab = db.execute("SELECT COUNT(*) FROM vms INDEXED BY vms_by_lab WHERE lab_request_id > ''").fetchone()[0]
        if by_lab != len(rows):
            sys.exit(f"{step}: {by_lab} VM rows through the lab's index, {len(rows)} rows")


def every_vm():
    return sorted({f"lab-{n}" for n in range(400)} | {vm for n in range(400) for vm in workers(f"lab-{n}")})


def looked_up(db, sql):
    return sorted(db.execute(sql, (json.dumps(every_vm()),)).fetchall())


def check_lookup(db, step):
    """The lookup's answer is what the newest revision of each lab says of its VMs: a master or
    a single VM by its lab's id, a worker through its row in `vms`, each once."""
    expected = []
    for lab, row in want.items():
        rev, status, expires, updated = row[14], row[4], row[6], row[12] if row[12] is not None else row[13]
        if multi(lab):
            for vm in [lab] + workers(lab):
                if vm == lab or want_vms.get(vm, (None, None))[1] == lab:
                    expected.append((vm, lab, vm_state(lab, vm, rev), status, expires, updated))
        else:
            state = "pending" if row[9] > 0 else "already_gone" if row[10] > 0 else "deleted"
            expected.append((lab, lab, state, status, expires, updated))
    if looked_up(db, LOOKUP) != sorted(expected):
        sys.exit(f"{step}: the lookup does not answer what the labs' newest rows say")


def cutover(db):
    """Between the migration and the new worker's upload, the previous worker writes as it did:
    a lab of several VMs with its states in `vms` (its master's row among them) and no
    `vms_done`. The lookup reads those; and a master whose lab's row has neither is pending,
    never unknown (an unknown VM can be deleted as an orphan)."""
    lab, rev = "cut-1", 3
    vms = [lab, f"{lab}-w0", f"{lab}-w1"]
    row = (lab, "u", "multi", 3, "retrying", 1, 100, 1, None, 1, 0, None, None, 1, rev, "api", None)
    db.execute(UPSERT, row)
    db.execute(UPSERT_FIXED, row[:16])
    db.execute(MOVE, (lab, json.dumps(vms), rev))
    states = {lab: "deleted", f"{lab}-w0": "pending", f"{lab}-w1": "already_gone"}
    for vm in vms:
        db.execute(VM_UPSERT, (vm, lab, states[vm], rev))
    bare = ("cut-2", "u", "multi", 3, "scheduled", 1, 100, 0, None, 3, 0, None, None, 1, 1, "api", None)
    db.execute(UPSERT, bare)
    got = db.execute(LOOKUP, (json.dumps(vms + ["cut-2"]),)).fetchall()
    answered = sorted((r[0], r[1], r[2]) for r in got)
    expected = sorted([(vm, lab, states[vm]) for vm in vms] + [("cut-2", "cut-2", "pending")])
    if answered != expected:
        sys.exit(f"the previous worker's rows read otherwise: {answered} against {expected}")
    db.execute("DELETE FROM vms WHERE lab_request_id IN ('cut-1', 'cut-2')")
    db.execute("DELETE FROM sessions WHERE lab_request_id IN ('cut-1', 'cut-2')")


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
            old, new_ = name[len("move:"):].split(">")
            kept[f"status:{old}"] = kept.get(f"status:{old}", 0) - n
            kept[f"status:{new_}"] = kept.get(f"status:{new_}", 0) + n
    real = {f"status:{s}": n for s, n in
            db.execute("SELECT status, COUNT(*) FROM sessions GROUP BY status")}
    real["already_gone"] = db.execute(
        "SELECT COALESCE(SUM(already_gone_count), 0) FROM sessions").fetchone()[0]
    for name, n in kept.items():
        if real.get(name, 0) != n:
            sys.exit(f"{step}: {name} counted {n}, the rows say {real.get(name, 0)}")
    check_vms(db, step)
    rows = {r[0]: r for r in db.execute(f"SELECT {', '.join(COLUMNS)} FROM sessions")}
    if rows != {lab: row[:len(COLUMNS)] for lab, row in want.items()}:
        sys.exit(f"{step}: the rows are not the newest revisions written")
    if new:
        check_lookup(db, step)
    # The list's origin filter, through the index it uses, finds every lab of that origin.
    for origin in ORIGINS[3:]:
        indexed = db.execute("SELECT COUNT(*) FROM sessions INDEXED BY sessions_by_origin "
                             "WHERE origin = ? AND origin != 'api'", (origin,)).fetchone()[0]
        scanned = sum(1 for r in rows.values() if r[15] == origin)
        if indexed != scanned:
            sys.exit(f"{step}: origin {origin}: {indexed} through the index, {scanned} rows")
    return len(rows)


def main():
    global new, COLUMNS
    files = sorted(glob.glob(sys.argv[1] + "/*.sql"))
    db = sqlite3.connect(":memory:")
    for f in files[:-1]:
        db.executescript(open(f).read())
    for n in range(400):
        upsert(db, draw.randrange(300))
    for n in draw.sample(range(300), 40):
        delete(db, n)
    before = check(db, "before the newest migration")
    rows = db.execute(f"SELECT {', '.join(OLD_COLUMNS)} FROM sessions ORDER BY lab_request_id").fetchall()
    answered = looked_up(db, OLD_LOOKUP)
    workers_kept = db.execute("SELECT * FROM vms WHERE vm_id != lab_request_id ORDER BY vm_id").fetchall()
    db.executescript(open(files[-1]).read())
    # 0015: every column kept, the workers' rows kept, the masters' states in their labs' rows,
    # and the lookup answers the same for every VM.
    if db.execute(f"SELECT {', '.join(OLD_COLUMNS)} FROM sessions ORDER BY lab_request_id").fetchall() != rows:
        sys.exit("the newest migration changed the rows")
    if db.execute("SELECT * FROM vms ORDER BY vm_id").fetchall() != workers_kept:
        sys.exit("the newest migration did not keep exactly the workers' rows")
    if looked_up(db, LOOKUP) != answered:
        sys.exit("the lookup answers otherwise after the newest migration")
    masters = db.execute("SELECT COUNT(*) FROM sessions WHERE vm_count != 1 AND vms_done IS NOT NULL").fetchone()[0]
    new, COLUMNS = True, NEW_COLUMNS
    # The rows written before it keep their states; a VM's row keeps its lab.
    for lab in list(want):
        stored = db.execute("SELECT vms_done FROM sessions WHERE lab_request_id = ?", (lab,)).fetchone()[0]
        want[lab] = want[lab][:17] + (stored,)
    for vm, w in list(want_vms.items()):
        if vm == w[1]:
            del want_vms[vm]
    check(db, "right after the newest migration")
    cutover(db)
    check(db, "after the previous worker's writes")
    for n in range(600):
        upsert(db, draw.randrange(400))
    for n in draw.sample(range(400), 60):
        delete(db, n)
    after = check(db, "after more writes")
    print(f"ok: {len(files)} migrations, {before} labs ({masters} of several VMs) and "
          f"{len(workers_kept)} worker VMs kept across the newest, the lookup the same for "
          f"{len(answered)} VMs; {after} labs after more writes, counts and lookups exact")


main()
