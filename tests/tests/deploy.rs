//! The deployment material under `deploy/` (docker, compose, kubernetes, systemd), checked
//! as far as a machine without a container runtime or a cluster allows:
//!
//! - `warden check` passes on every configuration file, laid out as the container, the pod
//!   or the host sees it;
//! - the copies the Kubernetes kustomization needs (it cannot reach outside its directory)
//!   are identical to the originals, and the pod's projected volume lists every file the
//!   configuration names, in the single-node StatefulSet and in the fleet overlay's
//!   Deployment;
//! - the compose file mounts files that exist, where the configurations expect them, and
//!   its Prometheus configuration passes `promtool check config`;
//! - the image's health check command succeeds against a real warden's admin API and fails
//!   when nothing listens;
//! - the systemd unit passes `systemd-analyze verify` without a warning, and the sysusers
//!   snippet creates the user.
//!
//! Schema validation of the Kubernetes manifests and of the compose file needs tools that
//! are not Debian packages (or not the compose version used here); docs/operators.md,
//! "Checking the deployment material", gives those commands. promtool and systemd-analyze
//! come from `scripts/deps`; without them these tests fail rather than skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use warden_e2e::{assert_success, kid, warden_bin, Upstream, Warden};

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn run(program: &str, args: &[&str], package: &str) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} ({e}): run scripts/deps, which installs it (Debian package `{package}`)")
    })
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), target.display()));
}

