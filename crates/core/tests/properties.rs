//! Property tests of `polld_core::config::parse`.
//!
//! - Any text (arbitrary strings, TOML-shaped soup, valid configs with bytes changed)
//!   is parsed without a panic, and every error reads `file:line:col: message` with the
//!   position inside the text.
//! - A generated valid config (any names from the allowed alphabet, durations written
//!   as strings or seconds, any Unicode in strings, keys in any order, comments and
//!   spacing anywhere) parses and keeps every value, `[defaults]` applied.
//! - The same config with one key renamed to an unknown one is refused at that key's
//!   line and column, whenever removing the key would leave the config valid.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use polld_backend::{Backend, Cursor, PollError, PollOutcome, Poller, PollerContext, Refusal};
use polld_core::Plugins;
use polld_core::config::{Config, ConfigError, DaemonConfig, HumanDuration, Timing, parse};
use polld_sinks::buildbot::BuildbotConfig;
use polld_sinks::jsonl::JsonlConfig;
use polld_sinks::webhook::WebhookConfig;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde::Deserialize;
use serde_json::{Map, Value, json};

const FILE: &str = "/etc/polld/pollers.toml";

// ---------------------------------------------------------------------------------
// A backend that shows what it was given.
// ---------------------------------------------------------------------------------

struct Dummy;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DummyKeys {
    #[serde(default)]
    branches: Vec<String>,
}

/// Its `describe()` is everything the backend received, as JSON.
struct DummyPoller(String);

#[async_trait]
impl Poller for DummyPoller {
    async fn poll(&self, _: Option<&Cursor>) -> Result<PollOutcome, PollError> {
        Ok(PollOutcome::Unchanged)
    }
    fn describe(&self) -> String {
        self.0.clone()
    }
}

impl Backend for Dummy {
    const TYPE: &'static str = "dummy";
    type Config = DummyKeys;
    fn build(&self, context: PollerContext, keys: DummyKeys) -> Result<Arc<dyn Poller>, Refusal> {
        if keys.branches.iter().any(String::is_empty) {
            return Err(Refusal::at("branches", "empty branch name"));
        }
        Ok(Arc::new(DummyPoller(received(
            &context.name,
            &context.repo,
            &context.config_dir,
            &context.mirror_dir,
            &keys.branches,
        ))))
    }
}

fn received(
    name: &str,
    repo: &str,
    config_dir: &Path,
    mirror_dir: &Path,
    branches: &[String],
) -> String {
    json!({
        "name": name,
        "repo": repo,
        "config_dir": config_dir,
        "mirror_dir": mirror_dir,
        "branches": branches,
    })
    .to_string()
}

fn plugins() -> Plugins {
    let mut plugins = Plugins::default();
    plugins.backends.register(Dummy);
    plugins.sinks.register(polld_sinks::Stdout);
    plugins.sinks.register(polld_sinks::Jsonl);
    plugins.sinks.register(polld_sinks::Buildbot);
    plugins.sinks.register(polld_sinks::Webhook);
    plugins
}

fn load(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new(FILE), text, &plugins())
}

/// A sink's keys as its own config type reads them.
fn sink_keys<T: serde::de::DeserializeOwned>(config: &Config) -> T {
    T::deserialize(toml::Value::Table(config.sink.keys.clone())).unwrap()
}

/// Every error names the file, a line and a column inside `text`, and a message.
fn check_error(text: &str, error: &ConfigError) -> Result<(usize, usize), TestCaseError> {
    let ConfigError::Invalid {
        path,
        line,
        column,
        message,
    } = error
    else {
        return Err(TestCaseError::fail(format!(
            "parse made a read error: {error}"
        )));
    };
    prop_assert_eq!(path, FILE);
    let lines: Vec<&str> = text.split('\n').collect();
    prop_assert!(
        (1..=lines.len()).contains(line),
        "line {line} of {} lines: {error}",
        lines.len()
    );
    let width = lines[line - 1].chars().count();
    prop_assert!(
        (1..=width + 1).contains(column),
        "column {column} of a {width}-character line: {error}"
    );
    prop_assert!(!message.is_empty(), "no message: {error}");
    prop_assert_eq!(
        error.to_string(),
        format!("{FILE}:{line}:{column}: {message}")
    );
    Ok((*line, *column))
}

