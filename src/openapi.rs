//! The OpenAPI document of the HTTP API, generated from the code with utoipa.
//!
//! Where each part comes from:
//! - the paths, methods, parameters and per-route answers: the `#[utoipa::path]` annotations of
//!   the handlers in [`crate::http`], whose router is built from the same list
//!   ([`crate::http::api_routes`], utoipa-axum), so a served route cannot go undocumented;
//! - the response bodies: the typed views in [`crate::render`], which the actor serializes;
//! - the request bodies and the string formats: the schemas here ([`TransactionRequest`],
//!   [`FaultsRequest`], [`PolicyDocument`], [`Amount`], ...), written to say what the server's
//!   parsers accept (the tests compare the two on a corpus of bodies);
//! - the answers every `/v1` route can give (401, 403, 413, 429, 503) come from the middleware
//!   in front of the handlers and are added here by [`add_middleware_answers`].
//!
//! `docs/openapi.json` is this document, checked in: a test fails when it is stale, and
//! `UPDATE_OPENAPI=1 cargo test -p wallet --lib openapi` rewrites it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, Ref, RefOr, ResponseBuilder, SecurityRequirement,
};
use utoipa::{PartialSchema, ToSchema};
use wallet_core::Currency;

/// The name of the bearer-token security scheme.
pub const BEARER: &str = "bearer";
/// The path of the document under `/v1` (served without a token).
pub const V1_PATH: &str = "/v1/openapi.json";

/// A string schema with a pattern and a description, as a named component.
macro_rules! text_schema {
    ($(#[$meta:meta])* $name:ident, $pattern:expr, $desc:expr, $example:expr) => {
        $(#[$meta])*
        pub struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some($pattern))
                    .description(Some($desc))
                    .examples([$example])
                    .into()
            }
        }
        impl ToSchema for $name {}
    };
}

text_schema!(
    /// An amount as the API renders it: a decimal string with the currency's minor units.
    Amount,
    r"^[0-9]+(\.[0-9]{1,3})?$",
    "A non-negative decimal string with exactly the currency's minor units (\"100.00\" USD, \
     \"5000\" JPY, \"1.250\" BHD). Amounts are always JSON strings, never numbers.",
    "100.00"
);
text_schema!(
    /// A signed amount (balances, the effect of a compensation).
    SignedAmount,
    r"^-?[0-9]+(\.[0-9]{1,3})?$",
    "A signed decimal string with exactly the currency's minor units (\"-5.00\"). Always a \
     JSON string, never a number.",
    "-5.00"
);
text_schema!(
    /// A decimal string of a policy field.
    PolicyDecimal,
    r"^[0-9]+(\.[0-9]+)?$",
    "A non-negative decimal string of at most 10^12 (\"7\", \"1.5\"); an amount is in major \
     units of the currency.",
    "7.50"
);
text_schema!(
    /// A hybrid logical clock timestamp.
    Hlc,
    r"^[0-9]+\.[0-9]{5,}$",
    "A hybrid logical clock timestamp \"<physical ms>.<logical>\", a string so that no JSON \
     number loses precision.",
    "1795652809994.00000"
);
text_schema!(
    /// A client or policy event id.
    EventId,
    r"^[a-z0-9-]{1,8}:[0-9]+$",
    "An event id: \"<origin region>:<seq>\".",
    "eu:12"
);
text_schema!(
    /// A compensation id.
    CompensationId,
    r"^(fee|rev|conflict):[a-z0-9-]{1,8}:[0-9]+$",
    "A compensation id: \"fee:\", \"rev:\" or \"conflict:\" followed by the id of the event \
     that caused it.",
    "fee:us:1"
);
text_schema!(
    /// An id of `GET /v1/transactions/{id}`.
    TransactionId,
    r"^((fee|rev|conflict):)?[a-z0-9-]{1,8}:[0-9]+$",
    "An event id (\"eu:12\") or a compensation id (\"fee:eu:12\", \"rev:eu:12\", \
     \"conflict:eu:12\").",
    "eu:12"
);
text_schema!(
    /// A region name.
    RegionId,
    r"^[a-z0-9-]{1,8}$",
    "A region name: 1 to 8 characters of a-z, 0-9 and -.",
    "eu"
);
text_schema!(
    /// An account id.
    AccountId,
    r"^[A-Za-z0-9._:-]{1,64}$",
    "An account id: 1 to 64 characters of A-Z a-z 0-9 . _ : -.",
    "alice"
);
text_schema!(
    /// A SHA-256 digest in hex.
    Sha256Hex,
    r"^[0-9a-f]{64}$",
    "A SHA-256 digest, lower-case hex.",
    "be10d633a1c5e0f6a9f8d1e2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6"
);
text_schema!(
    /// An ed25519 signature in hex.
    SignatureHex,
    r"^[0-9a-f]{128}$",
    "An ed25519 signature by the origin region's key, lower-case hex.",
    "5f0c9d00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
);
text_schema!(
    /// A page cursor.
    Cursor,
    r"^([0-9a-f]{2})+$",
    "An opaque cursor: pass it back as `after` to resume.",
    "66312e31"
);

