//! The in-memory revocation check: revoked `jti`s and user invalidations, consulted on every
//! connect, refresh, subscribe and sub_refresh without touching storage. It is filled from
//! storage at startup and every `sync_interval`, and updated at once by revocations made on
//! this node or received through the broker.

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::storage::{RevokedToken, UserInvalidation};

#[derive(Default)]
struct Inner {
    /// jti -> when the entry may be dropped (0 = never).
    jtis: HashMap<String, u64>,
    /// user -> (channel, issued_before, expire_at); channel "" = every token.
    users: HashMap<String, Vec<(String, u64, u64)>>,
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its jti was revoked.
    Revoked,
    /// Its user's tokens issued before some time were invalidated.
    Invalidated,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Revoked => "revoked",
            Refusal::Invalidated => "invalidated",
        }
    }
}

#[derive(Default)]
pub(crate) struct RevocationSet {
    inner: RwLock<Inner>,
}

impl RevocationSet {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a token is refused. `channel` is `None` for connection tokens. A token without
    /// `iat` cannot prove it was issued after an invalidation, so it is refused by one.
    pub fn check(
        &self,
        jti: Option<&str>,
        user: &str,
        iat: Option<u64>,
        channel: Option<&str>,
    ) -> Option<Refusal> {
        let inner = self.read();
        if jti.is_some_and(|j| inner.jtis.contains_key(j)) {
            return Some(Refusal::Revoked);
        }
        let entries = inner.users.get(user)?;
        let applies = |c: &str| c.is_empty() || Some(c) == channel;
        entries
            .iter()
            .any(|(c, before, _)| applies(c) && iat.is_none_or(|iat| iat < *before))
            .then_some(Refusal::Invalidated)
    }

    pub fn add_jti(&self, jti: &str, expire_at: u64) {
        self.write().jtis.insert(jti.to_string(), expire_at);
    }

    pub fn add_user(&self, user: &str, channel: &str, issued_before: u64, expire_at: u64) {
        let mut inner = self.write();
        let entries = inner.users.entry(user.to_string()).or_default();
        entries.retain(|(c, _, _)| c != channel);
        entries.push((channel.to_string(), issued_before, expire_at));
    }

    /// Replaces everything with what storage holds.
    pub fn replace(&self, tokens: &[RevokedToken], users: &[UserInvalidation]) {
        let mut fresh = Inner::default();
        for t in tokens {
            fresh.jtis.insert(t.jti.clone(), t.expire_at);
        }
        for u in users {
            fresh.users.entry(u.user.clone()).or_default().push((
                u.channel.clone(),
                u.issued_before,
                u.expire_at,
            ));
        }
        *self.write() = fresh;
    }

    /// Drops entries whose tokens have expired by `now`.
    pub fn purge(&self, now: u64) {
        let mut inner = self.write();
        inner.jtis.retain(|_, at| *at == 0 || *at > now);
        inner.users.retain(|_, v| {
            v.retain(|(_, _, at)| *at == 0 || *at > now);
            !v.is_empty()
        });
    }

    pub fn len(&self) -> usize {
        let inner = self.read();
        inner.jtis.len() + inner.users.values().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jtis_users_channels_and_expiry() {
        let set = RevocationSet::default();
        set.add_jti("leaked", 100);
        assert_eq!(
            set.check(Some("leaked"), "u", Some(1), None),
            Some(Refusal::Revoked)
        );
        assert_eq!(set.check(Some("other"), "u", Some(1), None), None);
        set.add_user("bob", "", 50, 0);
        assert_eq!(
            set.check(None, "bob", Some(49), None),
            Some(Refusal::Invalidated)
        );
        assert_eq!(
            set.check(None, "bob", Some(50), None),
            None,
            "issued at the cut-off is fine"
        );
        assert_eq!(
            set.check(None, "bob", None, None),
            Some(Refusal::Invalidated),
            "no iat, no proof"
        );
        set.add_user("amy", "chat:x", 50, 0);
        assert_eq!(
            set.check(None, "amy", Some(10), None),
            None,
            "a channel invalidation spares connection tokens"
        );
        assert_eq!(
            set.check(None, "amy", Some(10), Some("chat:x")),
            Some(Refusal::Invalidated)
        );
        assert_eq!(set.check(None, "amy", Some(10), Some("chat:y")), None);
        set.purge(100);
        assert_eq!(
            set.check(Some("leaked"), "u", Some(1), None),
            None,
            "gone after the token's own expiry"
        );
        assert_eq!(set.len(), 2);
    }
}
