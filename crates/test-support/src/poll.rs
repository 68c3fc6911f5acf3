//! Driving a backend's poller directly, as the core would: the first poll, then polls
//! that must advance. For the backend crates' own tests.

use std::sync::Arc;

use polld_backend::{Cursor, NewChange, PollOutcome, Poller};

/// The first poll: must record a cursor and report nothing.
pub async fn first_poll(poller: &Arc<dyn Poller>) -> Option<Cursor> {
    match poller.poll(None).await.expect("first poll") {
        PollOutcome::Advanced { cursor, changes } => {
            assert!(
                changes.is_empty(),
                "first poll reports nothing: {changes:?}"
            );
            Some(cursor)
        }
        PollOutcome::Partial { .. } => panic!("the first poll reports nothing, not part"),
        PollOutcome::Unchanged => panic!("the first poll must return a cursor"),
    }
}

/// A poll that must advance and report everything new at once; moves `cursor` and
/// returns the changes.
pub async fn advance(poller: &Arc<dyn Poller>, cursor: &mut Option<Cursor>) -> Vec<NewChange> {
    let (changes, partial) = advance_some(poller, cursor).await;
    assert!(
        !partial,
        "expected the whole remote in one poll, got part of it"
    );
    changes
}

/// A poll that must advance; moves `cursor` and returns the changes, and whether they
/// are only part of what is new (`PollOutcome::Partial`).
pub async fn advance_some(
    poller: &Arc<dyn Poller>,
    cursor: &mut Option<Cursor>,
) -> (Vec<NewChange>, bool) {
    match poller.poll(cursor.as_ref()).await.expect("poll") {
        PollOutcome::Advanced {
            cursor: next,
            changes,
        } => {
            *cursor = Some(next);
            (changes, false)
        }
        PollOutcome::Partial {
            cursor: next,
            changes,
        } => {
            *cursor = Some(next);
            (changes, true)
        }
        PollOutcome::Unchanged => panic!("expected the poll to advance"),
    }
}

/// The changes' revisions, in order.
pub fn revisions(changes: &[NewChange]) -> Vec<&str> {
    changes.iter().map(|c| c.revision.as_str()).collect()
}

/// The changes' branches, in order (`""` for none).
pub fn branches(changes: &[NewChange]) -> Vec<&str> {
    changes
        .iter()
        .map(|c| c.branch.as_deref().unwrap_or(""))
        .collect()
}