/// Every currency code this build knows, with its minor units.
pub fn known_currencies() -> &'static [(String, u32)] {
    static LIST: OnceLock<Vec<(String, u32)>> = OnceLock::new();
    LIST.get_or_init(|| {
        let mut out = Vec::new();
        for a in b'A'..=b'Z' {
            for b in b'A'..=b'Z' {
                for c in b'A'..=b'Z' {
                    let code = String::from_utf8_lossy(&[a, b, c]).into_owned();
                    if let Ok(cur) = Currency::parse(&code) {
                        out.push((code, cur.minor_units()));
                    }
                }
            }
        }
        out
    })
}

/// An object that takes no other property than those it lists.
fn closed_object(title: String) -> ObjectBuilder {
    ObjectBuilder::new()
        .title(Some(title))
        .schema_type(Type::Object)
        .additional_properties(Some(
            utoipa::openapi::schema::AdditionalProperties::FreeForm(false),
        ))
}

fn currency_enum(minor_units: Option<u32>) -> ObjectBuilder {
    let codes = known_currencies()
        .iter()
        .filter(|(_, m)| minor_units.is_none_or(|u| *m == u))
        .map(|(c, _)| c.clone());
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(codes))
}

/// An ISO-4217 currency code this build knows (upper case).
pub struct CurrencyCode;
impl PartialSchema for CurrencyCode {
    fn schema() -> RefOr<Schema> {
        currency_enum(None)
            .description(Some(
                "An ISO-4217 currency code this build knows, upper case (\"usd\" is refused).",
            ))
            .into()
    }
}
impl ToSchema for CurrencyCode {}

/// The pattern of a positive amount of a currency with `minor_units` decimal places, at most
/// 10^12 major units: what `Amount::parse` accepts (no sign, exponent, separator, blank, or a
/// leading or trailing `.`; trailing zeros beyond the minor units are fine).
pub fn request_amount_pattern(minor_units: u32) -> String {
    let frac = if minor_units == 0 {
        "0+".to_string()
    } else {
        format!("[0-9]{{1,{minor_units}}}0*")
    };
    format!(
        r"^(?=.*[1-9])0*(?:[0-9]{{1,12}}(?:\.(?=[0-9]{{1,28}}$){frac})?|10{{12}}(?:\.(?=[0-9]{{1,28}}$)0+)?)$"
    )
}

/// The body of `POST /v1/accounts/{account}/transactions`: one object schema per number of
/// minor units, so the amount's decimal places are checked against its currency.
pub struct TransactionRequest;
impl PartialSchema for TransactionRequest {
    fn schema() -> RefOr<Schema> {
        let mut one_of = OneOfBuilder::new().description(Some(
            "A transaction: `type`, `amount` (a decimal string, never a JSON number), \
             `currency`, and an optional `reference`. No other field is accepted. The amount \
             is positive, has at most the currency's minor units (trailing zeros beyond them \
             are fine: \"1.500\" USD is 1.50) and is at most 10^12 major units.",
        ));
        let mut groups: Vec<u32> = known_currencies().iter().map(|(_, m)| *m).collect();
        groups.sort_unstable();
        groups.dedup();
        for m in groups {
            let kind = ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["deposit", "purchase", "withdrawal", "refund"]))
                .description(Some(
                    "deposit and refund credit the account, purchase and withdrawal debit it",
                ));
            let amount = ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(request_amount_pattern(m)))
                .description(Some(format!(
                    "A positive decimal string with at most {m} decimal places"
                )));
            let reference = ObjectBuilder::new()
                .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
                    Type::String,
                    Type::Null,
                ]))
                .max_length(Some(wallet_core::id::REFERENCE_LEN_MAX))
                .pattern(Some(r"^[^\u0000-\u001F\u007F-\u009F]*$"))
                .description(Some(
                    "Free text, at most 255 bytes of UTF-8, no control characters; null is \
                     the same as leaving it out",
                ));
            let object = closed_object(format!(
                "TransactionRequest (currencies with {m} minor units)"
            ))
            .property("type", kind)
            .required("type")
            .property("amount", amount)
            .required("amount")
            .property("currency", currency_enum(Some(m)))
            .required("currency")
            .property("reference", reference);
            one_of = one_of.item(object);
        }
        one_of
            .examples([serde_json::json!({
                "type": "purchase", "amount": "30.10", "currency": "USD", "reference": "order 7781"
            })])
            .into()
    }
}
impl ToSchema for TransactionRequest {}

