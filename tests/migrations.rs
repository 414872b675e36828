//! The embedded migrations: apply, revert, re-apply, idempotence, through
//! the library and through `primacy migrate`.

mod common;

use common::TestDb;
use diesel::{PgConnection, RunQueryDsl};

const TABLES: [&str; 5] = [
    "publish_tokens",
    "api_keys",
    "audit_log",
    "pull_inputs",
    "push_outputs",
];

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

/// The Primacy tables present in the public schema, sorted.
fn tables(conn: &mut PgConnection) -> Vec<String> {
    let rows: Vec<Name> = diesel::sql_query(
        "SELECT table_name::text AS name FROM information_schema.tables \
         WHERE table_schema = 'public' \
           AND table_name IN ('publish_tokens', 'api_keys', 'audit_log', \
                              'pull_inputs', 'push_outputs') \
         ORDER BY 1",
    )
    .load(conn)
    .expect("query information_schema");
    rows.into_iter().map(|r| r.name).collect()
}

fn all_tables() -> Vec<String> {
    let mut t: Vec<String> = TABLES.iter().map(|s| s.to_string()).collect();
    t.sort();
    t
}

/// The versions diesel would report, from the migration directory names.
fn expected_versions() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("migrations directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("up.sql").exists())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split('_').next().unwrap().replace('-', "")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn migrations_apply_revert_and_reapply() {
    let db = TestDb::empty();
    let mut conn = db.connect();
    assert!(tables(&mut conn).is_empty());

    let applied = primacy::store::run_migrations(&mut conn).expect("migrate");
    assert!(!applied.is_empty());
    assert_eq!(applied, expected_versions());
    assert_eq!(tables(&mut conn), all_tables());
    // The tables are usable.
    for t in TABLES {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let n: N = diesel::sql_query(format!("SELECT count(*) AS n FROM {t}"))
            .get_result(&mut conn)
            .expect("count rows");
        assert_eq!(n.n, 0, "{t}");
    }
    // Idempotent.
    assert!(primacy::store::run_migrations(&mut conn)
        .unwrap()
        .is_empty());

    // Data in, revert all: tables (and data) gone.
    let (_, _) = primacy::api::api_keys::create_key(
        &mut conn,
        "k",
        &[primacy::auth::api_keys::Scope::Read],
        "test",
    )
    .expect("create key");
    let mut reverted = primacy::store::revert_all_migrations(&mut conn).expect("revert");
    reverted.sort();
    assert_eq!(reverted, applied);
    assert!(tables(&mut conn).is_empty(), "{:?}", tables(&mut conn));
    // Reverting with nothing applied is a no-op.
    assert!(primacy::store::revert_all_migrations(&mut conn)
        .unwrap()
        .is_empty());

    // Again from scratch, then nothing more to apply.
    assert_eq!(primacy::store::run_migrations(&mut conn).unwrap(), applied);
    assert_eq!(tables(&mut conn), all_tables());
    assert!(primacy::store::run_migrations(&mut conn)
        .unwrap()
        .is_empty());
    let (rows, total) = primacy::store::api_keys::list(&mut conn, 0, 10).unwrap();
    assert_eq!((rows.len(), total), (0, 0), "data went with the revert");

    // Revert the last one alone.
    let last = primacy::store::revert_last_migration(&mut conn).expect("revert last");
    assert_eq!(&last, applied.last().unwrap());
    if applied.len() == 1 {
        assert!(tables(&mut conn).is_empty());
    }
    assert_eq!(
        primacy::store::run_migrations(&mut conn).unwrap(),
        vec![last]
    );
    assert_eq!(tables(&mut conn), all_tables());
}

fn primacy(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    common::run_primacy(args, env)
}

#[test]
fn migrate_command_applies_reverts_and_reapplies() {
    let db = TestDb::empty();
    let env = [("PRIMACY_DATABASE_URL", db.url.as_str())];
    let versions = expected_versions();

    let (code, out, err) = primacy(&["migrate"], &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("applied {} migration(s)", versions.len())),
        "{out}"
    );
    for v in &versions {
        assert!(out.contains(v.as_str()), "{out} should name {v}");
    }
    assert_eq!(tables(&mut db.connect()), all_tables());

    let (code, out, err) = primacy(&["migrate"], &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("up to date"), "{out}");

    let (code, out, err) = primacy(&["migrate", "--revert-all"], &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.contains(&format!("reverted {} migration(s)", versions.len())),
        "{out}"
    );
    assert!(tables(&mut db.connect()).is_empty());

    let (code, out, err) = primacy(&["migrate"], &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("applied"), "{out}");
    assert_eq!(tables(&mut db.connect()), all_tables());

    let (code, out, err) = primacy(&["migrate", "--revert-last"], &env);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains(versions.last().unwrap().as_str()), "{out}");
    let (code, _, _) = primacy(&["migrate"], &env);
    assert_eq!(code, 0);
    assert_eq!(tables(&mut db.connect()), all_tables());

    // The two revert flags conflict.
    let (code, _, err) = primacy(&["migrate", "--revert-all", "--revert-last"], &env);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
}

#[test]
fn migrate_command_fails_cleanly_without_a_database() {
    // A database that does not exist on a server that does.
    let missing = format!(
        "{}/primacy_missing_{}",
        common::admin_url().rsplit_once('/').unwrap().0,
        uuid::Uuid::new_v4().simple()
    );
    let (code, out, err) = primacy(&["migrate"], &[("PRIMACY_DATABASE_URL", &missing)]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("error:"), "{err}");
    assert!(err.contains("database"), "{err}");
    let (code, _, err) = primacy(&["migrate"], &[("PRIMACY_DATABASE_URL", "mysql://x")]);
    assert_eq!(code, 1);
    assert!(err.contains("database.url"), "{err}");
}
