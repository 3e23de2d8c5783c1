//! The HTTP API (axum): validation, auth, error shapes, metrics per route.
//!
//! Handlers validate input and hand a [`Command`] to the actor; the actor answers with a
//! ready-made JSON [`Reply`]. Every error, including unknown routes and methods and oversized
//! bodies, has the shape `{"error":{"code":"...","message":"..."}}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wallet_core::id::check_reference;
use wallet_core::{AccountId, Amount, AmountError, Currency, Kind, RegionId, TxRequest};

use crate::command::{Command, Reply, Shared, SubmitCmd, PAGE_LIMIT_MAX};
use crate::config::{HttpLimits, NodeConfig};
use crate::metrics::{Metrics, Refusal};
use crate::render::{self, ErrorBody};
use crate::secret::{self, TokenDigest, TokenSet};

/// Default page size of lists.
pub const PAGE_LIMIT_DEFAULT: usize = 100;

/// The valid tokens, as digests; swapped whole on reload (SIGHUP).
#[derive(Debug, Default)]
struct Auth {
    client: TokenSet,
    admin: TokenSet,
}

impl Auth {
    fn of(cfg: &NodeConfig) -> Auth {
        Auth {
            client: TokenSet::new(&cfg.tokens),
            admin: TokenSet::new(&cfg.admin_tokens),
        }
    }
}

struct Inner {
    commands: mpsc::Sender<Command>,
    auth: std::sync::RwLock<Arc<Auth>>,
    faults_enabled: bool,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
    body_limit_bytes: usize,
    limits: HttpLimits,
    /// Slots of the `/v1` concurrency limit (`limits.concurrency_max`; when none is free, a
    /// request is shed with 503 `overloaded`).
    in_flight: Arc<tokio::sync::Semaphore>,
    rate: RateLimiter,
}

/// Per-token token buckets: `rate_per_second` sustained, `rate_burst` at once. Keyed by the
/// digest of valid tokens only, so the map is as small as the token list.
struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: std::sync::Mutex<std::collections::HashMap<TokenDigest, (f64, Instant)>>,
}

impl RateLimiter {
    fn new(l: &HttpLimits) -> RateLimiter {
        RateLimiter {
            rate: f64::from(l.rate_per_second),
            burst: f64::from(l.rate_burst),
            buckets: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket; `Err(seconds)` to wait when it is empty.
    fn take(&self, key: &TokenDigest) -> Result<(), u64> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut m = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (tokens, at) = m.entry(*key).or_insert((self.burst, now));
        let refill = now.duration_since(*at).as_secs_f64() * self.rate;
        *tokens = (*tokens + refill).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - *tokens) / self.rate;
            // Whole seconds, at least 1 (Retry-After has no fractions).
            Err((wait.ceil() as u64).max(1))
        }
    }

    fn clear(&self) {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// From the config and the running node.
    pub fn new(
        cfg: &NodeConfig,
        commands: mpsc::Sender<Command>,
        shared: Arc<Shared>,
        metrics: Arc<Metrics>,
    ) -> AppState {
        AppState(Arc::new(Inner {
            commands,
            auth: std::sync::RwLock::new(Arc::new(Auth::of(cfg))),
            faults_enabled: cfg.faults_enabled,
            metrics,
            shared,
            body_limit_bytes: cfg.body_limit_bytes,
            limits: cfg.http_limits,
            in_flight: Arc::new(tokio::sync::Semaphore::new(cfg.http_limits.concurrency_max)),
            rate: RateLimiter::new(&cfg.http_limits),
        }))
    }
}

impl AppState {
    /// Replaces the valid tokens with those of `cfg` (token rotation: SIGHUP re-reads the
    /// config). Returns (client, admin) token counts.
    pub fn reload_tokens(&self, cfg: &NodeConfig) -> (usize, usize) {
        let a = Auth::of(cfg);
        let n = (a.client.len(), a.admin.len());
        let mut g = self
            .0
            .auth
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = Arc::new(a);
        drop(g);
        self.0.rate.clear();
        n
    }

    fn auth(&self) -> Arc<Auth> {
        self.0
            .auth
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn json_response(status: u16, body: impl Into<axum::body::Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, render::error_body(self.code, &self.message))
    }
}

fn error(status: u16, code: &'static str, message: &str) -> ApiError {
    ApiError {
        status,
        code,
        message: message.to_string(),
    }
}

fn reply_response(r: Reply) -> Response {
    let replayed = r.replayed;
    let mut resp = json_response(r.status, r.body);
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Some(s) = r.retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s.max(1)));
    }
    resp
}

