//! core::presence against the rules of phoenix.js 1.8.12's `Presence`: one test per
//! rule and per listed consequence.

use rollcall_core::presence::{
    array_index, Diff, Presence, PresenceError, PresenceEvent, PresenceState,
};
use serde_json::{json, Value};

fn state(v: Value) -> PresenceState {
    PresenceState::from_json(v).expect("valid state")
}

fn diff(v: Value) -> Diff {
    Diff::from_json(v).expect("valid diff")
}

fn pres(v: Value) -> Presence {
    Presence::from_json("test", v).expect("valid presence")
}

fn keys(s: &PresenceState) -> Vec<&str> {
    s.keys().collect()
}

fn refs(p: &Presence) -> Vec<Value> {
    p.metas()
        .iter()
        .map(|m| m.get("phx_ref").cloned().unwrap_or(Value::Null))
        .collect()
}

fn summary(events: &[PresenceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            PresenceEvent::Join { key, .. } => format!("join {key}"),
            PresenceEvent::Leave { key, .. } => format!("leave {key}"),
        })
        .collect()
}

// ---------- syncDiff ----------

#[test]
fn join_of_new_key_stores_the_joined_presence() {
    let mut s = PresenceState::new();
    let ev = s.sync_diff(diff(
        json!({"joins": {"u1": {"metas": [{"phx_ref": "1"}]}}, "leaves": {}}),
    ));
    assert_eq!(s.to_json(), json!({"u1": {"metas": [{"phx_ref": "1"}]}}));
    assert_eq!(summary(&ev), ["join u1"]);
}

#[test]
fn join_of_present_key_puts_unmatched_old_metas_first_in_old_order() {
    let mut s = state(json!({"u1": {"metas": [
        {"phx_ref": "a"}, {"phx_ref": "b"}, {"phx_ref": "c"}
    ]}}));
    s.sync_diff(diff(json!({
        "joins": {"u1": {"metas": [{"phx_ref": "d"}, {"phx_ref": "b", "new": true}]}},
        "leaves": {}
    })));
    let p = s.get("u1").expect("u1");
    assert_eq!(refs(p), [json!("a"), json!("c"), json!("d"), json!("b")]);
    assert_eq!(p.metas()[3]["new"], json!(true));
}

#[test]
fn metas_are_matched_by_phx_ref_only() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1", "status": "away"}]}}));
    s.sync_diff(diff(json!({
        "joins": {},
        "leaves": {"u1": {"metas": [{"phx_ref": "1", "status": "completely different"}]}}
    })));
    assert!(s.is_empty(), "the meta with the same phx_ref left");
}

#[test]
fn refs_compare_like_javascript_strict_equality() {
    // missing phx_ref === missing phx_ref; 1 === 1.0; "1" !== 1; objects never equal
    let mut s = state(json!({"u1": {"metas": [
        {"x": 1}, {"phx_ref": 1}, {"phx_ref": "1"}, {"phx_ref": {"o": 1}}
    ]}}));
    s.sync_diff(diff(json!({"joins": {}, "leaves": {"u1": {"metas": [
        {"y": 2}, {"phx_ref": 1.0}, {"phx_ref": {"o": 1}}
    ]}}})));
    let p = s.get("u1").expect("u1");
    assert_eq!(refs(p), [json!("1"), json!({"o": 1})]);
}

#[test]
fn joins_are_applied_before_leaves() {
    // the leave names a ref that only the join of the same diff brings
    let mut s = PresenceState::new();
    let ev = s.sync_diff(diff(json!({
        "joins": {"u1": {"metas": [{"phx_ref": "1"}]}},
        "leaves": {"u1": {"metas": [{"phx_ref": "1"}]}}
    })));
    assert!(s.is_empty());
    assert_eq!(summary(&ev), ["join u1", "leave u1"]);
}

#[test]
fn update_leaves_only_the_new_meta() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "old", "status": "away"}]}}));
    let ev = s.sync_diff(diff(json!({
        "joins": {"u1": {"metas": [{"phx_ref": "new", "phx_ref_prev": "old", "status": "busy"}]}},
        "leaves": {"u1": {"metas": [{"phx_ref": "old", "status": "away"}]}}
    })));
    assert_eq!(
        s.to_json(),
        json!({"u1": {"metas": [{"phx_ref": "new", "phx_ref_prev": "old", "status": "busy"}]}})
    );
    // onJoin sees the old meta as current; onLeave sees just the new one
    match &ev[..] {
        [PresenceEvent::Join {
            current: Some(before),
            ..
        }, PresenceEvent::Leave { current: after, .. }] => {
            assert_eq!(refs(before), [json!("old")]);
            assert_eq!(refs(after), [json!("new")]);
        }
        other => panic!("unexpected events {other:?}"),
    }
}

