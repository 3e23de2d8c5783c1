//! Real sockets on 127.0.0.1: several transports in one process.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use wallet_core::wire::{encode_message, MESSAGE_BYTES_MAX};

#[tokio::test]
async fn three_members_exchange_broadcast_and_send() {
    let (specs, mut n) = cluster(&["eu", "us", "ap"]).await;
    let (eu, us, ap) = (specs[0].region, specs[1].region, specs[2].region);
    wait_until("connected sets", || {
        n[0].net.connected() == BTreeSet::from([us, ap])
            && n[1].net.connected() == BTreeSet::from([eu, ap])
            && n[2].net.connected() == BTreeSet::from([eu, us])
    })
    .await;

    n[0].net.broadcast(tagged(1)).await;
    assert_eq!(n[1].next_message().await.0, eu);
    let (from, tag, bytes) = n[2].next_message().await;
    assert_eq!((from, tag), (eu, 1));
    assert_eq!(bytes, encode_message(&tagged(1)).len());

    n[1].net.send(ap, tagged(2)).await;
    assert_eq!(n[2].next_message().await, (us, 2, bytes));
    n[2].net.send(eu, tagged(3)).await;
    // eu's first message is ap's: us's send went to ap only.
    assert_eq!(n[0].next_message().await, (ap, 3, bytes));

    // Many sends in a row arrive complete and in order (batched, one batch in flight).
    for i in 0..600 {
        n[0].net.send(us, tagged(1000 + i)).await;
    }
    let mut many = 0;
    for i in 0..600 {
        let len = encode_message(&tagged(1000 + i)).len();
        assert_eq!(n[1].next_message().await, (eu, 1000 + i, len));
        many += len as u64;
    }

    wait_until("eu's sends acknowledged", || {
        n[0].net.stats().messages_sent == 602
    })
    .await;
    let s = n[0].net.stats();
    assert_eq!(s.bytes_sent, 2 * bytes as u64 + many);
    assert_eq!(s.messages_received, 1);
    assert_eq!(s.bytes_received, bytes as u64);
    assert_eq!((s.refused_peers, s.dropped_messages), (0, 0));
    let s = n[1].net.stats();
    assert_eq!(s.messages_received, 601);
    assert_eq!(s.bytes_received, bytes as u64 + many);
    let s = n[2].net.stats();
    assert_eq!(s.messages_received, 2);
}

