//! The `warden` command line, run as a process. (This file also makes `cargo test` build
//! the `warden` binary that the end-to-end suite in `tests/` drives.)

use std::process::Command;

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

#[test]
fn check_reports_every_error_with_its_place_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[upstream]\npeers = [\"nowhere\"]\n\n[token]\nleeway = \"soon\"\n\n[[routes]]\nname = \"a\"\nclass = \"guarded\"\npaths = [\"/a\"]\n",
    )
    .expect("write");
    let out = warden()
        .arg("check")
        .arg(&path)
        .output()
        .expect("run warden check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    for want in [
        format!("{p}:2:10: error: upstream.peers: \"nowhere\" is not an address"),
        format!("{p}:5:10: error: token.leeway = \"soon\" is not a duration"),
        format!("{p}:9:9: error: routes.class = \"guarded\" is not one of"),
    ] {
        assert!(stderr.contains(&want), "missing {want:?} in:\n{stderr}");
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 errors"));
}

#[test]
fn check_accepts_a_good_file_and_run_refuses_a_bad_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[upstream]\npeers = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"a\"\nclass = \"protected\"\npaths = [\"/a/*\"]\n")
        .expect("write");
    let out = warden().arg("check").arg(&good).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[upstream]\npeers = 5\n").expect("write");
    let out = warden()
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(":2:9: error:"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_missing_config_is_a_clear_error() {
    let out = warden()
        .args(["check", "/nonexistent/warden.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/warden.toml:1:1: error: cannot read the file"));
}

#[test]
fn the_reference_configuration_is_valid_and_warns_of_nothing() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/warden.toml");
    let out = warden().args(["check", path]).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ok (0 warnings)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_default_rule_pack_checks_clean_and_a_bad_rule_file_is_reported() {
    let pack = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/rules/default.toml"
    );
    let out = warden().args(["check", pack]).output().expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (0 warnings)"));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("rules.toml");
    std::fs::write(&bad, "[[rules]]\nname = \"r\"\nkey = [\"ip\"]\nwindow = \"1h\"\nthreshold = 3\naction = \"ban\"\n").expect("write");
    let out = warden().arg("check").arg(&bad).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:6:10: error: rule \"r\": action = \"ban\" needs ban_for",
            bad.display()
        )),
        "{stderr}"
    );
}