async fn ask(st: &AppState, make: impl FnOnce(oneshot::Sender<Reply>) -> Command) -> Response {
    let (tx, rx) = oneshot::channel();
    if st.0.commands.send(make(tx)).await.is_err() {
        return error(503, "unavailable", "the region is shutting down").into_response();
    }
    match rx.await {
        Ok(r) => reply_response(r),
        Err(_) => error(503, "unavailable", "the region stopped before answering").into_response(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    Some(token.trim())
}

/// Checks the bearer token of a `/v1/*` request: `Ok(Some(digest))` for a valid token,
/// `Ok(None)` for routes without auth, `Err` with the 401/403 answer.
fn check_auth(st: &AppState, req: &Request) -> Result<Option<TokenDigest>, Box<Response>> {
    let path = req.uri().path();
    if !path.starts_with("/v1/") || path == crate::openapi::V1_PATH {
        return Ok(None);
    }
    let admin_route = path.starts_with("/v1/admin/");
    // Compared as SHA-256 digests in constant time against every token (crate::secret).
    let presented = bearer(req.headers()).map(|t| secret::digest(t.as_bytes()));
    let auth = st.auth();
    let is_admin = presented.is_some_and(|d| auth.admin.contains(&d));
    let is_client = presented.is_some_and(|d| auth.client.contains(&d));
    if !is_admin && !is_client {
        let mut r = error(
            401,
            "unauthorized",
            "missing or invalid bearer token (Authorization: Bearer <token>)",
        )
        .into_response();
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(Box::new(r));
    }
    if admin_route && !is_admin {
        return Err(Box::new(
            error(403, "forbidden", "this route needs an admin token").into_response(),
        ));
    }
    Ok(presented)
}

/// The limits of an authenticated `/v1` request, in order: the per-token rate limit (429),
/// the concurrency limit (`concurrency_max` requests in flight: a new one is answered at
/// once with 503 `overloaded` rather than queued), the request time-out (503 `timeout`: body
/// read and handler). Written here rather than as tower layers on the routes: one future per
/// request instead of four nested services (issue 16, the HTTP share of the profile).
async fn limited(st: &AppState, req: Request, next: Next) -> Response {
    let key = match check_auth(st, &req) {
        Err(denied) => return *denied,
        Ok(None) => return next.run(req).await,
        Ok(Some(k)) => k,
    };
    if let Err(secs) = st.0.rate.take(&key) {
        st.0.metrics.http_rate_limited();
        let mut r = error(
            429,
            "rate_limited",
            &format!("too many requests with this token: retry after {secs} s"),
        )
        .into_response();
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    // The concurrency limit with load shedding: no free slot, answered at once.
    let Ok(_slot) = st.0.in_flight.clone().try_acquire_owned() else {
        st.0.metrics.http_shed();
        return limit_error(
            "overloaded",
            "http.concurrency_max requests are in flight: retry after 1 s",
        );
    };
    // The request time-out: body read and handler.
    let timeout = std::time::Duration::from_millis(st.0.limits.request_timeout_ms);
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            st.0.metrics.http_timed_out();
            limit_error(
                "timeout",
                "the request did not complete within http.request_timeout_ms",
            )
        }
    }
}

/// The JSON answer of a `/v1` limit (503 with `Retry-After: 1`).
fn limit_error(code: &'static str, message: &str) -> Response {
    let mut r = error(503, code, message).into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn route_name(path: Option<&str>) -> &'static str {
    match path {
        Some("/v1/accounts/{account}/transactions") => "/v1/accounts/{account}/transactions",
        Some("/v1/accounts/{account}/balances") => "/v1/accounts/{account}/balances",
        Some("/v1/transactions/{id}") => "/v1/transactions/{id}",
        Some("/v1/compensations") => "/v1/compensations",
        Some("/v1/status") => "/v1/status",
        Some("/v1/admin/faults") => "/v1/admin/faults",
        Some("/v1/admin/evidence") => "/v1/admin/evidence",
        Some("/v1/admin/policy") => "/v1/admin/policy",
        Some("/v1/policy") => "/v1/policy",
        Some("/v1/admin/members") => "/v1/admin/members",
        Some("/v1/admin/key") => "/v1/admin/key",
        Some("/v1/admin/seal/waive") => "/v1/admin/seal/waive",
        Some("/v1/admin/members/{region}") => "/v1/admin/members/{region}",
        Some("/metrics") => "/metrics",
        Some("/healthz") => "/healthz",
        Some("/readyz") => "/readyz",
        Some("/openapi.json") => "/openapi.json",
        Some("/v1/openapi.json") => "/v1/openapi.json",
        Some("/ui") => "/ui",
        Some("/ui/app.js") => "/ui/app.js",
        Some("/ui/app.css") => "/ui/app.css",
        _ => "unmatched",
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The one middleware: bearer auth on `/v1/*`, then per-route metrics.
async fn front(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_name(
        req.extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let method = method_name(req.method());
    let resp = limited(&st, req, next).await;
    let status = resp.status().as_u16();
    st.0.metrics
        .observe_http(route, method, status, started.elapsed());
    resp
}

/// Every route with its handler: the one list both the router and the OpenAPI document
/// ([`crate::openapi`]) are built from. A route added with `.route(..)` elsewhere would be
/// served undocumented: add it here, with its `#[utoipa::path]`. (The one exception is the
/// operator console's page, `/ui` in [`router`]: not JSON, not part of the API.)
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::base())
        .merge(v1_routes())
        .merge(ops_routes())
}

/// The `/v1` routes: bearer auth, rate limit, concurrency limit and request time-out.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(post_transaction, list_transactions))
        .routes(routes!(balances))
        .routes(routes!(get_transaction))
        .routes(routes!(compensations))
        .routes(routes!(status))
        .routes(routes!(faults))
        .routes(routes!(evidence))
        .routes(routes!(post_policy))
        .routes(routes!(get_policy))
        .routes(routes!(get_members, join_member))
        .routes(routes!(retire_member))
        .routes(routes!(rotate_key))
        .routes(routes!(waive_seal))
        .routes(routes!(move_home))
}

/// The unauthenticated routes, outside the `/v1` limits.
fn ops_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metrics))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(openapi))
        .routes(routes!(openapi_legacy))
}

