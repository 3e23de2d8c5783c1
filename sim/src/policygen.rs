//! The policy generator: without `--policy`, every seed draws an overdraft policy that may use
//! any part of the policy language (docs/reconciliation.md §5 and §7).
//!
//! A draw is TOML text, parsed by the node's own parser ([`Policy::from_toml`]), so the
//! policy a run uses is exactly what a node would load from that file. Each draw has its own
//! PRNG stream (`policy` for the seed policy, `policy-change-<k>` for the k-th random change,
//! `policy-scripted-<k>` for a scenario's k-th `generated` change): changing the generator
//! changes no other draw of a run (workload, faults, network).
//!
//! What a draw can contain:
//! - a `[default]` section with `action` (`fee` or `reverse`, or left out), `reversible`
//!   (left out, `["purchase"]`, or `["purchase", "withdrawal"]`), an overdraft line with
//!   `beyond_line` (`reverse`, `fee`, or left out where the parser allows it: a section whose
//!   `action` is `fee` must say it), and a fee: `flat` (sometimes with more decimal places
//!   than a currency has, to be added exactly before the one rounding), `percent` (whole,
//!   halves and quarters such as 2.5 or 12.5, which give ties at half a minor unit, and up to
//!   6 decimal places), `minimum`, `cap` (sometimes equal to the minimum), `grace`, `per`;
//! - tiers of account id prefixes taken from the workload's `acct-NNNN` names (overlapping
//!   tiers, where the first by name wins, and tiers that match no account);
//! - `[[rule]]`s for a tier, a currency (USD 2, JPY 0, BHD 3 minor units) or both, each
//!   overriding a random subset of the default's fields, with amounts at the currency's
//!   scale in a currency rule.
//!
//! Amounts stay within the validation limits (at most 6 decimal places, a currency rule's at
//! its minor units, `percent` at most 100, `cap` at least `minimum`). The zero policy is one
//! draw in about 70 (the text `[default]`).
//!
//! Integer arithmetic and exact decimals only; the same seed gives the same text.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use rust_decimal::Decimal;
use wallet_core::policy::{Fee, Rule};
use wallet_core::{Action, Currency, EventId, FeePer, Kind, Mode, Policy, RegionId};

use crate::rng::Rng;

/// The currencies the generator writes rules for (and the workload uses by default).
pub const CURRENCIES: [Currency; 3] = [Currency::USD, Currency::JPY, Currency::BHD];

/// Share of draws that are the zero policy, ppm.
pub const ZERO_PPM: u32 = 15_000;

/// A part of the policy language a drawn policy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    /// The zero policy (no fee, no reversal, floor 0).
    Zero,
    /// A rule with a flat fee.
    Flat,
    /// A rule without a currency whose flat fee has decimal places (finer than JPY's units,
    /// or than USD's cents): added exactly to the percent part before the one rounding.
    FlatFinerThanCurrency,
    /// A rule with a percent fee.
    Percent,
    /// A percent with a fractional part (2.5, 12.5, 0.25, ...).
    PercentFraction,
    /// A percent with 3 to 6 decimal places.
    PercentFine,
    /// A rule with a minimum fee.
    Minimum,
    /// A rule with a cap.
    Cap,
    /// A rule whose cap equals its minimum.
    CapEqualsMinimum,
    /// A rule with a grace amount.
    Grace,
    /// A rule charging per debit.
    PerDebit,
    /// A rule charging once per episode.
    PerEpisode,
    /// A rule with no overdraft line and `action = "fee"`.
    ActionFee,
    /// A rule with no overdraft line and `action = "reverse"`.
    ActionReverse,
    /// A rule whose `reversible` list includes withdrawals.
    ReversibleWithdrawal,
    /// An overdraft line with `reverse` beyond it.
    LineBeyondReverse,
    /// An overdraft line with `fee` beyond it.
    LineBeyondFee,
    /// A section with a line that leaves `beyond_line` out (the default, `reverse`).
    LineBeyondDefault,
    /// `[tiers]`.
    Tiers,
    /// Two tiers that both match some account (the first by name wins).
    TierOverlap,
    /// A tier that matches no account.
    TierEmpty,
    /// A rule for a tier (any currency).
    TierRule,
    /// A rule for USD.
    CurrencyRuleUsd,
    /// A rule for JPY.
    CurrencyRuleJpy,
    /// A rule for BHD.
    CurrencyRuleBhd,
    /// A rule for a tier and a currency.
    TierCurrencyRule,
}

