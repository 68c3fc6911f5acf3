//! Hardening: polld pointed at bad input of every kind.
//!
//! One table. Each row is a bad input (a config, a remote, a VCS client's output, the
//! state directory, a sink, a secret, a control request) and the outcome polld owes for
//! it: a clear error that names the problem, the poller or the file (and `file:line:col`
//! for config errors), the right exit code, nothing lost (the good poller next to the bad
//! one still delivers, the bad one's cursor does not move), and for the daemon rows that
//! `polld run` keeps running. Every row runs the real binary; rows run in parallel; the
//! table of (input, expected, observed) is printed to stderr when the suite runs.
//!
//! A secret is planted in repo URLs and `password_env` variables; every output of every
//! row and every file each row leaves behind are searched for it.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use polld_test_support::hg::{HgRepo, hg_poller};
use polld_test_support::svn::{SvnRepo, Svnserve, svn_poller};
use polld_test_support::*;
use serde_json::Value;

/// Planted in repo URLs and password variables; must appear in no output and no file.
const SECRET: &str = "PLANTED-s3cr3t-7Qx";
/// The token of the control endpoint in the daemon rows.
const TOKEN: &str = "hardening-token-42";

// ---------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------

/// One bad input and the outcome polld owes for it.
struct Case {
    /// The input, as it goes in the README's table.
    name: &'static str,
    /// What polld must do.
    expect: &'static str,
    check: Check,
}

enum Check {
    /// A config that `polld check` and `polld once` must both refuse: exit 2, nothing on
    /// stdout, nothing executed, and stderr holding `<file>:<line>:<col>:` for the line
    /// holding the `at.1`-th (0-based) occurrence of `at.0`, and every word of `says`.
    /// `text` gets the path of a real git repository, so only the intended mistake is wrong.
    Config {
        text: fn(&str) -> String,
        at: (&'static str, usize),
        says: &'static [&'static str],
    },
    /// A scenario that sets itself up, asserts, and returns what it observed.
    Run(fn(&mut Row) -> String),
}

