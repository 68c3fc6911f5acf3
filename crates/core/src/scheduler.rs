//! When each poller polls.
//!
//! Buildbot's semantics, on one timer structure for all pollers: each poller has a grid
//! of slots `interval` apart from the scheduler's start; each cycle's poll happens at the
//! slot plus a jitter drawn afresh (so jitter never accumulates). A poller never polls
//! twice at once: a poll that falls due, or is forced, while one runs is coalesced into
//! a single rerun right after it. A failed poll is retried with exponential backoff,
//! capped at the interval, and each failure streak is logged once.
//!
//! Idle pollers cost one entry in a [`DelayQueue`]: the process wakes only when a poll
//! is due. Polls run as tasks bounded by one semaphore (`max_concurrent_polls`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::backoff;
use crate::config::Timing;
use crate::supervise::catch_panic;

/// The first retry after a failed poll waits this long; each further one twice as long,
/// up to the poller's interval.
pub const RETRY_BASE: Duration = Duration::from_secs(5);

/// The timer queue holds no deadline further away than this (its wheel spans about two
/// years). A poll due later (an interval of `"100y"` for a push-only poller) is
/// reached by waking up at the horizon and looking again.
const TIMER_HORIZON: Duration = Duration::from_secs(365 * 24 * 3600);

/// How a poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polled {
    Done,
    /// The poller reported part of what it found (a limit per poll): poll again at once.
    More,
}

/// Whatever actually polls: the [`crate::engine::Engine`] in polld, a recorder in tests.
#[async_trait]
pub trait PollTarget: Send + Sync + 'static {
    /// Polls the named poller once. The error is the cause, logged once per streak.
    async fn poll(&self, poller: &str) -> Result<Polled, String>;
}

/// One poller as the scheduler knows it.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub name: String,
    pub timing: Timing,
    /// The repo as it may be logged (credentials stripped).
    pub repo: String,
    /// Where in each interval this poller's regular polls fall (see [`spread`]).
    pub offset: Duration,
    /// The remote's host, whose polls at once are capped; `None` for a local path.
    pub host: Option<String>,
}

/// A stable offset in `0..interval` derived from `name`, as Jenkins' `H` does: pollers
/// with the same interval spread evenly over it instead of all firing in the same
/// second, and a poller keeps its phase across restarts.
pub fn spread(name: &str, interval: Duration) -> Duration {
    // FNV-1a: tiny, stable across platforms and releases (unlike std's hasher).
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    let nanos = interval.as_nanos().max(1);
    Duration::from_nanos((u128::from(hash) % nanos) as u64)
}

/// Talks to a running scheduler: forced polls and reloads.
#[derive(Clone)]
pub struct SchedulerHandle {
    commands: mpsc::UnboundedSender<Command>,
    names: Arc<RwLock<HashSet<String>>>,
}

impl SchedulerHandle {
    /// Polls `poller` now (or right after its running poll). False if there is no such poller.
    pub fn force(&self, poller: &str) -> bool {
        let known = self
            .names
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(poller);
        known
            && self
                .commands
                .send(Command::Force(poller.to_owned()))
                .is_ok()
    }

    /// Polls every poller now.
    pub fn force_all(&self) {
        let _ = self.commands.send(Command::ForceAll);
    }

    /// Replaces the schedule: pollers not in `pollers` stop, new ones start as at launch,
    /// and those named in `restart` start over as at launch with their new timing. The
    /// rest keep their place on the grid.
    pub fn reload(&self, pollers: Vec<Scheduled>, restart: HashSet<String>) {
        *self.names.write().unwrap_or_else(|p| p.into_inner()) =
            pollers.iter().map(|p| p.name.clone()).collect();
        let _ = self.commands.send(Command::Reload { pollers, restart });
    }
}

enum Command {
    Force(String),
    ForceAll,
    Finished(String, Result<Polled, String>),
    Reload {
        pollers: Vec<Scheduled>,
        restart: HashSet<String>,
    },
}

