#!/usr/bin/env python3
"""Probes a walletd binary for the behaviours of issue 14 (docs/security.md) from outside,
with the binary's own `init` and default settings, over plain HTTP and raw sockets.

    scripts/probe_limits.py PATH/TO/walletd

Each probe prints PASS or FAIL and what it saw. It needs nothing but the binary, so it runs
against a walletd built from an older commit too (how the issue-14 evidence table in
docs/security.md was made). Takes about a minute (it waits out the default time-outs).
"""

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

WALLETD = os.path.abspath(sys.argv[1])
results = []


def report(name, ok, detail):
    results.append((name, ok))
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)


def init(d, *extra):
    return subprocess.run([WALLETD, "init", "--regions", "eu", "--dir", d, *extra],
                          capture_output=True, text=True)


def mode(p):
    return oct(os.stat(p).st_mode & 0o777)


def start(cfg, log):
    p = subprocess.Popen([WALLETD, "run", "--config", cfg], stdout=log, stderr=log,
                         env={**os.environ, "RUST_LOG": "debug,libp2p=info,yamux=info"})
    return p


def wait_http(host, port, secs=30):
    end = time.time() + secs
    while time.time() < end:
        try:
            s = socket.create_connection((host, port), timeout=1)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                s.close()
                return True
            s.close()
        except OSError:
            pass
        time.sleep(0.2)
    return False


def read_for(s, secs):
    """(bytes read, closed?) within secs."""
    s.settimeout(0.2)
    out, end = b"", time.time() + secs
    while time.time() < end:
        try:
            b = s.recv(65536)
        except socket.timeout:
            if b"\r\n\r\n" in out and b"content-length: 0" not in out.lower():
                head, _, body = out.partition(b"\r\n\r\n")
                for line in head.lower().split(b"\r\n"):
                    if line.startswith(b"content-length:") and len(body) >= int(line[15:]):
                        return out, False
            continue
        except OSError:
            return out, True
        if not b:
            return out, True
        out += b
    return out, False


def body_of(resp):
    return resp.partition(b"\r\n\r\n")[2]


def status(resp):
    try:
        return int(resp[9:12])
    except ValueError:
        return None


