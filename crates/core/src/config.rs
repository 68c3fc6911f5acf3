//! The one TOML file that configures polld.
//!
//! Loading is strict: unknown keys, bad values and inconsistent settings are all errors
//! that name the file, line and column. The `[[poller]]` tables are split in two: the
//! keys every poller has (name, timing, project, ...) are read here, and the rest go to
//! the backend named by `type`, which reads them with its own serde struct. `[sink]` is
//! read the same way by the sink type it names. Both halves deserialize from the same
//! spanned document, so both report exact positions.
//!
//! A loaded [`Config`] is data only: each plugin's keys are kept as a TOML table (after
//! the plugin checked them), and pollers and sinks are built from it when the daemon
//! starts. A reload compares two configs by value ([`diff`]) and rebuilds only the
//! pollers that were added or changed.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::{Map, Value};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use polld_backend::{PollerContext, redact};

use crate::backend::BackendRegistry;
use crate::filter::{FilterKeys, Filters, SkipMarkers};
use crate::plugins::Plugins;
use crate::sink::{KeysError, SinkContext, SinkRegistry};

/// A loaded, validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from, as the user named it.
    pub path: PathBuf,
    pub daemon: DaemonConfig,
    pub sink: SinkConfig,
    /// `[hooks]`: the forges whose push webhooks `POST /hooks/{forge}` accepts.
    pub hooks: HooksConfig,
    /// `[store]`: where the state is kept, and how replicas share it.
    pub store: StoreConfig,
    pub pollers: Vec<PollerConfig>,
}

/// `[store]`: absent, the state is SQLite in `state_dir`, one process's. With
/// `url_env`, a database every replica running this config shares; the URL itself is
/// read from that variable when polld starts (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub url_env: Option<String>,
    /// How long a replica holds a poller without renewing its lease.
    pub lease: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url_env: None,
            lease: Duration::from_secs(15),
        }
    }
}

/// The keys of `[store]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreKeys {
    url_env: Option<Spanned<String>>,
    lease: Option<Spanned<HumanDuration>>,
}

impl StoreKeys {
    fn resolve(
        self,
        at: &impl Fn(Option<Range<usize>>, &str) -> ConfigError,
    ) -> Result<StoreConfig, ConfigError> {
        if let Some(variable) = self.url_env.as_ref().filter(|v| v.get_ref().is_empty()) {
            return Err(at(Some(variable.span()), "url_env names no variable"));
        }
        let lease = match self.lease {
            Some(lease) if lease.get_ref().0 < MIN_LEASE => {
                return Err(at(
                    Some(lease.span()),
                    &format!(
                        "lease must be at least {}: replicas renew every third of it",
                        humantime::format_duration(MIN_LEASE)
                    ),
                ));
            }
            Some(lease) => lease.into_inner().0,
            None => StoreConfig::default().lease,
        };
        Ok(StoreConfig {
            url_env: self.url_env.map(Spanned::into_inner),
            lease,
        })
    }
}

/// The shortest `lease`: a renewal every third of it must fit a database round trip
/// with room to spare.
const MIN_LEASE: Duration = Duration::from_secs(1);

/// `[hooks]`: each forge's secret, by where to read it. A forge without one has no
/// endpoint. The secrets themselves are read when the daemon starts
/// ([`SecretSource::read`]), as the control token is, so a config never holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HooksConfig {
    /// `(forge, source)` in the order github, gitlab, gitea, bitbucket; forge names are
    /// those of the `/hooks/{forge}` paths.
    pub forges: Vec<(&'static str, SecretSource)>,
}

/// Where a webhook secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The environment variable of this name.
    Env(String),
    /// This file (resolved against the config's directory); trailing line breaks and
    /// spaces are not part of the secret.
    File(PathBuf),
}

