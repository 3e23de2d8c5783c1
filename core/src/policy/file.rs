//! The policy file (TOML): its representation, the parser, and how a section's fields are
//! resolved against `[default]`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{
    invalid, Action, Fallback, Fee, FeePer, Mode, Policy, PolicyError, Rule, POLICY_RULES_MAX,
    RIGHTS_TIMEOUT_MS_DEFAULT,
};
use crate::id::RegionId;
use crate::kind::Kind;
use crate::money::Currency;

#[derive(Deserialize, Serialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct FeeFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    flat: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    percent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    minimum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per: Option<String>,
}

#[derive(Deserialize, Serialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(skip_serializing_if = "Option::is_none")]
    tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    beyond_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    overdraft_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reversible: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fee: Option<FeeFile>,
    /// SPEC §8: "optimistic", "escrow" or "home".
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    /// Home mode: the home region.
    #[serde(skip_serializing_if = "Option::is_none")]
    home: Option<String>,
    /// Escrow mode: "refuse" or "optimistic" (the hybrid).
    #[serde(skip_serializing_if = "Option::is_none")]
    fallback: Option<String>,
    /// Escrow mode with the optimistic fallback: the most an account may be overdrawn.
    #[serde(skip_serializing_if = "Option::is_none")]
    risk_limit: Option<String>,
    /// Escrow mode: how long to wait for rights, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    rights_timeout_ms: Option<u32>,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: RuleFile,
    #[serde(default)]
    rule: Vec<RuleFile>,
    #[serde(default)]
    tiers: BTreeMap<String, Vec<String>>,
}

/// A policy in the shape of the policy file (`[default]`, `[[rule]]`, `[tiers]`; every
/// amount a decimal string), before its sections are resolved against `[default]`.
/// Deserialize it from any self-describing format (TOML, or JSON with the same fields) and
/// resolve it with [`Policy::from_document`]; [`Policy::to_document`] gives it back for a
/// resolved policy, every field of every rule explicit.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(transparent)]
pub struct PolicyDocument(PolicyFile);

fn action_name(a: Action) -> String {
    match a {
        Action::Fee => "fee".into(),
        Action::Reverse => "reverse".into(),
    }
}

/// A resolved rule as a file section with every field explicit: read back with
/// [`resolve`], it gives the same rule (the amounts are normalized, as `dec` makes them).
/// The mode fields are written when the rule or the default (`default_mode`) is not
/// optimistic, so a policy without modes gives the file it always gave.
fn rule_file(r: &Rule, default_mode: &Mode) -> RuleFile {
    let line = r.overdraft_line > Decimal::ZERO;
    let explicit = r.mode != Mode::Optimistic || *default_mode != Mode::Optimistic;
    let (home, fallback, risk_limit, rights_timeout_ms) = match &r.mode {
        Mode::Optimistic => (None, None, None, None),
        Mode::Home { home } => (Some(home.as_str().to_string()), None, None, None),
        Mode::Escrow {
            fallback,
            risk_limit,
            rights_timeout_ms,
        } => (
            None,
            Some(
                match fallback {
                    Fallback::Refuse => "refuse",
                    Fallback::Optimistic => "optimistic",
                }
                .to_string(),
            ),
            Some(risk_limit.normalize().to_string()),
            Some(*rights_timeout_ms),
        ),
    };
    RuleFile {
        mode: explicit.then(|| r.mode.name().to_string()),
        home,
        fallback,
        risk_limit,
        rights_timeout_ms,
        tier: r.tier.clone(),
        currency: r.currency.map(|c| c.as_str().to_string()),
        action: Some(action_name(r.action)),
        // With a line the resolved action is what happens beyond it: say both.
        beyond_line: line.then(|| action_name(r.action)),
        overdraft_line: Some(r.overdraft_line.normalize().to_string()),
        reversible: Some(
            r.reversible
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
        ),
        fee: Some(FeeFile {
            flat: Some(r.fee.flat.normalize().to_string()),
            percent: Some(r.fee.percent.normalize().to_string()),
            minimum: Some(r.fee.minimum.normalize().to_string()),
            cap: r.fee.cap.map(|c| c.normalize().to_string()),
            grace: Some(r.fee.grace.normalize().to_string()),
            per: Some(
                match r.fee.per {
                    FeePer::Debit => "debit",
                    FeePer::Episode => "episode",
                }
                .into(),
            ),
        }),
    }
}

fn dec(field: &str, v: &str) -> Result<Decimal, PolicyError> {
    let d = Decimal::from_str_exact(v.trim())
        .map_err(|_| invalid(field, format!("{v:?} is not a decimal number")))?;
    if d < Decimal::ZERO {
        return Err(invalid(field, "must not be negative"));
    }
    if d > Decimal::from(crate::money::AMOUNT_MAX_UNITS) {
        return Err(invalid(field, "is too large"));
    }
    Ok(d.normalize())
}

