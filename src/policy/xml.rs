//! XML to JSON (`response_body.xml_to_json`), read with quick-xml. The mapping:
//!
//! - the document is an object with one key, the root element's name;
//! - an element with neither attributes nor child elements is its text (a string), or
//!   `null` when it has none;
//! - otherwise it is an object: each attribute as `"@name"`, each child element under its
//!   name, its text (when not only whitespace) as `"#text"`;
//! - an element name that repeats among siblings becomes an array of their values, in
//!   document order (one occurrence stays a single value);
//! - text is trimmed; CDATA is text; numbers and booleans stay strings (XML has no
//!   types, and guessing would turn a zip code `"01234"` into `1234`);
//! - names are kept as written, prefixes included (`soap:Body`); comments, processing
//!   instructions, the declaration and a DOCTYPE are dropped. Only the five predefined
//!   entities and character references are expanded: a document that uses any other
//!   entity is refused, so no entity expansion can grow the body.
//!
//! Nesting deeper than `MAX_DEPTH` is refused as well (the JSON writer recurses).

use quick_xml::events::Event;
use serde_json::{Map, Value};

pub const MAX_DEPTH: usize = 128;

struct Open {
    name: String,
    fields: Map<String, Value>,
    text: String,
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "a name is not UTF-8".to_string())
}

fn open(e: &quick_xml::events::BytesStart<'_>) -> Result<Open, String> {
    let mut fields = Map::new();
    for a in e.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let value = a.unescape_value().map_err(|e| e.to_string())?;
        fields.insert(
            format!("@{}", utf8(a.key.as_ref())?),
            Value::String(value.into_owned()),
        );
    }
    Ok(Open {
        name: utf8(e.name().as_ref())?,
        fields,
        text: String::new(),
    })
}

fn close(o: Open) -> (String, Value) {
    let text = o.text.trim();
    let value = if o.fields.is_empty() {
        if text.is_empty() {
            Value::Null
        } else {
            Value::String(text.to_string())
        }
    } else {
        let mut fields = o.fields;
        if !text.is_empty() {
            fields.insert("#text".into(), Value::String(text.to_string()));
        }
        Value::Object(fields)
    };
    (o.name, value)
}

/// Adds a child under `name`; a repeated name becomes an array. Element values are
/// never arrays otherwise, so an array found there is one made by repetition.
fn add_child(fields: &mut Map<String, Value>, name: String, v: Value) {
    match fields.get_mut(&name) {
        Some(Value::Array(a)) => a.push(v),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, v]);
        }
        None => {
            fields.insert(name, v);
        }
    }
}

/// The JSON form of an XML document, or why it is not one.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut stack: Vec<Open> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("not well-formed XML: {e}"))?;
        match ev {
            Event::Start(e) => {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(format!("elements nested deeper than {MAX_DEPTH}"));
                }
                stack.push(open(&e)?);
            }
            Event::Empty(e) => {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                let (name, v) = close(open(&e)?);
                match stack.last_mut() {
                    Some(parent) => add_child(&mut parent.fields, name, v),
                    None => root = Some((name, v)),
                }
            }
            Event::End(_) => {
                let Some(o) = stack.pop() else {
                    return Err("an end tag without its start".into());
                };
                let (name, v) = close(o);
                match stack.last_mut() {
                    Some(parent) => add_child(&mut parent.fields, name, v),
                    None => root = Some((name, v)),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| e.to_string())?;
                match stack.last_mut() {
                    Some(o) => o.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| e.to_string())?;
                match stack.last_mut() {
                    Some(o) => o.text.push_str(&s),
                    None => return Err("CDATA outside the root element".into()),
                }
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref()
                        .map_err(|e| e.to_string())?
                        .map(String::from)
                } else {
                    let name = r.decode().map_err(|e| e.to_string())?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(str::to_string)
                };
                let Some(s) = resolved else {
                    return Err("an entity other than the predefined five".into());
                };
                match stack.last_mut() {
                    Some(o) => o.text.push_str(&s),
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    let (name, v) = root.ok_or("no root element")?;
    let mut doc = Map::new();
    doc.insert(name, v);
    Ok(Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_documented_mapping() {
        let xml = r#"<?xml version="1.0"?>
<!-- legacy -->
<order id="7" status="paid">
  <item sku="a">Pen &amp; ink</item>
  <item sku="b"/>
  <note>  fragile  </note>
  <empty></empty>
  <zip>01234</zip>
  <mixed kind="x">hi<b>there</b></mixed>
  <c><![CDATA[<raw>]]></c>
  <soap:Body>&#65;</soap:Body>
</order>"#;
        assert_eq!(
            to_json(xml.as_bytes()).unwrap(),
            json!({"order": {
                "@id": "7", "@status": "paid",
                "item": [{"@sku": "a", "#text": "Pen & ink"}, {"@sku": "b"}],
                "note": "fragile",
                "empty": null,
                "zip": "01234",
                "mixed": {"@kind": "x", "#text": "hi", "b": "there"},
                "c": "<raw>",
                "soap:Body": "A",
            }})
        );
    }

    #[test]
    fn malformed_documents_are_refused() {
        for bad in [
            "",
            "not xml",
            "<a><b></a>",
            "<a>",
            "<a/><b/>",
            "<a>&custom;</a>",
            "<a x='1' x='2'/>",
        ] {
            assert!(to_json(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let deep = "<a>".repeat(MAX_DEPTH + 1) + &"</a>".repeat(MAX_DEPTH + 1);
        assert!(to_json(deep.as_bytes()).is_err());
    }
}
