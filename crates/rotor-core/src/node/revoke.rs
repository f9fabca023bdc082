//! Revoking tokens: by `jti`, or every token of a user issued before a time. The in-memory
//! set answers at once on this node, the broker tells the others, storage keeps the audit
//! entry and brings the set back after a restart; connections whose token is refused now
//! are closed.

use std::sync::Arc;

use rotor_protocol::Disconnect;

use super::{Node, NodeInner};
use crate::broker::Control;
use crate::hub::ClientHandle;
use crate::revocation::Refusal;
use crate::storage::{RevokedToken, UserInvalidation};
use crate::CoreError;

impl Node {
    /// Revokes a token by its `jti`: refused from now on by this node (at once) and every
    /// other (through the broker, and through storage within their sync interval); live
    /// connections that use it are closed with 3500 "token revoked". The audit entry is
    /// stored; if storage fails the revocation still holds on this node and the error says so.
    pub async fn revoke_token(
        &self,
        jti: &str,
        expire_at: u64,
        user: &str,
        reason: &str,
        actor: &str,
    ) -> Result<RevokedToken, CoreError> {
        if jti.is_empty() {
            return Err(CoreError::BadRequest(
                "uid (the token's jti) required".into(),
            ));
        }
        let inner = &self.inner;
        inner.revocations.add_jti(jti, expire_at);
        inner.observer.revoked("token");
        let kicked = kick(inner, |c| c.creds().0.as_deref() == Some(jti));
        let user = if user.is_empty() {
            kicked
                .first()
                .map(|c| c.user().to_string())
                .unwrap_or_default()
        } else {
            user.to_string()
        };
        let entry = RevokedToken {
            jti: jti.to_string(),
            user,
            expire_at,
            revoked_at: inner.clock.unix(),
            reason: reason.to_string(),
            actor: actor.to_string(),
            kicked: kicked.len() as u32,
        };
        inner.storage.revocations.revoke(entry.clone()).await?;
        inner
            .broker
            .publish_control(&Control::Revoke {
                jti: jti.to_string(),
                expire_at,
            })
            .await?;
        Ok(entry)
    }

    /// Invalidates every token of `user` issued before `issued_before` (all tokens, or the
    /// subscription tokens of `channel`), closing matching live connections.
    pub async fn invalidate_user_tokens(
        &self,
        user: &str,
        issued_before: u64,
        channel: &str,
        expire_at: u64,
        reason: &str,
        actor: &str,
    ) -> Result<UserInvalidation, CoreError> {
        if user.is_empty() {
            return Err(CoreError::BadRequest("user required".into()));
        }
        let inner = &self.inner;
        inner
            .revocations
            .add_user(user, channel, issued_before, expire_at);
        inner.observer.revoked("user");
        let kicked = if channel.is_empty() {
            kick(inner, |c| c.user() == user).len()
        } else {
            0
        };
        let entry = UserInvalidation {
            user: user.to_string(),
            issued_before,
            channel: channel.to_string(),
            expire_at,
            invalidated_at: inner.clock.unix(),
            reason: reason.to_string(),
            actor: actor.to_string(),
            kicked: kicked as u32,
        };
        inner
            .storage
            .revocations
            .invalidate_user(entry.clone())
            .await?;
        let control = Control::InvalidateUser {
            user: user.to_string(),
            channel: channel.to_string(),
            issued_before,
            expire_at,
        };
        inner.broker.publish_control(&control).await?;
        Ok(entry)
    }

    /// Reloads the revocation set from storage (done at startup and every sync interval, so
    /// revocations made on other nodes sharing the storage apply here too) and closes local
    /// connections it now refuses. Returns the number of entries in force.
    pub async fn sync_revocations(&self) -> Result<usize, CoreError> {
        let inner = &self.inner;
        let now = inner.clock.unix();
        // Entries for tokens that expired go even when storage cannot be read.
        inner.revocations.purge(now);
        let tokens = inner.storage.revocations.active(now).await?;
        let users = inner.storage.revocations.active_invalidations(now).await?;
        inner.revocations.replace(&tokens, &users);
        kick(inner, |_| true);
        Ok(inner.revocations.len())
    }

    /// The revocation check the hot path uses (in memory).
    pub fn token_refusal(
        &self,
        jti: Option<&str>,
        user: &str,
        iat: Option<u64>,
        channel: Option<&str>,
    ) -> Option<Refusal> {
        self.inner.revocations.check(jti, user, iat, channel)
    }
}

/// The disconnect for a connection whose token was revoked: terminal, so SDKs do not
/// reconnect with the same token.
pub(crate) fn revoked_disconnect() -> Disconnect {
    Disconnect::INVALID_TOKEN.with_reason("token revoked")
}

/// Closes local connections (among those `candidate` selects) whose connection token the
/// revocation set now refuses; returns them.
pub(super) fn kick(
    node: &NodeInner,
    candidate: impl Fn(&ClientHandle) -> bool,
) -> Vec<Arc<ClientHandle>> {
    let mut kicked = Vec::new();
    for c in node.hub.all_connections() {
        if c.closing() || !candidate(&c) {
            continue;
        }
        let (jti, iat) = c.creds();
        if node
            .revocations
            .check(jti.as_deref(), c.user(), iat, None)
            .is_some()
        {
            tracing::info!(client = %c.id(), user = %c.user(), "closing a connection whose token was revoked");
            c.close(revoked_disconnect());
            kicked.push(c);
        }
    }
    if !kicked.is_empty() {
        node.observer.kicked(kicked.len());
    }
    kicked
}
