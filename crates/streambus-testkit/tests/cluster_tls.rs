//! TLS servers and Redis Clusters, against real `redis-server`s (never the
//! shared one on 6379).

mod common;

use common::{process_exists, text};

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use streambus_testkit::wait::wait_until;
use streambus_testkit::{
    redis_cli_bin, slot_for_key, NodeRole, RedisCluster, RedisServer, ServerOptions, TlsOptions,
};

/// `redis-cli --tls --cacert CA [--cert C --key K] -p PORT PING`, built by
/// hand (not `cli_command`) to control exactly what the client presents.
fn tls_ping(port: u16, ca: &Path, client: Option<(PathBuf, PathBuf)>) -> Output {
    let mut cmd = Command::new(redis_cli_bin());
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--tls",
        "--cacert",
    ])
    .arg(ca)
    .stdin(Stdio::null());
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    cmd.arg("PING").output().expect("run redis-cli")
}

/// Run several commands (one per line) on ONE connection of `redis-cli`.
fn cli_script(server: &RedisServer, script: &str) -> String {
    let mut child = server
        .cli_command()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn tls_server(require_client_cert: bool) -> RedisServer {
    RedisServer::start_with(ServerOptions {
        tls: Some(TlsOptions {
            require_client_cert,
        }),
        ..ServerOptions::default()
    })
}

/// Drop `what` and check that none of `pids` survives and `dir` is gone.
fn assert_drop_cleans_up<T>(what: T, pids: Vec<u32>, dir: PathBuf) {
    assert!(!pids.is_empty());
    assert!(pids.iter().all(|&p| process_exists(p)));
    drop(what);
    for pid in pids {
        let what = format!("redis-server {pid} to exit after drop");
        wait_until(Duration::from_secs(5), &what, || !process_exists(pid));
    }
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[test]
fn tls_server_trusts_its_ca_only() {
    let server = tls_server(false);
    let port = server.port();
    assert!(server.is_tls());
    assert_eq!(server.tls_url(), format!("rediss://127.0.0.1:{port}"));
    assert_eq!(server.url(), server.tls_url());
    for path in [
        server.ca_cert_path(),
        server.client_cert_path(),
        server.client_key_path(),
        server.other_ca_cert_path(),
        server.dir().join("ca.key"),
        server.dir().join("server.crt"),
        server.dir().join("server.key"),
    ] {
        assert!(path.is_file(), "{} missing", path.display());
    }
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(server.cli(&["CONFIG", "GET", "port"]), "port\n0");
    assert_eq!(
        server.cli(&["CONFIG", "GET", "tls-auth-clients"]),
        "tls-auth-clients\nno"
    );

    // The right CA, no client certificate (optional here): PONG.
    let out = tls_ping(port, &server.ca_cert_path(), None);
    assert_eq!(text(&out).trim(), "PONG", "{}", text(&out));

    // The wrong CA: the server's certificate is not trusted.
    let out = tls_ping(port, &server.other_ca_cert_path(), None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("PONG"), "{}", text(&out));
    assert!(
        text(&out)
            .to_lowercase()
            .contains("certificate verify failed"),
        "{}",
        text(&out)
    );

    // Plain text on the TLS port gets nowhere.
    let out = Command::new(redis_cli_bin())
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "PING"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!text(&out).contains("PONG"), "{}", text(&out));
}

#[test]
fn tls_client_cert_required() {
    let server = tls_server(true);
    let port = server.port();
    assert_eq!(
        server.cli(&["CONFIG", "GET", "tls-auth-clients"]),
        "tls-auth-clients\nyes"
    );
    // Without a client certificate the server drops the connection (with
    // TLS 1.3 after the handshake, so redis-cli sees a reset).
    let out = tls_ping(port, &server.ca_cert_path(), None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("PONG"), "{}", text(&out));

    let client = (server.client_cert_path(), server.client_key_path());
    let out = tls_ping(port, &server.ca_cert_path(), Some(client));
    assert_eq!(text(&out).trim(), "PONG", "{}", text(&out));
    // cli() presents the client certificate too.
    assert_eq!(server.cli(&["PING"]), "PONG");
}

#[test]
fn tls_server_survives_kill_and_restart() {
    let mut server = tls_server(true);
    let port = server.port();
    let pid = server.pid().unwrap();
    let cert = std::fs::read(server.dir().join("server.crt")).unwrap();
    server.kill();
    assert!(!process_exists(pid));
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), Some(pid));
    assert_eq!(server.cli(&["PING"]), "PONG");
    assert_eq!(
        std::fs::read(server.dir().join("server.crt")).unwrap(),
        cert,
        "restart must keep the certificates"
    );
    let dir = server.dir().to_owned();
    let pid = server.pid().unwrap();
    assert_drop_cleans_up(server, vec![pid], dir);
}

#[test]
fn tls_with_password() {
    let server = RedisServer::start_with(ServerOptions {
        password: Some("p w".into()),
        tls: Some(TlsOptions::default()),
        ..ServerOptions::default()
    });
    assert_eq!(
        server.tls_url(),
        format!("rediss://:p%20w@127.0.0.1:{}", server.port())
    );
    assert_eq!(server.cli(&["PING"]), "PONG");
    let out = server.cli_command().arg("PING").output().unwrap();
    assert!(text(&out).contains("NOAUTH"), "{}", text(&out));
}

