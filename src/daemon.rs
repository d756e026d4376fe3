//! `switchctl proxy`: the daemon. Starts the data plane on the configured
//! (or systemd-provided) listeners with the route table of the persisted
//! active color, then the controller and the admin API; tells systemd it is
//! ready; on SIGTERM/SIGINT stops accepting, drains, and exits 0. Upstreams
//! are left running: a restart of the daemon is not a deploy.

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

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let _state_lock = lock_state_dir(&config.state_dir)?;
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
    let proxy = if inherited.is_empty() {
        Proxy::bind(config.proxy.proxy_config(), &config.proxy.listen, table)?
    } else {
        Proxy::from_listeners(config.proxy.proxy_config(), inherited, table)?
    };
    let proxy = Arc::new(proxy);

    let admin_listener = admin::server::bind(&config.proxy.admin_socket, &config.proxy.admin_group).await?;
    let socket_path = config.proxy.admin_socket.clone();
    let drain_timeout = config.proxy.drain_timeout;
    let active = state.active_release().map(|(c, r)| format!("{c} ({})", r.tag));
    let controller = Controller::new(config_path, config, proxy.clone(), driver, state, upstreams);
    for problem in problems {
        controller.problem(problem);
    }

    let shutdown = CancellationToken::new();
    let admin_task = tokio::spawn(admin::server::serve(
        admin_listener,
        controller.clone(),
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
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining and stopping"),
        _ = int.recv() => tracing::info!("SIGINT: draining and stopping"),
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    proxy.shutdown();
    if tokio::time::timeout(drain_timeout + Duration::from_secs(5), proxy.stopped())
        .await
        .is_err()
    {
        tracing::warn!("proxy workers did not stop in time");
    }
    admin_task.abort();
    let _ = std::fs::remove_file(&socket_path);
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