fn cases() -> Vec<Case> {
    use Check::{Config, Run};
    vec![
        // --- config: syntax and keys -------------------------------------------------
        Case {
            name: "malformed TOML (`[[poller]` unclosed)",
            expect: "exit 2, file:line:col of the bad header",
            check: Config {
                text: |r| format!("{PREAMBLE}{}[[poller]\nname = \"x\"\n", good_poller(r)),
                at: ("[[poller]\n", 0),
                says: &[],
            },
        },
        Case {
            name: "unknown top-level key `verbose`",
            expect: "exit 2, file:line:col, names `verbose`",
            check: Config {
                text: |r| format!("verbose = true\n{PREAMBLE}{}", good_poller(r)),
                at: ("verbose", 0),
                says: &["verbose"],
            },
        },
        Case {
            name: "unknown key in [daemon] `max_concurent_polls`",
            expect: "exit 2, file:line:col, names the key",
            check: Config {
                text: |r| {
                    format!(
                        "[daemon]\nstate_dir = \"state\"\nmax_concurent_polls = 4\n\n{}",
                        good_poller(r)
                    )
                },
                at: ("max_concurent_polls", 0),
                says: &["max_concurent_polls"],
            },
        },
        Case {
            name: "unknown key in [sink] `fsync`",
            expect: "exit 2, file:line:col, names the key",
            check: Config {
                text: |r| {
                    format!(
                        "{PREAMBLE}{}\n[sink]\ntype = \"jsonl\"\npath = \"c.jsonl\"\nfsync = false\n",
                        good_poller(r)
                    )
                },
                at: ("fsync", 0),
                says: &["fsync"],
            },
        },
        Case {
            name: "unknown key in a poller `intervall`",
            expect: "exit 2, file:line:col, names the key",
            check: Config {
                text: |r| format!("{PREAMBLE}{}intervall = \"1m\"\n", good_poller(r)),
                at: ("intervall", 0),
                says: &["intervall"],
            },
        },
        Case {
            name: "unknown git backend key `branchez`",
            expect: "exit 2, file:line:col, names the key",
            check: Config {
                text: |r| format!("{PREAMBLE}{}branchez = [\"main\"]\n", good_poller(r)),
                at: ("branchez", 0),
                says: &["branchez"],
            },
        },
        Case {
            name: "unknown svn backend key `splitt`",
            expect: "exit 2, file:line:col, names the key",
            check: Config {
                text: |r| {
                    format!(
                        "{PREAMBLE}{}{}",
                        good_poller(r),
                        svn_poller("s", "file:///nonexistent/svn", "splitt = \"trunk\"")
                    )
                },
                at: ("splitt", 0),
                says: &["splitt"],
            },
        },
        Case {
            name: "unknown hg backend key `bookmark`",
            expect: "exit 2, file:line:col, names the key",
            check: Config {
                text: |r| {
                    format!(
                        "{PREAMBLE}{}{}",
                        good_poller(r),
                        hg_poller("h", "/nonexistent/hg", "bookmark = [\"@\"]")
                    )
                },
                at: ("bookmark", 0),
                says: &["bookmark"],
            },
        },
        // --- config: names and durations ---------------------------------------------
        Case {
            name: "duplicate poller name",
            expect: "exit 2, file:line:col of the second, says duplicate",
            check: Config {
                text: |r| format!("{PREAMBLE}{}{}", good_poller(r), good_poller(r)),
                at: ("name = \"good\"", 1),
                says: &["duplicate", "good"],
            },
        },
        Case {
            name: "poller name with `/` (`a/b`)",
            expect: "exit 2, file:line:col, invalid name",
            check: Config {
                text: |r| format!("{PREAMBLE}{}", git_poller("a/b", r, "")),
                at: ("name = \"a/b\"", 0),
                says: &["invalid poller name", "a/b"],
            },
        },
        Case {
            name: "poller name `..`",
            expect: "exit 2, file:line:col, invalid name",
            check: Config {
                text: |r| format!("{PREAMBLE}{}", git_poller("..", r, "")),
                at: ("name = \"..\"", 0),
                says: &["invalid poller name"],
            },
        },
        Case {
            name: "poller name with a space (`my app`)",
            expect: "exit 2, file:line:col, invalid name",
            check: Config {
                text: |r| format!("{PREAMBLE}{}", git_poller("my app", r, "")),
                at: ("name = \"my app\"", 0),
                says: &["invalid poller name", "my app"],
            },
        },
        Case {
            name: "jitter >= interval (10s, 10s)",
            expect: "exit 2, file:line:col, jitter must be less than interval",
            check: Config {
                text: |r| {
                    format!(
                        "{PREAMBLE}{}interval = \"10s\"\njitter = \"10s\"\n",
                        good_poller(r)
                    )
                },
                at: ("jitter = \"10s\"", 0),
                says: &["jitter", "interval", "good"],
            },
        },
        Case {
            name: "zero interval (`\"0s\"`)",
            expect: "exit 2, file:line:col, interval must be > 0",
            check: Config {
                text: |r| format!("{PREAMBLE}{}interval = \"0s\"\n", good_poller(r)),
                at: ("interval = \"0s\"", 0),
                says: &["interval"],
            },
        },
        Case {
            name: "negative interval (`-5`)",
            expect: "exit 2, file:line:col, says negative",
            check: Config {
                text: |r| format!("{PREAMBLE}{}interval = -5\n", good_poller(r)),
                at: ("interval = -5", 0),
                says: &["negative"],
            },
        },
        Case {
            name: "negative interval (`\"-5s\"`)",
            expect: "exit 2, file:line:col, invalid duration",
            check: Config {
                text: |r| format!("{PREAMBLE}{}interval = \"-5s\"\n", good_poller(r)),
                at: ("interval = \"-5s\"", 0),
                says: &["duration"],
            },
        },
        Case {
            name: "zero sink timeout (`timeout = \"0s\"`)",
            expect: "exit 2, file:line:col, timeout must be > 0",
            check: Config {
                text: |r| {
                    format!(
                        "{PREAMBLE}{}\n[sink]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\ntimeout = \"0s\"\n",
                        good_poller(r)
                    )
                },
                at: ("timeout", 0),
                says: &["timeout"],
            },
        },
        Case {
            name: "non-loopback `listen` without `token_env`",
            expect: "exit 2, file:line:col, needs token_env",
            check: Config {
                text: |r| {
                    format!(
                        "[daemon]\nstate_dir = \"state\"\nlisten = \"0.0.0.0:9150\"\n\n{}",
                        good_poller(r)
                    )
                },
                at: ("listen", 0),
                says: &["token_env"],
            },
        },
        // --- config: repos that are options or commands ------------------------------
        Case {
            name: "git repo `--upload-pack=pwn`",
            expect: "exit 2 at the repo line, nothing executed",
            check: Config {
                text: |_| format!("{PREAMBLE}{}", git_poller("evil", "--upload-pack=pwn", "")),
                at: ("repo =", 0),
                says: &["option"],
            },
        },
        Case {
            name: "git repo `-oProxyCommand=pwn`",
            expect: "exit 2 at the repo line, nothing executed",
            check: Config {
                text: |_| format!("{PREAMBLE}{}", git_poller("evil", "-oProxyCommand=pwn", "")),
                at: ("repo =", 0),
                says: &["option"],
            },
        },
        Case {
            name: "svn repo `--config-option=config:tunnels:ssh=pwn`",
            expect: "exit 2 at the repo line, nothing executed",
            check: Config {
                text: |_| {
                    format!(
                        "{PREAMBLE}{}",
                        svn_poller("evil", "--config-option=config:tunnels:ssh=pwn", "")
                    )
                },
                at: ("repo =", 0),
                says: &["option"],
            },
        },
        Case {
            name: "hg repo `--config=hooks.pre-pull=pwn`",
            expect: "exit 2 at the repo line, nothing executed",
            check: Config {
                text: |_| {
                    format!(
                        "{PREAMBLE}{}",
                        hg_poller("evil", "--config=hooks.pre-pull=pwn", "")
                    )
                },
                at: ("repo =", 0),
                says: &["option"],
            },
        },
        Case {
            name: "git `ssh://-oProxyCommand=pwn/r` (CVE-2017-1000117 class)",
            expect: "exit 2 at the repo line (host starts with -), nothing executed",
            check: Config {
                text: |_| {
                    format!(
                        "{PREAMBLE}{}",
                        git_poller("evil", "ssh://-oProxyCommand=pwn/r", "")
                    )
                },
                at: ("repo =", 0),
                says: &["host"],
            },
        },
        Case {
            name: "svn `svn+ssh://-oProxyCommand=pwn/r` (CVE-2017-9800)",
            expect: "exit 2 at the repo line (host starts with -), nothing executed",
            check: Config {
                text: |_| {
                    format!(
                        "{PREAMBLE}{}",
                        svn_poller("evil", "svn+ssh://-oProxyCommand=pwn/r", "")
                    )
                },
                at: ("repo =", 0),
                says: &["host"],
            },
        },
        Case {
            name: "hg `ssh://-oProxyCommand=pwn/r` (CVE-2017-1000116)",
            expect: "exit 2 at the repo line (host starts with -), nothing executed",
            check: Config {
                text: |_| {
                    format!(
                        "{PREAMBLE}{}",
                        hg_poller("evil", "ssh://-oProxyCommand=pwn/r", "")
                    )
                },
                at: ("repo =", 0),
                says: &["host"],
            },
        },
        Case {
            name: "git `ext::sh -c pwn` transport",
            expect: "exit 2 at the repo line, names ext::, nothing executed",
            check: Config {
                text: |_| format!("{PREAMBLE}{}", git_poller("evil", "ext::sh -c pwn", "")),
                at: ("repo =", 0),
                says: &["ext::"],
            },
        },
        // --- remotes -------------------------------------------------------------------
        Case {
            name: "git remote on a closed port",
            expect: "exit 1, names poller + connection refused; good delivers; cursor kept",
            check: Run(closed_port_git),
        },
        Case {
            name: "svn remote on a closed port",
            expect: "exit 1, names poller + connection refused; good delivers; cursor kept",
            check: Run(closed_port_svn),
        },
        Case {
            name: "hg remote on a closed port",
            expect: "exit 1, names poller + connection refused; good delivers; cursor kept",
            check: Run(closed_port_hg),
        },
        Case {
            name: "remotes (git://, svn://, hg http) that accept and never answer, `run`",
            expect: "daemon keeps running, good poller's commit arrives, SIGTERM exits 0 within grace, no orphans",
            check: Run(hung_remotes_daemon),
        },
        Case {
            name: "wrong password, svnserve with auth (password_env = secret)",
            expect: "exit 1, names poller + authorization; cursor kept; secret nowhere",
            check: Run(wrong_password_svn),
        },
        Case {
            name: "wrong password, git smart HTTP with basic auth (password_env = secret)",
            expect: "exit 1, names poller + authentication; cursor kept; secret nowhere",
            check: Run(wrong_password_git),
        },
        // --- what the VCS clients print ------------------------------------------------
        Case {
            name: "fake `svn log` printing garbage",
            expect: "exit 1, names poller + XML; cursor kept; delivered once svn is fixed",
            check: Run(svn_garbage_log),
        },
        Case {
            name: "fake `svn log` printing truncated XML",
            expect: "exit 1, names poller + XML; cursor kept; delivered once svn is fixed",
            check: Run(svn_truncated_log),
        },
        Case {
            name: "fake `svn log` printing a billion-laughs DTD",
            expect: "exit 1, no expansion (< 5 s, < 100 MiB), clear error; cursor kept",
            check: Run(svn_billion_laughs),
        },
        Case {
            name: "fake `svn info` printing garbage",
            expect: "exit 1, names poller + XML; cursor kept; delivered once svn is fixed",
            check: Run(svn_garbage_info),
        },
        Case {
            name: "fake `hg polld-heads` printing garbage",
            expect: "exit 1, names poller + the output; cursor kept; delivered once hg is fixed",
            check: Run(hg_garbage_heads),
        },
        Case {
            name: "fake `hg polld-heads` with a revset as a hash",
            expect: "exit 1, hash refused before any revset; cursor kept",
            check: Run(hg_revset_hash),
        },
        Case {
            name: "fake `hg log` answering a revset where a node belongs",
            expect: "exit 1, output refused (not spliced into a revset); cursor kept",
            check: Run(hg_revset_from_log),
        },
        Case {
            name: "fake `hg log` printing garbage",
            expect: "exit 1, names poller + the output; cursor kept; delivered once hg is fixed",
            check: Run(hg_garbage_log),
        },
        // --- what remotes contain -------------------------------------------------------
        Case {
            name: "git commit with a 20 MB message",
            expect: "delivered, comments cut at 64 KiB + `[polld: message cut at 65536 of N bytes]`",
            check: Run(big_message),
        },
        Case {
            name: "git commit touching 200,000 files",
            expect: "delivered, files cut to 10,000, properties.polld_files_total = 200000",
            check: Run(many_files),
        },
        Case {
            name: "git non-UTF-8 author, message and path",
            expect: "delivered, each invalid sequence as U+FFFD",
            check: Run(non_utf8),
        },
        // --- the state directory --------------------------------------------------------
        Case {
            name: "state.db read-only (chattr +i)",
            expect: "exit 1, names state.db; cursor kept; delivered once writable",
            check: Run(state_read_only),
        },
        Case {
            name: "state dir on a full disk (filled tmpfs)",
            expect: "exit 1, says no space; cursor kept; delivered once space is freed",
            check: Run(state_disk_full),
        },
        Case {
            name: "corrupt state.db (garbage bytes)",
            expect: "exit 1, names state.db; file unchanged (no silent reset); delivered once restored",
            check: Run(state_corrupt),
        },
        // --- sinks ----------------------------------------------------------------------
        Case {
            name: "webhook sink answering non-HTTP bytes",
            expect: "exit 1, change stays pending, status shows the error; delivered once fixed",
            check: Run(sink_not_http),
        },
        Case {
            name: "webhook sink answering 200 with a garbage body",
            expect: "exit 0, acknowledged (nothing pending)",
            check: Run(sink_garbage_200),
        },
        // --- secrets and the control endpoint -------------------------------------------
        Case {
            name: "secret in git/svn/hg repo URLs, `run` with /metrics",
            expect: "secret in no log, status, /status, /metrics, record or stored file",
            check: Run(secrets_everywhere),
        },
        Case {
            name: "control endpoint POST without / with a wrong / with the token",
            expect: "401, 401, 202; GETs open",
            check: Run(control_token),
        },
        Case {
            name: "control endpoint URI of 5 KiB",
            expect: "414, daemon keeps serving",
            check: Run(control_long_uri),
        },
    ]
}

