//! `walletd`: the region node of the multi-region wallet.
//!
//! ```text
//! walletd init --regions eu,us,ap --dir DIR      # a local cluster on 127.0.0.1
//! walletd init --region eu=10.0.0.1 --region us=10.0.0.2 --dir DIR   # one directory per host
//! walletd keygen --out FILE                      # a new identity key; prints its peer id
//! walletd run --config DIR/eu.toml               # one region
//! walletd join --region sa --from DIR/eu.toml --dir DIR   # a new region's config
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;

/// mimalloc: the HTTP path allocates small buffers per request; it cuts server CPU per
/// transaction against the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use wallet::config::NodeConfig;
use wallet::init::{self, InitOptions};

#[derive(Debug, Parser)]
#[command(name = "walletd", version, about = "Multi-region wallet region node")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Pretty,
}

/// Subcommands. New ones (e.g. `demo`) are added here and reuse the library modules.
#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run one region.
    Run {
        /// The region's config file.
        #[arg(long)]
        config: PathBuf,
        /// Override `storage.group_commit` (false: one commit, one fsync per record):
        /// `--group-commit`, `--group-commit=false`, `--group-commit false`, `--no-group-commit`.
        #[arg(long, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set,
              overrides_with = "no_group_commit")]
        group_commit: Option<bool>,
        /// Same as `--group-commit=false`.
        #[arg(long, overrides_with = "group_commit")]
        no_group_commit: bool,
    },
    /// Three regions on 127.0.0.1: partition, double spend, heal, settle; exit 0 if all agree.
    Demo {
        /// Policy file (default examples/demo-policy.toml, else an embedded copy).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Keep the cluster (configs, data, logs) in this new directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Write a new ed25519 identity key (0600, in a 0700 directory) and print its peer id;
    /// refuses to overwrite an existing file.
    Keygen {
        /// The key file to create, e.g. /etc/walletd/eu.key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write configs, keys, a policy, tokens and cluster.json: a local cluster on 127.0.0.1
    /// (`--regions`), or one directory per host to copy over (`--region eu=HOST`, repeated;
    /// docs/deployment.md).
    Init(InitArgs),
    /// Write the config of a new region joining a running cluster, from an existing
    /// member's config (cluster id, policy, tokens, TLS CA), and print the
    /// `POST /v1/admin/members` call that adds it (docs/operations.md "Add a region").
    Join(JoinArgs),
}

/// `walletd join ...`.
#[derive(Debug, Args)]
struct JoinArgs {
    /// The new region's id.
    #[arg(long)]
    region: String,
    /// An existing member's config file.
    #[arg(long)]
    from: PathBuf,
    /// Where to write `<region>.toml`, `<region>.key` and `data/<region>`.
    #[arg(long)]
    dir: PathBuf,
    /// HTTP listen address [default: 127.0.0.1 and a free port].
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// libp2p listen multiaddr [default: /ip4/127.0.0.1/tcp/<free port>].
    #[arg(long)]
    p2p_listen: Option<libp2p::Multiaddr>,
    /// The multiaddr the members dial [default: the listen address].
    #[arg(long)]
    advertise: Option<libp2p::Multiaddr>,
    /// The cluster CA's key, when the cluster serves TLS [default: ca.key next to ca.crt].
    #[arg(long)]
    ca_key: Option<PathBuf>,
}

/// `walletd init ...`.
#[derive(Debug, Args)]
struct InitArgs {
    /// Comma-separated region ids, e.g. eu,us,ap: a local cluster on 127.0.0.1.
    #[arg(long, required_unless_present = "region", conflicts_with = "region")]
    regions: Option<String>,
    /// A region and the address or host name its peers and clients reach it at, e.g.
    /// `--region eu=10.0.0.1` (repeat per region): writes DIR/<region>/ for that host.
    #[arg(long = "region", value_name = "REGION=HOST")]
    region: Vec<String>,
    /// With --region: the address every region binds (default 0.0.0.0, or :: for an IPv6
    /// host); peers and clients are still told the host's address.
    #[arg(long, conflicts_with = "regions")]
    bind: Option<std::net::IpAddr>,
    /// With --region: the HTTP API port on every host [default: 8443].
    #[arg(long, conflicts_with = "regions")]
    http_port: Option<u16>,
    /// With --region: the libp2p port on every host, TCP and UDP for QUIC [default: 4001].
    #[arg(long, conflicts_with = "regions")]
    p2p_port: Option<u16>,
    /// With --region: the `data_dir` written to every config (default `data`, next to the
    /// config; under the systemd unit `/var/lib/walletd`).
    #[arg(long, conflicts_with = "regions")]
    data_dir: Option<PathBuf>,
    /// Output directory.
    #[arg(long)]
    dir: PathBuf,
    /// Enable the fault-injection endpoint (POST /v1/admin/faults); off unless given:
    /// `--faults`, `--faults=true|false`, `--faults true|false`, `--no-faults`.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set,
          overrides_with = "no_faults")]
    faults: Option<bool>,
    /// Same as `--faults=false` (the default).
    #[arg(long, overrides_with = "faults")]
    no_faults: bool,
    /// Group commit setting written to the configs (default on): `--group-commit=false`,
    /// `--group-commit false` or `--no-group-commit` turn it off.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", action = ArgAction::Set,
          overrides_with = "no_group_commit")]
    group_commit: Option<bool>,
    /// Same as `--group-commit=false`.
    #[arg(long, overrides_with = "group_commit")]
    no_group_commit: bool,
    /// Also write a local CA (`ca.crt`, `ca.key`) and per-region certificates, and serve
    /// the HTTP API over HTTPS (docs/security.md).
    #[arg(long)]
    tls: bool,
}

