//! Human summary and the self-contained HTML report (inline SVG, no scripts, no external
//! files).

use std::fmt::Write as _;

use wallet_core::CompKind;

use crate::run::RunResult;

/// Formats a byte count.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{}.{:02} GiB", b >> 30, ((b % (1 << 30)) * 100) >> 30)
    } else if b >= 1 << 20 {
        format!("{}.{:02} MiB", b >> 20, ((b % (1 << 20)) * 100) >> 20)
    } else if b >= 1 << 10 {
        format!("{}.{:02} KiB", b >> 10, ((b % (1 << 10)) * 100) >> 10)
    } else {
        format!("{b} B")
    }
}

fn ms(t: u64) -> String {
    if t >= 1_000 {
        format!("{}.{:01} s", t / 1000, (t % 1000) / 100)
    } else {
        format!("{t} ms")
    }
}

/// One line over a sweep (issue 13): how many seeds compacted during their run, the
/// compactions, restarts from a snapshot and bootstraps from a peer's snapshot, and the
/// bytes per account and events in memory before and after each seed's last compaction.
pub fn compaction_summary(results: &[RunResult]) -> String {
    let cs: Vec<_> = results.iter().map(|r| &r.metrics.compaction).collect();
    let seeds = cs.iter().filter(|c| c.compactions > 0).count();
    let sum =
        |f: &dyn Fn(&crate::run::CompactionMetrics) -> u64| cs.iter().map(|c| f(c)).sum::<u64>();
    let lasts: Vec<_> = cs.iter().filter_map(|c| c.last.as_ref()).collect();
    let mut per_account: Vec<u64> = lasts.iter().map(|l| l.bytes_per_account).collect();
    per_account.sort_unstable();
    let (before, after): (u64, u64) = lasts.iter().fold((0, 0), |(b, a), l| {
        (b + l.events_in_memory_before, a + l.events_in_memory_after)
    });
    let mut s = format!(
        "compaction: {seeds} of {} seeds compacted during the run ({} compactions, {} events dropped from memory), {} restarts from a snapshot, {} snapshots installed from a peer ({} sent)",
        results.len(),
        sum(&|c| c.compactions),
        sum(&|c| c.compacted_events),
        sum(&|c| c.restarts_from_snapshot),
        sum(&|c| c.snapshots_installed),
        sum(&|c| c.snapshots_sent),
    );
    if let (Some(lo), Some(hi)) = (per_account.first(), per_account.last()) {
        let _ = write!(
            s,
            "; at each seed's last compaction: bytes per account median {} (min {lo}, max {hi}), events in memory {before} -> {after} (sum)",
            per_account[per_account.len() / 2]
        );
    }
    s.push('\n');
    let lost = |peer: bool| {
        results
            .iter()
            .filter(|r| r.metrics.lost_disks > 0 && r.metrics.ack_peer == peer)
            .count()
    };
    let _ = writeln!(
        s,
        "lost disks: {} of {} seeds lost a disk ({} with ack = local, {} with ack = peer; {} lost disks)",
        lost(false) + lost(true),
        results.len(),
        lost(false),
        lost(true),
        results.iter().map(|r| r.metrics.lost_disks).sum::<u64>(),
    );
    let seeds = |f: &dyn Fn(&crate::run::Metrics) -> u64| {
        let hit: Vec<u64> = results.iter().map(|r| f(&r.metrics)).collect();
        (
            hit.iter().filter(|x| **x > 0).count(),
            hit.iter().sum::<u64>(),
        )
    };
    let (excused, excused_n) = seeds(&|m| m.acks_excused);
    let (learned, learned_n) = seeds(&|m| m.cuts_from_snapshot);
    let _ = writeln!(
        s,
        "retires: {excused} seeds cut a retire without an acknowledger retired after it ({excused_n} acknowledgements not waited for, over the regions); {learned} seeds had a retired region learn its cut from a snapshot it refused ({learned_n} times)",
    );
    s
}

