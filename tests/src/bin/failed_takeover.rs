//! A stand-in for a broken halley-node build, for `upgrade` tests: it answers `version` like
//! a halley-node, says hello on the handover socket, takes the old daemon's offer (sockets and
//! all) and then exits with status 3 instead of serving.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use halley_proto::codec::{self, HEADER_LEN};
use halley_proto::handover::Handover;

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("version") {
        println!(
            "halley-node 9.9.9-broken protocol={} disk={} arch={}",
            codec::PROTOCOL_VERSION,
            codec::DISK_FORMAT_VERSION,
            std::env::consts::ARCH
        );
        return std::process::ExitCode::SUCCESS;
    }
    let Some(fd) = std::env::var("HALLEY_HANDOVER_FD")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    else {
        eprintln!("failed-takeover: not started by an upgrade");
        return std::process::ExitCode::from(2);
    };
    // SAFETY: the descriptor the old daemon passed; nothing else here owns it.
    let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
    let hello = Handover::Hello {
        version: "9.9.9-broken".into(),
        pid: std::process::id(),
    };
    let Ok(bytes) = codec::encode_handover(&hello) else {
        return std::process::ExitCode::from(2);
    };
    if sock.write_all(&bytes).is_err() {
        return std::process::ExitCode::from(2);
    }
    // The offer: its descriptors are dropped with the read (no room was given for them).
    let mut header = [0u8; HEADER_LEN];
    if sock.read_exact(&mut header).is_ok() {
        let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let mut body = vec![0u8; len.min(16 * 1024)];
        let _ = sock.read_exact(&mut body);
        eprintln!("failed-takeover: took the offer; exiting without serving");
    }
    std::process::ExitCode::from(3)
}
