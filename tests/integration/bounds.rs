//! What used to stall or crash a cleanup, reproduced on real workerd: a malformed cursor, a record grown past the storage's limit, a body sent without its length.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mock_backend::Endpoint;
use serde_json::{json, Value};

use crate::support::*;

/// `?cursor=a%C3%A9b` once sliced a string inside a character: the worker panicked, its wasm
/// instance was reinitialized, and a deletion answered in that moment was never recorded. Now
/// every malformed cursor is a 400, and a cleanup running meanwhile records each deletion once.
pub fn a_malformed_cursor_is_a_400_and_stops_no_cleanup(ctx: &Ctx) {
    let (m, w) = ("cursor-lab", "cursor-lab-w");
    let v = create_lab(ctx, m, "cursor-user", 2, &[w]);
    let expires = epoch_ms(&v["expires_at"]);
    // Ask until the lab's cleanup has had two seconds to run, however slow each answer is
    // under load (a count of answers within a fixed time failed a loaded CI run).
    let mut asked = 0;
    while now_ms() < expires + 2_000 || asked < 10 {
        for cursor in ["a%C3%A9b", "%C3%A9", "aé", "%F0%9F%98%80x", "7%C3%A9"] {
            let r = ctx.worker.operator(
                "GET",
                &format!("/api/v1/labs/sessions?cursor={cursor}"),
                b"",
            );
            assert_eq!(r.status, 400, "{cursor}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "invalid_request");
            asked += 1;
        }
    }
    let done = poll_status(ctx, m, 20, |v| v["status"] == "completed");
    assert_eq!(done["attempts"], 1, "{done}");
    let calls = ctx.mock.calls_for_any(&[m, w]);
    assert_not_before(&calls, expires);
    for vm in [m, w] {
        let deletions = calls
            .iter()
            .filter(|c| key(c) == (Endpoint::DeleteVm, vm))
            .count();
        assert_eq!(deletions, 1, "{vm}:\n{}", show(&calls));
    }
    assert!(!ctx.worker.log().contains("[panic]"));
}

/// An id of exactly 128 characters.
fn long_id(tag: &str) -> String {
    format!("{tag}-{}", "x".repeat(127 - tag.len()))
}

/// The largest stored value of `lab`'s object (the session record), in bytes, read from the
/// local runtime's SQLite files (`_cf_KV`) with Python's sqlite3.
fn stored_record_bytes(state_dir: &Path, lab: &str) -> usize {
    let script = r#"
import glob, sqlite3, sys
needle = sys.argv[2].encode("utf-16-le")
plain = sys.argv[2].encode("latin-1")
best = 0
for path in glob.glob(sys.argv[1] + "/**/*.sqlite", recursive=True):
    try:
        db = sqlite3.connect("file:" + path + "?mode=ro", uri=True)
        for (value,) in db.execute("SELECT value FROM _cf_KV WHERE key = 'session'"):
            if needle in value or plain in value:
                best = max(best, len(value))
    except sqlite3.Error:
        pass
print(best)
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(state_dir)
        .arg(lab)
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
}

/// The reported loop: with the receiver down, every extend queued one more `lab.expiring`, each
/// a whole copy of the view; the record grew until it could not be saved and the same VMs were
/// deleted again and again. The largest lab valid input allows (48 workers, 128-character ids,
/// a `vm.name` outside Latin-1, stored as UTF-16) now stays under 64 KiB in storage, its
/// undelivered warnings replaced by the newest one, and every VM is deleted exactly once.
pub fn the_largest_lab_with_the_receiver_down_stays_bounded(ctx: &Ctx) {
    let master = long_id("bound-m");
    let workers: Vec<String> = (0..48)
        .map(|n| long_id(&format!("bound-w{n:02}")))
        .collect();
    let worker_refs: Vec<&str> = workers.iter().map(String::as_str).collect();
    ctx.receiver.mode(&master, json!({"fail": 1_000_000}));
    let mut body = lab(&master, &long_id("bound-u"), 4, &worker_refs);
    body["vm"] =
        json!({"name": "実験室の仮想マシン".repeat(29).chars().take(256).collect::<String>()});
    let r = ctx.worker.create(&body);
    assert_eq!(r.status, 201, "{}", r.text());
    let path = format!("/api/v1/labs/sessions/{master}");
    // An extend by 1 unit that reaches the lab less than 2 s before its expiry leaves it inside
    // the warning window (3 s) and calls for a new warning at once: the receiver refuses them
    // all. Each extend is sent 1.8 s before the expiry the last answer gave, never after a fixed
    // pause: on a loaded machine a fixed pause plus slow answers would let the lab expire first.
    let mut expires = epoch_ms(&r.json()["expires_at"]);
    for _ in 0..12 {
        let wait = expires.saturating_sub(now_ms()).saturating_sub(1_800);
        std::thread::sleep(Duration::from_millis(wait));
        let r = ctx
            .worker
            .json("POST", &format!("{path}/extend"), &json!({"minutes": 1}));
        assert_eq!(r.status, 200, "{}", r.text());
        expires = epoch_ms(&r.json()["expires_at"]);
    }
    let done = poll_status(ctx, &master, 60, |v| v["status"] == "completed");
    assert_eq!(done["pending"], json!([]));
    let mut vms = worker_refs.clone();
    vms.push(&master);
    let calls = ctx.mock.calls_for_any(&vms);
    for vm in &vms {
        let n = calls
            .iter()
            .filter(|c| key(c) == (Endpoint::DeleteVm, vm))
            .count();
        assert_eq!(n, 1, "{vm} deleted {n} times");
    }
    let log = ctx.worker.log();
    assert!(
        log.matches(&format!("for lab {master} was not delivered yet;"))
            .count()
            >= 5,
        "newer warnings replace undelivered ones"
    );
    assert!(!log.contains("Saving the record of lab") && !log.contains("SQLITE_TOOBIG"));
    let bytes = stored_record_bytes(&ctx.worker.state_dir, &master);
    eprintln!("the largest lab's stored record: {bytes} bytes");
    assert!(bytes > 20_000, "the record was found and is large: {bytes}");
    assert!(bytes <= 64 * 1024 + 64, "stored record {bytes} bytes");
    // The receiver back: one warning (the newest) and the completion, each delivered.
    ctx.receiver.mode(&master, json!({}));
    let got = ctx.receiver.wait(&master, 30, |d| {
        d.iter()
            .any(|d| d["type"] == "lab.cleanup_completed" && d["answered"] == 200)
            && d.iter()
                .any(|d| d["type"] == "lab.expiring" && d["answered"] == 200)
    });
    let accepted: Vec<&Value> = got
        .iter()
        .filter(|d| d["type"] == "lab.expiring" && d["answered"] == 200)
        .collect();
    assert_eq!(accepted.len(), 1, "one warning delivered, the newest");
}

/// A body sent in chunks, without `Content-Length`, is read up to 64 KiB and no further: 413.
/// Runs alone: the local proxy of `wrangler dev` takes the connection the worker closed early
/// (it answered before the body ended) for a network error and may restart the runtime.
pub fn a_chunked_body_is_read_up_to_the_limit(ctx: &mut Ctx) {
    let send = |body: &[u8]| -> String {
        let mut stream = TcpStream::connect(&ctx.worker.addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let head = format!(
            "POST /api/v1/labs/sessions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            ctx.worker.addr
        );
        stream.write_all(head.as_bytes()).unwrap();
        for chunk in body.chunks(8 * 1024) {
            let _ = stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes());
            let _ = stream.write_all(chunk);
            let _ = stream.write_all(b"\r\n");
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    };
    let mut big = lab("chunked-big", "chunked-user", 60, &[]);
    big["padding"] = json!("p".repeat(70 * 1024));
    let answer = send(big.to_string().as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    let small = lab("chunked-small", "chunked-user", 60, &[]);
    let answer = send(small.to_string().as_bytes());
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // Whatever the local proxy did about the early answer, the worker answers again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = ctx
            .worker
            .raw("GET", "/api/v1/labs/sessions/chunked-big", &[], b"");
        if r.status == 404 {
            assert_eq!(r.json()["error"]["code"], "not_found", "nothing stored");
            break;
        }
        assert!(Instant::now() < deadline, "{}: {}", r.status, r.text());
        std::thread::sleep(Duration::from_millis(500));
    }
}
