//! Adding a region to a running cluster (SPEC §10, docs/operations.md "Add a region").
//!
//! Three pieces, the protocol rules being the core's (`Replica::join`, `is_joining`):
//! - [`JoinMeta`]: what walletd puts in a join event's opaque metadata (the new region's peer
//!   id and addresses), so that every region that applies the join allows and dials it;
//! - [`parse_join_request`]: the body of `POST /v1/admin/members`, checked (the key must be
//!   the one the peer id embeds: the transport authenticates the region by it);
//! - [`make_config`] (`walletd join`): the new region's config, written from an existing
//!   member's config (same cluster id, policy, tokens and TLS trust), with its own key, data
//!   directory, listen addresses and `join = true`, and the request to send.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use wallet_core::RegionId;
use wallet_p2p::MemberAddr;

use crate::init::{free_port, io_err, InitError, LocalCa};
use crate::secret;

/// Most addresses a join names.
pub const JOIN_ADDRS_MAX: usize = 8;

/// A join event's metadata in walletd: JSON `{"peer_id", "addrs"}` (at most
/// `wallet_core::event::MEMBERSHIP_META_MAX` bytes, checked by the core).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinMeta {
    /// The new region's libp2p peer id.
    pub peer_id: String,
    /// Where to dial it (may be empty: it dials the others).
    pub addrs: Vec<String>,
}

impl JoinMeta {
    /// The metadata bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The member to add to the transport, from a join the replica applied; `None` if the
    /// metadata is not walletd's (then the region is a member nobody dials: it dials us, and
    /// is refused until an operator adds it).
    pub fn member(region: RegionId, meta: &[u8]) -> Option<MemberAddr> {
        let m: JoinMeta = serde_json::from_slice(meta).ok()?;
        Some(MemberAddr {
            region,
            peer_id: m.peer_id.parse().ok()?,
            addrs: m.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
        })
    }
}

/// A checked `POST /v1/admin/members`.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// The new region.
    pub region: RegionId,
    /// Its peer id.
    pub peer_id: PeerId,
    /// Its public key (protobuf encoding: what the join binds).
    pub key: Vec<u8>,
    /// Where to dial it.
    pub addrs: Vec<Multiaddr>,
}

impl JoinRequest {
    /// The join event's metadata.
    pub fn meta(&self) -> JoinMeta {
        JoinMeta {
            peer_id: self.peer_id.to_string(),
            addrs: self.addrs.iter().map(|a| a.to_string()).collect(),
        }
    }
}

/// The body of `POST /v1/admin/members` (also what `walletd join` prints).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// The new region's id.
    #[schema(value_type = crate::openapi::RegionId)]
    pub region: String,
    /// Its libp2p peer id (`walletd keygen` or `walletd join` prints it).
    pub peer_id: String,
    /// Its ed25519 public key, hex of its protobuf encoding; optional: the peer id embeds
    /// it, and a key given must be that one.
    #[serde(default)]
    pub public_key: Option<String>,
    /// Its libp2p addresses (multiaddrs), where the members dial it.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// Why a join request is refused before it reaches the core: (error code, message), a 400.