#[tokio::test]
async fn a_peer_with_an_unknown_key_is_refused() {
    let eu = Spec::new("eu");
    let us = Spec::new("us");
    let members = vec![eu.clone(), us.clone()];
    let mut neu = start(&eu, &members, "test");
    let mut nus = start(&us, &members, "test");
    neu.wait_connected(&[us.region]).await;
    nus.wait_connected(&[eu.region]).await;

    // The intruder claims to be "us" and knows eu's address, but its key is not a member's.
    let intruder_spec = Spec::new("us");
    let intruder = start(&intruder_spec, &[eu.clone(), intruder_spec.clone()], "test");
    wait_until("eu refuses the intruder", || {
        neu.net.stats().refused_peers > 0
    })
    .await;
    for i in 0..20 {
        intruder.net.send(eu.region, tagged(66)).await;
        intruder.net.broadcast(tagged(67 + i)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The intruder's sends were never acknowledged by eu.
    assert_eq!(intruder.net.stats().messages_sent, 0);

    nus.net.send(eu.region, tagged(7)).await;
    let (from, tag, _) = neu.next_message().await;
    assert_eq!((from, tag), (us.region, 7));
    assert_eq!(neu.net.connected(), BTreeSet::from([us.region]));
    assert_eq!(neu.net.stats().messages_received, 1);
}

#[tokio::test]
async fn another_cluster_id_cannot_deliver() {
    let eu = Spec::new("eu");
    let us = Spec::new("us");
    let members = vec![eu.clone(), us.clone()];
    let mut neu = start(&eu, &members, "prod");
    let mut nus = start(&us, &members, "staging");
    neu.wait_connected(&[us.region]).await;
    nus.wait_connected(&[eu.region]).await;
    nus.net.send(eu.region, tagged(5)).await;
    // The protocol name carries the cluster id: eu does not speak staging's protocol.
    wait_until("staging's send fails", || {
        nus.net.stats().dropped_messages == 1
    })
    .await;
    assert_eq!(neu.net.stats().messages_received, 0);
    assert_eq!(nus.net.stats().messages_sent, 0);
}

#[tokio::test]
async fn isolation_drops_traffic_both_ways_and_heal_reconnects() {
    let (specs, mut n) = cluster(&["eu", "us", "ap"]).await;
    let (eu, us, ap) = (specs[0].region, specs[1].region, specs[2].region);

    n[0].net.set_isolated(BTreeSet::from([us])).await;
    n[0].wait_disconnected(&[us]).await;
    assert_eq!(n[0].net.connected(), BTreeSet::from([ap]));

    // us -> eu arrives but is dropped at eu.
    n[1].net.send(eu, tagged(10)).await;
    wait_until("eu drops us's message", || {
        n[0].net.stats().dropped_messages == 1
    })
    .await;
    // eu -> us is not sent.
    n[0].net.send(us, tagged(11)).await;
    n[0].net.broadcast(tagged(12)).await;
    wait_until("eu drops its own sends to us", || {
        n[0].net.stats().dropped_messages == 3
    })
    .await;
    // ap is unaffected: eu's first message is ap's.
    n[2].net.send(eu, tagged(13)).await;
    assert_eq!(n[0].next_message().await.0, ap);
    assert_eq!(n[2].next_message().await.1, 12);

    // Heal: Connected(us) at once, traffic resumes both ways.
    n[0].net.set_isolated(BTreeSet::new()).await;
    n[0].wait_connected(&[us]).await;
    assert_eq!(n[0].net.connected(), BTreeSet::from([us, ap]));
    n[0].net.send(us, tagged(14)).await;
    // us's first message is 14: neither 11 nor 12 was sent to it.
    assert_eq!(
        n[1].next_message().await,
        (eu, 14, encode_message(&tagged(14)).len())
    );
    n[1].net.send(eu, tagged(15)).await;
    assert_eq!(n[0].next_message().await.1, 15);

    // Isolating itself cuts eu off from everyone.
    n[0].net.set_isolated(BTreeSet::from([eu])).await;
    n[0].wait_disconnected(&[us, ap]).await;
    assert!(n[0].net.connected().is_empty());
    let dropped = n[0].net.stats().dropped_messages;
    n[2].net.send(eu, tagged(16)).await;
    n[1].net.send(eu, tagged(17)).await;
    wait_until("eu drops everything", || {
        n[0].net.stats().dropped_messages == dropped + 2
    })
    .await;
    n[0].net.set_isolated(BTreeSet::new()).await;
    n[0].wait_connected(&[us, ap]).await;
    n[2].net.send(eu, tagged(18)).await;
    assert_eq!(n[0].next_message().await.1, 18);
}

#[tokio::test]
async fn a_restarted_member_is_reconnected() {
    let eu = Spec::new("eu");
    let us = Spec::new("us");
    let members = vec![eu.clone(), us.clone()];
    let mut neu = start(&eu, &members, "test");
    let mut nus = start(&us, &members, "test");
    neu.wait_connected(&[us.region]).await;
    nus.wait_connected(&[eu.region]).await;

    nus.net.shutdown().await;
    drop(nus);
    neu.wait_disconnected(&[us.region]).await;
    assert!(neu.net.connected().is_empty());
    // Down long enough for several failed redials (the backoff grows).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    neu.net.send(us.region, tagged(1)).await;

    // Same key, same address. The old listener is gone once the task stopped; retry briefly
    // if the port is not yet released.
    let mut nus = None;
    for _ in 0..100 {
        let cfg = wallet_p2p::NetConfig {
            region: us.region,
            keypair: us.key.clone(),
            listen: vec![tcp(us.port)],
            // us does not know where eu is: only eu's redial (with backoff) can reconnect.
            members: members
                .iter()
                .map(|s| wallet_p2p::MemberAddr {
                    addrs: if s.region == eu.region {
                        Vec::new()
                    } else {
                        s.member().addrs
                    },
                    ..s.member()
                })
                .collect(),
            cluster: "test".into(),
            peer_inbound_bytes_max: wallet_p2p::PEER_INBOUND_BYTES_DEFAULT,
        };
        match wallet_p2p::spawn(cfg) {
            Ok((net, rx)) => {
                nus = Some(Node {
                    region: us.region,
                    net,
                    rx,
                });
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let mut nus = nus.expect("restart");
    neu.wait_connected(&[us.region]).await;
    nus.wait_connected(&[eu.region]).await;
    neu.net.send(us.region, tagged(2)).await;
    assert_eq!(nus.next_message().await.1, 2);
    nus.net.send(eu.region, tagged(3)).await;
    assert_eq!(neu.next_message().await.1, 3);
    // The send while us was down was dropped, not queued.
    assert_eq!(neu.net.stats().dropped_messages, 1);
}

#[tokio::test]
async fn malformed_and_oversized_frames_are_dropped_and_counted() {
    let (specs, mut n) = cluster(&["eu", "us"]).await;
    let (eu, us) = (specs[0].region, specs[1].region);

    let frame = |msgs: &[&[u8]]| {
        let mut out = (msgs.len() as u32).to_be_bytes().to_vec();
        for m in msgs {
            out.extend((m.len() as u32).to_be_bytes());
            out.extend(*m);
        }
        out
    };
    // Each bad frame is sent once the previous one is counted: a member sends one batch at a
    // time, and eu accepts only STREAMS_PER_CONNECTION_MAX streams per connection at once.
    // A header announcing more than the limit (refused before reading the body).
    let mut oversized = 1u32.to_be_bytes().to_vec();
    oversized.extend((MESSAGE_BYTES_MAX as u32 + 1).to_be_bytes());
    oversized.extend([1u8; 64]);
    let good = encode_message(&tagged(41));
    let frames: Vec<Vec<u8>> = vec![
        oversized,
        // Too many messages in one batch.
        u32::MAX.to_be_bytes().to_vec(),
        // An unknown format version, and postcard garbage.
        frame(&[&[9, 9, 9, 9]]),
        frame(&[&[1, 0xff, 0xff, 0xff, 0xff, 0xff]]),
        // An empty message breaks the framing: the whole batch is dropped (counted once).
        frame(&[&[], &good]),
        // A good message after an undecodable one in the same batch is still delivered.
        frame(&[&[7], &good]),
    ];
    for (i, f) in frames.into_iter().enumerate() {
        n[1].net.send_raw_frame(eu, f).await;
        let want = i as u64 + 1;
        wait_until("eu counts the bad frame", || {
            n[0].net.stats().dropped_messages == want
        })
        .await;
    }
    assert_eq!(n[0].net.stats().dropped_messages, 6);
    assert_eq!(n[0].next_message().await, (us, 41, good.len()));

    // The connection still works.
    n[1].net.send(eu, tagged(42)).await;
    assert_eq!(n[0].next_message().await, (us, 42, good.len()));
    assert_eq!(n[0].net.connected(), BTreeSet::from([us]));
    assert_eq!(n[0].net.stats().messages_received, 2);
    // Nothing else happened on eu's side.
    assert!(matches!(
        n[0].rx.try_recv(),
        Err(tokio::sync::mpsc::error::TryRecvError::Empty)
    ));
}

#[tokio::test]
async fn a_slow_peer_gets_a_bounded_queue_that_drops_the_oldest() {
    use wallet_p2p::QUEUE_MESSAGES_MAX;
    let (specs, mut n) = cluster(&["eu", "us"]).await;
    let (eu, us) = (specs[0].region, specs[1].region);
    // us's node does not read its events: us stops acknowledging, eu's queue fills up.
    let total = 2 * QUEUE_MESSAGES_MAX as u32;
    for i in 0..total {
        n[0].net.send(us, tagged(i)).await;
    }
    wait_until("eu drops the oldest queued messages", || {
        n[0].net.stats().dropped_messages > 0
    })
    .await;
    // us reads again: whatever was not dropped arrives, in order, ending with the newest.
    let mut last = None;
    let mut received = 0u64;
    loop {
        let (from, tag, _) = n[1].next_message().await;
        assert_eq!(from, eu);
        assert!(last.is_none_or(|l| tag > l), "{tag} after {last:?}");
        last = Some(tag);
        received += 1;
        if tag == total - 1 {
            break;
        }
    }
    let s = n[0].net.stats();
    assert!(s.dropped_messages > 0);
    assert_eq!(s.dropped_messages + received, u64::from(total));
    wait_until("eu's last batch acknowledged", || {
        n[0].net.stats().messages_sent == received
    })
    .await;
}

#[tokio::test]
async fn quic_members_exchange_messages() {
    let free_udp = || {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let quic = |port: u16| -> libp2p::Multiaddr {
        format!("/ip4/127.0.0.1/udp/{port}/quic-v1")
            .parse()
            .unwrap()
    };
    let specs = [Spec::new("eu"), Spec::new("us")];
    let ports = [free_udp(), free_udp()];
    let members: Vec<wallet_p2p::MemberAddr> = specs
        .iter()
        .zip(ports)
        .map(|(s, p)| wallet_p2p::MemberAddr {
            addrs: vec![quic(p)],
            ..s.member()
        })
        .collect();
    let mut nodes = Vec::new();
    for (s, p) in specs.iter().zip(ports) {
        let (net, rx) = wallet_p2p::spawn(wallet_p2p::NetConfig {
            region: s.region,
            keypair: s.key.clone(),
            listen: vec![quic(p)],
            members: members.clone(),
            cluster: "test".into(),
            peer_inbound_bytes_max: wallet_p2p::PEER_INBOUND_BYTES_DEFAULT,
        })
        .unwrap();
        nodes.push(Node {
            region: s.region,
            net,
            rx,
        });
    }
    nodes[0].wait_connected(&[specs[1].region]).await;
    nodes[1].wait_connected(&[specs[0].region]).await;
    assert!(nodes[0].net.listen_addrs().contains(&quic(ports[0])));
    nodes[0].net.broadcast(tagged(9)).await;
    assert_eq!(nodes[1].next_message().await.0, specs[0].region);
}

#[tokio::test]
async fn a_member_added_later_is_allowed_dialed_and_reached() {
    let eu = Spec::new("eu");
    let us = Spec::new("us");
    let sa = Spec::new("sa");
    let founders = vec![eu.clone(), us.clone()];
    let mut neu = start(&eu, &founders, "test");
    let mut nus = start(&us, &founders, "test");
    neu.wait_connected(&[us.region]).await;
    nus.wait_connected(&[eu.region]).await;

    // sa knows every member; eu does not know sa yet: its connections are refused.
    let mut nsa = start(&sa, &[eu.clone(), us.clone(), sa.clone()], "test");
    wait_until("eu refuses sa before the add", || {
        neu.net.stats().refused_peers > 0
    })
    .await;
    assert!(!neu.net.connected().contains(&sa.region));

    // After the add at eu (with sa's address: eu dials it) and at us (none: sa dials us),
    // both exchange messages with sa.
    neu.net.add_member(sa.member()).await;
    let mut no_addr = sa.member();
    no_addr.addrs.clear();
    nus.net.add_member(no_addr).await;
    neu.wait_connected(&[sa.region]).await;
    nus.wait_connected(&[sa.region]).await;
    nsa.wait_connected(&[eu.region, us.region]).await;
    neu.net.send(sa.region, tagged(11)).await;
    assert_eq!(nsa.next_message().await.0, eu.region);
    nsa.net.send(us.region, tagged(12)).await;
    let (from, tag, _) = nus.next_message().await;
    assert_eq!((from, tag), (sa.region, 12));

    // Adding a known region again (or this region itself) changes nothing.
    neu.net.add_member(us.member()).await;
    neu.net.add_member(eu.member()).await;
    nsa.net.send(eu.region, tagged(13)).await;
    let (from, tag, _) = neu.next_message().await;
    assert_eq!((from, tag), (sa.region, 13));
    assert_eq!(neu.net.connected(), BTreeSet::from([us.region, sa.region]));
}

/// A fast-lane message to a member not yet connected (just after start) is held and sent
/// when the member connects; a replication send is dropped (anti-entropy repairs it); beyond
/// `HELD_MESSAGES_MAX` the oldest held are dropped and counted.
#[tokio::test]
async fn fast_lane_messages_to_a_member_not_yet_connected_go_on_connect() {
    let eu = Spec::new("eu");
    let us = Spec::new("us");
    let members = vec![eu.clone(), us.clone()];
    let neu = start(&eu, &members, "test");
    // us is not up: eu's dials fail. Two more than the bound: the two oldest go.
    let sent = wallet_p2p::HELD_MESSAGES_MAX as u32 + 2;
    for i in 0..sent {
        neu.net.send_now(us.region, tagged(i)).await;
    }
    neu.net.send(us.region, tagged(sent)).await;
    wait_until(
        "the replication send and the two oldest held counted",
        || neu.net.stats().dropped_messages == 3,
    )
    .await;
    assert_eq!(neu.net.stats().messages_sent, 0);

    let mut nus = start(&us, &members, "test");
    let got = nus
        .fast_messages(eu.region, wallet_p2p::HELD_MESSAGES_MAX)
        .await;
    assert_eq!(got, (2..sent).collect::<Vec<u32>>());
    wait_until("eu's held messages acknowledged", || {
        neu.net.stats().messages_sent == wallet_p2p::HELD_MESSAGES_MAX as u64
    })
    .await;
    assert_eq!(neu.net.stats().dropped_messages, 3);
}

/// A burst on the fast lane, more requests than a connection takes streams at once
/// (`STREAMS_PER_CONNECTION_MAX`), while replication batches flow both ways: every message
/// arrives (at most `FAST_IN_FLIGHT_MAX` fast-lane requests in flight, the rest batched).
#[tokio::test]
async fn a_burst_on_the_fast_lane_arrives_whole() {
    let (specs, mut n) = cluster(&["eu", "us"]).await;
    let (eu, us) = (specs[0].region, specs[1].region);
    const BURST: u32 = 300;
    for i in 0..BURST {
        n[0].net.send_now(us, tagged(i)).await;
        n[1].net.send(eu, tagged(10_000 + i)).await;
        n[0].net.send(us, tagged(20_000 + i)).await;
    }
    let got = n[1].fast_messages(eu, 2 * BURST as usize).await;
    let want: Vec<u32> = (0..BURST).chain(20_000..20_000 + BURST).collect();
    assert_eq!(got, want);
    let back = n[0].fast_messages(us, BURST as usize).await;
    assert_eq!(back, (10_000..10_000 + BURST).collect::<Vec<u32>>());
    assert_eq!(n[0].net.stats().dropped_messages, 0);
    assert_eq!(n[1].net.stats().dropped_messages, 0);
}
