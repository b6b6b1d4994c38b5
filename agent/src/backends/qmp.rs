//! A minimal QMP client: QEMU's JSON machine protocol over its Unix socket.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// No QMP exchange of ours should take longer than this.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP i/o failed")]
    Io(#[from] std::io::Error),
    #[error("QMP did not answer within {}s", QMP_TIMEOUT.as_secs())]
    Timeout,
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP sent something that is not JSON")]
    Malformed(#[from] serde_json::Error),
    #[error("QMP refused `{command}`: {description}")]
    Refused { command: String, description: String },
}

#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(socket: &Path) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(socket).await?;
        let (read, writer) = stream.into_split();
        let mut qmp = Self { reader: BufReader::new(read), writer };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Closed);
        }
        qmp.execute("qmp_capabilities").await?;
        Ok(qmp)
    }

    /// Runs a command without arguments and returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let mut line = serde_json::to_vec(&json!({ "execute": command }))?;
        line.push(b'\n');
        tokio::time::timeout(QMP_TIMEOUT, async {
            self.writer.write_all(&line).await?;
            loop {
                let message = self.read_message().await?;
                if let Some(value) = message.get("return") {
                    return Ok(value.clone());
                }
                if let Some(error) = message.get("error") {
                    let description = error.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                    return Err(QmpError::Refused { command: command.to_owned(), description: description.to_owned() });
                }
                // Anything else is an asynchronous event; skip it.
            }
        })
        .await
        .map_err(|_| QmpError::Timeout)?
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }
}