/// The router with every route, auth, limits and metrics.
pub fn router(st: AppState) -> Router {
    let limit = st.0.body_limit_bytes;
    let (v1, _) = v1_routes().split_for_parts();
    let (ops, _) = ops_routes().split_for_parts();
    // Auth, the rate limit, the concurrency limit and the time-out of the `/v1` routes run in
    // `front` ([`limited`]), so a refused request takes no slot; `/metrics`, `/healthz`,
    // `/readyz` and `/openapi.json` are outside them.
    v1.merge(ops)
        // The operator console's page and assets: HTML, CSS and JavaScript for a browser, not
        // the JSON API, so outside the OpenAPI document (docs/api.md, docs/security.md).
        .route("/ui", get(crate::console::index))
        .route("/ui/app.js", get(crate::console::app_js))
        .route("/ui/app.css", get(crate::console::app_css))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(st.clone(), front))
        .with_state(st)
}

/// The router of `http.metrics_listen`: `/metrics`, `/healthz`, `/readyz` only.
pub fn metrics_router(st: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(st)
}

async fn not_found(req: Request) -> ApiError {
    error(
        404,
        "not_found",
        &format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    error(
        405,
        "method_not_allowed",
        &format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

fn account_of(p: Result<Path<String>, PathRejection>) -> Result<AccountId, ApiError> {
    let Path(a) = p.map_err(|e| error(400, "invalid_account", &e.body_text()))?;
    AccountId::new(&a).map_err(|e| error(400, "invalid_account", &e.to_string()))
}

/// Validated transaction body.
pub(crate) struct TxBody {
    kind: Kind,
    amount: Amount,
    currency: Currency,
    reference: Option<String>,
}

/// The common, well-formed body, deserialized without building a JSON tree. Anything that
/// does not fit goes through [`parse_tx_body_slow`] for a precise error.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FastBody<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    amount: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    currency: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    reference: Option<std::borrow::Cow<'a, str>>,
}

pub(crate) fn parse_tx_body(bytes: &[u8]) -> Result<TxBody, ApiError> {
    let Ok(f) = serde_json::from_slice::<FastBody<'_>>(bytes) else {
        return parse_tx_body_slow(bytes);
    };
    let kind = Kind::parse(&f.kind).ok_or_else(|| {
        error(
            400,
            "invalid_type",
            &format!(
                "type {:?} is not one of deposit, purchase, withdrawal, refund",
                f.kind
            ),
        )
    })?;
    let currency =
        Currency::parse(&f.currency).map_err(|e| error(400, "unknown_currency", &e.to_string()))?;
    let amount = Amount::parse(&f.amount, currency).map_err(amount_error)?;
    let reference = match f.reference {
        None => None,
        Some(r) => {
            check_reference(&r).map_err(|e| error(400, "invalid_reference", &e.to_string()))?;
            Some(r.into_owned())
        }
    };
    Ok(TxBody {
        kind,
        amount,
        currency,
        reference,
    })
}

fn amount_error(e: AmountError) -> ApiError {
    match e {
        AmountError::ScaleExceeded { .. } => error(400, "amount_scale", &e.to_string()),
        AmountError::UnknownCurrency(_) => error(400, "unknown_currency", &e.to_string()),
        _ => error(400, "invalid_amount", &e.to_string()),
    }
}

fn parse_tx_body_slow(bytes: &[u8]) -> Result<TxBody, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        error(
            400,
            "invalid_json",
            &format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(m) = v else {
        return Err(error(
            400,
            "invalid_json",
            "request body must be a JSON object",
        ));
    };
    for k in m.keys() {
        if !matches!(k.as_str(), "type" | "amount" | "currency" | "reference") {
            return Err(error(
                400,
                "invalid_json",
                &format!("unknown field {k:?}: expected type, amount, currency, reference"),
            ));
        }
    }
    let string_field = |name: &str| -> Result<&str, ApiError> {
        match m.get(name) {
            None | Some(Value::Null) => Err(error(
                400,
                "invalid_json",
                &format!("missing field {name:?}"),
            )),
            Some(Value::String(s)) => Ok(s.as_str()),
            Some(_) => Err(error(
                400,
                "invalid_json",
                &format!("field {name:?} must be a JSON string"),
            )),
        }
    };
    let kind_s = string_field("type")?;
    let kind = Kind::parse(kind_s).ok_or_else(|| {
        error(
            400,
            "invalid_type",
            &format!("type {kind_s:?} is not one of deposit, purchase, withdrawal, refund"),
        )
    })?;
    let cur_s = string_field("currency")?;
    let currency =
        Currency::parse(cur_s).map_err(|e| error(400, "unknown_currency", &e.to_string()))?;
    let amount_s = match m.get("amount") {
        Some(Value::Number(n)) => {
            return Err(error(
                400,
                "invalid_amount",
                &format!("amount must be a JSON string such as \"100.00\", not the number {n}"),
            ))
        }
        _ => string_field("amount")?,
    };
    let amount = Amount::parse(amount_s, currency).map_err(amount_error)?;
    let reference = match m.get("reference") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            check_reference(s).map_err(|e| error(400, "invalid_reference", &e.to_string()))?;
            Some(s.clone())
        }
        Some(_) => {
            return Err(error(
                400,
                "invalid_json",
                "field \"reference\" must be a JSON string",
            ))
        }
    };
    Ok(TxBody {
        kind,
        amount,
        currency,
        reference,
    })
}

