//! The command line: clap definitions and dispatch, one file per command.
//! Every command returns its exit status (docs/design.md): 0 done, 1 failed and
//! rolled back, 2 bad usage or config, 3 daemon unreachable, 4 another
//! operation in progress.

pub mod check;
pub mod completions;
pub mod demo;
pub mod deploy;
pub mod history;
pub mod output;
pub mod status;
pub mod upgrade;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::admin::client::{Client, ClientError};
use crate::config::{Config, ConfigError};

/// Exit statuses.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// Failed (and rolled back).
    pub const FAILED: i32 = 1;
    /// Bad usage or config.
    pub const USAGE: i32 = 2;
    /// The daemon cannot be reached.
    pub const UNREACHABLE: i32 = 3;
    /// Another operation is in progress.
    pub const BUSY: i32 = 4;
}

/// Zero-downtime blue/green deploys for one host.
#[derive(Debug, Parser)]
#[command(name = "switchctl", version, about, long_about = None)]
pub struct Cli {
    /// Config file (default: $SWITCHCTL_CONFIG, ./switchctl.toml, /etc/switchctl/switchctl.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Admin socket of the daemon (default: $SWITCHCTL_SOCKET, else the config's proxy.admin_socket).
    #[arg(long, global = true, value_name = "PATH", env = "SWITCHCTL_SOCKET")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: proxy, controller and admin API.
    Proxy,
    /// Start <tag> on the idle color, health-check it, flip traffic to it.
    Deploy {
        /// Image tag / release to deploy.
        tag: String,
        /// Print progress as NDJSON.
        #[arg(long)]
        json: bool,
        /// Skip the post-flip watch ([deploy.watch]): return right after the flip.
        #[arg(long)]
        no_watch: bool,
    },
    /// Switch traffic instantly.
    Flip {
        #[command(subcommand)]
        direction: FlipDirection,
    },
    /// Return to the previous successful release, or deploy <tag>.
    Rollback {
        /// Tag to roll back to (default: the previous successful release).
        tag: Option<String>,
        /// Print progress as NDJSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the active color, standby, and each service's upstreams.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show past deploys, flips and rollbacks.
    History {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config and the environment.
    Check,
    /// Hitless self-upgrade: a new daemon takes the sockets, the old drains.
    Upgrade {
        /// Print progress as NDJSON.
        #[arg(long)]
        json: bool,
    },
    /// A self-contained blue/green demo on loopback (no Docker needed).
    Demo,
    /// Print shell completions (bash, zsh or fish) to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: completions::Shell,
    },
    /// Write man pages into a directory (used by packaging).
    #[command(hide = true)]
    Man {
        /// Where to write them.
        dir: PathBuf,
    },
    /// The demo's upstream app (see `demo_app`).
    #[command(hide = true)]
    DemoApp {
        /// Arguments for the app.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `flip <direction>`
#[derive(Debug, Subcommand)]
pub enum FlipDirection {
    /// Send traffic back to the warm standby, if it is healthy.
    Back {
        /// Print progress as NDJSON.
        #[arg(long)]
        json: bool,
    },
}

/// Load the config from `--config` or the usual places.
pub fn load_config(explicit: Option<&Path>) -> Result<(PathBuf, Config), ConfigError> {
    let path = Config::locate(explicit)?;
    let config = Config::load(&path)?;
    Ok((path, config))
}

/// Print a config error and return exit 2.
pub fn config_failed(e: &ConfigError) -> i32 {
    eprintln!("{}", output::error_line(&format!("config: {e}")));
    exit::USAGE
}

/// How much of the config file a command reads to find the admin socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketLookup {
    /// The file parsed against the schema ([`Config::admin_socket_of`]): a
    /// typo anywhere is exit 2, naming the line.
    Checked,
    /// `proxy.admin_socket` alone ([`Config::admin_socket_only`]): for
    /// `flip back`, which must work while another key is being edited.
    SocketOnly,
}

/// The daemon's admin socket: `--socket` or `$SWITCHCTL_SOCKET`, else the
/// config's `proxy.admin_socket` (read without loading the rest of the
/// config: no Compose file, no env file), else the default socket when the
/// config cannot be read by this user.
pub fn socket_path(cli: &Cli, lookup: SocketLookup) -> Result<PathBuf, ConfigError> {
    if let Some(socket) = &cli.socket {
        return Ok(socket.clone());
    }
    let from_config = match Config::locate(cli.config.as_deref()) {
        Ok(path) => match lookup {
            SocketLookup::Checked => Config::admin_socket_of(&path)?,
            SocketLookup::SocketOnly => Config::admin_socket_only(&path)?,
        },
        Err(ConfigError::NotFound(_)) => None,
        Err(e) => return Err(e),
    };
    Ok(from_config.unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_ADMIN_SOCKET)))
}

