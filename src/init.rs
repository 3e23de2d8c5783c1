//! `walletd init`: writes everything a local cluster on 127.0.0.1 needs.
//!
//! For each region: a TOML config, an ed25519 identity key and a data directory; shared: a
//! default fee policy, random client and admin tokens, and `cluster.json` so scripts and tests
//! can drive the cluster without parsing TOML.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use wallet_core::RegionId;

use crate::secret;

/// The default seed policy written by `init`: a flat overdraft fee, capped, per debit.
pub const DEFAULT_POLICY: &str = r#"# Overdraft policy (SPEC §6). Must be identical on every region.
[default]
action = "fee"               # "fee" or "reverse"
overdraft_line = "0"         # local acceptance may go this far below zero
reversible = ["purchase"]
fee = { flat = "5.00", percent = "0", minimum = "0", cap = "35.00", grace = "0", per = "debit" }

[[rule]]
currency = "JPY"
fee = { flat = "500", percent = "0", minimum = "0", cap = "3500", grace = "0", per = "debit" }
"#;

/// Most regions `init` writes.
pub const INIT_REGIONS_MAX: usize = 16;

/// One region in `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRegion {
    /// Region id.
    pub region: String,
    /// Absolute path of its config file.
    pub config: String,
    /// Base URL of its HTTP API.
    pub http: String,
}

/// `cluster.json` (written 0600: it holds the tokens; `Debug` does not show them).
#[derive(Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// Every region.
    pub regions: Vec<ClusterRegion>,
    /// A client token valid on every region.
    pub token: String,
    /// An admin token valid on every region.
    pub admin_token: String,
    /// With `--tls`: the local CA certificate (PEM) that signed every region's certificate;
    /// clients trust it for the `https://` URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// With `--tls`: a client certificate and key (PEM) signed by the CA, for mutual TLS
    /// (`http.tls.client_ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// The client certificate's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

impl std::fmt::Debug for ClusterFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterFile")
            .field("regions", &self.regions)
            .field("token", &"<redacted>")
            .field("admin_token", &"<redacted>")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// Options of `walletd init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Region ids.
    pub regions: Vec<RegionId>,
    /// Output directory.
    pub dir: PathBuf,
    /// Enable the fault-injection endpoint.
    pub faults: bool,
    /// Group commit setting written to every config.
    pub group_commit: bool,
    /// Write a local CA and per-region certificates; serve HTTPS.
    pub tls: bool,
    /// `http.rate_per_second` written (None: the default).
    pub rate_per_second: Option<u32>,
    /// Per-region addresses, in the order of `regions` (the network-namespace harness,
    /// [`crate::netns`]); `None`: every region on 127.0.0.1. Not a CLI option.
    pub hosts: Option<Vec<RegionHost>>,
}

/// Where one region listens when it does not run on 127.0.0.1: its HTTP API on `http`
/// (the address clients reach; its TLS certificate names it) and libp2p on `p2p` (the
/// address its peers dial; the other regions' configs list it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionHost {
    /// HTTP listen and client address.
    pub http: std::net::Ipv4Addr,
    /// libp2p listen and member address.
    pub p2p: std::net::Ipv4Addr,
}

