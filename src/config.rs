//! The region configuration file (TOML), validated field by field.
//!
//! Every error names the field and the reason, e.g.
//! `config error: members[1].peer_id: "xyz" is not a valid peer id`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId};
use serde::Deserialize;
use wallet_core::{Policy, RegionId};

use crate::secret::{check_private, Secret};

/// Default largest request body, in bytes.
pub const BODY_LIMIT_BYTES_DEFAULT: usize = 16 * 1024;
/// Largest request body one may configure, in bytes.
pub const BODY_LIMIT_BYTES_MAX: usize = 1024 * 1024;
/// Default most records per group commit.
pub const COMMIT_BATCH_RECORDS_DEFAULT: usize = 8192;
/// Shortest accepted token, in characters.
pub const TOKEN_LEN_MIN: usize = 16;

/// A configuration problem: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("config error: cannot read {path}: {reason}")]
    Read {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// Not valid TOML, or unknown/mistyped fields.
    #[error("config error: {path}: {reason}")]
    Syntax {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// A field has a bad value.
    #[error("config error: {field}: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// Why.
        reason: String,
    },
}

/// Shortest idempotency key retention accepted: 1 s.
pub const IDEMPOTENCY_RETENTION_MS_MIN: u64 = 1_000;
/// Longest idempotency key retention accepted: 30 days.
pub const IDEMPOTENCY_RETENTION_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1_000;
/// Shortest forward time-out accepted (home mode): 50 ms.
pub const FORWARD_TIMEOUT_MS_MIN: u64 = 50;
/// Longest forward time-out accepted (home mode): 60 s.
pub const FORWARD_TIMEOUT_MS_MAX: u64 = 60_000;

/// A home-mode rule must name a member as its home: else its accounts' debits would be
/// forwarded to nobody and refused `home_unreachable` everywhere. Checked where a policy enters
/// walletd (the policy file at start, `POST /v1/admin/policy`).
pub fn homes_are_members(
    policy: &Policy,
    is_member: impl Fn(RegionId) -> bool,
) -> Result<(), String> {
    for r in &policy.rules {
        if let wallet_core::Mode::Home { home } = r.mode {
            if !is_member(home) {
                return Err(format!(
                    "home = \"{home}\" (rule for tier {}) is not a member of the cluster",
                    r.tier.as_deref().unwrap_or("*"),
                ));
            }
        }
    }
    Ok(())
}

/// A period in ms, `default` when absent, 10 ms to 60 s.
fn period_ms(field: &str, value: Option<u64>, default: u64) -> Result<u64, ConfigError> {
    let v = value.unwrap_or(default);
    if (10..=60_000).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(field, "must be between 10 and 60000"))
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Default of `peer_ack_timeout_ms`.
pub const PEER_ACK_TIMEOUT_MS_DEFAULT: u64 = 2_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    region: String,
    cluster: String,
    identity_key: String,
    data_dir: String,
    #[serde(default)]
    restore: bool,
    #[serde(default)]
    join: bool,
    max_clock_skew_ms: Option<u64>,
    heartbeat_interval_ms: Option<u64>,
    idempotency_retention_ms: Option<u64>,
    forward_timeout_ms: Option<u64>,
    #[serde(default)]
    compact_every_events: u64,
    snapshot_chunk_bytes: Option<usize>,
    ack: Option<String>,
    peer_ack_timeout_ms: Option<u64>,
    http: RawHttp,
    p2p: RawP2p,
    members: Vec<RawMember>,
    policy: RawPolicy,
    auth: RawAuth,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    faults: RawFaults,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    body_limit_bytes: Option<usize>,
    metrics_listen: Option<String>,
    request_timeout_ms: Option<u64>,
    header_read_timeout_ms: Option<u64>,
    header_bytes_max: Option<usize>,
    concurrency_max: Option<usize>,
    connections_max: Option<usize>,
    rate_per_second: Option<u32>,
    rate_burst: Option<u32>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
    client_ca: Option<String>,
}

/// Default request time-out (whole request, body and handler), ms.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// Default header-read time-out (also bounds idle keep-alive connections), ms.
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default largest request head, bytes.
pub const HEADER_BYTES_MAX_DEFAULT: usize = 16 * 1024;
/// Default most `/v1` requests served at once (more wait, up to the request time-out).
pub const CONCURRENCY_MAX_DEFAULT: usize = 512;
/// Default most open HTTP connections.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Default sustained requests per second per token.
pub const RATE_PER_SECOND_DEFAULT: u32 = 5_000;
/// Default burst per token.
pub const RATE_BURST_DEFAULT: u32 = 10_000;

