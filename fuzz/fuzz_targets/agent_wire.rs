//! What an agent decodes: the instances its API is asked to run, and the coordinators'
//! assignment sets. The first byte picks the message. (A build job's config is the `config`
//! target's, its bundle the `archive` target's.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirari_core::spec::InstanceSpec;
use mirari_proto::{agent as pb, coordinator};
use prost::Message;

fuzz_target!(|input: &[u8]| {
    let Some((&which, bytes)) = input.split_first() else { return };
    if which % 2 == 0 {
        if let Ok(request) = pb::RunInstancesRequest::decode(bytes)
            && let Some(spec) = &request.spec
        {
            let _ = InstanceSpec::try_from(spec);
        }
    } else if let Ok(assignments) = coordinator::Assignments::decode(bytes) {
        let _ = mirari_agent::cluster::decode_assignments(&assignments);
    }
});
