//! The README's "Writing a backend" and "Writing a sink" guides are true: their code is
//! exactly the files of `examples/changelog` and `examples/lines` (this test compares
//! them byte for byte), and a polld built with them (`examples/guide`, the guides'
//! registration lines) polls with the new backend and delivers to the new sink.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use polld_test_support::workspace_root;

/// The code block that follows `<!-- file: PATH -->` in the README, for each marker.
fn readme_files() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let mut files = Vec::new();
    let mut rest = readme.as_str();
    while let Some(at) = rest.find("<!-- file: ") {
        rest = &rest[at + "<!-- file: ".len()..];
        let (path, after) = rest.split_once(" -->").unwrap();
        let fence_start = after.find("```").unwrap();
        let body_start = fence_start + after[fence_start..].find('\n').unwrap() + 1;
        let body_end = body_start + after[body_start..].find("\n```").unwrap() + 1;
        files.push((path.to_owned(), after[body_start..body_end].to_owned()));
        rest = &after[body_end..];
    }
    files
}

#[test]
fn the_guides_show_the_example_crates_exactly() {
    let files = readme_files();
    let shown: Vec<&str> = files.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(
        shown,
        [
            "examples/changelog/Cargo.toml",
            "examples/changelog/src/lib.rs",
            "examples/lines/Cargo.toml",
            "examples/lines/src/lib.rs",
            "examples/guide/src/main.rs",
        ],
        "the README's guides show these files, in this order"
    );
    for (path, text) in files {
        let actual = std::fs::read_to_string(workspace_root().join(&path)).unwrap();
        assert!(
            actual == text,
            "the README's copy of {path} differs from the file: update the README"
        );
    }
}

fn polld(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_polld-guide"))
        .current_dir(dir)
        .arg("--config")
        .arg(dir.join("pollers.toml"))
        .args(args)
        .env("POLLD_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn a_polld_with_the_guides_plugins_polls_and_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    std::fs::write(dir.join("CHANGES"), "r1 First release\n").unwrap();
    let config = "[daemon]\nstate_dir = \"state\"\n\n[sink]\ntype = \"lines\"\npath = \"delivered.txt\"\n\n\
                  [[poller]]\nname = \"log\"\ntype = \"changelog\"\nrepo = \"CHANGES\"\nbranch = \"main\"\n";
    std::fs::write(dir.join("pollers.toml"), config).unwrap();

    let check = polld(dir, &["check"]);
    assert!(check.status.success(), "{check:?}");
    let line = String::from_utf8_lossy(&check.stdout);
    assert!(
        line.contains("log\tchangelog") && line.contains("on branch main"),
        "{line}"
    );

    let first = polld(dir, &["once"]);
    assert!(first.status.success(), "{first:?}");
    assert!(
        !dir.join("delivered.txt").exists(),
        "the first poll reports nothing"
    );

    std::fs::write(
        dir.join("CHANGES"),
        "r1 First release\nr2 Second\nr3 Third\n",
    )
    .unwrap();
    let second = polld(dir, &["once"]);
    assert!(second.status.success(), "{second:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("delivered.txt")).unwrap(),
        "log r2\nlog r3\n"
    );
    let status = polld(dir, &["status", "--json"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("\"lines\": 3"));

    // The backend's own check, reported at the key like any other config error.
    std::fs::write(dir.join("pollers.toml"), config.replace("\"main\"", "\"\"")).unwrap();
    let refused = polld(dir, &["check"]);
    assert_eq!(refused.status.code(), Some(2));
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        error.contains("pollers.toml:12:10: poller `log`: branch must not be empty"),
        "{error}"
    );
}
