#!/usr/bin/env python3
"""Side-by-side benchmark: walletd against PostgreSQL 15 on the same machine, in one run.

Started by scripts/bench-vs.sh (which installs PostgreSQL and wrk if missing and builds a
release walletd). Standard library only. Every figure comes from a load generator that is not
ours: wrk drives walletd's HTTP API, pgbench drives PostgreSQL. Prints a table, writes the
results as JSON and an SVG bar chart (docs/bench-vs.svg by default).

Workloads (each on one hot account and on 1,000 accounts, 0.01 USD debits, durable commits):
  walletd 1 region     POST /v1/accounts/{a}/transactions (purchase), group commit on
  walletd 3 regions    the same, load on one region, the other two replicate and persist
  pg row lock          BEGIN; SELECT .. FOR UPDATE; UPDATE balance; INSERT ledger row; COMMIT
  pg offset CAS        insert (account, offset+1) with a unique key, retry on conflict
                       (the per-entity offset approach; the retry loop runs in plpgsql)
  pg naive sum         BEGIN; SELECT sum(amount) of the account's history; INSERT; COMMIT
then: latency of walletd at 8, 64 and 256 clients; the naive balance read at 10 and at
1,000,000 events per account beside walletd's balance read; and PostgreSQL row lock with the
client 100 ms (50 ms each way, through a delaying TCP proxy) away from the server, beside
walletd's local region.
"""

import argparse
import asyncio
import datetime
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PG_BIN = pathlib.Path("/usr/lib/postgresql/15/bin")

WRK_SCRIPT = r"""
local n = tonumber(os.getenv("BENCH_ACCOUNTS") or "1")
local token = os.getenv("BENCH_TOKEN") or ""
local path_kind = os.getenv("BENCH_KIND") or "post"
local fixed = os.getenv("BENCH_ACCOUNT")
local counter = 0
local body = '{"type":"purchase","amount":"0.01","currency":"USD"}'
local headers = {["Authorization"] = "Bearer " .. token, ["Content-Type"] = "application/json"}
request = function()
  counter = counter + 1
  local a = fixed or ("acct" .. (math.random(1, n) - 1))
  if path_kind == "get" then
    return wrk.format("GET", "/v1/accounts/" .. a .. "/balances", headers, nil)
  end
  return wrk.format("POST", "/v1/accounts/" .. a .. "/transactions", headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCHJSON {\"requests\":%d,\"duration_us\":%d,\"status_errors\":%d,\"socket_errors\":%d," ..
    "\"p50_us\":%d,\"p99_us\":%d,\"p999_us\":%d,\"max_us\":%d}\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""

PG_SETUP = """
CREATE TABLE accounts(id int PRIMARY KEY, balance numeric(20,2) NOT NULL);
INSERT INTO accounts SELECT g, 1000000000 FROM generate_series(0, 999) g;
CREATE TABLE ledger(id bigserial PRIMARY KEY, account int NOT NULL, amount numeric(20,2) NOT NULL);
CREATE INDEX ledger_account ON ledger(account);
CREATE TABLE entries(account int NOT NULL, seq bigint NOT NULL, amount numeric(20,2) NOT NULL,
                     balance numeric(20,2) NOT NULL, PRIMARY KEY (account, seq));
INSERT INTO entries SELECT g, 0, 1000000000, 1000000000 FROM generate_series(0, 999) g;
CREATE FUNCTION cas_debit(a int, amt numeric) RETURNS int LANGUAGE plpgsql AS $$
DECLARE s bigint; b numeric; n int; tries int := 0;
BEGIN
  LOOP
    tries := tries + 1;
    SELECT seq, balance INTO s, b FROM entries WHERE account = a ORDER BY seq DESC LIMIT 1;
    IF b < amt THEN RETURN -1; END IF;
    INSERT INTO entries VALUES (a, s + 1, -amt, b - amt) ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 1 THEN RETURN tries; END IF;
  END LOOP;