fn fingerprint(b: &TxBody) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b.kind.as_str().as_bytes());
    h.update([0]);
    h.update(b.currency.render(b.amount.value()).as_bytes());
    h.update([0]);
    h.update(b.currency.as_str().as_bytes());
    h.update([0]);
    match &b.reference {
        Some(r) => {
            h.update([1]);
            h.update(r.as_bytes());
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// Submits a transaction; answered once the event is durable on this region's disk.
#[utoipa::path(
    post,
    path = "/v1/accounts/{account}/transactions",
    tag = "transactions",
    params(
        ("account" = crate::openapi::AccountId, Path, description = "The account (needs no creation)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
            pattern = "^[!-~]+$",
            description = "Optional, recommended: 1 to 255 visible ASCII characters, scoped per \
                account. A retry with the same key and body returns the original answer."),
    ),
    request_body(content = crate::openapi::TransactionRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created (or replayed: `Idempotent-Replayed: true`)",
            body = render::TransactionCreated,
            headers(("Idempotent-Replayed" = String,
                description = "`true` when this is the stored answer of an earlier request with the same key"))),
        (status = 400, description = "`invalid_json`, `invalid_amount`, `amount_scale`, \
            `unknown_currency`, `invalid_type`, `invalid_account`, `invalid_reference`, \
            `invalid_idempotency_key`", body = ErrorBody),
        (status = 409, description = "`idempotency_conflict`, `account_frozen`, `balance_overflow`, `region_retired` (this region was retired: send to another region)",
            body = ErrorBody),
        (status = 422, description = "`insufficient_funds`, or `insufficient_rights` (escrow \
            mode: this region's spending rights stay short after asking its peers; the account \
            may hold the money at other regions); replayed with `Idempotent-Replayed: true` on \
            a retry with the same key",
            body = ErrorBody,
            headers(("Idempotent-Replayed" = String, description = "`true` on a replay"))),
        (status = 503, description = "`home_unreachable` (home mode: the account's home did \
            not answer the forwarded debit in time; never accepted here instead; the home may \
            still have accepted it: retry with the same Idempotency-Key after Retry-After \
            seconds), and the answers every route may give",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))),
    )
)]
async fn post_transaction(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match submit_request(&st, path, &headers, body) {
        Ok(cmd) => {
            ask(&st, |reply| {
                Command::Submit(SubmitCmd {
                    req: cmd.0,
                    fingerprint: cmd.1,
                    reply,
                })
            })
            .await
        }
        Err(e) => {
            st.0.metrics.refused(Refusal::Invalid);
            e.into_response()
        }
    }
}

fn submit_request(
    st: &AppState,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(TxRequest, [u8; 32]), ApiError> {
    let account = account_of(path)?;
    let bytes = body.map_err(|e| body_error(st, e))?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if wallet_core::id::check_idempotency_key(k).is_ok() => Some(k.to_string()),
            _ => {
                return Err(error(
                    400,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                ))
            }
        },
    };
    let b = parse_tx_body(&bytes)?;
    // The fingerprint matters only for idempotency.
    let fp = if key.is_some() {
        fingerprint(&b)
    } else {
        [0; 32]
    };
    let req = TxRequest {
        account,
        kind: b.kind,
        amount: b.amount,
        currency: b.currency,
        idempotency_key: key,
        reference: b.reference,
    };
    Ok((req, fp))
}

fn body_error(st: &AppState, e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(
            413,
            "payload_too_large",
            &format!(
                "request body exceeds the limit of {} bytes",
                st.0.body_limit_bytes
            ),
        )
    } else {
        error(400, "invalid_json", &e.body_text())
    }
}

type Params = Result<Query<BTreeMap<String, String>>, QueryRejection>;

