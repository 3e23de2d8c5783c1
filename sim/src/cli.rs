//! Command-line parsing with clap (derive). Each flag's value parser is the function the
//! configuration uses (`parse_ppm`, `parse_range`, `parse_amount_range`, `parse_currencies`,
//! `load_policy`), and every flag that shapes a run keeps its parsed value, from which the
//! `reproduce:` line is rendered again (`Args::shaping`), in one canonical order.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use wallet_core::{Currency, Policy};

use crate::config::{
    parse_amount_range, parse_currencies, parse_ppm, parse_range, region_names, Faults, Inject,
    SimConfig, REGIONS_MAX,
};
use crate::scenario;
use crate::workload::CURRENCY;

/// Why the arguments were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Refused by the parser (unknown flag, missing or invalid value), or `--help`: clap's
    /// own message, printed with `clap::Error::print` (exit code `clap::Error::exit_code`:
    /// 0 for `--help`, 2 otherwise).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// Refused after parsing (an unreadable or invalid scenario file): exit 2.
    #[error("{0}")]
    Usage(String),
}

/// A policy file named on the command line, read and parsed.
#[derive(Debug, Clone)]
pub struct PolicyFile {
    /// Its file name (the policy's label in tables and JSON).
    pub label: String,
    /// The path as given.
    pub path: String,
    /// The parsed policy.
    pub policy: Policy,
}

/// One-way inter-region delay with `--compare-modes` unless `--delay` says, ms.
pub const MODES_DELAY_MS: u64 = 100;
/// The policy `--compare-modes` puts each mode on, without `--policy`.
pub const MODES_BASE_POLICY: &str = "[default]\nfee = { flat = \"5.00\" }\n";

/// `--compare-policies A,B,..`.
#[derive(Debug, Clone)]
pub struct PolicyList(pub Vec<PolicyFile>);

/// `--mix D,P,W,R`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix(pub [u32; 4]);

/// `--currencies LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currencies(pub Vec<(Currency, u32)>);

/// `--faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultMode {
    /// Random faults drawn from the seed.
    #[value(alias = "on", alias = "default")]
    Random,
    /// Fixed 5 ms delay, no loss, no partitions, crashes or skew.
    None,
}

/// `--inject-bug`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Bug {
    /// Acknowledge before fsync.
    EarlyAck,
    /// Ignore pulls.
    NoPullAnswers,
    /// Do not hand stored evidence back on a restart.
    ForgetEvidence,
}

impl Bug {
    fn inject(self) -> Inject {
        match self {
            Bug::EarlyAck => Inject::EarlyAck,
            Bug::NoPullAnswers => Inject::NoPullAnswers,
            Bug::ForgetEvidence => Inject::ForgetEvidence,
        }
    }
}

/// The name clap accepts for a value of a `ValueEnum`.
fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

