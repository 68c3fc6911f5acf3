//! git's pkt-line framing: every message of the wire protocol is a 4-digit hex length
//! (counting itself) and that many bytes, or one of the special lengths `0000` (flush),
//! `0001` (delimiter) and `0002` (response end).
//!
//! Reading is async and bounded: a reader may be given a budget of bytes, past which it
//! fails instead of growing polld's memory (a listing that streams without end), and a
//! single pkt-line is never more than git's own limit.

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a ref listing (a greeting, an advertisement, an `ls-refs` answer) may be:
/// 100,000 refs are about 6.6 MB. One that streams without end fails the poll.
pub(crate) const MAX_LISTING: usize = 32 * 1024 * 1024;
/// Largest pkt-line git allows (65520 bytes including the 4-byte length).
pub(crate) const MAX_PKT: usize = 65520;
pub(crate) const FLUSH: &[u8] = b"0000";
pub(crate) const DELIM: &[u8] = b"0001";

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pkt {
    Data(Vec<u8>),
    Flush,
    Delim,
    End,
}

/// Appends `data` as one pkt-line.
pub(crate) fn push(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
    out.extend_from_slice(data);
}

/// Reads pkt-lines from `inner`, at most `budget` bytes in all when one is set.
pub(crate) struct PktReader<R> {
    inner: R,
    budget: Option<usize>,
    /// What the budget is for, for the error that says it ran out.
    what: &'static str,
}

impl<R: AsyncRead + Unpin> PktReader<R> {
    pub(crate) fn new(inner: R, budget: Option<usize>, what: &'static str) -> PktReader<R> {
        PktReader {
            inner,
            budget,
            what,
        }
    }

    /// Lifts the budget: what follows (a pack) is bounded by the deadline alone.
    pub(crate) fn unbounded(&mut self) {
        self.budget = None;
    }

    pub(crate) async fn next(&mut self) -> Result<Pkt, String> {
        let mut length = [0u8; 4];
        self.read_exact(&mut length).await?;
        let length = std::str::from_utf8(&length)
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .ok_or_else(|| {
                format!(
                    "malformed pkt-line length {:?}",
                    String::from_utf8_lossy(&length)
                )
            })?;
        match length {
            0 => Ok(Pkt::Flush),
            1 => Ok(Pkt::Delim),
            2 => Ok(Pkt::End),
            3 => Err("malformed pkt-line length 3".into()),
            _ if length > MAX_PKT => Err(format!("pkt-line of {length} bytes is over git's limit")),
            _ => {
                let mut data = vec![0; length - 4];
                self.read_exact(&mut data).await?;
                Ok(Pkt::Data(data))
            }
        }
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        if let Some(budget) = &mut self.budget {
            if buf.len() > *budget {
                return Err(format!(
                    "the {} is too large (more than polld reads)",
                    self.what
                ));
            }
            *budget -= buf.len();
        }
        self.inner
            .read_exact(buf)
            .await
            .map(|_| ())
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::UnexpectedEof => "the server hung up".to_owned(),
                _ => error.to_string(),
            })
    }
}

/// `ERR <message>` as git servers send it, for an error.
pub(crate) fn server_error(line: &[u8]) -> Option<String> {
    line.strip_prefix(b"ERR ").map(|message| {
        format!(
            "the server says: {}",
            String::from_utf8_lossy(message).trim_end()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &'static [u8], budget: Option<usize>) -> PktReader<&'static [u8]> {
        PktReader::new(bytes, budget, "listing")
    }

    #[tokio::test]
    async fn reads_pkt_lines() {
        let mut input = reader(b"000ahello\n000100000002", None);
        assert_eq!(input.next().await.unwrap(), Pkt::Data(b"hello\n".to_vec()));
        assert_eq!(input.next().await.unwrap(), Pkt::Delim);
        assert_eq!(input.next().await.unwrap(), Pkt::Flush);
        assert_eq!(input.next().await.unwrap(), Pkt::End);
        assert!(reader(b"zzzz", None).next().await.is_err());
        assert!(reader(b"0003", None).next().await.is_err());
        assert!(reader(b"0010short", None).next().await.is_err());
        assert!(reader(b"fff0", None).next().await.is_err());
    }

    #[tokio::test]
    async fn a_budget_bounds_what_is_read() {
        let mut input = reader(b"000ahello\n000ahello\n", Some(12));
        assert!(input.next().await.is_ok());
        let error = input.next().await.unwrap_err();
        assert!(error.contains("too large"), "{error}");
        let mut out = Vec::new();
        push(&mut out, b"hi\n");
        assert_eq!(out, b"0007hi\n");
        assert_eq!(
            server_error(b"ERR access denied\n").as_deref(),
            Some("the server says: access denied")
        );
    }
}
