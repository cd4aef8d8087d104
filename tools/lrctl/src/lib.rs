//! `lrctl`: the analyst's command (skeleton; see issue 12).
