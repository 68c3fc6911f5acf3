//! Property tests of what the hg backend makes of the `hg` client's output.
//!
//! The real poller is driven (`HgBackend::build` + `poll`, a local repo, so heads come
//! from `hg polld-heads`) with a fake `hg` first on PATH: a shell script that records
//! its arguments and prints a prepared file per command (`polld-heads`, the three `hg
//! log` templates, `hg status`). The properties:
//!
//! - generated heads listings (any branch and bookmark names, percent-encoded or raw,
//!   duplicate and unsorted heads) give a cursor of exactly the watched names' heads,
//!   pull exactly those heads, and the same listing again is `Unchanged`;
//! - a generated `hg log` walk (a chain of changesets on watched and other branches,
//!   merges, any text) comes back as exactly the changes it describes, oldest first;
//! - whatever bytes any command prints, the poll ends (bounded time) without a panic,
//!   an advanced cursor holds only full hashes, every reported revision is a full
//!   hash, and nothing but the fixed `polldnodes` revsets ever reaches hg.
//!
//! This binary changes PATH (once, before the first poll), so it holds only these
//! tests; a mutex serialises them, because they share the fake's files.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use polld_backend::{
    Backend, Cursor, NewChange, PollError, PollOutcome, Poller, PollerContext, StringList,
};
use polld_hg::{HgBackend, HgConfig};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use tempfile::TempDir;

/// One poll may take this long before the property fails (the fake answers in ms).
const POLL_LIMIT: Duration = Duration::from_secs(30);
const NULL_NODE: &str = "0000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------------
// The fake hg.
// ---------------------------------------------------------------------------------

/// What each command prints.
#[derive(Debug, Clone, Default)]
struct Outputs {
    heads: Vec<u8>,
    /// `hg log -T '{node}\n'`: which heads the mirror has.
    present: Vec<u8>,
    /// `hg log -T '{node} {ifcontains(...)}'`: old heads kept or gone.
    old: Vec<u8>,
    /// `hg log -T <the changeset template>`.
    log: Vec<u8>,
    /// `hg status --change N -amr -n -0`.
    status: Vec<u8>,
}

/// A poll's result, and the arguments of every hg run it made.
type Polled = (Result<PollOutcome, PollError>, Vec<Vec<String>>);

struct Fake {
    dir: TempDir,
    runtime: tokio::runtime::Runtime,
}

impl Fake {
    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A fresh poller (its own mirror directory) watching `config`'s names.
    fn poller(&self, config: HgConfig) -> Result<(Arc<dyn Poller>, TempDir), TestCaseError> {
        let state = tempfile::tempdir_in(self.dir.path()).unwrap();
        let poller = HgBackend::new()
            .build(
                PollerContext {
                    timeout: Duration::from_secs(20),
                    ..PollerContext::new("p", "/srv/fake-hg", state.path(), state.path())
                },
                config,
            )
            .map_err(|e| TestCaseError::fail(format!("build: {e}")))?;
        Ok((poller, state))
    }

    /// Serves `outputs` and polls once; `Err` if the poll did not end in time.
    fn poll(
        &self,
        poller: &dyn Poller,
        outputs: &Outputs,
        cursor: Option<&Cursor>,
    ) -> Result<Polled, TestCaseError> {
        for (name, bytes) in [
            ("heads.out", &outputs.heads),
            ("present.out", &outputs.present),
            ("old.out", &outputs.old),
            ("log.out", &outputs.log),
            ("status.out", &outputs.status),
        ] {
            std::fs::write(self.file(name), bytes).unwrap();
        }
        let _ = std::fs::remove_file(self.file("calls"));
        let started = Instant::now();
        let result = self
            .runtime
            .block_on(async { tokio::time::timeout(POLL_LIMIT, poller.poll(cursor)).await })
            .map_err(|_| {
                TestCaseError::fail(format!("poll did not end within {:?}", started.elapsed()))
            })?;
        let calls = std::fs::read_to_string(self.file("calls")).unwrap_or_default();
        let calls = calls
            .split("\u{1}end\n")
            .filter(|call| !call.is_empty())
            .map(|call| call.lines().map(str::to_owned).collect())
            .collect();
        Ok((result, calls))
    }
}

