#!/usr/bin/env python3
"""Draws the soak's CSVs (walletd-bench --soak) as one SVG: RSS, the hot store's size (the
data dir's files) and the archive's size (data_dir/archive) per region against time, one row
of panels per run, and prints a Markdown table of min/max of each in the first and last 3
minutes, the accepted rate sustained and the load average. Standard library only.

    scripts/soak_plot.py docs/soak.svg soak-1.csv soak-3.csv
"""
import csv
import sys

W, H, PAD = 460, 220, 50
COLORS = {"eu": "#1f77b4", "us": "#d62728", "ap": "#2ca02c"}


def load(path):
    rows = list(csv.DictReader(open(path)))
    by = {}
    for r in rows:
        by.setdefault(r["region"], []).append(r)
    return by


def panel(x0, y0, title, series, unit, scale):
    """series: {region: [(t, v)]}; returns SVG text."""
    out = []
    tmax = max((t for s in series.values() for t, _ in s), default=1) or 1
    vmax = max((v for s in series.values() for _, v in s), default=1) or 1
    vmax *= 1.1
    out.append(f'<text x="{x0 + W / 2}" y="{y0 - 8}" text-anchor="middle" font-size="13">{title}</text>')
    out.append(f'<rect x="{x0}" y="{y0}" width="{W}" height="{H}" fill="none" stroke="#888"/>')
    for k in range(5):
        v = vmax * k / 4
        y = y0 + H - H * k / 4
        out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + W}" y2="{y}" stroke="#eee"/>')
        out.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end" font-size="10">{v / scale:.0f}</text>')
    for k in range(0, int(tmax) + 1, 120):
        x = x0 + W * k / tmax
        out.append(f'<text x="{x}" y="{y0 + H + 14}" text-anchor="middle" font-size="10">{k}</text>')
    out.append(f'<text x="{x0 + W / 2}" y="{y0 + H + 28}" text-anchor="middle" font-size="10">seconds</text>')
    out.append(f'<text x="{x0 - 38}" y="{y0 + H / 2}" font-size="10" transform="rotate(-90 {x0 - 38} {y0 + H / 2})" text-anchor="middle">{unit}</text>')
    for i, (region, pts) in enumerate(sorted(series.items())):
        path = " ".join(f"{x0 + W * t / tmax:.1f},{y0 + H - H * v / vmax:.1f}" for t, v in pts)
        c = COLORS.get(region, "#000")
        out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.5"/>')
        out.append(f'<text x="{x0 + W - 40}" y="{y0 + 14 + 12 * i}" font-size="10" fill="{c}">{region}</text>')
    return "\n".join(out)


def table(name, by):
    print(f"\n{name}\n")
    print("| region | RSS MiB first 3 min | RSS MiB last 3 min | store MiB first 3 min | store MiB last 3 min | archive MiB first 3 min | archive MiB last 3 min | accepted (rate) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|")
    for region, rows in sorted(by.items()):
        t = [int(r["t_s"]) for r in rows]
        end = max(t)
        first = [r for r in rows if int(r["t_s"]) <= 180]
        last = [r for r in rows if int(r["t_s"]) >= end - 180]
        mib = lambda rs, k, d: (min(int(r.get(k) or 0) for r in rs) / d, max(int(r.get(k) or 0) for r in rs) / d)
        span = lambda rs, k, d: "%.0f–%.0f" % mib(rs, k, d)
        loads = [float(r["load1"]) for r in rows if r["load1"]]
        accepted = int(rows[-1]["accepted"])
        rate = accepted / end if end else 0
        print(f"| {region} | {span(first, 'rss_kib', 1024)} | {span(last, 'rss_kib', 1024)} | {span(first, 'data_bytes', 1 << 20)} | {span(last, 'data_bytes', 1 << 20)} | {span(first, 'archive_bytes', 1 << 20)} | {span(last, 'archive_bytes', 1 << 20)} | {accepted:,} ({rate:,.0f}/s) | {min(loads):.1f}–{max(loads):.1f} |")


def main():
    out, files = sys.argv[1], sys.argv[2:]
    parts = []
    for j, f in enumerate(files):
        by = load(f)
        n = len(by)
        y0 = 40 + j * (H + 70)
        rss = {r: [(int(x["t_s"]), int(x["rss_kib"]) * 1024) for x in rows] for r, rows in by.items()}
        size = {r: [(int(x["t_s"]), int(x["data_bytes"])) for x in rows] for r, rows in by.items()}
        arc = {r: [(int(x["t_s"]), int(x.get("archive_bytes") or 0)) for x in rows] for r, rows in by.items()}
        label = f"{n} region(s), {f.rsplit('/', 1)[-1]}"
        parts.append(panel(PAD + 20, y0, f"RSS, {label}", rss, "MiB", 1 << 20))
        parts.append(panel(PAD + 20 + W + 90, y0, f"hot store size, {label}", size, "MiB", 1 << 20))
        parts.append(panel(PAD + 20 + 2 * (W + 90), y0, f"archive size, {label}", arc, "MiB", 1 << 20))
        table(f"{f}: {n} region(s)", by)
    height = 40 + len(files) * (H + 70)
    width = 3 * W + 270
    svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n' + "\n".join(parts) + "\n</svg>\n"
    open(out, "w").write(svg)


if __name__ == "__main__":
    main()
