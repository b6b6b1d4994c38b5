//! What a coordinator decodes from agents and clients: host registrations, instance reports,
//! and the app versions and deployments a proposal carries. The first byte picks the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirari_proto::{coordinator as pb, log_codec, registry};
use prost::Message;

fuzz_target!(|input: &[u8]| {
    let Some((&which, bytes)) = input.split_first() else { return };
    match which % 4 {
        0 => {
            if let Ok(request) = pb::RegisterHostRequest::decode(bytes)
                && let Some(host) = &request.host
            {
                let _ = log_codec::host_from_pb(host);
            }
        }
        1 => {
            if let Ok(request) = pb::ReportInstancesRequest::decode(bytes) {
                for report in &request.reports {
                    let _ = log_codec::report_from_pb(report);
                }
            }
        }
        2 => {
            if let Ok(app) = registry::AppVersion::decode(bytes) {
                let _ = log_codec::app_from_pb(&app);
            }
        }
        _ => {
            if let Ok(spec) = registry::DeploymentSpec::decode(bytes) {
                let _ = log_codec::deployment_from_pb(&spec);
            }
        }
    }
});
