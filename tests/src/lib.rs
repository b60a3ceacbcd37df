//! Harness for the end-to-end suite: starts real `warden` processes (the proxy, and the
//! demo upstream as a separate process) on free loopback ports, talks plain HTTP/1.1 to
//! them over TCP, and stops them when dropped. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use warden_core::fixtures::{self, SampleKey};

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// The `warden` binary of this build. `cargo build -p warden` runs once per test process
/// (a no-op when it is up to date), so that `cargo test -p warden-e2e` alone never
/// drives a stale binary.
pub fn warden_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            // target/<profile>/deps/<test> -> target/<profile>/warden
            let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
            let release = profile_dir.file_name().is_some_and(|n| n == "release");
            let bin = profile_dir.join("warden");
            // `cargo test --workspace` has just built it (through the `warden` package's
            // own integration test); rebuilding with `cargo build` would only flip the
            // features that dev-dependencies add. Build only if a source is newer.
            let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates");
            let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
            if built.is_some_and(|b| newest(&src).is_some_and(|s| s <= b)) {
                return bin;
            }
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "warden"]);
            if release {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("run cargo build -p warden");
            assert!(status.success(), "cargo build -p warden failed");
            profile_dir.join("warden")
        })
        .clone()
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// First header of a name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends raw bytes and reads the whole response (the request must ask to close).
pub fn raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Response> {
    raw_from(None, addr, request)
}

/// Like [`raw`], from a chosen loopback source address (127.0.0.0/8 gives thousands).
pub fn raw_from(
    src: Option<std::net::IpAddr>,
    addr: SocketAddr,
    request: &[u8],
) -> std::io::Result<Response> {
    let mut s = match src {
        None => TcpStream::connect_timeout(&addr, Duration::from_secs(5))?,
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.bind(&SocketAddr::new(ip, 0).into())?;
            sock.connect_timeout(&addr.into(), Duration::from_secs(5))?;
            sock.into()
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf).ok_or_else(|| {
        std::io::Error::other(format!(
            "unparseable response: {:?}",
            String::from_utf8_lossy(&buf)
        ))
    })
}

fn parse_response(buf: &[u8]) -> Option<Response> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..line_end])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// A request with `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    request_from(None, addr, method, path, headers, body)
}

/// A request with `Connection: close` from a chosen source address.
pub fn request_from(
    src: Option<std::net::IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    raw_from(src, addr, &bytes).unwrap_or_else(|e| panic!("{method} http://{addr}{path}: {e}"))
}