/// The human summary of one run.
pub fn summary(r: &RunResult) -> String {
    let m = &r.metrics;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed {} · policy {} · regions {} · workload {:016x}",
        r.seed,
        r.policy,
        r.regions.join(","),
        r.workload_digest
    );
    let _ = writeln!(
        s,
        "  transactions {} ({} submissions: {} retries, {} to a second region, {} same key with another body, {} retried at a third region)",
        m.transactions,
        m.submissions,
        m.retries,
        m.second_region,
        m.conflicting_bodies,
        m.conflict_retries
    );
    let _ = writeln!(
        s,
        "  accepted {}  refused {}  unacked {}  (lost before durable: {})",
        m.accepted, m.refused, m.unacked, m.lost_before_durable
    );
    let _ = writeln!(
        s,
        "  faults: partitions {}  crashes {} ({} after a pull, {} lost the disk; ack = {})  messages {} (lost {})  replicated {} ({} bytes)  events delivered {} ({} already held)",
        m.partitions,
        m.crashes,
        m.crashes_after_pull,
        m.lost_disks,
        if m.ack_peer { "peer" } else { "local" },
        m.messages,
        m.messages_lost,
        human_bytes(m.bytes_replicated),
        m.bytes_replicated,
        m.events_delivered,
        m.events_duplicate
    );
    // Per currency, the ones with something to show.
    let per = |f: &dyn Fn(&crate::analysis::CurrencyFigures) -> Option<String>| {
        let list: Vec<String> = m
            .currencies
            .iter()
            .filter_map(|(c, x)| f(x).map(|v| format!("{v} {c}")))
            .collect();
        if list.is_empty() {
            "none".to_string()
        } else {
            list.join(", ")
        }
    };
    let _ = writeln!(
        s,
        "  settled: overdrafts {}  fees {} ({})  reversals {}  duplicate reversals {}  conflicts {}  debt {} ({} balances)",
        m.overdrafts,
        m.fees,
        per(&|x| (x.fees > 0).then(|| x.fee_total.clone())),
        m.reversals,
        m.duplicate_reversals,
        m.conflicts,
        per(&|x| (x.debt_accounts > 0).then(|| x.debt.clone())),
        m.debt_accounts
    );
    let fc = &m.fee_cases;
    let fl = &m.floor_debits;
    let _ = writeln!(
        s,
        "  fees at a tie {}  raised to the minimum {}  lowered to the cap {}  overdrafts within the grace {}  · floor debits {} (sized {}, events {}: settled at the floor {}, below {}, above {})",
        fc.ties,
        fc.at_minimum,
        fc.at_cap,
        fc.within_grace,
        fl.requests,
        fl.sized,
        fl.events,
        fl.settled_at_floor,
        fl.settled_below,
        fl.settled_above
    );
    if !r.membership_changes.is_empty() {
        let list: Vec<String> = r
            .membership_changes
            .iter()
            .map(|c| {
                let cut = c
                    .cut
                    .as_ref()
                    .map(|k| format!(", cut {k}"))
                    .unwrap_or_default();
                format!(
                    "{} ms {} ({}, {}{cut})",
                    c.at_ms, c.change, c.source, c.outcome
                )
            })
            .collect();
        let _ = writeln!(s, "  membership changes: {}", list.join("; "));
    }
    if !r.policy_changes.is_empty() {
        let list: Vec<String> = r
            .policy_changes
            .iter()
            .map(|c| format!("{} ms {} {} ({})", c.at_ms, c.region, c.policy, c.outcome))
            .collect();
        let _ = writeln!(
            s,
            "  policy changes: {} · versions settled {} · compensations under a later version {}",
            list.join("; "),
            m.policy_versions,
            m.compensations_after_change
        );
    }
    let _ = writeln!(
        s,
        "  settle lag p50 {}  p99 {}  max {}  · converged {} after the final heal · simulated {}",
        ms(m.settle_lag_p50_ms),
        ms(m.settle_lag_p99_ms),
        ms(m.settle_lag_max_ms),
        m.quiesce_ms.map(ms).unwrap_or_else(|| "NEVER".into()),
        ms(m.simulated_ms)
    );
    let a = &m.anti_entropy;
    let c = &m.connections;
    let _ = writeln!(
        s,
        "  anti-entropy: pulls {} (on connect {}, on heartbeat {}, periodic {}, chained or next {})  answered {}  served {}  cleared on disconnect {}  given up {}  timed out {}  back-offs {}",
        a.sent,
        a.on_connect,
        a.on_heartbeat,
        a.periodic,
        a.sent.saturating_sub(a.on_connect + a.on_heartbeat + a.periodic + a.given_up),
        a.answered,
        a.served,
        a.cleared_on_disconnect,
        a.given_up,
        a.timed_out,
        a.backoffs
    );
    let _ = writeln!(
        s,
        "  connections: {} links cut  {} disconnects noticed  {} connects",
        c.cuts, c.disconnects, c.connects
    );
    let rep = &r.counters.reports;
    if rep.iter().any(|c| *c > 0) {
        let list: Vec<String> = wallet_core::Report::KINDS
            .iter()
            .zip(rep)
            .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
            .collect();
        let _ = writeln!(s, "  replica reports: {}", list.join("  "));
    }
    if m.restart_watermark_regressions > 0 || m.restart_feed_entries_hidden > 0 {
        let _ = writeln!(
            s,
            "  restarts: {} came back with a lower watermark than before the crash; {} compensations shown before a crash were missing right after the restart (derived again later)",
            m.restart_watermark_regressions, m.restart_feed_entries_hidden
        );
    }
    let c = &m.compaction;
    if c.compactions > 0 || c.restarts_from_snapshot > 0 || c.snapshots_installed > 0 {
        let last = c.last.as_ref().map_or(String::new(), |l| {
            format!(
                "; the last: {} accounts in a {} byte snapshot = {} bytes per account, events in memory {} -> {}",
                l.accounts,
                l.snapshot_bytes,
                l.bytes_per_account,
                l.events_in_memory_before,
                l.events_in_memory_after
            )
        });
        let _ = writeln!(
            s,
            "  compaction (every {} events in memory): {} compactions dropped {} events, {} restarts from a snapshot, {} snapshots installed from a peer ({} sent){last}",
            c.compact_every,
            c.compactions,
            c.compacted_events,
            c.restarts_from_snapshot,
            c.snapshots_installed,
            c.snapshots_sent
        );
    }
    let _ = writeln!(
        s,
        "  wall {:.3} s (checks {:.3} s) · {} simulated transactions per wall second",
        r.wall.as_secs_f64(),
        r.check_wall.as_secs_f64(),
        r.tx_per_wall_second()
    );
    let mark = |b: bool| if b { "ok" } else { "FAILED" };
    let list: Vec<String> = r
        .check
        .invariants
        .named()
        .iter()
        .map(|(n, ok)| format!("{n} {}", mark(*ok)))
        .collect();
    let _ = writeln!(s, "  invariants: {}", list.join(" · "));
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

