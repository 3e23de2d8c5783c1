//! The policy file (TOML): its representation, the parser, and how a section's fields are
//! resolved against `[default]`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Deserialize;

use super::{invalid, Action, Fee, FeePer, Policy, PolicyError, Rule, POLICY_RULES_MAX};
use crate::kind::Kind;
use crate::money::Currency;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FeeFile {
    flat: Option<String>,
    percent: Option<String>,
    minimum: Option<String>,
    cap: Option<String>,
    grace: Option<String>,
    per: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    tier: Option<String>,
    currency: Option<String>,
    action: Option<String>,
    beyond_line: Option<String>,
    overdraft_line: Option<String>,
    reversible: Option<Vec<String>>,
    fee: Option<FeeFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: RuleFile,
    #[serde(default)]
    rule: Vec<RuleFile>,
    #[serde(default)]
    tiers: BTreeMap<String, Vec<String>>,
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
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string().trim().into()))?;
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
    Ok(Rule {
        tier: r.tier.clone(),
        currency,
        action,
        overdraft_line,
        reversible,
        fee,
    })
}
