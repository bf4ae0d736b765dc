//! A domain XML document read into a flat element list with byte spans, so that edits are
//! splices of the original text: everything not edited stays byte-for-byte as it was.
//!
//! quick-xml's pull reader gives each event's byte range (`buffer_position` before and after
//! it). A tree crate (`xmltree`, `roxmltree`) would parse just as well but writes a document
//! back from its tree, re-quoting attributes and re-indenting; libvirt's dumpxml, a human's
//! comments and an orchestrator's `<metadata>` would all change shape for nothing.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use std::ops::Range;

/// Why a document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    /// Not well-formed XML (or not UTF-8).
    #[error("the domain XML is not well-formed at byte {at}: {source}")]
    Malformed {
        /// Byte offset where the reader stopped.
        at: u64,
        /// The reader's error.
        source: quick_xml::Error,
    },
    /// An attribute could not be read or unescaped.
    #[error("the domain XML has a malformed attribute in <{element}>: {reason}")]
    Attribute {
        /// The element's name.
        element: String,
        /// What was wrong.
        reason: String,
    },
    /// An element is never closed (the document ends first).
    #[error("the domain XML ends before <{0}> is closed")]
    Unclosed(String),
    /// No root element at all.
    #[error("the domain XML has no root element")]
    Empty,
}

/// One element: its name, attributes (unescaped) and where it sits in the text.
#[derive(Debug, Clone)]
pub(crate) struct Element {
    /// Qualified name as written (`qemu:arg`).
    pub name: String,
    /// Attributes in document order, values unescaped.
    pub attrs: Vec<(String, String)>,
    /// The start tag (`<a ...>` or `<a .../>`).
    pub start: Range<usize>,
    /// The end tag (`</a>`); equal to `start` for an empty element.
    pub end: Range<usize>,
    /// Index of the parent element.
    pub parent: Option<usize>,
}

impl Element {
    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `<a/>` rather than `<a></a>`.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The whole element, start tag to end tag.
    pub fn span(&self) -> Range<usize> {
        self.start.start..self.end.end
    }

    /// The text between the tags (empty for an empty element).
    pub fn inner(&self) -> Range<usize> {
        if self.is_empty() {
            self.start.end..self.start.end
        } else {
            self.start.end..self.end.start
        }
    }
}

/// A read document: its text and its elements in document order (the root first).
#[derive(Debug)]
pub(crate) struct Doc<'a> {
    pub text: &'a str,
    pub elements: Vec<Element>,
}

impl<'a> Doc<'a> {
    /// Reads `text`; the whole document must be well-formed.
    pub fn parse(text: &'a str) -> Result<Self, DocError> {
        // quick-xml skips byte-order marks at the start without counting them in its positions:
        // skip them here.
        let body = text.trim_start_matches('\u{feff}');
        let base = text.len() - body.len();
        let mut reader = Reader::from_str(body);
        reader.config_mut().trim_text(false);
        let mut elements: Vec<Element> = Vec::new();
        let mut open: Vec<usize> = Vec::new();
        loop {
            let before = base + position(&reader);
            let event = reader.read_event().map_err(|source| DocError::Malformed {
                at: reader.error_position(),
                source,
            })?;
            let after = base + position(&reader);
            match event {
                Event::Start(e) => {
                    elements.push(element(&e, before..after, open.last().copied())?);
                    open.push(elements.len() - 1);
                }
                Event::Empty(e) => {
                    elements.push(element(&e, before..after, open.last().copied())?);
                }
                Event::End(_) => {
                    // quick-xml checks that end names match; an unmatched end is its error.
                    if let Some(i) = open.pop() {
                        elements[i].end = before..after;
                    }
                }
                Event::Eof => match open.last() {
                    // quick-xml does not check this itself.
                    Some(&i) => return Err(DocError::Unclosed(elements[i].name.clone())),
                    None => break,
                },
                _ => {}
            }
        }
        if elements.is_empty() {
            return Err(DocError::Empty);
        }
        Ok(Doc { text, elements })
    }

    /// The root element.
    pub fn root(&self) -> &Element {
        &self.elements[0]
    }