// ---------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------

#[test]
fn hardening_table() {
    let started = Instant::now();
    let cases = cases();
    assert!(cases.len() >= 35, "the table has {} rows", cases.len());
    // Built before the rows start, so no row pays for the build in its time budget.
    let _ = polld_bin();
    let fixture = RemotePair::with_initial_commit();
    let repo = fixture.repo();

    let next = AtomicUsize::new(0);
    type Slot = Option<(Result<String, String>, Duration)>;
    let results: Mutex<Vec<Slot>> = Mutex::new((0..cases.len()).map(|_| None).collect());
    let workers = std::thread::available_parallelism()
        .map_or(4, |n| n.get())
        .clamp(4, 8);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(case) = cases.get(i) else { break };
                    let t0 = Instant::now();
                    let result = run_case(case, &repo);
                    results.lock().unwrap()[i] = Some((result, t0.elapsed()));
                }
            });
        }
    });
    let results: Vec<_> = results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();

    let mut table =
        String::from("\n| # | bad input | expected | observed | |\n|---|---|---|---|---|\n");
    let mut failures = Vec::new();
    for (i, (case, (result, took))) in cases.iter().zip(&results).enumerate() {
        let (observed, mark) = match result {
            Ok(observed) => (observed.clone(), "pass"),
            Err(message) => {
                failures.push(format!("--- row {}: {} ---\n{message}", i + 1, case.name));
                (
                    format!(
                        "FAILED: {}",
                        message.lines().next().unwrap_or("").replace('|', "/")
                    ),
                    "**FAIL**",
                )
            }
        };
        table.push_str(&format!(
            "| {} | {} | {} | {} ({:.1} s) | {mark} |\n",
            i + 1,
            case.name.replace('|', "\\|"),
            case.expect.replace('|', "\\|"),
            observed.replace('|', "\\|").replace('\n', " "),
            took.as_secs_f64()
        ));
    }
    eprintln!("{table}");
    eprintln!(
        "{} rows, {} passed, {} failed, {:.1} s",
        cases.len(),
        cases.len() - failures.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// Runs one row, catching its panics; then checks that the secret showed nowhere.
fn run_case(case: &Case, repo: &str) -> Result<String, String> {
    let mut row = Row::default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &case.check {
        Check::Config { text, at, says } => config_case(&mut row, &text(repo), *at, says),
        Check::Run(scenario) => scenario(&mut row),
    }));
    let mut result = result.map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
    });
    if let Some(leak) = row.seen.iter().find(|(_, text)| text.contains(SECRET)) {
        let message = format!(
            "the planted secret shows in {}:\n{}",
            leak.0,
            excerpt(&leak.1, SECRET)
        );
        result = Err(match result {
            Ok(_) => message,
            Err(e) => format!("{e}\n\nand {message}"),
        });
    }
    result
}

/// What a row saw: every output, for the secret check.
#[derive(Default)]
struct Row {
    seen: Vec<(String, String)>,
}

impl Row {
    /// Runs `polld <args>` (bounded) and keeps its output.
    fn run(&mut self, polld: &Polld, args: &[&str]) -> Outcome {
        let out = polld.run(args);
        self.saw_outcome(&out);
        out
    }

    fn saw_outcome(&mut self, out: &Outcome) {
        // stdout and stderr only: the command line shows the environment, secrets included.
        self.seen.push((
            out.command.clone(),
            format!("{}\n{}", out.stdout, out.stderr),
        ));
    }

    fn saw(&mut self, what: &str, text: &str) {
        self.seen.push((what.to_owned(), text.to_owned()));
    }

    /// `status --json`'s entry for `name`.
    #[track_caller]
    fn status_of(&mut self, polld: &Polld, name: &str) -> Value {
        let out = self.run(polld, &["status", "--json"]);
        out.expect_code(0);
        let status: Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.describe()));
        status["pollers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("status has no poller {name}: {status}"))
    }

    /// Every file polld left in its directory (state, mirrors, sink files, daemon logs),
    /// apart from the config the secret was written into: none may hold the secret.
    #[track_caller]
    fn sweep(&mut self, polld: &Polld) {
        let leaks: Vec<PathBuf> = files_containing(polld.dir.path(), SECRET.as_bytes())
            .into_iter()
            .filter(|p| *p != polld.config)
            .collect();
        assert!(leaks.is_empty(), "files hold the planted secret: {leaks:?}");
    }
}

/// A config row: `check` and `once` both refuse it the same way, and run nothing.
fn config_case(row: &mut Row, text: &str, at: (&str, usize), says: &[&str]) -> String {
    let polld = Polld::with_config(text);
    let bin = polld.path("bin");
    let marker = polld.path("PWNED");
    // `pwn`, first on PATH, is what every injected option or transport would run.
    write_exe(
        &bin.join("pwn"),
        &format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    );
    let mut polld = polld;
    polld.env.push(("PATH".into(), path_with(&bin)));
    let line = line_of(text, at.0, at.1);
    let file = polld.config.display().to_string();
    let mut message = String::new();
    for args in [&["check"][..], &["once"][..]] {
        let out = row.run(&polld, args);
        out.expect_code(2);
        assert!(
            out.stdout.trim().is_empty(),
            "nothing on stdout\n{}",
            out.describe()
        );
        let position = find_position(&out.stderr, &file).unwrap_or_else(|| {
            panic!(
                "stderr should name `{file}:LINE:COL:` (LINE {line})\n{}",
                out.describe()
            )
        });
        assert_eq!(
            position.0,
            line,
            "the error should point at line {line} ({:?}), not {}\n{}",
            text.lines().nth(line - 1).unwrap_or(""),
            position.0,
            out.describe()
        );
        assert_mentions(&out.stderr, says, &out.describe());
        message = first_line_with(&out.stderr, &file);
    }
    assert!(!marker.exists(), "the injected command ran: {marker:?}");
    assert!(
        !polld.path("state").exists(),
        "a refused config must not create the state dir"
    );
    let at = message.find(&file).map_or(0, |i| i + file.len() + 1);
    format!("pollers.toml:{}", short(&message[at..], 110))
}

// ---------------------------------------------------------------------------------------
// Remotes
// ---------------------------------------------------------------------------------------

/// `good` (a local git repository, the suite's control) plus `bad`, stdout sink.
fn with_good(bad: &str) -> (RemotePair, Polld) {
    let good = RemotePair::with_initial_commit();
    let polld = Polld::new(&format!("{}{bad}", good_poller(&good.repo())));
    (good, polld)
}

/// A failed poll, checked for everything but the wording of its error, which is
/// checked by [`Failed::finish`] after the caller has checked that nothing was lost.
struct Failed {
    observed: String,
    wording: Vec<String>,
}

impl Failed {
    #[track_caller]
    fn finish(self, then: &str) -> String {
        assert!(self.wording.is_empty(), "{}", self.wording.join("\n\n"));
        self.observed + then
    }
}