impl Feature {
    /// Every feature, in order.
    pub const ALL: [Feature; 26] = [
        Feature::Zero,
        Feature::Flat,
        Feature::FlatFinerThanCurrency,
        Feature::Percent,
        Feature::PercentFraction,
        Feature::PercentFine,
        Feature::Minimum,
        Feature::Cap,
        Feature::CapEqualsMinimum,
        Feature::Grace,
        Feature::PerDebit,
        Feature::PerEpisode,
        Feature::ActionFee,
        Feature::ActionReverse,
        Feature::ReversibleWithdrawal,
        Feature::LineBeyondReverse,
        Feature::LineBeyondFee,
        Feature::LineBeyondDefault,
        Feature::Tiers,
        Feature::TierOverlap,
        Feature::TierEmpty,
        Feature::TierRule,
        Feature::CurrencyRuleUsd,
        Feature::CurrencyRuleJpy,
        Feature::CurrencyRuleBhd,
        Feature::TierCurrencyRule,
    ];

    /// A short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Feature::Zero => "zero",
            Feature::Flat => "flat",
            Feature::FlatFinerThanCurrency => "flat_finer_than_currency",
            Feature::Percent => "percent",
            Feature::PercentFraction => "percent_fraction",
            Feature::PercentFine => "percent_fine",
            Feature::Minimum => "minimum",
            Feature::Cap => "cap",
            Feature::CapEqualsMinimum => "cap_equals_minimum",
            Feature::Grace => "grace",
            Feature::PerDebit => "per_debit",
            Feature::PerEpisode => "per_episode",
            Feature::ActionFee => "action_fee",
            Feature::ActionReverse => "action_reverse",
            Feature::ReversibleWithdrawal => "reversible_withdrawal",
            Feature::LineBeyondReverse => "line_beyond_reverse",
            Feature::LineBeyondFee => "line_beyond_fee",
            Feature::LineBeyondDefault => "line_beyond_default",
            Feature::Tiers => "tiers",
            Feature::TierOverlap => "tier_overlap",
            Feature::TierEmpty => "tier_empty",
            Feature::TierRule => "tier_rule",
            Feature::CurrencyRuleUsd => "currency_rule_usd",
            Feature::CurrencyRuleJpy => "currency_rule_jpy",
            Feature::CurrencyRuleBhd => "currency_rule_bhd",
            Feature::TierCurrencyRule => "tier_currency_rule",
        }
    }
}

/// A drawn policy.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// `drawn-<hash>`: the first 8 bytes of [`Policy::hash`] in hex.
    pub name: String,
    /// The TOML text (what a node would read from its policy file).
    pub toml: String,
    /// The parsed policy.
    pub policy: Policy,
    /// The policy the generator meant to write, built from its own sections by the rules of
    /// docs/reconciliation.md §5 (defaults, inheritance from `[default]`, `action` against
    /// `beyond_line`), without the node's parser. The run checks `policy == meant`
    /// (invariant `policy_file`): a parser that resolves a field wrongly is caught there,
    /// although the replicas and the oracle, which both use the parsed policy, agree.
    pub meant: Policy,
    /// What it uses.
    pub features: BTreeSet<Feature>,
}

/// The name of a policy: `<prefix>-<first 8 bytes of its hash in hex>`.
pub fn name(prefix: &str, policy: &Policy) -> String {
    format!("{prefix}-{}", policy.hash())
}

/// One section of the file, as written.
#[derive(Debug, Clone, Default)]
struct Section {
    tier: Option<String>,
    currency: Option<Currency>,
    action: Option<&'static str>,
    beyond: Option<&'static str>,
    line: Option<Decimal>,
    reversible: Option<&'static [&'static str]>,
    flat: Option<Decimal>,
    percent: Option<Decimal>,
    minimum: Option<Decimal>,
    cap: Option<Decimal>,
    grace: Option<Decimal>,
    per: Option<&'static str>,
    /// SPEC §8: `mode` and, for `home`, the home region; for `escrow`, the fallback and
    /// the risk limit (whole units of the currency).
    mode: Option<&'static str>,
    home: Option<RegionId>,
    fallback: Option<&'static str>,
    risk_limit: Option<u32>,
}