fn fake() -> MutexGuard<'static, Fake> {
    static FAKE: OnceLock<Mutex<Fake>> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = bin.join("hg");
        let d = dir.path().display();
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 printf '%s\\n' \"$@\" >> '{d}/calls'\n\
                 printf '\\001end\\n' >> '{d}/calls'\n\
                 case \"$1\" in\n\
                 polld-heads) exec cat '{d}/heads.out' ;;\n\
                 init) mkdir -p \"$3/.hg\" && : > \"$3/.hg/requires\"; exit 0 ;;\n\
                 pull) exit 0 ;;\n\
                 status) exec cat '{d}/status.out' ;;\n\
                 log)\n\
                   for last; do :; done\n\
                   case \"$last\" in\n\
                   *ifcontains*) exec cat '{d}/old.out' ;;\n\
                   *p1node*) exec cat '{d}/log.out' ;;\n\
                   *) exec cat '{d}/present.out' ;;\n\
                   esac ;;\n\
                 esac\n\
                 echo \"fake hg: unexpected command $1\" >&2\n\
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Mutex::new(Fake { dir, runtime })
    })
    .lock()
    // A failed case panics while holding the guard; the fake is still usable.
    .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------
// What must hold of any poll.
// ---------------------------------------------------------------------------------

fn is_node(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A revset made only of `polldnodes(<list>)` (the lists are files of checked hashes),
/// `::`, `-` and parentheses.
fn is_safe_revset(revset: &str) -> bool {
    let mut rest = revset.to_owned();
    for list in ["new", "known", "old", "present"] {
        rest = rest.replace(&format!("polldnodes({list})"), "");
    }
    rest.chars().all(|c| " :-()".contains(c))
}

/// The invariants of any poll, whatever hg printed (the poll ending in time is
/// checked by `Fake::poll`).
fn check_sane(
    outcome: &Result<PollOutcome, PollError>,
    calls: &[Vec<String>],
) -> Result<(), TestCaseError> {
    for call in calls {
        for pair in call.windows(2) {
            match (call[0].as_str(), pair[0].as_str()) {
                ("log", "-r") => prop_assert!(
                    is_safe_revset(&pair[1]),
                    "revset {:?} reached hg: {call:?}",
                    pair[1]
                ),
                ("pull", "-r") | ("status", "--change") => prop_assert!(
                    is_node(&pair[1]),
                    "{:?} reached hg as a revision: {call:?}",
                    pair[1]
                ),
                _ => {}
            }
        }
    }
    let Ok(PollOutcome::Advanced { cursor, changes }) = outcome else {
        return Ok(());
    };
    let object = cursor
        .0
        .as_object()
        .ok_or_else(|| TestCaseError::fail(format!("cursor {cursor:?}")))?;
    for (key, names) in object {
        let names = names
            .as_object()
            .ok_or_else(|| TestCaseError::fail(format!("cursor {cursor:?}")))?;
        for value in names.values() {
            let nodes: Vec<&Value> = match value {
                Value::Array(nodes) => nodes.iter().collect(),
                other => vec![other],
            };
            for node in nodes {
                prop_assert!(
                    node.as_str().is_some_and(is_node),
                    "cursor {key} holds {node}: {cursor:?}"
                );
            }
        }
    }
    for change in changes {
        prop_assert!(
            is_node(&change.revision),
            "a change for revision {:?}",
            change.revision
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Generators.
// ---------------------------------------------------------------------------------

fn node() -> impl Strategy<Value = String> {
    any::<[u8; 20]>().prop_map(|bytes| {
        bytes.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    })
}

/// A name hg and the config accept: not blank, no control character, no glob character.
fn name() -> impl Strategy<Value = String> {
    let char = prop_oneof![
        3 => prop::char::range('a', 'z'),
        2 => prop::sample::select(vec![' ', '%', '+', '/', '.', '-', '@', '\t', 'é', '\u{1F600}', '#', ':']),
        1 => any::<char>(),
    ];
    prop::collection::vec(char, 1..10)
        .prop_map(|chars| chars.into_iter().collect::<String>())
        .prop_filter("a valid name", |n| {
            !n.trim().is_empty()
                && !n.chars().any(char::is_control)
                && !n.contains(['*', '?', '[', '{'])
        })
}

/// Text hg prints in a NUL-terminated field: anything but NUL.
fn field_text(max: usize) -> impl Strategy<Value = String> {
    let char = prop_oneof![
        3 => prop::char::range('a', 'z'),
        2 => prop::sample::select(vec![' ', '\n', '\r', '\t', '<', '"', 'é', '\u{FFFD}']),
        1 => any::<char>(),
    ];
    prop::collection::vec(char, 0..max)
        .prop_map(|chars| chars.into_iter().filter(|c| *c != '\0').collect())
}

#[derive(Debug, Clone)]
struct Remote {
    /// Name → heads (may repeat, any order).
    branches: BTreeMap<String, Vec<String>>,
    bookmarks: BTreeMap<String, String>,
    /// Percent-encode every byte of a branch name, not only those that must be.
    encode_all: bool,
    /// Order of the branchmap lines.
    reversed: bool,
}

fn remote() -> impl Strategy<Value = Remote> {
    (
        prop::collection::btree_map(name(), prop::collection::vec(node(), 1..4), 0..5),
        prop::collection::btree_map(name(), node(), 0..5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(branches, bookmarks, encode_all, reversed)| Remote {
            branches: branches
                .into_iter()
                .map(|(name, mut heads)| {
                    // A head listed twice.
                    if heads.len() == 3 {
                        heads[2] = heads[0].clone();
                    }
                    (name, heads)
                })
                .collect(),
            bookmarks,
            encode_all,
            reversed,
        })
}

/// `hg polld-heads`' output for `remote`.
fn heads_output(remote: &Remote) -> Vec<u8> {
    let mut out = Vec::new();
    let mut lines: Vec<_> = remote.branches.iter().collect();
    if remote.reversed {
        lines.reverse();
    }
    for (name, heads) in lines {
        for byte in name.bytes() {
            // hg quotes with urllib: at least space, '%' and what is not ASCII.
            if remote.encode_all || !byte.is_ascii_graphic() || byte == b'%' {
                let _ = write!(PushFmt(&mut out), "%{byte:02X}");
            } else {
                out.push(byte);
            }
        }
        for head in heads {
            out.push(b' ');
            out.extend_from_slice(head.as_bytes());
        }
        out.push(b'\n');
    }
    out.push(0);
    for (name, node) in &remote.bookmarks {
        out.extend_from_slice(name.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(node.as_bytes());
        out.push(b'\n');
    }
    out
}

/// `write!` into a byte vector.
struct PushFmt<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for PushFmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A remote and a config watching some of its names and some it does not have.
fn watched() -> impl Strategy<Value = (Remote, Vec<String>, Vec<String>)> {
    (
        remote(),
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        prop::collection::vec(name(), 0..2),
        prop::collection::vec(name(), 0..2),
    )
        .prop_map(
            |(remote, pick_branches, pick_bookmarks, absent_b, absent_k)| {
                let pick =
                    |names: Vec<&String>, picks: &[prop::sample::Index], absent: Vec<String>| {
                        let mut out: Vec<String> = Vec::new();
                        if !names.is_empty() {
                            for index in picks {
                                out.push(index.get(&names).to_string());
                            }
                        }
                        out.extend(absent);
                        let mut seen = BTreeSet::new();
                        out.retain(|n| seen.insert(n.clone()));
                        out
                    };
                let branches = pick(remote.branches.keys().collect(), &pick_branches, absent_b);
                let bookmarks = pick(remote.bookmarks.keys().collect(), &pick_bookmarks, absent_k);
                (remote, branches, bookmarks)
            },
        )
        .prop_filter("watches something", |(_, branches, bookmarks)| {
            !branches.is_empty() || !bookmarks.is_empty()
        })
}

fn config(branches: Vec<String>, bookmarks: Vec<String>) -> HgConfig {
    HgConfig {
        branches: Some(StringList(branches)),
        bookmarks: StringList(bookmarks),
        ..HgConfig::default()
    }
}

/// One changeset of a generated walk.
#[derive(Debug, Clone)]
struct Changeset {
    node: String,
    on_default: bool,
    other_branch: String,
    author: String,
    seconds: i64,
    offset: i32,
    /// A second parent outside the walk (a merge with known history).
    p2: Option<String>,
    adds: Vec<String>,
    mods: Vec<String>,
    dels: Vec<String>,
    desc: String,
}

fn file_name() -> impl Strategy<Value = String> {
    field_text(8)
        .prop_map(|s| s.replace(['\n', '\r'], "_"))
        .prop_filter("not empty", |s| !s.is_empty())
}

fn changeset() -> impl Strategy<Value = Changeset> {
    (
        (node(), prop::bool::weighted(0.8), name(), field_text(16)),
        (any::<i64>(), -50_400i32..=50_400),
        prop::option::weighted(0.2, node()),
        (
            prop::collection::vec(file_name(), 0..3),
            prop::collection::vec(file_name(), 0..3),
            prop::collection::vec(file_name(), 0..3),
        ),
        field_text(40),
    )
        .prop_map(
            |(
                (node, on_default, other_branch, author),
                (seconds, offset),
                p2,
                (adds, mods, dels),
                desc,
            )| {
                Changeset {
                    node,
                    on_default,
                    other_branch,
                    author,
                    seconds,
                    offset,
                    p2,
                    adds,
                    mods,
                    dels,
                    desc,
                }
            },
        )
}

#[derive(Debug, Clone)]
struct Walk {
    /// The old head of `default`, parent of the first changeset.
    old_head: String,
    /// Oldest first; the last is `default`'s new head.
    chain: Vec<Changeset>,
    /// What `hg status` prints for a merge.
    merge_files: Vec<String>,
}

fn walk() -> impl Strategy<Value = Walk> {
    (
        node(),
        prop::collection::vec(changeset(), 1..6),
        prop::collection::vec(file_name(), 0..4),
    )
        .prop_map(|(old_head, mut chain, merge_files)| {
            // Distinct nodes, none of them the null node (shrinking makes zeros), the
            // old head and merge parents apart from them all.
            for (i, cs) in chain.iter_mut().enumerate() {
                cs.node.replace_range(..2, &format!("c{i}"));
                if let Some(p2) = &mut cs.p2 {
                    p2.replace_range(..2, "ee");
                }
            }
            chain.last_mut().unwrap().on_default = true;
            Walk {
                old_head: format!("ff{}", &old_head[2..]),
                chain,
                merge_files,
            }
        })
}

impl Changeset {
    fn branch(&self) -> &str {
        if self.on_default {
            "default"
        } else {
            &self.other_branch
        }
    }
}

/// `hg log -T <template>` for the walk, fields NUL-terminated as the template makes them.
fn log_output(walk: &Walk) -> Vec<u8> {
    let mut out = String::new();
    let mut parent = walk.old_head.as_str();
    for cs in &walk.chain {
        let fields = [
            cs.node.as_str(),
            cs.branch(),
            &cs.author,
            &format!("{} {}", cs.seconds, cs.offset),
            parent,
            cs.p2.as_deref().unwrap_or(NULL_NODE),
            &cs.adds.join("\n"),
            &cs.mods.join("\n"),
            &cs.dels.join("\n"),
            &cs.desc,
        ];
        for field in fields {
            out.push_str(field);
            out.push('\0');
        }
        parent = &cs.node;
    }
    out.into_bytes()
}

fn expected_changes(walk: &Walk) -> Vec<NewChange> {
    let mut merge_files = walk.merge_files.clone();
    merge_files.sort();
    walk.chain
        .iter()
        .filter(|cs| cs.on_default)
        .map(|cs| {
            let files = if cs.p2.is_some() {
                merge_files.clone()
            } else {
                let all: BTreeSet<String> = cs
                    .adds
                    .iter()
                    .chain(&cs.mods)
                    .chain(&cs.dels)
                    .cloned()
                    .collect();
                all.into_iter().collect()
            };
            NewChange {
                branch: Some("default".into()),
                revision: cs.node.clone(),
                author: cs.author.clone(),
                committer: None,
                comments: cs.desc.trim_end().to_owned(),
                files,
                files_total: None,
                when_timestamp: cs.seconds,
                project: None,
            }
        })
        .collect()
}

/// Bytes from pieces of what hg prints, in any order.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop_oneof![
        4 => prop::sample::select(vec![
            "default", "stable", " ", "\t", "\n", "\0", "\r", "%", "%20", "%ZZ", "%C3%A4",
            "kept", "gone", NULL_NODE, "1700000000 0", "-1 0", "x y", "id(0)", "::", "tip",
            "-r", "--config", "0000000000000000000000000000000000000001",
            "ffffffffffffffffffffffffffffffffffffffff",
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "é", "\u{FFFD}",
        ]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..8),
        1 => node().prop_map(String::into_bytes),
    ];
    prop::collection::vec(pieces, 0..40).prop_map(|pieces| pieces.concat())
}

fn garbage() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![soup(), prop::collection::vec(any::<u8>(), 0..600),]
}

/// A changeset listing of the right shape whose nodes and parents come from a pool of
/// real hashes and hostile values (non-hashes, revset syntax, the null node).
fn odd_log() -> impl Strategy<Value = String> {
    let heads = vec![HEAD.to_owned(), OLD.to_owned()];
    let hostile = [
        "",
        "x",
        "id(x)",
        "-r",
        "tip",
        NULL_NODE,
        "ffffffffffffffffffffffffffffffffffffffff",
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
    ]
    .map(str::to_owned)
    .to_vec();
    let hash = prop_oneof![prop::sample::select(heads), prop::sample::select(hostile)];
    let record = (
        hash.clone(),
        prop::sample::select(vec!["default", "default", "other", ""]),
        prop_oneof![9 => Just("1700000000 0"), 1 => Just("nan")],
        hash.clone(),
        hash,
        prop::sample::select(vec!["", "a", "a\nb"]),
    )
        .prop_map(|(node, branch, date, p1, p2, files)| {
            [
                node.as_str(),
                branch,
                "ada",
                date,
                &p1,
                &p2,
                files,
                "",
                "",
                "msg",
            ]
            .map(str::to_owned)
        });
    prop::collection::vec(record, 0..6).prop_map(|records| {
        let mut out = String::new();
        for field in records.iter().flatten() {
            out.push_str(field);
            out.push('\0');
        }
        out
    })
}

fn proptest_config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("POLLD_PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        max_shrink_iters: 2000,
        // Nothing is written into the source tree; a failure prints its input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn cursor_json(
    branches: &BTreeMap<String, Vec<String>>,
    bookmarks: &BTreeMap<String, String>,
) -> Cursor {
    Cursor(json!({ "branches": branches, "bookmarks": bookmarks }))
}

proptest! {
    #![proptest_config(proptest_config(128))]

    /// Heads listings: the first poll's cursor is exactly the watched names' heads
    /// (sorted, each once), exactly those are pulled, and the same listing is then
    /// `Unchanged` without touching the mirror.
    #[test]
    fn heads_round_trip((remote, branches, bookmarks) in watched()) {
        let fake = fake();
        let (poller, _state) = fake.poller(config(branches.clone(), bookmarks.clone()))?;
        let outputs = Outputs { heads: heads_output(&remote), ..Outputs::default() };
        let (outcome, calls) = fake.poll(&*poller, &outputs, None)?;
        check_sane(&outcome, &calls)?;
        let outcome = outcome.map_err(|e| TestCaseError::fail(format!("poll failed: {e}")))?;
        let PollOutcome::Advanced { cursor, changes } = outcome else {
            return Err(TestCaseError::fail("a first poll must advance"));
        };
        prop_assert!(changes.is_empty(), "a first poll reports nothing");

        let mut want_branches = BTreeMap::new();
        for name in &branches {
            if let Some(heads) = remote.branches.get(name) {
                let heads: BTreeSet<&String> = heads.iter().collect();
                want_branches.insert(name.clone(), heads.into_iter().cloned().collect::<Vec<_>>());
            }
        }
        let want_bookmarks: BTreeMap<String, String> = bookmarks
            .iter()
            .filter_map(|name| remote.bookmarks.get(name).map(|n| (name.clone(), n.clone())))
            .collect();
        prop_assert_eq!(&cursor, &cursor_json(&want_branches, &want_bookmarks));

        let wanted: BTreeSet<&String> = want_branches.values().flatten().chain(want_bookmarks.values()).collect();
        let pulled: BTreeSet<&String> = calls
            .iter()
            .filter(|call| call[0] == "pull")
            .flat_map(|call| call.windows(2).filter(|w| w[0] == "-r").map(|w| &w[1]))
            .collect();
        prop_assert_eq!(pulled, wanted);

        let (again, calls) = fake.poll(&*poller, &outputs, Some(&cursor))?;
        check_sane(&again, &calls)?;
        prop_assert_eq!(again.map_err(|e| e.to_string()), Ok(PollOutcome::Unchanged));
        let commands: Vec<&str> = calls.iter().map(|c| c[0].as_str()).collect();
        prop_assert_eq!(commands, ["polld-heads"], "an unchanged poll is one hg run");
    }

    /// A generated walk comes back as exactly its changes on the watched branch, oldest
    /// first, with merges listing what `hg status` says.
    #[test]
    fn walks_round_trip(walk in walk()) {
        let fake = fake();
        let (poller, _state) = fake.poller(HgConfig::default())?;
        let head = walk.chain.last().unwrap().node.clone();
        let outputs = Outputs {
            heads: format!("default {head}\n\0").into_bytes(),
            present: Vec::new(),
            old: format!("{} kept\n", walk.old_head).into_bytes(),
            log: log_output(&walk),
            status: walk.merge_files.iter().flat_map(|f| [f.as_bytes(), b"\0"].concat()).collect(),
        };
        let old = cursor_json(
            &BTreeMap::from([("default".to_owned(), vec![walk.old_head.clone()])]),
            &BTreeMap::new(),
        );
        let (outcome, calls) = fake.poll(&*poller, &outputs, Some(&old))?;
        check_sane(&outcome, &calls)?;
        let outcome = outcome.map_err(|e| TestCaseError::fail(format!("poll failed: {e}")))?;
        let PollOutcome::Advanced { cursor, changes } = outcome else {
            return Err(TestCaseError::fail("the head moved: the poll must advance"));
        };
        prop_assert_eq!(
            cursor,
            cursor_json(&BTreeMap::from([("default".to_owned(), vec![head])]), &BTreeMap::new())
        );
        prop_assert_eq!(changes, expected_changes(&walk));
    }

    /// Garbage heads listings, with or without a stored cursor: the poll ends, and
    /// what it accepts holds only full hashes.
    #[test]
    fn garbage_heads_are_never_trusted(
        heads in garbage(),
        previous in prop::option::of(remote()),
        later in garbage(),
    ) {
        let fake = fake();
        let (poller, _state) = fake.poller(config(
            vec!["default".into(), "stable".into(), "x y".into()],
            vec!["@".into(), "default".into()],
        ))?;
        let cursor = previous.map(|remote| {
            let branches: BTreeMap<String, Vec<String>> = remote
                .branches
                .into_iter()
                .map(|(name, heads)| {
                    let heads: BTreeSet<String> = heads.into_iter().collect();
                    (name, heads.into_iter().collect())
                })
                .collect();
            cursor_json(&branches, &remote.bookmarks)
        });
        let outputs = Outputs {
            heads,
            present: later.clone(),
            old: later.clone(),
            log: later.clone(),
            status: later,
        };
        let (outcome, calls) = fake.poll(&*poller, &outputs, cursor.as_ref())?;
        check_sane(&outcome, &calls)?;
    }

    /// Valid moved heads, then garbage from the mirror's `hg log`, `hg status`: the
    /// poll ends, reports only full hashes, and puts only full hashes in revsets.
    #[test]
    fn garbage_from_the_mirror_is_never_trusted(
        head in node(),
        old in garbage(),
        log in garbage(),
        status in garbage(),
        present in garbage(),
    ) {
        mirror_garbage(&head, old, log, status, present)?;
    }

    /// Well-formed changeset listings with odd nodes and parents (non-hashes, revset
    /// syntax, upper case, cycles): the poll ends, and only full hashes are reported or
    /// reach hg as revisions.
    #[test]
    fn odd_changeset_listings_are_never_trusted(log in odd_log(), old_heads in odd_old_heads()) {
        odd_listing(&log, old_heads)?;
    }
}

/// `default` moved from [`OLD`] to `head`; the mirror prints the given bytes.
fn mirror_garbage(
    head: &str,
    old: Vec<u8>,
    log: Vec<u8>,
    status: Vec<u8>,
    present: Vec<u8>,
) -> Result<(), TestCaseError> {
    let fake = fake();
    let (poller, _state) = fake.poller(HgConfig::default())?;
    let outputs = Outputs {
        heads: format!("default {head}\n\0").into_bytes(),
        present,
        old,
        log,
        status,
    };
    let (outcome, calls) = fake.poll(&*poller, &outputs, Some(&old_cursor()))?;
    check_sane(&outcome, &calls)
}

/// `default` moved from [`OLD`] to [`HEAD`]; the mirror says [`OLD`] is kept (plus
/// `old_heads`) and lists `log`.
fn odd_listing(log: &str, old_heads: &str) -> Result<(), TestCaseError> {
    let fake = fake();
    let (poller, _state) = fake.poller(HgConfig::default())?;
    let outputs = Outputs {
        heads: format!("default {HEAD}\n\0").into_bytes(),
        present: Vec::new(),
        old: format!("{OLD} kept\n{old_heads}").into_bytes(),
        log: log.as_bytes().to_vec(),
        status: b"a\0b\0".to_vec(),
    };
    let (outcome, calls) = fake.poll(&*poller, &outputs, Some(&old_cursor()))?;
    check_sane(&outcome, &calls)
}

/// The head of `default` the stored cursor knows.
const OLD: &str = "ff00000000000000000000000000000000000001";
/// Its new head.
const HEAD: &str = "c000000000000000000000000000000000000002";

fn old_cursor() -> Cursor {
    cursor_json(
        &BTreeMap::from([("default".to_owned(), vec![OLD.to_owned()])]),
        &BTreeMap::new(),
    )
}

fn odd_old_heads() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "x kept\n",
        "id(x) kept\n",
        "ffffffffffffffffffffffffffffffffffffffff gone\n",
        "nospace\n",
    ])
}
