//! Running a VCS client: the one way a backend starts a process.
//!
//! Every child
//! - is started from an argument vector, never through a shell;
//! - gets a scrubbed environment: nothing of the daemon's passes but what a VCS client
//!   needs ([`INHERITED`]: the path, home, locale, time zone, temp dir, ssh agent,
//!   proxies and CA bundle), plus what the backend sets itself. So `POLLD_TOKEN`, a
//!   sink's secret or another poller's `password_env` never reaches `svn`, `hg` or the
//!   `ssh` they start;
//! - runs in its own process group, killed whole (an `ssh` grandchild included) when
//!   its deadline passes and when the caller stops waiting for it (the future is
//!   dropped: a poll abandoned at shutdown);
//! - has its output read up to a byte cap: a client that prints without end is killed
//!   and the run fails, instead of growing the daemon's memory. stderr is kept up to
//!   [`STDERR_CAP`] for the error message and the rest is read and dropped.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The variables a child inherits from the daemon's environment, if set.
pub const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "SSH_AUTH_SOCK",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// How much of stderr is kept: enough for any client's error message.
pub const STDERR_CAP: usize = 64 * 1024;

/// One run of a program, described before it starts.
#[derive(Debug, Clone)]
pub struct Command {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    max_stdout: usize,
}

/// What a finished run printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    /// At most [`STDERR_CAP`] bytes.
    pub stderr: Vec<u8>,
}