/// Runs `once` expecting `bad` to fail with an error that names it and says `says`,
/// while `good` delivers exactly its new commit; `bad`'s cursor must not move.
#[track_caller]
fn failed_poll(
    row: &mut Row,
    polld: &Polld,
    good: &RemotePair,
    bad: &str,
    says: &[&str],
) -> Failed {
    if row.status_of(polld, "good")["cursor"].is_null() {
        // The good poller's first poll, which only records where its remote is.
        let first = row.run(polld, &["once"]);
        assert!(first.records().is_empty(), "{}", first.describe());
    }
    let before = row.status_of(polld, bad)["cursor"].clone();
    let sha = push_commit(good, "good news");
    let t0 = Instant::now();
    let out = row.run(polld, &["once"]);
    let took = t0.elapsed();
    out.expect_code(1);
    let records = out.records();
    assert!(
        records.len() == 1 && records[0]["poller"] == "good" && records[0]["revision"] == sha,
        "the good poller delivers its one new commit\n{}",
        out.describe()
    );
    let error_lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains(bad)).collect();
    assert!(
        !error_lines.is_empty(),
        "stderr names the failing poller `{bad}`\n{}",
        out.describe()
    );
    let status = row.status_of(polld, bad);
    assert_eq!(
        status["cursor"], before,
        "`{bad}`'s cursor must not move on a failed poll: {status}"
    );
    let error = status["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("status shows `{bad}`'s error: {status}"))
        .to_owned();
    let good_status = row.status_of(polld, "good");
    assert!(good_status["last_error"].is_null(), "{good_status}");
    assert_eq!(good_status["pending"], 0, "{good_status}");
    row.sweep(polld);
    let wording = [
        missing_words(&error_lines.join("\n"), says),
        missing_words(&error, says),
    ]
    .into_iter()
    .flatten()
    .collect();
    Failed {
        observed: format!(
            "exit 1 in {:.1} s; `{bad}`: {}; good delivered; cursor kept",
            took.as_secs_f64(),
            short(&error, 120)
        ),
        wording,
    }
}

/// [`failed_poll`] for a bad poller that cannot be fixed within the row.
#[track_caller]
fn expect_failed_poll(
    row: &mut Row,
    polld: &Polld,
    good: &RemotePair,
    bad: &str,
    says: &[&str],
) -> String {
    failed_poll(row, polld, good, bad, says).finish("")
}

fn closed_port_git(row: &mut Row) -> String {
    let url = format!("git://127.0.0.1:{}/app.git", free_port());
    let (good, polld) = with_good(&git_poller("bad-git", &url, ""));
    expect_failed_poll(row, &polld, &good, "bad-git", &["refused"])
}

fn closed_port_svn(row: &mut Row) -> String {
    let url = format!("svn://127.0.0.1:{}/repo", free_port());
    let (good, polld) = with_good(&svn_poller("bad-svn", &url, ""));
    expect_failed_poll(row, &polld, &good, "bad-svn", &["refused"])
}

fn closed_port_hg(row: &mut Row) -> String {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let (good, polld) = with_good(&hg_poller("bad-hg", &url, ""));
    expect_failed_poll(row, &polld, &good, "bad-hg", &["refused"])
}

fn wrong_password_svn(row: &mut Row) -> String {
    let svn = SvnRepo::new();
    svn.put(&[("README", "r\n")], "first");
    svn.require_auth("alice", "the-right-one");
    let server = Svnserve::start(svn.dir.path());
    let (good, mut polld) = with_good(&svn_poller(
        "bad-svn",
        &server.url("repo"),
        "username = \"alice\"\npassword_env = \"HARDENING_SVN_PASSWORD\"",
    ));
    polld
        .env
        .push(("HARDENING_SVN_PASSWORD".into(), SECRET.into()));
    expect_failed_poll(row, &polld, &good, "bad-svn", &["auth"])
}

fn wrong_password_git(row: &mut Row) -> String {
    let remote = RemotePair::with_initial_commit();
    let server = GitHttpServer::start(
        &remote.dir.path().join("remote"),
        Some(("alice", "the-right-one")),
    );
    let (good, mut polld) = with_good(&git_poller(
        "bad-git",
        &server.url(None, "app.git"),
        "username = \"alice\"\npassword_env = \"HARDENING_GIT_PASSWORD\"",
    ));
    polld
        .env
        .push(("HARDENING_GIT_PASSWORD".into(), SECRET.into()));
    let observed = expect_failed_poll(row, &polld, &good, "bad-git", &["auth"]);
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.ends_with("401")),
        "the server refused the password: {requests:?}"
    );
    assert!(
        requests.len() <= 4,
        "a wrong password is offered once, not in a loop: {requests:?}"
    );
    observed
}

/// A silent TCP server: accepts, reads, never answers. Its connections stay open.
struct SilentServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        held.push(stream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        SilentServer {
            port,
            accepted,
            stop,
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn hung_remotes_daemon(row: &mut Row) -> String {
    let hung = SilentServer::start();
    let good = RemotePair::with_initial_commit();
    let port = free_port();
    let h = hung.port;
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nshutdown_grace = \"1s\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"POLLD_TOKEN\"\n\n\
         [defaults]\ninterval = \"10m\"\n\n{}interval = \"1s\"\n{}{}{}",
        good_poller(&good.repo()),
        git_poller("hung-git", &format!("git://127.0.0.1:{h}/app.git"), ""),
        svn_poller("hung-svn", &format!("svn://127.0.0.1:{h}/repo"), ""),
        hg_poller("hung-hg", &format!("http://127.0.0.1:{h}/"), ""),
    ));
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN)]);
    daemon.wait_for(Duration::from_secs(15), "all three hung polls", || {
        hung.accepted.load(Ordering::SeqCst) >= 3
    });
    daemon.wait_for(Duration::from_secs(15), "good's first poll", || {
        control_status(port, "good").is_some_and(|p| !p["cursor"].is_null())
    });
    let sha = push_commit(&good, "arrives while the others hang");
    let t0 = Instant::now();
    let stdout_path = daemon.stdout_path.clone();
    daemon.wait_for(Duration::from_secs(15), "good's commit on stdout", || {
        daemon_stdout_has(&stdout_path, &sha)
    });
    let arrived = t0.elapsed();
    let (health, _) = http(port, "GET", "/healthz", None);
    assert_eq!(health, 200, "the daemon answers while polls hang");
    for name in ["hung-git", "hung-svn", "hung-hg"] {
        let p = control_status(port, name).unwrap();
        assert!(p["cursor"].is_null(), "{name} never got an answer: {p}");
    }
    let (_, metrics) = http(port, "GET", "/metrics", None);
    row.saw("/metrics", &metrics);
    let t1 = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(12));
    let stopped = t1.elapsed();
    row.saw("run stderr", &daemon.stderr());
    row.saw("run stdout", &daemon.stdout());
    let status = status.unwrap_or_else(|| {
        panic!(
            "SIGTERM with shutdown_grace 1s: still running after 12 s\n{}",
            daemon.stderr()
        )
    });
    assert_eq!(status.code(), Some(0), "exit 0\n{}", daemon.stderr());
    assert!(
        stopped < Duration::from_secs(8),
        "stopped in {stopped:?}: grace 1 s + a last delivery of at most 5 s"
    );
    // No svn or hg left behind talking to the silent server.
    let needle = format!("127.0.0.1:{h}");
    let mut orphans = Vec::new();
    wait_until(Duration::from_secs(3), "orphans to go", || {
        orphans = processes_mentioning(&needle);
        orphans.is_empty()
    });
    let records: Vec<Value> = daemon
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
    row.sweep(&polld);
    format!(
        "good's commit arrived {:.1} s after the push while 3 polls hung; SIGTERM → exit 0 in {:.1} s; no orphans",
        arrived.as_secs_f64(),
        stopped.as_secs_f64()
    )
}

// ---------------------------------------------------------------------------------------
// Fake VCS clients
// ---------------------------------------------------------------------------------------

/// `svn` for this row: `log` (or `info`) prints `body` (a shell snippet); the rest is
/// the real svn.
fn fake_svn(dir: &Path, command: &str, body: &str) -> PathBuf {
    let bin = dir.join("fake-bin");
    let real = which("svn");
    write_exe(
        &bin.join("svn"),
        &format!(
            "#!/bin/sh\nif [ \"$1\" = {command} ]; then\n{body}\nfi\nexec '{}' \"$@\"\n",
            real.display()
        ),
    );
    bin
}

