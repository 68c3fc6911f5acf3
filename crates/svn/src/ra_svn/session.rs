//! An ra_svn session: the handshake (greeting, authentication, repository info) and the
//! two commands the cheap check needs, `get-latest-rev` and `stat`.
//!
//! ```text
//! S: ( success ( 2 2 ( ) ( edit-pipeline svndiff1 ... ) ) )                 greeting
//! C: ( 2 ( edit-pipeline svndiff1 ... ) 26:svn://host/repo/trunk 9:polld/0.1 ( ) )
//! S: ( success ( ( ANONYMOUS CRAM-MD5 ) 36:<realm> ) )                       auth request
//! C: ( ANONYMOUS ( 0: ) )   or   ( CRAM-MD5 ( ) ) / S: ( step ( 42:<challenge> ) ) / C: 38:user <hex>
//! S: ( success ( ) )                                                         or ( failure ( 18:Password incorrect ) )
//! S: ( success ( 36:<uuid> 20:svn://host/repo ( mergeinfo ) ) )              repository info
//! C: ( get-latest-rev ( ) )  S: ( success ( ( ) 0: ) )  S: ( success ( 4 ) )
//! C: ( stat ( 0: ( 4 ) ) )   S: ( success ( ( ) 0: ) )  S: ( success ( ( ( dir 0 false 3 ( ... ) ( ... ) ) ) ) )
//! ```
//!
//! Every command is preceded by an auth request, empty unless the command needs more
//! than the session's login (anonymous read refused for a path): then the credentials
//! are offered, once.

use super::conn::Conn;
use super::cram;
use super::error::RaError;
use super::wire::Item;
use crate::command::Login;

/// The only protocol version there is (svn 1.0 and later).
const VERSION: u64 = 2;

/// What svn 1.14 announces; `edit-pipeline` is required by every svnserve.
const CAPABILITIES: &[&str] = &[
    "edit-pipeline",
    "svndiff1",
    "accepts-svndiff2",
    "absent-entries",
    "depth",
    "mergeinfo",
    "log-revprops",
];

/// Where to connect and the URL to open there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The polled URL, as `svn` would be given it (no credentials).
    pub(crate) url: String,
}

pub(crate) struct Session {
    conn: Conn,
    /// The repository's UUID: a different one means a different repository.
    pub(crate) uuid: String,
    /// The repository root's URL as the server derived it from `Target::url`.
    pub(crate) root: String,
}

impl Session {
    /// Connects, logs in and reads the repository's identity.
    pub(crate) async fn open(target: &Target, login: &Login) -> Result<Session, RaError> {
        let mut conn = Conn::connect(&target.host, target.port).await?;
        let greeting = success(conn.receive().await?)?;
        let (min, max) = match &greeting[..] {
            [Item::Number(min), Item::Number(max), ..] => (*min, *max),
            _ => return Err(RaError::protocol(format!("greeting {greeting:?}"))),
        };
        if !(min..=max).contains(&VERSION) {
            return Err(RaError::protocol(format!(
                "the server speaks protocol versions {min} to {max}, not {VERSION}"
            )));
        }
        let capabilities = CAPABILITIES.iter().map(|c| Item::word(c)).collect();
        conn.send(&Item::List(vec![
            Item::Number(VERSION),
            Item::List(capabilities),
            Item::string(&target.url),
            Item::string(concat!("polld/", env!("CARGO_PKG_VERSION"))),
            Item::List(Vec::new()),
        ]))
        .await?;
        let mut session = Session {
            conn,
            uuid: String::new(),
            root: String::new(),
        };
        session.auth_request(login, true).await?;
        let info = success(session.conn.receive().await?)?;
        match &info[..] {
            [uuid @ Item::String(_), root @ Item::String(_), ..] => {
                session.uuid = uuid.as_text().unwrap_or_default();
                session.root = root.as_text().unwrap_or_default();
            }
            _ => return Err(RaError::protocol(format!("repository info {info:?}"))),
        }
        Ok(session)
    }

    /// The repository's youngest revision.
    pub(crate) async fn latest_revision(&mut self, login: &Login) -> Result<u64, RaError> {
        let answer = self.command("get-latest-rev", Vec::new(), login).await?;
        answer
            .first()
            .and_then(Item::as_number)
            .ok_or_else(|| RaError::protocol(format!("get-latest-rev answered {answer:?}")))
    }

    /// The revision in which the session's URL, as it is in `revision`, last changed
    /// (svn's "Last Changed Rev"); `None` when nothing is there.
    pub(crate) async fn last_changed(
        &mut self,
        revision: u64,
        login: &Login,
    ) -> Result<Option<u64>, RaError> {
        let params = vec![Item::string(""), Item::List(vec![Item::Number(revision)])];
        let answer = self.command("stat", params, login).await?;
        let bad = || RaError::protocol(format!("stat answered {answer:?}"));
        let dirents = answer.first().and_then(Item::as_list).ok_or_else(bad)?;
        let Some(dirent) = dirents.first() else {
            return Ok(None);
        };
        // ( kind size has-props created-rev ( ?date ) ( ?author ) )
        let fields = dirent.as_list().ok_or_else(bad)?;
        fields
            .get(3)
            .and_then(Item::as_number)
            .map(Some)
            .ok_or_else(bad)
    }

