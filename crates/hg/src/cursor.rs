//! The hg cursor: the watched branches' heads and bookmarks at the last poll.
//!
//! Stored as `{"branches": {"default": ["<node>", ...]}, "bookmarks": {"@": "<node>"}}`:
//! full changeset hashes (never local revision numbers, which differ between clones
//! and change when a repository is stripped), each branch's heads sorted so that two
//! listings of the same state compare equal. A watched name the remote does not have
//! is absent.

use std::collections::BTreeMap;

use polld_backend::Cursor;
use serde::{Deserialize, Serialize};

use crate::error::HgError;
use crate::heads::is_node;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    #[serde(default)]
    pub(crate) branches: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) bookmarks: BTreeMap<String, String>,
}

impl State {
    /// Every head of every name, each once.
    pub(crate) fn nodes(&self) -> Vec<&str> {
        let mut nodes: Vec<&str> = self
            .branches
            .values()
            .flatten()
            .chain(self.bookmarks.values())
            .map(String::as_str)
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }
}

pub(crate) fn encode(state: &State) -> Result<Cursor, HgError> {
    Cursor::from_state(state).map_err(HgError::BadCursor)
}

pub(crate) fn decode(cursor: &Cursor) -> Result<State, HgError> {
    let state: State = cursor.to_state().map_err(HgError::BadCursor)?;
    let named = state
        .branches
        .iter()
        .flat_map(|(name, nodes)| nodes.iter().map(move |node| (name, node)))
        .chain(state.bookmarks.iter());
    for (name, node) in named {
        if !is_node(node) {
            return Err(HgError::BadCursorNode {
                name: name.clone(),
                node: node.clone(),
            });
        }
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "3f2a9c0000000000000000000000000000000001";

    #[test]
    fn round_trips_readably() {
        let state = State {
            branches: BTreeMap::from([("default".to_owned(), vec![N.to_owned()])]),
            bookmarks: BTreeMap::from([("@".to_owned(), N.to_owned())]),
        };
        let cursor = encode(&state).unwrap();
        assert_eq!(
            cursor.0,
            serde_json::json!({"branches": {"default": [N]}, "bookmarks": {"@": N}})
        );
        assert_eq!(decode(&cursor).unwrap(), state);
        assert_eq!(state.nodes(), [N]);
        assert!(decode(&Cursor(serde_json::json!({"refs": {}}))).is_err());
        assert!(decode(&Cursor(serde_json::json!({"branches": {"x": ["12"]}}))).is_err());
        assert!(decode(&Cursor(serde_json::json!({"bookmarks": {"x": "id(0)"}}))).is_err());
    }
}
