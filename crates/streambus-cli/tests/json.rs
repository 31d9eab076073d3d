//! `--json` of `publish` and `topology check|apply`, against a real
//! `redis-server` (one per test, from `streambus-testkit`): every line or
//! document parses, and what it says is what Redis holds (entry ids and
//! envelope ids read back with XRANGE, groups with XINFO GROUPS).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use streambus::partition::Partitions;
use streambus_testkit::RedisServer;

use common::data::{has_group, numbered_with_blanks, xlen};
use common::{example, json_lines, ok, run, run_with, sb, sb_redis, text};

const DEADLINE: Duration = Duration::from_secs(20);

/// The fields of entry `id` of `key`, read with `XRANGE key id id`; `None`
/// when there is no such entry.
fn entry(server: &RedisServer, key: &str, id: &str) -> Option<HashMap<String, String>> {
    let out = server.cli(&["XRANGE", key, id, id]);
    let mut lines = out.lines();
    // redis-cli prints the entry id, then each field and value on a line.
    assert_eq!(lines.next()?, id, "{out}");
    let rest: Vec<&str> = lines.collect();
    Some(
        rest.chunks(2)
            .map(|kv| (kv[0].to_owned(), kv[1].to_owned()))
            .collect(),
    )
}

/// Checks one `publish --json` line: its keys, and that its entry is in
/// `key` with its envelope id (or, for `envelope_id: null`, without one).
/// Returns the entry's fields.
#[track_caller]
fn check_published(
    server: &RedisServer,
    v: &Value,
    stream: &str,
    key: &str,
) -> HashMap<String, String> {
    assert_eq!(v["stream"], stream, "{v}");
    let id = v["entry_id"].as_str().unwrap_or_else(|| panic!("{v}"));
    let fields = entry(server, key, id).unwrap_or_else(|| panic!("no entry {id} in {key}: {v}"));
    match v["envelope_id"].as_str() {
        Some(envelope) => assert_eq!(fields["id"], envelope, "{v}"),
        None => assert!(
            v["envelope_id"].is_null() && !fields.contains_key("data"),
            "{v}"
        ),
    }
    fields
}

/// A failed run: nothing on stdout, one `error: ...` line on stderr.
#[track_caller]
fn fails_quietly(o: &Output, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(text(&o.stdout), "", "stdout must stay empty");
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err:?}"
    );
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

// ---------------------------------------------------------------- publish

#[test]
fn publish_json_arguments_give_one_object_each() {
    let server = RedisServer::start();
    let out = ok(&run(
        sb_redis(
            &server,
            &["publish", "s", "--json", "--key", "k", r#"{"a":1}"#, "[2]"],
        ),
        DEADLINE,
    ));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{out}");
    for (v, data) in lines.iter().zip([r#"{"a":1}"#, "[2]"]) {
        let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["stream", "entry_id", "envelope_id"]),
            "{v}"
        );
        let fields = check_published(&server, v, "s", "s");
        assert_eq!(fields["data"], data);
        assert_eq!(fields["key"], "k");
    }
    assert_ne!(lines[0]["envelope_id"], lines[1]["envelope_id"]);
    assert_eq!(xlen(&server, "s"), 2);
}

#[test]
fn publish_json_of_a_raw_entry_has_no_envelope_id() {
    let server = RedisServer::start();
    let out = ok(&run(
        sb_redis(
            &server,
            &["publish", "s", "--field", "a=1", "--field", "b=x", "--json"],
        ),
        DEADLINE,
    ));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    let fields = check_published(&server, &lines[0], "s", "s");
    assert_eq!(
        fields,
        HashMap::from([("a".into(), "1".into()), ("b".into(), "x".into())])
    );
}

#[test]
fn publish_json_from_stdin_gives_one_object_per_line_in_order() {
    let server = RedisServer::start();
    // Blank lines publish nothing and print nothing.
    let input = numbered_with_blanks(1500, 400);
    let out = ok(&run_with(
        sb_redis(&server, &["publish", "s", "--json"]),
        input.as_bytes(),
        DEADLINE,
    ));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1500);
    assert_eq!(xlen(&server, "s"), 1500);
    // Every line, against what the stream holds (read back in order).
    let tailed = json_lines(&ok(&run(
        sb_redis(&server, &["tail", "s", "--from", "0", "--count", "1500"]),
        DEADLINE,
    )));
    assert_eq!(tailed.len(), 1500);
    for (i, (v, row)) in lines.iter().zip(&tailed).enumerate() {
        assert_eq!(v["stream"], "s");
        assert_eq!(v["entry_id"], row["entry_id"], "line {i}");
        assert_eq!(v["envelope_id"], row["id"], "line {i}");
        assert_eq!(row["data"]["n"], i, "line {i}");
    }
    // And a few by XRANGE itself.
    for i in [0, 749, 1499] {
        let fields = check_published(&server, &lines[i], "s", "s");
        assert_eq!(fields["data"], format!("{{\"n\":{i}}}"));
    }
}