impl SecretSource {
    /// The secret's bytes; an error says what is missing. An empty secret is an error:
    /// it would prove nothing.
    pub fn read(&self) -> Result<Vec<u8>, String> {
        let secret = match self {
            SecretSource::Env(variable) => std::env::var_os(variable)
                .map(|value| value.into_encoded_bytes())
                .ok_or_else(|| format!("environment variable {variable} is not set"))?,
            SecretSource::File(path) => {
                let mut bytes = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let kept = bytes.trim_ascii_end().len();
                bytes.truncate(kept);
                bytes
            }
        };
        if secret.is_empty() {
            return Err(format!("{self} is empty"));
        }
        Ok(secret)
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Env(variable) => write!(f, "environment variable {variable}"),
            SecretSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Cursors, outbox and mirrors live here (resolved against the config's directory).
    pub state_dir: PathBuf,
    /// At most this many polls run at once, across all pollers.
    pub max_concurrent_polls: usize,
    /// At most this many of them against one remote host.
    pub max_polls_per_host: usize,
    /// Address of the HTTP control endpoint, when set.
    pub listen: Option<SocketAddr>,
    /// Environment variable holding the bearer token for the control endpoint's POSTs.
    pub token_env: Option<String>,
    /// How long polls in flight may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

/// Where changes go: `[sink]`, checked by the sink type its `type` names.
#[derive(Clone, PartialEq)]
pub struct SinkConfig {
    /// The `type` key (`stdout` when there is no `[sink]`).
    pub type_name: String,
    /// The other keys, as written.
    pub keys: toml::Table,
    pub context: SinkContext,
}

/// When a poller polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub interval: Duration,
    /// Each cycle's extra delay is drawn uniformly from `jitter_min..=jitter`.
    pub jitter: Duration,
    pub jitter_min: Duration,
    /// Poll right after start (plus jitter) rather than one interval after it.
    pub at_launch: bool,
}

/// One `[[poller]]`, with `[defaults]` applied and its backend's keys checked.
#[derive(Clone, PartialEq)]
pub struct PollerConfig {
    pub name: String,
    /// The backend's `type` name; also the change record's `vcs`.
    pub vcs: &'static str,
    /// As configured; may hold credentials. Show [`PollerConfig::display_repo`] instead.
    pub repo: String,
    pub timing: Timing,
    /// The deadline for each remote operation of a poll (`timeout`, default 2 minutes).
    pub timeout: Duration,
    /// `ca_file`, resolved and checked.
    pub ca_file: Option<PathBuf>,
    /// `paths`, `ignore_paths`, `skip_markers`, `ignore_authors`: what is reported.
    pub filters: Filters,
    pub project: String,
    pub category: Option<String>,
    pub codebase: String,
    /// Template: `{revision}` and `{branch}` are substituted per change.
    pub revlink: Option<String>,
    pub properties: Map<String, Value>,
    /// The backend's own keys, as written.
    pub keys: toml::Table,
    /// The config file's directory, which anchors relative paths.
    pub config_dir: PathBuf,
    /// `<state_dir>/mirrors/<name>`: the poller's own directory.
    pub mirror_dir: PathBuf,
    /// `<state_dir>/secrets/<name>`: emptied when polld starts.
    pub secrets_dir: PathBuf,
}

impl Config {
    /// The config file's directory, which anchors relative paths.
    pub fn dir(&self) -> PathBuf {
        directory_of(&self.path)
    }
}

fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

impl PollerConfig {
    /// The repo with credentials stripped: the only form that may be logged or stored.
    pub fn display_repo(&self) -> String {
        redact::strip_userinfo(&self.repo)
    }

    /// What the backend is given besides its keys.
    pub fn context(&self) -> PollerContext {
        PollerContext {
            name: self.name.clone(),
            repo: self.repo.clone(),
            config_dir: self.config_dir.clone(),
            mirror_dir: self.mirror_dir.clone(),
            secrets_dir: self.secrets_dir.clone(),
            timeout: self.timeout,
            ca_file: self.ca_file.clone(),
            paths: Arc::clone(self.filters.paths()),
        }
    }
}

/// What a reload changes, by value: each poller added, changed (any key or effective
/// timing differs), removed or unchanged, and whether the sections that take effect
/// only after a restart changed.
#[derive(Debug, Default)]
pub struct ConfigDiff<'a> {
    pub added: Vec<&'a PollerConfig>,
    pub changed: Vec<&'a PollerConfig>,
    pub removed: Vec<&'a str>,
    pub unchanged: Vec<&'a str>,
    pub daemon_changed: bool,
    pub sink_changed: bool,
    pub hooks_changed: bool,
    pub store_changed: bool,
}

/// How `new` differs from `old`.
pub fn diff<'a>(old: &'a Config, new: &'a Config) -> ConfigDiff<'a> {
    let mut diff = ConfigDiff {
        daemon_changed: old.daemon != new.daemon,
        sink_changed: old.sink != new.sink,
        hooks_changed: old.hooks != new.hooks,
        store_changed: old.store != new.store,
        ..ConfigDiff::default()
    };
    for poller in &new.pollers {
        match old.pollers.iter().find(|p| p.name == poller.name) {
            None => diff.added.push(poller),
            Some(before) if before == poller => diff.unchanged.push(&poller.name),
            Some(_) => diff.changed.push(poller),
        }
    }
    for poller in &old.pollers {
        if !new.pollers.iter().any(|p| p.name == poller.name) {
            diff.removed.push(&poller.name);
        }
    }
    diff
}

impl fmt::Debug for SinkConfig {
    /// The keys' names only: a `url` may carry credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkConfig")
            .field("type_name", &self.type_name)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl fmt::Debug for PollerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollerConfig")
            .field("name", &self.name)
            .field("vcs", &self.vcs)
            .field("repo", &self.display_repo())
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

/// Why a config could not be loaded. Its `Display` is what the user sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Reads and validates the config at `path`, each poller's and the sink's keys checked by
/// their plugins.
pub fn load(path: &Path, plugins: &Plugins) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(path, &text, plugins)
}

/// Parses config text as if read from `path` (which only names the file in errors and
/// anchors relative paths).
pub fn parse(path: &Path, text: &str, plugins: &Plugins) -> Result<Config, ConfigError> {
    let at = |span: Option<Range<usize>>, message: &str| {
        let (line, column) = line_column(text, span.map_or(0, |s| s.start));
        ConfigError::Invalid {
            path: path.display().to_string(),
            line,
            column,
            message: message.trim_end().to_owned(),
        }
    };
    let toml_error = |e: toml::de::Error| at(e.span(), e.message());
    // Absolute, so relative paths in the config mean the same from any working
    // directory the VCS clients run in.
    let config_dir = std::path::absolute(directory_of(path)).unwrap_or_else(|_| directory_of(path));

    let root = DeTable::parse(text).map_err(toml_error)?;
    let root_span = root.span();
    let mut root = root.into_inner();
    let poller_tables = root.remove("poller");
    let sink_table = root.remove("sink");
    let hooks_span = root
        .iter()
        .find(|(key, _)| key.get_ref() == "hooks")
        .map(|(_, value)| value.span());
    let file = FileKeys::deserialize(ValueDeserializer::from(Spanned::new(
        root_span,
        DeValue::Table(root),
    )))
    .map_err(toml_error)?;

    let daemon = file.daemon.unwrap_or_default().resolve(&config_dir, &at)?;
    let store = file.store.unwrap_or_default().resolve(&at)?;
    let hooks = match file.hooks {
        Some(keys) => keys.resolve(&config_dir, hooks_span.clone(), &at)?,
        None => HooksConfig::default(),
    };
    if !hooks.forges.is_empty() && daemon.listen.is_none() {
        return Err(at(
            hooks_span,
            "[hooks] are served on the control endpoint: set [daemon] listen",
        ));
    }
    let defaults = file.defaults.unwrap_or_default();
    let sink_context = SinkContext {
        config_dir: config_dir.clone(),
    };
    let sink = match sink_table {
        Some(table) => parse_sink(table, sink_context, &plugins.sinks, &at)?,
        None => SinkConfig {
            type_name: "stdout".to_owned(),
            keys: toml::Table::new(),
            context: sink_context,
        },
    };

    let tables = match poller_tables {
        None => Vec::new(),
        Some(value) => {
            let span = value.span();
            match value.into_inner() {
                DeValue::Array(array) => array.into_iter().collect(),
                _ => {
                    return Err(at(
                        Some(span),
                        "`poller` must be an array of tables: write [[poller]]",
                    ));
                }
            }
        }
    };

    let mut names = HashSet::new();
    let mut pollers = Vec::with_capacity(tables.len());
    for table in tables {
        let (poller, name_span) = build_poller(
            table,
            &defaults,
            &daemon,
            &config_dir,
            &plugins.backends,
            &at,
        )?;
        if !names.insert(poller.name.clone()) {
            return Err(at(
                Some(name_span),
                &format!(
                    "duplicate poller name `{}`: names identify cursors and must be unique",
                    poller.name
                ),
            ));
        }
        pollers.push(poller);
    }

    Ok(Config {
        path: path.to_path_buf(),
        daemon,
        sink,
        hooks,
        store,
        pollers,
    })
}

/// The top-level keys other than `[[poller]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileKeys {
    daemon: Option<DaemonKeys>,
    defaults: Option<DefaultKeys>,
    hooks: Option<HooksKeys>,
    store: Option<StoreKeys>,
}

