//! The `polld` command: parses the command line, loads the config, and hands over to
//! the core. The plugins (backends, sinks, stores) are registered in [`plugins`], one
//! line each, and handed to [`main`]; a build with more plugins (the README's guides)
//! is a `main` that registers more.

mod control;
mod http_server;
mod logging;
mod memory;
mod notify;
mod page;
mod plugins;
mod status;

pub use plugins::plugins;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use polld_core::Plugins;
use polld_core::config::{self, Config};
use polld_core::daemon::{self, Control, ReloadSummary};
use polld_core::store::Access;
use tokio_util::sync::CancellationToken;

/// Watches version-control repositories and tells a CI master about every new commit.
#[derive(Parser)]
#[command(name = "polld", version, about)]
struct Cli {
    /// The config file [default: $POLLD_CONFIG, then ./pollers.toml]
    #[arg(
        short,
        long,
        global = true,
        env = "POLLD_CONFIG",
        default_value = "pollers.toml",
        hide_default_value = true,
        hide_env = true
    )]
    config: PathBuf,
    /// How log lines on stderr look (filter them with $POLLD_LOG)
    #[arg(long, global = true, value_enum, default_value_t = logging::Format::Text)]
    log_format: logging::Format,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default)
    Run,
    /// Validate the config and print one line per poller
    Check,
    /// Poll the named pollers (all when none) once, deliver what they find, and exit
    Once {
        /// Poller names
        names: Vec<String>,
    },
    /// Show each poller's cursor, last poll, last error and queued changes
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Put dead-lettered changes back in the delivery queue
    Redeliver {
        /// Only this poller's dead letters
        #[arg(long)]
        poller: Option<String>,
    },
    /// Copy the state directory's store (cursors, queued changes, dead letters) into
    /// the empty database [store] url_env names
    MigrateStore,
    /// Print the shell completion script for bash, zsh or fish (needs no config)
    Completions { shell: clap_complete::Shell },
    /// Print the man page, roff (needs no config): `polld man > polld.1`
    Man,
    /// Ask the running daemon to poll every poller of these repositories now (for svn,
    /// hg and git servers' hooks)
    Notify {
        /// Repository URLs or paths, matched as `POST /notify?repo=` matches them
        #[arg(required = true)]
        urls: Vec<String>,
    },
}

