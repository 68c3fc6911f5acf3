//! The git cursor: the watched refs as the remote advertised them at the last poll.
//!
//! Stored as `{"refs": {"refs/heads/main": "<sha>", "refs/tags/v1": "<sha>"}}` so that
//! `polld status` shows something a person can compare with `git ls-remote`. A tag is
//! recorded at the commit it peels to (the `^{}` line of the advertisement), so
//! re-creating an annotated tag on the same commit is not a change.

use std::collections::BTreeMap;

use git2::Oid;
use polld_backend::Cursor;
use serde::{Deserialize, Serialize};

use crate::error::GitError;

/// Full ref name → the commit (or, for a tag that peels to no commit, the object) it
/// pointed at.
pub(crate) type RefMap = BTreeMap<String, Oid>;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    refs: BTreeMap<String, String>,
}

pub(crate) fn encode(refs: &RefMap) -> Result<Cursor, GitError> {
    let state = State {
        refs: refs
            .iter()
            .map(|(name, oid)| (name.clone(), oid.to_string()))
            .collect(),
    };
    Cursor::from_state(&state).map_err(GitError::BadCursor)
}

pub(crate) fn decode(cursor: &Cursor) -> Result<RefMap, GitError> {
    let state: State = cursor.to_state().map_err(GitError::BadCursor)?;
    state
        .refs
        .into_iter()
        .map(|(name, hex)| {
            Oid::from_str(&hex)
                .map(|oid| (name.clone(), oid))
                .map_err(|_| GitError::BadCursorOid { name, hex })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_readably() {
        let oid = Oid::from_str("3f2a9c0000000000000000000000000000000001").unwrap();
        let refs = RefMap::from([("refs/heads/main".to_owned(), oid)]);
        let cursor = encode(&refs).unwrap();
        assert_eq!(
            cursor.0,
            serde_json::json!({"refs": {"refs/heads/main": "3f2a9c0000000000000000000000000000000001"}})
        );
        assert_eq!(decode(&cursor).unwrap(), refs);
        assert!(decode(&Cursor(serde_json::json!({"revision": 3}))).is_err());
        assert!(decode(&Cursor(serde_json::json!({"refs": {"x": "zz"}}))).is_err());
    }
}
