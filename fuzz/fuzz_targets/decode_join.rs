//! What a stranger (a client without a certificate) can make a node decode: its one frame, read
//! under the join limit. No input may panic; whatever decodes and is allowed to anyone must be
//! a join request, and must re-encode to a frame that decodes the same.
#![no_main]

use halley_proto::codec::{decode_message_body, encode_message, Header, HEADER_LEN, PROTOCOL_VERSION};
use halley_proto::role::Access;
use halley_proto::{Limit, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = Header::parse(data, PROTOCOL_VERSION, Limit::Join) else {
        return;
    };
    assert!(header.len as usize <= Limit::Join.bytes(), "a header over the join limit parsed");
    let Ok(message) = decode_message_body(&header, &data[HEADER_LEN..], Limit::Join) else {
        return;
    };
    if message.access() == Access::Anyone {
        assert!(matches!(message, Message::JoinRequest(_)), "{}", message.kind());
    }
    let again = encode_message(&message, Limit::Join).expect("a decoded message re-encodes");
    let header = Header::parse(&again, PROTOCOL_VERSION, Limit::Join).expect("its header");
    assert_eq!(
        decode_message_body(&header, &again[HEADER_LEN..], Limit::Join).ok(),
        Some(message)
    );
});
