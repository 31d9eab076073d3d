//! Metric names and recording, through the [`metrics`] facade.
//!
//! The library only records; an application installs an exporter
//! (`streambus serve` exposes them in Prometheus format at `/metrics`). Without an
//! exporter, recording costs next to nothing.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `streambus_published_total` | counter | stream | entries written by a producer |
//! | `streambus_delivered_total` | counter | stream, group | entries handed to a handler |
//! | `streambus_acked_total` | counter | stream, group | entries acknowledged |
//! | `streambus_retried_total` | counter | stream, group | handler results asking for a retry (incl. failures, panics) |
//! | `streambus_reclaimed_total` | counter | stream, group | idle pending entries claimed from another consumer or a failed attempt |
//! | `streambus_dead_lettered_total` | counter | stream, group | entries moved to the dead-letter stream |
//! | `streambus_handler_seconds` | histogram | stream, group | handler run time |
//! | `streambus_stream_length` | gauge | stream | entries in the stream (monitor) |
//! | `streambus_group_lag` | gauge | stream, group | entries not yet delivered to the group (monitor) |
//! | `streambus_group_pending` | gauge | stream, group | delivered, unacknowledged entries (monitor) |
//! | `streambus_group_oldest_pending_seconds` | gauge | stream, group | age of the oldest pending entry (monitor) |
//! | `streambus_group_consumers` | gauge | stream, group, status | consumers by status (monitor) |
//! | `streambus_group_target_consumers` | gauge | stream, group | the scaler's target (monitor) |
//! | `streambus_partitions_unowned` | gauge | stream, group | partitions of a leased group that no member holds (monitor) |
//! | `streambus_reconnects_total` | counter | | sockets to Redis replaced after one failed (timed out, reset, closed) |
//! | `streambus_publish_resends_total` | counter | | pipelines of XADDs sent again because Redis could not take them yet (refused connection, `LOADING`, `BUSY`, a failover): a producer waiting out an outage |

/// Counter: entries written by a producer.
pub const PUBLISHED: &str = "streambus_published_total";
/// Counter: entries handed to a handler.
pub const DELIVERED: &str = "streambus_delivered_total";
/// Counter: entries acknowledged.
pub const ACKED: &str = "streambus_acked_total";
/// Counter: handler results that asked for (or forced) a retry.
pub const RETRIED: &str = "streambus_retried_total";
/// Counter: idle pending entries claimed for another attempt.
pub const RECLAIMED: &str = "streambus_reclaimed_total";
/// Counter: entries moved to the dead-letter stream.
pub const DEAD_LETTERED: &str = "streambus_dead_lettered_total";
/// Histogram: handler run time in seconds.
pub const HANDLER_SECONDS: &str = "streambus_handler_seconds";
/// Gauge: stream length.
pub const STREAM_LENGTH: &str = "streambus_stream_length";
/// Gauge: group lag.
pub const GROUP_LAG: &str = "streambus_group_lag";
/// Gauge: group pending entries.
pub const GROUP_PENDING: &str = "streambus_group_pending";
/// Gauge: age of the oldest pending entry, seconds.
pub const GROUP_OLDEST_PENDING_SECONDS: &str = "streambus_group_oldest_pending_seconds";
/// Gauge: consumers of a group by status.
pub const GROUP_CONSUMERS: &str = "streambus_group_consumers";
/// Gauge: the scaler's target number of consumers.
pub const GROUP_TARGET_CONSUMERS: &str = "streambus_group_target_consumers";
/// Gauge: partitions of a leased group without an owner.
pub const PARTITIONS_UNOWNED: &str = "streambus_partitions_unowned";
/// Counter: sockets to Redis dialed again after one failed (timed out, reset, closed).
pub const RECONNECTS: &str = "streambus_reconnects_total";
/// Counter: pipelines of XADDs sent again because Redis could not take them
/// yet (nothing of them was written).
pub const PUBLISH_RESENDS: &str = "streambus_publish_resends_total";

/// Registers descriptions for every metric (call once after installing an exporter).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(PUBLISHED, "Entries written by a producer");
    describe_counter!(
        RECONNECTS,
        "Sockets to Redis replaced after one failed (timed out, reset, closed)"
    );
    describe_counter!(
        PUBLISH_RESENDS,
        "Pipelines of XADDs sent again because Redis could not take them yet"
    );
    describe_counter!(DELIVERED, "Entries handed to a handler");
    describe_counter!(ACKED, "Entries acknowledged");
    describe_counter!(RETRIED, "Handler results that asked for a retry");
    describe_counter!(
        RECLAIMED,
        "Idle pending entries claimed for another attempt"
    );
    describe_counter!(DEAD_LETTERED, "Entries moved to the dead-letter stream");
    describe_histogram!(HANDLER_SECONDS, Unit::Seconds, "Handler run time");
    describe_gauge!(STREAM_LENGTH, "Entries in the stream");
    describe_gauge!(GROUP_LAG, "Entries not yet delivered to the group");
    describe_gauge!(GROUP_PENDING, "Delivered, unacknowledged entries");
    describe_gauge!(
        PARTITIONS_UNOWNED,
        "Partitions of a leased group that no member holds"
    );
    describe_gauge!(
        GROUP_OLDEST_PENDING_SECONDS,
        Unit::Seconds,
        "Age of the oldest pending entry"
    );
    describe_gauge!(GROUP_CONSUMERS, "Consumers of the group by status");
    describe_gauge!(
        GROUP_TARGET_CONSUMERS,
        "The scaler's target number of consumers"
    );
}
