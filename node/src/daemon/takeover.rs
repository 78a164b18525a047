//! The new daemon's side of an `upgrade` (see [`crate::daemon::upgrade`]): a daemon started
//! with [`HANDOVER_ENV`] says hello to the old one on the inherited socket, waits for its
//! sockets, and starts from them.
//!
//! ## Guarantees
//! - An offer whose descriptor count does not match what it names is refused whole (every
//!   descriptor received is closed), and the daemon stops: the old one then serves on.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

use halley_proto::handover::Handover;

use crate::daemon::fd_pass;
use crate::daemon::upgrade::{HANDOVER_ENV, Inherit, OnServing, TAKEOVER_TIMEOUT};
use crate::error::{Error, Result};

/// If this daemon was started by an upgrade: what the old daemon hands over. Blocks until the
/// old daemon has let go of the data dir (run it off the async runtime).
pub fn from_env() -> Result<Option<Inherit>> {
    let Some(value) = std::env::var_os(HANDOVER_ENV) else {
        return Ok(None);
    };
    let fd: i32 = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{HANDOVER_ENV}={value:?} is not a descriptor number; it is set by 'halley-node upgrade' only, so unset it"
            ))
        })?;
    // The descriptor must be an open socket: a stray variable must not make this daemon take
    // some other file as its handover channel.
    // SAFETY: fstat on any integer is safe; the result is only read when it succeeds.
    let is_socket = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    };
    if !is_socket {
        return Err(Error::Invalid(format!(
            "{HANDOVER_ENV}={fd} names no open socket; it is set by 'halley-node upgrade' only, so unset it"
        )));
    }
    // SAFETY: the descriptor is open, a socket, and nothing else in this process owns it.
    let sock = unsafe { UnixStream::from(OwnedFd::from_raw_fd(fd)) };
    set_cloexec(&sock);
    fd_pass::send(
        &sock,
        &Handover::Hello {
            version: crate::VERSION.to_owned(),
            pid: std::process::id(),
        },
        &[],
    )?;
    sock.set_read_timeout(Some(TAKEOVER_TIMEOUT))
        .map_err(|e| Error::Net(format!("cannot set up the handover socket: {e}")))?;
    let Some((offer, fds)) = fd_pass::receive(&sock, fd_pass::MAX_FDS)? else {
        return Err(Error::Net(
            "the old daemon closed the handover before offering its sockets; it serves on".into(),
        ));
    };
    let Handover::Offer {
        entry_points,
        mesh,
        metrics,
    } = offer
    else {
        return Err(Error::Protocol(format!(
            "the old daemon sent {offer:?} where its sockets were expected"
        )));
    };
    let mut inherit = inherit_from(&entry_points, mesh, metrics, fds)?;
    sock.set_read_timeout(None)
        .map_err(|e| Error::Net(format!("cannot set up the handover socket: {e}")))?;
    inherit.on_serving = Some(OnServing::Tell(sock));
    tracing::info!(
        entry_points = entry_points.len(),
        mesh,
        metrics,
        "taking over from the old daemon"
    );
    Ok(Some(inherit))
}

/// Sorts received descriptors into what the offer says they are.
fn inherit_from(
    entry_points: &[SocketAddr],
    mesh: bool,
    metrics: bool,
    fds: Vec<OwnedFd>,
) -> Result<Inherit> {
    let expected = entry_points.len() + usize::from(mesh) + usize::from(metrics);
    if fds.len() != expected {
        return Err(Error::Protocol(format!(
            "the old daemon sent {} descriptors for an offer of {expected}",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let mut inherit = Inherit::default();
    for (addr, fd) in entry_points.iter().zip(fds.by_ref()) {
        inherit
            .entry_points
            .insert(*addr, std::net::TcpListener::from(fd));
    }
    if mesh {
        inherit.mesh = fds.next().map(std::net::UdpSocket::from);
    }
    if metrics {
        inherit.metrics = fds.next().map(std::net::TcpListener::from);
    }
    Ok(inherit)
}

/// The inherited socket must not reach the processes this daemon starts.
fn set_cloexec(sock: &UnixStream) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
    // SAFETY: F_SETFD on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offer_with_the_wrong_number_of_descriptors_is_refused() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = OwnedFd::from(l);
        let e = inherit_from(&[addr, addr], false, false, vec![fd])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("1 descriptors for an offer of 2"), "{e}");
    }

    #[test]
    fn descriptors_are_sorted_by_the_offer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let uaddr = u.local_addr().unwrap();
        let inherit = inherit_from(
            &[addr],
            true,
            false,
            vec![OwnedFd::from(l), OwnedFd::from(u)],
        )
        .unwrap();
        assert_eq!(inherit.entry_points[&addr].local_addr().unwrap(), addr);
        assert_eq!(inherit.mesh.unwrap().local_addr().unwrap(), uaddr);
        assert!(inherit.metrics.is_none());
    }
}
