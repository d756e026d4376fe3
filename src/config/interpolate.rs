//! Compose's variable interpolation and naming rules, as the Compose
//! specification defines them, so that switchctl reads a team's
//! `docker-compose.prod.yml` exactly as `docker compose -p <project>
//! --env-file <f>` would: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+replacement}`,
//! `${VAR+replacement}`, nesting in defaults, `$$` for a literal `$`; the
//! variable that stands in an image's tag position (which the deploy tag
//! replaces); and project names.

use std::path::Path;

/// Where variables come from: the environment first, then the env files.
pub trait Vars {
    /// The value of `name`, if set (set to empty counts as set).
    fn get(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> Vars for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Interpolate `s` as Compose does. Errors say which variable and why.
pub fn interpolate(s: &str, vars: &dyn Vars) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = closing_brace(r).ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
            out.push_str(&expand(&r[..end], vars, s)?);
            rest = &r[end + 1..];
        } else {
            let len = name_len(rest);
            if len == 0 {
                // A lone `$` followed by no name is kept, as Compose does.
                out.push('$');
                continue;
            }
            let name = &rest[..len];
            rest = &rest[len..];
            // Compose substitutes an empty string (with a warning) for an
            // unset `$VAR`; switchctl refuses, since a silently empty value
            // in a production file is almost always a mistake.
            out.push_str(&vars.get(name).ok_or_else(|| unset(name, s))?);
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn unset(name: &str, s: &str) -> String {
    format!("variable {name} is not set (in {s:?}); set it in the environment or an env file, or give a default with ${{{name}:-default}}")
}

/// Length of a variable name at the start of `s`.
fn name_len(s: &str) -> usize {
    let b = s.as_bytes();
    if b.first().is_some_and(|c| c.is_ascii_digit()) {
        return 0;
    }
    b.iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count()
}

/// The index of the `}` that closes a `${` whose body starts `s`.
fn closing_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Expand the body of one `${...}`.
fn expand(expr: &str, vars: &dyn Vars, whole: &str) -> Result<String, String> {
    let len = name_len(expr);
    let (name, op) = expr.split_at(len);
    if name.is_empty() {
        return Err(format!(
            "`${{{expr}}}` does not start with a variable name (in {whole:?})"
        ));
    }
    let value = vars.get(name);
    let set = value.is_some();
    let set_nonempty = value.as_deref().is_some_and(|v| !v.is_empty());
    let (check_empty, op) = match op.strip_prefix(':') {
        Some(rest) => (true, rest),
        None => (false, op),
    };
    let present = if check_empty { set_nonempty } else { set };
    let Some(kind) = op.chars().next() else {
        return value.ok_or_else(|| unset(name, whole));
    };
    let arg = &op[kind.len_utf8()..];
    match kind {
        '-' if present => Ok(value.unwrap_or_default()),
        '-' => interpolate(arg, vars),
        '?' if present => Ok(value.unwrap_or_default()),
        '?' => Err(format!(
            "variable {name} is required: {} (in {whole:?})",
            if arg.is_empty() { "not set" } else { arg }
        )),
        '+' if present => interpolate(arg, vars),
        '+' => Ok(String::new()),
        _ => Err(format!("`${{{expr}}}` is not a valid substitution (in {whole:?})")),
    }
}

/// An image reference split where the deploy tag goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The repository, interpolated (`app-api`, `reg.example.com:5000/app/api`).
    pub repository: String,
    /// The variable in the tag position (`API_IMAGE_TAG`), which the deploy
    /// tag replaces.
    pub tag_variable: String,
}

/// Split a raw (not yet interpolated) Compose `image:` so that the deploy tag
/// can replace the variable in its tag position:
/// `app-api:${API_IMAGE_TAG:-latest}` → `app-api` + `API_IMAGE_TAG`.
pub fn split_image(raw: &str, vars: &dyn Vars) -> Result<ImageRef, String> {
    if raw.contains('@') {
        return Err(format!(
            "image {raw:?} is pinned by digest; switchctl deploys tags: write it as \"<repository>:${{IMAGE_TAG}}\""
        ));
    }
    // The tag separator is the last `:` outside `${...}` after the last `/`.
    let mut depth = 0usize;
    let mut slash = None;
    let mut colon = None;
    let b = raw.as_bytes();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'{' if i > 0 && b[i - 1] == b'$' => depth += 1,
            b'}' if depth > 0 => depth -= 1,
            b'/' if depth == 0 => slash = Some(i),
            b':' if depth == 0 => colon = Some(i),
            _ => {}
        }
    }
    let colon = colon.filter(|c| slash.is_none_or(|s| *c > s));
    let hint = |repo: &str| {
        format!(
            "write it as \"{repo}:${{IMAGE_TAG:-latest}}\" in the Compose file, or set `image = \"{repo}\"` under [[service]] in switchctl.toml"
        )
    };
    let Some(colon) = colon else {
        return Err(format!(
            "image {raw:?} has no tag variable for switchctl to replace with the deploy tag; {}",
            hint(raw)
        ));
    };
    let (repo_raw, tag_raw) = (&raw[..colon], &raw[colon + 1..]);
    let repository = interpolate(repo_raw, vars)?;
    let tag_variable = tag_raw
        .strip_prefix("${")
        .map(|r| &r[..name_len(r)])
        .or_else(|| tag_raw.strip_prefix('$').map(|r| &r[..name_len(r)]))
        .filter(|n| !n.is_empty());
    match tag_variable {
        Some(name) => Ok(ImageRef {
            repository,
            tag_variable: name.to_string(),
        }),
        None => Err(format!(
            "image {raw:?} has a fixed tag `{tag_raw}`; switchctl replaces the tag with the one it deploys, so {}",
            hint(&repository)
        )),
    }
}

