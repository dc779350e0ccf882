//! Unit tests of `config::validate`: YAML in, the exact (path, message) errors out.

const LISTENERS: &str = "listeners: [ { name: public, address: \"127.0.0.1:18080\" } ]\n";
const UPSTREAMS: &str = "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:9001\" } ] }\n";
const ROUTE: &str = "routes: [ { name: r0, upstream: u } ]\n";

/// `rest`, plus a listener and upstream `u` unless it has its own.
fn with_base(rest: &str) -> String {
    let has = |key: &str| rest.starts_with(key) || rest.contains(&format!("\n{key}"));
    let mut out = String::new();
    if !has("listeners:") {
        out.push_str(LISTENERS);
    }
    if !has("upstreams:") {
        out.push_str(UPSTREAMS);
    }
    out.push_str(rest);
    out
}

fn problems(rest: &str) -> Vec<(String, String)> {
    super::problems_in(&with_base(rest))
}

#[test]
fn valid_configs_have_no_problems() {
    for rest in [
            ROUTE.to_string(),
            format!(
                "{ROUTE}auth:\n  api_key: {{ header: X-API-Key }}\n  jwt:\n    - {{ name: corp, issuer: \"https://id.test/\", audiences: [api], algorithms: [HS256], hmac_secret: \"0123456789abcdef0123456789abcdef\" }}\n"
            ),
            "tiers: { free: { rate: 10/s, burst: 5 } }\nconsumers: [ { id: acme, tier: free, api_keys: [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"] } ]\nroutes: [ { name: r0, upstream: u, rate_limit: { limit: 5/s, key: \"header:X-User\" } } ]\n".into(),
            "cache: { memory: 1MiB }\nroutes: [ { name: r0, upstream: u, cache: { ttl: 30s, vary: [Accept] } } ]\n".into(),
            "server: { trusted_proxies: [10.0.0.0/8] }\nroutes: [ { name: r0, upstream: u, trust_forwarded_headers: true } ]\n".into(),
        ] {
            assert_eq!(problems(&rest), [] as [(String, String); 0], "{rest}");
        }
}

/// Each case: YAML (see `with_base`), then the (path, message) problems it must give, in order.
#[test]
fn each_shape_error_with_its_path() {
    let cases: &[(&str, &[(&str, &str)])] = &[
            (
                "server: { threads: 0 }\n",
                &[("server.threads", "must be between 1 and 1024")],
            ),
            (
                "server: { max_header_size: 10 }\n",
                &[("server.max_header_size", "must be between 1KiB and 1000KiB")],
            ),
            (
                "server: { grace_period: 1500ms, shutdown_timeout: 0s }\n",
                &[
                    (
                        "server.grace_period",
                        "must be a whole number of seconds, at least 1s (the server counts \
                         whole seconds); got 1.5s",
                    ),
                    (
                        "server.shutdown_timeout",
                        "must be a whole number of seconds, at least 1s (the server counts \
                         whole seconds); got 0ns",
                    ),
                ],
            ),
            (
                "server: { trusted_proxies: [\"10.0.0.0/8\", \"nope\"] }\n",
                &[("server.trusted_proxies[1]", "\"nope\" is not a CIDR")],
            ),
            (
                "routes: [ { name: r0, upstream: u, trust_forwarded_headers: true } ]\n",
                &[(
                    "routes[0].trust_forwarded_headers",
                    "needs server.trusted_proxies: forwarded fields are believed only from a trusted proxy",
                )],
            ),
            (
                "admin: { address: \"localhost\" }\n",
                &[("admin.address", "\"localhost\" is not an IP:port address")],
            ),
            (
                "admin: { address: \"127.0.0.1:18080\" }\n",
                &[("listeners[0].address", "address 127.0.0.1:18080 is also the admin address")],
            ),
            (
                "listeners: [ { name: a, address: \"127.0.0.1:1\" }, { name: a, address: \"127.0.0.1:1\" }, { address: x } ]\n",
                &[
                    ("listeners[1].name", "duplicate listener name \"a\""),
                    ("listeners[1].address", "address 127.0.0.1:1 is used twice"),
                    ("listeners[2].name", "missing: every listener needs a name"),
                    ("listeners[2].address", "\"x\" is not an IP:port address"),
                ],
            ),
            (
                "listeners: [ { name: t, address: \"127.0.0.1:1\", tls: { certificates: [] } } ]\n",
                &[("listeners[0].tls.certificates", "at least one certificate is required")],
            ),
            (
                "upstreams:\n  u: { targets: [] }\n",
                &[("upstreams.u.targets", "at least one target is required")],
            ),
            (
                "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:1\", weight: 0 }, { address: \"127.0.0.1:1\" } ], retries: 11 }\n",
                &[
                    ("upstreams.u.targets[0].weight", "must be between 1 and 1000"),
                    ("upstreams.u.targets[1].address", "target \"127.0.0.1:1\" is listed twice"),
                    ("upstreams.u.retries", "must be at most 10"),
                ],
            ),
            (
                "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:1\" } ], balance: consistent_hash }\n",
                &[(
                    "upstreams.u.hash_on",
                    "required with balance: consistent_hash (consumer | ip | path | header:NAME)",
                )],
            ),
            (
                "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:1\" } ], health: { active: { http_path: health, interval: 1ms, timeout: 0s, healthy_after: 0, unhealthy_after: 0 }, passive: { unhealthy_after: 0 } } }\n",
                &[
                    ("upstreams.u.health.active.http_path", "must start with /"),
                    ("upstreams.u.health.active.interval", "must be at least 10ms"),
                    ("upstreams.u.health.active.timeout", "must be more than 0"),
                    ("upstreams.u.health.active.healthy_after", "must be at least 1"),
                    ("upstreams.u.health.active.unhealthy_after", "must be at least 1"),
                    ("upstreams.u.health.passive.unhealthy_after", "must be at least 1"),
                ],
            ),
            (
                "upstreams:\n  u: { targets: [ { address: \"127.0.0.1:1\" } ], health: { active: { http_path: /h, tcp: true } } }\n",
                &[("upstreams.u.health.active", "set either http_path or tcp: true, not both")],
            ),
            (
                "auth:\n  api_key: { header: X-Key, query: \"\" }\n",
                &[("auth.api_key.query", "must not be empty (omit it instead)")],
            ),
            (
                "auth:\n  jwt:\n    - { name: a, issuer: \"\", audiences: [], algorithms: [] }\n",
                &[
                    ("auth.jwt[0].issuer", "the exact `iss` value is required"),
                    ("auth.jwt[0].algorithms", "list at least one algorithm"),
                    ("auth.jwt[0].audiences", "list at least one audience: a token must be meant for this API"),
                    ("auth.jwt[0]", "an issuer needs keys: jwks_url, jwks_file or hmac_secret"),
                ],
            ),
            (
                "auth:\n  jwt:\n    - { name: a, issuer: i, audiences: [x], algorithms: [RS256, rs256, none], jwks_url: \"ftp://x\", hmac_secret: \"0123456789abcdef0123456789abcdef\", leeway: 11m, scope_claim: \"\" }\n    - { name: a, issuer: i, audiences: [x], algorithms: [HS512], hmac_secret: \"0123456789abcdef0123456789abcdef\" }\n",
                &[
                    ("auth.jwt[0].algorithms[1]", "unknown algorithm \"rs256\" (one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512, EdDSA)"),
                    ("auth.jwt[0].algorithms[2]", "`none` is never accepted: tokens must be signed"),
                    ("auth.jwt[0].hmac_secret", "set, but no HS256/HS384/HS512 is listed in algorithms"),
                    ("auth.jwt[0].jwks_url", "\"ftp://x\" is not an http(s) URL"),
                    ("auth.jwt[0].scope_claim", "must not be empty (omit it for the default)"),
                    ("auth.jwt[0].leeway", "at most 10m"),
                    ("auth.jwt[1].name", "issuer names must be unique and non-empty (\"a\")"),
                    ("auth.jwt[1].issuer", "issuer \"i\" is configured twice"),
                    ("auth.jwt[1].hmac_secret", "too short: at least as long as the hash (32 bytes for HS256, 48 for HS384, 64 for HS512; RFC 7518 §3.2)"),
                ],
            ),
            (
                "auth:\n  jwt:\n    - { name: a, issuer: i, audiences: [x], algorithms: [HS256], jwks_url: \"https://id.test/jwks\" }\n",
                &[("auth.jwt[0].hmac_secret", "HS256/HS384/HS512 need hmac_secret (or oct keys in jwks_file; a jwks_url never supplies secrets)")],
            ),
            (
                "tiers: { free: { burst: 3 } }\nconsumers:\n  - { id: \"\", tier: gold, api_keys: [\"sha256:00\"], scopes: [\"a b\"] }\n  - { id: b, api_keys: [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\", \"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"], jwt_subjects: [s, s] }\n  - { id: b }\n",
                &[
                    ("consumers[0].id", "a consumer id is required (printable, it becomes X-Consumer-ID)"),
                    ("consumers[0].api_keys[0]", "must be sha256:<64 hex digits> (use `gatehouse hash-key KEY`), or ${VAR} naming an environment variable that holds the key"),
                    ("consumers[0].scopes[0]", "\"a b\" is not a scope (printable ASCII, no space, quote or backslash)"),
                    ("consumers[1].api_keys[1]", "the same key is also consumers[1].api_keys[0]"),
                    ("consumers[1].jwt_subjects[1]", "subject \"s\" is also consumers[1].jwt_subjects[0]"),
                    ("consumers[2].id", "duplicate consumer id \"b\""),
                    ("consumers[0].tier", "unknown tier \"gold\""),
                    ("tiers.free.burst", "burst needs a rate"),
                ],
            ),
            (
                "cache: { memory: 1KiB, lock_timeout: 0s, max_object_size: 2KiB }\n",
                &[
                    ("cache.memory", "must be at least 64KiB"),
                    ("cache.lock_timeout", "must be more than 0"),
                    ("cache.max_object_size", "is larger than cache.memory"),
                ],
            ),
            (
                "store: { backend: redis, sync_interval: 5ms, max_keys: 10 }\n",
                &[
                    ("store.redis_url", "required with backend: redis"),
                    ("store.sync_interval", "must be 0 (exact: the shared store on every request) or between 10ms and 1h"),
                    ("store.max_keys", "must be at least 1024"),
                ],
            ),
            (
                "store: { sync_interval: 0s }\n",
                &[("store.sync_interval", "0 (a store call on every request) needs backend: redis")],
            ),
            (
                "tiers: { fast: { rate: 2000000/s, burst: 0 } }\n",
                &[
                    ("tiers.fast.rate", "2000000/s is too fast: at most one request per microsecond"),
                    ("tiers.fast.burst", "must be at least 1"),
                ],
            ),
            (
                "routes:\n  - { name: unmatched, upstream: \"\" }\n  - { name: unmatched, upstream: u }\n",
                &[
                    ("routes[0].name", "a route needs a name (and `unmatched` is reserved)"),
                    ("routes[0].upstream", "missing: every route needs an upstream (or versions.upstreams, split.weights, aggregate)"),
                    ("routes[1].name", "a route needs a name (and `unmatched` is reserved)"),
                    ("routes[1].name", "duplicate route name \"unmatched\" (also routes[0])"),
                ],
            ),
            (
                "routes:\n  - { name: r, upstream: u, strip_prefix: api, match: { path: x, path_prefix: /y, hosts: [\"a..b\", \"*.ok.test\"], methods: [get], headers: { \"bad name\": v } } }\n",
                &[
                    ("routes[0].match", "use only one of path, path_prefix and path_regex"),
                    ("routes[0].match.path", "must start with /"),
                    ("routes[0].match.hosts[0]", "\"a..b\" is not a host name or *.wildcard"),
                    ("routes[0].match.methods[0]", "\"get\" is not a method (GET, POST, ...)"),
                    ("routes[0].match.headers.bad name", "invalid header name"),
                    ("routes[0].strip_prefix", "must start with /"),
                ],
            ),
            (
                "routes:\n  - { name: r, upstream: u, request_headers: { set: { \"a b\": x, ok: \"\\n\" }, remove: [\"c d\"] }, scopes: [s] }\n",
                &[
                    ("routes[0].request_headers.set.a b", "invalid header name"),
                    ("routes[0].request_headers.set.ok", "invalid header value"),
                    ("routes[0].request_headers.remove[0]", "invalid header name"),
                    ("routes[0].scopes", "scopes need authentication: set auth on this route"),
                ],
            ),
            (
                "routes:\n  - { name: r, upstream: u, cache: { vary: [\"*\"] }, rate_limit: { limit: 5/s, key: cookie, sync_interval: 1s }, quota: { limit: 5/day, key: \"header:a b\" } }\n",
                &[
                    ("routes[0].rate_limit.key", "must be consumer | ip | route | header:NAME"),
                    ("routes[0].rate_limit.sync_interval", "only with store.backend: redis (local rates are exact already)"),
                    ("routes[0].quota.key", "must be consumer | ip | route | header:NAME"),
                    ("routes[0].cache", "needs the top-level cache: section"),
                    ("routes[0].cache.vary[0]", "must be a header name"),
                ],
            ),
        ];
    for (rest, want) in cases {
        let got = problems(rest);
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(p, m)| (p.to_string(), m.to_string()))
            .collect();
        assert_eq!(got, want, "for:\n{rest}");
    }
}

/// Checks that need built objects are compile's (`runtime::snapshot`), not these.
#[test]
fn no_checks_that_need_built_objects() {
    let yaml = r#"
listeners: [ { name: t, address: "127.0.0.1:1", tls: { certificates: [ { cert: /nonexistent.pem, key: /nonexistent.key } ] } } ]
upstreams:
  u: { targets: [ { address: "no-such-host.invalid:80" } ], hash_on: cookie }
auth:
  jwt:
    - { name: a, issuer: i, audiences: [x], algorithms: [ES256], jwks_file: /nonexistent.json }
  api_key: { header: "bad header" }
routes:
  - { name: r, upstream: nope, match: { path_regex: "(" }, auth: [saml] }
"#;
    assert_eq!(problems(yaml), [] as [(String, String); 0]);
}