struct Frame {
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
    t0: f64,
    t1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn x(&self, t: u64) -> f64 {
        let span = (self.t1 - self.t0).max(1.0);
        self.left + (t as f64 - self.t0) / span * (self.w - self.left - self.right)
    }
    fn y(&self, v: f64) -> f64 {
        let span = (self.y1 - self.y0).max(1.0);
        self.h - self.bottom - (v - self.y0) / span * (self.h - self.top - self.bottom)
    }
}

fn nice_step(span: f64, ticks: f64) -> f64 {
    let raw = (span / ticks).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let s = if n < 1.5 {
        1.0
    } else if n < 3.5 {
        2.0
    } else if n < 7.5 {
        5.0
    } else {
        10.0
    };
    s * mag
}

fn axes(out: &mut String, f: &Frame, y_label: &str, y_fmt: &dyn Fn(f64) -> String) {
    let step_t = nice_step((f.t1 - f.t0) / 1000.0, 8.0) * 1000.0;
    let mut t = (f.t0 / step_t).ceil() * step_t;
    while t <= f.t1 {
        let x = f.x(t as u64);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#555">{}s</text>"##,
            f.top,
            f.h - f.bottom,
            f.h - f.bottom + 14.0,
            t / 1000.0
        );
        t += step_t;
    }
    let step_y = nice_step(f.y1 - f.y0, 6.0);
    let mut v = (f.y0 / step_y).ceil() * step_y;
    while v <= f.y1 {
        let y = f.y(v);
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            f.left,
            f.w - f.right,
            f.left - 6.0,
            y + 4.0,
            y_fmt(v)
        );
        v += step_y;
    }
    let _ = write!(
        out,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#999"/><text x="14" y="{:.1}" font-size="12" fill="#333" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text><text x="{:.1}" y="{:.1}" font-size="12" fill="#333" text-anchor="middle">simulated time</text>"##,
        f.left,
        f.top,
        f.w - f.left - f.right,
        f.h - f.top - f.bottom,
        (f.h - f.bottom + f.top) / 2.0,
        (f.h - f.bottom + f.top) / 2.0,
        esc(y_label),
        (f.left + f.w - f.right) / 2.0,
        f.h - 4.0
    );
}