/// One poller's place in the schedule.
struct Slot {
    timing: Timing,
    repo: String,
    /// The grid point of the next regular poll.
    next_slot: Instant,
    /// `next_slot` plus this cycle's jitter: when the next regular poll is due.
    next_due: Instant,
    /// Polls at once against this poller's host (shared by the host's pollers).
    host_permits: Option<Arc<Semaphore>>,
    /// When the failed last poll is retried, if before `next_due`.
    retry_at: Option<Instant>,
    /// The poller's entry in the timer queue: due at the earlier of `next_due` and
    /// `retry_at`, or at the horizon.
    timer: Key,
    failures: u32,
}

impl Slot {
    /// When the timer should fire next.
    fn wake_at(&self, now: Instant) -> Instant {
        let due = self
            .retry_at
            .map_or(self.next_due, |at| at.min(self.next_due));
        due.min(now + TIMER_HORIZON)
    }
}

/// A poll in flight. Kept apart from the [`Slot`]s because it outlives them: a poller
/// removed, re-added or restarted by reloads while it polls must not poll again until
/// that poll ends, and a rerun asked for meanwhile must still happen.
#[derive(Debug, Default)]
struct Running {
    rerun: bool,
}

pub struct Scheduler {
    slots: HashMap<String, Slot>,
    running: HashMap<String, Running>,
    timers: DelayQueue<String>,
    commands: mpsc::UnboundedReceiver<Command>,
    sender: mpsc::UnboundedSender<Command>,
    handle: SchedulerHandle,
    permits: Arc<Semaphore>,
    /// One semaphore per remote host, `max_polls_per_host` permits each: a slow or
    /// hostile host holds at most that many of `permits`, whatever its pollers do.
    hosts: HashMap<String, Arc<Semaphore>>,
    max_polls_per_host: usize,
    polls: JoinSet<()>,
}

impl Scheduler {
    /// A scheduler for the named pollers, starting now: at most `max_concurrent_polls`
    /// polls at once, at most `max_polls_per_host` of them against one host.
    pub fn new(
        pollers: impl IntoIterator<Item = Scheduled>,
        max_concurrent_polls: usize,
        max_polls_per_host: usize,
    ) -> Self {
        let (sender, commands) = mpsc::unbounded_channel();
        let handle = SchedulerHandle {
            commands: sender.clone(),
            names: Arc::default(),
        };
        let mut scheduler = Scheduler {
            slots: HashMap::new(),
            running: HashMap::new(),
            timers: DelayQueue::new(),
            commands,
            sender,
            handle,
            permits: Arc::new(Semaphore::new(max_concurrent_polls.max(1))),
            hosts: HashMap::new(),
            max_polls_per_host: max_polls_per_host.max(1),
            polls: JoinSet::new(),
        };
        let now = Instant::now();
        let mut names = HashSet::new();
        for poller in pollers {
            names.insert(poller.name.clone());
            scheduler.add(poller, now);
        }
        *scheduler
            .handle
            .names
            .write()
            .unwrap_or_else(|p| p.into_inner()) = names;
        scheduler
    }

    pub fn handle(&self) -> SchedulerHandle {
        self.handle.clone()
    }

    /// Schedules a poller as at launch: its grid starts `offset` after `now`, and with
    /// `at_launch` one extra poll comes first, right away (plus jitter).
    fn add(
        &mut self,
        Scheduled {
            name,
            timing,
            repo,
            offset,
            host,
        }: Scheduled,
        now: Instant,
    ) {
        let max_per_host = self.max_polls_per_host;
        let host_permits = host.map(|host| {
            Arc::clone(
                self.hosts
                    .entry(host)
                    .or_insert_with(|| Arc::new(Semaphore::new(max_per_host))),
            )
        });
        let mut next_slot = now + offset;
        if !timing.at_launch && offset.is_zero() {
            // Without a launch poll, the first poll is the first slot after launch.
            next_slot += timing.interval;
        }
        let next_due = if timing.at_launch { now } else { next_slot } + jitter(&timing);
        let timer = self
            .timers
            .insert_at(name.clone(), next_due.min(now + TIMER_HORIZON));
        self.slots.insert(
            name,
            Slot {
                timing,
                repo,
                next_slot,
                next_due,
                host_permits,
                retry_at: None,
                timer,
                failures: 0,
            },
        );
    }