impl Section {
    fn render(&self, out: &mut String) {
        let q = |d: &Decimal| format!("\"{d}\"");
        if let Some(t) = &self.tier {
            let _ = writeln!(out, "tier = \"{t}\"");
        }
        if let Some(c) = self.currency {
            let _ = writeln!(out, "currency = \"{}\"", c.as_str());
        }
        if let Some(a) = self.action {
            let _ = writeln!(out, "action = \"{a}\"");
        }
        if let Some(l) = &self.line {
            let _ = writeln!(out, "overdraft_line = {}", q(l));
        }
        if let Some(b) = self.beyond {
            let _ = writeln!(out, "beyond_line = \"{b}\"");
        }
        if let Some(r) = self.reversible {
            let list: Vec<String> = r.iter().map(|k| format!("\"{k}\"")).collect();
            let _ = writeln!(out, "reversible = [{}]", list.join(", "));
        }
        let mut fee = Vec::new();
        for (k, v) in [
            ("flat", &self.flat),
            ("percent", &self.percent),
            ("minimum", &self.minimum),
            ("cap", &self.cap),
            ("grace", &self.grace),
        ] {
            if let Some(v) = v {
                fee.push(format!("{k} = {}", q(v)));
            }
        }
        if let Some(p) = self.per {
            fee.push(format!("per = \"{p}\""));
        }
        if !fee.is_empty() {
            let _ = writeln!(out, "fee = {{ {} }}", fee.join(", "));
        }
        if let Some(m) = self.mode {
            let _ = writeln!(out, "mode = \"{m}\"");
        }
        if let Some(h) = self.home {
            let _ = writeln!(out, "home = \"{h}\"");
        }
        if let Some(f) = self.fallback {
            let _ = writeln!(out, "fallback = \"{f}\"");
        }
        if let Some(r) = self.risk_limit {
            let _ = writeln!(out, "risk_limit = \"{r}\"");
        }
    }
}

struct Gen {
    rng: Rng,
    accounts: u32,
    /// The stream the consistency modes are drawn from (`<tag>/modes`): adding modes to the
    /// generator changed no other draw of a policy.
    modes: Rng,
    regions: Vec<RegionId>,
}

/// Share of drawn policies that use consistency modes (SPEC §8), ppm.
pub const MODES_PPM: u32 = 400_000;

/// True if `d` has at most `dp` decimal places.
fn fits(d: Decimal, dp: u32) -> bool {
    d.normalize().scale() <= dp
}

/// `d` rounded half away from zero to `dp` places (monotone: keeps `minimum <= cap`).
fn round_to(d: Decimal, dp: u32) -> Decimal {
    d.round_dp_with_strategy(dp, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
}

impl Gen {
    fn chance(&mut self, ppm: u32) -> bool {
        self.rng.chance(ppm)
    }

    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[self.rng.below(list.len() as u64) as usize]
    }

    /// An amount of about `cents` hundredths of a major unit, in a section of currency `c`:
    /// USD (and sections without a currency) `cents / 100`; JPY `cents` yen (the same
    /// digits, so a 5.00 fee is 500 JPY); BHD `cents / 100` dinars, sometimes with a third
    /// decimal. Without a currency it sometimes carries 1 to 4 more decimal places (at most 6
    /// in all).
    fn amount(&mut self, cents: u64, c: Option<Currency>) -> Decimal {
        let cents = i64::try_from(cents).unwrap_or(i64::MAX / 1_000_000);
        match c {
            Some(Currency::JPY) => Decimal::new(cents, 0),
            Some(Currency::BHD) => {
                let extra = if self.chance(300_000) {
                    self.rng.range(1, 9) as i64
                } else {
                    0
                };
                Decimal::new(cents * 10 + extra, 3)
            }
            Some(_) => Decimal::new(cents, 2),
            None => {
                if self.chance(150_000) {
                    let k = self.rng.range(1, 4) as u32;
                    let extra = self.rng.range(1, 10u64.pow(k) - 1) as i64;
                    Decimal::new(cents * 10i64.pow(k) + extra, 2 + k)
                } else {
                    Decimal::new(cents, 2)
                }
            }
        }
    }

    fn cents(&mut self, nice: &[u64], lo: u64, hi: u64) -> u64 {
        if self.chance(500_000) {
            self.pick(nice)
        } else {
            self.rng.range(lo, hi)
        }
    }

    fn percent(&mut self) -> Decimal {
        const NICE: [&str; 14] = [
            "0.5", "1", "1.5", "2", "2.5", "5", "7.5", "10", "12.5", "15", "20", "25", "0.25",
            "3.125",
        ];
        let roll = self.rng.below(100);
        if roll < 45 {
            let s = self.pick(&NICE);
            Decimal::from_str_exact(s).unwrap_or(Decimal::ONE)
        } else if roll < 60 {
            // 3 to 6 decimal places, up to 30 %.
            let s = self.rng.range(3, 6) as u32;
            let hi = 30 * 10u64.pow(s);
            Decimal::new(self.rng.range(1, hi) as i64, s)
        } else if roll < 64 {
            Decimal::ONE_HUNDRED
        } else {
            Decimal::from(self.rng.range(1, 30))
        }
    }

    /// The fee fields of a section (each left out with some probability: inherited).
    fn fee(&mut self, s: &mut Section, override_ppm: u32) {
        let c = s.currency;
        if self.chance(override_ppm) {
            s.flat = Some(if self.chance(150_000) {
                Decimal::ZERO
            } else {
                let cents = self.cents(&[25, 50, 100, 250, 500, 1000, 1500, 2500, 3500], 1, 5000);
                self.amount(cents, c)
            });
        }
        if self.chance(override_ppm) {
            s.percent = Some(if self.chance(150_000) {
                Decimal::ZERO
            } else {
                self.percent()
            });
        }
        if self.chance(override_ppm * 7 / 10) {
            let cents = self.cents(&[50, 100, 200, 500, 1000], 10, 1500);
            s.minimum = Some(self.amount(cents, c));
        }
        if self.chance(override_ppm * 8 / 10) {
            // Made at least the minimum in force below (see `fix_cap`).
            s.cap = Some(match s.minimum {
                Some(m) if self.chance(150_000) => m,
                _ => {
                    let cents = self.cents(&[500, 1000, 2000, 3500], 100, 6000);
                    self.amount(cents, c)
                }
            });
        }
        if self.chance(override_ppm * 6 / 10) {
            let cents = self.cents(&[100, 500, 1000, 2000], 1, 2000);
            s.grace = Some(self.amount(cents, c));
        }
        if self.chance(override_ppm) {
            s.per = Some(if self.chance(300_000) {
                "episode"
            } else {
                "debit"
            });
        }
    }

    /// Action, reversible kinds, overdraft line of a section.
    fn behaviour(&mut self, s: &mut Section, override_ppm: u32) {
        if self.chance(override_ppm) {
            s.action = Some(if self.chance(450_000) {
                "reverse"
            } else {
                "fee"
            });
        }
        if self.chance(override_ppm / 3) {
            s.reversible = Some(if self.chance(500_000) {
                &["purchase", "withdrawal"]
            } else {
                &["purchase"]
            });
        }
        if self.chance(override_ppm * 6 / 10) {
            let cents = self.cents(&[2000, 5000, 10_000, 25_000], 500, 30_000);
            s.line = Some(self.amount(cents, s.currency));
            if self.chance(650_000) {
                s.beyond = Some(if self.chance(500_000) {
                    "fee"
                } else {
                    "reverse"
                });
            }
        }
    }

    /// Tier prefixes drawn from the workload's account names (`acct-NNNN`).
    fn prefix(&mut self) -> String {
        let n = u64::from(self.accounts.max(1));
        let width = format!("{}", n - 1).len().max(4);
        let id = |i: u64| format!("acct-{i:0width$}");
        match self.rng.below(10) {
            // One account.
            0 | 1 => id(self.rng.below(n)),
            // Ten accounts (or fewer).
            2..=5 => {
                let a = id(self.rng.below(n));
                a[..a.len() - 1].to_string()
            }
            // A hundred.
            6 | 7 => {
                let a = id(self.rng.below(n));
                a[..a.len() - 2].to_string()
            }
            // Nobody.
            _ => self.pick(&["vip-", "corp-", "acct-x"]).to_string(),
        }
    }
}

