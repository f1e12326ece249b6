//! Client-side presence state (phoenix.js semantics). See the foundation issue.
