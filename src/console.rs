//! The operator console: `GET /ui`, one page whose HTML, script and style are embedded in the
//! binary (no build step). The page itself holds no data and is served without a token; its
//! script asks for an admin token, keeps it in the tab's `sessionStorage` and reads the JSON
//! API with it (`Authorization: Bearer`), polling every 1.5 s (docs/security.md, "The operator
//! console"). Served with a strict Content-Security-Policy: only these same-origin files run,
//! and the page only talks to its own origin.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The page.
pub const INDEX_HTML: &str = include_str!("console/index.html");
/// Its script.
pub const APP_JS: &str = include_str!("console/app.js");
/// Its style sheet.
pub const APP_CSS: &str = include_str!("console/app.css");

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /ui`.
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`.
pub async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/app.css`.
pub async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page loads only its own two files (no inline script or style, which the CSP
    /// forbids) and the script only calls the JSON API of its own origin.
    #[test]
    fn page_loads_only_embedded_same_origin_assets() {
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style") && !INDEX_HTML.contains(" style="));
        // No inline event handler (`onclick=` …): the CSP would refuse it anyway.
        assert!(!INDEX_HTML
            .split_whitespace()
            .any(|w| w.starts_with("on") && w.contains('=')));
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("eval("));
        assert!(!APP_JS.contains("http://") && !APP_JS.contains("https://"));
        assert!(APP_JS.contains("sessionStorage") && !APP_JS.contains("localStorage"));
    }
}
