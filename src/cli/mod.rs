//! The `primacy` command line: `serve`, `migrate`, `config`, bootstrap
//! `api-keys` commands that talk to the database directly, and `tokens`
//! commands that are a thin client of the REST API, printing tables by
//! default and JSON with `--json` so runbooks can script them.

mod client;
mod table;

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::auth::api_keys::Scope;
use crate::config::Config;
use client::Client;

#[derive(Debug, Parser)]
#[command(
    name = "primacy",
    version,
    about = "Live-video ingest gateway for redundant publishing",
    long_about = "Primacy elects the highest-priority live feed per stream among redundant encoders \
                  publishing over RTMP and SRT with priority-carrying tokens.\n\n\
                  Configuration: an optional TOML file (--config) overlaid by PRIMACY_* environment \
                  variables; see docs/primacy.example.toml."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, global = true, env = "PRIMACY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM/SIGINT (a second signal exits at once).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate(MigrateArgs),
    /// Print the effective configuration with secrets redacted.
    Config,
    /// Operator API keys (talks to the database directly, for bootstrap).
    #[command(name = "api-keys", subcommand)]
    ApiKeys(ApiKeyCommand),
    /// Publish tokens, through the REST API.
    Tokens(TokensArgs),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Revert the most recent migration instead.
    #[arg(long, conflicts_with = "revert_all")]
    pub revert_last: bool,
    /// Revert every migration (drops all Primacy tables and their data).
    #[arg(long)]
    pub revert_all: bool,
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print its secret (shown only once).
    Create {
        /// A name to tell the key apart, e.g. "ops laptop".
        #[arg(long)]
        name: String,
        /// read, write or admin (each includes the ones before it). Repeatable.
        #[arg(long = "scope", required = true, value_parser = parse_scope)]
        scopes: Vec<Scope>,
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key; it stops working at once.
    Revoke {
        id: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    s.parse()
}

#[derive(Debug, Args)]
pub struct TokensArgs {
    /// Base URL of a gateway's HTTP API.
    #[arg(
        long,
        env = "PRIMACY_API",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only once).
    Create {
        #[arg(long)]
        label: String,
        /// Higher wins; omit for the lowest.
        #[arg(long, allow_negative_numbers = true)]
        priority: Option<i32>,
        /// Let a `priority=` publish parameter raise a feed above --priority
        /// (without it, `priority=` may only lower it; higher is clamped).
        #[arg(long)]
        allow_priority_override: bool,
        /// A stream name the token may publish. Repeatable.
        #[arg(long = "stream")]
        streams: Vec<String>,
        /// A regular expression of stream names, complete on its own and
        /// matching whole names (anchored). Repeatable.
        #[arg(long = "stream-regex")]
        stream_regexes: Vec<String>,
        /// A CIDR or address the encoder may publish from. Repeatable.
        #[arg(long = "allow-ip")]
        allow_ips: Vec<String>,
        /// Expiry as RFC 3339, e.g. 2026-12-31T23:59:59Z.
        #[arg(long, conflicts_with = "expires_in")]
        expires_at: Option<String>,
        /// Expiry in seconds from now.
        #[arg(long)]
        expires_in: Option<u32>,
        /// Create it disabled.
        #[arg(long)]
        disabled: bool,
    },
    /// List tokens; --stream finds those allowed to publish a stream.
    List {
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        enabled: Option<bool>,
        #[arg(long)]
        page: Option<u32>,
        #[arg(long)]
        per_page: Option<u32>,
    },
    /// Show one token.
    Show { id: uuid::Uuid },
    /// Change a token. A priority set here applies at the next connection;
    /// every other change applies to live feeds at once (removed streams,
    /// addresses no longer allowed, expiry, disable: their feeds are
    /// disconnected).
    Update {
        id: uuid::Uuid,
        #[arg(long)]
        label: Option<String>,
        #[arg(long, allow_negative_numbers = true, conflicts_with = "clear_priority")]
        priority: Option<i32>,
        /// Set the priority to none (the lowest).
        #[arg(long)]
        clear_priority: bool,
        /// Whether `priority=` may raise a feed above the token's priority
        /// (true/false).
        #[arg(long)]
        allow_priority_override: Option<bool>,
        #[arg(long = "add-stream")]
        add_streams: Vec<String>,
        #[arg(long = "add-stream-regex")]
        add_stream_regexes: Vec<String>,
        #[arg(long = "remove-stream")]
        remove_streams: Vec<String>,
        #[arg(long = "remove-stream-regex")]
        remove_stream_regexes: Vec<String>,
        /// Replace the IP allow-list (repeatable).
        #[arg(long = "allow-ip", conflicts_with = "any_ip")]
        allow_ips: Vec<String>,
        /// Clear the IP allow-list (any address).
        #[arg(long)]
        any_ip: bool,
        #[arg(long, conflicts_with = "no_expiry")]
        expires_at: Option<String>,
        #[arg(long)]
        no_expiry: bool,
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        #[arg(long)]
        disable: bool,
    },
    /// Change the priority now and disconnect the token's feeds so they
    /// reconnect with it (or re-elect in place with --no-disconnect).
    Reprioritize {
        id: uuid::Uuid,
        /// The new priority; "none" for the lowest.
        #[arg(long, allow_negative_numbers = true)]
        priority: String,
        #[arg(long)]
        no_disconnect: bool,
    },
    /// Issue a new secret; the old one stops working and its live feeds are
    /// disconnected.
    Refresh { id: uuid::Uuid },
    /// Disable a token.
    Disable { id: uuid::Uuid },
    /// Delete a token.
    Delete { id: uuid::Uuid },
}

