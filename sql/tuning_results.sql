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
