//! A private PostgreSQL for the tests that need one of their own: one that requires TLS, or one
//! they can freeze (SIGSTOP: it accepts connections and answers nothing, as a database whose disk
//! or network hangs) and thaw. Started on a free port in a temporary folder, stopped on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::free_port;
use crate::tls::{ca, leaf};

/// Where Debian keeps the server's programs (`initdb`, `pg_ctl`), newest version first.
fn bin(program: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL's server programs under /usr/lib/postgresql (`tests/run` installs them)",
        )
        .filter_map(|e| Some(e.ok()?.path().join("bin").join(program)))
        .filter(|p| p.exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .unwrap_or_else(|| panic!("no {program} under /usr/lib/postgresql"))
}

/// PostgreSQL refuses to run as root: as root, its programs run as the `postgres` user.
fn as_owner(program: &str) -> Command {
    let mut command = match nix::unistd::Uid::effective().is_root() {
        true => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin(program));
            c
        }
        false => Command::new(bin(program)),
    };
    command.stdout(std::process::Stdio::null());
    command
}

/// Hands `path` to the `postgres` user when the tests run as root.
fn own(path: &Path) {
    if nix::unistd::Uid::effective().is_root() {
        let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
        nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
    }
}

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// With TLS: the CA its certificate comes from (PEM file).
    pub ca: Option<PathBuf>,
}

impl Postgres {
    /// A server that takes plain connections from loopback.
    pub fn start() -> Postgres {
        Postgres::launch(false)
    }

    /// A server with a certificate from a CA made here, refusing connections without TLS.
    pub fn start_tls() -> Postgres {
        Postgres::launch(true)
    }

    fn launch(tls: bool) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        own(dir.path());
        let data = dir.path().join("data");
        let made = as_owner("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ])
            .status()
            .unwrap();
        assert!(made.success(), "initdb");
        let mut ca_file = None;
        let mut hba = "host all all 127.0.0.1/32 trust\n".to_string();
        let mut options = String::new();
        if tls {
            let ca = ca("conveyor test database CA");
            let (cert, key) = leaf(&ca, "localhost", &["127.0.0.1", "localhost"]);
            for (name, text, mode) in [("server.crt", &cert, 0o644), ("server.key", &key, 0o600)] {
                let path = data.join(name);
                std::fs::write(&path, text).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                own(&path);
            }
            // TLS or nothing.
            hba = "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"
                .into();
            options.push_str(" -c ssl=on");
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, &ca.pem).unwrap();
            ca_file = Some(path);
        }
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}'{options}",
            dir.path().display()
        );
        let started = as_owner("pg_ctl")
            .args(["start", "-w", "-D", data.to_str().unwrap(), "-o", &options])
            .arg("-l")
            .arg(dir.path().join("log"))
            .status()
            .unwrap();
        assert!(started.success(), "pg_ctl start");
        Postgres {
            dir,
            port,
            ca: ca_file,
        }
    }

    pub fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// Runs one SQL statement with `psql` and returns its rows, a line each, columns split by `|`.
    pub fn query(&self, sql: &str) -> Vec<String> {
        let out = Command::new(bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-At",
                "-c",
                sql,
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The server's processes: the postmaster (its pid file's first line) and its children.
    fn processes(&self) -> Vec<Pid> {
        let pidfile = self.dir.path().join("data/postmaster.pid");
        let text = std::fs::read_to_string(pidfile).unwrap();
        let postmaster: i32 = text.lines().next().unwrap().trim().parse().unwrap();
        let mut pids = vec![Pid::from_raw(postmaster)];
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(Pid::from_raw(pid));
            }
        }
        pids
    }

    /// Freezes the server: connections are accepted (the kernel does that) and nothing answers.
    pub fn freeze(&self) {
        for pid in self.processes() {
            let _ = kill(pid, Signal::SIGSTOP);
        }
    }

    pub fn thaw(&self) {
        for pid in self.processes() {
            let _ = kill(pid, Signal::SIGCONT);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.thaw();
        let data = self.dir.path().join("data");
        let _ = as_owner("pg_ctl")
            .args(["stop", "-m", "immediate", "-D", data.to_str().unwrap()])
            .status();
    }
}
