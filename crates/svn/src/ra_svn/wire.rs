//! The ra_svn wire format (svn's own protocol, `svn://`): every message is one item, and
//! an item is a number, a string (`<length>:<bytes>`), a word or a parenthesised list of
//! items, each followed by a space or a newline (subversion/libsvn_ra_svn/protocol).
//!
//! Parsing works on a buffer that may hold only the start of a message, so the caller
//! reads more until a whole item is there. Everything a server controls is bounded
//! here: a string's length, a word's length, how deeply lists nest, and (by the caller)
//! how many bytes one message may take; a number that does not fit in a `u64` is an
//! error, not a wrap-around.

use std::fmt;

/// The longest string this client accepts: its answers hold a UUID, URLs, a realm, a
/// date, an author and error messages, none near this.
pub(crate) const MAX_STRING: usize = 64 * 1024;
/// The longest word (`success`, `dir`, `CRAM-MD5`, capability names).
const MAX_WORD: usize = 256;
/// How deeply lists may nest; the deepest answer read here (`stat`) nests four.
const MAX_DEPTH: usize = 16;

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Number(u64),
    String(Vec<u8>),
    Word(String),
    List(Vec<Item>),
}

impl Item {
    pub(crate) fn string(text: impl AsRef<[u8]>) -> Item {
        Item::String(text.as_ref().to_vec())
    }

    pub(crate) fn word(word: &str) -> Item {
        Item::Word(word.to_owned())
    }

    pub(crate) fn as_list(&self) -> Option<&[Item]> {
        match self {
            Item::List(items) => Some(items),
            _ => None,
        }
    }

    pub(crate) fn as_word(&self) -> Option<&str> {
        match self {
            Item::Word(word) => Some(word),
            _ => None,
        }
    }

    pub(crate) fn as_number(&self) -> Option<u64> {
        match self {
            Item::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub(crate) fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Item::String(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// A string item as text (lossily: servers send UTF-8).
    pub(crate) fn as_text(&self) -> Option<String> {
        self.as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// The item as it goes on the wire, with its trailing space.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Item::Number(n) => out.extend_from_slice(format!("{n} ").as_bytes()),
            Item::String(bytes) => {
                out.extend_from_slice(format!("{}:", bytes.len()).as_bytes());
                out.extend_from_slice(bytes);
                out.push(b' ');
            }
            Item::Word(word) => {
                out.extend_from_slice(word.as_bytes());
                out.push(b' ');
            }
            Item::List(items) => {
                out.extend_from_slice(b"( ");
                for item in items {
                    item.encode(out);
                }
                out.extend_from_slice(b") ");
            }
        }
    }
}

/// Shown as svn's own tools print the protocol; strings are shown by length only, so a
/// debug line can never carry a credential or a challenge.
impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Number(n) => write!(f, "{n}"),
            Item::String(bytes) => write!(f, "<{} bytes>", bytes.len()),
            Item::Word(word) => write!(f, "{word}"),
            Item::List(items) => {
                f.write_str("(")?;
                for item in items {
                    write!(f, " {item:?}")?;
                }
                f.write_str(" )")
            }
        }
    }
}

/// Bytes that are not the wire format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ra_svn data at byte {at}: {what}")]
pub(crate) struct Malformed {
    pub(crate) at: usize,
    pub(crate) what: &'static str,
}

/// The first item in `buf` and how many bytes it took (its trailing separator
/// included), or `None` when `buf` holds only part of it.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Item, usize)>, Malformed> {
    let mut parser = Parser { buf, pos: 0 };
    match parser.item(0)? {
        Some(item) => Ok(Some((item, parser.pos))),
        None => Ok(None),
    }
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn is_space(byte: u8) -> bool {
    byte == b' ' || byte == b'\n'
}