// ---------------------------------------------------------------------------------
// Generated configs, and their text with every key's position.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Dur {
    seconds: u64,
    /// 0: integer seconds; 1: humantime (`1h 30m`); 2: `<n>s`.
    form: u8,
}

#[derive(Debug, Clone, Default)]
struct TimingModel {
    interval: Option<Dur>,
    jitter: Option<Dur>,
    jitter_min: Option<Dur>,
    at_launch: Option<bool>,
}

#[derive(Debug, Clone, Default)]
struct DaemonModel {
    state_dir: Option<String>,
    max_concurrent_polls: Option<u32>,
    listen: Option<String>,
    token_env: Option<String>,
    shutdown_grace: Option<Dur>,
}

#[derive(Debug, Clone)]
enum SinkModel {
    Stdout,
    Jsonl {
        path: String,
    },
    Buildbot {
        url: String,
        username: Option<String>,
        password_env: Option<String>,
        timeout: Option<Dur>,
    },
    Webhook {
        url: String,
        secret_env: Option<String>,
        headers: BTreeMap<String, String>,
        timeout: Option<Dur>,
    },
}

#[derive(Debug, Clone)]
enum Prop {
    Text(String),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct PollerModel {
    name: String,
    repo: String,
    timing: TimingModel,
    project: Option<String>,
    category: Option<String>,
    codebase: Option<String>,
    revlink: Option<String>,
    properties: Option<BTreeMap<String, Prop>>,
    branches: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct Model {
    daemon: Option<DaemonModel>,
    defaults: Option<TimingModel>,
    sink: Option<SinkModel>,
    pollers: Vec<PollerModel>,
    /// Drives the layout: table and key order, spacing, comments, string forms.
    seed: u64,
}

fn text(max: usize) -> impl Strategy<Value = String> {
    let char = prop_oneof![
        3 => prop::char::range('a', 'z'),
        2 => prop::sample::select(vec![
            '"', '\'', '\\', '\n', '\r', '\t', '\0', '\u{7f}', '\u{1b}', '#', '=', '[', ']',
            '{', '}', ' ', 'é', '\u{1F600}', '\u{FEFF}', '\u{2028}', '.', ',',
        ]),
        1 => any::<char>(),
    ];
    prop::collection::vec(char, 0..max).prop_map(|chars| chars.into_iter().collect())
}

/// An environment variable name.
fn env_name() -> impl Strategy<Value = String> {
    "[A-Z_][A-Z0-9_]{0,12}"
}

fn duration() -> impl Strategy<Value = Dur> {
    (
        prop_oneof![0u64..120, 0u64..100_000, 0u64..10_000_000],
        0u8..3,
    )
        .prop_map(|(seconds, form)| Dur { seconds, form })
}

/// A sink's request timeout: zero is refused.
fn positive_duration() -> impl Strategy<Value = Dur> {
    duration().prop_map(|d| Dur {
        seconds: d.seconds.max(1),
        ..d
    })
}

fn timing() -> impl Strategy<Value = TimingModel> {
    (
        prop::option::of(duration()),
        prop::option::of(duration()),
        prop::option::of(duration()),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|(interval, jitter, jitter_min, at_launch)| TimingModel {
            interval,
            jitter,
            jitter_min,
            at_launch,
        })
}

fn daemon() -> impl Strategy<Value = DaemonModel> {
    (
        prop::option::of(text(12)),
        prop::option::of(1u32..100_000),
        prop::option::of((
            prop::sample::select(vec!["127.0.0.1", "[::1]", "127.9.8.7", "0.0.0.0", "[::]"]),
            any::<u16>(),
        )),
        prop::option::of(env_name()),
        prop::option::of(duration()),
    )
        .prop_map(|(state_dir, max, listen, token_env, shutdown_grace)| {
            let listen = listen.map(|(host, port)| format!("{host}:{port}"));
            // Off loopback the POST endpoints need a token.
            let open = listen
                .as_deref()
                .is_some_and(|l| l.starts_with("0.0.0.0") || l.starts_with("[::]"));
            DaemonModel {
                state_dir,
                max_concurrent_polls: max,
                token_env: if open {
                    Some(token_env.unwrap_or_else(|| "TOKEN".into()))
                } else {
                    token_env
                },
                listen,
                shutdown_grace,
            }
        })
}

fn sink() -> impl Strategy<Value = SinkModel> {
    let url = prop::sample::select(vec![
        "http://127.0.0.1:8010/change_hook/base",
        "https://ci.example/hook?x=1",
        "http://[::1]/h",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        Just(SinkModel::Stdout),
        text(16).prop_map(|path| SinkModel::Jsonl { path }),
        (
            url.clone(),
            prop::option::of(text(8)),
            prop::option::of(env_name()),
            prop::option::of(positive_duration())
        )
            .prop_map(
                |(url, username, password_env, timeout)| SinkModel::Buildbot {
                    url,
                    // A password needs a user.
                    password_env: password_env.filter(|_| username.is_some()),
                    username,
                    timeout,
                }
            ),
        (
            url,
            prop::option::of(env_name()),
            prop::collection::btree_map("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,12}", 0..3),
            prop::option::of(positive_duration())
        )
            .prop_map(|(url, secret_env, headers, timeout)| SinkModel::Webhook {
                url,
                secret_env,
                // Header names are case-insensitive: one spelling each.
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned()))
                    .collect(),
                timeout,
            }),
    ]
}

fn poller_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9_.-]{0,11}"
}

