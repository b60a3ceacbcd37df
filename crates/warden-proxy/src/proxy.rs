//! The `ProxyHttp` implementation.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use warden_config::model::{Capture, FailMode, Route, RouteClass};
use warden_core::ledger::{Answer, Query, Revocation};
use warden_core::verify::{Checked, Verified};
use warden_core::Reason;
use warden_detect::{Decision as RuleDecision, Facts, Lookup, Verdict};
use warden_metrics::{token_hash, DecisionKind, Event, HttpRefusal, IssuanceWait, Outcome, Source};
use warden_rules::Mode;

use crate::token_src::{self, Found};
use crate::{path, unix_now, unix_now_ms, Settings, Shared};

/// Login responses larger than this are not searched for a token.
const MAX_CAPTURE_BODY: usize = 64 * 1024;
/// How often a request waiting for a just-issued token's record looks again.
const ISSUANCE_POLL: Duration = Duration::from_millis(5);

/// Per-request state.
#[derive(Default)]
pub struct Ctx {
    class: usize,
    outcome: Option<Outcome>,
    route: Option<usize>,
    client_ip: Option<IpAddr>,
    settings: Option<Arc<Settings>>,
    capture_body: Option<Vec<u8>>,
    tags: Vec<&'static str>,
    upstream_sent: Option<Instant>,
    body_clock: Option<crate::limits::BodyClock>,
}

/// Warden's proxy.
pub struct WardenProxy {
    shared: Arc<Shared>,
    upstreams: Arc<LoadBalancer<RoundRobin>>,
    /// The upstream servers with their peers built once (the pool's backends are static:
    /// `upstream.peers` applies after a restart), in the pool's order.
    peers: Box<[(Backend, HttpPeer)]>,
    /// Round-robin position over `peers`.
    next: AtomicUsize,
}

impl WardenProxy {
    /// A proxy over shared state and an upstream pool.
    #[must_use]
    pub fn new(shared: Arc<Shared>, upstreams: Arc<LoadBalancer<RoundRobin>>) -> Self {
        let peers = upstreams
            .backends()
            .get_backend()
            .iter()
            .map(|b| {
                (
                    b.clone(),
                    HttpPeer::new(b.addr.clone(), false, String::new()),
                )
            })
            .collect();
        Self {
            shared,
            upstreams,
            peers,
            next: AtomicUsize::new(0),
        }
    }

    /// The next healthy upstream, round robin, as pingora's `LoadBalancer::select` picks
    /// it but without its per-request hashing (six SipHash rounds of the backend for the
    /// selection and its uniqueness check, about 1 000 instructions a request): one
    /// readiness lookup per backend tried.
    ///
    /// When no peer is ready, the round robin's own pick is tried anyway, as nginx does
    /// when every server is marked failed (and Envoy below its panic threshold): the
    /// health check runs once a second, so a web tier that came up a moment after warden
    /// (or a single peer that missed one check) would otherwise get every request refused
    /// until the next check. A peer that is really down then answers 502 at once.
    fn next_peer(&self) -> Option<&HttpPeer> {
        let n = self.peers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let backends = self.upstreams.backends();
        (0..n)
            .map(|i| &self.peers[start.wrapping_add(i) % n])
            .find(|(b, _)| backends.ready(b))
            .or_else(|| self.peers.get(start % n.max(1)))
            .map(|(_, p)| p)
    }
}

fn class_idx(c: RouteClass) -> usize {
    match c {
        RouteClass::Protected => 0,
        RouteClass::Issuance => 1,
        RouteClass::Open => 2,
    }
}

async fn respond(
    session: &mut Session,
    status: u16,
    body: &'static [u8],
    extra: &[(&str, &str)],
) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (k, v) in extra {
        resp.insert_header(k.to_string(), *v)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from_static(body)), true)
        .await?;
    Ok(true)
}

/// What the provenance check decided.
struct Decision {
    reason: Reason,
    checked: Option<Checked>,
}