impl Parser<'_> {
    fn malformed(&self, what: &'static str) -> Malformed {
        Malformed { at: self.pos, what }
    }

    fn skip_spaces(&mut self) {
        while self.buf.get(self.pos).copied().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    /// Every item ends with a separator: `Ok(false)` when the buffer ends first.
    fn separator(&mut self) -> Result<bool, Malformed> {
        match self.buf.get(self.pos) {
            None => Ok(false),
            Some(&b) if is_space(b) => {
                self.pos += 1;
                Ok(true)
            }
            Some(_) => Err(self.malformed("an item is not followed by a space")),
        }
    }

    fn item(&mut self, depth: usize) -> Result<Option<Item>, Malformed> {
        self.skip_spaces();
        let Some(&first) = self.buf.get(self.pos) else {
            return Ok(None);
        };
        let item = match first {
            b'(' => {
                if depth >= MAX_DEPTH {
                    return Err(self.malformed("lists nested too deeply"));
                }
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_spaces();
                    match self.buf.get(self.pos) {
                        None => return Ok(None),
                        Some(b')') => {
                            self.pos += 1;
                            break;
                        }
                        Some(_) => match self.item(depth + 1)? {
                            Some(item) => items.push(item),
                            None => return Ok(None),
                        },
                    }
                }
                Item::List(items)
            }
            b'0'..=b'9' => {
                let mut n: u64 = 0;
                while let Some(&b) = self.buf.get(self.pos) {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(b - b'0')))
                        .ok_or_else(|| self.malformed("a number larger than 64 bits"))?;
                    self.pos += 1;
                }
                match self.buf.get(self.pos) {
                    None => return Ok(None),
                    Some(b':') => {
                        let len = usize::try_from(n)
                            .ok()
                            .filter(|&len| len <= MAX_STRING)
                            .ok_or_else(|| self.malformed("a string longer than 64 KiB"))?;
                        let start = self.pos + 1;
                        let Some(bytes) = self.buf.get(start..start + len) else {
                            return Ok(None);
                        };
                        self.pos = start + len;
                        Item::String(bytes.to_vec())
                    }
                    Some(_) => Item::Number(n),
                }
            }
            b'a'..=b'z' | b'A'..=b'Z' => {
                let start = self.pos;
                while let Some(&b) = self.buf.get(self.pos) {
                    if !(b.is_ascii_alphanumeric() || b == b'-') {
                        break;
                    }
                    if self.pos - start >= MAX_WORD {
                        return Err(self.malformed("a word longer than 256 bytes"));
                    }
                    self.pos += 1;
                }
                // Only ASCII letters, digits and '-' were taken.
                let word = String::from_utf8_lossy(&self.buf[start..self.pos]).into_owned();
                Item::Word(word)
            }
            _ => return Err(self.malformed("a byte that starts no item")),
        };
        if self.separator()? {
            Ok(Some(item))
        } else {
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Item {
        let (item, used) = parse(text.as_bytes()).unwrap().unwrap();
        assert_eq!(used, text.len(), "{text:?}");
        item
    }

    #[test]
    fn reads_what_svnserve_sends() {
        let stat = "( success ( ( ( dir 18446744073709551615 false 3 \
                    ( 27:2026-12-01T11:06:38.225970Z ) ( 4:root ) ) ) ) ) ";
        let item = one(stat);
        let params = item.as_list().unwrap()[1].as_list().unwrap();
        let dirent = params[0].as_list().unwrap()[0].as_list().unwrap();
        assert_eq!(dirent[0].as_word(), Some("dir"));
        assert_eq!(dirent[1].as_number(), Some(u64::MAX));
        assert_eq!(dirent[3].as_number(), Some(3));
        assert_eq!(
            dirent[4].as_list().unwrap()[0].as_text().unwrap(),
            "2026-12-01T11:06:38.225970Z"
        );
        assert_eq!(one("( success (  ) )\n"), one("( success ( ) ) "));
        assert_eq!(
            one("( 5:a b\nc ) ").as_list().unwrap()[0]
                .as_text()
                .unwrap(),
            "a b\nc"
        );
        assert_eq!(one("0: "), Item::String(Vec::new()));
    }

    #[test]
    fn writes_what_it_reads() {
        let item = Item::List(vec![
            Item::word("stat"),
            Item::List(vec![Item::string(""), Item::List(vec![Item::Number(7)])]),
        ]);
        let mut out = Vec::new();
        item.encode(&mut out);
        assert_eq!(out, b"( stat ( 0: ( 7 ) ) ) ");
        assert_eq!(one(std::str::from_utf8(&out).unwrap()), item);
        assert_eq!(format!("{item:?}"), "( stat ( <0 bytes> ( 7 ) ) )");
    }

    #[test]
    fn waits_for_the_rest_of_a_cut_message() {
        let whole = b"( success ( 36:b866b53e-8d6b-4470-8872-265a68bb22e9 4:svn: ( a ) ) ) ";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]).unwrap(), None, "cut at {cut}");
        }
        let (_, used) = parse(b"( a ) ( b ) ").unwrap().unwrap();
        assert_eq!(used, 6, "one item at a time");
    }

    #[test]
    fn refuses_what_is_not_the_format_or_too_big() {
        for bad in [
            &b")"[..],
            b"( success(",
            b"18446744073709551616 ",
            b"99999999999:",
            b"65537:",
            b"1:ab ",
            b"-1 ",
            b"\x00",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "( ".repeat(MAX_DEPTH + 1);
        assert!(parse(deep.as_bytes()).is_err());
        let long_word = "w".repeat(MAX_WORD + 1);
        assert!(parse(long_word.as_bytes()).is_err());
        assert!(parse(format!("{} ", "w".repeat(MAX_WORD)).as_bytes()).is_ok());
    }
}