impl Policy {
    /// Parses a policy file.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyDocument =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string().trim().into()))?;
        Policy::from_document(file)
    }

    /// The policy as a file document, every field of every rule explicit (a rule's `cap` is
    /// left out when it has none). `Policy::from_document(p.to_document())` is `p` for every
    /// policy the file format can express (a rule without a cap under a `[default]` with
    /// one cannot be written).
    pub fn to_document(&self) -> PolicyDocument {
        let default_mode = self
            .rules
            .first()
            .map(|r| r.mode.clone())
            .unwrap_or_default();
        let mut rules = self.rules.iter().map(|r| rule_file(r, &default_mode));
        let default = rules.next().unwrap_or_default();
        PolicyDocument(PolicyFile {
            default,
            rule: rules.collect(),
            tiers: self.tiers.clone(),
        })
    }

    /// The policy as a TOML policy file ([`Policy::to_document`]).
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.to_document()).unwrap_or_default()
    }

    /// Resolves a policy document (a parsed policy file): each `[[rule]]` inherits what it
    /// leaves out from `[default]`; every field is checked, and an error names it.
    pub fn from_document(doc: PolicyDocument) -> Result<Policy, PolicyError> {
        let PolicyDocument(file) = doc;
        if file.rule.len() >= POLICY_RULES_MAX {
            return Err(invalid(
                "rule",
                format!("at most {} rules besides [default]", POLICY_RULES_MAX - 1),
            ));
        }
        let base = Policy::zero().rules.remove(0);
        let default = resolve("default", &file.default, &base, &RuleFile::default())?;
        if default.tier.is_some() || default.currency.is_some() {
            return Err(invalid(
                "default",
                "the default rule applies to every tier and currency; move tier/currency to a [[rule]]",
            ));
        }
        let mut rules = vec![default.clone()];
        for (i, r) in file.rule.iter().enumerate() {
            let path = format!("rule[{i}]");
            let rule = resolve(&path, r, &default, &file.default)?;
            if rule.tier.is_none() && rule.currency.is_none() {
                return Err(invalid(path, "a rule needs a tier, a currency or both"));
            }
            if rules
                .iter()
                .any(|x| x.tier == rule.tier && x.currency == rule.currency)
            {
                return Err(invalid(path, "another rule has the same tier and currency"));
            }
            rules.push(rule);
        }
        let policy = Policy::new(rules, file.tiers);
        policy.validate()?;
        Ok(policy)
    }
}

fn parse_action(field: String, v: &str) -> Result<Action, PolicyError> {
    match v {
        "fee" => Ok(Action::Fee),
        "reverse" => Ok(Action::Reverse),
        o => Err(invalid(
            field,
            format!("{o:?} is not one of \"fee\", \"reverse\""),
        )),
    }
}

/// A rule from its file section: fields it leaves out come from `base` (the resolved default)
/// and, for `action` and `beyond_line`, from the default's file section `defaults`.
///
/// The resolved `action` is what happens when a debit takes the settled balance below the
/// floor. With no overdraft line that is the file's `action`; with a line it is the file's
/// `beyond_line` (SPEC §6: `reverse` unless the file says `fee`). A section that asks for
/// `action = "fee"` with a line but says nothing of `beyond_line` is refused: it is ambiguous.
fn resolve(
    path: &str,
    r: &RuleFile,
    base: &Rule,
    defaults: &RuleFile,
) -> Result<Rule, PolicyError> {
    let currency = match &r.currency {
        Some(c) => Some(
            Currency::parse(c).map_err(|e| invalid(format!("{path}.currency"), e.to_string()))?,
        ),
        None => None,
    };
    let overdraft_line = match &r.overdraft_line {
        Some(v) => dec(&format!("{path}.overdraft_line"), v)?,
        None => base.overdraft_line,
    };
    let action_text = r.action.as_deref().or(defaults.action.as_deref());
    let beyond_text = r.beyond_line.as_deref().or(defaults.beyond_line.as_deref());
    let at_floor = match action_text {
        Some(v) => parse_action(format!("{path}.action"), v)?,
        None => Action::Fee,
    };
    let beyond = match beyond_text {
        Some(v) => parse_action(format!("{path}.beyond_line"), v)?,
        None => Action::Reverse,
    };
    let action = if overdraft_line > Decimal::ZERO {
        if at_floor == Action::Fee && action_text.is_some() && beyond_text.is_none() {
            return Err(invalid(
                format!("{path}.beyond_line"),
                "an overdraft_line with action = \"fee\": say what happens to a debit beyond \
                 the line, beyond_line = \"reverse\" (the default) or \"fee\"",
            ));
        }
        beyond
    } else {
        at_floor
    };
    let reversible = match &r.reversible {
        None => base.reversible.clone(),
        Some(list) => {
            let mut out = Vec::new();
            for k in list {
                let kind = Kind::parse(k).ok_or_else(|| {
                    invalid(
                        format!("{path}.reversible"),
                        format!("{k:?} is not a transaction type"),
                    )
                })?;
                if !kind.is_debit() {
                    return Err(invalid(
                        format!("{path}.reversible"),
                        format!("{k:?} is a credit; only debits can be reversed"),
                    ));
                }
                if !out.contains(&kind) {
                    out.push(kind);
                }
            }
            out.sort();
            out
        }
    };
    let empty = FeeFile::default();
    let f = r.fee.as_ref().unwrap_or(&empty);
    let fp = |n: &str| format!("{path}.fee.{n}");
    let fee = Fee {
        flat: f
            .flat
            .as_deref()
            .map(|v| dec(&fp("flat"), v))
            .transpose()?
            .unwrap_or(base.fee.flat),
        percent: f
            .percent
            .as_deref()
            .map(|v| dec(&fp("percent"), v))
            .transpose()?
            .unwrap_or(base.fee.percent),
        minimum: f
            .minimum
            .as_deref()
            .map(|v| dec(&fp("minimum"), v))
            .transpose()?
            .unwrap_or(base.fee.minimum),
        cap: match f.cap.as_deref() {
            Some(v) => Some(dec(&fp("cap"), v)?),
            None => base.fee.cap,
        },
        grace: f
            .grace
            .as_deref()
            .map(|v| dec(&fp("grace"), v))
            .transpose()?
            .unwrap_or(base.fee.grace),
        per: match f.per.as_deref() {
            None => base.fee.per,
            Some("debit") => FeePer::Debit,
            Some("episode") => FeePer::Episode,
            Some(o) => {
                return Err(invalid(
                    fp("per"),
                    format!("{o:?} is not one of \"debit\", \"episode\""),
                ))
            }
        },
    };
    let mode = resolve_mode(path, r, &base.mode)?;
    Ok(Rule {
        tier: r.tier.clone(),
        currency,
        action,
        overdraft_line,
        reversible,
        fee,
        mode,
    })
}

