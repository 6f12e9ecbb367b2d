//! Fuzzes the consumer's payload decoding: any bytes a binding event can carry must decode to a
//! message or give a `DecodeError`, never panic. Run with `cargo +nightly fuzz run decode_message`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipeline::message::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::from_json(data) {
        // A decoded message re-encodes, and the encoding decodes to the same message.
        let again = Message::from_json(&message.to_json()).expect("re-encoded message decodes");
        assert_eq!(again, message);
    }
});