/// `hg` for this row: when any argument is `command`, prints `body`; else the real hg.
fn fake_hg(dir: &Path, command: &str, body: &str) -> PathBuf {
    let bin = dir.join("fake-bin");
    let real = which("hg");
    write_exe(
        &bin.join("hg"),
        &format!(
            "#!/bin/sh\nfor a in \"$@\"; do\n  if [ \"$a\" = {command} ]; then\n{body}\n  fi\ndone\nexec '{}' \"$@\"\n",
            real.display()
        ),
    );
    bin
}

/// A good git poller and an svn poller with a cursor at r1 and r2 waiting; then `once`
/// with the fake client first on PATH must fail, and `once` without it deliver r2.
fn svn_with_fake(row: &mut Row, command: &str, body: &str, says: &[&str]) -> String {
    let svn = SvnRepo::new();
    svn.put(&[("README", "r\n")], "first");
    let (good, mut polld) = with_good(&svn_poller("bad-svn", &svn.url(), ""));
    let first = row.run(&polld, &["once"]);
    first.expect_code(0);
    let r2 = svn.put(&[("README", "r2\n")], "second");
    let bin = fake_svn(polld.dir.path(), command, body);
    polld.env.push(("PATH".into(), path_with(&bin)));
    let failed = failed_poll(row, &polld, &good, "bad-svn", says);
    polld.env.clear();
    let fixed = row.run(&polld, &["once"]);
    fixed.expect_code(0);
    let records = fixed.records();
    assert!(
        records.len() == 1 && records[0]["revision"].as_str() == Some(r2.to_string().as_str()),
        "r2 is delivered once svn is fixed\n{}",
        fixed.describe()
    );
    failed.finish("; r2 delivered after")
}

fn svn_garbage_log(row: &mut Row) -> String {
    svn_with_fake(
        row,
        "log",
        "printf '\\000\\377 this is not XML <<<< &&& \\n'; exit 0",
        &["xml"],
    )
}

fn svn_truncated_log(row: &mut Row) -> String {
    let real = which("svn");
    svn_with_fake(
        row,
        "log",
        &format!("'{}' \"$@\" | head -c 150; exit 0", real.display()),
        &["xml"],
    )
}

fn svn_garbage_info(row: &mut Row) -> String {
    svn_with_fake(
        row,
        "info",
        "printf '<?xml version=\"1.0\"?>\\n<info><entry kind=\"dir\" revision=\"banana\">'; exit 0",
        &["xml"],
    )
}

