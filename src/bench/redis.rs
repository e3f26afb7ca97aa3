//! Reads Redis's own counters (`INFO commandstats`, `INFO cpu`, MONITOR) over a plain
//! connection, so measuring does not go through the client being measured.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Commands the benchmark itself sends; they are not the server's cost.
const OURS: [&str; 4] = ["info", "config", "echo", "monitor"];

/// Sends one command and returns the reply's text (a bulk string's content, or the status line).
pub async fn command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(&encode(args)).await?;
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

fn encode(args: &[&str]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    request.into_bytes()
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

/// Calls per command since the last `CONFIG RESETSTAT`, counting those run inside scripts.
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
        .filter(|(name, _)| !OURS.iter().any(|o| name.split('|').next() == Some(o)))
        .collect())
}

pub async fn reset(port: u16) -> std::io::Result<()> {
    command(port, &["CONFIG", "RESETSTAT"]).await.map(|_| ())
}

/// CPU time redis-server has used (user + system, all its threads), in ms.
pub async fn cpu_ms(port: u16) -> std::io::Result<f64> {
    let info = command(port, &["INFO", "cpu"]).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    match (field("used_cpu_sys:"), field("used_cpu_user:")) {
        (Some(sys), Some(user)) => Ok((sys + user) * 1000.0),
        _ => Err(std::io::Error::other("INFO cpu without used_cpu_sys/user")),
    }
}

/// Commands Redis ran while a MONITOR was attached, by origin.
#[derive(Clone, Copy, Debug, Default)]
pub struct Origins {
    /// Sent by a client: what costs a round trip (EVALSHA counts once).
    pub client: u64,
    /// Run inside a Lua script with `redis.call`.
    pub script: u64,
}

/// A MONITOR connection counting commands by origin. MONITOR slows Redis down, so it watches
/// an untimed pass only.
pub struct Monitor {
    port: u16,
    marker: String,
    task: JoinHandle<std::io::Result<Origins>>,
}

pub async fn monitor(port: u16) -> std::io::Result<Monitor> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.write_all(&encode(&["MONITOR"])).await?;
    let mut lines = BufReader::new(stream);
    let mut line = Vec::new();
    lines.read_until(b'\n', &mut line).await?;
    if !line.starts_with(b"+OK") {
        let text = String::from_utf8_lossy(&line).into_owned();
        return Err(std::io::Error::other(format!("MONITOR refused: {text}")));
    }
    let marker = format!("conveyor-bench-monitor-end-{}", std::process::id());
    // MONITOR shows a command's name as the client spelled it; the marker alone is unique.
    let end = format!("\"{marker}\"");
    let task = tokio::spawn(async move {
        let mut origins = Origins::default();
        loop {
            line.clear();
            if lines.read_until(b'\n', &mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let text = String::from_utf8_lossy(&line);
            if text.contains(&end) {
                return Ok(origins);
            }
            match origin(&text) {
                Some((true, _)) => origins.script += 1,
                Some((false, name)) if !OURS.contains(&name.as_str()) => origins.client += 1,
                _ => {}
            }
        }
    });
    Ok(Monitor { port, marker, task })
}

impl Monitor {
    /// Sends a marker through Redis and returns the counts of everything before it.
    pub async fn finish(mut self) -> std::io::Result<Origins> {
        command(self.port, &["ECHO", &self.marker]).await?;
        match tokio::time::timeout(Duration::from_secs(30), &mut self.task).await {
            Ok(Ok(counts)) => counts,
            Ok(Err(e)) => Err(std::io::Error::other(e)),
            Err(_) => Err(std::io::Error::other("MONITOR did not catch up in 30s")),
        }
    }
}

impl Drop for Monitor {
    /// Left attached, MONITOR would slow every later scenario down.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a MONITOR line (`+<time> [<db> <origin>] "<command>" ...`) came from a script, and
/// its command's name.
fn origin(line: &str) -> Option<(bool, String)> {
    let (tag, rest) = line.split_once('[')?.1.split_once("] ")?;
    let scripted = tag.split_whitespace().nth(1)? == "lua";
    let name = rest
        .strip_prefix('"')?
        .split('"')
        .next()?
        .to_ascii_lowercase();
    Some((scripted, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_tell_scripts_from_clients() {
        let client = "+1795533993.432979 [0 127.0.0.1:58396] \"evalsha\" \"ab\" \"0\"\r\n";
        let script = "+1795533993.433034 [0 lua] \"set\" \"a\" \"x y\"\r\n";
        assert_eq!(origin(client), Some((false, "evalsha".into())));
        assert_eq!(origin(script), Some((true, "set".into())));
        assert_eq!(origin("+OK\r\n"), None);
    }
}
