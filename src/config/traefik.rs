//! Routes from Traefik labels: a team that ran its Compose stack behind
//! Traefik already wrote its routing as router labels, so switchctl reads
//! them instead of asking for a second copy in switchctl.toml.
//!
//! Understood: router `rule`s made of ``Host(`a`, `b`)``, ``PathPrefix(`/p`)``,
//! `&&`, `||` and parentheses; a router's `middlewares` when they are
//! `stripprefix` middlewares whose prefix is the route's own; `entrypoints`,
//! `tls` and `tls.certresolver` (the hosts of a router with a certresolver
//! are the ones switchctl asks certificates for); and the service's
//! `loadbalancer.server.port`. Anything else that changes where a request
//! goes (another matcher, `!`, another middleware kind) is an error naming
//! the label: silently routing differently than Traefik did would be worse
//! than refusing.

use std::collections::BTreeMap;

/// One route translated from a router rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRoute {
    /// The router it came from.
    pub router: String,
    /// Hosts matched (empty: any host).
    pub hosts: Vec<String>,
    /// Path prefix matched (`/`: everything).
    pub path_prefix: String,
    /// Whether the prefix is stripped before the request goes upstream.
    pub strip_prefix: bool,
}

/// What the labels of one Compose service say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelRouting {
    /// The routes, in router-name order.
    pub routes: Vec<LabelRoute>,
    /// `loadbalancer.server.port`: the container port to proxy to.
    pub port: Option<u16>,
    /// Hosts of routers that name a `tls.certresolver`: ACME domains.
    pub acme_hosts: Vec<String>,
}

/// A label switchctl cannot translate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label `{label}`: {message}")]
pub struct LabelError {
    /// The label's key.
    pub label: String,
    /// What is wrong and what to do.
    pub message: String,
}

fn error(label: &str, message: impl Into<String>) -> LabelError {
    LabelError {
        label: label.to_string(),
        message: message.into(),
    }
}

/// Translate the Traefik labels among `labels` (other labels are ignored).
/// A service with `traefik.enable=false` has no routes.
pub fn routes_from_labels(labels: &BTreeMap<String, String>) -> Result<LabelRouting, LabelError> {
    let mut out = LabelRouting::default();
    if labels.get("traefik.enable").is_some_and(|v| v.trim() == "false") {
        return Ok(out);
    }
    let routers: BTreeMap<&str, BTreeMap<&str, (&str, &str)>> = group(labels, "traefik.http.routers.");
    let middlewares = group(labels, "traefik.http.middlewares.");
    let services = group(labels, "traefik.http.services.");

    for (service, keys) in &services {
        for (key, (label, value)) in keys {
            match *key {
                "loadbalancer.server.port" => {
                    let port = value
                        .trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p > 0)
                        .ok_or_else(|| error(label, format!("`{value}` is not a port number")))?;
                    if out.port.is_some_and(|p| p != port) {
                        return Err(error(
                            label,
                            format!("a second port for service `{service}`; switchctl proxies to one container port per service"),
                        ));
                    }
                    out.port = Some(port);
                }
                "loadbalancer.server.scheme" if value.trim() == "http" => {}
                "loadbalancer.passhostheader" if value.trim() == "true" => {}
                _ => return Err(error(
                    label,
                    "switchctl cannot honour this load-balancer setting; remove it or set the route in switchctl.toml",
                )),
            }
        }
    }

    for (router, keys) in &routers {
        let Some((rule_label, rule)) = keys.get("rule") else {
            let (label, _) = keys.values().next().expect("a group is never empty");
            return Err(error(label, format!("router `{router}` has no rule")));
        };
        let mut strip: Option<String> = None;
        let mut has_resolver = false;
        for (key, (label, value)) in keys {
            match *key {
                "rule" | "entrypoints" | "service" | "priority" | "tls" | "tls.options" => {}
                "tls.certresolver" => has_resolver = !value.trim().is_empty(),
                k if k.starts_with("tls.domains") => {}
                "middlewares" => {
                    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        let bare = name.split('@').next().unwrap_or(name);
                        let prefix = strip_prefix_of(&middlewares, bare, label)?;
                        if strip.replace(prefix).is_some() {
                            return Err(error(label, "more than one stripprefix middleware on one router"));
                        }
                    }
                }
                _ => {
                    return Err(error(
                        label,
                        "switchctl cannot honour this router setting; remove it or set the route in switchctl.toml",
                    ))
                }
            }
        }
        let alternatives = parse_rule(rule).map_err(|m| error(rule_label, m))?;
        for Conjunction { hosts, prefix } in alternatives {
            let path_prefix = prefix.unwrap_or_else(|| "/".to_string());
            let strip_prefix = match &strip {
                None => false,
                Some(p) if same_prefix(p, &path_prefix) => true,
                Some(p) => {
                    return Err(error(
                        rule_label,
                        format!("the stripprefix middleware removes `{p}` but the rule matches PathPrefix `{path_prefix}`; switchctl strips exactly the route's prefix"),
                    ))
                }
            };
            if has_resolver {
                for h in &hosts {
                    if !out.acme_hosts.contains(h) {
                        out.acme_hosts.push(h.clone());
                    }
                }
            }
            out.routes.push(LabelRoute {
                router: router.to_string(),
                hosts,
                path_prefix,
                strip_prefix,
            });
        }
    }
    Ok(out)
}

