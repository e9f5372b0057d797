-- 0001: what `scorer store` writes (transactions, decisions, labels, dead letters), where it has read to
-- (store_offsets), the views for SQL users and the read-only role for analysts' SQL.
--
-- Day-partitioned tables (transactions, decisions: the transaction's event day; dead_letters: the day of the
-- original record's Kafka timestamp) get a partition per day, made by the store before it writes a day's
-- first rows (store_ensure_partition), and dropped whole by its retention (store_drop_partitions_before).
-- Their primary key leads with the day, as PostgreSQL requires of a partitioned table's unique keys: a
-- transaction_id is unique within its event day. Labels are few (a fraction of a per cent of transactions)
-- and are looked up by transaction: one table, keyed by transaction and label source.
-- source_partition and source_offset say where in Kafka each row came from: a replay of the same record
-- (or an older one) never overwrites a row written from a later record.

create table store_offsets (
    consumer_group text not null,
    topic text not null,
    partition integer not null,
    next_offset bigint not null,
    updated_at timestamptz not null default now(),
    primary key (consumer_group, topic, partition)
);

create table transactions (
    event_day date not null,
    transaction_id text not null,
    event_time timestamptz not null,
    customer_id text not null,
    terminal_id text not null,
    amount double precision not null,
    currency text,
    channel text,
    merchant_category text,
    source_partition integer not null,
    source_offset bigint not null,
    stored_at timestamptz not null default now(),
    primary key (event_day, transaction_id)
) partition by range (event_day);
create index transactions_card on transactions (customer_id, event_time);

create table decisions (
    event_day date not null,
    transaction_id text not null,
    event_time timestamptz not null,
    customer_id text not null,
    terminal_id text not null,
    amount double precision not null,
    score double precision not null,
    flagged boolean not null,
    action text not null check (action in ('approve', 'review', 'decline')),
    action_source text not null,  -- 'model', or the id of the rule that decided
    rule_id text generated always as (nullif(action_source, 'model')) stored,
    threshold double precision not null,
    model_version text not null,
    reasons jsonb not null,
    challenger_version text,
    challenger_score double precision,
    blend_weight double precision,
    challenger_fallback boolean,
    scored_at timestamptz not null,
    features real[],  -- as scored, in FEATURE_NAMES order (null: decision_features was off)
    source_partition integer not null,
    source_offset bigint not null,
    stored_at timestamptz not null default now(),
    primary key (event_day, transaction_id)
) partition by range (event_day);
create index decisions_card on decisions (customer_id, event_time);  -- a card's last 30 days
create index decisions_alerts on decisions (action, score desc) where action <> 'approve';  -- a day's alerts

create table labels (
    transaction_id text not null,
    source text not null,  -- 'chargeback' (the default) or 'analyst'
    customer_id text not null,
    terminal_id text not null,
    is_fraud boolean not null,
    reported_at timestamptz not null,
    event_time timestamptz,  -- the labelled transaction's time, when the label gives it
    analyst text,
    case_id text,
    source_partition integer not null,
    source_offset bigint not null,
    stored_at timestamptz not null default now(),
    primary key (transaction_id, source)
);
create index labels_card on labels (customer_id, reported_at);
create index labels_reported on labels (reported_at);

create table dead_letters (
    day date not null,  -- of the original record's Kafka timestamp (of the dead letter's, if it had none)
    source_topic text not null,
    source_partition integer not null,
    source_offset bigint not null,
    reason text not null,
    detail text not null,
    transaction_id text,  -- when the original is a JSON object with a string transaction_id
    source_time timestamptz,
    dead_lettered_at timestamptz not null,
    key bytea,
    value bytea,  -- the original bytes, intact (what was cut, if anything, is in the headers)
    header_names text[] not null,  -- every header of the dead letter (reason, original.*, value.sha256...)
    header_values bytea[] not null,
    dlq_partition integer not null,
    dlq_offset bigint not null,
    stored_at timestamptz not null default now(),
    primary key (day, source_topic, source_partition, source_offset)
) partition by range (day);
create index dead_letters_reason on dead_letters (reason, dead_lettered_at);

-- Partitions: one per day, named <table>_YYYYMMDD. The advisory lock makes two store instances that meet
-- the same new day wait for each other instead of failing on the second create.
create function store_ensure_partition(parent text, day date) returns void
language plpgsql as $$
declare
    name text := parent || '_' || to_char(day, 'YYYYMMDD');
begin
    if to_regclass(name) is not null then
        return;
    end if;
    perform pg_advisory_xact_lock(hashtext('scorer-store-partition:' || name));
    if to_regclass(name) is null then
        execute format('create table %I partition of %I for values from (%L) to (%L)', name, parent, day, day + 1);
    end if;
end $$;

-- Retention: every partition of `parent` that holds only days before `cutoff` is dropped whole.
create function store_drop_partitions_before(parent text, cutoff date) returns integer
language plpgsql as $$
declare
    part record;
    dropped integer := 0;
