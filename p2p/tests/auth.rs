//! Event signatures with libp2p ed25519 keys: members' keys come from their peer ids.

use libp2p::identity::Keypair;
use wallet_core::*;
use wallet_p2p::{ed25519_public_key_of, peer_id_of, Ed25519Auth};

fn region(name: &str) -> RegionId {
    RegionId::new(name).unwrap()
}

struct Region {
    name: RegionId,
    key: Keypair,
}

fn regions() -> (Region, Region) {
    (
        Region {
            name: region("eu"),
            key: Keypair::generate_ed25519(),
        },
        Region {
            name: region("us"),
            key: Keypair::generate_ed25519(),
        },
    )
}

fn auth(me: &Keypair, members: &[&Region]) -> Ed25519Auth {
    let ids: Vec<(RegionId, libp2p::PeerId)> = members
        .iter()
        .map(|r| (r.name, peer_id_of(&r.key)))
        .collect();
    Ed25519Auth::new(me.clone(), &ids).unwrap()
}

fn replica(me: &Region, members: &[&Region], cluster: &str) -> Replica {
    let names = members.iter().map(|r| r.name).collect();
    let mut cfg = Config::new(
        me.name,
        names,
        Policy::from_toml("[default]\naction = \"reverse\"\n").unwrap(),
    );
    cfg.cluster = cluster.into();
    cfg.auth = Box::new(auth(&me.key, members));
    Replica::new(cfg, Hlc::ZERO)
}

/// One deposit issued (and signed) by `r`.
fn issue(r: &mut Replica) -> Event {
    r.submit(
        1_000,
        TxRequest {
            account: AccountId::new("alice").unwrap(),
            kind: Kind::Deposit,
            amount: Amount::parse("10", Currency::USD).unwrap(),
            currency: Currency::USD,
            idempotency_key: None,
            reference: None,
        },
    )
    .unwrap();
    while let Some(o) = r.poll_output() {
        if let Output::Persist {
            record: Record::Event(e),
            ..
        } = o
        {
            return e;
        }
    }
    panic!("no event issued");
}

#[test]
fn the_public_key_comes_out_of_the_peer_id() {
    let k = Keypair::generate_ed25519();
    let pk = ed25519_public_key_of(&peer_id_of(&k)).unwrap();
    assert_eq!(pk, k.public());
    // A peer id that is a hash (not an embedded key) has no key to extract.
    assert!(ed25519_public_key_of(&libp2p::PeerId::random()).is_none());
    let err = Ed25519Auth::new(k.clone(), &[(region("eu"), libp2p::PeerId::random())]);
    assert!(err.is_err());
    assert!(Ed25519Auth::new(k, &[]).is_ok());
}

#[test]
fn members_signatures_verify_and_forgeries_do_not() {
    let (eu, us) = regions();
    let mut reu = replica(&eu, &[&eu, &us], "prod");
    let e = issue(&mut reu);
    assert!(!e.sig.is_empty());
    let verifier = auth(&us.key, &[&eu, &us]);
    let bytes = e.signing_bytes("prod");
    assert!(verifier.verify(eu.name, &bytes, &e.sig));

    // Claimed by another member.
    assert!(!verifier.verify(us.name, &bytes, &e.sig));
    // Another cluster id (a staging copy with the same region names).
    assert!(!verifier.verify(eu.name, &e.signing_bytes("staging"), &e.sig));
    // Altered after signing.
    let mut altered = e.clone();
    if let Body::Tx(tx) = &mut altered.body {
        tx.amount = Amount::parse("1000", Currency::USD).unwrap();
    }
    assert!(!verifier.verify(eu.name, &altered.signing_bytes("prod"), &e.sig));
    // Signed by a key that is not eu's (a non-member, or a relaying member).
    let outsider = Keypair::generate_ed25519();
    let forged_sig = outsider.sign(&bytes).unwrap();
    assert!(!verifier.verify(eu.name, &bytes, &forged_sig));
    let relay_sig = us.key.sign(&bytes).unwrap();
    assert!(!verifier.verify(eu.name, &bytes, &relay_sig));
    // A non-member origin.
    assert!(!verifier.verify(region("xx"), &bytes, &e.sig));
    // Garbage signatures.
    assert!(!verifier.verify(eu.name, &bytes, &[]));
    assert!(!verifier.verify(eu.name, &bytes, &[0u8; 64]));
}