fn page_params(
    q: Params,
    cursor: impl Fn(&str) -> bool,
) -> Result<(Option<String>, usize), ApiError> {
    let Query(q) = q.map_err(|e| error(400, "invalid_query", &e.body_text()))?;
    let mut after = None;
    let mut limit = PAGE_LIMIT_DEFAULT;
    for (k, v) in q {
        match k.as_str() {
            "after" => {
                if !v.is_empty() {
                    if !cursor(&v) {
                        return Err(error(
                            400,
                            "invalid_cursor",
                            "the cursor is not one this API returned",
                        ));
                    }
                    after = Some(v);
                }
            }
            "limit" => {
                // Digits only: `usize::from_str` would also take "+5".
                limit = match v.parse::<usize>() {
                    Ok(n)
                        if v.bytes().all(|b| b.is_ascii_digit())
                            && (1..=PAGE_LIMIT_MAX).contains(&n) =>
                    {
                        n
                    }
                    _ => {
                        return Err(error(
                            400,
                            "invalid_limit",
                            &format!("limit must be an integer from 1 to {PAGE_LIMIT_MAX}"),
                        ))
                    }
                }
            }
            other => {
                return Err(error(
                    400,
                    "invalid_query",
                    &format!("unknown query parameter {other:?}: expected after, limit"),
                ))
            }
        }
    }
    Ok((after, limit))
}

/// The account's events in the total order, compensations included.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/transactions",
    tag = "transactions",
    params(
        ("account" = crate::openapi::AccountId, Path, description = "The account"),
        ("after" = Option<String>, Query, pattern = "^([0-9a-f]{2})*$",
            description = "A `next` this API returned (empty: from the start)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
            description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page", body = render::TransactionsPage),
        (status = 400, description = "`invalid_account`, `invalid_cursor`, `invalid_limit`, \
            `invalid_query`", body = ErrorBody),
        (status = 410, description = "`archived_expired`: the history before the cursor is older than the archive retention", body = ErrorBody),
        (status = 500, description = "`archive_unavailable`: the archive of compacted history could not be read", body = ErrorBody),
    )
)]
async fn list_transactions(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    q: Params,
) -> Result<Response, ApiError> {
    let account = account_of(path)?;
    let (after, limit) = page_params(q, |c| render::parse_entry_cursor(c).is_some())?;
    let after = after.and_then(|c| render::parse_entry_cursor(&c));
    Ok(ask(&st, |reply| Command::Transactions {
        account,
        after,
        limit,
        reply,
    })
    .await)
}

/// The account's balance in each currency it has events in.
#[utoipa::path(
    get,
    path = "/v1/accounts/{account}/balances",
    tag = "transactions",
    params(("account" = crate::openapi::AccountId, Path, description = "The account")),
    responses(
        (status = 200, description = "Balances", body = render::BalancesBody),
        (status = 400, description = "`invalid_account`", body = ErrorBody),
    )
)]
async fn balances(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let account = account_of(path)?;
    Ok(ask(&st, |reply| Command::Balances { account, reply }).await)
}

/// One event or compensation with its status.
#[utoipa::path(
    get,
    path = "/v1/transactions/{id}",
    tag = "transactions",
    params(("id" = crate::openapi::TransactionId, Path, description = "An event or compensation id")),
    responses(
        (status = 200, description = "The event or compensation", body = render::EntryView),
        (status = 400, description = "`invalid_transaction_id`", body = ErrorBody),
        (status = 404, description = "`not_found`: this region does not hold it (yet)", body = ErrorBody),
        (status = 410, description = "`archived_expired`: older than the archive retention; `compacted`: folded into a snapshot this region did not archive (it started from a peer's snapshot); its effect is in the balances", body = ErrorBody),
        (status = 500, description = "`archive_unavailable`: the archive of compacted history could not be read", body = ErrorBody),
    )
)]
async fn get_transaction(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path.map_err(|e| error(400, "invalid_transaction_id", &e.body_text()))?;
    Ok(ask(&st, |reply| Command::Transaction { id, reply }).await)
}

/// The compensation feed in feed order (the same on every region).
#[utoipa::path(
    get,
    path = "/v1/compensations",
    tag = "feed",
    params(
        ("after" = Option<String>, Query, pattern = "^([0-9a-f]{2})*$",
            description = "A `next` this API returned (empty: from the start)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000,
            description = "Page size, 1 to 1000 (default 100)"),
    ),
    responses(
        (status = 200, description = "A page of the feed", body = render::CompensationsPage),
        (status = 400, description = "`invalid_cursor`, `invalid_limit`, `invalid_query`", body = ErrorBody),
        (status = 410, description = "`archived_expired`: the feed before the cursor is older than the archive retention", body = ErrorBody),
        (status = 500, description = "`archive_unavailable`: the archive of compacted history could not be read", body = ErrorBody),
    )
)]
async fn compensations(State(st): State<AppState>, q: Params) -> Result<Response, ApiError> {
    let (after, limit) = page_params(q, |c| render::parse_feed_cursor(c).is_some())?;
    let after = after
        .and_then(|c| render::parse_feed_cursor(&c))
        .unwrap_or(0);
    Ok(ask(&st, |reply| Command::Compensations {
        after,
        limit,
        reply,
    })
    .await)
}

/// This region's view: members, watermark, settlement lag, policy.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "region",
    responses((status = 200, description = "Status", body = render::StatusBody))
)]
async fn status(State(st): State<AppState>) -> Response {
    ask(&st, |reply| Command::Status { reply }).await
}

/// Proof held that a member broke the protocol.
#[utoipa::path(
    get,
    path = "/v1/admin/evidence",
    tag = "admin",
    responses((status = 200, description = "Evidence", body = render::EvidenceBody))
)]
async fn evidence(State(st): State<AppState>) -> Response {
    ask(&st, |reply| Command::Evidence { reply }).await
}

