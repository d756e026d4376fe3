//! A Compose file as any bytes, imported as `[compose]` reads it
//! (`import_text`, with variables and env files from memory): errors, never
//! a panic; a stack that imports and validates gives the proxy a route
//! table it accepts. Beside it, on the same text: Compose interpolation
//! (`$$` escapes round-trip, text without `$` is unchanged, `${...}` of any
//! shape is an error at worst), image tag splitting, and Traefik labels
//! read from its `key=value` lines.
//!
//! Input: `<compose yaml>[\0<switchctl.toml>]`, so that any Compose file is
//! a seed as it is; without a usable switchctl.toml the stack is imported
//! with `project = "fuzz"` and `routes_from_labels = true`.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchctl::config::compose::{import_text, ComposeTable, Sources};
use switchctl::config::interpolate::{interpolate, split_image};
use switchctl::config::traefik::routes_from_labels;
use switchctl::config::Config;
use switchctl::controller::{route_table, UpstreamSet};

/// A few variables set, the rest unset; every env file holds the same
/// lines, except one whose name says it is missing.
struct Memory;

const VARS: &[(&str, &str)] = &[
    ("TAG", "v1"),
    ("API_IMAGE_TAG", "v2"),
    ("DB_USER", "app"),
    ("EMPTY", ""),
    ("REG", "registry.example:5000"),
    ("DOLLAR", "$HOME ${X}"),
];

impl Sources for Memory {
    fn var(&self, name: &str) -> Option<String> {
        VARS.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    fn env_file(&self, path: &Path, required: bool) -> Result<Vec<(String, String)>, String> {
        if path.to_string_lossy().contains("missing") {
            return if required {
                Err(format!("cannot read env file {}", path.display()))
            } else {
                Ok(Vec::new())
            };
        }
        Ok(vec![("FROM_FILE".into(), "x".into()), ("TAG".into(), "file".into())])
    }
}

fn vars(name: &str) -> Option<String> {
    Memory.var(name)
}

const DEFAULT_TOML: &str =
    "driver = \"docker\"\n[compose]\nfile = \"docker-compose.yml\"\nproject = \"fuzz\"\nroutes_from_labels = true\n";

fuzz_target!(|data: &[u8]| {
    let (yaml, toml) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(yaml) = std::str::from_utf8(yaml) else {
        return;
    };

    interpolation(yaml);
    for line in yaml.lines() {
        let _ = split_image(line.trim(), &vars);
    }
    let labels: BTreeMap<String, String> = yaml
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let _ = routes_from_labels(&labels);

    let dir = Path::new("/nonexistent-fuzz");
    let toml = toml
        .and_then(|t| std::str::from_utf8(t).ok())
        .filter(|t| Config::parse(&dir.join("switchctl.toml"), t).is_ok_and(|c| c.compose.is_some()))
        .unwrap_or(DEFAULT_TOML);
    let mut config = Config::parse(&dir.join("switchctl.toml"), toml).expect("checked above");
    let table: ComposeTable = config.compose.as_ref().expect("checked above").table();
    let path = config.resolve(&table.file);
    let Ok((services, project)) = import_text(&config, &table, &path, yaml, &Memory) else {
        return;
    };
    config.services = services;
    config.project = Some(project);
    if config.validate(toml, true).is_ok() {
        let table = route_table(&config, None, &UpstreamSet::default());
        assert_eq!(
            table.services().len(),
            config.services.len(),
            "a valid Compose stack must give a valid route table"
        );
    }
});

/// Compose interpolation of `s`, whatever its `$`s and braces.
fn interpolation(s: &str) {
    let out = interpolate(s, &vars);
    if !s.contains('$') {
        assert_eq!(out.as_deref(), Ok(s), "no `$`, nothing to replace");
    }
    // `$$` is a literal `$`: every `$` escaped comes back as it was.
    let escaped = s.replace('$', "$$");
    assert_eq!(interpolate(&escaped, &vars).as_deref(), Ok(s), "escaped {escaped:?}");
}
