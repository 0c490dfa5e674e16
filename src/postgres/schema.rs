//! The schema, as numbered migrations applied once each.

use deadpool_postgres::Object;

use crate::BoxError;

/// Taken for the whole migration transaction, so replicas starting at once migrate one at a
/// time and each sees what the one before it applied. (Any fixed number; this one spells
/// "imggw".)
const MIGRATION_LOCK: i64 = 0x0069_6d67_6777;

/// Every migration, in order. A migration is never edited once released: changes are new
/// entries.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "
    CREATE TABLE accounts (
        account   TEXT PRIMARY KEY,
        available BIGINT NOT NULL DEFAULT 0,
        held      BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
        charged   BIGINT NOT NULL DEFAULT 0 CHECK (charged >= 0),
        deposited BIGINT NOT NULL DEFAULT 0
    );
    CREATE TABLE holds (
        id         UUID PRIMARY KEY,
        account    TEXT NOT NULL,
        amount     BIGINT NOT NULL CHECK (amount >= 0),
        expires_at BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        model      TEXT NOT NULL,
        units      INTEGER NOT NULL
    );
    CREATE INDEX holds_expiry ON holds (expires_at);
    -- Holds that ended; an expired one (expired) is what a late settle charges, once.
    CREATE TABLE ended_holds (
        id         UUID PRIMARY KEY,
        account    TEXT NOT NULL,
        amount     BIGINT NOT NULL,
        request_id TEXT NOT NULL,
        model      TEXT NOT NULL,
        units      INTEGER NOT NULL,
        expired    BOOLEAN NOT NULL
    );
    CREATE TABLE journal (
        seq            BIGSERIAL PRIMARY KEY,
        account        TEXT NOT NULL,
        kind           TEXT NOT NULL,
        amount         BIGINT NOT NULL,
        hold_id        UUID,
        reference      TEXT,
        request_id     TEXT,
        model          TEXT,
        units          INTEGER,
        units_returned INTEGER,
        at             BIGINT NOT NULL
    );
    CREATE INDEX journal_account ON journal (account, seq);
    CREATE UNIQUE INDEX deposit_reference ON journal (account, reference)
        WHERE kind = 'deposit';
    CREATE TABLE generations (
        id       UUID PRIMARY KEY,
        owner    TEXT NOT NULL,
        file_key TEXT NOT NULL,
        status   TEXT NOT NULL,
        created  BIGINT NOT NULL
    );
    CREATE TABLE idempotency (
        user_id     TEXT NOT NULL,
        key         TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        started     BIGINT NOT NULL,
        created     BIGINT,
        generations TEXT,
        PRIMARY KEY (user_id, key)
    );
    -- API keys by the SHA-256 of the key; the key itself is never stored.
    CREATE TABLE api_keys (
        digest  BYTEA PRIMARY KEY,
        user_id TEXT NOT NULL,
        name    TEXT NOT NULL,
        created BIGINT NOT NULL
    );
    CREATE INDEX api_keys_user ON api_keys (user_id);
    ",
    ),
    (
        2,
        "
    -- The index of the files an object store holds: who owns what, how large, since when.
    -- Listings (newest first) and quotas read it; the bytes are in the object store.
    CREATE TABLE files (
        key     TEXT PRIMARY KEY,
        owner   TEXT NOT NULL,
        size    BIGINT NOT NULL,
        created BIGINT NOT NULL
    );
    CREATE INDEX files_newest_first ON files (owner, created DESC, key);
    ",
    ),
    (
        3,
        "
    -- Keys managed through the admin API have an id; configured keys have none (and no
    -- limits, expiry or revocation of their own).
    ALTER TABLE api_keys
        ADD COLUMN id         UUID UNIQUE,
        ADD COLUMN prefix     TEXT NOT NULL DEFAULT '',
        ADD COLUMN last_used  BIGINT,
        ADD COLUMN expires_at BIGINT,
        ADD COLUMN revoked_at BIGINT,
        ADD COLUMN limits     TEXT NOT NULL DEFAULT '{}';
    -- What each managed key spent (held or charged) per UTC day, for daily limits.
    CREATE TABLE key_spend (
        key_id UUID NOT NULL,
        day    BIGINT NOT NULL,
        spent  BIGINT NOT NULL CHECK (spent >= 0),
        PRIMARY KEY (key_id, day)
    );
    ",
    ),
    (
        4,
        "
    -- The key a hold was taken with (the usage log's `key` filter), and on a hold's end
    -- entry what it held.
    ALTER TABLE holds ADD COLUMN key_id TEXT;
    ALTER TABLE ended_holds ADD COLUMN key_id TEXT;
    ALTER TABLE journal ADD COLUMN key_id TEXT, ADD COLUMN held BIGINT;
    ",
    ),
    (
        5,
        "
    -- Jobs: what a request's work became once its hold was taken, readable by its owner
    -- from any replica.
    CREATE TABLE jobs (
        id             UUID PRIMARY KEY,
        owner          TEXT NOT NULL,
        operation      TEXT NOT NULL,
        model          TEXT NOT NULL,
        n              INTEGER NOT NULL,
        status         TEXT NOT NULL,
        created_at     BIGINT NOT NULL,
        started_at     BIGINT,
        finished_at    BIGINT,
        size           TEXT NOT NULL,
        quality        TEXT NOT NULL,
        background     TEXT NOT NULL,
        output_format  TEXT NOT NULL,
        output_created BIGINT,
        generations    TEXT,
        error          TEXT,
        webhook        TEXT
    );
    CREATE INDEX jobs_by_owner ON jobs (owner, id DESC);
    -- Webhook events still to send, claimed by one replica at a time.
    CREATE TABLE deliveries (
        id       TEXT PRIMARY KEY,
        url      TEXT NOT NULL,
        body     TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_at  BIGINT NOT NULL
    );
    CREATE INDEX deliveries_due ON deliveries (next_at);
    CREATE INDEX jobs_open ON jobs (owner) WHERE status IN ('queued', 'running');
    ",
    ),
    (
        6,
        "
    -- A rotated key's successor spends the day of the key it replaced: the first key of
    -- the chain counts the whole chain's daily spend.
    CREATE TABLE key_lineage (
        key_id    UUID PRIMARY KEY,
        spends_as UUID NOT NULL
    );
    -- Keys from a replica's configuration are managed keys too (listed, revocable): which
    -- configuration gave one (`configured`: GATEWAY_API_KEYS, `demo`: a replica's demo
    -- key), so a start can end those taken out of it.
    ALTER TABLE api_keys ADD COLUMN configured TEXT;
    -- A file's row is written pending before its object, and marked stored after it: a
    -- write cut between the two is found (and its object deleted) by the sweep.
    ALTER TABLE files ADD COLUMN pending BOOLEAN NOT NULL DEFAULT false;
    CREATE INDEX files_pending ON files (created) WHERE pending;
    ",
    ),
    (
        7,
        "
    -- An async job's request, kept so another replica can run it again under the same
    -- hold when its own died; who runs it until when, and how many runs it has had.
    ALTER TABLE jobs
        ADD COLUMN rerun       TEXT,
        ADD COLUMN runner      TEXT,
        ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0,
        ADD COLUMN attempts    INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX jobs_runner ON jobs (runner) WHERE status IN ('queued', 'running');
    ",
    ),
    (
        8,
        "
    -- What a settle charged, and for how many images: a settled job whose images were
    -- lost before their storage is refunded each one's share.
    ALTER TABLE ended_holds ADD COLUMN charged BIGINT, ADD COLUMN units_returned INTEGER;
    -- The hold each generation was charged under; pending ones are found by the sweep.
    ALTER TABLE generations ADD COLUMN hold UUID;
    CREATE INDEX generations_pending ON generations (created) WHERE status = 'pending';
    ",
    ),
    (
        9,
        "
    -- On a settle: the upstream deployment that rendered the job (the usage log's upstream).
    ALTER TABLE journal ADD COLUMN upstream TEXT;
    -- A job taken over after its settle is finished with the generations of its hold.
    CREATE INDEX generations_hold ON generations (hold) WHERE hold IS NOT NULL;
    ",
    ),
];

/// Applies every migration the database has not seen, in one transaction.
pub(super) async fn migrate(client: &mut Object) -> Result<(), BoxError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| format!("migration {version} failed: {e}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await?;
        tracing::info!(version, "database migrated");
    }
    tx.commit().await?;
    Ok(())
}
