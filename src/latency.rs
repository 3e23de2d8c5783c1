//! A delaying TCP proxy for the real-network fault harness (issue 15; used only by
//! [`crate::cluster::LocalCluster`] with [`crate::netns`]): the kernel here has no netem, so
//! inter-region latency and jitter are added by relaying every libp2p TCP connection through
//! a proxy that holds each chunk of bytes for a delay before passing it on.
//!
//! One proxy per ordered pair of regions (dialler `i`, target `j`): it listens on
//! `127.0.0.1:<port>` *inside `i`'s namespace* and connects, again from `i`'s namespace, to
//! `j`'s region-network address. So the relayed traffic still leaves through `i`'s bridge port
//! and every link-down, one-way and bridge partition of [`crate::netns::NetnsFabric`] applies
//! to it unchanged. Region `i`'s config names the proxy as member `j`'s address
//! ([`crate::cluster::LocalCluster::route_through_proxies`]); each connection is delayed once
//! in each direction (a connection `j` dials goes through `j`'s proxy to `i`).
//!
//! Only TCP is relayed: the configs `init` writes listen and dial on `/tcp` addresses only, so
//! QUIC (compiled in, never configured) is not used around the proxy.
//!
//! Sockets are created in a namespace by a short-lived thread that enters it
//! (`setns(CLONE_NEWNET)`); a socket stays in the namespace it was created in, so the proxy
//! tasks run on the caller's tokio runtime. The delay is `delay ± jitter` per chunk, drawn
//! from a seeded RNG, and never reorders bytes (a chunk leaves no earlier than the previous
//! one). Delay and jitter can be changed while the proxy runs ([`Latency`]).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Default one-way delay, ms.
pub const DELAY_MS_DEFAULT: u64 = 50;
/// Default jitter (± around the delay), ms.
pub const JITTER_MS_DEFAULT: u64 = 10;
/// Largest chunk read at once.
const CHUNK_BYTES_MAX: usize = 16 * 1024;
/// Chunks in flight per direction (back-pressure beyond this).
const CHUNKS_IN_FLIGHT_MAX: usize = 256;
/// Pause after a failed accept.
const ACCEPT_RETRY_MS: u64 = 50;
/// Connect time-out of the proxy's outgoing connection.
const CONNECT_TIMEOUT_MS: u64 = 2_000;

/// What can go wrong setting up a proxy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LatencyError {
    /// A socket or namespace operation failed.
    #[error("latency proxy: {0}")]
    Io(String),
    /// No tokio runtime to run the proxy on.
    #[error("latency proxy: needs a tokio runtime: {0}")]
    Runtime(String),
}

/// The delay settings shared by every proxy of a cluster; change them at any time.
#[derive(Debug)]
pub struct Latency {
    delay_ms: AtomicU64,
    jitter_ms: AtomicU64,
    seed: u64,
}

impl Latency {
    /// `delay_ms ± jitter_ms` each way; `seed` seeds every proxy's RNG.
    pub fn new(delay_ms: u64, jitter_ms: u64, seed: u64) -> Arc<Latency> {
        Arc::new(Latency {
            delay_ms: AtomicU64::new(delay_ms),
            jitter_ms: AtomicU64::new(jitter_ms),
            seed,
        })
    }

    /// Sets the delay and jitter of every chunk from now on.
    pub fn set(&self, delay_ms: u64, jitter_ms: u64) {
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
        self.jitter_ms.store(jitter_ms, Ordering::Relaxed);
    }

    /// The current (delay, jitter), ms.
    pub fn get(&self) -> (u64, u64) {
        (
            self.delay_ms.load(Ordering::Relaxed),
            self.jitter_ms.load(Ordering::Relaxed),
        )
    }

    fn draw(&self, rng: &mut StdRng) -> Duration {
        let (d, j) = self.get();
        let lo = d.saturating_sub(j);
        let hi = d.saturating_add(j);
        Duration::from_millis(if hi > lo { rng.gen_range(lo..=hi) } else { d })
    }
}

/// The path of a named network namespace (`ip netns add`).
fn ns_path(ns: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(ns)
}

