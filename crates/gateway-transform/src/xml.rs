//! XML <-> JSON conversion for request and response bodies, so an XML backend (SOAP, say) can be
//! offered as JSON, or the other way round.
//!
//! [`xml_to_json`] reads a whole UTF-8 XML 1.0 document in one pass, under [`XmlLimits`] on size,
//! nesting depth and node count, and refuses everything that makes XML parsers dangerous:
//! document type declarations (so no external entities and no entity expansion), entity
//! references other than the five predefined ones, and character references to characters
//! XML 1.0 cannot hold. [`json_to_xml`] writes a [`serde_json::Value`] as an XML document; the
//! output always parses again with [`xml_to_json`].
//!
//! # Example
//!
//! ```
//! use gateway_transform::xml::{JsonToXml, XmlLimits, json_to_xml, xml_to_json};
//! use serde_json::json;
//!
//! let soap = br#"<?xml version="1.0" encoding="UTF-8"?>
//! <soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">
//!   <soap:Body>
//!     <order id="42"><item>tea</item><item>milk</item><note/></order>
//!   </soap:Body>
//! </soap:Envelope>"#;
//! let value = xml_to_json(soap, &XmlLimits::default()).unwrap();
//! assert_eq!(
//!     value,
//!     json!({"soap:Envelope": {
//!         "@xmlns:soap": "http://www.w3.org/2003/05/soap-envelope",
//!         "soap:Body": {"order": {"@id": "42", "item": ["tea", "milk"], "note": null}}
//!     }})
//! );
//!
//! // And back: the same JSON again.
//! let xml = json_to_xml(&value, &JsonToXml::default()).unwrap();
//! assert!(xml.starts_with(br#"<?xml version="1.0" encoding="UTF-8"?><soap:Envelope"#));
//! assert_eq!(xml_to_json(&xml, &XmlLimits::default()).unwrap(), value);
//!
//! // Entities beyond the predefined five are refused, never expanded.
//! let xxe = br#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#;
//! assert!(xml_to_json(xxe, &XmlLimits::default()).is_err());
//! ```
//!
//! # Mapping
//!
//! The mapping is deterministic both ways. JSON objects are sorted maps (`serde_json` without
//! `preserve_order`), so **the order of siblings with different names is not kept**:
//! `<a><y/><x/><y/></a>` becomes `{"a": {"x": null, "y": [null, null]}}`, which is written back as
//! `<a><x/><y/><y/></a>`. Siblings of the same name keep their order (they become one array), and
//! attributes are written in name order.
//!
//! | XML | JSON | Notes |
//! |-----|------|-------|
//! | `<a>text</a>` | `{"a": "text"}` | The document is an object with one key, the root element's name. Text is kept exactly, leading and trailing whitespace included. |
//! | `<a/>`, `<a></a>` | `{"a": null}` | `null` is written as `<a/>`. An empty string, `""`, is written as `<a></a>`, so it comes back as `null`. |
//! | `<a id="1"/>` | `{"a": {"@id": "1"}}` | Attributes are `@`-keys. |
//! | `<a id="1">t</a>` | `{"a": {"@id": "1", "#text": "t"}}` | Text of an element that also has attributes or children is `#text`. |
//! | `<a><b>1</b><c/></a>` | `{"a": {"b": "1", "c": null}}` | Child elements are keys. |
//! | `<a><b>1</b><b>2</b></a>` | `{"a": {"b": ["1", "2"]}}` | Repeated siblings are an array; a JSON array is written as repeated elements. A one-item array is written as one element, so it comes back as a single value, not an array; an empty array writes nothing. |
//! | `<a>x<b/>y</a>` | `{"a": {"#text": "xy", "b": null}}` | Mixed content: the text pieces are concatenated into `#text`; where they stood among the children is lost. |
//! | `<a>`, newline, indent, `<b/>`, newline, `</a>` | `{"a": {"b": null}}` | Whitespace-only text next to child elements (indentation) is dropped. In an element without children it is text. |
//! | `<a><![CDATA[<x>]]></a>` | `{"a": "<x>"}` | CDATA is text. |
//! | `&lt;` `&#233;` `&#xE9;` | `"<"` `"é"` `"é"` | The five predefined entities and character references are resolved. |
//! | `<!-- c -->`, `<?pi x?>`, `<?xml ...?>` | nothing | Comments, processing instructions and the declaration are dropped. |
//! | `<soap:Envelope xmlns:soap="urn:s">` | `{"soap:Envelope": {"@xmlns:soap": "urn:s"}}` | Names are kept as written, prefix included; namespace declarations are ordinary `@`-keys, so they survive a round trip. Prefixes are not resolved. |
//! | `<n>1</n>`, `<b>true</b>` | `{"n": "1"}`, `{"b": "true"}` | All XML text becomes JSON strings: no type guessing. JSON numbers and booleans are written as their JSON text. |
//! | `{"a": 1, "b": 2}`, `[1, 2]`, `"x"` | `<root>...</root>` | A JSON value that is not an object with exactly one plain key whose value is not an array is wrapped in [`JsonToXml::root`]. |
//! | `{"a": [[1, 2]]}`, `[1, 2]` | `<a><item>1</item><item>2</item></a>` | Arrays directly inside arrays (and a top-level array) are elements named [`JsonToXml::item`]. |
//! | `{"a": {}}` | `<a/>` | Comes back as `null`; `{"a": {"#text": "t"}}` comes back as `"t"`. |
//!
//! Line ends are normalized as XML 1.0 requires (`CR LF` and a lone `CR` become `LF`), and tabs and
//! line ends inside attribute values become spaces. When writing, `&<>"'` are escaped
//! everywhere, `CR` is written as `&#13;`, and tab and `LF` in attribute values as `&#9;` and
//! `&#10;`, so strings survive the round trip exactly.
//!
//! # Security considerations
//!
//! - Any `<!DOCTYPE>` is refused ([`XmlError::Doctype`]): no DTD is read, so there are no
//!   external entities (XXE) and no entity expansion ("billion laughs").
//! - An entity reference other than `&lt;` `&gt;` `&amp;` `&apos;` `&quot;` is refused
//!   ([`XmlError::Entity`]), as is a character reference to NUL, a control character, a surrogate
//!   or U+FFFE/U+FFFF. A raw character XML 1.0 forbids is [`XmlError::InvalidChar`].
//! - Only UTF-8 is accepted ([`XmlError::Encoding`]); a declaration naming another encoding is
//!   refused rather than misread.
//! - Input size, element depth and node count are bounded by [`XmlLimits`]; neither direction
//!   recurses, and depth limits above [`MAX_DEPTH_CEILING`] are lowered to it, because
//!   `serde_json` drops (and serializes) values recursively.
//! - Error messages quote at most a short prefix of any name taken from the input.
//!
//! Standards: XML 1.0 (fifth edition) and Namespaces in XML 1.0 for names; RFC 7303 for the
//! `application/xml` media type; RFC 8259 for JSON.

use std::{borrow::Cow, fmt, fmt::Write as _};

use quick_xml::{
    events::{BytesDecl, BytesStart, Event, attributes::AttrError},
    reader::Reader,
};
use serde_json::{Map, Value};

/// The media type [`json_to_xml`] writes (RFC 7303); the document declares UTF-8.
pub const XML_CONTENT_TYPE: &str = "application/xml";

/// The media type [`xml_to_json`]'s result is sent as, once serialized.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The highest depth limit honoured: larger [`XmlLimits::max_depth`] and [`JsonToXml::max_depth`]
/// values are lowered to this, because `serde_json` drops and serializes values recursively and a
/// deeper value could overflow the stack.
pub const MAX_DEPTH_CEILING: usize = 256;

/// The key of an element's text when it also has attributes or children.
const TEXT_KEY: &str = "#text";

/// How many characters of an input-derived name an error message quotes.
const QUOTE_CHARS: usize = 48;

/// Bounds on the documents [`xml_to_json`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XmlLimits {
    /// Largest document, in bytes (default 1 MiB). Checked before anything is parsed.
    pub max_bytes: usize,
    /// Deepest element nesting; the root element is depth 1 (default 64, at most
    /// [`MAX_DEPTH_CEILING`]).
    pub max_depth: usize,
    /// Most nodes: elements, attributes and kept text nodes, added up over the whole document
    /// (default 100 000).
    pub max_nodes: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1024 * 1024,
            max_depth: 64,
            max_nodes: 100_000,
        }
    }
}

