//! libp2p transport for wallet regions.
//!
//! TCP (and QUIC) with noise and yamux; only configured members may connect (allowlist of
//! peer ids); replica messages travel on a direct request-response stream per member
//! (`/wallet/<cluster>/msg/1`, length-prefixed frames with hard limits, see [`codec`]); the
//! sender of a delivered message is the region of the authenticated peer id of the connection.
//! Members that go away are redialed with exponential backoff. `set_isolated` cuts traffic for
//! fault injection. See docs/protocol.md.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use libp2p::identity::Keypair;
pub use libp2p::metrics::Registry;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use wallet_core::auth::VerifiedRoots;
use wallet_core::wire::{encode_message, MESSAGE_BYTES_MAX};
use wallet_core::{Authenticator, KeyHistory, Message, RegionId};

pub mod codec;
mod net;

use net::{Command, Shared};
pub use net::{
    BACKOFF_INITIAL, BACKOFF_MAX, CONNECTIONS_PER_PEER_MAX, FAST_IN_FLIGHT_MAX, HELD_AGE_MAX,
    HELD_BYTES_MAX, HELD_MESSAGES_MAX, PEER_INBOUND_BYTES_DEFAULT, PEER_INBOUND_BYTES_MAX,
    PENDING_INCOMING_MAX, QUEUE_BYTES_MAX, QUEUE_MESSAGES_MAX, STREAMS_PER_CONNECTION_MAX,
};

/// One configured member region.
#[derive(Debug, Clone)]
pub struct MemberAddr {
    /// Region id.
    pub region: RegionId,
    /// Its libp2p peer id (ed25519: embeds the public key).
    pub peer_id: PeerId,
    /// Where to dial it.
    pub addrs: Vec<Multiaddr>,
}

/// Transport configuration.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// This region.
    pub region: RegionId,
    /// This region's identity.
    pub keypair: Keypair,
    /// Where to listen.
    pub listen: Vec<Multiaddr>,
    /// The other members (this region may be included; it is skipped).
    pub members: Vec<MemberAddr>,
    /// Cluster id (part of the protocol name, so clusters never talk to each other).
    pub cluster: String,
    /// Inbound budget of each peer, bytes: the frames a peer sends count against it from
    /// the moment their headers announce them until the transport has decoded them; a batch
    /// that does not fit is refused (reset, counted in [`NetStats::over_budget_batches`])
    /// and the peer's sender retries later (anti-entropy). Split evenly over the peer's
    /// connections (at most [`CONNECTIONS_PER_PEER_MAX`]). Below
    /// `CONNECTIONS_PER_PEER_MAX × MESSAGE_BYTES_MAX` ([`PEER_INBOUND_BYTES_DEFAULT`]) a
    /// member's largest legitimate batch may not fit.
    pub peer_inbound_bytes_max: usize,
}