/// Labels under `prefix`, grouped by the name after it:
/// `traefik.http.routers.api.rule` → `api` → `rule`.
fn group<'a>(
    labels: &'a BTreeMap<String, String>,
    prefix: &str,
) -> BTreeMap<&'a str, BTreeMap<&'a str, (&'a str, &'a str)>> {
    let mut out: BTreeMap<&str, BTreeMap<&str, (&str, &str)>> = BTreeMap::new();
    for (label, value) in labels {
        let Some(rest) = label.strip_prefix(prefix) else {
            continue;
        };
        if let Some((name, key)) = rest.split_once('.') {
            out.entry(name)
                .or_default()
                .insert(key, (label.as_str(), value.as_str()));
        }
    }
    out
}

/// The prefix a `stripprefix` middleware named by a router removes.
fn strip_prefix_of(
    middlewares: &BTreeMap<&str, BTreeMap<&str, (&str, &str)>>,
    name: &str,
    router_label: &str,
) -> Result<String, LabelError> {
    let Some(keys) = middlewares.get(name) else {
        return Err(error(
            router_label,
            format!("middleware `{name}` is not defined by this service's labels"),
        ));
    };
    let mut prefix = None;
    for (key, (label, value)) in keys {
        match *key {
            "stripprefix.prefixes" => {
                let prefixes: Vec<&str> = value.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
                match prefixes.as_slice() {
                    [one] => prefix = Some(one.to_string()),
                    _ => return Err(error(label, "switchctl strips one prefix per route; list exactly one")),
                }
            }
            "stripprefix.forceslash" => {}
            _ => {
                return Err(error(
                    label,
                    format!("middleware `{name}` is not a stripprefix middleware; switchctl cannot honour it. Remove it from the router or handle it in the application"),
                ))
            }
        }
    }
    prefix.ok_or_else(|| error(router_label, format!("middleware `{name}` has no stripprefix.prefixes")))
}

/// `/api` and `/api/` name the same prefix.
fn same_prefix(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// One alternative of a rule: every host it accepts (none: any) and the path
/// prefix it requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Conjunction {
    hosts: Vec<String>,
    prefix: Option<String>,
}

/// A rule as a disjunction of conjunctions.
fn parse_rule(rule: &str) -> Result<Vec<Conjunction>, String> {
    let tokens = tokenize(rule)?;
    let mut parser = Parser { tokens, at: 0 };
    let alternatives = parser.or()?;
    if parser.at != parser.tokens.len() {
        return Err(format!(
            "unexpected {} in rule `{rule}`",
            parser.tokens[parser.at].describe()
        ));
    }
    Ok(alternatives)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Open,
    Close,
    Comma,
    And,
    Or,
    Not,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("`{s}`"),
            Token::Str(s) => format!("string `{s}`"),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Comma => "`,`".into(),
            Token::And => "`&&`".into(),
            Token::Or => "`||`".into(),
            Token::Not => "`!`".into(),
        }
    }
}

