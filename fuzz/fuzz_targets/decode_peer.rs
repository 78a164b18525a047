//! What a member can make a node decode: a frame under the RPC limit. The input is tried as a
//! whole frame and, behind a valid header, as the body of every message code (peer requests,
//! steps, replies, gossip), so each body decoder is reached directly. No input may panic, and a
//! decoded message re-encodes to a frame that decodes the same.
#![no_main]

use halley_proto::codec::{decode_message, decode_message_body, encode_message, Header, PROTOCOL_VERSION};
use halley_proto::{Limit, Message};
use libfuzzer_sys::fuzz_target;

/// Every code the codec knows lies below this.
const CODES: u16 = 64;

fn check(message: Message) {
    let _ = (message.access(), message.kind());
    let again = encode_message(&message, Limit::Rpc).expect("a decoded message re-encodes");
    assert_eq!(decode_message(&again, Limit::Rpc).ok(), Some(message));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode_message(data, Limit::Rpc) {
        check(message);
    }
    let Ok(len) = u32::try_from(data.len()) else { return };
    for code in 0..CODES {
        let header = Header { version: PROTOCOL_VERSION, code, len };
        if let Ok(message) = decode_message_body(&header, data, Limit::Rpc) {
            check(message);
        }
    }
});