pub type JoinRefusal = (&'static str, String);

/// Checks a `POST /v1/admin/members` body.
pub fn parse_join_request(bytes: &[u8]) -> Result<JoinRequest, JoinRefusal> {
    let b: JoinBody = serde_json::from_slice(bytes).map_err(|e| {
        (
            "invalid_json",
            format!(
                "expected {{\"region\", \"peer_id\", \"public_key\" (optional), \"addrs\"}}: {e}"
            ),
        )
    })?;
    let region = RegionId::new(&b.region).map_err(|e| ("invalid_region", e.to_string()))?;
    let peer_id: PeerId = b.peer_id.parse().map_err(|e| {
        (
            "invalid_peer_id",
            format!("{:?} is not a peer id: {e}", b.peer_id),
        )
    })?;
    let embedded = wallet_p2p::ed25519_public_key_of(&peer_id).ok_or_else(|| {
        (
            "invalid_key",
            format!("peer id {peer_id} does not embed an ed25519 public key"),
        )
    })?;
    let key = embedded.encode_protobuf();
    if let Some(k) = &b.public_key {
        let given =
            hex::decode(k).map_err(|e| ("invalid_key", format!("public_key is not hex: {e}")))?;
        if given != key {
            return Err((
                "invalid_key",
                format!("public_key is not the key peer id {peer_id} embeds"),
            ));
        }
    }
    if b.addrs.len() > JOIN_ADDRS_MAX {
        return Err((
            "invalid_address",
            format!("at most {JOIN_ADDRS_MAX} addresses"),
        ));
    }
    // (Their total length is checked below, against what the join can carry.)
    let mut addrs = Vec::new();
    for a in &b.addrs {
        let m: Multiaddr = a
            .parse()
            .map_err(|e| ("invalid_address", format!("{a:?} is not a multiaddr: {e}")))?;
        addrs.push(m);
    }
    let req = JoinRequest {
        region,
        peer_id,
        key,
        addrs,
    };
    let meta = req.meta().encode().len();
    if meta > wallet_core::event::MEMBERSHIP_META_MAX {
        return Err((
            "invalid_address",
            format!(
                "the addresses take {meta} bytes in the join, more than {}",
                wallet_core::event::MEMBERSHIP_META_MAX
            ),
        ));
    }
    Ok(req)
}

/// Options of `walletd join`.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    /// An existing member's config file (the cluster id, policy, tokens and TLS come from it).
    pub from: PathBuf,
    /// The new region.
    pub region: RegionId,
    /// Where the new region's files go (`<region>.toml`, `<region>.key`, `data/<region>`).
    pub dir: PathBuf,
    /// HTTP listen address; `None`: 127.0.0.1 on a free port.
    pub http_listen: Option<SocketAddr>,
    /// libp2p listen address; `None`: 127.0.0.1 on a free port.
    pub p2p_listen: Option<Multiaddr>,
    /// The address the members dial; `None`: the listen address.
    pub advertise: Option<Multiaddr>,
    /// The cluster CA's key, to issue the new region's HTTPS certificate when the cluster
    /// serves TLS; `None`: `ca.key` next to the CA certificate the source config trusts, or
    /// next to the source config.
    pub ca_key: Option<PathBuf>,
}

/// What `walletd join` wrote.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The new region's config file.
    pub config: PathBuf,
    /// Its base URL.
    pub http: String,
    /// The request to send to any member (`POST /v1/admin/members`).
    pub body: JoinBody,
    /// A member's base URL (the source config's) to send it to.
    pub member_url: String,
    /// The CA certificate clients trust, when the cluster serves TLS.
    pub ca: Option<PathBuf>,
}

impl Joined {
    /// The exact call to issue the join, with the admin token left to the environment.
    pub fn curl(&self) -> String {
        let body = serde_json::to_string(&self.body).unwrap_or_default();
        let mut s = String::from("curl -sS");
        if let Some(ca) = &self.ca {
            let _ = write!(s, " --cacert {}", ca.display());
        }
        let _ = write!(
            s,
            " -H \"Authorization: Bearer $WALLET_ADMIN_TOKEN\" -H 'content-type: application/json' \
             -d '{body}' {}/v1/admin/members",
            self.member_url
        );
        s
    }
}

fn args(m: impl Into<String>) -> InitError {
    InitError::Args(m.into())
}

/// A path of the source config, absolute (relative ones are relative to its directory).
fn absolute(base: &Path, v: &toml::Value) -> Option<toml::Value> {
    let p = Path::new(v.as_str()?);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    Some(toml::Value::String(p.display().to_string()))
}

/// Makes a path-valued field of `table` absolute.
fn absolutize(table: &mut toml::Table, field: &str, base: &Path) {
    if let Some(v) = table.get(field).and_then(|v| absolute(base, v)) {
        table.insert(field.into(), v);
    }
}

fn section<'a>(t: &'a mut toml::Table, name: &str) -> Result<&'a mut toml::Table, InitError> {
    t.get_mut(name)
        .and_then(toml::Value::as_table_mut)
        .ok_or_else(|| args(format!("the source config has no [{name}] section")))
}

