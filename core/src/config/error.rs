//! Config errors that point at the exact place in `mirari.toml`, rustc-style.

use std::fmt;
use std::ops::Range;

/// A place in a config file: 1-based line and column, the text of that line, and how many
/// characters to underline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    line_text: String,
    width: usize,
}

impl Location {
    /// Locates a byte range of `source`. Columns count characters, not bytes.
    pub fn of(source: &str, span: Range<usize>) -> Self {
        let start = floor_char_boundary(source, span.start.min(source.len()));
        let end = floor_char_boundary(source, span.end.clamp(start, source.len()));
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..].find('\n').map_or(source.len(), |i| start + i);
        let line = source[..start].matches('\n').count() + 1;
        let column = source[line_start..start].chars().count() + 1;
        let width = source[start..end.min(line_end)].chars().count().max(1);
        let line_text = source[line_start..line_end].trim_end_matches('\r').to_owned();
        Self { line, column, line_text, width }
    }
}

fn floor_char_boundary(text: &str, mut index: usize) -> usize {
    while !text.is_char_boundary(index) {
        index -= 1;
    }
    index
}

/// A config file problem: what is wrong, where, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub path: String,
    pub location: Location,
    pub message: String,
    pub help: Option<String>,
}

impl ConfigError {
    pub fn new(path: &str, location: Location, message: impl Into<String>) -> Self {
        Self { path: path.to_owned(), location, message: message.into(), help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location { line, column, line_text, width } = &self.location;
        let gutter = " ".repeat(line.to_string().len());
        writeln!(f, "{}:{line}:{column}: {}", self.path, self.message)?;
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{line} | {line_text}")?;
        write!(f, "{gutter} | {}{}", " ".repeat(column - 1), "^".repeat(*width))?;
        if let Some(help) = &self.help {
            write!(f, "\n{gutter} = help: {help}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_line_and_column() {
        let source = "[app]\nname = \"héllo\"\ntargets = [\"hvt\"]\n";
        let start = source.find("\"hvt\"").unwrap();
        let location = Location::of(source, start..start + 5);
        assert_eq!((location.line, location.column), (3, 12));
        let error =
            ConfigError::new("mirari.toml", location, "unknown target `hvt`").with_help("known targets: unix, kvm");
        assert_eq!(
            error.to_string(),
            "mirari.toml:3:12: unknown target `hvt`\n  |\n3 | targets = [\"hvt\"]\n  |            ^^^^^\n  = help: known targets: unix, kvm"
        );
    }

    #[test]
    fn counts_columns_in_characters() {
        let source = "name = \"héllo\" x";
        let start = source.find('x').unwrap();
        assert_eq!(Location::of(source, start..start + 1).column, 16);
    }
}