/// Asks the ledger, from memory if it can, else under the configured timeout.
async fn ledger_answer(shared: &Shared, q: &Query<'_>, settings: &Settings) -> Result<Answer, ()> {
    {
        let ledger = &shared.ledger;
        if let Some(a) = ledger.check_local(q) {
            return Ok(a);
        }
        let started = Instant::now();
        let r = tokio::time::timeout(settings.ledger.timeout, ledger.check(q)).await;
        shared
            .metrics
            .ledger_seconds
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => {
                log::warn!("ledger lookup failed: {e}");
                Err(())
            }
            Err(_) => {
                log::warn!(
                    "ledger lookup timed out after {:?}",
                    settings.ledger.timeout
                );
                Err(())
            }
        }
    }
}

/// Decides the provenance of one token: verification, then the ledger (with the
/// issuance-race wait). Never waits longer than the ledger timeout per lookup plus
/// `issuance_wait`.
async fn decide(shared: &Shared, token: &str, settings: &Settings) -> Decision {
    {
        let now = unix_now();
        let checked = match shared.verifier.verify(token, now) {
            Ok(c) => c,
            Err(reason) => {
                return Decision {
                    reason,
                    checked: None,
                }
            }
        };
        let v = &checked.verified;
        let q = Query::of(v);
        // A token confirmed at the ledger's current revision and not revoked since is
        // still issued (see `warden_core::verify`): no lookup, and its stamp stays. Any
        // other is asked, with the revision read before asking.
        let (revision, answer) = match checked.confirmed_revision() {
            Some(r) if shared.ledger.still_issued(r, &v.id) => (Some(r), Ok(Answer::Issued)),
            _ => {
                let revision = shared.ledger.revision();
                (revision, ledger_answer(shared, &q, settings).await)
            }
        };
        let mut answer = match answer {
            Ok(a) => a,
            Err(()) => {
                shared.metrics.ledger_unavailable.inc();
                return Decision {
                    reason: Reason::BackendUnavailable,
                    checked: Some(checked),
                };
            }
        };
        // Issuance race: a token used moments after it was issued may arrive before its
        // record. Wait, bounded in time and in the number of waiters, for tokens whose
        // `iat` is recent; anything else unknown is forged at once.
        let fresh = q.just_issued(settings.ledger.issuance_window.as_secs(), now);
        if answer == Answer::Unknown && fresh && !settings.ledger.issuance_wait.is_zero() {
            match shared.waiters.try_acquire() {
                Ok(_permit) => {
                    let deadline = tokio::time::Instant::now() + settings.ledger.issuance_wait;
                    while answer == Answer::Unknown && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(ISSUANCE_POLL).await;
                        match ledger_answer(shared, &q, settings).await {
                            Ok(a) => answer = a,
                            Err(()) => break,
                        }
                    }
                    shared.metrics.issuance_wait(if answer == Answer::Unknown {
                        IssuanceWait::Timeout
                    } else {
                        IssuanceWait::Found
                    });
                }
                Err(_) => shared.metrics.issuance_wait(IssuanceWait::Overflow),
            }
        }
        let reason = shared.verifier.conclude_at(&checked, answer, revision);
        Decision {
            reason,
            checked: Some(checked),
        }
    }
}

/// What the proxy does with a protected request, given its provenance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Proxy it.
    Pass,
    /// Proxy it although the ledger could not answer (fail-open route): loudly.
    PassFailOpen,
    /// 503 with Retry-After: the ledger could not answer (fail-closed route).
    Unavailable,
    /// Refuse with the route's status (401 by default).
    Refuse,
}

fn action_for(reason: Reason, fail_mode: FailMode) -> Action {
    match (reason, fail_mode) {
        (Reason::Ok, _) => Action::Pass,
        (Reason::BackendUnavailable, FailMode::Open) => Action::PassFailOpen,
        (Reason::BackendUnavailable, FailMode::Closed) => Action::Unavailable,
        _ => Action::Refuse,
    }
}