/// The arguments of `wallet-sim`, as parsed: one group of flags per `--help` heading.
#[allow(missing_docs)]
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wallet-sim",
    about = "wallet-sim: deterministic partition simulator for the multi-region wallet",
    after_help = "Exit status: 0 when every invariant holds, 1 when one fails, 2 on a usage error.",
    args_override_self = true,
    max_term_width = 100
)]
pub struct Args {
    #[command(flatten)]
    pub runs: RunArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub faults: FaultArgs,
    #[command(flatten)]
    pub replica: ReplicaArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Which runs.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Runs")]
pub struct RunArgs {
    /// One run [default: 1]
    #[arg(long, value_name = "N", conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// A sweep of seeds A to B inclusive, in parallel, printed in order
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    pub seeds: Option<(u64, u64)>,
    /// Worker threads for sweeps [default: available cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Overdraft policy TOML, as the node reads it [default: every seed draws one from the
    /// policy generator, named drawn-<hash>]
    #[arg(long, value_name = "FILE", value_parser = policy_file, conflicts_with = "compare_policies")]
    pub policy: Option<PolicyFile>,
    /// Run the identical workload and faults under each policy
    #[arg(long, value_name = "A,B", value_parser = policy_list)]
    pub compare_policies: Option<PolicyList>,
    /// Run the identical workload and faults under each consistency mode (SPEC §8):
    /// optimistic, escrow (fallback refuse), hybrid (escrow, fallback optimistic within
    /// --risk-limit), home (the first region); every account, on the --policy file or a flat
    /// 5.00 fee. The one-way delay defaults to 100 ms.
    #[arg(long, value_name = "M,N", value_parser = mode_list, conflicts_with = "compare_policies")]
    pub compare_modes: Option<ModeList>,
    /// The hybrid's risk limit with --compare-modes, in units of the currency
    #[arg(long, value_name = "AMOUNT", default_value_t = 100)]
    pub risk_limit: u32,
    /// Policy changes issued at random times and regions, drawn from the generator
    /// [default: 0 to 2 with a drawn policy, 0 with --policy]
    #[arg(long, value_name = "N")]
    pub policy_changes: Option<u32>,
    /// Print the policy each seed draws (TOML) and exit
    #[arg(long)]
    pub print_policy: bool,
}

/// The generated workload.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Workload")]
pub struct WorkloadArgs {
    /// Regions, 1 to 16 (eu, us, ap, then sa, af, me, oc, ca, r8..) [default: 3]
    #[arg(long, value_name = "N", value_parser = regions)]
    pub regions: Option<usize>,
    /// Accounts [default: 100]
    #[arg(long, value_name = "N", value_parser = at_least_one::<u32>)]
    pub accounts: Option<u32>,
    /// Client transactions [default: 10000]
    #[arg(long, value_name = "N")]
    pub transactions: Option<u64>,
    /// Transactions per simulated second, all regions [default: 200]
    #[arg(long, value_name = "N", value_parser = at_least_one::<u64>)]
    pub rate: Option<u64>,
    /// Weights of deposit, purchase, withdrawal, refund [default: 40,40,12,8]
    #[arg(long, value_name = "D,P,W,R", value_parser = mix)]
    pub mix: Option<Mix>,
    /// Amount range in USD, mostly small; a JPY amount has as many yen as this has cents, a
    /// BHD amount as many hundredths of a dinar plus 0-9 fils [default: 1.00..200.00]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_amount_range)]
    pub amount: Option<(u64, u64)>,
    /// Currencies and weights, e.g. USD or USD:8,JPY:1,BHD:1 [default: USD:80,JPY:10,BHD:10]
    #[arg(long, value_name = "LIST", value_parser = currencies)]
    pub currencies: Option<Currencies>,
    /// Debits whose amount is the region's provisional balance minus its floor when sent
    /// [default: 3%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub floor_share: Option<u32>,
    /// Deposits sent to an account the region sees in an overdraft episode with fees, sized
    /// to bring it back exactly to the floor [default: 6%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub floor_credit_share: Option<u32>,
    /// Requests whose amount is written at a finer currency's scale: 12.340 USD (accepted as
    /// 12.34) or 12.341 USD (refused) [default: 1%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub odd_scale_share: Option<u32>,
    /// Debits with a round amount (1.00, 5.00, 10.00, 20.00: the figures grace amounts are
    /// drawn from) [default: 10%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub round_share: Option<u32>,
    /// Requests sent to the account's usual region (its index modulo the regions) rather
    /// than a uniformly drawn one [default: 0%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub locality: Option<u32>,
    /// Deposits are drawn N times larger [default: 2]
    #[arg(long, value_name = "N")]
    pub deposit_multiplier: Option<u64>,
    /// Size of the hot set [default: 5]
    #[arg(long, value_name = "N")]
    pub hot_accounts: Option<u32>,
    /// Share of traffic on the hot set [default: 30%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub hot_share: Option<u32>,
    /// Requests re-sent with the same key to the same region [default: 5%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub retry_share: Option<u32>,
    /// Requests whose key is also sent to a second region [default: 2%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub two_region_share: Option<u32>,
    /// Requests sent during a partition whose key is sent again with another body across it,
    /// then retried at a third region [default: 1%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub conflict_share: Option<u32>,
}

/// Faults (random ones drawn from the seed; on by default).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Faults (random ones drawn from the seed; on by default)")]
pub struct FaultArgs {
    /// none: fixed 5 ms delay, no loss, no partitions, crashes or skew [default: random]
    #[arg(long, value_name = "MODE", value_enum)]
    pub faults: Option<FaultMode>,
    /// One-way message delay, ms [default: 5..120]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    pub delay: Option<(u64, u64)>,
    /// Message loss [default: 1%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub loss: Option<u32>,
    /// Message duplication [default: 1%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub duplicate: Option<u32>,
    /// Messages held back up to --reorder-extra ms [default: 2%]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub reorder: Option<u32>,
    /// How long --reorder holds a message back, ms [default: 400]
    #[arg(long, value_name = "MS")]
    pub reorder_extra: Option<u64>,
    /// Random partitions [default: one per 40 s simulated, at least 1]
    #[arg(long, value_name = "N")]
    pub partitions: Option<u32>,
    /// Random crash/restart pairs [default: one per 60 s, 1 to 4]
    #[arg(long, value_name = "N")]
    pub crashes: Option<u32>,
    /// Random clock skew bound per region, ms, at most 30000 [default: 200]
    #[arg(long, value_name = "MS", value_parser = max_skew)]
    pub max_skew: Option<u64>,
    /// fsync latency, ms [default: 1..8]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    pub fsync: Option<(u64, u64)>,
    /// Scripted steps (split/isolate/heal/crash/restart/skew/policy/transactions); with a
    /// scenario, random partitions, crashes and skews are off unless --partitions/--crashes
    /// are given
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Pull answers lost (on top of --loss) [default: 0]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub pull_answer_loss: Option<u32>,
    /// Random crashes that also lose the disk: the region rejoins under a new epoch
    /// [default: drawn per seed: every random crash in a quarter of the seeds, else none;
    /// 0: never]
    #[arg(long, value_name = "PCT", value_parser = parse_ppm)]
    pub lost_disk: Option<u32>,
    /// ms until each end of a cut link notices [default: 500..4000]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    pub detect: Option<(u64, u64)>,
    /// ms from a link's return to its reconnection [default: 250..1000]
    #[arg(long, value_name = "MIN..MAX", value_parser = parse_range)]
    pub reconnect: Option<(u64, u64)>,
}

/// The replica's configuration and the checks during a run.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Replica (wallet_core::Config), Byzantine member, checks")]
pub struct ReplicaArgs {
    /// anti_entropy_interval_ms: period of the core's safety-net pull [default: 2000]
    #[arg(long, value_name = "MS", alias = "anti-entropy-ms", value_parser = anti_entropy)]
    pub anti_entropy: Option<u64>,
    /// pull_batch_events: events asked for in one pull [default: drawn per seed, 2048 in half
    /// the seeds, else 16..512; 2048 with --scenario]
    #[arg(long, value_name = "N", value_parser = at_least_one::<u32>)]
    pub pull_limit: Option<u32>,
    /// Share of seeds in which one region misbehaves with its own key (equivocates, or breaks
    /// a signed heartbeat promise), drawn from the seed; only with random faults [default:
    /// 12.5%; 0: never]
    #[arg(long, value_name = "SHARE", value_parser = parse_ppm)]
    pub byzantine: Option<u32>,
    /// Share of seeds with random membership changes (a region retired by another, half
    /// the time cut off just before; a key rotation), drawn from the seed; only with random
    /// faults, no Byzantine member and 3 regions or more [default: 20%; 0: never]
    #[arg(long, value_name = "SHARE", value_parser = parse_ppm)]
    pub membership: Option<u32>,
    /// idempotency_retention_ms: how long an idempotency key holds (HLC ms) [default: drawn
    /// per seed: 24 h in half the seeds, else 300, 1000 or 3000]
    #[arg(long, value_name = "MS", value_parser = at_least_one::<u64>)]
    pub idempotency_retention: Option<u64>,
    /// Each region takes a snapshot every MS of its local time, checked against the others'
    /// and the reference model [default: drawn per seed: never, 1000, 3000 or 10000; 0: never]
    #[arg(long, value_name = "MS")]
    pub snapshot_every: Option<u64>,
    /// Regions compact during the run: a region holding N events in memory or more folds its
    /// settled history into a snapshot whenever it may, drops it from memory and disk, and
    /// restarts from the snapshot [default: drawn per seed: never in half the seeds, else 50,
    /// 200 or 1000; 0: never; never in a Byzantine seed]
    #[arg(long, value_name = "N")]
    pub compact_every: Option<u64>,
    /// Acknowledge a new event once durable at its origin (`local`) or also at another member
    /// (`peer`) [default: local, or drawn with a drawn lost disk: peer in half of those seeds]
    #[arg(long, value_name = "LEVEL", value_parser = ["local", "peer"])]
    pub ack: Option<String>,
    /// Run the replica's own check_invariants() every N inputs, on the region that took the
    /// input [default: 2000; 0: only after restarts and at the end]
    #[arg(long, value_name = "N")]
    pub self_check_every: Option<u64>,
    /// Make the simulated host deliberately wrong (acknowledge before fsync; ignore pulls; do
    /// not hand stored evidence back on a restart) to see the checker catch it
    #[arg(long, value_name = "BUG", value_enum)]
    pub inject_bug: Option<Bug>,
}

/// Output.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// JSON results (an object for one run, a list otherwise)
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Put wall_seconds in the JSON (otherwise null: same seed, same bytes)
    #[arg(long)]
    pub timing: bool,
    /// Self-contained HTML report with SVG charts (first seed)
    #[arg(long, value_name = "PATH")]
    pub report: Option<PathBuf>,
    /// Account to chart [default: the hottest]
    #[arg(long, value_name = "ID", value_parser = account)]
    pub account: Option<String>,
    /// Sweep: print only failures and the totals
    #[arg(long)]
    pub quiet: bool,
}

