//! `HealthCheck`: is a new upstream ready for traffic? An HTTP GET of the
//! service's health path on its loopback address, the first at once and then
//! every `health_check_interval`, until `healthy_threshold` good answers in a
//! row, while the driver is asked whether the upstream is still running (an
//! exit fails at once) and, for a Docker HEALTHCHECK, healthy.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::event::{Phase, Reporter};
use crate::config::HealthConfig;
use crate::driver::{ContainerHealth, Driver, RunState};
use crate::release::Handle;

/// How often the driver is asked whether the upstream still runs, between probes.
const EXIT_POLL: Duration = Duration::from_millis(100);
/// The wait before the second probe. For the first [`FAST_FOR`] of a check
/// the step stays at most [`FAST_STEP`], so an app ready soon after it
/// starts is flipped to within ~100 ms of being ready (the ready-to-flip
/// target); then it doubles up to `health_check_interval`, so a slow app is
/// not probed in a busy loop.
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest step while a check is young.
const FAST_STEP: Duration = Duration::from_millis(100);
/// How long a check probes at [`FAST_STEP`] at most.
const FAST_FOR: Duration = Duration::from_secs(3);

/// The wait after `wait`, `elapsed` into the check: twice as long, up to
/// [`FAST_STEP`] while the check is young, then up to `interval`.
fn next_wait(wait: Duration, elapsed: Duration, interval: Duration) -> Duration {
    let cap = if elapsed < FAST_FOR { FAST_STEP } else { interval };
    wait.saturating_mul(2).min(cap).min(interval)
}

/// How often a failing health check says so.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One probe: `Ok(status)` when the upstream answered as expected.
pub async fn probe(addr: SocketAddr, health: &HealthConfig) -> Result<u16, String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        tokio::spawn(conn);
        let req = http::Request::get(&health.path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, "switchctl-health")
            .header(http::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad health path {:?}: {e}", health.path))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {} on {addr}: {e}", health.path))?;
        Ok::<_, String>(resp.status().as_u16())
    };
    let status = tokio::time::timeout(health.timeout, attempt)
        .await
        .map_err(|_| format!("GET {} on {addr}: no answer within {:?}", health.path, health.timeout))??;
    let good = match health.expected_status {
        Some(expected) => status == expected,
        None => (200..300).contains(&status),
    };
    if good {
        Ok(status)
    } else {
        let wanted = health.expected_status.map_or("2xx".to_string(), |s| s.to_string());
        Err(format!("GET {} answered {status} (expected {wanted})", health.path))
    }
}

/// Why an upstream never became healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unhealthy {
    /// The process or container stopped.
    Exited(String),
    /// The deadline passed; the last problem seen.
    TimedOut(String),
    /// The deploy was cancelled.
    Cancelled,
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unhealthy::Exited(why) => write!(f, "it {why}"),
            Unhealthy::TimedOut(last) => write!(f, "not healthy before the deploy timeout; last check: {last}"),
            Unhealthy::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// Everything one health check needs.
pub struct HealthCheck<'a> {
    /// the driver that runs the upstream
    pub driver: &'a Driver,
    /// its handle
    pub handle: &'a Handle,
    /// where it listens
    pub addr: SocketAddr,
    /// the service's health settings
    pub health: &'a HealthConfig,
    /// time between probes
    pub interval: Duration,
    /// when to give up
    pub deadline: Instant,
    /// where progress goes
    pub reporter: &'a Reporter,
    /// service name, for reports
    pub service: &'a str,
}

