//! Transport figures on 127.0.0.1 (two members in one process): time to connect, round-trip
//! latency of a small message, throughput of small pushes and of large event batches, and
//! the time to reconnect after a restart.
//!
//! `cargo run -p wallet-p2p --example transport_bench [--release]`

use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::Multiaddr;
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use wallet_core::wire::encode_message;
use wallet_core::*;
use wallet_p2p::{peer_id_of, spawn, MemberAddr, NetConfig, NetEvent, NetHandle};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const WAIT: Duration = Duration::from_secs(30);

struct Member {
    region: RegionId,
    key: Keypair,
    addr: Multiaddr,
}

fn member(name: &str) -> Res<Member> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(Member {
        region: RegionId::new(name)?,
        key: Keypair::generate_ed25519(),
        addr: format!("/ip4/127.0.0.1/tcp/{port}").parse()?,
    })
}

fn start(me: &Member, all: &[&Member]) -> Res<(NetHandle, Receiver<NetEvent>)> {
    Ok(spawn(NetConfig {
        region: me.region,
        keypair: me.key.clone(),
        listen: vec![me.addr.clone()],
        members: all
            .iter()
            .map(|m| MemberAddr {
                region: m.region,
                peer_id: peer_id_of(&m.key),
                addrs: vec![m.addr.clone()],
            })
            .collect(),
        cluster: "bench".into(),
        peer_inbound_bytes_max: wallet_p2p::PEER_INBOUND_BYTES_DEFAULT,
    })?)
}

async fn next_message(rx: &mut Receiver<NetEvent>) -> Res<Message> {
    loop {
        match timeout(WAIT, rx.recv()).await? {
            Some(NetEvent::Message { msg, .. }) => return Ok(msg),
            Some(_) => {}
            None => return Err("transport stopped".into()),
        }
    }
}

async fn wait_connected(rx: &mut Receiver<NetEvent>) -> Res<()> {
    loop {
        match timeout(WAIT, rx.recv()).await? {
            Some(NetEvent::Connected(_)) => return Ok(()),
            Some(_) => {}
            None => return Err("transport stopped".into()),
        }
    }
}

fn pull(tag: u32) -> Message {
    Message::Pull {
        vv: Default::default(),
        limit: tag,
    }
}

/// `n` signed-size events (an unsigned deposit repeated; size is what matters here).
fn events(n: usize) -> Res<Vec<Event>> {
    let eu = RegionId::new("eu")?;
    let policy = Policy::from_toml("[default]\naction = \"reverse\"\n")?;
    let mut r = Replica::new(Config::new(eu, vec![eu], policy), Hlc::ZERO);
    r.submit(
        1_000,
        TxRequest {
            account: AccountId::new("alice")?,
            kind: Kind::Deposit,
            amount: Amount::parse("10.00", Currency::USD)?,
            currency: Currency::USD,
            idempotency_key: Some("bench-0001".into()),
            reference: Some("order 0001".into()),
        },
    )?;
    while let Some(o) = r.poll_output() {
        if let Output::Persist {
            record: Record::Event(mut e),
            ..
        } = o
        {
            e.sig = vec![7u8; 64].into();
            return Ok(vec![e; n]);
        }
    }
    Err("no event".into())
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let (a, b) = (member("eu")?, member("us")?);
    let t0 = Instant::now();
    let (na, mut ra) = start(&a, &[&a, &b])?;
    let (nb, mut rb) = start(&b, &[&a, &b])?;
    wait_connected(&mut ra).await?;
    wait_connected(&mut rb).await?;
    println!("connect (2 members, tcp+noise+yamux): {:?}", t0.elapsed());

    // Round trips of a small message.
    let mut rtts = Vec::new();
    for i in 0..500 {
        let t = Instant::now();
        na.send(b.region, pull(i)).await;
        next_message(&mut rb).await?;
        nb.send(a.region, pull(i)).await;
        next_message(&mut ra).await?;
        rtts.push(t.elapsed());
    }
    println!(
        "round trip, small message ({} B), 500 samples: p50 {:?} p99 {:?} max {:?}",
        encode_message(&pull(1)).len(),
        pct(&mut rtts, 50),
        pct(&mut rtts, 99),
        pct(&mut rtts, 100)
    );

    // Many small pushes, in windows of 2048 (below the per-peer queue bound of
    // QUEUE_MESSAGES_MAX, beyond which the oldest pushes are dropped by design).
    let n = 50_000u32;
    let window = 2048u32;
    let t = Instant::now();
    let mut sent = 0;
    while sent < n {
        let w = window.min(n - sent);
        for i in 0..w {
            na.send(b.region, pull(sent + i)).await;
        }
        for _ in 0..w {
            next_message(&mut rb).await?;
        }
        sent += w;
    }
    let el = t.elapsed();
    println!(
        "small pushes: {n} messages in {el:?} = {:.0} msg/s (dropped: {})",
        f64::from(n) / el.as_secs_f64(),
        na.stats().dropped_messages
    );

    // Large event batches (anti-entropy answers).
    for batch in [1024usize, 16_384] {
        let msg = Message::Events(events(batch)?);
        let size = encode_message(&msg).len();
        let rounds = 20;
        let t = Instant::now();
        for _ in 0..rounds {
            na.send(b.region, msg.clone()).await;
        }
        for _ in 0..rounds {
            next_message(&mut rb).await?;
        }
        let el = t.elapsed();
        let bytes = (size * rounds) as f64;
        println!(
            "event batches: {rounds} x {batch} events ({size} B each) in {el:?} = {:.1} MB/s, {:.0} events/s",
            bytes / el.as_secs_f64() / 1e6,
            (batch * rounds) as f64 / el.as_secs_f64()
        );
    }

    // Restart of a member: time from its new start to Connected on the other side.
    nb.shutdown().await;
    drop((nb, rb));
    loop {
        match timeout(WAIT, ra.recv()).await? {
            Some(NetEvent::Disconnected(_)) => break,
            Some(_) => {}
            None => return Err("transport stopped".into()),
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = Instant::now();
    let (_nb, _rb) = loop {
        match start(&b, &[&a, &b]) {
            Ok(x) => break x,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    wait_connected(&mut ra).await?;
    println!(
        "reconnect after a 3 s outage (backoff 250 ms doubling to 5 s): {:?}",
        t.elapsed()
    );
    let s = na.stats();
    println!(
        "eu stats: sent {} msgs / {} B, received {} msgs / {} B, refused {}, dropped {}",
        s.messages_sent,
        s.bytes_sent,
        s.messages_received,
        s.bytes_received,
        s.refused_peers,
        s.dropped_messages
    );
    Ok(())
}
