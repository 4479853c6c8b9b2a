//! How developers change what a room does, without touching the actor plumbing.
//!
//! A [`RoomBehaviour`] is a small set of callbacks modelled on Phoenix channels:
//! authorise a join, accept / transform / reject a publish, react to a member joining
//! and leaving. [`Behaviours`] maps room-name patterns to behaviours at start-up; each
//! Room actor asks it once, when it starts, which behaviour it runs. Rooms that match
//! no pattern run [`PlainChat`]. docs/extending.md walks through writing one.
//!
//! Callbacks run inside the Room actor, one at a time per room, so they need no
//! locking; they are synchronous and should be quick, because the room waits for them.

mod announce;
mod word_filter;

pub use announce::AnnounceOnly;
pub use word_filter::WordFilter;

use crate::protocol::{ErrorBody, ErrorCode, Member, MessageData, RoomName, UserInfo};
use globset::{Glob, GlobMatcher};
use std::sync::Arc;

/// Why a behaviour refused a join or a publish. Becomes a `forbidden` reply unless
/// another code is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    /// A `forbidden` rejection with a message the client will see.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }
}

impl From<Rejection> for ErrorBody {
    fn from(r: Rejection) -> Self {
        ErrorBody::new(r.code, r.message)
    }
}

/// The callbacks a room runs. Every method has a default, so a behaviour overrides
/// only what it changes.
pub trait RoomBehaviour: Send + Sync + 'static {
    /// Decides whether `user` may join `room`. Called for every join, including a
    /// second connection of a user who is already a member.
    fn authorize_join(&self, room: &RoomName, user: &UserInfo) -> Result<(), Rejection> {
        let _ = (room, user);
        Ok(())
    }

    /// Sees every publish before the room orders it. Returns the content to store and
    /// broadcast (unchanged, or transformed), or a rejection.
    fn on_publish(
        &self,
        room: &RoomName,
        from: &UserInfo,
        content: String,
    ) -> Result<String, Rejection> {
        let _ = (room, from);
        Ok(content)
    }

    /// Sees every publish with its structured data (protocol v1 `publish.data`),
    /// read-only: the data is stored and delivered as sent. Returns the content as
    /// [`RoomBehaviour::on_publish`] does, or a rejection (a behaviour may refuse a
    /// publish for its data). The default calls `on_publish`, so a behaviour written
    /// for content alone sees every publish, with data or without (its content may
    /// then be `""`).
    fn on_publish_with_data(
        &self,
        room: &RoomName,
        from: &UserInfo,
        content: String,
        data: Option<&MessageData>,
    ) -> Result<String, Rejection> {
        let _ = data;
        self.on_publish(room, from, content)
    }

    /// Called when a user becomes a member (its first connection joined).
    fn on_join(&self, room: &RoomName, member: &Member) {
        let _ = (room, member);
    }

    /// Called when a user stops being a member (its last connection left or ended).
    fn on_leave(&self, room: &RoomName, member: &Member) {
        let _ = (room, member);
    }
}

/// A shared behaviour (for example one that keeps counters the rest of the program
/// reads) is a behaviour too.
impl<T: RoomBehaviour> RoomBehaviour for Arc<T> {
    fn authorize_join(&self, room: &RoomName, user: &UserInfo) -> Result<(), Rejection> {
        (**self).authorize_join(room, user)
    }

    fn on_publish(
        &self,
        room: &RoomName,
        from: &UserInfo,
        content: String,
    ) -> Result<String, Rejection> {
        (**self).on_publish(room, from, content)
    }

    fn on_publish_with_data(
        &self,
        room: &RoomName,
        from: &UserInfo,
        content: String,
        data: Option<&MessageData>,
    ) -> Result<String, Rejection> {
        (**self).on_publish_with_data(room, from, content, data)
    }

    fn on_join(&self, room: &RoomName, member: &Member) {
        (**self).on_join(room, member)
    }

    fn on_leave(&self, room: &RoomName, member: &Member) {
        (**self).on_leave(room, member)
    }
}

/// The default behaviour: anyone may join and publish; content is kept as sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainChat;

impl RoomBehaviour for PlainChat {}

/// Which behaviour each room runs, by room-name pattern, first match wins.
#[derive(Clone, Default)]
pub struct Behaviours {
    rules: Vec<(GlobMatcher, Arc<dyn RoomBehaviour>)>,
}

impl std::fmt::Debug for Behaviours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let patterns: Vec<&str> = self.rules.iter().map(|(m, _)| m.glob().glob()).collect();
        f.debug_struct("Behaviours")
            .field("patterns", &patterns)
            .finish()
    }
}

impl Behaviours {
    /// No rules: every room runs [`PlainChat`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule: rooms whose name matches the glob `pattern` (`*`, `?`, `[abc]`,
    /// `{a,b}`) run `behaviour`. Rules added earlier take precedence.
    pub fn with(
        mut self,
        pattern: &str,
        behaviour: impl RoomBehaviour,
    ) -> Result<Self, globset::Error> {
        let matcher = Glob::new(pattern)?.compile_matcher();
        self.rules.push((matcher, Arc::new(behaviour)));
        Ok(self)
    }

    /// The behaviour for a room.
    pub fn for_room(&self, room: &RoomName) -> Arc<dyn RoomBehaviour> {
        self.rules
            .iter()
            .find(|(matcher, _)| matcher.is_match(room.as_str()))
            .map(|(_, behaviour)| behaviour.clone())
            .unwrap_or_else(|| Arc::new(PlainChat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    #[test]
    fn first_matching_pattern_wins_and_the_rest_is_plain_chat() {
        let behaviours = Behaviours::new()
            .with("news:*", AnnounceOnly::new(["editor"]))
            .unwrap()
            .with("*", WordFilter::new(["darn"]))
            .unwrap();
        let reader = UserInfo {
            id: "reader".into(),
            name: "Reader".into(),
        };
        let news = behaviours.for_room(&room("news:today"));
        assert!(news
            .on_publish(&room("news:today"), &reader, "hi".into())
            .is_err());
        let other = behaviours.for_room(&room("lobby"));
        assert_eq!(
            other.on_publish(&room("lobby"), &reader, "oh darn".into()),
            Ok("oh ****".to_owned())
        );
        let plain = Behaviours::new().for_room(&room("lobby"));
        assert_eq!(
            plain.on_publish(&room("lobby"), &reader, "oh darn".into()),
            Ok("oh darn".to_owned())
        );
    }

    #[test]
    fn a_bad_pattern_is_an_error() {
        assert!(Behaviours::new().with("a{b", PlainChat).is_err());
    }
}