fn poller() -> impl Strategy<Value = PollerModel> {
    let prop_value = prop_oneof![
        text(10).prop_map(Prop::Text),
        any::<i64>().prop_map(Prop::Int),
        any::<bool>().prop_map(Prop::Bool),
    ];
    (
        poller_name(),
        text(20).prop_filter("a usable repo", |r| {
            !r.trim().is_empty() && !r.starts_with('-') && !r.chars().any(char::is_control)
        }),
        timing(),
        (
            prop::option::of(text(10)),
            prop::option::of(text(10)),
            prop::option::of(text(10)),
            prop::option::of(text(10)),
        ),
        prop::option::of(prop::collection::btree_map(text(6), prop_value, 0..4)),
        prop::option::of(prop::collection::vec(
            text(8).prop_filter("not empty", |b| !b.is_empty()),
            0..3,
        )),
    )
        .prop_map(
            |(name, repo, timing, (project, category, codebase, revlink), properties, branches)| {
                PollerModel {
                    name,
                    repo,
                    timing,
                    project,
                    category,
                    codebase,
                    revlink,
                    properties,
                    branches,
                }
            },
        )
}

/// The timing a poller ends up with, `[defaults]` applied.
fn effective(own: &TimingModel, defaults: &TimingModel) -> (u64, u64, u64, bool) {
    let pick = |own: Option<Dur>, default: Option<Dur>, fallback| {
        own.or(default).map_or(fallback, |d| d.seconds)
    };
    (
        pick(own.interval, defaults.interval, 600),
        pick(own.jitter, defaults.jitter, 0),
        pick(own.jitter_min, defaults.jitter_min, 0),
        own.at_launch.or(defaults.at_launch).unwrap_or(true),
    )
}