/// Fails the test with the program's output unless it exited with success.
pub fn assert_success(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` every 20 ms until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(t) = f() {
            return Some(t);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
    // SIGTERM first (graceful), SIGKILL if it lingers.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let done = wait_for(Duration::from_secs(5), || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The demo upstream, as its own process.
pub struct Upstream {
    child: Child,
    /// Its address.
    pub addr: SocketAddr,
}

impl Upstream {
    /// Starts `warden upstream` issuing tokens under `kid`.
    pub fn start(kid: &str) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        Self::start_on(kid, addr)
    }

    /// [`Upstream::start`] on a given address.
    pub fn start_on(kid: &str, addr: SocketAddr) -> Self {
        let child = Command::new(warden_bin())
            .args(["upstream", "--listen", &addr.to_string(), "--kid", kid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn warden upstream");
        let up = Self { child, addr };
        let ok = wait_for(Duration::from_secs(15), || {
            raw(
                addr,
                b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .ok()
        });
        assert!(ok.is_some(), "demo upstream did not start on {addr}");
        up
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Key ids of the test registry.
pub mod kid {
    /// RS256, active: the login service's key.
    pub const ACTIVE: &str = "k-active";
    /// ES256, active.
    pub const ES: &str = "k-es";
    /// EdDSA, active.
    pub const ED: &str = "k-ed";
    /// HS256, active.
    pub const HS: &str = "k-hs";
    /// RS256 (key B), retired an hour ago.
    pub const RETIRED: &str = "k-retired";
    /// RS256 (key B), revoked.
    pub const REVOKED: &str = "k-revoked";
}

/// The admin bearer token every test warden uses.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A warden process with its own directory, config, keys and ledger.
pub struct Warden {
    child: Option<Child>,
    /// Scratch directory (config, keys, ledger, event log).
    pub dir: tempfile::TempDir,
    /// Proxy address.
    pub proxy: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Retirement time of [`kid::RETIRED`].
    pub retired_at: u64,
    extra: String,
    token_extra: String,
    ledger_extra: String,
    upstream: SocketAddr,
    grace_period: String,
    shutdown_timeout: String,
    upgrades: usize,
    env: Vec<(String, String)>,
}

/// The old process of a graceful upgrade, draining: waited for (bounded) and killed if
/// it lingers when dropped.
pub struct Draining {
    child: Child,
    /// When it got SIGQUIT.
    pub since: Instant,
}

impl Draining {
    /// Waits up to `limit` for it to exit; its status.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_for(limit, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Warden {
    /// Starts warden in front of `upstream` with the standard test config plus `extra` TOML.
    pub fn start(upstream: &Upstream, extra: &str) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            upstream.addr,
            extra,
            "",
        )
    }

    /// Starts warden in front of any upstream address, with `token_extra` lines added to
    /// the `[token]` section and `extra` TOML at the end.
    pub fn start_to(upstream: SocketAddr, token_extra: &str, extra: &str) -> Self {
        Self::start_in(
            tempfile::tempdir().expect("tempdir"),
            upstream,
            extra,
            token_extra,
        )
    }

    /// Starts warden for lifecycle tests: `rules` (TOML `[[rules]]`, may be empty) in a
    /// rule file, `extra` TOML, and pingora's drain settings
    /// (`server.grace_period`, `server.graceful_shutdown_timeout`).
    pub fn start_lifecycle(
        upstream: SocketAddr,
        rules: &str,
        extra: &str,
        grace_period: &str,
        shutdown_timeout: &str,
    ) -> Self {
        Self::start_lifecycle_env(upstream, rules, extra, grace_period, shutdown_timeout, &[])
    }

    /// [`Warden::start_lifecycle`] with environment variables for every process it starts.
    pub fn start_lifecycle_env(
        upstream: SocketAddr,
        rules: &str,
        extra: &str,
        grace_period: &str,
        shutdown_timeout: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let extra = if rules.is_empty() {
            extra.to_owned()
        } else {
            std::fs::write(dir.path().join("rules.toml"), rules).expect("write rules");
            format!("[rules]\nfiles = [\"rules.toml\"]\n{extra}")
        };
        Self::start_full(
            dir,
            upstream,
            &extra,
            "",
            grace_period,
            shutdown_timeout,
            env,
            "",
        )
    }

    fn start_in(
        dir: tempfile::TempDir,
        upstream: SocketAddr,
        extra: &str,
        token_extra: &str,
    ) -> Self {
        Self::start_full(dir, upstream, extra, token_extra, "0s", "2s", &[], "")
    }

    #[allow(clippy::too_many_arguments)]
    fn start_full(
        dir: tempfile::TempDir,
        upstream: SocketAddr,
        extra: &str,
        token_extra: &str,
        grace_period: &str,
        shutdown_timeout: &str,
        env: &[(&str, &str)],
        ledger_extra: &str,
    ) -> Self {
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).expect("mkdir keys");
        let write =
            |name: &str, bytes: &[u8]| std::fs::write(keys.join(name), bytes).expect("write key");
        write("a.pub", fixtures::RS256_A_PUB.as_bytes());
        write("b.pub", fixtures::RS256_B_PUB.as_bytes());
        write("es.pub", fixtures::ES256_PUB.as_bytes());
        write("ed.pub", fixtures::ED25519_PUB.as_bytes());
        write("hs.secret", &fixtures::hs256_secret());
        std::fs::write(dir.path().join("admin.token"), ADMIN_TOKEN).expect("write admin token");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let retired_at = now() - 3600;
        let w = Self {
            child: None,
            dir,
            proxy,
            admin,
            retired_at,
            extra: extra.to_owned(),
            token_extra: token_extra.to_owned(),
            ledger_extra: ledger_extra.to_owned(),
            upstream,
            grace_period: grace_period.to_owned(),
            shutdown_timeout: shutdown_timeout.to_owned(),
            upgrades: 0,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let mut w = w;
        w.write_config(upstream, "");
        w.spawn();
        w
    }

    /// Starts warden with a rule file holding `rules` (TOML `[[rules]]`), plus `extra`.
    pub fn start_with_rules(upstream: &Upstream, rules: &str, extra: &str) -> Self {
        Self::start_with_rules_to(upstream.addr, rules, extra)
    }

    /// [`Warden::start_with_rules`] in front of any upstream address.
    pub fn start_with_rules_to(upstream: SocketAddr, rules: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.toml"), rules).expect("write rules");
        Self::start_in(
            dir,
            upstream,
            &format!("[rules]\nfiles = [\"rules.toml\"]\n{extra}"),
            "",
        )
    }

    /// [`Warden::start_with_rules_to`] with `ledger_extra` lines added to the `[ledger]`
    /// section.
    pub fn start_with_rules_and_ledger_to(
        upstream: SocketAddr,
        rules: &str,
        ledger_extra: &str,
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("rules.toml"), rules).expect("write rules");
        Self::start_full(
            dir,
            upstream,
            &format!("[rules]\nfiles = [\"rules.toml\"]\n{extra}"),
            "",
            "0s",
            "2s",
            &[],
            ledger_extra,
        )
    }

    /// The rule file of [`Warden::start_with_rules`].
    pub fn rules_path(&self) -> PathBuf {
        self.dir.path().join("rules.toml")
    }

    /// GET through the proxy with a bearer token, from a source address.
    pub fn get_from(&self, src: &str, path: &str, token: &str) -> Response {
        let ip = src.parse().expect("source ip");
        request_from(
            Some(ip),
            self.proxy,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
    }

    /// The config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("warden.toml")
    }

    /// Rewrites the config with `keys_override` replacing the standard `[[keys]]` block
    /// when non-empty.
    pub fn write_config(&self, upstream: SocketAddr, keys_override: &str) {
        let retired = humantime_rfc3339(self.retired_at);
        let d = self.dir.path().display();
        let keys = if keys_override.is_empty() {
            format!(
                r#"
[[keys]]
kid = "{active}"
alg = "RS256"
pem_file = "keys/a.pub"

[[keys]]
kid = "{es}"
alg = "ES256"
pem_file = "keys/es.pub"

[[keys]]
kid = "{ed}"
alg = "EdDSA"
pem_file = "keys/ed.pub"

[[keys]]
kid = "{hs}"
alg = "HS256"
secret_file = "keys/hs.secret"

[[keys]]
kid = "{retired}"
alg = "RS256"
pem_file = "keys/b.pub"
status = "retired"
retired_at = "{retired_at}"

[[keys]]
kid = "{revoked}"
alg = "RS256"
pem_file = "keys/b.pub"
status = "revoked"
"#,
                active = kid::ACTIVE,
                es = kid::ES,
                ed = kid::ED,
                hs = kid::HS,
                retired = kid::RETIRED,
                revoked = kid::REVOKED,
                retired_at = retired,
            )
        } else {
            keys_override.to_owned()
        };
        let text = format!(
            r#"[server]
listen = ["{proxy}"]
threads = 2
upgrade_sock = "{d}/upgrade.sock"
pid_file = "{d}/warden.pid"
grace_period = "{grace_period}"
graceful_shutdown_timeout = "{shutdown_timeout}"

[admin]
listen = "{admin}"
token_file = "admin.token"

[upstream]
peers = ["{upstream}"]

[token]
cookie = "session"
leeway = "5s"
{token_extra}

[ledger]
path = "ledger.redb"
issuance_wait = "400ms"
{ledger_extra}

[[routes]]
name = "login"
class = "issuance"
paths = ["/login"]
methods = ["POST"]
token_json_field = "access_token"

[[routes]]
name = "login-cookie"
class = "issuance"
paths = ["/login-cookie"]
token_cookie = "session"

[[routes]]
name = "account"
class = "protected"
paths = ["/account/*"]
{keys}
{extra}
"#,
            proxy = self.proxy,
            admin = self.admin,
            extra = self.extra,
            token_extra = self.token_extra,
            grace_period = self.grace_period,
            shutdown_timeout = self.shutdown_timeout,
            ledger_extra = self.ledger_extra,
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("warden is running")
    }

    /// Sends a signal (`TERM`, `QUIT`, ...) to the running process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Takes the running process out of the harness's hands (a test that stops it
    /// itself); it is killed if still running when the returned value drops.
    pub fn detach(&mut self) -> Draining {
        Draining {
            child: self.child.take().expect("warden is running"),
            since: Instant::now(),
        }
    }

    /// Stops warden gracefully (SIGTERM, waiting for it to exit) and starts it again on
    /// the same directory.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// A graceful upgrade: starts a new process with `--upgrade` (its log in
    /// `warden-upgrade-<n>.log`), sends SIGQUIT to the running one once the new one
    /// listens on the upgrade socket, and waits until the new one serves. Returns the
    /// old process, draining.
    pub fn upgrade(&mut self) -> Draining {
        let old = self.child.take().expect("warden is running");
        self.upgrades += 1;
        let sock = self.dir.path().join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let log = format!("warden-upgrade-{}.log", self.upgrades);
        self.child = Some(self.spawn_process(true, &log));
        let listening = wait_for(Duration::from_secs(10), || sock.exists().then_some(()));
        assert!(
            listening.is_some(),
            "the new process never listened on {}",
            sock.display()
        );
        let ok = Command::new("kill")
            .arg("-QUIT")
            .arg(old.id().to_string())
            .status()
            .expect("kill -QUIT");
        assert!(ok.success());
        let since = Instant::now();
        let path = self.dir.path().join(&log);
        let serving = wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&path)
                .ok()?
                .contains("warden listening on")
                .then_some(())
        });
        assert!(
            serving.is_some(),
            "the new process did not start; its log:\n{}",
            std::fs::read_to_string(&path).unwrap_or_default()
        );
        Draining { child: old, since }
    }

    fn spawn(&mut self) {
        self.child = Some(self.spawn_process(false, "warden.log"));
        let admin = self.admin;
        let ready = wait_for(Duration::from_secs(20), || {
            let r = raw(
                admin,
                b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .ok()?;
            (r.status == 200).then_some(())
        });
        assert!(
            ready.is_some(),
            "warden did not become ready; log:\n{}",
            self.log()
        );
        // /ready is the admin service's; pingora starts the proxy's listener a moment
        // later (services start one after the other): wait for it too.
        let proxy = self.proxy;
        let listening = wait_for(Duration::from_secs(10), || {
            TcpStream::connect_timeout(&proxy, Duration::from_secs(1)).ok()
        });
        assert!(
            listening.is_some(),
            "the proxy does not listen on {proxy}; log:\n{}",
            self.log()
        );
    }

    fn spawn_process(&self, upgrade: bool, log: &str) -> Child {
        let events = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("events.jsonl"))
            .expect("events file");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(log))
            .expect("log file");
        let mut cmd = Command::new(warden_bin());
        cmd.args(["run", "--config"]).arg(self.config_path());
        if upgrade {
            cmd.arg("--upgrade");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", "info")
            .stdout(events)
            .stderr(log)
            .spawn()
            .expect("spawn warden")
    }

    /// warden's stderr so far (every process started on this directory, in order).
    pub fn log(&self) -> String {
        let mut all =
            std::fs::read_to_string(self.dir.path().join("warden.log")).unwrap_or_default();
        for n in 1..=self.upgrades {
            let name = format!("warden-upgrade-{n}.log");
            if let Ok(l) = std::fs::read_to_string(self.dir.path().join(&name)) {
                all.push_str(&format!("--- {name}\n{l}"));
            }
        }
        all
    }

    /// Events written so far.
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `kill -9`, then start again on the same directory.
    pub fn kill9_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// Stops warden (SIGTERM, then SIGKILL if it lingers), keeping its directory.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }

    /// The upstream address in the configuration.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Sends SIGHUP.
    pub fn sighup(&self) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg("-HUP")
                .arg(c.id().to_string())
                .status()
                .expect("kill -HUP");
            assert!(ok.success());
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET through the proxy with a bearer token.
    pub fn get(&self, path: &str, token: &str) -> Response {
        request(
            self.proxy,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {token}"))],
            b"",
        )
    }

    /// An admin call with the admin token.
    pub fn admin(&self, method: &str, path: &str, body: &str) -> Response {
        request(
            self.admin,
            method,
            path,
            &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            body.as_bytes(),
        )
    }

    /// Records a token through the admin API; panics unless acknowledged.
    pub fn record(&self, token: &str) {
        let r = self.admin(
            "POST",
            "/ledger/records",
            &serde_json::json!({"token": token}).to_string(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["recorded"], 1, "{}", r.text());
    }

    /// The value of one metric sample, e.g. `warden_provenance_total{reason="forged"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let r = request(self.admin, "GET", "/metrics", &[], b"");
        r.text()
            .lines()
            .find_map(|l| {
                l.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Warden {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop(&mut c);
        }
    }
}

fn humantime_rfc3339(unix: u64) -> String {
    // Civil-from-days (Howard Hinnant), to avoid a date crate in the harness.
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Mints a token with the usual claims (`sub`, a unique `jti`, `iat` = `iat`, `exp` =
/// `iat` + 600).
pub fn token(key: SampleKey, kid: &str, account: &str, iat: u64) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let claims = serde_json::json!({
        "sub": account,
        "jti": format!("jti-{}-{n}-{}", std::process::id(), now()),
        "iat": iat,
        "exp": iat + 600,
    });
    fixtures::mint(key, kid, &claims).expect("mint")
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if let Ok(m) = meta.modified() {
                newest = Some(newest.map_or(m, |n: SystemTime| n.max(m)));
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::humantime_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::humantime_rfc3339(1_748_736_000),
            "2025-06-01T00:00:00Z"
        );
        assert_eq!(
            super::humantime_rfc3339(951_782_400),
            "2000-02-29T00:00:00Z"
        );
    }
}

/// One request as an upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request line and header fields, as sent by warden.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Received {
    /// Values of a header field (name compared case-insensitively).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

/// An upstream in the test process that records every request it receives, parsing
/// HTTP/1.1 framing strictly (one `Content-Length`, or `Transfer-Encoding: chunked`), and
/// answers each with `200 ok`. Bytes it cannot parse are recorded as a request whose
/// head starts with `UNPARSEABLE`. Threads end when their connection closes; the
/// acceptor when the recorder is dropped.
pub struct Recorder {
    /// Its address.
    pub addr: SocketAddr,
    got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Recorder {
    /// Starts one on a free loopback port.
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let addr = l.local_addr().expect("addr");
        l.set_nonblocking(true).expect("nonblocking");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (std::sync::Arc::clone(&got), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let g = std::sync::Arc::clone(&g);
                        std::thread::spawn(move || serve_recorded(c, &g));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, got, stop }
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_recorded(mut c: TcpStream, got: &std::sync::Mutex<Vec<Received>>) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let record = |r: Received| {
        if let Ok(mut g) = got.lock() {
            g.push(r);
        }
    };
    loop {
        match take_request(&mut buf) {
            Framed::Done(r) => {
                record(r);
                if c.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    return;
                }
                continue;
            }
            Framed::Bad(why) => {
                record(Received {
                    head: format!("UNPARSEABLE {why}: {}", String::from_utf8_lossy(&buf)),
                    body: Vec::new(),
                });
                return;
            }
            Framed::More => {}
        }
        match c.read(&mut chunk) {
            Ok(0) | Err(_) => {
                if !buf.is_empty() {
                    record(Received {
                        head: format!("INCOMPLETE: {}", String::from_utf8_lossy(&buf)),
                        body: Vec::new(),
                    });
                }
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

enum Framed {
    Done(Received),
    More,
    Bad(&'static str),
}

fn take_request(buf: &mut Vec<u8>) -> Framed {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Framed::More;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let r = Received {
        head,
        body: Vec::new(),
    };
    let cl = r.header_values("content-length");
    let te = r.header_values("transfer-encoding");
    let rest = &buf[end + 4..];
    let (body, used) = match (cl.as_slice(), te.as_slice()) {
        ([], []) => (Vec::new(), 0),
        ([n], []) => {
            let Ok(n) = n.parse::<usize>() else {
                return Framed::Bad("content-length");
            };
            if rest.len() < n {
                return Framed::More;
            }
            (rest[..n].to_vec(), n)
        }
        ([], [t]) if t.eq_ignore_ascii_case("chunked") => {
            let mut out = Vec::new();
            let mut at = 0;
            loop {
                let Some(le) = rest[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Framed::More;
                };
                let size = std::str::from_utf8(&rest[at..at + le])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
                let Some(size) = size else {
                    return Framed::Bad("chunk size");
                };
                at += le + 2;
                if size == 0 {
                    // No trailers from warden: the final CRLF.
                    if rest.len() < at + 2 {
                        return Framed::More;
                    }
                    at += 2;
                    break;
                }
                if rest.len() < at + size + 2 {
                    return Framed::More;
                }
                out.extend_from_slice(&rest[at..at + size]);
                at += size + 2;
            }
            (out, at)
        }
        _ => return Framed::Bad("ambiguous framing reached the upstream"),
    };
    let total = end + 4 + used;
    buf.drain(..total);
    Framed::Done(Received { body, ..r })
}

/// A kept-alive client connection for raw HTTP/1.1 exchanges.
pub struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr` (reads time out after `read_timeout`).
    pub fn open(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(read_timeout))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self { s, buf: Vec::new() })
    }

    /// Sends bytes.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    /// Reads one response (framed by `Content-Length`; without one, until close).
    /// `Ok(None)`: the connection closed (or was reset) before a response.
    pub fn response(&mut self) -> std::io::Result<Option<Response>> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len = head.lines().find_map(|l| {
                    l.strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                if let Some(len) = len {
                    if self.buf.len() >= end + 4 + len {
                        let rest = self.buf.split_off(end + 4 + len);
                        let r = parse_response(&self.buf);
                        self.buf = rest;
                        return Ok(r);
                    }
                }
            }
            match self.s.read(&mut chunk) {
                Ok(0) => {
                    let r = parse_response(&self.buf);
                    self.buf.clear();
                    return Ok(r);
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Debian's Redis server, which the fleet tests need.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
/// Its client, to check what the server holds.
pub const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// A `redis-server` of its own on a free loopback port, with its data in a temporary
/// directory and the append-only file fsynced on every write (`appendfsync always`), so
/// that a write Redis acknowledged survives `kill -9`. Stopped when dropped.
pub struct Redis {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Its data directory.
    pub dir: tempfile::TempDir,
}

impl Redis {
    /// Starts it. A missing `redis-server` fails the test with what to install: the
    /// fleet tests are never skipped.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// [`Redis::start`] on a given port.
    pub fn start_on(port: u16) -> Self {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: the fleet tests need Debian's redis-server \
             (`apt-get install redis-server`, or run scripts/deps)"
        );
        assert!(
            Path::new(REDIS_CLI).exists(),
            "{REDIS_CLI} is missing: the fleet tests need it (Debian's redis-tools, which \
             redis-server installs; run scripts/deps)"
        );
        let mut r = Self {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        r.spawn();
        r
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(REDIS_SERVER)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {REDIS_SERVER}: {e}"));
        self.child = Some(child);
        let up = wait_for(Duration::from_secs(10), || {
            (self.cli(&["PING"]).trim() == "PONG").then_some(())
        });
        assert!(
            up.is_some(),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    /// `redis-cli` against it, for at most 5 seconds (a paused server never answers);
    /// its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("timeout")
            .arg("5")
            .arg(REDIS_CLI)
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `kill -9` (a crash: only what was fsynced survives).
    pub fn kill(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `SIGSTOP`: Redis hangs, connections stay open and nothing answers (a stalled
    /// server, the worst kind of slow). [`Redis::resume`] lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// `SIGCONT` after [`Redis::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status()
                .expect("kill");
            assert!(ok.success(), "kill {sig} redis-server");
        }
    }

    /// Starts it again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
