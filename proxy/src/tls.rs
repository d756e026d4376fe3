//! TLS termination: rustls, with the certificate picked per handshake by SNI.
//!
//! The crypto provider is `ring`: it builds with nothing but a C compiler
//! (aws-lc-rs wants cmake, and NASM on some targets), compiles in a fraction
//! of the time, and its P-256, AES-GCM and ChaCha20 are as fast as a reverse
//! proxy's handshakes and transfers need. TLS 1.2 and 1.3 only; ALPN offers
//! `h2` and `http/1.1` (and `acme-tls/1`, answered only with a challenge).
//!
//! [`CertStore`] keeps its certificates in an `ArcSwap`, like the route
//! table: a handshake does one `load()`, a reload builds a whole new set and
//! `store()`s it once, so open connections are never touched. Each source is
//! loaded on its own: one that fails keeps the certificate it had before and
//! reports why, so a bad file never takes another certificate down.
//!
//! Which certificate a handshake gets: the first whose SANs name the SNI
//! exactly, else the first with a wildcard SAN covering it (`*.example.org`
//! covers one label: `a.example.org`, not `example.org` nor
//! `a.b.example.org`), ASCII case-insensitively. No SNI, or a name nothing
//! covers, gets the first certificate that loaded: file sources come first
//! in the order given, then in-memory ones ([`CertStore::insert_pem`]).
//!
//! For ACME, certificates can be put in memory under an id, and a TLS-ALPN-01
//! challenge certificate set per domain ([`CertStore::set_alpn_challenge`]):
//! a handshake offering `acme-tls/1` gets only that, and the connection is
//! closed once the handshake is done (RFC 8737).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::body::ProxyBody;
use crate::stall::Tracked;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Path prefix of ACME HTTP-01 challenges, never redirected to https.
pub const ACME_HTTP_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// TLS listeners' settings, for [`crate::Proxy::bind_with_tls`].
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The certificates served. A handle: keep a clone to reload them or
    /// to let ACME add its own.
    pub certs: CertStore,
    /// Plain listeners answer every request with `308` to the same URL on
    /// https, except ACME HTTP-01 challenge paths (default false).
    pub redirect_http: bool,
    /// Time a client has to complete the TLS handshake; a silent one is
    /// closed (default 10 s).
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    /// TLS with `certs`, no redirect, a 10 s handshake timeout.
    pub fn new(certs: CertStore) -> Self {
        TlsConfig {
            certs,
            redirect_http: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A certificate's files: the PEM chain (leaf first) and its private key
/// (PEM PKCS#8, RSA or EC). Both may name the same file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CertSource {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl CertSource {
    /// The pair `cert`, `key`.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        CertSource {
            cert: cert.into(),
            key: key.into(),
        }
    }
}

/// Where a certificate in the store came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertOrigin {
    /// Loaded from files by [`CertStore::reload`].
    Files(CertSource),
    /// Put in memory under this id by [`CertStore::insert_pem`] (ACME).
    Memory(String),
}

/// What is known of a loaded certificate, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertDetails {
    /// The DNS names it is served for (its SANs, lowercase; the subject's
    /// CN when it has none), wildcards as `*.example.org`.
    pub names: Vec<String>,
    /// The issuer's distinguished name, e.g. `CN=R11, O=Let's Encrypt, C=US`.
    pub issuer: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

/// One certificate slot of the store, as `status` shows it.
#[derive(Debug, Clone)]
pub struct CertStatus {
    /// Its files, or its in-memory id.
    pub origin: CertOrigin,
    /// The certificate being served for it; `None` if none ever loaded.
    pub serving: Option<CertDetails>,
    /// Why the last load failed, if it did (the previous one, if any, still serves).
    pub last_error: Option<String>,
}

/// The outcome of loading one source in [`CertStore::reload`].
#[derive(Debug)]
pub struct CertReport {
    /// The files loaded.
    pub source: CertSource,
    /// The new certificate, or why it could not be loaded.
    pub result: Result<CertDetails, TlsError>,
    /// What serves for this source now: the new certificate, the previous
    /// one kept after a failure, or nothing.
    pub serving: Option<CertDetails>,
}