/// Writes the new region's key and config from an existing member's config (which is
/// checked by loading it first). The new config has `join = true`: the region issues
/// nothing and refuses clients until it has pulled its own join event.
pub fn make_config(o: &JoinOptions) -> Result<Joined, InitError> {
    let source = crate::config::NodeConfig::load(&o.from).map_err(|e| args(e.to_string()))?;
    if source.members.iter().any(|m| m.region == o.region) {
        return Err(args(format!(
            "{} is already a member in {}",
            o.region,
            o.from.display()
        )));
    }
    let base = o
        .from
        .canonicalize()
        .map_err(|e| io_err(&o.from, e))?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let text = std::fs::read_to_string(&o.from).map_err(|e| io_err(&o.from, e))?;
    let mut t: toml::Table =
        toml::from_str(&text).map_err(|e| args(format!("{}: {e}", o.from.display())))?;

    secret::create_private_dir(&o.dir).map_err(|e| io_err(&o.dir, e))?;
    let dir = o.dir.canonicalize().map_err(|e| io_err(&o.dir, e))?;
    let config = dir.join(format!("{}.toml", o.region));
    if config.exists() {
        return Err(args(format!(
            "{} already exists; choose another directory",
            config.display()
        )));
    }
    let key_path = dir.join(format!("{}.key", o.region));
    let kp =
        wallet_p2p::load_or_create_keypair(&key_path).map_err(|e| InitError::Key(e.to_string()))?;
    let peer_id = wallet_p2p::peer_id_of(&kp);
    let http_listen = match o.http_listen {
        Some(a) => a,
        None => SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
    };
    let p2p_listen = match &o.p2p_listen {
        Some(a) => a.clone(),
        None => format!("/ip4/127.0.0.1/tcp/{}", free_port()?)
            .parse()
            .map_err(|e| args(format!("p2p address: {e}")))?,
    };
    let advertise = o.advertise.clone().unwrap_or_else(|| p2p_listen.clone());

    let s = |v: String| toml::Value::String(v);
    t.insert("region".into(), s(o.region.to_string()));
    t.insert("identity_key".into(), s(key_path.display().to_string()));
    t.insert(
        "data_dir".into(),
        s(dir
            .join("data")
            .join(o.region.as_str())
            .display()
            .to_string()),
    );
    t.insert("restore".into(), toml::Value::Boolean(false));
    t.insert("join".into(), toml::Value::Boolean(true));

    // HTTP: own listener; TLS with a certificate of the cluster's CA.
    let http = section(&mut t, "http")?;
    http.insert("listen".into(), s(http_listen.to_string()));
    http.remove("metrics_listen");
    let mut ca_cert = None;
    if let Some(tls) = http.get_mut("tls").and_then(toml::Value::as_table_mut) {
        absolutize(tls, "client_ca", &base);
        let ca = source
            .tls
            .as_ref()
            .and_then(|f| f.client_ca.clone())
            .or_else(|| {
                [base.join("ca.crt"), base.join("../ca.crt")]
                    .into_iter()
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| {
                args("the cluster serves TLS and no ca.crt was found next to the source config")
            })?;
        let ca_key = o
            .ca_key
            .clone()
            .or_else(|| {
                let next_to_ca = ca.parent().map(|d| d.join("ca.key"));
                [next_to_ca, Some(base.join("ca.key"))]
                    .into_iter()
                    .flatten()
                    .find(|p| p.is_file())
            })
            .ok_or_else(|| {
                args("the cluster serves TLS: give the CA's key (--ca-key) to issue a certificate")
            })?;
        let ca = LocalCa::open(&ca, &ca_key)?;
        let ip = http_listen.ip().to_string();
        let (cert, key) = ca.issue(&dir, o.region.as_str(), &[&ip, "localhost"])?;
        tls.insert("cert".into(), s(cert.display().to_string()));
        tls.insert("key".into(), s(key.display().to_string()));
        ca_cert = Some(ca.cert.clone());
    }
    let scheme = if ca_cert.is_some() { "https" } else { "http" };

    let p2p = section(&mut t, "p2p")?;
    p2p.insert(
        "listen".into(),
        toml::Value::Array(vec![s(p2p_listen.to_string())]),
    );

    // Members: the source's, and this region (the core's joining config names it).
    let members = t
        .get_mut("members")
        .and_then(toml::Value::as_array_mut)
        .ok_or_else(|| args("the source config has no [[members]]"))?;
    let mut me = toml::Table::new();
    me.insert("region".into(), s(o.region.to_string()));
    me.insert("peer_id".into(), s(peer_id.to_string()));
    me.insert(
        "addrs".into(),
        toml::Value::Array(vec![s(advertise.to_string())]),
    );
    members.push(toml::Value::Table(me));

    absolutize(section(&mut t, "policy")?, "file", &base);
    let auth = section(&mut t, "auth")?;
    absolutize(auth, "tokens_file", &base);
    absolutize(auth, "admin_tokens_file", &base);

    let body = toml::to_string(&t).map_err(|e| args(format!("config: {e}")))?;
    let text = format!(
        "# walletd config for region {} joining cluster {} (written by walletd join from {}).\n\
         # join = true: it takes traffic once a member has issued its join\n\
         # (POST /v1/admin/members) and it has pulled it (docs/operations.md).\n{body}",
        o.region,
        source.cluster,
        o.from.display()
    );
    secret::write_private(&config, text.as_bytes()).map_err(|e| io_err(&config, e))?;
    // Check what was written as walletd will read it.
    crate::config::NodeConfig::load(&config).map_err(|e| args(e.to_string()))?;
    let member_url = format!("{scheme}://{}", source.http_listen);
    Ok(Joined {
        config,
        http: format!("{scheme}://{http_listen}"),
        body: JoinBody {
            region: o.region.to_string(),
            peer_id: peer_id.to_string(),
            public_key: Some(hex::encode(wallet_p2p::membership_key_of(&kp))),
            addrs: vec![advertise.to_string()],
        },
        member_url,
        ca: ca_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> Result<JoinRequest, JoinRefusal> {
        parse_join_request(v.to_string().as_bytes())
    }

    #[test]
    fn a_join_request_is_checked_field_by_field() {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        let peer = wallet_p2p::peer_id_of(&kp).to_string();
        let key = hex::encode(wallet_p2p::membership_key_of(&kp));
        let ok = body(serde_json::json!({
            "region": "sa", "peer_id": peer, "public_key": key,
            "addrs": ["/ip4/127.0.0.1/tcp/4001"]
        }))
        .unwrap();
        assert_eq!(ok.key, wallet_p2p::membership_key_of(&kp));
        assert_eq!(
            JoinMeta::member(ok.region, &ok.meta().encode())
                .unwrap()
                .addrs,
            ok.addrs
        );
        // The key is optional: the peer id embeds it.
        assert!(body(serde_json::json!({"region": "sa", "peer_id": peer})).is_ok());
        let code = |v| body(v).unwrap_err().0;
        assert_eq!(code(serde_json::json!({"region": "sa"})), "invalid_json");
        assert_eq!(
            code(serde_json::json!({"region": "sa", "peer_id": peer, "x": 1})),
            "invalid_json"
        );
        assert_eq!(
            code(serde_json::json!({"region": "SA!", "peer_id": peer})),
            "invalid_region"
        );
        assert_eq!(
            code(serde_json::json!({"region": "sa", "peer_id": "nope"})),
            "invalid_peer_id"
        );
        let other = hex::encode(wallet_p2p::membership_key_of(
            &libp2p::identity::Keypair::generate_ed25519(),
        ));
        assert_eq!(
            code(serde_json::json!({"region": "sa", "peer_id": peer, "public_key": other})),
            "invalid_key"
        );
        assert_eq!(
            code(serde_json::json!({"region": "sa", "peer_id": peer, "public_key": "zz"})),
            "invalid_key"
        );
        assert_eq!(
            code(serde_json::json!({"region": "sa", "peer_id": peer, "addrs": ["not/an addr"]})),
            "invalid_address"
        );
        let long = format!("/dns/{}/tcp/1", "a".repeat(1000));
        let (code5, why) =
            body(serde_json::json!({"region": "sa", "peer_id": peer, "addrs": vec![long; 5]}))
                .unwrap_err();
        assert_eq!(code5, "invalid_address");
        assert!(why.contains("bytes in the join"), "{why}");
        assert!(JoinMeta::member(ok.region, b"not json").is_none());
    }
}
