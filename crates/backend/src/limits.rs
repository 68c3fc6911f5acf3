//! Bounds on what one change may carry, applied while it is read.
//!
//! A repository is someone else's input: a 20 MB commit message or a commit touching
//! 200,000 files must not become 20 MB in polld's memory, a 20 MB form post or a
//! Buildbot change with 200,000 file rows. A backend cuts each field to these sizes as
//! it reads it (`cut_message`, `cut_field`, [`Files`]), so a poll's memory does not grow
//! with what a remote sends; what was cut is said in the change itself. The core cuts
//! again whatever a backend left longer.

use std::sync::Arc;

use crate::filter::PathFilter;

/// A message beyond this many bytes is cut, at a character boundary.
pub const MAX_COMMENTS_BYTES: usize = 64 * 1024;
/// A change lists at most this many files (the first ones).
pub const MAX_FILES: usize = 10_000;
/// A single file name, author or committer beyond this many bytes is cut.
pub const MAX_FIELD_BYTES: usize = 4096;
/// The most changes one poll reports. A backend that finds more reports the oldest and
/// returns [`crate::PollOutcome::Partial`]: its next poll follows at once.
pub const MAX_CHANGES_PER_POLL: usize = 1_000;

/// A commit message as a change carries it: decoded lossily (each invalid sequence
/// becomes U+FFFD), trailing whitespace trimmed, and cut at [`MAX_COMMENTS_BYTES`] with
/// a note of its full size. `head` is the start of the message (at least
/// [`MAX_COMMENTS_BYTES`] of it when it is longer), `total` its whole length in bytes.
pub fn cut_message(head: &[u8], total: usize) -> String {
    // When the whole message is here, its size is that of what a change would carry
    // uncut: without trailing whitespace.
    let (head, total) = if head.len() >= total {
        let whole = head.trim_ascii_end();
        (whole, whole.len())
    } else {
        (head, total)
    };
    let end = head.len().min(MAX_COMMENTS_BYTES + 128);
    let mut text = String::from_utf8_lossy(&head[..end]).trim_end().to_owned();
    if is_cut(&text) {
        // Cut already, by the client that printed it (hg's `polldcut`).
        return text;
    }
    if total > MAX_COMMENTS_BYTES && text.len() > MAX_COMMENTS_BYTES {
        truncate(&mut text, MAX_COMMENTS_BYTES);
        text.push_str(&cut_note(total));
    } else if total > head.len() {
        // The head was cut short by the reader itself.
        text.push_str(&cut_note(total));
    }
    text
}

/// What a cut message ends with.
pub fn cut_note(total: usize) -> String {
    format!("\n\n[polld: message cut at {MAX_COMMENTS_BYTES} of {total} bytes]")
}

/// Whether `comments` already ends with a [`cut_note`].
pub fn is_cut(comments: &str) -> bool {
    comments.ends_with(" bytes]")
        && comments
            .rfind("\n\n[polld: message cut at ")
            .is_some_and(|at| comments.len() - at < 80)
}

/// A name, author or file path cut to [`MAX_FIELD_BYTES`].
pub fn cut_field(mut text: String) -> String {
    truncate(&mut text, MAX_FIELD_BYTES);
    text
}

/// Cuts `text` to at most `max_bytes`, at a character boundary.
pub fn truncate(text: &mut String, max_bytes: usize) {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The files of one change as they are read: the first [`MAX_FILES`] kept (each cut to
/// [`MAX_FIELD_BYTES`]), all of them counted. Made with a poller's [`PathFilter`], it
/// also makes sure that when any file is wanted, a wanted one is kept (in the last slot
/// when the first ones were not), so the core's `paths` verdict on the kept files holds
/// for a commit of any size.
#[derive(Debug, Default, Clone)]
pub struct Files {
    kept: Vec<String>,
    total: usize,
    filter: Option<Arc<PathFilter>>,
    wanted_kept: bool,
}

impl PartialEq for Files {
    fn eq(&self, other: &Files) -> bool {
        (&self.kept, self.total) == (&other.kept, other.total)
    }
}

impl Eq for Files {}

impl Files {
    /// Files checked against `filter` as they are read.
    pub fn filtered(filter: &Arc<PathFilter>) -> Files {
        Files {
            filter: (!filter.is_noop()).then(|| Arc::clone(filter)),
            ..Files::default()
        }
    }

    pub fn push(&mut self, path: String) {
        self.total += 1;
        let wanted = !self.wanted_kept
            && self
                .filter
                .as_ref()
                .is_some_and(|filter| filter.wants(&path));
        if self.kept.len() < MAX_FILES {
            self.kept.push(cut_field(path));
        } else if wanted && let Some(last) = self.kept.last_mut() {
            *last = cut_field(path);
        }
        self.wanted_kept |= wanted;
    }

    /// Whether a further file would change nothing but the count: a reader may stop
    /// decoding names then (and [`Files::count`] the rest).
    pub fn is_full(&self) -> bool {
        self.kept.len() >= MAX_FILES && (self.filter.is_none() || self.wanted_kept)
    }

    /// Counts a file without keeping it (when full).
    pub fn count(&mut self) {
        self.total += 1;
    }

    /// The kept files, and how many there were in all when that is more.
    pub fn into_parts(self) -> (Vec<String>, Option<usize>) {
        let total = (self.total > self.kept.len()).then_some(self.total);
        (self.kept, total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wanted_file_past_the_cut_is_kept() {
        let filter = Arc::new(PathFilter::new(&["service-a/**".to_owned()], &[]).unwrap());
        let mut files = Files::filtered(&filter);
        for i in 0..MAX_FILES + 5 {
            assert!(!files.is_full(), "full before a wanted file was seen");
            files.push(format!("vendor/{i}.c"));
        }
        files.push("service-a/main.go".to_owned());
        assert!(files.is_full());
        files.push("service-a/other.go".to_owned());
        let (kept, total) = files.into_parts();
        assert_eq!((kept.len(), total), (MAX_FILES, Some(MAX_FILES + 7)));
        assert!(filter.wants_commit(kept.iter().map(String::as_str)));
        assert_eq!(kept.last().map(String::as_str), Some("service-a/main.go"));
    }

    #[test]
    fn messages_are_cut_once_and_say_so() {
        assert_eq!(cut_message(b"Fix it\n\n", 8), "Fix it");
        let big = "é".repeat(50_000);
        let cut = cut_message(big.as_bytes(), big.len());
        assert!(
            cut.len() < MAX_COMMENTS_BYTES + 80 && is_cut(&cut),
            "{}",
            &cut[cut.len() - 60..]
        );
        assert!(cut.ends_with("of 100000 bytes]"));
        // A reader that kept only the head says the full size too.
        let head = vec![b'x'; MAX_COMMENTS_BYTES + 4];
        let cut = cut_message(&head, 20_000_000);
        assert!(cut.ends_with("of 20000000 bytes]") && is_cut(&cut));
        assert!(!is_cut("bytes]"));
    }

    #[test]
    fn files_keep_the_first_and_count_all() {
        let mut files = Files::default();
        for i in 0..MAX_FILES + 5 {
            if files.is_full() {
                files.count();
            } else {
                files.push(format!("f{i}"));
            }
        }
        let (kept, total) = files.into_parts();
        assert_eq!((kept.len(), total), (MAX_FILES, Some(MAX_FILES + 5)));
        let mut few = Files::default();
        few.push("x".repeat(10_000));
        assert_eq!(few.into_parts().0[0].len(), MAX_FIELD_BYTES);
    }
}
