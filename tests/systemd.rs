//! deploy/systemd/walletd.service: the settings docs/operations.md promises, and
//! `systemd-analyze verify` (no error, no warning) and `systemd-analyze security` when
//! systemd-analyze is installed (.ci/run installs it; without it the checks are skipped with a
//! printed reason).

use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/walletd.service"
);
const INSTALLED_BIN: &str = "/usr/local/bin/walletd";

fn unit() -> String {
    std::fs::read_to_string(UNIT).expect("read deploy/systemd/walletd.service")
}

/// The values of `key=` lines in the unit (comments excluded).
fn values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_unit_has_the_restart_policy_and_the_hardening_the_docs_promise() {
    let u = unit();
    let one = |key: &str| {
        let v = values(&u, key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0].clone()
    };
    assert_eq!(
        one("ExecStart"),
        format!("{INSTALLED_BIN} --log-format json run --config /etc/walletd/walletd.toml")
    );
    assert_eq!(one("Restart"), "on-failure");
    // A storage failure (and a bad config) needs an operator: no restart loop on them.
    let prevent: Vec<i32> = one("RestartPreventExitStatus")
        .split_whitespace()
        .map(|c| c.parse().expect("an exit code"))
        .collect();
    assert!(
        prevent.contains(&wallet::actor::STORAGE_FAILURE_EXIT_CODE) && prevent.contains(&2),
        "{prevent:?}"
    );
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ReadWritePaths", "/var/lib/walletd"),
        ("StateDirectory", "walletd"),
        ("StateDirectoryMode", "0700"),
        ("UMask", "0077"),
        ("CapabilityBoundingSet", ""),
        ("LimitNOFILE", "65536"),
        ("User", "walletd"),
    ] {
        assert_eq!(one(key), want, "{key}");
    }
    let ops = include_str!("../docs/operations.md");
    assert!(ops.contains("deploy/systemd/walletd.service"));
    assert!(ops.contains(&format!(
        "exits with code {}",
        wallet::actor::STORAGE_FAILURE_EXIT_CODE
    )));
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (Debian package `systemd`; .ci/run installs it)"
        );
        return;
    };
    assert!(v.status.success());
    // verify checks that ExecStart's binary exists: point it at the binary under test.
    let d = tempfile::tempdir().expect("temp dir");
    let path = d.path().join("walletd.service");
    let u = unit().replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_walletd"));
    std::fs::write(&path, u).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    // It exits 0 on unknown keys and unparsable values, but prints them: none allowed.
    assert!(
        out.status.success() && so.trim().is_empty() && se.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{so}\n{se}",
        out.status
    );

    // The exposure score of the sandbox (0 best, 10 worst), where --offline is supported.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(score) = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for walletd.service: ")
                .nth(1)
        })
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
    else {
        eprintln!(
            "SKIPPED: systemd-analyze security --offline gave no score ({:?}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    };
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}
