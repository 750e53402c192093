// Samples the CPU of the worker's isolate through the inspector of `wrangler dev` (the Chrome
// DevTools protocol's Profiler) while the benchmark drives it: started, it prints "ready"; a line
// "stop" on stdin stops the profile and prints {"busy_us": ..., "span_us": ..., "top": [...]}: the
// sampled time the isolate ran code (everything but "(idle)"), the profile's length, and the
// functions that ran longest themselves ([name, µs], at most 10; wasm functions by name when the
// worker was built with KEEP_WASM_NAMES=1).
// Usage: node --experimental-websocket tests/bench/cpu.mjs <inspector port>
import { createInterface } from "node:readline";

const port = process.argv[2];
const targets = await (await fetch(`http://127.0.0.1:${port}/json`)).json();
const target = targets.find((t) => t.webSocketDebuggerUrl);
if (!target) {
  console.error("no inspector target");
  process.exit(1);
}
// The inspector proxy of `wrangler dev` wants an `Origin` it knows.
const ws = new WebSocket(target.webSocketDebuggerUrl, { headers: { Origin: "http://localhost" } });
let id = 0;
const waiting = new Map();
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id && waiting.has(msg.id)) {
    waiting.get(msg.id)(msg);
    waiting.delete(msg.id);
  }
};
const send = (method, params = {}) =>
  new Promise((resolve) => {
    id += 1;
    waiting.set(id, resolve);
    ws.send(JSON.stringify({ id, method, params }));
  });
await new Promise((resolve) => (ws.onopen = resolve));
await send("Profiler.enable");
await send("Profiler.setSamplingInterval", { interval: 100 });
await send("Profiler.start");
console.log("ready");
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim() !== "stop") continue;
  const { result } = await send("Profiler.stop");
  const p = result.profile;
  const names = new Map(p.nodes.map((n) => [n.id, n.callFrame.functionName || `(anonymous ${n.callFrame.url})`]));
  let busy = 0;
  const self = new Map();
  p.samples.forEach((s, i) => {
    const name = names.get(s);
    if (name === "(idle)") return;
    const dt = p.timeDeltas[i] ?? 0;
    busy += dt;
    self.set(name, (self.get(name) ?? 0) + dt);
  });
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 10);
  console.log(JSON.stringify({ busy_us: busy, span_us: p.endTime - p.startTime, top }));
  ws.close();
  process.exit(0);
}
