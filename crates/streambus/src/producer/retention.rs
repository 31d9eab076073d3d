//! How much of a stream each XADD keeps.

use std::time::{Duration, SystemTime};

use crate::id::EntryId;

/// How much of a stream to keep. Trimming is part of each XADD, never a second
/// command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Retention {
    /// Never trim.
    #[default]
    Unbounded,
    /// Keep about `len` entries (`MAXLEN ~ len`; exact with `exact: true`, which
    /// costs more: Redis then trims entry by entry instead of whole nodes).
    MaxLen {
        /// Entries to keep.
        len: u64,
        /// Trim to exactly `len` instead of approximately.
        exact: bool,
    },
    /// Keep about this much time (`MINID ~ <now - age>`).
    MaxAge(Duration),
}

impl Retention {
    /// `MAXLEN ~ len`: approximate trimming to about `len` entries.
    pub fn max_len(len: u64) -> Self {
        Retention::MaxLen { len, exact: false }
    }

    pub(super) fn write_args(&self, cmd: &mut redis::Cmd, now: SystemTime) {
        match *self {
            Retention::Unbounded => {}
            Retention::MaxLen { len, exact } => {
                cmd.arg("MAXLEN")
                    .arg(if exact { "=" } else { "~" })
                    .arg(len);
            }
            Retention::MaxAge(age) => {
                let cutoff = now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
                cmd.arg("MINID").arg("~").arg(EntryId::at_time(cutoff));
            }
        }
    }
}
