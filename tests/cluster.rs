//! Starts a real primary and streaming replica with the project's own harness and
//! checks them with psql from the same bin dir.

use std::net::TcpStream;
use std::process::Command;

use pgshard::cluster::{ClusterSpec, LocalClusters, Node};

const USER: &str = "pgshard";
const PASSWORD: &str = "pgshard test pw";

/// Runs one query through psql over TCP (scram) and returns its unaligned output.
fn psql(clusters: &LocalClusters, node: &Node, sql: &str) -> String {
    let output = Command::new(clusters.bin_dir().join("psql"))
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            &node.host,
            "-p",
            &node.port.to_string(),
        ])
        .args(["-U", USER, "-d", "postgres", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("run psql");
    assert!(
        output.status.success(),
        "psql on {} failed: {}",
        node.name,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn primary_and_replica_start_serve_and_stop() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec {
        dir: tmp.path().to_path_buf(),
        backends: 1,
        replicas: true,
        user: USER.to_string(),
        password: PASSWORD.to_string(),
        port_base: None,
    };
    let mut clusters = LocalClusters::start(&spec).expect("start clusters");

    let names: Vec<&str> = clusters.nodes().iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["b0", "b0r0"]);
    let primary = clusters.primaries().next().expect("a primary").clone();
    let replica = clusters
        .replicas_of("b0")
        .next()
        .expect("a replica")
        .clone();
    assert_eq!(replica.backend, "b0");
    assert_ne!(primary.port, replica.port);
    assert_eq!(
        clusters.dsn(&primary, "postgres"),
        format!(
            "postgresql://pgshard:pgshard%20test%20pw@127.0.0.1:{}/postgres",
            primary.port
        )
    );

    assert_eq!(psql(&clusters, &primary, "SELECT 1"), "1");
    assert_eq!(psql(&clusters, &primary, "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(psql(&clusters, &replica, "SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        psql(&clusters, &primary, "SHOW max_prepared_transactions"),
        "100"
    );

    clusters.stop();
    clusters.stop(); // idempotent
    for node in [&primary, &replica] {
        assert!(
            TcpStream::connect((node.host.as_str(), node.port)).is_err(),
            "{} still accepts connections after stop",
            node.name
        );
    }
}

#[test]
fn bad_spec_is_rejected_before_anything_runs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec {
        dir: tmp.path().to_path_buf(),
        backends: 0,
        replicas: false,
        user: USER.to_string(),
        password: PASSWORD.to_string(),
        port_base: None,
    };
    let err = LocalClusters::start(&spec).expect_err("zero backends");
    assert!(err.to_string().contains("backends"), "{err}");
}
