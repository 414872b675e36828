-- Pull inputs (persistent pull streams) and push outputs (restreams). Each
-- row belongs to the node that created it (`node_id`), which runs it and
-- restores it at start-up. Columns are loosely typed on purpose: the
-- application validates every row when it loads it, and a row it cannot use
-- is logged, skipped and never changed.
CREATE TABLE pull_inputs (
    id                  UUID PRIMARY KEY,
    node_id             TEXT NOT NULL,
    stream              TEXT NOT NULL,
    source_id           TEXT NOT NULL DEFAULT '',
    -- rtmp:// or srt:// URLs, tried in order.
    urls                TEXT[] NOT NULL,
    priority            INTEGER,
    persistent          BOOLEAN NOT NULL DEFAULT TRUE,
    -- Failed passes over every URL tolerated in a row; NULL = retry forever.
    retry_count         INTEGER,
    no_input_timeout_ms BIGINT NOT NULL,
    reconnect_delay_ms  BIGINT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX pull_inputs_node_idx ON pull_inputs (node_id, created_at, id);
CREATE INDEX pull_inputs_created_idx ON pull_inputs (created_at, id);

CREATE TABLE push_outputs (
    id                 UUID PRIMARY KEY,
    node_id            TEXT NOT NULL,
    stream             TEXT NOT NULL,
    source_id          TEXT NOT NULL DEFAULT '',
    -- [["rtmp://…", …], …]: a balance group of ordered groups of targets.
    targets            JSONB NOT NULL,
    enabled            BOOLEAN NOT NULL DEFAULT TRUE,
    reconnect_delay_ms BIGINT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX push_outputs_node_idx ON push_outputs (node_id, created_at, id);
CREATE INDEX push_outputs_created_idx ON push_outputs (created_at, id);
