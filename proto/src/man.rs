//! Man pages written from clap definitions (clap_mangen), for the CLI and both daemons: each
//! binary writes its own, so they never drift from its `--help`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write the man page {path}")]
pub struct ManError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `NAME.1` for the command and `NAME-SUB.1` for each visible subcommand, at every depth,
/// into `dir` (made if missing).
pub fn man_pages(mut command: clap::Command, dir: &Path) -> Result<(), ManError> {
    std::fs::create_dir_all(dir).map_err(|source| ManError { path: dir.to_owned(), source })?;
    command.build();
    write_pages(&command, command.get_name(), dir)
}

fn write_pages(command: &clap::Command, name: &str, dir: &Path) -> Result<(), ManError> {
    // Every page carries the version (the workspace has one), as the top command's does.
    let page = command.clone().display_name(name).version(env!("CARGO_PKG_VERSION"));
    let path = dir.join(format!("{name}.1"));
    let mut text = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut text)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|source| ManError { path: path.clone(), source })?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}
