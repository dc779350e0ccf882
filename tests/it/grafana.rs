//! conf/grafana/gatehouse.json queries only what the gateway exports: after traffic that
//! touches every area (routing, upstream failure, auth, limits, cache, reload, tracing),
//! every metric each query names exists in `/metrics`, and so does every label it
//! selects on, groups by or shows in a legend.

use crate::common;

use common::{client, config, free_port, Gateway, Upstream};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// Every PromQL expression of the dashboard, with its legend (empty for variables).
fn queries(dash: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let Some(panels) = v["panels"].as_array() {
            for p in panels {
                for t in p["targets"].as_array().into_iter().flatten() {
                    out.push((
                        t["expr"]
                            .as_str()
                            .expect("every target has an expr")
                            .to_string(),
                        t["legendFormat"].as_str().unwrap_or("").to_string(),
                    ));
                }
                walk(p, out);
            }
        }
    }
    walk(dash, &mut out);
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = var["definition"].as_str() {
            out.push((q.to_string(), String::new()));
        }
    }
    out
}

/// Metric names in an expression, each with the labels its selector names.
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let is_start = (b[i].is_ascii_alphabetic() || b[i] == b'_')
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$'));
        if !is_start {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
            i += 1;
        }
        let name = &expr[start..i];
        if !(name.starts_with("gatehouse_") || name.starts_with("process_")) {
            continue;
        }
        let mut labels = Vec::new();
        if i < b.len() && b[i] == b'{' {
            let end = expr[i..].find('}').map(|e| i + e).expect("closed selector");
            for m in expr[i + 1..end].split(',') {
                let l: String = m
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !l.is_empty() {
                    labels.push(l);
                }
            }
            i = end + 1;
        } else if let Some(rest) = expr[..start].strip_suffix("label_values(") {
            let _ = rest;
            // label_values(metric, label)
            let close = expr[i..]
                .find(')')
                .map(|e| i + e)
                .expect("closed label_values");
            let l = expr[i..close].trim_start_matches(',').trim();
            labels.push(l.to_string());
        }
        out.push((name.to_string(), labels));
    }
    out
}

/// Labels of `by (...)` clauses.
fn grouped(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in expr.split("by (").skip(1) {
        let inner = part.split(')').next().unwrap_or("");
        out.extend(
            inner
                .split(',')
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty()),
        );
    }
    out
}

fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|p| p.split("}}").next())
        .map(|l| l.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_and_label_the_dashboard_queries_exists() {
    let up = Upstream::start("u").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let key = "k-123";
    let body = format!(
        r#"
        cache: {{ memory: 4MiB }}
        upstreams:
          u:
            retries: 1
            targets: [ {{ address: "{dead}" }}, {{ address: "{}" }} ]
        auth:
          api_key: {{ header: X-API-Key }}
        consumers:
          - {{ id: acme, api_keys: ["{}"] }}
        routes:
          - name: cached
            match: {{ path_prefix: /cached }}
            upstream: u
            cache: {{}}
          - name: limited
            match: {{ path_prefix: /limited }}
            upstream: u
            rate_limit: {{ limit: 1/min, burst: 1, key: route }}
          - {{ name: keyed, match: {{ path_prefix: /keyed }}, upstream: u, auth: [api_key] }}
        "#,
        up.address(),
        gatehouse::hash_key(key)
    );
    let yaml = config(&body).replace(
        "access_log: { path: \"off\" }",
        &format!(
            "access_log: {{ path: \"off\" }}\ntracing: {{ otlp_endpoint: \"http://127.0.0.1:{}/v1/traces\", sample_ratio: 1.0, queue: 1 }}",
            free_port()
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let c = client();
    for path in [
        "/cached/a",
        "/cached/a",
        "/limited",
        "/limited",
        "/limited",
        "/nowhere",
        "/keyed",
    ] {
        c.get(gw.url(path)).send().await.unwrap();
    }
    c.get(gw.url("/keyed"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    c.get(gw.url("/keyed"))
        .header("x-api-key", "wrong")
        .send()
        .await
        .unwrap();
    // One good reload, one refused.
    assert_eq!(
        gw.admin_post("/admin/reload", &json!({})).await.status(),
        200
    );
    let good = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, good.replace("retries: 1", "retries: -1")).unwrap();
    assert_eq!(
        gw.admin_post("/admin/reload", &json!({})).await.status(),
        422
    );
    std::fs::write(&gw.config_path, &good).unwrap();
    // Wait for the export attempt of the traced requests (the collector is down).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let m = loop {
        let m = gw.metrics().await;
        if m.has("gatehouse_trace_spans_exported_total") || std::time::Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in &m.samples {
        let e = labels.entry(s.name.clone()).or_default();
        e.extend(s.labels.keys().cloned());
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/grafana/gatehouse.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let qs = queries(&dash);
    assert!(qs.len() > 20, "the dashboard has its queries: {}", qs.len());
    let mut problems = Vec::new();
    for (expr, legend) in &qs {
        let sels = selectors(expr);
        if sels.is_empty() {
            problems.push(format!("{expr}: names no gatehouse metric"));
        }
        let mut known: BTreeSet<String> = BTreeSet::new();
        for (name, sel_labels) in &sels {
            let Some(have) = labels.get(name) else {
                problems.push(format!("{expr}: {name} is not in /metrics"));
                continue;
            };
            known.extend(have.iter().cloned());
            for l in sel_labels {
                if !have.contains(l) {
                    problems.push(format!("{expr}: {name} has no label {l}"));
                }
            }
        }
        for l in grouped(expr).into_iter().chain(legend_labels(legend)) {
            if !known.contains(&l) {
                problems.push(format!("{expr}: no metric of it has label {l} (by/legend)"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
