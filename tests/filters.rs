//! End-to-end: what is reported. `paths`, `ignore_paths`, `skip_markers` and
//! `ignore_authors` on real git, svn and hg repositories through `polld once`, the
//! filtered counts on `/metrics`, `polld check`'s lines and warnings; and git `refs`
//! watching 2,000 `refs/pull/N/head` over `git://`.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::Duration;

use polld_test_support::hg::{HgRepo, hg_command, hg_poller};
use polld_test_support::svn::{SvnRepo, svn_poller};
use polld_test_support::*;
use serde_json::Value;

const STDOUT_SINK: &str = "[sink]\ntype = \"stdout\"\n\n";
const BOT: &str = "dependabot[bot] <49699333+dependabot[bot]@users.noreply.github.com>";

/// The revisions each poller reported, in order.
fn reported(records: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut by_poller: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in records {
        by_poller
            .entry(record["poller"].as_str().unwrap().to_owned())
            .or_default()
            .push(record["revision"].as_str().unwrap().to_owned());
    }
    by_poller
}

/// (branch, revision) of each record, in order.
fn branches_and_revisions(records: &[Value]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            let field = |key: &str| r[key].as_str().unwrap().to_owned();
            (field("branch"), field("revision"))
        })
        .collect()
}

fn strings(revisions: &[&String]) -> Vec<String> {
    revisions.iter().map(|r| r.to_string()).collect()
}

/// Writes `files` in `repo`'s work tree and commits them as `author` with `message`.
fn git_commit_as(repo: &GitRepo, author: &str, files: &[(&str, &str)], message: &str) -> String {
    for (file, content) in files {
        let path = repo.path.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    repo.git(&["add", "-A"]);
    repo.git(&["commit", "-q", &format!("--author={author}"), "-m", message]);
    repo.head()
}

#[test]
fn git_filters_report_only_what_they_let_through() {
    let pair = RemotePair::new();
    pair.work.commit_files(
        &[("service-a/main.go", "a\n"), ("service-b/main.go", "b\n")],
        "Initial commit",
    );
    pair.work.push(&["main"]);
    let repo = pair.repo();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\n\n[defaults]\nignore_authors = [\"*[bot]*\"]\n\n\
         {STDOUT_SINK}{}{}{}",
        git_poller("a", &repo, "paths = [\"service-a/**\"]"),
        git_poller("no-docs", &repo, "ignore_paths = [\"docs/**\", \"*.md\"]"),
        git_poller(
            "everything",
            &repo,
            "skip_markers = false\nignore_authors = []"
        ),
    ));
    assert!(polld.once_ok().is_empty(), "the first poll reports nothing");

    let work = &pair.work;
    let only_b = work.commit("service-b/main.go", "b2\n", "Change service b");
    let only_a = work.commit("service-a/main.go", "a2\n", "Change service a");
    let docs = work.commit_files(&[("docs/guide.txt", "g\n"), ("README.md", "r\n")], "Docs");
    let skip = work.commit(
        "service-a/x.go",
        "x\n",
        "Tweak a\n\nNot worth a build [skip ci]\n",
    );
    let ci_skip = work.commit("service-a/y.go", "y\n", "Tweak a again\n\n[CI SKIP]\n");
    let bot = git_commit_as(work, BOT, &[("service-a/deps.txt", "1\n")], "Bump deps");
    // A merge that brings a matching file: its files are those against its first
    // parent (git pollers report the first-parent line, so the merge stands for the
    // feature branch's commits).
    work.checkout_new("feature");
    work.commit("service-a/feature.go", "f\n", "Feature for a");
    work.checkout("main");
    let b_again = work.commit("service-b/other.go", "o\n", "Other change to b");
    let merge = work.merge_no_ff("feature", "Merge feature");
    // 10,001 vendored files and one of service-a's, listed after them: paths are matched
    // before the change's file list is cut to 10,000.
    for i in 0..10_001 {
        let path = work.path.join(format!("aaa-vendor/{}/{i}.c", i / 1000));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "v\n").unwrap();
    }
    let big = work.commit("service-a/vendored.go", "v\n", "Vendor, and use it in a");
    work.push(&["main"]);

    let by_poller = reported(&polld.once_ok());
    assert_eq!(
        by_poller["a"],
        strings(&[&only_a, &merge, &big]),
        "a: only commits touching service-a, no markers, no bots"
    );
    assert_eq!(
        by_poller["no-docs"],
        strings(&[&only_b, &only_a, &b_again, &merge, &big]),
        "no-docs: everything but the docs-only commit, the skipped ones and the bot's"
    );
    assert_eq!(
        by_poller["everything"],
        strings(&[
            &only_b, &only_a, &docs, &skip, &ci_skip, &bot, &b_again, &merge, &big
        ]),
    );

    // The cursor moved past the filtered commits: nothing is reported again.
    assert!(polld.once_ok().is_empty());
}

