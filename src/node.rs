//! Process wiring of a region: open storage and rebuild the replica ([`start`]), start the
//! storage writer, the transport and the actor, serve HTTP until a signal, then shut down in
//! order ([`run`]). The actor itself is in [`crate::actor`].

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use wallet_core::Replica;
use wallet_p2p::{MemberAddr, NetConfig, NetHandle};

use crate::actor::{self, Actor, ActorHandle, ActorParts};
use crate::command::{PolicyFileIgnored, Shared};
use crate::config::NodeConfig;
use crate::idempotency::IdemCache;
use crate::metrics::Metrics;
use crate::storage::{self, Storage};

/// Start-up failures of the node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Bad configuration (field and reason).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Storage cannot be opened or is corrupt.
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    /// The archive of compacted history cannot be opened or is corrupt.
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    /// Key or transport problems.
    #[error("{0}")]
    Net(String),
    /// HTTP listener.
    #[error("http listen {addr}: {reason}")]
    Http {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// A node built and loaded, ready to serve.
pub struct Started {
    /// The actor.
    pub actor: ActorHandle,
    /// Writer thread.
    pub writer: std::thread::JoinHandle<()>,
    /// Shared flags.
    pub shared: Arc<Shared>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Transport handle.
    pub net: NetHandle,
}

/// Opens storage, rebuilds the replica, starts the writer, the transport and the actor.
pub fn start(cfg: &NodeConfig) -> Result<Started, NodeError> {
    // Whoever reads the identity key can sign events every region accepts.
    crate::secret::check_private(&cfg.identity_key, "identity key").map_err(|e| {
        crate::config::ConfigError::Invalid {
            field: "identity_key".into(),
            reason: e.to_string(),
        }
    })?;
    let keypair = wallet_p2p::load_or_create_keypair(&cfg.identity_key)
        .map_err(|e| NodeError::Net(format!("config error: identity_key: {e}")))?;
    let my_peer = wallet_p2p::peer_id_of(&keypair);
    for (i, m) in cfg.members.iter().enumerate() {
        if m.region == cfg.region && m.peer_id != my_peer {
            return Err(crate::config::ConfigError::Invalid {
                field: format!("members[{i}].peer_id"),
                reason: format!(
                    "{} does not match the identity key {} (its peer id is {my_peer})",
                    m.peer_id,
                    cfg.identity_key.display()
                ),
            }
            .into());
        }
    }
    storage::check_data_dir(
        &cfg.data_dir,
        &format!("region={} cluster={}", cfg.region, cfg.cluster),
        cfg.storage_backend,
    )?;
    let (mut store, loaded) = Storage::open(&cfg.data_dir, cfg.storage_backend)?;
    let file_hash = cfg.policy.hash();
    if loaded.recorded_policy.is_none() {
        store.record_policy(&cfg.policy)?;
    }
    // The policy history wins over the file (SPEC §6, issue 12): version 1 is the seed
    // recorded at the first start. A file edited since is ignored, loudly; settlement goes on.
    // (A store from before the seed document was recorded has only its hash: then the core
    // reports the mismatch and settles nothing new until the file matches again.)
    let (seed_policy, policy_file_ignored) = match loaded.recorded_policy_doc {
        Some(doc) if doc.hash() != file_hash => {
            let ignored = PolicyFileIgnored {
                file_hash,
                recorded_hash: doc.hash(),
            };
            tracing::warn!(
                file = %cfg.policy_source,
                file_hash = %hex::encode(ignored.file_hash.0),
                recorded_hash = %hex::encode(ignored.recorded_hash.0),
                "the policy file differs from the seed policy recorded in this region's history: \
                 the recorded seed stays version 1 and settlement continues; the file is ignored \
                 (change the policy with POST /v1/admin/policy, see docs/operations.md)"
            );
            (doc, Some(ignored))
        }
        _ => (cfg.policy.clone(), None),
    };
    let seed = seed_policy.hash();
    let restore = if loaded.fresh {
        cfg.restore
    } else {
        if cfg.restore && !loaded.restore_pending {
            tracing::info!(
                "restore = true ignored: the data dir already holds this region's state"
            );
        }
        loaded.restore_pending
    };
    let member_ids: Vec<(wallet_core::RegionId, libp2p::PeerId)> =
        cfg.members.iter().map(|m| (m.region, m.peer_id)).collect();
    let keypair_for_backfill = keypair.clone();
    let auth = wallet_p2p::Ed25519Auth::new(keypair.clone(), &member_ids)
        .map_err(|e| NodeError::Net(format!("config error: members: {e}")))?;
    // A rotated signing key (POST /v1/admin/key): staged, and signed with again once the
    // replica replays the rotation event that binds it.
    let key_stage = auth.key_stage();
    let rotated_key = wallet_p2p::rotated_key_path(&cfg.identity_key);
    if let Some(kp) = wallet_p2p::load_rotated_key(&rotated_key)
        .map_err(|e| NodeError::Net(format!("rotated key: {e}")))?
    {
        key_stage.stage(kp);
    }
    // Anti-entropy settings (periodic pull, pull batch) are the core's defaults: the scheduler
    // is the core's, and walletd only moves its messages, time and connection events.
    let rcfg = wallet_core::Config {
        cluster: cfg.cluster.clone(),
        max_clock_skew_ms: cfg.max_clock_skew_ms,
        heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        idempotency_retention_ms: cfg.idempotency_retention_ms,
        forward_timeout_ms: cfg.forward_timeout_ms,
        snapshot_chunk_bytes: cfg.snapshot_chunk_bytes,
        auth: Box::new(auth),
        recorded_policy: loaded.recorded_policy,
        restore,
        // A restore is a lost disk: the region rejoins under a new origin epoch.
        seal_on_restore: true,
        // Origins with `ack = "peer"` hear of their events' durability here at once.
        durable_acks: true,
        // `ack = "peer"`: a debit decided at its home is answered once durable here too.
        ack_peer: cfg.ack_peer,
        // Kept in the config after the join: the reloaded join event ends it again.
        joining: cfg.join,
        ..wallet_core::Config::new(
            cfg.region,
            cfg.members.iter().map(|m| m.region).collect(),
            seed_policy,
        )
    };
    let n_events = loaded.events.len();
    let mut replica = Replica::new(rcfg, loaded.ceiling);
    // Evidence first: its origins stay frozen, so nothing of theirs settles on load.
    let n_evidence = loaded.evidence.len();
    let restored = replica.restore_evidence(loaded.evidence);
    if restored != n_evidence {
        tracing::warn!(
            stored = n_evidence,
            restored,
            "some stored evidence no longer proves anything (origin no longer a member?)"
        );
    }
    if restored > 0 {
        tracing::error!(
            evidence = restored,
            "this region holds evidence that a member broke the protocol: settlement stays \
             stopped until an operator acts (GET /v1/admin/evidence)"
        );
    }
    match &loaded.snapshot {
        // After a compaction: the snapshot, then the events stored after it.
        Some(s) => {
            replica
                .restore(s, loaded.events)
                .map_err(|e| storage::StorageError::Corrupt {
                    path: cfg
                        .storage_backend
                        .file_path(&cfg.data_dir)
                        .display()
                        .to_string(),
                    what: format!("meta[snapshot] does not restore: {e}"),
                })?
        }
        None => replica.load(loaded.events),
    }
    replica.restore_watermark(loaded.watermark);
    if replica.event_count() != n_events as u64 {
        tracing::warn!(
            stored = n_events,
            loaded = replica.event_count(),
            "some stored events were not loaded (origin no longer a member?)"
        );
    }
    tracing::info!(events = n_events, watermark = %loaded.watermark, ceiling = %loaded.ceiling,
        restoring = replica.is_restoring(), policy = %seed, "storage loaded");

    let metrics = Arc::new(Metrics::new());
    // The feed rebuilt from storage was settled (and counted) before the restart; the replica
    // does not emit it again, so the counters start from it. Only compensations settled from
    // now on are counted as they are emitted.
    let mut restored_comps: BTreeMap<&'static str, u64> = BTreeMap::new();
    for c in replica.feed(0, usize::MAX) {
        *restored_comps.entry(c.kind.as_str()).or_insert(0) += 1;
    }
    for (kind, n) in restored_comps {
        metrics.compensations_settled(kind, n);
    }
    let shared = Arc::new(Shared::default());
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let (writer_tx, writer) = storage::spawn_writer(
        store,
        cfg.group_commit,
        cfg.commit_batch_records_max,
        metrics.clone(),
        done_tx,
    )?;
    let net_cfg = NetConfig {
        region: cfg.region,
        keypair,
        listen: cfg.p2p_listen.clone(),
        members: cfg
            .members
            .iter()
            .map(|m| MemberAddr {
                region: m.region,
                peer_id: m.peer_id,
                addrs: m.addrs.clone(),
            })
            .collect(),
        cluster: cfg.cluster.clone(),
        peer_inbound_bytes_max: cfg.peer_inbound_bytes_max,
    };
    let (net, net_rx) = metrics
        .with_registry(|reg| wallet_p2p::spawn_with_metrics(net_cfg, reg))
        .map_err(|e| NodeError::Net(e.to_string()))?;
    // The archive of compacted history: opened when this region compacts, or compacted once.
    let archive_dir = cfg.data_dir.join(crate::archive::ARCHIVE_DIR_NAME);
    let archive = if cfg.compact_every_events > 0 || archive_dir.exists() {
        Some(crate::archiver::Archiver::spawn(
            crate::archive::Archive::open(
                &cfg.data_dir,
                cfg.archive_segment_bytes,
                cfg.archive_retention_ms,
                crate::clock::now_ms(),
            )?,
        )?)
    } else {
        None
    };
    // The archive backfill (a bootstrap from a peer's snapshot): verifies with the
    // configured members' keys, and resumes a fetch under way.
    let backfill_auth = wallet_p2p::Ed25519Auth::new(keypair_for_backfill, &member_ids)
        .map_err(|e| NodeError::Net(format!("config error: members: {e}")))?;
    let mut backfill = crate::backfill::Host::new(
        cfg.data_dir.clone(),
        cfg.archive_segment_bytes,
        cfg.archive_retention_ms,
        cfg.region,
        cfg.cluster.clone(),
        Box::new(backfill_auth),
        cfg.members
            .iter()
            .map(|m| m.region)
            .filter(|r| *r != cfg.region)
            .collect(),
        net.clone(),
    );
    backfill.resume();
    let actor = Actor::new(ActorParts {
        backfill: Some(backfill),
        compact_every_events: cfg.compact_every_events,
        archive,
        forward_timeout_ms: cfg.forward_timeout_ms,
        replica,
        net: net.clone(),
        writer: writer_tx,
        metrics: metrics.clone(),
        shared: shared.clone(),
        cluster: cfg.cluster.clone(),
        idem: IdemCache::restore(loaded.idem, cfg.idempotency_retention_ms),
        record_restore: loaded.fresh,
        policy_file_ignored,
        key_stage,
        rotated_key,
        peers: cfg.members.iter().map(|m| (m.region, m.peer_id)).collect(),
        peer_ack_ms: cfg.ack_peer.then_some(cfg.peer_ack_timeout_ms),
    });
    let actor = actor::spawn(actor, net_rx, done_rx);
    shared.ready.store(true, Ordering::Release);
    Ok(Started {
        actor,
        writer,
        shared,
        metrics,
        net,
    })
}

/// Runs a region until SIGTERM/SIGINT: start, serve HTTP, then shut down gracefully
/// (stop accepting, finish in-flight commits, stop the writer).
pub async fn run(cfg: NodeConfig) -> Result<(), NodeError> {
    let fds = crate::serve::raise_fd_limit();
    let tls = match &cfg.tls {
        None => None,
        Some(files) => Some(crate::serve::TlsState::new(files.clone()).map_err(|e| {
            crate::config::ConfigError::Invalid {
                field: "http.tls".into(),
                reason: e.to_string(),
            }
        })?),
    };
    let listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .map_err(|e| NodeError::Http {
            addr: cfg.http_listen.to_string(),
            reason: e.to_string(),
        })?;
    let http_addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| cfg.http_listen.to_string());
    let metrics_listener = match cfg.metrics_listen {
        None => None,
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| NodeError::Http {
                    addr: a.to_string(),
                    reason: e.to_string(),
                })?,
        ),
    };
    let started = start(&cfg)?;
    let state = crate::http::AppState::new(
        &cfg,
        started.actor.commands.clone(),
        started.shared.clone(),
        started.metrics.clone(),
    );
    spawn_reloader(&cfg, state.clone(), tls.clone())?;
    let app = crate::http::router(state.clone());
    let limits = crate::serve::ConnLimits {
        connections_max: cfg.http_limits.connections_max,
        header_read_timeout: std::time::Duration::from_millis(
            cfg.http_limits.header_read_timeout_ms,
        ),
        header_bytes_max: cfg.http_limits.header_bytes_max,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = metrics_listener.map(|l| {
        let app = crate::http::metrics_router(state.clone());
        let metrics = started.metrics.clone();
        let mut stop = stop_rx.clone();
        let limits = crate::serve::ConnLimits {
            connections_max: 64,
            ..limits
        };
        tokio::spawn(async move {
            crate::serve::serve(l, app, None, limits, metrics, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        })
    });
    let p2p: Vec<String> = cfg.p2p_listen.iter().map(|a| a.to_string()).collect();
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "walletd {} ready http={} p2p={}",
        cfg.region,
        http_addr,
        p2p.join(",")
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tracing::info!(region = %cfg.region, http = %http_addr, scheme, open_files_max = ?fds, "ready");

    crate::serve::serve(
        listener,
        app,
        tls,
        limits,
        started.metrics.clone(),
        shutdown_signal(),
    )
    .await;
    let _ = stop_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    let Started { actor, writer, .. } = started;
    actor.shutdown().await;
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP re-reads the config file and swaps in its tokens (rotation: list the new token next
/// to the old, SIGHUP, move the clients, remove the old, SIGHUP). A config that no longer
/// loads is reported and the running settings stay. The handler is installed before the
/// ready line, so a SIGHUP never kills a ready region.
fn spawn_reloader(
    cfg: &NodeConfig,
    state: crate::http::AppState,
    tls: Option<crate::serve::TlsState>,
) -> Result<(), NodeError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())
            .map_err(|e| NodeError::Net(format!("SIGHUP handler: {e}")))?;
        let path = cfg.path.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match NodeConfig::load(&path) {
                    Ok(c) => {
                        let (client, admin) = state.reload_tokens(&c);
                        tracing::info!(
                            client_tokens = client,
                            admin_tokens = admin,
                            "SIGHUP: tokens reloaded"
                        );
                        if let Some(t) = &tls {
                            match t.reload(c.tls.as_ref()) {
                                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                                Err(e) => tracing::error!(
                                    error = %e,
                                    "SIGHUP: TLS reload failed; keeping the running certificate"
                                ),
                            }
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: config does not load; keeping the running settings");
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = (cfg, state, tls);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("signal received");
}

/// Runs a region on a new multi-threaded runtime until it shuts down, and returns the process
/// exit code: 0 after a clean shutdown, 2 for a configuration error found at start, 1 when it
/// could not start otherwise. `walletd run` and the benchmarks' embedded regions share it.
pub fn run_blocking(cfg: NodeConfig) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(NodeError::Storage(_))
            if crate::defects::is(crate::defects::Defect::QuietStorageErrors) =>
        {
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("walletd: {e}");
            tracing::error!(error = %e, "walletd failed to start");
            if matches!(e, NodeError::Config(_)) {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}
