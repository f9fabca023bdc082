-- Results of publishes made with an idempotency key (server API publish and broadcast): a
-- repeat within the window gets the first result and publishes nothing, on every node.
CREATE TABLE rotor_idempotency (
    channel          TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    -- True while the first publish is on its way (its claim lapses at expires_at).
    pending          BOOLEAN NOT NULL,
    result_offset    BIGINT NOT NULL,
    result_epoch     TEXT NOT NULL,
    expires_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (channel, idempotency_key)
);
CREATE INDEX rotor_idempotency_expires ON rotor_idempotency (expires_at);