fn tokenize(rule: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = rule.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            ',' => out.push(Token::Comma),
            '!' => out.push(Token::Not),
            '&' | '|' => {
                if chars.next().map(|(_, d)| d) != Some(c) {
                    return Err(format!("`{c}` at offset {i} must be doubled (`{c}{c}`)"));
                }
                out.push(if c == '&' { Token::And } else { Token::Or });
            }
            '`' | '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, d)) if d == c => break,
                        Some((_, '\\')) if c == '"' => match chars.next() {
                            Some((_, d)) => s.push(d),
                            None => return Err("unterminated string".into()),
                        },
                        Some((_, d)) => s.push(d),
                        None => return Err(format!("unterminated string starting at offset {i}")),
                    }
                }
                out.push(Token::Str(s));
            }
            c if c.is_ascii_alphabetic() => {
                let mut s = String::from(c);
                while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_alphanumeric()) {
                    s.push(d);
                    chars.next();
                }
                out.push(Token::Ident(s));
            }
            c => return Err(format!("unexpected `{c}` at offset {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn expect(&mut self, want: Token) -> Result<(), String> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            Some(t) => Err(format!("expected {}, found {}", want.describe(), t.describe())),
            None => Err(format!("expected {}, found the end of the rule", want.describe())),
        }
    }

    /// `and ('||' and)*`
    fn or(&mut self) -> Result<Vec<Conjunction>, String> {
        let mut out = self.and()?;
        while self.peek() == Some(&Token::Or) {
            self.at += 1;
            out.extend(self.and()?);
        }
        Ok(out)
    }

    /// `atom ('&&' atom)*`, distributed over the alternatives of each atom.
    fn and(&mut self) -> Result<Vec<Conjunction>, String> {
        let mut out = self.atom()?;
        while self.peek() == Some(&Token::And) {
            self.at += 1;
            let right = self.atom()?;
            let mut product = Vec::new();
            for l in &out {
                for r in &right {
                    product.push(conjoin(l, r)?);
                }
            }
            out = product;
        }
        Ok(out)
    }

    /// `'(' or ')'` or `Matcher(args)`.
    fn atom(&mut self) -> Result<Vec<Conjunction>, String> {
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or()?;
                self.expect(Token::Close)?;
                Ok(inner)
            }
            Some(Token::Not) => Err("`!` (negation) cannot be expressed as a switchctl route".into()),
            Some(Token::Ident(name)) => {
                self.expect(Token::Open)?;
                let mut args = Vec::new();
                loop {
                    match self.next() {
                        Some(Token::Str(s)) => args.push(s),
                        Some(Token::Close) if args.is_empty() => break,
                        Some(t) => return Err(format!("expected a quoted argument to {name}, found {}", t.describe())),
                        None => return Err(format!("unterminated {name}(...)")),
                    }
                    match self.next() {
                        Some(Token::Comma) => {}
                        Some(Token::Close) => break,
                        Some(t) => return Err(format!("expected `,` or `)` in {name}(...), found {}", t.describe())),
                        None => return Err(format!("unterminated {name}(...)")),
                    }
                }
                matcher(&name, args)
            }
            Some(t) => Err(format!("expected a matcher such as Host(...), found {}", t.describe())),
            None => Err("the rule ends where a matcher was expected".into()),
        }
    }
}