/// What can go wrong in `init`.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Bad arguments.
    #[error("init: {0}")]
    Args(String),
    /// File system.
    #[error("init: {path}: {reason}")]
    Io {
        /// Path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Key generation.
    #[error("init: {0}")]
    Key(String),
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> InitError {
    InitError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Ports handed out by [`free_port`]: below Linux's default ephemeral range (32768-60999),
/// so that no outgoing connection of any process takes a region's port as its source port
/// while the region is down (a restart would then fail with "address in use").
const LOCAL_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A free TCP port on 127.0.0.1, outside the ephemeral range where one is free (bind it,
/// release it); else any port the OS picks.
pub fn free_port() -> Result<u16, InitError> {
    for _ in 0..256 {
        let span = u32::from(LOCAL_PORTS.end - LOCAL_PORTS.start);
        let port = LOCAL_PORTS.start + (rand::rngs::OsRng.next_u32() % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| InitError::Args(e.to_string()))?;
    let port = l
        .local_addr()
        .map_err(|e| InitError::Args(e.to_string()))?
        .port();
    Ok(port)
}

/// A random token, hex encoded (32 bytes of OS randomness).
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Parses `eu,us,ap`.
pub fn parse_regions(s: &str) -> Result<Vec<RegionId>, InitError> {
    let mut out: Vec<RegionId> = Vec::new();
    for part in s.split(',') {
        let r = RegionId::new(part.trim()).map_err(|e| InitError::Args(e.to_string()))?;
        if out.contains(&r) {
            return Err(InitError::Args(format!("region {r} is listed twice")));
        }
        out.push(r);
    }
    if out.is_empty() || out.len() > INIT_REGIONS_MAX {
        return Err(InitError::Args(format!(
            "give 1 to {INIT_REGIONS_MAX} regions"
        )));
    }
    Ok(out)
}

fn toml_str(s: &str) -> String {
    // Paths and ids here never hold quotes or control characters, but escape anyway.
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes a local cluster into `opts.dir` and returns its `cluster.json` content.
pub fn init(opts: &InitOptions) -> Result<ClusterFile, InitError> {
    // The directory holds keys and tokens: 0700; every secret file in it is 0600.
    secret::create_private_dir(&opts.dir).map_err(|e| io_err(&opts.dir, e))?;
    let dir = opts.dir.canonicalize().map_err(|e| io_err(&opts.dir, e))?;
    let cluster_json = dir.join("cluster.json");
    if cluster_json.exists() {
        return Err(InitError::Args(format!(
            "{} already exists; choose an empty directory",
            cluster_json.display()
        )));
    }
    let token = random_token();
    let admin_token = random_token();
    let cluster = format!("local-{}", &random_token()[..12]);
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, DEFAULT_POLICY).map_err(|e| io_err(&policy_path, e))?;

    struct R {
        region: RegionId,
        host: RegionHost,
        peer: String,
        key: PathBuf,
        http: u16,
        p2p: u16,
    }
    let loopback = RegionHost {
        http: std::net::Ipv4Addr::LOCALHOST,
        p2p: std::net::Ipv4Addr::LOCALHOST,
    };
    if let Some(h) = &opts.hosts {
        if h.len() != opts.regions.len() {
            return Err(InitError::Args(format!(
                "{} host addresses for {} regions",
                h.len(),
                opts.regions.len()
            )));
        }
    }
    let mut rs = Vec::new();
    for (k, r) in opts.regions.iter().enumerate() {
        let host = opts
            .hosts
            .as_ref()
            .and_then(|h| h.get(k).copied())
            .unwrap_or(loopback);
        let key = dir.join(format!("{r}.key"));
        let kp =
            wallet_p2p::load_or_create_keypair(&key).map_err(|e| InitError::Key(e.to_string()))?;
        let peer = wallet_p2p::peer_id_of(&kp).to_string();
        rs.push(R {
            region: *r,
            host,
            peer,
            key,
            http: free_port()?,
            p2p: free_port()?,
        });
    }
    let ca = if opts.tls {
        Some(LocalCa::new(&dir)?)
    } else {
        None
    };
    let mut regions = Vec::new();
    for r in &rs {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# walletd config for region {} (written by walletd init)",
            r.region
        );
        let _ = writeln!(t, "region = {}", toml_str(r.region.as_str()));
        let _ = writeln!(t, "cluster = {}", toml_str(&cluster));
        let _ = writeln!(
            t,
            "identity_key = {}",
            toml_str(&r.key.display().to_string())
        );
        let data = dir.join("data").join(r.region.as_str());
        let _ = writeln!(t, "data_dir = {}", toml_str(&data.display().to_string()));
        let _ = writeln!(t, "restore = false");
        let _ = writeln!(t, "max_clock_skew_ms = 60000");
        let _ = writeln!(t, "heartbeat_interval_ms = 250");
        let _ = writeln!(
            t,
            "\n[http]\nlisten = \"{}:{}\"\nbody_limit_bytes = 16384",
            r.host.http, r.http
        );
        if let Some(n) = opts.rate_per_second {
            let _ = writeln!(t, "rate_per_second = {n}");
        }
        if let Some(ca) = &ca {
            let ip = r.host.http.to_string();
            let (cert, key) = ca.issue(&dir, r.region.as_str(), &[&ip, "localhost"])?;
            let _ = writeln!(
                t,
                "\n[http.tls]\ncert = {}\nkey = {}\n# client_ca = {}   # uncomment for mutual TLS",
                toml_str(&cert.display().to_string()),
                toml_str(&key.display().to_string()),
                toml_str(&ca.cert.display().to_string())
            );
        }
        let _ = writeln!(
            t,
            "\n[p2p]\nlisten = [\"/ip4/{}/tcp/{}\"]",
            r.host.p2p, r.p2p
        );
        for m in &rs {
            let _ = writeln!(
                t,
                "\n[[members]]\nregion = {}\npeer_id = {}\naddrs = [\"/ip4/{}/tcp/{}\"]",
                toml_str(m.region.as_str()),
                toml_str(&m.peer),
                m.host.p2p,
                m.p2p
            );
        }
        let _ = writeln!(
            t,
            "\n[policy]\nfile = {}",
            toml_str(&policy_path.display().to_string())
        );
        let _ = writeln!(
            t,
            "\n[auth]\ntokens = [{}]\nadmin_tokens = [{}]",
            toml_str(&token),
            toml_str(&admin_token)
        );
        let _ = writeln!(
            t,
            "\n[storage]\ngroup_commit = {}\nbatch_records_max = {}",
            opts.group_commit,
            crate::config::COMMIT_BATCH_RECORDS_DEFAULT
        );
        let _ = writeln!(t, "\n[faults]\nenabled = {}", opts.faults);
        let path = dir.join(format!("{}.toml", r.region));
        secret::write_private(&path, t.as_bytes()).map_err(|e| io_err(&path, e))?;
        regions.push(ClusterRegion {
            region: r.region.to_string(),
            config: path.display().to_string(),
            http: format!(
                "{}://{}:{}",
                if ca.is_some() { "https" } else { "http" },
                r.host.http,
                r.http
            ),
        });
    }
    let (client_cert, client_key) = match &ca {
        Some(ca) => {
            let (c, k) = ca.issue(&dir, "client", &["client.local"])?;
            (Some(c.display().to_string()), Some(k.display().to_string()))
        }
        None => (None, None),
    };
    let file = ClusterFile {
        regions,
        token,
        admin_token,
        ca: ca.as_ref().map(|c| c.cert.display().to_string()),
        client_cert,
        client_key,
    };
    let json = serde_json::to_string_pretty(&file).map_err(|e| io_err(&cluster_json, e))?;
    secret::write_private(&cluster_json, (json + "\n").as_bytes())
        .map_err(|e| io_err(&cluster_json, e))?;
    Ok(file)
}

/// A local certificate authority for `init --tls`: `ca.crt` (public) and `ca.key` (0600).
struct LocalCa {
    cert: PathBuf,
    issuer: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn tls_err(e: impl std::fmt::Display) -> InitError {
    InitError::Key(format!("tls: {e}"))
}

impl LocalCa {
    fn new(dir: &Path) -> Result<LocalCa, InitError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        p.distinguished_name
            .push(DnType::CommonName, "walletd local CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = p.self_signed(&key).map_err(tls_err)?;
        let cert = dir.join("ca.crt");
        std::fs::write(&cert, issuer.pem()).map_err(|e| io_err(&cert, e))?;
        let kpath = dir.join("ca.key");
        secret::write_private(&kpath, key.serialize_pem().as_bytes())
            .map_err(|e| io_err(&kpath, e))?;
        Ok(LocalCa { cert, issuer, key })
    }

    /// `<name>.crt` and `<name>.tls.key` (0600) for `names` (IP addresses or DNS names).
    fn issue(
        &self,
        dir: &Path,
        name: &str,
        names: &[&str],
    ) -> Result<(PathBuf, PathBuf), InitError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .map_err(tls_err)?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let c = p
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(tls_err)?;
        let cert = dir.join(format!("{name}.crt"));
        std::fs::write(&cert, c.pem() + &self.issuer.pem()).map_err(|e| io_err(&cert, e))?;
        let kpath = dir.join(format!("{name}.tls.key"));
        secret::write_private(&kpath, key.serialize_pem().as_bytes())
            .map_err(|e| io_err(&kpath, e))?;
        Ok((cert, kpath))
    }
}
