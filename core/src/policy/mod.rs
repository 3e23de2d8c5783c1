//! Overdraft policy (SPEC §6): what the settled fold does when a debit takes a balance below
//! the floor.
//!
//! A policy is a list of rules. The rule for an (account, currency) is the most specific
//! match: `(tier, currency)`, then `(tier, any)`, then `(any, currency)`, then the default.
//! Fields a rule leaves out are taken from `[default]`. Amounts in a rule without a currency
//! are rounded (half away from zero) to the minor units of the currency they are applied to.
//!
//! ```toml
//! [default]
//! action = "fee"              # "fee" or "reverse"
//! overdraft_line = "0"        # local acceptance may go this far below zero
//! reversible = ["purchase"]   # kinds "reverse" may cancel; others fall back to a fee
//! fee = { flat = "5.00", percent = "0", minimum = "0", cap = "35.00", grace = "0", per = "debit" }
//!
//! [[rule]]
//! currency = "JPY"
//! fee = { flat = "500", cap = "3500" }
//!
//! [tiers]
//! premium = ["vip-"]          # account id prefixes
//!
//! [[rule]]
//! tier = "premium"
//! overdraft_line = "500.00"
//! action = "reverse"
//!
//! [[rule]]
//! tier = "payouts"
//! mode = "home"               # "optimistic" (default), "escrow" or "home" (SPEC §8)
//! home = "eu"
//! ```

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::id::RegionId;
use crate::kind::Kind;

mod file;
use crate::money::Currency;
pub use file::PolicyDocument;

/// Most rules in a policy (the default included).
pub const POLICY_RULES_MAX: usize = 1_000;
/// Most tiers in a policy.
pub const POLICY_TIERS_MAX: usize = 1_000;
/// Most account id prefixes over all tiers of a policy.
pub const POLICY_PREFIXES_MAX: usize = 1_000;
/// Most decimal places of `fee.percent`.
pub const POLICY_PERCENT_SCALE_MAX: u32 = 6;
/// Most decimal places of any policy amount (a rule for one currency is held to that
/// currency's minor units, which are fewer).
pub const POLICY_AMOUNT_SCALE_MAX: u32 = 6;
// With these bounds `flat + percent × overdrawn / 100` is exact in a Decimal (28 digits):
// amounts up to 10^12 at scale 6, percent up to 100 at scale 6, overdrawn at scale <= 3.
const _: () = assert!(POLICY_PERCENT_SCALE_MAX + 3 + 2 + 15 <= 28);

/// Errors in a policy file or a policy received from a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file is not valid TOML or has unknown or mistyped fields.
    #[error("policy file is not valid: {0}")]
    Syntax(String),
    /// A field has a value out of range.
    #[error("policy field `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: String,
        /// Why.
        reason: String,
    },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// What to do with a debit that takes the settled balance below the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Charge an overdraft fee.
    Fee,
    /// Reverse the debit when its kind is reversible, else charge a fee.
    Reverse,
}

/// When a fee is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FeePer {
    /// On every overdrawing debit whose overdrawn amount exceeds the grace.
    Debit,
    /// Once per overdraft episode, on its first debit whose overdrawn amount exceeds the grace.
    Episode,
}

/// Fee arithmetic: `fee = flat + percent/100 × overdrawn`, computed exactly, then rounded once
/// half away from zero to the currency's minor units, raised to `minimum`, lowered to `cap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fee {
    /// Fixed part.
    pub flat: Decimal,
    /// Percent of the overdrawn amount (`1.5` means 1.5 %).
    pub percent: Decimal,
    /// Lower bound of a charged fee.
    pub minimum: Decimal,
    /// Upper bound of a charged fee, if any.
    pub cap: Option<Decimal>,
    /// No fee when the overdrawn amount is at or below this.
    pub grace: Decimal,
    /// Per debit or per episode.
    pub per: FeePer,
}

/// Default of `rights_timeout_ms`: how long a region waits for rights it asked for before it
/// applies the escrow fallback, in ms.
pub const RIGHTS_TIMEOUT_MS_DEFAULT: u32 = 300;
/// Largest `rights_timeout_ms`, in ms.
pub const RIGHTS_TIMEOUT_MS_MAX: u32 = 60_000;

/// What an escrow region does with a debit when rights stay short after asking (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fallback {
    /// Refuse it (`insufficient_rights`).
    Refuse,
    /// Accept it against the provisional balance, up to `risk_limit` below the floor, and
    /// reconcile as in §5: the hybrid.
    Optimistic,
}

