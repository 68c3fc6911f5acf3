//! Property tests of what the svn backend makes of the `svn` client's output.
//!
//! The real poller is driven (`SvnBackend::build` + `poll`) with a fake `svn` first on
//! PATH: a shell script that prints a prepared file for `svn info` and another for
//! `svn log`, and records its arguments. The properties:
//!
//! - a generated `svn log --xml` document (any revisions ascending, any Unicode text
//!   with XML's special characters escaped in any of the ways XML allows, optional
//!   fields missing, unknown elements, comments, CDATA) comes back as exactly those
//!   changes, and the cursor advances to `svn info`'s revision;
//! - any truncation of a valid `info` or `log` document fails the poll;
//! - arbitrary bytes (and valid documents with bytes mutated) never panic, never hang,
//!   and never advance the cursor from garbage;
//! - a `<!DOCTYPE>` declaring entities is ignored, and a reference to a declared entity
//!   is rejected, never expanded.
//!
//! This binary changes PATH (once, before the first poll), so it holds only these
//! tests; a mutex serialises them, because they share the fake's files.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use polld_backend::{Backend, Cursor, NewChange, PollError, PollOutcome, Poller, PollerContext};
use polld_svn::{SvnBackend, SvnConfig};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;
use tempfile::TempDir;

/// One poll may take this long before the property fails (the fake answers in ms).
const POLL_LIMIT: Duration = Duration::from_secs(20);
const URL: &str = "file:///srv/fake%20repo";

// ---------------------------------------------------------------------------------
// The fake svn and the poller it serves.
// ---------------------------------------------------------------------------------

struct Fake {
    dir: TempDir,
    poller: Arc<dyn Poller>,
    runtime: tokio::runtime::Runtime,
}

impl Fake {
    fn info_file(&self) -> PathBuf {
        self.dir.path().join("info.out")
    }
    fn log_file(&self) -> PathBuf {
        self.dir.path().join("log.out")
    }
    fn args_file(&self, command: &str) -> PathBuf {
        self.dir.path().join(format!("args.{command}"))
    }

    /// Serves `info` and `log`, polls once from `cursor`; `Err` if the poll did not
    /// finish within [`POLL_LIMIT`].
    fn poll(
        &self,
        info: &[u8],
        log: &[u8],
        cursor: Option<u64>,
    ) -> Result<Result<PollOutcome, PollError>, TestCaseError> {
        std::fs::write(self.info_file(), info).unwrap();
        std::fs::write(self.log_file(), log).unwrap();
        for command in ["info", "log"] {
            let _ = std::fs::remove_file(self.args_file(command));
        }
        let cursor = cursor.map(|revision| Cursor(json!({ "revision": revision })));
        let started = Instant::now();
        let result = self.runtime.block_on(async {
            tokio::time::timeout(POLL_LIMIT, self.poller.poll(cursor.as_ref())).await
        });
        match result {
            Ok(outcome) => Ok(outcome),
            Err(_) => Err(TestCaseError::fail(format!(
                "poll did not finish within {:?}",
                started.elapsed()
            ))),
        }
    }

    /// The arguments of the last `svn log` run, if there was one.
    fn log_args(&self) -> Option<Vec<String>> {
        std::fs::read_to_string(self.args_file("log"))
            .ok()
            .map(|text| text.lines().map(str::to_owned).collect())
    }
}

/// The one fake, made on first use; the guard serialises the tests that use it.
fn fake() -> MutexGuard<'static, Fake> {
    static FAKE: OnceLock<Mutex<Fake>> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("svn");
        let d = dir.path().display();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 printf '%s\\n' \"$@\" > '{d}/args.'\"$1\"\n\
                 case \"$1\" in\n\
                 info) exec cat '{d}/info.out' ;;\n\
                 log) exec cat '{d}/log.out' ;;\n\
                 esac\n\
                 echo \"fake svn: unexpected command $1\" >&2\n\
                 exit 3\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        // SAFETY: set once, inside this OnceLock, before any poll of this binary (the
        // only code here that starts processes) runs; the binary holds only the tests
        // below, which all come through here first.
        unsafe { std::env::set_var("PATH", path) };
        let poller = SvnBackend::new()
            .build(
                PollerContext {
                    timeout: Duration::from_secs(15),
                    ..PollerContext::new("p", URL, dir.path(), dir.path())
                },
                SvnConfig::default(),
            )
            .unwrap_or_else(|e| panic!("build: {e}"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Mutex::new(Fake {
            dir,
            poller,
            runtime,
        })
    })
    .lock()
    // A failed case panics while holding the guard; the fake is still usable.
    .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------
