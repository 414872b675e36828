//! Push outputs end to end: real encoders publish into the gateway, which
//! pushes the source's primary to ffprobe processes listening for RTMP
//! (`-listen 1`); targets die and come back.

mod common;

use std::time::Duration;

use chrono::{DateTime, Utc};
use common::gateway::Gateway;
use common::media::{self, ffmpeg_source, free_tcp_port, wait_bound, Fixture, Player};
use serde_json::{json, Value};

/// An ffprobe waiting for one RTMP publisher on `port`.
fn listener(port: u16) -> Player {
    let mut p = Player::start_with(
        &format!("rtmp://127.0.0.1:{port}/live/out"),
        &["-listen", "1"],
    );
    if !wait_bound(port, false, Duration::from_secs(20)) {
        p.proc.kill();
        panic!(
            "ffprobe did not listen on port {port} within 20 s: {}",
            p.proc.stderr_text()
        );
    }
    p
}

fn target(port: u16) -> String {
    format!("rtmp://127.0.0.1:{port}/live/out?key=SECRET")
}

fn output(g: &Gateway, id: &str) -> Value {
    let (st, v) = g.api("GET", &format!("/api/v1/outputs/{id}"), None);
    assert_eq!(st, 200, "{v}");
    v
}

/// Wait until the output is connected to `targets[group][index]`.
fn wait_connected(g: &Gateway, id: &str, group: usize, index: usize) -> Value {
    g.wait_for(
        &format!("output connected to target [{group}][{index}]"),
        Duration::from_secs(20),
        || {
            let v = output(g, id);
            let s = &v["status"];
            (s["state"] == "connected" && s["target_group"] == group && s["target_index"] == index)
                .then_some(v)
        },
    )
}

fn since(v: &Value) -> DateTime<Utc> {
    v["status"]["since"].as_str().unwrap().parse().unwrap()
}

#[test]
fn fails_over_within_and_across_groups_and_retries_after_the_delay() {
    let g = Gateway::start();
    let (_, secret) = g.token(&["cam"], 50);
    let _enc = media::publish(Fixture::A, &g.rtmp(&format!("cam?token={secret}")));
    g.wait_feeds("cam", 1, None);
    let (pa1, pa2, pb1) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let mut a1 = listener(pa1);
    let mut a2 = listener(pa2);
    // b1 is not up yet, so whichever group the output starts in, it ends
    // on a1 (b1 refused → group a in order).
    let delay_ms = 1500;
    let body = json!({"stream": "cam", "targets": [[target(pa1), target(pa2)], [target(pb1)]],
                      "reconnect_delay_ms": delay_ms});
    let (st, v) = g.api("POST", "/api/v1/outputs", Some(&body));
    assert_eq!(st, 201, "{v}");
    assert!(
        !v.to_string().contains("SECRET"),
        "target secrets are masked: {v}"
    );
    let id = v["id"].as_str().unwrap().to_owned();
    wait_connected(&g, &id, 0, 0);
    a1.wait_packets(60, Duration::from_secs(20));
    assert!(a1.snapshot()[0].keyframe);
    let mut b1 = listener(pb1);

    // a1 dies → a2 (same group, next in order).
    let killed = Utc::now();
    a1.proc.kill();
    let v = wait_connected(&g, &id, 0, 1);
    a2.wait_packets(30, Duration::from_secs(20));
    assert!(
        a2.snapshot()[0].keyframe,
        "a new target starts on a keyframe"
    );
    eprintln!(
        "output reconnect to the next target: connected {} ms after the kill",
        (since(&v) - killed).num_milliseconds()
    );

    // All of group a dies → b1.
    a2.proc.kill();
    wait_connected(&g, &id, 1, 0);
    b1.wait_packets(30, Duration::from_secs(20));
    let v = output(&g, &id);
    assert_eq!(v["status"]["drops"], 2, "{v}");
    assert!(v["status"]["bytes_sent"].as_u64().unwrap() > 0);
    assert!(v["status"]["last_error"].is_string());

    // Everything dead → it waits reconnect_delay_ms, then tries again.
    b1.proc.kill();
    let waiting = g.wait_for("the output to wait", Duration::from_secs(20), || {
        let v = output(&g, &id);
        (v["status"]["state"] == "waiting").then_some(v)
    });
    let _a1_again = listener(pa1);
    let back = wait_connected(&g, &id, 0, 0);
    let waited = (since(&back) - since(&waiting)).num_milliseconds();
    assert!(
        waited >= delay_ms - 50,
        "reconnected {waited} ms after it began waiting; the delay is {delay_ms} ms"
    );
    let v = g.stream("cam");
    assert_eq!(v["outputs"][0]["id"], id.as_str(), "{v}");
    assert_eq!(v["outputs"][0]["status"]["state"], "connected", "{v}");
    // Metrics name the output.
    let (_, m) = g.s.get_text("/metrics");
    assert!(
        m.contains(&format!("primacy_output_connected{{output=\"{id}\"}} 1")),
        "{m}"
    );
    assert!(m.contains(&format!("primacy_output_drops_total{{output=\"{id}\"}} 3")));
    // Disable, then delete: it disconnects and the row goes.
    let (st, v) = g.api(
        "PATCH",
        &format!("/api/v1/outputs/{id}"),
        Some(&json!({"enabled": false})),
    );
    assert_eq!(st, 200, "{v}");
    let v = g.wait_for("disabled", Duration::from_secs(10), || {
        let v = output(&g, &id);
        (v["status"]["state"] == "disabled").then_some(v)
    });
    assert_eq!(v["enabled"], false);
    let (st, _) = g.api("DELETE", &format!("/api/v1/outputs/{id}"), None);
    assert_eq!(st, 204);
    let (st, _) = g.api("GET", &format!("/api/v1/outputs/{id}"), None);
    assert_eq!(st, 404);
    let (_, a) = g.api("GET", &format!("/api/v1/audit?target=output:{id}"), None);
    let actions: Vec<&str> = a["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["output.delete", "output.update", "output.create"],
        "{a}"
    );
    assert!(!a.to_string().contains("SECRET"), "{a}");
}

