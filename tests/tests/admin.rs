//! The admin API against its OpenAPI document, the top offenders, and event delivery to
//! a webhook.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use warden_core::fixtures::SampleKey;
use warden_core::ledger::TokenId;
use warden_e2e::{kid, now, request, token, wait_for, Upstream, Warden, ADMIN_TOKEN};

const SPEC: &str = include_str!("../../docs/admin-openapi.json");
const ADMIN_SRC: &str = include_str!("../../crates/warden-admin/src/lib.rs");

/// (method, path) pairs of the OpenAPI document.
fn spec_operations(spec: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            ops.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    ops.sort();
    ops
}

#[test]
fn the_openapi_document_lists_exactly_the_endpoints_and_each_answers_as_documented() {
    let spec: Value = serde_json::from_str(SPEC).expect("OpenAPI JSON");
    let ops = spec_operations(&spec);
    // The endpoint table in the admin crate's documentation is the same set.
    let mut table: Vec<(String, String)> = ADMIN_SRC
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.strip_prefix("//! |")?.split('|').map(str::trim).collect();
            let path = cells.get(1)?.trim_matches('`').split('?').next()?;
            (path.starts_with('/')
                && cells[0].chars().all(|c| c.is_ascii_uppercase())
                && !cells[0].is_empty())
            .then(|| (cells[0].to_owned(), path.to_owned()))
        })
        .collect();
    table.sort();
    assert_eq!(
        ops, table,
        "docs/admin-openapi.json and the admin crate's endpoint table differ"
    );

    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    let tok = token(SampleKey::RsA, kid::ACTIVE, "alice", now());
    let id = TokenId::from_token(&tok).to_hex();
    let bodies = |method: &str, path: &str| -> Option<String> {
        Some(match (method, path) {
            ("POST", "/ledger/records") => json!({"token": tok}).to_string(),
            ("POST", "/ledger/revoke") => json!({"account": "nobody"}).to_string(),
            ("POST", "/decisions") => {
                json!({"field": "ip", "value": "192.0.2.1", "ttl": "1m"}).to_string()
            }
            ("POST", _) => String::new(),
            _ => return None,
        })
    };
    for (method, path) in &ops {
        let concrete = path
            .replace("{token_id}", &id)
            .replace("{id}", "00000000000000000000000000000000");
        let concrete = if path == "/ledger/lookup" {
            format!("{concrete}?jti=x")
        } else {
            concrete
        };
        let body = bodies(method, path).unwrap_or_default();
        let op = &spec["paths"][path][method.to_ascii_lowercase()];
        let documented: Vec<u16> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .filter_map(|k| k.parse().ok())
            .collect();
        // With the token.
        let r = w.admin(method, &concrete, &body);
        assert!(
            documented.contains(&r.status),
            "{method} {path}: {} not documented ({documented:?}): {}",
            r.status,
            r.text()
        );
        assert!(
            !r.text().contains("no endpoint"),
            "{method} {path} is not served"
        );
        let needs_auth = op.get("security").is_some();
        if needs_auth {
            let r = request(w.admin, method, &concrete, &[], body.as_bytes());
            assert_eq!(
                r.status, 401,
                "{method} {path} answered without authentication"
            );
        } else {
            let r = request(w.admin, method, &concrete, &[], body.as_bytes());
            assert!(
                r.status != 401 && r.status != 403,
                "{method} {path} should be open"
            );
        }
    }
    assert!(w.metric("warden_admin_auth_failures_total") >= 8.0);
    let _ = ADMIN_TOKEN;
}

#[test]
fn top_offenders_show_the_worst_keys_per_rule() {
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start_with_rules(
        &up,
        r#"[[rules]]
name = "per-ip"
key = ["ip"]
window = "1h"
threshold = 10
action = "log"
"#,
        "",
    );
    let t = token(SampleKey::Hs, kid::HS, "alice", now() - 5);
    w.record(&t);
    for (ip, n) in [("127.0.0.51", 12), ("127.0.0.52", 7), ("127.0.0.53", 2)] {
        for _ in 0..n {
            assert_eq!(w.get_from(ip, "/account/x", &t).status, 200);
        }
    }
    let rules = w.admin("GET", "/rules", "").json();
    let r = &rules["rules"][0];
    assert_eq!(r["name"], "per-ip");
    assert_eq!(r["tracked_keys"], 3);
    let top: Vec<(&str, f64)> = r["top"]
        .as_array()
        .expect("top")
        .iter()
        .map(|o| {
            (
                o["key"].as_str().expect("key"),
                o["estimate"].as_f64().expect("estimate"),
            )
        })
        .collect();
    assert_eq!(
        top,
        vec![("ip=127.0.0.51", 12.0), ("ip=127.0.0.52", 7.0)],
        "under half the threshold is not an offender"
    );
}

/// A minimal receiver standing in for a SIEM: fails its first `fail_first` requests with
/// 500, then answers 204, keeping the bodies it accepted.
fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Value>>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/events", l.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    std::thread::spawn(move || {
        let mut seen = 0;
        for conn in l.incoming().take(50) {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            let body = loop {
                let Ok(n) = c.read(&mut chunk) else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break Some(buf[end + 4..end + 4 + len].to_vec());
                }
            };
            seen += 1;
            if seen <= fail_first {
                let _ = c.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            if let Some(b) = body {
                if let Ok(Value::Array(events)) = serde_json::from_slice(&b) {
                    g.lock().expect("lock").extend(events);
                }
            }
            let _ = c.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}

#[test]
fn events_reach_a_webhook_with_retries() {
    let (url, got) = receiver(2);
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(
        &up,
        &format!("[events]\nwebhook = \"{url}\"\nwebhook_retries = 5\n"),
    );
    let forged = token(SampleKey::RsA, kid::ACTIVE, "mallory", now() - 60);
    assert_eq!(w.get("/account/addresses", &forged).status, 401);
    let delivered = wait_for(Duration::from_secs(10), || {
        let g = got.lock().expect("lock");
        g.iter().find(|e| e["type"] == "key_misuse").cloned()
    })
    .expect("the forged-token event reached the webhook");
    assert_eq!(delivered["reason"], "forged");
    assert_eq!(delivered["account"], "mallory");
    assert!(
        !delivered.to_string().contains(&forged),
        "the token itself was sent"
    );
    assert_eq!(w.metric("warden_webhook_failures_total"), 2.0);
    assert!(w.metric("warden_webhook_batches_total") >= 1.0);
    // The file/stdout sink got it too.
    assert!(w.events().iter().any(|e| e["type"] == "key_misuse"));
}
