//! End to end with the Docker driver on the real engine. Each test builds
//! its own FROM-scratch images from `tests/app`, runs the real daemon and
//! CLI, keeps a load loop through the proxy (0 failed requests), and removes
//! its containers and images afterwards.

mod common;

use std::time::Duration;

use common::docker::{self, Images};
use common::{events, text, wait_for, Daemon, Load};

fn docker_service(name: &str, images: &Images, extra: &str) -> String {
    format!(
        r#"
[[service]]
name = "{name}"
image = "{repo}"
port = 8000
health = {{ path = "/health", timeout = "1s" }}
{extra}
"#,
        repo = images.repo
    )
}

async fn deploy(d: &Daemon, tag: &str) -> std::process::Output {
    d.cli(&["deploy", tag]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_deploy_fail_rollback_and_flip_back() {
    if !docker::available() {
        return;
    }
    let images = Images::new("cycle");
    images.build("v1", "");
    images.build("v2", "");
    images.build("v3", "ENV FAIL_HEALTH=1");
    images.build("v4", "ENV EXIT_AT_START=1");
    let d = Daemon::start("docker", "timeout = \"20s\"", &docker_service("dcycle", &images, ""));

    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
    let containers = docker::containers(&d.state_dir());
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert!(
        containers[0].starts_with("switchctl-") && containers[0].contains("-dcycle-blue blue v1 127.0.0.1:"),
        "published on loopback only: {containers:?}"
    );

    let load = Load::start(d.proxy, 20);
    let out = deploy(&d, "v2").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.get("/").await, (200, "v2\n".into()));

    // Health fails: rolled back, with the container's logs shown.
    let out = d.cli_env(&["deploy", "v3"], &[("DEPLOY_TIMEOUT", "3")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("testapp v3 listening"), "{stdout}");
    assert!(stdout.contains("green (v2) keeps serving"), "{stdout}");

    // Exits at start: fails on the exit, not the (long) timeout.
    let out = d
        .cli_env(&["deploy", "v4", "--json"], &[("DEPLOY_TIMEOUT", "3600")])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let done = events(&out).pop().unwrap();
    assert_eq!(done["outcome"], "rolled_back");
    let msg = done["message"].as_str().unwrap();
    assert!(msg.contains("exited with status 3") || msg.contains("restart"), "{msg}");

    // A missing tag is refused before anything is stopped.
    let out = deploy(&d, "v9").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("image {}:v9", images.repo)), "{stdout}");

    // Deploy v1 again, then flip back to v2 kept warm.
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");

    let status = d.status().await;
    assert_eq!(status["active"]["tag"], "v2");
    assert_eq!(status["standby"]["tag"], "v1");
    assert_eq!(status["driver"]["ok"], true);
    let names: Vec<String> = docker::containers(&d.state_dir())
        .iter()
        .map(|c| c.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].ends_with("-dcycle-blue") && names[1].ends_with("-dcycle-green"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_healthcheck_must_report_healthy_before_the_flip() {
    if !docker::available() {
        return;
    }
    let images = Images::new("healthcheck");
    images.build("v1", "");
    images.build(
        "v2",
        r#"HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/testapp", "healthcheck"]"#,
    );
    let d = Daemon::start("docker", "timeout = \"60s\"", &docker_service("dhc", &images, ""));
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let load = Load::start(d.proxy, 20);
    let out = deploy(&d, "v2").await;
    let report = load.stop().await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Docker HEALTHCHECK still starting"),
        "the HTTP probe passed at once, but the flip waited for Docker: {stdout}"
    );
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_image_cleanup_keeps_colors_and_recent_releases() {
    if !docker::available() {
        return;
    }
    let images = Images::new("cleanup");
    for tag in ["v1", "v2", "v6", "v7"] {
        images.build(tag, "");
    }
    images.build("v3", "ENV FAIL_HEALTH=1");
    let d = Daemon::start(
        "docker",
        "timeout = \"20s\"\nkeep_images = 3",
        &docker_service("dclean", &images, ""),
    );
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let load = Load::start(d.proxy, 4);
    let out = deploy(&d, "v2").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = d.cli_env(&["deploy", "v3"], &[("DEPLOY_TIMEOUT", "2")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    for tag in ["v6", "v7"] {
        let out = deploy(&d, tag).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let report = load.stop().await;
    // Kept: the newest 3 tags deployed, whatever their outcome: v7 (active),
    // v6 (standby) and the failed v3; removed: v2 and v1.
    assert_eq!(images.tags(), ["v3", "v6", "v7"], "{}", d.log());
    assert!(
        report.failed == 0 || report.failures.iter().all(|f| f.starts_with("503")),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_daemon_killed_mid_deploy_adopts_containers_and_removes_leftovers() {
    if !docker::available() {
        return;
    }
    let images = Images::new("adopt");
    images.build("v1", "");
    images.build("v2", "");
    images.build("v3", "ENV FAIL_HEALTH=1");
    let mut d = Daemon::start("docker", "timeout = \"20s\"", &docker_service("dadopt", &images, ""));
    for tag in ["v1", "v2"] {
        let out = deploy(&d, tag).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    }
    let deploying = tokio::process::Command::new(common::switchctl())
        .arg("--config")
        .arg(&d.config)
        .args(["deploy", "v3"])
        .env("DEPLOY_TIMEOUT", "600")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the deploy's health phase", Duration::from_secs(60), || async {
        d.status().await["operation"]["phase"] == "health"
    })
    .await;
    assert_eq!(docker::containers(&d.state_dir()).len(), 2, "v2 active, v3 starting");
    d.kill9();
    let _ = deploying.wait_with_output().await;
    d.spawn();
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let load = Load::start(d.proxy, 20);
    wait_for(
        "the leftover container to be removed",
        Duration::from_secs(60),
        || async { docker::containers(&d.state_dir()).len() == 1 },
    )
    .await;
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = d.cli(&["flip", "back"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "the adopted container takes traffic again: {}",
        text(&out)
    );
    assert_eq!(d.get("/").await, (200, "v2\n".into()));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_unreachable_is_reported_while_the_proxy_keeps_serving() {
    if !docker::available() {
        return;
    }
    let images = Images::new("down");
    images.build("v1", "");
    let mut d = Daemon::start("docker", "timeout = \"20s\"", &docker_service("ddown", &images, ""));
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // Restart the daemon pointed at a Docker that is not there.
    d.kill9();
    d.daemon_env = vec![(
        "DOCKER_HOST".into(),
        format!("unix://{}/no-docker.sock", d.dir.path().display()),
    )];
    d.spawn();
    let load = Load::start(d.proxy, 20);
    let status = d.status().await;
    assert_eq!(status["driver"]["ok"], false);
    assert!(
        status["driver"]["error"]
            .as_str()
            .unwrap()
            .contains("Docker is unreachable"),
        "{status}"
    );
    assert_eq!(status["active"]["tag"], "v1");
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Docker is unreachable"),
        "{}",
        text(&out)
    );
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "v1\n".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_compose_services_are_imported() {
    if !docker::available() {
        return;
    }
    let images = Images::new("compose");
    images.build("v1", "");
    images.build("v2", "");
    let network = docker::Network::new("compose");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let compose = dir.path().join("docker-compose.yml");
    std::fs::write(dir.path().join(".env"), "GREETING_SUFFIX=from-dotenv\n").unwrap();
    std::fs::write(
        &compose,
        format!(
            r#"name: {repo}
services:
  dcompose:
    image: {repo}:${{TAG}}
    environment:
      VERSION: "compose-${{TAG}}-${{GREETING_SUFFIX}}"
    ports: ["8080:8000"]
    volumes: ["./data:/data:ro"]
    networks: [{network}]
    healthcheck:
      test: ["CMD", "/testapp", "healthcheck"]
      interval: 1s
    restart: always
  db:
    image: postgres:16
networks:
  {network}: {{external: true}}
"#,
            repo = images.repo,
            network = network.name
        ),
    )
    .unwrap();
    let d = Daemon::start_with(
        &format!("compose = \"{}\"", compose.display()),
        "docker",
        "timeout = \"30s\"",
        "[[service]]\nname = \"dcompose\"\nhealth = { path = \"/health\" }\n",
    );
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let load = Load::start(d.proxy, 20);
    let out = deploy(&d, "v2").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(d.get("/").await, (200, "compose-v2-from-dotenv\n".into()));
    let container = &format!("{}-dcompose-green", images.repo);
    assert!(docker::inspect(container, "{{json .NetworkSettings.Networks}}").contains(&network.name));
    let mounts = docker::inspect(
        container,
        "{{range .Mounts}}{{.Source}}:{{.Destination}}:{{.RW}} {{end}}",
    );
    assert!(
        mounts.contains(&format!("{}/data:/data:false", dir.path().display())),
        "{mounts}"
    );
    assert_eq!(
        docker::inspect(container, "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    assert!(docker::inspect(container, "{{json .HostConfig.PortBindings}}").contains("\"HostIp\":\"127.0.0.1\""));

    // An unsupported Compose key is named, and nothing changes.
    std::fs::write(
        &compose,
        std::fs::read_to_string(&compose)
            .unwrap()
            .replace("    restart: always\n", "    restart: always\n    privileged: true\n"),
    )
    .unwrap();
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("services.dcompose.privileged"),
        "{}",
        text(&out)
    );
    assert_eq!(d.get("/").await, (200, "compose-v2-from-dotenv\n".into()));
}

/// Requests through the proxy for a moment: how many failed, and what answered.
async fn a_moment_of_load(d: &Daemon) -> common::LoadReport {
    let load = Load::start(d.proxy, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_supervision_recreates_a_removed_container_and_follows_a_restarted_one() {
    if !docker::available() {
        return;
    }
    let images = Images::new("supervise");
    images.build("v1", "");
    let d = Daemon::start("docker", "timeout = \"30s\"", &docker_service("dsuper", &images, ""));
    let out = deploy(&d, "v1").await;
    assert_eq!(out.status.code(), Some(0), "{}\n{}", text(&out), d.log());
    let container = docker::containers(&d.state_dir())[0]
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let blue = |status: &serde_json::Value| status["services"][0]["blue"].clone();

    // (a) The active container is removed under load: supervision makes a
    // new one, routes to it, and says so in status.
    let load = Load::start(d.proxy, 4);
    let removed = docker::inspect(&container, "{{.Id}}");
    let rm = std::process::Command::new("docker")
        .args(["rm", "-f", &container])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    wait_for(
        "the removed container to be recreated",
        Duration::from_secs(60),
        || async { blue(&d.status().await)["restarts"] == 1 && d.get("/").await == (200, "v1\n".into()) },
    )
    .await;
    load.stop().await;
    let after = a_moment_of_load(&d).await;
    assert_eq!(after.failed, 0, "{after:?}");
    assert!(after.sent > 0);
    let status = d.status().await;
    assert_eq!(blue(&status)["state"], "running", "{status}");
    assert_eq!(
        status["problems"],
        serde_json::json!([]),
        "nothing is down any more: {status}"
    );
    let recreated = docker::inspect(&container, "{{.Id}}");
    assert!(
        !recreated.is_empty() && recreated != removed,
        "a new container: {recreated}"
    );

    // (b) Docker restarts it: it comes back on another host port, and the
    // route follows without anyone deploying.
    let before = blue(&status)["upstream"].as_str().unwrap().to_string();
    let load = Load::start(d.proxy, 4);
    let restart = std::process::Command::new("docker")
        .args(["restart", "-t", "1", &container])
        .output()
        .unwrap();
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    wait_for(
        "the route to follow the restarted container",
        Duration::from_secs(60),
        || async {
            let status = d.status().await;
            blue(&status)["restarts"] == 2
                && blue(&status)["upstream"] != before.as_str()
                && d.get("/").await == (200, "v1\n".into())
        },
    )
    .await;
    load.stop().await;
    let after = a_moment_of_load(&d).await;
    assert_eq!(after.failed, 0, "{after:?}");
    assert!(after.sent > 0);
    let status = d.status().await;
    let now = blue(&status)["upstream"].as_str().unwrap().to_string();
    assert_eq!(
        now,
        format!(
            "127.0.0.1:{}",
            docker::inspect(
                &container,
                "{{(index (index .NetworkSettings.Ports \"8000/tcp\") 0).HostPort}}"
            )
        ),
        "the route names the port Docker published: {status}"
    );
    assert_eq!(
        docker::inspect(&container, "{{.Id}}"),
        recreated,
        "followed, not recreated: {}",
        d.log()
    );
    assert_eq!(status["problems"], serde_json::json!([]), "{status}");
    assert_eq!(d.state()["colors"]["blue"]["services"]["dsuper"]["addr"], now.as_str());
    assert!(d.log().contains("restarted by Docker"), "logged: {}", d.log());

    // (c) The app exits by itself: Docker's restart policy (every container
    // has `unless-stopped`) starts it again. Supervision follows it and never
    // replaces the container that serves: it used to read Docker's restart
    // count as "exited" and recreate it, stopping it first.
    let mut exit = std::net::TcpStream::connect(d.proxy).unwrap();
    std::io::Write::write_all(
        &mut exit,
        b"POST /exit HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let _ = std::io::Read::read_to_end(&mut exit, &mut Vec::new());
    wait_for("Docker to restart the app", Duration::from_secs(60), || async {
        docker::inspect(&container, "{{.RestartCount}}") == "1"
            && blue(&d.status().await)["restarts"] == 3
            && d.get("/").await == (200, "v1\n".into())
    })
    .await;
    // Past the 3 s grace after which an exited container is replaced.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = a_moment_of_load(&d).await;
    assert_eq!(after.failed, 0, "{after:?}");
    let status = d.status().await;
    assert_eq!(blue(&status)["restarts"], 3, "counted once: {status}");
    assert_eq!(blue(&status)["state"], "running", "{status}");
    assert_eq!(status["problems"], serde_json::json!([]), "{status}");
    assert_eq!(
        docker::inspect(&container, "{{.Id}}"),
        recreated,
        "the container Docker restarted serves on, not replaced: {}",
        d.log_tail(20)
    );
}
