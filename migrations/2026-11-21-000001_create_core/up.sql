-- Publish tokens: the rows behind the secrets handed to encoders.
CREATE TABLE publish_tokens (
    id          UUID PRIMARY KEY,
    label       TEXT NOT NULL CHECK (char_length(label) BETWEEN 1 AND 128),
    priority    INTEGER,
    -- [{"name": "...", "is_regex": bool}], 1..=64 entries, validated by the application.
    streams     JSONB NOT NULL,
    -- CIDRs; empty = any address.
    allowed_ips TEXT[] NOT NULL DEFAULT '{}',
    expires_at  TIMESTAMPTZ,
    enabled     BOOLEAN NOT NULL DEFAULT TRUE,
    -- The `jti` of the only secret that currently verifies; rotated by refresh.
    secret_id   UUID NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX publish_tokens_streams_idx ON publish_tokens USING GIN (streams jsonb_path_ops);
CREATE INDEX publish_tokens_created_idx ON publish_tokens (created_at, id);

-- Operator API keys: only the SHA-256 of the secret is stored.
CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    name         TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 128),
    prefix       TEXT NOT NULL UNIQUE,
    secret_hash  BYTEA NOT NULL CHECK (octet_length(secret_hash) = 32),
    scopes       TEXT[] NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

-- Every write, with who did it and the state before and after (never a secret).
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    before      JSONB,
    after       JSONB
);
CREATE INDEX audit_log_target_idx ON audit_log (target, id);
CREATE INDEX audit_log_action_idx ON audit_log (action, id);
CREATE INDEX audit_log_at_idx ON audit_log (at);
