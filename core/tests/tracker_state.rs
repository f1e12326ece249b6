//! The CRDT scenarios of Phoenix's state tests (spec §4.1), re-expressed against [`State`].

use rollcall_core::tracker::{Diff, Meta, Presence, ReplicaId, State};

fn rid(node: &str) -> ReplicaId {
    ReplicaId::new(node, 1)
}

fn meta(json: &str) -> Meta {
    Meta::new(json).unwrap()
}

/// A state that knows (has marked up) every replica in `peers`.
fn state(node: &str, peers: &[&str]) -> State {
    let mut s = State::new(rid(node));
    for p in peers {
        s.replica_up(&rid(p));
    }
    s
}

/// `to` merges the full state `from` extracts for it.
fn sync(from: &State, to: &mut State) -> Diff {
    let payload = from.extract(to.replica(), &to.clock());
    to.merge(&payload)
}

fn keys(diff: &Diff, topic: &str, joins: bool) -> Vec<String> {
    diff.topic(topic)
        .map(|t| if joins { &t.joins } else { &t.leaves })
        .map(|v| v.iter().map(|(k, _)| k.to_string()).collect())
        .unwrap_or_default()
}

fn listed(s: &State, topic: &str) -> Vec<String> {
    s.list(topic)
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect()
}

#[test]
fn extract_of_a_fresh_state_carries_no_presences() {
    let a = State::new(rid("a"));
    let b = state("b", &["a"]);
    assert_eq!(a.extract(b.replica(), &b.clock()).value_count(), 0);
}

#[test]
fn local_join_is_listed_and_leave_removes_it() {
    let mut a = State::new(rid("a"));
    let (phx_ref, diff) = a.join(1, "lobby", "alice", meta("{}")).unwrap();
    assert_eq!(keys(&diff, "lobby", true), ["alice"]);
    assert_eq!(a.list("lobby")[0].1.phx_ref, phx_ref);
    let diff = a.leave(1, "lobby", "alice");
    assert_eq!(keys(&diff, "lobby", false), ["alice"]);
    assert!(a.list("lobby").is_empty());
}

#[test]
fn presences_from_another_replica_merge_once_and_remerge_is_idempotent() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(1, "lobby", "alice", meta(r#"{"n":1}"#)).unwrap();
    let diff = sync(&a, &mut b);
    assert_eq!(keys(&diff, "lobby", true), ["alice"]);
    assert_eq!(diff.len(), 1);
    let before = (b.snapshot(), b.context(), b.cloud_len());
    assert!(
        sync(&a, &mut b).is_empty(),
        "re-merging the same state reports nothing"
    );
    assert_eq!((b.snapshot(), b.context(), b.cloud_len()), before);
}

#[test]
fn an_observed_remove_merges_as_a_leave() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    sync(&a, &mut b);
    a.leave(1, "lobby", "alice");
    let diff = sync(&a, &mut b);
    assert_eq!(keys(&diff, "lobby", false), ["alice"]);
    assert!(b.list("lobby").is_empty());
    assert!(b.is_empty());
}

#[test]
fn later_joins_propagate_and_lists_converge() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    sync(&a, &mut b);
    b.join(1, "lobby", "bob", meta("{}")).unwrap();
    a.join(2, "lobby", "carol", meta("{}")).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(listed(&a, "lobby"), ["alice", "bob", "carol"]);
    assert_eq!(a.snapshot(), b.snapshot());
}

