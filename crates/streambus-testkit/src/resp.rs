//! Talking to a local server without a client library: a minimal RESP
//! connection for readiness and cluster checks, and `redis-cli` with a timeout.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::certs::{CA_CERT, CLIENT_CERT, CLIENT_KEY};
use crate::support::redis_cli_bin;
use crate::HOST;

/// One readiness check: connect, `AUTH` if needed, `PING` (must be `+PONG`,
/// `-LOADING` means the AOF is still loading), then make sure the answering
/// server is our process (`INFO server` → `process_id`), not someone else
/// who grabbed the port. `Err` carries the reply or error seen, for messages.
pub(crate) fn probe(port: u16, password: Option<&str>, pid: u32) -> Result<(), String> {
    let mut conn = RespConn::connect(port)?;
    if let Some(pass) = password {
        let reply = conn.call(&["AUTH", "default", pass])?;
        if reply != "+OK" {
            return Err(format!("AUTH: {reply}"));
        }
    }
    let reply = conn.call(&["PING"])?;
    if reply != "+PONG" {
        return Err(format!("PING: {reply}"));
    }
    let info = conn.call(&["INFO", "server"])?;
    check_pid(port, pid, &info)
}

/// Whether `INFO server` output is from process `pid`.
pub(crate) fn check_pid(port: u16, pid: u32, info: &str) -> Result<(), String> {
    let expected = format!("process_id:{pid}");
    if info.lines().any(|l| l.trim() == expected) {
        Ok(())
    } else {
        Err(format!(
            "port {port} is answered by another process (expected {expected})"
        ))
    }
}

/// The readiness check of a TLS server, through `redis-cli --tls` (this
/// crate speaks no TLS itself): `INFO server` must answer (not `LOADING`)
/// and come from our process.
pub(crate) fn probe_tls(
    port: u16,
    password: Option<&str>,
    pid: u32,
    dir: &Path,
) -> Result<(), String> {
    let mut cmd = cli_base(port, Some(dir));
    if let Some(pass) = password {
        cmd.args(["-a", pass, "--no-auth-warning"]);
    }
    cmd.args(["INFO", "server"]);
    let out = output_with_timeout(cmd, Duration::from_secs(2))
        .map_err(|e| format!("cannot run {}: {e}", redis_cli_bin()))?
        .ok_or_else(|| "redis-cli --tls timed out".to_owned())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if stdout.contains("process_id:") {
        return check_pid(port, pid, &stdout);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(
        format!("redis-cli --tls: {} {}", stdout.trim(), stderr.trim())
            .trim()
            .to_owned(),
    )
}

/// `redis-cli -h 127.0.0.1 -p PORT`, plus the TLS flags (trusting
/// `DIR/ca.crt`, presenting `DIR/client.crt`) when `tls_dir` is given.
pub(crate) fn cli_base(port: u16, tls_dir: Option<&Path>) -> Command {
    let mut cmd = Command::new(redis_cli_bin());
    cmd.args(["-h", HOST, "-p", &port.to_string()])
        .stdin(Stdio::null());
    if let Some(dir) = tls_dir {
        cmd.arg("--tls")
            .arg("--cacert")
            .arg(dir.join(CA_CERT))
            .arg("--cert")
            .arg(dir.join(CLIENT_CERT))
            .arg("--key")
            .arg(dir.join(CLIENT_KEY));
    }
    cmd
}

/// Run `cmd` (stdout and stderr captured) and wait at most `timeout`;
/// `Ok(None)` if it had to be killed.
pub(crate) fn output_with_timeout(
    mut cmd: Command,
    timeout: Duration,
) -> io::Result<Option<Output>> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Drain both pipes while waiting, so a chatty child never blocks.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(status.map(|status| Output {
        status,
        stdout,
        stderr,
    }))
}

/// A plain-TCP RESP connection to a local server, for readiness and cluster
/// state checks (no TLS).
pub(crate) struct RespConn {
    pub(crate) writer: TcpStream,
    pub(crate) reader: BufReader<TcpStream>,
}

impl RespConn {
    pub(crate) fn connect(port: u16) -> Result<RespConn, String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
            .map_err(|e| format!("connect: {e}"))?;
        let io_err = |e: io::Error| format!("i/o: {e}");
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(Duration::from_secs(1)))
            .map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        Ok(RespConn {
            writer,
            reader: BufReader::new(stream),
        })
    }

    /// Send one command and read its (non-array) reply; see [`read_reply`].
    pub(crate) fn call(&mut self, args: &[&str]) -> Result<String, String> {
        let io_err = |e: io::Error| format!("i/o: {e}");
        self.writer.write_all(&resp_command(args)).map_err(io_err)?;
        read_reply(&mut self.reader).map_err(io_err)
    }
}

/// One command on a fresh connection to `port`.
pub(crate) fn query(port: u16, args: &[&str]) -> Result<String, String> {
    RespConn::connect(port)?.call(args)
}

/// Encode a command as a RESP array of bulk strings (binary safe, so
/// passwords with spaces work).
pub(crate) fn resp_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Read one simple-string, error, integer or bulk-string reply. Simple
/// replies are returned with their type byte (`+PONG`, `-LOADING ...`);
/// bulk strings as their content.
pub(crate) fn read_reply(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
        if len < 0 {
            return Ok(String::new());
        }
        let mut buf = vec![0; len as usize + 2];
        reader.read_exact(&mut buf)?;
        buf.truncate(len as usize);
        return Ok(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_encoding() {
        assert_eq!(
            resp_command(&["AUTH", "default", "a b"]),
            b"*3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$3\r\na b\r\n"
        );
    }
}