fn model() -> impl Strategy<Value = Model> {
    (
        prop::option::of(daemon()),
        prop::option::of(timing()),
        prop::option::of(sink()),
        prop::collection::vec(poller(), 0..4),
        any::<u64>(),
    )
        .prop_map(|(daemon, defaults, sink, mut pollers, seed)| {
            // Unique names.
            let mut seen = std::collections::BTreeSet::new();
            pollers.retain(|p| seen.insert(p.name.clone()));
            // Valid timing: where the generated one is not, the poller sets its own.
            let no_defaults = TimingModel::default();
            let defaults_ref = defaults.as_ref().unwrap_or(&no_defaults);
            for p in &mut pollers {
                let (interval, jitter, jitter_min, _) = effective(&p.timing, defaults_ref);
                if interval == 0 || jitter >= interval {
                    p.timing.interval = Some(Dur {
                        seconds: jitter + 1 + interval,
                        form: (seed % 3) as u8,
                    });
                }
                if jitter_min > jitter {
                    p.timing.jitter_min = Some(Dur {
                        seconds: jitter,
                        form: (seed % 3) as u8,
                    });
                }
            }
            Model {
                daemon,
                defaults,
                sink,
                pollers,
                seed: seed | 1,
            }
        })
}

struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % sides
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.roll(n) == 0
    }
}