END $$;
CREATE TABLE naive(id bigserial PRIMARY KEY, account int NOT NULL, amount numeric(20,2) NOT NULL);
CREATE INDEX naive_account ON naive(account);
INSERT INTO naive(account, amount) SELECT g, 1000000000 FROM generate_series(0, 999) g;
CREATE TABLE history(account int NOT NULL, amount numeric(20,2) NOT NULL);
CREATE INDEX history_account ON history(account);
INSERT INTO history SELECT 10, 1 FROM generate_series(1, 10);
INSERT INTO history SELECT 1000000, 1 FROM generate_series(1, 1000000);
VACUUM ANALYZE;
"""

PG_SCRIPTS = {
    "rowlock": """\\set aid random(0, :naccounts - 1)
BEGIN;
SELECT balance FROM accounts WHERE id = :aid FOR UPDATE;
UPDATE accounts SET balance = balance - 0.01 WHERE id = :aid AND balance >= 0.01;
INSERT INTO ledger(account, amount) VALUES (:aid, -0.01);
COMMIT;
""",
    "cas": """\\set aid random(0, :naccounts - 1)
SELECT cas_debit(:aid, 0.01);
""",
    "naive": """\\set aid random(0, :naccounts - 1)
BEGIN;
SELECT sum(amount) FROM naive WHERE account = :aid;
INSERT INTO naive(account, amount) VALUES (:aid, -0.01);
COMMIT;
""",
    "read10": "SELECT sum(amount) FROM history WHERE account = 10;\n",
    "read1m": "SELECT sum(amount) FROM history WHERE account = 1000000;\n",
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """CPU time of every thread of a process so far (schedstat, ns)."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
    except OSError:
        pass
    return total / 1e9


def percentile(sorted_vals, p):
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, int(round(p / 100.0 * (len(sorted_vals) - 1))))
    return sorted_vals[k]


# ---------------------------------------------------------------- a delaying TCP proxy


async def _pipe(reader, writer, delay):
    """Copies reader to writer, each chunk `delay` seconds after it was read (order kept)."""
    loop = asyncio.get_running_loop()
    q = asyncio.Queue()

    async def sender():
        while True:
            due, data = await q.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(sender())
    try:
        while True:
            data = await reader.read(65536)
            q.put_nowait((loop.time() + delay, data))
            if not data:
                break
    except ConnectionError:
        q.put_nowait((loop.time(), b""))
    try:
        await task
    except ConnectionError:
        pass


def run_proxy(listen_port, target_port, delay):
    """A delaying TCP proxy: every chunk waits `delay` seconds in each direction."""

    async def client(creader, cwriter):
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(_pipe(creader, swriter, delay), _pipe(sreader, cwriter, delay))

    async def serve():
        server = await asyncio.start_server(client, "127.0.0.1", listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


class DelayProxy:
    """The proxy in its own process (`bench_vs.py --proxy LISTEN TARGET DELAY`)."""

    def __init__(self, target_port, delay):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--proxy", str(self.port), str(target_port), str(delay)]
        )
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the delaying proxy did not start")

    def close(self):
        self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------- PostgreSQL