impl WardenProxy {
    fn emit_rejection(
        &self,
        ctx: &Ctx,
        route: Option<&Route>,
        path: &str,
        d: &Decision,
        action: &'static str,
    ) {
        let kind = if d.reason.is_key_misuse() {
            "key_misuse"
        } else if d.reason == Reason::BackendUnavailable {
            "ledger_unavailable"
        } else {
            "token_rejected"
        };
        // One event per client address, token and reason per `events.repeat_interval`:
        // a token replayed in a flood is one event a minute, every request still counted
        // by `warden_provenance_total`.
        let token = d.checked.as_ref().map(|c| c.verified.id);
        if !self
            .shared
            .repeats
            .first(&(d.reason.as_str(), ctx.client_ip, token), unix_now())
        {
            self.shared.metrics.events_suppressed.inc();
            return;
        }
        let mut e = Event::new(kind);
        e.route = route.map(|r| r.name.clone());
        e.reason = Some(d.reason.as_str());
        e.action = Some(action);
        e.client_ip = ctx.client_ip.map(|i| i.to_string());
        e.path = Some(path.to_owned());
        if let Some(c) = &d.checked {
            e.account = Some(c.verified.account.to_string());
            e.token_hash = Some(token_hash(&c.verified.id));
            e.kid = Some(c.verified.kid.to_string());
        }
        self.shared.events.emit(&e);
    }

    fn record_inline(
        &self,
        token: &str,
        route: &str,
        client_ip: Option<IpAddr>,
        settings: &Settings,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let shared = Arc::clone(&self.shared);
        match shared.verifier.record_for_issued(token, unix_now()) {
            Ok(record) => {
                let timeout = settings.ledger.timeout.max(Duration::from_secs(2));
                let route = route.to_owned();
                Some(tokio::spawn(async move {
                    let id = record.id;
                    match tokio::time::timeout(timeout, shared.ledger.record(vec![record])).await {
                        Ok(Ok(())) => shared.metrics.records(Source::Inline, 1),
                        outcome => {
                            shared.metrics.record_failures(Source::Inline, 1);
                            let mut e = Event::new("record_failed");
                            e.route = Some(route);
                            e.token_hash = Some(token_hash(&id));
                            e.detail = Some(match outcome {
                                Ok(Err(err)) => err.to_string(),
                                _ => format!("ledger write took longer than {timeout:?}"),
                            });
                            shared.events.emit(&e);
                        }
                    }
                }))
            }
            Err(reason) => {
                // The login service issued a token warden cannot verify: a key missing from
                // the registry, or a retired key still in use. Users will be refused.
                shared.metrics.record_failures(Source::Inline, 1);
                let mut e = Event::new("issued_token_refused");
                e.route = Some(route.to_owned());
                e.reason = Some(reason.as_str());
                e.client_ip = client_ip.map(|i| i.to_string());
                shared.events.emit(&e);
                log::warn!(
                    "route {route}: the login response carries a token warden refuses ({reason})"
                );
                None
            }
        }
    }
}

/// Request headers for the rule engine.
struct HeaderLookup<'a>(&'a http::HeaderMap);

impl Lookup for HeaderLookup<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Claims of the verified token for the rule engine.
struct ClaimLookup<'a>(Option<&'a Verified>);

impl Lookup for ClaimLookup<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.and_then(|v| v.claim(name))
    }
}