#[test]
fn svn_filters_use_paths_relative_to_the_branch_and_the_username() {
    let svn = SvnRepo::with_standard_layout();
    svn.put(&[("trunk/service-a/main.c", "a\n")], "service a");
    let polld = Polld::new(&format!(
        "{STDOUT_SINK}{}{}",
        svn_poller(
            "a",
            &svn.url(),
            "split = \"branches\"\npaths = [\"service-a/**\"]\nignore_authors = [\"ci-*\"]"
        ),
        svn_poller(
            "all",
            &svn.url(),
            "split = \"branches\"\nskip_markers = false"
        ),
    ));
    assert!(polld.once_ok().is_empty());

    let only_b = svn.put(&[("trunk/service-b/main.c", "b\n")], "service b");
    let only_a = svn.put(&[("trunk/service-a/main.c", "a2\n")], "service a again");
    let skip = svn.put(&[("trunk/service-a/x.c", "x\n")], "tweak\n\n[skip CI]");
    std::fs::write(svn.wc.join("trunk/service-a/main.c"), "a3\n").unwrap();
    svn.svn(&["commit", "-q", "--username", "ci-robot", "-m", "robot"]);
    let robot = svn.youngest();

    let by_poller = reported(&polld.once_ok());
    assert_eq!(by_poller["a"], [only_a.to_string()]);
    assert_eq!(
        by_poller["all"],
        [only_b, only_a, skip, robot].map(|r| r.to_string())
    );
}

#[test]
fn hg_filters_see_a_merges_files_against_its_first_parent() {
    let dir = tempfile::tempdir().unwrap();
    let repo = HgRepo::init(&dir.path().join("repo"));
    repo.commit_file("service-a/main.py", "a\n", "initial");
    let polld = Polld::new(&format!(
        "{STDOUT_SINK}{}",
        hg_poller(
            "a",
            &repo.path.display().to_string(),
            "paths = [\"service-a/**\"]\nignore_authors = [\"*[bot]*\"]"
        ),
    ));
    assert!(polld.once_ok().is_empty());

    let base = repo.commit_file("service-b/main.py", "b\n", "service b");
    let only_a = repo.commit_file("service-a/main.py", "a2\n", "service a");
    repo.commit_file("service-a/x.py", "x\n", "tweak [skip ci]");
    std::fs::write(repo.path.join("service-a/bot.txt"), "1\n").unwrap();
    repo.hg(&["commit", "-A", "-q", "-u", BOT, "-m", "bump"]);
    let bot = repo.node(".");
    // A second head from `base` touching service-a, merged into the first line: the
    // merge brings service-a files to its first parent.
    repo.hg(&["update", "-q", "--rev", &base]);
    let side = repo.commit_file("service-a/side.py", "s\n", "side work on a");
    repo.hg(&["update", "-q", "--rev", &bot]);
    let status = hg_command(&repo.path)
        .args(["merge", "-q", "--tool", "internal:local", "--rev", &side])
        .status()
        .unwrap();
    assert!(status.success());
    let merge = repo.commit_all("merge side work");

    let mut got = reported(&polld.once_ok())["a"].clone();
    got.sort();
    let mut want = vec![only_a, side, merge];
    want.sort();
    assert_eq!(
        got, want,
        "service-a's commits, the merge bringing one, no marker or bot"
    );
}

