//! The configuration as users write it. Every struct refuses unknown fields; values that
//! need checking beyond their type keep their span for the diagnostics.
//! These types are only deserialized, then compiled into [`crate::model`].

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub listen: Option<S<Vec<S<String>>>>,
    pub threads: Option<S<i64>>,
    pub work_stealing: Option<bool>,
    pub upgrade_sock: Option<S<String>>,
    pub pid_file: Option<S<String>>,
    pub grace_period: Option<S<String>>,
    pub graceful_shutdown_timeout: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub snapshot: Option<S<bool>>,
    pub snapshot_path: Option<S<String>>,
    pub snapshot_interval: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub header_timeout: Option<S<String>>,
    pub body_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<String>>,
    pub max_headers: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<S<String>>,
    pub token_file: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub peers: Option<S<Vec<S<String>>>>,
    pub connect_timeout: Option<S<String>>,
    pub read_timeout: Option<S<String>>,
    pub write_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub host_header: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIp {
    pub trusted_proxies: Option<S<Vec<S<String>>>>,
    pub header: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub header: Option<S<String>>,
    pub cookie: Option<S<String>>,
    pub account_claim: Option<S<String>>,
    pub leeway: Option<S<String>>,
    pub issuer: Option<S<String>>,
    pub audience: Option<S<String>>,
    pub max_bytes: Option<S<i64>>,
    pub cache_capacity: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub kid: S<String>,
    pub alg: Option<S<String>>,
    pub pem_file: Option<S<String>>,
    pub pem: Option<S<String>>,
    pub secret_file: Option<S<String>>,
    pub status: Option<S<String>>,
    pub retired_at: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwks {
    pub files: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub backend: Option<S<String>>,
    pub path: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub issuance_wait: Option<S<String>>,
    pub issuance_window: Option<S<String>>,
    pub max_waiters: Option<S<i64>>,
    pub write_queue: Option<S<i64>>,
    pub sweep_interval: Option<S<String>>,
    pub expiry_grace: Option<S<String>>,
    pub pending_revocation_ttl: Option<S<String>>,
    pub max_pending_revocations: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: S<String>,
    pub class: S<String>,
    pub paths: S<Vec<S<String>>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub on_backend_failure: Option<S<String>>,
    pub reject_status: Option<S<i64>>,
    pub token_json_field: Option<S<String>>,
    pub token_cookie: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    pub default_class: Option<S<String>>,
    pub case_insensitive: Option<S<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub files: Option<S<Vec<S<String>>>>,
    pub tag_header: Option<S<String>>,
    pub max_state_bytes: Option<S<String>>,
    pub max_bans: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub field: S<String>,
    pub equals: Option<S<String>>,
    pub prefix: Option<S<String>>,
    pub present: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: S<String>,
    pub description: Option<S<String>>,
    pub classes: Option<S<Vec<S<String>>>>,
    pub methods: Option<S<Vec<S<String>>>>,
    pub paths: Option<S<Vec<S<String>>>>,
    pub when: Option<S<Vec<S<When>>>>,
    pub key: S<Vec<S<String>>>,
    pub ip_prefix_v4: Option<S<i64>>,
    pub ip_prefix_v6: Option<S<i64>>,
    pub measure: Option<S<String>>,
    pub distinct: Option<S<String>>,
    pub window: S<String>,
    pub threshold: S<i64>,
    pub action: S<String>,
    pub ban_for: Option<S<String>>,
    pub mode: Option<S<String>>,
    pub priority: Option<S<i64>>,
    pub scope: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub redis_url: Option<S<String>>,
    pub node: Option<S<String>>,
    pub namespace: Option<S<String>>,
    pub key_file: Option<S<String>>,
    pub sync_interval: Option<S<String>>,
    pub command_timeout: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    pub min_replicas: Option<S<i64>>,
    pub replica_timeout: Option<S<String>>,
    pub stream_max_len: Option<S<i64>>,
    pub max_keys: Option<S<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    pub file: Option<S<String>>,
    pub queue: Option<S<i64>>,
    pub webhook: Option<S<String>>,
    pub webhook_queue: Option<S<i64>>,
    pub webhook_timeout: Option<S<String>>,
    pub webhook_retries: Option<S<i64>>,
    pub repeat_interval: Option<S<String>>,
}