/// The consistency mode of a rule (SPEC §8). Part of the replicated policy: a policy event
/// carries the mode of every rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// SPEC §5: accept within the provisional balance, reconcile afterwards.
    #[default]
    Optimistic,
    /// One region decides debits (`home`, or the last `HomeMove` of the account); a debit
    /// elsewhere is forwarded to it; credits are taken anywhere.
    Home {
        /// The home region, until a `HomeMove` of the account says otherwise.
        home: RegionId,
    },
    /// Bounded counter: a region accepts a debit within its own spending rights.
    Escrow {
        /// When rights stay short after asking.
        fallback: Fallback,
        /// With the optimistic fallback, how far below the floor an account may be taken
        /// (in the currency of the rule; rounded to it when the rule has no currency).
        risk_limit: Decimal,
        /// How long to wait for rights asked for, ms.
        rights_timeout_ms: u32,
    },
}

impl Mode {
    /// The name in the policy file.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Optimistic => "optimistic",
            Mode::Home { .. } => "home",
            Mode::Escrow { .. } => "escrow",
        }
    }

    /// True for the modes under which no client debit may overdraw (SPEC §9.4): home, and
    /// escrow with fallback `refuse`.
    pub fn is_strict(&self) -> bool {
        matches!(
            self,
            Mode::Home { .. }
                | Mode::Escrow {
                    fallback: Fallback::Refuse,
                    ..
                }
        )
    }
}

/// One resolved rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Tier this rule is for, or every tier.
    pub tier: Option<String>,
    /// Currency this rule is for, or every currency.
    pub currency: Option<Currency>,
    /// What to do below the floor.
    pub action: Action,
    /// How far below zero local acceptance may go (the floor is its negation).
    pub overdraft_line: Decimal,
    /// Kinds `reverse` may cancel.
    pub reversible: Vec<Kind>,
    /// Fee arithmetic.
    pub fee: Fee,
    /// Consistency mode (SPEC §8). Not in the rule's own encoding: a policy carries its
    /// rules' modes after them, and only when one is not optimistic ([`Policy`]'s
    /// `Serialize`), so a policy without modes has the bytes and hash it always had.
    #[serde(skip)]
    pub mode: Mode,
}

/// A rule made concrete for one currency: amounts at the currency's scale, except `fee.flat`,
/// which is kept exact because it is added to the percent part before the one rounding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// What to do below the floor.
    pub action: Action,
    /// The floor (zero or negative).
    pub floor: Decimal,
    /// Kinds `reverse` may cancel.
    pub reversible: Vec<Kind>,
    /// Fee arithmetic, amounts rounded to the currency.
    pub fee: Fee,
    /// The currency.
    pub currency: Currency,
    /// Consistency mode, `risk_limit` rounded to the currency.
    pub mode: Mode,
}

impl Applied {
    /// The fee for an overdrawn amount, by the fixed arithmetic of SPEC §6. Zero means none.
    /// `None` on arithmetic overflow.
    pub fn fee_for(&self, overdrawn: Decimal) -> Option<Decimal> {
        // Exact: the scales are bounded (POLICY_*_SCALE_MAX), so neither the product nor the
        // division by 100 (a shift of the scale by two) nor the sum rounds.
        let pct = self
            .fee
            .percent
            .checked_mul(overdrawn)?
            .checked_div(Decimal::ONE_HUNDRED)?;
        let exact = self.fee.flat.checked_add(pct)?;
        // Rounded once, half away from zero, to the currency's minor units.
        let mut fee = self.currency.round(exact);
        if fee < self.fee.minimum {
            fee = self.fee.minimum;
        }
        if let Some(cap) = self.fee.cap {
            if fee > cap {
                fee = cap;
            }
        }
        // At the currency's scale (a minimum of "2" is 2.00 USD): the same bytes everywhere.
        fee.rescale(self.currency.minor_units());
        Some(fee)
    }
}

/// What the settled fold does with a client debit that opens an overdraft episode (SPEC §6):
/// see [`Applied::first_overdraft`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdraft {
    /// The debit is reversed (`rev:`).
    Reversal,
    /// An overdraft fee of this amount (`fee:`), at the currency's scale.
    Fee(Decimal),
    /// Nothing: within the grace, or a zero fee.
    Nothing,
}