/// Draws a policy from the stream `tag` of `seed`. `accounts`: the workload's account count
/// (tier prefixes are taken from its account names).
///
/// Panics if the generator wrote a policy the parser refuses (a generator bug; the tests
/// parse thousands of draws).
pub fn draw(seed: u64, tag: &[u8], accounts: u32, regions: &[RegionId]) -> Drawn {
    let mut g = Gen {
        rng: Rng::new(seed, tag),
        accounts,
        modes: Rng::new(seed, &[tag, b"/modes"].concat()),
        regions: regions.to_vec(),
    };
    let (toml, meant) = if g.chance(ZERO_PPM) {
        ("[default]\n".to_string(), Policy::zero())
    } else {
        text(&mut g)
    };
    let policy = Policy::from_toml(&toml)
        .unwrap_or_else(|e| panic!("policy generator wrote an invalid policy ({e}):\n{toml}"));
    let features = features(&policy, &toml, accounts);
    Drawn {
        name: name("drawn", &policy),
        toml,
        policy,
        meant,
        features,
    }
}

/// The seed policy of a run: the stream `policy` of its seed.
pub fn draw_seed_policy(seed: u64, accounts: u32, regions: &[RegionId]) -> Drawn {
    draw(seed, b"policy", accounts, regions)
}