#[test]
fn publish_json_to_partitions_names_the_partition() {
    let server = RedisServer::start();
    let parts = Partitions::new("orders", 3).unwrap();
    // By key: every message on its key's partition.
    for key in ["host-1", "host-2", "host-3", "host-4"] {
        let out = ok(&run(
            sb_redis(
                &server,
                &[
                    "publish",
                    "orders",
                    "--partitions",
                    "3",
                    "--key",
                    key,
                    "--json",
                    "{}",
                    "{}",
                ],
            ),
            DEADLINE,
        ));
        let lines = json_lines(&out);
        assert_eq!(lines.len(), 2, "{out}");
        for v in &lines {
            let index = parts.index_for_key(key);
            assert_eq!(v["partition"], index, "{v}");
            assert_eq!(v["partition_key"], parts.keys()[index], "{v}");
            check_published(&server, v, "orders", &parts.keys()[index]);
        }
    }
    // From stdin without a key: in turn, so each partition gets two.
    let input: String = (0..6).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let out = ok(&run_with(
        sb_redis(
            &server,
            &["publish", "orders", "--partitions", "3", "--json"],
        ),
        input.as_bytes(),
        DEADLINE,
    ));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 6, "{out}");
    let mut per_partition = [0; 3];
    for (i, v) in lines.iter().enumerate() {
        let index = v["partition"].as_u64().unwrap() as usize;
        per_partition[index] += 1;
        assert_eq!(v["partition_key"], parts.keys()[index], "{v}");
        let fields = check_published(&server, v, "orders", &parts.keys()[index]);
        assert_eq!(fields["data"], format!("{{\"i\":{i}}}"));
    }
    assert_eq!(per_partition, [2, 2, 2]);
}

#[test]
fn publish_json_errors_stay_on_stderr() {
    let server = RedisServer::start();
    let o = run(
        sb_redis(&server, &["publish", "s", "--json", "{}", "{nope"]),
        DEADLINE,
    );
    fails_quietly(&o, "JSON argument 2");
    assert_eq!(server.cli(&["EXISTS", "s"]), "0");
    // From stdin: the lines before a bad one are published and printed.
    let o = run_with(
        sb_redis(&server, &["publish", "s", "--json"]),
        b"{\"n\":1}\nnope\n{\"n\":3}\n",
        DEADLINE,
    );
    assert_eq!(o.status.code(), Some(1));
    let lines = json_lines(&text(&o.stdout));
    assert_eq!(lines.len(), 1);
    check_published(&server, &lines[0], "s", "s");
    assert!(text(&o.stderr).contains("line 2"), "{}", text(&o.stderr));
}

// ---------------------------------------------------------------- topology

#[test]
fn topology_check_json_lists_what_was_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = example();
    let path = path.to_str().unwrap();
    let out = ok(&run(
        sb(dir.path(), &["topology", "check", path, "--json"]),
        DEADLINE,
    ));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["file"], path);
    assert_eq!(v["summary"], json!({"streams": 5, "groups": 5}));
    let streams = v["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 5);
    assert!(
        streams.contains(&json!({
            "stream": "aurora:alerts", "partitions": 1, "groups": ["alert-processor"],
        })),
        "{v}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[streams.s.groups.g]\nbatch_size = 0\n").unwrap();
    let o = run(
        sb(
            dir.path(),
            &["topology", "check", bad.to_str().unwrap(), "--json"],
        ),
        DEADLINE,
    );
    fails_quietly(&o, "line 2: streams.s.groups.g.batch_size");
}

#[test]
fn topology_apply_json_says_what_was_found_and_done() {
    let server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("streambus.toml"),
        r#"
[streams.new.groups.g]
start = "$"
[streams.big]
retention = { max_len = 10 }
[streams.big.groups.a]
[streams.lonely]
[streams.parts]
partitions = 3
[streams.parts.groups.p]
"#,
    )
    .unwrap();
    for i in 0..300 {
        server.cli(&["XADD", "big", "*", "n", &i.to_string()]);
    }
    let apply = || {
        let out = ok(&run(
            sb(
                dir.path(),
                &["--redis", &server.url(), "topology", "apply", "--json"],
            ),
            DEADLINE,
        ));
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["file"], "streambus.toml");
        assert_eq!(v["redis"], server.url());
        // By name: the streams come in the file's sorted order.
        let streams: HashMap<String, Value> = v["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["stream"].as_str().unwrap().to_owned(), s.clone()))
            .collect();
        (v, streams)
    };

    let (first, streams) = apply();
    assert_eq!(
        streams["new"],
        json!({
            "stream": "new", "partitions": 1, "status": "created", "detail": null,
            "groups": [{"group": "g", "status": "created", "start": "$"}],
        })
    );
    assert_eq!(streams["big"]["status"], "differs");
    let why = streams["big"]["detail"].as_str().unwrap();
    assert!(
        why.starts_with("300 entries, retention max_len 10"),
        "{why}"
    );
    assert_eq!(
        streams["big"]["groups"],
        json!([{"group": "a", "status": "created", "start": "0"}])
    );
    assert_eq!(streams["lonely"]["status"], "missing");
    assert_eq!(streams["lonely"]["groups"], json!([]));
    assert_eq!(streams["parts"]["partitions"], 3);
    assert_eq!(streams["parts"]["status"], "created");
    assert_eq!(
        first["summary"],
        json!({"streams": 4, "streams_created": 2, "groups": 3, "groups_created": 3, "differ": 1})
    );
    // What it says it created is there.
    assert!(has_group(&server, "new", "g"));
    assert!(has_group(&server, "big", "a"));
    for key in Partitions::new("parts", 3).unwrap().keys() {
        assert!(has_group(&server, key, "p"), "{key}");
    }
    assert_eq!(server.cli(&["EXISTS", "lonely"]), "0");
    assert_eq!(xlen(&server, "big"), 300, "nothing trimmed");

    // A second run: everything exists, nothing created.
    let (second, streams) = apply();
    assert_eq!(streams["new"]["status"], "exists");
    assert_eq!(
        streams["new"]["groups"],
        json!([{"group": "g", "status": "exists", "start": null}])
    );
    assert_eq!(streams["parts"]["status"], "exists");
    assert_eq!(
        second["summary"],
        json!({"streams": 4, "streams_created": 0, "groups": 3, "groups_created": 0, "differ": 1})
    );
}
