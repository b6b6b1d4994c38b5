//! An error and its causes as one line: "what failed: why: the root cause".

/// Causes an error already spells out at the end of its own message are not repeated.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn joins_causes() {
        let root = std::io::Error::other("disk full");
        let error = std::io::Error::other(Wrapped(root));
        assert_eq!(super::chain(&error), "cannot store: disk full");
    }

    #[test]
    fn a_cause_the_message_already_gives_is_not_repeated() {
        let error = std::io::Error::other(Wrapped(std::io::Error::other("cannot store")));
        assert_eq!(super::chain(&error), "cannot store");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("cannot store")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
