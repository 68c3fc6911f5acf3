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
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    print!("{}", table(config, &statuses, now));
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

/// What a poller is up to, as `polld status` and the status page (`page.html`) derive
/// it from its status. The page also says `stopped` when a daemon task stopped for good,
/// which only the running daemon knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    /// The last poll failed, and none succeeded since.
    Failing,
    /// Its changes wait behind a delivery error, retried with backoff.
    BackingOff,
    Ok,
}

impl State {
    pub fn of(status: &StoredStatus) -> State {
        let succeeded_since = matches!(
            (status.last_success, status.last_poll),
            (Some(success), Some(poll)) if success >= poll
        );
        if status.last_error.is_some() && !succeeded_since {
            State::Failing
        } else if status.pending > 0 && status.last_delivery_error.is_some() {
            State::BackingOff
        } else {
            State::Ok
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            State::Failing => "failing",
            State::BackingOff => "backing off",
            State::Ok => "ok",
        }
    }
}

/// `polld status`: one aligned row per poller, trouble first (state, then dead letters,
/// then pending, then name), and a summary line.
fn table(config: &Config, statuses: &[StoredStatus], now: i64) -> String {
    let mut rows: Vec<(State, &polld_core::config::PollerConfig, &StoredStatus)> = config
        .pollers
        .iter()
        .zip(statuses)
        .map(|(poller, status)| (State::of(status), poller, status))
        .collect();
    rows.sort_by(|a, b| {
        (
            a.0,
            std::cmp::Reverse(a.2.dead_letters),
            std::cmp::Reverse(a.2.pending),
        )
            .cmp(&(
                b.0,
                std::cmp::Reverse(b.2.dead_letters),
                std::cmp::Reverse(b.2.pending),
            ))
            .then_with(|| a.1.name.cmp(&b.1.name))
    });
    let replicas = statuses.iter().any(|s| s.replica.is_some());
    let mut header = vec![
        "NAME",
        "TYPE",
        "REPO",
        "STATE",
        "LAST POLL",
        "LAST SUCCESS",
        "PENDING",
        "DEAD",
    ];
    if replicas {
        header.push("REPLICA");
    }
    header.push("LAST ERROR");
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for (state, poller, status) in &rows {
        let mut row = vec![
            poller.name.clone(),
            poller.vcs.to_owned(),
            poller.display_repo(),
            state.as_str().to_owned(),
            ago(status.last_poll, now),
            ago(status.last_success, now),
            status.pending.to_string(),
            status.dead_letters.to_string(),
        ];
        if replicas {
            row.push(status.replica.clone().unwrap_or_else(|| "-".to_owned()));
        }
        let error = match (&status.last_error, &status.last_delivery_error) {
            (Some(error), _) if *state == State::Failing => error.clone(),
            (_, Some(error)) => format!("delivery: {error}"),
            (Some(error), None) => error.clone(),
            (None, None) => "-".to_owned(),
        };
        // One line per poller, whatever a remote said.
        row.push(error.split_whitespace().collect::<Vec<_>>().join(" "));
        cells.push(row);
    }
    let columns = cells[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line += cell;
            } else {
                let pad = widths[c] - cell.chars().count();
                // Counts align right, the rest left.
                if matches!(header[c], "PENDING" | "DEAD") {
                    line += &format!("{}{cell}  ", " ".repeat(pad));
                } else {
                    line += &format!("{cell}{}  ", " ".repeat(pad));
                }
            }
        }
        out += line.trim_end();
        out.push('\n');
    }
    out += &summary(rows.iter().map(|(state, _, status)| (*state, *status)));
    out.push('\n');
    out
}

/// `12 pollers: 10 ok, 1 failing, 1 backing off; 3 pending, 1 dead letter`.
fn summary<'a>(rows: impl Iterator<Item = (State, &'a StoredStatus)>) -> String {
    let (mut total, mut ok, mut failing, mut backing_off, mut pending, mut dead) =
        (0, 0, 0, 0, 0u64, 0u64);
    for (state, status) in rows {
        total += 1;
        match state {
            State::Ok => ok += 1,
            State::Failing => failing += 1,
            State::BackingOff => backing_off += 1,
        }
        pending += status.pending;
        dead += status.dead_letters;
    }
    let mut states = vec![format!("{ok} ok")];
    if failing > 0 {
        states.push(format!("{failing} failing"));
    }
    if backing_off > 0 {
        states.push(format!("{backing_off} backing off"));
    }
    format!(
        "{total} {}: {}; {pending} pending, {dead} {}",
        if total == 1 { "poller" } else { "pollers" },
        states.join(", "),
        if dead == 1 {
            "dead letter"
        } else {
            "dead letters"
        }
    )
}

/// `never`, `42s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(unix: Option<i64>, now: i64) -> String {
    let Some(at) = unix else {
        return "never".to_owned();
    };
    let s = (now - at).max(0);
    match s {
        0..90 => format!("{s}s ago"),
        90..5400 => format!("{}m ago", (s + 30) / 60),
        5400..129_600 => format!("{}h ago", (s + 1800) / 3600),
        _ => format!("{}d ago", (s + 43_200) / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(last_poll: i64, last_success: Option<i64>, error: Option<&str>) -> StoredStatus {
        StoredStatus {
            last_poll: Some(last_poll),
            last_success,
            last_error: error.map(str::to_owned),
            ..StoredStatus::default()
        }
    }

    #[test]
    fn states_follow_the_documented_rule() {
        assert_eq!(State::of(&StoredStatus::default()), State::Ok);
        assert_eq!(State::of(&status(10, Some(10), None)), State::Ok);
        assert_eq!(State::of(&status(20, Some(10), Some("no"))), State::Failing);
        assert_eq!(State::of(&status(20, None, Some("no"))), State::Failing);
        let mut waiting = status(10, Some(10), None);
        waiting.pending = 2;
        assert_eq!(
            State::of(&waiting),
            State::Ok,
            "pending, no error: delivering"
        );
        waiting.last_delivery_error = Some("HTTP 503".to_owned());
        assert_eq!(State::of(&waiting), State::BackingOff);
    }

    #[test]
    fn summary_counts_and_pluralizes() {
        let mut dead = status(10, Some(10), None);
        dead.dead_letters = 1;
        let rows = [
            (State::Ok, &dead),
            (State::Failing, &StoredStatus::default()),
        ];
        assert_eq!(
            summary(rows.into_iter()),
            "2 pollers: 1 ok, 1 failing; 0 pending, 1 dead letter"
        );
    }

    #[test]
    fn ages_are_coarse() {
        assert_eq!(ago(None, 100), "never");
        assert_eq!(ago(Some(58), 100), "42s ago");
        assert_eq!(ago(Some(0), 300), "5m ago");
        assert_eq!(ago(Some(0), 3 * 3600), "3h ago");
        assert_eq!(ago(Some(0), 2 * 86_400), "2d ago");
    }
}