// Generated documents.
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    revision: u64,
    author: Option<String>,
    /// Unix seconds and microseconds.
    date: Option<(u64, u32)>,
    message: Option<String>,
    /// Repository-absolute.
    paths: Vec<String>,
}

/// How a document is written: everything XML allows svn (or a proxy) to vary.
#[derive(Debug, Clone)]
struct Style {
    /// Drives the per-character and per-element choices.
    seed: u64,
    decl: bool,
    /// Whitespace between elements.
    separator: &'static str,
}

#[derive(Debug, Clone)]
struct Scenario {
    /// The stored cursor.
    base: u64,
    entries: Vec<Entry>,
    /// `svn info`'s last changed revision: the last entry's, or later.
    last_changed: u64,
    youngest: u64,
    style: Style,
}

/// A small deterministic generator for the writer's choices.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % sides
    }
    fn one_in(&mut self, n: u64) -> bool {
        self.roll(n) == 0
    }
}

/// Characters XML 1.0 allows in a document (the `Char` production).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Any XML character, often one of those the writer has to escape.
fn xml_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec![
            '&', '<', '>', '"', '\'', ']', '\r', '\n', '\t', ' ', ';', '#', '/', '%', '?', '!',
            'é', '\u{1F600}', '\u{FFFD}', '\u{85}', '\u{2028}',
        ]),
        2 => any::<char>().prop_filter("an XML character", |c| is_xml_char(*c)),
        2 => prop::char::range('a', 'z'),
    ]
}