/// A TOML string for `value`: basic (escaped) or, when it can be, literal.
fn toml_string(value: &str, dice: &mut Dice) -> String {
    let literal_ok = !value
        .chars()
        .any(|c| c == '\'' || (c.is_control() && c != '\t'));
    if literal_ok && dice.one_in(3) {
        return format!("'{value}'");
    }
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' if dice.one_in(2) => out.push_str("\\t"),
            c if c.is_control() && c != '\t' => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c if dice.one_in(12) => {
                let _ = write!(out, "\\U{:08X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_duration(d: Dur) -> String {
    match d.form {
        0 => d.seconds.to_string(),
        1 => format!(
            "\"{}\"",
            humantime::format_duration(Duration::from_secs(d.seconds))
        ),
        _ => format!("\"{}s\"", d.seconds),
    }
}

/// One line of the written config: a key (with where it starts) or anything else.
#[derive(Debug, Clone)]
struct Line {
    indent: String,
    /// The key as written, or empty for a line that is not a key.
    key: String,
    /// Everything after the key: ` = value # comment`, or the whole line.
    rest: String,
    /// The index of the line of the key's table header (`[sink]`, `[[poller]]`, ...).
    table: usize,
}

impl Line {
    fn other(text: String) -> Line {
        Line {
            indent: String::new(),
            key: String::new(),
            rest: text,
            table: 0,
        }
    }
    fn text(&self) -> String {
        format!("{}{}{}", self.indent, self.key, self.rest)
    }
}

fn join(lines: &[Line]) -> String {
    lines.iter().map(|l| l.text() + "\n").collect()
}

/// Writes `model` as TOML, one key per line.
fn write(model: &Model) -> Vec<Line> {
    let mut dice = Dice(model.seed);
    let mut tables: Vec<(String, Vec<(String, String)>)> = Vec::new();
    if let Some(d) = &model.daemon {
        let mut keys = Vec::new();
        if let Some(v) = &d.state_dir {
            keys.push(("state_dir".into(), toml_string(v, &mut dice)));
        }
        if let Some(v) = d.max_concurrent_polls {
            keys.push(("max_concurrent_polls".into(), v.to_string()));
        }
        if let Some(v) = &d.listen {
            keys.push(("listen".into(), toml_string(v, &mut dice)));
        }
        if let Some(v) = &d.token_env {
            keys.push(("token_env".into(), toml_string(v, &mut dice)));
        }
        if let Some(v) = d.shutdown_grace {
            keys.push(("shutdown_grace".into(), toml_duration(v)));
        }
        tables.push(("[daemon]".into(), keys));
    }
    if let Some(t) = &model.defaults {
        tables.push(("[defaults]".into(), timing_keys(t)));
    }
    if let Some(sink) = &model.sink {
        let mut keys = Vec::new();
        let mut opt = |keys: &mut Vec<(String, String)>, key: &str, v: &Option<String>| {
            if let Some(v) = v {
                keys.push((key.to_owned(), toml_string(v, &mut dice)));
            }
        };
        match sink {
            SinkModel::Stdout => keys.push(("type".into(), "\"stdout\"".into())),
            SinkModel::Jsonl { path } => {
                keys.push(("type".into(), "\"jsonl\"".into()));
                opt(&mut keys, "path", &Some(path.clone()));
            }
            SinkModel::Buildbot {
                url,
                username,
                password_env,
                timeout,
            } => {
                keys.push(("type".into(), "\"buildbot\"".into()));
                opt(&mut keys, "url", &Some(url.clone()));
                opt(&mut keys, "username", username);
                opt(&mut keys, "password_env", password_env);
                if let Some(t) = timeout {
                    keys.push(("timeout".into(), toml_duration(*t)));
                }
            }
            SinkModel::Webhook {
                url,
                secret_env,
                headers,
                timeout,
            } => {
                keys.push(("type".into(), "\"webhook\"".into()));
                opt(&mut keys, "url", &Some(url.clone()));
                opt(&mut keys, "secret_env", secret_env);
                if !headers.is_empty() || dice.one_in(2) {
                    let inner: Vec<String> = headers
                        .iter()
                        .map(|(k, v)| {
                            format!(
                                "{} = {}",
                                toml_string(k, &mut dice),
                                toml_string(v, &mut dice)
                            )
                        })
                        .collect();
                    keys.push(("headers".into(), format!("{{ {} }}", inner.join(", "))));
                }
                if let Some(t) = timeout {
                    keys.push(("timeout".into(), toml_duration(*t)));
                }
            }
        }
        tables.push(("[sink]".into(), keys));
    }
    for p in &model.pollers {
        let mut keys = vec![
            ("name".to_owned(), toml_string(&p.name, &mut dice)),
            ("type".to_owned(), "\"dummy\"".to_owned()),
            ("repo".to_owned(), toml_string(&p.repo, &mut dice)),
        ];
        keys.extend(timing_keys(&p.timing));
        for (key, value) in [
            ("project", &p.project),
            ("category", &p.category),
            ("codebase", &p.codebase),
            ("revlink", &p.revlink),
        ] {
            if let Some(v) = value {
                keys.push((key.to_owned(), toml_string(v, &mut dice)));
            }
        }
        if let Some(properties) = &p.properties {
            let inner: Vec<String> = properties
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Prop::Text(t) => toml_string(t, &mut dice),
                        Prop::Int(i) => i.to_string(),
                        Prop::Bool(b) => b.to_string(),
                    };
                    format!("{} = {value}", toml_string(k, &mut dice))
                })
                .collect();
            keys.push(("properties".into(), format!("{{ {} }}", inner.join(", "))));
        }
        if let Some(branches) = &p.branches {
            let items: Vec<String> = branches.iter().map(|b| toml_string(b, &mut dice)).collect();
            keys.push(("branches".into(), format!("[{}]", items.join(", "))));
        }
        tables.push(("[[poller]]".into(), keys));
    }

    // Top-level tables in any order; [[poller]] tables keep theirs (it is the order of
    // `config.pollers`).
    let mut order: Vec<usize> = (0..tables.len()).collect();
    for i in (1..order.len()).rev() {
        let j = dice.roll(i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let pollers: Vec<usize> = (0..tables.len())
        .filter(|&i| tables[i].0 == "[[poller]]")
        .collect();
    let mut next_poller = pollers.into_iter();
    let mut lines = Vec::new();
    if dice.one_in(3) {
        lines.push(Line::other("# polld's config".into()));
    }
    for i in order {
        let i = if tables[i].0 == "[[poller]]" {
            next_poller.next().unwrap()
        } else {
            i
        };
        let (header, keys) = &tables[i];
        if dice.one_in(2) {
            lines.push(Line::other(String::new()));
        }
        let header = if dice.one_in(4) {
            format!("{header}  # a comment")
        } else {
            header.clone()
        };
        let table = lines.len();
        lines.push(Line::other(header));
        let mut keys = keys.clone();
        for k in (1..keys.len()).rev() {
            let j = dice.roll(k as u64 + 1) as usize;
            keys.swap(k, j);
        }
        for (key, value) in keys {
            let indent = ["", "", "  ", "\t"][dice.roll(4) as usize];
            let before = [" ", "", "   "][dice.roll(3) as usize];
            let after = [" ", "", "\t"][dice.roll(3) as usize];
            let comment = if dice.one_in(5) { " # é = [x" } else { "" };
            lines.push(Line {
                indent: indent.into(),
                key,
                rest: format!("{before}={after}{value}{comment}"),
                table,
            });
            if dice.one_in(8) {
                lines.push(Line::other("   # between keys".into()));
            }
        }
    }
    lines
}

fn timing_keys(t: &TimingModel) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for (key, value) in [
        ("interval", t.interval),
        ("jitter", t.jitter),
        ("jitter_min", t.jitter_min),
    ] {
        if let Some(d) = value {
            keys.push((key.to_owned(), toml_duration(d)));
        }
    }
    if let Some(b) = t.at_launch {
        keys.push(("at_launch".into(), b.to_string()));
    }
    keys
}

