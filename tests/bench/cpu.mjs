// Samples the CPU of the worker's isolate through the inspector of `wrangler dev` (the Chrome
// DevTools protocol's Profiler) while the benchmark drives it: started, it prints "ready"; a line
// "stop" on stdin stops the profile and prints {"busy_us": ..., "span_us": ...}: the sampled time
// the isolate ran code (everything but "(idle)"), and the profile's length.
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
  const names = new Map(p.nodes.map((n) => [n.id, n.callFrame.functionName]));
  let busy = 0;
  p.samples.forEach((s, i) => {
    if (names.get(s) !== "(idle)") busy += p.timeDeltas[i] ?? 0;
  });
  console.log(JSON.stringify({ busy_us: busy, span_us: p.endTime - p.startTime }));
  ws.close();
  process.exit(0);
}
