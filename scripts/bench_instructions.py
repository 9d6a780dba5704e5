"""Instructions per proxied request, counted by valgrind's callgrind: repeatable on a shared,
noisy machine where requests/s are not (the same binary and inputs give the same count whatever
else runs). One proxy (memory store, one Tokio worker) under callgrind, a fake Gemini upstream
and a fake OTLP collector in this process, N generateContent requests on one keep-alive
connection after a warm-up; the counters are zeroed after the warm-up and dumped after the run.

    scripts/bench-instructions [BIN ...]   (this file: scripts/bench_instructions.py)

Each BIN (default target/release/gemini-quota-proxy) is counted with trace export off and, with
BENCH_OTEL=1, also on at 100 % sampling (exported every 200 ms, or every BENCH_OTEL_DELAY ms:
under callgrind the proxy is slow, so 200 ms sends batches of a few requests each, where a loaded
proxy fills its batches of 512 spans; 5000, the default delay, comes close). BENCH_REQUESTS (default 2000)
and BENCH_WARMUP (default 200) size it; BENCH_TOP=N prints the N costliest functions (inclusive)
of each run; BENCH_OTEL_SAMPLER (default always_on) sets the sampler of the export-on run
(always_off: what a request not sampled costs); BENCH_KEEP=1 keeps each run's callgrind dump (its path printed) for
callgrind_annotate. BENCH_CONNS=N (default 1) sends on N connections at once, as a loaded proxy
serves them (more requests in flight: more memory touched per unit of work). BENCH_CACHE=1 also
simulates the caches and branch predictor (valgrind's model of this CPU's L1 caches) and prints,
per request, the L1 instruction and data misses, the mispredicted branches, and a rough cycle
estimate (instructions + 10 per L1 miss + 15 per mispredict): instructions alone miss what a
larger state per request costs in cache misses. BENCH_REDIS=1 runs each proxy on the Redis store
instead (a redis-server of its own on a free port, itself under callgrind counting only inside its
EVALSHA command: what the scripts cost Redis per request, printed beside the proxy's count). Needs valgrind (scripts/bench-instructions installs it)."""

import http.client
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

ANSWER = (
    b'{"candidates":[{"content":{"role":"model","parts":[{"text":"Hello! How can I help you'
    b' today?"}]},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,'
    b'"candidatesTokenCount":9,"totalTokenCount":21},"modelVersion":"gemini-2.5-flash",'
    b'"responseId":"bench"}'
)
BODY = b'{"contents":[{"role":"user","parts":[{"text":"Write one short friendly greeting."}]}]}'
PATH = "/v1beta/models/gemini-2.5-flash:generateContent"
CLIENT_KEY = "bench-client-key"
COLLECTED = [0]


class Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n)
        if self.path.startswith("/v1/traces"):
            COLLECTED[0] += len(body)
            out, ctype = b"", "application/x-protobuf"
        else:
            out, ctype = ANSWER, "application/json; charset=UTF-8"
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, seconds=120):
    end = time.time() + seconds
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"the proxy did not listen on {port} within {seconds} s")


def send(conn, n):
    for _ in range(n):
        conn.request(
            "POST",
            PATH,
            body=BODY,
            headers={"content-type": "application/json", "x-goog-api-key": CLIENT_KEY},
        )
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            sys.exit(f"the proxy answered {resp.status}: {data[:300]!r}")


def send_on(port, n, conns):
    """`n` requests over `conns` connections at once (one thread each)."""
    if conns <= 1:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        send(conn, n)
        conn.close()
        return
    errors = []

    def one(k):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            send(conn, k)
            conn.close()
        except BaseException as e:  # sys.exit in a thread: reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n // conns + (i < n % conns),))
               for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"a connection failed: {errors[0]}")


# The export-on run's schedule delay (BENCH_OTEL_DELAY).
OTEL_DELAY_MS = int(os.environ.get("BENCH_OTEL_DELAY", "200"))

# Events of BENCH_CACHE=1, as callgrind names them.
CACHE_EVENTS = ("Ir", "I1mr", "D1mr", "D1mw", "Bcm", "Bim")


def start_redis(work):
    """A redis-server of this run's own on a free port, keeping nothing on disk, under
    callgrind counting only inside EVALSHA (the scripts' runs)."""
    port = free_port()
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={work}/redis.out",
         "--toggle-collect=evalShaCommand",
         "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 60)
    return port, proc


def program_totals(dump):
    """`callgrind_annotate`'s output of `dump` and its totals by event."""
    annotated = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", dump], capture_output=True, text=True
    ).stdout
    events = ["Ir"]
    for line in annotated.splitlines():
        if line.startswith("Events shown:"):
            events = line.split(":", 1)[1].split()
        if "PROGRAM TOTALS" in line:
            # One figure per event, each followed by its share: "1,234 (100.0%)".
            figures = [int(f.replace(",", "")) for f in line.split("PROGRAM")[0].split()
                       if f[0].isdigit()]
            return annotated, dict(zip(events, figures))
    return annotated, None


