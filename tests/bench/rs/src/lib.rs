//! The create of labs-cleanup in a minimal workers-rs worker, written the way the crate's
//! examples write one: the same checks as `tests/bench/js/worker.js`, forwarded to the lab's
//! Durable Object, which reads the lab's record and writes it and its alarm. Nothing else.

use serde_json::{json, Value};
use worker::*;

const MAX_DURATION: u64 = 10080;
const MAX_WORKERS: usize = 48;

fn error(status: u16, code: &str, message: &str) -> Result<Response> {
    Ok(
        Response::from_json(&json!({"error": {"code": code, "message": message}}))?
            .with_status(status),
    )
}

fn id_ok(v: &Value) -> Option<&str> {
    let s = v.as_str()?;
    let ok = (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@+-".contains(&b));
    ok.then_some(s)
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The session record, or what is wrong with the body.
fn check(body: &Value) -> std::result::Result<Value, &'static str> {
    let obj = body
        .as_object()
        .ok_or("request body must be a JSON object")?;
    let lab = id_ok(&body["lab_request_id"]).ok_or("lab_request_id is invalid")?;
    let user = id_ok(&body["user_id"]).ok_or("user_id is invalid")?;
    let duration = body["duration"]
        .as_u64()
        .filter(|d| (1..=MAX_DURATION).contains(d))
        .ok_or("duration is invalid")?;
    let vm_name = match obj.get("vm") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::Object(vm)) => match vm.get("name") {
            None | Some(Value::Null) => Value::Null,
            Some(Value::String(s)) => Value::String(s.clone()),
            _ => return Err("vm is invalid"),
        },
        _ => return Err("vm is invalid"),
    };
    let nodes = match obj.get("worker_nodes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) if a.len() <= MAX_WORKERS => a.clone(),
        _ => return Err("worker_nodes is invalid"),
    };
    let mut ids: Vec<String> = Vec::new();
    for n in &nodes {
        let id = id_ok(&n["worker_lab_request_id"]).ok_or("worker_nodes is invalid")?;
        if id == lab || ids.iter().any(|s| s == id) {
            return Err("worker_nodes is invalid");
        }
        ids.push(id.to_string());
    }
    Ok(json!({
        "lab_request_id": lab,
        "user_id": user,
        "vm_name": vm_name,
        "worker_lab_request_ids": ids,
        "duration": duration,
    }))
}

fn js_date(ms: i64) -> js_sys::Date {
    js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ms as f64))
}

#[event(fetch)]
async fn fetch(mut req: Request, env: Env, _ctx: Context) -> Result<Response> {
    if req.path() != "/api/v1/labs/sessions" || req.method() != Method::Post {
        return error(404, "not_found", "no route");
    }
    let auth = req.headers().get("Authorization")?.unwrap_or_default();
    let token = env.secret("API_TOKEN").map(|s| s.to_string()).ok();
    match token {
        Some(t) if equal(auth.as_bytes(), format!("Bearer {t}").as_bytes()) => {}
        _ => return error(401, "unauthorized", "a bearer token is required"),
    }
    let text = req.text().await?;
    if text.len() > 65536 {
        return error(413, "payload_too_large", "too large");
    }
    let body: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return error(
                400,
                "invalid_request",
                &format!("request body is not valid JSON: {e}"),
            )
        }
    };
    let session = match check(&body) {
        Ok(s) => s,
        Err(problem) => return error(400, "invalid_request", problem),
    };
    let lab = session["lab_request_id"].as_str().unwrap_or_default();
    let stub = env
        .durable_object("SESSION_MANAGER")?
        .id_from_name(lab)?
        .get_stub()?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_body(Some(session.to_string().into()));
    let forwarded = Request::new_with_init("https://session-manager/create", &init)?;
    stub.fetch_with_request(forwarded).await
}

#[durable_object]
pub struct SessionManager {
    state: State,
    env: Env,
}

impl DurableObject for SessionManager {
    fn new(state: State, env: Env) -> Self {
        Self { state, env }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let mut record: Value = serde_json::from_str(&req.text().await?)?;
        let storage = self.state.storage();
        if storage.get::<String>("session").await?.is_some() {
            return error(409, "conflict", "already scheduled");
        }
        let now = Date::now().as_millis() as i64;
        let unit_ms = self
            .env
            .var("DURATION_UNIT_SECONDS")
            .ok()
            .and_then(|v| v.to_string().parse::<i64>().ok())
            .unwrap_or(60)
            * 1000;
        let expires = now + record["duration"].as_i64().unwrap_or(0) * unit_ms;
        record["created_at"] = now.into();
        record["expires_at"] = expires.into();
        record["status"] = "scheduled".into();
        storage.put("session", record.to_string()).await?;
        storage
            .set_alarm(ScheduledTime::new(js_date(expires)))
            .await?;
        let iso = |ms: i64| String::from(js_date(ms).to_iso_string());
        console_log!(
            "[SessionManager] Scheduled cleanup of lab {} at {}",
            record["lab_request_id"].as_str().unwrap_or_default(),
            iso(expires)
        );
        record["created_at"] = iso(now).into();
        record["expires_at"] = iso(expires).into();
        let mut response = Response::from_json(&record)?.with_status(201);
        response.headers_mut().set("Cache-Control", "no-store")?;
        Ok(response)
    }

    async fn alarm(&self) -> Result<Response> {
        Response::empty()
    }
}
