//! JWT claim checks (RFC 7519 §4.1) once the signature is good: `exp` required, `nbf`
//! and `iat` checked when present, `aud` must name one of ours, all with the issuer's
//! leeway; then the consumer and scope claims are read.

use crate::policy::auth::Failure;
use serde_json::{Map, Value};

/// What an issuer requires of a token's claims.
#[derive(Debug, Clone)]
pub struct Rules {
    pub audiences: Vec<String>,
    pub leeway: u64,
    pub consumer_claim: String,
    pub scope_claim: String,
}

/// The claims the gateway uses, once checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Seconds since the epoch; the verified-token cache keeps the token until then.
    pub exp: f64,
    pub subject: Option<String>,
    /// The value of `consumer_claim`.
    pub consumer: String,
    pub scopes: Vec<String>,
}

/// A NumericDate (RFC 7519 §2): a JSON number, possibly non-integer.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(Failure::Malformed),
        Some(_) => Err(Failure::Malformed),
    }
}

/// Checks the claims at `now` (seconds since the epoch).
pub fn check(claims: &Map<String, Value>, rules: &Rules, now: u64) -> Result<Checked, Failure> {
    let now = now as f64;
    let leeway = rules.leeway as f64;
    let exp = numeric_date(claims, "exp")?.ok_or(Failure::MissingClaim)?;
    if now >= exp + leeway {
        return Err(Failure::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")? {
        if now + leeway < nbf {
            return Err(Failure::NotYetValid);
        }
    }
    if let Some(iat) = numeric_date(claims, "iat")? {
        if now + leeway < iat {
            return Err(Failure::NotYetValid);
        }
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => rules.audiences.iter().any(|w| w == a),
        Some(Value::Array(list)) => list.iter().any(|a| {
            a.as_str()
                .is_some_and(|a| rules.audiences.iter().any(|w| w == a))
        }),
        _ => false,
    };
    if !aud_ok {
        return Err(Failure::WrongAudience);
    }
    let subject = match claims.get("sub") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Failure::Malformed),
    };
    let consumer = match claims.get(&rules.consumer_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None => return Err(Failure::MissingClaim),
        Some(_) => return Err(Failure::Malformed),
    };
    let scopes = match claims.get(&rules.scope_claim) {
        None => Vec::new(),
        Some(Value::String(s)) => s.split_ascii_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(Failure::Malformed))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Failure::Malformed),
    };
    Ok(Checked {
        exp,
        subject,
        consumer,
        scopes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules() -> Rules {
        Rules {
            audiences: vec!["api".into(), "api2".into()],
            leeway: 30,
            consumer_claim: "sub".into(),
            scope_claim: "scope".into(),
        }
    }

    fn c(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn time_claims_with_leeway() {
        let r = rules();
        let base = json!({"sub": "u", "aud": "api", "exp": NOW + 60});
        assert!(check(&c(base.clone()), &r, NOW).is_ok());
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove("exp");
        assert_eq!(check(&c(v), &r, NOW), Err(Failure::MissingClaim));
        let mut v = base.clone();
        v["exp"] = json!(NOW - 10); // expired, but within the 30 s leeway
        assert!(check(&c(v.clone()), &r, NOW).is_ok());
        v["exp"] = json!(NOW - 30);
        assert_eq!(check(&c(v), &r, NOW), Err(Failure::Expired));
        let mut v = base.clone();
        v["exp"] = json!("soon");
        assert_eq!(check(&c(v), &r, NOW), Err(Failure::Malformed));
        let mut v = base.clone();
        v["nbf"] = json!(NOW + 20);
        assert!(check(&c(v.clone()), &r, NOW).is_ok());
        v["nbf"] = json!(NOW + 31);
        assert_eq!(check(&c(v), &r, NOW), Err(Failure::NotYetValid));
        let mut v = base.clone();
        v["iat"] = json!(NOW + 31);
        assert_eq!(check(&c(v), &r, NOW), Err(Failure::NotYetValid));
        let mut v = base;
        v["exp"] = json!(NOW as f64 + 0.5);
        assert!(check(&c(v), &r, NOW).is_ok());
    }

    #[test]
    fn audience_string_or_list() {
        let r = rules();
        let ok = |aud: Value| {
            check(
                &c(json!({"sub": "u", "aud": aud, "exp": NOW + 60})),
                &r,
                NOW,
            )
        };
        assert!(ok(json!("api2")).is_ok());
        assert!(ok(json!(["other", "api"])).is_ok());
        assert_eq!(ok(json!("other")), Err(Failure::WrongAudience));
        assert_eq!(ok(json!([])), Err(Failure::WrongAudience));
        assert_eq!(ok(json!(null)), Err(Failure::WrongAudience));
        assert_eq!(
            check(&c(json!({"sub": "u", "exp": NOW + 60})), &r, NOW),
            Err(Failure::WrongAudience)
        );
    }

    #[test]
    fn scopes_string_or_array() {
        let r = rules();
        let scopes = |s: Value| {
            check(
                &c(json!({"sub": "u", "aud": "api", "exp": NOW + 60, "scope": s})),
                &r,
                NOW,
            )
            .map(|c| c.scopes)
        };
        assert_eq!(scopes(json!("a  b\tc")).unwrap(), ["a", "b", "c"]);
        assert_eq!(scopes(json!(["a", "b"])).unwrap(), ["a", "b"]);
        assert_eq!(scopes(json!([1])), Err(Failure::Malformed));
        assert_eq!(scopes(json!(5)), Err(Failure::Malformed));
    }

    #[test]
    fn consumer_claim_is_required() {
        let r = rules();
        assert_eq!(
            check(&c(json!({"aud": "api", "exp": NOW + 60})), &r, NOW),
            Err(Failure::MissingClaim)
        );
        let r2 = Rules {
            consumer_claim: "client_id".into(),
            ..rules()
        };
        let got = check(
            &c(json!({"aud": "api", "exp": NOW + 60, "client_id": "svc", "sub": "x"})),
            &r2,
            NOW,
        )
        .unwrap();
        assert_eq!(got.consumer, "svc");
        assert_eq!(got.subject.as_deref(), Some("x"));
    }
}
