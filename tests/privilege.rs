//! Least privilege, end to end: the admin socket belongs to
//! `proxy.admin_group`, so a CI user in that group deploys without root and
//! without reading the config or its env files, and a user outside it is
//! refused. Needs root (useradd); skipped, saying why, otherwise.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

use common::{process_service, text, Daemon};

/// A group and two users made for one test, removed on drop.
struct Accounts {
    group: String,
    member: String,
    outsider: String,
}

impl Accounts {
    fn create() -> Accounts {
        let id = std::process::id();
        let a = Accounts {
            group: format!("sctg{id}"),
            member: format!("sctin{id}"),
            outsider: format!("sctout{id}"),
        };
        run(&["groupadd", &a.group]);
        run(&["useradd", "--no-create-home", "--groups", &a.group, &a.member]);
        run(&["useradd", "--no-create-home", &a.outsider]);
        a
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        for user in [&self.member, &self.outsider] {
            let _ = Command::new("userdel").arg(user).output();
        }
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out));
}

/// The CLI as `user`, talking to `socket` through `SWITCHCTL_SOCKET`, with
/// `--config` naming a file that user cannot read.
fn cli_as(user: &str, d: &Daemon, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", user, "--", "env", "NO_COLOR=1"])
        .arg(format!("SWITCHCTL_SOCKET={}", d.socket.display()))
        .arg(common::switchctl())
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_the_admin_group_deploys_and_an_outsider_is_refused() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to create users and groups");
        return;
    }
    let accounts = Accounts::create();
    // A service whose env file only root can read: the CLI must not need it.
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret.env");
    std::fs::write(&secret, "API_KEY=hunter2\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut d = Daemon::start(
        "process",
        "timeout = \"30s\"",
        &format!("{}env_file = \"{}\"\n", process_service("web", ""), secret.display()),
    );
    d.terminate();
    let config = d
        .config_text()
        .replace("[proxy]\n", &format!("[proxy]\nadmin_group = \"{}\"\n", accounts.group));
    std::fs::write(&d.config, config).unwrap();
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The users must reach the socket's directory, nothing more.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    d.spawn();

    let out = cli_as(&accounts.member, &d, &["deploy", "v1"]);
    assert_eq!(out.status.code(), Some(0), "member deploy: {}", text(&out));
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let out = cli_as(&accounts.member, &d, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "member status: {}", text(&out));

    let out = cli_as(&accounts.outsider, &d, &["deploy", "v2"]);
    assert_eq!(out.status.code(), Some(3), "outsider deploy: {}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("permission denied"),
        "{}",
        text(&out)
    );
    let out = cli_as(&accounts.outsider, &d, &["status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error object");
    assert_eq!(err["exit_code"], 3);
    assert!(err["error"].as_str().unwrap().contains("cannot reach"), "{err}");
    assert_eq!(
        d.get("/").await,
        (200, "v1\n".into()),
        "the refused deploy changed nothing"
    );
}

#[tokio::test]
async fn status_and_history_json_print_a_json_error_when_no_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    for cmd in ["status", "history"] {
        let out = Command::new(common::switchctl())
            .args(["--socket", socket.to_str().unwrap(), cmd, "--json"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{cmd}: {}", text(&out));
        let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error object");
        assert_eq!(err["exit_code"], 3, "{cmd}");
        assert!(err["error"].as_str().unwrap().contains("nobody.sock"), "{err}");
    }
    // A config that does not parse is exit 2, also as JSON.
    let config = dir.path().join("switchctl.toml");
    std::fs::write(&config, "[proxy\n").unwrap();
    let out = Command::new(common::switchctl())
        .args(["--config", config.to_str().unwrap(), "status", "--json"])
        .env_remove("SWITCHCTL_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error object");
    assert_eq!(err["exit_code"], 2);
}

#[tokio::test]
async fn commands_that_talk_to_the_daemon_read_only_the_socket_path_from_the_config() {
    // A config whose services would fail to load (a missing env file, a
    // Compose file that does not exist): status still finds the socket.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchctl.toml");
    std::fs::write(
        &config,
        "compose = \"missing-compose.yml\"\n[proxy]\nadmin_socket = \"rel/admin.sock\"\n",
    )
    .unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(common::switchctl())
        .args(["--config", config.to_str().unwrap(), "status", "--json"])
        .env_remove("SWITCHCTL_SOCKET")
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let err: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = dir.path().join("rel/admin.sock");
    assert!(
        err["error"].as_str().unwrap().contains(want.to_str().unwrap()),
        "the relative socket resolves against the config's directory: {err}"
    );
}
