//! Health probes of a slot: one check, bounded by the spec's `timeout`, with a short description
//! of what failed (shown by a deploy whose release never becomes healthy).
//!
//! ## Guarantees
//! - A probe never takes longer than its timeout: a hanging endpoint or command fails the check
//!   (an `exec` check's process group is killed).
//! - At most 4 KiB of an HTTP answer and of a command's output is read.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use halley_proto::spec::HealthCheck;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_READ: usize = 4096;

/// What an `exec` check runs with.
#[derive(Debug, Clone)]
pub struct ExecContext<'a> {
    /// The release directory (working directory).
    pub dir: &'a Path,
    /// The slot's environment.
    pub env: &'a [(String, String)],
    /// The service's user and view, when the slot runs confined: its checks run the same way.
    /// An error (the user cannot be resolved) fails every `exec` check rather than run it as
    /// this node.
    pub user: std::result::Result<Option<&'a crate::host::view::Confinement>, &'a str>,
}

/// The result of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it passed.
    pub passed: bool,
    /// What happened, for a failed check.
    pub output: String,
}

fn fail(output: String) -> Outcome {
    Outcome {
        passed: false,
        output,
    }
}

fn pass() -> Outcome {
    Outcome {
        passed: true,
        output: String::new(),
    }
}

/// Runs one check against the slot on `port`.
pub async fn probe(
    check: &HealthCheck,
    port: u16,
    timeout: Duration,
    exec: &ExecContext<'_>,
) -> Outcome {
    let run = async {
        match check {
            HealthCheck::Tcp => tcp(port).await,
            HealthCheck::Http { path, statuses } => http(port, path, statuses).await,
            HealthCheck::Exec(argv) => command(argv, port, exec).await,
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(outcome) => outcome,
        Err(_) => fail(format!(
            "{} did not answer within the {}ms health timeout",
            describe(check, port),
            timeout.as_millis()
        )),
    }
}

fn describe(check: &HealthCheck, port: u16) -> String {
    match check {
        HealthCheck::Tcp => format!("TCP connect to 127.0.0.1:{port}"),
        HealthCheck::Http { path, .. } => format!("GET http://127.0.0.1:{port}{path}"),
        HealthCheck::Exec(argv) => format!("health command {:?}", argv.join(" ")),
    }
}

async fn tcp(port: u16) -> Outcome {
    match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(_) => pass(),
        Err(e) => fail(format!("TCP connect to 127.0.0.1:{port} failed: {e}")),
    }
}

