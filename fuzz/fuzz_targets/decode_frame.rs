//! Feeds arbitrary bytes to every decoder entry point: wire frames at both limits, a header alone,
//! data-dir records, and upgrade handover frames (what the admin socket and an old daemon's
//! socket pair read). None may panic; a successful decode must re-encode to the same frame.
#![no_main]

use halley_proto::codec::{
    decode_handover, decode_message, decode_record, encode_handover, encode_message, Header,
    PROTOCOL_VERSION,
};
use halley_proto::disk::{NodeRecord, TokenBook};
use halley_proto::Limit;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limit in [Limit::Gossip, Limit::Rpc] {
        if let Ok(message) = decode_message(data, limit) {
            let again = encode_message(&message, limit).expect("a decoded message re-encodes");
            assert_eq!(decode_message(&again, limit).ok(), Some(message));
        }
    }
    let _ = Header::parse(data, PROTOCOL_VERSION, Limit::Rpc);
    let _ = decode_record::<NodeRecord>(data);
    let _ = decode_record::<TokenBook>(data);
    if let Ok(step) = decode_handover(data) {
        let again = encode_handover(&step).expect("a decoded handover frame re-encodes");
        assert_eq!(decode_handover(&again).ok(), Some(step));
    }
});
