//! Protocol identification and version negotiation.

/// First bytes of every [`crate::Hello`]: tells a builddird server from any
/// other service that happens to sit on the socket path.
pub const MAGIC: [u8; 8] = *b"BUILDDIR";

/// The newest protocol version this build speaks.
///
/// 2: [`crate::Released`] gained `limit_reached`; [`crate::LeaseState`]
/// gained `Detaching` (index 4); [`crate::StatusReport`] gained `detaching`.
///
/// 3: [`crate::Request`] gained `KeepFor` (index 8). Every version-2
/// message is encoded as before, so version 2 is still spoken; a client
/// must not send `KeepFor` on a connection that agreed on version 2.
///
/// Bump it whenever a message's encoding changes (bincode has no field tags:
/// adding a field or an enum variant changes the encoding).
pub const PROTOCOL_VERSION: u32 = 3;

/// The oldest protocol version this build still speaks. Raise it only when
/// support for an old encoding is removed (version 1's `Released` without
/// `limit_reached` was).
pub const PROTOCOL_VERSION_MIN: u32 = 2;

/// Returns the highest version in both `[client_min, client_max]` and
/// `[PROTOCOL_VERSION_MIN, PROTOCOL_VERSION]`, or `None` if and only if the
/// ranges do not overlap.
pub fn negotiate(client_min: u32, client_max: u32) -> Option<u32> {
    let hi = client_max.min(PROTOCOL_VERSION);
    let lo = client_min.max(PROTOCOL_VERSION_MIN);
    (lo <= hi).then_some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_highest_common_version() {
        assert_eq!(negotiate(2, 2), Some(2));
        assert_eq!(negotiate(2, 3), Some(3));
        assert_eq!(negotiate(1, 1), None);
        assert_eq!(negotiate(0, 99), Some(PROTOCOL_VERSION));
    }

    #[test]
    fn disjoint_ranges_do_not_negotiate() {
        assert_eq!(negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 5), None);
        assert_eq!(negotiate(0, PROTOCOL_VERSION_MIN - 1), None);
        assert_eq!(negotiate(3, 2), None);
    }
}