/// The mode of a section: `mode` and its parameters, each left out taken from `base` (the
/// resolved default) when that has the same mode. A parameter of another mode is refused.
fn resolve_mode(path: &str, r: &RuleFile, base: &Mode) -> Result<Mode, PolicyError> {
    let name = r.mode.as_deref().unwrap_or(base.name());
    let stray = |field: &str, mode: &str| {
        Err(invalid(
            format!("{path}.{field}"),
            format!("only a rule with mode = \"{mode}\" takes it (this one is {name:?})"),
        ))
    };
    match name {
        "optimistic" => {
            if r.home.is_some() {
                return stray("home", "home");
            }
            if r.fallback.is_some() || r.risk_limit.is_some() || r.rights_timeout_ms.is_some() {
                return stray("fallback", "escrow");
            }
            Ok(Mode::Optimistic)
        }
        "home" => {
            if r.fallback.is_some() || r.risk_limit.is_some() || r.rights_timeout_ms.is_some() {
                return stray("fallback", "escrow");
            }
            let home = match (&r.home, base) {
                (Some(h), _) => {
                    RegionId::new(h).map_err(|e| invalid(format!("{path}.home"), e.to_string()))?
                }
                (None, Mode::Home { home }) => *home,
                (None, _) => {
                    return Err(invalid(
                        format!("{path}.home"),
                        "mode = \"home\" needs home = \"<region>\"",
                    ))
                }
            };
            Ok(Mode::Home { home })
        }
        "escrow" => {
            if r.home.is_some() {
                return stray("home", "home");
            }
            let (bf, bl, bt) = match base {
                Mode::Escrow {
                    fallback,
                    risk_limit,
                    rights_timeout_ms,
                } => (*fallback, *risk_limit, *rights_timeout_ms),
                _ => (Fallback::Refuse, Decimal::ZERO, RIGHTS_TIMEOUT_MS_DEFAULT),
            };
            let fallback = match r.fallback.as_deref() {
                None => bf,
                Some("refuse") => Fallback::Refuse,
                Some("optimistic") => Fallback::Optimistic,
                Some(o) => {
                    return Err(invalid(
                        format!("{path}.fallback"),
                        format!("{o:?} is not one of \"refuse\", \"optimistic\""),
                    ))
                }
            };
            let risk_limit = match &r.risk_limit {
                Some(v) => dec(&format!("{path}.risk_limit"), v)?,
                None if fallback == Fallback::Optimistic => bl,
                None => Decimal::ZERO,
            };
            if fallback == Fallback::Refuse && risk_limit > Decimal::ZERO {
                return Err(invalid(
                    format!("{path}.risk_limit"),
                    "a risk limit needs fallback = \"optimistic\"",
                ));
            }
            Ok(Mode::Escrow {
                fallback,
                risk_limit,
                rights_timeout_ms: r.rights_timeout_ms.unwrap_or(bt),
            })
        }
        o => Err(invalid(
            format!("{path}.mode"),
            format!("{o:?} is not one of \"optimistic\", \"escrow\", \"home\""),
        )),
    }
}
