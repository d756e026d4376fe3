//! Image retention (docs/design.md, deploy step 8) as one pure function: which
//! tags' images may go after a deploy. Kept: every tag a container still
//! runs, the newest `keep_images` tags switchctl deployed (by deploy time,
//! whatever their outcome: a tag that failed may be retried or inspected),
//! and the most recent attempt's tag (a retry must find it). Tags switchctl
//! never deployed (images built ahead of a release) are never touched.

use crate::api::HistoryEntry;

/// Operation kinds that deploy a tag (a flip back only moves traffic).
const DEPLOYING: &[&str] = &["deploy", "rollback"];

/// The tags whose images may be removed, oldest deploy first.
///
/// `history` is oldest first (the history file's order, which is deploy
/// time); `in_use` are the tags of releases that still run; `latest` is the
/// tag of the most recent attempt, the newest deploy whether or not history
/// records it yet.
pub fn removable(history: &[HistoryEntry], in_use: &[String], latest: &str, keep_images: usize) -> Vec<String> {
    // Distinct deployed tags, newest deploy first.
    let mut newest_first: Vec<&str> = vec![latest];
    for entry in history.iter().rev() {
        if DEPLOYING.contains(&entry.kind.as_str()) && !newest_first.contains(&entry.tag.as_str()) {
            newest_first.push(&entry.tag);
        }
    }
    let kept = |tag: &str, position: usize| position < keep_images || tag == latest || in_use.iter().any(|t| t == tag);
    newest_first
        .iter()
        .enumerate()
        .filter(|(i, tag)| !kept(tag, *i))
        .rev()
        .map(|(_, tag)| tag.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::event::Outcome;
    use crate::release::Color;

    fn entry(kind: &str, tag: &str, outcome: Outcome) -> HistoryEntry {
        HistoryEntry::sample(kind, tag, Color::Blue, outcome)
    }

    fn deploys(tags: &[(&str, Outcome)]) -> Vec<HistoryEntry> {
        tags.iter().map(|(t, o)| entry("deploy", t, *o)).collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_newest_tags_are_kept_whatever_their_outcome() {
        use Outcome::*;
        let h = deploys(&[
            ("v1", Deployed),
            ("v2", Deployed),
            ("v3", RolledBack),
            ("v4", Deployed),
            ("v5", Failed),
            ("v6", Deployed),
        ]);
        assert_eq!(removable(&h, &strings(&["v6"]), "v6", 3), strings(&["v1", "v2", "v3"]));
        assert_eq!(
            removable(&h, &strings(&["v6"]), "v6", 0),
            strings(&["v1", "v2", "v3", "v4", "v5"])
        );
        assert!(removable(&h, &strings(&["v6"]), "v6", 6).is_empty());
    }

    #[test]
    fn images_in_use_and_the_latest_attempt_are_never_removed() {
        use Outcome::*;
        let h = deploys(&[("v1", Deployed), ("v2", Deployed), ("v3", Deployed), ("v4", RolledBack)]);
        // v1 still runs as the standby; v4, the latest attempt, failed.
        assert_eq!(removable(&h, &strings(&["v3", "v1"]), "v4", 0), strings(&["v2"]));
    }

    #[test]
    fn the_attempt_in_progress_counts_as_the_newest_deploy() {
        use Outcome::*;
        // Cleanup runs before the deploy of v4 is written to history.
        let h = deploys(&[("v1", Deployed), ("v2", Deployed), ("v3", Deployed)]);
        assert_eq!(removable(&h, &strings(&["v4"]), "v4", 2), strings(&["v1", "v2"]));
    }

    #[test]
    fn a_redeployed_tag_counts_from_its_last_deploy() {
        use Outcome::*;
        let h = deploys(&[("v1", Deployed), ("v2", Deployed), ("v3", Deployed), ("v1", Deployed)]);
        assert_eq!(removable(&h, &strings(&["v1"]), "v1", 1), strings(&["v2", "v3"]));
        assert_eq!(removable(&h, &strings(&["v1"]), "v1", 2), strings(&["v2"]));
    }

    #[test]
    fn tags_switchctl_never_deployed_are_not_touched() {
        use Outcome::*;
        let mut h = deploys(&[("v1", Deployed), ("v2", Deployed)]);
        // A flip back names a tag but deploys nothing.
        h.push(entry("flip_back", "v1", Flipped));
        let gone = removable(&h, &strings(&["v2"]), "v2", 0);
        assert_eq!(gone, strings(&["v1"]));
        assert!(!gone.contains(&"v9".to_string()));
        assert!(removable(&[], &[], "v1", 0).is_empty());
    }
}
