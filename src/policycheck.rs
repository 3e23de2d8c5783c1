//! `walletd policy check FILE`: validates a policy file and shows what it would change against
//! the policy in force on a running cluster (`--url`, from `GET /v1/policy`) or against a
//! region's configured seed policy (`--config`), before it is applied with
//! `POST /v1/admin/policy`.
//!
//! What a policy does to a debit is the core's rule ([`wallet_core::policy::Applied`],
//! `first_overdraft`); this module only picks sample accounts and amounts and prints a table.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use wallet_core::{Currency, Kind, Overdraft, Policy, PolicyDocument};

/// Sample overdrawn amounts, in units of the currency (rendered at its minor units).
pub const SAMPLE_OVERDRAFTS: [u32; 3] = [10, 100, 1000];

/// Why a check could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The file is not a valid policy (exit 2).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// The core's error, naming the field.
        reason: String,
    },
    /// The policy to compare against could not be read (exit 1).
    #[error("{0}")]
    Against(String),
}

/// What to compare the file with.
#[derive(Debug, Clone)]
pub enum Against {
    /// Nothing: validate and show the file's own table.
    Nothing,
    /// A running region: `GET {url}/v1/policy` with this bearer token.
    Url {
        /// Base URL, e.g. `http://127.0.0.1:8080`.
        url: String,
        /// A client (or admin) token.
        token: String,
        /// A CA certificate (PEM) to trust for an `https://` URL (e.g. the `ca.crt` that
        /// `walletd init --tls` writes); the system roots otherwise.
        ca: Option<PathBuf>,
    },
    /// A region's config: its policy file (the seed, version 1 as configured).
    Config(PathBuf),
}

/// A policy to compare against, with where it came from.
struct Current {
    label: String,
    policy: Policy,
}

fn read_file(path: &Path) -> Result<Policy, CheckError> {
    let invalid = |reason: String| CheckError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
    Policy::from_toml(&text).map_err(|e| invalid(e.to_string()))
}