/// How [`json_to_xml`] writes a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonToXml {
    /// The root element's name when the JSON value is not an object with exactly one plain key
    /// whose value is not an array (default `root`).
    pub root: String,
    /// The element name for an array's items when the array sits directly in another array or
    /// is the top-level value (default `item`).
    pub item: String,
    /// Whether to start with `<?xml version="1.0" encoding="UTF-8"?>` (default `true`).
    pub declaration: bool,
    /// Deepest element nesting written; the root element is depth 1 (default 64, at most
    /// [`MAX_DEPTH_CEILING`]).
    pub max_depth: usize,
}

impl Default for JsonToXml {
    fn default() -> Self {
        Self {
            root: "root".to_owned(),
            item: "item".to_owned(),
            declaration: true,
            max_depth: 64,
        }
    }
}

/// Why a document could not be converted. Offsets are byte offsets into the XML input (a
/// leading byte order mark included); problems found in an attribute are reported at the start
/// of its element's tag.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum XmlError {
    /// The input is not well-formed XML (unclosed or mismatched tags, a bad name, two root
    /// elements, text outside the root element, a duplicate attribute, ...).
    Syntax {
        /// Where the problem was found.
        offset: usize,
        /// What is wrong.
        message: String,
    },
    /// The document has a `<!DOCTYPE>`; DTDs are refused so no entity can be declared.
    Doctype {
        /// Where the declaration starts.
        offset: usize,
    },
    /// An entity reference other than the five predefined ones, or a character reference to a
    /// character XML 1.0 does not allow (NUL, control characters, surrogates, U+FFFE, U+FFFF).
    Entity {
        /// Where the reference starts (its element's tag, in an attribute).
        offset: usize,
        /// The reference between `&` and `;`, shortened if long.
        reference: String,
    },
    /// The input is not valid UTF-8, or declares another encoding.
    Encoding {
        /// Where the invalid bytes or the declaration start.
        offset: usize,
        /// The encoding the document declares, when that is the problem.
        declared: Option<String>,
    },
    /// A character XML 1.0 cannot hold: a control character other than tab, CR and LF, or
    /// U+FFFE/U+FFFF. It is refused, never silently dropped.
    InvalidChar {
        /// Where it is in the XML input; `None` when it is in a JSON string.
        offset: Option<usize>,
        /// The character.
        ch: char,
    },
    /// The input is larger than [`XmlLimits::max_bytes`].
    TooLarge {
        /// The input's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Elements nest deeper than the depth limit.
    TooDeep {
        /// Where the element too many starts in the XML input; `None` when writing XML.
        offset: Option<usize>,
        /// The limit in force.
        limit: usize,
    },
    /// The document has more nodes than [`XmlLimits::max_nodes`].
    TooManyNodes {
        /// Where the node too many was found.
        offset: usize,
        /// The limit.
        limit: usize,
    },
    /// A JSON key (or a [`JsonToXml`] name) that is not an XML name: empty, starting with a
    /// digit, holding a space, an unknown `#` key, more than one `:`, ...
    InvalidName {
        /// The key, shortened if long.
        name: String,
    },
    /// Something the mapping cannot express: an `@` attribute key or `#text` whose value is not
    /// a string, number or boolean, or an XML version other than 1.0.
    Unsupported {
        /// What it is.
        message: String,
    },
}

impl XmlError {
    /// The byte offset in the XML input, when the error has one.
    pub fn offset(&self) -> Option<usize> {
        match self {
            Self::Syntax { offset, .. }
            | Self::Doctype { offset }
            | Self::Entity { offset, .. }
            | Self::Encoding { offset, .. }
            | Self::TooManyNodes { offset, .. } => Some(*offset),
            Self::InvalidChar { offset, .. } | Self::TooDeep { offset, .. } => *offset,
            Self::TooLarge { .. } | Self::InvalidName { .. } | Self::Unsupported { .. } => None,
        }
    }
}

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { offset, message } => {
                write!(f, "malformed xml at byte {offset}: {message}")
            }
            Self::Doctype { offset } => write!(
                f,
                "document type declaration at byte {offset} refused: DTDs and the entities they \
                 declare are not accepted"
            ),
            Self::Entity { offset, reference } if reference.starts_with('#') => write!(
                f,
                "character reference `&{reference};` at byte {offset} does not name a character \
                 xml 1.0 allows"
            ),
            Self::Entity { offset, reference } => write!(
                f,
                "entity reference `&{reference};` at byte {offset} refused: only &lt; &gt; &amp; \
                 &apos; &quot; and character references are accepted"
            ),
            Self::Encoding {
                offset,
                declared: Some(declared),
            } => write!(
                f,
                "the document declares encoding `{declared}` at byte {offset}; only UTF-8 is \
                 accepted"
            ),
            Self::Encoding {
                offset,
                declared: None,
            } => write!(f, "invalid UTF-8 at byte {offset}"),
            Self::InvalidChar { offset, ch } => {
                write!(
                    f,
                    "character U+{:04X} cannot be represented in xml 1.0",
                    u32::from(*ch)
                )?;
                match offset {
                    Some(offset) => write!(f, " (at byte {offset})"),
                    None => f.write_str(" (in a JSON string)"),
                }
            }
            Self::TooLarge { len, limit } => {
                write!(
                    f,
                    "xml document of {len} bytes exceeds the {limit}-byte limit"
                )
            }
            Self::TooDeep {
                offset: Some(offset),
                limit,
            } => write!(
                f,
                "element at byte {offset} nests deeper than the limit of {limit}"
            ),
            Self::TooDeep {
                offset: None,
                limit,
            } => write!(
                f,
                "the JSON value would nest xml elements deeper than the limit of {limit}"
            ),
            Self::TooManyNodes { offset, limit } => write!(
                f,
                "xml document exceeds the limit of {limit} nodes at byte {offset}"
            ),
            Self::InvalidName { name } => write!(f, "`{name}` is not a valid xml name"),
            Self::Unsupported { message } => f.write_str(message),
        }
    }
}

impl std::error::Error for XmlError {}

