//! Property test of the RateLimit field formatter: for any applied limits (any names,
//! any counts), `RateLimit-Policy` and `RateLimit` parse as RFC 8941 Structured Field
//! Lists, checked with the `sfv` parser as an independent oracle, and say what was
//! applied: one String item per limit, named as configured (non-printable characters
//! replaced), with Integer parameters equal to the counts (capped at the largest
//! Structured Field Integer). Seeds: `fuzz/corpus/ratelimit/`, one limit per line as
//! `name quota window burst remaining reset` (`-` for no burst).

use super::*;
use crate::proptest_support::{config, corpus, text};
use proptest::prelude::*;
use sfv::{BareItem, ListEntry, Parser};

fn expected_name(raw: &str) -> String {
    raw.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '_' })
        .collect()
}

fn int(n: u64) -> i64 {
    i64::try_from(n.min(SF_INTEGER_MAX)).unwrap_or(i64::MAX)
}

/// Parses both fields with the oracle and compares each item with what was applied.
fn check(raw_names: &[String], applied: &[Applied]) -> Result<(), TestCaseError> {
    let policy = policy_field(applied);
    let limit = limit_field(applied);
    for (field, value) in [("RateLimit-Policy", &policy), ("RateLimit", &limit)] {
        prop_assert!(
            HeaderValue::try_from(value.as_str()).is_ok(),
            "{field} is not a valid header value: {value:?}"
        );
        let list = Parser::parse_list(value.as_bytes())
            .map_err(|e| TestCaseError::fail(format!("{field}: {value:?}: {e}")))?;
        prop_assert_eq!(list.len(), applied.len(), "{}: {:?}", field, value);
        for ((entry, a), raw) in list.iter().zip(applied).zip(raw_names) {
            let ListEntry::Item(item) = entry else {
                return Err(TestCaseError::fail(format!(
                    "{field}: inner list in {value:?}"
                )));
            };
            prop_assert_eq!(&item.bare_item, &BareItem::String(expected_name(raw)));
            let param = |k: &str| item.params.get(k).cloned();
            if field == "RateLimit" {
                prop_assert_eq!(param("r"), Some(BareItem::Integer(int(a.remaining))));
                prop_assert_eq!(param("t"), Some(BareItem::Integer(int(a.reset_secs))));
                prop_assert_eq!(item.params.len(), 2);
            } else {
                prop_assert_eq!(param("q"), Some(BareItem::Integer(int(a.quota))));
                prop_assert_eq!(param("w"), Some(BareItem::Integer(int(a.window_secs))));
                prop_assert_eq!(
                    param("gatehouse-burst"),
                    a.burst.map(|b| BareItem::Integer(int(b)))
                );
            }
        }
    }
    let mut out = Vec::new();
    fields(applied, None, &mut out);
    prop_assert_eq!(out.len(), if applied.is_empty() { 0 } else { 5 });
    Ok(())
}

fn count() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=100_000,
        Just(SF_INTEGER_MAX),
        Just(SF_INTEGER_MAX + 1),
        any::<u64>(),
    ]
}

fn applied_limit() -> impl Strategy<Value = (String, Applied)> {
    (
        prop_oneof![
            "[a-z0-9._-]{0,24}",
            any::<String>().prop_map(|s| s.chars().take(24).collect()),
            Just("\\\"".to_string()),
        ],
        count(),
        count(),
        prop::option::of(count()),
        count(),
        count(),
    )
        .prop_map(|(name, quota, window_secs, burst, remaining, reset_secs)| {
            let applied = Applied {
                name: sf_string(&name).into(),
                quota,
                window_secs,
                burst,
                remaining,
                reset_secs,
            };
            (name, applied)
        })
}

/// `name quota window burst remaining reset`, `-` for no burst.
fn seed(line: &str) -> Option<(String, Applied)> {
    let mut f = line.rsplitn(6, ' ');
    let reset_secs = f.next()?.parse().ok()?;
    let remaining = f.next()?.parse().ok()?;
    let burst = match f.next()? {
        "-" => None,
        b => Some(b.parse().ok()?),
    };
    let window_secs = f.next()?.parse().ok()?;
    let quota = f.next()?.parse().ok()?;
    let name = f.next()?.to_string();
    let applied = Applied {
        name: sf_string(&name).into(),
        quota,
        window_secs,
        burst,
        remaining,
        reset_secs,
    };
    Some((name, applied))
}

#[test]
fn corpus_fields_parse() {
    for (file, bytes) in corpus("ratelimit") {
        let (names, applied): (Vec<_>, Vec<_>) = text(&bytes)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                seed(l).unwrap_or_else(|| panic!("fuzz/corpus/ratelimit/{file}: bad line {l:?}"))
            })
            .unzip();
        check(&names, &applied).unwrap_or_else(|e| panic!("fuzz/corpus/ratelimit/{file}: {e}"));
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn fields_are_structured_field_lists(limits in prop::collection::vec(applied_limit(), 0..5)) {
        let (names, applied): (Vec<_>, Vec<_>) = limits.into_iter().unzip();
        check(&names, &applied)?;
    }
}