/// `warden check FILE`: must pass without a warning.
fn warden_check(file: &Path) {
    let out = Command::new(warden_bin())
        .arg("check")
        .arg(file)
        .output()
        .expect("run warden check");
    assert_success(&format!("warden check {}", file.display()), &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ok (0 warnings)"),
        "warden check {} warned:\n{stdout}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Host paths mounted by `docker-compose.yml` (`- HOST:CONTAINER[:ro]` lines whose host
/// part is relative), as (host, container) pairs.
fn compose_mounts(compose: &str) -> Vec<(String, String)> {
    compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|v| v.starts_with("./") || v.starts_with("../"))
        .filter_map(|v| {
            let mut parts = v.split(':');
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

// === configurations ===

#[test]
fn every_configuration_passes_warden_check_where_it_is_mounted() {
    // The image: deploy/warden.toml with deploy/rules and deploy/keys beside it, as the
    // Dockerfile copies them to /etc/warden, and as the systemd layout installs them.
    let dockerfile = read(&deploy("docker/Dockerfile"));
    for copy in [
        "COPY deploy/warden.toml /etc/warden/warden.toml",
        "COPY deploy/rules/ /etc/warden/rules/",
        "COPY deploy/keys/*.pub /etc/warden/keys/",
    ] {
        assert!(dockerfile.contains(copy), "the Dockerfile lost `{copy}`");
    }
    warden_check(&deploy("warden.toml"));

    // Compose: its warden.toml at /etc/warden with deploy/rules and deploy/keys mounted
    // beside it. The mounts are asserted here, then rebuilt in a scratch directory.
    let compose = read(&deploy("compose/docker-compose.yml"));
    let mounts = compose_mounts(&compose);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut laid_out = 0;
    for (host, container) in &mounts {
        let Some(rel) = container.strip_prefix("/etc/warden/") else {
            continue;
        };
        let source = deploy("compose").join(host);
        let target = dir.path().join(rel);
        if rel == "warden.toml" {
            std::fs::copy(&source, &target).expect("copy the compose warden.toml");
        } else {
            symlink(
                &source.canonicalize().expect("compose mount source"),
                &target,
            );
        }
        laid_out += 1;
    }
    assert_eq!(
        laid_out, 3,
        "compose should mount warden.toml, rules and keys under /etc/warden: {mounts:?}"
    );
    warden_check(&dir.path().join("warden.toml"));

    // Kubernetes: the kustomization directory holds the same layout as the pod's
    // /etc/warden (warden.toml, rules/, keys/).
    warden_check(&deploy("kubernetes/warden.toml"));
    for entry in std::fs::read_dir(deploy("kubernetes/rules")).expect("kubernetes/rules") {
        warden_check(&entry.expect("dir entry").path());
    }
}

// === kubernetes ===

#[test]
fn kubernetes_copies_are_identical_to_the_originals() {
    // kustomize refuses files outside its directory, so the rule pack and the sample keys
    // are copies; a change to one side only must not go unnoticed.
    let mut compared = 0;
    for sub in ["rules", "keys"] {
        for entry in std::fs::read_dir(deploy(&format!("kubernetes/{sub}"))).expect("read dir") {
            let copy = entry.expect("dir entry").path();
            let name = copy
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let original = deploy(&format!("{sub}/{name}"));
            assert_eq!(
                read(&copy),
                read(&original),
                "{} differs from {}: copy the original again",
                copy.display(),
                original.display()
            );
            compared += 1;
        }
    }
    assert!(
        compared >= 3,
        "expected the rule pack and two keys, compared {compared}"
    );
}

/// Asserts that the projected volume of `manifest` (the `path:` of each item, placed at
/// /etc/warden) holds every relative file `config` names (rule files, key files, the
/// admin token, the fleet key) and the configuration itself; returns the items.
fn pod_mounts_every_named_file(manifest: &str, config: &str) -> Vec<String> {
    let pod = read(&deploy(manifest));
    let items: Vec<String> = pod
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path: "))
        .map(str::to_owned)
        .collect();
    let named: Vec<String> = read(&deploy(config))
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split('"').skip(1).step_by(2).map(str::to_owned))
        .filter(|v| {
            v.starts_with("rules/")
                || v.starts_with("keys/")
                || v == "admin.token"
                || v == "fleet.key"
        })
        .collect();
    assert!(
        named.len() >= 4,
        "expected a rule file, two keys and the admin token in {config}: {named:?}"
    );
    for file in named.iter().map(String::as_str).chain(["warden.toml"]) {
        assert!(
            items.iter().any(|i| i == file),
            "{config} needs {file}, but the projected volume in {manifest} has no \
             item with `path: {file}` (items: {items:?})"
        );
    }
    items
}

#[test]
fn kubernetes_pod_gets_every_file_the_configuration_names() {
    let kustomization = read(&deploy("kubernetes/kustomization.yaml"));
    let items =
        pod_mounts_every_named_file("kubernetes/statefulset.yaml", "kubernetes/warden.toml");
    // Every rule or key file in the directory is generated into a ConfigMap and mounted.
    for sub in ["rules", "keys"] {
        for entry in std::fs::read_dir(deploy(&format!("kubernetes/{sub}"))).expect("read dir") {
            let name = entry
                .expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            let rel = format!("{sub}/{name}");
            assert!(
                kustomization.contains(&format!("- {rel}")),
                "kustomization.yaml does not generate {rel}"
            );
            assert!(
                items.contains(&rel),
                "statefulset.yaml does not mount {rel}"
            );
        }
    }
    // The admin port is for probes and scraping, never in the Service.
    let service = read(&deploy("kubernetes/service.yaml"));
    assert!(service.contains("targetPort: http"), "{service}");
    let exposes_admin = service
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .any(|l| l.contains("9901") || l.contains("admin"));
    assert!(
        !exposes_admin,
        "the Service exposes the admin port:\n{service}"
    );
}

#[test]
fn kubernetes_fleet_overlay_mounts_what_its_configuration_names_and_checks() {
    // The fleet overlay replaces the base's StatefulSet by a Deployment and its
    // warden.toml by one with a [fleet] section; the rules and keys stay the base's.
    let items = pod_mounts_every_named_file(
        "kubernetes-fleet/deployment.yaml",
        "kubernetes-fleet/warden.toml",
    );
    assert!(items.iter().any(|i| i == "fleet.key"), "{items:?}");
    let config = read(&deploy("kubernetes-fleet/warden.toml"));
    assert!(config.contains("\n[fleet]\n"), "{config}");
    assert!(
        !config.contains("\n[ledger]\n"),
        "the fleet's ledger is Redis, not a file"
    );
    let deployment = read(&deploy("kubernetes-fleet/deployment.yaml"));
    assert!(deployment.contains("kind: Deployment"));
    assert!(
        !deployment.contains("volumeClaimTemplates") && !deployment.contains("ledger.redb"),
        "a Deployment's pods must not share or claim a ledger volume"
    );
    let kustomization = read(&deploy("kubernetes-fleet/kustomization.yaml"));
    for needed in [
        "  - ../kubernetes\n",
        "  - deployment.yaml\n",
        "  - redis.yaml\n",
        "$patch: delete",
        "behavior: replace",
    ] {
        assert!(
            kustomization.contains(needed),
            "kubernetes-fleet/kustomization.yaml lost `{needed}`"
        );
    }
    // Redis as warden's configuration expects it: durable writes, at the named Service.
    let redis = read(&deploy("kubernetes-fleet/redis.yaml"));
    for needed in [
        "- --appendonly\n",
        "- --appendfsync\n            - always\n",
        "name: redis\n",
    ] {
        assert!(redis.contains(needed), "redis.yaml lost `{needed}`");
    }
    assert!(
        config.contains("redis://redis.warden.svc:6379/"),
        "{config}"
    );

    // `warden check` in the pod's layout: the base's rules and keys, a fleet key.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        deploy("kubernetes-fleet/warden.toml"),
        dir.path().join("warden.toml"),
    )
    .expect("copy warden.toml");
    for sub in ["rules", "keys"] {
        symlink(
            &deploy(&format!("kubernetes/{sub}"))
                .canonicalize()
                .expect(sub),
            &dir.path().join(sub),
        );
    }
    std::fs::write(dir.path().join("fleet.key"), [7u8; 32]).expect("write fleet.key");
    warden_check(&dir.path().join("warden.toml"));
}

// === compose ===

#[test]
fn compose_mounts_exist_and_agree_with_the_configurations() {
    let compose_dir = deploy("compose");
    let compose = read(&compose_dir.join("docker-compose.yml"));
    let mounts = compose_mounts(&compose);
    assert!(mounts.len() >= 7, "{mounts:?}");
    for (host, container) in &mounts {
        assert!(
            compose_dir.join(host).exists(),
            "docker-compose.yml mounts {host} (at {container}), which does not exist"
        );
    }
    let mounted = |host: &str, container: &str| {
        assert!(
            mounts.iter().any(|(h, c)| h == host && c == container),
            "docker-compose.yml should mount {host} at {container}: {mounts:?}"
        );
    };
    // Prometheus loads the alert rules relative to its configuration file.
    let prometheus = read(&compose_dir.join("prometheus.yml"));
    assert!(
        prometheus.contains("- rules/warden-alerts.yml"),
        "{prometheus}"
    );
    mounted("./prometheus.yml", "/etc/prometheus/prometheus.yml");
    mounted(
        "../prometheus/warden-alerts.yml",
        "/etc/prometheus/rules/warden-alerts.yml",
    );
    // Grafana: the dashboard where the provider looks for it.
    let provider = read(&compose_dir.join("grafana/provisioning/dashboards/warden.yml"));
    assert!(
        provider.contains("path: /var/lib/grafana/dashboards"),
        "{provider}"
    );
    mounted(
        "../grafana/warden-dashboard.json",
        "/var/lib/grafana/dashboards/warden-dashboard.json",
    );
    // upstream.peers takes IP:PORT, so the demo upstream has a fixed address.
    let config = read(&compose_dir.join("warden.toml"));
    let peer = config
        .lines()
        .find_map(|l| l.strip_prefix("peers = [\""))
        .and_then(|p| p.split(':').next())
        .expect("upstream.peers in the compose warden.toml");
    assert!(
        compose.contains(&format!("ipv4_address: {peer}\n")),
        "the compose warden proxies to {peer}, which no service has"
    );
    // The admin token is a secret generated locally, never committed.
    assert!(compose.contains("file: ./admin.token"), "{compose}");
    assert!(
        config.contains("token_file = \"/run/secrets/admin_token\""),
        "{config}"
    );
    assert!(read(&compose_dir.join(".gitignore")).contains("admin.token"));
}

#[test]
fn compose_prometheus_config_passes_promtool() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        deploy("compose/prometheus.yml"),
        dir.path().join("prometheus.yml"),
    )
    .expect("copy prometheus.yml");
    std::fs::create_dir(dir.path().join("rules")).expect("mkdir rules");
    symlink(
        &deploy("prometheus/warden-alerts.yml")
            .canonicalize()
            .expect("alert rules"),
        &dir.path().join("rules/warden-alerts.yml"),
    );
    let config = dir.path().join("prometheus.yml");
    let out = run(
        "promtool",
        &["check", "config", &config.to_string_lossy()],
        "prometheus",
    );
    assert_success("promtool check config", &out);
    // promtool loads the rule files named in the configuration: it found the alerts.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 rule files found"), "{text}");
}

