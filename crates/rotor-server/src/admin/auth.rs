//! Who is an admin: the sign-in (the password, rate limited per address), the session it
//! starts (a JWT signed with `admin.secret` in an HttpOnly, SameSite=Strict cookie, expiring
//! after `admin.session_ttl`) and the CSRF token every admin request repeats in a header.
//! No IO; nothing here ever sees or hands out the server API key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AdminConfig;

/// The session cookie's name.
pub const COOKIE: &str = "rotor_admin";

/// The header every admin request but the sign-in repeats the CSRF token in.
pub const CSRF_HEADER: &str = "x-rotor-csrf";

/// Failed sign-ins an address (an IPv6 /64) may make within [`WINDOW`] before it is refused
/// for the rest of it. There is no limit over all addresses together: it would let anyone
/// lock the operators out.
const FAILURES_PER_ADDRESS: u32 = 5;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; the oldest windows are forgotten first.
const ADDRESSES: usize = 10_000;
/// Signed-out sessions remembered at most (until they would have expired).
const SIGNED_OUT: usize = 10_000;

/// What a session token says.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    /// The session's id (it names the session in the audit trail).
    sid: String,
    /// What the browser must repeat in [`CSRF_HEADER`].
    csrf: String,
    iat: u64,
    exp: u64,
}

/// A signed-in admin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Short id of the sign-in, for the audit trail and log lines.
    pub sid: String,
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Why a sign-in was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    WrongPassword,
    /// Too many failures: try again after this long.
    TooMany(Duration),
}

/// Signs admins in and checks their sessions.
pub struct Auth {
    password: String,
    insecure: bool,
    ttl: Duration,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// With `admin.insecure`: the CSRF token of every browser (there is no session).
    insecure_csrf: String,
    failures: Mutex<Failures>,
    /// Sessions signed out before they expired (id -> expiry): refused from then on.
    signed_out: Mutex<HashMap<String, u64>>,
}

#[derive(Default)]
struct Failures {
    by_addr: HashMap<Option<IpAddr>, (Instant, u32)>,
}

