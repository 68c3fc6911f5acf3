//! The per-poller directory: polld's private hg configuration and a local mirror.
//!
//! ```text
//! <state_dir>/mirrors/<poller>/hgrc            the only hgrc polld's hg commands read
//! <state_dir>/mirrors/<poller>/polld_heads.py  the extension behind `hg polld-heads`
//! <state_dir>/mirrors/<poller>/repo/           the mirror (`hg init`, then pulls)
//! ```
//!
//! The mirror receives the watched heads (`hg pull -r <node>...`: exactly the
//! changesets the check saw, even if the remote moves meanwhile) and is never stripped,
//! so a head that disappears from the remote can still bound the next walk. Deleting
//! the whole directory is safe: the next poll that needs it rebuilds it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use polld_backend::process::ProcessError;

use crate::cacerts;
use crate::error::HgError;
use crate::heads::is_node;
use crate::hg::{Hg, Invocation};

const EXTENSION: &str = include_str!("polld_heads.py");

/// One changeset as the mirror's `hg log` prints it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Changeset {
    pub(crate) node: String,
    pub(crate) branch: String,
    pub(crate) author: String,
    pub(crate) when: i64,
    pub(crate) parents: Vec<String>,
    /// Added, modified and removed against the first parent, sorted.
    pub(crate) files: Vec<String>,
    pub(crate) desc: String,
}

/// NUL-terminated fields (hg forbids NUL in every one of them, and newlines in paths),
/// description last. `date|hgdate` is `<unix seconds> <tz offset>`. `polldcut` (polld's
/// extension) cuts a description at 64 KiB inside hg, so a 20 MB message never reaches
/// polld whole.
const TEMPLATE: &str = "{node}\\0{branch}\\0{author}\\0{date|hgdate}\\0{p1node}\\0{p2node}\\0\
{join(file_adds, '\\n')}\\0{join(file_mods, '\\n')}\\0{join(file_dels, '\\n')}\\0{desc|polldcut}\\0";
/// [`TEMPLATE`] with each message's first line only, for a push whose messages are too
/// large together for one `hg log` run's output limit.
const FIRST_LINES_TEMPLATE: &str = "{node}\\0{branch}\\0{author}\\0{date|hgdate}\\0{p1node}\\0{p2node}\\0\
{join(file_adds, '\\n')}\\0{join(file_mods, '\\n')}\\0{join(file_dels, '\\n')}\\0\
{desc|firstline|polldcut}\\n\\n[polld: first line only: the messages of this push are too large together]\\0";
const FIELDS: usize = 10;
const NULL_NODE: &str = "0000000000000000000000000000000000000000";

pub(crate) struct Mirror {
    dir: PathBuf,
    repo: PathBuf,
    hg: Hg,
    /// The deadline of each hg command.
    timeout: Duration,
    /// The poller's `ca_file`, trusted by `hg pull` (see `cacerts.rs`).
    ca_file: Option<PathBuf>,
    /// The rc and the extension are known to be on disk with the right content.
    prepared: AtomicBool,
}

impl Mirror {
    pub(crate) fn new(
        dir: PathBuf,
        secrets_dir: PathBuf,
        timeout: Duration,
        ca_file: Option<PathBuf>,
    ) -> Result<Mirror, HgError> {
        let rc = dir.join("hgrc");
        let extension = dir.join("polld_heads.py");
        let shown = rc.display().to_string();
        if shown.contains([':', '\n', '\r']) {
            return Err(HgError::MirrorPath(shown));
        }
        let rc_text = format!(
            "# polld's private Mercurial configuration (its HGRCPATH): no user, system or\n\
             # repository hgrc is read. polld rewrites this file when it differs.\n\
             [ui]\n\
             interactive = false\n\
             ssh = ssh -o BatchMode=yes\n\
             [extensions]\n\
             polld_heads = {}\n",
            extension.display()
        );
        Ok(Mirror {
            repo: dir.join("repo"),
            hg: Hg {
                rc,
                rc_text,
                workdir: dir.clone(),
                secrets_dir,
            },
            dir,
            timeout,
            ca_file,
            prepared: AtomicBool::new(false),
        })
    }

