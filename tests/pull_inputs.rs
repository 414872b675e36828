//! Pull inputs end to end: ffmpeg listening as the remote RTMP/SRT source,
//! the gateway pulling it into the election, the API and the database.

mod common;

use std::time::Duration;

use common::gateway::Gateway;
use common::media::{self, ffmpeg_source, free_tcp_port, free_udp_port, Fixture};
use common::{assert_error, TestServer};
use diesel::connection::SimpleConnection;
use diesel::{Connection, PgConnection, RunQueryDsl};
use primacy::auth::api_keys::Scope;
use serde_json::{json, Value};

fn rtmp_source(f: Fixture) -> (media::Proc, String) {
    let port = free_tcp_port();
    let url = format!("rtmp://127.0.0.1:{port}/live/src");
    (ffmpeg_source(f, "flv", &url), url)
}

fn srt_source(f: Fixture) -> (media::Proc, String) {
    let port = free_udp_port();
    let p = ffmpeg_source(
        f,
        "mpegts",
        &format!("srt://127.0.0.1:{port}?mode=listener&latency=120000"),
    );
    (p, format!("srt://127.0.0.1:{port}"))
}

fn create(g: &Gateway, body: Value) -> String {
    let (st, v) = g.api("POST", "/api/v1/pull-inputs", Some(&body));
    assert_eq!(st, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

fn status(g: &Gateway, id: &str) -> Value {
    let (st, v) = g.api("GET", &format!("/api/v1/pull-inputs/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

fn feed_of<'a>(stream: &'a Value, pull_id: &str) -> Option<&'a Value> {
    stream["sources"][0]["feeds"]
        .as_array()?
        .iter()
        .find(|f| f["token_id"] == pull_id)
}

#[test]
fn pulls_from_ffmpeg_rtmp_and_srt_and_join_the_election_at_their_priority() {
    let g = Gateway::start();
    let (_, secret) = g.token(&["cam"], 50);
    let _enc = media::publish(Fixture::A, &g.rtmp(&format!("cam?token={secret}")));
    g.wait_feeds("cam", 1, None);
    let (_rsrc, rtmp) = rtmp_source(Fixture::B);
    let (_ssrc, srt) = srt_source(Fixture::B);
    // Below the encoder over SRT, above it over RTMP.
    let low = create(
        &g,
        json!({"stream": "cam", "urls": [srt], "priority": 10, "no_input_timeout_ms": 3000}),
    );
    let high = create(
        &g,
        json!({"stream": "cam", "urls": [rtmp], "priority": 100, "no_input_timeout_ms": 3000}),
    );
    let v = g.wait_feeds("cam", 3, Some(&high));
    let hf = feed_of(&v, &high).unwrap();
    assert_eq!(hf["protocol"], "pull", "{v}");
    // The stream key after the application is masked, like any secret.
    assert!(rtmp.ends_with("/live/src"), "{rtmp}");
    assert_eq!(
        hf["label"],
        format!("pull {}", rtmp.replace("/live/src", "/live/***")),
        "{v}"
    );
    assert_eq!(hf["priority"], 100);
    assert_eq!(hf["primary"], true);
    let lf = g.wait_for(
        "the SRT pull to be a healthy standby",
        Duration::from_secs(20),
        || {
            let v = g.stream("cam");
            feed_of(&v, &low)
                .filter(|f| f["state"] == "standby")
                .cloned()
        },
    );
    assert_eq!(lf["priority"], 10);
    assert_eq!(lf["protocol"], "pull");
    // The API shows what each input does.
    let s = status(&g, &high);
    assert_eq!(s["status"]["state"], "receiving", "{s}");
    assert_eq!(s["status"]["url_index"], 0);
    assert_eq!(s["status"]["feed_id"], hf["feed_id"]);
    assert!(s["problem"].is_null());
    let s = g.wait_for("bytes counted", Duration::from_secs(10), || {
        let s = status(&g, &low);
        (s["status"]["bytes_received"].as_u64().unwrap_or(0) > 0).then_some(s)
    });
    assert_eq!(s["status"]["state"], "receiving", "{s}");
    // The streams API shows the pull inputs of the stream and their state.
    let v = g.stream("cam");
    let p = v["pull_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == high.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(p["status"]["state"], "receiving", "{v}");
    assert_eq!(p["status"]["feed_id"], hf["feed_id"]);
    // Audited.
    let (_, a) = g.api(
        "GET",
        &format!("/api/v1/audit?target=pull_input:{high}"),
        None,
    );
    assert_eq!(a["items"][0]["action"], "pull_input.create", "{a}");
    // Deleting the input removes its feed and its row.
    let (st, _) = g.api("DELETE", &format!("/api/v1/pull-inputs/{high}"), None);
    assert_eq!(st, 204);
    assert!(feed_of(&g.stream("cam"), &high).is_none());
    let (st, _) = g.api("GET", &format!("/api/v1/pull-inputs/{high}"), None);
    assert_eq!(st, 404);
    let (_, a) = g.api(
        "GET",
        &format!("/api/v1/audit?target=pull_input:{high}"),
        None,
    );
    assert_eq!(a["items"][0]["action"], "pull_input.delete", "{a}");
}

#[test]
fn when_the_first_url_dies_it_moves_to_the_next() {
    let g = Gateway::start();
    let (mut first, rtmp) = rtmp_source(Fixture::A);
    let (_second, srt) = srt_source(Fixture::B);
    let id = create(
        &g,
        json!({"stream": "cam", "urls": [rtmp, srt], "priority": 10,
               "no_input_timeout_ms": 2000, "reconnect_delay_ms": 500}),
    );
    g.wait_for(
        "receiving from the first URL",
        Duration::from_secs(20),
        || {
            let s = status(&g, &id);
            (s["status"]["state"] == "receiving" && s["status"]["url_index"] == 0).then_some(())
        },
    );
    let v = g.wait_feeds("cam", 1, Some(&id));
    let feed0 = feed_of(&v, &id).unwrap()["feed_id"].clone();
    first.kill();
    let s = g.wait_for(
        "receiving from the second URL",
        Duration::from_secs(20),
        || {
            let s = status(&g, &id);
            (s["status"]["state"] == "receiving" && s["status"]["url_index"] == 1).then_some(s)
        },
    );
    assert!(s["status"]["url"].as_str().unwrap().starts_with("srt://"));
    assert!(s["status"]["last_error"].is_string(), "{s}");
    let v = g.wait_feeds("cam", 1, Some(&id));
    let f = feed_of(&v, &id).unwrap();
    assert_ne!(f["feed_id"], feed0, "a new connection is a new feed");
    assert_eq!(s["status"]["failed_passes"], 0);
}

#[test]
fn exceeding_retry_count_deletes_the_input_and_its_row() {
    let g = Gateway::start();
    let dead = [
        format!("rtmp://127.0.0.1:{}/live/x", free_tcp_port()),
        format!("rtmp://127.0.0.1:{}/live/y", free_tcp_port()),
    ];
    let id = create(
        &g,
        json!({"stream": "cam", "urls": dead, "retry_count": 2, "reconnect_delay_ms": 200}),
    );
    g.wait_for("the input to expire", Duration::from_secs(20), || {
        let (st, _) = g.api("GET", &format!("/api/v1/pull-inputs/{id}"), None);
        (st == 404).then_some(())
    });
    let mut conn = g.s.db.connect();
    let n: i64 = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM pull_inputs WHERE id = '{id}'"
    ))
    .get_result::<Count>(&mut conn)
    .unwrap()
    .n;
    assert_eq!(n, 0, "the row is gone");
    let (_, a) = g.api(
        "GET",
        &format!("/api/v1/audit?target=pull_input:{id}"),
        None,
    );
    assert_eq!(a["items"][0]["action"], "pull_input.expired", "{a}");
    assert_eq!(a["items"][0]["actor"], "system");
    // Nothing comes back after a restart.
    let mut g = g;
    g.s.restart_with(|_| {});
    let (_, list) = g.api("GET", "/api/v1/pull-inputs", None);
    assert_eq!(list["total"], 0, "{list}");
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct RawRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    r: String,
}

fn raw(conn: &mut PgConnection, table: &str, id: &str) -> String {
    diesel::sql_query(format!(
        "SELECT row_to_json(t)::text AS r FROM {table} t WHERE id = '{id}'"
    ))
    .get_result::<RawRow>(conn)
    .unwrap()
    .r
}

#[test]
fn an_unusable_row_is_skipped_left_intact_and_never_overwritten() {
    let bad_pull = uuid::Uuid::new_v4().to_string();
    let good_pull = uuid::Uuid::new_v4().to_string();
    let bad_output = uuid::Uuid::new_v4().to_string();
    let dead = format!("rtmp://127.0.0.1:{}/live/x", free_tcp_port());
    // The rows are written by SQL before the gateway starts.
    let s = TestServer::start_with(|c| {
        let mut conn = PgConnection::establish(c.database.url.expose()).unwrap();
        conn.batch_execute(&format!(
            "INSERT INTO pull_inputs (id, node_id, stream, urls, no_input_timeout_ms, reconnect_delay_ms) VALUES \
             ('{bad_pull}', 'test-node', 'cam', '{{ftp://nowhere/x}}', 5000, 1000), \
             ('{good_pull}', 'test-node', 'cam', '{{{dead}}}', 5000, 60000); \
             INSERT INTO push_outputs (id, node_id, stream, targets, reconnect_delay_ms) VALUES \
             ('{bad_output}', 'test-node', 'cam', '\"rtmp://a/live/b\"', 1000)"
        ))
        .unwrap();
    });
    let write = s.db.api_key(&[Scope::Write]);
    let read = s.db.api_key(&[Scope::Read]);
    let mut conn = s.db.connect();
    let before_pull = raw(&mut conn, "pull_inputs", &bad_pull);
    let before_output = raw(&mut conn, "push_outputs", &bad_output);

    // Listed with its problem; the good one runs, the bad one does not.
    let (st, list) = s.call("GET", "/api/v1/pull-inputs", Some(&read), None);
    assert_eq!(st, 200, "{list}");
    let items = list["items"].as_array().unwrap();
    let bad = items.iter().find(|i| i["id"] == bad_pull.as_str()).unwrap();
    let good = items
        .iter()
        .find(|i| i["id"] == good_pull.as_str())
        .unwrap();
    assert!(
        bad["problem"].as_str().unwrap().contains("urls[0]"),
        "{bad}"
    );
    assert!(bad["status"].is_null(), "{bad}");
    assert!(
        good["problem"].is_null() && good["status"].is_object(),
        "{good}"
    );

    // Writes over it are refused, naming the row.
    let (st, v) = s.call(
        "DELETE",
        &format!("/api/v1/pull-inputs/{bad_pull}"),
        Some(&write),
        None,
    );
    let msg = assert_error(st, &v, 409, "conflict");
    assert!(
        msg.contains(&bad_pull) && msg.contains("left untouched"),
        "{msg}"
    );
    let body = json!({"id": bad_pull, "stream": "cam", "urls": [dead]}).to_string();
    let (st, v) = s.call("POST", "/api/v1/pull-inputs", Some(&write), Some(&body));
    assert!(assert_error(st, &v, 409, "conflict").contains(&bad_pull));
    let (st, v) = s.call(
        "PATCH",
        &format!("/api/v1/outputs/{bad_output}"),
        Some(&write),
        Some(r#"{"enabled": false}"#),
    );
    assert!(assert_error(st, &v, 409, "conflict").contains(&bad_output));
    let (st, v) = s.call(
        "DELETE",
        &format!("/api/v1/outputs/{bad_output}"),
        Some(&write),
        None,
    );
    assert!(assert_error(st, &v, 409, "conflict").contains(&bad_output));
    let (st, v) = s.call(
        "GET",
        &format!("/api/v1/outputs/{bad_output}"),
        Some(&read),
        None,
    );
    assert_eq!(st, 200);
    assert!(v["problem"].as_str().unwrap().contains("targets"), "{v}");

    // A read key cannot write.
    let (st, v) = s.call("POST", "/api/v1/pull-inputs", Some(&read), Some(&body));
    assert_error(st, &v, 403, "forbidden");

    // Nothing changed, also after a restart.
    assert_eq!(raw(&mut conn, "pull_inputs", &bad_pull), before_pull);
    assert_eq!(raw(&mut conn, "push_outputs", &bad_output), before_output);
    let mut s = s;
    s.restart_with(|_| {});
    assert_eq!(raw(&mut conn, "pull_inputs", &bad_pull), before_pull);
    assert_eq!(raw(&mut conn, "push_outputs", &bad_output), before_output);
    // Invalid input is refused with the field named.
    let body = json!({"stream": "cam", "urls": ["http://x/a/b"]}).to_string();
    let write = s.db.api_key(&[Scope::Write]);
    let (st, v) = s.call("POST", "/api/v1/pull-inputs", Some(&write), Some(&body));
    assert!(assert_error(st, &v, 422, "validation_failed").contains("urls[0]"));
}
