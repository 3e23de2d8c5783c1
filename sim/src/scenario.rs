//! Scripted scenarios: a small line-oriented text format.
//!
//! ```text
//! # comment
//! t=1s    deposit  eu alice 100.00          # client transaction (optional key=K)
//! t=10s   split {eu} | {us, ap}             # partition into groups
//! t=20s   crash us                          # loses whatever us had not made durable
//! t=25s   restart us
//! t=40s   heal                              # every link back
//! t=5s    skew ap +300ms                    # ap's clock runs 300 ms ahead from now on
//! t=12s   isolate ap                        # shorthand for split {ap} | {everyone else}
//! t=3s    fsync us 400ms                    # us's fsyncs take 400 ms from now on (`normal`: back)
//! t=3s    hold-events us eu 1500ms          # us's event messages to eu are held back 1.5 s
//! t=30s   wipe us                           # us crashes and loses its disk
//! t=31s   restore us                        # us starts on an empty disk, pulls its history back
//! t=15s   policy us ../policies/fee.toml    # us issues a policy change (a file, relative
//! t=30s   policy eu generated               #   to the scenario's directory, or drawn)
//! t=2s    purchase eu alice 500 JPY         # another currency than the scenario's
//! t=20s   retire eu ap                      # eu retires ap (`retire eu ap,sa`: two at once)
//! t=25s   rotate-key us                     # us rotates its own key
//! t=8s    join eu sa                        # eu adds sa, which stays out of the cluster
//!                                           #   (down, not a member) until then
//! ```
//!
//! Times are `ms`, `s` or `m`, decimals allowed (`1.5s`) if they land on a whole millisecond.

use std::fmt;

use rust_decimal::Decimal;
use wallet_core::{AccountId, Amount, Currency, Kind, Policy, RegionId};

/// A parse error: the line (from 1) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ScenarioError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// One scripted action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Partition into groups (indices into the region list).
    Split(Vec<Vec<usize>>),
    /// Every link back.
    Heal,
    /// The region crashes.
    Crash(usize),
    /// The region crashes the next time it answers a pull while own events are still on
    /// their way to its disk (written, not yet durable): a narrow window a random crash
    /// almost never hits. Disarmed by the next `restart` of the region if it has not
    /// fired by then: `crash-after-pull us`.
    CrashAfterPull(usize),
    /// The region restarts from its durable disk.
    Restart(usize),
    /// The region's clock is `ms` ahead (negative: behind) of simulated time from now on.
    Skew(usize, i64),
    /// A client transaction.
    Tx {
        /// Region it is sent to.
        region: usize,
        /// Account.
        account: AccountId,
        /// Kind.
        kind: Kind,
        /// Amount (at the currency's scale).
        amount: Amount,
        /// Currency: the scenario's, or the one named on the line.
        currency: Currency,
        /// Idempotency key, if given.
        key: Option<String>,
    },
    /// The region issues a policy change (`Replica::submit_policy`).
    Policy(usize, PolicyChange),
    /// From now on the region's fsyncs take this long, ms (`None`: the run's `--fsync` range
    /// again): `fsync us 400ms`, `fsync us normal`.
    Fsync(usize, Option<u64>),
    /// From now on, messages carrying events (pushes and pull answers) from the first region
    /// to the second are held back this many ms, so later messages on the link (heartbeats)
    /// overtake them (0: no longer): `hold-events us eu 1500ms`.
    HoldEvents(usize, usize, u64),
    /// The region crashes and loses its disk: `wipe us`.
    Wipe(usize),
    /// The region starts again on an empty disk and first pulls its own history back from
    /// its peers (`Config::restore`): `restore us`.
    Restore(usize),
    /// The first region retires the others (`Replica::retire`): `retire eu ap,sa`.
    Retire(usize, Vec<usize>),
    /// The region rotates its own key (`Replica::rotate_key`): `rotate-key us`.
    RotateKey(usize),
    /// The first region issues the join of the second (`Replica::join`); the second is not
    /// a founding member: it stays down until then, and starts joining (`Config::joining`)
    /// now: `join eu sa`.
    Join(usize, usize),
}