#[test]
fn update_merges_as_one_leave_and_one_join_with_phx_ref_prev() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    let (old, _) = a
        .join(1, "lobby", "alice", meta(r#"{"s":"away"}"#))
        .unwrap();
    sync(&a, &mut b);
    let (new, local) = a
        .update(1, "lobby", "alice", meta(r#"{"s":"here"}"#))
        .unwrap();
    let remote = sync(&a, &mut b);
    for diff in [&local, &remote] {
        let t = diff.topic("lobby").unwrap();
        assert_eq!(t.leaves.len(), 1);
        assert_eq!(t.joins.len(), 1);
        assert_eq!(t.leaves[0].1.phx_ref, old);
        assert_eq!(t.joins[0].1.phx_ref, new);
        assert_eq!(t.joins[0].1.phx_ref_prev, Some(old));
        assert_eq!(t.joins[0].1.meta_json.as_str(), r#"{"s":"here"}"#);
    }
    assert_eq!(b.get_by_key("lobby", "alice").len(), 1);
    assert_eq!(
        a.get_by_conn(1).len(),
        1,
        "the connection still owns exactly one presence"
    );
}

#[test]
fn replica_down_hides_its_presences_and_replica_up_reports_them_again() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    sync(&a, &mut b);
    let diff = b.replica_down(a.replica());
    assert_eq!(keys(&diff, "lobby", false), ["alice"]);
    assert!(b.list("lobby").is_empty());
    a.join(2, "lobby", "dave", meta("{}")).unwrap();
    assert!(
        sync(&a, &mut b).is_empty(),
        "merging from a down replica shows nothing"
    );
    let diff = b.replica_up(a.replica());
    assert_eq!(keys(&diff, "lobby", true), ["alice"]);
    sync(&a, &mut b);
    assert_eq!(listed(&b, "lobby"), ["alice", "dave"]);
}

#[test]
fn joins_reach_a_split_replica_through_a_third() {
    let mut a = state("a", &["b", "c"]);
    let mut b = state("b", &["a", "c"]);
    let mut c = state("c", &["a", "b"]);
    // a and c cannot talk; b relays.
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    sync(&a, &mut b);
    let diff = sync(&b, &mut c);
    assert_eq!(keys(&diff, "lobby", true), ["alice"]);
    assert_eq!(c.snapshot(), a.snapshot());
}

#[test]
fn removes_reach_a_split_replica_through_a_third() {
    let mut a = state("a", &["b", "c"]);
    let mut b = state("b", &["a", "c"]);
    let mut c = state("c", &["a", "b"]);
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut c);
    a.leave(1, "lobby", "alice");
    sync(&a, &mut b);
    let diff = sync(&b, &mut c);
    assert_eq!(keys(&diff, "lobby", false), ["alice"]);
    assert!(c.list("lobby").is_empty());
}

#[test]
fn get_by_conn_returns_every_presence_of_a_connection() {
    let mut a = State::new(rid("a"));
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    a.join(1, "room:2", "alice", meta("{}")).unwrap();
    a.join(2, "lobby", "bob", meta("{}")).unwrap();
    let got: Vec<(String, String)> = a
        .get_by_conn(1)
        .into_iter()
        .map(|(t, k, _)| (t.to_string(), k.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            ("lobby".into(), "alice".into()),
            ("room:2".into(), "alice".into())
        ]
    );
    assert!(a.get_by_conn(3).is_empty());
    a.leave_connection(1);
    assert!(a.get_by_conn(1).is_empty());
    assert_eq!(listed(&a, "lobby"), ["bob"]);
}

#[test]
fn get_by_key_returns_every_connection_under_a_key() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(1, "lobby", "alice", meta(r#"{"d":"phone"}"#))
        .unwrap();
    // Same connection id on another node: a different presence, not a collision.
    b.join(1, "lobby", "alice", meta(r#"{"d":"laptop"}"#))
        .unwrap();
    b.join(2, "lobby", "bob", meta("{}")).unwrap();
    sync(&b, &mut a);
    let mut metas: Vec<String> = a
        .get_by_key("lobby", "alice")
        .iter()
        .map(|p| p.meta_json.as_str().to_owned())
        .collect();
    metas.sort();
    assert_eq!(metas, [r#"{"d":"laptop"}"#, r#"{"d":"phone"}"#]);
    assert!(a.get_by_key("lobby", "nobody").is_empty());
    assert!(a.get_by_key("other", "alice").is_empty());
}

#[test]
fn replica_up_adds_the_replica_to_the_context_at_zero_and_reads_hide_down_replicas() {
    let mut a = State::new(rid("a"));
    a.replica_up(&rid("b"));
    assert_eq!(a.context().get(&rid("b")), Some(0));
    let mut b = state("b", &["a"]);
    b.join(1, "lobby", "bob", meta("{}")).unwrap();
    sync(&b, &mut a);
    assert_eq!(listed(&a, "lobby"), ["bob"]);
    a.replica_down(&rid("b"));
    assert!(a.list("lobby").is_empty());
    assert!(a.get_by_key("lobby", "bob").is_empty());
    assert_eq!(
        a.clock().get(&rid("b")),
        None,
        "down replicas are left out of the clock"
    );
}

#[test]
fn permdown_purges_a_replica_and_a_later_replica_up_does_not_resurrect_it() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    b.join(1, "lobby", "bob", meta("{}")).unwrap();
    sync(&b, &mut a);
    a.replica_down(b.replica());
    let diff = a.remove_down_replicas(b.replica());
    assert!(diff.is_empty(), "leaves were reported at down time");
    assert!(a.is_empty());
    assert_eq!(a.context().get(b.replica()), None);
    let diff = a.replica_up(b.replica());
    assert!(diff.is_empty());
    assert!(a.list("lobby").is_empty());
}

#[test]
fn merging_deltas_advances_clocks_exactly_and_empties_the_clouds() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    b.join(1, "lobby", "bob", meta("{}")).unwrap();
    let (da, db) = (a.take_delta(), b.take_delta());
    a.merge(&db);
    b.merge(&da);
    for s in [&a, &b] {
        assert_eq!(s.context().get(&rid("a")), Some(1));
        assert_eq!(s.context().get(&rid("b")), Some(1));
        assert_eq!(s.cloud_len(), 0);
    }
    a.join(2, "lobby", "carol", meta("{}")).unwrap();
    b.merge(&a.take_delta());
    assert_eq!(b.context().get(&rid("a")), Some(2));
    a.leave(2, "lobby", "carol");
    let diff = b.merge(&a.take_delta());
    assert_eq!(keys(&diff, "lobby", false), ["carol"]);
    assert_eq!(b.context().get(&rid("a")), Some(3));
    assert_eq!(b.cloud_len(), 0);
    assert_eq!(a.snapshot(), b.snapshot());
}

#[test]
fn a_lost_delta_leaves_a_gap_that_a_full_transfer_fills() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    let _lost = a.take_delta();
    a.join(2, "lobby", "bob", meta("{}")).unwrap();
    b.merge(&a.take_delta());
    assert_eq!(
        b.context().get(&rid("a")),
        Some(0),
        "dot 2 waits in the cloud"
    );
    assert_eq!(b.cloud_len(), 1);
    sync(&a, &mut b);
    assert_eq!(b.context().get(&rid("a")), Some(2));
    assert_eq!(b.cloud_len(), 0);
    assert_eq!(listed(&b, "lobby"), ["alice", "bob"]);
}

#[test]
fn extract_prunes_the_context_to_replicas_the_requester_knows() {
    let mut a = state("a", &["b", "c"]);
    let mut c = state("c", &["a"]);
    c.join(1, "lobby", "carol", meta("{}")).unwrap();
    sync(&c, &mut a);
    let mut b = state("b", &["a"]);
    // b does not know c: the extract carries neither c's context nor c's presences.
    let diff = sync(&a, &mut b);
    assert!(diff.is_empty());
    assert_eq!(b.context().get(&rid("c")), None);
    b.replica_up(&rid("c"));
    let diff = sync(&a, &mut b);
    assert_eq!(keys(&diff, "lobby", true), ["carol"]);
}

#[test]
fn concurrent_deltas_union_and_an_observed_remove_keeps_its_dot() {
    let mut a = state("a", &["b", "c"]);
    let mut b = state("b", &["a", "c"]);
    let mut c = state("c", &["a", "b"]);
    a.join(1, "lobby", "alice", meta("{}")).unwrap();
    a.join(2, "lobby", "ann", meta("{}")).unwrap();
    b.join(1, "lobby", "bob", meta("{}")).unwrap();
    b.join(2, "lobby", "ben", meta("{}")).unwrap();
    let (da, db) = (a.take_delta(), b.take_delta());
    c.merge(&da);
    c.merge(&db);
    c.merge(&da);
    assert_eq!(listed(&c, "lobby"), ["alice", "ann", "ben", "bob"]);
    a.merge(&db);
    a.leave(1, "lobby", "alice");
    let da2 = a.take_delta();
    c.merge(&da2);
    c.merge(&da2);
    assert_eq!(listed(&c, "lobby"), ["ann", "ben", "bob"]);
    // The removed dot stays observed: replaying the old delta cannot bring alice back.
    assert!(c.merge(&da).is_empty());
    assert_eq!(listed(&c, "lobby"), ["ann", "ben", "bob"]);
}

#[test]
fn same_connection_id_on_two_nodes_never_collides() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    a.join(7, "lobby", "x", meta(r#"{"from":"a"}"#)).unwrap();
    b.join(7, "lobby", "x", meta(r#"{"from":"b"}"#)).unwrap();
    sync(&a, &mut b);
    sync(&b, &mut a);
    assert_eq!(a.list("lobby").len(), 2);
    a.leave(7, "lobby", "x");
    sync(&a, &mut b);
    let left: Vec<Presence> = b.get_by_key("lobby", "x");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].meta_json.as_str(), r#"{"from":"b"}"#);
}

/// Stale-transfer resurrection: in Phoenix, observing a removal deletes the removed dot from the cloud, so a
/// late full state from a lagging peer re-admits the removed presence. Here the dot stays observed.
#[test]
fn stale_full_transfer_does_not_resurrect_a_removed_presence() {
    let mut a = state("a", &["b", "c"]);
    let mut b = state("b", &["a", "c"]);
    let mut c = state("c", &["a", "b"]);
    a.join(1, "lobby", "xavier", meta("{}")).unwrap();
    let d1 = a.take_delta(); // lost on the way to c: c's context for a stays at 0
    a.join(2, "lobby", "alice", meta("{}")).unwrap();
    let d2 = a.take_delta();
    b.merge(&d1);
    b.merge(&d2);
    c.merge(&d2);
    assert_eq!(listed(&c, "lobby"), ["alice"]);
    a.leave(2, "lobby", "alice");
    let d3 = a.take_delta();
    c.merge(&d3);
    assert!(c.list("lobby").is_empty());
    // b never saw the leave; its full state still has alice.
    let diff = sync(&b, &mut c);
    assert_eq!(
        keys(&diff, "lobby", true),
        ["xavier"],
        "only the genuinely missing join"
    );
    assert_eq!(listed(&c, "lobby"), ["xavier"]);
    b.merge(&d3);
    assert_eq!(c.snapshot(), b.snapshot());
}

/// Add-add divergence: with one row per (topic, pid, key), two versions of a row meeting in different
/// orders keep whichever merged last. Elements here are stored by dot, so order does not matter.
#[test]
fn two_versions_of_one_presence_converge_whatever_the_merge_order() {
    let mut a = state("a", &["b", "c"]);
    let mut b = state("b", &["a", "c"]);
    let mut c = state("c", &["a", "b"]);
    a.join(1, "lobby", "alice", meta(r#"{"v":1}"#)).unwrap();
    let v1 = a.take_delta();
    a.update(1, "lobby", "alice", meta(r#"{"v":2}"#)).unwrap();
    let v2 = a.take_delta();
    b.merge(&v1); // b holds version 1
    c.merge(&v2); // c holds version 2 (and knows version 1 was removed)
    let from_b = b.extract(c.replica(), &c.clock());
    let from_c = c.extract(b.replica(), &b.clock());
    b.merge(&from_c);
    c.merge(&from_b);
    for s in [&b, &c] {
        let got = s.get_by_key("lobby", "alice");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].meta_json.as_str(), r#"{"v":2}"#);
    }
    assert_eq!(b.snapshot(), c.snapshot());
    assert_eq!(b.snapshot(), a.snapshot());
}

#[test]
fn lists_and_diffs_order_keys_bytewise_even_past_sixteen_bytes() {
    let mut a = state("a", &["b"]);
    let mut b = state("b", &["a"]);
    let mut keys = vec![
        "user:0123456789abcdef-2",
        "user:0123456789abcdef-10",
        "user:0123456789abcdef",
        "a",
        "a\u{0}",
        "ab",
        "",
        "zz",
    ];
    for (i, k) in keys.iter().enumerate() {
        a.join(i as u64, "t", k, meta("{}")).unwrap();
        b.join(i as u64, "t", k, meta("{}")).unwrap();
    }
    keys.sort();
    let diff = sync(&a, &mut b);
    let joined: Vec<String> = diff
        .topic("t")
        .unwrap()
        .joins
        .iter()
        .map(|(k, _)| k.to_string())
        .collect();
    assert_eq!(joined, keys);
    let listed: Vec<String> = b
        .list("t")
        .into_iter()
        .map(|(k, _)| k.to_string())
        .collect();
    let twice: Vec<String> = keys
        .iter()
        .flat_map(|k| [k.to_string(), k.to_string()])
        .collect();
    assert_eq!(listed, twice);
    for k in &keys {
        assert_eq!(b.get_by_key("t", k).len(), 2, "key {k:?}");
    }
}