/// The policy in force and the policy history.
#[utoipa::path(
    get,
    path = "/v1/policy",
    tag = "region",
    responses((status = 200, description = "Policy", body = render::PolicyBody))
)]
async fn get_policy(State(st): State<AppState>) -> Response {
    ask(&st, |reply| Command::Policy { reply }).await
}

/// Changes the overdraft policy of the whole cluster (a replicated policy event).
#[utoipa::path(
    post,
    path = "/v1/admin/policy",
    tag = "admin",
    request_body(
        description = "The policy file as TOML (application/toml, text/plain), or the same \
            fields as JSON (application/json). Without a Content-Type, a body starting with \
            `{` is JSON, anything else TOML.",
        content(
            (crate::openapi::PolicyDocument = "application/json"),
            (String = "application/toml"),
            (String = "text/plain"),
        )
    ),
    responses(
        (status = 201, description = "The policy event, durable here", body = render::PolicySubmitted),
        (status = 400, description = "`invalid_policy`: the message names the field", body = ErrorBody),
        (status = 409, description = "`policy_refused`", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`", body = ErrorBody),
    )
)]
async fn post_policy(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body.map_err(|e| body_error(&st, e))?;
    let policy = parse_policy_body(&headers, &bytes)?;
    Ok(ask(&st, |reply| Command::SubmitPolicy { policy, reply }).await)
}

/// A policy change body: the policy file as TOML (`text/plain`, `application/toml`), or
/// the same fields as JSON (`application/json`). Without a content type (or curl's default
/// form type), a body starting with `{` is JSON, anything else TOML. The core parses and
/// checks it; its error names the field.
pub(crate) fn parse_policy_body(
    headers: &HeaderMap,
    bytes: &[u8],
) -> Result<wallet_core::Policy, ApiError> {
    let invalid = |m: String| error(400, "invalid_policy", &m);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let sniff = || bytes.trim_ascii_start().first() == Some(&b'{');
    let json = match ct.as_deref() {
        Some("application/json") => true,
        Some("text/plain" | "application/toml" | "text/toml" | "text/x-toml") => false,
        None | Some("" | "application/x-www-form-urlencoded" | "application/octet-stream") => {
            sniff()
        }
        Some(other) => {
            return Err(error(
                415,
                "unsupported_media_type",
                &format!(
                    "Content-Type {other:?}: send the policy as TOML (text/plain or \
                     application/toml) or as JSON (application/json)"
                ),
            ))
        }
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid("the policy body is not UTF-8 text".into()))?;
    let policy = if json {
        let mut de = serde_json::Deserializer::from_str(text);
        let doc: wallet_core::PolicyDocument =
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                let path = e.path().to_string();
                invalid(format!(
                    "policy JSON is not valid at `{path}`: {}",
                    e.inner()
                ))
            })?;
        de.end()
            .map_err(|e| invalid(format!("policy JSON is not valid: {e}")))?;
        wallet_core::Policy::from_document(doc)
    } else {
        wallet_core::Policy::from_toml(text)
    };
    let policy = policy.map_err(|e| invalid(e.to_string()))?;
    Ok(policy)
}

/// Membership as this region has applied it: members in force, retires with the
/// acknowledgements they wait for, cuts.
#[utoipa::path(
    get,
    path = "/v1/admin/members",
    tag = "admin",
    responses((status = 200, description = "Membership", body = render::MembersBody))
)]
async fn get_members(State(st): State<AppState>) -> Response {
    ask(&st, |reply| Command::Members { reply }).await
}

/// Adds a region to the cluster (a replicated join event issued here). Every region that
/// applies it allows and dials the new region; the new region (started with the config
/// `walletd join` wrote) pulls the history and takes traffic once it holds its join.
#[utoipa::path(
    post,
    path = "/v1/admin/members",
    tag = "admin",
    request_body(content = crate::join::JoinBody, content_type = "application/json"),
    responses(
        (status = 201, description = "The join event, durable here", body = render::JoinSubmitted),
        (status = 400, description = "`invalid_json`, `invalid_region`, `invalid_peer_id`, \
            `invalid_key` (the peer id embeds no ed25519 key, or another than `public_key`), \
            `invalid_address`", body = ErrorBody),
        (status = 409, description = "`already_member`, `region_was_retired` (a retired \
            region's name is not reused), `peer_id_in_use`, `region_retired` (this region \
            is retired)", body = ErrorBody),
    )
)]
async fn join_member(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body.map_err(|e| body_error(&st, e))?;
    let req = crate::join::parse_join_request(&bytes).map_err(|(code, m)| error(400, code, &m))?;
    Ok(ask(&st, |reply| Command::JoinMember { req, reply }).await)
}

/// Retires members (one replicated retire event issued here). Every remaining member
/// acknowledges it with the seq it holds of each retired region; the cut (the highest) is
/// known once every acknowledgement is held, and settlement then goes on without them.
#[utoipa::path(
    delete,
    path = "/v1/admin/members/{region}",
    tag = "admin",
    params(("region" = String, Path, description = "The region to retire, or several \
        separated by commas (`ap,sa`): retired by one event, so that two unreachable regions \
        need only the others' acknowledgements")),
    responses(
        (status = 201, description = "The retire event, durable here", body = render::RetireSubmitted),
        (status = 400, description = "`invalid_region`", body = ErrorBody),
        (status = 404, description = "`not_a_member`: not a member in force", body = ErrorBody),
        (status = 409, description = "`membership_refused` (this region itself, a retire \
            already pending), `region_retired` (this region is retired)", body = ErrorBody),
    )
)]
async fn retire_member(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(list) = path.map_err(|e| error(400, "invalid_region", &e.body_text()))?;
    let mut regions = BTreeSet::new();
    for r in list.split(',') {
        regions.insert(RegionId::new(r).map_err(|e| error(400, "invalid_region", &e.to_string()))?);
    }
    let reason = "retired by an operator (DELETE /v1/admin/members)".to_string();
    Ok(ask(&st, |reply| Command::RetireMember {
        regions,
        reason,
        reply,
    })
    .await)
}

/// Rotates this region's signing key: a new ed25519 key (kept 0600 next to the identity
/// key), bound by a replicated rotation event; this region's events above it are signed with
/// the new key, and every member verifies an event against the key valid at its HLC.
#[utoipa::path(
    post,
    path = "/v1/admin/key",
    tag = "admin",
    responses(
        (status = 201, description = "The rotation event, durable here", body = render::KeyRotated),
        (status = 409, description = "`membership_refused`, `region_retired`", body = ErrorBody),
    )
)]
async fn rotate_key(State(st): State<AppState>) -> Response {
    ask(&st, |reply| Command::RotateKey { reply }).await
}

/// A JSON request body of type `T`, or 400 `invalid_json` saying what was `expected`.
fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8], expected: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| error(400, "invalid_json", &format!("expected {expected}: {e}")))
}

/// A region name from a request body, or 400 `invalid_region`.
fn region_of(name: &str) -> Result<RegionId, ApiError> {
    RegionId::new(name).map_err(|e| error(400, "invalid_region", &e.to_string()))
}

/// The body of `POST /v1/admin/seal/waive`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaiveSealRequest {
    /// The member whose seal answer is waived (down for good).
    #[schema(value_type = crate::openapi::RegionId)]
    region: String,
}

/// Lost disk (docs/operations.md): while this region is rebuilt on an empty disk and waits
/// for every member's seal answer, seal without `region`'s (a member down for good). Its
/// old-epoch events above the cut, if it held any, are voided there when it returns.
#[utoipa::path(
    post,
    path = "/v1/admin/seal/waive",
    tag = "admin",
    request_body(content = WaiveSealRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Waived: the members the seal still waits for", body = render::SealWaived),
        (status = 400, description = "`invalid_json`, `invalid_region`", body = ErrorBody),
        (status = 404, description = "`not_a_member`: not another member in force", body = ErrorBody),
        (status = 409, description = "`not_sealing`: this region is not restoring after a lost disk", body = ErrorBody),
    )
)]
async fn waive_seal(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body.map_err(|e| body_error(&st, e))?;
    let b: WaiveSealRequest = json_body(&bytes, "{\"region\":\"<region>\"}")?;
    let region = region_of(&b.region)?;
    Ok(ask(&st, |reply| Command::WaiveSeal { region, reply }).await)
}

/// The body of `POST /v1/admin/accounts/{account}/home`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HomeMoveRequest {
    /// The new home: another member.
    #[schema(value_type = crate::openapi::RegionId)]
    region: String,
    /// The currency whose home moves (homes are per account and currency).
    #[schema(value_type = crate::openapi::CurrencyCode)]
    currency: String,
}

/// Moves the home of a home-mode account (docs/modes.md): a replicated `HomeMove` event with
/// the next fencing epoch, issued here, so this region must be the current home; elsewhere
/// the answer is 409 `not_home` naming the home, where to send the call. From the event on,
/// this region forwards the account's debits to the new home, which decides them once it
/// holds the move.
#[utoipa::path(
    post,
    path = "/v1/admin/accounts/{account}/home",
    tag = "admin",
    params(("account" = crate::openapi::AccountId, Path, description = "The account")),
    request_body(content = HomeMoveRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The home move event, durable here", body = render::HomeMoved),
        (status = 400, description = "`invalid_json`, `invalid_account`, `invalid_region` \
            (not another member), `unknown_currency`", body = ErrorBody),
        (status = 409, description = "`not_home`: this region is not the account's home \
            (the message names it: send the call there); `not_home_mode`: the account is not in \
            home mode in this currency; `region_retired`", body = ErrorBody),
    )
)]
async fn move_home(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let account = account_of(path)?;
    let bytes = body.map_err(|e| body_error(&st, e))?;
    let b: HomeMoveRequest =
        json_body(&bytes, "{\"region\":\"<region>\",\"currency\":\"<code>\"}")?;
    let to = region_of(&b.region)?;
    let currency =
        Currency::parse(&b.currency).map_err(|e| error(400, "unknown_currency", &e.to_string()))?;
    Ok(ask(&st, |reply| Command::MoveHome {
        account,
        currency,
        to,
        reply,
    })
    .await)
}

/// Cuts replication with regions off, or heals (only with `[faults] enabled = true`).
#[utoipa::path(
    post,
    path = "/v1/admin/faults",
    tag = "admin",
    request_body(content = crate::openapi::FaultsRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The regions now cut off", body = render::FaultsBody),
        (status = 400, description = "`invalid_json`, `invalid_region`", body = ErrorBody),
        (status = 404, description = "`not_found`: fault injection is disabled", body = ErrorBody),
    )
)]
async fn faults(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !st.0.faults_enabled {
        return Err(error(
            404,
            "not_found",
            "fault injection is disabled on this region ([faults] enabled = false)",
        ));
    }
    let bytes = body.map_err(|e| body_error(&st, e))?;
    let set = parse_faults_body(&bytes)?;
    Ok(ask(&st, |reply| Command::Faults {
        isolate: set,
        reply,
    })
    .await)
}

/// `{"isolate":[regions]}` or `{"heal":true}`, nothing else (no other field).
pub(crate) fn parse_faults_body(bytes: &[u8]) -> Result<BTreeSet<RegionId>, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        error(
            400,
            "invalid_json",
            &format!("request body is not valid JSON: {e}"),
        )
    })?;
    let usage = "expected {\"isolate\":[\"<region>\",...]} or {\"heal\":true}";
    let Value::Object(m) = &v else {
        return Err(error(400, "invalid_json", usage));
    };
    let mut set = BTreeSet::new();
    match (m.get("isolate"), m.get("heal"), m.len()) {
        (Some(Value::Array(list)), None, 1) => {
            for r in list {
                let s = r
                    .as_str()
                    .ok_or_else(|| error(400, "invalid_json", usage))?;
                let r =
                    RegionId::new(s).map_err(|e| error(400, "invalid_region", &e.to_string()))?;
                set.insert(r);
            }
        }
        (None, Some(Value::Bool(true)), 1) => {}
        _ => return Err(error(400, "invalid_json", usage)),
    }
    Ok(set)
}

/// `/metrics`: the registry (HTTP and storage metrics, libp2p's, process) and the actor's
/// latest published snapshot, in the OpenMetrics text format; never waits for the actor, so
/// a flood of scrapes cannot queue ahead of payments.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "OpenMetrics text format (docs/operations.md#metrics)",
            body = String, content_type = "application/openmetrics-text"),
        (status = 500, description = "`internal`: the metrics could not be encoded", body = ErrorBody),
    )
)]
async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let free = st.0.in_flight.available_permits();
    st.0.metrics.set_http_in_flight(
        u64::try_from(st.0.limits.concurrency_max.saturating_sub(free)).unwrap_or(u64::MAX),
    );
    let text =
        st.0.metrics
            .encode()
            .map_err(|_| error(500, "internal", "metrics could not be encoded"))?;
    let mut r = Response::new(axum::body::Body::from(text));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
    );
    Ok(r)
}

/// Liveness: 200 while the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive", body = render::HealthBody))
)]
async fn healthz() -> Response {
    json_response(200, "{\"status\":\"ok\"}")
}

/// Readiness: storage loaded and not restoring.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = render::ReadyBody),
        (status = 503, description = "`not_ready`, `restoring`, `joining`, `storage_unavailable`", body = ErrorBody),
    )
)]
async fn readyz(State(st): State<AppState>) -> Result<Response, ApiError> {
    let sh = &st.0.shared;
    if sh.storage_failed.load(Ordering::Acquire) {
        return Err(error(503, "storage_unavailable", "storage failed"));
    }
    if sh.restoring.load(Ordering::Acquire) {
        return Err(error(
            503,
            "restoring",
            "restoring this region's history from its peers",
        ));
    }
    if sh.joining.load(Ordering::Acquire) {
        return Err(error(
            503,
            "joining",
            "joining the cluster: waiting for its join event (POST /v1/admin/members)",
        ));
    }
    if !sh.ready.load(Ordering::Acquire) {
        return Err(error(503, "not_ready", "storage is still loading"));
    }
    Ok(json_response(200, "{\"ready\":true}"))
}

/// This document (no token needed).
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn openapi() -> Response {
    json_response(200, crate::openapi::document_json())
}

/// This document at its first address (use `/v1/openapi.json`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn openapi_legacy() -> Response {
    json_response(200, crate::openapi::document_json())
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        reply_response(self)
    }
}

/// Fuzzing entry point (fuzz/fuzz_targets/http_body.rs): parses `bytes` as a transaction body
/// with the fast path (and its fallback) and with the precise slow path; panics if the fast
/// path accepts a body the slow path reads differently.
#[doc(hidden)]
pub fn fuzz_tx_body(bytes: &[u8]) {
    let fast = parse_tx_body(bytes);
    let slow = parse_tx_body_slow(bytes);
    if let (Ok(f), Ok(s)) = (&fast, &slow) {
        assert_eq!(
            fingerprint(f),
            fingerprint(s),
            "fast and slow parsers disagree"
        );
    }
    if let Err(e) = &fast {
        assert!(
            e.status == 400,
            "a body error must be a 400, got {}",
            e.status
        );
    }
}
