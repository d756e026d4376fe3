//! The daemon's side of TLS (the handshakes themselves are the proxy
//! crate's): the proxy's [`TlsConfig`] built from `[proxy.tls]`, which
//! systemd-inherited sockets are TLS ones, certificate reloads (SIGHUP) with
//! every outcome logged, and the certificates as `status` shows them.

use std::net::TcpListener;

use switchctl_proxy::{CertOrigin, CertReport, CertSource, CertStore, Proxy, TlsConfig};

use crate::acme::{self, Acme};
use crate::api::CertificateStatus;
use crate::config::Config;

/// The proxy's TLS settings with the certificate files loaded (each
/// outcome logged), or `None` without `[proxy.tls]`. A file that fails
/// does not stop the daemon: the others serve, and `status` says why.
pub fn tls_config(config: &Config) -> Option<TlsConfig> {
    let section = config.proxy.tls.as_ref()?;
    let (certs, reports) = CertStore::load(&config.tls_sources());
    log_reports(&reports, "loaded");
    let mut tls = TlsConfig::new(certs);
    tls.redirect_http = section.redirect_http;
    tls.handshake_timeout = section.handshake_timeout;
    Some(tls)
}

/// Sockets passed by systemd, split into `(plain, tls)`: a socket whose
/// local port is the port of a `proxy.tls.listen` address serves TLS, every
/// other one plain HTTP. (A socket unit cannot say which is which, and the
/// ports are what an operator writes in both files.)
pub fn split_inherited(config: &Config, inherited: Vec<TcpListener>) -> (Vec<TcpListener>, Vec<TcpListener>) {
    let tls_ports: Vec<u16> = config
        .proxy
        .tls
        .as_ref()
        .map(|t| t.listen.iter().map(|a| a.port()).collect())
        .unwrap_or_default();
    let (plain, tls): (Vec<_>, Vec<_>) = inherited
        .into_iter()
        .partition(|l| !l.local_addr().is_ok_and(|a| tls_ports.contains(&a.port())));
    if tls.is_empty() && !tls_ports.is_empty() {
        tracing::warn!(
            tls_ports = ?tls_ports,
            "no socket from systemd has a proxy.tls.listen port: TLS is not served; add ListenStream= for it to the socket unit"
        );
    }
    (plain, tls)
}

/// Reload the certificate files (SIGHUP): one swap, each outcome logged.
/// A file that fails keeps its previous certificate serving.
pub async fn reload(proxy: &std::sync::Arc<Proxy>, sources: Vec<CertSource>) {
    if proxy.certs().is_none() {
        tracing::info!("SIGHUP: no [proxy.tls], no certificates to reload");
        return;
    }
    let p = proxy.clone();
    match tokio::task::spawn_blocking(move || p.reload_tls(&sources)).await {
        Ok(reports) => log_reports(&reports, "reloaded"),
        Err(e) => tracing::error!(error = %e, "SIGHUP: certificate reload did not finish"),
    }
}

fn log_reports(reports: &[CertReport], what: &str) {
    for r in reports {
        let cert = r.source.cert.display().to_string();
        match (&r.result, &r.serving) {
            (Ok(d), _) => tracing::info!(
                cert = %cert,
                names = %d.names.join(", "),
                expires = %acme::rfc3339(d.not_after),
                "certificate {what}"
            ),
            (Err(e), Some(old)) => tracing::error!(
                cert = %cert,
                error = %e,
                still_serving = %old.names.join(", "),
                "certificate not {what}; the previous one keeps serving"
            ),
            (Err(e), None) => tracing::error!(
                cert = %cert,
                error = %e,
                "certificate not {what}; nothing serves for it"
            ),
        }
    }
}

/// Every certificate for `status`: the files in config order, then ACME's,
/// with each ACME domain's last error (a domain with no certificate yet
/// still gets a row).
pub fn status(proxy: &Proxy, acme: Option<&Acme>) -> Vec<CertificateStatus> {
    let Some(certs) = proxy.certs() else { return Vec::new() };
    let domains = acme.map(|a| a.status()).unwrap_or_default();
    let mut rows: Vec<CertificateStatus> = Vec::new();
    let mut shown = Vec::new();
    for cert in certs.certificates() {
        let (source, path, domain) = match &cert.origin {
            CertOrigin::Files(files) => ("file", Some(files.cert.display().to_string()), None),
            CertOrigin::Memory(id) => {
                let domain = domains.iter().find(|(d, _)| acme::cert_id(d) == *id);
                ("acme", domain.and_then(|(d, _)| acme.map(|a| a.cert_path(d))), domain)
            }
        };
        if let Some((d, _)) = domain {
            shown.push(d.clone());
        }
        rows.push(CertificateStatus {
            names: cert.serving.as_ref().map(|s| s.names.clone()).unwrap_or_default(),
            issuer: cert.serving.as_ref().map(|s| s.issuer.clone()),
            not_after: cert.serving.as_ref().map(|s| acme::rfc3339(s.not_after)),
            source: source.into(),
            path,
            last_error: cert.last_error.clone(),
            acme_error: domain.and_then(|(_, s)| s.last_error.clone()),
            acme_next_attempt: domain.and_then(|(_, s)| s.next_attempt.map(acme::rfc3339)),
        });
    }
    for (d, s) in &domains {
        if shown.contains(d) {
            continue;
        }
        rows.push(CertificateStatus {
            names: vec![d.clone()],
            issuer: None,
            not_after: None,
            source: "acme".into(),
            path: None,
            last_error: None,
            acme_error: s.last_error.clone(),
            acme_next_attempt: s.next_attempt.map(acme::rfc3339),
        });
    }
    rows
}
