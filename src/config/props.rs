//! Property tests of the config loader: no input makes it panic. Whatever the text, the
//! loader returns a config or a list of errors, each with a YAML path, and validation of
//! any config it returns does not panic either. Inputs: arbitrary strings, YAML-shaped
//! token soup, and structured mutations of the shipped configs (`conf/*.yaml`) and the
//! seeds in `fuzz/corpus/config/` (which are replayed as they are, too).

use super::{load, validate, ConfigError};
use crate::proptest_support::{config, corpus, text};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_yaml::Value;

const SHIPPED: &[(&str, &str)] = &[
    (
        "conf/gatehouse.yaml",
        include_str!("../../conf/gatehouse.yaml"),
    ),
    ("conf/demo.yaml", include_str!("../../conf/demo.yaml")),
];

/// A fixed environment: one variable set, one empty, everything else unset.
fn env(name: &str) -> Option<String> {
    match name {
        "GATEHOUSE_ADMIN_TOKEN" => Some("a-token-from-the-environment".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// Loads `text` as `load_file` does (parse, then validate what parsed) and checks the
/// shape of the answer.
fn load_checked(text: &str) -> Result<(), TestCaseError> {
    let (cfg, mut errs) = load::parse_partial(text, &env);
    if let Some(cfg) = &cfg {
        errs.extend(validate::validate(cfg));
    }
    prop_assert!(
        cfg.is_some() || !errs.is_empty(),
        "no config and no error for {text:?}"
    );
    for ConfigError { path, message } in &errs {
        prop_assert!(!path.is_empty(), "an error without a path: {message}");
        prop_assert!(!message.is_empty(), "an error without a message at {path}");
    }
    Ok(())
}

fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("${".to_string()),
        Just("${UNSET}".to_string()),
        Just("${EMPTY}".to_string()),
        Just("$${GATEHOUSE_ADMIN_TOKEN}".to_string()),
        Just("${GATEHOUSE_ADMIN_TOKEN:-x}".to_string()),
        Just("${bad name}".to_string()),
        Just("99999999999999999999999d".to_string()),
        Just("1e400s".to_string()),
        Just("-1s".to_string()),
        Just(".s".to_string()),
        Just("18446744073709551615GiB".to_string()),
        Just("0/s".to_string()),
        Just("18446744073709551615/month".to_string()),
        Just("127.0.0.1:0".to_string()),
        Just("[::1]:65535".to_string()),
        Just("0.0.0.0:99999".to_string()),
        Just("(((((((((".to_string()),
        Just("[a-".to_string()),
        Just("header:".to_string()),
        Just("header:X-User".to_string()),
        Just("cookie:".to_string()),
        Just("ip".to_string()),
        Just("/".to_string()),
        Just("//..//%2e%2e/".to_string()),
        Just("*.".to_string()),
        Just("sha256:zz".to_string()),
        Just("\u{0}\u{7f}\u{feff}é".to_string()),
        "[ -~]{0,24}",
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ]
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|n| Value::Number(n.into())),
        tricky_string().prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((tricky_key(), inner), 0..4)
                .prop_map(|kv| Value::Mapping(kv.into_iter().collect())),
        ]
    })
}

/// Keys the loader knows somewhere, and some it does not.
fn tricky_key() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "name",
            "address",
            "token",
            "targets",
            "upstream",
            "routes",
            "match",
            "path",
            "path_prefix",
            "path_regex",
            "hosts",
            "methods",
            "headers",
            "auth",
            "jwt",
            "api_key",
            "hmac_secret",
            "jwks_url",
            "jwks_file",
            "algorithms",
            "audiences",
            "issuer",
            "consumers",
            "api_keys",
            "tier",
            "tiers",
            "rate",
            "burst",
            "quota",
            "rate_limit",
            "key",
            "cache",
            "ttl",
            "vary",
            "memory",
            "store",
            "backend",
            "redis_url",
            "on_error",
            "tls",
            "certificates",
            "cert",
            "sni",
            "verify",
            "health",
            "active",
            "passive",
            "interval",
            "timeouts",
            "read",
            "max_body",
            "balance",
            "hash_on",
            "weight",
            "server",
            "threads",
            "grace_period",
            "max_header_size",
            "listeners",
            "admin",
            "access_log",
            "version",
            "unknown_key",
            "",
        ])
        .prop_map(|k| Value::String(k.into())),
        scalar(),
    ]
}

