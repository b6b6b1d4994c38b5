//! Running a command whose output a person watches: every line of its stdout and stderr
//! becomes a progress event, in the order the lines arrive.

use std::io::{self, BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;

use crate::BuildEvent;

/// Runs `command` to completion, passing each output line to `progress`.
pub fn run_streaming(command: &mut Command, progress: &mut dyn FnMut(BuildEvent)) -> io::Result<ExitStatus> {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (lines, received) = mpsc::channel();
    let readers: Vec<_> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|pipe| {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                let _ = lines.send(String::from_utf8_lossy(&line).into_owned());
            }
        })
    })
    .collect();
    drop(lines);
    for line in received {
        progress(BuildEvent::Output(line));
    }
    for reader in readers {
        let _ = reader.join();
    }
    child.wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_streams_become_progress() {
        let mut seen = Vec::new();
        let status =
            run_streaming(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), &mut |e| seen.push(e))
                .unwrap();
        assert_eq!(status.code(), Some(3));
        seen.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(seen, [BuildEvent::Output("err".into()), BuildEvent::Output("out".into())]);
    }
}