fn shade_partitions(out: &mut String, f: &Frame, r: &RunResult, labels: bool) {
    let Some(s) = &r.series else { return };
    for (a, b, label) in &s.partitions {
        let (x0, x1) = (f.x(*a), f.x(*b));
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#f4b183" fill-opacity="0.25"><title>partition {} from {} to {}</title></rect>"##,
            f.top,
            (x1 - x0).max(1.0),
            f.h - f.top - f.bottom,
            esc(label),
            ms(*a),
            ms(*b)
        );
        if labels {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" font-size="10" fill="#a0522d">{}</text>"##,
                x0 + 2.0,
                f.top + 11.0,
                esc(label)
            );
        }
    }
    for (region, a, b) in &s.downtime {
        let (x0, x1) = (f.x(*a), f.x(*b));
        let y = f.h - f.bottom - 6.0 - (*region as f64) * 5.0;
        let name = r.regions.get(*region).map(String::as_str).unwrap_or("?");
        let _ = write!(
            out,
            r##"<rect x="{x0:.1}" y="{y:.1}" width="{:.1}" height="4" fill="{}"><title>{} down from {} to {}</title></rect>"##,
            (x1 - x0).max(2.0),
            COLORS[region % COLORS.len()],
            esc(name),
            ms(*a),
            ms(*b)
        );
    }
}

fn balance_chart(r: &RunResult) -> String {
    let Some(s) = &r.series else {
        return String::new();
    };
    let t1 = r.metrics.simulated_ms.max(1) as f64;
    let mut lo = 0i64;
    let mut hi = 100i64;
    for (_, row) in &s.balances {
        for (p, st) in row.iter().flatten() {
            lo = lo.min(*p).min(*st);
            hi = hi.max(*p).max(*st);
        }
    }
    let pad = ((hi - lo) / 20).max(100);
    let f = Frame {
        w: 1100.0,
        h: 460.0,
        left: 80.0,
        right: 20.0,
        top: 20.0,
        bottom: 40.0,
        t0: 0.0,
        t1,
        y0: (lo - pad) as f64,
        y1: (hi + pad) as f64,
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif">"##,
        f.w, f.h
    );
    axes(&mut out, &f, "balance (USD)", &|v| {
        format!("{:.0}", (v / 100.0).round() + 0.0)
    });
    shade_partitions(&mut out, &f, r, true);
    let zero = f.y(0.0);
    let _ = write!(
        out,
        r##"<line x1="{:.1}" y1="{zero:.1}" x2="{:.1}" y2="{zero:.1}" stroke="#000" stroke-width="1" stroke-dasharray="2,2"/>"##,
        f.left,
        f.w - f.right
    );
    if s.floor_cents != 0 {
        let y = f.y(s.floor_cents as f64);
        let _ = write!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#c5221f" stroke-width="1" stroke-dasharray="4,3"><title>floor {}.{:02}</title></line>"##,
            f.left,
            f.w - f.right,
            s.floor_cents / 100,
            (s.floor_cents % 100).abs()
        );
    }
    // Overdrafts: where a region's provisional balance first drops below the floor (events
    // accepted concurrently elsewhere have arrived), one red ring per dip.
    for (i, name) in r.regions.iter().enumerate() {
        let mut below = false;
        for (t, row) in &s.balances {
            match row.get(i).copied().flatten() {
                Some((p, _)) if p < s.floor_cents => {
                    if !below {
                        let _ = write!(
                            out,
                            r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="none" stroke="#c5221f" stroke-width="2"><title>overdraft: {} provisional {}.{:02} USD at {}</title></circle>"##,
                            f.x(*t),
                            f.y(p as f64),
                            esc(name),
                            p / 100,
                            (p % 100).abs(),
                            ms(*t)
                        );
                    }
                    below = true;
                }
                _ => below = false,
            }
        }
    }
    for (i, name) in r.regions.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (which, dash, width) in [(0usize, "", 1.4), (1usize, "6,3", 2.2)] {
            let mut seg = String::new();
            let flush = |seg: &mut String, out: &mut String| {
                if !seg.is_empty() {
                    let _ = write!(
                        out,
                        r##"<polyline fill="none" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}" stroke-opacity="{}" points="{}"><title>{} {}</title></polyline>"##,
                        if which == 0 { "0.55" } else { "0.95" },
                        seg.trim_end(),
                        esc(name),
                        if which == 0 { "provisional" } else { "settled" }
                    );
                    seg.clear();
                }
            };
            for (t, row) in &s.balances {
                match row.get(i).copied().flatten() {
                    Some((p, st)) => {
                        let v = if which == 0 { p } else { st };
                        let _ = write!(seg, "{:.1},{:.1} ", f.x(*t), f.y(v as f64));
                    }
                    None => flush(&mut seg, &mut out),
                }
            }
            flush(&mut seg, &mut out);
        }
    }
    // Compensations: one marker per compensation (at its first emission anywhere).
    let mut seen = std::collections::BTreeSet::new();
    for (t, region, kind, cents, id) in &s.comps {
        if !seen.insert(id.clone()) {
            continue;
        }
        let x = f.x(*t);
        let (color, label) = match kind {
            CompKind::OverdraftFee => ("#e67e00", "fee"),
            CompKind::Reversal => ("#7b2cbf", "reversal"),
            CompKind::IdempotencyConflict => ("#555", "conflict"),
        };
        let y = f.top + 18.0;
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}" stroke-opacity="0.35"/><path d="M{:.1},{:.1} l5,-8 l-10,0 z" fill="{color}"><title>{} {} {}.{:02} USD, first settled at {} at {}</title></path>"##,
            f.h - f.bottom,
            x,
            y,
            label,
            esc(id),
            cents.abs() / 100,
            cents.abs() % 100,
            esc(r.regions.get(*region).map(String::as_str).unwrap_or("?")),
            ms(*t)
        );
    }
    out.push_str("</svg>");
    out
}

