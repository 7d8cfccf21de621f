-- recfusion warehouse schema. Idempotent: applied at the start of every run.
CREATE SCHEMA IF NOT EXISTS raw;

-- Events: one row per distinct event; event_key = event_id when given, else a hash of the row.
CREATE TABLE IF NOT EXISTS raw.events (
    event_key      VARCHAR NOT NULL,
    user_id        VARCHAR NOT NULL,
    item_id        VARCHAR NOT NULL,
    event_type     VARCHAR NOT NULL,
    value          DOUBLE  NOT NULL,
    ts             TIMESTAMPTZ NOT NULL,
    source_file    VARCHAR,
    ingest_run_id  VARCHAR
);

CREATE TABLE IF NOT EXISTS raw.items (
    item_id        VARCHAR NOT NULL,
    title          VARCHAR,
    text           VARCHAR,
    tags           VARCHAR[],
    category       VARCHAR,
    embedding      FLOAT[],
    source_file    VARCHAR,
    ingest_run_id  VARCHAR
);

-- User attributes vary by source, so they are kept as one JSON object per user.
CREATE TABLE IF NOT EXISTS raw.users (
    user_id        VARCHAR NOT NULL,
    attributes     JSON,
    source_file    VARCHAR,
    ingest_run_id  VARCHAR
);

CREATE TABLE IF NOT EXISTS raw.social (
    user_id        VARCHAR NOT NULL,
    friend_id      VARCHAR NOT NULL,
    weight         DOUBLE  NOT NULL,
    ts             TIMESTAMPTZ,
    source_file    VARCHAR,
    ingest_run_id  VARCHAR
);

-- Rows that broke the data contract, kept whole (as JSON) with the reason, once per file and row.
CREATE TABLE IF NOT EXISTS raw.quarantine (
    run_id         VARCHAR NOT NULL,  -- the run that first quarantined the row
    table_name     VARCHAR NOT NULL,
    source_file    VARCHAR NOT NULL,  -- absolute path
    row_number     BIGINT,   -- 1-based: CSV data row after the header, JSON Lines line, Parquet row
    reason         VARCHAR NOT NULL,  -- 'column: problem', '; '-separated ('row: ...' if unsplittable)
    row_data       JSON,     -- the row's fields; {"_raw": "<text>"} for a row that could not be split
    quarantined_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS runs (
    run_id             VARCHAR PRIMARY KEY,
    flow_name          VARCHAR,
    flow_run_id        VARCHAR,
    triggered_by       VARCHAR,  -- schedule | deployment | cli | backfill | subflow (from Prefect)
    status             VARCHAR NOT NULL,  -- running | failed | rejected | published
    parameters         JSON,
    source             VARCHAR,
    as_of              TIMESTAMPTZ,
    data_start         TIMESTAMPTZ,
    data_end           TIMESTAMPTZ,
    n_users            BIGINT,
    n_items            BIGINT,
    n_events           BIGINT,
    n_recommendations  BIGINT,
    fusion_strategy    VARCHAR,
    data_fingerprint   VARCHAR,  -- same data => same fingerprint (for the regression gate)
    timings            JSON,
    message            VARCHAR,
    started_at         TIMESTAMPTZ NOT NULL,
    finished_at        TIMESTAMPTZ,
    evaluation_protocol VARCHAR,  -- canonical JSON: how metrics were measured (tasks/protocol.py)
    evaluation         JSON,     -- split kind, cutoff, users and events of each hold-out, the
                                 -- chosen plan and its selection, tuning results used
    deployment_name    VARCHAR,  -- 'flow/deployment' that ran it (a backfill day: the backfill's)
    trigger_detail     VARCHAR,  -- who or what, when Prefect says (a user, an automation, a parent)
    trigger_note       VARCHAR,  -- the free-text parameter triggered_by
    trigger_overrides  JSON      -- what the trigger changed from the deployment's saved parameters
);
-- Databases created before a column existed get it here (NULL for their old runs).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS evaluation_protocol VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS evaluation JSON;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS deployment_name VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS trigger_detail VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS trigger_note VARCHAR;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS trigger_overrides JSON;

-- `candidates` is a view over Parquet files, one folder per run (candidates_view.sql).

CREATE TABLE IF NOT EXISTS recommendations (
    run_id         VARCHAR NOT NULL,
    user_id        VARCHAR NOT NULL,
    rank           INTEGER NOT NULL,
    item_id        VARCHAR NOT NULL,
    score          DOUBLE  NOT NULL,
    contributions  JSON,     -- modality -> share of the fused score
    reason         VARCHAR,
    segment        VARCHAR   -- cold | warm: which blend served the user
);

CREATE TABLE IF NOT EXISTS run_metrics (
    run_id   VARCHAR NOT NULL,
    model    VARCHAR NOT NULL,   -- a modality name, a fusion strategy, or 'fused'
    metric   VARCHAR NOT NULL,
    k        INTEGER NOT NULL,
    segment  VARCHAR NOT NULL,   -- all | cold_pool | cold | warm | with_friends
    value    DOUBLE,
    std_error DOUBLE             -- of a per-user mean (sd / sqrt(n_users)); NULL otherwise
);
ALTER TABLE run_metrics ADD COLUMN IF NOT EXISTS std_error DOUBLE;

CREATE TABLE IF NOT EXISTS check_results (
    run_id          VARCHAR NOT NULL,
    suite           VARCHAR NOT NULL,
    expectation     VARCHAR NOT NULL,
    column_name     VARCHAR,
    success         BOOLEAN NOT NULL,
    observed_value  VARCHAR,
    checked_at      TIMESTAMPTZ NOT NULL
);

-- Hyperparameters found by the tune flow, one row per modality and tuning run. The nightly uses
-- the latest row per modality (for its source) whose values beat the defaults on validation.
CREATE TABLE IF NOT EXISTS tuning_results (
    tuning_id        VARCHAR NOT NULL,
    modality         VARCHAR NOT NULL,
    tuned_at         TIMESTAMPTZ NOT NULL,
    source           VARCHAR,
    data_fingerprint VARCHAR,
    parameters       JSON NOT NULL,    -- nested run-parameter update, e.g. {"hybrid": {...}}
    validation_ndcg  DOUBLE,
    default_ndcg     DOUBLE,
    n_trials         INTEGER,
    seconds          DOUBLE,
    protocol         JSON,
    flow_run_id      VARCHAR
);