/// Transport errors at start-up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Listening or building the swarm failed.
    #[error("p2p transport: {0}")]
    Transport(String),
    /// Key file problems.
    #[error("identity key {path}: {reason}")]
    Key {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What the transport tells the node.
// Nearly every event is a `Message`: boxing it to shrink the rare connection events would
// cost an allocation per message received.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum NetEvent {
    /// A message from an authenticated member.
    Message {
        /// The member it came from (authenticated connection).
        from: RegionId,
        /// The message.
        msg: Message,
        /// Its encoded size.
        bytes: usize,
    },
    /// A member connected (or reconnected): time for anti-entropy.
    Connected(RegionId),
    /// A member disconnected.
    Disconnected(RegionId),
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetStats {
    /// Bytes of messages sent.
    pub bytes_sent: u64,
    /// Bytes of messages received.
    pub bytes_received: u64,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Connections refused because the peer is not a member (or an address answered with a
    /// key that is not the expected member's).
    pub refused_peers: u64,
    /// Inbound connections refused by the connection limits (pending handshakes, per peer,
    /// total), before any handshake work.
    pub limited_connections: u64,
    /// Messages dropped: malformed, oversized, while isolated, oldest of an overflowing
    /// per-peer queue or of the fast-lane messages held for a member not connected (or held
    /// too long), or undeliverable (replication to a peer not connected, connection lost,
    /// not acknowledged in time). Anti-entropy repairs every gap this leaves.
    pub dropped_messages: u64,
    /// Inbound batches refused because their peer's connection was over its inbound budget
    /// ([`NetConfig::peer_inbound_bytes_max`]).
    pub over_budget_batches: u64,
}

/// Handle to the running transport. Cheap to clone. The transport stops when every handle
/// is dropped, or on [`NetHandle::shutdown`].
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl NetHandle {
    /// Encodes a message; refuses (and counts) one over the wire limit.
    fn encode(&self, msg: &Message) -> Option<Arc<Vec<u8>>> {
        let bytes = encode_message(msg);
        if bytes.len() > MESSAGE_BYTES_MAX {
            tracing::warn!(
                bytes = bytes.len(),
                limit = MESSAGE_BYTES_MAX,
                "outgoing message over the limit: dropped"
            );
            self.shared.dropped(1);
            return None;
        }
        Some(Arc::new(bytes))
    }

    async fn command(&self, c: Command, messages: usize) {
        if self.tx.send(c).await.is_err() {
            // The transport has stopped.
            self.shared.dropped(messages);
        }
    }

    /// Sends to every connected member (dropped for isolated ones).
    pub async fn broadcast(&self, msg: Message) {
        if let Some(bytes) = self.encode(&msg) {
            self.command(Command::Broadcast(bytes), 1).await;
        }
    }
    /// Sends to one member.
    pub async fn send(&self, to: RegionId, msg: Message) {
        if let Some(bytes) = self.encode(&msg) {
            self.command(Command::Send(to, bytes), 1).await;
        }
    }
    /// Sends to one member at once, as a request of its own: not queued behind the member's
    /// replication batches (one at a time), so not ordered with them. For the messages a
    /// client waits for (the consistency modes' forwards and their answers), whose order
    /// does not matter. At most `FAST_IN_FLIGHT_MAX` such requests are in flight per member;
    /// beyond that, and to a member not connected, it is held (bounded, for at most
    /// `HELD_AGE_MAX`) and goes with the next fast-lane batch; dropped while isolated.
    pub async fn send_now(&self, to: RegionId, msg: Message) {
        if let Some(bytes) = self.encode(&msg) {
            self.command(Command::Now(Some(to), bytes), 1).await;
        }
    }
    /// [`Self::send_now`] to every member (an escrow rights request, an own event under
    /// `ack = "peer"`).
    pub async fn broadcast_now(&self, msg: Message) {
        if let Some(bytes) = self.encode(&msg) {
            self.command(Command::Now(None, bytes), 1).await;
        }
    }
    /// Fault injection: stop exchanging traffic with these regions (this region's own id in
    /// the set cuts it off from all). An empty set heals.
    pub async fn set_isolated(&self, regions: BTreeSet<RegionId>) {
        self.command(Command::Isolate(regions), 0).await;
    }
    /// A retired member (its cut known): stop dialing it and refuse its connections.
    pub async fn remove_member(&self, region: RegionId) {
        self.command(Command::Remove(region), 0).await;
    }
    /// A member that joined (a join the replica applied): allow its connections and dial
    /// it. Nothing changes for a region or peer id already known.
    pub async fn add_member(&self, member: MemberAddr) {
        self.command(Command::Add(member), 0).await;
    }
    /// Members currently connected.
    pub fn connected(&self) -> BTreeSet<RegionId> {
        self.shared.connected()
    }
    /// Counters.
    pub fn stats(&self) -> NetStats {
        self.shared.stats()
    }
    /// The addresses the transport listens on so far (known once the listeners are up; with
    /// port 0 this is how to learn the port).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.listen_addrs()
    }
    /// Stops the transport: listeners and connections close.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown).await;
    }
    /// Fault injection for tests: writes `bytes` verbatim as a request on a new stream to a
    /// member (see [`codec`] for the framing the receiver expects).
    #[doc(hidden)]
    pub async fn send_raw_frame(&self, to: RegionId, bytes: Vec<u8>) {
        self.command(Command::Raw(to, bytes), 0).await;
    }
}

/// Starts the transport on the current tokio runtime: listens on `cfg.listen` and dials every
/// member. Fails outside a tokio runtime, on a bad listen address or a duplicate member. Its
/// metrics go nowhere: see [`spawn_with_metrics`].
pub fn spawn(cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    net::start(cfg, &mut Registry::default())
}

