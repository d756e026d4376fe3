//! `switchctl proxy`: the daemon. Starts the data plane on the configured
//! (or systemd-provided) listeners with the route table of the persisted
//! active color, then the controller and the admin API; tells systemd it is
//! ready; on SIGTERM/SIGINT stops accepting, drains, and exits 0. Upstreams
//! are left running: a restart of the daemon is not a deploy.
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
use crate::controller::state::StateStore;
use crate::controller::{route_table, Controller, UpstreamSet};
use crate::driver::Driver;
use crate::upgrade::{Handoff, Relaunch, Upgrader};

/// Run the daemon until SIGTERM or SIGINT, or until a successor took over.
/// `handoff`: the sockets of the daemon this one succeeds.
pub async fn run(config_path: PathBuf, config: Config, mut handoff: Option<Handoff>) -> anyhow::Result<()> {
    // Now, while the binary and the config are where they were started from.
    let relaunch = Relaunch::resolve(&config_path).map_err(|e| {
        tracing::warn!("`switchctl upgrade` will not work: {e:#}");
        format!("{e:#}")
    });
    let adopted = handoff.as_mut().and_then(Handoff::take_listeners);
    let state = StateStore::new(&config.state_dir).load()?;
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
    let proxy = if let Some(listeners) = adopted {
        crate::upgrade::adopt(&config, listeners, table)?
    } else if inherited.is_empty() {
        Proxy::bind(config.proxy.proxy_config(), &config.proxy.listen, table)?
    } else {
        Proxy::from_listeners(config.proxy.proxy_config(), inherited, table)?
    };
    let proxy = Arc::new(proxy);

    let admin_group = &config.proxy.admin_group;
    let admin_listener = match &handoff {
        Some(h) => admin::server::bind_fresh(&h.admin_socket(&config.proxy.admin_socket), admin_group)?,
        None => admin::server::bind(&config.proxy.admin_socket, admin_group).await?,
    };
    let socket_path = config.proxy.admin_socket.clone();
    let drain_timeout = config.proxy.drain_timeout;
    let driver = Driver::new(&config);
    let active = state.active_release().map(|(c, r)| format!("{c} ({})", r.tag));
    let controller = Controller::new(config_path, config, proxy.clone(), driver, state, upstreams);

    let shutdown = CancellationToken::new();
    let upgrader = Upgrader::new(controller.clone(), proxy.clone(), relaunch, socket_path.clone());
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

    let addrs: Vec<String> = proxy.local_addrs().iter().map(|a| a.to_string()).collect();
    tracing::info!(
        listen = %addrs.join(", "),
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
        }
        None => {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        }
    }

    let succeeded = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: draining and stopping"); false }
        _ = int.recv() => { tracing::info!("SIGINT: draining and stopping"); false }
        _ = upgrader.took_over() => { tracing::info!("a new daemon took over: draining and stopping"); true }
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
    if !succeeded {
        // After an upgrade the path is the successor's socket.
        let _ = std::fs::remove_file(&socket_path);
    }
    tracing::info!("stopped");
    Ok(())
}