/// A certificate or key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {at}: {source}")]
    Read {
        /// the file
        at: String,
        /// why
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{at}: no certificate found; expected a PEM chain (-----BEGIN CERTIFICATE-----), leaf first")]
    NoCertificate {
        /// the file
        at: String,
    },
    /// The key file holds no private key.
    #[error("{at}: no private key found; expected a PEM PKCS#8, RSA or EC private key")]
    NoKey {
        /// the file
        at: String,
    },
    /// A file is not valid PEM.
    #[error("{at}: not valid PEM ({detail}); is the file complete?")]
    Pem {
        /// the file
        at: String,
        /// the parser's words
        detail: String,
    },
    /// The private key is of a kind rustls cannot sign with.
    #[error("{at}: unusable private key ({detail}); use an RSA (2048+ bits), ECDSA P-256/P-384 or Ed25519 key")]
    Key {
        /// the file
        at: String,
        /// rustls' words
        detail: String,
    },
    /// Key and certificate are not a pair.
    #[error("the key in {key} does not belong to the certificate in {cert}; check that both files are from the same issuance")]
    KeyMismatch {
        /// the certificate file
        cert: String,
        /// the key file
        key: String,
    },
    /// The leaf certificate cannot be parsed.
    #[error("{at}: the leaf certificate cannot be parsed ({detail})")]
    Certificate {
        /// the file
        at: String,
        /// the parser's words
        detail: String,
    },
}

/// The certificates TLS listeners serve, swappable as a whole. Cloning
/// gives another handle on the same store.
///
/// A handshake gets the first certificate whose SANs name its SNI exactly,
/// else the first with a wildcard SAN covering it (one label deep), ASCII
/// case-insensitively; no SNI, or a name none covers, gets the first
/// certificate that loaded (files in the order given, then in-memory ones).
#[derive(Clone)]
pub struct CertStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("certificates", &self.certificates())
            .finish_non_exhaustive()
    }
}

struct Inner {
    set: ArcSwap<CertSet>,
    /// TLS-ALPN-01 challenge certificates by domain (lowercase).
    challenges: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    /// HTTP-01 key authorizations by token.
    http_challenges: ArcSwap<HashMap<String, bytes::Bytes>>,
    /// Serializes writers (reload, insert, remove); handshakes never take it.
    update: Mutex<()>,
    provider: Arc<CryptoProvider>,
}

/// One immutable generation of certificates, with its lookup maps.
#[derive(Default)]
struct CertSet {
    entries: Vec<Entry>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the parent of the wildcard: `*.example.org` is under `example.org`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    first: Option<Arc<CertifiedKey>>,
}

#[derive(Clone)]
struct Entry {
    origin: CertOrigin,
    loaded: Option<Arc<Loaded>>,
    last_error: Option<String>,
}

struct Loaded {
    key: Arc<CertifiedKey>,
    details: CertDetails,
}

impl Default for CertStore {
    fn default() -> Self {
        Self::new()
    }
}

impl CertStore {
    /// An empty store: handshakes fail until a certificate is loaded.
    pub fn new() -> Self {
        CertStore {
            inner: Arc::new(Inner {
                set: ArcSwap::from_pointee(CertSet::default()),
                challenges: ArcSwap::from_pointee(HashMap::new()),
                http_challenges: ArcSwap::from_pointee(HashMap::new()),
                update: Mutex::new(()),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
            }),
        }
    }

    /// A store with `sources` loaded, and how each load went.
    pub fn load(sources: &[CertSource]) -> (Self, Vec<CertReport>) {
        let store = Self::new();
        let reports = store.reload(sources);
        (store, reports)
    }

    /// Make `sources` the file certificates, in this order, in one swap.
    ///
    /// Each source loads on its own. One that fails keeps serving the
    /// certificate it had before (matched by its paths), with the error
    /// kept for [`CertStore::certificates`]; the others are not affected.
    /// In-memory certificates stay. Open connections keep the certificate
    /// they were made with. Reads files: from async code, a blocking task
    /// suits it, though a few small PEM files hardly matter.
    pub fn reload(&self, sources: &[CertSource]) -> Vec<CertReport> {
        let _writer = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.inner.set.load_full();
        let mut entries = Vec::with_capacity(sources.len() + old.entries.len());
        let mut reports = Vec::with_capacity(sources.len());
        for source in sources {
            let origin = CertOrigin::Files(source.clone());
            let (entry, result) = match load_files(source, &self.inner.provider) {
                Ok(loaded) => {
                    let details = loaded.details.clone();
                    let entry = Entry {
                        origin,
                        loaded: Some(Arc::new(loaded)),
                        last_error: None,
                    };
                    (entry, Ok(details))
                }
                Err(e) => {
                    let previous = old
                        .entries
                        .iter()
                        .find(|e| e.origin == origin)
                        .and_then(|e| e.loaded.clone());
                    let entry = Entry {
                        origin,
                        loaded: previous,
                        last_error: Some(e.to_string()),
                    };
                    (entry, Err(e))
                }
            };
            reports.push(CertReport {
                source: source.clone(),
                result,
                serving: entry.loaded.as_ref().map(|l| l.details.clone()),
            });
            entries.push(entry);
        }
        entries.extend(
            old.entries
                .iter()
                .filter(|e| matches!(e.origin, CertOrigin::Memory(_)))
                .cloned(),
        );
        self.inner.set.store(Arc::new(CertSet::new(entries)));
        reports
    }