/// The keys of `[hooks]`: per forge, the environment variable or the file holding its
/// secret (GitLab calls its own a token).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HooksKeys {
    github_secret_env: Option<Spanned<String>>,
    github_secret_file: Option<Spanned<String>>,
    gitlab_token_env: Option<Spanned<String>>,
    gitlab_token_file: Option<Spanned<String>>,
    gitea_secret_env: Option<Spanned<String>>,
    gitea_secret_file: Option<Spanned<String>>,
    bitbucket_secret_env: Option<Spanned<String>>,
    bitbucket_secret_file: Option<Spanned<String>>,
}

impl HooksKeys {
    fn resolve(
        self,
        config_dir: &Path,
        table_span: Option<Range<usize>>,
        at: &impl Fn(Option<Range<usize>>, &str) -> ConfigError,
    ) -> Result<HooksConfig, ConfigError> {
        let forges = [
            (
                "github",
                "github_secret",
                self.github_secret_env,
                self.github_secret_file,
            ),
            (
                "gitlab",
                "gitlab_token",
                self.gitlab_token_env,
                self.gitlab_token_file,
            ),
            (
                "gitea",
                "gitea_secret",
                self.gitea_secret_env,
                self.gitea_secret_file,
            ),
            (
                "bitbucket",
                "bitbucket_secret",
                self.bitbucket_secret_env,
                self.bitbucket_secret_file,
            ),
        ];
        let mut configured = Vec::new();
        for (forge, key, env, file) in forges {
            let source = match (env, file) {
                (Some(_), Some(file)) => {
                    return Err(at(
                        Some(file.span()),
                        &format!("set {key}_env or {key}_file, not both"),
                    ));
                }
                (Some(env), None) if env.get_ref().is_empty() => {
                    return Err(at(
                        Some(env.span()),
                        &format!("{key}_env must name a variable"),
                    ));
                }
                (None, Some(file)) if file.get_ref().is_empty() => {
                    return Err(at(
                        Some(file.span()),
                        &format!("{key}_file must name a file"),
                    ));
                }
                (Some(env), None) => SecretSource::Env(env.into_inner()),
                (None, Some(file)) => SecretSource::File(config_dir.join(file.get_ref())),
                (None, None) => continue,
            };
            configured.push((forge, source));
        }
        if configured.is_empty() {
            return Err(at(
                table_span,
                "[hooks] configures no forge: set github_secret_env, gitlab_token_env, gitea_secret_env or bitbucket_secret_env (or their _file variants)",
            ));
        }
        Ok(HooksConfig { forges: configured })
    }
}

