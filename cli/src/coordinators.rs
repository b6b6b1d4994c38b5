//! Talking to the coordinators: any of them takes any request, so a call that fails for a
//! passing reason (a coordinator down, a leader election) moves on to the next and tries again.

use std::time::{Duration, Instant};

use anyhow::Context;
use mirari_proto::coordinator::coordinator_client::CoordinatorClient;
use mirari_proto::endpoint::Endpoint;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// How long a call keeps trying before giving up.
const RETRY_FOR: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Status of 100,000 instances is a large message.
const MAX_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug)]
pub struct Coordinators {
    endpoints: Vec<Endpoint>,
    current: usize,
    client: Option<CoordinatorClient<Channel>>,
}

/// Failures that another attempt (perhaps on another coordinator) may not meet.
pub(crate) fn is_passing(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown)
}

impl Coordinators {
    pub fn new(endpoints: &[Endpoint]) -> Self {
        Self { endpoints: endpoints.to_vec(), current: 0, client: None }
    }

    fn listed(&self) -> String {
        self.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
    }

    /// A connected client, trying each coordinator once.
    pub async fn client(&mut self) -> anyhow::Result<CoordinatorClient<Channel>> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        anyhow::ensure!(!self.endpoints.is_empty(), "no coordinator address given; set --coordinator or MIRARI_ADDR");
        let mut last_error = None;
        for _ in 0..self.endpoints.len() {
            let endpoint = &self.endpoints[self.current % self.endpoints.len()];
            match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
                Ok(Ok(channel)) => {
                    let client = CoordinatorClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES);
                    self.client = Some(client.clone());
                    return Ok(client);
                }
                Ok(Err(error)) => last_error = Some(anyhow::Error::new(error)),
                Err(_) => last_error = Some(anyhow::anyhow!("{endpoint} did not answer within {CONNECT_TIMEOUT:?}")),
            }
            self.current += 1;
        }
        Err(last_error
            .expect("at least one attempt")
            .context(format!("no coordinator answered at {}; set --coordinator or MIRARI_ADDR", self.listed())))
    }

    /// Drops the current connection: the next call goes to the next coordinator.
    pub(crate) fn next(&mut self) {
        self.client = None;
        self.current += 1;
    }

    /// Calls `rpc` until it succeeds or fails for a lasting reason. Writes carry request IDs,
    /// so a retried write applies once.
    pub async fn call<T>(
        &mut self,
        what: &str,
        mut rpc: impl AsyncFnMut(CoordinatorClient<Channel>) -> Result<T, Status>,
    ) -> anyhow::Result<T> {
        let give_up = Instant::now() + RETRY_FOR;
        let mut told = None;
        loop {
            let outcome = match self.client().await {
                Ok(client) => rpc(client).await.map_err(anyhow::Error::new),
                Err(error) => Err(error),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(error) => {
                    let status = error.downcast_ref::<Status>();
                    let passing = status.is_none_or(is_passing);
                    if !passing || Instant::now() >= give_up {
                        return Err(error).with_context(|| format!("{what} failed"));
                    }
                    // Say why it waits (once per reason): a full disk, an election, a host down.
                    let reason = status.map_or_else(|| format!("{error:#}"), |s| s.message().to_owned());
                    if told.as_ref() != Some(&reason) {
                        eprintln!("==> {what}: {reason}; trying again for up to {}s", RETRY_FOR.as_secs());
                        told = Some(reason);
                    }
                    self.next();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }
}