    /// Add, or replace, the in-memory certificate `id` (for ACME): a PEM
    /// chain, leaf first, and its PEM private key. On failure a certificate
    /// already under `id` keeps serving and the error is kept for status.
    pub fn insert_pem(&self, id: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<CertDetails, TlsError> {
        let _writer = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let at = format!("in-memory certificate {id}");
        let result = parse_pair(chain_pem, key_pem, &at, &at, &self.inner.provider, true);
        let origin = CertOrigin::Memory(id.to_owned());
        let old = self.inner.set.load_full();
        let mut entries = old.entries.clone();
        let slot = match entries.iter().position(|e| e.origin == origin) {
            Some(i) => &mut entries[i],
            None => {
                entries.push(Entry {
                    origin,
                    loaded: None,
                    last_error: None,
                });
                entries.last_mut().expect("just pushed")
            }
        };
        let out = match result {
            Ok(loaded) => {
                let details = loaded.details.clone();
                slot.loaded = Some(Arc::new(loaded));
                slot.last_error = None;
                Ok(details)
            }
            Err(e) => {
                slot.last_error = Some(e.to_string());
                Err(e)
            }
        };
        self.inner.set.store(Arc::new(CertSet::new(entries)));
        out
    }

    /// Remove the in-memory certificate `id`; false if there was none.
    pub fn remove(&self, id: &str) -> bool {
        let _writer = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.inner.set.load_full();
        let origin = CertOrigin::Memory(id.to_owned());
        let entries: Vec<Entry> = old.entries.iter().filter(|e| e.origin != origin).cloned().collect();
        if entries.len() == old.entries.len() {
            return false;
        }
        self.inner.set.store(Arc::new(CertSet::new(entries)));
        true
    }

    /// Answer TLS-ALPN-01 for `domain` with this challenge certificate (PEM;
    /// the ACME side builds it with the `acmeIdentifier` extension).
    pub fn set_alpn_challenge(&self, domain: &str, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let at = format!("TLS-ALPN-01 challenge certificate for {domain}");
        // Its acmeIdentifier extension is critical (RFC 8737) and webpki,
        // which the key-pair check parses with, refuses unknown critical
        // extensions: the ACME side made the pair itself, skip the check.
        let loaded = parse_pair(cert_pem, key_pem, &at, &at, &self.inner.provider, false)?;
        let _writer = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::clone(&self.inner.challenges.load());
        map.insert(domain.to_ascii_lowercase(), loaded.key);
        self.inner.challenges.store(Arc::new(map));
        Ok(())
    }

    /// Stop answering TLS-ALPN-01 for `domain`.
    pub fn clear_alpn_challenge(&self, domain: &str) {
        let _writer = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::clone(&self.inner.challenges.load());
        if map.remove(&domain.to_ascii_lowercase()).is_some() {
            self.inner.challenges.store(Arc::new(map));
        }
    }

    /// Answer HTTP-01 for `token`: `GET /.well-known/acme-challenge/<token>`
    /// gets `key_authorization`, on any listener, before routing.
    pub fn set_http_challenge(&self, token: &str, key_authorization: &str) {
        let _writer = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::clone(&self.inner.http_challenges.load());
        map.insert(token.to_owned(), bytes::Bytes::from(key_authorization.to_owned()));
        self.inner.http_challenges.store(Arc::new(map));
    }

    /// Stop answering HTTP-01 for `token`.
    pub fn clear_http_challenge(&self, token: &str) {
        let _writer = self.inner.update.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = HashMap::clone(&self.inner.http_challenges.load());
        if map.remove(token).is_some() {
            self.inner.http_challenges.store(Arc::new(map));
        }
    }

    /// The answer to an HTTP-01 challenge request, if `req` is one whose
    /// token is set. Other paths cost one prefix compare; an unknown token
    /// is routed as usual.
    pub(crate) fn http_challenge_response<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        let token = req.uri().path().strip_prefix(ACME_HTTP_CHALLENGE_PREFIX)?;
        let answer = self.inner.http_challenges.load().get(token)?.clone();
        let mut resp = Response::new(ProxyBody::bytes(answer));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Some(resp)
    }

