//! How results reach people: aligned tables by default, JSON with `--output json`.

use std::io::Write as _;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// A table of strings, printed with columns padded to their widest cell.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self { rows: vec![headers.iter().map(|h| h.to_string()).collect()] }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows[0].len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().map(|r| r.get(c).map_or(0, |s| s.chars().count())).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .map(
                    |(c, cell)| {
                        if c + 1 == columns { cell.clone() } else { format!("{cell:<width$}", width = widths[c]) }
                    },
                )
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// Prints `value` as JSON, or the table `table_of` makes of it.
pub fn print<T: Serialize>(format: Format, value: &T, table_of: impl FnOnce(&T) -> Table) {
    print_tables(format, value, |value| vec![table_of(value)]);
}

/// Like [`print`], for output made of several tables, separated by blank lines.
pub fn print_tables<T: Serialize>(format: Format, value: &T, tables_of: impl FnOnce(&T) -> Vec<Table>) {
    match format {
        Format::Json => {
            // Straight to a buffered stdout: a status of 100,000 instances is tens of MB.
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            serde_json::to_writer_pretty(&mut out, value).expect("output serializes");
            let _ = writeln!(out);
        }
        Format::Table => {
            let rendered: Vec<String> = tables_of(value).iter().map(Table::render).collect();
            print!("{}", rendered.join("\n"));
        }
    }
}

/// "3s", "5m", "2h", "4d": how long ago, for tables.
pub fn age(since_ms: u64, now_ms: u64) -> String {
    let secs = now_ms.saturating_sub(since_ms) / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_columns_but_not_the_last() {
        let mut table = Table::new(&["ID", "PHASE", "DETAIL"]);
        table.row(vec!["abc".into(), "running".into(), "pid 1".into()]);
        assert_eq!(table.render(), "ID   PHASE    DETAIL\nabc  running  pid 1\n");
        assert_eq!(age(0, 61_000), "1m");
    }
}