/// `[sink]`: its `type` names the sink type, which then checks the other keys, read
/// from the same spanned table, so an unknown or bad key is reported where it is (a
/// serde-tagged enum would report every problem at the table's header).
fn parse_sink(
    table: Spanned<DeValue<'_>>,
    context: SinkContext,
    sinks: &SinkRegistry,
    at: &impl Fn(Option<Range<usize>>, &str) -> ConfigError,
) -> Result<SinkConfig, ConfigError> {
    let span = table.span();
    let DeValue::Table(mut keys) = table.into_inner() else {
        return Err(at(Some(span), "`sink` must be a table: write [sink]"));
    };
    let known = sinks.types().join(", ");
    let (type_name, type_span) = match keys.remove("type") {
        Some(value) => match value.get_ref() {
            DeValue::String(name) => (name.to_string(), value.span()),
            _ => return Err(at(Some(value.span()), "[sink] type must be a string")),
        },
        None => return Err(at(Some(span), &format!("[sink] needs a type: {known}"))),
    };
    let key_spans: HashMap<String, Range<usize>> = keys
        .iter()
        .map(|(key, value)| (key.get_ref().to_string(), value.span()))
        .collect();
    let spanned =
        || ValueDeserializer::from(Spanned::new(span.clone(), DeValue::Table(keys.clone())));
    let checked = sinks
        .check(&type_name, &context, spanned())
        .ok_or_else(|| {
            at(
                Some(type_span.clone()),
                &format!("unknown sink type `{type_name}`; known: {known}"),
            )
        })?;
    match checked {
        Ok(()) => {}
        Err(KeysError::Keys(e)) => return Err(at(e.span().or(Some(span.clone())), e.message())),
        Err(KeysError::Invalid(refusal)) => {
            let position = refusal
                .key
                .and_then(|key| key_spans.get(key).cloned())
                .unwrap_or(type_span);
            return Err(at(Some(position), &format!("[sink]: {}", refusal.message)));
        }
    }
    let keys = toml::Table::deserialize(spanned()).map_err(|e| at(e.span(), e.message()))?;
    Ok(SinkConfig {
        type_name,
        keys,
        context,
    })
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonKeys {
    state_dir: Option<PathBuf>,
    max_concurrent_polls: Option<Spanned<usize>>,
    max_polls_per_host: Option<Spanned<usize>>,
    listen: Option<Spanned<String>>,
    token_env: Option<String>,
    shutdown_grace: Option<HumanDuration>,
}

impl DaemonKeys {
    fn resolve(
        self,
        config_dir: &Path,
        at: &impl Fn(Option<Range<usize>>, &str) -> ConfigError,
    ) -> Result<DaemonConfig, ConfigError> {
        let max_concurrent_polls = match self.max_concurrent_polls {
            Some(n) if *n.get_ref() == 0 => {
                return Err(at(
                    Some(n.span()),
                    "max_concurrent_polls must be at least 1",
                ));
            }
            Some(n) if *n.get_ref() > MAX_CONCURRENT_POLLS => {
                return Err(at(
                    Some(n.span()),
                    &format!("max_concurrent_polls must be at most {MAX_CONCURRENT_POLLS}"),
                ));
            }
            Some(n) => n.into_inner(),
            None => 32,
        };
        let max_polls_per_host = match self.max_polls_per_host {
            Some(n) if *n.get_ref() == 0 => {
                return Err(at(Some(n.span()), "max_polls_per_host must be at least 1"));
            }
            // More than the daemon's own cap changes nothing.
            Some(n) => n.into_inner().min(max_concurrent_polls),
            None => (max_concurrent_polls / 2).max(1),
        };
        let listen = match &self.listen {
            Some(listen) => Some(listen.get_ref().parse::<SocketAddr>().map_err(|_| {
                at(
                    Some(listen.span()),
                    &format!(
                        "listen must be an IP address and port, like \"127.0.0.1:9150\", not {:?}",
                        listen.get_ref()
                    ),
                )
            })?),
            None => None,
        };
        if let (Some(address), Some(span)) = (listen, self.listen.as_ref().map(Spanned::span))
            && !address.ip().is_loopback()
            && self.token_env.is_none()
        {
            return Err(at(
                Some(span),
                "listen on a non-loopback address needs token_env: the POST endpoints would be open to the network",
            ));
        }
        Ok(DaemonConfig {
            state_dir: config_dir.join(self.state_dir.unwrap_or_else(|| PathBuf::from(".polld"))),
            max_concurrent_polls,
            max_polls_per_host,
            listen,
            token_env: self.token_env,
            shutdown_grace: self.shutdown_grace.map_or(Duration::from_secs(10), |d| d.0),
        })
    }
}

/// The keys of `[defaults]`: timing, `timeout`, `ca_file` and the filters, each
/// overridable per poller.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultKeys {
    interval: Option<Spanned<HumanDuration>>,
    jitter: Option<Spanned<HumanDuration>>,
    jitter_min: Option<Spanned<HumanDuration>>,
    at_launch: Option<bool>,
    timeout: Option<Spanned<HumanDuration>>,
    ca_file: Option<Spanned<String>>,
    paths: Option<Spanned<Vec<String>>>,
    ignore_paths: Option<Spanned<Vec<String>>>,
    skip_markers: Option<Spanned<SkipMarkers>>,
    ignore_authors: Option<Spanned<Vec<String>>>,
}

/// The keys every `[[poller]]` has, whatever its backend.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonPollerKeys {
    name: Spanned<String>,
    #[serde(rename = "type")]
    vcs: Spanned<String>,
    repo: Spanned<String>,
    interval: Option<Spanned<HumanDuration>>,
    jitter: Option<Spanned<HumanDuration>>,
    jitter_min: Option<Spanned<HumanDuration>>,
    at_launch: Option<bool>,
    timeout: Option<Spanned<HumanDuration>>,
    ca_file: Option<Spanned<String>>,
    paths: Option<Spanned<Vec<String>>>,
    ignore_paths: Option<Spanned<Vec<String>>>,
    skip_markers: Option<Spanned<SkipMarkers>>,
    ignore_authors: Option<Spanned<Vec<String>>>,
    project: Option<String>,
    category: Option<String>,
    codebase: Option<String>,
    revlink: Option<String>,
    properties: Option<Map<String, Value>>,
}

/// The key names of [`CommonPollerKeys`]; everything else belongs to the backend.
const COMMON_POLLER_KEYS: &[&str] = &[
    "name",
    "type",
    "repo",
    "interval",
    "jitter",
    "jitter_min",
    "at_launch",
    "timeout",
    "ca_file",
    "paths",
    "ignore_paths",
    "skip_markers",
    "ignore_authors",
    "project",
    "category",
    "codebase",
    "revlink",
    "properties",
];

