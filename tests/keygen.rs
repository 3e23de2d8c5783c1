//! `walletd keygen --out FILE`: the binary writes a key walletd loads (0600 in a 0700
//! directory), prints that key's peer id, and refuses to overwrite an existing file.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_walletd");

#[test]
fn keygen_prints_the_peer_id_of_the_key_it_writes_and_never_overwrites() {
    let d = tempfile::tempdir().expect("temp dir");
    let dir = d.path().join("keys");
    let key = dir.join("eu.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .expect("run walletd keygen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let kp = wallet_p2p::load_or_create_keypair(&key).expect("the key loads");
    assert_eq!(printed, wallet_p2p::peer_id_of(&kp).to_string());
    assert!(
        printed.starts_with("12D3KooW"),
        "an ed25519 peer id: {printed}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }

    let before = std::fs::read(&key).expect("read key");
    let again = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .expect("run walletd keygen again");
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stdout.is_empty());
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(
        std::fs::read(&key).expect("read key"),
        before,
        "key unchanged"
    );

    // Each run makes a new identity.
    let other = d.path().join("us.key");
    let out = Command::new(BIN)
        .args(["keygen", "--out"])
        .arg(&other)
        .output()
        .expect("run walletd keygen");
    assert!(out.status.success());
    assert_ne!(String::from_utf8_lossy(&out.stdout).trim(), printed);
}
