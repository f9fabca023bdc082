//! Connection tokens for the load: HS256 with a shared secret, or RS256 with a key pair made
//! by `openssl` for the run.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

/// The HMAC secret every benchmark configuration uses.
pub const HMAC_SECRET: &str = "bench-secret";

/// How tokens are signed.
#[derive(Clone)]
pub enum Signer {
    Hs256(EncodingKey),
    Rs256 {
        key: EncodingKey,
        /// The public key, for the server's `client.token.rsa_public_key`.
        public_pem: String,
    },
}

impl Signer {
    pub fn hs256() -> Signer {
        Signer::Hs256(EncodingKey::from_secret(HMAC_SECRET.as_bytes()))
    }

    /// A fresh 2048-bit RSA key pair from `openssl`.
    pub fn rs256() -> Signer {
        let dir = std::env::temp_dir().join(format!("rotor-bench-rsa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let private = dir.join("private.pem");
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "openssl {args:?} failed (is openssl installed?)");
        };
        let private_s = private.to_str().expect("utf-8 path");
        run(&["genrsa", "-out", private_s, "2048"]);
        let public = dir.join("public.pem");
        run(&[
            "rsa",
            "-in",
            private_s,
            "-pubout",
            "-out",
            public.to_str().expect("utf-8"),
        ]);
        let private_pem = std::fs::read(&private).expect("private key");
        let public_pem = std::fs::read_to_string(&public).expect("public key");
        let _ = std::fs::remove_dir_all(&dir);
        Signer::Rs256 {
            key: EncodingKey::from_rsa_pem(&private_pem).expect("RSA key"),
            public_pem,
        }
    }

    /// A connection token for `user`, expiring at `exp` (Unix seconds) if given.
    pub fn token(&self, user: &str, exp: Option<u64>) -> String {
        let mut claims = json!({ "sub": user });
        if let Some(exp) = exp {
            claims["exp"] = json!(exp);
        }
        self.sign(&claims)
    }

    /// A connection token for `user` that subscribes the connection to `channel` on the
    /// server's side (the `channels` claim).
    pub fn token_subscribed(&self, user: &str, channel: &str) -> String {
        self.sign(&json!({ "sub": user, "channels": [channel] }))
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let (alg, key) = match self {
            Signer::Hs256(k) => (Algorithm::HS256, k),
            Signer::Rs256 { key, .. } => (Algorithm::RS256, key),
        };
        encode(&Header::new(alg), claims, key).expect("sign token")
    }

    /// The `[client.token]` lines a rotor config needs to verify these tokens.
    pub fn rotor_config(&self) -> String {
        match self {
            Signer::Hs256(_) => format!("hmac_secret_key = \"{HMAC_SECRET}\"\n"),
            Signer::Rs256 { public_pem, .. } => {
                format!("rsa_public_key = \"\"\"\n{public_pem}\"\"\"\n")
            }
        }
    }
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    crate::payload::now_ns() / 1_000_000_000
}
