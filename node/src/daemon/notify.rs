//! systemd's readiness notification (`sd_notify`): a daemon under a `Type=notify` unit says it
//! is ready, and which pid is the service's main process now. After an `upgrade` that is the new
//! daemon, so systemd follows it instead of taking the old one's exit for the service's end
//! (the unit needs `NotifyAccess=all`: the new daemon is not the pid systemd started).
//!
//! ## Guarantees
//! - Without `NOTIFY_SOCKET` in the environment nothing is sent; a failed send is logged once
//!   per call and changes nothing else.

use std::os::unix::net::UnixDatagram;

/// Says this daemon serves and is the service's main process.
pub fn ready() {
    send(&format!("READY=1\nMAINPID={}\n", std::process::id()));
}

fn send(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| {
        let socket = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        // A leading '@' names a socket in the abstract namespace.
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => {
                <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(name)?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)
    })();
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_names_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // SAFETY: no other thread of this test binary reads NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        super::ready();
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 128];
        let n = listener.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert_eq!(text, format!("READY=1\nMAINPID={}\n", std::process::id()));
    }
}
