//! Channel names, namespaces and permissions.
//!
//! `chat:room` is channel `room` of namespace `chat`; a leading `$` marks a private channel
//! (a subscription token is required); `dialog#42,43` is limited to users 42 and 43 when the
//! namespace has `allow_user_limited_channels`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ChannelConfig, ChannelOptions};
use crate::CoreError;

pub const NAMESPACE_BOUNDARY: char = ':';
pub const USER_BOUNDARY: char = '#';
pub const USER_SEPARATOR: char = ',';
pub const PRIVATE_PREFIX: char = '$';

/// The namespace part of a channel name ("" when it has none).
pub fn namespace_of(channel: &str) -> &str {
    let name = channel.strip_prefix(PRIVATE_PREFIX).unwrap_or(channel);
    match name.split_once(NAMESPACE_BOUNDARY) {
        Some((ns, _)) => ns,
        None => "",
    }
}

/// A `$` channel needs a subscription token.
pub fn is_private(channel: &str) -> bool {
    channel.starts_with(PRIVATE_PREFIX)
}

/// For a user-limited channel (`name#u1,u2`), whether `user` is one of the listed users.
/// `None` when the channel is not user-limited.
pub fn user_limited_allows(channel: &str, user: &str) -> Option<bool> {
    let (_, users) = channel.rsplit_once(USER_BOUNDARY)?;
    Some(!user.is_empty() && users.split(USER_SEPARATOR).any(|u| u == user))
}

fn valid_namespace_name(name: &str) -> bool {
    name.len() >= 2
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Glob matching with `*` (any run) and `?` (one character), as the `channels` pattern.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Resolved channel options per namespace.
#[derive(Debug, Clone)]
pub struct ChannelRules {
    default: Arc<ChannelOptions>,
    namespaces: HashMap<String, Arc<ChannelOptions>>,
    max_length: usize,
}

impl ChannelRules {
    /// Checks namespace names and builds the lookup table.
    pub fn new(config: &ChannelConfig) -> Result<ChannelRules, String> {
        let mut namespaces = HashMap::new();
        for ns in &config.namespaces {
            if !valid_namespace_name(&ns.name) {
                return Err(format!(
                    "channel.namespaces: invalid name {:?} (use at least 2 of a-z, A-Z, 0-9, - and _)",
                    ns.name
                ));
            }
            let options = ns.options();
            options.check(&format!("channel.namespaces[{:?}]", ns.name))?;
            if namespaces
                .insert(ns.name.clone(), Arc::new(options))
                .is_some()
            {
                return Err(format!(
                    "channel.namespaces: duplicate namespace {:?}",
                    ns.name
                ));
            }
        }
        config
            .without_namespace
            .check("channel.without_namespace")?;
        Ok(ChannelRules {
            default: Arc::new(config.without_namespace.clone()),
            namespaces,
            max_length: config.max_length,
        })
    }

    /// Options of the channel's namespace; an unknown namespace is error 102.
    pub fn options(&self, channel: &str) -> Result<&Arc<ChannelOptions>, CoreError> {
        let ns = namespace_of(channel);
        if ns.is_empty() {
            return Ok(&self.default);
        }
        self.namespaces.get(ns).ok_or(CoreError::UnknownChannel)
    }

    /// An empty, overlong or non-ASCII channel name is a bad request.
    pub fn check_name(&self, channel: &str) -> Result<(), CoreError> {
        if channel.is_empty() {
            return Err(CoreError::BadRequest("channel required".into()));
        }
        if channel.len() > self.max_length {
            return Err(CoreError::BadRequest(format!(
                "channel name longer than {}",
                self.max_length
            )));
        }
        if !channel.chars().all(|c| c.is_ascii_graphic()) {
            return Err(CoreError::BadRequest(
                "channel name must be printable ASCII".into(),
            ));
        }
        Ok(())
    }
}

/// Channel options with a token's `override` claim applied.
pub fn with_override(opts: &ChannelOptions, o: &rotor_auth::ChannelOverride) -> ChannelOptions {
    let mut out = opts.clone();
    if let Some(v) = o.presence {
        out.presence = v.value;
    }
    if let Some(v) = o.join_leave {
        out.join_leave = v.value;
    }
    if let Some(v) = o.force_push_join_leave {
        out.force_push_join_leave = v.value;
    }
    if let Some(v) = o.force_recovery {
        out.force_recovery = v.value;
    }
    if let Some(v) = o.force_positioning {
        out.force_positioning = v.value;
    }
    out
}

/// The connection asking, as permissions see it.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub user: &'a str,
    /// Whether the connection is subscribed to the channel.
    pub subscribed: bool,
}

