//! The OpenAPI document, generated from the handlers' annotations. The copy
//! in `openapi/primacy.json` is checked against it by a test, so the two
//! cannot drift (regenerate with `UPDATE_OPENAPI=1 cargo test --test openapi`).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{api_keys, audit, cluster, feeds, health, node, outputs, pull_inputs, tokens};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Primacy operator API",
        description = "Publish tokens, the Reprioritize call, operator API keys, the audit log, pull inputs, push outputs and the node drain of the Primacy ingest gateway. \
                       Authenticate with `Authorization: Bearer <API key>`; keys have the scopes read, write or admin \
                       (each includes the ones before it). Errors are JSON `{\"error\": {\"code\": ..., \"message\": ...}}`.",
        license(name = "Apache-2.0"),
    ),
    paths(
        health::health,
        health::ready,
        health::openapi,
        health::metrics,
        feeds::list_streams,
        feeds::show_stream,
        feeds::kick,
        tokens::create,
        tokens::list,
        tokens::show,
        tokens::update,
        tokens::delete,
        tokens::refresh,
        tokens::reprioritize,
        api_keys::create,
        api_keys::list,
        api_keys::revoke,
        audit::list,
        node::drain,
        pull_inputs::create,
        pull_inputs::list,
        pull_inputs::show,
        pull_inputs::delete,
        outputs::create,
        outputs::list,
        outputs::show,
        outputs::patch,
        outputs::delete,
        cluster::nodes,
        cluster::director,
        cluster::drain_node,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "tokens", description = "Publish tokens and Reprioritize"),
        (name = "streams", description = "Live streams, sources and feeds on this node"),
        (name = "api-keys", description = "Operator API keys (admin scope)"),
        (name = "pull-inputs", description = "Persistent pull streams: remote RTMP/SRT sources as feeds in the election"),
        (name = "outputs", description = "Push outputs (restream) to RTMP/SRT targets with failover"),
        (name = "audit", description = "Audit log"),
        (name = "node", description = "This gateway process: drain (admin scope)"),
        (name = "cluster", description = "Nodes of the cluster and the Director (where to publish)"),
        (name = "health", description = "Liveness, readiness, this document"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An operator API key, e.g. `pmy_1a2b3c4d_...`"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "publish_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A publish token secret (the Director only)"))
                    .build(),
            ),
        );
    }
}

/// The document as pretty JSON, exactly as served and as committed.
pub fn document_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The version in the document follows the crate's.
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let mut s = doc.to_pretty_json().expect("OpenAPI document serializes");
    s.push('\n');
    s
}