fn svn_billion_laughs(row: &mut Row) -> String {
    let svn = SvnRepo::new();
    svn.put(&[("README", "r\n")], "first");
    let (good, mut polld) = with_good(&svn_poller("bad-svn", &svn.url(), ""));
    row.run(&polld, &["once"]).expect_code(0);
    svn.put(&[("README", "r2\n")], "second");
    let mut doc = String::from(
        "<?xml version=\"1.0\"?>\n<!DOCTYPE log [\n<!ENTITY lol \"lollollollollollollollollollol\">\n",
    );
    for i in 1..=9 {
        let prev = if i == 1 {
            "lol".to_string()
        } else {
            format!("lol{}", i - 1)
        };
        doc.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    doc.push_str(
        "]>\n<log>\n<logentry revision=\"2\">\n<author>&lol9;</author>\n<date>2024-01-01T00:00:00.000000Z</date>\n<paths><path action=\"M\" kind=\"file\">/README</path></paths>\n<msg>&lol9;</msg>\n</logentry>\n</log>\n",
    );
    std::fs::write(polld.path("laughs.xml"), &doc).unwrap();
    let bin = fake_svn(
        polld.dir.path(),
        "log",
        &format!("cat '{}'; exit 0", polld.path("laughs.xml").display()),
    );
    polld.env.push(("PATH".into(), path_with(&bin)));
    let before = row.status_of(&polld, "bad-svn")["cursor"].clone();
    let sha = push_commit(&good, "good news");
    let t0 = Instant::now();
    let (out, rss_kib) = run_measured(polld.command().arg("once"));
    let took = t0.elapsed();
    row.saw_outcome(&out);
    out.expect_code(1);
    assert!(took < Duration::from_secs(5), "bounded time: took {took:?}");
    assert!(rss_kib < 100 * 1024, "no expansion: max RSS {rss_kib} KiB");
    let records = out.records();
    assert!(
        records.len() == 1 && records[0]["revision"] == sha,
        "good delivers\n{}",
        out.describe()
    );
    assert!(
        !out.stdout.contains("lollol"),
        "no entity was expanded into a record\n{}",
        out.describe()
    );
    let status = row.status_of(&polld, "bad-svn");
    assert_eq!(status["cursor"], before, "{status}");
    let error = status["last_error"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}"));
    assert_mentions(error, &["entity"], &status.to_string());
    assert!(error.len() < 2100, "a bounded error: {} bytes", error.len());
    format!(
        "exit 1 in {:.2} s, max RSS {} MiB; `bad-svn`: {}; cursor kept",
        took.as_secs_f64(),
        rss_kib / 1024,
        short(error, 90)
    )
}

/// A good git poller and a local hg poller with a cursor and one changeset waiting;
/// `once` with the fake hg must fail, `once` with the real one deliver it.
fn hg_with_fake(row: &mut Row, command: &str, body: &str, says: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let hg = HgRepo::init(&dir.path().join("hgrepo"));
    hg.commit_file("a", "a\n", "first");
    let (good, mut polld) = with_good(&hg_poller("bad-hg", &hg.path.display().to_string(), ""));
    row.run(&polld, &["once"]).expect_code(0);
    let node = hg.commit_file("a", "b\n", "second");
    let bin = fake_hg(polld.dir.path(), command, body);
    polld.env.push(("PATH".into(), path_with(&bin)));
    let failed = failed_poll(row, &polld, &good, "bad-hg", says);
    polld.env.clear();
    let fixed = row.run(&polld, &["once"]);
    fixed.expect_code(0);
    let records = fixed.records();
    assert!(
        records.len() == 1 && records[0]["revision"] == node,
        "the changeset is delivered once hg is fixed\n{}",
        fixed.describe()
    );
    failed.finish("; delivered after")
}

fn hg_garbage_heads(row: &mut Row) -> String {
    hg_with_fake(
        row,
        "polld-heads",
        "printf 'Traceback (most recent call last):\\n  garbage \\377\\n'; exit 0",
        &["polld-heads"],
    )
}

fn hg_revset_hash(row: &mut Row) -> String {
    hg_with_fake(
        row,
        "polld-heads",
        "printf 'default 0000000000000000000000000000000000000000)+or+all()+or+(0\\n\\000'; exit 0",
        &["hash"],
    )
}

/// `hg log`, asked which old heads the new ones keep, answers with a revset where a
/// node should be: it must be refused as output polld cannot read, not spliced into
/// the next revset.
fn hg_revset_from_log(row: &mut Row) -> String {
    hg_with_fake(
        row,
        "-T",
        "case \"$*\" in *kept*) printf 'x)or(all())or(x gone\\n'; exit 0;; esac",
        &["log", "cannot read"],
    )
}

fn hg_garbage_log(row: &mut Row) -> String {
    hg_with_fake(
        row,
        "log",
        "printf 'not\\000a\\000changeset \\377\\n'; exit 0",
        &["log", "cannot read"],
    )
}

// ---------------------------------------------------------------------------------------
// Big and strange commits
// ---------------------------------------------------------------------------------------

/// One commit on `main` of the bare remote, made by `git fast-import` (no work tree to
/// check out), with raw bytes for author, message and the file commands; the new tip.
fn fast_import_commit(pair: &RemotePair, author: &[u8], message: &[u8], files: &[u8]) -> String {
    let old = pair.remote.rev_parse("main");
    let mut stream = Vec::new();
    stream.extend_from_slice(b"commit refs/heads/main\nauthor ");
    stream.extend_from_slice(author);
    stream.extend_from_slice(b" 1700000000 +0000\ncommitter C <c@example.org> 1700000001 +0000\n");
    stream.extend_from_slice(format!("data {}\n", message.len()).as_bytes());
    stream.extend_from_slice(message);
    stream.extend_from_slice(format!("\nfrom {old}\n").as_bytes());
    stream.extend_from_slice(files);
    stream.push(b'\n');
    pair.remote
        .git_out(["fast-import", "--quiet", "--force"], Some(&stream));
    pair.remote.rev_parse("main")
}

/// A good poller on the remote of `pair`, with its cursor set.
fn polled(row: &mut Row, pair: &RemotePair) -> Polld {
    let polld = Polld::new(&good_poller(&pair.repo()));
    row.run(&polld, &["once"]).expect_code(0);
    polld
}

fn big_message(row: &mut Row) -> String {
    let pair = RemotePair::with_initial_commit();
    let polld = polled(row, &pair);
    let message = "0123456789abcde\n"
        .repeat(20 * 1024 * 1024 / 16)
        .into_bytes();
    let total = String::from_utf8_lossy(&message).trim_end().len();
    let sha = fast_import_commit(
        &pair,
        b"Ada <ada@example.org>",
        &message,
        b"M 100644 inline big.txt\ndata 4\nbig\n",
    );
    let (out, rss_kib) = run_measured(polld.command().arg("once"));
    out.expect_code(0);
    let records = out.records();
    assert_eq!(records.len(), 1, "{}", out.describe());
    let change = &records[0];
    assert_eq!(change["revision"], sha);
    let comments = change["comments"].as_str().unwrap();
    let note = format!("[polld: message cut at 65536 of {total} bytes]");
    assert!(
        comments.ends_with(&note),
        "comments end with {note:?}: ...{:?}",
        &comments[comments.len().saturating_sub(80)..]
    );
    let kept = comments.len() - note.len();
    assert!(
        (65_536..=65_536 + 2).contains(&kept),
        "64 KiB of the message kept (plus the note's separator), not {kept}"
    );
    assert!(
        comments.starts_with("0123456789abcde\n0123"),
        "the start of the message is kept"
    );
    assert!(
        out.stdout.len() < 200 * 1024,
        "the record is small: {} bytes",
        out.stdout.len()
    );
    format!(
        "comments {} bytes ending `{note}`; polld max RSS {} MiB",
        comments.len(),
        rss_kib / 1024
    )
}

fn many_files(row: &mut Row) -> String {
    let pair = RemotePair::with_initial_commit();
    let polld = polled(row, &pair);
    // One blob, then one commit naming it 200,000 times (200 directories of 1,000).
    let old = pair.remote.rev_parse("main");
    let mut stream = b"blob\nmark :1\ndata 2\nx\n".to_vec();
    stream.extend_from_slice(
        format!(
            "commit refs/heads/main\nauthor Ada <ada@example.org> 1700000000 +0000\ncommitter C <c@example.org> 1700000001 +0000\ndata 10\n200k files\nfrom {old}\n"
        )
        .as_bytes(),
    );
    for i in 0..200_000 {
        stream.extend_from_slice(format!("M 100644 :1 d{:03}/f{i}.txt\n", i / 1000).as_bytes());
    }
    stream.push(b'\n');
    pair.remote
        .git_out(["fast-import", "--quiet", "--force"], Some(&stream));
    let sha = pair.remote.rev_parse("main");
    let t0 = Instant::now();
    let (out, rss_kib) = run_measured(polld.command().arg("once"));
    let took = t0.elapsed();
    out.expect_code(0);
    let records = out.records();
    assert_eq!(records.len(), 1, "{}", out.describe());
    let change = &records[0];
    assert_eq!(change["revision"], sha);
    let files = change["files"].as_array().unwrap();
    assert_eq!(files.len(), 10_000, "files cut to 10,000");
    assert_eq!(
        change["properties"]["polld_files_total"], 200_000,
        "the real count is in properties: {}",
        change["properties"]
    );
    format!(
        "10,000 files, polld_files_total 200000; once took {:.1} s, polld max RSS {} MiB",
        took.as_secs_f64(),
        rss_kib / 1024
    )
}

fn non_utf8(row: &mut Row) -> String {
    let pair = RemotePair::with_initial_commit();
    let polld = polled(row, &pair);
    let author = b"Ad\xe9 L\xf6velace <ada@example.org>";
    let message = b"caf\xe9 \xff\xfe end";
    let path = b"na\xefve-\xff.txt";
    let mut files = b"M 100644 inline ".to_vec();
    files.extend_from_slice(path);
    files.extend_from_slice(b"\ndata 2\nx\n");
    let sha = fast_import_commit(&pair, author, message, &files);
    let out = row.run(&polld, &["once"]);
    out.expect_code(0);
    let records = out.records();
    assert_eq!(records.len(), 1, "{}", out.describe());
    let change = &records[0];
    assert_eq!(change["revision"], sha);
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert_eq!(change["author"], lossy(author), "{change}");
    assert_eq!(change["comments"], lossy(message), "{change}");
    assert_eq!(
        change["files"],
        serde_json::json!([lossy(path)]),
        "{change}"
    );
    format!(
        "delivered: author {}, comments {}, files {}",
        change["author"], change["comments"], change["files"]
    )
}

// ---------------------------------------------------------------------------------------
// The state directory
// ---------------------------------------------------------------------------------------

/// Root ignores permission bits, so "read-only" is the immutable attribute: not even
/// root may open an immutable file for writing. Only `state.db` is made immutable (the
/// state dir itself stays writable, else polld fails at once on its lock file before
/// polling, which proves less): SQLite then opens the database read-only, the poll
/// runs, and its transaction (cursor + queued change) must fail as a whole.
fn state_read_only(row: &mut Row) -> String {
    let pair = RemotePair::with_initial_commit();
    let polld = polled(row, &pair);
    let before = row.status_of(&polld, "good")["cursor"].clone();
    let sha = push_commit(&pair, "while read-only");
    let db = polld.path("state/state.db");
    let _guard = Immutable::set(&db);
    let out = row.run(&polld, &["once"]);
    out.expect_code(1);
    let error = out
        .stderr
        .lines()
        .find(|l| {
            let l = l.to_lowercase();
            l.contains("good") && (l.contains("readonly") || l.contains("read-only"))
        })
        .unwrap_or_else(|| {
            panic!(
                "an error names the poller and says the state is read-only\n{}",
                out.describe()
            )
        })
        .to_owned();
    assert!(
        out.records().is_empty(),
        "nothing was delivered from a poll that could not be stored\n{}",
        out.describe()
    );
    drop(_guard);
    let status = row.status_of(&polld, "good");
    assert_eq!(status["cursor"], before, "cursor kept: {status}");
    let fixed = row.run(&polld, &["once"]);
    fixed.expect_code(0);
    let records = fixed.records();
    assert!(
        records.len() == 1 && records[0]["revision"] == sha,
        "delivered once writable\n{}",
        fixed.describe()
    );
    format!(
        "exit 1: {}; cursor kept; delivered after",
        short(&error, 100)
    )
}

/// `chattr +i` for as long as it lives.
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Immutable {
        let out = Command::new("chattr").arg("+i").arg(path).output().unwrap();
        assert!(
            out.status.success(),
            "chattr +i {path:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).output();
    }
}

/// A tmpfs mounted for as long as it lives.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs at {at:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// The state dir on its own 4 MiB tmpfs, filled to the last byte after the first poll.
fn state_disk_full(row: &mut Row) -> String {
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&good_poller(&pair.repo()));
    let _mount = Tmpfs::mount(&polld.path("state"), "4m");
    row.run(&polld, &["once"]).expect_code(0);
    let before = row.status_of(&polld, "good")["cursor"].clone();
    let sha = push_commit(&pair, "while the disk is full");
    let filler = polld.path("state/filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    let out = row.run(&polld, &["once"]);
    out.expect_code(1);
    assert!(out.records().is_empty(), "{}", out.describe());
    std::fs::remove_file(&filler).unwrap();
    let status = row.status_of(&polld, "good");
    assert_eq!(status["cursor"], before, "cursor kept: {status}");
    let fixed = row.run(&polld, &["once"]);
    fixed.expect_code(0);
    let records = fixed.records();
    assert!(
        records.len() == 1 && records[0]["revision"] == sha,
        "delivered once space is freed\n{}",
        fixed.describe()
    );
    // Last, so that a vague message does not hide whether anything was lost.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.to_lowercase().contains("space"))
        .collect();
    assert!(
        !lines.is_empty(),
        "the error should say the disk is full (No space left on device); nothing was lost\n{}",
        out.describe()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("good") || l.contains("state")),
        "the error names the poller or the state\n{}",
        out.describe()
    );
    format!(
        "exit 1: {}; cursor kept; delivered after",
        short(lines[0], 100)
    )
}