/// [`spawn`], registering the transport's metrics in `registry`: libp2p's own
/// (`libp2p_swarm_*`: connections, dials and their errors; `libp2p_ping_*`: round trips and
/// failures; `libp2p_bandwidth_bytes_total` by transport and direction) and the
/// request-response outcomes (`walletd_p2p_requests_total{direction,outcome}`,
/// `walletd_p2p_batch_duration_seconds`). The [`NetStats`] counters stay where they are.
pub fn spawn_with_metrics(
    cfg: NetConfig,
    registry: &mut Registry,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    net::start(cfg, registry)
}

/// Loads an ed25519 identity from a file (protobuf encoding), or creates one there.
pub fn load_or_create_keypair(path: &Path) -> Result<Keypair, NetError> {
    let kerr = |reason: String| NetError::Key {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| kerr(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let kp = Keypair::generate_ed25519();
            let bytes = kp.to_protobuf_encoding().map_err(|e| kerr(e.to_string()))?;
            write_private(path, &bytes).map_err(|e| kerr(e.to_string()))?;
            Ok(kp)
        }
        Err(e) => Err(kerr(e.to_string())),
    }
}

/// Signs events with this region's ed25519 key and verifies members' signatures with the
/// public keys embedded in their peer ids, or, after a key change (a join or a rotation the
/// replica applied, [`Authenticator::set_key`]), with the key valid at the event's HLC
/// ([`KeyHistory`]). This region signs with a rotated key once the replica has applied the
/// rotation event binding it (the key is staged first, [`KeyStage`]).
pub struct Ed25519Auth {
    keypair: Keypair,
    members: Vec<(RegionId, libp2p::identity::PublicKey)>,
    history: KeyHistory,
    staged: KeyStage,
    /// Batch roots verified (one signature check per batch of events).
    roots: VerifiedRoots,
}

/// A key staged for this region's next rotation, shared between the node and its
/// authenticator: the authenticator signs with it from the moment the replica applies the
/// rotation event whose key it is.
#[derive(Clone, Default)]
pub struct KeyStage(Arc<std::sync::Mutex<Option<Keypair>>>);

impl KeyStage {
    /// Stages `keypair`.
    pub fn stage(&self, keypair: Keypair) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(keypair);
    }

    fn take_if(&self, public: &[u8]) -> Option<Keypair> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref()
            .is_some_and(|k| k.public().encode_protobuf() == public)
        {
            g.take()
        } else {
            None
        }
    }
}

/// The bytes a membership event carries as a region's key: the protobuf encoding of its
/// ed25519 public key.
pub fn membership_key_of(keypair: &Keypair) -> Vec<u8> {
    keypair.public().encode_protobuf()
}

/// The ed25519 public key embedded in a peer id (identity multihash of the protobuf-encoded
/// key), if it embeds one.
pub fn ed25519_public_key_of(peer: &PeerId) -> Option<libp2p::identity::PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = peer.as_ref();
    // Multihash code 0 is "identity": the digest is the key itself.
    if mh.code() != 0 {
        return None;
    }
    let pk = libp2p::identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    let ed = pk.clone().try_into_ed25519().ok()?;
    let pk = libp2p::identity::PublicKey::from(ed);
    (pk.to_peer_id() == *peer).then_some(pk)
}

impl Ed25519Auth {
    /// From this region's keypair and the members' peer ids. Fails if a peer id does not
    /// embed its public key (only ed25519 ids do), or if the keypair is not ed25519.
    pub fn new(keypair: Keypair, members: &[(RegionId, PeerId)]) -> Result<Ed25519Auth, NetError> {
        if keypair.key_type() != libp2p::identity::KeyType::Ed25519 {
            return Err(NetError::Key {
                path: "own keypair".into(),
                reason: format!("{:?} key, expected ed25519", keypair.key_type()),
            });
        }
        let mut out = Vec::new();
        for (r, p) in members {
            let pk = ed25519_public_key_of(p).ok_or_else(|| NetError::Key {
                path: format!("peer id of {r}"),
                reason: format!("{p} does not embed an ed25519 public key"),
            })?;
            out.push((*r, pk));
        }
        Ok(Ed25519Auth {
            keypair,
            members: out,
            history: KeyHistory::new(),
            staged: KeyStage::default(),
            roots: VerifiedRoots::new(),
        })
    }