// === docker ===

/// The `HEALTHCHECK ... CMD [...]` of the Dockerfile, as its argument vector.
fn healthcheck_command() -> Vec<String> {
    let dockerfile = read(&deploy("docker/Dockerfile"));
    let after = dockerfile
        .split("\nHEALTHCHECK ")
        .nth(1)
        .expect("a HEALTHCHECK instruction");
    let json = after
        .split_once("CMD ")
        .map(|(_, rest)| rest.lines().next().unwrap_or_default())
        .expect("HEALTHCHECK ... CMD [...]");
    serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("HEALTHCHECK CMD is not a JSON array ({e}): {json}"))
}

#[test]
fn image_health_check_answers_from_the_admin_api() {
    let cmd = healthcheck_command();
    let script = cmd.last().expect("a command").clone();
    assert!(
        script.contains("/dev/tcp/127.0.0.1/9901"),
        "the health check should probe the admin port of deploy/warden.toml: {script}"
    );
    let up = Upstream::start(kid::ACTIVE);
    let w = Warden::start(&up, "");
    let probe = |port: u16| {
        let script = script.replace("/9901", &format!("/{port}"));
        Command::new(&cmd[0])
            .args(&cmd[1..cmd.len() - 1])
            .arg(&script)
            .output()
            .expect("run the health check")
    };
    assert_success("the image's health check", &probe(w.admin.port()));
    // Something that is not warden's admin API: the demo upstream answers 200 on /health
    // too, so use a closed port.
    let closed = warden_e2e::free_port();
    assert!(
        !probe(closed).status.success(),
        "the health check passed with nothing listening on {closed}"
    );
}

