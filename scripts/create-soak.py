# Creates while cleanups run (issue 36, 10): N labs (3000) of 0 to 4 workers created 8 at a time
# against the local run, each lasting DUR (20) duration units, so that the first labs' cleanups run
# while the rest are created; the mock fails about 17 % of deletions once. Prints each 10 s: the
# creates answered, those slower than 2 s or not answered within 20 s, the slowest, and the CPU of
# the local runtime (workerd) and of wrangler's proxy (node). From the project root, with
#   DURATION_UNIT_SECONDS=1 CLEANUP_RETRY_SECONDS=10 bash scripts/dev.sh
# running: python3 scripts/create-soak.py  (results in docs/PERFORMANCE.md).
import json, os, random, subprocess, sys, threading, time, http.client
N = int(os.environ.get("N", "3000")); CONC = 8; DUR = int(os.environ.get("DUR", "20"))
tok = [l.split("=",1)[1].strip() for l in open(".dev.vars") if l.startswith("API_TOKEN=")][0]
random.seed(7)
def post(port, path, body, headers, timeout):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("POST", path, json.dumps(body), headers); r = c.getresponse(); r.read(); c.close(); return r.status
labs = []
for i in range(N):
    ws = [f"cs-{i}-w{k}" for k in range(random.randrange(5))]
    labs.append((f"cs-{i}", ws))
    for vm in [f"cs-{i}"] + ws:
        if random.random() < 0.17:
            post(8788, "/__mock/faults", {"lab_request_id": vm, "endpoint": "delete_vm",
                 "action": {"kind": "status", "status": 500}, "times": 1}, {"Content-Type": "application/json"}, 10)
results = []; lock = threading.Lock(); it = iter(range(N)); t0 = time.time()
def worker():
    while True:
        with lock:
            try: i = next(it)
            except StopIteration: return
        m, ws = labs[i]
        body = {"lab_request_id": m, "user_id": "cs", "duration": DUR,
                "worker_nodes": [{"worker_lab_request_id": w} for w in ws]}
        s = time.time()
        try:
            st = post(8787, "/api/v1/labs/sessions", body, {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}, 20)
        except Exception as e:
            st = type(e).__name__
        with lock: results.append((s - t0, time.time() - s, st))
cpu = []; stop = False
def ticks(name):
    total = 0
    for pid in subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split():
        try:
            with open(f"/proc/{pid}/stat") as f: p = f.read().rsplit(")", 1)[1].split()
            total += int(p[11]) + int(p[12])
        except OSError: pass
    return total
def sampler():
    last = None
    while not stop:
        now = (ticks("workerd"), ticks("node"))
        if last is not None:
            hz = os.sysconf("SC_CLK_TCK")
            cpu.append((time.time() - t0, (now[0]-last[0])/hz, (now[1]-last[1])/hz))
        last = now
        time.sleep(1)
threading.Thread(target=sampler, daemon=True).start()
ths = [threading.Thread(target=worker) for _ in range(CONC)]
[t.start() for t in ths]; [t.join() for t in ths]
stop = True
ok = [r for r in results if r[2] == 201]; bad = [r for r in results if r[2] != 201]
lat = sorted(r[1] for r in ok)
print(f"{len(results)} creates in {time.time()-t0:.0f} s: {len(ok)} answered 201, {len(bad)} not ({set(r[2] for r in bad)})")
if lat: print(f"latency p50 {lat[len(lat)//2]*1000:.0f} ms p99 {lat[int(len(lat)*.99)]*1000:.0f} ms max {lat[-1]*1000:.0f} ms")
for w in range(0, int(time.time()-t0)+1, 10):
    win = [r for r in results if w <= r[0] < w+10]
    c = sum(x[1] for x in cpu if w <= x[0] < w+10); n = sum(x[2] for x in cpu if w <= x[0] < w+10)
    if win: print(f"t={w:4d}s creates {len(win):4d} slow(>2s) {sum(1 for r in win if r[1]>2 or r[2]!=201):4d} max {max(r[1] for r in win):5.1f}s workerd cpu {c/10*100:4.0f}% wrangler(node) cpu {n/10*100:4.0f}%")
