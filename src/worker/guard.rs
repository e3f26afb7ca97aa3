//! `conveyor job-guard -- CMD ARGS...`: how `conveyor worker` runs each job's command, so that the
//! command's whole process group goes when the worker does. The guard leads the group, starts the
//! command in it, and exits as the command does; when it gets SIGTERM, SIGINT or SIGHUP (from
//! the worker cancelling the job, or from the kernel when the worker dies, whatever ended it),
//! it passes SIGTERM to the group, and SIGKILL after a grace. Without it, a killed worker's
//! commands and the processes they started ran on beside the job's next attempt elsewhere.

use std::process::ExitCode;
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal, killpg};
use nix::unistd::getpgrp;

/// How long the group gets between SIGTERM and SIGKILL (the worker's own cancel waits as long).
const GRACE: Duration = Duration::from_secs(2);

/// Runs `command` and returns how it ended (a signal `n` as 128 + n, as a shell says it).
pub fn run(command: &[String]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("job-guard: give the command after `--`");
        return ExitCode::from(2);
    };
    // Signals are taken in turn below. The command starts with none blocked: the standard
    // library clears the mask of the processes it starts.
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(signal);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("job-guard: blocking signals: {e}");
        return ExitCode::from(2);
    }
    let mut child = match std::process::Command::new(program).args(args).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("job-guard: could not start {program:?}: {e}");
            return ExitCode::from(127);
        }
    };
    let group = getpgrp();
    let mut stopping = false;
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match child.try_wait() {
                Ok(Some(status)) => return exit_code(status),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("job-guard: waiting for the command: {e}");
                    return ExitCode::from(2);
                }
            },
            // The group's SIGTERM reaches the guard too: once is enough.
            Ok(_) if !stopping => {
                stopping = true;
                let _ = killpg(group, Signal::SIGTERM);
                std::thread::spawn(move || {
                    std::thread::sleep(GRACE);
                    let _ = killpg(group, Signal::SIGKILL);
                });
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("job-guard: waiting for signals: {e}");
                return ExitCode::from(2);
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}