/// Exit codes, as the contract defines them.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// The `polld` command, with these plugins.
pub fn main(plugins: Plugins) -> ExitCode {
    // Before any thread or file exists: everything under the state dir is owner-only,
    // and the allocator keeps few arenas.
    polld_core::private::restrict_umask();
    memory::limit_arenas();
    let cli = Cli::parse();
    // What describes the command line itself needs no config.
    match &cli.command {
        Some(Command::Completions { shell }) => return print_completions(*shell),
        Some(Command::Man) => return print_man_page(),
        _ => {}
    }
    logging::init(cli.log_format);
    let config_path = cli.config.clone();
    let loader_plugins = plugins.clone();
    let load: control::Loader = Arc::new(move || config::load(&config_path, &loader_plugins));
    let config = match load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("polld: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    for poller in &config.pollers {
        if polld_backend::redact::has_userinfo(&poller.repo) {
            tracing::warn!(poller = %poller.name, repo = %poller.display_repo(), "repo URL carries credentials; prefer *_env or *_file keys (they are never shown or stored)");
        }
    }
    let command = cli.command.unwrap_or(Command::Run);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers_for(&command, &config))
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("polld: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(dispatch(command, config, plugins, load));
    // A poll abandoned at shutdown may still hold a blocking thread: don't wait for it.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("polld: {error:#}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// The completion script for `shell`, generated from the command line's definition.
fn print_completions(shell: clap_complete::Shell) -> ExitCode {
    clap_complete::generate(shell, &mut Cli::command(), "polld", &mut std::io::stdout());
    ExitCode::SUCCESS
}

/// The man page, `polld(1)`, generated from the command line's definition.
fn print_man_page() -> ExitCode {
    let mut page = Vec::new();
    let rendered = clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &page));
    match rendered {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("polld: cannot write the man page: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Threads for the async runtime: one per core for the daemon; for `once`, no more than
/// it has pollers to poll (one poller: one thread, a quick start); one for the commands
/// that only read the store. (libgit2's and the VCS clients' blocking work runs on
/// tokio's separate blocking pool either way.)
fn workers_for(command: &Command, config: &Config) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    match command {
        Command::Run => cores,
        Command::Once { names } => {
            let pollers = if names.is_empty() {
                config.pollers.len()
            } else {
                names.len()
            };
            cores.min(pollers).max(1)
        }
        _ => 1,
    }
}

async fn dispatch(
    command: Command,
    config: Config,
    plugins: Plugins,
    load: control::Loader,
) -> anyhow::Result<ExitCode> {
    match command {
        // `run` keeps the config itself: with 10,000 pollers a copy is megabytes.
        Command::Run => run(config, plugins, load).await,
        Command::Check => {
            status::print_check(&config, &plugins);
            Ok(ExitCode::SUCCESS)
        }
        Command::Once { names } => once(&config, &plugins, &names).await,
        Command::Status { json } => status::print_status(&config, &plugins, json).await,
        Command::Notify { urls } => Ok(notify::notify(&config, &urls).await),
        Command::Completions { shell } => Ok(print_completions(shell)),
        Command::Man => Ok(print_man_page()),
        Command::MigrateStore => {
            let migrated = polld_core::migrate::migrate_store(&config, &plugins).await?;
            println!(
                "copied {} cursor(s), {} queued change(s) and {} dead letter(s) into the database",
                migrated.cursors, migrated.queued, migrated.dead_letters
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Redeliver { poller } => {
            let store = daemon::open_configured_store(&config, &plugins, Access::Shared).await?;
            let moved = store.redeliver(poller.as_deref()).await?;
            println!(
                "re-queued {moved} dead-lettered change(s); `polld run` or `polld once` delivers them"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run(config: Config, plugins: Plugins, load: control::Loader) -> anyhow::Result<ExitCode> {
    let token = match &config.daemon.token_env {
        Some(variable) => match std::env::var(variable) {
            Ok(token) if !token.is_empty() => Some(token),
            _ => {
                eprintln!(
                    "polld: token_env names {variable}, which is not set or empty; refusing to serve the control endpoint without its token"
                );
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        },
        None => None,
    };
    let mut hooks = control::HookSecrets::new();
    for (forge, source) in &config.hooks.forges {
        let secret = source
            .read()
            .map_err(|why| format!("[hooks] {forge}: {why}"))
            .and_then(|bytes| {
                polld_hooks::Secret::new(bytes).map_err(|e| format!("[hooks] {forge}: {e}"))
            })
            .and_then(|secret| {
                let forge = forge
                    .parse::<polld_hooks::Forge>()
                    .map_err(|e| e.to_string())?;
                Ok((forge, secret))
            });
        match secret {
            Ok((forge, secret)) => {
                hooks.insert(forge, secret);
            }
            Err(why) => {
                eprintln!(
                    "polld: {why}; refusing to serve the forge's endpoint without its secret"
                );
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        }
    }
    // Listen for signals before anything starts, so one sent while polld is still
    // starting is handled (a SIGTERM stops it cleanly, a SIGHUP reloads once running)
    // instead of killing it.
    let signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => anyhow::bail!("cannot install signal handlers: {error}"),
    };
    let listen = config.daemon.listen;
    let shutdown = CancellationToken::new();
    tokio::spawn(memory::trim_periodically(shutdown.clone()));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let daemon = tokio::spawn(daemon::run(
        config,
        plugins,
        shutdown.clone(),
        move |control| {
            let _ = started_tx.send(control);
        },
    ));
    let Ok(control) = started_rx.await else {
        // The daemon stopped before it started: its error says why.
        daemon.await.context("polld run")?.context("polld run")?;
        return Ok(ExitCode::FAILURE);
    };
    let server = match listen {
        Some(address) => {
            let served = control::serve(
                address,
                Arc::clone(&control),
                token,
                hooks,
                Arc::clone(&load),
                shutdown.clone(),
            )
            .await;
            match served {
                Ok(server) => Some(server),
                Err(error) => {
                    shutdown.cancel();
                    let _ = daemon.await;
                    anyhow::bail!("cannot listen on {address}: {error}");
                }
            }
        }
        None => None,
    };
    tokio::spawn(signals.handle(shutdown.clone(), control, load));
    daemon.await.context("polld run")?.context("polld run")?;
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads the config file again and switches the running daemon to it; a config that
/// does not load is refused and the running one stays.
async fn reload(control: &Control, load: &control::Loader) -> Result<ReloadSummary, String> {
    let load = Arc::clone(load);
    let loaded = tokio::task::spawn_blocking(move || load())
        .await
        .map_err(|e| format!("reload failed: {e}"))?;
    let reloaded = match loaded {
        Ok(config) => control.reload(config).await.map_err(|e| e.to_string()),
        Err(error) => Err(error.to_string()),
    };
    match &reloaded {
        Ok(summary) => {
            tracing::info!(
                added = ?summary.added,
                removed = ?summary.removed,
                restarted = ?summary.restarted,
                unchanged = summary.unchanged,
                "config reloaded"
            );
            if !summary.needs_restart.is_empty() {
                tracing::warn!(sections = ?summary.needs_restart, "these settings changed but take effect only after a restart");
            }
        }
        Err(error) => tracing::error!(%error, "reload refused; the running config stays"),
    }
    reloaded
}

async fn once(config: &Config, plugins: &Plugins, names: &[String]) -> anyhow::Result<ExitCode> {
    let unknown: Vec<&str> = names
        .iter()
        .filter(|name| !config.pollers.iter().any(|p| &&p.name == name))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = config.pollers.iter().map(|p| p.name.as_str()).collect();
        eprintln!(
            "polld: no poller named {} in {}; configured: {}",
            unknown.join(", "),
            config.path.display(),
            known.join(", ")
        );
        return Ok(ExitCode::from(EXIT_USAGE));
    }
    let report = daemon::once(config, plugins, names)
        .await
        .context("polld once")?;
    if let Some(error) = &report.delivery_error {
        tracing::error!(%error, "delivery stopped; undelivered changes stay queued for the next `once` or `run`");
    }
    if report.failed.is_empty() && report.delivery_error.is_none() {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(EXIT_FAILED))
    }
}

/// SIGINT and SIGTERM stop the daemon; SIGHUP reloads its config.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn handle(
        mut self,
        shutdown: CancellationToken,
        control: Arc<Control>,
        load: control::Loader,
    ) {
        loop {
            tokio::select! {
                _ = self.interrupt.recv() => break,
                _ = self.terminate.recv() => break,
                _ = self.hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = reload(&control, &load).await;
                }
                () = shutdown.cancelled() => return,
            }
        }
        tracing::info!("stopping: no new polls; waiting for the ones in flight");
        shutdown.cancel();
    }
}
