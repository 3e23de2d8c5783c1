//! The document against the code: the checked-in copy is current, every reference resolves
//! and every schema compiles, amounts are strings with a pattern, and the request schemas
//! accept exactly what the server's parsers accept (on a corpus of bodies).

use std::path::Path;

use axum::http::{header, HeaderMap, HeaderValue};
use serde_json::{json, Value};

use super::*;

#[path = "../../tests/common/openapi.rs"]
mod contract;

fn doc_value() -> Value {
    serde_json::from_str(document_json()).expect("the document is JSON")
}

fn contract() -> contract::Contract {
    contract::Contract::new(doc_value())
}

/// `docs/openapi.json` is the generated document; `UPDATE_OPENAPI=1` rewrites it.
#[test]
fn checked_in_document_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let now = document_json();
    if std::env::var("UPDATE_OPENAPI").as_deref() == Ok("1") {
        std::fs::write(&path, now).expect("write docs/openapi.json");
        return;
    }
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        old == now,
        "docs/openapi.json is not the document the code generates: run \
         `UPDATE_OPENAPI=1 cargo test -p wallet --lib openapi` and commit the file"
    );
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_string());
                    }
                }
                refs(x, out);
            }
        }
        Value::Array(l) => l.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_schema_compiles() {
    let doc = doc_value();
    assert!(doc["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20, "{all:?}");
    for r in &all {
        let p = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(p).is_some(), "unresolved {r}");
    }
    let c = contract();
    let names: Vec<String> = doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
        .keys()
        .cloned()
        .collect();
    for n in &names {
        // Compiling is enough here; Null validates against nothing that matters.
        let r = c.validate_schema(n, &Value::Null);
        if let Err(e) = r {
            assert!(!e.contains("does not compile"), "{n}: {e}");
        }
    }
}

/// Every property that holds money is a string with a decimal pattern, never a number.
#[test]
fn amounts_are_decimal_strings() {
    let doc = doc_value();
    let money = [
        "amount",
        "delta",
        "provisional",
        "overdraft_line",
        "flat",
        "percent",
        "minimum",
        "cap",
        "grace",
    ];
    let mut seen = 0;
    let mut walk = vec![&doc];
    while let Some(v) = walk.pop() {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(props)) = m.get("properties") {
                    for (k, s) in props {
                        if !money.contains(&k.as_str()) {
                            continue;
                        }
                        seen += 1;
                        let text = s.to_string();
                        let by_ref = [
                            "#/components/schemas/Amount\"",
                            "#/components/schemas/SignedAmount\"",
                            "#/components/schemas/PolicyDecimal\"",
                        ]
                        .iter()
                        .any(|r| text.contains(r));
                        let inline = s["type"] == "string" && s["pattern"].is_string();
                        assert!(by_ref || inline, "{k}: {s}");
                    }
                }
                walk.extend(m.values());
            }
            Value::Array(l) => walk.extend(l),
            _ => {}
        }
    }
    assert!(seen >= 10, "only {seen} money properties found");
    for name in ["Amount", "SignedAmount", "PolicyDecimal"] {
        let s = &doc["components"]["schemas"][name];
        assert_eq!(s["type"], "string", "{name}");
        assert!(s["pattern"].is_string(), "{name}");
    }
    let c = contract();
    c.validate_schema("Amount", &json!("100.00"))
        .expect("string");
    assert!(c.validate_schema("Amount", &json!(100)).is_err());
    assert!(c.validate_schema("SignedAmount", &json!("-5.00")).is_ok());
    assert!(c.validate_schema("Amount", &json!("-5.00")).is_err());
}

/// Where the schema and the parser disagree on a body: (body, schema says, server says).
fn disagreements(
    c: &contract::Contract,
    schema: &str,
    bodies: &[String],
    server: impl Fn(&[u8]) -> bool,
) -> Vec<(String, bool, bool)> {
    bodies
        .iter()
        .filter_map(|b| {
            let by_schema = serde_json::from_str::<Value>(b)
                .map(|v| c.validate_schema(schema, &v).is_ok())
                .unwrap_or(false);
            let by_server = server(b.as_bytes());
            (by_schema != by_server).then(|| (b.clone(), by_schema, by_server))
        })
        .collect()
}

fn tx(kind: &str, amount: &str, currency: &str) -> String {
    json!({"type": kind, "amount": amount, "currency": currency}).to_string()
}