/// One structured change at the node with the given (depth-first) index.
#[derive(Debug, Clone)]
enum Mutation {
    /// The node becomes this value.
    Replace(Index, Value),
    /// A mapping loses a key, a list an item, a string its second half.
    Shrink(Index, Index),
    /// A list repeats an item; a mapping gains a key (with a copy of one of its values).
    Grow(Index, Index, Value),
    /// A mapping becomes the list of its values, a list a mapping by position, a number
    /// its string and a string a number when it reads as one.
    Retype(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), value()).prop_map(|(at, v)| Mutation::Replace(at, v)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(at, i)| Mutation::Shrink(at, i)),
        2 => (any::<Index>(), any::<Index>(), tricky_key())
            .prop_map(|(at, i, k)| Mutation::Grow(at, i, k)),
        1 => any::<Index>().prop_map(Mutation::Retype),
    ]
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Sequence(s) => s.iter().map(count).sum(),
        Value::Mapping(m) => m.values().map(count).sum(),
        Value::Tagged(t) => count(&t.value),
        _ => 0,
    }
}

/// The node at depth-first index `n` (`n < count(v)`).
fn nth(v: &mut Value, n: usize) -> &mut Value {
    if n == 0 {
        return v;
    }
    let mut n = n - 1;
    let children: Vec<&mut Value> = match v {
        Value::Sequence(s) => s.iter_mut().collect(),
        Value::Mapping(m) => m.values_mut().collect(),
        Value::Tagged(t) => vec![&mut t.value],
        _ => Vec::new(),
    };
    for c in children {
        let k = count(c);
        if n < k {
            return nth(c, n);
        }
        n -= k;
    }
    unreachable!("index within count(v)")
}

fn apply(root: &mut Value, m: &Mutation) {
    let at = |i: &Index, root: &Value| i.index(count(root));
    match m {
        Mutation::Replace(i, v) => *nth(root, at(i, root)) = v.clone(),
        Mutation::Shrink(i, j) => match nth(root, at(i, root)) {
            Value::Mapping(map) if !map.is_empty() => {
                let k = map.keys().nth(j.index(map.len())).cloned();
                if let Some(k) = k {
                    map.remove(&k);
                }
            }
            Value::Sequence(s) if !s.is_empty() => {
                s.remove(j.index(s.len()));
            }
            Value::String(s) => {
                let half = s.char_indices().nth(s.chars().count() / 2).map(|(b, _)| b);
                s.truncate(half.unwrap_or(0));
            }
            other => *other = Value::Null,
        },
        Mutation::Grow(i, j, key) => match nth(root, at(i, root)) {
            Value::Sequence(s) if !s.is_empty() => {
                let item = s[j.index(s.len())].clone();
                s.push(item);
            }
            Value::Mapping(map) if !map.is_empty() => {
                let v = map.values().nth(j.index(map.len())).cloned();
                map.insert(key.clone(), v.unwrap_or(Value::Null));
            }
            other => *other = Value::Sequence(vec![other.clone(), other.clone()]),
        },
        Mutation::Retype(i) => {
            let node = nth(root, at(i, root));
            *node = match std::mem::take(node) {
                Value::Mapping(map) => Value::Sequence(map.into_iter().map(|(_, v)| v).collect()),
                Value::Sequence(s) => Value::Mapping(
                    s.into_iter()
                        .enumerate()
                        .map(|(i, v)| (Value::Number((i as u64).into()), v))
                        .collect(),
                ),
                Value::Number(n) => Value::String(n.to_string()),
                Value::Bool(b) => Value::String(b.to_string()),
                Value::String(s) => match s.parse::<i64>() {
                    Ok(n) => Value::Number(n.into()),
                    Err(_) => Value::Bool(!s.is_empty()),
                },
                other => other,
            };
        }
    }
}

