//! Connection limits (issue 14): a flood of TCP connections that never finish the handshake
//! is refused before any cryptography, beyond `PENDING_INCOMING_MAX`, and the members keep
//! exchanging messages; a member that sends more than its inbound budget is refused while
//! another member's messages go through.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use wallet_core::wire::MESSAGE_BYTES_MAX;

#[test]
fn per_peer_inbound_memory_is_bounded() {
    // The budget a config may set is below what a member's streams could make us hold.
    assert!(
        wallet_p2p::PEER_INBOUND_BYTES_MAX
            <= wallet_p2p::CONNECTIONS_PER_PEER_MAX as usize
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

/// A raw batch of messages of the given sizes (any bytes: the budget is checked on the
/// headers, before the bytes are read).
fn raw_batch(sizes: &[usize]) -> Vec<u8> {
    let mut out = (sizes.len() as u32).to_be_bytes().to_vec();
    for &n in sizes {
        out.extend((n as u32).to_be_bytes());
        out.extend(vec![0xAB; n]);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_over_its_inbound_budget_is_refused_and_another_is_not_affected() {
    // eu gives each peer 64 KiB: 32 KiB on each of its (at most 2) connections.
    const BUDGET: usize = 64 * 1024;
    let specs: Vec<Spec> = ["eu", "us", "ap"].iter().map(|n| Spec::new(n)).collect();
    let mut eu = start_with_budget(&specs[0], &specs, "test", BUDGET);
    let mut us = start(&specs[1], &specs, "test");
    let mut ap = start(&specs[2], &specs, "test");
    let (r_eu, r_us, r_ap) = (specs[0].region, specs[1].region, specs[2].region);
    eu.wait_connected(&[r_us, r_ap]).await;
    us.wait_connected(&[r_eu, r_ap]).await;
    ap.wait_connected(&[r_eu, r_us]).await;
    assert_eq!(eu.net.stats().over_budget_batches, 0);

    // us (a member gone bad) announces one message larger than a connection's budget, then
    // two that fit alone but not together: both batches refused on a header.
    us.net.send_raw_frame(r_eu, raw_batch(&[40 * 1024])).await;
    wait_until("the first batch refused", || {
        eu.net.stats().over_budget_batches == 1
    })
    .await;
    us.net
        .send_raw_frame(r_eu, raw_batch(&[20 * 1024, 20 * 1024]))
        .await;
    wait_until("the second batch refused", || {
        eu.net.stats().over_budget_batches == 2
    })
    .await;
    // ap's messages go through meanwhile, and so do us's own once it stays within budget.
    ap.net.send(r_eu, tagged(1)).await;
    assert_eq!(eu.next_message().await.0, r_ap);
    us.net.send(r_eu, tagged(2)).await;
    let (from, tag, _) = eu.next_message().await;
    assert_eq!((from, tag), (r_us, 2));
    // A batch within the budget is read (and dropped as malformed, its bytes being junk):
    // the refusals above were the budget's, not a size limit's.
    let dropped = eu.net.stats().dropped_messages;
    us.net.send_raw_frame(r_eu, raw_batch(&[24 * 1024])).await;
    wait_until("the junk batch read and dropped", || {
        eu.net.stats().dropped_messages > dropped
    })
    .await;
    assert_eq!(eu.net.stats().over_budget_batches, 2);
    println!("inbound budget: {:?}", eu.net.stats());
}
