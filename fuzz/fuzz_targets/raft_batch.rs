//! What a coordinator receives from a peer: a `RaftBatch`, then each raft message in it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirari_coordinator::consensus::decode_message;
use mirari_proto::coordinator::RaftBatch;
use prost::Message;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(batch) = RaftBatch::decode(bytes) {
        for message in &batch.messages {
            let _ = decode_message(message);
        }
    }
    let _ = decode_message(bytes);
});
