//! Is this the host key we know for this host? OpenSSH's `known_hosts` rules, for the
//! in-process ssh client.
//!
//! russh's own check matches exact names only; OpenSSH users' files also hold globs
//! (`*.example.com`), negations (`!bad.example.com`), hashed names (`|1|salt|hash`,
//! `HashKnownHosts yes`), `@revoked` keys and tab-separated fields. Entries are parsed
//! with `ssh_key::known_hosts`; matching is written here, as `sshd(8)` describes it.
//! `@cert-authority` lines are skipped: polld does not accept host certificates.
//!
//! There is no trust on first use: a host that no file knows is refused, and so is a
//! host whose known key of the same type differs (it may be an attacker).

use std::path::{Path, PathBuf};

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::PublicKey;
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};

/// What the files say about a host's key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Known,
    Revoked,
    /// The files know another key of the same type for this host.
    Changed {
        file: PathBuf,
        line: usize,
    },
    Unknown,
}

/// `known_hosts` files and their entries, read once per connection.
pub(crate) struct KnownHosts {
    entries: Vec<(PathBuf, usize, Entry)>,
}

impl KnownHosts {
    /// The entries of `files` (missing files are empty; unreadable lines are skipped).
    pub(crate) fn read(files: &[PathBuf]) -> KnownHosts {
        let mut entries = Vec::new();
        for file in files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for (number, line) in text.lines().enumerate() {
                let line = line.replace('\t', " ");
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Ok(entry) = line.parse::<Entry>() {
                    entries.push((file.clone(), number + 1, entry));
                }
            }
        }
        KnownHosts { entries }
    }

    /// The default files: the user's and the system's.
    pub(crate) fn default_files() -> Vec<PathBuf> {
        let mut files = Vec::new();
        if let Some(home) = std::env::var_os("HOME") {
            files.push(Path::new(&home).join(".ssh/known_hosts"));
        }
        files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
        files
    }

    /// The verdict on `key` for `host` (a name or address as in the URL) on `port`.
    pub(crate) fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = host_name(host, port);
        let mut changed = None;
        let mut known = false;
        for (file, line, entry) in &self.entries {
            if !matches_host(entry.host_patterns(), &name) {
                continue;
            }
            let same_key = entry.public_key().key_data() == key.key_data();
            match entry.marker() {
                Some(Marker::Revoked) if same_key => return Verdict::Revoked,
                Some(_) => {}
                None if same_key => known = true,
                None if entry.public_key().algorithm() == key.algorithm() => {
                    changed.get_or_insert((file.clone(), *line));
                }
                None => {}
            }
        }
        match (known, changed) {
            (true, _) => Verdict::Known,
            (false, Some((file, line))) => Verdict::Changed { file, line },
            (false, None) => Verdict::Unknown,
        }
    }

    /// The key algorithms these files know for the host, to offer first: the server then
    /// presents a key that can be checked (OpenSSH's `order_hostkeyalgs`).
    pub(crate) fn algorithms(&self, host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
        let name = host_name(host, port);
        let mut algorithms = Vec::new();
        for (_, _, entry) in &self.entries {
            if entry.marker().is_none() && matches_host(entry.host_patterns(), &name) {
                let algorithm = entry.public_key().algorithm();
                if !algorithms.contains(&algorithm) {
                    algorithms.push(algorithm);
                }
            }
        }
        algorithms
    }
}

/// How known_hosts names a host: `host`, or `[host]:port` off port 22.
fn host_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

fn matches_host(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.update(name.as_bytes());
            mac.verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for pattern in patterns {
                let pattern = pattern.to_ascii_lowercase();
                match pattern.strip_prefix('!') {
                    Some(negated) if glob(negated, name) => return false,
                    Some(_) => {}
                    None => matched |= glob(&pattern, name),
                }
            }
            matched
        }
    }
}

/// OpenSSH's `match_pattern`: `*` any run of characters, `?` any one.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new ed25519 public key, as a known_hosts key field.
    fn new_key(dir: &Path, name: &str) -> String {
        let path = dir.join(name);
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob("*.example.com", "git.example.com"));
        assert!(glob("git?.example.com", "git1.example.com"));
        assert!(!glob("*.example.com", "example.com"));
        assert!(glob("[127.0.0.*]:2222", "[127.0.0.1]:2222"));
        assert!(glob("*", ""));
    }

    #[test]
    fn matches_names_ports_globs_negations_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (new_key(dir.path(), "one"), new_key(dir.path(), "two"));
        // A hashed line, as `ssh-keygen -H` writes them (`HashKnownHosts yes`).
        let hashed = dir.path().join("hashed");
        std::fs::write(&hashed, format!("hashed.example.com {one}\n")).unwrap();
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-H", "-f"])
            .arg(&hashed)
            .status()
            .unwrap();
        assert!(status.success());
        let hashed_line = std::fs::read_to_string(&hashed).unwrap();
        assert!(hashed_line.starts_with("|1|"), "{hashed_line}");
        let file = dir.path().join("known_hosts");
        std::fs::write(
            &file,
            format!(
                "# comment\ngit.example.com {one}\n[git.example.com]:2222\t{two}\n\
                 *.corp,!bad.corp {one}\n{hashed_line}\
                 @revoked revoked.example.com {one}\nnot a valid line\n"
            ),
        )
        .unwrap();
        let files = KnownHosts::read(&[file, dir.path().join("missing")]);
        let (one, two) = (key(&one), key(&two));
        assert_eq!(files.check("git.example.com", 22, &one), Verdict::Known);
        assert_eq!(files.check("GIT.example.com", 22, &one), Verdict::Known);
        assert_eq!(files.check("git.example.com", 2222, &two), Verdict::Known);
        assert!(matches!(
            files.check("git.example.com", 22, &two),
            Verdict::Changed { line: 2, .. }
        ));
        assert_eq!(files.check("a.corp", 22, &one), Verdict::Known);
        assert_eq!(files.check("bad.corp", 22, &one), Verdict::Unknown);
        assert_eq!(files.check("hashed.example.com", 22, &one), Verdict::Known);
        assert_eq!(
            files.check("revoked.example.com", 22, &one),
            Verdict::Revoked
        );
        assert_eq!(
            files.check("stranger.example.com", 22, &one),
            Verdict::Unknown
        );
        assert_eq!(files.algorithms("git.example.com", 22).len(), 1);
    }
}
