//! What `polld check` and `polld status` print.

use std::process::ExitCode;

use polld_core::Plugins;
use polld_core::config::Config;
use polld_core::daemon::{open_configured_store, with_replicas};
use polld_core::store::{Access, StoredStatus};
use serde_json::{Value, json};

/// One line per poller: what it watches and when.
pub fn print_check(config: &Config, plugins: &Plugins) {
    for poller in &config.pollers {
        // The config was checked as it loaded, so this builds; `describe` says what the
        // backend understood of its keys.
        let watches = match plugins.backends.build(poller) {
            Ok(built) => built.describe(),
            Err(error) => error,
        };
        let timing = &poller.timing;
        let mut when = format!("every {}", humantime::format_duration(timing.interval));
        if !timing.jitter.is_zero() {
            when += &format!(
                " + {}..{} jitter",
                humantime::format_duration(timing.jitter_min),
                humantime::format_duration(timing.jitter)
            );
        }
        if !timing.at_launch {
            when += ", first poll after one interval";
        }
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            poller.name,
            poller.vcs,
            poller.display_repo(),
            when,
            watches,
            poller.filters
        );
        for (glob, why) in poller.filters.hopeless_globs() {
            eprintln!(
                "polld: warning: poller `{}`: path glob {glob:?} can never match: {why}",
                poller.name
            );
        }
    }
    eprintln!(
        "{}: ok, {} poller(s)",
        config.path.display(),
        config.pollers.len()
    );
}

pub async fn print_status(
    config: &Config,
    plugins: &Plugins,
    as_json: bool,
) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = config.pollers.iter().map(|p| p.name.clone()).collect();
    // A state directory that does not exist yet means nothing was polled: `status`
    // reads, it does not create.
    let statuses = if config.daemon.state_dir.exists() || config.store.url_env.is_some() {
        let store = open_configured_store(config, plugins, Access::Shared).await?;
        let mut statuses = store.status(&names).await?;
        with_replicas(store.as_ref(), &names, &mut statuses).await?;
        statuses
    } else {
        vec![StoredStatus::default(); names.len()]
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json(config, &statuses))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (poller, status) in config.pollers.iter().zip(&statuses) {
        println!("{} ({}) {}", poller.name, poller.vcs, poller.display_repo());
        let cursor = status
            .cursor
            .as_ref()
            .map_or("none (not polled yet)".to_owned(), |c| c.0.to_string());
        println!("  cursor:       {cursor}");
        println!("  last poll:    {}", time(status.last_poll));
        println!("  last success: {}", time(status.last_success));
        println!(
            "  last error:   {}",
            status.last_error.as_deref().unwrap_or("-")
        );
        println!("  pending:      {}", status.pending);
        println!("  dead letters: {}", status.dead_letters);
        if let Some(replica) = &status.replica {
            println!("  replica:      {replica}");
        }
        if let Some(error) = &status.last_delivery_error {
            println!("  delivery:     {error}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `{"pollers": [...]}`: what `status --json` prints and `GET /status` answers.
pub fn json(config: &Config, statuses: &[StoredStatus]) -> Value {
    let pollers: Vec<Value> = config
        .pollers
        .iter()
        .zip(statuses)
        .map(|(poller, status)| {
            json!({
                "name": poller.name,
                "type": poller.vcs,
                "repo": poller.display_repo(),
                "cursor": status.cursor,
                "last_poll": status.last_poll,
                "last_success": status.last_success,
                "last_error": status.last_error,
                "pending": status.pending,
                "dead_letters": status.dead_letters,
                "last_delivery_error": status.last_delivery_error,
                "replica": status.replica,
            })
        })
        .collect();
    json!({ "pollers": pollers })
}

fn time(unix: Option<i64>) -> String {
    match unix.and_then(|s| u64::try_from(s).ok()) {
        Some(seconds) => {
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        None => "never".to_owned(),
    }
}