#[test]
#[should_panic(expected = "started without TLS")]
fn tls_accessors_panic_on_plain_server() {
    let server = RedisServer::start();
    assert!(!server.is_tls());
    let _ = server.ca_cert_path();
}

#[test]
fn cluster_of_three_masters() {
    let cluster = RedisCluster::start(3, 0);
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert!(!ports.contains(&6379));
    for &port in &ports {
        let info = cluster.cli(port, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{port}: {info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
    }

    // Three masters share all 16384 slots.
    let nodes = cluster.nodes();
    assert!(nodes
        .iter()
        .all(|n| n.running && n.role == NodeRole::Master && n.master_port.is_none()));
    let slots: usize = nodes
        .iter()
        .flat_map(|n| n.slots.iter().map(|r| r.len()))
        .sum();
    assert_eq!(slots, 16384);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    assert_eq!(masters.iter().collect::<HashSet<_>>().len(), 3);
    let owners: HashSet<u16> = [0, 5000, 8191, 12000, 16383]
        .iter()
        .map(|&s| cluster.master_for_slot(s))
        .collect();
    assert_eq!(owners.len(), 3, "{nodes:?}");
    assert_eq!(cluster.master_for_slot(0), masters[0]);
    assert_eq!(
        cluster.url(),
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            masters[0], masters[1], masters[2]
        )
    );

    // Slots computed locally match the server's.
    for key in [
        "{a}x",
        "foo",
        "bar",
        "t:orders:0",
        "{user1000}.following",
        "a{}b",
    ] {
        let server_slot = cluster.cli(ports[0], &["CLUSTER", "KEYSLOT", key]);
        assert_eq!(server_slot, slot_for_key(key).to_string(), "{key}");
    }

    // Write through redirections, read back from the owner directly.
    for &port in &ports {
        assert_eq!(cluster.cli(port, &["-c", "SET", "{a}x", "1"]), "OK");
    }
    let owner = cluster.master_for_slot(slot_for_key("{a}x"));
    assert_eq!(cluster.cli(owner, &["GET", "{a}x"]), "1");
    let other = *masters.iter().find(|&&p| p != owner).unwrap();
    assert!(cluster.cli(other, &["GET", "{a}x"]).starts_with("MOVED"));

    let pids: Vec<u32> = ports
        .iter()
        .map(|&p| cluster.node(p).pid().unwrap())
        .collect();
    let dir = cluster.dir().to_owned();
    assert_drop_cleans_up(cluster, pids, dir);
}

#[test]
fn cluster_failover_after_master_kill() {
    let started = Instant::now();
    let mut cluster = RedisCluster::start(3, 1);
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6);
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    for &m in &masters {
        let replicas: Vec<u16> = nodes
            .iter()
            .filter(|n| n.role == NodeRole::Replica && n.master_port == Some(m))
            .map(|n| n.port)
            .collect();
        assert_eq!(replicas.len(), 1, "master {m}: {nodes:?}");
        let info = cluster.cli(replicas[0], &["INFO", "replication"]);
        assert!(info.contains("master_link_status:up"), "{info}");
    }
    eprintln!("3+1 cluster ready in {:?}", started.elapsed());

    let key = "{orders}:0";
    let victim = cluster.master_for_slot(slot_for_key(key));
    let replica = nodes
        .iter()
        .find(|n| n.master_port == Some(victim))
        .unwrap()
        .port;
    // Only a master that served slots can be failed over.
    let err = cluster
        .wait_for_failover(replica, Duration::from_secs(1))
        .unwrap_err();
    assert!(err.to_string().contains("not a master"), "{err}");

    // WAIT counts the acknowledgements of its own connection's writes, so
    // SET and WAIT must share one connection (one redis-cli).
    assert_eq!(
        cli_script(
            cluster.node(victim),
            &format!("SET {key} v1\nWAIT 1 5000\n")
        ),
        "OK\n1"
    );

    let killed_at = Instant::now();
    cluster.kill_node(victim);
    assert!(!cluster.node(victim).is_running());
    let promoted = cluster
        .wait_for_failover(victim, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("failover in {:?}", killed_at.elapsed());
    assert_eq!(promoted, replica);
    assert_eq!(cluster.master_for_slot(slot_for_key(key)), promoted);
    assert_eq!(cluster.cli(promoted, &["GET", key]), "v1");
    for &port in cluster.ports().iter().filter(|&&p| p != victim) {
        let info = cluster.cli(port, &["CLUSTER", "INFO"]);
        assert!(info.contains("cluster_state:ok"), "{port}: {info}");
    }
    assert!(!cluster.masters().contains(&victim));
    assert!(cluster.url().contains(&format!("127.0.0.1:{promoted}")));

    // The old master comes back as a replica of the promoted one.
    cluster.restart_node(victim);
    cluster
        .wait_until_ready(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    let back = cluster
        .nodes()
        .into_iter()
        .find(|n| n.port == victim)
        .unwrap();
    assert_eq!(back.role, NodeRole::Replica, "{back:?}");
    assert_eq!(back.master_port, Some(promoted));

    let pids: Vec<u32> = cluster
        .ports()
        .iter()
        .map(|&p| cluster.node(p).pid().unwrap())
        .collect();
    assert_eq!(pids.len(), 6);
    let dir = cluster.dir().to_owned();
    assert_drop_cleans_up(cluster, pids, dir);
    eprintln!("failover test took {:?}", started.elapsed());
}
