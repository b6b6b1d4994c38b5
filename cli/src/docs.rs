//! The CLI's own documentation, generated from its argument definitions: shell completion
//! scripts (clap_complete) and man pages (clap_mangen), so neither drifts from `--help`.

use std::io::Write;
use std::path::Path;

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

/// Writes `NAME.1` for the command and `NAME-SUB.1` for each visible subcommand, at every depth,
/// into `dir`.
pub fn man_pages(mut command: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    command.build();
    write_pages(&command, command.get_name(), dir)
}

fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> anyhow::Result<()> {
    // Every page carries the version (the workspace has one), as the top command's does.
    let page = command.clone().display_name(name).version(env!("CARGO_PKG_VERSION"));
    let path = dir.join(format!("{name}.1"));
    let mut text = Vec::new();
    clap_mangen::Man::new(page).render(&mut text).with_context(|| format!("cannot render {}", path.display()))?;
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
