//! The agent's tiny HTTP responder (std only): `GET /metrics` (Prometheus text), `GET /readyz`
//! (200 once the chain is in place, else 503), `GET /healthz` (200 while the process runs).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{self, Agent};
use crate::node::Node;

/// Binds `addr` and serves on a background thread. Returns the bound address (port 0 picks one).
pub fn serve(addr: SocketAddr, node: Node, agent: Arc<Agent>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("weft-http".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                if let Err(e) = handle(conn, &node, &agent) {
                    tracing::debug!(error = %e, "http request");
                }
            }
        })?;
    Ok(local)
}

fn handle(mut conn: TcpStream, node: &Node, agent: &Agent) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Drain the headers; no request of ours has a body.
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(node, agent),
        ),
        ("GET", "/readyz") if agent.ready.load(Ordering::Relaxed) => {
            ("200 OK", "text/plain", "ready\n".to_string())
        }
        ("GET", "/readyz") => (
            "503 Service Unavailable",
            "text/plain",
            "not ready: kmesh-cni is not chained into the primary CNI config\n".to_string(),
        ),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}