impl Action {
    /// A membership change (not a fault: it leaves random faults on, like a policy change).
    pub fn is_membership(&self) -> bool {
        matches!(
            self,
            Action::Retire(..) | Action::RotateKey(_) | Action::Join(..)
        )
    }
}

/// The policy a scripted change issues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    /// A policy file: the path as written, and the policy once loaded
    /// ([`Scenario::load_policies`]).
    File(String, Option<Box<Policy>>),
    /// Drawn from the policy generator (the run's seed, one stream per scripted change).
    Generated,
}

/// A scripted step: when, what, and the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Simulated time, ms.
    pub at_ms: u64,
    /// What happens.
    pub action: Action,
    /// Source line (for messages).
    pub line: usize,
}

/// A parsed scenario, steps sorted by time (stable in file order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scenario {
    /// The steps.
    pub steps: Vec<Step>,
}

impl Scenario {
    /// True if the scenario scripts any fault (split, crash, skew).
    pub fn has_faults(&self) -> bool {
        self.steps.iter().any(|s| {
            !matches!(s.action, Action::Tx { .. } | Action::Policy(..)) && !s.action.is_membership()
        })
    }

    /// Loads the policy files of `policy` steps: a relative path is taken from `dir` (the
    /// scenario file's directory). Errors name the line.
    pub fn load_policies(&mut self, dir: &std::path::Path) -> Result<(), ScenarioError> {
        for s in &mut self.steps {
            if let Action::Policy(_, PolicyChange::File(path, slot)) = &mut s.action {
                let p = std::path::Path::new(path.as_str());
                let full = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    dir.join(p)
                };
                let text = std::fs::read_to_string(&full).map_err(|e| {
                    err(
                        s.line,
                        format!("policy {}: cannot read: {e}", full.display()),
                    )
                })?;
                let policy = Policy::from_toml(&text)
                    .map_err(|e| err(s.line, format!("policy {}: {e}", full.display())))?;
                *slot = Some(Box::new(policy));
            }
        }
        Ok(())
    }

    /// Latest step time.
    pub fn end_ms(&self) -> u64 {
        self.steps.iter().map(|s| s.at_ms).max().unwrap_or(0)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} steps", self.steps.len())
    }
}

fn err(line: usize, reason: impl Into<String>) -> ScenarioError {
    ScenarioError {
        line,
        reason: reason.into(),
    }
}

/// Parses a duration such as `250ms`, `10s`, `1.5s`, `2m` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let (num, mult) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1u64)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60_000)
    } else {
        return Err(format!("{text:?} has no unit: write e.g. 250ms, 10s or 2m"));
    };
    let d = Decimal::from_str_exact(num)
        .map_err(|_| format!("{text:?} is not a number followed by ms, s or m"))?;
    if d.is_sign_negative() {
        return Err(format!("{text:?} is negative"));
    }
    let ms = d
        .checked_mul(Decimal::from(mult))
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if !ms.fract().is_zero() {
        return Err(format!("{text:?} is not a whole number of milliseconds"));
    }
    u64::try_from(ms).map_err(|_| format!("{text:?} is too large"))
}

fn parse_signed_ms(text: &str) -> Result<i64, String> {
    let (neg, rest) = match text.as_bytes().first() {
        Some(b'+') => (false, &text[1..]),
        Some(b'-') => (true, &text[1..]),
        _ => return Err(format!("{text:?}: a skew needs a sign, e.g. +300ms or -1s")),
    };
    let ms = parse_duration_ms(rest)?;
    let ms = i64::try_from(ms).map_err(|_| format!("{text:?} is too large"))?;
    if ms > 3_600_000 {
        return Err(format!("{text:?}: skews beyond one hour are not simulated"));
    }
    Ok(if neg { -ms } else { ms })
}

fn region_index(regions: &[RegionId], name: &str, line: usize) -> Result<usize, ScenarioError> {
    regions
        .iter()
        .position(|r| r.as_str() == name)
        .ok_or_else(|| {
            let names: Vec<&str> = regions.iter().map(|r| r.as_str()).collect();
            err(
                line,
                format!(
                    "unknown region {name:?} (this run has {})",
                    names.join(", ")
                ),
            )
        })
}

