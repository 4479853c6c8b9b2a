//! An announce-only room: everyone may join and read, only listed users may publish.

use super::{Rejection, RoomBehaviour};
use crate::protocol::{RoomName, UserInfo};
use std::collections::HashSet;

/// Only the user ids given at construction may publish; anyone may join and read.
#[derive(Debug, Clone)]
pub struct AnnounceOnly {
    publishers: HashSet<String>,
}

impl AnnounceOnly {
    /// An announce-only behaviour whose publishers are the given user ids.
    pub fn new<I, S>(publishers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            publishers: publishers.into_iter().map(Into::into).collect(),
        }
    }
}

impl RoomBehaviour for AnnounceOnly {
    fn on_publish(
        &self,
        room: &RoomName,
        from: &UserInfo,
        content: String,
    ) -> Result<String, Rejection> {
        if self.publishers.contains(&from.id) {
            Ok(content)
        } else {
            Err(Rejection::forbidden(format!(
                "only announcers may publish in {room}"
            )))
        }
    }
}
