"""Where a proxied request's CPU time goes, in real time: each proxy build (memory store, one
Tokio worker) under the same wrk load (32 connections, generateContent) against nginx as the
upstream, sampled by `perf record -e cpu-clock` (a software clock: it works on machines whose perf
has no hardware counters), builds alternated over the rounds. Prints, per request, the time in the
kernel and in user space, then by area (the proxy's modules, each crate, the allocator, libc's
memmove, the vDSO clock) and the functions whose time differs most from the first build's.

    scripts/profile-cpu [BIN ...]   (this file: scripts/profile_cpu.py)

callgrind (scripts/bench-instructions) counts instructions and models the L1 caches only; this
shows what the instructions cost on this CPU, misses in L2 and beyond included. The sampling
itself slows the proxy (a few per cent), alike for every build; compare builds within one run.
BENCH_SECS (default 5) and BENCH_ROUNDS (default 2) size it; BENCH_TOP (default 25) the list."""

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# The request and answer of scripts/bench_instructions.py, and its helpers.
from bench_instructions import ANSWER, BODY, CLIENT_KEY, PATH, free_port, proxy_env, wait_port

LUA = f"""wrk.method = "POST"
wrk.body = '{BODY.decode()}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["x-goog-api-key"] = "{CLIENT_KEY}"
wrk.path = "{PATH}"
"""
HZ = 20000


def start_nginx(tmp):
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"worker_processes 1; daemon off; pid {tmp}/nginx.pid; error_log {tmp}/nginx.err;\n"
            "events { worker_connections 1024; }\n"
            f"http {{ access_log off; client_body_temp_path {tmp}/body;\n"
            f"  server {{ listen 127.0.0.1:{port};\n"
            '    location / { default_type "application/json; charset=UTF-8";\n'
            f"      return 200 '{ANSWER.decode()}'; }} }} }}\n"
        )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen([nginx, "-c", conf, "-p", tmp], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def start_proxy(binary, upstream):
    port = free_port()
    env = proxy_env(upstream, port)
    proc = subprocess.Popen(
        [binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_port(port)
    return proc, port


def wrk(port, secs, lua):
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{secs}s", "-s", lua, f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"(\d+) requests in", out)
    return int(m.group(1)) if m else 0


def sample(binary, upstream, secs, lua, tmp):
    """Samples per symbol (dso, name) and the requests served while sampled."""
    proxy, port = start_proxy(binary, upstream)
    try:
        wrk(port, 1, lua)  # warm-up: connections open, caches filled
        data = os.path.join(tmp, "perf.data")
        perf = subprocess.Popen(
            ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(HZ), "-p", str(proxy.pid),
             "-o", data, "--", "sleep", str(secs + 1)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        n = wrk(port, secs, lua)
        perf.wait()
    finally:
        proxy.terminate()
        proxy.wait()
    rep = subprocess.run(
        ["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", "dso,sym", "-n"],
        capture_output=True,
        text=True,
    ).stdout
    counts = collections.Counter()
    for line in rep.splitlines():
        p = line.split(None, 4)
        if len(p) < 5 or line.startswith("#") or not p[1].isdigit():
            continue
        # The binary's own functions under one name, whichever build they came from.
        dso = "[proxy]" if p[2] == os.path.basename(binary) else p[2]
        counts[(dso, re.sub(r"^\[.\] ", "", p[4].strip()))] += int(p[1])
    return counts, n


def area(dso, sym):
    """The area a sampled function belongs to."""
    if "kernel" in dso:
        return "kernel"
    if "vdso" in dso:
        return "vdso (clock)"
    if dso.startswith("libc"):
        return "libc memmove" if "memmove" in sym or "memcpy" in sym else "libc other"
    s = sym.lstrip("<")
    s = re.sub(r"^core::ptr::drop_in_place<", "", s)
    if s.startswith(("_mi_", "mi_")):
        return "mimalloc"
    m = re.match(r"([a-z_0-9]+)(?:::([a-z_0-9]+))?", s)
    if not m:
        return "other"
    if m.group(1) == "gemini_quota_proxy":
        return f"proxy::{m.group(2) or ''}"
    return m.group(1)


def main():
    bins = sys.argv[1:] or ["target/release/gemini-quota-proxy"]
    for b in bins:
        if not os.path.isfile(b):
            sys.exit(f"no such build: {b} (cargo build --release first)")
    secs = int(os.environ.get("BENCH_SECS", "5"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
    top = int(os.environ.get("BENCH_TOP", "25"))
    for tool in ("perf", "wrk", "nginx"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing (scripts/profile-cpu installs it)")
    tmp = tempfile.mkdtemp(prefix="gqp-prof-")
    lua = os.path.join(tmp, "post.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    nginx, upstream = start_nginx(tmp)
    per = {b: collections.Counter() for b in bins}
    served = dict.fromkeys(bins, 0)
    try:
        for r in range(rounds):
            for b in bins if r % 2 == 0 else list(reversed(bins)):
                counts, n = sample(b, upstream, secs, lua, tmp)
                per[b].update(counts)
                served[b] += n
    finally:
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    us = 1e6 / HZ  # microseconds a sample stands for
    # Per request, in nanoseconds.
    ns = {b: {k: v * us * 1000 / max(served[b], 1) for k, v in per[b].items()} for b in bins}
    print(f"perf cpu-clock at {HZ} Hz, {rounds} alternated rounds of {secs} s per build, wrk -c32,"
          " one Tokio worker, memory store, nginx upstream; per request:")
    areas = {b: collections.Counter() for b in bins}
    for b in bins:
        for (d, s), v in ns[b].items():
            areas[b][area(d, s)] += v
    names = [os.path.relpath(b) if len(b) < 60 else "..." + b[-57:] for b in bins]
    for b, name in zip(bins, names):
        k, u = areas[b]["kernel"], areas[b].total() - areas[b]["kernel"]
        print(f"  {name}: {served[b]} requests; kernel {k / 1000:.2f} us, user {u / 1000:.2f} us")
    first = bins[0]
    keys = sorted(set().union(*areas.values()), key=lambda a: -max(areas[b][a] for b in bins))
    print("\nby area (ns per request):")
    print(f"  {'area':28}" + "".join(f"{i:>10}" for i in range(1, len(bins) + 1)))
    for a in keys:
        if max(areas[b][a] for b in bins) >= 20:
            print(f"  {a[:28]:28}" + "".join(f"{areas[b][a]:10.0f}" for b in bins))
    print("  (columns: the builds in the order given)")
    for b, name in zip(bins[1:], names[1:]):
        print(f"\nfunctions, {name} against {names[0]} (ns per request):")
        diff = {k: ns[b].get(k, 0) - ns[first].get(k, 0) for k in set(ns[b]) | set(ns[first])}
        for k in sorted(diff, key=lambda k: -abs(diff[k]))[:top]:
            print(f"  {diff[k]:+7.0f} {ns[first].get(k, 0):7.0f} -> {ns[b].get(k, 0):7.0f}  {k[1][:110]}")
    if len(bins) == 1:
        print("\nfunctions (ns per request):")
        for k, v in sorted(ns[first].items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {v:7.0f}  {k[1][:110]}")


if __name__ == "__main__":
    main()
