//! What a member can make a node decode: a request frame under the RPC limit. No input may
//! panic; a decoded peer request has an access rule and a name, and re-encodes to the same.
#![no_main]

use halley_proto::codec::{decode_message, encode_message};
use halley_proto::{Limit, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = decode_message(data, Limit::Rpc) else {
        return;
    };
    let _ = message.access();
    if let Message::Peer(request) = &message {
        assert!(!request.kind().is_empty());
        let _ = request.access();
    }
    let again = encode_message(&message, Limit::Rpc).expect("a decoded message re-encodes");
    assert_eq!(decode_message(&again, Limit::Rpc).ok(), Some(message));
});
