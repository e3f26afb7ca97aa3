//! Redis groups for tests, as real processes on loopback: a Cluster (3 masters, with a replica
//! each when asked) that can lose a master or move a slot, and a Sentinel group (a master, a
//! replica, three sentinels) that can lose its master.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::harness::{self, eventually};

/// The `node=` parameters a Redis URL lists its other nodes with.
fn more_nodes(ports: &[u16]) -> String {
    let nodes: Vec<String> = ports
        .iter()
        .map(|p| format!("node=127.0.0.1:{p}"))
        .collect();
    nodes.join("&")
}

/// A loopback port whose cluster bus port (+10000) is usable too.
fn node_port() -> u16 {
    loop {
        let port = harness::free_port();
        if port < 50_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

pub fn redis_server(args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server must be installed")
}

pub async fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("redis-cli comes with redis-server");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn answers(port: u16) -> Option<()> {
    let pong = redis_cli(&["-p", &port.to_string(), "PING"]).await;
    pong.contains("PONG").then_some(())
}

/// Three masters sharing the 16,384 slots (each with a replica, when asked); the nodes die with
/// the value.
pub struct Cluster {
    pub ports: Vec<u16>,
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Cluster::start_with(0).await
    }

    /// `replicas` per master; a master that stops answering for 2 s is replaced by its replica.
    pub async fn start_with(replicas: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..3 * (1 + replicas)).map(|_| node_port()).collect();
        let mut nodes = Vec::new();
        for port in &ports {
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            nodes.push(redis_server(&[
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.to_str().unwrap(),
                // A replica writes the copy it receives to disk: there, not in the tests' cwd.
                "--dir",
                dir.path().to_str().unwrap(),
                "--cluster-node-timeout",
                "2000",
                // A replica that never synced cannot take over: sync at once.
                "--repl-diskless-sync-delay",
                "0",
                // The setting the README asks for: the other masters' slots stay served while one
                // master's are being failed over.
                "--cluster-require-full-coverage",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ]));
        }
        for port in &ports {
            eventually("a cluster node to answer", || answers(*port)).await;
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let replicas = replicas.to_string();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        redis_cli(&create).await;
        for port in &ports {
            eventually("the cluster to be ok", || async {
                let info = redis_cli(&["-p", &port.to_string(), "CLUSTER", "INFO"]).await;
                info.contains("cluster_state:ok").then_some(())
            })
            .await;
            // ... and every node to know every other by its address (a client that asks too
            // early is told of a node with no address yet).
            eventually("every node to know every other", || async {
                let nodes = redis_cli(&["-p", &port.to_string(), "CLUSTER", "NODES"]).await;
                let settled = nodes.lines().count() == ports.len()
                    && !nodes.contains("handshake")
                    && !nodes.contains("noaddr");
                settled.then_some(())
            })
            .await;
        }
        for port in &ports {
            eventually("every replica to have synced", || async {
                let info = redis_cli(&["-p", &port.to_string(), "INFO", "replication"]).await;
                (info.contains("role:master") || info.contains("master_link_status:up"))
                    .then_some(())
            })
            .await;
        }
        Cluster {
            ports,
            nodes,
            _dir: dir,
        }
    }

    /// SIGKILLs the node at `port`.
    pub async fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        self.nodes[i].kill().await.unwrap();
    }

    pub fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            more_nodes(&self.ports[1..])
        )
    }
}

impl Cluster {
    /// The port of the master that holds `key`.
    pub async fn owner(&self, key: &str) -> u16 {
        for port in &self.ports {
            let reply = redis_cli(&["-p", &port.to_string(), "EXISTS", key]).await;
            // A replica or another master answers MOVED; a dead node nothing.
            if matches!(reply.trim(), "0" | "1") {
                return *port;
            }
        }
        panic!("no master holds {key}");
    }
}

impl Cluster {
    /// Moves every slot of master `from` to master `to` with `redis-cli --cluster reshard`, as
    /// an operator would (keys in batches of 10, slot after slot). Returns once it is done.
    pub async fn reshard_all(&self, from: u16, to: u16) {
        let (from_id, to_id) = (Self::node_id(from).await, Self::node_id(to).await);
        let nodes = redis_cli(&["-p", &from.to_string(), "CLUSTER", "NODES"]).await;
        let line = nodes.lines().find(|l| l.starts_with(&from_id)).unwrap();
        let slots: u32 = line
            .split_whitespace()
            .skip(8)
            .map(|range| match range.split_once('-') {
                Some((a, b)) => b.parse::<u32>().unwrap() - a.parse::<u32>().unwrap() + 1,
                None => 1,
            })
            .sum();
        let slots = slots.to_string();
        let out = redis_cli(&[
            "--cluster",
            "reshard",
            &format!("127.0.0.1:{from}"),
            "--cluster-from",
            &from_id,
            "--cluster-to",
            &to_id,
            "--cluster-slots",
            &slots,
            "--cluster-yes",
        ])
        .await;
        assert!(!out.contains("[ERR]"), "reshard: {out}");
    }

