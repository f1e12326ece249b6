//! core::presence::plan: the ref-level decisions the JS shell applies to its own objects, and
//! the key index behind the instance `list()`.

use rollcall_core::presence::plan::{
    plan_diff, plan_state, DiffInput, JoinInput, KeyIndex, LeaveInput, RefKey, SKIP,
};

fn r(s: &str) -> RefKey<'static> {
    RefKey::Str(s.to_owned().into())
}

fn join(
    key: &str,
    current: Option<Vec<RefKey<'static>>>,
    joined: Vec<RefKey<'static>>,
) -> JoinInput<'static> {
    JoinInput(
        key.to_owned().into(),
        current.map(Into::into),
        joined.into(),
    )
}

fn leave(
    key: &str,
    pos: i64,
    current: Option<Vec<RefKey<'static>>>,
    left: Vec<RefKey<'static>>,
) -> LeaveInput<'static> {
    LeaveInput(
        key.to_owned().into(),
        pos,
        current.map(Into::into),
        left.into(),
    )
}

#[test]
fn plan_keeps_unmatched_current_metas_of_a_join() {
    let input = DiffInput {
        joins: vec![
            join("k", Some(vec![r("a"), r("b"), r("c")]), vec![r("b")]),
            join("n", None, vec![r("x")]),
        ],
        leaves: vec![],
    };
    assert_eq!(plan_diff(&input), [2, 0, 2, 0]);
}

#[test]
fn plan_skips_leaves_of_absent_keys() {
    let input = DiffInput {
        joins: vec![],
        leaves: vec![leave("gone", -1, None, vec![r("a")])],
    };
    assert_eq!(plan_diff(&input), [SKIP]);
}

#[test]
fn plan_of_an_update_keeps_only_the_new_meta() {
    // join of "new" onto a key holding "old", then leave of "old": positions are counted in the
    // metas after the join, [old, new], so only position 1 remains
    let input = DiffInput {
        joins: vec![join("k", Some(vec![r("old")]), vec![r("new")])],
        leaves: vec![leave("k", 0, None, vec![r("old")])],
    };
    assert_eq!(plan_diff(&input), [1, 0, 1, 1]);
}

#[test]
fn plan_treats_unencodable_refs_as_equal_to_nothing() {
    // Never stands for an object or NaN ref: never === anything, not even another one
    let input = DiffInput {
        joins: vec![],
        leaves: vec![leave(
            "k",
            -1,
            Some(vec![RefKey::Never, r("u")]),
            vec![RefKey::Never, r("u")],
        )],
    };
    assert_eq!(plan_diff(&input), [1, 0]);
}

#[test]
fn plan_state_reports_joined_and_left_positions() {
    let n = |n: f64| RefKey::Num(n);
    let input = [n(2.0), r("a"), r("b"), n(2.0), r("c"), r("a")];
    // joined: new position 0 ("c"); left: current position 1 ("b")
    assert_eq!(plan_state(&input), [1, 0, 1, 1]);
}

#[test]
fn key_index_keeps_javascript_order_and_reuses_slots() {
    let mut index = KeyIndex::new();
    assert_eq!(index.reset(["b".to_owned(), "a".to_owned()]), [0, 1]);
    let out = index
        .plan_diff(&DiffInput {
            joins: vec![join("5", None, vec![r("x")])],
            leaves: vec![leave("b", -1, Some(vec![r("y")]), vec![r("y")])],
        })
        .expect("in step");
    // plan [0 | 0], then slot of "5" (new: 2), then slot of "b" (0, freed)
    assert_eq!(out, [0, 0, 2, 0]);
    assert_eq!(index.order(), [2, 1]);
    let out = index
        .plan_diff(&DiffInput {
            joins: vec![join("c", None, vec![r("z")])],
            leaves: vec![],
        })
        .expect("in step");
    assert_eq!(out, [0, 0], "the freed slot is reused");
    assert_eq!(index.order(), [2, 1, 0]);
}

#[test]
fn key_index_reports_when_the_shell_state_moved_behind_its_back() {
    let mut index = KeyIndex::new();
    index.reset(["a".to_owned()]);
    // the shell says "a" is absent, the index has it
    let input = DiffInput {
        joins: vec![join("a", None, vec![r("x")])],
        leaves: vec![],
    };
    assert!(index.plan_diff(&input).is_err());
}

#[test]
fn refs_decode_from_the_json_a_shell_sends() {
    let refs: Vec<RefKey<'static>> =
        serde_json::from_str(r#"["a", 1, 1.5, true, null, [], {}]"#).expect("refs");
    assert_eq!(
        refs,
        [
            r("a"),
            RefKey::Num(1.0),
            RefKey::Num(1.5),
            RefKey::Bool(true),
            RefKey::Null,
            RefKey::Undefined,
            RefKey::Never
        ]
    );
    assert!(RefKey::Undefined.same(&RefKey::Undefined));
    assert!(RefKey::Num(1.0).same(&RefKey::Num(1.0)));
    assert!(!RefKey::Str("1".into()).same(&RefKey::Num(1.0)));
    assert!(!RefKey::Never.same(&RefKey::Never));
}

#[test]
fn flat_input_reads_joins_and_leaves() {
    let tokens: Vec<RefKey<'_>> = serde_json::from_str(
        r#"[1, "k", 1, "old", 1, "new", 2, "k", 0, -1, 1, "old", "gone", -1, -1, 1, "x"]"#,
    )
    .expect("tokens");
    let diff = DiffInput::from_flat(&tokens).expect("flat diff");
    assert_eq!(diff.joins.len(), 1);
    assert_eq!(diff.leaves.len(), 2);
    // the update keeps only the new meta; the absent key is skipped
    assert_eq!(plan_diff(&diff), [1, 0, 1, 1, SKIP]);
    let short: Vec<RefKey<'_>> = serde_json::from_str(r#"[1, "k", 5, "a"]"#).expect("tokens");
    assert!(
        DiffInput::from_flat(&short).is_none(),
        "a truncated input is refused"
    );
}
