//! Human durations on the command line: `90s`, `30m`, `24h`, `7d`, or a bare number of seconds.

use std::time::Duration;

/// Parses a duration, naming the accepted forms on error.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; use forms like 90s, 30m, 24h, 7d"))?;
    let secs = match unit {
        "" | "s" => Some(value),
        "ms" => return Ok(Duration::from_millis(value)),
        "m" => value.checked_mul(60),
        "h" => value.checked_mul(3600),
        "d" => value.checked_mul(86_400),
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}; use ms, s, m, h or d"
            ));
        }
    };
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
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
