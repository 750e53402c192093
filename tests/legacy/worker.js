// A stand-in for the TypeScript worker that labs-cleanup replaces, written from its documentation:
// each field under its own storage key, `worker_lab_request_ids` as a JSON string, and an alarm at
// schedule time + duration that re-arms 5 minutes later while a VM fails. Only the cutover test
// (tests/integration/legacy.rs) runs it.

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    if (request.method === "POST" && url.pathname === "/api/v1/labs/sessions") {
      const body = await request.json();
      const stub = env.SESSION_MANAGER.get(env.SESSION_MANAGER.idFromName(body.lab_request_id));
      return stub.fetch("https://session-manager/schedule", {
        method: "POST",
        body: JSON.stringify(body),
      });
    }
    return new Response("not found", { status: 404 });
  },
};

export class SessionManager {
  constructor(state, env) {
    this.state = state;
    this.env = env;
  }

  async fetch(request) {
    const body = await request.json();
    const workers = (body.worker_nodes || []).map((n) => n.worker_lab_request_id);
    await this.state.storage.put("lab_request_id", body.lab_request_id);
    await this.state.storage.put("worker_lab_request_ids", JSON.stringify(workers));
    await this.state.storage.put("user_id", body.user_id);
    await this.state.storage.put("duration", body.duration);
    const unitMs = Number(this.env.DURATION_UNIT_SECONDS || "60") * 1000;
    const expiresAt = Date.now() + body.duration * unitMs;
    await this.state.storage.setAlarm(expiresAt);
    console.log(`[SessionManager] Alarm set for ${new Date(expiresAt).toISOString()}`);
    return Response.json({ scheduled: true, expires_at: new Date(expiresAt).toISOString() });
  }

  async alarm() {
    const master = await this.state.storage.get("lab_request_id");
    const userId = await this.state.storage.get("user_id");
    const workers = JSON.parse((await this.state.storage.get("worker_lab_request_ids")) || "[]");
    const call = (method, path, payload) =>
      fetch(`${this.env.BACKEND_URL}${path}`, {
        method,
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(payload),
      });
    await call("DELETE", "/api/v1/expose/", { lab_request_id: master }).catch(() => {});
    let failed = 0;
    for (const id of [master, ...workers]) {
      const r = await call("POST", "/api/v1/labs/delete", { lab_request_id: id, user_id: userId }).catch(() => null);
      if (!r || !r.ok) failed++;
    }
    if (failed > 0) {
      await this.state.storage.setAlarm(Date.now() + 5 * 60 * 1000);
    } else {
      console.log(`[SessionManager] ✅ Successfully deleted all ${workers.length + 1} VMs`);
    }
  }
}
