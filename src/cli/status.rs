//! `status [--json]`: the active color and tag, the standby, the operation
//! in progress, each service's upstreams with health and in-flight counts,
//! and the TLS certificates with their expiry and last errors.

use super::{client, client_exit_code, exit, query_failed, Cli};
use crate::admin::api::{CertificateStatus, ColorStatus, ColorTag, Status};

/// `switchctl status`
pub async fn run(cli: &Cli, json: bool) -> i32 {
    let client = match client(cli) {
        Ok(c) => c,
        Err(e) => return query_failed(json, &format!("config: {e}"), exit::USAGE),
    };
    let status: Status = match client.get("/v1/status").await {
        Ok(s) => s,
        Err(e) => return query_failed(json, &e.to_string(), client_exit_code(&e)),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&status).unwrap_or_default());
    } else {
        print!("{}", render(&status));
    }
    exit::OK
}

/// The human-readable status.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let ct = |c: &Option<ColorTag>| match c {
        Some(c) => format!("{} ({})", c.color, c.tag),
        None => "none".into(),
    };
    out.push_str(&format!("active:    {}\n", ct(&s.active)));
    out.push_str(&format!("standby:   {}\n", ct(&s.standby)));
    let op = match &s.operation {
        Some(op) => format!(
            "{}{} (phase {})",
            op.kind,
            op.tag.as_deref().map(|t| format!(" of {t}")).unwrap_or_default(),
            op.phase
        ),
        None => "none".into(),
    };
    out.push_str(&format!("operation: {op}\n"));
    if let Some(w) = &s.watch {
        out.push_str(&format!(
            "watch:     {} until {}: {} 5xx of {} requests\n",
            w.color, w.until, w.errors_5xx, w.requests
        ));
    }
    let driver = match &s.driver.error {
        None => format!("{:?} (reachable)", s.driver.kind).to_lowercase(),
        Some(e) => format!("{:?}: {e}", s.driver.kind).to_lowercase(),
    };
    out.push_str(&format!("driver:    {driver}\n\n"));
    out.push_str(&format!(
        "{:<16} {:<7} {:<16} {:<22} {:<8} {:>9}  {}\n",
        "SERVICE", "COLOR", "TAG", "UPSTREAM", "HEALTHY", "IN-FLIGHT", "STATE"
    ));
    let active = s.active.as_ref().map(|a| a.color);
    for svc in &s.services {
        let rows: [(&str, &Option<ColorStatus>); 2] = [("blue", &svc.blue), ("green", &svc.green)];
        for (color, c) in rows {
            let Some(c) = c else { continue };
            let marker = if active.map(|a| a.as_str()) == Some(color) {
                "*"
            } else {
                ""
            };
            out.push_str(&format!(
                "{:<16} {:<7} {:<16} {:<22} {:<8} {:>9}  {}\n",
                svc.name,
                format!("{color}{marker}"),
                c.tag,
                c.upstream,
                if c.healthy { "yes" } else { "no" },
                c.in_flight,
                c.state
            ));
        }
    }
    for p in &s.problems {
        out.push_str(&format!("problem: {p}\n"));
    }
    render_certificates(&mut out, &s.certificates);
    out
}

/// One line per certificate, then its errors indented under it.
fn render_certificates(out: &mut String, certs: &[CertificateStatus]) {
    if certs.is_empty() {
        return;
    }
    out.push_str(&format!(
        "\n{:<32} {:<6} {:<21} {}\n",
        "CERTIFICATE", "SOURCE", "EXPIRES", "ISSUER"
    ));
    for c in certs {
        out.push_str(&format!(
            "{:<32} {:<6} {:<21} {}\n",
            c.names.join(","),
            c.source,
            c.not_after.as_deref().unwrap_or("none"),
            c.issuer.as_deref().unwrap_or("-")
        ));
        if let Some(e) = &c.last_error {
            out.push_str(&format!("  load error: {e}\n"));
        }
        if let Some(e) = &c.acme_error {
            out.push_str(&format!("  ACME error: {e}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::api::DriverStatus;

    #[test]
    fn certificates_are_listed_with_their_errors() {
        let cert = |names: &[&str], source: &str| CertificateStatus {
            names: names.iter().map(|n| n.to_string()).collect(),
            issuer: Some("CN=R11, O=Let's Encrypt, C=US".into()),
            not_after: Some("2027-02-01T00:00:00Z".into()),
            source: source.into(),
            path: None,
            last_error: None,
            acme_error: None,
            acme_next_attempt: None,
        };
        let broken = CertificateStatus {
            last_error: Some("/etc/site.pem: no certificate found".into()),
            ..cert(&["site.example.org"], "file")
        };
        let failing = CertificateStatus {
            issuer: None,
            not_after: None,
            acme_error: Some("validation of b.example.org failed".into()),
            ..cert(&["b.example.org"], "acme")
        };
        let status = Status {
            active: None,
            standby: None,
            operation: None,
            services: Vec::new(),
            driver: DriverStatus {
                kind: crate::config::DriverKind::Process,
                ok: true,
                error: None,
            },
            problems: Vec::new(),
            watch: None,
            daemon_pid: 1,
            certificates: vec![broken, cert(&["a.example.org"], "acme"), failing],
        };
        let out = render(&status);
        assert!(out.contains("CERTIFICATE"), "{out}");
        assert!(out.contains("site.example.org"), "{out}");
        assert!(
            out.contains("  load error: /etc/site.pem: no certificate found\n"),
            "{out}"
        );
        assert!(out.contains("2027-02-01T00:00:00Z"), "{out}");
        assert!(
            out.contains("  ACME error: validation of b.example.org failed\n"),
            "{out}"
        );
        let b = out.lines().find(|l| l.starts_with("b.example.org")).unwrap();
        assert!(b.contains("none"), "{out}");
    }
}