/// What `parse` must make of `model`.
fn check_config(model: &Model, config: &Config) -> Result<(), TestCaseError> {
    let dir = Path::new("/etc/polld");
    prop_assert_eq!(&config.path, Path::new(FILE));
    let secs =
        |d: Option<Dur>, fallback: u64| Duration::from_secs(d.map_or(fallback, |d| d.seconds));
    let d = model.daemon.clone().unwrap_or_default();
    let max_concurrent_polls = d.max_concurrent_polls.map_or(32, |n| n as usize);
    let daemon = DaemonConfig {
        state_dir: dir.join(d.state_dir.as_deref().unwrap_or(".polld")),
        max_concurrent_polls,
        max_polls_per_host: (max_concurrent_polls / 2).max(1),
        listen: d.listen.as_deref().map(|l| l.parse().unwrap()),
        token_env: d.token_env.clone(),
        shutdown_grace: secs(d.shutdown_grace, 10),
    };
    prop_assert_eq!(&config.daemon, &daemon);
    let human = |d: &Option<Dur>| d.map(|d| HumanDuration(Duration::from_secs(d.seconds)));
    match &model.sink {
        None | Some(SinkModel::Stdout) => {
            prop_assert_eq!(&config.sink.type_name, "stdout");
            prop_assert!(config.sink.keys.is_empty());
        }
        Some(SinkModel::Jsonl { path }) => {
            prop_assert_eq!(&config.sink.type_name, "jsonl");
            prop_assert_eq!(
                sink_keys::<JsonlConfig>(config),
                JsonlConfig { path: path.into() }
            );
        }
        Some(SinkModel::Buildbot {
            url,
            username,
            password_env,
            timeout,
        }) => {
            prop_assert_eq!(&config.sink.type_name, "buildbot");
            prop_assert_eq!(
                sink_keys::<BuildbotConfig>(config),
                BuildbotConfig {
                    url: url.clone(),
                    username: username.clone(),
                    password_env: password_env.clone(),
                    timeout: human(timeout),
                    ca_file: None,
                }
            );
        }
        Some(SinkModel::Webhook {
            url,
            secret_env,
            headers,
            timeout,
        }) => {
            prop_assert_eq!(&config.sink.type_name, "webhook");
            prop_assert_eq!(
                sink_keys::<WebhookConfig>(config),
                WebhookConfig {
                    url: url.clone(),
                    secret_env: secret_env.clone(),
                    headers: headers.clone(),
                    timeout: human(timeout),
                    ca_file: None,
                }
            );
        }
    }
    prop_assert_eq!(&config.sink.context.config_dir, dir);

    prop_assert_eq!(config.pollers.len(), model.pollers.len());
    let defaults = model.defaults.clone().unwrap_or_default();
    for (got, want) in config.pollers.iter().zip(&model.pollers) {
        prop_assert_eq!(&got.name, &want.name);
        prop_assert_eq!(got.vcs, "dummy");
        prop_assert_eq!(&got.repo, &want.repo);
        let (interval, jitter, jitter_min, at_launch) = effective(&want.timing, &defaults);
        prop_assert_eq!(
            got.timing,
            Timing {
                interval: Duration::from_secs(interval),
                jitter: Duration::from_secs(jitter),
                jitter_min: Duration::from_secs(jitter_min),
                at_launch,
            }
        );
        prop_assert_eq!(&got.project, want.project.as_deref().unwrap_or_default());
        prop_assert_eq!(&got.category, &want.category);
        prop_assert_eq!(&got.codebase, want.codebase.as_deref().unwrap_or_default());
        prop_assert_eq!(&got.revlink, &want.revlink);
        let properties: Map<String, Value> = want
            .properties
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    Prop::Text(t) => Value::String(t),
                    Prop::Int(i) => json!(i),
                    Prop::Bool(b) => Value::Bool(b),
                };
                (k, v)
            })
            .collect();
        prop_assert_eq!(&got.properties, &properties);
        let built = plugins().backends.build(got).unwrap();
        prop_assert_eq!(
            built.describe(),
            received(
                &want.name,
                &want.repo,
                dir,
                &daemon.state_dir.join("mirrors").join(&want.name),
                want.branches.as_deref().unwrap_or_default(),
            )
        );
    }
    Ok(())
}