#[test]
fn a_replica_refuses_forged_events_and_accepts_the_genuine_one() {
    let (eu, us) = regions();
    let mut reu = replica(&eu, &[&eu, &us], "prod");
    let mut rus = replica(&us, &[&eu, &us], "prod");
    let e = issue(&mut reu);

    let mut altered = e.clone();
    if let Body::Tx(tx) = &mut altered.body {
        tx.amount = Amount::parse("1000", Currency::USD).unwrap();
    }
    let mut outsider_signed = e.clone();
    outsider_signed.sig = Keypair::generate_ed25519()
        .sign(&e.signing_bytes("prod"))
        .unwrap()
        .into();
    // The same region names and keys, another cluster id.
    let mut staging = replica(&eu, &[&eu, &us], "staging");
    let from_staging = issue(&mut staging);

    rus.handle_events(1_000, eu.name, vec![altered, outsider_signed, from_staging]);
    assert_eq!(rus.stats().rejected, 3);
    assert_eq!(rus.stats().remote_applied, 0);
    rus.handle_events(1_000, eu.name, vec![e]);
    assert_eq!(rus.stats().remote_applied, 1);
}

/// Key rotation (SPEC §10): a signature verifies against the key valid at its HLC; this
/// region signs with a staged key once the rotation binding it is applied, not before.
#[test]
fn a_rotated_key_verifies_above_its_hlc_only_and_is_signed_with_once_applied() {
    let (eu, us) = regions();
    let new = Keypair::generate_ed25519();
    let new_pub = wallet_p2p::membership_key_of(&new);
    let mut eu_auth = auth(&eu.key, &[&eu, &us]);
    let mut us_auth = auth(&us.key, &[&eu, &us]);
    let at = Hlc::from_millis;
    let bytes = b"payload";

    // Staged but not applied: eu still signs with its identity key.
    eu_auth.key_stage().stage(new.clone());
    let old_sig = eu_auth.sign(bytes);
    assert!(us_auth.verify_at(eu.name, at(50), bytes, &old_sig));
    assert_eq!(
        eu_auth.signing_key(),
        wallet_p2p::membership_key_of(&eu.key)
    );

    // The rotation at HLC 100 is applied on both sides.
    eu_auth.set_key(eu.name, at(100), &new_pub);
    us_auth.set_key(eu.name, at(100), &new_pub);
    assert_eq!(eu_auth.signing_key(), new_pub);
    let new_sig = eu_auth.sign(bytes);
    // Above the rotation: the new key only.
    assert!(us_auth.verify_at(eu.name, at(101), bytes, &new_sig));
    assert!(!us_auth.verify_at(eu.name, at(101), bytes, &old_sig));
    // At or below it: the old key only.
    assert!(us_auth.verify_at(eu.name, at(100), bytes, &old_sig));
    assert!(!us_auth.verify_at(eu.name, at(99), bytes, &new_sig));
    // Another region's keys are untouched.
    let us_sig = us_auth.sign(bytes);
    assert!(eu_auth.verify_at(us.name, at(101), bytes, &us_sig));
    // A key that is not staged does not change what eu signs with.
    let other = Keypair::generate_ed25519();
    eu_auth.set_key(eu.name, at(200), &wallet_p2p::membership_key_of(&other));
    assert_eq!(eu_auth.signing_key(), new_pub);
}

/// The rotated key file: written 0600, replaced atomically, put back or removed.
#[test]
fn the_rotated_key_file_is_private_and_replaced_atomically() {
    let dir = std::env::temp_dir().join(format!("wallet-rotated-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = wallet_p2p::rotated_key_path(&dir.join("identity.key"));
    assert!(wallet_p2p::load_rotated_key(&path).unwrap().is_none());
    let k1 = Keypair::generate_ed25519();
    assert!(wallet_p2p::replace_key_file(&path, &k1).unwrap().is_none());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let k2 = Keypair::generate_ed25519();
    let old = wallet_p2p::replace_key_file(&path, &k2).unwrap();
    let loaded = wallet_p2p::load_rotated_key(&path).unwrap().unwrap();
    assert_eq!(loaded.public(), k2.public());
    wallet_p2p::restore_key_file(&path, old.as_deref()).unwrap();
    let loaded = wallet_p2p::load_rotated_key(&path).unwrap().unwrap();
    assert_eq!(loaded.public(), k1.public());
    wallet_p2p::restore_key_file(&path, None).unwrap();
    assert!(wallet_p2p::load_rotated_key(&path).unwrap().is_none());
    std::fs::write(&path, b"not a key").unwrap();
    assert!(wallet_p2p::load_rotated_key(&path).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
