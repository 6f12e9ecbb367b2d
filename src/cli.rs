//! Value parsers for the settings the three binaries share, so each rule and its message is
//! written once (clap's `value_parser = ...`).

use std::time::Duration;

/// A name that must not be blank (binding names).
pub fn non_empty(value: &str) -> Result<String, String> {
    match value.trim() {
        "" => Err("must not be empty".to_owned()),
        v => Ok(v.to_owned()),
    }
}

/// A humantime duration (`5s`, `250ms`) greater than zero.
pub fn positive_duration(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value).map_err(|e| e.to_string())? {
        d if d.is_zero() => Err("must be greater than 0".to_owned()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_empty_trims_and_refuses_blank() {
        assert_eq!(non_empty(" orders ").unwrap(), "orders");
        assert_eq!(non_empty("  ").unwrap_err(), "must not be empty");
    }

    #[test]
    fn positive_duration_refuses_zero_and_garbage() {
        assert_eq!(
            positive_duration("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(
            positive_duration("0s").unwrap_err(),
            "must be greater than 0"
        );
        assert!(positive_duration("soon").is_err());
    }
}
