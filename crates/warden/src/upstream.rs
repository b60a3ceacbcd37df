//! The demo upstream: a small account service with a login endpoint.
//!
//! * `POST /login` with `{"account": "alice"}` (or `?account=alice`) issues a token signed
//!   with the sample key [`warden_core::fixtures::SampleKey::RsA`], in a JSON body
//!   (`access_token`) and a `session` cookie: the "real issuance process".
//! * `GET /account/...` answers with account data for the token's `sub` (read without
//!   verification: protecting this service is warden's job).
//! * Anything else answers with the path and the headers warden added.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::listening::Service;
use serde_json::{json, Value};
use warden_core::fixtures::{mint, SampleKey};

/// The demo account service.
pub struct DemoUpstream {
    kid: String,
    ttl: u64,
}

impl DemoUpstream {
    pub fn new(kid: &str, ttl: u64) -> Self {
        Self {
            kid: kid.to_owned(),
            ttl,
        }
    }

    /// A listening service for it.
    pub fn service(self, listen: &str) -> Service<Self> {
        let mut s = Service::new("demo upstream".to_string(), self);
        s.add_tcp(listen);
        s
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random token id.
pub fn random_jti() -> String {
    let mut b = [0u8; 12];
    if getrandom::fill(&mut b).is_err() {
        // Uniqueness, not secrecy, is what a jti needs; time and a counter give it.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return format!(
            "{:x}-{n}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn reply(status: StatusCode, body: &Value, cookie: Option<String>) -> Response<Vec<u8>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", bytes.len());
    if let Some(c) = cookie {
        b = b.header("set-cookie", c);
    }
    b.body(bytes).unwrap_or_else(|_| Response::new(Vec::new()))
}

/// The `sub` of a bearer token, read without verification.
fn subject(session: &ServerSession) -> Option<String> {
    use base64::Engine as _;
    let h = &session.req_header().headers;
    let bearer = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = h
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').find_map(|p| p.trim().strip_prefix("session=")));
    let token = bearer.or(cookie)?;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sub")?.as_str().map(str::to_owned)
}

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let query = session.req_header().uri.query().unwrap_or("").to_owned();
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            if body.len() + chunk.len() > 1 << 20 {
                return reply(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &json!({"error": "body too large"}),
                    None,
                );
            }
            body.extend_from_slice(&chunk);
        }
        if path == "/login" || path.starts_with("/login-") {
            let from_body = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("account").and_then(Value::as_str).map(str::to_owned));
            let from_query = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("account="))
                .map(str::to_owned);
            let Some(account) = from_body.or(from_query).filter(|a| !a.is_empty()) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "expected {\"account\": \"...\"}"}),
                    None,
                );
            };
            let t = now();
            let claims =
                json!({"sub": account, "jti": random_jti(), "iat": t, "exp": t + self.ttl});
            return match mint(SampleKey::RsA, &self.kid, &claims) {
                Ok(token) => reply(
                    StatusCode::OK,
                    &json!({"access_token": token, "token_type": "Bearer", "expires_in": self.ttl}),
                    Some(format!("session={token}; Path=/; HttpOnly")),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({"error": e.to_string()}),
                    None,
                ),
            };
        }
        let headers = session.req_header();
        let forwarded_for = headers
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let tag = headers
            .headers
            .get("x-warden-tag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(section) = path.strip_prefix("/account/") {
            let account = subject(session).unwrap_or_default();
            let data = match section {
                "addresses" => {
                    json!([{"label": "home", "street": format!("1 Example Street ({account})"), "door_code": "****"}])
                }
                "orders" => json!([{"id": 1001, "total": "42.00"}]),
                _ => json!({"name": account}),
            };
            return reply(
                StatusCode::OK,
                &json!({"account": account, "section": section, "data": data, "x_forwarded_for": forwarded_for, "x_warden_tag": tag}),
                None,
            );
        }
        reply(
            StatusCode::OK,
            &json!({"path": path, "x_forwarded_for": forwarded_for, "x_warden_tag": tag}),
            None,
        )
    }
}

pub fn main(listen: &str, kid: &str, ttl: u64) -> ExitCode {
    let conf = ServerConf {
        threads: 1,
        pid_file: format!("/tmp/warden-upstream-{}.pid", std::process::id()),
        upgrade_sock: format!("/tmp/warden-upstream-{}.sock", std::process::id()),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    server.add_service(DemoUpstream::new(kid, ttl).service(listen));
    log::info!("demo upstream listening on {listen}, issuing tokens under kid {kid}");
    server.run_forever()
}
