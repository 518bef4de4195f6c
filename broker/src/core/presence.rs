//! Presence: online now, or last active when. Visible only to people who
//! share a conversation with the user, and reciprocal: a user who hides
//! their activity status is shown offline with no last-active time, and
//! sees nobody else's.

use imsg_proto::v1::Presence;

use crate::storage::SettingsRecord;

/// What others may see of `user`'s presence.
pub fn visible_presence(user: &str, settings: &SettingsRecord, online: bool, last_active_ms: i64) -> Presence {
    if settings.hide_activity_status {
        return Presence { user_id: user.to_owned(), online: false, last_active_ms: 0 };
    }
    Presence { user_id: user.to_owned(), online, last_active_ms }
}

/// Whether a user with these settings is sent others' presence.
pub fn receives_presence(settings: &SettingsRecord) -> bool {
    !settings.hide_activity_status
}

/// Whether a viewer in `viewer_conversations` may ask for the presence of
/// a subject in `subject_conversations`: they must share one, and the
/// subject must not hide their activity. Otherwise the subject is left out
/// of the answer (not shown offline), so nobody learns who exists.
pub fn may_query<'a>(
    subject: &SettingsRecord,
    mut subject_conversations: impl Iterator<Item = &'a String>,
    viewer_conversations: &std::collections::HashSet<&str>,
) -> bool {
    !subject.hide_activity_status && subject_conversations.any(|c| viewer_conversations.contains(c.as_str()))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const HIDDEN: SettingsRecord = SettingsRecord::with_privacy(false, true);
    const SHOWN: SettingsRecord = SettingsRecord::with_privacy(false, false);

    #[test]
    fn a_user_who_hides_activity_looks_offline_with_no_last_active_time() {
        let shown = visible_presence("bob", &SHOWN, true, 42);
        assert_eq!((shown.online, shown.last_active_ms), (true, 42));
        let hidden = visible_presence("bob", &HIDDEN, true, 42);
        assert_eq!((hidden.online, hidden.last_active_ms), (false, 0));
    }

    #[test]
    fn hiding_is_reciprocal() {
        assert!(receives_presence(&SHOWN));
        assert!(!receives_presence(&HIDDEN));
    }

    #[test]
    fn only_people_sharing_a_conversation_may_ask_and_hidden_users_are_left_out() {
        let bobs = ["dm_ab".to_string(), "g_team".to_string()];
        let alice: HashSet<&str> = HashSet::from(["dm_ab"]);
        let stranger: HashSet<&str> = HashSet::from(["dm_xy"]);
        assert!(may_query(&SHOWN, bobs.iter(), &alice));
        assert!(!may_query(&SHOWN, bobs.iter(), &stranger));
        assert!(!may_query(&HIDDEN, bobs.iter(), &alice));
    }
}
