//! Warden's admin API, on its own listener (loopback by default).
//!
//! | method | path | auth | what |
//! |---|---|---|---|
//! | GET | `/health` | no | the process is up |
//! | GET | `/ready` | no | ready to serve (ledger loaded, signal handlers installed) |
//! | GET | `/metrics` | no | Prometheus text exposition |
//! | GET | `/config/generation` | no | generation of the configuration in force |
//! | POST | `/reload` | yes | re-read the configuration (same as SIGHUP) |
//! | POST | `/ledger/records` | yes | record issued tokens: one object, an array, or `{"records": [...]}` |
//! | POST | `/ledger/revoke` | yes | revoke by `jti`, `token_id`, `token`, `account` or `kid` |
//! | GET | `/ledger/records/{token_id}` | yes | one record |
//! | GET | `/ledger/lookup?jti=...` | yes | one record by `jti` |
//! | GET | `/ledger/stats` | no | counters |
//! | GET | `/decisions` | yes | bans in force |
//! | POST | `/decisions` | yes | ban by hand: `{"field": "ip"\|"account"\|"token", "value": ..., "ttl": "1h"}` |
//! | DELETE | `/decisions/{id}` | yes | lift a ban |
//! | GET | `/rules` | yes | rules in force, with their worst keys (top offenders) |
//!
//! "auth" means `Authorization: Bearer <token>`, the token read from `admin.token_file`,
//! compared in constant time. Without a token file those endpoints answer 403. A failed
//! authentication is counted (`warden_admin_auth_failures_total`) and answered only after
//! a delay (250 ms), which slows a guesser. At most [`AUTH_DELAY_SLOTS`] failures wait at
//! once, so the delay cannot be turned into a way to pile up connections and tasks: a
//! failure beyond them is answered at once with 429 and counted in
//! `warden_admin_auth_overflow_total`. Requests with the right token never wait for a
//! slot, so a flood of wrong ones does not lock the operators or the issuance service
//! out. Guessing stays hopeless because of the token's size, not the delay: `warden run`
//! refuses a token shorter than 16 characters.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use warden_core::ingest::record_from_json;
use warden_core::ledger::{Ledger, RecordView, Revocation, TokenId};
use warden_core::verify::Verifier;
use warden_detect::Engine;
use warden_metrics::{Event, Events, Metrics, Source};
use warden_rules::Field;

/// Largest request body the admin API reads.
pub const MAX_BODY: usize = 16 << 20;
/// Most records in one batch.
pub const MAX_BATCH: usize = 100_000;
/// Delay before answering a failed authentication.
const AUTH_FAILURE_DELAY: Duration = Duration::from_millis(250);
/// Failed authentications delayed at once, at most; beyond, 429 at once.
pub const AUTH_DELAY_SLOTS: usize = 32;

/// What the admin API needs from the running warden.
pub trait Control: Send + Sync + 'static {
    /// The verifier (to read tokens sent for recording or revocation).
    fn verifier(&self) -> &Verifier;
    /// The ledger.
    fn ledger(&self) -> &Arc<dyn Ledger>;
    /// Metrics.
    fn metrics(&self) -> &Metrics;
    /// Reloads the configuration; the new generation, or the error lines.
    fn reload(&self) -> Result<u64, Vec<String>>;
    /// The configuration generation in force.
    fn generation(&self) -> u64;
    /// Whether warden is ready to serve.
    fn ready(&self) -> bool;
    /// Unix seconds now.
    fn now(&self) -> u64;
    /// The behaviour engine (bans).
    fn engine(&self) -> &Engine;
    /// The event sink (bans placed and lifted by hand).
    fn events(&self) -> &Events;
}

/// The admin HTTP application.
pub struct AdminApp {
    control: Arc<dyn Control>,
    token_digest: Option<[u8; 32]>,
    delay_slots: tokio::sync::Semaphore,
}

impl AdminApp {
    /// An admin app; `token` is the bearer token for mutating calls (none: refused).
    #[must_use]
    pub fn new(control: Arc<dyn Control>, token: Option<&str>) -> Self {
        Self {
            control,
            token_digest: token.map(|t| Sha256::digest(t.trim().as_bytes()).into()),
            delay_slots: tokio::sync::Semaphore::new(AUTH_DELAY_SLOTS),
        }
    }
}

fn reply(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    text(status, "application/json", bytes)
}

fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", len)
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Vec<u8>> {
    reply(status, &json!({ "error": message.into() }))
}

/// Compares two digests without an early exit.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn view_json(v: &RecordView) -> Value {
    json!({
        "token_id": v.record.id.to_hex(),
        "account": v.record.account,
        "issued_at": v.record.issued_at,
        "expires_at": v.record.expires_at,
        "kid": v.record.kid,
        "revoked": v.revoked,
    })
}

enum Auth {
    Ok,
    NotConfigured,
    Failed,
}

impl AdminApp {
    fn authenticate(&self, session: &ServerSession) -> Auth {
        let Some(expected) = &self.token_digest else {
            return Auth::NotConfigured;
        };
        let given = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| Sha256::digest(t.trim().as_bytes()));
        match given {
            Some(d) if ct_eq(&d.into(), expected) => Auth::Ok,
            _ => Auth::Failed,
        }
    }

    async fn body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
        let mut body = Vec::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_BODY {
                        return Err(error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("body over {MAX_BODY} bytes"),
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!("cannot read body: {e}"),
                    ))
                }
            }
        }
    }

    async fn json_body(session: &mut ServerSession) -> Result<Value, Response<Vec<u8>>> {
        let body = Self::body(session).await?;
        serde_json::from_slice(&body)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")))
    }

    async fn record(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let v = match Self::json_body(session).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let items = match v {
            Value::Array(a) => a,
            Value::Object(mut o) if o.contains_key("records") => match o.remove("records") {
                Some(Value::Array(a)) => a,
                _ => return error(StatusCode::BAD_REQUEST, "\"records\" must be an array"),
            },
            obj @ Value::Object(_) => vec![obj],
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "expected a record object, an array of them, or {\"records\": [...]}",
                )
            }
        };
        if items.len() > MAX_BATCH {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("{} records, at most {MAX_BATCH} per call", items.len()),
            );
        }
        let now = self.control.now();
        let mut records = Vec::with_capacity(items.len());
        let mut rejected = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match record_from_json(item, self.control.verifier(), now) {
                Ok(r) => records.push(r),
                Err(e) => rejected.push(json!({"index": i, "error": e.to_string()})),
            }
        }
        let metrics = self.control.metrics();
        if !rejected.is_empty() {
            metrics.record_failures(Source::Admin, rejected.len() as u64);
        }
        let n = records.len();
        if n > 0 {
            if let Err(e) = self.control.ledger().record(records).await {
                metrics.record_failures(Source::Admin, n as u64);
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": e.to_string(), "recorded": 0, "rejected": rejected}),
                );
            }
            metrics.records(Source::Admin, n as u64);
        }
        let status = if n == 0 && !rejected.is_empty() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        };
        reply(status, &json!({"recorded": n, "rejected": rejected}))
    }

    async fn revoke(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let v = match Self::json_body(session).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let Some(obj) = v.as_object().filter(|o| o.len() == 1) else {
            return error(
                StatusCode::BAD_REQUEST,
                "expected one of {\"jti\"}, {\"token_id\"}, {\"token\"}, {\"account\"}, {\"kid\"}",
            );
        };
        let (key, value) = obj
            .iter()
            .next()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .unwrap_or(("", None));
        let Some(value) = value.filter(|s| !s.is_empty()) else {
            return error(
                StatusCode::BAD_REQUEST,
                format!("{key:?} must be a non-empty string"),
            );
        };
        let now = self.control.now();
        let revocation = match key {
            "jti" => Revocation::Token(TokenId::from_jti(value)),
            "token_id" => match TokenId::from_hex(value) {
                Ok(id) => Revocation::Token(id),
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            },
            "token" => match warden_core::token::parse(value, self.control.verifier().policy().max_token_bytes) {
                // The token need not verify to be revoked: its id is all that matters.
                Ok(p) => match p.claims.string("jti") {
                    Ok(Some(j)) if !j.is_empty() => Revocation::Token(TokenId::from_jti(j)),
                    _ => Revocation::Token(TokenId::from_token(value)),
                },
                Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            },
            "account" => Revocation::Account { account: value.to_owned(), at: now },
            "kid" => Revocation::Kid(value.to_owned()),
            other => return error(StatusCode::BAD_REQUEST, format!("unknown revocation key {other:?}; expected jti, token_id, token, account or kid")),
        };
        // What the revocation covers, in the answer: an account or key-id revocation marks
        // no record ("revoked": 0) yet refuses every token it names, which a bare count
        // would hide from the operator who just made it.
        let covers = match &revocation {
            Revocation::Token(id) => json!({"scope": "token", "token_id": id.to_hex()}),
            Revocation::Account { account, at } => {
                json!({"scope": "account", "account": account, "issued_up_to": at})
            }
            Revocation::Kid(kid) => json!({"scope": "kid", "kid": kid}),
        };
        let token = matches!(revocation, Revocation::Token(_));
        match self.control.ledger().revoke(revocation, now).await {
            Ok(n) => {
                let mut body = covers;
                body["revoked"] = json!(n);
                if token {
                    // No record of it yet: the revocation waits for one.
                    body["waiting_for_record"] = json!(n == 0);
                }
                reply(StatusCode::OK, &body)
            }
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    async fn ban(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let v = match Self::json_body(session).await {
            Ok(v) => v,
            Err(r) => return r,
        };
        let get = |k: &str| v.get(k).and_then(Value::as_str);
        let (Some(field), Some(value), Some(ttl)) = (get("field"), get("value"), get("ttl")) else {
            return error(StatusCode::BAD_REQUEST, "expected {\"field\": \"ip\"|\"account\"|\"token\", \"value\": ..., \"ttl\": \"1h\"}");
        };
        let field = match field {
            "ip" => Field::Ip,
            "account" => Field::Account,
            "token" => Field::Token,
            other => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("field {other:?} is not one of ip, account, token"),
                )
            }
        };
        let ttl = match humantime::parse_duration(ttl) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("ttl {ttl:?} is not a duration like \"30m\" or \"1h\""),
                )
            }
        };
        let now_ms = self.control.now().saturating_mul(1000);
        let until_ms =
            now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX / 2));
        match self
            .control
            .engine()
            .ban_manual(&field, value, now_ms, until_ms)
        {
            Ok(id) => {
                let mut e = Event::new("ban_placed");
                e.rule = Some("manual".into());
                e.action = Some("ban");
                e.key = Some(format!("{}={value}", field.name()));
                e.detail = Some(format!(
                    "placed through the admin API for {}",
                    humantime::format_duration(ttl)
                ));
                self.control.events().emit(&e);
                reply(StatusCode::OK, &json!({"id": id, "until_ms": until_ms}))
            }
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        }
    }

    async fn lookup(&self, id: TokenId) -> Response<Vec<u8>> {
        match self.control.ledger().get(&id).await {
            Ok(Some(v)) => reply(StatusCode::OK, &view_json(&v)),
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                format!("no record for token id {}", id.to_hex()),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    async fn route(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        let query = session.req_header().uri.query().unwrap_or("").to_owned();
        let c = &self.control;
        // Open endpoints.
        match (&method, path.as_str()) {
            (&Method::GET, "/health") => return reply(StatusCode::OK, &json!({"status": "ok"})),
            (&Method::GET, "/ready") => {
                return if c.ready() {
                    reply(StatusCode::OK, &json!({"status": "ready"}))
                } else {
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &json!({"status": "starting"}),
                    )
                }
            }
            (&Method::GET, "/metrics") => {
                return text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    c.metrics().encode().into_bytes(),
                )
            }
            (&Method::GET, "/config/generation") => {
                return reply(StatusCode::OK, &json!({"generation": c.generation()}))
            }
            (&Method::GET, "/ledger/stats") => {
                let s = c.ledger().stats();
                return reply(
                    StatusCode::OK,
                    &json!({"backend": c.ledger().name(), "entries": s.entries, "recorded_total": s.recorded_total,
                            "revocations_total": s.revocations_total, "swept_total": s.swept_total,
                            "pending_revocations": s.pending_revocations}),
                );
            }
            _ => {}
        }
        let known = matches!(
            (&method, path.as_str()),
            (
                &Method::POST,
                "/reload" | "/ledger/records" | "/ledger/revoke" | "/decisions"
            ) | (&Method::GET, "/ledger/lookup" | "/decisions" | "/rules")
        ) || (method == Method::GET && path.starts_with("/ledger/records/"))
            || (method == Method::DELETE && path.starts_with("/decisions/"));
        if !known {
            return error(
                StatusCode::NOT_FOUND,
                format!("no endpoint {method} {path}"),
            );
        }
        match self.authenticate(session) {
            Auth::Ok => {}
            Auth::NotConfigured => {
                return error(
                    StatusCode::FORBIDDEN,
                    "mutating and ledger endpoints are disabled: set admin.token_file",
                )
            }
            Auth::Failed => {
                c.metrics().admin_auth_failures.inc();
                let Ok(_slot) = self.delay_slots.try_acquire() else {
                    c.metrics().admin_auth_overflow.inc();
                    let mut r = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many failed authentications in progress",
                    );
                    if let Ok(v) = "1".parse() {
                        r.headers_mut().insert("retry-after", v);
                    }
                    return r;
                };
                tokio::time::sleep(AUTH_FAILURE_DELAY).await;
                let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                if let Ok(v) = "Bearer".parse() {
                    r.headers_mut().insert("www-authenticate", v);
                }
                return r;
            }
        }
        match (&method, path.as_str()) {
            (&Method::POST, "/reload") => match c.reload() {
                Ok(g) => reply(StatusCode::OK, &json!({"generation": g})),
                Err(errors) => reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    &json!({"errors": errors, "generation": c.generation()}),
                ),
            },
            (&Method::POST, "/ledger/records") => self.record(session).await,
            (&Method::GET, "/decisions") => {
                let now_ms = c.now().saturating_mul(1000);
                let bans: Vec<Value> = c
                    .engine()
                    .bans(now_ms)
                    .into_iter()
                    .map(|(id, b)| {
                        json!({"id": id, "rule": b.rule, "key": b.key, "placed_at_ms": b.placed_ms, "until_ms": b.until_ms})
                    })
                    .collect();
                reply(StatusCode::OK, &json!({"bans": bans}))
            }
            (&Method::POST, "/decisions") => self.ban(session).await,
            (&Method::GET, "/rules") => {
                let now_ms = c.now().saturating_mul(1000);
                let rules: Vec<Value> = c
                    .engine()
                    .rules_info(now_ms)
                    .into_iter()
                    .map(|i| {
                        let r = &i.rule;
                        json!({
                            "name": r.name,
                            "description": r.description,
                            "mode": r.mode.as_str(),
                            "action": r.action.as_str(),
                            "threshold": r.threshold,
                            "window_seconds": r.window.as_secs(),
                            "key": r.key.iter().map(warden_rules::Field::name).collect::<Vec<_>>(),
                            "measure": match &r.measure {
                                warden_rules::Measure::Count => "count".to_owned(),
                                warden_rules::Measure::Distinct(f) => format!("distinct {}", f.name()),
                            },
                            "tracked_keys": i.tracked_keys,
                            "top": i.top.iter().map(|o| json!({"key": o.display, "estimate": o.estimate, "last_seen_ms": o.last_ms})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                reply(StatusCode::OK, &json!({ "rules": rules }))
            }
            (&Method::DELETE, p) if p.starts_with("/decisions/") => {
                let id = &p["/decisions/".len()..];
                if c.engine().lift(id) {
                    let mut e = Event::new("ban_lifted");
                    e.action = Some("lift");
                    e.detail = Some(format!("ban {id} lifted through the admin API"));
                    c.events().emit(&e);
                    reply(StatusCode::OK, &json!({"lifted": id}))
                } else {
                    error(
                        StatusCode::NOT_FOUND,
                        format!("no ban with id {:?}", warden_core::token::truncate(id)),
                    )
                }
            }
            (&Method::POST, "/ledger/revoke") => self.revoke(session).await,
            (&Method::GET, "/ledger/lookup") => {
                let jti = query.split('&').find_map(|kv| kv.strip_prefix("jti="));
                match jti {
                    Some(j) if !j.is_empty() => {
                        self.lookup(TokenId::from_jti(&percent_decode(j))).await
                    }
                    _ => error(StatusCode::BAD_REQUEST, "expected ?jti=..."),
                }
            }
            (&Method::GET, p) => match p.strip_prefix("/ledger/records/").map(TokenId::from_hex) {
                Some(Ok(id)) => self.lookup(id).await,
                Some(Err(e)) => error(StatusCode::BAD_REQUEST, e.to_string()),
                None => error(StatusCode::NOT_FOUND, "no such endpoint"),
            },
            _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        self.route(session).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_compare() {
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        assert!(ct_eq(&a, &a));
        assert!(!ct_eq(&a, &b));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
