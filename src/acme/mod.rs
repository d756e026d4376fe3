//! Automatic certificates (`[proxy.tls.acme]`) with instant-acme: one
//! background task per domain obtains its certificate, serves it from the
//! proxy's [`CertStore`] (in memory, under [`cert_id`]), caches it under
//! `state_dir/acme` ([`cache`]) and renews it, 30 days before expiry or at
//! two thirds of a shorter lifetime, with a doubling backoff after errors.
//!
//! Domains are independent: each has its own order and task, so one that
//! fails (DNS not pointing here yet, a rate limit) never holds up another,
//! nor the proxy, which serves whatever it has meanwhile. A certificate is
//! swapped in the store in one step, so open connections are untouched.
//!
//! At start a cached certificate is served at once and nothing is asked of
//! the ACME server until a renewal is due: the account is restored (or
//! created) only then. Challenges are answered by the proxy itself: HTTP-01
//! from the store's token map on the plain listeners, TLS-ALPN-01 with a
//! challenge certificate on the TLS listeners.

pub mod cache;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType, HttpClient,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use switchctl_proxy::{CertDetails, CertStore};
use tokio_util::sync::CancellationToken;

use crate::config::tls::ChallengeKind;
use crate::config::Config;
use cache::Cache;

/// Renew this long before expiry at the latest...
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// ...after a failure, wait this long first, doubling up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Longest sleep between looks at the clock (a suspended host wakes late).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// One HTTP exchange with the ACME server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Validation and issuance, each.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// The store id of `domain`'s ACME certificate.
pub fn cert_id(domain: &str) -> String {
    format!("acme:{domain}")
}

/// How one domain is doing, for `status`.
#[derive(Debug, Clone, Default)]
pub struct DomainStatus {
    /// Why the last attempt failed; cleared by a success.
    pub last_error: Option<String>,
    /// When the next order is due.
    pub next_attempt: Option<SystemTime>,
}

/// The ACME side of the daemon: settings, account, and each domain's status.
pub struct Acme {
    directory: String,
    contact: Vec<String>,
    challenge: ChallengeKind,
    ca_file: Option<PathBuf>,
    domains: Vec<String>,
    cache: Cache,
    certs: CertStore,
    account: tokio::sync::Mutex<Option<Account>>,
    board: Mutex<BTreeMap<String, DomainStatus>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.directory)
            .field("domains", &self.domains)
            .finish_non_exhaustive()
    }
}

