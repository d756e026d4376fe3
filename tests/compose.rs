//! A real Compose stack taken over unchanged (issue 12), on the real Docker
//! Engine: `tests/fixtures/compose-stack` (a stateful service, an API and a
//! frontend built by switchctl from build contexts holding the static
//! testapp, a migrations one-off that writes a marker into a volume, Traefik
//! labels). Each test uses its own project, images, networks and volume,
//! removes them even when it fails, and keeps a load loop through the proxy
//! that must see 0 failed requests.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::docker::{self, Images, TEST_LABEL};
use common::{free_port, text, wait_for, Daemon, Load};

/// One copy of the fixture stack, with names unique to one test, and the
/// stateful service running as `docker compose up -d postgres` would run
/// it (Compose's labels, its container_name). Dropped: everything removed.
struct Stack {
    id: String,
    project: String,
    dir: tempfile::TempDir,
    traefik_network: String,
    stateful: Images,
}

impl Stack {
    /// The fixture copied for test `id` (lowercase, short), postgres up and
    /// healthy. `env` lines are appended to .env.production.
    fn new(id: &str, env: &str) -> Stack {
        let id = format!("swc-{id}");
        let project = format!("{id}-prod");
        let stateful = Images::new(&format!("{id}-db"));
        stateful.build("v1", "HEALTHCHECK --interval=1s CMD [\"/testapp\", \"healthcheck\"]");
        let dir = tempfile::Builder::new().prefix("switchctl-compose-").tempdir().unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compose-stack");
        copy_dir(&fixture, dir.path());
        for context in ["api", "frontend"] {
            std::fs::copy(docker::testapp_binary(), dir.path().join(context).join("testapp")).unwrap();
        }
        let traefik_network = format!("{id}-traefik-public");
        let stack = Stack {
            project: project.clone(),
            traefik_network: traefik_network.clone(),
            dir,
            stateful,
            id: id.clone(),
        };
        stack.remove_all();
        std::fs::write(
            stack.dir.path().join(".env.production"),
            format!(
                "# written by CI in real life\n\
                 COMPOSE_PROJECT_NAME={project}\n\
                 TEST_ID={id}\n\
                 API_REPO=switchctl-test-{id}-api\n\
                 FRONTEND_REPO=switchctl-test-{id}-frontend\n\
                 STATEFUL_IMAGE={stateful}:v1\n\
                 TRAEFIK_NETWORK={traefik_network}\n\
                 API_IMAGE_TAG=latest\n\
                 FRONTEND_IMAGE_TAG=latest\n\
                 DB_USER=app\n\
                 DB_PASSWORD=secret\n\
                 {env}\n",
                stateful = stack.stateful.repo,
            ),
        )
        .unwrap();
        // The external network exists before, as Traefik's would.
        run(&[
            "network",
            "create",
            "--label",
            &format!("{TEST_LABEL}={id}"),
            &traefik_network,
        ]);
        // `docker compose -p <project> up -d postgres`, by hand.
        run(&[
            "run",
            "-d",
            "--name",
            &format!("{id}-postgres"),
            "--label",
            &format!("com.docker.compose.project={project}"),
            "--label",
            "com.docker.compose.service=postgres",
            "--label",
            &format!("{TEST_LABEL}={id}"),
            "--restart",
            "unless-stopped",
            &format!("{}:v1", stack.stateful.repo),
        ]);
        stack
    }

    fn postgres(&self) -> String {
        format!("{}-postgres", self.id)
    }

    /// Wait until the stateful service reports healthy.
    async fn postgres_healthy(&self) {
        wait_for("postgres healthy", Duration::from_secs(60), || async {
            docker::inspect(&self.postgres(), "{{.State.Health.Status}}") == "healthy"
        })
        .await;
    }

