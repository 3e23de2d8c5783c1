//! Command-line parsing (hand-written: no extra dependencies).

use std::path::PathBuf;

use wallet_core::Policy;

use crate::config::{
    parse_amount_range, parse_currencies, parse_ppm, parse_range, region_names, Faults, SimConfig,
    REGIONS_MAX,
};
use crate::scenario;
use crate::workload::CURRENCY;

/// A usage error, printed with a hint to `--help`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

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
    /// True with --compare-policies.
    pub compare: bool,
    /// No --policy or --compare-policies: every seed draws its policy from the generator
    /// (`policies` then holds one placeholder entry).
    pub draw: bool,
    /// Each seed draws its pull limit (`config::draw_pull_limit`): no `--pull-limit`, no
    /// `--scenario`.
    pub draw_pull_limit: bool,
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
    /// Arguments that shape a run (for reproduction commands).
    pub shaping_args: Vec<String>,
    /// --help.
    pub help: bool,
}

/// The usage text.
pub const USAGE: &str = "\
wallet-sim: deterministic partition simulator for the multi-region wallet

USAGE: wallet-sim [OPTIONS]

Runs:
  --seed N                 one run (default 1)
  --seeds A..B             a sweep of seeds A to B inclusive, in parallel, printed in order
  --threads N              worker threads for sweeps (default: available cores)
  --policy FILE            overdraft policy TOML, as the node reads it (default: every seed
                           draws one from the policy generator, named drawn-<hash>)
  --compare-policies A,B   run the identical workload and faults under each policy
  --policy-changes N       policy changes issued at random times and regions, drawn from the
                           generator (default: 0 to 2 with a drawn policy, 0 with --policy)
  --print-policy           print the policy each seed draws (TOML) and exit
Workload:
  --regions N              regions (default 3: eu, us, ap, then sa, af, me, oc, ca, r8..)
  --accounts N             accounts (default 100)
  --transactions N         client transactions (default 10000)
  --rate N                 transactions per simulated second, all regions (default 200)
  --mix D,P,W,R            weights of deposit, purchase, withdrawal, refund (default 40,40,12,8)
  --amount MIN..MAX        amount range in USD (default 1.00..200.00; mostly small); a JPY
                           amount has as many yen as this has cents, a BHD amount as many
                           hundredths of a dinar plus 0-9 fils
  --currencies LIST        currencies and weights, e.g. USD or USD:8,JPY:1,BHD:1
                           (default USD:80,JPY:10,BHD:10)
  --floor-share PCT        debits whose amount is the region's provisional balance minus its
                           floor when sent (default 3%)
  --floor-credit-share PCT deposits sent to an account the region sees in an overdraft episode
                           with fees, sized to bring it back exactly to the floor (default 6%)
  --odd-scale-share PCT    requests whose amount is written at a finer currency's scale:
                           12.340 USD (accepted as 12.34) or 12.341 USD (refused) (default 1%)
  --deposit-multiplier N   deposits are drawn N times larger (default 2)
  --hot-accounts N         size of the hot set (default 5)
  --hot-share PCT          share of traffic on the hot set (default 30%)
  --retry-share PCT        requests re-sent with the same key to the same region (default 5%)
  --two-region-share PCT   requests whose key is also sent to a second region (default 2%)
  --conflict-share PCT     requests sent during a partition whose key is sent again with
                           another body across it, then retried at a third region (default 1%)
Faults (random ones drawn from the seed; on by default):
  --faults random|none     none: fixed 5 ms delay, no loss, no partitions, crashes or skew
  --delay MIN..MAX         one-way message delay, ms (default 5..120)
  --loss PCT               message loss (default 1%)
  --duplicate PCT          message duplication (default 1%)
  --reorder PCT            messages held back up to --reorder-extra ms (default 2%, 400)
  --reorder-extra MS
  --partitions N           random partitions (default: one per 40 s simulated, at least 1)
  --crashes N              random crash/restart pairs (default: one per 60 s, 1 to 4)
  --max-skew MS            random clock skew bound per region (default 200)
  --fsync MIN..MAX         fsync latency, ms (default 1..8)
  --scenario FILE          scripted steps (split/isolate/heal/crash/restart/skew/policy/
                           transactions);
                           with a scenario, random partitions, crashes and skews are off unless
                           --partitions/--crashes are given
  --pull-answer-loss PCT   pull answers lost (on top of --loss; default 0)
  --detect MIN..MAX        ms until each end of a cut link notices (default 500..4000)
  --reconnect MIN..MAX     ms from a link's return to its reconnection (default 250..1000)
