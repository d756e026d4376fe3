//! Docker for the end-to-end tests: whether the engine is here (a test
//! fails without it when `SWITCHCTL_REQUIRE_DOCKER=1`), the static testapp
//! binary, per-test images built from `tests/app/Dockerfile`, and removal of
//! everything a test created, found by label.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Label on every image a test builds; its value names the test.
pub const TEST_LABEL: &str = "switchctl.test";

/// Is Docker usable? Without it the test is skipped (printing why), or fails
/// when `SWITCHCTL_REQUIRE_DOCKER=1`.
pub fn available() -> bool {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("SWITCHCTL_REQUIRE_DOCKER").as_deref() == Ok("1") {
            panic!("Docker is required (SWITCHCTL_REQUIRE_DOCKER=1) but `docker info` fails");
        }
        eprintln!("skipped: Docker is not reachable (set SWITCHCTL_REQUIRE_DOCKER=1 to make this a failure)");
    }
    ok
}

/// The statically linked testapp, built once per test binary.
pub fn testapp_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target_dir = root.join("target").join("static");
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--offline",
                "-p",
                "switchctl-testapp",
                "--release",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .current_dir(root)
            .status()
            .expect("run cargo to build the static testapp");
        assert!(status.success(), "building the static testapp failed");
        target_dir.join("x86_64-unknown-linux-gnu/release/testapp")
    })
}

/// Images of one test: `switchctl-test-<name>:<tag>`, removed on drop.
pub struct Images {
    pub repo: String,
    name: String,
    context: tempfile::TempDir,
}

impl Images {
    pub fn new(name: &str) -> Images {
        let context = tempfile::tempdir().unwrap();
        std::fs::copy(testapp_binary(), context.path().join("testapp")).unwrap();
        let images = Images {
            repo: format!("switchctl-test-{name}"),
            name: name.to_string(),
            context,
        };
        images.remove_all();
        images
    }

    /// Build `<repo>:<tag>` answering `version`, with extra Dockerfile lines.
    pub fn build(&self, tag: &str, extra: &str) {
        let dockerfile =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/app/Dockerfile")).unwrap();
        let dockerfile = format!("{dockerfile}\nLABEL {TEST_LABEL}={}\n{extra}\n", self.name);
        std::fs::write(self.context.path().join("Dockerfile"), dockerfile).unwrap();
        let out = Command::new("docker")
            .args(["build", "-q", "--build-arg"])
            .arg(format!("VERSION={tag}"))
            .arg("-t")
            .arg(format!("{}:{tag}", self.repo))
            .arg(self.context.path())
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker build {tag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Tags of this test's repo present now.
    pub fn tags(&self) -> Vec<String> {
        let out = Command::new("docker")
            .args(["images", "--format", "{{.Tag}}"])
            .arg(&self.repo)
            .output()
            .unwrap();
        let mut tags: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        tags.sort();
        tags
    }

    fn remove_all(&self) {
        let out = Command::new("docker")
            .args(["images", "-q", "--filter"])
            .arg(format!("label={TEST_LABEL}={}", self.name))
            .output()
            .unwrap();
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rmi", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Remove every container that the switchctl instance with `state_dir` made.
pub fn remove_containers(state_dir: &Path) {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=switchctl.instance={}", state_dir.display()))
        .output();
    let Ok(out) = out else { return };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f"])
            .args(&ids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Containers of `state_dir`'s instance: `(name, labels json)`.
pub fn containers(state_dir: &Path) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "--format",
            "{{.Names}} {{.Label \"switchctl.color\"}} {{.Label \"switchctl.tag\"}} {{.Ports}}",
            "--filter",
        ])
        .arg(format!("label=switchctl.instance={}", state_dir.display()))
        .output()
        .unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    v.sort();
    v
}

/// A Docker network for one test, labelled, removed on drop.
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn new(test: &str) -> Network {
        let name = format!("switchctl-test-{test}");
        let _ = Command::new("docker")
            .args(["network", "rm", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("docker")
            .args(["network", "create", "--label"])
            .arg(format!("{TEST_LABEL}={test}"))
            .arg(&name)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "docker network create {name}");
        Network { name }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `docker inspect -f <format> <container>`
pub fn inspect(container: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker volume inspect -f <format> <volume>` (empty when it is missing).
pub fn inspect_volume(volume: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["volume", "inspect", "-f", format, volume])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
