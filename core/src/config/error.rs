//! Config errors that point at the exact place in a config file (`mirari.toml`, a daemon's
//! `--config`), rustc-style.

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

/// At most this many characters of a line are shown under an error; a longer line is cut to a
/// window around the column, so a 10,000-character line does not flood the terminal.
const EXCERPT_CHARS: usize = 80;

/// What is shown of a located line: the text, the caret's 0-based offset in it, its width.
#[derive(Debug, PartialEq, Eq)]
struct Excerpt {
    text: String,
    caret: usize,
    width: usize,
}

impl Location {
    /// The whole line when it is short; else [`EXCERPT_CHARS`] of it, a third before the
    /// column and the rest after, with `…` where the line goes on.
    fn excerpt(&self) -> Excerpt {
        let chars: Vec<char> = self.line_text.chars().collect();
        let at = self.column - 1;
        if chars.len() <= EXCERPT_CHARS {
            return Excerpt { text: self.line_text.clone(), caret: at, width: self.width };
        }
        let first = at.saturating_sub(EXCERPT_CHARS / 3).min(chars.len() - EXCERPT_CHARS);
        let last = first + EXCERPT_CHARS;
        let mut text: String = if first > 0 { "…".into() } else { String::new() };
        let caret = at - first + text.chars().count();
        text.extend(&chars[first..last]);
        if last < chars.len() {
            text.push('…');
        }
        Excerpt { text, caret, width: self.width.min(last.saturating_sub(at)).max(1) }
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
        let Location { line, column, .. } = &self.location;
        let Excerpt { text, caret, width } = self.location.excerpt();
        let gutter = " ".repeat(line.to_string().len());
        writeln!(f, "{}:{line}:{column}: {}", self.path, self.message)?;
        writeln!(f, "{gutter} |")?;
        writeln!(f, "{line} | {text}")?;
        write!(f, "{gutter} | {}{}", " ".repeat(caret), "^".repeat(width))?;
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

    #[test]
    fn a_very_long_line_is_shown_around_the_column() {
        let filler = "a".repeat(5_000);
        let source = format!("[run]\nargs = [\"{filler}\", bad, \"{filler}\"]\n");
        assert!(source.lines().nth(1).unwrap().chars().count() > 10_000);
        let start = source.find("bad").unwrap();
        let location = Location::of(&source, start..start + 3);
        assert_eq!((location.line, location.column), (2, 5_013));
        let error = ConfigError::new("mirari.toml", location, "invalid value").to_string();
        let lines: Vec<&str> = error.lines().collect();
        assert_eq!(lines[0], "mirari.toml:2:5013: invalid value");
        let (shown, caret) = (lines[2].strip_prefix("2 | ").unwrap(), lines[3].strip_prefix("  | ").unwrap());
        assert_eq!(shown.chars().count(), EXCERPT_CHARS + 2, "{shown}");
        assert!(shown.starts_with("…aaa") && shown.ends_with("aaa…"), "{shown}");
        let caret_at = caret.find('^').unwrap();
        assert_eq!(caret.trim_start(), "^^^");
        assert_eq!(shown.chars().skip(caret_at).take(3).collect::<String>(), "bad");

        // Near either end of the line, the window stops at the line's end: one `…` only.
        let start = source.find("[\"").unwrap();
        let text = ConfigError::new("f", Location::of(&source, start..start + 10_000), "x").to_string();
        let (shown, caret) = (text.lines().nth(2).unwrap(), text.lines().nth(3).unwrap());
        assert_eq!(shown, format!("2 | args = [\"{}…", &filler[..EXCERPT_CHARS - 9]));
        assert_eq!(caret, format!("  | {}{}", " ".repeat(7), "^".repeat(EXCERPT_CHARS - 7)));
        let end = source.rfind(']').unwrap();
        let text = ConfigError::new("f", Location::of(&source, end..end + 1), "x").to_string();
        let (shown, caret) = (text.lines().nth(2).unwrap(), text.lines().nth(3).unwrap());
        assert!(shown.ends_with("aa\"]") && shown.starts_with("2 | …a"), "{shown}");
        assert_eq!(caret.chars().count(), 4 + EXCERPT_CHARS + 1);
    }
}