def main():
    d = tempfile.mkdtemp(prefix="probe-")
    # Fault injection off by default; the bool flags.
    r = init(os.path.join(d, "flags"), "--faults=false", "--group-commit=false")
    report("init --faults=false --group-commit=false accepted", r.returncode == 0,
           f"exit {r.returncode} {r.stderr.strip()[:90]!r}")
    base = os.path.join(d, "c")
    r = init(base)
    cfg = os.path.join(base, "eu.toml")
    text = open(cfg).read()
    report("init: fault injection off by default", "enabled = false" in text.split("[faults]")[-1],
           "[faults]" + text.split("[faults]")[-1].strip().replace("\n", " "))
    r = init(os.path.join(d, "tls"), "--tls")
    report("init --tls (local CA, HTTPS)", r.returncode == 0, f"exit {r.returncode}")
    modes = {f: mode(os.path.join(base, f)) for f in ["eu.key", "eu.toml", "cluster.json"]}
    modes["dir"] = mode(base)
    report("secret files 0600 in a 0700 directory",
           all(v == "0o600" for k, v in modes.items() if k != "dir") and modes["dir"] == "0o700",
           str(modes))
    cj = json.load(open(os.path.join(base, "cluster.json")))
    token = cj["token"]
    host, port = cj["regions"][0]["http"].split("://")[1].split(":")
    port = int(port)
    key = os.path.join(base, "eu.key")
    os.chmod(key, 0o644)
    log = open(os.path.join(d, "eu.log"), "w")
    p = start(cfg, log)
    try:
        code = p.wait(timeout=8)
    except subprocess.TimeoutExpired:
        code = None
        p.kill()
        p.wait()
    report("walletd refuses a group/other-readable identity key", code not in (None, 0),
           "kept running" if code is None else f"exit {code}")
    os.chmod(key, 0o600)
    p = start(cfg, log)
    try:
        assert wait_http(host, port), "region did not come up"
        auth = f"Authorization: Bearer {token}\r\n"

        # Header-read time-out (default 10 s): half a head, then nothing for 15 s.
        s = socket.create_connection((host, port))
        s.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthoriz")
        t0 = time.time()
        got, closed = read_for(s, 15)
        report("header-read time-out closes a half-sent head", closed,
               f"closed after {time.time() - t0:.1f} s {got[:12]!r}" if closed
               else "still open after 15 s")
        s.close()

        # Request time-out (default 15 s): a payment whose body stalls, 20 s.
        body = b'{"type":"deposit","amount":"1.00","currency":"EUR"}'
        s = socket.create_connection((host, port))
        s.sendall((f"POST /v1/accounts/probe/transactions HTTP/1.1\r\nHost: x\r\n{auth}"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
                  .encode() + body[:10])
        t0 = time.time()
        got, closed = read_for(s, 20)
        ok = status(got) == 503 and b'"timeout"' in got
        report("request time-out: 503 timeout JSON", ok,
               f"after {time.time() - t0:.1f} s: {got[:12]!r} {body_of(got)[:80]!r}"
               if got else f"no answer in 20 s (closed: {closed})")
        s.close()

        # Oversized head (default 16 KiB): 20 KiB header.
        s = socket.create_connection((host, port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20480 + b"\r\n\r\n")
        got, _ = read_for(s, 10)
        report("oversized head: 431", status(got) == 431, f"{got[:12]!r}")
        s.close()

        # Concurrency limit (default 512): 520 payments with stalled bodies, then one more.
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
        held = []
        for i in range(520):
            s = socket.create_connection((host, port))
            s.sendall((f"POST /v1/accounts/held{i}/transactions HTTP/1.1\r\nHost: x\r\n{auth}"
                       f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
                      .encode() + body[:10])
            held.append(s)
        time.sleep(1)
        s = socket.create_connection((host, port))
        s.sendall(f"GET /v1/status HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        t0 = time.time()
        got, _ = read_for(s, 10)
        report("concurrency limit: the excess is answered 503 overloaded at once",
               status(got) == 503 and b'"overloaded"' in got,
               f"after {time.time() - t0:.1f} s: {got[:12]!r} {body_of(got)[:60]!r}"
               if got else "no answer in 10 s (queued)")
        s.close()
        for s in held:
            s.close()

    finally:
        p.terminate()
        p.wait()
        log.close()
    # The per-token rate limit is a setting (its 429s: tests/abuse.rs).
    txt = open(cfg).read().replace("body_limit_bytes = 16384",
                                   "body_limit_bytes = 16384\nrate_per_second = 5")
    cfg2 = os.path.join(base, "rate.toml")
    with open(cfg2, "w") as f:
        f.write(txt)
    os.chmod(cfg2, 0o600)
    q = subprocess.Popen([WALLETD, "run", "--config", cfg2], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        _, err = q.communicate(timeout=5)
        report("http.rate_per_second is a setting", False, f"exit {q.returncode}: {err.strip()[:100]!r}")
    except subprocess.TimeoutExpired:
        q.terminate()
        q.communicate()
        report("http.rate_per_second is a setting", True, "accepted (the region started)")
    # Max connections, with `connections_max = 64` (the default, 4096, cannot be filled on a
    # loaded machine before the header-read time-out frees slots): 64 kept-alive connections
    # each served once, then new ones must be closed unanswered.
    cfg3 = os.path.join(base, "conns.toml")
    with open(cfg3, "w") as f:
        f.write(open(cfg).read().replace(
            "body_limit_bytes = 16384",
            "body_limit_bytes = 16384\nconnections_max = 64\nheader_read_timeout_ms = 60000"))
    os.chmod(cfg3, 0o600)
    log3 = open(os.path.join(d, "conns.log"), "w")
    q = start(cfg3, log3)
    try:
        if not wait_http(host, port, 10):
            report("max connections: beyond connections_max closed at once", False,
                   "the region did not start with connections_max = 64: "
                   + open(os.path.join(d, "conns.log")).read().strip()[:100])
        else:
            conns = []
            for _ in range(64):
                c = socket.create_connection((host, port))
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                got, _ = read_for(c, 5)
                conns.append(c)
            closed_unanswered = 0
            for _ in range(5):
                c = socket.create_connection((host, port))
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                got, closed = read_for(c, 5)
                closed_unanswered += int(closed and not got)
                c.close()
            report("max connections: beyond connections_max closed at once",
                   closed_unanswered == 5,
                   f"64 open; {closed_unanswered} of 5 more closed unanswered")
            for c in conns:
                c.close()
    finally:
        q.terminate()
        q.wait()
        log3.close()
    # A syntax error on the token's line must not echo the token.
    broken = os.path.join(base, "broken.toml")
    with open(broken, "w") as f:
        f.write(open(cfg).read().replace(f'tokens = ["{token}"]', f'tokens = ["{token}" oops]'))
    os.chmod(broken, 0o600)
    r = subprocess.run([WALLETD, "run", "--config", broken], capture_output=True, text=True,
                       timeout=10)
    report("a config syntax error does not echo the token", token not in r.stderr,
           f"exit {r.returncode}: {r.stderr.strip()[:110]!r}")
    logtext = open(os.path.join(d, "eu.log")).read()
    report("no token in the region's debug log", token not in logtext,
           f"{len(logtext)} bytes of log scanned")
    shutil.rmtree(d, ignore_errors=True)
    failed = [n for n, ok in results if not ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")


main()