def proxy_env(upstream_port, port):
    """The proxy's environment: two pooled keys, limits far above the load, one Tokio worker."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GEMINI_API_KEYS": "AIzaBenchKey0000000001,AIzaBenchKey0000000002",
        "PROXY_CLIENT_KEYS": CLIENT_KEY,
        "GEMINI_UPSTREAM_URL": f"http://127.0.0.1:{upstream_port}",
        "PROXY_LISTEN": f"127.0.0.1:{port}",
        "GEMINI_MINUTE_LIMIT": "100000000",
        "GEMINI_DAILY_LIMIT": "1000000000",
        "GEMINI_TOKEN_MINUTE_LIMIT": "100000000000",
        "RUST_LOG": "warn",
        "TOKIO_WORKER_THREADS": "1",
    }


def count(binary, upstream_port, otel, requests, warmup, top, conns=1, cache=False):
    work = tempfile.mkdtemp(prefix="gqp-cg-")
    redis = start_redis(work) if os.environ.get("BENCH_REDIS") == "1" else None
    out = os.path.join(work, "callgrind.out")
    port = free_port()
    env = proxy_env(upstream_port, port)
    if redis:
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis[0]}"
    if otel:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{upstream_port}"
        env["OTEL_TRACES_SAMPLER"] = os.environ.get("BENCH_OTEL_SAMPLER", "always_on")
        env["OTEL_BSP_SCHEDULE_DELAY"] = str(OTEL_DELAY_MS)
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
        + (["--cache-sim=yes", "--branch-sim=yes"] if cache else [])
        + [binary],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(work, "valgrind.log"), "w"),
    )
    try:
        wait_port(port)
        send_on(port, warmup, conns)
        time.sleep(0.5)
        for pid in [proc.pid] + ([redis[1].pid] if redis else []):
            subprocess.run(["callgrind_control", "--zero", str(pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        send_on(port, requests, conns)
        if otel:
            time.sleep(1.3 + OTEL_DELAY_MS / 1000)  # the last batch leaves within the schedule
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        proc.terminate()
        proc.wait()
        if redis:
            redis[1].terminate()
            redis[1].wait()
    redis_line = None
    if redis:
        redis_dumps = sorted(f for f in os.listdir(work) if f.startswith("redis.out"))
        _, redis_totals = program_totals(os.path.join(work, redis_dumps[-1]))
        if redis_totals:
            redis_line = (f"    redis-server: {redis_totals['Ir'] / requests / 1000:.1f}k "
                          "instructions per request in its scripts (EVALSHA)")
    dumps = sorted(f for f in os.listdir(work) if f.startswith("callgrind.out."))
    if not dumps:
        sys.exit(f"no callgrind dump in {work}")
    dump = os.path.join(work, dumps[-1])
    annotated, totals = program_totals(dump)
    total = totals.get("Ir") if totals else None
    if total is None:
        sys.exit(f"no total in {dump}")
    lines = [redis_line] if redis_line else []
    if cache:
        per = {e: totals.get(e, 0) / requests for e in CACHE_EVENTS}
        misses = per["I1mr"] + per["D1mr"] + per["D1mw"]
        mispredicts = per["Bcm"] + per["Bim"]
        lines.append(f"    L1 misses per request: instructions {per['I1mr']:.0f}, data read "
                     f"{per['D1mr']:.0f}, data write {per['D1mw']:.0f}; mispredicted branches "
                     f"{mispredicts:.0f}; cycles ~{(per['Ir'] + 10 * misses + 15 * mispredicts) / 1000:.1f}k")
    if top:
        body = [l for l in annotated.splitlines() if l.strip() and l.strip()[0].isdigit()]
        for l in body[1 : top + 1]:
            n = int(l.split()[0].replace(",", ""))
            lines.append(f"    {n / requests / 1000:8.1f}k  {l.split(None, 1)[1][:150]}")
    if os.environ.get("BENCH_KEEP") == "1":
        lines.append(f"    (callgrind dump kept: {dump})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return total / requests, lines


def main():
    if not shutil.which("valgrind"):
        sys.exit("valgrind is missing: run scripts/bench-instructions, which installs it")
    bins = sys.argv[1:] or ["target/release/gemini-quota-proxy"]
    requests = int(os.environ.get("BENCH_REQUESTS", "2000"))
    warmup = int(os.environ.get("BENCH_WARMUP", "200"))
    top = int(os.environ.get("BENCH_TOP", "0"))
    otel = os.environ.get("BENCH_OTEL") == "1"
    conns = max(1, int(os.environ.get("BENCH_CONNS", "1")))
    cache = os.environ.get("BENCH_CACHE") == "1"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    upstream_port = server.server_address[1]
    over = "one connection" if conns == 1 else f"{conns} connections at once"
    print(f"callgrind: {requests} generateContent requests on {over} after {warmup}, "
          "one Tokio worker, " + ("Redis store" if os.environ.get("BENCH_REDIS") == "1"
                                  else "memory store"))
    for binary in bins:
        for on in ([False, True] if otel else [False]):
            per, lines = count(binary, upstream_port, on, requests, warmup, top, conns, cache)
            sampler = os.environ.get("BENCH_OTEL_SAMPLER", "always_on")
            label = f"export on ({sampler}, {OTEL_DELAY_MS} ms)" if on else "export off"
            print(f"{binary}  {label:18}  {per / 1000:8.1f}k instructions per request")
            for l in lines:
                print(l)
    if otel:
        print(f"collector received {COLLECTED[0]} bytes")


if __name__ == "__main__":
    main()
