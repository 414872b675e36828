//! EdDSA signing keys from PEM files (made here with the real openssl):
//! a node with the key pair issues and verifies secrets, a node with only
//! the public key verifies them and cannot be made to sign, and bad PEM
//! files are configuration errors naming the key.

use std::path::{Path, PathBuf};
use std::process::Command;

use primacy::auth::jwt::{KeySet, VerifyError};
use primacy::config::{AuthConfig, KeyAlgorithm, SigningKeyConfig};
use uuid::Uuid;

fn keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let private = dir.join("ed.pem");
    let public = dir.join("ed_pub.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl genpkey failed");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("run openssl")
        .success();
    assert!(ok, "openssl pkey -pubout failed");
    (private, public)
}

fn auth(private: Option<PathBuf>, public: PathBuf) -> AuthConfig {
    AuthConfig {
        active_kid: None,
        signing_keys: vec![SigningKeyConfig {
            kid: "ed1".into(),
            algorithm: KeyAlgorithm::EdDSA,
            secret: None,
            private_key_pem_file: private,
            public_key_pem_file: Some(public),
        }],
        token_cache_ttl_ms: 60_000,
        ..AuthConfig::default()
    }
}

#[test]
fn eddsa_pem_keys_sign_and_verify() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("eddsa-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = keypair(&dir);

    let issuer =
        KeySet::from_config(&auth(Some(private.clone()), public.clone())).expect("key pair loads");
    let (token, secret_id) = (Uuid::new_v4(), Uuid::new_v4());
    let secret = issuer.sign(token, secret_id, 1).expect("signs");
    let v = issuer.verify(&secret).expect("verifies");
    assert_eq!((v.token_id, v.secret_id), (token, secret_id));

    // A verify-only node: the public key alone, made active, cannot sign.
    let err = KeySet::from_config(&auth(None, public.clone())).unwrap_err();
    assert!(err.to_string().contains("auth.active_kid"), "{err}");
    // ...but with another key active it verifies the EdDSA secrets.
    let mut both = auth(None, public.clone());
    both.signing_keys.push(SigningKeyConfig {
        kid: "hs".into(),
        algorithm: KeyAlgorithm::HS256,
        secret: Some(primacy::config::Secret::new(
            "0123456789abcdef0123456789abcdef",
        )),
        private_key_pem_file: None,
        public_key_pem_file: None,
    });
    both.active_kid = Some("hs".into());
    let verifier = KeySet::from_config(&both).expect("verify-only key loads");
    assert_eq!(verifier.verify(&secret).unwrap().token_id, token);

    // Another key pair under the same kid does not verify it.
    let other_dir = dir.join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (_, other_public) = keypair(&other_dir);
    let stranger = KeySet::from_config(&auth(Some(private), other_public)).expect("loads");
    assert_eq!(stranger.verify(&secret), Err(VerifyError::BadSignature));

    // A file that is not a PEM key is an error naming the key.
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a key").unwrap();
    let err = KeySet::from_config(&auth(None, junk)).unwrap_err();
    assert!(
        err.to_string()
            .contains("auth.signing_keys[0].public_key_pem_file"),
        "{err}"
    );
    let err = KeySet::from_config(&auth(None, dir.join("missing.pem"))).unwrap_err();
    assert!(err.to_string().contains("public_key_pem_file"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
