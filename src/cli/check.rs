//! `check`: validate the config (exit 2 when it is wrong) and the
//! environment: state dir writable, admin socket directory usable, driver
//! reachable, commands present, listen ports free (exit 1 when not).

use std::path::Path;

use super::{config_failed, exit, load_config, Cli};
use crate::admin::client::Client;
use crate::config::{Config, DriverKind};
use crate::driver::Driver;

/// `switchctl check`
pub async fn run(cli: &Cli) -> i32 {
    let (path, config) = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return config_failed(&e),
    };
    println!(
        "config {}: ok ({} service(s), driver {:?})",
        path.display(),
        config.services.len(),
        config.driver
    );
    let mut failures = 0;
    let mut report = |what: String, result: Result<String, String>| match result {
        Ok(note) => println!("ok    {what}{note}"),
        Err(why) => {
            failures += 1;
            println!("FAIL  {what}: {why}");
        }
    };
    report(
        format!("state_dir {}", config.state_dir.display()),
        writable(&config.state_dir),
    );
    let socket_dir = config.proxy.admin_socket.parent().unwrap_or(Path::new("/"));
    report(
        format!("admin socket directory {}", socket_dir.display()),
        writable(socket_dir),
    );
    let daemon_running = Client::new(&config.proxy.admin_socket)
        .get::<serde_json::Value>("/v1/status")
        .await
        .is_ok();
    for addr in &config.proxy.listen {
        let result = if daemon_running {
            Ok(" (served by the running daemon)".into())
        } else {
            std::net::TcpListener::bind(addr)
                .map(|_| String::new())
                .map_err(|e| format!("cannot listen: {e}"))
        };
        report(format!("listen {addr}"), result);
    }
    let driver = Driver::new(&config);
    report(
        format!("driver {:?}", config.driver).to_lowercase(),
        driver.ping().await.map(|_| String::new()).map_err(|e| e.to_string()),
    );
    if config.driver == DriverKind::Process {
        for s in &config.services {
            report(format!("service {} command", s.name), command_exists(&config, s));
        }
    }
    if failures == 0 {
        println!("all checks passed");
        exit::OK
    } else {
        println!("{failures} check(s) failed");
        exit::FAILED
    }
}

fn writable(dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create: {e}"))?;
    let probe = dir.join(".switchctl-check");
    std::fs::write(&probe, b"").map_err(|e| format!("not writable: {e}"))?;
    let _ = std::fs::remove_file(probe);
    Ok(String::new())
}

fn command_exists(config: &Config, s: &crate::config::ServiceConfig) -> Result<String, String> {
    let program = s.command.as_ref().and_then(|c| c.first()).ok_or("no command")?;
    if program.contains('/') {
        let cwd = s
            .cwd
            .as_deref()
            .map(|c| config.resolve(c))
            .unwrap_or_else(|| config.resolve(Path::new(".")));
        let p = if program.starts_with('/') {
            Path::new(program).to_path_buf()
        } else {
            cwd.join(program)
        };
        return if p.is_file() {
            Ok(String::new())
        } else {
            Err(format!("{} not found", p.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    if std::env::split_paths(&path).any(|d| d.join(program).is_file()) {
        Ok(String::new())
    } else {
        Err(format!("{program} not found in PATH"))
    }
}
