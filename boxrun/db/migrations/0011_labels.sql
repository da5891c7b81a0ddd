-- Job labels: up to 32 `key: value` strings given at submission. They are part of the frozen
-- spec (a re-run keeps them); the column mirrors spec->'labels' so the list filter
-- (`?label=key:value`, containment) has an index. A spec without labels reads as {}.
ALTER TABLE jobs ADD COLUMN labels jsonb NOT NULL GENERATED ALWAYS AS (COALESCE(spec -> 'labels', '{}'::jsonb)) STORED;
CREATE INDEX jobs_labels ON jobs USING gin (labels jsonb_path_ops);