fn lag_chart(r: &RunResult) -> String {
    let Some(s) = &r.series else {
        return String::new();
    };
    let t1 = r.metrics.simulated_ms.max(1);
    const BUCKETS: u64 = 240;
    let width = (t1 / BUCKETS).max(1);
    let mut buckets: Vec<Vec<u64>> = vec![Vec::new(); BUCKETS as usize + 1];
    for (t, lag) in &s.lags {
        let b = ((t / width) as usize).min(BUCKETS as usize);
        buckets[b].push(*lag);
    }
    let mut hi = 1000u64;
    for b in &buckets {
        if let Some(m) = b.iter().max() {
            hi = hi.max(*m);
        }
    }
    let f = Frame {
        w: 1100.0,
        h: 300.0,
        left: 80.0,
        right: 20.0,
        top: 20.0,
        bottom: 40.0,
        t0: 0.0,
        t1: t1 as f64,
        y0: 0.0,
        y1: hi as f64 * 1.05,
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif">"##,
        f.w, f.h
    );
    axes(&mut out, &f, "settlement lag (s)", &|v| {
        format!("{:.1}", v / 1000.0)
    });
    shade_partitions(&mut out, &f, r, false);
    for (pct, color, wdt) in [(100usize, "#d62728", 1.2), (50usize, "#1f77b4", 2.0)] {
        let mut pts = String::new();
        for (i, b) in buckets.iter_mut().enumerate() {
            if b.is_empty() {
                continue;
            }
            b.sort_unstable();
            let v = b[(b.len() - 1) * pct / 100];
            let t = i as u64 * width + width / 2;
            let _ = write!(pts, "{:.1},{:.1} ", f.x(t), f.y(v as f64));
        }
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{color}" stroke-width="{wdt}" points="{}"><title>{}</title></polyline>"##,
            pts.trim_end(),
            if pct == 50 { "median" } else { "maximum" }
        );
    }
    out.push_str("</svg>");
    out
}

