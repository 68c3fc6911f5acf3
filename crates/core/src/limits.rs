//! Bounds on what one change may carry.
//!
//! A repository is someone else's input: a 20 MB commit message or a commit touching
//! 200,000 files must not become a 20 MB form post or a Buildbot change with 200,000 file
//! rows, nor fill the outbox. Each change is cut to these sizes before it is stored, and
//! what was cut is said in the change itself.

use serde_json::Value;

use crate::model::Change;

/// `comments` beyond this many bytes are cut, at a character boundary.
pub const MAX_COMMENTS_BYTES: usize = 64 * 1024;
/// `files` beyond this many entries are dropped (the first ones are kept).
pub const MAX_FILES: usize = 10_000;
/// A single file name, author or committer beyond this many bytes is cut.
pub const MAX_FIELD_BYTES: usize = 4096;
/// Set in `properties` when `files` was cut: how many files the change really touched.
pub const FILES_TOTAL_PROPERTY: &str = "polld_files_total";

/// Cuts `change` down to the limits above.
pub fn bound(change: &mut Change) {
    if change.comments.len() > MAX_COMMENTS_BYTES {
        let total = change.comments.len();
        truncate(&mut change.comments, MAX_COMMENTS_BYTES);
        change.comments.push_str(&format!(
            "\n\n[polld: message cut at {MAX_COMMENTS_BYTES} of {total} bytes]"
        ));
    }
    if change.files.len() > MAX_FILES {
        let total = change.files.len();
        change.files.truncate(MAX_FILES);
        change
            .properties
            .insert(FILES_TOTAL_PROPERTY.to_owned(), Value::from(total));
    }
    for file in &mut change.files {
        truncate(file, MAX_FIELD_BYTES);
    }
    truncate(&mut change.author, MAX_FIELD_BYTES);
    if let Some(committer) = &mut change.committer {
        truncate(committer, MAX_FIELD_BYTES);
    }
}

fn truncate(text: &mut String, max_bytes: usize) {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        crate::store::conformance::change("a", "1")
    }

    #[test]
    fn small_changes_are_untouched() {
        let mut small = change();
        bound(&mut small);
        assert_eq!(small, change());
    }

    #[test]
    fn big_messages_and_file_lists_are_cut_and_say_so() {
        let mut big = change();
        big.comments = "é".repeat(20 * 1024 * 1024 / 2);
        big.files = (0..200_000).map(|i| format!("dir/file-{i}")).collect();
        big.author = "x".repeat(10_000);
        bound(&mut big);
        assert!(big.comments.len() < MAX_COMMENTS_BYTES + 100);
        assert!(
            big.comments.ends_with("of 20971520 bytes]"),
            "{}",
            &big.comments[big.comments.len() - 60..]
        );
        assert_eq!(big.files.len(), MAX_FILES);
        assert_eq!(big.files[0], "dir/file-0");
        assert_eq!(big.properties[FILES_TOTAL_PROPERTY], 200_000);
        assert_eq!(big.author.len(), MAX_FIELD_BYTES);
    }
}
