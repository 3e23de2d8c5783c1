//! The scenario parser rejects bad files with the line number and the reason.

use std::process::Command;

use wallet_core::Currency;
use wallet_sim::config::region_names;
use wallet_sim::scenario::{parse, Action};

fn err(text: &str) -> (usize, String) {
    let e = parse(text, &region_names(3), Currency::USD).expect_err("should be rejected");
    (e.line, e.reason)
}

#[test]
fn good_file_parses_in_time_order() {
    let s = parse(
        "# comment\n\nt=10s split {eu} | {us, ap}\nt=40s heal\nt=20s crash us\nt=25s restart us\nt=5s skew ap +300ms\nt=1.5s deposit eu alice 10.00 key=k1\nt=12s isolate ap\n",
        &region_names(3),
        Currency::USD,
    )
    .expect("valid");
    let times: Vec<u64> = s.steps.iter().map(|s| s.at_ms).collect();
    assert_eq!(
        times,
        vec![1_500, 5_000, 10_000, 12_000, 20_000, 25_000, 40_000]
    );
    assert_eq!(s.steps[1].action, Action::Skew(2, 300));
    assert_eq!(s.steps[2].action, Action::Split(vec![vec![0], vec![1, 2]]));
    assert_eq!(s.steps[2].line, 3);
}

#[test]
fn bad_files_name_the_line_and_the_reason() {
    let cases: &[(&str, usize, &str)] = &[
        ("t=1s heal\nsplit {eu} | {us, ap}\n", 2, "expected a time"),
        ("t=1x heal\n", 1, "no unit"),
        ("t=abcs heal\n", 1, "not a number"),
        ("t=1.0005s heal\n", 1, "whole number of milliseconds"),
        ("t=1s explode eu\n", 1, "unknown action \"explode\""),
        ("t=1s\n", 1, "missing action"),
        ("\n\nt=1s split {eu} | {us}\n", 3, "\"ap\" is in no group"),
        (
            "t=1s split {eu} | {us, xx, ap}\n",
            1,
            "unknown region \"xx\"",
        ),
        ("t=1s split {eu, us, ap}\n", 1, "at least two groups"),
        ("t=1s split {eu} | {eu, us, ap}\n", 1, "in two groups"),
        ("t=1s split eu | {us, ap}\n", 1, "braces"),
        ("t=1s crash\n", 1, "expected `crash <region>`"),
        ("t=1s restart us\n", 1, "not down"),
        ("t=1s crash us\nt=2s crash us\n", 2, "already down"),
        ("t=1s skew ap 300ms\n", 1, "needs a sign"),
        ("t=1s skew ap +2h\n", 1, "no unit"),
        ("t=1s heal now\n", 1, "takes no arguments"),
        (
            "t=1s deposit eu alice\n",
            1,
            "expected `deposit <region> <account> <amount>",
        ),
        ("t=1s deposit eu alice 1.001\n", 1, "decimal places"),
        ("t=1s deposit eu alice -5\n", 1, "greater than zero"),
        ("t=1s purchase eu bad/acct 5\n", 1, "invalid account id"),
        ("t=1s purchase eu alice 5 id=3\n", 1, "expected key="),
    ];
    for (text, line, reason) in cases {
        let (l, r) = err(text);
        assert_eq!(l, *line, "{text:?}: {r}");
        assert!(r.contains(reason), "{text:?}: {r:?} lacks {reason:?}");
    }
}

#[test]
fn the_cli_reports_the_file_line_and_reason_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("wallet-sim-parser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let f = dir.join("bad.txt");
    std::fs::write(&f, "t=1s heal\nt=2s crash mars\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_wallet-sim"))
        .arg("--scenario")
        .arg(&f)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("line 2") && e.contains("unknown region \"mars\""),
        "{e}"
    );
}

#[test]
fn shipped_scenarios_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    for (file, regions) in [
        ("same-100-usd.txt", 2),
        ("eu-isolated.txt", 3),
        ("split-brain.txt", 5),
        ("bad-clock.txt", 3),
    ] {
        let text = std::fs::read_to_string(format!("{dir}/{file}")).expect("read");
        parse(&text, &region_names(regions), Currency::USD)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}
