//! Progress on uploads, builds and deploys: an indicatif bar on stderr when stdout is a
//! terminal (a person watches), plain lines otherwise (a script or a log reads them), so the
//! same calls serve both.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// One task's progress: a bar, or nothing drawn (its lines printed plainly).
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

/// Whether bars are drawn: stdout and stderr are both a terminal.
fn interactive() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

impl Progress {
    fn with(style: &str, length: Option<u64>, message: String) -> Self {
        if !interactive() {
            return Self { bar: None };
        }
        let bar = length.map_or_else(ProgressBar::new_spinner, ProgressBar::new);
        bar.set_style(ProgressStyle::with_template(style).expect("a valid template").progress_chars("=> "));
        bar.set_message(message);
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar: Some(bar) }
    }

    /// Bytes sent of `total` (an upload).
    pub fn bytes(what: &str, total: u64) -> Self {
        eprintln_plain(what);
        Self::with("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}", Some(total), what.to_owned())
    }

    /// Steps done of `total` (a build; the total may be learned later with [`Self::set_steps`]).
    pub fn steps(what: &str) -> Self {
        eprintln_plain(what);
        Self::with("{spinner} {msg} [{bar:20}] {pos}/{len} {elapsed}", Some(0), what.to_owned())
    }

    /// Waiting for something that has no length (a deploy settling); [`Self::status`] says where it is.
    pub fn waiting(what: &str) -> Self {
        eprintln_plain(what);
        Self::with("{spinner} {msg} {elapsed}", None, what.to_owned())
    }

    /// Something that counts bytes sent, for a stream that must own what it uses.
    pub fn byte_counter(&self) -> impl Fn(u64) + Send + Sync + 'static {
        let bar = self.bar.clone();
        move |count| {
            if let Some(bar) = &bar {
                bar.inc(count);
            }
        }
    }

    /// Starts over (a retried upload).
    pub fn restart(&self) {
        if let Some(bar) = &self.bar {
            bar.set_position(0);
        }
    }

    /// Step `index` of `total`, `what`: the bar moves, or the line is printed.
    pub fn step(&self, index: u32, total: u32, what: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(u64::from(total));
                bar.set_position(u64::from(index));
                bar.set_message(what.to_owned());
            }
            None => eprintln!("[{index}/{total}] {what}"),
        }
    }

    /// Where a wait stands (a changed `line` only: the caller compares).
    pub fn status(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(line.to_owned()),
            None => eprintln!("    {line}"),
        }
    }

    /// A line of output that goes above the bar (or is printed plainly).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Takes the bar away (also when dropped); what was printed above it stays.
    pub fn clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Without a bar the task's first line is printed as it starts.
fn eprintln_plain(what: &str) {
    if !interactive() {
        eprintln!("{what}");
    }
}