/// Bytes from pieces of TOML and of polld's config, in any order.
fn soup() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        6 => prop::sample::select(vec![
            "[[poller]]\n", "[daemon]\n", "[defaults]\n", "[sink]\n", "name = \"a\"\n",
            "type = \"dummy\"\n", "repo = \"/r\"\n", "interval = ", "jitter = ", "jitter_min = ",
            "\"1m\"", "\"10s\"", "0", "-1", "1e400", "9223372036854775808", "\"soon\"", "\n",
            "=", "\"", "'", "'''", "\"\"\"", "[", "]", "{", "}", ",", ".", " ", "\t", "\r\n",
            "# c\n", "é", "\u{FEFF}", "\0", "\\u00", "\\", "type = \"jsonl\"\n", "path = ",
            "listen = \"0.0.0.0:1\"\n", "max_concurrent_polls = 0\n", "properties = { a = [",
            "branches = [\"\"]\n", "poller = 3\n", "[poller]\n", "[[sink]]\n", "true", "1979-05-27",
            "a.b.c = 1\n", "x", "\u{2028}", "inf", "nan",
        ]).prop_map(str::to_owned),
        1 => any::<String>(),
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|pieces| pieces.concat())
}

fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("POLLD_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 5000,
        // Nothing is written into the source tree; a failure prints its input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// (a) Arbitrary text never panics, and an error has a position inside it.
    #[test]
    fn arbitrary_text_errors_have_positions(text in prop_oneof![any::<String>(), soup()]) {
        if let Err(error) = load(&text) {
            check_error(&text, &error)?;
        }
    }

    /// (a) A valid config with a few characters changed, inserted or removed: no
    /// panic, and an error has a position inside the text.
    #[test]
    fn mutated_configs_errors_have_positions(
        model in model(),
        edits in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(vec![
                '"', '\'', '=', '[', ']', '\n', ' ', '#', '0', 'x', '\\', '{', '}', ',', '.', '\0', 'é',
            ]), 0u8..3),
            1..5,
        ),
    ) {
        let mut chars: Vec<char> = join(&write(&model)).chars().collect();
        for (at, c, kind) in edits {
            let i = at.index(chars.len() + 1);
            match kind {
                0 if i < chars.len() => chars[i] = c,
                1 => chars.insert(i, c),
                _ if i < chars.len() => {
                    chars.remove(i);
                }
                _ => {}
            }
        }
        let text: String = chars.into_iter().collect();
        if let Err(error) = load(&text) {
            check_error(&text, &error)?;
        }
    }

    /// (b) A generated valid config parses and keeps every value.
    #[test]
    fn valid_configs_keep_every_value(model in model()) {
        let text = join(&write(&model));
        match load(&text) {
            Ok(config) => check_config(&model, &config)?,
            Err(error) => {
                return Err(TestCaseError::fail(format!("refused: {error}\n{text}")));
            }
        }
    }

    /// (c) One key renamed to an unknown one: refused at that key, whenever the config
    /// without the key is valid (a required key's absence is reported first).
    #[test]
    fn a_renamed_key_is_reported_where_it_is(model in model(), pick in any::<prop::sample::Index>()) {
        renamed_key(&model, pick)?;
    }

    /// (c) An unknown key added to any table (`[sink]` with `type = "stdout"` too) is
    /// refused at that key.
    #[test]
    fn an_added_key_is_reported_where_it_is(model in model(), pick in any::<prop::sample::Index>()) {
        added_key(&model, pick)?;
    }
}

