//! Room access: who may join and who may publish, from `[[rooms.acl]]`.
//!
//! Exactly one entry applies to a room: the **most specific** of those whose pattern
//! matches its name, which is
//!
//! 1. a pattern without wildcards (an exact room name) before any pattern with them;
//! 2. then the pattern with the longest literal prefix, the characters before its
//!    first wildcard (`*`, `?`, `[`, `{` or `\`): `team:red:*` (9) before `team:*` (5)
//!    before `*` (0);
//! 3. then, on a tie, the entry listed first.
//!
//! A room no pattern matches is public and every member may publish. The entry that
//! applies decides alone: entries are not combined.
//!
//! The rules are checked in the Session, on the node the client is connected to,
//! before a join or publish is forwarded to the room (wherever its owner is). Every
//! node of a cluster reads the same configuration, so every node decides the same.

use super::Grants;
use crate::config::{AclEntry, JoinRule, PublishRule};
use crate::protocol::{ErrorBody, ErrorCode, RoomName};
use globset::{Glob, GlobMatcher};

/// Characters that make a glob more than a literal name.
const WILDCARDS: &[char] = &['*', '?', '[', '{', '\\'];

/// The compiled `[[rooms.acl]]`, most specific entry first.
#[derive(Debug, Clone, Default)]
pub struct RoomAccess {
    rules: Vec<Rule>,
    /// Refuse every join and publish (rules that could not be compiled).
    closed: bool,
}

#[derive(Debug, Clone)]
struct Rule {
    pattern: String,
    matcher: GlobMatcher,
    join: JoinRule,
    publish: PublishRule,
}

/// How specific a pattern is; greater wins.
fn specificity(pattern: &str) -> (bool, usize) {
    match pattern.find(WILDCARDS) {
        None => (true, pattern.len()),
        Some(prefix) => (false, prefix),
    }
}

impl RoomAccess {
    /// Compiles the entries; the problems, as (key, reason), if any is unusable.
    pub fn new(entries: &[AclEntry]) -> Result<Self, Vec<(String, String)>> {
        let problems = Self::problems(entries);
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut rules: Vec<Rule> = entries
            .iter()
            .filter_map(|entry| {
                let matcher = Glob::new(&entry.pattern).ok()?.compile_matcher();
                Some(Rule {
                    pattern: entry.pattern.clone(),
                    matcher,
                    join: entry.join.clone(),
                    publish: entry.publish.clone(),
                })
            })
            .collect();
        // Stable: entries of equal specificity keep the order they were listed in.
        rules.sort_by_key(|rule| std::cmp::Reverse(specificity(&rule.pattern)));
        Ok(Self {
            rules,
            closed: false,
        })
    }

    /// Rules that refuse every join and publish: what a node falls back to if its
    /// rules cannot be compiled, so that a mistake closes rooms rather than opens them.
    pub fn closed() -> Self {
        Self {
            rules: Vec::new(),
            closed: true,
        }
    }

    /// What is wrong with the entries, as (key, reason): patterns that do not
    /// compile, exact names that are no room name, and patterns listed twice.
    pub fn problems(entries: &[AclEntry]) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let key = format!("rooms.acl[{i}].pattern");
            let pattern = &entry.pattern;
            if pattern.is_empty() {
                problems.push((key, "must not be empty".to_owned()));
                continue;
            }
            if let Err(e) = Glob::new(pattern) {
                problems.push((key, format!("{pattern:?} is not a glob: {e}")));
                continue;
            }
            if specificity(pattern).0 && RoomName::parse(pattern).is_err() {
                problems.push((
                    key,
                    format!(
                        "{pattern:?} matches no room: room names are 1 to 64 characters of \
                         A-Z a-z 0-9 _ . : -"
                    ),
                ));
                continue;
            }
            if let Some(first) = entries[..i].iter().position(|e| e.pattern == *pattern) {
                problems.push((
                    key,
                    format!(
                        "{pattern:?} is also the pattern of rooms.acl[{first}], which would \
                         always win; merge the two"
                    ),
                ));
            }
        }
        problems
    }

    /// The pattern of the entry that applies to `room`, if any.
    pub fn pattern_for(&self, room: &str) -> Option<&str> {
        self.rule_for(room).map(|rule| rule.pattern.as_str())
    }

    fn rule_for(&self, room: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.matcher.is_match(room))
    }

    /// Whether `grants` may join `room`; a `forbidden` error saying what it takes if
    /// not.
    pub fn may_join(&self, room: &RoomName, grants: &Grants) -> Result<(), ErrorBody> {
        if self.closed {
            return Err(closed());
        }
        let Some(rule) = self.rule_for(room.as_str()) else {
            return Ok(());
        };
        match &rule.join {
            JoinRule::Public => Ok(()),
            JoinRule::Claim if grants.claims_room(room.as_str()) => Ok(()),
            JoinRule::Claim => Err(forbidden(format!(
                "joining {room} needs a token whose rooms claim matches it"
            ))),
            JoinRule::Roles(roles) if grants.has_any_role(roles) => Ok(()),
            JoinRule::Roles(roles) => Err(forbidden(format!(
                "joining {room} needs one of the roles: {}",
                roles.join(", ")
            ))),
        }
    }

    /// Whether `grants` may publish in `room` (which it has joined).
    pub fn may_publish(&self, room: &RoomName, grants: &Grants) -> Result<(), ErrorBody> {
        if self.closed {
            return Err(closed());
        }
        let Some(rule) = self.rule_for(room.as_str()) else {
            return Ok(());
        };
        match &rule.publish {
            PublishRule::Members => Ok(()),
            PublishRule::Roles(roles) if grants.has_any_role(roles) => Ok(()),
            PublishRule::Roles(roles) => Err(forbidden(format!(
                "publishing in {room} needs one of the roles: {}",
                roles.join(", ")
            ))),
        }
    }
}

