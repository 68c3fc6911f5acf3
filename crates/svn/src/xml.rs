//! A pull reader over svn's `--xml` output: quick-xml's streaming [`Reader`] over the
//! bytes, with the few things svn's output needs and nothing else.
//!
//! - Only the five predefined entities and character references are resolved. An
//!   entity declared in a DTD is never expanded (quick-xml does not read DTDs, and a
//!   reference to anything else is an error), so output crafted by a hostile server
//!   cannot grow into a "billion laughs".
//! - Text is one event however it was split (text, character references, CDATA).
//! - An empty element `<a/>` is reported as its start and then its end.
//! - Output that ends inside an element, or never opened one, is an error: a
//!   truncated `svn` output must fail the poll, never look like a shorter log.

use std::borrow::Cow;

use quick_xml::XmlVersion;
use quick_xml::escape::resolve_xml_entity;
use quick_xml::events::{BytesRef, BytesStart, Event};
use quick_xml::reader::Reader;

use crate::error::SvnError;

/// What the caller sees of the document.
#[derive(Debug)]
pub(crate) enum Item<'a> {
    Start(BytesStart<'a>),
    /// The end of the element named here.
    End(String),
    /// A piece of character data (entity and character references already resolved).
    Text(Cow<'a, str>),
    /// The document ended, every element closed.
    Eof,
}

pub(crate) struct XmlReader<'a> {
    reader: Reader<&'a [u8]>,
    /// For error messages: `info`, `log`.
    command: &'static str,
    depth: usize,
    saw_root: bool,
    /// The end of an empty element `<a/>`, reported after its start.
    pending_end: Option<String>,
}

impl<'a> XmlReader<'a> {
    pub(crate) fn new(command: &'static str, bytes: &'a [u8]) -> XmlReader<'a> {
        let mut reader = Reader::from_reader(bytes);
        reader.config_mut().check_end_names = true;
        XmlReader {
            reader,
            command,
            depth: 0,
            saw_root: false,
            pending_end: None,
        }
    }

    /// The next element boundary or piece of text.
    pub(crate) fn next(&mut self) -> Result<Item<'a>, SvnError> {
        if let Some(name) = self.pending_end.take() {
            self.depth = self.depth.saturating_sub(1);
            return Ok(Item::End(name));
        }
        loop {
            let event = self.reader.read_event().map_err(|e| {
                self.error(format!("{e} (at byte {})", self.reader.error_position()))
            })?;
            match event {
                Event::Start(start) => return self.open(start),
                Event::Empty(start) => {
                    self.pending_end = Some(name_of(&start).to_owned());
                    return self.open(start);
                }
                Event::End(end) => {
                    self.depth = self.depth.saturating_sub(1);
                    return Ok(Item::End(end.name().into_inner().to_owned()));
                }
                Event::Text(text) => return Ok(Item::Text(text.xml10_content())),
                Event::CData(data) => return Ok(Item::Text(data.xml10_content())),
                Event::GeneralRef(reference) => return self.resolve(&reference).map(Item::Text),
                Event::Eof => {
                    if !self.saw_root {
                        return Err(self.error("no XML at all (empty or cut-off output)"));
                    }
                    if self.depth > 0 {
                        return Err(self.error(format!(
                            "the output ends inside an element (truncated at byte {})",
                            self.reader.buffer_position()
                        )));
                    }
                    return Ok(Item::Eof);
                }
                // Declarations, comments, processing instructions and a DOCTYPE carry
                // nothing polld needs; a DOCTYPE's entity declarations are not used.
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) | Event::DocType(_) => {}
            }
        }
    }

    fn open(&mut self, start: BytesStart<'a>) -> Result<Item<'a>, SvnError> {
        if self.depth == 0 && self.saw_root {
            return Err(self.error("more than one root element"));
        }
        self.depth += 1;
        self.saw_root = true;
        Ok(Item::Start(start))
    }

    fn resolve(&self, reference: &BytesRef<'_>) -> Result<Cow<'a, str>, SvnError> {
        match reference.resolve_char_ref() {
            Ok(Some(c)) => return Ok(Cow::Owned(c.to_string())),
            Ok(None) => {}
            Err(e) => return Err(self.error(format!("bad character reference: {e}"))),
        }
        let name: &str = reference;
        resolve_xml_entity(name)
            .map(Cow::Borrowed)
            .ok_or_else(|| self.error(format!("reference to an undeclared entity &{name};")))
    }

    /// The value of attribute `name` of `start`, references resolved.
    pub(crate) fn attribute(
        &self,
        start: &BytesStart<'_>,
        name: &str,
    ) -> Result<Option<String>, SvnError> {
        let attribute = start
            .try_get_attribute(name)
            .map_err(|e| self.error(format!("bad attribute: {e}")))?;
        attribute
            .map(|a| {
                a.normalized_value_with(XmlVersion::Implicit1_0, 1, resolve_xml_entity)
                    .map(Cow::into_owned)
                    .map_err(|e| self.error(format!("bad value of attribute {name}: {e}")))
            })
            .transpose()
    }

    pub(crate) fn error(&self, message: impl std::fmt::Display) -> SvnError {
        SvnError::xml(self.command, message)
    }
}

/// The name of an element as a string.
pub(crate) fn name_of<'s>(start: &'s BytesStart<'_>) -> &'s str {
    start.name().into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(xml: &str) -> Result<Vec<String>, SvnError> {
        let mut reader = XmlReader::new("test", xml.as_bytes());
        let mut out = Vec::new();
        loop {
            match reader.next()? {
                Item::Start(s) => out.push(format!("<{}>", name_of(&s))),
                Item::End(name) => out.push(format!("</{name}>")),
                Item::Text(t) => out.push(t.into_owned()),
                Item::Eof => return Ok(out),
            }
        }
    }

    #[test]
    fn resolves_only_predefined_entities() {
        assert_eq!(
            items("<?xml version=\"1.0\"?><a>x &amp; &#233;<![CDATA[<c>]]><b/></a>").unwrap(),
            ["<a>", "x ", "&", " ", "é", "<c>", "<b>", "</b>", "</a>"]
        );
        let custom = "<!DOCTYPE a [<!ENTITY boom \"BOOM\">]><a>&boom;</a>";
        let error = items(custom).unwrap_err().to_string();
        assert!(error.contains("undeclared entity &boom;"), "{error}");
    }

    #[test]
    fn truncated_or_garbage_output_is_an_error() {
        for bad in [
            "",
            "   ",
            "<log><logentry>",
            "<log></oops>",
            "not xml",
            "<a></a><b></b>",
        ] {
            assert!(items(bad).is_err(), "{bad:?} should not parse");
        }
        let error = items("<log><logentry revision=\"1\">")
            .unwrap_err()
            .to_string();
        assert!(error.contains("truncated"), "{error}");
    }
}
