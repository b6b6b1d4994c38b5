//! The CLI's own documentation, generated from its argument definitions: shell completion
//! scripts (clap_complete) and man pages (`mirari_proto::man`, shared with the daemons), so
//! neither drifts from `--help`.

use std::io::Write;

use anyhow::Context;
use clap_complete::Generator;

/// Writes the completion script for `shell` to `out`; a reader that stops early (`| head`) is
/// no error.
pub fn completions(shell: clap_complete::Shell, mut command: clap::Command, out: &mut dyn Write) -> anyhow::Result<()> {
    // What clap_complete::generate does, without its panic when the reader goes away.
    command.set_bin_name(command.get_name().to_owned());
    command.build();
    let mut script = Vec::new();
    shell.try_generate(&command, &mut script).context("cannot generate the completion script")?;
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error).context("cannot write the script"),
        _ => Ok(()),
    }
}
