//! Helpers for the real-socket tests: members on 127.0.0.1, bounded waits.
#![allow(dead_code)]

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use tokio::sync::mpsc;
use tokio::time::timeout;
use wallet_core::{Message, RegionId};
use wallet_p2p::{peer_id_of, spawn, MemberAddr, NetConfig, NetEvent, NetHandle};

/// Upper bound of every wait; generous for a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn region(name: &str) -> RegionId {
    RegionId::new(name).unwrap()
}

/// A port that was free a moment ago (bound on 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn tcp(port: u16) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
}

/// A member's identity and address.
#[derive(Clone)]
pub struct Spec {
    pub region: RegionId,
    pub key: Keypair,
    pub port: u16,
}

impl Spec {
    pub fn new(name: &str) -> Spec {
        Spec {
            region: region(name),
            key: Keypair::generate_ed25519(),
            port: free_port(),
        }
    }

    pub fn member(&self) -> MemberAddr {
        MemberAddr {
            region: self.region,
            peer_id: peer_id_of(&self.key),
            addrs: vec![tcp(self.port)],
        }
    }
}

pub struct Node {
    pub region: RegionId,
    pub net: NetHandle,
    pub rx: mpsc::Receiver<NetEvent>,
}

/// Starts `me` with `members` as its member list (it may be in it).
pub fn start(me: &Spec, members: &[Spec], cluster: &str) -> Node {
    start_with_budget(me, members, cluster, wallet_p2p::PEER_INBOUND_BYTES_DEFAULT)
}

/// [`start`] with an inbound budget of `peer_inbound_bytes_max` per peer.
pub fn start_with_budget(
    me: &Spec,
    members: &[Spec],
    cluster: &str,
    peer_inbound_bytes_max: usize,
) -> Node {
    let cfg = NetConfig {
        region: me.region,
        keypair: me.key.clone(),
        listen: vec![tcp(me.port)],
        members: members.iter().map(Spec::member).collect(),
        cluster: cluster.into(),
        peer_inbound_bytes_max,
    };
    let (net, rx) = spawn(cfg).unwrap();
    Node {
        region: me.region,
        net,
        rx,
    }
}

/// Starts every spec as a member of one cluster, and waits until all are connected.
pub async fn cluster(names: &[&str]) -> (Vec<Spec>, Vec<Node>) {
    let specs: Vec<Spec> = names.iter().map(|n| Spec::new(n)).collect();
    let mut nodes: Vec<Node> = specs.iter().map(|s| start(s, &specs, "test")).collect();
    for n in &mut nodes {
        let others: Vec<RegionId> = specs
            .iter()
            .map(|s| s.region)
            .filter(|r| *r != n.region)
            .collect();
        n.wait_connected(&others).await;
    }
    (specs, nodes)
}

/// A message carrying a tag (a pull with `limit` = tag).
pub fn tagged(tag: u32) -> Message {
    Message::Pull {
        vv: Default::default(),
        limit: tag,
    }
}

pub fn tag_of(m: &Message) -> u32 {
    match m {
        Message::Pull { limit, .. } => *limit,
        other => panic!("unexpected message {other:?}"),
    }
}

impl Node {
    pub async fn next_event(&mut self) -> NetEvent {
        timeout(WAIT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no event within {WAIT:?}", self.region))
            .expect("transport stopped")
    }

    /// The next message, skipping connection events: (from, tag, bytes).
    pub async fn next_message(&mut self) -> (RegionId, u32, usize) {
        loop {
            if let NetEvent::Message { from, msg, bytes } = self.next_event().await {
                assert_eq!(bytes, wallet_core::wire::encode_message(&msg).len());
                return (from, tag_of(&msg), bytes);
            }
        }
    }

    /// The tags of the next `count` messages, all from `from`, sorted (fast-lane batches
    /// in flight together may arrive in either order); connection events are skipped.
    pub async fn fast_messages(&mut self, from: RegionId, count: usize) -> Vec<u32> {
        let mut got = Vec::with_capacity(count);
        while got.len() < count {
            if let NetEvent::Message { from: f, msg, .. } = self.next_event().await {
                assert_eq!(f, from, "{}: a message from {f}", self.region);
                got.push(tag_of(&msg));
            }
        }
        got.sort_unstable();
        got
    }

    /// Waits for `Connected` of each region (other events in between are ignored).
    pub async fn wait_connected(&mut self, regions: &[RegionId]) {
        let mut left: Vec<RegionId> = regions.to_vec();
        while !left.is_empty() {
            if let NetEvent::Connected(r) = self.next_event().await {
                left.retain(|x| *x != r);
            }
        }
    }

    /// Waits for `Disconnected` of each region.
    pub async fn wait_disconnected(&mut self, regions: &[RegionId]) {
        let mut left: Vec<RegionId> = regions.to_vec();
        while !left.is_empty() {
            match self.next_event().await {
                NetEvent::Disconnected(r) => left.retain(|x| *x != r),
                NetEvent::Message { from, msg, .. } => {
                    panic!("{}: unexpected message {msg:?} from {from}", self.region)
                }
                NetEvent::Connected(_) => {}
            }
        }
    }
}

/// Polls a condition every 10 ms until it holds (panics after [`WAIT`]).
pub async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let poll = async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    if timeout(WAIT, poll).await.is_err() {
        panic!("timed out waiting for {what}");
    }
}