async fn http(port: u16, path: &str, statuses: &[u16]) -> Outcome {
    let url = format!("http://127.0.0.1:{port}{path}");
    let mut stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return fail(format!("GET {url}: cannot connect: {e}")),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: halley-health\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = stream.write_all(request.as_bytes()).await {
        return fail(format!("GET {url}: cannot send: {e}"));
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < MAX_READ {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => return fail(format!("GET {url}: {e}")),
            Err(_) => break,
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() >= 512 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let status: Option<u16> = text
        .lines()
        .next()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let Some(status) = status else {
        return fail(format!(
            "GET {url}: the answer is not HTTP: {:?}",
            text.chars().take(80).collect::<String>()
        ));
    };
    let ok = if statuses.is_empty() {
        (200..400).contains(&status)
    } else {
        statuses.contains(&status)
    };
    if ok {
        return pass();
    }
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    match excerpt(body) {
        words if words.is_empty() => fail(format!("GET {url} answered {status}")),
        words => fail(format!("GET {url} answered {status}: {words}")),
    }
}

/// Longest body excerpt a failed check reports: enough to show an error's first line, short
/// enough for one line of `services` and `history`.
const EXCERPT: usize = 120;

/// The words of a failed check's body on one line: markup, styles and scripts dropped (an
/// error page's HTML is noise in a deploy's error and in `history`), whitespace collapsed, cut
/// at [`EXCERPT`].
fn excerpt(body: &str) -> String {
    let body = without_elements(body, &["style", "script"]);
    let mut text = String::new();
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if in_tag => {}
            c if c.is_whitespace() || c.is_control() => text.push(' '),
            c => text.push(c),
        }
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = String::new();
    for word in words {
        if out.chars().count() + word.chars().count() + 1 > EXCERPT {
            out.push('…');
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `html` without the named elements and what they hold (ASCII case-insensitive).
fn without_elements(html: &str, names: &[&str]) -> String {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len());
    let mut at = 0;
    'outer: while at < html.len() {
        for name in names {
            let open = format!("<{name}");
            if lower[at..].starts_with(&open) {
                let close = format!("</{name}>");
                at = lower[at..]
                    .find(&close)
                    .map_or(html.len(), |i| at + i + close.len());
                continue 'outer;
            }
        }
        let next = html[at..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&html[at..at + next]);
        at += next;
    }
    out
}

async fn command(argv: &[String], port: u16, ctx: &ExecContext<'_>) -> Outcome {
    let argv = crate::host::process::argv(argv, port);
    let program = match crate::host::process::program(ctx.dir, &argv[0]) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .current_dir(ctx.dir)
        .env_clear()
        .envs(ctx.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    let user = match ctx.user {
        Ok(user) => user,
        Err(e) => return fail(format!("not run: {e}")),
    };
    if let Some(user) = user {
        match user.pre_exec(ctx.dir) {
            // SAFETY: the closure only makes system calls on memory prepared before the fork.
            Ok(enter) => unsafe {
                cmd.pre_exec(enter);
            },
            Err(e) => return fail(e.to_string()),
        }
    }
    let child = cmd.spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot run health command {:?}: {e}", argv[0])),
    };
    let mut out = Vec::new();
    let (mut so, mut se) = (child.stdout.take(), child.stderr.take());
    let read_out = async {
        let mut a = Vec::new();
        let mut b = Vec::new();
        if let Some(s) = so.as_mut() {
            let _ = s.take(MAX_READ as u64).read_to_end(&mut a).await;
        }
        if let Some(s) = se.as_mut() {
            let _ = s.take(MAX_READ as u64).read_to_end(&mut b).await;
        }
        a.extend(b);
        a
    };
    let (status, output) = tokio::join!(child.wait(), read_out);
    out.extend(output);
    let text = String::from_utf8_lossy(&out).trim().to_owned();
    match status {
        Ok(s) if s.success() => pass(),
        Ok(s) => fail(format!(
            "health command {:?} {s}: {}",
            argv.join(" "),
            text.chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        )),
        Err(e) => fail(format!("health command {:?}: {e}", argv[0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_shows_an_error_pages_words_not_its_markup() {
        let page = "<!DOCTYPE html>\n<html><head><title>Error 500</title><style>body { color: red }</style>\n<script>let x = 1 < 2;</script></head>\n<body><h1>Internal   Server Error</h1><p>database is locked</p></body></html>";
        assert_eq!(
            excerpt(page),
            "Error 500 Internal Server Error database is locked"
        );
        let long = "word ".repeat(100);
        let cut = excerpt(&long);
        assert!(
            cut.ends_with('…') && cut.chars().count() <= EXCERPT + 1,
            "{cut}"
        );
        assert_eq!(
            excerpt("plain text\r\nsecond line"),
            "plain text second line"
        );
        assert_eq!(excerpt(""), "");
    }

    #[tokio::test]
    async fn http_probe_reads_status_and_times_out_on_a_hang() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                n += 1;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                match n {
                    1 => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                    2 => {
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 503 Unavailable\r\ncontent-length: 7\r\n\r\nwarming",
                            )
                            .await;
                    }
                    // Hang: keep the socket open and say nothing.
                    _ => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            }
        });
        let check = HealthCheck::Http {
            path: "/up".into(),
            statuses: vec![],
        };
        let ctx = ExecContext {
            dir: Path::new("/"),
            env: &[],
            user: Ok(None),
        };
        let t = Duration::from_millis(300);
        assert!(probe(&check, port, t, &ctx).await.passed);
        let second = probe(&check, port, t, &ctx).await;
        assert!(!second.passed);
        assert!(
            second.output.contains("503") && second.output.contains("warming"),
            "{}",
            second.output
        );
        let hung = probe(&check, port, t, &ctx).await;
        assert!(
            hung.output.contains("did not answer within"),
            "{}",
            hung.output
        );
    }

    #[tokio::test]
    async fn exec_probe_passes_on_exit_zero_and_shows_output() {
        let ctx = ExecContext {
            dir: Path::new("/"),
            env: &[("PATH".into(), "/usr/bin:/bin".into())],
            user: Ok(None),
        };
        let t = Duration::from_secs(5);
        let ok = HealthCheck::Exec(vec!["true".into()]);
        assert!(probe(&ok, 1, t, &ctx).await.passed);
        let bad = HealthCheck::Exec(vec![
            "sh".into(),
            "-c".into(),
            "echo db down; exit 3".into(),
        ]);
        let out = probe(&bad, 1, t, &ctx).await;
        assert!(!out.passed);
        assert!(out.output.contains("db down"), "{}", out.output);
    }
}
