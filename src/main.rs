//! `walletd`: the region node of the multi-region wallet.
//!
//! ```text
//! walletd init --regions eu,us,ap --dir DIR      # a local cluster on 127.0.0.1
//! walletd run --config DIR/eu.toml               # one region
//! ```

#![forbid(unsafe_code)]

use std::path::PathBuf;

/// mimalloc: the HTTP path allocates small buffers per request; it cuts server CPU per
/// transaction against the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
        /// Override `storage.group_commit` (false: one commit, one fsync per record).
        #[arg(long)]
        group_commit: Option<bool>,
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
    /// Write configs, keys, a policy, tokens and cluster.json for a local cluster.
    Init {
        /// Comma-separated region ids, e.g. eu,us,ap.
        #[arg(long)]
        regions: String,
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Enable the fault-injection endpoint (POST /v1/admin/faults).
        #[arg(long, default_value_t = true)]
        faults: bool,
        /// Group commit setting written to the configs.
        #[arg(long, default_value_t = true)]
        group_commit: bool,
    },
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
        /// Compare with the policy file of this region config (its seed policy).
        #[arg(long)]
        config: Option<PathBuf>,
    },
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
                },
                (None, Some(c)) => Against::Config(c),
                (None, None) => Against::Nothing,
            };
            policycheck::main(&file, against)
        }
        Cmd::Init {
            regions,
            dir,
            faults,
            group_commit,
        } => {
            let regions = match init::parse_regions(&regions) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let opts = InitOptions {
                regions,
                dir,
                faults,
                group_commit,
            };
            match init::init(&opts) {
                Ok(c) => {
                    for r in &c.regions {
                        println!("{} {} {}", r.region, r.http, r.config);
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
        } => {
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