    /// Append the test's [proxy] and [deploy] to the fixture's switchctl.toml
    /// (relative state_dir and admin_socket) and start the daemon with
    /// `--config switchctl.toml` from the stack's directory.
    fn daemon(self_dir: tempfile::TempDir, extra: &str) -> Daemon {
        let port = free_port();
        let config = self_dir.path().join("switchctl.toml");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "\n[proxy]\nlisten = [\"127.0.0.1:{port}\"]\nadmin_socket = \"admin.sock\"\ndrain_timeout = \"10s\"\nworkers = 2\n\n\
             [deploy]\ntimeout = \"60s\"\nhealth_check_interval = \"100ms\"\nstop_timeout = \"3s\"\n{extra}\n"
        ));
        std::fs::write(&config, text).unwrap();
        let socket = self_dir.path().join("admin.sock");
        let cwd = self_dir.path().to_path_buf();
        Daemon::start_in(
            self_dir,
            PathBuf::from("switchctl.toml"),
            Some(cwd),
            socket,
            ([127, 0, 0, 1], port).into(),
        )
    }

    fn images(&self) -> Vec<String> {
        lines(&[
            "images",
            "--format",
            "{{.Repository}}:{{.Tag}}",
            "--filter",
            &format!("label={TEST_LABEL}={}", self.id),
        ])
    }

    fn remove_all(&self) {
        let containers = lines(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
        ]);
        let mut rm = vec!["rm", "-f"];
        rm.extend(containers.iter().map(String::as_str));
        if !containers.is_empty() {
            quiet(&rm);
        }
        quiet(&["rm", "-f", &self.postgres()]);
        let images = lines(&["images", "-q", "--filter", &format!("label={TEST_LABEL}={}", self.id)]);
        if !images.is_empty() {
            let mut rmi = vec!["rmi", "-f"];
            rmi.extend(images.iter().map(String::as_str));
            quiet(&rmi);
        }
        for network in [
            format!("{}_app-prod-network", self.project),
            format!("{}_default", self.project),
            self.traefik_network.clone(),
        ] {
            quiet(&["network", "rm", &network]);
        }
        quiet(&["volume", "rm", "-f", &format!("{}_migrations", self.project)]);
    }

    /// The marker files the migrations wrote into the project's volume.
    fn migrated(&self) -> Vec<String> {
        let mountpoint = docker::inspect_volume(&format!("{}_migrations", self.project), "{{.Mountpoint}}");
        if mountpoint.is_empty() {
            return Vec::new();
        }
        let mut v: Vec<String> = std::fs::read_dir(&mountpoint)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.remove_all();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn run(args: &[&str]) {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

fn lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker").args(args).output().unwrap();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    v.sort();
    v
}

/// A stack and its daemon; the daemon goes first on drop (its containers
/// with it), then the stack's networks, volume and images.
struct Running {
    daemon: Daemon,
    stack: Stack,
}

/// Build the stack for test `id`, start postgres and the daemon.
async fn running(id: &str, env: &str, deploy_extra: &str) -> Running {
    let mut stack = Stack::new(id, env);
    stack.postgres_healthy().await;
    // The daemon owns the directory from here on; the stack keeps a path.
    let dir = std::mem::replace(&mut stack.dir, tempfile::tempdir().unwrap());
    let daemon = Stack::daemon(dir, deploy_extra);
    Running { daemon, stack }
}

impl Running {
    fn dir(&self) -> &Path {
        self.daemon.dir.path()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_builds_migrates_routes_api_and_leaves_the_stateful_service_alone() {
    if !docker::available() {
        return;
    }
    let r = running("main", "", "").await;
    let (d, stack) = (&r.daemon, &r.stack);
    let postgres_id = docker::inspect(&stack.postgres(), "{{.Id}}");
    let postgres_started = docker::inspect(&stack.postgres(), "{{.State.StartedAt}}");

    let out = d.cli(&["deploy", "v1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("build"), "build output streams into progress: {stdout}");
    assert!(stdout.contains("migration v1 done"), "hook output streams: {stdout}");

    let front = Load::start(d.proxy, 10);
    let api = Load::start_path(d.proxy, 10, "/api/items");
    let out = d.cli(&["deploy", "v2", "--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let events = common::events(&out);
    assert!(events.iter().any(|e| e["phase"] == "build"), "build events");
    assert!(events.iter().any(|e| e["phase"] == "hook"), "hook events");
    let (front, api) = (front.stop().await, api.stop().await);
    assert_eq!(front.failed, 0, "{front:?}");
    assert_eq!(api.failed, 0, "{api:?}");

    assert_eq!(d.get("/").await, (200, "frontend-v2\n".into()));
    assert_eq!(d.get("/api/items").await, (200, "api-v2\n".into()));
    // Built by switchctl from the build contexts, tagged with the deploy tag.
    let images = stack.images();
    for image in [
        format!("switchctl-test-{}-api:v2", stack.id),
        format!("switchctl-test-{}-api-migrations:v2", stack.id),
        format!("switchctl-test-{}-frontend:v2", stack.id),
    ] {
        assert!(images.contains(&image), "{image} not in {images:?}");
    }
    // The build time is in history.
    let out = d.cli(&["history", "--json"]).await;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["tag"], "v2");
    assert!(last["build_ms"].is_u64(), "{last}");
    // The migration ran for each release and wrote into the project's volume.
    assert_eq!(stack.migrated(), ["migrated-v1", "migrated-v2"]);
    // The stateful service was not stopped, recreated or reconnected.
    assert_eq!(docker::inspect(&stack.postgres(), "{{.Id}}"), postgres_id);
    assert_eq!(
        docker::inspect(&stack.postgres(), "{{.State.StartedAt}}"),
        postgres_started
    );
    // Networks as Compose names and creates them; the external one joined.
    let network = format!("{}_app-prod-network", stack.project);
    assert_eq!(
        docker::inspect(
            &network,
            "{{index .Labels \"com.docker.compose.project\"}} {{index .Labels \"com.docker.compose.network\"}}"
        ),
        format!("{} app-prod-network", stack.project)
    );
    let api_container = format!("{}-api-green", stack.project);
    let networks = docker::inspect(&api_container, "{{json .NetworkSettings.Networks}}");
    assert!(
        networks.contains(&network) && networks.contains(&stack.traefik_network),
        "{networks}"
    );
    // Other containers calling `http://api:8000` reach the serving color:
    // the service's name is a network alias of the active color only.
    let aliases = |color: &str| {
        docker::inspect(
            &format!("{}-api-{color}", stack.project),
            &format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}"),
        )
    };
    let named = |color: &str| aliases(color).contains("\"api\"");
    // A container of the project calling `http://api:8000`, as a worker would.
    let call_api = || {
        let out = Command::new("docker")
            .args(["run", "--rm", "--network", &network, "--label"])
            .arg(format!("{TEST_LABEL}={}", stack.id))
            .arg(format!("{}:v1", stack.stateful.repo))
            .args(["fetch", "api:8000", "/"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        named("green") && !named("blue"),
        "{} / {}",
        aliases("green"),
        aliases("blue")
    );
    assert_eq!(call_api(), "api-v2");
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        named("blue") && !named("green"),
        "{} / {}",
        aliases("blue"),
        aliases("green")
    );
    assert_eq!(d.get("/api/items").await, (200, "api-v1\n".into()));
    assert_eq!(call_api(), "api-v1");

    // The Compose labels are passed through, beside switchctl's.
    assert_eq!(
        docker::inspect(&api_container, "{{index .Config.Labels \"traefik.enable\"}}"),
        "true"
    );
    assert_eq!(
        docker::inspect(&api_container, "{{index .Config.Labels \"switchctl.tag\"}}"),
        "v2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_prefix_is_stripped_as_traefik_did() {
    if !docker::available() {
        return;
    }
    let r = running("strip", "", "").await;
    let d = &r.daemon;
    let out = d.cli(&["deploy", "v1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let load = Load::start_path(d.proxy, 10, "/api/whoami");
    assert_eq!(d.get("/api/whoami").await, (200, "path=/whoami\n".into()));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.bodies.keys().collect::<Vec<_>>(), ["path=/whoami"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_migration_fails_the_deploy_with_nothing_stopped() {
    if !docker::available() {
        return;
    }
    let r = running("failmig", "FAIL_MIGRATION_VERSIONS=v2", "").await;
    let (d, stack) = (&r.daemon, &r.stack);
    let out = d.cli(&["deploy", "v1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let before = docker::containers(&d.state_dir());

    let load = Load::start(d.proxy, 10);
    let out = d.cli(&["deploy", "v2"]).await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("api-migrations exited with status 1"), "{stdout}");
    assert!(
        stdout.contains("migration v2 step 3"),
        "the hook's last lines: {stdout}"
    );
    assert!(stdout.contains("blue (v1) keeps serving"), "{stdout}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "frontend-v1\n".into()));
    assert_eq!(
        docker::containers(&d.state_dir()),
        before,
        "the old color untouched, the new one gone"
    );
    assert_eq!(stack.migrated(), ["migrated-v1"]);
    // The built images stay: a retry finds them.
    assert!(stack.images().contains(&format!("switchctl-test-{}-api:v2", stack.id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_projects_on_one_host_do_not_interfere() {
    if !docker::available() {
        return;
    }
    let a = running("twoa", "", "").await;
    let b = running("twob", "", "").await;
    for r in [&a, &b] {
        let out = r.daemon.cli(&["deploy", "v1"]).await;
        assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), r.daemon.log());
    }
    let b_containers = docker::containers(&b.daemon.state_dir());
    let b_ids: Vec<String> = b_containers
        .iter()
        .map(|c| docker::inspect(c.split(' ').next().unwrap(), "{{.Id}}"))
        .collect();
    assert!(
        b_containers.iter().all(|c| c.starts_with(&b.stack.project)),
        "{b_containers:?}"
    );

    let load_b = Load::start(b.daemon.proxy, 10);
    let load_a = Load::start(a.daemon.proxy, 10);
    let out = a.daemon.cli(&["deploy", "v2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let ra = load_a.stop().await;
    assert_eq!(ra.failed, 0, "{ra:?}");
    // A restart of A's daemon looks for orphans: B's containers are not A's.
    let mut a = a;
    a.daemon.kill9();
    a.daemon.spawn();
    a.daemon.cli(&["status"]).await;
    let rb = load_b.stop().await;
    assert_eq!(rb.failed, 0, "{rb:?}");
    assert_eq!(a.daemon.get("/").await, (200, "frontend-v2\n".into()));
    assert_eq!(b.daemon.get("/").await, (200, "frontend-v1\n".into()));
    let b_after: Vec<String> = docker::containers(&b.daemon.state_dir())
        .iter()
        .map(|c| docker::inspect(c.split(' ').next().unwrap(), "{{.Id}}"))
        .collect();
    assert_eq!(b_after, b_ids, "B's containers untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_route_follows_a_container_that_came_back_on_another_port() {
    if !docker::available() {
        return;
    }
    let mut r = running("port", "", "").await;
    let out = r.daemon.cli(&["deploy", "v1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), r.daemon.log());
    let container = format!("{}-frontend-blue", r.stack.project);
    let port_of = |c: &str| docker::inspect(c, "{{(index (index .NetworkSettings.Ports \"80/tcp\") 0).HostPort}}");
    let old_port = port_of(&container);

    // While no daemon watches, Docker restarts the container, and its old
    // host port is taken: it comes back on another one.
    r.daemon.kill9();
    run(&["stop", "-t", "1", &container]);
    let squatter = std::net::TcpListener::bind(format!("127.0.0.1:{old_port}")).unwrap();
    run(&["start", &container]);
    let new_port = port_of(&container);
    assert_ne!(new_port, old_port);
    drop(squatter);

    r.daemon.spawn();
    wait_for("the route to follow", Duration::from_secs(30), || async {
        r.daemon.get("/").await == (200, "frontend-v1\n".to_string())
    })
    .await;
    let load = Load::start(r.daemon.proxy, 10);
    let status = r.daemon.status().await;
    let frontend = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "frontend")
        .unwrap()
        .clone();
    assert_eq!(frontend["blue"]["upstream"], format!("127.0.0.1:{new_port}"));
    let out = r.daemon.cli(&["deploy", "v2"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_without_a_directory_part_works_from_its_directory_and_from_elsewhere() {
    if !docker::available() {
        return;
    }
    // The daemon runs `--config switchctl.toml` from the stack's directory
    // (relative state_dir, admin_socket, Compose file, env files).
    let r = running("relpath", "", "").await;
    let d = &r.daemon;
    let out = d.cli(&["deploy", "v1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    assert!(
        r.dir().join("state/state.json").exists(),
        "state_dir relative to the config"
    );

    // From elsewhere: the parent directory, with a relative --config path.
    let parent = r.dir().parent().unwrap().to_path_buf();
    let name = r.dir().file_name().unwrap().to_string_lossy().into_owned();
    let elsewhere = |args: &[&str]| {
        let mut cmd = Command::new(common::switchctl());
        cmd.current_dir(&parent)
            .arg("--config")
            .arg(format!("{name}/switchctl.toml"))
            .args(args)
            .env("NO_COLOR", "1");
        cmd
    };
    let load = Load::start(d.proxy, 10);
    let out = elsewhere(&["status", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "status from elsewhere: {}", text(&out));
    let out = elsewhere(&["check"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("config"),
        "check from elsewhere reads the config: {}",
        text(&out)
    );
    let out = elsewhere(&["deploy", "v2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "deploy from elsewhere: {}", text(&out));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/api/x").await, (200, "api-v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_build_or_a_dependency_that_is_down_stops_nothing() {
    if !docker::available() {
        return;
    }
    let r = running("failbuild", "", "").await;
    let (d, stack) = (&r.daemon, &r.stack);
    let out = d.cli(&["deploy", "v1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let before = docker::containers(&d.state_dir());
    let load = Load::start(d.proxy, 10);

    let dockerfile = r.dir().join("frontend/Dockerfile");
    let good = std::fs::read_to_string(&dockerfile).unwrap();
    std::fs::write(&dockerfile, format!("{good}COPY not-in-the-context /x\n")).unwrap();
    let out = d.cli(&["deploy", "v2"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("failed before anything was started"), "{stdout}");
    assert!(stdout.contains("nothing was stopped"), "{stdout}");
    assert!(
        stdout.contains("not-in-the-context"),
        "the build's last lines: {stdout}"
    );
    assert_eq!(docker::containers(&d.state_dir()), before);

    std::fs::write(&dockerfile, good).unwrap();
    run(&["stop", "-t", "1", &stack.postgres()]);
    let out = d.cli(&["deploy", "v2"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("api depends on postgres (it is not running)"),
        "{stdout}"
    );
    assert_eq!(docker::containers(&d.state_dir()), before);
    assert_eq!(stack.migrated(), ["migrated-v1"], "no hook ran");

    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "frontend-v1\n".into()));
}