begin
    for part in
        select c.relname
        from pg_inherits i
        join pg_class c on c.oid = i.inhrelid
        join pg_class p on p.oid = i.inhparent
        where p.relname = parent and c.relname ~ ('^' || parent || '_[0-9]{8}$')
    loop
        if to_date(right(part.relname, 8), 'YYYYMMDD') < cutoff then
            execute format('drop table %I', part.relname);
            dropped := dropped + 1;
        end if;
    end loop;
    return dropped;
end $$;

-- Views for SQL users ------------------------------------------------------------------------------------

-- Per transaction: fraud if any label says so (as `scorer monitor` counts it), when first reported, by whom.
create view transaction_labels as
select
    transaction_id,
    bool_or(is_fraud) as is_fraud,
    min(reported_at) as first_reported_at,
    array_agg(distinct source order by source) as sources
from labels
group by transaction_id;

create view decisions_with_labels as
select d.*, l.is_fraud, l.first_reported_at, l.sources as label_sources
from decisions d
left join transaction_labels l using (transaction_id);

create view daily_alerts as
select
    event_day,
    action,
    action_source,
    model_version,
    count(*) as decisions,
    sum(amount) as amount,
    avg(score) as mean_score,
    max(score) as max_score
from decisions
where action <> 'approve'
group by event_day, action, action_source, model_version;

-- Live quality per event day and model version, as `scorer monitor` computes it (scorer/monitoring/
-- livequality.py): a decision without a fraud label counts as genuine; precision and recall of the
-- decisions' `flagged`; Average Precision with tied scores grouped (scikit-learn's); Card Precision@100 over
-- each day's cards not already reported compromised before that day, a card's score its day's highest,
-- equal scores ordered by card id in byte order, the day's frauds in its top 100 divided by 100.
create view quality_by_day as
with scored as (
    select d.event_day, d.model_version, d.customer_id, d.score, d.flagged, coalesce(l.is_fraud, false) as fraud
    from decisions d
    left join transaction_labels l using (transaction_id)
),
counts as (
    select
        event_day, model_version,
        count(*) as decisions,
        count(*) filter (where fraud) as frauds,
        count(*) filter (where flagged) as flagged,
        count(*) filter (where flagged and fraud) as caught
    from scored
    group by event_day, model_version
),
ties as (
    select event_day, model_version, score, count(*) as total, count(*) filter (where fraud) as positives
    from scored
    group by event_day, model_version, score
),
running as (
    select
        event_day, model_version, positives,
        sum(positives) over w as seen_positives,
        sum(total) over w as seen
    from ties
    window w as (partition by event_day, model_version order by score desc rows unbounded preceding)
),
ap as (
    select event_day, model_version, sum(positives * seen_positives::float8 / seen) as weighted
    from running
    group by event_day, model_version
),
compromised as (
    select customer_id, min(reported_at) as first_reported_at
    from labels
    where is_fraud
    group by customer_id
),
card_days as (
    select s.event_day, s.model_version, s.customer_id, max(s.score) as score, bool_or(s.fraud) as fraud
    from scored s
    left join compromised c using (customer_id)
    where c.first_reported_at is null or c.first_reported_at >= s.event_day::timestamp at time zone 'UTC'
    group by s.event_day, s.model_version, s.customer_id
),
ranked as (
    select
        event_day, model_version, fraud,
        row_number() over (
            partition by event_day, model_version order by score desc, customer_id collate "C"
        ) as rank
    from card_days
),
top_cards as (
    select event_day, model_version, count(*) filter (where fraud and rank <= 100) / 100.0 as cp
    from ranked
    group by event_day, model_version
)
select
    c.event_day,
    c.model_version,
    c.decisions,
    c.frauds,
    c.flagged,
    c.caught::float8 / greatest(1, c.flagged) as precision,
    c.caught::float8 / greatest(1, c.frauds) as recall,
    case when c.frauds = 0 then 0.0 else a.weighted / c.frauds end as average_precision,
    coalesce(t.cp, 0.0)::float8 as card_precision_at_100
from counts c
join ap a using (event_day, model_version)
left join top_cards t using (event_day, model_version);

-- The analysts' read-only role: SELECT on every table and view, now and later (new partitions are read
-- through their parent). Roles belong to the whole server: made once, and only by a user allowed to.
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'scorer_analyst') then
        create role scorer_analyst nologin;
    end if;
exception when insufficient_privilege then
    raise notice 'scorer_analyst not created: the migrating user may not create roles (create it by hand)';
end $$;

do $$
begin
    if exists (select 1 from pg_roles where rolname = 'scorer_analyst') then
        execute 'grant usage on schema public to scorer_analyst';
        execute 'grant select on all tables in schema public to scorer_analyst';
        execute 'alter default privileges in schema public grant select on tables to scorer_analyst';
    end if;
end $$;