impl Acme {
    /// ACME as `config` sets it up, serving into `certs`; `None` without
    /// `[proxy.tls.acme]`. Opens (creates) the cache; talks to no server.
    pub fn new(config: &Config, certs: CertStore) -> anyhow::Result<Option<Arc<Acme>>> {
        let Some(section) = config.proxy.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
            return Ok(None);
        };
        let cache = Cache::open(&config.state_dir, &section.directory)?;
        let domains = config.acme_domains();
        let board = domains.iter().map(|d| (d.clone(), DomainStatus::default())).collect();
        Ok(Some(Arc::new(Acme {
            directory: section.directory.clone(),
            contact: section.contact.clone(),
            challenge: section.challenge,
            ca_file: config.acme_ca_file(),
            domains,
            cache,
            certs,
            account: tokio::sync::Mutex::new(None),
            board: Mutex::new(board),
        })))
    }

    /// Serve every cached certificate now, then keep each domain's
    /// certificate in the background until `shutdown`.
    pub fn start(self: &Arc<Self>, shutdown: CancellationToken) {
        for domain in &self.domains {
            let cached = self.serve_cached(domain);
            // Known before `status` can be asked.
            let next = cached.as_ref().map_or_else(SystemTime::now, renewal_time);
            self.update(domain, |s| s.next_attempt = Some(next));
            let (acme, domain, shutdown) = (self.clone(), domain.clone(), shutdown.clone());
            tokio::spawn(async move { acme.keep(domain, cached, shutdown).await });
        }
    }

    /// Each domain and its status, in name order.
    pub fn status(&self) -> Vec<(String, DomainStatus)> {
        self.board
            .lock()
            .expect("acme board lock")
            .iter()
            .map(|(d, s)| (d.clone(), s.clone()))
            .collect()
    }

    /// The cache file of `domain`'s certificate.
    pub fn cert_path(&self, domain: &str) -> String {
        self.cache.cert_path(domain).display().to_string()
    }

    /// The cached certificate of `domain`, put in the store; its details.
    fn serve_cached(&self, domain: &str) -> Option<CertDetails> {
        let pem = self.cache.certificate(domain)?;
        match self.certs.insert_pem(&cert_id(domain), &pem, &pem) {
            Ok(details) if details.names.iter().any(|n| n == domain) => {
                tracing::info!(domain, expires = %rfc3339(details.not_after), "ACME: serving the cached certificate");
                Some(details)
            }
            Ok(_) => {
                self.certs.remove(&cert_id(domain));
                tracing::warn!(
                    domain,
                    "ACME: the cached certificate does not name the domain; ordering a new one"
                );
                None
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "ACME: the cached certificate cannot be used; ordering a new one");
                None
            }
        }
    }

    /// Keep `domain`'s certificate fresh until `shutdown`.
    async fn keep(&self, domain: String, mut current: Option<CertDetails>, shutdown: CancellationToken) {
        let mut backoff = FIRST_BACKOFF;
        let mut next = current.as_ref().map_or_else(SystemTime::now, renewal_time);
        loop {
            self.update(&domain, |s| s.next_attempt = Some(next));
            if !sleep_until(next, &shutdown).await {
                return;
            }
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.obtain(&domain) => r,
            };
            match attempt {
                Ok(details) => {
                    tracing::info!(
                        domain,
                        issuer = %details.issuer,
                        expires = %rfc3339(details.not_after),
                        renewed = current.is_some(),
                        "ACME: certificate obtained and serving"
                    );
                    self.update(&domain, |s| s.last_error = None);
                    backoff = FIRST_BACKOFF;
                    // Never straight again, whatever validity the CA chose.
                    next = renewal_time(&details).max(SystemTime::now() + FIRST_BACKOFF);
                    current = Some(details);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(domain, error = %error, retry_in = ?backoff, "ACME: could not obtain a certificate");
                    self.update(&domain, |s| s.last_error = Some(error));
                    next = SystemTime::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn update(&self, domain: &str, f: impl FnOnce(&mut DomainStatus)) {
        f(self
            .board
            .lock()
            .expect("acme board lock")
            .entry(domain.to_owned())
            .or_default());
    }

    /// The account: restored from the cache, else created (and cached).
    async fn account(&self) -> anyhow::Result<Account> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let http = self.http_client()?;
        let account = match self.cache.account() {
            Some(json) => {
                let credentials: AccountCredentials = serde_json::from_slice(&json).with_context(|| {
                    format!(
                        "{} is not an ACME account; remove it to register a new account",
                        self.cache.dir().join("account.json").display()
                    )
                })?;
                Account::builder_with_http(http)
                    .from_credentials(credentials)
                    .await
                    .with_context(|| format!("cannot reach the ACME server at {}", self.directory))?
            }
            None => {
                let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = Account::builder_with_http(http)
                    .create(&new, self.directory.clone(), None)
                    .await
                    .with_context(|| {
                        format!("cannot register an account with the ACME server at {}", self.directory)
                    })?;
                self.cache.save_account(&serde_json::to_vec(&credentials)?)?;
                tracing::info!(directory = %self.directory, "ACME: account registered");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// One order for `domain`: challenge answered, certificate served and cached.
    async fn obtain(&self, domain: &str) -> anyhow::Result<CertDetails> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut answered = Answered {
            certs: &self.certs,
            tokens: Vec::new(),
            alpn: None,
        };
        let kind = match self.challenge {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("the ACME server says the authorization for {domain} is {other:?}"),
            }
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                anyhow!("the ACME server offers no {kind:?} challenge for {domain}; try another `challenge`")
            })?;
            let key_authorization = challenge.key_authorization();
            match self.challenge {
                ChallengeKind::Http01 => {
                    self.certs
                        .set_http_challenge(&challenge.token, key_authorization.as_str());
                    answered.tokens.push(challenge.token.clone());
                }
                ChallengeKind::TlsAlpn01 => {
                    let (cert, key) = alpn_certificate(domain, key_authorization.digest().as_ref())?;
                    self.certs.set_alpn_challenge(domain, cert.as_bytes(), key.as_bytes())?;
                    answered.alpn = Some(domain.to_owned());
                }
            }
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&retries)
            .await
            .with_context(|| validation_hint(domain, self.challenge))?;
        if status != OrderStatus::Ready {
            let failure = order_failure(&mut order, domain, status).await;
            bail!("{}: {failure}", validation_hint(domain, self.challenge));
        }
        drop(answered);
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&retries).await?;
        let details = self
            .certs
            .insert_pem(&cert_id(domain), chain_pem.as_bytes(), key_pem.as_bytes())
            .context("the ACME server sent a certificate that cannot be served")?;
        if let Err(e) = self.cache.save_certificate(domain, &key_pem, &chain_pem) {
            // Serving it matters more; the next start orders again.
            tracing::warn!(domain, error = %format!("{e:#}"), "ACME: certificate serving but not cached");
        }
        Ok(details)
    }

    /// instant-acme's HTTP client: rustls (ring) trusting the public roots
    /// plus `ca_file`, with a timeout on each exchange.
    fn http_client(&self) -> anyhow::Result<Box<dyn HttpClient>> {
        let mut roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca_file {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| {
                    format!(
                        "proxy.tls.acme.ca_file: cannot read certificates from {}",
                        path.display()
                    )
                })?;
            if certs.is_empty() {
                bail!("proxy.tls.acme.ca_file: {} holds no PEM certificate", path.display());
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("proxy.tls.acme.ca_file: unusable certificate in {}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("rustls (ring) without TLS 1.2/1.3")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Box::new(AcmeHttp(client)))
    }
}

/// Challenge answers set up for one order, taken down when it ends however it ends.
struct Answered<'a> {
    certs: &'a CertStore,
    tokens: Vec<String>,
    alpn: Option<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.certs.clear_http_challenge(token);
        }
        if let Some(domain) = &self.alpn {
            self.certs.clear_alpn_challenge(domain);
        }
    }
}

