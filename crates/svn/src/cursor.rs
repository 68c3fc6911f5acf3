//! The svn cursor: the last revision that changed the polled URL, as seen at the last
//! poll. Stored as `{"revision": 1234}`, the number `svn info` shows as
//! "Last Changed Rev", so `polld status` can be compared with svn's own output.

use polld_backend::Cursor;
use serde::{Deserialize, Serialize};

use crate::error::SvnError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    revision: u64,
}

pub(crate) fn encode(revision: u64) -> Result<Cursor, SvnError> {
    Cursor::from_state(&State { revision }).map_err(SvnError::BadCursor)
}

pub(crate) fn decode(cursor: &Cursor) -> Result<u64, SvnError> {
    cursor
        .to_state::<State>()
        .map(|state| state.revision)
        .map_err(SvnError::BadCursor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_readably() {
        let cursor = encode(1234).unwrap();
        assert_eq!(cursor.0, serde_json::json!({"revision": 1234}));
        assert_eq!(decode(&cursor).unwrap(), 1234);
        assert!(decode(&Cursor(serde_json::json!({"refs": {}}))).is_err());
        assert!(decode(&Cursor(serde_json::json!({"revision": -1}))).is_err());
    }
}