/// The texts the mutations start from: the shipped configs and the corpus seeds that
/// parse as YAML.
fn bases() -> &'static [Value] {
    static BASES: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    BASES.get_or_init(|| {
        let mut out: Vec<Value> = SHIPPED
            .iter()
            .map(|(name, t)| serde_yaml::from_str(t).unwrap_or_else(|e| panic!("{name}: {e}")))
            .collect();
        for (_, bytes) in corpus("config") {
            if let Ok(v @ Value::Mapping(_)) = serde_yaml::from_str::<Value>(&text(&bytes)) {
                out.push(v);
            }
        }
        out
    })
}

/// YAML-shaped noise: indentation, flow collections, anchors, tags, multi-documents.
fn yaml_soup() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "\n",
            "\n  ",
            "\n    - ",
            ": ",
            "- ",
            "[",
            "]",
            "{",
            "}",
            ", ",
            "&a ",
            "*a",
            "!!str ",
            "!!binary ",
            "!tag ",
            "? ",
            "|\n  ",
            ">-\n  ",
            "---\n",
            "...\n",
            "'",
            "\"",
            "#",
            "~",
            "null",
            "true",
            "0x1F",
            "1e3",
            ".inf",
            "<<: *a",
            "version",
            "listeners",
            "routes",
            "upstreams",
            "admin",
            "name",
            "address",
            "${X}",
            "${",
            "\t",
            "\\u0000",
        ])
        .prop_map(str::to_string),
        tricky_string(),
    ];
    prop::collection::vec(token, 0..48).prop_map(|t| t.concat())
}

#[test]
fn corpus_and_shipped_configs_do_not_panic() {
    for (name, t) in SHIPPED {
        load_checked(t).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, bytes) in corpus("config") {
        load_checked(&text(&bytes)).unwrap_or_else(|e| panic!("fuzz/corpus/config/{name}: {e}"));
    }
}

/// The shipped production default loads once its one secret is in the environment, and
/// says exactly which variable is missing otherwise.
#[test]
fn the_production_default_needs_only_its_token() {
    let (_, t) = SHIPPED[0];
    let cfg = load::parse(t, &env).expect("conf/gatehouse.yaml parses");
    assert_eq!(validate::validate(&cfg), vec![]);
    let unset = load::parse(t, &|_| None).unwrap_err();
    assert_eq!(unset.len(), 1, "{unset:?}");
    assert_eq!(unset[0].path, "admin.token");
    assert!(
        unset[0].message.contains("GATEHOUSE_ADMIN_TOKEN"),
        "{unset:?}"
    );
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_text_does_not_panic(s in any::<String>()) {
        load_checked(&s)?;
    }

    #[test]
    fn yaml_shaped_text_does_not_panic(s in yaml_soup()) {
        load_checked(&s)?;
    }

    #[test]
    fn mutated_configs_do_not_panic(
        base in any::<Index>(),
        muts in prop::collection::vec(mutation(), 1..6),
    ) {
        let bases = bases();
        let mut root = bases[base.index(bases.len())].clone();
        for m in &muts {
            apply(&mut root, m);
        }
        let text = serde_yaml::to_string(&root).unwrap_or_default();
        load_checked(&text)?;
    }

    /// Byte-level damage to a shipped file: a cut, a splice of noise.
    #[test]
    fn damaged_files_do_not_panic(
        file in any::<Index>(),
        cut in any::<Index>(),
        len in 0usize..40,
        noise in yaml_soup(),
    ) {
        let (_, t) = SHIPPED[file.index(SHIPPED.len())];
        let mut at = cut.index(t.len());
        while !t.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + len).min(t.len());
        while !t.is_char_boundary(end) {
            end -= 1;
        }
        let damaged = format!("{}{noise}{}", &t[..at], &t[end..]);
        load_checked(&damaged)?;
    }
}
