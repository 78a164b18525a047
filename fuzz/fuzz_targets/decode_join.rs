//! What a stranger (a client without a certificate) can make a node decode: its one frame, read
//! under the join limit. The input is tried as a whole frame and, behind a valid header, as the
//! body of every message code, so the fuzzer reaches each body decoder without first having to
//! find a valid header. No input may panic; whatever decodes and is allowed to anyone must be a
//! join request, and must re-encode to a frame that decodes the same.
#![no_main]

use halley_proto::codec::{decode_message, decode_message_body, encode_message, Header, PROTOCOL_VERSION};
use halley_proto::role::Access;
use halley_proto::{Limit, Message};
use libfuzzer_sys::fuzz_target;

/// Every code the codec knows lies below this.
const CODES: u16 = 64;

fn check(message: Message) {
    if message.access() == Access::Anyone {
        assert!(matches!(message, Message::JoinRequest(_)), "{}", message.kind());
    }
    let again = encode_message(&message, Limit::Join).expect("a decoded message re-encodes");
    assert_eq!(decode_message(&again, Limit::Join).ok(), Some(message));
}

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = decode_message(data, Limit::Join) {
        check(message);
    }
    let Ok(len) = u32::try_from(data.len()) else { return };
    if data.len() > Limit::Join.bytes() {
        return;
    }
    for code in 0..CODES {
        let header = Header { version: PROTOCOL_VERSION, code, len };
        if let Ok(message) = decode_message_body(&header, data, Limit::Join) {
            check(message);
        }
    }
});