fn build_poller(
    table: Spanned<DeValue<'_>>,
    defaults: &DefaultKeys,
    daemon: &DaemonConfig,
    config_dir: &Path,
    backends: &BackendRegistry,
    at: &impl Fn(Option<Range<usize>>, &str) -> ConfigError,
) -> Result<(PollerConfig, Range<usize>), ConfigError> {
    let span = table.span();
    let DeValue::Table(table) = table.into_inner() else {
        return Err(at(Some(span), "each [[poller]] must be a table"));
    };
    let (common, own): (DeTable<'_>, DeTable<'_>) = table
        .into_iter()
        .partition(|(key, _)| COMMON_POLLER_KEYS.contains(&key.get_ref().as_ref()));
    // Where each backend key's value is, for a backend's refusal of one of them.
    let own_spans: HashMap<String, Range<usize>> = own
        .iter()
        .map(|(key, value)| (key.get_ref().to_string(), value.span()))
        .collect();
    let common = CommonPollerKeys::deserialize(ValueDeserializer::from(Spanned::new(
        span.clone(),
        DeValue::Table(common),
    )))
    .map_err(|e| at(e.span().or(Some(span.clone())), e.message()))?;

    let name = common.name.get_ref();
    if !is_valid_name(name) {
        return Err(at(
            Some(common.name.span()),
            &format!(
                "invalid poller name {name:?}: use letters, digits, `_`, `-` and `.`, not starting with `.` (names become directory names)"
            ),
        ));
    }
    let repo = common.repo.get_ref();
    polld_backend::check_repo(repo).map_err(|message| at(Some(common.repo.span()), &message))?;
    let timing = resolve_timing(&common, defaults, at)?;
    let timeout = match common.timeout.as_ref().or(defaults.timeout.as_ref()) {
        Some(timeout) if timeout.get_ref().0.is_zero() => {
            return Err(at(
                Some(timeout.span()),
                &format!("poller `{name}`: timeout must be greater than zero"),
            ));
        }
        Some(timeout) => timeout.get_ref().0,
        None => PollerContext::DEFAULT_TIMEOUT,
    };
    let ca_file = match common.ca_file.as_ref().or(defaults.ca_file.as_ref()) {
        Some(path) => Some(
            check_ca_file(config_dir, path.get_ref())
                .map_err(|message| at(Some(path.span()), &format!("ca_file: {message}")))?,
        ),
        None => None,
    };

    let filters = resolve_filters(&common, defaults, at)?;

    let type_name = common.vcs.get_ref();
    let unknown_type = || {
        at(
            Some(common.vcs.span()),
            &format!(
                "unknown poller type `{type_name}`; known: {}",
                backends.types().join(", ")
            ),
        )
    };
    let vcs = backends.name_of(type_name).ok_or_else(unknown_type)?;
    let poller = PollerConfig {
        name: name.clone(),
        vcs,
        repo: repo.clone(),
        timing,
        timeout,
        ca_file,
        filters,
        project: common.project.unwrap_or_default(),
        category: common.category,
        codebase: common.codebase.unwrap_or_default(),
        revlink: common.revlink,
        properties: common.properties.unwrap_or_default(),
        keys: toml::Table::new(),
        config_dir: config_dir.to_path_buf(),
        mirror_dir: daemon.state_dir.join("mirrors").join(name),
        secrets_dir: daemon.state_dir.join(SECRETS_DIR).join(name),
    };
    let spanned =
        || ValueDeserializer::from(Spanned::new(span.clone(), DeValue::Table(own.clone())));
    let checked = backends
        .check(type_name, poller.context(), spanned())
        .ok_or_else(unknown_type)?;
    match checked {
        Ok(()) => {}
        Err(KeysError::Keys(e)) => return Err(at(e.span().or(Some(span.clone())), e.message())),
        Err(KeysError::Invalid(refusal)) => {
            let span = match refusal.key {
                Some("repo") => common.repo.span(),
                Some(key) => own_spans
                    .get(key)
                    .cloned()
                    .unwrap_or_else(|| common.vcs.span()),
                None => common.vcs.span(),
            };
            return Err(at(
                Some(span),
                &format!("poller `{name}`: {}", refusal.message),
            ));
        }
    }
    let keys = toml::Table::deserialize(spanned()).map_err(|e| at(e.span(), e.message()))?;
    Ok((PollerConfig { keys, ..poller }, common.name.span()))
}

fn resolve_timing(
    keys: &CommonPollerKeys,
    defaults: &DefaultKeys,
    at: &impl Fn(Option<Range<usize>>, &str) -> ConfigError,
) -> Result<Timing, ConfigError> {
    let pick = |own: &Option<Spanned<HumanDuration>>, default: &Option<Spanned<HumanDuration>>| {
        own.as_ref()
            .or(default.as_ref())
            .map(|d| (d.get_ref().0, Some(d.span())))
    };
    let (interval, interval_span) =
        pick(&keys.interval, &defaults.interval).unwrap_or((Duration::from_secs(600), None));
    let (jitter, jitter_span) =
        pick(&keys.jitter, &defaults.jitter).unwrap_or((Duration::ZERO, None));
    let (jitter_min, jitter_min_span) =
        pick(&keys.jitter_min, &defaults.jitter_min).unwrap_or((Duration::ZERO, None));
    let name = keys.name.get_ref();
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if interval.is_zero() {
        return Err(at(
            interval_span,
            &format!("poller `{name}`: interval must be greater than zero"),
        ));
    }
    if jitter >= interval {
        return Err(at(
            jitter_span,
            &format!(
                "poller `{name}`: jitter ({}) must be less than interval ({})",
                show(jitter),
                show(interval)
            ),
        ));
    }
    if jitter_min > jitter {
        return Err(at(
            jitter_min_span,
            &format!(
                "poller `{name}`: jitter_min ({}) must not exceed jitter ({})",
                show(jitter_min),
                show(jitter)
            ),
        ));
    }
    Ok(Timing {
        interval,
        jitter,
        jitter_min,
        at_launch: keys.at_launch.or(defaults.at_launch).unwrap_or(true),
    })
}