/// Run a non-`serve` command. Returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => unreachable!("serve is handled by main"),
        Command::Config => {
            let config = Config::load(cli.config.as_deref())?;
            print!("{}", config.redacted_toml());
            Ok(())
        }
        Command::Migrate(args) => migrate(cli.config, args),
        Command::ApiKeys(cmd) => api_keys(cli.config, cmd),
        Command::Tokens(args) => tokens(args),
    }
}

fn migrate(config: Option<PathBuf>, args: MigrateArgs) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let mut conn = crate::store::connect(config.database.url.expose())
        .context("connecting to the database")?;
    if args.revert_all {
        let v = crate::store::revert_all_migrations(&mut conn)?;
        println!("reverted {} migration(s): {}", v.len(), v.join(", "));
    } else if args.revert_last {
        let v = crate::store::revert_last_migration(&mut conn)?;
        println!("reverted migration {v}");
    } else {
        let v = crate::store::run_migrations(&mut conn)?;
        if v.is_empty() {
            println!("database schema is up to date");
        } else {
            println!("applied {} migration(s): {}", v.len(), v.join(", "));
        }
    }
    Ok(())
}

fn api_keys(config: Option<PathBuf>, cmd: ApiKeyCommand) -> anyhow::Result<()> {
    use crate::auth::api_keys::{create_key, revoke_key, ApiKey, CreateKeyError};
    let config = Config::load(config.as_deref())?;
    let mut conn = crate::store::connect(config.database.url.expose())
        .context("connecting to the database")?;
    crate::store::run_migrations(&mut conn)?;
    match cmd {
        ApiKeyCommand::Create { name, scopes, json } => {
            let (row, secret) = match create_key(&mut conn, &name, &scopes, "cli") {
                Ok(v) => v,
                Err(CreateKeyError::Invalid(m)) => bail!(m),
                Err(CreateKeyError::Store(e)) => return Err(e.into()),
            };
            let key = ApiKey::from_row(&row);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"key": key, "secret": secret.expose()}))?
                );
            } else {
                table::print_api_keys(&[serde_json::to_value(&key)?]);
                println!("\nsecret (shown only once): {}", secret.expose());
            }
        }
        ApiKeyCommand::List { json } => {
            let (rows, _) = crate::store::api_keys::list(&mut conn, 0, i64::MAX)?;
            let keys: Vec<Value> = rows
                .iter()
                .map(|r| serde_json::to_value(ApiKey::from_row(r)))
                .collect::<Result<_, _>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                table::print_api_keys(&keys);
            }
        }
        ApiKeyCommand::Revoke { id, json } => {
            let row = revoke_key(&mut conn, id, "cli").map_err(|e| match e {
                crate::store::StoreError::NotFound => anyhow::anyhow!("no API key with id {id}"),
                other => other.into(),
            })?;
            let key = serde_json::to_value(ApiKey::from_row(&row))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&key)?);
            } else {
                table::print_api_keys(&[key]);
            }
        }
    }
    Ok(())
}

