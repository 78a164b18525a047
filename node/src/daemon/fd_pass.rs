//! Handover frames, and open descriptors beside them (`SCM_RIGHTS`), on a unix stream socket:
//! the channel between an old daemon and the new one that replaces it. Blocking, with the
//! socket's own timeouts; callers run it off the async runtime.
//!
//! ## Guarantees
//! - A frame is read header first and checked before its body is read (at most
//!   [`Limit::Join`] bytes), whatever length the other side claims.
//! - Received descriptors are owned (closed when dropped) and close on exec; more than the
//!   caller expects, or descriptors on a frame that should have none, are an error, and are
//!   closed.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use halley_proto::Limit;
use halley_proto::codec::{self, HANDOVER_VERSION, HEADER_LEN, Header};
use halley_proto::handover::Handover;

use crate::error::{Error, Result};

/// The most descriptors one frame may carry: entry points, the mesh and metrics.
pub const MAX_FDS: usize = 250;

/// Writes one frame with `fds` attached to its first byte.
pub fn send(sock: &UnixStream, message: &Handover, fds: &[BorrowedFd<'_>]) -> Result<()> {
    if fds.len() > MAX_FDS {
        return Err(Error::Invalid(format!(
            "cannot hand over {} descriptors at once (at most {MAX_FDS})",
            fds.len()
        )));
    }
    let bytes = codec::encode_handover(message)?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = if raw.is_empty() {
        0
    } else {
        sendmsg_fds(sock, &bytes, &raw).map_err(|e| net("cannot hand descriptors over", e))?
    };
    let mut writer = sock;
    writer
        .write_all(&bytes[sent..])
        .map_err(|e| net("cannot write to the other daemon", e))
}

/// Reads one frame and the descriptors sent with it (at most `max_fds`). `Ok(None)`: the other
/// side closed the socket before sending anything.
pub fn receive(sock: &UnixStream, max_fds: usize) -> Result<Option<(Handover, Vec<OwnedFd>)>> {
    let mut header = [0u8; HEADER_LEN];
    let (got, fds) = recvmsg_fds(sock, &mut header).map_err(|e| net("cannot read", e))?;
    if got == 0 {
        return Ok(None);
    }
    if fds.len() > max_fds {
        return Err(Error::Protocol(format!(
            "the other daemon sent {} descriptors where at most {max_fds} were expected",
            fds.len()
        )));
    }
    let mut reader = sock;
    reader
        .read_exact(&mut header[got..])
        .map_err(|e| net("the other daemon's frame header was cut off", e))?;
    let parsed = Header::parse(&header, HANDOVER_VERSION, Limit::Join)?;
    let mut body = vec![0u8; parsed.len as usize];
    reader
        .read_exact(&mut body)
        .map_err(|e| net("the other daemon's frame was cut off", e))?;
    Ok(Some((codec::decode_handover_body(&parsed, &body)?, fds)))
}

fn net(what: &str, e: std::io::Error) -> Error {
    Error::Net(format!("{what}: {e}"))
}

/// Space for the control message of `n` descriptors.
fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

fn sendmsg_fds(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<usize> {
    let mut control = vec![0u8; cmsg_space(fds.len())];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    // SAFETY: `control` has room for one header and `fds` (CMSG_SPACE above), so CMSG_FIRSTHDR
    // is non-null and CMSG_DATA has room for every descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
    }
    loop {
        // SAFETY: `msg` points at live buffers; the socket is open for the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn recvmsg_fds(sock: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut control = vec![0u8; cmsg_space(MAX_FDS)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: as above; MSG_CMSG_CLOEXEC makes received descriptors close on exec.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen; the CMSG_* macros walk only
    // within it, and each SCM_RIGHTS payload holds whole descriptors that are now ours.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other(
            "more descriptors were sent than this side takes (the rest were closed)",
        ));
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn a_listener_handed_over_accepts_on_the_other_side() {
        let (a, b) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let offer = Handover::Offer {
            entry_points: vec![addr],
            mesh: false,
            metrics: false,
        };
        send(&a, &offer, &[listener.as_fd()]).unwrap();
        drop(listener);
        let (got, fds) = receive(&b, 4).unwrap().unwrap();
        assert_eq!(got, offer);
        assert_eq!(fds.len(), 1);
        let handed = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        assert_eq!(handed.local_addr().unwrap(), addr);
        let client = std::thread::spawn(move || std::net::TcpStream::connect(addr).unwrap());
        handed.accept().unwrap();
        client.join().unwrap();
    }

    #[test]
    fn a_frame_without_descriptors_and_a_closed_socket_read_as_such() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, &Handover::Serving, &[]).unwrap();
        let (got, fds) = receive(&b, 0).unwrap().unwrap();
        assert_eq!((got, fds.len()), (Handover::Serving, 0));
        drop(a);
        assert!(receive(&b, 0).unwrap().is_none());
    }

    #[test]
    fn more_descriptors_than_expected_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send(&a, &Handover::Serving, &[l.as_fd(), l.as_fd()]).unwrap();
        let e = receive(&b, 1).unwrap_err().to_string();
        assert!(e.contains("2 descriptors"), "{e}");
    }
}
