//! The HTTP server loop: accept with a connection limit, optional TLS (rustls, reloadable),
//! HTTP/1.1 with a header-read time-out, graceful shutdown. The per-request limits (time-out,
//! concurrency, rate) are layers of the router (crate::http); see docs/security.md.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::metrics::Metrics;

/// Longest TLS handshake before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after an accept error (e.g. out of file descriptors) before accepting again.
pub const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// Longest wait for open connections to finish at shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most open connections; more are accepted and closed at once.
    pub connections_max: usize,
    /// A request's head must arrive within this (idle keep-alive connections too).
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers), bytes; more gets a 431.
    pub header_bytes_max: usize,
}

/// TLS files of the HTTP API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (must be 0600).
    pub key: PathBuf,
    /// PEM CA certificates of the clients: when set, clients must present a certificate
    /// signed by one of them (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// A TLS setup problem (file, and why; never the key itself).
#[derive(Debug, thiserror::Error)]
#[error("tls: {path}: {reason}")]
pub struct TlsError {
    /// File.
    pub path: String,
    /// Why.
    pub reason: String,
}

fn tls_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls server config from PEM files (HTTP/1.1 over ALPN).
pub fn load_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    crate::secret::check_private(&files.key, "TLS key").map_err(|e| tls_err(&files.key, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| tls_err(&files.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(&files.cert, e))?;
    if certs.is_empty() {
        return Err(tls_err(&files.cert, "no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|_| tls_err(&files.key, "not a PEM private key"))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(&files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| tls_err(ca, e))? {
                roots
                    .add(c.map_err(|e| tls_err(ca, e))?)
                    .map_err(|e| tls_err(ca, e))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| tls_err(ca, e))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&files.cert, e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The TLS config in use; SIGHUP swaps in a new one (new connections use it).
#[derive(Clone)]
pub struct TlsState {
    files: TlsFiles,
    current: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

impl TlsState {
    /// Loads the files.
    pub fn new(files: TlsFiles) -> Result<TlsState, TlsError> {
        let cfg = load_tls(&files)?;
        Ok(TlsState {
            files,
            current: Arc::new(RwLock::new(cfg)),
        })
    }

    /// Re-reads the files (or `files`, if the config names new ones); keeps the running
    /// config on error.
    pub fn reload(&self, files: Option<&TlsFiles>) -> Result<(), TlsError> {
        let cfg = load_tls(files.unwrap_or(&self.files))?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = cfg;
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// (up to [`SHUTDOWN_GRACE`]).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsState>,
    limits: ConnLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let (tcp, _peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.http_connection_refused();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.clone();
        let mut stop = stop_rx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.http_connection_opened();
            let svc = TowerToHyperService::new(app);
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.header_bytes_max.max(8192))
                .max_header_size(limits.header_bytes_max);
            match tls {
                None => {
                    let conn = b.serve_connection(TokioIo::new(tcp), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                }
                Some(t) => {
                    let hs = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, t.acceptor().accept(tcp));
                    let Ok(Ok(stream)) = hs.await else {
                        metrics.http_connection_closed();
                        return;
                    };
                    let conn = b.serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped(&mut stop) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                }
            }
            metrics.http_connection_closed();
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(limits.connections_max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Raises this process's soft limit of open files to its hard limit (a server with
/// `connections_max` connections needs that many descriptors). Returns the new soft limit.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        setrlimit(Resource::Nofile, l).ok()?;
    }
    getrlimit(Resource::Nofile).current
}
