// @generated automatically by Diesel CLI.

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        name -> Text,
        prefix -> Text,
        secret_hash -> Bytea,
        scopes -> Array<Nullable<Text>>,
        created_at -> Timestamptz,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Int8,
        at -> Timestamptz,
        actor -> Text,
        action -> Text,
        target -> Text,
        before -> Nullable<Jsonb>,
        after -> Nullable<Jsonb>,
    }
}

diesel::table! {
    publish_tokens (id) {
        id -> Uuid,
        label -> Text,
        priority -> Nullable<Int4>,
        streams -> Jsonb,
        allowed_ips -> Array<Nullable<Text>>,
        expires_at -> Nullable<Timestamptz>,
        enabled -> Bool,
        secret_id -> Uuid,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        allow_priority_override -> Bool,
        revision -> Int8,
    }
}

diesel::table! {
    pull_inputs (id) {
        id -> Uuid,
        node_id -> Text,
        stream -> Text,
        source_id -> Text,
        urls -> Array<Nullable<Text>>,
        priority -> Nullable<Int4>,
        persistent -> Bool,
        retry_count -> Nullable<Int4>,
        no_input_timeout_ms -> Int8,
        reconnect_delay_ms -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    push_outputs (id) {
        id -> Uuid,
        node_id -> Text,
        stream -> Text,
        source_id -> Text,
        targets -> Jsonb,
        enabled -> Bool,
        reconnect_delay_ms -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    api_keys,
    audit_log,
    publish_tokens,
    pull_inputs,
    push_outputs,
);
