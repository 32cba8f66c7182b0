//! How a change from the API or an import merges into a contact (docs/rules.md §11): a name
//! replaces, tags are added and removed, attributes are set or removed, an opt-in is kept when
//! it is newer than both the kept opt-in and an opt-out, an opt-out withdraws the opt-in, a
//! block is the newest block or unblock. Pure, so a replayed change is seen to change nothing.

use std::collections::BTreeMap;

use finestra_domain::Timestamp;

/// The part of a contact the tenant writes (the profile name and last inbound time are the
/// user's, written by the event pipeline).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owned {
    pub name: String,
    pub attributes: BTreeMap<String, String>,
    /// Sorted, distinct.
    pub tags: Vec<String>,
    pub opt_in: Option<OptIn>,
    pub opted_out_at: Option<Timestamp>,
    pub blocked: bool,
    pub blocked_at: Option<Timestamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptIn {
    pub source: String,
    pub at: Timestamp,
    pub proof: String,
}

/// One change to a contact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// Empty: unchanged.
    pub name: String,
    /// Set these; an empty value removes the key.
    pub attributes: BTreeMap<String, String>,
    pub add_tags: Vec<String>,
    pub remove_tags: Vec<String>,
    pub opt_in: Option<OptIn>,
    /// The user does not want marketing (recorded at this time).
    pub opted_out_at: Option<Timestamp>,
    /// Block (true) or lift the block (false), at the change's time.
    pub block: Option<(bool, Timestamp)>,
    /// The user asked for marketing again (START, the network's resume) at this time: an
    /// older opt-out is lifted.
    pub resumed_at: Option<Timestamp>,
}

/// The contact after the change.
pub fn merge(before: &Owned, change: &Change) -> Owned {
    let mut after = before.clone();
    if !change.name.is_empty() {
        after.name.clone_from(&change.name);
    }
    for (k, v) in &change.attributes {
        if v.is_empty() {
            after.attributes.remove(k);
        } else {
            after.attributes.insert(k.clone(), v.clone());
        }
    }
    after.tags.extend(change.add_tags.iter().cloned());
    after.tags.retain(|t| !change.remove_tags.contains(t));
    after.tags.sort();
    after.tags.dedup();
    if let Some(out_at) = change.opted_out_at {
        // The first opt-out recorded stays (a re-import changes nothing); it withdraws any
        // opt-in that is not newer.
        let out_at = after.opted_out_at.map_or(out_at, |kept| kept.min(out_at));
        after.opted_out_at = Some(out_at);
        if after.opt_in.as_ref().is_some_and(|o| o.at <= out_at) {
            after.opt_in = None;
        }
    }
    if let Some(opt_in) = &change.opt_in {
        let newer_than_kept = after.opt_in.as_ref().is_none_or(|o| opt_in.at > o.at);
        let newer_than_out = after.opted_out_at.is_none_or(|out| opt_in.at > out);
        if newer_than_kept && newer_than_out {
            after.opt_in = Some(opt_in.clone());
            after.opted_out_at = None;
        }
    }
    if let Some(resumed) = change.resumed_at
        && after.opted_out_at.is_some_and(|out| resumed > out)
    {
        after.opted_out_at = None;
    }
    if let Some((block, at)) = change.block
        && before.blocked != block
    {
        after.blocked = block;
        after.blocked_at = Some(at);
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt_in(at: i64) -> OptIn {
        OptIn {
            source: "web".into(),
            at: Timestamp::from_secs(at),
            proof: "form 7".into(),
        }
    }

    #[test]
    fn names_tags_and_attributes() {
        let before = Owned {
            name: "Giulia".into(),
            attributes: [("city".to_owned(), "Roma".to_owned())].into(),
            tags: vec!["vip".into()],
            ..Owned::default()
        };
        let change = Change {
            attributes: [
                ("city".to_owned(), String::new()),
                ("plan".to_owned(), "gold".to_owned()),
            ]
            .into(),
            add_tags: vec!["b".into(), "a".into(), "vip".into()],
            remove_tags: vec!["b".into()],
            ..Change::default()
        };
        let after = merge(&before, &change);
        assert_eq!(after.name, "Giulia");
        assert_eq!(
            after.attributes,
            [("plan".to_owned(), "gold".to_owned())].into()
        );
        assert_eq!(after.tags, vec!["a".to_owned(), "vip".to_owned()]);
        assert_eq!(merge(&after, &change), after, "a replay changes nothing");
    }

    #[test]
    fn the_newest_consent_wins_and_a_replayed_opt_out_changes_nothing() {
        let with_opt_in = merge(
            &Owned::default(),
            &Change {
                opt_in: Some(opt_in(100)),
                ..Change::default()
            },
        );
        assert_eq!(with_opt_in.opt_in, Some(opt_in(100)));
        // An older opt-in does not replace a newer one.
        let older = Change {
            opt_in: Some(opt_in(50)),
            ..Change::default()
        };
        assert_eq!(merge(&with_opt_in, &older), with_opt_in);
        // An opt-out withdraws it, and stays when recorded again later.
        let out = Change {
            opted_out_at: Some(Timestamp::from_secs(200)),
            ..Change::default()
        };
        let opted_out = merge(&with_opt_in, &out);
        assert_eq!(opted_out.opt_in, None);
        assert_eq!(opted_out.opted_out_at, Some(Timestamp::from_secs(200)));
        let again = Change {
            opted_out_at: Some(Timestamp::from_secs(300)),
            ..Change::default()
        };
        assert_eq!(merge(&opted_out, &again), opted_out);
        // Only an opt-in newer than the opt-out brings marketing back.
        assert_eq!(
            merge(
                &opted_out,
                &Change {
                    opt_in: Some(opt_in(150)),
                    ..Change::default()
                }
            ),
            opted_out
        );
        let back = merge(
            &opted_out,
            &Change {
                opt_in: Some(opt_in(400)),
                ..Change::default()
            },
        );
        assert_eq!(back.opt_in, Some(opt_in(400)));
        assert_eq!(back.opted_out_at, None);
    }

    #[test]
    fn a_newer_resume_lifts_an_opt_out_and_an_older_one_does_not() {
        let t = Timestamp::from_secs;
        let out = merge(
            &Owned::default(),
            &Change {
                opted_out_at: Some(t(100)),
                ..Change::default()
            },
        );
        let older = Change {
            resumed_at: Some(t(50)),
            ..Change::default()
        };
        assert_eq!(merge(&out, &older), out);
        let newer = Change {
            resumed_at: Some(t(150)),
            ..Change::default()
        };
        assert_eq!(merge(&out, &newer).opted_out_at, None);
    }

    #[test]
    fn a_block_records_when_it_changed() {
        let t = Timestamp::from_secs;
        let blocked = merge(
            &Owned::default(),
            &Change {
                block: Some((true, t(10))),
                ..Change::default()
            },
        );
        assert!(blocked.blocked);
        assert_eq!(blocked.blocked_at, Some(t(10)));
        let repeated = Change {
            block: Some((true, t(20))),
            ..Change::default()
        };
        assert_eq!(
            merge(&blocked, &repeated),
            blocked,
            "a repeated block changes nothing"
        );
        let lifted = merge(
            &blocked,
            &Change {
                block: Some((false, t(30))),
                ..Change::default()
            },
        );
        assert!(!lifted.blocked);
        assert_eq!(lifted.blocked_at, Some(t(30)));
    }
}