#[test]
fn leave_of_absent_key_is_ignored_without_event() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1"}]}}));
    let ev = s.sync_diff(diff(
        json!({"joins": {}, "leaves": {"ghost": {"metas": [{"phx_ref": "9"}]}}}),
    ));
    assert!(ev.is_empty());
    assert_eq!(keys(&s), ["u1"]);
}

#[test]
fn leave_that_matches_no_ref_still_reports_an_event() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1"}]}}));
    let ev = s.sync_diff(diff(
        json!({"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": "9"}]}}}),
    ));
    assert_eq!(summary(&ev), ["leave u1"]);
    assert_eq!(refs(s.get("u1").expect("kept")), [json!("1")]);
}

#[test]
fn leave_of_last_meta_removes_the_key() {
    let mut s =
        state(json!({"u1": {"metas": [{"phx_ref": "1"}]}, "u2": {"metas": [{"phx_ref": "2"}]}}));
    s.sync_diff(diff(
        json!({"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": "1"}]}}}),
    ));
    assert_eq!(keys(&s), ["u2"]);
}

#[test]
fn leave_of_some_metas_keeps_the_rest_in_order() {
    let mut s =
        state(json!({"u1": {"metas": [{"phx_ref": "1"}, {"phx_ref": "2"}, {"phx_ref": "3"}]}}));
    s.sync_diff(diff(
        json!({"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": "2"}]}}}),
    ));
    assert_eq!(refs(s.get("u1").expect("u1")), [json!("1"), json!("3")]);
}

#[test]
fn join_event_carries_previous_presence_unmodified_and_only_the_joined_metas() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1"}], "name": "old"}}));
    let ev = s.sync_diff(diff(json!({
        "joins": {"u1": {"metas": [{"phx_ref": "2"}], "name": "new"}, "u2": {"metas": [{"phx_ref": "3"}]}},
        "leaves": {}
    })));
    assert_eq!(
        ev[0],
        PresenceEvent::Join {
            key: "u1".into(),
            current: Some(pres(json!({"metas": [{"phx_ref": "1"}], "name": "old"}))),
            joined: pres(json!({"metas": [{"phx_ref": "2"}], "name": "new"})),
        }
    );
    assert_eq!(
        ev[1],
        PresenceEvent::Join {
            key: "u2".into(),
            current: None,
            joined: pres(json!({"metas": [{"phx_ref": "3"}]})),
        }
    );
    // while the stored presence holds both metas
    assert_eq!(refs(s.get("u1").expect("u1")), [json!("1"), json!("2")]);
}

#[test]
fn leave_event_carries_presence_after_removal_and_the_left_presence() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1"}, {"phx_ref": "2"}], "name": "n"}}));
    let ev = s.sync_diff(diff(json!({
        "joins": {},
        "leaves": {"u1": {"metas": [{"phx_ref": "1", "extra": 1}]}}
    })));
    assert_eq!(
        ev,
        [PresenceEvent::Leave {
            key: "u1".into(),
            current: pres(json!({"metas": [{"phx_ref": "2"}], "name": "n"})),
            left: pres(json!({"metas": [{"phx_ref": "1", "extra": 1}]})),
        }]
    );
}

#[test]
fn leave_event_of_removed_key_has_empty_metas() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1"}], "name": "n"}}));
    let ev = s.sync_diff(diff(
        json!({"joins": {}, "leaves": {"u1": {"metas": [{"phx_ref": "1"}]}}}),
    ));
    match &ev[..] {
        [PresenceEvent::Leave { current, .. }] => {
            assert_eq!(current, &pres(json!({"metas": [], "name": "n"})));
        }
        other => panic!("unexpected events {other:?}"),
    }
}

#[test]
fn presence_level_fields_are_kept() {
    let mut s = PresenceState::new();
    s.sync_diff(diff(json!({
        "joins": {"u1": {"user": {"name": "Ada"}, "metas": [{"phx_ref": "1"}]}},
        "leaves": {}
    })));
    assert_eq!(
        s.to_json(),
        json!({"u1": {"user": {"name": "Ada"}, "metas": [{"phx_ref": "1"}]}})
    );
}

#[test]
fn events_follow_javascript_key_order() {
    let mut s = PresenceState::new();
    let ev = s.sync_diff(diff(json!({
        "joins": {"b": {"metas": [{"phx_ref": "1"}]}, "10": {"metas": [{"phx_ref": "2"}]},
                  "a": {"metas": [{"phx_ref": "3"}]}, "2": {"metas": [{"phx_ref": "4"}]}},
        "leaves": {"a": {"metas": [{"phx_ref": "3"}]}, "10": {"metas": [{"phx_ref": "2"}]}}
    })));
    assert_eq!(
        summary(&ev),
        ["join 2", "join 10", "join b", "join a", "leave 10", "leave a"]
    );
}

