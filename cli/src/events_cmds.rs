//! `mirari cluster events`: what the registry's log changed, event by event. Followed, the
//! stream moves to another coordinator when its coordinator goes away and resumes right after
//! the last event printed: none is lost or printed twice.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use mirari_proto::convert::ClusterEventJson;
use mirari_proto::coordinator as pb;
use tonic::Code;

use crate::coordinators::{Coordinators, is_passing};
use crate::output::Format;

/// How long a follower keeps looking for a coordinator before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Default)]
pub struct EventsOptions {
    pub follow: bool,
    pub app: Option<String>,
    pub host: Option<String>,
    /// The raft index to start at.
    pub from: Option<u64>,
    /// Without `from`: how many of the newest events to start with.
    pub last: u32,
}

pub async fn events(
    coordinators: &mut Coordinators,
    options: EventsOptions,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let mut request = pb::WatchEventsRequest {
        from_index: options.from.unwrap_or(0),
        from_offset: 0,
        app: options.app.unwrap_or_default(),
        host: options.host.unwrap_or_default(),
        follow: options.follow,
        tail: if options.from.is_some() { 0 } else { options.last },
    };
    let mut lost_since = None;
    loop {
        let mut connected = false;
        let outcome = stream_once(coordinators, &mut request, &mut connected, format).await;
        if connected {
            lost_since = None;
        }
        let status = match outcome {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(StreamEnd::Status(status)) => status,
            Err(StreamEnd::Other(error)) => return Err(error),
        };
        if status.code() == Code::FailedPrecondition || !is_passing(&status) || !request.follow {
            return Err(anyhow::Error::new(status).context("reading the cluster's events failed"));
        }
        let since = *lost_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= RECONNECT_FOR {
            return Err(anyhow::Error::new(status).context("no coordinator serves the cluster's events"));
        }
        eprintln!(
            "==> the event stream broke ({}); resuming at index {} on another coordinator",
            status.message(),
            request.from_index
        );
        coordinators.next();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The events already printed are not asked for again.
        request.tail = 0;
    }
}

enum StreamEnd {
    Status(tonic::Status),
    Other(anyhow::Error),
}

impl From<tonic::Status> for StreamEnd {
    fn from(status: tonic::Status) -> Self {
        StreamEnd::Status(status)
    }
}

/// Prints events until the stream ends, moving `request`'s position past each one printed.
async fn stream_once(
    coordinators: &mut Coordinators,
    request: &mut pb::WatchEventsRequest,
    connected: &mut bool,
    format: Format,
) -> Result<(), StreamEnd> {
    let mut client = match coordinators.client().await {
        Ok(client) => client,
        Err(error) => return Err(StreamEnd::Status(tonic::Status::unavailable(format!("{error:#}")))),
    };
    let mut stream = client.watch_events(request.clone()).await?.into_inner();
    *connected = true;
    let mut stdout = std::io::stdout().lock();
    while let Some(event) = stream.message().await? {
        print_event(&mut stdout, &event, format).context("writing an event").map_err(StreamEnd::Other)?;
        request.from_index = event.index;
        request.from_offset = event.offset + 1;
        request.tail = 0;
    }
    Ok(())
}

fn print_event(out: &mut impl std::io::Write, event: &pb::ClusterEvent, format: Format) -> std::io::Result<()> {
    match format {
        Format::Json => {
            let line = ClusterEventJson::from(event);
            writeln!(out, "{}", serde_json::to_string(&line).expect("an event serializes"))?;
        }
        Format::Table => {
            let at = match event.at_ms {
                0 => "-".to_owned(),
                ms => humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
            };
            writeln!(out, "{:>8}  {at}  {:<20} {}", event.index, event.kind, event.text)?;
        }
    }
    out.flush()
}