    /// Every certificate slot, files first in their order, for `status`.
    pub fn certificates(&self) -> Vec<CertStatus> {
        self.inner
            .set
            .load()
            .entries
            .iter()
            .map(|e| CertStatus {
                origin: e.origin.clone(),
                serving: e.loaded.as_ref().map(|l| l.details.clone()),
                last_error: e.last_error.clone(),
            })
            .collect()
    }

    /// The rustls configuration of a TLS listener serving from this store.
    pub(crate) fn server_config(&self) -> Arc<ServerConfig> {
        let mut config = ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the ring provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if hello.alpn().is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN)) {
            // Only a challenge answers acme-tls/1; no name or no challenge: no handshake.
            let name = lowercase(hello.server_name()?);
            return self.inner.challenges.load().get(name.as_ref()).cloned();
        }
        self.inner.set.load().resolve(hello.server_name())
    }
}

impl CertSet {
    fn new(entries: Vec<Entry>) -> Self {
        let mut set = CertSet::default();
        for loaded in entries.iter().filter_map(|e| e.loaded.as_ref()) {
            set.first.get_or_insert_with(|| loaded.key.clone());
            for name in &loaded.details.names {
                let (map, name) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut set.wildcard, parent),
                    None => (&mut set.exact, name.as_str()),
                };
                // The first certificate naming a name keeps it.
                map.entry(name.to_owned()).or_insert_with(|| loaded.key.clone());
            }
        }
        set.entries = entries;
        set
    }

    fn resolve(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = lowercase(name);
            if let Some(key) = self.exact.get(name.as_ref()) {
                return Some(key.clone());
            }
            if let Some(key) = name.split_once('.').and_then(|(_, parent)| self.wildcard.get(parent)) {
                return Some(key.clone());
            }
        }
        self.first.clone()
    }
}

/// rustls already lowercases SNI; this only allocates for a name that is not.
fn lowercase(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

fn load_files(source: &CertSource, provider: &CryptoProvider) -> Result<Loaded, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            at: path.display().to_string(),
            source,
        })
    };
    let (cert_pem, key_pem) = (read(&source.cert)?, read(&source.key)?);
    parse_pair(
        &cert_pem,
        &key_pem,
        &source.cert.display().to_string(),
        &source.key.display().to_string(),
        provider,
        true,
    )
}

/// A PEM chain and key made into what rustls serves, with its details;
/// with `check_pair`, refused if the key is not the certificate's.
fn parse_pair(
    chain_pem: &[u8],
    key_pem: &[u8],
    cert_at: &str,
    key_at: &str,
    provider: &CryptoProvider,
    check_pair: bool,
) -> Result<Loaded, TlsError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            at: cert_at.to_owned(),
            detail: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate { at: cert_at.to_owned() });
    };
    let details = details(leaf, cert_at)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey { at: key_at.to_owned() },
        e => TlsError::Pem {
            at: key_at.to_owned(),
            detail: e.to_string(),
        },
    })?;
    let signer = provider.key_provider.load_private_key(key).map_err(|e| TlsError::Key {
        at: key_at.to_owned(),
        detail: e.to_string(),
    })?;
    let key = CertifiedKey::new(chain, signer);
    match if check_pair { key.keys_match() } else { Ok(()) } {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_at.to_owned(),
                key: key_at.to_owned(),
            })
        }
        Err(e) => {
            return Err(TlsError::Certificate {
                at: cert_at.to_owned(),
                detail: e.to_string(),
            })
        }
    }
    Ok(Loaded {
        key: Arc::new(key),
        details,
    })
}

/// Names, issuer and validity of a leaf certificate.
fn details(leaf: &[u8], at: &str) -> Result<CertDetails, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Certificate {
        at: at.to_owned(),
        detail: e.to_string(),
    })?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        // Old certificates name their host in the subject's CN only.
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_ascii_lowercase)
            .collect();
    }
    let time = |t: i64| match u64::try_from(t) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(t.unsigned_abs()),
    };
    Ok(CertDetails {
        names,
        issuer: cert.issuer().to_string(),
        not_before: time(cert.validity().not_before.timestamp()),
        not_after: time(cert.validity().not_after.timestamp()),
    })
}

/// What a worker needs to serve TLS listeners.
pub(crate) struct TlsServing {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
}

impl TlsServing {
    pub(crate) fn new(config: &TlsConfig) -> Self {
        TlsServing {
            acceptor: TlsAcceptor::from(config.certs.server_config()),
            handshake_timeout: config.handshake_timeout,
        }
    }