/// Why a run did not finish with an exit status.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program}` did not finish within {}; it was killed", humantime::format_duration(*after))]
    Timeout { program: String, after: Duration },
    #[error("`{program}` printed more than {limit} bytes; it was killed")]
    TooMuchOutput { program: String, limit: usize },
    #[error("reading from `{program}`: {source}")]
    Io {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

impl Command {
    /// A run of `program` with no arguments, a 2-minute deadline and a 64 MiB cap on
    /// what it prints.
    pub fn new(program: impl AsRef<OsStr>) -> Command {
        Command {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            current_dir: None,
            stdin: None,
            timeout: Duration::from_secs(120),
            max_stdout: 64 * 1024 * 1024,
        }
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Command {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(mut self, args: I) -> Command {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets a variable for the child, on top of the [`INHERITED`] ones.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Command {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Command {
        self.current_dir = Some(dir.into());
        self
    }

    /// Bytes written to the child's stdin (then closed): how a password reaches a
    /// client without appearing on its command line. Without it, stdin is `/dev/null`.
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Command {
        self.stdin = Some(bytes.into());
        self
    }

    /// The deadline for the whole run, from start to exit.
    pub fn timeout(mut self, timeout: Duration) -> Command {
        self.timeout = timeout;
        self
    }

    /// The most the child may print on stdout before it is killed.
    pub fn max_stdout(mut self, bytes: usize) -> Command {
        self.max_stdout = bytes;
        self
    }

    /// Runs the program to its end (or its deadline, or its output cap).
    pub async fn output(self) -> Result<Output, ProcessError> {
        let program = self.program.to_string_lossy().into_owned();
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|key| Some((key, std::env::var_os(key)?))),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
        // From here on, leaving this function early kills the whole group.
        let _group = GroupKill(child.id());
        let io = |source| ProcessError::Io {
            program: program.clone(),
            source,
        };
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let input = self.stdin;
        let run = async {
            let feed = async {
                if let (Some(mut pipe), Some(bytes)) = (stdin, input) {
                    // A write error means the child exited early: its exit status and
                    // stderr say why.
                    let _ = pipe.write_all(&bytes).await;
                }
                Ok::<(), ProcessError>(())
            };
            let out = async {
                match stdout {
                    Some(pipe) => read_capped(pipe, self.max_stdout)
                        .await
                        .map_err(io)?
                        .ok_or_else(|| ProcessError::TooMuchOutput {
                            program: program.clone(),
                            limit: self.max_stdout,
                        }),
                    None => Ok(Vec::new()),
                }
            };
            let err = async {
                match stderr {
                    Some(pipe) => read_keeping(pipe, STDERR_CAP).await.map_err(io),
                    None => Ok(Vec::new()),
                }
            };
            let ((), stdout, stderr) = tokio::try_join!(feed, out, err)?;
            let status = child.wait().await.map_err(io)?;
            Ok(Output {
                status,
                stdout,
                stderr,
            })
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(result) => result,
            Err(_) => Err(ProcessError::Timeout {
                program,
                after: self.timeout,
            }),
        }
    }
}

/// How much of a client's stderr goes into an error message.
pub const STDERR_EXCERPT: usize = 2000;

/// A client's stderr as it goes into an error: decoded lossily, one line (its lines
/// trimmed and joined with `; `), and only its last [`STDERR_EXCERPT`] bytes, since
/// clients print the root cause last (`svn: E170001: ...`, `abort: ...`).
pub fn stderr_excerpt(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        return "no message on stderr".to_owned();
    }
    if joined.len() <= STDERR_EXCERPT {
        return joined;
    }
    let mut start = joined.len() - STDERR_EXCERPT;
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    format!("[...] {}", &joined[start..])
}

/// Reads all of `pipe`, or `None` as soon as it has sent more than `cap` bytes.
async fn read_capped(pipe: impl AsyncRead + Unpin, cap: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    pipe.take(limit).read_to_end(&mut bytes).await?;
    Ok((bytes.len() <= cap).then_some(bytes))
}

/// Reads all of `pipe`, keeping only the first `cap` bytes.
async fn read_keeping(mut pipe: impl AsyncRead + Unpin, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = pipe.read(&mut chunk).await?;
        if read == 0 {
            return Ok(kept);
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..read.min(room)]);
    }
}

/// Kills the process group a child leads when dropped, unless the child was reaped.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok())
            && pid > 0
        {
            // SAFETY: kill(2) on the group our child leads (process_group(0)). If the
            // group is already gone this is a harmless ESRCH.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn runs_with_a_scrubbed_environment_and_stdin() {
        // Any variable of the test's own environment that a child should not see
        // (cargo sets several for a test run).
        let (private, _) = std::env::vars()
            .find(|(key, _)| !INHERITED.contains(&key.as_str()))
            .expect("the test process has a variable outside the inherited list");
        let output = Command::new("sh")
            .args(["-c", "cat; env"])
            .env("EXTRA", "yes")
            .stdin("from stdin\n")
            .output()
            .await
            .unwrap();
        assert!(output.status.success());
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.starts_with("from stdin\n"), "{text}");
        assert!(text.contains("EXTRA=yes"), "{text}");
        assert!(
            !text.contains(&format!("\n{private}=")),
            "{private} leaked: {text}"
        );
    }

    #[tokio::test]
    async fn a_deadline_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("grandchild-ran");
        let started = Instant::now();
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let error = Command::new("sh")
            .args(["-c", &script])
            .timeout(Duration::from_millis(300))
            .output()
            .await
            .unwrap_err();
        assert!(matches!(error, ProcessError::Timeout { .. }), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists(), "the grandchild outlived the deadline");
    }

    #[test]
    fn stderr_is_one_bounded_line_ending_with_the_cause() {
        assert_eq!(
            stderr_excerpt(
                b"svn: E170013: Unable to connect\n  svn: E170001: Password incorrect\n\n"
            ),
            "svn: E170013: Unable to connect; svn: E170001: Password incorrect"
        );
        assert_eq!(stderr_excerpt(b"  \n"), "no message on stderr");
        let long = format!("{}abort: the cause", "é".repeat(3000));
        let excerpt = stderr_excerpt(long.as_bytes());
        assert!(excerpt.starts_with("[...] ") && excerpt.ends_with("abort: the cause"));
        assert!(excerpt.len() <= STDERR_EXCERPT + 6);
    }

    #[tokio::test]
    async fn endless_output_is_cut_off() {
        let error = Command::new("yes")
            .max_stdout(1024 * 1024)
            .output()
            .await
            .unwrap_err();
        assert!(
            matches!(error, ProcessError::TooMuchOutput { .. }),
            "{error}"
        );
        let output = Command::new("sh")
            .args(["-c", "yes error | head -c 1000000 >&2; echo done"])
            .output()
            .await
            .unwrap();
        assert_eq!(output.stdout, b"done\n");
        assert_eq!(output.stderr.len(), STDERR_CAP);
    }
}
