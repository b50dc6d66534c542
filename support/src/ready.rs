//! Ready lines: every Tradeplex process prints one line on stdout once it is serving,
//! e.g. `ready frontend=tcp://127.0.0.1:40111 backend=… http=127.0.0.1:40115`.

/// The value of `name=` in a ready line, if present.
pub fn ready_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|kv| {
        kv.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_by_their_whole_name() {
        let line = "ready frontend=tcp://a:1 xpub=tcp://b:2 http=off";
        assert_eq!(ready_field(line, "xpub"), Some("tcp://b:2"));
        assert_eq!(ready_field(line, "http"), Some("off"));
        assert_eq!(ready_field(line, "front"), None);
        assert_eq!(ready_field(line, "ready"), None);
    }
}
