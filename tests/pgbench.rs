//! pgbench and psql through the proxy against one real backend.

mod common;

use common::{demo, pg_tool, Demo};

fn shared() -> &'static Demo {
    demo(1, 4)
}

fn stdout_of(tool: &str, demo: &Demo, args: &[&str]) -> String {
    let out = pg_tool(tool, demo.proxy, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// One test: the modes share the tables `pgbench -i` makes.
#[test]
fn pgbench_init_then_every_mode_has_no_failures() {
    let demo = shared();
    stdout_of("pgbench", demo, &["-i", "-s", "2", common::DATABASE]);
    for mode in [
        &["-S"][..],
        &["-M", "extended", "-S"],
        &["-M", "prepared", "-S"],
        &[],
        &["-M", "prepared"],
    ] {
        // 8 clients over a pool of 4 server connections.
        let mut args = vec!["-c", "8", "-j", "2", "-t", "200", "-n"];
        args.extend_from_slice(mode);
        args.push(common::DATABASE);
        let out = stdout_of("pgbench", demo, &args);
        assert!(
            out.contains("number of transactions actually processed: 1600/1600"),
            "{mode:?}:\n{out}"
        );
        assert!(
            out.contains("number of failed transactions: 0 (0.000%)"),
            "{mode:?}:\n{out}"
        );
    }
    // TPC-B keeps its invariant: every delta lands in all three balances.
    let sums = stdout_of(
        "psql",
        demo,
        &["-At", "-d", common::DATABASE, "-c",
          "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history) \
           AND (SELECT sum(tbalance) FROM pgbench_tellers) = (SELECT sum(delta) FROM pgbench_history) \
           AND (SELECT sum(bbalance) FROM pgbench_branches) = (SELECT sum(delta) FROM pgbench_history)"],
    );
    assert_eq!(sums.trim(), "t");
}

#[test]
fn psql_meta_commands_and_a_query() {
    let demo = shared();
    let list = stdout_of("psql", demo, &["-d", common::DATABASE, "-c", "\\l"]);
    assert!(list.contains("template1"), "{list}");
    stdout_of(
        "psql",
        demo,
        &[
            "-d",
            common::DATABASE,
            "-c",
            "CREATE TABLE IF NOT EXISTS psql_t (id int primary key, note text)",
        ],
    );
    let describe = stdout_of("psql", demo, &["-d", common::DATABASE, "-c", "\\d psql_t"]);
    assert!(
        describe.contains("note") && describe.contains("psql_t_pkey"),
        "{describe}"
    );
    let value = stdout_of(
        "psql",
        demo,
        &["-At", "-d", common::DATABASE, "-c", "SELECT 40 + 2"],
    );
    assert_eq!(value.trim(), "42");
}