/// Where failures are counted: the address, or its /64 for IPv6 (one host has them all).
fn bucket(addr: Option<IpAddr>) -> Option<IpAddr> {
    match addr? {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            Some(IpAddr::V6(seg.into()))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
        v4 => Some(v4),
    }
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Auth {
    pub fn new(cfg: &AdminConfig) -> Auth {
        Auth {
            password: cfg.password.clone(),
            insecure: cfg.insecure,
            ttl: cfg.session_ttl,
            encoding: EncodingKey::from_secret(cfg.secret.as_bytes()),
            decoding: DecodingKey::from_secret(cfg.secret.as_bytes()),
            insecure_csrf: random_hex(16),
            failures: Mutex::new(Failures::default()),
            signed_out: Mutex::new(HashMap::new()),
        }
    }

    pub fn insecure(&self) -> bool {
        self.insecure
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Checks a password from `addr`; on success, the session and its token (the cookie's
    /// value). Refused at once, without comparing, while `addr` (or everyone) has failed too
    /// often lately.
    pub fn sign_in(
        &self,
        password: &str,
        addr: Option<IpAddr>,
        now_unix: u64,
    ) -> Result<(Session, String), Refused> {
        self.sign_in_at(password, addr, now_unix, Instant::now())
    }

    fn sign_in_at(
        &self,
        password: &str,
        addr: Option<IpAddr>,
        now_unix: u64,
        now: Instant,
    ) -> Result<(Session, String), Refused> {
        let addr = bucket(addr);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wait) = failures.blocked(addr, now) {
            return Err(Refused::TooMany(wait));
        }
        let right = !self.password.is_empty()
            && crate::api::constant_time_eq(password.as_bytes(), self.password.as_bytes());
        if !right {
            failures.add(addr, now);
            return Err(Refused::WrongPassword);
        }
        failures.by_addr.remove(&addr);
        drop(failures);
        let claims = Claims {
            sub: "admin".into(),
            sid: random_hex(4),
            csrf: random_hex(16),
            iat: now_unix,
            exp: now_unix + self.ttl.as_secs().max(1),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail");
        Ok((
            Session {
                sid: claims.sid,
                csrf: claims.csrf,
                expires_at: claims.exp,
            },
            token,
        ))
    }

    /// The session a cookie value holds, if it is ours and has not expired. With
    /// `admin.insecure` every request has one.
    pub fn session(&self, token: Option<&str>, now_unix: u64) -> Option<Session> {
        if self.insecure {
            return Some(Session {
                sid: "insecure".into(),
                csrf: self.insecure_csrf.clone(),
                expires_at: 0,
            });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token?, &self.decoding, &validation)
            .ok()?
            .claims;
        let signed_out = self
            .signed_out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&claims.sid);
        (claims.sub == "admin" && claims.exp > now_unix && !signed_out).then_some(Session {
            sid: claims.sid,
            csrf: claims.csrf,
            expires_at: claims.exp,
        })
    }

    /// Ends a session before it expires (on this node: other nodes accept it until then).
    pub fn sign_out(&self, session: &Session) {
        if self.insecure {
            return;
        }
        let mut out = self.signed_out.lock().unwrap_or_else(|e| e.into_inner());
        if out.len() >= SIGNED_OUT {
            let now = session.expires_at.saturating_sub(self.ttl.as_secs());
            out.retain(|_, exp| *exp > now);
            if out.len() >= SIGNED_OUT {
                if let Some(oldest) = out.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) {
                    out.remove(&oldest);
                }
            }
        }
        out.insert(session.sid.clone(), session.expires_at);
    }

    /// The session of a request that must also carry its CSRF token (every admin request
    /// but the sign-in and the session read).
    pub fn checked(
        &self,
        token: Option<&str>,
        csrf: Option<&str>,
        now_unix: u64,
    ) -> Option<Session> {
        let session = self.session(token, now_unix)?;
        let given = csrf?;
        crate::api::constant_time_eq(given.as_bytes(), session.csrf.as_bytes()).then_some(session)
    }
}

impl Failures {
    /// How long `addr` must still wait, if it must.
    fn blocked(&mut self, addr: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let (start, n) = self.by_addr.get(&addr).copied()?;
        if now.duration_since(start) >= WINDOW {
            self.by_addr.remove(&addr);
            return None;
        }
        (n >= FAILURES_PER_ADDRESS).then(|| WINDOW.saturating_sub(now.duration_since(start)))
    }

    fn add(&mut self, addr: Option<IpAddr>, now: Instant) {
        if self.by_addr.len() >= ADDRESSES && !self.by_addr.contains_key(&addr) {
            self.by_addr
                .retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if self.by_addr.len() >= ADDRESSES {
                // Still full of live windows: the oldest is forgotten.
                if let Some(oldest) = self
                    .by_addr
                    .iter()
                    .min_by_key(|(_, (start, _))| *start)
                    .map(|(a, _)| *a)
                {
                    self.by_addr.remove(&oldest);
                }
            }
        }
        self.by_addr.entry(addr).or_insert((now, 0)).1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&AdminConfig {
            enabled: true,
            password: "pass".into(),
            secret: "secret".into(),
            ..AdminConfig::default()
        })
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_session_is_signed_expires_and_needs_its_csrf_token() {
        let a = auth();
        let (session, token) = a.sign_in("pass", None, NOW).unwrap();
        assert_eq!(a.session(Some(&token), NOW + 10), Some(session.clone()));
        assert_eq!(
            a.checked(Some(&token), Some(&session.csrf), NOW + 10),
            Some(session.clone())
        );
        assert_eq!(
            a.checked(Some(&token), None, NOW + 10),
            None,
            "no CSRF header"
        );
        assert_eq!(a.checked(Some(&token), Some("nope"), NOW + 10), None);
        let ttl = a.ttl().as_secs();
        assert_eq!(a.session(Some(&token), NOW + ttl), None, "expired");
        // Signed with another secret: not ours.
        let other = Auth::new(&AdminConfig {
            secret: "other".into(),
            password: "pass".into(),
            ..AdminConfig::default()
        });
        assert_eq!(other.session(Some(&token), NOW + 10), None);
        assert_eq!(a.session(Some("garbage"), NOW), None);
        assert_eq!(a.session(None, NOW), None);
    }

    #[test]
    fn failures_are_limited_per_address_and_forgotten_after_the_window() {
        let a = auth();
        let ip: Option<IpAddr> = Some("10.0.0.1".parse().unwrap());
        let other: Option<IpAddr> = Some("10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..FAILURES_PER_ADDRESS {
            assert_eq!(
                a.sign_in_at("wrong", ip, NOW, t0).unwrap_err(),
                Refused::WrongPassword
            );
        }
        // Even the right password is refused now, without being compared.
        assert!(matches!(
            a.sign_in_at("pass", ip, NOW, t0 + Duration::from_secs(1)),
            Err(Refused::TooMany(wait)) if wait <= WINDOW
        ));
        assert!(
            a.sign_in_at("pass", other, NOW, t0).is_ok(),
            "other addresses are not held"
        );
        assert!(a.sign_in_at("pass", ip, NOW, t0 + WINDOW).is_ok());
    }

    #[test]
    fn an_ipv6_host_counts_as_one_address_and_others_are_never_locked_out() {
        let a = auth();
        let t0 = Instant::now();
        // Five failures from five addresses of one /64: that /64 is held.
        for i in 1..=FAILURES_PER_ADDRESS {
            let ip: IpAddr = format!("2001:db8:1:2::{i}").parse().unwrap();
            let _ = a.sign_in_at("wrong", Some(ip), NOW, t0);
        }
        let same_net: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(matches!(
            a.sign_in_at("pass", Some(same_net), NOW, t0),
            Err(Refused::TooMany(_))
        ));
        // Many other addresses failing never lock out an operator elsewhere.
        for i in 0..500u32 {
            let ip: IpAddr = format!("10.2.{}.{}", i / 250, i % 250).parse().unwrap();
            let _ = a.sign_in_at("wrong", Some(ip), NOW, t0);
        }
        let operator: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(a.sign_in_at("pass", Some(operator), NOW, t0).is_ok());
    }

    #[test]
    fn a_signed_out_session_is_refused_before_it_expires() {
        let a = auth();
        let (session, token) = a.sign_in("pass", None, NOW).unwrap();
        let (_, other) = a.sign_in("pass", None, NOW).unwrap();
        a.sign_out(&session);
        assert_eq!(a.session(Some(&token), NOW + 1), None);
        assert!(
            a.session(Some(&other), NOW + 1).is_some(),
            "other sessions go on"
        );
    }

    #[test]
    fn insecure_needs_no_sign_in_but_still_a_csrf_token() {
        let a = Auth::new(&AdminConfig {
            insecure: true,
            ..AdminConfig::default()
        });
        let s = a.session(None, NOW).unwrap();
        assert!(a.checked(None, Some(&s.csrf), NOW).is_some());
        assert!(a.checked(None, None, NOW).is_none());
        assert_eq!(
            a.sign_in("", None, NOW).unwrap_err(),
            Refused::WrongPassword,
            "an empty password never signs in"
        );
    }
}
