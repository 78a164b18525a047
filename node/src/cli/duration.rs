//! Human durations on the command line: `250ms`, `90s`, `30m`, `24h`, `7d`, or a bare number of
//! seconds.

use std::time::Duration;

use halley_proto::spec::Millis;

/// Parses a duration, naming the accepted forms on error. The same forms as durations in
/// `halley.toml` ([`Millis::parse`]).
pub fn parse(text: &str) -> Result<Duration, String> {
    Millis::parse(text).map(Millis::as_duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse("1w").unwrap_err().contains("unknown unit"));
        assert!(parse("h").unwrap_err().contains("not a duration"));
    }
}
