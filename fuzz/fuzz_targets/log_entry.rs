//! A raft log entry as it is stored and replicated: any bytes decode to a request or an error,
//! and a request that decodes encodes back to bytes that decode to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirari_proto::log_codec;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(request) = log_codec::decode(bytes) {
        let again = log_codec::decode(&log_codec::encode(&request)).expect("an encoded request decodes");
        assert_eq!(again, request, "the entry does not survive a round trip");
    }
});
