//! What can go wrong with the database, and how its URL may be shown.

use polld_backend::redact::strip_userinfo;
use polld_core::store::{LeaseLost, StoreError};

/// What can go wrong with the PostgreSQL store. Every message that names the database
/// names it by [`shown_url`]: the URL may carry a password.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// Not a `postgres://` URL. Not shown: a `key=value` connection string (which the
    /// driver would read) cannot be shown without its password.
    #[error("the store URL is not a postgres:// or postgresql:// URL")]
    NotAUrl,
    #[error("store URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to the store database {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error(
        "store database {url} has schema version {found}, newer than this polld understands ({understood}); upgrade polld"
    )]
    TooNew {
        url: String,
        found: i32,
        understood: i32,
    },
    #[error("store database {url}: cannot bring its schema to version {version}: {source}")]
    Migrate {
        url: String,
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Fencing: this replica does not hold an unexpired lease on the poller, so another
    /// replica may already poll and deliver it. Nothing was written.
    #[error(transparent)]
    LeaseLost(#[from] LeaseLost),
    #[error("store database: no connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("store database: {0}")]
    Sql(#[from] tokio_postgres::Error),
    #[error("store database holds a record that is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl From<PostgresError> for StoreError {
    /// A lost lease travels as the core's own [`LeaseLost`], so the engine and the
    /// delivery loop can tell it from a store that cannot be written.
    fn from(error: PostgresError) -> Self {
        match error {
            PostgresError::LeaseLost(lost) => StoreError::new(lost),
            other => StoreError::new(other),
        }
    }
}

/// `url` as it may be shown in an error or a log line: without `user:password@`, and
/// with the value of a `password=` query parameter (which libpq also reads) hidden.
pub fn shown_url(url: &str) -> String {
    let stripped = strip_userinfo(url);
    let Some((base, query)) = stripped.split_once('?') else {
        return stripped;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Text PostgreSQL can store: `text` cannot hold NUL, which an error message read from
/// a remote server might. JSON columns need nothing: serde_json writes NUL as `\u0000`.
pub(crate) fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}").into()
    } else {
        text.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_carries_no_password() {
        assert_eq!(
            shown_url("postgres://polld:s3cret@db.example:5432/polld"),
            "postgres://db.example:5432/polld"
        );
        assert_eq!(
            shown_url("postgresql://db/polld?sslmode=require&password=s3cret"),
            "postgresql://db/polld?sslmode=require&password=***"
        );
        assert_eq!(
            shown_url("postgres://127.0.0.1/polld"),
            "postgres://127.0.0.1/polld"
        );
    }

    #[test]
    fn nul_is_replaced_not_refused() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        assert_eq!(storable("ab"), "ab");
    }
}
