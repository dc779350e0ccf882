//! Body transforms at run time: JSON operations by JSON Pointer (RFC 6901) on request
//! and response bodies, with values filled from the request (`${consumer}`,
//! `${subject}`, `${header:NAME}`), and the choice of which bodies are transformed.
//! Config form: `config::transform`; XML to JSON: `policy::xml`; where each runs in the
//! request path: `proxy::body` and docs/REQUEST_PATH.md.

use crate::config::transform::{self as cfg, OnInvalid};
use serde_json::{Map, Value};

/// A JSON Pointer, split into its unescaped reference tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer(Vec<String>);

impl Pointer {
    /// Parses a pointer that `config::transform::pointer_error` accepted.
    pub fn parse(s: &str) -> Option<Pointer> {
        if cfg::pointer_error(s).is_some() {
            return None;
        }
        // `~1` first, then `~0` (RFC 6901 §4): "~01" is "~1", not "/".
        Some(Pointer(
            s[1..]
                .split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect(),
        ))
    }
}

/// One value to write, and whether it holds request-time references to fill.
#[derive(Debug, Clone)]
struct Template {
    value: Value,
    filled: bool,
}

/// What a request supplies to a transform's values.
pub struct Fill<'a> {
    pub consumer: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

impl Fill<'_> {
    fn lookup(&self, expr: &str) -> Option<String> {
        match expr {
            "consumer" => self.consumer.map(str::to_string),
            "subject" => self.subject.map(str::to_string),
            _ => {
                let name = expr.strip_prefix("header:")?;
                // Several fields of one name read as one list (RFC 9110 §5.3).
                let vals: Vec<String> = self
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                (!vals.is_empty()).then(|| vals.join(", "))
            }
        }
    }

    /// A string value: exactly one reference becomes its value, or `null` when the
    /// request has none (an anonymous caller has no consumer); references inside a
    /// longer string become their value or nothing.
    fn string(&self, s: &str) -> Value {
        if let Some(expr) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
            if !expr.contains('}') && cfg::is_runtime_reference(expr) {
                return self.lookup(expr).map_or(Value::Null, Value::String);
            }
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let body = &rest[i + 2..];
            match body.find('}') {
                Some(end) if cfg::is_runtime_reference(&body[..end]) => {
                    out.push_str(&self.lookup(&body[..end]).unwrap_or_default());
                    rest = &body[end + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = body;
                }
            }
        }
        out.push_str(rest);
        Value::String(out)
    }

    fn value(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => self.string(s),
            Value::Array(a) => Value::Array(a.iter().map(|x| self.value(x)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), self.value(x))).collect())
            }
            other => other.clone(),
        }
    }
}

fn has_reference(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains("${"),
        Value::Array(a) => a.iter().any(has_reference),
        Value::Object(o) => o.values().any(has_reference),
        _ => false,
    }
}

/// A route's compiled JSON operations.
#[derive(Debug, Clone, Default)]
pub struct JsonOps {
    remove: Vec<Pointer>,
    rename: Vec<(Pointer, Pointer)>,
    set: Vec<(Pointer, Template)>,
    add: Vec<(Pointer, Template)>,
}

impl JsonOps {
    /// From operations validation accepted (an unparsable pointer is left out; the
    /// checks refuse such a config before it is compiled).
    pub fn compile(ops: &cfg::JsonOps) -> JsonOps {
        let tpl = |m: &std::collections::BTreeMap<String, Value>| {
            m.iter()
                .filter_map(|(k, v)| {
                    Some((
                        Pointer::parse(k)?,
                        Template {
                            filled: has_reference(v),
                            value: v.clone(),
                        },
                    ))
                })
                .collect()
        };
        JsonOps {
            remove: ops
                .remove
                .iter()
                .filter_map(|p| Pointer::parse(p))
                .collect(),
            rename: ops
                .rename
                .iter()
                .filter_map(|(f, t)| Some((Pointer::parse(f)?, Pointer::parse(t)?)))
                .collect(),
            set: tpl(&ops.set),
            add: tpl(&ops.add),
        }
    }

    /// Applies the operations in their order: remove, rename, set, add. A pointer whose
    /// way is blocked (through a string, or an array index out of range) changes nothing.
    pub fn apply(&self, doc: &mut Value, fill: &Fill<'_>) {
        for p in &self.remove {
            take(doc, p);
        }
        for (from, to) in &self.rename {
            if let Some(v) = take(doc, from) {
                put(doc, to, v, true);
            }
        }
        for (p, t) in &self.set {
            put(doc, p, value_of(t, fill), true);
        }
        for (p, t) in &self.add {
            put(doc, p, value_of(t, fill), false);
        }
    }
}

