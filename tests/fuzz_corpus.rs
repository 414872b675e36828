//! The fuzz targets on stable: every committed corpus file
//! (`fuzz/corpus/<target>/`, minimized from the campaigns in
//! docs/benchmarks.md) and every regression input (`fuzz/regressions/`)
//! replayed through the same functions the cargo-fuzz binaries call, plus a
//! bounded batch of random inputs per target. A crash found by fuzzing stays
//! found without a nightly toolchain.

use std::fs;
use std::path::{Path, PathBuf};

use primacy::fuzzing::TARGETS;
use proptest::prelude::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn every_target_has_a_binary_and_a_corpus() {
    let manifest = fs::read_to_string(root().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            root()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml does not list {name}"
        );
        assert!(
            !files(&root().join("corpus").join(name)).is_empty(),
            "fuzz/corpus/{name} is empty"
        );
    }
}

#[test]
fn committed_corpora_replay_without_a_crash() {
    let mut replayed = 0;
    for (name, target) in TARGETS {
        for file in files(&root().join("corpus").join(name))
            .into_iter()
            .chain(files(&root().join("regressions").join(name)))
        {
            let data = fs::read(&file).expect("a readable corpus file");
            let run = std::panic::catch_unwind(|| target(&data));
            assert!(run.is_ok(), "{name} crashed on {}", file.display());
            replayed += 1;
        }
    }
    println!(
        "replayed {replayed} corpus files through {} targets",
        TARGETS.len()
    );
    assert!(replayed >= TARGETS.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_do_not_crash(
        which in 0..TARGETS.len(),
        data in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        (TARGETS[which].1)(&data);
    }
}