#[test]
fn missing_joins_or_leaves_is_an_error() {
    assert_eq!(
        Diff::from_json(json!({"leaves": {}})),
        Err(PresenceError::MissingDiffField { field: "joins" })
    );
    assert_eq!(
        Diff::from_json(json!({"joins": {}, "leaves": null})),
        Err(PresenceError::MissingDiffField { field: "leaves" })
    );
}

#[test]
fn presence_without_metas_array_is_an_error() {
    assert_eq!(
        PresenceState::from_json(json!({"u1": {"metas": 3}})),
        Err(PresenceError::MetasNotAnArray { key: "u1".into() })
    );
    assert_eq!(
        PresenceState::from_json(json!({"u1": {"metas": [{"phx_ref": "1"}, 7]}})),
        Err(PresenceError::MetaNotAnObject {
            key: "u1".into(),
            index: 1
        })
    );
}

// ---------- key order ----------

#[test]
fn integer_like_keys_come_first_in_ascending_order() {
    let s = state(json!({
        "b": {"metas": []}, "10": {"metas": []}, "a": {"metas": []},
        "2": {"metas": []}, "0": {"metas": []}, "4294967294": {"metas": []}
    }));
    assert_eq!(keys(&s), ["0", "2", "10", "4294967294", "b", "a"]);
}

#[test]
fn keys_with_leading_zeros_or_beyond_the_array_index_range_keep_insertion_order() {
    let s = state(json!({
        "z": {"metas": []}, "01": {"metas": []}, "4294967295": {"metas": []},
        "-1": {"metas": []}, "1.5": {"metas": []}, "7": {"metas": []}
    }));
    assert_eq!(keys(&s), ["7", "z", "01", "4294967295", "-1", "1.5"]);
    assert_eq!(array_index("4294967294"), Some(4_294_967_294));
    assert_eq!(array_index("4294967295"), None);
    assert_eq!(array_index("00"), None);
    assert_eq!(array_index(""), None);
}

#[test]
fn removing_and_adding_a_string_key_again_moves_it_to_the_end() {
    let mut s =
        state(json!({"a": {"metas": [{"phx_ref": "1"}]}, "b": {"metas": [{"phx_ref": "2"}]}}));
    s.sync_diff(diff(
        json!({"joins": {}, "leaves": {"a": {"metas": [{"phx_ref": "1"}]}}}),
    ));
    s.sync_diff(diff(
        json!({"joins": {"a": {"metas": [{"phx_ref": "3"}]}}, "leaves": {}}),
    ));
    assert_eq!(keys(&s), ["b", "a"]);
}

#[test]
fn joining_a_present_key_keeps_its_position() {
    let mut s =
        state(json!({"a": {"metas": [{"phx_ref": "1"}]}, "b": {"metas": [{"phx_ref": "2"}]}}));
    s.sync_diff(diff(
        json!({"joins": {"a": {"metas": [{"phx_ref": "3"}]}}, "leaves": {}}),
    ));
    assert_eq!(keys(&s), ["a", "b"]);
}

#[test]
fn keys_named_like_object_prototype_members_are_ordinary_keys() {
    let s =
        state(json!({"__proto__": {"metas": [{"phx_ref": "1"}]}, "constructor": {"metas": []}}));
    assert_eq!(keys(&s), ["__proto__", "constructor"]);
    assert!(s.get("__proto__").is_some());
}

// ---------- list ----------

#[test]
fn list_applies_the_chooser_in_key_order() {
    let s = state(json!({
        "b": {"metas": [{"phx_ref": "1", "n": 1}, {"phx_ref": "2"}]},
        "3": {"metas": [{"phx_ref": "3", "n": 3}]}
    }));
    let listed = s.list(|k, p| (k.to_owned(), p.metas().len()));
    assert_eq!(listed, [("3".to_owned(), 1), ("b".to_owned(), 2)]);
}

// ---------- syncState ----------

#[test]
fn sync_state_joins_new_keys_with_the_whole_presence() {
    let mut s = PresenceState::new();
    let ev = s.sync_state(state(json!({"u1": {"metas": [{"phx_ref": "1"}], "n": 1}})));
    assert_eq!(
        ev,
        [PresenceEvent::Join {
            key: "u1".into(),
            current: None,
            joined: pres(json!({"metas": [{"phx_ref": "1"}], "n": 1})),
        }]
    );
    assert_eq!(
        s.to_json(),
        json!({"u1": {"metas": [{"phx_ref": "1"}], "n": 1}})
    );
}

