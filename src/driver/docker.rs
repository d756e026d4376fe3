//! The Docker driver: each upstream is a container
//! `<project>-<service>-<color>` (without Compose, `switchctl-<instance
//! hash>-<service>-<color>`: two instances on one host never share a name)
//! from `<image>:<tag>`, labelled with its service, color, tag and the
//! switchctl instance (state dir) that owns it, plus the Compose service's
//! own labels, its port published on 127.0.0.1 only at a host port Docker
//! picks. Before anything is stopped, [`DockerDriver::preflight`] creates the
//! project's missing networks as Compose would, builds missing images of
//! services with `build:` (never pulling them), and checks `depends_on`.
//! Hooks run as one-off containers ([`DockerDriver::run_task`]). Talks to the
//! Engine API through bollard; a Docker daemon that is down never stops the
//! proxy.

mod events;

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody as ContainerConfig, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig,
    NetworkConnectRequest, NetworkCreateRequest, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::{ContainerHealth, DriverError, Progress, RunState, StartSpec, TaskFailure};
use crate::config::compose::{ComposeProject, Condition};
use crate::config::{Config, ServiceConfig};
use crate::release::{Handle, UpstreamRecord};

/// Label naming the service a container runs.
pub const LABEL_SERVICE: &str = "switchctl.service";
/// Label naming its color.
pub const LABEL_COLOR: &str = "switchctl.color";
/// Label naming its tag.
pub const LABEL_TAG: &str = "switchctl.tag";
/// Label naming the switchctl instance (its state dir) that owns it.
pub const LABEL_INSTANCE: &str = "switchctl.instance";
/// Label naming the hook service a one-off container runs.
pub const LABEL_TASK: &str = "switchctl.task";
/// Compose's labels, on the networks switchctl creates for a project and on
/// the containers Compose runs (how dependencies are found).
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
/// See [`COMPOSE_PROJECT`].
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// See [`COMPOSE_PROJECT`].
pub const COMPOSE_NETWORK: &str = "com.docker.compose.network";

/// Lines of a failed build or hook shown.
const TAIL_LINES: usize = 50;

/// Runs upstreams as Docker containers.
#[derive(Debug)]
pub struct DockerDriver {
    /// Connected on first use and again after a failure.
    client: Mutex<Option<Docker>>,
    instance: String,
    /// First part of every container name: the Compose project, or
    /// `switchctl-<hash of the instance>`.
    prefix: String,
    /// Woken by the engine's events about this instance's containers.
    changes: tokio::sync::Notify,
}

/// The last `n` of `lines`.
fn tail(lines: &[String], n: usize) -> Vec<String> {
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// A short stable hash (FNV-1a) of `s`, for names.
fn short_hash(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{:08x}", h >> 32)
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

/// How a container joins a network: a Compose service's container answers
/// to the service's name there (`http://api:8000`) when `named`.
fn endpoint(service: &ServiceConfig, named: bool) -> bollard::models::EndpointSettings {
    bollard::models::EndpointSettings {
        aliases: (named && service.compose.is_some()).then(|| vec![service.name.clone()]),
        ..Default::default()
    }
}

/// The host port `port/tcp` is published on.
fn published_port(settings: Option<bollard::models::NetworkSettings>, port: u16) -> Option<u16> {
    settings
        .and_then(|n| n.ports)
        .and_then(|p| p.get(&format!("{port}/tcp")).cloned().flatten())
        .and_then(|b| b.into_iter().find_map(|b| b.host_port))
        .and_then(|p| p.parse::<u16>().ok())
}

fn secs_nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_nanos() as i64)
}

impl DockerDriver {
    /// A driver for the switchctl instance whose state lives in `instance`,
    /// naming containers after Compose `project` when there is one.
    pub fn new(instance: String, project: Option<&str>) -> Self {
        let prefix = match project {
            Some(p) => p.to_string(),
            None => format!("switchctl-{}", short_hash(&instance)),
        };
        DockerDriver {
            client: Mutex::new(None),
            instance,
            prefix,
            changes: tokio::sync::Notify::new(),
        }
    }

    /// The container name of `service` in `color`.
    pub fn container_name(&self, service: &str, color: crate::release::Color) -> String {
        format!("{}-{service}-{color}", self.prefix)
    }

