//! Reads Redis's own counters (`INFO commandstats`) over a plain connection, so measuring does
//! not go through the client being measured.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends one command and returns the reply's text (a bulk string's content, or the status line).
pub async fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(body) = complete(&reply) {
            return Ok(body);
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// The reply's content once all of it has arrived.
fn complete(reply: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    let (head, rest) = text.split_once("\r\n")?;
    match head.strip_prefix('$') {
        Some(len) => {
            let len: usize = len.parse().ok()?;
            (rest.len() >= len).then(|| rest[..len].to_string())
        }
        None => Some(head.to_string()),
    }
}

/// Calls per command since the last `CONFIG RESETSTAT`.
pub async fn commandstats(port: u16) -> std::io::Result<BTreeMap<String, u64>> {
    let info = command(port, &["INFO", "commandstats"]).await?;
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect())
}

pub async fn reset(port: u16) -> std::io::Result<()> {
    command(port, &["CONFIG", "RESETSTAT"]).await.map(|_| ())
}
