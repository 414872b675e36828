//! The quick run (`primacy-loadtest --quick all`) against the `primacy`
//! binary of the same build, so the load test cannot rot: every quick
//! scenario must finish and write its JSON and the report. Numbers are not
//! asserted (a debug build on a shared machine), only that each scenario
//! measured something.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn gateway_bin() -> PathBuf {
    // target/<profile>/primacy, beside this crate's binary.
    let me = PathBuf::from(env!("CARGO_BIN_EXE_primacy-loadtest"));
    me.with_file_name("primacy")
}

#[test]
fn quick_run_measures_every_quick_scenario() {
    let bin = gateway_bin();
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bin primacy`, or run the whole workspace's tests)",
        bin.display()
    );
    let results = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("loadtest-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&results);
    let mut child = Command::new(env!("CARGO_BIN_EXE_primacy-loadtest"))
        .args(["--quick", "--no-nginx", "--results"])
        .arg(&results)
        .arg("--gateway-bin")
        .arg(&bin)
        .arg("all")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start primacy-loadtest");
    let out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || std::io::read_to_string(out).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the quick run did not finish within 240 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.join().expect("stdout reader");
    println!("{stdout}");
    assert!(
        status.success(),
        "primacy-loadtest --quick all failed: {status}\n{stdout}"
    );

    for scenario in [
        "startup",
        "admission",
        "failover",
        "planned",
        "fanout",
        "churn",
    ] {
        let path = results.join(format!("{scenario}.json"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text).expect("scenario JSON");
        let figures = v["figures"].as_array().expect("figures");
        assert!(!figures.is_empty(), "{scenario} measured nothing: {v}");
        assert!(
            figures
                .iter()
                .all(|f| f["measured"].as_str().is_some_and(|m| !m.is_empty())),
            "{scenario}: a figure without a value: {v}"
        );
    }
    let report = std::fs::read_to_string(results.join("report.md")).expect("report.md");
    assert!(report.contains("DESIGN section 10 targets"), "{report}");
    assert!(
        report.contains("player-visible freeze, primary encoder killed"),
        "{report}"
    );
    let _ = std::fs::remove_dir_all(&results);
}