    /// The hg runner, after making sure the private rc and extension are in place.
    /// Writes only what is missing or different, so a poll that finds nothing (after
    /// the first in this process) does not even read them.
    pub(crate) async fn hg(&self) -> Result<&Hg, HgError> {
        // A stat, not a read: cheap enough for every poll, and it notices a mirror
        // directory deleted while polld runs.
        if self.prepared.load(Ordering::Acquire)
            && tokio::fs::try_exists(&self.hg.rc).await.unwrap_or(false)
        {
            return Ok(&self.hg);
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| HgError::mirror(&path, source)
        };
        if !tokio::fs::try_exists(&self.dir)
            .await
            .map_err(io(&self.dir))?
        {
            let mut builder = tokio::fs::DirBuilder::new();
            builder.recursive(true).mode(0o700);
            builder.create(&self.dir).await.map_err(io(&self.dir))?;
        }
        let extension = self.dir.join("polld_heads.py");
        for (path, text) in [
            (&self.hg.rc, self.hg.rc_text.as_str()),
            (&extension, EXTENSION),
        ] {
            let current = tokio::fs::read(path).await.ok();
            if current.as_deref() != Some(text.as_bytes()) {
                tokio::fs::write(path, text).await.map_err(io(path))?;
            }
        }
        self.prepared.store(true, Ordering::Release);
        Ok(&self.hg)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the mirror repository exists (`hg init` has completed).
    pub(crate) async fn exists(&self) -> bool {
        tokio::fs::try_exists(self.repo.join(".hg").join("requires"))
            .await
            .unwrap_or(false)
    }

    pub(crate) async fn init(&self) -> Result<(), HgError> {
        let hg = self.hg().await?;
        // A half-made mirror (a crash during `hg init`) is removed first.
        if tokio::fs::try_exists(&self.repo).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&self.repo)
                .await
                .map_err(|e| HgError::mirror(&self.repo, e))?;
        }
        hg.run(Invocation {
            command: "init",
            args: vec!["init".into(), "--".into(), self.repo.clone().into()],
            timeout: self.timeout,
            secret_rc: None,
        })
        .await?;
        Ok(())
    }

    /// `hg polld-heads -- SOURCE`: the remote's branchmap and bookmarks.
    pub(crate) async fn remote_heads(&self, source: &str) -> Result<Vec<u8>, HgError> {
        let hg = self.hg().await?;
        hg.run(Invocation {
            command: "polld-heads",
            args: vec!["polld-heads".into(), "--".into(), source.into()],
            timeout: self.timeout,
            secret_rc: None,
        })
        .await
    }

    /// `hg recover` if a transaction was interrupted (a pull killed at its deadline, at
    /// shutdown, or with the daemon): until it is rolled back, every pull fails with
    /// "abandoned transaction found".
    async fn recover(&self) -> Result<(), HgError> {
        let journal = self.repo.join(".hg").join("store").join("journal");
        if !tokio::fs::try_exists(&journal).await.unwrap_or(false) {
            return Ok(());
        }
        tracing::warn!(mirror = %self.repo.display(), "an interrupted pull left the mirror mid-transaction; rolling it back (hg recover)");
        let hg = self.hg().await?;
        hg.run(Invocation {
            command: "recover",
            args: vec!["recover".into(), "-R".into(), self.repo.clone().into()],
            timeout: self.timeout,
            secret_rc: None,
        })
        .await?;
        Ok(())
    }

    /// Which of `nodes` the mirror has.
    pub(crate) async fn present(&self, nodes: &[&str]) -> Result<HashSet<String>, HgError> {
        if nodes.is_empty() {
            return Ok(HashSet::new());
        }
        let out = self
            .log("polldnodes(present)", "{node}\\n", &[("present", nodes)])
            .await?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter(|line| is_node(line))
            .map(str::to_owned)
            .collect())
    }

    /// `hg pull -r <node>... -- SOURCE`, after rolling back what a pull killed mid-way
    /// left (hg's journal), which would make this one fail.
    pub(crate) async fn pull(
        &self,
        source: &str,
        nodes: &[&str],
        secret_rc: Option<&str>,
    ) -> Result<(), HgError> {
        let hg = self.hg().await?;
        self.recover().await?;
        let mut args: Vec<OsString> = vec!["pull".into(), "-q".into(), "-R".into()];
        args.push(self.repo.clone().into());
        if let Some(ca_file) = &self.ca_file {
            let bundle = cacerts::bundle(ca_file, &self.dir).await?;
            let mut option = OsString::from("web.cacerts=");
            option.push(bundle);
            args.push("--config".into());
            args.push(option);
        }
        for node in nodes {
            args.push("-r".into());
            args.push((*node).into());
        }
        args.push("--".into());
        args.push(source.into());
        hg.run(Invocation {
            command: "pull",
            args,
            timeout: self.timeout,
            secret_rc,
        })
        .await?;
        Ok(())
    }

    /// For each of `old` that the mirror has: whether it is an ancestor of (or one of)
    /// `new`. An old head that is not was stripped or rewritten on the remote.
    pub(crate) async fn old_heads(
        &self,
        old: &[&str],
        new: &[&str],
    ) -> Result<Vec<(String, bool)>, HgError> {
        if old.is_empty() {
            return Ok(Vec::new());
        }
        let template = "{node} {ifcontains(rev, revset('::polldnodes(new)'), 'kept', 'gone')}\\n";
        let out = self
            .log("polldnodes(old)", template, &[("old", old), ("new", new)])
            .await?;
        String::from_utf8_lossy(&out)
            .lines()
            .map(|line| match line.split_once(' ') {
                // The node goes into later revsets: it must be a node, nothing else.
                Some((node, state)) if is_node(node) => Ok((node.to_owned(), state == "kept")),
                _ => Err(HgError::Output {
                    command: "log",
                    detail: format!("unexpected line {line:?}"),
                }),
            })
            .collect()
    }

    /// The files `node` changed against its first parent (`hg status --change`). For a
    /// merge that is what it brought to the branch; the `file_*` template keywords
    /// would list only the files the merge itself resolved.
    pub(crate) async fn files_against_p1(&self, node: &str) -> Result<Vec<String>, HgError> {
        let hg = self.hg().await?;
        let args: Vec<OsString> = vec![
            "status".into(),
            "-R".into(),
            self.repo.clone().into(),
            "--change".into(),
            node.into(),
            "-amr".into(),
            "-n".into(),
            "-0".into(),
        ];
        let out = hg
            .run(Invocation {
                command: "status",
                args,
                timeout: self.timeout,
                secret_rc: None,
            })
            .await?;
        let mut files: Vec<String> = out
            .split(|&b| b == 0)
            .filter(|path| !path.is_empty())
            .map(|path| String::from_utf8_lossy(path).into_owned())
            .collect();
        files.sort();
        Ok(files)
    }

    /// `::new - ::known` in revision order, which in a mirror filled by pulls is a
    /// topological order, oldest first.
    pub(crate) async fn changesets(
        &self,
        new: &[&str],
        known: &[&str],
    ) -> Result<Vec<Changeset>, HgError> {
        if new.is_empty() {
            return Ok(Vec::new());
        }
        self.read_changesets(
            "::polldnodes(new) - ::polldnodes(known)",
            &[("new", new), ("known", known)],
        )
        .await
    }

    /// Exactly these changesets, in revision order.
    pub(crate) async fn changesets_of(&self, nodes: &[&str]) -> Result<Vec<Changeset>, HgError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        self.read_changesets("polldnodes(new)", &[("new", nodes)])
            .await
    }

    /// The changesets of `revset` with [`TEMPLATE`]; when they print more than one `hg`
    /// run may, again with [`FIRST_LINES_TEMPLATE`], so that a push of huge messages is
    /// reported, not a poll that fails every time.
    async fn read_changesets(
        &self,
        revset: &str,
        nodes: &[(&str, &[&str])],
    ) -> Result<Vec<Changeset>, HgError> {
        match self.log(revset, TEMPLATE, nodes).await {
            Err(HgError::Run {
                source: ProcessError::TooMuchOutput { .. },
                ..
            }) => {
                tracing::warn!(
                    mirror = %self.repo.display(),
                    "the new changesets' messages are too large together; reading their first lines only"
                );
                parse_changesets(&self.log(revset, FIRST_LINES_TEMPLATE, nodes).await?)
            }
            out => parse_changesets(&out?),
        }
    }

    /// `hg log -r REVSET -T TEMPLATE` on the mirror, the revset's `polldnodes(NAME)`
    /// being the named lists of `nodes` (written to a file hg reads: thousands of hashes
    /// do not fit in one argument). Every node was checked by [`crate::heads::is_node`].
    async fn log(
        &self,
        revset: &str,
        template: &str,
        nodes: &[(&str, &[&str])],
    ) -> Result<Vec<u8>, HgError> {
        let hg = self.hg().await?;
        let lists: serde_json::Map<String, serde_json::Value> = nodes
            .iter()
            .map(|(name, list)| ((*name).to_owned(), serde_json::json!(list)))
            .collect();
        let file = self.dir.join("nodes.json");
        let text = serde_json::to_vec(&lists).map_err(|e| HgError::mirror(&file, e.into()))?;
        tokio::fs::write(&file, text)
            .await
            .map_err(|e| HgError::mirror(&file, e))?;
        let args: Vec<OsString> = vec![
            "log".into(),
            "--config".into(),
            format!("polld.nodes={}", file.display()).into(),
            "-R".into(),
            self.repo.clone().into(),
            "--hidden".into(),
            "-r".into(),
            revset.into(),
            "-T".into(),
            template.into(),
        ];
        hg.run(Invocation {
            command: "log",
            args,
            timeout: self.timeout,
            secret_rc: None,
        })
        .await
    }
}