    /// A master other than `master`.
    pub async fn other_master(&self, master: u16) -> u16 {
        for port in &self.ports {
            let info = redis_cli(&["-p", &port.to_string(), "INFO", "replication"]).await;
            if *port != master && info.contains("role:master") {
                return *port;
            }
        }
        panic!("no master but {master}");
    }

    pub async fn node_id(port: u16) -> String {
        redis_cli(&["-p", &port.to_string(), "CLUSTER", "MYID"])
            .await
            .trim()
            .to_string()
    }

    /// Moves `slot` from master `from` to master `to` the way `redis-cli --cluster reshard`
    /// does (IMPORTING, MIGRATING, MIGRATE key by key, then NODE everywhere), but with a pause
    /// after each key, so that calls keep landing while the slot is half moved.
    pub async fn move_slot(&self, slot: &str, from: u16, to: u16, pause: Duration) {
        let (from_id, to_id) = (Self::node_id(from).await, Self::node_id(to).await);
        let (from_port, to_port) = (from.to_string(), to.to_string());
        let set = |port: String, how: &'static str, id: String| async move {
            let reply = redis_cli(&["-p", &port, "CLUSTER", "SETSLOT", slot, how, &id]).await;
            assert!(reply.contains("OK"), "SETSLOT {slot} {how}: {reply}");
        };
        set(to_port.clone(), "IMPORTING", from_id).await;
        set(from_port.clone(), "MIGRATING", to_id.clone()).await;
        loop {
            let keys = redis_cli(&["-p", &from_port, "CLUSTER", "GETKEYSINSLOT", slot, "1"]).await;
            let Some(key) = keys.lines().map(str::trim).find(|k| !k.is_empty()) else {
                break;
            };
            let reply = redis_cli(&[
                "-p",
                &from_port,
                "MIGRATE",
                "127.0.0.1",
                &to_port,
                key,
                "0",
                "5000",
            ])
            .await;
            assert!(
                reply.contains("OK") || reply.contains("NOKEY"),
                "MIGRATE {key}: {reply}"
            );
            tokio::time::sleep(pause).await;
        }
        for port in &self.ports {
            let reply = redis_cli(&["-p", &port.to_string(), "INFO", "replication"]).await;
            if reply.contains("role:master") {
                set(port.to_string(), "NODE", to_id.clone()).await;
            }
        }
    }
}

/// A master, its replica and three sentinels watching it as `conveyor` (quorum 2; a master
/// silent for a second is failed over).
pub struct Sentinels {
    pub replica: u16,
    sentinels: Vec<u16>,
    nodes: Vec<Child>,
    _dir: tempfile::TempDir,
}

impl Sentinels {
    pub async fn start() -> Sentinels {
        let dir = tempfile::tempdir().unwrap();
        let (master, replica) = (harness::free_port(), harness::free_port());
        let data = dir.path().to_str().unwrap().to_string();
        let node = |port: u16, extra: &[&str]| {
            let port = port.to_string();
            let mut args = vec!["--bind", "127.0.0.1", "--port", &port, "--save", ""];
            args.extend(["--appendonly", "no", "--dir", &data]);
            args.extend(["--repl-diskless-sync-delay", "0"]);
            args.extend(extra);
            redis_server(&args)
        };
        let mut nodes = vec![node(master, &[])];
        let master_port = master.to_string();
        nodes.push(node(replica, &["--replicaof", "127.0.0.1", &master_port]));
        eventually("the replica to sync", || async {
            let info = redis_cli(&["-p", &replica.to_string(), "INFO", "replication"]).await;
            info.contains("master_link_status:up").then_some(())
        })
        .await;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = harness::free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\ndir {data}\n\
                     sentinel monitor conveyor 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds conveyor 1000\n\
                     sentinel failover-timeout conveyor 3000\n"
                ),
            )
            .unwrap();
            nodes.push(redis_server(&[conf.to_str().unwrap(), "--sentinel"]));
            sentinels.push(port);
        }
        for port in &sentinels {
            eventually(
                "each sentinel to know the replica and the others",
                || async {
                    let reply =
                        redis_cli(&["-p", &port.to_string(), "SENTINEL", "master", "conveyor"])
                            .await;
                    let field = |name: &str| {
                        let mut lines = reply.lines();
                        lines.find(|l| l.trim() == name)?;
                        lines.next()?.trim().parse::<u32>().ok()
                    };
                    (field("num-slaves")? >= 1 && field("num-other-sentinels")? >= 2).then_some(())
                },
            )
            .await;
        }
        Sentinels {
            replica,
            sentinels,
            nodes,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName=conveyor&{}",
            self.sentinels[0],
            more_nodes(&self.sentinels[1..])
        )
    }

    /// SIGKILLs the master, and returns once the sentinels have promoted the replica.
    pub async fn kill_master(&mut self) {
        self.nodes[0].kill().await.unwrap();
        let replica = self.replica.to_string();
        let sentinel = self.sentinels[0].to_string();
        eventually("the sentinels to promote the replica", || async {
            let reply = redis_cli(&[
                "-p",
                &sentinel,
                "SENTINEL",
                "get-master-addr-by-name",
                "conveyor",
            ])
            .await;
            reply.contains(&replica).then_some(())
        })
        .await;
    }
}
