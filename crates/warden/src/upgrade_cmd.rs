//! `warden upgrade`: the graceful upgrade in one command. Starts `warden run --upgrade`
//! (this binary, detached in its own process group, its output where this command's
//! goes), waits until it listens on `server.upgrade_sock`, sends SIGQUIT to the running
//! warden, and checks that the new process survives the hand-over. Run from systemd's
//! `ExecReload=` the new process stays in the unit and becomes its main process
//! (`MAINPID=`, `NotifyAccess=all`).

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::run::{load_config, HANDOVER_WAIT};

/// How long the new process gets to listen on the upgrade socket.
const LISTEN_WAIT: Duration = Duration::from_secs(15);

pub fn main(config_path: &Path, pid: Option<u32>) -> ExitCode {
    let fail = |msg: String| {
        eprintln!("warden upgrade: {msg}");
        ExitCode::from(1)
    };
    // A configuration the new process would refuse stops the upgrade here, before the
    // old process is touched.
    let Some(config) = load_config(config_path) else {
        return fail(
            "the configuration has errors (above); the running warden is untouched".into(),
        );
    };
    let pid_file = &config.server.pid_file;
    let old = match pid {
        Some(p) => p,
        None => match std::fs::read_to_string(pid_file)
            .map_err(|e| e.to_string())
            .and_then(|s| s.trim().parse::<u32>().map_err(|e| format!("{e} in {s:?}")))
        {
            Ok(p) => p,
            Err(e) => {
                return fail(format!(
                    "no running warden found: {}: {e}; give its pid with --pid",
                    pid_file.display()
                ))
            }
        },
    };
    if !Path::new(&format!("/proc/{old}")).exists() {
        return fail(format!(
            "no process {old} (from {}); is warden running?",
            pid_file.display()
        ));
    }
    let sock = &config.server.upgrade_sock;
    let _ = std::fs::remove_file(sock);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot find this program: {e}")),
    };
    let mut cmd = Command::new(exe);
    cmd.args(["run", "--upgrade", "--config"])
        .arg(config_path)
        .stdin(Stdio::null());
    // Its own process group: it must outlive this command (and a terminal's ^C).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the new process: {e}")),
    };
    let new = child.id();
    let start = Instant::now();
    loop {
        if sock.exists() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return fail(format!(
                "the new process exited ({status}) before taking over; the running warden ({old}) is untouched"
            ));
        }
        if start.elapsed() > LISTEN_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            return fail(format!(
                "the new process did not listen on {} within {LISTEN_WAIT:?}; stopped it, the running warden ({old}) is untouched",
                sock.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    match Command::new("kill")
        .arg("-QUIT")
        .arg(old.to_string())
        .status()
    {
        Ok(s) if s.success() => {}
        other => {
            let _ = child.kill();
            let _ = child.wait();
            return fail(format!(
                "cannot send SIGQUIT to {old} ({other:?}); stopped the new process, the running warden is untouched"
            ));
        }
    }
    // The new process takes the sockets at once and the ledger once the old one has
    // handed it over (it gives up after HANDOVER_WAIT), then writes its pid file.
    let deadline = Instant::now() + HANDOVER_WAIT + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return fail(format!(
                "the new process exited ({status}) during the hand-over; see its log. The old one ({old}) stops after its drain: start warden again"
            ));
        }
        let took = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            == Some(new);
        if took {
            println!("warden upgrade: process {new} took over from {old}, which drains and exits");
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("warden upgrade: process {new} started and {old} got SIGQUIT; the new one has not written its pid file yet, check its log");
    ExitCode::SUCCESS
}
