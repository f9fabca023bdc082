//! Per-connection command rate limiting (a token bucket) and the names of the limits the
//! core enforces, as reported to the observer (`rotor_limit_hits_total{limit}`).

use tokio::time::Instant;

/// The limits a client can run into, by the name metrics and logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `client.connection_limit` (3504).
    NodeConnections,
    /// `client.user_connection_limit` (3504).
    UserConnections,
    /// `client.channel_limit` (error 106, or 3505 for server-side channels).
    Channels,
    /// `client.command_rate_limit` (error 111, then 3013).
    CommandRate,
    /// `client.publication_max_size` (error 107).
    PublicationSize,
    /// `client.history_max_publication_limit` (the history reply is cut at the limit).
    HistoryLimit,
    /// A transport's message size limit (1009 on WebSocket, 413 on HTTP).
    MessageSize,
    /// `client.queue_max_size`: a client too slow to read its messages (3008).
    QueueSize,
    /// `client.stale_close_delay`: no connect in time (3502).
    Stale,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::NodeConnections => "connections_per_node",
            Limit::UserConnections => "connections_per_user",
            Limit::Channels => "channels_per_connection",
            Limit::CommandRate => "command_rate",
            Limit::PublicationSize => "publication_size",
            Limit::HistoryLimit => "history_limit",
            Limit::MessageSize => "message_size",
            Limit::QueueSize => "queue_size",
            Limit::Stale => "stale",
        }
    }

    /// Every limit, for metrics that export each label from the start.
    pub const ALL: [Limit; 9] = [
        Limit::NodeConnections,
        Limit::UserConnections,
        Limit::Channels,
        Limit::CommandRate,
        Limit::PublicationSize,
        Limit::HistoryLimit,
        Limit::MessageSize,
        Limit::QueueSize,
        Limit::Stale,
    ];
}

/// What the bucket says about one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over the rate: answer error 111.
    Refuse,
    /// Refused too many times in a row: close with 3013.
    Disconnect,
}

/// A token bucket of `burst` tokens refilled at `rate` per second. 16 bytes, so every
/// connection can carry one.
#[derive(Debug, Clone)]
pub struct CommandBucket {
    tokens: f32,
    refused: u32,
    last: Instant,
}

impl CommandBucket {
    pub fn new(burst: u32, now: Instant) -> CommandBucket {
        CommandBucket {
            tokens: burst as f32,
            refused: 0,
            last: now,
        }
    }

    /// Takes a token for one command at `now`.
    pub fn take(&mut self, rate: u32, burst: u32, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * rate as f32).min(burst as f32);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            return Verdict::Allow;
        }
        self.refused += 1;
        if self.refused > burst {
            Verdict::Disconnect
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_steady_rate_then_disconnect() {
        let t0 = Instant::now();
        let mut b = CommandBucket::new(5, t0);
        // The burst passes at once, the next command is refused.
        for _ in 0..5 {
            assert_eq!(b.take(10, 5, t0), Verdict::Allow);
        }
        assert_eq!(b.take(10, 5, t0), Verdict::Refuse);
        // 100 ms later one token has come back (10 per second).
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.take(10, 5, t1), Verdict::Allow);
        assert_eq!(b.take(10, 5, t1), Verdict::Refuse);
        // Going on while refused: after `burst` refusals in a row the connection is closed.
        let verdicts: Vec<_> = (0..5).map(|_| b.take(10, 5, t1)).collect();
        assert_eq!(verdicts[..4], [Verdict::Refuse; 4]);
        assert_eq!(verdicts[4], Verdict::Disconnect);
    }

    #[test]
    fn an_idle_client_gets_at_most_the_burst_back() {
        let t0 = Instant::now();
        let mut b = CommandBucket::new(3, t0);
        let later = t0 + Duration::from_secs(3600);
        let allowed = (0..10)
            .filter(|_| b.take(1, 3, later) == Verdict::Allow)
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn a_refusal_run_is_forgiven_once_a_command_passes() {
        let t0 = Instant::now();
        let mut b = CommandBucket::new(2, t0);
        b.take(1, 2, t0);
        b.take(1, 2, t0);
        assert_eq!(b.take(1, 2, t0), Verdict::Refuse);
        assert_eq!(b.take(1, 2, t0), Verdict::Refuse);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.take(1, 2, t1), Verdict::Allow);
        assert_eq!(b.take(1, 2, t1), Verdict::Refuse);
        assert_eq!(b.take(1, 2, t1), Verdict::Refuse);
    }
}