/// Converts an XML document to JSON (see the [module docs](self) for the mapping): one object
/// whose only key is the root element's name.
///
/// # Errors
///
/// [`XmlError::TooLarge`], [`XmlError::TooDeep`] and [`XmlError::TooManyNodes`] when `limits`
/// are exceeded; [`XmlError::Encoding`] for input that is not UTF-8; [`XmlError::Doctype`],
/// [`XmlError::Entity`] and [`XmlError::InvalidChar`] for the constructs refused (see
/// *Security considerations*); [`XmlError::Syntax`] for input that is not well-formed XML;
/// [`XmlError::Unsupported`] for an XML version other than 1.0.
pub fn xml_to_json(input: &[u8], limits: &XmlLimits) -> Result<Value, XmlError> {
    if input.len() > limits.max_bytes {
        return Err(XmlError::TooLarge {
            len: input.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(input).map_err(|e| XmlError::Encoding {
        offset: e.valid_up_to(),
        declared: None,
    })?;
    check_chars(text)?;
    let (base, body) = match text.strip_prefix('\u{FEFF}') {
        Some(rest) => ('\u{FEFF}'.len_utf8(), rest),
        None => (0, text),
    };
    Converter {
        base,
        limits: XmlLimits {
            max_depth: limits.max_depth.min(MAX_DEPTH_CEILING),
            ..*limits
        },
        nodes: 0,
        stack: Vec::new(),
        root: None,
    }
    .run(body)
}

/// Writes `value` as an XML document (see the [module docs](self) for the mapping).
///
/// # Errors
///
/// [`XmlError::InvalidName`] for an object key (or `opts.root` / `opts.item`) that is not an XML
/// name; [`XmlError::Unsupported`] for an `@` key or `#text` whose value is not a string, number
/// or boolean; [`XmlError::InvalidChar`] for a string holding a character XML 1.0 cannot hold;
/// [`XmlError::TooDeep`] when elements would nest deeper than `opts.max_depth`.
pub fn json_to_xml(value: &Value, opts: &JsonToXml) -> Result<Vec<u8>, XmlError> {
    for name in [&opts.root, &opts.item] {
        if !is_qname(name) {
            return Err(invalid_name(name));
        }
    }
    let max_depth = opts.max_depth.min(MAX_DEPTH_CEILING);
    let mut out = String::with_capacity(256);
    if opts.declaration {
        out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    }
    let mut stack = vec![top_step(value, opts)?];
    while let Some(step) = stack.pop() {
        match step {
            Step::Close(name) => {
                out.push_str("</");
                out.push_str(name);
                out.push('>');
            }
            Step::Emit {
                name,
                value,
                depth,
                nested,
            } => {
                if let (Value::Array(items), false) = (value, nested) {
                    // Repeated siblings: no element of their own.
                    for value in items.iter().rev() {
                        stack.push(Step::Emit {
                            name,
                            value,
                            depth,
                            nested: true,
                        });
                    }
                    continue;
                }
                if depth > max_depth {
                    return Err(XmlError::TooDeep {
                        offset: None,
                        limit: max_depth,
                    });
                }
                out.push('<');
                out.push_str(name);
                match value {
                    Value::Null => out.push_str("/>"),
                    Value::Array(items) if items.is_empty() => out.push_str("/>"),
                    Value::Array(items) => {
                        out.push('>');
                        stack.push(Step::Close(name));
                        for value in items.iter().rev() {
                            stack.push(Step::Emit {
                                name: &opts.item,
                                value,
                                depth: depth + 1,
                                nested: true,
                            });
                        }
                    }
                    Value::Object(map) => {
                        if open_object(&mut out, map)? {
                            stack.push(Step::Close(name));
                            for (key, value) in map.iter().rev() {
                                if !key.starts_with(['@', '#']) {
                                    stack.push(Step::Emit {
                                        name: key,
                                        value,
                                        depth: depth + 1,
                                        nested: false,
                                    });
                                }
                            }
                        }
                    }
                    scalar => {
                        out.push('>');
                        write_scalar(&mut out, scalar, false)?;
                        out.push_str("</");
                        out.push_str(name);
                        out.push('>');
                    }
                }
            }
        }
    }
    Ok(out.into_bytes())
}

// ---------------------------------------------------------------------------------------------
// XML -> JSON

/// An element being read.
struct Frame<'a> {
    start: BytesStart<'a>,
    /// Attributes and children so far.
    map: Map<String, Value>,
    /// Character data so far (borrowed from the input while it is one unescaped piece).
    text: Cow<'a, str>,
    /// Where in `text` the current run of character data (since the last child tag) starts.
    seg_start: usize,
    has_children: bool,
}

impl Frame<'_> {
    /// Ends the current text run at a child element's tag: a whitespace-only run is dropped.
    /// Whether a text node was kept.
    fn end_segment(&mut self) -> bool {
        let segment = self.text.get(self.seg_start..).unwrap_or_default();
        let kept = !is_xml_whitespace(segment);
        if !kept {
            match &mut self.text {
                Cow::Borrowed(s) => *s = s.get(..self.seg_start).unwrap_or_default(),
                Cow::Owned(s) => s.truncate(self.seg_start),
            }
        }
        self.seg_start = self.text.len();
        kept
    }
}

struct Converter<'a> {
    /// Bytes before the parsed text (a byte order mark).
    base: usize,
    limits: XmlLimits,
    nodes: usize,
    stack: Vec<Frame<'a>>,
    root: Option<(String, Value)>,
}

impl<'a> Converter<'a> {
    fn run(mut self, body: &'a str) -> Result<Value, XmlError> {
        let mut reader = Reader::from_str(body);
        let config = reader.config_mut();
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        config.allow_dangling_amp = false;
        let mut first = true;
        loop {
            let start = self.base + to_usize(reader.buffer_position());
            let event = match reader.read_event() {
                Ok(event) => event,
                Err(e) => {
                    let at = self.base + to_usize(reader.error_position());
                    return Err(from_parser(&e, at.max(start)));
                }
            };
            let is_first = std::mem::replace(&mut first, false);
            match event {
                Event::Decl(decl) => {
                    if !is_first || start != self.base {
                        return Err(syntax(start, "the xml declaration must open the document"));
                    }
                    check_decl(&decl, start)?;
                }
                Event::DocType(_) => return Err(XmlError::Doctype { offset: start }),
                Event::Start(e) => self.open(e, start)?,
                Event::Empty(e) => {
                    self.open(e, start)?;
                    self.close(start)?;
                }
                Event::End(_) => self.close(start)?,
                Event::Text(t) => self.text(t.xml10_content(), false, start)?,
                Event::CData(c) => self.text(c.xml10_content(), true, start)?,
                Event::GeneralRef(r) => {
                    let ch = resolve_reference(&r).ok_or_else(|| XmlError::Entity {
                        offset: start,
                        reference: quote(&r),
                    })?;
                    match self.stack.last_mut() {
                        Some(frame) => frame.text.to_mut().push(ch),
                        None => return Err(syntax(start, "reference outside the root element")),
                    }
                }
                Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
        }
        let end = self.base + body.len();
        if let Some(frame) = self.stack.last() {
            let message = format!("element `{}` is not closed", quote(frame.start.name().0));
            return Err(XmlError::Syntax {
                offset: end,
                message,
            });
        }
        let (name, value) = self
            .root
            .ok_or_else(|| syntax(end, "the document has no root element"))?;
        let mut doc = Map::new();
        doc.insert(name, value);
        Ok(Value::Object(doc))
    }

    fn count(&mut self, offset: usize) -> Result<(), XmlError> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(XmlError::TooManyNodes {
                offset,
                limit: self.limits.max_nodes,
            });
        }
        Ok(())
    }

    fn open(&mut self, start: BytesStart<'a>, offset: usize) -> Result<(), XmlError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(XmlError::TooDeep {
                offset: Some(offset),
                limit: self.limits.max_depth,
            });
        }
        if self.stack.is_empty() && self.root.is_some() {
            return Err(syntax(offset, "a second root element"));
        }
        let name = start.name().0;
        if !is_qname(name) {
            let message = format!("`{}` is not a valid element name", quote(name));
            return Err(XmlError::Syntax { offset, message });
        }
        self.count(offset)?;
        let kept_text = match self.stack.last_mut() {
            Some(parent) => {
                parent.has_children = true;
                parent.end_segment()
            }
            None => false,
        };
        if kept_text {
            self.count(offset)?;
        }
        let mut map = Map::new();
        let mut attributes = start.attributes();
        // Duplicates are caught by the map below.
        attributes.with_checks(false);
        for attribute in attributes {
            // Attribute positions count from the character after `<`.
            let attribute = attribute.map_err(|e| attribute_error(&e, offset + 1))?;
            let key = attribute.key.0;
            if !is_qname(key) {
                let message = format!("`{}` is not a valid attribute name", quote(key));
                return Err(XmlError::Syntax { offset, message });
            }
            self.count(offset)?;
            let value = unescape_attribute(&attribute.value, offset)?.into_owned();
            if map
                .insert(format!("@{key}"), Value::String(value))
                .is_some()
            {
                let message = format!("duplicate attribute `{}`", quote(key));
                return Err(XmlError::Syntax { offset, message });
            }
        }
        self.stack.push(Frame {
            start,
            map,
            text: Cow::Borrowed(""),
            seg_start: 0,
            has_children: false,
        });
        Ok(())
    }

    fn close(&mut self, offset: usize) -> Result<(), XmlError> {
        let mut frame = self
            .stack
            .pop()
            .ok_or_else(|| syntax(offset, "end tag without a start tag"))?;
        let kept_text = if frame.has_children {
            frame.end_segment()
        } else {
            !frame.text.is_empty()
        };
        if kept_text {
            self.count(offset)?;
        }
        let Frame {
            start,
            mut map,
            text,
            ..
        } = frame;
        let value = match (map.is_empty(), text.is_empty()) {
            (true, true) => Value::Null,
            (true, false) => Value::String(text.into_owned()),
            (false, empty) => {
                if !empty {
                    map.insert(TEXT_KEY.to_owned(), Value::String(text.into_owned()));
                }
                Value::Object(map)
            }
        };
        let name = start.name().0;
        match self.stack.last_mut() {
            Some(parent) => match parent.map.get_mut(name) {
                Some(Value::Array(items)) => items.push(value),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, value]);
                }
                None => {
                    parent.map.insert(name.to_owned(), value);
                }
            },
            None => self.root = Some((name.to_owned(), value)),
        }
        Ok(())
    }

    fn text(&mut self, piece: Cow<'a, str>, cdata: bool, offset: usize) -> Result<(), XmlError> {
        match self.stack.last_mut() {
            Some(frame) if frame.text.is_empty() => frame.text = piece,
            Some(frame) => frame.text.to_mut().push_str(&piece),
            None if cdata => return Err(syntax(offset, "CDATA outside the root element")),
            None if !is_xml_whitespace(&piece) => {
                return Err(syntax(offset, "text outside the root element"));
            }
            None => {}
        }
        Ok(())
    }
}

