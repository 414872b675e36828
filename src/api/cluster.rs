//! `/api/v1/cluster/nodes` (which nodes are live) and the Director
//! (`/api/v1/director/publish`: where an encoder may publish, StreamLink
//! style, as a balance group of ordered groups by region).

use actix_web::{web, HttpRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Admin, Auth, Read};
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::auth::publish::{AdmitError, Refusal};
use crate::cluster::{commands, NodeInfo, RedisState};
use crate::domain::{SourceId, StreamName};
use crate::store::audit::{decision, Change};

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClusterNodes {
    /// This node's id.
    pub node: String,
    /// Redis state; absent on a node without `redis.url` (single node).
    pub redis: Option<RedisState>,
    /// Live nodes by region, then node id, this one included.
    pub nodes: Vec<NodeInfo>,
}

fn membership(state: &AppState) -> Result<&crate::cluster::Membership, ApiError> {
    state
        .membership
        .get()
        .ok_or_else(|| ApiError::unavailable("not_ready", "the node is starting up"))
}

/// The live nodes of the cluster with region, addresses, lease age, feeds
/// and players.
#[utoipa::path(get, path = "/api/v1/cluster/nodes", tag = "cluster",
    responses(
        (status = 200, description = "Live nodes", body = ClusterNodes),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 503, description = "Starting up", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn nodes(
    state: web::Data<AppState>,
    _auth: Auth<Read>,
) -> Result<web::Json<ClusterNodes>, ApiError> {
    let m = membership(&state)?;
    Ok(web::Json(ClusterNodes {
        node: state.config.node_id.clone(),
        redis: m.cluster.as_ref().map(|c| c.redis_state()),
        nodes: m.nodes(&state.metrics, state.readiness.is_draining()),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DirectorQuery {
    /// The stream to publish.
    pub stream: String,
    /// Source id (default: the default source).
    #[serde(rename = "sourceId")]
    pub source_id: Option<String>,
    /// The caller's region: its nodes come first. Default: the configured
    /// `cluster.preferred_region`, else this node's region.
    pub region: Option<String>,
}

/// One ingest endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct IngestTarget {
    pub node: String,
    pub region: String,
    /// Publish URL without the token: RTMP `rtmp://HOST:PORT/live/STREAM`
    /// (append `?token=TOKEN`), SRT `srt://HOST:PORT` with the stream id in
    /// `streamid` (add `,s=TOKEN`).
    pub url: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DirectorAnswer {
    pub stream: String,
    /// The region whose nodes come first.
    pub region: String,
    /// A balance group of ordered groups, one group per region, the
    /// preferred region first: try a group's targets in order, then the
    /// next group.
    pub rtmp: Vec<Vec<IngestTarget>>,
    pub srt: Vec<Vec<IngestTarget>>,
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Where to publish a stream: ingest URLs of the live, non-draining nodes.
/// Authenticated with the publish token (`Authorization: Bearer TOKEN`),
/// which must allow the stream.
#[utoipa::path(get, path = "/api/v1/director/publish", tag = "cluster",
    params(DirectorQuery),
    responses(
        (status = 200, description = "Ingest URLs by region", body = DirectorAnswer),
        (status = 400, description = "Malformed query (stream missing)", body = ErrorBody),
        (status = 401, description = "Missing or invalid publish token", body = ErrorBody),
        (status = 403, description = "The token may not publish this stream", body = ErrorBody),
        (status = 422, description = "Invalid stream name or source id", body = ErrorBody),
        (status = 503, description = "Starting up or database unavailable", body = ErrorBody),
    ),
    security(("publish_token" = [])))]
pub async fn director(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<DirectorQuery>,
) -> Result<web::Json<DirectorAnswer>, ApiError> {
    let q = query.into_inner();
    let stream: StreamName = q
        .stream
        .parse()
        .map_err(|e: crate::domain::NameError| ApiError::unprocessable(format!("stream: {e}")))?;
    let source: SourceId = q
        .source_id
        .unwrap_or_default()
        .parse()
        .map_err(|e: crate::domain::NameError| ApiError::unprocessable(format!("sourceId: {e}")))?;
    let secret = bearer(&req).ok_or_else(|| {
        ApiError::unauthorized("a publish token is required (Authorization: Bearer TOKEN)")
    })?;
    let ip = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    match state
        .admission
        .check(secret, &stream, &source, ip, chrono::Utc::now())
        .await
    {
        Ok(_) => {}
        Err(AdmitError::Refused(r @ (Refusal::StreamNotAllowed | Refusal::IpNotAllowed))) => {
            return Err(ApiError::forbidden(r.public_message()))
        }
        Err(AdmitError::Refused(r)) => return Err(ApiError::unauthorized(r.public_message())),
        Err(AdmitError::Unavailable(_)) => {
            return Err(ApiError::unavailable(
                "database_unavailable",
                "cannot check the token now; try again",
            ))
        }
    }
    let m = membership(&state)?;
    let region = q
        .region
        .or_else(|| m.settings.preferred_region.clone())
        .unwrap_or_else(|| m.settings.region.clone());
    let groups = director_groups(
        m.nodes(&state.metrics, state.readiness.is_draining()),
        &region,
    );
    let srt_id = if source.is_default() {
        format!("#!::r={stream},m=publish")
    } else {
        format!("#!::r={stream},m=publish,user_source={source}")
    };
    let rtmp_path = if source.is_default() {
        stream.to_string()
    } else {
        format!("{stream}?sourceId={source}")
    };
    let targets = |url: &dyn Fn(&NodeInfo) -> String| -> Vec<Vec<IngestTarget>> {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|n| IngestTarget {
                        node: n.node.clone(),
                        region: n.region.clone(),
                        url: url(n),
                    })
                    .collect()
            })
            .collect()
    };
    Ok(web::Json(DirectorAnswer {
        stream: stream.to_string(),
        rtmp: targets(&|n| format!("rtmp://{}/live/{rtmp_path}", n.rtmp)),
        srt: targets(&|n| format!("srt://{}?streamid={srt_id}", n.srt)),
        region,
    }))
}

/// The Director's ordering rule: the nodes an encoder may publish to, as
/// ordered groups. Draining nodes are left out; one group per region, the
/// `preferred` region first, then the others by region name; inside a
/// group the least loaded node (feeds + players) first, ties by node id.
pub fn director_groups(nodes: Vec<NodeInfo>, preferred: &str) -> Vec<Vec<NodeInfo>> {
    let mut nodes: Vec<NodeInfo> = nodes.into_iter().filter(|n| !n.draining).collect();
    nodes.sort_by(|a, b| {
        let key = |n: &NodeInfo| {
            (
                n.region != preferred,
                n.region.clone(),
                n.feeds as i64 + n.players,
                n.node.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut groups: Vec<Vec<NodeInfo>> = Vec::new();
    for n in nodes {
        match groups.last_mut() {
            Some(g) if g[0].region == n.region => g.push(n),
            _ => groups.push(vec![n]),
        }
    }
    groups
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RemoteDrain {
    pub node: String,
    pub region: String,
    /// Whether the node acknowledged within `cluster.ack_timeout_ms`.
    pub answered: bool,
}

/// Drain another node of the cluster through the control channel (it then
/// drains as on SIGTERM: not ready, new sessions refused, lease marked
/// draining, the Director stops offering it). Audited before it is sent.
/// This node drains with `POST /api/v1/node/drain`.
#[utoipa::path(post, path = "/api/v1/cluster/nodes/{node}/drain", tag = "cluster",
    params(("node" = String, Path, description = "Node id")),
    responses(
        (status = 202, description = "Sent; whether the node answered", body = RemoteDrain),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "The API key lacks the admin scope", body = ErrorBody),
        (status = 404, description = "No such live node", body = ErrorBody),
        (status = 409, description = "That is this node: use POST /api/v1/node/drain", body = ErrorBody),
        (status = 503, description = "Not in a cluster, starting up, or database unavailable", body = ErrorBody),
    ),
    security(("api_key" = [])))]
pub async fn drain_node(
    state: web::Data<AppState>,
    auth: Auth<Admin>,
    node: web::Path<String>,
) -> Result<actix_web::HttpResponse, ApiError> {
    let node = node.into_inner();
    let m = membership(&state)?;
    let Some(cluster) = &m.cluster else {
        return Err(ApiError::unavailable(
            "no_cluster",
            "this node is not in a cluster (no redis.url)",
        ));
    };
    if node == cluster.node() {
        return Err(ApiError::conflict(
            "that is this node: use POST /api/v1/node/drain",
        ));
    }
    let Some(target) = cluster.nodes().into_iter().find(|n| n.node == node) else {
        return Err(ApiError::not_found("live node"));
    };
    let actor = auth.actor();
    let audit_target = format!("node:{node}");
    let change = Change::new(
        "node.drain",
        Some(serde_json::json!({ "draining": target.draining })),
        Some(serde_json::json!({ "draining": true })),
    );
    state
        .db
        .run(move |c| decision(c, &actor, &audit_target, change))
        .await?;
    let answered = commands::drain_other(&state.node(), &auth.actor(), &node)
        .await
        .map_err(|_| ApiError::unavailable("engine_stopped", "the gateway is shutting down"))?;
    tracing::info!(node = %node, answered, caller = %auth.actor(), "drain of another node requested");
    Ok(actix_web::HttpResponse::Accepted().json(RemoteDrain {
        node,
        region: target.region,
        answered,
    }))
}

#[cfg(test)]
mod tests {
    use super::director_groups;
    use crate::cluster::NodeInfo;

    fn node(name: &str, region: &str, feeds: usize, players: i64, draining: bool) -> NodeInfo {
        NodeInfo {
            node: name.into(),
            region: region.into(),
            http: format!("{name}:8080"),
            rtmp: format!("{name}:1935"),
            srt: format!("{name}:9000"),
            draining,
            local: false,
            started_at: chrono::DateTime::UNIX_EPOCH,
            lease_age_ms: 0,
            feeds,
            players,
        }
    }

    fn names(groups: &[Vec<NodeInfo>]) -> Vec<Vec<&str>> {
        groups
            .iter()
            .map(|g| g.iter().map(|n| n.node.as_str()).collect())
            .collect()
    }

    #[test]
    fn the_preferred_region_comes_first_then_regions_by_name() {
        let nodes = vec![
            node("us-1", "us", 0, 0, false),
            node("ap-1", "ap", 0, 0, false),
            node("eu-1", "eu", 0, 0, false),
            node("eu-2", "eu", 0, 0, false),
        ];
        assert_eq!(
            names(&director_groups(nodes, "eu")),
            [vec!["eu-1", "eu-2"], vec!["ap-1"], vec!["us-1"]]
        );
    }

    #[test]
    fn inside_a_region_the_least_loaded_node_comes_first() {
        let nodes = vec![
            node("eu-1", "eu", 3, 2, false),
            node("eu-2", "eu", 1, 1, false),
            node("eu-3", "eu", 0, 5, false),
            node("eu-4", "eu", 2, 0, false),
        ];
        // Loads 5, 2, 5, 2: ties by node id.
        assert_eq!(
            names(&director_groups(nodes, "eu")),
            [vec!["eu-2", "eu-4", "eu-1", "eu-3"]]
        );
    }

    #[test]
    fn draining_nodes_are_never_offered() {
        let nodes = vec![
            node("eu-1", "eu", 0, 0, true),
            node("eu-2", "eu", 9, 9, false),
            node("us-1", "us", 0, 0, true),
        ];
        assert_eq!(names(&director_groups(nodes, "us")), [vec!["eu-2"]]);
        assert!(director_groups(vec![node("a", "eu", 0, 0, true)], "eu").is_empty());
    }

    #[test]
    fn an_unknown_preferred_region_orders_every_region_by_name() {
        let nodes = vec![
            node("us-1", "us", 0, 0, false),
            node("eu-1", "eu", 0, 0, false),
        ];
        assert_eq!(
            names(&director_groups(nodes, "sa")),
            [vec!["eu-1"], vec!["us-1"]]
        );
    }
}
