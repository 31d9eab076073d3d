//! The answers a `--pipe` command writes on its stdout, one line per entry:
//!
//! ```text
//! ack ENTRY_ID
//! retry ENTRY_ID [DELAY] [REASON…]      DELAY: 500ms, 5s, 1m (else the backoff)
//! dead ENTRY_ID REASON…                 dead-lettered at once
//! ```
//!
//! Words are separated by spaces or tabs; a trailing `\r` is ignored. A line
//! that is none of these is an error: the command is restarted and its
//! entries are retried, never acknowledged by guess.

use std::time::Duration;

use streambus::config::parse_duration;
use streambus::{EntryId, Outcome};

/// One answer: which entry, and what to do with it.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub id: EntryId,
    pub outcome: Outcome,
}

/// What the protocol expects, for error messages.
pub const EXPECTED: &str =
    "expected `ack ID`, `retry ID [DELAY] [REASON]` or `dead ID REASON` (logs go to stderr)";

/// Parses one line (without its newline).
pub fn parse(line: &[u8]) -> Result<Answer, String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    let text = text.strip_suffix('\r').unwrap_or(text).trim();
    let (verb, rest) = split_word(text);
    let (id, rest) = split_word(rest);
    if id.is_empty() {
        return Err(if verb.is_empty() {
            "an empty line".into()
        } else {
            format!("{verb:?} without an entry id")
        });
    }
    let id: EntryId = id
        .parse()
        .map_err(|_| format!("{id:?} is not an entry id"))?;
    let outcome = match verb {
        "ack" if rest.is_empty() => Outcome::Ack,
        "ack" => return Err("`ack ID` takes nothing after the id".into()),
        "retry" => {
            let (first, after) = split_word(rest);
            match parse_duration(first) {
                Ok(delay) if !first.is_empty() => retry(Some(delay), after),
                _ => retry(None, rest),
            }
        }
        "dead" if !rest.is_empty() => Outcome::dead_letter(rest),
        "dead" => return Err("`dead ID REASON` needs a reason".into()),
        other => return Err(format!("unknown answer {other:?}")),
    };
    Ok(Answer { id, outcome })
}

fn retry(delay: Option<Duration>, reason: &str) -> Outcome {
    let reason = if reason.is_empty() {
        "the pipe command asked for a retry"
    } else {
        reason
    };
    match delay {
        Some(d) => Outcome::retry_after(d, reason),
        None => Outcome::retry(reason),
    }
}

/// The first word and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> EntryId {
        s.parse().unwrap()
    }

    #[test]
    fn the_three_answers() {
        assert_eq!(
            parse(b"ack 1-2").unwrap(),
            Answer {
                id: id("1-2"),
                outcome: Outcome::Ack
            }
        );
        assert_eq!(
            parse(b"retry 1-2").unwrap().outcome,
            Outcome::retry("the pipe command asked for a retry")
        );
        assert_eq!(
            parse(b"retry 1-2 500ms inventory down\r").unwrap().outcome,
            Outcome::retry_after(Duration::from_millis(500), "inventory down")
        );
        assert_eq!(
            parse(b"retry\t1-2  not a delay").unwrap().outcome,
            Outcome::retry("not a delay")
        );
        assert_eq!(
            parse(b"dead 1-2 missing field `severity`").unwrap().outcome,
            Outcome::dead_letter("missing field `severity`")
        );
    }

    #[test]
    fn anything_else_is_an_error() {
        for bad in [
            &b""[..],
            b"   ",
            b"ack",
            b"ack x-y",
            b"ack 1-2 extra",
            b"dead 1-2",
            b"nack 1-2",
            b"{\"ack\": \"1-2\"}",
            b"\xff\xfe",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
