//! `streambus topology check|apply` and the topology file as the source of
//! every command's defaults, against a real `redis-server` (testkit).

mod common;

use std::time::Duration;

use common::{example, run, sb, sigterm, text, wait};
use streambus_testkit::wait::wait_until;
use streambus_testkit::RedisServer;

const DEADLINE: Duration = Duration::from_secs(20);

#[test]
fn the_example_file_checks_ok() {
    let dir = tempfile::tempdir().unwrap();
    let path = example();
    let out = run(
        sb(dir.path(), &["topology", "check", path.to_str().unwrap()]),
        DEADLINE,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok: 5 streams, 5 groups");
}

#[test]
fn a_streambus_toml_in_the_current_directory_is_found() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example(), dir.path().join("streambus.toml")).unwrap();
    let out = run(sb(dir.path(), &["topology", "check"]), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut cmd = sb(dir.path(), &["topology", "check"]);
    cmd.env("STREAMBUS_CONFIG", "missing.toml");
    let out = run(cmd, DEADLINE);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("missing.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn errors_name_the_line_and_the_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[streams.\"aurora:alerts\".groups.alert-processor]\nbatch_size = 10\nvisibility_timeout = \"5x\"\n",
            "line 3: streams.\"aurora:alerts\".groups.alert-processor.visibility_timeout: ",
            "invalid duration \"5x\"",
        ),
        (
            "[streams.s.groups.g]\n\nconcurency = 4\n",
            "line 3: streams.s.groups.g",
            "unknown field `concurency`",
        ),
        (
            "[streams.s.groups.g]\nstart = \"yesterday\"\n",
            "line 2: streams.s.groups.g.start: ",
            "invalid start \"yesterday\"",
        ),
        (
            "[streams.s]\nretention = { max_len = 10, max_age = \"1d\" }\n",
            "line 2: streams.s.retention",
            "not both",
        ),
        (
            "[streams.s.groups.g]\nbatch_size = 0\n",
            "line 2: streams.s.groups.g.batch_size: ",
            "at least 1",
        ),
        (
            "[service]\nlisten = \"localhost\"\n",
            "line 2: service.listen: ",
            "",
        ),
        (
            "[service]\nstreams = [\"ok\", \"\"]\n",
            "line 2: service.streams",
            "stream name is empty",
        ),
        ("[service\nlisten = 1\n", "line 1", ""),
        (
            "[streams.s]\npartitions = 4\n[streams.s.groups.g]\nlease_time = \"4s\"\nlease_renew = \"3s\"\n",
            "line 5: streams.s.groups.g.lease_renew: ",
            "at most half of lease_time (4s)",
        ),
        (
            "[streams.s.groups.g]\nlease_renew = \"0s\"\n",
            "line 2: streams.s.groups.g.lease_renew: ",
            "above zero",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (body, located, message)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&file, body).unwrap();
        let out = run(
            sb(dir.path(), &["topology", "check", file.to_str().unwrap()]),
            DEADLINE,
        );
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(located), "case {i}: want {located:?} in {err}");
        assert!(err.contains(message), "case {i}: want {message:?} in {err}");
        assert!(err.contains(&format!("bad{i}.toml")), "case {i}: {err}");
        assert_eq!(err.lines().count(), 1, "case {i}: {err}");
    }
}

#[test]
fn apply_creates_groups_and_is_idempotent() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = example();
    let apply = || {
        run(
            sb(
                dir.path(),
                &[
                    "--redis",
                    &server.url(),
                    "topology",
                    "apply",
                    path.to_str().unwrap(),
                ],
            ),
            DEADLINE,
        )
    };
    let first = apply();
    let stdout = text(&first.stdout);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(stdout.contains("stream aurora:alerts: created"), "{stdout}");
    assert!(
        stdout.contains("group aurora:alerts alert-processor: created (start 0)"),
        "{stdout}"
    );
    assert!(stdout.contains("5 groups (5 created)"), "{stdout}");
    assert!(server
        .cli(&["XINFO", "GROUPS", "aurora:audit"])
        .contains("audit-logger"));

    let second = apply();
    let stdout = text(&second.stdout);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(!stdout.contains("created\n"), "{stdout}");
    assert!(stdout.contains("stream aurora:alerts: exists"), "{stdout}");
    assert!(
        stdout.contains("group aurora:audit audit-logger: exists"),
        "{stdout}"
    );
    assert!(
        stdout.contains("(0 created), 5 groups (0 created), 0 differ"),
        "{stdout}"
    );
}

