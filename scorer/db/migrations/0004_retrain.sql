-- 0004: what `scorer retrain` decided, run by run (the candidate it trained, the gate's checks, the shadow's
-- evidence, the promotion or retirement), for the report, the audit and SQL users. A run's status moves
-- training -> refused | failed | shadow; shadow -> blending | promoted | retired; blending -> promoted.
-- At most one run is in shadow or blending at a time (the partial unique index), and one retrain works at a
-- time across instances (the advisory lock scorer/db/retrain.py takes: RETRAIN_LOCK).

create table retrain_runs (
    run_id bigserial primary key,
    started_at timestamptz not null default now(),
    cutoff timestamptz not null,  -- the stream's time when it trained: labels reported later were not used
    champion text not null,  -- name/version it challenged
    candidate text,  -- name/version it trained (null: training failed before one existed)
    status text not null check (status in
        ('training', 'refused', 'failed', 'shadow', 'blending', 'promoted', 'retired')),
    window_from timestamptz,
    window_to timestamptz,
    data_sha256 text,
    onnx_sha256 text,
    labels_by_source jsonb not null default '{}',
    alarms jsonb not null default '[]',  -- input-check and drift alarms in the training window
    gate jsonb not null default '[]',  -- the gate's checks: [{name, ok, detail}]
    shadow_from timestamptz,  -- event time: the shadow plan's start
    promoted_from timestamptz,  -- event time: when the challenger started to decide (a blend's start)
    blend_to timestamptz,  -- event time: the blend's end
    evidence jsonb,  -- the live comparison that decided: AP, review-band precision, frauds, days
    reasons text,  -- why it was refused, failed, promoted or retired, in a sentence
    decided_at timestamptz,
    updated_at timestamptz not null default now()
);
create unique index retrain_runs_one_active on retrain_runs ((true)) where status in ('shadow', 'blending');
create index retrain_runs_started on retrain_runs (started_at desc);

-- scorer_analyst reads it through 0001's default privileges.
