//! A raft log entry as it is stored and replicated: any bytes decode to its requests (one, or a
//! batch's) or an error, and requests that decode encode back, one alone or several as a
//! batch, to bytes that decode to the same requests.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirari_proto::log_codec;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(requests) = log_codec::decode_entry(bytes) {
        let encoded: Vec<Vec<u8>> = requests.iter().map(log_codec::encode).collect();
        let entry = match encoded.as_slice() {
            [one] => one.clone(),
            _ => log_codec::encode_batch(encoded.iter().map(Vec::as_slice)),
        };
        let again = log_codec::decode_entry(&entry).expect("encoded requests decode");
        assert_eq!(again, requests, "the entry does not survive a round trip");
    }
});