/// HTTP limits (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Whole request (body read and handler), ms; then 503 `timeout`.
    pub request_timeout_ms: u64,
    /// A request head must arrive within this, ms; then the connection is closed.
    pub header_read_timeout_ms: u64,
    /// Largest request head, bytes; larger gets 431.
    pub header_bytes_max: usize,
    /// Most `/v1` requests served at once.
    pub concurrency_max: usize,
    /// Most open connections.
    pub connections_max: usize,
    /// Sustained requests per second per token (token bucket); 0: no limit.
    pub rate_per_second: u32,
    /// Bucket size per token.
    pub rate_burst: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            header_read_timeout_ms: HEADER_READ_TIMEOUT_MS_DEFAULT,
            header_bytes_max: HEADER_BYTES_MAX_DEFAULT,
            concurrency_max: CONCURRENCY_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            rate_per_second: RATE_PER_SECOND_DEFAULT,
            rate_burst: RATE_BURST_DEFAULT,
        }
    }
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    v: Option<T>,
    default: T,
    lo: T,
    hi: T,
) -> Result<T, ConfigError> {
    let v = v.unwrap_or(default);
    if v < lo || v > hi {
        return Err(invalid(field, format!("must be between {lo} and {hi}")));
    }
    Ok(v)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawP2p {
    listen: Vec<String>,
    peer_inbound_bytes_max: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    region: String,
    peer_id: String,
    #[serde(default)]
    addrs: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    file: Option<String>,
    inline: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    admin_tokens: Vec<String>,
    /// A file of client tokens, one a line (`#` comments); must be 0600.
    tokens_file: Option<String>,
    /// A file of admin tokens, one a line; must be 0600.
    admin_tokens_file: Option<String>,
    /// An environment variable holding client tokens (separated by commas or whitespace).
    tokens_env: Option<String>,
    /// An environment variable holding admin tokens.
    admin_tokens_env: Option<String>,
}

impl std::fmt::Debug for RawAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawAuth")
            .field("tokens", &self.tokens.len())
            .field("admin_tokens", &self.admin_tokens.len())
            .field("tokens_file", &self.tokens_file)
            .field("admin_tokens_file", &self.admin_tokens_file)
            .field("tokens_env", &self.tokens_env)
            .field("admin_tokens_env", &self.admin_tokens_env)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    group_commit: Option<bool>,
    batch_records_max: Option<usize>,
    archive_retention_days: Option<u64>,
    archive_retention_secs: Option<u64>,
    archive_segment_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    #[serde(default)]
    enabled: bool,
}

/// One member region.
#[derive(Debug, Clone)]
pub struct Member {
    /// Region id.
    pub region: RegionId,
    /// libp2p peer id (ed25519).
    pub peer_id: PeerId,
    /// Where to dial it.
    pub addrs: Vec<Multiaddr>,
}