fn parse_groups(
    regions: &[RegionId],
    spec: &str,
    line: usize,
) -> Result<Vec<Vec<usize>>, ScenarioError> {
    let mut groups = Vec::new();
    let mut seen = vec![false; regions.len()];
    for part in spec.split('|') {
        let p = part.trim();
        let inner = p
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .ok_or_else(|| {
                err(
                    line,
                    format!("group {p:?} must be written in braces, e.g. {{eu, us}}"),
                )
            })?;
        let mut g = Vec::new();
        for name in inner.split(',') {
            let name = name.trim();
            if name.is_empty() {
                return Err(err(line, format!("empty region name in group {p:?}")));
            }
            let i = region_index(regions, name, line)?;
            if seen[i] {
                return Err(err(line, format!("region {name:?} is in two groups")));
            }
            seen[i] = true;
            g.push(i);
        }
        groups.push(g);
    }
    if groups.len() < 2 {
        return Err(err(line, "a split needs at least two groups: {a} | {b}"));
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(err(
            line,
            format!(
                "region {:?} is in no group: list every region in a split",
                regions[i].as_str()
            ),
        ));
    }
    Ok(groups)
}

/// Parses scenario text for a run with these regions. Errors name the line and the reason.
pub fn parse(
    text: &str,
    regions: &[RegionId],
    currency: Currency,
) -> Result<Scenario, ScenarioError> {
    let mut steps = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let (t, rest) = content
            .split_once(char::is_whitespace)
            .unwrap_or((content, ""));
        let t = t.strip_prefix("t=").ok_or_else(|| {
            err(
                line,
                format!("expected a time such as t=10s at the start, found {t:?}"),
            )
        })?;
        let at_ms = parse_duration_ms(t).map_err(|r| err(line, r))?;
        let rest = rest.trim();
        let (verb, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let args = args.trim();
        let words: Vec<&str> = args.split_whitespace().collect();
        let one_region = |what: &str| -> Result<usize, ScenarioError> {
            match words.as_slice() {
                [r] => region_index(regions, r, line),
                _ => Err(err(line, format!("expected `{what} <region>`"))),
            }
        };
        let action = match verb {
            "split" => Action::Split(parse_groups(regions, args, line)?),
            "isolate" => {
                let i = one_region("isolate")?;
                let others: Vec<usize> = (0..regions.len()).filter(|j| *j != i).collect();
                if others.is_empty() {
                    return Err(err(line, "cannot isolate the only region"));
                }
                Action::Split(vec![vec![i], others])
            }
            "heal" => {
                if !words.is_empty() {
                    return Err(err(line, "`heal` takes no arguments"));
                }
                Action::Heal
            }
            "crash" => Action::Crash(one_region("crash")?),
            "crash-after-pull" => Action::CrashAfterPull(one_region("crash-after-pull")?),
            "wipe" => Action::Wipe(one_region("wipe")?),
            "restore" => Action::Restore(one_region("restore")?),
            "fsync" => match words.as_slice() {
                [r, "normal"] => Action::Fsync(region_index(regions, r, line)?, None),
                [r, d] => Action::Fsync(
                    region_index(regions, r, line)?,
                    Some(parse_duration_ms(d).map_err(|r| err(line, r))?),
                ),
                _ => return Err(err(line, "expected `fsync <region> 400ms` or `fsync <region> normal`")),
            },
            "hold-events" => match words.as_slice() {
                [a, b, d] => {
                    let (from, to) = (region_index(regions, a, line)?, region_index(regions, b, line)?);
                    if from == to {
                        return Err(err(line, "hold-events needs two different regions"));
                    }
                    Action::HoldEvents(from, to, parse_duration_ms(d).map_err(|r| err(line, r))?)
                }
                _ => return Err(err(line, "expected `hold-events <from> <to> 1500ms`")),
            },
            "restart" => Action::Restart(one_region("restart")?),
            "skew" => match words.as_slice() {
                [r, s] => Action::Skew(
                    region_index(regions, r, line)?,
                    parse_signed_ms(s).map_err(|r| err(line, r))?,
                ),
                _ => return Err(err(line, "expected `skew <region> +300ms`")),
            },
            "policy" => match words.as_slice() {
                [r, "generated"] => {
                    Action::Policy(region_index(regions, r, line)?, PolicyChange::Generated)
                }
                [r, file] => Action::Policy(
                    region_index(regions, r, line)?,
                    PolicyChange::File(file.to_string(), None),
                ),
                _ => {
                    return Err(err(
                        line,
                        "expected `policy <region> <file.toml>` or `policy <region> generated`",
                    ))
                }
            },
            "retire" => match words.as_slice() {
                [issuer, list] => {
                    let issuer = region_index(regions, issuer, line)?;
                    let mut out = Vec::new();
                    for r in list.split(',') {
                        let r = region_index(regions, r.trim(), line)?;
                        if r == issuer {
                            return Err(err(line, "a region cannot retire itself"));
                        }
                        if !out.contains(&r) {
                            out.push(r);
                        }
                    }
                    Action::Retire(issuer, out)
                }
                _ => return Err(err(line, "expected `retire <issuer> <region>[,<region>...]`")),
            },
            "rotate-key" => Action::RotateKey(one_region("rotate-key")?),
            "join" => match words.as_slice() {
                [issuer, r] => {
                    let (issuer, r) = (region_index(regions, issuer, line)?, region_index(regions, r, line)?);
                    if issuer == r {
                        return Err(err(line, "a region cannot join itself"));
                    }
                    Action::Join(issuer, r)
                }
                _ => return Err(err(line, "expected `join <issuer> <region>`")),
            },
            "deposit" | "purchase" | "withdrawal" | "refund" => {
                let kind = Kind::parse(verb).ok_or_else(|| err(line, "unknown kind"))?;
                // An optional currency code after the amount.
                let mut words = words.clone();
                let mut currency = currency;
                let code = |w: &str| w.len() == 3 && w.bytes().all(|b| b.is_ascii_uppercase());
                if words.len() >= 4 && code(words[3]) {
                    currency = Currency::parse(words[3]).map_err(|e| err(line, e.to_string()))?;
                    words.remove(3);
                }
                let (r, a, amt, key) = match words.as_slice() {
                    [r, a, amt] => (r, a, amt, None),
                    [r, a, amt, k] => {
                        let key = k.strip_prefix("key=").ok_or_else(|| {
                            err(line, format!("expected key=<idempotency key>, found {k:?}"))
                        })?;
                        wallet_core::id::check_idempotency_key(key)
                            .map_err(|e| err(line, e.to_string()))?;
                        (r, a, amt, Some(key.to_string()))
                    }
                    _ => {
                        return Err(err(
                            line,
                            format!(
                                "expected `{verb} <region> <account> <amount> [CURRENCY] [key=K]`"
                            ),
                        ))
                    }
                };
                Action::Tx {
                    region: region_index(regions, r, line)?,
                    account: AccountId::new(a).map_err(|e| err(line, e.to_string()))?,
                    kind,
                    amount: Amount::parse(amt, currency).map_err(|e| err(line, e.to_string()))?,
                    currency,
                    key,
                }
            }
            "" => return Err(err(line, "missing action after the time")),
            other => {
                return Err(err(
                    line,
                    format!(
                        "unknown action {other:?}: expected split, isolate, heal, crash, restart, wipe, restore, skew, fsync, hold-events, policy, retire, rotate-key, join, deposit, purchase, withdrawal or refund"
                    ),
                ))
            }
        };
        steps.push(Step {
            at_ms,
            action,
            line,
        });
    }
    steps.sort_by_key(|s| s.at_ms);
    // Replay crash/restart in time order to reject impossible sequences.
    let mut down = vec![false; regions.len()];
    for s in &steps {
        match s.action {
            Action::Crash(r) | Action::Wipe(r) | Action::CrashAfterPull(r) if down[r] => {
                return Err(err(
                    s.line,
                    format!("crash {}: it is already down", regions[r]),
                ))
            }
            Action::Crash(r) | Action::Wipe(r) | Action::CrashAfterPull(r) => down[r] = true,
            Action::Restart(r) | Action::Restore(r) if !down[r] => {
                return Err(err(
                    s.line,
                    format!("restart {}: it is not down (crash it first)", regions[r]),
                ))
            }
            Action::Restart(r) | Action::Restore(r) => down[r] = false,
            _ => {}
        }
    }
    Ok(Scenario { steps })
}
