"""The schema of the metadata store, the same for SQLite and PostgreSQL up to the dialect's column types."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id {serial_pk},
    name TEXT NOT NULL UNIQUE,
    uid TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    dim INTEGER NOT NULL,
    root {blob} NOT NULL,
    image_count BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    next_vector_id BIGINT NOT NULL,
    index_kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    dataset_id INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    vector_id BIGINT NOT NULL,
    path {blob} NOT NULL,
    size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL,
    PRIMARY KEY (dataset_id, vector_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS images_by_path ON images (dataset_id, path);
"""