// === systemd ===

#[test]
fn systemd_unit_verifies_without_warnings() {
    let unit = read(&deploy("systemd/warden.service"));
    assert!(
        unit.contains("ExecStart=/usr/local/bin/warden run --config /etc/warden/warden.toml"),
        "{unit}"
    );
    // verify insists that the executables exist: point them at this build's binary.
    let bin = warden_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("warden.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/warden", &bin.to_string_lossy()),
    )
    .expect("write the unit");
    let out = run(
        "systemd-analyze",
        &["verify", &path.to_string_lossy()],
        "systemd",
    );
    assert_success("systemd-analyze verify", &out);
    // An unknown key or system call group is only a warning to systemd (exit 0): any line
    // about this unit fails the test.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("warden.service"))
        .collect();
    assert!(about_unit.is_empty(), "systemd-analyze verify:\n{stderr}");
}

#[test]
fn sysusers_snippet_creates_the_service_user() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("etc")).expect("mkdir etc");
    let conf = deploy("systemd/warden.sysusers");
    let out = run(
        "systemd-sysusers",
        &[
            &format!("--root={}", root.path().display()),
            &conf.to_string_lossy(),
        ],
        "systemd",
    );
    assert_success("systemd-sysusers", &out);
    let passwd = read(&root.path().join("etc/passwd"));
    let line = passwd
        .lines()
        .find(|l| l.starts_with("warden:"))
        .unwrap_or_else(|| panic!("no warden user in {passwd}"));
    // Its home is the unit's StateDirectory, and it has no login shell.
    assert!(
        line.ends_with(":/var/lib/warden:/usr/sbin/nologin"),
        "{line}"
    );
    let unit = read(&deploy("systemd/warden.service"));
    assert!(unit.contains("User=warden\n") && unit.contains("StateDirectory=warden\n"));
}