impl WardenProxy {
    /// Everything warden decides before proxying: route, client, provenance, rules.
    async fn filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let settings = self.shared.settings.load_full();
        ctx.settings = Some(Arc::clone(&settings));
        if let Some(refusal) = crate::limits::check_header(session, &settings.limits) {
            self.shared.metrics.http_refusal(refusal);
            ctx.class = class_idx(settings.routes.default_class);
            ctx.outcome = Some(Outcome::BadRequest);
            let (status, body): (u16, &'static [u8]) = match refusal {
                HttpRefusal::AmbiguousFraming => (400, b"{\"error\":\"bad_request\"}\n"),
                _ => (431, b"{\"error\":\"request_header_too_large\"}\n"),
            };
            // Never read what follows an ambiguous request as another request.
            session.set_keepalive(None);
            return respond(session, status, body, &[("connection", "close")]).await;
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        let req = session.req_header();
        let client_ip = crate::client_ip::resolve(peer, &req.headers, &settings.client_ip);
        ctx.client_ip = Some(client_ip);
        let path = match path::normalize(req.uri.path(), settings.routes.case_insensitive) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("refusing ambiguous path {:?}: {e:?}", req.uri.path());
                ctx.class = class_idx(settings.routes.default_class);
                ctx.outcome = Some(Outcome::BadRequest);
                return respond(session, 400, b"{\"error\":\"bad_request\"}\n", &[]).await;
            }
        };
        let (route, class) = settings.routes.find(&path, req.method.as_str());
        ctx.class = class_idx(class);
        ctx.route = route.map(|(i, _)| i);
        let route = route.map(|(_, r)| r);

        // 1. Provenance, on protected routes.
        let provenance = if class == RouteClass::Protected {
            let decision = match token_src::find(&req.headers, &settings.token) {
                Found::None => Decision {
                    reason: Reason::Missing,
                    checked: None,
                },
                Found::Ambiguous => Decision {
                    reason: Reason::Malformed,
                    checked: None,
                },
                Found::One(token) => decide(&self.shared, token, &settings).await,
            };
            self.shared.metrics.provenance(decision.reason);
            Some(decision)
        } else {
            None
        };

        // 2. Behaviour rules, on every request (refused ones too: an address sending
        //    forged tokens is counted like any other).
        let verified = provenance
            .as_ref()
            .and_then(|d| d.checked.as_ref())
            .map(|c| Arc::clone(&c.verified));
        // The decision's time: the rules count the request at it, and a revocation the
        // decision makes is dated by it.
        let now_ms = unix_now_ms();
        let verdict = {
            let headers = HeaderLookup(&req.headers);
            let claims = ClaimLookup(verified.as_deref());
            self.shared.engine.evaluate(&Facts {
                now_ms,
                class,
                route: route.map(|r| r.name.as_str()),
                method: req.method.as_str(),
                path: &path,
                ip: client_ip,
                account: verified.as_deref().map(|v| &*v.account),
                token: verified.as_deref().map(|v| &v.id),
                headers: &headers,
                claims: &claims,
            })
        };
        self.observe_rules(&verdict, ctx, &path, verified.as_deref());

        // 3. The response: a provenance refusal first, then the rules' decision.
        if let Some(decision) = &provenance {
            let fail_mode = route.map_or(FailMode::Closed, |r| r.on_backend_failure);
            match action_for(decision.reason, fail_mode) {
                Action::Pass => {}
                Action::PassFailOpen => {
                    ctx.outcome = Some(Outcome::FailOpen);
                    self.emit_rejection(ctx, route, &path, decision, "pass");
                }
                Action::Unavailable => {
                    ctx.outcome = Some(Outcome::Unavailable);
                    self.emit_rejection(ctx, route, &path, decision, "reject");
                    return respond(
                        session,
                        503,
                        b"{\"error\":\"unavailable\"}\n",
                        &[("retry-after", "1")],
                    )
                    .await;
                }
                Action::Refuse => {
                    ctx.outcome = Some(Outcome::Rejected);
                    if decision.reason != Reason::Missing {
                        self.emit_rejection(ctx, route, &path, decision, "reject");
                    }
                    let status = route.map_or(401, |r| r.reject_status);
                    let extra: &[(&str, &str)] = if status == 401 {
                        &[("www-authenticate", "Bearer error=\"invalid_token\"")]
                    } else {
                        &[]
                    };
                    return respond(session, status, b"{\"error\":\"invalid_token\"}\n", extra)
                        .await;
                }
            }
        }
        ctx.tags = verdict.tags;
        if !ctx.tags.is_empty() {
            self.shared.metrics.decision(DecisionKind::Tag);
        }
        let refuse = |ctx: &mut Ctx| ctx.outcome = Some(Outcome::Rejected);
        match verdict.decision {
            RuleDecision::Pass => {
                if ctx.outcome.is_none() {
                    ctx.outcome = Some(Outcome::Passed);
                }
                Ok(false)
            }
            RuleDecision::RateLimit { retry_after_s } => {
                refuse(ctx);
                self.shared.metrics.decision(DecisionKind::RateLimit);
                let retry = retry_after_s.to_string();
                respond(
                    session,
                    429,
                    b"{\"error\":\"rate_limited\"}\n",
                    &[("retry-after", &retry)],
                )
                .await
            }
            RuleDecision::Block => {
                refuse(ctx);
                self.shared.metrics.decision(DecisionKind::Block);
                respond(session, 403, b"{\"error\":\"forbidden\"}\n", &[]).await
            }
            RuleDecision::Banned { .. } => {
                refuse(ctx);
                self.shared.metrics.decision(DecisionKind::Ban);
                respond(session, 403, b"{\"error\":\"forbidden\"}\n", &[]).await
            }
            RuleDecision::RevokeToken => {
                refuse(ctx);
                self.shared.metrics.decision(DecisionKind::RevokeToken);
                if let Some(v) = &verified {
                    self.revoke_in_background(
                        v,
                        verdict.decided_by.unwrap_or(""),
                        &path,
                        client_ip,
                        now_ms / 1000,
                    );
                }
                respond(
                    session,
                    401,
                    b"{\"error\":\"invalid_token\"}\n",
                    &[("www-authenticate", "Bearer error=\"invalid_token\"")],
                )
                .await
            }
        }
    }

    /// Metrics for every hit; an event when a rule crosses its threshold or places a ban.
    fn observe_rules(&self, v: &Verdict, ctx: &Ctx, path: &str, verified: Option<&Verified>) {
        for hit in &v.hits {
            self.shared.metrics.rule_hit(hit.rule, hit.mode.as_str());
            if !(hit.crossed || hit.ban_placed) {
                continue;
            }
            let mut e = Event::new(if hit.ban_placed {
                "ban_placed"
            } else {
                "rule_fired"
            });
            e.rule = Some(hit.rule.to_string());
            e.action = Some(match hit.mode {
                Mode::Enforce => hit.action.as_str(),
                Mode::Shadow => "shadow",
            });
            e.key = hit.key.clone();
            e.client_ip = ctx.client_ip.map(|i| i.to_string());
            if let Some(v) = verified {
                e.account = Some(v.account.to_string());
                e.token_hash = Some(token_hash(&v.id));
            }
            e.path = Some(path.to_owned());
            e.detail = Some(format!(
                "estimate {:.0} over threshold {}",
                hit.estimate, hit.threshold
            ));
            self.shared.events.emit(&e);
        }
    }

    /// Revokes the token in the ledger without holding up the response; `now` (unix
    /// seconds) is the decision's time, the revocation's.
    fn revoke_in_background(
        &self,
        v: &Verified,
        rule: &str,
        path: &str,
        client_ip: IpAddr,
        now: u64,
    ) {
        let shared = Arc::clone(&self.shared);
        let id = v.id;
        let mut e = Event::new("token_revoked");
        e.rule = Some(rule.to_owned());
        e.action = Some("revoke_token");
        e.client_ip = Some(client_ip.to_string());
        e.account = Some(v.account.to_string());
        e.token_hash = Some(token_hash(&id));
        e.path = Some(path.to_owned());
        tokio::spawn(async move {
            let timeout = shared
                .settings
                .load()
                .ledger
                .timeout
                .max(Duration::from_secs(2));
            match tokio::time::timeout(timeout, shared.ledger.revoke(Revocation::Token(id), now))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => e.detail = Some(format!("revocation failed: {err}")),
                Err(_) => e.detail = Some(format!("revocation took longer than {timeout:?}")),
            }
            shared.events.emit(&e);
        });
    }
}

