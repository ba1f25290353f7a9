//! The progress bar of a long read: bytes read of the file's size, on stderr, shown only where
//! someone waits for it (a terminal) and only for files that take more than a moment.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

/// Files smaller than this read in about a second: no progress bar.
const MIN_FILE_LEN: u64 = 64 << 20;
/// Redraw the progress bar at most once per this many bytes.
const REDRAW_STEP: u64 = 1 << 20;

/// Whether reading a file of `file_len` bytes deserves a progress bar.
pub(super) fn shows_progress(stderr_is_terminal: bool, file_len: u64) -> bool {
    stderr_is_terminal && file_len > MIN_FILE_LEN
}

/// A progress bar of bytes read, on stderr.
pub(super) struct Progress {
    bar: ProgressBar,
    drawn_at: u64,
}

impl Progress {
    pub(super) fn new(path: &Path, file_len: u64) -> Self {
        let style = ProgressStyle::with_template(
            // The bar takes what the terminal's width leaves, so the line never wraps.
            "{msg} [{wide_bar}] {bytes}/{total_bytes} ({eta} left)",
        )
        .expect("a valid progress template")
        .progress_chars("=> ");
        let name = path.file_name().unwrap_or(path.as_os_str());
        let bar = ProgressBar::new(file_len)
            .with_style(style)
            .with_message(name.to_string_lossy().into_owned());
        Progress { bar, drawn_at: 0 }
    }

    pub(super) fn update(&mut self, position: u64) {
        if position >= self.drawn_at + REDRAW_STEP {
            self.bar.set_position(position);
            self.drawn_at = position;
        }
    }

    /// Takes the bar off the terminal.
    pub(super) fn finish(self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_for_large_files_on_a_terminal() {
        assert!(shows_progress(true, MIN_FILE_LEN + 1));
        assert!(!shows_progress(true, MIN_FILE_LEN));
        assert!(!shows_progress(false, 1 << 40));
    }
}
