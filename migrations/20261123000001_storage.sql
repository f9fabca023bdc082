-- rotor storage: channel history, presence and the token revocation list.

-- One row per channel stream: its epoch and the last offset given out.
CREATE TABLE rotor_streams (
    channel         TEXT PRIMARY KEY,
    epoch           TEXT NOT NULL,
    top_offset      BIGINT NOT NULL,
    -- The stream (epoch and offset) is forgotten after this; a new epoch starts then.
    meta_expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX rotor_streams_meta_expires_at ON rotor_streams (meta_expires_at);

-- Publications kept in history. data/info/tags are JSON text, stored as received.
CREATE TABLE rotor_publications (
    channel    TEXT NOT NULL,
    "offset"   BIGINT NOT NULL,
    data       TEXT NOT NULL,
    info       TEXT,
    tags       TEXT,
    time_ms    BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, "offset")
);
CREATE INDEX rotor_publications_expires_at ON rotor_publications (expires_at);

-- Who is in a channel. Entries expire unless their node refreshes them, so a crashed node's
-- clients disappear.
CREATE TABLE rotor_presence (
    channel    TEXT NOT NULL,
    client_id  TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    info       TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, client_id)
);
CREATE INDEX rotor_presence_expires_at ON rotor_presence (expires_at);

-- Revoked tokens by jti, with the audit trail.
CREATE TABLE rotor_revocations (
    jti        TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    -- Unix seconds when the revoked token itself expires (0 = keep).
    expire_at  BIGINT NOT NULL,
    revoked_at BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    actor      TEXT NOT NULL,
    kicked     INTEGER NOT NULL
);
CREATE INDEX rotor_revocations_user_revoked_at ON rotor_revocations (user_id, revoked_at);
CREATE INDEX rotor_revocations_revoked_at ON rotor_revocations (revoked_at);
CREATE INDEX rotor_revocations_expire_at ON rotor_revocations (expire_at) WHERE expire_at <> 0;
