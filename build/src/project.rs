//! An application on disk: its directory, config and the `_mirari/` directory builds write to.

use std::fs;
use std::path::{Path, PathBuf};

use mirari_core::config::{AppConfig, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] Box<ConfigError>),
}

#[derive(Debug, Clone)]
pub struct Project {
    /// The directory that holds `mirari.toml`; commands run here and paths are relative to it.
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub config: AppConfig,
}

impl Project {
    pub fn load(config_path: &Path) -> Result<Self, ProjectError> {
        let text = fs::read_to_string(config_path)
            .map_err(|source| ProjectError::Read { path: config_path.to_owned(), source })?;
        let config = AppConfig::parse(&config_path.display().to_string(), &text).map_err(Box::new)?;
        let dir = match config_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        Ok(Self { dir, config_path: config_path.to_owned(), config })
    }

    /// Where configure and build put their outputs.
    pub fn output_dir(&self) -> PathBuf {
        self.dir.join("_mirari")
    }
}