/// A validated region configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// This region.
    pub region: RegionId,
    /// Cluster id (signed into every event; part of the p2p protocol name).
    pub cluster: String,
    /// ed25519 identity key file (protobuf encoding).
    pub identity_key: PathBuf,
    /// Storage directory.
    pub data_dir: PathBuf,
    /// Restore this region's history from its peers when started on an empty disk.
    pub restore: bool,
    /// A region joining a running cluster (`walletd join`): it issues nothing and refuses
    /// clients until it has pulled and applied its own join event (SPEC §10).
    pub join: bool,
    /// Largest tolerated lead of a remote HLC over local time.
    pub max_clock_skew_ms: u64,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// How long an idempotency key holds, in ms: in the core's key index (by HLC) and in the
    /// HTTP response cache (by wall clock). The same on every region.
    pub idempotency_retention_ms: u64,
    /// Home mode: how long a debit forwarded to its account's home waits for the answer
    /// before `503 home_unreachable` (its `Retry-After`, rounded up to whole seconds).
    pub forward_timeout_ms: u64,
    /// Compact (fold the settled history every member holds into a snapshot, drop it from
    /// memory and the database) after this many more events settled; 0 (the default): never.
    pub compact_every_events: u64,
    /// Bytes of a snapshot sent to a peer in one p2p message (a new or rebuilt region
    /// bootstraps from it in chunks): 1 MiB by default, at most 15 MiB.
    pub snapshot_chunk_bytes: usize,
    /// `ack = "peer"`: a client hears `201` for a new event only once it is durable here and
    /// at another member (docs/protocol.md §12); `"local"` (the default): here.
    pub ack_peer: bool,
    /// With `ack = "peer"`: how long a reply waits for another member's durability before
    /// it answers `503 peer_ack_timeout` (the event stays accepted).
    pub peer_ack_timeout_ms: u64,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// A second listener serving only `/metrics`, `/healthz`, `/readyz` (plain HTTP).
    pub metrics_listen: Option<SocketAddr>,
    /// HTTP limits.
    pub http_limits: HttpLimits,
    /// TLS of the HTTP API (`None`: plain HTTP).
    pub tls: Option<crate::serve::TlsFiles>,
    /// p2p listen multiaddrs.
    pub p2p_listen: Vec<Multiaddr>,
    /// Inbound budget of each peer, bytes (`p2p.peer_inbound_bytes_max`; see
    /// [`wallet_p2p::NetConfig::peer_inbound_bytes_max`]).
    pub peer_inbound_bytes_max: usize,
    /// Every member, this region included.
    pub members: Vec<Member>,
    /// The seed policy (version 1).
    pub policy: Policy,
    /// Where the policy came from (file path or "inline").
    pub policy_source: String,
    /// Client bearer tokens (every source: config, file, environment). Several may be valid
    /// at once (rotation); `Debug` never shows them.
    pub tokens: Vec<Secret>,
    /// Admin bearer tokens.
    pub admin_tokens: Vec<Secret>,
    /// The store (`[storage] backend`, default the log).
    pub storage_backend: crate::storage::Backend,
    /// Group commit on (default) or one commit per record.
    pub group_commit: bool,
    /// Most records per group commit.
    pub commit_batch_records_max: usize,
    /// `[storage] archive_retention_days` (or `archive_retention_secs`, for tests and soaks),
    /// in ms: archive segments older than this are deleted (None, the default: keep
    /// everything).
    pub archive_retention_ms: Option<u64>,
    /// `[storage] archive_segment_bytes`: the archive rolls a segment at this size.
    pub archive_segment_bytes: u64,
    /// Fault injection endpoint enabled.
    pub faults_enabled: bool,
    /// The config file itself holds tokens (`auth.tokens` or `auth.admin_tokens`): it must
    /// then be private (0600).
    pub holds_secrets: bool,
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

fn check_token(field: &str, t: &str) -> Result<(), ConfigError> {
    if t.len() < TOKEN_LEN_MIN || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            field,
            format!("tokens must be at least {TOKEN_LEN_MIN} visible ASCII characters"),
        ));
    }
    Ok(())
}

/// The reason of a TOML error without the quoted source line (it may hold a token): the
/// parser's message and the line and column.
fn syntax_reason(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!("line {line}, column {col}: {msg}")
        }
        None => msg,
    }
}

/// Client or admin tokens from every source: the config's list, a token file (one a line,
/// `#` comments, must be 0600) and an environment variable (separated by commas or
/// whitespace). Errors name the source, never the token.
fn gather_tokens(
    base: &Path,
    name: &str,
    inline: &[String],
    file: Option<&str>,
    env: Option<&str>,
) -> Result<Vec<Secret>, ConfigError> {
    let mut out = Vec::new();
    for (i, t) in inline.iter().enumerate() {
        check_token(&format!("auth.{name}[{i}]"), t)?;
        out.push(Secret::new(t.clone()));
    }
    if let Some(f) = file {
        let field = format!("auth.{name}_file");
        let p = resolve(base, f);
        check_private(&p, "token file").map_err(|e| invalid(&field, e.to_string()))?;
        let text = std::fs::read_to_string(&p)
            .map_err(|e| invalid(&field, format!("cannot read {}: {e}", p.display())))?;
        for (i, line) in text.lines().enumerate() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            check_token(&format!("{field} ({} line {})", p.display(), i + 1), t)?;
            out.push(Secret::new(t));
        }
    }
    if let Some(var) = env {
        let field = format!("auth.{name}_env");
        let v = std::env::var(var).map_err(|_| {
            invalid(
                &field,
                format!("environment variable {var} is not set (or not UTF-8)"),
            )
        })?;
        for (i, t) in v
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .enumerate()
        {
            check_token(&format!("{field} ({var} token {})", i + 1), t)?;
            out.push(Secret::new(t));
        }
    }
    Ok(out)
}