#[test]
fn the_pushed_stream_stays_monotonic_across_a_primary_switch() {
    let g = Gateway::start();
    let (_, hi) = g.token(&["cam"], 100);
    let (_, lo) = g.token(&["cam"], 50);
    let mut primary = media::publish(Fixture::A, &g.rtmp(&format!("cam?token={hi}")));
    let _backup = media::publish(Fixture::B, &g.rtmp(&format!("cam?token={lo}")));
    g.wait_feeds("cam", 2, None);
    let port = free_tcp_port();
    let out = listener(port);
    let body = json!({"stream": "cam", "targets": [[target(port)]]});
    let (st, v) = g.api("POST", "/api/v1/outputs", Some(&body));
    assert_eq!(st, 201, "{v}");
    out.wait_packets(90, Duration::from_secs(20));
    let before = out.count();
    primary.kill();
    out.wait_packets(before + 120, Duration::from_secs(20));
    let packets = out.snapshot();
    let (gap, at) = media::check_monotonic(&packets);
    // The backup's GOP is 0.5 s, the primary's 1 s: the switch is visible.
    let after = media::keyframe_spacing(&packets[before + 30..]).expect("keyframes after");
    assert!(
        (after - 0.5).abs() < 0.1,
        "backup on air after the switch (spacing {after})"
    );
    eprintln!(
        "largest inter-arrival gap at the receiver: {:.0} ms (packet {at})",
        gap.as_secs_f64() * 1000.0
    );
}

#[test]
fn pull_inputs_and_outputs_are_restored_after_a_restart() {
    let mut g = Gateway::start();
    // A pull input is the source of `cam`; an output pushes `cam` on.
    let sport = free_tcp_port();
    let src_url = format!("rtmp://127.0.0.1:{sport}/live/src");
    let src = ffmpeg_source(Fixture::A, "flv", &src_url);
    let body =
        json!({"stream": "cam", "urls": [src_url], "priority": 10, "reconnect_delay_ms": 300});
    let (st, v) = g.api("POST", "/api/v1/pull-inputs", Some(&body));
    assert_eq!(st, 201, "{v}");
    let pull = v["id"].as_str().unwrap().to_owned();
    let body = json!({"stream": "cam", "urls": [src_url], "persistent": false});
    let (st, v) = g.api("POST", "/api/v1/pull-inputs", Some(&body));
    assert_eq!(st, 201, "{v}");
    let transient = v["id"].as_str().unwrap().to_owned();
    let oport = free_tcp_port();
    let out = listener(oport);
    let body = json!({"stream": "cam", "targets": [[target(oport)]], "reconnect_delay_ms": 300});
    let (st, v) = g.api("POST", "/api/v1/outputs", Some(&body));
    assert_eq!(st, 201, "{v}");
    let output_id = v["id"].as_str().unwrap().to_owned();
    out.wait_packets(30, Duration::from_secs(20));

    // Both remote ends are one-shot: new ones wait for the restarted node.
    drop(src);
    drop(out);
    let took = g.s.restart_with(|c| c.election.failback_hold_ms = 1_000);
    let _src = ffmpeg_source(Fixture::A, "flv", &src_url);
    let out = listener(oport);
    eprintln!(
        "restart (drain excluded) to ready: {:.1} ms",
        took.as_secs_f64() * 1000.0
    );
    g.wait_feeds("cam", 1, Some(&pull));
    out.wait_packets(30, Duration::from_secs(20));
    wait_connected(&g, &output_id, 0, 0);
    let (st, _) = g.api("GET", &format!("/api/v1/pull-inputs/{transient}"), None);
    assert_eq!(
        st, 404,
        "a pull input that is not persistent is not restored"
    );
}