#[async_trait]
impl ProxyHttp for WardenProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let started = Instant::now();
        let result = self.filter(session, ctx).await;
        self.shared
            .metrics
            .filter_seconds
            .observe(started.elapsed().as_secs_f64());
        if let (Ok(false), Some(s)) = (&result, &ctx.settings) {
            ctx.body_clock = Some(crate::limits::BodyClock::start(session, &s.limits));
        }
        result
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(clock) = ctx.body_clock {
            if clock.check(session).is_err() {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(408),
                    "request body not complete within limits.body_timeout",
                ));
            }
            if end_of_stream {
                ctx.body_clock = None;
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let body_timeout = ctx.body_clock.is_some()
            && (*e.etype() == ErrorType::HTTPStatus(408)
                || (*e.etype() == ErrorType::ReadTimedout
                    && *e.esource() == ErrorSource::Downstream));
        // pingora's default mapping, with 408 for a body that came too slowly.
        let code = match e.etype() {
            _ if body_timeout => {
                self.shared.metrics.http_refusal(HttpRefusal::BodyTimeout);
                ctx.outcome = Some(Outcome::BadRequest);
                408
            }
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            if let Err(err) = session.respond_error(code).await {
                log::debug!("cannot send error response {code}: {err}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = self
            .next_peer()
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no healthy upstream"))?
            .clone();
        if let Some(s) = &ctx.settings {
            let o = &mut peer.options;
            o.connection_timeout = Some(s.upstream.connect_timeout);
            o.read_timeout = Some(s.upstream.read_timeout);
            o.write_timeout = Some(s.upstream.write_timeout);
            o.idle_timeout = Some(s.upstream.idle_timeout);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_sent = Some(Instant::now());
        if let Some(ip) = ctx.client_ip {
            req.append_header("x-forwarded-for", crate::client_ip::header_value(ip))?;
        }
        if let Some(s) = &ctx.settings {
            // The tag header is warden's to set: a client's own copy is dropped.
            if let Some(name) = &s.tag_header {
                req.remove_header(name);
                if !ctx.tags.is_empty() {
                    let value = ctx.tags.join(",");
                    req.insert_header(name.clone(), value)?;
                }
            }
            if let Some(host) = &s.upstream.host_header {
                req.insert_header("host", host.as_str())?;
            }
            let capturing = ctx
                .route
                .and_then(|i| s.routes.list.get(i))
                .is_some_and(|r| matches!(r.capture, Some(Capture::JsonField(_))));
            if capturing {
                // The login body must arrive uncompressed for warden to read the token.
                req.remove_header("accept-encoding");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(sent) = ctx.upstream_sent.take() {
            self.shared
                .metrics
                .upstream_seconds
                .observe(sent.elapsed().as_secs_f64());
        }
        let Some(settings) = ctx.settings.clone() else {
            return Ok(());
        };
        let Some(route) = ctx.route.and_then(|i| settings.routes.list.get(i)) else {
            return Ok(());
        };
        if route.class != RouteClass::Issuance || !resp.status.is_success() {
            return Ok(());
        }
        match &route.capture {
            Some(Capture::Cookie(name)) => {
                let values = resp
                    .headers
                    .get_all("set-cookie")
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                if let Some(token) = token_src::set_cookie_value(values, name) {
                    let token = token.to_owned();
                    // Hold the login response until its record is durable.
                    if let Some(task) =
                        self.record_inline(&token, &route.name, ctx.client_ip, &settings)
                    {
                        let _ = task.await;
                    }
                }
            }
            Some(Capture::JsonField(_)) => ctx.capture_body = Some(Vec::new()),
            None => {}
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some(buf) = ctx.capture_body.as_mut() else {
            return Ok(None);
        };
        if let Some(b) = body {
            if buf.len() + b.len() > MAX_CAPTURE_BODY {
                log::warn!(
                    "login response over {MAX_CAPTURE_BODY} bytes: its token is not recorded"
                );
                ctx.capture_body = None;
                return Ok(None);
            }
            buf.extend_from_slice(b);
        }
        if end_of_stream {
            let buf = ctx.capture_body.take().unwrap_or_default();
            let Some(settings) = ctx.settings.clone() else {
                return Ok(None);
            };
            let Some(route) = ctx.route.and_then(|i| settings.routes.list.get(i)) else {
                return Ok(None);
            };
            if let Some(Capture::JsonField(path)) = &route.capture {
                let token = serde_json::from_slice::<serde_json::Value>(&buf)
                    .ok()
                    .and_then(|v| {
                        path.iter()
                            .try_fold(&v, |v, k| v.get(k))
                            .and_then(|t| t.as_str().map(str::to_owned))
                    });
                match token {
                    // The record is written in the background: this filter cannot wait.
                    // A request with the token that arrives first waits for it (see
                    // `ledger.issuance_wait`).
                    Some(t) => {
                        let _ = self.record_inline(&t, &route.name, ctx.client_ip, &settings);
                    }
                    None => log::warn!(
                        "route {}: login response has no string at {:?}",
                        route.name,
                        path.join(".")
                    ),
                }
            }
        }
        Ok(None)
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(outcome) = ctx.outcome {
            self.shared.metrics.request(ctx.class, outcome);
        }
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
