//! Child processes that die with this one. `kill_on_drop` covers an orderly exit; a parent that
//! is killed (SIGKILL, or a signal before its handlers are installed) drops nothing, so each
//! child also asks the kernel for a signal when its parent goes (Linux's parent-death signal).
#![allow(unsafe_code)]

use nix::sys::signal::Signal;

/// Makes the child of `command` receive `signal` when this process dies.
///
/// The kernel sends it when the *thread* that spawned the child ends, so spawn from a thread
/// that lives as long as the process needs the child: the main thread, a runtime's worker
/// threads, or a test's own thread for a child of that test.
pub fn die_with_parent(command: &mut tokio::process::Command, signal: Signal) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: prctl(2) and getppid(2) are system calls that allocate nothing and take
    // no lock.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal)?;
            // The parent may have died before the signal was asked for.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the parent exited"));
            }
            Ok(())
        });
    }
}