#[test]
fn filtered_commits_are_counted_and_check_shows_the_filters() {
    let pair = RemotePair::with_initial_commit();
    let port = free_port();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n\
         [defaults]\ninterval = \"1h\"\n\n[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}",
        git_poller(
            "app",
            &pair.repo(),
            "paths = [\"src/**\", \"/abs/**\"]\nignore_authors = [\"*[bot]*\"]"
        )
    ));
    let check = polld.run(&["check"]);
    check.expect_code(0);
    assert!(
        check.stdout.contains(
            "paths src/**, /abs/**; skip markers [skip ci], [ci skip]; ignore_authors *[bot]*"
        ),
        "{}",
        check.describe()
    );
    assert!(
        check
            .stderr
            .contains("warning: poller `app`: path glob \"/abs/**\" can never match"),
        "{}",
        check.describe()
    );

    let mut daemon = polld.spawn_run(&[]);
    let metrics = || http::control(port, "GET", "/metrics", None).1;
    daemon.wait_for(Duration::from_secs(20), "the first poll", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && metrics().contains("polld_polls_total{poller=\"app\",result=\"ok\"} 1")
    });
    pair.work.commit("docs/a.txt", "a\n", "docs only");
    pair.work.commit("src/a.rs", "a\n", "code [skip ci]");
    git_commit_as(&pair.work, BOT, &[("src/b.rs", "b\n")], "bump");
    let kept = pair.work.commit("src/c.rs", "c\n", "code");
    pair.work.push(&["main"]);
    assert_eq!(http::control(port, "POST", "/poll/app", None).0, 202);
    wait_until(Duration::from_secs(20), "the kept change", || {
        !read_jsonl(&polld.path("changes.jsonl")).0.is_empty()
    });
    let (records, _) = read_jsonl(&polld.path("changes.jsonl"));
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["revision"], kept.as_str());
    let text = metrics();
    for reason in ["paths", "skip_marker", "author"] {
        let line = format!("polld_changes_filtered_total{{poller=\"app\",reason=\"{reason}\"}} 1");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
}

#[test]
fn a_bad_filter_is_a_config_error_at_its_line() {
    let polld = Polld::new(&format!(
        "{STDOUT_SINK}{}",
        git_poller("app", "/srv/app.git", "paths = [\"src/[\"]")
    ));
    let out = polld.run(&["check"]);
    out.expect_code(2);
    assert!(
        out.stderr
            .contains(":16:9: poller `app`: paths glob \"src/[\""),
        "{}",
        out.describe()
    );
}

#[test]
fn pull_request_refs_report_exactly_their_new_commits() {
    let pair = RemotePair::with_initial_commit();
    // 2,000 open pull requests, each one commit on main's first commit.
    let base = pair.work.head();
    pair.work.checkout_new("pr-seed");
    let seed = pair.work.commit("seed.txt", "s\n", "an old pull request");
    pair.work.push(&["pr-seed"]);
    pair.work.checkout("main");
    let mut stdin = String::new();
    for n in 1..=2000 {
        stdin.push_str(&format!("create refs/pull/{n}/head {seed}\n"));
    }
    pair.remote
        .git_out(["update-ref", "--stdin"], Some(stdin.as_bytes()));
    let daemon = GitDaemon::start(&pair.dir.path().join("remote"));
    let url = daemon.url("app.git");
    let polld = Polld::new(&format!(
        "{STDOUT_SINK}{}",
        git_poller(
            "prs",
            &url,
            "branches = [\"main\"]\nrefs = [\"refs/pull/*/head\"]"
        )
    ));
    assert!(polld.once_ok().is_empty(), "the first poll reports nothing");
    let cursor = polld.status_of("prs")["cursor"]["refs"].clone();
    assert_eq!(
        cursor.as_object().map(|refs| refs.len()),
        Some(2001),
        "main and 2,000 pull requests"
    );

    // Opening a pull request: its two new commits, on the full ref name.
    let work = &pair.work;
    work.checkout_new("topic");
    work.reset_hard(&base);
    let one = work.commit("topic.txt", "1\n", "topic one");
    let two = work.commit("topic.txt", "2\n", "topic two");
    work.push_force(&["topic:refs/pull/2001/head"]);
    let got = branches_and_revisions(&polld.once_ok());
    assert_eq!(
        got,
        [
            ("refs/pull/2001/head".to_owned(), one.clone()),
            ("refs/pull/2001/head".to_owned(), two)
        ]
    );

    // Updating it: the one new commit.
    let three = work.commit("topic.txt", "3\n", "topic three");
    work.push_force(&["topic:refs/pull/2001/head"]);
    let got: Vec<String> = polld
        .once_ok()
        .iter()
        .map(|r| r["revision"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, [three]);

    // Force-pushing it: only the rewritten commit, not the ones it replaced.
    work.reset_hard(&one);
    let rewritten = work.commit("topic.txt", "2b\n", "topic two, rewritten");
    work.push_force(&["topic:refs/pull/2001/head"]);
    // main moves too: its commit on main.
    work.checkout("main");
    let on_main = work.commit("main.txt", "m\n", "on main");
    work.push(&["main"]);
    let got = branches_and_revisions(&polld.once_ok());
    assert_eq!(
        got,
        [
            ("main".to_owned(), on_main),
            ("refs/pull/2001/head".to_owned(), rewritten)
        ]
    );
}
