//! The last word on what one change may carry.
//!
//! Backends cut messages, file lists and names as they read them
//! (`polld_backend::limits`); this cuts whatever a backend left longer, before the
//! change is stored, and says in the change what was cut: a 20 MB message must not
//! become a 20 MB form post, nor 200,000 files a Buildbot change with 200,000 rows.

use polld_backend::limits::{
    MAX_COMMENTS_BYTES, MAX_FIELD_BYTES, MAX_FILES, cut_note, is_cut, truncate,
};
use serde_json::Value;

use crate::model::Change;

/// Set in `properties` when `files` was cut: how many files the change really touched.
pub const FILES_TOTAL_PROPERTY: &str = "polld_files_total";

/// Cuts `change` down to the limits; `files_total` is what the backend counted when it
/// already kept fewer files than the change touched.
pub fn bound(change: &mut Change, files_total: Option<usize>) {
    if change.comments.len() > MAX_COMMENTS_BYTES && !is_cut(&change.comments) {
        let total = change.comments.len();
        truncate(&mut change.comments, MAX_COMMENTS_BYTES);
        change.comments.push_str(&cut_note(total));
    }
    let mut total = files_total.filter(|t| *t > change.files.len());
    if change.files.len() > MAX_FILES {
        total = Some(total.unwrap_or(change.files.len()));
        change.files.truncate(MAX_FILES);
    }
    if let Some(total) = total {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        crate::store::conformance::change("a", "1")
    }

    #[test]
    fn small_changes_are_untouched() {
        let mut small = change();
        bound(&mut small, None);
        assert_eq!(small, change());
    }

    #[test]
    fn big_messages_and_file_lists_are_cut_and_say_so() {
        let mut big = change();
        big.comments = "é".repeat(20 * 1024 * 1024 / 2);
        big.files = (0..200_000).map(|i| format!("dir/file-{i}")).collect();
        big.author = "x".repeat(10_000);
        bound(&mut big, None);
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
        // A backend that cut as it read is not cut twice, and its count is kept.
        let mut cut = change();
        cut.comments = polld_backend::limits::cut_message(&[b'x'; 70_000], 20_000_000);
        cut.files = vec!["a".into()];
        let before = cut.comments.clone();
        bound(&mut cut, Some(200_000));
        assert_eq!(cut.comments, before);
        assert_eq!(cut.properties[FILES_TOTAL_PROPERTY], 200_000);
    }
}
