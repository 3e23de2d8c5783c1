//! libp2p transport for wallet regions.
//!
//! STUB: the API below is the contract between the node (`walletd`) and the transport.
//! The implementation is being written; today `spawn` returns a handle that sends nothing.

use std::collections::BTreeSet;
use std::path::Path;

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use wallet_core::{Authenticator, Message, RegionId};

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
    /// Connections refused because the peer is not a member.
    pub refused_peers: u64,
    /// Messages dropped: malformed, oversized or while isolated.
    pub dropped_messages: u64,
}

/// Handle to the running transport. Cheap to clone.
#[derive(Clone)]
pub struct NetHandle {
    _tx: mpsc::Sender<()>,
}

impl NetHandle {
    /// Sends to every connected member (dropped for isolated ones).
    pub async fn broadcast(&self, _msg: Message) {}
    /// Sends to one member.
    pub async fn send(&self, _to: RegionId, _msg: Message) {}
    /// Fault injection: stop exchanging traffic with these regions (this region's own id in
    /// the set cuts it off from all). An empty set heals.
    pub async fn set_isolated(&self, _regions: BTreeSet<RegionId>) {}
    /// Members currently connected.
    pub fn connected(&self) -> BTreeSet<RegionId> {
        BTreeSet::new()
    }
    /// Counters.
    pub fn stats(&self) -> NetStats {
        NetStats::default()
    }
}

/// Starts the transport on the current tokio runtime.
pub fn spawn(_cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let (tx, _rx) = mpsc::channel(1);
    let (_etx, erx) = mpsc::channel(1024);
    Ok((NetHandle { _tx: tx }, erx))
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
            std::fs::write(path, bytes).map_err(|e| kerr(e.to_string()))?;
            Ok(kp)
        }
        Err(e) => Err(kerr(e.to_string())),
    }
}

/// Signs events with this region's ed25519 key and verifies members' signatures with the
/// public keys embedded in their peer ids.
pub struct Ed25519Auth {
    keypair: Keypair,
    members: Vec<(RegionId, libp2p::identity::PublicKey)>,
}

impl Ed25519Auth {
    /// From this region's keypair and the members' peer ids. Fails if a peer id does not
    /// embed its public key (only ed25519 ids do).
    pub fn new(keypair: Keypair, members: &[(RegionId, PeerId)]) -> Result<Ed25519Auth, NetError> {
        let mut out = Vec::new();
        for (r, p) in members {
            let pk = libp2p::identity::PublicKey::try_decode_protobuf(&p.to_bytes()[2..])
                .map_err(|e| NetError::Key {
                    path: format!("peer id of {r}"),
                    reason: format!("{p} does not embed an ed25519 public key: {e}"),
                })?;
            out.push((*r, pk));
        }
        Ok(Ed25519Auth { keypair, members: out })
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
}

/// Maps a key file's public key to its peer id.
pub fn peer_id_of(keypair: &Keypair) -> PeerId {
    keypair.public().to_peer_id()
}