impl InitArgs {
    /// What `init` is to write: a local cluster (`--regions`) or one directory per host
    /// (`--region`, repeated).
    fn options(self) -> Result<InitOptions, init::InitError> {
        let faults = flag(self.faults, self.no_faults, false);
        let group_commit = flag(self.group_commit, self.no_group_commit, true);
        let (regions, hosts, per_host) = match &self.regions {
            Some(r) => (init::parse_regions(r)?, None, None),
            None => {
                let (r, h) = init::parse_region_hosts(&self.region)?;
                let http_port = self.http_port.unwrap_or(init::HTTP_PORT_DEFAULT);
                let p2p_port = self.p2p_port.unwrap_or(init::P2P_PORT_DEFAULT);
                let ports = [("--http-port", http_port), ("--p2p-port", p2p_port)];
                if let Some((flag, _)) = ports.iter().find(|(_, p)| *p == 0) {
                    return Err(init::InitError::Args(format!("{flag} must not be 0")));
                }
                let per_host = init::PerHost {
                    bind: self.bind,
                    http_port,
                    p2p_port,
                    data_dir: self.data_dir,
                };
                (r, Some(h), Some(per_host))
            }
        };
        Ok(InitOptions {
            regions,
            dir: self.dir,
            faults,
            group_commit,
            tls: self.tls,
            rate_per_second: None,
            hosts,
            per_host,
        })
    }
}

/// `walletd policy ...`.
#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Validate a policy file and show what it would change (fees on sample overdrafts per
    /// tier and currency, floors, actions). Exit 0 valid, 2 invalid, 1 if the policy to
    /// compare with cannot be read.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        /// Compare with the policy in force at this region (GET /v1/policy), e.g.
        /// http://127.0.0.1:8080.
        #[arg(long, conflicts_with = "config")]
        url: Option<String>,
        /// Bearer token for --url (default: the WALLETD_TOKEN environment variable).
        #[arg(long, requires = "url")]
        token: Option<String>,
        /// CA certificate (PEM) to trust for an https:// --url (e.g. the ca.crt written by
        /// `walletd init --tls`).
        #[arg(long, requires = "url")]
        ca: Option<PathBuf>,
        /// Compare with the policy file of this region config (its seed policy).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// A `--x[=bool]` / `--no-x` pair: the last one given wins (clap's `overrides_with`), else