/// The admin client for [`socket_path`], the config checked.
pub fn client(cli: &Cli) -> Result<Client, ConfigError> {
    client_with(cli, SocketLookup::Checked)
}

/// The admin client for [`socket_path`].
pub fn client_with(cli: &Cli, lookup: SocketLookup) -> Result<Client, ConfigError> {
    socket_path(cli, lookup).map(|socket| Client::new(&socket))
}

/// The exit status for a client error.
pub fn client_exit_code(e: &ClientError) -> i32 {
    match e {
        ClientError::Unreachable { .. } => exit::UNREACHABLE,
        ClientError::BadRequest(_) => exit::USAGE,
        ClientError::Busy(_) => exit::BUSY,
        ClientError::Other { .. } => exit::FAILED,
    }
}

/// Report why a command that reads from the daemon failed, and return its
/// exit status. With `json`, one JSON object on stdout
/// (`{"error": "...", "exit_code": 3}`) so scripts that parse the output
/// get a document either way; else a red line on stderr.
pub fn query_failed(json: bool, message: &str, code: i32) -> i32 {
    if json {
        println!("{}", serde_json::json!({ "error": message, "exit_code": code }));
    } else {
        eprintln!("{}", output::error_line(message));
    }
    code
}

/// The exit status for a client error, after printing it.
pub fn client_failed(e: &ClientError) -> i32 {
    query_failed(false, &e.to_string(), client_exit_code(e))
}

/// Run the parsed command line; returns the exit status.
pub async fn run(cli: Cli) -> i32 {
    match &cli.command {
        Command::Proxy => {
            // Started by `upgrade`: the old daemon waits to hear how it went.
            let handoff = match crate::upgrade::Handoff::from_env() {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("{}", output::error_line(&format!("upgrade handoff: {e:#}")));
                    return exit::FAILED;
                }
            };
            let report = handoff.as_ref().map(|h| h.failure_report());
            let failed = |message: &str| {
                if let Some(r) = &report {
                    r.failed(message);
                }
            };
            let (path, config) = match load_config(cli.config.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    failed(&format!("config: {e}"));
                    return config_failed(&e);
                }
            };
            match crate::daemon::run(path, config, handoff).await {
                Ok(()) => exit::OK,
                Err(e) => {
                    failed(&format!("{e:#}"));
                    eprintln!("{}", output::error_line(&format!("{e:#}")));
                    exit::FAILED
                }
            }
        }
        Command::Deploy { tag, json, no_watch } => deploy::deploy(&cli, tag, *json, *no_watch).await,
        Command::Flip {
            direction: FlipDirection::Back { json },
        } => deploy::flip_back(&cli, *json).await,
        Command::Rollback { tag, json } => deploy::rollback(&cli, tag.clone(), *json).await,
        Command::Status { json } => status::run(&cli, *json).await,
        Command::History { json } => history::run(&cli, *json).await,
        Command::Check => check::run(&cli).await,
        Command::Upgrade { json } => upgrade::run(&cli, *json).await,
        Command::Demo => demo::run().await,
        Command::Completions { shell } => completions::completions(*shell),
        Command::Man { dir } => completions::man_pages(dir),
        Command::DemoApp { .. } => unreachable!("demo-app runs before the runtime starts"),
    }
}
