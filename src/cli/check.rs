//! `check`: validate the config (exit 2 when it is wrong) and the
//! environment: state dir writable, admin socket directory usable, driver
//! reachable, commands present, listen ports free, certificate files
//! loadable (exit 1 when not). The probes themselves are the library's
//! ([`crate::probe`]).

use super::{config_failed, exit, load_config, Cli};
use crate::admin::client::Client;

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
    let daemon_running = Client::new(&config.proxy.admin_socket)
        .get::<serde_json::Value>("/v1/status")
        .await
        .is_ok();
    let mut failures = 0;
    for probe in crate::probe::environment(&config, daemon_running).await {
        match probe.result {
            Ok(note) => println!("ok    {}{note}", probe.what),
            Err(why) => {
                failures += 1;
                println!("FAIL  {}: {why}", probe.what);
            }
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
