//! Unknown names answered with the nearest known one ("no VM named "wbe1"
//! (did you mean "web1"?)"): one wording for VMs, nodes, storage domains
//! and images, wherever a name is looked up.

use crate::model::ClusterState;

/// The known name nearest to `typed`, if one is close enough to be a typo:
/// at most two edits away (one for short names), or `typed` a prefix of it.
pub fn nearest<'a>(typed: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = if typed.chars().count() <= 3 { 1 } else { 2 };
    known
        .into_iter()
        .map(|k| (edit_distance(typed, k), k))
        .filter(|(d, k)| *d <= limit || (typed.len() >= 2 && k.starts_with(typed)))
        .min_by_key(|(d, k)| (*d, k.len()))
        .map(|(_, k)| k)
}

/// Levenshtein distance, with a swap of neighbours counting as one edit.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for j in 0..=b.len() {
        rows[0][j] = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1).min(rows[i][j - 1] + 1).min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

/// `no {what} named "x" (did you mean "y"?); see `{list}``.
pub fn unknown<'a>(what: &str, typed: &str, known: impl IntoIterator<Item = &'a str>, list: &str) -> String {
    match nearest(typed, known) {
        Some(near) => format!("no {what} named {typed:?} (did you mean {near:?}?); see `{list}`"),
        None => format!("no {what} named {typed:?}; see `{list}`"),
    }
}

impl ClusterState {
    pub fn unknown_vm(&self, typed: &str) -> String {
        unknown("VM", typed, self.vms.values().map(|v| v.name.as_str()), "kvmesh vm list")
    }

    pub fn unknown_node(&self, typed: &str) -> String {
        unknown("node", typed, self.nodes.values().map(|n| n.name.as_str()), "kvmesh node list")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_name() {
        let known = ["web1", "web2", "db", "n1", "n2", "n3"];
        assert_eq!(nearest("wbe1", known), Some("web1"));
        assert_eq!(nearest("web", known), Some("web1"));
        assert_eq!(nearest("n7", known), Some("n1"));
        assert_eq!(nearest("database", known), None);
        assert_eq!(nearest("zz", ["db"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    #[test]
    fn the_message_names_the_list_command() {
        let m = unknown("VM", "wbe1", ["web1"], "kvmesh vm list");
        assert_eq!(m, "no VM named \"wbe1\" (did you mean \"web1\"?); see `kvmesh vm list`");
        assert_eq!(unknown("node", "x", [], "kvmesh node list"), "no node named \"x\"; see `kvmesh node list`");
    }
}
