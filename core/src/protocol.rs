//! Phoenix Channels message and wire codecs. See the foundation issue.