#[test]
fn sync_state_with_identical_refs_reports_nothing_and_keeps_old_fields() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1", "v": "old"}], "name": "old"}}));
    let ev = s.sync_state(state(
        json!({"u1": {"metas": [{"phx_ref": "1", "v": "new"}], "name": "new"}}),
    ));
    assert!(ev.is_empty());
    assert_eq!(
        s.to_json(),
        json!({"u1": {"metas": [{"phx_ref": "1", "v": "old"}], "name": "old"}})
    );
}

#[test]
fn sync_state_puts_surviving_old_metas_before_joined_ones_with_new_fields() {
    let mut s = state(json!({"u1": {"metas": [
        {"phx_ref": "a"}, {"phx_ref": "b"}, {"phx_ref": "c"}
    ], "name": "old"}}));
    s.sync_state(state(json!({"u1": {"metas": [
        {"phx_ref": "e"}, {"phx_ref": "c"}, {"phx_ref": "d"}, {"phx_ref": "a"}
    ], "name": "new"}})));
    let p = s.get("u1").expect("u1");
    assert_eq!(refs(p), [json!("a"), json!("c"), json!("e"), json!("d")]);
    assert_eq!(p.fields()["name"], json!("new"));
}

#[test]
fn sync_state_join_carries_only_the_joined_metas() {
    // the diff phoenix.js builds overwrites the new presence's metas with the joined ones
    let current = state(json!({"u1": {"metas": [{"phx_ref": "a"}]}}));
    let d = current.diff_to(state(
        json!({"u1": {"metas": [{"phx_ref": "a"}, {"phx_ref": "b"}], "n": 2}}),
    ));
    assert_eq!(
        d.joins.to_json(),
        json!({"u1": {"metas": [{"phx_ref": "b"}], "n": 2}})
    );
    assert!(d.leaves.is_empty());
}

#[test]
fn sync_state_leave_carries_a_copy_of_the_current_presence_with_only_the_left_metas() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "a"}, {"phx_ref": "b"}], "n": "old"}}));
    let ev = s.sync_state(state(
        json!({"u1": {"metas": [{"phx_ref": "b"}], "n": "new"}}),
    ));
    assert_eq!(
        ev,
        [PresenceEvent::Leave {
            key: "u1".into(),
            current: pres(json!({"metas": [{"phx_ref": "b"}], "n": "old"})),
            left: pres(json!({"metas": [{"phx_ref": "a"}], "n": "old"})),
        }]
    );
}

#[test]
fn sync_state_reports_joins_then_vanished_keys_then_partial_leaves() {
    let mut s = state(json!({
        "gone2": {"metas": [{"phx_ref": "g2"}]},
        "part": {"metas": [{"phx_ref": "p1"}, {"phx_ref": "p2"}]},
        "gone1": {"metas": [{"phx_ref": "g1"}]},
        "7": {"metas": [{"phx_ref": "s1"}, {"phx_ref": "s2"}]}
    }));
    let ev = s.sync_state(state(json!({
        "new": {"metas": [{"phx_ref": "n"}]},
        "part": {"metas": [{"phx_ref": "p1"}, {"phx_ref": "p3"}]},
        "7": {"metas": [{"phx_ref": "s2"}]},
        "3": {"metas": [{"phx_ref": "t"}]}
    })));
    assert_eq!(
        summary(&ev),
        [
            "join 3",
            "join new",
            "join part",
            // "7" is integer-like, so it leads the leaves whatever its insertion order
            "leave 7",
            "leave gone2",
            "leave gone1",
            "leave part"
        ]
    );
}

#[test]
fn sync_state_leave_of_vanished_key_has_empty_metas() {
    let mut s = state(json!({"u1": {"metas": [{"phx_ref": "1"}], "n": 1}}));
    let ev = s.sync_state(PresenceState::new());
    assert_eq!(
        ev,
        [PresenceEvent::Leave {
            key: "u1".into(),
            current: pres(json!({"metas": [], "n": 1})),
            left: pres(json!({"metas": [{"phx_ref": "1"}], "n": 1})),
        }]
    );
    assert!(s.is_empty());
}

#[test]
fn state_round_trips_through_serde_in_javascript_order() {
    let s = state(json!({"b": {"metas": []}, "1": {"metas": [{"phx_ref": "x"}]}}));
    let text = serde_json::to_string(&s).expect("serialize");
    assert_eq!(
        text,
        r#"{"1":{"metas":[{"phx_ref":"x"}]},"b":{"metas":[]}}"#
    );
    let back: PresenceState = serde_json::from_str(&text).expect("deserialize");
    assert_eq!(back, s);
}
