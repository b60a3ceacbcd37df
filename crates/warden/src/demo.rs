//! `warden demo`: warden in front of the demo account service, with the repository's
//! sample keys, an embedded ledger in a scratch directory, and tokens to try with curl.

use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::json;
use warden_core::fixtures::{mint, SampleKey, RS256_A_PUB, RS256_B_PUB};
use warden_core::ledger::Ledger as _;

use crate::run::{load_config, open_ledger, serve, verifier};
use crate::upstream::{random_jti, DemoUpstream};

/// The default rule pack, as shipped in `deploy/rules/`.
const DEFAULT_RULES: &str = include_str!("../../../deploy/rules/default.toml");

fn config_text(listen: &str, admin: &str, upstream: &str, dir: &std::path::Path) -> String {
    format!(
        r#"# Written by `warden demo`. Sample keys: never use them in production.
[server]
listen = ["{listen}"]
threads = 2
upgrade_sock = "{dir}/upgrade.sock"
pid_file = "{dir}/warden.pid"
grace_period = "0s"
graceful_shutdown_timeout = "1s"

[admin]
listen = "{admin}"
token_file = "admin.token"

[upstream]
peers = ["{upstream}"]

[token]
cookie = "session"

# The login service's current key.
[[keys]]
kid = "login-2026"
alg = "RS256"
pem_file = "keys/login-2026.pub"

# The key of 2024, retired: tokens it signs after the retirement date are refused.
[[keys]]
kid = "login-2024"
alg = "RS256"
pem_file = "keys/login-2024.pub"
status = "retired"
retired_at = "2025-01-01T00:00:00Z"

[ledger]
path = "ledger.redb"

# The default behaviour rule pack (a copy of deploy/rules/default.toml).
[rules]
files = ["rules/default.toml"]

# Logins pass through warden, which records the token in the response.
[[routes]]
name = "login"
class = "issuance"
paths = ["/login"]
methods = ["POST"]
token_json_field = "access_token"

[[routes]]
name = "account"
class = "protected"
paths = ["/account/*"]
"#,
        dir = dir.display()
    )
}

pub fn main(listen: &str, admin: &str, upstream: &str, dir: Option<PathBuf>) -> ExitCode {
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("warden-demo-{}", std::process::id()))
    });
    let setup = || -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir.join("keys"))?;
        std::fs::create_dir_all(dir.join("rules"))?;
        std::fs::write(dir.join("rules/default.toml"), DEFAULT_RULES)?;
        std::fs::write(dir.join("keys/login-2026.pub"), RS256_A_PUB)?;
        std::fs::write(dir.join("keys/login-2024.pub"), RS256_B_PUB)?;
        std::fs::write(dir.join("admin.token"), format!("{}\n", random_jti()))?;
        let path = dir.join("warden.toml");
        std::fs::write(&path, config_text(listen, admin, upstream, &dir))?;
        Ok(path)
    };
    let path = match setup() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("warden demo: cannot write {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    let Some(config) = load_config(&path) else {
        return ExitCode::from(2);
    };
    let now = warden_proxy::unix_now();
    let claims =
        |account: &str| json!({"sub": account, "jti": random_jti(), "iat": now, "exp": now + 3600});
    let tokens = (|| {
        Ok::<_, String>((
            mint(SampleKey::RsA, "login-2026", &claims("alice")).map_err(|e| e.to_string())?,
            mint(SampleKey::RsA, "login-2026", &claims("bob")).map_err(|e| e.to_string())?,
            mint(SampleKey::RsB, "login-2024", &claims("carol")).map_err(|e| e.to_string())?,
        ))
    })();
    let (legit, forged, departed) = match tokens {
        Ok(t) => t,
        Err(e) => {
            eprintln!("warden demo: cannot sign sample tokens: {e}");
            return ExitCode::from(2);
        }
    };
    // Record alice's token as the issuance service would, then close the store again
    // before the server opens it.
    let recorded = (|| -> Result<(), String> {
        let v = verifier(&config)?;
        let record = v
            .record_for_issued(&legit, now)
            .map_err(|r| r.to_string())?;
        let ledger = open_ledger(&config, None)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(ledger.record(vec![record]))
            .map_err(|e| e.to_string())
    })();
    if let Err(e) = recorded {
        eprintln!("warden demo: cannot record the sample token: {e}");
        return ExitCode::from(2);
    }
    let admin_token = std::fs::read_to_string(dir.join("admin.token")).unwrap_or_default();
    println!(
        r#"
warden demo: proxy on http://{listen}, demo account service on http://{upstream}, admin on http://{admin}
files in {dir}

A token the login service issued (alice), which passes:
  curl -i http://{listen}/account/addresses -H 'Authorization: Bearer {legit}'

A forged token: signed with the real current key, never issued (bob) — refused, 401:
  curl -i http://{listen}/account/addresses -H 'Authorization: Bearer {forged}'

A token from the departed engineer's retired key, minted today (carol) — refused, 401:
  curl -i http://{listen}/account/addresses -H 'Authorization: Bearer {departed}'

Log in through warden; the token in the response is recorded and works at once:
  T=$(curl -s -XPOST http://{listen}/login -d '{{"account":"dave"}}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
  curl -i http://{listen}/account/orders -H "Authorization: Bearer $T"

A scraper with genuinely issued tokens for 25 accounts, from one address: the default
pack's accounts-per-ip rule bans the address once it has read more than 20 accounts
(200 until then, 403 after; the tokens tried above count too):
  for i in $(seq 1 25); do T=$(curl -s -XPOST http://{listen}/login -d "{{\"account\":\"user$i\"}}" | sed 's/.*"access_token":"\([^"]*\)".*/\1/'); curl -s -o /dev/null -w '%{{http_code}} ' http://{listen}/account/addresses -H "Authorization: Bearer $T"; done; echo
  curl -s http://{admin}/decisions -H 'Authorization: Bearer {admin_token}'
(Every curl here comes from 127.0.0.1: lift the ban with
  curl -s -XDELETE http://{admin}/decisions/ID -H 'Authorization: Bearer {admin_token}'
before trying the rest.)

Revoke every token of alice, then watch her token fail:
  curl -s -XPOST http://{admin}/ledger/revoke -H 'Authorization: Bearer {admin_token}' -d '{{"account":"alice"}}'

Metrics: curl -s http://{admin}/metrics | grep warden_provenance_total
Events (JSON lines) follow on standard output. Ctrl-C stops.
"#,
        dir = dir.display(),
        admin_token = admin_token.trim(),
    );
    let extra: crate::run::ExtraServices = vec![Box::new(
        DemoUpstream::new("login-2026", 900).service(upstream),
    )];
    serve(config, false, extra)
}