    /// The stage through which a rotated key reaches this authenticator.
    pub fn key_stage(&self) -> KeyStage {
        self.staged.clone()
    }

    /// The public key this region signs with now.
    pub fn signing_key(&self) -> Vec<u8> {
        membership_key_of(&self.keypair)
    }
}

impl Authenticator for Ed25519Auth {
    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        self.keypair.sign(bytes).unwrap_or_default()
    }
    fn verify(&self, origin: RegionId, bytes: &[u8], sig: &[u8]) -> bool {
        self.members
            .iter()
            .find(|(r, _)| *r == origin)
            .is_some_and(|(_, pk)| pk.verify(bytes, sig))
    }
    fn verify_at(&self, origin: RegionId, hlc: wallet_core::Hlc, bytes: &[u8], sig: &[u8]) -> bool {
        match self.history.at(origin, hlc) {
            Some(k) => libp2p::identity::PublicKey::try_decode_protobuf(k)
                .is_ok_and(|pk| pk.verify(bytes, sig)),
            // Below any key change: the key the member was configured with.
            None => self.verify(origin, bytes, sig),
        }
    }
    fn verify_root(
        &self,
        origin: RegionId,
        hlc: wallet_core::Hlc,
        bytes: &[u8],
        sig: &[u8],
    ) -> bool {
        // The key checked against: the one valid at the HLC, or the configured one below any
        // key change (its protobuf bytes); a cache hit means this key verified this root.
        let key = match self.history.at(origin, hlc) {
            Some(k) => k.to_vec(),
            None => match self.members.iter().find(|(r, _)| *r == origin) {
                Some((_, pk)) => pk.encode_protobuf(),
                None => return false,
            },
        };
        self.roots
            .verify(&key, bytes, sig, || self.verify_at(origin, hlc, bytes, sig))
    }
    fn set_key(&mut self, region: RegionId, from: wallet_core::Hlc, key: &[u8]) {
        self.history.set(region, from, key);
        if let Some(kp) = self.staged.take_if(key) {
            tracing::info!(%region, "signing with the rotated key from now on");
            self.keypair = kp;
        }
    }
}

/// Maps a key file's public key to its peer id.
pub fn peer_id_of(keypair: &Keypair) -> PeerId {
    keypair.public().to_peer_id()
}

/// The file a rotated signing key is kept in, next to the identity key.
pub fn rotated_key_path(identity_key: &Path) -> std::path::PathBuf {
    let mut name = identity_key.as_os_str().to_owned();
    name.push(".rotated");
    std::path::PathBuf::from(name)
}

/// Loads a rotated signing key if the file exists.
pub fn load_rotated_key(path: &Path) -> Result<Option<Keypair>, NetError> {
    let kerr = |reason: String| NetError::Key {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map(Some)
            .map_err(|e| kerr(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(kerr(e.to_string())),
    }
}

/// Writes `keypair` to `path` (0600), replacing what is there atomically (a temporary file,
/// synced, renamed over it, the directory synced). Returns the bytes it replaced, if any.
pub fn replace_key_file(path: &Path, keypair: &Keypair) -> Result<Option<Vec<u8>>, NetError> {
    let kerr = |reason: String| NetError::Key {
        path: path.display().to_string(),
        reason,
    };
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| kerr(e.to_string()))?;
    let old = match std::fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(kerr(e.to_string())),
    };
    write_key_bytes(path, &bytes).map_err(|e| kerr(e.to_string()))?;
    Ok(old)
}

/// Puts back what [`replace_key_file`] replaced (`None`: removes the file).
pub fn restore_key_file(path: &Path, old: Option<&[u8]>) -> Result<(), NetError> {
    let kerr = |reason: String| NetError::Key {
        path: path.display().to_string(),
        reason,
    };
    match old {
        Some(b) => write_key_bytes(path, b).map_err(|e| kerr(e.to_string())),
        None => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(kerr(e.to_string())),
        },
    }
}

fn write_key_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_private(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes a secret file created 0600 (never readable by others, not even for an instant).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