fn state_corrupt(row: &mut Row) -> String {
    let pair = RemotePair::with_initial_commit();
    let polld = polled(row, &pair);
    let sha = push_commit(&pair, "behind a corrupt store");
    let state = polld.path("state");
    let db = state.join("state.db");
    let saved: Vec<(PathBuf, Vec<u8>)> = ["state.db", "state.db-wal", "state.db-shm"]
        .iter()
        .filter_map(|f| {
            std::fs::read(state.join(f))
                .ok()
                .map(|b| (state.join(f), b))
        })
        .collect();
    let garbage: Vec<u8> = (0..16 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (path, _) in &saved {
        std::fs::remove_file(path).unwrap();
    }
    std::fs::write(&db, &garbage).unwrap();
    let out = row.run(&polld, &["once"]);
    out.expect_code(1);
    assert!(out.records().is_empty(), "{}", out.describe());
    assert!(
        out.stderr.contains(&db.display().to_string()),
        "the error names {db:?}\n{}",
        out.describe()
    );
    let error = first_line_with(&out.stderr, "state.db");
    let status = row.run(&polld, &["status"]);
    assert_eq!(status.code, Some(1), "status too\n{}", status.describe());
    assert!(
        status.stderr.contains(&db.display().to_string()),
        "{}",
        status.describe()
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "state.db must be left as it was: no silent reset"
    );
    std::fs::remove_file(&db).unwrap();
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let fixed = row.run(&polld, &["once"]);
    fixed.expect_code(0);
    let records = fixed.records();
    assert!(
        records.len() == 1 && records[0]["revision"] == sha,
        "delivered once the store is restored\n{}",
        fixed.describe()
    );
    format!(
        "exit 1 (once, status): {}; file unchanged; delivered after restore",
        short(&error, 100)
    )
}

// ---------------------------------------------------------------------------------------
// Sinks
// ---------------------------------------------------------------------------------------

/// A TCP server that reads each request and answers with `answer`, then closes.
struct RawServer {
    port: u16,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl RawServer {
    fn start(answer: &'static [u8]) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (requests.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(5)))
                            .unwrap();
                        let request = read_request(&mut stream);
                        r.lock().unwrap().push(request);
                        let _ = stream.write_all(answer);
                        let _ = stream.flush();
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        RawServer {
            port,
            requests,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one HTTP request: head, then `Content-Length` bytes of body.
fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return buf;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return buf,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn webhook_polld(pair: &RemotePair, url: &str) -> Polld {
    Polld::new(&format!(
        "[sink]\ntype = \"webhook\"\nurl = {}\ntimeout = \"5s\"\n\n{}",
        toml_str(url),
        good_poller(&pair.repo())
    ))
}

fn sink_not_http(row: &mut Row) -> String {
    let server = RawServer::start(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff\xfe garbage \x1b[31m\r\n\r\n");
    let pair = RemotePair::with_initial_commit();
    let polld = webhook_polld(&pair, &server.url());
    row.run(&polld, &["once"]).expect_code(0);
    let sha = push_commit(&pair, "for a broken sink");
    let out = row.run(&polld, &["once"]);
    out.expect_code(1);
    assert!(
        !server.requests.lock().unwrap().is_empty(),
        "the sink was tried"
    );
    let status = row.status_of(&polld, "good");
    assert_eq!(status["pending"], 1, "the change stays pending: {status}");
    assert_eq!(
        status["dead_letters"], 0,
        "and is not dead-lettered: {status}"
    );
    let error = status["last_delivery_error"]
        .as_str()
        .unwrap_or_else(|| panic!("status shows the delivery error: {status}"))
        .to_owned();
    let text = row.run(&polld, &["status"]);
    text.expect_code(0);
    // Fixed: the same config pointed at a sink that works.
    let good_sink = polld_test_support::buildbot::WebhookReceiver::start(&[], 200);
    let text_config = std::fs::read_to_string(&polld.config)
        .unwrap()
        .replace(&server.url(), &good_sink.url());
    polld.write_config(&text_config);
    let fixed = row.run(&polld, &["once"]);
    fixed.expect_code(0);
    let received = good_sink.received();
    assert!(
        received.len() == 1 && received[0].json()["revision"] == sha,
        "delivered once the sink is fixed: {received:?}"
    );
    assert_eq!(row.status_of(&polld, "good")["pending"], 0);
    format!(
        "exit 1, pending 1, last_delivery_error: {}; delivered after",
        short(&error, 90)
    )
}

fn sink_garbage_200(row: &mut Row) -> String {
    let server =
        RawServer::start(b"HTTP/1.1 200 OK\r\nContent-Length: 24\r\nConnection: close\r\n\r\n\x00\xff{{{ not json ]]] \xfe\xfd\x01");
    let pair = RemotePair::with_initial_commit();
    let polld = webhook_polld(&pair, &server.url());
    row.run(&polld, &["once"]).expect_code(0);
    let sha = push_commit(&pair, "for a garbage-answering sink");
    let out = row.run(&polld, &["once"]);
    out.expect_code(0);
    let requests = server.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1, "one POST, acknowledged");
    let request = String::from_utf8_lossy(&requests[0]).into_owned();
    assert!(request.contains(&sha), "the POST carries the change");
    let status = row.status_of(&polld, "good");
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["dead_letters"], 0, "{status}");
    "exit 0, one POST, pending 0 (acknowledged)".into()
}

// ---------------------------------------------------------------------------------------
// Secrets and the control endpoint
// ---------------------------------------------------------------------------------------

fn secrets_everywhere(row: &mut Row) -> String {
    let good = RemotePair::with_initial_commit();
    let port = free_port();
    let closed = free_port();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"POLLD_TOKEN\"\nshutdown_grace = \"1s\"\n\n\
         [defaults]\ninterval = \"10m\"\n\n[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}{}{}{}",
        good_poller(&good.repo()),
        git_poller(
            "secret-git",
            &format!("https://user:{SECRET}@127.0.0.1:{closed}/r.git"),
            ""
        ),
        svn_poller(
            "secret-svn",
            &format!("svn://user:{SECRET}@127.0.0.1:{closed}/repo"),
            ""
        ),
        hg_poller(
            "secret-hg",
            &format!("http://user:{SECRET}@127.0.0.1:{closed}/"),
            ""
        ),
    ));
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN)]);
    daemon.wait_for(Duration::from_secs(20), "three failed polls", || {
        ["secret-git", "secret-svn", "secret-hg"]
            .iter()
            .all(|n| control_status(port, n).is_some_and(|p| p["last_error"].is_string()))
            && control_status(port, "good").is_some_and(|p| !p["cursor"].is_null())
    });
    let sha = push_commit(&good, "one record for the jsonl file");
    let (code, _) = http(port, "POST", "/poll/good", Some(TOKEN));
    assert_eq!(code, 202);
    daemon.wait_for(Duration::from_secs(15), "the record", || {
        std::fs::read_to_string(polld.path("changes.jsonl")).is_ok_and(|t| t.contains(&sha))
    });
    let (_, metrics) = http(port, "GET", "/metrics", None);
    let (_, status_body) = http(port, "GET", "/status", None);
    row.saw("/metrics", &metrics);
    row.saw("/status", &status_body);
    assert!(
        metrics.contains("polld_polls_total") && metrics.contains("secret-git"),
        "metrics carry the pollers: {metrics}"
    );
    let status: Value = serde_json::from_str(&status_body).unwrap();
    for p in status["pollers"].as_array().unwrap() {
        let repo = p["repo"].as_str().unwrap();
        assert!(
            !repo.contains('@'),
            "status shows repos without userinfo: {repo}"
        );
    }
    daemon.signal(libc::SIGTERM);
    let exited = daemon.wait_exit(Duration::from_secs(12));
    row.saw("run stderr", &daemon.stderr());
    row.saw("run stdout", &daemon.stdout());
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(0),
        "{}",
        daemon.stderr()
    );
    assert!(
        daemon.stderr().contains("secret-git"),
        "the log names the failing pollers"
    );
    for args in [
        &["status"][..],
        &["status", "--json"][..],
        &["check"][..],
        &["once"][..],
    ] {
        let out = row.run(&polld, args);
        assert!(
            out.code == Some(0) || args == ["once"],
            "{}",
            out.describe()
        );
    }
    let jsonl = std::fs::read_to_string(polld.path("changes.jsonl")).unwrap();
    row.saw("changes.jsonl", &jsonl);
    row.sweep(&polld);
    let searched: usize = row.seen.iter().map(|(_, t)| t.len()).sum();
    format!(
        "secret absent from {} outputs ({} KiB) and {} stored files",
        row.seen.len(),
        searched / 1024,
        list_all_files(polld.dir.path()).len()
    )
}

