//! Nothing a process of ours starts outlives it: `conveyor dev`'s private redis-server dies with
//! it whether it is stopped before it serves (SIGTERM) or killed (SIGKILL).

use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::harness::{self, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_conveyor");

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.starts_with(" Z"))
    })
}

/// The processes whose parent is `parent`, with their command names.
fn children(parent: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == parent).then_some((pid, name))
        })
        .collect()
}

/// `conveyor dev` with its data under a fresh folder and `database` as DATABASE_URL; its
/// address.
fn dev(database: &str) -> (Child, String, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", harness::free_port());
    let child = Command::new(BIN)
        .args(["dev", "--listen", &listen])
        .env("CONVEYOR_DATA_DIR", data.path())
        .env("DATABASE_URL", database)
        .env_remove("REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    (child, format!("http://{listen}"), data)
}

/// The private redis-server `dev` started.
async fn its_redis(dev: &Child) -> u32 {
    let pid = dev.id().unwrap();
    eventually("conveyor dev to start its redis-server", || async move {
        children(pid)
            .into_iter()
            .find(|(_, name)| name == "redis-server")
            .map(|(pid, _)| pid)
    })
    .await
}

async fn gone(pid: u32) {
    eventually("the redis-server to go with its parent", || async move {
        (!alive(pid)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn dev_killed_hard_takes_its_redis_along() {
    let (mut dev, addr, _data) = dev(&harness::sqlite_url());
    let redis = its_redis(&dev).await;
    crate::process::answering(&addr).await;
    dev.start_kill().unwrap(); // SIGKILL: no handler runs, nothing is dropped
    dev.wait().await.unwrap();
    gone(redis).await;
}

#[tokio::test]
async fn dev_stopped_before_it_serves_takes_its_redis_along() {
    // A database that accepts connections and never answers holds `dev` before it serves.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://conveyor@{}/conveyor",
        silent.local_addr().unwrap()
    );
    let (mut dev, _addr, _data) = dev(&url);
    let redis = its_redis(&dev).await;
    kill(Pid::from_raw(dev.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = dev.wait().await.unwrap();
    assert!(!status.success(), "stopped before serving: {status}");
    gone(redis).await;
    drop(silent);
}
