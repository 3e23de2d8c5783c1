//! The JSON views of the API: events, compensations, balances, history pages, the feed, the
//! region status, evidence and errors, and the opaque cursors. Pure functions of the replica's
//! read side (and what the host adds to the status); the actor wraps them in replies.
//!
//! Amounts are strings with the currency's minor units (`Currency::render`); HLCs are strings
//! (`<ms>.<logical>`), so no JSON number ever loses precision.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde_json::{json, Map, Value};
use wallet_core::{
    AccountId, Balance, Compensation, Entry, EntryKey, Event, EventId, Evidence, Hlc, Policy,
    PolicyHash, RegionId, Replica, Status,
};

/// Writes `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `{"error":{"code":..,"message":..}}`.
pub fn error_body(code: &str, message: &str) -> String {
    let mut s = String::with_capacity(48 + message.len());
    s.push_str("{\"error\":{\"code\":");
    push_json_str(&mut s, code);
    s.push_str(",\"message\":");
    push_json_str(&mut s, message);
    s.push_str("}}");
    s
}

/// The `201` body of a new (or replayed) transaction.
pub fn created_body(event: &Event, bal: Balance) -> String {
    let mut s = String::with_capacity(256);
    let Some(tx) = event.tx() else {
        return "{}".into();
    };
    let c = tx.currency;
    s.push_str("{\"id\":\"");
    let _ = write!(s, "{}", event.id);
    s.push_str("\",\"account\":");
    push_json_str(&mut s, tx.account.as_str());
    let _ = write!(
        s,
        ",\"type\":\"{}\",\"amount\":\"{}\",\"currency\":\"{}\",\"hlc\":\"{}\"",
        tx.kind.as_str(),
        c.render(tx.amount.value()),
        c,
        event.hlc
    );
    if let Some(r) = &tx.reference {
        s.push_str(",\"reference\":");
        push_json_str(&mut s, r);
    }
    let _ = write!(
        s,
        ",\"balance\":{{\"provisional\":\"{}\",\"settled\":\"{}\"}}}}",
        c.render(bal.provisional),
        c.render(bal.settled)
    );
    s
}

/// Status name.
pub fn status_str(s: Status) -> &'static str {
    match s {
        Status::Provisional => "provisional",
        Status::Settled => "settled",
        Status::Reversed => "reversed",
    }
}

/// The fields of an event that do not depend on this region's view of it (id, account,
/// type, amount, currency, reference, idempotency key, HLC).
fn event_fields(event: &Event, with_account: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(event.id.to_string()));
    match &event.body {
        wallet_core::Body::Tx(tx) => {
            if with_account {
                m.insert("account".into(), Value::String(tx.account.to_string()));
            }
            m.insert("type".into(), Value::String(tx.kind.as_str().into()));
            m.insert(
                "amount".into(),
                Value::String(tx.currency.render(tx.amount.value())),
            );
            m.insert("currency".into(), Value::String(tx.currency.to_string()));
            if let Some(r) = &tx.reference {
                m.insert("reference".into(), Value::String(r.to_string()));
            }
            if let Some(k) = &tx.idempotency_key {
                m.insert("idempotency_key".into(), Value::String(k.to_string()));
            }
        }
        wallet_core::Body::Policy(_) => {
            m.insert("type".into(), Value::String("policy".into()));
        }
        wallet_core::Body::Membership(_) => {
            m.insert("type".into(), Value::String("membership".into()));
        }
    }
    m.insert("hlc".into(), Value::String(event.hlc.to_string()));
    m
}

/// A client event in a list or by id.
pub fn event_json(
    event: &Event,
    status: Option<(Status, Option<&Compensation>)>,
    with_account: bool,
) -> Value {
    let mut m = event_fields(event, with_account);
    let (st, comp) = status.unwrap_or((Status::Provisional, None));
    m.insert("settled".into(), Value::Bool(st != Status::Provisional));
    m.insert("status".into(), Value::String(status_str(st).into()));
    if let Some(c) = comp {
        if st == Status::Reversed {
            m.insert("reversed_by".into(), Value::String(c.id()));
        } else {
            m.insert("compensation".into(), Value::String(c.id()));
        }
    }
    Value::Object(m)
}

/// An event as an item of evidence: its fields as clients see them elsewhere, plus the
/// origin's signature (hex); no status (the item may never have been applied here).
fn signed_event_json(event: &Event) -> Value {
    let mut m = event_fields(event, true);
    m.insert("signature".into(), Value::String(hex::encode(&event.sig)));
    Value::Object(m)
}

