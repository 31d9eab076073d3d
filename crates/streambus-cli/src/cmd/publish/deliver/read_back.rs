//! After a send that got no reply: the stream read back from the last id
//! confirmed before it, to find which of the chunk's lines were written.

use std::collections::HashMap;

use streambus::{read, Connection, EntryId, Error, ErrorKind};

use super::{Anchor, Slot};

/// Entries per `XRANGE` of the read-back. A chunk has at most 1,000 lines,
/// so one page usually holds all of them; other producers' entries may need
/// more pages.
const READ_BACK_PAGE: usize = 1000;

/// What to give a producer's ACL user so that lines sent without a reply can
/// be looked for in the stream.
pub(super) const READ_BACK_RULES: &str = "+xrevrange +xrange";

/// Reads each stream back from its anchor and settles every unconfirmed line:
/// found (by envelope id) means written, with that entry id; not found means
/// not written, to be sent again. On an error nothing is settled; when the
/// user may not read the stream, the error says which rules it lacks.
pub(super) async fn read_back(
    conn: &mut Connection,
    keys: &[String],
    slots: &mut [Slot],
    anchors: &[Anchor],
) -> std::result::Result<(), Error> {
    let mut found: Vec<(usize, EntryId)> = Vec::new();
    for (stream, key) in keys.iter().enumerate() {
        let mut wanted: HashMap<&str, usize> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.unconfirmed && s.stream == stream)
            .filter_map(|(i, s)| Some((s.line.message.as_ref()?.envelope_id()?, i)))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let mut after = match anchors[stream] {
            Anchor::After(id) => id,
            Anchor::Unknown => {
                return Err(Error::new(
                    ErrorKind::Permission,
                    format!("lines sent without a reply cannot be looked for in {key:?}: the Redis user may not read it (XREVRANGE was refused at start; give it {READ_BACK_RULES} to have them checked after a fault)"),
                ))
            }
        };
        while !wanted.is_empty() {
            let page = match read::range_after(conn, key, after, READ_BACK_PAGE).await {
                Ok(page) => page,
                Err(e) if e.kind() == ErrorKind::Permission => {
                    return Err(Error::new(
                        ErrorKind::Permission,
                        format!("lines sent without a reply cannot be looked for in {key:?} (give the Redis user {READ_BACK_RULES} to have them checked after a fault): {e}"),
                    ))
                }
                Err(e) => return Err(e),
            };
            for entry in &page {
                let id = entry.fields.get_str(streambus::envelope::field::ID);
                if let Some(i) = id.and_then(|id| wanted.remove(id)) {
                    found.push((i, entry.id));
                }
            }
            if page.len() < READ_BACK_PAGE {
                break;
            }
            after = page.last().map(|e| e.id);
        }
    }
    for (i, id) in found {
        slots[i].id = Some(id);
    }
    for s in slots.iter_mut() {
        s.unconfirmed = false;
    }
    Ok(())
}
