//! Test support for `moslora study serve`: a server process started and stopped by the test
//! (by PID, on a free port), a plain HTTP/1.1 client over std::net, and a small study.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moslora::study::Key;

use super::study_support::*;

/// A study of 13 trials (two subjects, 10 pairs, 3 repeated): folder, key and key path.
pub fn small_study(root: &Path) -> (PathBuf, Key, PathBuf) {
    let r = write_render(&root.join("r1"), &RenderSpec::new("robot", "toy", 3, 2, 16));
    let c = write_render(
        &root.join("r2"),
        &RenderSpec::new("kitten", "cat", 2, 2, 16),
    );
    let study = root.join("STUDY");
    make_study(&[&r, &c], &study, &["--repeats", "3", "--seed", "42"]);
    let key_path = root.join("STUDY.key.json");
    let key = Key::load(&key_path).unwrap();
    assert_eq!(key.trials.len(), 13);
    (study, key, key_path)
}

/// A running `moslora study serve`, killed by PID when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Everything it has printed (stdout and stderr), as it comes.
    pub output: Arc<Mutex<String>>,
}

impl Server {
    /// Start `study serve STUDY --key KEY --bind 127.0.0.1:0 EXTRA...` and wait for its address.
    pub fn start(study: &Path, key: &Path, extra: &[&str]) -> Server {
        Server::try_start(study, key, extra)
            .unwrap_or_else(|out| panic!("the server did not start:\n{out}"))
    }

    /// As `start`, or everything it printed if it stopped before listening.
    pub fn try_start(study: &Path, key: &Path, extra: &[&str]) -> Result<Server, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_moslora"))
            .args(["study", "serve"])
            .arg(study)
            .arg("--key")
            .arg(key)
            .args(["--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting moslora study serve");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Option<SocketAddr>>();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = line.strip_prefix("listening on http://") {
                        let _ = tx.send(a.trim().parse().ok());
                    }
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
                let _ = tx.send(None);
            });
        }
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => Ok(Server {
                child,
                addr,
                output,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                let out = output.lock().unwrap().clone();
                Err(out)
            }
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn client(&self) -> Http {
        Http::new(self.addr)
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait for it to stop; its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The links file beside the key: name -> token.
pub fn tokens(key_path: &Path) -> HashMap<String, String> {
    let links = key_path.with_file_name(
        key_path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replace(".key.json", ".links.txt"),
    );
    std::fs::read_to_string(&links)
        .unwrap_or_else(|e| panic!("{}: {e}", links.display()))
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, link) = l.split_once('\t').unwrap();
            (
                name.to_string(),
                link.rsplit_once('#').unwrap().1.to_string(),
            )
        })
        .collect()
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive HTTP/1.1 client on one connection.
pub struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http { addr, conn: None }
    }

    /// One request; an error if the connection fails (no retry: a failed request is not
    /// acknowledged).
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> std::io::Result<Resp> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.unwrap_or_default());
        self.raw(&bytes)
    }

    /// A POST that sends `Expect: 100-continue` and its body only once the server asks for
    /// it, as curl does for large bodies: a refusal on the headers alone comes back without
    /// the body on the wire.
    pub fn post_expecting_continue(
        &mut self,
        path: &str,
        token: &str,
        body: &[u8],
    ) -> std::io::Result<(Resp, bool)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            self.addr,
            body.len()
        );
        let r = self.raw(head.as_bytes())?;
        if r.status != 100 {
            // The server answered on the headers: the body was never sent, so this
            // connection is out of step with it and is not used again.
            self.conn = None;
            return Ok((r, false));
        }
        Ok((self.raw(body)?, true))
    }

    /// Send bytes as they are and read one response.
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<Resp> {
        if self.conn.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.set_nodelay(true)?;
            self.conn = Some(BufReader::new(s));
        }
        let result = (|| {
            let conn = self.conn.as_mut().unwrap();
            conn.get_mut().write_all(bytes)?;
            read_response(conn)
        })();
        if result.is_err() {
            self.conn = None;
        }
        if let Ok(r) = &result {
            if r.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
            {
                self.conn = None;
            }
        }
        result
    }

    pub fn get(&mut self, path: &str, token: Option<&str>) -> Resp {
        self.send("GET", path, token, None).unwrap()
    }

    pub fn post(&mut self, path: &str, token: Option<&str>, body: &serde_json::Value) -> Resp {
        self.send("POST", path, token, Some(body.to_string().as_bytes()))
            .unwrap()
    }
}

fn read_response(conn: &mut BufReader<TcpStream>) -> std::io::Result<Resp> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        conn.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad(l))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let header = |n: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("content-length"))?;
        body.resize(len, 0);
        conn.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let n = usize::from_str_radix(line.trim(), 16).map_err(|_| bad("chunk size"))?;
            let mut chunk = vec![0; n + 2];
            conn.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}
