//! Reading and writing one [`Message`] frame on an async byte stream (a QUIC stream or the admin
//! unix socket). The header is read and checked first, so at most the frame kind's limit is ever
//! buffered, whatever length the peer claims; and the body buffer grows with the bytes that
//! arrive (to at most twice what was received), so a claimed length the peer never sends costs
//! nothing.

use halley_proto::codec::{self, HEADER_LEN, Header, PROTOCOL_VERSION};
use halley_proto::{Limit, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// What a body buffer starts with before any of it has arrived.
const FIRST_CHUNK: usize = 8 * 1024;

/// Reads one frame. Returns `None` if the stream ended cleanly before any byte.
pub async fn read_message<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: Limit,
) -> Result<Option<Message>> {
    let Some(header) = read_header(reader).await? else {
        return Ok(None);
    };
    let parsed = Header::parse(&header, PROTOCOL_VERSION, limit)?;
    let body = read_body(reader, &parsed).await?;
    Ok(Some(codec::decode_message_body(&parsed, &body, limit)?))
}

/// Reads a frame's header, unchecked (the caller picks the version it expects). Returns `None`
/// if the stream ended cleanly before any byte.
pub async fn read_header<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Option<[u8; HEADER_LEN]>> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        let n = reader
            .read(&mut header[got..])
            .await
            .map_err(|e| Error::Net(format!("read failed: {e}")))?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(halley_proto::Error::Truncated {
                need: HEADER_LEN as u64,
                have: got as u64,
            }
            .into());
        }
        got += n;
    }
    Ok(Some(header))
}

/// Reads the body a checked header announced.
pub async fn read_body<R: AsyncRead + Unpin>(reader: &mut R, parsed: &Header) -> Result<Vec<u8>> {
    let mut body = Vec::with_capacity((parsed.len as usize).min(FIRST_CHUNK));
    let got = reader
        .take(u64::from(parsed.len))
        .read_to_end(&mut body)
        .await
        .map_err(|e| Error::Net(format!("read failed: {e}")))?;
    if got < parsed.len as usize {
        return Err(Error::Net(format!(
            "frame body truncated: {} bytes expected, the stream ended after {got}",
            parsed.len
        )));
    }
    Ok(body)
}

/// Writes one frame.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Message,
    limit: Limit,
) -> Result<()> {
    let bytes = codec::encode_message(message, limit)?;
    writer
        .write_all(&bytes)
        .await
        .map_err(|e| Error::Net(format!("write failed: {e}")))?;
    writer
        .flush()
        .await
        .map_err(|e| Error::Net(format!("flush failed: {e}")))
}
