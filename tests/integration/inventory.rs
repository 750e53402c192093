//! What nobody told the worker about, on real workerd with local D1 and the mock backend: an inventory pushed and pulled, orphans, VMs whose delete did not take, and the sweep of a lab that lost its alarm.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mock_backend::{Action, Endpoint, Fault, RunningVm};
use serde_json::{json, Value};

use crate::support::*;

const INVENTORY: &str = "/api/v1/labs/inventory";

fn push(ctx: &Ctx, vms: &Value, act: bool) -> Value {
    let body = json!({"vms": vms, "act": act});
    let r = ctx
        .worker
        .operator("POST", INVENTORY, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["lab_request_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn vm(id: &str, user: &str, created_at: Option<String>) -> Value {
    match created_at {
        Some(at) => json!({"lab_request_id": id, "user_id": user, "created_at": at}),
        None => json!({"lab_request_id": id, "user_id": user}),
    }
}

/// An RFC 3339 time `secs` seconds ago.
fn ago(secs: u64) -> String {
    let ms = now_ms() - secs * 1000;
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap()
        .to_rfc3339()
}

/// Waits until the index lists `lab` with `status` (its row follows the object's record).
fn wait_row(ctx: &Ctx, lab: &str, user: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = ctx.worker.operator(
            "GET",
            &format!("/api/v1/labs/sessions?user_id={user}&limit=200"),
            b"",
        );
        if r.status == 200
            && r.json()["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["lab_request_id"] == lab && s["status"] == status)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{lab} never listed as {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each reported VM in exactly one class, and a dry run that changes nothing anywhere.
pub fn inventory_classes_and_the_dry_run(ctx: &Ctx) {
    let user = "inv-user-1";
    create_lab(ctx, "inv-live", user, 600, &["inv-live-w"]);
    ctx.mock.add_fault(Fault::on(
        "inv-late-w",
        Endpoint::DeleteVm,
        Action::Status { status: 500 },
    ));
    create_lab(ctx, "inv-late", user, 1, &["inv-late-w"]);
    create_lab(ctx, "inv-done", user, 1, &["inv-done-w"]);
    // Single-VM labs too: their VM is known from their row in `sessions` alone.
    create_lab(ctx, "inv-solo", user, 600, &[]);
    ctx.mock.add_fault(Fault::on(
        "inv-solo-late",
        Endpoint::DeleteVm,
        Action::Status { status: 500 },
    ));
    create_lab(ctx, "inv-solo-late", user, 1, &[]);
    create_lab(ctx, "inv-solo-done", user, 1, &[]);
    poll_status(ctx, "inv-done", 20, |v| v["status"] == "completed");
    poll_status(ctx, "inv-late", 20, |v| v["status"] == "retrying");
    poll_status(ctx, "inv-solo-done", 20, |v| v["status"] == "completed");
    poll_status(ctx, "inv-solo-late", 20, |v| v["status"] == "retrying");
    wait_row(ctx, "inv-done", user, "completed");
    wait_row(ctx, "inv-late", user, "retrying");
    wait_row(ctx, "inv-solo", user, "scheduled");
    wait_row(ctx, "inv-solo-done", user, "completed");
    wait_row(ctx, "inv-solo-late", user, "retrying");
    let calls_before = ctx.mock.calls().len();
    let answer = push(
        ctx,
        &json!([
            vm("inv-live", user, None),
            vm("inv-live-w", user, Some(ago(60))),
            vm("inv-late-w", user, None),
            // Masters are found by their lab's id, their state in its row: deleted, while
            // the lab retries its worker, and in the completed lab.
            vm("inv-late", user, None),
            vm("inv-done-w", user, None),
            vm("inv-done", user, None),
            vm("inv-stray", "inv-user-9", Some(ago(3_600))),
            vm("inv-solo", user, Some(ago(3_600))),
            vm("inv-solo-late", user, None),
            vm("inv-solo-done", user, None),
        ]),
        false,
    );
    assert_eq!(
        ids(&answer["tracked"]),
        ["inv-live", "inv-live-w", "inv-solo"]
    );
    assert_eq!(ids(&answer["overdue"]), ["inv-late-w", "inv-solo-late"]);
    assert_eq!(
        ids(&answer["finished"]),
        ["inv-done", "inv-done-w", "inv-late", "inv-solo-done"]
    );
    // A master's lab is itself.
    for master in ["inv-late", "inv-done"] {
        let entry = answer["finished"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["lab_request_id"] == master)
            .unwrap();
        assert_eq!(entry["lab"], master);
    }
    assert_eq!(ids(&answer["unknown"]), ["inv-stray"]);
    assert_eq!(answer["tracked"][1]["lab"], "inv-live");
    assert_eq!(answer["scheduled"], json!([]));
    assert_eq!(answer["act"], false);
    // A dry run: nothing scheduled, no call, no record for the stray VM.
    std::thread::sleep(Duration::from_millis(500));
    assert!(ctx.mock.calls_for("inv-stray").is_empty());
    assert!(ctx.mock.calls()[calls_before..]
        .iter()
        .all(|c| c.lab_request_id.as_deref() != Some("inv-done-w")));
    let r = ctx
        .worker
        .raw("GET", "/api/v1/labs/sessions/inv-stray", &[], b"");
    assert_eq!(r.status, 404, "{}", r.text());
    ctx.mock.clear_faults("inv-late-w");
    ctx.mock.clear_faults("inv-solo-late");
}

/// Acting: an old unknown VM is cleaned up once as a lab of its own (services first, its events
/// as any lab's) once a second report confirms it, a young one is left alone, a finished VM
/// still running is deleted again with an error line once its lab settled, a tracked lab's VMs
/// are never touched, and the same inventory twice schedules nothing twice.
pub fn inventory_acts_once_after_the_grace(ctx: &Ctx) {
    let user = "inv-user-2";
    create_lab(ctx, "inv-keep", user, 600, &["inv-keep-w"]);
    create_lab(ctx, "inv-ghost", user, 1, &["inv-ghost-w"]);
    poll_status(ctx, "inv-ghost", 20, |v| v["status"] == "completed");
    wait_row(ctx, "inv-ghost", user, "completed");
    let report = json!([
        vm("inv-keep", user, None),
        vm("inv-keep-w", user, None),
        vm("inv-ghost-w", user, None),
        // ORPHAN_GRACE_MINUTES is 60 units: 60 s in the tests.
        vm("inv-orphan-old", "inv-user-8", Some(ago(600))),
        vm("inv-orphan-young", "inv-user-8", Some(ago(5))),
    ]);
    // The deletions it schedules take 1.5 s (under the 2 s timeout), so the same report again
    // meets them under way.
    for id in ["inv-orphan-old", "inv-ghost-w"] {
        ctx.mock
            .add_fault(Fault::on(id, Endpoint::DeleteVm, Action::Delay { ms: 1_500 }).times(1));
    }
    // The first report confirms nothing: the old VM is remembered, the finished one's lab
    // changed a moment ago.
    let first = push(ctx, &report, true);
    assert_eq!(first["scheduled"], json!([]), "{first}");
    assert_eq!(first["unconfirmed"], 2, "{first}");
    // ORPHAN_CONFIRM_MINUTES (10 units: 10 s here) later, the same report acts.
    std::thread::sleep(Duration::from_secs(11));
    let answer = push(ctx, &report, true);
    let again = push(ctx, &report, true);
    assert_eq!(again["scheduled"], json!([]), "nothing twice: {again}");
    let scheduled: Vec<(String, String)> = answer["scheduled"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["lab_request_id"].as_str().unwrap().to_string(),
                s["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        scheduled,
        vec![
            ("inv-ghost-w".to_string(), "delete_again".to_string()),
            ("inv-orphan-old".to_string(), "orphan".to_string()),
        ]
    );
    let orphan = poll_status(ctx, "inv-orphan-old", 20, |v| v["status"] == "completed");
    assert_eq!(orphan["origin"], "inventory");
    assert_eq!(orphan["user_id"], "inv-user-8");
    let calls = ctx.mock.calls_for("inv-orphan-old");
    assert_eq!(
        key(&calls[0]),
        (Endpoint::Expose, "inv-orphan-old"),
        "services first"
    );
    assert_eq!(
        calls
            .iter()
            .filter(|c| key(c) == (Endpoint::DeleteVm, "inv-orphan-old"))
            .count(),
        1
    );
    let ghost = poll_status(ctx, "inv-ghost", 20, |v| {
        v["status"] == "completed" && v["attempts"] == 2
    });
    assert_eq!(ghost["deleted"], json!(["inv-ghost", "inv-ghost-w"]));
    assert_eq!(
        ctx.mock
            .calls_for("inv-ghost-w")
            .iter()
            .filter(|c| c.endpoint == Some(Endpoint::DeleteVm))
            .count(),
        2,
        "deleted again"
    );
    assert_eq!(
        ctx.mock
            .calls_for("inv-ghost")
            .iter()
            .filter(|c| c.endpoint == Some(Endpoint::DeleteVm))
            .count(),
        1,
        "only the VM that still ran"
    );
    wait_log(
        ctx,
        "❌ VM inv-ghost-w of lab inv-ghost was counted deleted, yet the backend's inventory still lists it",
        10,
    );
    assert!(ctx
        .mock
        .calls_for_any(&["inv-keep", "inv-keep-w"])
        .is_empty());
    assert!(ctx.mock.calls_for("inv-orphan-young").is_empty());
    // The orphan's events are those of any lab.
    ctx.receiver.wait("inv-orphan-old", 20, |d| {
        d.iter().any(|d| d["type"] == "lab.cleanup_completed")
    });
    wait_row(ctx, "inv-orphan-old", "inv-user-8", "completed");
    assert_eq!(
        ctx.worker
            .operator(
                "GET",
                "/api/v1/labs/sessions?origin=inventory&limit=200",
                b""
            )
            .json()["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["lab_request_id"] == "inv-orphan-old")
            .count(),
        1
    );
}

/// Bad inventories are refused as a whole, with nothing scheduled.
pub fn inventory_refusals_schedule_nothing(ctx: &Ctx) {
    let one = |id: &str| vm(id, "inv-user-3", Some(ago(7_200)));
    for (body, status, needle) in [
        (json!({"act": true}), 400, "vms is required"),
        (json!({"vms": {}, "act": true}), 400, "vms must be an array"),
        (
            json!({"vms": [one("inv-bad-1")], "act": "yes"}),
            400,
            "act must be true or false",
        ),
        (
            json!({"vms": [one("inv-bad/2")], "act": true}),
            400,
            "vms[0]: lab_request_id contains",
        ),
        (
            json!({"vms": [{"lab_request_id": "inv-bad-3", "user_id": "u", "created_at": "yesterday"}], "act": true}),
            400,
            "vms[0]: created_at must be an RFC 3339 time",
        ),
        (
            json!({"vms": [{"lab_request_id": "inv-bad-4"}], "act": true}),
            400,
            "vms[0]: user_id is required",
        ),
        (
            json!({"vms": [one("inv-bad-5"), one("inv-bad-5")], "act": true}),
            400,
            "vms[1].lab_request_id repeats vms[0]",
        ),
        (
            json!({"vms": (0..1_001).map(|n| one(&format!("inv-many-{n}"))).collect::<Vec<_>>(), "act": true}),
            413,
            "at most 1000",
        ),
    ] {
        let r = ctx
            .worker
            .operator("POST", INVENTORY, body.to_string().as_bytes());
        assert_eq!(r.status, status, "{}", r.text());
        assert!(r.text().contains(needle), "{needle}: {}", r.text());
        if status == 413 {
            assert_eq!(r.json()["error"]["code"], "too_large");
        }
    }
    let r = ctx.worker.raw(
        "POST",
        INVENTORY,
        &[("Content-Type", "application/json")],
        json!({"vms": [one("inv-bad-6")], "act": true})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 403, "the frontend's token: {}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    for id in [
        "inv-bad-1",
        "inv-bad-3",
        "inv-bad-5",
        "inv-bad-6",
        "inv-many-0",
    ] {
        assert!(ctx.mock.calls_for(id).is_empty(), "{id}");
        let r = ctx
            .worker
            .raw("GET", &format!("/api/v1/labs/sessions/{id}"), &[], b"");
        assert_eq!(r.status, 404, "{id}: {}", r.text());
    }
}

/// Deletes a lab's alarm from the local runtime's persisted state (its object's `_cf_METADATA`
/// and the scheduler's `_cf_ALARM`), as a storage fault could lose it. The worker is stopped.
fn lose_alarm(state_dir: &Path, lab: &str) {
    let script = r#"
import glob, sqlite3, sys
found = 0
for path in glob.glob(sys.argv[1] + "/v3/do/*/*.sqlite"):
    if path.endswith("metadata.sqlite"):
        continue
    db = sqlite3.connect(path)
    try:
        names = [n for (n,) in db.execute("SELECT name FROM __miniflare_do_name")]
    except sqlite3.Error:
        continue
    if sys.argv[2] in names:
        db.execute("DELETE FROM _cf_METADATA WHERE key = 1")
        db.commit()
        actor = path.rsplit("/", 1)[1][: -len(".sqlite")]
        meta = sqlite3.connect(path.rsplit("/", 1)[0] + "/metadata.sqlite")
        meta.execute("DELETE FROM _cf_ALARM WHERE actor_id = ?", (actor,))
        meta.commit()
        found += 1
print(found)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(state_dir)
        .arg(lab)
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The Cron Trigger: the backend's inventory pulled across two pages (acting), and a lab whose
/// alarm was lost revived by the sweep; one structured record per run.
pub fn the_scheduled_run_pulls_the_inventory_and_revives_a_lab(ctx: &mut Ctx) {
    // A lab expires while the worker is down, and its alarm is lost with it.
    create_lab(ctx, "sweep-lost", "sweep-user", 4, &[]);
    create_lab(ctx, "pull-keep", "pull-user", 600, &[]);
    ctx.worker.stop();
    lose_alarm(&ctx.worker.state_dir, "sweep-lost");
    std::thread::sleep(Duration::from_secs(5));
    // The backend runs: a VM of a tracked lab, three orphans; two VMs a page.
    ctx.mock.set_page_size(2);
    for (id, user, age) in [
        ("pull-keep", "pull-user", 10),
        ("pull-orphan-1", "pull-user-9", 7_200),
        ("pull-orphan-2", "pull-user-9", 7_200),
        ("pull-orphan-3", "pull-user-9", 7_200),
    ] {
        ctx.mock.run_vm(RunningVm {
            lab_request_id: id.into(),
            user_id: user.into(),
            created_at: Some(ago(age)),
            sticky: false,
        });
    }
    // On the Paid plan a run reads several pages (on Free, one: see the limits test).
    ctx.worker.restart_with(
        &[
            ("INVENTORY_PATH", "/api/v1/labs/inventory"),
            ("RECONCILE_ACT", "true"),
            ("SWEEP_GRACE_SECONDS", "1"),
            ("PLAN", "paid"),
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(3));
    let still = ctx
        .worker
        .raw("GET", "/api/v1/labs/sessions/sweep-lost", &[], b"");
    assert_eq!(still.json()["status"], "scheduled", "no alarm, no cleanup");
    assert!(ctx.mock.calls_for("sweep-lost").is_empty());
    let r = ctx.worker.cron();
    assert_eq!(r.status, 200, "{}", r.text());
    // The lost lab is cleaned up after its poke (its record is kept for the retention, 4 s here).
    let done = poll_status(ctx, "sweep-lost", 20, |v| v["status"] == "completed");
    assert_eq!(done["attempts"], 1);
    wait_log(ctx, "Lab sweep-lost had no alarm while work was due", 10);
    wait_log(ctx, "event: 'sweep'", 10);
    // The first run remembers the orphans; a run ORPHAN_CONFIRM_MINUTES (10 s here) later acts.
    std::thread::sleep(Duration::from_secs(11));
    assert!(ctx
        .mock
        .calls_for_any(&["pull-orphan-1", "pull-orphan-2", "pull-orphan-3"])
        .is_empty());
    let r = ctx.worker.cron();
    assert_eq!(r.status, 200, "{}", r.text());
    let log = ctx.worker.log();
    assert!(log.contains("revived: 1"), "{}", tail(&log, 40));
    // The inventory: two runs of two pages, the orphans cleaned up once each (by the second
    // run), the tracked lab untouched.
    for orphan in ["pull-orphan-1", "pull-orphan-2", "pull-orphan-3"] {
        let v = poll_status(ctx, orphan, 20, |v| v["status"] == "completed");
        assert_eq!(v["origin"], "inventory");
        let deletions = ctx
            .mock
            .calls_for(orphan)
            .iter()
            .filter(|c| c.endpoint == Some(Endpoint::DeleteVm))
            .count();
        assert_eq!(deletions, 1, "{orphan}");
    }
    assert!(ctx.mock.calls_for("pull-keep").is_empty());
    let pages: Vec<String> = ctx
        .mock
        .calls()
        .iter()
        .filter(|c| c.path.starts_with(INVENTORY))
        .map(|c| c.path.clone())
        .collect();
    let pass = vec![INVENTORY.to_string(), format!("{INVENTORY}?cursor=2")];
    assert_eq!(
        pages,
        [pass.clone(), pass].concat(),
        "two runs of two pages, the second from the first's cursor"
    );
    assert!(ctx
        .mock
        .calls()
        .iter()
        .filter(|c| c.path.starts_with(INVENTORY))
        .all(|c| c.authorization.as_deref() == Some(&format!("Bearer {BACKEND_TOKEN}"))));
    let stats = ctx.worker.operator("GET", "/api/v1/labs/stats", b"").json();
    assert_eq!(stats["reconcile"]["source"], "pull", "{stats}");
    assert_eq!(stats["reconcile"]["act"], true);
    assert_eq!(stats["reconcile"]["unknown"], 3);
    assert_eq!(stats["reconcile"]["tracked"], 1);
    // Back to the shared settings.
    ctx.worker.restart_with(
        &[
            ("INVENTORY_PATH", ""),
            ("RECONCILE_ACT", "false"),
            ("SWEEP_GRACE_SECONDS", "300"),
            ("PLAN", ""),
        ],
        &[],
    );
}