fn xml_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(xml_char(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

fn path() -> impl Strategy<Value = String> {
    let segment = prop::collection::vec(xml_char().prop_filter("no slash", |c| *c != '/'), 1..8)
        .prop_map(|chars| chars.into_iter().collect::<String>());
    (prop::collection::vec(segment, 1..4), any::<bool>()).prop_map(|(segments, slash)| {
        format!("/{}{}", segments.join("/"), if slash { "/" } else { "" })
    })
}

fn entry_fields() -> impl Strategy<Value = Entry> {
    (
        prop::option::of(xml_string(12)),
        prop::option::of((0u64..=253_402_300_799, 0u32..1_000_000)),
        prop::option::of(xml_string(40)),
        prop::collection::vec(path(), 0..5),
    )
        .prop_map(|(author, date, message, paths)| Entry {
            revision: 0,
            author,
            date,
            message,
            paths,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (
        0u64..1_000_000,
        prop::collection::vec((1u64..1000, entry_fields()), 0..8),
        0u64..3,
        0u64..3,
        any::<u64>(),
        any::<bool>(),
        prop::sample::select(vec!["", "\n", " ", "\r\n", "\n   \t"]),
    )
        .prop_map(
            |(base, raw, extra_last, extra_young, seed, decl, separator)| {
                let mut revision = base;
                let entries: Vec<Entry> = raw
                    .into_iter()
                    .map(|(step, mut entry)| {
                        revision += step;
                        entry.revision = revision;
                        entry
                    })
                    .collect();
                // The URL changed at least once since the cursor.
                let last_changed = revision.max(base + 1) + extra_last;
                Scenario {
                    base,
                    entries,
                    last_changed,
                    youngest: last_changed + extra_young,
                    style: Style {
                        seed: seed | 1,
                        decl,
                        separator,
                    },
                }
            },
        )
}

/// Text content, escaped in one of the ways XML allows.
fn write_text(out: &mut String, text: &str, dice: &mut Dice) {
    // CDATA keeps everything but `]]>`, and a CR (which XML turns into LF).
    if !text.contains("]]>") && !text.contains('\r') && dice.one_in(4) {
        let cut = text
            .char_indices()
            .map(|(i, _)| i)
            .nth(dice.roll(text.chars().count() as u64 + 1) as usize)
            .unwrap_or(text.len());
        // Two sections (and a reference between them, sometimes): still one text.
        out.push_str("<![CDATA[");
        out.push_str(&text[..cut]);
        out.push_str("]]>");
        if dice.one_in(2) {
            out.push_str("<!-- split -->");
        }
        out.push_str("<![CDATA[");
        out.push_str(&text[cut..]);
        out.push_str("]]>");
        return;
    }
    for c in text.chars() {
        escape_char(out, c, false, dice);
    }
}

fn escape_char(out: &mut String, c: char, attribute: bool, dice: &mut Dice) {
    match dice.roll(6) {
        0 => {
            let _ = write!(out, "&#{};", c as u32);
            return;
        }
        1 => {
            let _ = write!(out, "&#x{:X};", c as u32);
            return;
        }
        _ => {}
    }
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str(if dice.one_in(2) { "&gt;" } else { "&#62;" }),
        '"' if attribute => out.push_str("&quot;"),
        '\'' if attribute => out.push_str("&apos;"),
        '\r' => out.push_str("&#13;"),
        // Raw, these would be normalised to spaces in an attribute value.
        '\n' | '\t' if attribute => {
            let _ = write!(out, "&#{};", c as u32);
        }
        c => out.push(c),
    }
}

fn attribute(out: &mut String, name: &str, value: &str, dice: &mut Dice) {
    let quote = if dice.one_in(2) { '"' } else { '\'' };
    let around = if dice.one_in(4) { " " } else { "" };
    let _ = write!(out, "\n   {name}{around}={around}{quote}");
    for c in value.chars() {
        escape_char(out, c, true, dice);
    }
    out.push(quote);
}

/// `<name>text</name>`, or `<name/>` for an empty text, sometimes.
fn element(out: &mut String, name: &str, text: &str, dice: &mut Dice) {
    if text.is_empty() && dice.one_in(2) {
        let _ = write!(out, "<{name}/>");
        return;
    }
    let _ = write!(out, "<{name}>");
    write_text(out, text, dice);
    let _ = write!(out, "</{name}>");
}

fn rfc3339(seconds: u64, micros: u32) -> String {
    let time = UNIX_EPOCH + Duration::new(seconds, micros * 1000);
    humantime::format_rfc3339_micros(time).to_string()
}

/// What `svn info --xml URL@` prints.
fn info_xml(s: &Scenario, doctype: &str) -> String {
    let mut dice = Dice(s.style.seed ^ 0x1f0);
    let sep = s.style.separator;
    let mut out = String::new();
    if s.style.decl {
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    }
    out.push_str(doctype);
    let _ = write!(out, "<info>{sep}<entry");
    attribute(&mut out, "path", ".", &mut dice);
    attribute(&mut out, "revision", &s.youngest.to_string(), &mut dice);
    attribute(&mut out, "kind", "dir", &mut dice);
    let _ = write!(out, ">{sep}");
    element(&mut out, "url", URL, &mut dice);
    out.push_str(sep);
    element(&mut out, "relative-url", "^/", &mut dice);
    let _ = write!(out, "{sep}<repository>{sep}");
    element(&mut out, "root", URL, &mut dice);
    out.push_str(sep);
    element(
        &mut out,
        "uuid",
        "3b578b9f-3329-49bd-9908-91a8eaef7b15",
        &mut dice,
    );
    let _ = write!(out, "{sep}</repository>{sep}<commit");
    attribute(&mut out, "revision", &s.last_changed.to_string(), &mut dice);
    let _ = write!(out, ">{sep}");
    element(&mut out, "author", "ada", &mut dice);
    let _ = writeln!(out, "{sep}</commit>{sep}</entry>{sep}</info>");
    out
}

/// What `svn log --xml --verbose` prints for the scenario's entries; `reference` is
/// written raw into the first entry's message (an entity reference for the DOCTYPE
/// property).
fn log_xml(s: &Scenario, doctype: &str, reference: Option<&str>) -> String {
    let mut dice = Dice(s.style.seed);
    let sep = s.style.separator;
    let mut out = String::new();
    if s.style.decl {
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    }
    out.push_str(doctype);
    let _ = write!(out, "<log>{sep}");
    for (i, entry) in s.entries.iter().enumerate() {
        out.push_str("<logentry");
        attribute(&mut out, "revision", &entry.revision.to_string(), &mut dice);
        let _ = write!(out, ">{sep}");
        if dice.one_in(5) {
            let _ = write!(
                out,
                "<!-- a comment -->{sep}<revprops><property name=\"x\">y &amp; z</property></revprops>{sep}"
            );
        }
        if let Some(author) = &entry.author {
            element(&mut out, "author", author, &mut dice);
            out.push_str(sep);
        }
        if let Some((seconds, micros)) = entry.date {
            element(&mut out, "date", &rfc3339(seconds, micros), &mut dice);
            out.push_str(sep);
        }
        if !entry.paths.is_empty() || dice.one_in(2) {
            if entry.paths.is_empty() && dice.one_in(2) {
                out.push_str("<paths/>");
            } else {
                let _ = write!(out, "<paths>{sep}");
                for path in &entry.paths {
                    out.push_str("<path");
                    attribute(&mut out, "action", "M", &mut dice);
                    if dice.one_in(3) {
                        attribute(&mut out, "copyfrom-path", path, &mut dice);
                        attribute(&mut out, "copyfrom-rev", "1", &mut dice);
                    }
                    attribute(&mut out, "kind", "file", &mut dice);
                    out.push('>');
                    write_text(&mut out, path, &mut dice);
                    let _ = write!(out, "</path>{sep}");
                }
                out.push_str("</paths>");
            }
            out.push_str(sep);
        }
        match (&entry.message, reference.filter(|_| i == 0)) {
            (_, Some(reference)) => {
                let _ = write!(out, "<msg>x{reference}y</msg>{sep}");
            }
            (Some(message), None) => {
                element(&mut out, "msg", message, &mut dice);
                out.push_str(sep);
            }
            (None, None) => {}
        }
        let _ = write!(out, "</logentry>{sep}");
    }
    out.push_str("</log>\n");
    out
}

/// The changes the poller should report for the scenario's entries (default split:
/// everything on trunk, the file is the path below the polled URL).
fn expected_changes(s: &Scenario) -> Vec<(NewChange, bool)> {
    let mut out = Vec::new();
    for entry in &s.entries {
        let mut files: Vec<String> = Vec::new();
        for path in &entry.paths {
            let relative = path.strip_prefix('/').unwrap().trim_end_matches('/');
            if !relative.is_empty() && !files.iter().any(|f| f == relative) {
                files.push(relative.to_owned());
            }
        }
        if files.is_empty() {
            continue;
        }
        let change = NewChange {
            branch: None,
            revision: entry.revision.to_string(),
            author: entry
                .author
                .clone()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "unknown".into()),
            committer: None,
            comments: entry
                .message
                .as_deref()
                .unwrap_or_default()
                .trim_end()
                .to_owned(),
            files,
            files_total: None,
            when_timestamp: entry.date.map_or(0, |(seconds, _)| seconds as i64),
            project: None,
        };
        // Without a date the poll time is used: compared separately.
        out.push((change, entry.date.is_none()));
    }
    out
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Whatever the output was, the poll ended (checked by `Fake::poll`) and, when it
/// advanced, it advanced to a revision `svn info` could have said and reported only
/// revisions after the cursor and up to that one.
fn check_sane(
    outcome: &Result<PollOutcome, PollError>,
    base: u64,
) -> Result<Option<u64>, TestCaseError> {
    let Ok(PollOutcome::Advanced { cursor, changes }) = outcome else {
        return Ok(None);
    };
    let revision = cursor.0["revision"]
        .as_u64()
        .ok_or_else(|| TestCaseError::fail(format!("cursor {cursor:?}")))?;
    prop_assert!(revision != base, "advanced to the cursor's own revision");
    for change in changes {
        let r: u64 = change
            .revision
            .parse()
            .map_err(|_| TestCaseError::fail(format!("revision {:?}", change.revision)))?;
        prop_assert!(
            r > base && r <= revision,
            "change r{r} outside {base}..={revision}"
        );
        prop_assert!(!change.files.is_empty());
    }
    Ok(Some(revision))
}

/// The end of the root element's closing tag: cutting anywhere before it truncates.
fn end_of_root(document: &str, root: &str) -> usize {
    document.rfind(&format!("</{root}>")).unwrap() + root.len() + 3
}

/// `cases` per property; `POLLD_PROPTEST_CASES` overrides it for a longer hunt.
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("POLLD_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        // Shrinking re-polls; keep a failure's report quick.
        max_shrink_iters: 2000,
        // Nothing is written into the source tree; a failure prints its input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(192))]

    /// (a) Generated log entries come back as exactly the changes they describe, from
    /// one `svn log` of exactly the revisions after the cursor.
    #[test]
    fn generated_logs_round_trip(s in scenario()) {
        let fake = fake();
        let before = now();
        let outcome = fake
            .poll(info_xml(&s, "").as_bytes(), log_xml(&s, "", None).as_bytes(), Some(s.base))?
            .map_err(|e| TestCaseError::fail(format!("poll failed: {e}")))?;
        let after = now();
        let PollOutcome::Advanced { cursor, changes } = outcome else {
            return Err(TestCaseError::fail("the URL changed: the poll must advance"));
        };
        prop_assert_eq!(cursor.0, json!({ "revision": s.last_changed }));
        let expected = expected_changes(&s);
        prop_assert_eq!(changes.len(), expected.len());
        for (got, (want, dateless)) in changes.iter().zip(&expected) {
            if *dateless {
                prop_assert!(
                    (before..=after).contains(&got.when_timestamp),
                    "a dateless revision gets the poll time, not {}", got.when_timestamp
                );
                let got = NewChange { when_timestamp: 0, ..got.clone() };
                prop_assert_eq!(&got, want);
            } else {
                prop_assert_eq!(got, want);
            }
        }
        let args = fake.log_args().expect("svn log ran");
        let range = format!("{}:{}", s.base + 1, s.last_changed);
        prop_assert!(args.windows(2).any(|w| w[0] == "--revision" && w[1] == range), "{args:?}");
        prop_assert_eq!(args.last().unwrap(), &format!("{URL}@{}", s.youngest));
        prop_assert!(args.contains(&"--xml".to_owned()));
    }

    /// (a) The cursor's own revision ends the poll after `svn info`: no `svn log`.
    #[test]
    fn an_unchanged_url_is_unchanged(s in scenario()) {
        let fake = fake();
        let outcome = fake
            .poll(info_xml(&s, "").as_bytes(), b"", Some(s.last_changed))?
            .map_err(|e| TestCaseError::fail(format!("poll failed: {e}")))?;
        prop_assert_eq!(outcome, PollOutcome::Unchanged);
        prop_assert!(fake.log_args().is_none(), "svn log ran for an unchanged URL");
    }

    /// (b) Any truncation of a valid log or info document fails the poll: never a
    /// shorter log, never an advanced cursor.
    #[test]
    fn truncated_output_fails_the_poll(
        s in scenario(),
        cut in any::<prop::sample::Index>(),
        in_info in prop::bool::weighted(0.25),
    ) {
        let fake = fake();
        let info = info_xml(&s, "");
        let log = log_xml(&s, "", None);
        let (info, log) = if in_info {
            let end = end_of_root(&info, "info");
            (info.as_bytes()[..cut.index(end)].to_vec(), log.into_bytes())
        } else {
            let end = end_of_root(&log, "log");
            (info.into_bytes(), log.as_bytes()[..cut.index(end)].to_vec())
        };
        let outcome = fake.poll(&info, &log, Some(s.base))?;
        prop_assert!(outcome.is_err(), "truncated output was accepted: {outcome:?}");
    }

    /// (c) Arbitrary bytes from `svn info` or `svn log` never panic and never advance
    /// the cursor.
    #[test]
    fn arbitrary_bytes_are_an_error(
        s in scenario(),
        garbage in prop::collection::vec(any::<u8>(), 0..2000),
        in_info in any::<bool>(),
    ) {
        let fake = fake();
        let info = info_xml(&s, "");
        let outcome = if in_info {
            fake.poll(&garbage, b"", Some(s.base))?
        } else {
            fake.poll(info.as_bytes(), &garbage, Some(s.base))?
        };
        check_sane(&outcome, s.base)?;
        let root: &[u8] = if in_info { b"<info" } else { b"<log" };
        if !garbage.windows(root.len()).any(|w| w == root) {
            prop_assert!(outcome.is_err(), "garbage was accepted: {outcome:?}");
        }
    }

    /// (c) XML-shaped soup (tags, references, CDATA, declarations in any order) never
    /// panics; whatever it is read as stays inside the revision range.
    #[test]
    fn xml_soup_never_panics(
        s in scenario(),
        pieces in prop::collection::vec(prop::sample::select(vec![
            "<log>", "</log>", "<logentry revision=\"", "</logentry>", "<msg>", "</msg>",
            "<author>", "</author>", "<date>", "2026-11-24T13:45:28Z", "</date>", "<paths>",
            "</paths>", "<path>", "</path>", "/trunk/a", "\">", "'>", "/>", "<", ">", "&",
            "&amp;", "&#", "&#x", ";", "&#0;", "&#xD800;", "&#1114112;", "&boom;", "<![CDATA[",
            "]]>", "<!--", "-->", "<?xml version=\"1.0\"?>", "<!DOCTYPE log [", "]>",
            "<!ENTITY boom \"x\">", "\"", "'", "=", " ", "\n", "\r", "\0", "é", "\u{FFFF}",
            "18446744073709551615", "18446744073709551616", "-1", "0", "5", "99999",
            "</", "<info>", "<entry revision=\"", "<commit revision=\"", "</commit>",
            "</entry>", "</info>", "<url>", "</url>", "<root>", "</root>", "file:///srv/x",
            "<repository>", "</repository>",
        ]), 0..60),
        in_info in any::<bool>(),
    ) {
        let fake = fake();
        let soup = pieces.concat();
        let info = info_xml(&s, "");
        let outcome = if in_info {
            fake.poll(soup.as_bytes(), log_xml(&s, "", None).as_bytes(), Some(s.base))?
        } else {
            fake.poll(info.as_bytes(), soup.as_bytes(), Some(s.base))?
        };
        if let Some(revision) = check_sane(&outcome, s.base)?
            && !in_info
        {
            prop_assert_eq!(revision, s.last_changed);
        }
    }

    /// (c) A valid document with a few bytes overwritten, inserted or removed never
    /// panics, and an accepted one stays inside the revision range.
    #[test]
    fn mutated_documents_never_panic(
        s in scenario(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        in_info in any::<bool>(),
    ) {
        let fake = fake();
        let mut info = info_xml(&s, "").into_bytes();
        let mut log = log_xml(&s, "", None).into_bytes();
        let target = if in_info { &mut info } else { &mut log };
        for (at, byte, kind) in edits {
            let i = at.index(target.len() + 1);
            match kind {
                0 if i < target.len() => target[i] = byte,
                1 => target.insert(i, byte),
                _ if i < target.len() => {
                    target.remove(i);
                }
                _ => {}
            }
        }
        let outcome = fake.poll(&info, &log, Some(s.base))?;
        check_sane(&outcome, s.base)?;
    }

    /// (d) A DOCTYPE's entity declarations are never used: without references the
    /// document reads as if it had none; a reference to a declared entity (plain,
    /// nested "billion laughs", external) fails the poll and never shows its text.
    #[test]
    fn doctype_entities_are_never_expanded(
        s in scenario(),
        which in 0usize..4,
        referenced in any::<bool>(),
        in_info in any::<bool>(),
    ) {
        let fake = fake();
        let root = if in_info { "info" } else { "log" };
        let doctype = format!(
            "<!DOCTYPE {root} [\n\
             <!ENTITY plain \"PWNED\">\n\
             <!ENTITY lol \"PWNEDPWNEDPWNEDPWNEDPWNEDPWNEDPWNEDPWNEDPWNEDPWNED\">\n\
             <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n\
             <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n\
             <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n\
             <!ENTITY xxe SYSTEM \"file:///etc/hostname\">\n\
             <!ENTITY % pe \"PWNED\">\n\
             ]>\n"
        );
        let entity = ["&plain;", "&lol3;", "&xxe;", "&lol;"][which];
        let mut s = s;
        if referenced && !in_info && s.entries.is_empty() {
            // Something to put the reference in.
            s.entries.push(Entry {
                revision: s.base + 1,
                author: None,
                date: Some((0, 0)),
                message: None,
                paths: vec!["/a".into()],
            });
            s.last_changed = s.last_changed.max(s.base + 1);
            s.youngest = s.youngest.max(s.last_changed);
        }
        let (info, log) = if in_info {
            let mut info = info_xml(&s, &doctype);
            if referenced {
                // In the author of the commit: text svn info's parser reads past.
                info = info.replacen("<commit", &format!("<x>{entity}</x><commit"), 1);
            }
            (info, log_xml(&s, "", None))
        } else {
            let reference = referenced.then_some(entity);
            (info_xml(&s, ""), log_xml(&s, &doctype, reference))
        };
        let outcome = fake.poll(info.as_bytes(), log.as_bytes(), Some(s.base))?;
        let shown = match &outcome {
            Ok(outcome) => format!("{outcome:?}"),
            Err(error) => error.to_string(),
        };
        prop_assert!(!shown.contains("PWNED"), "an entity was expanded: {shown}");
        if referenced {
            prop_assert!(outcome.is_err(), "a declared entity was accepted: {shown}");
            prop_assert!(shown.contains("undeclared entity"), "{shown}");
        } else {
            let Ok(PollOutcome::Advanced { cursor, .. }) = outcome else {
                return Err(TestCaseError::fail(format!("a DOCTYPE alone failed the poll: {shown}")));
            };
            prop_assert_eq!(cursor.0, json!({ "revision": s.last_changed }));
        }
    }
}