/// One piece of evidence that a member broke the protocol (`GET /v1/admin/evidence`).
pub fn evidence_json(ev: &Evidence) -> Value {
    let mut m = Map::new();
    let kind = match ev {
        Evidence::Conflicting(..) => "conflicting_events",
        Evidence::BrokenPromise { .. } => "broken_promise",
    };
    m.insert("kind".into(), Value::String(kind.into()));
    m.insert("origin".into(), Value::String(ev.origin().to_string()));
    m.insert("id".into(), Value::String(ev.id().to_string()));
    match ev {
        Evidence::Conflicting(a, b) => {
            m.insert(
                "events".into(),
                Value::Array(vec![signed_event_json(a), signed_event_json(b)]),
            );
        }
        Evidence::BrokenPromise { heartbeat, event } => {
            m.insert(
                "heartbeat".into(),
                json!({
                    "origin": heartbeat.hb.origin.to_string(),
                    "hlc": heartbeat.hb.hlc.to_string(),
                    "seq": heartbeat.hb.seq,
                    "signature": hex::encode(&heartbeat.sig),
                }),
            );
            m.insert("event".into(), signed_event_json(event));
        }
    }
    Value::Object(m)
}

/// A compensation (or conflict report) in a list, by id, or in the feed.
pub fn comp_json(c: &Compensation, with_account: bool) -> Value {
    let mut v = json!({
        "id": c.id(),
        "type": c.kind.as_str(),
        "amount": c.amount_str(),
        "delta": c.currency.render(c.delta),
        "currency": c.currency.to_string(),
        "hlc": c.hlc.to_string(),
        "settled": true,
        "status": "settled",
        "cause": c.cause.to_string(),
        "policy_version": c.policy_version,
        "position": c.position,
    });
    if let Value::Object(m) = &mut v {
        if with_account {
            m.insert("account".into(), Value::String(c.account.to_string()));
        }
        if let Some(r) = c.related {
            m.insert("related".into(), Value::String(r.to_string()));
        }
    }
    v
}

/// `GET /v1/accounts/{id}/balances`.
pub fn balances_body(r: &Replica, account: &AccountId) -> String {
    let list: Vec<Value> = r
        .balances(account)
        .into_iter()
        .map(|(c, b)| {
            json!({
                "currency": c.to_string(),
                "provisional": c.render(b.provisional),
                "settled": c.render(b.settled),
            })
        })
        .collect();
    json!({"account": account.to_string(), "balances": list}).to_string()
}

/// An entry of an account's history: an event with its status, or a compensation.
pub fn entry_json(r: &Replica, e: &Entry<'_>, with_account: bool) -> Value {
    match e {
        Entry::Event { event, .. } => event_json(event, r.status(event.id), with_account),
        Entry::Compensation(c) => comp_json(c, with_account),
    }
}

/// `GET /v1/accounts/{id}/transactions`: at most `limit` entries after the cursor, and the
/// cursor of the next page (`null` on the last).
pub fn transactions_body(
    r: &Replica,
    account: &AccountId,
    after: Option<EntryKey>,
    limit: usize,
) -> String {
    let mut page = r.entries(account, after, limit.saturating_add(1));
    let more = page.len() > limit;
    page.truncate(limit);
    let next = if more {
        page.last().map(|(k, _)| Value::String(entry_cursor(k)))
    } else {
        None
    };
    let list: Vec<Value> = page.iter().map(|(_, e)| entry_json(r, e, false)).collect();
    json!({
        "account": account.to_string(),
        "transactions": list,
        "next": next.unwrap_or(Value::Null),
    })
    .to_string()
}

/// `GET /v1/compensations`: at most `limit` feed items from position `after`, and the cursor
/// of the next position (always a cursor: the feed only grows).
pub fn compensations_body(r: &Replica, after: u64, limit: usize) -> String {
    let list = r.feed(after, limit);
    let next = after.saturating_add(list.len() as u64);
    let items: Vec<Value> = list.iter().map(|c| comp_json(c, true)).collect();
    json!({"compensations": items, "next": feed_cursor(next)}).to_string()
}

/// `GET /v1/status`: the replica's view, with what the host knows (cluster id, members
/// connected over the transport, storage failure).
pub fn status_body(
    r: &Replica,
    cluster: &str,
    connected: &BTreeSet<RegionId>,
    storage_failed: bool,
    policy_file_ignored: Option<(PolicyHash, PolicyHash)>,
) -> String {
    let me = r.region();
    let members: Vec<Value> = r
        .members()
        .into_iter()
        .map(|m| {
            json!({
                "region": m.region.to_string(),
                "self": m.region == me,
                "connected": m.region == me || connected.contains(&m.region),
                "held": m.held,
                "watermark_contribution": m.covered.to_string(),
                "heard": m.heard,
                "policy_matches": m.policy_matches,
                "equivocated": m.equivocated,
                "pending": m.pending,
            })
        })
        .collect();
    let vv: BTreeMap<String, u64> = r
        .members()
        .into_iter()
        .map(|m| (m.region.to_string(), r.version_vector().get(&m.region)))
        .collect();
    json!({
        "region": me.to_string(),
        "cluster": cluster,
        "members": members,
        "version_vector": vv,
        "watermark": r.watermark().to_string(),
        "clock": r.clock().to_string(),
        "settlement_lag_ms": r.settlement_lag_ms(),
        "settlement_blocked": r.settlement_blocked(),
        "policy_hash": hex::encode(r.policy_hash().0),
        "policy_version": r.current_policy().0,
        "restoring": r.is_restoring(),
        "events": r.event_count(),
        "compensations": r.feed_len(),
        "storage_failed": storage_failed,
        "policy_file_ignored": ignored_json(policy_file_ignored),
    })
    .to_string()
}

