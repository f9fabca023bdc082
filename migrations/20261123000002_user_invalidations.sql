-- Every token of a user issued before a time is invalid (invalidate_user_tokens).
CREATE TABLE rotor_user_invalidations (
    user_id        TEXT NOT NULL,
    -- Empty: all tokens; else only subscription tokens of this channel.
    channel        TEXT NOT NULL,
    issued_before  BIGINT NOT NULL,
    -- Unix seconds after which the entry may be dropped (0 = keep).
    expire_at      BIGINT NOT NULL,
    invalidated_at BIGINT NOT NULL,
    reason         TEXT NOT NULL,
    actor          TEXT NOT NULL,
    kicked         INTEGER NOT NULL,
    PRIMARY KEY (user_id, channel)
);