/// What a section means, resolved against the default's section `d` (None: it is the
/// default), by docs/reconciliation.md §5 and SPEC §6, written apart from the node's parser:
/// a field left out comes from `[default]` (the default's own left-out fields are: `action`
/// fee, no line, `beyond_line` reverse, `reversible` purchase, every fee part zero, no cap,
/// per debit); with a line above zero the rule's action is `beyond_line`, else `action`.
fn meaning(s: &Section, d: Option<&Section>) -> Rule {
    let pick = |own: Option<Decimal>, base: Option<Decimal>| own.or(base).unwrap_or_default();
    let base = |f: fn(&Section) -> Option<Decimal>| d.and_then(f);
    let line = pick(s.line, base(|d| d.line));
    let action_text = s.action.or(d.and_then(|d| d.action)).unwrap_or("fee");
    let beyond_text = s.beyond.or(d.and_then(|d| d.beyond)).unwrap_or("reverse");
    let chosen = if line > Decimal::ZERO {
        beyond_text
    } else {
        action_text
    };
    let action = if chosen == "reverse" {
        Action::Reverse
    } else {
        Action::Fee
    };
    let names = s
        .reversible
        .or(d.and_then(|d| d.reversible))
        .unwrap_or(&["purchase"]);
    let mut reversible: Vec<Kind> = names.iter().filter_map(|n| Kind::parse(n)).collect();
    reversible.sort();
    reversible.dedup();
    let per = match s.per.or(d.and_then(|d| d.per)) {
        Some("episode") => FeePer::Episode,
        _ => FeePer::Debit,
    };
    // SPEC §8: the mode comes from the section or `[default]` (optimistic when neither says);
    // a home section without its own `home` takes the default's.
    // An escrow section's parameters come from the default's when it is escrow too; a
    // `refuse` one has no risk limit; the time-out is the default 300 ms (never drawn).
    let d_mode = d.and_then(|d| d.mode);
    let mode = match s.mode.or(d_mode) {
        Some("home") => match s.home.or(d.and_then(|d| d.home)) {
            Some(home) => Mode::Home { home },
            None => Mode::Optimistic, // never drawn: the parser refuses it
        },
        Some("escrow") => {
            let base = d.filter(|_| d_mode == Some("escrow"));
            let fallback = s.fallback.or(base.and_then(|d| d.fallback));
            let optimistic = fallback == Some("optimistic");
            let limit = s.risk_limit.or(base.and_then(|d| d.risk_limit));
            Mode::Escrow {
                fallback: if optimistic {
                    wallet_core::Fallback::Optimistic
                } else {
                    wallet_core::Fallback::Refuse
                },
                risk_limit: if optimistic {
                    Decimal::from(limit.unwrap_or(0))
                } else {
                    Decimal::ZERO
                },
                rights_timeout_ms: wallet_core::policy::RIGHTS_TIMEOUT_MS_DEFAULT,
            }
        }
        _ => Mode::Optimistic,
    };
    Rule {
        mode,
        tier: s.tier.clone(),
        currency: s.currency,
        action,
        overdraft_line: line,
        reversible,
        fee: Fee {
            flat: pick(s.flat, base(|d| d.flat)),
            percent: pick(s.percent, base(|d| d.percent)),
            minimum: pick(s.minimum, base(|d| d.minimum)),
            cap: s.cap.or(base(|d| d.cap)),
            grace: pick(s.grace, base(|d| d.grace)),
            per,
        },
    }
}

fn text(g: &mut Gen) -> (String, Policy) {
    // The default section: every field sometimes left out (the parser's defaults).
    let mut d = Section::default();
    g.behaviour(&mut d, 850_000);
    g.fee(&mut d, 750_000);
    // Mostly a fee that can be charged.
    let zero = |v: Option<Decimal>| v.is_none_or(|v| v.is_zero());
    if zero(d.flat) && zero(d.percent) && zero(d.minimum) && g.chance(850_000) {
        let cents = g.cents(&[100, 500, 1000, 2500], 1, 3000);
        d.flat = Some(g.amount(cents, None));
    }
    fix_line(&mut d, None);
    fix_cap(&mut d, None);
    let mut tiers: Vec<(String, Vec<String>)> = Vec::new();
    if g.chance(450_000) {
        let names = ["gold", "premium", "silver"];
        let count = g.rng.range(1, 3) as usize;
        let first = g.rng.below(3) as usize;
        for k in 0..count {
            let name = names[(first + k) % 3].to_string();
            let n = g.rng.range(1, 2);
            let mut ps: Vec<String> = (0..n).map(|_| g.prefix()).collect();
            ps.dedup();
            tiers.push((name, ps));
        }
        tiers.sort();
    }
    let mut rules: Vec<Section> = Vec::new();
    for (t, _) in &tiers {
        if g.chance(650_000) {
            rules.push(Section {
                tier: Some(t.clone()),
                ..Section::default()
            });
        }
    }
    for (c, ppm) in [
        (Currency::JPY, 450_000),
        (Currency::BHD, 400_000),
        (Currency::USD, 200_000),
    ] {
        if g.chance(ppm) {
            rules.push(Section {
                currency: Some(c),
                ..Section::default()
            });
        }
    }
    if !tiers.is_empty() && g.chance(300_000) {
        let t = tiers[g.rng.below(tiers.len() as u64) as usize].0.clone();
        let c = g.pick(&CURRENCIES);
        rules.push(Section {
            tier: Some(t),
            currency: Some(c),
            ..Section::default()
        });
    }
    for r in &mut rules {
        g.behaviour(r, 400_000);
        g.fee(r, 450_000);
        fix_scale(r, &d);
        fix_line(r, Some(&d));
        fix_cap(r, Some(&d));
    }
    g.draw_modes(&mut d, &mut rules);
    let mut out = String::from("# drawn by wallet-sim's policy generator\n[default]\n");
    d.render(&mut out);
    if !tiers.is_empty() {
        out.push_str("\n[tiers]\n");
        for (t, ps) in &tiers {
            let list: Vec<String> = ps.iter().map(|p| format!("\"{p}\"")).collect();
            let _ = writeln!(out, "{t} = [{}]", list.join(", "));
        }
    }
    for r in &rules {
        out.push_str("\n[[rule]]\n");
        r.render(&mut out);
    }
    let mut meant_rules = vec![meaning(&d, None)];
    meant_rules.extend(rules.iter().map(|r| meaning(r, Some(&d))));
    let meant = Policy::new(meant_rules, tiers.into_iter().collect());
    (out, meant)
}