class Postgres:
    def __init__(self, work, max_clients):
        self.dir = work / "pg"
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.sock = str(self.dir)
        as_pg = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            as_pg + [str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust",
                     "-U", "postgres", "--no-sync"],
            check=True, stdout=subprocess.DEVNULL,
        )
        opts = (
            f"-p {self.port} -k {self.sock} -c listen_addresses='127.0.0.1' "
            f"-c max_connections={max_clients + 20} -c shared_buffers=512MB "
            "-c fsync=on -c synchronous_commit=on -c full_page_writes=on "
            "-c max_wal_size=4GB -c checkpoint_timeout=30min"
        )
        subprocess.run(
            as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-o", opts,
                     "-l", str(self.dir / "log"), "-w", "start"],
            check=True, stdout=subprocess.DEVNULL,
        )
        self.as_pg = as_pg
        self.psql("CREATE DATABASE bench;", db="postgres")
        log("postgres: loading the schema and 1,000,010 history rows")
        self.psql(PG_SETUP)
        self.pid = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])

    def psql(self, sql, db="bench"):
        subprocess.run(
            ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", self.sock, "-p", str(self.port),
             "-U", "postgres", "-d", db],
            input=sql, text=True, check=True, stdout=subprocess.DEVNULL,
        )

    def cpu(self):
        """CPU seconds of the postmaster, its live backends, and its ended backends (whose time
        the kernel adds to the postmaster's cutime/cstime when it reaps them)."""
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for p in os.listdir("/proc"):
            if not p.isdigit():
                continue
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[1] is the ppid; fields[11..15] utime, stime, cutime, cstime.
            if int(p) == self.pid or int(fields[1]) == self.pid:
                total += sum(int(v) for v in fields[11:15])
        return total / tick

    def bench(self, work, script, accounts, clients, seconds, port=None, jobs=2):
        name = f"pgb-{script}-{accounts}-{clients}-{port or 0}"
        f = work / f"{name}.sql"
        f.write_text(PG_SCRIPTS[script])
        logdir = work / name
        logdir.mkdir()
        cpu0 = self.cpu()
        host = ["-h", "127.0.0.1", "-p", str(port)] if port else ["-h", self.sock, "-p", str(self.port)]
        out = subprocess.run(
            ["pgbench", "-n", "-M", "prepared", "-c", str(clients), "-j", str(jobs),
             "-T", str(seconds), "-D", f"naccounts={accounts}", "-f", str(f),
             "-l", "--log-prefix", str(logdir / "l"), "-U", "postgres"] + host + ["bench"],
            capture_output=True, text=True,
        )
        time.sleep(0.5)  # let the backends exit and be reaped
        cpu = self.cpu() - cpu0
        if out.returncode != 0:
            raise RuntimeError(f"pgbench {script}: {out.stderr.strip()[-400:]}")
        tps = None
        failed = 0
        for line in out.stdout.splitlines():
            if line.startswith("tps =") and tps is None:
                tps = float(line.split()[2])
            if "number of failed transactions" in line:
                failed = int(line.split(":")[1].split()[0])
        lats = []
        for lf in logdir.iterdir():
            for line in lf.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    lats.append(int(parts[2]))
        lats.sort()
        n = len(lats)
        return {
            "tx_per_s": tps or 0.0,
            "p50_ms": percentile(lats, 50) / 1000,
            "p99_ms": percentile(lats, 99) / 1000,
            "p999_ms": percentile(lats, 99.9) / 1000,
            "failed": failed,
            "cpu_us_per_tx": (cpu * 1e6 / n) if n else 0.0,
        }

    def stop(self):
        subprocess.run(
            self.as_pg + [str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                          "-w", "stop"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


# ---------------------------------------------------------------- walletd


class Walletd:
    def __init__(self, walletd, work, regions, storage=None):
        self.dir = work / ("wd-" + "-".join(regions) + (f"-{storage}" if storage else ""))
        subprocess.run(
            [walletd, "init", "--regions", ",".join(regions), "--dir", str(self.dir)],
            check=True, stdout=subprocess.DEVNULL,
        )
        cluster = json.loads((self.dir / "cluster.json").read_text())
        self.token = cluster["token"]
        self.http = [r["http"] for r in cluster["regions"]]
        self.procs = []
        for r in regions:
            cfg = self.dir / f"{r}.toml"
            text = cfg.read_text()
            # The bench is one client token at tens of thousands of requests per second:
            # lift the per-token rate limit (its default, 5,000/s, would be the figure).
            text = text.replace(
                "[http]\n", "[http]\nrate_per_second = 1000000\nrate_burst = 1000000\n", 1
            )
            if storage:
                text = text.replace("[storage]\n", f'[storage]\nbackend = "{storage}"\n', 1)
            cfg.write_text(text)
            logf = open(self.dir / f"{r}.log", "w")
            self.procs.append(
                subprocess.Popen([walletd, "run", "--config", str(cfg)], stdout=logf,
                                 stderr=subprocess.STDOUT)
            )
        for h in self.http:
            self.wait_ready(h)
        if len(regions) > 1:
            self.wait_connected()

    def _conn(self, base):
        host, port = base.split("//")[1].split(":")
        return http.client.HTTPConnection(host, int(port), timeout=10)

    def request(self, base, method, path, body=None):
        c = self._conn(base)
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data

    def wait_ready(self, base):
        for _ in range(300):
            try:
                s, _ = self.request(base, "GET", "/readyz")
                if s == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"walletd at {base} not ready")

    def wait_connected(self):
        for _ in range(300):
            ok = True
            for h in self.http:
                s, body = self.request(h, "GET", "/v1/status")
                st = json.loads(body) if s == 200 else {}
                members = st.get("members") or []
                if not members or not all(m.get("connected") for m in members):
                    ok = False
            if ok:
                return
            time.sleep(0.1)

    def fund(self, accounts, amount="1000000000.00"):
        c = self._conn(self.http[0])
        body = json.dumps({"type": "deposit", "amount": amount, "currency": "USD"})
        for a in range(accounts):
            c.request("POST", f"/v1/accounts/acct{a}/transactions", body=body,
                      headers={"Authorization": f"Bearer {self.token}",
                               "Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 201:
                raise RuntimeError(f"funding deposit: {r.status}")
        c.close()

    def cpu(self):
        return cpu_seconds(self.procs[0].pid)

    def stop(self):
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def wrk(work, base, token, accounts, clients, seconds, kind="post", account=None, cpu=None):
    script = work / "bench.lua"
    script.write_text(WRK_SCRIPT)
    env = dict(os.environ, BENCH_ACCOUNTS=str(accounts), BENCH_TOKEN=token, BENCH_KIND=kind)
    if account:
        env["BENCH_ACCOUNT"] = account
    cpu0 = cpu() if cpu else 0.0
    out = subprocess.run(
        ["wrk", "-t", "2", "-c", str(clients), "-d", f"{seconds}s", "--timeout", "10s",
         "-s", str(script), base],
        capture_output=True, text=True, env=env,
    )
    used = (cpu() - cpu0) if cpu else 0.0
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {out.stdout[-400:]} {out.stderr[-400:]}")
    r = json.loads(line[len("BENCHJSON "):])
    ok = r["requests"] - r["status_errors"]
    secs = r["duration_us"] / 1e6
    return {
        "tx_per_s": ok / secs,
        "p50_ms": r["p50_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "p999_ms": r["p999_us"] / 1000,
        "failed": r["status_errors"] + r["socket_errors"],
        "cpu_us_per_tx": (used * 1e6 / ok) if ok and cpu else 0.0,
    }


# ---------------------------------------------------------------- report


def svg_chart(rows, path):
    """A horizontal bar chart of tx/s per row, log scale (figures span 3 orders)."""
    import math

    rows = [r for r in rows if r["tx_per_s"] > 0]
    width, left, bar_h, gap = 900, 330, 18, 6
    height = 40 + len(rows) * (bar_h + gap) + 30
    top = max(r["tx_per_s"] for r in rows)
    lo = 10.0
    span = math.log10(top * 1.3) - math.log10(lo)

    def x(v):
        return left + (width - left - 80) * (math.log10(max(v, lo)) - math.log10(lo)) / span

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="20" font-size="14" font-weight="bold">'
        "durable debits per second, or balance reads where named (log scale), one run, one machine</text>",
    ]
    for i, r in enumerate(rows):
        y = 40 + i * (bar_h + gap)
        colour = "#2b7bb9" if r["system"].startswith("walletd") else "#999999"
        label = f'{r["system"]} · {r["workload"]}'
        out.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{label}</text>')
        out.append(
            f'<rect x="{left}" y="{y}" width="{x(r["tx_per_s"]) - left:.1f}" height="{bar_h}" '
            f'fill="{colour}"/>'
        )
        out.append(
            f'<text x="{x(r["tx_per_s"]) + 4:.1f}" y="{y + 13}">{r["tx_per_s"]:,.0f}</text>'
        )
    for v in (10, 100, 1000, 10000, 100000):
        if v <= top * 1.3:
            out.append(
                f'<text x="{x(v):.1f}" y="{height - 8}" text-anchor="middle" fill="#555">{v:,}</text>'
            )
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


PROFILE_CATEGORIES = [
    ("ed25519 signing (in the actor)", r"ed25519|curve25519|sha512"),
    ("storage commit (writer and sync threads: the log or redb)", r"redb::|wallet::storage|wallet::logstore|walletd-sync|walletd-writer"),
    ("JSON and decimal formatting", r"serde_json|rust_decimal"),
    ("wallet-core other than signing", r"wallet_core::"),
    ("HTTP (hyper, axum, tower, rate limit)", r"hyper::|axum|tower|wallet::http"),
    ("tokio scheduling and channels", r"tokio::"),
]


def profile(args, work):
    """perf (cpu-clock, DWARF call graphs) of one walletd region under wrk: a flame graph
    and the share of walletd's CPU per category."""
    import re

    wd = Walletd(args.walletd, work, ["eu"], storage=args.storage)
    data = work / "perf.data"
    try:
        wd.fund(1000)
        perf = subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "300", "--call-graph", "dwarf,16384",
             "-p", str(wd.procs[0].pid), "-o", str(data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1)
        r = wrk(work, wd.http[0], wd.token, 1000, args.clients, args.seconds, cpu=wd.cpu)
        perf.send_signal(signal.SIGINT)
        perf.wait()
    finally:
        wd.stop()
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True)
    folded = subprocess.run(["inferno-collapse-perf"], input=script.stdout, capture_output=True).stdout
    svg = subprocess.run(
        ["inferno-flamegraph", "--title",
         f"walletd, one region, wrk {args.clients} clients, 1,000 accounts (perf cpu-clock)"],
        input=folded, capture_output=True,
    ).stdout
    pathlib.Path(args.flamegraph).write_bytes(svg)
    cats, total, actor, actor_sign = {}, 0, 0, 0
    for line in folded.decode().splitlines():
        stack, n = line.rsplit(" ", 1)
        n = int(n)
        total += n
        name = next((c for c, pat in PROFILE_CATEGORIES if re.search(pat, stack)), "other (kernel, libc, allocator)")
        cats[name] = cats.get(name, 0) + n
        if "wallet::actor::run" in stack:
            actor += n
            if re.search(PROFILE_CATEGORIES[0][1], stack):
                actor_sign += n
    print(f"profile: {r['tx_per_s']:,.0f} tx/s, {r['cpu_us_per_tx']:.0f} us of walletd CPU per tx, "
          f"{total / 1e9:.1f} s of CPU sampled; flame graph: {args.flamegraph}")
    for name, n in sorted(cats.items(), key=lambda kv: -kv[1]):
        print(f"  {n / total * 100:5.1f}%  {name}")
    if actor:
        print(f"  the actor task: {actor / total * 100:.1f}% of walletd's CPU, of which signing "
              f"{actor_sign / actor * 100:.0f}%")


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--proxy":
        run_proxy(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    ap.add_argument("--walletd", default=str(target / "release/walletd"))
    ap.add_argument("--storage", default=None,
                    help="walletd's [storage] backend (log or redb; default: walletd's default)")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--svg", default=str(ROOT / "docs/bench-vs.svg"))
    ap.add_argument("--json", default=str(ROOT / "target/bench-vs.json"))
    ap.add_argument("--skip-remote", action="store_true", help="skip the 100 ms-away PostgreSQL runs")
    ap.add_argument("--profile", action="store_true",
                    help="only profile walletd under wrk (perf + inferno) and write a flame graph")
    ap.add_argument("--flamegraph", default=str(ROOT / "docs/flamegraph-walletd.svg"))
    args = ap.parse_args()
    S, C = args.seconds, args.clients
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-vs-"))
    os.chmod(work, 0o755)
    if args.profile:
        profile(args, work)
        shutil.rmtree(work, ignore_errors=True)
        return
    rows = []
    started = time.time()

    def add(system, workload, accounts, clients, r):
        row = dict(system=system, workload=workload, accounts=accounts, clients=clients, **r)
        rows.append(row)
        log(
            f"{system:<22} {workload:<26} {r['tx_per_s']:>10,.0f} tx/s  p50 {r['p50_ms']:7.2f} ms"
            f"  p99 {r['p99_ms']:8.2f} ms  failed {r['failed']}"
        )

    pg = Postgres(work, max(C, 256))
    try:
        for accounts in (1, 1000):
            wl = f"{accounts} account" + ("s" if accounts > 1 else "")
            for script, label in (("rowlock", "pg row lock"), ("cas", "pg offset CAS"),
                                  ("naive", "pg naive sum")):
                add(label, wl, accounts, C, pg.bench(work, script, accounts, C, S))
        for script, label in (("read10", "balance read, 10 events"),
                              ("read1m", "balance read, 1,000,000 events")):
            add("pg naive sum", label, 1, 8, pg.bench(work, script, 1, 8, S))
        if not args.skip_remote:
            # Connections through the proxy take several round trips each to open, so
            # this run is at least 20 s, with one pgbench thread per client: a pgbench
            # thread opens its clients' connections one after another and serves none of
            # them meanwhile, which with 2 threads held every transaction for ~13 s.
            proxy = DelayProxy(pg.port, 0.050)
            try:
                add("pg row lock, 100 ms away", "1000 accounts", 1000, C,
                    pg.bench(work, "rowlock", 1000, C, max(S, 20), port=proxy.port, jobs=C))
            finally:
                proxy.close()
    finally:
        pg.stop()

    for regions in (["eu"], ["eu", "us", "ap"]):
        system = "walletd 1 region" if len(regions) == 1 else "walletd 3 regions"
        wd = Walletd(args.walletd, work, regions, storage=args.storage)
        try:
            wd.fund(1000)
            for accounts in (1, 1000):
                wl = f"{accounts} account" + ("s" if accounts > 1 else "")
                add(system, wl, accounts, C, wrk(work, wd.http[0], wd.token, accounts, C, S, cpu=wd.cpu))
                if accounts == 1:
                    hot = rows[-1]["tx_per_s"] * S
            if len(regions) == 1:
                for clients in (8, 256):
                    add(system, f"1000 accounts, {clients} clients", 1000, clients,
                        wrk(work, wd.http[0], wd.token, 1000, clients, S, cpu=wd.cpu))
                # acct0 now holds every debit of the hot-account run (about `hot`); acct999
                # a deposit and a few debits of the 1,000-account runs.
                add(system, "balance read, few events", 1, 8,
                    wrk(work, wd.http[0], wd.token, 1, 8, S, kind="get", account="acct999"))
                add(system, f"balance read, ~{hot:,.0f} events", 1, 8,
                    wrk(work, wd.http[0], wd.token, 1, 8, S, kind="get", account="acct0"))
        finally:
            wd.stop()
    # The other storage backend on the main workload, for the storage choice
    # (docs/operations.md "Storage and durability").
    other = "log" if args.storage == "redb" else "redb"
    wd = Walletd(args.walletd, work, ["eu"], storage=other)
    try:
        wd.fund(1000)
        add(f"walletd 1 region, {other}", "1000 accounts", 1000, C,
            wrk(work, wd.http[0], wd.token, 1000, C, S, cpu=wd.cpu))
    finally:
        wd.stop()

    def find(system, workload):
        return next((r for r in rows if r["system"] == system and r["workload"] == workload), None)

    print()
    print(f"bench-vs: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"{S} s per run, {C} clients unless named, {time.time() - started:.0f} s in all")
    print()
    print("| system | workload | clients | tx/s | p50 ms | p99 ms | p99.9 ms | failed | CPU µs/tx | vs pg row lock |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = find("pg row lock", r["workload"])
        same = base and base["clients"] == r["clients"] and base["tx_per_s"]
        ratio = f'{r["tx_per_s"] / base["tx_per_s"]:.2f}x' if same else ""
        print(
            f'| {r["system"]} | {r["workload"]} | {r["clients"]} | {r["tx_per_s"]:,.0f} | '
            f'{r["p50_ms"]:.2f} | {r["p99_ms"]:.2f} | {r["p999_ms"]:.2f} | {r["failed"]} | '
            f'{r["cpu_us_per_tx"]:.0f} | {ratio} |'
        )
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    svg_chart(rows, pathlib.Path(args.svg))
    print(f"\nresults: {args.json}; chart: {args.svg}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