fn closed() -> ErrorBody {
    forbidden("this node's room access rules are broken; see its log".to_owned())
}

fn forbidden(message: String) -> ErrorBody {
    ErrorBody::new(ErrorCode::Forbidden, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::RoomClaim;

    fn entry(pattern: &str, join: JoinRule, publish: PublishRule) -> AclEntry {
        AclEntry {
            pattern: pattern.to_owned(),
            join,
            publish,
        }
    }

    fn public(pattern: &str) -> AclEntry {
        entry(pattern, JoinRule::Public, PublishRule::Members)
    }

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn grants(role_names: &[&str], rooms: &[&str]) -> Grants {
        Grants {
            roles: roles(role_names),
            rooms: (!rooms.is_empty()).then(|| RoomClaim::new(roles(rooms)).unwrap()),
            expires_at: None,
        }
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let access = RoomAccess::new(&[
            public("team:*"),
            public("team:red:*"),
            public("team:red:ops"),
            public("t?am:red:*"),
            public("{team,crew}:red:x*"),
            public("*"),
        ])
        .unwrap();
        let applies = |name: &str| access.pattern_for(name);
        // An exact name beats every wildcard.
        assert_eq!(applies("team:red:ops"), Some("team:red:ops"));
        // Then the longest literal prefix.
        assert_eq!(applies("team:red:chat"), Some("team:red:*"));
        assert_eq!(applies("team:blue"), Some("team:*"));
        assert_eq!(applies("tuam:red:1"), Some("t?am:red:*"));
        // Both have no literal prefix: the one listed first wins.
        assert_eq!(applies("crew:red:x1"), Some("{team,crew}:red:x*"));
        assert_eq!(applies("lobby"), Some("*"));
        // Prefix length, not position in the file, decides...
        let reversed = RoomAccess::new(&[public("team:red:*"), public("team:*")]).unwrap();
        assert_eq!(reversed.pattern_for("team:red:a"), Some("team:red:*"));
        // ...and the file order breaks ties.
        let tie = RoomAccess::new(&[public("a*"), public("a?")]).unwrap();
        assert_eq!(tie.pattern_for("ab"), Some("a*"));
        let tie = RoomAccess::new(&[public("a?"), public("a*")]).unwrap();
        assert_eq!(tie.pattern_for("ab"), Some("a?"));
        assert_eq!(RoomAccess::default().pattern_for("anything"), None);
    }

    #[test]
    fn join_rules() {
        let access = RoomAccess::new(&[
            entry("open:*", JoinRule::Public, PublishRule::Members),
            entry("team:*", JoinRule::Claim, PublishRule::Members),
            entry(
                "staff:*",
                JoinRule::Roles(roles(&["staff", "admin"])),
                PublishRule::Members,
            ),
            entry("staff:lounge", JoinRule::Public, PublishRule::Members),
        ])
        .unwrap();
        let anonymous = Grants::default();
        let red = grants(&[], &["team:red:*"]);
        let staff = grants(&["staff"], &[]);
        let ok = |room_name: &str, who: &Grants| access.may_join(&room(room_name), who).is_ok();

        assert!(ok("open:1", &anonymous));
        assert!(ok("unlisted", &anonymous));
        assert!(!ok("team:red:1", &anonymous));
        assert!(ok("team:red:1", &red));
        assert!(!ok("team:blue:1", &red));
        assert!(!ok("staff:ops", &anonymous));
        assert!(!ok("staff:ops", &red));
        assert!(ok("staff:ops", &staff));
        // The exact entry opens one room of the staff pattern.
        assert!(ok("staff:lounge", &anonymous));

        let refused = access.may_join(&room("staff:ops"), &red).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert!(
            refused.message.contains("staff, admin"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn publish_rules() {
        let access = RoomAccess::new(&[
            entry(
                "announce:*",
                JoinRule::Public,
                PublishRule::Roles(roles(&["editor"])),
            ),
            public("announce:chatter"),
        ])
        .unwrap();
        let reader = grants(&["reader"], &[]);
        let editor = grants(&["editor"], &[]);
        assert!(access.may_publish(&room("announce:news"), &reader).is_err());
        assert!(access
            .may_publish(&room("announce:news"), &Grants::default())
            .is_err());
        assert!(access.may_publish(&room("announce:news"), &editor).is_ok());
        assert!(access
            .may_publish(&room("announce:chatter"), &reader)
            .is_ok());
        assert!(access.may_publish(&room("lobby"), &reader).is_ok());
        assert_eq!(
            access
                .may_publish(&room("announce:news"), &reader)
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn problems_name_the_entry() {
        let problems = RoomAccess::problems(&[
            public("ok:*"),
            public("a{b"),
            public(""),
            public("not a room"),
            public("ok:*"),
        ]);
        let keys: Vec<&str> = problems.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "rooms.acl[1].pattern",
                "rooms.acl[2].pattern",
                "rooms.acl[3].pattern",
                "rooms.acl[4].pattern"
            ],
            "{problems:?}"
        );
        assert!(problems[3].1.contains("rooms.acl[0]"), "{problems:?}");
        assert!(RoomAccess::new(&[public("a{b")]).is_err());
    }
}