impl Gen {
    /// Consistency modes, from their own stream: in [`MODES_PPM`] of the draws, the default
    /// and each rule may name `home` (with a region) or `optimistic`.
    fn draw_modes(&mut self, d: &mut Section, rules: &mut [Section]) {
        if self.regions.is_empty() || !self.modes.chance(MODES_PPM) {
            return;
        }
        match self.modes.below(10) {
            0..=2 => self.home(d),
            3..=5 => self.escrow(d),
            _ => {}
        }
        for r in rules {
            match self.modes.below(20) {
                0..=4 => self.home(r),
                5..=9 => self.escrow(r),
                10..=12 => r.mode = Some("optimistic"),
                _ => {}
            }
        }
    }

    fn home(&mut self, s: &mut Section) {
        let n = self.regions.len() as u64;
        s.mode = Some("home");
        s.home = Some(self.regions[self.modes.below(n) as usize]);
    }

    /// Escrow with `refuse` or (the hybrid) `optimistic` and a whole risk limit, written out
    /// every time (so a rule never depends on which of the default's it inherits).
    fn escrow(&mut self, s: &mut Section) {
        s.mode = Some("escrow");
        if self.modes.chance(500_000) {
            s.fallback = Some("optimistic");
            s.risk_limit = Some(self.modes.range(1, 300) as u32);
        } else {
            s.fallback = Some("refuse");
        }
    }
}

/// A currency rule inherits the default's amounts: those with more places than the currency
/// has are written in the rule, rounded to it (the parser refuses them otherwise).
fn fix_scale(r: &mut Section, d: &Section) {
    let Some(c) = r.currency else { return };
    let dp = c.minor_units();
    for (mine, base) in [
        (&mut r.line, d.line),
        (&mut r.flat, d.flat),
        (&mut r.minimum, d.minimum),
        (&mut r.cap, d.cap),
        (&mut r.grace, d.grace),
    ] {
        if mine.is_none() {
            if let Some(b) = base {
                if !fits(b, dp) {
                    *mine = Some(round_to(b, dp));
                }
            }
        }
    }
}

/// A section whose line is above zero and whose `action` (its own, else the default's) is
/// `fee` must say `beyond_line` (its own or the default's).
fn fix_line(r: &mut Section, d: Option<&Section>) {
    let line = r.line.or(d.and_then(|d| d.line)).unwrap_or_default();
    let action = r.action.or(d.and_then(|d| d.action));
    let beyond = r.beyond.or(d.and_then(|d| d.beyond));
    if line > Decimal::ZERO && action == Some("fee") && beyond.is_none() {
        r.beyond = Some("fee");
    }
}

/// `cap` at least `minimum`, for the values in force in the section: a cap of its own below
/// the minimum becomes minimum + cap; an inherited one the minimum itself (every fee charged
/// under that rule is then exactly that amount). Both fit the section's scale.
fn fix_cap(r: &mut Section, d: Option<&Section>) {
    let minimum = r.minimum.or(d.and_then(|d| d.minimum)).unwrap_or_default();
    match (r.cap, d.and_then(|d| d.cap)) {
        (Some(own), _) if own < minimum => r.cap = Some(minimum + own),
        (None, Some(inherited)) if inherited < minimum => r.cap = Some(minimum),
        _ => {}
    }
}