/// Refuses `lines` with `at`'s key unknown, at that key.
fn check_unknown_key(lines: &[Line], at: usize) -> Result<(), TestCaseError> {
    let text = join(lines);
    let key = &lines[at];
    let error = match load(&text) {
        Ok(_) => {
            return Err(TestCaseError::fail(format!(
                "accepted an unknown key:\n{text}"
            )));
        }
        Err(error) => error,
    };
    let found = check_error(&text, &error)?;
    let exact = (at + 1, key.indent.chars().count() + 1);
    prop_assert!(
        found == exact,
        "{} should point at `{}` ({}:{}):\n{}",
        error,
        key.key,
        exact.0,
        exact.1,
        text
    );
    prop_assert!(error.to_string().contains(&key.key), "{error}");
    Ok(())
}

fn renamed_key(model: &Model, pick: prop::sample::Index) -> Result<(), TestCaseError> {
    let lines = write(model);
    let keys: Vec<usize> = (0..lines.len())
        .filter(|&i| !lines[i].key.is_empty())
        .collect();
    prop_assume!(!keys.is_empty());
    // From the picked key on, the first one the config can do without.
    let first = pick.index(keys.len());
    let optional = (0..keys.len())
        .map(|k| keys[(first + k) % keys.len()])
        .find(|&at| {
            let mut without = lines.clone();
            without.remove(at);
            load(&join(&without)).is_ok()
        });
    prop_assume!(optional.is_some(), "every key is required");
    let at = optional.unwrap();
    let mut renamed = lines;
    renamed[at].key.push_str("_typo");
    check_unknown_key(&renamed, at)
}

fn added_key(model: &Model, pick: prop::sample::Index) -> Result<(), TestCaseError> {
    let mut lines = write(model);
    let tables: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].rest.starts_with('['))
        .collect();
    prop_assume!(!tables.is_empty());
    let table = *pick.get(&tables);
    let at = table + 1;
    lines.insert(
        at,
        Line {
            indent: "  ".into(),
            key: "surprise".into(),
            rest: " = 1".into(),
            table,
        },
    );
    // Keys after the insertion moved down a line.
    for line in lines.iter_mut().skip(at + 1) {
        if !line.key.is_empty() && line.table >= at {
            line.table += 1;
        }
    }
    check_unknown_key(&lines, at)
}