impl HealthCheck<'_> {
    /// Probe until healthy, exited, or past the deadline.
    pub async fn wait(&self) -> Result<(), Unhealthy> {
        let mut good = 0u32;
        let mut last;
        let mut last_report: Option<(Instant, String)> = None;
        let started = Instant::now();
        let mut wait = FIRST_RETRY.min(self.interval);
        loop {
            let container_health = match self.driver.state(self.handle).await {
                // Docker's restart policy brought it back: it crashed while
                // starting, whatever it answers now.
                RunState::Running { restarts, .. } if restarts > 0 => {
                    return Err(Unhealthy::Exited(format!(
                        "restarted {restarts} time(s) after crashing"
                    )))
                }
                RunState::Running { health, .. } => health,
                RunState::Exited { reason } => return Err(Unhealthy::Exited(reason)),
                RunState::Missing => return Err(Unhealthy::Exited("disappeared".into())),
                RunState::Unknown { reason } => {
                    return Err(Unhealthy::Exited(format!("cannot be inspected: {reason}")))
                }
            };
            match probe(self.addr, self.health).await {
                Ok(status) => {
                    good += 1;
                    match container_health {
                        Some(ContainerHealth::Starting) if self.health.wait_for_docker_starting => {
                            good = good.min(self.health.healthy_threshold.saturating_sub(1));
                            last = format!("answered {status}; Docker HEALTHCHECK still starting");
                        }
                        Some(ContainerHealth::Unhealthy) => {
                            good = 0;
                            last = format!("answered {status}; Docker HEALTHCHECK reports unhealthy");
                        }
                        _ => {
                            if good >= self.health.healthy_threshold {
                                return Ok(());
                            }
                            last = format!("answered {status} ({good}/{} in a row)", self.health.healthy_threshold);
                        }
                    }
                }
                Err(why) => {
                    good = 0;
                    last = why;
                }
            }
            // Say what is going on now and then, not on every probe.
            // ...and at once when the reason changes (e.g. from "connection
            // refused" to "Docker HEALTHCHECK still starting").
            if good == 0
                && last_report
                    .as_ref()
                    .is_none_or(|(t, said)| t.elapsed() >= REPORT_EVERY || *said != last)
            {
                self.reporter
                    .warn(Phase::Health, Some(self.service), format!("not healthy yet: {last}"));
                last_report = Some((Instant::now(), last.clone()));
            }
            let next = Instant::now() + wait;
            wait = next_wait(wait, started.elapsed(), self.interval);
            if next >= self.deadline {
                // One last wait up to the deadline, still watching for an exit.
                self.watch_until(self.deadline).await?;
                return Err(Unhealthy::TimedOut(last));
            }
            self.watch_until(next).await?;
        }
    }

    /// Sleep until `until`, checking that the upstream keeps running.
    async fn watch_until(&self, until: Instant) -> Result<(), Unhealthy> {
        while Instant::now() < until {
            tokio::time::sleep_until(until.min(Instant::now() + EXIT_POLL)).await;
            match self.driver.state(self.handle).await {
                RunState::Exited { reason } => return Err(Unhealthy::Exited(reason)),
                RunState::Missing => return Err(Unhealthy::Exited("disappeared".into())),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn app(fail: bool) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(switchctl_testapp::serve(
            listener,
            switchctl_testapp::App::new("v1", fail, Duration::ZERO),
        ));
        addr
    }

    #[tokio::test]
    async fn probe_accepts_2xx_and_explains_the_rest() {
        let health = HealthConfig::default();
        assert_eq!(probe(app(false).await, &health).await, Ok(200));
        let err = probe(app(true).await, &health).await.unwrap_err();
        assert_eq!(err, "GET /health answered 503 (expected 2xx)");
        let expect_503 = HealthConfig {
            expected_status: Some(503),
            ..HealthConfig::default()
        };
        assert_eq!(probe(app(true).await, &expect_503).await, Ok(503));
    }

    #[test]
    fn probes_step_at_most_100ms_for_3s_then_double_up_to_the_interval() {
        let interval = Duration::from_secs(5);
        let (mut wait, mut elapsed) = (FIRST_RETRY.min(interval), Duration::ZERO);
        let mut waits = vec![wait];
        while waits.len() < 40 {
            elapsed += wait;
            wait = next_wait(wait, elapsed, interval);
            waits.push(wait);
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        // 50, then 100 until 3 s have passed (50 + 29 × 100 = 2950 ms), then doubling.
        assert_eq!(ms[..2], [50, 100]);
        assert!(ms[1..31].iter().all(|&w| w == 100), "{ms:?}");
        assert_eq!(ms[31..36], [200, 400, 800, 1600, 3200]);
        assert!(ms[36..].iter().all(|&w| w == 5000), "{ms:?}");
        // A short interval is never exceeded.
        let short = Duration::from_millis(20);
        assert_eq!(FIRST_RETRY.min(short), short);
        assert_eq!(next_wait(short, Duration::ZERO, short), short);
    }

    #[tokio::test]
    async fn an_app_ready_soon_is_seen_within_the_first_backoff_steps() {
        // Bind now, serve after 300 ms: with a 5 s interval, the check must
        // see it within the 100 ms steps of the first seconds, not at 5 s.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            switchctl_testapp::serve(listener, switchctl_testapp::App::new("v1", false, Duration::ZERO)).await;
        });
        let driver = Driver::Process(crate::driver::process::ProcessDriver::new(std::env::temp_dir()));
        let handle = Handle::Process {
            pid: std::process::id() as i32,
            start_time: crate::driver::process::start_time_of(std::process::id() as i32),
        };
        let health = HealthConfig::default();
        let reporter = Reporter::silent();
        let start = Instant::now();
        let check = HealthCheck {
            driver: &driver,
            handle: &handle,
            addr,
            health: &health,
            interval: Duration::from_secs(5),
            deadline: start + Duration::from_secs(60),
            reporter: &reporter,
            service: "web",
        };
        check.wait().await.unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn probe_of_a_closed_port_says_so() {
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = probe(addr, &HealthConfig::default()).await.unwrap_err();
        assert!(err.starts_with(&format!("connect to {addr}")), "{err}");
    }
}
