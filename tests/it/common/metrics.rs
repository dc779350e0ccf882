//! A strict parser for the Prometheus text exposition format: every
//! non-comment line must be `name{labels} value [timestamp]`.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// `# TYPE` declarations: metric family name → type.
    pub types: HashMap<String, String>,
}

impl Metrics {
    /// Samples named `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the single sample matching; None if there is none.
    /// Panics if several match (the selector is ambiguous).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Sum over all matching samples (0 if none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .iter()
            .fold(0.0, |acc, s| acc + s.value)
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

pub fn parse(text: &str) -> Result<Metrics, String> {
    let mut m = Metrics::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.split_whitespace();
            if parts.next() == Some("TYPE") {
                let (Some(name), Some(ty)) = (parts.next(), parts.next()) else {
                    return Err(format!("line {}: bad TYPE line {line:?}", i + 1));
                };
                m.types.insert(name.to_owned(), ty.to_owned());
            }
            continue;
        }
        let s = parse_sample(line).map_err(|e| format!("line {}: {e}: {line:?}", i + 1))?;
        m.samples.push(s);
    }
    Ok(m)
}

fn is_name_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() && is_name_char(chars[i], i == 0) {
        i += 1;
    }
    if i == 0 {
        return Err("missing metric name".into());
    }
    let name: String = chars[..i].iter().collect();
    let mut labels = BTreeMap::new();
    if chars.get(i) == Some(&'{') {
        i += 1;
        loop {
            if chars.get(i) == Some(&'}') {
                i += 1;
                break;
            }
            let start = i;
            while i < chars.len() && is_name_char(chars[i], i == start) && chars[i] != ':' {
                i += 1;
            }
            if i == start {
                return Err("bad label name".into());
            }
            let key: String = chars[start..i].iter().collect();
            if chars.get(i) != Some(&'=') || chars.get(i + 1) != Some(&'"') {
                return Err(format!("label {key}: expected =\""));
            }
            i += 2;
            let mut val = String::new();
            loop {
                match chars.get(i) {
                    None => return Err("unterminated label value".into()),
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some('n') => val.push('\n'),
                            Some('\\') => val.push('\\'),
                            Some('"') => val.push('"'),
                            other => return Err(format!("bad escape \\{other:?}")),
                        }
                        i += 2;
                    }
                    Some(c) => {
                        val.push(*c);
                        i += 1;
                    }
                }
            }
            if labels.insert(key.clone(), val).is_some() {
                return Err(format!("duplicate label {key}"));
            }
            match chars.get(i) {
                Some(',') => i += 1,
                Some('}') => {}
                _ => return Err("expected , or } after a label".into()),
            }
        }
    }
    let rest: String = chars[i..].iter().collect();
    if !rest.starts_with([' ', '\t']) {
        return Err("expected whitespace before the value".into());
    }
    let mut parts = rest.split_whitespace();
    let value = parse_value(parts.next().ok_or("missing value")?)?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if parts.next().is_some() {
        return Err("trailing garbage".into());
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}