/// The parts of the language `policy` (written as `toml`) uses.
pub fn features(policy: &Policy, toml: &str, accounts: u32) -> BTreeSet<Feature> {
    let mut f = BTreeSet::new();
    if *policy == Policy::zero() {
        f.insert(Feature::Zero);
    }
    for r in &policy.rules {
        let fee = &r.fee;
        if fee.flat > Decimal::ZERO {
            f.insert(Feature::Flat);
            if r.currency.is_none() && !fits(fee.flat, 0) {
                f.insert(Feature::FlatFinerThanCurrency);
            }
        }
        if fee.percent > Decimal::ZERO {
            f.insert(Feature::Percent);
            if !fits(fee.percent, 0) {
                f.insert(Feature::PercentFraction);
            }
            if !fits(fee.percent, 2) {
                f.insert(Feature::PercentFine);
            }
        }
        if fee.minimum > Decimal::ZERO {
            f.insert(Feature::Minimum);
        }
        if let Some(cap) = fee.cap {
            f.insert(Feature::Cap);
            if cap == fee.minimum {
                f.insert(Feature::CapEqualsMinimum);
            }
        }
        if fee.grace > Decimal::ZERO {
            f.insert(Feature::Grace);
        }
        f.insert(match fee.per {
            FeePer::Debit => Feature::PerDebit,
            FeePer::Episode => Feature::PerEpisode,
        });
        let line = r.overdraft_line > Decimal::ZERO;
        f.insert(match (line, r.action) {
            (false, Action::Fee) => Feature::ActionFee,
            (false, Action::Reverse) => Feature::ActionReverse,
            (true, Action::Fee) => Feature::LineBeyondFee,
            (true, Action::Reverse) => Feature::LineBeyondReverse,
        });
        if r.reversible.contains(&Kind::Withdrawal) {
            f.insert(Feature::ReversibleWithdrawal);
        }
        match (&r.tier, r.currency) {
            (Some(_), None) => {
                f.insert(Feature::TierRule);
            }
            (Some(_), Some(_)) => {
                f.insert(Feature::TierCurrencyRule);
            }
            (None, Some(c)) if c == Currency::USD => {
                f.insert(Feature::CurrencyRuleUsd);
            }
            (None, Some(c)) if c == Currency::JPY => {
                f.insert(Feature::CurrencyRuleJpy);
            }
            (None, Some(c)) if c == Currency::BHD => {
                f.insert(Feature::CurrencyRuleBhd);
            }
            _ => {}
        }
    }
    // A section with a line and no beyond_line anywhere (its own or [default]'s).
    if !toml.contains("beyond_line") && toml.contains("overdraft_line") {
        f.insert(Feature::LineBeyondDefault);
    }
    if !policy.tiers.is_empty() {
        f.insert(Feature::Tiers);
        let width = format!("{}", accounts.max(1) - 1).len().max(4);
        let mut matched = vec![false; policy.tiers.len()];
        for i in 0..accounts {
            let id = format!("acct-{i:0width$}");
            let hits: Vec<usize> = policy
                .tiers
                .values()
                .enumerate()
                .filter(|(_, ps)| ps.iter().any(|p| id.starts_with(p.as_str())))
                .map(|(k, _)| k)
                .collect();
            if hits.len() > 1 {
                f.insert(Feature::TierOverlap);
            }
            for k in hits {
                matched[k] = true;
            }
        }
        if matched.iter().any(|m| !m) {
            f.insert(Feature::TierEmpty);
        }
    }
    f
}

/// A policy change the run will issue.
#[derive(Debug, Clone)]
pub struct PlannedChange {
    /// Simulated time, ms.
    pub at_ms: u64,
    /// The region that issues it (index).
    pub region: usize,
    /// `drawn-<hash>`, or the file name and hash for a scripted file.
    pub name: String,
    /// The TOML text of a drawn policy.
    pub toml: Option<String>,
    /// The policy (None: a scripted file that was not loaded, see
    /// [`crate::scenario::Scenario::load_policies`]).
    pub policy: Option<Policy>,
    /// A drawn policy as the generator meant it ([`Drawn::meant`]).
    pub meant: Option<Policy>,
    /// From the scenario (else drawn at random).
    pub scripted: bool,
}

/// What became of a planned policy change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Its time has not come (the run ended first).
    NotYet,
    /// Issued as this event (it may still be lost in a crash before it was durable).
    Issued(EventId),
    /// The region was down.
    RegionDown,
    /// The replica refused it (e.g. restoring).
    Refused(String),
    /// A scripted file that was not loaded.
    NotLoaded,
}

impl std::fmt::Display for ChangeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeOutcome::NotYet => f.write_str("not reached"),
            ChangeOutcome::Issued(id) => write!(f, "issued {id}"),
            ChangeOutcome::RegionDown => f.write_str("region down"),
            ChangeOutcome::Refused(e) => write!(f, "refused: {e}"),
            ChangeOutcome::NotLoaded => f.write_str("policy file not loaded"),
        }
    }
}