fn rules(names: &[String], regexes: &[String]) -> Vec<Value> {
    names
        .iter()
        .map(|n| json!({"name": n, "is_regex": false}))
        .chain(regexes.iter().map(|r| json!({"name": r, "is_regex": true})))
        .collect()
}

fn tokens(args: TokensArgs) -> anyhow::Result<()> {
    let key = std::env::var("PRIMACY_API_KEY")
        .ok()
        .filter(|k| !k.is_empty())
        .context("set PRIMACY_API_KEY to an operator API key (create one with `primacy api-keys create`)")?;
    let client = Client::new(&args.api, key)?;
    let json_out = args.json;
    let show_token = |v: &Value| -> anyhow::Result<()> {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v)?);
        } else {
            table::print_tokens(std::slice::from_ref(v));
        }
        Ok(())
    };
    let show_with_secret = |v: &Value| -> anyhow::Result<()> {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v)?);
        } else {
            table::print_tokens(std::slice::from_ref(&v["token"]));
            println!(
                "\nsecret (shown only once): {}",
                v["secret"].as_str().unwrap_or_default()
            );
        }
        Ok(())
    };
    match args.command {
        TokenCommand::Create {
            label,
            priority,
            allow_priority_override,
            streams,
            stream_regexes,
            allow_ips,
            expires_at,
            expires_in,
            disabled,
        } => {
            if streams.is_empty() && stream_regexes.is_empty() {
                bail!("give at least one --stream or --stream-regex");
            }
            let mut body = json!({
                "label": label,
                "priority": priority,
                "allow_priority_override": allow_priority_override,
                "streams": rules(&streams, &stream_regexes),
                "allowed_ips": allow_ips,
                "enabled": !disabled,
            });
            if let Some(at) = expires_at {
                body["expires_at"] = json!(at);
            }
            if let Some(s) = expires_in {
                body["expires_in_seconds"] = json!(s);
            }
            show_with_secret(&client.send("POST", "/api/v1/tokens", &[], Some(body))?)
        }
        TokenCommand::List {
            label,
            stream,
            enabled,
            page,
            per_page,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(l) = label {
                query.push(("label", l));
            }
            if let Some(s) = stream {
                query.push(("stream", s));
            }
            if let Some(e) = enabled {
                query.push(("enabled", e.to_string()));
            }
            if let Some(p) = page {
                query.push(("page", p.to_string()));
            }
            if let Some(p) = per_page {
                query.push(("per_page", p.to_string()));
            }
            let v = client.send("GET", "/api/v1/tokens", &query, None)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let items = v["items"].as_array().cloned().unwrap_or_default();
                table::print_tokens(&items);
                println!("\n{}", page_summary(&v, "token(s)"));
            }
            Ok(())
        }
        TokenCommand::Show { id } => {
            show_token(&client.send("GET", &format!("/api/v1/tokens/{id}"), &[], None)?)
        }
        TokenCommand::Update {
            id,
            label,
            priority,
            clear_priority,
            allow_priority_override,
            add_streams,
            add_stream_regexes,
            remove_streams,
            remove_stream_regexes,
            allow_ips,
            any_ip,
            expires_at,
            no_expiry,
            enable,
            disable,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(l) = label {
                body.insert("label".into(), json!(l));
            }
            if let Some(p) = priority {
                body.insert("priority".into(), json!(p));
            }
            if clear_priority {
                body.insert("priority".into(), Value::Null);
            }
            if let Some(o) = allow_priority_override {
                body.insert("allow_priority_override".into(), json!(o));
            }
            let add = rules(&add_streams, &add_stream_regexes);
            if !add.is_empty() {
                body.insert("add_streams".into(), json!(add));
            }
            let remove = rules(&remove_streams, &remove_stream_regexes);
            if !remove.is_empty() {
                body.insert("remove_streams".into(), json!(remove));
            }
            if !allow_ips.is_empty() {
                body.insert("allowed_ips".into(), json!(allow_ips));
            }
            if any_ip {
                body.insert("allowed_ips".into(), json!([]));
            }
            if let Some(e) = expires_at {
                body.insert("expires_at".into(), json!(e));
            }
            if no_expiry {
                body.insert("expires_at".into(), Value::Null);
            }
            if enable {
                body.insert("enabled".into(), json!(true));
            }
            if disable {
                body.insert("enabled".into(), json!(false));
            }
            if body.is_empty() {
                bail!("nothing to change: give at least one option (see --help)");
            }
            show_token(&client.send(
                "PATCH",
                &format!("/api/v1/tokens/{id}"),
                &[],
                Some(Value::Object(body)),
            )?)
        }
        TokenCommand::Reprioritize {
            id,
            priority,
            no_disconnect,
        } => {
            let p = if priority.eq_ignore_ascii_case("none") {
                Value::Null
            } else {
                json!(priority.parse::<i32>().with_context(|| format!(
                    "--priority must be an integer or none, got {priority:?}"
                ))?)
            };
            let v = client.send(
                "POST",
                &format!("/api/v1/tokens/{id}/reprioritize"),
                &[],
                Some(json!({"priority": p, "disconnect": !no_disconnect})),
            )?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                table::print_tokens(std::slice::from_ref(&v["token"]));
                println!(
                    "\npriority {} -> {}",
                    v["previous_priority"], v["token"]["priority"]
                );
                table::print_feeds(
                    "affected feeds",
                    v["affected"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                );
                table::print_feeds(
                    "pinned feeds (untouched)",
                    v["pinned"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                );
            }
            Ok(())
        }
        TokenCommand::Refresh { id } => show_with_secret(&client.send(
            "POST",
            &format!("/api/v1/tokens/{id}/refresh"),
            &[],
            None,
        )?),
        TokenCommand::Disable { id } => show_token(&client.send(
            "PATCH",
            &format!("/api/v1/tokens/{id}"),
            &[],
            Some(json!({"enabled": false})),
        )?),
        TokenCommand::Delete { id } => {
            client.send("DELETE", &format!("/api/v1/tokens/{id}"), &[], None)?;
            if json_out {
                println!("{}", json!({"deleted": id}));
            } else {
                println!("deleted token {id}");
            }
            Ok(())
        }
    }
}

/// The footer of a paged listing: `2 token(s), page 1 of 1, 50 per page`.
fn page_summary(v: &Value, what: &str) -> String {
    let total = v["total"].as_u64().unwrap_or(0);
    let page = v["page"].as_u64().unwrap_or(1);
    let per_page = v["per_page"].as_u64().unwrap_or(1).max(1);
    let pages = total.div_ceil(per_page).max(1);
    format!("{total} {what}, page {page} of {pages}, {per_page} per page")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_summary_counts_pages_not_items() {
        let v = serde_json::json!({"total": 2, "page": 1, "per_page": 50});
        assert_eq!(
            page_summary(&v, "token(s)"),
            "2 token(s), page 1 of 1, 50 per page"
        );
        let v = serde_json::json!({"total": 101, "page": 3, "per_page": 50});
        assert_eq!(
            page_summary(&v, "token(s)"),
            "101 token(s), page 3 of 3, 50 per page"
        );
        let v = serde_json::json!({"total": 0, "page": 1, "per_page": 50});
        assert_eq!(
            page_summary(&v, "token(s)"),
            "0 token(s), page 1 of 1, 50 per page"
        );
    }
}