impl Applied {
    /// The compensation the settled fold gives a debit of `kind` that takes a balance at or
    /// above the floor below it, overdrawing it by `overdrawn` (floor − balance after the
    /// debit, at most the debit's amount). The fold's own rule (`replica/settle.rs`), stated
    /// for one debit so that tools can show what a policy does (`walletd policy check`);
    /// `core/tests/fold.rs` checks the two agree. `None` on arithmetic overflow.
    pub fn first_overdraft(&self, kind: Kind, overdrawn: Decimal) -> Option<Overdraft> {
        if self.action == Action::Reverse && self.reversible.contains(&kind) {
            return Some(Overdraft::Reversal);
        }
        if overdrawn <= self.fee.grace {
            return Some(Overdraft::Nothing);
        }
        let fee = self.fee_for(overdrawn)?;
        Some(if fee > Decimal::ZERO {
            Overdraft::Fee(fee)
        } else {
            Overdraft::Nothing
        })
    }
}

/// An overdraft policy: rules plus the account-prefix tiers they refer to.
///
/// Encoded (postcard, hashed, replicated) as `(rules, tiers)` when every rule is optimistic:
/// the bytes of every policy written before modes existed. Otherwise as `([], (rules, tiers,
/// modes))`: an empty rule list never validates, so it marks the extended form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Rules, default first, then in file order.
    pub rules: Vec<Rule>,
    /// Tier name → account id prefixes, first matching tier (by name order) wins.
    pub tiers: BTreeMap<String, Vec<String>>,
    /// Prefix → position of the first tier (by name) that lists it, built on first use:
    /// finding an account's tier costs one lookup per prefix length of its id, not a scan
    /// of every prefix of every tier. Derived from `tiers`; not serialized, not compared.
    lookup: TierLookup,
}

impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Policy", 2)?;
        if self.rules.iter().all(|r| r.mode == Mode::Optimistic) {
            st.serialize_field("rules", &self.rules)?;
            st.serialize_field("tiers", &self.tiers)?;
        } else {
            let modes: Vec<&Mode> = self.rules.iter().map(|r| &r.mode).collect();
            st.serialize_field("rules", &[] as &[Rule])?;
            st.serialize_field("tiers", &(&self.rules, &self.tiers, modes))?;
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
        struct V;
        type Extended = (Vec<Rule>, BTreeMap<String, Vec<String>>, Vec<Mode>);
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Policy;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a policy")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Policy, A::Error> {
                use serde::de::Error;
                let rules: Vec<Rule> = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                if !rules.is_empty() {
                    let tiers = a
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                    return Ok(Policy::new(rules, tiers));
                }
                let (mut rules, tiers, modes): Extended = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if modes.len() != rules.len() {
                    return Err(A::Error::custom("a policy needs one mode per rule"));
                }
                // One encoding per policy: the extended form only for a policy with a rule
                // not optimistic (else it would re-encode in the short form, other bytes,
                // and a policy with no rule would re-encode as the marker itself).
                if modes.iter().all(|m| *m == Mode::Optimistic) {
                    return Err(A::Error::custom(
                        "the extended policy form is only for a policy with a non-optimistic mode",
                    ));
                }
                for (r, m) in rules.iter_mut().zip(modes) {
                    r.mode = m;
                }
                Ok(Policy::new(rules, tiers))
            }
        }
        d.deserialize_struct("Policy", &["rules", "tiers"], V)
    }
}

/// See [`Policy`]'s `lookup`.
#[derive(Debug, Clone, Default)]
struct TierLookup(std::sync::OnceLock<BTreeMap<Box<str>, usize>>);

impl PartialEq for TierLookup {
    fn eq(&self, _: &Self) -> bool {
        true // derived data: two policies with the same tiers have the same lookup
    }
}
impl Eq for TierLookup {}

/// A stable digest of a policy's content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PolicyHash(pub [u8; 32]);

impl fmt::Display for PolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
impl fmt::Debug for PolicyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Policy {
    /// A policy that charges nothing and reverses nothing, with a zero floor.
    pub fn zero() -> Policy {
        Policy {
            rules: vec![Rule {
                tier: None,
                currency: None,
                action: Action::Fee,
                overdraft_line: Decimal::ZERO,
                reversible: vec![Kind::Purchase],
                fee: Fee {
                    flat: Decimal::ZERO,
                    percent: Decimal::ZERO,
                    minimum: Decimal::ZERO,
                    cap: None,
                    grace: Decimal::ZERO,
                    per: FeePer::Debit,
                },
                mode: Mode::Optimistic,
            }],
            tiers: BTreeMap::new(),
            lookup: TierLookup::default(),
        }
    }

    /// A policy from its parts (checked with [`Policy::validate`] by the caller).
    pub fn new(rules: Vec<Rule>, tiers: BTreeMap<String, Vec<String>>) -> Policy {
        Policy {
            rules,
            tiers,
            lookup: TierLookup::default(),
        }
    }

