//! A state-machine snapshot, as read from disk or received from the leader: any bytes give a
//! machine or a `SnapshotError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirari_coordinator::consensus::machine::Machine;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(machine) = Machine::decode(bytes) {
        Machine::decode(&machine.encode()).expect("an encoded snapshot decodes");
    }
});
