//! File images: an app directory baked into a read-only tar image (the layout MirageOS's tar
//! key-value store reads), attached to every instance as a block device.
//!
//! Images are deterministic ([`crate::archive`]), so unchanged files give the same digest on
//! every machine.

use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use mirari_blobs::{BlobError, BlobStore};
use mirari_core::config::{ConfigError, FileDirective};
use mirari_core::spec::FileImageRef;

use crate::archive;
use crate::project::Project;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    Source(Box<ConfigError>),
    #[error("cannot bake file image `{name}` from {}", path.display())]
    Io {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot store file image `{name}`")]
    Store {
        name: String,
        #[source]
        source: BlobError,
    },
}

/// Bakes every `[[files]]` directory into `_mirari/files/<name>.tar` and stores it.
pub fn bake_all(project: &Project, store: &BlobStore) -> Result<Vec<FileImageRef>, ImageError> {
    let out_dir = project.output_dir().join("files");
    project
        .config
        .files
        .iter()
        .map(|directive| {
            let image = bake(project, directive, &out_dir)?;
            let digest =
                store.put_file(&image).map_err(|source| ImageError::Store { name: directive.name.clone(), source })?;
            Ok(FileImageRef { name: directive.name.clone(), digest })
        })
        .collect()
}

fn bake(project: &Project, directive: &FileDirective, out_dir: &Path) -> Result<PathBuf, ImageError> {
    let source = project.dir.join(&directive.source);
    if !source.is_dir() {
        let error = ConfigError::new(
            &project.config_path.display().to_string(),
            directive.source_location.clone(),
            format!("file image source `{}` is not a directory", directive.source),
        )
        .with_help(format!("create {} or point `source` at an existing directory", source.display()));
        return Err(ImageError::Source(Box::new(error)));
    }
    let image = out_dir.join(format!("{}.tar", directive.name));
    let io_error = |path: &Path| {
        let (name, path) = (directive.name.clone(), path.to_owned());
        move |source| ImageError::Io { name, path, source }
    };
    fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let out = File::create(&image).map_err(io_error(&image))?;
    archive::write_dir(&source, BufWriter::new(out), &|_| false).map_err(io_error(&image))?;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirari_core::config::AppConfig;

    fn project(dir: &Path) -> Project {
        let text = "[app]\nname = \"t\"\nversion = \"1\"\ntargets = [\"unix\"]\n\
                    [build.targets.unix]\nbuild = \"true\"\nartifact = \"a\"\n\
                    [[files]]\nname = \"data\"\nsource = \"data\"\n";
        let config_path = dir.join("mirari.toml");
        fs::write(&config_path, text).unwrap();
        Project { dir: dir.to_owned(), config: AppConfig::parse("mirari.toml", text).unwrap(), config_path }
    }

    #[test]
    fn images_are_deterministic_tar_archives() {
        let app = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&app.path().join("store")).unwrap();
        fs::create_dir_all(app.path().join("data/sub")).unwrap();
        fs::write(app.path().join("data/b.txt"), "bee").unwrap();
        fs::write(app.path().join("data/sub/a.txt"), "ay").unwrap();
        let project = project(app.path());
        let first = bake_all(&project, &store).unwrap();

        // Touch the files: new mtimes must not change the image.
        fs::write(app.path().join("data/b.txt"), "bee").unwrap();
        assert_eq!(bake_all(&project, &store).unwrap(), first);

        let image = fs::read(store.path(&first[0].digest)).unwrap();
        // Guests read the image in 512-byte sectors; tar pads every block to that already.
        assert_eq!(image.len() % 512, 0);
        let mut archive = tar::Archive::new(image.as_slice());
        let names: Vec<String> =
            archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, ["b.txt", "sub", "sub/a.txt"]);

        fs::write(app.path().join("data/b.txt"), "changed").unwrap();
        assert_ne!(bake_all(&project, &store).unwrap(), first);
    }

    #[test]
    fn a_missing_source_points_at_the_config() {
        let app = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&app.path().join("store")).unwrap();
        let error = bake_all(&project(app.path()), &store).unwrap_err().to_string();
        assert!(error.contains("/mirari.toml:10:10: file image source `data` is not a directory"), "{error}");
    }
}