impl Asker<'_> {
    fn anonymous(&self) -> bool {
        self.user.is_empty()
    }

    fn allowed(&self, for_subscriber: bool, for_client: bool, for_anonymous: bool) -> bool {
        let granted = for_client || (for_subscriber && self.subscribed);
        granted && (!self.anonymous() || for_anonymous)
    }
}

/// Subscribe without a subscription token.
pub fn check_subscribe(
    opts: &ChannelOptions,
    channel: &str,
    asker: Asker<'_>,
) -> Result<(), CoreError> {
    if is_private(channel) {
        return Err(CoreError::PermissionDenied);
    }
    if opts.allow_user_limited_channels {
        if let Some(allowed) = user_limited_allows(channel, asker.user) {
            return if allowed {
                Ok(())
            } else {
                Err(CoreError::PermissionDenied)
            };
        }
    }
    if opts.allow_subscribe_for_client && (!asker.anonymous() || opts.allow_subscribe_for_anonymous)
    {
        return Ok(());
    }
    Err(CoreError::PermissionDenied)
}

/// Whether the subscribe proxy (when the namespace enables one) decides a subscription
/// without a token: not for private (`$`) channels, which always need a token, nor for
/// user-limited channels, which their names decide.
pub fn proxy_decides(opts: &ChannelOptions, channel: &str, user: &str) -> bool {
    let user_limited =
        opts.allow_user_limited_channels && user_limited_allows(channel, user).is_some();
    !is_private(channel) && !user_limited
}

/// Publish from the client side.
pub fn check_publish(opts: &ChannelOptions, asker: Asker<'_>) -> Result<(), CoreError> {
    if asker.allowed(
        opts.allow_publish_for_subscriber,
        opts.allow_publish_for_client,
        opts.allow_publish_for_anonymous,
    ) {
        Ok(())
    } else {
        Err(CoreError::PermissionDenied)
    }
}

/// Presence and presence stats from the client side.
pub fn check_presence(opts: &ChannelOptions, asker: Asker<'_>) -> Result<(), CoreError> {
    if !opts.presence {
        return Err(CoreError::NotAvailable);
    }
    if asker.allowed(
        opts.allow_presence_for_subscriber,
        opts.allow_presence_for_client,
        opts.allow_presence_for_anonymous,
    ) {
        Ok(())
    } else {
        Err(CoreError::PermissionDenied)
    }
}