fn value_of(t: &Template, fill: &Fill<'_>) -> Value {
    if t.filled {
        fill.value(&t.value)
    } else {
        t.value.clone()
    }
}

fn index(tok: &str, len: usize) -> Option<usize> {
    // RFC 6901: no leading zeros, decimal digits only.
    if tok.is_empty()
        || (tok.len() > 1 && tok.starts_with('0'))
        || !tok.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    tok.parse::<usize>().ok().filter(|&i| i < len)
}

/// Removes and returns what `p` names.
fn take(doc: &mut Value, p: &Pointer) -> Option<Value> {
    let (last, parents) = p.0.split_last()?;
    let mut cur = doc;
    for tok in parents {
        cur = match cur {
            Value::Object(o) => o.get_mut(tok)?,
            Value::Array(a) => {
                let i = index(tok, a.len())?;
                &mut a[i]
            }
            _ => return None,
        };
    }
    match cur {
        Value::Object(o) => o.remove(last),
        Value::Array(a) => index(last, a.len()).map(|i| a.remove(i)),
        _ => None,
    }
}

/// Writes `v` where `p` names, creating missing objects on the way; `replace: false`
/// keeps what is there. `-` as an array's last token appends.
fn put(doc: &mut Value, p: &Pointer, v: Value, replace: bool) {
    let Some((last, parents)) = p.0.split_last() else {
        return;
    };
    let mut cur = doc;
    for tok in parents {
        cur = match cur {
            Value::Object(o) => o
                .entry(tok.clone())
                .or_insert_with(|| Value::Object(Map::new())),
            Value::Array(a) => match index(tok, a.len()) {
                Some(i) => &mut a[i],
                None => return,
            },
            _ => return,
        };
    }
    match cur {
        Value::Object(o) if replace || !o.contains_key(last) => {
            o.insert(last.clone(), v);
        }
        Value::Array(a) if last == "-" => a.push(v),
        Value::Array(a) if replace => {
            if let Some(i) = index(last, a.len()) {
                a[i] = v;
            }
        }
        _ => {}
    }
}

/// `application/json` or any `+json` type (RFC 6839), parameters aside.
pub fn is_json(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/json" || essence.ends_with("+json")
}

/// `application/xml`, `text/xml` or any `+xml` type.
pub fn is_xml(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml")
}

fn essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// `routes[].request_body`, compiled.
#[derive(Debug, Clone)]
pub struct RequestTransform {
    pub json: JsonOps,
    pub max_size: u64,
}

impl RequestTransform {
    pub fn compile(rb: &cfg::RequestBody) -> Option<RequestTransform> {
        let json = JsonOps::compile(rb.json.as_ref()?);
        Some(RequestTransform {
            json,
            max_size: rb.max_size.map_or(cfg::REQUEST_BODY_LIMIT, |s| s.0),
        })
    }

    /// The transformed body, or why the body is not valid JSON.
    pub fn apply(&self, body: &[u8], fill: &Fill<'_>) -> Result<Vec<u8>, String> {
        let mut doc: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        self.json.apply(&mut doc, fill);
        serde_json::to_vec(&doc).map_err(|e| e.to_string())
    }
}

/// `routes[].response_body`, compiled.
#[derive(Debug, Clone)]
pub struct ResponseTransform {
    pub json: Option<JsonOps>,
    pub xml_to_json: bool,
    pub max_size: u64,
    pub on_invalid: OnInvalid,
}

/// What a response's body will be read as, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Xml,
}

impl ResponseTransform {
    pub fn compile(rb: &cfg::ResponseBody) -> Option<ResponseTransform> {
        if rb.json.is_none() && !rb.xml_to_json {
            return None;
        }
        Some(ResponseTransform {
            json: rb.json.as_ref().map(JsonOps::compile),
            xml_to_json: rb.xml_to_json,
            max_size: rb.max_size.map_or(cfg::DEFAULT_RESPONSE_MAX_SIZE, |s| s.0),
            on_invalid: rb.on_invalid,
        })
    }

    /// Whether a response of this type is transformed, and read as what. Other types
    /// (images, HTML, problem+json from the gateway itself) pass as they are.
    pub fn kind_of(&self, content_type: &str) -> Option<BodyKind> {
        if self.json.is_some() && is_json(content_type) {
            Some(BodyKind::Json)
        } else if self.xml_to_json && is_xml(content_type) {
            Some(BodyKind::Xml)
        } else {
            None
        }
    }