/// The project name as Compose picks it: `[compose] project`, else the
/// file's `name:`, else `COMPOSE_PROJECT_NAME`, else the Compose file's
/// directory name (normalized). Names given explicitly must already be valid.
pub fn project_name(
    explicit: Option<&str>,
    file_name: Option<&str>,
    env: Option<&str>,
    compose_file: &Path,
) -> Result<String, String> {
    for (source, name) in [
        ("[compose] project", explicit),
        ("the Compose file's `name:`", file_name),
        ("COMPOSE_PROJECT_NAME", env),
    ] {
        if let Some(name) = name.filter(|n| !n.is_empty()) {
            return if valid_project_name(name) {
                Ok(name.to_string())
            } else {
                Err(format!(
                    "project name {name:?} (from {source}) must contain only lowercase letters, digits, '-' and '_', and start with a letter or digit"
                ))
            };
        }
    }
    let dir = compose_file
        .canonicalize()
        .ok()
        .and_then(|p| {
            p.parent()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let normalized: String = dir
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_')
        .collect();
    let normalized = normalized.trim_start_matches(['-', '_']).to_string();
    if normalized.is_empty() {
        Err(format!(
            "cannot derive a project name from the directory of {}; set `project` in [compose]",
            compose_file.display()
        ))
    } else {
        Ok(normalized)
    }
}

fn valid_project_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// A network's name on the engine: its `name:` if it has one, its key if it
/// is `external` (and unnamed), else `<project>_<key>`.
pub fn network_name(project: &str, key: &str, external: bool, name: Option<&str>) -> String {
    match name {
        Some(n) => n.to_string(),
        None if external => key.to_string(),
        None => format!("{project}_{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "REGISTRY" => Some("reg.example.com".into()),
            "EMPTY" => Some(String::new()),
            "DB_USER" => Some("app".into()),
            _ => None,
        }
    }

    #[test]
    fn every_compose_substitution_form() {
        let i = |s: &str| interpolate(s, &vars);
        assert_eq!(i("${REGISTRY}/api").unwrap(), "reg.example.com/api");
        assert_eq!(i("$REGISTRY/x").unwrap(), "reg.example.com/x");
        assert_eq!(i("${NOPE:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(i("${EMPTY-d}").unwrap(), "");
        assert_eq!(i("${NOPE-d}").unwrap(), "d");
        assert_eq!(i("${DB_USER:+user=$DB_USER}").unwrap(), "user=app");
        assert_eq!(i("${NOPE:+x}").unwrap(), "");
        assert_eq!(i("${EMPTY+x}").unwrap(), "x");
        assert_eq!(i("${NOPE:-${DB_USER:-z}}-1").unwrap(), "app-1");
        assert_eq!(i("$$HOME and $").unwrap(), "$HOME and $");
        assert_eq!(
            i("postgresql://${DB_USER}:${NOPE:-pw}@db/app").unwrap(),
            "postgresql://app:pw@db/app"
        );
        assert!(i("${NOPE}").unwrap_err().contains("NOPE is not set"));
        assert!(i("$NOPE").unwrap_err().contains("NOPE is not set"));
        assert!(i("${NOPE:?set it in .env}").unwrap_err().contains("set it in .env"));
        assert!(i("${EMPTY:?}").unwrap_err().contains("EMPTY is required"));
        assert_eq!(i("${EMPTY?}").unwrap(), "");
        assert!(i("${REGISTRY").unwrap_err().contains("unclosed"));
        assert!(i("${:-x}").is_err());
        assert!(i("${REGISTRY/x}").is_err());
    }

    #[test]
    fn a_non_ascii_character_after_the_name_is_an_error_not_a_panic() {
        // Found by the `compose` fuzz target: the operator was taken to be
        // one byte long.
        for s in ["${EMPTY:\u{540}}", "${DB_USER\u{e9}x}", "${NOPE:\u{1F600}-d}"] {
            let err = interpolate(s, &vars).unwrap_err();
            assert!(err.contains("is not a valid substitution"), "{s:?}: {err}");
        }
    }

    #[test]
    fn the_tag_variable_is_found_in_the_tag_position() {
        let s = |raw: &str| split_image(raw, &vars);
        assert_eq!(
            s("app-api:${API_IMAGE_TAG:-latest}").unwrap(),
            ImageRef {
                repository: "app-api".into(),
                tag_variable: "API_IMAGE_TAG".into()
            }
        );
        assert_eq!(
            s("${REGISTRY}:5000/app/api:$TAG").unwrap(),
            ImageRef {
                repository: "reg.example.com:5000/app/api".into(),
                tag_variable: "TAG".into()
            }
        );
        assert_eq!(
            s("${REGISTRY:-r.io}/web:${TAG}").unwrap().repository,
            "reg.example.com/web"
        );
        let fixed = s("app-api:1.2").unwrap_err();
        assert!(
            fixed.contains("fixed tag") && fixed.contains("app-api:${IMAGE_TAG"),
            "{fixed}"
        );
        assert!(s("reg.example.com:5000/api").unwrap_err().contains("no tag variable"));
        assert!(s("api@sha256:abc").unwrap_err().contains("digest"));
    }

    #[test]
    fn project_names_follow_compose() {
        let f = Path::new("/nonexistent/My App!/docker-compose.yml");
        assert_eq!(project_name(Some("app-prod"), Some("x"), None, f).unwrap(), "app-prod");
        assert_eq!(project_name(None, Some("stack"), Some("env"), f).unwrap(), "stack");
        assert_eq!(project_name(None, None, Some("from-env"), f).unwrap(), "from-env");
        assert!(project_name(Some("Bad Name"), None, None, f)
            .unwrap_err()
            .contains("[compose] project"));
        let dir = tempfile::Builder::new().prefix("My_App.Dir-").tempdir().unwrap();
        let file = dir.path().join("docker-compose.yml");
        std::fs::write(&file, "services: {}").unwrap();
        let derived = project_name(None, None, None, &file).unwrap();
        assert!(derived.starts_with("my_appdir-"), "{derived}");
    }

    #[test]
    fn networks_are_named_as_compose_names_them() {
        assert_eq!(
            network_name("app-prod", "app-prod-network", false, None),
            "app-prod_app-prod-network"
        );
        assert_eq!(network_name("app-prod", "traefik-public", true, None), "traefik-public");
        assert_eq!(network_name("app-prod", "x", false, Some("shared")), "shared");
    }
}