async fn fetch(url: &str, token: &str, ca: Option<&Path>) -> Result<Current, CheckError> {
    let base = url.trim_end_matches('/');
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .map_err(|e| CheckError::Against(format!("--ca {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| CheckError::Against(format!("--ca {}: {e}", ca.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    let http = builder
        .build()
        .map_err(|e| CheckError::Against(format!("HTTP client: {e}")))?;
    let resp = http
        .get(format!("{base}/v1/policy"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| CheckError::Against(format!("GET {base}/v1/policy: {e}")))?;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| CheckError::Against(format!("GET {base}/v1/policy: {e}")))?;
    if status != 200 {
        return Err(CheckError::Against(format!(
            "GET {base}/v1/policy: HTTP {status}: {body}"
        )));
    }
    let doc: PolicyDocument = serde_json::from_value(body["policy"].clone()).map_err(|e| {
        CheckError::Against(format!("GET {base}/v1/policy: unexpected policy: {e}"))
    })?;
    let policy = Policy::from_document(doc)
        .map_err(|e| CheckError::Against(format!("GET {base}/v1/policy: policy in force: {e}")))?;
    Ok(Current {
        label: format!(
            "{base}: version {} hash {}",
            body["version"],
            body["hash"].as_str().unwrap_or("?")
        ),
        policy,
    })
}

fn action_of(a: &wallet_core::policy::Applied) -> String {
    let act = match a.action {
        wallet_core::Action::Fee => "fee",
        wallet_core::Action::Reverse => "reverse",
    };
    // A zero floor is `-0` as a Decimal (the negated line): show it as 0.
    let floor = if a.floor.is_zero() {
        Decimal::ZERO
    } else {
        a.floor
    };
    // The consistency mode (SPEC §8) when not optimistic, so a mode change shows as a change.
    let mode = match &a.mode {
        wallet_core::Mode::Optimistic => String::new(),
        wallet_core::Mode::Home { home } => format!(", home {home}"),
        wallet_core::Mode::Escrow {
            fallback: wallet_core::Fallback::Refuse,
            ..
        } => ", escrow".into(),
        wallet_core::Mode::Escrow { risk_limit, .. } => {
            format!(", hybrid risk {}", a.currency.render(*risk_limit))
        }
    };
    format!("{act}, floor {}{mode}", a.currency.render(floor))
}

fn outcome(a: &wallet_core::policy::Applied, kind: Kind, overdrawn: Decimal) -> String {
    match a.first_overdraft(kind, overdrawn) {
        Some(Overdraft::Reversal) => "rev".into(),
        Some(Overdraft::Fee(f)) => a.currency.render(f),
        Some(Overdraft::Nothing) => "-".into(),
        None => "overflow".into(),
    }
}

/// Sample accounts: one with no tier, and one per tier of either policy (its first prefix).
fn samples(new: &Policy, old: Option<&Policy>) -> Vec<String> {
    let mut out = Vec::new();
    let untiered = ["account", "sample", "x-sample", "0"]
        .into_iter()
        .find(|a| new.tier_of(a).is_none() && old.is_none_or(|o| o.tier_of(a).is_none()));
    if let Some(a) = untiered {
        out.push(a.to_string());
    }
    let mut names = BTreeSet::new();
    for p in std::iter::once(new).chain(old) {
        for (tier, prefixes) in &p.tiers {
            if names.insert(tier.clone()) {
                if let Some(pre) = prefixes.first() {
                    out.push(format!("{pre}sample"));
                }
            }
        }
    }
    out
}

fn currencies(new: &Policy, old: Option<&Policy>) -> Vec<Currency> {
    let mut set = BTreeSet::new();
    set.insert(Currency::USD.as_str().to_string());
    for p in std::iter::once(new).chain(old) {
        for r in &p.rules {
            if let Some(c) = r.currency {
                set.insert(c.as_str().to_string());
            }
        }
    }
    set.iter().filter_map(|c| Currency::parse(c).ok()).collect()
}

fn tier_name(p: &Policy, account: &str) -> String {
    p.tier_of(account).unwrap_or("(none)").to_string()
}

/// The report: one line per sample account, currency and debit kind; `*` marks lines that
/// change. Returns the text and how many lines change.
pub fn report(new: &Policy, old: Option<&Policy>) -> (String, usize) {
    use std::fmt::Write as _;
    let mut s = String::new();
    let amounts: Vec<String> = SAMPLE_OVERDRAFTS.iter().map(u32::to_string).collect();
    let _ = writeln!(
        s,
        "  {:<16} {:<10} {:<4} {:<11} {:<20} fee on an overdraft of {} (rev = reversed, - = none)",
        "account",
        "tier",
        "cur",
        "kind",
        "action / floor",
        amounts.join(" / ")
    );
    let mut changed = 0;
    for account in samples(new, old) {
        for cur in currencies(new, old) {
            let a_new = new.applied(&account, cur);
            let a_old = old.map(|o| o.applied(&account, cur));
            for kind in [Kind::Purchase, Kind::Withdrawal] {
                let fees = |a: &wallet_core::policy::Applied| -> String {
                    SAMPLE_OVERDRAFTS
                        .iter()
                        .map(|n| outcome(a, kind, Decimal::from(*n)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                };
                let (tier, action, fee, differs) = match &a_old {
                    None => (
                        tier_name(new, &account),
                        action_of(&a_new),
                        fees(&a_new),
                        false,
                    ),
                    Some(o) => {
                        let (t0, t1) = (
                            tier_name(old.unwrap_or(new), &account),
                            tier_name(new, &account),
                        );
                        let (x0, x1) = (action_of(o), action_of(&a_new));
                        let (f0, f1) = (fees(o), fees(&a_new));
                        let differs = t0 != t1 || x0 != x1 || f0 != f1;
                        let arrow = |a: String, b: String| {
                            if a == b {
                                a
                            } else {
                                format!("{a} -> {b}")
                            }
                        };
                        (arrow(t0, t1), arrow(x0, x1), arrow(f0, f1), differs)
                    }
                };
                if differs {
                    changed += 1;
                }
                let _ = writeln!(
                    s,
                    "{} {:<16} {:<10} {:<4} {:<11} {:<20} {}",
                    if differs { "*" } else { " " },
                    account,
                    tier,
                    cur.as_str(),
                    kind.as_str(),
                    action,
                    fee
                );
            }
        }
    }
    (s, changed)
}

/// Runs the check and prints the report; returns the exit code (0 valid, 2 invalid, 1 when
/// the policy to compare against could not be read).
pub fn main(file: &Path, against: Against) -> std::process::ExitCode {
    let new = match read_file(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("invalid policy: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let current = match against {
        Against::Nothing => Ok(None),
        Against::Config(path) => crate::config::NodeConfig::load(&path)
            .map(|c| {
                Some(Current {
                    label: format!(
                        "{}: its policy file {} (the configured seed, version 1; a running \
                         cluster may have later versions: use --url)",
                        path.display(),
                        c.policy_source
                    ),
                    policy: c.policy,
                })
            })
            .map_err(|e| CheckError::Against(e.to_string())),
        Against::Url { url, token, ca } => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(fetch(&url, &token, ca.as_deref())).map(Some),
            Err(e) => Err(CheckError::Against(format!("runtime: {e}"))),
        },
    };
    let current = match current {
        Ok(c) => c,
        Err(e) => {
            println!(
                "valid: {} (hash {})",
                file.display(),
                hex::encode(new.hash().0)
            );
            eprintln!("cannot read the policy to compare with: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    println!(
        "valid: {} (hash {})",
        file.display(),
        hex::encode(new.hash().0)
    );
    match &current {
        None => {
            let (table, _) = report(&new, None);
            print!("{table}");
        }
        Some(c) => {
            println!("against: {}", c.label);
            if c.policy.hash() == new.hash() {
                println!("no change: the file is the policy in force");
            }
            let (table, changed) = report(&new, Some(&c.policy));
            print!("{table}");
            println!("{changed} line(s) change");
        }
    }
    std::process::ExitCode::SUCCESS
}