/// `default`.
fn flag(value: Option<bool>, negated: bool, default: bool) -> bool {
    if negated {
        false
    } else {
        value.unwrap_or(default)
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => b.json().init(),
        LogFormat::Pretty => b.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Cmd::Demo { policy, keep } => {
            wallet::demo::main(wallet::demo::DemoOptions { policy, keep })
        }
        Cmd::Policy {
            command:
                PolicyCmd::Check {
                    file,
                    url,
                    token,
                    ca,
                    config,
                },
        } => {
            use wallet::policycheck::{self, Against};
            let against = match (url, config) {
                (Some(url), _) => Against::Url {
                    url,
                    token: token
                        .or_else(|| std::env::var("WALLETD_TOKEN").ok())
                        .unwrap_or_default(),
                    ca,
                },
                (None, Some(c)) => Against::Config(c),
                (None, None) => Against::Nothing,
            };
            policycheck::main(&file, against)
        }
        Cmd::Keygen { out } => match wallet::keygen::keygen(&out) {
            Ok(peer) => {
                println!("{peer}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("walletd keygen: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Join(a) => {
            let region = match wallet_core::RegionId::new(&a.region) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("walletd join: --region: {e}");
                    return ExitCode::from(2);
                }
            };
            let opts = wallet::join::JoinOptions {
                from: a.from,
                region,
                dir: a.dir,
                http_listen: a.http_listen,
                p2p_listen: a.p2p_listen,
                advertise: a.advertise,
                ca_key: a.ca_key,
            };
            match wallet::join::make_config(&opts) {
                Ok(j) => {
                    println!("{} {} {}", region, j.http, j.config.display());
                    println!(
                        "1. add it at any member (admin token in WALLET_ADMIN_TOKEN):\n{}",
                        j.curl()
                    );
                    println!(
                        "2. start it: walletd run --config {}\n   it pulls the history and \
                         takes traffic once it holds its join (GET /readyz: 200)",
                        j.config.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("walletd join: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Init(args) => {
            let opts = match args.options() {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match init::init(&opts) {
                Ok(c) => {
                    for r in &c.regions {
                        println!("{} {} {}", r.region, r.http, r.config);
                    }
                    if opts.per_host.is_some() {
                        println!(
                            "copy each region's directory to its host, then run \
                             `walletd run --config <copied dir>/{}` there (docs/deployment.md)",
                            init::HOST_CONFIG_NAME
                        );
                    }
                    if let Some(ca) = &c.ca {
                        println!("HTTPS: trust the local CA {ca}");
                    }
                    println!(
                        "cluster.json written to {}",
                        opts.dir.join("cluster.json").display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run {
            config,
            group_commit,
            no_group_commit,
        } => {
            let group_commit = if no_group_commit {
                Some(false)
            } else {
                group_commit
            };
            let mut cfg = match NodeConfig::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            if let Some(g) = group_commit {
                cfg.group_commit = g;
            }
            wallet::node::run_blocking(cfg)
        }
    }
}

#[cfg(test)]
mod tests {
    //! One test per flag documented in docs/operations.md (the command table).
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let mut v = vec!["walletd"];
        v.extend_from_slice(args);
        match Cli::try_parse_from(v) {
            Ok(c) => c,
            Err(e) => panic!("{args:?} rejected: {e}"),
        }
    }

    /// (faults, group_commit) as `init` resolves them.
    fn init_flags(extra: &[&str]) -> (bool, bool) {
        let mut args = vec!["init", "--regions", "eu", "--dir", "/tmp/x"];
        args.extend_from_slice(extra);
        match parse(&args).command {
            Cmd::Init(a) => {
                let o = a.options().unwrap_or_else(|e| panic!("{e}"));
                (o.faults, o.group_commit)
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn init_faults_are_off_by_default() {
        assert_eq!(init_flags(&[]), (false, true));
    }

    #[test]
    fn init_tls_flag() {
        let tls = |extra: &[&str]| {
            let mut args = vec!["init", "--regions", "eu", "--dir", "/tmp/x"];
            args.extend_from_slice(extra);
            match parse(&args).command {
                Cmd::Init(a) => a.tls,
                c => panic!("{c:?}"),
            }
        };
        assert!(!tls(&[]));
        assert!(tls(&["--tls"]));
    }

    #[test]
    fn init_faults_flag_every_spelling() {
        assert!(init_flags(&["--faults"]).0);
        assert!(init_flags(&["--faults=true"]).0);
        assert!(init_flags(&["--faults", "true"]).0);
        assert!(!init_flags(&["--faults=false"]).0);
        assert!(!init_flags(&["--faults", "false"]).0);
        assert!(!init_flags(&["--no-faults"]).0);
        assert!(!init_flags(&["--faults", "--no-faults"]).0);
        assert!(init_flags(&["--no-faults", "--faults"]).0);
        assert!(Cli::try_parse_from([
            "walletd",
            "init",
            "--regions",
            "eu",
            "--dir",
            "d",
            "--faults=maybe"
        ])
        .is_err());
    }

    #[test]
    fn init_group_commit_flag_every_spelling() {
        assert!(init_flags(&["--group-commit"]).1);
        assert!(init_flags(&["--group-commit=true"]).1);
        assert!(!init_flags(&["--group-commit=false"]).1);
        assert!(!init_flags(&["--group-commit", "false"]).1);
        assert!(!init_flags(&["--no-group-commit"]).1);
        assert!(init_flags(&["--no-group-commit", "--group-commit"]).1);
    }

    fn run_group_commit(extra: &[&str]) -> Option<bool> {
        let mut args = vec!["run", "--config", "eu.toml"];
        args.extend_from_slice(extra);
        match parse(&args).command {
            Cmd::Run {
                config,
                group_commit,
                no_group_commit,
            } => {
                assert_eq!(config, PathBuf::from("eu.toml"));
                if no_group_commit {
                    Some(false)
                } else {
                    group_commit
                }
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn run_group_commit_override() {
        assert_eq!(run_group_commit(&[]), None);
        assert_eq!(run_group_commit(&["--group-commit", "true"]), Some(true));
        assert_eq!(run_group_commit(&["--group-commit", "false"]), Some(false));
        assert_eq!(run_group_commit(&["--group-commit=false"]), Some(false));
        assert_eq!(run_group_commit(&["--group-commit"]), Some(true));
        assert_eq!(run_group_commit(&["--no-group-commit"]), Some(false));
    }

    #[test]
    fn init_region_hosts_flags() {
        let o = match parse(&[
            "init",
            "--dir",
            "d",
            "--region",
            "eu=10.0.0.1",
            "--region",
            "us=us.example",
            "--bind",
            "10.0.0.9",
            "--http-port",
            "443",
            "--p2p-port",
            "9000",
            "--data-dir",
            "/var/lib/walletd",
        ])
        .command
        {
            Cmd::Init(a) => a.options().unwrap_or_else(|e| panic!("{e}")),
            c => panic!("{c:?}"),
        };
        let names: Vec<&str> = o.regions.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, ["eu", "us"]);
        let hosts = o.hosts.expect("hosts");
        assert_eq!(hosts[0].p2p, init::Host::Ip("10.0.0.1".parse().unwrap()));
        assert_eq!(hosts[1].http, init::Host::Name("us.example".into()));
        let p = o.per_host.expect("per host");
        assert_eq!(p.bind, Some("10.0.0.9".parse().unwrap()));
        assert_eq!((p.http_port, p.p2p_port), (443, 9000));
        assert_eq!(p.data_dir, Some(PathBuf::from("/var/lib/walletd")));
        // Without --region: the local layout.
        match parse(&["init", "--dir", "d", "--regions", "eu,us"]).command {
            Cmd::Init(a) => {
                let o = a.options().unwrap_or_else(|e| panic!("{e}"));
                assert!(o.hosts.is_none() && o.per_host.is_none());
            }
            c => panic!("{c:?}"),
        }
        // Port 0 and a bad host are refused, naming what is wrong.
        for (args, says) in [
            (
                &["--region", "eu=10.0.0.1", "--http-port", "0"][..],
                "--http-port",
            ),
            (&["--region", "eu=bad_host"][..], "bad_host"),
        ] {
            let mut v = vec!["init", "--dir", "d"];
            v.extend_from_slice(args);
            match parse(&v).command {
                Cmd::Init(a) => {
                    let e = a.options().expect_err("refused").to_string();
                    assert!(e.contains(says), "{e}");
                }
                c => panic!("{c:?}"),
            }
        }
        let refused = |args: &[&str]| {
            let mut v = vec!["walletd", "init", "--dir", "d"];
            v.extend_from_slice(args);
            assert!(Cli::try_parse_from(&v).is_err(), "{args:?} accepted");
        };
        refused(&[]);
        refused(&["--regions", "eu", "--region", "eu=10.0.0.1"]);
        refused(&["--regions", "eu", "--http-port", "443"]);
        refused(&["--regions", "eu", "--p2p-port", "4001"]);
        refused(&["--regions", "eu", "--bind", "0.0.0.0"]);
        refused(&["--regions", "eu", "--data-dir", "x"]);
        refused(&["--region", "eu=10.0.0.1", "--bind", "nowhere"]);
    }

    #[test]
    fn keygen_flags() {
        match parse(&["keygen", "--out", "k/eu.key"]).command {
            Cmd::Keygen { out } => assert_eq!(out, PathBuf::from("k/eu.key")),
            c => panic!("{c:?}"),
        }
        assert!(Cli::try_parse_from(["walletd", "keygen"]).is_err());
    }

    #[test]
    fn demo_flags() {
        match parse(&["demo", "--policy", "p.toml", "--keep", "/tmp/d"]).command {
            Cmd::Demo { policy, keep, .. } => {
                assert_eq!(policy, Some(PathBuf::from("p.toml")));
                assert_eq!(keep, Some(PathBuf::from("/tmp/d")));
            }
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn log_format_is_global() {
        assert!(matches!(
            parse(&["--log-format", "json", "demo"]).log_format,
            LogFormat::Json
        ));
        assert!(matches!(
            parse(&["demo", "--log-format", "pretty"]).log_format,
            LogFormat::Pretty
        ));
        assert!(Cli::try_parse_from(["walletd", "--log-format", "xml", "demo"]).is_err());
    }
}
