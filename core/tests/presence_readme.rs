//! core/README.md's example of `core::presence`, also checked with assertions here.

use rollcall_core::presence::{Diff, PresenceError, PresenceEvent, PresenceState};
use serde_json::json;

#[test]
fn readme_example_follows_a_state_and_a_diff() -> Result<(), PresenceError> {
    let mut state = PresenceState::new();
    let events = state.sync_state(PresenceState::from_json(json!({
        "alice": {"metas": [{"phx_ref": "F1", "device": "web"}]}
    }))?);
    assert_eq!(events.len(), 1);
    let events = state.sync_diff(Diff::from_json(json!({
        "joins": {"bob": {"metas": [{"phx_ref": "F2"}]}},
        "leaves": {"alice": {"metas": [{"phx_ref": "F1"}]}}
    }))?);
    let mut seen = Vec::new();
    for event in &events {
        match event {
            PresenceEvent::Join { key, current, .. } => seen.push((key.clone(), current.is_none())),
            PresenceEvent::Leave { key, current, .. } => {
                seen.push((key.clone(), current.metas().is_empty()))
            }
        }
    }
    assert_eq!(seen, [("bob".to_owned(), true), ("alice".to_owned(), true)]);
    let names: Vec<String> = state.list(|key, _presence| key.to_owned());
    assert_eq!(names, ["bob"]);
    Ok(())
}