/// Why an order did not become ready, with the server's own words.
async fn order_failure(order: &mut instant_acme::Order, domain: &str, status: OrderStatus) -> String {
    let mut problems = Vec::new();
    if let Some(p) = &order.state().error {
        problems.push(p.to_string());
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        problems.extend(
            authz
                .challenges
                .iter()
                .filter_map(|c| c.error.as_ref())
                .map(|p| p.to_string()),
        );
    }
    let why = if problems.is_empty() {
        "no reason given".to_owned()
    } else {
        problems.join("; ")
    };
    format!("validation of {domain} failed (order {status:?}): {why}")
}

/// What to look at when `domain` cannot be validated.
fn validation_hint(domain: &str, challenge: ChallengeKind) -> String {
    let (name, port) = match challenge {
        ChallengeKind::Http01 => ("http-01", "80 (a plain listener)"),
        ChallengeKind::TlsAlpn01 => ("tls-alpn-01", "443 (a TLS listener)"),
    };
    format!("{domain} not validated over {name}: check that {domain} resolves to this host and that port {port} reaches switchctl")
}

/// A TLS-ALPN-01 challenge certificate (RFC 8737): self-signed for
/// `domain`, with the key authorization's digest in `acmeIdentifier`.
fn alpn_certificate(domain: &str, digest: &[u8]) -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// When a certificate is renewed: 30 days before it expires, or at two
/// thirds of its lifetime if that is shorter than 90 days.
pub fn renewal_time(cert: &CertDetails) -> SystemTime {
    let lifetime = cert.not_after.duration_since(cert.not_before).unwrap_or_default();
    cert.not_after - RENEW_BEFORE.min(lifetime / 3)
}

/// Sleep until `when` (looking at the clock at least hourly); false if
/// `shutdown` came first.
async fn sleep_until(when: SystemTime, shutdown: &CancellationToken) -> bool {
    loop {
        let Ok(left) = when.duration_since(SystemTime::now()) else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(left.min(MAX_SLEEP)) => {}
        }
    }
}

/// RFC 3339, seconds precision, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The HTTP client handed to instant-acme.
struct AcmeHttp(hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>);

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let uri = req.uri().clone();
        let fut = self.0.request(req);
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
                Ok(Ok(resp)) => Ok(BytesResponse::from(resp)),
                Ok(Err(e)) => Err(instant_acme::Error::Other(format!("{uri}: {}", error_chain(&e)).into())),
                Err(_) => Err(instant_acme::Error::Other(
                    format!("{uri}: no answer within {REQUEST_TIMEOUT:?}").into(),
                )),
            }
        })
    }
}

/// An error and its sources on one line (hyper's top error says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn cert(not_before_days: u64, not_after_days: u64) -> CertDetails {
        let day = Duration::from_secs(24 * 3600);
        CertDetails {
            names: vec!["a.test".into()],
            issuer: String::new(),
            not_before: UNIX_EPOCH + day * not_before_days as u32,
            not_after: UNIX_EPOCH + day * not_after_days as u32,
        }
    }

    #[test]
    fn renewal_is_30_days_before_expiry_or_at_two_thirds_of_a_short_life() {
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(renewal_time(&cert(0, 90)), UNIX_EPOCH + day * 60);
        assert_eq!(renewal_time(&cert(0, 365)), UNIX_EPOCH + day * 335);
        assert_eq!(renewal_time(&cert(0, 6)), UNIX_EPOCH + day * 4);
    }
}
