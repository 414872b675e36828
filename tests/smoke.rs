mod common;

#[test]
fn server_starts_and_answers_health() {
    let s = common::TestServer::start();
    let (st, body) = s.call("GET", "/api/health", None, None);
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["database"], "ok");
    let (st, _) = s.call("GET", "/api/ready", None, None);
    assert_eq!(st, 200);
}