fn regions(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=REGIONS_MAX).contains(&n) => Ok(n),
        _ => Err(format!("must be 1 to {REGIONS_MAX}")),
    }
}

fn at_least_one<T: std::str::FromStr + Default + PartialEq>(s: &str) -> Result<T, String> {
    let n: T = s
        .parse()
        .map_err(|_| format!("{s:?}: expected a whole number"))?;
    if n == T::default() {
        return Err("must be at least 1".into());
    }
    Ok(n)
}

fn anti_entropy(s: &str) -> Result<u64, String> {
    at_least_one::<u64>(s).map_err(|e| e.replace("at least 1", "at least 1 ms"))
}

fn max_skew(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("{s:?}: expected a whole number"))?;
    if n > 30_000 {
        return Err("above 30000 ms would exceed the replicas' skew bound".into());
    }
    Ok(n)
}

fn mix(s: &str) -> Result<Mix, String> {
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() != 4 {
        return Err(format!(
            "{s:?}: expected four weights deposit,purchase,withdrawal,refund"
        ));
    }
    let mut m = [0u32; 4];
    for (k, p) in parts.iter().enumerate() {
        m[k] = p
            .trim()
            .parse()
            .map_err(|_| format!("{p:?}: expected a whole number"))?;
    }
    if m.iter().all(|w| *w == 0) {
        return Err("at least one weight must be positive".into());
    }
    Ok(Mix(m))
}

