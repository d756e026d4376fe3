//! The `switchctl` binary: parse the command line, run the command on a
//! single-threaded runtime (the proxy runs its own worker threads), exit with
//! the command's status.

use std::io::IsTerminal;

use clap::Parser;
use switchctl::cli::{self, Cli, Command};

fn main() {
    let cli = Cli::parse();
    if let Command::DemoApp { args } = &cli.command {
        std::process::exit(switchctl::demo_app::main_with_args(args));
    }
    let default_level = if matches!(cli.command, Command::Proxy) {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only on a terminal: the daemon's stderr is usually a file or
    // journald, where escape codes are noise.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(cli::exit::FAILED);
        }
    };
    let code = runtime.block_on(cli::run(cli));
    std::process::exit(code);
}
