//! PostgreSQL over TLS, as managed services require: a private PostgreSQL the test starts with a
//! certificate from a CA made here, refusing every connection without TLS. `DATABASE_URL` with
//! `sslmode=verify-full&sslrootcert=CA` serves; without TLS, or trusting another CA, the server
//! refuses to start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use conveyor::proto::JobState;

use crate::harness::{self, Redis, Server, eventually, free_port, submit, submit_job};
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
    let root = nix::unistd::Uid::effective().is_root();
    let mut command = match root {
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

/// A private PostgreSQL with TLS on a free port; stopped when dropped.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    /// The CA its certificate comes from (PEM file).
    ca: PathBuf,
}

impl Postgres {
    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let root = nix::unistd::Uid::effective().is_root();
        let chown = |path: &Path| {
            if root {
                let user = nix::unistd::User::from_name("postgres").unwrap().unwrap();
                nix::unistd::chown(path, Some(user.uid), Some(user.gid)).unwrap();
            }
        };
        chown(dir.path());
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
        let ca = ca("conveyor test database CA");
        let (cert, key) = leaf(&ca, "localhost", &["127.0.0.1", "localhost"]);
        for (name, text, mode) in [("server.crt", &cert, 0o644), ("server.key", &key, 0o600)] {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            chown(&path);
        }
        // TLS or nothing, from anywhere.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let port = free_port();
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' -c ssl=on",
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

    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_owner("pg_ctl")
            .args(["stop", "-m", "immediate", "-D", data.to_str().unwrap()])
            .status();
    }
}

#[tokio::test]
async fn the_history_can_live_on_a_postgresql_that_requires_tls() {
    harness::logs();
    let postgres = Postgres::start();
    let redis = Redis::start().await;
    let mut config = harness::config(&redis);
    let ca = postgres.ca.display().to_string();
    config.database_url = Some(postgres.url(&format!("sslmode=verify-full&sslrootcert={ca}")));
    let server = Server::start(config).await;
    let mut jobs = server.jobs().await;
    let job = submit_job(&mut jobs, submit("render", "{}")).await;
    assert_eq!(job.state, JobState::Queued as i32);
    let store = conveyor::history::Store::open(
        &postgres.url(&format!("sslmode=verify-full&sslrootcert={ca}")),
        Default::default(),
    )
    .await
    .unwrap();
    eventually("the job's row", || async {
        store.get(&job.id).await.ok()?.map(|_| ())
    })
    .await;

    // Without TLS the database refuses; trusting another CA, the server refuses the database.
    let stranger = crate::tls::ca("not the database's CA");
    let other = postgres.dir.path().join("other.pem");
    std::fs::write(&other, &stranger.pem).unwrap();
    let other = other.display().to_string();
    for query in [
        "sslmode=disable".to_string(),
        format!("sslmode=verify-full&sslrootcert={other}"),
    ] {
        let refused = conveyor::history::connect(&postgres.url(&query)).await;
        assert!(refused.is_err(), "{query} connected");
    }
}