/// `{file_hash, recorded_hash}` when the policy file was ignored for the recorded seed.
fn ignored_json(ignored: Option<(PolicyHash, PolicyHash)>) -> Value {
    match ignored {
        Some((file, recorded)) => json!({
            "file_hash": hex::encode(file.0),
            "recorded_hash": hex::encode(recorded.0),
        }),
        None => Value::Null,
    }
}

/// A policy as JSON: the policy file's fields (`default`, `rule`, `tiers`), every field of
/// every rule explicit; a body `POST /v1/admin/policy` accepts back.
pub fn policy_json(p: &Policy) -> Value {
    serde_json::to_value(p.to_document()).unwrap_or(Value::Null)
}

/// `GET /v1/policy`: the version in force and the history (version 1 = the seed).
pub fn policy_body(r: &Replica, policy_file_ignored: Option<(PolicyHash, PolicyHash)>) -> String {
    let history = r.policy_history();
    let list: Vec<Value> = history
        .iter()
        .map(|v| {
            json!({
                "version": v.version,
                "hash": hex::encode(v.hash.0),
                "hlc": v.hlc.map(|h| h.to_string()),
                "origin": v.event.map(|e| e.origin.to_string()),
                "event": v.event.map(|e| e.to_string()),
            })
        })
        .collect();
    let current = match history.last() {
        Some(v) => json!({
            "version": v.version,
            "hash": hex::encode(v.hash.0),
            "policy": policy_json(v.policy),
        }),
        None => Value::Null,
    };
    json!({
        "version": current["version"],
        "hash": current["hash"],
        "policy": current["policy"],
        "history": list,
        "policy_file_ignored": ignored_json(policy_file_ignored),
    })
    .to_string()
}

/// `POST /v1/admin/policy`: the policy event, once durable here.
pub fn policy_submitted_body(id: EventId, hash: PolicyHash, hlc: Option<Hlc>) -> String {
    json!({
        "id": id.to_string(),
        "origin": id.origin.to_string(),
        "hash": hex::encode(hash.0),
        "hlc": hlc.map(|h| h.to_string()),
        "status": "provisional",
    })
    .to_string()
}

/// `GET /v1/admin/evidence`.
pub fn evidence_body(r: &Replica) -> String {
    let items: Vec<Value> = r.evidence().iter().map(evidence_json).collect();
    json!({
        "evidence": items,
        "settlement_blocked": r.settlement_blocked(),
    })
    .to_string()
}

/// `POST /v1/admin/faults`: the regions now cut off.
pub fn faults_body(isolated: &[String]) -> String {
    json!({ "isolated": isolated }).to_string()
}

/// Account-history cursor: the entry key, opaque (hex of `hlc.origin.seq.sub`).
pub fn entry_cursor(k: &EntryKey) -> String {
    let ((hlc, origin, seq), sub) = k;
    hex::encode(format!("e1.{}.{}.{}.{}", hlc.0, origin, seq, sub))
}

/// Parses an account-history cursor.
pub fn parse_entry_cursor(s: &str) -> Option<EntryKey> {
    let bytes = hex::decode(s).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let mut it = text.split('.');
    if it.next()? != "e1" {
        return None;
    }
    let hlc: u64 = it.next()?.parse().ok()?;
    let origin = RegionId::new(it.next()?).ok()?;
    let seq: u64 = it.next()?.parse().ok()?;
    let sub: u8 = it.next()?.parse().ok()?;
    if it.next().is_some() || sub > 2 {
        return None;
    }
    Some(((Hlc(hlc), origin, seq), sub))
}

/// Feed cursor: a feed position, opaque.
pub fn feed_cursor(position: u64) -> String {
    hex::encode(format!("f1.{position}"))
}

/// Parses a feed cursor.
pub fn parse_feed_cursor(s: &str) -> Option<u64> {
    let bytes = hex::decode(s).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("f1.")?.parse().ok()
}

/// Parses a compensation id `fee:<region>:<seq>` / `rev:..` / `conflict:..` into its prefix and cause.
pub fn parse_comp_id(s: &str) -> Option<(&str, EventId)> {
    let (prefix, rest) = s.split_once(':')?;
    if !matches!(prefix, "fee" | "rev" | "conflict") {
        return None;
    }
    Some((prefix, EventId::parse(rest).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let k = ((Hlc(123456), RegionId::new("eu").unwrap(), 7), 1);
        assert_eq!(parse_entry_cursor(&entry_cursor(&k)), Some(k));
        assert_eq!(parse_feed_cursor(&feed_cursor(42)), Some(42));
        for bad in [
            "",
            "zz",
            "00",
            &hex::encode("e1.1.EU.1.0"),
            &hex::encode("f1.x"),
        ] {
            assert_eq!(parse_entry_cursor(bad), None, "{bad}");
            assert_eq!(parse_feed_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_body_escapes() {
        let b = error_body("invalid_json", "bad \"x\"\n");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"]["message"], "bad \"x\"\n");
    }
}
