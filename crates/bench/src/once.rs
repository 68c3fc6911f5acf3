//! `polld once` over N `git://` pollers that find nothing (state as after a restart),
//! next to N `git ls-remote` processes: whole processes, start-up included, as a cron
//! job or a CI step would run them.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use polld_backend::Cursor;

use crate::daemon::seed_state;
use crate::fixture::{GitDaemon, Repos};
use crate::procs;
use crate::util::children_usage;

/// Runs of `polld once` measured (after one unmeasured run).
const RUNS: u32 = 5;

#[derive(Debug, Clone, Default)]
pub struct OnceResult {
    pub pollers: usize,
    /// CPU and elapsed time of one `polld once` with every poller.
    pub polld_cpu: Duration,
    pub polld_wall: Duration,
    /// The same with one poller: mostly start-up.
    pub single_cpu: Duration,
    pub single_wall: Duration,
    /// CPU and elapsed time of `pollers` `git ls-remote` processes, one after another.
    pub ls_remote_cpu: Duration,
    pub ls_remote_wall: Duration,
}

impl OnceResult {
    /// `git ls-remote`'s CPU over polld's: how many times cheaper `polld once` is.
    pub fn ratio(&self) -> f64 {
        self.ls_remote_cpu.as_secs_f64() / self.polld_cpu.as_secs_f64().max(1e-9)
    }
}

pub struct OncePlan<'a> {
    pub polld: &'a Path,
    pub root: &'a Path,
    pub repos: &'a Repos,
    pub gitd: &'a GitDaemon,
    pub cursor: &'a Cursor,
    pub mirror: &'a Path,
    pub pollers: usize,
    pub concurrency: usize,
}

pub fn run(plan: &OncePlan<'_>) -> Result<OnceResult> {
    let n = plan.pollers.min(plan.repos.names.len());
    let names: Vec<String> = plan.repos.names[..n]
        .iter()
        .map(|r| r.trim_end_matches(".git").to_owned())
        .collect();
    let all = configure(plan, &plan.root.join("once"), &names)?;
    let single = configure(plan, &plan.root.join("once-single"), &names[..1])?;
    crate::progress(&format!("polld once: {n} pollers and 1, {RUNS} runs each"));
    let (polld_cpu, polld_wall) = measure_once(plan.polld, &all)?;
    let (single_cpu, single_wall) = measure_once(plan.polld, &single)?;

    crate::progress(&format!("git ls-remote: {n} processes"));
    let urls: Vec<String> = plan.repos.names[..n]
        .iter()
        .map(|r| plan.gitd.url(r))
        .collect();
    let stats = procs::measure(&urls, 1, 1, |url| {
        procs::ls_remote_poll(url, &[], &plan.repos.commit)
    });
    if stats.failed > 0 {
        bail!("git ls-remote failed: {:?}", stats.errors);
    }
    Ok(OnceResult {
        pollers: n,
        polld_cpu,
        polld_wall,
        single_cpu,
        single_wall,
        ls_remote_cpu: stats.cpu,
        ls_remote_wall: stats.wall,
    })
}

/// A config of `names`' pollers in `dir`, their state seeded; the config's path.
fn configure(plan: &OncePlan<'_>, dir: &Path, names: &[String]) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    seed_state(&dir.join("state"), names, plan.cursor, plan.mirror)?;
    let mut config = format!(
        "[daemon]\nstate_dir = \"state\"\nmax_concurrent_polls = {}\n\n\
         [sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n",
        plan.concurrency
    );
    for name in names {
        config.push_str(&format!(
            "\n[[poller]]\nname = \"{name}\"\ntype = \"git\"\nrepo = \"{}\"\nbranches = [\"main\"]\n",
            plan.gitd.url(&format!("{name}.git"))
        ));
    }
    let path = dir.join("pollers.toml");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// One unmeasured run, then the mean CPU (RUSAGE_CHILDREN) and elapsed time of
/// [`RUNS`] runs of `polld --config <config> once`.
fn measure_once(polld: &Path, config: &Path) -> Result<(Duration, Duration)> {
    let run = || -> Result<()> {
        let output = Command::new(polld)
            .arg("--config")
            .arg(config)
            .arg("once")
            .current_dir(config.parent().unwrap_or(Path::new(".")))
            .env("POLLD_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", polld.display()))?;
        if !output.status.success() {
            bail!(
                "polld once failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    };
    run()?;
    let before = children_usage().cpu;
    let started = Instant::now();
    for _ in 0..RUNS {
        run()?;
    }
    Ok((
        children_usage().cpu.saturating_sub(before) / RUNS,
        started.elapsed() / RUNS,
    ))
}
