//! The last line on stderr when a chunk is given up: which line to resume
//! from, which later lines were written all the same, and which may be.

use super::Slot;

/// Where a chunk stands when giving up, by line number.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Summary {
    /// The first line not known to be written.
    first_unpublished: u64,
    /// Lines after it that were written all the same.
    written_after: Vec<u64>,
    /// Lines sent without a reply that could not be looked up.
    unconfirmed: Vec<u64>,
}

pub(super) fn slots_summary(slots: &[Slot]) -> Summary {
    let mut s = Summary::default();
    for slot in slots {
        match slot.id {
            None if s.first_unpublished == 0 => s.first_unpublished = slot.line.no,
            Some(_) if s.first_unpublished != 0 => s.written_after.push(slot.line.no),
            _ => {}
        }
        if slot.unconfirmed {
            s.unconfirmed.push(slot.line.no);
        }
    }
    s
}

/// The last line on stderr when giving up: which line to resume from, and how.
pub(super) fn give_up_message(s: &Summary, why: &str, stream: &str) -> String {
    let n = s.first_unpublished;
    let before = match n {
        0 | 1 => "no line before it was".to_owned(),
        2 => "line 1 was (its id is on stdout)".to_owned(),
        n => format!("lines 1-{} were (their ids are on stdout)", n - 1),
    };
    let mut msg = format!("line {n} not published: {why}; {before}");
    if !s.written_after.is_empty() {
        msg.push_str(&format!(
            "; lines {} after it were written too (their ids are the last {} on stdout)",
            list(&s.written_after),
            s.written_after.len()
        ));
    }
    if !s.unconfirmed.is_empty() {
        msg.push_str(&format!(
            "; lines {} were sent but not confirmed: they may be in the stream (same envelope ids)",
            list(&s.unconfirmed)
        ));
    }
    msg.push_str(&format!(
        "; resume with: tail -n +{n} FILE | streambus publish {stream}"
    ));
    msg
}

/// `3, 4, 9` or, for many, `3-41 (17 lines)`.
fn list(lines: &[u64]) -> String {
    match lines {
        [] => String::new(),
        [a] => a.to_string(),
        _ if lines.len() <= 5 => lines
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        [a, .., b] => format!("{a}-{b} ({} lines)", lines.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn give_up_names_the_first_unpublished_line() {
        let s = Summary {
            first_unpublished: 9535,
            ..Default::default()
        };
        assert_eq!(
            give_up_message(&s, "OOM", "logs"),
            "line 9535 not published: OOM; lines 1-9534 were (their ids are on stdout); resume with: tail -n +9535 FILE | streambus publish logs"
        );
        let s = Summary {
            first_unpublished: 1,
            written_after: vec![3],
            unconfirmed: (4..=20).collect(),
        };
        let m = give_up_message(&s, "x", "s");
        assert!(m.starts_with("line 1 not published: x; no line before it was; lines 3 after it were written too (their ids are the last 1 on stdout); lines 4-20 (17 lines) were sent"), "{m}");
        assert!(m.ends_with("tail -n +1 FILE | streambus publish s"), "{m}");
    }
}