/// The alternatives one matcher accepts.
fn matcher(name: &str, args: Vec<String>) -> Result<Vec<Conjunction>, String> {
    if args.is_empty() {
        return Err(format!("{name}() needs at least one argument"));
    }
    match name {
        "Host" => {
            let hosts = args
                .into_iter()
                .map(|h| {
                    let h = h.trim().to_ascii_lowercase();
                    if h.is_empty() || h.contains(['/', ' ']) {
                        Err(format!("`{h}` is not a host name"))
                    } else {
                        Ok(h)
                    }
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![Conjunction { hosts, prefix: None }])
        }
        "PathPrefix" => args
            .into_iter()
            .map(|p| {
                if !p.starts_with('/') || p.contains('{') {
                    Err(format!("PathPrefix `{p}` must be a literal path starting with `/`"))
                } else {
                    Ok(Conjunction {
                        hosts: Vec::new(),
                        prefix: Some(p),
                    })
                }
            })
            .collect(),
        other => Err(format!(
            "the matcher {other}(...) cannot be expressed as a switchctl route (supported: Host, PathPrefix, &&, ||)"
        )),
    }
}

/// Both `a` and `b` must hold.
fn conjoin(a: &Conjunction, b: &Conjunction) -> Result<Conjunction, String> {
    let hosts = match (a.hosts.is_empty(), b.hosts.is_empty()) {
        (true, _) => b.hosts.clone(),
        (_, true) => a.hosts.clone(),
        _ => {
            let both: Vec<String> = a.hosts.iter().filter(|h| b.hosts.contains(h)).cloned().collect();
            if both.is_empty() {
                return Err("two Host matchers joined by && that share no host never match".into());
            }
            both
        }
    };
    let prefix = match (&a.prefix, &b.prefix) {
        (None, p) | (p, None) => p.clone(),
        (Some(x), Some(y)) if x == y => Some(x.clone()),
        (Some(x), Some(y)) => {
            return Err(format!(
                "PathPrefix `{x}` && PathPrefix `{y}`: one route has one path prefix"
            ))
        }
    };
    Ok(Conjunction { hosts, prefix })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn host_and_path_prefix_with_stripprefix_become_one_stripped_route() {
        let l = labels(&[
            ("traefik.enable", "true"),
            (
                "traefik.http.routers.api.rule",
                "Host(`app.example.org`) && PathPrefix(`/api`)",
            ),
            ("traefik.http.routers.api.entrypoints", "websecure"),
            ("traefik.http.routers.api.tls.certresolver", "letsencrypt"),
            ("traefik.http.routers.api.middlewares", "api-strip@docker"),
            ("traefik.http.middlewares.api-strip.stripprefix.prefixes", "/api"),
            ("traefik.http.services.api.loadbalancer.server.port", "8000"),
            ("com.example.other", "ignored"),
        ]);
        let r = routes_from_labels(&l).unwrap();
        assert_eq!(
            r.routes,
            vec![LabelRoute {
                router: "api".into(),
                hosts: vec!["app.example.org".into()],
                path_prefix: "/api".into(),
                strip_prefix: true,
            }]
        );
        assert_eq!(r.port, Some(8000));
        assert_eq!(r.acme_hosts, vec!["app.example.org".to_string()]);
    }

    #[test]
    fn several_hosts_and_or_of_hosts_are_one_host_list() {
        for rule in [
            "Host(`a.example`, `b.example`)",
            "Host(`a.example`) || Host(`b.example`)",
            "(Host(\"a.example\") || Host(`b.example`))",
        ] {
            let r = routes_from_labels(&labels(&[("traefik.http.routers.web.rule", rule)])).unwrap();
            let hosts: Vec<&str> = r
                .routes
                .iter()
                .flat_map(|r| r.hosts.iter().map(String::as_str))
                .collect();
            assert_eq!(hosts, ["a.example", "b.example"], "{rule}");
            assert!(r.routes.iter().all(|r| r.path_prefix == "/" && !r.strip_prefix));
            assert!(r.acme_hosts.is_empty());
        }
    }

    #[test]
    fn and_distributes_over_or() {
        let r = routes_from_labels(&labels(&[(
            "traefik.http.routers.web.rule",
            "(Host(`a`) || Host(`b`)) && (PathPrefix(`/x`) || PathPrefix(`/y`))",
        )]))
        .unwrap();
        let got: Vec<(String, String)> = r
            .routes
            .iter()
            .map(|r| (r.hosts.join(","), r.path_prefix.clone()))
            .collect();
        assert_eq!(
            got,
            [("a", "/x"), ("a", "/y"), ("b", "/x"), ("b", "/y")].map(|(h, p)| (h.to_string(), p.to_string()))
        );
    }

    #[test]
    fn untranslatable_rules_name_the_label() {
        for rule in [
            "HostRegexp(`{sub:[a-z]+}.example`)",
            "!Host(`a`)",
            "Host(`a`) && Host(`b`)",
            "PathPrefix(`/a`) && PathPrefix(`/b`)",
            "Host(`a`",
            "Host(`a`) & PathPrefix(`/x`)",
            "Path(`/exact`)",
            "",
        ] {
            let e = routes_from_labels(&labels(&[("traefik.http.routers.web.rule", rule)])).unwrap_err();
            assert_eq!(e.label, "traefik.http.routers.web.rule", "{rule}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn middlewares_switchctl_cannot_honour_are_errors() {
        let e = routes_from_labels(&labels(&[
            ("traefik.http.routers.web.rule", "Host(`a`)"),
            ("traefik.http.routers.web.middlewares", "auth"),
            ("traefik.http.middlewares.auth.basicauth.users", "x:y"),
        ]))
        .unwrap_err();
        assert_eq!(e.label, "traefik.http.middlewares.auth.basicauth.users");
        let e = routes_from_labels(&labels(&[
            ("traefik.http.routers.web.rule", "PathPrefix(`/api`)"),
            ("traefik.http.routers.web.middlewares", "strip"),
            ("traefik.http.middlewares.strip.stripprefix.prefixes", "/other"),
        ]))
        .unwrap_err();
        assert!(e.message.contains("/other"), "{e}");
        let e = routes_from_labels(&labels(&[
            ("traefik.http.routers.web.rule", "Host(`a`)"),
            ("traefik.http.routers.web.middlewares", "missing"),
        ]))
        .unwrap_err();
        assert!(e.message.contains("not defined"), "{e}");
    }

    #[test]
    fn disabled_services_and_bad_ports() {
        let r = routes_from_labels(&labels(&[
            ("traefik.enable", "false"),
            ("traefik.http.routers.web.rule", "Nonsense"),
        ]))
        .unwrap();
        assert_eq!(r, LabelRouting::default());
        let e = routes_from_labels(&labels(&[(
            "traefik.http.services.web.loadbalancer.server.port",
            "http",
        )]))
        .unwrap_err();
        assert!(e.message.contains("not a port"), "{e}");
    }
}