#[test]
fn apply_reports_a_stream_beyond_its_retention() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("streambus.toml"),
        "[streams.big]\nretention = { max_len = 10 }\n[streams.big.groups.g]\n",
    )
    .unwrap();
    for i in 0..300 {
        server.cli(&["XADD", "big", "*", "n", &i.to_string()]);
    }
    let out = run(
        sb(dir.path(), &["--redis", &server.url(), "topology", "apply"]),
        DEADLINE,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("stream big: differs (300 entries, retention max_len 10"),
        "{stdout}"
    );
    assert!(stdout.contains("group big g: created"), "{stdout}");
    // Nothing was trimmed or deleted.
    assert_eq!(server.cli(&["XLEN", "big"]), "300");
}

#[test]
fn publish_trims_by_the_file_retention_unless_maxlen_is_given() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("streambus.toml"),
        format!(
            "redis = \"{}\"\n[streams.s]\nretention = {{ max_len = 5, approximate = false }}\n",
            server.url()
        ),
    )
    .unwrap();
    let docs: Vec<String> = (0..20).map(|i| format!("{{\"n\":{i}}}")).collect();
    let mut args = vec!["publish", "s"];
    args.extend(docs.iter().map(String::as_str));
    // The Redis URL comes from the file too.
    let out = run(sb(dir.path(), &args), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.cli(&["XLEN", "s"]), "5");

    let mut args = vec!["publish", "s", "--maxlen", "1000"];
    args.extend(docs.iter().map(String::as_str));
    let out = run(sb(dir.path(), &args), DEADLINE);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.cli(&["XLEN", "s"]), "25");
}

/// The lease key's time to live (ms) once a member holds it.
fn lease_pttl(server: &RedisServer, key: &str) -> u64 {
    // -2 (no key) does not parse: not held yet.
    let mut ttl = None;
    wait_until(DEADLINE, "a member holds the lease", || {
        ttl = server.cli(&["PTTL", key]).parse::<u64>().ok();
        ttl.is_some()
    });
    ttl.unwrap()
}

/// `consume --exec` on a partitioned stream leases its partitions with the
/// group's `lease_time` / `lease_renew` from the file (the lease key's TTL
/// is above the default 10 s), and `--lease-time` overrides the file.
#[test]
fn consume_exec_takes_the_lease_settings_from_the_file() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("streambus.toml"),
        "[streams.jobs]\npartitions = 2\n[streams.jobs.groups.g]\nlease_time = \"40s\"\nlease_renew = \"5s\"\n",
    )
    .unwrap();
    let key = streambus::keys::partition_lease(
        &streambus::partition::Partitions::new("jobs", 2)
            .unwrap()
            .keys()[0],
        "g",
    );
    let url = server.url();
    let member = |extra: &[&str]| {
        let mut args = vec![
            "--redis",
            &url,
            "consume",
            "jobs",
            "-g",
            "g",
            "--exec",
            "cat >/dev/null",
            "--max-wait",
            "200ms",
        ];
        args.extend_from_slice(extra);
        let mut c = sb(dir.path(), &args);
        c.stdout(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let stop = |m| {
        sigterm(&m);
        let o = wait(m, DEADLINE);
        assert!(o.status.success(), "{:?}\n{}", o.status, text(&o.stderr));
    };

    // The file's 40 s, renewed every 5 s: never below 35 s once held.
    let m = member(&[]);
    let ttl = lease_pttl(&server, &key);
    assert!((35_000..=40_000).contains(&ttl), "PTTL {ttl} ms");
    // A graceful stop releases it, so that the next member takes it at once.
    stop(m);
    assert_eq!(server.cli(&["EXISTS", &key]), "0");

    // The flag's 20 s, renewed at a third of it: between 13.3 s and 20 s.
    let m = member(&["--lease-time", "20s"]);
    let ttl = lease_pttl(&server, &key);
    assert!((13_000..=20_000).contains(&ttl), "PTTL {ttl} ms");
    stop(m);
}
