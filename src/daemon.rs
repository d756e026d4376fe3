//! `switchctl proxy`: the daemon. Starts the data plane on the configured
//! (or systemd-provided) listeners with the route table of the persisted
//! active color, then the controller and the admin API; tells systemd it is
//! ready (and, with `proxy.metrics_listen`, serves `/metrics`); on SIGTERM/SIGINT stops accepting, drains, and exits 0. Upstreams
//! are left running: a restart of the daemon is not a deploy.
//!
//! With `[proxy.tls]` it also serves TLS (sockets from systemd are told
//! apart by port, see [`crate::tls::split_inherited`]), reloads the
//! certificate files on SIGHUP, and runs ACME in the background.
//!
//! `switchctl upgrade` ([`crate::upgrade`]) starts a successor that adopts
//! the listening sockets; once it is ready, this daemon drains and exits 0
//! the same way, leaving the sockets (and the admin socket path) to it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use switchctl_proxy::Proxy;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::config::Config;
use crate::controller::recover::startup_state;
use crate::controller::{route_table, Controller, UpstreamSet};
use crate::driver::Driver;
use crate::upgrade::{Handoff, Relaunch, StateLock, Upgrader};

/// Run the daemon until SIGTERM or SIGINT, or until a successor took over.
/// `handoff`: the sockets (and the `state_dir` lock) of the daemon this one
/// succeeds.
pub async fn run(config_path: PathBuf, config: Config, mut handoff: Option<Handoff>) -> anyhow::Result<()> {
    // First thing: SIGHUP's default action would end the process.
    let mut hup = signal(SignalKind::hangup())?;
    if let Err(e) = crate::memory::purge_in_background() {
        tracing::warn!("memory freed by closed connections will be handed back to the system late: jemalloc's background thread did not start: {e}");
    }
    // Now, while the binary and the config are where they were started from.
    let relaunch = Relaunch::resolve(&config_path).map_err(|e| {
        tracing::warn!("`switchctl upgrade` will not work: {e:#}");
        format!("{e:#}")
    });
    let state_lock = match handoff.as_mut().and_then(Handoff::take_state_lock) {
        Some(inherited) => StateLock::Inherited(inherited),
        None => StateLock::Own(lock_state_dir(&config.state_dir)?),
    };
    let adopted = handoff.as_mut().and_then(Handoff::take_listeners);
    let driver = Driver::new(&config);
    let (state, problems) = startup_state(&config, &driver).await?;
    let upstreams = Arc::new(UpstreamSet::default());
    let table = route_table(&config, state.active_release().map(|(_, r)| r), &upstreams);

    let mut fds = listenfd::ListenFd::from_env();
    let mut inherited = Vec::new();
    for i in 0..fds.len() {
        if let Some(l) = fds
            .take_tcp_listener(i)
            .context("systemd passed a socket that is not TCP")?
        {
            inherited.push(l);
        }
    }
    let proxy = match (adopted, crate::tls::tls_config(&config)) {
        (Some(listeners), tls) => crate::upgrade::adopt(&config, listeners, tls, table)?,
        (None, None) if inherited.is_empty() => Proxy::bind(config.proxy.proxy_config(), &config.proxy.listen, table)?,
        (None, None) => Proxy::from_listeners(config.proxy.proxy_config(), inherited, table)?,
        (None, Some(tls)) if inherited.is_empty() => {
            let tls_listen = config.proxy.tls.as_ref().map(|t| t.listen.clone()).unwrap_or_default();
            Proxy::bind_with_tls(
                config.proxy.proxy_config(),
                &config.proxy.listen,
                &tls_listen,
                tls,
                table,
            )?
        }
        (None, Some(tls)) => {
            let (plain, secure) = crate::tls::split_inherited(&config, inherited);
            Proxy::from_listeners_with_tls(config.proxy.proxy_config(), plain, secure, tls, table)?
        }
    };
    let proxy = Arc::new(proxy);
    let cert_sources = config.tls_sources();
    let acme = match proxy.certs() {
        Some(certs) => crate::acme::Acme::new(&config, certs.clone())?,
        None => None,
    };

    let admin_group = &config.proxy.admin_group;
    let admin_listener = match &handoff {
        Some(h) => admin::server::bind_fresh(&h.admin_socket(&config.proxy.admin_socket), admin_group)?,
        None => admin::server::bind(&config.proxy.admin_socket, admin_group).await?,
    };
    let metrics_listener = match config.proxy.metrics_listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    let socket_path = config.proxy.admin_socket.clone();
    let drain_timeout = config.proxy.drain_timeout;
    let active = state.active_release().map(|(c, r)| format!("{c} ({})", r.tag));
    let upstream_logs = match &driver {
        Driver::Process(p) => Some(p.log_dir().to_path_buf()),
        Driver::Docker(_) => None,
    };
    let controller = Controller::new(config_path, config, proxy.clone(), driver, state, upstreams);
    for problem in problems {
        controller.problem(problem);
    }

    let shutdown = CancellationToken::new();
    if let Some(dir) = upstream_logs {
        tokio::spawn(crate::driver::logs::keep_bounded(dir, shutdown.clone()));
    }
    if let Some(acme) = acme {
        acme.start(shutdown.clone());
        controller.attach_acme(acme);
    }
    let upgrader = Upgrader::new(
        controller.clone(),
        proxy.clone(),
        relaunch,
        socket_path.clone(),
        state_lock.handle(),
    );
    let admin_task = tokio::spawn(admin::server::serve(
        admin_listener,
        controller.clone(),
        upgrader.clone(),
        shutdown.clone(),
    ));
    tokio::spawn({
        let controller = controller.clone();
        async move { controller.recover().await }
    });
    tokio::spawn(controller.clone().supervise(shutdown.clone()));
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(metrics = %addr, "Prometheus metrics at http://{addr}/metrics");
        }
        let registry = Arc::new(crate::metrics::Metrics::registry(controller.clone()));
        tokio::spawn(crate::metrics::serve(listener, registry, shutdown.clone()));
    }

    let addrs: Vec<String> = proxy.local_addrs().iter().map(|a| a.to_string()).collect();
    let tls_addrs: Vec<String> = proxy.tls_addrs().iter().map(|a| a.to_string()).collect();
    tracing::info!(
        listen = %addrs.join(", "),
        tls = %tls_addrs.join(", "),
        admin = %socket_path.display(),
        active = %active.as_deref().unwrap_or("none (every request gets 503 until the first deploy)"),
        "switchctl proxy ready"
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    match handoff {
        // The old daemon waits for a recovered successor.
        Some(handoff) => {
            controller.recovered().await;
            handoff.ready().await?;
            state_lock.record_pid();
        }
        None => {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
    }

    let succeeded = loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining and stopping"); break false }
            _ = int.recv() => { tracing::info!("SIGINT: draining and stopping"); break false }
            _ = upgrader.took_over() => { tracing::info!("a new daemon took over: draining and stopping"); break true }
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading certificate files");
                crate::tls::reload(&proxy, cert_sources.clone()).await;
            }
        }
    };
    // After an upgrade the successor is the service (MAINPID): not stopping.
    if !succeeded {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    }
    shutdown.cancel();
    proxy.shutdown();
    if tokio::time::timeout(drain_timeout + Duration::from_secs(5), proxy.stopped())
        .await
        .is_err()
    {
        tracing::warn!("proxy workers did not stop in time");
    }
    admin_task.abort();
    if succeeded {
        // The successor holds the state_dir lock through the same open file.
        state_lock.leave_to_successor();
    } else {
        // Ours to remove: only after an upgrade is the path the successor's.
        let _ = std::fs::remove_file(&socket_path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Lock `state_dir` for this daemon (flock on `state_dir/daemon.lock`, held
/// until it exits): two daemons on one state would undo each other's work.
fn lock_state_dir(state_dir: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create state_dir {}", state_dir.display()))?;
    let path = state_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            let _ = lock.set_len(0);
            let _ = lock.rewind();
            let _ = write!(lock, "{}", std::process::id());
            Ok(lock)
        }
        Err((mut file, errno)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => "another switchctl daemon".to_string(),
                pid => format!("another switchctl daemon (pid {pid})"),
            };
            anyhow::bail!(
                "{holder} uses state_dir {} (lock {}: {errno}); two daemons on one state dir would undo each \
                 other's work: stop it first (systemctl stop switchctl), or give this one its own state_dir",
                state_dir.display(),
                path.display()
            )
        }
    }
}