    /// Indices of the direct children of element `parent` named `name`.
    pub fn children<'s>(
        &'s self,
        parent: usize,
        name: &'s str,
    ) -> impl Iterator<Item = usize> + 's {
        self.elements
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.parent == Some(parent) && e.name == name)
            .map(|(i, _)| i)
    }

    /// The text content of element `i` (entities unescaped).
    pub fn text_of(&self, i: usize) -> String {
        let raw = &self.text[self.elements[i].inner()];
        quick_xml::escape::unescape(raw)
            .map(|c| c.into_owned())
            .unwrap_or_else(|_| raw.to_owned())
    }

    /// The whitespace that starts the line of byte `at`, if only whitespace precedes `at` on it.
    fn indent_before(&self, at: usize) -> Option<&str> {
        let line_start = self.text[..at].rfind('\n').map_or(0, |n| n + 1);
        let lead = &self.text[line_start..at];
        lead.chars().all(|c| c == ' ' || c == '\t').then_some(lead)
    }

    /// Where and how to insert a new last child of element `i`: the byte offset, the
    /// indentation a child gets, and whether the document puts elements on their own lines.
    pub fn append_point(&self, i: usize) -> AppendPoint {
        let parent = &self.elements[i];
        let close = parent.end.start;
        match self.indent_before(close) {
            Some(parent_indent) => {
                let first_child = self.elements.iter().find(|e| e.parent == Some(i));
                let indent = first_child
                    .and_then(|c| self.indent_before(c.start.start))
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{parent_indent}  "));
                AppendPoint {
                    at: close - parent_indent.len(),
                    indent,
                    lines: true,
                }
            }
            None => AppendPoint {
                at: close,
                indent: String::new(),
                lines: false,
            },
        }
    }

    /// The edit that appends `children` (element texts) to element `i`, laid out as the
    /// document lays out its children; `<x .../>` becomes `<x ...>children</x>`.
    pub fn append_children(&self, i: usize, children: &[String]) -> (Range<usize>, String) {
        let el = &self.elements[i];
        if !el.is_empty() {
            let point = self.append_point(i);
            return (
                point.at..point.at,
                children.iter().map(|c| point.line(c)).collect(),
            );
        }
        let tag = &self.text[el.start.clone()];
        let open = format!("{}>", tag.trim_end_matches("/>").trim_end());
        let indent = self.indent_before(el.start.start);
        let unit = self.indent_unit(i);
        (
            el.start.clone(),
            element_text(&open, &el.name, children, indent, &unit),
        )
    }

    /// The edit that appends a new element `<name>children</name>` to element `i`.
    pub fn append_element(
        &self,
        i: usize,
        name: &str,
        children: &[String],
    ) -> (Range<usize>, String) {
        let point = self.append_point(i);
        let indent = point.lines.then_some(point.indent.as_str());
        let parent_indent = self
            .indent_before(self.elements[i].start.start)
            .unwrap_or("");
        let unit = point
            .indent
            .strip_prefix(parent_indent)
            .filter(|u| !u.is_empty())
            .unwrap_or("  ");
        let text = element_text(&format!("<{name}>"), name, children, indent, unit);
        (point.at..point.at, point.line(&text))
    }

    /// One level of indentation as element `i` sits below its parent ("  " if unknown).
    fn indent_unit(&self, i: usize) -> String {
        let el = &self.elements[i];
        let mine = self.indent_before(el.start.start);
        let parent = el
            .parent
            .and_then(|p| self.indent_before(self.elements[p].start.start));
        match (mine, parent) {
            (Some(m), Some(p)) if m.len() > p.len() && m.starts_with(p) => m[p.len()..].to_owned(),
            _ => "  ".to_owned(),
        }
    }

    /// The range of element `i` together with the whitespace that leads its line and the line
    /// break after it, when it stands on a line of its own (so removing it leaves no blank line).
    pub fn line_span(&self, i: usize) -> Range<usize> {
        let span = self.elements[i].span();
        match self.indent_before(span.start) {
            Some(lead) if self.text[span.end..].starts_with('\n') => {
                span.start - lead.len()..span.end + 1
            }
            _ => span,
        }
    }
}

/// Where a new child goes (see [`Doc::append_point`]).
pub(crate) struct AppendPoint {
    /// Byte offset to insert at.
    pub at: usize,
    /// Indentation of a child line.
    pub indent: String,
    /// Whether to put the new child on its own line.
    pub lines: bool,
}

impl AppendPoint {
    /// `element` laid out as the document lays out its children.
    pub fn line(&self, element: &str) -> String {
        if self.lines {
            format!("{}{element}\n", self.indent)
        } else {
            element.to_owned()
        }
    }
}

/// `open` + `children` + `</name>`: one child per line below `indent` when given.
fn element_text(
    open: &str,
    name: &str,
    children: &[String],
    indent: Option<&str>,
    unit: &str,
) -> String {
    match indent {
        Some(indent) => {
            let lines: String = children
                .iter()
                .map(|c| format!("{indent}{unit}{c}\n"))
                .collect();
            format!("{open}\n{lines}{indent}</{name}>")
        }
        None => format!("{open}{}</{name}>", children.concat()),
    }
}

fn position(reader: &Reader<&[u8]>) -> usize {
    // A &str cannot be longer than usize::MAX bytes.
    usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX)
}

fn element(
    e: &BytesStart,
    start: Range<usize>,
    parent: Option<usize>,
) -> Result<Element, DocError> {
    let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
    let mut attrs = Vec::new();
    for a in e.attributes() {
        let a = a.map_err(|err| DocError::Attribute {
            element: name.clone(),
            reason: err.to_string(),
        })?;
        let value = a.unescape_value().map_err(|err| DocError::Attribute {
            element: name.clone(),
            reason: err.to_string(),
        })?;
        attrs.push((
            String::from_utf8_lossy(a.key.as_ref()).into_owned(),
            value.into_owned(),
        ));
    }
    Ok(Element {
        name,
        attrs,
        end: start.clone(),
        start,
        parent,
    })
}

/// `value` escaped for an attribute quoted with `'`.
pub(crate) fn escape_attr(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// Applies `(range, replacement)` edits to `text`; ranges must not overlap (inserts are empty
/// ranges; several at one offset keep their order).
pub(crate) fn splice(text: &str, mut edits: Vec<(Range<usize>, String)>) -> String {
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = String::with_capacity(text.len() + 512);
    let mut at = 0;
    for (range, replacement) in edits {
        out.push_str(&text[at..range.start]);
        out.push_str(&replacement);
        at = range.end;
    }
    out.push_str(&text[at..]);
    out
}
