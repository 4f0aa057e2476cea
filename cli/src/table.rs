//! Column alignment as docker's tables do it (Go's `tabwriter` with
//! minwidth 10, padding 3, padded with spaces): cells are separated by tabs;
//! every column is as wide as its widest cell plus 3, at least 10; the last
//! cell of a line is not padded.

/// Minimum width of a column.
pub const MIN_WIDTH: usize = 10;
/// Spaces added to the widest cell of a column.
pub const PADDING: usize = 3;

/// Aligns tab-separated `text` (lines end with '\n').
pub fn align_columns(text: &str) -> String {
    let lines: Vec<Vec<&str>> = text
        .split_terminator('\n')
        .map(|l| l.split('\t').collect())
        .collect();
    let mut widths: Vec<usize> = Vec::new();
    for cells in &lines {
        // The trailing cell does not take part in alignment.
        for (i, c) in cells.iter().enumerate().take(cells.len().saturating_sub(1)) {
            let w = (c.chars().count() + PADDING).max(MIN_WIDTH);
            if widths.len() <= i {
                widths.resize(i + 1, 0);
            }
            widths[i] = widths[i].max(w);
        }
    }
    let mut out = String::new();
    for cells in &lines {
        let last = cells.len().saturating_sub(1);
        for (i, c) in cells.iter().enumerate() {
            out.push_str(c);
            if i < last {
                let pad = widths[i] - c.chars().count();
                out.extend(std::iter::repeat(' ').take(pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_like_docker_ps() {
        let t = "CONTAINER ID\tIMAGE\tCOMMAND\tPORTS\tNAMES\n0123456789ab\tbusybox\t\"sleep 100\"\t\tweb\n";
        assert_eq!(
            align_columns(t),
            "CONTAINER ID   IMAGE     COMMAND       PORTS     NAMES\n\
             0123456789ab   busybox   \"sleep 100\"             web\n"
        );
    }

    #[test]
    fn min_width_and_single_column() {
        assert_eq!(align_columns("A\tB\n"), "A         B\n");
        assert_eq!(align_columns("only\nlines\n"), "only\nlines\n");
        assert_eq!(align_columns(""), "");
    }
}