/// The HTML report: the first result's charts, and a comparison table when there are more.
pub fn html(results: &[RunResult], command: &str) -> String {
    let mut h = String::new();
    let Some(r) = results.first() else {
        return h;
    };
    let account = r
        .series
        .as_ref()
        .and_then(|s| s.account.as_ref())
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let _ = write!(
        h,
        r##"<!doctype html><html><head><meta charset="utf-8"><title>wallet-sim seed {}</title><style>
body{{font-family:sans-serif;margin:24px;color:#222;max-width:1160px}}
h1{{font-size:22px;margin-bottom:4px}} h2{{font-size:17px;margin-top:28px}}
table{{border-collapse:collapse;font-size:13px}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#f3f3f3}} td.l,th.l{{text-align:left}} .ok{{color:#137333;font-weight:bold}} .bad{{color:#c5221f;font-weight:bold}}
code{{background:#f3f3f3;padding:1px 4px}} .legend span{{margin-right:16px;font-size:13px}}
</style></head><body>"##,
        r.seed
    );
    let _ = write!(
        h,
        "<h1>wallet-sim report · seed {} · policy {}</h1><p>Regions {} · <code>{}</code></p>",
        r.seed,
        esc(&r.policy),
        esc(&r.regions.join(", ")),
        esc(command)
    );
    h.push_str("<h2>Invariants (SPEC §9)</h2><table><tr>");
    let items = r.check.invariants.named();
    for (n, _) in items {
        let _ = write!(h, "<th>{n}</th>");
    }
    h.push_str("</tr><tr>");
    for (_, ok) in items {
        let _ = write!(
            h,
            "<td class=\"{}\">{}</td>",
            if ok { "ok" } else { "bad" },
            if ok { "holds" } else { "FAILED" }
        );
    }
    h.push_str("</tr></table>");
    for (n, d) in &r.check.failures {
        let _ = write!(h, "<p class=\"bad\">{}: {}</p>", n, esc(d));
    }
    let m = &r.metrics;
    h.push_str("<h2>Figures</h2><table>");
    let rows: Vec<(&str, String)> = vec![
        ("transactions", m.transactions.to_string()),
        ("accepted", m.accepted.to_string()),
        ("refused", m.refused.to_string()),
        ("unacked", m.unacked.to_string()),
        ("overdrafts (settled)", m.overdrafts.to_string()),
        (
            "fees",
            format!(
                "{} ({})",
                m.fees,
                m.currencies
                    .iter()
                    .map(|(c, x)| format!("{} {c}", x.fee_total))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        ("reversals", m.reversals.to_string()),
        ("duplicate reversals", m.duplicate_reversals.to_string()),
        (
            "debt left",
            format!(
                "{} in {} accounts",
                m.currencies
                    .iter()
                    .map(|(c, x)| format!("{} {c}", x.debt))
                    .collect::<Vec<_>>()
                    .join(", "),
                m.debt_accounts
            ),
        ),
        (
            "settle lag p50 / p99 / max",
            format!(
                "{} / {} / {}",
                ms(m.settle_lag_p50_ms),
                ms(m.settle_lag_p99_ms),
                ms(m.settle_lag_max_ms)
            ),
        ),
        (
            "replicated",
            format!(
                "{} in {} messages",
                human_bytes(m.bytes_replicated),
                m.messages
            ),
        ),
        (
            "partitions / crashes",
            format!("{} / {}", m.partitions, m.crashes),
        ),
        ("simulated time", ms(m.simulated_ms)),
    ];
    for (k, v) in rows {
        let _ = write!(h, "<tr><th class=\"l\">{k}</th><td>{}</td></tr>", esc(&v));
    }
    h.push_str("</table>");
    if let Some(toml) = &r.policy_toml {
        let _ = write!(
            h,
            "<h2>Policy <code>{}</code> (drawn from the seed)</h2><pre>{}</pre>",
            esc(&r.policy),
            esc(toml)
        );
    }
    if !r.policy_changes.is_empty() {
        h.push_str("<h2>Policy changes</h2><table><tr><th>time</th><th class=\"l\">region</th><th class=\"l\">policy</th><th class=\"l\">source</th><th class=\"l\">outcome</th></tr>");
        for c in &r.policy_changes {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                ms(c.at_ms),
                esc(&c.region),
                esc(&c.policy),
                c.source,
                esc(&c.outcome)
            );
        }
        h.push_str("</table>");
    }
    if results.len() > 1
        && results
            .iter()
            .all(|x| MODE_NAMES.contains(&x.policy.as_str()))
    {
        h.push_str("<h2>Consistency modes compared (identical workload and faults)</h2>");
        h.push_str(&modes_html(results));
    } else if results.len() > 1 {
        h.push_str("<h2>Policies compared (identical workload and faults)</h2>");
        h.push_str(&compare_table_html(results));
    }
    let _ = write!(
        h,
        "<h2>Balance of <code>{}</code> per region</h2><p class=\"legend\">",
        esc(&account)
    );
    for (i, name) in r.regions.iter().enumerate() {
        let _ = write!(
            h,
            "<span style=\"color:{}\">■ {}</span>",
            COLORS[i % COLORS.len()],
            esc(name)
        );
    }
    h.push_str("<span>thin line: provisional · thick dashed: settled</span><span style=\"color:#e6a070\">■ partition</span><span style=\"color:#e67e00\">▼ fee</span><span style=\"color:#7b2cbf\">▼ reversal</span><span style=\"color:#c5221f\">○ overdraft (provisional below the floor)</span><span>bars at the bottom: region down</span></p>");
    h.push_str(&balance_chart(r));
    h.push_str("<h2>Settlement lag by submission time</h2><p class=\"legend\"><span style=\"color:#1f77b4\">■ median</span><span style=\"color:#d62728\">■ maximum</span><span style=\"color:#e6a070\">■ partition</span></p>");
    h.push_str(&lag_chart(r));
    if let Some(s) = &r.series {
        if !s.comps.is_empty() {
            let _ = write!(
                h,
                "<h2>Compensations on <code>{}</code></h2><table><tr><th class=\"l\">id</th><th>amount (USD)</th><th class=\"l\">first settled at</th><th>time</th></tr>",
                esc(&account)
            );
            let mut seen = std::collections::BTreeSet::new();
            for (t, region, _, cents, id) in s.comps.iter().take(400) {
                if !seen.insert(id.clone()) {
                    continue;
                }
                let _ = write!(
                    h,
                    "<tr><td class=\"l\">{}</td><td>{}{}.{:02}</td><td class=\"l\">{}</td><td>{}</td></tr>",
                    esc(id),
                    if *cents < 0 { "-" } else { "+" },
                    cents.abs() / 100,
                    cents.abs() % 100,
                    esc(r.regions.get(*region).map(String::as_str).unwrap_or("?")),
                    ms(*t)
                );
            }
            h.push_str("</table>");
        }
    }
    h.push_str("</body></html>\n");
    h
}

fn compare_rows(results: &[RunResult]) -> Vec<[String; 11]> {
    results
        .iter()
        .map(|r| {
            let m = &r.metrics;
            [
                r.policy.clone(),
                m.accepted.to_string(),
                m.refused.to_string(),
                m.overdrafts.to_string(),
                m.fees.to_string(),
                m.fee_total.clone(),
                m.reversals.to_string(),
                m.debt.clone(),
                m.settle_lag_p50_ms.to_string(),
                m.settle_lag_p99_ms.to_string(),
                if r.check.invariants.all() {
                    "ok".into()
                } else {
                    "FAILED".into()
                },
            ]
        })
        .collect()
}

const COMPARE_HEAD: [&str; 11] = [
    "policy",
    "accepted",
    "refused",
    "overdrafts",
    "fees",
    "fee total USD",
    "reversals",
    "debt left USD",
    "lag p50 ms",
    "lag p99 ms",
    "invariants",
];

/// The labels `--compare-modes` gives its runs.
const MODE_NAMES: [&str; 4] = ["optimistic", "escrow", "hybrid", "home"];

const MODES_HEAD: [&str; 16] = [
    "mode",
    "accepted",
    "refused funds",
    "refused rights",
    "home unreachable",
    "overdrafts",
    "fees",
    "reversals",
    "money at risk",
    "accept p50 ms",
    "accept p99 ms",
    "rights transfers",
    "sync rights (% debits)",
    "sync accepted (% debits)",
    "bytes replicated",
    "invariants",
];

fn modes_rows(results: &[RunResult]) -> Vec<[String; 16]> {
    results
        .iter()
        .map(|r| {
            let m = &r.metrics;
            let pct = (m.rights_waits * 1000).checked_div(m.debits).unwrap_or(0);
            let served = (m.rights_waits_served * 1000)
                .checked_div(m.debits)
                .unwrap_or(0);
            [
                r.policy.clone(),
                m.accepted.to_string(),
                m.refused_funds.to_string(),
                m.refused_rights.to_string(),
                m.refused_home_unreachable.to_string(),
                m.overdrafts.to_string(),
                m.fees.to_string(),
                m.reversals.to_string(),
                m.max_overdraft.clone(),
                m.accept_p50_ms.to_string(),
                m.accept_p99_ms.to_string(),
                m.rights_transfers.to_string(),
                format!("{} ({}.{}%)", m.rights_waits, pct / 10, pct % 10),
                format!(
                    "{} ({}.{}%)",
                    m.rights_waits_served,
                    served / 10,
                    served % 10
                ),
                m.bytes_replicated.to_string(),
                if r.check.invariants.all() {
                    "ok".into()
                } else {
                    "FAILED".into()
                },
            ]
        })
        .collect()
}

/// The `--compare-modes` table as text: per mode, what it accepted and refused (and why),
/// the overdrafts, fees and reversals it left, the money at risk, the accept latency, the
/// rights traffic and the bytes replicated.
pub fn modes_table(results: &[RunResult]) -> String {
    text_table(&MODES_HEAD, &modes_rows(results))
}

/// A table as aligned text: the first column left, the others right.
fn text_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        for (i, c) in cells.enumerate() {
            if i == 0 {
                let _ = write!(s, "{:<w$}", c, w = widths[i]);
            } else {
                let _ = write!(s, "  {:>w$}", c, w = widths[i]);
            }
        }
        s.push('\n');
    };
    line(&mut s, &mut head.iter().copied());
    for r in rows {
        line(&mut s, &mut r.iter().map(String::as_str));
    }
    s
}

/// The modes' table and one bar chart per figure.
fn modes_html(results: &[RunResult]) -> String {
    let rows = modes_rows(results);
    let mut s = html_table(&MODES_HEAD, &rows);
    s.push_str("<div>");
    // One small bar chart per figure: the leading number of each cell.
    for (k, head) in MODES_HEAD
        .iter()
        .enumerate()
        .skip(1)
        .take(MODES_HEAD.len() - 2)
    {
        let values: Vec<f64> = rows
            .iter()
            .map(|r| {
                r[k].split([' ', '('])
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            })
            .collect();
        let max = values.iter().cloned().fold(0.0_f64, f64::max).max(1e-9);
        let (w, bar_h, gap) = (260.0, 16.0, 4.0);
        let height = 22.0 + (bar_h + gap) * values.len() as f64;
        let _ = write!(
            s,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" style="margin:8px 12px 0 0"><text x="0" y="13" font-size="12" font-weight="bold">{}</text>"##,
            esc(head)
        );
        for (i, (v, r)) in values.iter().zip(&rows).enumerate() {
            let y = 20.0 + (bar_h + gap) * i as f64;
            let len = (w - 150.0) * v / max;
            let _ = write!(
                s,
                r##"<text x="0" y="{}" font-size="11">{}</text><rect x="70" y="{y}" width="{len:.1}" height="{bar_h}" fill="{}"/><text x="{:.1}" y="{}" font-size="11">{}</text>"##,
                y + 12.0,
                esc(&r[0]),
                COLORS[i % COLORS.len()],
                74.0 + len,
                y + 12.0,
                esc(&r[k])
            );
        }
        s.push_str("</svg>");
    }
    s.push_str("</div>");
    s
}

/// The comparison table as text.
pub fn compare_table(results: &[RunResult]) -> String {
    text_table(&COMPARE_HEAD, &compare_rows(results))
}

fn compare_table_html(results: &[RunResult]) -> String {
    html_table(&COMPARE_HEAD, &compare_rows(results))
}

/// A table as HTML: the first column left, the others right.
fn html_table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> String {
    let mut s = String::from("<table><tr>");
    for (i, h) in head.iter().enumerate() {
        let _ = write!(
            s,
            "<th{}>{h}</th>",
            if i == 0 { " class=\"l\"" } else { "" }
        );
    }
    s.push_str("</tr>");
    for r in rows {
        s.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let _ = write!(
                s,
                "<td{}>{}</td>",
                if i == 0 { " class=\"l\"" } else { "" },
                esc(c)
            );
        }
        s.push_str("</tr>");
    }
    s.push_str("</table>");
    s
}
