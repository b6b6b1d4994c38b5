//! Sampling the real instance processes on every host, throughout a fault, so a test checks
//! what actually ran (and in which order), not what the registry says ran.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How often every host is looked at.
const EVERY: Duration = Duration::from_millis(50);

/// A live instance process: its host and its payload's pid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Live {
    pub host: String,
    pub pid: u64,
}

/// One look at every host.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    /// Instance ID -> where its process is alive.
    pub live: BTreeMap<String, Live>,
}

/// The instances whose payload process is alive under an agent's state directory, with pids.
pub fn live_processes(state_dir: &Path) -> BTreeMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(state_dir.join("instances")) else { return BTreeMap::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let info: Value = serde_json::from_slice(&std::fs::read(entry.path().join("shim.json")).ok()?).ok()?;
            let pid = info["payload"]["pid"].as_u64()?;
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
            alive.then(|| (entry.file_name().to_string_lossy().into_owned(), pid))
        })
        .collect()
}

/// Samples the hosts in the background until [`Sampler::finish`].
#[derive(Debug)]
pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling `hosts`: (host name, agent state directory).
    pub fn start(hosts: Vec<(String, PathBuf)>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let mut live = BTreeMap::new();
                    for (host, dir) in &hosts {
                        for (id, pid) in live_processes(dir) {
                            live.insert(id, Live { host: host.clone(), pid });
                        }
                    }
                    samples.lock().expect("samples").push(Sample { at, live });
                    std::thread::sleep(EVERY);
                }
            })
        };
        Self { stop, samples, thread: Some(thread) }
    }

    /// Stops sampling; returns what was seen.
    pub fn finish(mut self) -> Timeline {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        Timeline { samples: std::mem::take(&mut *self.samples.lock().expect("samples")) }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Every sample, in order.
#[derive(Debug)]
pub struct Timeline {
    pub samples: Vec<Sample>,
}

impl Timeline {
    pub fn first_seen(&self, id: &str) -> Option<Instant> {
        self.samples.iter().find(|s| s.live.contains_key(id)).map(|s| s.at)
    }

    pub fn last_seen(&self, id: &str) -> Option<Instant> {
        self.samples.iter().rev().find(|s| s.live.contains_key(id)).map(|s| s.at)
    }

    /// Samples in which the processes of two instances sharing a key (a slot, an address) were
    /// alive at once, with those instances. `key_of` maps instance IDs to their key; others
    /// are ignored.
    pub fn running_twice<K: Ord + Clone>(&self, key_of: &BTreeMap<String, K>) -> Vec<(Instant, K, BTreeSet<String>)> {
        let mut doubles = Vec::new();
        for sample in &self.samples {
            let mut by_key: BTreeMap<K, BTreeSet<String>> = BTreeMap::new();
            for id in sample.live.keys() {
                if let Some(key) = key_of.get(id) {
                    by_key.entry(key.clone()).or_default().insert(id.clone());
                }
            }
            doubles.extend(by_key.into_iter().filter(|(_, ids)| ids.len() > 1).map(|(key, ids)| (sample.at, key, ids)));
        }
        doubles
    }

    /// Instances seen in the first sample whose process was ever missing or replaced (another
    /// pid) in a later one: restarted or stopped during the run.
    pub fn disturbed(&self) -> Vec<String> {
        let Some(first) = self.samples.first() else { return Vec::new() };
        first
            .live
            .iter()
            .filter(|(id, live)| self.samples.iter().any(|s| s.live.get(*id) != Some(live)))
            .map(|(id, _)| id.clone())
            .collect()
    }
}