    /// Schedules polls until `shutdown` is cancelled, then waits up to `grace` for the
    /// polls in flight to finish and abandons the rest.
    pub async fn run(
        mut self,
        target: Arc<dyn PollTarget>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => match command {
                    Command::Force(name) => self.start_poll(&name, &target),
                    Command::ForceAll => {
                        let names: Vec<String> = self.slots.keys().cloned().collect();
                        for name in names {
                            self.start_poll(&name, &target);
                        }
                    }
                    Command::Finished(name, result) => self.finished(&name, result, &target),
                    Command::Reload { pollers, restart } => self.reload(pollers, &restart),
                },
                Some(expired) = std::future::poll_fn(|cx| self.timers.poll_expired(cx)) => {
                    self.due(expired.into_inner(), &target);
                }
            }
        }
        let drained = tokio::time::timeout(grace, async {
            while self.polls.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            tracing::warn!(
                abandoned = self.polls.len(),
                "polls still running after the grace period; abandoning them"
            );
            self.polls.abort_all();
        }
    }

    fn reload(&mut self, pollers: Vec<Scheduled>, restart: &HashSet<String>) {
        let now = Instant::now();
        let wanted: HashSet<&String> = pollers.iter().map(|p| &p.name).collect();
        let removed: Vec<String> = self
            .slots
            .keys()
            .filter(|name| !wanted.contains(name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(slot) = self.slots.remove(&name) {
                self.timers.remove(&slot.timer);
            }
        }
        for poller in pollers {
            let name = poller.name.clone();
            match self.slots.get(&name) {
                None => self.add(poller, now),
                Some(_) if restart.contains(&name) => {
                    // A poll in flight is not doubled: `running` outlives the slot, and
                    // the restarted schedule takes over when that poll ends.
                    if let Some(old) = self.slots.remove(&name) {
                        self.timers.remove(&old.timer);
                    }
                    self.add(poller, now);
                }
                Some(_) => {}
            }
        }
    }

    /// A timer fired: a regular poll (then the grid moves on), a retry, or a wake-up at
    /// the horizon with nothing due yet.
    fn due(&mut self, name: String, target: &Arc<dyn PollTarget>) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(&name) else {
            return;
        };
        let regular = now >= slot.next_due;
        let retry = slot.retry_at.is_some_and(|at| now >= at);
        if regular {
            // The regular poll (or the launch poll) is due: the next one is the first
            // grid slot after now. After a stall (a suspended laptop, an overloaded host)
            // this skips missed slots rather than polling in a burst to catch up.
            while slot.next_slot <= now {
                slot.next_slot += slot.timing.interval;
            }
            slot.next_due = slot.next_slot + jitter(&slot.timing);
        }
        if regular || retry {
            slot.retry_at = None;
        }
        slot.timer = self.timers.insert_at(name.clone(), slot.wake_at(now));
        if regular || retry {
            self.start_poll(&name, target);
        }
    }

    fn start_poll(&mut self, name: &str, target: &Arc<dyn PollTarget>) {
        let Some(slot) = self.slots.get(name) else {
            return;
        };
        let host_permits = slot.host_permits.clone();
        if let Some(running) = self.running.get_mut(name) {
            running.rerun = true;
            return;
        }
        self.running.insert(name.to_owned(), Running::default());
        let name = name.to_owned();
        let target = Arc::clone(target);
        let permits = Arc::clone(&self.permits);
        let finished = self.sender.clone();
        self.polls.spawn(async move {
            // The host's permit first: polls waiting on a crowded host hold none of the
            // daemon's permits meanwhile.
            let host = match host_permits {
                Some(host) => host.acquire_owned().await.map(Some),
                None => Ok(None),
            };
            let permit = match host {
                Ok(host) => permits.acquire_owned().await.map(|permit| (host, permit)),
                Err(closed) => Err(closed),
            };
            let result = match permit {
                // A panic must not lose the poller: its poll ends as a failure.
                Ok(_permits) => catch_panic(target.poll(&name))
                    .await
                    .unwrap_or_else(|panic| Err(format!("the poll {panic}"))),
                Err(_) => Err("scheduler is shutting down".to_owned()),
            };
            let _ = finished.send(Command::Finished(name, result));
        });
        // Reap finished tasks so the set does not grow with every poll.
        while self.polls.try_join_next().is_some() {}
    }

    fn finished(
        &mut self,
        name: &str,
        result: Result<Polled, String>,
        target: &Arc<dyn PollTarget>,
    ) {
        let more = matches!(result, Ok(Polled::More));
        let rerun = more
            || self
                .running
                .remove(name)
                .is_some_and(|running| running.rerun);
        self.running.remove(name);
        // A poller removed by a reload while it polled has no slot any more.
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        match result {
            Ok(_) => {
                if slot.failures > 0 {
                    tracing::info!(poller = %name, repo = %slot.repo, failures = slot.failures, "poller recovered");
                }
                slot.failures = 0;
                slot.retry_at = None;
            }
            Err(cause) => {
                slot.failures += 1;
                let retry_in =
                    backoff::exponential(slot.failures, RETRY_BASE, slot.timing.interval);
                if slot.failures == 1 {
                    tracing::warn!(poller = %name, repo = %slot.repo, error = %cause, retry_in = %humantime::format_duration(retry_in), "poll failed; retrying with backoff until it succeeds");
                } else {
                    tracing::debug!(poller = %name, repo = %slot.repo, error = %cause, failures = slot.failures, "poll failed again");
                }
                let now = Instant::now();
                let retry_at = now + retry_in;
                if retry_at < slot.next_due {
                    slot.retry_at = Some(retry_at);
                    self.timers.reset_at(&slot.timer, slot.wake_at(now));
                }
            }
        }
        if rerun {
            self.start_poll(name, target);
        }
    }
}

