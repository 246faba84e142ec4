//! Reading lines of outside files (results, round logs, datasets) with a bound: no line longer than
//! [`MAX_LINE_BYTES`] is ever held in memory whole (a leaf module for every reader of JSONL).

/// The longest line a results, round or dataset file may hold (a record with traces is well under a MiB):
/// a longer one is refused before it is held in memory whole.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Reads one line (with its newline, if any) into `buf`, at most [`MAX_LINE_BYTES`] + 1 bytes: a
/// longer line comes back cut, without a newline and longer than the limit. 0 at the end.
pub fn read_line_bounded(reader: &mut impl std::io::BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::{BufRead, Read};
    reader.by_ref().take(MAX_LINE_BYTES as u64 + 1).read_until(b'\n', buf)
}