/// Runs `f` on a new thread that has entered namespace `ns` (sockets it creates stay there).
fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, LatencyError> {
    let path = ns_path(ns);
    let h = std::thread::spawn(move || -> Result<T, LatencyError> {
        let file = std::fs::File::open(&path)
            .map_err(|e| LatencyError::Io(format!("{}: {e}", path.display())))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| LatencyError::Io(format!("setns {}: {e}", path.display())))?;
        f().map_err(|e| LatencyError::Io(e.to_string()))
    });
    h.join()
        .map_err(|_| LatencyError::Io("namespace thread panicked".into()))?
}

/// One running proxy: listens in a namespace, relays to a target with a delay.
#[derive(Debug)]
pub struct DelayProxy {
    /// Where it listens (inside the dialler's namespace).
    pub listen: SocketAddr,
    /// Where it relays to.
    pub target: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// Starts a proxy listening on `127.0.0.1:0` in namespace `ns` that relays to `target`
    /// (connecting from `ns`), on the current tokio runtime. `tag` varies the RNG seed.
    pub fn start(
        ns: &str,
        target: SocketAddr,
        latency: Arc<Latency>,
        tag: u64,
    ) -> Result<DelayProxy, LatencyError> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|e| LatencyError::Runtime(e.to_string()))?;
        let std_listener = in_namespace(ns, || {
            let l = std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let listen = std_listener
            .local_addr()
            .map_err(|e| LatencyError::Io(e.to_string()))?;
        let ns = ns.to_string();
        let _guard = rt.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener)
            .map_err(|e| LatencyError::Io(e.to_string()))?;
        let task = rt.spawn(accept_loop(listener, ns, target, latency, tag));
        Ok(DelayProxy {
            listen,
            target,
            task,
        })
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    ns: String,
    target: SocketAddr,
    latency: Arc<Latency>,
    tag: u64,
) {
    let mut conn = 0u64;
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors or the like: do not spin.
            tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
            continue;
        };
        conn += 1;
        let seed = latency
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(tag.wrapping_mul(10_007))
            .wrapping_add(conn);
        let ns = ns.clone();
        let latency = latency.clone();
        tokio::spawn(async move {
            let ns2 = ns.clone();
            // A blocking connect from inside the namespace, off the runtime's threads.
            let out = tokio::task::spawn_blocking(move || {
                in_namespace(&ns2, move || {
                    let s = std::net::TcpStream::connect_timeout(
                        &target,
                        Duration::from_millis(CONNECT_TIMEOUT_MS),
                    )?;
                    s.set_nonblocking(true)?;
                    s.set_nodelay(true)?;
                    Ok(s)
                })
            })
            .await;
            let Ok(Ok(out)) = out else {
                return; // target unreachable: the dialler sees the connection close
            };
            let Ok(outbound) = tokio::net::TcpStream::from_std(out) else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            relay(inbound, outbound, latency, seed).await;
        });
    }
}

/// Relays both directions with a delay until either side closes.
async fn relay(
    a: tokio::net::TcpStream,
    b: tokio::net::TcpStream,
    latency: Arc<Latency>,
    seed: u64,
) {
    let (ar, aw) = a.into_split();
    let (br, bw) = b.into_split();
    let up = one_way(ar, bw, latency.clone(), seed);
    let down = one_way(br, aw, latency, seed ^ 0x9e37_79b9_7f4a_7c15);
    // When one direction ends, the other is dropped too (the connection is gone).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn one_way(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    latency: Arc<Latency>,
    seed: u64,
) {
    let (tx, mut rx) = mpsc::channel::<(tokio::time::Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT_MAX);
    let reader = async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut last = tokio::time::Instant::now();
        let mut buf = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let Some(chunk) = buf.get(..n) else { return };
            // Never earlier than the chunk before: jitter delays, it does not reorder.
            let due = (tokio::time::Instant::now() + latency.draw(&mut rng)).max(last);
            last = due;
            if tx.send((due, chunk.to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    // The writer finishes what the reader queued (then shuts its side down).
    let (_, ()) = tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_stays_within_jitter() {
        let l = Latency::new(50, 10, 7);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let d = l.draw(&mut rng).as_millis();
            assert!((40..=60).contains(&d), "{d}");
        }
        l.set(5, 0);
        assert_eq!(l.draw(&mut rng).as_millis(), 5);
        l.set(3, 10);
        let d = l.draw(&mut rng).as_millis();
        assert!(d <= 13, "{d}");
    }
}