/// Names become directory names under the state dir: no `/`, no leading `.`, no spaces.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    let ok_first = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c == '.')
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A duration written as a humantime string (`"90s"`, `"1h 30m"`) or integer seconds,
/// at most [`MAX_DURATION`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// The longest duration a config may say: 100 years (`"100y"`, for a poller that only
/// polls when pushed). Longer ones are refused rather than overflowing a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// The poller's filter keys, else the defaults', compiled; an error points at the key
/// that holds the bad value.
fn resolve_filters(
    common: &CommonPollerKeys,
    defaults: &DefaultKeys,
    at: &impl Fn(Option<Range<usize>>, &str) -> ConfigError,
) -> Result<Filters, ConfigError> {
    let paths = common.paths.as_ref().or(defaults.paths.as_ref());
    let ignore_paths = common
        .ignore_paths
        .as_ref()
        .or(defaults.ignore_paths.as_ref());
    let skip_markers = common
        .skip_markers
        .as_ref()
        .or(defaults.skip_markers.as_ref());
    let ignore_authors = common
        .ignore_authors
        .as_ref()
        .or(defaults.ignore_authors.as_ref());
    let keys = FilterKeys {
        paths: paths.map(|v| v.get_ref().clone()),
        ignore_paths: ignore_paths.map(|v| v.get_ref().clone()),
        skip_markers: skip_markers.map(|v| v.get_ref().clone()),
        ignore_authors: ignore_authors.map(|v| v.get_ref().clone()),
    };
    Filters::new(keys).map_err(|error| {
        let span = match error.key {
            "paths" => paths.map(Spanned::span),
            "ignore_paths" => ignore_paths.map(Spanned::span),
            "skip_markers" => skip_markers.map(Spanned::span),
            _ => ignore_authors.map(Spanned::span),
        };
        at(
            span,
            &format!("poller `{}`: {}", common.name.get_ref(), error.message),
        )
    })
}

/// `ca_file` resolved against the config's directory, once it is known to be a
/// readable PEM bundle with at least one certificate (each backend parses it again for
/// its TLS library, which may refuse a certificate this does not look into).
pub fn check_ca_file(config_dir: &Path, path: &str) -> Result<PathBuf, String> {
    let file = config_dir.join(path);
    let text = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let has_certificate = text
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----");
    if !has_certificate {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        ));
    }
    Ok(file)
}

/// Where, under the state directory, pollers keep files that must not outlive the
/// process (emptied at start).
pub const SECRETS_DIR: &str = "secrets";

/// The most polls `max_concurrent_polls` may allow at once.
pub const MAX_CONCURRENT_POLLS: usize = 1_000_000;

