//! Text kept to a byte budget: transcripts in manifests, Defender's messages in reasons, reasons in
//! events. One rule everywhere: cut at a character boundary, `…` marking the cut.

/// `text` if it fits in `max` bytes; else its first `max` bytes (fewer, to end on a character)
/// followed by `…`.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cuts_at_a_character_boundary_and_marks_the_cut() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("abcdef", 3), "abc…");
        // "é" is two bytes: a cut inside it backs off to the character before.
        assert_eq!(cut("aé", 2), "a…");
        assert_eq!(cut("", 0), "");
    }
}
