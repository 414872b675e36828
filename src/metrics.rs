//! Prometheus metrics, served as text at `GET /metrics`. One registry per
//! process (tests run several gateways in one process, so no global).

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub feeds: IntGauge,
    pub players: IntGauge,
    pub active_priority: GaugeVec,
    pub switches: IntCounterVec,
    pub false_switches: IntCounter,
    pub admission_refusals: IntCounterVec,
    pub bytes_in: IntCounter,
    pub bytes_out: IntCounter,
    pub switch_gap: Histogram,
    pub player_skips: IntCounter,
    pub session_errors: IntCounterVec,
    pub srt_rx_packets: IntCounter,
    pub srt_rx_loss: IntCounter,
    pub srt_rx_retransmitted: IntCounter,
    pub pull_connected: IntGaugeVec,
    pub pull_bytes: IntCounterVec,
    pub pull_failures: IntCounterVec,
    pub output_connected: IntGaugeVec,
    pub output_bytes: IntCounterVec,
    pub output_drops: IntCounterVec,
    pub cluster_redis_up: IntGauge,
    pub cluster_nodes: IntGauge,
    pub cluster_remote_feeds: IntGauge,
    pub cluster_feeds: prometheus::IntGaugeVec,
    pub cluster_relays: prometheus::IntGaugeVec,
    pub admission_throttled: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub srt_garbage_packets: IntCounter,
    pub listener_restarts: IntCounterVec,
    pub cluster_rejected: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("primacy".into()), None).expect("registry");
        let feeds =
            IntGauge::new("feeds", "Publishing feeds connected to this node").expect("metric");
        let players = IntGauge::new("players", "Players connected to this node").expect("metric");
        let active_priority = GaugeVec::new(
            Opts::new(
                "source_active_priority",
                "Effective priority of the feed on air per source (absent: none on air)",
            ),
            &["stream", "source"],
        )
        .expect("metric");
        let switches = IntCounterVec::new(
            Opts::new(
                "switches_total",
                "Primary switches by reason, kind and cause (silent, timeout, closed, failback, ...)",
            ),
            &["reason", "planned", "cause"],
        )
        .expect("metric");
        let false_switches = IntCounter::new(
            "false_switches_total",
            "Switches away from a primary declared lost that sent media again within the failback hold",
        )
        .expect("metric");
        let admission_refusals = IntCounterVec::new(
            Opts::new("admission_refusals_total", "Refused publishes by reason"),
            &["reason"],
        )
        .expect("metric");
        let bytes_in = IntCounter::new(
            "media_bytes_in_total",
            "Media payload bytes received from feeds",
        )
        .expect("metric");
        let bytes_out = IntCounter::new(
            "media_bytes_out_total",
            "Media payload bytes queued to players",
        )
        .expect("metric");
        let switch_gap = Histogram::with_opts(
            HistogramOpts::new(
                "switch_gap_seconds",
                "Time between the last frame of the old primary and the first of the new one, per switch",
            )
            .buckets(vec![0.0, 0.017, 0.033, 0.05, 0.083, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0, 5.0]),
        )
        .expect("metric");
        let player_skips = IntCounter::new(
            "player_skips_total",
            "Times a lagging player skipped to the next keyframe",
        )
        .expect("metric");
        let session_errors = IntCounterVec::new(
            Opts::new(
                "session_errors_total",
                "Sessions closed by a protocol error, by protocol and kind",
            ),
            &["protocol", "kind"],
        )
        .expect("metric");
        let srt_rx_packets =
            IntCounter::new("srt_rx_packets_total", "Data packets received on SRT feeds")
                .expect("metric");
        let srt_rx_loss = IntCounter::new(
            "srt_rx_loss_packets_total",
            "Packets SRT feeds reported lost",
        )
        .expect("metric");
        let srt_rx_retransmitted = IntCounter::new(
            "srt_rx_retransmitted_packets_total",
            "Retransmitted packets received on SRT feeds",
        )
        .expect("metric");
        let per = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric")
        };
        let pull_connected = IntGaugeVec::new(
            Opts::new(
                "pull_input_connected",
                "1 while a pull input is connected to one of its URLs",
            ),
            &["input"],
        )
        .expect("metric");
        let pull_bytes = per(
            "pull_input_bytes_total",
            "Bytes received by a pull input (counted when a connection ends)",
            "input",
        );
        let pull_failures = per(
            "pull_input_failures_total",
            "Pull-input URLs that failed to connect or delivered no media",
            "input",
        );
        let output_connected = IntGaugeVec::new(
            Opts::new(
                "output_connected",
                "1 while a push output is connected to a target",
            ),
            &["output"],
        )
        .expect("metric");
        let output_bytes = per(
            "output_bytes_total",
            "Bytes a push output sent to its targets",
            "output",
        );
        let output_drops = per(
            "output_drops_total",
            "Established push-output connections that dropped",
            "output",
        );
        let cluster_redis_up = IntGauge::new(
            "cluster_redis_up",
            "1 while Redis is reachable (cluster mode only)",
        )
        .expect("metric");
        let cluster_nodes = IntGauge::new(
            "cluster_nodes",
            "Live nodes this node knows, itself included",
        )
        .expect("metric");
        let cluster_remote_feeds = IntGauge::new(
            "cluster_remote_feeds",
            "Feeds of other nodes in this node's election",
        )
        .expect("metric");
        let cluster_feeds = prometheus::IntGaugeVec::new(
            Opts::new(
                "cluster_feeds",
                "Feeds in this node's election by the node and region that has them",
            ),
            &["node", "region"],
        )
        .expect("metric");
        let cluster_relays = prometheus::IntGaugeVec::new(
            Opts::new(
                "cluster_relays",
                "Node-to-node relays (mirrors of remote feeds) by state",
            ),
            &["state"],
        )
        .expect("metric");
        let admission_throttled = IntCounterVec::new(
            Opts::new(
                "admission_throttled_total",
                "Publishes and plays refused at once by the admission throttle, by what was blocked (ip or token)",
            ),
            &["key"],
        )
        .expect("metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "Connections refused by a connection limit, by protocol and limit (total or per_ip)",
            ),
            &["protocol", "limit"],
        )
        .expect("metric");
        let srt_garbage_packets = IntCounter::new(
            "srt_garbage_packets_total",
            "Datagrams on the SRT port that are not SRT packets",
        )
        .expect("metric");
        let listener_restarts = IntCounterVec::new(
            Opts::new(
                "listener_restarts_total",
                "Times a listener's task ended unexpectedly and was bound again",
            ),
            &["listener"],
        )
        .expect("metric");
        let cluster_rejected = IntCounterVec::new(
            Opts::new(
                "cluster_rejected_total",
                "Leases, feed records, events, commands and acks read from Redis and dropped, by kind and reason",
            ),
            &["kind", "reason"],
        )
        .expect("metric");
        for m in [
            Box::new(feeds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(admission_throttled.clone()),
            Box::new(connections_refused.clone()),
            Box::new(srt_garbage_packets.clone()),
            Box::new(listener_restarts.clone()),
            Box::new(cluster_rejected.clone()),
            Box::new(cluster_redis_up.clone()),
            Box::new(cluster_nodes.clone()),
            Box::new(cluster_remote_feeds.clone()),
            Box::new(cluster_feeds.clone()),
            Box::new(cluster_relays.clone()),
            Box::new(players.clone()),
            Box::new(active_priority.clone()),
            Box::new(switches.clone()),
            Box::new(false_switches.clone()),
            Box::new(admission_refusals.clone()),
            Box::new(bytes_in.clone()),
            Box::new(bytes_out.clone()),
            Box::new(switch_gap.clone()),
            Box::new(player_skips.clone()),
            Box::new(session_errors.clone()),
            Box::new(srt_rx_packets.clone()),
            Box::new(srt_rx_loss.clone()),
            Box::new(srt_rx_retransmitted.clone()),
            Box::new(pull_connected.clone()),
            Box::new(pull_bytes.clone()),
            Box::new(pull_failures.clone()),
            Box::new(output_connected.clone()),
            Box::new(output_bytes.clone()),
            Box::new(output_drops.clone()),
        ] {
            registry.register(m).expect("register metric");
        }
        Self {
            registry,
            feeds,
            players,
            active_priority,
            switches,
            false_switches,
            admission_refusals,
            bytes_in,
            bytes_out,
            switch_gap,
            player_skips,
            session_errors,
            srt_rx_packets,
            srt_rx_loss,
            srt_rx_retransmitted,
            pull_connected,
            pull_bytes,
            pull_failures,
            output_connected,
            output_bytes,
            output_drops,
            cluster_redis_up,
            cluster_nodes,
            cluster_remote_feeds,
            cluster_feeds,
            cluster_relays,
            admission_throttled,
            connections_refused,
            srt_garbage_packets,
            listener_restarts,
            cluster_rejected,
        }
    }

    /// Drop the series of a deleted pull input.
    pub fn forget_pull(&self, id: &str) {
        let _ = self.pull_connected.remove_label_values(&[id]);
        let _ = self.pull_bytes.remove_label_values(&[id]);
        let _ = self.pull_failures.remove_label_values(&[id]);
    }

    /// Drop the series of a deleted push output.
    pub fn forget_output(&self, id: &str) {
        let _ = self.output_connected.remove_label_values(&[id]);
        let _ = self.output_bytes.remove_label_values(&[id]);
        let _ = self.output_drops.remove_label_values(&[id]);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
