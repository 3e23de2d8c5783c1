//! Connection limits (issue 14): a flood of TCP connections that never finish the handshake
//! is refused before any cryptography, beyond `PENDING_INCOMING_MAX`, and the members keep
//! exchanging messages; the per-peer memory bound is what the constants say.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use wallet_core::wire::MESSAGE_BYTES_MAX;

#[test]
fn per_peer_inbound_memory_is_bounded() {
    assert_eq!(
        wallet_p2p::PEER_INBOUND_BYTES_MAX,
        wallet_p2p::CONNECTIONS_PER_PEER_MAX as usize
            * wallet_p2p::STREAMS_PER_CONNECTION_MAX
            * MESSAGE_BYTES_MAX
    );
    // At most 6 frames of 16 MiB per member, whatever it sends.
    const { assert!(wallet_p2p::PEER_INBOUND_BYTES_MAX <= 6 * MESSAGE_BYTES_MAX) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_refused_before_noise_and_members_keep_talking() {
    const FLOOD: usize = 200;
    let (specs, mut n) = cluster(&["eu", "us"]).await;
    let (eu, us) = (specs[0].region, specs[1].region);
    wait_until("connected", || {
        n[0].net.connected() == BTreeSet::from([us]) && n[1].net.connected() == BTreeSet::from([eu])
    })
    .await;
    // TCP connections to eu that never speak: each would sit in the handshake.
    let mut socks = Vec::new();
    for _ in 0..FLOOD {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", specs[0].port)).await {
            socks.push(s);
        }
    }
    // Those over the pending limit are closed at once.
    let t0 = Instant::now();
    let mut closed = 0;
    for s in &mut socks {
        let left = Duration::from_secs(3).saturating_sub(t0.elapsed());
        let mut b = [0u8; 256];
        loop {
            match tokio::time::timeout(left.max(Duration::from_millis(1)), s.read(&mut b)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                // multistream-select greeting bytes: keep reading.
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    let limited = n[0].net.stats().limited_connections;
    println!("handshake flood: {FLOOD} connections, {closed} closed within 3 s, {limited} refused by the limits");
    assert!(
        closed >= FLOOD - wallet_p2p::PENDING_INCOMING_MAX as usize - 20,
        "only {closed} of {FLOOD} closed"
    );
    assert!(limited >= (FLOOD as u64) / 2, "{limited}");
    // The members still talk, both ways.
    n[0].net.send(us, tagged(7)).await;
    assert_eq!(n[1].next_message().await.1, 7);
    n[1].net.send(eu, tagged(8)).await;
    assert_eq!(n[0].next_message().await.1, 8);
    drop(socks);
}