/// The body of `POST /v1/admin/faults`.
pub struct FaultsRequest;
impl PartialSchema for FaultsRequest {
    fn schema() -> RefOr<Schema> {
        let isolate = closed_object("isolate".into())
            .property(
                "isolate",
                ArrayBuilder::new()
                    .items(Ref::from_schema_name("RegionId"))
                    .description(Some(
                        "Regions to cut replication off with (this region itself: all)",
                    )),
            )
            .required("isolate");
        let heal = closed_object("heal".into())
            .property(
                "heal",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([true]))
                    .description(Some("Restores every connection")),
            )
            .required("heal");
        OneOfBuilder::new()
            .item(isolate)
            .item(heal)
            .description(Some("{\"isolate\":[\"<region>\",...]} or {\"heal\":true}"))
            .into()
    }
}
impl ToSchema for FaultsRequest {}

/// A policy as a JSON document: the fields of the policy file (docs/reconciliation.md §7).
/// The body `POST /v1/admin/policy` accepts as JSON and the `policy` of `GET /v1/policy`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PolicyDocument {
    /// The rule for every tier and currency no `rule` names.
    default: PolicyRule,
    /// Rules for a tier, a currency or both; each leaves out what it takes from `default`.
    #[serde(default)]
    #[schema(max_items = 63)]
    rule: Vec<PolicyRule>,
    /// Tier name to the accounts in it.
    #[serde(default)]
    tiers: BTreeMap<String, Vec<String>>,
}

/// Whether to charge a fee or reverse the debit.
#[derive(ToSchema, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Charge an overdraft fee.
    Fee,
    /// Reverse the debit when its type is reversible, else charge a fee.
    Reverse,
}

/// When a fee is charged.
#[derive(ToSchema, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyFeePer {
    /// On every overdrawing debit.
    Debit,
    /// Once per overdraft episode.
    Episode,
}

/// A debit type that a reversal may cancel.
#[derive(ToSchema, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReversibleType {
    /// A purchase.
    Purchase,
    /// A withdrawal.
    Withdrawal,
}

/// One section of the policy (`[default]` or a `[[rule]]`). Every field is optional: a
/// rule takes what it leaves out from `default`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PolicyRule {
    /// The tier this rule is for (not in `default`).
    tier: Option<String>,
    /// The currency this rule is for (not in `default`).
    #[schema(value_type = Option<CurrencyCode>)]
    currency: Option<String>,
    /// What to do when a debit takes the settled balance below the floor.
    action: Option<PolicyAction>,
    /// With an overdraft line: what to do beyond it (needed with `action = "fee"`).
    beyond_line: Option<PolicyAction>,
    /// How far below zero local acceptance may go.
    #[schema(value_type = Option<PolicyDecimal>)]
    overdraft_line: Option<String>,
    /// Debit types a reversal may cancel.
    reversible: Option<Vec<ReversibleType>>,
    /// Fee arithmetic.
    fee: Option<PolicyFee>,
}

/// Fee arithmetic: `flat + percent/100 × overdrawn`, rounded once, then raised to `minimum`
/// and lowered to `cap`.
#[derive(ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct PolicyFee {
    /// Fixed part.
    #[schema(value_type = Option<PolicyDecimal>)]
    flat: Option<String>,
    /// Percent of the overdrawn amount, at most 100.
    #[schema(value_type = Option<PolicyDecimal>)]
    percent: Option<String>,
    /// Lower bound of a charged fee.
    #[schema(value_type = Option<PolicyDecimal>)]
    minimum: Option<String>,
    /// Upper bound of a charged fee (none: no cap).
    #[schema(value_type = Option<PolicyDecimal>)]
    cap: Option<String>,
    /// No fee when the overdrawn amount is at or below this.
    #[schema(value_type = Option<PolicyDecimal>)]
    grace: Option<String>,
    /// Per debit or per episode.
    per: Option<PolicyFeePer>,
}