Replica (wallet_core::Config):
  --anti-entropy MS        anti_entropy_interval_ms: period of the core's safety-net pull
                           (default 2000)
  --pull-limit N           pull_batch_events: events asked for in one pull (default: drawn
                           per seed, 2048 in half the seeds, else 16..512; 2048 with
                           --scenario)
Byzantine member:
  --byzantine SHARE        share of seeds in which one region misbehaves with its own key
                           (equivocates, or breaks a signed heartbeat promise), drawn from
                           the seed; only with random faults (default 12.5%; 0: never)
Checks during the run:
  --self-check-every N     run the replica's own check_invariants() every N inputs, on the
                           region that took the input (default 2000; 0: only after restarts
                           and at the end)
Output:
  --json PATH              JSON results (an object for one run, a list otherwise)
  --timing                 put wall_seconds in the JSON (otherwise null: same seed, same bytes)
  --report PATH            self-contained HTML report with SVG charts (first seed)
  --account ID             account to chart (default: the hottest)
  --quiet                  sweep: print only failures and the totals
  --inject-bug early-ack|no-pull-answers|forget-evidence
                           make the simulated host deliberately wrong (acknowledge before
                           fsync; ignore pulls; do not hand stored evidence back on a
                           restart) to see the checker catch it
  -h, --help               this text

Exit status: 0 when every invariant holds, 1 when one fails, 2 on a usage error.
";

fn value<'a>(args: &'a [String], i: &mut usize, flag: &str) -> Result<&'a str, CliError> {
    *i += 1;
    args.get(*i)
        .map(String::as_str)
        .ok_or_else(|| CliError(format!("{flag} needs a value (see --help)")))
}

fn num<T: std::str::FromStr>(v: &str, flag: &str) -> Result<T, CliError> {
    v.parse()
        .map_err(|_| CliError(format!("{flag} {v:?}: expected a whole number")))
}

fn ctx<T>(r: Result<T, String>, flag: &str) -> Result<T, CliError> {
    r.map_err(|e| CliError(format!("{flag}: {e}")))
}

/// Reads and parses a policy file.
pub fn load_policy(path: &str) -> Result<Policy, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError(format!("policy {path}: cannot read: {e}")))?;
    Policy::from_toml(&text).map_err(|e| CliError(format!("policy {path}: {e}")))
}

