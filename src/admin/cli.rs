//! The admin commands of the `pgshard` binary (`map ...`, `move`, `rebalance`): each
//! talks to a running proxy's HTTP API (`--admin URL`) with a small HTTP/1.0 client
//! and prints what it answers.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The admin API's default address: a local proxy's default `http_listen`.
pub const ADMIN_DEFAULT: &str = "http://127.0.0.1:6480";
/// Largest answer read from the API.
const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

pub struct Admin {
    /// `host:port`.
    addr: String,
}

impl Admin {
    pub fn new(url: &str) -> Result<Admin, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--admin {url}: expected http://HOST:PORT"))?;
        let addr = rest.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') {
            return Err(format!("--admin {url}: expected http://HOST:PORT"));
        }
        Ok(Admin { addr: addr.into() })
    }

    /// Sends a request; returns the JSON answer, or the API's error message.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Value, String> {
        let unreachable =
            |e: std::io::Error| format!("cannot reach the admin API at {}: {e}", self.addr);
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(unreachable)?;
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(unreachable)?;
        let mut response = Vec::new();
        (&mut stream)
            .take(RESPONSE_BYTES_MAX as u64)
            .read_to_end(&mut response)
            .await
            .map_err(unreachable)?;
        let response = String::from_utf8_lossy(&response);
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| "the admin API sent a malformed answer".to_string())?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let value: Value = serde_json::from_str(body).unwrap_or(Value::String(body.into()));
        if status == 200 {
            return Ok(value);
        }
        let message = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_string);
        Err(message)
    }
}

fn read_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

pub async fn map_show(admin: &Admin) -> Result<(), String> {
    let map = admin.call("GET", "/api/map", None).await?;
    print!("{}", map["text"].as_str().unwrap_or_default());
    eprintln!("# running version {}", map["version"]);
    Ok(())
}

pub async fn map_history(admin: &Admin) -> Result<(), String> {
    let history = admin.call("GET", "/api/map/history", None).await?;
    for entry in history.as_array().into_iter().flatten() {
        println!(
            "version {:>6}  applied_at {}  by {}",
            entry["version"], entry["applied_at"], entry["how"]
        );
    }
    Ok(())
}

pub async fn map_diff(admin: &Admin, file: &str) -> Result<(), String> {
    let diff = admin
        .call("POST", "/api/map/diff", Some(&read_file(file)?))
        .await?;
    print_changes(&diff);
    Ok(())
}

pub async fn map_apply(admin: &Admin, file: &str, force: bool) -> Result<(), String> {
    let path = if force {
        "/api/map/apply?force=true"
    } else {
        "/api/map/apply"
    };
    let done = admin.call("POST", path, Some(&read_file(file)?)).await?;
    println!(
        "applied version {} (was {}); swapped in {} us",
        done["version"], done["previous"], done["swap_us"]
    );
    print_changes(&done);
    Ok(())
}

pub async fn map_rollback(admin: &Admin) -> Result<(), String> {
    let done = admin.call("POST", "/api/map/rollback", None).await?;
    println!(
        "rolled back: version {} (was {})",
        done["version"], done["previous"]
    );
    print_changes(&done);
    Ok(())
}

pub async fn map_reload(admin: &Admin) -> Result<(), String> {
    let done = admin.call("POST", "/api/map/reload", None).await?;
    println!("running version {}", done["version"]);
    print_changes(&done);
    Ok(())
}

fn print_changes(value: &Value) {
    let changes = value["changes"].as_array().cloned().unwrap_or_default();
    if changes.is_empty() {
        println!("no changes");
    }
    for line in changes {
        println!("  {}", line.as_str().unwrap_or_default());
    }
}

pub async fn move_vshard(admin: &Admin, vshard: u32, to: &str) -> Result<(), String> {
    let body = json!({ "vshard": vshard, "to": to }).to_string();
    let done = admin.call("POST", "/api/move", Some(&body)).await?;
    println!(
        "vshard {} moved {} -> {}: {} rows, write pause {:.1} ms, {:.0} ms in all (map version {})",
        done["vshard"],
        done["from"].as_str().unwrap_or_default(),
        done["to"].as_str().unwrap_or_default(),
        done["rows_copied"],
        done["write_pause_ms"].as_f64().unwrap_or(0.0),
        done["total_ms"].as_f64().unwrap_or(0.0),
        done["version"]
    );
    Ok(())
}

/// Starts a rebalance and follows it until it ends; Ctrl-C asks it to stop after
/// the move under way.
pub async fn rebalance(
    admin: &Admin,
    by: &str,
    max_moves: Option<usize>,
    dry_run: bool,
) -> Result<(), String> {
    let mut request = json!({ "by": by, "dry_run": dry_run });
    if let Some(max) = max_moves {
        request["max_moves"] = json!(max);
    }
    let plan = admin
        .call("POST", "/api/rebalance", Some(&request.to_string()))
        .await?;
    println!("{} moves planned", plan["planned"]);
    if dry_run {
        for m in plan["moves"].as_array().into_iter().flatten() {
            println!("  vshard {} {} -> {}", m["vshard"], m["from"], m["to"]);
        }
        return Ok(());
    }
    let mut stopping = false;
    loop {
        let progress = admin.call("GET", "/api/rebalance", None).await?;
        print_progress(&progress);
        if !progress["running"].as_bool().unwrap_or(false) {
            for e in progress["errors"].as_array().into_iter().flatten() {
                eprintln!("  failed: {}", e.as_str().unwrap_or_default());
            }
            return match progress["failed"].as_u64() {
                Some(0) | None => Ok(()),
                Some(n) => Err(format!("{n} moves failed (each rolled back)")),
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c(), if !stopping => {
                stopping = true;
                eprintln!("stopping after the move under way...");
                admin.call("POST", "/api/rebalance/stop", None).await?;
            }
        }
    }
}

fn print_progress(p: &Value) {
    let eta = p["eta_s"]
        .as_f64()
        .map_or("?".to_string(), |s| format!("{s:.0} s"));
    println!(
        "moves {}/{} ({} failed), rows copied {}, elapsed {:.1} s, time left {eta}{}",
        p["done"],
        p["planned"],
        p["failed"],
        p["rows_copied"],
        p["elapsed_s"].as_f64().unwrap_or(0.0),
        if p["stopped"].as_bool() == Some(true) {
            ", stopped"
        } else {
            ""
        }
    );
}