fn parse_changesets(out: &[u8]) -> Result<Vec<Changeset>, HgError> {
    let bad = |detail: String| HgError::Output {
        command: "log",
        detail,
    };
    let fields: Vec<String> = out
        .split(|&b| b == 0)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect();
    // Every field is NUL-terminated: the last piece is what follows the last NUL.
    let Some((rest, complete)) = fields.split_last() else {
        return Ok(Vec::new());
    };
    if !rest.is_empty() || complete.len() % FIELDS != 0 {
        return Err(bad(format!(
            "{} fields, not a multiple of {FIELDS}",
            complete.len()
        )));
    }
    complete
        .chunks(FIELDS)
        .map(|f| {
            // Nodes go into later commands and revsets: nodes and nothing else.
            let parents_ok = [&f[4], &f[5]].iter().all(|p| p.is_empty() || is_node(p));
            if !is_node(&f[0]) || !parents_ok {
                return Err(bad(format!(
                    "node {:?} or its parents are not 40 hex digits",
                    f[0]
                )));
            }
            let when = f[3]
                .split(' ')
                .next()
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| bad(format!("date {:?}", f[3])))?;
            let mut files: Vec<String> = f[6..9]
                .iter()
                .flat_map(|list| list.split('\n'))
                .filter(|path| !path.is_empty())
                .map(str::to_owned)
                .collect();
            files.sort();
            files.dedup();
            Ok(Changeset {
                node: f[0].clone(),
                branch: f[1].clone(),
                author: f[2].clone(),
                when,
                parents: [&f[4], &f[5]]
                    .into_iter()
                    .filter(|p| p.as_str() != NULL_NODE && !p.is_empty())
                    .cloned()
                    .collect(),
                files,
                desc: f[9].trim_end().to_owned(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nul_separated_changesets() {
        let one = format!(
            "{n}\0default\0Ada <a@x>\01700000000 -3600\0{p}\0{NULL_NODE}\0b\na\0c\0\0Msg\n\nbody  \n\0",
            n = "a".repeat(40),
            p = "b".repeat(40)
        );
        let parsed = parse_changesets(one.as_bytes()).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].files, ["a", "b", "c"]);
        assert_eq!(parsed[0].parents, ["b".repeat(40)]);
        assert_eq!(parsed[0].when, 1_700_000_000);
        assert_eq!(parsed[0].desc, "Msg\n\nbody");
        assert!(parse_changesets(b"").unwrap().is_empty());
        assert!(parse_changesets(b"x\0y\0").is_err());
        assert!(parse_changesets(b"trailing").is_err());
    }
}
