//! The committed OpenAPI document (`openapi/primacy.json`) must equal the
//! one generated from the handlers and the one the server serves.
//! Regenerate with `UPDATE_OPENAPI=1 cargo test --test openapi`.

mod common;

use std::path::Path;

fn committed_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/primacy.json")
}

#[test]
fn committed_document_matches_generated() {
    let generated = primacy::api::openapi::document_json();
    let path = committed_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write openapi/primacy.json");
    }
    let committed = std::fs::read_to_string(&path).expect("openapi/primacy.json exists");
    assert!(
        committed == generated,
        "openapi/primacy.json is out of date; run UPDATE_OPENAPI=1 cargo test --test openapi and commit it"
    );
}

#[test]
fn served_document_matches_committed_and_routes() {
    let s = common::TestServer::start();
    let (status, served) = s.get_text("/api/openapi.json");
    assert_eq!(status, 200);
    let committed = std::fs::read_to_string(committed_path()).expect("openapi/primacy.json exists");
    assert_eq!(served, committed);

    // Every documented operation is routed: an unauthenticated call never
    // hits the 404 "no route" fallback.
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        let concrete = path.replace("{id}", "00000000-0000-0000-0000-000000000000");
        for method in ["get", "post", "patch", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let (st, body) = s.call(&method.to_uppercase(), &concrete, None, Some("{}"));
            let no_route = st == 404
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no route"));
            assert!(!no_route, "{method} {path} is documented but not routed");
            let responses = item[method]["responses"].as_object().expect("responses");
            assert!(
                responses.contains_key(&st.to_string()),
                "{method} {path} answered {st} without a key, which the document does not list"
            );
        }
    }
    assert!(
        operations >= 14,
        "expected every operation, found {operations}"
    );
}