fn check_decl(decl: &BytesDecl<'_>, offset: usize) -> Result<(), XmlError> {
    let version = decl.version().map_err(|e| from_parser(&e, offset))?;
    if version != "1.0" {
        return Err(XmlError::Unsupported {
            message: format!(
                "xml version `{}` is not supported; only 1.0 is",
                quote(&version)
            ),
        });
    }
    if let Some(encoding) = decl.encoding() {
        // Positions count from the character after `<?`.
        let encoding = encoding.map_err(|e| attribute_error(&e, offset + 2))?;
        if !encoding.eq_ignore_ascii_case("UTF-8") {
            return Err(XmlError::Encoding {
                offset,
                declared: Some(quote(&encoding)),
            });
        }
    }
    Ok(())
}

/// Refuses characters XML 1.0 does not allow anywhere in a document: C0 controls other than tab,
/// LF and CR, and U+FFFE / U+FFFF. (UTF-8 has no surrogates.)
fn check_chars(text: &str) -> Result<(), XmlError> {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        let bad = match b {
            b'\t' | b'\n' | b'\r' => None,
            0..0x20 => Some(char::from(b)),
            // U+FFFE and U+FFFF are EF BF BE and EF BF BF.
            0xEF if bytes.get(i + 1) == Some(&0xBF) => match bytes.get(i + 2) {
                Some(0xBE) => Some('\u{FFFE}'),
                Some(0xBF) => Some('\u{FFFF}'),
                _ => None,
            },
            _ => None,
        };
        if let Some(ch) = bad {
            return Err(XmlError::InvalidChar {
                offset: Some(i),
                ch,
            });
        }
    }
    Ok(())
}