    async fn client(&self) -> Result<Docker, DriverError> {
        let mut slot = self.client.lock().await;
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let unreachable = |e: bollard::errors::Error| DriverError::Unreachable(e.to_string());
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = tokio::time::timeout(Duration::from_secs(5), docker.negotiate_version())
            .await
            .map_err(|_| DriverError::Unreachable("no answer within 5s".into()))?
            .map_err(unreachable)?;
        *slot = Some(docker.clone());
        Ok(docker)
    }

    /// Map an API error, forgetting the connection when Docker went away.
    async fn api_error(&self, e: bollard::errors::Error) -> DriverError {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError { message, .. } => DriverError::Other(message),
            other => {
                *self.client.lock().await = None;
                DriverError::Unreachable(other.to_string())
            }
        }
    }

    pub(super) async fn ping(&self) -> Result<(), DriverError> {
        let docker = self.client().await?;
        match docker.ping().await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.api_error(e).await),
        }
    }

    /// Before anything is stopped: the project's networks exist (created
    /// as Compose would when missing), every image of the deploy is on the
    /// host (built when the service has `build:`, pulled only for services of
    /// switchctl.toml), and each dependency is running (and healthy when
    /// asked).
    pub(super) async fn preflight(
        &self,
        config: &Config,
        tag: &str,
        progress: Progress<'_>,
    ) -> Result<(), DriverError> {
        let docker = self.client().await?;
        let hook_tasks: Vec<&ServiceConfig> = config
            .hooks
            .iter()
            .filter_map(|h| h.service.as_deref())
            .filter_map(|name| config.project.as_ref().and_then(|p| p.task(name)))
            .collect();
        let everything: Vec<&ServiceConfig> = config.services.iter().chain(hook_tasks.iter().copied()).collect();
        let mut networks: Vec<&str> = Vec::new();
        for s in &everything {
            for n in &s.networks {
                if !networks.contains(&n.as_str()) {
                    networks.push(n);
                }
            }
        }
        for n in networks {
            self.ensure_network(&docker, n, config.project.as_ref()).await?;
        }
        for s in &everything {
            self.ensure_image(&docker, s, tag, progress).await?;
        }
        if let Some(project) = &config.project {
            self.check_dependencies(&docker, config, project).await?;
        }
        Ok(())
    }

    /// Network `name` exists, or is created as Compose creates a project's
    /// network; a missing external network is an error.
    async fn ensure_network(
        &self,
        docker: &Docker,
        name: &str,
        project: Option<&ComposeProject>,
    ) -> Result<(), DriverError> {
        match docker.inspect_network(name, None).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.api_error(e).await),
        }
        let spec = project.and_then(|p| p.network(name).map(|n| (p, n)));
        let Some((project, spec)) = spec.filter(|(_, n)| !n.external) else {
            return Err(DriverError::Preflight(format!(
                "network {name} does not exist and is not switchctl's to create (it is external or not from the Compose file); \
                 create it first: docker network create {name}"
            )));
        };
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: spec.driver.clone(),
            labels: Some(HashMap::from([
                (COMPOSE_NETWORK.to_string(), spec.key.clone()),
                (COMPOSE_PROJECT.to_string(), project.name.clone()),
            ])),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Created meanwhile by someone else: what we wanted.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(DriverError::Preflight(format!("cannot create network {name}: {e}"))),
        }
    }

    /// `<image>:<tag>` of `s` is on the host: there already, built from
    /// `build:`, or (for a service of switchctl.toml only) pulled.
    async fn ensure_image(
        &self,
        docker: &Docker,
        s: &ServiceConfig,
        tag: &str,
        progress: Progress<'_>,
    ) -> Result<(), DriverError> {
        let image = format!("{}:{tag}", s.image.as_deref().unwrap_or_default());
        match docker.inspect_image(&image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.api_error(e).await),
        }
        if let Some(compose) = &s.compose {
            return match &compose.build {
                Some(build) => self.build(docker, &s.name, build, &image, tag, progress).await,
                None => Err(DriverError::Preflight(format!(
                    "image {image} for service {} is not on this host, and the service has no `build:`; \
                     build or load it first (switchctl does not pull Compose images during a deploy)",
                    s.name
                ))),
            };
        }
        // Not here: try to pull it, as `docker compose up` would.
        let mut pull = docker.create_image(
            Some(CreateImageOptionsBuilder::new().from_image(&image).build()),
            None,
            None,
        );
        let mut failure = None;
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                failure = Some(e.to_string());
                break;
            }
        }
        if let Some(why) = failure {
            return Err(DriverError::Preflight(format!(
                "image {image} for service {} is not on this host and could not be pulled ({why}); \
                 check the tag, or build/load the image first",
                s.name
            )));
        }
        Ok(())
    }

    /// Build `image` from `build` with the classic builder; output goes to
    /// `progress` line by line.
    async fn build(
        &self,
        docker: &Docker,
        service: &str,
        build: &crate::config::compose::BuildSpec,
        image: &str,
        tag: &str,
        progress: Progress<'_>,
    ) -> Result<(), DriverError> {
        let started = std::time::Instant::now();
        progress(service, &format!("building {image} from {}", build.context.display()));
        let context = build.context.clone();
        let dockerfile = build.dockerfile.clone();
        let tar = tokio::task::spawn_blocking(move || super::context::tar_context(&context, &dockerfile))
            .await
            .map_err(|e| DriverError::Other(e.to_string()))?
            .map_err(|e| DriverError::Preflight(format!("cannot build {image} for service {service}: {e}")))?;
        let args: HashMap<String, String> = build
            .args
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{tag}", tag)))
            .collect();
        let labels: HashMap<String, String> = build
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain([(LABEL_INSTANCE.to_string(), self.instance.clone())])
            .collect();
        let mut options = BuildImageOptionsBuilder::new()
            .dockerfile(&build.dockerfile)
            .t(image)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .labels(&labels)
            .version(BuilderVersion::BuilderV1);
        if let Some(target) = &build.target {
            options = options.target(target);
        }
        let mut stream = docker.build_image(options.build(), None, Some(bollard::body_full(tar.into())));
        let mut lines: Vec<String> = Vec::new();
        let mut partial = String::new();
        let mut failure = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(text) = info.stream.or(info.status) {
                        partial.push_str(&text);
                        while let Some(i) = partial.find('\n') {
                            let line: String = partial.drain(..=i).collect();
                            let line = line.trim_end().to_string();
                            if !line.is_empty() {
                                progress(service, &line);
                                lines.push(line);
                            }
                        }
                    }
                    if let Some(detail) = info.error_detail {
                        failure = Some(detail.message.unwrap_or_else(|| "the build failed".into()));
                    }
                }
                Err(e) => {
                    failure = Some(match e {
                        bollard::errors::Error::DockerStreamError { error } => error,
                        bollard::errors::Error::DockerResponseServerError { message, .. } => message,
                        other => other.to_string(),
                    });
                    break;
                }
            }
        }
        if !partial.trim().is_empty() {
            lines.push(partial.trim().to_string());
        }
        if let Some(why) = failure {
            lines.push(why.clone());
            let shown = tail(&lines, TAIL_LINES);
            return Err(DriverError::Preflight(format!(
                "building {image} for service {service} failed: {why}; nothing was stopped. Last {} line(s) of the build:\n{}",
                shown.len(),
                shown.join("\n")
            )));
        }
        progress(
            service,
            &format!("built {image} in {:.1}s", started.elapsed().as_secs_f64()),
        );
        Ok(())
    }

    /// Each `depends_on` of a switched service that Compose runs is running,
    /// and healthy when the condition says so. Found by Compose's labels,
    /// else by its `container_name`. Never started, stopped or touched.
    async fn check_dependencies(
        &self,
        docker: &Docker,
        config: &Config,
        project: &ComposeProject,
    ) -> Result<(), DriverError> {
        let mut problems = Vec::new();
        for s in &config.services {
            let Some(compose) = &s.compose else { continue };
            for dep in &compose.depends_on {
                let switched = config.service(&dep.service).is_some();
                let hook = config
                    .hooks
                    .iter()
                    .any(|h| h.service.as_deref() == Some(dep.service.as_str()));
                if switched || hook {
                    continue;
                }
                let filters = HashMap::from([(
                    "label".to_string(),
                    vec![
                        format!("{COMPOSE_PROJECT}={}", project.name),
                        format!("{COMPOSE_SERVICE}={}", dep.service),
                    ],
                )]);
                let found = match docker
                    .list_containers(Some(
                        ListContainersOptionsBuilder::new().all(true).filters(&filters).build(),
                    ))
                    .await
                {
                    Ok(c) => c.into_iter().filter_map(|c| c.id).collect::<Vec<_>>(),
                    Err(e) => return Err(self.api_error(e).await),
                };
                let mut candidates = found;
                if let Some(name) = &dep.container_name {
                    candidates.push(name.clone());
                }
                let mut state = None;
                for c in candidates {
                    match docker.inspect_container(&c, None).await {
                        Ok(i) => {
                            state = i.state;
                            if state.as_ref().and_then(|s| s.running) == Some(true) {
                                break;
                            }
                        }
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => return Err(self.api_error(e).await),
                    }
                }
                let why = match (&state, dep.condition) {
                    (None, _) => Some("no container of it exists".to_string()),
                    (Some(st), Condition::CompletedSuccessfully) => (st.running == Some(true)
                        || st.exit_code != Some(0))
                    .then(|| "it has not completed successfully".to_string()),
                    (Some(st), _) if st.running != Some(true) => Some("it is not running".to_string()),
                    (Some(st), Condition::Healthy) => match st.health.as_ref().and_then(|h| h.status) {
                        Some(HealthStatusEnum::HEALTHY) => None,
                        Some(other) => Some(format!("it is {other}, and the condition is service_healthy")),
                        None => Some("it has no healthcheck, and the condition is service_healthy".to_string()),
                    },
                    (Some(_), _) => None,
                };
                if let Some(why) = why {
                    let msg = format!(
                        "{} depends on {} ({why}); start it first: docker compose -p {} up -d {}",
                        s.name, dep.service, project.name, dep.service
                    );
                    if dep.required {
                        problems.push(msg);
                    } else {
                        tracing::warn!("{msg} (not required)");
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DriverError::Preflight(problems.join("; ")))
        }
    }

    pub(super) async fn start(&self, spec: &StartSpec<'_>) -> Result<UpstreamRecord, DriverError> {
        let docker = self.client().await?;
        let service = spec.service;
        let fail = |message: String| DriverError::Start {
            service: service.name.clone(),
            color: spec.color,
            message,
        };
        let port = service
            .port
            .ok_or_else(|| fail("no container port configured".into()))?;
        let name = self.container_name(&service.name, spec.color);
        // A leftover of the same name (an interrupted deploy) goes first, if
        // it is this instance's: another's is never touched.
        match docker.inspect_container(&name, None).await {
            Ok(existing) => {
                let owner = existing
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(LABEL_INSTANCE).cloned());
                if owner.as_deref() != Some(self.instance.as_str()) {
                    return Err(fail(format!(
                        "a container named {name} exists and is not this switchctl instance's ({}); \
                         give this instance its own Compose project name, or remove that container",
                        owner.map_or("not switchctl's".to_string(), |o| format!("instance {o}"))
                    )));
                }
                let _ = docker
                    .remove_container(&name, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
                    .await;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(self.api_error(e).await),
        }

        let image = format!("{}:{}", service.image.as_deref().unwrap_or_default(), spec.tag);
        let env: Vec<String> = spec
            .environment(port)?
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let exposed = format!("{port}/tcp");
        let binds: Vec<String> = service
            .volumes
            .iter()
            .map(|v| match v.split_once(':') {
                Some((src, rest)) if src.starts_with('.') => {
                    format!("{}:{rest}", spec.config.resolve(std::path::Path::new(src)).display())
                }
                _ => v.clone(),
            })
            .collect();
        let compose = service.compose.clone().unwrap_or_default();
        let mut labels: HashMap<String, String> = compose.labels.clone().into_iter().collect();
        labels.extend([
            (LABEL_SERVICE.to_string(), service.name.clone()),
            (LABEL_COLOR.to_string(), spec.color.to_string()),
            (LABEL_TAG.to_string(), spec.tag.to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ]);
        let healthcheck = service.docker_healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: secs_nanos(h.interval),
            timeout: secs_nanos(h.timeout),
            retries: h.retries.map(i64::from),
            start_period: secs_nanos(h.start_period),
            start_interval: None,
        });
        let config = ContainerConfig {
            image: Some(image.clone()),
            env: Some(env),
            cmd: service
                .command
                .as_ref()
                .map(|c| c.iter().map(|a| spec.substitute(a, port)).collect()),
            entrypoint: compose.entrypoint.clone(),
            user: compose.user.clone(),
            working_dir: compose.working_dir.clone(),
            stop_signal: compose.stop_signal.clone(),
            labels: Some(labels),
            exposed_ports: Some(vec![exposed.clone()]),
            healthcheck,
            host_config: Some(HostConfig {
                extra_hosts: (!compose.extra_hosts.is_empty()).then(|| compose.extra_hosts.clone()),
                init: compose.init,
                log_config: compose.logging.as_ref().map(|l| HostConfigLogConfig {
                    typ: l.driver.clone(),
                    config: Some(l.options.clone().into_iter().collect()),
                }),
                port_bindings: Some(HashMap::from([(
                    exposed.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                binds: (!binds.is_empty()).then_some(binds),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), config)
            .await
            .map_err(|e| fail(format!("create {name} from {image}: {e}")))?;
        let handle = Handle::Container { id: created.id.clone() };
        let cleanup = |e: String| async {
            let _ = docker
                .remove_container(
                    &created.id,
                    Some(RemoveContainerOptionsBuilder::new().force(true).build()),
                )
                .await;
            fail(e)
        };
        for network in &service.networks {
            let opts = NetworkConnectRequest {
                container: created.id.clone(),
                endpoint_config: Some(endpoint(service, true)),
            };
            if let Err(e) = docker.connect_network(network, opts).await {
                return Err(cleanup(format!("join network {network}: {e}")).await);
            }
        }
        if let Err(e) = docker.start_container(&created.id, None::<StartContainerOptions>).await {
            return Err(cleanup(format!("start {name}: {e}")).await);
        }
        let inspect = match docker.inspect_container(&created.id, None).await {
            Ok(i) => i,
            Err(e) => return Err(cleanup(format!("inspect {name}: {e}")).await),
        };
        let host_port = published_port(inspect.network_settings, port);
        let Some(host_port) = host_port else {
            // It may have exited before its port was published.
            return Ok(UpstreamRecord {
                addr: ([127, 0, 0, 1], 0).into(),
                handle,
            });
        };
        Ok(UpstreamRecord {
            addr: ([127, 0, 0, 1], host_port).into(),
            handle,
        })
    }

    /// The host address the container's port is published on now.
    pub(super) async fn current_addr(&self, handle: &Handle, service: &ServiceConfig) -> Option<std::net::SocketAddr> {
        let Handle::Container { id } = handle else { return None };
        let port = service.port?;
        let docker = self.client().await.ok()?;
        let inspect = docker.inspect_container(id, None).await.ok()?;
        published_port(inspect.network_settings, port).map(|p| ([127, 0, 0, 1], p).into())
    }

    /// Run `spec.service` once, as `docker run --rm` would, its output
    /// streamed to `progress`; killed after `timeout`.
    pub(super) async fn run_task(
        &self,
        spec: &StartSpec<'_>,
        extra_env: &[(String, String)],
        timeout: Duration,
        progress: Progress<'_>,
    ) -> Result<(), TaskFailure> {
        let failure = |message: String| TaskFailure {
            message,
            lines: Vec::new(),
        };
        let docker = self.client().await.map_err(|e| failure(e.to_string()))?;
        let service = spec.service;
        let compose = service.compose.clone().unwrap_or_default();
        let image = format!("{}:{}", service.image.as_deref().unwrap_or_default(), spec.tag);
        let nonce = short_hash(&format!("{:?}{}", std::time::SystemTime::now(), std::process::id()));
        let name = format!("{}-{}-run-{nonce}", self.prefix, service.name);
        let mut env: Vec<String> = spec
            .environment(0)
            .map_err(|e| failure(e.to_string()))?
            .into_iter()
            .chain(extra_env.iter().cloned())
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        env.dedup();
        let mut labels: HashMap<String, String> = compose.labels.clone().into_iter().collect();
        labels.extend([
            (LABEL_TASK.to_string(), service.name.clone()),
            (LABEL_TAG.to_string(), spec.tag.to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
        ]);
        let config = ContainerConfig {
            image: Some(image.clone()),
            env: Some(env),
            cmd: service
                .command
                .as_ref()
                .map(|c| c.iter().map(|a| spec.substitute(a, 0)).collect()),
            entrypoint: compose.entrypoint.clone(),
            user: compose.user.clone(),
            working_dir: compose.working_dir.clone(),
            labels: Some(labels),
            host_config: Some(HostConfig {
                binds: (!service.volumes.is_empty()).then(|| service.volumes.clone()),
                extra_hosts: (!compose.extra_hosts.is_empty()).then(|| compose.extra_hosts.clone()),
                init: compose.init,
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = docker
            .create_container(Some(CreateContainerOptionsBuilder::new().name(&name).build()), config)
            .await
            .map_err(|e| failure(format!("cannot create {name} from {image}: {e}")))?;
        let id = created.id;
        let remove = || async {
            let _ = docker
                .remove_container(&id, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
                .await;
        };
        for network in &service.networks {
            let opts = NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: Default::default(),
            };
            if let Err(e) = docker.connect_network(network, opts).await {
                remove().await;
                return Err(failure(format!("cannot join network {network}: {e}")));
            }
        }
        if let Err(e) = docker.start_container(&id, None::<StartContainerOptions>).await {
            remove().await;
            return Err(failure(format!("cannot start {name}: {e}")));
        }
        let lines = std::sync::Mutex::new(Vec::<String>::new());
        let run = async {
            let mut logs = docker.logs(
                &id,
                Some(LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).build()),
            );
            let mut partial = String::new();
            while let Some(Ok(chunk)) = logs.next().await {
                partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    let line = line.trim_end().to_string();
                    progress(&service.name, &line);
                    lines.lock().expect("lines lock").push(line);
                }
            }
            if !partial.trim().is_empty() {
                progress(&service.name, partial.trim());
                lines.lock().expect("lines lock").push(partial.trim().to_string());
            }
            let mut wait = docker.wait_container(&id, None::<WaitContainerOptions>);
            match wait.next().await {
                Some(Ok(r)) => Ok(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("Docker did not report how it ended".to_string()),
            }
        };
        let outcome = tokio::time::timeout(timeout, run).await;
        if outcome.is_err() {
            let _ = docker.kill_container(&id, None::<KillContainerOptions>).await;
        }
        remove().await;
        let lines = tail(&lines.into_inner().expect("lines lock"), TAIL_LINES);
        let message = match outcome {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(code)) => format!("{} exited with status {code}", service.name),
            Ok(Err(why)) => format!("{}: {why}", service.name),
            Err(_) => format!(
                "{} did not finish within {}; it was killed",
                service.name,
                humantime::format_duration(timeout)
            ),
        };
        Err(TaskFailure { message, lines })
    }

    /// Give (or take away) the Compose service's name as a network alias of
    /// the container `handle`, on each of its networks: Docker cannot change
    /// the aliases of a connected container, so it is disconnected and
    /// connected again (its connections on those networks are reset; its
    /// published port, on the default bridge, is not touched).
    pub(super) async fn set_service_alias(
        &self,
        handle: &Handle,
        service: &ServiceConfig,
        named: bool,
    ) -> Result<(), DriverError> {
        let Handle::Container { id } = handle else {
            return Ok(());
        };
        if service.compose.is_none() {
            return Ok(());
        }
        let docker = self.client().await?;
        for network in &service.networks {
            let disconnect = bollard::models::NetworkDisconnectRequest {
                container: id.clone(),
                force: Some(true),
            };
            match docker.disconnect_network(network, disconnect).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => return Ok(()),
                Err(e) => return Err(DriverError::Other(format!("disconnect from {network}: {e}"))),
            }
            let connect = NetworkConnectRequest {
                container: id.clone(),
                endpoint_config: Some(endpoint(service, named)),
            };
            docker
                .connect_network(network, connect)
                .await
                .map_err(|e| DriverError::Other(format!("reconnect to {network}: {e}")))?;
        }
        Ok(())
    }

    pub(super) async fn state(&self, handle: &Handle) -> RunState {
        let Handle::Container { id } = handle else {
            return RunState::Missing;
        };
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return RunState::Unknown { reason: e.to_string() },
        };
        let inspect = match docker.inspect_container(id, None).await {
            Ok(i) => i,
            Err(e) if is_not_found(&e) => return RunState::Missing,
            Err(e) => {
                return RunState::Unknown {
                    reason: self.api_error(e).await.to_string(),
                }
            }
        };
        let Some(state) = inspect.state else {
            return RunState::Unknown {
                reason: "Docker reported no state".into(),
            };
        };
        let code = state.exit_code.unwrap_or(0);
        if state.restarting == Some(true) {
            return RunState::Exited {
                reason: format!("restarting after exiting with status {code} (restart loop)"),
            };
        }
        if state.running != Some(true) {
            let oom = if state.oom_killed == Some(true) {
                " (out of memory)"
            } else {
                ""
            };
            return RunState::Exited {
                reason: format!("exited with status {code}{oom}"),
            };
        }
        let restarts = inspect.restart_count.map_or(0, |n| n.max(0) as u64);
        let health = state.health.and_then(|h| h.status).and_then(|s| match s {
            HealthStatusEnum::STARTING => Some(ContainerHealth::Starting),
            HealthStatusEnum::HEALTHY => Some(ContainerHealth::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(ContainerHealth::Unhealthy),
            _ => None,
        });
        RunState::Running { health, restarts }
    }

    pub(super) async fn stop(&self, handle: &Handle, timeout: Duration) -> Result<(), DriverError> {
        let Handle::Container { id } = handle else {
            return Err(DriverError::Other("not a container handle".into()));
        };
        let docker = self.client().await?;
        let t = timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
        match docker
            .stop_container(id, Some(StopContainerOptionsBuilder::new().t(t).build()))
            .await
        {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(e) => return Err(self.api_error(e).await),
        }
        match docker
            .remove_container(id, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => Ok(()), // removal already in progress
            Err(e) => Err(self.api_error(e).await),
        }
    }

    pub(super) async fn logs(&self, handle: &Handle, lines: usize) -> Vec<String> {
        let Handle::Container { id } = handle else {
            return Vec::new();
        };
        let Ok(docker) = self.client().await else {
            return Vec::new();
        };
        let mut stream = docker.logs(
            id,
            Some(
                LogsOptionsBuilder::new()
                    .stdout(true)
                    .stderr(true)
                    .tail(&lines.to_string())
                    .build(),
            ),
        );
        let mut text = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        text.lines().map(String::from).collect()
    }

    pub(super) async fn orphans(&self, known: &[Handle]) -> Result<Vec<Handle>, DriverError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTANCE}={}", self.instance)])]);
        let containers = match docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new().all(true).filters(&filters).build(),
            ))
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(self.api_error(e).await),
        };
        let known: Vec<&str> = known
            .iter()
            .filter_map(|h| match h {
                Handle::Container { id } => Some(id.as_str()),
                Handle::Process { .. } => None,
            })
            .collect();
        Ok(containers
            .into_iter()
            .filter_map(|c| c.id)
            .filter(|id| !known.contains(&id.as_str()))
            .map(|id| Handle::Container { id })
            .collect())
    }

    /// Running containers of this instance, as their labels and published
    /// port describe them.
    pub(super) async fn survivors(&self) -> Result<Vec<super::Survivor>, DriverError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_INSTANCE}={}", self.instance)])]);
        let containers = match docker
            .list_containers(Some(ListContainersOptionsBuilder::new().filters(&filters).build()))
            .await
        {
            Ok(c) => c,
            Err(e) => return Err(self.api_error(e).await),
        };
        Ok(containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels?;
                let port = c
                    .ports?
                    .into_iter()
                    .find(|p| p.ip.as_deref() == Some("127.0.0.1") && p.public_port.is_some())?
                    .public_port?;
                Some(super::Survivor {
                    service: labels.get(LABEL_SERVICE)?.clone(),
                    color: crate::release::Color::parse(labels.get(LABEL_COLOR)?)?,
                    tag: labels.get(LABEL_TAG)?.clone(),
                    record: UpstreamRecord {
                        addr: ([127, 0, 0, 1], port).into(),
                        handle: Handle::Container { id: c.id? },
                    },
                })
            })
            .collect())
    }

    pub(super) async fn cleanup_images(
        &self,
        services: &[ServiceConfig],
        tags: &[String],
    ) -> Result<Vec<String>, DriverError> {
        let docker = self.client().await?;
        let mut removed = Vec::new();
        for tag in tags {
            for s in services {
                let Some(repo) = s.image.as_deref() else { continue };
                let reference = format!("{repo}:{tag}");
                match docker
                    .remove_image(
                        &reference,
                        Some(RemoveImageOptionsBuilder::new().force(false).noprune(false).build()),
                        None,
                    )
                    .await
                {
                    Ok(_) => removed.push(reference),
                    Err(e) if is_not_found(&e) => {}
                    Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                        tracing::warn!(image = %reference, error = %message, "could not remove old image")
                    }
                    Err(e) => return Err(self.api_error(e).await),
                }
            }
        }
        Ok(removed)
    }
}