fn label(path: &str) -> String {
    std::path::Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// Parses the arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Options, CliError> {
    let mut base = SimConfig::new(1);
    let mut seeds = (1, 1);
    let mut sweep = false;
    let mut policies = Vec::new();
    let mut compare = false;
    let mut json = None;
    let mut report = None;
    let mut timing = false;
    let mut threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut quiet = false;
    let mut pull_limit_given = false;
    let mut help = false;
    let mut print_policy = false;
    let mut scenario_path: Option<String> = None;
    let mut regions = 3usize;
    let mut shaping = Vec::new();
    let mut faults_mode: Option<bool> = None;
    let mut fault_overrides: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let flag = args[i].as_str();
        let start = i;
        let mut shapes = true;
        match flag {
            "-h" | "--help" => {
                help = true;
                shapes = false;
            }
            "--seed" => {
                let s = num(value(args, &mut i, flag)?, flag)?;
                seeds = (s, s);
                shapes = false;
            }
            "--seeds" => {
                seeds = ctx(parse_range(value(args, &mut i, flag)?), flag)?;
                sweep = true;
                shapes = false;
            }
            "--threads" => {
                threads = num::<usize>(value(args, &mut i, flag)?, flag)?.max(1);
                shapes = false;
            }
            "--policy" => {
                let p = value(args, &mut i, flag)?;
                policies = vec![(label(p), Some(p.to_string()), load_policy(p)?)];
                shapes = false;
            }
            "--compare-policies" => {
                let list = value(args, &mut i, flag)?;
                policies.clear();
                for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    policies.push((label(p), Some(p.to_string()), load_policy(p)?));
                }
                if policies.is_empty() {
                    return Err(CliError(
                        "--compare-policies needs A.toml,B.toml,...".into(),
                    ));
                }
                compare = true;
                shapes = false;
            }
            "--regions" => {
                regions = num(value(args, &mut i, flag)?, flag)?;
                if regions == 0 || regions > REGIONS_MAX {
                    return Err(CliError(format!("--regions must be 1 to {REGIONS_MAX}")));
                }
            }
            "--accounts" => {
                base.workload.accounts = num(value(args, &mut i, flag)?, flag)?;
                if base.workload.accounts == 0 {
                    return Err(CliError("--accounts must be at least 1".into()));
                }
            }
            "--transactions" => base.workload.transactions = num(value(args, &mut i, flag)?, flag)?,
            "--rate" => {
                base.workload.rate = num(value(args, &mut i, flag)?, flag)?;
                if base.workload.rate == 0 {
                    return Err(CliError("--rate must be at least 1".into()));
                }
            }
            "--mix" => {
                let v = value(args, &mut i, flag)?;
                let parts: Vec<&str> = v.split(',').collect();
                if parts.len() != 4 {
                    return Err(CliError(format!(
                        "--mix {v:?}: expected four weights deposit,purchase,withdrawal,refund"
                    )));
                }
                for (k, p) in parts.iter().enumerate() {
                    base.workload.mix[k] = num(p.trim(), flag)?;
                }
                if base.workload.mix.iter().all(|m| *m == 0) {
                    return Err(CliError(
                        "--mix: at least one weight must be positive".into(),
                    ));
                }
            }
            "--amount" => {
                base.workload.amount_cents =
                    ctx(parse_amount_range(value(args, &mut i, flag)?), flag)?
            }
            "--deposit-multiplier" => {
                base.workload.deposit_multiplier = num(value(args, &mut i, flag)?, flag)?
            }
            "--hot-accounts" => base.workload.hot_accounts = num(value(args, &mut i, flag)?, flag)?,
            "--hot-share" => {
                base.workload.hot_share_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?
            }
            "--retry-share" => {
                base.workload.retry_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?
            }
            "--two-region-share" => {
                base.workload.two_region_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?
            }
            "--conflict-share" => {
                base.workload.conflict_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?
            }
            "--floor-share" => {
                base.workload.floor_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?
            }
            "--floor-credit-share" => {
                base.workload.floor_credit_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?
            }
            "--odd-scale-share" => {
                base.workload.odd_scale_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?
            }
            "--currencies" => {
                base.workload.currencies = ctx(parse_currencies(value(args, &mut i, flag)?), flag)?
            }
            "--policy-changes" => {
                base.policy_changes = Some(num(value(args, &mut i, flag)?, flag)?);
            }
            "--print-policy" => {
                print_policy = true;
                shapes = false;
            }
            "--faults" => match value(args, &mut i, flag)? {
                "none" => faults_mode = Some(false),
                "random" | "on" | "default" => faults_mode = Some(true),
                o => return Err(CliError(format!("--faults {o:?}: expected random or none"))),
            },
            "--delay" | "--loss" | "--duplicate" | "--reorder" | "--reorder-extra"
            | "--partitions" | "--crashes" | "--max-skew" | "--fsync" | "--pull-answer-loss" => {
                let v = value(args, &mut i, flag)?.to_string();
                fault_overrides.push((flag.to_string(), v));
            }
            "--scenario" => scenario_path = Some(value(args, &mut i, flag)?.to_string()),
            "--detect" => {
                base.links.detect_ms = ctx(parse_range(value(args, &mut i, flag)?), flag)?
            }
            "--reconnect" => {
                base.links.reconnect_ms = ctx(parse_range(value(args, &mut i, flag)?), flag)?
            }
            "--anti-entropy" | "--anti-entropy-ms" => {
                base.anti_entropy_ms = num(value(args, &mut i, flag)?, flag)?;
                if base.anti_entropy_ms == 0 {
                    return Err(CliError("--anti-entropy must be at least 1 ms".into()));
                }
            }
            "--pull-limit" => {
                pull_limit_given = true;
                base.pull_limit = num(value(args, &mut i, flag)?, flag)?;
                if base.pull_limit == 0 {
                    return Err(CliError("--pull-limit must be at least 1".into()));
                }
            }
            "--self-check-every" => {
                base.self_check_every = num(value(args, &mut i, flag)?, flag)?;
            }
            "--byzantine" => {
                base.byzantine_ppm = ctx(parse_ppm(value(args, &mut i, flag)?), flag)?;
            }
            "--json" => {
                json = Some(PathBuf::from(value(args, &mut i, flag)?));
                shapes = false;
            }
            "--report" => {
                report = Some(PathBuf::from(value(args, &mut i, flag)?));
                shapes = false;
            }
            "--account" => {
                let a = value(args, &mut i, flag)?;
                wallet_core::AccountId::new(a).map_err(|e| CliError(format!("--account: {e}")))?;
                base.chart_account = Some(a.to_string());
                shapes = false;
            }
            "--inject-bug" => {
                base.inject = match value(args, &mut i, flag)? {
                    "early-ack" => Some(crate::config::Inject::EarlyAck),
                    "no-pull-answers" => Some(crate::config::Inject::NoPullAnswers),
                    "forget-evidence" => Some(crate::config::Inject::ForgetEvidence),
                    o => {
                        return Err(CliError(format!(
                            "--inject-bug {o:?}: expected early-ack, no-pull-answers or forget-evidence"
                        )))
                    }
                };
            }
            "--timing" => {
                timing = true;
                shapes = false;
            }
            "--quiet" => {
                quiet = true;
                shapes = false;
            }
            other => return Err(CliError(format!("unknown argument {other:?} (see --help)"))),
        }
        if shapes {
            shaping.extend_from_slice(&args[start..=i]);
        }
        i += 1;
    }
    base.regions = region_names(regions);
    base.faults = match faults_mode {
        Some(false) => Faults::none(),
        _ => Faults::default(),
    };
    for (flag, v) in &fault_overrides {
        let f = &mut base.faults;
        match flag.as_str() {
            "--delay" => f.delay_ms = ctx(parse_range(v), flag)?,
            "--loss" => f.loss_ppm = ctx(parse_ppm(v), flag)?,
            "--duplicate" => f.duplicate_ppm = ctx(parse_ppm(v), flag)?,
            "--reorder" => f.reorder_ppm = ctx(parse_ppm(v), flag)?,
            "--reorder-extra" => f.reorder_extra_ms = num(v, flag)?,
            "--partitions" => f.partitions = Some(num(v, flag)?),
            "--crashes" => f.crashes = Some(num(v, flag)?),
            "--max-skew" => {
                f.max_skew_ms = num(v, flag)?;
                if f.max_skew_ms > 30_000 {
                    return Err(CliError(
                        "--max-skew above 30000 ms would exceed the replicas' skew bound".into(),
                    ));
                }
            }
            "--fsync" => f.fsync_ms = ctx(parse_range(v), flag)?,
            "--pull-answer-loss" => f.pull_answer_loss_ppm = ctx(parse_ppm(v), flag)?,
            _ => {}
        }
    }
    if let Some(p) = &scenario_path {
        let text = std::fs::read_to_string(p)
            .map_err(|e| CliError(format!("scenario {p}: cannot read: {e}")))?;
        base.scenario = scenario::parse(&text, &base.regions, CURRENCY)
            .map_err(|e| CliError(format!("scenario {p}: {e}")))?;
        let dir = std::path::Path::new(p)
            .parent()
            .unwrap_or(std::path::Path::new("."));
        base.scenario
            .load_policies(dir)
            .map_err(|e| CliError(format!("scenario {p}: {e}")))?;
    }
    let draw = policies.is_empty();
    if draw {
        policies.push(("drawn".into(), None, Policy::zero()));
    }
    Ok(Options {
        seeds,
        sweep,
        base,
        policies,
        compare,
        draw,
        draw_pull_limit: !pull_limit_given && scenario_path.is_none(),
        print_policy,
        json,
        report,
        timing,
        threads,
        quiet,
        shaping_args: shaping,
        help,
    })
}

/// A one-line command that reproduces one run.
pub fn repro(opts: &Options, seed: u64, policy: Option<&str>) -> String {
    let mut s = format!("cargo run --release -p wallet-sim -- --seed {seed}");
    for a in &opts.shaping_args {
        s.push(' ');
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!("'{a}'"));
        } else {
            s.push_str(a);
        }
    }
    if let Some(p) = policy {
        s.push_str(" --policy ");
        s.push_str(p);
    }
    s
}