/// History from the client side.
pub fn check_history(opts: &ChannelOptions, asker: Asker<'_>) -> Result<(), CoreError> {
    if !opts.history_enabled() {
        return Err(CoreError::NotAvailable);
    }
    if asker.allowed(
        opts.allow_history_for_subscriber,
        opts.allow_history_for_client,
        opts.allow_history_for_anonymous,
    ) {
        Ok(())
    } else {
        Err(CoreError::PermissionDenied)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{NamespaceConfig, RecoveryMode};

    fn user(u: &str, subscribed: bool) -> Asker<'_> {
        Asker {
            user: u,
            subscribed,
        }
    }

    #[test]
    fn namespaces_are_found_after_the_private_prefix() {
        assert_eq!(namespace_of("chat:room"), "chat");
        assert_eq!(namespace_of("$chat:room"), "chat");
        assert_eq!(namespace_of("room"), "");
        assert_eq!(namespace_of("a:b:c"), "a");
    }

    #[test]
    fn unknown_namespace_is_102_and_bad_names_are_rejected() {
        let cfg = ChannelConfig {
            namespaces: vec![NamespaceConfig {
                name: "chat".into(),
                presence: true,
                ..NamespaceConfig::default()
            }],
            ..ChannelConfig::default()
        };
        let rules = ChannelRules::new(&cfg).unwrap();
        assert!(rules.options("chat:1").unwrap().presence);
        assert!(!rules.options("plain").unwrap().presence);
        assert_eq!(
            rules.options("nope:1").unwrap_err(),
            CoreError::UnknownChannel
        );
        assert!(rules.check_name("").is_err());
        assert!(rules.check_name(&"x".repeat(256)).is_err());
        assert!(rules.check_name("chat:ok-1").is_ok());
        let bad = ChannelConfig {
            namespaces: vec![NamespaceConfig {
                name: "x".into(),
                ..NamespaceConfig::default()
            }],
            ..ChannelConfig::default()
        };
        assert!(ChannelRules::new(&bad)
            .unwrap_err()
            .contains("invalid name"));
        let dup = ChannelConfig {
            namespaces: vec![
                NamespaceConfig {
                    name: "ab".into(),
                    ..NamespaceConfig::default()
                },
                NamespaceConfig {
                    name: "ab".into(),
                    ..NamespaceConfig::default()
                },
            ],
            ..ChannelConfig::default()
        };
        assert!(ChannelRules::new(&dup).unwrap_err().contains("duplicate"));
    }

    #[test]
    fn glob_patterns() {
        assert!(glob_match("chat:*", "chat:room"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("c?at", "chat"));
        assert!(!glob_match("chat:*", "news:1"));
        assert!(glob_match("*:room", "chat:room"));
        assert!(!glob_match("a*b", "acbd"));
    }

    #[test]
    fn auto_cache_recover_needs_forced_recovery_in_cache_mode() {
        let ns = |force_recovery, mode| ChannelConfig {
            namespaces: vec![NamespaceConfig {
                name: "state".into(),
                auto_cache_recover: true,
                force_recovery,
                force_recovery_mode: mode,
                ..NamespaceConfig::default()
            }],
            ..ChannelConfig::default()
        };
        assert!(ChannelRules::new(&ns(true, RecoveryMode::Cache)).is_ok());
        for bad in [
            ns(false, RecoveryMode::Cache),
            ns(true, RecoveryMode::Stream),
        ] {
            let err = ChannelRules::new(&bad).unwrap_err();
            assert!(
                err.contains("channel.namespaces[\"state\"]: auto_cache_recover requires"),
                "{err}"
            );
        }
        // The mode's names, "" being the default.
        for (text, mode) in [
            ("\"\"", RecoveryMode::Stream),
            ("\"cache\"", RecoveryMode::Cache),
        ] {
            let parsed: RecoveryMode = serde_json::from_str(text).unwrap();
            assert_eq!(parsed, mode);
        }
        assert!(serde_json::from_str::<RecoveryMode>("\"log\"").is_err());
    }

    #[test]
    fn subscribe_is_denied_by_default_and_granted_by_options() {
        let none = ChannelOptions::default();
        assert_eq!(
            check_subscribe(&none, "news", user("1", false)),
            Err(CoreError::PermissionDenied)
        );
        let open = ChannelOptions {
            allow_subscribe_for_client: true,
            ..ChannelOptions::default()
        };
        assert!(check_subscribe(&open, "news", user("1", false)).is_ok());
        assert_eq!(
            check_subscribe(&open, "news", user("", false)),
            Err(CoreError::PermissionDenied)
        );
        let anon = ChannelOptions {
            allow_subscribe_for_anonymous: true,
            ..open.clone()
        };
        assert!(check_subscribe(&anon, "news", user("", false)).is_ok());
        // Private channels always need a token.
        assert_eq!(
            check_subscribe(&anon, "$news", user("1", false)),
            Err(CoreError::PermissionDenied)
        );
    }

    #[test]
    fn user_limited_channels_admit_only_listed_users() {
        let opts = ChannelOptions {
            allow_user_limited_channels: true,
            ..ChannelOptions::default()
        };
        assert!(check_subscribe(&opts, "dialog#42,43", user("43", false)).is_ok());
        assert_eq!(
            check_subscribe(&opts, "dialog#42,43", user("44", false)),
            Err(CoreError::PermissionDenied)
        );
        assert_eq!(
            check_subscribe(&opts, "dialog#42", user("", false)),
            Err(CoreError::PermissionDenied)
        );
        // Without the option, '#' has no meaning and the default deny applies.
        assert!(
            check_subscribe(&ChannelOptions::default(), "dialog#42", user("42", false)).is_err()
        );
    }

    #[test]
    fn publish_presence_history_permissions() {
        let subscriber_only = ChannelOptions {
            presence: true,
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            allow_publish_for_subscriber: true,
            allow_presence_for_subscriber: true,
            allow_history_for_subscriber: true,
            ..ChannelOptions::default()
        };
        assert!(check_publish(&subscriber_only, user("1", true)).is_ok());
        assert_eq!(
            check_publish(&subscriber_only, user("1", false)),
            Err(CoreError::PermissionDenied)
        );
        assert_eq!(
            check_publish(&subscriber_only, user("", true)),
            Err(CoreError::PermissionDenied)
        );
        assert!(check_presence(&subscriber_only, user("1", true)).is_ok());
        assert_eq!(
            check_presence(&subscriber_only, user("1", false)),
            Err(CoreError::PermissionDenied)
        );
        assert!(check_history(&subscriber_only, user("1", true)).is_ok());
        let off = ChannelOptions {
            allow_presence_for_client: true,
            allow_history_for_client: true,
            ..ChannelOptions::default()
        };
        assert_eq!(
            check_presence(&off, user("1", true)),
            Err(CoreError::NotAvailable)
        );
        assert_eq!(
            check_history(&off, user("1", true)),
            Err(CoreError::NotAvailable)
        );
        let client = ChannelOptions {
            allow_publish_for_client: true,
            allow_publish_for_anonymous: true,
            ..ChannelOptions::default()
        };
        assert!(check_publish(&client, user("", false)).is_ok());
    }
}
