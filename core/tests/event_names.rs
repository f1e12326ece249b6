//! The rule for the event names a client may send to the other members of a room
//! (`protocol::check_event_name`): reserved names first, then length and alphabet.

use rollcall_core::protocol::{
    check_event_name, is_reserved_event, EventNameError, MAX_EVENT_NAME_LEN, PHX_CLOSE, PHX_ERROR,
    PHX_JOIN, PHX_LEAVE, PHX_REPLY,
};

#[test]
fn protocol_events_are_reserved() {
    for event in [
        PHX_JOIN,
        PHX_LEAVE,
        PHX_REPLY,
        PHX_CLOSE,
        PHX_ERROR,
        "phx_anything",
    ] {
        assert!(is_reserved_event(event), "{event}");
        assert_eq!(check_event_name(event), Err(EventNameError::Reserved));
    }
}

#[test]
fn presence_events_are_reserved_so_no_member_can_forge_them() {
    for event in ["presence_state", "presence_diff", "presence", "presence:x"] {
        assert!(is_reserved_event(event), "{event}");
        assert_eq!(check_event_name(event), Err(EventNameError::Reserved));
    }
}

#[test]
fn reply_routing_events_are_reserved_so_no_member_can_answer_anothers_push() {
    // phoenix.js hands a `chan_reply_<ref>` event to the push waiting on that ref.
    for event in ["chan_reply_1", "chan_reply_42", "chan_reply_"] {
        assert!(is_reserved_event(event), "{event}");
        assert_eq!(check_event_name(event), Err(EventNameError::Reserved));
    }
}

#[test]
fn names_that_only_contain_a_reserved_word_are_allowed() {
    for event in [
        "my_phx_event",
        "phx",
        "phxjoin",
        "user_presence",
        "Presence_diff",
        "chan_reply",
        "my_chan_reply_1",
    ] {
        assert!(!is_reserved_event(event), "{event}");
        assert_eq!(check_event_name(event), Ok(()), "{event}");
    }
}

#[test]
fn every_allowed_character_is_accepted() {
    assert_eq!(
        check_event_name("AZaz09_:.-"),
        Ok(()),
        "letters, digits, _ : . -"
    );
    assert_eq!(check_event_name("new_msg"), Ok(()));
    assert_eq!(check_event_name("cursor:move.v2-beta"), Ok(()));
}

#[test]
fn length_is_one_to_sixty_four_bytes() {
    assert_eq!(check_event_name(""), Err(EventNameError::Invalid));
    assert_eq!(check_event_name("a"), Ok(()));
    assert_eq!(check_event_name(&"a".repeat(MAX_EVENT_NAME_LEN)), Ok(()));
    assert_eq!(
        check_event_name(&"a".repeat(MAX_EVENT_NAME_LEN + 1)),
        Err(EventNameError::Invalid)
    );
}

#[test]
fn any_other_character_is_refused() {
    for event in [
        "has space",
        "slash/",
        "quote\"",
        "tab\t",
        "nul\0",
        "é",
        "emoji😀",
        "a,b",
    ] {
        assert_eq!(
            check_event_name(event),
            Err(EventNameError::Invalid),
            "{event:?}"
        );
    }
}

#[test]
fn a_reserved_name_with_a_bad_character_is_reported_as_reserved() {
    assert_eq!(check_event_name("phx_ bad"), Err(EventNameError::Reserved));
}

#[test]
fn refusals_say_what_to_do() {
    assert_eq!(EventNameError::Reserved.to_string(), "reserved event name");
    assert_eq!(
        EventNameError::Invalid.to_string(),
        "invalid event name: use 1-64 characters of A-Z a-z 0-9 _ : . -"
    );
}
