// The create of labs-cleanup in plain JavaScript, for the benchmark's side-by-side comparison:
// the same checks of the token and the body, forwarded to the lab's Durable Object, which reads
// the lab's record and writes it and its alarm in one batch. Nothing else (no cleanup).

const ID = /^[A-Za-z0-9._:@+-]{1,128}$/;
const MAX_DURATION = 10080;
const MAX_WORKERS = 48;

function error(status, code, message) {
  return Response.json({ error: { code, message } }, { status, headers: { "Cache-Control": "no-store" } });
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

function check(body) {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return "request body must be a JSON object";
  for (const field of ["lab_request_id", "user_id"]) {
    if (typeof body[field] !== "string" || !ID.test(body[field])) return `${field} is invalid`;
  }
  const d = body.duration;
  if (!Number.isInteger(d) || d < 1 || d > MAX_DURATION) return "duration is invalid";
  if (body.vm != null && (typeof body.vm !== "object" || (body.vm.name != null && typeof body.vm.name !== "string"))) return "vm is invalid";
  const nodes = body.worker_nodes ?? [];
  if (!Array.isArray(nodes) || nodes.length > MAX_WORKERS) return "worker_nodes is invalid";
  const seen = new Set([body.lab_request_id]);
  for (const n of nodes) {
    const id = n?.worker_lab_request_id;
    if (typeof id !== "string" || !ID.test(id) || seen.has(id)) return "worker_nodes is invalid";
    seen.add(id);
  }
  return null;
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (url.pathname !== "/api/v1/labs/sessions" || request.method !== "POST") return error(404, "not_found", "no route");
    const auth = request.headers.get("Authorization") || "";
    if (!env.API_TOKEN || !equal(auth, `Bearer ${env.API_TOKEN}`)) return error(401, "unauthorized", "a bearer token is required");
    const text = await request.text();
    if (text.length > 65536) return error(413, "payload_too_large", "too large");
    let body;
    try {
      body = JSON.parse(text);
    } catch (e) {
      return error(400, "invalid_request", `request body is not valid JSON: ${e.message}`);
    }
    const problem = check(body);
    if (problem) return error(400, "invalid_request", problem);
    const session = {
      lab_request_id: body.lab_request_id,
      user_id: body.user_id,
      vm_name: body.vm?.name ?? null,
      worker_lab_request_ids: (body.worker_nodes ?? []).map((n) => n.worker_lab_request_id),
      duration: body.duration,
    };
    const stub = env.SESSION_MANAGER.get(env.SESSION_MANAGER.idFromName(session.lab_request_id));
    return stub.fetch("https://session-manager/create", { method: "POST", body: JSON.stringify(session) });
  },
};

export class SessionManager {
  constructor(state, env) {
    this.state = state;
    this.env = env;
  }

  async fetch(request) {
    const session = await request.json();
    if (await this.state.storage.get("session")) return error(409, "conflict", "already scheduled");
    const now = Date.now();
    const unitMs = Number(this.env.DURATION_UNIT_SECONDS || "60") * 1000;
    const record = { ...session, created_at: now, expires_at: now + session.duration * unitMs, status: "scheduled" };
    this.state.storage.put("session", JSON.stringify(record));
    this.state.storage.setAlarm(record.expires_at);
    console.log(`[SessionManager] Scheduled cleanup of lab ${record.lab_request_id} at ${new Date(record.expires_at).toISOString()}`);
    return Response.json(
      { ...record, created_at: new Date(record.created_at).toISOString(), expires_at: new Date(record.expires_at).toISOString() },
      { status: 201, headers: { "Cache-Control": "no-store" } },
    );
  }

  async alarm() {}
}
