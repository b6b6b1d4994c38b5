//! What a shim leaves in the instance directory, and the console socket's framing.
//!
//! Files (all written atomically: temp file, fsync, rename):
//! - `shim.json`: [`ShimInfo`], written once the payload is running.
//! - `exit.json`: [`ExitRecord`], written when the payload has ended.
//! - `console.tail`: what the console ring held when the payload ended.
//! - `stderr.log`: the payload's stderr when it is not part of the console, capped.
//!
//! The console socket (`console.sock`): the client sends `console <offset>\n`; the shim answers
//! with frames `[offset: u64 LE][len: u32 LE][len bytes]` holding the stream from `offset` on
//! (or from the oldest byte kept, which the frame's offset shows), then new output as it comes,
//! and closes the socket once the payload has ended and everything was sent.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use mirari_core::instance::ExitStatus;
use serde::{Deserialize, Serialize};

use super::proc::ProcessId;

/// The most a single frame carries.
pub const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimInfo {
    pub shim: ProcessId,
    pub payload: ProcessId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub status: ExitStatus,
    pub at_ms: u64,
}

/// Paths inside one instance directory.
#[derive(Debug, Clone)]
pub struct ShimPaths {
    pub dir: PathBuf,
}

impl ShimPaths {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_owned() }
    }
    pub fn info(&self) -> PathBuf {
        self.dir.join("shim.json")
    }
    pub fn exit(&self) -> PathBuf {
        self.dir.join("exit.json")
    }
    pub fn console_tail(&self) -> PathBuf {
        self.dir.join("console.tail")
    }
    pub fn stderr_log(&self) -> PathBuf {
        self.dir.join("stderr.log")
    }
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }

    /// Removes what a previous run left, before a new run starts in the same directory.
    pub fn clear_run_files(&self) -> io::Result<()> {
        for path in [self.info(), self.exit(), self.console_tail(), self.stderr_log(), self.console_socket()] {
            match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    pub fn read_info(&self) -> Option<ShimInfo> {
        serde_json::from_slice(&fs::read(self.info()).ok()?).ok()
    }

    pub fn read_exit(&self) -> Option<ExitRecord> {
        serde_json::from_slice(&fs::read(self.exit()).ok()?).ok()
    }
}

pub fn encode_frame(offset: u64, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).expect("frames are at most MAX_FRAME bytes");
    let mut frame = Vec::with_capacity(12 + data.len());
    frame.extend_from_slice(&offset.to_le_bytes());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(data);
    frame
}