#[test]
fn transaction_schema_accepts_what_the_server_accepts() {
    let mut bodies = Vec::new();
    for (amount, currency) in [
        ("100", "USD"),
        ("100.00", "USD"),
        ("1.500", "USD"),
        ("0.01", "USD"),
        ("007.5", "EUR"),
        ("5000", "JPY"),
        ("5000.00", "JPY"),
        ("1.250", "BHD"),
        ("1.2500", "BHD"),
        ("1000000000000", "USD"),
        ("1000000000000.00", "USD"),
        ("999999999999.99", "USD"),
        // refused
        ("0", "USD"),
        ("0.00", "USD"),
        ("-1", "USD"),
        ("1e3", "USD"),
        ("+1", "USD"),
        (".5", "USD"),
        ("5.", "USD"),
        (" 1", "USD"),
        ("1 ", "USD"),
        ("1_000", "USD"),
        ("0x10", "USD"),
        ("NaN", "USD"),
        ("", "USD"),
        ("1.001", "USD"),
        ("1.5", "JPY"),
        ("1.0001", "BHD"),
        ("1000000000000.01", "USD"),
        ("1000000000001", "USD"),
        ("10", "usd"),
        ("10", "ABC"),
        ("10", "US"),
    ] {
        bodies.push(tx("deposit", amount, currency));
    }
    for kind in [
        "deposit",
        "purchase",
        "withdrawal",
        "refund",
        "gift",
        "Deposit",
        "",
    ] {
        bodies.push(tx(kind, "1", "USD"));
    }
    let long = "r".repeat(255);
    let too_long = "r".repeat(256);
    for extra in [
        r#","reference":"order 7""#.to_string(),
        r#","reference":null"#.to_string(),
        r#","reference":"""#.to_string(),
        format!(r#","reference":"{long}""#),
        format!(r#","reference":"{too_long}""#),
        r#","reference":"a\nb""#.to_string(),
        r#","reference":"a\u0085b""#.to_string(),
        r#","reference":5"#.to_string(),
        r#","extra":1"#.to_string(),
        r#","amount2":"1""#.to_string(),
    ] {
        bodies.push(format!(
            r#"{{"type":"deposit","amount":"1","currency":"USD"{extra}}}"#
        ));
    }
    for raw in [
        r#"{"type":"deposit","amount":100,"currency":"USD"}"#,
        r#"{"type":"deposit","currency":"USD"}"#,
        r#"{"amount":"1","currency":"USD"}"#,
        r#"{"type":"deposit","amount":"1"}"#,
        r#"{"type":null,"amount":"1","currency":"USD"}"#,
        r#"{"type":5,"amount":"1","currency":"USD"}"#,
        r#"{"type":"deposit","amount":"1","currency":"USD","currency":"EUR"}"#,
        r#"[]"#,
        r#"null"#,
        r#""deposit""#,
        r#"{}"#,
        r#"not json"#,
    ] {
        bodies.push(raw.to_string());
    }
    let c = contract();
    let d = disagreements(&c, "TransactionRequest", &bodies, |b| {
        crate::http::parse_tx_body(b).is_ok()
    });
    assert!(
        d.is_empty(),
        "(body, schema accepts, server accepts): {d:#?}"
    );
    // The one known gap: `reference` is limited in bytes, `maxLength` counts characters.
    let wide = format!(
        r#"{{"type":"deposit","amount":"1","currency":"USD","reference":"{}"}}"#,
        "é".repeat(200)
    );
    let v: Value = serde_json::from_str(&wide).expect("json");
    assert!(c.validate_schema("TransactionRequest", &v).is_ok());
    assert!(crate::http::parse_tx_body(wide.as_bytes()).is_err());
    // And the schema is not trivially permissive or strict.
    let ok = bodies
        .iter()
        .filter(|b| crate::http::parse_tx_body(b.as_bytes()).is_ok())
        .count();
    assert!(
        ok >= 15 && ok < bodies.len() - 20,
        "{ok} of {}",
        bodies.len()
    );
}

#[test]
fn faults_schema_accepts_what_the_server_accepts() {
    let bodies: Vec<String> = [
        r#"{"isolate":["us"]}"#,
        r#"{"isolate":["us","eu","ap-1"]}"#,
        r#"{"isolate":[]}"#,
        r#"{"heal":true}"#,
        r#"{"heal":false}"#,
        r#"{"heal":1}"#,
        r#"{"isolate":"us"}"#,
        r#"{"isolate":["EU"]}"#,
        r#"{"isolate":["abcdefghi"]}"#,
        r#"{"isolate":[5]}"#,
        r#"{"isolate":["us"],"heal":true}"#,
        r#"{"isolate":["us"],"x":1}"#,
        r#"{"heal":true,"x":1}"#,
        r#"{}"#,
        r#"[]"#,
        r#"{"what":1}"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = contract();
    let d = disagreements(&c, "FaultsRequest", &bodies, |b| {
        crate::http::parse_faults_body(b).is_ok()
    });
    assert!(
        d.is_empty(),
        "(body, schema accepts, server accepts): {d:#?}"
    );
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h
}

#[test]
fn policy_schema_accepts_what_the_server_accepts() {
    let full =
        crate::render::policy_json(&wallet_core::Policy::from_toml("[default]\n").expect("policy"));
    let mut bodies: Vec<String> = vec![full.to_string()];
    for raw in [
        r#"{"default":{}}"#,
        r#"{"default":{"action":"fee","fee":{"flat":"7","cap":"35"}}}"#,
        r#"{"default":{"action":"reverse","reversible":["purchase","withdrawal"]}}"#,
        r#"{"default":{"fee":{"per":"episode","percent":"1.5","grace":"0.50"}}}"#,
        r#"{"default":{"overdraft_line":"100","beyond_line":"fee","action":"fee"}}"#,
        r#"{"default":{},"rule":[{"tier":"gold","overdraft_line":"50"}],"tiers":{"gold":["alice"]}}"#,
        r#"{"default":{},"rule":[{"currency":"JPY","fee":{"flat":"500"}}]}"#,
        r#"{"default":{"fee":{"flat":null}}}"#,
        // refused by both
        r#"{}"#,
        r#"{"default":{"x":1}}"#,
        r#"{"default":{},"x":1}"#,
        r#"{"default":{"action":"charge"}}"#,
        r#"{"default":{"fee":{"flat":7}}}"#,
        r#"{"default":{"fee":{"per":"month"}}}"#,
        r#"{"default":{"reversible":["deposit"]}}"#,
        r#"{"default":{"reversible":"purchase"}}"#,
        r#"{"default":{"overdraft_line":"-5"}}"#,
        r#"{"default":{"overdraft_line":"abc"}}"#,
        r#"{"default":{"fee":{"flat":"1e3"}}}"#,
        r#"{"default":{},"rule":[{"currency":"usd"}]}"#,
        r#"{"default":{},"tiers":{"gold":"alice"}}"#,
        r#"{"default":[]}"#,
    ] {
        bodies.push(raw.to_string());
    }
    let c = contract();
    let headers = json_headers();
    let d = disagreements(&c, "PolicyDocument", &bodies, |b| {
        crate::http::parse_policy_body(&headers, b).is_ok()
    });
    assert!(
        d.is_empty(),
        "(body, schema accepts, server accepts): {d:#?}"
    );
    // What a schema cannot say (checked by the server, reported as invalid_policy naming
    // the field): the schema allows these and the server refuses them.
    for semantic in [
        r#"{"default":{"tier":"gold"}}"#,
        r#"{"default":{"fee":{"percent":"101"}}}"#,
        r#"{"default":{},"rule":[{"overdraft_line":"5"}]}"#,
        r#"{"default":{"overdraft_line":"100","action":"fee"}}"#,
    ] {
        let v: Value = serde_json::from_str(semantic).expect("json");
        assert!(
            c.validate_schema("PolicyDocument", &v).is_ok(),
            "{semantic}"
        );
        let e = crate::http::parse_policy_body(&headers, semantic.as_bytes()).expect_err(semantic);
        assert_eq!(e.code, "invalid_policy", "{semantic}");
    }
}

#[test]
fn every_mode_is_served_and_a_bad_mode_name_is_400_invalid_policy() {
    let headers = HeaderMap::new();
    for body in [
        "[default]\nmode = \"home\"\nhome = \"eu\"\n",
        r#"{"default":{"mode":"escrow","fallback":"refuse"}}"#,
        "[default]\nmode = \"optimistic\"\n",
    ] {
        assert!(
            crate::http::parse_policy_body(&headers, body.as_bytes()).is_ok(),
            "{body}"
        );
    }
    for body in [
        "[default]\nmode = \"lock\"\n",
        r#"{"default":{"mode":"lock"}}"#,
    ] {
        let e = crate::http::parse_policy_body(&headers, body.as_bytes()).expect_err(body);
        assert_eq!((e.status, e.code), (400, "invalid_policy"), "{body}");
    }
}

#[test]
fn every_operation_has_bearer_auth_and_the_middleware_answers() {
    let doc = document();
    let mut n = 0;
    for (path, item) in &doc.paths.paths {
        let mut item = item.clone();
        for (_, op) in operations_mut(&mut item) {
            n += 1;
            let codes: Vec<&str> = op.responses.responses.keys().map(String::as_str).collect();
            let v1 = path.starts_with("/v1/") && path != V1_PATH;
            assert_eq!(op.security.is_some(), v1, "{path}");
            for c in ["401", "429", "503"] {
                assert_eq!(
                    codes.contains(&c),
                    v1 || (c == "503" && path == "/readyz"),
                    "{path} {c}"
                );
            }
            assert_eq!(
                codes.contains(&"403"),
                path.starts_with("/v1/admin/"),
                "{path}"
            );
        }
    }
    assert_eq!(n, 21, "operations");
}

/// The check the integration tests run on every answer refuses what it must.
#[test]
fn the_contract_check_refuses_what_the_document_does_not_allow() {
    let c = contract();
    let json = Some("application/json");
    let get = |path: &str, status: u16, ct: Option<&str>, answer: &str| {
        c.check("GET", path, None, "", status, ct, answer)
    };
    let balances = "/v1/accounts/a/balances";
    let body = r#"{"account":"a","balances":[{"currency":"USD","provisional":"-5.00","settled":"0.00","mode":"optimistic"}]}"#;
    get(balances, 200, json, body).expect("allowed");
    let refused = [
        (balances, 418, json, body, "an undocumented status"),
        (
            balances,
            200,
            Some("text/plain"),
            body,
            "an undocumented content type",
        ),
        (
            balances,
            200,
            json,
            r#"{"account":"a","balances":[{"currency":"USD","provisional":-5,"settled":"0.00","mode":"optimistic"}]}"#,
            "an amount as a number",
        ),
        (
            balances,
            200,
            json,
            r#"{"account":"a","balances":[],"extra":1}"#,
            "an undocumented field",
        ),
        ("/v1/status", 500, json, NOT_FOUND, "a 500"),
        (
            "/v1/status",
            404,
            json,
            r#"{"error":{"code":"no_such_code","message":"m"}}"#,
            "an unknown error code",
        ),
        (
            "/v1/nope",
            200,
            json,
            NOT_FOUND,
            "an undocumented path answered 200",
        ),
    ];
    for (path, status, ct, answer, what) in refused {
        assert!(get(path, status, ct, answer).is_err(), "{what}");
    }
    get("/v1/nope", 404, json, NOT_FOUND).expect("404 on an unknown path");
    c.check(
        "PUT",
        "/v1/status",
        None,
        "",
        405,
        json,
        r#"{"error":{"code":"method_not_allowed","message":"m"}}"#,
    )
    .expect("405 for an undocumented method");

    let page = r#"{"account":"a","transactions":[],"next":null}"#;
    let list = "/v1/accounts/a/transactions";
    get(&format!("{list}?limit=5&after="), 200, json, page).expect("a documented query");
    for q in [
        "limit=0",
        "limit=1001",
        "limit=+5",
        "limit=x",
        "x=1",
        "after=zz",
    ] {
        let r = get(&format!("{list}?{q}"), 200, json, page);
        assert!(r.is_err(), "answered a query the document refuses: {q}");
    }
    let invalid_limit = r#"{"error":{"code":"invalid_limit","message":"m"}}"#;
    let r = get(&format!("{list}?limit=5"), 400, json, invalid_limit);
    assert!(r.is_err(), "refused a query the document allows");

    let created = r#"{"id":"eu:1","account":"a","type":"deposit","amount":"100.00","currency":"USD","hlc":"1795652809994.00000","balance":{"provisional":"100.00","settled":"0.00"}}"#;
    let post = |body: &str, status: u16, answer: &str| {
        c.check(
            "POST",
            "/v1/accounts/a/transactions",
            json,
            body,
            status,
            json,
            answer,
        )
    };
    let good = r#"{"type":"deposit","amount":"100","currency":"USD"}"#;
    post(good, 201, created).expect("allowed");
    let r = post(
        r#"{"type":"deposit","amount":100,"currency":"USD"}"#,
        201,
        created,
    );
    assert!(
        r.is_err(),
        "the server accepted a body the document refuses"
    );
    let invalid_amount = r#"{"error":{"code":"invalid_amount","message":"m"}}"#;
    assert!(
        post(good, 400, invalid_amount).is_err(),
        "the server refused a body the document allows"
    );
}

const NOT_FOUND: &str = r#"{"error":{"code":"not_found","message":"no route"}}"#;