fn currencies(s: &str) -> Result<Currencies, String> {
    parse_currencies(s).map(Currencies)
}

fn account(s: &str) -> Result<String, String> {
    wallet_core::AccountId::new(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// Reads and parses a policy file.
pub fn load_policy(path: &str) -> Result<Policy, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("policy {path}: cannot read: {e}"))?;
    Policy::from_toml(&text).map_err(|e| format!("policy {path}: {e}"))
}

fn label(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

fn policy_file(path: &str) -> Result<PolicyFile, String> {
    Ok(PolicyFile {
        label: label(path),
        path: path.to_string(),
        policy: load_policy(path)?,
    })
}

/// The modes `--compare-modes` knows.
pub const MODES: [&str; 4] = ["optimistic", "escrow", "hybrid", "home"];

/// `--compare-modes M,N,..`.
#[derive(Debug, Clone)]
pub struct ModeList(pub Vec<String>);

fn mode_list(list: &str) -> Result<ModeList, String> {
    let modes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect();
    if modes.is_empty() {
        return Err(format!("expected some of {}", MODES.join(",")));
    }
    if let Some(m) = modes.iter().find(|m| !MODES.contains(&m.as_str())) {
        return Err(format!("{m:?} is not one of {}", MODES.join(",")));
    }
    Ok(ModeList(modes))
}

/// `base` with every rule in `mode` (a name of [`MODES`]).
pub fn with_mode(
    base: &Policy,
    mode: &str,
    risk_limit: u32,
    home: wallet_core::RegionId,
) -> Policy {
    use wallet_core::{Fallback, Mode};
    let m = match mode {
        "escrow" => Mode::Escrow {
            fallback: Fallback::Refuse,
            risk_limit: rust_decimal::Decimal::ZERO,
            rights_timeout_ms: wallet_core::policy::RIGHTS_TIMEOUT_MS_DEFAULT,
        },
        "hybrid" => Mode::Escrow {
            fallback: Fallback::Optimistic,
            risk_limit: rust_decimal::Decimal::from(risk_limit),
            rights_timeout_ms: wallet_core::policy::RIGHTS_TIMEOUT_MS_DEFAULT,
        },
        "home" => Mode::Home { home },
        _ => Mode::Optimistic,
    };
    let mut p = base.clone();
    for r in &mut p.rules {
        r.mode = m.clone();
    }
    p
}

fn policy_list(list: &str) -> Result<PolicyList, String> {
    let files = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(policy_file)
        .collect::<Result<Vec<_>, _>>()?;
    if files.is_empty() {
        return Err("expected A.toml,B.toml,...".into());
    }
    Ok(PolicyList(files))
}

/// A share in parts per million, written back as a percentage `parse_ppm` reads exactly.
fn render_ppm(ppm: u32) -> String {
    let (whole, frac) = (ppm / 10_000, ppm % 10_000);
    if frac == 0 {
        format!("{whole}%")
    } else {
        let f = format!("{frac:04}");
        format!("{whole}.{}%", f.trim_end_matches('0'))
    }
}

fn render_range((a, b): (u64, u64)) -> String {
    format!("{a}..{b}")
}

fn render_cents(c: u64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

/// Quotes a word for a POSIX shell when it holds anything but plain characters.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:,%=+@".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

impl Args {
    /// The flags that shape a run, rendered from their parsed values in a fixed order (the
    /// order of `--help`): the seed, the policy and the output flags are not among them.
    pub fn shaping(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<(&'static str, String)> = Vec::new();
        let mut put = |flag: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((flag, v));
            }
        };
        let w = &self.workload;
        put(
            "--policy-changes",
            self.runs.policy_changes.map(|n| n.to_string()),
        );
        put("--regions", w.regions.map(|n| n.to_string()));
        put("--accounts", w.accounts.map(|n| n.to_string()));
        put("--transactions", w.transactions.map(|n| n.to_string()));
        put("--rate", w.rate.map(|n| n.to_string()));
        put(
            "--mix",
            w.mix
                .map(|Mix(m)| m.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
        );
        put(
            "--amount",
            w.amount
                .map(|(a, b)| format!("{}..{}", render_cents(a), render_cents(b))),
        );
        put(
            "--currencies",
            w.currencies.as_ref().map(|Currencies(c)| {
                c.iter()
                    .map(|(c, w)| format!("{c}:{w}"))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        );
        put("--floor-share", w.floor_share.map(render_ppm));
        put("--floor-credit-share", w.floor_credit_share.map(render_ppm));
        put("--odd-scale-share", w.odd_scale_share.map(render_ppm));
        put("--round-share", w.round_share.map(render_ppm));
        put("--locality", w.locality.map(render_ppm));
        put(
            "--deposit-multiplier",
            w.deposit_multiplier.map(|n| n.to_string()),
        );
        put("--hot-accounts", w.hot_accounts.map(|n| n.to_string()));
        put("--hot-share", w.hot_share.map(render_ppm));
        put("--retry-share", w.retry_share.map(render_ppm));
        put("--two-region-share", w.two_region_share.map(render_ppm));
        put("--conflict-share", w.conflict_share.map(render_ppm));
        let f = &self.faults;
        put("--faults", f.faults.as_ref().map(value_name));
        put("--delay", f.delay.map(render_range));
        put("--loss", f.loss.map(render_ppm));
        put("--duplicate", f.duplicate.map(render_ppm));
        put("--reorder", f.reorder.map(render_ppm));
        put("--reorder-extra", f.reorder_extra.map(|n| n.to_string()));
        put("--partitions", f.partitions.map(|n| n.to_string()));
        put("--crashes", f.crashes.map(|n| n.to_string()));
        put("--max-skew", f.max_skew.map(|n| n.to_string()));
        put("--fsync", f.fsync.map(render_range));
        put(
            "--scenario",
            f.scenario.as_ref().map(|p| p.display().to_string()),
        );
        put("--pull-answer-loss", f.pull_answer_loss.map(render_ppm));
        put("--lost-disk", f.lost_disk.map(render_ppm));
        put("--detect", f.detect.map(render_range));
        put("--reconnect", f.reconnect.map(render_range));
        let r = &self.replica;
        put("--anti-entropy", r.anti_entropy.map(|n| n.to_string()));
        put("--pull-limit", r.pull_limit.map(|n| n.to_string()));
        put("--byzantine", r.byzantine.map(render_ppm));
        put("--membership", r.membership.map(render_ppm));
        put(
            "--idempotency-retention",
            r.idempotency_retention.map(|n| n.to_string()),
        );
        put("--snapshot-every", r.snapshot_every.map(|n| n.to_string()));
        put("--compact-every", r.compact_every.map(|n| n.to_string()));
        put("--ack", r.ack.clone());
        put(
            "--self-check-every",
            r.self_check_every.map(|n| n.to_string()),
        );
        put("--inject-bug", r.inject_bug.as_ref().map(value_name));
        out
    }
}

/// Parsed options.
#[derive(Debug, Clone)]
pub struct Options {
    /// First and last seed (inclusive).
    pub seeds: (u64, u64),
    /// True when a range was asked for (even of one seed).
    pub sweep: bool,
    /// Base configuration (seed filled in per run).
    pub base: SimConfig,
    /// Policies to run: (label, file path as given, policy).
    pub policies: Vec<(String, Option<String>, Policy)>,
    /// True with --compare-policies or --compare-modes.
    pub compare: bool,
    /// True with --compare-modes (the table shows the modes' figures).
    pub compare_modes: bool,
    /// No --policy or --compare-policies: every seed draws its policy from the generator
    /// (`policies` then holds one placeholder entry).
    pub draw: bool,
    /// Each seed draws its pull limit (`config::draw_pull_limit`): no `--pull-limit`, no
    /// `--scenario`.
    pub draw_pull_limit: bool,
    /// Each seed draws its lost disks and their ack level (`SimConfig::draw_lost_disk`): no
    /// `--lost-disk`, no `--scenario` (`--ack` still sets the level).
    pub draw_lost_disk: bool,
    /// --print-policy: print the drawn policy of each seed and exit.
    pub print_policy: bool,
    /// --json PATH.
    pub json: Option<PathBuf>,
    /// --report PATH.
    pub report: Option<PathBuf>,
    /// --timing: write wall_seconds into the JSON.
    pub timing: bool,
    /// Worker threads for sweeps.
    pub threads: usize,
    /// Print only failures and the final line.
    pub quiet: bool,
    /// The arguments as parsed (reproduction commands are rendered from them).
    pub args: Args,
}

/// Parses the arguments (without the program name).
pub fn parse<I, T>(args: I) -> Result<Options, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv =
        std::iter::once(OsString::from("wallet-sim")).chain(args.into_iter().map(Into::into));
    let a = Args::try_parse_from(argv)?;
    build(a)
}

/// Turns parsed arguments into the options of a run.
pub fn build(a: Args) -> Result<Options, CliError> {
    let mut base = SimConfig::new(1);
    let (w, f, r) = (&a.workload, &a.faults, &a.replica);
    let wl = &mut base.workload;
    if let Some(v) = w.accounts {
        wl.accounts = v;
    }
    if let Some(v) = w.transactions {
        wl.transactions = v;
    }
    if let Some(v) = w.rate {
        wl.rate = v;
    }
    if let Some(Mix(m)) = w.mix {
        wl.mix = m;
    }
    if let Some(v) = w.amount {
        wl.amount_cents = v;
    }
    if let Some(Currencies(c)) = &w.currencies {
        wl.currencies = c.clone();
    }
    if let Some(v) = w.deposit_multiplier {
        wl.deposit_multiplier = v;
    }
    if let Some(v) = w.hot_accounts {
        wl.hot_accounts = v;
    }
    for (slot, v) in [
        (&mut wl.hot_share_ppm, w.hot_share),
        (&mut wl.retry_ppm, w.retry_share),
        (&mut wl.two_region_ppm, w.two_region_share),
        (&mut wl.conflict_ppm, w.conflict_share),
        (&mut wl.floor_ppm, w.floor_share),
        (&mut wl.floor_credit_ppm, w.floor_credit_share),
        (&mut wl.odd_scale_ppm, w.odd_scale_share),
        (&mut wl.round_ppm, w.round_share),
        (&mut wl.locality_ppm, w.locality),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    base.policy_changes = a.runs.policy_changes;
    base.regions = region_names(w.regions.unwrap_or(3));
    base.faults = match f.faults {
        Some(FaultMode::None) => Faults::none(),
        _ => Faults::default(),
    };
    let fl = &mut base.faults;
    if let Some(v) = f.delay {
        fl.delay_ms = v;
    } else if a.runs.compare_modes.is_some() {
        fl.delay_ms = (MODES_DELAY_MS, MODES_DELAY_MS);
    }
    for (slot, v) in [
        (&mut fl.loss_ppm, f.loss),
        (&mut fl.duplicate_ppm, f.duplicate),
        (&mut fl.reorder_ppm, f.reorder),
        (&mut fl.pull_answer_loss_ppm, f.pull_answer_loss),
        (&mut fl.lost_disk_ppm, f.lost_disk),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    if let Some(v) = f.reorder_extra {
        fl.reorder_extra_ms = v;
    }
    if f.partitions.is_some() {
        fl.partitions = f.partitions;
    }
    if f.crashes.is_some() {
        fl.crashes = f.crashes;
    }
    if let Some(v) = f.max_skew {
        fl.max_skew_ms = v;
    }
    if let Some(v) = f.fsync {
        fl.fsync_ms = v;
    }
    if let Some(v) = f.detect {
        base.links.detect_ms = v;
    }
    if let Some(v) = f.reconnect {
        base.links.reconnect_ms = v;
    }
    if let Some(v) = r.anti_entropy {
        base.anti_entropy_ms = v;
    }
    if let Some(v) = r.pull_limit {
        base.pull_limit = v;
    }
    if let Some(v) = r.self_check_every {
        base.self_check_every = v;
    }
    if let Some(v) = r.byzantine {
        base.byzantine_ppm = v;
    }
    if let Some(v) = r.idempotency_retention {
        base.idempotency_retention_ms = Some(v);
    }
    if let Some(v) = r.snapshot_every {
        base.snapshot_every_ms = Some(v);
    }
    if let Some(v) = r.compact_every {
        base.compact_every = Some(v);
    }
    if let Some(v) = &r.ack {
        base.ack_peer = v == "peer";
    }
    if let Some(v) = r.membership {
        base.membership_ppm = v;
    }
    base.inject = r.inject_bug.map(Bug::inject);
    base.chart_account = a.output.account.clone();
    if let Some(p) = &f.scenario {
        let shown = p.display();
        let text = std::fs::read_to_string(p)
            .map_err(|e| CliError::Usage(format!("scenario {shown}: cannot read: {e}")))?;
        base.scenario = scenario::parse(&text, &base.regions, CURRENCY)
            .map_err(|e| CliError::Usage(format!("scenario {shown}: {e}")))?;
        let dir = p.parent().unwrap_or(std::path::Path::new("."));
        base.scenario
            .load_policies(dir)
            .map_err(|e| CliError::Usage(format!("scenario {shown}: {e}")))?;
    }
    let files: Vec<&PolicyFile> = match (&a.runs.policy, &a.runs.compare_policies) {
        (_, Some(PolicyList(list))) => list.iter().collect(),
        (Some(p), None) => vec![p],
        (None, None) => Vec::new(),
    };
    let mut policies: Vec<(String, Option<String>, Policy)> = files
        .into_iter()
        .map(|p| (p.label.clone(), Some(p.path.clone()), p.policy.clone()))
        .collect();
    if let Some(ModeList(modes)) = &a.runs.compare_modes {
        let base_policy = match policies.first() {
            Some((_, _, p)) => p.clone(),
            None => Policy::from_toml(MODES_BASE_POLICY)
                .map_err(|e| CliError::Usage(format!("the base policy: {e}")))?,
        };
        let home = base.regions[0];
        policies = modes
            .iter()
            .map(|m| {
                (
                    m.clone(),
                    None,
                    with_mode(&base_policy, m, a.runs.risk_limit, home),
                )
            })
            .collect();
    }
    let draw = policies.is_empty();
    if draw {
        policies.push(("drawn".into(), None, Policy::zero()));
    }
    let (seeds, sweep) = match (a.runs.seeds, a.runs.seed) {
        (Some(range), _) => (range, true),
        (None, Some(s)) => ((s, s), false),
        (None, None) => ((1, 1), false),
    };
    let threads = a
        .runs
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    Ok(Options {
        seeds,
        sweep,
        base,
        policies,
        compare: a.runs.compare_policies.is_some() || a.runs.compare_modes.is_some(),
        compare_modes: a.runs.compare_modes.is_some(),
        draw,
        draw_pull_limit: r.pull_limit.is_none() && f.scenario.is_none(),
        draw_lost_disk: f.lost_disk.is_none() && f.scenario.is_none(),
        print_policy: a.runs.print_policy,
        json: a.output.json.clone(),
        report: a.output.report.clone(),
        timing: a.output.timing,
        threads,
        quiet: a.output.quiet,
        args: a,
    })
}

/// A one-line command that reproduces one run.
pub fn repro(opts: &Options, seed: u64, policy: Option<&str>) -> String {
    let mut s = format!("cargo run --release -p wallet-sim -- --seed {seed}");
    for (flag, v) in opts.args.shaping() {
        s.push_str(&format!(" {flag} {}", shell_word(&v)));
    }
    if let Some(p) = policy {
        s.push_str(&format!(" --policy {}", shell_word(p)));
    }
    s
}

/// The whole command as parsed (for the report's header): seeds, policies, the shaping flags.
pub fn command_line(opts: &Options) -> String {
    let mut s = String::from("wallet-sim");
    let (a, b) = opts.seeds;
    if opts.sweep {
        s.push_str(&format!(" --seeds {a}..{b}"));
    } else {
        s.push_str(&format!(" --seed {a}"));
    }
    if opts.compare_modes {
        let modes: Vec<&str> = opts.policies.iter().map(|(l, _, _)| l.as_str()).collect();
        s.push_str(&format!(" --compare-modes {}", modes.join(",")));
    } else if !opts.draw {
        let paths: Vec<&str> = opts
            .policies
            .iter()
            .filter_map(|(_, p, _)| p.as_deref())
            .collect();
        let flag = if opts.compare {
            "--compare-policies"
        } else {
            "--policy"
        };
        s.push_str(&format!(" {flag} {}", shell_word(&paths.join(","))));
    }
    for (flag, v) in opts.args.shaping() {
        s.push_str(&format!(" {flag} {}", shell_word(&v)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn words(o: &Options) -> Vec<String> {
        o.args
            .shaping()
            .into_iter()
            .flat_map(|(f, v)| [f.to_string(), v])
            .collect()
    }

    #[test]
    fn the_shaping_flags_render_back_to_the_same_configuration() {
        let given: Vec<&str> = concat!(
            "--policy-changes 1 --regions 4 --accounts 12 --transactions 240 --rate 40 --mix ",
            "1,2,3,4 --amount 0.5..7 --currencies USD:3,JPY --floor-share 0.25 ",
            "--floor-credit-share 7% --odd-scale-share 0 --deposit-multiplier 3 ",
            "--hot-accounts 2 --hot-share 12.3456% --retry-share 10 --two-region-share 100 ",
            "--conflict-share 2 --faults on --delay 7 --loss 3 --duplicate 0.0001 --reorder 5 ",
            "--reorder-extra 90 --partitions 2 --crashes 0 --max-skew 30000 --fsync 2..9 ",
            "--pull-answer-loss 1 --detect 10..20 --reconnect 5..6 --anti-entropy-ms 700 ",
            "--pull-limit 64 --byzantine 50% --self-check-every 0 --inject-bug ",
            "no-pull-answers ",
        )
        .split_whitespace()
        .collect();
        let first = opts(&given);
        let rendered = words(&first);
        let again = opts(&rendered.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(words(&again), rendered);
        assert_eq!(format!("{:?}", again.base), format!("{:?}", first.base));
        assert_eq!(
            rendered.join(" "),
            "--policy-changes 1 --regions 4 --accounts 12 --transactions 240 --rate 40 \
             --mix 1,2,3,4 --amount 0.50..7.00 --currencies USD:3,JPY:1 --floor-share 0.25% \
             --floor-credit-share 7% --odd-scale-share 0% --deposit-multiplier 3 \
             --hot-accounts 2 --hot-share 12.3456% --retry-share 10% --two-region-share 100% \
             --conflict-share 2% --faults random --delay 7..7 --loss 3% --duplicate 0.0001% \
             --reorder 5% --reorder-extra 90 --partitions 2 --crashes 0 --max-skew 30000 \
             --fsync 2..9 --pull-answer-loss 1% --detect 10..20 --reconnect 5..6 \
             --anti-entropy 700 --pull-limit 64 --byzantine 50% --self-check-every 0 \
             --inject-bug no-pull-answers"
        );
    }

    #[test]
    fn defaults_and_non_shaping_flags() {
        let o = opts(&[]);
        assert_eq!(
            (o.seeds, o.sweep, o.draw, o.compare),
            ((1, 1), false, true, false)
        );
        assert!(o.draw_pull_limit && o.draw_lost_disk);
        assert!(!opts(&["--lost-disk", "0"]).draw_lost_disk);
        assert_eq!(
            format!("{:?}", o.base),
            format!("{:?}", {
                let mut b = SimConfig::new(1);
                b.regions = region_names(3);
                b
            })
        );
        let o = opts(&[
            "--seeds",
            "3..9",
            "--threads",
            "0",
            "--quiet",
            "--timing",
            "--json",
            "x.json",
            "--account",
            "acct-0001",
            "--pull-limit",
            "8",
        ]);
        assert_eq!((o.seeds, o.sweep, o.threads), ((3, 9), true, 1));
        assert!(o.quiet && o.timing && !o.draw_pull_limit && o.draw_lost_disk);
        assert_eq!(o.base.chart_account.as_deref(), Some("acct-0001"));
        assert_eq!(
            repro(&o, 5, Some("my policy.toml")),
            "cargo run --release -p wallet-sim -- --seed 5 --pull-limit 8 --policy 'my policy.toml'"
        );
        // The last of a repeated flag wins, as it always did.
        assert_eq!(opts(&["--seed", "2", "--seed", "4"]).seeds, (4, 4));
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_flag() {
        for (args, flag, says) in [
            (&["--regions", "0"][..], "--regions", "must be 1 to 16"),
            (&["--regions", "17"][..], "--regions", "must be 1 to 16"),
            (&["--accounts", "0"][..], "--accounts", "at least 1"),
            (&["--rate", "x"][..], "--rate", "expected a whole number"),
            (&["--mix", "1,2,3"][..], "--mix", "four weights"),
            (&["--mix", "0,0,0,0"][..], "--mix", "positive"),
            (&["--loss", "101"][..], "--loss", "between 0 and 100"),
            (&["--delay", "9..3"][..], "--delay", "below the start"),
            (
                &["--amount", "1.001..2"][..],
                "--amount",
                "at most 2 decimals",
            ),
            (&["--currencies", "XXX"][..], "--currencies", "XXX"),
            (&["--max-skew", "30001"][..], "--max-skew", "skew bound"),
            (
                &["--anti-entropy", "0"][..],
                "--anti-entropy",
                "at least 1 ms",
            ),
            (&["--faults", "some"][..], "--faults", "some"),
            (&["--inject-bug", "x"][..], "--inject-bug", "early-ack"),
            (&["--account", "a/b"][..], "--account", "a/b"),
            (
                &["--policy", "/nonexistent.toml"][..],
                "--policy",
                "cannot read",
            ),
            (
                &["--seed", "1", "--seeds", "1..2"][..],
                "--seed",
                "cannot be used",
            ),
            (&["--seed"][..], "--seed", "a value is required"),
            (&["--bogus"][..], "--bogus", "unexpected argument"),
        ] {
            match parse(args) {
                Err(CliError::Clap(e)) => {
                    assert_eq!(e.exit_code(), 2, "{args:?}");
                    let m = e.to_string();
                    assert!(m.contains(flag) && m.contains(says), "{args:?}: {m}");
                }
                Err(e) => panic!("{args:?}: {e}"),
                Ok(_) => panic!("{args:?} was accepted"),
            }
        }
    }

    #[test]
    fn help_lists_every_flag_and_exits_0() {
        let Err(CliError::Clap(e)) = parse(["--help"]) else {
            panic!("--help parsed")
        };
        assert_eq!(e.exit_code(), 0);
        let help = e.to_string();
        let doc = include_str!("../../docs/simulator.md");
        let flags = doc
            .split("## Flags")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        let mut n = 0;
        for part in flags.split('`').skip(1).step_by(2) {
            let Some(flag) = part.split_whitespace().next() else {
                continue;
            };
            if flag.starts_with("--") {
                n += 1;
                assert!(help.contains(flag), "{flag} is not in --help:\n{help}");
            }
        }
        assert!(n >= 40, "only {n} flags found in docs/simulator.md");
    }
}