    /// Sends a command and returns its answer's parameters.
    async fn command(
        &mut self,
        name: &str,
        params: Vec<Item>,
        login: &Login,
    ) -> Result<Vec<Item>, RaError> {
        self.conn
            .send(&Item::List(vec![Item::word(name), Item::List(params)]))
            .await?;
        self.auth_request(login, false).await?;
        success(self.conn.receive().await?)
    }

    /// Reads an auth request and, when it lists mechanisms, logs in. At the start of a
    /// session anonymous access is preferred, as svn does; a later request means the
    /// command needs more, so only the credentials can do.
    async fn auth_request(&mut self, login: &Login, at_start: bool) -> Result<(), RaError> {
        let request = success(self.conn.receive().await?)?;
        let mechanisms: Vec<&str> = match request.first().and_then(Item::as_list) {
            Some(list) => list.iter().filter_map(Item::as_word).collect(),
            None => return Err(RaError::protocol(format!("auth request {request:?}"))),
        };
        if mechanisms.is_empty() {
            return Ok(());
        }
        if at_start && mechanisms.contains(&"ANONYMOUS") {
            self.conn
                .send(&Item::List(vec![
                    Item::word("ANONYMOUS"),
                    Item::List(vec![Item::string("")]),
                ]))
                .await?;
            return self.auth_result().await;
        }
        if !mechanisms.contains(&"CRAM-MD5") {
            return Err(RaError::NoMechanism(mechanisms.join(" ")));
        }
        let Some(username) = &login.username else {
            return Err(RaError::LoginNeeded);
        };
        self.conn
            .send(&Item::List(vec![
                Item::word("CRAM-MD5"),
                Item::List(Vec::new()),
            ]))
            .await?;
        let step = self.conn.receive().await?;
        let challenge = match step.as_list() {
            Some([Item::Word(word), Item::List(params)]) if word == "step" => {
                params.first().and_then(Item::as_bytes).map(<[u8]>::to_vec)
            }
            _ => None,
        };
        let Some(challenge) = challenge else {
            return Err(auth_failure(step));
        };
        let password = login.password.as_deref().unwrap_or("");
        let answer = cram::answer(username, password, &challenge);
        self.conn.send(&Item::string(answer)).await?;
        self.auth_result().await
    }

    async fn auth_result(&mut self) -> Result<(), RaError> {
        let result = self.conn.receive().await?;
        let accepted = matches!(
            result.as_list(),
            Some([Item::Word(word), Item::List(_)]) if word == "success"
        );
        if accepted {
            Ok(())
        } else {
            Err(auth_failure(result))
        }
    }
}

/// `( failure ( message ) )` during authentication: the server's reason.
fn auth_failure(item: Item) -> RaError {
    match item.as_list() {
        Some([Item::Word(word), Item::List(params)]) if word == "failure" => RaError::AuthFailed(
            params
                .first()
                .and_then(Item::as_text)
                .unwrap_or_else(|| "authentication refused".to_owned()),
        ),
        _ => RaError::protocol(format!("authentication answered {item:?}")),
    }
}

/// The parameters of `( success ( ... ) )`; a `( failure ( ( code message file line )
/// ... ) )` becomes [`RaError::Failure`] with the server's messages.
fn success(item: Item) -> Result<Vec<Item>, RaError> {
    let Item::List(parts) = item else {
        return Err(RaError::protocol(format!("{item:?} is not a list")));
    };
    let mut parts = parts.into_iter();
    match (parts.next(), parts.next()) {
        (Some(Item::Word(word)), Some(Item::List(params))) if word == "success" => Ok(params),
        (Some(Item::Word(word)), Some(Item::List(errors))) if word == "failure" => {
            let messages: Vec<String> = errors
                .iter()
                .filter_map(|error| match error {
                    Item::List(fields) => fields.get(1).and_then(Item::as_text),
                    other => other.as_text(),
                })
                .filter(|message| !message.is_empty())
                .collect();
            Err(RaError::Failure(messages.join("; ")))
        }
        (first, second) => {
            let all: Vec<Item> = first.into_iter().chain(second).chain(parts).collect();
            Err(RaError::protocol(format!("{:?}", Item::List(all))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Item {
        super::super::wire::parse(text.as_bytes())
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn reads_success_and_failure() {
        assert_eq!(
            success(parsed("( success ( 4 ) ) ")).unwrap(),
            [Item::Number(4)]
        );
        let failure =
            parsed("( failure ( ( 160013 26:File not found: revision 4 8:subr/x.c 12 ) ) ) ");
        let error = success(failure).unwrap_err().to_string();
        assert!(error.contains("File not found: revision 4"), "{error}");
        assert!(matches!(
            success(parsed("( what ( ) ) ")),
            Err(RaError::Protocol(_))
        ));
        assert!(matches!(success(parsed("7 ")), Err(RaError::Protocol(_))));
        assert_eq!(
            auth_failure(parsed("( failure ( 18:Password incorrect ) ) ")).to_string(),
            "Password incorrect"
        );
    }
}
