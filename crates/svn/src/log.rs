//! `svn log --xml --verbose`: read entry by entry.
//!
//! The output is parsed as a stream of events; only the entry being read is held
//! (its author, date, message and changed paths) and handed to the caller as soon as
//! its `</logentry>` is seen. Nothing resembling a document tree is ever built.

use crate::error::SvnError;
use crate::xml::{Item, XmlReader, name_of};

/// One revision as `svn log --verbose` describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogEntry {
    pub(crate) revision: u64,
    /// Absent for an anonymous commit, or when the server hides the revision's
    /// properties from this user.
    pub(crate) author: Option<String>,
    /// RFC 3339, UTC.
    pub(crate) date: Option<String>,
    pub(crate) message: Option<String>,
    /// Changed paths, repository-absolute (`/trunk/src/a.c`), in svn's order.
    pub(crate) paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Author,
    Date,
    Message,
    Path,
}

/// Calls `each` with every `<logentry>` of `bytes`, in document order.
pub(crate) fn parse(
    bytes: &[u8],
    mut each: impl FnMut(LogEntry) -> Result<(), SvnError>,
) -> Result<(), SvnError> {
    let mut xml = XmlReader::new("log", bytes);
    let mut depth = 0usize;
    let mut entry: Option<LogEntry> = None;
    let mut field: Option<Field> = None;
    let mut text = String::new();
    loop {
        match xml.next()? {
            Item::Start(start) => {
                depth += 1;
                let name = name_of(&start);
                match (depth, name) {
                    (1, "log") => {}
                    (1, other) => {
                        return Err(xml.error(format!("the root element is <{other}>, not <log>")));
                    }
                    (2, "logentry") => {
                        let value = xml
                            .attribute(&start, "revision")?
                            .ok_or_else(|| xml.error("a <logentry> has no revision"))?;
                        let revision = value.parse().map_err(|_| {
                            xml.error(format!("<logentry> has revision {value:?}, not a number"))
                        })?;
                        entry = Some(LogEntry {
                            revision,
                            ..LogEntry::default()
                        });
                    }
                    (2, other) => {
                        return Err(xml.error(format!("unexpected element <{other}> in <log>")));
                    }
                    (3, "author") => field = Some(Field::Author),
                    (3, "date") => field = Some(Field::Date),
                    (3, "msg") => field = Some(Field::Message),
                    (4, "path") if field.is_none() => field = Some(Field::Path),
                    // <paths>, and whatever a newer svn may add: skipped.
                    _ => {}
                }
                if field.is_some() {
                    text.clear();
                }
            }
            Item::Text(piece) => {
                if field.is_some() {
                    text.push_str(&piece);
                }
            }
            Item::End(name) => {
                if let (Some(current), Some(done)) = (entry.as_mut(), field) {
                    let value = std::mem::take(&mut text);
                    let closes = matches!(
                        (done, depth, name.as_str()),
                        (Field::Author, 3, "author")
                            | (Field::Date, 3, "date")
                            | (Field::Message, 3, "msg")
                            | (Field::Path, 4, "path")
                    );
                    if closes {
                        match done {
                            Field::Author => current.author = Some(value),
                            Field::Date => current.date = Some(value),
                            Field::Message => current.message = Some(value),
                            Field::Path => current.paths.push(value),
                        }
                        field = None;
                    } else {
                        text = value;
                    }
                }
                if depth == 2
                    && name == "logentry"
                    && let Some(done) = entry.take()
                {
                    each(done)?;
                }
                depth = depth.saturating_sub(1);
            }
            Item::Eof => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(xml: &str) -> Result<Vec<LogEntry>, SvnError> {
        let mut out = Vec::new();
        parse(xml.as_bytes(), |e| {
            out.push(e);
            Ok(())
        })?;
        Ok(out)
    }

    const LOG: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<log>
<logentry
   revision="7">
<author>ada &amp; co</author>
<date>2026-11-24T13:45:28.087832Z</date>
<paths>
<path
   action="A"
   prop-mods="false"
   text-mods="false"
   kind="dir"
   copyfrom-path="/trunk"
   copyfrom-rev="1">/branches/1.5.x</path>
<path
   kind="file"
   action="M">/trunk/é ü &lt;x&gt;.txt</path>
</paths>
<msg>Line one

line &#233; three
</msg>
</logentry>
<logentry
   revision="8">
<date>2026-11-24T13:45:29Z</date>
<paths>
<path kind="file" action="D">/trunk/a</path>
</paths>
<msg></msg>
</logentry>
<logentry revision="9"><paths/></logentry>
</log>
"#;

    #[test]
    fn reads_entries_in_order() {
        let got = entries(LOG).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            LogEntry {
                revision: 7,
                author: Some("ada & co".into()),
                date: Some("2026-11-24T13:45:28.087832Z".into()),
                message: Some("Line one\n\nline é three\n".into()),
                paths: vec!["/branches/1.5.x".into(), "/trunk/é ü <x>.txt".into()],
            }
        );
        assert_eq!(got[1].author, None);
        assert_eq!(got[1].message.as_deref(), Some(""));
        assert_eq!(got[1].paths, ["/trunk/a"]);
        assert_eq!(got[2].paths, Vec::<String>::new());
        assert_eq!(got[2].message, None);
        assert!(
            entries("<?xml version=\"1.0\"?>\n<log>\n</log>\n")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_output_is_an_error_and_stops_early() {
        let cut = &LOG[..LOG.find("<logentry\n   revision=\"8\"").unwrap() + 30];
        let mut seen = Vec::new();
        let result = parse(cut.as_bytes(), |e| {
            seen.push(e.revision);
            Ok(())
        });
        assert!(result.is_err(), "truncated output must fail");
        // The caller throws away what it saw: the poll fails as a whole.
        assert_eq!(seen, [7]);
        for bad in [
            "<info></info>",
            "<log><logentry></logentry></log>",
            "<log><logentry revision=\"x\"></logentry></log>",
            "<log><surprise/></log>",
            "<log><logentry revision=\"1\"><msg>&custom;</msg></logentry></log>",
            "garbage",
        ] {
            assert!(entries(bad).is_err(), "{bad}");
        }
    }
}
