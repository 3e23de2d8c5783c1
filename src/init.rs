//! `walletd init`: writes everything a cluster needs, on 127.0.0.1 or on one host per region.
//!
//! For each region: a TOML config, an ed25519 identity key and a data directory; shared: a
//! default fee policy, random client and admin tokens, and `cluster.json` so scripts and tests
//! can drive the cluster without parsing TOML. With [`InitOptions::per_host`]
//! (`walletd init --region eu=HOST ...`) each region's files go to their own directory, with
//! relative paths, to be copied to its host (docs/deployment.md).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
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
    /// Per-region addresses, in the order of `regions`; `None`: every region on 127.0.0.1.
    /// `walletd init --region eu=HOST` gives one host per region (with [`Self::per_host`]);
    /// the network-namespace harness ([`crate::netns`]) gives a client and a region-network
    /// address per region (without).
    pub hosts: Option<Vec<RegionHost>>,
    /// One directory per host to copy over (`DIR/<region>/`, relative paths inside), fixed
    /// ports and a bind address apart from the advertised one; `None`: every file in `DIR`
    /// with absolute paths and free ports, each region listening on its own address.
    pub per_host: Option<PerHost>,
}

/// The multi-host layout of `walletd init --region eu=HOST ...` (docs/deployment.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerHost {
    /// What every region binds (HTTP and libp2p); `None`: every address of the host's family
    /// (`0.0.0.0`, or `::` for a region whose host is an IPv6 address).
    pub bind: Option<IpAddr>,
    /// HTTP API port, the same on every host.
    pub http_port: u16,
    /// libp2p port, TCP and UDP (QUIC), the same on every host.
    pub p2p_port: u16,
    /// `data_dir` written to every config; `None`: `data` (relative: next to the config).
    pub data_dir: Option<PathBuf>,
}

/// Default HTTP port of the multi-host layout.
pub const HTTP_PORT_DEFAULT: u16 = 8443;
/// Default libp2p port (TCP and UDP for QUIC) of the multi-host layout.
pub const P2P_PORT_DEFAULT: u16 = 4001;
/// The config file name inside each host directory.
pub const HOST_CONFIG_NAME: &str = "walletd.toml";

/// A host: an IP address or a DNS name (letters, digits, `-` and `.`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, resolved by each peer when it dials.
    Name(String),
}

