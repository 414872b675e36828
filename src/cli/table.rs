//! Plain aligned tables for humans at a terminal.

use serde_json::Value;

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub fn print_tokens(items: &[Value]) {
    let rows = items
        .iter()
        .map(|t| {
            let streams: Vec<String> = t["streams"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|s| {
                            let name = s["name"].as_str().unwrap_or_default();
                            if s["is_regex"].as_bool() == Some(true) {
                                format!("~{name}")
                            } else {
                                name.to_owned()
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                cell(&t["id"]),
                cell(&t["label"]),
                cell(&t["priority"]),
                streams.join(","),
                if t["enabled"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                }
                .into(),
                cell(&t["expires_at"]),
            ]
        })
        .collect();
    print(
        &["ID", "LABEL", "PRIORITY", "STREAMS", "ENABLED", "EXPIRES"],
        rows,
    );
}

pub fn print_api_keys(items: &[Value]) {
    let rows = items
        .iter()
        .map(|k| {
            let scopes: Vec<String> = k["scopes"]
                .as_array()
                .map(|a| a.iter().map(cell).collect())
                .unwrap_or_default();
            vec![
                cell(&k["id"]),
                cell(&k["name"]),
                cell(&k["prefix"]),
                scopes.join(","),
                cell(&k["last_used_at"]),
                cell(&k["revoked_at"]),
            ]
        })
        .collect();
    print(
        &["ID", "NAME", "PREFIX", "SCOPES", "LAST USED", "REVOKED"],
        rows,
    );
}

pub fn print_feeds(title: &str, feeds: &[Value]) {
    println!("\n{title}: {}", feeds.len());
    if feeds.is_empty() {
        return;
    }
    let rows = feeds
        .iter()
        .map(|f| {
            vec![
                cell(&f["feed_id"]),
                cell(&f["stream"]),
                cell(&f["source_id"]),
                cell(&f["node"]),
                cell(&f["region"]),
                cell(&f["protocol"]),
                cell(&f["was_primary"]),
            ]
        })
        .collect();
    print(
        &[
            "FEED",
            "STREAM",
            "SOURCE",
            "NODE",
            "REGION",
            "PROTOCOL",
            "WAS PRIMARY",
        ],
        rows,
    );
}