    /// The handshake, within the timeout. `None` when it failed, timed
    /// out, or was an ACME challenge (then the connection has done its job).
    pub(crate) async fn handshake(&self, stream: Tracked) -> Option<TlsStream<Tracked>> {
        let mut stream = tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream))
            .await
            .ok()?
            .ok()?;
        if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
            let _ = tokio::time::timeout(self.handshake_timeout, stream.shutdown()).await;
            return None;
        }
        Some(stream)
    }
}

/// Plain listeners' answer when `redirect_http` is on: `308` to https.
#[derive(Debug)]
pub(crate) struct HttpsRedirect {
    /// `:port` of the TLS listener, empty for 443.
    port: String,
}

impl HttpsRedirect {
    /// Redirect to the TLS listener on `port`.
    pub(crate) fn new(port: Option<u16>) -> Self {
        let port = match port {
            None | Some(443) => String::new(),
            Some(p) => format!(":{p}"),
        };
        HttpsRedirect { port }
    }

    /// The redirect for `req`, or `None` for an ACME HTTP-01 challenge,
    /// which is served as usual.
    pub(crate) fn response<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        if req.uri().path().starts_with(ACME_HTTP_CHALLENGE_PREFIX) {
            return None;
        }
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .map(without_port)
            .filter(|h| !h.is_empty());
        let Some(host) = host else {
            let mut resp = Response::new(ProxyBody::text("a Host header is needed to redirect to https\n"));
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return Some(resp);
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{host}{}{path}", self.port);
        let mut resp = Response::new(ProxyBody::text(""));
        *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
        match HeaderValue::try_from(location) {
            Ok(location) => {
                resp.headers_mut().insert(header::LOCATION, location);
            }
            Err(_) => *resp.status_mut() = StatusCode::BAD_REQUEST,
        }
        Some(resp)
    }
}

/// `example.org:80` → `example.org`, `[::1]:80` → `[::1]`.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&[&str]]) -> (CertSet, Vec<Arc<CertifiedKey>>) {
        let provider = rustls::crypto::ring::default_provider();
        let mut keys = Vec::new();
        let entries = names
            .iter()
            .enumerate()
            .map(|(i, names)| {
                let key = rcgen::KeyPair::generate().unwrap();
                let cert = rcgen::CertificateParams::new(vec![format!("c{i}.test")])
                    .unwrap()
                    .self_signed(&key)
                    .unwrap();
                let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
                let signer = provider.key_provider.load_private_key(der).unwrap();
                let key = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
                keys.push(key.clone());
                Entry {
                    origin: CertOrigin::Memory(format!("c{i}")),
                    loaded: Some(Arc::new(Loaded {
                        key,
                        details: CertDetails {
                            names: names.iter().map(|n| n.to_string()).collect(),
                            issuer: String::new(),
                            not_before: UNIX_EPOCH,
                            not_after: UNIX_EPOCH,
                        },
                    })),
                    last_error: None,
                }
            })
            .collect();
        (CertSet::new(entries), keys)
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_covers_one_label() {
        let (set, keys) = set(&[
            &["a.example.org"],
            &["*.example.org", "example.org"],
            &["a.example.org"],
        ]);
        let pick = |n: &str| {
            let got = set.resolve(Some(n)).unwrap();
            keys.iter().position(|k| Arc::ptr_eq(k, &got)).unwrap()
        };
        assert_eq!(pick("a.example.org"), 0, "exact, first naming it");
        assert_eq!(pick("A.Example.ORG"), 0, "case-insensitive");
        assert_eq!(pick("b.example.org"), 1, "wildcard");
        assert_eq!(pick("example.org"), 1, "exact apex on the second");
        assert_eq!(pick("x.b.example.org"), 0, "two labels deep: no match, first");
        assert_eq!(pick("other.test"), 0, "no match: first");
        assert!(Arc::ptr_eq(&set.resolve(None).unwrap(), &keys[0]), "no SNI: first");
    }

    #[test]
    fn alpn_challenge_certificate_with_its_critical_acme_extension_is_taken() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["acme.test".to_string()]).unwrap();
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7u8; 32])];
        let cert = params.self_signed(&key).unwrap();
        let store = CertStore::new();
        store
            .set_alpn_challenge("acme.test", cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .unwrap();
        assert!(store.inner.challenges.load().contains_key("acme.test"));
    }

    #[test]
    fn redirect_host_loses_its_port() {
        assert_eq!(without_port("example.org:80"), "example.org");
        assert_eq!(without_port("example.org"), "example.org");
        assert_eq!(without_port("[::1]:8080"), "[::1]");
        assert_eq!(without_port("[::1]"), "[::1]");
    }
}
