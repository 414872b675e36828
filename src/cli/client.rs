//! A small blocking client of the REST API for the CLI. Error bodies are
//! turned into one readable line: `HTTP 404 not_found: token not found`.

use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;
use ureq::Agent;

pub struct Client {
    agent: Agent,
    base: String,
    key: String,
}

impl Client {
    pub fn new(base: &str, key: String) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--api must be an http:// or https:// URL, got {}",
                crate::redact::url(&base)
            );
        }
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self { agent, base, key })
    }

    /// Send a request; returns the JSON body (`null` for 204).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base, path);
        let auth = format!("Bearer {}", self.key);
        let result = match method {
            "GET" | "DELETE" => {
                let mut req = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                req = req.header("Authorization", &auth);
                for (k, v) in query {
                    req = req.query(*k, v);
                }
                req.call()
            }
            "POST" | "PATCH" => {
                let req = if method == "POST" {
                    self.agent.post(&url)
                } else {
                    self.agent.patch(&url)
                };
                let req = req.header("Authorization", &auth);
                match body {
                    Some(b) => req.send_json(&b),
                    None => req.send_empty(),
                }
            }
            other => bail!("unsupported method {other}"),
        };
        let mut resp = result.with_context(|| {
            format!("cannot reach the API at {}", crate::redact::url(&self.base))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the response to {method} {path}"))?;
        if status == 204 || text.is_empty() {
            if (200..300).contains(&status) {
                return Ok(Value::Null);
            }
            bail!("HTTP {status} with an empty body from {method} {path}");
        }
        let value: Value = serde_json::from_str(&text).with_context(|| {
            format!("HTTP {status}: the API answered with something that is not JSON")
        })?;
        if !(200..300).contains(&status) {
            let code = value["error"]["code"].as_str().unwrap_or("error");
            let message = value["error"]["message"].as_str().unwrap_or("(no message)");
            bail!("HTTP {status} {code}: {message}");
        }
        Ok(value)
    }
}
