//! Curator LeaderLatch node names: `_c_<uuid>-latch-<sequence>`, ordered by the sequence
//! after the last `latch-`.

/// The prefix Curator LeaderLatch gives its nodes, before the sequence.
pub(crate) const LOCK_NAME: &str = "latch-";

/// One child of the latch path that looks like a latch node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Child {
    pub name: String,
    pub seq: u64,
}

/// The protected-name prefix of nodes created under `uuid`: `_c_<uuid>-`.
pub(crate) fn protected_prefix(uuid: &str) -> String {
    format!("_c_{uuid}-")
}

/// The sequence of a latch node name, if it is one.
pub(crate) fn sequence(name: &str) -> Option<u64> {
    let i = name.rfind(LOCK_NAME)?;
    let digits = &name[i + LOCK_NAME.len()..];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Latch nodes among `children`, in election order (foreign nodes are ignored).
pub(crate) fn sorted(children: Vec<String>) -> Vec<Child> {
    let mut v: Vec<Child> = children
        .into_iter()
        .filter_map(|name| sequence(&name).map(|seq| Child { name, seq }))
        .collect();
    v.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.name.cmp(&b.name)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latch_nodes_sort_by_sequence_not_by_uuid() {
        let kids = vec![
            "_c_ffff-latch-0000000003".to_string(),
            "_c_0000-latch-0000000010".to_string(),
            "_c_aaaa-latch-0000000001".to_string(),
            "foreign".to_string(),
            "latch-0000000002".to_string(),
            "_c_bad-latch-x".to_string(),
        ];
        let names: Vec<String> = sorted(kids).into_iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            vec![
                "_c_aaaa-latch-0000000001",
                "latch-0000000002",
                "_c_ffff-latch-0000000003",
                "_c_0000-latch-0000000010"
            ]
        );
    }

    #[test]
    fn sequence_reads_digits_after_the_last_latch_marker() {
        assert_eq!(sequence("_c_x-latch-y-latch-0000000042"), Some(42));
        assert_eq!(sequence("_c_x-latch-"), None);
        assert_eq!(protected_prefix("u"), "_c_u-");
    }
}