/// Share of runs with a drawn seed policy and no `--policy-changes` that get 0, 1 or 2
/// random policy changes, in percent.
pub const CHANGES_WEIGHTS: [u64; 3] = [45, 40, 15];

/// The policy changes of a run, in time order: the scenario's `policy` steps, then
/// `cfg.policy_changes` random ones (by default 0 to 2 with [`CHANGES_WEIGHTS`] when the seed
/// policy is drawn, none when it is pinned), each at a uniform time in `0..=end_ms` at a
/// uniform region, drawn from the generator. Times and regions come from the stream
/// `policy-changes`, each drawn policy from its own stream.
pub fn plan_changes(cfg: &crate::config::SimConfig, end_ms: u64) -> Vec<PlannedChange> {
    use crate::scenario::{Action as Step, PolicyChange};
    let accounts = cfg.workload.accounts;
    let mut out = Vec::new();
    let mut generated = 0u32;
    for s in &cfg.scenario.steps {
        let Step::Policy(region, change) = &s.action else {
            continue;
        };
        let (name, toml, policy, meant) = match change {
            PolicyChange::File(path, p) => {
                let label = std::path::Path::new(path.as_str())
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| path.clone());
                let policy = p.as_deref().cloned();
                let name = match &policy {
                    Some(p) => name(&label, p),
                    None => label,
                };
                (name, None, policy, None)
            }
            PolicyChange::Generated => {
                let tag = format!("policy-scripted-{generated}");
                generated += 1;
                let d = draw(cfg.seed, tag.as_bytes(), accounts, cfg.mode_regions());
                (d.name, Some(d.toml), Some(d.policy), Some(d.meant))
            }
        };
        out.push(PlannedChange {
            at_ms: s.at_ms,
            region: *region,
            name,
            toml,
            policy,
            meant,
            scripted: true,
        });
    }
    let n = cfg.regions.len() as u64;
    let mut rng = Rng::new(cfg.seed, b"policy-changes");
    let count = match cfg.policy_changes {
        Some(c) => c,
        None if cfg.policy_drawn() => {
            let total: u64 = CHANGES_WEIGHTS.iter().sum();
            let mut pick = rng.below(total);
            let mut c = 0;
            for (k, w) in CHANGES_WEIGHTS.iter().enumerate() {
                if pick < *w {
                    c = k as u32;
                    break;
                }
                pick -= w;
            }
            c
        }
        None => 0,
    };
    if n > 0 {
        for k in 0..count {
            let at_ms = rng.range(0, end_ms);
            let region = rng.below(n) as usize;
            let d = draw(
                cfg.seed,
                format!("policy-change-{k}").as_bytes(),
                accounts,
                cfg.mode_regions(),
            );
            out.push(PlannedChange {
                at_ms,
                region,
                name: d.name,
                toml: Some(d.toml),
                policy: Some(d.policy),
                meant: Some(d.meant),
                scripted: false,
            });
        }
    }
    out.sort_by_key(|c| c.at_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_text_and_streams_differ() {
        let a = draw(7, b"policy", 100, &[]);
        let b = draw(7, b"policy", 100, &[]);
        let c = draw(7, b"policy-change-0", 100, &[]);
        assert_eq!(a.toml, b.toml);
        assert_eq!(a.name, b.name);
        assert_ne!(a.toml, c.toml);
    }

    #[test]
    fn meaning_follows_the_docs_table() {
        // A line with `action = "fee"` and `beyond_line = "reverse"`: reverse beyond the line.
        let d = Section {
            action: Some("fee"),
            beyond: Some("reverse"),
            line: Some(Decimal::new(50, 0)),
            ..Section::default()
        };
        assert_eq!(meaning(&d, None).action, Action::Reverse);
        // A rule without a line inherits the default's line, and with it `beyond_line`.
        let r = Section {
            currency: Some(Currency::JPY),
            ..Section::default()
        };
        let m = meaning(&r, Some(&d));
        assert_eq!(
            (m.action, m.overdraft_line),
            (Action::Reverse, Decimal::new(50, 0))
        );
        // Without a line: the action; left out: fee, purchase reversible, per debit.
        let z = meaning(&Section::default(), None);
        assert_eq!(z, Policy::zero().rules[0]);
    }

    #[test]
    fn a_thousand_draws_parse() {
        for seed in 0..1000 {
            let d = draw(seed, b"policy", 100, &[]);
            assert!(d.name.starts_with("drawn-"));
            assert_eq!(Policy::from_toml(&d.toml).ok(), Some(d.policy.clone()));
            assert_eq!(d.policy, d.meant, "seed {seed}:\n{}", d.toml);
        }
    }
}
