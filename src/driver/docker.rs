//! The Docker driver: each upstream is a container `switchctl-<service>-<color>`
//! from `<image>:<tag>`, labelled with its service, color, tag and the
//! switchctl instance (state dir) that owns it, its port published on
//! 127.0.0.1 only at a host port Docker picks. Talks to the Engine API through
//! bollard; a Docker daemon that is down never stops the proxy.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody as ContainerConfig, HealthConfig, HealthStatusEnum, HostConfig, NetworkConnectRequest,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, StartContainerOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::Mutex;

use super::{ContainerHealth, DriverError, RunState, StartSpec};
use crate::config::ServiceConfig;
use crate::release::{Handle, UpstreamRecord};

/// Label naming the service a container runs.
pub const LABEL_SERVICE: &str = "switchctl.service";
/// Label naming its color.
pub const LABEL_COLOR: &str = "switchctl.color";
/// Label naming its tag.
pub const LABEL_TAG: &str = "switchctl.tag";
/// Label naming the switchctl instance (its state dir) that owns it.
pub const LABEL_INSTANCE: &str = "switchctl.instance";

/// Runs upstreams as Docker containers.
#[derive(Debug)]
pub struct DockerDriver {
    /// Connected on first use and again after a failure.
    client: Mutex<Option<Docker>>,
    instance: String,
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }
    )
}

fn secs_nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_nanos() as i64)
}

impl DockerDriver {
    /// A driver for the switchctl instance whose state lives in `instance`.
    pub fn new(instance: String) -> Self {
        DockerDriver {
            client: Mutex::new(None),
            instance,
        }
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

    pub(super) async fn preflight(&self, services: &[ServiceConfig], tag: &str) -> Result<(), DriverError> {
        let docker = self.client().await?;
        for s in services {
            let image = format!("{}:{tag}", s.image.as_deref().unwrap_or_default());
            match docker.inspect_image(&image).await {
                Ok(_) => continue,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(self.api_error(e).await),
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
        }
        Ok(())
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
        let name = format!("switchctl-{}-{}", service.name, spec.color);
        // A leftover of the same name (an interrupted deploy) goes first.
        let _ = docker
            .remove_container(&name, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
            .await;

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
        let labels = HashMap::from([
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
            labels: Some(labels),
            exposed_ports: Some(vec![exposed.clone()]),
            healthcheck,
            host_config: Some(HostConfig {
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
                endpoint_config: Default::default(),
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
        let host_port = inspect
            .network_settings
            .and_then(|n| n.ports)
            .and_then(|p| p.get(&exposed).cloned().flatten())
            .and_then(|b| b.into_iter().find_map(|b| b.host_port))
            .and_then(|p| p.parse::<u16>().ok());
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
        // A container that already restarted has crashed at least once.
        if inspect.restart_count.unwrap_or(0) > 0 {
            return RunState::Exited {
                reason: format!(
                    "restarted {} time(s) after crashing",
                    inspect.restart_count.unwrap_or(0)
                ),
            };
        }
        let health = state.health.and_then(|h| h.status).and_then(|s| match s {
            HealthStatusEnum::STARTING => Some(ContainerHealth::Starting),
            HealthStatusEnum::HEALTHY => Some(ContainerHealth::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(ContainerHealth::Unhealthy),
            _ => None,
        });
        RunState::Running { health }
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
