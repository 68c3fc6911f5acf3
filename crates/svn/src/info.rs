//! `svn info --xml URL`: the check where the in-process one (`check.rs`) cannot answer.
//!
//! It gives the revision at which the polled URL last changed (`<commit revision>`),
//! which is what the cursor stores, the repository's youngest revision at the time
//! (`<entry revision>`, used as the peg of the following `svn log`), and the
//! repository root, from which the polled URL's path inside the repository follows.

use crate::error::SvnError;
use crate::location::decode;
use crate::xml::{Item, XmlReader, name_of};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Info {
    /// The repository's youngest revision when svn answered.
    pub(crate) youngest: u64,
    /// The last revision that changed the polled URL or anything below it.
    pub(crate) last_changed: u64,
    /// The polled URL as svn canonicalised it (percent-encoded).
    pub(crate) url: String,
    /// The repository root URL (percent-encoded).
    pub(crate) root: String,
}

impl Info {
    /// The polled URL's path inside the repository, decoded, without a trailing `/`:
    /// `""` for the root, `"/project/trunk"` below it. Changed paths in `svn log` are
    /// such paths.
    pub(crate) fn prefix(&self) -> Result<String, SvnError> {
        let url = decode(&self.url);
        let root = decode(&self.root);
        let not_under = || SvnError::NotUnderRoot {
            url: self.url.clone(),
            root: self.root.clone(),
        };
        let rest = url
            .strip_prefix(root.trim_end_matches('/'))
            .ok_or_else(not_under)?;
        if !rest.is_empty() && !rest.starts_with('/') {
            return Err(not_under());
        }
        Ok(rest.trim_end_matches('/').to_owned())
    }
}

/// Reads the first `<entry>` of `svn info --xml` output.
pub(crate) fn parse(bytes: &[u8]) -> Result<Info, SvnError> {
    let mut xml = XmlReader::new("info", bytes);
    // Element names from the root down; svn info's output is a few levels deep.
    let mut path: Vec<String> = Vec::new();
    let mut youngest = None;
    let mut last_changed = None;
    let mut url: Option<String> = None;
    let mut root: Option<String> = None;
    let mut entries = 0;
    loop {
        match xml.next()? {
            Item::Start(start) => {
                let name = name_of(&start).to_owned();
                path.push(name);
                match at(&path)[..] {
                    ["info", "entry"] => {
                        entries += 1;
                        if entries == 1 {
                            youngest = Some(revision(&xml, &start, "entry")?);
                        }
                    }
                    ["info", "entry", "commit"] if entries == 1 => {
                        last_changed = Some(revision(&xml, &start, "commit")?);
                    }
                    ["info", first, ..] if first != "entry" => {
                        return Err(xml.error(format!("unexpected element <{first}> in <info>")));
                    }
                    [other, ..] if other != "info" => {
                        return Err(xml.error(format!("the root element is <{other}>, not <info>")));
                    }
                    _ => {}
                }
            }
            Item::End(_) => {
                path.pop();
            }
            Item::Text(text) if entries == 1 => match at(&path)[..] {
                ["info", "entry", "url"] => url.get_or_insert_default().push_str(&text),
                ["info", "entry", "repository", "root"] => {
                    root.get_or_insert_default().push_str(&text)
                }
                _ => {}
            },
            Item::Text(_) => {}
            Item::Eof => break,
        }
    }
    let missing = |what: &str| xml.error(format!("no {what} in svn info's answer"));
    Ok(Info {
        youngest: youngest.ok_or_else(|| missing("<entry>"))?,
        last_changed: last_changed.ok_or_else(|| missing("<commit revision>"))?,
        url: url
            .map(|u| u.trim().to_owned())
            .ok_or_else(|| missing("<url>"))?,
        root: root
            .map(|r| r.trim().to_owned())
            .ok_or_else(|| missing("<repository><root>"))?,
    })
}

fn at(path: &[String]) -> Vec<&str> {
    path.iter().map(String::as_str).collect()
}

fn revision(
    xml: &XmlReader<'_>,
    start: &quick_xml::events::BytesStart<'_>,
    element: &str,
) -> Result<u64, SvnError> {
    let value = xml
        .attribute(start, "revision")?
        .ok_or_else(|| xml.error(format!("<{element}> has no revision")))?;
    value
        .parse()
        .map_err(|_| xml.error(format!("<{element}> has revision {value:?}, not a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BELOW_ROOT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<info>
<entry
   revision="12"
   kind="dir"
   path="trunk">
<url>svn://127.0.0.1:3690/repo/proj%20x/tr%C3%BCnk</url>
<relative-url>^/proj%20x/tr%C3%BCnk</relative-url>
<repository>
<root>svn://127.0.0.1:3690/repo</root>
<uuid>3b578b9f-3329-49bd-9908-91a8eaef7b15</uuid>
</repository>
<commit
   revision="9">
<author>ada</author>
<date>2026-11-24T13:45:28.087832Z</date>
</commit>
</entry>
</info>
"#;

    #[test]
    fn reads_revisions_and_the_prefix() {
        let info = parse(BELOW_ROOT.as_bytes()).unwrap();
        assert_eq!(info.youngest, 12);
        assert_eq!(info.last_changed, 9);
        assert_eq!(info.root, "svn://127.0.0.1:3690/repo");
        assert_eq!(info.prefix().unwrap(), "/proj x/trünk");
        let root = Info {
            url: "file:///srv/r".into(),
            root: "file:///srv/r".into(),
            ..info.clone()
        };
        assert_eq!(root.prefix().unwrap(), "");
        let elsewhere = Info {
            url: "file:///srv/rx/trunk".into(),
            root: "file:///srv/r".into(),
            ..info
        };
        assert!(elsewhere.prefix().is_err());
    }

    #[test]
    fn incomplete_answers_are_errors() {
        let no_commit = BELOW_ROOT.replace("<commit\n   revision=\"9\">", "<commit>");
        assert!(
            parse(no_commit.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("revision")
        );
        assert!(
            parse(b"<info>\n</info>")
                .unwrap_err()
                .to_string()
                .contains("<entry>")
        );
        let cut = &BELOW_ROOT[..BELOW_ROOT.len() / 2];
        assert!(parse(cut.as_bytes()).is_err());
        assert!(parse(b"<log></log>").is_err());
        let bad_rev = BELOW_ROOT.replace("revision=\"9\"", "revision=\"nine\"");
        assert!(
            parse(bad_rev.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("nine")
        );
    }
}