    /// The transformed body (always JSON), or why it could not be read.
    pub fn apply(&self, kind: BodyKind, body: &[u8], fill: &Fill<'_>) -> Result<Vec<u8>, String> {
        let mut doc = match kind {
            BodyKind::Json => serde_json::from_slice(body).map_err(|e| e.to_string())?,
            BodyKind::Xml => super::xml::to_json(body)?,
        };
        if let Some(ops) = &self.json {
            ops.apply(&mut doc, fill);
        }
        serde_json::to_vec(&doc).map_err(|e| e.to_string())
    }
}

/// A request's body-transform state, carried in its context (`proxy::body` fills it).
#[derive(Default)]
pub struct BodyState {
    /// The transformed request body, sent upstream in place of the client's.
    pub request: Option<bytes::Bytes>,
    /// What happens to the response body.
    pub response: ResponseBody,
}

/// The response body's handling, decided with its header (`response_filter`).
#[derive(Default)]
pub enum ResponseBody {
    /// Not transformed: it passes as it comes.
    #[default]
    Pass,
    /// Held until its end, then transformed.
    Hold { kind: BodyKind, buf: Vec<u8> },
    /// Replaced by this problem body (the header was already made a 502).
    Replace(Option<bytes::Bytes>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(yaml: &str) -> JsonOps {
        JsonOps::compile(&serde_yaml::from_str(yaml).expect("ops"))
    }

    fn run(yaml: &str, mut doc: Value) -> Value {
        let h = http::HeaderMap::new();
        ops(yaml).apply(
            &mut doc,
            &Fill {
                consumer: Some("acme"),
                subject: None,
                headers: &h,
            },
        );
        doc
    }

    #[test]
    fn pointers_unescape_in_rfc_order() {
        assert_eq!(Pointer::parse("/a~1b/~01").unwrap().0, ["a/b", "~1"]);
        assert_eq!(Pointer::parse("/").unwrap().0, [""]);
        assert!(Pointer::parse("a").is_none());
        assert!(Pointer::parse("/a~2").is_none());
        assert!(Pointer::parse("").is_none());
    }

    #[test]
    fn each_operation() {
        let doc = json!({"id": 7, "debug": {"x": 1}, "items": [1, 2, 3], "a/b": 1});
        assert_eq!(
            run(
                "{ remove: [/debug, /items/1, /nope/x, /a~1b] }",
                doc.clone()
            ),
            json!({"id": 7, "items": [1, 3]})
        );
        assert_eq!(
            run("{ rename: { /id: /order/id, /missing: /x } }", doc.clone())["order"],
            json!({"id": 7})
        );
        let out = run(
            "{ set: { /meta/consumer: \"${consumer}\", /meta/who: \"c=${consumer};s=${subject}\", /items/0: 9, /items/-: 4, /id/deeper: 1 } }",
            doc.clone(),
        );
        assert_eq!(out["meta"], json!({"consumer": "acme", "who": "c=acme;s="}));
        assert_eq!(out["items"], json!([9, 2, 3, 4]));
        assert_eq!(out["id"], json!(7), "a scalar on the way blocks the write");
        let out = run("{ add: { /id: 8, /new: { k: [1] } } }", doc);
        assert_eq!(
            (out["id"].clone(), out["new"].clone()),
            (json!(7), json!({"k": [1]}))
        );
    }

    #[test]
    fn whole_references_are_typed_and_missing_ones_null() {
        let mut h = http::HeaderMap::new();
        h.append("x-tenant", "t1".parse().unwrap());
        h.append("x-tenant", "t2".parse().unwrap());
        let fill = Fill {
            consumer: None,
            subject: Some("sub-1"),
            headers: &h,
        };
        let mut doc = json!({});
        ops("{ set: { /c: \"${consumer}\", /s: \"${subject}\", /t: \"${header:X-Tenant}\", /lit: \"${OTHER}\" } }")
            .apply(&mut doc, &fill);
        assert_eq!(
            doc,
            json!({"c": null, "s": "sub-1", "t": "t1, t2", "lit": "${OTHER}"})
        );
    }

    #[test]
    fn content_types() {
        assert!(is_json("application/json; charset=utf-8"));
        assert!(is_json("Application/Problem+JSON"));
        assert!(!is_json("text/plain"));
        assert!(is_xml("text/xml") && is_xml("application/atom+xml"));
    }
}