fn jitter(timing: &Timing) -> Duration {
    backoff::uniform(timing.jitter_min, timing.jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records when each poll starts; polls take `duration` and fail while `failing`.
    struct Recorder {
        start: Instant,
        duration: Duration,
        failing: Mutex<bool>,
        starts: Mutex<Vec<(String, Duration)>>,
        running: Mutex<usize>,
        max_running: Mutex<usize>,
    }

    impl Recorder {
        fn new(duration: Duration) -> Arc<Self> {
            Arc::new(Recorder {
                start: Instant::now(),
                duration,
                failing: Mutex::new(false),
                starts: Mutex::new(Vec::new()),
                running: Mutex::new(0),
                max_running: Mutex::new(0),
            })
        }

        /// Start times of `name`'s polls, in whole milliseconds since the start.
        fn times(&self, name: &str) -> Vec<u128> {
            let starts = self.starts.lock().unwrap();
            starts
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, at)| at.as_millis())
                .collect()
        }
    }

    #[async_trait]
    impl PollTarget for Recorder {
        async fn poll(&self, poller: &str) -> Result<Polled, String> {
            self.starts
                .lock()
                .unwrap()
                .push((poller.to_owned(), self.start.elapsed()));
            {
                let mut running = self.running.lock().unwrap();
                *running += 1;
                let mut max = self.max_running.lock().unwrap();
                *max = (*max).max(*running);
            }
            tokio::time::sleep(self.duration).await;
            *self.running.lock().unwrap() -= 1;
            if *self.failing.lock().unwrap() {
                Err("remote hung up".into())
            } else {
                Ok(Polled::Done)
            }
        }
    }

    fn timing(interval: u64, at_launch: bool) -> Timing {
        Timing {
            interval: Duration::from_secs(interval),
            jitter: Duration::ZERO,
            jitter_min: Duration::ZERO,
            at_launch,
        }
    }

    /// Runs a scheduler over `pollers` for `seconds` of paused time.
    async fn run_for(
        seconds: u64,
        recorder: &Arc<Recorder>,
        pollers: Vec<(&str, Timing)>,
        max_concurrent: usize,
        during: impl FnOnce(SchedulerHandle) -> tokio::task::JoinHandle<()>,
    ) {
        let scheduled = pollers.into_iter().map(|(name, timing)| Scheduled {
            name: name.to_owned(),
            timing,
            repo: format!("/srv/{name}"),
            offset: Duration::ZERO,
            host: None,
        });
        let scheduler = Scheduler::new(scheduled, max_concurrent, max_concurrent);
        let shutdown = CancellationToken::new();
        let helper = during(scheduler.handle());
        let target: Arc<dyn PollTarget> = recorder.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.cancel();
        });
        scheduler
            .run(target, shutdown, Duration::from_secs(60))
            .await;
        helper.abort();
    }

    fn nothing(_: SchedulerHandle) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async {})
    }

    /// Millisecond timestamps may lag by the timer wheel's 1 ms resolution.
    fn assert_near(actual: &[u128], expected: &[u128]) {
        assert_eq!(
            actual.len(),
            expected.len(),
            "polls at {actual:?}, expected {expected:?}"
        );
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                a.abs_diff(*e) <= 2,
                "polls at {actual:?}, expected {expected:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn polls_on_a_fixed_grid_whatever_each_poll_takes() {
        let recorder = Recorder::new(Duration::from_secs(3));
        run_for(
            45,
            &recorder,
            vec![("a", timing(10, true)), ("b", timing(10, false))],
            8,
            nothing,
        )
        .await;
        assert_near(&recorder.times("a"), &[0, 10_000, 20_000, 30_000, 40_000]);
        assert_near(&recorder.times("b"), &[10_000, 20_000, 30_000, 40_000]);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_is_redrawn_each_cycle_and_never_accumulates() {
        let recorder = Recorder::new(Duration::from_millis(10));
        let jittered = Timing {
            jitter: Duration::from_secs(2),
            jitter_min: Duration::from_secs(1),
            ..timing(10, true)
        };
        run_for(500, &recorder, vec![("a", jittered)], 8, nothing).await;
        let times = recorder.times("a");
        assert_eq!(times.len(), 50, "{times:?}");
        for (cycle, at) in times.iter().enumerate() {
            let offset = at.saturating_sub(cycle as u128 * 10_000);
            assert!(
                (1_000..=2_002).contains(&offset),
                "cycle {cycle} polled at {at}"
            );
        }
        let distinct: std::collections::HashSet<_> = times.iter().map(|t| t % 10_000).collect();
        assert!(distinct.len() > 10, "jitter should vary: {times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn forced_polls_during_a_poll_coalesce_into_one_rerun() {
        let recorder = Recorder::new(Duration::from_secs(5));
        run_for(
            30,
            &recorder,
            vec![("a", timing(3600, true))],
            8,
            |handle| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    for _ in 0..3 {
                        assert!(handle.force("a"));
                    }
                    assert!(!handle.force("nosuch"));
                    tokio::time::sleep(Duration::from_secs(19)).await;
                    handle.force("a");
                })
            },
        )
        .await;
        // The launch poll, one rerun straight after it, then the idle force at 20 s.
        assert_near(&recorder.times("a"), &[0, 5_000, 20_000]);
        assert_eq!(*recorder.max_running.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_poll_falling_due_while_one_runs_reruns_once_after_it() {
        let recorder = Recorder::new(Duration::from_secs(25));
        run_for(55, &recorder, vec![("a", timing(10, true))], 8, nothing).await;
        // Due at 10 and 20 while the first poll runs: one rerun at 25. Due at 30, 40,
        // 50 during the second: one rerun at 50.
        assert_near(&recorder.times("a"), &[0, 25_000, 50_000]);
        assert_eq!(*recorder.max_running.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_unchanged_pollers_on_their_grid() {
        let recorder = Recorder::new(Duration::from_millis(10));
        let pollers = vec![
            ("a", timing(10, true)),
            ("b", timing(10, true)),
            ("x", timing(10, true)),
        ];
        run_for(32, &recorder, pollers, 8, |handle| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(15)).await;
                let entry = |name: &str, interval| Scheduled {
                    name: name.to_owned(),
                    timing: timing(interval, true),
                    repo: String::new(),
                    offset: Duration::ZERO,
                    host: None,
                };
                let restart = HashSet::from(["b".to_owned()]);
                handle.reload(vec![entry("a", 10), entry("b", 7), entry("c", 10)], restart);
                assert!(!handle.force("x"), "a removed poller cannot be forced");
            })
        })
        .await;
        assert_near(&recorder.times("a"), &[0, 10_000, 20_000, 30_000]);
        assert_near(&recorder.times("b"), &[0, 10_000, 15_000, 22_000, 29_000]);
        assert_near(&recorder.times("x"), &[0, 10_000]);
        assert_near(&recorder.times("c"), &[15_000, 25_000]);
    }

    fn entry(name: &str, at_launch: bool) -> Scheduled {
        Scheduled {
            name: name.to_owned(),
            timing: timing(3600, at_launch),
            repo: String::new(),
            offset: Duration::ZERO,
            host: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn removing_and_re_adding_a_poller_never_doubles_its_poll_in_flight() {
        let recorder = Recorder::new(Duration::from_secs(20));
        run_for(
            30,
            &recorder,
            vec![("a", timing(3600, true))],
            8,
            |handle| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    handle.reload(vec![], HashSet::new());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    handle.reload(vec![entry("a", true)], HashSet::new());
                })
            },
        )
        .await;
        // The re-added poller's launch poll waits for the hanging one, then runs once.
        assert_near(&recorder.times("a"), &[0, 20_000]);
        assert_eq!(*recorder.max_running.lock().unwrap(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_rerun_survives_a_restart_of_the_poller() {
        let recorder = Recorder::new(Duration::from_secs(10));
        run_for(
            30,
            &recorder,
            vec![("a", timing(3600, true))],
            8,
            |handle| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    assert!(handle.force("a"));
                    let restart = HashSet::from(["a".to_owned()]);
                    handle.reload(vec![entry("a", false)], restart);
                })
            },
        )
        .await;
        assert_near(&recorder.times("a"), &[0, 10_000]);
        assert_eq!(*recorder.max_running.lock().unwrap(), 1);
    }

    /// Panics in the poll of `a`, then polls normally.
    struct Panicky(Mutex<u32>);

    #[async_trait]
    impl PollTarget for Panicky {
        async fn poll(&self, _: &str) -> Result<Polled, String> {
            let calls = {
                let mut calls = self.0.lock().unwrap();
                *calls += 1;
                *calls
            };
            if calls == 1 {
                panic!("a bug in a backend");
            }
            Ok(Polled::Done)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_poll_is_a_failed_poll_and_is_retried() {
        let scheduler = Scheduler::new([entry("a", true)], 8, 8);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stop.cancel();
        });
        let target = Arc::new(Panicky(Mutex::new(0)));
        let polls: Arc<dyn PollTarget> = target.clone();
        scheduler.run(polls, shutdown, Duration::from_secs(1)).await;
        // The launch poll panicked; the retry 5 s later succeeded.
        assert_eq!(*target.0.lock().unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn intervals_beyond_the_timer_horizon_poll_when_due_and_on_demand() {
        let recorder = Recorder::new(Duration::from_millis(10));
        let century = Duration::from_secs(100 * 31_557_600);
        let far = Timing {
            interval: century,
            jitter: century / 2,
            ..timing(1, true)
        };
        let jitterless = Timing {
            jitter: Duration::ZERO,
            ..far
        };
        run_for(
            3 * 365 * 24 * 3600,
            &recorder,
            vec![("a", jitterless), ("b", far)],
            8,
            |handle| {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(800 * 24 * 3600)).await;
                    assert!(handle.force("a"));
                })
            },
        )
        .await;
        // Launch polls (b's waits for its jitter, up to 50 years), then only a's forced
        // one: waking at each horizon polled nothing.
        assert_eq!(recorder.times("a").len(), 2);
        assert!(recorder.times("b").len() <= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn offsets_spread_pollers_over_the_interval() {
        let recorder = Recorder::new(Duration::from_millis(10));
        let scheduled = |name: &str, offset: u64, at_launch| Scheduled {
            name: name.to_owned(),
            timing: timing(10, at_launch),
            repo: String::new(),
            offset: Duration::from_secs(offset),
            host: None,
        };
        let scheduler = Scheduler::new([scheduled("a", 3, true), scheduled("b", 7, false)], 8, 8);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            stop.cancel();
        });
        let target: Arc<dyn PollTarget> = recorder.clone();
        scheduler
            .run(target, shutdown, Duration::from_secs(1))
            .await;
        // `a` polls at launch, then on its own phase; `b` waits for its first slot.
        assert_near(&recorder.times("a"), &[0, 3_000, 13_000, 23_000]);
        assert_near(&recorder.times("b"), &[7_000, 17_000]);
    }

    #[test]
    fn spread_is_stable_and_spreads() {
        let interval = Duration::from_secs(60);
        assert_eq!(spread("app", interval), spread("app", interval));
        let seconds: std::collections::HashSet<u64> = (0..1000)
            .map(|i| spread(&format!("repo-{i}"), interval).as_secs())
            .collect();
        assert!(
            seconds.len() >= 55,
            "1000 names should cover most of 60 seconds: {}",
            seconds.len()
        );
        assert!(seconds.iter().all(|s| *s < 60));
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_concurrent_polls() {
        let recorder = Recorder::new(Duration::from_secs(1));
        let pollers = ["a", "b", "c", "d", "e"]
            .into_iter()
            .map(|n| (n, timing(60, true)))
            .collect();
        run_for(10, &recorder, pollers, 2, nothing).await;
        assert_eq!(*recorder.max_running.lock().unwrap(), 2);
        assert_eq!(recorder.starts.lock().unwrap().len(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_capped_at_the_interval() {
        let recorder = Recorder::new(Duration::ZERO);
        *recorder.failing.lock().unwrap() = true;
        run_for(130, &recorder, vec![("a", timing(60, true))], 8, nothing).await;
        // Retries after 5, 10, 20 s; then the grid slot at 60 comes before the next
        // retry (75), and from then on the backoff is capped at the interval.
        assert_near(
            &recorder.times("a"),
            &[0, 5_000, 15_000, 35_000, 60_000, 120_000],
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_ends_the_backoff() {
        let recorder = Recorder::new(Duration::ZERO);
        *recorder.failing.lock().unwrap() = true;
        let healer = Arc::clone(&recorder);
        run_for(70, &recorder, vec![("a", timing(30, true))], 8, move |_| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(7)).await;
                *healer.failing.lock().unwrap() = false;
            })
        })
        .await;
        // Fails at 0 and 5, succeeds at 15, then back on the grid: 30, 60.
        assert_near(&recorder.times("a"), &[0, 5_000, 15_000, 30_000, 60_000]);
    }
}