    /// Checks internal consistency (also run on policies received from peers).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let Some(first) = self.rules.first() else {
            return Err(invalid("default", "missing"));
        };
        if first.tier.is_some() || first.currency.is_some() {
            return Err(invalid("default", "must apply to every tier and currency"));
        }
        // Limits first, so a policy from a peer (or a file) costs bounded work to check.
        if self.rules.len() > POLICY_RULES_MAX {
            return Err(invalid(
                "rule",
                format!("{} rules; at most {POLICY_RULES_MAX}", self.rules.len()),
            ));
        }
        if self.tiers.len() > POLICY_TIERS_MAX {
            return Err(invalid(
                "tiers",
                format!("{} tiers; at most {POLICY_TIERS_MAX}", self.tiers.len()),
            ));
        }
        let prefixes = self
            .tiers
            .values()
            .fold(0usize, |n, ps| n.saturating_add(ps.len()));
        if prefixes > POLICY_PREFIXES_MAX {
            return Err(invalid(
                "tiers",
                format!("{prefixes} account id prefixes; at most {POLICY_PREFIXES_MAX}"),
            ));
        }
        for (name, prefixes) in &self.tiers {
            if name.is_empty() || name.len() > 64 {
                return Err(invalid(
                    format!("tiers.{name}"),
                    "name must be 1 to 64 chars",
                ));
            }
            if prefixes.is_empty() || prefixes.iter().any(|p| p.is_empty() || p.len() > 64) {
                return Err(invalid(
                    format!("tiers.{name}"),
                    "needs one or more non-empty account id prefixes",
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let path = if i == 0 {
                "default".to_string()
            } else {
                format!("rule[{}]", i - 1)
            };
            if let Some(t) = &r.tier {
                if !self.tiers.contains_key(t) {
                    return Err(invalid(
                        format!("{path}.tier"),
                        format!("tier {t:?} is not defined in [tiers]"),
                    ));
                }
            }
            if i > 0 && r.tier.is_none() && r.currency.is_none() {
                return Err(invalid(path, "a rule needs a tier, a currency or both"));
            }
            if !seen.insert((r.tier.as_deref(), r.currency)) {
                return Err(invalid(path, "another rule has the same tier and currency"));
            }
            let limit = Decimal::from(crate::money::AMOUNT_MAX_UNITS);
            for (f, v) in [
                ("overdraft_line", Some(r.overdraft_line)),
                ("fee.flat", Some(r.fee.flat)),
                ("fee.percent", Some(r.fee.percent)),
                ("fee.minimum", Some(r.fee.minimum)),
                ("fee.cap", r.fee.cap),
                ("fee.grace", Some(r.fee.grace)),
            ] {
                if let Some(v) = v {
                    if v < Decimal::ZERO {
                        return Err(invalid(format!("{path}.{f}"), "must not be negative"));
                    }
                    if v > limit {
                        return Err(invalid(format!("{path}.{f}"), "is too large"));
                    }
                    let max = if f == "fee.percent" {
                        POLICY_PERCENT_SCALE_MAX
                    } else {
                        POLICY_AMOUNT_SCALE_MAX
                    };
                    if v.normalize().scale() > max {
                        return Err(invalid(
                            format!("{path}.{f}"),
                            format!("{v} has more than {max} decimal places"),
                        ));
                    }
                }
            }
            if let Some(k) = r.reversible.iter().find(|k| !k.is_debit()) {
                return Err(invalid(
                    format!("{path}.reversible"),
                    format!("{:?} is a credit; only debits can be reversed", k.as_str()),
                ));
            }
            if let Some(c) = r.currency {
                if !c.is_known() {
                    return Err(invalid(format!("{path}.currency"), "unknown currency"));
                }
                let max = c.minor_units();
                for (f, v) in [
                    ("overdraft_line", Some(r.overdraft_line)),
                    ("fee.flat", Some(r.fee.flat)),
                    ("fee.minimum", Some(r.fee.minimum)),
                    ("fee.cap", r.fee.cap),
                    ("fee.grace", Some(r.fee.grace)),
                ] {
                    if let Some(v) = v {
                        if v.normalize().scale() > max {
                            return Err(invalid(
                                format!("{path}.{f}"),
                                format!("{v} has more decimal places than {c} allows ({max})"),
                            ));
                        }
                    }
                }
            }
            if let Some(cap) = r.fee.cap {
                if cap < r.fee.minimum {
                    return Err(invalid(
                        format!("{path}.fee.cap"),
                        "must be at least fee.minimum",
                    ));
                }
            }
            match &r.mode {
                Mode::Optimistic => {}
                Mode::Home { home } => {
                    if !home.is_valid() {
                        return Err(invalid(format!("{path}.home"), "not a valid region name"));
                    }
                }
                Mode::Escrow {
                    risk_limit,
                    rights_timeout_ms,
                    ..
                } => {
                    if *risk_limit < Decimal::ZERO || *risk_limit > limit {
                        return Err(invalid(
                            format!("{path}.risk_limit"),
                            "must be between 0 and the amount limit",
                        ));
                    }
                    let max = r
                        .currency
                        .map_or(POLICY_AMOUNT_SCALE_MAX, |c| c.minor_units());
                    if risk_limit.normalize().scale() > max {
                        return Err(invalid(
                            format!("{path}.risk_limit"),
                            format!("{risk_limit} has more than {max} decimal places"),
                        ));
                    }
                    if *rights_timeout_ms == 0 || *rights_timeout_ms > RIGHTS_TIMEOUT_MS_MAX {
                        return Err(invalid(
                            format!("{path}.rights_timeout_ms"),
                            format!("must be 1 to {RIGHTS_TIMEOUT_MS_MAX} ms"),
                        ));
                    }
                }
            }
            if r.fee.percent > Decimal::ONE_HUNDRED {
                return Err(invalid(
                    format!("{path}.fee.percent"),
                    "must be at most 100",
                ));
            }
        }
        Ok(())
    }

    /// A stable digest: SHA-256 of the canonical postcard encoding.
    pub fn hash(&self) -> PolicyHash {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        PolicyHash(Sha256::digest(&bytes).into())
    }

    /// The position (by name) of the tier of an account, as [`Policy::tier_of`] finds it: with
    /// the currency, all that [`Policy::applied`] depends on, so a cache key for it.
    pub(crate) fn tier_index(&self, account: &str) -> Option<usize> {
        let lookup = self.lookup.0.get_or_init(|| {
            let mut m: BTreeMap<Box<str>, usize> = BTreeMap::new();
            for (i, (_, ps)) in self.tiers.iter().enumerate() {
                for p in ps {
                    // Tiers are visited by name: the first to list a prefix keeps it.
                    m.entry(p.as_str().into()).or_insert(i);
                }
            }
            m
        });
        if lookup.is_empty() {
            return None;
        }
        // One lookup per prefix of the id (ids are at most 64 bytes), the lowest tier wins.
        account
            .char_indices()
            .map(|(i, c)| i + c.len_utf8())
            .filter_map(|end| account.get(..end).and_then(|p| lookup.get(p)))
            .min()
            .copied()
    }

    /// The tier of an account: the first tier (by name) one of whose prefixes it starts with.
    pub fn tier_of(&self, account: &str) -> Option<&str> {
        let i = self.tier_index(account)?;
        self.tiers.keys().nth(i).map(String::as_str)
    }

    /// The rule for an account and currency, made concrete for that currency.
    pub fn applied(&self, account: &str, currency: Currency) -> Applied {
        let tier = self.tier_of(account);
        let score = |r: &Rule| -> Option<u8> {
            let t = match (&r.tier, tier) {
                (None, _) => 0,
                (Some(a), Some(b)) if a == b => 2,
                _ => return None,
            };
            let c = match r.currency {
                None => 0,
                Some(c) if c == currency => 1,
                _ => return None,
            };
            Some(t + c)
        };
        // The default (index 0) always matches with score 0; ties cannot happen between
        // distinct rules because (tier, currency) pairs are unique.
        let zero;
        let mut best = match self.rules.first() {
            Some(r) => r,
            None => {
                // Only a policy that skipped `validate` has no default; treat it as zero.
                zero = Policy::zero();
                &zero.rules[0]
            }
        };
        let mut best_score = 0;
        for r in self.rules.iter().skip(1) {
            if let Some(s) = score(r) {
                if s > best_score {
                    best = r;
                    best_score = s;
                }
            }
        }
        let round = |d: Decimal| currency.round(d);
        Applied {
            action: best.action,
            floor: -round(best.overdraft_line),
            reversible: best.reversible.clone(),
            fee: Fee {
                // Exact: added to the percent part before the one rounding (SPEC §6).
                flat: best.fee.flat,
                percent: best.fee.percent,
                minimum: round(best.fee.minimum),
                cap: best.fee.cap.map(round),
                grace: round(best.fee.grace),
                per: best.fee.per,
            },
            currency,
            mode: match &best.mode {
                Mode::Escrow {
                    fallback,
                    risk_limit,
                    rights_timeout_ms,
                } => Mode::Escrow {
                    fallback: *fallback,
                    risk_limit: round(*risk_limit),
                    rights_timeout_ms: *rights_timeout_ms,
                },
                m => m.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests;
