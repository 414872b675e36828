//! Start-up restore time with many pull-input and push-output definitions
//! (a measurement, not a timed assertion; run it on purpose):
//!
//! `cargo test --release --test relay_restore -- --ignored --nocapture`
//!
//! `PRIMACY_RESTORE_N` sets how many of each (default 1000). Pull inputs
//! point at a closed loopback port (refused at once, then a 60 s
//! reconnect delay) and outputs at a vacant source, so the number is the
//! gateway's own start-up work, not waiting for remote sources.

mod common;

use std::time::Duration;

use common::TestServer;
use diesel::connection::SimpleConnection;

#[test]
#[ignore = "measurement; run with --ignored --nocapture"]
fn restore_many_definitions() {
    let n: usize = std::env::var("PRIMACY_RESTORE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut s = TestServer::start();
    let mut baseline = Vec::new();
    for _ in 0..3 {
        baseline.push(s.restart_with(|_| {}));
    }
    let port = common::media::free_tcp_port();
    let mut conn = s.db.connect();
    conn.batch_execute(&format!(
        "INSERT INTO pull_inputs (id, node_id, stream, urls, priority, no_input_timeout_ms, reconnect_delay_ms) \
         SELECT gen_random_uuid(), 'test-node', 'pull' || i, ARRAY['rtmp://127.0.0.1:{port}/live/s' || i], 10, 5000, 60000 \
         FROM generate_series(1, {n}) AS i; \
         INSERT INTO push_outputs (id, node_id, stream, targets, reconnect_delay_ms) \
         SELECT gen_random_uuid(), 'test-node', 'out' || i, \
                jsonb_build_array(jsonb_build_array('rtmp://127.0.0.1:{port}/live/o' || i)), 2000 \
         FROM generate_series(1, {n}) AS i;"
    ))
    .expect("insert definitions");
    let mut with = Vec::new();
    for _ in 0..3 {
        with.push(s.restart_with(|_| {}));
        let relays = s.running().relays.clone();
        let (pulls, outputs) = s.runtime().block_on(async {
            (
                relays.pulls.status(None).await.len(),
                relays.outputs.status(None).await.len(),
            )
        });
        assert_eq!((pulls, outputs), (n, n), "every definition runs");
    }
    let ms = |d: &Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let list = |v: &[Duration]| v.iter().map(ms).collect::<Vec<_>>().join(", ");
    eprintln!(
        "start to ready, empty database: {} ms; with {n} pull inputs + {n} push outputs: {} ms",
        list(&baseline),
        list(&with)
    );
    std::thread::sleep(Duration::from_millis(100));
}
