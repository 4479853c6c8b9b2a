//! A word filter: listed words are masked with `*` before a message is stored.

use super::{Rejection, RoomBehaviour};
use crate::protocol::{RoomName, UserInfo};

/// Masks each listed word (whole words, ASCII case-insensitive) with asterisks.
#[derive(Debug, Clone)]
pub struct WordFilter {
    words: Vec<String>,
}

impl WordFilter {
    /// A filter for the given words.
    pub fn new<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            words: words
                .into_iter()
                .map(|w| w.into().to_ascii_lowercase())
                .collect(),
        }
    }

    fn is_blocked(&self, word: &str) -> bool {
        self.words.iter().any(|w| w.eq_ignore_ascii_case(word))
    }
}

impl RoomBehaviour for WordFilter {
    fn on_publish(
        &self,
        _room: &RoomName,
        _from: &UserInfo,
        content: String,
    ) -> Result<String, Rejection> {
        let mut out = String::with_capacity(content.len());
        let mut word = String::new();
        let flush = |word: &mut String, out: &mut String| {
            if self.is_blocked(word) {
                out.extend(std::iter::repeat_n('*', word.chars().count()));
            } else {
                out.push_str(word);
            }
            word.clear();
        };
        for c in content.chars() {
            if c.is_alphanumeric() {
                word.push(c);
            } else {
                flush(&mut word, &mut out);
                out.push(c);
            }
        }
        flush(&mut word, &mut out);
        Ok(out)
    }
}
