//! Shell quoting for the commands the CLI prints for copy and paste.
//!
//! Invariant: a quoted word, pasted into a POSIX shell, is exactly one argument with exactly
//! the original bytes.

/// `word` as one POSIX shell word: as it is when it holds only characters no shell treats
/// specially, else in single quotes (a single quote inside becomes `'\''`).
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:@%+,=-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// `--name=value` as one shell word: the `=` form keeps a value that starts with `-` from
/// being read as another option.
pub fn option(name: &str, value: &str) -> String {
    quote(&format!("--{name}={value}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_every_byte_in_one_word() {
        assert_eq!(quote("order-1/pay"), "order-1/pay");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote(""), "''");
        assert_eq!(option("after", "-108"), "--after=-108");
        assert_eq!(option("after", "'1158"), r"'--after='\''1158'");
    }
}