/// The schemas the handlers' annotations refer to by name (path parameters, items) besides
/// the bodies utoipa collects by itself.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "walletd HTTP API",
        description = "The HTTP API of a region of the multi-region wallet (docs/api.md). \
            Amounts are decimal strings, never JSON numbers. Every error has the shape \
            {\"error\":{\"code\":..,\"message\":..}}. Generated from the code (src/openapi.rs).",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(
        Amount, SignedAmount, PolicyDecimal, Hlc, EventId, CompensationId, TransactionId,
        RegionId, AccountId, Sha256Hex, SignatureHex, Cursor, CurrencyCode, TransactionRequest,
        FaultsRequest, PolicyDocument
    )),
    tags(
        (name = "transactions", description = "Payments and account history"),
        (name = "feed", description = "The compensation feed"),
        (name = "region", description = "Status and policy of this region"),
        (name = "admin", description = "Admin token only"),
        (name = "operations", description = "Health, readiness, metrics, this document")
    )
)]
struct ApiDoc;

/// The base document (info, tags, named schemas) the router adds its paths to.
pub fn base() -> OpenApi {
    <ApiDoc as utoipa::OpenApi>::openapi()
}

fn error_answer(description: &str, retry_after: bool) -> RefOr<utoipa::openapi::Response> {
    let mut b = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorBody")))
            .build(),
    );
    if retry_after {
        b = b.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds to wait before retrying"))
                .build(),
        );
    }
    RefOr::T(b.build())
}

fn add_answer(op: &mut Operation, status: &str, description: &str, retry_after: bool) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| error_answer(description, retry_after));
}

/// Adds what the middleware in front of every `/v1` handler can answer (auth, rate limit,
/// body limit, request time-out, shutting down), and the bearer security requirement.
pub fn add_middleware_answers(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/v1/") || path == V1_PATH {
            continue;
        }
        let admin = path.starts_with("/v1/admin/");
        for (method, op) in operations_mut(item) {
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            add_answer(
                op,
                "401",
                "`unauthorized`: missing or unknown bearer token (with WWW-Authenticate: Bearer)",
                false,
            );
            if admin {
                add_answer(
                    op,
                    "403",
                    "`forbidden`: this route needs an admin token",
                    false,
                );
            }
            if method == HttpMethod::Post {
                add_answer(
                    op,
                    "413",
                    "`payload_too_large`: the body exceeds http.body_limit_bytes",
                    false,
                );
            }
            add_answer(
                op,
                "429",
                "`rate_limited`: too many requests with this token (Retry-After says when)",
                true,
            );
            add_answer(
                op,
                "503",
                "`timeout` (the request did not complete within http.request_timeout_ms, \
                 Retry-After: 1), `overloaded` (http.concurrency_max requests in flight: \
                 answered at once, Retry-After: 1), `unavailable` (shutting down), \
                 `restoring`, `joining` (a region started by `walletd join` that has not \
                 pulled its join yet), `storage_unavailable`, `peer_ack_timeout` (with \
                 `ack = \"peer\"`: durable here but no other member confirmed it in time; the \
                 transaction stays accepted, a retry with the same Idempotency-Key returns it)",
                true,
            );
        }
    }
    let components = doc
        .components
        .get_or_insert_with(utoipa::openapi::Components::new);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "A client token ([auth] tokens) or an admin token ([auth] admin_tokens)",
                ))
                .build(),
        ),
    );
}

/// The operations of a path item with their methods.
pub fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(HttpMethod, &mut Operation)> {
    let mut out = Vec::new();
    for (m, op) in [
        (HttpMethod::Get, &mut item.get),
        (HttpMethod::Post, &mut item.post),
        (HttpMethod::Put, &mut item.put),
        (HttpMethod::Delete, &mut item.delete),
        (HttpMethod::Patch, &mut item.patch),
        (HttpMethod::Head, &mut item.head),
        (HttpMethod::Options, &mut item.options),
        (HttpMethod::Trace, &mut item.trace),
    ] {
        if let Some(op) = op.as_mut() {
            out.push((m, op));
        }
    }
    out
}

/// The document: the router's paths ([`crate::http::api_routes`]) on [`base`], with the
/// middleware's answers.
pub fn document() -> &'static OpenApi {
    static DOC: OnceLock<OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = crate::http::api_routes().into_openapi();
        add_middleware_answers(&mut doc);
        doc
    })
}

/// The document as pretty JSON with a final newline: the bytes served at `/v1/openapi.json`
/// and checked in as `docs/openapi.json`.
pub fn document_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut s = document()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        s.push('\n');
        s
    })
}

#[cfg(test)]
mod tests;