fn control_daemon(port: u16) -> (RemotePair, Polld, RunningPolld) {
    let good = RemotePair::with_initial_commit();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"POLLD_TOKEN\"\nshutdown_grace = \"1s\"\n\n\
         [defaults]\ninterval = \"10m\"\n\n{}",
        good_poller(&good.repo())
    ));
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN)]);
    daemon.wait_for(Duration::from_secs(20), "the control endpoint", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (good, polld, daemon)
}

fn control_token(row: &mut Row) -> String {
    let port = free_port();
    let (_good, polld, mut daemon) = control_daemon(port);
    let (none, _) = http(port, "POST", "/poll/good", None);
    let (wrong, _) = http(port, "POST", "/poll/good", Some("not-the-token"));
    let (reload_none, _) = http(port, "POST", "/reload", None);
    let (right, _) = http(port, "POST", "/poll/good", Some(TOKEN));
    let (health, _) = http(port, "GET", "/healthz", None);
    assert_eq!(
        (none, wrong, reload_none, right, health),
        (401, 401, 401, 202, 200),
        "(no token, wrong token, /reload without token, right token, GET /healthz)"
    );
    assert!(daemon.is_running());
    daemon.signal(libc::SIGTERM);
    let _ = daemon.wait_exit(Duration::from_secs(10));
    row.saw("run stderr", &daemon.stderr());
    row.sweep(&polld);
    format!("no token {none}, wrong token {wrong}, /reload without {reload_none}, token {right}")
}

fn control_long_uri(row: &mut Row) -> String {
    let port = free_port();
    let (_good, polld, mut daemon) = control_daemon(port);
    let long = format!("/notify?repo={}", "a".repeat(5 * 1024));
    let (code, _) = http(port, "POST", &long, Some(TOKEN));
    let (code_get, _) = http(
        port,
        "GET",
        &format!("/status?{}", "b".repeat(5 * 1024)),
        None,
    );
    let (health, _) = http(port, "GET", "/healthz", None);
    assert_eq!((code, code_get, health), (414, 414, 200));
    assert!(daemon.is_running());
    daemon.signal(libc::SIGTERM);
    let _ = daemon.wait_exit(Duration::from_secs(10));
    row.saw("run stderr", &daemon.stderr());
    row.sweep(&polld);
    format!("POST {code}, GET {code_get}, then /healthz {health}")
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The `[[poller]]` every row uses as its control: a local git repository.
fn good_poller(repo: &str) -> String {
    git_poller("good", repo, "")
}

/// A commit pushed to the remote; its sha.
fn push_commit(pair: &RemotePair, message: &str) -> String {
    let sha = pair.work.commit("news.txt", message, message);
    pair.work.push(&["main"]);
    sha
}

/// 1-based line of the `nth` (0-based) line of `text` containing `needle`.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    // A needle ending in a newline must end its line.
    let (needle, whole_end) = match needle.strip_suffix('\n') {
        Some(n) => (n, true),
        None => (needle, false),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            if whole_end {
                l.ends_with(needle)
            } else {
                l.contains(needle)
            }
        })
        .nth(nth)
        .unwrap_or_else(|| panic!("no line {nth} with {needle:?} in:\n{text}"))
        .0
        + 1
}

/// The first `<file>:<line>:<col>:` in `stderr`.
fn find_position(stderr: &str, file: &str) -> Option<(usize, usize)> {
    let prefix = format!("{file}:");
    stderr.match_indices(&prefix).find_map(|(i, _)| {
        let rest = &stderr[i + prefix.len()..];
        let mut parts = rest.splitn(3, ':');
        let line = parts.next()?.parse().ok()?;
        let col = parts.next()?.parse().ok()?;
        parts.next()?;
        Some((line, col))
    })
}

/// Asserts `text` holds every word of `words`, ignoring case.
#[track_caller]
fn assert_mentions(text: &str, words: &[&str], context: &str) {
    if let Some(problem) = missing_words(text, words) {
        panic!("{problem}\n\n{context}");
    }
}

/// Which of `words` `text` lacks (ignoring case), as a failure message.
fn missing_words(text: &str, words: &[&str]) -> Option<String> {
    let lower = text.to_lowercase();
    let missing: Vec<&&str> = words
        .iter()
        .filter(|w| !lower.contains(&w.to_lowercase()))
        .collect();
    (!missing.is_empty()).then(|| format!("the error should say {missing:?}:\n{text}"))
}

fn first_line_with(text: &str, needle: &str) -> String {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or("")
        .to_owned()
}

/// `text` in at most about `max` characters: its start and its end (where an error
/// chain keeps its cause).
fn short(text: &str, max: usize) -> String {
    let text = text.trim();
    let chars: Vec<char> = text.chars().collect();
    if chars.len() <= max {
        return text.to_owned();
    }
    let head = max / 3;
    let tail = max - head;
    format!(
        "{} … {}",
        chars[..head].iter().collect::<String>(),
        chars[chars.len() - tail..].iter().collect::<String>()
    )
}

fn excerpt(text: &str, needle: &str) -> String {
    let i = text.find(needle).unwrap_or(0);
    let start = text[..i]
        .char_indices()
        .rev()
        .nth(200)
        .map_or(0, |(j, _)| j);
    let end = (i + needle.len() + 200).min(text.len());
    let end = (end..=text.len())
        .find(|&e| text.is_char_boundary(e))
        .unwrap_or(text.len());
    text[start..end].to_owned()
}

fn list_all_files(dir: &Path) -> Vec<PathBuf> {
    polld_test_support::list_files(dir)
}

fn daemon_stdout_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

/// Processes whose command line mentions `needle` (e.g. a port).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    polld_test_support::http::control(port, method, path, token)
}

/// `GET /status`'s entry for `name`, if the endpoint answers.
fn control_status(port: u16, name: &str) -> Option<Value> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    let (code, body) = http(port, "GET", "/status", None);
    if code != 200 {
        return None;
    }
    let status: Value = serde_json::from_str(&body).ok()?;
    status["pollers"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
}

/// Runs `cmd` to completion (bounded) and returns its outcome and its own peak RSS in
/// KiB, from `wait4`'s rusage for exactly this child (which `wait4` also reaps, hence
/// no `Child::wait`).
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut Command) -> (Outcome, u64) {
    let command = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn polld");
    let pid = child.id() as libc::pid_t;
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data, filled in by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child, with valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed");
        if Instant::now() >= deadline {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!("{command} did not finish within {COMMAND_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let outcome = Outcome {
        code,
        stdout: String::from_utf8_lossy(&out_t.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_t.join().unwrap()).into_owned(),
        command,
    };
    (outcome, usage.ru_maxrss as u64)
}