impl Host {
    /// Parses an address or a DNS name.
    pub fn parse(s: &str) -> Result<Host, InitError> {
        let s = s.trim();
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(Host::Ip(ip));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        let name = s.strip_suffix('.').unwrap_or(s);
        if name.is_empty()
            || name.len() > 253
            || !name.split('.').all(label_ok)
            || name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err(InitError::Args(format!(
                "{s:?} is neither an IP address nor a host name"
            )));
        }
        Ok(Host::Name(name.to_ascii_lowercase()))
    }

    /// The libp2p multiaddr prefix: `/ip4/A`, `/ip6/A` or `/dns/NAME`.
    fn multiaddr(&self) -> String {
        match self {
            Host::Ip(IpAddr::V4(a)) => format!("/ip4/{a}"),
            Host::Ip(IpAddr::V6(a)) => format!("/ip6/{a}"),
            Host::Name(n) => format!("/dns/{n}"),
        }
    }

    /// `host:port` in a URL (IPv6 in brackets).
    fn url_authority(&self, port: u16) -> String {
        match self {
            Host::Ip(IpAddr::V6(a)) => format!("[{a}]:{port}"),
            Host::Ip(a) => format!("{a}:{port}"),
            Host::Name(n) => format!("{n}:{port}"),
        }
    }

    /// The name a TLS certificate lists (an IP SAN or a DNS SAN).
    fn cert_name(&self) -> String {
        match self {
            Host::Ip(a) => a.to_string(),
            Host::Name(n) => n.clone(),
        }
    }
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(a) => write!(f, "{a}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// Parses one `--region eu=HOST` of `walletd init`.
pub fn parse_region_host(s: &str) -> Result<(RegionId, Host), InitError> {
    let (r, h) = s.split_once('=').ok_or_else(|| {
        InitError::Args(format!(
            "--region {s:?}: expected REGION=HOST, e.g. eu=10.0.0.1 or eu=eu.wallet.example"
        ))
    })?;
    let region =
        RegionId::new(r.trim()).map_err(|e| InitError::Args(format!("--region {s:?}: {e}")))?;
    let host = Host::parse(h).map_err(|e| match e {
        InitError::Args(m) => InitError::Args(format!("--region {s:?}: {m}")),
        e => e,
    })?;
    Ok((region, host))
}

/// Regions and hosts from repeated `--region eu=HOST`: every region once, 1 to
/// [`INIT_REGIONS_MAX`] of them.
pub fn parse_region_hosts(args: &[String]) -> Result<(Vec<RegionId>, Vec<RegionHost>), InitError> {
    let mut regions = Vec::new();
    let mut hosts = Vec::new();
    for a in args {
        let (r, h) = parse_region_host(a)?;
        if regions.contains(&r) {
            return Err(InitError::Args(format!("region {r} is listed twice")));
        }
        regions.push(r);
        hosts.push(RegionHost {
            http: h.clone(),
            p2p: h,
        });
    }
    if regions.is_empty() || regions.len() > INIT_REGIONS_MAX {
        return Err(InitError::Args(format!(
            "give 1 to {INIT_REGIONS_MAX} regions"
        )));
    }
    Ok((regions, hosts))
}

/// Where one region runs when not on 127.0.0.1: its HTTP API on `http` (the address clients
/// reach; its TLS certificate names it) and libp2p on `p2p` (the address its peers dial; the
/// other regions' configs list it). Without [`PerHost`] the region also listens on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionHost {
    /// HTTP client address.
    pub http: Host,
    /// libp2p member address.
    pub p2p: Host,
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

pub(crate) fn io_err(path: &Path, e: impl std::fmt::Display) -> InitError {
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

pub(crate) fn toml_str(s: &str) -> String {
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

/// Writes a cluster into `opts.dir` and returns its `cluster.json` content: a local one
/// (every file in `DIR`), or with [`InitOptions::per_host`] one directory per host.
pub fn init(opts: &InitOptions) -> Result<ClusterFile, InitError> {
    if let Some(h) = &opts.hosts {
        if h.len() != opts.regions.len() {
            return Err(InitError::Args(format!(
                "{} host addresses for {} regions",
                h.len(),
                opts.regions.len()
            )));
        }
    }
    if opts.per_host.is_some() && opts.hosts.is_none() {
        return Err(InitError::Args(
            "the per-host layout needs a host per region".into(),
        ));
    }
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
    let cluster = format!(
        "{}-{}",
        if opts.per_host.is_some() {
            "wallet"
        } else {
            "local"
        },
        &random_token()[..12]
    );
    // Local: one policy file for every region; per host: a copy in each host's directory.
    let policy_path = dir.join("policy.toml");
    if opts.per_host.is_none() {
        std::fs::write(&policy_path, DEFAULT_POLICY).map_err(|e| io_err(&policy_path, e))?;
    }

    /// One region: where its files go and what its config names them.
    struct R {
        region: RegionId,
        host: RegionHost,
        peer: String,
        /// Its directory (`DIR`, or `DIR/<region>` per host).
        home: PathBuf,
        /// How its config names a file in `home`: absolute (local) or relative (per host).
        absolute: bool,
        http: u16,
        p2p: u16,
    }
    impl R {
        fn name(&self, file: &str) -> String {
            if self.absolute {
                self.home.join(file).display().to_string()
            } else {
                file.to_string()
            }
        }
    }
    let loopback = RegionHost {
        http: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        p2p: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    let mut rs = Vec::new();
    for (k, r) in opts.regions.iter().enumerate() {
        let host = opts
            .hosts
            .as_ref()
            .and_then(|h| h.get(k).cloned())
            .unwrap_or_else(|| loopback.clone());
        let (home, http, p2p) = match &opts.per_host {
            Some(p) => {
                let home = dir.join(r.as_str());
                secret::create_private_dir(&home).map_err(|e| io_err(&home, e))?;
                (home, p.http_port, p.p2p_port)
            }
            None => (dir.clone(), free_port()?, free_port()?),
        };
        let key = home.join(format!("{r}.key"));
        let kp =
            wallet_p2p::load_or_create_keypair(&key).map_err(|e| InitError::Key(e.to_string()))?;
        let peer = wallet_p2p::peer_id_of(&kp).to_string();
        rs.push(R {
            region: *r,
            host,
            peer,
            home,
            absolute: opts.per_host.is_none(),
            http,
            p2p,
        });
    }
    let ca = if opts.tls {
        Some(LocalCa::new(&dir)?)
    } else {
        None
    };
    let mut regions = Vec::new();
    for r in &rs {
        // Per host: the policy (and the CA certificate) travel in the host's directory.
        if opts.per_host.is_some() {
            let p = r.home.join("policy.toml");
            std::fs::write(&p, DEFAULT_POLICY).map_err(|e| io_err(&p, e))?;
            if let Some(ca) = &ca {
                let c = r.home.join("ca.crt");
                std::fs::copy(&ca.cert, &c).map_err(|e| io_err(&c, e))?;
            }
        }
        // What it binds: its own addresses (local), or the bind address (per host).
        let (http_bind, p2p_bind) = match &opts.per_host {
            Some(p) => {
                let bind = p.bind.unwrap_or(match r.host.p2p {
                    Host::Ip(IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                    _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                });
                (Host::Ip(bind), Host::Ip(bind))
            }
            None => (r.host.http.clone(), r.host.p2p.clone()),
        };
        let p2p_addrs = |h: &Host, port: u16| {
            let mut v = vec![format!("{}/tcp/{port}", h.multiaddr())];
            if opts.per_host.is_some() {
                v.push(format!("{}/udp/{port}/quic-v1", h.multiaddr()));
            }
            v.iter().map(|a| toml_str(a)).collect::<Vec<_>>().join(", ")
        };
        let mut t = String::new();
        let _ = writeln!(
            t,
            "# walletd config for region {} (written by walletd init)",
            r.region
        );
        if opts.per_host.is_some() {
            let _ = writeln!(
                t,
                "# Host {}: copy this whole directory to it; relative paths are relative to\n\
                 # this file's directory (docs/deployment.md).",
                r.host.p2p
            );
        }
        let _ = writeln!(t, "region = {}", toml_str(r.region.as_str()));
        let _ = writeln!(t, "cluster = {}", toml_str(&cluster));
        let _ = writeln!(
            t,
            "identity_key = {}",
            toml_str(&r.name(&format!("{}.key", r.region)))
        );
        let data = if let Some(p) = &opts.per_host {
            p.data_dir
                .as_ref()
                .map_or_else(|| "data".to_string(), |d| d.display().to_string())
        } else {
            dir.join("data")
                .join(r.region.as_str())
                .display()
                .to_string()
        };
        let _ = writeln!(t, "data_dir = {}", toml_str(&data));
        let _ = writeln!(t, "restore = false");
        let _ = writeln!(t, "max_clock_skew_ms = 60000");
        let _ = writeln!(t, "heartbeat_interval_ms = 250");
        let _ = writeln!(
            t,
            "\n[http]\nlisten = {}\nbody_limit_bytes = 16384",
            toml_str(&http_bind.url_authority(r.http))
        );
        if let Some(n) = opts.rate_per_second {
            let _ = writeln!(t, "rate_per_second = {n}");
        }
        if let Some(ca) = &ca {
            let name = r.host.http.cert_name();
            let (cert, key) = ca.issue(&r.home, r.region.as_str(), &[&name, "localhost"])?;
            let file = |p: &Path| {
                p.file_name()
                    .map(|f| r.name(&f.to_string_lossy()))
                    .unwrap_or_default()
            };
            let ca_name = if opts.per_host.is_some() {
                "ca.crt".to_string()
            } else {
                ca.cert.display().to_string()
            };
            let _ = writeln!(
                t,
                "\n[http.tls]\ncert = {}\nkey = {}\n# client_ca = {}   # uncomment for mutual TLS",
                toml_str(&file(&cert)),
                toml_str(&file(&key)),
                toml_str(&ca_name)
            );
        }
        let _ = writeln!(t, "\n[p2p]\nlisten = [{}]", p2p_addrs(&p2p_bind, r.p2p));
        for m in &rs {
            let _ = writeln!(
                t,
                "\n[[members]]\nregion = {}\npeer_id = {}\naddrs = [{}]",
                toml_str(m.region.as_str()),
                toml_str(&m.peer),
                p2p_addrs(&m.host.p2p, m.p2p)
            );
        }
        let policy = if opts.per_host.is_some() {
            "policy.toml".to_string()
        } else {
            policy_path.display().to_string()
        };
        let _ = writeln!(t, "\n[policy]\nfile = {}", toml_str(&policy));
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
        let path = if opts.per_host.is_some() {
            r.home.join(HOST_CONFIG_NAME)
        } else {
            dir.join(format!("{}.toml", r.region))
        };
        secret::write_private(&path, t.as_bytes()).map_err(|e| io_err(&path, e))?;
        regions.push(ClusterRegion {
            region: r.region.to_string(),
            config: path.display().to_string(),
            http: format!(
                "{}://{}",
                if ca.is_some() { "https" } else { "http" },
                r.host.http.url_authority(r.http)
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
pub(crate) struct LocalCa {
    pub(crate) cert: PathBuf,
    issuer: rcgen::Certificate,
    key: rcgen::KeyPair,
}

fn tls_err(e: impl std::fmt::Display) -> InitError {
    InitError::Key(format!("tls: {e}"))
}

impl LocalCa {
    /// The CA's own certificate, self-signed with `key`: the same subject and key each time,
    /// so that certificates issued by a CA opened again ([`LocalCa::open`]) chain to the
    /// `ca.crt` written first.
    fn self_signed(key: &rcgen::KeyPair) -> Result<rcgen::Certificate, InitError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        p.distinguished_name
            .push(DnType::CommonName, "walletd local CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.self_signed(key).map_err(tls_err)
    }

    /// The CA `init --tls` wrote: `cert` (`ca.crt`) and its key (`ca.key`), to issue a
    /// certificate for a region that joins later (`walletd join`).
    pub(crate) fn open(cert: &Path, key: &Path) -> Result<LocalCa, InitError> {
        let pem = std::fs::read_to_string(key).map_err(|e| io_err(key, e))?;
        let key = rcgen::KeyPair::from_pem(&pem).map_err(tls_err)?;
        let issuer = LocalCa::self_signed(&key)?;
        Ok(LocalCa {
            cert: cert.to_path_buf(),
            issuer,
            key,
        })
    }

    fn new(dir: &Path) -> Result<LocalCa, InitError> {
        let key = rcgen::KeyPair::generate().map_err(tls_err)?;
        let issuer = LocalCa::self_signed(&key)?;
        let cert = dir.join("ca.crt");
        std::fs::write(&cert, issuer.pem()).map_err(|e| io_err(&cert, e))?;
        let kpath = dir.join("ca.key");
        secret::write_private(&kpath, key.serialize_pem().as_bytes())
            .map_err(|e| io_err(&kpath, e))?;
        Ok(LocalCa { cert, issuer, key })
    }

    /// `<name>.crt` and `<name>.tls.key` (0600) for `names` (IP addresses or DNS names).
    pub(crate) fn issue(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_as_addresses_or_names() {
        let ip = |s: &str| Host::Ip(s.parse().unwrap());
        assert_eq!(Host::parse("10.0.0.1").unwrap(), ip("10.0.0.1"));
        assert_eq!(Host::parse("[fd00::1]").unwrap(), ip("fd00::1"));
        assert_eq!(
            Host::parse("EU-1.Wallet.example.").unwrap(),
            Host::Name("eu-1.wallet.example".into())
        );
        for bad in ["", "a_b", "-eu.example", "eu..example", "10.0.0.300", "x y"] {
            assert!(Host::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(ip("fd00::1").multiaddr(), "/ip6/fd00::1");
        assert_eq!(Host::Name("h.example".into()).multiaddr(), "/dns/h.example");
        assert_eq!(ip("fd00::1").url_authority(8443), "[fd00::1]:8443");
    }

    #[test]
    fn region_hosts_refuse_duplicates_and_bad_syntax() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (r, h) = parse_region_hosts(&args(&["eu=10.0.0.1", "us=us.example"])).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(h[1].p2p, Host::Name("us.example".into()));
        for bad in [
            &["eu"][..],
            &["eu=10.0.0.1", "eu=10.0.0.2"],
            &["EU!=10.0.0.1"],
            &[],
        ] {
            let e = parse_region_hosts(&args(bad)).unwrap_err().to_string();
            assert!(e.starts_with("init: ") && !e[6..].contains("init: "), "{e}");
        }
    }

    /// Per host: a directory per region whose config names only files inside it, binds the
    /// bind address and lists every member at its host address (TCP and QUIC); it loads.
    #[test]
    fn per_host_layout_is_self_contained_and_loads() {
        let d = tempfile::tempdir().unwrap();
        let (regions, hosts) =
            parse_region_hosts(&["eu=10.0.0.1".into(), "us=us.example".into()]).unwrap();
        let opts = InitOptions {
            regions,
            dir: d.path().join("out"),
            faults: false,
            group_commit: true,
            tls: true,
            rate_per_second: None,
            hosts: Some(hosts),
            per_host: Some(PerHost {
                bind: None,
                http_port: 8443,
                p2p_port: 4001,
                data_dir: None,
            }),
        };
        let file = init(&opts).unwrap();
        assert_eq!(file.regions[1].http, "https://us.example:8443");
        let out = d.path().join("out").canonicalize().unwrap();
        for r in ["eu", "us"] {
            let cfg = out.join(r).join(HOST_CONFIG_NAME);
            let text = std::fs::read_to_string(&cfg).unwrap();
            assert!(!text.contains(&out.display().to_string()), "{text}");
            assert!(text.contains("listen = \"0.0.0.0:8443\""), "{text}");
            assert!(
                text.contains("\"/dns/us.example/udp/4001/quic-v1\""),
                "{text}"
            );
            // Moved elsewhere, it still loads: every path is relative to the config.
            let moved = d.path().join(format!("moved-{r}"));
            std::fs::rename(out.join(r), &moved).unwrap();
            let c = crate::config::NodeConfig::load(&moved.join(HOST_CONFIG_NAME)).unwrap();
            let moved = moved.canonicalize().unwrap();
            assert_eq!(c.identity_key, moved.join(format!("{r}.key")));
            assert_eq!(c.data_dir, moved.join("data"));
            assert_eq!(c.http_listen.to_string(), "0.0.0.0:8443");
            assert_eq!(c.members.len(), 2);
            let tls = c.tls.unwrap();
            assert_eq!(tls.cert, moved.join(format!("{r}.crt")));
        }
        assert!(!out.join("policy.toml").exists());
        assert!(out.join("ca.key").is_file());
        assert!(
            init(&opts).is_err(),
            "a second init into the same directory"
        );
    }
}