fn multiaddr(field: &str, s: &str) -> Result<Multiaddr, ConfigError> {
    s.parse::<Multiaddr>()
        .map_err(|e| invalid(field, format!("{s:?} is not a valid multiaddr: {e}")))
}

impl NodeConfig {
    /// Reads and validates a config file. Relative paths are relative to the file's directory.
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let base = path
            .canonicalize()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let cfg = NodeConfig::parse(&text, path, &base)?;
        if cfg.holds_secrets {
            check_private(path, "config file").map_err(|e| invalid("auth", e.to_string()))?;
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `base` resolves relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<NodeConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.display().to_string(),
            reason: syntax_reason(text, &e),
        })?;
        let region = RegionId::new(&raw.region).map_err(|e| invalid("region", e.to_string()))?;
        if raw.cluster.is_empty()
            || raw.cluster.len() > 64
            || !raw
                .cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "cluster",
                format!(
                    "{:?} must be 1 to 64 characters of A-Z a-z 0-9 - _",
                    raw.cluster
                ),
            ));
        }
        if raw.identity_key.is_empty() {
            return Err(invalid("identity_key", "must name a key file"));
        }
        if raw.data_dir.is_empty() {
            return Err(invalid("data_dir", "must name a directory"));
        }
        let http_listen: SocketAddr = raw.http.listen.parse().map_err(|_| {
            invalid(
                "http.listen",
                format!(
                    "{:?} is not a socket address like 127.0.0.1:8080",
                    raw.http.listen
                ),
            )
        })?;
        let body_limit_bytes = raw
            .http
            .body_limit_bytes
            .unwrap_or(BODY_LIMIT_BYTES_DEFAULT);
        if !(256..=BODY_LIMIT_BYTES_MAX).contains(&body_limit_bytes) {
            return Err(invalid(
                "http.body_limit_bytes",
                format!("must be between 256 and {BODY_LIMIT_BYTES_MAX}"),
            ));
        }
        let h = &raw.http;
        let metrics_listen = match &h.metrics_listen {
            None => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "http.metrics_listen",
                    format!("{a:?} is not a socket address like 127.0.0.1:9100"),
                )
            })?),
        };
        let http_limits = HttpLimits {
            request_timeout_ms: in_range(
                "http.request_timeout_ms",
                h.request_timeout_ms,
                REQUEST_TIMEOUT_MS_DEFAULT,
                100,
                600_000,
            )?,
            header_read_timeout_ms: in_range(
                "http.header_read_timeout_ms",
                h.header_read_timeout_ms,
                HEADER_READ_TIMEOUT_MS_DEFAULT,
                100,
                600_000,
            )?,
            header_bytes_max: in_range(
                "http.header_bytes_max",
                h.header_bytes_max,
                HEADER_BYTES_MAX_DEFAULT,
                1024,
                1024 * 1024,
            )?,
            concurrency_max: in_range(
                "http.concurrency_max",
                h.concurrency_max,
                CONCURRENCY_MAX_DEFAULT,
                1,
                1_000_000,
            )?,
            connections_max: in_range(
                "http.connections_max",
                h.connections_max,
                CONNECTIONS_MAX_DEFAULT,
                1,
                1_000_000,
            )?,
            rate_per_second: in_range(
                "http.rate_per_second",
                h.rate_per_second,
                RATE_PER_SECOND_DEFAULT,
                0,
                100_000_000,
            )?,
            rate_burst: in_range(
                "http.rate_burst",
                h.rate_burst,
                RATE_BURST_DEFAULT,
                1,
                100_000_000,
            )?,
        };
        let tls = h.tls.as_ref().map(|t| crate::serve::TlsFiles {
            cert: resolve(base, &t.cert),
            key: resolve(base, &t.key),
            client_ca: t.client_ca.as_deref().map(|c| resolve(base, c)),
        });
        // Never below what a member's largest batch needs on each of its connections.
        let peer_inbound_bytes_max = in_range(
            "p2p.peer_inbound_bytes_max",
            raw.p2p.peer_inbound_bytes_max,
            wallet_p2p::PEER_INBOUND_BYTES_DEFAULT,
            wallet_p2p::PEER_INBOUND_BYTES_DEFAULT,
            wallet_p2p::PEER_INBOUND_BYTES_MAX,
        )?;
        let mut p2p_listen = Vec::new();
        for (i, a) in raw.p2p.listen.iter().enumerate() {
            p2p_listen.push(multiaddr(&format!("p2p.listen[{i}]"), a)?);
        }
        let mut members = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, m) in raw.members.iter().enumerate() {
            let r = RegionId::new(&m.region)
                .map_err(|e| invalid(format!("members[{i}].region"), e.to_string()))?;
            if !seen.insert(r) {
                return Err(invalid(
                    format!("members[{i}].region"),
                    format!("region {r} is listed twice"),
                ));
            }
            let peer_id: PeerId = m.peer_id.parse().map_err(|_| {
                invalid(
                    format!("members[{i}].peer_id"),
                    format!("{:?} is not a valid peer id", m.peer_id),
                )
            })?;
            let mut addrs = Vec::new();
            for (j, a) in m.addrs.iter().enumerate() {
                addrs.push(multiaddr(&format!("members[{i}].addrs[{j}]"), a)?);
            }
            if r != region && addrs.is_empty() {
                return Err(invalid(
                    format!("members[{i}].addrs"),
                    "a peer region needs at least one address to dial",
                ));
            }
            members.push(Member {
                region: r,
                peer_id,
                addrs,
            });
        }
        if !seen.contains(&region) {
            return Err(invalid(
                "members",
                format!("this region ({region}) must be listed among the members"),
            ));
        }
        let (policy_text, policy_source) = match (&raw.policy.file, &raw.policy.inline) {
            (Some(f), None) => {
                let p = resolve(base, f);
                let t = std::fs::read_to_string(&p).map_err(|e| {
                    invalid("policy.file", format!("cannot read {}: {e}", p.display()))
                })?;
                (t, p.display().to_string())
            }
            (None, Some(t)) => (t.clone(), "inline".to_string()),
            _ => {
                return Err(invalid(
                    "policy",
                    "set exactly one of policy.file or policy.inline",
                ))
            }
        };
        let field = if raw.policy.file.is_some() {
            "policy.file"
        } else {
            "policy.inline"
        };
        let policy = Policy::from_toml(&policy_text).map_err(|e| invalid(field, e.to_string()))?;
        homes_are_members(&policy, |h| members.iter().any(|m: &Member| m.region == h))
            .map_err(|reason| invalid(field, reason))?;
        let holds_secrets = !raw.auth.tokens.is_empty() || !raw.auth.admin_tokens.is_empty();
        let tokens = gather_tokens(
            base,
            "tokens",
            &raw.auth.tokens,
            raw.auth.tokens_file.as_deref(),
            raw.auth.tokens_env.as_deref(),
        )?;
        let admin_tokens = gather_tokens(
            base,
            "admin_tokens",
            &raw.auth.admin_tokens,
            raw.auth.admin_tokens_file.as_deref(),
            raw.auth.admin_tokens_env.as_deref(),
        )?;
        if tokens.is_empty() {
            return Err(invalid(
                "auth.tokens",
                "at least one client token is required (auth.tokens, auth.tokens_file or \
                 auth.tokens_env)",
            ));
        }
        let commit_batch_records_max = raw
            .storage
            .batch_records_max
            .unwrap_or(COMMIT_BATCH_RECORDS_DEFAULT);
        if !(1..=1_000_000).contains(&commit_batch_records_max) {
            return Err(invalid(
                "storage.batch_records_max",
                "must be between 1 and 1000000",
            ));
        }
        let archive_retention_ms = match (
            raw.storage.archive_retention_days,
            raw.storage.archive_retention_secs,
        ) {
            (None, None) => None,
            (Some(d), None) if (1..=36_500).contains(&d) => Some(d * 86_400_000),
            (Some(_), None) => {
                return Err(invalid(
                    "storage.archive_retention_days",
                    "must be between 1 and 36500 (leave it out to keep the archive forever)",
                ))
            }
            (None, Some(s)) if (1..=36_500 * 86_400).contains(&s) => Some(s * 1_000),
            (None, Some(_)) => {
                return Err(invalid(
                    "storage.archive_retention_secs",
                    "must be between 1 and 3153600000 (36500 days)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "storage.archive_retention_secs",
                    "set archive_retention_days or archive_retention_secs, not both",
                ))
            }
        };
        let archive_segment_bytes = raw
            .storage
            .archive_segment_bytes
            .unwrap_or(crate::archive::SEGMENT_BYTES_DEFAULT);
        if !(4_096..=(1 << 30)).contains(&archive_segment_bytes) {
            return Err(invalid(
                "storage.archive_segment_bytes",
                "must be between 4096 and 1073741824",
            ));
        }
        let storage_backend = match raw.storage.backend.as_deref() {
            None => crate::storage::Backend::default(),
            Some(b) => crate::storage::Backend::parse(b)
                .ok_or_else(|| invalid("storage.backend", "must be \"log\" or \"redb\""))?,
        };
        let max_clock_skew_ms = raw.max_clock_skew_ms.unwrap_or(60_000);
        if !(1..=86_400_000).contains(&max_clock_skew_ms) {
            return Err(invalid(
                "max_clock_skew_ms",
                "must be between 1 and 86400000",
            ));
        }
        let heartbeat_interval_ms = period_ms(
            "heartbeat_interval_ms",
            raw.heartbeat_interval_ms,
            wallet_core::replica::HEARTBEAT_INTERVAL_MS_DEFAULT,
        )?;
        let idempotency_retention_ms = raw
            .idempotency_retention_ms
            .unwrap_or(wallet_core::replica::IDEMPOTENCY_RETENTION_MS_DEFAULT);
        if !(IDEMPOTENCY_RETENTION_MS_MIN..=IDEMPOTENCY_RETENTION_MS_MAX)
            .contains(&idempotency_retention_ms)
        {
            return Err(invalid(
                "idempotency_retention_ms",
                format!(
                    "must be between {IDEMPOTENCY_RETENTION_MS_MIN} and \
                     {IDEMPOTENCY_RETENTION_MS_MAX} (1 s to 30 days)"
                ),
            ));
        }
        let forward_timeout_ms = raw
            .forward_timeout_ms
            .unwrap_or(wallet_core::replica::modes::FORWARD_TIMEOUT_MS_DEFAULT);
        if !(FORWARD_TIMEOUT_MS_MIN..=FORWARD_TIMEOUT_MS_MAX).contains(&forward_timeout_ms) {
            return Err(invalid(
                "forward_timeout_ms",
                format!("must be between {FORWARD_TIMEOUT_MS_MIN} and {FORWARD_TIMEOUT_MS_MAX}"),
            ));
        }
        let snapshot_chunk_bytes = raw
            .snapshot_chunk_bytes
            .unwrap_or(wallet_core::replica::SNAPSHOT_CHUNK_BYTES_DEFAULT);
        if !(1..=wallet_core::replica::SNAPSHOT_CHUNK_BYTES_MAX).contains(&snapshot_chunk_bytes) {
            return Err(invalid(
                "snapshot_chunk_bytes",
                format!(
                    "must be between 1 and {}",
                    wallet_core::replica::SNAPSHOT_CHUNK_BYTES_MAX
                ),
            ));
        }
        let ack_peer = match raw.ack.as_deref() {
            None | Some("local") => false,
            Some("peer") => true,
            Some(_) => return Err(invalid("ack", "must be \"local\" or \"peer\"")),
        };
        let peer_ack_timeout_ms = period_ms(
            "peer_ack_timeout_ms",
            raw.peer_ack_timeout_ms,
            PEER_ACK_TIMEOUT_MS_DEFAULT,
        )?;
        Ok(NodeConfig {
            path: path.to_path_buf(),
            region,
            cluster: raw.cluster,
            identity_key: resolve(base, &raw.identity_key),
            data_dir: resolve(base, &raw.data_dir),
            restore: raw.restore,
            join: raw.join,
            max_clock_skew_ms,
            heartbeat_interval_ms,
            idempotency_retention_ms,
            forward_timeout_ms,
            compact_every_events: raw.compact_every_events,
            snapshot_chunk_bytes,
            ack_peer,
            peer_ack_timeout_ms,
            http_listen,
            body_limit_bytes,
            metrics_listen,
            http_limits,
            tls,
            p2p_listen,
            peer_inbound_bytes_max,
            members,
            policy,
            policy_source,
            tokens,
            admin_tokens,
            storage_backend,
            group_commit: raw.storage.group_commit.unwrap_or(true),
            commit_batch_records_max,
            archive_retention_ms,
            archive_segment_bytes,
            faults_enabled: raw.faults.enabled,
            holds_secrets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "[default]\naction = \"fee\"\n";

    fn pid() -> String {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
            .to_string()
    }

    fn text(peer: &str) -> String {
        let me = pid();
        format!(
            r#"
region = "eu"
cluster = "c1"
identity_key = "eu.key"
data_dir = "data/eu"
[http]
listen = "127.0.0.1:0"
[p2p]
listen = ["/ip4/127.0.0.1/tcp/0"]
[[members]]
region = "eu"
peer_id = "{me}"
[[members]]
region = "us"
peer_id = "{peer}"
addrs = ["/ip4/127.0.0.1/tcp/1"]
[policy]
inline = '''{POLICY}'''
[auth]
tokens = ["0123456789abcdef0123"]
"#
        )
    }

    #[test]
    fn good_config_parses() {
        let c = NodeConfig::parse(&text(&pid()), Path::new("x.toml"), Path::new("/base")).unwrap();
        assert_eq!(c.region.as_str(), "eu");
        assert_eq!(c.members.len(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/base/data/eu"));
        assert!(c.group_commit);
    }

    #[test]
    fn the_forward_timeout_defaults_to_the_cores_and_is_bounded() {
        let parse = |extra: &str| {
            NodeConfig::parse(
                &format!("{extra}{}", text(&pid())),
                Path::new("x.toml"),
                Path::new("/"),
            )
        };
        assert_eq!(
            parse("").unwrap().forward_timeout_ms,
            wallet_core::replica::modes::FORWARD_TIMEOUT_MS_DEFAULT
        );
        assert_eq!(
            parse("forward_timeout_ms = 2500\n")
                .unwrap()
                .forward_timeout_ms,
            2500
        );
        for bad in ["forward_timeout_ms = 10\n", "forward_timeout_ms = 600000\n"] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("forward_timeout_ms"), "{e}");
        }
    }

    #[test]
    fn the_archive_retention_is_off_by_default_and_checked() {
        let parse = |extra: &str| {
            NodeConfig::parse(
                &format!("{}{extra}", text(&pid())),
                Path::new("x.toml"),
                Path::new("/"),
            )
        };
        assert_eq!(parse("").unwrap().archive_retention_ms, None);
        let c = parse("[storage]\narchive_retention_days = 30\n").unwrap();
        assert_eq!(c.archive_retention_ms, Some(30 * 86_400_000));
        let c = parse("[storage]\narchive_retention_secs = 90\n").unwrap();
        assert_eq!(c.archive_retention_ms, Some(90_000));
        for bad in [
            "archive_retention_days = 0",
            "archive_retention_secs = 0",
            "archive_retention_secs = 3153600001",
            "archive_segment_bytes = 10",
        ] {
            let e = parse(&format!("[storage]\n{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{e}");
        }
        let e = parse("[storage]\narchive_retention_days = 1\narchive_retention_secs = 60\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn the_storage_backend_defaults_to_the_log_and_an_unknown_one_is_refused() {
        use crate::storage::Backend;
        let parse = |extra: &str| {
            NodeConfig::parse(
                &format!("{}{extra}", text(&pid())),
                Path::new("x.toml"),
                Path::new("/"),
            )
        };
        assert_eq!(parse("").unwrap().storage_backend, Backend::Log);
        let redb = parse("[storage]\nbackend = \"redb\"\n").unwrap();
        assert_eq!(redb.storage_backend, Backend::Redb);
        let e = parse("[storage]\nbackend = \"lsm\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("storage.backend"), "{e}");
    }

    #[test]
    fn every_mode_is_served_and_a_bad_mode_name_is_refused_naming_the_field() {
        let with = |policy: &str| text(&pid()).replace(POLICY, policy);
        for policy in [
            "[default]\nmode = \"home\"\nhome = \"us\"\n",
            "[default]\naction = \"fee\"\n[[rule]]\ntier = \"payout\"\nmode = \"escrow\"\n[tiers]\npayout = [\"po-\"]\n",
            "[default]\nmode = \"optimistic\"\n",
        ] {
            let c = NodeConfig::parse(&with(policy), Path::new("x.toml"), Path::new("/"));
            assert!(c.is_ok(), "{policy}: {:?}", c.err());
        }
        let e = NodeConfig::parse(
            &with("[default]\nmode = \"lock\"\n"),
            Path::new("x.toml"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("policy.inline"), "{e}");
        assert!(e.contains("lock"), "{e}");
        let e = NodeConfig::parse(
            &with("[default]\nmode = \"home\"\nhome = \"ap\"\n"),
            Path::new("x.toml"),
            Path::new("/"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("policy.inline") && e.contains("not a member"),
            "{e}"
        );
    }

    #[test]
    fn idempotency_retention_defaults_to_a_day_and_is_bounded() {
        let c = NodeConfig::parse(&text(&pid()), Path::new("x.toml"), Path::new("/")).unwrap();
        assert_eq!(c.idempotency_retention_ms, 86_400_000);
        let with = |v: u64| format!("idempotency_retention_ms = {v}\n") + &text(&pid());
        let c = NodeConfig::parse(&with(60_000), Path::new("x.toml"), Path::new("/")).unwrap();
        assert_eq!(c.idempotency_retention_ms, 60_000);
        for bad in [999, IDEMPOTENCY_RETENTION_MS_MAX + 1] {
            let e = NodeConfig::parse(&with(bad), Path::new("x.toml"), Path::new("/")).unwrap_err();
            assert!(e.to_string().contains("idempotency_retention_ms"), "{e}");
        }
    }

    #[test]
    fn snapshot_chunk_bytes_defaults_to_a_mebibyte_and_fits_a_message() {
        let parse = |extra: &str| {
            NodeConfig::parse(
                &(extra.to_string() + &text(&pid())),
                Path::new("x.toml"),
                Path::new("/"),
            )
        };
        assert_eq!(parse("").unwrap().snapshot_chunk_bytes, 1 << 20);
        assert_eq!(
            parse("snapshot_chunk_bytes = 512\n")
                .unwrap()
                .snapshot_chunk_bytes,
            512
        );
        let over = wallet_core::replica::SNAPSHOT_CHUNK_BYTES_MAX + 1;
        for bad in [0, over] {
            let e = parse(&format!("snapshot_chunk_bytes = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("snapshot_chunk_bytes"), "{e}");
        }
    }

    #[test]
    fn bad_peer_id_names_the_field() {
        let e = NodeConfig::parse(&text("xyz"), Path::new("x.toml"), Path::new("/")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config error: members[1].peer_id: \"xyz\" is not a valid peer id"
        );
    }

    #[test]
    fn debug_and_syntax_errors_never_show_a_token() {
        let c = NodeConfig::parse(&text(&pid()), Path::new("x.toml"), Path::new("/")).unwrap();
        assert_eq!(c.tokens.len(), 1);
        assert!(c.holds_secrets);
        assert!(!format!("{c:?}").contains("0123456789abcdef0123"));
        // A syntax error on the token's line: the message gives line and column, not the line.
        let broken = text(&pid()).replace(
            "tokens = [\"0123456789abcdef0123\"]",
            "tokens = [\"0123456789abcdef0123\" oops]",
        );
        let e = NodeConfig::parse(&broken, Path::new("x.toml"), Path::new("/")).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        assert!(e.to_string().contains("line "), "{e}");
        let short = text(&pid()).replace("0123456789abcdef0123", "tiny-secret");
        let e = NodeConfig::parse(&short, Path::new("x.toml"), Path::new("/")).unwrap_err();
        assert!(!e.to_string().contains("tiny-secret"), "{e}");
    }

    #[test]
    fn tokens_from_a_file_and_the_environment() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("tokens");
        crate::secret::write_private(
            &f,
            b"# rotated 2026-11\nfile-token-aaaaaaaaaaaa\n\nfile-token-bbbbbbbbbbbb\n",
        )
        .unwrap();
        let var = format!("WALLETD_TEST_TOKENS_{}", std::process::id());
        std::env::set_var(&var, "env-token-cccccccccccc, env-token-dddddddddddd");
        let t = text(&pid()).replace(
            "tokens = [\"0123456789abcdef0123\"]",
            &format!("tokens_file = \"tokens\"\ntokens_env = \"{var}\""),
        );
        let c = NodeConfig::parse(&t, Path::new("x.toml"), d.path()).unwrap();
        let got: Vec<&str> = c.tokens.iter().map(Secret::expose).collect();
        assert_eq!(
            got,
            [
                "file-token-aaaaaaaaaaaa",
                "file-token-bbbbbbbbbbbb",
                "env-token-cccccccccccc",
                "env-token-dddddddddddd"
            ]
        );
        assert!(!c.holds_secrets);
        // A token file others may read is refused, naming the file, not the tokens.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = NodeConfig::parse(&t, Path::new("x.toml"), d.path()).unwrap_err();
        assert!(e.to_string().contains("auth.tokens_file"), "{e}");
        assert!(e.to_string().contains("readable by group or others"), "{e}");
        assert!(!e.to_string().contains("file-token"), "{e}");
        std::env::remove_var(&var);
    }

    #[test]
    fn unknown_field_is_a_syntax_error() {
        let t = text(&pid()) + "\nbogus = 1\n";
        let e = NodeConfig::parse(&t, Path::new("x.toml"), Path::new("/")).unwrap_err();
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e}");
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