/// An attribute value as XML 1.0 normalizes it: references resolved, tab, CR, LF and CR LF
/// turned into one space each.
fn unescape_attribute(raw: &str, offset: usize) -> Result<Cow<'_, str>, XmlError> {
    const SPECIAL: [char; 5] = ['&', '<', '\t', '\n', '\r'];
    if !raw.contains(SPECIAL) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    // `find` returns the index of an ASCII character: every split below is on a char boundary.
    while let Some(i) = rest.find(SPECIAL) {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let mut chars = from.chars();
        match chars.next() {
            Some('<') => return Err(syntax(offset, "`<` in an attribute value")),
            Some('&') => {
                let after = chars.as_str();
                let Some((reference, tail)) = after.split_once(';') else {
                    return Err(syntax(
                        offset,
                        "unterminated reference in an attribute value",
                    ));
                };
                let ch = resolve_reference(reference).ok_or_else(|| XmlError::Entity {
                    offset,
                    reference: quote(reference),
                })?;
                out.push(ch);
                rest = tail;
            }
            Some('\r') => {
                out.push(' ');
                let tail = chars.as_str();
                rest = tail.strip_prefix('\n').unwrap_or(tail);
            }
            _ => {
                out.push(' ');
                rest = chars.as_str();
            }
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

/// The character a reference (the text between `&` and `;`) stands for, if it is allowed.
fn resolve_reference(reference: &str) -> Option<char> {
    match reference {
        "lt" => Some('<'),
        "gt" => Some('>'),
        "amp" => Some('&'),
        "apos" => Some('\''),
        "quot" => Some('"'),
        _ => {
            let number = reference.strip_prefix('#')?;
            let code = match number.strip_prefix('x') {
                Some(hex) => parse_digits(hex, 16),
                None => parse_digits(number, 10),
            }?;
            char::from_u32(code).filter(|&c| is_xml_char(c))
        }
    }
}

fn parse_digits(digits: &str, radix: u32) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    digits.chars().try_fold(0_u32, |acc, c| {
        acc.checked_mul(radix)?.checked_add(c.to_digit(radix)?)
    })
}

fn from_parser(e: &quick_xml::Error, offset: usize) -> XmlError {
    match e {
        quick_xml::Error::Encoding(_) => XmlError::Encoding {
            offset,
            declared: None,
        },
        other => XmlError::Syntax {
            offset,
            message: clip(&other.to_string(), 200),
        },
    }
}

/// An attribute that does not parse; its position is relative to `base`.
fn attribute_error(e: &AttrError, base: usize) -> XmlError {
    let (at, message) = match *e {
        AttrError::ExpectedEq(at) => (at, "an attribute name must be followed by `=`"),
        AttrError::ExpectedValue(at) => (at, "`=` must be followed by a quoted attribute value"),
        AttrError::UnquotedValue(at) => (at, "an attribute value must be quoted"),
        AttrError::ExpectedQuote(at, _) => (at, "an attribute value is missing its closing quote"),
        AttrError::Duplicated(at, _) => (at, "duplicate attribute"),
    };
    syntax(base.saturating_add(at), message)
}

fn syntax(offset: usize, message: &str) -> XmlError {
    XmlError::Syntax {
        offset,
        message: message.to_owned(),
    }
}

fn to_usize(position: u64) -> usize {
    usize::try_from(position).unwrap_or(usize::MAX)
}

// ---------------------------------------------------------------------------------------------
// JSON -> XML

/// Work left for [`json_to_xml`]'s loop (an explicit stack: no recursion).
enum Step<'v> {
    /// Write `value` as element(s) named `name`. `nested`: the value sits directly in an array,
    /// so an array value becomes one element holding `item`s rather than repeated elements.
    Emit {
        name: &'v str,
        value: &'v Value,
        depth: usize,
        nested: bool,
    },
    /// Write `</name>`.
    Close(&'v str),
}

/// The first step: the single key of a one-key object, or the whole value wrapped in the root.
fn top_step<'v>(value: &'v Value, opts: &'v JsonToXml) -> Result<Step<'v>, XmlError> {
    if let Value::Object(map) = value
        && map.len() == 1
        && let Some((key, inner)) = map.iter().next()
        && !key.starts_with(['@', '#'])
        && !inner.is_array()
    {
        if !is_qname(key) {
            return Err(invalid_name(key));
        }
        return Ok(Step::Emit {
            name: key,
            value: inner,
            depth: 1,
            nested: false,
        });
    }
    Ok(Step::Emit {
        name: &opts.root,
        value,
        depth: 1,
        nested: true,
    })
}

/// Writes an object's attributes and text after `<name`, closing the start tag. Returns whether
/// the element stays open (it has text or children).
fn open_object(out: &mut String, map: &Map<String, Value>) -> Result<bool, XmlError> {
    let mut text = None;
    let mut has_children = false;
    for (key, value) in map {
        if let Some(attribute) = key.strip_prefix('@') {
            if !is_qname(attribute) {
                return Err(invalid_name(key));
            }
            if !is_scalar(value) {
                return Err(XmlError::Unsupported {
                    message: format!(
                        "attribute `{}` must be a string, number or boolean",
                        quote(key)
                    ),
                });
            }
            out.push(' ');
            out.push_str(attribute);
            out.push_str("=\"");
            write_scalar(out, value, true)?;
            out.push('"');
        } else if key == TEXT_KEY {
            if !is_scalar(value) {
                return Err(XmlError::Unsupported {
                    message: "`#text` must be a string, number or boolean".to_owned(),
                });
            }
            text = Some(value);
        } else if is_qname(key) {
            has_children = true;
        } else {
            return Err(invalid_name(key));
        }
    }
    if text.is_none() && !has_children {
        out.push_str("/>");
        return Ok(false);
    }
    out.push('>');
    if let Some(text) = text {
        write_scalar(out, text, false)?;
    }
    Ok(true)
}

fn is_scalar(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

fn write_scalar(out: &mut String, value: &Value, attribute: bool) -> Result<(), XmlError> {
    match value {
        Value::String(s) => escape_into(out, s, attribute),
        Value::Number(n) => {
            // Writing to a `String` cannot fail.
            let _ = write!(out, "{n}");
            Ok(())
        }
        Value::Bool(b) => {
            out.push_str(if *b { "true" } else { "false" });
            Ok(())
        }
        Value::Null | Value::Array(_) | Value::Object(_) => Ok(()),
    }
}

/// Escapes `&<>"'`, writes CR (and, in attributes, tab and LF) as character references so they
/// survive normalization, and refuses characters XML 1.0 cannot hold.
fn escape_into(out: &mut String, s: &str, attribute: bool) -> Result<(), XmlError> {
    let mut rest = s;
    while let Some(i) = rest.find(|c: char| {
        matches!(
            c,
            '&' | '<' | '>' | '"' | '\'' | '\r' | '\u{FFFE}' | '\u{FFFF}'
        ) || (c < ' ' && !matches!(c, '\t' | '\n'))
            || (attribute && matches!(c, '\t' | '\n'))
    }) {
        // `i` is a char boundary (from `find`).
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let mut chars = from.chars();
        let Some(c) = chars.next() else { break };
        out.push_str(match c {
            '&' => "&amp;",
            '<' => "&lt;",
            '>' => "&gt;",
            '"' => "&quot;",
            '\'' => "&apos;",
            '\r' => "&#13;",
            '\n' => "&#10;",
            '\t' => "&#9;",
            _ => {
                return Err(XmlError::InvalidChar {
                    offset: None,
                    ch: c,
                });
            }
        });
        rest = chars.as_str();
    }
    out.push_str(rest);
    Ok(())
}

fn invalid_name(name: &str) -> XmlError {
    XmlError::InvalidName { name: quote(name) }
}

// ---------------------------------------------------------------------------------------------
// Characters and names

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | ' '..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// A qualified name (Namespaces in XML 1.0): an XML 1.0 name with at most one `:`, neither first
/// nor last.
fn is_qname(name: &str) -> bool {
    match name.split_once(':') {
        Some((prefix, local)) => is_ncname(prefix) && is_ncname(local),
        None => is_ncname(name),
    }
}

/// An XML 1.0 (fifth edition) name without `:`.
fn is_ncname(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(is_name_start) && chars.all(is_name_char)
}

fn is_name_start(c: char) -> bool {
    matches!(c,
        'A'..='Z' | '_' | 'a'..='z'
        | '\u{C0}'..='\u{D6}' | '\u{D8}'..='\u{F6}' | '\u{F8}'..='\u{2FF}'
        | '\u{370}'..='\u{37D}' | '\u{37F}'..='\u{1FFF}' | '\u{200C}'..='\u{200D}'
        | '\u{2070}'..='\u{218F}' | '\u{2C00}'..='\u{2FEF}' | '\u{3001}'..='\u{D7FF}'
        | '\u{F900}'..='\u{FDCF}' | '\u{FDF0}'..='\u{FFFD}' | '\u{10000}'..='\u{EFFFF}')
}

fn is_name_char(c: char) -> bool {
    is_name_start(c)
        || matches!(c,
            '-' | '.' | '0'..='9' | '\u{B7}' | '\u{300}'..='\u{36F}' | '\u{203F}'..='\u{2040}')
}

/// An input-derived name for a message, shortened to [`QUOTE_CHARS`] characters.
fn quote(s: &str) -> String {
    clip(s, QUOTE_CHARS)
}

fn clip(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => format!("{}...", s.get(..end).unwrap_or_default()),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn to_json(xml: &str) -> Result<Value, XmlError> {
        xml_to_json(xml.as_bytes(), &XmlLimits::default())
    }

    fn json(xml: &str) -> Value {
        to_json(xml).unwrap_or_else(|e| panic!("{xml}: {e}"))
    }

    fn to_xml(value: &Value) -> Result<String, XmlError> {
        let opts = JsonToXml {
            declaration: false,
            ..JsonToXml::default()
        };
        json_to_xml(value, &opts).map(|b| String::from_utf8(b).unwrap())
    }

    fn xml(value: &Value) -> String {
        to_xml(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    // --- XML -> JSON, one test per mapping row -----------------------------------------------

    #[test]
    fn text_only_element_is_a_string_kept_exactly() {
        assert_eq!(json("<a>text</a>"), json!({"a": "text"}));
        assert_eq!(
            json("<a>  two words \n</a>"),
            json!({"a": "  two words \n"})
        );
        assert_eq!(
            json("<a> </a>"),
            json!({"a": " "}),
            "leaf whitespace is text"
        );
    }

    #[test]
    fn empty_element_is_null() {
        assert_eq!(json("<a/>"), json!({"a": null}));
        assert_eq!(json("<a></a>"), json!({"a": null}));
        assert_eq!(json("<a><!-- c --></a>"), json!({"a": null}));
    }

    #[test]
    fn attributes_are_at_keys() {
        assert_eq!(
            json(r#"<a id="1" b='x y'/>"#),
            json!({"a": {"@id": "1", "@b": "x y"}})
        );
        assert_eq!(json(r#"<a id=""/>"#), json!({"a": {"@id": ""}}));
    }

    #[test]
    fn text_beside_attributes_or_children_is_hash_text() {
        assert_eq!(
            json(r#"<a id="1">t</a>"#),
            json!({"a": {"@id": "1", "#text": "t"}})
        );
        assert_eq!(
            json("<a><b/>t</a>"),
            json!({"a": {"b": null, "#text": "t"}})
        );
    }

    #[test]
    fn child_elements_are_keys() {
        assert_eq!(
            json("<a><b>1</b><c/></a>"),
            json!({"a": {"b": "1", "c": null}})
        );
    }

    #[test]
    fn repeated_siblings_are_an_array_in_document_order() {
        assert_eq!(
            json("<a><b>1</b><c/><b>2</b><b><x/></b></a>"),
            json!({"a": {"b": ["1", "2", {"x": null}], "c": null}})
        );
    }

    #[test]
    fn mixed_content_concatenates_text() {
        assert_eq!(
            json("<a>x <b>1</b> y</a>"),
            json!({"a": {"#text": "x  y", "b": "1"}})
        );
    }

    #[test]
    fn whitespace_between_elements_is_dropped() {
        assert_eq!(
            json("<a>\n  <b>1</b>\n  <c/>\n</a>"),
            json!({"a": {"b": "1", "c": null}})
        );
        // A run that is not whitespace-only is kept exactly.
        assert_eq!(
            json("<a>\n x <b/>\n</a>"),
            json!({"a": {"#text": "\n x ", "b": null}})
        );
    }

    #[test]
    fn cdata_is_text() {
        assert_eq!(json("<a><![CDATA[<x> & y]]></a>"), json!({"a": "<x> & y"}));
        assert_eq!(json("<a>1<![CDATA[2]]>3</a>"), json!({"a": "123"}));
        assert_eq!(json("<a><![CDATA[]]></a>"), json!({"a": null}));
    }

    #[test]
    fn predefined_entities_and_char_refs_are_resolved() {
        assert_eq!(
            json("<a>&lt;&gt;&amp;&apos;&quot;&#233;&#xE9;&#x1F600;</a>"),
            json!({"a": "<>&'\"éé\u{1F600}"})
        );
        assert_eq!(
            json(r#"<a v="&lt;&#x41;&amp;"/>"#),
            json!({"a": {"@v": "<A&"}})
        );
    }

    #[test]
    fn comments_pis_and_declaration_are_dropped() {
        assert_eq!(
            json("<?xml version=\"1.0\"?><!--c--><?pi x?><a><?p?>t<!--c-->u</a><!--c-->\n"),
            json!({"a": "tu"})
        );
    }

    #[test]
    fn namespaces_are_kept_as_written() {
        assert_eq!(
            json(r#"<s:E xmlns:s="urn:s" xmlns="urn:d"><s:B x:y="1"/></s:E>"#),
            json!({"s:E": {"@xmlns:s": "urn:s", "@xmlns": "urn:d", "s:B": {"@x:y": "1"}}})
        );
    }

    #[test]
    fn text_is_never_typed() {
        assert_eq!(
            json("<a><n>1</n><b>true</b><z>null</z></a>"),
            json!({"a": {"n": "1", "b": "true", "z": "null"}})
        );
    }

    #[test]
    fn line_ends_and_attribute_whitespace_are_normalized() {
        assert_eq!(json("<a>1\r\n2\r3</a>"), json!({"a": "1\n2\n3"}));
        assert_eq!(json("<a>&#13;</a>"), json!({"a": "\r"}));
        assert_eq!(
            json("<a v=\"1\r\n2\t3\n4&#10;&#9;&#13;\"/>"),
            json!({"a": {"@v": "1 2 3 4\n\t\r"}})
        );
    }

    #[test]
    fn byte_order_mark_is_skipped_and_counted_in_offsets() {
        let mut input = "\u{FEFF}<a>x</a>".as_bytes().to_vec();
        assert_eq!(
            xml_to_json(&input, &XmlLimits::default()).unwrap(),
            json!({"a": "x"})
        );
        input.extend_from_slice(b"<b/>");
        let err = xml_to_json(&input, &XmlLimits::default()).unwrap_err();
        assert_eq!(err.offset(), Some(11), "{err}");
    }

    #[test]
    fn malformed_documents_are_syntax_errors() {
        for bad in [
            "",
            "   ",
            "<a>",
            "<a></b>",
            "</a>",
            "<a/><b/>",
            "text<a/>",
            "<a/>text",
            "<![CDATA[x]]><a/>",
            "&amp;<a/>",
            "<1a/>",
            "<a:b:c/>",
            "<a 1x=\"1\"/>",
            "<a x=\"1\" x=\"2\"/>",
            "<a x=1/>",
            "<a x=\"<\"/>",
            "<a>&</a>",
            "<a>& b;</a>",
            "<a x=\"&amp\"/>",
            " <?xml version=\"1.0\"?><a/>",
            "<a/><?xml version=\"1.0\"?>",
            "<a><!-- x -- y --></a>",
        ] {
            match to_json(bad) {
                Err(XmlError::Syntax { .. } | XmlError::Entity { .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let err = to_json("<a>\n<b></c></a>").unwrap_err();
        assert!(matches!(err, XmlError::Syntax { offset: 7, .. }), "{err:?}");
    }

    #[test]
    fn other_xml_versions_are_unsupported() {
        assert!(matches!(
            to_json("<?xml version=\"1.1\"?><a/>"),
            Err(XmlError::Unsupported { .. })
        ));
    }

    // --- JSON -> XML ---------------------------------------------------------------------------

    #[test]
    fn writes_the_declaration_by_default() {
        let out = json_to_xml(&json!({"a": "x"}), &JsonToXml::default()).unwrap();
        assert_eq!(out, br#"<?xml version="1.0" encoding="UTF-8"?><a>x</a>"#);
    }

    #[test]
    fn scalars_null_attributes_and_text() {
        assert_eq!(xml(&json!({"a": null})), "<a/>");
        assert_eq!(xml(&json!({"a": ""})), "<a></a>");
        assert_eq!(xml(&json!({"a": 1.5})), "<a>1.5</a>");
        assert_eq!(xml(&json!({"a": -3})), "<a>-3</a>");
        assert_eq!(xml(&json!({"a": false})), "<a>false</a>");
        assert_eq!(xml(&json!({"a": {}})), "<a/>");
        assert_eq!(
            xml(&json!({"a": {"@id": 7, "@ok": true, "#text": "t"}})),
            r#"<a id="7" ok="true">t</a>"#
        );
        assert_eq!(
            xml(&json!({"a": {"@xmlns:s": "urn:s", "s:b": "1"}})),
            r#"<a xmlns:s="urn:s"><s:b>1</s:b></a>"#
        );
    }

    #[test]
    fn arrays_are_repeated_elements_and_nested_arrays_are_items() {
        assert_eq!(
            xml(&json!({"a": {"b": ["1", null, {"c": "2"}]}})),
            "<a><b>1</b><b/><b><c>2</c></b></a>"
        );
        assert_eq!(
            xml(&json!({"a": {"b": [[1, 2], [], 3]}})),
            "<a><b><item>1</item><item>2</item></b><b/><b>3</b></a>"
        );
        assert_eq!(xml(&json!({"a": {"b": []}})), "<a></a>");
    }

    #[test]
    fn values_that_are_not_one_plain_key_are_wrapped_in_the_root() {
        assert_eq!(
            xml(&json!({"a": 1, "b": 2})),
            "<root><a>1</a><b>2</b></root>"
        );
        assert_eq!(xml(&json!("x")), "<root>x</root>");
        assert_eq!(xml(&json!(null)), "<root/>");
        assert_eq!(
            xml(&json!([1, 2])),
            "<root><item>1</item><item>2</item></root>"
        );
        assert_eq!(xml(&json!({"a": [1, 2]})), "<root><a>1</a><a>2</a></root>");
        assert_eq!(xml(&json!({"@x": "1"})), r#"<root x="1"/>"#);
        let opts = JsonToXml {
            root: "r".into(),
            item: "i".into(),
            declaration: false,
            ..JsonToXml::default()
        };
        assert_eq!(
            json_to_xml(&json!([[1]]), &opts).unwrap(),
            b"<r><i><i>1</i></i></r>"
        );
    }

    #[test]
    fn siblings_are_written_in_key_order() {
        let v = json("<a><y>1</y><x/><y>2</y></a>");
        assert_eq!(xml(&v), "<a><x/><y>1</y><y>2</y></a>");
    }

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(
            xml(&json!({"a": "<&>\"'\r\n\t"})),
            "<a>&lt;&amp;&gt;&quot;&apos;&#13;\n\t</a>"
        );
        assert_eq!(
            xml(&json!({"a": {"@v": "<&>\"'\r\n\t"}})),
            r#"<a v="&lt;&amp;&gt;&quot;&apos;&#13;&#10;&#9;"/>"#
        );
        // `]]>` cannot end a CDATA section that is not there.
        assert_eq!(xml(&json!({"a": "]]>"})), "<a>]]&gt;</a>");
    }

    #[test]
    fn keys_that_are_not_xml_names_are_refused() {
        for key in [
            "a b", "1x", "", "-a", ".a", ":a", "a:", "a:b:c", "@", "@1", "@a b", "#foo", "#",
            "a<b", "a&b", "a\"b",
        ] {
            let err = to_xml(&json!({"r": {key: "v"}})).unwrap_err();
            assert!(
                matches!(err, XmlError::InvalidName { .. }),
                "{key:?}: {err:?}"
            );
        }
        assert!(matches!(
            to_xml(&json!({"1x": "v"})),
            Err(XmlError::InvalidName { .. })
        ));
        // Even when the value writes nothing.
        assert!(matches!(
            to_xml(&json!({"r": {"a b": []}})),
            Err(XmlError::InvalidName { .. })
        ));
        let bad_root = JsonToXml {
            root: "a b".into(),
            ..JsonToXml::default()
        };
        assert!(matches!(
            json_to_xml(&json!(1), &bad_root),
            Err(XmlError::InvalidName { .. })
        ));
        // Non-ASCII names are names.
        assert_eq!(xml(&json!({"été": "1"})), "<été>1</été>");
    }

    #[test]
    fn attribute_and_text_keys_need_scalar_values() {
        for v in [
            json!({"a": {"@x": {"y": 1}}}),
            json!({"a": {"@x": [1]}}),
            json!({"a": {"@x": null}}),
            json!({"a": {"#text": {"y": 1}}}),
            json!({"a": {"#text": [1]}}),
            json!({"a": {"#text": null}}),
        ] {
            assert!(
                matches!(to_xml(&v), Err(XmlError::Unsupported { .. })),
                "{v}"
            );
        }
    }

    #[test]
    fn control_characters_in_json_strings_are_refused() {
        for s in ["a\u{0}b", "\u{1}", "\u{1F}", "\u{FFFE}", "\u{FFFF}"] {
            let err = to_xml(&json!({"a": s})).unwrap_err();
            assert!(
                matches!(err, XmlError::InvalidChar { offset: None, .. }),
                "{s:?}: {err:?}"
            );
            assert!(matches!(
                to_xml(&json!({"a": {"@v": s}})),
                Err(XmlError::InvalidChar { .. })
            ));
        }
        // Tab, CR and LF are fine; so are C1 controls, which XML 1.0 allows.
        assert!(to_xml(&json!({"a": "\t\r\n\u{85}"})).is_ok());
    }

    #[test]
    fn deep_json_is_too_deep_without_recursion() {
        let mut v = json!("x");
        for _ in 0..10_000 {
            // Not `json!`, which would clone `v` recursively.
            let mut m = Map::new();
            m.insert("a".to_owned(), v);
            v = Value::Object(m);
        }
        let err = to_xml(&v).unwrap_err();
        assert_eq!(
            err,
            XmlError::TooDeep {
                offset: None,
                limit: 64
            }
        );
        let mut arrays = json!(1);
        for _ in 0..100 {
            arrays = json!([arrays]);
        }
        assert!(matches!(to_xml(&arrays), Err(XmlError::TooDeep { .. })));
        // serde_json drops `v` recursively; unwind it by hand so the test cannot overflow.
        while let Value::Object(mut m) = v {
            v = m.remove("a").unwrap_or(Value::Null);
        }
    }

    #[test]
    fn depth_limit_counts_elements() {
        let opts = JsonToXml {
            max_depth: 2,
            declaration: false,
            ..JsonToXml::default()
        };
        assert!(json_to_xml(&json!({"a": {"b": "x", "@c": "1"}}), &opts).is_ok());
        assert!(json_to_xml(&json!({"a": {"b": ["x", "y"]}}), &opts).is_ok());
        assert!(json_to_xml(&json!({"a": {"b": {"c": null}}}), &opts).is_err());
        assert!(json_to_xml(&json!({"a": {"b": [["x"]]}}), &opts).is_err());
    }

    // --- hostile input -------------------------------------------------------------------------

    #[test]
    fn xxe_is_refused() {
        let err = to_json(r#"<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>"#)
            .unwrap_err();
        assert_eq!(err, XmlError::Doctype { offset: 0 });
        assert!(err.to_string().contains("refused"));
    }

    #[test]
    fn billion_laughs_is_refused() {
        let mut doc = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n");
        doc.push_str(" <!ENTITY lol \"lol\">\n");
        for i in 1..10 {
            let prev = if i == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", i - 1)
            };
            doc.push_str(&format!(
                " <!ENTITY lol{i} \"{}\">\n",
                format!("&{prev};").repeat(10)
            ));
        }
        doc.push_str("]>\n<lolz>&lol9;</lolz>");
        assert_eq!(to_json(&doc).unwrap_err(), XmlError::Doctype { offset: 22 });
    }

    #[test]
    fn undeclared_entities_are_refused() {
        let err = to_json("<a>x&foo;</a>").unwrap_err();
        assert_eq!(
            err,
            XmlError::Entity {
                offset: 4,
                reference: "foo".into()
            }
        );
        assert!(err.to_string().contains("&foo;"), "{err}");
        assert!(matches!(
            to_json(r#"<a v="&foo;"/>"#),
            Err(XmlError::Entity { offset: 0, .. })
        ));
        assert!(matches!(to_json("<a>&;</a>"), Err(XmlError::Entity { .. })));
    }

    #[test]
    fn char_refs_to_forbidden_characters_are_refused() {
        for r in [
            "#0",
            "#x0",
            "#1",
            "#x1F",
            "#xD800",
            "#xDFFF",
            "#xFFFE",
            "#xFFFF",
            "#x110000",
            "#99999999999",
            "#X41",
            "#x",
            "#",
            "#-1",
            "#+65",
            "#xG",
        ] {
            let err = to_json(&format!("<a>&{r};</a>")).unwrap_err();
            assert_eq!(
                err,
                XmlError::Entity {
                    offset: 3,
                    reference: r.into()
                },
                "{r}"
            );
            assert!(
                matches!(
                    to_json(&format!("<a v=\"&{r};\"/>")),
                    Err(XmlError::Entity { .. })
                ),
                "{r}"
            );
        }
        assert_eq!(
            json("<a>&#9;&#000065;&#x10FFFF;</a>"),
            json!({"a": "\tA\u{10FFFF}"})
        );
    }

    #[test]
    fn deep_nesting_is_too_deep_without_stack_overflow() {
        let doc = "<a>".repeat(100_000) + &"</a>".repeat(100_000);
        let err = to_json(&doc).unwrap_err();
        assert_eq!(
            err,
            XmlError::TooDeep {
                offset: Some(64 * 3),
                limit: 64
            }
        );
        // A huge configured limit is lowered to the ceiling.
        let limits = XmlLimits {
            max_depth: usize::MAX,
            ..XmlLimits::default()
        };
        assert!(matches!(
            xml_to_json(doc.as_bytes(), &limits),
            Err(XmlError::TooDeep {
                limit: MAX_DEPTH_CEILING,
                ..
            })
        ));
        let ok = "<a>".repeat(64) + &"</a>".repeat(64);
        assert!(to_json(&ok).is_ok());
        let empty = "<a>".repeat(63) + "<a/>" + &"</a>".repeat(63);
        assert!(to_json(&empty).is_ok());
        let too_deep = "<a>".repeat(64) + "<a/>" + &"</a>".repeat(64);
        assert!(matches!(to_json(&too_deep), Err(XmlError::TooDeep { .. })));
    }

    #[test]
    fn input_over_max_bytes_is_refused_before_parsing() {
        let limits = XmlLimits {
            max_bytes: 8,
            ..XmlLimits::default()
        };
        assert_eq!(
            xml_to_json(b"<a>12345</a>", &limits),
            Err(XmlError::TooLarge { len: 12, limit: 8 })
        );
        // Not even the encoding is looked at.
        assert!(matches!(
            xml_to_json(&[0xFF; 9], &limits),
            Err(XmlError::TooLarge { .. })
        ));
        assert!(xml_to_json(b"<a>1</a>", &limits).is_ok());
    }

    #[test]
    fn too_many_nodes_is_refused() {
        let limits = |n| XmlLimits {
            max_nodes: n,
            ..XmlLimits::default()
        };
        let elements = format!("<a>{}</a>", "<b/>".repeat(10));
        assert!(xml_to_json(elements.as_bytes(), &limits(11)).is_ok());
        assert!(matches!(
            xml_to_json(elements.as_bytes(), &limits(10)),
            Err(XmlError::TooManyNodes { limit: 10, .. })
        ));
        // Attributes count.
        assert!(xml_to_json(br#"<a x="1" y="2"/>"#, &limits(3)).is_ok());
        assert!(xml_to_json(br#"<a x="1" y="2"/>"#, &limits(2)).is_err());
        // Kept text nodes count; indentation does not.
        let mixed = b"<a>t<b/>\n<c/>u</a>";
        assert!(xml_to_json(mixed, &limits(5)).is_ok());
        assert!(xml_to_json(mixed, &limits(4)).is_err());
        // The default stops a flood of tiny elements.
        let flood = format!("<a>{}</a>", "<b/>".repeat(100_000));
        assert!(matches!(
            xml_to_json(flood.as_bytes(), &XmlLimits::default()),
            Err(XmlError::TooManyNodes { limit: 100_000, .. })
        ));
    }

    #[test]
    fn invalid_utf8_is_an_encoding_error() {
        let err = xml_to_json(b"<a>\xC3\x28</a>", &XmlLimits::default()).unwrap_err();
        assert_eq!(
            err,
            XmlError::Encoding {
                offset: 3,
                declared: None
            }
        );
        // UTF-16 (with its byte order mark) is not UTF-8.
        assert!(matches!(
            xml_to_json(b"\xFF\xFE<\0a\0/\0>\0", &XmlLimits::default()),
            Err(XmlError::Encoding { offset: 0, .. })
        ));
    }

    #[test]
    fn other_declared_encodings_are_refused() {
        let err = to_json("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>x</a>").unwrap_err();
        assert_eq!(
            err,
            XmlError::Encoding {
                offset: 0,
                declared: Some("ISO-8859-1".into())
            }
        );
        assert!(err.to_string().contains("ISO-8859-1"));
        assert!(to_json("<?xml version=\"1.0\" encoding=\"utf-8\"?><a/>").is_ok());
    }

    #[test]
    fn raw_forbidden_characters_are_refused() {
        for (doc, ch, offset) in [
            ("<a>\u{0}</a>", '\u{0}', 3),
            ("<a>\u{1B}</a>", '\u{1B}', 3),
            ("<a v=\"\u{8}\"/>", '\u{8}', 6),
            ("<a>x\u{FFFE}</a>", '\u{FFFE}', 4),
            ("<a>\u{FFFF}</a>", '\u{FFFF}', 3),
            ("<!--\u{1}--><a/>", '\u{1}', 4),
        ] {
            assert_eq!(
                to_json(doc),
                Err(XmlError::InvalidChar {
                    offset: Some(offset),
                    ch
                }),
                "{doc:?}"
            );
        }
    }

    #[test]
    fn long_names_are_shortened_in_errors() {
        let name = "n".repeat(10_000);
        let err = to_xml(&json!({"r": {format!("1{name}"): 1}})).unwrap_err();
        assert!(err.to_string().len() < 120, "{err}");
        let err = to_json(&format!("<a>&{name};</a>")).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
    }

    // --- properties ----------------------------------------------------------------------------

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 256,
                // Never write regression files next to the sources.
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        fn name() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["a", "b", "c", "p:d", "e-1", "_f", "g.h", "été"])
                .prop_map(str::to_owned)
        }

        /// Any characters XML 1.0 holds, weighted towards the ones that need escaping.
        const CHARS: &str = "[a-z <>&\"'\\]\t\n\r\u{85}\u{2028}\u{e9}\u{4e2d}\u{1F600}]";

        fn text(min: usize, max: usize) -> impl Strategy<Value = String> {
            proptest::string::string_regex(&format!("{CHARS}{{{min},{max}}}")).unwrap()
        }

        /// Text with at least one non-whitespace character.
        fn solid_text() -> impl Strategy<Value = String> {
            (text(0, 3), "[a-z<>&'\u{e9}]", text(0, 3)).prop_map(|(a, b, c)| a + &b + &c)
        }

        /// The round-trippable subset: string or null leaves; objects with string attributes,
        /// at least one attribute or child, and `#text` that is not whitespace-only; arrays of
        /// two or more items.
        fn element() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![Just(Value::Null), text(1, 8).prop_map(Value::String)];
            leaf.prop_recursive(4, 48, 4, |inner| {
                let child = prop_oneof![
                    3 => inner.clone(),
                    1 => prop::collection::vec(inner, 2..4).prop_map(Value::Array),
                ];
                (
                    prop::collection::btree_map(name(), text(0, 6), 0..3),
                    prop::collection::btree_map(name(), child, 0..4),
                    prop::option::of(solid_text()),
                )
                    .prop_filter_map(
                        "an element needs attributes or children",
                        |(a, c, t)| {
                            if a.is_empty() && c.is_empty() {
                                return None;
                            }
                            let mut map = Map::new();
                            for (k, v) in a {
                                map.insert(format!("@{k}"), Value::String(v));
                            }
                            for (k, v) in c {
                                map.insert(k, v);
                            }
                            if let Some(t) = t {
                                map.insert(TEXT_KEY.to_owned(), Value::String(t));
                            }
                            Some(Value::Object(map))
                        },
                    )
            })
        }

        fn document() -> impl Strategy<Value = Value> {
            (name(), element()).prop_map(|(n, v)| json!({ n: v }))
        }

        #[derive(Clone, Debug)]
        enum Node {
            Element(String, Vec<(String, String)>, Vec<Node>),
            Text(String),
            CData(String),
            Comment,
            Ref(&'static str),
        }

        fn node() -> impl Strategy<Value = Node> {
            let leaf = prop_oneof![
                3 => text(0, 6).prop_map(Node::Text),
                1 => "[a-z <>&\n]{0,4}".prop_map(Node::CData),
                1 => Just(Node::Comment),
                1 => prop::sample::select(vec!["&amp;", "&#233;", "&#x1F600;", "&lt;", "&#13;", "&#10;"])
                    .prop_map(Node::Ref),
                2 => name().prop_map(|n| Node::Element(n, Vec::new(), Vec::new())),
            ];
            leaf.prop_recursive(5, 64, 6, |inner| {
                (
                    name(),
                    prop::collection::btree_map(name(), text(0, 4), 0..3),
                    prop::collection::vec(inner, 0..6),
                )
                    .prop_map(|(n, a, c)| Node::Element(n, a.into_iter().collect(), c))
            })
        }

        fn root() -> impl Strategy<Value = Node> {
            (name(), prop::collection::vec(node(), 0..6))
                .prop_map(|(n, c)| Node::Element(n, Vec::new(), c))
        }

        fn escape_raw(s: &str, attribute: bool) -> String {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('"', if attribute { "&quot;" } else { "\"" })
        }

        fn write(node: &Node, out: &mut String) {
            match node {
                Node::Element(n, attrs, children) => {
                    out.push('<');
                    out.push_str(n);
                    for (k, v) in attrs {
                        out.push_str(&format!(" {k}=\"{}\"", escape_raw(v, true)));
                    }
                    if children.is_empty() {
                        out.push_str("/>");
                    } else {
                        out.push('>');
                        for c in children {
                            write(c, out);
                        }
                        out.push_str(&format!("</{n}>"));
                    }
                }
                Node::Text(t) => out.push_str(&escape_raw(t, false)),
                Node::CData(t) => out.push_str(&format!("<![CDATA[{t}]]>")),
                Node::Comment => out.push_str("<!-- c -->"),
                Node::Ref(r) => out.push_str(r),
            }
        }

        fn xml_doc() -> impl Strategy<Value = String> {
            (any::<bool>(), root()).prop_map(|(decl, root)| {
                let mut out = String::new();
                if decl {
                    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- head -->\n");
                }
                write(&root, &mut out);
                out.push('\n');
                out
            })
        }

        fn any_json() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                name(),
                name().prop_map(|n| format!("@{n}")),
                Just(TEXT_KEY.to_owned()),
                ".{0,4}",
            ];
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,6}".prop_map(Value::String),
            ];
            leaf.prop_recursive(6, 64, 5, move |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                    prop::collection::btree_map(key.clone(), inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn json_in_the_subset_round_trips(v in document()) {
                let xml = json_to_xml(&v, &JsonToXml::default()).unwrap();
                let back = xml_to_json(&xml, &XmlLimits::default());
                prop_assert_eq!(back.as_ref(), Ok(&v), "{}", String::from_utf8_lossy(&xml));
            }

            #[test]
            fn xml_to_json_reaches_a_fixed_point(doc in xml_doc()) {
                let limits = XmlLimits::default();
                let first = xml_to_json(doc.as_bytes(), &limits);
                prop_assert!(first.is_ok(), "{doc}: {first:?}");
                let first = first.unwrap();
                let xml = json_to_xml(&first, &JsonToXml::default()).unwrap();
                let again = xml_to_json(&xml, &limits);
                prop_assert_eq!(again.as_ref(), Ok(&first), "{}", String::from_utf8_lossy(&xml));
            }

            #[test]
            fn xml_to_json_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = xml_to_json(&bytes, &XmlLimits::default());
                let tight = XmlLimits { max_bytes: 128, max_depth: 3, max_nodes: 5 };
                let _ = xml_to_json(&bytes, &tight);
            }

            #[test]
            fn xml_to_json_never_panics_on_mutations(
                doc in xml_doc(),
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3_u8), 1..6),
            ) {
                let mut bytes = doc.into_bytes();
                for (at, byte, op) in edits {
                    if bytes.is_empty() {
                        bytes.push(byte);
                        continue;
                    }
                    let i = at.index(bytes.len());
                    match op {
                        0 => bytes[i] = byte,
                        1 => { bytes.remove(i); }
                        _ => bytes.insert(i, byte),
                    }
                }
                let _ = xml_to_json(&bytes, &XmlLimits::default());
                let tight = XmlLimits { max_bytes: 4096, max_depth: 3, max_nodes: 8 };
                let _ = xml_to_json(&bytes, &tight);
            }

            #[test]
            fn json_to_xml_output_always_parses(v in any_json()) {
                if let Ok(xml) = json_to_xml(&v, &JsonToXml::default()) {
                    let parsed = xml_to_json(&xml, &XmlLimits::default());
                    prop_assert!(parsed.is_ok(), "{}: {parsed:?}", String::from_utf8_lossy(&xml));
                }
            }
        }
    }
}