impl HumanDuration {
    fn bounded<E: de::Error>(duration: Duration) -> Result<Self, E> {
        if duration > MAX_DURATION {
            return Err(E::custom(format!(
                "{} is longer than polld supports (100 years)",
                humantime::format_duration(duration)
            )));
        }
        Ok(HumanDuration(duration))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"10m\", \"1h 30m\", or whole seconds")
            }
            fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Self::Value, E> {
                HumanDuration::bounded(Duration::from_secs(seconds))
            }
            fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Self::Value, E> {
                let seconds = u64::try_from(seconds)
                    .map_err(|_| E::custom("a duration cannot be negative"))?;
                HumanDuration::bounded(Duration::from_secs(seconds))
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                humantime::parse_duration(text)
                    .map_err(|e| E::custom(format!("invalid duration {text:?}: {e}")))
                    .and_then(HumanDuration::bounded)
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{Sink, SinkFailure, SinkType};
    use async_trait::async_trait;
    use polld_backend::{Backend, Cursor, PollError, PollOutcome, Poller, Refusal};
    use std::sync::Arc;

    /// A backend with one key of its own, to test how poller tables are split.
    struct Dummy;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DummyKeys {
        #[serde(default)]
        branches: Vec<String>,
    }

    struct DummyPoller;

    #[async_trait]
    impl Poller for DummyPoller {
        async fn poll(&self, _: Option<&Cursor>) -> Result<PollOutcome, PollError> {
            Ok(PollOutcome::Unchanged)
        }
        fn describe(&self) -> String {
            String::new()
        }
    }

    impl Backend for Dummy {
        const TYPE: &'static str = "dummy";
        type Config = DummyKeys;
        fn build(&self, _: PollerContext, keys: DummyKeys) -> Result<Arc<dyn Poller>, Refusal> {
            if keys.branches.iter().any(|b| b.is_empty()) {
                return Err(Refusal::at("branches", "empty branch name"));
            }
            Ok(Arc::new(DummyPoller))
        }
    }

    /// A sink type with one key, to test how `[sink]` is checked.
    struct FileSink;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FileSinkKeys {
        path: PathBuf,
    }

    struct NoSink;

    #[async_trait]
    impl Sink for NoSink {
        async fn deliver(&self, _: &[crate::model::Change]) -> Result<(), SinkFailure> {
            Ok(())
        }
    }

    impl SinkType for FileSink {
        const TYPE: &'static str = "file";
        type Config = FileSinkKeys;
        fn check(&self, _: &SinkContext, keys: &FileSinkKeys) -> Result<(), Refusal> {
            if keys.path == Path::new("/dev/null") {
                return Err(Refusal::at("path", "path /dev/null is not a regular file"));
            }
            Ok(())
        }
        fn open(&self, _: &SinkContext, _: FileSinkKeys) -> Result<Arc<dyn Sink>, String> {
            Ok(Arc::new(NoSink))
        }
    }

    fn plugins() -> Plugins {
        let mut plugins = Plugins::default();
        plugins.backends.register(Dummy);
        plugins.sinks.register(FileSink);
        plugins
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("/etc/polld/pollers.toml"), text, &plugins())
    }

    /// The `line:col: message` part of an error.
    fn error_at(text: &str) -> String {
        match load_text(text) {
            Ok(_) => panic!("config should be rejected:\n{text}"),
            Err(error) => {
                let shown = error.to_string();
                shown
                    .strip_prefix("/etc/polld/pollers.toml:")
                    .unwrap_or(&shown)
                    .to_owned()
            }
        }
    }

    #[test]
    fn defaults_apply_and_pollers_override_them() {
        let config = load_text(
            r#"
[daemon]
state_dir = "state"
[defaults]
interval = "1m"
jitter = 5
[sink]
type = "file"
path = "out/changes.jsonl"
[[poller]]
name = "a"
type = "dummy"
repo = "https://u:p@host/a.git"
branches = ["main"]
[[poller]]
name = "b.2"
type = "dummy"
repo = "/srv/b"
interval = "1h 30m"
at_launch = false
category = "push"
properties = { team = "core", n = 3 }
"#,
        )
        .unwrap();
        assert_eq!(config.daemon.state_dir, PathBuf::from("/etc/polld/state"));
        assert_eq!(config.daemon.max_concurrent_polls, 32);
        assert_eq!(config.sink.type_name, "file");
        assert_eq!(config.sink.keys["path"].as_str(), Some("out/changes.jsonl"));
        let (a, b) = (&config.pollers[0], &config.pollers[1]);
        assert_eq!(a.timing.interval, Duration::from_secs(60));
        assert_eq!(a.timing.jitter, Duration::from_secs(5));
        assert!(a.timing.at_launch);
        assert_eq!(a.display_repo(), "https://host/a.git");
        assert_eq!(b.timing.interval, Duration::from_secs(5400));
        assert!(!b.timing.at_launch);
        assert_eq!(b.category.as_deref(), Some("push"));
        assert_eq!(b.properties["n"], 3);
        assert_eq!(b.vcs, "dummy");
    }

    #[test]
    fn ca_file_is_read_relative_to_the_config_and_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("key.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let text = |defaults: &str, own: &str| {
            format!(
                "[defaults]\n{defaults}\n[[poller]]\nname = \"a\"\ntype = \"dummy\"\n\
                 repo = \"/r\"\n{own}\n"
            )
        };
        let load = |text: &str| parse(&dir.path().join("pollers.toml"), text, &plugins());
        let config = load(&text("ca_file = \"ca.pem\"", "")).unwrap();
        assert_eq!(config.pollers[0].ca_file, Some(dir.path().join("ca.pem")));
        assert_eq!(
            config.pollers[0].context().ca_file,
            Some(dir.path().join("ca.pem"))
        );
        let own = load(&text("", "ca_file = \"ca.pem\"")).unwrap();
        assert_eq!(own.pollers[0].ca_file, Some(dir.path().join("ca.pem")));
        assert_eq!(load(&text("", "")).unwrap().pollers[0].ca_file, None);
        for (file, needle) in [
            ("missing.pem", "cannot read"),
            ("key.pem", "no PEM certificate"),
        ] {
            let error = load(&text("", &format!("ca_file = \"{file}\"")))
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(":7:11: ca_file:") && error.contains(needle),
                "{error}"
            );
        }
    }

    #[test]
    fn a_reload_diff_compares_by_value() {
        let base = "[[poller]]\nname = \"a\"\ntype = \"dummy\"\nrepo = \"/r\"\n\
                    [[poller]]\nname = \"b\"\ntype = \"dummy\"\nrepo = \"/r\"\n";
        let old = load_text(base).unwrap();
        let same = load_text(base).unwrap();
        let diff = super::diff(&old, &same);
        assert_eq!(diff.unchanged, ["a", "b"]);
        assert!(diff.added.is_empty() && diff.changed.is_empty() && diff.removed.is_empty());

        let new = load_text(
            "[[poller]]\nname = \"a\"\ntype = \"dummy\"\nrepo = \"/r\"\nbranches = [\"x\"]\n\
             [[poller]]\nname = \"c\"\ntype = \"dummy\"\nrepo = \"/r\"\n\
             [sink]\ntype = \"file\"\npath = \"x\"\n",
        )
        .unwrap();
        let diff = super::diff(&old, &new);
        let names =
            |list: &[&PollerConfig]| list.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&diff.changed), ["a"]);
        assert_eq!(names(&diff.added), ["c"]);
        assert_eq!(diff.removed, ["b"]);
        assert!(diff.sink_changed && !diff.daemon_changed);
    }

    #[test]
    fn an_empty_file_is_a_config_with_no_pollers() {
        let config = load_text("").unwrap();
        assert!(config.pollers.is_empty());
        assert_eq!(config.sink.type_name, "stdout");
    }

    #[test]
    fn hooks_name_where_each_forges_secret_is() {
        let config = load_text(
            "[daemon]\nlisten = \"127.0.0.1:9150\"\n[hooks]\ngithub_secret_env = \"GH\"\nbitbucket_secret_file = \"bb.secret\"\n",
        )
        .unwrap();
        assert_eq!(
            config.hooks.forges,
            [
                ("github", SecretSource::Env("GH".into())),
                (
                    "bitbucket",
                    SecretSource::File(PathBuf::from("/etc/polld/bb.secret"))
                ),
            ]
        );
        assert!(load_text("").unwrap().hooks.forges.is_empty());
        let listen = "[daemon]\nlisten = \"127.0.0.1:9150\"\n";
        for (text, expected) in [
            (
                format!("{listen}[hooks]\ngithub_secret = \"x\"\n"),
                "4:1: unknown field `github_secret`",
            ),
            (
                format!("{listen}[hooks]\ngitlab_token_env = \"A\"\ngitlab_token_file = \"b\"\n"),
                "5:21: set gitlab_token_env or gitlab_token_file, not both",
            ),
            (
                format!("{listen}[hooks]\ngitea_secret_env = \"\"\n"),
                "4:20: gitea_secret_env must name a variable",
            ),
            (format!("{listen}[hooks]\n"), "[hooks] configures no forge"),
            (
                "[hooks]\ngithub_secret_env = \"GH\"\n".to_owned(),
                "[hooks] are served on the control endpoint: set [daemon] listen",
            ),
        ] {
            let error = error_at(&text);
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn hook_secrets_are_read_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(SecretSource::File(file.clone()).read().unwrap(), b"s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(
            SecretSource::File(file)
                .read()
                .unwrap_err()
                .contains("is empty")
        );
        let missing = SecretSource::Env("POLLD_TEST_NO_SUCH_VARIABLE".into());
        assert!(missing.read().unwrap_err().contains("is not set"));
    }

    #[test]
    fn every_error_names_line_and_column() {
        let poller = "[[poller]]\nname = \"a\"\ntype = \"dummy\"\nrepo = \"/r\"\n";
        let cases: Vec<(String, &str)> = vec![
            ("x = [1,\n".into(), "1:8: unclosed array"),
            ("[deamon]\n".into(), "1:2: unknown field `deamon`"),
            (
                "[daemon]\nmax_concurrent_polls = 0\n".into(),
                "2:24: max_concurrent_polls",
            ),
            (
                "[daemon]\nlisten = \"nope\"\n".into(),
                "2:10: listen must be",
            ),
            (
                "[sink]\ntype = \"carrier-pigeon\"\n".into(),
                "2:8: unknown sink type `carrier-pigeon`; known: file",
            ),
            (
                "[sink]\ntype = \"file\"\npath = \"x\"\nfsync = true\n".into(),
                "4:1: unknown field `fsync`",
            ),
            (
                format!("{poller}intervall = \"1m\"\n"),
                "5:1: unknown field `intervall`",
            ),
            (
                format!("{poller}branches = [\"\"]\n"),
                "5:12: poller `a`: empty branch name",
            ),
            (
                format!("{poller}{poller}"),
                "6:8: duplicate poller name `a`",
            ),
            (
                format!("{poller}interval = \"1m\"\njitter = \"1m\"\n"),
                "6:10: poller `a`: jitter (1m) must be less than interval (1m)",
            ),
            (
                format!("[defaults]\njitter = \"20m\"\n{poller}"),
                "2:10: poller `a`: jitter (20m)",
            ),
            (
                format!("{poller}interval = 0\n"),
                "5:12: poller `a`: interval must be greater than zero",
            ),
            (
                format!("{poller}interval = -5\n"),
                "5:12: a duration cannot be negative",
            ),
            (
                format!("{poller}interval = \"soon\"\n"),
                "5:12: invalid duration \"soon\"",
            ),
            (
                format!("{poller}interval = 9000000000000\n"),
                "5:12: 285192years 9months 14days 16h 57m 36s is longer than polld supports",
            ),
            (
                format!("{poller}interval = \"101y\"\n"),
                "5:12: 101years is longer than polld supports",
            ),
            (
                "[sink]\ntype = \"file\"\npath = \"/dev/null\"\n".into(),
                "3:8: [sink]: path /dev/null is not a regular file",
            ),
            (
                "[daemon]\nmax_concurrent_polls = 9000000000000000000\n".into(),
                "2:24: max_concurrent_polls must be at most 1000000",
            ),
            (
                format!("{poller}jitter = \"1s\"\njitter_min = \"2s\"\n"),
                "6:14: poller `a`: jitter_min (2s) must not exceed jitter (1s)",
            ),
            (
                "[[poller]]\nname = \"a/b\"\ntype = \"dummy\"\nrepo = \"/r\"\n".into(),
                "2:8: invalid poller name \"a/b\"",
            ),
            (
                "[[poller]]\nname = \"..\"\ntype = \"dummy\"\nrepo = \"/r\"\n".into(),
                "2:8: invalid poller name",
            ),
            (
                "[[poller]]\nname = \"a b\"\ntype = \"dummy\"\nrepo = \"/r\"\n".into(),
                "2:8: invalid poller name",
            ),
            (
                "[[poller]]\nname = \"a\"\ntype = \"cvs\"\nrepo = \"/r\"\n".into(),
                "3:8: unknown poller type `cvs`; known: dummy",
            ),
            (
                "[[poller]]\nname = \"a\"\ntype = \"dummy\"\nrepo = \"-oProxyCommand=x\"\n".into(),
                "4:8: repo must not start with `-`",
            ),
            (
                "[[poller]]\nname = \"a\"\ntype = \"dummy\"\n".into(),
                "1:1: missing field `repo`",
            ),
            (
                "poller = 3\n".into(),
                "1:10: `poller` must be an array of tables",
            ),
        ];
        let mut wrong = Vec::new();
        for (text, expected) in cases {
            let error = error_at(&text);
            let has_position = error
                .split(':')
                .take(2)
                .all(|n| n.trim().parse::<usize>().is_ok());
            let matches = error.starts_with(expected)
                || (!expected.contains(':') && error.contains(expected));
            if !(matches && has_position) {
                wrong.push(format!(
                    "config:\n{text}expected `{expected}`, got `{error}`"
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = load(Path::new("/nonexistent/pollers.toml"), &Plugins::default())
            .err()
            .unwrap();
        assert!(
            error.to_string().starts_with("/nonexistent/pollers.toml: "),
            "{error}"
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é = x", 5), (1, 5));
        assert_eq!(line_column("", 0), (1, 1));
    }
}
